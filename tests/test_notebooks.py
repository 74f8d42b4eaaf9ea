"""Notebooks end to end: bucket content API, open in edit / playground / readonly, saves that
reach the bucket (or a conflict copy), locks, flush on pause, lock expiry, and the proxy."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import nbformat
import pytest

from tests.conftest import Api, RuntimeOrigin, Service, fails, run_cell, server_process, wait_until

NB = "analysis/model.ipynb"


def notebook(source: str) -> dict[str, Any]:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell(source, id="cell-1"))  # same input, same bytes
    return json.loads(nbformat.writes(nb))


def _jupyter(api: Api, rid: str) -> httpx.Client:
    return httpx.Client(base_url=f"{api.http.base_url}/proxy/{rid}", timeout=60,
                        headers={"Authorization": api.http.headers["Authorization"]})


def _save(api: Api, rid: str, local: str, source: str) -> dict[str, Any]:
    with _jupyter(api, rid) as jp:
        r = jp.put(f"/api/contents/{local}", json={"type": "notebook", "format": "json",
                                                   "content": notebook(source)})
    assert r.status_code == 200, r.text
    return r.json()


def source(nb: dict[str, Any]) -> str:
    src = nb["cells"][0]["source"]
    return "".join(src) if isinstance(src, list) else src


def _bucket_source(api: Api, ws: str, path: str = NB) -> str:
    r = api.get(f"/api/v1/workspaces/{ws}/notebooks/content", params={"path": path})
    assert r.status_code == 200, r.text
    return source(r.json())


@pytest.fixture
def team(make_service):  # type: ignore[no-untyped-def]
    svc: Service = make_service(lock_ttl_seconds=180, lock_renew_seconds=60)
    alice = svc.user("alice@example.org")
    bob = svc.user("bob@example.org")
    rita = svc.user("rita@example.org")
    svc.workspace("nbs", alice, **{"bob@example.org": "writer", "rita@example.org": "reader"})
    r = alice.put("/api/v1/workspaces/nbs/notebooks/content", params={"path": NB},
                  json=notebook("x = 1"))
    assert r.status_code == 201 and r.json()["path"] == NB
    return svc, alice, bob, rita


def test_content_api_and_bad_input(team) -> None:  # type: ignore[no-untyped-def]
    svc, alice, _bob, rita = team
    url = "/api/v1/workspaces/nbs/notebooks/content"
    got = alice.get(url, params={"path": NB})
    gen = got.headers["etag"]
    assert source(got.json()) == "x = 1"
    fails(alice.put(url, params={"path": NB}, json=notebook("y"), headers={"If-Match": "1"}),
         412, "generation_mismatch")
    r = alice.put(url, params={"path": NB}, json=notebook("x = 2  # preview-marker"),
                  headers={"If-Match": gen})
    assert r.status_code == 200 and r.json()["generation"] != int(gen)
    fails(alice.put(url, params={"path": "bad.ipynb"}, content=b"{not json"), 422,
         "validation_error")
    fails(alice.put(url, params={"path": "bad.ipynb"}, json={"cells": "nope"}), 422,
         "validation_error")
    fails(rita.put(url, params={"path": "r.ipynb"}, json=notebook("r")), 403, "forbidden")
    stranger = svc.user("stranger@example.org")
    fails(stranger.get(url, params={"path": NB}), 404, "not_found")
    fails(stranger.get("/api/v1/workspaces/nbs/notebooks"), 404, "not_found")
    # No path escapes the workspace, on any endpoint.
    for bad in ("../x.ipynb", "/etc/passwd.ipynb", "a/../../x.ipynb", "a\x00.ipynb"):
        for call in (lambda p: alice.get(url, params={"path": p}),
                     lambda p: alice.put(url, params={"path": p}, json=notebook("z")),
                     lambda p: alice.delete(url, params={"path": p}),
                     lambda p: alice.get("/api/v1/workspaces/nbs/notebooks/preview",
                                         params={"path": p}),
                     lambda p: alice.post("/api/v1/workspaces/nbs/notebooks/open",
                                          json={"path": p, "mode": "edit"})):
            fails(call(bad), 422, "validation_error")
    assert not (svc.settings.data_dir / "etc").exists()
    open_url = "/api/v1/workspaces/nbs/notebooks/open"
    fails(alice.post(open_url, json={"path": "data.csv", "mode": "edit"}), 422, "validation_error")
    fails(alice.post(open_url, json={"path": "missing.ipynb", "mode": "edit"}), 404, "not_found")
    fails(alice.post(open_url, json={"path": NB, "mode": "write"}), 422, "validation_error")
    fails(rita.post(open_url, json={"path": NB, "mode": "edit"}), 403, "forbidden")
    fails(rita.post(open_url, json={"path": NB, "mode": "playground"}), 403, "forbidden")
    fails(stranger.post(open_url, json={"path": NB, "mode": "readonly"}), 404, "not_found")
    # Read-only needs no runtime, and readers may use it.
    r = rita.post(open_url, json={"path": NB, "mode": "readonly"})
    assert r.status_code == 200 and r.json()["runtime_id"] is None
    html = rita.get("/api/v1/workspaces/nbs/notebooks/preview", params={"path": NB})
    assert html.status_code == 200 and "preview-marker" in html.text
    assert html.headers["content-type"].startswith("text/html")
    assert rita.get("/api/v1/runtimes").json()["items"] == []
    assert [n["path"] for n in rita.get("/api/v1/workspaces/nbs/notebooks").json()] == [NB]


def test_edit_playground_locks_conflicts_and_flush(team) -> None:  # type: ignore[no-untyped-def]
    svc, alice, bob, _ = team
    open_url = "/api/v1/workspaces/nbs/notebooks/open"
    r = alice.post(open_url, json={"path": NB, "mode": "edit"})
    assert r.status_code == 200, r.text
    opened = r.json()
    rid = opened["runtime_id"]
    assert opened["lock"]["holder"] == "alice@example.org"
    assert f"/_envmgr/login?next=/proxy/{rid}/lab/tree/nbs/edit/{NB}#" in opened["url"]
    listed = alice.get("/api/v1/workspaces/nbs/notebooks").json()
    assert listed[0]["lock"]["holder"] == "alice@example.org"

    # Bob is told who edits; he can play, and his playground never reaches the bucket.
    e = fails(bob.post(open_url, json={"path": NB, "mode": "edit"}), 409, "locked")
    assert e["details"]["holder"] == "alice@example.org" and e["details"]["expires_at"]
    fails(bob.delete("/api/v1/workspaces/nbs/notebooks/content", params={"path": NB}), 409,
         "locked")
    r = bob.post(open_url, json={"path": NB, "mode": "playground"})
    assert r.status_code == 200 and r.json()["lock"] is None
    bob_rid = r.json()["runtime_id"]
    assert "envmgr_sync" not in _save(bob, bob_rid, f"nbs/playground/{NB}", "bob plays")
    assert _bucket_source(alice, "nbs") == "x = 1"

    # Alice's saves land in the bucket.
    saved = _save(alice, rid, f"nbs/edit/{NB}", "x = 42")
    assert saved["envmgr_sync"]["status"] == "saved"
    assert _bucket_source(alice, "nbs") == "x = 42"
    again = _save(alice, rid, f"nbs/edit/{NB}", "x = 42")
    assert again["envmgr_sync"]["status"] == "unchanged"

    # Someone replaces the notebook in the bucket: Alice's next save must not overwrite it.
    assert svc.admin.put("/api/v1/workspaces/nbs/notebooks/content", params={"path": NB},
                         json=notebook("admin's")).status_code == 200
    clash = _save(alice, rid, f"nbs/edit/{NB}", "alice's late edit")["envmgr_sync"]
    assert clash["status"] == "conflict" and "conflict alice@example.org" in clash["conflict_path"]
    assert _bucket_source(alice, "nbs") == "admin's"
    assert _bucket_source(alice, "nbs", clash["conflict_path"]) == "alice's late edit"
    with _jupyter(alice, rid) as jp:
        status = jp.get("/envmgr/status", params={"workspace": "nbs", "path": NB}).json()
        assert status["status"] == "remote_changed"
        local = jp.get(f"/api/contents/nbs/edit/{NB}").json()["content"]
    assert source(local) == "alice's late edit"  # never reverted

    # Re-open: the current version comes down; then a change written straight to the disk
    # (as a kernel would) is uploaded by the flush that comes before a pause.
    assert alice.post(open_url, json={"path": NB, "mode": "edit"}).status_code == 200
    disk = svc.settings.data_dir / "local" / "disks" / alice.runtime(rid)["disk_id"]
    nbfile = disk / "nbs" / "edit" / NB
    assert source(json.loads(nbfile.read_text())) == "admin's"
    nbfile.write_text(json.dumps(notebook("written by a kernel")))
    assert alice.post(f"/api/v1/runtimes/{rid}/pause").status_code == 202
    alice.wait_status(rid, "paused")
    assert _bucket_source(alice, "nbs") == "written by a kernel"
    assert alice.get("/api/v1/workspaces/nbs/notebooks").json()[0]["lock"] is None
    r = bob.post(open_url, json={"path": NB, "mode": "edit"})
    assert r.status_code == 200 and r.json()["lock"]["holder"] == "bob@example.org"


OPEN = "/api/v1/workspaces/nbs/notebooks/open"


def _two_writers(make_service, source: str, **settings):  # type: ignore[no-untyped-def]
    """A service, Alice (owner) and Bob (writer) in workspace nbs, one notebook in it."""
    svc: Service = make_service(**settings)
    alice = svc.user("alice@example.org")
    bob = svc.user("bob@example.org")
    svc.workspace("nbs", alice, **{"bob@example.org": "writer"})
    alice.put("/api/v1/workspaces/nbs/notebooks/content", params={"path": NB},
              json=notebook(source))
    return svc, alice, bob


@contextlib.contextmanager
def tab_open(api: Api, rid: str, *local_paths: str, every: float = 0.3) -> Iterator[None]:
    """What envmgr's JupyterLab extension does while a tab has these notebooks open: say so
    to the runtime, every `every` seconds (any Jupyter client may do the same)."""
    stop = threading.Event()
    tab = uuid.uuid4().hex

    def beat() -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                api.post(f"/proxy/{rid}/envmgr/presence",
                         json={"tab": tab, "open": list(local_paths), "idle_seconds": 0})
            stop.wait(every)
    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def test_lock_expires_when_the_holders_runtime_dies(make_service) -> None:  # type: ignore[no-untyped-def]
    svc, alice, bob = _two_writers(make_service, "x", lock_ttl_seconds=3, lock_renew_seconds=1)
    open_url = OPEN
    rid = alice.post(open_url, json={"path": NB, "mode": "edit"}).json()["runtime_id"]
    pid = server_process(svc.settings.data_dir, rid).pid
    # While alive and a tab says it has the notebook open, renewals keep the lock past its
    # 3 s TTL.
    first = alice.get("/api/v1/workspaces/nbs/notebooks").json()[0]["lock"]["expires_at"]
    with tab_open(alice, rid, f"nbs/edit/{NB}"):
        wait_until(lambda: alice.get("/api/v1/workspaces/nbs/notebooks").json()[0]["lock"]
                   ["expires_at"] != first, 10, what="lock renewed")
        assert bob.post(open_url, json={"path": NB, "mode": "edit"}).status_code == 409
        os.kill(pid, signal.SIGKILL)
    r = wait_until(lambda: (x := bob.post(open_url, json={"path": NB, "mode": "edit"}))
                   .status_code == 200 and x, 60, interval=0.5, what="bob gets the lock")
    assert r.json()["lock"]["holder"] == "bob@example.org"


def _lock(api: Api) -> dict | None:
    return api.get("/api/v1/workspaces/nbs/notebooks").json()[0]["lock"]


def test_a_lock_lasts_as_long_as_a_live_tab_of_its_holder(make_service) -> None:  # type: ignore[no-untyped-def]
    """Renewed from the tab's heartbeats, not by the server: when they stop (a tab closed
    or crashed) the notebook is saved and the lock let go within three renew periods; a
    tab that says it closes lets it go at once; a tab idle past the limit lets it go, and
    takes it again when its user comes back."""
    renew = 1.0
    svc, alice, bob = _two_writers(make_service, "x", lock_ttl_seconds=3 * renew,
                                   lock_renew_seconds=renew, lock_idle_minutes=0.05)
    rid = alice.post(OPEN, json={"path": NB, "mode": "edit"}).json()["runtime_id"]
    local = f"nbs/edit/{NB}"
    disk = svc.settings.data_dir / "local" / "disks" / alice.runtime(rid)["disk_id"]
    with tab_open(alice, rid, local):
        first = _lock(alice)["expires_at"]  # type: ignore[index]
        wait_until(lambda: _lock(alice)["expires_at"] != first, 10,  # type: ignore[index]
                   what="lock renewed from the tab")
        # saved on the runtime's disk, never sent (as a file written by a kernel)
        (disk / local).write_text(json.dumps(notebook("last words")))
    gone = time.monotonic()
    wait_until(lambda: _lock(alice) is None, 30, interval=0.1, what="lock let go")
    took = time.monotonic() - gone
    assert took <= 3 * renew + 1.5, took  # three renew periods, and a request's time
    assert _bucket_source(alice, "nbs") == "last words"  # saved before it was let go
    assert bob.post(OPEN, json={"path": NB, "mode": "edit"}).status_code == 200
    # Bob's lock now: Alice's tab coming back finds it taken and says so.
    said = alice.post(f"/proxy/{rid}/envmgr/presence",
                      json={"tab": "t2", "open": [local], "idle_seconds": 0})
    assert said.status_code == 200 and said.json()["renew_seconds"] == renew
    info = alice.get(f"/proxy/{rid}/envmgr/info", params={"path": local}).json()
    assert info["lock"]["lost"] is True


def test_a_closing_tab_and_an_idle_one_let_the_lock_go(make_service) -> None:  # type: ignore[no-untyped-def]
    svc, alice, _ = _two_writers(make_service, "x", lock_ttl_seconds=3, lock_renew_seconds=1,
                                 lock_idle_minutes=0.05)
    rid = alice.post(OPEN, json={"path": NB, "mode": "edit"}).json()["runtime_id"]
    local = f"nbs/edit/{NB}"

    def say(**body: Any) -> None:
        r = alice.post(f"/proxy/{rid}/envmgr/presence", json={"tab": "t1", **body})
        assert r.status_code == 200, r.text
    say(open=[local], idle_seconds=0)
    assert _lock(alice)["holder"] == "alice@example.org"  # type: ignore[index]
    say(open=[], idle_seconds=0, closing=True)
    assert _lock(alice) is None  # at once, not renew periods later
    say(open=[local], idle_seconds=1)  # the user is back: taken again
    assert _lock(alice)["holder"] == "alice@example.org"  # type: ignore[index]
    # A tab nobody used past the limit (3 s): its heartbeats no longer hold the lock.
    wait_until(lambda: say(open=[local], idle_seconds=4) or _lock(alice) is None, 10,
               interval=0.3, what="an idle tab's lock let go")
    for bad in ({"tab": "", "open": []}, {"tab": "t", "open": "x"},
                {"tab": "t", "open": [1]}, {"tab": "t", "idle_seconds": -1},
                {"tab": "t", "idle_seconds": "1"}, {"tab": "t", "workspace": "other"}):
        r = alice.post(f"/proxy/{rid}/envmgr/presence", json=bad)
        assert r.status_code in (400, 422), (bad, r.text)
    del svc


def test_concurrent_saves_one_wins_the_other_gets_a_copy(make_service) -> None:  # type: ignore[no-untyped-def]
    # A TTL shorter than the renewal period: Alice's lock lapses and Bob takes it while
    # Alice still has the notebook open. Then both save at once.
    _, alice, bob = _two_writers(make_service, "base", lock_ttl_seconds=2,
                                 lock_renew_seconds=600)
    open_url = OPEN
    a_rid = alice.post(open_url, json={"path": NB, "mode": "edit"}).json()["runtime_id"]
    r = wait_until(lambda: (x := bob.post(open_url, json={"path": NB, "mode": "edit"}))
                   .status_code == 200 and x, 60, interval=0.3, what="alice's lock lapses")
    b_rid = r.json()["runtime_id"]
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda args: _save(*args)["envmgr_sync"],
                        [(alice, a_rid, f"nbs/edit/{NB}", "alice's"),
                         (bob, b_rid, f"nbs/edit/{NB}", "bob's")])
    outcomes = sorted([a["status"], b["status"]])
    assert outcomes == ["conflict", "saved"], (a, b)
    winner, loser = (a, b) if a["status"] == "saved" else (b, a)
    win_text, lose_text = ("alice's", "bob's") if winner is a else ("bob's", "alice's")
    assert _bucket_source(alice, "nbs") == win_text
    assert _bucket_source(alice, "nbs", loser["conflict_path"]) == lose_text
    assert loser["message"]


def test_proxy_runs_a_cell_and_guards_the_door(sqlite_service: Service) -> None:
    import websockets.sync.client as ws_client
    svc = sqlite_service
    alice = svc.user("alice@example.org")
    bob = svc.user("bob@example.org")
    svc.workspace("prx", alice, **{"bob@example.org": "writer"})
    rt = alice.wait_status(alice.create_runtime("prx", autopause_minutes=0)["id"], "running")
    rid = rt["id"]
    with _jupyter(alice, rid) as jp:
        kernel = jp.post("/api/kernels", json={"name": "python3"}).json()
    # Nobody else gets through, and nothing without credentials.
    fails(bob.get(f"/proxy/{rid}/api/status"), 404, "not_found")
    fails(svc.api(None).get(f"/proxy/{rid}/api/status"), 401, "unauthorized")
    # A browser: the ticket in `url` becomes a cookie of the runtime's own origin.
    browser = RuntimeOrigin(svc, rid)
    first = browser.login(rt["url"])
    assert first.status_code == 200 and first.json()["next"] == f"/proxy/{rid}/lab"
    assert "envmgr_runtime" in first.headers["set-cookie"] and "HttpOnly" in \
        first.headers["set-cookie"] and "domain" not in first.headers["set-cookie"].lower()
    page = browser.http.get(f"/proxy/{rid}/api/status")
    assert page.status_code == 200 and "last_activity" in page.json()
    # The kernel's websocket through the proxy: run a cell and read its output.
    assert run_cell(alice, rid, "print(6 * 7)").strip() == "42"
    ws_url = f"{svc.base.replace('http', 'ws')}/proxy/{rid}/api/kernels/{kernel['id']}/channels"
    with pytest.raises(Exception):  # noqa: B017 (the handshake is refused)
        ws_client.connect(ws_url, additional_headers={
            "Authorization": bob.http.headers["Authorization"]}, open_timeout=10)
    # A cell run through the proxy is activity (listings and status requests are not).
    wait_until(lambda: svc.ctx.activity.get(rid), 5, what="activity recorded")
    assert svc.ctx.activity[rid].kind == "cell run"


def test_rename_and_delete_in_the_edit_folder_are_mirrored(make_service) -> None:  # type: ignore[no-untyped-def]
    _, alice, _ = _two_writers(make_service, "to be renamed")
    rid = alice.post(OPEN, json={"path": NB, "mode": "edit"}).json()["runtime_id"]
    renamed = "analysis/renamed.ipynb"
    with _jupyter(alice, rid) as jp:
        r = jp.patch(f"/api/contents/nbs/edit/{NB}", json={"path": f"nbs/edit/{renamed}"})
        assert r.status_code == 200, r.text
    listed = {n["path"] for n in alice.get("/api/v1/workspaces/nbs/notebooks").json()}
    assert listed == {renamed}
    assert _bucket_source(alice, "nbs", renamed) == "to be renamed"
    with _jupyter(alice, rid) as jp:
        assert jp.delete(f"/api/contents/nbs/edit/{renamed}").status_code == 204
    assert alice.get("/api/v1/workspaces/nbs/notebooks").json() == []


def test_opening_after_delete_keep_disk_brings_the_kept_disk_back(team) -> None:  # type: ignore[no-untyped-def]
    """"Delete, keep disk", then Edit: the new runtime gets the kept disk (and its files),
    not a second disk beside it."""
    _, alice, _, _ = team
    r = alice.post(OPEN, json={"path": NB, "mode": "edit"})
    rid = r.json()["runtime_id"]
    r = wait_until(lambda: (x := alice.post(OPEN, json={"path": NB, "mode": "edit"}))
                   .status_code == 200 and x, 120, interval=0.3, what="open")
    rt = alice.get(f"/api/v1/runtimes/{rid}").json()
    with _jupyter(alice, rid) as jp:
        assert jp.put("/api/contents/notes.txt", json={"type": "file", "format": "text",
                                                       "content": "keep me"}).status_code == 201
    assert alice.delete(f"/api/v1/runtimes/{rid}", params={"keep_disk": "true"}).status_code == 202
    alice.wait_status(rid, "deleted")
    r = wait_until(lambda: (x := alice.post(OPEN, json={"path": NB, "mode": "edit"}))
                   .status_code == 200 and x, 120, interval=0.3, what="open again")
    again = alice.get(f"/api/v1/runtimes/{r.json()['runtime_id']}").json()
    assert again["id"] != rid and again["disk_id"] == rt["disk_id"]
    disks = alice.get("/api/v1/disks", params={"workspace": "nbs"}).json()["items"]
    assert [d["id"] for d in disks if d["status"] != "deleted"] == [rt["disk_id"]]
    with _jupyter(alice, again["id"]) as jp:
        assert jp.get("/api/contents/notes.txt").json()["content"] == "keep me"
