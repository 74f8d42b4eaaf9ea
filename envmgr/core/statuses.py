"""Every status a resource can have, as enums: the state machine, the tables and the API
(whose OpenAPI document lists them) share these. Values are strings, so rows and JSON hold
the plain names the contract spells."""

from __future__ import annotations

from enum import StrEnum


class RuntimeStatus(StrEnum):
    creating = "creating"
    running = "running"
    pausing = "pausing"
    paused = "paused"
    resuming = "resuming"
    updating = "updating"
    deleting = "deleting"
    deleted = "deleted"
    error = "error"


class DiskStatus(StrEnum):
    creating = "creating"
    ready = "ready"
    deleting = "deleting"
    deleted = "deleted"
    failed = "failed"


class OperationStatus(StrEnum):
    pending = "pending"
    running = "running"
    done = "done"
    failed = "failed"
    superseded = "superseded"


class Action(StrEnum):
    """A runtime lifecycle action (api.md's table)."""

    create = "create"
    pause = "pause"
    resume = "resume"
    update = "update"
    delete = "delete"


class JobStatus(StrEnum):
    """A notebook job (api.md "Notebook jobs")."""

    queued = "queued"
    starting = "starting"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    timed_out = "timed_out"
    canceling = "canceling"
    canceled = "canceled"


class JobErrorKind(StrEnum):
    notebook_error = "notebook_error"
    timeout = "timeout"
    canceled = "canceled"
    infrastructure = "infrastructure"
