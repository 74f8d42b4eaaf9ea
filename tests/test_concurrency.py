"""Many requests at once never move one runtime twice: the event log is always one valid path
through the state machine, and each move has exactly one operation behind it."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlmodel import Session, select

from envmgr.core.models import Operation
from envmgr.runtimes.machine import STABLE, TRANSITIONS
from tests.conftest import Api, Service


def _allowed(frm: str | None, to: str) -> bool:
    if frm is None:
        return to == "creating"
    for t in TRANSITIONS.values():
        if to == t.via and frm in (t.allowed_from | t.allowed_with_restart):
            return True
        if frm == t.via and to in ({t.ends_in, t.on_failure} if t.ends_in else
                                   t.allowed_from | t.allowed_with_restart | {t.on_failure}):
            return True
    return False


def _burst(api: Api, rid: str, actions: list[str]) -> list[tuple[str, int, str]]:
    # A client of its own per burst: connections left idle in a shared pool since the last
    # burst may be closed by the server's keep-alive timeout just as one is reused.
    with httpx.Client(base_url=api.http.base_url, headers=api.http.headers,
                      timeout=30) as http:
        def fire(action: str) -> tuple[str, int, str]:
            if action == "delete":
                r = http.delete(f"/api/v1/runtimes/{rid}")
            else:
                r = http.post(f"/api/v1/runtimes/{rid}/{action}")
            code = r.json().get("error", {}).get("code", "") if r.status_code >= 400 else ""
            return action, r.status_code, code
        with ThreadPoolExecutor(len(actions)) as pool:
            return list(pool.map(fire, actions))


def test_concurrent_actions_never_both_move_a_runtime(service: Service) -> None:
    alice = service.user("alice@example.org")
    service.workspace("race", alice)
    rid = alice.create_runtime("race", autopause_minutes=0)["id"]
    alice.wait_status(rid, "running")
    rng = random.Random(7)

    # 24 pauses at once on a running runtime: exactly one moves it. The others are 202
    # no-ops while it pauses, or (a forked runtime pauses in a fraction of a second) a 409
    # once it is paused.
    results = _burst(alice, rid, ["pause"] * 24)
    assert all(code == 202 or (code == 409 and err == "invalid_transition")
               for _, code, err in results), results
    assert sum(1 for _, code, _ in results if code == 202) >= 1, results
    alice.wait_status(rid, "paused")
    assert sum(1 for e in alice.events(rid) if e["to"] == "pausing") == 1

    # Mixed bursts: every answer is a 202 or a 409 invalid_transition, never anything else.
    for _ in range(2):
        results = _burst(alice, rid, [rng.choice(["pause", "resume"]) for _ in range(20)])
        assert all(code == 202 or (code == 409 and err == "invalid_transition")
                   for _, code, err in results), results
        assert alice.wait_status(rid)["status"] in STABLE
    results = _burst(alice, rid, [rng.choice(["pause", "resume", "delete"]) for _ in range(24)])
    assert all(code in (202, 409) for _, code, _ in results), results
    if any(a == "delete" and code == 202 for a, code, _ in results):
        assert alice.wait_status(rid, "deleted")["status"] == "deleted"
    alice.wait_status(rid)

    events = alice.events(rid)
    for prev, ev in zip([None, *events], events, strict=False):
        assert ev["from"] == (prev["to"] if prev else None), events
        assert _allowed(ev["from"], ev["to"]), (ev, events)
    moves = sum(1 for e in events if e["to"] not in STABLE and e["from"] is not None)
    with Session(service.ctx.engine) as s:
        ops = s.exec(select(Operation).where(Operation.resource_id == rid)).all()
    assert len(ops) == moves + 1  # one per move, plus the create
    assert {op.status for op in ops} <= {"done", "superseded"}


def test_concurrent_creates_make_exactly_one_runtime(service: Service) -> None:
    alice = service.user("alice@example.org")
    service.workspace("race", alice)

    def create(_: int) -> int:
        return alice.post("/api/v1/workspaces/race/runtimes", json={}).status_code
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(create, range(12)))
    assert sorted(codes) == [202] + [409] * 11, codes
    items = alice.get("/api/v1/runtimes").json()["items"]
    assert len(items) == 1
    # The refused creates left no disk behind.
    assert len(alice.get("/api/v1/disks").json()["items"]) == 1
    alice.wait_status(items[0]["id"])


def test_a_differing_repeat_is_never_dropped_and_keeping_a_disk_wins(service: Service) -> None:
    alice = service.user("alice@example.org")
    service.workspace("keep", alice)
    base = "/api/v1/runtimes/{}"
    # Delete everything, then (while that is under way) delete keeping the disk.
    rt = alice.wait_status(alice.create_runtime("keep", autopause_minutes=0)["id"], "running")
    first = alice.delete(base.format(rt["id"]), params={"keep_disk": "false"})
    assert first.status_code == 202 and first.json()["status"] == "deleting"
    second = alice.delete(base.format(rt["id"]), params={"keep_disk": "true"})
    alice.wait_status(rt["id"], "deleted")
    disk = alice.get(f"/api/v1/disks/{rt['disk_id']}").json()
    if second.status_code == 202:  # in time: the disk is kept, and the answer said so
        assert "keeping the disk" in second.json()["status_reason"]
        assert disk["status"] == "ready" and disk["attached_to"] is None, disk
    else:  # too late: told so, never a silent 202
        assert second.status_code == 409, second.text
        assert second.json()["error"]["code"] == "disk_already_deleting"
        assert disk["status"] == "deleted"
    # The reverse: keeping first; deleting the disk too is refused while it runs.
    rt = alice.wait_status(alice.create_runtime("keep", autopause_minutes=0)["id"], "running")
    assert alice.delete(base.format(rt["id"]), params={"keep_disk": "true"}).status_code == 202
    again = alice.delete(base.format(rt["id"]), params={"keep_disk": "true"})
    later = alice.delete(base.format(rt["id"]), params={"keep_disk": "false"})
    assert again.status_code in (202, 409)  # a repeat, or already deleted
    if later.status_code == 409 and later.json()["error"]["code"] == "operation_in_progress":
        assert later.json()["error"]["details"]["under_way"] == {"keep_disk": True}
    else:  # the first delete had already finished: nothing to delete any more
        assert later.json()["error"]["code"] == "invalid_transition", later.text
    alice.wait_status(rt["id"], "deleted")
    assert alice.get(f"/api/v1/disks/{rt['disk_id']}").json()["status"] == "ready"
