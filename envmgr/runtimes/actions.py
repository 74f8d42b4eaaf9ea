"""What each lifecycle action does with the backend, step by step, and how it ends.

Steps are idempotent, so a re-driven operation (after a crash) just runs again. The end is
one transaction: the final status, its event, the disk's change and the operation's outcome.
If the runtime moved on meanwhile (deleted while creating), the operation is `superseded`
and writes nothing else. No path here deletes a disk except an explicit delete."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlmodel import Session

from envmgr.backends.base import DiskSpec, RuntimeSpec
from envmgr.context import Context
from envmgr.core.clock import iso
from envmgr.core.db import tx_now
from envmgr.core.models import Disk, Operation, Runtime
from envmgr.runtimes.machine import TRANSITIONS, Conflict, move, record_event
from envmgr.runtimes.specs import disk_spec, runtime_spec

log = logging.getLogger("envmgr.runtimes.actions")
MAX_ERRORS_KEPT = 5
T = TypeVar("T")


# The worker's database work (claims, lease renewals, transactions) gets threads of its own:
# request handlers' reads (clients poll GET while their runtimes start) fill the loop's
# default executor, and a status change or a lease renewal must not queue behind them.
_TX_THREADS = ThreadPoolExecutor(4, thread_name_prefix="envmgr-worker-tx")


async def off_loop(fn: Callable[..., T], *args: object) -> T:
    """The worker's blocking database work, in the worker's own threads."""
    return await asyncio.get_running_loop().run_in_executor(_TX_THREADS, fn, *args)


async def in_tx(ctx: Context, fn: Callable[[Session], T]) -> T:
    def run() -> T:
        with ctx.tx() as s:
            return fn(s)
    return await off_loop(run)


def _close(session: Session, op: Operation, status: str, error: str | None = None) -> None:
    row = session.get(Operation, op.id)
    if row is not None:
        row.status, row.error, row.finished_at = status, error, tx_now(session)
        row.lease_owner = row.lease_until = None
        session.add(row)


def _reason(op: Operation) -> str:
    return str(op.params.get("reason", "user"))


async def _load(ctx: Context, op: Operation) -> tuple[Runtime, Disk | None, RuntimeSpec,
                                                      DiskSpec | None]:
    def get(s: Session) -> tuple[Runtime, Disk | None, RuntimeSpec, DiskSpec | None]:
        rt = s.get(Runtime, op.resource_id)
        if rt is None:
            raise LookupError(f"runtime {op.resource_id} is gone")
        disk = s.get(Disk, rt.disk_id) if rt.disk_id else None
        return rt, disk, runtime_spec(s, rt, ctx.signer), disk_spec(s, disk) if disk else None
    return await in_tx(ctx, get)


async def _finish(ctx: Context, op: Operation, to: str,
                  disk_change: Callable[[Session, Disk], None] | None = None,
                  **values: Any) -> None:
    via = TRANSITIONS[op.action].via

    def end(s: Session) -> None:
        rt = s.get(Runtime, op.resource_id)
        if rt is None or rt.status != via:
            _close(s, op, "superseded")
            return
        move(s, rt, to, _reason(op), **values)
        if disk_change is not None and rt.disk_id:
            disk = s.get(Disk, rt.disk_id)
            if disk is not None:
                disk_change(s, disk)
        _close(s, op, "done")
    await in_tx(ctx, end)


async def fail(ctx: Context, op: Operation, message: str) -> None:
    """End a failed operation: the runtime goes to the action's failure status with the
    reason; a runtime that may have half-started is stopped; its disk is left alone."""
    if op.resource == "disk":
        def end_disk(s: Session) -> None:
            disk = s.get(Disk, op.resource_id)
            if disk is not None and disk.status == "deleting":
                move(s, disk, "failed", message)
            _close(s, op, "failed", message)
        await in_tx(ctx, end_disk)
        return
    t = TRANSITIONS[op.action]
    with contextlib.suppress(Exception):
        _, _, spec, _ = await _load(ctx, op)
        if t.action in ("create", "resume", "update"):
            await asyncio.wait_for(ctx.backend.stop(spec), ctx.backend.deadline("stop"))

    def end(s: Session) -> None:
        rt = s.get(Runtime, op.resource_id)
        if rt is not None and rt.status == t.via:
            record = {"at": iso(tx_now(s)), "action": t.action, "message": message}
            move(s, rt, t.on_failure, message, endpoint=None,
                 errors=[record, *rt.errors][:MAX_ERRORS_KEPT])
            _close(s, op, "failed", message)
        else:
            _close(s, op, "superseded", message)
    await in_tx(ctx, end)


def _disk_ready(s: Session, disk_id: str) -> None:
    disk = s.get(Disk, disk_id)
    if disk is not None and disk.status == "creating":
        move(s, disk, "ready", "created")


async def perform(ctx: Context, op: Operation) -> None:
    if op.resource == "disk":
        await _delete_disk(ctx, op)
        return
    rt, disk, spec, dspec = await _load(ctx, op)
    if rt.status != TRANSITIONS[op.action].via:
        await in_tx(ctx, lambda s: _close(s, op, "superseded"))
        return
    await _HANDLERS[op.action](ctx, op, spec, disk, dspec)


async def _create(ctx: Context, op: Operation, spec: RuntimeSpec, disk: Disk | None,
                  dspec: DiskSpec | None) -> None:
    assert disk is not None and dspec is not None
    if disk.status == "creating":
        await ctx.backend.create_disk(dspec)
        await in_tx(ctx, lambda s: _disk_ready(s, disk.id))
    endpoint = await ctx.backend.create(spec, dspec)
    await _finish(ctx, op, "running", endpoint=endpoint)


async def flush_notebooks(ctx: Context, spec: RuntimeSpec) -> None:
    """Ask the runtime's extension to upload every edit-mode notebook and release its locks.
    Best effort: a runtime that does not answer still stops (its disk keeps the files, and
    its locks expire on their own)."""
    if not spec.endpoint:
        return
    try:
        r = await ctx.http.post(f"{spec.endpoint}/envmgr/flush", timeout=60,
                                headers={"Authorization": f"token {spec.secret}"})
        r.raise_for_status()
        log.info("flushed notebooks", extra={"runtime": spec.id, "result": r.json()})
    except Exception as exc:
        log.warning("flush failed", extra={"runtime": spec.id, "error": str(exc)})


async def _pause(ctx: Context, op: Operation, spec: RuntimeSpec, *_: Any) -> None:
    await flush_notebooks(ctx, spec)
    await ctx.backend.stop(spec)
    await _finish(ctx, op, "paused", endpoint=None)


async def _resume(ctx: Context, op: Operation, spec: RuntimeSpec, *_: Any) -> None:
    endpoint = await ctx.backend.start(spec)
    await _finish(ctx, op, "running", endpoint=endpoint)


async def _update(ctx: Context, op: Operation, spec: RuntimeSpec, *_: Any) -> None:
    machine_type, back_to = op.params["machine_type"], op.params["return_to"]
    if back_to == "running":
        await ctx.backend.stop(spec)
    await ctx.backend.set_machine_type(spec, machine_type)
    endpoint = await ctx.backend.start(spec) if back_to == "running" else None
    await _finish(ctx, op, back_to, machine_type=machine_type, endpoint=endpoint)


def _disk_fate(s: Session, op_id: str, disk_id: str, runtime_id: str) -> bool:
    """Keep the disk? Read at the last moment, from the operation as it is now: a later
    request may have asked to keep it (keeping wins). Deciding to delete moves the disk to
    `deleting` by compare-and-set, so a keep request either lands before (and wins) or
    finds the disk already going and is told so."""
    op = s.get(Operation, op_id)
    disk = s.get(Disk, disk_id)
    if op is None or disk is None or bool(op.params.get("keep_disk", True)):
        return True
    if disk.status == "ready":
        move(s, disk, "deleting", f"deleted with runtime {runtime_id}")
    return False


async def _delete(ctx: Context, op: Operation, spec: RuntimeSpec, disk: Disk | None,
                  dspec: DiskSpec | None) -> None:
    await flush_notebooks(ctx, spec)
    await ctx.backend.delete(spec)
    keep = True
    if dspec is not None:
        await ctx.backend.detach(spec, dspec)
        for _ in range(10):
            try:
                keep = await in_tx(ctx, lambda s: _disk_fate(s, op.id, dspec.id, spec.id))
                break
            except Conflict:  # a keep request moved the disk's version: look again
                continue
        if not keep:
            await ctx.backend.delete_disk(dspec)

    def disk_change(s: Session, d: Disk) -> None:
        if keep:
            d.attached_to = None
            s.add(d)
            record_event(s, "disk", d.id, d.status, d.status, f"detached from {spec.id}")
        elif d.status != "deleted":
            move(s, d, "deleted", f"deleted with runtime {spec.id}", attached_to=None)
    await _finish(ctx, op, "deleted", disk_change, endpoint=None)


async def _delete_disk(ctx: Context, op: Operation) -> None:
    def get(s: Session) -> DiskSpec | None:
        d = s.get(Disk, op.resource_id)
        return disk_spec(s, d) if d is not None and d.status == "deleting" else None
    dspec = await in_tx(ctx, get)
    if dspec is not None:
        await ctx.backend.delete_disk(dspec)

    def end(s: Session) -> None:
        d = s.get(Disk, op.resource_id)
        if d is not None and d.status == "deleting":
            move(s, d, "deleted", _reason(op))
            _close(s, op, "done")
        else:
            _close(s, op, "superseded")
    await in_tx(ctx, end)


_HANDLERS = {"create": _create, "pause": _pause, "resume": _resume, "update": _update,
             "delete": _delete}
