"""The whole story on real jupyter-server processes, through the real HTTP API, on SQLite
and PostgreSQL: files survive pause, resume, and a delete that keeps the disk."""

from __future__ import annotations

import httpx
import psutil

from tests.conftest import Service, disk_file, server_process


def _jupyter(api, rt: dict) -> httpx.Client:  # type: ignore[no-untyped-def]
    """Jupyter through the control plane's proxy, as the runtime's owner."""
    port = api.http.base_url.port
    assert rt["url"].startswith(f"http://{rt['id']}.localhost:{port}/_envmgr/login?"
                                f"next=/proxy/{rt['id']}/lab#")
    return httpx.Client(base_url=f"{api.http.base_url}/proxy/{rt['id']}",
                        headers={"Authorization": api.http.headers["Authorization"]},
                        timeout=30)


def _pid(service: Service, rid: str) -> int:
    return server_process(service.settings.data_dir, rid).pid


def test_create_pause_resume_delete_keep_disk_reattach(service: Service) -> None:
    alice = service.user("alice@example.org")
    service.workspace("lab-one", alice)

    rt = alice.create_runtime("lab-one", disk={"size_gb": 20})
    assert rt["status"] == "creating" and rt["url"] is None
    rt = alice.wait_status(rt["id"], "running", "error")
    assert rt["status"] == "running", rt["status_reason"]
    disk_id = rt["disk_id"]
    disk_dir = service.settings.data_dir / "local" / "disks" / disk_id

    # Write a file through Jupyter's own contents API.
    with _jupyter(alice, rt) as jp:
        r = jp.put("/api/contents/notes.txt",
                   json={"type": "file", "format": "text", "content": "keep me"})
        assert r.status_code in (200, 201), r.text
    assert (disk_dir / "notes.txt").read_text() == "keep me"

    pid = _pid(service, rt["id"])
    assert alice.post(f"/api/v1/runtimes/{rt['id']}/pause").status_code == 202
    rt = alice.wait_status(rt["id"], "paused", "error")
    assert rt["status"] == "paused" and rt["url"] is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert disk_file(service.settings.data_dir, disk_id, "notes.txt") == "keep me"

    assert alice.post(f"/api/v1/runtimes/{rt['id']}/resume").status_code == 202
    rt = alice.wait_status(rt["id"], "running", "error")
    assert rt["status"] == "running", rt["status_reason"]
    with _jupyter(alice, rt) as jp:
        assert jp.get("/api/contents/notes.txt").json()["content"] == "keep me"

    r = alice.delete(f"/api/v1/runtimes/{rt['id']}", params={"keep_disk": "true"})
    assert r.status_code == 202 and r.json()["status"] == "deleting"
    assert alice.wait_status(rt["id"], "deleted")["status"] == "deleted"
    disk = alice.get(f"/api/v1/disks/{disk_id}").json()
    assert disk["status"] == "ready" and disk["attached_to"] is None and disk["size_gb"] == 20
    assert disk_file(service.settings.data_dir, disk_id, "notes.txt") == "keep me"

    rt2 = alice.create_runtime("lab-one", disk={"id": disk_id})
    assert rt2["disk_id"] == disk_id
    rt2 = alice.wait_status(rt2["id"], "running", "error")
    assert rt2["status"] == "running", rt2
    with _jupyter(alice, rt2) as jp:
        assert jp.get("/api/contents/notes.txt").json()["content"] == "keep me"

    assert alice.delete(f"/api/v1/runtimes/{rt2['id']}",
                        params={"keep_disk": "false"}).status_code == 202
    alice.wait_status(rt2["id"], "deleted")
    assert not disk_dir.exists()
    assert alice.get(f"/api/v1/disks/{disk_id}").json()["status"] == "deleted"

    history = [(e["from"], e["to"]) for e in alice.events(rt["id"])]
    assert history == [(None, "creating"), ("creating", "running"), ("running", "pausing"),
                       ("pausing", "paused"), ("paused", "resuming"), ("resuming", "running"),
                       ("running", "deleting"), ("deleting", "deleted")]
