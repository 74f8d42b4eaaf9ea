"""Notebooks and waits the job tests share."""

from __future__ import annotations

from typing import Any

import nbformat

from tests.conftest import Api, wait_until

STABLE = {"succeeded", "failed", "timed_out", "canceled"}


def notebook(*cells: str, parameters: str | None = None) -> dict[str, Any]:
    """A notebook of code cells (the first tagged `parameters` when given)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    if parameters is not None:
        nb.cells.append(nbformat.v4.new_code_cell(parameters,
                                                  metadata={"tags": ["parameters"]}))
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    return dict(nbformat.from_dict(nb))


def submit(api: Api, ws: str, status: int = 202, **body: Any) -> dict[str, Any]:
    r = api.post(f"/api/v1/workspaces/{ws}/jobs", json=body)
    assert r.status_code == status, r.text
    return r.json()


def job(api: Api, job_id: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_job(api: Api, job_id: str, *statuses: str, timeout: float = 120) -> dict[str, Any]:
    wanted = set(statuses) or STABLE
    return wait_until(lambda: (j := job(api, job_id))["status"] in wanted and j, timeout,
                      what=f"job {job_id} to be {'/'.join(sorted(wanted))}")
