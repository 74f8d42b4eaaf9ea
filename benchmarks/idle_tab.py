"""An open tab is not a person, and a lock follows its editor: in Debian's Chromium, as a
user leaves things.

- Idle tab -> paused: a notebook open in JupyterLab, nobody touching it. envmgr with a
  short autopause, timed from the runtime's last activity to its pause; beside a bare
  jupyter-server with its own idle shutdown (`ServerApp.shutdown_no_activity_timeout`, the
  same threshold, and the kernel culler, `cull_idle_timeout`, with `cull_connected`),
  which is what a user of plain Jupyter (or JupyterHub's idle culler, which reads the same
  `last_activity`) would pick instead: the same tab open, does it ever shut down?
- Tab closed -> lock free, and tab crashed (its requests cut) -> lock free, with a renew
  period of `--renew` seconds, in seconds and in renew periods.

    python benchmarks/idle_tab.py [--rounds 3] [--threshold 30] [--renew 10]

Runs a real `envmgr serve` (SQLite, local backend) in a temporary folder, as root (every
runtime sandboxed). Needs /usr/bin/chromium and Playwright."""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from lifecycle import Served, free_port
from open_notebook import CHROMIUM, FLAGS, NB, _ok, clean_up, wait
from playwright.sync_api import sync_playwright
from rich.console import Console
from rich.table import Table


def _at(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


class Service:
    def __init__(self, tmp: Path, threshold: float, renew: float) -> None:
        self.served = Served(tmp, ENVMGR_AUTOPAUSE_MIN_MINUTES="0.01",
                             ENVMGR_AUTOPAUSE_INTERVAL_SECONDS="1",
                             ENVMGR_LOCK_RENEW_SECONDS=str(renew),
                             ENVMGR_LOCK_TTL_SECONDS=str(3 * renew))
        self.http = httpx.Client(base_url=self.served.base, timeout=60, headers={
            "Authorization": f"Bearer {self.served.token}"})
        self.http.post("/api/v1/workspaces", json={"name": "bench"})
        self.http.put("/api/v1/workspaces/bench/notebooks/content", params={"path": "a.ipynb"},
                      json=NB).raise_for_status()
        self.rid = self.http.post("/api/v1/workspaces/bench/runtimes", json={
            "autopause_minutes": threshold / 60}).json()["id"]
        self.status("running")

    def runtime(self) -> dict[str, Any]:
        return dict(self.http.get(f"/api/v1/runtimes/{self.rid}").json())

    def status(self, want: str) -> None:
        wait(lambda: self.runtime()["status"] == want, 180, want)

    def lock(self) -> Any:
        return self.http.get("/api/v1/workspaces/bench/notebooks").json()[0]["lock"]

    def open_edit(self, context: Any) -> Any:
        url = self.http.post("/api/v1/workspaces/bench/notebooks/open", json={
            "path": "a.ipynb", "mode": "edit"}).json()["url"]
        tab = context.new_page()
        tab.goto(url)
        tab.wait_for_selector("#envmgr-banner[data-envmgr-mode=edit]", timeout=120_000)
        return tab

    def idle_to_pause(self, context: Any) -> float:
        """Seconds from the last activity the runtime saw to its pause, tab left open."""
        if self.runtime()["status"] == "paused":
            self.http.post(f"/api/v1/runtimes/{self.rid}/resume")
            self.status("running")
        tab = self.open_edit(context)
        last: list[str] = []

        def paused() -> bool:
            rt = self.runtime()
            if rt["last_activity"]:
                last.append(rt["last_activity"]["at"])
            return rt["status"] != "running"
        wait(paused, 600, "an autopause")
        events = self.http.get(f"/api/v1/runtimes/{self.rid}/events",
                               params={"limit": 1000}).json()["items"]
        pausing = [e for e in events if e["to"] == "pausing"][-1]
        assert pausing["reason"].startswith("autopause: idle"), pausing
        tab.close()
        return (_at(pausing["at"]) - _at(last[-1])).total_seconds()

    def lock_free_after(self, context: Any, crash: bool) -> float:
        self.http.patch(f"/api/v1/runtimes/{self.rid}", json={"autopause_minutes": 0})
        if self.runtime()["status"] == "paused":
            self.http.post(f"/api/v1/runtimes/{self.rid}/resume")
            self.status("running")
        tab = self.open_edit(context)
        wait(lambda: self.lock() is not None, 60, "the lock")
        t0 = time.perf_counter()
        if crash:  # its heartbeats stop, and it never says goodbye
            tab.route("**/envmgr/presence*", lambda route: route.abort())
        else:
            tab.close()
        wait(lambda: self.lock() is None, 600, "the lock let go")
        took = time.perf_counter() - t0
        if crash:
            tab.close()
        return took

    def stop(self) -> None:
        self.http.close()
        self.served.stop()


def bare_shutdown(tmp: Path, context: Any, threshold: float, give_up: float) -> float | None:
    """A bare jupyter-server told to shut down after `threshold` idle seconds, a notebook
    open in JupyterLab: seconds until it exits, or None when it is still up at `give_up`."""
    port, token = free_port(), secrets.token_urlsafe(16)
    root = tmp / f"bare-{port}"
    root.mkdir()
    (root / "a.ipynb").write_text(json.dumps(NB))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
         "--allow-root", "--ServerApp.open_browser=False", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         f"--ServerApp.shutdown_no_activity_timeout={int(threshold)}",
         f"--MappingKernelManager.cull_idle_timeout={int(threshold)}",
         "--MappingKernelManager.cull_interval=5",
         "--MappingKernelManager.cull_connected=True"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(lambda: _ok(f"http://127.0.0.1:{port}/api/status?token={token}"), 60, "bare lab")
        tab = context.new_page()
        tab.goto(f"http://127.0.0.1:{port}/lab/tree/a.ipynb?token={token}")
        t0 = time.perf_counter()
        while proc.poll() is None and time.perf_counter() - t0 < give_up:
            tab.wait_for_timeout(500)  # the tab lives (polls) while we watch the server
        tab.close()
        return time.perf_counter() - t0 if proc.poll() is not None else None
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=30, help="autopause, seconds")
    ap.add_argument("--renew", type=float, default=10, help="lock renew period, seconds")
    args = ap.parse_args()
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="envmgr-bench-"))
    tmp.chmod(0o711)
    rows: dict[str, list[float]] = {}
    bare: list[float | None] = []
    service: Service | None = None
    give_up = 4 * args.threshold
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            with console.status("bare jupyter-server, its idle shutdown, a tab open"):
                bare = [bare_shutdown(tmp, context, args.threshold, give_up)
                        for _ in range(args.rounds)]
            service = Service(tmp, args.threshold, args.renew)
            with console.status("envmgr: idle tab -> paused"):
                rows["idle"] = [service.idle_to_pause(context) for _ in range(args.rounds)]
            with console.status("envmgr: tab closed -> lock free"):
                rows["closed"] = [service.lock_free_after(context, crash=False)
                                  for _ in range(args.rounds)]
            with console.status("envmgr: tab crashed -> lock free"):
                rows["crashed"] = [service.lock_free_after(context, crash=True)
                                   for _ in range(args.rounds)]
            browser.close()
    finally:
        clean_up(tmp, service)

    table = Table(title=f"An open tab, a closed tab ({args.rounds} rounds, threshold "
                  f"{args.threshold:g} s, renew period {args.renew:g} s)")
    for col in ("measure", "p50 s", "max s", "in thresholds / renew periods"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    shut = [b for b in bare if b is not None]
    table.add_row("bare jupyter-server, idle shutdown, tab open: shut down after",
                  f"{statistics.median(shut):.1f}" if len(shut) == len(bare) else
                  f"never ({len(bare) - len(shut)} of {len(bare)} still up at {give_up:g} s)",
                  f"{max(shut):.1f}" if shut else "-", "")
    for key, label, unit in (("idle", "envmgr, tab open untouched: last activity -> paused",
                              args.threshold),
                             ("closed", "envmgr, tab closed -> lock free", args.renew),
                             ("crashed", "envmgr, tab crashed -> lock free", args.renew)):
        v = rows[key]
        table.add_row(label, f"{statistics.median(v):.2f}", f"{max(v):.2f}",
                      f"{statistics.median(v) / unit:.2f} / {max(v) / unit:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
