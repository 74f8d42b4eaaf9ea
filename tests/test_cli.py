"""The CLI against a real service: `envmgr serve` as api.md says, and the runtime commands."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from tests.conftest import Service, enterable, wait_until


def _cli(svc: Service, *args: str, token: str | None = None,
         columns: int = 250) -> subprocess.CompletedProcess:
    env = {**os.environ, "ENVMGR_URL": svc.base, "ENVMGR_TOKEN": token or svc.admin_token,
           "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "envmgr.cli", *args], env=env,
                          capture_output=True, text=True, timeout=180)


def test_runtime_commands(sqlite_service: Service) -> None:
    svc = sqlite_service
    assert _cli(svc, "user", "create", "cli@example.org").returncode == 0
    token = _cli(svc, "token", "create", "cli@example.org").stdout.strip()
    assert token.startswith("envmgr_")
    assert _cli(svc, "workspace", "create", "cli-ws", token=token).returncode == 0
    said = _cli(svc, "workspace", "autopause", "cli-ws", "--default", "20", "--max", "60",
                token=token)
    assert said.returncode == 0, said.stderr
    assert "after 20 idle minutes by default" in said.stdout and "cannot be turned off" \
        in said.stdout
    said = _cli(svc, "workspace", "autopause", "cli-ws", "--reset", token=token)
    assert "0 turns it off" in said.stdout, said.stdout
    r = _cli(svc, "runtime", "create", "-w", "cli-ws", "--autopause", "0", "--json", token=token)
    assert r.returncode == 0, r.stderr
    import json
    rt = json.loads(r.stdout)[0]
    assert rt["status"] == "running" and rt["owner"] == "cli@example.org"
    listed = _cli(svc, "runtime", "list", token=token)
    assert rt["id"] in listed.stdout and "running" in listed.stdout
    assert '"paused"' in _cli(svc, "runtime", "pause", rt["id"], "--json", token=token).stdout
    assert '"running"' in _cli(svc, "runtime", "resume", rt["id"], "--json", token=token).stdout
    out = _cli(svc, "runtime", "delete", rt["id"], "--json", token=token).stdout
    assert '"deleted"' in out
    # Errors are one readable line and a non-zero exit, not a traceback.
    bad = _cli(svc, "runtime", "pause", rt["id"], token=token)
    assert bad.returncode == 1 and "invalid_transition" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert _cli(svc, "runtime", "list", token="envmgr_wrong").returncode == 1


def test_serve_first_start_writes_and_prints_the_admin_token(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import free_port
    port = free_port()
    data = enterable(tmp_path / "fresh")  # as root, runtime users must reach its disks
    proc = subprocess.Popen([sys.executable, "-m", "envmgr.cli", "serve", "--port", str(port),
                             "--data-dir", str(data)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "ENVMGR_LOG_JSON": "false", "COLUMNS": "250"})
    try:
        import httpx
        wait_until(lambda: (data / "admin-token").exists(), 60, what="admin token file")
        token = (data / "admin-token").read_text().strip()
        assert stat.S_IMODE((data / "admin-token").stat().st_mode) == 0o600

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/v1/me",
                                 headers={"Authorization": f"Bearer {token}"}).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(up, 60, what="service up")
        assert (data / "envmgr.core.db").exists()
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert token in output and f"http://127.0.0.1:{port}/docs" in output


def test_the_cli_finds_the_service_from_its_own_settings(sqlite_service: Service) -> None:
    """No ENVMGR_URL: the CLI reads the service's settings (ENVMGR_PORT, the data dir's
    admin token), as a second terminal would."""
    svc = sqlite_service
    env = {k: v for k, v in os.environ.items() if k not in ("ENVMGR_URL", "ENVMGR_TOKEN")}
    env.update(ENVMGR_PORT=str(svc.settings.port), ENVMGR_DATA_DIR=str(svc.settings.data_dir),
               COLUMNS="250")
    r = subprocess.run([sys.executable, "-m", "envmgr.cli", "workspace", "create", "from-port"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert svc.admin.get("/api/v1/workspaces/from-port").status_code == 200


def test_job_commands(make_service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import nbformat
    svc = make_service(job_poll_seconds=0.1)
    assert _cli(svc, "workspace", "create", "jobs-ws").returncode == 0
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("alpha = 1\nlabel = 'x'",
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print('alpha', alpha, 'label', label)")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    r = _cli(svc, "job", "run", str(path), "-w", "jobs-ws", "-p", "alpha=0.1", "-p",
             "label=hello", "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "alpha 0.1 label hello" in r.stdout  # the live log, printed as it came
    assert "succeeded" in r.stdout and "3/3 cells" in r.stdout  # with papermill's injected one
    listed = json.loads(_cli(svc, "job", "list", "-w", "jobs-ws", "--json").stdout)
    job_id = listed[0]["id"]
    assert job_id in _cli(svc, "job", "list").stdout  # the full id, never cut
    assert "alpha 0.1" in _cli(svc, "job", "output", job_id).stdout
    html = tmp_path / "out.html"
    assert _cli(svc, "job", "output", job_id, "--format", "html", "-o", str(html)).returncode == 0
    assert "alpha 0.1" in html.read_text()
    again = _cli(svc, "job", "cancel", job_id)
    assert again.returncode == 1 and "invalid_transition" in again.stderr
    failing = tmp_path / "bad.ipynb"
    nb.cells.append(nbformat.v4.new_code_cell("raise RuntimeError('nope')"))
    nbformat.write(nb, str(failing))
    bad = _cli(svc, "job", "run", str(failing), "-w", "jobs-ws", "--wait")
    assert bad.returncode == 1 and "nope" in bad.stderr


def test_schedule_commands(make_service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import nbformat
    svc = make_service(job_poll_seconds=0.1)
    assert _cli(svc, "workspace", "create", "sched-ws").returncode == 0
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('scheduled')")]
    svc.admin.put("/api/v1/workspaces/sched-ws/notebooks/content",
                  params={"path": "daily.ipynb"}, content=nbformat.writes(nb))
    r = _cli(svc, "schedule", "create", "daily", "daily.ipynb", "-w", "sched-ws", "--cron",
             "0 6 * * 1-5", "--tz", "Europe/Paris", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)[0]
    assert s["timezone"] == "Europe/Paris" and s["next_run_at"]
    listed = _cli(svc, "schedule", "list")
    assert s["id"] in listed.stdout and "0 6 * * 1-5 (Europe/Paris)" in listed.stdout
    assert '"active": false' in _cli(svc, "schedule", "pause", s["id"], "--json").stdout
    assert '"active": true' in _cli(svc, "schedule", "resume", s["id"], "--json").stdout
    ran = _cli(svc, "schedule", "run", s["id"], "--wait")
    assert ran.returncode == 0 and "scheduled" in ran.stdout and "succeeded" in ran.stdout
    bad = _cli(svc, "schedule", "create", "x", "daily.ipynb", "-w", "sched-ws", "--cron", "* *")
    assert bad.returncode == 1 and "5-field cron" in bad.stderr
    seen = _cli(svc, "schedule", "preview", "0 6 * * 1-5", "--tz", "Europe/Paris",
                "--from", "2026-12-04T12:00:00Z", "--count", "2")
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.splitlines() == [
        "Europe/Paris\tUTC", "2026-12-07T06:00:00+01:00\t2026-12-07T05:00:00+00:00",
        "2026-12-08T06:00:00+01:00\t2026-12-08T05:00:00+00:00"]


def test_tables_keep_full_ids_and_disk_commands_find_a_kept_disk(sqlite_service: Service) -> None:
    svc = sqlite_service
    assert _cli(svc, "workspace", "create", "kept").returncode == 0
    bad = _cli(svc, "runtime", "create", "-w", "kept", "--disk-size-gb", "0")
    assert bad.returncode == 2 and "--disk-size-gb" in bad.stderr and "Traceback" not in bad.stderr
    import json
    rt = json.loads(_cli(svc, "runtime", "create", "-w", "kept", "--autopause", "0",
                         "--json").stdout)[0]
    # On a narrow terminal (80 columns, where the ids were cut to "rt-1m8…"), whole ids.
    listed = _cli(svc, "runtime", "list", columns=80).stdout
    assert rt["id"] in listed and rt["disk_id"] in listed and "…" not in listed.split()[0]
    # Without a terminal (here, a pipe): a header, then one tab-separated line per row.
    header, *lines = listed.splitlines()
    assert header.split("\t")[:2] == ["id", "workspace"], header
    row = next(line.split("\t") for line in lines if line.startswith(rt["id"]))
    assert len(row) == len(header.split("\t")) and row[0] == rt["id"], row
    assert rt["disk_id"] in row and "running" in row, row
    assert _cli(svc, "runtime", "delete", rt["id"], "--keep-disk").returncode == 0
    disks = _cli(svc, "disk", "list", "-w", "kept", columns=80)
    assert disks.returncode == 0, disks.stderr
    assert rt["disk_id"] in disks.stdout and "(kept)" in disks.stdout
    attached = _cli(svc, "disk", "delete", "pd-nope")
    assert attached.returncode == 1 and "not_found" in attached.stderr
    assert "deleting" in _cli(svc, "disk", "delete", rt["disk_id"]).stdout or \
        "deleted" in _cli(svc, "disk", "list", "-w", "kept", "--json").stdout


def test_the_cli_imports_nothing_heavy_before_a_command_needs_it() -> None:
    """`envmgr --help` must be quick: rich, httpx, pydantic-settings and the service's
    modules load only when a command uses them (about 0.16 s measured here, was 1.7 s)."""
    code = ("import sys, envmgr.cli; print(sorted(m for m in ('rich', 'httpx', "
            "'pydantic_settings', 'sqlalchemy', 'fastapi') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
    helped = subprocess.run([sys.executable, "-m", "envmgr.cli", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "disk" in helped.stdout
