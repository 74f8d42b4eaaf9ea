"""The FastAPI application and its lifespan: migrate, bootstrap, reconcile, drive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
from fastapi import FastAPI

from envmgr import __version__
from envmgr.api import (
    errors,
    health,
    job_api,
    proxy,
    runtime_api,
    runtime_origin,
    runtime_package,
    v1,
)
from envmgr.auth.bootstrap import ensure_admin
from envmgr.auth.signing import Signer, secret_key
from envmgr.backends import load_backend
from envmgr.context import Context
from envmgr.core import sockets
from envmgr.core.db import keep_private, make_engine, migrate
from envmgr.core.leader import Leadership
from envmgr.costs.accrual import accrue_all
from envmgr.costs.catalog import load_catalog
from envmgr.jobs.supervisor import JobSupervisor
from envmgr.notebooks.storage import load_storage
from envmgr.runtimes.autopause import Autopause
from envmgr.runtimes.reconcile import reconcile_forever, reconcile_once
from envmgr.runtimes.worker import Worker
from envmgr.settings import Settings
from envmgr.web import pages

log = logging.getLogger("envmgr")


async def accrue_forever(ctx: Context) -> None:
    """Keep the cost rollups up with the event log (reports also catch up on demand)."""
    while True:
        await asyncio.sleep(ctx.settings.cost_accrual_interval_seconds)
        try:
            await asyncio.to_thread(accrue_all, ctx.engine, ctx.catalog, ctx.clock.now())
        except Exception:
            log.exception("cost accrual failed")


def runtime_client() -> httpx.AsyncClient:
    """The client that talks to runtimes. It keeps no cookies: a cookie one user's runtime
    sets must never be replayed to another's."""
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return sockets.client(timeout=httpx.Timeout(60, connect=5), cookies=jar)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    runtime_app = runtime_origin.build_app()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = make_engine(settings.database_url, settings.db_pool_size,
                             settings.db_max_overflow)
        await asyncio.to_thread(migrate, engine)
        keep_private(engine)
        await asyncio.to_thread(ensure_admin, engine, settings)
        ctx = Context(settings=settings, engine=engine, backend=load_backend(settings),
                      catalog=load_catalog(settings.catalog_file), storage=load_storage(settings),
                      signer=Signer(secret_key(settings)),
                      http=runtime_client())
        app.state.ctx = ctx
        runtime_app.state.ctx = ctx
        app.state.loop = asyncio.get_running_loop()
        try:
            await reconcile_once(ctx)
        except Exception:  # a backend outage must not keep the control plane down
            log.exception("reconcile at start failed; the periodic pass will try again")
        worker = ctx.worker = Worker(ctx)
        await worker.start()
        periodic = asyncio.create_task(reconcile_forever(ctx))
        warming = asyncio.create_task(ctx.backend.warm()) if settings.warm_at_start else None
        accrual = asyncio.create_task(accrue_forever(ctx))
        leadership = Leadership(engine)
        app.state.autopause = Autopause(ctx, leadership)
        app.state.autopause.start()
        jobs = ctx.jobs = app.state.jobs = JobSupervisor(ctx, leadership)
        await jobs.start()
        if settings.secure_cookies and not settings.runtimes_domain:
            log.warning("ENVMGR_RUNTIMES_DOMAIN is not set: runtimes' urls point at "
                        "<id>.localhost, which only works on this machine")
        log.info("envmgr started", extra={"url": settings.base_url, "backend": settings.backend,
                                          "database": engine.url.get_backend_name()})
        try:
            yield
        finally:
            periodic.cancel()
            accrual.cancel()
            if warming is not None:
                warming.cancel()
            await jobs.stop()
            await app.state.autopause.stop()
            await worker.stop()
            await ctx.backend.close()
            await ctx.http.aclose()
            engine.dispose()
            log.info("envmgr stopped")

    app = FastAPI(title="envmgr", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # served from vendored assets (web/pages.py)
                  description="Per-user notebook runtimes with detachable persistent disks.")
    errors.install(app)
    app.include_router(v1)
    app.include_router(health.router)
    app.include_router(proxy.router)
    app.include_router(runtime_api.router)
    app.include_router(runtime_package.router)
    app.include_router(job_api.router)
    app.include_router(pages.router)
    app.mount("/static", pages.static, name="static")
    app.add_middleware(runtime_origin.HostDispatch, runtime_app=runtime_app, settings=settings)
    return app
