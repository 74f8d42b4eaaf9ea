"""The compute backend interface, as small as JupyterHub's Spawner.

Every method must be idempotent: after a crash the worker calls the same step again, and
a step that already happened must simply succeed."""

from __future__ import annotations

import abc
import contextvars
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class DiskSpec:
    id: str
    workspace: str
    owner: str
    size_gb: int
    type: str


@dataclass(frozen=True)
class BackendStatus:
    state: State
    endpoint: str | None = None  # Jupyter base URL when running
    detail: str | None = None


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

    async def ping(self) -> None:  # noqa: B027 (optional hook)
        """Raise if the backend cannot be reached (readiness)."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release clients and handles (not runtimes: those outlive the control plane)."""
