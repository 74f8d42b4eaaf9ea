"""Notebook jobs end to end: real runner processes (papermill, nbconvert), the real API, the
local bucket, and the sandbox when run as root."""

from __future__ import annotations

import json
from collections.abc import Callable

import psutil
import pytest

from tests.conftest import Service, marked_processes, wait_until
from tests.jobs_helpers import job, notebook, submit, wait_job


@pytest.fixture
def svc(make_service: Callable[..., Service]) -> Service:
    s = make_service(job_poll_seconds=0.1, webhook_allow_private=True)
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
    nb = notebook("x = 1", "print('before')", "raise ValueError('bad input ' + str(x))",
                  "print('never')")
    done = wait_job(svc.admin, submit(svc.admin, "lab", ipynb=nb)["id"])
    assert done["status"] == "failed", done
    err = done["error"]
    assert err["kind"] == "notebook_error" and err["cell"] == 2, err
    assert err["ename"] == "ValueError" and err["evalue"] == "bad input 1"
    assert done["attempts"] == 1  # a notebook's own failure is never retried
    assert done["outputs"]["html"] and done["outputs"]["log"]


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
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive, alive
    again = svc.admin.post(f"/api/v1/jobs/{created['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"
