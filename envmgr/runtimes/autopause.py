"""Autopause: every ENVMGR_AUTOPAUSE_INTERVAL_SECONDS, pause running runtimes that have been
idle for their `autopause_minutes`, saving their notebooks first (the pause flushes).

Activity is the latest of: the Jupyter server's `last_activity` (which already folds in API,
kernel and terminal activity), the proxy's last request, and when the runtime started. A
runtime with a busy kernel stays up, but never longer than ENVMGR_AUTOPAUSE_MAX_BUSY_HOURS
past its last activity (a silent, wedged kernel must not burn money for days). A runtime
that does not answer is paused only after it failed to answer for its whole threshold.

Probes run concurrently, bounded, each with a short timeout, and never send activity (the
`no_track_activity` flag). Sweeps never overlap, and with several replicas on PostgreSQL
only the holder of an advisory lock sweeps; if it dies, its connection (and lock) goes and
another replica takes over (envmgr/core/leader.py; the job supervisor shares the lock)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import bindparam, select, update
from sqlmodel import col

from envmgr.context import Context
from envmgr.core import sockets
from envmgr.core.clock import utcnow
from envmgr.core.leader import Leadership
from envmgr.core.models import Runtime
from envmgr.runtimes.machine import start_many

log = logging.getLogger("envmgr.runtimes.autopause")
CHECKED = Counter("envmgr_autopause_checked_total", "Runtimes probed by autopause")
PAUSED = Counter("envmgr_autopause_paused_total", "Runtimes paused by autopause", ["why"])
ERRORS = Counter("envmgr_autopause_errors_total", "Probes that failed or timed out")
SWEEPS = Counter("envmgr_autopause_sweeps_total", "Sweeps run by this replica")
SKIPPED = Counter("envmgr_autopause_skipped_total", "Sweeps skipped: another replica leads")
DURATION = Histogram("envmgr_autopause_sweep_seconds", "Sweep wall time",
                     buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
LEADER = Gauge("envmgr_autopause_leader", "1 while this replica holds the sweep lock")


@dataclass
class Probe:
    ok: bool
    last_activity: datetime | None = None
    busy: bool = False
    error: str = ""


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    with contextlib.suppress(ValueError, TypeError):
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return parsed if parsed.tzinfo is not None else None  # never compare naive to aware
    return None


# GET url with params and headers -> (status, parsed JSON body); aiohttp in the sweep,
# the service's httpx client for one page's question.
Get = Callable[[str, dict[str, str], dict[str, str]], Awaitable[tuple[int, Any]]]


def aiohttp_get(http: aiohttp.ClientSession) -> Get:
    async def get(url: str, params: dict[str, str], headers: dict[str, str]) -> tuple[int, Any]:
        async with http.get(url, params=params, headers=headers) as r:
            return r.status, await r.json(content_type=None) if r.status == 200 else None
    return get


def httpx_get(http: httpx.AsyncClient) -> Get:
    async def get(url: str, params: dict[str, str], headers: dict[str, str]) -> tuple[int, Any]:
        r = await http.get(url, params=params, headers=headers)
        return r.status_code, r.json() if r.status_code == 200 else None
    return get


def routed_get(tcp: Get, sockets_get: Get) -> Get:
    """Runtimes on a Unix socket (the local backend's containers) through the service's
    httpx client, which reaches them; the rest through `tcp`."""
    def get(url: str, params: dict[str, str], headers: dict[str, str]
            ) -> Awaitable[tuple[int, Any]]:
        return (sockets_get if url.startswith(f"{sockets.SCHEME}://") else tcp)(
            url, params, headers)
    return get


async def probe(get: Get, endpoint: str, secret: str) -> Probe:
    """What a runtime's Jupyter says of its activity. A runtime runs its user's code, so
    its answers are untrusted: anything but the shapes Jupyter sends is "no answer" (one
    runtime must never break a sweep over all of them)."""
    headers = {"Authorization": f"token {secret}"}
    status, body = await get(f"{endpoint}/api/status", {}, headers)
    if status != 200 or not isinstance(body, dict):
        return Probe(False, error=f"status {status}")
    last = _parse(body.get("last_activity"))
    busy = False
    if body.get("kernels"):
        status, kernels = await get(f"{endpoint}/api/kernels", {"no_track_activity": "1"},
                                    headers)
        if status != 200 or not isinstance(kernels, list) \
                or not all(isinstance(k, dict) for k in kernels):
            return Probe(False, error=f"kernels {status}")
        for k in kernels:
            busy = busy or k.get("execution_state") in ("busy", "starting")
            kl = _parse(k.get("last_activity"))
            if kl and (last is None or kl > last):
                last = kl
    return Probe(True, last, busy)


def activity_of(p: Probe, row: Any, proxy_seen: datetime | None) -> datetime:
    """The runtime's latest activity: Jupyter's, the proxy's, or its last status change."""
    return max(t for t in (p.last_activity, row.last_activity_at, row.updated_at, proxy_seen)
               if t is not None)


def pause_due(p: Probe, activity: datetime, minutes: float, max_busy_hours: float) -> datetime:
    """When autopause pauses it if nothing more happens (a busy kernel: its cap)."""
    return activity + (timedelta(hours=max_busy_hours) if p.busy else timedelta(minutes=minutes))


class Autopause:
    def __init__(self, ctx: Context, leadership: Leadership | None = None) -> None:
        self.ctx = ctx
        self.clock = ctx.clock
        # aiohttp, not httpx, for the probes: thousands of concurrent requests are its
        # job (measured here: ~10,000 requests/s where httpx's pool managed ~300).
        self.http: aiohttp.ClientSession | None = None
        self.unreachable_since: dict[str, datetime] = {}
        self.leadership = leadership or Leadership(ctx.engine)
        self.scheduler: AsyncIOScheduler | None = None

    def start(self) -> None:
        self.scheduler = AsyncIOScheduler()
        self.scheduler.add_job(self.sweep_if_leader, "interval",
                               seconds=self.ctx.settings.autopause_interval_seconds,
                               max_instances=1, coalesce=True, next_run_time=utcnow())
        self.scheduler.start()

    async def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.http is not None:
            await self.http.close()
        await asyncio.to_thread(self.leadership.release)

    async def sweep_if_leader(self) -> None:
        if not await asyncio.to_thread(self.leadership.held):
            SKIPPED.inc()
            LEADER.set(0)
            return
        LEADER.set(1)
        try:
            await self.sweep()
        except Exception:
            log.exception("autopause sweep failed")

    def _candidates(self) -> list[Any]:
        with self.ctx.engine.connect() as conn:
            return list(conn.execute(
                select(col(Runtime.id), col(Runtime.endpoint), col(Runtime.autopause_minutes),
                       col(Runtime.last_activity_at), col(Runtime.updated_at))
                .where(col(Runtime.status) == "running", col(Runtime.autopause_minutes) > 0)).all())

    async def sweep(self) -> dict[str, str]:
        """One pass; returns what it decided for each runtime it paused."""
        started = time.perf_counter()
        SWEEPS.inc()
        rows = await asyncio.to_thread(self._candidates)
        s = self.ctx.settings
        if self.http is None:
            self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                limit=s.autopause_concurrency, ttl_dns_cache=300))
        get = routed_get(aiohttp_get(self.http), httpx_get(self.ctx.http))
        sem = asyncio.Semaphore(s.autopause_concurrency)
        timeout = s.autopause_probe_timeout_seconds

        async def one(row: Any) -> tuple[Any, Probe]:
            async with sem:
                try:
                    return row, await asyncio.wait_for(
                        probe(get, row.endpoint, self.ctx.signer.jupyter_token(row.id)), timeout)
                except (aiohttp.ClientError, httpx.HTTPError, TimeoutError, ValueError) as exc:
                    return row, Probe(False, error=exc.__class__.__name__)
        results = await asyncio.gather(*(one(r) for r in rows if r.endpoint))
        probed = time.perf_counter()
        now = self.clock.now()
        decisions: dict[str, str] = {}
        seen: dict[str, datetime] = {}
        for row, p in results:
            CHECKED.inc()
            threshold = timedelta(minutes=row.autopause_minutes)
            activity = activity_of(p, row, self.ctx.last_access.get(row.id))
            if not p.ok:
                ERRORS.inc()
                since = self.unreachable_since.setdefault(row.id, now)
                if now - since >= threshold and now - activity >= threshold:
                    decisions[row.id] = f"autopause: unreachable {_minutes(now - since)}"
                continue
            self.unreachable_since.pop(row.id, None)
            if row.last_activity_at is None or activity > row.last_activity_at:
                seen[row.id] = activity
            idle = now - activity
            if now >= pause_due(p, activity, row.autopause_minutes,
                                self.ctx.settings.autopause_max_busy_hours):
                decisions[row.id] = f"autopause: busy for {_hours(idle)}" if p.busy \
                    else f"autopause: idle {_minutes(idle)}"
        await asyncio.to_thread(self._record, seen, decisions)
        done = time.perf_counter()
        DURATION.observe(done - started)
        log.info("sweep done", extra={"runtimes": len(rows), "paused": len(decisions),
                                      "probe_s": round(probed - started, 3),
                                      "record_s": round(done - probed, 3)})
        return decisions

    def _record(self, seen: dict[str, datetime], decisions: dict[str, str]) -> None:
        """Activity stamps in one executemany and all pauses through the state machine's
        bulk form, in one transaction."""
        rt = Runtime.__table__
        with self.ctx.tx() as s:
            conn = s.connection()
            if seen:
                conn.execute(update(rt).where(rt.c.id == bindparam("rid"))
                             .values(last_activity_at=bindparam("at")),
                             [{"rid": rid, "at": at} for rid, at in seen.items()])
            if not decisions:
                return
            moved = start_many(s, "pause", decisions, self.ctx.backend.deadline("stop"))
        for rid in moved:
            PAUSED.labels(decisions[rid].split(":")[1].split()[0]).inc()
            self.unreachable_since.pop(rid, None)
            log.info("autopausing", extra={"runtime": rid, "reason": decisions[rid]})
        self.ctx.wake_worker()


def _minutes(delta: timedelta) -> str:
    m = delta.total_seconds() / 60
    return f"{m:.0f} min" if m >= 1 else f"{m:.1f} min"


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.0f} h"
