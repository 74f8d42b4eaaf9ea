"""A container per runtime (runc, as root): a start claims a pre-started container whose
fork server has imported Jupyter, with no user, no disk and no credential; the claimed
container is the runtime's alone, is what a cold container would be, and ends with it.
Attacks from a real cell on what the container shares with the host."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from envmgr.backends.local import containers
from tests.conftest import (
    Api,
    Service,
    disk_user,
    local_processes,
    run_cell,
    server_process,
    wait_until,
)

pytestmark = pytest.mark.skipif(not containers.available(),
                                reason="containers need root, runc and tini (CI has them)")
CAP_SETUID_SETGID = 0xC0


def _record(svc: Service, rid: str) -> dict[str, Any]:
    path = svc.settings.data_dir / "local" / "runtimes" / rid / "pid.json"
    return dict(json.loads(path.read_text()))


def _running(api: Api, ws: str) -> dict[str, Any]:
    return api.wait_status(api.create_runtime(ws, autopause_minutes=0)["id"], "running")


def _caps(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(ln for ln in f if ln.startswith("CapEff:")).split()[1], 16)


def _pooled(svc: Service) -> list[Path]:
    return sorted((svc.settings.data_dir / "local" / "pool").glob("pool-*"))


PROBE = """
import json, os, socket
res = {"uid": os.getuid(), "home": os.path.expanduser("~"), "cwd": os.getcwd(),
       "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
for name, fn in (("ctl", lambda: os.listdir("/run/envmgr/ctl")),
                 ("config_write", lambda: open("/run/envmgr/config/x", "w")),
                 ("root_write", lambda: open("/usr/x", "w")),
                 ("tini_environ", lambda: open("/proc/1/environ").read()),
                 ("host_socket", lambda: socket.socket(socket.AF_UNIX).connect(
                     "/run/postgresql/.s.PGSQL.5432"))):
    try:
        fn(); res[name] = "ok"
    except Exception as e:
        res[name] = type(e).__name__
res["mine"] = open(os.path.expanduser("~/mine.txt")).read()
print(json.dumps(res))
"""


def test_a_start_claims_a_pre_started_container_that_is_its_alone(
        make_service: Any) -> None:
    svc: Service = make_service(warm_at_start=True, reconcile_interval_seconds=0.5)
    wait_until(lambda: _pooled(svc), 60, what="a pre-started container")
    slot = _pooled(svc)[0]
    assert list((slot / "home").iterdir()) == []  # no disk, no user: nobody's yet
    ann = svc.user("ann@example.org")
    svc.workspace("pool", ann)
    rt = _running(ann, "pool")
    disk_id = rt["disk_id"]
    disk = svc.settings.data_dir / "local" / "disks" / disk_id
    run_cell(ann, rt["id"], "open('mine.txt', 'w').write(\"ann's\")")
    record = _record(svc, rt["id"])
    assert record["container"] == slot.name and record["contained"] is True, record
    server = server_process(svc.settings.data_dir, rt["id"])
    forks = psutil.Process(server.ppid())
    assert "envmgr_jupyter.forkserver" in forks.cmdline()
    assert forks.uids().real == 0 and _caps(forks.pid) == CAP_SETUID_SETGID
    assert server.username() == disk_user(svc.settings, disk_id) and _caps(server.pid) == 0
    assert server.cmdline()[1:] == ["-m", "jupyter_server"]
    got = json.loads(run_cell(ann, rt["id"], PROBE).strip())
    assert got["home"] == got["cwd"] == "/home/jupyter" and got["mine"] == "ann's", got
    assert got["uid"] == server.uids().real
    # Its own PID namespace: tini, the fork server, Jupyter, its kernels; nobody else's.
    assert got["pids"][0] == 1 and len(got["pids"]) <= 8, got
    assert {k: got[k] for k in ("ctl", "config_write", "root_write", "tini_environ",
                                "host_socket")} == {
        "ctl": "PermissionError", "config_write": "PermissionError",
        "root_write": "OSError", "tini_environ": "PermissionError",
        "host_socket": "FileNotFoundError"}, got
    # The next container is pre-started for the next start, and is not this one.
    wait_until(lambda: [p for p in _pooled(svc) if p.name != slot.name], 60,
               what="the pool refilled")
    # A pause ends the container, its mounts of the disk and its folder; the disk is intact.
    assert ann.post(f"/api/v1/runtimes/{rt['id']}/pause").status_code == 202
    ann.wait_status(rt["id"], "paused")
    assert not slot.exists() and not forks.is_running()
    assert slot.name not in svc.ctx.backend.containers.names()  # type: ignore[attr-defined]
    mounts = Path("/proc/self/mounts").read_text()
    assert str(slot) not in mounts and str(disk) not in mounts  # an image at rest
    # Resumed: another container (a claimed one is never reused), the same files.
    assert ann.post(f"/api/v1/runtimes/{rt['id']}/resume").status_code == 202
    ann.wait_status(rt["id"], "running")
    assert _record(svc, rt["id"])["container"] != slot.name
    assert json.loads(run_cell(ann, rt["id"], PROBE).strip())["mine"] == "ann's"
    # A kill is reported as a cold start's would be (the container's status is Jupyter's).
    os.kill(server_process(svc.settings.data_dir, rt["id"]).pid, signal.SIGKILL)
    rt = ann.wait_status(rt["id"], "paused", "error", timeout=30)
    assert "jupyter-server was killed by SIGKILL (signal 9)" in rt["status_reason"], rt


def test_unclaimed_containers_end_with_the_service(make_service: Any) -> None:
    svc: Service = make_service(warm_at_start=True)
    wait_until(lambda: _pooled(svc) and any(
        n.startswith("pool-") for n in svc.ctx.backend.containers.names()),  # type: ignore[attr-defined]
        60, what="a pre-started container (its folder, then runc's record)")
    svc.stop()
    assert _pooled(svc) == []
    assert not [n for n in svc.ctx.backend.containers.names()  # type: ignore[attr-defined]
                if n.startswith("pool-")]


@pytest.mark.slow
def test_stop_local_ends_every_container_of_a_data_dir(service_process: Any) -> None:
    """After the service is killed, runtimes' and pre-started containers live on (as VMs
    would); `envmgr stop-local` ends them all: processes, runc's records, mounts, groups."""
    import subprocess
    import sys

    from envmgr.backends.local.limits import Cgroups
    sp = service_process()
    sp.start()
    api = sp.api()
    assert api.post("/api/v1/workspaces", json={"name": "left"}).status_code == 201
    rt = _running(api, "left")
    wait_until(lambda: list((sp.data_dir / "local" / "pool").glob("*/ctl/forkserver-*.sock")),
               60, what="a pre-started container")
    sp.kill()
    root = str((sp.data_dir / "local").resolve())

    runtime = json.loads((sp.data_dir / "local/runtimes" / rt["id"] / "pid.json").read_text())
    assert runtime["pid"] in {p.pid for p in local_processes(sp.data_dir)}
    done = subprocess.run([sys.executable, "-m", "envmgr.cli", "stop-local"],
                          env={**sp.env, "ENVMGR_DATA_DIR": str(sp.data_dir)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "stopped" in done.stdout, done.stdout + done.stderr
    assert local_processes(sp.data_dir) == []
    assert not list((sp.data_dir / "local" / "runc").iterdir())
    assert root not in Path("/proc/self/mounts").read_text()
    groups = Cgroups(sp.data_dir / "local")
    assert groups.names() == set()
