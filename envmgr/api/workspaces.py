"""Workspaces and their members."""

from __future__ import annotations

from typing import cast

from fastapi import APIRouter, Depends, Response
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from envmgr.api.deps import Paging, current_user, get_ctx
from envmgr.api.schemas import (
    AutopauseOut,
    MemberOut,
    MemberPut,
    Page,
    Role,
    WorkspaceCreate,
    WorkspaceOut,
    WorkspacePatch,
)
from envmgr.auth.access import workspace_for
from envmgr.context import Context
from envmgr.core.clock import iso
from envmgr.core.db import read_session
from envmgr.core.errors import APIError, forbidden, invalid, not_found
from envmgr.core.ids import new_id
from envmgr.core.models import Membership, User, Workspace
from envmgr.runtimes.service import MAX_AUTOPAUSE_MINUTES, autopause_bounds
from envmgr.settings import Settings

router = APIRouter(tags=["workspaces"])


def _out(ws: Workspace, role: str | None, settings: Settings) -> WorkspaceOut:
    b = autopause_bounds(settings, ws)
    return WorkspaceOut(name=ws.name, bucket=ws.bucket, role=cast(Role | None, role),
                        created_at=iso(ws.created_at),
                        autopause=AutopauseOut(default_minutes=b.default_minutes,
                                               min_minutes=b.min_minutes,
                                               max_minutes=b.max_minutes,
                                               may_turn_off=b.may_turn_off))


@router.post("/workspaces", status_code=201, response_model=WorkspaceOut)
def create_workspace(body: WorkspaceCreate, user: User = Depends(current_user),
                     ctx: Context = Depends(get_ctx)) -> WorkspaceOut:
    """The service makes the workspace's bucket (named after its random id, so nobody can
    guess or pre-claim it). Only an admin may name an existing bucket, and never one that
    another workspace uses: a bucket belongs to exactly one workspace."""
    if body.bucket is not None and not user.admin:
        raise forbidden("only admins may choose a workspace's bucket; leave 'bucket' out and "
                        "the service makes one for the workspace")
    ws_id = new_id("ws")
    bucket = body.bucket or f"{ctx.settings.bucket_prefix}{ws_id}"
    exists = APIError(409, "workspace_exists", f"a workspace named {body.name!r} already exists")
    taken = APIError(409, "bucket_in_use", f"bucket {bucket!r} belongs to another workspace; "
                     "a bucket serves one workspace only", {"bucket": bucket})
    try:
        with ctx.tx() as s:
            if s.exec(select(Workspace).where(col(Workspace.name) == body.name)).first():
                raise exists
            if s.exec(select(Workspace).where(col(Workspace.bucket) == bucket)).first():
                raise taken
            ws = Workspace(id=ws_id, name=body.name, bucket=bucket, created_by=user.id)
            s.add(ws)
            s.flush()
            s.add(Membership(workspace_id=ws.id, user_id=user.id, role="owner"))
    except IntegrityError:  # a concurrent create took the name or the bucket
        raise exists from None
    ctx.storage.ensure_bucket(ws.bucket)
    return _out(ws, "owner", ctx.settings)


@router.get("/workspaces", response_model=Page[WorkspaceOut])
def list_workspaces(paging: Paging = Depends(), user: User = Depends(current_user),
                    ctx: Context = Depends(get_ctx)) -> Page[WorkspaceOut]:
    with read_session(ctx.engine) as s:
        q = select(Workspace, col(Membership.role)).join(
            Membership, (col(Membership.workspace_id) == col(Workspace.id))
            & (col(Membership.user_id) == user.id), isouter=user.admin)
        if paging.after:
            q = q.where(col(Workspace.id) > paging.after)
        rows = s.exec(q.order_by(col(Workspace.id)).limit(paging.limit + 1)).all()
    items, nxt = paging.page([ws for ws, _ in rows])
    roles = {ws.id: role for ws, role in rows}
    return Page[WorkspaceOut](items=[_out(ws, roles[ws.id], ctx.settings) for ws in items],
                              next_cursor=nxt)


@router.get("/workspaces/{ws}", response_model=WorkspaceOut)
def get_workspace(ws: str, user: User = Depends(current_user),
                  ctx: Context = Depends(get_ctx)) -> WorkspaceOut:
    with read_session(ctx.engine) as s:
        workspace, role = workspace_for(s, user, ws)
    return _out(workspace, role, ctx.settings)


@router.patch("/workspaces/{ws}", response_model=WorkspaceOut)
def patch_workspace(ws: str, body: WorkspacePatch, user: User = Depends(current_user),
                    ctx: Context = Depends(get_ctx)) -> WorkspaceOut:
    """A workspace's autopause default and bounds (its owners and admins): the idle limits
    its runtimes may choose from. Runtimes that already exist keep theirs."""
    st = ctx.settings
    with ctx.tx() as s:
        workspace, role = workspace_for(s, user, ws, need="owner")
        given = body.autopause.model_fields_set
        for name in given:
            value = getattr(body.autopause, name)
            if value is not None and not st.autopause_min_minutes <= value <= \
                    MAX_AUTOPAUSE_MINUTES:
                raise invalid(f"autopause.{name}", f"must be from {st.autopause_min_minutes:g} "
                              f"to {MAX_AUTOPAUSE_MINUTES} minutes (or null: the service's), "
                              f"got {value:g}")
            setattr(workspace, f"autopause_{name}", value)
        b = autopause_bounds(st, workspace)
        if b.min_minutes > b.max_minutes:
            raise invalid("autopause.min_minutes", f"{b.min_minutes:g} is above the maximum, "
                          f"{b.max_minutes:g}")
        if workspace.autopause_default_minutes is not None and \
                not b.min_minutes <= workspace.autopause_default_minutes <= b.max_minutes:
            raise invalid("autopause.default_minutes", f"must be from {b.min_minutes:g} to "
                          f"{b.max_minutes:g}, got {workspace.autopause_default_minutes:g}")
        s.add(workspace)
    return _out(workspace, role, st)


@router.get("/workspaces/{ws}/members", response_model=Page[MemberOut])
def list_members(ws: str, user: User = Depends(current_user),
                 ctx: Context = Depends(get_ctx)) -> Page[MemberOut]:
    with read_session(ctx.engine) as s:
        workspace, _ = workspace_for(s, user, ws)
        rows = s.exec(select(Membership, User).join(User, col(User.id) == col(Membership.user_id))
                      .where(col(Membership.workspace_id) == workspace.id)
                      .order_by(col(User.email))).all()
    return Page[MemberOut](items=[MemberOut(workspace=ws, email=u.email, role=cast(Role, m.role))
                                  for m, u in rows], next_cursor=None)


def _other_owners(s: Session, workspace_id: str, user_id: str) -> int:
    return len(s.exec(select(Membership).where(
        col(Membership.workspace_id) == workspace_id, col(Membership.role) == "owner",
        col(Membership.user_id) != user_id)).all())


def _member_target(s: Session, caller: User, ws: str, email: str) -> tuple[Workspace, User]:
    workspace, _ = workspace_for(s, caller, ws, need="owner")
    target = s.exec(select(User).where(col(User.email) == email.lower())).first()
    if target is None:
        raise not_found("user", email)
    return workspace, target


@router.put("/workspaces/{ws}/members/{email}", response_model=MemberOut)
def put_member(ws: str, email: str, body: MemberPut, user: User = Depends(current_user),
               ctx: Context = Depends(get_ctx)) -> MemberOut:
    with ctx.tx() as s:
        workspace, target = _member_target(s, user, ws, email)
        m = s.get(Membership, (workspace.id, target.id))
        if m is not None and m.role == "owner" and body.role != "owner" \
                and not _other_owners(s, workspace.id, target.id):
            raise APIError(409, "last_owner", "a workspace needs at least one owner; make "
                           "someone else owner first")
        if m is None:
            m = Membership(workspace_id=workspace.id, user_id=target.id, role=body.role)
        m.role = body.role
        s.add(m)
    return MemberOut(workspace=ws, email=target.email, role=body.role)


@router.delete("/workspaces/{ws}/members/{email}", status_code=204)
def delete_member(ws: str, email: str, user: User = Depends(current_user),
                  ctx: Context = Depends(get_ctx)) -> Response:
    with ctx.tx() as s:
        workspace, target = _member_target(s, user, ws, email)
        m = s.get(Membership, (workspace.id, target.id))
        if m is None:
            raise not_found("member", email)
        if m.role == "owner" and not _other_owners(s, workspace.id, target.id):
            raise APIError(409, "last_owner", "a workspace needs at least one owner; make "
                           "someone else owner first")
        s.delete(m)
    return Response(status_code=204)
