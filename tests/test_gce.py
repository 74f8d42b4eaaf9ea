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
    # Nothing a project viewer reads in metadata is a token (only a single-use ticket), and
    # the VM has no service account with broad scopes.
    signer = svc.ctx.signer
    secrets = {signer.jupyter_token(rid), signer.runtime_token(rid)}
    assert not [k for k, v in meta.items() if any(t in v for t in secrets)]
    assert inst["serviceAccounts"] == []
    assert "--require-hashes" in meta["startup-script"] and "pip install -q \"$(md" \
        not in meta["startup-script"]
    assert compute.fake.disks[disk_id]["sizeGb"] == "100"
    assert all(q.get("requestId") for q in _calls(compute, "POST", "/instances"))

    # A pause suspends (memory kept: the kernels survive) and a resume resumes.
    assert alice.post(f"/api/v1/runtimes/{rid}/pause").status_code == 202
    assert alice.wait_status(rid)["status"] == "paused"
    assert compute.fake.instances[rid]["status"] == "SUSPENDED"
    assert alice.post(f"/api/v1/runtimes/{rid}/resume").status_code == 202
    assert alice.wait_status(rid)["status"] == "running"
    assert _calls(compute, "POST", f"/instances/{rid}/resume")
    assert not _calls(compute, "POST", f"/instances/{rid}/start")
    # A new machine type needs a TERMINATED VM: the suspended one is stopped first.
    assert alice.post(f"/api/v1/runtimes/{rid}/pause").status_code == 202
    assert alice.wait_status(rid)["status"] == "paused"
    r = alice.patch(f"/api/v1/runtimes/{rid}", json={"machine_type": "e2-standard-2"})
    assert r.status_code == 202 and r.json()["status"] == "updating"
    assert alice.wait_status(rid)["status"] == "paused"
    assert compute.fake.instances[rid]["status"] == "TERMINATED"
    assert alice.runtime(rid)["machine_type"] == "e2-standard-2"
    assert compute.fake.instances[rid]["machineType"].endswith("e2-standard-2")
    assert alice.post(f"/api/v1/runtimes/{rid}/resume").status_code == 202
    assert alice.wait_status(rid)["status"] == "running"
    assert _calls(compute, "POST", f"/instances/{rid}/start")

    alice.delete(f"/api/v1/runtimes/{rid}")  # keeps the disk
    assert alice.wait_status(rid)["status"] == "deleted"
    assert rid not in compute.fake.instances and disk_id in compute.fake.disks
    assert not _calls(compute, "POST", f"/instances/{rid}/detachDisk")  # never hot
    rid2 = alice.create_runtime("gce-ws", disk={"id": disk_id}, autopause_minutes=0)["id"]
    assert alice.wait_status(rid2)["status"] == "running"
    assert any(d.get("source", "").endswith(disk_id)
               for d in compute.fake.instances[rid2]["disks"])
    assert not _calls(compute, "DELETE", f"/disks/{disk_id}")  # never, until asked
    alice.delete(f"/api/v1/runtimes/{rid2}", params={"keep_disk": "false"})
    assert alice.wait_status(rid2)["status"] == "deleted"
    assert disk_id not in compute.fake.disks and _calls(compute, "DELETE", f"/disks/{disk_id}")


@pytest.fixture(autouse=True)
def _every_request_is_one_gce_would_parse(compute: FakeComputeServer) -> Iterator[None]:
    """Each test ends by checking that no request broke compute.v1's discovery document."""
    yield
    assert compute.fake.violations == [], compute.fake.violations


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


def _one_running(make_service, compute):  # type: ignore[no-untyped-def]
    """A service that reconciles often, and Alice's running runtime on it."""
    svc: Service = make_service(**gce_settings(compute), reconcile_interval_seconds=0.3)
    alice = svc.user("alice@example.org")
    svc.workspace("gce-ws", alice)
    rid = alice.create_runtime("gce-ws", autopause_minutes=0)["id"]
    assert alice.wait_status(rid)["status"] == "running"
    return svc, alice, rid


def test_reconciler_sees_drift(make_service, compute) -> None:  # type: ignore[no-untyped-def]
    _, alice, a = _one_running(make_service, compute)
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
            wait_until(lambda: compute.fake.instances[rid]["status"] == "SUSPENDING", 30,
                       interval=0.01, what="suspend sent")
        if step == "delete":
            assert api.delete(f"/api/v1/runtimes/{rid}").status_code == 202
            wait_until(lambda: any(m == "DELETE" and p.endswith(f"/instances/{rid}")
                                   for m, p, _ in compute.fake.calls), 30, interval=0.01,
                       what="delete sent")
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


def test_quota_refusals_stockouts_and_labels_end_with_gces_reason(make_service, compute) -> None:  # type: ignore[no-untyped-def]
    svc: Service = make_service(**gce_settings(compute))
    alice = svc.user("alice@example.org")
    svc.workspace("gce-ws", alice)
    f = compute.fake.faults
    f.quota_sync = True  # a synchronous 403 is the quota's reason, not "internal error"
    rt = alice.wait_status(alice.create_runtime("gce-ws", autopause_minutes=0)["id"])
    assert rt["status"] == "error" and "quota exceeded" in rt["status_reason"].lower()
    assert "internal" not in rt["status_reason"].lower()
    alice.delete(f"/api/v1/runtimes/{rt['id']}")
    alice.wait_status(rt["id"], "deleted")
    f.quota_sync, f.quota_op = False, True  # the same, as an operation error
    rt = alice.wait_status(alice.create_runtime("gce-ws", autopause_minutes=0)["id"])
    assert rt["status"] == "error" and "QUOTA_EXCEEDED" in rt["status_reason"]
    alice.delete(f"/api/v1/runtimes/{rt['id']}")
    alice.wait_status(rt["id"], "deleted")
    f.quota_op = False
    # 64 labels of the user's own: GCE takes 64 in all, so envmgr's 3 and 61 of them.
    labels = {f"k{i:02d}": "v" for i in range(64)}
    rt = alice.wait_status(alice.create_runtime("gce-ws", autopause_minutes=0,
                                                labels=labels)["id"])
    assert rt["status"] == "running", rt
    sent = compute.fake.instances[rt["id"]]["labels"]
    assert len(sent) == 64 and sent["envmgr-runtime"] == rt["id"]
    # A stockout when the paused VM starts again: the runtime says so, the VM stays.
    alice.post(f"/api/v1/runtimes/{rt['id']}/pause")
    alice.wait_status(rt["id"], "paused")
    f.stockout_on_start = True
    again = alice.post(f"/api/v1/runtimes/{rt['id']}/resume")
    assert again.status_code == 202
    failed = alice.wait_status(rt["id"], "error", "paused")
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in failed["status_reason"], failed
    assert compute.fake.instances[rt["id"]]["status"] == "SUSPENDED"  # kept, as it was


def test_suspended_resumes_and_a_mounted_disk_is_never_detached(make_service, compute) -> None:  # type: ignore[no-untyped-def]
    svc, alice, rid = _one_running(make_service, compute)
    compute.fake.instances[rid]["status"] = "SUSPENDED"  # suspended in the console
    assert alice.wait_status(rid, "paused", timeout=30)["status"] == "paused"
    assert alice.post(f"/api/v1/runtimes/{rid}/resume").status_code == 202
    assert alice.wait_status(rid)["status"] == "running"
    assert any(p.endswith(f"/instances/{rid}/resume") for _, p, _ in compute.fake.calls)
    assert not any(p.endswith(f"/instances/{rid}/start") for _, p, _ in compute.fake.calls)
    # DEPROVISIONING and PENDING_STOP are on their way down, not starting; REPAIRING comes
    # back by itself.
    for status, state in (("DEPROVISIONING", "stopping"), ("PENDING_STOP", "stopping"),
                          ("REPAIRING", "starting")):
        compute.fake.instances[rid]["status"] = status
        st = svc.ctx.backend._observed(_instance(svc, rid))
        assert st.state == state, (status, st)
    compute.fake.instances[rid]["status"] = "RUNNING"
    # Delete keeping the disk: the VM goes with its disk still attached (autoDelete false),
    # no detachDisk was ever sent to the running VM.
    assert alice.delete(f"/api/v1/runtimes/{rid}", params={"keep_disk": "true"}) \
        .status_code == 202
    assert alice.wait_status(rid)["status"] == "deleted"
    assert not any(p.endswith("/detachDisk") for _, p, _ in compute.fake.calls)
    disk = alice.runtime(rid)["disk_id"]
    assert disk in compute.fake.disks and rid not in compute.fake.instances


def _instance(svc: Service, rid: str):  # type: ignore[no-untyped-def]
    from google.cloud import compute_v1
    backend = svc.ctx.backend
    return backend.instances.get(request=compute_v1.GetInstanceRequest(
        project=backend.project, zone=backend.zone, instance=rid))


def test_the_fake_refuses_what_gce_refuses(compute) -> None:  # type: ignore[no-untyped-def]
    """Checked against compute.v1's discovery document and GCE's documented rules, through
    the real client (so the same requests the backend could send)."""
    from google.api_core import exceptions as gexc
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import compute_v1
    kw = {"credentials": AnonymousCredentials(),
          "client_options": ClientOptions(api_endpoint=compute.url)}
    inst, disks = compute_v1.InstancesClient(**kw), compute_v1.DisksClient(**kw)
    z = {"project": "proj", "zone": "us-central1-a"}

    def body(name: str, **extra) -> compute_v1.Instance:  # type: ignore[no-untyped-def]
        return compute_v1.Instance(name=name, machine_type="zones/us-central1-a/machineTypes/"
                                   + extra.pop("machine", "e2-standard-2"), **extra)

    def refused(call, reason: str) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(gexc.GoogleAPICallError) as info:
            call()
        said = " ".join([str(info.value), *(str(e.get("reason", "")) for e in
                                            info.value.errors or [] if isinstance(e, dict))])
        assert reason in said, said

    refused(lambda: inst.insert(instance_resource=body("Bad_Name"), **z), "resource.name")
    refused(lambda: inst.insert(instance_resource=body("a" * 64), **z), "resource.name")
    refused(lambda: inst.insert(instance_resource=body("vm", machine="m9-huge"), **z),
            "does not exist in zone")
    refused(lambda: inst.insert(instance_resource=body(
        "vm", labels={f"k{i}": "v" for i in range(65)}), **z), "at most 64")
    refused(lambda: inst.insert(instance_resource=body("vm", labels={"Team": "x"}), **z),
            "resource.labels")
    refused(lambda: inst.insert(instance_resource=body("vm"), project="other",
                                zone="us-central1-a"), "projects/other")
    refused(lambda: inst.insert(instance_resource=body("vm"), project="proj",
                                zone="mars-1-a"), "Unknown zone")
    def done(op) -> None:  # type: ignore[no-untyped-def]
        def finished() -> bool:
            with compute.fake._lock:  # the fake's clock moves on requests; move it here
                compute.fake._tick()
                return compute.fake.ops[op.name]["status"] == "DONE"
        wait_until(finished, 10, what="op")

    done(disks.insert(disk_resource=compute_v1.Disk(name="pd-1", size_gb=10), **z))
    attach = compute_v1.AttachedDisk(source="zones/us-central1-a/disks/pd-1",
                                     device_name="user-disk", auto_delete=False)
    done(inst.insert(instance_resource=body("vm-a", disks=[attach]), **z))
    refused(lambda: inst.insert(instance_resource=body("vm-b", disks=[attach]), **z),
            "resourceInUseByAnotherResource")
    done(inst.insert(instance_resource=body("vm-b"), **z))
    refused(lambda: inst.attach_disk(instance="vm-b", attached_disk_resource=attach, **z),
            "already being used")
    refused(lambda: disks.delete(disk="pd-1", **z), "already being used")
    # The discovery document: detachDisk needs deviceName; an unknown body field is refused.
    import httpx
    r = httpx.post(f"{compute.url}/compute/v1/projects/proj/zones/us-central1-a/instances/"
                   "vm-a/detachDisk")
    assert r.status_code == 400 and "deviceName" in r.text
    r = httpx.post(f"{compute.url}/compute/v1/projects/proj/zones/us-central1-a/instances",
                   json={"name": "vm-c", "machineType": "e2-standard-2", "colour": "red"})
    assert r.status_code == 400 and "unknown field 'colour'" in r.text
    compute.fake.violations.clear()  # those two were meant to break it
    # Another zone is another namespace; lists filter and page.
    assert [i.name for i in inst.list(project="proj", zone="europe-west1-b")] == []
    for n in range(5):
        done(inst.insert(instance_resource=body(f"lab-{n}", labels={"envmgr-runtime": f"r{n}"}),
                         **z))
    req = compute_v1.ListInstancesRequest(filter="labels.envmgr-runtime:*", max_results=2, **z)
    pages = list(inst.list(request=req).pages)
    assert len(pages) == 3 and sum(len(p.items) for p in pages) == 5
    # Suspend, then start is refused (a SUSPENDED VM is resumed); resume works.
    done(inst.suspend(instance="vm-b", **z))
    assert inst.get(instance="vm-b", **z).status == "SUSPENDED"
    refused(lambda: inst.start(instance="vm-b", **z), "resumed with instances.resume")
    done(inst.resume(instance="vm-b", **z))
    assert inst.get(instance="vm-b", **z).status == "RUNNING"
    # Labels and metadata change only with the current fingerprint (one claim wins).
    seen = inst.get(instance="vm-b", **z)
    relabel = compute_v1.InstancesSetLabelsRequest(label_fingerprint=seen.label_fingerprint,
                                                   labels={"envmgr-runtime": "r9"})
    done(inst.set_labels(instance="vm-b", instances_set_labels_request_resource=relabel, **z))
    refused(lambda: inst.set_labels(instance="vm-b",
                                    instances_set_labels_request_resource=relabel, **z),
            "conditionNotMet")
    refused(lambda: inst.set_metadata(instance="vm-b", metadata_resource=compute_v1.Metadata(
        items=[compute_v1.Items(key="k", value="v")]), **z), "fingerprint")
    assert inst.get(instance="vm-b", **z).labels == {"envmgr-runtime": "r9"}
    # A SUSPENDED VM may be stopped (for a machine-type change); list filters on values.
    done(inst.suspend(instance="vm-b", **z))
    done(inst.stop(instance="vm-b", **z))
    assert inst.get(instance="vm-b", **z).status == "TERMINATED"
    req = compute_v1.ListInstancesRequest(filter='labels.envmgr-runtime = "r9"', **z)
    assert [i.name for i in inst.list(request=req)] == ["vm-b"]


def test_a_create_claims_a_spare_and_the_pool_refills(make_service, compute) -> None:  # type: ignore[no-untyped-def]
    """With a pool, a create relabels a booted spare as the runtime's (guarded by its label
    fingerprint), hands it the runtime in metadata and attaches the user's disk while it
    runs; no insert. Concurrent creates never share a spare, the pool refills, a pause
    suspends the spare by its own name, and a spare's waiting time is the pool's cost."""
    svc: Service = make_service(**gce_settings(compute), pool_size=2,
                                pool_machine_types=["e2-standard-4"], warm_at_start=True,
                                pool_refill_seconds=0.2, reconcile_interval_seconds=0.3)
    alice = svc.user("alice@example.org")
    users = [alice, svc.user("bob@example.org"), svc.user("carol@example.org")]
    svc.workspace("gce-ws", alice, **{"bob@example.org": "writer",
                                      "carol@example.org": "writer"})

    def spares() -> list[dict]:
        return [i for i in compute.fake.instances.values()
                if "envmgr-pool" in i["labels"] and i["status"] == "RUNNING"]
    wait_until(lambda: len(spares()) == 2, 30, what="two spares")
    assert all("envmgr-runtime" not in {m["key"] for m in i["metadata"].get("items", [])}
               and not any(d["deviceName"] == "user-disk" for d in i["disks"])
               for i in spares())
    with ThreadPoolExecutor(3) as pool:
        rts = list(pool.map(lambda u: u.create_runtime(
            "gce-ws", machine_type="e2-standard-4", autopause_minutes=0,
            labels={"team": "geo"}), users))
    for rt in rts:
        assert alice.wait_status(rt["id"])["status"] == "running"
    vms = {}
    for rt in rts:
        [vm] = [i for i in compute.fake.instances.values()
                if i["labels"].get("envmgr-runtime") == rt["id"]]
        vms[rt["id"]] = vm
        meta = {m["key"]: m["value"] for m in vm["metadata"]["items"]}
        assert meta["envmgr-runtime"] == rt["id"] and meta["envmgr-boot-ticket"]
        assert vm["labels"]["team"] == "geo" and "envmgr-pool" not in vm["labels"]
        disk = next(d for d in vm["disks"] if d["deviceName"] == "user-disk")
        assert disk["source"].endswith(rt["disk_id"]) and disk["autoDelete"] is False
    assert len({vm["name"] for vm in vms.values()}) == 3  # never one VM for two runtimes
    claimed = [vm for vm in vms.values() if vm["name"].startswith("envmgr-spare-")]
    assert len(claimed) >= 2  # both spares, then an insert (or a spare made meanwhile)
    inserted = [q["body"]["name"] for _, p, q in compute.fake.calls
                if p.endswith("/instances") and "body" in q]
    assert not {rt["id"] for rt in rts} - set(inserted) - {
        rid for rid, vm in vms.items() if vm["name"].startswith("envmgr-spare-")}
    wait_until(lambda: len(spares()) == 2, 30, what="the pool refilled")
    # The runtime on a claimed spare lives its whole life on it, by the spare's name.
    rid, vm = next((rid, vm) for rid, vm in vms.items() if vm["name"].startswith("envmgr-"))
    assert alice.post(f"/api/v1/runtimes/{rid}/pause").status_code == 202
    assert alice.wait_status(rid)["status"] == "paused"
    assert compute.fake.instances[vm["name"]]["status"] == "SUSPENDED"
    assert alice.post(f"/api/v1/runtimes/{rid}/resume").status_code == 202
    assert alice.wait_status(rid)["status"] == "running"
    # The reconciler (a pass every 0.3 s here) finds it by its label, and leaves spares be.
    names = {i["name"] for i in spares()}
    wait_until(lambda: _calls(compute, "GET", "/instances") and
               len(_calls(compute, "GET", "/instances")) > 20, 30, what="reconciler passes")
    assert alice.runtime(rid)["status"] == "running"
    assert set(compute.fake.instances) >= names
    alice.delete(f"/api/v1/runtimes/{rid}")
    assert alice.wait_status(rid)["status"] == "deleted"
    assert vm["name"] not in compute.fake.instances
    assert alice.runtime(rid)["disk_id"] in compute.fake.disks
    # What the spares cost while waiting is the pool's.
    from sqlmodel import select

    from envmgr.core.db import read_session
    from envmgr.core.models import Event

    def pool_events(status: str) -> set[str]:
        with read_session(svc.ctx.engine) as s:
            return {e.resource_id for e in s.exec(select(Event).where(
                Event.resource == "pool", Event.to_status == status)).all()}
    wait_until(lambda: pool_events("released") >= {vm["name"] for vm in claimed}, 30,
               what="claimed spares released from the pool's bill")
    assert pool_events("running") >= {vm["name"] for vm in claimed} | names
