"""cost rollup by group

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('cost_group_daily',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dimension', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('compute_usd', sa.Float(), nullable=False),
    sa.Column('disk_usd', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('cost_group_daily', schema=None) as batch_op:
        batch_op.create_index('uq_cost_group_daily', ['dimension', 'day', 'key'], unique=True)



def downgrade() -> None:
    with op.batch_alter_table('cost_group_daily', schema=None) as batch_op:
        batch_op.drop_index('uq_cost_group_daily')

    op.drop_table('cost_group_daily')
