"""Rows to the plain specs a backend sees (backends never touch the database)."""

from __future__ import annotations

from sqlmodel import Session

from envmgr.auth.signing import Signer
from envmgr.backends.base import DiskSpec, RuntimeSpec
from envmgr.core.models import Disk, Runtime, User, Workspace


def runtime_spec(session: Session, rt: Runtime, signer: Signer) -> RuntimeSpec:
    ws = session.get(Workspace, rt.workspace_id)
    owner = session.get(User, rt.owner_id)
    return RuntimeSpec(id=rt.id, workspace=ws.name if ws else rt.workspace_id,
                       owner=owner.email if owner else rt.owner_id,
                       machine_type=rt.machine_type, disk_id=rt.disk_id,
                       secret=signer.jupyter_token(rt.id), labels=dict(rt.labels),
                       endpoint=rt.endpoint, runtime_token=signer.runtime_token(rt.id),
                       boot_ticket=signer.boot_ticket(rt.id))


def disk_spec(session: Session, disk: Disk) -> DiskSpec:
    ws = session.get(Workspace, disk.workspace_id)
    owner = session.get(User, disk.owner_id)
    return DiskSpec(id=disk.id, workspace=ws.name if ws else disk.workspace_id,
                    owner=owner.email if owner else disk.owner_id, size_gb=disk.size_gb,
                    type=disk.type)
