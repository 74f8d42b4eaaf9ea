"""A fork server for the local backend: imports jupyter-server, JupyterLab and the runtime
extension once, then forks a child per runtime start.

A cold jupyter-server start is about 2 CPU-seconds, nearly all of it imports; a fork of a
process that already holds them costs milliseconds. The child then becomes exactly what a
cold start would have made: its own session, the runtime's log as stdout/stderr, the
runtime's umask, working folder, user and group (no supplementary groups) and whitelisted
environment, and a /proc identity (environment and command line) of its own, so that
nothing of this process shows through and the backend still finds its runtimes by their
environment. Only then does it run jupyter-server.

It forks before any event loop or thread exists: it refuses to start if its imports began
one. It listens on a Unix socket in the backend's private folder and answers only its own
user (root, when sandboxed), checked with SO_PEERCRED. It reaps its children and records
how each ended in the file the request named, as a parent process would.

Protocol: one JSON line per connection, one JSON line back.
  {"op": "ping"}                      -> {"ok": true, "pid": ...}
  {"op": "spawn", "argv": [...], "env": {...}, "cwd": ..., "uid": int|null, "gid": ...,
   "umask": int, "log": path, "exit_file": path, "args": [...], "cgroups": [path, ...]}
   -> {"ok": true, "pid": ...}
  (argv is what /proc shows as its command line; args are jupyter-server's arguments.)
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from datetime import UTC, datetime
from typing import Any

# What a runtime's jupyter-server imports: its server extensions, and what they load.
PRELOAD = ("jupyter_server.serverapp", "jupyter_server.services.contents.largefilemanager",
           "jupyter_server.gateway.managers", "jupyter_server.kernelspecs.handlers",
           "jupyter_server.nbconvert.handlers", "jupyter_server.services.api.handlers",
           "jupyter_server.services.config.handlers",
           "jupyter_server.services.contents.handlers",
           "jupyter_server.services.events.handlers", "jupyter_server.services.kernels.handlers",
           "jupyter_server.services.kernelspecs.handlers",
           "jupyter_server.services.nbconvert.handlers",
           "jupyter_server.services.security.handlers",
           "jupyter_server.services.sessions.handlers", "jupyter_server.services.shutdown",
           "jupyter_server.view.handlers", "jupyter_client.ioloop",
           "jupyter_client.provisioning.local_provisioner", "tornado.platform.asyncio",
           "jupyterlab", "jupyterlab.labapp", "jupyterlab_server", "jupyter_lsp",
           "jupyter_server_terminals", "notebook_shim", "notebook_shim.nbserver", "IPython",
           "codeop", "getopt", "jinja2.ext", "httpcore", "h11", "envmgr_jupyter",
           "envmgr_jupyter.app", "envmgr_jupyter.contents")
# Preloaded modules that compute paths from HOME at import (send2trash: the trash folder).
HOME_AT_IMPORT = ("send2trash.plat_other",)
MAX_REQUEST = 1 << 20
_KEEP: list[Any] = []  # the buffers /proc now points at: they must live as long as we do


class _MMMap(ctypes.Structure):
    """struct prctl_mm_map (linux/prctl.h)."""
    _fields_ = [(n, ctypes.c_uint64) for n in (
        "start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
        "start_stack", "arg_start", "arg_end", "env_start", "env_end", "auxv")] + \
        [("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]


def set_identity(argv: list[str], env: dict[str, str]) -> None:
    """Point /proc/self/cmdline and /proc/self/environ at this process's own command line
    and environment (PR_SET_MM_MAP): a forked child would otherwise show its parent's."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sbrk.restype = ctypes.c_void_p
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()

    def stat(n: int) -> int:  # proc(5) numbers fields from 1; ours start at field 3
        return int(fields[n - 3])

    blocks = []
    for data in (b"\0".join(a.encode() for a in argv) + b"\0",
                 b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())):
        buf = ctypes.create_string_buffer(data, len(data))
        _KEEP.append(buf)
        blocks.append((ctypes.addressof(buf), ctypes.addressof(buf) + len(data)))
    (arg_start, arg_end), (env_start, env_end) = blocks
    mm = _MMMap(stat(26), stat(27), stat(45), stat(46), stat(47), libc.sbrk(0) or stat(47),
                stat(28), arg_start, arg_end, env_start, env_end, 0, 0, 0xFFFFFFFF)
    if libc.prctl(35, 14, ctypes.byref(mm), ctypes.sizeof(mm), 0) != 0:  # PR_SET_MM_MAP
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MM_MAP) refused")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _user_site() -> None:
    """The runtime user's own site-packages (`pip install --user` on the disk), as a new
    interpreter would have found from its HOME."""
    import site
    site.USER_BASE = site.USER_SITE = None
    user_site = site.getusersitepackages()
    if site.ENABLE_USER_SITE is not False and os.path.isdir(user_site):
        site.addsitedir(user_site)


def read_message(conn: socket.socket) -> dict[str, Any]:
    """One JSON object on one line (the protocol both ends speak)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("message too large")
    message = json.loads(data or b"null")
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message


def become(req: dict[str, Any]) -> None:
    """In the child: turn into the runtime's process, as a cold start would be made."""
    os.setsid()
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, 65536)  # nothing of the fork server's: its socket, its pipes
    set_identity(req["argv"], req["env"])
    os.umask(req.get("umask", 0o077))
    for procs in req.get("cgroups") or []:  # its limits' groups, joined while still root
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
    if req.get("uid") is not None:
        os.setgroups([])
        os.setgid(req["gid"])
        os.setuid(req["uid"])
    # As its user: in a container, root may not enter a folder that is not its own.
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    for name in HOME_AT_IMPORT:  # read HOME when imported: read it again, the runtime's
        if name in sys.modules:
            importlib.reload(sys.modules[name])
    _user_site()
    sys.argv = ["jupyter-server", *req.get("args", [])]


def _run(req: dict[str, Any]) -> None:
    """The child's whole life: never returns."""
    code = 1
    try:
        become(req)
        from jupyter_server.serverapp import main
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # the process is ending either way
                stream.flush()
        os._exit(code)


class Server:
    def __init__(self, path: str, once: bool = False) -> None:
        self.path = path
        # In a pooled container (`--once`): it serves one runtime, forwards SIGTERM to it
        # and ends with it, with its exit status (the container's).
        self.once = once
        self.client = os.getppid()  # its control plane: who started it, then who last asked
        self.exit_files: dict[int, str] = {}  # its live runtimes
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            if os.path.exists(path):
                os.unlink(path)
            # By its name in its folder: a socket's path may not pass 107 bytes.
            os.chdir(os.path.dirname(os.path.abspath(path)))
            self.sock.bind(os.path.basename(path))
        finally:
            os.umask(old)
        self.sock.listen(64)
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a wakeup, handled in the loop
        signal.signal(signal.SIGTERM, self._terminate)

    def _terminate(self, *_: Any) -> None:
        if not (self.once and self.exit_files):
            sys.exit(0)
        for pid in self.exit_files:  # its runtime shuts its kernels down, then it ends
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            path = self.exit_files.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if path:
                try:
                    _write_json(path, {"code": code, "at": _now()})
                except OSError as exc:
                    print(f"cannot record the exit of {pid}: {exc}", file=sys.stderr)
            if path and self.once:  # the container's status: a signal as a shell says it
                sys.exit(128 - code if code < 0 else code)

    def _peer_allowed(self, conn: socket.socket) -> bool:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", creds)
        if uid != os.getuid():
            return False
        self.client = pid
        return True

    def handle(self, conn: socket.socket) -> None:
        with conn:
            if not self._peer_allowed(conn):
                return
            conn.settimeout(5)
            try:
                req = read_message(conn)
                if req.get("op") == "spawn" and self.once and self.exit_files:
                    raise ValueError("this fork server has served its one runtime")
                if req.get("op") == "ping":
                    reply: dict[str, Any] = {"ok": True, "pid": os.getpid()}
                elif req.get("op") == "spawn":
                    for key in ("argv", "env", "cwd", "log", "exit_file"):
                        if key not in req:
                            raise ValueError(f"spawn needs {key!r}")
                    pid = os.fork()
                    if pid == 0:
                        _run(req)
                    self.exit_files[pid] = req["exit_file"]
                    reply = {"ok": True, "pid": pid}
                else:
                    raise ValueError(f"unknown op {req.get('op')!r}")
            except (ValueError, OSError, TypeError) as exc:
                reply = {"ok": False, "error": str(exc)}
            with contextlib.suppress(OSError):  # the caller left: the fork server stays up
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def serve(self) -> None:
        print(f"envmgr fork server {os.getpid()} ready on {self.path}", flush=True)
        while True:
            watched: list[Any] = [self.sock, self.wake_r]
            ready, _, _ = select.select(watched, [], [], 1.0)
            if self.wake_r in ready:
                while True:
                    try:
                        if not os.read(self.wake_r, 512):
                            break
                    except BlockingIOError:
                        break
            self.reap()
            if not self.exit_files and not _alive(self.client):
                # Its control plane is gone and no runtime needs it to record an exit: a
                # helper that serves nothing ends (the next control plane starts its own).
                print("envmgr fork server: the control plane is gone; ending", flush=True)
                return
            if self.sock in ready:
                try:
                    conn, _ = self.sock.accept()
                    self.handle(conn)
                except OSError as exc:  # one caller's trouble, never the server's end
                    print(f"a request failed: {exc}", file=sys.stderr, flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _can_fork_safely() -> str | None:
    """Why forking here would not make a sound child, or None."""
    if threading.active_count() != 1:
        return f"its imports started {threading.active_count() - 1} thread(s)"
    pid = os.fork()
    if pid == 0:
        try:
            set_identity(["probe"], {"ENVMGR_PROBE": "1"})
            with open("/proc/self/environ", "rb") as f:
                os._exit(0 if f.read() == b"ENVMGR_PROBE=1\0" else 3)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return None if code == 0 else \
        f"this kernel does not let a child set its own /proc identity (PR_SET_MM_MAP: {code})"


def main() -> None:
    once = sys.argv[2:] == ["--once"]
    if len(sys.argv) != 2 and not once:
        sys.exit("usage: python -m envmgr_jupyter.forkserver SOCKET [--once]")
    started = time.monotonic()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            print(f"not preloaded: {name}: {exc}", file=sys.stderr)
    from envmgr_jupyter.client import tls_context
    tls_context()  # the CA bundle, read once here rather than once per runtime
    why = _can_fork_safely()
    if why:
        sys.exit(f"envmgr fork server cannot start: {why}")
    print(f"preloaded in {time.monotonic() - started:.2f} s", flush=True)
    Server(sys.argv[1], once=once).serve()


if __name__ == "__main__":
    main()
