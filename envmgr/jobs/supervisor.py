"""The job supervisor: the leader's loop that runs notebook jobs.

Every ENVMGR_JOB_POLL_SECONDS (or at once when woken by a submit or a cancel) it
- starts queued jobs, oldest first, while their owner is under the concurrency limit
  (counted here, on the one leader, so replicas cannot both start one more);
- reads what each running job's runner reported (progress, log lines) into the database,
  where any replica's stream serves it from;
- kills jobs past their time limit or their owner's monthly budget, and canceled ones,
  from outside the kernel, through the handle kept in the database (so a restarted or new
  leader can still kill what the previous one started);
- on a job's end, puts its outputs in the bucket under jobs/<id>/, writes its final status
  and removes its compute; an infrastructure failure (the runner died without a result, the
  compute failed) is retried up to ENVMGR_JOB_MAX_ATTEMPTS, a notebook's own failure never;
- delivers due webhooks and removes outputs past their retention period."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter as Tally
from datetime import timedelta
from typing import Any

import httpx
import nbformat
from prometheus_client import Counter, Gauge
from sqlalchemy import update
from sqlmodel import col, select

from envmgr.auth.access import RANK, role_in
from envmgr.backends.base import CURRENT_OPERATION, BackendError, JobSpec
from envmgr.context import Context
from envmgr.core.db import read_session
from envmgr.core.leader import Leadership
from envmgr.core.models import Job, JobDelivery, User, Workspace
from envmgr.core.statuses import JobStatus
from envmgr.jobs import schedules, service, webhooks
from envmgr.jobs.limits import limits_for, used_seconds
from envmgr.jobs.machine import ACTIVE, STABLE, move_job
from envmgr.runtimes.machine import Conflict

log = logging.getLogger("envmgr.jobs")
J = JobStatus
FINISHED = Counter("envmgr_jobs_finished_total", "Jobs that reached a stable status",
                   ["status"])
STARTED = Counter("envmgr_jobs_started_total", "Job starts (retries included)")
QUEUED = Gauge("envmgr_jobs_queued", "Jobs waiting for their owner's concurrency")
RUNNING = Gauge("envmgr_jobs_active", "Jobs holding compute (starting, running, canceling)")
DELIVERIES = Counter("envmgr_job_webhook_attempts_total", "Webhook attempts", ["outcome"])


def _error(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "message": message, "cell": extra.get("cell"),
            "ename": extra.get("ename"), "evalue": extra.get("evalue")}


class JobSupervisor:
    def __init__(self, ctx: Context, leadership: Leadership) -> None:
        self.ctx = ctx
        self.leadership = leadership
        self.offsets: dict[str, int] = {}  # job id -> how far its events were read
        self.launching: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._retention_at = 0.0
        self._pass = asyncio.Lock()  # passes never overlap (a test's forced one included)
        self.http = httpx.AsyncClient(timeout=ctx.settings.webhook_timeout_seconds,
                                      follow_redirects=False, trust_env=False)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="envmgr-jobs")

    def wake(self) -> None:
        """Thread-safe: handlers call it after committing a submit or a cancel."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self.launching.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                if await asyncio.to_thread(self.leadership.held):
                    await self.tick()
            except Exception:
                log.exception("job supervisor pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.ctx.settings.job_poll_seconds)
            self._wake.clear()

    async def tick(self) -> None:
        """One pass (tests call it directly, with a clock they move)."""
        async with self._pass:
            await self._tick()

    async def _tick(self) -> None:
        await self._guard(asyncio.to_thread(schedules.tick, self.ctx))
        jobs = await asyncio.to_thread(self._snapshot)
        active = [j for j in jobs if j.status in ACTIVE]
        queued = [j for j in jobs if j.status == J.queued]
        QUEUED.set(len(queued))
        RUNNING.set(len(active))
        await asyncio.gather(*(self._guard(self._watch(j)) for j in active
                               if j.id not in self.launching))
        await self._dispatch(active, queued)
        await self._webhooks()
        if time.monotonic() >= self._retention_at:
            self._retention_at = time.monotonic() + self.ctx.settings.job_retention_sweep_seconds
            await self._guard(self.expire())
            await self._guard(self.sweep_leftovers())

    async def _guard(self, coro: Any) -> None:
        try:
            await coro
        except Exception:
            log.exception("job step failed")

    def _snapshot(self) -> list[Job]:
        with read_session(self.ctx.engine) as s:
            return service.active_or_queued(s)

    def _fresh(self, job_id: str) -> Job | None:
        with read_session(self.ctx.engine) as s:
            return s.get(Job, job_id)

    def _spec(self, job: Job, files: dict[str, bytes] | None = None) -> JobSpec:
        return JobSpec(id=job.id, workspace=job.workspace_id, owner=job.owner_id,
                       machine_type=job.machine_type, network=job.network,
                       files=files or {}, labels=dict(job.labels),
                       time_limit_seconds=job.time_limit_seconds,
                       token=self.ctx.signer.job_token(job.id))

    def _move(self, job_id: str, to: str, reason: str, **values: Any) -> Job | None:
        """Move a fresh copy of the job; None if it moved meanwhile or may not go there."""
        with contextlib.suppress(Conflict, ValueError), self.ctx.tx() as s:
            job = s.get(Job, job_id)
            if job is None:
                return None
            move_job(s, job, to, reason, **values)
            return job
        return None

    def _set(self, job_id: str, **values: Any) -> None:
        """Bookkeeping beside the status (handle, progress): never the status itself."""
        with self.ctx.tx() as s:
            s.execute(update(Job).where(col(Job.id) == job_id).values(**values))

    # -- starting ---------------------------------------------------------------------
    async def _dispatch(self, active: list[Job], queued: list[Job]) -> None:
        if not queued:
            return
        busy = Tally(j.owner_id for j in active)  # launches are `starting` rows in it
        waiting = {j.id for j in (*active, *queued)}  # a job queued behind one of these waits
        allowed: dict[str, tuple[int, float, float]] = {}
        for job in queued:
            if job.owner_id not in allowed:
                allowed[job.owner_id] = await asyncio.to_thread(self._allowance, job)
            limit, used, budget = allowed[job.owner_id]
            if busy[job.owner_id] >= limit or job.waits_for in waiting:
                continue
            if used >= budget:
                moved = await asyncio.to_thread(
                    self._move, job.id, J.timed_out, "budget",
                    finished_at=self.ctx.clock.now(),
                    error=_error("timeout", "your monthly job run-time budget ran out before "
                                 "this job could start"), **service.finish_values(self.ctx, job))
                if moved is not None:
                    FINISHED.labels(J.timed_out).inc()
                continue
            why = await asyncio.to_thread(self._refusal, job)
            if why:
                if await asyncio.to_thread(self._move, job.id, J.canceled, why,
                                           finished_at=self.ctx.clock.now(),
                                           error=_error("canceled", why),
                                           **service.finish_values(self.ctx, job)):
                    FINISHED.labels(J.canceled).inc()
                continue
            now = self.ctx.clock.now()
            moved = await asyncio.to_thread(self._move, job.id, J.starting,
                                            f"attempt {job.attempts + 1}", started_at=now,
                                            attempts=job.attempts + 1, handle={})
            if moved is None:
                continue
            busy[job.owner_id] += 1
            self.launching[job.id] = asyncio.create_task(self._launch(moved))

    def _allowance(self, job: Job) -> tuple[int, float, float]:
        with read_session(self.ctx.engine) as s:
            limits = limits_for(s, job.owner_id, self.ctx.settings)
            used = used_seconds(s, job.owner_id, self.ctx.clock.now())
        return limits.job_concurrency, used, limits.job_minutes_per_month * 60

    def _refusal(self, job: Job) -> str | None:
        """The owner must still be a writer of the workspace when the job starts (removing
        a member stops their queued jobs)."""
        with read_session(self.ctx.engine) as s:
            user = s.get(User, job.owner_id)
            if user is not None and user.admin:
                return None
            role = role_in(s, user, job.workspace_id) if user else None
        if RANK.get(role or "", 0) < RANK["writer"]:
            return "its owner is no longer a writer of the workspace"
        return None

    async def _launch(self, job: Job) -> None:
        try:
            CURRENT_OPERATION.set(f"{job.id}:{job.attempts}")  # GCE request ids per attempt
            files = await asyncio.to_thread(service.job_inputs, self.ctx, job)
            handle = await self.ctx.backend.start_job(self._spec(job, files))
            STARTED.inc()
            await asyncio.to_thread(self._set, job.id, handle=handle)
            await asyncio.to_thread(self._move, job.id, J.running, "running")
            log.info("job started", extra={"job": job.id, "attempt": job.attempts})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            detail = str(exc) if isinstance(exc, BackendError) else \
                f"{type(exc).__name__}: {exc}"
            log.warning("job start failed", extra={"job": job.id, "error": detail[:300]})
            fresh = await asyncio.to_thread(self._fresh, job.id)
            if fresh is not None:
                await self._end(fresh, None, infrastructure=f"could not start: {detail}")
        finally:
            self.launching.pop(job.id, None)
            self.wake()

    # -- watching ---------------------------------------------------------------------
    async def _watch(self, job: Job) -> None:
        backend = self.ctx.backend
        if job.status == J.starting and not job.handle:
            # The leader died between asking for compute and recording it: start again.
            self.launching[job.id] = asyncio.create_task(self._launch(job))
            return
        spec = self._spec(job)
        if job.status == J.canceling:
            await backend.kill_job(spec, job.handle)
            why = job.status_reason or "canceled"
            await self._end(job, J.canceled, reason=why, error=_error("canceled", why))
            return
        if job.ending:  # decided already (by this leader or one that died): carry it out
            await self._carry_out(job, spec, job.ending)
            return
        try:
            run = await backend.poll_job(spec, job.handle, self.offsets.get(job.id, 0))
        except BackendError as exc:
            await self._end(job, None, infrastructure=str(exc))
            return
        self.offsets[job.id] = run.offset
        if run.events:
            await asyncio.to_thread(service.fold_events, self.ctx, job, run.events)
        if run.result is not None:
            await self._finish(job, run.result)
            return
        if not run.alive:
            await self._end(job, None, infrastructure=run.detail or "the job's compute is gone")
            return
        now = self.ctx.clock.now()
        started = job.started_at or now
        if now - started >= timedelta(seconds=job.time_limit_seconds):
            await self._decide(job, spec, {
                "to": J.timed_out, "reason": "time limit", "error": _error(
                    "timeout", f"ran past its time limit of {job.time_limit_seconds} s and "
                               "was stopped")})
            return
        _, used, budget = await asyncio.to_thread(self._allowance, job)
        if used >= budget:
            await self._decide(job, spec, {
                "to": J.timed_out, "reason": "budget", "error": _error(
                    "timeout", "its owner's monthly job run-time budget ran out, so it was "
                               "stopped")})

    async def _decide(self, job: Job, spec: JobSpec, ending: dict[str, Any]) -> None:
        """Record the decision, then act on it: whoever finds it recorded (this leader, or
        the next if this one dies at any point after) ends the job so, and never takes the
        runner's death (the kill) for an infrastructure failure to retry."""
        await asyncio.to_thread(self._set, job.id, ending=ending)
        await self._carry_out(job, spec, ending)

    async def _carry_out(self, job: Job, spec: JobSpec, ending: dict[str, Any]) -> None:
        await self.ctx.backend.kill_job(spec, job.handle)
        await self._end(job, ending["to"], reason=ending["reason"], error=ending["error"])

    async def _finish(self, job: Job, result: dict[str, Any]) -> None:
        err = result.get("error") if isinstance(result.get("error"), dict) else None
        if result.get("status") == "succeeded":
            await self._end(job, J.succeeded)
        elif err is not None and err.get("kind") == "notebook_error":
            await self._end(job, J.failed, reason="notebook error", error=_error(
                "notebook_error", str(err.get("message", "a cell raised"))[:1000],
                cell=err.get("cell") if isinstance(err.get("cell"), int) else None,
                ename=str(err.get("ename", ""))[:200], evalue=str(err.get("evalue", ""))[:2000]))
        else:
            message = str((err or {}).get("message", "the runner failed"))[:1000]
            await self._end(job, None, infrastructure=message)

    async def _end(self, job: Job, to: str | None, reason: str | None = None,
                   error: dict[str, Any] | None = None, infrastructure: str | None = None
                   ) -> None:
        """Outputs to the bucket, the final status (or, for an infrastructure failure with
        tries left, back to the queue), then the compute goes."""
        backend, spec = self.ctx.backend, self._spec(job)
        CURRENT_OPERATION.set(f"{job.id}:{job.attempts}")
        if infrastructure is not None:
            if job.attempts < self.ctx.settings.job_max_attempts:
                await backend.kill_job(spec, job.handle)
                # what this attempt left (its log above all) stays, to say what went wrong
                await self._upload(job, spec, f"attempts/{job.attempts}/")
                await backend.cleanup_job(spec, job.handle)
                self.offsets.pop(job.id, None)
                await asyncio.to_thread(self._reset_progress, job.id)
                await asyncio.to_thread(
                    self._move, job.id, J.queued,
                    f"retrying after an infrastructure failure: {infrastructure}"[:500],
                    handle={})
                return
            to, reason = J.failed, "infrastructure"
            error = _error("infrastructure", f"the job's compute failed (the notebook did "
                                             f"not): {infrastructure}"[:1000])
        assert to is not None
        await backend.kill_job(spec, job.handle)  # nothing of the job may touch its files now
        uploaded = await self._upload(job, spec)
        fresh = await asyncio.to_thread(self._fresh, job.id)  # outputs the job API stored
        outputs = {**(fresh.outputs if fresh else {}), **uploaded}
        values = {"finished_at": self.ctx.clock.now(), "error": error, "outputs": outputs,
                  **service.finish_values(self.ctx, job)}
        moved = await asyncio.to_thread(self._move, job.id, to, reason or to, **values)
        if moved is None:
            return  # it moved meanwhile (a cancel won): the next pass ends it
        FINISHED.labels(to).inc()
        log.info("job ended", extra={"job": job.id, "status": to, "reason": reason or to})
        await backend.cleanup_job(spec, job.handle)
        self.offsets.pop(job.id, None)
        self.wake()  # its owner may have another job waiting, its webhook is due

    def _reset_progress(self, job_id: str) -> None:
        with self.ctx.tx() as s:
            s.execute(update(Job).where(col(Job.id) == job_id).values(
                progress={"cells_total": None, "cells_done": 0, "current_cell": None}))

    async def _upload(self, job: Job, spec: JobSpec, sub: str = "") -> dict[str, str]:
        if not job.handle:
            return {}
        files = await self.ctx.backend.job_outputs(spec, job.handle,
                                                   self.ctx.settings.job_output_max_bytes)
        if "output.ipynb" in files and "output.html" not in files:
            html = await asyncio.to_thread(_render, files["output.ipynb"])
            if html is not None:
                files["output.html"] = html
        return await asyncio.to_thread(self._store, job, files, sub)

    def _store(self, job: Job, files: dict[str, bytes], sub: str = "") -> dict[str, str]:
        with read_session(self.ctx.engine) as s:
            ws = s.get(Workspace, job.workspace_id)
        assert ws is not None
        kinds = {"output.ipynb": ("ipynb", "application/x-ipynb+json"),
                 "output.html": ("html", "text/html"), "log.txt": ("log", "text/plain")}
        outputs = {}
        for name, data in files.items():
            key, content_type = kinds[name]
            path = service.prefix(job.id) + sub + name
            self.ctx.storage.write(ws.bucket, path, data, content_type=content_type)
            outputs[key] = path
        return outputs

    # -- webhooks and retention -------------------------------------------------------
    async def _webhooks(self) -> None:
        now = self.ctx.clock.now()

        def due() -> list[tuple[Job, str, str]]:
            with read_session(self.ctx.engine) as s:
                rows = s.exec(select(Job).where(col(Job.webhook_state) == "pending",
                                                col(Job.webhook_next_at) <= now)
                              .order_by(col(Job.webhook_next_at)).limit(50)).all()
                return [(j, *service._names(s, j)) for j in rows]
        for job, ws, owner in await asyncio.to_thread(due):
            await self._guard(self.deliver(job, ws, owner))

    async def deliver(self, job: Job, ws: str, owner: str) -> None:
        delivery_id = f"dlv-{job.id.removeprefix('job-')}"
        body = json.dumps({"event": "job.finished",
                           "job": service.job_out(self.ctx, job, ws, owner)}).encode()
        stamp = int(self.ctx.clock.now().timestamp())
        code: int | None = None
        error: str | None = None
        try:
            # Checked and connected to the same address (no second resolution to move it).
            target = await asyncio.to_thread(webhooks.pin, job.webhook_url or "",
                                             self.ctx.settings.webhook_allow_private)
            args = target.request_args()
            r = await self.http.post(target.url, content=body, headers={
                **webhooks.headers(delivery_id, job.webhook_secret or "", stamp, body),
                **args["headers"]}, extensions=args["extensions"])
            code = r.status_code
            if not 200 <= code < 300:
                error = f"answered {code}"
        except webhooks.BadWebhook as exc:
            error = str(exc)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500] or type(exc).__name__
        DELIVERIES.labels("ok" if error is None else "failed").inc()
        attempts = job.webhook_attempts + 1
        now = self.ctx.clock.now()
        if error is None:
            state, next_at = "delivered", None
        elif attempts >= webhooks.MAX_ATTEMPTS:
            state, next_at = "failed", None
        else:
            state, next_at = "pending", now + timedelta(seconds=webhooks.BACKOFF[attempts - 1])

        def record() -> None:
            with self.ctx.tx() as s:
                s.add(JobDelivery(job_id=job.id, delivery_id=delivery_id, at=now,
                                  status_code=code, error=error))
                s.execute(update(Job).where(col(Job.id) == job.id).values(
                    webhook_state=state, webhook_next_at=next_at, webhook_attempts=attempts))
        await asyncio.to_thread(record)

    async def expire(self) -> int:
        """Remove the outputs of jobs past their retention period; their GET is a 410."""
        now = self.ctx.clock.now()

        def run() -> int:
            with read_session(self.ctx.engine) as s:
                rows = s.exec(select(Job, Workspace.bucket)
                              .join(Workspace, col(Workspace.id) == col(Job.workspace_id))
                              .where(col(Job.outputs_deleted).is_(False),
                                     col(Job.expires_at) <= now).limit(500)).all()
            for job, bucket in rows:
                for obj in self.ctx.storage.list(bucket, service.prefix(job.id)):
                    with contextlib.suppress(Exception):
                        self.ctx.storage.delete(bucket, obj.name)
                self._set(job.id, outputs_deleted=True)
            return len(rows)
        return await asyncio.to_thread(run)


    async def sweep_leftovers(self) -> None:
        """Remove job compute that no job holds any more: a leader that died after writing a
        job's end but before removing its compute leaves it behind."""
        present = await self.ctx.backend.job_inventory()
        if not present:
            return

        def holders() -> dict[str, Job]:
            with read_session(self.ctx.engine) as s:
                return {j.id: j for j in s.exec(select(Job).where(col(Job.id).in_(present)))}
        jobs = await asyncio.to_thread(holders)
        for job_id in present:
            job = jobs.get(job_id)
            if job_id in self.launching or (job is not None and job.status not in STABLE
                                            and job.status != J.queued):
                continue
            log.warning("removing leftover job compute", extra={"job": job_id})
            spec = self._spec(job) if job is not None else JobSpec(
                id=job_id, workspace="", owner="", machine_type="", network="default")
            CURRENT_OPERATION.set(f"{job_id}:leftover")
            await self._guard(self.ctx.backend.cleanup_job(spec, job.handle if job else {}))


def _render(ipynb: bytes) -> bytes | None:
    """HTML of a partial notebook (a killed run wrote no HTML of its own)."""
    from nbconvert import HTMLExporter
    try:
        html, _ = HTMLExporter().from_notebook_node(nbformat.reads(ipynb.decode(), as_version=4))
    except Exception:
        return None
    return str(html).encode()

