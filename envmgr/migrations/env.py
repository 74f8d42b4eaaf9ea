"""Alembic environment: runs against the engine handed in by envmgr.core.db.migrate."""

from alembic import context
from sqlmodel import SQLModel

import envmgr.core.models  # noqa: F401  (registers the tables)

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
