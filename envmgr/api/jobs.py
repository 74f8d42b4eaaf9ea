"""Notebook jobs: submit, list, read, cancel, outputs, the live stream, webhook attempts,
and per-user limits and usage. Thin: envmgr/jobs/service.py does the work."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from sqlmodel import col, select

from envmgr.api.deps import Paging, current_user, cursor_after, get_ctx, read_limited
from envmgr.api.job_schemas import (
    DeliveryOut,
    JobCreate,
    JobOut,
    LimitsOut,
    LimitsPut,
    UsageOut,
)
from envmgr.api.notebooks import PREVIEW_HEADERS
from envmgr.api.schemas import EventOut, Page, _email
from envmgr.api.views import status_history
from envmgr.auth.access import require_admin
from envmgr.context import Context
from envmgr.core.db import read_session
from envmgr.core.errors import invalid
from envmgr.core.models import Job, JobLogLine, User
from envmgr.core.statuses import JobStatus
from envmgr.jobs import service

router = APIRouter(tags=["jobs"])
STREAM_POLL_SECONDS = 0.25
OUTPUT_TYPES = {"ipynb": "application/x-ipynb+json", "html": "text/html; charset=utf-8",
                "log": "text/plain; charset=utf-8"}


def request_of(body: JobCreate) -> service.JobRequest:
    return service.JobRequest(
        notebook=body.notebook, ipynb=body.ipynb, parameters=body.parameters,
        machine_type=body.machine_type, time_limit_seconds=body.time_limit_seconds,
        network=body.network, labels=body.labels or {},
        webhook_url=body.webhook.url if body.webhook else None,
        webhook_secret=body.webhook.secret if body.webhook else None,
        idempotency_key=body.idempotency_key, kernel=body.kernel)


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its `$defs` put in place, for a request body that FastAPI
    does not parse itself (so it does not register the models' schemas)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    result: dict[str, Any] = walk(schema)
    return result


JOB_BODY = {"required": True, "content": {"application/json": {
    "schema": _inlined(JobCreate.model_json_schema())}}}


@router.post("/workspaces/{ws}/jobs", status_code=202, response_model=JobOut,
             openapi_extra={"requestBody": JOB_BODY},
             responses={200: {"description": "the job this idempotency key already made"}})
async def submit_job(ws: str, request: Request, user: User = Depends(current_user),
                     ctx: Context = Depends(get_ctx)) -> JSONResponse:
    """The body is counted while it streams in (an inline notebook may be large: past
    ENVMGR_NOTEBOOK_MAX_BYTES it is refused before it sits in memory), then validated."""
    raw = await read_limited(request, ctx.settings.notebook_max_bytes + 64 * 1024, "a job")
    try:
        body = JobCreate.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    job_id, created = await asyncio.to_thread(service.submit, ctx, user, ws, request_of(body))
    if created:
        ctx.wake_jobs()
    out = await asyncio.to_thread(service.get_job, ctx, user, job_id)
    return JSONResponse(out, status_code=202 if created else 200,
                        headers={"Location": f"/api/v1/jobs/{job_id}"})


@router.get("/jobs", response_model=Page[JobOut])
def list_jobs(paging: Paging = Depends(), workspace: str | None = Query(None, max_length=63),
              status: JobStatus | None = None,
              schedule: str | None = Query(None, max_length=100),
              user: User = Depends(current_user), ctx: Context = Depends(get_ctx)) -> Any:
    """Newest first."""
    items, more = service.list_jobs(ctx, user, paging.limit, paging.after, workspace,
                                    status, schedule)
    return {"items": items, "next_cursor": cursor_after(items[-1]["id"]) if more else None}


@router.get("/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: str, user: User = Depends(current_user),
                  ctx: Context = Depends(get_ctx)) -> Any:
    return await asyncio.to_thread(service.get_job, ctx, user, job_id)


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobOut)
def cancel_job(job_id: str, user: User = Depends(current_user),
               ctx: Context = Depends(get_ctx)) -> Any:
    return service.cancel(ctx, user, job_id)


@router.get("/jobs/{job_id}/output", response_class=Response,
            responses={200: {"content": {t: {} for t in OUTPUT_TYPES.values()}},
                       410: {"description": "removed after the retention period"}})
def job_output(job_id: str, format: Literal["ipynb", "html", "log"] = "ipynb",
               user: User = Depends(current_user), ctx: Context = Depends(get_ctx)) -> Response:
    """The executed notebook, its HTML or the log. The HTML is the notebook's own content,
    so it is served sandboxed like a preview (no script runs on this origin)."""
    data = service.output(ctx, user, job_id, format)
    return Response(data, media_type=OUTPUT_TYPES[format], headers=PREVIEW_HEADERS)


@router.get("/jobs/{job_id}/deliveries")
def job_deliveries(job_id: str, user: User = Depends(current_user),
                   ctx: Context = Depends(get_ctx)) -> dict[str, list[DeliveryOut]]:
    return {"items": [DeliveryOut(**d) for d in service.deliveries(ctx, user, job_id)]}


def _sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"


@router.get("/jobs/{job_id}/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def job_stream(job_id: str, request: Request, user: User = Depends(current_user),
                     ctx: Context = Depends(get_ctx),
                     last_event_id: str | None = Header(None, max_length=20)) -> Response:
    """Server-sent events: `progress` (cells done of total) whenever it changes, `log` for
    each output line (its id is the line's number: reconnecting with Last-Event-ID resumes
    after it), then one `end` with the final job."""
    await asyncio.to_thread(service.get_job, ctx, user, job_id)  # 404 before streaming
    after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0

    def read(after: int) -> tuple[dict[str, Any], list[JobLogLine]]:
        job = service.get_job(ctx, user, job_id)
        with read_session(ctx.engine) as s:
            lines = list(s.exec(select(JobLogLine).where(
                col(JobLogLine.job_id) == job_id, col(JobLogLine.seq) > after)
                .order_by(col(JobLogLine.seq)).limit(1000)).all())
        return job, lines

    async def events() -> AsyncIterator[str]:
        nonlocal after
        last_progress: Any = None
        while True:
            job, lines = await asyncio.to_thread(read, after)
            for line in lines:
                after = line.seq
                yield _sse("log", {"stream": line.stream, "line": line.line}, line.seq)
            if job["progress"] != last_progress:
                last_progress = job["progress"]
                yield _sse("progress", {"status": job["status"], **job["progress"]})
            if service.is_stable(job["status"]) and len(lines) < 1000:
                yield _sse("end", job)
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(STREAM_POLL_SECONDS)
    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/jobs/{job_id}/events", response_model=Page[EventOut])
def job_events(job_id: str, paging: Paging = Depends(), user: User = Depends(current_user),
               ctx: Context = Depends(get_ctx)) -> Page[EventOut]:
    """The job's status history with reasons (submitted, attempt 1, retrying after ...)."""
    return status_history(ctx, user, Job, job_id, paging)


@router.get("/me/usage", response_model=UsageOut)
def my_usage(user: User = Depends(current_user), ctx: Context = Depends(get_ctx)) -> Any:
    """Job run time used and remaining this month, and your limits."""
    return service.usage(ctx, user)


@router.put("/users/{email}/limits", response_model=LimitsOut)
def put_limits(email: str, body: LimitsPut, user: User = Depends(current_user),
               ctx: Context = Depends(get_ctx)) -> Any:
    """Admins: a user's job limits (a field left out or null takes the service default)."""
    require_admin(user)
    try:
        who = _email(email)
    except ValueError as exc:
        raise invalid("email", str(exc)) from None
    return service.set_limits(ctx, who, body.model_dump())

