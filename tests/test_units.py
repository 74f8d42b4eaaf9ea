"""The fast layer: rules checked without processes, servers or a database (seconds)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from envmgr.api.proxy import forward_cookies
from envmgr.api.runtime_origin import _safe_next
from envmgr.auth.signing import Signer
from envmgr.notebooks.rules import BadPath, clean_path, path_conflict, read_lock
from envmgr.notebooks.storage.local import LocalStorage
from envmgr.runtimes.machine import InvalidTransition, check

PACKAGE = Path(__file__).resolve().parent.parent / "envmgr"
RID = "rt-1m896qe803tk3rvntgvjj"


def test_state_machine_repeats_are_no_ops_and_the_rest_is_refused() -> None:
    assert check("pause", "running") is True
    assert check("pause", "pausing") is False  # a repeat under way
    with pytest.raises(InvalidTransition) as exc:
        check("resume", "running")
    assert exc.value.allowed_from == ["error", "paused"]
    assert check("update", "running", allow_restart=True) is True
    with pytest.raises(InvalidTransition):
        check("update", "running")


def test_derived_runtime_credentials() -> None:
    a, b = Signer("key-a"), Signer("key-b")
    token = a.runtime_token(RID)
    assert a.check_runtime_token(token) == RID
    for bad in (b.runtime_token(RID), token[:-1] + "0", f"{RID}.", RID, "", "."):
        assert a.check_runtime_token(bad) is None, bad
    other = "rt-0000000000000000000000"
    assert a.check_runtime_token(a.runtime_token(other)) == other
    assert a.jupyter_token(RID) != a.jupyter_token(other) != b.jupyter_token(other)
    assert a.jupyter_token(RID) not in token  # one does not give the other


def test_tickets_name_their_runtime_and_are_signed() -> None:
    s = Signer("k")
    t = s.ticket("u-1", RID)
    got = s.check_ticket(t, RID)
    assert got is not None and got[0] == "u-1" and got[1]
    assert s.ticket("u-1", RID) != t  # a fresh nonce each time
    assert s.check_ticket(t, "rt-0000000000000000000000") is None
    assert Signer("other").check_ticket(t, RID) is None
    assert s.check_cookie(s.cookie("u-1", RID), RID) == "u-1"
    assert s.check_cookie(t, RID) is None  # a ticket is not a cookie


def test_next_after_a_runtime_sign_in_stays_on_that_runtime() -> None:
    own = f"/proxy/{RID}/lab/tree/a.ipynb"
    assert _safe_next(RID, own) == own
    for bad in ("https://evil.example/", "//evil.example", "/proxy/rt-0000000000000000000000/x",
                f"/proxy/{RID}", "/\\evil", None, 3, f"/proxy/{RID}/\nx", "//[x",
                "http://[bad]/"):
        assert _safe_next(RID, bad) == f"/proxy/{RID}/lab", bad


def test_the_service_cookies_never_reach_a_runtime() -> None:
    assert forward_cookies("envmgr_session=a; envmgr_runtime=b; _xsrf=c; x=1") == "_xsrf=c; x=1"
    assert forward_cookies("envmgr_session=a") is None
    assert forward_cookies(None) is None


def test_notebook_paths() -> None:
    assert clean_path("a/b.ipynb") == "a/b.ipynb"
    for bad in ("", "/a.ipynb", "a/../b.ipynb", "a//b.ipynb", "a.txt", "a\\b.ipynb",
                "a\nb.ipynb", "x" * 256 + ".ipynb", "\ud800.ipynb"):
        with pytest.raises(BadPath):
            clean_path(bad)


def test_flat_local_buckets_never_collide_and_conflicts_are_found(tmp_path: Path) -> None:
    st = LocalStorage(tmp_path)
    st.ensure_bucket("b")
    for name in ("notebooks/p.ipynb", "notebooks/p.ipynb/q.ipynb", "locks/a.ipynb.json",
                 "locks/a.ipynb.json/b.ipynb.json"):
        st.write("b", name, b"{}")
    assert [o.name for o in st.list("b", "notebooks/")] == ["notebooks/p.ipynb",
                                                            "notebooks/p.ipynb/q.ipynb"]
    assert path_conflict(st, "b", "p.ipynb/r.ipynb") == "p.ipynb"
    assert path_conflict(st, "b", "p.ipynb") == "p.ipynb/q.ipynb"
    assert path_conflict(st, "b", "z.ipynb") is None
    st.write("b", "locks/x.ipynb.json", b"not json")
    lock = read_lock(st, "b", "x.ipynb")
    assert lock is not None and lock.holder is None  # unreadable: a free lock, replaceable


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m == "envmgr" or m.startswith("envmgr.")}


def test_backends_never_import_the_worker_or_the_api() -> None:
    for path in (PACKAGE / "backends").rglob("*.py"):
        bad = {m for m in _imports(path) if m.startswith(("envmgr.runtimes.worker", "envmgr.api"))}
        assert not bad, f"{path.name} imports {bad}"


def test_allowed_actions_come_from_the_one_table() -> None:
    from envmgr.core.statuses import RuntimeStatus
    from envmgr.runtimes.machine import allowed_actions
    assert allowed_actions(RuntimeStatus.running) == ["pause", "update", "delete"]
    assert allowed_actions("paused") == ["resume", "update", "delete"]
    assert allowed_actions("error") == ["resume", "delete"]
    assert allowed_actions("pausing") == []
    assert allowed_actions("deleted") == []


def test_statuses_are_enums_in_the_openapi_document() -> None:
    from envmgr.app import create_app
    from envmgr.settings import Settings
    spec = create_app(Settings(data_dir="/nonexistent-envmgr-test")).openapi()
    schemas = spec["components"]["schemas"]
    assert set(schemas["RuntimeStatus"]["enum"]) == {
        "creating", "running", "pausing", "paused", "resuming", "updating", "deleting",
        "deleted", "error"}
    assert set(schemas["DiskStatus"]["enum"]) == {"creating", "ready", "deleting", "deleted",
                                                  "failed"}
    assert schemas["RuntimeOut"]["properties"]["actions"]["items"]["$ref"].endswith("/Action")


def test_access_rules_by_role() -> None:
    """Who may do what to a runtime (api.md's roles), as the API and its `actions` say."""
    from envmgr.auth.access import refusal
    from envmgr.core.models import User
    owner_of_rt = User(id="u-1", email="a@example.org")
    other = User(id="u-2", email="b@example.org")
    admin = User(id="u-3", email="c@example.org", admin=True)
    for action in ("pause", "resume", "update", "delete"):
        assert refusal(owner_of_rt, "u-1", "writer", action) is None
        assert refusal(admin, "u-1", None, action) is None
    # A workspace owner may stop and delete a member's runtime, never run code on it.
    assert refusal(other, "u-1", "owner", "pause") is None
    assert refusal(other, "u-1", "owner", "delete") is None
    assert "owner may resume" in (refusal(other, "u-1", "owner", "resume") or "")
    assert refusal(other, "u-1", "writer", "pause") is not None
    # The owner demoted to reader keeps their runtime but may not start it again.
    assert "writer role" in (refusal(owner_of_rt, "u-1", "reader", "resume") or "")
    assert refusal(owner_of_rt, "u-1", "reader", "pause") is None


def test_a_proxied_request_is_logged_once_and_never_with_its_url() -> None:
    """httpx's own INFO line per request (the second log line of every proxied request,
    with its query string) is off; its warnings stay."""
    import logging

    import httpx

    from envmgr.core.logs import setup_logging
    setup_logging("INFO", json_lines=False)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200))) \
            .get("http://runtime.invalid/api/kernels?token=secret")
        logging.getLogger("envmgr.test").info("a line of ours")
    finally:
        logging.getLogger().removeHandler(handler)
    assert seen == ["a line of ours"]
    assert logging.getLogger("httpx").isEnabledFor(logging.WARNING)


def test_a_runtimes_odd_answers_never_break_the_autopause_probe() -> None:
    """A runtime runs its user's code: whatever it answers on Jupyter's port (an object, a
    text, kernels that are not objects, states that are not strings) is "no answer" or not
    busy, never an exception that would end a sweep over every runtime."""
    import asyncio

    from envmgr.runtimes.autopause import probe

    def answering(status: int, kernels: object):  # type: ignore[no-untyped-def]
        async def get(url: str, params: dict[str, str], headers: dict[str, str]):  # type: ignore[no-untyped-def]
            assert url == "http://rt/api/kernels" and params == {"no_track_activity": "1"}
            return status, kernels
        return get

    for kernels in ({"a": 1}, "text", [1, "x"], None, 7):
        got = asyncio.run(probe(answering(200, kernels), "http://rt", "secret"))
        assert not got.ok and not got.busy, kernels
    assert not asyncio.run(probe(answering(500, []), "http://rt", "s")).ok
    for kernels, busy in (([], False), ([{"execution_state": {"x": 1}}], False),
                          ([{"execution_state": "idle"}, {"execution_state": "busy"}], True),
                          ([{"execution_state": "starting"}], True)):
        got = asyncio.run(probe(answering(200, kernels), "http://rt", "secret"))
        assert got.ok and got.busy == busy, kernels


def test_lab_assets_serve_only_hashed_files_inside_their_trees() -> None:
    import sys
    from pathlib import Path

    from envmgr.web import lab_assets
    static = Path(sys.prefix) / "share/jupyter/lab/static"
    main = next(static.glob("main.*.js")).name
    font = next(p.name for p in static.glob("*.woff*"))
    assert lab_assets.find(f"static/lab/{main}") == (static / main).resolve()
    assert lab_assets.find(f"static/lab/{font}") is not None
    for rest in ("static/lab/bootstrap.js", "static/lab/index.html", "static/lab/",
                 f"static/lab/../lab/static/{main}", f"static/lab//{main}",
                 f"static/lab/./{main}", f"lab/extensions/{main}", f"static/{main}",
                 "lab/extensions/envmgr-lab/package.json", "static/lab/main.0123456789abcdef.js",
                 f"lab/extensions/a\x00b/static/{main}",
                 f"lab/extensions/{'x' * 5000}/static/{main}"):
        assert lab_assets.find(rest) is None, rest



def test_a_child_that_ended_is_reported_with_its_exit_code_whoever_asks_first(
        tmp_path: Path) -> None:
    # The reconciler, the worker and status calls ask from threads of their own; one of
    # them reaping the child while another asked once made the other record "exit status
    # unknown" (Popen.poll answers None while a waitpid is under way elsewhere).
    import json
    import threading

    import psutil

    from envmgr.backends.local.backend import LocalBackend
    from envmgr.settings import Settings

    backend = LocalBackend(Settings(data_dir=tmp_path, local_sandbox=False,
                                    database_url=f"sqlite:///{tmp_path}/db.sqlite"))
    for n in range(20):
        rid = f"rt-{n}"
        rt = backend._rt(rid)
        rt.mkdir(parents=True)
        pid = backend._popen(["/bin/sh", "-c", "exit 3"], {}, tmp_path, None,
                             rt / "jupyter.log")
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:  # already reaped by its parent: nothing to race
            continue
        backend._write(rt / "pid.json", {"pid": pid, "create_time": created})

        def ask(rid: str = rid) -> None:
            while backend._live(rid) is not None:
                pass

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert json.loads((rt / "exit.json").read_text())["code"] == 3
        assert "exited with code 3" in backend._exit_detail(rid)
