"""The way to the control plane from a container that has no network of the host's: a Unix
socket, `<data dir>/local/control/control.sock`, whose folder every runtime container
mounts read-only (the folder, not the file: a service started again makes a new socket
there, and containers that outlived the old one see it). Each connection is relayed byte
for byte to the runtime API's host and port, so TLS, if any, passes through untouched and
every call is still checked on its runtime token. It leads there and nowhere else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
INSIDE = Path("/run/envmgr/control")  # where a container sees the folder
NAME = "control.sock"
# Connections one uid (one disk's runtime) may hold open through the relay at once: each
# costs the service three descriptors, so without a bound one notebook could exhaust them
# for every other runtime and user.
PER_UID = 64


class ControlRelay:
    def __init__(self, folder: Path, target_url: str) -> None:
        self.folder = folder
        parts = urlsplit(target_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._server: asyncio.AbstractServer | None = None
        self._lock = asyncio.Lock()
        self._open: Counter[int] = Counter()  # connections per peer uid

    @property
    def inside(self) -> str:
        return str(INSIDE / NAME)

    async def ensure(self) -> None:
        """Listening (once per service)."""
        async with self._lock:
            if self._server is not None:
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            self.folder.chmod(0o755)
            path = self.folder / NAME
            path.unlink(missing_ok=True)
            self._server = await asyncio.start_unix_server(self._relay, path)
            path.chmod(0o666)  # every runtime's uid may connect (the folder is root's)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = _peer_uid(writer)
        if self._open[uid] >= PER_UID:
            log.warning("control relay: uid %s has %s connections open; one more refused",
                        uid, PER_UID)
            writer.close()
            return
        self._open[uid] += 1
        try:
            await self._pass(reader, writer)
        finally:
            self._open[uid] -= 1

    async def _pass(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            log.warning("control relay: cannot reach %s:%s: %s", self.host, self.port, exc)
            writer.close()
            return
        pipes = [asyncio.create_task(_pipe(reader, up_writer)),
                 asyncio.create_task(_pipe(up_reader, writer))]
        try:  # HTTP clients do not half-close: when one side ends, the exchange is over
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for p in pipes:
                p.cancel()
            for w in (writer, up_writer):
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


def _peer_uid(writer: asyncio.StreamWriter) -> int:
    """The uid of the process at the other end (the kernel's: the kernel cannot lie)."""
    sock = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
