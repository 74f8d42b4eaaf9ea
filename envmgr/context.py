"""What every part of a running service shares, handed around explicitly (no globals), so
tests can run several services in one process."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from cachetools import TTLCache
from sqlalchemy import Engine
from sqlmodel import Session

from envmgr.auth.signing import Signer
from envmgr.auth.tokens import Caller
from envmgr.backends.base import Backend
from envmgr.core.clock import Clock
from envmgr.core.db import write_session
from envmgr.costs.catalog import Catalog
from envmgr.notebooks.storage.base import Storage
from envmgr.runtimes.activity import Last
from envmgr.settings import Settings


class Waker(Protocol):
    """What the API needs of the worker: a nudge that an operation is waiting."""

    def wake(self) -> None: ...


@dataclass
class Context:
    settings: Settings
    engine: Engine
    backend: Backend
    catalog: Catalog
    storage: Storage
    signer: Signer
    http: httpx.AsyncClient  # to runtimes: the proxy and the extension's endpoints
    worker: Waker | None = field(default=None)
    jobs: Waker | None = field(default=None)  # the job supervisor
    clock: Clock = field(default_factory=Clock)
    # token hash, "session:<id>" or "user:<id>" -> the caller, briefly: authentication is
    # on every request's path.
    user_cache: TTLCache[str, Caller] = field(default_factory=lambda: TTLCache(10_000, 10))
    # token id -> when its last_used_at was last written (monotonic)
    token_used: dict[str, float] = field(default_factory=dict)
    # runtime id -> its last activity this replica saw (envmgr.runtimes.activity), and when
    # that was last written to the database (monotonic; at most every ACCESS_WRITE_SECONDS).
    activity: dict[str, Last] = field(default_factory=dict)
    access_written: dict[str, float] = field(default_factory=dict)

    def tx(self) -> AbstractContextManager[Session]:
        """A write transaction stamped with this service's clock."""
        return write_session(self.engine, self.clock.now())

    def wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    def wake_jobs(self) -> None:
        if self.jobs is not None:
            self.jobs.wake()
