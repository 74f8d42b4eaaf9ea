"""A pool of pre-started runtime containers (tmpnb's lesson): each runs a fork server
(`envmgr_jupyter.forkserver --once`) that has imported jupyter-server and JupyterLab, with
no user, no disk and no credential. A start claims one: the host mounts the runtime's disk
and configuration where the container already looks for them (`containers.HOME`,
`containers.CONFIG`: mounts made later show through, `rslave`), moves the container's
processes into the runtime's limits group, and asks its fork server to fork Jupyter as the
disk's uid. A claimed container serves that one runtime and ends with it; it never goes
back to the pool. A start that finds none ready starts a container cold.

Each pooled container has a folder of the service's, `<data dir>/local/pool/<name>/`:
`home`, `config` and `sock` (mount points, shared with the container: the disk, the
configuration, the folder Jupyter's socket goes in) and `ctl` (root's: the fork server's
socket and Jupyter's log, `/run/envmgr/ctl` inside). It has a network of its own (see
`containers.Box.network`, "private") from the start. Its fork server runs as root
with only CAP_SETUID and CAP_SETGID, which its child drops for good when it becomes the
runtime's user."""

from __future__ import annotations

import contextlib
import logging
import pwd
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envmgr.backends.local import containers, disks
from envmgr.backends.local.forks import ForkServer, ForkServerUnavailable

log = logging.getLogger(__name__)
CTL = Path("/run/envmgr/ctl")
PREFIX = "pool-"
LATER = ("home", "config", "sock")  # what a claim mounts: disk, configuration, socket folder


def release(boxes: containers.Containers, root: Path, name: str,
            proc: subprocess.Popen[bytes] | None = None) -> None:
    """A container of the pool ends (claimed or not): its processes, its mounts, its
    folder."""
    boxes.end(name)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    folder = root / "pool" / name
    disks.unmount_under(folder)
    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Slot:
    name: str
    folder: Path
    proc: subprocess.Popen[bytes]  # `runc run`: the service's child
    forks: ForkServer  # its fork server, reached through `ctl/`
    started: float

    @property
    def home(self) -> Path:
        return self.folder / "home"

    @property
    def config(self) -> Path:
        return self.folder / "config"

    @property
    def sock(self) -> Path:
        return self.folder / "sock"

    @property
    def ctl(self) -> Path:
        return self.folder / "ctl"

    def inside(self, path: Path) -> str:
        """A file of `ctl/` as the container names it."""
        return str(CTL / path.relative_to(self.ctl))


class Pool:
    def __init__(self, root: Path, boxes: containers.Containers, interpreter: Callable[[], str],
                 env: Callable[[], dict[str, str]], size: int, boot_seconds: float = 60,
                 shared: tuple[tuple[Path, Path, bool], ...] = (),
                 busy: Callable[[], bool] = lambda: False) -> None:
        self.dir = root / "pool"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        self.root = root
        self.boxes = boxes
        self.interpreter = interpreter
        self.env = env  # the image's environment (PATH, LD_LIBRARY_PATH, ...)
        self.size = size
        self.boot_seconds = boot_seconds
        self.shared = shared  # mounts every runtime container has (the control relay's)
        self.busy = busy  # whether runtimes are starting (refills wait for them, a while)
        self._slots: list[Slot] = []
        self._lock = threading.Lock()
        self._filling = threading.Lock()
        self.closed = False

    # -- filling ----------------------------------------------------------------------
    def fill(self) -> None:
        """Start containers, one after the other, until `size` are ready (one caller at a
        time)."""
        with self._filling:
            while not self.closed:
                if len(self._live()) >= self.size:
                    return
                self._yield_to_starts()
                try:
                    slot = self._start()
                except (OSError, subprocess.SubprocessError, disks.DiskError) as exc:
                    log.warning("cannot pre-start a runtime container: %s", exc)
                    return
                with self._lock:
                    kept = not self.closed
                    if kept:
                        self._slots.append(slot)
                if not kept:
                    self.release(slot.name, slot.proc)  # closed meanwhile: serves nobody
                    return
                # One at a time: each imports Jupyter (seconds of CPU), and runtimes that
                # just claimed containers are starting beside them. One that does not
                # come up stops the filling (the next claim tries again).
                if not self._ready(slot) and not self.closed:
                    log.warning("a pre-started runtime container did not come up",
                                extra={"container": slot.name})
                    return

    def _yield_to_starts(self, seconds: float = 30) -> None:
        """Runtimes starting now (claimed containers) go first: a refill waits for them,
        up to `seconds` (so a steady stream of starts cannot starve the pool)."""
        deadline = time.monotonic() + seconds
        while self.busy() and not self.closed and time.monotonic() < deadline:
            time.sleep(0.05)

    def _start(self) -> Slot:
        name = PREFIX + secrets.token_hex(6)
        folder = self.dir / name
        python = self.interpreter()
        image = containers.image_of(python)
        for sub in ("home", "config", "ctl", "sock"):
            (folder / sub).mkdir(parents=True, mode=0o700)
        for sub in LATER:  # shared: what the host mounts here later shows inside
            point = str(folder / sub)
            for args in (["--bind", point, point], ["--make-shared", point]):
                done = subprocess.run(["mount", *args], capture_output=True)
                if done.returncode != 0:
                    raise disks.DiskError(done.stderr.decode(errors="replace").strip())
        forks = ForkServer(folder / "ctl", python, {})
        env = {**self.env(), "HOME": str(CTL), "ENVMGR_FORKSERVER": "1",
               "ENVMGR_LOCAL_ROOT": str(self.root)}
        box = containers.Box(
            name=name, args=[python, "-m", "envmgr_jupyter.forkserver",
                             str(CTL / forks.socket.name), "--once"],
            env=env, cwd=CTL, user=pwd.getpwuid(0), caps=["CAP_SETUID", "CAP_SETGID"],
            mounts=[(folder / "home", containers.HOME, True),
                    (folder / "config", containers.CONFIG, False),
                    (folder / "sock", containers.JUPYTER, True),
                    (folder / "ctl", CTL, True), (image, image, False), *self.shared],
            later=[folder / sub for sub in LATER], network="private")
        with (folder / "ctl" / "container.log").open("ab") as out:
            proc = self.boxes.start(box, out, folder, {"ENVMGR_FORKSERVER": "1"})  # a helper
        log.info("runtime container pre-started", extra={"container": name})
        return Slot(name, folder, proc, forks, time.monotonic())

    def _live(self) -> list[Slot]:
        """The slots whose container still runs; one that died unclaimed is released (its
        mounts, runc's record, its folder) rather than only forgotten."""
        with self._lock:
            dead = [s for s in self._slots if s.proc.poll() is not None]
            self._slots = [s for s in self._slots if s not in dead]
            live = list(self._slots)
        for slot in dead:
            self.release(slot.name, slot.proc)
        return live

    # -- claiming ---------------------------------------------------------------------
    def claim(self) -> Slot | None:
        """A container whose fork server answers, taken out of the pool for good; None if
        there is none (or the oldest one fails to come up in time)."""
        self._live()  # (the dead ones released)
        with self._lock:
            if not self._slots:
                return None
            slot = self._slots.pop(0)
        if self._ready(slot):
            return slot
        tail = (slot.ctl / "container.log").read_bytes()[-300:].decode(errors="replace")
        log.warning("a pre-started runtime container did not come up: %s", tail.strip(),
                    extra={"container": slot.name})
        self.release(slot.name, slot.proc)
        return None

    def _ready(self, slot: Slot) -> bool:
        """Whether its fork server answers (waiting for it, up to its boot deadline)."""
        deadline = slot.started + self.boot_seconds
        while slot.proc.poll() is None and time.monotonic() < deadline and not self.closed:
            with contextlib.suppress(OSError, ValueError, ForkServerUnavailable):
                slot.forks.call({"op": "ping"}, timeout=2.0)
                return True
            time.sleep(0.05)
        return False

    # -- ending -----------------------------------------------------------------------
    def release(self, name: str, proc: subprocess.Popen[bytes] | None = None) -> None:
        release(self.boxes, self.root, name, proc)

    def close(self) -> None:
        """Every container nobody claimed ends with the service."""
        self.closed = True
        with self._lock:
            slots, self._slots = self._slots, []
        for slot in slots:
            self.release(slot.name, slot.proc)

    def sweep(self, claimed: set[str]) -> None:
        """Containers an earlier service pre-started and nobody claimed (`claimed`: the
        names runtimes' records hold)."""
        with self._lock:
            mine = {s.name for s in self._slots}
        found = {p.name for p in self.dir.iterdir()} | \
            {n for n in self.boxes.names() if n.startswith(PREFIX)}
        for name in found - mine - claimed:
            self.release(name)
