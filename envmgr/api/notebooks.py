"""Notebooks in a workspace's bucket: list (with lock holders), content with generation
preconditions, open in edit / playground / readonly mode, and the read-only preview."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx
import nbformat
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from sqlmodel import select

from envmgr.api.deps import current_user, get_ctx, read_limited
from envmgr.api.runtimes import _disk_intact, create_runtime_for, start_action
from envmgr.api.schemas import RuntimeCreate, Strict
from envmgr.api.views import proxy_url
from envmgr.auth.access import workspace_for
from envmgr.context import Context
from envmgr.core.db import read_session
from envmgr.core.errors import APIError, invalid, not_found
from envmgr.core.models import Runtime, User, Workspace
from envmgr.core.timeutil import iso, utcnow
from envmgr.notebooks.rules import (
    LOCKS,
    NOTEBOOKS,
    BadPath,
    Lock,
    clean_path,
    path_conflict,
    read_lock,
)
from envmgr.notebooks.storage.base import NotFound, PreconditionFailed

router = APIRouter(tags=["notebooks"])
# A preview is the author's content: rendered in a sandbox (an opaque origin where no
# script runs, no form posts), loading nothing from anywhere but inline styles and images.
PREVIEW_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'; "
    "img-src data:; font-src data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store"}


class OpenRequest(Strict):
    path: str
    mode: Literal["edit", "playground", "readonly"]


class LockOut(BaseModel):
    holder: str
    expires_at: str


class NotebookOut(BaseModel):
    path: str
    size: int
    updated_at: str
    generation: int
    lock: LockOut | None


class OpenOut(BaseModel):
    mode: str
    url: str | None
    runtime_id: str | None
    lock: LockOut | None
    status: str = "ready"
    poll: str | None = None


def _path(path: str, notebook: bool = True) -> str:
    try:
        return clean_path(path, notebook)
    except BadPath as exc:
        raise invalid("path", str(exc)) from None


async def _workspace(ctx: Context, user: User, ws: str, need: str) -> Workspace:
    def get() -> Workspace:
        with read_session(ctx.engine) as s:
            return workspace_for(s, user, ws, need)[0]
    return await asyncio.to_thread(get)


def _lock_out(lock: Lock | None) -> LockOut | None:
    if lock is None or not lock.active(utcnow()):
        return None
    return LockOut(holder=lock.holder or "", expires_at=iso(lock.expires_at) or "")


def _locked(lock: Lock) -> APIError:
    return APIError(409, "locked", f"{lock.holder} is editing this notebook until "
                    f"{iso(lock.expires_at)}; open it in playground or readonly mode",
                    {"holder": lock.holder, "expires_at": iso(lock.expires_at)})


@router.get("/workspaces/{ws}/notebooks", response_model=list[NotebookOut])
async def list_notebooks(ws: str, user: User = Depends(current_user),
                         ctx: Context = Depends(get_ctx)) -> list[NotebookOut]:
    workspace = await _workspace(ctx, user, ws, "reader")

    def collect() -> list[NotebookOut]:
        st, b = ctx.storage, workspace.bucket
        locked = {o.name.removeprefix(LOCKS).removesuffix(".json") for o in st.list(b, LOCKS)}
        out = []
        for o in st.list(b, NOTEBOOKS):
            path = o.name.removeprefix(NOTEBOOKS)
            lock = _lock_out(read_lock(st, b, path)) if path in locked else None
            out.append(NotebookOut(path=path, size=o.size, updated_at=iso(o.updated) or "",
                                   generation=o.generation, lock=lock))
        return out
    return await asyncio.to_thread(collect)


def _generation(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    value = if_match.strip().removeprefix("W/").strip('"')
    if not re.fullmatch(r"[0-9]{1,19}", value) or int(value) >= 2**63:
        raise invalid("If-Match", "must be a generation number, as the ETag of a GET gives")
    return int(value)


@router.put("/workspaces/{ws}/notebooks/content", response_model=dict[str, Any],
            status_code=200, responses={201: {"description": "created"}})
async def put_notebook(ws: str, request: Request, path: str = Query(...),
                       if_match: str | None = Header(None), user: User = Depends(current_user),
                       ctx: Context = Depends(get_ctx)) -> JSONResponse:
    path = _path(path)
    expected = _generation(if_match)
    workspace = await _workspace(ctx, user, ws, "writer")
    data = await read_limited(request, ctx.settings.notebook_max_bytes, "a notebook")
    try:
        nbformat.validate(nbformat.reads(data.decode(), as_version=4))
    except Exception as exc:
        raise invalid("body", f"not a valid .ipynb notebook: {str(exc)[:300]}") from None

    def write() -> tuple[int, bool]:
        existed = ctx.storage.stat(workspace.bucket, NOTEBOOKS + path) is not None
        clash = None if existed else path_conflict(ctx.storage, workspace.bucket, path)
        if clash is not None:
            raise APIError(409, "path_conflict", f"{path!r} would be both a notebook and a "
                           f"folder: {clash!r} exists; choose another name",
                           {"path": path, "conflicts_with": clash})
        info = ctx.storage.write(workspace.bucket, NOTEBOOKS + path, data,
                                 if_generation_match=expected,
                                 content_type="application/x-ipynb+json")
        return info.generation, existed
    try:
        generation, existed = await asyncio.to_thread(write)
    except PreconditionFailed:
        raise APIError(412, "generation_mismatch", "the notebook changed in the bucket since "
                       "that generation; GET it again and retry with its ETag",
                       {"if_match": expected}) from None
    return JSONResponse({"path": path, "generation": generation},
                        status_code=200 if existed else 201, headers={"ETag": str(generation)})


@router.get("/workspaces/{ws}/notebooks/content")
async def get_notebook(ws: str, path: str = Query(...), user: User = Depends(current_user),
                       ctx: Context = Depends(get_ctx)) -> Response:
    path = _path(path)
    workspace = await _workspace(ctx, user, ws, "reader")
    try:
        data, info = await asyncio.to_thread(ctx.storage.read, workspace.bucket,
                                             NOTEBOOKS + path)
    except NotFound:
        raise not_found("notebook", path) from None
    return Response(data, media_type="application/json",
                    headers={"ETag": str(info.generation)})


@router.delete("/workspaces/{ws}/notebooks/content", status_code=204)
async def delete_notebook(ws: str, path: str = Query(...), if_match: str | None = Header(None),
                          user: User = Depends(current_user),
                          ctx: Context = Depends(get_ctx)) -> Response:
    path = _path(path)
    expected = _generation(if_match)
    workspace = await _workspace(ctx, user, ws, "writer")

    def delete() -> None:
        lock = read_lock(ctx.storage, workspace.bucket, path)
        if lock is not None and lock.active(utcnow()) and lock.holder != user.email:
            raise _locked(lock)
        ctx.storage.delete(workspace.bucket, NOTEBOOKS + path, if_generation_match=expected)
    try:
        await asyncio.to_thread(delete)
    except NotFound:
        raise not_found("notebook", path) from None
    except PreconditionFailed:
        raise APIError(412, "generation_mismatch", "the notebook changed since that "
                       "generation", {"if_match": expected}) from None
    return Response(status_code=204)


@router.get("/workspaces/{ws}/notebooks/preview", response_class=HTMLResponse)
async def preview_notebook(ws: str, path: str = Query(...), user: User = Depends(current_user),
                           ctx: Context = Depends(get_ctx)) -> HTMLResponse:
    """Read-only mode: rendered from the bucket, no runtime needed."""
    path = _path(path)
    workspace = await _workspace(ctx, user, ws, "reader")

    def render() -> str:
        from nbconvert import HTMLExporter
        data, _ = ctx.storage.read(workspace.bucket, NOTEBOOKS + path)
        body, _ = HTMLExporter(template_name="lab").from_notebook_node(
            nbformat.reads(data.decode(), as_version=4))
        return body
    try:
        return HTMLResponse(await asyncio.to_thread(render), headers=PREVIEW_HEADERS)
    except NotFound:
        raise not_found("notebook", path) from None
    except Exception as exc:  # saved by a runtime, not valid as a notebook
        raise APIError(422, "not_renderable", f"{path!r} is not a notebook nbconvert can "
                       f"render: {str(exc)[:300]}", {"path": path}) from None


def _current_runtime(ctx: Context, user: User, workspace: Workspace) -> Runtime | None:
    with read_session(ctx.engine) as s:
        return s.exec(select(Runtime).where(Runtime.workspace_id == workspace.id,
                                            Runtime.owner_id == user.id,
                                            Runtime.status != "deleted")).first()


async def _running_runtime(ctx: Context, user: User, workspace: Workspace) -> Runtime:
    """The caller's runtime, created or resumed as needed, once running (or as it is when
    the wait runs out)."""
    deadline = time.monotonic() + ctx.settings.open_wait_seconds
    acted = False
    while True:
        rt = await asyncio.to_thread(_current_runtime, ctx, user, workspace)
        if rt is not None and rt.status == "running" and rt.endpoint:
            return rt
        if rt is None and not acted:
            await asyncio.to_thread(create_runtime_for, ctx, user, workspace.name,
                                    RuntimeCreate())
            acted = True
            continue
        if rt is not None and rt.status in ("paused", "error"):
            if acted:
                raise APIError(409, "runtime_failed", f"your runtime could not start: "
                               f"{rt.status_reason}", {"runtime_id": rt.id})
            await asyncio.to_thread(start_action, ctx, user, rt.id, "resume",
                                    before=_disk_intact)
            acted = True
            continue
        if rt is not None and rt.status == "deleting":
            raise APIError(409, "invalid_transition", "your runtime is being deleted; open "
                           "again once it is gone", {"status": rt.status, "allowed_from": []})
        if time.monotonic() > deadline and rt is not None:
            return rt
        await asyncio.sleep(0.1)


@router.post("/workspaces/{ws}/notebooks/open", response_model=OpenOut,
             responses={202: {"description": "the runtime is still starting: poll, then "
                                             "open again"}})
async def open_notebook(ws: str, body: OpenRequest, user: User = Depends(current_user),
                        ctx: Context = Depends(get_ctx)) -> JSONResponse:
    path = _path(body.path)
    workspace = await _workspace(ctx, user, ws, "reader" if body.mode == "readonly"
                                 else "writer")
    st, bucket = ctx.storage, workspace.bucket
    if await asyncio.to_thread(st.stat, bucket, NOTEBOOKS + path) is None:
        raise not_found("notebook", path)
    if body.mode == "readonly":
        url = f"{ctx.settings.base_url}/api/v1/workspaces/{ws}/notebooks/preview?path={quote(path)}"
        return JSONResponse(OpenOut(mode="readonly", url=url, runtime_id=None, lock=None)
                            .model_dump(mode="json"))
    if body.mode == "edit":
        lock = await asyncio.to_thread(read_lock, st, bucket, path)
        if lock is not None and lock.active(utcnow()) and lock.holder != user.email:
            raise _locked(lock)
    rt = await _running_runtime(ctx, user, workspace)
    if rt.status != "running":
        out = OpenOut(mode=body.mode, url=None, runtime_id=rt.id, lock=None, status="starting",
                      poll=f"/api/v1/runtimes/{rt.id}")
        return JSONResponse(out.model_dump(mode="json"), status_code=202)
    try:
        r = await ctx.http.post(  # the runtime's workspace is its own: no workspace named
            f"{rt.endpoint}/envmgr/localize", json={"path": path, "mode": body.mode},
            headers={"Authorization": f"token {ctx.signer.jupyter_token(rt.id)}"})
    except httpx.HTTPError as exc:
        raise APIError(502, "runtime_unreachable", f"your runtime did not answer: {exc}") \
            from None
    if r.status_code == 409:
        held = r.json()
        raise _locked(Lock(held["holder"], datetime.fromisoformat(held["expires_at"]), 0))
    if r.status_code == 404:
        raise not_found("notebook", path)
    if r.status_code == 403:
        raise APIError(403, "forbidden", r.json().get("message", "your runtime was refused"))
    if r.status_code != 200:
        raise APIError(502, "runtime_error", f"your runtime could not open it: {r.text[:300]}")
    done = r.json()
    lock_out = LockOut(holder=done["lock"]["holder"],
                       expires_at=iso(datetime.fromisoformat(done["lock"]["expires_at"])) or "") \
        if done.get("lock") else None
    url = proxy_url(ctx, user, rt.id, page=f"lab/tree/{done['local_path']}")
    return JSONResponse(OpenOut(mode=body.mode, url=url, runtime_id=rt.id, lock=lock_out)
                        .model_dump(mode="json"))

