"""Schedules end to end with a clock the tests move (no waiting for real minutes): slots,
catch-up, overlap, pause and resume, `after` chains, replicas and restarts; one real-time
test at the end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from envmgr.jobs import schedules
from tests.conftest import Api, Service, fails, wait_until
from tests.jobs_helpers import job, notebook, wait_job

QUICK = notebook("print('tick')")
LONG = notebook("import time\ntime.sleep(600)")


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def force_tick(svc: Service) -> None:
    """One pass of the leader's loop, now, in the service's own event loop."""
    asyncio.run_coroutine_threadsafe(svc.app.state.jobs.tick(), svc.app.state.loop).result(60)


def advance_to(svc: Service, when: datetime) -> None:
    svc.ctx.clock.advance((when - svc.ctx.clock.now()).total_seconds())


def put(api: Api, path: str, nb: dict[str, Any]) -> None:
    r = api.put("/api/v1/workspaces/lab/notebooks/content", params={"path": path}, json=nb)
    assert r.status_code in (200, 201), r.text


def create(api: Api, status: int = 201, **body: Any) -> dict[str, Any]:
    r = api.post("/api/v1/workspaces/lab/schedules", json={"name": "s", **body})
    assert r.status_code == status, r.text
    return r.json()


def runs(api: Api, sid: str) -> list[dict[str, Any]]:
    return api.get(f"/api/v1/schedules/{sid}/runs").json()["items"]


def jobs_of(api: Api, sid: str) -> list[dict[str, Any]]:
    return api.get("/api/v1/jobs", params={"schedule": sid, "limit": 1000}).json()["items"]


@pytest.fixture
def svc(make_service: Callable[..., Service]) -> Service:
    s = make_service(job_poll_seconds=0.1)
    s.workspace("lab", s.admin)
    s.admin.put("/api/v1/users/admin@localhost/limits", json={"job_concurrency": 10})
    put(s.admin, "quick.ipynb", QUICK)
    put(s.admin, "long.ipynb", LONG)
    return s


def test_a_slot_runs_on_time_and_edits_take_effect_at_the_next(svc: Service) -> None:
    s = create(svc.admin, notebook="quick.ipynb", cron="*/5 * * * *", timezone="Europe/Paris",
               parameters={"x": 1})
    assert s["next_run_at"] and s["active"] and s["overlap"] == "skip"
    slot = parse(s["next_run_at"])
    assert slot.minute % 5 == 0 and slot > svc.ctx.clock.now()
    advance_to(svc, slot + timedelta(seconds=5))
    svc.ctx.wake_jobs()
    [run] = wait_until(lambda: [r for r in runs(svc.admin, s["id"]) if r["job"]], 30,
                       what="the slot's job")
    assert run["outcome"] == "started" and parse(run["scheduled_for"]) == slot
    made = wait_job(svc.admin, run["job"])
    assert made["status"] == "succeeded" and made["schedule_id"] == s["id"]
    assert parse(made["scheduled_for"]) == slot and made["parameters"] == {"x": 1}
    after = svc.admin.get(f"/api/v1/schedules/{s['id']}").json()
    assert after["last_job"]["id"] == run["job"] and after["last_job"]["status"] == "succeeded"
    assert parse(after["next_run_at"]) == slot + timedelta(minutes=5)
    r = svc.admin.patch(f"/api/v1/schedules/{s['id']}", json={"cron": "0 6 * * 1-5"})
    assert r.status_code == 200, r.text
    nxt = parse(r.json()["next_run_at"]).astimezone(schedules.zone("Europe/Paris"))
    assert (nxt.hour, nxt.minute) == (6, 0) and nxt.weekday() < 5
    # Deleting it leaves its jobs and their outputs.
    assert svc.admin.delete(f"/api/v1/schedules/{s['id']}").status_code == 204
    assert job(svc.admin, run["job"])["outputs"]["log"]
    fails(svc.admin.get(f"/api/v1/schedules/{s['id']}"), 404, "not_found")


@pytest.mark.parametrize("catch_up, expected", [("none", 0), ("latest", 1)])
def test_missed_slots_by_catch_up_policy(svc: Service, catch_up: str, expected: int) -> None:
    s = create(svc.admin, notebook="quick.ipynb", cron="*/5 * * * *", catch_up=catch_up)
    first = parse(s["next_run_at"])
    # The service "was down" for 27 minutes: 6 slots passed, the latest 2 min ago.
    advance_to(svc, first + timedelta(minutes=27))
    force_tick(svc)
    got = runs(svc.admin, s["id"])
    ran = [r for r in got if r["outcome"] != "missed"]
    assert len(ran) == expected, got
    if expected:
        assert parse(ran[0]["scheduled_for"]) == first + timedelta(minutes=25)
        assert ran[0]["reason"] == "catch-up: the latest of 6 missed slots"
    # every slot is in the schedule's runs, with what became of it
    missed = [r for r in got if r["outcome"] == "missed"]
    assert len(missed) == 6 - expected and all(
        r["reason"].startswith("missed: not run at its time") for r in missed)
    assert sorted(parse(r["scheduled_for"]) for r in got) == \
        [first + timedelta(minutes=5 * i) for i in range(6)]
    assert parse(svc.admin.get(f"/api/v1/schedules/{s['id']}").json()["next_run_at"]) == \
        first + timedelta(minutes=30)


def test_an_every_minute_catch_up_runs_the_latest_missed_slot_besides_the_current(
        svc: Service) -> None:
    """Back after ten minutes: the current slot runs on time, and `latest` catches up the
    one before it (it is not the current one that counts as the catch-up)."""
    s = create(svc.admin, notebook="quick.ipynb", cron="* * * * *", catch_up="latest",
               overlap="queue")
    first = parse(s["next_run_at"])
    advance_to(svc, first + timedelta(minutes=9, seconds=30))
    force_tick(svc)
    got = {r["outcome"]: r for r in runs(svc.admin, s["id"])}
    by_time = sorted(runs(svc.admin, s["id"]), key=lambda r: r["scheduled_for"])
    assert [r["outcome"] for r in by_time] == ["missed"] * 8 + ["started", "started"]
    assert by_time[-1]["reason"].startswith("on schedule")
    assert by_time[-2]["reason"].startswith("catch-up: the latest of 9 missed slots")
    assert got["missed"]


def test_pause_means_no_runs_and_resume_runs_the_next_slot(svc: Service) -> None:
    s = create(svc.admin, notebook="quick.ipynb", cron="* * * * *")
    slot = parse(s["next_run_at"])
    paused = svc.admin.patch(f"/api/v1/schedules/{s['id']}", json={"active": False}).json()
    assert paused["active"] is False and paused["next_run_at"] is None
    assert svc.admin.get("/api/v1/schedules", params={"active": "false"}).json()["items"]
    advance_to(svc, slot + timedelta(seconds=30))
    force_tick(svc)
    assert runs(svc.admin, s["id"]) == []
    resumed = svc.admin.patch(f"/api/v1/schedules/{s['id']}", json={"active": True}).json()
    nxt = parse(resumed["next_run_at"])
    assert nxt == slot + timedelta(minutes=1)  # the paused slot is skipped (catch_up none)
    advance_to(svc, nxt + timedelta(seconds=2))
    force_tick(svc)
    [run] = runs(svc.admin, s["id"])
    assert parse(run["scheduled_for"]) == nxt and run["outcome"] == "started"


def test_overlap_policies(svc: Service) -> None:
    made = {p: create(svc.admin, name=p, notebook="long.ipynb", cron="* * * * *", overlap=p)
            for p in ("skip", "queue", "cancel_previous")}
    slot = parse(made["skip"]["next_run_at"])
    advance_to(svc, slot + timedelta(seconds=2))
    force_tick(svc)
    first = {p: runs(svc.admin, s["id"])[0]["job"] for p, s in made.items()}
    for j in first.values():
        wait_until(lambda j=j: job(svc.admin, j)["status"] == "running", 90, what=f"{j} to run")
    advance_to(svc, slot + timedelta(minutes=1, seconds=2))
    force_tick(svc)
    skip = runs(svc.admin, made["skip"]["id"])[0]
    assert skip["outcome"] == "skipped" and f"previous run {first['skip']}" in skip["reason"]
    queued = runs(svc.admin, made["queue"]["id"])[0]
    assert queued["outcome"] == "started" and "queued behind" in queued["reason"]
    force_tick(svc)
    assert job(svc.admin, queued["job"])["status"] == "queued"  # waits for the first
    replaced = runs(svc.admin, made["cancel_previous"]["id"])[0]
    assert "after canceling the previous run" in replaced["reason"]
    old = wait_job(svc.admin, first["cancel_previous"], timeout=30)
    assert old["status"] == "canceled" and "cancel_previous" in old["status_reason"]
    submitted = svc.admin.get(f"/api/v1/jobs/{replaced['job']}/events").json()["items"][0]
    assert "after canceling" in submitted["reason"]  # said in both jobs' reasons
    assert svc.admin.post(f"/api/v1/jobs/{first['queue']}/cancel").status_code == 202
    wait_until(lambda: job(svc.admin, queued["job"])["status"] in ("starting", "running"), 60,
               what="the queued run to start once the previous ended")
    for j in svc.admin.get("/api/v1/jobs", params={"limit": 100}).json()["items"]:
        svc.admin.post(f"/api/v1/jobs/{j['id']}/cancel")


def test_after_chains_fire_on_the_listed_statuses_only(svc: Service) -> None:
    up = create(svc.admin, name="up", notebook="quick.ipynb", cron="0 0 1 1 *")
    ok = create(svc.admin, name="ok", notebook="quick.ipynb",
                after={"schedule": up["id"], "on": ["succeeded"]})
    bad = create(svc.admin, name="bad", notebook="quick.ipynb",
                 after={"schedule": up["id"], "on": ["failed", "timed_out"]})
    assert ok["cron"] is None and ok["next_run_at"] is None
    first = svc.admin.post(f"/api/v1/schedules/{up['id']}/run")
    assert first.status_code == 202, first.text
    assert wait_job(svc.admin, first.json()["id"])["status"] == "succeeded"
    [chained] = wait_until(lambda: jobs_of(svc.admin, ok["id"]), 30, what="the chained run")
    assert wait_job(svc.admin, chained["id"])["status"] == "succeeded"
    force_tick(svc)
    assert jobs_of(svc.admin, bad["id"]) == []
    put(svc.admin, "quick.ipynb", notebook("raise RuntimeError('upstream broke')"))
    second = svc.admin.post(f"/api/v1/schedules/{up['id']}/run").json()
    assert wait_job(svc.admin, second["id"])["status"] == "failed"
    wait_until(lambda: jobs_of(svc.admin, bad["id"]), 30, what="the on-failure run")
    force_tick(svc)
    assert len(jobs_of(svc.admin, ok["id"])) == 1  # not on a failure
    [r] = runs(svc.admin, bad["id"])
    assert r["trigger_job"] == second["id"]
    # Cycles are refused, directly or through others.
    err = fails(svc.admin.patch(f"/api/v1/schedules/{up['id']}",
                                json={"after": {"schedule": ok["id"], "on": ["succeeded"]}}),
                422, "validation_error")
    assert "cycle" in err["message"]
    fails(svc.admin.patch(f"/api/v1/schedules/{ok['id']}",
                          json={"after": {"schedule": ok["id"], "on": ["succeeded"]}}),
          422, "validation_error")
    fails(svc.admin.delete(f"/api/v1/schedules/{up['id']}"), 409, "in_use")


def test_bad_schedules_are_422s_and_others_see_nothing(svc: Service) -> None:
    for body, words in (
        ({"notebook": "quick.ipynb", "cron": "* * *"}, "5-field cron"),
        ({"notebook": "quick.ipynb", "cron": "0 0 30 2 *"}, "never comes in month '2'"),
        ({"notebook": "quick.ipynb", "cron": "R * * * *"}, "minute 'R'"),
        ({"notebook": "quick.ipynb", "cron": "* * * * *", "timezone": "Mars/Base"}, "IANA"),
        ({"notebook": "quick.ipynb"}, "give a 'cron'"),
        ({"notebook": "quick.ipynb", "cron": "* * * * *",
          "after": {"schedule": "sch-x", "on": ["succeeded"]}}, "not both"),
        ({"notebook": "quick.ipynb", "after": {"schedule": "sch-x", "on": ["running"]}},
         "after.on"),
        ({"notebook": "quick.ipynb", "cron": "* * * * *", "overlap": "replace"}, "overlap"),
        ({"notebook": "../x.ipynb", "cron": "* * * * *"}, "notebook"),
        ({"notebook": "quick.ipynb", "cron": "* * * * *", "parameters": {"a b": 1}},
         "parameter name"),
    ):
        err = fails(svc.admin.post("/api/v1/workspaces/lab/schedules", json={"name": "x", **body}),
                    422, "validation_error")
        assert words in err["message"], (body, err)
    fails(svc.admin.post("/api/v1/workspaces/lab/schedules", json={
        "name": "x", "notebook": "quick.ipynb",
        "after": {"schedule": "sch-nope", "on": ["succeeded"]}}), 404, "not_found")
    s = create(svc.admin, notebook="quick.ipynb", cron="* * * * *")
    eve = svc.user("eve@example.org")
    for method, path in (("get", ""), ("patch", ""), ("delete", ""), ("post", "/run"),
                         ("get", "/runs")):
        kw = {"json": {"active": False}} if method == "patch" else {}
        fails(getattr(eve, method)(f"/api/v1/schedules/{s['id']}{path}", **kw), 404,
              "not_found")
    assert eve.get("/api/v1/schedules").json()["items"] == []


def test_preview_says_the_next_runs_before_saving(svc: Service) -> None:
    """GET /schedules/preview: the runs a schedule would have, as cron runs them in the
    zone (the spring-forward day included), refused as a create is refused."""
    r = svc.admin.get("/api/v1/schedules/preview", params={
        "cron": "30 2 * * *", "timezone": "Europe/Paris", "from": "2026-03-28T12:00:00Z",
        "count": 3})
    assert r.status_code == 200, r.text
    assert r.json() == {"runs": ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00",
                                 "2026-03-31T02:30:00+02:00"]}
    default = svc.admin.get("/api/v1/schedules/preview", params={"cron": "@hourly"}).json()
    assert len(default["runs"]) == 5 and default["runs"][0].endswith("+00:00")
    assert len(svc.admin.get("/api/v1/schedules/preview", params={
        "cron": "* * * * *", "count": 100}).json()["runs"]) == 100
    for params, words in (({"cron": "0 0 * * 8"}, "day-of-week '8'"),
                          ({"cron": "* * * *"}, "5-field"),
                          ({"cron": "* * * * *", "timezone": "Mars/Base"}, "IANA"),
                          ({"cron": "* * * * *", "count": 101}, "count"),
                          ({"cron": "* * * * *", "count": 0}, "count"),
                          ({"cron": "* * * * *", "from": "yesterday"}, "from"),
                          ({"cron": "* * * * *", "from": "2026-03-28T12:00:00"}, "offset"),
                          ({}, "cron")):
        err = fails(svc.admin.get("/api/v1/schedules/preview", params=params), 422,
                    "validation_error")
        assert words in err["message"], (params, err)
    fails(httpx.get(f"{svc.base}/api/v1/schedules/preview", params={"cron": "* * * * *"}),
          401, "unauthorized")


def test_a_restart_mid_slot_makes_no_duplicate(svc: Service) -> None:
    """The leader died after claiming a slot (and once after making its job too): the next
    pass re-drives it into exactly one job."""
    s = create(svc.admin, notebook="quick.ipynb", cron="0 0 1 1 *", overlap="queue")
    from envmgr.core.db import read_session
    from envmgr.core.models import Schedule
    with read_session(svc.ctx.engine) as session:
        sched = session.get(Schedule, s["id"])
    assert sched is not None
    claimed_only = datetime(2026, 6, 1, tzinfo=UTC)
    assert schedules._claim(svc.ctx, sched, claimed_only, None)
    with_job = datetime(2026, 6, 2, tzinfo=UTC)
    assert schedules._claim(svc.ctx, sched, with_job, None)
    made, _ = schedules._submit(svc.ctx, sched, with_job, "before the crash", None,
                                schedules._slot_key(sched, with_job))
    assert not schedules._claim(svc.ctx, sched, with_job, None)  # a slot is claimed once
    svc.ctx.clock.advance(30)
    force_tick(svc)
    force_tick(svc)
    got = {r["scheduled_for"]: r for r in runs(svc.admin, s["id"])}
    assert {r["outcome"] for r in got.values()} == {"started"}
    assert got["2026-06-02T00:00:00Z"]["job"] == made
    slots = sorted(j["scheduled_for"] for j in jobs_of(svc.admin, s["id"]))
    assert slots == ["2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z"]


def test_two_replicas_run_each_slot_once(make_service: Callable[..., Service],
                                         postgres: Any, tmp_path: Any) -> None:
    """Two services on one PostgreSQL, their schedulers both driven through a simulated hour
    of every-minute slots at the same moments: each slot makes exactly one job."""
    url = postgres.create_database()
    shared = tmp_path / "buckets"  # replicas share the buckets, as they share GCS
    a = make_service(url, data_dir=tmp_path / "a", storage_root=shared)
    b = make_service(url, data_dir=tmp_path / "b", storage_root=shared)
    a.workspace("lab", a.admin)
    put(a.admin, "quick.ipynb", QUICK)
    for svc in (a, b):  # hold the jobs: this test counts them, it does not run them
        asyncio.run_coroutine_threadsafe(svc.app.state.jobs.stop(), svc.app.state.loop).result(30)
    s = create(a.admin, notebook="quick.ipynb", cron="* * * * *", overlap="queue")
    start = parse(s["next_run_at"])
    for svc in (a, b):
        advance_to(svc, start - timedelta(seconds=1))
    with ThreadPoolExecutor(2) as pool:
        for minute in range(60):
            for svc in (a, b):
                advance_to(svc, start + timedelta(minutes=minute, seconds=1))
            list(pool.map(schedules.tick, [a.ctx, b.ctx]))
    made = jobs_of(a.admin, s["id"])
    slots = [j["scheduled_for"] for j in made]
    assert len(slots) == 60 and len(set(slots)) == 60, [
        (r["scheduled_for"], r["outcome"], r["reason"]) for r in runs(a.admin, s["id"])][:8]
    assert len(runs(a.admin, s["id"])) == 60


def test_every_minute_in_real_time(svc: Service) -> None:
    s = create(svc.admin, notebook="quick.ipynb", cron="* * * * *")
    [made] = wait_until(lambda: jobs_of(svc.admin, s["id"]), 75, interval=0.5,
                        what="a real job from a * * * * * schedule")
    assert wait_job(svc.admin, made["id"])["status"] == "succeeded"


def test_after_only_onto_a_schedule_the_caller_may_see(svc: Service) -> None:
    """A fellow writer of the workspace who knows another's schedule id cannot chain onto
    it (it would then see that user's jobs in its own history); the workspace's owner may."""
    alice = svc.user("alice@example.org")
    bob = svc.user("bob@example.org")
    for who in ("alice@example.org", "bob@example.org"):
        assert svc.admin.put(f"/api/v1/workspaces/lab/members/{who}",
                             json={"role": "writer"}).status_code == 200
    theirs = create(bob, notebook="quick.ipynb", cron="0 3 * * *")
    chain = {"schedule": theirs["id"], "on": ["succeeded"]}
    fails(alice.post("/api/v1/workspaces/lab/schedules", json={
        "name": "x", "notebook": "quick.ipynb", "after": chain}), 404, "not_found")
    mine = create(alice, notebook="quick.ipynb", cron="0 4 * * *")
    fails(alice.patch(f"/api/v1/schedules/{mine['id']}", json={"after": chain}), 404,
          "not_found")
    assert create(svc.admin, notebook="quick.ipynb", after=chain)["after"] == chain
