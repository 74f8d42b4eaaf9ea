"""Google Cloud Storage through google-cloud-storage. `endpoint` points the real client at an
emulator (the tests use fake-gcs-server, which enforces ifGenerationMatch as GCS does)."""

from __future__ import annotations

import contextlib

import google.cloud.storage as storage
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials

from envmgr.notebooks.storage.base import (
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    Storage,
    check_name,
)


class GcsStorage(Storage):
    name = "gcs"

    def __init__(self, project: str | None = None, endpoint: str | None = None) -> None:
        if endpoint:
            self.client = storage.Client(project=project or "envmgr-test",
                                         credentials=AnonymousCredentials(),
                                         client_options={"api_endpoint": endpoint})
        else:
            self.client = storage.Client(project=project)

    @staticmethod
    def _info(blob: storage.Blob) -> ObjectInfo:
        return ObjectInfo(name=blob.name, size=int(blob.size or 0),
                          generation=int(blob.generation), crc32c=blob.crc32c or "",
                          updated=blob.updated)

    def ensure_bucket(self, bucket: str) -> None:
        with contextlib.suppress(gexc.Conflict):
            self.client.create_bucket(bucket)

    def stat(self, bucket: str, name: str) -> ObjectInfo | None:
        blob = self.client.bucket(bucket).get_blob(check_name(name))
        return self._info(blob) if blob is not None else None

    def read(self, bucket: str, name: str) -> tuple[bytes, ObjectInfo]:
        blob = self.client.bucket(bucket).get_blob(check_name(name))
        if blob is None:
            raise NotFound(name)
        try:  # pin the generation just read, so data and info always agree
            data = blob.download_as_bytes(if_generation_match=blob.generation)
        except (gexc.PreconditionFailed, gexc.NotFound):
            return self.read(bucket, name)
        return data, self._info(blob)

    def write(self, bucket: str, name: str, data: bytes,
              if_generation_match: int | None = None,
              content_type: str = "application/octet-stream") -> ObjectInfo:
        blob = self.client.bucket(bucket).blob(check_name(name))
        try:
            blob.upload_from_string(data, content_type=content_type,
                                    if_generation_match=if_generation_match)
        except gexc.PreconditionFailed as exc:
            raise PreconditionFailed(str(exc)) from exc
        return self._info(blob)

    def delete(self, bucket: str, name: str, if_generation_match: int | None = None) -> None:
        try:
            self.client.bucket(bucket).blob(check_name(name)).delete(
                if_generation_match=if_generation_match)
        except gexc.NotFound as exc:
            raise NotFound(name) from exc
        except gexc.PreconditionFailed as exc:
            raise PreconditionFailed(str(exc)) from exc

    def list(self, bucket: str, prefix: str = "") -> list[ObjectInfo]:
        return [self._info(b) for b in self.client.list_blobs(bucket, prefix=prefix or None)]
