"""Jobs against an outside reference: papermill's own test notebooks (tests/data/papermill,
BSD-licensed) run as envmgr jobs and with bare papermill in this process, compared on what
a user reads: the status, the error's kind, exception name and cell (the index in the
notebook as submitted), and each code cell's printed output."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

from tests.conftest import Service
from tests.jobs_helpers import submit, wait_job

DATA = Path(__file__).parent / "data" / "papermill"
CASES = {  # notebook -> parameters
    "simple_execute": {"msg": "Hello from the test"},
    "complex_parameters": {"msg": "complex", "a": 3.5},
    "no_parameters": {"msg": "not injected: no parameters cell"},
    "nb_version_4.4": {"var": 7},
    "report_mode_test": {},
    "test_logging": {},
    "broken1": {},
    "broken2": {},
    "line_magic_error": {},
    "sysexit": {},
    "sysexit0": {},
    "sysexit1": {},
    "systemexit": {},
}


def _printed(nb: Any) -> list[tuple[str, str]]:
    """(source, stdout) of each code cell papermill did not inject."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code" or "injected-parameters" in cell.metadata.get("tags", []):
            continue
        text = "".join(o.get("text", "") for o in cell.get("outputs", [])
                       if o.get("output_type") == "stream" and o.get("name") == "stdout")
        out.append((cell.source, text))
    return out


def _cell_in_submitted(submitted: Any, executed: Any, exec_count: int) -> int:
    """The failing cell's index in the notebook as submitted: the executed cell with that
    execution count (papermill's own cell index counts cells its error markers shift),
    found by its source."""
    source = next(c.source for c in executed.cells
                  if c.cell_type == "code" and c.get("execution_count") == exec_count)
    return next(i for i, c in enumerate(submitted.cells)
                if c.cell_type == "code" and c.source == source)


def bare(name: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """What bare papermill makes of it, with the same kernel."""
    out = tmp / f"{name}.out.ipynb"
    submitted = nbformat.read(str(DATA / f"{name}.ipynb"), as_version=4)
    try:
        papermill.execute_notebook(str(DATA / f"{name}.ipynb"), str(out), parameters=params,
                                   kernel_name="python3", progress_bar=False, cwd=str(tmp))
    except PapermillExecutionError as exc:
        executed = nbformat.read(str(out), as_version=4)
        return {"status": "failed", "ename": exc.ename,
                "cell": _cell_in_submitted(submitted, executed, exc.exec_count),
                "printed": _printed(executed)}
    return {"status": "succeeded", "ename": None, "cell": None,
            "printed": _printed(nbformat.read(str(out), as_version=4))}


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("bare-papermill")
    return {name: bare(name, params, tmp) for name, params in CASES.items()}


def test_every_notebook_ends_as_bare_papermill_ends_it(
        make_service: Callable[..., Service], references: dict[str, dict[str, Any]]) -> None:
    svc = make_service(job_poll_seconds=0.1, job_concurrency=4)
    svc.workspace("pmill", svc.admin)
    made = {name: submit(svc.admin, "pmill", ipynb=json.loads((DATA / f"{name}.ipynb").read_text()),
                         parameters=params, kernel="python3")["id"]
            for name, params in CASES.items()}
    differ = {}
    for name, job_id in made.items():
        done = wait_job(svc.admin, job_id, timeout=180)
        error = done["error"] or {}
        if done["status"] == "failed":
            assert error["kind"] == "notebook_error", (name, done)  # never infrastructure
        assert done["attempts"] == 1, (name, done)
        executed = nbformat.reads(svc.admin.get(f"/api/v1/jobs/{job_id}/output",
                                                params={"format": "ipynb"}).text, as_version=4)
        got = {"status": done["status"], "ename": error.get("ename"), "cell": error.get("cell"),
               "printed": _printed(executed)}
        if got != references[name]:
            differ[name] = {"envmgr": got, "papermill": references[name]}
    assert not differ, differ
    assert sum(r["status"] == "failed" for r in references.values()) >= 5  # both kinds tried
