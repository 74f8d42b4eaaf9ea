"""Serves the pages. They are static HTML and scripts that speak the public API with the
session cookie; the server only decides who may load a page, so a non-admin gets a 403
from /admin itself, not an empty dashboard."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from string import Template
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from envmgr.api.deps import get_ctx, session_user
from envmgr.context import Context

STATIC = Path(__file__).parent / "static"
TEMPLATES = Path(__file__).parent / "templates"
# Each page: its title, its scripts, and its <main> (in templates/), inside one shell.
PAGES = {
    "workspace": ("workspaces", ["workspace.js"]),
    "admin": ("costs", ["vendor/chart.umd.min.js", "admin.js"]),
    "forbidden": ("admins only", []),
}
router = APIRouter(tags=["pages"], include_in_schema=False)
# Scripts and styles come only from this service: no inline code, nothing from elsewhere.
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
           "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "Cache-Control": "no-store"}


def _script(src: str) -> str:
    """Vendored libraries are classic scripts (UMD); ours are modules."""
    kind = "" if src.startswith("vendor/") else ' type="module"'
    return f'  <script{kind} src="/static/{src}"></script>'


@cache
def render(name: str) -> str:
    title, scripts = PAGES[name]
    tags = "\n".join(_script(s) for s in scripts)
    return Template((TEMPLATES / "shell.html").read_text()).substitute(
        title=title, scripts=tags, main=(TEMPLATES / f"{name}.html").read_text())


def _page(name: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(render(name), status_code=status, headers=HEADERS)


# The API docs: Swagger UI and ReDoc shipped with the service (static/vendor/, with their
# licences), so /docs works with no network; no inline script here either.
DOCS_HEADERS = {**HEADERS, "Content-Security-Policy": "default-src 'self'; img-src 'self' "
                "data:; style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; "
                "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"}
DOCS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>envmgr API</title>
<link rel="stylesheet" href="/static/vendor/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/static/vendor/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script></body></html>
"""
REDOC = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>envmgr API</title></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="/static/vendor/redoc.standalone.js"></script></body></html>
"""


@router.get("/docs")
async def docs_page() -> Response:
    return HTMLResponse(DOCS, headers=DOCS_HEADERS)


@router.get("/redoc")
async def redoc_page() -> Response:
    return HTMLResponse(REDOC, headers=DOCS_HEADERS)


@router.get("/")
async def workspace_page() -> Response:
    return _page("workspace")


@router.get("/admin")
async def admin_page(request: Request, ctx: Context = Depends(get_ctx)) -> Response:
    user = await session_user(ctx, request)
    if user is None:  # sign in first, then come back to this very view
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/?next={quote(here, safe='/')}", status_code=303)
    if not user.admin:
        return _page("forbidden", 403)
    return _page("admin")


static = StaticFiles(directory=STATIC)
