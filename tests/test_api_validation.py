"""Bad input gets a 4xx that names the field and says what is allowed; nothing changes."""

from __future__ import annotations

import pytest

from tests.conftest import Service, fails


def _field_error(r, field: str, *words: str) -> str:  # type: ignore[no-untyped-def]
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    fields = [e["field"] for e in err["details"]["errors"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), (field, fields)
    for w in words:
        assert w in err["message"], (w, err["message"])
    return err["message"]


@pytest.fixture
def alice(sqlite_service: Service):  # type: ignore[no-untyped-def]
    a = sqlite_service.user("alice@example.org")
    sqlite_service.workspace("ws-a", a)
    return a


def test_runtime_create_rejects_bad_input(sqlite_service: Service, alice) -> None:  # type: ignore[no-untyped-def]
    url = "/api/v1/workspaces/ws-a/runtimes"
    _field_error(alice.post(url, json={"machine_tipe": "e2-standard-2"}), "machine_tipe",
                 "unknown field")
    _field_error(alice.post(url, json={"machine_type": "m9-huge"}), "machine_type",
                 "not offered", "e2-standard-2")
    _field_error(alice.post(url, json={"machine_type": 4}), "machine_type")
    _field_error(alice.post(url, json={"disk": {"size_gb": 5}}), "disk.size_gb", "10 to 4096")
    _field_error(alice.post(url, json={"disk": {"size_gb": 5000}}), "disk.size_gb", "4096")
    _field_error(alice.post(url, json={"disk": {"size_gb": "big"}}), "disk.size_gb")
    _field_error(alice.post(url, json={"disk": {"type": "floppy"}}), "disk.type", "pd-ssd")
    _field_error(alice.post(url, json={"disk": {"id": "pd-x", "size_gb": 20}}), "disk",
                 "either")
    _field_error(alice.post(url, json={"disk": {"colour": "red"}}), "disk.colour")
    for bad in (1, 4.9, 1441, -3):
        _field_error(alice.post(url, json={"autopause_minutes": bad}), "autopause_minutes",
                     "0 (autopause off)", "1440")
    _field_error(alice.post(url, json={"autopause_minutes": "soon"}), "autopause_minutes")
    _field_error(alice.post(url, json={"labels": {"Team": "x"}}), "labels", "label key")
    _field_error(alice.post(url, json={"labels": {"team": "A B"}}), "labels", "label value")
    r = alice.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert alice.get("/api/v1/runtimes").json()["items"] == []
    assert alice.get("/api/v1/disks").json()["items"] == []


def test_lists_validate_paging(sqlite_service: Service, alice) -> None:  # type: ignore[no-untyped-def]
    _field_error(alice.get("/api/v1/runtimes", params={"limit": 0}), "query.limit")
    _field_error(alice.get("/api/v1/runtimes", params={"limit": 1001}), "query.limit")
    _field_error(alice.get("/api/v1/runtimes", params={"cursor": "%%%"}), "cursor")
    _field_error(alice.get("/api/v1/runtimes", params={"label": "nocolon"}), "label", "key:value")


def test_unknown_routes_and_methods_use_the_error_shape(sqlite_service: Service) -> None:
    r = sqlite_service.admin.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = sqlite_service.admin.put("/api/v1/me")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_fractional_autopause_and_min_setting(make_service) -> None:  # type: ignore[no-untyped-def]
    svc = make_service(autopause_min_minutes=0.5)
    a = svc.user("alice@example.org")
    svc.workspace("ws-a", a)
    rt = a.create_runtime("ws-a", autopause_minutes=0.75, labels={"team": "geo"})
    assert rt["autopause_minutes"] == 0.75 and rt["labels"] == {"team": "geo"}
    _field_error(a.patch(f"/api/v1/runtimes/{rt['id']}", json={"autopause_minutes": 0.25}),
                 "autopause_minutes", "from 0.5 to 1440")
    r = a.patch(f"/api/v1/runtimes/{rt['id']}", json={"autopause_minutes": 0,
                                                      "labels": {"team": "bio"}})
    assert r.status_code == 200 and r.json()["autopause_minutes"] == 0
    assert r.json()["labels"] == {"team": "bio"}
    assert [x["id"] for x in a.get("/api/v1/runtimes",
                                   params={"label": "team:bio"}).json()["items"]] == [rt["id"]]
    assert a.get("/api/v1/runtimes", params={"label": "team:geo"}).json()["items"] == []
    a.wait_status(rt["id"])


def test_a_workspace_bounds_its_runtimes_autopause(make_service) -> None:  # type: ignore[no-untyped-def]
    """An owner (or an admin) sets a workspace's default and bounds; runtimes get the
    default, and outside the bounds a 422 names them; writers may not change them."""
    svc = make_service(autopause_min_minutes=5)
    owner, writer = svc.user("olga@example.org"), svc.user("will@example.org")
    svc.workspace("bounded", owner, **{"will@example.org": "writer"})
    ws = owner.get("/api/v1/workspaces/bounded").json()
    assert ws["autopause"] == {"default_minutes": 30, "min_minutes": 5, "max_minutes": 1440,
                               "may_turn_off": True}
    url = "/api/v1/workspaces/bounded"
    fails(writer.patch(url, json={"autopause": {"max_minutes": 60}}), 403, "forbidden")
    _field_error(owner.patch(url, json={"autopause": {"max_minutes": 2}}),
                 "autopause.max_minutes", "from 5 to 1440")
    _field_error(owner.patch(url, json={"autopause": {"min_minutes": 90, "max_minutes": 60}}),
                 "autopause.min_minutes", "above the maximum")
    _field_error(owner.patch(url, json={"autopause": {"default_minutes": 120,
                                                      "max_minutes": 60}}),
                 "autopause.default_minutes", "from 5 to 60")
    for bad in ({"autopause": {"max_minutes": "x"}}, {"autopause": {"other": 1}}, {},
                {"autopause": {"max_minutes": -1}}, {"name": "renamed"}):
        r = owner.patch(url, json=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", bad
    r = owner.patch(url, json={"autopause": {"default_minutes": 20, "min_minutes": 10,
                                             "max_minutes": 60}})
    assert r.status_code == 200 and r.json()["autopause"] == {
        "default_minutes": 20, "min_minutes": 10, "max_minutes": 60, "may_turn_off": False}
    _field_error(writer.post(f"{url}/runtimes", json={"autopause_minutes": 0}),
                 "autopause_minutes", "from 10 to 60 minutes in this workspace, got 0")
    _field_error(writer.post(f"{url}/runtimes", json={"autopause_minutes": 90}),
                 "autopause_minutes", "from 10 to 60")
    rt = writer.post(f"{url}/runtimes", json={}).json()
    assert rt["autopause_minutes"] == 20
    _field_error(writer.patch(f"/api/v1/runtimes/{rt['id']}", json={"autopause_minutes": 61}),
                 "autopause_minutes", "from 10 to 60")
    assert writer.patch(f"/api/v1/runtimes/{rt['id']}",
                        json={"autopause_minutes": 45}).json()["autopause_minutes"] == 45
    # null puts the service's back; an admin may do it too
    r = svc.admin.patch(url, json={"autopause": {"default_minutes": None,
                                                 "max_minutes": None, "min_minutes": None}})
    assert r.status_code == 200 and r.json()["autopause"]["may_turn_off"] is True
    writer.wait_status(rt["id"])


def test_runtime_exists_and_disk_rules(service: Service) -> None:
    alice = service.user("alice@example.org")
    bob = service.user("bob@example.org")
    service.workspace("ws-a", alice, **{"bob@example.org": "writer"})
    rt = alice.create_runtime("ws-a")
    r = alice.post("/api/v1/workspaces/ws-a/runtimes", json={})
    assert r.status_code == 409 and r.json()["error"]["code"] == "runtime_exists"
    # Bob cannot attach Alice's disk: it is not his (404); nor can Alice attach an attached one.
    r = bob.post("/api/v1/workspaces/ws-a/runtimes", json={"disk": {"id": rt["disk_id"]}})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert bob.get("/api/v1/runtimes").json()["items"] == []
    alice.wait_status(rt["id"], "running")
    # A disk attached to a runtime cannot be deleted or attached elsewhere.
    r = alice.delete(f"/api/v1/disks/{rt['disk_id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "disk_in_use"
    service.workspace("ws-b", alice)
    r = alice.post("/api/v1/workspaces/ws-b/runtimes", json={"disk": {"id": rt["disk_id"]}})
    assert r.status_code == 404  # disks belong to one workspace
    alice.delete(f"/api/v1/runtimes/{rt['id']}")
    alice.wait_status(rt["id"], "deleted")
    rt2 = alice.create_runtime("ws-a", disk={"id": rt["disk_id"]})
    r = alice.post("/api/v1/workspaces/ws-b/runtimes", json={"disk": {"id": rt["disk_id"]}})
    assert r.status_code == 404
    alice.wait_status(rt2["id"])
    # A kept disk can be deleted on its own once nothing uses it.
    alice.delete(f"/api/v1/runtimes/{rt2['id']}")
    alice.wait_status(rt2["id"], "deleted")
    r = alice.delete(f"/api/v1/disks/{rt['disk_id']}")
    assert r.status_code == 202 and r.json()["status"] == "deleting"
    from tests.conftest import wait_until
    wait_until(lambda: alice.get(f"/api/v1/disks/{rt['disk_id']}").json()["status"] == "deleted",
               30, what="disk deleted")
    assert not (service.settings.data_dir / "local" / "disks" / rt["disk_id"]).exists()


def test_messages_say_what_is_wrong_in_the_users_words(sqlite_service: Service, alice) -> None:  # type: ignore[no-untyped-def]
    url = "/api/v1/workspaces/ws-a/notebooks/content"
    nb = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    msg = _field_error(alice.put(url, params={"path": "notes.txt"}, json=nb), "path",
                       "notebooks only", ".ipynb", "'notes.txt'")
    assert "opened" not in msg
    msg = _field_error(alice.put(url, params={"path": "a.ipynb"}, json={"hello": "world"}),
                       "body", "not a notebook", "missing cells, metadata, nbformat")
    assert "version 1" not in msg
    _field_error(alice.put(url, params={"path": "a.ipynb"}, json={**nb, "nbformat": 3}),
                 "body", "only nbformat 4")
    # Malformed JSON names the body and where, not a field called "9".
    _field_error(alice.post("/api/v1/workspaces", content=b'{"name": ',
                            headers={"content-type": "application/json"}),
                 "body", "not valid JSON", "at character 9")
    assert alice.get("/api/v1/workspaces/ws-a/notebooks").json() == []  # nothing was stored


def _deep(levels: int) -> str:
    """A notebook whose one output nests `levels` lists deep, as raw JSON text."""
    inner = "[" * levels + "]" * levels
    return ('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": '
            '"code", "id": "c1", "metadata": {}, "source": "", "execution_count": 1, '
            '"outputs": [{"output_type": "execute_result", "execution_count": 1, '
            '"metadata": {}, "data": {"application/json": ' + inner + '}}]}]}')


def test_a_deep_notebook_is_a_422_through_every_door(sqlite_service: Service, alice  # type: ignore[no-untyped-def]
                                                     ) -> None:
    import httpx
    headers = {"content-type": "application/json"}
    put = "/api/v1/workspaces/ws-a/notebooks/content"
    for levels in (80, 1000, 5000):  # past the bound, and past Python's recursion limit
        r = alice.put(put, params={"path": f"deep{levels}.ipynb"}, content=_deep(levels),
                      headers=headers)
        _field_error(r, "body", "nested more than 64 levels")
        r = alice.post("/api/v1/workspaces/ws-a/jobs", content='{"ipynb": ' + _deep(levels)
                       + "}", headers=headers)
        assert r.status_code == 422 and "nested more than 64" in r.text, r.text
    assert alice.get("/api/v1/workspaces/ws-a/notebooks").json() == []  # nothing stored
    ok = alice.put(put, params={"path": "ok.ipynb"}, content=_deep(20), headers=headers)
    assert ok.status_code == 201, ok.text  # rich outputs nest a few dozen levels
    rid = alice.wait_status(alice.create_runtime("ws-a", autopause_minutes=0)["id"],
                            "running")["id"]
    api = httpx.Client(base_url=f"{sqlite_service.base}/runtime-api/v1", timeout=30, headers={
        "Authorization": f"Bearer {sqlite_service.ctx.signer.runtime_token(rid)}"})
    for levels in (80, 5000):
        r = api.put("/notebooks/save", params={"path": "deep.ipynb", "base_generation": 0},
                    content=_deep(levels))
        assert r.status_code == 422 and "nested more than 64" in r.text, r.text
    assert {n["path"] for n in alice.get("/api/v1/workspaces/ws-a/notebooks").json()} == {
        "ok.ipynb"}


def test_keyword_parameter_names_are_a_422(sqlite_service: Service, alice) -> None:  # type: ignore[no-untyped-def]
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}
    for name in ("import", "lambda", "class", "None"):
        _field_error(alice.post("/api/v1/workspaces/ws-a/jobs", json={
            "ipynb": nb, "parameters": {name: 1}}), "parameters", repr(name), "keyword")
