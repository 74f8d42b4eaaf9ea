"""Schedules: notebook jobs on a cron in a time zone, or after another schedule's job.
Thin: envmgr/jobs/schedules.py does the work."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse

from envmgr.api.deps import Paging, current_user, cursor_after, get_ctx
from envmgr.api.job_schemas import (
    JobOut,
    ScheduleCreate,
    ScheduleOut,
    SchedulePatch,
    SchedulePreview,
    ScheduleRunOut,
)
from envmgr.api.schemas import Page
from envmgr.context import Context
from envmgr.core.models import User
from envmgr.jobs import schedules, service

router = APIRouter(tags=["schedules"])


def fields(body: ScheduleCreate | SchedulePatch) -> dict[str, Any]:
    """The body as schedule columns (only what was given)."""
    given = body.model_dump(exclude_unset=True)
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key == "after":
            out["after_schedule_id"] = value["schedule"] if value else None
            out["after_statuses"] = list(value["on"]) if value else []
        elif key == "webhook":
            out["webhook_url"] = value["url"] if value else None
            out["webhook_secret"] = value["secret"] if value else None
        elif key in ("parameters", "labels") and value is None:
            out[key] = {}
        elif value is not None or key in ("cron", "machine_type", "time_limit_seconds", "kernel"):
            out[key] = value
    return out


@router.post("/workspaces/{ws}/schedules", status_code=201, response_model=ScheduleOut)
def create_schedule(ws: str, body: ScheduleCreate, user: User = Depends(current_user),
                    ctx: Context = Depends(get_ctx)) -> Any:
    values = {"timezone": "UTC", "overlap": "skip", "catch_up": "none", "parameters": {},
              "labels": {}, "network": "default", **fields(body)}
    return schedules.get(ctx, user, schedules.create(ctx, user, ws, values))


@router.get("/schedules/preview", response_model=SchedulePreview)
def preview_schedule(cron: str = Query(..., max_length=200),
                     timezone: str = Query("UTC", max_length=64),
                     start: datetime | None = Query(None, alias="from"),
                     count: int = Query(5, ge=1, le=100),
                     user: User = Depends(current_user),
                     ctx: Context = Depends(get_ctx)) -> Any:
    """The next `count` runs of a cron in a zone, from `from` (default now), before a
    schedule is saved: refused as a create would refuse it."""
    return {"runs": schedules.preview(cron, timezone, start or ctx.clock.now(), count)}


@router.get("/schedules", response_model=Page[ScheduleOut])
def list_schedules(paging: Paging = Depends(),
                   workspace: str | None = Query(None, max_length=63),
                   active: bool | None = None, user: User = Depends(current_user),
                   ctx: Context = Depends(get_ctx)) -> Any:
    items, more = schedules.listing(ctx, user, paging.limit, paging.after, workspace, active)
    return {"items": items, "next_cursor": cursor_after(items[-1]["id"]) if more else None}


@router.get("/schedules/{schedule_id}", response_model=ScheduleOut)
def get_schedule(schedule_id: str, user: User = Depends(current_user),
                 ctx: Context = Depends(get_ctx)) -> Any:
    return schedules.get(ctx, user, schedule_id)


@router.patch("/schedules/{schedule_id}", response_model=ScheduleOut)
def patch_schedule(schedule_id: str, body: SchedulePatch, user: User = Depends(current_user),
                   ctx: Context = Depends(get_ctx)) -> Any:
    """Any field; `{"active": false}` pauses, `true` resumes. Takes effect at the next slot."""
    schedules.patch(ctx, user, schedule_id, fields(body))
    return schedules.get(ctx, user, schedule_id)


@router.delete("/schedules/{schedule_id}", status_code=204)
def delete_schedule(schedule_id: str, user: User = Depends(current_user),
                    ctx: Context = Depends(get_ctx)) -> Response:
    """Its past jobs and their outputs stay."""
    schedules.delete(ctx, user, schedule_id)
    return Response(status_code=204)


@router.post("/schedules/{schedule_id}/run", status_code=202, response_model=JobOut)
def run_schedule(schedule_id: str, user: User = Depends(current_user),
                 ctx: Context = Depends(get_ctx)) -> JSONResponse:
    """A job now, outside the cron."""
    job_id = schedules.run_now(ctx, user, schedule_id)
    return JSONResponse(service.get_job(ctx, user, job_id), status_code=202,
                        headers={"Location": f"/api/v1/jobs/{job_id}"})


@router.get("/schedules/{schedule_id}/runs")
def schedule_runs(schedule_id: str, limit: int = Query(100, ge=1, le=1000),
                  user: User = Depends(current_user),
                  ctx: Context = Depends(get_ctx)) -> dict[str, list[ScheduleRunOut]]:
    """Its slots, newest first: the job each made, or why it was skipped."""
    return {"items": [ScheduleRunOut(**r) for r in schedules.runs(ctx, user, schedule_id,
                                                                   limit)]}
