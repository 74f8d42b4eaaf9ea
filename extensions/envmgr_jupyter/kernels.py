"""A spare kernel, booted ahead of demand: the runtime's kernel manager keeps one kernel of
the default kernelspec started and ready, hidden from the kernel list, and a notebook opened
from the workspace page takes it instead of launching one (a kernel's boot is about a
CPU-second, which otherwise competes with JupyterLab's page load on a small machine).

Taking it moves it to the notebook: its working directory and `JPY_SESSION_NAME` become
what a kernel started for that notebook would have had (as CoCalc's kernel pool does, by
code run silently before anything of the user's). A new spare is started a while after one
is taken, not at once: its boot would land on the page load it was meant to spare. It is a
kernel like any other, the runtime's user's, in the runtime's sandbox."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from jupyter_server.services.kernels.kernelmanager import (
    AsyncMappingKernelManager,
    ServerKernelManager,
)
from jupyter_server.utils import ApiPath
from tornado.ioloop import IOLoop
from traitlets import Bool, Float

from envmgr_jupyter.ipc import with_ipc_channels

READY_SECONDS = 120
# Each kernel of a sandboxed runtime (labconfig names it when ENVMGR_KERNEL_IPC_DIR is set).
IpcKernelManager = with_ipc_channels(ServerKernelManager)


async def until_ready(kernel: Any, what: str) -> bool:
    """Ask a new kernel for its info, as JupyterLab does on connecting: until someone does,
    Jupyter reports it "starting" (autopause would count it busy). False if it never
    answered (logged)."""
    client = kernel.client()
    client.start_channels()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_SECONDS
    try:
        await client.wait_for_ready(timeout=READY_SECONDS)
        # Jupyter's own watch of the kernel's IOPub may have subscribed after the replies'
        # status messages went out (zmq's late joiner): ask again until it has seen one.
        while getattr(kernel, "execution_state", None) == "starting" and loop.time() < deadline:
            client.kernel_info()
            await asyncio.sleep(0.25)
        return True
    except Exception as exc:  # JupyterLab will show the kernel's state
        kernel.log.warning("the kernel started for %s did not become ready: %s", what, exc)
        return False
    finally:
        client.stop_channels()


def machine_busy(load1: float, cores: int, max_load: float) -> bool:
    """Too busy for a spare's boot (a CPU-second it would take from pages loading now, e.g.
    after ten runtimes started at once on one machine)."""
    return max_load > 0 and load1 / cores > max_load


def adopt_code(cwd: str, session_name: str) -> str:
    """What a kernel started in the server's root runs to become a notebook's: its folder
    and session name, no name left behind in the user's namespace."""
    return (f"import os as __envmgr_os\n__envmgr_os.chdir({cwd!r})\n"
            f"__envmgr_os.environ['JPY_SESSION_NAME'] = {session_name!r}\n"
            f"__session__ = {session_name!r}\ndel __envmgr_os\n")


class SpareKernelManager(AsyncMappingKernelManager):
    """Jupyter's kernel manager, plus one spare kernel (`ServerApp.kernel_manager_class`)."""

    spare = Bool(True, config=True, help="Keep one kernel of the default kernelspec booted "
                 "for the next notebook opened.")
    spare_delay_seconds = Float(10.0, config=True, help="How long after the server starts, "
                                "or a spare is taken, the next one is started.")
    spare_max_load = Float(1.0, config=True, help="A spare waits while the machine's "
                           "1-minute load per core is above this (0: never waits).")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._spare_id: str | None = None
        self._spare_ready = False
        self._refill: Any = None
        self._filling: asyncio.Future[None] | None = None

    # -- the spare is nobody's until taken: not listed, not shut down by "shut down all" ----
    def list_kernels(self) -> list[dict[str, Any]]:
        kernels: list[dict[str, Any]] = super().list_kernels()  # type: ignore[no-untyped-call]
        return [k for k in kernels if k["id"] != self._spare_id]

    def spare_state(self) -> dict[str, Any]:
        ready = self._spare_ready and self._spare_id is not None and self._spare_id in self
        return {"enabled": self.spare, "kernel_name": self.default_kernel_name,
                "id": self._spare_id if ready else None, "ready": ready}

    def schedule_spare(self, delay: float | None = None) -> None:
        """Start a spare after `delay` (the configured one), unless one exists; a pending
        start is pushed back (an open just happened: its page is loading)."""
        if not self.spare:
            return
        loop = IOLoop.current()
        if self._refill is not None:
            loop.remove_timeout(self._refill)
        self._refill = loop.call_later(self.spare_delay_seconds if delay is None else delay,
                                       self._start_filling)

    def _start_filling(self) -> None:
        self._refill = None
        if machine_busy(os.getloadavg()[0], os.cpu_count() or 1, self.spare_max_load):
            self.schedule_spare()  # many runtimes just started: their pages come first
            return
        if self._filling is None or self._filling.done():
            self._filling = asyncio.ensure_future(self._fill())

    async def _fill(self) -> None:
        if self._spare_id is not None and self._spare_id in self:
            return
        kernel_id, self._spare_ready = str(uuid.uuid4()), False
        self._spare_id = kernel_id  # hidden from the list while it boots
        try:
            # The environment a session's kernel gets (jupyter-server's own, plus its session
            # name at the move), so that a restart keeps what the move set.
            await self.start_kernel(kernel_id=kernel_id, kernel_name=self.default_kernel_name,
                                    path=ApiPath(""), env=dict(os.environ))
        except Exception:
            self.log.warning("no spare kernel", exc_info=True)
            self._spare_id = None
            return
        ready = await until_ready(self.get_kernel(kernel_id), "a spare")
        if self._spare_id != kernel_id:
            return
        self._spare_ready = ready
        if not ready:  # never answered: not kept hidden for ever (the next open refills)
            self._spare_id = None
            await self.shutdown_kernel(kernel_id, now=True)  # type: ignore[no-untyped-call]

    async def take_spare(self, kernel_name: str, kernel_path: str,
                         session_name: str) -> str | None:
        """The spare kernel, moved to `kernel_path` (the API path a kernel for the notebook
        would start in), or None (none ready, another kernelspec, or it would not move)."""
        kernel_id = self._spare_id
        if not (self.spare and self._spare_ready and kernel_id is not None
                and kernel_id in self and kernel_name == self.default_kernel_name):
            return None
        self._spare_id, self._spare_ready = None, False  # the caller schedules the next
        kernel = self.get_kernel(kernel_id)
        cwd = self.cwd_for_path(kernel_path)  # type: ignore[no-untyped-call]
        if not await _run_silently(kernel, adopt_code(cwd, session_name)):
            await self.shutdown_kernel(kernel_id, now=True)  # type: ignore[no-untyped-call]
            return None
        # A restart launches again with the launch's arguments: the notebook's folder and
        # session name from now on (jupyter_client keeps them in `_launch_args`).
        kernel.update_env(env={"JPY_SESSION_NAME": session_name})
        if isinstance(kernel._launch_args, dict):
            kernel._launch_args["cwd"] = cwd
        return kernel_id


async def _run_silently(kernel: Any, code: str) -> bool:
    """Run `code` in `kernel` (no output, no history, no execution count); True if it ran.
    Sent before the kernel is anyone's, so it runs before any cell of the user's."""
    client = kernel.client()
    client.start_channels()
    try:
        msg_id = client.execute(code, silent=True, store_history=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            reply = await client.get_shell_msg(timeout=deadline - loop.time())
            if reply["parent_header"].get("msg_id") == msg_id:
                ok = reply["content"].get("status") == "ok"
                if not ok:
                    kernel.log.warning("the spare kernel did not move: %s",
                                       reply["content"].get("evalue"))
                return bool(ok)
        return False
    except Exception as exc:
        kernel.log.warning("the spare kernel did not move: %s", exc)
        return False
    finally:
        client.stop_channels()
