"""The runtime state machine as data, and the only code that changes a status.

Every change is a compare-and-set on the row's version with its Event written in the same
transaction, so two requests (or two replicas) can never both move one runtime."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import Session

from envmgr.core.clock import utcnow
from envmgr.core.errors import APIError
from envmgr.core.ids import new_id
from envmgr.core.models import Disk, Event, Operation, Runtime

STABLE = frozenset({"running", "paused", "deleted", "error"})
TRANSITIONAL = frozenset({"creating", "pausing", "resuming", "updating", "deleting"})


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
        Transition("create", frozenset(), "creating", "running", "error", "create"),
        Transition("pause", frozenset({"running"}), "pausing", "paused", "error", "stop"),
        Transition("resume", frozenset({"paused", "error"}), "resuming", "running", "error",
                   "start"),
        Transition("update", frozenset({"paused"}), "updating", None, "error", "start",
                   allowed_with_restart=frozenset({"running"})),
        Transition("delete", frozenset({"running", "paused", "error", "creating"}), "deleting",
                   "deleted", "error", "delete"),
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
                      to_status=to_status, reason=reason, detail=detail))


def move(session: Session, obj: Runtime | Disk, to: str, reason: str, **values: Any) -> None:
    """Compare-and-set `obj` (as read, at its version) to status `to`; raises Conflict."""
    model = type(obj)
    now = utcnow()
    extra = {"status_reason": reason} if model is Runtime else {}
    res = session.execute(
        update(model)
        .where(model.id == obj.id, model.version == obj.version)
        .values(status=to, version=obj.version + 1, updated_at=now, **extra, **values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        raise Conflict(f"{model.__name__} {obj.id} changed concurrently")
    detail = {"machine_type": values.get("machine_type", getattr(obj, "machine_type", None))}
    if model is Disk:
        detail = {"size_gb": obj.size_gb, "type": obj.type}
    record_event(session, model.__tablename__.rstrip("s"), obj.id, obj.status, to, reason,
                 **detail)
    for key, val in {"status": to, "version": obj.version + 1, "updated_at": now, **extra,
                     **values}.items():
        setattr(obj, key, val)


def new_operation(session: Session, resource: str, resource_id: str, action: str,
                  deadline_seconds: float, **params: Any) -> Operation:
    op = Operation(id=new_id("op"), resource=resource, resource_id=resource_id, action=action,
                   params=params, deadline_at=utcnow() + timedelta(seconds=deadline_seconds))
    session.add(op)
    return op


def check(action: str, status: str, allow_restart: bool = False) -> bool:
    """True to go ahead, False for a no-op repeat of an action under way; raises otherwise."""
    t = TRANSITIONS[action]
    if status == t.via:
        return False
    allowed = t.allowed_from | (t.allowed_with_restart if allow_restart else frozenset())
    if status not in allowed:
        raise InvalidTransition(action, status, allowed)
    return True
