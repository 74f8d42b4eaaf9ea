"""The extension app: HTTP endpoints the control plane calls, and the lock-renewal timer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.application import ExtensionApp
from tornado import web
from tornado.ioloop import PeriodicCallback

from envmgr.notebook_sync import BadPath, Locked
from envmgr.settings import Settings
from envmgr.storage.base import NotFound
from extensions.envmgr_ext.agent import Agent

_AGENT: Agent | None = None


def get_agent(root: str | Path) -> Agent:
    """One agent per server, shared by the handlers and the contents manager."""
    global _AGENT
    if _AGENT is None:
        _AGENT = Agent.from_environment(Path(root))
    return _AGENT


class _Base(APIHandler):
    @property
    def agent(self) -> Agent:
        return get_agent(self.settings["server_root_dir"])

    def body(self) -> dict[str, Any]:
        try:
            return json.loads(self.request.body or b"{}")
        except ValueError as exc:
            raise web.HTTPError(400, "body must be JSON") from exc

    async def run(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except Locked as exc:
            self.set_status(409)
            self.finish({"error": "locked", "holder": exc.lock.holder,
                         "expires_at": exc.lock.expires_at.isoformat()})
            return None
        except NotFound as exc:
            raise web.HTTPError(404, f"not in the bucket: {exc}") from exc
        except (BadPath, ValueError, KeyError) as exc:
            raise web.HTTPError(422, str(exc)) from exc


class LocalizeHandler(_Base):
    @web.authenticated
    async def post(self) -> None:
        b = self.body()
        out = await self.run(self.agent.localize, b["workspace"], b["bucket"], b["path"],
                             b.get("mode", "edit"))
        if out is not None:
            self.finish(out)


class CloseHandler(_Base):
    @web.authenticated
    async def post(self) -> None:
        b = self.body()
        out = await self.run(self.agent.close, b["workspace"], b["path"], b.get("mode", "edit"))
        if not self._finished:
            self.finish({"result": out})


class FlushHandler(_Base):
    @web.authenticated
    async def post(self) -> None:
        self.finish({"flushed": await self.run(self.agent.flush)})


class StatusHandler(_Base):
    @web.authenticated
    async def get(self) -> None:
        out = await self.run(self.agent.status, self.get_argument("workspace"),
                             self.get_argument("path"), self.get_argument("mode", "edit"))
        self.finish(out)


class EnvmgrExtension(ExtensionApp):
    name = "envmgr_ext"

    def initialize_handlers(self) -> None:
        self.handlers.extend([
            (r"/envmgr/localize", LocalizeHandler),
            (r"/envmgr/close", CloseHandler),
            (r"/envmgr/flush", FlushHandler),
            (r"/envmgr/status", StatusHandler),
        ])

    def initialize_settings(self) -> None:
        agent = get_agent(self.serverapp.root_dir)
        every = Settings().lock_renew_seconds * 1000

        async def renew() -> None:
            await asyncio.to_thread(agent.renew_all)
        self._renewer = PeriodicCallback(renew, every)
        self._renewer.start()
