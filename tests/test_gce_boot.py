"""The real startup script boots a VM that serves Jupyter with envmgr's extension, twice.

The control plane (gce backend, against the fake Compute API, waiting for readiness as in
production) creates a runtime; the VM (tests/boot.py: Debian 12 from debootstrap, a
metadata server stand-in, a loop device as the user disk, a chroot) runs the startup
script from the instance's metadata. The runtime becomes `running` only when the VM's
Jupyter answers the control plane with the derived token. The first boot formats the disk
and installs the runtime package (hash-checked); a pause powers the VM off; the resume
boots it again, which keeps the files and installs nothing (pauses stop rather than
suspend here: a chroot cannot keep its memory). Needs root (CI has it)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import boot
from tests.conftest import Service, free_port, run_cell, wait_until
from tests.fakes.compute import FakeComputeServer
from tests.test_attacks_sandbox import SWAP_CONFIG

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="a VM's boot needs root")]


# The sandbox test's cell, on a VM: links to a root-only canary in place of the config.
PLANT = SWAP_CONFIG % {"canary": "/etc/envmgr-canary", "canary_dir": "/etc"} + \
    "print(json.dumps(res))\n"


def _jupyter(svc: Service, api: Any, rid: str) -> httpx.Client:
    return httpx.Client(base_url=f"{svc.base}/proxy/{rid}", timeout=60,
                        headers={"Authorization": api.http.headers["Authorization"]})


def _assert_serving(svc: Service, api: Any, vm: boot.Vm, rid: str,
                    booted: subprocess.CompletedProcess, workspace: str) -> None:
    """The boot ended well and the runtime is `running`, served by the VM as the
    unprivileged jupyter user (uid 2000) with envmgr's extension answering."""
    assert booted.returncode == 0, booted.stdout[-3000:] + booted.stderr[-3000:]
    rt = api.wait_status(rid, timeout=300)
    assert rt["status"] == "running", (rt, boot.dump(vm))
    with _jupyter(svc, api, rid) as jp:
        assert jp.get("/api/status").status_code == 200
        info = jp.get("/envmgr/info", params={"path": f"{workspace}/edit/a.ipynb"})
        assert info.status_code == 200 and info.json()["mode"] == "edit"
    servers = [p for p in vm.processes() if "jupyter_server" in " ".join(p.cmdline())]
    assert servers and {p.uids().real for p in servers} == {2000}


def _boot_when_asked(compute: FakeComputeServer, vm: boot.Vm, rid: str,
                     results: list[Any]) -> threading.Thread:
    """Plays GCE: once the instance exists (or is started again) with its metadata, the VM
    boots with exactly that startup script and those attributes."""
    def run() -> None:
        inst = wait_until(lambda: (i := compute.fake.instances.get(rid)) and
                          i["status"] in ("RUNNING", "STAGING") and i, 300,
                          what="the instance to start")
        attrs = boot.attributes(inst)
        server = boot.Metadata(attrs)
        try:
            results.append(vm.boot(attrs["startup-script"]))
        finally:
            server.stop()
            results.append(server.seen)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.timeout(1800)  # the first run builds Debian 12 and installs Jupyter in it
def test_the_startup_script_boots_a_vm_that_serves_jupyter_twice(
        make_service: Any, tmp_path: Path) -> None:
    server = FakeComputeServer(free_port())
    port = free_port()
    svc: Service = make_service(backend="gce", gce_project="proj", gce_zone="us-central1-a",
                                gce_endpoint=server.url, gce_poll_seconds=0.1,
                                gce_retry_initial_seconds=0.01, gce_jupyter_port=port,
                                gce_readiness_timeout_seconds=900, gce_pause="stop",
                                autopause_interval_seconds=3600)
    alice = svc.user("alice@example.org")
    svc.workspace("boot", alice)
    with boot.vm(tmp_path) as vm:
        try:
            results: list[Any] = []
            rid = alice.create_runtime("boot", autopause_minutes=0)["id"]
            booting = _boot_when_asked(server, vm, rid, results)
            booting.join(900)  # the script ends once it started Jupyter's unit
            _assert_serving(svc, alice, vm, rid, results[0], "boot")
            with _jupyter(svc, alice, rid) as jp:
                made = jp.put("/api/contents/kept.txt", json={"type": "file", "format": "text",
                                                              "content": "first boot"})
                assert made.status_code == 201, made.text
            # No token on any command line, none left in metadata, the ticket used up.
            tokens = {svc.ctx.signer.jupyter_token(rid), svc.ctx.signer.runtime_token(rid)}
            assert not [p for p in vm.processes() if any(t in " ".join(p.cmdline())
                                                         for t in tokens)]
            attrs = boot.attributes(server.fake.instances[rid])
            assert not [k for k, v in attrs.items() if any(t in v for t in tokens)]
            again = httpx.post(f"{svc.base}/runtime-api/v1/boot", headers={
                "Authorization": f"Bearer {attrs['envmgr-boot-ticket']}"})
            assert again.status_code == 401
            fs = subprocess.run(["blkid", "-p", "-s", "TYPE", "-o", "value", vm.loop],
                                capture_output=True, text=True).stdout.strip()
            assert fs == "ext4"  # the blank disk was formatted by the first boot
            venv = (vm.root / "opt/envmgr/bin/python").stat().st_ino
            # A cell tries to aim root's next writes elsewhere: links in place of the
            # config that root writes at every boot (the folder was jupyter's before).
            canary = vm.root / "etc/envmgr-canary"
            canary.write_text("root's own\n")
            canary.chmod(0o600)
            planted = json.loads(run_cell(alice, rid, PLANT).strip())
            assert planted == {"swap_config_file": "PermissionError",
                               "swap_config_folder": "PermissionError"}, planted

            # Pause: the VM is stopped (powered off here); resume boots it again.
            assert alice.post(f"/api/v1/runtimes/{rid}/pause").status_code == 202
            wait_until(lambda: server.fake.instances[rid]["status"] in
                       ("STOPPING", "TERMINATED"), 120, what="stop sent")
            vm.power_off()
            assert alice.wait_status(rid, timeout=120)["status"] == "paused"
            results.clear()
            assert alice.post(f"/api/v1/runtimes/{rid}/resume").status_code == 202
            booting = _boot_when_asked(server, vm, rid, results)
            booting.join(600)
            second = results[0]
            assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
            rt = alice.wait_status(rid, timeout=300)
            assert rt["status"] == "running", (rt, boot.dump(vm))
            # Installed once, on the boot disk: the second boot made no new venv.
            assert (vm.root / "opt/envmgr/bin/python").stat().st_ino == venv
            with _jupyter(svc, alice, rid) as jp:
                kept = jp.get("/api/contents/kept.txt")
                assert kept.status_code == 200 and kept.json()["content"] == "first boot"
            # Root wrote the config anew and through none of the links.
            assert canary.read_text() == "root's own\n" and canary.stat().st_uid == 0
            conf = vm.root / "etc/envmgr-jupyter/jupyter"
            for p in (conf, *conf.rglob("*")):
                st = p.lstat()
                assert st.st_uid == 0 and not p.is_symlink() and not st.st_mode & 0o022, p
            boot_disk = vm.root / "opt/envmgr/.package-sha256"
            assert boot_disk.read_text().strip() == attrs["envmgr-package-sha256"]
        finally:
            vm.power_off()
            server.stop()


@pytest.mark.timeout(1800)
def test_a_spare_installs_while_it_waits_and_serves_once_claimed(
        make_service: Any, tmp_path: Path) -> None:
    """The pool's path on a VM: a spare boots with no runtime and no user disk, installs
    the package and waits; a create claims it (its metadata now names the runtime, the disk
    is hot-attached), and the same boot goes on to format and mount the disk, redeem the
    ticket and serve Jupyter as the jupyter user, with no second install."""
    server = FakeComputeServer(free_port())
    svc: Service = make_service(backend="gce", gce_project="proj", gce_zone="us-central1-a",
                                gce_endpoint=server.url, gce_poll_seconds=0.1,
                                gce_retry_initial_seconds=0.01, gce_jupyter_port=free_port(),
                                gce_readiness_timeout_seconds=900, warm_at_start=True,
                                pool_size=1, pool_machine_types=["e2-standard-4"],
                                pool_refill_seconds=3600, autopause_interval_seconds=3600)
    alice = svc.user("alice@example.org")
    svc.workspace("pool", alice)
    spare = "envmgr-spare-e2-standard-4-0"
    metadata: boot.Metadata | None = None
    with boot.vm(tmp_path) as vm:
        try:
            inst = wait_until(lambda: (i := server.fake.instances.get(spare)) and
                              i["status"] == "RUNNING" and i, 120, what="the spare")
            assert "envmgr-runtime" not in boot.attributes(inst)
            metadata = boot.Metadata(lambda: boot.attributes(server.fake.instances[spare]))
            results: list[Any] = []
            booting = threading.Thread(target=lambda: results.append(
                vm.boot(boot.attributes(inst)["startup-script"], disk=False)), daemon=True)
            booting.start()
            installed = vm.root / "opt/envmgr/.package-sha256"
            wait_until(lambda: installed.exists() or results, 900, interval=0.5,
                       what="the spare's install")
            assert not results, results[0].stderr[-3000:]  # still waiting for its claim
            venv = (vm.root / "opt/envmgr/bin/python").stat().st_ino
            rid = alice.create_runtime("pool", machine_type="e2-standard-4",
                                       autopause_minutes=0)["id"]
            wait_until(lambda: any(d.get("deviceName") == "user-disk"
                                   for d in server.fake.instances[spare]["disks"]), 120,
                       what="the user disk attached to the spare")
            vm.attach_disk()
            booting.join(600)
            assert results, "the spare's boot did not end"
            _assert_serving(svc, alice, vm, rid, results[0], "pool")
            assert (vm.root / "opt/envmgr/bin/python").stat().st_ino == venv  # installed once
            fs = subprocess.run(["blkid", "-p", "-s", "TYPE", "-o", "value", vm.loop],
                                capture_output=True, text=True).stdout.strip()
            assert fs == "ext4"
            assert boot.attributes(server.fake.instances[spare])["envmgr-runtime"] == rid
        finally:
            vm.power_off()
            if metadata is not None:
                metadata.stop()
            server.stop()
