"""Notebook jobs end to end: real runner processes (papermill, nbconvert), the real API, the
local bucket, and the sandbox when run as root."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psutil
import pytest

from envmgr.jobs import webhooks
from tests.conftest import Service, fails, marked_processes, outside_address, wait_until
from tests.jobs_helpers import job, notebook, submit, wait_job


@pytest.fixture
def svc(make_service: Callable[..., Service]) -> Service:
    s = make_service(job_poll_seconds=0.1, webhook_allow_private=True,
                     job_retention_sweep_seconds=0.2)
    s.workspace("lab", s.admin)
    return s


def test_success_with_parameters(svc: Service) -> None:
    nb = notebook("print('alpha is', alpha, type(alpha).__name__)\nprint('names', names)",
                  parameters="alpha = 1\nnames = []")
    created = submit(svc.admin, "lab", ipynb=nb, parameters={"alpha": 0.1, "names": ["a", "b"]})
    assert created["status"] == "queued" and created["progress"]["cells_done"] == 0
    done = wait_job(svc.admin, created["id"])
    assert done["status"] == "succeeded", (done["error"], done["status_reason"])
    assert done["error"] is None and done["finished_at"] and done["expires_at"]
    assert done["progress"]["cells_done"] == done["progress"]["cells_total"] == 3
    log = svc.admin.get(f"/api/v1/jobs/{created['id']}/output", params={"format": "log"})
    assert log.status_code == 200 and "alpha is 0.1 float" in log.text, log.text
    assert "names ['a', 'b']" in log.text
    out = svc.admin.get(f"/api/v1/jobs/{created['id']}/output", params={"format": "ipynb"})
    executed = json.loads(out.text)
    assert any("injected-parameters" in c["metadata"].get("tags", [])
               for c in executed["cells"])
    html = svc.admin.get(f"/api/v1/jobs/{created['id']}/output", params={"format": "html"})
    assert html.status_code == 200 and "alpha is 0.1" in html.text
    assert "sandbox" in html.headers["content-security-policy"]
    assert done["outputs"] == {"ipynb": f"jobs/{created['id']}/output.ipynb",
                               "html": f"jobs/{created['id']}/output.html",
                               "log": f"jobs/{created['id']}/log.txt"}
    wait_until(lambda: not [p for p in marked_processes(svc.settings.data_dir)],
               30, what="the job's processes to be gone")


def test_raising_cell_fails_naming_the_cell(svc: Service) -> None:
    # The cell right after the parameters (papermill injects one more before it): the index
    # is the one in the notebook as its author wrote it.
    nb = notebook("raise ValueError('bad input ' + str(x))", "print('never')",
                  parameters="x = 1")
    nb["cells"].insert(0, {"cell_type": "markdown", "metadata": {}, "source": "# title",
                           "id": "title"})
    done = wait_job(svc.admin, submit(svc.admin, "lab", ipynb=nb, parameters={"x": 2})["id"])
    assert done["status"] == "failed", done
    err = done["error"]
    assert err["kind"] == "notebook_error" and err["cell"] == 2, err
    assert err["ename"] == "ValueError" and err["evalue"] == "bad input 2"
    assert done["attempts"] == 1  # a notebook's own failure is never retried
    assert done["outputs"]["html"] and done["outputs"]["log"]


def test_a_kernel_that_kills_itself_fails_once(svc: Service) -> None:
    """A notebook that ends its own kernel failed by its own doing (papermill's
    DeadKernelError), not the machinery's: never retried (each retry ran its side effects
    again), and the cell it was running is named."""
    nb = notebook("print('side effect', flush=True)", "import os\nos._exit(3)", "print('never')")
    done = wait_job(svc.admin, submit(svc.admin, "lab", ipynb=nb)["id"])
    assert done["status"] == "failed" and done["attempts"] == 1, done
    err = done["error"]
    assert err["kind"] == "notebook_error" and err["ename"] == "DeadKernelError", err
    assert err["cell"] == 1 and "kernel died while cell 1 ran" in err["message"], err
    log = svc.admin.get(f"/api/v1/jobs/{done['id']}/output", params={"format": "log"}).text
    assert log.count("side effect") == 1, log


def test_time_limit_kills_outside_the_kernel(svc: Service) -> None:
    nb = notebook("import time\nprint('sleeping', flush=True)\ntime.sleep(600)")
    created = submit(svc.admin, "lab", ipynb=nb, time_limit_seconds=3)
    running = wait_job(svc.admin, created["id"], "running")
    assert running["started_at"]
    done = wait_job(svc.admin, created["id"], timeout=60)
    assert done["status"] == "timed_out" and done["error"]["kind"] == "timeout", done
    assert done["status_reason"] == "time limit"
    assert not marked_processes(svc.settings.data_dir)


def test_cancel_mid_run_kills_the_tree(svc: Service) -> None:
    nb = notebook("import time\nfor i in range(600):\n    print('tick', i, flush=True)\n"
                  "    time.sleep(0.2)")
    created = submit(svc.admin, "lab", ipynb=nb)
    wait_until(lambda: job(svc.admin, created["id"])["progress"]["current_cell"] is not None,
               90, what="the cell to start")
    procs = marked_processes(svc.settings.data_dir)
    assert len(procs) >= 2, procs  # the runner and its kernel
    r = svc.admin.post(f"/api/v1/jobs/{created['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] in ("canceling", "canceled"), r.text
    done = wait_job(svc.admin, created["id"], timeout=30)
    assert done["status"] == "canceled" and done["error"]["kind"] == "canceled", done
    assert "admin@localhost" in done["status_reason"]
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, alive
    again = svc.admin.post(f"/api/v1/jobs/{created['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"


def test_concurrency_one_queues_the_second(svc: Service) -> None:
    bob = svc.user("bob@example.org")
    assert svc.admin.put("/api/v1/workspaces/lab/members/bob@example.org",
                         json={"role": "writer"}).status_code == 200
    r = svc.admin.put("/api/v1/users/bob@example.org/limits", json={"job_concurrency": 1})
    assert r.status_code == 200 and r.json()["job_concurrency"] == 1, r.text
    first = submit(bob, "lab", ipynb=notebook("import time\ntime.sleep(2)"))
    second = submit(bob, "lab", ipynb=notebook("print('second')"))
    wait_job(bob, first["id"], "running")
    assert job(bob, second["id"])["status"] == "queued"
    usage = bob.get("/api/v1/me/usage").json()
    assert usage["running"] == 1 and usage["queued"] == 1, usage
    a, b = wait_job(bob, first["id"]), wait_job(bob, second["id"])
    assert a["status"] == b["status"] == "succeeded"
    assert b["started_at"] >= a["finished_at"], (a, b)


def test_budget_stops_a_running_job_then_refuses(svc: Service) -> None:
    carol = svc.user("carol@example.org")
    svc.admin.put("/api/v1/workspaces/lab/members/carol@example.org", json={"role": "writer"})
    svc.admin.put("/api/v1/users/carol@example.org/limits",
                  json={"job_minutes_per_month": 0.1})  # 6 seconds
    created = submit(carol, "lab", ipynb=notebook("import time\ntime.sleep(600)"))
    done = wait_job(carol, created["id"], timeout=90)
    assert done["status"] == "timed_out" and done["status_reason"] == "budget", done
    r = carol.post("/api/v1/workspaces/lab/jobs", json={"ipynb": notebook("1")})
    body = fails(r, 429, "budget_exceeded")
    assert body["details"]["limit"] == 0.1 and body["details"]["used"] >= 0.1
    assert body["details"]["resets_at"].endswith("Z")
    assert not marked_processes(svc.settings.data_dir)


def test_idempotency_key_twice_at_once_is_one_job(svc: Service) -> None:
    body = {"ipynb": notebook("print(1)"), "idempotency_key": "nightly-2026-12-01"}

    def post() -> httpx.Response:
        with httpx.Client(base_url=svc.base, headers=svc.admin.http.headers) as c:
            return c.post("/api/v1/workspaces/lab/jobs", json=body, timeout=30)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(), range(4)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 200, 202], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    listed = svc.admin.get("/api/v1/jobs", params={"workspace": "lab"}).json()["items"]
    assert len(listed) == 1


def test_network_none_blocks_a_fetch(svc: Service) -> None:
    """`none` blocks what the default network allows. In a container, the default network
    is the world but not the host's loopback (slirp4netns): the page is served on this
    machine's other address, which a container reaches as any outside one."""
    contained = getattr(svc.ctx.backend, "containers", None) is not None
    outside = outside_address()
    if contained and not outside:
        pytest.skip("no address but the loopback here: nothing a container can reach")
    server = ThreadingHTTPServer(("0.0.0.0", 0), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://{outside}:{server.server_address[1]}/" if contained else f"{svc.base}/healthz"
    fetch = ("import urllib.request\ntry:\n"
             f"    print('fetched', urllib.request.urlopen({url!r}, timeout=5).status)\n"
             "except Exception as exc:\n    print('blocked', type(exc).__name__)")
    isolated = wait_job(svc.admin, submit(svc.admin, "lab", ipynb=notebook(fetch),
                                          network="none")["id"])
    normal = wait_job(svc.admin, submit(svc.admin, "lab", ipynb=notebook(fetch))["id"])
    assert isolated["status"] == normal["status"] == "succeeded", (isolated, normal)
    log_of = lambda j: svc.admin.get(f"/api/v1/jobs/{j['id']}/output",  # noqa: E731
                                     params={"format": "log"}).text
    server.shutdown()
    server.server_close()
    assert "blocked" in log_of(isolated) and "fetched" not in log_of(isolated)
    assert "fetched 200" in log_of(normal)


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def test_retention_removes_outputs_then_410(svc: Service) -> None:
    done = wait_job(svc.admin, submit(svc.admin, "lab", ipynb=notebook("print(1)"))["id"])
    assert svc.admin.get(f"/api/v1/jobs/{done['id']}/output").status_code == 200
    svc.ctx.clock.advance(8 * 86400)
    fails(svc.admin.get(f"/api/v1/jobs/{done['id']}/output", params={"format": "html"}),
          410, "expired")
    bucket = svc.admin.get("/api/v1/workspaces/lab").json()["bucket"]
    wait_until(lambda: not svc.ctx.storage.list(bucket, f"jobs/{done['id']}/"), 30,
               what="the outputs to be removed from the bucket")
    assert job(svc.admin, done["id"])["outputs"] == {"ipynb": None, "html": None, "log": None}


def test_another_user_sees_nothing(svc: Service) -> None:
    created = submit(svc.admin, "lab", ipynb=notebook("print(1)"))
    eve = svc.user("eve@example.org")
    svc.workspace("eves", eve)
    for method, path in (("get", ""), ("post", "/cancel"), ("get", "/output"),
                         ("get", "/stream"), ("get", "/deliveries")):
        fails(getattr(eve, method)(f"/api/v1/jobs/{created['id']}{path}"), 404, "not_found")
    assert eve.get("/api/v1/jobs").json()["items"] == []
    fails(eve.post("/api/v1/workspaces/lab/jobs", json={"ipynb": notebook("1")}), 404,
          "not_found")
    reader = svc.user("rita@example.org")
    svc.admin.put("/api/v1/workspaces/lab/members/rita@example.org", json={"role": "reader"})
    fails(reader.post("/api/v1/workspaces/lab/jobs", json={"ipynb": notebook("1")}), 403,
          "forbidden")
    wait_job(svc.admin, created["id"])


def test_bad_inputs_are_clear_422s(svc: Service) -> None:
    nb = notebook("1")
    cases = [
        ({}, "exactly one of 'notebook'"),
        ({"ipynb": nb, "notebook": "a.ipynb"}, "exactly one of 'notebook'"),
        ({"ipynb": {"hello": "world"}}, "not a valid Jupyter notebook"),
        ({"ipynb": nb, "parameters": {"os.system('x')": 1}}, "not a valid parameter name"),
        ({"ipynb": nb, "parameters": {"1x": 1}}, "not a valid parameter name"),
        ({"ipynb": nb, "time_limit_seconds": 0}, "time_limit_seconds"),
        ({"ipynb": nb, "time_limit_seconds": 10**9}, "time_limit_seconds"),
        ({"ipynb": nb, "network": "host"}, "network"),
        ({"ipynb": nb, "machine_type": "z9-huge"}, "is not offered"),
        ({"ipynb": nb, "labels": {"Bad Key": "x"}}, "label key"),
        ({"ipynb": nb, "webhook": {"url": "ftp://x.example", "secret": "s" * 20}},
         "http:// or https://"),
        ({"ipynb": nb, "webhook": {"url": "https://x.example", "secret": "short"}}, "secret"),
        ({"ipynb": nb, "idempotency_key": "has space"}, "idempotency_key"),
        ({"ipynb": nb, "surprise": 1}, "unknown field"),
        ({"notebook": "../etc/passwd.ipynb"}, "notebook"),
    ]
    for body, words in cases:
        err = fails(svc.admin.post("/api/v1/workspaces/lab/jobs", json=body), 422,
                    "validation_error")
        assert words in err["message"], (body, err)
    kernel = notebook("1")
    kernel["metadata"]["kernelspec"] = {"name": "julia-1.9", "display_name": "Julia"}
    assert "julia-1.9" in fails(svc.admin.post("/api/v1/workspaces/lab/jobs",
                                               json={"ipynb": kernel}), 422,
                                "validation_error")["message"]
    fails(svc.admin.post("/api/v1/workspaces/lab/jobs", json={"notebook": "missing.ipynb"}),
          404, "not_found")
    fails(svc.admin.get("/api/v1/jobs/job-nope"), 404, "not_found")
    fails(svc.admin.get("/api/v1/jobs", params={"status": "sleeping"}), 422, "validation_error")
    fails(svc.admin.put("/api/v1/users/nobody@example.org/limits", json={}), 404, "not_found")
    fails(svc.admin.put("/api/v1/users/admin@localhost/limits", json={"job_concurrency": 0}),
          422, "validation_error")


def test_a_bucket_notebook_runs_and_keeps_its_input(svc: Service) -> None:
    nb = notebook("print('from the bucket')")
    r = svc.admin.put("/api/v1/workspaces/lab/notebooks/content",
                      params={"path": "reports/daily.ipynb"}, json=nb)
    assert r.status_code == 201, r.text
    created = submit(svc.admin, "lab", notebook="reports/daily.ipynb")
    assert created["notebook"] == "reports/daily.ipynb"
    done = wait_job(svc.admin, created["id"])
    assert done["status"] == "succeeded"
    bucket = svc.admin.get("/api/v1/workspaces/lab").json()["bucket"]
    names = {o.name for o in svc.ctx.storage.list(bucket, f"jobs/{created['id']}/")}
    assert names == {f"jobs/{created['id']}/{n}" for n in
                     ("input.ipynb", "output.ipynb", "output.html", "log.txt")}


def test_kernel_picks_the_kernel_and_the_output_names_the_jobs_own_paths(svc: Service
                                                                        ) -> None:
    """`kernel` is papermill's -k: a notebook whose kernelspec names a kernel job compute
    lacks runs on the one chosen (and without a choice, the 422 lists those there are).
    The executed notebook's papermill metadata names the job's bucket paths, nothing of
    the machine that ran it."""
    nb = notebook("import sys; print('on', sys.executable)")
    nb["metadata"]["kernelspec"] = {"name": "python", "display_name": "Python",
                                    "language": "python"}
    err = fails(svc.admin.post("/api/v1/workspaces/lab/jobs", json={"ipynb": nb}), 422,
                "validation_error")
    assert "'python'" in err["message"] and "python3" in err["message"] \
        and '"kernel"' in err["message"], err
    err = fails(svc.admin.post("/api/v1/workspaces/lab/jobs", json={
        "ipynb": nb, "kernel": "cobol"}), 422, "validation_error")
    assert err["details"]["errors"][0]["field"] == "kernel" and "python3" in err["message"]
    r = svc.admin.put("/api/v1/workspaces/lab/notebooks/content",
                      params={"path": "k/choose.ipynb"}, json=nb)
    assert r.status_code == 201, r.text
    created = submit(svc.admin, "lab", notebook="k/choose.ipynb", kernel="python3")
    assert created["kernel"] == "python3"
    done = wait_job(svc.admin, created["id"])
    assert done["status"] == "succeeded", done["error"]
    text = svc.admin.get(f"/api/v1/jobs/{created['id']}/output",
                         params={"format": "ipynb"}).text
    meta = json.loads(text)["metadata"]["papermill"]
    bucket = svc.admin.get("/api/v1/workspaces/lab").json()["bucket"]
    assert meta["input_path"] == f"bucket:{bucket}/notebooks/k/choose.ipynb"
    assert meta["output_path"] == f"bucket:{bucket}/jobs/{created['id']}/output.ipynb"
    assert str(svc.settings.data_dir) not in text and "/run/envmgr" not in text
    # a schedule takes it too, checked as a job's
    fails(svc.admin.post("/api/v1/workspaces/lab/schedules", json={
        "name": "k", "notebook": "k/choose.ipynb", "cron": "0 6 * * *", "kernel": "cobol"}),
        422, "validation_error")
    sched = svc.admin.post("/api/v1/workspaces/lab/schedules", json={
        "name": "k", "notebook": "k/choose.ipynb", "cron": "0 6 * * *", "kernel": "python3"})
    assert sched.status_code == 201 and sched.json()["kernel"] == "python3", sched.text


class Receiver:
    """A plain-HTTP webhook receiver on the loopback that records every request and
    answers each with the next status of its script (the last one repeats)."""

    def __init__(self, *codes: int, location: str | None = None) -> None:
        self.codes = list(codes) or [200]
        self.got: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = outer.codes[min(len(outer.got), len(outer.codes)) - 1]
                self.send_response(code)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_is_signed_and_a_failing_receiver_gets_retries(svc: Service) -> None:
    good, bad = Receiver(200), Receiver(500, 503, 200)
    secret = "s3cret-s3cret-s3cret"
    try:
        ok = submit(svc.admin, "lab", ipynb=notebook("print(1)"),
                    webhook={"url": good.url, "secret": secret})
        retried = submit(svc.admin, "lab", ipynb=notebook("1/0"),
                         webhook={"url": bad.url, "secret": secret})
        wait_until(lambda: good.got, 90, what="the webhook")
        headers, body = good.got[0]
        stamp = headers["x-envmgr-timestamp"]
        expected = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
        assert headers["x-envmgr-signature"] == f"sha256={expected.hexdigest()}"
        payload = json.loads(body)
        assert payload["event"] == "job.finished" and payload["job"]["id"] == ok["id"]
        assert payload["job"]["status"] == "succeeded"
        assert "secret" not in body.decode()
        wait_until(lambda: bad.got, 90, what="the failing webhook's first attempt")
        assert json.loads(bad.got[0][1])["job"]["status"] == "failed"
        deliveries = f"/api/v1/jobs/{retried['id']}/deliveries"
        for attempts in (2, 3):
            # The clock moves only once the last attempt is recorded (its retry is scheduled
            # from the clock as it reads then: moved before, the retry would be later too).
            wait_until(lambda n=attempts: len(svc.admin.get(deliveries).json()["items"])
                       >= n - 1, 30, what=f"attempt {attempts - 1} recorded")
            svc.ctx.clock.advance(webhooks.BACKOFF[attempts - 2] + 1)
            wait_until(lambda n=attempts: len(bad.got) >= n, 30, what=f"attempt {attempts}")
        assert len({h["x-envmgr-delivery"] for h, _ in bad.got}) == 1  # one delivery, retried
        wait_until(lambda: len(svc.admin.get(deliveries).json()["items"]) == 3, 30,
                   what="attempt 3 recorded")
        tried = svc.admin.get(deliveries).json()["items"]
        assert [d["status_code"] for d in tried] == [500, 503, 200], tried
        assert tried[0]["error"] == "answered 500" and tried[2]["error"] is None
        assert job(svc.admin, retried["id"])["webhook"]["state"] == "delivered"
        svc.ctx.clock.advance(3600)
        svc.ctx.wake_jobs()
        assert len(bad.got) == 3  # delivered: never sent again
    finally:
        good.close()
        bad.close()


def test_a_webhook_never_follows_a_redirect(svc: Service) -> None:
    """A receiver's redirect could point anywhere (a loopback service, the metadata
    server): it is an answer, recorded as a failed attempt, never followed."""
    target = Receiver(200)
    bouncer = Receiver(307, location=target.url)
    try:
        done = submit(svc.admin, "lab", ipynb=notebook("print(1)"),
                      webhook={"url": bouncer.url, "secret": "x" * 16})
        deliveries = f"/api/v1/jobs/{done['id']}/deliveries"
        wait_until(lambda: svc.admin.get(deliveries).json()["items"], 90,
                   what="the first attempt recorded")
        first = svc.admin.get(deliveries).json()["items"][0]
        assert first["status_code"] == 307 and first["error"] == "answered 307", first
        assert len(bouncer.got) == 1 and target.got == []
    finally:
        target.close()
        bouncer.close()


def test_webhooks_to_private_addresses_are_refused(make_service: Callable[..., Service]
                                                   ) -> None:
    s = make_service()
    s.workspace("lab", s.admin)
    for url in ("http://127.0.0.1:9/hook", "http://localhost/x", "http://10.1.2.3/x",
                "http://[::1]/x", "http://169.254.169.254/computeMetadata/v1/"):
        err = fails(s.admin.post("/api/v1/workspaces/lab/jobs", json={
            "ipynb": notebook("1"), "webhook": {"url": url, "secret": "x" * 16}}), 422,
            "validation_error")
        assert "private" in err["message"] or "resolve" in err["message"], err


def sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a text/event-stream."""
    event, data = "", ""
    for line in lines:
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif not line and event:
            yield event, json.loads(data)
            event, data = "", ""


def test_stream_shows_progress_and_lines_as_they_happen(svc: Service) -> None:
    nb = notebook("import time\nfor i in range(3):\n    print('line', i, flush=True)\n"
                  "    time.sleep(0.5)", "time.sleep(1)", "print('last')")
    created = submit(svc.admin, "lab", ipynb=nb)
    seen: list[tuple[str, dict[str, Any]]] = []
    status_at_first_line = None
    with svc.admin.http.stream("GET", f"/api/v1/jobs/{created['id']}/stream",
                               timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for event, data in sse(r.iter_lines()):
            seen.append((event, data))
            if event == "log" and status_at_first_line is None:
                status_at_first_line = job(svc.admin, created["id"])["status"]
    assert status_at_first_line == "running"  # a line arrives while the job still runs
    logs = [d["line"] for e, d in seen if e == "log"]
    assert logs == ["line 0", "line 1", "line 2", "last"], logs
    progress = [d for e, d in seen if e == "progress"]
    assert progress[-1]["cells_done"] == 3 and progress[-1]["cells_total"] == 3
    assert any(0 < p["cells_done"] < 3 for p in progress), progress  # seen mid-run
    assert seen[-1][0] == "end" and seen[-1][1]["status"] == "succeeded"
    with svc.admin.http.stream("GET", f"/api/v1/jobs/{created['id']}/stream",
                               headers={"Last-Event-ID": "0"}) as again:
        replay = [d["line"] for e, d in sse(again.iter_lines()) if e == "log"]
    assert replay == logs  # a finished job's stream replays its lines, then ends


def test_infrastructure_failure_is_retried(svc: Service) -> None:
    nb = notebook("import time\ntime.sleep(3)\nprint('made it')")
    created = submit(svc.admin, "lab", ipynb=nb)
    wait_until(lambda: job(svc.admin, created["id"])["progress"]["current_cell"] is not None,
               90, what="the cell to start")
    for p in marked_processes(svc.settings.data_dir):  # the machine "dies" under the job
        p.kill()
    done = wait_job(svc.admin, created["id"], timeout=90)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    reasons = [e["reason"] for e in svc.admin.get(f"/api/v1/jobs/{created['id']}/events"
                                                  ).json()["items"]]
    assert any(r.startswith("retrying after an infrastructure failure") for r in reasons)
    # the failed attempt's log stays in the bucket, to say what went wrong
    bucket = svc.admin.get("/api/v1/workspaces/lab").json()["bucket"]
    names = {o.name for o in svc.ctx.storage.list(bucket, f"jobs/{created['id']}/attempts/")}
    assert f"jobs/{created['id']}/attempts/1/log.txt" in names, names


def test_a_time_limit_decided_by_a_leader_that_died_is_carried_out_not_retried(
        svc: Service) -> None:
    """The leader recorded the time limit's decision and killed the runner, then died
    before writing `timed_out`: the next pass finds a dead runner with no result and the
    decision, and ends the job timed out, once (it never runs the notebook again)."""
    from envmgr.core.models import Job as JobRow
    created = submit(svc.admin, "lab", ipynb=notebook("import time\ntime.sleep(600)"))
    wait_until(lambda: job(svc.admin, created["id"])["progress"]["current_cell"] is not None,
               90, what="the cell to start")
    decision = {"to": "timed_out", "reason": "time limit", "error": {
        "kind": "timeout", "message": "ran past its time limit of 60 s and was stopped",
        "cell": None, "ename": None, "evalue": None}}
    with svc.ctx.tx() as s:  # what the dead leader left: the decision...
        row = s.get(JobRow, created["id"])
        assert row is not None
        row.ending = decision
        s.add(row)
    for p in marked_processes(svc.settings.data_dir):  # ...and a killed runner
        p.kill()
    done = wait_job(svc.admin, created["id"], "timed_out", timeout=90)
    assert done["attempts"] == 1 and done["error"]["kind"] == "timeout", done
    reasons = [e["reason"] for e in svc.admin.get(f"/api/v1/jobs/{created['id']}/events"
                                                  ).json()["items"]]
    assert not any("infrastructure" in r for r in reasons), reasons


def test_outputs_go_to_a_gcs_bucket(make_service: Callable[..., Service], fake_gcs: Any) -> None:
    """The same job with the workspace's bucket on GCS (the real fake-gcs-server)."""
    s = make_service(job_poll_seconds=0.1, storage="gcs", gcs_endpoint=fake_gcs.url,
                     bucket_prefix=f"t{uuid.uuid4().hex[:8]}-")
    s.workspace("lab", s.admin)
    nb = notebook("print('to gcs', x)", parameters="x = 0")
    assert s.admin.put("/api/v1/workspaces/lab/notebooks/content",
                       params={"path": "g.ipynb"}, json=nb).status_code == 201
    done = wait_job(s.admin, submit(s.admin, "lab", notebook="g.ipynb",
                                    parameters={"x": 42})["id"])
    assert done["status"] == "succeeded", done
    bucket = s.admin.get("/api/v1/workspaces/lab").json()["bucket"]
    data, _ = s.ctx.storage.read(bucket, done["outputs"]["log"])
    assert b"to gcs 42" in data
    assert "to gcs 42" in s.admin.get(f"/api/v1/jobs/{done['id']}/output",
                                      params={"format": "html"}).text


def test_compute_left_behind_by_a_crash_is_removed(svc: Service) -> None:
    """A leader that died after recording a job's end but before removing its compute
    leaves a folder (locally) or a VM (GCE): the next retention pass removes it."""
    done = wait_job(svc.admin, submit(svc.admin, "lab", ipynb=notebook("1"))["id"])
    leftover = svc.settings.data_dir / "local" / "jobs" / done["id"]
    leftover.mkdir(parents=True, exist_ok=True)  # (its own removal may still be under way)
    (leftover / "events.jsonl").write_text("")
    stray = svc.settings.data_dir / "local" / "jobs" / "job-unknown"
    stray.mkdir()
    wait_until(lambda: not leftover.exists() and not stray.exists(), 30,
               what="the leftover job folders to go")


def test_a_notebook_cannot_forge_or_jam_its_progress(svc: Service) -> None:
    """The events file is the job user's: a cell appending forged events (a huge sequence
    number that would stop every later line, booleans, out-of-range cells) changes nothing."""
    forge = ("import json\nwith open('../events.jsonl', 'a') as f:\n"
             "    for ev in ({'seq': 99999999999, 'kind': 'log', 'line': 'forged'},\n"
             "               {'seq': True, 'kind': 'log', 'line': 'forged'},\n"
             "               {'seq': -5, 'kind': 'cell', 'state': 'start', 'total': 10**12}):\n"
             "        f.write(json.dumps(ev) + '\\n')\nprint('after the forgery', flush=True)")
    done = wait_job(svc.admin, submit(svc.admin, "lab", ipynb=notebook(forge, "print('end')"))
                    ["id"])
    assert done["status"] == "succeeded", done
    lines = [d["line"] for e, d in sse(svc.admin.get(f"/api/v1/jobs/{done['id']}/stream")
                                       .iter_lines()) if e == "log"]
    assert "forged" not in lines and lines[-2:] == ["after the forgery", "end"], lines
    assert done["progress"]["cells_total"] == 2
