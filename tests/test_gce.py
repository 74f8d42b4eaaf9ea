"""The gce backend through the real google-cloud-compute client, against the fake Compute
REST server: lifecycle, the calls it makes, faults, crashes and drift."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Service, free_port, wait_until
from tests.fakes.compute import FakeComputeServer


@pytest.fixture
def compute() -> Iterator[FakeComputeServer]:
    server = FakeComputeServer(free_port())
    yield server
    server.stop()


def gce_settings(compute: FakeComputeServer) -> dict:
    return {"backend": "gce", "gce_project": "proj", "gce_zone": "us-central1-a",
            "gce_endpoint": compute.url, "gce_poll_seconds": 0.02,
            "gce_retry_initial_seconds": 0.01, "gce_retry_attempts": 12,
            "gce_readiness_timeout_seconds": 0, "gce_jupyter_port": free_port(),
            "autopause_interval_seconds": 3600}


def _calls(compute: FakeComputeServer, method: str, suffix: str) -> list[dict]:
    return [q for m, path, q in compute.fake.calls if m == method and path.endswith(suffix)]


def test_full_lifecycle_and_the_calls_it_makes(make_service, compute) -> None:  # type: ignore[no-untyped-def]
    svc: Service = make_service(**gce_settings(compute))
    alice = svc.user("alice@example.org")
    svc.workspace("gce-ws", alice)
    rt = alice.create_runtime("gce-ws", machine_type="n2-standard-4", autopause_minutes=0,
                              disk={"size_gb": 100, "type": "pd-ssd"}, labels={"team": "geo"})
    rid, disk_id = rt["id"], rt["disk_id"]
    assert alice.wait_status(rid)["status"] == "running"
    inst = compute.fake.instances[rid]
    user_disk = next(d for d in inst["disks"] if d["deviceName"] == "user-disk")
    assert user_disk["autoDelete"] is False and user_disk["source"].endswith(disk_id)
    assert inst["labels"] == {"team": "geo", "envmgr-runtime": rid,
                              "envmgr-owner": "alice_example_org", "envmgr-workspace": "gce-ws"}
    assert inst["machineType"].endswith("machineTypes/n2-standard-4")
    meta = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
    assert "mkfs.ext4" in meta["startup-script"] and meta["envmgr-runtime"] == rid
    assert compute.fake.disks[disk_id]["sizeGb"] == "100"
    assert all(q.get("requestId") for q in _calls(compute, "POST", "/instances"))

    assert alice.post(f"/api/v1/runtimes/{rid}/pause").status_code == 202
    assert alice.wait_status(rid)["status"] == "paused"
    assert compute.fake.instances[rid]["status"] == "TERMINATED"
    r = alice.patch(f"/api/v1/runtimes/{rid}", json={"machine_type": "e2-standard-2"})
    assert r.status_code == 202 and r.json()["status"] == "updating"
    assert alice.wait_status(rid)["status"] == "paused"
    assert alice.runtime(rid)["machine_type"] == "e2-standard-2"
    assert compute.fake.instances[rid]["machineType"].endswith("e2-standard-2")
    assert alice.post(f"/api/v1/runtimes/{rid}/resume").status_code == 202
    assert alice.wait_status(rid)["status"] == "running"

    alice.delete(f"/api/v1/runtimes/{rid}")  # keeps the disk
    assert alice.wait_status(rid)["status"] == "deleted"
    assert rid not in compute.fake.instances and disk_id in compute.fake.disks
    assert _calls(compute, "POST", f"/instances/{rid}/detachDisk")
    rid2 = alice.create_runtime("gce-ws", disk={"id": disk_id}, autopause_minutes=0)["id"]
    assert alice.wait_status(rid2)["status"] == "running"
    assert any(d.get("source", "").endswith(disk_id)
               for d in compute.fake.instances[rid2]["disks"])
    assert not _calls(compute, "DELETE", f"/disks/{disk_id}")  # never, until asked
    alice.delete(f"/api/v1/runtimes/{rid2}", params={"keep_disk": "false"})
    assert alice.wait_status(rid2)["status"] == "deleted"
    assert disk_id not in compute.fake.disks and _calls(compute, "DELETE", f"/disks/{disk_id}")


def test_capacity_errors_end_in_error_with_the_reason(make_service, compute) -> None:  # type: ignore[no-untyped-def]
    compute.fake.faults.capacity = True
    svc: Service = make_service(**gce_settings(compute))
    alice = svc.user("alice@example.org")
    svc.workspace("gce-ws", alice)
    rt = alice.wait_status(alice.create_runtime("gce-ws", autopause_minutes=0)["id"])
    assert rt["status"] == "error"
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in rt["status_reason"]
    assert "no capacity" in rt["status_reason"]
    assert rt["disk_id"] in compute.fake.disks  # the disk is kept


def test_fifty_lifecycles_with_faults(make_service, compute) -> None:  # type: ignore[no-untyped-def]
    f = compute.fake.faults
    f.error_rate, f.lost_rate, f.slow_rate, f.slow_seconds = 0.2, 0.05, 0.2, 0.3
    svc: Service = make_service(**gce_settings(compute), worker_concurrency=32)
    users = [svc.user(f"u{i}@example.org") for i in range(50)]
    svc.workspace("busy", svc.admin, **{f"u{i}@example.org": "writer" for i in range(50)})

    def lifecycle(i: int) -> tuple[str, str, str]:
        api = users[i]
        rt = api.create_runtime("busy", autopause_minutes=0)
        end = api.wait_status(rt["id"], timeout=180)["status"]
        assert end == "running", api.runtime(rt["id"])
        api.post(f"/api/v1/runtimes/{rt['id']}/pause")
        assert api.wait_status(rt["id"], timeout=180)["status"] == "paused"
        api.delete(f"/api/v1/runtimes/{rt['id']}")
        return rt["id"], rt["disk_id"], api.wait_status(rt["id"], timeout=180)["status"]
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lifecycle, range(50)))
    assert all(status == "deleted" for _, _, status in results)
    inserts = [q["body"]["name"] for q in _calls(compute, "POST", "/instances")]
    assert len(set(inserts)) == 50  # retries repeat the request id; never a second VM
    assert not compute.fake.instances  # all deleted
    assert all(disk in compute.fake.disks for _, disk, _ in results)  # no disk lost
    assert not [c for c in compute.fake.calls if c[0] == "DELETE" and "/disks/" in c[1]]


def test_reconciler_sees_drift(make_service, compute) -> None:  # type: ignore[no-untyped-def]
    svc: Service = make_service(**gce_settings(compute), reconcile_interval_seconds=0.3)
    alice = svc.user("alice@example.org")
    svc.workspace("gce-ws", alice)
    a = alice.create_runtime("gce-ws", autopause_minutes=0)["id"]
    assert alice.wait_status(a)["status"] == "running"
    compute.fake.instances[a]["status"] = "TERMINATED"  # stopped behind our back
    rt = alice.wait_status(a, "paused", timeout=30)
    assert rt["status_reason"].startswith("reconciler: found stopped")
    compute.fake.instances[a]["status"] = "RUNNING"  # and started again
    assert alice.wait_status(a, "running", timeout=30)["status_reason"] == \
        "reconciler: found running"
    del compute.fake.instances[a]  # deleted behind our back
    rt = alice.wait_status(a, "error", timeout=30)
    assert "absent" in rt["status_reason"]
    # A pass is one list of the zone's instances, never one GET per runtime.
    before = len(compute.fake.calls)
    wait_until(lambda: sum(1 for m, path, _ in compute.fake.calls[before:]
                           if m == "GET" and path.endswith("/instances")) >= 3, 30,
               what="three reconciler passes")
    gets = [path for m, path, _ in compute.fake.calls[before:]
            if m == "GET" and "/instances/" in path]
    assert gets == [], gets


def test_sigkill_mid_action_then_restart(service_process, compute) -> None:  # type: ignore[no-untyped-def]
    compute.fake.faults.op_seconds = 0.6  # operations long enough to die in the middle of
    env = {f"ENVMGR_{k.upper()}": str(v) for k, v in gce_settings(compute).items()}
    sp = service_process(**env)
    sp.start()
    api = sp.api()
    api.post("/api/v1/workspaces", json={"name": "gce-crash"})
    rid = api.create_runtime("gce-crash", autopause_minutes=0)["id"]
    wait_until(lambda: rid in compute.fake.instances, 30, interval=0.01, what="insert sent")
    for step in ("create", "pause", "delete"):
        if step == "pause":
            assert api.post(f"/api/v1/runtimes/{rid}/pause").status_code == 202
            wait_until(lambda: compute.fake.instances[rid]["status"] == "STOPPING", 30,
                       interval=0.01, what="stop sent")
        if step == "delete":
            assert api.delete(f"/api/v1/runtimes/{rid}").status_code == 202
            wait_until(lambda: any(p.endswith(f"/{rid}/detachDisk") for _, p, _ in
                                   compute.fake.calls), 30, interval=0.01, what="detach sent")
        sp.kill()
        sp.start()
        api = sp.api()
        want = {"create": "running", "pause": "paused", "delete": "deleted"}[step]
        assert api.wait_status(rid, timeout=60)["status"] == want
    inserts = [q["body"]["name"] for _, p, q in compute.fake.calls if p.endswith("/instances")
               and "body" in q]
    assert inserts == [rid]  # re-driven, never duplicated
    disk_id = api.runtime(rid)["disk_id"]
    assert disk_id in compute.fake.disks and rid not in compute.fake.instances
