"""The spare kernel (`envmgr_jupyter.kernels`), on real runtimes: booted ahead of demand and
hidden, taken by the next notebook opened (then in the notebook's folder, as a kernel
started for it would be), refilled afterwards, and never one the user's code can tell from
their own notebook's kernel beyond that."""

from __future__ import annotations

import json
from typing import Any

import pytest
from envmgr_jupyter.kernels import machine_busy

from tests.conftest import Api, Service, run_cell, wait_until

NB = {"cells": [], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}},
      "nbformat": 4, "nbformat_minor": 5}
WHERE = ("import os, sys; print(json.dumps([os.getcwd(), os.environ.get('JPY_SESSION_NAME'), "
         "__session__, sorted(k for k in dir() if 'envmgr' in k), os.getuid()]))")


def test_a_spare_waits_while_the_machine_is_busy() -> None:
    """After many starts at once the spares' boots would land on the pages loading then."""
    assert machine_busy(5.0, 2, 1.0) and not machine_busy(1.5, 2, 1.0)
    assert not machine_busy(50.0, 2, 0)  # 0: never waits


def _running(svc: Service, **settings: Any) -> tuple[Api, str]:
    ann = svc.user("ann@example.org")
    svc.workspace("geo", ann)
    for path in ("maps.ipynb", "deep/er/rivers.ipynb"):
        assert ann.put("/api/v1/workspaces/geo/notebooks/content", params={"path": path},
                       json=NB).status_code == 201
    rid = ann.post("/api/v1/workspaces/geo/runtimes", json={"autopause_minutes": 30}
                   ).json()["id"]
    wait_until(lambda: ann.get(f"/api/v1/runtimes/{rid}").json()["status"] == "running",
               120, what="runtime running")
    return ann, rid


def _spare(ann: Api, rid: str) -> dict[str, Any]:
    r = ann.get(f"/proxy/{rid}/envmgr/spare")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _ready(ann: Api, rid: str, other_than: str | None = None) -> str:
    wait_until(lambda: _spare(ann, rid)["ready"] and _spare(ann, rid)["id"] != other_than,
               120, what="a spare kernel ready")
    return str(_spare(ann, rid)["id"])


def _open(ann: Api, path: str, mode: str = "edit") -> None:
    r = ann.post("/api/v1/workspaces/geo/notebooks/open", json={"path": path, "mode": mode})
    assert r.status_code == 200, r.text


def _session_kernel(ann: Api, rid: str, local: str) -> str:
    by_path = {s["path"]: s["kernel"]["id"] for s in ann.get(f"/proxy/{rid}/api/sessions").json()}
    return by_path[local]


@pytest.mark.slow
def test_the_spare_is_hidden_then_taken_by_the_next_open_in_the_notebooks_folder(
        make_service: Any) -> None:
    svc = make_service(spare_kernel_delay_seconds=0.5, spare_kernel_max_load=0)
    ann, rid = _running(svc)
    spare = _ready(ann, rid)
    # Nobody's yet: not in the kernel list (JupyterLab's Running panel, "shut down all"),
    # and autopause sees nothing busy.
    assert ann.get(f"/proxy/{rid}/api/kernels").json() == []

    _open(ann, "deep/er/rivers.ipynb")
    assert _session_kernel(ann, rid, "geo/edit/deep/er/rivers.ipynb") == spare
    cwd, session, dunder, leftovers, uid = json.loads(run_cell(
        ann, rid, "import json\n" + WHERE, kernel_id=spare))
    disk = cwd.removesuffix("/geo/edit/deep/er")
    assert cwd == f"{disk}/geo/edit/deep/er" and disk != cwd  # as if started for it
    assert session == dunder and session.endswith("geo/edit/deep/er/rivers.ipynb")
    assert leftovers == []  # nothing of the move left in the user's namespace
    assert uid != 0
    assert [k["id"] for k in ann.get(f"/proxy/{rid}/api/kernels").json()] == [spare]
    # Restarted (JupyterLab's Restart Kernel), it comes back there too.
    assert ann.post(f"/proxy/{rid}/api/kernels/{spare}/restart").status_code == 200
    after = json.loads(run_cell(ann, rid, "import json\n" + WHERE, kernel_id=spare))
    assert after[:3] == [cwd, session, session]

    # A new spare follows, for the next open; playground's copy takes it.
    second = _ready(ann, rid, other_than=spare)
    assert second != spare
    _open(ann, "maps.ipynb", "playground")
    assert _session_kernel(ann, rid, "geo/playground/maps.ipynb") == second
    cwd2 = json.loads(run_cell(ann, rid, "import json\n" + WHERE, kernel_id=second))[0]
    assert cwd2 == f"{disk}/geo/playground"


@pytest.mark.slow
def test_no_spare_when_turned_off_and_a_kernel_is_still_started_at_open(
        make_service: Any) -> None:
    svc = make_service(spare_kernel=False, spare_kernel_delay_seconds=0)
    ann, rid = _running(svc)
    assert _spare(ann, rid) == {"enabled": False, "kernel_name": "python3", "id": None,
                                "ready": False}
    _open(ann, "maps.ipynb")
    kernel = _session_kernel(ann, rid, "geo/edit/maps.ipynb")
    assert json.loads(run_cell(ann, rid, "import json\n" + WHERE, kernel_id=kernel))[0] \
        .endswith("/geo/edit")
    assert not _spare(ann, rid)["ready"]


@pytest.mark.slow
def test_a_members_notebook_name_cannot_inject_code_into_the_kernel_that_takes_the_spare(
        make_service: Any) -> None:
    """The move is code built from the notebook's path, and another member of the workspace
    names notebooks: a name made of quotes and Python stays a name (the folder and session
    name are exactly it) and runs nothing in the kernel of the user who opens it."""
    svc = make_service(spare_kernel_delay_seconds=0.5, spare_kernel_max_load=0)
    ann, rid = _running(svc)
    bob = svc.user("bob@example.org")
    assert ann.put("/api/v1/workspaces/geo/members/bob@example.org",
                   json={"role": "writer"}).status_code in (200, 201)
    evil = "x'); pwned = 1; ('\"\"\" + '''/__import__(\"os\").getcwd()#.ipynb"
    r = bob.put("/api/v1/workspaces/geo/notebooks/content", params={"path": evil}, json=NB)
    assert r.status_code == 201, r.text
    spare = _ready(ann, rid)
    _open(ann, evil)
    local = f"geo/edit/{evil}"
    assert _session_kernel(ann, rid, local) == spare
    out = json.loads(run_cell(ann, rid, "import json\nprint(json.dumps(['pwned' in dir(), "
                              "__import__('os').getcwd(), __session__]))", kernel_id=spare))
    assert out[0] is False
    assert out[1].endswith("/geo/edit/x'); pwned = 1; ('\"\"\" + '''")
    assert out[2].endswith(local)
