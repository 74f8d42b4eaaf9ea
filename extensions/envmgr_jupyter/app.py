"""The extension app: HTTP endpoints the control plane (and the user's own pages) call on
this runtime, and the lock-renewal timer. Configured by `EnvmgrJupyter.control_url` and
`EnvmgrJupyter.runtime_token` in the runtime's Jupyter config (never on a command line)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.application import ExtensionApp
from tornado import web
from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Float, Unicode

from envmgr_jupyter.agent import Agent
from envmgr_jupyter.client import Locked, NotFound, Refused, RuntimeApi
from envmgr_jupyter.kernels import SpareKernelManager, until_ready

_AGENT: Agent | None = None


def current_agent() -> Agent | None:
    """The agent of this server (None when the extension is not configured)."""
    return _AGENT


class _Base(APIHandler):
    @property
    def agent(self) -> Agent:
        if _AGENT is None:
            raise web.HTTPError(503, "envmgr_jupyter is not configured on this server")
        return _AGENT

    def body(self, allowed: set[str]) -> dict[str, Any]:
        """The JSON body; keys beyond `allowed` are refused (a caller never names a
        workspace or a bucket: this runtime is bound to one)."""
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as exc:
            raise web.HTTPError(400, "body must be JSON") from exc
        if not isinstance(body, dict):
            raise web.HTTPError(400, "body must be a JSON object")
        extra = set(body) - allowed
        if extra:
            raise web.HTTPError(422, f"unknown fields {sorted(extra)}; this runtime's "
                                "workspace is decided by the control plane")
        return body

    async def run(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except Locked as exc:
            self.set_status(409)
            self.finish({"error": "locked", "holder": exc.lock.holder,
                         "expires_at": exc.lock.expires_at.isoformat()})
            return None
        except NotFound as exc:
            raise web.HTTPError(404, f"not in the workspace: {exc}") from exc
        except Refused as exc:
            self.set_status(exc.status)
            self.finish({"error": exc.code, "message": exc.message})
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise web.HTTPError(422, str(exc)) from exc


def _kernel_name(path: Path) -> str | None:
    """The kernel a notebook names in its metadata (JupyterLab would start that one)."""
    try:
        spec = json.loads(path.read_bytes()).get("metadata", {}).get("kernelspec", {})
    except (OSError, ValueError, AttributeError):
        return None
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) and name else None


class LocalizeHandler(_Base):
    @web.authenticated
    async def post(self) -> None:
        b = self.body({"path", "mode"})
        out = await self.run(self.agent.localize, b.get("path"), b.get("mode", "edit"))
        if out is not None:
            if self.settings.get("envmgr_kernel_on_open", True):
                await self.start_kernel(out["local_path"])
            self.finish(out)

    async def start_kernel(self, local: str) -> None:
        """The notebook's first kernel, now: the spare if one is ready (see `kernels`), else
        started (its launch, not its boot, is waited for). It boots while JupyterLab's page
        loads, and JupyterLab, finding a session for the notebook's path, connects to it
        instead of starting one. Nothing here fails the open: without it JupyterLab starts a
        kernel itself, as before."""
        sessions = self.settings["session_manager"]
        manager = self.settings["kernel_manager"]
        try:
            if await sessions.session_exists(path=local):
                return
            name = await asyncio.to_thread(_kernel_name, self.agent.root / local) \
                or manager.default_kernel_name
            spare = None
            if isinstance(manager, SpareKernelManager):
                kernel_path = await ensure_async(
                    self.settings["contents_manager"].get_kernel_path(path=local))
                spare = await manager.take_spare(
                    name, kernel_path, sessions.get_kernel_env(local, Path(local).name)
                    .get("JPY_SESSION_NAME", local))
                manager.schedule_spare()  # the next one, after this page has loaded
            model = await sessions.create_session(path=local, name=Path(local).name,
                                                  type="notebook", kernel_name=name,
                                                  kernel_id=spare)
        except Exception:  # a kernel that will not start is JupyterLab's to report
            self.log.warning("no kernel started ahead of the page for %s", local,
                             exc_info=True)
            return
        if spare is None:
            kernel = manager.get_kernel(model["kernel"]["id"])
            _BACKGROUND.add(task := asyncio.ensure_future(until_ready(kernel, local)))
            task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: set[asyncio.Future[bool]] = set()  # tasks must be referenced until they end


class SpareHandler(APIHandler):
    """The spare kernel's state (for the benchmark and the tests: is the next open's
    kernel already booted?)."""

    @web.authenticated
    async def get(self) -> None:
        manager = self.settings["kernel_manager"]
        self.finish(manager.spare_state() if isinstance(manager, SpareKernelManager)
                    else {"enabled": False, "ready": False, "id": None})


class CloseHandler(_Base):
    @web.authenticated
    async def post(self) -> None:
        b = self.body({"path", "mode"})
        out = await self.run(self.agent.close, b.get("path"), b.get("mode", "edit"))
        if not self._finished:
            self.finish({"result": out})


class FlushHandler(_Base):
    @web.authenticated
    async def post(self) -> None:
        self.finish({"flushed": await self.run(self.agent.flush)})


class StatusHandler(_Base):
    @web.authenticated
    async def get(self) -> None:
        out = await self.run(self.agent.status, self.get_argument("path"),
                             self.get_argument("mode", "edit"))
        if out is not None:
            self.finish(out)


class InfoHandler(_Base):
    """The page's view of one file (mode, lock, conflict); asked every few seconds, so it is
    not activity (it must not keep an idle runtime from autopause)."""

    _track_activity = False

    @web.authenticated
    async def get(self) -> None:
        self.finish(self.agent.info(self.get_argument("path")))


class PresenceHandler(_Base):
    """A JupyterLab tab's heartbeat: the notebooks it has open and how long since a person
    used it (envmgr's lab extension sends it every renew period, and once more, `closing`,
    when the tab goes). Edit locks are held by these, not by this server: a tab that closes
    or crashes lets its locks go. Not activity: an open tab is not a person."""

    _track_activity = False

    @web.authenticated
    async def post(self) -> None:
        b = self.body({"tab", "open", "idle_seconds", "closing"})
        tab, paths, idle = b.get("tab"), b.get("open", []), b.get("idle_seconds", 0)
        if not isinstance(tab, str) or not 0 < len(tab) <= 100:
            raise web.HTTPError(422, "tab: a string of 1 to 100 characters naming the tab")
        if not isinstance(paths, list) or len(paths) > 1000 or \
                not all(isinstance(p, str) for p in paths):
            raise web.HTTPError(422, "open: a list of at most 1000 local paths")
        if isinstance(idle, bool) or not isinstance(idle, (int, float)) or idle < 0:
            raise web.HTTPError(422, "idle_seconds: a number of seconds, 0 or more")
        out = await self.run(self.agent.presence, tab, paths, float(idle),
                             bool(b.get("closing")))
        if out is not None:
            self.finish(out)


class EnvmgrJupyter(ExtensionApp):
    name = "envmgr_jupyter"
    control_url = Unicode("", config=True, help="The control plane's URL, as this runtime "
                          "reaches it.")
    control_socket = Unicode("", config=True, help="A Unix socket that leads to the control "
                             "plane (a runtime with no network of its own reaches it there).")
    runtime_token = Unicode("", config=True, help="This runtime's token for the runtime API.")
    lock_renew_seconds = Float(60.0, config=True, help="How often a tab says it is there and "
                               "its edit locks are renewed; a lock is let go about three "
                               "of these after its last tab closed.")
    lock_idle_seconds = Float(3600.0, config=True, help="A tab nobody used for this long "
                              "no longer holds its edit locks (its notebooks are saved).")
    kernel_on_open = Bool(True, config=True, help="Start a notebook's kernel when it is "
                          "localized, so it boots while JupyterLab's page loads.")

    def initialize_handlers(self) -> None:
        self.handlers.extend([
            (r"/envmgr/localize", LocalizeHandler),
            (r"/envmgr/close", CloseHandler),
            (r"/envmgr/flush", FlushHandler),
            (r"/envmgr/status", StatusHandler),
            (r"/envmgr/info", InfoHandler),
            (r"/envmgr/spare", SpareHandler),
            (r"/envmgr/presence", PresenceHandler),
        ])

    def initialize_settings(self) -> None:
        global _AGENT
        self.settings["envmgr_kernel_on_open"] = self.kernel_on_open
        if not self.control_url or not self.runtime_token:
            self.log.warning("envmgr_jupyter: no control_url/runtime_token configured; "
                             "notebook sync is off")
            return
        assert self.serverapp is not None  # set by Jupyter before an extension loads
        agent = _AGENT = Agent(Path(self.serverapp.root_dir),
                               RuntimeApi(self.control_url, self.runtime_token,
                                          socket=self.control_socket or None),
                               self.lock_renew_seconds, self.lock_idle_seconds)

        async def let_go() -> None:
            await asyncio.to_thread(agent.let_go)
        self._renewer = PeriodicCallback(let_go, self.lock_renew_seconds * 1000)
        self._renewer.start()

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """The loop runs: the first spare kernel, once the server has settled."""
        manager = serverapp.kernel_manager
        if isinstance(manager, SpareKernelManager):
            manager.schedule_spare()
