"""Rows to API bodies, in batches (one query per kind, never one per row)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, select

from envmgr.catalog import Catalog
from envmgr.costs import disk_cost_per_month, runtime_cost_per_hour
from envmgr.models import Disk, Operation, Runtime, User, Workspace
from envmgr.schemas import DiskOut, ErrorRecord, RuntimeOut
from envmgr.timeutil import iso

MAX_ERRORS_SHOWN = 5


def _names(s: Session, rows: Sequence[Runtime | Disk]) -> tuple[dict[str, str], dict[str, str]]:
    ws_ids = {r.workspace_id for r in rows}
    user_ids = {r.owner_id for r in rows}
    ws = dict(s.exec(select(Workspace.id, Workspace.name).where(Workspace.id.in_(ws_ids))).all())
    users = dict(s.exec(select(User.id, User.email).where(User.id.in_(user_ids))).all())
    return ws, users


def jupyter_url(rt: Runtime) -> str | None:
    """Until the proxy lands, the owner reaches Jupyter directly with its token."""
    if rt.status != "running" or not rt.endpoint:
        return None
    return f"{rt.endpoint}/lab?token={rt.secret}"


def runtime_views(s: Session, catalog: Catalog, viewer: User,
                  rows: Sequence[Runtime]) -> list[RuntimeOut]:
    if not rows:
        return []
    ws, users = _names(s, rows)
    ids = [r.id for r in rows]
    disks = {d.id: d for d in s.exec(select(Disk).where(
        Disk.id.in_([r.disk_id for r in rows if r.disk_id]))).all()}
    errors: dict[str, list[ErrorRecord]] = {}
    for op in s.exec(select(Operation).where(Operation.resource_id.in_(ids),
                                             Operation.status == "failed")
                     .order_by(Operation.created_at.desc())).all():
        bucket = errors.setdefault(op.resource_id, [])
        if len(bucket) < MAX_ERRORS_SHOWN:
            bucket.append(ErrorRecord(at=iso(op.finished_at or op.created_at), action=op.action,
                                      message=op.error or ""))
    return [
        RuntimeOut(
            id=r.id, workspace=ws.get(r.workspace_id, ""), owner=users.get(r.owner_id, ""),
            status=r.status, machine_type=r.machine_type, disk_id=r.disk_id,
            autopause_minutes=r.autopause_minutes, labels=r.labels,
            url=jupyter_url(r) if (viewer.admin or viewer.id == r.owner_id) else None,
            created_at=iso(r.created_at), updated_at=iso(r.updated_at),
            status_reason=r.status_reason,
            cost_per_hour=runtime_cost_per_hour(catalog, r, disks.get(r.disk_id or "")),
            errors=errors.get(r.id, []),
        )
        for r in rows
    ]


def disk_views(s: Session, catalog: Catalog, rows: Sequence[Disk]) -> list[DiskOut]:
    if not rows:
        return []
    ws, users = _names(s, rows)
    return [
        DiskOut(id=d.id, workspace=ws.get(d.workspace_id, ""), owner=users.get(d.owner_id, ""),
                status=d.status, size_gb=d.size_gb, type=d.type, attached_to=d.attached_to,
                cost_per_month=disk_cost_per_month(catalog, d), created_at=iso(d.created_at))
        for d in rows
    ]
