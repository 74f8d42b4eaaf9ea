"""cost rollup by group and month, filled from the daily one

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('cost_group_monthly',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dimension', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('month', sa.Date(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('compute_usd', sa.Float(), nullable=False),
    sa.Column('disk_usd', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('cost_group_monthly', schema=None) as batch_op:
        batch_op.create_index('uq_cost_group_monthly', ['dimension', 'month', 'key'], unique=True)
    month = "date_trunc('month', day)::date" if op.get_bind().dialect.name == "postgresql" \
        else "date(day, 'start of month')"
    op.execute(f"INSERT INTO cost_group_monthly (dimension, month, key, compute_usd, disk_usd) "
               f"SELECT dimension, {month}, key, SUM(compute_usd), SUM(disk_usd) "
               f"FROM cost_group_daily GROUP BY dimension, {month}, key")


def downgrade() -> None:
    with op.batch_alter_table('cost_group_monthly', schema=None) as batch_op:
        batch_op.drop_index('uq_cost_group_monthly')

    op.drop_table('cost_group_monthly')
