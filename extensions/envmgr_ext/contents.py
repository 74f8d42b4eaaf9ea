"""Jupyter's file contents manager, plus: every save in an edit folder goes to the bucket
(the outcome is in the save response under `envmgr_sync`), and renames and deletes there
are mirrored."""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

from extensions.envmgr_ext.app import get_agent


class SyncContentsManager(AsyncLargeFileManager):
    async def save(self, model: dict[str, Any], path: str = "") -> dict[str, Any]:
        result = await super().save(model, path)
        chunk = model.get("chunk")
        if chunk is None or chunk == -1:  # whole file written (or the last chunk)
            sync = await asyncio.to_thread(get_agent(self.root_dir).on_save, path)
            if sync is not None:
                result["envmgr_sync"] = sync
        return result

    async def rename_file(self, old_path: str, new_path: str) -> None:
        await super().rename_file(old_path, new_path)
        await asyncio.to_thread(get_agent(self.root_dir).on_rename, old_path, new_path)

    async def delete_file(self, path: str) -> None:
        await super().delete_file(path)
        await asyncio.to_thread(get_agent(self.root_dir).on_delete, path)
