"""The service's one clock. `Clock.now()` is UTC plus an offset that tests move forward:
every decision about time (autopause, leases, deadlines, locks, expiry, stamps on status
changes) asks the context's clock, so a moved clock agrees with itself. Aware datetimes in
code and in the database, ISO-8601 with Z on the wire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import overload


def utcnow() -> datetime:
    """Wall-clock UTC: for the clock itself and for row creation stamps only."""
    return datetime.now(UTC)


@overload
def iso(dt: datetime) -> str: ...
@overload
def iso(dt: None) -> None: ...
@overload
def iso(dt: datetime | None) -> str | None: ...


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)
