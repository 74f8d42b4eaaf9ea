"""Database tables. Times are aware UTC. Schema changes go through migrations/ (Alembic)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Column, Index, Table, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from envmgr.core.clock import utcnow


class Row(SQLModel):
    """Every table's base: declares the `__table__` SQLAlchemy gives each table class, so
    Core queries on it (bulk updates, inserts, joins) are type-checked."""

    __table__: ClassVar[Table]


class User(Row, table=True):
    __tablename__ = "users"
    id: str = Field(primary_key=True)
    email: str = Field(unique=True, index=True)
    admin: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class ApiToken(Row, table=True):
    __tablename__ = "api_tokens"
    id: str = Field(primary_key=True)
    user_id: str = Field(foreign_key="users.id", index=True)
    token_hash: str = Field(unique=True, index=True)  # sha256 of a 256-bit random secret
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None  # None: until revoked
    last_used_at: datetime | None = None  # written at most once a minute per token
    note: str | None = None
    # A token for one runtime's Jupyter (`/proxy/<id>/`) and nothing else of the API.
    runtime_id: str | None = Field(default=None, index=True)


class BrowserSession(Row, table=True):
    """A page's sign-in, kept server-side so signing out (or revoking the token it was made
    with) ends it for good: the cookie only names this row."""

    __tablename__ = "browser_sessions"
    id: str = Field(primary_key=True)  # 256 random bits; the signed cookie carries it
    token_id: str = Field(foreign_key="api_tokens.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class UsedTicket(Row, table=True):
    """A runtime link's ticket is good once: redeeming it inserts its nonce here, and the
    primary key refuses a second redemption, on any replica."""

    __tablename__ = "used_tickets"
    nonce: str = Field(primary_key=True)
    expires_at: datetime = Field(index=True)


class Workspace(Row, table=True):
    __tablename__ = "workspaces"
    # One workspace per bucket, enforced by the database (api.md: nobody attaches a bucket
    # another workspace uses).
    __table_args__ = (UniqueConstraint("bucket", name="uq_workspaces_bucket"),)
    id: str = Field(primary_key=True)
    name: str = Field(unique=True, index=True)
    bucket: str
    created_by: str = Field(foreign_key="users.id")
    created_at: datetime = Field(default_factory=utcnow)
    # Autopause of its runtimes: a default and bounds (None: the service's).
    autopause_default_minutes: float | None = None
    autopause_min_minutes: float | None = None
    autopause_max_minutes: float | None = None


class Membership(Row, table=True):
    __tablename__ = "memberships"
    workspace_id: str = Field(foreign_key="workspaces.id", primary_key=True)
    user_id: str = Field(foreign_key="users.id", primary_key=True, index=True)
    role: str  # owner | writer | reader


class Runtime(Row, table=True):
    __tablename__ = "runtimes"
    __table_args__ = (
        # One non-deleted runtime per user per workspace, enforced by the database itself.
        Index(
            "uq_runtime_active_per_user",
            "workspace_id",
            "owner_id",
            unique=True,
            sqlite_where=text("status != 'deleted'"),
            postgresql_where=text("status != 'deleted'"),
        ),
    )
    id: str = Field(primary_key=True)
    workspace_id: str = Field(foreign_key="workspaces.id", index=True)
    owner_id: str = Field(foreign_key="users.id", index=True)
    status: str = Field(index=True)
    status_reason: str | None = None
    version: int = 0  # bumped on every status change: optimistic concurrency
    machine_type: str
    disk_id: str | None = Field(default=None, index=True)
    autopause_minutes: float = 30
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    endpoint: str | None = None  # Jupyter base URL as the control plane reaches it
    last_activity_at: datetime | None = None
    last_activity_kind: str | None = None  # envmgr.runtimes.activity.Kind
    busy_since: datetime | None = None  # a kernel busy since (as autopause last saw it)
    # The latest failures (newest first), kept on the row so reading a runtime is one query.
    errors: list[dict[str, str]] = Field(default_factory=list,
                                         sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Disk(Row, table=True):
    __tablename__ = "disks"
    id: str = Field(primary_key=True)
    workspace_id: str = Field(foreign_key="workspaces.id", index=True)
    owner_id: str = Field(foreign_key="users.id", index=True)
    status: str = Field(index=True)
    size_gb: int
    type: str
    attached_to: str | None = Field(default=None, index=True)
    version: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class SandboxIdentity(Row, table=True):
    """A Unix identity of the local sandbox (uid = ENVMGR_LOCAL_UID_BASE + id), given to one
    holder (`disk:<id>`, `job:<id>`) once and to nobody after it: rows are never deleted, so
    no later runtime or job can own what an earlier one left (a kept disk, a file in /tmp)."""

    __tablename__ = "sandbox_identities"
    __table_args__ = {"sqlite_autoincrement": True}
    id: int | None = Field(default=None, primary_key=True)
    holder: str = Field(unique=True)
    created_at: datetime = Field(default_factory=utcnow)


class Operation(Row, table=True):
    """One asynchronous action; the worker claims it with a lease so a crashed replica's
    work is re-driven by whoever comes next."""

    __tablename__ = "operations"
    id: str = Field(primary_key=True)
    resource: str  # runtime | disk
    resource_id: str = Field(index=True)
    action: str
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="pending", index=True)  # pending running done failed superseded
    error: str | None = None
    attempts: int = 0
    lease_owner: str | None = None
    lease_until: datetime | None = None
    deadline_at: datetime
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Event(Row, table=True):
    """Every status change of a runtime or disk, written in the same transaction as it."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_resource", "resource_id", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    resource: str
    resource_id: str
    from_status: str | None = None
    to_status: str
    reason: str
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class CostDaily(Row, table=True):
    """What each runtime's compute and each disk cost per UTC day, kept up to date from the
    event log by envmgr.costs.accrual (so a year of costs is a small indexed scan)."""

    __tablename__ = "cost_daily"
    __table_args__ = (Index("uq_cost_daily", "day", "resource_id", "machine_type", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    day: date = Field(index=True)
    resource: str  # runtime | disk
    resource_id: str
    owner_id: str = Field(index=True)
    workspace_id: str = Field(index=True)
    machine_type: str = ""  # "" for disks
    compute_micros: int = Field(default=0, sa_type=BigInteger)  # micro-dollars
    disk_micros: int = Field(default=0, sa_type=BigInteger)
    jobs_micros: int = Field(default=0, sa_type=BigInteger)  # notebook jobs' compute


class CostState(Row, table=True):
    """Where accrual left each resource: its status since when, at what rate."""

    __tablename__ = "cost_state"
    resource_id: str = Field(primary_key=True)
    resource: str
    status: str
    since: datetime
    machine_type: str = ""
    size_gb: int = 0
    disk_type: str = ""


class CostWatermark(Row, table=True):
    __tablename__ = "cost_watermark"
    id: int = Field(default=1, primary_key=True)
    last_event_id: int = 0


class CostGroupDaily(Row, table=True):
    """The rollup by what reports group on (user, workspace, machine type, each label),
    per UTC day: a year's report reads days x groups rows, not one per resource."""

    __tablename__ = "cost_group_daily"
    __table_args__ = (Index("uq_cost_group_daily", "dimension", "day", "key", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    dimension: str  # user | workspace | machine_type | label:<key> | total
    day: date
    key: str
    compute_micros: int = Field(default=0, sa_type=BigInteger)  # micro-dollars
    disk_micros: int = Field(default=0, sa_type=BigInteger)
    jobs_micros: int = Field(default=0, sa_type=BigInteger)  # notebook jobs' compute


class CostGroupMonthly(Row, table=True):
    """The grouped rollup per calendar month, beside the daily one: a year by 1,000 users
    is 12,000 rows to read, not 365,000."""

    __tablename__ = "cost_group_monthly"
    __table_args__ = (Index("uq_cost_group_monthly", "dimension", "month", "key", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    dimension: str
    month: date  # its first day
    key: str
    compute_micros: int = Field(default=0, sa_type=BigInteger)  # micro-dollars
    disk_micros: int = Field(default=0, sa_type=BigInteger)
    jobs_micros: int = Field(default=0, sa_type=BigInteger)  # notebook jobs' compute


class Job(Row, table=True):
    """A notebook run headless on compute of its own (envmgr.jobs). Its status changes go
    through envmgr.jobs.machine with an Event each, like a runtime's, so its compute bills
    from the same event log."""

    __tablename__ = "jobs"
    __table_args__ = (
        # One job per (owner, idempotency key), enforced by the database: two requests with
        # the same key at once cannot both insert.
        Index("uq_jobs_idempotency", "owner_id", "idempotency_key", unique=True,
              sqlite_where=text("idempotency_key IS NOT NULL"),
              postgresql_where=text("idempotency_key IS NOT NULL")),
        Index("ix_jobs_status_created", "status", "created_at"),
    )
    id: str = Field(primary_key=True)
    workspace_id: str = Field(foreign_key="workspaces.id", index=True)
    owner_id: str = Field(foreign_key="users.id", index=True)
    notebook: str | None = None  # the bucket path it was submitted from (None: inline)
    parameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    kernel_name: str = "python3"
    language: str = "python"
    status: str = Field(index=True)
    status_reason: str | None = None
    version: int = 0
    machine_type: str
    time_limit_seconds: int
    network: str = "default"  # default | none
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    webhook_url: str | None = None
    webhook_secret: str | None = None  # never shown; signs the deliveries
    idempotency_key: str | None = None
    schedule_id: str | None = Field(default=None, index=True)
    scheduled_for: datetime | None = None
    waits_for: str | None = None  # a job that must end before this one starts (overlap queue)
    progress: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    outputs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    attempts: int = 0  # starts, counting retries after infrastructure failures
    # A decision to end it (time limit, budget), recorded before its compute is killed: a
    # leader that dies in between leaves it for the next to carry out, never to retry.
    ending: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    handle: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    log_seq: int = 0  # the last runner event folded in (restarts resume from here)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = Field(default=None, index=True)
    outputs_deleted: bool = False
    webhook_state: str | None = None  # pending | delivered | failed
    webhook_next_at: datetime | None = Field(default=None, index=True)
    webhook_attempts: int = 0


class JobLogLine(Row, table=True):
    """A job's output lines as they happen, for its live stream (any replica can serve it);
    the whole log also goes to the bucket."""

    __tablename__ = "job_log_lines"
    __table_args__ = (Index("uq_job_log_lines", "job_id", "seq", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id")
    seq: int
    stream: str  # stdout | stderr
    line: str
    at: datetime = Field(default_factory=utcnow)


class JobDelivery(Row, table=True):
    """One attempt to deliver a job's webhook."""

    __tablename__ = "job_deliveries"
    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True)
    delivery_id: str  # the same for every attempt of one delivery (X-Envmgr-Delivery)
    at: datetime
    status_code: int | None = None
    error: str | None = None


class UserLimits(Row, table=True):
    """Per-user job limits an admin set; a missing row or a null field takes ENVMGR_JOB_*."""

    __tablename__ = "user_limits"
    user_id: str = Field(foreign_key="users.id", primary_key=True)
    job_concurrency: int | None = None
    job_minutes_per_month: float | None = None
    job_max_time_limit_seconds: int | None = None


class Schedule(Row, table=True):
    """A job definition that runs on a cron in an IANA time zone, or after another
    schedule's job ends (envmgr.jobs.schedules)."""

    __tablename__ = "schedules"
    id: str = Field(primary_key=True)
    workspace_id: str = Field(foreign_key="workspaces.id", index=True)
    owner_id: str = Field(foreign_key="users.id", index=True)
    name: str
    notebook: str
    parameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    cron: str | None = None
    timezone: str = "UTC"
    active: bool = True
    overlap: str = "skip"  # skip | queue | cancel_previous
    catch_up: str = "none"  # none | latest
    after_schedule_id: str | None = Field(default=None, index=True)
    after_statuses: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    machine_type: str | None = None
    kernel: str | None = None  # a kernelspec name for its jobs (None: the notebook's)
    time_limit_seconds: int | None = None
    network: str = "default"
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    webhook_url: str | None = None
    webhook_secret: str | None = None
    next_run_at: datetime | None = Field(default=None, index=True)  # the next cron slot, UTC
    last_job_id: str | None = None
    version: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ScheduleRun(Row, table=True):
    """One slot of a schedule, claimed before its job starts: the unique key means a slot
    runs at most once, whatever the number of replicas and restarts."""

    __tablename__ = "schedule_runs"
    __table_args__ = (UniqueConstraint("schedule_id", "scheduled_for", name="uq_schedule_slot"),)
    id: int | None = Field(default=None, primary_key=True)
    schedule_id: str = Field(index=True)
    scheduled_for: datetime
    outcome: str  # started | skipped
    reason: str
    job_id: str | None = None
    trigger_job_id: str | None = None  # the upstream job, for `after` runs
    created_at: datetime = Field(default_factory=utcnow)
