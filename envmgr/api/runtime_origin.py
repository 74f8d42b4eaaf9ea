"""The runtimes' own origins (`<runtime id>.localhost:<port>`, or a subdomain of
ENVMGR_RUNTIMES_DOMAIN), served by the same listener as the control plane.

Everything a runtime serves is user content: it runs here, never on the control plane's
origin, so a notebook's script can neither read the control plane's pages nor ride its
session. A browser arrives with the runtime's `url`: `/_envmgr/login?next=...#<ticket>`.
The page posts the ticket (from the fragment: it never reaches a log) and gets a cookie of
this origin alone; the ticket is good once. The cookie is the only credential honoured
here: a bearer token or a session cookie of the control plane means nothing."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit

import httpx
from sqlalchemy import select
from sqlmodel import col
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from envmgr.api.deps import read_limited, redeem, user_by_id
from envmgr.api.proxy import (
    _METHODS,
    _runtime_row,
    forward_cookies,
    forward_http,
    record_activity,
    relay_websocket,
    runtime_target,
)
from envmgr.auth.signing import COOKIE_SECONDS, TICKET_SECONDS
from envmgr.backends.base import base_path
from envmgr.context import Context
from envmgr.core.clock import iso
from envmgr.core.errors import APIError, error_body, not_found
from envmgr.core.models import Event, User, Workspace
from envmgr.runtimes import service as runtimes
from envmgr.runtimes.activity import Kind
from envmgr.runtimes.autopause import Assessment, Probe, assess, httpx_get, probe
from envmgr.runtimes.origins import runtime_for_host
from envmgr.settings import Settings
from envmgr.web import lab_assets

log = logging.getLogger("envmgr.origin")
COOKIE = "envmgr_runtime"
# Over https: a cookie only this very origin can set (Secure, Path=/, no Domain), so a
# sibling runtime's script cannot plant or shadow it with a Domain cookie.
SECURE_COOKIE = "__Host-envmgr_runtime"


def cookie_name(settings: Settings) -> str:
    return SECURE_COOKIE if settings.secure_cookies else COOKIE
# The sign-in page: our own script only, no referrer, never cached.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; "
                "connect-src 'self'; style-src 'unsafe-inline'; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'none'",
                "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-store"}
LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Opening your runtime</title></head>
<body style="font: 16px system-ui, sans-serif; margin: 3em">
<p id="msg">Opening your runtime&hellip;</p>
<script src="/_envmgr/login.js"></script></body></html>
"""
LOGIN_JS = """// The ticket is in the fragment (never sent to a server): forget it, then redeem it.
const ticket = location.hash.slice(1);
const next = new URLSearchParams(location.search).get("next") || "";
history.replaceState(null, "", location.pathname + location.search);
fetch("/_envmgr/login", {method: "POST", credentials: "same-origin",
  headers: {"content-type": "application/json"}, body: JSON.stringify({ticket, next})})
  .then(async (r) => {
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    location.replace(body.next);
  })
  .catch((e) => { document.getElementById("msg").textContent = e.message; });
"""

ASSET_HEADERS = {"Cache-Control": lab_assets.IMMUTABLE, "X-Content-Type-Options": "nosniff"}


def _ctx(conn: Request | WebSocket) -> Context:
    ctx: Context = conn.app.state.ctx
    return ctx


def _runtime_id(conn: Request | WebSocket) -> str:
    return str(conn.scope["envmgr_runtime"])


def _split(value: str) -> SplitResult | None:
    """A URL's parts, or None when it does not parse (`//[x` raises in urlsplit)."""
    try:
        return urlsplit(value)
    except ValueError:
        return None


def _netloc(value: str) -> str | None:
    parts = _split(value)
    return parts.netloc if parts else None


def _safe_next(runtime_id: str, value: Any) -> str:
    """Only a path of this runtime's Jupyter, on this origin (parsed, not pattern-matched)."""
    default = f"{base_path(runtime_id)}/lab"
    parts = _split(value) if isinstance(value, str) and value else None
    if parts is None:
        return default
    if parts.scheme or parts.netloc or "\\" in value or any(ord(c) < 0x20 for c in value) \
            or not parts.path.startswith(f"{base_path(runtime_id)}/"):
        return default
    return str(value)


async def login_page(request: Request) -> Response:
    return HTMLResponse(LOGIN_PAGE, headers=PAGE_HEADERS)


async def login_script(request: Request) -> Response:
    return Response(LOGIN_JS, media_type="text/javascript",
                    headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


async def login(request: Request) -> Response:
    """Ticket -> this origin's cookie. JSON only (a cross-site form cannot send it), from
    this origin only."""
    ctx, runtime_id = _ctx(request), _runtime_id(request)
    origin = request.headers.get("origin")
    if origin is not None and _netloc(origin) != request.headers.get("host"):
        raise APIError(403, "forbidden", "a runtime's sign-in is accepted from its own page "
                       "only")
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise APIError(415, "unsupported_media_type", "send the ticket as JSON")
    try:
        body = json.loads(await read_limited(request, 4096, "a sign-in"))
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("ticket"), str):
        raise APIError(422, "validation_error", "ticket: required, the part of the runtime's "
                       "url after '#'", {"errors": [{"field": "ticket", "message": "required"}]})
    checked = ctx.signer.check_ticket(body["ticket"], runtime_id)
    if checked is None or not await redeem(ctx, TICKET_SECONDS, checked[1]):
        raise APIError(401, "unauthorized", "this link has expired or was already used; open "
                       "the runtime again from the workspace page (or GET the runtime for a "
                       "fresh url)")
    user = await user_by_id(ctx, checked[0])
    if user is None:
        raise APIError(401, "unauthorized", "this link's user no longer exists")
    await runtime_target(ctx, user, runtime_id)  # still theirs, and running
    response = JSONResponse({"next": _safe_next(runtime_id, body.get("next"))},
                            headers={"Cache-Control": "no-store"})
    response.set_cookie(cookie_name(ctx.settings), ctx.signer.cookie(user.id, runtime_id),
                        max_age=COOKIE_SECONDS, path="/", httponly=True, samesite="lax",
                        secure=ctx.settings.secure_cookies)
    return response


def _cookie_signed(ctx: Context, conn: Request | WebSocket) -> str | None:
    """The user id this origin's cookie was signed for (not yet looked up)."""
    signed = conn.cookies.get(cookie_name(ctx.settings))
    return ctx.signer.check_cookie(signed, _runtime_id(conn)) if signed else None


async def _cookie_user(ctx: Context, conn: Request | WebSocket) -> User | None:
    user_id = _cookie_signed(ctx, conn)
    return await user_by_id(ctx, user_id) if user_id else None


# -- what JupyterLab's envmgr extension asks of the control plane, on this origin ------------
# (answered even while the runtime is paused: the page says why and offers Resume)

def from_this_origin(request: Request) -> bool:
    """Whether a browser sent this from a page of this very origin: its `Origin` is this
    origin, or (with no Origin) its `Sec-Fetch-Site` says same-origin. Runtimes of one
    deployment are sibling subdomains, the same *site* to a browser (SameSite=Lax sends
    their cookie along), so the site is no proof: only the origin is."""
    origin = request.headers.get("origin")
    if origin is not None:
        return _netloc(origin) == request.headers.get("host")
    return request.headers.get("sec-fetch-site") == "same-origin"


async def _owned(request: Request, writes: bool) -> tuple[Context, User, Any]:
    """The cookie's user and the runtime row, if theirs. `writes`: the request must also
    come from a page of this very origin (no other site can pause-resume with the cookie)."""
    ctx, runtime_id = _ctx(request), _runtime_id(request)
    user = await _cookie_user(ctx, request)
    if user is None:
        raise APIError(401, "unauthorized", "open this runtime from the workspace page")
    if writes and not from_this_origin(request):
        raise APIError(403, "forbidden", "only this runtime's own pages may do that")
    rt = await asyncio.to_thread(_runtime_row, ctx, runtime_id)
    if rt is None or not (user.admin or rt.owner_id == user.id):
        raise not_found("runtime", runtime_id)
    return ctx, user, rt


async def _assess(ctx: Context, rt: Any) -> Assessment:
    """Its last activity and when autopause would pause it, from the same signals the sweep
    reads (one probe, which is not activity itself)."""
    s = ctx.settings
    try:
        p = await asyncio.wait_for(probe(httpx_get(ctx.http), rt.endpoint,
                                         ctx.signer.jupyter_token(rt.id)),
                                   s.autopause_probe_timeout_seconds)
    except (httpx.HTTPError, TimeoutError, ValueError):
        p = Probe(False)
    return assess(p, rt, ctx.activity.get(rt.id), ctx.clock.now(), s.autopause_max_busy_hours)


async def state(request: Request) -> Response:
    ctx, _, rt = await _owned(request, writes=False)
    s = ctx.settings
    ws = await asyncio.to_thread(_workspace_name, ctx, rt.workspace_id)
    running = rt.status == "running" and bool(rt.endpoint)
    notices = await asyncio.to_thread(_notices, ctx, rt.id) if running else []
    a = await _assess(ctx, rt) if running else None
    due = a.verdict.due if a is not None and rt.autopause_minutes > 0 else None
    return JSONResponse({
        "id": rt.id, "status": rt.status, "status_reason": rt.status_reason,
        "autopause_minutes": rt.autopause_minutes, "autopause_at": iso(due),
        "last_activity": {"at": iso(a.last.at), "kind": a.last.kind.value} if a else None,
        "busy_since": iso(a.busy_since) if a and a.busy_since else None,
        # how often the page reports input: once a minute, or more often for a shorter
        # autopause (a quarter of it), so that typing keeps any runtime up
        "input_report_seconds": min(60.0, rt.autopause_minutes * 15) or 60.0,
        "warn_seconds": min(s.autopause_warn_seconds, rt.autopause_minutes * 30),
        "now": iso(ctx.clock.now()), "workspace": ws, "workspace_url": f"{s.base_url}/",
        "preview_url": f"{s.base_url}/api/v1/workspaces/{quote(ws)}/notebooks/preview?path=",
        "notices": notices,
    }, headers={"Cache-Control": "no-store"})


NOTICE_SECONDS = 15 * 60


def _notices(ctx: Context, runtime_id: str) -> list[dict[str, str]]:
    """What happened inside the running runtime lately (a kernel killed for its memory):
    its events that changed no status, of the last quarter hour, newest first."""
    since = ctx.clock.now() - timedelta(seconds=NOTICE_SECONDS)
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(col(Event.at), col(Event.reason), col(Event.detail)).where(
            col(Event.resource_id) == runtime_id, col(Event.from_status) == "running",
            col(Event.to_status) == "running", col(Event.at) >= since)
            .order_by(col(Event.id).desc()).limit(20)).all()
    return [{"at": iso(at), "reason": reason} for at, reason, detail in rows
            if (detail or {}).get("notice")][:5]


def _workspace_name(ctx: Context, workspace_id: str) -> str:
    with ctx.engine.connect() as conn:
        return str(conn.execute(select(col(Workspace.name)).where(
            col(Workspace.id) == workspace_id)).scalar_one())


async def resume(request: Request) -> Response:
    ctx, user, rt = await _owned(request, writes=True)
    await asyncio.to_thread(runtimes.start_action, ctx, user, rt.id, "resume",
                            before=runtimes.disk_intact)
    return await state(request)


async def _activity(request: Request, kind: Kind) -> Response:
    ctx, _, rt = await _owned(request, writes=True)
    if rt.status != "running":
        raise APIError(409, "not_running", f"runtime {rt.id} is {rt.status}; resume it",
                       {"status": rt.status})
    record_activity(ctx, rt.id, kind)
    return await state(request)


async def still_here(request: Request) -> Response:
    """"I'm still here": a person, so activity."""
    return await _activity(request, Kind.STILL_HERE)


async def page_input(request: Request) -> Response:
    """Keys, pointer or focus in a visible JupyterLab tab of this runtime (its envmgr
    extension reports them at most once a minute): a person, so activity."""
    return await _activity(request, Kind.PAGE)


def _jupyter_path(runtime_id: str, path: str) -> str | None:
    prefix = f"{base_path(runtime_id)}/"
    return path.removeprefix(prefix) if path.startswith(prefix) else None


async def serve(request: Request) -> Response:
    ctx, runtime_id = _ctx(request), _runtime_id(request)
    rest = _jupyter_path(runtime_id, request.url.path)
    if rest is None:
        raise APIError(404, "not_found", f"this origin serves runtime {runtime_id} under "
                       f"{base_path(runtime_id)}/ only")
    asset = lab_assets.find(rest) if request.method in ("GET", "HEAD") else None
    if asset is not None and _cookie_signed(ctx, request):
        # JupyterLab's own hashed files, from here: no hop through the runtime, and there
        # already while it starts (the cookie's signature is the check: they are public).
        return FileResponse(asset, headers=ASSET_HEADERS)
    user = await _cookie_user(ctx, request)
    if user is None:
        raise APIError(401, "unauthorized", "open this runtime from the workspace page (its "
                       f"url signs you in): {ctx.settings.base_url}/")
    if request.method not in ("GET", "HEAD", "OPTIONS") and not from_this_origin(request):
        # Another runtime's page (or any site) posting with the user's cookie: Jupyter's
        # own XSRF check is skipped (the proxy hands it its token), so it is made here.
        raise APIError(403, "forbidden", "a change to this runtime must come from its own "
                       "pages (Origin or Sec-Fetch-Site of this origin)")
    rt = await runtime_target(ctx, user, runtime_id)
    return await forward_http(ctx, rt, rest, request,
                              forward_cookies(request.headers.get("cookie")), set_cookies=True)


async def serve_websocket(websocket: WebSocket) -> None:
    """Kernels' channels: this origin's cookie, and an Origin of this very origin (a page
    elsewhere cannot open a socket with the user's cookie)."""
    ctx, runtime_id = _ctx(websocket), _runtime_id(websocket)
    origin = websocket.headers.get("origin", "")
    rest = _jupyter_path(runtime_id, websocket.url.path)
    user = await _cookie_user(ctx, websocket)
    netloc = _netloc(origin)
    same_origin = bool(netloc) and netloc == websocket.headers.get("host") \
        and runtime_for_host(ctx.settings, netloc or "") == runtime_id
    try:
        if rest is None or user is None or not same_origin:
            raise APIError(403, "forbidden", "refused")
        rt = await runtime_target(ctx, user, runtime_id)
    except APIError:
        await websocket.close(code=1008)
        return
    await relay_websocket(ctx, rt, rest, websocket)


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    if "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(f"<!doctype html><title>envmgr</title><p>{exc.status}: "
                            "This runtime could not be opened. Open it again from the "
                            "workspace page.</p>", exc.status, headers=PAGE_HEADERS)
    return JSONResponse(error_body(exc.code, exc.message, exc.details), exc.status, exc.headers)


def build_app() -> Starlette:
    """The runtime origins' application; its `state.ctx` is set by the service's lifespan."""
    return Starlette(routes=[
        Route("/_envmgr/login", login_page, methods=["GET"]),
        Route("/_envmgr/login", login, methods=["POST"]),
        Route("/_envmgr/login.js", login_script, methods=["GET"]),
        Route("/_envmgr/state", state, methods=["GET"]),
        Route("/_envmgr/resume", resume, methods=["POST"]),
        Route("/_envmgr/still-here", still_here, methods=["POST"]),
        Route("/_envmgr/activity", page_input, methods=["POST"]),
        Route("/{path:path}", serve, methods=_METHODS),
        WebSocketRoute("/{path:path}", serve_websocket),
    ], exception_handlers={APIError: _error})


class HostDispatch:
    """ASGI middleware: a request whose Host names a runtime goes to the runtime origins'
    application; everything else (and lifespan) to the control plane."""

    def __init__(self, app: ASGIApp, runtime_app: ASGIApp, settings: Settings) -> None:
        self.app, self.runtime_app, self.settings = app, runtime_app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            runtime_id = runtime_for_host(self.settings, Headers(scope=scope).get("host", ""))
            if runtime_id is not None:
                await self.runtime_app({**scope, "envmgr_runtime": runtime_id}, receive, send)
                return
        await self.app(scope, receive, send)
