"""The embedded backend: a runtime is a real jupyter-server process on 127.0.0.1 and its
persistent disk is a folder.

Processes run in their own session so they outlive the control plane (as VMs do). Each
carries ENVMGR_RUNTIME_ID and ENVMGR_LOCAL_ROOT in its environment, and a pid file records
pid, start time and port, so a restarted control plane re-adopts what it started and finds
strays even when it died between spawning a process and writing its pid file."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx
import psutil
from envmgr_jupyter import ipc

from envmgr.backends.base import (
    Backend,
    BackendError,
    BackendStatus,
    DiskSpec,
    JobRun,
    JobSpec,
    Limits,
    RuntimeSpec,
    base_path,
)
from envmgr.backends.local import containers, disks, limits, pool, relay, sandbox
from envmgr.backends.local.forks import ForkServer, ForkServerUnavailable
from envmgr.backends.local.identities import Identities, IdentityError
from envmgr.backends.local.jobs import LocalJobs
from envmgr.core import sockets
from envmgr.core.clock import utcnow
from envmgr.costs.catalog import load_catalog
from envmgr.settings import Settings

RUNC_NOTE = re.compile(r'^time="[^"]*" level=\w+ msg=')
log = logging.getLogger(__name__)
_PORT_TAKEN = ("is not available", "Address already in use", "address already in use")


class _PortTaken(BackendError):
    pass


class LocalBackend(Backend):
    name = "local"
    deadlines: ClassVar[dict[str, float]] = {"create": 120, "start": 120, "stop": 60,
                                             "delete": 120}

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.root = settings.data_dir / "local"
        self.disks_dir = self.root / "disks"
        self.runtimes_dir = self.root / "runtimes"  # pid files and logs: the service's only
        self.configs_dir = self.root / "jupyter-config"  # each runtime's, root's, read-only
        self.images_dir = self.root / "disk-images"  # sandboxed disks' ext4 images: root's
        # each contained runtime's socket folder (its user's, in a folder of root's alone)
        self.sockets_dir = self.root / "sockets"
        for d in (self.disks_dir, self.runtimes_dir, self.configs_dir, self.sockets_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.sandboxed = sandbox.active(settings.local_sandbox)
        if self.sandboxed:
            sandbox.lock_down(settings.data_dir,
                              private=[self.runtimes_dir, self.images_dir, self.sockets_dir,
                                       settings.storage_root or settings.data_dir / "buckets"],
                              traversable=[settings.data_dir, self.root, self.disks_dir,
                                           self.configs_dir])
        self._python: str | None = None
        self._forks: ForkServer | None = None
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        # One reaper at a time: Popen.poll answers None while another thread is in its
        # waitpid, and a child seen dead by psutil between two looks was recorded as
        # "exit status unknown"; for our own children only their waitpid decides.
        self._reaping = threading.Lock()
        self._http = sockets.client(timeout=httpx.Timeout(2.0))
        self._limits: dict[str, limits.Limits] = {}
        self._starting = 0  # starts under way (in the event loop): the pool's refill waits
        self.identities = Identities(settings)
        self.cgroups = limits.Cgroups(self.root, cpu=settings.local_cpu_limit) \
            if self.sandboxed and settings.local_limits else None
        self.containers = containers.Containers(self.root, self.cgroups) \
            if self.sandboxed and settings.local_containers and containers.available() \
            else None
        # A contained runtime has no network of the host's: it reaches the control plane
        # through this relay, and is reached on its socket.
        self.relay = relay.ControlRelay(self.root / "control", settings.runtime_api) \
            if self.containers is not None else None
        self.pool = pool.Pool(self.root, self.containers, self._interpreter, self._image_env,
                              settings.local_pool_size, shared=self._shared_mounts(),
                              busy=lambda: self._starting > 0) \
            if self.containers is not None and settings.local_fork_server and \
            settings.local_pool_size and not settings.local_jupyter_command else None
        self._refill: asyncio.Task[None] | None = None
        self.jobs = LocalJobs(settings, self.root, self.sandboxed, self._interpreter,
                              self.identities, self.cgroups, self.limits, self.containers)
        self._say_what_holds()

    def _say_what_holds(self) -> None:
        """Once, at start: what isolation this machine gives runtimes and jobs, when it is
        less than the full sandbox (README, "Not root")."""
        if not self.sandboxed:
            log.warning("not sandboxed (not root, or ENVMGR_LOCAL_SANDBOX=false): runtimes "
                        "and jobs run as this user, on its network, without containers or "
                        "limits; rootless containers are not used")
        elif self.containers is None:
            log.warning("no containers (runc or tini missing, or ENVMGR_LOCAL_CONTAINERS="
                        "false): runtimes and jobs run as their own uids on the host's "
                        "/tmp, process table and network")
        elif self.containers.slirp is None:
            log.warning("no slirp4netns: runtime and job containers have no network beyond "
                        "their own loopback (and the relay to the control plane)")

    def _shared_mounts(self) -> tuple[tuple[Path, Path, bool], ...]:
        """What every runtime container mounts: the relay's folder, read-only."""
        return ((self.relay.folder, relay.INSIDE, False),) if self.relay else ()

    def limits(self, machine_type: str) -> limits.Limits:
        """What a runtime or job of this machine type may use here."""
        if machine_type not in self._limits:
            s = self.settings
            spec = load_catalog(s.catalog_file).machine_types.get(machine_type, {})
            self._limits[machine_type] = limits.for_machine(
                spec, s.local_memory_scale, s.local_cpu_scale, s.local_pids_max)
        return self._limits[machine_type]

    def limits_for(self, machine_type: str) -> Limits | None:
        """What is enforced here (a CPU quota only when it is on: else 0)."""
        if self.cgroups is None:
            return None
        lim = self.limits(machine_type)
        return lim if self.cgroups.cpu else dataclasses.replace(lim, cpus=0.0)

    # -- paths and small records ------------------------------------------------------
    def disk_path(self, disk_id: str) -> Path:
        return self.disks_dir / disk_id

    def _rt(self, runtime_id: str) -> Path:
        return self.runtimes_dir / runtime_id

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            found: dict[str, Any] = json.loads(path.read_text())
            return found
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        """Atomic (write then rename), so a crash never leaves half a record."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    # -- disks ------------------------------------------------------------------------
    async def create_disk(self, disk: DiskSpec) -> None:
        await asyncio.to_thread(self._create_disk, disk)

    def _create_disk(self, disk: DiskSpec) -> None:
        """Sandboxed: a sparse ext4 image of `size_gb` (a write past it fails with ENOSPC in
        the kernel, the host's file systems untouched), mounted at the disk's folder.
        Otherwise (not root): a folder."""
        self.disk_path(disk.id).mkdir(parents=True, exist_ok=True)
        if self.sandboxed and self.settings.local_disk_images:
            try:
                disks.make_image(self._image(disk.id), disk.size_gb)
                disks.mount(self._image(disk.id), self.disk_path(disk.id))
            except disks.DiskError as exc:
                raise BackendError(str(exc)) from exc

    def _image(self, disk_id: str) -> Path:
        return self.images_dir / f"{disk_id}.img"

    async def delete_disk(self, disk: DiskSpec) -> None:
        await asyncio.to_thread(self._delete_disk, disk.id)

    def _delete_disk(self, disk_id: str) -> None:
        """Its processes, its file system, the image, then its uid's user (the uid itself
        is retired, never reused)."""
        uid = self.identities.find(f"disk:{disk_id}") if self.sandboxed else None
        if uid is not None:
            sandbox.kill_user(uid)
        try:
            disks.unmount(self.disk_path(disk_id))
        except disks.DiskError as exc:
            raise BackendError(str(exc)) from exc
        shutil.rmtree(self.disk_path(disk_id), ignore_errors=True)
        self._image(disk_id).unlink(missing_ok=True)
        if uid is not None:
            sandbox.remove_user(uid)

    async def attach(self, runtime: RuntimeSpec, disk: DiskSpec) -> None:
        if not self.disk_path(disk.id).is_dir():
            raise BackendError(f"disk {disk.id} does not exist in the local backend")
        state = self._read(self._rt(runtime.id) / "state.json")
        self._write(self._rt(runtime.id) / "state.json", {**state, "disk_id": disk.id})

    async def detach(self, runtime: RuntimeSpec, disk: DiskSpec) -> None:
        path = self._rt(runtime.id) / "state.json"
        if path.exists():
            self._write(path, {**self._read(path), "disk_id": None})

    # -- runtimes ---------------------------------------------------------------------
    async def create(self, runtime: RuntimeSpec, disk: DiskSpec) -> str:
        await self.attach(runtime, disk)
        return await self.start(runtime)

    async def start(self, runtime: RuntimeSpec) -> str:
        if self.relay is not None:
            await self.relay.ensure()
        info = self._live(runtime.id)
        if info:  # already up (a re-driven step, or re-adopted after a restart)
            endpoint = self._endpoint(info, runtime.id)
            await self._wait_ready(runtime, endpoint, lambda: not self._live(runtime.id))
            return endpoint
        disk_id = self._read(self._rt(runtime.id) / "state.json").get("disk_id")
        if not disk_id or not self.disk_path(disk_id).is_dir():
            raise BackendError("the runtime has no disk attached; it cannot start")
        await asyncio.to_thread(self._kill_marked, runtime.id)
        if self.relay is not None:  # in a container: on its socket, no port to pick
            self._starting += 1
            try:
                exited = await self._spawn(runtime, self.disk_path(disk_id), None)
                return await self._ready_or_end(runtime, exited)
            finally:
                self._starting -= 1
        tried: list[int] = []
        last = BackendError("jupyter-server did not start")
        attempts = 3 if self.settings.local_port_range is None else self._range_size()
        for _ in range(min(attempts, 3)):
            port = self._pick_port(tried)
            tried.append(port)
            exited = await self._spawn(runtime, self.disk_path(disk_id), port)
            try:
                return await self._ready_or_end(runtime, exited)
            except _PortTaken as exc:
                last = exc
        raise last

    async def _ready_or_end(self, runtime: RuntimeSpec, exited: Callable[[], bool]) -> str:
        """Its endpoint once it answers; if it does not, it is ended (a port taken is said
        as such, for another try)."""
        endpoint = self._endpoint(self._read(self._rt(runtime.id) / "pid.json"), runtime.id)
        try:
            await self._wait_ready(runtime, endpoint, exited)
            return endpoint
        except _PortTaken:
            raise
        except BaseException:
            await asyncio.to_thread(self._terminate, runtime.id)
            raise

    async def stop(self, runtime: RuntimeSpec) -> None:
        await asyncio.to_thread(self._terminate, runtime.id)

    async def delete(self, runtime: RuntimeSpec) -> None:
        await asyncio.to_thread(self._terminate, runtime.id)
        await asyncio.to_thread(shutil.rmtree, self._rt(runtime.id), True)
        await asyncio.to_thread(shutil.rmtree, self.configs_dir / runtime.id, True)
        await asyncio.to_thread(shutil.rmtree, self.sockets_dir / runtime.id, True)
        if self.sandboxed:  # a runtime of an older version had a user of its own
            await asyncio.to_thread(sandbox.remove_legacy_user, runtime.id)
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.remove, runtime.id)

    async def set_machine_type(self, runtime: RuntimeSpec, machine_type: str) -> None:
        path = self._rt(runtime.id) / "state.json"
        self._write(path, {**self._read(path), "machine_type": machine_type})

    async def status(self, runtime: RuntimeSpec) -> BackendStatus:
        return await asyncio.to_thread(self._status, runtime.id)

    def _status(self, runtime_id: str, notices: bool = False) -> BackendStatus:
        info = self._live(runtime_id)
        if info:  # (what happened inside: for the reconciler's inventory only, said once)
            return BackendStatus("running", self._endpoint(info, runtime_id),
                                 notices=self._oom_notices(runtime_id) if notices else [])
        if not self._rt(runtime_id).exists():
            return BackendStatus("absent")
        return BackendStatus("stopped", detail=self._exit_detail(runtime_id))

    def _oom_notices(self, runtime_id: str) -> list[str]:
        """Kernels the OOM killer ended in the runtime's group since the last look (the
        count it keeps; a group made again starts from zero), said once."""
        if self.cgroups is None:
            return []
        path = self._rt(runtime_id) / "oom.json"
        kills, seen = self.cgroups.oom_kills(runtime_id), self._read(path).get("seen", 0)
        if kills == seen:
            return []
        self._write(path, {"seen": kills})
        if kills < seen:
            return []
        limit = self.cgroups.memory_limit(runtime_id)
        said = f" (limit {limit / 2**30:.3g} GiB)" if limit else ""
        many = f" ({kills - seen} kernels)" if kills - seen > 1 else ""
        return [f"kernel killed: out of memory{said}{many}"]

    async def inventory(self) -> dict[str, BackendStatus]:
        if self.relay is not None:  # (runtimes a service before this one started, too)
            await self.relay.ensure()
        def scan() -> dict[str, BackendStatus]:
            found = {d.name: self._status(d.name, notices=True)
                     for d in self.runtimes_dir.iterdir() if d.is_dir()}
            for rid in self._marked_ids():  # a process whose folder is gone: an orphan
                if found.get(rid, BackendStatus("absent")).state != "running":
                    found[rid] = BackendStatus("running", detail="process without a record")
            groups = self.cgroups
            if groups is not None:
                # A limits group with processes and no runtime folder: an orphan too, even
                # if its processes dropped their markers.
                for rid in groups.names():
                    if rid.startswith("rt-") and rid not in found and groups.pids(rid):
                        found[rid] = BackendStatus("running",
                                                   detail="limits group without a record")
            return found
        return await asyncio.to_thread(scan)

    # -- notebook jobs (envmgr/backends/local/jobs.py) ---------------------------------
    async def start_job(self, job: JobSpec) -> dict[str, object]:
        return await asyncio.to_thread(self.jobs.start, job)

    async def poll_job(self, job: JobSpec, handle: dict[str, object], offset: int) -> JobRun:
        return await asyncio.to_thread(self.jobs.poll, job.id, handle, offset)

    async def kill_job(self, job: JobSpec, handle: dict[str, object]) -> None:
        await asyncio.to_thread(self.jobs.kill, job.id, handle)

    async def job_outputs(self, job: JobSpec, handle: dict[str, object],
                          max_bytes: int) -> dict[str, bytes]:
        return await asyncio.to_thread(self.jobs.outputs, job.id, max_bytes)

    async def cleanup_job(self, job: JobSpec, handle: dict[str, object]) -> None:
        await asyncio.to_thread(self.jobs.cleanup, job.id, handle)

    async def job_inventory(self) -> list[str]:
        return await asyncio.to_thread(self.jobs.inventory)

    async def warm(self) -> None:
        if self.pool is not None:  # what an earlier service left unclaimed goes first
            claimed = {self._read(d / "pid.json").get("container", "")
                       for d in self.runtimes_dir.iterdir() if d.is_dir()}
            await asyncio.to_thread(self.pool.sweep, claimed)
            await asyncio.to_thread(self.pool.fill)
            return
        forks = await asyncio.to_thread(self.fork_server)  # may build the image first
        if forks is not None:
            try:
                await asyncio.to_thread(forks.ensure)
            except ForkServerUnavailable as exc:
                log.warning("no fork server: runtimes start cold: %s", exc)

    async def ping(self) -> None:
        if not self.root.is_dir() or not os.access(self.root, os.W_OK):
            raise BackendError(f"{self.root} is not a writable folder")

    async def close(self) -> None:
        if self._refill is not None:
            self._refill.cancel()
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)
        if self.relay is not None:
            await self.relay.close()
        await self._http.aclose()
        self.identities.close()
        if self._forks is not None:
            await asyncio.to_thread(self._forks.stop_if_idle)

    # -- processes --------------------------------------------------------------------
    def _interpreter(self) -> str:
        """This Python, as runtime (and job) users may run it when sandboxed: the image."""
        if self._python is None:
            images = self.settings.local_images_dir or self.root / "images"
            self._python = sandbox.runtime_python(images) if self.sandboxed \
                else sys.executable
        return self._python

    def _command(self) -> list[str]:
        """The runtime "image": a configured command, else this Python."""
        if self.settings.local_jupyter_command:
            return list(self.settings.local_jupyter_command)
        return [self._interpreter(), "-m", "jupyter_server"]

    def jupyter_config(self, runtime: RuntimeSpec, disk: Path, port: int | None
                       ) -> dict[str, Any]:
        """A runtime's Jupyter configuration: served under the control plane's proxy path
        (on 127.0.0.1:`port`, or, in a container, on its socket), with the envmgr_jupyter
        extension; written to a file, so its token is on no command line."""
        s = self.settings
        where: dict[str, Any] = {"sock": str(containers.SOCKET), "sock_mode": "0600"} \
            if port is None else {"ip": "127.0.0.1", "port": port, "port_retries": 0}
        return {
            "ServerApp": {
                **where, "root_dir": str(disk),
                "open_browser": False, "base_url": f"{base_path(runtime.id)}/",
                "allow_root": os.geteuid() == 0 and not self.sandboxed,
                "contents_manager_class": "envmgr_jupyter.contents.SyncContentsManager"},
            "IdentityProvider": {"token": runtime.secret},
            "EnvmgrJupyter": {"control_url": s.runtime_api,
                              "control_socket": self.relay.inside if self.relay else "",
                              "runtime_token": runtime.runtime_token,
                              "lock_renew_seconds": s.lock_renew_seconds,
                              "lock_idle_seconds": s.lock_idle_minutes * 60,
                              "kernel_on_open": s.kernel_on_open},
            "SpareKernelManager": {"spare": s.spare_kernel,
                                   "spare_delay_seconds": s.spare_kernel_delay_seconds,
                                   "spare_max_load": s.spare_kernel_max_load},
        }

    def _image_env(self) -> dict[str, str]:
        """What the image's processes get of ours: the whitelist, the image first on PATH."""
        env = {k: os.environ[k] for k in sandbox.ENV_KEEP if k in os.environ}
        env["PATH"] = os.pathsep.join([str(Path(self._command()[0]).parent),
                                       env.get("PATH", "/usr/bin:/bin")])
        if self.sandboxed and not self.settings.local_jupyter_command:
            # The image's interpreter looks for libpython where it was built (under /root).
            env["LD_LIBRARY_PATH"] = str(Path(self._command()[0]).resolve().parent.parent / "lib")
        return env

    def _runtime_env(self, runtime: RuntimeSpec, disk: Path, config: Path,
                     user: pwd.struct_passwd | None) -> dict[str, str]:
        """A whitelisted environment: nothing of the service's (no ENVMGR_* setting, no
        credential), the runtime's own variables, and the disk as HOME (so `pip install
        --user` lands on the disk and survives a new runtime)."""
        env = self._image_env()
        name = user.pw_name if user else os.environ.get("USER", "envmgr")
        env.update({"HOME": str(disk), "USER": name, "LOGNAME": name,
                    "JUPYTER_CONFIG_DIR": str(config), "ENVMGR_RUNTIME_ID": runtime.id,
                    "ENVMGR_LOCAL_ROOT": str(self.root)})
        if self.containers is not None:  # its kernels' channels: in its container alone
            env[ipc.ENV] = containers.KERNELS_DIR
        elif user is not None:  # sockets only its uid may reach
            env[ipc.ENV] = str(sandbox.ipc_dir(user))
        return env

    def fork_server(self) -> ForkServer | None:
        """The fork server for this backend's image, if starts may fork (the default image
        only: a configured command is started as given)."""
        if not self.settings.local_fork_server or self.settings.local_jupyter_command or \
                self.containers is not None:
            return None
        if self._forks is None:
            env = {**self._image_env(), "HOME": str(self.runtimes_dir),
                   "ENVMGR_LOCAL_ROOT": str(self.root), "ENVMGR_FORKSERVER": "1"}
            self._forks = ForkServer(self.runtimes_dir, self._interpreter(), env)
        return self._forks

    def _prepare(self, runtime: RuntimeSpec, disk: Path, port: int | None
                 ) -> tuple[list[str], dict[str, str], pwd.struct_passwd | None, list[str]]:
        user, groups = None, []
        try:
            if self.sandboxed:  # the disk's own uid, for the disk's whole life
                if self._image(disk.name).exists():  # mounted again after a reboot
                    disks.mount(self._image(disk.name), disk)
                user = sandbox.ensure_user(self.identities.uid(f"disk:{disk.name}"), disk)
                sandbox.kill_user(user.pw_uid)  # nothing of an earlier start lives on
                sandbox.own(disk, user)
            config = self.configs_dir / runtime.id
            # In a container, its disk and configuration are at paths of their own.
            home, seen_config = (containers.HOME, containers.CONFIG) \
                if self.containers is not None else (disk, config)
            conf = self.jupyter_config(runtime, home, port)
            # What JupyterLab and jupyter_client compute from HOME and USER when they are
            # imported (a forked server would get the fork server's): named here, as a cold
            # start computes them, so user settings and workspaces are the runtime's own,
            # on its disk (written by Jupyter as the user, never by the service).
            conf["LabApp"] = {"user_settings_dir": str(home / ".jupyter/lab/user-settings"),
                              "workspaces_dir": str(home / ".jupyter/lab/workspaces")}
            conf["Session"] = {"username": user.pw_name if user else
                               os.environ.get("USER", "envmgr")}
            sandbox.write_config(config, conf, user)
            if port is None and user is not None:  # a fresh folder for its socket, its own
                sock = self.sockets_dir / runtime.id
                shutil.rmtree(sock, ignore_errors=True)  # (never follows a link it finds)
                sock.mkdir(mode=0o700)
                os.chown(sock, user.pw_uid, user.pw_gid)
            if self.cgroups is not None and self.containers is None:
                # its memory and processes (its uid's are gone); a container's are runc's
                groups = self.cgroups.make(runtime.id, self.limits(runtime.machine_type))
            env = self._runtime_env(runtime, home, seen_config, user)
            return self._command(), env, user, groups
        except (OSError, sandbox.SandboxError, IdentityError, disks.DiskError) as exc:
            raise BackendError(f"cannot prepare the runtime: {exc}") from exc

    async def _spawn(self, runtime: RuntimeSpec, disk: Path, port: int | None
                     ) -> Callable[[], bool]:
        """Start jupyter-server (forked if it can be, else cold) and record its pid; return
        a check that says whether it has ended."""
        rt = self._rt(runtime.id)
        rt.mkdir(parents=True, exist_ok=True)
        command, env, user, groups = await asyncio.to_thread(self._prepare, runtime, disk,
                                                             port)
        log_path = rt / "jupyter.log"
        (rt / "exit.json").unlink(missing_ok=True)
        with log_path.open("ab") as out:
            on = f"port {port}" if port is not None else "its socket"
            out.write(f"--- envmgr: starting on {on} at {utcnow().isoformat()}\n".encode())
            offset = out.tell()
        pid, forked = None, False
        contained = self.containers is not None and user is not None
        forks = self.fork_server()
        if forks is not None:
            request = {"argv": command, "env": env, "cwd": str(disk), "umask": 0o077,
                       "uid": user.pw_uid if user else None,
                       "gid": user.pw_gid if user else None,
                       "log": str(log_path), "exit_file": str(rt / "exit.json"),
                       "cgroups": groups}
            try:
                pid, forked = await asyncio.to_thread(forks.spawn, request), True
            except ForkServerUnavailable as exc:
                log.warning("cold start: %s", exc, extra={"runtime_id": runtime.id})
        container = runtime.id
        slot = await asyncio.to_thread(self.pool.claim) if self.pool and contained else None
        if self.pool is not None and contained and (self._refill is None or
                                                     self._refill.done()):
            self._refill = asyncio.create_task(asyncio.to_thread(self.pool.fill))  # the next
        if slot is not None and user is not None:
            pid, container = await asyncio.to_thread(
                self._spawn_pooled, slot, runtime, command, env, disk, user, log_path), slot.name
        if pid is None and contained and user is not None:
            pid = self._start_contained(runtime, command, env, disk, user, log_path)
        elif pid is None:
            pid = self._popen(command, env, disk, user, log_path, groups)
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            created = time.time()  # it ended already: _live will say so
        socket_file = str(self.sockets_dir / runtime.id / containers.SOCKET.name) \
            if port is None else None
        self._write(rt / "pid.json", {"pid": pid, "create_time": created, "port": port,
                                      "socket": socket_file,
                                      "log_offset": offset, "forked": forked,
                                      "contained": contained, "container": container,
                                      "uid": user.pw_uid if user else None})
        return lambda: not self._live(runtime.id)

    def _start_contained(self, runtime: RuntimeSpec, command: list[str], env: dict[str, str],
                         disk: Path, user: pwd.struct_passwd, log_path: Path) -> int:
        """The runtime in a container of its own, started cold; returns runc's pid."""
        assert self.containers is not None
        image = containers.image_of(self._interpreter())
        config = self.configs_dir / runtime.id
        box = containers.Box(name=runtime.id, args=command, env=env, cwd=containers.HOME,
                             user=user, limits=self.limits(runtime.machine_type),
                             mounts=[(disk, containers.HOME, True), (image, image, False),
                                     (config, containers.CONFIG, False),
                                     (self.sockets_dir / runtime.id, containers.JUPYTER, True),
                                     *self._shared_mounts()],
                             network="private")
        with log_path.open("ab") as out:
            try:
                proc = self.containers.start(box, out, disk,
                                             {"ENVMGR_RUNTIME_ID": runtime.id})
            except OSError as exc:
                raise BackendError(f"cannot start the runtime's container: {exc}") from exc
        self._children[proc.pid] = proc
        return proc.pid

    def _spawn_pooled(self, slot: pool.Slot, runtime: RuntimeSpec, command: list[str],
                      env: dict[str, str], disk: Path, user: pwd.struct_passwd,
                      log_path: Path) -> int:
        """The runtime in a pre-started container: its disk and configuration mounted where
        the container looks, its processes moved into the runtime's limits group, then
        Jupyter forked as the disk's uid. Returns runc's pid (the container's status)."""
        try:
            disks.bind(disk, slot.home)
            disks.bind(self.configs_dir / runtime.id, slot.config)
            disks.bind(self.sockets_dir / runtime.id, slot.sock)
            if self.cgroups is not None:
                self.cgroups.adopt(self.cgroups.make(runtime.id,
                                                     self.limits(runtime.machine_type)),
                                   self.cgroups.pids(slot.name))
            os.link(log_path, slot.ctl / "jupyter.log")
            slot.forks.call({
                "op": "spawn", "argv": command, "env": env, "cwd": str(containers.HOME),
                "umask": 0o077, "uid": user.pw_uid, "gid": user.pw_gid,
                "log": slot.inside(slot.ctl / "jupyter.log"),
                "exit_file": slot.inside(slot.ctl / "exit.json")})
        except (OSError, ValueError, ForkServerUnavailable, disks.DiskError) as exc:
            assert self.pool is not None
            self.pool.release(slot.name, slot.proc)
            raise BackendError(f"cannot start the runtime in its container: {exc}") from exc
        self._children[slot.proc.pid] = slot.proc
        return slot.proc.pid

    def _popen(self, command: list[str], env: dict[str, str], disk: Path,
               user: pwd.struct_passwd | None, log_path: Path,
               groups: tuple[str, ...] | list[str] = ()) -> int:
        if groups and user is not None:  # into its groups as root, then its user
            command = limits.joined(list(groups), sandbox.drop_to(user) + command)
            user = None
        with log_path.open("ab") as out:
            try:
                proc = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    cwd=disk, env=env, start_new_session=True, umask=0o077,
                    user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                    extra_groups=[] if user else None)
            except OSError as exc:
                raise BackendError(f"cannot start jupyter-server: {exc}") from exc
        self._children[proc.pid] = proc
        return proc.pid

    async def _wait_ready(self, runtime: RuntimeSpec, endpoint: str,
                          exited: Callable[[], bool]) -> None:
        """Poll /api/status until it answers; fail with the log's words if the process dies."""
        url = f"{endpoint}/api/status"
        headers = {"Authorization": f"token {runtime.secret}"}
        while True:
            if await asyncio.to_thread(exited):
                detail = self._exit_detail(runtime.id)
                cls = _PortTaken if any(s in detail for s in _PORT_TAKEN) else BackendError
                raise cls(detail)
            with contextlib.suppress(httpx.HTTPError):
                if (await self._http.get(url, headers=headers)).status_code == 200:
                    return
            await asyncio.sleep(0.05)

    def _exit_detail(self, runtime_id: str, code: int | None = None) -> str:
        """What happened, in words: how it ended (exit code, or the signal that killed it)
        and when, and Jupyter's own error lines if it wrote any (not its chatter)."""
        rt = self._rt(runtime_id)
        info, ended = self._read(rt / "pid.json"), self._read(rt / "exit.json")
        code = code if code is not None else ended.get("code")
        if code is None:
            how = "is no longer running (its exit status is unknown: it was not started " \
                "by this control plane process)"
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"was killed by {name} (signal {-code})"
        else:
            how = f"exited with code {code}"
        at = ended.get("at") or utcnow().isoformat(timespec="seconds")
        try:
            with (rt / "jupyter.log").open("rb") as f:
                f.seek(info.get("log_offset", 0))
                lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
        except FileNotFoundError:
            lines = []
        # (runc's own notes, as its cgroup cleanup's retries, are not the server's words)
        lines = [ln for ln in lines if ln and not RUNC_NOTE.match(ln)]
        errors = [ln for ln in lines if any(k in ln for k in ("[C ", "[E ", "Error"))]
        # Its error lines; a process that ended by itself without any also says why in its
        # last lines (one killed by a signal only left chatter there).
        said = errors or (lines if code is not None and code > 0 else [])
        tail = f"; it said: {' | '.join(said[-2:])[-400:]}" if said else ""
        return f"jupyter-server {how}, at {at}{tail}"

    def _record_exit(self, runtime_id: str, code: int | None) -> None:
        """The first sight of a dead process: its exit status (if it was our child) and when."""
        path = self._rt(runtime_id) / "exit.json"
        if not path.exists():
            self._write(path, {"code": code, "at": utcnow().isoformat(timespec="seconds")})

    def _live(self, runtime_id: str) -> dict[str, Any] | None:
        """The pid record if its process is alive (and is the one we started), else None."""
        info = self._read(self._rt(runtime_id) / "pid.json")
        pid = info.get("pid")
        if not pid:
            return None
        with self._reaping:
            child = self._children.get(pid)
            if child is not None:  # our own child: its waitpid is the whole truth
                if child.poll() is None:
                    return info
                self._children.pop(pid, None)
                code = child.returncode
                if info.get("contained") and code > 128:  # tini's way of saying "signal"
                    code = 128 - code
                self._record_exit(runtime_id, code)
                return None
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - info["create_time"]) <= 0.5 and \
                        p.status() != psutil.STATUS_ZOMBIE:
                    return info
            except psutil.Error:
                pass
        if info.get("forked"):  # its parent, the fork server, records how it ended
            self._await_exit_record(runtime_id)
        with self._reaping:
            self._record_exit(runtime_id, None)
        return None

    def _await_exit_record(self, runtime_id: str, seconds: float = 5.0) -> None:
        # Once per death, on a worker thread: the fork server reaps within milliseconds
        # when it gets the CPU, which on a loaded machine may take a while; a dead fork
        # server writes nothing, so it is not waited for.
        path = self._rt(runtime_id) / "exit.json"
        deadline = time.monotonic() + seconds
        while not path.exists() and time.monotonic() < deadline:
            if self._forks is None or self._forks.pid() is None:
                return
            time.sleep(0.02)

    def _terminate(self, runtime_id: str) -> None:
        """SIGTERM (jupyter-server then shuts its kernels down), then SIGKILL what is left,
        kernels included."""
        info = self._live(runtime_id)
        procs: list[psutil.Process] = []
        if info:
            with contextlib.suppress(psutil.Error):
                main = psutil.Process(info["pid"])
                procs = [main, *main.children(recursive=True)]
                main.terminate()
                psutil.wait_procs([main], timeout=self.settings.local_stop_grace_seconds)
        procs += self._marked(runtime_id)
        uid = self._read(self._rt(runtime_id) / "pid.json").get("uid")
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=5)
        if isinstance(uid, int):  # what left the tree and dropped its marker, too
            sandbox.kill_user(uid)
        container = self._read(self._rt(runtime_id) / "pid.json").get("container")
        if self.containers is not None:  # its group's processes, then the container
            self.containers.end(runtime_id)
            if container and container.startswith(pool.PREFIX):  # a pooled one, its mounts
                pool.release(self.containers, self.root, container)
        elif self.cgroups is not None:
            self.cgroups.kill(runtime_id)
        if info:
            child = self._children.pop(info["pid"], None)
            if child is not None:
                child.wait(timeout=5)
        self._put_disk_to_rest(runtime_id)
        (self._rt(runtime_id) / "pid.json").unlink(missing_ok=True)
        (self._rt(runtime_id) / "exit.json").unlink(missing_ok=True)

    def _put_disk_to_rest(self, runtime_id: str) -> None:
        """A disk image is mounted only while a runtime runs on it: once everything of the
        runtime is gone, it is an image at rest again (the next start mounts it)."""
        disk_id = self._read(self._rt(runtime_id) / "state.json").get("disk_id")
        if disk_id and self.sandboxed and self._image(disk_id).exists():
            try:
                disks.unmount(self.disk_path(disk_id))
            except disks.DiskError as exc:
                log.warning("a stopped runtime's disk stays mounted: %s", exc,
                            extra={"runtime_id": runtime_id})

    def _kill_marked(self, runtime_id: str) -> None:
        procs = self._marked(runtime_id)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=5)

    def _marked(self, runtime_id: str | None = None) -> list[psutil.Process]:
        """Processes started by this backend (for one runtime, or all), by environment."""
        me = os.getpid()
        out = []
        for p in psutil.process_iter(["pid"]):
            if p.pid == me:
                continue
            try:
                env = p.environ()
            except psutil.Error:
                continue
            if env.get("ENVMGR_LOCAL_ROOT") != str(self.root):
                continue
            rid = env.get("ENVMGR_RUNTIME_ID")
            if rid and (runtime_id is None or rid == runtime_id):
                out.append(p)
        return out

    def _marked_ids(self) -> set[str]:
        ids = set()
        for p in self._marked():
            with contextlib.suppress(psutil.Error):
                if p.status() != psutil.STATUS_ZOMBIE:
                    ids.add(p.environ()["ENVMGR_RUNTIME_ID"])
        return ids

    # -- ports ------------------------------------------------------------------------
    @staticmethod
    def _endpoint(info: dict[str, Any], runtime_id: str) -> str:
        """Where a started runtime answers (its pid record says): its socket, or a port."""
        if info.get("socket"):
            return sockets.endpoint(Path(info["socket"]), base_path(runtime_id))
        return f"http://127.0.0.1:{info.get('port')}{base_path(runtime_id)}"

    def _range_size(self) -> int:
        assert self.settings.local_port_range is not None
        lo, hi = self.settings.local_port_range
        return hi - lo + 1

    def _pick_port(self, tried: list[int]) -> int:
        if self.settings.local_port_range is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return int(s.getsockname()[1])
        lo, hi = self.settings.local_port_range
        candidates = [p for p in range(lo, hi + 1) if p not in tried] or [lo]
        for port in candidates:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                    return port
                except OSError:
                    continue
        return candidates[0]  # all taken: let jupyter-server say so in its own words


def stop_everything(root: Path) -> int:
    """Every process the local backend started from a data dir (runtimes, their kernels,
    jobs, fork servers, and whatever they left, by marker and by limits group), then its
    groups and its disks' mounts: `envmgr stop-local`, for when the service is stopped for
    good or its data dir is about to go. Returns how many processes were ended."""
    root = root.resolve()
    me, procs = os.getpid(), []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if p.pid != me and p.environ().get("ENVMGR_LOCAL_ROOT") == str(root):
                procs.append(p)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=10)
    if containers.available():
        containers.Containers(root, None).end_all()
    limits.Cgroups(root).remove_all()
    disks.unmount_under(root / "pool")  # pooled containers' views of disks, first
    disks.unmount_under(root / "disks")
    return len(procs)
