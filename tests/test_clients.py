"""Jupyter's own clients against `/proxy/<id>/`, as their users use them (issue "Work with
the tools people already use"): every form a client sends its token in is accepted, a bad
token is a clear 401 (a refused websocket too), and no control-plane token reaches the
runtime or any log: the runtime's Jupyter logs a 404 with its whole URL, and the service's
access log writes every URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import InvalidStatus

from envmgr.backends.local import containers
from tests.conftest import ServiceProcess, execute, free_port, wait_until

ROOT = os.geteuid() == 0


@pytest.fixture
def running(service_process: Any) -> Any:
    sp: ServiceProcess = service_process()
    sp.start()
    admin = sp.api()
    assert admin.post("/api/v1/users", json={"email": "alice@example.org"}).status_code == 201
    token = admin.post("/api/v1/tokens", json={"email": "alice@example.org"}).json()["token"]
    alice = httpx.Client(base_url=sp.base, timeout=60,
                         headers={"Authorization": f"Bearer {token}"})
    assert alice.post("/api/v1/workspaces", json={"name": "ws-a"}).status_code == 201
    r = alice.post("/api/v1/workspaces/ws-a/runtimes", json={"autopause_minutes": 0})
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    wait_until(lambda: alice.get(f"/api/v1/runtimes/{rid}").json()["status"] == "running",
               120, what="the runtime to run")
    return sp, token, rid


def _logs(sp: ServiceProcess, rid: str) -> str:
    jupyter = sp.data_dir / "local" / "runtimes" / rid / "jupyter.log"
    return sp.log.read_text(errors="replace") + jupyter.read_text(errors="replace")


def test_every_token_form_is_accepted_and_none_reaches_the_runtime_or_a_log(running: Any
                                                                            ) -> None:
    sp, token, rid = running
    base = f"{sp.base}/proxy/{rid}"
    forms: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"Authorization": f"Bearer {token}"}, {}),
        ({"Authorization": f"token {token}"}, {}),  # @jupyterlab/services, gateway client
        ({}, {"token": token}),  # jupyter-kernel-client, websockets in browsers
        ({"Authorization": f"token {token}"}, {"token": token}),  # both, as VS Code sends
    ]
    for headers, params in forms:
        r = httpx.get(f"{base}/api/kernelspecs", headers=headers, params=params)
        assert r.status_code == 200 and "python3" in r.json()["kernelspecs"], (headers, r.text)
        # Jupyter logs a 404 with its whole URL: the runtime would write the token here.
        r = httpx.get(f"{base}/api/contents/no-such-{len(params)}", headers=headers,
                      params={**params, "seen": "yes"})
        assert r.status_code == 404, r.text
    for bad_headers, bad_params in (({"Authorization": f"token {token}x"}, {}),
                                    ({}, {"token": "nope"}), ({}, {})):
        r = httpx.get(f"{base}/api/kernelspecs", headers=bad_headers, params=bad_params)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "unauthorized"
        assert "'token <token>'" in r.json()["error"]["message"]
    # A kernel over its websocket with the token in the query only (no header at all).
    kernel = httpx.post(f"{base}/api/kernels", params={"token": token},
                        json={"name": "python3"}).json()
    ws_url = f"{base.replace('http', 'ws', 1)}/api/kernels/{kernel['id']}/channels"
    assert execute(f"{ws_url}?token={token}&session_id=s1", "print(6 * 7)").strip() == "42"
    # A refused handshake is a 401 with the error body, not a silent close.
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(f"{ws_url}?token=wrong", open_timeout=10)
    assert refused.value.response.status_code == 401
    assert b"unauthorized" in refused.value.response.body
    logs = _logs(sp, rid)
    jupyter = (sp.data_dir / "local" / "runtimes" / rid / "jupyter.log").read_text()
    assert "no-such-1?seen=yes" in jupyter  # the runtime logged the URL, minus the token
    assert "no-such-1?token=[redacted]&seen=yes" in sp.log.read_text()  # the access log
    assert token not in logs
    assert token.split(".")[-1] not in logs  # nor its secret part alone


@pytest.mark.skipif(not ROOT, reason="runs the gateway client beside sandboxed runtimes")
def test_jupyter_servers_gateway_client_runs_a_kernel_in_the_runtime(running: Any,
                                                                     tmp_path: Path) -> None:
    """jupyter_server started with only `--gateway-url` and `--GatewayClient.auth_token`
    (its default `token` scheme), as its users configure it."""
    sp, token, rid = running
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVMGR_")}
    env.update({"JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
                "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")})
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--port={port}", "--no-browser",
         "--allow-root", "--IdentityProvider.token=local", f"--ServerApp.root_dir={tmp_path}",
         f"--gateway-url={sp.base}/proxy/{rid}", f"--GatewayClient.auth_token={token}"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        local = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                             headers={"Authorization": "token local"})

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            try:
                return local.get("/api/kernelspecs").status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(up, 60, what="the gateway client's server")
        specs = local.get("/api/kernelspecs").json()
        assert "python3" in specs["kernelspecs"], specs
        kernel = local.post("/api/kernels", json={"name": "python3"})
        assert kernel.status_code == 201, kernel.text
        kid = kernel.json()["id"]
        assert kid in {k["id"] for k in httpx.get(
            f"{sp.base}/proxy/{rid}/api/kernels",
            headers={"Authorization": f"Bearer {token}"}).json()}  # it lives in the runtime
        home = execute(f"ws://127.0.0.1:{port}/api/kernels/{kid}/channels",
                        "import os; print(os.path.expanduser('~'))",
                        {"Authorization": "token local"}).strip()
        # the runtime's kernel, not one here: its HOME is the disk (in a container, where
        # the container mounts it)
        assert home == "/home/jupyter" if containers.available() else \
            home.startswith(str(sp.data_dir / "local" / "disks")), home
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    assert token not in _logs(sp, rid)


def test_a_runtime_token_opens_that_runtime_and_nothing_else(running: Any) -> None:
    sp, token, rid = running
    env = {**sp.env, "ENVMGR_URL": sp.base, "ENVMGR_TOKEN": token}
    done = subprocess.run([sys.executable, "-m", "envmgr.cli", "runtime", "connect", rid,
                           "--days", "7"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines()[:2])
    url, scoped = lines["url"].strip(), lines["token"].strip()
    assert url == f"{sp.base}/proxy/{rid}/" and scoped.startswith("envmgr_"), done.stdout
    # Its runtime, over HTTP (each form) and a kernel's websocket...
    assert httpx.get(f"{url}api/kernelspecs", headers={"Authorization": f"token {scoped}"}
                     ).status_code == 200
    kernel = httpx.post(f"{url}api/kernels", params={"token": scoped},
                        json={"name": "python3"}).json()
    ws_url = f"{url.replace('http', 'ws', 1)}api/kernels/{kernel['id']}/channels"
    assert execute(f"{ws_url}?token={scoped}", "print('scoped')").strip() == "scoped"
    # ...and nothing else: the API, the pages' sign-in, another runtime.
    api = httpx.Client(base_url=sp.base, headers={"Authorization": f"Bearer {scoped}"})
    for path in ("/api/v1/me", "/api/v1/runtimes", f"/api/v1/runtimes/{rid}"):
        r = api.get(path)
        assert r.status_code == 403 and "nothing else" in r.text, (path, r.text)
    assert api.post(f"/api/v1/runtimes/{rid}/pause").status_code == 403
    assert httpx.post(f"{sp.base}/api/v1/session", json={"token": scoped}).status_code == 401
    owner = httpx.Client(base_url=sp.base, headers={"Authorization": f"Bearer {token}"})
    assert owner.post("/api/v1/workspaces", json={"name": "ws-b"}).status_code == 201
    other = owner.post("/api/v1/workspaces/ws-b/runtimes", json={"autopause_minutes": 0})
    assert other.status_code == 202
    r = httpx.get(f"{sp.base}/proxy/{other.json()['id']}/api/status",
                  headers={"Authorization": f"Bearer {scoped}"})
    assert r.status_code == 404, r.text
    # Listed with its runtime (never its secret), and revoked at once.
    listed = {t["id"]: t for t in owner.get("/api/v1/tokens").json()["items"]}
    mine = [t for t in listed.values() if t["runtime"] == rid]
    assert len(mine) == 1 and mine[0]["expires_at"] and scoped not in str(listed)
    assert owner.delete(f"/api/v1/tokens/{mine[0]['id']}").status_code == 204
    r = httpx.get(f"{url}api/status", headers={"Authorization": f"token {scoped}"})
    assert r.status_code == 401
    # Only the runtime's owner makes one (an admin gets a 403, another user a 404).
    admin = httpx.Client(base_url=sp.base, headers={
        "Authorization": f"Bearer {(sp.data_dir / 'admin-token').read_text().strip()}"})
    assert admin.post(f"/api/v1/runtimes/{rid}/tokens", json={}).status_code == 403
    assert logs_clean(sp, rid, scoped)


def logs_clean(sp: ServiceProcess, rid: str, secret: str) -> bool:
    return secret not in _logs(sp, rid)
