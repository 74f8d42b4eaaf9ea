"""The sync agent of one runtime: localizes notebooks of its workspace to the disk,
delocalizes edit-mode saves back, and holds (renews, releases) the edit locks, all through
the control plane's runtime API. Which workspace and whose locks is the control plane's
to say (`whoami`); nothing here names a bucket.

Its record of what it localized (generation and CRC32C of each copy) lives on the disk in
`.envmgr/sync.json`, so it survives pauses. Playground copies are recorded too but are
never uploaded, locked or deleted remotely."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from envmgr_jupyter.client import NotFound, Refused, RuntimeApi, crc32c

MODES = ("edit", "playground")


@dataclass
class Entry:
    workspace: str
    path: str
    mode: str
    generation: int
    crc32c: str
    open: bool = True
    lock_lost: bool = False
    lock_holder: str = ""
    lock_expires_at: str = ""
    # A standing conflict: the copy the user's saves go to (updated in place, one per
    # conflict), the control plane's words, and when the last save went there.
    conflict_path: str | None = None
    conflict_generation: int = 0
    conflict_message: str = ""
    conflict_at: str = ""


def _entry(raw: dict[str, Any]) -> Entry:
    names = {f.name for f in dataclasses.fields(Entry)}
    return Entry(**{k: v for k, v in raw.items() if k in names})  # older records had more


class Agent:
    def __init__(self, root: Path, api: RuntimeApi, renew_seconds: float = 60,
                 idle_limit_seconds: float = 3600) -> None:
        self.root = root
        self.api = api
        self.renew = renew_seconds
        self.idle_limit = idle_limit_seconds
        # local path -> tab -> when it last said it has the notebook open (monotonic);
        # local path -> when its lock was last renewed. Memory only: after a restart of
        # this server, the tabs say it again within a renew period.
        self.claims: dict[str, dict[str, float]] = {}
        self.renewed: dict[str, float] = {}
        self._workspace: str | None = None
        self._state_file = root / ".envmgr" / "sync.json"
        self._mutex = threading.RLock()
        self.entries: dict[str, Entry] = {}
        if self._state_file.exists():
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                raw = json.loads(self._state_file.read_text())
                self.entries = {k: _entry(v) for k, v in raw.items()}

    @property
    def workspace(self) -> str:
        if self._workspace is None:
            self._workspace = self.api.whoami()["workspace"]
        return self._workspace

    def _save_state(self) -> None:
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: asdict(v) for k, v in self.entries.items()}))
        os.replace(tmp, self._state_file)

    def local_path(self, mode: str, path: str) -> str:
        return f"{self.workspace}/{mode}/{path}"

    def entry_for(self, local: str) -> Entry | None:
        return self.entries.get(local.strip("/"))

    # -- localize -----------------------------------------------------------------
    def localize(self, path: str, mode: str) -> dict[str, Any]:
        """Raises Locked (edit, someone else holds it), NotFound or Refused."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        local = self.local_path(mode, path)
        target = self.root / local
        with self._mutex:
            lock = self.api.lock(path) if mode == "edit" else None
            old = self.entries.get(local)
            if mode == "playground" and target.exists() and old is not None:
                old.open = True  # a private copy: keep the user's work as it is
                self._save_state()
                return {"local_path": local, "generation": old.generation, "lock": None}
            if mode == "edit" and old is not None and target.exists():
                self._delocalize(local, old)  # unsent local work goes up (or to a copy) first
            data, generation, crc = self.api.read(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.envmgr-tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            entry = self.entries[local] = Entry(self.workspace, path, mode, generation, crc)
            if mode == "edit":  # the page that asked has two renew periods to say it is there
                self.claims[local] = {"localize": time.monotonic()}
                self.renewed[local] = time.monotonic()
            if lock is not None:
                entry.lock_holder, entry.lock_expires_at = lock.holder, lock.expires_at.isoformat()
            self._save_state()
        return {"local_path": local, "generation": generation,
                "lock": {"holder": lock.holder, "expires_at": lock.expires_at.isoformat()}
                if lock else None}

    # -- delocalize ---------------------------------------------------------------
    def _delocalize(self, local: str, entry: Entry) -> dict[str, Any]:
        data = (self.root / local).read_bytes()
        if crc32c(data) == entry.crc32c:
            return {"status": "unchanged", "generation": entry.generation,
                    "conflict_path": None, "message": ""}
        standing = (entry.conflict_path, entry.conflict_generation) \
            if entry.conflict_path else None
        res = self.api.save(entry.path, data, entry.generation, entry.crc32c, edit=True,
                            conflict=standing)
        if res.get("lock_expires_at"):
            entry.lock_expires_at, entry.lock_lost = res["lock_expires_at"], False
        if res["status"] == "saved":
            entry.generation, entry.crc32c = res["generation"], res["crc32c"]
            entry.conflict_path, entry.conflict_generation, entry.conflict_message = None, 0, ""
        elif res["status"] == "conflict":
            entry.conflict_path = res["conflict_path"]
            entry.conflict_generation = res.get("conflict_generation") or 0
            entry.conflict_message = res.get("message") or ""
            entry.conflict_at = datetime.now(UTC).isoformat()
        self._save_state()
        return {k: res.get(k) for k in ("status", "generation", "conflict_path", "message")}

    def on_save(self, local: str) -> dict[str, Any] | None:
        """After Jupyter saved a file: upload it if it is an edit-mode copy. Raises Refused
        when the control plane will not take it (the owner left the workspace)."""
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
            if new.startswith(prefix) and new.endswith(".ipynb"):
                moved = Entry(entry.workspace, new.removeprefix(prefix), "edit", 0, "")
                self.entries[new] = moved
                self._delocalize(new, moved)
                if moved.generation:  # the new object exists: retire the old one if unchanged
                    with contextlib.suppress(NotFound, Refused):
                        self.api.delete(entry.path, entry.generation)
            with contextlib.suppress(NotFound, Refused):
                self.api.release(entry.path)
            self._save_state()

    def on_delete(self, local: str) -> None:
        with self._mutex:
            entry = self.entry_for(local)
            if entry is None:
                return
            self.entries.pop(local.strip("/"))
            if entry.mode == "edit":
                # only the version this user had; a newer one by someone else stays
                with contextlib.suppress(NotFound, Refused):
                    self.api.delete(entry.path, entry.generation)
                with contextlib.suppress(NotFound, Refused):
                    self.api.release(entry.path)
            self._save_state()

    # -- locks: held while a live tab of their holder has the notebook open ---------
    def presence(self, tab: str, local_paths: list[str], idle_seconds: float,
                 closing: bool = False) -> dict[str, Any]:
        """A tab says which notebooks it has open, and how long since a person used it.
        Its edit locks are renewed from here (at most once per renew period each), taken
        again if a live tab comes back to a notebook let go, and let go (saved first) at
        once when the last tab that had one closes. Returns what the page needs to know."""
        now = time.monotonic()
        live = not closing and idle_seconds < self.idle_limit
        with self._mutex:
            for claims in self.claims.values():
                claims.pop(tab, None)
            for local in {p.strip("/") for p in local_paths}:
                entry = self.entries.get(local)
                if entry is None or entry.mode != "edit" or not live:
                    continue
                claims = self.claims.setdefault(local, {})
                claims.pop("localize", None)  # a tab speaks for it now
                claims[tab] = now
                if not entry.open or now - self.renewed.get(local, -1e9) >= self.renew / 2:
                    self._hold(local, entry)
            if closing:
                self.let_go(now)
        return {"renew_seconds": self.renew, "idle_limit_seconds": self.idle_limit}

    def _hold(self, local: str, entry: Entry) -> None:
        """Take or renew the lock; a lock someone else took meanwhile is lost (the user's
        saves then go to a conflict copy, never over the other's work)."""
        try:
            got = self.api.lock(entry.path)
        except Exception:
            entry.lock_lost = True
        else:
            entry.lock_expires_at, entry.lock_holder = got.expires_at.isoformat(), got.holder
            entry.lock_lost = False
        entry.open = True
        self.renewed[local] = time.monotonic()
        self._save_state()

    def let_go(self, now: float | None = None) -> list[str]:
        """Close (save, then release) every open edit copy no live tab claimed in the last
        two renew periods: a tab that closed, crashed or went idle past the limit, or a
        machine that went away. The lock's TTL (three periods) covers this runtime dying."""
        now = time.monotonic() if now is None else now
        gone = []
        with self._mutex:
            for local, entry in self.entries.items():
                claims = {t: at for t, at in self.claims.get(local, {}).items()
                          if now - at < 2 * self.renew}
                self.claims[local] = claims
                if entry.mode == "edit" and entry.open and not claims:
                    gone.append(local)
            for local in gone:
                try:
                    self.close(self.entries[local].path)
                except (Refused, NotFound):
                    self.entries[local].open = False
                self.renewed.pop(local, None)
            if gone:
                self._save_state()
        return gone

    def close(self, path: str, mode: str = "edit") -> dict[str, Any] | None:
        local = self.local_path(mode, path)
        with self._mutex:
            entry = self.entries.get(local)
            if entry is None:
                return None
            result = None
            if entry.mode == "edit" and (self.root / local).exists():
                result = self._delocalize(local, entry)
                self.api.release(entry.path)
            entry.open = False
            self._save_state()
            return result

    def flush(self) -> list[dict[str, Any]]:
        """Before a pause: every open edit-mode copy goes up, and its lock is released."""
        out = []
        with self._mutex:
            for local, entry in list(self.entries.items()):
                if entry.mode == "edit" and entry.open:
                    try:
                        res = self.close(entry.path)
                    except (Refused, NotFound) as exc:
                        res = {"status": "refused", "message": str(exc)}
                    out.append({"path": local, **(res or {})})
        return out

    def status(self, path: str, mode: str = "edit") -> dict[str, Any]:
        local = self.local_path(mode, path)
        entry = self.entries.get(local)
        if entry is None:
            return {"path": path, "status": "not_localized"}
        target = self.root / local
        try:
            remote = self.api.stat(entry.path)
        except NotFound:
            state = "remote_not_found"
        else:
            if remote != entry.generation:
                state = "remote_changed"
            elif target.exists() and crc32c(target.read_bytes()) != entry.crc32c:
                state = "local_changed"
            else:
                state = "live"
        return {"path": path, "mode": entry.mode, "status": state,
                "generation": entry.generation, "lock_lost": entry.lock_lost}

    def info(self, local: str) -> dict[str, Any]:
        """What the page shows about a file of this disk: its mode, the lock, a standing
        conflict. Local state only (no call to the control plane): the page asks often."""
        local = local.strip("/")
        entry = self.entries.get(local)
        if entry is None:
            parts = local.split("/", 2)
            mode = parts[1] if len(parts) == 3 and parts[1] in MODES else None
            return {"local_path": local, "tracked": False, "mode": mode,
                    "workspace": self._workspace}
        return {"local_path": local, "tracked": True, "mode": entry.mode,
                "workspace": entry.workspace, "path": entry.path, "open": entry.open,
                "lock": {"holder": entry.lock_holder, "expires_at": entry.lock_expires_at,
                         "lost": entry.lock_lost} if entry.mode == "edit" else None,
                "conflict": {"path": entry.conflict_path, "message": entry.conflict_message,
                             "at": entry.conflict_at} if entry.conflict_path else None}
