"""The gce backend's pool of spares against the fake Compute API with GCE's latencies
(tests/fakes/compute.py GCE_LATENCY: insert 25-40 s, start 15-20 s; resume and suspend
modelled, as Google publishes no figure): create -> RUNNING by inserting a VM versus by
claiming a spare, and a resume after a suspend versus a start after a stop.

    python benchmarks/gce_pool.py [--rounds 3] [--scale 0.1]

`--scale` shrinks every modelled latency (and the backend's poll interval, 2 s in
production) by that factor so a run takes a minute; figures are shown scaled back, in
modelled seconds. What is not modelled: the guest's own time after RUNNING (a boot, the
package install and Jupyter's start on an insert; only the disk's mount and Jupyter's
start on a claimed spare, which installed while it waited). The boot test measures the
guest side of an insert for real."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from gce_fake import backend, free_port, specs
from rich.console import Console
from rich.table import Table

from envmgr.backends.gce.backend import GceBackend
from tests.fakes.compute import GCE_LATENCY, FakeComputeServer


def scaled(server: FakeComputeServer, scale: float) -> None:
    server.fake.faults.latency = {k: (lo * scale, hi * scale)
                                  for k, (lo, hi) in GCE_LATENCY.items()}
    server.fake.faults.op_seconds = 0.5 * scale


async def spares_ready(server: FakeComputeServer, gce: GceBackend, n: int) -> None:
    await gce.refill()
    while sum(1 for i in server.fake.instances.values()
              if "envmgr-pool" in i["labels"] and i["status"] == "RUNNING") < n:
        await asyncio.sleep(0.01)


async def run(server: FakeComputeServer, rounds: int, scale: float) -> dict[str, list[float]]:
    gce = backend(server.url)
    gce.settings.gce_poll_seconds = 2.0 * scale
    out: dict[str, list[float]] = {"insert": [], "claim": [], "start": [], "resume": []}
    for i in range(rounds):
        for path in ("insert", "claim"):
            gce.settings.pool_size = 1 if path == "claim" else 0
            gce.settings.pool_machine_types = ["e2-standard-4"]
            if path == "claim":
                await spares_ready(server, gce, 1)
            rt, disk = specs(100 * i + (path == "claim"))
            await gce.create_disk(disk)
            t0 = time.perf_counter()
            await gce.create(rt, disk)
            out[path].append((time.perf_counter() - t0) / scale)
            for mode, verb in (("stop", "start"), ("suspend", "resume")):
                gce.settings.gce_pause = mode  # type: ignore[assignment]
                await gce.stop(rt)
                t0 = time.perf_counter()
                await gce.start(rt)
                out[verb].append((time.perf_counter() - t0) / scale)
    await gce.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=0.1)
    args = ap.parse_args()
    server = FakeComputeServer(free_port())
    try:
        scaled(server, args.scale)
        got = asyncio.run(run(server, args.rounds, args.scale))
    finally:
        server.stop()
    t = Table(title=f"gce, fake Compute API with GCE's latencies ({args.rounds} rounds, "
                    "modelled seconds to RUNNING)")
    for col in ("path", "p50 s", "max s", "vs. insert / start"):
        t.add_column(col)
    base = {"insert": statistics.median(got["insert"]), "claim": statistics.median(got["insert"]),
            "start": statistics.median(got["start"]), "resume": statistics.median(got["start"])}
    names = {"insert": "create: insert a VM", "claim": "create: claim a spare",
             "start": "resume: start after a stop", "resume": "resume: after a suspend"}
    for key, values in got.items():
        p50 = statistics.median(values)
        t.add_row(names[key], f"{p50:.1f}", f"{max(values):.1f}", f"{p50 / base[key]:.2f}x")
    Console().print(t)


if __name__ == "__main__":
    main()
