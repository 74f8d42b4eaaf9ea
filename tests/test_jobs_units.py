"""The job rules without processes: the state machine table, webhook signatures and address
rules, parameter names and values, the budget's month."""

from __future__ import annotations

import hashlib
import hmac
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from envmgr.core.db import make_engine, migrate, write_session
from envmgr.core.errors import APIError
from envmgr.core.models import Event, Job, User, Workspace
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


def test_private_webhooks_when_allowed() -> None:
    assert check_url("http://127.0.0.1:9/hook", allow_private=True)
    assert check_url("http://8.8.8.8/hook", allow_private=False)  # a public literal


@pytest.mark.parametrize("params", [
    {"os.system('x')": 1}, {"1a": 1}, {"a b": 1}, {"None": 1}, {"x" * 101: 1},
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
