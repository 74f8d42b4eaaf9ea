"""`envmgr`: run the service, and drive it over its HTTP API."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

# Imports are lazy (rich, httpx, pydantic-settings, the service's modules): `envmgr --help`
# and every command start in a fraction of a second.


def _group(help: str) -> typer.Typer:
    """A command group; help printed by click itself (typer's rich help imports rich)."""
    return typer.Typer(rich_markup_mode=None, help=help, no_args_is_help=True)


app = _group("envmgr: per-user notebook runtimes with persistent disks.")
runtime_app = _group("Create and drive your runtimes.")
token_app = _group("API tokens.")
user_app = _group("Users (admins only).")
workspace_app = _group("Workspaces and members.")
job_app = _group("Notebook jobs: run a notebook headless, watch it, get its outputs.")
app.add_typer(runtime_app, name="runtime")
app.add_typer(job_app, name="job")
schedule_app = _group("Schedules: notebook jobs on a cron, in your time zone.")
app.add_typer(schedule_app, name="schedule")
disk_app = _group("Persistent disks: find a kept disk, delete one.")
app.add_typer(disk_app, name="disk")
app.add_typer(token_app, name="token")
app.add_typer(user_app, name="user")
app.add_typer(workspace_app, name="workspace")


class _LazyConsole:
    """A rich Console made on first use (importing rich costs a tenth of a second)."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            from rich.console import Console
            self._console = Console(stderr=self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


out = _LazyConsole()
err = _LazyConsole(stderr=True)


def _settings(**overrides: Any) -> Any:
    from envmgr.settings import Settings
    return Settings(**overrides)


def _table(items: list[dict[str, Any]], columns: list[str], rows: list[list[str]],
           ids: tuple[str, ...] = ()) -> None:
    """A table whose id columns (`id` and those named in `ids`) are never cut or wrapped:
    the ids are what you copy into the next command. Other columns wrap. Without a
    terminal (a pipe, a file, CI): a header line, then a line per row, tab-separated,
    nothing cut (for `cut`, `awk` and people alike)."""
    full = [[item["id"], *row] for item, row in zip(items, rows, strict=True)]
    if not out.is_terminal:
        flat = [[" ".join(cell.split()) for cell in row] for row in [["id", *columns], *full]]
        typer.echo("\n".join("\t".join(row) for row in flat))
        return
    from rich.table import Table
    table = Table()
    for n, name in enumerate(["id", *columns]):
        if n == 0 or name in ids:
            table.add_column(name, no_wrap=True,
                             min_width=max([len(r[n]) for r in full] or [len(name)]))
        else:
            table.add_column(name, overflow="fold")
    for row in full:
        table.add_row(*row)
    out.print(table)


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
    settings = _settings(**overrides)
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


@app.command("stop-local")
def stop_local(
    data_dir: Path | None = typer.Option(None, help="Data folder [env ENVMGR_DATA_DIR]"),
) -> None:
    """Stop every runtime, job and helper the local backend started from a data dir (they
    outlive `envmgr serve` by design, as VMs do), and unmount its disks: run it once the
    service is stopped, before the machine goes down or the data dir is removed. Runtimes
    show as stopped at the next start."""
    from envmgr.backends.local.backend import stop_everything

    settings = _settings(**({"data_dir": data_dir} if data_dir else {}))
    ended = stop_everything(settings.data_dir / "local")
    out.print(f"stopped {ended} process(es) of {settings.data_dir / 'local'}")


# -- talking to the API ------------------------------------------------------------------
class Api:
    def __init__(self, url: str | None, token: str | None) -> None:
        import httpx
        settings = _settings()  # the service's own settings: same port, same data dir
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
        import httpx
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
        from envmgr.runtimes.machine import STABLE
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
    _table(items, ["workspace", "owner", "status", "machine", "disk", "url", "reason"],
           [[r["workspace"], r["owner"], r["status"], r["machine_type"], r["disk_id"] or "",
             r["url"] or "", r["status_reason"] or ""] for r in items], ids=("disk",))


@runtime_app.command("create")
def runtime_create(workspace: str = typer.Option(..., "--workspace", "-w"),
                   machine_type: str | None = typer.Option(None),
                   disk_size_gb: int | None = typer.Option(None, min=1, max=65536,
                                                           help="A new disk's size"),
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
    elif disk_size_gb is not None:
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


@runtime_app.command("connect")
def runtime_connect(runtime_id: str,
                    days: float | None = typer.Option(
                        30, "--days", help="the token's lifetime in days (0: until revoked)"),
                    url: str | None = URL, token: str | None = TOKEN,
                    as_json: bool = JSON) -> None:
    """A token for this runtime's Jupyter alone, and the URL to give a Jupyter client (VS
    Code's "Existing Jupyter Server", JupyterLab Desktop, a gateway client)."""
    api = Api(url, token)
    made = api.call("POST", f"/runtimes/{runtime_id}/tokens", json={
        "expires_in_days": days or None, "note": "runtime connect"})
    server = f"{str(api.http.base_url).removesuffix('/api/v1/')}/proxy/{runtime_id}/"
    if as_json:
        out.print_json(data={**made, "url": server})
        return
    print(f"url:     {server}\ntoken:   {made['token']}\n"
          f"expires: {made['expires_at'] or 'never'} (revoke: DELETE /api/v1/tokens/"
          f"{made['id']})\n"
          f"VS Code / JupyterLab Desktop: paste {server}?token={made['token']}\n"
          f"jupyter_server gateway: --gateway-url={server.rstrip('/')} "
          f"--GatewayClient.auth_token=<token>\n"
          f"This token opens {runtime_id}'s Jupyter and nothing else of envmgr.")


@disk_app.command("list")
def disk_list(workspace: str | None = typer.Option(None, "--workspace", "-w"),
              url: str | None = URL, token: str | None = TOKEN, as_json: bool = JSON) -> None:
    """Your disks (all of them, for an admin); a kept disk has no runtime: pass its id to
    `runtime create --disk-id`."""
    params = {"limit": 1000, **({"workspace": workspace} if workspace else {})}
    items = Api(url, token).call("GET", "/disks", params=params)["items"]
    if as_json:
        out.print_json(json.dumps(items))
        return
    _table(items, ["workspace", "owner", "status", "size", "attached to", "per month"],
           [[d["workspace"], d["owner"], d["status"], f"{d['size_gb']} GB",
             d["attached_to"] or "(kept)", f"${d['cost_per_month']:,.2f}"] for d in items])


@disk_app.command("delete")
def disk_delete(disk_id: str, url: str | None = URL, token: str | None = TOKEN) -> None:
    """Delete a kept disk and the files on it (a disk attached to a runtime is refused)."""
    d = Api(url, token).call("DELETE", f"/disks/{disk_id}")
    out.print(f"{d['id']}: {d['status']}")


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


@workspace_app.command("autopause")
def workspace_autopause(
        name: str,
        default: float | None = typer.Option(None, help="minutes a new runtime gets"),
        minimum: float | None = typer.Option(None, "--min", help="lowest minutes allowed"),
        maximum: float | None = typer.Option(None, "--max", help="highest minutes allowed "
                                             "(autopause can then not be turned off)"),
        reset: bool = typer.Option(False, help="put the service's default and bounds back"),
        url: str | None = URL, token: str | None = TOKEN) -> None:
    """Show or set a workspace's idle limits for its runtimes (owners and admins)."""
    api = Api(url, token)
    given = (("default_minutes", default), ("min_minutes", minimum), ("max_minutes", maximum))
    change: dict[str, float | None] = {k: v for k, v in given if v is not None}
    if reset:
        change = dict.fromkeys(("default_minutes", "min_minutes", "max_minutes"))
    ws = api.call("PATCH", f"/workspaces/{name}", json={"autopause": change}) \
        if change else api.call("GET", f"/workspaces/{name}")
    a = ws["autopause"]
    out.print(f"{name}: runtimes autopause after {a['default_minutes']:g} idle minutes by "
              f"default, {a['min_minutes']:g} to {a['max_minutes']:g} allowed"
              + ("; 0 turns it off" if a["may_turn_off"] else "; it cannot be turned off"))


# -- notebook jobs ------------------------------------------------------------------------
JOB_STABLE = ("succeeded", "failed", "timed_out", "canceled")


def parse_parameter(item: str) -> tuple[str, Any]:
    """`name=value`: the value as JSON when it is JSON (0.1, true, [1,2], "x"), else text."""
    name, sep, raw = item.partition("=")
    if not sep or not name:
        err.print(f"[red]-p {item!r}:[/red] expected name=value")
        raise typer.Exit(2)
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def _show_jobs(items: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(items))
        return
    def cells(p: dict[str, Any]) -> str:
        return f"{p['cells_done']}/{p['cells_total']}" if p["cells_total"] else ""
    _table(items, ["status", "notebook", "cells", "started", "reason"],
           [[j["status"], j["notebook"] or "(inline)", cells(j["progress"]),
             j["started_at"] or "", j["status_reason"] or ""] for j in items])


def _events(api: Api, job_id: str) -> Any:
    """(event, data) pairs of the job's stream, reconnecting after a dropped connection."""
    import httpx
    last = "0"
    while True:
        try:
            with api.http.stream("GET", f"/jobs/{job_id}/stream", timeout=None,
                                 headers={"Last-Event-ID": last}) as r:
                event, data = "", ""
                for line in r.iter_lines():
                    if line.startswith("id: "):
                        last = line.removeprefix("id: ")
                    elif line.startswith("event: "):
                        event = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        data = line.removeprefix("data: ")
                    elif not line and event:
                        yield event, json.loads(data)
                        if event == "end":
                            return
                        event = ""
        except httpx.HTTPError:
            time.sleep(1)


def watch_job(api: Api, job: dict[str, Any]) -> dict[str, Any]:
    """A live progress bar of cells with the log printed above it, until the job ends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("cells"), console=out.get()) as bar:
        task = bar.add_task(f"{job['id']}: {job['status']}", total=None)
        for event, data in _events(api, job["id"]):
            if event == "log":
                bar.console.print(data["line"], markup=False, highlight=False,
                                  style="red" if data["stream"] == "stderr" else None)
            elif event == "progress":
                bar.update(task, description=f"{job['id']}: {data['status']}",
                           total=data["cells_total"], completed=data["cells_done"])
            elif event == "end":
                job = data
                p = job["progress"]
                bar.update(task, description=f"{job['id']}: {job['status']}",
                           total=p["cells_total"] or p["cells_done"] or 1,
                           completed=p["cells_done"])
    return job


@job_app.command("run")
def job_run(notebook: str = typer.Argument(..., help="A local .ipynb file, or a notebook "
                                           "path in the workspace's bucket"),
            workspace: str = typer.Option(..., "--workspace", "-w"),
            parameter: list[str] = typer.Option([], "--parameter", "-p",
                                                help="name=value (JSON values), repeatable"),
            time_limit: int | None = typer.Option(None, help="Seconds for the whole run"),
            network: str = typer.Option("default", help="default, or none: no network"),
            machine_type: str | None = typer.Option(None),
            label: list[str] = typer.Option([], help="key=value, repeatable"),
            webhook_url: str | None = typer.Option(None),
            webhook_secret: str | None = typer.Option(None, envvar="ENVMGR_WEBHOOK_SECRET"),
            idempotency_key: str | None = typer.Option(None),
            wait: bool = typer.Option(False, "--wait/--no-wait",
                                      help="Follow its progress and log until it ends"),
            url: str | None = URL, token: str | None = TOKEN, as_json: bool = JSON) -> None:
    """Run a notebook headless, with parameters (papermill injects them)."""
    body: dict[str, Any] = {"parameters": dict(parse_parameter(p) for p in parameter),
                            "network": network}
    local = Path(notebook)
    if local.suffix == ".ipynb" and local.is_file():
        try:
            body["ipynb"] = json.loads(local.read_text())
        except ValueError as exc:
            err.print(f"[red]{notebook} is not JSON:[/red] {exc}")
            raise typer.Exit(2) from None
    else:
        body["notebook"] = notebook
    extras = {"time_limit_seconds": time_limit, "machine_type": machine_type,
              "idempotency_key": idempotency_key}
    body.update({k: v for k, v in extras.items() if v is not None})
    if label:
        body["labels"] = dict(item.partition("=")[::2] for item in label)
    if webhook_url:
        body["webhook"] = {"url": webhook_url, "secret": webhook_secret or ""}
    api = Api(url, token)
    job = api.call("POST", f"/workspaces/{workspace}/jobs", json=body)
    if wait:
        job = watch_job(api, job)
    _show_jobs([job], as_json)
    if wait and job["status"] != "succeeded":
        e = job.get("error") or {}
        err.print(f"[red]{job['status']}:[/red] {e.get('message') or job['status_reason']}")
        raise typer.Exit(1)


@job_app.command("list")
def job_list(workspace: str | None = typer.Option(None, "--workspace", "-w"),
             status: str | None = None, url: str | None = URL, token: str | None = TOKEN,
             as_json: bool = JSON) -> None:
    """Your jobs (workspace owners: their workspaces'), newest first."""
    params = {k: v for k, v in {"workspace": workspace, "status": status}.items() if v}
    _show_jobs(Api(url, token).call("GET", "/jobs", params=params)["items"], as_json)


@job_app.command("cancel")
def job_cancel(job_id: str, url: str | None = URL, token: str | None = TOKEN,
               as_json: bool = JSON) -> None:
    """Cancel a job: queued ones at once, running ones are killed within seconds."""
    _show_jobs([Api(url, token).call("POST", f"/jobs/{job_id}/cancel")], as_json)


@job_app.command("output")
def job_output(job_id: str, format: str = typer.Option("log", help="ipynb, html or log"),
               output: Path | None = typer.Option(None, "--output", "-o",
                                                  help="Write to this file"),
               url: str | None = URL, token: str | None = TOKEN) -> None:
    """A job's executed notebook, its HTML or its log (to stdout unless -o)."""
    import httpx
    api = Api(url, token)
    try:
        r = api.http.get(f"/jobs/{job_id}/output", params={"format": format})
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach envmgr:[/red] {exc}")
        raise typer.Exit(2) from None
    if r.status_code >= 400:
        e = r.json().get("error", {}) if r.headers.get("content-type", "").startswith(
            "application/json") else {}
        err.print(f"[red]{r.status_code} {e.get('code', '')}:[/red] {e.get('message', r.text)}")
        raise typer.Exit(1)
    if output is None:
        typer.echo(r.text, nl=False)
    else:
        output.write_bytes(r.content)
        out.print(f"wrote {output} ({len(r.content)} bytes)")


# -- schedules ----------------------------------------------------------------------------
def _show_schedules(items: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(items))
        return
    def when(s: dict[str, Any]) -> str:
        return f"{s['cron']} ({s['timezone']})" if s["cron"] else \
            f"after {s['after']['schedule']} {'/'.join(s['after']['on'])}"
    _table(items, ["name", "notebook", "when", "active", "next run", "last job"],
           [[s["name"], s["notebook"], when(s), "yes" if s["active"] else "paused",
             s["next_run_at"] or "",
             f"{s['last_job']['id']} {s['last_job']['status']}" if s["last_job"] else ""]
            for s in items])


@schedule_app.command("create")
def schedule_create(name: str, notebook: str = typer.Argument(..., help="A notebook path in "
                                                               "the workspace's bucket"),
                    workspace: str = typer.Option(..., "--workspace", "-w"),
                    cron: str | None = typer.Option(None, help="5 fields, e.g. '0 6 * * 1-5'"),
                    tz: str = typer.Option("UTC", "--tz", help="IANA time zone"),
                    after: str | None = typer.Option(None, help="Run after this schedule's "
                                                     "jobs end (instead of a cron)"),
                    on: list[str] = typer.Option([], help="With --after: statuses, repeatable "
                                                 "(default succeeded)"),
                    parameter: list[str] = typer.Option([], "--parameter", "-p"),
                    overlap: str = typer.Option("skip", help="skip, queue or cancel_previous"),
                    catch_up: str = typer.Option("none", help="none or latest"),
                    time_limit: int | None = typer.Option(None),
                    url: str | None = URL, token: str | None = TOKEN,
                    as_json: bool = JSON) -> None:
    """Create a schedule: a notebook job on a cron in a time zone, or after another's."""
    body: dict[str, Any] = {"name": name, "notebook": notebook, "timezone": tz,
                            "overlap": overlap, "catch_up": catch_up,
                            "parameters": dict(parse_parameter(p) for p in parameter)}
    if cron:
        body["cron"] = cron
    if after:
        body["after"] = {"schedule": after, "on": on or ["succeeded"]}
    if time_limit:
        body["time_limit_seconds"] = time_limit
    _show_schedules([Api(url, token).call("POST", f"/workspaces/{workspace}/schedules",
                                          json=body)], as_json)


@schedule_app.command("preview")
def schedule_preview(cron: str = typer.Argument(..., help="5 fields or an alias, e.g. "
                                                "'0 6 * * 1-5' or @daily"),
                     tz: str = typer.Option("UTC", "--tz", help="IANA time zone"),
                     count: int = typer.Option(5, min=1, max=100),
                     start: str | None = typer.Option(None, "--from", help="ISO time with "
                                                      "its offset (default: now)"),
                     url: str | None = URL, token: str | None = TOKEN,
                     as_json: bool = JSON) -> None:
    """The next runs of a cron in a time zone, before you save a schedule."""
    params: dict[str, Any] = {"cron": cron, "timezone": tz, "count": count}
    if start:
        params["from"] = start
    runs = Api(url, token).call("GET", "/schedules/preview", params=params)["runs"]
    if as_json:
        print(json.dumps(runs))
        return
    from datetime import UTC, datetime
    print(f"{tz}\tUTC")
    for r in runs:
        print(f"{r}\t{datetime.fromisoformat(r).astimezone(UTC).isoformat()}")


@schedule_app.command("list")
def schedule_list(workspace: str | None = typer.Option(None, "--workspace", "-w"),
                  url: str | None = URL, token: str | None = TOKEN,
                  as_json: bool = JSON) -> None:
    """The schedules you can see, with their next run and last job."""
    params = {"workspace": workspace} if workspace else {}
    _show_schedules(Api(url, token).call("GET", "/schedules", params=params)["items"], as_json)


def _set_active(schedule_id: str, active: bool, url: str | None, token: str | None,
                as_json: bool) -> None:
    _show_schedules([Api(url, token).call("PATCH", f"/schedules/{schedule_id}",
                                          json={"active": active})], as_json)


@schedule_app.command("pause")
def schedule_pause(schedule_id: str, url: str | None = URL, token: str | None = TOKEN,
                   as_json: bool = JSON) -> None:
    """Pause a schedule: no runs until it is resumed."""
    _set_active(schedule_id, False, url, token, as_json)


@schedule_app.command("resume")
def schedule_resume(schedule_id: str, url: str | None = URL, token: str | None = TOKEN,
                    as_json: bool = JSON) -> None:
    """Resume a schedule (its catch_up policy decides about the slots it missed)."""
    _set_active(schedule_id, True, url, token, as_json)


@schedule_app.command("run")
def schedule_run(schedule_id: str, wait: bool = typer.Option(False, "--wait/--no-wait"),
                 url: str | None = URL, token: str | None = TOKEN,
                 as_json: bool = JSON) -> None:
    """Run a schedule's job now, outside its cron."""
    api = Api(url, token)
    job = api.call("POST", f"/schedules/{schedule_id}/run")
    if wait:
        job = watch_job(api, job)
    _show_jobs([job], as_json)


if __name__ == "__main__":
    app()
