"""The local runtime sandbox: when the service runs as root, each runtime and each job runs
as a system user of its own, with a whitelisted environment, the service's data dir
traversable but not readable (0711) and everything of the service in it unreadable.

Identities are never reused: a disk's files belong to a uid the database gave that disk
(`identities.py`), and every runtime on the disk runs as it; a job gets one of its own. So
a later runtime or job of anybody cannot own what an earlier one left. Root never writes
through a path a user controls: a runtime's configuration is written anew at each start in
a folder root owns and the user may only read.

Runtime users cannot enter /root (0700), where this machine's Python lives, so a runtime
runs from an *image*: a tree of hard links to this interpreter and its packages, in folders
they may read, built once per installed set of packages (hard links copy no data)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from envmgr_jupyter import labconfig
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_random

from envmgr.backends.local import identities

_USERADD = threading.Lock()
# What a runtime's environment may hold besides its own variables (JupyterHub's env_keep).
ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


class SandboxError(RuntimeError):
    pass


def active(enabled: bool) -> bool:
    return enabled and os.geteuid() == 0


def legacy_user_name(runtime_id: str) -> str:
    """The user a runtime or job had before identities came from the database."""
    return "em-" + runtime_id.removeprefix("rt-")


# /etc/passwd's lock is shared with every other process making users (other services, tests):
# retried for up to half a minute, not a handful of times.
@retry(retry=retry_if_exception_type(subprocess.CalledProcessError), stop=stop_after_delay(30),
       wait=wait_random(0.05, 0.5), reraise=True)
def _useradd(uid: int, home: Path) -> None:
    name = identities.user_name(uid)
    if subprocess.run(["getent", "group", str(uid)], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", "--gid", str(uid), name], check=True, capture_output=True)
    subprocess.run(["useradd", "--uid", str(uid), "--gid", str(uid), "--no-create-home",
                    "--no-user-group", "--home-dir", str(home), "--shell", "/usr/sbin/nologin",
                    "--comment", "envmgr sandbox", name], check=True, capture_output=True)


def ensure_user(uid: int, home: Path) -> pwd.struct_passwd:
    """The system user of a uid the database gave (`em-<uid>`, its own group of the same
    number), made if missing (useradd takes /etc/passwd's lock; one at a time here,
    retried if another process holds it)."""
    with _USERADD:
        try:
            user = pwd.getpwuid(uid)
        except KeyError:
            try:
                _useradd(uid, home)
            except subprocess.CalledProcessError as exc:
                raise SandboxError(f"cannot create user {identities.user_name(uid)}: "
                                   f"{exc.stderr.decode(errors='replace').strip()}") from exc
            user = pwd.getpwuid(uid)
    if user.pw_dir != str(home):  # another service's, with a database of its own
        raise SandboxError(
            f"uid {uid} is in use by {user.pw_name} (home {user.pw_dir}), not by {home}: give "
            "each envmgr service on this machine its own ENVMGR_LOCAL_UID_BASE")
    return user


def drop_to(user: pwd.struct_passwd) -> list[str]:
    """A command prefix that runs the rest as `user` (its group, no other groups)."""
    return [shutil.which("setpriv") or "/usr/bin/setpriv", f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}", "--clear-groups", "--"]


def kill_user(uid: int) -> None:
    """Every process of a sandbox uid, whatever it did to its session, environment or name:
    a uid belongs to one disk or job, so nothing of it may outlive its runtime or job."""
    if uid < 1000:
        return
    procs = []
    for p in psutil.process_iter(["uids"]):
        with contextlib.suppress(psutil.Error):
            if uid in (p.info["uids"].real, p.info["uids"].effective):
                procs.append(p)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=5)


def remove_user(uid: int) -> None:
    """The user of a retired uid (its disk or job is gone), and its kernels' socket folder.
    The uid itself is never given again (the database's record stays)."""
    with contextlib.suppress(KeyError):
        _delete_user(pwd.getpwuid(uid).pw_name)


# Where a sandboxed runtime's or job's kernels put their channels' sockets (ZMQ's ipc
# transport, envmgr_jupyter.ipc): a short path (a socket's may not pass 107 bytes), root's,
# with a folder per uid that only that uid may enter: a 1 MiB tmpfs of its own, so a kernel
# writing there fills nothing of anybody else's (/run is often the machine's own tmpfs).
IPC_ROOT = Path("/run/envmgr-kernels")


def ipc_dir(user: pwd.struct_passwd) -> Path:
    """The uid's kernel-socket folder, made if missing. Its parent is root's and nobody
    else may write it, so the folder cannot be swapped for a link; anything else found
    there is refused."""
    try:
        IPC_ROOT.mkdir(mode=0o711, parents=True, exist_ok=True)
        root = IPC_ROOT.lstat()
        if not stat.S_ISDIR(root.st_mode) or root.st_uid != 0:
            raise SandboxError(f"{IPC_ROOT} is not a folder of root's")
        IPC_ROOT.chmod(0o711)
        folder = IPC_ROOT / str(user.pw_uid)
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        if not stat.S_ISDIR(folder.lstat().st_mode):
            raise SandboxError(f"{folder} is not a folder")
        if not os.path.ismount(folder):
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size=1m,nr_inodes=4096,mode=0700,uid="
                 f"{user.pw_uid},gid={user.pw_gid},nosuid,nodev,noexec", "tmpfs",
                 str(folder)], capture_output=True)
            if done.returncode != 0:
                raise SandboxError(f"cannot mount the kernels' socket folder: "
                                   f"{done.stderr.decode(errors='replace').strip()[-200:]}")
        os.lchown(folder, user.pw_uid, user.pw_gid)
        folder.chmod(0o700)
    except OSError as exc:
        raise SandboxError(f"cannot make the kernels' socket folder: {exc}") from exc
    return folder


def remove_legacy_user(runtime_id: str) -> None:
    with contextlib.suppress(KeyError):
        pwd.getpwnam(legacy_user_name(runtime_id))
        _delete_user(legacy_user_name(runtime_id))


def _delete_user(name: str, seconds: float = 10) -> None:
    """userdel refuses (exit 8) while a process of the user lives: one killed just before
    (a job's detached process, a runtime) may not be gone yet. Kill what is left of the
    user and retry until a deadline."""
    deadline = time.monotonic() + seconds
    with contextlib.suppress(KeyError):  # its kernels' socket folder (a tmpfs) goes too
        folder = IPC_ROOT / str(pwd.getpwnam(name).pw_uid)
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        if os.path.ismount(folder):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
    while True:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        with _USERADD:
            done = subprocess.run(["userdel", name], capture_output=True)
        if done.returncode != 8 or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def remove_users_under(root: Path) -> None:
    """Every runtime user whose home (its disk) lies under `root`: for tests and benchmarks
    that throw a whole data dir away without deleting its runtimes."""
    prefix = str(Path(root).resolve())
    for user in pwd.getpwall():
        if user.pw_name.startswith("em-") and user.pw_dir.startswith(prefix):
            _delete_user(user.pw_name)


def own(path: Path, user: pwd.struct_passwd) -> None:
    """`path` (a disk or a job's folder) belongs to its uid alone. A disk of an older
    version belonged to a user per runtime: everything in it changes hands once, after
    every process of that user is gone (none can swap a folder for a link meanwhile), with
    chown's own walk, which never follows a link."""
    st = path.lstat()
    if (st.st_uid, st.st_gid) != (user.pw_uid, user.pw_gid):
        kill_user(st.st_uid)
        done = subprocess.run(["chown", "-R", "-P", "--no-dereference",
                               f"{user.pw_uid}:{user.pw_gid}", "--", str(path)],
                              capture_output=True)
        if done.returncode != 0:
            raise SandboxError(f"cannot give {path.name} to its user: "
                               f"{done.stderr.decode(errors='replace').strip()[-300:]}")
    path.chmod(0o700)


def lock_down(data_dir: Path, private: list[Path], traversable: list[Path]) -> None:
    """The data dir and the folders on the way to disks: enter-only (0711), so a runtime
    user reaches its own disk by path but can list nothing. Everything else of the
    service's: owner only."""
    for d in traversable:
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o711)
    for p in private:
        p.mkdir(parents=True, exist_ok=True)
        p.chmod(0o700)
    for p in data_dir.iterdir():
        if p.is_file():
            p.chmod(0o600)  # the database (and its -wal, -shm), keys, tokens
    blocked = [str(p) for p in data_dir.parents if not os.stat(p).st_mode & 0o001]
    if blocked:
        raise SandboxError(
            f"runtime users cannot reach {data_dir}: {', '.join(blocked)} cannot be entered by "
            "others (chmod o+x), or set ENVMGR_DATA_DIR elsewhere (default for root: "
            "/var/lib/envmgr)")


def _stamp() -> str:
    purelib = Path(sysconfig.get_paths()["purelib"])
    parts = [sys.base_prefix, sys.prefix, str(purelib.stat().st_mtime_ns), sys.version]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _link_tree(src: Path, dst: Path) -> None:
    """Folders made anew (readable by all), files hard-linked (their own modes)."""
    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:  # another file system: copy
            shutil.copy2(s, d)
    shutil.copytree(src, dst, symlinks=True, copy_function=link, dirs_exist_ok=True)


def runtime_python(images: Path) -> str:
    """This interpreter and its packages as runtime users may run them: a venv-like tree in
    `images/<stamp>/` (user site-packages on, so `pip install --user` lands on the disk)."""
    image = images / _stamp()
    python = image / "bin" / "python3"
    if python.exists():
        return str(python)
    images.mkdir(parents=True, exist_ok=True)
    images.chmod(0o755)
    tmp = images / f".{image.name}.{os.getpid()}.{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if sys.prefix != sys.base_prefix:  # a venv: its packages, JupyterLab's assets, config
        _link_tree(Path(sys.prefix), tmp)
    _link_tree(Path(sys.base_prefix), tmp / "base")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (tmp / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3", version):
        (tmp / "bin" / name).unlink(missing_ok=True)
        (tmp / "bin" / name).symlink_to(f"../base/bin/{version}")
    # A new file, not the venv's own pyvenv.cfg written through its hard link (that would
    # rewrite the venv's and every other image's with this image's home).
    (tmp / "pyvenv.cfg").unlink(missing_ok=True)
    (tmp / "pyvenv.cfg").write_text(f"home = {image / 'base' / 'bin'}\n"
                                    "include-system-site-packages = true\n")
    for d in (tmp, *[p for p in tmp.rglob("*") if p.is_dir() and not p.is_symlink()]):
        d.chmod(d.stat().st_mode | 0o555)
    try:
        tmp.rename(image)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(python)


def write_config(folder: Path, config: dict[str, Any], user: pwd.struct_passwd | None) -> None:
    """A runtime's Jupyter configuration (its token among it: never on a command line),
    made anew at each start in a folder root owns and the runtime's user may only read
    (`labconfig.write_folder`, which a VM's startup script uses too)."""
    labconfig.write_folder(folder, config, user.pw_gid if user is not None else None)
