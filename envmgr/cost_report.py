"""Cost reports from the daily rollup, plus what is billing right now (the open intervals
accrual has not closed yet), grouped and bucketed as the admin API asks."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select

from envmgr.catalog import Catalog
from envmgr.cost_accrual import Key, accrue, owners_of
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
    q = (select(cd.day, cd.resource, cd.resource_id, cd.owner_id, cd.workspace_id,
                cd.machine_type, func.sum(cd.compute_usd), func.sum(cd.disk_usd))
         .where(cd.day >= start, cd.day <= end)
         .group_by(cd.day, cd.resource, cd.resource_id, cd.owner_id, cd.workspace_id,
                   cd.machine_type))
    if owner_id:
        q = q.where(cd.owner_id == owner_id)
    rows: list[tuple[Any, ...]] = []
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(q).all()]
        # What bills now and has not been folded in yet.
        live: dict[Key, float] = defaultdict(float)
        states = conn.execute(select(CostState)).all()
        open_ids = {st.resource_id for st in states}
        owners = owners_of(conn, open_ids) if open_ids else {}
        range_end = datetime.combine(end + timedelta(days=1), datetime.min.time(), now.tzinfo)
        for st in states:
            state = CostState(**st._mapping)
            accrue(catalog, state, min(now, range_end), live, owners)
        for (day, resource, rid, owner, ws, mt), amount in live.items():
            if start <= day <= end and (owner_id is None or owner == owner_id):
                rows.append((day, resource, rid, owner, ws, mt,
                             amount if resource == "runtime" else 0.0,
                             amount if resource == "disk" else 0.0))
        names = _names(conn, group_by, rows)
    groups: dict[str, dict[str, Any]] = {}
    for day, resource, rid, owner, ws, mt, compute, disk in rows:
        key = _key(group_by, names, resource, rid, owner, ws, mt)
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


def _names(conn: Any, group_by: str, rows: list[tuple[Any, ...]]) -> dict[str, str]:
    if group_by == "user":
        ids = {r[3] for r in rows}
        return dict(conn.execute(select(User.id, User.email).where(User.id.in_(ids))).all())
    if group_by == "workspace":
        ids = {r[4] for r in rows}
        return dict(conn.execute(select(Workspace.id, Workspace.name)
                                 .where(Workspace.id.in_(ids))).all())
    if group_by.startswith("label:"):
        label = group_by.removeprefix("label:")
        ids = {r[2] for r in rows if r[1] == "runtime"}
        return {rid: (labels or {}).get(label, "(none)") for rid, labels in conn.execute(
            select(Runtime.id, Runtime.labels).where(Runtime.id.in_(ids))).all()}
    return {}


def _key(group_by: str, names: dict[str, str], resource: str, rid: str, owner: str,
         ws: str, mt: str) -> str:
    if group_by == "user":
        return names.get(owner, owner)
    if group_by == "workspace":
        return names.get(ws, ws)
    if group_by == "machine_type":
        return mt if resource == "runtime" else "(disks)"
    return names.get(rid, "(none)") if resource == "runtime" else "(disks)"
