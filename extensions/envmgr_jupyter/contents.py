"""Jupyter's file contents manager, plus: every save in an edit folder goes to the workspace
(the outcome is in the save response under `envmgr_sync`), and renames and deletes there
are mirrored. A save the control plane refuses (the owner is no longer a writer) fails in
Jupyter with the control plane's words; the file stays saved on the disk."""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager
from tornado import web

from envmgr_jupyter.app import current_agent
from envmgr_jupyter.client import Refused


class SyncContentsManager(AsyncLargeFileManager):
    async def save(self, model: dict[str, Any], path: str = "") -> dict[str, Any]:
        result: dict[str, Any] = await super().save(model, path)  # type: ignore[no-untyped-call]
        chunk = model.get("chunk")
        agent = current_agent()
        if agent is not None and (chunk is None or chunk == -1):  # whole file (or last chunk)
            try:
                sync = await asyncio.to_thread(agent.on_save, path)
            except Refused as exc:
                raise web.HTTPError(exc.status, f"Saved on this runtime only, not to the "
                                    f"workspace: {exc.message}", reason=exc.code) from exc
            if sync is not None:
                result["envmgr_sync"] = sync
        return result

    async def rename_file(self, old_path: str, new_path: str) -> None:
        await super().rename_file(old_path, new_path)  # type: ignore[no-untyped-call]
        if (agent := current_agent()) is not None:
            await asyncio.to_thread(agent.on_rename, old_path, new_path)

    async def delete_file(self, path: str) -> None:
        await super().delete_file(path)  # type: ignore[no-untyped-call]
        if (agent := current_agent()) is not None:
            await asyncio.to_thread(agent.on_delete, path)
