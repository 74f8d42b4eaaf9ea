"""honest activity: what the last activity was, since when a kernel is busy, and per-
workspace autopause bounds; a schedule's kernel; a job's ending decision

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('runtimes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_activity_kind', sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=True))
        batch_op.add_column(sa.Column('busy_since', sqlmodel.sql.sqltypes.UTCDateTime(),
                                      nullable=True))
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        for name in ('autopause_default_minutes', 'autopause_min_minutes',
                     'autopause_max_minutes'):
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))
    with op.batch_alter_table('schedules', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kernel', sqlmodel.sql.sqltypes.AutoString(),
                                      nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ending', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('ending')
    with op.batch_alter_table('schedules', schema=None) as batch_op:
        batch_op.drop_column('kernel')
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        for name in ('autopause_max_minutes', 'autopause_min_minutes',
                     'autopause_default_minutes'):
            batch_op.drop_column(name)
    with op.batch_alter_table('runtimes', schema=None) as batch_op:
        batch_op.drop_column('busy_since')
        batch_op.drop_column('last_activity_kind')
