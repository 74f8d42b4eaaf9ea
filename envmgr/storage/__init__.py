"""Bucket backends: `local` (a folder per bucket, the embedded default) and `gcs`."""

from __future__ import annotations

from envmgr.settings import Settings
from envmgr.storage.base import Storage


def load_storage(settings: Settings) -> Storage:
    if settings.storage == "local":
        from envmgr.storage.local import LocalStorage
        return LocalStorage(settings.storage_root or settings.data_dir / "buckets")
    if settings.storage == "gcs":
        from envmgr.storage.gcs import GcsStorage
        return GcsStorage(settings.gcs_project, settings.gcs_endpoint)
    raise ValueError(f"unknown storage {settings.storage!r}; use 'local' or 'gcs'")
