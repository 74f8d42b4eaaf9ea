"""Notebook jobs on the gce backend: an ephemeral VM per job (through the real Compute client
against the fake Compute API), deleted when the job ends; the test plays the VM by running
the job agent with what the VM's metadata holds, so the job API is exercised for real."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Service, free_port, wait_until
from tests.fakes.compute import FakeComputeServer
from tests.jobs_helpers import notebook, submit, wait_job
from tests.test_gce import gce_settings


@pytest.fixture
def compute() -> Iterator[FakeComputeServer]:
    server = FakeComputeServer(free_port())
    yield server
    server.stop()
    assert server.fake.violations == [], server.fake.violations  # compute.v1's own rules


def play_vm(compute: FakeComputeServer, job_id: str, folder: Path) -> subprocess.Popen[bytes]:
    """What the job VM's startup script does, from its metadata."""
    inst = wait_until(lambda: compute.fake.instances.get(job_id), 60, what="the job's VM")
    meta = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
    env = {**os.environ, "ENVMGR_JOB_TOKEN": meta["envmgr-job-token"]}
    return subprocess.Popen([sys.executable, "-m", "envmgr_runner.agent",
                             meta["envmgr-control-url"], str(folder), "--network",
                             meta["envmgr-network"], "--poll", "0.1"], env=env)


def test_a_job_runs_on_its_own_vm_and_the_vm_goes(make_service: Callable[..., Service],
                                                  compute: FakeComputeServer,
                                                  tmp_path: Path) -> None:
    svc = make_service(**gce_settings(compute), job_poll_seconds=0.1)
    svc.workspace("gce-jobs", svc.admin)
    nb = notebook("print('on the vm', n)", parameters="n = 0")
    created = submit(svc.admin, "gce-jobs", ipynb=nb, parameters={"n": 7},
                     labels={"team": "geo"}, network="none", time_limit_seconds=600)
    agent = play_vm(compute, created["id"], tmp_path / "vm")
    inst = compute.fake.instances[created["id"]]
    assert inst["labels"]["envmgr-job"] == created["id"] and inst["labels"]["team"] == "geo"
    assert "envmgr-runtime" not in inst["labels"]  # the reconciler never takes it for one
    assert "envmgr-job-no-egress" in inst["tags"]["items"]
    assert not inst.get("serviceAccounts")  # no Google credentials on a job's VM
    assert all(d["autoDelete"] for d in inst["disks"])
    assert inst["scheduling"]["instanceTerminationAction"] == "DELETE"
    meta = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
    assert "envmgr_runner.agent" in meta["startup-script"]
    done = wait_job(svc.admin, created["id"], timeout=120)
    assert done["status"] == "succeeded", done
    assert agent.wait(30) == 0
    log = svc.admin.get(f"/api/v1/jobs/{created['id']}/output", params={"format": "log"})
    assert "on the vm 7" in log.text
    assert done["outputs"]["html"] and done["progress"]["cells_done"] == 3
    wait_until(lambda: created["id"] not in compute.fake.instances, 30,
               what="the job's VM to be deleted")
    # Its token opens nothing once the job has ended.
    token = meta["envmgr-job-token"]
    r = svc.admin.http.get("/job-api/v1/inputs/input.ipynb",
                           headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_ended"
    forged = svc.admin.http.get("/job-api/v1/inputs/input.ipynb",
                                headers={"Authorization": f"Bearer {created['id']}.00"})
    assert forged.status_code == 401


def test_cancel_deletes_the_vm_and_stops_the_agent(make_service: Callable[..., Service],
                                                   compute: FakeComputeServer,
                                                   tmp_path: Path) -> None:
    svc = make_service(**gce_settings(compute), job_poll_seconds=0.1)
    svc.workspace("gce-jobs", svc.admin)
    created = submit(svc.admin, "gce-jobs", ipynb=notebook("import time\ntime.sleep(600)"))
    agent = play_vm(compute, created["id"], tmp_path / "vm")
    wait_until(lambda: svc.admin.get(f"/api/v1/jobs/{created['id']}").json()["progress"]
               ["current_cell"] is not None, 90, what="the cell to start")
    assert svc.admin.post(f"/api/v1/jobs/{created['id']}/cancel").status_code == 202
    assert wait_job(svc.admin, created["id"], timeout=30)["status"] == "canceled"
    wait_until(lambda: created["id"] not in compute.fake.instances, 30,
               what="the job's VM to be deleted")
    assert agent.wait(30) == 3  # told the job had ended, it stopped its runner
