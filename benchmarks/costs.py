"""Costs over a year: seed 1,000,000 status events for 5,000 runtimes (each with its disk),
fold them into the daily rollup, and time the costs report per grouping.

    python benchmarks/costs.py [--runtimes 5000] [--events 1000000] [--database-url URL]

Default database: SQLite in a temporary folder. Prints seeding, accrual and query times."""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import insert

from envmgr.core.db import make_engine, migrate, write_session
from envmgr.core.models import Disk, Event, Membership, Runtime, User, Workspace
from envmgr.costs.accrual import accrue_all
from envmgr.costs.catalog import load_catalog
from envmgr.costs.report import report

START = datetime(2025, 1, 1, tzinfo=UTC)
MACHINES = ["e2-standard-2", "e2-standard-4", "n2-standard-4", "n2-highmem-8"]


def seed(engine, runtimes: int, events: int) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    per = max(4, events // runtimes)
    users = [f"u{i}" for i in range(runtimes // 5)]
    with write_session(engine) as s:
        conn = s.connection()
        conn.execute(insert(User.__table__), [{"id": u, "email": f"{u}@example.org",
                                               "admin": False, "created_at": START}
                                              for u in users])
        conn.execute(insert(Workspace.__table__), [
            {"id": f"ws{i}", "name": f"ws-{i}", "bucket": f"b{i}", "created_by": users[0],
             "created_at": START} for i in range(50)])
        conn.execute(insert(Membership.__table__), [
            {"workspace_id": f"ws{i}", "user_id": users[0], "role": "owner"} for i in range(50)])
        rts, disks, evs = [], [], []
        for i in range(runtimes):
            owner, ws = users[i % len(users)], f"ws{(i // len(users)) % 50}"
            mt = MACHINES[i % 4]
            rts.append({"id": f"rt{i}", "workspace_id": ws, "owner_id": owner,
                        "status": "paused", "version": 0, "machine_type": mt,
                        "disk_id": f"pd{i}", "autopause_minutes": 30,
                        "labels": {"team": f"t{i % 7}"}, "errors": [], "created_at": START,
                        "updated_at": START})
            disks.append({"id": f"pd{i}", "workspace_id": ws, "owner_id": owner,
                          "status": "ready", "size_gb": 50, "type": "pd-balanced",
                          "version": 0, "created_at": START, "updated_at": START})
            at = START + timedelta(minutes=rng.randrange(0, 60 * 24 * 30))
            evs.append(("disk", f"pd{i}", None, "ready", at, {"size_gb": 50,
                                                              "type": "pd-balanced"}))
            status = None
            for n in range(per - 1):
                to = ("creating" if n == 0 else
                      ["running", "pausing", "paused", "resuming"][(n - 1) % 4])
                evs.append(("runtime", f"rt{i}", status, to, at, {"machine_type": mt}))
                status = to
                at += timedelta(minutes=rng.randrange(1, int(525_600 / per * 1.6)))
        conn.execute(insert(Runtime.__table__), rts)
        conn.execute(insert(Disk.__table__), disks)
        evs.sort(key=lambda e: e[4])
        for chunk in range(0, len(evs), 50_000):
            conn.execute(insert(Event.__table__), [
                {"resource": r, "resource_id": rid, "from_status": f, "to_status": t,
                 "at": at, "reason": "seed", "detail": d}
                for r, rid, f, t, at, d in evs[chunk:chunk + 50_000]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runtimes", type=int, default=5000)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    url = args.database_url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'costs.db'}"
    engine = make_engine(url)
    migrate(engine)
    console = Console()
    cat = load_catalog()
    # Midday on the last day, the periodic accrual having run: what bills today is live.
    now = START + timedelta(days=364, hours=12)
    with console.status("seeding"):
        t0 = time.perf_counter()
        seed(engine, args.runtimes, args.events)
        seeded = time.perf_counter() - t0
    with console.status("folding the event log into the daily rollup"):
        t0 = time.perf_counter()
        folded = accrue_all(engine, cat, now)
        accrued = time.perf_counter() - t0
    table = Table(title=f"costs over a year: {folded:,} events, {args.runtimes:,} runtimes "
                  f"({engine.dialect.name})")
    for col in ("group_by", "granularity", "p50 ms", "max ms", "groups", "points"):
        table.add_column(col, justify="right")
    # What GET /admin/costs does: catch accrual up (nothing new here), then report. The
    # last row answers 1,000 users x 365 days = 365,000 points, for scale.
    for group_by, gran, owner in (("user", "month", None), ("workspace", "week", None),
                                  ("machine_type", "day", None), ("label:team", "month", None),
                                  ("workspace", "day", "u1"), ("user", "day", None)):
        times, groups, points = [], 0, 0
        for _ in range(5):
            t0 = time.perf_counter()
            accrue_all(engine, cat, now)
            r = report(engine, cat, date(2025, 1, 1), date(2025, 12, 31), group_by, gran, now,
                       owner)
            times.append((time.perf_counter() - t0) * 1000)
            groups, points = len(r["groups"]), sum(len(g["series"]) for g in r["groups"])
        table.add_row(group_by + (" (one user)" if owner else ""), gran,
                      f"{statistics.median(times):.0f}", f"{max(times):.0f}", f"{groups:,}",
                      f"{points:,}")
    console.print(table)
    console.print(f"seeding {seeded:.1f} s; folding the log into the rollup {accrued:.1f} s "
                  f"({folded / accrued:,.0f} events/s)")


if __name__ == "__main__":
    main()
