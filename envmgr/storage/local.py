"""The embedded bucket: a folder per bucket, with GCS-like generations and preconditions that
hold between processes (an flock per bucket around every check-and-change), and atomic
writes (write, fsync, rename), so readers never see half an object."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from envmgr.storage.base import (
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
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield b
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @staticmethod
    def _meta_path(b: Path, name: str) -> Path:
        return b / "meta" / (check_name(name) + ".json")

    def _info(self, b: Path, name: str) -> ObjectInfo | None:
        try:
            m = json.loads(self._meta_path(b, name).read_text())
        except FileNotFoundError:
            return None
        return ObjectInfo(name=name, size=m["size"], generation=m["generation"],
                          crc32c=m["crc32c"], updated=datetime.fromisoformat(m["updated"]))

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
            return (b / "data" / name).read_bytes(), info

    def write(self, bucket: str, name: str, data: bytes,
              if_generation_match: int | None = None,
              content_type: str = "application/octet-stream") -> ObjectInfo:
        with self._locked(bucket, exclusive=True) as b:
            self._check(self._info(b, name), if_generation_match)
            info = ObjectInfo(name=name, size=len(data), generation=self._next_generation(b),
                              crc32c=crc32c(data), updated=datetime.now(UTC))
            self._atomic(b / "data" / check_name(name), data)
            self._atomic(self._meta_path(b, name), json.dumps({
                "size": info.size, "generation": info.generation, "crc32c": info.crc32c,
                "updated": info.updated.isoformat(), "content_type": content_type}).encode())
            return info

    def delete(self, bucket: str, name: str, if_generation_match: int | None = None) -> None:
        with self._locked(bucket, exclusive=True) as b:
            info = self._info(b, name)
            if info is None:
                raise NotFound(name)
            self._check(info, if_generation_match)
            self._meta_path(b, name).unlink()
            (b / "data" / name).unlink(missing_ok=True)

    def list(self, bucket: str, prefix: str = "") -> list[ObjectInfo]:
        with self._locked(bucket, exclusive=False) as b:
            meta = b / "meta"
            if not meta.is_dir():
                return []
            names = sorted(str(p.relative_to(meta))[: -len(".json")]
                           for p in meta.rglob("*.json") if not p.name.startswith("."))
            return [i for n in names if n.startswith(prefix)
                    and (i := self._info(b, n)) is not None]
