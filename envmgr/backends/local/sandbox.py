"""The local runtime sandbox: when the service runs as root, each runtime runs as a system
user of its own (made on demand, as JupyterHub's LocalProcessSpawner does), with its disk
owned by that user (0700), the service's data dir traversable but not readable (0711) and
everything of the service in it unreadable, and a whitelisted environment.

Runtime users cannot enter /root (0700), where this machine's Python lives, so a runtime
runs from an *image*: a tree of hard links to this interpreter and its packages, in folders
they may read, built once per installed set of packages (hard links copy no data)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

from envmgr_jupyter import labconfig
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_random

_USERADD = threading.Lock()
# What a runtime's environment may hold besides its own variables (JupyterHub's env_keep).
ENV_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


class SandboxError(RuntimeError):
    pass


def active(enabled: bool) -> bool:
    return enabled and os.geteuid() == 0


def user_name(runtime_id: str) -> str:
    return "em-" + runtime_id.removeprefix("rt-")  # 24 characters; useradd allows 32


# /etc/passwd's lock is shared with every other process making users (other services, tests):
# retried for up to half a minute, not a handful of times.
@retry(retry=retry_if_exception_type(subprocess.CalledProcessError), stop=stop_after_delay(30),
       wait=wait_random(0.05, 0.5), reraise=True)
def _useradd(name: str, home: Path) -> None:
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                    str(home), "--shell", "/usr/sbin/nologin", "--comment", "envmgr runtime",
                    name], check=True, capture_output=True)


def ensure_user(runtime_id: str, home: Path) -> pwd.struct_passwd:
    """The runtime's own system user, made if missing (useradd takes /etc/passwd's lock;
    one at a time here, retried if another process holds it)."""
    name = user_name(runtime_id)
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    with _USERADD:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            try:
                _useradd(name, home)
            except subprocess.CalledProcessError as exc:
                raise SandboxError(f"cannot create user {name}: "
                                   f"{exc.stderr.decode(errors='replace').strip()}") from exc
        return pwd.getpwnam(name)


def remove_user(runtime_id: str) -> None:
    with contextlib.suppress(KeyError):
        pwd.getpwnam(user_name(runtime_id))
        _delete_user(user_name(runtime_id))


def _delete_user(name: str, seconds: float = 10) -> None:
    """userdel refuses (exit 8) while a process of the user lives: one killed just before
    (a job's detached process, a runtime) may not be gone yet. Kill what is left of the
    user and retry until a deadline."""
    deadline = time.monotonic() + seconds
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
    """`path` (a disk or a config folder) belongs to the runtime's user alone. A disk kept
    from an earlier runtime had another user: everything in it changes hands."""
    st = path.stat()
    if (st.st_uid, st.st_gid) != (user.pw_uid, user.pw_gid):
        for dirpath, dirnames, filenames in os.walk(path):
            for name in (*dirnames, *filenames):
                os.lchown(os.path.join(dirpath, name), user.pw_uid, user.pw_gid)
        os.chown(path, user.pw_uid, user.pw_gid)
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


def write_config(folder: Path, config: dict[str, object], user: pwd.struct_passwd | None) -> None:
    """A runtime's Jupyter configuration (its token among it: never on a command line), and
    the extension enabled in `jupyter_server_config.d`, as Jupyter extensions are."""
    enabled = folder / "jupyter_server_config.d"
    enabled.mkdir(parents=True, exist_ok=True)
    for path, body in ((folder / "jupyter_server_config.json", config),
                       (enabled / "envmgr_jupyter.json",
                        {"ServerApp": {"jpserver_extensions": {"envmgr_jupyter": True}}})):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
    labconfig.write(folder)  # JupyterLab: envmgr's front-end extension, no news prompt
    if user is not None:
        own(folder, user)
        for p in folder.rglob("*"):
            os.lchown(p, user.pw_uid, user.pw_gid)
