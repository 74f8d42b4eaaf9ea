"""Reading what a job's runner wrote, as root: a notebook could have put a link (or a hard
link) to any file of the machine in place of an output, so a file is opened without
following links and must be a regular file of the job's user with one name."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def open_own(path: Path, uid: int) -> int | None:
    """A read-only descriptor of `path` if it is a regular file of `uid`, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_nlink != 1:
        os.close(fd)
        return None
    return fd
