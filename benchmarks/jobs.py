"""Notebook job figures, beside running the same notebook with papermill directly:

- POST → `running` (the job holds compute: its runner has started) and POST → `succeeded`;
- the same notebook with `python -m papermill in.ipynb out.ipynb` (what a user would run by
  hand, no HTML, no bucket), and that followed by `jupyter nbconvert --to html` (the same
  outputs as a job's), so the differences are envmgr's overhead per job;
- 20 small jobs submitted at once with a concurrency limit of 4: total wall time, and the
  service's peak memory (RSS of the `envmgr serve` process, its children excluded).

    python benchmarks/jobs.py [--rounds 5] [--burst 20] [--concurrency 4]

Real `envmgr serve` (SQLite, local backend and bucket; as root every job is sandboxed)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import psutil
from notebooks import Service as NotebookBench  # benchmarks/ is this script's folder
from rich.console import Console
from rich.table import Table

from envmgr.backends.local.disks import unmount_under
from envmgr.backends.local.sandbox import remove_users_under

STABLE = {"succeeded", "failed", "timed_out", "canceled"}


def notebook() -> dict[str, Any]:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("n = 10", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("total = sum(range(n))\nprint(total)")]
    return json.loads(nbformat.writes(nb))


class Service(NotebookBench):
    """The notebook benchmark's service, with a workspace to run jobs in."""

    def __init__(self, tmp: Path, **env: str) -> None:
        super().__init__(tmp, ENVMGR_JOB_POLL_SECONDS="0.05", **env)
        self.http.post("/api/v1/workspaces", json={"name": "bench"})

    def submit(self) -> str:
        r = self.http.post("/api/v1/workspaces/bench/jobs", json={"ipynb": notebook()})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def until(self, job_id: str, statuses: set[str]) -> dict[str, Any]:
        while True:
            j: dict[str, Any] = self.http.get(f"/api/v1/jobs/{job_id}").json()
            if j["status"] in statuses:
                return j
            time.sleep(0.01)

def bare_papermill(tmp: Path, html: bool = False) -> float:
    """papermill by hand; with `html`, then nbconvert for the HTML envmgr also writes."""
    src = tmp / "in.ipynb"
    src.write_text(json.dumps(notebook()))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "papermill", str(src), str(tmp / "out.ipynb"),
                    "-p", "n", "10", "--no-progress-bar"], check=True, capture_output=True)
    if html:
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html",
                        str(tmp / "out.ipynb")], check=True, capture_output=True)
    return time.perf_counter() - started


def one_job(svc: Service) -> tuple[float, float]:
    started = time.perf_counter()
    job_id = svc.submit()
    svc.until(job_id, {"running", *STABLE})
    running = time.perf_counter() - started
    done = svc.until(job_id, STABLE)
    assert done["status"] == "succeeded", done
    return running, time.perf_counter() - started


def burst(svc: Service, n: int) -> tuple[float, float]:
    proc = psutil.Process(svc.proc.pid)
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)
    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    ids = [svc.submit() for _ in range(n)]
    for job_id in ids:
        assert svc.until(job_id, STABLE)["status"] == "succeeded"
    total = time.perf_counter() - started
    stop.set()
    return total, peak[0] / 1e6


def p50(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} (max {max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--burst", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="envmgr-bench-jobs-"))
    tmp.chmod(0o711)  # as root, job users must reach their folders in it
    console = Console()
    svc = Service(tmp, ENVMGR_JOB_CONCURRENCY=str(args.concurrency))
    try:
        one_job(svc)  # warm: builds the sandbox image once
        bare = [bare_papermill(tmp) for _ in range(args.rounds)]
        with_html = [bare_papermill(tmp, html=True) for _ in range(args.rounds)]
        runs = [one_job(svc) for _ in range(args.rounds)]
        total, peak = burst(svc, args.burst)
    finally:
        svc.stop()
        remove_users_under(tmp)
        unmount_under(tmp)  # and their disks' file systems
        shutil.rmtree(tmp, ignore_errors=True)
    to_running = [r for r, _ in runs]
    to_done = [d for _, d in runs]
    table = Table(title=f"notebook jobs ({os.cpu_count()} cores, p50 s of {args.rounds})")
    for col in ("measure", "seconds"):
        table.add_column(col)
    table.add_row("bare papermill (python -m papermill), one notebook", p50(bare))
    table.add_row("bare papermill, then jupyter nbconvert --to html", p50(with_html))
    table.add_row("envmgr: POST → running", p50(to_running))
    table.add_row("envmgr: POST → succeeded (HTML, log, bucket)", p50(to_done))
    for name, base in (("bare papermill", bare), ("papermill + nbconvert", with_html)):
        table.add_row(f"envmgr over {name} (p50)",
                      f"{statistics.median(to_done) - statistics.median(base):+.2f}")
    table.add_row(f"{args.burst} jobs at once, concurrency {args.concurrency}: total",
                  f"{total:.2f}")
    table.add_row("service peak RSS during the burst", f"{peak:.0f} MB")
    console.print(table)


if __name__ == "__main__":
    main()
