"""server-side browser sessions, single-use tickets, token expiry and notes, one workspace
per bucket

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('last_used_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('note', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    op.create_table('browser_sessions',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('token_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['token_id'], ['api_tokens.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('browser_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_browser_sessions_token_id'), ['token_id'], unique=False)
    op.create_table('used_tickets',
    sa.Column('nonce', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('nonce')
    )
    with op.batch_alter_table('used_tickets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_used_tickets_expires_at'), ['expires_at'], unique=False)
    # Earlier releases let two workspaces share a bucket; the later ones keep their name
    # but get a bucket of their own (empty), so no workspace keeps access to another's.
    op.execute("UPDATE workspaces SET bucket = 'envmgr-' || id WHERE id IN ("
               "SELECT w.id FROM workspaces w JOIN workspaces o ON o.bucket = w.bucket "
               "AND o.id < w.id)")
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.create_unique_constraint('uq_workspaces_bucket', ['bucket'])


def downgrade() -> None:
    with op.batch_alter_table('workspaces', schema=None) as batch_op:
        batch_op.drop_constraint('uq_workspaces_bucket', type_='unique')
    op.drop_table('used_tickets')
    op.drop_table('browser_sessions')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_column('note')
        batch_op.drop_column('last_used_at')
        batch_op.drop_column('expires_at')
