"""What every part of a running service shares, handed around explicitly (no globals), so
tests can run several services in one process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cachetools import TTLCache
from sqlalchemy import Engine

from envmgr.backends.base import Backend
from envmgr.catalog import Catalog
from envmgr.models import User
from envmgr.settings import Settings

if TYPE_CHECKING:
    from envmgr.worker import Worker


@dataclass
class Context:
    settings: Settings
    engine: Engine
    backend: Backend
    catalog: Catalog
    worker: Worker | None = field(default=None)
    # token hash -> user, briefly: authentication is on every request's path.
    user_cache: TTLCache[str, User] = field(default_factory=lambda: TTLCache(10_000, 10))

    def wake_worker(self) -> None:
        if self.worker is not None:
            self.worker.wake()
