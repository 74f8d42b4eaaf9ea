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
    Job,
    Runtime,
    User,
    Workspace,
)
from envmgr.costs.accrual import (
    BILLED_BY_RESOURCE,
    COLUMNS,
    Key,
    accrue,
    billed,
    by_group,
    labels_of,
    owners_of,
    split,
)
from envmgr.costs.catalog import Catalog
from envmgr.costs.money import micros, usd
from envmgr.costs.pool import POOL

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


Amounts = tuple[int, int, int]  # compute, disk, jobs (micro-dollars)
Row = tuple[str, str, Amounts]  # period, group name, amounts


def _owner_rows(engine: Engine, catalog: Catalog, start: date, end: date, group_by: str,
                granularity: str, now: datetime, owner_id: str) -> list[Row]:
    """(period, group name, amounts) of one owner, from the per-resource rollup."""
    cd = CostDaily.__table__.c
    key_col, resolve = _grouping(group_by)
    q = (select(cd.day, cd.resource, key_col.label("k"),
                *(func.sum(cd[c]) for c in COLUMNS))
         .where(cd.day >= start, cd.day <= end, cd.owner_id == owner_id)
         .group_by(cd.day, cd.resource, key_col))
    if group_by.startswith("label:"):
        q = q.select_from(CostDaily.__table__.outerjoin(
            Runtime.__table__, Runtime.__table__.c.id == cd.resource_id).outerjoin(
            Job.__table__, Job.__table__.c.id == cd.resource_id))
    with engine.connect() as conn:
        rows = [(day, resource, k, (int(c), int(d), int(j)))
                for day, resource, k, c, d, j in conn.execute(q).all()]
        live = _live(conn, catalog, end, now, owner_id)
        live_labels = _labels(conn, group_by, {k[2] for k in live if k[1] != "disk"})
        for (day, resource, rid, owner, ws, mt), exact in live.items():
            if start <= day <= end and owner == owner_id:
                k = {"user": owner, "workspace": ws, "machine_type": mt}.get(
                    group_by, live_labels.get(rid))
                rows.append((day, resource, k, _as(resource, micros(exact))))
        names = resolve(conn, {r[2] for r in rows})
    named = []
    for day, resource, k, amounts in rows:
        key = "(disks)" if resource == "disk" and group_by not in ("user", "workspace") \
            else names.get(k, k if k is not None else "(none)")
        named.append((period(day, granularity), key, amounts))
    return named


def _as(resource: str, amount: int) -> Amounts:
    c, d, j = (split(resource, amount)[name] for name in COLUMNS)
    return c, d, j


def _shape(catalog: Catalog, start: date, end: date, group_by: str, granularity: str,
           rows: list[Row]) -> dict[str, Any]:
    """rows: (period, group name, amounts), in micro-dollars; dollars only here. `compute`
    is interactive runtimes', `jobs` notebook jobs' compute; `total` includes both."""
    groups: dict[str, dict[str, Any]] = {}
    for bucket, key, (compute, disk, jobs) in rows:
        g = groups.setdefault(key, {"key": key, "total": 0, "compute": 0, "disk": 0,
                                    "jobs": 0, "series": defaultdict(int)})
        g["compute"] += compute
        g["disk"] += disk
        g["jobs"] += jobs
        g["total"] += compute + disk + jobs
        g["series"][bucket] += compute + disk + jobs
    out = []
    for g in sorted(groups.values(), key=lambda g: (-g["total"], g["key"])):
        if g["total"] == 0:
            continue
        out.append({"key": g["key"], "total": usd(g["total"]),
                    "compute": usd(g["compute"]), "disk": usd(g["disk"]),
                    "jobs": usd(g["jobs"]),
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
                  granularity: str, now: datetime) -> list[Row]:
    """(period, group name, amounts) from the grouped rollups plus what bills now.
    Runtimes and jobs without the label asked for are the total minus the labelled ones."""
    label = group_by.startswith("label:")
    dims = [group_by, "total", "machine_type"] if label else [group_by]
    sums: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])

    def add(dim: str, when: str, key: str, amounts: Amounts) -> None:
        s = sums[(dim, when, key)]
        for i, v in enumerate(amounts):
            s[i] += int(v)
    with engine.connect() as conn:
        for dim, when, key, amounts in _rollup(conn, dims, start, end, granularity):
            add(dim, when, key, amounts)
        for dim, day, key, amounts in _live_grouped(conn, catalog, dims, start, end, now):
            add(dim, period(day, granularity), key, amounts)
        names = _grouping(group_by)[1](conn, {key for (_, _, key) in sums})
    rows: list[Row] = []
    if not label:
        for (_, when, key), (c, d, j) in sums.items():
            rows.append((when, names.get(key, key), (c, d, j)))
        return rows
    labelled: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (dim, when, key), (c, d, j) in sums.items():
        if dim == group_by:
            rows.append((when, key, (c, d, j)))
            labelled[when][0] += c
            labelled[when][1] += j
        elif dim == "machine_type" and key == "(disks)":
            rows.append((when, "(disks)", (0, d, 0)))
    for (dim, when, _), (c, _d, j) in sums.items():
        if dim == "total":
            rows.append((when, "(none)", (c - labelled[when][0], 0, j - labelled[when][1])))
    return rows


def _next_month(day: date) -> date:
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def _rollup(conn: Any, dims: list[str], start: date, end: date, granularity: str
            ) -> Iterator[tuple[str, str, str, Amounts]]:
    """(dimension, period, key, amounts) from the rollups: whole months of a monthly
    report from the monthly one, every other day from the daily one."""
    spans = [(start, end)]
    if granularity == "month":
        first, stop = (start if start.day == 1 else _next_month(start),
                       (end + timedelta(days=1)).replace(day=1))
        if first < stop:
            m = CostGroupMonthly.__table__.c
            for dim, month, key, c, d, j in conn.execute(
                    select(m.dimension, m.month, m.key, *(m[c] for c in COLUMNS))
                    .where(m.dimension.in_(dims), m.month >= first, m.month < stop)):
                yield dim, period(month, "month"), key, (c, d, j)
            spans = [(start, first - timedelta(days=1)), (stop, end)]
    spans = [(a, b) for a, b in spans if a <= b]
    if not spans:
        return
    g = CostGroupDaily.__table__.c
    bucket = _bucket(conn.dialect.name, granularity, g.day).label("bucket")
    for dim, when, key, c, d, j in conn.execute(
            select(g.dimension, bucket, g.key, *(func.sum(g[c]) for c in COLUMNS))
            .where(g.dimension.in_(dims), or_(*(and_(g.day >= a, g.day <= b) for a, b in spans)))
            .group_by(g.dimension, bucket, g.key)):
        yield dim, when.isoformat() if isinstance(when, date) else str(when), key, (c, d, j)


def _billed_now() -> Any:
    cs = CostState.__table__.c
    return or_(*(and_(cs.resource == resource, cs.status.in_(statuses))
                 for resource, statuses in BILLED_BY_RESOURCE.items()))


def _hours_until(dialect: str, since: Any, now: datetime) -> Any:
    if dialect == "postgresql":
        return func.extract("epoch", literal(now, DateTime(timezone=True)) - since) / 3600
    naive = now.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
    return (func.julianday(naive) - func.julianday(since)) * 24


def _live_key(dim: str) -> Any:
    """The value a billing resource counts under in `dim` (as by_group decides)."""
    cs, rt, dk, jb = (CostState.__table__.c, Runtime.__table__.c, Disk.__table__.c,
                      Job.__table__.c)
    if dim == "total":
        return literal("all")
    if dim == "user":
        return func.coalesce(rt.owner_id, dk.owner_id, jb.owner_id, literal(POOL))
    if dim == "workspace":
        return func.coalesce(rt.workspace_id, dk.workspace_id, jb.workspace_id, literal(POOL))
    if dim == "machine_type":
        return case((cs.resource == "disk", literal("(disks)")), else_=cs.machine_type)
    label = dim.removeprefix("label:")
    return func.coalesce(rt.labels[label].as_string(), jb.labels[label].as_string())


def _live_grouped(conn: Any, catalog: Catalog, dims: list[str], start: date, end: date,
                  now: datetime) -> Iterator[tuple[str, date, str, Amounts]]:
    """(dimension, day, key, amounts) of what bills now and accrual has not folded.
    Accrual checkpoints every open interval at midnight, so most of it lies within today:
    that part is summed by the database per key and rate, never resource by resource."""
    today = now.date()
    if start <= today <= end:
        cs, rt, dk, jb = (CostState.__table__.c, Runtime.__table__.c, Disk.__table__.c,
                          Job.__table__.c)
        midnight = datetime.combine(today, time.min, now.tzinfo)
        hours = func.sum(_hours_until(conn.dialect.name, cs.since, now))
        joined = CostState.__table__.outerjoin(Runtime.__table__, rt.id == cs.resource_id) \
            .outerjoin(Disk.__table__, dk.id == cs.resource_id) \
            .outerjoin(Job.__table__, jb.id == cs.resource_id)
        for dim in dims:
            key = _live_key(dim).label("k")
            q = (select(cs.resource, cs.machine_type, cs.disk_type, cs.size_gb, key, hours)
                 .select_from(joined)
                 .where(_billed_now(), cs.since >= midnight, cs.since <= now)
                 .group_by(cs.resource, cs.machine_type, cs.disk_type, cs.size_gb, key))
            if dim.startswith("label:"):
                q = q.where(cs.resource != "disk", key.isnot(None))
            for resource, machine, disk_type, size_gb, k, h in conn.execute(q):
                h = Decimal(str(h))  # SQLite: a float; PostgreSQL: numeric
                rate = catalog.disk_micros_per_hour(disk_type, size_gb) if resource == "disk" \
                    else catalog.machine_micros_per_hour(machine)
                yield dim, today, k, _as(resource, micros(rate * h))
    # Older open intervals exist only while accrual is behind: few, split by day here.
    live = _live(conn, catalog, end, now, stale=True)
    labels = labels_of(conn, {k[2] for k in live if k[1] != "disk"}) if live else {}
    for k, exact in live.items():
        if start <= k[0] <= end:
            amount = micros(exact)
            for dim, key in by_group(k, amount, labels.get(k[2]) or {}):
                if dim in dims:
                    yield dim, k[0], key, _as(k[1], amount)


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
        q = q.where(or_(*(cs.resource_id.in_(select(col(m.id)).where(col(m.owner_id) == owner_id))
                          for m in (Runtime, Disk, Job))))
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
    return func.coalesce(Runtime.__table__.c.labels[label].as_string(),
                         Job.__table__.c.labels[label].as_string()), lambda conn, ids: {}


def _labels(conn: Any, group_by: str, ids: set[str]) -> dict[str, str | None]:
    if not group_by.startswith("label:") or not ids:
        return {}
    label = group_by.removeprefix("label:")
    return {rid: (labels or {}).get(label) for rid, labels in labels_of(conn, ids).items()}
