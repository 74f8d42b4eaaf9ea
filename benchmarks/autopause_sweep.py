"""One autopause sweep over 1,000 and 10,000 running runtimes whose Jupyter endpoints are a
local stand-in server (realistic /api/status and /api/kernels JSON; 2% slow, 0.5% hung,
1% dead), printing sweep time and peak memory.

    python benchmarks/autopause_sweep.py [--sizes 1000 10000]

The sweep is the real `envmgr.runtimes.autopause.Autopause.sweep` against a seeded SQLite database;
the stand-in runs in its own process (a raw ASGI app under uvicorn)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

STAND_IN = r'''
import asyncio, json, sys
from datetime import datetime, timezone, timedelta
NOW = datetime.now(timezone.utc)
def stamp(minutes): return (NOW - timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    parts = scope["path"].split("/")  # /proxy/rt-N/api/status
    n = int(parts[2].split("-")[1])
    if n % 200 == 7:
        await asyncio.sleep(3600)          # hung
    if n % 50 == 3:
        await asyncio.sleep(0.5)           # slow
    if parts[-1] == "status":
        body = {"connections": n % 3, "kernels": n % 4, "started": stamp(600),
                "last_activity": stamp(n % 90)}
    else:
        body = [{"id": f"k{n}-{i}", "name": "python3", "connections": 1,
                 "execution_state": "busy" if (n + i) % 17 == 0 else "idle",
                 "last_activity": stamp((n + i) % 90)} for i in range(n % 4)]
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": raw})
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(ctx, n: int, port: int, dead_port: int) -> None:  # type: ignore[no-untyped-def]
    """n users, each with one running runtime, idle for 0-90 minutes."""
    from envmgr.core.clock import utcnow
    from envmgr.core.db import write_session
    from envmgr.core.ids import new_id
    from envmgr.core.models import Membership, Runtime, User, Workspace
    now = utcnow()
    users = [User(id=new_id("u"), email=f"u{i}-{n}@example.org") for i in range(n)]
    with write_session(ctx.engine) as s:
        s.add_all(users)
        s.flush()
        ws = Workspace(id=new_id("ws"), name=f"bench-{n}", bucket="b", created_by=users[0].id)
        s.add(ws)
        s.flush()
        s.add(Membership(workspace_id=ws.id, user_id=users[0].id, role="owner"))
        for i, u in enumerate(users):
            rid = f"rt-{i}"
            endpoint_port = dead_port if i % 100 == 5 else port  # 1% refuse connections
            s.add(Runtime(id=rid, workspace_id=ws.id, owner_id=u.id, status="running",
                          machine_type="e2-standard-4", autopause_minutes=60,
                          endpoint=f"http://127.0.0.1:{endpoint_port}/proxy/{rid}",
                          updated_at=now - timedelta(hours=2)))


async def sweep_once(n: int, tmp: Path, port: int) -> tuple[float, float, dict[str, int]]:
    import httpx

    from envmgr.auth.signing import Signer
    from envmgr.backends import load_backend
    from envmgr.context import Context
    from envmgr.core.db import make_engine, migrate
    from envmgr.costs.catalog import load_catalog
    from envmgr.notebooks.storage import load_storage
    from envmgr.runtimes.autopause import Autopause
    from envmgr.settings import Settings
    settings = Settings(data_dir=tmp / f"d{n}", database_url=f"sqlite:///{tmp}/b{n}.db",
                        local_sandbox=False)  # no runtime is started: stand-ins answer
    settings.data_dir.mkdir(parents=True)
    engine = make_engine(settings.database_url)
    migrate(engine)
    ctx = Context(settings=settings, engine=engine, backend=load_backend(settings),
                  catalog=load_catalog(), storage=load_storage(settings), signer=Signer("k"),
                  http=httpx.AsyncClient())
    seed(ctx, n, port, free_port())
    ap = Autopause(ctx)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    decisions = await ap.sweep()
    took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await ap.stop()
    await ctx.http.aclose()
    kinds: dict[str, int] = {}
    for reason in decisions.values():
        kinds[reason.split(":")[1].split()[0]] = kinds.get(reason.split(":")[1].split()[0], 0) + 1
    return took, max(peak, rss0) / 1024, kinds


def main() -> None:
    from rich.console import Console
    from rich.table import Table
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="envmgr-sweep-"))
    (tmp / "standin.py").write_text(STAND_IN)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "standin:app", "--port",
                               str(port), "--log-level", "warning", "--backlog", "4096"],
                              cwd=tmp, env={**os.environ, "PYTHONPATH": str(tmp)})
    console = Console()
    try:
        import httpx
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/proxy/rt-1/api/status")
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        table = Table(title="one autopause sweep (probe timeout 2 s, 200 probes at once)")
        for col in ("runtimes", "sweep s", "per 1,000 s", "peak RSS MB", "paused (why)"):
            table.add_column(col, justify="right")
        for n in args.sizes:
            with console.status(f"sweeping {n} runtimes"):
                took, peak, kinds = asyncio.run(sweep_once(n, tmp, port))
            table.add_row(f"{n:,}", f"{took:.2f}", f"{took / n * 1000:.2f}", f"{peak:.0f}",
                          json.dumps(kinds))
        console.print(table)
    finally:
        server.terminate()
        server.kill()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
