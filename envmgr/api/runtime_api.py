"""The runtime API: what a runtime's extension may ask of the control plane, and nothing more.

A runtime holds one credential, `Authorization: Bearer <runtime token>`, bound to the runtime
and so to its owner and workspace. Every call checks, at that moment, that the runtime is
not deleted and that its owner is still a writer of its workspace (removing a member revokes
at once), and the control plane alone decides the bucket: nothing a runtime sends names a
bucket or a workspace. Lock holders are the owner's email, as the control plane knows it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlmodel import Session

from envmgr.api.deps import bearer, get_ctx, read_limited, redeem
from envmgr.auth.access import RANK
from envmgr.auth.signing import BOOT_SECONDS
from envmgr.context import Context
from envmgr.core import nesting
from envmgr.core.db import read_session
from envmgr.core.errors import APIError, invalid, not_found
from envmgr.core.models import Membership, Runtime, User, Workspace
from envmgr.notebooks.rules import (
    NOTEBOOKS,
    Locked,
    acquire_lock,
    delocalize,
    release_lock,
)
from envmgr.notebooks.service import checked_path
from envmgr.notebooks.storage.base import NotFound, PreconditionFailed

log = logging.getLogger("envmgr.runtime_api")
router = APIRouter(prefix="/runtime-api/v1", tags=["runtime api"], include_in_schema=False)


@dataclass(frozen=True)
class Bound:
    """What a runtime token stands for, checked on this call."""

    runtime_id: str
    owner: str  # email
    workspace: str  # name
    bucket: str


def _bind(ctx: Context, runtime_id: str) -> Bound:
    with read_session(ctx.engine) as s:
        rt = s.get(Runtime, runtime_id)
        if rt is None or rt.status == "deleted":
            raise APIError(401, "unauthorized", "this runtime no longer exists")
        return _check_member(s, rt)


def _check_member(s: Session, rt: Runtime) -> Bound:
    ws, owner = s.get(Workspace, rt.workspace_id), s.get(User, rt.owner_id)
    member = s.get(Membership, (rt.workspace_id, rt.owner_id))
    if ws is None or owner is None:
        raise APIError(401, "unauthorized", "this runtime's workspace or owner is gone")
    if not owner.admin and (member is None or RANK[member.role] < RANK["writer"]):
        raise APIError(403, "not_a_writer", f"{owner.email} is no longer a writer in workspace "
                       f"{ws.name!r}: nothing is read from or saved to its bucket any more; "
                       "your files stay on this runtime's disk", {"workspace": ws.name})
    return Bound(rt.id, owner.email, ws.name, ws.bucket)


async def runtime_caller(request: Request, ctx: Context = Depends(get_ctx)) -> Bound:
    token = bearer(request.headers)
    runtime_id = ctx.signer.check_runtime_token(token) if token else None
    if runtime_id is None:
        raise APIError(401, "unauthorized", "send the runtime's token as "
                       "'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
    return await asyncio.to_thread(_bind, ctx, runtime_id)


def _locked(exc: Locked) -> APIError:
    return APIError(409, "locked", f"{exc.lock.holder} holds the edit lock", {
        "holder": exc.lock.holder, "expires_at": exc.lock.expires_at.isoformat()})


@router.post("/boot")
async def boot(request: Request, ctx: Context = Depends(get_ctx)) -> dict[str, str]:
    """A VM's first boot: its single-use boot ticket (from its metadata) for its two tokens,
    so no token is in metadata a project viewer can read. A second use is refused (and
    logged: someone else may have read the ticket first)."""
    token = bearer(request.headers)
    checked = ctx.signer.check_boot_ticket(token) if token else None
    if checked is None or not await redeem(ctx, BOOT_SECONDS, checked[1]):
        log.warning("boot ticket refused", extra={"runtime": checked[0] if checked else None,
                                                  "reason": "used" if checked else "invalid"})
        raise APIError(401, "unauthorized", "this boot ticket is unknown, expired or already "
                       "used", headers={"WWW-Authenticate": "Bearer"})
    me = await asyncio.to_thread(_bind, ctx, checked[0])
    log.info("runtime booted", extra={"runtime": me.runtime_id})
    return {"runtime_id": me.runtime_id, "jupyter_token": ctx.signer.jupyter_token(me.runtime_id),
            "runtime_token": ctx.signer.runtime_token(me.runtime_id)}


@router.get("/whoami")
async def whoami(me: Bound = Depends(runtime_caller)) -> dict[str, str]:
    return {"runtime": me.runtime_id, "owner": me.owner, "workspace": me.workspace}


@router.get("/notebooks/content")
async def read(path: str = Query(...), me: Bound = Depends(runtime_caller),
               ctx: Context = Depends(get_ctx)) -> Response:
    path = checked_path(path)
    try:
        data, info = await asyncio.to_thread(ctx.storage.read, me.bucket, NOTEBOOKS + path)
    except NotFound:
        raise not_found("notebook", path) from None
    return Response(data, media_type="application/x-ipynb+json", headers={
        "X-Generation": str(info.generation), "X-Crc32c": info.crc32c})


@router.get("/notebooks/stat")
async def stat(path: str = Query(...), me: Bound = Depends(runtime_caller),
               ctx: Context = Depends(get_ctx)) -> dict[str, Any]:
    path = checked_path(path)
    info = await asyncio.to_thread(ctx.storage.stat, me.bucket, NOTEBOOKS + path)
    if info is None:
        raise not_found("notebook", path)
    return {"generation": info.generation, "crc32c": info.crc32c}


@router.put("/notebooks/save")
async def save(request: Request, path: str = Query(...),
               base_generation: int = Query(..., ge=0, lt=2**63),
               base_crc32c: str = Query("", max_length=16), edit: bool = Query(True),
               conflict_path: str | None = Query(None, max_length=1024),
               conflict_generation: int = Query(0, ge=0, lt=2**63),
               me: Bound = Depends(runtime_caller), ctx: Context = Depends(get_ctx)) -> Any:
    """A save: uploaded unless unchanged, never over a newer version or another's lock (then
    a conflict copy: the one named by `conflict_path`, if it is this owner's copy of this
    notebook and still at `conflict_generation`); in edit mode it renews the lock too."""
    path = checked_path(path)
    reuse = (checked_path(conflict_path), conflict_generation) if conflict_path else None
    data = await read_limited(request, ctx.settings.notebook_max_bytes, "a notebook")
    try:  # the same nesting bound as the public API's and jobs'
        await asyncio.to_thread(nesting.loads, data, "body")
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid("body", f"not a notebook: the body is not valid JSON ({exc})") from None
    ttl = ctx.settings.lock_ttl_seconds if edit else None
    result = await asyncio.to_thread(delocalize, ctx.storage, me.bucket, path, data,
                                     base_generation, base_crc32c or None, me.owner, ttl,
                                     ctx.clock.now(), reuse)
    return asdict(result)


@router.delete("/notebooks/content", status_code=204)
async def delete(path: str = Query(...), if_generation_match: int = Query(..., ge=1, lt=2**63),
                 me: Bound = Depends(runtime_caller),
                 ctx: Context = Depends(get_ctx)) -> Response:
    """Only the version the runtime had: a newer one by someone else stays."""
    path = checked_path(path)
    try:
        await asyncio.to_thread(ctx.storage.delete, me.bucket, NOTEBOOKS + path,
                                if_generation_match)
    except NotFound:
        raise not_found("notebook", path) from None
    except PreconditionFailed:
        raise APIError(412, "generation_mismatch", "the notebook changed since that "
                       "generation; it was left alone") from None
    return Response(status_code=204)


@router.post("/locks")
async def lock(path: str = Query(...), me: Bound = Depends(runtime_caller),
               ctx: Context = Depends(get_ctx)) -> Any:
    """Take or renew the owner's edit lock."""
    path = checked_path(path)
    try:
        got = await asyncio.to_thread(acquire_lock, ctx.storage, me.bucket, path, me.owner,
                                      ctx.settings.lock_ttl_seconds, ctx.clock.now())
    except Locked as exc:
        raise _locked(exc) from None
    return {"holder": got.holder, "expires_at": got.expires_at.isoformat()}


@router.delete("/locks")
async def unlock(path: str = Query(...), me: Bound = Depends(runtime_caller),
                 ctx: Context = Depends(get_ctx)) -> JSONResponse:
    path = checked_path(path)
    released = await asyncio.to_thread(release_lock, ctx.storage, me.bucket, path, me.owner,
                                       ctx.clock.now())
    return JSONResponse({"released": released})
