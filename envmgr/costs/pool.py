"""What the pool of spare VMs costs: a spare bills as its machine type from when it is
first seen alive until it is claimed (then it bills as the runtime that claimed it) or
deleted. Spares are recorded as events of resource `pool` like any other resource, so the
rollup and the dashboard carry them under the owner and workspace "(pool)". Sightings
come from the reconciler's pass, so a spare's start and end are known to that interval."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, func, select
from sqlmodel import col

from envmgr.core.db import write_session
from envmgr.core.models import CostState, Event

POOL = "(pool)"
WAITING, GONE = "running", "released"


Sighting = tuple[str, datetime, datetime | None]  # machine type, since, until (None: waits)


def record_spares(engine: Engine, spares: dict[str, Sighting], now: datetime) -> int:
    """Note spares that appeared, were claimed or went since the last report (name ->
    machine type, since, until); a spare no longer reported ends now. Returns how many
    events it wrote."""
    with write_session(engine, now) as s:
        if not spares and s.execute(select(col(CostState.resource_id)).where(
                col(CostState.resource) == "pool", col(CostState.status) == WAITING)
                .limit(1)).first() is None:
            return 0  # no pool here (the local backend): no scan of the event log
        last = select(func.max(col(Event.id))).where(col(Event.resource) == "pool") \
            .group_by(col(Event.resource_id))
        latest = {e.resource_id: e.to_status for e in s.execute(
            select(Event).where(col(Event.id).in_(last))).scalars()}
        events: list[Event] = []

        def note(name: str, status: str, at: datetime, **detail: str) -> None:
            events.append(Event(resource="pool", resource_id=name, to_status=status, at=at,
                                from_status=latest.get(name), detail=detail,
                                reason="a spare waits for a claim" if status == WAITING
                                else "claimed or deleted"))
            latest[name] = status

        for name, (machine_type, since, until) in spares.items():
            if name not in latest:
                note(name, WAITING, since, machine_type=machine_type)
            if until is not None and latest[name] == WAITING:
                note(name, GONE, until)
        for name, status in list(latest.items()):
            if status == WAITING and name not in spares:
                note(name, GONE, now)
        s.add_all(events)
        return len(events)
