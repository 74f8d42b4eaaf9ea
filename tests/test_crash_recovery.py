"""SIGKILL the control plane in the middle of each action and start it again: every runtime
ends in a stable status, no orphan process is left, no disk is lost. Also: the reconciler
tells the truth about processes that died or were left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import (
    Api,
    ServiceProcess,
    disk_file,
    marked_processes,
    server_process,
    wait_until,
)


def _jupyter_pid(sp: ServiceProcess, rid: str) -> int | None:
    path = sp.data_dir / "local" / "runtimes" / rid / "pid.json"
    try:
        return int(json.loads(path.read_text())["pid"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def _processes_of(sp: ServiceProcess) -> set[str]:
    ids = set()
    for p in marked_processes(sp.data_dir):
        ids.add(p.environ()["ENVMGR_RUNTIME_ID"])
    return ids


def _restart(sp: ServiceProcess) -> Api:
    sp.kill()
    sp.start()
    return sp.api()


def _settle(api: Api, sp: ServiceProcess, rid: str, expected: str) -> dict:
    rt = api.wait_status(rid, timeout=120)
    assert rt["status"] == expected, rt
    running = {rid} if expected == "running" else set()
    wait_until(lambda: _processes_of(sp) == running, 30,
               what=f"exactly the processes of running runtimes ({running})")
    return rt


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_sigkill_mid_action_then_restart(service_process, request, db: str) -> None:  # type: ignore[no-untyped-def]
    url = request.getfixturevalue("postgres").create_database() if db == "postgresql" else None
    sp = service_process(url)
    sp.start()
    api = sp.api()
    assert api.post("/api/v1/workspaces", json={"name": "crash"}).status_code == 201

    # create: kill while jupyter-server is starting.
    rid = api.create_runtime("crash", autopause_minutes=0)["id"]
    wait_until(lambda: _processes_of(sp) == {rid}, 30, interval=0.01, what="jupyter spawned")
    api = _restart(sp)
    rt = _settle(api, sp, rid, "running")
    disk_dir = sp.data_dir / "local" / "disks" / rt["disk_id"]
    (disk_dir / "precious.txt").write_text("do not lose me")

    # pause: kill right after the 202.
    assert api.post(f"/api/v1/runtimes/{rid}/pause").status_code == 202
    api = _restart(sp)
    _settle(api, sp, rid, "paused")

    # resume: kill while jupyter-server is starting again.
    assert api.post(f"/api/v1/runtimes/{rid}/resume").status_code == 202
    wait_until(lambda: _processes_of(sp) == {rid}, 30, interval=0.01, what="jupyter spawned")
    api = _restart(sp)
    _settle(api, sp, rid, "running")

    # delete keeping the disk: kill right after the 202.
    assert api.delete(f"/api/v1/runtimes/{rid}").status_code == 202
    api = _restart(sp)
    _settle(api, sp, rid, "deleted")
    assert disk_file(sp.data_dir, rt["disk_id"], "precious.txt") == "do not lose me"
    assert api.get(f"/api/v1/disks/{rt['disk_id']}").json()["status"] == "ready"
    assert sp.terminate()  # SIGTERM stops it cleanly


def test_runtimes_outlive_a_clean_restart(service_process) -> None:  # type: ignore[no-untyped-def]
    sp = service_process()
    sp.start()
    api = sp.api()
    api.post("/api/v1/workspaces", json={"name": "keep"})
    rid = api.create_runtime("keep", autopause_minutes=0)["id"]
    api.wait_status(rid, "running")
    pid = _jupyter_pid(sp, rid)
    assert sp.terminate()
    assert pid is not None and _processes_of(sp) == {rid}  # still serving
    sp.start()
    rt = sp.api().wait_status(rid)
    assert rt["status"] == "running" and _jupyter_pid(sp, rid) == pid


def test_reconciler_notices_a_dead_process_and_removes_orphans(make_service) -> None:  # type: ignore[no-untyped-def]
    svc = make_service(reconcile_interval_seconds=0.3)
    alice = svc.user("alice@example.org")
    svc.workspace("rec", alice)
    rid = alice.create_runtime("rec", autopause_minutes=0)["id"]
    alice.wait_status(rid, "running")
    os.kill(server_process(svc.settings.data_dir, rid).pid, signal.SIGKILL)
    rt = alice.wait_status(rid, "paused", "error", timeout=30)
    assert rt["status"] == "paused" and rt["status_reason"].startswith("reconciler: found stopped")
    # Says what happened and when, not a cut-off tail of Jupyter's log.
    assert "jupyter-server was killed by SIGKILL (signal 9), at 20" in rt["status_reason"]
    assert "Skipped non-installed" not in rt["status_reason"]
    assert "reconciler" in alice.events(rid)[-1]["reason"]

    # A process carrying the marker of a runtime nobody knows is an orphan: it goes.
    root = str((svc.settings.data_dir / "local").resolve())
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                              env={**os.environ, "ENVMGR_RUNTIME_ID": "rt-unknown",
                                   "ENVMGR_LOCAL_ROOT": root})
    try:
        wait_until(lambda: orphan.poll() is not None, 30, what="orphan removed")
    finally:
        orphan.kill()
    # The paused runtime resumes fine on its disk afterwards.
    assert alice.post(f"/api/v1/runtimes/{rid}/resume").status_code == 202
    assert alice.wait_status(rid)["status"] == "running"
