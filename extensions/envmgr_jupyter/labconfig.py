"""JupyterLab's configuration on a runtime, written beside the server's own by each backend
(`python -m envmgr_jupyter.labconfig <config dir>` on a VM): JupyterLab finds envmgr's
front-end extension (built, shipped in this package: no Node on a runtime), asks nobody
about news, never runs its build check (no Node here to build with, and it cost a
CPU-second of the server on every page load), and leaves a lost connection to envmgr's
extension (which says why the runtime went away and offers Resume) instead of its own
"Server Connection Error" dialog. Its kernels come from envmgr's kernel manager (one spare
kernel booted ahead of the next open: `envmgr_jupyter.kernels`)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

# Runs in the runtime's interpreter, so the path is where *it* has this package.
CONFIG_PY = """\
import os, envmgr_jupyter
c.LabApp.extra_labextensions_path = [
    os.path.join(os.path.dirname(envmgr_jupyter.__file__), "labextension")]
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
c.ServerApp.kernel_manager_class = "envmgr_jupyter.kernels.SpareKernelManager"
c.ServerApp.identity_provider_class = "envmgr_jupyter.identity.ProxiedIdentityProvider"
if os.environ.get("ENVMGR_KERNEL_IPC_DIR"):  # sandboxed: kernels' channels are no ports
    c.MultiKernelManager.kernel_manager_class = "envmgr_jupyter.kernels.IpcKernelManager"
"""
PAGE_CONFIG = {"buildCheck": False, "buildAvailable": False, "disabledExtensions": {
    "@jupyterlab/apputils-extension:announcements": True,
    "@jupyterlab/hub-extension:connectionlost": True,
}}


def files() -> dict[str, str]:
    """Relative path in a Jupyter config dir -> content."""
    return {"jupyter_server_config.py": CONFIG_PY,
            "labconfig/page_config.json": json.dumps(PAGE_CONFIG)}


def write_folder(folder: Path, server_config: dict[str, Any], gid: int | None) -> None:
    """A runtime's whole Jupyter config folder (the server's config with its tokens, the
    extension enabled, JupyterLab's), made anew at every start by root (the local backend;
    a VM's startup script). Root never writes through a path the runtime's user controls:
    the folder is removed first (never following a link inside) and made root's, readable
    by the user's group only (`gid`), so the user can neither read another's nor replace
    anything of it with a link. What Jupyter writes itself (JupyterLab's settings and
    workspaces) goes to the user's disk, named in `server_config`."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    (folder / "jupyter_server_config.d").mkdir(mode=0o700)
    enable = {"ServerApp": {"jpserver_extensions": {"envmgr_jupyter": True}}}
    # jupyter_core "migrates" IPython's old config into this folder once HOME has an
    # ~/.ipython (any kernel makes one): marked done, so it writes nothing here.
    for rel, text in {"jupyter_server_config.json": json.dumps(server_config),
                      "jupyter_server_config.d/envmgr_jupyter.json": json.dumps(enable),
                      "migrated": "", **files()}.items():
        path = folder / rel
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    if gid is not None:
        for p in (folder, *folder.rglob("*")):
            os.lchown(p, 0, gid)
            p.chmod(0o750 if p.is_dir() else 0o640)


def write(folder: Path) -> None:
    for rel, text in files().items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)


if __name__ == "__main__":
    write(Path(sys.argv[1]))
