"""JupyterLab's static files, served once by the control plane on each runtime's origin
instead of through every runtime's Jupyter server.

Only content-hashed names are served (`main.efd36b46f3b45eb8.js`, `remoteEntry.<hash>.js`,
`<hash>.woff`): a name then means one content, whatever JupyterLab version a runtime runs,
so they are `immutable` and a file this control plane does not have (another version, an
extension the user installed) goes to the runtime as before. Everything else (the page,
settings, `style.js`, anything unhashed) always comes from the runtime."""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from pathlib import Path

IMMUTABLE = "public, max-age=31536000, immutable"
# A hex content hash of 16+ characters as the whole stem or its last dotted part.
_HASHED = re.compile(r"^(?:[A-Za-z0-9_-]+\.)?[0-9a-f]{16,64}\.[A-Za-z0-9]{1,8}$")


@lru_cache(maxsize=1)
def _roots() -> dict[str, list[Path]]:
    """URL prefix under a runtime's base path → the folders it is served from here: the
    same trees the runtime image is made of (JupyterLab's build and the federated
    extensions of this environment, the envmgr extension included)."""
    share = Path(sys.prefix) / "share" / "jupyter"
    extensions = [share / "labextensions"]
    try:
        import envmgr_jupyter
        extensions.insert(0, Path(envmgr_jupyter.__file__).parent / "labextension")
    except ImportError:  # a control plane without the runtime package serves JupyterLab's
        pass
    return {"static/lab/": [share / "lab" / "static"], "lab/extensions/": extensions}


@lru_cache(maxsize=4096)
def find(rest: str) -> Path | None:
    """The file for a path under a runtime's base path (`static/lab/main.<hash>.js`), or
    None when the runtime must answer. Never outside the roots (no `..`, no symlink out)."""
    for prefix, folders in _roots().items():
        if not rest.startswith(prefix):
            continue
        relative = rest.removeprefix(prefix)
        parts = relative.split("/")
        if not _HASHED.match(parts[-1]) or any(p in ("", ".", "..") for p in parts):
            return None
        if prefix == "lab/extensions/" and "static" not in parts[:-1]:
            return None  # an extension's package.json, schemas...: the runtime's
        for folder in folders:
            try:
                path = (folder / relative).resolve()
                if path.is_file() and path.is_relative_to(folder.resolve()):
                    return path
            except (OSError, ValueError):  # a NUL byte, a name too long: not a file here
                return None
    return None

