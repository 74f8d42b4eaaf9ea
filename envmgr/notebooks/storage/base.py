"""The bucket interface: what notebook sync needs from GCS, and nothing more.

Objects have generations; writes and deletes take `if_generation_match` (0: the object must
not exist), which is all the lock and save rules rely on."""

from __future__ import annotations

import abc
import base64
from dataclasses import dataclass
from datetime import datetime

import google_crc32c


class StorageError(Exception):
    pass


class NotFound(StorageError):
    pass


class PreconditionFailed(StorageError):
    """The object's generation is not the one the caller expected."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    generation: int
    crc32c: str  # base64 of the big-endian CRC32C, as GCS reports it
    updated: datetime


def crc32c(data: bytes) -> str:
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


def check_name(name: str) -> str:
    if not name or name.startswith("/") or "\x00" in name or \
            any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"invalid object name {name!r}")
    return name


class Storage(abc.ABC):
    name: str

    @abc.abstractmethod
    def ensure_bucket(self, bucket: str) -> None: ...

    @abc.abstractmethod
    def stat(self, bucket: str, name: str) -> ObjectInfo | None: ...

    @abc.abstractmethod
    def read(self, bucket: str, name: str) -> tuple[bytes, ObjectInfo]:
        """Raises NotFound."""

    @abc.abstractmethod
    def write(self, bucket: str, name: str, data: bytes,
              if_generation_match: int | None = None,
              content_type: str = "application/octet-stream") -> ObjectInfo:
        """Raises PreconditionFailed."""

    @abc.abstractmethod
    def delete(self, bucket: str, name: str, if_generation_match: int | None = None) -> None:
        """Raises NotFound or PreconditionFailed."""

    @abc.abstractmethod
    def list(self, bucket: str, prefix: str = "") -> list[ObjectInfo]: ...
