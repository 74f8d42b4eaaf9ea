"""Who may see and do what (api.md "Roles"). What the caller may not see is a 404, never a
403, so nobody learns that another user's runtime or disk exists."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import ColumnElement, or_, true
from sqlmodel import Session, col, select

from envmgr.core.errors import APIError, forbidden, not_found
from envmgr.core.models import Disk, Job, Membership, Runtime, Schedule, User, Workspace

RANK = {"reader": 1, "writer": 2, "owner": 3}


def role_in(session: Session, user: User, workspace_id: str) -> str | None:
    m = session.get(Membership, (workspace_id, user.id))
    return m.role if m else None


def workspace_for(session: Session, user: User, name: str,
                  need: str = "reader") -> tuple[Workspace, str | None]:
    ws = session.exec(select(Workspace).where(col(Workspace.name) == name)).first()
    role = role_in(session, user, ws.id) if ws else None
    if ws is None or (role is None and not user.admin):
        raise not_found("workspace", name)
    if not user.admin and RANK.get(role or "", 0) < RANK[need]:
        raise forbidden(f"this needs the {need} role in workspace {name!r}; yours is {role}")
    return ws, role


Owned = TypeVar("Owned", Runtime, Disk, Job, Schedule)


def owned_for(session: Session, user: User, model: type[Owned],
              obj_id: str) -> tuple[Owned, str | None]:
    """A runtime, disk, job or schedule the caller may see: their own, any in a workspace
    they own, or any at all for admins. Returns it with the caller's role in its workspace."""
    obj = session.get(model, obj_id)
    if obj is None:
        raise not_found(model.__name__.lower(), obj_id)
    role = role_in(session, user, obj.workspace_id)
    if not (user.admin or obj.owner_id == user.id or role == "owner"):
        raise not_found(model.__name__.lower(), obj_id)
    return obj, role


def refusal(user: User, owner_id: str, role: str | None, action: str,
            kind: str = "runtime") -> str | None:
    """Why `user` may not `action` a resource of `owner_id`, or None if they may.
    pause/delete: the owner, the workspace's owners, admins. Anything that runs code
    (resume, update): only the owner while still a writer, or an admin."""
    if user.admin:
        return None
    if action in ("pause", "delete", "cancel"):
        if owner_id == user.id or role == "owner":
            return None
        return f"only the {kind}'s owner or a workspace owner may {action} it"
    if owner_id != user.id:
        return f"only the {kind}'s owner may {action} it"
    if RANK.get(role or "", 0) < RANK["writer"]:
        return f"{action} needs the writer role in the workspace; yours is {role}"
    return None


def authorize(user: User, obj: Runtime | Disk | Job | Schedule, role: str | None,
              action: str) -> None:
    why = refusal(user, obj.owner_id, role, action, type(obj).__name__.lower())
    if why is not None:
        raise forbidden(why)


Listed = type[Runtime] | type[Disk] | type[Job] | type[Schedule]


def visible_filter(user: User) -> Callable[[Listed], ColumnElement[bool]]:
    """SQL condition for the runtimes/disks the caller may list."""

    def cond(model: Listed) -> ColumnElement[bool]:
        if user.admin:
            return true()
        owned_ws = select(col(Membership.workspace_id)).where(
            col(Membership.user_id) == user.id, col(Membership.role) == "owner")
        return or_(col(model.owner_id) == user.id, col(model.workspace_id).in_(owned_ws))
    return cond


def require_admin(user: User) -> None:
    if not user.admin:
        raise APIError(403, "forbidden", "only admins may do this")
