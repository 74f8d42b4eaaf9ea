"""Request and response bodies of the jobs API (the contract's "Notebook jobs")."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from envmgr.api.schemas import Strict, _labels, _machine_type
from envmgr.core.statuses import JobErrorKind, JobStatus

PRINTABLE = re.compile(r"[\x21-\x7e]{1,200}")


class Webhook(Strict):
    url: str = Field(max_length=2000)
    secret: str = Field(min_length=16, max_length=256,
                        description="signs each delivery (HMAC-SHA256); at least 16 characters")


class JobCreate(Strict):
    notebook: str | None = Field(default=None, max_length=1024,
                                 description="a notebook of the workspace's bucket")
    ipynb: dict[str, Any] | None = Field(default=None, description="or a notebook sent inline")
    parameters: dict[str, Any] = Field(default_factory=dict)
    machine_type: str | None = None
    time_limit_seconds: int | None = Field(default=None, ge=1, le=30 * 86400)
    network: Literal["default", "none"] = "default"
    labels: dict[str, str] | None = None
    webhook: Webhook | None = None
    idempotency_key: str | None = None
    kernel: str | None = Field(default=None, max_length=100, description="a kernelspec "
                               "name (papermill's -k); default: the notebook's own")
    _mt = field_validator("machine_type")(_machine_type)
    _lb = field_validator("labels")(_labels)

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is not None and not PRINTABLE.fullmatch(v):
            raise ValueError("must be 1-200 printable ASCII characters without spaces")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> JobCreate:
        if (self.notebook is None) == (self.ipynb is None):
            raise ValueError("give exactly one of 'notebook' (a bucket path) or 'ipynb' "
                             "(the notebook itself)")
        return self


class JobProgress(BaseModel):
    cells_total: int | None
    cells_done: int
    current_cell: int | None


class JobOutputs(BaseModel):
    ipynb: str | None
    html: str | None
    log: str | None


class JobError(BaseModel):
    kind: JobErrorKind
    message: str
    cell: int | None
    ename: str | None
    evalue: str | None


class JobWebhook(BaseModel):
    url: str
    state: Literal["pending", "delivered", "failed"] | None
    attempts: int


class JobOut(BaseModel):
    id: str
    workspace: str
    owner: str
    notebook: str | None
    parameters: dict[str, Any]
    status: JobStatus
    status_reason: str | None
    machine_type: str
    kernel: str  # the kernelspec it runs on
    time_limit_seconds: int
    network: str
    labels: dict[str, str]
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: JobProgress
    outputs: JobOutputs
    error: JobError | None
    schedule_id: str | None
    scheduled_for: str | None
    cost: float
    expires_at: str | None
    attempts: int
    webhook: JobWebhook | None


class DeliveryOut(BaseModel):
    id: str
    at: str
    status_code: int | None
    error: str | None


class LimitsPut(Strict):
    job_concurrency: int | None = Field(default=None, ge=1, le=1000)
    job_minutes_per_month: float | None = Field(default=None, ge=0, le=1e7, allow_inf_nan=False)
    job_max_time_limit_seconds: int | None = Field(default=None, ge=1, le=30 * 86400)


class LimitsOut(BaseModel):
    job_concurrency: int
    job_minutes_per_month: float
    job_max_time_limit_seconds: int


class UsageOut(BaseModel):
    period_start: str
    resets_at: str
    used_minutes: float
    limit_minutes: float
    remaining_minutes: float
    running: int
    queued: int
    limits: LimitsOut


# -- schedules ------------------------------------------------------------------------------
Overlap = Literal["skip", "queue", "cancel_previous"]
CatchUp = Literal["none", "latest"]
EndStatus = Literal["succeeded", "failed", "timed_out", "canceled"]


class After(Strict):
    schedule: str = Field(max_length=100)
    on: list[EndStatus] = Field(min_length=1, max_length=4)


class ScheduleWebhook(Strict):
    url: str = Field(max_length=2000)
    secret: str = Field(min_length=16, max_length=256)


class _ScheduleFields(Strict):
    parameters: dict[str, Any] | None = None
    timezone: str | None = Field(default=None, max_length=64)
    overlap: Overlap | None = None
    catch_up: CatchUp | None = None
    machine_type: str | None = None
    time_limit_seconds: int | None = Field(default=None, ge=1, le=30 * 86400)
    network: Literal["default", "none"] | None = None
    labels: dict[str, str] | None = None
    webhook: ScheduleWebhook | None = None
    kernel: str | None = Field(default=None, max_length=100, description="a kernelspec "
                               "name (papermill's -k); default: the notebook's own")
    _mt = field_validator("machine_type")(_machine_type)
    _lb = field_validator("labels")(_labels)


class ScheduleCreate(_ScheduleFields):
    name: str = Field(min_length=1, max_length=200)
    notebook: str = Field(max_length=1024)
    cron: str | None = Field(default=None, max_length=200)
    after: After | None = None


class SchedulePatch(_ScheduleFields):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    notebook: str | None = Field(default=None, max_length=1024)
    cron: str | None = Field(default=None, max_length=200)
    after: After | None = None
    active: bool | None = None


class LastJob(BaseModel):
    id: str
    status: JobStatus
    scheduled_for: str | None
    finished_at: str | None


class ScheduleOut(BaseModel):
    id: str
    workspace: str
    owner: str
    name: str
    notebook: str
    parameters: dict[str, Any]
    cron: str | None
    timezone: str
    active: bool
    overlap: Overlap
    catch_up: CatchUp
    after: After | None
    machine_type: str | None
    kernel: str | None
    time_limit_seconds: int | None
    network: str
    labels: dict[str, str]
    webhook: dict[str, str] | None
    next_run_at: str | None
    last_job: LastJob | None
    created_at: str
    updated_at: str


class ScheduleRunOut(BaseModel):
    scheduled_for: str
    outcome: Literal["claimed", "started", "skipped", "missed"]
    reason: str
    job: str | None
    job_status: JobStatus | None
    trigger_job: str | None


class SchedulePreview(BaseModel):
    runs: list[str]  # ISO times with the zone's offset, in order
