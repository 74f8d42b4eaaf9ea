"""What a remote runtime installs: exactly this control plane's runtime code, hash-checked.

The control plane serves (unauthenticated: there is no secret in it) a wheel of its own
runtime packages, `envmgr_jupyter` and `envmgr_runner` as installed here, built
deterministically (fixed timestamps, sorted entries), so its hash depends only on the
code, and a requirements file: `requirements.txt` in this folder (every dependency pinned
with its hashes, from `requirements.in` by pip-compile) plus a line for that wheel with its
hash. A VM is told the file's URL and SHA-256 in its metadata, checks it, and installs with
`pip --require-hashes`: no name on a public index can stand in for envmgr's code (PyPI's
`envmgr` is an unrelated project), and no file that differs by a byte installs."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from dataclasses import dataclass
from functools import cache
from importlib import import_module
from pathlib import Path

from envmgr import __version__

HERE = Path(__file__).resolve().parent
DIST = "envmgr_runtime"
PACKAGES = ("envmgr_jupyter", "envmgr_runner")
STAMP = (2020, 1, 1, 0, 0, 0)  # every entry's time: the same code, the same bytes
ROUTE = "/runtime-package"


@dataclass(frozen=True)
class RuntimePackage:
    wheel_name: str
    wheel: bytes
    wheel_sha256: str

    def requirements(self, base_url: str) -> str:
        """The pinned requirements, and this wheel as a hash-checked URL requirement."""
        pinned = (HERE / "requirements.txt").read_text()
        return (f"{pinned.rstrip()}\n{DIST.replace('_', '-')} @ "
                f"{base_url.rstrip('/')}{ROUTE}/{self.wheel_name} \\\n"
                f"    --hash=sha256:{self.wheel_sha256}\n")

    def requirements_sha256(self, base_url: str) -> str:
        return hashlib.sha256(self.requirements(base_url).encode()).hexdigest()


def _files() -> list[tuple[str, bytes]]:
    out = []
    for name in PACKAGES:
        root = Path(import_module(name).__file__ or "").resolve().parent
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root.parent).as_posix()
            if path.is_file() and "__pycache__" not in rel and not rel.endswith(".pyc"):
                out.append((rel, path.read_bytes()))
    return out


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


@cache
def build() -> RuntimePackage:
    """The wheel, once per process (the installed code does not change under it)."""
    info = f"{DIST}-{__version__}.dist-info"
    meta = {
        f"{info}/METADATA": (f"Metadata-Version: 2.1\nName: {DIST.replace('_', '-')}\n"
                             f"Version: {__version__}\nSummary: envmgr's runtime side (the "
                             "Jupyter extension and the job runner)\n").encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: envmgr\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
        f"{info}/top_level.txt": "\n".join(PACKAGES).encode() + b"\n",
    }
    entries = [*_files(), *sorted(meta.items())]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries)
    record += f"{info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in [*entries, (f"{info}/RECORD", record.encode())]:
            entry = zipfile.ZipInfo(name, STAMP)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            zf.writestr(entry, data)
    wheel = buf.getvalue()
    return RuntimePackage(f"{DIST}-{__version__}-py3-none-any.whl", wheel,
                          hashlib.sha256(wheel).hexdigest())
