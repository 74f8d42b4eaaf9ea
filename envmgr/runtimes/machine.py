"""The runtime state machine as data, and the only code that changes a status.

Every change is a compare-and-set on the row's version with its Event written in the same
transaction, so two requests (or two replicas) can never both move one runtime."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import case, update
from sqlmodel import Session, col

from envmgr.core.db import rowcount, tx_now
from envmgr.core.errors import APIError
from envmgr.core.ids import new_id
from envmgr.core.models import Disk, Event, Operation, Runtime
from envmgr.core.statuses import Action, RuntimeStatus

R = RuntimeStatus
STABLE = frozenset({R.running, R.paused, R.deleted, R.error})
TRANSITIONAL = frozenset({R.creating, R.pausing, R.resuming, R.updating, R.deleting})


@dataclass(frozen=True)
class Transition:
    action: str
    allowed_from: frozenset[str]
    via: str
    ends_in: str | None  # None: back to the status the runtime had (update)
    on_failure: str
    backend_step: str  # which deadline applies: create | start | stop | delete
    allowed_with_restart: frozenset[str] = frozenset()


TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        Transition(Action.create, frozenset(), R.creating, R.running, R.error, "create"),
        Transition(Action.pause, frozenset({R.running}), R.pausing, R.paused, R.error, "stop"),
        Transition(Action.resume, frozenset({R.paused, R.error}), R.resuming, R.running,
                   R.error, "start"),
        Transition(Action.update, frozenset({R.paused}), R.updating, None, R.error, "start",
                   allowed_with_restart=frozenset({R.running})),
        Transition(Action.delete, frozenset({R.running, R.paused, R.error, R.creating}),
                   R.deleting, R.deleted, R.error, "delete"),
    )
}


class InvalidTransition(APIError):
    def __init__(self, action: str, status: str, allowed_from: frozenset[str]) -> None:
        self.action, self.allowed_from = action, sorted(allowed_from)
        super().__init__(
            409, "invalid_transition",
            f"cannot {action} a runtime that is {status}; {action} is allowed from: "
            f"{', '.join(self.allowed_from) or 'no existing runtime'}",
            {"status": status, "allowed_from": self.allowed_from, "action": action})


class Conflict(Exception):
    """The row moved under us (another request won the compare-and-set)."""


def record_event(session: Session, resource: str, resource_id: str, from_status: str | None,
                 to_status: str, reason: str, **detail: Any) -> None:
    session.add(Event(resource=resource, resource_id=resource_id, from_status=from_status,
                      to_status=to_status, reason=reason, detail=detail, at=tx_now(session)))


def move(session: Session, obj: Runtime | Disk, to: str, reason: str, **values: Any) -> None:
    """Compare-and-set `obj` (as read, at its version) to status `to`; raises Conflict."""
    model = type(obj)
    now = tx_now(session)
    extra = {"status_reason": reason} if model is Runtime else {}
    res = session.execute(
        update(model)
        .where(col(model.id) == obj.id, col(model.version) == obj.version)
        .values(status=to, version=obj.version + 1, updated_at=now, **extra, **values)
        .execution_options(synchronize_session=False)
    )
    if rowcount(res) != 1:
        raise Conflict(f"{model.__name__} {obj.id} changed concurrently")
    detail: dict[str, Any] = {"size_gb": obj.size_gb, "type": obj.type} \
        if isinstance(obj, Disk) else {"machine_type": values.get("machine_type",
                                                                  obj.machine_type)}
    record_event(session, "disk" if model is Disk else "runtime", obj.id, obj.status, to, reason,
                 **detail)
    for key, val in {"status": to, "version": obj.version + 1, "updated_at": now, **extra,
                     **values}.items():
        setattr(obj, key, val)


def new_operation(session: Session, resource: str, resource_id: str, action: str,
                  deadline_seconds: float, **params: Any) -> Operation:
    op = Operation(id=new_id("op"), resource=resource, resource_id=resource_id, action=action,
                   params=params, deadline_at=tx_now(session) + timedelta(seconds=deadline_seconds))
    session.add(op)
    return op


def start_many(session: Session, action: str, reasons: dict[str, str],
                deadline_seconds: float) -> list[str]:
    """`action` for many runtimes at once (autopause's sweep of thousands): one conditional
    UPDATE whose WHERE on the allowed statuses is the compare-and-set (a runtime that moved
    meanwhile is left alone), then their events and operations in two bulk inserts, all in
    the caller's transaction. Returns the ids that moved."""
    if not reasons:
        return []
    t, rt, now = TRANSITIONS[action], Runtime.__table__, tx_now(session)
    conn = session.connection()
    moved: list[tuple[str, str, str]] = []  # id, from, machine type
    for frm in sorted(t.allowed_from):  # one UPDATE per status, so each event names its from
        moved += [(rid, frm, mt) for rid, mt in conn.execute(
            update(rt).where(rt.c.id.in_(list(reasons)), rt.c.status == frm)
            .values(status=t.via, version=rt.c.version + 1, updated_at=now,
                    status_reason=case(reasons, value=rt.c.id))
            .returning(rt.c.id, rt.c.machine_type)).all()]
    if not moved:
        return []
    deadline = now + timedelta(seconds=deadline_seconds)
    conn.execute(Event.__table__.insert(), [
        {"at": now, "resource": "runtime", "resource_id": rid, "from_status": frm,
         "to_status": t.via, "reason": reasons[rid], "detail": {"machine_type": machine_type}}
        for rid, frm, machine_type in moved])
    conn.execute(Operation.__table__.insert(), [
        {"id": new_id("op"), "resource": "runtime", "resource_id": rid, "action": action,
         "params": {"reason": reasons[rid]}, "status": "pending", "attempts": 0,
         "deadline_at": deadline, "created_at": now} for rid, _, _ in moved])
    return [rid for rid, _, _ in moved]


def allowed_actions(status: str) -> list[Action]:
    """The actions a runtime in `status` accepts now (update: with a restart if running),
    so clients enable buttons from the API instead of copying this table."""
    return [Action(t.action) for t in TRANSITIONS.values()
            if status in t.allowed_from | t.allowed_with_restart]


def check(action: str, status: str, allow_restart: bool = False) -> bool:
    """True to go ahead, False for a no-op repeat of an action under way; raises otherwise."""
    t = TRANSITIONS[action]
    if status == t.via:
        return False
    allowed = t.allowed_from | (t.allowed_with_restart if allow_restart else frozenset())
    if status not in allowed:
        raise InvalidTransition(action, status, allowed)
    return True
