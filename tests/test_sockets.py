"""Runtimes on Unix sockets (envmgr/core/sockets.py), over real sockets: the endpoint's
form, keep-alive, a socket made again, and the links a runtime's user could plant."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest

from envmgr.core import sockets


async def _serve(path: Path, body: bytes) -> asyncio.AbstractServer:
    """A minimal HTTP/1.1 server on a Unix socket that says `body` and the Host it got."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                break
            host = next((ln.split(b":", 1)[1].strip() for ln in head.split(b"\r\n")
                         if ln.lower().startswith(b"host:")), b"")
            answer = body + b" " + host
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(answer), answer))
            await writer.drain()
        writer.close()
    return await asyncio.start_unix_server(handle, path)


def test_an_endpoint_names_its_socket_whatever_its_case(tmp_path: Path) -> None:
    sock = tmp_path / "Mixed Case" / "jupyter.sock"
    url = sockets.endpoint(sock, "/proxy/rt-1")
    assert url.startswith("http+unix://") and url.endswith("/proxy/rt-1")
    assert sockets.socket_of(url) == sock
    assert sockets.socket_of(url.upper().replace("HTTP+UNIX", "http+unix")) == sock
    assert sockets.socket_of("http://127.0.0.1:8888/proxy/rt-1") is None
    assert sockets.socket_of("http+unix://zz/proxy") is None  # not hex: no socket
    assert sockets.ws_url(url + "/api/kernels") == "ws://localhost/proxy/rt-1/api/kernels"
    assert sockets.ws_url("http://127.0.0.1:1/x") == "ws://127.0.0.1:1/x"


def test_requests_reach_the_socket_and_a_new_one_after_a_restart(tmp_path: Path) -> None:
    sock = tmp_path / "jupyter.sock"

    async def run() -> list[str]:
        said = []
        async with sockets.client(timeout=5) as http:
            server = await _serve(sock, b"first")
            url = sockets.endpoint(sock, "/proxy/rt-1") + "/api/status"
            for _ in range(2):  # (the second on the kept connection)
                said.append((await http.get(url)).text)
            server.close()
            await server.wait_closed()
            sock.unlink()
            server = await _serve(sock, b"second")  # Jupyter started again
            said.append((await http.get(url)).text)
            server.close()
            await server.wait_closed()
        return said
    assert asyncio.run(run()) == ["first localhost"] * 2 + ["second localhost"]


@pytest.mark.parametrize("planted", ["link", "file", "gone"])
def test_what_is_not_the_socket_is_never_connected_to(tmp_path: Path, planted: str) -> None:
    """The socket's folder is the runtime user's: a link there to another socket of the
    host (the service connects as root) is refused, never followed; so is a file, and a
    missing socket is a connection error, never an exception of another kind."""
    target = tmp_path / "root-only.sock"
    sock = tmp_path / "runtime" / "jupyter.sock"
    sock.parent.mkdir()

    async def run() -> tuple[str, int]:
        server = await _serve(target, b"root's")
        if planted == "link":
            os.symlink(target, sock)
        elif planted == "file":
            sock.write_text("HTTP/1.1 200 OK\r\n")
        try:
            async with sockets.client(timeout=5) as http:
                try:
                    r = await http.get(sockets.endpoint(sock, "/proxy/rt-1") + "/api/status")
                    return r.text, 0
                except httpx.ConnectError as exc:
                    return str(exc), 1
        finally:
            server.close()
            await server.wait_closed()
    said, refused = asyncio.run(run())
    assert refused == 1 and "root's" not in said, said
    assert str(tmp_path) not in said  # (a user sees the message: no host path in it)


def test_the_control_relay_leads_to_the_runtime_api_and_nowhere_else(tmp_path: Path) -> None:
    """What a container without the host's network reaches the control plane through."""
    from envmgr.backends.local.relay import NAME, ControlRelay

    async def run() -> tuple[str, str, int]:
        async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(path), path))
            await writer.drain()
            writer.close()
        api = await asyncio.start_server(hello, "127.0.0.1", 0)
        port = api.sockets[0].getsockname()[1]
        relay = ControlRelay(tmp_path / "control", f"http://127.0.0.1:{port}")
        await relay.ensure()
        await relay.ensure()  # (once)
        mode = (tmp_path / "control" / NAME).stat().st_mode & 0o777
        transport = httpx.AsyncHTTPTransport(uds=str(tmp_path / "control" / NAME))
        async with httpx.AsyncClient(transport=transport, timeout=5) as http:
            # Whatever host a caller names, the relay goes to the runtime API's address.
            first = (await http.get("http://elsewhere.example/runtime-api/v1/whoami")).text
            second = (await http.get("http://127.0.0.1:22/x")).text
        await relay.close()
        api.close()
        await api.wait_closed()
        return first, second, mode
    first, second, mode = asyncio.run(run())
    assert (first, second) == ("/runtime-api/v1/whoami", "/x")
    assert mode == 0o666  # every runtime's uid may connect; the folder is root's, mounted ro


def test_one_notebook_cannot_hold_every_relay_connection(tmp_path: Path) -> None:
    """A kernel that opens connection after connection to the relay is refused past
    PER_UID (by its peer uid, which it cannot fake); the service keeps its descriptors,
    and the same uid is served again once its connections close."""
    from envmgr.backends.local import relay as relay_mod

    async def run() -> tuple[int, int, str]:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # keeps the connection open until the client goes
            writer.close()
        api = await asyncio.start_server(hold, "127.0.0.1", 0)
        relay = relay_mod.ControlRelay(tmp_path / "control",
                                       f"http://127.0.0.1:{api.sockets[0].getsockname()[1]}")
        await relay.ensure()
        path = str(tmp_path / "control" / relay_mod.NAME)
        held = [await asyncio.open_unix_connection(path)
                for _ in range(relay_mod.PER_UID + 5)]
        async def closed(reader: asyncio.StreamReader) -> bool:
            try:  # a refused one is closed at once: EOF; a relayed one stays open
                return await asyncio.wait_for(reader.read(1), 1) == b""
            except TimeoutError:
                return False
        refused = sum(await asyncio.gather(*(closed(r) for r, _ in held)))
        for _, writer in held:
            writer.close()
        # Freed: the uid is served again (its count went back down).
        async def served() -> bool:
            r, w = await asyncio.open_unix_connection(path)
            try:
                await asyncio.wait_for(r.read(1), 0.5)
                return False  # closed: still refused
            except TimeoutError:
                return True  # held open by the upstream: relayed
            finally:
                w.close()
        deadline = asyncio.get_running_loop().time() + 10
        while not await served():
            assert asyncio.get_running_loop().time() < deadline, "never served again"
        await relay.close()
        api.close()
        return refused, len(held), "ok"
    refused, opened, _ = asyncio.run(run())
    assert refused == opened - relay_mod.PER_UID == 5
