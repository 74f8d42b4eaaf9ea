"""What runs on a runtime is its own package: it imports nothing of the control plane (it
speaks HTTP to it), so a runtime never holds the control plane's code or settings."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RUNTIME_PACKAGE = Path(__file__).resolve().parent.parent / "extensions" / "envmgr_jupyter"


@pytest.mark.parametrize("package", ["envmgr_jupyter", "envmgr_runner"])
def test_the_runtime_packages_import_nothing_of_the_control_plane(package: str) -> None:
    """What runs on a runtime (the extension) or a job's compute (the runner)."""
    files = sorted((RUNTIME_PACKAGE.parent / package).rglob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] != "envmgr", f"{path.name} imports {name}"


PACKAGE = RUNTIME_PACKAGE.parent.parent / "envmgr"


def _imports() -> dict[str, set[str]]:
    """envmgr module -> the envmgr modules it imports (anywhere in it, TYPE_CHECKING too)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m.split(".")[0] == "envmgr"}
    return {k: {m for m in v if m in graph} for k, v in graph.items()}


def test_no_import_cycle() -> None:
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt == node or nxt.startswith(node + "."):
                continue  # a package's __init__ importing its own module is not a cycle
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt):], nxt] if nxt in trail else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_nothing_below_the_api_imports_it() -> None:
    """Routers sit on top: the service layer, backends, storage and the worker never reach
    up into `envmgr.api` (the composition root, app.py and the CLI, may)."""
    top = {"envmgr.app", "envmgr.cli", "envmgr.web.pages", "envmgr"}
    for name, deps in _imports().items():
        if name.startswith("envmgr.api") or name in top:
            continue
        up = sorted(d for d in deps if d.startswith("envmgr.api"))
        assert not up, f"{name} imports {up}"


def test_the_layout_is_a_folder_per_part() -> None:
    parts = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {"core", "auth", "runtimes", "backends", "notebooks", "jobs", "costs", "api",
            "web"} <= parts
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "app.py", "cli.py", "context.py", "settings.py"], loose


def test_async_code_never_calls_the_database_on_the_loop() -> None:
    """An `async def` reaches the database only inside a function it hands to a thread
    (asyncio.to_thread): a blocking query on the loop stalls every proxied request."""
    blocking = {"read_session", "write_session", "tx", "connect", "execute", "exec", "get"}
    found = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.AsyncFunctionDef):
                continue
            stack: list[ast.AST] = list(ast.iter_child_nodes(fn))
            while stack:
                node = stack.pop()
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                    continue  # nested: run in a thread (or checked on its own)
                if isinstance(node, ast.With):  # `async with` awaits, it does not block
                    for item in node.items:
                        call = item.context_expr
                        name = (call.func.attr if isinstance(call, ast.Call) and
                                isinstance(call.func, ast.Attribute) else
                                call.func.id if isinstance(call, ast.Call) and
                                isinstance(call.func, ast.Name) else "")
                        if name in blocking:
                            found.append(f"{path.name}:{node.lineno} {fn.name}")
                stack.extend(ast.iter_child_nodes(node))
    assert not found, found
