"""Reaching a runtime that serves on a Unix socket (the local backend's containers have no
port on the host's network).

Such a runtime's endpoint is `http+unix://<socket path, hex>/<base path>`: hex, because URL
hosts are case-insensitive and a path is not. Every HTTP client that talks to runtimes
mounts `SocketTransport` for that scheme; the proxy's websockets connect through
`connect_path`.

The socket's folder is one the runtime's user may write: a kernel can put a symlink (or
anything else) where Jupyter's socket was, so a plain `connect()` as root could be steered
to any socket of the host (a container runtime's API, a database's). So the file is opened
without following symlinks (O_PATH | O_NOFOLLOW), checked to be a socket, and connected
through that very descriptor (`/proc/self/fd/N`), which no rename can change afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SCHEME = "http+unix"


def endpoint(socket: Path, base: str) -> str:
    """The endpoint of a runtime serving on `socket` under the URL path `base`."""
    return f"{SCHEME}://{str(socket).encode().hex()}{base}"


def socket_of(url: httpx.URL | str) -> Path | None:
    """The socket a `http+unix://` URL names (None for any other URL)."""
    url = httpx.URL(url) if isinstance(url, str) else url
    if url.scheme != SCHEME:
        return None
    try:
        return Path(bytes.fromhex(url.host).decode())
    except (ValueError, UnicodeDecodeError):
        return None


def ws_url(endpoint: str) -> str:
    """The websocket URL of an endpoint (a socket's: as Jupyter sees it, on localhost)."""
    if socket_of(endpoint) is not None:
        return "ws://localhost" + httpx.URL(endpoint).raw_path.decode()
    return endpoint.replace("http", "ws", 1)


class NotASocket(httpx.ConnectError):
    pass


@dataclass
class _Opened:
    fd: int
    ino: tuple[int, int]
    transport: httpx.AsyncHTTPTransport


class SocketTransport(httpx.AsyncBaseTransport):
    """HTTP over the checked socket of each `http+unix://` endpoint, with keep-alive: one
    pooled transport per socket file, made again when the file is a new one (Jupyter
    started again)."""

    def __init__(self) -> None:
        self._open: dict[Path, _Opened] = {}
        self._lock = threading.Lock()

    def _opened(self, path: Path) -> _Opened:
        try:
            now = os.stat(path, follow_symlinks=False)
        except OSError as exc:
            self._forget(path)
            raise httpx.ConnectError(f"its socket is not there ({exc.strerror})") from exc
        with self._lock:
            known = self._open.get(path)
            if known is not None and known.ino == (now.st_dev, now.st_ino):
                return known
        fd = _open_socket(path)
        st = os.fstat(fd)
        fresh = _Opened(fd, (st.st_dev, st.st_ino),
                        httpx.AsyncHTTPTransport(uds=f"/proc/self/fd/{fd}"))
        with self._lock:
            old, self._open[path] = self._open.get(path), fresh
        if old is not None:
            _close_later(old)
        return fresh

    def _forget(self, path: Path) -> None:
        with self._lock:
            old = self._open.pop(path, None)
        if old is not None:
            _close_later(old)

    @contextlib.contextmanager
    def connect_path(self, url: str) -> Iterator[str]:
        """For a websocket: a path to `connect()` to, the checked socket's (a descriptor of
        the caller's own, closed when the block ends)."""
        path = socket_of(url)
        if path is None:
            raise httpx.ConnectError(f"not a socket endpoint: {url}")
        fd = os.dup(self._opened(path).fd)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = socket_of(request.url)
        if path is None:
            raise httpx.UnsupportedProtocol(f"not a socket endpoint: {request.url}")
        opened = self._opened(path)
        # Jupyter sees an ordinary local request (its Host check allows localhost).
        request.url = request.url.copy_with(scheme="http", host="localhost", port=None)
        request.headers["Host"] = "localhost"
        return await opened.transport.handle_async_request(request)

    async def aclose(self) -> None:
        with self._lock:
            opened, self._open = list(self._open.values()), {}
        for o in opened:
            await o.transport.aclose()
            with contextlib.suppress(OSError):
                os.close(o.fd)


def _open_socket(path: Path) -> int:
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise httpx.ConnectError(f"its socket is not there ({exc.strerror})") from exc
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotASocket("what is where its socket was is not a socket (a link is never "
                         "followed there)")
    return fd


def _close_later(old: _Opened) -> None:
    """A socket file that is no longer the runtime's (Jupyter started again): its transport
    closes, then its descriptor (never before: a new connection names it by number)."""
    async def retire() -> None:
        await old.transport.aclose()
        with contextlib.suppress(OSError):
            os.close(old.fd)
    try:
        task = asyncio.get_running_loop().create_task(retire())
        _retiring.add(task)
        task.add_done_callback(_retiring.discard)
    except RuntimeError:  # no loop (a thread's call): nothing can be using it
        with contextlib.suppress(OSError):
            os.close(old.fd)


_retiring: set[asyncio.Task[None]] = set()


class RuntimeClient(httpx.AsyncClient):
    """An HTTP client that reaches runtimes on TCP and on sockets alike (`sockets`: its
    transport for the latter, which the proxy's websockets use too)."""

    def __init__(self, **kwargs: Any) -> None:
        self.sockets = SocketTransport()
        super().__init__(mounts={f"{SCHEME}://": self.sockets}, **kwargs)


def client(**kwargs: Any) -> RuntimeClient:
    return RuntimeClient(**kwargs)


def transport_of(http: httpx.AsyncClient) -> SocketTransport | None:
    return http.sockets if isinstance(http, RuntimeClient) else None
