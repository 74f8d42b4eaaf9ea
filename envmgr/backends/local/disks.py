"""Local disks as file systems of their own: a sparse ext4 image of the disk's size (made
with e2fsprogs, costing only what is written), loop-mounted at the disk's folder.

A runtime that fills its disk gets ENOSPC in its own kernel; the data dir's file system,
and so the database and every other user, are untouched. The image is root's alone (a user
never gets to write the raw file system the kernel then mounts), mounted nosuid and nodev."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

GIB = 1 << 30


class DiskError(RuntimeError):
    pass


def _run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True)


def make_image(image: Path, size_gb: int) -> None:
    """The image, if it is not there yet (a re-driven create finds it made)."""
    if image.exists():
        return
    image.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = image.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size_gb * GIB)
    finally:
        os.close(fd)
    # No reserved blocks (the whole size is the user's); inode tables and the journal are
    # initialised lazily, so making even a large disk takes milliseconds.
    done = _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E",
                "lazy_itable_init=1,lazy_journal_init=1", str(tmp))
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise DiskError(f"cannot make the disk's file system (mkfs.ext4, e2fsprogs): "
                        f"{done.stderr.decode(errors='replace').strip()[-300:]}")
    os.replace(tmp, image)


def mount(image: Path, at: Path) -> None:
    """Mount the image at its folder unless it is mounted there already."""
    if os.path.ismount(at):
        return
    at.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "-o", "loop,nosuid,nodev", str(image), str(at))
    if done.returncode != 0:
        raise DiskError(f"cannot mount the disk: "
                        f"{done.stderr.decode(errors='replace').strip()[-300:]}")
    lost = at / "lost+found"  # not the user's: out of their home (e2fsck makes it again)
    if lost.is_dir() and not lost.is_symlink():
        with contextlib.suppress(OSError):
            lost.rmdir()


def bind(source: Path, at: Path) -> None:
    """`source` shown at `at` too (a disk or a folder at a pooled container's mount point)."""
    done = _run("mount", "--bind", str(source), str(at))
    if done.returncode != 0:
        raise DiskError(f"cannot mount {source.name}: "
                        f"{done.stderr.decode(errors='replace').strip()[-300:]}")


def _points() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1].replace("\\040", " ") for line in f]


def mounted(at: Path) -> bool:
    """Whether something is mounted at `at`: a bind mount of a folder of the same file
    system too (`os.path.ismount` compares devices, and misses those)."""
    return str(at) in _points()


def unmount(at: Path, seconds: float = 10) -> None:
    """Unmount everything stacked there (its processes are gone first; a moment's wait for
    the last of them), then detach lazily if something still holds it, so a delete always
    ends."""
    deadline = time.monotonic() + seconds
    while mounted(at):
        done = _run("umount", str(at))
        if done.returncode == 0:
            continue
        if time.monotonic() > deadline:
            if _run("umount", "-l", str(at)).returncode != 0:
                raise DiskError(f"cannot unmount the disk: "
                                f"{done.stderr.decode(errors='replace').strip()[-300:]}")
            continue
        time.sleep(0.1)


def unmount_under(root: Path) -> None:
    """Every disk mounted under `root`: for tests and benchmarks that throw a whole data dir
    away without deleting its disks (their processes are gone first)."""
    prefix = str(Path(root).resolve()) + "/"
    for point in sorted({p for p in _points() if p.startswith(prefix)}, reverse=True):
        unmount(Path(point), seconds=2)
