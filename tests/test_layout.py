"""What runs on a runtime is its own package: it imports nothing of the control plane (it
speaks HTTP to it), so a runtime never holds the control plane's code or settings."""

from __future__ import annotations

import ast
from pathlib import Path

RUNTIME_PACKAGE = Path(__file__).resolve().parent.parent / "extensions" / "envmgr_jupyter"


def test_the_runtime_package_imports_nothing_of_the_control_plane() -> None:
    files = sorted(RUNTIME_PACKAGE.rglob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] != "envmgr", f"{path.name} imports {name}"
