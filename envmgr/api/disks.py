"""Persistent disks: they outlive runtimes deleted with keep_disk=true."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlmodel import select

from envmgr.api.deps import Paging, current_user, get_ctx
from envmgr.api.schemas import DiskOut, Page
from envmgr.api.views import disk_views
from envmgr.auth.access import authorize, owned_for, visible_filter
from envmgr.context import Context
from envmgr.core.db import read_session, write_session
from envmgr.core.errors import APIError
from envmgr.core.models import Disk, User, Workspace
from envmgr.runtimes.machine import Conflict, move, new_operation

router = APIRouter(tags=["disks"])


@router.get("/disks", response_model=Page[DiskOut])
def list_disks(paging: Paging = Depends(), workspace: str | None = None,
               status: str | None = None, user: User = Depends(current_user),
               ctx: Context = Depends(get_ctx)) -> Page[DiskOut]:
    q = select(Disk).where(visible_filter(user)(Disk))
    q = q.where(Disk.status == status) if status else q.where(Disk.status != "deleted")
    if workspace:
        q = q.where(Disk.workspace_id == select(Workspace.id)
                    .where(Workspace.name == workspace).scalar_subquery())
    if paging.after:
        q = q.where(Disk.id > paging.after)
    with read_session(ctx.engine) as s:
        rows, nxt = paging.page(s.exec(q.order_by(Disk.id).limit(paging.limit + 1)).all())
        return Page[DiskOut](items=disk_views(s, ctx.catalog, rows), next_cursor=nxt)


@router.get("/disks/{disk_id}", response_model=DiskOut)
def get_disk(disk_id: str, user: User = Depends(current_user),
             ctx: Context = Depends(get_ctx)) -> DiskOut:
    with read_session(ctx.engine) as s:
        disk, _ = owned_for(s, user, Disk, disk_id)
        return disk_views(s, ctx.catalog, [disk])[0]  # type: ignore[list-item]


@router.delete("/disks/{disk_id}", status_code=202, response_model=DiskOut)
def delete_disk(disk_id: str, user: User = Depends(current_user),
                ctx: Context = Depends(get_ctx)) -> JSONResponse:
    with write_session(ctx.engine) as s:
        disk, role = owned_for(s, user, Disk, disk_id)
        assert isinstance(disk, Disk)
        authorize(user, disk, role, "delete")
        if disk.attached_to is not None:
            raise APIError(409, "disk_in_use", f"disk {disk_id} is attached to runtime "
                           f"{disk.attached_to}; delete that runtime first",
                           {"attached_to": disk.attached_to})
        if disk.status in ("ready", "failed"):
            try:
                move(s, disk, "deleting", "user")
            except Conflict:
                raise APIError(409, "disk_in_use", f"disk {disk_id} changed just now (being "
                               "attached?); look again and retry") from None
            new_operation(s, "disk", disk.id, "delete_disk", ctx.backend.deadline("delete"))
        elif disk.status not in ("deleting", "deleted"):
            raise APIError(409, "invalid_transition", f"disk {disk_id} is {disk.status}; it "
                           "can be deleted when ready or failed",
                           {"status": disk.status, "allowed_from": ["failed", "ready"]})
        view = disk_views(s, ctx.catalog, [disk])[0]
    ctx.wake_worker()
    return JSONResponse(view.model_dump(mode="json"), status_code=202)
