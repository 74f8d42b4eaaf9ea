"""Relaying requests to a runtime's Jupyter server, and `/proxy/{runtime_id}/...` for API
clients.

Browsers never reach a runtime on the control plane's origin: they use the runtime's own
origin (envmgr.api.runtime_origin). `/proxy/<id>/` here honours a token (never a cookie or
a ticket), for the runtime's owner and admins, in each form Jupyter's own clients send it:
`Authorization: Bearer <t>` or `token <t>` (@jupyterlab/services, so VS Code; the gateway
client), or a `token` query parameter (websockets, jupyter-kernel-client). Whatever the form,
no credential of the control plane reaches the runtime: the header, the service's cookies
and every `token` query parameter are removed before a request or a websocket is relayed,
and the runtime's own Jupyter token is added here (it never leaves the control plane). HTTP
is streamed both ways; websockets (kernels) are relayed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import httpx
import websockets
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import update
from sqlmodel import col
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from envmgr.api.deps import caller_from_token, write_behind
from envmgr.context import Context
from envmgr.core import sockets
from envmgr.core.errors import APIError, error_body, not_found
from envmgr.core.models import Runtime, User
from envmgr.runtimes import activity
from envmgr.runtimes.activity import Kind, Last

log = logging.getLogger("envmgr.proxy")
router = APIRouter(tags=["proxy"])
ACCESS_WRITE_SECONDS = 10.0
# Cookies of the service itself: never forwarded to a runtime, never set by one.
SERVICE_COOKIES = ("envmgr_session", "envmgr_runtime", "__Host-envmgr_runtime")
# Hop-by-hop headers, what the proxy itself sets, and what only the proxy may judge.
_DROP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
         "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
         "authorization", "cookie", "origin", "x-envmgr-browser"}
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
# Query parameters that carry a credential: never relayed (the runtime gets its own token
# in a header), never logged (envmgr.core.logs redacts them).
SECRET_PARAMS = ("token",)


def forwarded_query(query: str) -> str:
    """The query string as the runtime gets it: without any credential parameter."""
    if not query:
        return ""
    pairs = [p for p in query.split("&")
             if unquote_plus(p.split("=", 1)[0]) not in SECRET_PARAMS]
    return "&".join(pairs)


def proxy_token(headers: Any, query: str) -> str | None:
    """The caller's token in any form Jupyter clients send it: `Authorization: Bearer` or
    `token`, else a `token` query parameter."""
    scheme, _, value = str(headers.get("authorization", "")).partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k == "token" and v:
            return str(v)
    return None


def _runtime_row(ctx: Context, runtime_id: str) -> Any:
    with ctx.engine.connect() as conn:
        return conn.execute(Runtime.__table__.select().where(col(Runtime.id) == runtime_id)).first()


async def runtime_target(ctx: Context, user: User, runtime_id: str) -> Any:
    """The runtime, if the caller owns it (or is an admin) and it is running."""
    rt = await asyncio.to_thread(_runtime_row, ctx, runtime_id)
    if rt is None or not (user.admin or rt.owner_id == user.id):
        raise not_found("runtime", runtime_id)
    if rt.status != "running" or not rt.endpoint:
        # 424, as JupyterHub answers for a stopped server: JupyterLab then waits and retries
        # instead of declaring every open kernel dead while the runtime is paused.
        raise APIError(424, "not_running", f"runtime {runtime_id} is {rt.status}; resume it "
                       "to reach Jupyter", {"status": rt.status})
    return rt


def record_activity(ctx: Context, runtime_id: str, kind: Kind) -> None:
    """Activity a person or a kernel made (envmgr.runtimes.activity); the database hears of
    it every few seconds at most, never once per request."""
    now = ctx.clock.now()
    ctx.activity[runtime_id] = Last(now, kind)
    write_behind(ctx, ctx.access_written, runtime_id, ACCESS_WRITE_SECONDS,
                 update(Runtime).where(col(Runtime.id) == runtime_id)
                 .values(last_activity_at=now, last_activity_kind=kind.value), "activity")


def forward_cookies(raw: str | None) -> str | None:
    """The browser's cookies minus the service's own: a runtime runs the user's code and
    never sees a credential for the control plane or for its own origin."""
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    with contextlib.suppress(CookieError):
        jar.load(raw)
    kept = [f"{k}={v.value}" for k, v in jar.items() if k not in SERVICE_COOKIES]
    return "; ".join(kept) or None


def scoped_set_cookies(values: Iterable[str]) -> list[str]:
    """A runtime's Set-Cookie headers, kept to the runtime's own origin: any Domain
    attribute is removed (so a cookie can never reach a parent domain, the control plane
    or another runtime), and the service's own cookie names cannot be set."""
    out = []
    for value in values:
        first, *attrs = value.split(";")
        name = first.split("=", 1)[0].strip()
        if not name or name in SERVICE_COOKIES:
            continue
        kept = [a for a in attrs if a.split("=", 1)[0].strip().lower() != "domain"]
        out.append(";".join([first, *kept]))
    return out


async def forward_http(ctx: Context, rt: Any, path: str, request: Request,
                       cookies: str | None, set_cookies: bool) -> Response:
    """Stream one request to the runtime and its answer back. `set_cookies`: pass the
    runtime's Set-Cookie headers on (scoped to its origin) or drop them (API clients).
    Only a write of a file's contents is activity (`activity.of_request`): polls, listings
    and status requests of an open tab are not."""
    if kind := activity.of_request(request.method, path):
        record_activity(ctx, rt.id, kind)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
    headers["Authorization"] = f"token {ctx.signer.jupyter_token(rt.id)}"
    if set_cookies:  # a browser, on the runtime's origin: Jupyter checks its XSRF token
        headers["X-Envmgr-Browser"] = "1"
    if cookies:
        headers["Cookie"] = cookies
    url = f"{rt.endpoint}/{path}"
    if query := forwarded_query(request.url.query):
        url += "?" + query
    upstream = ctx.http.build_request(request.method, url, headers=headers,
                                      content=request.stream())
    try:
        resp = await ctx.http.send(upstream, stream=True)
    except ClientDisconnect:  # the browser went away mid-upload (a tab closed): nobody to tell
        log.info("client left during a proxied request", extra={"runtime": rt.id})
        return Response(status_code=499)
    except httpx.HTTPError as exc:
        raise APIError(502, "runtime_unreachable", f"the runtime did not answer: {exc}") \
            from None
    out_headers = {k: v for k, v in resp.headers.multi_items()
                   if k.lower() not in _DROP and k.lower() != "set-cookie"}
    response = StreamingResponse(resp.aiter_raw(), status_code=resp.status_code,
                                 headers=out_headers, background=BackgroundTask(resp.aclose))
    if set_cookies:
        for value in scoped_set_cookies(resp.headers.get_list("set-cookie")):
            response.headers.append("set-cookie", value)
    return response


async def relay_websocket(ctx: Context, rt: Any, path: str, websocket: WebSocket) -> None:
    """Relay a websocket (a kernel's channels, a terminal) both ways until either side
    closes. What the client sends may be activity: a cell run, terminal input."""
    url = f"{sockets.ws_url(rt.endpoint)}/{path}"
    socket = activity.socket_of(path)  # what its messages may be (activity), once
    if query := forwarded_query(websocket.url.query):
        url += "?" + query
    options: dict[str, Any] = {
        "additional_headers": {"Authorization": f"token {ctx.signer.jupyter_token(rt.id)}"},
        "subprotocols": websocket.scope.get("subprotocols") or None, "max_size": None,
        "open_timeout": 10}
    try:
        if (shared := sockets.transport_of(ctx.http)) and sockets.socket_of(rt.endpoint):
            with shared.connect_path(rt.endpoint) as sock:
                upstream = await websockets.unix_connect(sock, url, **options)
        else:
            upstream = await websockets.connect(url, **options)
    except (OSError, websockets.WebSocketException, TimeoutError, httpx.HTTPError):
        await websocket.close(code=1011)
        return
    await websocket.accept(subprotocol=upstream.subprotocol)

    async def client_to_runtime() -> None:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg["text"] if msg.get("text") is not None else msg["bytes"]
            if socket and (kind := activity.in_frame(socket, data)):
                record_activity(ctx, rt.id, kind)
            await upstream.send(data)

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


async def _token_caller(ctx: Context, headers: Any, query: str, runtime_id: str
                        ) -> User | None:
    """The token's user, if the token may open this runtime (a runtime-scoped token opens
    its own runtime only; another's is not found, as any runtime not the caller's)."""
    token = proxy_token(headers, query)
    caller = await caller_from_token(ctx, token) if token else None
    if caller is None:
        return None
    if caller.runtime is not None and caller.runtime != runtime_id:
        raise not_found("runtime", runtime_id)
    return caller.user


UNAUTHORIZED = ("send a token of this service as 'Authorization: Bearer <token>' (or "
                "'token <token>', or a 'token' query parameter); browsers open the runtime's "
                "url, on the runtime's own origin")


@router.api_route("/proxy/{runtime_id}/{path:path}", methods=_METHODS,
                  include_in_schema=False)
async def proxy_http(runtime_id: str, path: str, request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    user = await _token_caller(ctx, request.headers, request.url.query, runtime_id)
    if user is None:
        raise APIError(401, "unauthorized", UNAUTHORIZED,
                       headers={"WWW-Authenticate": "Bearer"})
    rt = await runtime_target(ctx, user, runtime_id)
    return await forward_http(ctx, rt, path, request, None, set_cookies=False)


async def refuse_websocket(websocket: WebSocket, error: APIError) -> None:
    """A refused handshake in words a client shows: an HTTP answer with the error body
    before the upgrade (401 for no or a bad token, 404, 424) where the server can send one,
    else a close with 4000 + the status and the reason."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        headers = dict(error.headers or {})
        if error.status == 401:
            headers.setdefault("WWW-Authenticate", "Bearer")
        await websocket.send_denial_response(JSONResponse(
            error_body(error.code, error.message, error.details), status_code=error.status,
            headers=headers))
        return
    await websocket.close(code=4000 + error.status, reason=error.message[:120])


@router.websocket("/proxy/{runtime_id}/{path:path}")
async def proxy_websocket(websocket: WebSocket, runtime_id: str, path: str) -> None:
    ctx: Context = websocket.app.state.ctx
    try:
        user = await _token_caller(ctx, websocket.headers, websocket.url.query, runtime_id)
        if user is None:
            raise APIError(401, "unauthorized", UNAUTHORIZED)
        rt = await runtime_target(ctx, user, runtime_id)
    except APIError as exc:
        await refuse_websocket(websocket, exc)
        return
    await relay_websocket(ctx, rt, path, websocket)
