"""Notebooks in a workspace's bucket: list (with lock holders), content with generation
preconditions, open in edit / playground / readonly mode, and the read-only preview. Thin:
the rules live in `envmgr/notebooks/service.py`."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from envmgr.api.deps import current_user, get_ctx, read_limited
from envmgr.api.schemas import Strict
from envmgr.context import Context
from envmgr.core.clock import iso
from envmgr.core.errors import invalid
from envmgr.core.models import User
from envmgr.notebooks import service
from envmgr.notebooks.rules import Lock

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


def _lock_out(lock: Lock | None) -> LockOut | None:
    if lock is None:
        return None
    return LockOut(holder=lock.holder or "", expires_at=iso(lock.expires_at) or "")


def _generation(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    value = if_match.strip().removeprefix("W/").strip('"')
    if not re.fullmatch(r"[0-9]{1,19}", value) or int(value) >= 2**63:
        raise invalid("If-Match", "must be a generation number, as the ETag of a GET gives")
    return int(value)


async def _bucket(ctx: Context, user: User, ws: str, need: str) -> str:
    return (await asyncio.to_thread(service.workspace, ctx, user, ws, need)).bucket


@router.get("/workspaces/{ws}/notebooks", response_model=list[NotebookOut])
async def list_notebooks(ws: str, user: User = Depends(current_user),
                         ctx: Context = Depends(get_ctx)) -> list[NotebookOut]:
    bucket = await _bucket(ctx, user, ws, "reader")
    found = await asyncio.to_thread(service.list_notebooks, ctx, bucket)
    return [NotebookOut(path=n.path, size=n.size, updated_at=iso(n.updated) or "",
                        generation=n.generation, lock=_lock_out(n.lock)) for n in found]


@router.put("/workspaces/{ws}/notebooks/content", response_model=dict[str, Any],
            status_code=200, responses={201: {"description": "created"}})
async def put_notebook(ws: str, request: Request, path: str = Query(...),
                       if_match: str | None = Header(None), user: User = Depends(current_user),
                       ctx: Context = Depends(get_ctx)) -> JSONResponse:
    path = service.checked_path(path)
    expected = _generation(if_match)
    bucket = await _bucket(ctx, user, ws, "writer")
    data = await read_limited(request, ctx.settings.notebook_max_bytes, "a notebook")
    generation, existed = await asyncio.to_thread(service.save, ctx, bucket, path, data,
                                                  expected)
    return JSONResponse({"path": path, "generation": generation},
                        status_code=200 if existed else 201, headers={"ETag": str(generation)})


@router.get("/workspaces/{ws}/notebooks/content")
async def get_notebook(ws: str, path: str = Query(...), user: User = Depends(current_user),
                       ctx: Context = Depends(get_ctx)) -> Response:
    path = service.checked_path(path)
    bucket = await _bucket(ctx, user, ws, "reader")
    data, generation = await asyncio.to_thread(service.read, ctx, bucket, path)
    return Response(data, media_type="application/json", headers={"ETag": str(generation)})


@router.delete("/workspaces/{ws}/notebooks/content", status_code=204)
async def delete_notebook(ws: str, path: str = Query(...), if_match: str | None = Header(None),
                          user: User = Depends(current_user),
                          ctx: Context = Depends(get_ctx)) -> Response:
    path = service.checked_path(path)
    expected = _generation(if_match)
    bucket = await _bucket(ctx, user, ws, "writer")
    await asyncio.to_thread(service.delete, ctx, bucket, path, user, expected)
    return Response(status_code=204)


@router.get("/workspaces/{ws}/notebooks/preview", response_class=HTMLResponse)
async def preview_notebook(ws: str, path: str = Query(...), user: User = Depends(current_user),
                           ctx: Context = Depends(get_ctx)) -> HTMLResponse:
    """Read-only mode: rendered from the bucket, no runtime needed."""
    path = service.checked_path(path)
    bucket = await _bucket(ctx, user, ws, "reader")
    return HTMLResponse(await asyncio.to_thread(service.render, ctx, bucket, path),
                        headers=PREVIEW_HEADERS)


@router.post("/workspaces/{ws}/notebooks/open", response_model=OpenOut,
             responses={202: {"description": "the runtime is still starting: poll, then "
                                             "open again"}})
async def open_notebook(ws: str, body: OpenRequest, user: User = Depends(current_user),
                        ctx: Context = Depends(get_ctx)) -> JSONResponse:
    path = service.checked_path(body.path)
    done = await service.open_notebook(ctx, user, ws, path, body.mode)
    out = OpenOut(mode=done.mode, url=done.url, runtime_id=done.runtime_id,
                  lock=_lock_out(done.lock), status=done.status, poll=done.poll)
    return JSONResponse(out.model_dump(mode="json"),
                        status_code=202 if done.status == "starting" else 200)
