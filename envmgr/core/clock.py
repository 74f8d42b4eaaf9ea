"""The service's notion of now: UTC plus an offset that tests move forward (autopause and
the proxy's activity stamps share it, so a moved clock agrees with itself)."""

from __future__ import annotations

from datetime import datetime, timedelta

from envmgr.core.timeutil import utcnow


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)
