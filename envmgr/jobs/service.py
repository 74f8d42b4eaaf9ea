"""The job service layer: what the routers call. Blocking (database, bucket): routers run it
in a thread."""

from __future__ import annotations

import json
import keyword
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from envmgr.auth.access import authorize, owned_for, visible_filter, workspace_for
from envmgr.context import Context
from envmgr.core import nesting
from envmgr.core.clock import iso
from envmgr.core.db import read_session, rowcount
from envmgr.core.errors import APIError, invalid, not_found
from envmgr.core.ids import new_id
from envmgr.core.models import Job, JobDelivery, JobLogLine, User, UserLimits, Workspace
from envmgr.core.statuses import JobStatus
from envmgr.costs.money import micros, per_hour_for, usd
from envmgr.jobs.limits import Limits, limits_for, month_window, used_seconds
from envmgr.jobs.machine import ACTIVE, CANCELABLE, STABLE, move_job, not_cancelable
from envmgr.jobs.webhooks import BadWebhook, check_url
from envmgr.notebooks.rules import NOTEBOOKS, BadPath, clean_path
from envmgr.notebooks.storage.base import NotFound
from envmgr.runtimes.machine import record_event

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
PARAMETERS_MAX_BYTES = 64 * 1024
_KERNELS: dict[str, str] | None = None


def prefix(job_id: str) -> str:
    """Where a job's files live in its workspace's bucket."""
    return f"jobs/{job_id}/"


def kernels() -> dict[str, str]:
    """Kernel name -> language, of the kernels job compute has (this installation's)."""
    global _KERNELS
    if _KERNELS is None:
        specs = KernelSpecManager().get_all_specs()
        _KERNELS = {name: str(s.get("spec", {}).get("language", "python"))
                    for name, s in specs.items()}
    return _KERNELS


@dataclass(frozen=True)
class JobRequest:
    notebook: str | None = None
    ipynb: dict[str, Any] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    machine_type: str | None = None
    time_limit_seconds: int | None = None
    network: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    webhook_url: str | None = None
    webhook_secret: str | None = None
    idempotency_key: str | None = None
    schedule_id: str | None = None
    scheduled_for: datetime | None = None
    waits_for: str | None = None  # a job that must end first (a schedule's overlap: queue)
    reason: str = "submitted"
    kernel: str | None = None  # a kernelspec name; None: the notebook's own


def check_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """papermill injects each parameter as `name = <literal>`: names must be identifiers
    (never code), values JSON (finite numbers), all of it small."""
    for name in params:
        if not IDENTIFIER.fullmatch(name) or keyword.iskeyword(name):
            raise invalid("parameters", f"{name!r} is not a valid parameter name (a Python "
                          "identifier: letters, digits and _, not starting with a digit, and not a "
                          "keyword such as 'import' or 'lambda')")

    def finite(v: Any, depth: int = 0) -> bool:
        if depth > 20:
            return False
        if isinstance(v, float):
            return math.isfinite(v)
        if isinstance(v, dict):
            return all(isinstance(k, str) and finite(x, depth + 1) for k, x in v.items())
        if isinstance(v, list):
            return all(finite(x, depth + 1) for x in v)
        return v is None or isinstance(v, str | int | bool)
    if not all(finite(v) for v in params.values()):
        raise invalid("parameters", "values must be JSON (strings, finite numbers, booleans, "
                      "null, lists and objects, nested at most 20 deep)")
    if len(json.dumps(params)) > PARAMETERS_MAX_BYTES:
        raise invalid("parameters", f"may be at most {PARAMETERS_MAX_BYTES} bytes as JSON")
    return params


def _parse_notebook(raw: bytes | dict[str, Any], field_name: str) -> Any:
    """A notebook from untrusted input: any failure to read it is the caller's 422."""
    try:
        doc = nesting.loads(raw, field_name) if isinstance(raw, bytes) else \
            nesting.check(raw, field_name)
    except ValueError as exc:
        raise invalid(field_name, f"is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("nbformat") != 4 or \
            not isinstance(doc.get("cells"), list):
        raise invalid(field_name, "is not a valid Jupyter notebook: expected a JSON object "
                      "with \"nbformat\": 4, \"nbformat_minor\", \"metadata\" and "
                      "\"cells\"")
    try:
        nb = nbformat.reads(json.dumps(doc), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # nbformat raises jsonschema's and its own errors alike
        raise invalid(field_name, "is not a valid Jupyter notebook (nbformat 4): "
                      f"{str(exc).splitlines()[0][:300]}") from None
    return nb


def check_kernel(name: str) -> str:
    """A kernelspec job compute has (papermill's -k), else a 422 listing those it has."""
    found = kernels()
    if name not in found:
        raise invalid("kernel", f"{name!r} is not a kernel of job compute; available: "
                      f"{', '.join(sorted(found))}")
    return name


def _kernel_of(nb: Any, asked: str | None) -> tuple[str, str]:
    """The kernel asked for, else the one the notebook names (else python3)."""
    found = kernels()
    if asked is not None:
        return check_kernel(asked), found[asked]
    spec = nb.metadata.get("kernelspec") or {}
    name = str(spec.get("name") or "python3")
    if name not in found:
        raise invalid("notebook", f"asks for kernel {name!r}, which job compute does not "
                      f"have; available: {', '.join(sorted(found))}; choose one with "
                      "\"kernel\"")
    return name, found[name]


def submit(ctx: Context, user: User, ws_name: str, req: JobRequest) -> tuple[str, bool]:
    """A new queued job (its notebook copied to jobs/<id>/input.ipynb), or the job this
    user's idempotency key already made: (id, created)."""
    s = ctx.settings
    with read_session(ctx.engine) as session:
        ws = workspace_for(session, user, ws_name, "writer")[0]
        if req.idempotency_key is not None:
            existing = by_key(session, user.id, req.idempotency_key)
            if existing is not None:
                return existing, False
        limits = limits_for(session, user.id, s)
        _check_budget(session, user, limits, ctx.clock.now())
    time_limit = req.time_limit_seconds or min(s.job_default_time_limit_seconds,
                                               limits.job_max_time_limit_seconds)
    if time_limit > limits.job_max_time_limit_seconds:
        raise invalid("time_limit_seconds", f"may be at most "
                      f"{limits.job_max_time_limit_seconds} s for you")
    if req.webhook_url is not None:
        try:
            check_url(req.webhook_url, s.webhook_allow_private)
        except BadWebhook as exc:
            raise invalid("webhook.url", str(exc)) from None
    check_parameters(req.parameters)
    if req.notebook is not None:
        try:
            path = clean_path(req.notebook, True)
        except BadPath as exc:
            raise invalid("notebook", str(exc)) from None
        try:
            raw, _ = ctx.storage.read(ws.bucket, NOTEBOOKS + path)
        except NotFound:
            raise not_found("notebook", path) from None
        if len(raw) > s.notebook_max_bytes:
            raise APIError(413, "too_large", f"notebook may be at most {s.notebook_max_bytes} "
                           "bytes", {"limit": s.notebook_max_bytes})
        nb = _parse_notebook(raw, "notebook")
    else:
        assert req.ipynb is not None
        nb = _parse_notebook(req.ipynb, "ipynb")
    kernel, language = _kernel_of(nb, req.kernel)
    job_id = new_id("job")
    ctx.storage.write(ws.bucket, prefix(job_id) + "input.ipynb", nbformat.writes(nb).encode(),
                      content_type="application/x-ipynb+json")
    job = Job(id=job_id, workspace_id=ws.id, owner_id=user.id, notebook=req.notebook,
              parameters=req.parameters, kernel_name=kernel, language=language,
              status=JobStatus.queued, status_reason=req.reason, waits_for=req.waits_for,
              machine_type=req.machine_type or ctx.catalog.default_machine_type,
              time_limit_seconds=time_limit, network=req.network, labels=req.labels,
              webhook_url=req.webhook_url, webhook_secret=req.webhook_secret,
              idempotency_key=req.idempotency_key, schedule_id=req.schedule_id,
              scheduled_for=req.scheduled_for, progress={"cells_total": None, "cells_done": 0,
                                                         "current_cell": None})
    try:
        with ctx.tx() as session:
            job.created_at = job.updated_at = ctx.clock.now()
            session.add(job)
            session.flush()
            record_event(session, "job", job_id, None, JobStatus.queued, req.reason,
                         machine_type=job.machine_type)
    except IntegrityError:
        ctx.storage.delete(ws.bucket, prefix(job_id) + "input.ipynb")
        with read_session(ctx.engine) as session:
            existing = by_key(session, user.id, req.idempotency_key or "")
        if existing is None:
            raise
        return existing, False
    return job_id, True


def by_key(session: Session, user_id: str, key: str) -> str | None:
    """The job this user's idempotency key made, if any."""
    return session.exec(select(col(Job.id)).where(col(Job.owner_id) == user_id,
                                                  col(Job.idempotency_key) == key)).first()


def _check_budget(session: Session, user: User, limits: Limits, now: datetime) -> None:
    used = used_seconds(session, user.id, now) / 60
    if used >= limits.job_minutes_per_month:
        _, resets = month_window(now)
        raise APIError(429, "budget_exceeded",
                       f"your jobs have used {used:.1f} of your {limits.job_minutes_per_month:g} "
                       f"minutes this month; the budget resets at {iso(resets)}",
                       {"used": round(used, 3), "limit": limits.job_minutes_per_month,
                        "resets_at": iso(resets)})


# -- reading ------------------------------------------------------------------------------
def visible_job(session: Session, user: User, job_id: str) -> tuple[Job, str | None]:
    if len(job_id) > 100:
        raise not_found("job", job_id[:100])
    return owned_for(session, user, Job, job_id)


def job_out(ctx: Context, job: Job, workspace: str, owner: str) -> dict[str, Any]:
    """A job as the contract spells it."""
    now = ctx.clock.now()
    span = (job.finished_at or now) - job.started_at if job.started_at else timedelta()
    cost = usd(micros(per_hour_for(ctx.catalog.machine_micros_per_hour(job.machine_type),
                                   max(span // timedelta(microseconds=1), 0))))
    outputs = {k: None for k in ("ipynb", "html", "log")}
    if not job.outputs_deleted:
        outputs.update(job.outputs)
    return {
        "id": job.id, "workspace": workspace, "owner": owner, "notebook": job.notebook,
        "parameters": job.parameters, "status": job.status, "status_reason": job.status_reason,
        "machine_type": job.machine_type, "kernel": job.kernel_name,
        "time_limit_seconds": job.time_limit_seconds,
        "network": job.network, "labels": job.labels, "created_at": iso(job.created_at),
        "started_at": iso(job.started_at), "finished_at": iso(job.finished_at),
        "progress": {"cells_total": job.progress.get("cells_total"),
                     "cells_done": job.progress.get("cells_done", 0),
                     "current_cell": job.progress.get("current_cell")},
        "outputs": outputs, "error": job.error, "schedule_id": job.schedule_id,
        "scheduled_for": iso(job.scheduled_for), "cost": cost,
        "expires_at": iso(job.expires_at), "attempts": job.attempts,
        "webhook": {"url": job.webhook_url, "state": job.webhook_state,
                    "attempts": job.webhook_attempts} if job.webhook_url else None,
    }


def _names(session: Session, job: Job) -> tuple[str, str]:
    ws = session.get(Workspace, job.workspace_id)
    owner = session.get(User, job.owner_id)
    return (ws.name if ws else job.workspace_id, owner.email if owner else job.owner_id)


def get_job(ctx: Context, user: User, job_id: str) -> dict[str, Any]:
    with read_session(ctx.engine) as session:
        job, _ = visible_job(session, user, job_id)
        return job_out(ctx, job, *_names(session, job))


def list_jobs(ctx: Context, user: User, limit: int, after: str | None,
              workspace: str | None, status: str | None, schedule: str | None
              ) -> tuple[list[dict[str, Any]], bool]:
    q = (select(Job, Workspace.name, User.email)
         .join(Workspace, col(Workspace.id) == col(Job.workspace_id))
         .join(User, col(User.id) == col(Job.owner_id))
         .where(visible_filter(user)(Job)))
    if workspace:
        q = q.where(col(Workspace.name) == workspace)
    if status:
        q = q.where(col(Job.status) == status)
    if schedule:
        q = q.where(col(Job.schedule_id) == schedule)
    if after:
        q = q.where(col(Job.id) < after)
    with read_session(ctx.engine) as session:
        rows = session.exec(q.order_by(col(Job.id).desc()).limit(limit + 1)).all()
    return [job_out(ctx, j, w, o) for j, w, o in rows[:limit]], len(rows) > limit


def cancel(ctx: Context, user: User, job_id: str) -> dict[str, Any]:
    """queued: canceled at once; starting or running: canceling, and the supervisor kills
    it; canceling: a no-op repeat; finished: 409."""
    with ctx.tx() as session:
        job, role = visible_job(session, user, job_id)
        authorize(user, job, role, "cancel")
        stop(ctx, session, job, f"canceled by {user.email}")
        out = job_out(ctx, job, *_names(session, job))
    ctx.wake_jobs()
    return out


def stop(ctx: Context, session: Session, job: Job, why: str) -> None:
    """Cancel `job` in the caller's transaction (a user's cancel, or a schedule's
    cancel_previous); 409 if it has ended."""
    if job.status == JobStatus.queued:
        move_job(session, job, JobStatus.canceled, why, finished_at=ctx.clock.now(),
                 error={"kind": "canceled", "message": why, "cell": None, "ename": None,
                        "evalue": None}, **finish_values(ctx, job))
    elif job.status in CANCELABLE:
        move_job(session, job, JobStatus.canceling, why)
    elif job.status != JobStatus.canceling:
        raise not_cancelable(job)


def finish_values(ctx: Context, job: Job) -> dict[str, Any]:
    """What every end of a job writes beside its status: when its outputs expire, and its
    webhook's first attempt."""
    now = ctx.clock.now()
    values: dict[str, Any] = {
        "expires_at": now + timedelta(days=ctx.settings.job_retention_days)}
    if job.webhook_url:
        values.update(webhook_state="pending", webhook_next_at=now)
    return values


OUTPUT_FILES = {"ipynb": "output.ipynb", "html": "output.html", "log": "log.txt"}


def output(ctx: Context, user: User, job_id: str, fmt: str) -> bytes:
    with read_session(ctx.engine) as session:
        job, _ = visible_job(session, user, job_id)
        ws = session.get(Workspace, job.workspace_id)
    if job.outputs_deleted or (job.expires_at is not None and ctx.clock.now() >= job.expires_at):
        raise APIError(410, "expired", f"job {job_id}'s outputs were removed after the "
                       f"retention period ({ctx.settings.job_retention_days:g} days, at "
                       f"{iso(job.expires_at)})", {"expired_at": iso(job.expires_at)})
    name = job.outputs.get(fmt)
    if not name or ws is None:
        raise APIError(404, "not_found", f"job {job_id} has no {fmt} output yet (status "
                       f"{job.status})")
    try:
        data, _ = ctx.storage.read(ws.bucket, name)
    except NotFound:
        raise APIError(404, "not_found", f"job {job_id}'s {fmt} output is gone") from None
    return data


def deliveries(ctx: Context, user: User, job_id: str) -> list[dict[str, Any]]:
    with read_session(ctx.engine) as session:
        visible_job(session, user, job_id)
        rows = session.exec(select(JobDelivery).where(col(JobDelivery.job_id) == job_id)
                            .order_by(col(JobDelivery.id))).all()
    return [{"id": d.delivery_id, "at": iso(d.at), "status_code": d.status_code,
             "error": d.error} for d in rows]


def is_stable(status: str) -> bool:
    return status in STABLE


# -- limits and usage ---------------------------------------------------------------------
def usage(ctx: Context, user: User) -> dict[str, Any]:
    now = ctx.clock.now()
    with read_session(ctx.engine) as session:
        limits = limits_for(session, user.id, ctx.settings)
        used = used_seconds(session, user.id, now) / 60
        running = session.exec(select(col(Job.id)).where(
            col(Job.owner_id) == user.id, col(Job.status).in_(list(ACTIVE)))).all()
        queued = session.exec(select(col(Job.id)).where(
            col(Job.owner_id) == user.id, col(Job.status) == JobStatus.queued)).all()
    _, resets = month_window(now)
    return {"period_start": iso(month_window(now)[0]), "resets_at": iso(resets),
            "used_minutes": round(used, 3), "limit_minutes": limits.job_minutes_per_month,
            "remaining_minutes": round(max(0.0, limits.job_minutes_per_month - used), 3),
            "running": len(running), "queued": len(queued),
            "limits": limits_out(limits)}


def limits_out(limits: Limits) -> dict[str, Any]:
    return {"job_concurrency": limits.job_concurrency,
            "job_minutes_per_month": limits.job_minutes_per_month,
            "job_max_time_limit_seconds": limits.job_max_time_limit_seconds}


def set_limits(ctx: Context, email: str, values: dict[str, Any]) -> dict[str, Any]:
    with ctx.tx() as session:
        target = session.exec(select(User).where(col(User.email) == email)).first()
        if target is None:
            raise not_found("user", email)
        row = session.get(UserLimits, target.id) or UserLimits(user_id=target.id)
        for key, value in values.items():
            setattr(row, key, value)
        session.add(row)
        session.flush()
        limits = limits_for(session, target.id, ctx.settings)
    ctx.wake_jobs()  # a raised concurrency limit may start queued jobs now
    return limits_out(limits)


def active_or_queued(session: Session) -> list[Job]:
    return list(session.exec(select(Job).where(
        or_(col(Job.status).in_(list(ACTIVE)), col(Job.status) == JobStatus.queued))
        .order_by(col(Job.created_at), col(Job.id))).all())


# -- what a job's compute reports ---------------------------------------------------------
def job_inputs(ctx: Context, job: Job) -> dict[str, bytes]:
    """The files a runner needs: the notebook as submitted and how to run it."""
    with read_session(ctx.engine) as session:
        ws = session.get(Workspace, job.workspace_id)
    assert ws is not None
    nb, _ = ctx.storage.read(ws.bucket, prefix(job.id) + "input.ipynb")
    # What the executed notebook's metadata names: the job's bucket paths, never a folder
    # of the machine that ran it.
    bucket = f"gs://{ws.bucket}" if ctx.settings.storage == "gcs" else f"bucket:{ws.bucket}"
    spec = {"parameters": job.parameters, "kernel_name": job.kernel_name,
            "language": job.language, "paths": {
                "input": f"{bucket}/{NOTEBOOKS}{job.notebook}" if job.notebook
                else f"{bucket}/{prefix(job.id)}input.ipynb",
                "output": f"{bucket}/{prefix(job.id)}output.ipynb"}}
    return {"input.ipynb": nb, "job.json": json.dumps(spec).encode()}


SEQ_MAX = 2**31 - 1  # the columns' integer


def _small(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 10**6 else None


def fold_events(ctx: Context, job: Job, events: list[dict[str, object]]) -> None:
    """Runner events past the last one folded: progress onto the row, log lines into their
    table (up to ENVMGR_JOB_LOG_LINES_MAX; the bucket gets the whole log). A compare-and-set
    on the last folded sequence number, so a replayed file (after a restart) or a repeated
    report never counts a line twice."""
    progress = dict(job.progress)
    seq = job.log_seq
    lines = []
    for ev in events:
        n = ev.get("seq")
        if not isinstance(n, int) or isinstance(n, bool) or n <= seq or n > SEQ_MAX:
            continue  # folded already, or not a runner's (a kernel can write this file)
        seq = n
        kind, index, total = ev.get("kind"), _small(ev.get("index")), _small(ev.get("total"))
        if kind == "cell" and ev.get("state") == "start":
            progress["current_cell"] = index if isinstance(index, int) else None
            if isinstance(total, int):
                progress["cells_total"] = total
        elif kind == "cell" and ev.get("state") == "done":
            progress["cells_done"] = int(progress.get("cells_done") or 0) + 1
        elif kind == "log" and n <= ctx.settings.job_log_lines_max:
            lines.append(JobLogLine(job_id=job.id, seq=n,
                                    stream="stderr" if ev.get("stream") == "stderr" else "stdout",
                                    line=str(ev.get("line", ""))[:10_000], at=ctx.clock.now()))
    if seq == job.log_seq:
        return
    with ctx.tx() as session:
        res = session.execute(update(Job).where(col(Job.id) == job.id,
                                                col(Job.log_seq) == job.log_seq)
                              .values(progress=progress, log_seq=seq))
        if rowcount(res) == 1:
            session.add_all(lines)
    job.progress, job.log_seq = progress, seq
