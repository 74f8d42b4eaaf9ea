"""/proxy/{runtime_id}/...: the only way users reach a runtime's Jupyter server.

The caller must own the runtime (or be an admin). API clients send their bearer token;
browsers open the runtime's `url`, whose short-lived ticket becomes an HttpOnly cookie
scoped to this runtime's path. The runtime's own Jupyter token is added here and never
leaves the control plane. HTTP is streamed both ways; websockets (kernels) are relayed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from http.cookies import SimpleCookie
from typing import Any

import httpx
import websockets
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy import update
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from envmgr.api.deps import SESSION_COOKIE, bearer, user_by_id, user_from_token
from envmgr.backends.base import base_path
from envmgr.context import Context
from envmgr.db import write_session
from envmgr.errors import APIError, not_found
from envmgr.models import Runtime, User
from envmgr.timeutil import utcnow

log = logging.getLogger("envmgr.proxy")
router = APIRouter(tags=["proxy"])
COOKIE = "envmgr_proxy"
ACCESS_WRITE_SECONDS = 10.0
# Hop-by-hop headers, and what the proxy itself sets.
_DROP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
         "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
         "authorization", "cookie"}
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def _caller(ctx: Context, runtime_id: str, headers: Any, cookies: dict[str, str]
                  ) -> User | None:
    token = bearer(headers)
    if token:
        return await user_from_token(ctx, token)
    signed = cookies.get(COOKIE)
    user_id = ctx.signer.check_cookie(signed, runtime_id) if signed else None
    return await user_by_id(ctx, user_id) if user_id else None


def _target(ctx: Context, user: User, runtime_id: str) -> Runtime:
    """The runtime, if the caller owns it (or is an admin) and it is running."""
    with ctx.engine.connect() as conn:
        rt = conn.execute(Runtime.__table__.select().where(Runtime.id == runtime_id)).first()
    if rt is None or not (user.admin or rt.owner_id == user.id):
        raise not_found("runtime", runtime_id)
    if rt.status != "running" or not rt.endpoint:
        raise APIError(409, "not_running", f"runtime {runtime_id} is {rt.status}; resume it "
                       "to reach Jupyter", {"status": rt.status})
    return rt  # type: ignore[return-value]


def record_access(ctx: Context, runtime_id: str) -> None:
    """Autopause counts proxy traffic as activity; the database hears of it every few
    seconds at most, never once per request."""
    ctx.last_access[runtime_id] = ctx.clock.now()
    now = time.monotonic()
    if now - ctx.access_written.get(runtime_id, 0.0) < ACCESS_WRITE_SECONDS:
        return
    ctx.access_written[runtime_id] = now

    def write() -> None:
        with write_session(ctx.engine) as s:
            s.execute(update(Runtime).where(Runtime.id == runtime_id)
                      .values(last_activity_at=utcnow()))
    task = asyncio.get_running_loop().run_in_executor(None, write)
    task.add_done_callback(lambda t: t.exception() and log.warning(
        "could not record proxy access", extra={"runtime": runtime_id}))


def forward_cookies(raw: str | None) -> str | None:
    """The browser's cookies minus the control plane's own: a runtime runs the user's code
    and never sees a credential for the control plane."""
    if not raw:
        return None
    jar = SimpleCookie()
    with contextlib.suppress(Exception):
        jar.load(raw)
    kept = [f"{k}={v.value}" for k, v in jar.items() if k not in (COOKIE, SESSION_COOKIE)]
    return "; ".join(kept) or None


@router.api_route("/proxy/{runtime_id}/{path:path}", methods=_METHODS,
                  include_in_schema=False)
async def proxy_http(runtime_id: str, path: str, request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    ticket = request.query_params.get("ticket")
    if ticket is not None:  # a browser arriving from the runtime's url: ticket -> cookie
        user_id = ctx.signer.check_ticket(ticket, runtime_id)
        if user_id is None:
            raise APIError(401, "unauthorized", "this link has expired; get a fresh url from "
                           f"GET /api/v1/runtimes/{runtime_id}")
        query = "&".join(f"{k}={v}" for k, v in request.query_params.multi_items()
                         if k != "ticket")
        resp = RedirectResponse(f"{request.url.path}{'?' + query if query else ''}", 303)
        resp.set_cookie(COOKIE, ctx.signer.cookie(user_id, runtime_id), httponly=True,
                        samesite="lax", path=f"{base_path(runtime_id)}/",
                        secure=request.url.scheme == "https")
        return resp
    user = await _caller(ctx, runtime_id, request.headers, request.cookies)
    if user is None:
        raise APIError(401, "unauthorized", "send 'Authorization: Bearer <token>' or open the "
                       "runtime's url", headers={"WWW-Authenticate": "Bearer"})
    rt = _target(ctx, user, runtime_id)  # one indexed read: inline beats a thread hop
    record_access(ctx, runtime_id)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
    headers["Authorization"] = f"token {rt.secret}"
    if cookies := forward_cookies(request.headers.get("cookie")):
        headers["Cookie"] = cookies
    url = f"{rt.endpoint}/{path}"
    if request.url.query:
        url += "?" + request.url.query
    upstream = ctx.http.build_request(request.method, url, headers=headers,
                                      content=request.stream())
    try:
        resp = await ctx.http.send(upstream, stream=True)
    except ClientDisconnect:  # the browser went away mid-upload (a tab closed): nobody to tell
        log.info("client left during a proxied request", extra={"runtime": runtime_id})
        return Response(status_code=499)
    except httpx.HTTPError as exc:
        raise APIError(502, "runtime_unreachable", f"the runtime did not answer: {exc}") \
            from None
    out_headers = {k: v for k, v in resp.headers.multi_items()
                   if k.lower() not in _DROP - {"cookie"} and k.lower() != "set-cookie"}
    response = StreamingResponse(resp.aiter_raw(), status_code=resp.status_code,
                                 headers=out_headers, background=BackgroundTask(resp.aclose))
    for value in resp.headers.get_list("set-cookie"):
        response.headers.append("set-cookie", value)
    return response


@router.websocket("/proxy/{runtime_id}/{path:path}")
async def proxy_websocket(websocket: WebSocket, runtime_id: str, path: str) -> None:
    ctx: Context = websocket.app.state.ctx
    user = await _caller(ctx, runtime_id, websocket.headers, websocket.cookies)
    try:
        if user is None:
            raise not_found("runtime", runtime_id)
        rt = _target(ctx, user, runtime_id)
    except APIError:
        await websocket.close(code=1008)  # policy violation: the handshake is refused
        return
    record_access(ctx, runtime_id)
    url = f"{rt.endpoint.replace('http', 'ws', 1)}/{path}"
    if websocket.url.query:
        url += "?" + websocket.url.query
    protocols = websocket.scope.get("subprotocols") or None
    try:
        upstream = await websockets.connect(
            url, additional_headers={"Authorization": f"token {rt.secret}"},
            subprotocols=protocols, max_size=None, open_timeout=10)
    except (OSError, websockets.WebSocketException, TimeoutError):
        await websocket.close(code=1011)
        return
    await websocket.accept(subprotocol=upstream.subprotocol)

    async def client_to_runtime() -> None:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return
            record_access(ctx, runtime_id)
            await upstream.send(msg["text"] if msg.get("text") is not None else msg["bytes"])

    async def runtime_to_client() -> None:
        async for msg in upstream:
            if isinstance(msg, str):
                await websocket.send_text(msg)
            else:
                await websocket.send_bytes(msg)

    tasks = [asyncio.create_task(client_to_runtime()), asyncio.create_task(runtime_to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await upstream.close()
        with contextlib.suppress(Exception):
            await websocket.close()
