"""Lifecycle figures on this machine, in one run: create->running and resume->running
latency (p50/max) for 1 and 10 concurrent runtimes: as root, in containers claimed from a
pool of pre-started ones and in containers started cold; without containers, forked by the
fork server and cold; beside bare cold jupyter-server starts and, when installed, JupyterHub's
local process spawner (`pip install jupyterhub`, configurable-http-proxy on PATH); and
GET /runtimes/{id} throughput on SQLite. Each burst (the creates, then the resumes) starts
from a settled service: a pool of pre-started containers full again, as between bursts
(back to back, a second burst finds the pool refilling, one container at a time, and
starts its misses cold).

    python benchmarks/lifecycle.py [--rounds 5] [--seconds 10] [--only MODE ...]

Runs a real `envmgr serve` (SQLite, local backend) in a temporary folder. Throughput uses
`wrk` when it is installed (Debian: apt-get install wrk); otherwise an httpx client, whose
own CPU use on a 2-core machine then understates the service."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from envmgr.backends.base import RuntimeSpec
from envmgr.backends.local import containers
from envmgr.backends.local.backend import LocalBackend, stop_everything
from envmgr.backends.local.disks import unmount_under
from envmgr.backends.local.sandbox import remove_users_under, write_config
from envmgr.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def bare_start(backend: LocalBackend, folder: Path) -> float:
    port, secret = free_port(), secrets.token_urlsafe(16)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    spec = RuntimeSpec(id="rt-bench", workspace="", owner="", machine_type="", disk_id=None,
                       secret=secret)
    conf = folder.parent / f"{folder.name}-config"  # one per start: starts run at once
    config = backend.jupyter_config(spec, folder, port)
    config["ServerApp"]["allow_root"] = True  # the bare start runs as whoever runs this
    write_config(conf, config, None)
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_server"],
                            env={**os.environ, "JUPYTER_CONFIG_DIR": str(conf)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    async with httpx.AsyncClient() as http:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"a bare jupyter-server exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                r = await http.get(f"http://127.0.0.1:{port}/proxy/rt-bench/api/status",
                                   headers={"Authorization": f"token {secret}"})
                if r.status_code == 200:
                    break
            await asyncio.sleep(0.01)
    took = time.perf_counter() - t0
    proc.terminate()
    proc.wait()
    return took


async def until(http: httpx.AsyncClient, rid: str, status: str, t0: float) -> float:
    while True:
        rt = (await http.get(f"/api/v1/runtimes/{rid}")).json()
        if rt["status"] == status:
            return time.perf_counter() - t0
        if rt["status"] == "error":
            raise RuntimeError(rt["status_reason"])
        await asyncio.sleep(0.02)  # ten pollers at 10 ms would saturate the API on 2 cores


async def lifecycle(http: httpx.AsyncClient, workspaces: list[str],
                    settle: Callable[[], Awaitable[None]]) -> tuple[list[float], list[float]]:
    """Create all at once, pause them, resume all at once, delete them; `settle` before each
    burst (a pool of pre-started containers is full again, as between bursts)."""
    async def create(ws: str) -> tuple[str, float]:
        t0 = time.perf_counter()
        rid = (await http.post(f"/api/v1/workspaces/{ws}/runtimes",
                               json={"autopause_minutes": 0})).json()["id"]
        return rid, await until(http, rid, "running", t0)

    async def pause(rid: str) -> None:
        await http.post(f"/api/v1/runtimes/{rid}/pause")
        await until(http, rid, "paused", time.perf_counter())

    async def resume(rid: str) -> float:
        t1 = time.perf_counter()
        await http.post(f"/api/v1/runtimes/{rid}/resume")
        return await until(http, rid, "running", t1)

    async def delete(rid: str) -> None:
        await http.delete(f"/api/v1/runtimes/{rid}", params={"keep_disk": "false"})
        await until(http, rid, "deleted", time.perf_counter())
    await settle()
    made = await asyncio.gather(*(create(ws) for ws in workspaces))
    rids = [rid for rid, _ in made]
    await asyncio.gather(*(pause(rid) for rid in rids))
    await settle()
    resumed = await asyncio.gather(*(resume(rid) for rid in rids))
    await asyncio.gather(*(delete(rid) for rid in rids))
    return [took for _, took in made], list(resumed)


def throughput(base: str, token: str, rid: str, seconds: int) -> tuple[float, str]:
    url = f"{base}/api/v1/runtimes/{rid}"
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "-H",
                              f"Authorization: Bearer {token}", url],
                             capture_output=True, text=True, check=True).stdout
        if "Non-2xx" in out:
            raise RuntimeError(out)
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "wrk -t2 -c32"

    async def run() -> float:
        n, stop = 0, time.perf_counter() + seconds
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
            async def loop() -> None:
                nonlocal n
                while time.perf_counter() < stop:
                    assert (await http.get(url)).status_code == 200
                    n += 1
            await asyncio.gather(*(loop() for _ in range(16)))
        return n / seconds
    return asyncio.run(run()), "httpx, 16 connections (client-bound)"


HUB_CONFIG = """
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api}"
c.JupyterHub.db_url = "sqlite:///{tmp}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{tmp}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{tmp}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = "{tmp}/homes/{{username}}"
c.Spawner.cmd = ["{singleuser}"]
c.Spawner.args = ["--allow-root", "--LabApp.news_url="]
c.Spawner.default_url = "/lab"
c.Spawner.http_timeout = 180  # its default, 30 s, gives up on ten starts at once here
c.Spawner.start_timeout = 180
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
                            "scopes": ["admin:users", "admin:servers"]}}]
"""


class Hub:
    """JupyterHub with its local process spawner (the alternative an operator would pick),
    started as it documents, with a service token to drive it through its REST API."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp / "hub"
        (self.tmp / "homes").mkdir(parents=True)
        self.port, self.token = free_port(), secrets.token_hex(16)
        (self.tmp / "jupyterhub_config.py").write_text(HUB_CONFIG.format(
            port=self.port, hub_port=free_port(), proxy_api=free_port(), tmp=self.tmp,
            singleuser=Path(sys.executable).parent / "jupyterhub-singleuser",
            token=self.token))
        self.proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f",
                                      str(self.tmp / "jupyterhub_config.py")], cwd=self.tmp,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.api = f"http://127.0.0.1:{self.port}/hub/api"
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.api + "/", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("JupyterHub did not start")
            time.sleep(0.1)

    async def starts(self, http: httpx.AsyncClient, users: list[str]) -> list[float]:
        """Start each user's server at once, timed to JupyterHub's `ready`; then stop."""
        async def one(user: str) -> float:
            t0 = time.perf_counter()
            r = await http.post(f"{self.api}/users/{user}/server")
            if r.status_code not in (201, 202):
                raise RuntimeError(f"JupyterHub refused a start: {r.status_code} {r.text}")
            while True:
                server = (await http.get(f"{self.api}/users/{user}")).json()["servers"].get("")
                if server and server.get("ready"):
                    took = time.perf_counter() - t0
                    break
                if not server:
                    raise RuntimeError(f"JupyterHub gave up on {user}'s server")
                await asyncio.sleep(0.02)
            await http.delete(f"{self.api}/users/{user}/server")
            while (await http.get(f"{self.api}/users/{user}")).json()["servers"]:
                await asyncio.sleep(0.05)
            return took
        return list(await asyncio.gather(*(one(u) for u in users)))

    async def lifecycles(self, rounds: int) -> dict[str, list[float]]:
        async with httpx.AsyncClient(timeout=120, headers={
                "Authorization": f"token {self.token}"}) as http:
            users = [f"bench{i}" for i in range(10)]
            await http.post(f"{self.api}/users", json={"usernames": users})
            one = [(await self.starts(http, users[:1]))[0] for _ in range(rounds)]
            return {"hub1": one, "hub10": await self.starts(http, users)}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def hub_installed() -> bool:
    return bool(shutil.which("configurable-http-proxy")) and \
        (Path(sys.executable).parent / "jupyterhub-singleuser").exists()


class Served:
    """A real `envmgr serve` in a folder of its own, with extra settings."""

    def __init__(self, tmp: Path, **extra: str) -> None:
        self.port = free_port()
        self.data = tmp / f"data-{self.port}"
        env = {**os.environ, "ENVMGR_DATA_DIR": str(self.data), "ENVMGR_PORT": str(self.port),
               "ENVMGR_LOG_LEVEL": "WARNING", "ENVMGR_WORKER_POLL_SECONDS": "1", **extra}
        self.proc = subprocess.Popen([sys.executable, "-m", "envmgr.cli", "serve"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError, FileNotFoundError):
                self.token = (self.data / "admin-token").read_text().strip()
                if httpx.get(f"{self.base}/api/v1/me", headers={
                        "Authorization": f"Bearer {self.token}"}).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the service did not start")
            time.sleep(0.1)
        pool = self.pool = int(extra.get("ENVMGR_LOCAL_POOL_SIZE", "0"))
        if pool:  # warm, as a running service is: every pre-started container answers
            pattern, want = "pool/*/ctl/forkserver-*.sock", pool
        elif "ENVMGR_LOCAL_POOL_SIZE" in extra:  # containers, none pre-started: nothing
            pattern, want = "", 0
        elif extra.get("ENVMGR_LOCAL_FORK_SERVER") != "false":
            pattern, want = "runtimes/forkserver-*.sock", 1
        else:
            pattern, want = "", 0
        while want and len(list((self.data / "local").glob(pattern))) < want:
            if time.monotonic() > deadline + 120:
                logs = [p.read_text()[-600:] for p in (self.data / "local").rglob(
                    "forkserver-*.log")]
                self.stop()
                raise SystemExit(f"{pattern} did not start: {logs}")
            time.sleep(0.1)

    async def lifecycles(self, rounds: int) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"create1": [], "resume1": []}
        async with httpx.AsyncClient(base_url=self.base, timeout=120, headers={
                "Authorization": f"Bearer {self.token}"}) as http:
            names = [f"bench-{i}" for i in range(10)]
            for name in names:
                await http.post("/api/v1/workspaces", json={"name": name})
            for _ in range(rounds):
                c, r = await lifecycle(http, names[:1], self.settle)
                out["create1"] += c
                out["resume1"] += r
            out["create10"], out["resume10"] = await lifecycle(http, names, self.settle)
        return out

    async def settle(self) -> None:
        """A pool of pre-started containers full again: every unclaimed one's fork server
        up (a claimed one has its runtime's log beside its socket)."""
        deadline = time.monotonic() + 300
        while self.pool and time.monotonic() < deadline:
            ready = [d for d in (self.data / "local" / "pool").glob("pool-*")
                     if list((d / "ctl").glob("forkserver-*.sock")) and
                     not (d / "ctl" / "jupyter.log").exists()]
            if len(ready) >= self.pool:
                return
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5, help="runs of the single-runtime case")
    ap.add_argument("--seconds", type=int, default=10, help="throughput run length")
    ap.add_argument("--only", action="append", default=[], metavar="MODE",
                    help="measure only this envmgr mode (repeatable): 'pooled container', "
                    "'cold container', 'forked', 'cold'")
    args = ap.parse_args()
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="envmgr-bench-"))
    tmp.chmod(0o711)  # as root, runtime users must reach their disks in it
    services: list[Served] = []
    try:
        backend = LocalBackend(Settings(data_dir=tmp / "bare"))

        async def bare() -> dict[str, list[float]]:
            one = [await bare_start(backend, tmp / "bare" / str(i)) for i in range(args.rounds)]
            ten = await asyncio.gather(*(bare_start(backend, tmp / "bare10" / str(i))
                                         for i in range(10)))
            return {"bare": one, "bare10": list(ten)}
        data: dict[str, dict[str, list[float]]] = {}
        with console.status("timing bare jupyter-server starts"):
            data["bare"] = asyncio.run(bare())
        if hub_installed():
            with console.status("timing JupyterHub starts (SimpleLocalProcessSpawner)"):
                hub = Hub(tmp)
                try:
                    data["hub"] = asyncio.run(hub.lifecycles(args.rounds))
                finally:
                    hub.stop()
        else:
            console.print("JupyterHub not measured: pip install jupyterhub, and put "
                          "configurable-http-proxy on PATH (npm install -g "
                          "configurable-http-proxy)")
        modes: list[tuple[str, dict[str, str]]] = [
            ("forked", {"ENVMGR_LOCAL_CONTAINERS": "false"}),
            ("cold", {"ENVMGR_LOCAL_CONTAINERS": "false", "ENVMGR_LOCAL_FORK_SERVER": "false"})]
        if containers.available():  # as root: each runtime in a container of its own
            modes = [("pooled container", {"ENVMGR_LOCAL_POOL_SIZE": "10"}),
                     ("cold container", {"ENVMGR_LOCAL_POOL_SIZE": "0"}), *modes]
        if args.only:
            modes = [m for m in modes if m[0] in args.only]
        for label, extra in list(modes):
            with console.status(f"timing envmgr lifecycles ({label} starts)"):
                try:
                    served = Served(tmp, **extra)
                except SystemExit as exc:  # said, and the other modes still measured
                    console.print(f"[red]{label}: {exc}[/red]")
                    modes.remove((label, extra))
                    continue
                services.append(served)
                data[label] = asyncio.run(served.lifecycles(args.rounds))
                if label == modes[0][0]:
                    with httpx.Client(base_url=served.base, headers={
                            "Authorization": f"Bearer {served.token}"}) as http:
                        http.post("/api/v1/workspaces", json={"name": "bench-get"})
                        rid = http.post("/api/v1/workspaces/bench-get/runtimes",
                                        json={"autopause_minutes": 0}).json()["id"]
                    rps, how = throughput(served.base, served.token, rid, args.seconds)
                served.stop()
                # Its runtimes outlive it (as VMs do): ended, so the next mode has the
                # machine to itself.
                stop_everything(served.data / "local")
    finally:
        for served in services:
            with contextlib.suppress(Exception):
                served.stop()
        subprocess.run(["pkill", "-f", str(tmp)], check=False)
        for served in services:  # runtimes outlive their service: `envmgr stop-local`'s way
            stop_everything(served.data / "local")
        remove_users_under(tmp)  # the runtimes' system users, as root
        unmount_under(tmp)  # and their disks' file systems
        shutil.rmtree(tmp, ignore_errors=True)

    table = Table(title=f"envmgr lifecycle, local backend, SQLite ({os.cpu_count()} cores)")
    for col in ("measure", "runtimes", "p50 s", "max s", "p50 / bare p50", "max / bare max"):
        table.add_column(col, justify="right" if col != "measure" else "left")

    def row(measure: str, n: int, values: list[float]) -> None:
        bare = data["bare"]["bare" if n == 1 else "bare10"]
        ratios = ("", "") if measure.startswith("bare") else (
            f"{statistics.median(values) / statistics.median(bare):.2f}",
            f"{max(values) / max(bare):.2f}")
        table.add_row(measure, str(n), f"{statistics.median(values):.2f}",
                      f"{max(values):.2f}", *ratios)
    for key, n in (("bare", 1), ("bare10", 10)):
        row("bare jupyter-server start (cold)", n, data["bare"][key])
    for key, n in (("hub1", 1), ("hub10", 10)):
        if "hub" in data:
            row("JupyterHub start -> ready (local process spawner)", n, data["hub"][key])
    for label, _ in modes:
        for key, what, n in (("create1", "create -> running", 1),
                             ("resume1", "resume -> running", 1),
                             ("create10", "create -> running", 10),
                             ("resume10", "resume -> running", 10)):
            row(f"envmgr {what}, {label}", n, data[label][key])
    console.print(table)
    console.print(f"GET /api/v1/runtimes/{{id}}: [bold]{rps:,.0f}[/bold] requests/s ({how}, "
                  f"{args.seconds} s)")


if __name__ == "__main__":
    main()
