"""The compute backend interface, as small as JupyterHub's Spawner.

Every method must be idempotent: after a crash the worker calls the same step again, and
a step that already happened must simply succeed."""

from __future__ import annotations

import abc
import contextvars
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Literal

from envmgr.settings import Settings

State = Literal["starting", "running", "stopping", "stopped", "absent"]
# The operation being driven (the worker sets it for the task that drives it), for backends
# that make mutations idempotent (GCE request ids): backends never import the worker.
CURRENT_OPERATION: contextvars.ContextVar[str] = contextvars.ContextVar("envmgr_operation",
                                                                         default="")


def base_path(runtime_id: str) -> str:
    """Every runtime's Jupyter serves under the control plane's proxy path for it, so pages
    and API calls work unchanged through /proxy/<id>/."""
    return f"/proxy/{runtime_id}"


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpus: float
    pids: int

    def describe(self) -> str:
        return (f"{self.cpus:g} vCPU, {self.memory_bytes / 2**30:.3g} GiB memory, "
                f"{self.pids} processes")


class BackendError(Exception):
    """A step failed; the message is shown to the user as the reason."""


@dataclass(frozen=True)
class RuntimeSpec:
    id: str
    workspace: str
    owner: str
    machine_type: str
    disk_id: str | None
    secret: str  # the Jupyter token the runtime must require
    labels: dict[str, str] = field(default_factory=dict)
    endpoint: str | None = None  # its Jupyter base URL when last seen running
    runtime_token: str = ""  # its credential for the control plane's runtime API
    boot_ticket: str = ""  # single use: a VM trades it for the two tokens at first boot


@dataclass(frozen=True)
class DiskSpec:
    id: str
    workspace: str
    owner: str
    size_gb: int
    type: str


@dataclass(frozen=True)
class JobSpec:
    """A notebook job as its compute sees it: the files to run (`job.json`, `input.ipynb`)
    and how. Job compute is ephemeral: made by start_job, gone after cleanup_job."""

    id: str
    workspace: str
    owner: str
    machine_type: str
    network: str  # default | none
    files: dict[str, bytes] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    time_limit_seconds: int = 0
    token: str = ""  # its credential for the job API (compute that reports over HTTP)


@dataclass(frozen=True)
class JobRun:
    """What a job's compute says when asked: new runner events (JSON objects with `seq`),
    where to read from next time, whether the runner still runs, and its result once it
    wrote one."""

    events: list[dict[str, object]]
    offset: int
    alive: bool
    result: dict[str, object] | None = None
    detail: str = ""  # why it is gone, when it died without a result


@dataclass(frozen=True)
class BackendStatus:
    state: State
    endpoint: str | None = None  # Jupyter base URL when running
    detail: str | None = None
    # What happened inside since the last look, for its events (a kernel killed for
    # its memory), each said once.
    notices: list[str] = field(default_factory=list)


class Backend(abc.ABC):
    name: ClassVar[str]
    # Seconds each kind of step may take before the transition goes to `error`.
    deadlines: ClassVar[dict[str, float]] = {
        "create": 1800, "start": 1200, "stop": 600, "delete": 1800}

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def deadline(self, step: str) -> float:
        override = getattr(self.settings, f"deadline_{step}_seconds", None)
        return float(override if override is not None else self.deadlines[step])

    @abc.abstractmethod
    async def create_disk(self, disk: DiskSpec) -> None: ...

    @abc.abstractmethod
    async def delete_disk(self, disk: DiskSpec) -> None: ...

    @abc.abstractmethod
    async def attach(self, runtime: RuntimeSpec, disk: DiskSpec) -> None: ...

    @abc.abstractmethod
    async def detach(self, runtime: RuntimeSpec, disk: DiskSpec) -> None: ...

    @abc.abstractmethod
    async def create(self, runtime: RuntimeSpec, disk: DiskSpec) -> str:
        """Make the runtime and start it; return its Jupyter base URL once it answers."""

    @abc.abstractmethod
    async def start(self, runtime: RuntimeSpec) -> str:
        """Start a stopped runtime on its disk; return its Jupyter base URL."""

    @abc.abstractmethod
    async def stop(self, runtime: RuntimeSpec) -> None: ...

    @abc.abstractmethod
    async def delete(self, runtime: RuntimeSpec) -> None:
        """Remove the runtime (never its disk: that is delete_disk's job)."""

    @abc.abstractmethod
    async def set_machine_type(self, runtime: RuntimeSpec, machine_type: str) -> None: ...

    @abc.abstractmethod
    async def status(self, runtime: RuntimeSpec) -> BackendStatus: ...

    @abc.abstractmethod
    async def inventory(self) -> dict[str, BackendStatus]:
        """Every runtime this backend holds, by id, as `status` would say: the reconciler's
        view of the world in one call per sweep (on GCE one list, not one get per
        runtime)."""

    # -- notebook jobs: compute of their own, never a user's runtime -------------------
    # Optional: a backend without them refuses jobs with a clear reason. `handle` is what
    # start_job returned, kept in the database, so a restarted control plane still finds
    # (and can kill) what it started.
    async def start_job(self, job: JobSpec) -> dict[str, object]:
        raise BackendError(f"the {self.name} backend cannot run notebook jobs")

    async def poll_job(self, job: JobSpec, handle: dict[str, object], offset: int) -> JobRun:
        raise BackendError(f"the {self.name} backend cannot run notebook jobs")

    async def kill_job(self, job: JobSpec,  # noqa: B027 (optional hook)
                       handle: dict[str, object]) -> None:
        """Stop everything of the job (its whole process tree, or its VM) now."""

    async def job_outputs(self, job: JobSpec, handle: dict[str, object],
                          max_bytes: int) -> dict[str, bytes]:
        """The files the runner left (output.ipynb, output.html, log.txt), each at most
        `max_bytes`; a partial notebook after a kill."""
        return {}

    async def job_inventory(self) -> list[str]:
        """The ids of every job whose compute exists (for removing what a crash left)."""
        return []

    async def cleanup_job(self, job: JobSpec,  # noqa: B027 (optional hook)
                          handle: dict[str, object]) -> None:
        """Remove the job's compute and files (after its outputs went to the bucket)."""

    async def warm(self) -> None:  # noqa: B027 (optional hook)
        """Get ready for fast starts (a fork server, spare capacity) in the background once
        the control plane is up; starts work without it, only slower."""

    def limits_for(self, machine_type: str) -> Limits | None:
        """What a runtime of this machine type may use, where the backend enforces it below
        the whole machine (a container on a shared host); None where the machine is the
        limit (a VM) or nothing is enforced."""
        return None

    def spares(self) -> dict[str, tuple[str, datetime, datetime | None]]:
        """Spare capacity that bills while it waits for a claim: name -> (machine type,
        since, until: when it was claimed or deleted, reported once), as last seen; none
        by default."""
        return {}

    async def ping(self) -> None:  # noqa: B027 (optional hook)
        """Raise if the backend cannot be reached (readiness)."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release clients and handles (not runtimes: those outlive the control plane)."""
