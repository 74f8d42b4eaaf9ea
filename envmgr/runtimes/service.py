"""The runtime service layer: what the routers (and notebook `open`) call to create a
runtime, start a lifecycle action, or change its settings. Each call writes the status, its
event and an operation in one transaction through the state machine, then wakes the worker;
the routers only parse and shape answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from envmgr.auth.access import authorize, owned_for, workspace_for
from envmgr.auth.tokens import issue_token
from envmgr.context import Context
from envmgr.core.clock import iso
from envmgr.core.db import read_session, rowcount
from envmgr.core.errors import APIError, invalid, not_found
from envmgr.core.ids import new_id
from envmgr.core.models import Disk, Operation, Runtime, User, Workspace
from envmgr.runtimes.machine import TRANSITIONS, Conflict, check, move, new_operation, record_event
from envmgr.runtimes.origins import login_url
from envmgr.settings import Settings

MAX_AUTOPAUSE_MINUTES = 1440


@dataclass(frozen=True)
class NewRuntime:
    """What a create asks for; None: the catalog's or the settings' default."""

    machine_type: str | None = None
    autopause_minutes: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    disk_id: str | None = None
    disk_size_gb: int | None = None
    disk_type: str | None = None


@dataclass(frozen=True)
class RuntimeChange:
    machine_type: str | None = None
    autopause_minutes: float | None = None
    labels: dict[str, str] | None = None
    allow_restart: bool = False


def proxy_url(ctx: Context, viewer: User, runtime_id: str, page: str = "lab") -> str:
    """Where a browser opens Jupyter: the runtime's own origin, with a single-use ticket."""
    return login_url(ctx.settings, runtime_id, ctx.signer.ticket(viewer.id, runtime_id), page)


@dataclass(frozen=True)
class AutopauseBounds:
    """What a workspace allows of its runtimes' `autopause_minutes`: its own default and
    bounds where an admin or its owner set them, else the service's. With a maximum set,
    autopause cannot be turned off (a maximum is there to cap what an idle runtime costs)."""
    default_minutes: float
    min_minutes: float
    max_minutes: float
    may_turn_off: bool

    def check(self, minutes: float) -> float:
        if minutes == 0 and self.may_turn_off:
            return minutes
        if not self.min_minutes <= minutes <= self.max_minutes:
            off = "0 (autopause off) or " if self.may_turn_off else ""
            raise invalid("autopause_minutes", f"must be {off}from {self.min_minutes:g} to "
                          f"{self.max_minutes:g} minutes in this workspace, got {minutes:g}")
        return minutes


def autopause_bounds(settings: Settings, ws: Workspace) -> AutopauseBounds:
    lo = settings.autopause_min_minutes if ws.autopause_min_minutes is None \
        else ws.autopause_min_minutes
    hi = MAX_AUTOPAUSE_MINUTES if ws.autopause_max_minutes is None else ws.autopause_max_minutes
    default = settings.autopause_default_minutes if ws.autopause_default_minutes is None \
        else ws.autopause_default_minutes
    return AutopauseBounds(min(max(default, lo), hi), lo, hi, ws.autopause_max_minutes is None)


def _exists(ws: str) -> APIError:
    return APIError(409, "runtime_exists", f"you already have a runtime in workspace {ws!r}; "
                    "pause, resume or delete it instead of creating another")


def _attach_existing(s: Session, user: User, ws: Workspace, disk_id: str, rt_id: str) -> Disk:
    disk = s.get(Disk, disk_id)
    if disk is None or disk.owner_id != user.id or disk.workspace_id != ws.id \
            or disk.status in ("deleted", "deleting"):
        raise not_found("disk", disk_id)
    if disk.attached_to is not None or disk.status != "ready":
        raise APIError(409, "disk_in_use", f"disk {disk_id} is attached to runtime "
                       f"{disk.attached_to}" if disk.attached_to else
                       f"disk {disk_id} is {disk.status}, not ready",
                       {"attached_to": disk.attached_to, "status": disk.status})
    try:
        move(s, disk, "ready", f"attached to {rt_id}", attached_to=rt_id)
    except Conflict:
        raise APIError(409, "disk_in_use", f"disk {disk_id} was just attached elsewhere") \
            from None
    return disk


def create_runtime(ctx: Context, user: User, ws: str, new: NewRuntime) -> str:
    """The caller's new runtime in `ws`: its disk (new or re-attached), its creating status,
    event and operation, in one transaction. Also used by notebook `open`."""
    cat = ctx.catalog
    try:
        with ctx.tx() as s:
            workspace, _ = workspace_for(s, user, ws, need="writer")
            bounds = autopause_bounds(ctx.settings, workspace)
            autopause = bounds.check(bounds.default_minutes if new.autopause_minutes is None
                                     else new.autopause_minutes)
            if s.exec(select(col(Runtime.id)).where(col(Runtime.workspace_id) == workspace.id,
                                               col(Runtime.owner_id) == user.id,
                                               col(Runtime.status) != "deleted")).first():
                raise _exists(ws)
            rt_id = new_id("rt")
            if new.disk_id is not None:
                disk = _attach_existing(s, user, workspace, new.disk_id, rt_id)
            else:
                disk = Disk(id=new_id("pd"), workspace_id=workspace.id, owner_id=user.id,
                            status="creating", attached_to=rt_id,
                            size_gb=new.disk_size_gb or cat.default_disk_size_gb,
                            type=new.disk_type or cat.default_disk_type)
                s.add(disk)
                record_event(s, "disk", disk.id, None, "creating", f"by {user.email}",
                             size_gb=disk.size_gb, type=disk.type)
            rt = Runtime(id=rt_id, workspace_id=workspace.id, owner_id=user.id,
                         status="creating", status_reason=f"by {user.email}",
                         machine_type=new.machine_type or cat.default_machine_type,
                         disk_id=disk.id, autopause_minutes=autopause,
                         labels=new.labels or {})
            s.add(rt)
            record_event(s, "runtime", rt.id, None, "creating", f"by {user.email}",
                         machine_type=rt.machine_type)
            new_operation(s, "runtime", rt.id, "create", ctx.backend.deadline("create"),
                          reason=f"by {user.email}")
    except IntegrityError:  # the partial unique index caught a concurrent create
        raise _exists(ws) from None
    ctx.wake_worker()
    return rt_id


def start_action(ctx: Context, user: User, runtime_id: str, action: str, *,
                 reason: str | None = None, allow_restart: bool = False,
                 before: Callable[[Session, Runtime], None] | None = None,
                 **params: Any) -> str:
    """Move a runtime into the action's transitional status and queue its operation, or
    do nothing if that action is already under way. Retries a lost compare-and-set."""
    t = TRANSITIONS[action]
    reason = reason or f"by {user.email}"  # who asked, in the status history and the page
    for _ in range(10):
        try:
            with ctx.tx() as s:
                rt, role = owned_for(s, user, Runtime, runtime_id)
                assert isinstance(rt, Runtime)
                authorize(user, rt, role, action)
                if check(action, rt.status, allow_restart):
                    if before is not None:
                        before(s, rt)
                    if action == "update":
                        params["return_to"] = rt.status
                    move(s, rt, t.via, reason)
                    new_operation(s, "runtime", rt.id, action,
                                  ctx.backend.deadline(t.backend_step), reason=reason, **params)
                else:
                    _repeat(s, rt, action, params)
        except Conflict:
            continue
        ctx.wake_worker()
        return runtime_id
    raise APIError(409, "conflict", "the runtime kept changing; try again")


def _repeat(s: Session, rt: Runtime, action: str, params: dict[str, Any]) -> None:
    """The action is already under way. The same request again is a no-op; a different
    one is never silently dropped: keeping a disk wins over deleting it (deletion cannot be
    undone), anything else is a 409 that says what is under way."""
    op = s.exec(select(Operation).where(
        col(Operation.resource_id) == rt.id, col(Operation.action) == action,
        col(Operation.status).in_(("pending", "running")))
        .order_by(col(Operation.created_at).desc())).first()
    if op is None:
        return
    under_way = {k: op.params.get(k) for k in params}
    if under_way == params:
        return
    if action == "delete" and params.get("keep_disk") and not under_way.get("keep_disk"):
        keep = update(Disk).where(col(Disk.id) == rt.disk_id, col(Disk.status) == "ready") \
            .values(version=col(Disk.version) + 1)  # the worker decides on the disk by CAS too
        if rt.disk_id is None or rowcount(s.execute(keep)) != 1:
            raise APIError(409, "disk_already_deleting", "the delete under way has already "
                           "started deleting this runtime's disk; it cannot be kept",
                           {"disk_id": rt.disk_id})
        op.params = {**op.params, "keep_disk": True}
        s.add(op)
        rt.status_reason = "user: delete, keeping the disk (asked while a delete was under way)"
        s.execute(update(Runtime).where(col(Runtime.id) == rt.id)
                  .values(status_reason=rt.status_reason))
        return
    raise APIError(409, "operation_in_progress", f"a {action} with {under_way} is under way; "
                   f"this request asks for {params}. Wait for it to finish, then ask again",
                   {"action": action, "under_way": under_way, "asked": params})


def disk_intact(s: Session, rt: Runtime) -> None:
    disk = s.get(Disk, rt.disk_id) if rt.disk_id else None
    if disk is None or disk.status != "ready":
        raise APIError(409, "disk_unavailable", "this runtime's disk is gone or not ready, so "
                       "it cannot resume; delete it and create a new runtime",
                       {"disk_id": rt.disk_id, "disk_status": disk.status if disk else None})


def change_runtime(ctx: Context, user: User, runtime_id: str, change: RuntimeChange) -> bool:
    """Settings change at once; a machine type change is an `update` action. Both go in one
    transaction, so a refused update changes nothing. True when an update is under way."""
    def apply(s: Session, rt: Runtime) -> None:
        if change.autopause_minutes is not None:
            ws = s.get(Workspace, rt.workspace_id)
            assert ws is not None
            rt.autopause_minutes = autopause_bounds(ctx.settings, ws).check(
                change.autopause_minutes)
        if change.labels is not None:
            rt.labels = change.labels
        s.add(rt)

    with read_session(ctx.engine) as s:
        rt, _ = owned_for(s, user, Runtime, runtime_id)
        moving = change.machine_type is not None and change.machine_type != rt.machine_type
    if moving:
        start_action(ctx, user, runtime_id, "update", before=apply,
                     allow_restart=change.allow_restart, machine_type=change.machine_type)
        return True
    with ctx.tx() as s:
        rt, role = owned_for(s, user, Runtime, runtime_id)
        assert isinstance(rt, Runtime)
        authorize(user, rt, role, "update")
        if rt.status == "deleted":
            raise APIError(409, "invalid_transition", "a deleted runtime cannot be changed",
                           {"status": rt.status, "allowed_from": []})
        apply(s, rt)
    return False


def delete_disk(ctx: Context, user: User, disk_id: str) -> None:
    """A kept disk goes once no runtime has it; a repeat while it is going is a no-op."""
    with ctx.tx() as s:
        disk, role = owned_for(s, user, Disk, disk_id)
        assert isinstance(disk, Disk)
        authorize(user, disk, role, "delete")
        if disk.attached_to is not None:
            raise APIError(409, "disk_in_use", f"disk {disk_id} is attached to runtime "
                           f"{disk.attached_to}; delete that runtime first",
                           {"attached_to": disk.attached_to})
        if disk.status in ("ready", "failed"):
            try:
                move(s, disk, "deleting", f"by {user.email}")
            except Conflict:
                raise APIError(409, "disk_in_use", f"disk {disk_id} changed just now (being "
                               "attached?); look again and retry") from None
            new_operation(s, "disk", disk.id, "delete_disk", ctx.backend.deadline("delete"))
        elif disk.status not in ("deleting", "deleted"):
            raise APIError(409, "invalid_transition", f"disk {disk_id} is {disk.status}; it "
                           "can be deleted when ready or failed",
                           {"status": disk.status, "allowed_from": ["failed", "ready"]})
    ctx.wake_worker()


def issue_runtime_token(ctx: Context, user: User, runtime_id: str,
                        expires_in_days: float | None, note: str | None) -> dict[str, Any]:
    """A token that opens this runtime's Jupyter (`/proxy/<id>/`) and nothing else, for a
    Jupyter client (VS Code, JupyterLab Desktop, a gateway client): only its owner makes
    one, as JupyterHub's `access:servers!server=` scope is the user's own."""
    with ctx.tx() as s:
        rt, _ = owned_for(s, user, Runtime, runtime_id)
        if rt.status == "deleted":
            raise not_found("runtime", runtime_id)
        if rt.owner_id != user.id:
            raise APIError(403, "forbidden", "only the runtime's owner may make a token for it")
        expires = ctx.clock.now() + timedelta(days=expires_in_days) \
            if expires_in_days is not None else None
        token, token_id = issue_token(s, user, expires_at=expires, note=note, runtime_id=rt.id)
    return {"id": token_id, "token": token, "runtime": runtime_id, "expires_at": iso(expires)}
