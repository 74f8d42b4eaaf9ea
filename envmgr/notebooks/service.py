"""The notebook service layer: list, save, delete, render and open notebooks of a
workspace's bucket. The lock and save rules are in `rules.py`; opening in edit or playground
mode needs the caller's runtime (created or resumed through the runtime service) and asks
its extension to localize the notebook. Blocking calls: routers run them in a thread."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import httpx
import nbformat
from sqlmodel import col, select

from envmgr.auth.access import workspace_for
from envmgr.context import Context
from envmgr.core import nesting
from envmgr.core.clock import iso
from envmgr.core.db import read_session
from envmgr.core.errors import APIError, invalid, not_found
from envmgr.core.models import Disk, Runtime, User, Workspace
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
from envmgr.runtimes import service as runtimes


@dataclass(frozen=True)
class NotebookInfo:
    path: str
    size: int
    updated: datetime | None
    generation: int
    lock: Lock | None  # only while it holds


@dataclass(frozen=True)
class Opened:
    mode: str
    url: str | None
    runtime_id: str | None
    lock: Lock | None
    status: str = "ready"  # or "starting": poll the runtime, then open again
    poll: str | None = None


def checked_path(path: str, notebook: bool = True) -> str:
    try:
        return clean_path(path, notebook)
    except BadPath as exc:
        raise invalid("path", str(exc)) from None


def workspace(ctx: Context, user: User, ws: str, need: str) -> Workspace:
    with read_session(ctx.engine) as s:
        return workspace_for(s, user, ws, need)[0]


def locked(lock: Lock) -> APIError:
    until = iso(lock.expires_at)
    return APIError(409, "locked", f"{lock.holder} is editing this notebook until {until}; "
                    "open it in playground or readonly mode",
                    {"holder": lock.holder, "expires_at": until})


def _held_by_another(ctx: Context, bucket: str, path: str, user: User) -> None:
    lock = read_lock(ctx.storage, bucket, path)
    if lock is not None and lock.active(ctx.clock.now()) and lock.holder != user.email:
        raise locked(lock)


def list_notebooks(ctx: Context, bucket: str) -> list[NotebookInfo]:
    st, now = ctx.storage, ctx.clock.now()
    held = {o.name.removeprefix(LOCKS).removesuffix(".json") for o in st.list(bucket, LOCKS)}
    out = []
    for o in st.list(bucket, NOTEBOOKS):
        path = o.name.removeprefix(NOTEBOOKS)
        lock = read_lock(st, bucket, path) if path in held else None
        out.append(NotebookInfo(path, o.size, o.updated, o.generation,
                                lock if lock is not None and lock.active(now) else None))
    return out


NOTEBOOK_KEYS = ("cells", "metadata", "nbformat", "nbformat_minor")


def check_notebook(data: bytes) -> None:
    """A 422 that says what an .ipynb must look like, before nbformat's own words (which
    speak of converting "version 1 to version 2" for any JSON object without cells)."""
    try:
        body = nesting.loads(data, "body")
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid("body", f"not a notebook: the body is not valid JSON ({exc})") from None
    missing = [k for k in NOTEBOOK_KEYS if not isinstance(body, dict) or k not in body]
    if missing:
        raise invalid("body", "not a notebook: an .ipynb is a JSON object with "
                      f"{', '.join(NOTEBOOK_KEYS)} (nbformat 4); missing {', '.join(missing)}")
    if body["nbformat"] != 4:
        raise invalid("body", f"nbformat {body['nbformat']!r} is not supported: only "
                      "nbformat 4 notebooks (Jupyter's format since 2015)")
    try:
        nbformat.validate(nbformat.reads(data.decode(), as_version=4))
    except Exception as exc:
        raise invalid("body", f"not a valid nbformat 4 notebook: {str(exc)[:300]}") from None


def save(ctx: Context, bucket: str, path: str, data: bytes,
         expected: int | None) -> tuple[int, bool]:
    """Write a notebook (if `expected`, only over that generation): (generation, existed)."""
    check_notebook(data)
    existed = ctx.storage.stat(bucket, NOTEBOOKS + path) is not None
    clash = None if existed else path_conflict(ctx.storage, bucket, path)
    if clash is not None:
        raise APIError(409, "path_conflict", f"{path!r} would be both a notebook and a "
                       f"folder: {clash!r} exists; choose another name",
                       {"path": path, "conflicts_with": clash})
    try:
        info = ctx.storage.write(bucket, NOTEBOOKS + path, data, if_generation_match=expected,
                                 content_type="application/x-ipynb+json")
    except PreconditionFailed:
        raise APIError(412, "generation_mismatch", "the notebook changed in the bucket since "
                       "that generation; GET it again and retry with its ETag",
                       {"if_match": expected}) from None
    return info.generation, existed


def read(ctx: Context, bucket: str, path: str) -> tuple[bytes, int]:
    try:
        data, info = ctx.storage.read(bucket, NOTEBOOKS + path)
    except NotFound:
        raise not_found("notebook", path) from None
    return data, info.generation


def delete(ctx: Context, bucket: str, path: str, user: User, expected: int | None) -> None:
    _held_by_another(ctx, bucket, path, user)
    try:
        ctx.storage.delete(bucket, NOTEBOOKS + path, if_generation_match=expected)
    except NotFound:
        raise not_found("notebook", path) from None
    except PreconditionFailed:
        raise APIError(412, "generation_mismatch", "the notebook changed since that "
                       "generation", {"if_match": expected}) from None


def render(ctx: Context, bucket: str, path: str) -> str:
    """Read-only mode: HTML rendered from the bucket by nbconvert, no runtime needed."""
    from nbconvert import HTMLExporter  # heavy: imported on first preview only
    data, _ = read(ctx, bucket, path)
    try:
        body, _ = HTMLExporter(template_name="lab").from_notebook_node(
            nbformat.reads(data.decode(), as_version=4))
    except Exception as exc:  # saved by a runtime, not valid as a notebook
        raise APIError(422, "not_renderable", f"{path!r} is not a notebook nbconvert can "
                       f"render: {str(exc)[:300]}", {"path": path}) from None
    return str(body)


def _current_runtime(ctx: Context, user: User, ws: Workspace) -> Runtime | None:
    with read_session(ctx.engine) as s:
        return s.exec(select(Runtime).where(col(Runtime.workspace_id) == ws.id,
                                            col(Runtime.owner_id) == user.id,
                                            col(Runtime.status) != "deleted")).first()


def kept_disk(ctx: Context, user: User, ws: Workspace) -> str | None:
    """The caller's newest kept disk in the workspace (ready, attached to nothing)."""
    with read_session(ctx.engine) as s:
        disk = s.exec(select(Disk).where(col(Disk.workspace_id) == ws.id,
                                         col(Disk.owner_id) == user.id,
                                         col(Disk.status) == "ready",
                                         col(Disk.attached_to).is_(None))
                      .order_by(col(Disk.updated_at).desc())).first()
        return disk.id if disk is not None else None


async def running_runtime(ctx: Context, user: User, ws: Workspace) -> Runtime:
    """The caller's runtime, created or resumed as needed, once running (or as it is when
    the wait runs out)."""
    deadline = time.monotonic() + ctx.settings.open_wait_seconds
    acted = False
    while True:
        rt = await asyncio.to_thread(_current_runtime, ctx, user, ws)
        if rt is not None and rt.status == "running" and rt.endpoint:
            return rt
        if rt is None and not acted:
            # The files of a runtime deleted with "keep disk" come back: its disk is used,
            # not a new one beside it (which would bill too).
            kept = await asyncio.to_thread(kept_disk, ctx, user, ws)
            await asyncio.to_thread(runtimes.create_runtime, ctx, user, ws.name,
                                    runtimes.NewRuntime(disk_id=kept))
            acted = True
            continue
        if rt is not None and rt.status in ("paused", "error"):
            if acted:
                raise APIError(409, "runtime_failed", f"your runtime could not start: "
                               f"{rt.status_reason}", {"runtime_id": rt.id})
            await asyncio.to_thread(runtimes.start_action, ctx, user, rt.id, "resume",
                                    before=runtimes.disk_intact)
            acted = True
            continue
        if rt is not None and rt.status == "deleting":
            raise APIError(409, "invalid_transition", "your runtime is being deleted; open "
                           "again once it is gone", {"status": rt.status, "allowed_from": []})
        if time.monotonic() > deadline and rt is not None:
            return rt
        await asyncio.sleep(0.1)


async def open_notebook(ctx: Context, user: User, ws: str, path: str, mode: str) -> Opened:
    """Readonly: the preview's url. Edit and playground: the caller's runtime (started as
    needed) localizes the notebook, taking the lock in edit mode."""
    need = "reader" if mode == "readonly" else "writer"
    found = await asyncio.to_thread(workspace, ctx, user, ws, need)
    st, bucket = ctx.storage, found.bucket
    if await asyncio.to_thread(st.stat, bucket, NOTEBOOKS + path) is None:
        raise not_found("notebook", path)
    if mode == "readonly":
        url = f"{ctx.settings.base_url}/api/v1/workspaces/{ws}/notebooks/preview?path={quote(path)}"
        return Opened(mode, url, None, None)
    if mode == "edit":
        await asyncio.to_thread(_held_by_another, ctx, bucket, path, user)
    rt = await running_runtime(ctx, user, found)
    if rt.status != "running":
        return Opened(mode, None, rt.id, None, "starting", f"/api/v1/runtimes/{rt.id}")
    try:
        r = await ctx.http.post(  # the runtime's workspace is its own: no workspace named
            f"{rt.endpoint}/envmgr/localize", json={"path": path, "mode": mode},
            headers={"Authorization": f"token {ctx.signer.jupyter_token(rt.id)}"})
    except httpx.HTTPError as exc:
        raise APIError(502, "runtime_unreachable", f"your runtime did not answer: {exc}") \
            from None
    if r.status_code == 409:
        held = r.json()
        raise locked(Lock(held["holder"], datetime.fromisoformat(held["expires_at"]), 0))
    if r.status_code == 404:
        raise not_found("notebook", path)
    if r.status_code == 403:
        raise APIError(403, "forbidden", r.json().get("message", "your runtime was refused"))
    if r.status_code != 200:
        raise APIError(502, "runtime_error", f"your runtime could not open it: {r.text[:300]}")
    done = r.json()
    lock = Lock(done["lock"]["holder"], datetime.fromisoformat(done["lock"]["expires_at"]), 0) \
        if done.get("lock") else None
    url = runtimes.proxy_url(ctx, user, rt.id, page=f"lab/tree/{done['local_path']}")
    return Opened(mode, url, rt.id, lock)
