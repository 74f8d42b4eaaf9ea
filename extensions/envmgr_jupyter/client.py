"""The control plane's runtime API, as the extension sees it: read, stat, save, delete and
lock notebooks of the one workspace this runtime is bound to."""

from __future__ import annotations

import base64
import functools
import ssl
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import google_crc32c
import httpx


def crc32c(data: bytes) -> str:
    """Base64 of the big-endian CRC32C, as GCS (and the control plane) report it."""
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


class NotFound(Exception):
    pass


class Refused(Exception):
    """The control plane said no (e.g. the owner is no longer a writer): `message` says why
    in words meant for the user."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Lock:
    holder: str
    expires_at: datetime


class Locked(Exception):
    def __init__(self, lock: Lock) -> None:
        super().__init__(f"locked by {lock.holder} until {lock.expires_at.isoformat()}")
        self.lock = lock


@functools.cache
def tls_context() -> ssl.SSLContext:
    """Built once per process: reading the CA bundle costs a tenth of a second, which the
    fork server pays once for every runtime it forks."""
    return httpx.create_ssl_context()


class RuntimeApi:
    def __init__(self, base_url: str, token: str, timeout: float = 60,
                 socket: str | None = None) -> None:
        # Through `socket` (a relay to the control plane's address), if given: same URL,
        # same TLS, only the way there differs.
        via = httpx.HTTPTransport(uds=socket, verify=tls_context()) if socket else None
        self.http = httpx.Client(base_url=f"{base_url.rstrip('/')}/runtime-api/v1",
                                 headers={"Authorization": f"Bearer {token}"}, timeout=timeout,
                                 verify=tls_context(), transport=via)

    def _json(self, method: str, url: str, **kw: Any) -> dict[str, Any]:
        answer: dict[str, Any] = self._call(method, url, **kw).json()
        return answer

    def _call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        r = self.http.request(method, url, **kw)
        if r.status_code == 404:
            raise NotFound(url)
        if r.status_code == 409 and r.json().get("error", {}).get("code") == "locked":
            d = r.json()["error"]["details"]
            raise Locked(Lock(d["holder"], datetime.fromisoformat(d["expires_at"])))
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
            except (ValueError, KeyError, TypeError):
                err = {"code": "error", "message": r.text[:300]}
            raise Refused(r.status_code, err.get("code", "error"), err.get("message", ""))
        return r

    def whoami(self) -> dict[str, str]:
        answer: dict[str, str] = self._call("GET", "/whoami").json()
        return answer

    def read(self, path: str) -> tuple[bytes, int, str]:
        r = self._call("GET", "/notebooks/content", params={"path": path})
        return r.content, int(r.headers["x-generation"]), r.headers["x-crc32c"]

    def stat(self, path: str) -> int:
        return int(self._call("GET", "/notebooks/stat", params={"path": path}).json()[
            "generation"])

    def save(self, path: str, data: bytes, base_generation: int, base_crc32c: str,
             edit: bool, conflict: tuple[str, int] | None = None) -> dict[str, Any]:
        """`conflict`: the copy (path, generation) a standing conflict already made."""
        params: dict[str, Any] = {"path": path, "base_generation": base_generation,
                                  "base_crc32c": base_crc32c, "edit": "true" if edit else "false"}
        if conflict is not None:
            params.update(conflict_path=conflict[0], conflict_generation=conflict[1])
        return self._json("PUT", "/notebooks/save", content=data, params=params)

    def delete(self, path: str, generation: int) -> None:
        self._call("DELETE", "/notebooks/content",
                   params={"path": path, "if_generation_match": generation})

    def lock(self, path: str) -> Lock:
        got = self._call("POST", "/locks", params={"path": path}).json()
        return Lock(got["holder"], datetime.fromisoformat(got["expires_at"]))

    def release(self, path: str) -> None:
        self._call("DELETE", "/locks", params={"path": path})
