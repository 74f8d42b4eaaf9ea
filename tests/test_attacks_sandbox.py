"""Attacks on the local sandbox's identities and on what root writes, from real cells (issue
"Local sandbox v2"): a kernel plants links where the service used to write as root; a later
runtime or job tries to own what an earlier one left; a detached process tries to outlive
its runtime's pause. As root (CI), runtimes and jobs run sandboxed."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import psutil
import pytest
import websockets.sync.client as ws_client

from envmgr.backends.local import disks
from tests.conftest import (
    Api,
    Service,
    outside_address,
    run_cell,
    server_process,
    wait_until,
)
from tests.jobs_helpers import notebook, submit, wait_job

ROOT = os.geteuid() == 0
pytestmark = pytest.mark.skipif(not ROOT, reason="the sandbox needs root (CI runs as root)")

# A cell's attempts to swap its Jupyter config (the file, the folder) for links to a root-only
# canary; `res` holds "ok" or the exception's name. The GCE boot test runs it too.
SWAP_CONFIG = """
import json, os
res = {}
conf = os.environ["JUPYTER_CONFIG_DIR"]
def attempt(name, fn):
    try:
        fn(); res[name] = "ok"
    except Exception as e:
        res[name] = type(e).__name__
def swap_file():
    path = os.path.join(conf, "jupyter_server_config.json")
    os.replace(path, path + ".old")
    os.symlink(%(canary)r, path)
def swap_folder():
    os.rename(conf, conf + ".old")
    os.symlink(%(canary_dir)r, conf)
attempt("swap_config_file", swap_file)
attempt("swap_config_folder", swap_folder)
"""

PLANT = SWAP_CONFIG + """
def plant_in_config():
    os.symlink(%(token)r, os.path.join(conf, "jupyter_server_config.d", "x.json"))
attempt("plant_in_config", plant_in_config)
# What the kernel's user does own: its disk. Links where JupyterLab's settings and
# workspaces go, and a whole ~/.jupyter that points at the canary's folder.
lab = os.path.expanduser("~/.jupyter/lab")
os.makedirs(lab, exist_ok=True)
os.symlink(%(canary_dir)r, os.path.join(lab, "user-settings"))
os.symlink(%(token)r, os.path.join(lab, "workspaces"))
os.symlink(%(canary)r, os.path.expanduser("~/migrated"))
res["uid"] = os.getuid()
print(json.dumps(res))
"""

LEAVE = """
import os
for d in ("/tmp", "/dev/shm", "/var/tmp"):
    with open(os.path.join(d, "left-%(tag)s"), "w") as f:
        f.write("secret of %(tag)s")
    os.chmod(os.path.join(d, "left-%(tag)s"), 0o600)
print(os.getuid())
"""

PROBE = """
import json, os
res = {"uid": os.getuid()}
for d in ("/tmp", "/dev/shm", "/var/tmp"):
    try:
        open(os.path.join(d, "left-%(tag)s")).read(); res[d] = "read"
    except Exception as e:
        res[d] = type(e).__name__
for name, path in (("kept_disk", %(disk)r), ("kept_disk_file", %(disk)r + "/mine.txt")):
    try:
        (os.listdir if name == "kept_disk" else lambda p: open(p, "a").write("x"))(path)
        res[name] = "ok"
    except Exception as e:
        res[name] = type(e).__name__
print(json.dumps(res))
"""

DETACH = """
import os, subprocess
p = subprocess.Popen(["/usr/bin/env", "-i", "/bin/sleep", "3600"], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
print(os.getuid())
"""


def _contained(svc: Service) -> bool:
    return svc.ctx.backend.containers is not None


# What a cell gets for what is not its own: in a container it is not even there.
def _hidden(svc: Service) -> str:
    return "FileNotFoundError" if _contained(svc) else "PermissionError"


def _host_pid(pids: set[int], inner: int) -> int:
    """The host's pid of the process a container calls `inner` (NSpid's last field)."""
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            ns = next(ln for ln in f if ln.startswith("NSpid:")).split()[1:]
        if int(ns[-1]) == inner:
            return pid
    raise AssertionError(f"no process {inner} among {pids}")


def _running(api: Api, ws: str, **body: Any) -> dict[str, Any]:
    return api.wait_status(api.create_runtime(ws, autopause_minutes=0, **body)["id"],
                           "running")


def _two_users(svc: Service) -> tuple[Api, Api]:
    """alice and bob, each the owner of a workspace of their own (ws-a, ws-b)."""
    alice, bob = svc.user("alice@example.org"), svc.user("bob@example.org")
    svc.workspace("ws-a", alice)
    svc.workspace("ws-b", bob)
    return alice, bob


def _cycle(api: Api, rid: str) -> None:
    assert api.post(f"/api/v1/runtimes/{rid}/pause").status_code == 202
    api.wait_status(rid, "paused")
    assert api.post(f"/api/v1/runtimes/{rid}/resume").status_code == 202
    api.wait_status(rid, "running")


def test_links_planted_by_a_kernel_never_make_root_write_elsewhere(
        sqlite_service: Service, tmp_path: Path) -> None:
    svc = sqlite_service
    data = svc.settings.data_dir
    canary_dir = tmp_path / "root-only"
    canary_dir.mkdir(mode=0o700)
    canary = canary_dir / "canary"
    canary.write_text("root's own\n")
    canary.chmod(0o600)
    token_before = (data / "admin-token").read_text()
    alice = _two_users(svc)[0]
    rt = _running(alice, "ws-a")
    got = json.loads(run_cell(alice, rt["id"], PLANT % {
        "canary": str(canary), "canary_dir": str(canary_dir),
        "token": str(data / "admin-token")}).strip())
    # Its Jupyter configuration is root's and read-only to it: nothing to swap (in a
    # container, a read-only mount: OSError EROFS).
    ro = "OSError" if _contained(svc) else "PermissionError"
    assert {k: got[k] for k in ("swap_config_file", "swap_config_folder",
                                "plant_in_config")} == {
        "swap_config_file": ro, "swap_config_folder": "PermissionError",
        "plant_in_config": ro}, got
    # The service writes the runtime's configuration again at the next start (and the
    # disk changes nothing of root's): the canary, the admin token and the folders stay.
    _cycle(alice, rt["id"])
    assert canary.read_text() == "root's own\n"
    st = canary.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
    assert canary_dir.stat().st_uid == 0 and sorted(os.listdir(canary_dir)) == ["canary"]
    assert (data / "admin-token").read_text() == token_before
    assert (data / "admin-token").stat().st_uid == 0
    config = data / "local" / "jupyter-config" / rt["id"]
    st = config.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o750), oct(st.st_mode)
    for p in config.rglob("*"):
        assert p.lstat().st_uid == 0 and not p.is_symlink(), p
        assert not p.lstat().st_mode & 0o022, p  # nobody but root writes it
    # And the runtime still works after all that (its kernel runs, as the disk's uid).
    assert json.loads(run_cell(alice, rt["id"], "import os; print(os.getuid())")
                      ) == got["uid"]


def test_a_uid_is_never_given_twice(sqlite_service: Service) -> None:
    svc = sqlite_service
    alice, bob = _two_users(svc)
    first = _running(alice, "ws-a")
    tag = f"alice-{secrets.token_hex(4)}"
    try:
        _never_twice(svc, alice, bob, first, tag)
    finally:
        for d in ("/tmp", "/dev/shm", "/var/tmp"):
            (Path(d) / f"left-{tag}").unlink(missing_ok=True)


def _never_twice(svc: Service, alice: Api, bob: Api, first: dict[str, Any], tag: str) -> None:
    data = svc.settings.data_dir
    alice_uid = int(run_cell(alice, first["id"], LEAVE % {"tag": tag}).strip())
    run_cell(alice, first["id"], "open('mine.txt', 'w').write('alice')")
    assert alice.delete(f"/api/v1/runtimes/{first['id']}").status_code == 202  # keep disk
    alice.wait_status(first["id"], "deleted")
    kept = data / "local" / "disks" / first["disk_id"]
    # An image at rest: mounted only while a runtime runs on it.
    assert not disks.mounted(kept) and list(kept.iterdir()) == []
    # Everyone after her: another user's runtime, a job, and runtimes on new disks.
    seen = {alice_uid}
    probe = PROBE % {"tag": tag, "disk": str(kept)}
    for _ in range(2):
        rt = _running(bob, "ws-b")
        got = json.loads(run_cell(bob, rt["id"], probe).strip())
        assert got["uid"] not in seen and got["uid"] > svc.settings.local_uid_base, got
        seen.add(got["uid"])
        assert {k: got[k] for k in ("/tmp", "/dev/shm", "/var/tmp", "kept_disk",
                                    "kept_disk_file")} == dict.fromkeys(
            ("/tmp", "/dev/shm", "/var/tmp", "kept_disk", "kept_disk_file"),
            _hidden(svc)), got
        assert bob.delete(f"/api/v1/runtimes/{rt['id']}",
                          params={"keep_disk": "false"}).status_code == 202
        bob.wait_status(rt["id"], "deleted")
    job_code = probe.replace("print(json.dumps(res))", "print('RESULT', json.dumps(res))")
    done = wait_job(bob, submit(bob, "ws-b", ipynb=notebook(job_code))["id"])
    assert done["status"] == "succeeded", done
    out = bob.get(f"/api/v1/jobs/{done['id']}/output").json()
    texts = [o.get("text", "") for c in out["cells"] for o in c.get("outputs", [])]
    text = "".join("".join(t) if isinstance(t, list) else t for t in texts)
    got = json.loads(text.split("RESULT", 1)[1])
    assert got["uid"] not in seen and got["/tmp"] == _hidden(svc), got
    assert got["kept_disk"] == _hidden(svc), got
    # Her disk comes back with her files and her uid; her leftovers are still hers.
    again = _running(alice, "ws-a", disk={"id": first["disk_id"]})
    assert run_cell(alice, again["id"], "import os; print(os.getuid(), open('mine.txt').read())"
                    ).split() == [str(alice_uid), "alice"]
    if _contained(svc):  # what she left in her /tmp went with her container
        assert not (Path("/tmp") / f"left-{tag}").exists()
    else:
        assert (Path("/tmp") / f"left-{tag}").stat().st_uid == alice_uid


def test_nothing_of_a_paused_runtime_still_runs(sqlite_service: Service) -> None:
    svc = sqlite_service
    alice = _two_users(svc)[0]
    rt = _running(alice, "ws-a")
    uid = int(run_cell(alice, rt["id"], DETACH).strip())
    detached = wait_until(lambda: [p for p in psutil.process_iter(["uids", "cmdline"])
                                   if p.info["uids"].real == uid
                                   and p.info["cmdline"] == ["/bin/sleep", "3600"]], 10,
                          what="the detached process")[0]
    assert "ENVMGR_RUNTIME_ID" not in detached.environ()  # it dropped the marker
    assert alice.post(f"/api/v1/runtimes/{rt['id']}/pause").status_code == 202
    alice.wait_status(rt["id"], "paused")
    wait_until(lambda: not [p for p in psutil.process_iter(["uids"])
                            if p.info["uids"].real == uid
                            and p.status() != psutil.STATUS_ZOMBIE], 20,
               what="every process of the paused runtime's uid to be gone")


PRINTER = """
import threading, time
def _loop():
    for i in range(100000):
        print("ALICE-SECRET-%d" % i, flush=True)
        time.sleep(0.2)
threading.Thread(target=_loop, daemon=True).start()
"""

EAVESDROP = """
import json, os, time, zmq
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"")
targets = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # every listening port on this machine
    for line in open(table).read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A":
            port = int(local.split(":")[1], 16)
            targets.append("tcp://%%s:%%d" %% ("127.0.0.1" if table.endswith("tcp")
                                             else "[::1]", port))
targets.append("ipc://" + %(iopub)r)  # and the victim's own channel, named
res = {"listdir": None, "got": []}
try:
    os.listdir(os.path.dirname(%(iopub)r)); res["listdir"] = "ok"
except Exception as e:
    res["listdir"] = type(e).__name__
if table.endswith("6"):
    sub.setsockopt(zmq.IPV6, 1)
for t in targets:
    try:
        sub.connect(t)
    except zmq.ZMQError:
        pass
deadline = time.time() + 8
while time.time() < deadline and not res["got"]:
    if sub.poll(200):
        frames = sub.recv_multipart()
        if any(b"ALICE-SECRET" in f for f in frames):
            res["got"].append("secret")
res["targets"] = len(targets)
print(json.dumps(res))
"""


def test_another_kernel_cannot_listen_to_a_kernels_output(sqlite_service: Service) -> None:
    import zmq
    svc = sqlite_service
    alice, bob = _two_users(svc)
    mine, theirs = _running(alice, "ws-a"), _running(bob, "ws-b")
    kid = alice.post(f"/proxy/{mine['id']}/api/kernels", json={"name": "python3"}).json()["id"]
    run_cell(alice, mine["id"], PRINTER, kernel_id=kid)
    disk = svc.settings.data_dir / "local" / "disks" / mine["disk_id"]
    info = json.loads((disk / ".local/share/jupyter/runtime" / f"kernel-{kid}.json"
                       ).read_text())
    assert info["transport"] == "ipc", info  # no port of the kernel on any network
    iopub = f"{info['ip']}-{info['iopub_port']}"
    # Root reaches a container's sockets through its root (the service's view of it).
    seen = f"/proc/{server_process(svc.settings.data_dir, mine['id']).pid}/root{iopub}" \
        if _contained(svc) else iopub
    # (ipykernel still listens on one loopback port: the PULL end of its pipe for forked
    # children's output, which sends nothing and drops messages without its random key.)
    # The check works: root, allowed into the folder, hears her output.
    ctx = zmq.Context()
    control = ctx.socket(zmq.SUB)
    control.setsockopt(zmq.SUBSCRIBE, b"")
    control.connect(f"ipc://{seen}")
    try:
        wait_until(lambda: control.poll(200) and b"ALICE-SECRET" in b"".join(
            control.recv_multipart()), 20, what="alice's output on her IOPub")
    finally:
        control.close(0)
        ctx.term()
    # Its socket folder is a 1 MiB tmpfs of its own: filling it fills nobody else's /run.
    fill = run_cell(alice, mine["id"], "import os, errno\ntry:\n    open(os.path.join("
                    "os.environ['ENVMGR_KERNEL_IPC_DIR'], 'fill'), 'wb').write(b'x' * 4 * "
                    "2**20); print('wrote')\nexcept OSError as e:\n    print(errno."
                    "errorcode[e.errno])").strip()
    assert fill == "ENOSPC", fill
    got = json.loads(run_cell(bob, theirs["id"], EAVESDROP % {"iopub": iopub}).strip())
    assert got["got"] == [], got
    # Her socket folder: another uid's to enter, or (in his container) his own.
    assert got["listdir"] == ("ok" if _contained(svc) else "PermissionError"), got
    assert got["targets"] >= 2, got  # it did try the machine's ports (Jupyter's among them)


FILL = """
import errno, os
path = os.path.expanduser("~/fill.bin")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
try:
    os.posix_fallocate(fd, 0, 11 * 2**30)  # past the 10 GB the disk was made with
    print("filled")
except OSError as e:
    print(errno.errorcode[e.errno])
finally:
    os.close(fd)
    os.unlink(path)
st = os.statvfs(os.path.expanduser("~"))
print(st.f_blocks * st.f_frsize / 2**30)
"""


def test_a_disk_holds_its_size_and_no_more(sqlite_service: Service) -> None:
    svc = sqlite_service
    alice = _two_users(svc)[0]
    rt = _running(alice, "ws-a", disk={"size_gb": 10})
    local = svc.settings.data_dir / "local"
    image = local / "disk-images" / f"{rt['disk_id']}.img"
    mounted = local / "disks" / rt["disk_id"]
    assert os.path.ismount(mounted) and image.stat().st_size == 10 * 2**30
    assert image.stat().st_blocks * 512 < 2**30  # sparse: only what is written costs
    assert (image.stat().st_uid, image.stat().st_mode & 0o777) == (0, 0o600)
    said, size = run_cell(alice, rt["id"], FILL).split()
    assert said == "ENOSPC", said  # in the kernel, not in the host's file systems
    assert 9 < float(size) <= 10, size
    # Mounted only while attached to a running runtime: a pause puts it to rest.
    run_cell(alice, rt["id"], "open('kept.txt', 'w').write('kept')")
    assert alice.post(f"/api/v1/runtimes/{rt['id']}/pause").status_code == 202
    alice.wait_status(rt["id"], "paused")
    assert not disks.mounted(mounted) and list(mounted.iterdir()) == []
    assert alice.post(f"/api/v1/runtimes/{rt['id']}/resume").status_code == 202
    alice.wait_status(rt["id"], "running")
    assert run_cell(alice, rt["id"], "print(open('kept.txt').read())").strip() == "kept"
    assert image.stat().st_blocks * 512 < 2**30  # nothing was left behind
    assert alice.delete(f"/api/v1/runtimes/{rt['id']}",
                        params={"keep_disk": "false"}).status_code == 202
    alice.wait_status(rt["id"], "deleted")
    wait_until(lambda: not image.exists() and not mounted.exists(), 30,
               what="the disk's image and mount to be gone")


def test_a_kernel_past_its_memory_is_killed_alone(make_service: Any) -> None:
    from envmgr.backends.local.limits import Cgroups
    from envmgr.costs.catalog import load_catalog
    cat = load_catalog()
    memory_gb = float(cat.machine_types[cat.default_machine_type]["memory_gb"])
    svc: Service = make_service(local_memory_scale=1 / memory_gb,  # a 1 GiB runtime
                                reconcile_interval_seconds=0.5)
    alice, bob = _two_users(svc)
    mine, theirs = _running(alice, "ws-a"), _running(bob, "ws-b")
    # The API says what it may use (no CPU quota by default).
    assert alice.runtime(mine["id"])["limits"] == {"memory_bytes": 2**30, "vcpus": None,
                                                   "pids": svc.settings.local_pids_max}
    server = server_process(svc.settings.data_dir, mine["id"])
    groups = Cgroups(svc.settings.data_dir / "local")
    assert server.pid in groups.pids(mine["id"])  # its Jupyter is in its group, and...
    kid = alice.post(f"/proxy/{mine['id']}/api/kernels", json={"name": "python3"}).json()["id"]
    pid = int(run_cell(alice, mine["id"], "import os; print(os.getpid())", kernel_id=kid))
    if _contained(svc):
        pid = _host_pid(groups.pids(mine["id"]), pid)
    assert pid in groups.pids(mine["id"])  # ...so is each of its kernels
    base = str(alice.http.base_url).replace("http", "ws", 1)
    with ws_client.connect(f"{base}/proxy/{mine['id']}/api/kernels/{kid}/channels",
                           additional_headers={"Authorization": alice.http.headers[
                               "Authorization"]}, open_timeout=30) as ws:
        ws.send(json.dumps({
            "header": {"msg_id": "m1", "username": "a", "session": "s1", "version": "5.3",
                       "msg_type": "execute_request"}, "parent_header": {}, "metadata": {},
            "channel": "shell", "content": {"code": "x = bytearray(2 * 2**30)",
                                            "silent": False}}))
        wait_until(lambda: groups.oom_kills(mine["id"]) >= 1, 60,
                   what="the kernel past 1 GiB to be killed")
    wait_until(lambda: not psutil.pid_exists(pid)
               or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 20,
               what="the kernel that allocated to be the one killed")
    # Only that kernel: its own Jupyter, the other user's runtime and the service go on.
    assert server.is_running() and alice.get(f"/proxy/{mine['id']}/api/status"
                                             ).status_code == 200
    assert run_cell(alice, mine["id"], "print(1 + 1)").strip() == "2"
    assert run_cell(bob, theirs["id"], "print(2 + 2)").strip() == "4"
    # Its events say so, once (the reconciler looks every half second here).
    said = "kernel killed: out of memory (limit 1 GiB)"
    wait_until(lambda: [e for e in alice.events(mine["id"]) if e["reason"] == said], 30,
               what="the out-of-memory kill in the runtime's events")
    # ...once: the kills said are remembered, so no later pass says them again.
    seen = json.loads((svc.settings.data_dir / "local/runtimes" / mine["id"] / "oom.json"
                       ).read_text())["seen"]
    assert seen == groups.oom_kills(mine["id"])
    assert [e["reason"] for e in alice.events(mine["id"])].count(said) == 1
    assert not [e for e in bob.events(theirs["id"]) if "out of memory" in e["reason"]]
    # Pause ends everything in the group.
    assert alice.post(f"/api/v1/runtimes/{mine['id']}/pause").status_code == 202
    alice.wait_status(mine["id"], "paused")
    assert groups.pids(mine["id"]) == set()


def test_a_limits_group_nobody_owns_is_found_and_ended(sqlite_service: Service) -> None:
    """What runs in a runtime's group after its record is gone (a crash between the two) is
    in the reconciler's view, and ending it ends every process of the group."""
    import asyncio
    import subprocess

    from envmgr.backends.base import RuntimeSpec
    from envmgr.backends.local.limits import Limits, joined
    backend = sqlite_service.ctx.backend
    assert backend.cgroups is not None
    procs = backend.cgroups.make("rt-orphan1", Limits(256 << 20, 0.5, 64))
    # It drops its marker and leaves its session: only the group still knows it.
    stray = subprocess.Popen(joined(procs, ["/usr/bin/env", "-i", "/bin/sleep", "600"]),
                             start_new_session=True)
    try:
        wait_until(lambda: stray.pid in backend.cgroups.pids("rt-orphan1"), 10,
                   what="the stray in its group")
        seen = asyncio.run(backend.inventory())
        assert seen["rt-orphan1"].state == "running", seen
        asyncio.run(backend.delete(RuntimeSpec(id="rt-orphan1", workspace="", owner="",
                                               machine_type="", disk_id=None, secret="")))
        assert stray.wait(10) == -9 and backend.cgroups.pids("rt-orphan1") == set()
        assert "rt-orphan1" not in backend.cgroups.names()
    finally:
        stray.kill()
        stray.wait(5)


def test_limits_are_written_as_the_machine_type_says(tmp_path: Path) -> None:
    """The catalog's vCPUs and memory, scaled; the CPU quota only when asked for."""
    from envmgr.backends.local.limits import Cgroups, for_machine
    if Cgroups(tmp_path).v2:
        pytest.skip("reads cgroup v1's files (this machine has v2)")
    spec = {"vcpus": 4, "memory_gb": 16}
    lim = for_machine(spec, memory_scale=0.25, cpu_scale=0.5, pids=128)
    assert (lim.memory_bytes, lim.cpus, lim.pids) == (4 * 2**30, 2.0, 128)
    assert lim.describe() == "2 vCPU, 4 GiB memory, 128 processes"
    for cpu in (False, True):
        groups = Cgroups(tmp_path / f"data-{cpu}", cpu=cpu)
        procs = groups.make("rt-limits", lim)
        try:
            dirs = {Path(p).parent.parent.parent.name: Path(p).parent for p in procs}
            assert set(dirs) == ({"memory", "cpu", "pids"} if cpu else {"memory", "pids"})
            assert (dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == \
                str(4 * 2**30)
            assert (dirs["pids"] / "pids.max").read_text().strip() == "128"
            if cpu:
                assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "200000"
        finally:
            groups.remove_all()
        assert groups.names() == set()


# From a cell: the host's loopback (the control plane's port, a server of the test's), the
# slirp gateway's way to it, the host's other address (the world, as the container sees
# it), and what listens in its own network.
NETWORK = """
import json, socket, time
def tcp(host, port, wait=0.0):
    deadline = time.time() + wait
    while True:
        try:
            with socket.create_connection((host, port), timeout=3) as s:
                return s.recv(64).decode().strip()
        except OSError as e:
            if time.time() >= deadline:
                return type(e).__name__
            time.sleep(0.2)
res = {"control_plane": tcp("127.0.0.1", %(cp)d), "host_loopback": tcp("127.0.0.1", %(port)d),
       "gateway": tcp("10.0.2.2", %(port)d),
       "outside": tcp(%(outside)r, %(port)d, wait=20) if %(outside)r else None}
res["listening"] = sum(line.split()[3] == "0A" for t in ("/proc/net/tcp", "/proc/net/tcp6")
                       for line in open(t).read().splitlines()[1:])
print(json.dumps(res))
"""

REPLACE_SOCKET = """
import os
os.symlink(%(canary)r, "/run/envmgr/jupyter/link")
os.replace("/run/envmgr/jupyter/link", "/run/envmgr/jupyter/jupyter.sock")
print(os.readlink("/run/envmgr/jupyter/jupyter.sock"))
"""


def test_a_runtime_has_no_network_of_the_hosts(sqlite_service: Service, tmp_path: Path
                                               ) -> None:
    """Jupyter and its kernels live in a network of their container's own: nothing of theirs
    listens on the host, the host's loopback (the control plane, the database, other
    services) is out of reach, the world is not (slirp4netns); and the socket the service
    reaches Jupyter on cannot be turned into a way to another socket of the host."""
    import socketserver
    import threading
    svc = sqlite_service
    if not _contained(svc):
        pytest.skip("runtimes run in containers only as root with runc")

    class Hello(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"hello\n")

    seen: list[bytes] = []

    class Canary(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            seen.append(self.request.recv(1024))
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncanary")

    hello = socketserver.ThreadingTCPServer(("0.0.0.0", 0), Hello)
    canary = socketserver.ThreadingUnixStreamServer(str(tmp_path / "canary.sock"), Canary)
    for server in (hello, canary):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    outside = outside_address()
    try:
        alice = _two_users(svc)[0]
        rt = _running(alice, "ws-a")
        got = json.loads(run_cell(alice, rt["id"], NETWORK % {
            "cp": svc.settings.port, "port": hello.server_address[1],
            "outside": outside}).strip())
        assert got["control_plane"] == "ConnectionRefusedError", got
        assert got["host_loopback"] == "ConnectionRefusedError", got
        assert got["gateway"] != "hello", got
        if outside and svc.ctx.backend.containers.slirp:
            assert got["outside"] == "hello", got
        assert got["listening"] <= 2, got  # its kernel's own, nothing of the host's
        # Nothing of the runtime listens on the host's network.
        groups = svc.ctx.backend.containers.cgroups
        mine = groups.pids(rt["id"])
        assert mine, "the runtime's group holds its processes"
        assert not [c for c in psutil.net_connections("inet") if c.pid in mine], mine
        # Its kernel swaps Jupyter's socket for a link to a root-only socket of the host.
        said = run_cell(alice, rt["id"], REPLACE_SOCKET % {
            "canary": str(tmp_path / "canary.sock")}).strip()
        assert said == str(tmp_path / "canary.sock"), said
        r = alice.get(f"/proxy/{rt['id']}/api/status")
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "runtime_unreachable", r.text
        assert str(svc.settings.data_dir) not in r.text, r.text
        assert seen == []
    finally:
        for server in (hello, canary):
            server.shutdown()
            server.server_close()
