"""`envmgr`: run the service, and drive it over its HTTP API."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from envmgr.runtimes.machine import STABLE
from envmgr.settings import Settings

app = typer.Typer(help="envmgr: per-user notebook runtimes with persistent disks.",
                  no_args_is_help=True)
runtime_app = typer.Typer(help="Create and drive your runtimes.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
user_app = typer.Typer(help="Users (admins only).", no_args_is_help=True)
workspace_app = typer.Typer(help="Workspaces and members.", no_args_is_help=True)
app.add_typer(runtime_app, name="runtime")
app.add_typer(token_app, name="token")
app.add_typer(user_app, name="user")
app.add_typer(workspace_app, name="workspace")
out = Console()
err = Console(stderr=True)


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Bind address [env ENVMGR_HOST, 127.0.0.1]"),
    port: int | None = typer.Option(None, help="Port [env ENVMGR_PORT, 8000]"),
    data_dir: Path | None = typer.Option(None, help="Data folder [env ENVMGR_DATA_DIR]"),
) -> None:
    """Start the control plane with embedded defaults (SQLite, local backend and bucket)."""
    import uvicorn

    from envmgr.app import create_app
    from envmgr.auth.bootstrap import ensure_admin, token_file
    from envmgr.core.db import DatabaseError, make_engine, migrate
    from envmgr.core.logs import setup_logging

    overrides: dict[str, Any] = {k: v for k, v in
                                 {"host": host, "port": port, "data_dir": data_dir}.items()
                                 if v is not None}
    settings = Settings(**overrides)
    setup_logging(settings.log_level, settings.log_json)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
    except DatabaseError as exc:
        err.print(f"[red]envmgr cannot start:[/red] {exc}")
        raise typer.Exit(2) from None
    made = ensure_admin(engine, settings)
    engine.dispose()
    out.print(f"envmgr {settings.backend} backend, data in {settings.data_dir}")
    if made:
        out.print(f"admin token (also in {token_file(settings)}): [bold]{made}[/bold]")
    else:
        out.print(f"admin token: in {token_file(settings)}")
    out.print(f"pages: {settings.base_url}/ (workspaces)  {settings.base_url}/admin (costs)")
    out.print(f"API on {settings.base_url}  docs: {settings.base_url}/docs")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                timeout_graceful_shutdown=10)


# -- talking to the API ------------------------------------------------------------------
class Api:
    def __init__(self, url: str | None, token: str | None) -> None:
        settings = Settings()  # the service's own settings: same port, same data dir
        url = url or settings.base_url
        if not token:
            path = settings.data_dir / "admin-token"
            token = path.read_text().strip() if path.exists() else None
        if not token:
            err.print("no token: pass --token or set ENVMGR_TOKEN")
            raise typer.Exit(2)
        self.http = httpx.Client(base_url=url.rstrip("/") + "/api/v1",
                                 headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            err.print(f"[red]cannot reach envmgr at {self.http.base_url}:[/red] {exc}")
            raise typer.Exit(2) from None
        if r.status_code >= 400:
            try:
                e = r.json()["error"]
                err.print(f"[red]{r.status_code} {e['code']}:[/red] {e['message']}")
            except (ValueError, KeyError):
                err.print(f"[red]{r.status_code}:[/red] {r.text}")
            raise typer.Exit(1)
        return r.json() if r.content else None

    def wait(self, runtime: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
        """Poll with a spinner until the runtime reaches a stable status."""
        deadline = time.monotonic() + timeout
        with out.status(f"{runtime['id']}: {runtime['status']}") as spinner:
            while runtime["status"] not in STABLE and time.monotonic() < deadline:
                time.sleep(0.5)
                runtime = self.call("GET", f"/runtimes/{runtime['id']}")
                spinner.update(f"{runtime['id']}: {runtime['status']}")
        return runtime


URL = typer.Option(None, "--url", envvar="ENVMGR_URL",
                   help="envmgr URL (default: the service's, from ENVMGR_PORT etc.)")
TOKEN = typer.Option(None, "--token", envvar="ENVMGR_TOKEN",
                     help="API token (default: the local admin token)")
WAIT = typer.Option(True, "--wait/--no-wait", help="Wait for a stable status")
JSON = typer.Option(False, "--json", help="Print JSON")


def _show_runtimes(items: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(items))
        return
    table = Table("id", "workspace", "owner", "status", "machine", "disk", "url", "reason")
    for r in items:
        table.add_row(r["id"], r["workspace"], r["owner"], r["status"], r["machine_type"],
                      r["disk_id"] or "", r["url"] or "", r["status_reason"] or "")
    out.print(table)


@runtime_app.command("create")
def runtime_create(workspace: str = typer.Option(..., "--workspace", "-w"),
                   machine_type: str | None = typer.Option(None),
                   disk_size_gb: int | None = typer.Option(None),
                   disk_id: str | None = typer.Option(None, help="Re-attach this kept disk"),
                   autopause: float | None = typer.Option(None, help="Minutes; 0 turns it off"),
                   url: str | None = URL, token: str | None = TOKEN, wait: bool = WAIT,
                   as_json: bool = JSON) -> None:
    """Create your runtime in a workspace."""
    body: dict[str, Any] = {}
    if machine_type:
        body["machine_type"] = machine_type
    if disk_id:
        body["disk"] = {"id": disk_id}
    elif disk_size_gb:
        body["disk"] = {"size_gb": disk_size_gb}
    if autopause is not None:
        body["autopause_minutes"] = autopause
    api = Api(url, token)
    rt = api.call("POST", f"/workspaces/{workspace}/runtimes", json=body)
    _show_runtimes([api.wait(rt) if wait else rt], as_json)


@runtime_app.command("list")
def runtime_list(workspace: str | None = typer.Option(None, "--workspace", "-w"),
                 status: str | None = None, url: str | None = URL, token: str | None = TOKEN,
                 as_json: bool = JSON) -> None:
    """List the runtimes you can see."""
    params = {k: v for k, v in {"workspace": workspace, "status": status}.items() if v}
    _show_runtimes(Api(url, token).call("GET", "/runtimes", params=params)["items"], as_json)


def _act(runtime_id: str, method: str, path: str, url: str | None, token: str | None,
         wait: bool,
         as_json: bool, **kw: Any) -> None:
    api = Api(url, token)
    rt = api.call(method, path.format(id=runtime_id), **kw)
    _show_runtimes([api.wait(rt) if wait else rt], as_json)


@runtime_app.command("pause")
def runtime_pause(runtime_id: str, url: str | None = URL, token: str | None = TOKEN,
                  wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Pause a runtime (its disk stays)."""
    _act(runtime_id, "POST", "/runtimes/{id}/pause", url, token, wait, as_json)


@runtime_app.command("resume")
def runtime_resume(runtime_id: str, url: str | None = URL, token: str | None = TOKEN,
                   wait: bool = WAIT, as_json: bool = JSON) -> None:
    """Resume a paused runtime on its disk."""
    _act(runtime_id, "POST", "/runtimes/{id}/resume", url, token, wait, as_json)


@runtime_app.command("delete")
def runtime_delete(runtime_id: str,
                   keep_disk: bool = typer.Option(True, "--keep-disk/--delete-disk"),
                   url: str | None = URL, token: str | None = TOKEN, wait: bool = WAIT,
                   as_json: bool = JSON) -> None:
    """Delete a runtime, keeping its disk unless --delete-disk."""
    _act(runtime_id, "DELETE", "/runtimes/{id}", url, token, wait, as_json,
         params={"keep_disk": str(keep_disk).lower()})


@token_app.command("create")
def token_create(email: str, url: str | None = URL, token: str | None = TOKEN) -> None:
    """Make an API token for a user (admins: anyone; users: themselves)."""
    out.print(Api(url, token).call("POST", "/tokens", json={"email": email})["token"])


@user_app.command("create")
def user_create(email: str, admin: bool = False, url: str | None = URL,
                token: str | None = TOKEN) -> None:
    """Create a user."""
    u = Api(url, token).call("POST", "/users", json={"email": email, "admin": admin})
    out.print(f"created {u['email']}{' (admin)' if u['admin'] else ''}")


@workspace_app.command("create")
def workspace_create(name: str, url: str | None = URL, token: str | None = TOKEN) -> None:
    """Create a workspace; you become its owner."""
    ws = Api(url, token).call("POST", "/workspaces", json={"name": name})
    out.print(f"created workspace {ws['name']} (bucket {ws['bucket']})")


@workspace_app.command("add-member")
def workspace_add_member(name: str, email: str,
                         role: str = typer.Option("writer", help="owner, writer or reader"),
                         url: str | None = URL, token: str | None = TOKEN) -> None:
    """Add a member to a workspace, or change their role."""
    Api(url, token).call("PUT", f"/workspaces/{name}/members/{email}", json={"role": role})
    out.print(f"{email} is {role} of {name}")


if __name__ == "__main__":
    app()
