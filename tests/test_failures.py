"""When jupyter-server cannot start, or a step outlives its deadline, the runtime ends in
`error` with a reason a person can act on, no process lingers, and the disk is kept."""

from __future__ import annotations

import socket

from tests.conftest import Service, marked_processes


def _setup(svc: Service):  # type: ignore[no-untyped-def]
    alice = svc.user("alice@example.org")
    svc.workspace("ws-f", alice)
    return alice


def _assert_failed_but_disk_kept(svc: Service, alice, rt: dict, *words: str) -> dict:  # type: ignore[no-untyped-def]
    rt = alice.wait_status(rt["id"])
    assert rt["status"] == "error", rt
    for w in words:
        assert w in rt["status_reason"], rt["status_reason"]
    assert rt["errors"] and rt["errors"][0]["action"] == "create"
    assert rt["errors"][0]["message"] == rt["status_reason"]
    assert rt["url"] is None
    disk = alice.get(f"/api/v1/disks/{rt['disk_id']}").json()
    assert disk["status"] == "ready"
    assert (svc.settings.data_dir / "local" / "disks" / rt["disk_id"]).is_dir()
    assert marked_processes(svc.settings.data_dir) == []
    return rt


def test_bad_image_reports_the_log(make_service) -> None:  # type: ignore[no-untyped-def]
    # A command any runtime user may run (as root, runtimes run as users of their own).
    broken = ["/bin/sh", "-c", "echo 'boom: this image has no jupyter' >&2; exit 3"]
    svc = make_service(local_jupyter_command=broken)
    alice = _setup(svc)
    rt = alice.create_runtime("ws-f")
    rt = _assert_failed_but_disk_kept(svc, alice, rt, "code 3", "boom: this image has no jupyter")
    # From error the user may retry (resume) or delete; a delete keeps the disk by default.
    assert alice.delete(f"/api/v1/runtimes/{rt['id']}").status_code == 202
    alice.wait_status(rt["id"], "deleted")
    assert alice.get(f"/api/v1/disks/{rt['disk_id']}").json()["status"] == "ready"


def test_port_taken_reports_the_log(make_service) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        # (ports are for runtimes outside containers: a container's Jupyter has a socket)
        svc = make_service(local_port_range=(port, port), local_containers=False)
        alice = _setup(svc)
        rt = alice.create_runtime("ws-f")
        _assert_failed_but_disk_kept(svc, alice, rt, "jupyter-server exited", str(port),
                                     "not available")


def test_deadline_sends_runtime_to_error(make_service) -> None:  # type: ignore[no-untyped-def]
    svc = make_service(deadline_create_seconds=0.4)
    alice = _setup(svc)
    rt = alice.create_runtime("ws-f")
    _assert_failed_but_disk_kept(svc, alice, rt, "did not finish within its deadline")


def test_resume_after_a_failed_start_recovers(make_service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A start that fails once its disk is made (a deadline could strike while the disk is
    # still being made, on a loaded machine: then there is no disk to resume on).
    svc = make_service(local_jupyter_command=["/bin/sh", "-c", "exit 3"])
    alice = _setup(svc)
    rt = alice.create_runtime("ws-f")
    alice.wait_status(rt["id"], "error")
    svc.stop()
    # The same data, a service with sane deadlines: resume from error works on the same disk.
    svc2 = make_service(data_dir=svc.settings.data_dir,
                        database_url=svc.settings.database_url)
    alice2 = svc2.api(alice.http.headers["Authorization"].split()[1])
    r = alice2.post(f"/api/v1/runtimes/{rt['id']}/resume")
    assert r.status_code == 202, r.text
    rt = alice2.wait_status(rt["id"])
    assert rt["status"] == "running", rt
    assert rt["disk_id"]
