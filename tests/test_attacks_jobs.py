"""Attacks from inside a notebook job (the sandbox as root): a job reads nothing of the
service's, and cannot make the service read (and hand back) a file for it."""

from __future__ import annotations

import os
import pwd
import re
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import Service, marked_processes, wait_until
from tests.jobs_helpers import notebook, submit, wait_job

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")


@pytest.fixture
def svc(make_service: Callable[..., Service]) -> Service:
    s = make_service(job_poll_seconds=0.1)
    s.workspace("lab", s.admin)
    return s


def log_of(svc: Service, job_id: str) -> str:
    r = svc.admin.get(f"/api/v1/jobs/{job_id}/output", params={"format": "log"})
    return r.text if r.status_code == 200 else ""


def test_a_job_reads_nothing_of_the_service(svc: Service) -> None:
    data = str(svc.settings.data_dir)
    probe = f"""
import os, pathlib
for name in ("admin-token", "secret-key", "envmgr.core.db"):
    try:
        pathlib.Path({data!r}, name).read_bytes(); print("READ", name)
    except OSError as exc:
        print("denied", name, type(exc).__name__)
for sub in ("", "/local/disks", "/local/jobs", "/buckets"):
    folder = {data!r} + sub
    try:
        found = os.listdir(folder)
        # In a container, the data dir is only the way to the (read-only) runtime image.
        print("way" if found == ["local"] else "LISTED", folder, found)
    except OSError as exc:
        print("denied", folder, type(exc).__name__)
print("uid", os.getuid())
print("settings", sorted(k for k in os.environ if k.startswith("ENVMGR_")))
try:
    open("/proc/{os.getpid()}/environ").read(); print("READ the service's environ")
except OSError:
    print("denied the service's environ")
"""
    done = wait_job(svc.admin, submit(svc.admin, "lab", ipynb=notebook(probe))["id"])
    assert done["status"] == "succeeded", done
    out = log_of(svc, done["id"])
    assert "READ" not in out and "LISTED" not in out, out
    assert out.count("denied") + out.count("way ") == 8, out
    assert "uid 0" not in out
    assert "settings ['ENVMGR_JOB_ID', 'ENVMGR_KERNEL_IPC_DIR', 'ENVMGR_LOCAL_ROOT']" in out, out


def test_a_job_cannot_swap_its_outputs_for_the_service_s_files(svc: Service) -> None:
    """A detached process without the job's marker keeps replacing the job's log with a
    symlink (and a hard link) to the signing key while the job ends: what reaches the
    bucket is never the key, and nothing of the job's user is left running."""
    key = (svc.settings.data_dir / "secret-key").read_text().strip()
    folder_log = "../log.txt"
    swap = f"""
import os, subprocess, sys, time
code = '''
import os, time
end = time.time() + 30
while time.time() < end:
    for make in (os.symlink, os.link):
        try:
            tmp = "../.swap"
            try: os.unlink(tmp)
            except OSError: pass
            make({str(svc.settings.data_dir / 'secret-key')!r}, tmp)
            os.replace(tmp, {folder_log!r})
        except OSError:
            pass
    time.sleep(0.01)
'''
subprocess.Popen([sys.executable, "-c", code], env={{}}, start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("planted by uid", os.getuid())
"""
    done = wait_job(svc.admin, submit(svc.admin, "lab", ipynb=notebook(swap))["id"])
    assert done["status"] in ("succeeded", "failed"), done
    assert key not in log_of(svc, done["id"])
    for fmt in ("ipynb", "html"):
        r = svc.admin.get(f"/api/v1/jobs/{done['id']}/output", params={"format": fmt})
        assert key not in r.text
    executed = svc.admin.get(f"/api/v1/jobs/{done['id']}/output").text
    uid = int(re.search(r"planted by uid (\d+)", executed).group(1))  # type: ignore[union-attr]
    assert uid != 0
    wait_until(lambda: not marked_processes(svc.settings.data_dir), 20,
               what="the job's processes to be gone")
    left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]
    assert left == [], left  # the marker-less swapper too
    # Its system user is gone with it (userdel waits out the swapper's last moments); the
    # uid is retired, never handed to anyone again.
    wait_until(lambda: uid not in [u.pw_uid for u in pwd.getpwall()], 20,
               what="the job's system user to be removed")


def test_a_job_reaches_no_socket_of_the_host(svc: Service, tmp_path: Path) -> None:
    """Whatever its network, a job reaches no Unix socket of the host (a root-only one the
    test listens on) and, in a container, nothing on the host's loopback (the control
    plane's port): `none` has only a loopback of its own, the default the world without
    the host's loopback."""
    if getattr(svc.ctx.backend, "containers", None) is None:
        pytest.skip("jobs run in containers only as root with runc")
    heard: list[bytes] = []

    class Canary(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            heard.append(self.request.recv(64))

    sock = tmp_path / "root-only.sock"
    server = socketserver.ThreadingUnixStreamServer(str(sock), Canary)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    probe = f"""
import socket
for name, family, where in (("unix", socket.AF_UNIX, {str(sock)!r}),
                            ("control plane", socket.AF_INET, ("127.0.0.1", {svc.settings.port}))):
    s = socket.socket(family)
    s.settimeout(3)
    try:
        s.connect(where); s.sendall(b"job was here"); print("REACHED", name)
    except OSError as exc:
        print("refused", name, type(exc).__name__)
"""
    try:
        for network in ("none", "default"):
            done = wait_job(svc.admin, submit(svc.admin, "lab", ipynb=notebook(probe),
                                              network=network)["id"])
            assert done["status"] == "succeeded", done
            out = log_of(svc, done["id"])
            assert "REACHED" not in out and out.count("refused") == 2, (network, out)
    finally:
        server.shutdown()
        server.server_close()
    assert heard == []
