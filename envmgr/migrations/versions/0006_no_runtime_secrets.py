"""no runtime secret in the database: Jupyter tokens and runtime API tokens are derived from
the service's key (runtimes started before this release answer again after a pause/resume)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('runtimes', schema=None) as batch_op:
        batch_op.drop_column('secret')


def downgrade() -> None:
    with op.batch_alter_table('runtimes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('secret', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
