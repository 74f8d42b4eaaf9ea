"""Makes the records tell the truth: at boot and on a timer, compare each runtime with what
the backend reports, fix the record, and remove what nobody should have running.

Unfinished operations are not re-driven here: the worker does that through leases. Only a
runtime with no unfinished operation is touched, with a compare-and-set, so the reconciler
never fights an action under way."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlmodel import col, select

from envmgr.backends.base import BackendStatus, RuntimeSpec
from envmgr.context import Context
from envmgr.core.db import read_session
from envmgr.core.models import Operation, Runtime
from envmgr.costs.pool import record_spares
from envmgr.runtimes.machine import TRANSITIONAL, Conflict, move, record_event
from envmgr.runtimes.specs import runtime_spec
from envmgr.runtimes.worker import UNFINISHED

log = logging.getLogger("envmgr.runtimes.reconcile")


def _snapshot(ctx: Context) -> tuple[list[Runtime], set[str]]:
    with read_session(ctx.engine) as s:
        busy = set(s.exec(select(col(Operation.resource_id))
                          .where(col(Operation.status).in_(UNFINISHED))).all())
        runtimes = list(s.exec(select(Runtime)).all())
    return runtimes, busy


def _record(ctx: Context, rt: Runtime, to: str, reason: str, **values: object) -> None:
    with contextlib.suppress(Conflict), ctx.tx() as s:
        fresh = s.get(Runtime, rt.id)
        if fresh is None or fresh.version != rt.version:
            return
        move(s, fresh, to, reason, **values)
        log.info("reconciled", extra={"runtime": rt.id, "from": rt.status, "to": to,
                                      "reason": reason})


async def reconcile_once(ctx: Context) -> None:
    """One pass: one database snapshot and one backend inventory, then a compare-and-set
    for each runtime whose record and reality disagree."""
    runtimes, busy = await asyncio.to_thread(_snapshot, ctx)
    known = {rt.id: rt for rt in runtimes}
    backend = ctx.backend
    seen = await backend.inventory()
    for rt in runtimes:
        if rt.id in busy or rt.status == "deleted":
            continue
        if rt.status in TRANSITIONAL:  # nothing drives it any more: never leave it hanging
            await asyncio.to_thread(_record, ctx, rt, "error",
                                    f"reconciler: {rt.status} with no operation driving it")
            continue
        observed = seen.get(rt.id, BackendStatus("absent"))
        if rt.status == "running" and observed.state in ("stopped", "absent"):
            to = "paused" if observed.state == "stopped" else "error"
            why = observed.detail or "it was not running"
            await asyncio.to_thread(_record, ctx, rt, to,
                                    f"reconciler: found {observed.state} ({why})", endpoint=None)
        elif rt.status == "paused" and observed.state == "running":
            await asyncio.to_thread(_record, ctx, rt, "running",
                                    "reconciler: found running", endpoint=observed.endpoint)
        elif rt.status == "running" and observed.endpoint and observed.endpoint != rt.endpoint:
            await asyncio.to_thread(_record, ctx, rt, "running", "reconciler: endpoint moved",
                                    endpoint=observed.endpoint)
        elif rt.status == "error" and observed.state == "running":
            await backend.stop(await asyncio.to_thread(_spec, ctx, rt))  # its disk stays
        if rt.status == "running" and observed.state == "running" and observed.notices:
            await asyncio.to_thread(_notice, ctx, rt, observed.notices)
    # Whatever runs in the backend for a runtime that is deleted or unknown is an orphan.
    for rid, found in seen.items():
        record = known.get(rid)
        if rid in busy or found.state == "absent":
            continue
        if record is None or record.status == "deleted":
            log.warning("removing orphan runtime", extra={"runtime": rid, "state": found.state})
            spec = RuntimeSpec(id=rid, workspace="", owner="", machine_type="", disk_id=None,
                               secret="") if record is None else \
                await asyncio.to_thread(_spec, ctx, record)
            await backend.delete(spec)
    # Spares are no one's runtime yet: what they cost is the pool's.
    await asyncio.to_thread(record_spares, ctx.engine, backend.spares(), ctx.clock.now())


def _notice(ctx: Context, rt: Runtime, notices: list[str]) -> None:
    """What happened in a running runtime, in its events (its status stays)."""
    with ctx.tx() as s:
        for reason in notices:
            record_event(s, "runtime", rt.id, rt.status, rt.status, reason, notice=True)
    log.warning("runtime notice", extra={"runtime": rt.id, "notices": notices})


def _spec(ctx: Context, rt: Runtime) -> RuntimeSpec:
    with read_session(ctx.engine) as s:
        return runtime_spec(s, rt, ctx.signer)


async def reconcile_forever(ctx: Context) -> None:
    while True:
        await asyncio.sleep(ctx.settings.reconcile_interval_seconds)
        try:
            await reconcile_once(ctx)
        except Exception:
            log.exception("reconcile pass failed")
