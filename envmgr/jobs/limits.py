"""Per-user job limits (an admin's row in user_limits, else ENVMGR_JOB_*) and the monthly
run-time budget: the seconds a user's jobs held compute this UTC month."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import or_
from sqlmodel import Session, col, select

from envmgr.core.models import Job, UserLimits
from envmgr.settings import Settings


@dataclass(frozen=True)
class Limits:
    job_concurrency: int
    job_minutes_per_month: float
    job_max_time_limit_seconds: int


def limits_for(session: Session, user_id: str, settings: Settings) -> Limits:
    row = session.get(UserLimits, user_id) or UserLimits(user_id=user_id)
    return Limits(
        settings.job_concurrency if row.job_concurrency is None else row.job_concurrency,
        settings.job_minutes_per_month if row.job_minutes_per_month is None
        else row.job_minutes_per_month,
        settings.job_max_time_limit_seconds if row.job_max_time_limit_seconds is None
        else row.job_max_time_limit_seconds)


def month_window(now: datetime) -> tuple[datetime, datetime]:
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else \
        start.replace(month=start.month + 1)
    return start, nxt


def used_seconds(session: Session, user_id: str, now: datetime) -> float:
    """Run time this month: each job from when its compute was asked for (started_at) to
    its end (or now), clipped to the month."""
    start, _ = month_window(now)
    rows = session.exec(select(col(Job.started_at), col(Job.finished_at)).where(
        col(Job.owner_id) == user_id, col(Job.started_at).is_not(None),
        or_(col(Job.finished_at).is_(None), col(Job.finished_at) >= start))).all()
    total = 0.0
    for began, ended in rows:
        if began is None:
            continue
        lo, hi = max(began, start), min(ended or now, now)
        total += max(0.0, (hi - lo).total_seconds())
    return total
