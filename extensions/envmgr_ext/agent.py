"""The sync agent of one runtime: localizes notebooks from the workspace bucket to the disk,
delocalizes edit-mode saves back, and holds (renews, releases) the edit locks.

Its record of what it localized (bucket generation and CRC32C of each copy) lives on the
disk in `.envmgr/sync.json`, so it survives pauses. Playground copies are recorded too but
are never uploaded, locked or deleted remotely."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from envmgr.notebook_sync import (
    NOTEBOOKS,
    acquire_lock,
    clean_path,
    delocalize,
    release_lock,
    sync_status,
)
from envmgr.settings import Settings
from envmgr.storage import load_storage
from envmgr.storage.base import NotFound, Storage, StorageError
from envmgr.timeutil import utcnow

MODES = ("edit", "playground")


@dataclass
class Entry:
    workspace: str
    bucket: str
    path: str
    mode: str
    generation: int
    crc32c: str
    open: bool = True
    lock_lost: bool = False


class Agent:
    def __init__(self, root: Path, storage: Storage, owner: str, lock_ttl: float) -> None:
        self.root = root
        self.storage = storage
        self.owner = owner
        self.lock_ttl = lock_ttl
        self._state_file = root / ".envmgr" / "sync.json"
        self._mutex = threading.RLock()
        self.entries: dict[str, Entry] = {}
        if self._state_file.exists():
            raw = json.loads(self._state_file.read_text())
            self.entries = {k: Entry(**v) for k, v in raw.items()}

    @classmethod
    def from_environment(cls, root: Path) -> Agent:
        settings = Settings()
        return cls(root, load_storage(settings), os.environ.get("ENVMGR_RUNTIME_OWNER", "unknown"),
                   settings.lock_ttl_seconds)

    def _save_state(self) -> None:
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: asdict(v) for k, v in self.entries.items()}))
        os.replace(tmp, self._state_file)

    @staticmethod
    def local_path(workspace: str, mode: str, path: str) -> str:
        return f"{workspace}/{mode}/{path}"

    def entry_for(self, local: str) -> Entry | None:
        return self.entries.get(local.strip("/"))

    # -- localize -----------------------------------------------------------------
    def localize(self, workspace: str, bucket: str, path: str, mode: str) -> dict[str, Any]:
        """Raises Locked (edit, someone else holds it) or NotFound (not in the bucket)."""
        clean_path(path)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        local = self.local_path(workspace, mode, path)
        target = self.root / local
        with self._mutex:
            lock = None
            if mode == "edit":
                lock = acquire_lock(self.storage, bucket, path, self.owner, self.lock_ttl,
                                    utcnow())
            old = self.entries.get(local)
            if mode == "playground" and target.exists() and old is not None:
                old.open = True  # a private copy: keep the user's work as it is
                self._save_state()
                return {"local_path": local, "generation": old.generation, "lock": None}
            if mode == "edit" and old is not None and target.exists():
                self._delocalize(local, old)  # unsent local work goes up (or to a copy) first
            data, info = self.storage.read(bucket, NOTEBOOKS + path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.envmgr-tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            self.entries[local] = Entry(workspace, bucket, path, mode, info.generation,
                                        info.crc32c)
            self._save_state()
        return {"local_path": local, "generation": info.generation,
                "lock": {"holder": lock.holder, "expires_at": lock.expires_at.isoformat()}
                if lock else None}

    # -- delocalize ---------------------------------------------------------------
    def _delocalize(self, local: str, entry: Entry) -> dict[str, Any]:
        data = (self.root / local).read_bytes()
        res = delocalize(self.storage, entry.bucket, entry.path, data, entry.generation,
                         entry.crc32c, self.owner, self.lock_ttl, utcnow())
        if res.status == "saved":
            entry.generation, entry.crc32c = res.generation, res.crc32c
        self._save_state()
        return {"status": res.status, "generation": res.generation,
                "conflict_path": res.conflict_path, "message": res.message}

    def on_save(self, local: str) -> dict[str, Any] | None:
        """After Jupyter saved a file: upload it if it is an edit-mode copy."""
        with self._mutex:
            entry = self.entry_for(local)
            if entry is None or entry.mode != "edit":
                return None
            return self._delocalize(local.strip("/"), entry)

    def on_rename(self, old: str, new: str) -> None:
        """Mirror a rename inside the edit folder: the new name is uploaded as a new object
        (never over an existing one), the old object and its lock are let go."""
        with self._mutex:
            entry = self.entry_for(old)
            if entry is None or entry.mode != "edit":
                return
            prefix = f"{entry.workspace}/edit/"
            new = new.strip("/")
            self.entries.pop(old.strip("/"))
            if not new.startswith(prefix) or not new.endswith(".ipynb"):
                release_lock(self.storage, entry.bucket, entry.path, self.owner, utcnow())
                self._save_state()
                return
            moved = Entry(entry.workspace, entry.bucket, new.removeprefix(prefix), "edit", 0, "")
            self.entries[new] = moved
            self._delocalize(new, moved)
            if moved.generation:  # the new object exists: retire the old one if unchanged
                # changed meanwhile? then someone else's version stays
                with contextlib.suppress(StorageError):
                    self.storage.delete(entry.bucket, NOTEBOOKS + entry.path,
                                        if_generation_match=entry.generation)
            release_lock(self.storage, entry.bucket, entry.path, self.owner, utcnow())
            self._save_state()

    def on_delete(self, local: str) -> None:
        with self._mutex:
            entry = self.entry_for(local)
            if entry is None:
                return
            self.entries.pop(local.strip("/"))
            if entry.mode == "edit":
                # only the version this user had; a newer one by someone else stays
                with contextlib.suppress(StorageError):
                    self.storage.delete(entry.bucket, NOTEBOOKS + entry.path,
                                        if_generation_match=entry.generation)
                release_lock(self.storage, entry.bucket, entry.path, self.owner, utcnow())
            self._save_state()

    # -- locks, close, flush, status ----------------------------------------------
    def renew_all(self) -> None:
        with self._mutex:
            for entry in self.entries.values():
                if entry.mode == "edit" and entry.open and not entry.lock_lost:
                    try:
                        acquire_lock(self.storage, entry.bucket, entry.path, self.owner,
                                     self.lock_ttl, utcnow())
                    except Exception:
                        entry.lock_lost = True
            self._save_state()

    def close(self, workspace: str, path: str, mode: str = "edit") -> dict[str, Any] | None:
        local = self.local_path(workspace, mode, clean_path(path))
        with self._mutex:
            entry = self.entries.get(local)
            if entry is None:
                return None
            result = None
            if entry.mode == "edit" and (self.root / local).exists():
                result = self._delocalize(local, entry)
                release_lock(self.storage, entry.bucket, entry.path, self.owner, utcnow())
            entry.open = False
            self._save_state()
            return result

    def flush(self) -> list[dict[str, Any]]:
        """Before a pause: every open edit-mode copy goes up, and its lock is released."""
        out = []
        with self._mutex:
            for local, entry in list(self.entries.items()):
                if entry.mode == "edit" and entry.open:
                    res = self.close(entry.workspace, entry.path)
                    out.append({"path": local, **(res or {})})
        return out

    def status(self, workspace: str, path: str, mode: str = "edit") -> dict[str, Any]:
        local = self.local_path(workspace, mode, clean_path(path))
        entry = self.entries.get(local)
        if entry is None:
            return {"path": path, "status": "not_localized"}
        target = self.root / local
        data = target.read_bytes() if target.exists() else None
        try:
            state = sync_status(self.storage, entry.bucket, entry.path, data, entry.generation,
                                entry.crc32c)
        except NotFound:
            state = "remote_not_found"
        return {"path": path, "mode": entry.mode, "status": state,
                "generation": entry.generation, "lock_lost": entry.lock_lost}
