"""Who leads: the one replica that sweeps for autopause and runs notebook jobs. With SQLite
there is one process; with PostgreSQL, whoever holds a session advisory lock on a
connection kept open for as long as it leads (if it dies, its connection and the lock go,
and another replica takes over at its next tick)."""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy import Connection, Engine, text

log = logging.getLogger("envmgr.core.leader")
LOCK_KEY = 0x656E766D  # "envm": the PostgreSQL advisory lock every replica asks for


class Leadership:
    """One per process: autopause and the job supervisor ask the same one (a second
    connection of the same process would not get the lock)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conn: Connection | None = None

    def held(self) -> bool:
        if self.engine.dialect.name != "postgresql":
            return True
        try:
            if self.conn is not None:
                self.conn.execute(text("SELECT 1"))  # still connected: still the leader
                return True
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar():
                self.conn = conn
                log.info("leading: autopause sweeps and notebook jobs run here")
                return True
            conn.close()
        except Exception:
            self.release()
        return False

    def release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
