"""Users, tokens, workspaces and roles: who may see and do what (api.md), on both databases."""

from __future__ import annotations

import stat

from tests.conftest import Service, fails


def test_auth_required_and_admin_bootstrap(service: Service) -> None:
    token_file = service.settings.data_dir / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    fails(service.api(None).get("/api/v1/me"), 401, "unauthorized")
    fails(service.api("envmgr_not-a-token").get("/api/v1/me"), 401, "unauthorized")
    assert service.admin.get("/api/v1/me").json() == {"email": "admin@localhost", "admin": True}
    assert service.admin.get("/healthz").json() == {"status": "ok"}
    ready = service.admin.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"] == {"database": "ok", "backend": "ok"}
    assert "envmgr_operations_total" in service.admin.get("/metrics").text or \
        service.admin.get("/metrics").status_code == 200
    assert service.admin.get("/openapi.json").json()["info"]["title"] == "envmgr"


def test_users_and_tokens(service: Service) -> None:
    bob = service.user("bob@example.org")
    assert bob.get("/api/v1/me").json() == {"email": "bob@example.org", "admin": False}
    fails(service.admin.post("/api/v1/users", json={"email": "bob@example.org"}), 409,
         "user_exists")
    fails(service.admin.post("/api/v1/users", json={"email": "not an email"}), 422,
         "validation_error")
    fails(bob.post("/api/v1/users", json={"email": "eve@example.org"}), 403, "forbidden")
    # A user may make tokens for themself only; tokens are stored hashed.
    mine = bob.post("/api/v1/tokens", json={"email": "bob@example.org"})
    assert mine.status_code == 201
    assert service.api(mine.json()["token"]).get("/api/v1/me").json()["email"] == \
        "bob@example.org"
    fails(bob.post("/api/v1/tokens", json={"email": "admin@localhost"}), 403, "forbidden")
    fails(service.admin.post("/api/v1/tokens", json={"email": "nobody@example.org"}), 404,
         "not_found")
    from sqlmodel import Session, select

    from envmgr.core.models import ApiToken
    with Session(service.ctx.engine) as s:
        hashes = [t.token_hash for t in s.exec(select(ApiToken)).all()]
    assert mine.json()["token"] not in hashes and all(len(h) == 64 for h in hashes)


def test_workspaces_and_members(service: Service) -> None:
    alice = service.user("alice@example.org")
    bob = service.user("bob@example.org")
    r = alice.post("/api/v1/workspaces", json={"name": "proj-a"})
    assert r.status_code == 201 and r.json()["role"] == "owner"
    assert r.json()["bucket"].startswith("envmgr-ws-")  # made by the service, not guessable
    fails(alice.post("/api/v1/workspaces", json={"name": "proj-a"}), 409, "workspace_exists")
    e = fails(alice.post("/api/v1/workspaces", json={"name": "No_Caps"}), 422, "validation_error")
    assert "name" in e["message"] and "a-z" in e["message"]
    fails(alice.post("/api/v1/workspaces", json={"name": "ab"}), 422, "validation_error")
    # Non-members do not learn the workspace exists.
    fails(bob.get("/api/v1/workspaces/proj-a"), 404, "not_found")
    assert bob.get("/api/v1/workspaces").json()["items"] == []
    fails(alice.put("/api/v1/workspaces/proj-a/members/nobody@example.org",
                   json={"role": "writer"}), 404, "not_found")
    fails(alice.put("/api/v1/workspaces/proj-a/members/bob@example.org",
                   json={"role": "boss"}), 422, "validation_error")
    assert alice.put("/api/v1/workspaces/proj-a/members/bob@example.org",
                     json={"role": "writer"}).status_code == 200
    assert bob.get("/api/v1/workspaces/proj-a").json()["role"] == "writer"
    # Only owners manage members; the last owner cannot leave or be demoted.
    fails(bob.put("/api/v1/workspaces/proj-a/members/bob@example.org", json={"role": "owner"}),
         403, "forbidden")
    fails(alice.put("/api/v1/workspaces/proj-a/members/alice@example.org",
                   json={"role": "reader"}), 409, "last_owner")
    fails(alice.delete("/api/v1/workspaces/proj-a/members/alice@example.org"), 409, "last_owner")
    assert alice.delete("/api/v1/workspaces/proj-a/members/bob@example.org").status_code == 204
    fails(bob.get("/api/v1/workspaces/proj-a"), 404, "not_found")
    # Admins see every workspace.
    names = [w["name"] for w in service.admin.get("/api/v1/workspaces").json()["items"]]
    assert "proj-a" in names


def test_runtime_visibility_and_roles(service: Service) -> None:
    owner = service.user("owner@example.org")
    writer = service.user("writer@example.org")
    other = service.user("other@example.org")
    reader = service.user("reader@example.org")
    service.workspace("shared", owner, **{"writer@example.org": "writer",
                                          "other@example.org": "writer",
                                          "reader@example.org": "reader"})
    fails(reader.post("/api/v1/workspaces/shared/runtimes", json={}), 403, "forbidden")
    fails(service.user("stranger@example.org").post("/api/v1/workspaces/shared/runtimes",
                                                   json={}), 404, "not_found")

    rt = writer.create_runtime("shared", autopause_minutes=0)
    rid = rt["id"]
    # Another writer neither sees it nor can touch it: 404, never 403.
    fails(other.get(f"/api/v1/runtimes/{rid}"), 404, "not_found")
    fails(other.post(f"/api/v1/runtimes/{rid}/pause"), 404, "not_found")
    fails(other.delete(f"/api/v1/runtimes/{rid}"), 404, "not_found")
    fails(other.get(f"/api/v1/runtimes/{rid}/events"), 404, "not_found")
    fails(other.get(f"/api/v1/disks/{rt['disk_id']}"), 404, "not_found")
    assert other.get("/api/v1/runtimes").json()["items"] == []
    assert other.get("/api/v1/disks").json()["items"] == []

    running = writer.wait_status(rid, "running", "error")
    assert running["status"] == "running" and running["url"]
    assert running["actions"] == ["pause", "update", "delete"]
    # The workspace owner sees it, without the URL, and may pause but not resume or change.
    seen = owner.get(f"/api/v1/runtimes/{rid}").json()
    assert seen["status"] == "running" and seen["url"] is None
    assert seen["actions"] == ["pause", "delete"]
    assert [r["id"] for r in owner.get("/api/v1/runtimes").json()["items"]] == [rid]
    admin_url = service.admin.get(f"/api/v1/runtimes/{rid}").json()["url"]
    assert admin_url.split("#")[0] == running["url"].split("#")[0]
    fails(owner.patch(f"/api/v1/runtimes/{rid}", json={"autopause_minutes": 60}), 403,
         "forbidden")
    assert owner.post(f"/api/v1/runtimes/{rid}/pause").status_code == 202
    assert writer.wait_status(rid, "paused")["actions"] == ["resume", "update", "delete"]
    assert owner.get(f"/api/v1/runtimes/{rid}").json()["actions"] == ["delete"]
    fails(owner.post(f"/api/v1/runtimes/{rid}/resume"), 403, "forbidden")
    fails(owner.get("/api/v1/runtimes", params={"status": "asleep"}), 422, "validation_error")
    # Filters.
    assert [r["id"] for r in service.admin.get(
        "/api/v1/runtimes", params={"owner": "writer@example.org"}).json()["items"]] == [rid]
    assert service.admin.get("/api/v1/runtimes",
                             params={"status": "running"}).json()["items"] == []
    assert owner.delete(f"/api/v1/runtimes/{rid}").status_code == 202
    writer.wait_status(rid, "deleted")
