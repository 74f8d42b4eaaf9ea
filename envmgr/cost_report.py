"""Cost reports from the daily rollup, plus what is billing right now (the open intervals
accrual has not closed yet), grouped and bucketed as the admin API asks."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from envmgr.catalog import Catalog
from envmgr.cost_accrual import Key, accrue, billed, owners_of
from envmgr.models import CostDaily, CostState, Runtime, User, Workspace

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
    """Costs for UTC days start..end inclusive."""
    cd = CostDaily.__table__.c
    key_col, resolve = _grouping(group_by)
    q = (select(cd.day, cd.resource, key_col.label("k"), func.sum(cd.compute_usd),
                func.sum(cd.disk_usd))
         .where(cd.day >= start, cd.day <= end)
         .group_by(cd.day, cd.resource, key_col))
    if group_by.startswith("label:"):
        q = q.select_from(CostDaily.__table__.outerjoin(
            Runtime.__table__, Runtime.__table__.c.id == cd.resource_id))
    if owner_id:
        q = q.where(cd.owner_id == owner_id)
    with engine.connect() as conn:
        rows = [(day, resource, k, compute, disk)
                for day, resource, k, compute, disk in conn.execute(q).all()]
        # What bills now and has not been folded in yet (at most a day per resource).
        live: dict[Key, float] = defaultdict(float)
        states = [CostState(**st._mapping) for st in conn.execute(select(CostState)).all()]
        open_ids = {st.resource_id for st in states if billed(st)}
        owners = owners_of(conn, open_ids) if open_ids else {}
        range_end = datetime.combine(end + timedelta(days=1), datetime.min.time(), now.tzinfo)
        for state in states:
            accrue(catalog, state, min(now, range_end), live, owners)
        live_labels = _labels(conn, group_by, {k[2] for k in live if k[1] == "runtime"})
        for (day, resource, rid, owner, ws, mt), amount in live.items():
            if start <= day <= end and (owner_id is None or owner == owner_id):
                k = {"user": owner, "workspace": ws, "machine_type": mt}.get(
                    group_by, live_labels.get(rid))
                rows.append((day, resource, k, amount if resource == "runtime" else 0.0,
                             amount if resource == "disk" else 0.0))
        names = resolve(conn, {r[2] for r in rows})
    groups: dict[str, dict[str, Any]] = {}
    for day, resource, k, compute, disk in rows:
        key = "(disks)" if resource == "disk" and group_by not in ("user", "workspace") \
            else names.get(k, k if k is not None else "(none)")
        g = groups.setdefault(key, {"key": key, "total": 0.0, "compute": 0.0, "disk": 0.0,
                                    "series": defaultdict(float)})
        g["compute"] += compute
        g["disk"] += disk
        g["total"] += compute + disk
        g["series"][period(day, granularity)] += compute + disk
    out = []
    for g in sorted(groups.values(), key=lambda g: -g["total"]):
        out.append({"key": g["key"], "total": round(g["total"], 4),
                    "compute": round(g["compute"], 4), "disk": round(g["disk"], 4),
                    "series": [{"period": p, "amount": round(a, 4)}
                               for p, a in sorted(g["series"].items())]})
    return {"currency": catalog.currency, "start": start.isoformat(), "end": end.isoformat(),
            "group_by": group_by, "granularity": granularity,
            "total": round(sum(g["total"] for g in out), 4), "groups": out}


def _grouping(group_by: str) -> tuple[Any, Any]:
    """The SQL expression to group by, and how to turn its values into names."""
    cd = CostDaily.__table__.c
    if group_by == "user":
        return cd.owner_id, lambda conn, ids: dict(conn.execute(
            select(User.id, User.email).where(User.id.in_(ids))).all())
    if group_by == "workspace":
        return cd.workspace_id, lambda conn, ids: dict(conn.execute(
            select(Workspace.id, Workspace.name).where(Workspace.id.in_(ids))).all())
    if group_by == "machine_type":
        return cd.machine_type, lambda conn, ids: {}
    label = group_by.removeprefix("label:")
    return Runtime.__table__.c.labels[label].as_string(), lambda conn, ids: {}


def _labels(conn: Any, group_by: str, ids: set[str]) -> dict[str, str | None]:
    if not group_by.startswith("label:") or not ids:
        return {}
    label = group_by.removeprefix("label:")
    return {rid: (labels or {}).get(label) for rid, labels in conn.execute(
        select(Runtime.id, Runtime.labels).where(Runtime.id.in_(ids))).all()}
