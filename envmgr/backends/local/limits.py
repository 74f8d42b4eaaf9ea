"""Memory, CPU and process limits per runtime and per job, from the machine type's vCPUs
and memory (scaled by a setting for a small host), in a control group of their own.

A kernel that allocates past its runtime's memory is killed by the kernel's OOM killer
inside that group alone (the biggest process there: the kernel that asked), the service and
other users untouched; a fork bomb stops at the pids limit. The group is also how pause,
delete, cancel and a time limit end everything of a runtime or job, whatever it did to its
session or environment. cgroup v1 (memory, cpu, pids hierarchies) and v2 (one unified
hierarchy) are both handled; a machine with neither gets no limits, said in the log."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import time
from pathlib import Path

from envmgr.backends.base import Limits as Limits  # (its home: the interface's)

log = logging.getLogger(__name__)
FS = Path("/sys/fs/cgroup")
V1 = ("memory", "cpu", "pids")
PERIOD_US = 100_000


def for_machine(spec: dict[str, object], memory_scale: float, cpu_scale: float,
                pids: int) -> Limits:
    """A catalog machine type's limits (`vcpus`, `memory_gb`), scaled for this host."""
    vcpus = float(str(spec.get("vcpus", 1)))
    memory_gb = float(str(spec.get("memory_gb", 1)))
    return Limits(memory_bytes=max(64 << 20, int(memory_gb * memory_scale * 2**30)),
                  cpus=max(0.05, vcpus * cpu_scale), pids=pids)


class Cgroups:
    """The groups of one backend (one data dir): `envmgr-<key>/<name>` in each hierarchy.

    The CPU quota is opt-in (`cpu`): measured here, cold starts in a cgroup v1 `cpu` group
    took about twice as long as bare ones (10 at once: 30.4 s against 14.9 s; without the
    cpu controller 16.6 s against 16.2 s), though a bare import in such a group does not;
    memory and pids cost nothing measurable."""

    def __init__(self, root: Path, cpu: bool = False) -> None:
        key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
        self.parent = f"envmgr-{key}"
        self.cpu = cpu
        self.controllers = ("memory", "cpu", "pids") if cpu else ("memory", "pids")
        self.v2 = (FS / "cgroup.controllers").exists()
        self.available = self.v2 or all((FS / c / "cgroup.procs").exists() for c in V1)
        if not self.available:
            log.warning("no cgroup file system at %s: runtimes and jobs run without memory, "
                        "CPU and process limits", FS)

    def swap_limitable(self) -> bool:
        """Whether swap is accounted here (v1 needs swapaccount=1), so it can be capped."""
        if self.v2:
            return True
        return (FS / "memory" / "memory.memsw.limit_in_bytes").exists()

    def _dirs(self, name: str) -> list[Path]:
        if self.v2:
            return [FS / self.parent / name]
        return [FS / c / self.parent / name for c in self.controllers]

    def make(self, name: str, limits: Limits) -> list[str]:
        """The group, with its limits; returns the files a process writes its pid to, to
        join (as root, before it drops to its user)."""
        if not self.available:
            return []
        if self.v2:
            parent = FS / self.parent
            parent.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):  # let the leaf have the controllers
                (parent / "cgroup.subtree_control").write_text(
                    " ".join(f"+{c}" for c in self.controllers))
            d = parent / name
            d.mkdir(exist_ok=True)
            (d / "memory.max").write_text(str(limits.memory_bytes))
            with contextlib.suppress(OSError):  # no swap to escape into
                (d / "memory.swap.max").write_text("0")
            if self.cpu:
                (d / "cpu.max").write_text(f"{int(limits.cpus * PERIOD_US)} {PERIOD_US}")
            (d / "pids.max").write_text(str(limits.pids))
            return [str(d / "cgroup.procs")]
        dirs = dict(zip(self.controllers, self._dirs(name), strict=True))
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        (dirs["memory"] / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
        with contextlib.suppress(OSError):  # only where swap accounting is on
            (dirs["memory"] / "memory.memsw.limit_in_bytes").write_text(
                str(limits.memory_bytes))
        if self.cpu:
            (dirs["cpu"] / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(int(limits.cpus * PERIOD_US)))
        (dirs["pids"] / "pids.max").write_text(str(limits.pids))
        return [str(d / "cgroup.procs") for d in dirs.values()]

    @staticmethod
    def adopt(procs: list[str], pids: set[int]) -> None:
        """Move running processes into a group (`procs`: what `make` returned)."""
        for path in procs:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError), open(path, "w") as f:
                    f.write(str(pid))

    def join(self, name: str, pids: set[int]) -> None:
        """Move processes into an existing group (one runc made)."""
        self.adopt([str(d / "cgroup.procs") for d in self._dirs(name)], pids)

    def pids(self, name: str) -> set[int]:
        found: set[int] = set()
        for d in self._dirs(name):
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def memory_limit(self, name: str) -> int | None:
        d = self._dirs(name)[0]
        with contextlib.suppress(OSError, ValueError):
            return int((d / ("memory.max" if self.v2 else "memory.limit_in_bytes")).read_text())
        return None

    def oom_kills(self, name: str) -> int:
        """How many processes the OOM killer ended in the group (kernels past the limit)."""
        d = self._dirs(name)[0]
        path = d / ("memory.events" if self.v2 else "memory.oom_control")
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def kill(self, name: str, seconds: float = 5) -> None:
        """SIGKILL every process of the group until none is left."""
        deadline = time.monotonic() + seconds
        while (pids := self.pids(name)) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)

    def remove(self, name: str) -> None:
        self.kill(name)
        for d in self._dirs(name):
            with contextlib.suppress(OSError):
                d.rmdir()

    def names(self) -> set[str]:
        """Every group of this backend (a runtime's id or a job's)."""
        parent = self._dirs("x")[0].parent
        with contextlib.suppress(OSError):
            return {d.name for d in parent.iterdir() if d.is_dir()}
        return set()

    def remove_all(self) -> None:
        """Every group and what runs in it: for tests and benchmarks that throw a whole
        data dir away, and for `envmgr stop-local`."""
        for name in self.names():
            self.remove(name)
        for d in {p.parent for p in self._dirs("x")}:
            with contextlib.suppress(OSError):
                d.rmdir()


# Joins the groups named before `--` (as root), then runs the rest: the one way a process
# is in its group from its first instruction, before it can fork anything outside it.
JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 97; shift; done; shift; exec "$@"'


def joined(procs: list[str], command: list[str]) -> list[str]:
    if not procs:
        return command
    return ["/bin/sh", "-c", JOIN, "sh", *procs, "--", *command]
