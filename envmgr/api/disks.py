"""Persistent disks: they outlive runtimes deleted with keep_disk=true."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlmodel import col, select

from envmgr.api.deps import Paging, current_user, get_ctx
from envmgr.api.schemas import DiskOut, Page
from envmgr.api.views import disk_views
from envmgr.auth.access import owned_for, visible_filter
from envmgr.context import Context
from envmgr.core.db import read_session
from envmgr.core.models import Disk, User, Workspace
from envmgr.core.statuses import DiskStatus
from envmgr.runtimes import service

router = APIRouter(tags=["disks"])


@router.get("/disks", response_model=Page[DiskOut])
def list_disks(paging: Paging = Depends(), workspace: str | None = None,
               status: DiskStatus | None = None, user: User = Depends(current_user),
               ctx: Context = Depends(get_ctx)) -> Page[DiskOut]:
    q = select(Disk).where(visible_filter(user)(Disk))
    q = q.where(col(Disk.status) == status) if status else q.where(col(Disk.status) != "deleted")
    if workspace:
        q = q.where(col(Disk.workspace_id) == select(col(Workspace.id))
                    .where(col(Workspace.name) == workspace).scalar_subquery())
    if paging.after:
        q = q.where(col(Disk.id) > paging.after)
    with read_session(ctx.engine) as s:
        rows, nxt = paging.page(s.exec(q.order_by(col(Disk.id)).limit(paging.limit + 1)).all())
        return Page[DiskOut](items=disk_views(s, ctx.catalog, rows), next_cursor=nxt)


@router.get("/disks/{disk_id}", response_model=DiskOut)
def get_disk(disk_id: str, user: User = Depends(current_user),
             ctx: Context = Depends(get_ctx)) -> DiskOut:
    with read_session(ctx.engine) as s:
        disk, _ = owned_for(s, user, Disk, disk_id)
        return disk_views(s, ctx.catalog, [disk])[0]


@router.delete("/disks/{disk_id}", status_code=202, response_model=DiskOut)
def delete_disk(disk_id: str, user: User = Depends(current_user),
                ctx: Context = Depends(get_ctx)) -> JSONResponse:
    service.delete_disk(ctx, user, disk_id)
    with read_session(ctx.engine) as s:
        disk, _ = owned_for(s, user, Disk, disk_id)
        view = disk_views(s, ctx.catalog, [disk])[0]
    return JSONResponse(view.model_dump(mode="json"), status_code=202)
