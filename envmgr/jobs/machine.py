"""The job state machine as data, and the only code that changes a job's status.

As with runtimes, every change is a compare-and-set on the row's version with an Event in
the same transaction: two replicas (or a cancel racing the end of a run) can never both
move one job, and the events feed the cost accrual like a runtime's."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col

from envmgr.core.db import rowcount, tx_now
from envmgr.core.errors import APIError
from envmgr.core.models import Job
from envmgr.core.statuses import JobStatus
from envmgr.runtimes.machine import Conflict, record_event

J = JobStatus
STABLE = frozenset({J.succeeded, J.failed, J.timed_out, J.canceled})
ACTIVE = frozenset({J.starting, J.running, J.canceling})  # holds compute (and bills)

# to -> the statuses it may be reached from
ALLOWED: dict[str, frozenset[str]] = {
    J.queued: frozenset({J.starting, J.running}),  # an infrastructure failure, retried
    J.starting: frozenset({J.queued}),
    J.running: frozenset({J.starting}),
    J.succeeded: frozenset({J.running}),
    J.failed: frozenset({J.starting, J.running}),
    J.timed_out: frozenset({J.queued, J.starting, J.running}),  # queued: budget spent
    J.canceling: frozenset({J.starting, J.running}),
    J.canceled: frozenset({J.queued, J.canceling}),
}
CANCELABLE = frozenset({J.queued, J.starting, J.running})


def move_job(session: Session, job: Job, to: str, reason: str, **values: Any) -> None:
    """Compare-and-set `job` (as read, at its version) to `to`; raises Conflict if it moved
    meanwhile, ValueError if the table does not allow it."""
    if job.status not in ALLOWED[to]:
        raise ValueError(f"job {job.id}: {job.status} -> {to} is not a transition")
    now = tx_now(session)
    res = session.execute(
        update(Job).where(col(Job.id) == job.id, col(Job.version) == job.version)
        .values(status=to, version=job.version + 1, status_reason=reason, updated_at=now,
                **values).execution_options(synchronize_session=False))
    if rowcount(res) != 1:
        raise Conflict(f"job {job.id} changed concurrently")
    record_event(session, "job", job.id, job.status, to, reason, machine_type=job.machine_type)
    for key, val in {"status": to, "version": job.version + 1, "status_reason": reason,
                     "updated_at": now, **values}.items():
        setattr(job, key, val)


def not_cancelable(job: Job) -> APIError:
    return APIError(409, "invalid_transition",
                    f"cannot cancel a job that is {job.status}; cancel is allowed from: "
                    f"{', '.join(sorted(CANCELABLE))}",
                    {"status": job.status, "allowed_from": sorted(CANCELABLE),
                     "action": "cancel"})
