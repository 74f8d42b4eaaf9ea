"""Autopause: every ENVMGR_AUTOPAUSE_INTERVAL_SECONDS, pause running runtimes that have been
idle for their `autopause_minutes`, saving their notebooks first (the pause flushes).

Activity is what a person or a kernel did (envmgr.runtimes.activity: cell runs, terminal
input, saves and page input, which the proxy and the runtime's origin record; a busy kernel,
which the sweep asks the runtime about), or the runtime's last status change. A runtime with
a busy kernel stays up, but never longer than ENVMGR_AUTOPAUSE_MAX_BUSY_HOURS past its last
other activity (a silent, wedged kernel must not burn money for days). A runtime that does
not answer is paused only after it failed to answer for its whole threshold.

Probes run concurrently, bounded, each with a short timeout, and never send activity (the
`no_track_activity` flag). Sweeps never overlap, and with several replicas on PostgreSQL
only the holder of an advisory lock sweeps; if it dies, its connection (and lock) goes and
another replica takes over (envmgr/core/leader.py; the job supervisor shares the lock)."""

from __future__ import annotations

import asyncio
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
from sqlalchemy import bindparam, case, or_, select, update
from sqlmodel import col

from envmgr.context import Context
from envmgr.core import sockets
from envmgr.core.clock import utcnow
from envmgr.core.leader import Leadership
from envmgr.core.models import Runtime
from envmgr.runtimes.activity import Kind, Last, Verdict, kind_of, latest, verdict
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
    busy: bool = False
    error: str = ""


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
    """Whether a runtime's kernels are busy. A runtime runs its user's code, so its answers
    are untrusted: anything but the shape Jupyter sends is "no answer" (one runtime must
    never break a sweep over all of them)."""
    status, kernels = await get(f"{endpoint}/api/kernels", {"no_track_activity": "1"},
                                {"Authorization": f"token {secret}"})
    if status != 200 or not isinstance(kernels, list) \
            or not all(isinstance(k, dict) for k in kernels):
        return Probe(False, error=f"kernels {status}")
    return Probe(True, any(k.get("execution_state") in ("busy", "starting") for k in kernels))


@dataclass(frozen=True)
class Assessment:
    last: Last  # the latest activity
    busy_since: datetime | None  # as it is to be recorded
    verdict: Verdict


def assess(p: Probe, row: Any, seen_here: Last | None, now: datetime,
           max_busy_hours: float) -> Assessment:
    """A runtime's latest activity (the database's, this replica's, its last status change,
    a kernel that was busy until now) and when it pauses."""
    last = latest(Last(row.updated_at, Kind.STARTED), seen_here,
                  Last(row.last_activity_at, kind_of(row.last_activity_kind))
                  if row.last_activity_at else None)
    busy_since = (row.busy_since or now) if p.busy else None
    if p.ok and not p.busy and row.busy_since is not None:
        last = latest(last, Last(now, Kind.BUSY))  # it was busy until about now
    elif not p.ok:
        busy_since = row.busy_since  # unknown: as it was
    return Assessment(last, busy_since,
                      verdict(last, busy_since, row.autopause_minutes, max_busy_hours))


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
                       col(Runtime.last_activity_at), col(Runtime.last_activity_kind),
                       col(Runtime.busy_since), col(Runtime.updated_at))
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
        seen: dict[str, dict[str, Any]] = {}
        for row, p in results:
            CHECKED.inc()
            a = assess(p, row, self.ctx.activity.get(row.id), now, s.autopause_max_busy_hours)
            if (a.last.at, a.last.kind.value, a.busy_since) != \
                    (row.last_activity_at, row.last_activity_kind, row.busy_since):
                seen[row.id] = {"at": a.last.at, "kind": a.last.kind.value,
                                "busy": a.busy_since}
            if not p.ok:
                ERRORS.inc()
                threshold = timedelta(minutes=row.autopause_minutes)
                since = self.unreachable_since.setdefault(row.id, now)
                if now - since >= threshold and now - a.last.at >= threshold:
                    decisions[row.id] = f"autopause: unreachable {_minutes(now - since)}"
                continue
            self.unreachable_since.pop(row.id, None)
            if now >= a.verdict.due:
                decisions[row.id] = a.verdict.reason
        await asyncio.to_thread(self._record, seen, decisions)
        done = time.perf_counter()
        DURATION.observe(done - started)
        log.info("sweep done", extra={"runtimes": len(rows), "paused": len(decisions),
                                      "probe_s": round(probed - started, 3),
                                      "record_s": round(done - probed, 3)})
        return decisions

    def _record(self, seen: dict[str, dict[str, Any]], decisions: dict[str, str]) -> None:
        """Activity stamps in one executemany and all pauses through the state machine's
        bulk form, in one transaction."""
        rt = Runtime.__table__
        # never over a newer stamp another replica's proxy wrote meanwhile
        newer = or_(rt.c.last_activity_at.is_(None), rt.c.last_activity_at < bindparam("at"))
        with self.ctx.tx() as s:
            conn = s.connection()
            if seen:
                conn.execute(update(rt).where(rt.c.id == bindparam("rid"))
                             .values(last_activity_at=case((newer, bindparam("at")),
                                                           else_=rt.c.last_activity_at),
                                     last_activity_kind=case((newer, bindparam("kind")),
                                                             else_=rt.c.last_activity_kind),
                                     busy_since=bindparam("busy")),
                             [{"rid": rid, **v} for rid, v in seen.items()])
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


