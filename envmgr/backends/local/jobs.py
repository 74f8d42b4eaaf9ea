"""Notebook jobs on the local backend: each job is the runner (`python -m envmgr_runner`)
in a folder of its own under `<data dir>/local/jobs/`, started in its own session so it
outlives the control plane, and, as root, as a system user of its own with the runtime
sandbox's rules (whitelisted environment, folder 0700, nothing of the service readable).
`network: none` runs it in a network namespace of its own with only a loopback (unshare).

The runner writes everything into its folder and the control plane reads it back. The
folder belongs to the job's user, who could plant a symlink or a hard link there in place
of an output, so every file is opened without following links and must be a regular file
of that user (else it is refused): a notebook cannot make the service read anything else."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from envmgr_jupyter import ipc
from envmgr_runner.files import open_own

from envmgr.backends.base import BackendError, JobRun, JobSpec
from envmgr.backends.local import containers, limits, sandbox
from envmgr.backends.local.identities import Identities, IdentityError
from envmgr.settings import Settings

OUTPUTS = {"output.ipynb": ".output.ipynb", "output.html": None, "log.txt": ".log.txt"}
EVENT_LINE_MAX = 64 * 1024  # a runner event line longer than this is dropped
EVENTS_READ_MAX = 4 * 1024 * 1024  # per poll


class LocalJobs:
    def __init__(self, settings: Settings, root: Path, sandboxed: bool,
                 python: Callable[[], str], identities: Identities,
                 cgroups: limits.Cgroups | None,
                 limits_for: Callable[[str], limits.Limits],
                 boxes: containers.Containers | None = None) -> None:
        self.settings = settings
        self.root = root
        self.dir = root / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o711 if sandboxed else 0o700)
        self.sandboxed = sandboxed
        self._python = python  # () -> the image's interpreter (LocalBackend builds it once)
        self.identities = identities
        self.cgroups = cgroups
        self.limits_for = limits_for  # machine type -> its limits here
        self.boxes = boxes  # a container per job, if the backend has them
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def folder(self, job_id: str) -> Path:
        return self.dir / job_id

    # -- start ------------------------------------------------------------------------
    def start(self, job: JobSpec) -> dict[str, object]:
        folder = self.folder(job.id)
        if folder.exists():  # a re-driven start: begin again from nothing
            self.kill(job.id, {})
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=0o700)
        (folder / "work").mkdir(mode=0o700)
        for name, data in job.files.items():
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        user = None
        try:
            if self.sandboxed:
                # A uid of its own, never anyone's before or after.
                user = sandbox.ensure_user(self.identities.uid(f"job:{job.id}"), folder)
                sandbox.own(folder, user)
        except (OSError, sandbox.SandboxError, IdentityError) as exc:
            raise BackendError(f"cannot prepare the job's sandbox: {exc}") from exc
        python = self._python()
        contained = self.boxes is not None and user is not None
        seen = containers.JOB if contained else folder  # where the runner finds its folder
        command = [python, "-m", "envmgr_runner", str(seen)]
        env = self._env(job, seen, user, python)
        drop = sandbox.drop_to(user) if user is not None else []
        box = None
        if self.boxes is not None and user is not None:
            image = containers.image_of(python)
            # "none": only a loopback; otherwise the world, but not the host's loopback
            box = containers.Box(name=job.id, args=command, env=env, cwd=seen / "work",
                                 user=user, mounts=[(folder, seen, True), (image, image, False)],
                                 limits=self.limits_for(job.machine_type),
                                 network="none" if job.network == "none" else "private")
        elif job.network == "none":
            command = self._isolated(command, drop)
        elif drop:
            command = drop + command
        if self.cgroups is not None and user is not None and self.boxes is None:
            # joined as root, first
            try:
                self.cgroups.kill(job.id)
                command = limits.joined(
                    self.cgroups.make(job.id, self.limits_for(job.machine_type)), command)
            except OSError as exc:
                raise BackendError(f"cannot limit the job: {exc}") from exc
        with (folder / "runner.out").open("ab") as out:
            if user is not None:  # read back with the job's own files' rules
                os.fchown(out.fileno(), user.pw_uid, user.pw_gid)
            try:
                if box is not None and self.boxes is not None:
                    proc = self.boxes.start(box, out, folder / "work",
                                            {"ENVMGR_JOB_ID": job.id})
                else:
                    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, cwd=folder / "work",
                                            env=env, start_new_session=True, umask=0o077)
            except OSError as exc:
                raise BackendError(f"cannot start the job runner: {exc}") from exc
        self._children[proc.pid] = proc
        return {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(),
                "contained": contained}

    def _isolated(self, command: list[str], drop: list[str]) -> list[str]:
        """The runner in a network namespace of its own with only a loopback, brought up
        (the kernel talks to the runner over it). As root: `unshare --net`, then the
        job's user; otherwise a user namespace maps this user to root inside it."""
        unshare, ip = shutil.which("unshare"), shutil.which("ip") or "/usr/sbin/ip"
        if unshare is None or not Path(ip).exists():
            raise BackendError("network 'none' needs unshare and ip (util-linux, iproute2) "
                               "on the machine that runs jobs")
        ns = [unshare, "--net"] if os.geteuid() == 0 else \
            [unshare, "--user", "--map-root-user", "--net"]
        script = f'{ip} link set lo up && exec "$@"'
        return [*ns, "--", "/bin/sh", "-c", script, "sh", *drop, *command]

    def _env(self, job: JobSpec, folder: Path, user: pwd.struct_passwd | None,
             python: str) -> dict[str, str]:
        """The runtime sandbox's whitelist, and the job's own markers."""
        env = {k: os.environ[k] for k in sandbox.ENV_KEEP if k in os.environ}
        env["PATH"] = os.pathsep.join([str(Path(python).parent),
                                       env.get("PATH", "/usr/bin:/bin")])
        if self.sandboxed and python != sys.executable:
            env["LD_LIBRARY_PATH"] = str(Path(python).resolve().parent.parent / "lib")
        name = user.pw_name if user else os.environ.get("USER", "envmgr")
        env.update({"HOME": str(folder / "work"), "USER": name, "LOGNAME": name,
                    "ENVMGR_JOB_ID": job.id, "ENVMGR_LOCAL_ROOT": str(self.root),
                    "PYTHONUNBUFFERED": "1"})
        if self.boxes is not None:  # its kernel's channels: in its container alone
            env[ipc.ENV] = containers.KERNELS_DIR
        elif user is not None:  # sockets only its uid may reach
            try:
                env[ipc.ENV] = str(sandbox.ipc_dir(user))
            except sandbox.SandboxError as exc:
                raise BackendError(f"cannot prepare the job's sandbox: {exc}") from exc
        return env

    # -- watch ------------------------------------------------------------------------
    def _owner_uid(self, job_id: str) -> int:
        if self.sandboxed:
            uid = self.identities.find(f"job:{job_id}")
            if uid is not None:
                return uid
            with contextlib.suppress(KeyError):  # a job started by an older version
                return pwd.getpwnam(sandbox.legacy_user_name(job_id)).pw_uid
        return os.geteuid()

    def _open(self, job_id: str, name: str) -> int | None:
        """A file of the job's folder, only if it is a regular file of the job's user
        (never through a link)."""
        return open_own(self.folder(job_id) / name, self._owner_uid(job_id))

    def _read(self, job_id: str, name: str, max_bytes: int) -> bytes | None:
        fd = self._open(job_id, name)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(max_bytes + 1)
        return None if len(data) > max_bytes else data

    def alive(self, handle: dict[str, Any]) -> bool:
        pid = handle.get("pid")
        if not pid:
            return False
        child = self._children.get(int(pid))
        if child is not None and child.poll() is not None:
            self._children.pop(int(pid), None)
            return False
        try:
            p = psutil.Process(int(pid))
            return bool(abs(p.create_time() - float(handle["create_time"])) < 0.5) and \
                p.status() != psutil.STATUS_ZOMBIE
        except (psutil.Error, KeyError, ValueError):
            return False

    def poll(self, job_id: str, handle: dict[str, Any], offset: int) -> JobRun:
        alive = self.alive(handle)  # before reading: a result written after is seen next time
        events: list[dict[str, object]] = []
        fd = self._open(job_id, "events.jsonl")
        if fd is not None:
            with os.fdopen(fd, "rb") as f:
                f.seek(offset)
                chunk = f.read(EVENTS_READ_MAX)
            end = chunk.rfind(b"\n") + 1  # whole lines only
            for line in chunk[:end].splitlines():
                if len(line) > EVENT_LINE_MAX:
                    continue
                with contextlib.suppress(ValueError):
                    ev = json.loads(line)
                    if isinstance(ev, dict) and isinstance(ev.get("seq"), int):
                        events.append(ev)
            offset += end
        result = None
        raw = self._read(job_id, "result.json", 64 * 1024)
        if raw is not None:
            with contextlib.suppress(ValueError):
                found = json.loads(raw)
                result = found if isinstance(found, dict) else None
        detail = ""
        if not alive and result is None:
            detail = self._death(job_id, handle)
        return JobRun(events, offset, alive, result, detail)

    def _death(self, job_id: str, handle: dict[str, Any]) -> str:
        child = self._children.pop(int(handle.get("pid") or 0), None)
        code = child.returncode if child is not None else None
        if handle.get("contained") and code is not None and code > 128:  # tini's "signal"
            code = 128 - code
        how = (f"was killed by signal {-code}" if code is not None and code < 0 else
               f"exited with code {code}" if code is not None else "is gone")
        tail = (self._read(job_id, "runner.out", 1 << 20) or b"").decode(errors="replace")
        last = " | ".join([ln for ln in tail.splitlines() if ln.strip()][-3:])[-400:]
        return f"the job runner {how} without a result" + (f": {last}" if last else "")

    def outputs(self, job_id: str, max_bytes: int) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for name, partial in OUTPUTS.items():
            data = self._read(job_id, name, max_bytes)
            if data is None and partial:
                data = self._read(job_id, partial, max_bytes)
            if data is not None:
                found[name] = data
        return found

    # -- stop -------------------------------------------------------------------------
    def _tree(self, job_id: str, handle: dict[str, Any]) -> list[psutil.Process]:
        procs: list[psutil.Process] = []
        if self.alive(handle):
            with contextlib.suppress(psutil.Error):
                main = psutil.Process(int(handle["pid"]))
                procs = [main, *main.children(recursive=True)]
        root = str(self.root)
        uid = self._owner_uid(job_id) if self.sandboxed else None
        for p in psutil.process_iter(["pid", "uids"]):
            with contextlib.suppress(psutil.Error):
                if p in procs:
                    continue
                if uid is not None and uid != 0 and p.info["uids"].real == uid:
                    procs.append(p)  # the job's own user: even one that dropped its marker
                    continue
                env = p.environ()
                if env.get("ENVMGR_JOB_ID") == job_id and env.get("ENVMGR_LOCAL_ROOT") == root:
                    procs.append(p)
        return procs

    def kill(self, job_id: str, handle: dict[str, Any]) -> None:
        """SIGKILL the runner's session, its whole tree and every process that carries the
        job's marker (a kernel starts a session of its own)."""
        procs = self._tree(job_id, handle)
        if handle.get("pid") and self.alive(handle):
            with contextlib.suppress(OSError):
                os.killpg(int(handle["pid"]), signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=5)
        if self.boxes is not None:
            self.boxes.end(job_id)
        elif self.cgroups is not None:
            self.cgroups.kill(job_id)
        child = self._children.pop(int(handle.get("pid") or 0), None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)

    def inventory(self) -> list[str]:
        """Jobs with a folder, and jobs whose limits group still holds processes."""
        found = {p.name for p in self.dir.iterdir() if p.is_dir()}
        if self.cgroups is not None:
            found |= {n for n in self.cgroups.names() if n.startswith("job-") and
                      self.cgroups.pids(n)}
        return sorted(found)

    def cleanup(self, job_id: str, handle: dict[str, Any]) -> None:
        self.kill(job_id, handle)
        shutil.rmtree(self.folder(job_id), ignore_errors=True)
        if self.cgroups is not None:
            self.cgroups.remove(job_id)
        if self.sandboxed:
            uid = self.identities.find(f"job:{job_id}")
            if uid is not None:
                sandbox.remove_user(uid)  # retired: the database never gives it again
            sandbox.remove_legacy_user(job_id)
