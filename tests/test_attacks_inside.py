"""Attacks from inside a runtime: a notebook cell, run in a real kernel over its websocket,
tries to reach what is not its own; a runtime asks for another workspace's notebooks; a
member removed from a workspace keeps saving. As root (CI), runtimes run sandboxed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import Api, Service, disk_user, fails, run_cell, server_process

ROOT = os.geteuid() == 0
NB = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

ATTEMPTS = """
import json, os
res = {}
def attempt(name, fn):
    try:
        fn()
        res[name] = "ok"
    except Exception as e:
        res[name] = type(e).__name__
attempt("admin_token", lambda: open(%(admin)r).read())
attempt("secret_key", lambda: open(%(key)r).read())
attempt("database", lambda: open(%(db)r, "rb").read(1))
attempt("list_data_dir", lambda: os.listdir(%(data)r))
try:
    res["data_dir_holds"] = sorted(os.listdir(%(data)r))
except OSError:
    res["data_dir_holds"] = None
attempt("other_disk", lambda: os.listdir(%(other_disk)r))
attempt("other_disk_file", lambda: open(%(other_file)r).read())
attempt("buckets", lambda: os.listdir(%(buckets)r))
attempt("service_environ", lambda: open("/proc/%(service_pid)d/environ").read())
attempt("signal_other_runtime", lambda: os.kill(%(other_pid)d, 0))
attempt("own_file", lambda: open(os.path.expanduser("~/mine.txt"), "w").write("mine"))
res["uid"] = os.getuid()
res["envmgr_env"] = sorted(k for k in os.environ if k.startswith("ENVMGR_"))
res["home"] = os.path.expanduser("~")
print(json.dumps(res))
"""

PIP = """
import os, subprocess, sys, zipfile
wheel = os.path.expanduser("~/hello_envmgr-1.0-py3-none-any.whl")  # built here: no network
with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("hello_envmgr/__init__.py", "WORD = 'hello from the disk'\\n")
    info = "hello_envmgr-1.0.dist-info/"
    z.writestr(info + "METADATA", "Metadata-Version: 2.1\\nName: hello-envmgr\\nVersion: 1.0\\n")
    z.writestr(info + "WHEEL", "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\n"
               "Tag: py3-none-any\\n")
    z.writestr(info + "RECORD", "")
r = subprocess.run([sys.executable, "-m", "pip", "install", "--user", "--no-index", "--quiet",
                    wheel], capture_output=True, text=True)
print("pip", r.returncode, r.stderr[-2000:])
r = subprocess.run([sys.executable, "-c", "import hello_envmgr; print(hello_envmgr.WORD)"],
                   capture_output=True, text=True)
print(r.stdout.strip() or r.stderr[-500:])
"""


def _pid(svc: Service, rid: str) -> int:
    return server_process(svc.settings.data_dir, rid).pid


def _running(api: Api, ws: str) -> dict[str, Any]:
    return api.wait_status(api.create_runtime(ws, autopause_minutes=0)["id"], "running")


@pytest.mark.skipif(not ROOT, reason="the sandbox needs root (CI runs as root)")
def test_a_kernel_reaches_its_own_disk_and_nothing_of_the_service(sqlite_service: Service
                                                                   ) -> None:
    svc = sqlite_service
    alice = svc.user("alice@example.org")
    bob = svc.user("bob@example.org")
    svc.workspace("ws-a", alice)
    svc.workspace("ws-b", bob)
    assert bob.put("/api/v1/workspaces/ws-b/notebooks/content", params={"path": "bob.ipynb"},
                   json=NB).status_code == 201
    mine, theirs = _running(alice, "ws-a"), _running(bob, "ws-b")
    data = svc.settings.data_dir
    other_disk = data / "local" / "disks" / theirs["disk_id"]
    (other_disk / "diary.txt").write_text("bob's")
    got = json.loads(run_cell(alice, mine["id"], ATTEMPTS % {
        "admin": str(data / "admin-token"), "key": str(data / "secret-key"),
        "db": svc.settings.database_url.removeprefix("sqlite:///"), "data": str(data),
        "other_disk": str(other_disk),
        "other_file": str(other_disk / "diary.txt"), "buckets": str(data / "buckets"),
        "service_pid": os.getpid(), "other_pid": _pid(svc, theirs["id"])}).strip())
    denied = ("admin_token", "secret_key", "database", "list_data_dir", "other_disk",
              "other_disk_file", "buckets", "service_environ", "signal_other_runtime")
    if svc.ctx.backend.containers is None:  # there, but not its to open
        assert {k: got[k] for k in denied} == {k: "PermissionError" for k in denied}, got
        assert got["home"] == str(data / "local" / "disks" / mine["disk_id"])
    else:  # in its container, none of it even exists...
        # (but the way to the runtime image, mounted read-only at its own path, if that
        # is in the data dir: the default)
        way = got["data_dir_holds"] == ["local"]
        assert {k: got[k] for k in denied} == {
            **{k: "FileNotFoundError" for k in denied},
            "list_data_dir": "ok" if way else "FileNotFoundError",
            "signal_other_runtime": "ProcessLookupError"}, got
        assert got["data_dir_holds"] in (None, ["local"]), got
        assert got["home"] == "/home/jupyter"
    assert got["own_file"] == "ok" and got["uid"] != 0, got
    assert set(got["envmgr_env"]) <= {"ENVMGR_RUNTIME_ID", "ENVMGR_LOCAL_ROOT",
                                      "ENVMGR_KERNEL_IPC_DIR"}, got
    # Its own user, and no secret on any command line on this machine.
    proc = psutil.Process(_pid(svc, mine["id"]))
    assert proc.username() == disk_user(svc.settings, mine["disk_id"])
    secrets = [svc.ctx.signer.jupyter_token(r["id"]) for r in (mine, theirs)] + \
        [svc.ctx.signer.runtime_token(r["id"]) for r in (mine, theirs)]
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        assert not any(s in line for s in secrets), line
    # The runtime's own files, pip installs into its disk, and its notebooks still work.
    out = run_cell(alice, mine["id"], PIP)
    assert "pip 0" in out and "hello from the disk" in out, out
    assert (data / "local" / "disks" / mine["disk_id"] / ".local" / "lib").is_dir()
    assert alice.put("/api/v1/workspaces/ws-a/notebooks/content", params={"path": "n.ipynb"},
                     json=NB).status_code == 201
    opened = alice.post("/api/v1/workspaces/ws-a/notebooks/open",
                        json={"path": "n.ipynb", "mode": "edit"})
    assert opened.status_code == 200, opened.text


def test_a_runtime_reaches_only_its_own_workspace(sqlite_service: Service) -> None:
    svc = sqlite_service
    alice = svc.user("alice@example.org")
    mallory = svc.user("mallory@example.org")
    svc.workspace("ws-a", alice)
    svc.workspace("ws-b", mallory)
    assert mallory.put("/api/v1/workspaces/ws-b/notebooks/content", params={"path": "x.ipynb"},
                       json=NB).status_code == 201
    before = mallory.get("/api/v1/workspaces/ws-b/notebooks").json()
    rid = _running(alice, "ws-a")["id"]
    # Through the extension: naming another workspace or bucket is refused...
    bucket_b = mallory.get("/api/v1/workspaces/ws-b").json()["bucket"]
    r = alice.post(f"/proxy/{rid}/envmgr/localize", json={
        "path": "x.ipynb", "mode": "edit", "workspace": "ws-b", "bucket": bucket_b})
    assert r.status_code == 422 and "unknown fields" in r.text
    # ...and the runtime's own workspace has no such notebook.
    assert alice.post(f"/proxy/{rid}/envmgr/localize",
                      json={"path": "x.ipynb", "mode": "edit"}).status_code == 404
    # The runtime API itself, with the runtime's token: parameters cannot widen it.
    token = svc.ctx.signer.runtime_token(rid)
    api = httpx.Client(base_url=f"{svc.base}/runtime-api/v1", timeout=30,
                       headers={"Authorization": f"Bearer {token}"})
    assert api.get("/whoami").json() == {"runtime": rid, "owner": "alice@example.org",
                                         "workspace": "ws-a"}
    fails(api.get("/notebooks/content", params={"path": "x.ipynb", "workspace": "ws-b",
                                                "bucket": bucket_b}), 404, "not_found")
    r = api.put("/notebooks/save", params={"path": "x.ipynb", "base_generation": 0,
                                           "workspace": "ws-b"}, content=json.dumps(NB))
    assert r.status_code == 200 and r.json()["status"] == "saved"  # into a, its own
    assert {n["path"] for n in alice.get("/api/v1/workspaces/ws-a/notebooks").json()} == {
        "x.ipynb"}
    # Forged or foreign tokens: refused.
    for bad in (f"{rid}.{'0' * 64}", "rt-1m8999999999999999999x.abc", token + "x", "x"):
        r = httpx.get(f"{svc.base}/runtime-api/v1/whoami",
                      headers={"Authorization": f"Bearer {bad}"})
        fails(r, 401, "unauthorized")
    assert mallory.get("/api/v1/workspaces/ws-b/notebooks").json() == before
    # A deleted runtime's token is dead.
    assert alice.delete(f"/api/v1/runtimes/{rid}").status_code == 202
    alice.wait_status(rid, "deleted")
    fails(api.get("/whoami"), 401, "unauthorized")


def test_a_removed_member_can_no_longer_save(sqlite_service: Service) -> None:
    svc = sqlite_service
    owner = svc.user("owner@example.org")
    alice = svc.user("alice@example.org")
    svc.workspace("team", owner, **{"alice@example.org": "writer"})
    assert owner.put("/api/v1/workspaces/team/notebooks/content", params={"path": "p.ipynb"},
                     json=NB).status_code == 201
    opened = alice.post("/api/v1/workspaces/team/notebooks/open",
                        json={"path": "p.ipynb", "mode": "edit"})
    assert opened.status_code == 200, opened.text
    rid = opened.json()["runtime_id"]
    generation = owner.get("/api/v1/workspaces/team/notebooks/content",
                           params={"path": "p.ipynb"}).headers["etag"]
    assert owner.delete("/api/v1/workspaces/team/members/alice@example.org").status_code == 204
    changed = {**NB, "cells": [{"cell_type": "markdown", "id": "a", "metadata": {},
                                "source": "alice was here"}]}
    r = alice.put(f"/proxy/{rid}/api/contents/team/edit/p.ipynb",
                  json={"type": "notebook", "format": "json", "content": changed})
    assert r.status_code == 403, r.text
    assert "no longer a writer" in r.json()["message"], r.text
    after = owner.get("/api/v1/workspaces/team/notebooks/content", params={"path": "p.ipynb"})
    assert after.headers["etag"] == generation and "alice was here" not in after.text
    disk = Path(svc.settings.data_dir / "local" / "disks" / alice.runtime(rid)["disk_id"])
    assert "alice was here" in (disk / "team" / "edit" / "p.ipynb").read_text()  # kept
