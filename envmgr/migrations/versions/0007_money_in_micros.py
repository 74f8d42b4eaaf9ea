"""money as integer micro-dollars: the cost rollups' float dollar columns become BigInteger
micro-dollar columns (values carried over, rounded half to even), so sums never drift

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('cost_daily', 'cost_group_daily', 'cost_group_monthly')


def _swap(old: str, new: str, new_type: sa.types.TypeEngine, fill: str) -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            for col in ('compute', 'disk'):
                batch_op.add_column(sa.Column(f'{col}_{new}', new_type, nullable=False,
                                              server_default='0'))
        for col in ('compute', 'disk'):
            op.execute(f'UPDATE {table} SET {col}_{new} = ' + fill.format(f'{col}_{old}'))
        with op.batch_alter_table(table, schema=None) as batch_op:
            for col in ('compute', 'disk'):
                batch_op.drop_column(f'{col}_{old}')


def upgrade() -> None:
    # ROUND in SQLite and PostgreSQL rounds half away from zero; the float values being
    # carried over are not exact decimals anyway, so the difference is below a micro-dollar.
    _swap('usd', 'micros', sa.BigInteger(), 'CAST(ROUND({} * 1000000) AS BIGINT)')


def downgrade() -> None:
    _swap('micros', 'usd', sa.Float(), '{} / 1000000.0')
