"""Attacks on the web wall, through the real HTTP API (the browser half is in
test_attacks_browser.py): each class an attacker found stays here as a test.

- user content on the control plane's origin (runtimes and the /proxy path);
- tickets replayed, forged, or carried to another runtime; tickets in logs;
- cookies shared between runtimes through the proxy, or set by a runtime for other origins;
- kernels' websockets opened from another origin;
- buckets claimed by another workspace;
- bad input that used to answer 500 or break a listing for everyone;
- sessions that outlive sign-out, tokens that cannot be listed, revoked or expire."""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import httpx
import pytest
import websockets.sync.client as ws_client

from envmgr.api.proxy import scoped_set_cookies
from envmgr.runtimes.origins import runtime_for_host
from tests.conftest import RuntimeOrigin, Service, fails, free_port

NB = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def put_nb(api: Any, ws: str, path: str, body: Any = None) -> httpx.Response:
    return api.put(f"/api/v1/workspaces/{ws}/notebooks/content", params={"path": path},
                   json=NB if body is None else body)


@pytest.fixture
def running(sqlite_service: Service) -> tuple[Service, Any, Any, dict[str, Any]]:
    """Alice's running runtime in workspace `team`, where Mallory is a writer too."""
    svc = sqlite_service
    alice = svc.user("alice@example.org")
    mallory = svc.user("mallory@example.org")
    svc.workspace("team", alice, **{"mallory@example.org": "writer"})
    rt = alice.wait_status(alice.create_runtime("team", autopause_minutes=0)["id"], "running")
    return svc, alice, mallory, rt


def test_runtime_urls_are_on_their_own_origin_with_single_use_tickets(
        running: Any, caplog: pytest.LogCaptureFixture) -> None:
    svc, alice, mallory, rt = running
    rid = rt["id"]
    caplog.set_level(logging.INFO)
    url = rt["url"]
    assert url.startswith(f"http://{rid}.localhost:{svc.settings.port}/"), url
    ticket = url.split("#", 1)[1]
    browser = RuntimeOrigin(svc, rid)
    assert browser.login(url).status_code == 200
    assert browser.http.get(f"/proxy/{rid}/api/status").status_code == 200
    # Replayed (by anyone, even from the same browser): refused.
    fails(RuntimeOrigin(svc, rid).login(url), 401, "unauthorized")
    # Forged, or carried to another runtime's origin: refused.
    fails(RuntimeOrigin(svc, rid).login(url, ticket="x" + ticket[1:]), 401, "unauthorized")
    other = mallory.wait_status(mallory.create_runtime("team", autopause_minutes=0)["id"],
                                "running")
    fresh = alice.runtime(rid)["url"]
    elsewhere = RuntimeOrigin(svc, other["id"])
    r = elsewhere.http.post("/_envmgr/login", headers={"Origin": elsewhere.origin},
                            json={"ticket": fresh.split("#")[1]})
    fails(r, 401, "unauthorized")
    # A cross-site page cannot redeem a ticket for the victim (JSON from this origin only).
    r = RuntimeOrigin(svc, rid).http.post("/_envmgr/login", headers={
        "Origin": "http://evil.example"}, json={"ticket": fresh.split("#")[1]})
    fails(r, 403, "forbidden")
    fails(RuntimeOrigin(svc, rid).http.post("/_envmgr/login", data={"ticket": "t"}), 415,
          "unsupported_media_type")
    fails(RuntimeOrigin(svc, rid).http.post("/_envmgr/login", json={"ticket": "t"}, headers={
        "Origin": "http://[x"}), 403, "forbidden")  # unparsable: refused, not a 500
    fails(RuntimeOrigin(svc, rid).http.post("/_envmgr/login", content=b"[" * 10_000, headers={
        "content-type": "application/json"}), 413, "too_large")  # read bounded, unsigned-in
    # The ticket travels in the fragment: no log line of the service ever holds one.
    assert not [rec for rec in caplog.records if ticket in rec.getMessage()
                or ticket in str(rec.args)]
    # `next` stays on this runtime: another origin or another runtime's path is replaced.
    for evil in ("https://evil.example/", "//evil.example/x", f"/proxy/{other['id']}/lab",
                 "/\\evil.example/", "/api/v1/me"):
        ok = RuntimeOrigin(svc, rid).login(alice.runtime(rid)["url"].split("?")[0]
                                           + "?next=" + evil + "#"
                                           + alice.runtime(rid)["url"].split("#")[1])
        assert ok.status_code == 200 and ok.json()["next"] == f"/proxy/{rid}/lab", evil


def test_each_origin_honours_only_its_own_credential(running: Any) -> None:
    svc, alice, mallory, rt = running
    rid = rt["id"]
    browser = RuntimeOrigin(svc, rid)
    assert browser.login(rt["url"]).status_code == 200
    cookie = browser.http.cookies["envmgr_runtime"]
    # The control plane's /proxy path: bearer tokens only, never a cookie or a ticket.
    with httpx.Client(base_url=svc.base, cookies={"envmgr_runtime": cookie}) as web:
        fails(web.get(f"/proxy/{rid}/api/status"), 401, "unauthorized")
        web.post("/api/v1/session", json={"token": alice.http.headers["Authorization"][7:]})
        assert web.get("/api/v1/me").status_code == 200  # signed in on the control plane
        fails(web.get(f"/proxy/{rid}/api/status"), 401, "unauthorized")
        fails(web.get(f"/proxy/{rid}/lab", params={"ticket": rt["url"].split("#")[1]}), 401,
              "unauthorized")
        session = web.cookies["envmgr_session"]
    assert alice.get(f"/proxy/{rid}/api/status").status_code == 200
    fails(mallory.get(f"/proxy/{rid}/api/status"), 404, "not_found")
    # The runtime origin: its own cookie only; no bearer, no session, no API of the service.
    origin = RuntimeOrigin(svc, rid).http
    fails(origin.get(f"/proxy/{rid}/api/status",
                     headers={"Authorization": alice.http.headers["Authorization"]}), 401,
          "unauthorized")
    fails(origin.get(f"/proxy/{rid}/api/status", cookies={"envmgr_session": session}), 401,
          "unauthorized")
    fails(browser.http.get("/api/v1/me"), 404, "not_found")
    fails(browser.http.get("/admin"), 404, "not_found")
    # Another runtime's origin does not take this one's cookie.
    other = mallory.wait_status(mallory.create_runtime("team", autopause_minutes=0)["id"],
                                "running")
    theirs = RuntimeOrigin(svc, other["id"]).http
    fails(theirs.get(f"/proxy/{other['id']}/api/status",
                     cookies={"envmgr_runtime": cookie}), 401, "unauthorized")
    # A runtime cookie for a runtime that is no longer running gets nothing.
    assert alice.post(f"/api/v1/runtimes/{rid}/pause").status_code == 202
    alice.wait_status(rid, "paused")
    fails(browser.http.get(f"/proxy/{rid}/api/status"), 424, "not_running")


def test_the_proxy_keeps_no_cookies_and_scopes_runtime_cookies(running: Any) -> None:
    svc, alice, _, rt = running
    rid = rt["id"]
    # Jupyter sets its _xsrf cookie on its pages: API clients never get it...
    lab = alice.get(f"/proxy/{rid}/lab")
    assert lab.status_code == 200 and "set-cookie" not in lab.headers
    # ...the runtime's own origin does, host-only (no Domain), and the proxy's client keeps
    # nothing to replay to anyone else's runtime.
    browser = RuntimeOrigin(svc, rid)
    browser.login(rt["url"])
    page = browser.http.get(f"/proxy/{rid}/lab")
    cookies = page.headers.get_list("set-cookie")
    assert any(c.startswith("_xsrf=") for c in cookies), cookies
    assert not any("domain=" in c.lower() for c in cookies)
    assert len(svc.ctx.http.cookies) == 0
    # A runtime cannot set a cookie for a parent domain or overwrite the service's cookies.
    assert scoped_set_cookies([
        "a=1; Domain=localhost; Path=/", "envmgr_session=x; Path=/", "envmgr_runtime=y",
        "b=2; domain=.example.org; HttpOnly"]) == ["a=1; Path=/", "b=2; HttpOnly"]


def _kernel_socket(svc: Service, rid: str, kernel: str, cookie: str, origin: str) -> Any:
    sock = socket.create_connection(("127.0.0.1", svc.settings.port))
    return ws_client.connect(
        f"ws://{rid}.localhost:{svc.settings.port}/proxy/{rid}/api/kernels/{kernel}/channels",
        sock=sock, origin=origin, additional_headers={"Cookie": f"envmgr_runtime={cookie}"},
        open_timeout=30)


def test_kernel_websockets_only_from_the_runtime_origin(running: Any) -> None:
    svc, alice, mallory, rt = running
    rid = rt["id"]
    browser = RuntimeOrigin(svc, rid)
    browser.login(rt["url"])
    cookie = browser.http.cookies["envmgr_runtime"]
    kernel = alice.post(f"/proxy/{rid}/api/kernels", json={"name": "python3"}).json()["id"]
    with _kernel_socket(svc, rid, kernel, cookie, browser.origin) as ws:
        ws.send(json.dumps({
            "header": {"msg_id": "k-1", "username": "a", "session": "s", "version": "5.3",
                       "msg_type": "kernel_info_request"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "content": {}}))
        while json.loads(ws.recv(timeout=60)).get("msg_type") != "kernel_info_reply":
            pass
    other = mallory.wait_status(mallory.create_runtime("team", autopause_minutes=0)["id"],
                                "running")
    for origin in ("http://evil.example", f"http://{other['id']}.localhost:{svc.settings.port}",
                   svc.base):
        with pytest.raises(Exception):  # noqa: B017 (the handshake is refused)
            _kernel_socket(svc, rid, kernel, cookie, origin)


def test_buckets_belong_to_one_workspace(sqlite_service: Service) -> None:
    svc = sqlite_service
    alice = svc.user("alice@example.org")
    mallory = svc.user("mallory@example.org")
    svc.workspace("secret", alice)
    bucket = alice.get("/api/v1/workspaces/secret").json()["bucket"]
    assert "secret" not in bucket  # not derivable from the name
    assert put_nb(alice, "secret", "plans.ipynb").status_code == 201
    e = fails(mallory.post("/api/v1/workspaces", json={"name": "mine", "bucket": bucket}), 403,
              "forbidden")
    assert "only admins" in e["message"]
    e = fails(svc.admin.post("/api/v1/workspaces", json={"name": "mine", "bucket": bucket}),
              409, "bucket_in_use")
    assert e["details"]["bucket"] == bucket
    assert mallory.post("/api/v1/workspaces", json={"name": "mine"}).status_code == 201
    assert mallory.get("/api/v1/workspaces/mine/notebooks").json() == []
    assert mallory.get("/api/v1/workspaces/mine").json()["bucket"] != bucket
    assert svc.admin.post("/api/v1/workspaces", json={
        "name": "imported", "bucket": "some-existing-bucket"}).status_code == 201


def test_path_collisions_are_refused_and_listing_keeps_working(sqlite_service: Service) -> None:
    svc = sqlite_service
    alice = svc.user("alice@example.org")
    svc.workspace("paths", alice)
    assert put_nb(alice, "paths", "p.ipynb").status_code == 201
    e = fails(put_nb(alice, "paths", "p.ipynb/q.ipynb"), 409, "path_conflict")
    assert e["details"]["conflicts_with"] == "p.ipynb"
    assert put_nb(alice, "paths", "x.ipynb/y.ipynb").status_code == 201
    fails(put_nb(alice, "paths", "x.ipynb"), 409, "path_conflict")
    # Names that collided on the old folder layout (a lock object named like a folder).
    for path in ("a.json/b.ipynb", "p.ipynb.json/c.ipynb", "d.ipynb"):
        assert put_nb(alice, "paths", path).status_code == 201, path
    listed = alice.get("/api/v1/workspaces/paths/notebooks")
    assert listed.status_code == 200
    assert {n["path"] for n in listed.json()} == {
        "p.ipynb", "x.ipynb/y.ipynb", "a.json/b.ipynb", "p.ipynb.json/c.ipynb", "d.ipynb"}
    for bad in ("a\nb.ipynb", "tab\t.ipynb", "x" * 256 + ".ipynb", "del\x7f.ipynb"):
        fails(put_nb(alice, "paths", bad), 422, "validation_error")
    assert alice.get("/api/v1/workspaces/paths/notebooks").status_code == 200


def test_uploads_are_limited_while_streaming(make_service: Any) -> None:
    svc = make_service(notebook_max_bytes=64 * 1024)
    alice = svc.user("alice@example.org")
    svc.workspace("big", alice)

    def chunks() -> Any:
        for _ in range(1024):  # 64 MiB if it were read whole; refused after 64 KiB
            yield b" " * 65536
    r = alice.put("/api/v1/workspaces/big/notebooks/content", params={"path": "big.ipynb"},
                  content=chunks())
    assert fails(r, 413, "too_large")["details"]["limit"] == 64 * 1024
    r = alice.put("/api/v1/workspaces/big/notebooks/content", params={"path": "big.ipynb"},
                  content=b" " * (65 * 1024))
    fails(r, 413, "too_large")
    assert alice.get("/api/v1/workspaces/big/notebooks").json() == []


def test_trailing_newlines_cursors_dates_and_generations_are_4xx(sqlite_service: Service
                                                                 ) -> None:
    svc = sqlite_service
    alice = svc.user("alice@example.org")
    svc.workspace("val", alice)
    fails(alice.post("/api/v1/workspaces", json={"name": "abc\n"}), 422, "validation_error")
    fails(svc.admin.post("/api/v1/users", json={"email": "a@b\nc"}), 422, "validation_error")
    for labels in ({"team\n": "x"}, {"team": "x\n"}):
        fails(alice.post("/api/v1/workspaces/val/runtimes", json={"labels": labels}), 422,
              "validation_error")
    fails(alice.get("/api/v1/runtimes", params={"label": "team\n:x"}), 422, "validation_error")
    rid = alice.create_runtime("val", autopause_minutes=0)["id"]
    import base64
    for raw in ("c1:" + "9" * 40, "c1:²", "c1:-1"):
        cursor = base64.urlsafe_b64encode(raw.encode()).decode()
        fails(alice.get(f"/api/v1/runtimes/{rid}/events", params={"cursor": cursor}), 422,
              "validation_error")
    fails(alice.get("/api/v1/runtimes", params={"cursor": "x" * 5000}), 422, "validation_error")
    fails(alice.get("/api/v1/runtimes", params={"cursor": "%%%"}), 422, "validation_error")
    for params in ({"start": "0001-01-01"}, {"end": "9999-12-31"},
                   {"start": "0001-01-01", "end": "0001-01-02"}):
        fails(svc.admin.get("/api/v1/admin/costs", params=params), 422, "validation_error")
        fails(alice.get("/api/v1/me/costs", params=params), 422, "validation_error")
    assert put_nb(alice, "val", "n.ipynb").status_code == 201
    r = alice.put("/api/v1/workspaces/val/notebooks/content", params={"path": "n.ipynb"},
                  json=NB, headers={"If-Match": "9" * 30})
    fails(r, 422, "validation_error")
    # A notebook a runtime saved broken: the preview says so instead of a 500.
    ws = alice.get("/api/v1/workspaces/val").json()
    svc.ctx.storage.write(ws["bucket"], "notebooks/broken.ipynb", b"{not json")
    fails(alice.get("/api/v1/workspaces/val/notebooks/preview",
                    params={"path": "broken.ipynb"}), 422, "not_renderable")
    svc.ctx.storage.write(ws["bucket"], "locks/n.ipynb.json", b"[]")
    assert alice.get("/api/v1/workspaces/val/notebooks").status_code == 200


def test_previews_are_sandboxed(sqlite_service: Service) -> None:
    svc = sqlite_service
    alice = svc.user("alice@example.org")
    svc.workspace("pre", alice)
    assert put_nb(alice, "pre", "p.ipynb").status_code == 201
    r = alice.get("/api/v1/workspaces/pre/notebooks/preview", params={"path": "p.ipynb"})
    csp = r.headers["content-security-policy"]
    directives = {d.strip().split(" ")[0]: d.strip() for d in csp.split(";")}
    assert directives["sandbox"] == "sandbox"  # no allow-scripts, no allow-same-origin
    assert directives["default-src"] == "default-src 'none'"
    assert r.headers["x-content-type-options"] == "nosniff"


def test_sessions_end_for_good_and_tokens_are_listed_revoked_and_expire(
        sqlite_service: Service) -> None:
    svc = sqlite_service
    ann = svc.user("ann@example.org")
    bob = svc.user("bob@example.org")
    token = ann.http.headers["Authorization"][7:]
    # Sign-out ends the session server-side: a saved copy of the cookie no longer works.
    with httpx.Client(base_url=svc.base) as web:
        assert web.post("/api/v1/session", json={"token": token}).status_code == 200
        copy = web.cookies["envmgr_session"]
        assert web.delete("/api/v1/session").status_code == 204
    with httpx.Client(base_url=svc.base, cookies={"envmgr_session": copy}) as web:
        fails(web.get("/api/v1/me"), 401, "unauthorized")
    # A second token, with a note and an expiry; listed without secrets.
    made = ann.post("/api/v1/tokens", json={"email": "ann@example.org", "note": "laptop",
                                            "expires_in_days": 1}).json()
    assert made["token"] and made["expires_at"]
    items = ann.get("/api/v1/tokens").json()["items"]
    assert {t["note"] for t in items} >= {"laptop"} and len(items) == 2
    assert all("token" not in t and "token_hash" not in t for t in items)
    fails(bob.get("/api/v1/tokens", params={"email": "ann@example.org"}), 403, "forbidden")
    assert len(svc.admin.get("/api/v1/tokens", params={"email": "ann@example.org"}
                             ).json()["items"]) == 2
    fails(bob.delete(f"/api/v1/tokens/{made['id']}"), 404, "not_found")
    # Revoking a token ends it and every browser session made with it, at once.
    laptop = svc.api(made["token"])
    assert laptop.get("/api/v1/me").status_code == 200
    with httpx.Client(base_url=svc.base) as web:
        web.post("/api/v1/session", json={"token": made["token"]})
        assert web.get("/api/v1/me").status_code == 200
        assert ann.delete(f"/api/v1/tokens/{made['id']}").status_code == 204
        fails(web.get("/api/v1/me"), 401, "unauthorized")
    fails(laptop.get("/api/v1/me"), 401, "unauthorized")
    # Expiry: a day later (moved clock), a one-day token is refused.
    short = ann.post("/api/v1/tokens", json={"email": "ann@example.org",
                                             "expires_in_days": 1}).json()["token"]
    svc.ctx.clock.advance(2 * 86400)
    fails(svc.api(short).get("/api/v1/me"), 401, "unauthorized")
    assert ann.get("/api/v1/me").status_code == 200  # no expiry: still good
    for bad in ({"email": "ann@example.org", "expires_in_days": 0},
                {"email": "ann@example.org", "expires_in_days": 1e9},
                {"email": "ann@example.org", "note": "x" * 500}):
        fails(ann.post("/api/v1/tokens", json=bad), 422, "validation_error")


def test_host_header_parsing() -> None:
    from envmgr.settings import Settings
    s = Settings(port=8000, runtimes_domain="")
    rid = "rt-1m896qe803tk3rvntgvjj"
    assert runtime_for_host(s, f"{rid}.localhost:8000") == rid
    assert runtime_for_host(s, f"{rid.upper()}.LOCALHOST:8000") == rid
    for host in ("localhost:8000", "127.0.0.1:8000", f"x.{rid}.localhost", f"{rid}.evil.com",
                 f"{rid}.localhost.evil.com", "rt-short.localhost", "[::1]:8000", ""):
        assert runtime_for_host(s, host) is None, host
    d = Settings(runtimes_domain="nb.example-usercontent.org")
    assert runtime_for_host(d, f"{rid}.nb.example-usercontent.org") == rid
    assert runtime_for_host(d, f"{rid}.localhost:8000") is None


def test_the_lab_extensions_endpoints_need_the_runtimes_cookie_and_origin(running: Any) -> None:
    """/_envmgr/state|resume|still-here|activity on a runtime's origin: another user, another
    site (a form or fetch elsewhere riding Alice's cookie) or another runtime's origin get
    nothing done; a poll is not activity."""
    svc, alice, mallory, rt = running
    rid = rt["id"]
    fails(RuntimeOrigin(svc, rid).http.get("/_envmgr/state"), 401, "unauthorized")
    browser = RuntimeOrigin(svc, rid)
    assert browser.login(rt["url"]).status_code == 200
    state = browser.http.get("/_envmgr/state").json()
    assert state["id"] == rid and state["status"] == "running" and state["workspace"] == "team"
    assert alice.post(f"/api/v1/runtimes/{rid}/pause").status_code == 202
    alice.wait_status(rid, "paused")
    assert browser.http.get("/_envmgr/state").json()["status"] == "paused"  # while paused
    for origin in (None, svc.base, "http://evil.example", "null"):
        headers = {"Origin": origin} if origin else {}
        fails(browser.http.post("/_envmgr/resume", headers=headers), 403, "forbidden")
        fails(browser.http.post("/_envmgr/still-here", headers=headers), 403, "forbidden")
        fails(browser.http.post("/_envmgr/activity", headers=headers), 403, "forbidden")
    assert alice.get(f"/api/v1/runtimes/{rid}").json()["status"] == "paused"
    # Mallory's own cookie for her runtime means nothing on Alice's origin.
    other = mallory.wait_status(mallory.create_runtime("team", autopause_minutes=0)["id"],
                                "running")
    hers = RuntimeOrigin(svc, other["id"])
    assert hers.login(other["url"]).status_code == 200
    stolen = RuntimeOrigin(svc, rid)
    stolen.http.cookies = hers.http.cookies
    fails(stolen.http.get("/_envmgr/state"), 401, "unauthorized")
    ok = browser.http.post("/_envmgr/resume", headers={"Origin": browser.origin})
    assert ok.status_code == 200 and ok.json()["status"] in ("resuming", "running")
    alice.wait_status(rid, "running")
    before = svc.ctx.activity.get(rid)
    assert browser.http.get(f"/proxy/{rid}/api/kernels").status_code == 200
    assert svc.ctx.activity.get(rid) == before
    for path, kind in (("still-here", "still here"), ("activity", "page input")):
        said = browser.http.post(f"/_envmgr/{path}", headers={"Origin": browser.origin})
        assert said.status_code == 200 and said.json()["last_activity"]["kind"] == kind
        assert svc.ctx.activity[rid].kind == kind


def test_a_boot_ticket_is_good_once_for_its_own_runtime(running: Any) -> None:
    """A VM's metadata holds a boot ticket, not tokens: it gets its runtime's tokens once;
    replayed, forged, or after the runtime is deleted it gets nothing."""
    svc, alice, _, rt = running
    rid = rt["id"]
    ticket = svc.ctx.signer.boot_ticket(rid)
    url = f"{svc.base}/runtime-api/v1/boot"
    got = httpx.post(url, headers={"Authorization": f"Bearer {ticket}"})
    assert got.status_code == 200, got.text
    assert got.json() == {"runtime_id": rid, "jupyter_token": svc.ctx.signer.jupyter_token(rid),
                          "runtime_token": svc.ctx.signer.runtime_token(rid)}
    fails(httpx.post(url, headers={"Authorization": f"Bearer {ticket}"}), 401, "unauthorized")
    fails(httpx.post(url, headers={"Authorization": f"Bearer x{ticket[1:]}"}), 401,
          "unauthorized")
    fails(httpx.post(url), 401, "unauthorized")
    fresh = svc.ctx.signer.boot_ticket(rid)
    assert alice.delete(f"/api/v1/runtimes/{rid}").status_code == 202
    alice.wait_status(rid, "deleted")
    fails(httpx.post(url, headers={"Authorization": f"Bearer {fresh}"}), 401, "unauthorized")


def test_jupyterlabs_hashed_files_come_from_the_control_plane_once(running: Any) -> None:
    """JupyterLab's content-hashed files are served by the control plane on the runtime's
    origin (immutable, and there while the runtime is paused); anything unhashed, missing
    here or outside JupyterLab's trees still goes to the runtime; strangers get nothing."""
    import sys
    from pathlib import Path

    import envmgr_jupyter
    svc, alice, mallory, rt = running
    rid = rt["id"]
    browser = RuntimeOrigin(svc, rid)
    assert browser.login(rt["url"]).status_code == 200
    static = Path(sys.prefix) / "share/jupyter/lab/static"
    main = next(static.glob("main.*.js"))
    ours = next((Path(envmgr_jupyter.__file__).parent / "labextension/envmgr-lab/static")
                .glob("remoteEntry.*.js"))
    base = f"/proxy/{rid}"
    # The page itself names the file served here: the same name, the same bytes.
    lab = browser.http.get(f"{base}/lab")
    assert lab.status_code == 200 and main.name in lab.text
    for url, path in ((f"{base}/static/lab/{main.name}", main),
                      (f"{base}/lab/extensions/envmgr-lab/static/{ours.name}", ours)):
        got = browser.http.get(url)
        assert got.status_code == 200 and got.content == path.read_bytes(), url
        assert "immutable" in got.headers["cache-control"]
        assert got.headers["content-type"].startswith("text/javascript")
    # Paused: the hashed files still load (no hop through the runtime); the rest waits.
    assert alice.post(f"/api/v1/runtimes/{rid}/pause").status_code == 202
    alice.wait_status(rid, "paused")
    assert browser.http.get(f"{base}/static/lab/{main.name}").status_code == 200
    for unserved in (f"{base}/static/lab/bootstrap.js",  # unhashed: the runtime's
                     f"{base}/static/lab/main.0123456789abcdef.js",  # not a file here
                     f"{base}/static/lab/..%2F..%2F{main.name}",
                     f"{base}/static/lab/../lab/static/{main.name}",
                     f"{base}/lab/extensions/envmgr-lab/package.json",
                     f"{base}/static/{main.name}"):
        fails(browser.http.get(unserved), 424, "not_running")
    # No cookie, or another runtime's cookie: nothing, as for any other path.
    fails(RuntimeOrigin(svc, rid).http.get(f"{base}/static/lab/{main.name}"), 401,
          "unauthorized")
    other = mallory.wait_status(mallory.create_runtime("team", autopause_minutes=0)["id"],
                                "running")
    theirs = RuntimeOrigin(svc, other["id"]).http
    fails(theirs.get(f"/proxy/{other['id']}/static/lab/{main.name}",
                     cookies={"envmgr_runtime": browser.http.cookies["envmgr_runtime"]}),
          401, "unauthorized")


def test_only_a_runtimes_own_pages_change_it(running: Any) -> None:
    """Runtimes are sibling subdomains, one site to a browser: a page of Mallory's runtime
    posting to Alice's origin carries Alice's cookie (SameSite=Lax), and Jupyter skips its
    own XSRF check (the proxy hands it its token). Every unsafe method needs an Origin of
    that very runtime (or Sec-Fetch-Site: same-origin): a cross-runtime kernel start, a
    folder made on her disk and a shutdown of her Jupyter are all refused."""
    svc, alice, mallory, rt = running
    rid = rt["id"]
    browser = RuntimeOrigin(svc, rid)
    assert browser.login(rt["url"]).status_code == 200
    other = mallory.wait_status(mallory.create_runtime("team", autopause_minutes=0)["id"],
                                "running")
    evil = RuntimeOrigin(svc, other["id"]).origin
    attempts = [({"Origin": evil}, {}), ({}, {}), ({"Origin": "null"}, {}),
                ({"Sec-Fetch-Site": "same-site"}, {}),
                ({"Origin": evil, "Content-Type": "application/x-www-form-urlencoded"},
                 {"content": b"type=directory"})]
    for headers, body in attempts:
        for method, path, kw in (("post", "api/kernels", {"json": {"name": "python3"}}),
                                 ("post", "api/contents", {"json": {"type": "directory"}}),
                                 ("post", "api/shutdown", {})):
            r = getattr(browser.http, method)(f"/proxy/{rid}/{path}", headers=headers,
                                              **(body or kw))
            fails(r, 403, "forbidden")
    assert browser.http.get(f"/proxy/{rid}/api/kernels").json() == []
    listed = browser.http.get(f"/proxy/{rid}/api/contents").json()["content"]
    assert not [c for c in listed if c["type"] == "directory" and "Untitled" in c["name"]]
    assert browser.http.get(f"/proxy/{rid}/api/status").status_code == 200  # still up
    # Its own pages may: by Origin, or by Sec-Fetch-Site alone, and, as for any browser
    # signed in to Jupyter, with Jupyter's XSRF token (JupyterLab sends its `_xsrf` cookie
    # back as X-XSRFToken): Jupyter's own check stays on for browsers.
    fails_xsrf = browser.http.post(f"/proxy/{rid}/api/contents", json={"type": "directory"},
                                   headers={"Origin": browser.origin})
    assert fails_xsrf.status_code == 403 and "_xsrf" in fails_xsrf.text, fails_xsrf.text
    assert browser.http.get(f"/proxy/{rid}/lab").status_code == 200
    xsrf = browser.http.cookies.get("_xsrf")
    assert xsrf, browser.http.cookies
    r = browser.http.post(f"/proxy/{rid}/api/contents", json={"type": "directory"},
                          headers={"Origin": browser.origin, "X-XSRFToken": xsrf})
    assert r.status_code == 201, r.text
    r = browser.http.post(f"/proxy/{rid}/api/kernels", json={"name": "python3"},
                          headers={"Sec-Fetch-Site": "same-origin", "X-XSRFToken": xsrf})
    assert r.status_code == 201, r.text
    browser.http.delete(f"/proxy/{rid}/api/kernels/{r.json()['id']}",
                        headers={"Origin": browser.origin, "X-XSRFToken": xsrf})
    # API clients (a token on /proxy/<id>/) stay token clients: no XSRF token needed.
    assert alice.post(f"/proxy/{rid}/api/contents",
                      json={"type": "directory"}).status_code == 201


def test_over_https_the_runtime_cookie_is_a_host_cookie(make_service: Any) -> None:
    """Behind https (a deployment), the runtime cookie is `__Host-`: Secure, Path=/, no
    Domain, so a sibling runtime's script can neither set nor shadow it with a Domain
    cookie; the plain name means nothing there."""
    port = free_port()
    svc: Service = make_service(port=port, public_url=f"https://127.0.0.1:{port}",
                                runtime_api_url=f"http://127.0.0.1:{port}")
    alice = svc.user("alice@example.org")
    svc.workspace("team", alice)
    rt = alice.wait_status(alice.create_runtime("team", autopause_minutes=0)["id"], "running")
    rid = rt["id"]
    assert rt["url"].startswith(f"https://{rid}.localhost:{port}/"), rt["url"]
    browser = RuntimeOrigin(svc, rid)
    ticket = rt["url"].split("#", 1)[1]
    r = browser.http.post("/_envmgr/login", json={"ticket": ticket, "next": ""},
                          headers={"Origin": f"https://{browser.host}"})
    assert r.status_code == 200, r.text
    set_cookie = r.headers["set-cookie"]
    name, _, rest = set_cookie.partition("=")
    attrs = {a.strip().split("=")[0].lower() for a in rest.split(";")[1:]}
    assert name == "__Host-envmgr_runtime", set_cookie
    assert {"secure", "httponly", "path"} <= attrs and "domain" not in attrs, set_cookie
    value = rest.split(";")[0]
    for name, status in (("__Host-envmgr_runtime", 200), ("envmgr_runtime", 401)):
        with httpx.Client(base_url=svc.base, headers={"Host": browser.host},
                          cookies={name: value}) as web:
            assert web.get(f"/proxy/{rid}/api/status").status_code == status, name
