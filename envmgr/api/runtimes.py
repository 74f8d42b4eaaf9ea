"""Runtimes: create, read, pause, resume, update, delete, and their status history.

Each lifecycle call writes the transitional status, its event and an operation in one
transaction, answers 202, and wakes the worker."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy import or_
from sqlmodel import col

from envmgr.api.deps import Paging, current_user, get_ctx
from envmgr.api.schemas import (
    LABEL_KEY,
    EventOut,
    Page,
    RuntimeCreate,
    RuntimeOut,
    RuntimePatch,
    RuntimeTokenCreate,
    RuntimeTokenOut,
)
from envmgr.api.views import RUNTIME_SELECT, runtime_out, runtime_view, status_history
from envmgr.context import Context
from envmgr.core.errors import invalid
from envmgr.core.models import Membership, Runtime, User, Workspace
from envmgr.core.statuses import RuntimeStatus
from envmgr.runtimes import service

router = APIRouter(tags=["runtimes"])


def new_runtime(body: RuntimeCreate) -> service.NewRuntime:
    disk = body.disk
    return service.NewRuntime(
        machine_type=body.machine_type, autopause_minutes=body.autopause_minutes,
        labels=body.labels or {}, disk_id=disk.id if disk else None,
        disk_size_gb=disk.size_gb if disk else None, disk_type=disk.type if disk else None)


def _view(ctx: Context, user: User, runtime_id: str) -> RuntimeOut:
    with ctx.engine.connect() as conn:
        return runtime_view(conn, ctx, user, runtime_id)


def _accepted(ctx: Context, user: User, runtime_id: str) -> JSONResponse:
    return JSONResponse(_view(ctx, user, runtime_id).model_dump(mode="json"), status_code=202)


@router.post("/workspaces/{ws}/runtimes", status_code=202, response_model=RuntimeOut)
def create_runtime(ws: str, body: RuntimeCreate, user: User = Depends(current_user),
                   ctx: Context = Depends(get_ctx)) -> JSONResponse:
    return _accepted(ctx, user, service.create_runtime(ctx, user, ws, new_runtime(body)))


@router.get("/runtimes", response_model=Page[RuntimeOut])
def list_runtimes(paging: Paging = Depends(), workspace: str | None = None,
                  status: RuntimeStatus | None = None, owner: str | None = None,
                  label: list[str] = Query(default_factory=list,
                                           description="key:value, repeatable"),
                  user: User = Depends(current_user),
                  ctx: Context = Depends(get_ctx)) -> Page[RuntimeOut]:
    q = RUNTIME_SELECT
    if not user.admin:
        q = q.where(or_(col(Runtime.owner_id) == user.id, col(Membership.role) == "owner"))
    q = q.where(col(Runtime.status) == status) if status else \
        q.where(col(Runtime.status) != "deleted")
    for item in label:
        key, sep, value = item.partition(":")
        if not sep or not LABEL_KEY.fullmatch(key):
            raise invalid("label", f"expected key:value with a key matching "
                          f"[a-z][a-z0-9_-]{{0,62}}, got {item!r}")
        q = q.where(col(Runtime.labels)[key].as_string() == value)
    if workspace:
        q = q.where(col(Workspace.name) == workspace)
    if owner:
        q = q.where(col(User.email) == owner.lower())
    if paging.after:
        q = q.where(col(Runtime.id) > paging.after)
    with ctx.engine.connect() as conn:
        rows, nxt = paging.page(conn.execute(q.order_by(col(Runtime.id)).limit(paging.limit + 1),
                                             {"viewer": user.id}).all())
    return Page[RuntimeOut](items=[runtime_out(ctx, user, r) for r in rows],
                            next_cursor=nxt)


@router.get("/runtimes/{runtime_id}", response_model=RuntimeOut)
async def get_runtime(runtime_id: str, user: User = Depends(current_user),
                      ctx: Context = Depends(get_ctx)) -> Response:
    # The hottest call (clients poll it): one indexed read, in a thread like every database
    # call of an async handler (the loop also carries the proxy), serialized once. (A plain
    # `def` handler measured a third slower: Starlette's threadpool hop costs more.)
    view = await asyncio.to_thread(_view, ctx, user, runtime_id)
    return Response(view.model_dump_json(), media_type="application/json")


@router.post("/runtimes/{runtime_id}/pause", status_code=202, response_model=RuntimeOut)
def pause_runtime(runtime_id: str, user: User = Depends(current_user),
                  ctx: Context = Depends(get_ctx)) -> JSONResponse:
    return _accepted(ctx, user, service.start_action(ctx, user, runtime_id, "pause"))


@router.post("/runtimes/{runtime_id}/resume", status_code=202, response_model=RuntimeOut)
def resume_runtime(runtime_id: str, user: User = Depends(current_user),
                   ctx: Context = Depends(get_ctx)) -> JSONResponse:
    return _accepted(ctx, user, service.start_action(ctx, user, runtime_id, "resume",
                                               before=service.disk_intact))


@router.delete("/runtimes/{runtime_id}", status_code=202, response_model=RuntimeOut)
def delete_runtime(runtime_id: str, keep_disk: bool = True,
                   user: User = Depends(current_user),
                   ctx: Context = Depends(get_ctx)) -> JSONResponse:
    return _accepted(ctx, user, service.start_action(ctx, user, runtime_id, "delete",
                                               keep_disk=keep_disk))


@router.patch("/runtimes/{runtime_id}", response_model=RuntimeOut,
              responses={202: {"description": "machine type change under way"}})
def patch_runtime(runtime_id: str, body: RuntimePatch, user: User = Depends(current_user),
                  ctx: Context = Depends(get_ctx)) -> Any:
    """Settings change at once (200); a machine type change is an `update` action (202)."""
    updating = service.change_runtime(ctx, user, runtime_id, service.RuntimeChange(
        machine_type=body.machine_type, autopause_minutes=body.autopause_minutes,
        labels=body.labels, allow_restart=body.allow_restart))
    return _accepted(ctx, user, runtime_id) if updating else _view(ctx, user, runtime_id)


@router.get("/runtimes/{runtime_id}/events", response_model=Page[EventOut])
def runtime_events(runtime_id: str, paging: Paging = Depends(),
                   user: User = Depends(current_user),
                   ctx: Context = Depends(get_ctx)) -> Page[EventOut]:
    return status_history(ctx, user, Runtime, runtime_id, paging)


@router.post("/runtimes/{runtime_id}/tokens", status_code=201, response_model=RuntimeTokenOut)
def create_runtime_token(runtime_id: str, body: RuntimeTokenCreate,
                         user: User = Depends(current_user),
                         ctx: Context = Depends(get_ctx)) -> RuntimeTokenOut:
    """A token good only for this runtime's `/proxy/{id}/` (HTTP and websockets), for a
    Jupyter client; listed and revoked with the other tokens."""
    return RuntimeTokenOut(**service.issue_runtime_token(ctx, user, runtime_id,
                                                         body.expires_in_days, body.note))
