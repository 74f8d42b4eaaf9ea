"""Attacks on the web wall that need script to run: in Debian's Chromium, a signed-in victim
meets a malicious notebook output on their runtime, a malicious preview, and a malicious
sign-in link. None of them may act with the victim's session."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from tests.conftest import BROWSER_TIMEOUT_MS, DEPLOYMENT_DOMAIN, Service, free_port
from tests.test_browser import playwright_api, sign_in, token_of

# What a notebook output's script would try from the runtime's origin, with the victim's
# browser signed in to the control plane.
STEAL = """async (base) => {
  const out = {};
  const attempt = async (key, url, init) => {
    try { const r = await fetch(url, init); out[key] = r.type === "opaque" ? "opaque" : r.status; }
    catch (e) { out[key] = "blocked"; }
  };
  await attempt("me", base + "/api/v1/me", {credentials: "include"});
  await attempt("mint", base + "/api/v1/tokens", {method: "POST", credentials: "include",
    headers: {"content-type": "application/json", "X-Requested-By": "envmgr"},
    body: JSON.stringify({email: "alice@example.org"})});
  await attempt("simple", base + "/api/v1/workspaces", {method: "POST", mode: "no-cors",
    credentials: "include", headers: {"content-type": "text/plain"},
    body: JSON.stringify({name: "made-by-script"})});
  out.cookies = document.cookie;
  return out;
}"""

EVIL_HTML = ("<b id=evil>hi</b><script>document.title='pwned';fetch('/api/v1/workspaces',"
             "{method:'POST',headers:{'content-type':'application/json','X-Requested-By':"
             "'envmgr'},body:JSON.stringify({name:'made-by-preview'})})</script>"
             "<img src=x onerror=\"document.title='pwned'\">")
EVIL_NB = {
    "nbformat": 4, "nbformat_minor": 5, "metadata": {},
    "cells": [
        {"cell_type": "markdown", "id": "m1", "metadata": {},
         "source": "# Report\n<script>document.title='pwned'</script>"},
        {"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": 1,
         "source": "display(HTML(...))",
         "outputs": [{"output_type": "display_data", "metadata": {},
                      "data": {"text/html": EVIL_HTML, "text/plain": "<HTML>"}}]},
    ],
}


def stay_local(page: Any, base: str) -> list[str]:
    """Requests the page makes anywhere but the service are refused and recorded."""
    elsewhere: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(base):
            r.continue_()
        else:
            elsewhere.append(r.request.url)
            r.abort()
    page.route("**/*", route)
    return elsewhere


def _workspaces(api: Any) -> set[str]:
    return {w["name"] for w in api.get("/api/v1/workspaces").json()["items"]}


def test_script_on_a_runtime_cannot_use_the_control_plane_session(sqlite_service: Service,
                                                                  page: Any) -> None:
    svc = sqlite_service
    alice = svc.user("alice@example.org")
    svc.workspace("team", alice)
    rt = alice.wait_status(alice.create_runtime("team", autopause_minutes=0)["id"], "running")
    rid = rt["id"]
    sign_in(page, svc.base, token_of(alice))
    playwright_api.expect(page.locator("#who")).to_have_text("alice@example.org")
    tokens_before = len(alice.get("/api/v1/tokens").json()["items"])

    # The control plane's origin never serves the runtime to a browser, signed in or not.
    denied = page.goto(f"{svc.base}/proxy/{rid}/lab")
    assert denied is not None and denied.status == 401

    # In JupyterLab, on the runtime's origin (where a trusted notebook's output script
    # runs), the script tries the control plane with the victim's cookies.
    page.goto(rt["url"])
    page.wait_for_url(f"http://{rid}.localhost:*/proxy/{rid}/lab", timeout=BROWSER_TIMEOUT_MS)
    got = page.evaluate(STEAL, svc.base)
    assert got["me"] == "blocked" and got["mint"] == "blocked", got
    assert "envmgr" not in got["cookies"], got  # neither the session nor the runtime cookie
    assert len(alice.get("/api/v1/tokens").json()["items"]) == tokens_before
    assert "made-by-script" not in _workspaces(alice)
    # Same-origin script reaches Jupyter (the user's own server) but no API of the service.
    assert page.evaluate(f"async () => (await fetch('/proxy/{rid}/api/status')).status") == 200
    assert page.evaluate("async () => (await fetch('/api/v1/me')).status") == 404


def test_a_malicious_preview_runs_no_script_and_loads_nothing(sqlite_service: Service,
                                                             page: Any) -> None:
    svc = sqlite_service
    alice = svc.user("alice@example.org")
    mallory = svc.user("mallory@example.org")
    svc.workspace("team", alice, **{"mallory@example.org": "writer"})
    r = mallory.put("/api/v1/workspaces/team/notebooks/content",
                    params={"path": "report.ipynb"}, json=EVIL_NB)
    assert r.status_code == 201, r.text
    sign_in(page, svc.base, token_of(alice))
    playwright_api.expect(page.locator("#who")).to_have_text("alice@example.org")

    elsewhere = stay_local(page, svc.base)
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "sandbox" in m.text else None)
    opened = page.goto(f"{svc.base}/api/v1/workspaces/team/notebooks/preview"
                       "?path=report.ipynb")
    assert opened is not None and opened.status == 200
    page.wait_for_load_state("load")
    assert page.locator("#evil").inner_text() == "hi"  # the author's markup is shown...
    assert page.title() != "pwned"  # ...but none of its script ran
    assert blocked, "Chromium did not report the sandbox blocking the scripts"
    assert "made-by-preview" not in _workspaces(alice)
    assert elsewhere == [], f"the preview tried to load {elsewhere}"


def test_sign_in_never_sends_the_browser_off_site(sqlite_service: Service, page: Any) -> None:
    svc = sqlite_service
    ann = svc.user("ann@example.org")
    left = stay_local(page, svc.base)
    for nxt in ("https://evil.example/", "//evil.example/x", "/\\evil.example/",
                "/%5Cevil.example", "javascript:alert(1)"):
        page.goto("about:blank")  # no page left polling the API as its session goes
        page.context.clear_cookies()
        sign_in(page, svc.base, token_of(ann), "/?next=" + nxt.replace("%", "%25"))
        # Signed in, then either still here or on a path of this site (`/%5C...` is one).
        page.wait_for_function("() => document.querySelector('#who')?.textContent "
                               "|| !location.search.includes('next')")
        assert page.url.startswith(svc.base + "/"), (nxt, page.url)
    assert left == []
    # A same-site next still works (a bookmarked view).
    page.goto("about:blank")
    page.context.clear_cookies()
    sign_in(page, svc.base, token_of(ann), "/?next=/%3Fws%3Dx")
    page.wait_for_url(f"{svc.base}/?ws=x")


CROSS = """async (target) => {
  const out = {};
  const attempt = async (key, url, init) => {
    try { const r = await fetch(url, init); out[key] = r.type === "opaque" ? "opaque" : r.status; }
    catch (e) { out[key] = "blocked"; }
  };
  await attempt("kernel", target + "/api/kernels", {method: "POST", mode: "no-cors",
    credentials: "include", headers: {"content-type": "text/plain"},
    body: JSON.stringify({name: "python3"})});
  await attempt("folder", target + "/api/contents", {method: "POST", mode: "no-cors",
    credentials: "include", headers: {"content-type": "text/plain"},
    body: JSON.stringify({type: "directory"})});
  await attempt("shutdown", target + "/api/shutdown", {method: "POST", mode: "no-cors",
    credentials: "include"});
  const form = document.createElement("form");  // and a plain form post, in a frame
  form.method = "POST"; form.action = target + "/api/contents"; form.target = "sink";
  form.enctype = "text/plain";
  const field = document.createElement("input");
  field.name = '{"type": "directory", "x": "'; field.value = '"}';
  form.appendChild(field);
  const sink = document.createElement("iframe"); sink.name = "sink";
  document.body.appendChild(sink); document.body.appendChild(form);
  await new Promise((done) => { sink.onload = done; form.submit(); });
  out.websocket = await new Promise((done) => {  // Jupyter's event bus, with her cookie
    const ws = new WebSocket(target.replace(/^http/, "ws") + "/api/events/subscribe");
    ws.onopen = () => { ws.close(); done("open"); };
    ws.onerror = () => done("refused");
  });
  return out;
}"""


def test_a_sibling_runtimes_page_cannot_act_on_a_runtime(make_service: Any,
                                                          page: Any) -> None:
    """In a deployment every runtime is a subdomain of one runtimes domain: one *site* to a
    browser, so SameSite=Lax sends Alice's runtime cookie along with a request from a page
    on a sibling runtime's origin. Alice has JupyterLab open on her runtime; such a page
    posts to her Jupyter with fetches and a form, and opens a websocket to it. Nothing
    happens there."""
    port = free_port()
    svc: Service = make_service(port=port, runtimes_domain=f"{DEPLOYMENT_DOMAIN}:{port}")
    alice = svc.user("alice@example.org")
    svc.workspace("team", alice)
    rt = alice.wait_status(alice.create_runtime("team", autopause_minutes=0)["id"], "running")
    rid = rt["id"]
    assert rt["url"].startswith(f"http://{rid}.{DEPLOYMENT_DOMAIN}:{port}/"), rt["url"]
    page.goto(rt["url"])
    page.wait_for_url(f"http://{rid}.{DEPLOYMENT_DOMAIN}:*/proxy/{rid}/lab",
                      timeout=BROWSER_TIMEOUT_MS)
    # The sibling's page, from a server of its own on the loopback (another port: the
    # same site, whatever the port), as a page a runtime serves would be.
    class Evil(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>hi</title><body></body>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sibling = (f"http://rt-1sibling0000000000000000.{DEPLOYMENT_DOMAIN}:"
                   f"{server.server_address[1]}")
        page.goto(f"{sibling}/evil")
        target = f"http://{rid}.{DEPLOYMENT_DOMAIN}:{port}/proxy/{rid}"
        got = page.evaluate(CROSS, target)
    finally:
        server.shutdown()
    # The page learns nothing of the answers (opaque, or a network error); what counts is
    # that nothing happened in Alice's Jupyter.
    assert got.pop("websocket") == "refused", got
    assert set(got) == {"kernel", "folder", "shutdown"}, got
    assert set(got.values()) <= {"opaque", "blocked"}, got
    jupyter = f"/proxy/{rid}"
    assert alice.get(f"{jupyter}/api/kernels").json() == []
    listed = alice.get(f"{jupyter}/api/contents").json()["content"]
    assert not [c for c in listed if c["type"] == "directory"], listed
    assert alice.get(f"{jupyter}/api/status").status_code == 200  # not shut down
