"""Request and response bodies of the HTTP API (../shared/api.md). Requests reject unknown
fields; every rule's message says what is allowed."""

from __future__ import annotations

import re
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from envmgr.core.statuses import Action, DiskStatus, RuntimeStatus
from envmgr.costs.catalog import DISK_SIZE_RANGE, configured_catalog

# Every rule is applied with fullmatch: `$` would let a trailing newline through.
EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
WORKSPACE_NAME = re.compile(r"[a-z0-9-]{3,63}")
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
Role = Literal["owner", "writer", "reader"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _email(v: str) -> str:
    v = v.strip().lower()
    if not EMAIL.fullmatch(v) or len(v) > 254:
        raise ValueError("must be an email address like someone@example.org")
    return v


def _machine_type(v: str | None) -> str | None:
    cat = configured_catalog()
    if v is not None and v not in cat.machine_types:
        raise ValueError(f"machine type {v!r} is not offered; allowed: "
                         f"{', '.join(sorted(cat.machine_types))}")
    return v


def _labels(v: dict[str, str] | None) -> dict[str, str] | None:
    if v is None:
        return v
    if len(v) > 64:
        raise ValueError("at most 64 labels are allowed")
    for key, value in v.items():
        if not LABEL_KEY.fullmatch(key):
            raise ValueError(f"label key {key!r} must match [a-z][a-z0-9_-]{{0,62}}")
        if not LABEL_VALUE.fullmatch(value):
            raise ValueError(f"label value {value!r} (of {key!r}) must match [a-z0-9_-]{{0,63}}")
    return v


class UserCreate(Strict):
    email: str
    admin: bool = False
    _v = field_validator("email")(_email)


class TokenCreate(Strict):
    email: str
    expires_in_days: float | None = Field(default=None, gt=0, le=3650, allow_inf_nan=False,
                                          description="none: until revoked")
    note: str | None = Field(default=None, max_length=200)
    _v = field_validator("email")(_email)


class WorkspaceCreate(Strict):
    name: str
    bucket: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not WORKSPACE_NAME.fullmatch(v):
            raise ValueError("must be 3-63 characters of a-z, 0-9 and '-'")
        return v

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        if v is not None and not BUCKET_NAME.fullmatch(v):
            raise ValueError("must be a bucket name: 3-222 characters of a-z, 0-9, '.', '_' "
                             "and '-', starting and ending with a letter or digit")
        return v


class MemberPut(Strict):
    role: Role


class DiskRequest(Strict):
    """Either a new disk ({size_gb?, type?}) or an existing one to re-attach ({id})."""

    id: str | None = None
    size_gb: int | None = None
    type: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> DiskRequest:
        if self.id is not None and (self.size_gb is not None or self.type is not None):
            raise ValueError("give either an existing disk {\"id\"} or a new disk "
                             "{\"size_gb\", \"type\"}, not both")
        return self

    @field_validator("size_gb")
    @classmethod
    def _size(cls, v: int | None) -> int | None:
        lo, hi = DISK_SIZE_RANGE
        if v is not None and not lo <= v <= hi:
            raise ValueError(f"disk size must be from {lo} to {hi} GB, got {v}")
        return v

    @field_validator("type")
    @classmethod
    def _type(cls, v: str | None) -> str | None:
        types = configured_catalog().disk_types
        if v is not None and v not in types:
            raise ValueError(f"disk type {v!r} is not offered; allowed: {', '.join(sorted(types))}")
        return v


class RuntimeCreate(Strict):
    machine_type: str | None = None
    disk: DiskRequest | None = None
    autopause_minutes: float | None = Field(default=None, allow_inf_nan=False)
    labels: dict[str, str] | None = None
    _mt = field_validator("machine_type")(_machine_type)
    _lb = field_validator("labels")(_labels)


class RuntimePatch(Strict):
    autopause_minutes: float | None = Field(default=None, allow_inf_nan=False)
    labels: dict[str, str] | None = None
    machine_type: str | None = None
    allow_restart: bool = False
    _mt = field_validator("machine_type")(_machine_type)
    _lb = field_validator("labels")(_labels)


class UserOut(BaseModel):
    id: str
    email: str
    admin: bool
    created_at: str


class TokenOut(BaseModel):
    token: str
    id: str
    email: str
    expires_at: str | None = None


class TokenInfo(BaseModel):
    """A token as lists show it: never the secret."""

    id: str
    email: str
    created_at: str
    last_used_at: str | None
    expires_at: str | None
    note: str | None
    runtime: str | None = None  # set: it opens that runtime's Jupyter only


class RuntimeTokenCreate(Strict):
    expires_in_days: float | None = Field(default=None, gt=0, le=3650, allow_inf_nan=False,
                                          description="none: until revoked")
    note: str | None = Field(default=None, max_length=200)


class RuntimeTokenOut(BaseModel):
    id: str
    token: str
    runtime: str
    expires_at: str | None


class MeOut(BaseModel):
    email: str
    admin: bool


class AutopauseOut(BaseModel):
    """What the workspace allows of its runtimes' autopause (its own or the service's)."""
    default_minutes: float
    min_minutes: float
    max_minutes: float
    may_turn_off: bool  # whether 0 (autopause off) is allowed


class WorkspaceOut(BaseModel):
    name: str
    bucket: str
    role: Role | None
    created_at: str
    autopause: AutopauseOut | None = None


class AutopausePatch(Strict):
    """A workspace's own autopause default and bounds; null puts the service's back."""
    default_minutes: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    min_minutes: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_minutes: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class WorkspacePatch(Strict):
    autopause: AutopausePatch


class MemberOut(BaseModel):
    workspace: str
    email: str
    role: Role


class ErrorRecord(BaseModel):
    at: str
    action: str
    message: str


class LimitsOut(BaseModel):
    """What the runtime may use where the backend enforces it below the machine (a
    container on a shared host): a kernel past `memory_bytes` is killed."""
    memory_bytes: int
    vcpus: float | None  # None: no CPU quota (the host's cores are shared)
    pids: int


class ActivityOut(BaseModel):
    at: str
    kind: str


class RuntimeOut(BaseModel):
    id: str
    workspace: str
    owner: str
    status: RuntimeStatus
    machine_type: str
    disk_id: str | None
    autopause_minutes: float
    labels: dict[str, str]
    url: str | None
    created_at: str
    updated_at: str
    status_reason: str | None
    cost_per_hour: float
    errors: list[ErrorRecord]
    autopause_at: str | None = None  # when it pauses if nothing happens (running only)
    last_activity_at: str | None = None  # the latest activity autopause knows of (running)
    # ...and what it was (envmgr.runtimes.activity.Kind: "cell run", "page input", ...)
    last_activity: ActivityOut | None = None
    busy_since: str | None = None  # a kernel busy since then (as autopause last saw it)
    # What the caller may ask of this runtime now (its status and the caller's role):
    # clients enable their buttons from this instead of a copy of the state machine.
    actions: list[Action] = Field(default_factory=list)
    limits: LimitsOut | None = None  # None: the machine itself is the limit (a VM)


class DiskOut(BaseModel):
    id: str
    workspace: str
    owner: str
    status: DiskStatus
    size_gb: int
    type: str
    attached_to: str | None
    cost_per_month: float
    created_at: str


class EventOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    at: str
    from_: str | None = Field(alias="from")
    to: str
    reason: str


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None
