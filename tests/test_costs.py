"""Cost accrual and reports: exact figures from a known event log, and the API's rules."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa
from alembic import command

from envmgr.core.db import alembic_config, make_engine, migrate, write_session
from envmgr.core.models import (
    CostDaily,
    CostGroupMonthly,
    Disk,
    Event,
    Membership,
    Runtime,
    User,
    Workspace,
)
from envmgr.costs.accrual import accrue_all, split_by_day
from envmgr.costs.catalog import load_catalog
from envmgr.costs.report import report
from tests.conftest import Service

CAT = load_catalog()
E2 = float(CAT.machine_micros_per_hour("e2-standard-4")) / 1e6  # dollars per hour
N2 = float(CAT.machine_micros_per_hour("n2-standard-8")) / 1e6
DISK_H = float(CAT.disk_micros_per_hour("pd-balanced", 100)) / 1e6


def t(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def test_split_by_day_at_midnight() -> None:
    hour = 3600 * 10**6  # microseconds
    assert list(split_by_day(t(1, 23), t(2, 1))) == [(date(2026, 3, 1), hour),
                                                    (date(2026, 3, 2), hour)]
    assert list(split_by_day(t(2, 0), t(2, 0))) == []


@pytest.fixture
def ledger(db_url: str):  # type: ignore[no-untyped-def]
    """A runtime across midnight, a machine-type change, then deleted keeping its disk."""
    engine = make_engine(db_url)
    migrate(engine)
    events = [
        ("runtime", "rt-a", None, "creating", t(1, 23), {"machine_type": "e2-standard-4"}),
        ("disk", "pd-a", None, "creating", t(1, 23), {"size_gb": 100, "type": "pd-balanced"}),
        ("disk", "pd-a", "creating", "ready", t(1, 23), {"size_gb": 100, "type": "pd-balanced"}),
        ("runtime", "rt-a", "creating", "running", t(1, 23), {"machine_type": "e2-standard-4"}),
        ("runtime", "rt-a", "running", "pausing", t(2, 1), {"machine_type": "e2-standard-4"}),
        ("runtime", "rt-a", "pausing", "paused", t(2, 1), {"machine_type": "e2-standard-4"}),
        ("runtime", "rt-a", "paused", "updating", t(2, 10), {"machine_type": "e2-standard-4"}),
        ("runtime", "rt-a", "updating", "paused", t(2, 10, 1), {"machine_type": "n2-standard-8"}),
        ("runtime", "rt-a", "paused", "resuming", t(2, 12), {"machine_type": "n2-standard-8"}),
        ("runtime", "rt-a", "resuming", "running", t(2, 12), {"machine_type": "n2-standard-8"}),
        ("runtime", "rt-a", "running", "deleting", t(2, 13), {"machine_type": "n2-standard-8"}),
        ("runtime", "rt-a", "deleting", "deleted", t(2, 13), {"machine_type": "n2-standard-8"}),
        ("disk", "pd-a", "ready", "deleting", t(3, 23), {"size_gb": 100, "type": "pd-balanced"}),
        ("disk", "pd-a", "deleting", "deleted", t(3, 23), {"size_gb": 100, "type": "pd-balanced"}),
    ]
    with write_session(engine) as s:
        s.add(User(id="u-a", email="ann@example.org"))
        s.flush()
        s.add(Workspace(id="ws-a", name="geo", bucket="b", created_by="u-a"))
        s.flush()
        s.add(Membership(workspace_id="ws-a", user_id="u-a", role="owner"))
        s.add(Runtime(id="rt-a", workspace_id="ws-a", owner_id="u-a", status="deleted",
                      machine_type="n2-standard-8", disk_id="pd-a", labels={"team": "maps"}))
        s.add(Disk(id="pd-a", workspace_id="ws-a", owner_id="u-a", status="deleted",
                   size_gb=100, type="pd-balanced"))
        for resource, rid, frm, to, at, detail in events:
            s.add(Event(resource=resource, resource_id=rid, from_status=frm, to_status=to,
                        reason="test", at=at, detail=detail))
    return engine


def test_accrual_is_exact_across_midnight_type_change_and_kept_disk(ledger) -> None:  # type: ignore[no-untyped-def]
    now = t(10, 0)
    assert accrue_all(ledger, CAT, now) == 14
    assert accrue_all(ledger, CAT, now) == 0  # idempotent: the watermark moved
    with ledger.connect() as c:
        rows = {(r.day.isoformat(), r.resource_id, r.machine_type): (r.compute_micros / 1e6,
                                                                      r.disk_micros / 1e6)
                for r in c.execute(CostDaily.__table__.select()).all()}
    assert rows[("2026-03-01", "rt-a", "e2-standard-4")][0] == pytest.approx(E2, abs=1e-6)
    assert rows[("2026-03-02", "rt-a", "e2-standard-4")][0] == pytest.approx(E2, abs=1e-6)
    assert rows[("2026-03-02", "rt-a", "n2-standard-8")][0] == pytest.approx(N2, abs=1e-6)
    assert rows[("2026-03-01", "pd-a", "")][1] == pytest.approx(DISK_H, abs=1e-6)
    assert rows[("2026-03-02", "pd-a", "")][1] == pytest.approx(24 * DISK_H, abs=1e-6)
    assert rows[("2026-03-03", "pd-a", "")][1] == pytest.approx(23 * DISK_H, abs=1e-6)

    r = report(ledger, CAT, date(2026, 3, 1), date(2026, 3, 31), "machine_type", "day", now)
    by = {g["key"]: g for g in r["groups"]}
    assert by["e2-standard-4"]["total"] == pytest.approx(2 * E2, abs=1e-4)
    assert by["n2-standard-8"]["total"] == pytest.approx(N2, abs=1e-4)
    assert by["(disks)"]["disk"] == pytest.approx(48 * DISK_H, abs=1e-4)
    assert r["total"] == pytest.approx(2 * E2 + N2 + 48 * DISK_H, abs=1e-3)
    month = report(ledger, CAT, date(2026, 3, 1), date(2026, 3, 31), "user", "month", now)
    assert month["groups"][0]["key"] == "ann@example.org"
    assert month["groups"][0]["series"] == [{"period": "2026-03",
                                             "amount": pytest.approx(r["total"], abs=1e-3)}]
    week = report(ledger, CAT, date(2026, 3, 1), date(2026, 3, 31), "label:team", "week", now)
    assert {g["key"] for g in week["groups"]} == {"maps", "(disks)"}
    assert [p["period"] for p in week["groups"][0]["series"]] == ["2026-02-23", "2026-03-02"]
    only_2nd = report(ledger, CAT, date(2026, 3, 2), date(2026, 3, 2), "workspace", "day", now)
    assert only_2nd["groups"][0]["key"] == "geo"
    assert only_2nd["total"] == pytest.approx(E2 + N2 + 24 * DISK_H, abs=1e-4)
    empty = report(ledger, CAT, date(2025, 1, 1), date(2025, 1, 31), "user", "day", now)
    assert empty["total"] == 0 and empty["groups"] == []


def test_two_folding_at_once_is_a_race_not_an_error(ledger, caplog) -> None:  # type: ignore[no-untyped-def]
    """Two replicas fold the same events at the same moment (threads here, each with its
    own connections): one wins, the other reads again; nothing is counted twice and
    nothing is logged as an error."""
    import threading
    now = t(10, 0)
    start = threading.Barrier(4)
    folded: list[int] = []

    def fold() -> None:
        start.wait()
        folded.append(accrue_all(ledger, CAT, now))
    threads = [threading.Thread(target=fold) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sum(folded) == 14 and len(folded) == 4, folded
    with ledger.connect() as c:
        rows = {(r.day.isoformat(), r.resource_id, r.machine_type): r.compute_micros / 1e6
                for r in c.execute(CostDaily.__table__.select()).all()}
    assert rows[("2026-03-02", "rt-a", "n2-standard-8")] == pytest.approx(N2, abs=1e-6)
    assert rows[("2026-03-01", "rt-a", "e2-standard-4")] == pytest.approx(E2, abs=1e-6)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_cost_api_rules(sqlite_service: Service) -> None:
    svc = sqlite_service
    ann = svc.user("ann@example.org")
    url = "/api/v1/admin/costs"
    r = ann.get(url)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    for params, field in (({"start": "yesterday"}, "start"),
                          ({"start": "2026-03-10", "end": "2026-03-01"}, "start"),
                          ({"group_by": "colour"}, "group_by"),
                          ({"group_by": "label:Bad Key"}, "group_by"),
                          ({"granularity": "hour"}, "granularity")):
        r = svc.admin.get(url, params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"]["details"]["errors"][0]["field"] == field
    assert "user, workspace, machine_type, label:<key>" in svc.admin.get(
        url, params={"group_by": "x"}).json()["error"]["message"]
    empty = svc.admin.get(url, params={"start": "2020-01-01", "end": "2020-01-31"}).json()
    assert empty["total"] == 0 and empty["groups"] == [] and empty["currency"] == "USD"
    csv = svc.admin.get(url, headers={"Accept": "text/csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0] == "group,period,amount_usd"

    # Live: a running runtime bills compute and disk right away, seen by its owner.
    svc.workspace("geo", ann)
    rid = ann.create_runtime("geo", autopause_minutes=0)["id"]
    ann.wait_status(rid, "running")
    svc.ctx.clock.advance(3600)
    mine = ann.get("/api/v1/me/costs").json()
    assert mine["groups"][0]["key"] == "geo"
    assert mine["groups"][0]["compute"] == pytest.approx(E2, rel=0.05)
    assert mine["groups"][0]["disk"] > 0
    everyone = svc.admin.get(url, params={"group_by": "user"}).json()
    assert [g["key"] for g in everyone["groups"]] == ["ann@example.org"]
    other = svc.user("bob@example.org")
    assert other.get("/api/v1/me/costs").json()["groups"] == []


def test_a_disk_with_no_events_is_rolled_up_day_by_day(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    migrate(engine)
    with write_session(engine) as s:
        s.add(User(id="u-a", email="ann@example.org"))
        s.flush()
        s.add(Workspace(id="ws-a", name="geo", bucket="b", created_by="u-a"))
        s.flush()
        s.add(Disk(id="pd-k", workspace_id="ws-a", owner_id="u-a", status="ready",
                   size_gb=100, type="pd-balanced"))
        s.add(Event(resource="disk", resource_id="pd-k", from_status=None, to_status="ready",
                    reason="kept", at=t(1, 0), detail={"size_gb": 100, "type": "pd-balanced"}))
    now = t(5, 12)
    accrue_all(engine, CAT, now)
    with engine.connect() as c:
        days = sorted((r.day.day, r.disk_micros / 1e6) for r in
                      c.execute(CostDaily.__table__.select()).all())
    assert days == [(d, round(24 * DISK_H, 6)) for d in (1, 2, 3, 4)]  # folded, not live
    r = report(engine, CAT, date(2026, 3, 1), date(2026, 3, 5), "workspace", "day", now)
    assert r["total"] == pytest.approx((4 * 24 + 12) * DISK_H, abs=1e-4)
    assert r["groups"][0]["series"][-1] == {"period": "2026-03-05",
                                           "amount": pytest.approx(12 * DISK_H, abs=1e-4)}


def _totals(r: dict) -> dict[str, float]:  # type: ignore[type-arg]
    return {g["key"]: round(g["total"], 6) for g in r["groups"]}


def test_monthly_rollup_and_live_paths_agree_with_day_by_day(ledger) -> None:  # type: ignore[no-untyped-def]
    """A monthly report reads whole months from the monthly rollup and the edges from the
    daily one; what bills today is summed by the database, older open intervals in Python.
    Every path must give the same money as adding up days."""
    with write_session(ledger) as s:
        s.add(Runtime(id="rt-b", workspace_id="ws-a", owner_id="u-a", status="running",
                      machine_type="e2-standard-4", labels={"team": "ocean"}))
        for frm, to in ((None, "creating"), ("creating", "running")):
            s.add(Event(resource="runtime", resource_id="rt-b", from_status=frm, to_status=to,
                        reason="test", at=t(30, 6), detail={"machine_type": "e2-standard-4"}))
    accrue_all(ledger, CAT, t(30, 9))
    for now, live_hours in ((t(30, 9), 3), (t(31, 2), 20)):  # today only; then behind a day
        for group_by in ("user", "workspace", "machine_type", "label:team"):
            for start, end in ((date(2026, 3, 1), date(2026, 3, 31)),
                               (date(2026, 2, 14), date(2026, 4, 2)),
                               (date(2026, 3, 2), date(2026, 3, 30))):
                month = report(ledger, CAT, start, end, group_by, "month", now)
                day = report(ledger, CAT, start, end, group_by, "day", now)
                assert _totals(month) == pytest.approx(_totals(day), abs=1e-6), (group_by, start)
        full = report(ledger, CAT, date(2026, 3, 1), date(2026, 3, 31), "label:team", "day", now)
        by = {g["key"]: g for g in full["groups"]}
        assert by["ocean"]["total"] == pytest.approx(live_hours * E2, abs=1e-4)
        assert by["maps"]["total"] == pytest.approx(2 * E2 + N2, abs=1e-4)
    # Behind a day: the live part is split at midnight.
    r = report(ledger, CAT, date(2026, 3, 30), date(2026, 3, 31), "workspace", "day", t(31, 2))
    assert r["groups"][0]["series"] == [
        {"period": "2026-03-30", "amount": pytest.approx(18 * E2, abs=1e-4)},
        {"period": "2026-03-31", "amount": pytest.approx(2 * E2, abs=1e-4)}]


def test_monthly_rollup_is_filled_from_the_daily_one_on_upgrade(db_url: str) -> None:
    engine = make_engine(db_url)
    command.upgrade(alembic_config(engine), "0003")
    old = sa.table("cost_group_daily", *(sa.column(n) for n in (  # as of 0003: dollars
        "dimension", "day", "key", "compute_usd", "disk_usd")))
    with engine.begin() as c:
        c.execute(old.insert(), [
            {"dimension": "user", "day": date(2026, 3, d), "key": "u-a", "compute_usd": 1.0,
             "disk_usd": 0.5} for d in (1, 2, 31)] + [
            {"dimension": "user", "day": date(2026, 4, 1), "key": "u-a", "compute_usd": 2.0,
             "disk_usd": 0.0}])
    migrate(engine)
    with engine.connect() as c:
        rows = sorted((r.month, r.compute_micros, r.disk_micros) for r in
                      c.execute(CostGroupMonthly.__table__.select()).all())
    # Filled from the daily rollup (0004), then carried over to micro-dollars (0007).
    assert rows == [(date(2026, 3, 1), 3_000_000, 1_500_000), (date(2026, 4, 1), 2_000_000, 0)]


def test_money_is_exact_micro_dollars() -> None:
    """A month of one-second intervals sums to the month's price to the micro-dollar, and
    the JSON and CSV forms come from the integer."""
    from decimal import Decimal

    from envmgr.costs.money import from_usd, micros, per_hour_for, usd, usd_text
    rate = CAT.machine_micros_per_hour("e2-standard-4")
    assert rate == Decimal("134012")  # 0.134012 $/h read as a decimal, not 0.13401199...
    second = 10**6
    total = sum((per_hour_for(rate, second) for _ in range(730 * 3600)), Decimal(0))
    assert micros(total) == 134012 * 730
    assert usd(micros(total)) == 97.82876 and usd_text(97828760) == "97.828760"
    assert from_usd(usd(123456789)) == 123456789
    assert micros(Decimal("2.5")) == 2 and micros(Decimal("3.5")) == 4  # half to even


def test_a_job_bills_like_a_runtime_as_a_jobs_line(db_url: str) -> None:
    """A job's compute (starting to its end) is billed at its machine type's price and shows
    as `jobs` per user and workspace, in the totals and under its labels, accrued or still
    running."""
    from envmgr.core.models import Job
    engine = make_engine(db_url)
    migrate(engine)
    with write_session(engine) as s:
        s.add(User(id="u-j", email="jo@example.org"))
        s.flush()
        s.add(Workspace(id="ws-j", name="etl", bucket="bj", created_by="u-j"))
        s.flush()
        s.add(Job(id="job-a", workspace_id="ws-j", owner_id="u-j", status="succeeded",
                  machine_type="e2-standard-4", time_limit_seconds=3600,
                  labels={"team": "maps"}))
        s.add(Job(id="job-b", workspace_id="ws-j", owner_id="u-j", status="running",
                  machine_type="n2-standard-8", time_limit_seconds=3600))
        for rid, frm, to, at in (("job-a", None, "queued", t(5, 9)),
                                 ("job-a", "queued", "starting", t(5, 10)),
                                 ("job-a", "starting", "running", t(5, 10, 1)),
                                 ("job-a", "running", "succeeded", t(5, 12)),
                                 ("job-b", None, "queued", t(6, 8)),
                                 ("job-b", "queued", "starting", t(6, 9))):
            mt = "e2-standard-4" if rid == "job-a" else "n2-standard-8"
            s.add(Event(resource="job", resource_id=rid, from_status=frm, to_status=to,
                        reason="test", at=at, detail={"machine_type": mt}))
    now = t(6, 10)  # job-b has run for an hour, still running: billed live
    accrue_all(engine, CAT, now)
    by_user = report(engine, CAT, date(2026, 3, 1), date(2026, 3, 31), "user", "day", now)
    [jo] = by_user["groups"]
    assert jo["key"] == "jo@example.org" and jo["compute"] == 0 and jo["disk"] == 0
    assert jo["jobs"] == pytest.approx(2 * E2 + N2, abs=2e-6), jo
    assert jo["total"] == jo["jobs"]
    by_ws = report(engine, CAT, date(2026, 3, 1), date(2026, 3, 31), "workspace", "day",
                   now)
    assert by_ws["groups"][0]["key"] == "etl" and by_ws["groups"][0]["jobs"] == jo["jobs"]
    by_team = {g["key"]: g for g in report(engine, CAT, date(2026, 3, 1), date(2026, 3, 31),
                                           "label:team", "month", now)["groups"]}
    assert by_team["maps"]["jobs"] == pytest.approx(2 * E2, abs=2e-6)
    assert by_team["(none)"]["jobs"] == pytest.approx(N2, abs=2e-6)
    own = report(engine, CAT, date(2026, 3, 1), date(2026, 3, 31), "workspace", "day", now,
                 owner_id="u-j")
    assert own["groups"][0]["jobs"] == pytest.approx(2 * E2 + N2, abs=2e-6)


def test_spares_bill_as_the_pools_until_claimed(db_url: str) -> None:
    """A spare VM bills at its machine type's price from its first sighting until it is
    claimed or deleted, under the user and workspace "(pool)", accrued or still waiting."""
    from envmgr.costs.pool import record_spares
    engine = make_engine(db_url)
    migrate(engine)
    e2, n2 = "envmgr-spare-e2-standard-4-0", "envmgr-spare-n2-standard-8-0"
    waiting = {e2: ("e2-standard-4", t(7, 9), None), n2: ("n2-standard-8", t(7, 9), None)}
    assert record_spares(engine, waiting, t(7, 9, 1)) == 2
    assert record_spares(engine, waiting, t(7, 10)) == 0  # the same spares: nothing new
    # The e2 spare is claimed after two hours (reported a little later); the n2 one waits.
    assert record_spares(engine, {**waiting, e2: ("e2-standard-4", t(7, 9), t(7, 11))},
                         t(7, 11, 1)) == 1
    # A spare made and claimed between two reports still bills for its wait, once.
    quick = {"envmgr-spare-e2-standard-4-1": ("e2-standard-4", t(7, 11), t(7, 11, 30))}
    assert record_spares(engine, {n2: waiting[n2], **quick}, t(7, 11, 31)) == 2
    assert record_spares(engine, {n2: waiting[n2], **quick}, t(7, 11, 32)) == 0
    now = t(7, 12)
    accrue_all(engine, CAT, now)
    for dim in ("user", "workspace"):
        [pool] = report(engine, CAT, date(2026, 3, 1), date(2026, 3, 31), dim, "day",
                        now)["groups"]
        assert pool["key"] == "(pool)", pool
        assert pool["compute"] == pytest.approx(2.5 * E2 + 3 * N2, abs=2e-6), pool
    by_type = {g["key"]: g for g in report(engine, CAT, date(2026, 3, 1), date(2026, 3, 31),
                                           "machine_type", "month", now)["groups"]}
    assert by_type["e2-standard-4"]["compute"] == pytest.approx(2.5 * E2, abs=2e-6)
