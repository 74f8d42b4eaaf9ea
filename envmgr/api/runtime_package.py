"""The runtime package a remote runtime installs (envmgr/backends/runtime_package): public,
since it holds no secret, and exactly what this control plane runs."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response

from envmgr.api.deps import get_ctx
from envmgr.backends import runtime_package
from envmgr.context import Context
from envmgr.core.errors import not_found

router = APIRouter(prefix=runtime_package.ROUTE, tags=["runtime package"],
                   include_in_schema=False)


@router.get("/requirements.txt")
async def requirements(ctx: Context = Depends(get_ctx)) -> Response:
    return PlainTextResponse(runtime_package.build().requirements(ctx.settings.runtime_api))


@router.get("/{name}")
async def wheel(name: str) -> Response:
    pkg = runtime_package.build()
    if name != pkg.wheel_name:
        raise not_found("file", name)
    return Response(pkg.wheel, media_type="application/zip",
                    headers={"Cache-Control": "public, max-age=3600"})
