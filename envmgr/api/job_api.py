"""The job API: what a job's compute (an ephemeral VM) may ask of the control plane, and
nothing more: its inputs, its progress and log lines, its outputs and its result.

It holds one credential, `Authorization: Bearer <job token>`, derived for that job alone and
good only while the job holds compute (starting, running, canceling): a finished job's
token opens nothing. Nothing it sends names a bucket, a workspace or another job. Compute
that runs in the control plane's own machine (the local backend) writes a folder instead."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import update
from sqlmodel import col

from envmgr.api.deps import bearer, get_ctx, read_limited
from envmgr.context import Context
from envmgr.core.db import read_session
from envmgr.core.errors import APIError
from envmgr.core.models import Job, Workspace
from envmgr.jobs import service
from envmgr.jobs.machine import ACTIVE

router = APIRouter(prefix="/job-api/v1", tags=["job api"], include_in_schema=False)
KINDS = {"output.ipynb": ("ipynb", "application/x-ipynb+json"),
         "output.html": ("html", "text/html"), "log.txt": ("log", "text/plain")}
REPORT_MAX_BYTES = 4 * 1024 * 1024


async def bound_job(request: Request, ctx: Context = Depends(get_ctx)) -> Job:
    token = bearer(request.headers)
    job_id = ctx.signer.check_job_token(token) if token else None
    if job_id is None:
        raise APIError(401, "unauthorized", "send this job's token as 'Authorization: Bearer'")

    def load() -> Job | None:
        with read_session(ctx.engine) as s:
            return s.get(Job, job_id)
    job = await asyncio.to_thread(load)
    if job is None or job.status not in ACTIVE:
        raise APIError(409, "job_ended", f"job {job_id} is not running any more "
                       f"({job.status if job else 'gone'}); stop", {"status": getattr(
                           job, "status", None)})
    return job


@router.get("/inputs/{name}")
def job_input(name: Literal["input.ipynb", "job.json"], job: Job = Depends(bound_job),
              ctx: Context = Depends(get_ctx)) -> Response:
    return Response(service.job_inputs(ctx, job)[name], media_type="application/json")


@router.post("/report")
async def job_report(request: Request, job: Job = Depends(bound_job),
                     ctx: Context = Depends(get_ctx)) -> dict[str, Any]:
    """{"events": [runner events], "result"?: the runner's result}: folded like the local
    runner's folder. Answers the job's status, so the compute learns of a cancel."""
    raw = await read_limited(request, REPORT_MAX_BYTES, "a report")
    try:
        body = json.loads(raw)
        events = [e for e in body.get("events", []) if isinstance(e, dict)]
        result = body.get("result")
    except (ValueError, AttributeError, TypeError):
        raise APIError(422, "validation_error", "expected {\"events\": [...], \"result\"?: "
                       "{...}}") from None
    await asyncio.to_thread(service.fold_events, ctx, job, events)
    if isinstance(result, dict):
        def keep() -> None:
            with ctx.tx() as s:
                s.execute(update(Job).where(col(Job.id) == job.id)
                          .values(handle={**job.handle, "result": result}))
        await asyncio.to_thread(keep)
        ctx.wake_jobs()
    return {"status": job.status}


@router.put("/outputs/{name}")
async def job_output(name: Literal["output.ipynb", "output.html", "log.txt"], request: Request,
                     job: Job = Depends(bound_job), ctx: Context = Depends(get_ctx)) -> Any:
    data = await read_limited(request, ctx.settings.job_output_max_bytes, name)
    kind, content_type = KINDS[name]

    def store() -> None:
        with read_session(ctx.engine) as s:
            ws = s.get(Workspace, job.workspace_id)
        assert ws is not None
        path = service.prefix(job.id) + name
        ctx.storage.write(ws.bucket, path, data, content_type=content_type)
        with ctx.tx() as s:
            fresh = s.get(Job, job.id)
            if fresh is not None:
                s.execute(update(Job).where(col(Job.id) == job.id)
                          .values(outputs={**fresh.outputs, kind: path}))
    await asyncio.to_thread(store)
    return {"stored": name}
