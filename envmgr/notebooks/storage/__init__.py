"""Bucket backends: `local` (a folder per bucket, the embedded default) and `gcs`."""

from __future__ import annotations

from envmgr.notebooks.storage.base import Storage
from envmgr.settings import Settings


def load_storage(settings: Settings) -> Storage:
    if settings.storage == "local":
        from envmgr.notebooks.storage.local import LocalStorage
        return LocalStorage(settings.storage_root or settings.data_dir / "buckets")
    if settings.storage == "gcs":
        from envmgr.notebooks.storage.gcs import GcsStorage
        return GcsStorage(settings.gcs_project, settings.gcs_endpoint)
    raise ValueError(f"unknown storage {settings.storage!r}; use 'local' or 'gcs'")
