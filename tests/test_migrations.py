"""The migrations build exactly the models' schema on both databases, and the service refuses
a database it cannot use with a message that says why."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlmodel import SQLModel

import envmgr.core.models  # noqa: F401
from envmgr.core.db import DatabaseError, make_engine, migrate


def test_migrations_match_models(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == [], diff


def test_refuses_a_newer_schema(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(DatabaseError, match="revision 9999, which this version of envmgr"):
        migrate(engine)


def test_refuses_an_unreachable_database() -> None:
    from tests.conftest import free_port
    engine = make_engine(f"postgresql://nobody@127.0.0.1:{free_port()}/nothing")
    with pytest.raises(DatabaseError, match="cannot reach the database"):
        migrate(engine)
