"""The job rules without processes: the state machine table, webhook signatures and address
rules, parameter names and values, the budget's month."""

from __future__ import annotations

import hashlib
import hmac
import socket
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from envmgr.core.db import make_engine, migrate, write_session
from envmgr.core.errors import APIError
from envmgr.core.models import Event, Job, User, Workspace
from envmgr.jobs import webhooks
from envmgr.jobs.limits import month_window, used_seconds
from envmgr.jobs.machine import ALLOWED, STABLE, move_job
from envmgr.jobs.service import check_parameters
from envmgr.jobs.webhooks import BACKOFF, MAX_ATTEMPTS, BadWebhook, check_url, signature
from envmgr.runtimes.machine import Conflict


def test_stable_statuses_are_final() -> None:
    for to, sources in ALLOWED.items():
        assert not sources & STABLE, f"{to} reachable from a stable status: {sources & STABLE}"
    assert set(ALLOWED) | {"queued"} >= {"queued", "starting", "running", "succeeded",
                                         "failed", "timed_out", "canceling", "canceled"}


def test_webhook_signature_is_hmac_of_timestamp_and_body() -> None:
    body = b'{"event": "job.finished"}'
    expected = hmac.new(b"k" * 16, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature("k" * 16, 1700000000, body) == f"sha256={expected}"
    assert signature("k" * 16, 1700000001, body) != signature("k" * 16, 1700000000, body)


def test_webhook_retries_span_about_an_hour() -> None:
    assert MAX_ATTEMPTS >= 5
    assert 55 * 60 <= sum(BACKOFF) <= 75 * 60


@pytest.mark.parametrize("url, words", [
    ("ftp://example.org/x", "http:// or https://"),
    ("https://user:pw@example.org/", "user name or password"),
    ("http://127.0.0.1:8000/", "loopback, private or reserved"),
    ("http://10.0.0.8/", "loopback, private or reserved"),
    ("http://192.168.1.1/", "loopback, private or reserved"),
    ("http://169.254.169.254/computeMetadata/v1/", "loopback, private or reserved"),
    ("http://[::ffff:127.0.0.1]/", "loopback, private or reserved"),
    ("http://[::1]/", "loopback, private or reserved"),
    ("http://0.0.0.0/", "loopback, private or reserved"),
    ("http://[bad/", "not a URL"),
    ("http://no-such-host.invalid/", "does not resolve"),
])
def test_webhook_urls_that_are_refused(url: str, words: str) -> None:
    with pytest.raises(BadWebhook, match=words):
        check_url(url, allow_private=False)


@pytest.mark.parametrize("addr", [
    "::7f00:1", "::127.0.0.1",  # IPv4-compatible
    "::ffff:127.0.0.1", "::ffff:0:7f00:1",  # mapped, SIIT
    "64:ff9b::a9fe:a9fe", "64:ff9b:1::8.8.8.8",  # NAT64 (the metadata server, and a public)
    "2002:7f00:1::1", "2002:808:808::1",  # 6to4
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "fec0::1",  # site-local
    "fe80::1", "fc00::1", "ff02::1", "100.64.0.1", "198.18.0.1", "240.0.0.1",
])
def test_webhook_addresses_in_disguise_are_refused(addr: str) -> None:
    with pytest.raises(BadWebhook, match="loopback, private or reserved"):
        check_url(f"http://[{addr}]/" if ":" in addr else f"http://{addr}/",
                  allow_private=False)


class _Resolver:
    """A stand-in DNS: answers from a table, a different answer each time if given a list,
    and remembers what it was asked."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers, self.asked = answers, []  # type: ignore[var-annotated]

    def __call__(self, host: str, port: int, **kw: Any) -> list[Any]:
        self.asked.append(host)
        addrs = self.answers[host]
        addr = addrs[min(len(self.asked) - 1, len(addrs) - 1)]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addr, port))]


def test_a_webhook_connects_to_the_address_it_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real HTTP: the name is resolved once, by the check, and the request goes to that
    address with the name only in Host: this machine's resolver knows neither name, so the
    delivery reaching the listener proves no second resolution happened. A rebinding
    resolver (loopback the second time) never gets a second question."""
    got: list[str] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name, asked in (("hook.example", "hook.example"),
                            ("faß.example", "xn--fa-hia.example")):  # IDNA 2008, not "fass"
            stand_in = _Resolver({asked: ["127.0.0.1", "127.0.0.9"]})
            monkeypatch.setattr(webhooks, "resolve", stand_in)
            target = webhooks.pin(f"http://{name}:{port}/hook?x=1", allow_private=True)
            assert target.url == f"http://127.0.0.1:{port}/hook?x=1"
            args = target.request_args()
            r = httpx.post(target.url, content=b"{}", headers=args["headers"])
            assert r.status_code == 204
            assert got[-1] == f"{asked}:{port}" and stand_in.asked == [asked]
            # Public only: the same rebinding name is refused at once, never half-checked.
            with pytest.raises(BadWebhook, match="loopback, private or reserved"):
                webhooks.pin(f"http://{name}:{port}/hook", allow_private=False)
    finally:
        server.shutdown()
    with pytest.raises(BadWebhook, match="not a valid internationalised name"):
        webhooks.pin("http://a\u200db.example/", allow_private=True)


def test_private_webhooks_when_allowed() -> None:
    assert check_url("http://127.0.0.1:9/hook", allow_private=True)
    assert check_url("http://8.8.8.8/hook", allow_private=False)  # a public literal


@pytest.mark.parametrize("params", [
    {"os.system('x')": 1}, {"1a": 1}, {"a b": 1}, {"None": 1}, {"x" * 101: 1},
    {"import": 1}, {"lambda": 1}, {"class": 1},  # keywords: a SyntaxError once injected
    {"a": float("nan")}, {"a": float("inf")}, {"a": {"b": [float("-inf")]}},
    {"a": "x" * 70_000},
])
def test_bad_parameters(params: dict[str, object]) -> None:
    with pytest.raises(APIError) as exc:
        check_parameters(params)
    assert exc.value.status == 422


def test_good_parameters() -> None:
    good = {"alpha": 0.1, "name": "x'); import os; ('", "n": 3, "flags": [True, None],
            "cfg": {"k": [1, 2.5]}, "_private": "ok"}
    assert check_parameters(good) == good


def test_month_window_rolls_over_the_year() -> None:
    start, nxt = month_window(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert start == datetime(2026, 12, 1, tzinfo=UTC) and nxt == datetime(2027, 1, 1, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path):  # type: ignore[no-untyped-def]
    e = make_engine(f"sqlite:///{tmp_path / 'j.db'}")
    migrate(e)
    with write_session(e) as s:
        s.add(User(id="u-1", email="u@example.org"))
        s.flush()
        s.add(Workspace(id="ws-1", name="w", bucket="b", created_by="u-1"))
    return e


def _job(engine, job_id: str, status: str, started: datetime | None = None,  # type: ignore[no-untyped-def]
         finished: datetime | None = None) -> None:
    with write_session(engine) as s:
        s.add(Job(id=job_id, workspace_id="ws-1", owner_id="u-1", status=status,
                  machine_type="e2-standard-4", time_limit_seconds=60, started_at=started,
                  finished_at=finished))


def test_used_seconds_clips_to_the_month(engine) -> None:  # type: ignore[no-untyped-def]
    now = datetime(2026, 12, 10, 12, tzinfo=UTC)
    _job(engine, "job-old", "succeeded", datetime(2026, 11, 30, 23, 50, tzinfo=UTC),
         datetime(2026, 12, 1, 0, 10, tzinfo=UTC))  # 10 minutes of it in December
    _job(engine, "job-now", "running", now - timedelta(minutes=5))
    _job(engine, "job-nov", "succeeded", datetime(2026, 11, 2, tzinfo=UTC),
         datetime(2026, 11, 3, tzinfo=UTC))
    _job(engine, "job-queued", "queued")
    from sqlmodel import Session
    with Session(engine) as s:
        assert used_seconds(s, "u-1", now) == pytest.approx(15 * 60)


def test_move_job_is_a_compare_and_set_with_an_event(engine) -> None:  # type: ignore[no-untyped-def]
    _job(engine, "job-a", "queued")
    now = datetime(2026, 12, 1, tzinfo=UTC)
    with write_session(engine, now) as s:
        stale = s.get(Job, "job-a")
        assert stale is not None
    with write_session(engine, now) as s:
        fresh = s.get(Job, "job-a")
        assert fresh is not None
        move_job(s, fresh, "starting", "attempt 1")
    with pytest.raises(Conflict), write_session(engine, now) as s:
        move_job(s, stale, "canceled", "too late")  # the row moved: this copy loses
    with pytest.raises(ValueError), write_session(engine, now) as s:
        job = s.get(Job, "job-a")
        assert job is not None
        move_job(s, job, "succeeded", "not from starting")
    from sqlmodel import Session, select
    with Session(engine) as s:
        events = s.exec(select(Event).where(Event.resource_id == "job-a")).all()
    assert [(e.from_status, e.to_status, e.reason) for e in events] == [
        ("queued", "starting", "attempt 1")]


@pytest.mark.slow
@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="images copy a venv's tree")
def test_building_an_image_leaves_the_venv_and_other_images_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Images are hard links of the venv: the image's own pyvenv.cfg must be a new file, or
    writing it rewrites the venv's (and every image's) through the link."""
    from envmgr.backends.local.sandbox import runtime_python
    venv_cfg = Path(sys.prefix) / "pyvenv.cfg"
    before = venv_cfg.read_text()
    one = Path(runtime_python(tmp_path / "a")).parent.parent
    two = Path(runtime_python(tmp_path / "b")).parent.parent
    assert venv_cfg.read_text() == before
    assert str(one) in (one / "pyvenv.cfg").read_text()
    assert str(two) in (two / "pyvenv.cfg").read_text()
    assert (one / "pyvenv.cfg").stat().st_ino != venv_cfg.stat().st_ino


def test_a_webhook_to_an_ipv6_literal_keeps_its_brackets_in_host() -> None:
    """Host is `[addr]:port` for an IPv6 literal (RFC 9110), as the URL names it."""
    target = webhooks.pin("http://[::1]:8443/hook", allow_private=True)
    assert target.url == "http://[::1]:8443/hook"
    assert target.request_args()["headers"] == {"Host": "[::1]:8443"}


def test_the_failing_cell_is_named_as_the_author_sees_the_notebook() -> None:
    """papermill runs another list of cells than the one submitted: it injects a parameters
    cell and drops an earlier run's error markers. The index a job reports is the one in
    the notebook as submitted (issue: "the failing cell is misreported")."""
    import nbformat
    from envmgr_runner.runner import ERROR_MARKER, INJECTED, _source_index
    v4 = nbformat.v4

    def tagged(kind: str, tag: str, source: str = "") -> Any:
        make = v4.new_code_cell if kind == "code" else v4.new_markdown_cell
        return make(source, metadata={"tags": [tag]})
    params = tagged("code", "parameters", "x = 1")
    raising = v4.new_code_cell("raise ValueError(x)")
    # Right after the parameters: submitted [md, params, raise]; ran [md, params, injected,
    # raise] -> cell 2, not 3 (nor the markdown cell papermill's marker shifts to).
    submitted = v4.new_notebook(cells=[v4.new_markdown_cell("# t"), params, raising])
    ran = [submitted.cells[0], params, tagged("code", INJECTED, "x = 2"), raising]
    assert _source_index(submitted, ran, 3) == 2
    # Two cells, the second raises.
    two = v4.new_notebook(cells=[v4.new_code_cell("y = 1"), raising])
    assert _source_index(two, list(two.cells), 1) == 1
    # Submitted again after a failed run: an earlier run's markers and injected cell are in
    # it; papermill dropped the markers and replaced the injected cell.
    again = v4.new_notebook(cells=[tagged("markdown", ERROR_MARKER), params,
                                   tagged("code", INJECTED, "x = 3"), v4.new_code_cell("ok = 1"),
                                   tagged("markdown", ERROR_MARKER), raising])
    ran = [params, tagged("code", INJECTED, "x = 4"), again.cells[3], raising]
    assert _source_index(again, ran, 3) == 5
    # The injected cell itself: where it ran, after the parameters cell.
    assert _source_index(submitted, [submitted.cells[0], params,
                                     tagged("code", INJECTED)], 2) == 2
