"""The gce backend against the fake Compute Engine API: wall time and API calls per lifecycle
action, and the throughput of concurrent creates with faults off and on.

    python benchmarks/gce_fake.py [--creates 50]

Operations in the fake take 50 ms and the backend polls every 20 ms, so the figures show the
backend's own overhead and call pattern, not GCE's real latency (a real create takes
tens of seconds)."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table

from envmgr.backends.base import DiskSpec, RuntimeSpec
from envmgr.backends.gce.backend import GceBackend
from envmgr.settings import Settings
from tests.fakes.compute import FakeComputeServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backend(url: str) -> GceBackend:
    return GceBackend(Settings(
        data_dir=Path(tempfile.mkdtemp()), gce_project="proj", gce_endpoint=url,
        gce_poll_seconds=0.02, gce_retry_initial_seconds=0.01, gce_retry_attempts=12,
        gce_readiness_timeout_seconds=0))


def specs(i: int) -> tuple[RuntimeSpec, DiskSpec]:
    return (RuntimeSpec(id=f"rt-bench-{i}", workspace="bench", owner="b@example.org",
                        machine_type="e2-standard-4", disk_id=f"pd-bench-{i}", secret="s"),
            DiskSpec(id=f"pd-bench-{i}", workspace="bench", owner="b@example.org",
                     size_gb=50, type="pd-balanced"))


async def per_action(server: FakeComputeServer) -> list[tuple[str, float, int]]:
    gce = backend(server.url)
    rt, disk = specs(0)
    steps = [
        ("create disk", lambda: gce.create_disk(disk)),
        ("create (insert + wait RUNNING)", lambda: gce.create(rt, disk)),
        ("pause (suspend)", lambda: gce.stop(rt)),
        ("update machine type", lambda: gce.set_machine_type(rt, "n2-standard-4")),
        ("resume (start: the type change stopped it)", lambda: gce.start(rt)),
        ("delete keeping the disk", lambda: gce.delete(rt)),
        ("delete the disk", lambda: gce.delete_disk(disk)),
    ]
    out = []
    for name, step in steps:
        before = len(server.fake.calls)
        t0 = time.perf_counter()
        await step()
        out.append((name, time.perf_counter() - t0, len(server.fake.calls) - before))
    await gce.close()
    return out


async def creates(server: FakeComputeServer, n: int, offset: int) -> tuple[float, int, int]:
    gce = backend(server.url)
    before = len(server.fake.calls)
    t0 = time.perf_counter()

    async def one(i: int) -> None:
        rt, disk = specs(offset + i)
        await gce.create_disk(disk)
        await gce.create(rt, disk)
    await asyncio.gather(*(one(i) for i in range(n)))
    took = time.perf_counter() - t0
    names = [q["body"]["name"] for m, p, q in server.fake.calls[before:]
             if m == "POST" and p.endswith("/instances")]
    await gce.close()
    return took, len(server.fake.calls) - before, len(set(names))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--creates", type=int, default=50)
    args = ap.parse_args()
    console = Console()
    server = FakeComputeServer(free_port())
    try:
        actions = asyncio.run(per_action(server))
        off = asyncio.run(creates(server, args.creates, 1000))
        f = server.fake.faults
        f.error_rate, f.lost_rate, f.slow_rate, f.slow_seconds = 0.2, 0.05, 0.2, 0.5
        on = asyncio.run(creates(server, args.creates, 2000))
    finally:
        server.stop()
    t = Table(title="gce backend vs. the fake Compute API (operations take 50 ms)")
    for col in ("action", "wall s", "API calls"):
        t.add_column(col)
    for name, took, calls in actions:
        t.add_row(name, f"{took:.3f}", str(calls))
    console.print(t)
    t = Table(title=f"{args.creates} concurrent creates (disk + instance)")
    for col in ("faults", "wall s", "creates/s", "API calls", "distinct instances"):
        t.add_column(col)
    for label, (took, calls, distinct) in (("off", off),
                                           ("20% 429/500, 5% lost, 20% slow", on)):
        t.add_row(label, f"{took:.2f}", f"{args.creates / took:.1f}", str(calls), str(distinct))
    console.print(t)


if __name__ == "__main__":
    main()
