"""Rows to API bodies. A runtime is read with everything its view needs in one query (its
workspace, owner, disk and the caller's role), so GET stays cheap."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam
from sqlalchemy import select as sa_select  # more columns than sqlmodel's overloads
from sqlmodel import Session, col, select

from envmgr.api.deps import Paging
from envmgr.api.schemas import (
    ActivityOut,
    DiskOut,
    ErrorRecord,
    EventOut,
    LimitsOut,
    Page,
    RuntimeOut,
)
from envmgr.auth.access import owned_for, refusal
from envmgr.context import Context
from envmgr.core.clock import iso
from envmgr.core.db import read_session
from envmgr.core.errors import invalid, not_found
from envmgr.core.models import Disk, Event, Job, Membership, Runtime, User, Workspace
from envmgr.core.statuses import DiskStatus
from envmgr.costs.catalog import Catalog
from envmgr.costs.pricing import disk_cost_per_month, runtime_cost_per_hour
from envmgr.runtimes.activity import Kind, Last, kind_of, latest, verdict
from envmgr.runtimes.machine import allowed_actions
from envmgr.runtimes.service import proxy_url


def _runtime_select() -> Any:
    """A runtime's columns with its workspace name, owner email, disk, and the viewer's role
    (bind parameter `viewer`). Plain columns, built once: composing a SELECT or loading ORM
    objects costs more than running the query, and GET is the hottest path."""
    rt = Runtime.__table__
    return (
        sa_select(rt, col(Workspace.name).label("workspace_name"),
               col(User.email).label("owner_email"),
               col(Disk.status).label("disk_status"), col(Disk.type).label("disk_type"),
               col(Disk.size_gb).label("disk_size_gb"), col(Membership.role).label("viewer_role"))
        .select_from(rt)
        .join(Workspace, col(Workspace.id) == rt.c.workspace_id)
        .join(User, col(User.id) == rt.c.owner_id)
        .outerjoin(Disk, col(Disk.id) == rt.c.disk_id)
        .outerjoin(Membership, and_(col(Membership.workspace_id) == rt.c.workspace_id,
                                    col(Membership.user_id) == bindparam("viewer")))
    )


RUNTIME_SELECT = _runtime_select()
_RUNTIME_BY_ID = RUNTIME_SELECT.where(col(Runtime.id) == bindparam("runtime_id"))


def may_see(viewer: User, owner_id: str, role: str | None) -> bool:
    return viewer.admin or owner_id == viewer.id or role == "owner"


def runtime_out(ctx: Context, viewer: User, r: Any) -> RuntimeOut:
    """A row of RUNTIME_SELECT as the API shows it to `viewer` (only the owner and admins
    get a url)."""
    mine = viewer.admin or viewer.id == r.owner_id
    running = r.status == "running" and r.endpoint
    # What autopause last learned of activity; a status change counts as activity too.
    last = latest(Last(r.updated_at, Kind.STARTED), ctx.activity.get(r.id),
                  Last(r.last_activity_at, kind_of(r.last_activity_kind))
                  if r.last_activity_at else None)
    due = verdict(last, r.busy_since, r.autopause_minutes,
                  ctx.settings.autopause_max_busy_hours).due
    catalog = ctx.catalog
    lim = ctx.backend.limits_for(r.machine_type)
    return RuntimeOut(
        id=r.id, workspace=r.workspace_name, owner=r.owner_email, status=r.status,
        machine_type=r.machine_type, disk_id=r.disk_id, autopause_minutes=r.autopause_minutes,
        labels=r.labels, url=proxy_url(ctx, viewer, r.id) if mine and running else None,
        created_at=iso(r.created_at), updated_at=iso(r.updated_at),
        status_reason=r.status_reason,
        cost_per_hour=runtime_cost_per_hour(catalog, r.machine_type, r.status, r.disk_type,
                                            r.disk_size_gb, r.disk_status),
        errors=[ErrorRecord(**e) for e in r.errors],
        last_activity_at=iso(last.at) if running else None,
        last_activity=ActivityOut(at=iso(last.at), kind=last.kind.value) if running else None,
        busy_since=iso(r.busy_since) if running and r.busy_since else None,
        autopause_at=iso(due) if running and r.autopause_minutes > 0 else None,
        actions=[a for a in allowed_actions(r.status)
                 if refusal(viewer, r.owner_id, r.viewer_role, a) is None],
        limits=LimitsOut(memory_bytes=lim.memory_bytes, vcpus=lim.cpus or None,
                         pids=lim.pids)
        if lim is not None else None,
    )


def runtime_view(conn: Session | Connection, ctx: Context, viewer: User,
                 runtime_id: str) -> RuntimeOut:
    """The runtime as `viewer` sees it, or 404 if they may not see it."""
    row = conn.execute(_RUNTIME_BY_ID, {"viewer": viewer.id, "runtime_id": runtime_id}).first()
    if row is None or not may_see(viewer, row.owner_id, row.viewer_role):
        raise not_found("runtime", runtime_id)
    return runtime_out(ctx, viewer, row)


def disk_views(s: Session, catalog: Catalog, rows: Sequence[Disk]) -> list[DiskOut]:
    if not rows:
        return []
    ws = dict(s.exec(select(col(Workspace.id), col(Workspace.name))
                     .where(col(Workspace.id).in_({d.workspace_id for d in rows}))).all())
    users = dict(s.exec(select(col(User.id), col(User.email))
                        .where(col(User.id).in_({d.owner_id for d in rows}))).all())
    return [
        DiskOut(id=d.id, workspace=ws.get(d.workspace_id, ""), owner=users.get(d.owner_id, ""),
                status=DiskStatus(d.status), size_gb=d.size_gb, type=d.type,
                attached_to=d.attached_to,
                cost_per_month=disk_cost_per_month(catalog, d.type, d.size_gb, d.status),
                created_at=iso(d.created_at))
        for d in rows
    ]


def status_history(ctx: Context, user: User, model: type[Runtime] | type[Job], resource_id: str,
                   paging: Paging) -> Page[EventOut]:
    """A runtime's or a job's status changes, oldest first, with their reasons."""
    with read_session(ctx.engine) as s:
        if model is Job:
            owned_for(s, user, Job, resource_id)
        else:
            owned_for(s, user, Runtime, resource_id)
        q = select(Event).where(col(Event.resource_id) == resource_id)
        if paging.after:
            if not re.fullmatch(r"[0-9]{1,18}", paging.after):  # fits a 64-bit integer
                raise invalid("cursor", "not a cursor of this list; pass next_cursor")
            q = q.where(col(Event.id) > int(paging.after))
        rows, nxt = paging.page(s.exec(q.order_by(col(Event.id)).limit(paging.limit + 1)).all())
    return Page[EventOut](items=[EventOut(at=iso(e.at), **{"from": e.from_status},
                                          to=e.to_status, reason=e.reason) for e in rows],
                          next_cursor=nxt)
