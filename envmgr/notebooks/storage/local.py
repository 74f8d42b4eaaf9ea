"""The embedded bucket: a folder per bucket, with GCS-like generations and preconditions that
hold between processes (an flock per bucket around every check-and-change), and atomic
writes (write, fsync, rename), so readers never see half an object.

Like GCS, a bucket is flat: `a.ipynb` and `a.ipynb/b.ipynb` are two unrelated names. Each
object is stored under the SHA-256 of its name (`objects/<hash>` and `<hash>.json` with its
name and metadata), so no name can collide with another as file and folder, and no name
can be long or odd enough to break the file system."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from envmgr.notebooks.storage.base import (
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    Storage,
    check_name,
    crc32c,
)


class LocalStorage(Storage):
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _b(self, bucket: str) -> Path:
        check_name(bucket)
        return self.root / bucket

    @contextlib.contextmanager
    def _locked(self, bucket: str, exclusive: bool) -> Iterator[Path]:
        b = self._b(bucket)
        b.mkdir(parents=True, exist_ok=True)
        with open(b / ".lock", "a+") as f:
            try:
                if (b / "meta").is_dir():  # an earlier release's layout: convert it first
                    fcntl.flock(f, fcntl.LOCK_EX)
                    self._upgrade_layout(b)
                fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                yield b
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @staticmethod
    def _key(name: str) -> str:
        return hashlib.sha256(check_name(name).encode()).hexdigest()

    def _paths(self, b: Path, name: str) -> tuple[Path, Path]:
        key = self._key(name)
        return b / "objects" / key, b / "objects" / f"{key}.json"

    def _info(self, b: Path, name: str) -> ObjectInfo | None:
        try:
            m = json.loads(self._paths(b, name)[1].read_text())
        except FileNotFoundError:
            return None
        return self._from_meta(m)

    @staticmethod
    def _from_meta(m: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(name=str(m["name"]), size=int(m["size"]),
                          generation=int(m["generation"]),
                          crc32c=str(m["crc32c"]),
                          updated=datetime.fromisoformat(str(m["updated"])))

    def _upgrade_layout(self, b: Path) -> None:
        """Buckets written by earlier releases kept `data/<name>` and `meta/<name>.json`
        as nested folders; move them to the flat layout once (under the exclusive lock)."""
        old_meta = b / "meta"
        if not old_meta.is_dir():
            return
        for p in sorted(old_meta.rglob("*.json")):
            name = str(p.relative_to(old_meta))[: -len(".json")]
            with contextlib.suppress(ValueError, FileNotFoundError, json.JSONDecodeError):
                m = json.loads(p.read_text())
                data_file, meta_file = self._paths(b, name)
                self._atomic(data_file, (b / "data" / name).read_bytes())
                self._atomic(meta_file, json.dumps({**m, "name": name}).encode())
        shutil.rmtree(b / "data", ignore_errors=True)
        shutil.rmtree(old_meta, ignore_errors=True)

    @staticmethod
    def _atomic(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _next_generation(self, b: Path) -> int:
        counter = b / ".generation"
        last = int(counter.read_text() or 0) if counter.exists() else 0
        gen = max(time.time_ns() // 1000, last + 1)  # microseconds, like GCS, never repeating
        counter.write_text(str(gen))
        return gen

    @staticmethod
    def _check(info: ObjectInfo | None, if_generation_match: int | None) -> None:
        if if_generation_match is None:
            return
        current = info.generation if info else 0
        if current != if_generation_match:
            raise PreconditionFailed(f"generation is {current}, not {if_generation_match}")

    def ensure_bucket(self, bucket: str) -> None:
        self._b(bucket).mkdir(parents=True, exist_ok=True)

    def stat(self, bucket: str, name: str) -> ObjectInfo | None:
        with self._locked(bucket, exclusive=False) as b:
            return self._info(b, name)

    def read(self, bucket: str, name: str) -> tuple[bytes, ObjectInfo]:
        with self._locked(bucket, exclusive=False) as b:
            info = self._info(b, name)
            if info is None:
                raise NotFound(name)
            return self._paths(b, name)[0].read_bytes(), info

    def write(self, bucket: str, name: str, data: bytes,
              if_generation_match: int | None = None,
              content_type: str = "application/octet-stream") -> ObjectInfo:
        with self._locked(bucket, exclusive=True) as b:
            self._check(self._info(b, name), if_generation_match)
            info = ObjectInfo(name=name, size=len(data), generation=self._next_generation(b),
                              crc32c=crc32c(data), updated=datetime.now(UTC))
            data_file, meta_file = self._paths(b, name)
            self._atomic(data_file, data)
            self._atomic(meta_file, json.dumps({
                "name": name, "size": info.size, "generation": info.generation,
                "crc32c": info.crc32c, "updated": info.updated.isoformat(),
                "content_type": content_type}).encode())
            return info

    def delete(self, bucket: str, name: str, if_generation_match: int | None = None) -> None:
        with self._locked(bucket, exclusive=True) as b:
            info = self._info(b, name)
            if info is None:
                raise NotFound(name)
            self._check(info, if_generation_match)
            data_file, meta_file = self._paths(b, name)
            meta_file.unlink()
            data_file.unlink(missing_ok=True)

    def list(self, bucket: str, prefix: str = "") -> list[ObjectInfo]:
        with self._locked(bucket, exclusive=False) as b:
            objects = b / "objects"
            if not objects.is_dir():
                return []
            found = []
            for p in objects.glob("*.json"):
                with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                    info = self._from_meta(json.loads(p.read_text()))
                    if info.name.startswith(prefix):
                        found.append(info)
            return sorted(found, key=lambda i: i.name)
