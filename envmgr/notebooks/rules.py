"""The rules that keep notebooks safe, shared by the control plane and the Jupyter extension.

Bucket layout: `notebooks/<path>` holds a notebook; `locks/<path>.json` its edit lock,
`{"holder", "expires_at"}`. Locks live in their own objects so they never change the
notebook's generation. A lock is only ever created (`if_generation_match=0`) or overwritten
at the generation just read, so two holders are impossible; releasing overwrites it as
expired (delete preconditions are not needed, which keeps emulators honest too).

A save uploads with `if_generation_match=<the generation this copy came from>`; if the
bucket moved on, or someone else holds the lock, the user's version goes to a conflict
copy and the bucket's notebook is left alone. Nothing is ever lost or silently overwritten."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from envmgr.notebooks.storage.base import NotFound, PreconditionFailed, Storage, crc32c

NOTEBOOKS = "notebooks/"
LOCKS = "locks/"
MAX_PATH = 1024


class BadPath(ValueError):
    pass


def clean_path(path: str, notebook: bool = True) -> str:
    """A notebook path relative to the workspace, or BadPath saying what is allowed."""
    if not isinstance(path, str) or not path or "\\" in path \
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise BadPath("path must be a non-empty relative path without control characters "
                      "or backslashes")
    if path.startswith("/") or len(path) > MAX_PATH:
        raise BadPath(f"path must be relative (no leading '/') and at most {MAX_PATH} chars")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise BadPath("path must not contain '.', '..' or empty segments")
    try:
        if any(len(p.encode()) > 255 for p in parts):  # what a file system allows a name
            raise BadPath("each part of the path may be at most 255 bytes")
    except UnicodeEncodeError:
        raise BadPath("path must be valid Unicode text") from None
    if notebook and not path.endswith(".ipynb"):
        raise BadPath("a workspace's bucket holds notebooks only: the path must end in "
                      f".ipynb (got {path!r}); keep other files on your runtime's disk")
    return path


def path_conflict(storage: Storage, bucket: str, path: str) -> str | None:
    """A notebook that `path` would collide with as file and folder (on a runtime's disk a
    name is one or the other): a notebook at one of its parent folders, or notebooks inside
    `path` as a folder. None if there is none."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        if parent.endswith(".ipynb") and storage.stat(bucket, NOTEBOOKS + parent) is not None:
            return parent
    inside = storage.list(bucket, f"{NOTEBOOKS}{path}/")
    return inside[0].name.removeprefix(NOTEBOOKS) if inside else None


@dataclass(frozen=True)
class Lock:
    holder: str | None
    expires_at: datetime
    generation: int

    def active(self, now: datetime) -> bool:
        return self.holder is not None and self.expires_at > now


class Locked(Exception):
    def __init__(self, lock: Lock) -> None:
        super().__init__(f"locked by {lock.holder} until {lock.expires_at.isoformat()}")
        self.lock = lock


def _lock_name(path: str) -> str:
    return f"{LOCKS}{path}.json"


def read_lock(storage: Storage, bucket: str, path: str) -> Lock | None:
    try:
        data, info = storage.read(bucket, _lock_name(path))
    except NotFound:
        return None
    try:
        body = json.loads(data)
        holder = body.get("holder")
        expires = datetime.fromisoformat(body["expires_at"])
        if expires.tzinfo is None or not (holder is None or isinstance(holder, str)):
            raise ValueError("not a lock")
    except (ValueError, TypeError, KeyError, AttributeError):
        # Unreadable: a free lock at its generation, so the next acquire replaces it.
        return Lock(None, datetime.min.replace(tzinfo=UTC), info.generation)
    return Lock(holder, expires, info.generation)


def _put_lock(storage: Storage, bucket: str, path: str, holder: str | None,
              expires_at: datetime, generation: int) -> Lock:
    body = json.dumps({"holder": holder, "expires_at": expires_at.isoformat()}).encode()
    info = storage.write(bucket, _lock_name(path), body, if_generation_match=generation,
                         content_type="application/json")
    return Lock(holder, expires_at, info.generation)


def acquire_lock(storage: Storage, bucket: str, path: str, holder: str, ttl: float,
                 now: datetime) -> Lock:
    """Take or renew the edit lock; raises Locked if someone else holds it."""
    for _ in range(5):
        current = read_lock(storage, bucket, path)
        if current is not None and current.active(now) and current.holder != holder:
            raise Locked(current)
        try:
            return _put_lock(storage, bucket, path, holder, now + timedelta(seconds=ttl),
                             current.generation if current else 0)
        except PreconditionFailed:
            continue  # someone moved it between our read and write: look again
    current = read_lock(storage, bucket, path)
    raise Locked(current or Lock("unknown", now, 0))


def release_lock(storage: Storage, bucket: str, path: str, holder: str, now: datetime) -> bool:
    current = read_lock(storage, bucket, path)
    if current is None or current.holder != holder:
        return False
    try:
        _put_lock(storage, bucket, path, None, now, current.generation)
    except PreconditionFailed:
        return False
    return True


@dataclass(frozen=True)
class SaveResult:
    status: str  # unchanged | saved | conflict
    generation: int  # the bucket generation this copy now corresponds to
    crc32c: str
    conflict_path: str | None = None
    message: str = ""
    conflict_generation: int = 0  # of the conflict copy: a later save may update it
    lock_expires_at: str | None = None  # edit mode, lock held: the renewed lock's expiry


def conflict_path(path: str, user: str, now: datetime, n: int = 1) -> str:
    stem, ext = posixpath.splitext(path)
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
    return f"{stem} (conflict {user} {stamp}{f' {n}' if n > 1 else ''}){ext}"


def is_conflict_copy_of(copy: str, path: str, user: str) -> bool:
    """Whether `copy` is a name `conflict_path` gives `user`'s conflict copies of `path`."""
    stem, ext = posixpath.splitext(path)
    return copy.startswith(f"{stem} (conflict {user} ") and copy.endswith(f"){ext}")


def _write_conflict_copy(storage: Storage, bucket: str, path: str, data: bytes, user: str,
                         now: datetime, reuse: tuple[str, int] | None) -> tuple[str, int]:
    """The user's conflict copy: `reuse` (the copy this conflict already made, at the
    generation it was left) is updated while it is unchanged, so a conflict that stands
    across saves keeps one copy; otherwise a new object (never over anyone's object)."""
    if reuse is not None and reuse[1] > 0 and is_conflict_copy_of(reuse[0], path, user):
        try:
            info = storage.write(bucket, NOTEBOOKS + reuse[0], data,
                                 if_generation_match=reuse[1],
                                 content_type="application/x-ipynb+json")
            return reuse[0], info.generation
        except PreconditionFailed:
            pass  # changed or deleted since: leave it, make a new one
    for n in range(1, 1000):
        copy = conflict_path(path, user, now, n)
        try:
            info = storage.write(bucket, NOTEBOOKS + copy, data, if_generation_match=0,
                                 content_type="application/x-ipynb+json")
            return copy, info.generation
        except PreconditionFailed:
            continue
    raise RuntimeError(f"no free conflict name for {path}")


def delocalize(storage: Storage, bucket: str, path: str, data: bytes, base_generation: int,
               base_crc32c: str | None, user: str, lock_ttl: float | None,
               now: datetime, reuse: tuple[str, int] | None = None) -> SaveResult:
    """Upload a saved file unless unchanged; never overwrite a newer version or another
    user's locked notebook. `lock_ttl` set: edit mode, the save also renews the lock.
    `reuse`: this conflict's copy so far (see _write_conflict_copy)."""
    crc = crc32c(data)
    if crc == base_crc32c:
        return SaveResult("unchanged", base_generation, crc)
    held, expires = True, None
    if lock_ttl is not None:
        try:
            expires = acquire_lock(storage, bucket, path, user, lock_ttl, now) \
                .expires_at.isoformat()
        except Locked:
            held = False
    if held:
        try:
            info = storage.write(bucket, NOTEBOOKS + path, data,
                                 if_generation_match=base_generation,
                                 content_type="application/x-ipynb+json")
            return SaveResult("saved", info.generation, info.crc32c, lock_expires_at=expires)
        except PreconditionFailed:
            pass
    copy, copy_generation = _write_conflict_copy(storage, bucket, path, data, user, now, reuse)
    why = "someone else holds the edit lock" if not held else \
        "the notebook changed in the bucket since you opened it"
    return SaveResult("conflict", base_generation, base_crc32c or "", copy,
                      f"not saved to {path}: {why}; your version is in {copy}",
                      copy_generation, expires if held else None)


def sync_status(storage: Storage, bucket: str, path: str, local: bytes | None,
                base_generation: int, base_crc32c: str | None) -> str:
    """live | local_changed | remote_changed | remote_not_found."""
    remote = storage.stat(bucket, NOTEBOOKS + path)
    if remote is None:
        return "remote_not_found"
    if remote.generation != base_generation:
        return "remote_changed"
    if local is not None and crc32c(local) != base_crc32c:
        return "local_changed"
    return "live"
