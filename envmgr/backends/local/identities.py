"""Unix identities of the local sandbox, allocated by the service's database and never
given out twice.

A disk's files belong to the uid of that disk for its whole life, and every runtime that
mounts it runs as that uid; a job gets a uid of its own. Rows are never deleted, so when a
disk or job is gone its uid is retired: a later runtime or job of anyone cannot own what it
left (a kept disk at rest, a file in /tmp, /dev/shm or /var/tmp)."""

from __future__ import annotations

import pwd
import threading

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from envmgr.core.db import make_engine, read_session, write_session
from envmgr.core.models import SandboxIdentity
from envmgr.settings import Settings

PREFIX = "em-"  # every sandbox user's name: em-<uid>


class IdentityError(RuntimeError):
    pass


def user_name(uid: int) -> str:
    return f"{PREFIX}{uid}"


class Identities:
    def __init__(self, settings: Settings) -> None:
        self.base = settings.local_uid_base
        self.url = settings.database_url
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        # A holder's uid never changes once given: asked on every poll of a job's files,
        # so remembered here instead of read again.
        self._known: dict[str, int] = {}

    def _db(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(self.url, pool_size=1, max_overflow=2)
            return self._engine

    def find(self, holder: str) -> int | None:
        """The holder's uid if it was ever given one."""
        if holder in self._known:
            return self._known[holder]
        with read_session(self._db()) as s:
            row = s.exec(select(SandboxIdentity).where(SandboxIdentity.holder == holder)
                         ).first()
        if row is None or row.id is None:
            return None
        self._known[holder] = self.base + row.id
        return self._known[holder]

    def uid(self, holder: str) -> int:
        """The holder's uid: the one it was given, or a new one (idempotent: a re-driven
        step gets the same). A uid some other account of this machine already has is a
        refusal, never a share."""
        found = self.find(holder)
        if found is None:
            try:
                with write_session(self._db()) as s:
                    row = SandboxIdentity(holder=holder)
                    s.add(row)
                    s.flush()
                    assert row.id is not None
                    found = self.base + row.id
            except IntegrityError:  # another replica gave it one just now
                found = self.find(holder)
                if found is None:
                    raise
        try:
            other = pwd.getpwuid(found).pw_name
        except KeyError:
            return found
        if other != user_name(found):
            raise IdentityError(
                f"uid {found} belongs to {other!r}, not to envmgr: move the sandbox's uid "
                f"range elsewhere (ENVMGR_LOCAL_UID_BASE, now {self.base})")
        return found

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
