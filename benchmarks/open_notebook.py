"""Edit -> a kernel that can run a cell, in Debian's Chromium, as a user sees it: from the
click on the workspace page's Edit button to the notebook's kernel indicator reading idle in
the JupyterLab tab, on a running runtime and on a paused one; beside JupyterLab's own load
(a bare jupyter-server already running, its notebook URL opened directly). Every open is in
a fresh browser context (an empty cache, as a first visit), unless the row says cached.

    python benchmarks/open_notebook.py [--rounds 5]

Runs a real `envmgr serve` (SQLite, local backend, the fork server) in a temporary folder,
as root (every runtime sandboxed). Needs /usr/bin/chromium and Playwright."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from lifecycle import Served, free_port
from playwright.sync_api import sync_playwright
from rich.console import Console
from rich.table import Table

CHROMIUM = os.environ.get("ENVMGR_TEST_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]
STAGE = ["start"]  # what is being timed, for a failure's message
NB = {"cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {},
                 "outputs": [], "source": "print(6 * 7)"}],
      "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                  "language": "python"}},
      "nbformat": 4, "nbformat_minor": 5}


def wait(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


class KernelWatch:
    """When a tab's notebook kernel is ready: the first `kernel_info_reply` on a kernel's
    channels websocket (JupyterLab's idle indicator can say idle before any kernel
    exists, and a cell run then is dropped)."""

    def __init__(self, tab: Any) -> None:
        self.tab, self.at = tab, 0.0
        tab.on("websocket", self._socket)

    def _socket(self, ws: Any) -> None:
        if "/channels" in ws.url:
            ws.on("framereceived", self._frame)

    def _frame(self, payload: str | bytes) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        if not self.at and b"kernel_info_reply" in data:
            self.at = time.perf_counter()

    def ready(self, seconds: float = 120) -> float:
        deadline = time.monotonic() + seconds
        while not self.at:
            if time.monotonic() > deadline:
                raise SystemExit(f"no kernel at {self.tab.url} ({STAGE[0]})")
            self.tab.wait_for_timeout(20)  # lets Playwright deliver the socket's events
        return self.at


def check_runs(tab: Any) -> None:
    """What was timed can run a cell (the timing stops before this)."""
    tab.locator(".jp-Cell .cm-content").first.click()
    tab.keyboard.press("Shift+Enter")
    try:
        tab.wait_for_selector(".jp-OutputArea-output:has-text('42')", timeout=60_000)
    except Exception:
        tab.screenshot(path="/tmp/open-notebook-failed.png")
        raise SystemExit(f"no output at {tab.url} ({STAGE[0]}; screenshot: "
                         "/tmp/open-notebook-failed.png)") from None


class Envmgr:
    """The service, one workspace with a notebook, and the admin's runtime in it."""

    def __init__(self, tmp: Path, **extra: str) -> None:
        self.served = Served(tmp, **extra)
        self.http = httpx.Client(base_url=self.served.base, timeout=60, headers={
            "Authorization": f"Bearer {self.served.token}"})
        self.http.post("/api/v1/workspaces", json={"name": "bench"})
        r = self.http.put("/api/v1/workspaces/bench/notebooks/content",
                          params={"path": "a.ipynb"}, json=NB)
        assert r.status_code in (200, 201), r.text
        self.rid = self.http.post("/api/v1/workspaces/bench/runtimes",
                                  json={"autopause_minutes": 0}).json()["id"]
        self.status("running")

    def status(self, want: str) -> None:
        wait(lambda: self.http.get(f"/api/v1/runtimes/{self.rid}").json()["status"] == want,
             120, want)

    def pause(self) -> None:
        assert self.http.post(f"/api/v1/runtimes/{self.rid}/pause").status_code == 202
        self.status("paused")

    def spare_ready(self) -> None:
        """A runtime that has been running a while has its spare kernel booted (when on)."""
        def ready() -> bool:
            spare = self.http.get(f"/proxy/{self.rid}/envmgr/spare").json()
            return bool(spare["ready"] or not spare["enabled"])
        wait(ready, 120, "the spare kernel")

    def kernels_stop(self) -> None:
        """Each open starts from no kernel, as a user's first open does."""
        for s in self.http.get(f"/proxy/{self.rid}/api/sessions").json():
            self.http.delete(f"/proxy/{self.rid}/api/sessions/{s['id']}")

    def edit(self, context: Any) -> float:
        """Sign in on the workspace page, then time Edit -> kernel idle."""
        page = context.new_page()
        page.goto(self.served.base + "/")
        page.wait_for_selector("#token:visible, #who:visible")
        if page.locator("#token").is_visible():  # a cached context is still signed in
            page.fill("#token", self.served.token)
            page.click("#signin-form button")
        page.wait_for_selector("#notebooks tbody tr button[data-mode=edit]:not([disabled])")
        with context.expect_page() as opened:
            t0 = time.perf_counter()
            page.click("#notebooks tbody tr button[data-mode=edit]")
        tab = opened.value
        took = KernelWatch(tab).ready() - t0
        check_runs(tab)
        tab.close()
        page.close()
        return took

    def stop(self) -> None:
        self.http.close()
        self.served.stop()


@contextlib.contextmanager
def bare_lab(tmp: Path) -> Iterator[str]:
    """A bare jupyter-server with JupyterLab, already running, and its notebook's URL."""
    port, token = free_port(), secrets.token_urlsafe(16)
    root = tmp / "bare-lab"
    root.mkdir()
    (root / "a.ipynb").write_text(json.dumps(NB))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
         "--allow-root", "--ServerApp.open_browser=False", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(lambda: _ok(f"http://127.0.0.1:{port}/api/status?token={token}"), 60, "bare lab")
        yield f"http://127.0.0.1:{port}/lab/tree/a.ipynb?token={token}"
    finally:
        proc.terminate()
        proc.wait(30)


def _ok(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url).status_code == 200
    return False


def bare_open(context: Any, url: str, sessions: str) -> float:
    page = context.new_page()
    watch = KernelWatch(page)
    t0 = time.perf_counter()
    page.goto(url)
    took = watch.ready() - t0
    check_runs(page)
    page.close()
    for s in httpx.get(sessions).json():  # the next open starts a kernel again
        httpx.delete(sessions.replace("/api/sessions", f"/api/sessions/{s['id']}"))
    return took


def clean_up(tmp: Path, service: Any) -> None:
    """Whatever a run left: its service, processes, sandbox users, disks and folder."""
    if service is not None:
        with contextlib.suppress(Exception):
            service.stop()
    subprocess.run(["pkill", "-f", str(tmp)], check=False)
    from envmgr.backends.local.disks import unmount_under
    from envmgr.backends.local.sandbox import remove_users_under
    remove_users_under(tmp)
    unmount_under(tmp)  # and their disks' file systems
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="envmgr-bench-"))
    tmp.chmod(0o711)
    rows: dict[str, list[float]] = {}
    service: Envmgr | None = None
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)

            def fresh() -> Any:
                return browser.new_context(viewport={"width": 1280, "height": 900})
            with console.status("timing JupyterLab's own load (bare jupyter-server)"), \
                    bare_lab(tmp) as url:
                sessions = url.replace("/lab/tree/a.ipynb", "/api/sessions")
                bare_open(fresh(), url, sessions)  # its first page render warms the server
                rows["bare"] = [bare_open(fresh(), url, sessions) for _ in range(args.rounds)]
                cached = fresh()
                bare_open(cached, url, sessions)
                rows["bare cached"] = [bare_open(cached, url, sessions)
                                       for _ in range(args.rounds)]
            for suffix, extra in (("", {}),
                                  (", no spare kernel", {"ENVMGR_SPARE_KERNEL": "false"}),
                                  (", kernel at open off", {"ENVMGR_KERNEL_ON_OPEN": "false"})):
                with console.status(f"timing Edit on envmgr (running, paused{suffix})"):
                    service = Envmgr(tmp, **extra)
                    times: dict[str, list[float]] = {}
                    cached = fresh()
                    STAGE[0] = "first envmgr open"
                    service.edit(cached)
                    for _ in range(args.rounds):
                        for stage in ("running", "running cached"):
                            service.kernels_stop()
                            service.spare_ready()
                            STAGE[0] = stage
                            context = cached if stage == "running cached" else fresh()
                            times.setdefault(stage, []).append(service.edit(context))
                        service.pause()
                        STAGE[0] = "paused"
                        times.setdefault("paused", []).append(service.edit(fresh()))
                    rows.update({k + suffix: v for k, v in times.items()})
                    service.stop()
                    service = None
            browser.close()
    finally:
        clean_up(tmp, service)

    table = Table(title=f"Open a notebook -> kernel idle, Chromium ({os.cpu_count()} cores, "
                  f"{args.rounds} rounds)")
    for col in ("measure", "p50 s", "max s", "p50 / JupyterLab's own"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    labels = {"bare": "JupyterLab's own load (bare server running, URL opened)",
              "bare cached": "JupyterLab's own load, cached",
              "running": "envmgr Edit, runtime running",
              "running cached": "envmgr Edit, runtime running, cached",
              "paused": "envmgr Edit, runtime paused",
              "running, no spare kernel": "envmgr Edit, running, no spare kernel",
              "running, kernel at open off": "envmgr Edit, running, kernel at open off",
              "paused, kernel at open off": "envmgr Edit, paused, kernel at open off"}
    base = statistics.median(rows["bare"])
    for key, label in labels.items():
        values = rows[key]
        table.add_row(label, f"{statistics.median(values):.2f}", f"{max(values):.2f}",
                      f"{statistics.median(values) / base:.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
