"""The fork server: runtimes are forked from a process that imported jupyter-server once,
and each is what a cold start would have made (its user, its environment, its /proc
identity); the fork server is out of a kernel's reach, outlives the control plane, is
started again when it dies, and a start goes cold when it cannot serve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Api, Service, disk_user, local_processes, run_cell, wait_until

ROOT = os.geteuid() == 0


def _pid_record(data_dir: Path, rid: str) -> dict[str, Any]:
    path = data_dir / "local" / "runtimes" / rid / "pid.json"
    return dict(json.loads(path.read_text()))


def _fork_server(data_dir: Path) -> psutil.Process:
    records = list((data_dir / "local" / "runtimes").glob("forkserver-*.json"))
    assert len(records) == 1, records
    return psutil.Process(json.loads(records[0].read_text())["pid"])


def _running(api: Api, ws: str) -> dict[str, Any]:
    return api.wait_status(api.create_runtime(ws, autopause_minutes=0)["id"], "running")


PROBE = """
import json, os, socket
res = {}
try:  # through a handle on its folder: the path itself is too long for a socket address
    folder = os.open(os.path.dirname(%(sock)r), os.O_RDONLY | os.O_DIRECTORY)
    s = socket.socket(socket.AF_UNIX)
    s.connect("/proc/self/fd/%%d/%%s" %% (folder, os.path.basename(%(sock)r)))
    res["connect"] = "ok"
except Exception as e:
    res["connect"] = type(e).__name__
try:
    open("/proc/%(fs)d/environ").read(); res["environ"] = "ok"
except Exception as e:
    res["environ"] = type(e).__name__
print(json.dumps(res))
"""


def test_a_forked_runtime_is_what_a_cold_start_makes(make_service: Any) -> None:
    svc: Service = make_service(warm_at_start=True, local_containers=False)
    data = svc.settings.data_dir
    wait_until(lambda: list((data / "local" / "runtimes").glob("forkserver-*.sock")), 60,
               what="the fork server, started with the control plane")
    ann = svc.user("ann@example.org")
    svc.workspace("fork", ann)
    rt = _running(ann, "fork")
    record = _pid_record(data, rt["id"])
    assert record["forked"] is True
    server, forks = psutil.Process(record["pid"]), _fork_server(data)
    assert server.ppid() == forks.pid
    # /proc says what a cold start would: its own environment and command line.
    env = server.environ()
    assert env["ENVMGR_RUNTIME_ID"] == rt["id"] and "ENVMGR_FORKSERVER" not in env
    assert env["HOME"] == str(data / "local" / "disks" / rt["disk_id"])
    assert server.cmdline()[1:] == ["-m", "jupyter_server"]
    assert server.pid == os.getsid(server.pid)  # a session of its own
    if ROOT:
        assert server.username() == disk_user(svc.settings, rt["disk_id"])
        assert forks.username() == "root"
    sock = next((data / "local" / "runtimes").glob("forkserver-*.sock"))
    got = json.loads(run_cell(ann, rt["id"], PROBE % {"sock": str(sock),
                                                      "fs": forks.pid}).strip())
    if ROOT:  # a kernel can neither ask the fork server for anything nor read it
        assert got == {"connect": "PermissionError", "environ": "PermissionError"}, got
    # JupyterLab's user settings and workspaces are the runtime's own (JupyterLab computes
    # their folders from HOME at import: the fork server's own, unwritable, before the fix).
    lab = f"/proxy/{rt['id']}/lab/api"
    theme = {"raw": json.dumps({"theme": "JupyterLab Dark"})}
    assert ann.put(f"{lab}/settings/@jupyterlab/apputils-extension:themes",
                   json=theme).status_code == 204
    assert ann.put(f"{lab}/workspaces/mine", json={"data": {}, "metadata": {
        "id": "mine"}}).status_code == 204
    own = data / "local" / "disks" / rt["disk_id"] / ".jupyter" / "lab"
    assert (own / "user-settings/@jupyterlab/apputils-extension/themes.jupyterlab-settings"
            ).exists()
    assert list((own / "workspaces").glob("mine*"))
    # A kill is reported as a cold start's would be: the fork server records the status.
    server.send_signal(signal.SIGKILL)
    rid = rt["id"]
    wait_until(lambda: (data / "local" / "runtimes" / rid / "exit.json").exists(), 10,
               what="the fork server recording the exit")
    exit_record = json.loads((data / "local" / "runtimes" / rid / "exit.json").read_text())
    assert exit_record["code"] == -signal.SIGKILL


def test_a_dead_fork_server_is_replaced_and_a_broken_one_means_cold_starts(
        make_service: Any) -> None:
    svc: Service = make_service(local_containers=False)
    data = svc.settings.data_dir
    ann = svc.user("ann@example.org")
    for ws in ("one", "two", "three"):
        svc.workspace(ws, ann)
    first = _running(ann, "one")
    old = _fork_server(data)
    old.kill()
    old.wait(10)
    second = _running(ann, "two")
    assert _pid_record(data, second["id"])["forked"] is True
    new = _fork_server(data)
    assert new.pid != old.pid
    assert psutil.Process(_pid_record(data, second["id"])["pid"]).ppid() == new.pid
    # The first runtime, forked by the dead one, kept running.
    assert ann.get(f"/api/v1/runtimes/{first['id']}").json()["status"] == "running"
    assert psutil.Process(_pid_record(data, first["id"])["pid"]).is_running()
    # A fork server that cannot start: the start is cold, and works.
    new.kill()
    new.wait(10)
    forks = svc.ctx.backend.fork_server()  # type: ignore[attr-defined]
    forks.interpreter = "/bin/false"
    third = _running(ann, "three")
    assert _pid_record(data, third["id"])["forked"] is False


@pytest.mark.slow
def test_the_fork_server_outlives_the_control_plane(service_process: Any) -> None:
    sp = service_process(ENVMGR_LOCAL_CONTAINERS="false")
    sp.start()
    api = sp.api()
    for ws in ("fork-a", "fork-b"):
        assert api.post("/api/v1/workspaces", json={"name": ws}).status_code == 201
    before = _running(api, "fork-a")
    forks = _fork_server(sp.data_dir)
    sp.kill()
    sp.start()
    api = sp.api()
    after = _running(api, "fork-b")
    assert _fork_server(sp.data_dir).pid == forks.pid
    for rt in (before, after):
        assert psutil.Process(_pid_record(sp.data_dir, rt["id"])["pid"]).ppid() == forks.pid
    assert api.get(f"/api/v1/runtimes/{before['id']}").json()["status"] == "running"


@pytest.mark.slow
def test_nothing_is_left_behind(service_process: Any) -> None:
    sp = service_process(ENVMGR_LOCAL_CONTAINERS="false")
    sp.start()
    wait_until(lambda: list((sp.data_dir / "local" / "runtimes").glob("forkserver-*.json")),
               60, what="the fork server")
    idle = _fork_server(sp.data_dir)
    assert sp.terminate()  # a helper that serves no runtime ends with the service
    wait_until(lambda: not idle.is_running() or idle.status() == psutil.STATUS_ZOMBIE, 10,
               what="the idle fork server to end with the service")
    sp.start()
    api = sp.api()
    assert api.post("/api/v1/workspaces", json={"name": "left"}).status_code == 201
    rt = _running(api, "left")
    sp.kill()  # runtimes outlive the service (as VMs do), and so does their fork server
    left = {p.pid for p in local_processes(sp.data_dir)}
    assert left >= {_pid_record(sp.data_dir, rt["id"])["pid"]}
    env = {**sp.env, "ENVMGR_DATA_DIR": str(sp.data_dir)}
    done = subprocess.run([sys.executable, "-m", "envmgr.cli", "stop-local"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "stopped" in done.stdout, done.stdout + done.stderr
    assert local_processes(sp.data_dir) == []
    mounts = Path("/proc/self/mounts").read_text()
    assert str((sp.data_dir / "local").resolve()) not in mounts
