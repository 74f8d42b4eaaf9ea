"""cost rollups

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('cost_daily',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('resource', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('owner_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('workspace_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('machine_type', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('compute_usd', sa.Float(), nullable=False),
    sa.Column('disk_usd', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('cost_daily', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cost_daily_day'), ['day'], unique=False)
        batch_op.create_index(batch_op.f('ix_cost_daily_owner_id'), ['owner_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_cost_daily_workspace_id'), ['workspace_id'], unique=False)
        batch_op.create_index('uq_cost_daily', ['day', 'resource_id', 'machine_type'], unique=True)

    op.create_table('cost_state',
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('resource', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('since', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('machine_type', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('size_gb', sa.Integer(), nullable=False),
    sa.Column('disk_type', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('resource_id')
    )
    op.create_table('cost_watermark',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('last_event_id', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_table('cost_watermark')
    op.drop_table('cost_state')
    with op.batch_alter_table('cost_daily', schema=None) as batch_op:
        batch_op.drop_index('uq_cost_daily')
        batch_op.drop_index(batch_op.f('ix_cost_daily_workspace_id'))
        batch_op.drop_index(batch_op.f('ix_cost_daily_owner_id'))
        batch_op.drop_index(batch_op.f('ix_cost_daily_day'))

    op.drop_table('cost_daily')
