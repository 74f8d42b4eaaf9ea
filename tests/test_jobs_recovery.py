"""A SIGKILL of the control plane while jobs run: after the restart every job ends right
(finishes, or is recorded as an infrastructure failure, never stuck), and a cancel still
kills what the previous process started."""

from __future__ import annotations

from collections.abc import Callable

import psutil

from tests.conftest import ServiceProcess, marked_processes, wait_until
from tests.jobs_helpers import job, notebook, submit, wait_job


def test_sigkill_mid_run(service_process: Callable[..., ServiceProcess]) -> None:
    sp = service_process(ENVMGR_JOB_POLL_SECONDS="0.1", ENVMGR_JOB_CONCURRENCY="3",
                         ENVMGR_JOB_MAX_ATTEMPTS="1")
    sp.start()
    api = sp.api()
    assert api.post("/api/v1/workspaces", json={"name": "lab"}).status_code == 201
    finishes = submit(api, "lab", ipynb=notebook(
        "import time, pathlib\npathlib.Path('started').touch()\ntime.sleep(4)\nprint('done')"))
    dies = submit(api, "lab", ipynb=notebook("import time\ntime.sleep(600)"))
    canceled = submit(api, "lab", ipynb=notebook("import time\ntime.sleep(600)"))
    for j in (finishes, dies, canceled):
        wait_until(lambda j=j: job(api, j["id"])["progress"]["current_cell"] is not None, 90,
                   what=f"{j['id']} to run its cell")
    sp.kill()
    # While the service is down: one runner dies without a result (infrastructure).
    victims = [p for p in marked_processes(sp.data_dir)
               if p.environ().get("ENVMGR_JOB_ID") == dies["id"]]
    assert victims
    for p in victims:
        p.kill()
    psutil.wait_procs(victims, timeout=10)
    sp.start()
    api = sp.api()
    done = wait_job(api, finishes["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert "done" in api.get(f"/api/v1/jobs/{finishes['id']}/output",
                             params={"format": "log"}).text
    died = wait_job(api, dies["id"], timeout=60)
    assert died["status"] == "failed" and died["error"]["kind"] == "infrastructure", died
    assert job(api, canceled["id"])["status"] == "running"
    assert api.post(f"/api/v1/jobs/{canceled['id']}/cancel").status_code == 202
    assert wait_job(api, canceled["id"], timeout=30)["status"] == "canceled"
    wait_until(lambda: not marked_processes(sp.data_dir), 30,
               what="every job process to be gone")
