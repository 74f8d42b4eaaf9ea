"""A container per runtime and per job, started by runc (Debian's package), with tini as its
first process (it forwards signals, reaps orphans and exits with its child's code).

What a container sees: a read-only root made of the host's /usr and /etc (and the /bin,
/lib... links or folders beside them), the runtime image, and the folders the caller names
(a disk, a job's folder, a read-only config), each at the path it has on the host;
private, sized tmpfs /tmp, /var/tmp, /run and /dev/shm; its own mount, PID, IPC and UTS
namespaces (and network, for `network: none`); its own cgroup with the machine type's
memory, CPU and pids limits, at the path `limits.Cgroups` reads and kills. Nothing else of
the host: not the data dir, the buckets, other disks, other users' processes, /proc of the
host, /var/run's sockets. It runs as its disk's (or job's) uid, with no capabilities and no
new privileges.

`runc run` stays in the foreground as the service's child (in its own session, so it outlives
the service as a VM would): its exit status is the container's, and SIGTERM to it reaches
Jupyter through tini."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import resource
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from envmgr.backends.local import limits

log = logging.getLogger(__name__)
# runc's own umask: the folders it makes in a container's root for mount points must be
# traversable by its user (the container's processes get the spec's, 077).
RUNC_UMASK = 0o022
# Where each container's kernels put their channels' sockets (envmgr_jupyter.ipc): a
# tmpfs of its own, its user's alone.
KERNELS_DIR = "/run/kernels"
# Where a runtime's container sees its disk (HOME, Jupyter's root) and its configuration.
HOME = Path("/home/jupyter")
CONFIG = Path("/run/envmgr/config")
# Where Jupyter serves (`ServerApp.sock`): a folder of its own, the only way in from the host.
JUPYTER = Path("/run/envmgr/jupyter")
SOCKET = JUPYTER / "jupyter.sock"
# slirp4netns's gateway DNS (it forwards to the host's resolvers).
SLIRP_DNS = "10.0.2.3"
JOB = Path("/job")  # a job's folder
HOST_TOP = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
MASKED = ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
          "/sys/firmware"]
READ_ONLY = ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
             "/proc/sysrq-trigger"]


@dataclass
class Box:
    """What one container runs and sees."""
    name: str  # the runtime's or job's id: also its cgroup's name
    args: list[str]
    env: dict[str, str]
    cwd: Path
    user: pwd.struct_passwd
    # (host path, path inside, writable)
    mounts: list[tuple[Path, Path, bool]] = field(default_factory=list)
    limits: limits.Limits | None = None
    # "host"; "none": a namespace of its own with only a loopback; "private": that, plus a
    # way out to the world through slirp4netns (`Containers.start`), none to the host's
    # loopback
    network: str = "host"
    # A pooled container's: it starts as root with only these capabilities (its fork
    # server becomes the runtime's user later), and the host's later mounts on these
    # paths (the disk, the configuration) show through inside.
    caps: list[str] = field(default_factory=list)
    later: list[Path] = field(default_factory=list)
    tmp_mb: int = 1024
    shm_mb: int = 256


def image_of(python: str) -> Path:
    """The runtime image an interpreter belongs to (`<image>/bin/python3`): what a container
    mounts read-only at its own path."""
    return Path(python).parent.parent


def available() -> bool:
    """Containers need root, runc and tini."""
    return os.geteuid() == 0 and bool(shutil.which("runc")) and bool(shutil.which("tini"))


class Containers:
    def __init__(self, root: Path, cgroups: limits.Cgroups | None) -> None:
        self.state = root / "runc"  # runc's own records: root's alone
        self.bundles = root / "containers"
        for d in (self.state, self.bundles):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o700)
        self.cgroups = cgroups or limits.Cgroups(root)
        self.runc = shutil.which("runc") or "runc"
        self.tini = shutil.which("tini") or "tini"
        self.slirp = shutil.which("slirp4netns")
        self.root = root
        self.resolv = self._resolv()

    def _resolv(self) -> Path | None:
        """A resolv.conf naming slirp4netns's DNS, for hosts whose own resolver is on their
        loopback (systemd-resolved), which a container's network does not reach."""
        host = Path("/etc/resolv.conf")
        try:
            servers = [ln.split()[1] for ln in host.read_text().splitlines()
                       if ln.startswith("nameserver") and len(ln.split()) > 1]
        except OSError:
            return None
        if not any(s.startswith("127.") or s == "::1" for s in servers) or \
                host.is_symlink():
            return None
        path = self.root / "resolv.conf"
        path.write_text(f"nameserver {SLIRP_DNS}\n")
        path.chmod(0o644)
        return path

    def _runc(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([self.runc, "--root", str(self.state), *args],
                              capture_output=True, stdin=subprocess.DEVNULL)

    def command(self, box: Box) -> list[str]:
        """Write the box's bundle (anything left of an earlier one of that name goes first)
        and return the command that runs it in the foreground."""
        self.end(box.name)
        bundle = self.bundles / box.name
        rootfs = bundle / "rootfs"
        rootfs.mkdir(parents=True)
        rootfs.chmod(0o755)
        for name in HOST_TOP:  # merged /usr: links; otherwise folders, mounted below
            host = Path("/") / name
            if host.is_symlink():
                (rootfs / name).symlink_to(os.readlink(host))
        (rootfs / "var").mkdir()
        (rootfs / "var" / "run").symlink_to("../run")
        (bundle / "config.json").write_text(json.dumps(self.spec(box)))
        return [self.runc, "--root", str(self.state), "run", "--bundle", str(bundle), box.name]

    def spec(self, box: Box) -> dict[str, Any]:
        """The OCI runtime configuration (runtime-spec 1.0)."""
        uid, gid = box.user.pw_uid, box.user.pw_gid
        files = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])  # never above ours

        def tmpfs(dest: str, mode: str, mb: int, *extra: str) -> dict[str, Any]:
            return {"destination": dest, "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "nodev", f"mode={mode}", f"size={mb}m", *extra]}

        def bind(path: Path, writable: bool, inside: Path | None = None) -> dict[str, Any]:
            follow = ["rslave"] if path in box.later else []
            return {"destination": str(inside or path), "type": "bind", "source": str(path),
                    "options": ["rbind", "rw" if writable else "ro", "nosuid", "nodev",
                                *follow]}

        mounts = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=64k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            tmpfs("/dev/shm", "1777", box.shm_mb, "noexec"),
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            tmpfs("/tmp", "1777", box.tmp_mb),
            tmpfs("/var/tmp", "1777", box.tmp_mb // 4),
            tmpfs("/run", "755", 1),
            # (a pooled container's user is not known yet: it is the only one there)
            tmpfs(KERNELS_DIR, "1777", 1, "noexec") if uid == 0 else
            tmpfs(KERNELS_DIR, "700", 1, "noexec", f"uid={uid}", f"gid={gid}"),
            bind(Path("/usr"), False), bind(Path("/etc"), False),
        ]
        for name in HOST_TOP:
            host = Path("/") / name
            if host.is_dir() and not host.is_symlink():
                mounts.append(bind(host, False))
        mounts += [bind(host, writable, inside) for host, inside, writable in box.mounts]
        namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
        if box.network in ("none", "private"):
            namespaces.append({"type": "network"})  # runc brings its loopback up
        if box.network == "private" and self.resolv is not None:
            mounts.append(bind(self.resolv, False, Path("/etc/resolv.conf")))
        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False, "user": {"uid": uid, "gid": gid, "umask": 0o077},
                "args": [self.tini, "--", *box.args],
                "env": [f"{k}={v}" for k, v in box.env.items()],
                "cwd": str(box.cwd),
                "capabilities": {k: list(box.caps) if k in ("bounding", "effective",
                                                            "permitted") else []
                                 for k in ("bounding", "effective", "inheritable",
                                           "permitted", "ambient")},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": files, "soft": files}],
                "noNewPrivileges": True},
            "root": {"path": "rootfs", "readonly": True},
            "hostname": box.name,
            "mounts": mounts,
            "linux": {
                "namespaces": namespaces,
                "cgroupsPath": f"/{self.cgroups.parent}/{box.name}",
                "resources": self._resources(box.limits),
                "maskedPaths": MASKED, "readonlyPaths": READ_ONLY},
        }

    def _resources(self, lim: limits.Limits | None) -> dict[str, Any]:
        if lim is None:
            return {}
        out: dict[str, Any] = {"memory": {"limit": lim.memory_bytes},
                               "pids": {"limit": lim.pids}}
        if self.cgroups.swap_limitable():  # no swap to escape into
            out["memory"]["swap"] = lim.memory_bytes
        if self.cgroups.cpu:
            out["cpu"] = {"quota": int(lim.cpus * limits.PERIOD_US),
                          "period": limits.PERIOD_US}
        return out

    def start(self, box: Box, out: IO[bytes], cwd: Path, markers: dict[str, str]
              ) -> subprocess.Popen[bytes]:
        """`runc run` for the box, in the foreground as our child (in its own session, so
        it outlives the service as a VM would), with `markers` in its environment (how
        the service finds it again); a "private" box gets its way out."""
        command = self.command(box)
        link = os.pipe() if box.network == "private" and self.slirp else None
        try:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=cwd, start_new_session=True, umask=RUNC_UMASK,
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                     "ENVMGR_LOCAL_ROOT": str(self.root), **markers},
                pass_fds=(link[1],) if link else ())
        except BaseException:
            if link:
                os.close(link[0])
            raise
        finally:
            if link:
                os.close(link[1])  # runc holds it now: it closes when runc ends
        if link:
            threading.Thread(target=self._outbound, args=(box.name, link[0], markers),
                             daemon=True, name=f"outbound-{box.name}").start()
        return proc

    def _outbound(self, name: str, exit_fd: int, markers: dict[str, str],
                  seconds: float = 30) -> None:
        """A "private" container's way out, in the background (its start does not wait):
        slirp4netns, as root but in a sandbox of its own (no capabilities, an empty root,
        seccomp), attached to the container's network namespace once runc has made it, with
        no route to the host's loopback. It ends when runc does (`exit_fd`: the read end of
        a pipe whose only writer is runc), and is in the container's cgroup, so the
        container's limits count it and its end ends it."""
        try:
            pid = self._pid(name, seconds)
            if pid is None:
                log.warning("no network for container %s: runc never said its pid", name)
                return
            assert self.slirp is not None
            with (self.bundles / name / "slirp.log").open("ab") as out:
                proc = subprocess.Popen(
                    # In a mount namespace of its own whose mounts are all private first:
                    # its sandbox's pivot_root and unmount of the old root otherwise
                    # propagate to the host's shared mounts (measured here: a pooled
                    # container's disk vanished under its Jupyter).
                    ["unshare", "--mount", "--propagation", "private", self.slirp,
                     "--configure", "--mtu=65520", "--disable-host-loopback",
                     "--enable-sandbox", "--enable-seccomp", f"--exit-fd={exit_fd}",
                     str(pid), "tap0"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, pass_fds=(exit_fd,),
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                         "ENVMGR_LOCAL_ROOT": str(self.root), **markers})  # runc's own
        except OSError as exc:  # (its bundle went: it ended meanwhile)
            log.warning("no network for container %s: %s", name, exc)
            return
        finally:
            os.close(exit_fd)
        try:
            self.cgroups.join(name, {proc.pid})
        except OSError:  # its group is gone: the container ended meanwhile, so does this
            proc.kill()
        threading.Thread(target=proc.wait, daemon=True).start()  # (reaped when it ends)

    def _pid(self, name: str, seconds: float) -> int | None:
        """The container's first process, as the host numbers it, once runc has made it."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and (self.bundles / name).exists():
            done = self._runc("state", name)
            with contextlib.suppress(ValueError):
                state = json.loads(done.stdout) if done.returncode == 0 else {}
                if state.get("status") in ("created", "running") and state.get("pid"):
                    return int(state["pid"])
            time.sleep(0.02)
        return None

    def end(self, name: str) -> None:
        """Everything of the container ends (its cgroup's processes), then its record,
        cgroup and bundle go."""
        self.cgroups.kill(name)
        if (self.state / name).exists():
            self._runc("kill", name, "KILL")
            self._runc("delete", "--force", name)
        shutil.rmtree(self.bundles / name, ignore_errors=True)

    def names(self) -> set[str]:
        with contextlib.suppress(OSError):
            return {p.name for p in self.state.iterdir()} | \
                {p.name for p in self.bundles.iterdir()}
        return set()

    def end_all(self) -> None:
        for name in self.names():
            self.end(name)
