"""Cost reports from the daily rollup, plus what is billing right now (the open intervals
accrual has not closed yet), grouped and bucketed as the admin API asks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import DateTime, Engine, and_, case, func, literal, or_, select
from sqlmodel import col

from envmgr.core.models import (
    CostDaily,
    CostGroupDaily,
    CostGroupMonthly,
    CostState,
    Disk,
    Runtime,
    User,
    Workspace,
)
from envmgr.costs.accrual import DISK_BILLED, Key, accrue, billed, by_group, owners_of
from envmgr.costs.catalog import Catalog
from envmgr.costs.money import micros, usd
from envmgr.costs.pricing import BILLED_STATUSES

GRANULARITIES = ("day", "week", "month")
GROUPINGS = ("user", "workspace", "machine_type", "label:<key>")


def period(day: date, granularity: str) -> str:
    if granularity == "week":
        return (day - timedelta(days=day.weekday())).isoformat()  # the Monday
    if granularity == "month":
        return day.strftime("%Y-%m")
    return day.isoformat()


def report(engine: Engine, catalog: Catalog, start: date, end: date, group_by: str,
           granularity: str, now: datetime, owner_id: str | None = None) -> dict[str, Any]:
    """Costs for UTC days start..end inclusive: everyone's from the grouped rollup, one
    owner's from the per-resource rollup (a few rows)."""
    rows = _grouped_rows(engine, catalog, start, end, group_by, granularity, now) \
        if owner_id is None else \
        _owner_rows(engine, catalog, start, end, group_by, granularity, now, owner_id)
    return _shape(catalog, start, end, group_by, granularity, rows)


def _owner_rows(engine: Engine, catalog: Catalog, start: date, end: date, group_by: str,
                granularity: str, now: datetime, owner_id: str
                ) -> list[tuple[str, str, int, int]]:
    """(period, group name, compute, disk) of one owner, from the per-resource rollup."""
    cd = CostDaily.__table__.c
    key_col, resolve = _grouping(group_by)
    q = (select(cd.day, cd.resource, key_col.label("k"), func.sum(cd.compute_micros),
                func.sum(cd.disk_micros))
         .where(cd.day >= start, cd.day <= end, cd.owner_id == owner_id)
         .group_by(cd.day, cd.resource, key_col))
    if group_by.startswith("label:"):
        q = q.select_from(CostDaily.__table__.outerjoin(
            Runtime.__table__, Runtime.__table__.c.id == cd.resource_id))
    with engine.connect() as conn:
        rows = [(day, resource, k, int(compute), int(disk))
                for day, resource, k, compute, disk in conn.execute(q).all()]
        live = _live(conn, catalog, end, now, owner_id)
        live_labels = _labels(conn, group_by, {k[2] for k in live if k[1] == "runtime"})
        for (day, resource, rid, owner, ws, mt), exact in live.items():
            if start <= day <= end and owner == owner_id:
                k = {"user": owner, "workspace": ws, "machine_type": mt}.get(
                    group_by, live_labels.get(rid))
                amount = micros(exact)
                rows.append((day, resource, k, amount if resource == "runtime" else 0,
                             amount if resource == "disk" else 0))
        names = resolve(conn, {r[2] for r in rows})
    named = []
    for day, resource, k, compute, disk in rows:
        key = "(disks)" if resource == "disk" and group_by not in ("user", "workspace") \
            else names.get(k, k if k is not None else "(none)")
        named.append((period(day, granularity), key, compute, disk))
    return named


def _shape(catalog: Catalog, start: date, end: date, group_by: str, granularity: str,
           rows: list[tuple[str, str, int, int]]) -> dict[str, Any]:
    """rows: (period, group name, compute, disk), in micro-dollars; dollars only here."""
    groups: dict[str, dict[str, Any]] = {}
    for bucket, key, compute, disk in rows:
        g = groups.setdefault(key, {"key": key, "total": 0, "compute": 0, "disk": 0,
                                    "series": defaultdict(int)})
        g["compute"] += compute
        g["disk"] += disk
        g["total"] += compute + disk
        g["series"][bucket] += compute + disk
    out = []
    for g in sorted(groups.values(), key=lambda g: (-g["total"], g["key"])):
        if g["total"] == 0:
            continue
        out.append({"key": g["key"], "total": usd(g["total"]),
                    "compute": usd(g["compute"]), "disk": usd(g["disk"]),
                    "series": [{"period": p, "amount": usd(a)}
                               for p, a in sorted(g["series"].items())]})
    return {"currency": catalog.currency, "start": start.isoformat(), "end": end.isoformat(),
            "group_by": group_by, "granularity": granularity,
            "total": usd(sum(g["total"] for g in groups.values())), "groups": out}


def _bucket(dialect: str, granularity: str, day: Any) -> Any:
    """The period of a day, computed by the database (so a year of daily rows for
    thousands of groups never travels to Python one by one)."""
    if granularity == "month":
        return func.to_char(day, "YYYY-MM") if dialect == "postgresql" \
            else func.strftime("%Y-%m", day)
    if granularity == "week":  # the Monday
        return func.to_char(func.date_trunc("week", day), "YYYY-MM-DD") \
            if dialect == "postgresql" else func.date(day, "-6 days", "weekday 1")
    return day


def _grouped_rows(engine: Engine, catalog: Catalog, start: date, end: date, group_by: str,
                  granularity: str, now: datetime) -> list[tuple[str, str, int, int]]:
    """(period, group name, compute, disk) from the grouped rollups plus what bills now.
    Runtimes without the label asked for are the runtime total minus the labelled ones."""
    label = group_by.startswith("label:")
    dims = [group_by, "total", "machine_type"] if label else [group_by]
    sums: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])

    def add(dim: str, when: str, key: str, compute: int, disk: int) -> None:
        s = sums[(dim, when, key)]
        s[0], s[1] = s[0] + int(compute), s[1] + int(disk)
    with engine.connect() as conn:
        for row in _rollup(conn, dims, start, end, granularity):
            add(*row)
        for dim, day, key, compute, disk in _live_grouped(conn, catalog, dims, start, end, now):
            add(dim, period(day, granularity), key, compute, disk)
        names = _grouping(group_by)[1](conn, {key for (_, _, key) in sums})
    rows = []
    if not label:
        for (_, when, key), (compute, disk) in sums.items():
            rows.append((when, names.get(key, key), compute, disk))
        return rows
    labelled: dict[str, int] = defaultdict(int)
    for (dim, when, key), (compute, disk) in sums.items():
        if dim == group_by:
            rows.append((when, key, compute, disk))
            labelled[when] += compute
        elif dim == "machine_type" and key == "(disks)":
            rows.append((when, "(disks)", 0, disk))
    for (dim, when, _), (compute, _disk) in sums.items():
        if dim == "total":
            rows.append((when, "(none)", compute - labelled[when], 0))
    return rows


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def _rollup(conn: Any, dims: list[str], start: date, end: date, granularity: str
            ) -> Iterator[tuple[str, str, str, int, int]]:
    """(dimension, period, key, compute, disk) from the rollups: whole months of a monthly
    report from the monthly one, every other day from the daily one."""
    spans = [(start, end)]
    if granularity == "month":
        first, stop = (start if start.day == 1 else _next_month(start),
                       (end + timedelta(days=1)).replace(day=1))
        if first < stop:
            m = CostGroupMonthly.__table__.c
            for dim, month, key, compute, disk in conn.execute(
                    select(m.dimension, m.month, m.key, m.compute_micros, m.disk_micros)
                    .where(m.dimension.in_(dims), m.month >= first, m.month < stop)):
                yield dim, period(month, "month"), key, compute, disk
            spans = [(start, first - timedelta(days=1)), (stop, end)]
    spans = [(a, b) for a, b in spans if a <= b]
    if not spans:
        return
    g = CostGroupDaily.__table__.c
    bucket = _bucket(conn.dialect.name, granularity, g.day).label("bucket")
    for dim, when, key, compute, disk in conn.execute(
            select(g.dimension, bucket, g.key, func.sum(g.compute_micros), func.sum(g.disk_micros))
            .where(g.dimension.in_(dims), or_(*(and_(g.day >= a, g.day <= b) for a, b in spans)))
            .group_by(g.dimension, bucket, g.key)):
        yield dim, when.isoformat() if isinstance(when, date) else str(when), key, compute, disk


def _billed_now() -> Any:
    cs = CostState.__table__.c
    return or_(and_(cs.resource == "runtime", cs.status.in_(BILLED_STATUSES)),
               and_(cs.resource == "disk", cs.status.in_(DISK_BILLED)))


def _hours_until(dialect: str, since: Any, now: datetime) -> Any:
    if dialect == "postgresql":
        return func.extract("epoch", literal(now, DateTime(timezone=True)) - since) / 3600
    naive = now.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
    return (func.julianday(naive) - func.julianday(since)) * 24


def _live_key(dim: str) -> Any:
    """The value a billing resource counts under in `dim` (as by_group decides)."""
    cs, rt, dk = CostState.__table__.c, Runtime.__table__.c, Disk.__table__.c
    if dim == "total":
        return literal("all")
    if dim == "user":
        return func.coalesce(rt.owner_id, dk.owner_id)
    if dim == "workspace":
        return func.coalesce(rt.workspace_id, dk.workspace_id)
    if dim == "machine_type":
        return case((cs.resource == "runtime", cs.machine_type), else_=literal("(disks)"))
    return rt.labels[dim.removeprefix("label:")].as_string()


def _live_grouped(conn: Any, catalog: Catalog, dims: list[str], start: date, end: date,
                  now: datetime) -> Iterator[tuple[str, date, str, int, int]]:
    """(dimension, day, key, compute, disk) of what bills now and accrual has not folded.
    Accrual checkpoints every open interval at midnight, so most of it lies within today:
    that part is summed by the database per key and rate, never resource by resource."""
    today = now.date()
    if start <= today <= end:
        cs, rt, dk = CostState.__table__.c, Runtime.__table__.c, Disk.__table__.c
        midnight = datetime.combine(today, time.min, now.tzinfo)
        hours = func.sum(_hours_until(conn.dialect.name, cs.since, now))
        joined = CostState.__table__.outerjoin(Runtime.__table__, rt.id == cs.resource_id) \
            .outerjoin(Disk.__table__, dk.id == cs.resource_id)
        for dim in dims:
            key = _live_key(dim).label("k")
            q = (select(cs.resource, cs.machine_type, cs.disk_type, cs.size_gb, key, hours)
                 .select_from(joined)
                 .where(_billed_now(), cs.since >= midnight, cs.since <= now)
                 .group_by(cs.resource, cs.machine_type, cs.disk_type, cs.size_gb, key))
            if dim.startswith("label:"):
                q = q.where(cs.resource == "runtime", key.isnot(None))
            for resource, machine, disk_type, size_gb, k, h in conn.execute(q):
                h = Decimal(str(h))  # SQLite: a float; PostgreSQL: numeric
                if resource == "runtime":
                    yield dim, today, k, micros(catalog.machine_micros_per_hour(machine) * h), 0
                else:
                    yield dim, today, k, 0, micros(
                        catalog.disk_micros_per_hour(disk_type, size_gb) * h)
    # Older open intervals exist only while accrual is behind: few, split by day here.
    live = _live(conn, catalog, end, now, stale=True)
    labels = dict(conn.execute(select(col(Runtime.id), col(Runtime.labels)).where(
        col(Runtime.id).in_({k[2] for k in live if k[1] == "runtime"}))).all()) if live else {}
    for k, exact in live.items():
        if start <= k[0] <= end:
            amount = micros(exact)
            for dim, key in by_group(k, amount, labels.get(k[2]) or {}):
                if dim in dims:
                    yield (dim, k[0], key, amount if k[1] == "runtime" else 0,
                           amount if k[1] == "disk" else 0)


def _live(conn: Any, catalog: Catalog, end: date, now: datetime, owner_id: str | None = None,
          stale: bool = False) -> dict[Key, Decimal]:
    """What bills now and accrual has not folded in yet, resource by resource: one owner's,
    or (stale) only intervals that began before today."""
    live: dict[Key, Decimal] = defaultdict(Decimal)
    cs = CostState.__table__.c
    q = select(CostState.__table__).where(_billed_now())
    if stale:
        q = q.where(cs.since < datetime.combine(now.date(), time.min, now.tzinfo))
    if owner_id is not None:
        q = q.where(or_(
            cs.resource_id.in_(select(col(Runtime.id)).where(col(Runtime.owner_id) == owner_id)),
            cs.resource_id.in_(select(col(Disk.id)).where(col(Disk.owner_id) == owner_id))))
    states = [st for st in conn.execute(q).all() if billed(st)]
    if not states:
        return live
    owners = owners_of(conn, {st.resource_id for st in states})
    range_end = datetime.combine(end + timedelta(days=1), datetime.min.time(), now.tzinfo)
    for state in states:  # plain rows: accrual only reads their attributes
        accrue(catalog, state, min(now, range_end), live, owners)
    return live


def _grouping(group_by: str) -> tuple[Any, Any]:
    """The SQL expression to group by, and how to turn its values into names."""
    cd = CostDaily.__table__.c
    if group_by == "user":
        return cd.owner_id, lambda conn, ids: dict(conn.execute(
            select(col(User.id), col(User.email)).where(col(User.id).in_(ids))).all())
    if group_by == "workspace":
        return cd.workspace_id, lambda conn, ids: dict(conn.execute(
            select(col(Workspace.id), col(Workspace.name)).where(col(Workspace.id).in_(ids))).all())
    if group_by == "machine_type":
        return cd.machine_type, lambda conn, ids: {}
    label = group_by.removeprefix("label:")
    return Runtime.__table__.c.labels[label].as_string(), lambda conn, ids: {}


def _labels(conn: Any, group_by: str, ids: set[str]) -> dict[str, str | None]:
    if not group_by.startswith("label:") or not ids:
        return {}
    label = group_by.removeprefix("label:")
    return {rid: (labels or {}).get(label) for rid, labels in conn.execute(
        select(col(Runtime.id), col(Runtime.labels)).where(col(Runtime.id).in_(ids))).all()}
