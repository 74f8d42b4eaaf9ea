"""Cost reports: every user, workspace, machine type or label (admins), or your own."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from datetime import date, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from envmgr.api.deps import current_user, get_ctx
from envmgr.auth.access import require_admin
from envmgr.context import Context
from envmgr.core.errors import invalid
from envmgr.core.models import User
from envmgr.costs.accrual import accrue_all
from envmgr.costs.money import from_usd, usd_text
from envmgr.costs.report import GRANULARITIES, GROUPINGS, report

router = APIRouter(tags=["costs"])
LABEL = re.compile(r"label:[a-z][a-z0-9_-]{0,62}")
MAX_DAYS = 3 * 366
# Reports cover these years: dates outside would overflow date arithmetic, and no cost
# exists there anyway.
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2199, 12, 31)


def _day(name: str, value: str | None, default: date) -> date:
    if value is None:
        return default
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise invalid(name, f"must be a date like 2026-11-25, got {value!r}") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise invalid(name, f"must be from {FIRST_DAY} to {LAST_DAY}, got {value}")
    return day


def _params(start: str | None, end: str | None, group_by: str, granularity: str,
            today: date) -> tuple[date, date]:
    end_d = _day("end", end, today)
    start_d = _day("start", start, end_d - timedelta(days=29))
    if start_d > end_d:
        raise invalid("start", f"must not be after end ({start_d} > {end_d})")
    if (end_d - start_d).days > MAX_DAYS:
        raise invalid("end", f"a report covers at most {MAX_DAYS} days")
    if group_by not in GROUPINGS[:3] and not LABEL.fullmatch(group_by):
        raise invalid("group_by", f"must be one of {', '.join(GROUPINGS)}, got {group_by!r}")
    if granularity not in GRANULARITIES:
        raise invalid("granularity", f"must be one of {', '.join(GRANULARITIES)}")
    return start_d, end_d


async def _answer(request: Request, ctx: Context, start: str | None, end: str | None,
                  group_by: str, granularity: str, owner_id: str | None) -> Response:
    now = ctx.clock.now()
    start_d, end_d = _params(start, end, group_by, granularity, now.date())

    def build() -> dict[str, Any]:
        accrue_all(ctx.engine, ctx.catalog, now)
        return report(ctx.engine, ctx.catalog, start_d, end_d, group_by, granularity, now,
                      owner_id)
    body = await asyncio.to_thread(build)
    if "text/csv" in request.headers.get("accept", ""):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["group", "period", "amount_usd"])
        for g in body["groups"]:
            for point in g["series"]:
                w.writerow([g["key"], point["period"], usd_text(from_usd(point["amount"]))])
        return Response(buf.getvalue(), media_type="text/csv")
    return JSONResponse(body)


@router.get("/admin/costs")
async def admin_costs(request: Request, start: str | None = None, end: str | None = None,
                      group_by: str = Query("user"), granularity: str = Query("day"),
                      user: User = Depends(current_user),
                      ctx: Context = Depends(get_ctx)) -> Response:
    require_admin(user)
    return await _answer(request, ctx, start, end, group_by, granularity, None)


@router.get("/me/costs")
async def my_costs(request: Request, start: str | None = None, end: str | None = None,
                   group_by: str = Query("workspace"), granularity: str = Query("day"),
                   user: User = Depends(current_user),
                   ctx: Context = Depends(get_ctx)) -> Response:
    return await _answer(request, ctx, start, end, group_by, granularity, user.id)
