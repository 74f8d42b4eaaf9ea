"""A Compute Engine VM as near as this machine can make one, for the boot test: a Debian 12
root filesystem built from Debian's packages by debootstrap, a metadata server stand-in
answering as GCE's does (`Metadata-Flavor: Google`, 403 without it), a loop device at
`/dev/disk/by-id/google-user-disk`, and the startup script run as root in a chroot of its
own mount namespace (as google-startup-scripts runs it). The one thing that is not real:
systemd. A stand-in `systemctl` starts a unit's ExecStart as its User, Group,
WorkingDirectory and Environment, detached, as systemd would (Restart= is not exercised)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
PACKAGES = "python3,python3-venv,curl,ca-certificates,e2fsprogs,util-linux,mount,passwd,procps"
METADATA_IP = "127.0.0.254"  # metadata.google.internal, inside the VM
SYSTEMCTL = r"""#!/bin/bash
# envmgr's boot test: a stand-in for systemd's systemctl (this is a chroot, not a booted
# system). `restart UNIT` runs the unit's ExecStart as systemd would: as its User and
# Group, in its WorkingDirectory, with its Environment and nothing else, detached.
set -euo pipefail
case "${1:-}" in
  daemon-reload|enable) exit 0 ;;
  restart|start) ;;
  *) echo "systemctl stand-in: $* not supported" >&2; exit 1 ;;
esac
unit="/etc/systemd/system/$2"
get() { sed -n "s/^$1=//p" "$unit" | tail -1; }
user="$(get User)"; group="$(get Group)"; dir="$(get WorkingDirectory)"
read -r -a envs <<< "$(get Environment)"
pkill -u "$user" -f "$(get ExecStart)" 2>/dev/null || true
cd "$dir"
setsid env -i "${envs[@]}" setpriv --reuid="$user" --regid="$group" --init-groups \
  $(get ExecStart) >> "/var/log/${2%.service}.log" 2>&1 < /dev/null &
"""


def images_dir() -> Path:
    from tests.conftest import IMAGES  # built once per machine, beside the sandbox images
    return IMAGES


def debian_rootfs() -> Path:
    """Debian 12 (minbase and what a GCE image has that the script uses), built once."""
    base = images_dir() / "debian12-rootfs"
    if (base / ".complete").exists():
        return base
    if shutil.which("debootstrap") is None:
        if os.environ.get("ENVMGR_TEST_REQUIRE_BOOT") == "1":
            raise RuntimeError("debootstrap is required here (apt-get install debootstrap)")
        pytest.skip("no debootstrap (apt-get install debootstrap)")
    tmp = base.with_name(base.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE,
                    str(tmp), MIRROR], check=True, capture_output=True, timeout=1200)
    (tmp / ".complete").write_text(SUITE)
    shutil.rmtree(base, ignore_errors=True)
    tmp.rename(base)
    return base


class Metadata:
    """GCE's metadata server for one instance's attributes, on METADATA_IP:80."""

    def __init__(self, attributes: dict[str, str] | Callable[[], dict[str, str]]) -> None:
        # A callable is read at every request: the instance's metadata as it is now (a
        # spare's changes when a claim names its runtime).
        self.current = attributes if callable(attributes) else (lambda: attributes)
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.seen.append(self.path)
                prefix = "/computeMetadata/v1/instance/attributes/"
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._send(403, "Missing Metadata-Flavor:Google header.")
                key = self.path.removeprefix(prefix) if self.path.startswith(prefix) else None
                attributes = outer.current()
                if key is None or key not in attributes:
                    return self._send(404, "not found")
                self._send(200, attributes[key])

            def _send(self, code: int, text: str) -> None:
                data = text.encode()
                self.send_response(code)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", "application/text")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((METADATA_IP, 80), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Vm:
    """One VM: its own boot disk (a copy of the root filesystem) and a user disk (a file
    behind a loop device). `boot()` runs the startup script; `power_off()` kills every
    process of the VM, as a stop does."""

    def __init__(self, folder: Path, disk_gb: float = 0.5) -> None:
        self.root = folder / "root"
        subprocess.run(["cp", "-a", str(debian_rootfs()), str(self.root)], check=True)
        (self.root / "etc/hosts").write_text(f"127.0.0.1 localhost\n{METADATA_IP} "
                                             "metadata.google.internal\n")
        # The VM's network is this machine's: its resolver, and the certificate authorities
        # this machine trusts (a TLS proxy may stand between it and PyPI).
        shutil.copy("/etc/resolv.conf", self.root / "etc/resolv.conf")
        shutil.copy("/etc/ssl/certs/ca-certificates.crt",
                    self.root / "etc/ssl/certs/ca-certificates.crt")
        tool = self.root / "usr/local/bin/systemctl"
        tool.write_text(SYSTEMCTL)
        tool.chmod(0o755)
        self.image = folder / "user-disk.img"
        with self.image.open("wb") as f:
            f.truncate(int(disk_gb * 2**30))
        self.loop = subprocess.run(["losetup", "-f", "--show", str(self.image)], check=True,
                                   capture_output=True, text=True).stdout.strip()

    def boot(self, startup_script: str, timeout: float = 900,
             disk: bool = True) -> subprocess.CompletedProcess:
        """Run the startup script; with `disk=False` the user disk is not there yet (a
        spare): `attach_disk()` makes it appear later, as a hot attach does."""
        (self.root / "run").mkdir(exist_ok=True)
        (self.root / "run/startup-script").write_text(startup_script)
        st = os.stat(self.loop)
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        name = Path(self.loop).name
        cache = images_dir() / "pip-cache"
        cache.mkdir(parents=True, exist_ok=True)
        (self.root / "root/.cache/pip").mkdir(parents=True, exist_ok=True)
        r = str(self.root)
        setup = " && ".join([
            f"mount -t proc proc {r}/proc", f"mount -t sysfs sys {r}/sys",
            f"mount -t tmpfs -o mode=755 dev {r}/dev",
            *(f"mknod -m 666 {r}/dev/{n} c 1 {m}" for n, m in
              (("null", 3), ("zero", 5), ("random", 8), ("urandom", 9))),
            f"mknod -m 660 {r}/dev/{name} b {major} {minor}",
            f"mkdir -p {r}/dev/disk/by-id {r}/dev/pts {r}/dev/shm",
            f"mount -t devpts devpts {r}/dev/pts", f"mount -t tmpfs shm {r}/dev/shm",
            *([f"ln -s ../../{name} {r}/dev/disk/by-id/google-user-disk"] if disk else []),
            f"mount --bind {cache} {r}/root/.cache/pip",
            # As google-startup-scripts runs it: root, a plain environment (none of ours).
            f"exec chroot {r} /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:"
            "/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 /bin/bash /run/startup-script"])
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "--fork",
                               "/bin/sh", "-c", setup], capture_output=True, text=True,
                              timeout=timeout)

    def attach_disk(self) -> None:
        """The user disk appears in the running VM's /dev (its own mount namespace, reached
        through one of its processes' root), as udev names a hot-attached disk."""
        pid = self.processes()[0].pid
        os.symlink(f"../../{Path(self.loop).name}",
                   f"/proc/{pid}/root/dev/disk/by-id/google-user-disk")

    def processes(self) -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.readlink(f"/proc/{p.pid}/root") == str(self.root):
                    out.append(p)
        return out

    def power_off(self) -> None:
        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)
        deadline = time.monotonic() + 10  # the mount namespace goes with its last process
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)

    def destroy(self) -> None:
        self.power_off()
        subprocess.run(["losetup", "-d", self.loop], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.image.unlink(missing_ok=True)


@contextlib.contextmanager
def vm(folder: Path) -> Iterator[Vm]:
    machine = Vm(folder)
    try:
        yield machine
    finally:
        machine.destroy()


def attributes(instance: dict[str, object]) -> dict[str, str]:
    items = instance.get("metadata", {})
    assert isinstance(items, dict)
    return {i["key"]: i["value"] for i in items.get("items", [])}


def dump(vm_: Vm) -> str:
    """The VM's Jupyter log, for a failing assertion."""
    log = vm_.root / "var/log/envmgr-jupyter.log"
    return log.read_text()[-3000:] if log.exists() else "(no jupyter log)"

