"""Schedules: job definitions that run on a 5-field cron in an IANA time zone, or when
another schedule's job ends in given statuses (`after`).

Slots are those of Debian's cron in the schedule's zone (envmgr.jobs.cron, by cronsim): on
a spring-forward day a fixed 02:30 that does not exist runs once, right after the jump (at
03:00); on a fall-back day a fixed 01:30 that happens twice runs once, the first time; a
job whose minute or hour field starts with `*` runs in both passes of the repeated hour.

The leader's scheduler claims each slot with a unique (schedule, scheduled_for) row before
its job is made, and makes the job with an idempotency key of that slot: a slot runs at
most once whatever the number of replicas and restarts, and a crash between the claim and
the job is re-driven into that same job. Missed slots (the service down, the schedule
paused) are skipped (`catch_up: none`) or the latest of them runs once (`latest`). A slot
whose previous run is still going is skipped (`overlap: skip`, recorded with the reason),
queued behind it (`queue`) or started after canceling it (`cancel_previous`, said in both
jobs' reasons)."""

from __future__ import annotations

import collections
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from envmgr.auth.access import authorize, owned_for, visible_filter, workspace_for
from envmgr.context import Context
from envmgr.core.clock import iso
from envmgr.core.db import read_session, rowcount
from envmgr.core.errors import APIError, invalid, not_found
from envmgr.core.ids import new_id
from envmgr.core.models import Job, Schedule, ScheduleRun, User, Workspace
from envmgr.jobs import cron, service
from envmgr.jobs.machine import ACTIVE, STABLE
from envmgr.notebooks.rules import BadPath, clean_path

log = logging.getLogger("envmgr.jobs.schedules")
GRACE = timedelta(seconds=90)  # a slot this late still counts as on time, not missed
MAX_SLOTS_SCANNED = 100_000  # when counting what a long outage missed
MISSED_KEPT = 100  # missed slots recorded one by one (the first says how many more)
OVERLAPS = ("skip", "queue", "cancel_previous")
CATCH_UPS = ("none", "latest")
AFTER_STATUSES = tuple(sorted(STABLE))


# -- cron in a time zone ------------------------------------------------------------------
def zone(name: str) -> ZoneInfo:
    try:
        if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
            raise ZoneInfoNotFoundError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise invalid("timezone", f"{name!r} is not an IANA time zone (like Europe/Paris, "
                      "America/New_York or UTC)") from None


def check_cron(expr: str) -> str:
    try:
        return cron.check(expr)
    except cron.CronError as exc:
        raise APIError(422, "validation_error", f"cron: {exc}", {"errors": [
            {"field": "cron", "message": str(exc), "cron_field": exc.field}]}) from None


def next_slot(expr: str, tz: ZoneInfo, after: datetime) -> datetime:
    """The first slot strictly after `after` (UTC), as a UTC time (envmgr.jobs.cron: as
    Debian's cron, in the schedule's zone)."""
    slot = cron.next_after(expr, tz, after)
    if slot is None:  # refused when the schedule was made; here only for old rows
        raise ValueError(f"no slot of {expr!r} after {after}")
    return slot


def preview(expr: str, timezone: str, start: datetime, count: int) -> list[str]:
    """The next `count` slots after `start`, as ISO times with the zone's offset."""
    if start.tzinfo is None:
        raise invalid("from", "give a time with its offset or Z, like 2026-03-29T00:00:00Z")
    tz, expr = zone(timezone), check_cron(expr)
    runs, t = [], start
    for _ in range(count):
        try:
            t = next_slot(expr, tz, t)
        except ValueError:  # none before the end of the calendar (year 9999)
            break
        runs.append(t.astimezone(tz).isoformat(timespec="seconds"))
    return runs


def slots_in(expr: str, tz: ZoneInfo, start: datetime, end: datetime, keep: int
             ) -> tuple[int, list[datetime]]:
    """How many slots lie in [start, end], and the latest `keep` of them, oldest first."""
    recent: collections.deque[datetime] = collections.deque(maxlen=keep)
    count, t = 0, start - timedelta(microseconds=1)
    while count < MAX_SLOTS_SCANNED:
        t = next_slot(expr, tz, t)
        if t > end:
            break
        count += 1
        recent.append(t)
    return count, list(recent)


# -- the service layer --------------------------------------------------------------------
def _validate(session: Session, sched: Schedule, user: User) -> None:
    if sched.cron is None and sched.after_schedule_id is None:
        raise invalid("cron", "give a 'cron' (5 fields) or an 'after' {\"schedule\", \"on\"}")
    if sched.cron is not None and sched.after_schedule_id is not None:
        raise invalid("after", "a schedule runs on a cron or after another one, not both")
    if sched.cron is not None:
        sched.cron = check_cron(sched.cron)
    zone(sched.timezone)
    if sched.kernel is not None:
        service.check_kernel(sched.kernel)
    if sched.overlap not in OVERLAPS:
        raise invalid("overlap", f"must be one of {', '.join(OVERLAPS)}")
    if sched.catch_up not in CATCH_UPS:
        raise invalid("catch_up", f"must be one of {', '.join(CATCH_UPS)}")
    try:
        sched.notebook = clean_path(sched.notebook, True)
    except BadPath as exc:
        raise invalid("notebook", str(exc)) from None
    service.check_parameters(sched.parameters)
    if sched.after_schedule_id is not None:
        bad = [s for s in sched.after_statuses if s not in AFTER_STATUSES]
        if bad or not sched.after_statuses:
            raise invalid("after.on", f"list job statuses to run after, of: "
                          f"{', '.join(AFTER_STATUSES)}")
        seen = {sched.id}
        # Only onto a schedule the caller may see (404 otherwise, as for a job): its runs
        # would otherwise show another user's jobs in this schedule's history.
        up: Schedule | None = visible(session, user, sched.after_schedule_id)[0]
        if up is None or up.workspace_id != sched.workspace_id:
            raise invalid("after.schedule", f"no schedule {sched.after_schedule_id!r} in this "
                          "workspace")
        while up is not None:
            if up.id in seen:
                raise invalid("after", f"this would make a cycle: {up.id} already runs after "
                              "this schedule (directly or through others)")
            seen.add(up.id)
            up = session.get(Schedule, up.after_schedule_id) if up.after_schedule_id else None


def _plan(ctx: Context, sched: Schedule) -> None:
    """The next slot, from now: a new or edited cron takes effect at its next slot."""
    sched.next_run_at = next_slot(sched.cron, zone(sched.timezone), ctx.clock.now()) \
        if sched.cron else None


def create(ctx: Context, user: User, ws_name: str, values: dict[str, Any]) -> str:
    with ctx.tx() as session:
        ws = workspace_for(session, user, ws_name, "writer")[0]
        sched = Schedule(id=new_id("sch"), workspace_id=ws.id, owner_id=user.id, **values)
        _validate(session, sched, user)
        _plan(ctx, sched)
        sched.created_at = sched.updated_at = ctx.clock.now()
        session.add(sched)
    ctx.wake_jobs()
    return sched.id


def visible(session: Session, user: User, schedule_id: str) -> tuple[Schedule, str | None]:
    if len(schedule_id) > 100:
        raise not_found("schedule", schedule_id[:100])
    return owned_for(session, user, Schedule, schedule_id)


def patch(ctx: Context, user: User, schedule_id: str, values: dict[str, Any]) -> None:
    with ctx.tx() as session:
        sched, role = visible(session, user, schedule_id)
        # Pausing is like pausing a runtime (workspace owners may); the rest runs code.
        authorize(user, sched, role, "pause" if set(values) <= {"active"} else "update")
        timing = {"cron", "timezone", "after_schedule_id"} & set(values)
        if values.get("active") is True and not sched.active and sched.catch_up == "none":
            timing.add("active")  # resumed: what was missed while paused is skipped
        for key, value in values.items():
            setattr(sched, key, value)
        if "cron" in values and values["cron"] is not None:
            sched.after_schedule_id, sched.after_statuses = None, []
        if "after_schedule_id" in values and values["after_schedule_id"] is not None:
            sched.cron = None
        _validate(session, sched, user)
        if timing:
            _plan(ctx, sched)
        # With catch_up latest, resuming keeps the slot it was waiting for, so the latest
        # slot missed while paused runs once.
        res = session.execute(update(Schedule).where(col(Schedule.id) == sched.id,
                                                     col(Schedule.version) == sched.version)
                              .values(**{k: getattr(sched, k) for k in (
                                  "name", "notebook", "parameters", "cron", "timezone",
                                  "active", "overlap", "catch_up", "after_schedule_id",
                                  "after_statuses", "machine_type", "kernel", "time_limit_seconds",
                                  "network", "labels", "webhook_url", "webhook_secret",
                                  "next_run_at")},
                                      version=sched.version + 1, updated_at=ctx.clock.now()))
        if rowcount(res) != 1:
            raise APIError(409, "conflict", "the schedule changed meanwhile; read it again")
    ctx.wake_jobs()


def delete(ctx: Context, user: User, schedule_id: str) -> None:
    """The schedule goes; its past jobs and their outputs stay (they keep schedule_id)."""
    with ctx.tx() as session:
        sched, role = visible(session, user, schedule_id)
        authorize(user, sched, role, "delete")
        downstream = session.exec(select(Schedule.id).where(
            col(Schedule.after_schedule_id) == sched.id)).all()
        if downstream:
            raise APIError(409, "in_use", f"schedules {', '.join(downstream)} run after this "
                           "one; delete them or change their 'after' first",
                           {"schedules": list(downstream)})
        session.delete(sched)


def schedule_out(ctx: Context, session: Session, sched: Schedule) -> dict[str, Any]:
    ws = session.get(Workspace, sched.workspace_id)
    owner = session.get(User, sched.owner_id)
    last = session.get(Job, sched.last_job_id) if sched.last_job_id else None
    return {
        "id": sched.id, "workspace": ws.name if ws else sched.workspace_id,
        "owner": owner.email if owner else sched.owner_id, "name": sched.name,
        "notebook": sched.notebook, "parameters": sched.parameters, "cron": sched.cron,
        "timezone": sched.timezone, "active": sched.active, "overlap": sched.overlap,
        "catch_up": sched.catch_up,
        "after": {"schedule": sched.after_schedule_id, "on": sched.after_statuses}
        if sched.after_schedule_id else None,
        "machine_type": sched.machine_type, "kernel": sched.kernel,
        "time_limit_seconds": sched.time_limit_seconds,
        "network": sched.network, "labels": sched.labels,
        "webhook": {"url": sched.webhook_url} if sched.webhook_url else None,
        "next_run_at": iso(sched.next_run_at) if sched.active else None,
        "last_job": {"id": last.id, "status": last.status,
                     "scheduled_for": iso(last.scheduled_for),
                     "finished_at": iso(last.finished_at)} if last else None,
        "created_at": iso(sched.created_at), "updated_at": iso(sched.updated_at),
    }


def get(ctx: Context, user: User, schedule_id: str) -> dict[str, Any]:
    with read_session(ctx.engine) as session:
        sched, _ = visible(session, user, schedule_id)
        return schedule_out(ctx, session, sched)


def listing(ctx: Context, user: User, limit: int, after: str | None, workspace: str | None,
            active: bool | None) -> tuple[list[dict[str, Any]], bool]:
    q = select(Schedule).join(Workspace, col(Workspace.id) == col(Schedule.workspace_id)) \
        .where(visible_filter(user)(Schedule))
    if workspace:
        q = q.where(col(Workspace.name) == workspace)
    if active is not None:
        q = q.where(col(Schedule.active) == active)
    if after:
        q = q.where(col(Schedule.id) > after)
    with read_session(ctx.engine) as session:
        rows = session.exec(q.order_by(col(Schedule.id)).limit(limit + 1)).all()
        return [schedule_out(ctx, session, s) for s in rows[:limit]], len(rows) > limit


def runs(ctx: Context, user: User, schedule_id: str, limit: int) -> list[dict[str, Any]]:
    """Its slots, newest first: which job each made, or why it was skipped."""
    with read_session(ctx.engine) as session:
        visible(session, user, schedule_id)
        rows = session.exec(select(ScheduleRun, Job.status).outerjoin(
            Job, col(Job.id) == col(ScheduleRun.job_id))
            .where(col(ScheduleRun.schedule_id) == schedule_id)
            .order_by(col(ScheduleRun.scheduled_for).desc()).limit(limit)).all()
        shown = _visible_jobs(session, user, {r.trigger_job_id for r, _ in rows
                                              if r.trigger_job_id})
    return [{"scheduled_for": iso(r.scheduled_for), "outcome": r.outcome, "reason": r.reason,
             "job": r.job_id, "job_status": status,
             "trigger_job": r.trigger_job_id if r.trigger_job_id in shown else None}
            for r, status in rows]


def _visible_jobs(session: Session, user: User, job_ids: set[str]) -> set[str]:
    """Of these jobs (the upstream runs that triggered this schedule's), those the caller
    may see: a run's history never names anybody else's job."""
    shown = set()
    for job_id in job_ids:
        with contextlib.suppress(APIError):
            owned_for(session, user, Job, job_id)
            shown.add(job_id)
    return shown


def run_now(ctx: Context, user: User, schedule_id: str) -> str:
    """A job now, outside the cron (no overlap policy: you asked for it), in its history."""
    with read_session(ctx.engine) as session:
        sched, role = visible(session, user, schedule_id)
    authorize(user, sched, role, "update")
    now, why = ctx.clock.now(), f"run now by {user.email}"
    job_id, _ = _submit(ctx, sched, now, why, None, key=f"run-now:{new_id('r')}")
    if _claim(ctx, sched, now, None):
        _record(ctx, sched, now, "started", why, job_id)
    return job_id


# -- the leader's scheduler ---------------------------------------------------------------
def _submit(ctx: Context, sched: Schedule, slot: datetime, reason: str, waits_for: str | None,
            key: str) -> tuple[str, bool]:
    with read_session(ctx.engine) as session:
        owner = session.get(User, sched.owner_id)
        ws = session.get(Workspace, sched.workspace_id)
    if owner is None or ws is None:
        raise APIError(404, "not_found", "the schedule's owner or workspace is gone")
    job_id, created = service.submit(ctx, owner, ws.name, service.JobRequest(
        notebook=sched.notebook, parameters=sched.parameters, machine_type=sched.machine_type,
        time_limit_seconds=sched.time_limit_seconds, network=sched.network,
        labels=sched.labels, webhook_url=sched.webhook_url,
        webhook_secret=sched.webhook_secret, idempotency_key=key, schedule_id=sched.id,
        kernel=sched.kernel,
        scheduled_for=slot, waits_for=waits_for, reason=reason))
    with ctx.tx() as session:
        session.execute(update(Schedule).where(col(Schedule.id) == sched.id)
                        .values(last_job_id=job_id))
    ctx.wake_jobs()
    return job_id, created


def _claim(ctx: Context, sched: Schedule, slot: datetime, trigger: str | None) -> bool:
    """The slot is ours (the unique row went in), or someone has it already."""
    try:
        with ctx.tx() as session:
            session.add(ScheduleRun(schedule_id=sched.id, scheduled_for=slot,
                                    outcome="claimed", reason="", trigger_job_id=trigger,
                                    created_at=ctx.clock.now()))
    except IntegrityError:
        return False
    return True


def _record(ctx: Context, sched: Schedule, slot: datetime, outcome: str, reason: str,
            job_id: str | None = None) -> None:
    with ctx.tx() as session:
        session.execute(update(ScheduleRun).where(
            col(ScheduleRun.schedule_id) == sched.id, col(ScheduleRun.scheduled_for) == slot)
            .values(outcome=outcome, reason=reason[:500], job_id=job_id))
    log.info("schedule slot", extra={"schedule": sched.id, "slot": iso(slot),
                                     "outcome": outcome, "job": job_id})


def _slot_key(sched: Schedule, slot: datetime) -> str:
    return f"schedule:{sched.id}:{iso(slot)}"


def fire(ctx: Context, sched: Schedule, slot: datetime, why: str) -> None:
    """Make the job of a claimed slot, after the overlap policy (idempotent: a re-drive
    after a crash finds the job the slot's key already made)."""
    key = _slot_key(sched, slot)
    with read_session(ctx.engine) as session:
        made = service.by_key(session, sched.owner_id, key)
        prev = None if made else session.exec(
            select(Job).where(col(Job.schedule_id) == sched.id,
                              col(Job.status).in_([*ACTIVE, "queued"]))
            .order_by(col(Job.created_at).desc())).first()
    if made:
        _record(ctx, sched, slot, "started", why, made)
        return
    waits_for = None
    if prev is not None and sched.overlap == "skip":
        _record(ctx, sched, slot, "skipped", f"overlap skip: the previous run {prev.id} is "
                f"still {prev.status}")
        return
    if prev is not None and sched.overlap == "cancel_previous":
        with ctx.tx() as session:
            fresh = session.get(Job, prev.id)
            if fresh is not None and fresh.status not in STABLE:
                service.stop(ctx, session, fresh, f"canceled by schedule {sched.name!r}: its "
                             f"run for {iso(slot)} replaces it (overlap cancel_previous)")
        why = f"{why}; started after canceling the previous run {prev.id}"
    elif prev is not None:
        waits_for = prev.id
        why = f"{why}; queued behind the previous run {prev.id} (overlap queue)"
    try:
        job_id, _ = _submit(ctx, sched, slot, f"schedule {sched.name!r}: {why}", waits_for, key)
    except APIError as exc:
        _record(ctx, sched, slot, "skipped", f"could not start: {exc.message}")
        return
    _record(ctx, sched, slot, "started", why, job_id)


def _run_slot(ctx: Context, sched: Schedule, slot: datetime, why: str,
              trigger: str | None = None) -> None:
    if _claim(ctx, sched, slot, trigger):
        fire(ctx, sched, slot, why)


def tick(ctx: Context) -> None:
    """One pass of the leader's scheduler: due cron slots, `after` chains, and slots a
    crash left claimed without a job."""
    now = ctx.clock.now()
    with read_session(ctx.engine) as session:
        due = session.exec(select(Schedule).where(
            col(Schedule.active).is_(True), col(Schedule.cron).is_not(None),
            col(Schedule.next_run_at) <= now)).all()
        chained = session.exec(select(Schedule).where(
            col(Schedule.active).is_(True), col(Schedule.after_schedule_id).is_not(None))).all()
        stuck = session.exec(select(ScheduleRun, Schedule).join(
            Schedule, col(Schedule.id) == col(ScheduleRun.schedule_id)).where(
            col(ScheduleRun.outcome) == "claimed",
            col(ScheduleRun.created_at) < now - timedelta(seconds=10))).all()
    for sched in due:
        _cron(ctx, sched, now)
    for sched in chained:
        _after(ctx, sched)
    for run, sched in stuck:
        fire(ctx, sched, run.scheduled_for, "re-driven after an interruption")


def _cron(ctx: Context, sched: Schedule, now: datetime) -> None:
    """Due slots of one schedule: the move of `next_run_at` (a compare-and-set), the claim
    of the slots to run and the record of the slots missed are one transaction, so a leader
    that dies at any point leaves either nothing done (the next pass does it) or claims
    the next pass turns into their jobs: a slot is never lost nor run twice."""
    assert sched.cron is not None and sched.next_run_at is not None
    tz = zone(sched.timezone)
    try:
        count, recent = slots_in(sched.cron, tz, sched.next_run_at, now, MISSED_KEPT + 1)
        following = next_slot(sched.cron, tz, now)
    except ValueError as exc:
        # Saved before cron was read as Debian's cron reads it (croniter took `R` and
        # reversed ranges): it stops, saying why, rather than fail every tick.
        log.warning("schedule paused: its cron is not cron", extra={
            "schedule": sched.id, "cron": sched.cron, "error": str(exc)})
        with ctx.tx() as session:
            session.execute(update(Schedule).where(col(Schedule.id) == sched.id)
                            .values(active=False))
        return
    runs: list[tuple[datetime, str]] = []
    missed = list(recent)
    if recent and now - recent[-1] <= GRACE:
        runs.append((missed.pop(), "on schedule"))
    if missed and sched.catch_up == "latest":
        n = count - len(runs)
        runs.append((missed.pop(), f"catch-up: the latest of {n} missed slot"
                     f"{'s' if n > 1 else ''}"))
    earlier = count - len(runs) - len(missed)  # missed, beyond those recorded one by one
    try:
        with ctx.tx() as session:
            moved = session.execute(update(Schedule).where(
                col(Schedule.id) == sched.id, col(Schedule.next_run_at) == sched.next_run_at)
                .values(next_run_at=following))
            if rowcount(moved) != 1:
                return  # another pass moved it (and claimed its slots)
            for slot, why in runs:
                session.add(ScheduleRun(schedule_id=sched.id, scheduled_for=slot,
                                        outcome="claimed", reason=why, created_at=now))
            for i, slot in enumerate(missed):
                more = f" (and {earlier} earlier slots)" if i == 0 and earlier else ""
                session.add(ScheduleRun(
                    schedule_id=sched.id, scheduled_for=slot, outcome="missed",
                    reason=f"missed: not run at its time (the service down or the schedule "
                    f"paused){more}; catch_up {sched.catch_up}", created_at=now))
    except IntegrityError:  # a slot already has a row (a run made by hand at that time)
        _cron_one_by_one(ctx, sched, following, runs)
        return
    if count - len(runs):
        log.info("schedule missed slots", extra={"schedule": sched.id,
                                                 "missed": count - len(runs),
                                                 "catch_up": sched.catch_up})
    for slot, why in runs:
        fire(ctx, sched, slot, why)


def _cron_one_by_one(ctx: Context, sched: Schedule, following: datetime,
                     runs: list[tuple[datetime, str]]) -> None:
    with ctx.tx() as session:
        moved = session.execute(update(Schedule).where(
            col(Schedule.id) == sched.id, col(Schedule.next_run_at) == sched.next_run_at)
            .values(next_run_at=following))
    if rowcount(moved) == 1:
        for slot, why in runs:
            _run_slot(ctx, sched, slot, why)


def _after(ctx: Context, sched: Schedule) -> None:
    """Runs for upstream jobs that ended in the listed statuses since this schedule was
    last changed (a paused schedule does not run for what ended while it was paused)."""
    with read_session(ctx.engine) as session:
        done = session.exec(select(ScheduleRun.trigger_job_id).where(
            col(ScheduleRun.schedule_id) == sched.id,
            col(ScheduleRun.trigger_job_id).is_not(None)))
        ups = session.exec(select(Job).where(
            col(Job.schedule_id) == sched.after_schedule_id,
            col(Job.status).in_(sched.after_statuses),
            col(Job.finished_at) >= sched.updated_at,
            col(Job.id).not_in(done.all() or ["-"])).order_by(col(Job.finished_at))).all()
    for up in ups:
        assert up.finished_at is not None
        _run_slot(ctx, sched, up.finished_at, f"after {up.id} ended {up.status}",
                  trigger=up.id)
