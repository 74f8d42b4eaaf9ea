"""Cost accrual: the event log, folded into a daily rollup.

Each status event closes the interval its resource spent in the previous status. A runtime
bills compute at its machine type's hourly price while in a billed status; a disk bills
for every second it exists (creating to deleted), attached or not, at its size and type.
Intervals are split at UTC midnight, so a status change at midnight, a machine-type change
(its event carries the new type) and a runtime deleted with its disk kept all come out
right. The job is incremental: a watermark on event ids, moved with a compare-and-set in the
same transaction as the rollup rows, so two replicas never count an event twice. It lags
the log by a few seconds because PostgreSQL may commit a lower id after a higher one; the
open intervals (what bills right now) are added at query time."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from envmgr.core.db import rowcount, write_session
from envmgr.core.models import (
    CostDaily,
    CostGroupDaily,
    CostGroupMonthly,
    CostState,
    CostWatermark,
    Disk,
    Event,
    Job,
    Runtime,
)
from envmgr.costs.catalog import Catalog
from envmgr.costs.money import micros, per_hour_for
from envmgr.costs.pool import POOL, WAITING
from envmgr.costs.pricing import BILLED_STATUSES, JOB_BILLED

DISK_BILLED = frozenset({"creating", "ready", "deleting"})
# Which amount a resource's cost is: interactive compute, disks, or notebook jobs' compute.
KIND = {"runtime": 0, "disk": 1, "job": 2, "pool": 0}  # a spare's is interactive compute
COLUMNS = ("compute_micros", "disk_micros", "jobs_micros")
BILLED_BY_RESOURCE = {"runtime": BILLED_STATUSES, "disk": DISK_BILLED, "job": JOB_BILLED,
                      "pool": frozenset({WAITING})}
LABELLED = (Runtime, Job)  # resources that carry labels
LAG = timedelta(seconds=10)
BATCH = 20_000


def billed(state: CostState) -> bool:
    return state.status in BILLED_BY_RESOURCE.get(state.resource, frozenset())


def rate_per_hour(catalog: Catalog, state: CostState) -> Decimal:
    """Micro-dollars per hour, exact."""
    if state.resource in ("runtime", "job", "pool"):
        return catalog.machine_micros_per_hour(state.machine_type)
    return catalog.disk_micros_per_hour(state.disk_type, state.size_gb)


def split_by_day(start: datetime, end: datetime) -> Iterator[tuple[date, int]]:
    """(UTC day, microseconds of [start, end) on that day): integers, so nothing is lost."""
    while start < end:
        midnight = datetime.combine(start.date() + timedelta(days=1), datetime.min.time(),
                                    start.tzinfo)
        stop = min(end, midnight)
        yield start.date(), (stop - start) // timedelta(microseconds=1)
        start = stop


Key = tuple[date, str, str, str, str, str]  # day, resource, id, owner, workspace, machine


def accrue(catalog: Catalog, state: CostState, until: datetime,
           into: dict[Key, Decimal], owners: dict[str, tuple[str, str]]) -> None:
    """Add what `state` cost until `until`, day by day, in exact micro-dollars."""
    if not billed(state) or until <= state.since:
        return
    rate = rate_per_hour(catalog, state)
    owner, workspace = owners.get(state.resource_id, (POOL, POOL) if state.resource == "pool"
                                  else ("", ""))
    for day, span in split_by_day(state.since, until):
        into[(day, state.resource, state.resource_id, owner, workspace,
              state.machine_type)] += per_hour_for(rate, span)


def owners_of(s: Any, ids: set[str]) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for model in (Runtime, Disk, Job):
        for rid, owner, ws in s.execute(
                select(col(model.id), col(model.owner_id), col(model.workspace_id))
                .where(col(model.id).in_(ids))).all():
            out[rid] = (owner, ws)
    return out


def _add_on_conflict(s: Any, table: Any, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """Insert, or add the amounts to the row already there (SQLite and PostgreSQL)."""
    dialect = s.get_bind().dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    s.execute(ins.on_conflict_do_update(
        index_elements=keys,
        set_={c: table.c[c] + ins.excluded[c] for c in COLUMNS}), rows)


def by_group(key: Key, amount: object, labels: dict[str, str]) -> Iterator[tuple[str, str]]:
    """Every (dimension, key) an amount counts under in the grouped rollup."""
    _, resource, _, owner, workspace, machine_type = key
    yield "total", "all"
    yield "user", owner
    yield "workspace", workspace
    yield "machine_type", "(disks)" if resource == "disk" else machine_type
    if resource != "disk":
        for label, value in labels.items():
            yield f"label:{label}", value


def _upsert(s: Any, exact: dict[Key, Decimal]) -> None:
    if not exact:
        return
    amounts = {k: micros(v) for k, v in exact.items()}  # rounded once per row and batch
    rows = [{"day": k[0], "resource": k[1], "resource_id": k[2], "owner_id": k[3],
             "workspace_id": k[4], "machine_type": k[5], **split(k[1], v)}
            for k, v in amounts.items()]
    _add_on_conflict(s, CostDaily.__table__, rows, ["day", "resource_id", "machine_type"])
    labels = labels_of(s, {k[2] for k in amounts if k[1] != "disk"})
    grouped: dict[tuple[str, date, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for k, v in amounts.items():
        for dimension, key in by_group(k, v, labels.get(k[2]) or {}):
            grouped[(dimension, k[0], key)][KIND[k[1]]] += v
    monthly: dict[tuple[str, date, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for (d, day, key), sums in grouped.items():
        m = monthly[(d, day.replace(day=1), key)]
        for i, v in enumerate(sums):
            m[i] += v
    for table, when, by_key in ((CostGroupDaily.__table__, "day", grouped),
                                (CostGroupMonthly.__table__, "month", monthly)):
        _add_on_conflict(s, table, [
            {"dimension": d, when: day, "key": key, **dict(zip(COLUMNS, v, strict=True))}
            for (d, day, key), v in by_key.items()], ["dimension", when, "key"])


def split(resource: str, amount: int) -> dict[str, int]:
    """An amount as the rollup columns: all of it in its resource's kind."""
    return {c: amount if i == KIND[resource] else 0 for i, c in enumerate(COLUMNS)}


def labels_of(s: Any, ids: set[str]) -> dict[str, dict[str, str]]:
    """The labels of the runtimes and jobs among `ids`."""
    out: dict[str, dict[str, str]] = {}
    for model in LABELLED:
        if ids:
            out.update(s.execute(select(col(model.id), col(model.labels))
                                 .where(col(model.id).in_(ids))).all())
    return out


def accrue_once(engine: Engine, catalog: Catalog, now: datetime) -> int:
    """Fold the next batch of settled events into the rollup; returns how many."""
    horizon = now - LAG
    with write_session(engine) as s:
        mark = s.get(CostWatermark, 1)
        if mark is None:
            mark = CostWatermark(id=1, last_event_id=0)
            s.add(mark)
            s.flush()
        events = s.execute(select(Event).where(col(Event.id) > mark.last_event_id,
                                               col(Event.at) <= horizon)
                           .order_by(col(Event.id)).limit(BATCH)).scalars().all()
        if not events:
            amounts: dict[Key, Decimal] = defaultdict(Decimal)
            _checkpoint(catalog, s, horizon, amounts, None)
            _upsert(s, amounts)
            return 0
        ids = {e.resource_id for e in events}
        states = {st.resource_id: st for st in s.execute(
            select(CostState).where(col(CostState.resource_id).in_(ids))).scalars().all()}
        owners = owners_of(s, ids)
        amounts = defaultdict(Decimal)
        for e in events:
            st = states.get(e.resource_id)
            if st is not None:
                accrue(catalog, st, e.at, amounts, owners)
            else:
                st = CostState(resource_id=e.resource_id, resource=e.resource, status="",
                               since=e.at)
                states[e.resource_id] = st
                s.add(st)
            st.status, st.since = e.to_status, max(e.at, st.since)
            d = e.detail or {}
            if e.resource in ("runtime", "job", "pool") and d.get("machine_type"):
                st.machine_type = d["machine_type"]
            if e.resource == "disk" and d.get("size_gb"):
                st.size_gb, st.disk_type = int(d["size_gb"]), d.get("type", st.disk_type)
        _checkpoint(catalog, s, horizon, amounts, owners)
        _upsert(s, amounts)
        moved = s.execute(update(CostWatermark)
                          .where(col(CostWatermark.id) == 1,
                                 col(CostWatermark.last_event_id) == mark.last_event_id)
                          .values(last_event_id=events[-1].id))
        if rowcount(moved) != 1:  # another replica folded these events: undo ours
            raise _Raced
    return len(events)


class _Raced(Exception):
    pass


def _checkpoint(catalog: Catalog, s: Any, horizon: datetime, amounts: dict[Key, Decimal],
                owners: dict[str, tuple[str, str]] | None) -> None:
    """Fold open intervals up to the last settled midnight, so a resource that bills for
    months without an event (a kept disk) is in the rollup too, and reports only add at
    most a day per resource on the fly."""
    midnight = datetime.combine(horizon.date(), datetime.min.time(), horizon.tzinfo)
    stale = [st for st in s.execute(select(CostState).where(col(CostState.since) < midnight))
             .scalars().all() if billed(st)]
    if not stale:
        return
    known = owners_of(s, {st.resource_id for st in stale}) if owners is None else \
        {**owners_of(s, {st.resource_id for st in stale} - set(owners)), **owners}
    for st in stale:
        accrue(catalog, st, midnight, amounts, known)
        st.since = midnight


def accrue_all(engine: Engine, catalog: Catalog, now: datetime) -> int:
    """Fold everything settled. Two replicas folding at once is an expected race, not an
    error: the loser's transaction (its watermark moved, or a row the winner inserted
    first) is rolled back whole and it reads again, so nothing is counted twice."""
    total, raced = 0, 0
    while True:
        try:
            n = accrue_once(engine, catalog, now)
        except (_Raced, IntegrityError):
            raced += 1
            if raced > 20:  # not a race any more: something is wrong, say it
                raise
            continue
        raced = 0
        total += n
        if n < BATCH:
            return total
