"""Engine, sessions and migrations.

SQLite runs in WAL mode; write transactions start with BEGIN IMMEDIATE so two writers queue
on the database lock instead of failing when a read transaction tries to upgrade."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import CursorResult, Engine, Result, create_engine, event, text
from sqlmodel import Session

MIGRATIONS = Path(__file__).parent.parent / "migrations"


class DatabaseError(RuntimeError):
    """The database cannot be used: unreachable, or its schema is newer than this code."""


def make_engine(url: str, pool_size: int = 10, max_overflow: int = 20) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            for pragma in ("journal_mode=WAL", "busy_timeout=30000", "foreign_keys=ON",
                           "synchronous=NORMAL"):
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            immediate = conn.get_execution_options().get("immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(
        url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True,
        pool_recycle=1800,
    )


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as s:
        yield s


@contextmanager
def write_session(engine: Engine, now: datetime | None = None) -> Iterator[Session]:
    """A transaction that commits on success and rolls back on any exception. `now` is the
    service clock's time for everything this transaction stamps (see `tx_now`)."""
    with Session(engine.execution_options(immediate=True), expire_on_commit=False) as s, \
            s.begin():
        if now is not None:
            s.info["now"] = now
        yield s


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched: the compare-and-set's answer."""
    return cast(CursorResult[Any], result).rowcount


def tx_now(session: Session) -> datetime:
    """The time of this transaction, from the service's one clock: status changes, events,
    operations and leases written together carry one time. A transaction opened without
    the clock cannot change a status (KeyError), so no code path can fall back to another
    clock."""
    now: datetime = session.info["now"]
    return now


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to this code's head, refusing a database from a newer release."""
    cfg = alembic_config(engine)
    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    except Exception as exc:
        raise DatabaseError(f"cannot reach the database: {exc.__class__.__name__}: {exc}") from exc
    unknown = current - known
    if unknown:
        raise DatabaseError(
            f"the database schema is at revision {', '.join(sorted(unknown))}, which this "
            f"version of envmgr does not know (its newest is {', '.join(sorted(heads))}); "
            "upgrade envmgr instead of running an older release against this database"
        )
    if current != heads:
        command.upgrade(cfg, "head")


def keep_private(engine: Engine) -> None:
    """A SQLite database is the service's alone (0600; SQLite gives its -wal and -shm files
    the same mode), wherever ENVMGR_DATABASE_URL puts it."""
    path = engine.url.database
    if engine.url.get_backend_name() == "sqlite" and path and path != ":memory:":
        for p in (Path(path), Path(f"{path}-wal"), Path(f"{path}-shm")):
            if p.exists():
                p.chmod(0o600)


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
