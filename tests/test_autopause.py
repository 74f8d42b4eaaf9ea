"""Autopause on real jupyter-server runtimes, thresholds of seconds, and a clock we can move."""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime

import httpx
import pytest

from tests.conftest import Api, Service, server_process, wait_until
from tests.test_notebooks import NB, _bucket_source, notebook

THRESHOLD_MIN = 0.08  # 4.8 s


@pytest.fixture
def fast(make_service):  # type: ignore[no-untyped-def]
    def make(**overrides):  # type: ignore[no-untyped-def]
        return make_service(autopause_interval_seconds=0.4, autopause_min_minutes=0.01,
                            autopause_probe_timeout_seconds=1, **overrides)
    return make


def _setup(svc: Service) -> Api:
    alice = svc.user("alice@example.org")
    svc.workspace("auto", alice)
    return alice


def _event(api: Api, rid: str, to: str) -> dict:
    return next(e for e in api.events(rid) if e["to"] == to)


def _at(e: dict) -> datetime:
    return datetime.fromisoformat(e["at"].replace("Z", "+00:00"))


def test_idle_runtime_pauses_after_its_threshold_not_before(fast) -> None:  # type: ignore[no-untyped-def]
    svc = fast()
    alice = _setup(svc)
    rid = alice.create_runtime("auto", autopause_minutes=THRESHOLD_MIN)["id"]
    bob = svc.user("bob@example.org")
    svc.admin.put("/api/v1/workspaces/auto/members/bob@example.org", json={"role": "writer"})
    bob_rid = bob.create_runtime("auto", autopause_minutes=0)["id"]
    running = alice.wait_status(rid, "running")
    assert running["autopause_at"] is not None
    alice.wait_status(rid, "paused", timeout=60)
    pausing = _event(alice, rid, "pausing")
    assert pausing["reason"].startswith("autopause: idle")
    assert (_at(pausing) - _at(_event(alice, rid, "running"))).total_seconds() >= \
        THRESHOLD_MIN * 60 - 1  # not before (event times have whole seconds)
    assert _event(alice, rid, "paused")["reason"] == pausing["reason"]
    # autopause 0: never paused, though it was probed-for-nothing the whole time.
    assert bob.runtime(bob_rid)["status"] == "running"
    assert bob.runtime(bob_rid)["autopause_at"] is None
    metrics = svc.admin.get("/metrics").text
    assert 'envmgr_autopause_paused_total{why="idle"}' in metrics


def test_busy_kernel_stays_up_until_the_busy_cap(fast) -> None:  # type: ignore[no-untyped-def]
    import websockets.sync.client as ws_client
    svc = fast()
    alice = _setup(svc)
    rid = alice.wait_status(alice.create_runtime("auto", autopause_minutes=THRESHOLD_MIN)["id"],
                            "running")["id"]
    proxy = httpx.Client(base_url=f"{svc.base}/proxy/{rid}", timeout=30,
                         headers={"Authorization": alice.http.headers["Authorization"]})
    kernel = proxy.post("/api/kernels", json={"name": "python3"}).json()
    ws_url = f"{svc.base.replace('http', 'ws')}/proxy/{rid}/api/kernels/{kernel['id']}/channels"
    with ws_client.connect(ws_url, additional_headers={
            "Authorization": alice.http.headers["Authorization"]}, open_timeout=30) as ws:
        ws.send(json.dumps({
            "header": {"msg_id": "sleep", "username": "a", "session": "s", "version": "5.3",
                       "msg_type": "execute_request"}, "parent_header": {}, "metadata": {},
            "channel": "shell", "content": {"code": "import time; time.sleep(600)",
                                            "silent": False, "store_history": False,
                                            "user_expressions": {}, "allow_stdin": False}}))
    wait_until(lambda: proxy.get("/api/kernels").json()[0]["execution_state"] == "busy", 30,
               what="kernel busy")
    clock = svc.app.state.autopause.clock
    # Well past its idle threshold, the silent busy kernel keeps it up, and says since when.
    clock.advance(THRESHOLD_MIN * 60 * 3)
    decisions = _sweep(svc)
    assert rid not in decisions and alice.runtime(rid)["status"] == "running"
    assert alice.runtime(rid)["busy_since"] is not None
    # (the kernel's start made it busy a moment too, which a sweep may have seen end)
    assert alice.runtime(rid)["last_activity"]["kind"] in ("cell run", "kernel busy")
    # But not past the busy cap (24 h by default).
    clock.advance(24 * 3600)
    alice.wait_status(rid, "paused", timeout=60)
    assert _event(alice, rid, "pausing")["reason"] == "autopause: busy for 24 h"


def _sweep(svc: Service) -> dict:
    """One sweep now, on the service's own event loop."""
    import asyncio
    return asyncio.run_coroutine_threadsafe(svc.app.state.autopause.sweep(),
                                            svc.app.state.loop).result(30)


def test_polls_are_not_activity_and_a_save_a_cell_and_a_terminal_are(fast) -> None:  # type: ignore[no-untyped-def]
    """What an open, untouched JupyterLab tab sends (kernels, sessions, contents, terminals,
    lab workspaces, status) leaves the clock alone; a save, a cell run and terminal input
    each reset it, and the runtime says which it was."""
    import websockets.sync.client as ws_client

    from tests.conftest import run_cell
    svc = fast()
    alice = _setup(svc)
    # a minute on a clock the test moves: seconds of real time between steps do not count
    rid = alice.wait_status(alice.create_runtime("auto", autopause_minutes=1)["id"],
                            "running")["id"]
    clock = svc.app.state.autopause.clock
    started = alice.runtime(rid)["last_activity"]
    assert started["kind"] == "started"
    clock.advance(50)  # almost idle long enough...
    for poll in ("api/kernels", "api/sessions", "api/contents", "api/terminals", "api/status",
                 "api/kernelspecs", "lab/api/workspaces", "api/me"):
        assert alice.get(f"/proxy/{rid}/{poll}").status_code == 200, poll
    assert alice.runtime(rid)["last_activity"] == started
    clock.advance(15)  # ...and the polls did not keep it up
    alice.wait_status(rid, "paused", timeout=60)
    assert _event(alice, rid, "pausing")["reason"] == "autopause: idle 1 min since started"
    alice.post(f"/api/v1/runtimes/{rid}/resume")
    alice.wait_status(rid, "running", timeout=120)

    def resets(kind: str, act) -> None:  # type: ignore[no-untyped-def]
        clock.advance(40)  # 55 s after the last activity (each step leaves 15 s)
        act()
        assert svc.ctx.activity[rid].kind == kind
        # (a sweep may have seen the kernel busy since: that is later activity still)
        assert alice.runtime(rid)["last_activity"]["kind"] in (kind, "kernel busy")
        clock.advance(15)  # past the first threshold, not past the new one
        assert rid not in _sweep(svc), kind
    resets("file saved", lambda: alice.put(f"/proxy/{rid}/api/contents/notes.txt", json={
        "type": "file", "format": "text", "content": "hello"}).raise_for_status())
    resets("cell run", lambda: run_cell(alice, rid, "print(1)"))
    term = alice.post(f"/proxy/{rid}/api/terminals").json()["name"]
    ws_url = f"{svc.base.replace('http', 'ws')}/proxy/{rid}/terminals/websocket/{term}"

    def type_in_terminal() -> None:
        with ws_client.connect(ws_url, additional_headers={
                "Authorization": alice.http.headers["Authorization"]}, open_timeout=30) as ws:
            ws.send(json.dumps(["set_size", 24, 80, 400, 400]))  # not input
            assert svc.ctx.activity[rid].kind == "cell run"
            ws.send(json.dumps(["stdin", "ls\r"]))
            wait_until(lambda: svc.ctx.activity[rid].kind == "terminal input", 10,
                       what="terminal input seen")
    resets("terminal input", type_in_terminal)
    assert alice.runtime(rid)["status"] == "running"
    clock.advance(61)
    alice.wait_status(rid, "paused", timeout=60)
    pauses = [e["reason"] for e in alice.events(rid) if e["to"] == "pausing"]
    assert len(pauses) == 2 and "autopause: idle 1 min since terminal input" in pauses


def test_open_notebook_is_saved_and_unlocked_before_autopause(fast) -> None:  # type: ignore[no-untyped-def]
    svc = fast()
    alice = _setup(svc)
    alice.put("/api/v1/workspaces/auto/notebooks/content", params={"path": NB},
              json=notebook("before"))
    opened = alice.post("/api/v1/workspaces/auto/notebooks/open",
                        json={"path": NB, "mode": "edit"}).json()
    rid = opened["runtime_id"]
    alice.patch(f"/api/v1/runtimes/{rid}", json={"autopause_minutes": THRESHOLD_MIN})
    disk = svc.settings.data_dir / "local" / "disks" / alice.runtime(rid)["disk_id"]
    (disk / "auto" / "edit" / NB).write_text(json.dumps(notebook("edited, never saved")))
    alice.wait_status(rid, "paused", timeout=60)
    assert _bucket_source(alice, "auto") == "edited, never saved"
    listed = alice.get("/api/v1/workspaces/auto/notebooks").json()
    assert listed[0]["lock"] is None


def test_unreachable_server_pauses_only_after_the_threshold(fast) -> None:  # type: ignore[no-untyped-def]
    svc = fast()
    alice = _setup(svc)
    rid = alice.wait_status(alice.create_runtime("auto", autopause_minutes=THRESHOLD_MIN)["id"],
                            "running")["id"]
    # Keep it active, then freeze the server: probes time out from here on.
    pid = server_process(svc.settings.data_dir, rid).pid
    assert alice.get(f"/proxy/{rid}/api/contents").status_code == 200
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped_at = datetime.now().astimezone()
        alice.wait_status(rid, "pausing", "paused", timeout=90)
        pausing = _event(alice, rid, "pausing")
        assert pausing["reason"].startswith("autopause: unreachable"), pausing
        assert (_at(pausing) - stopped_at).total_seconds() >= THRESHOLD_MIN * 60 - 1
    finally:
        os.kill(pid, signal.SIGCONT)
    alice.wait_status(rid, "paused", timeout=90)


def _gauge(api: Api, name: str) -> float:
    for line in api.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_one_replica_sweeps_and_another_takes_over(service_process, postgres) -> None:  # type: ignore[no-untyped-def]
    url = postgres.create_database()
    env = {"ENVMGR_AUTOPAUSE_INTERVAL_SECONDS": "0.3", "ENVMGR_AUTOPAUSE_MIN_MINUTES": "0.01"}
    first, second = service_process(url, **env), service_process(url, **env)
    first.start()
    second.start()
    apis = [first.api(), second.api()]
    wait_until(lambda: sum(_gauge(a, "envmgr_autopause_leader") for a in apis) == 1 and
               all(_gauge(a, "envmgr_autopause_sweeps_total") +
                   _gauge(a, "envmgr_autopause_skipped_total") > 2 for a in apis),
               30, interval=0.2, what="one leader among two replicas")
    leader, follower = (first, second) if _gauge(apis[0], "envmgr_autopause_leader") == 1 \
        else (second, first)
    assert _gauge(follower.api(), "envmgr_autopause_sweeps_total") == 0
    leader.kill()
    api = follower.api()
    wait_until(lambda: _gauge(api, "envmgr_autopause_leader") == 1, 30, interval=0.2,
               what="the follower takes over")
    api.post("/api/v1/workspaces", json={"name": "ha-test"})
    rid = api.create_runtime("ha-test", autopause_minutes=0.05)["id"]
    api.wait_status(rid, "paused", timeout=90)
    assert next(e for e in api.events(rid) if e["to"] == "pausing")["reason"].startswith(
        "autopause: idle")
