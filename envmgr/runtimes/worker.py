"""The operation worker inside the service: claims operations with a lease, drives them to an
end within their deadline, and re-drives whatever a crashed replica left behind.

Claiming is a compare-and-set on the operation row, so several replicas (or a restarted one)
never run one operation twice at the same time. Operations on one resource run in the order
they were asked for (a delete asked during a create waits for the create)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from prometheus_client import Counter, Histogram
from sqlalchemy import and_, or_, select, update
from sqlmodel import col

from envmgr.backends.base import CURRENT_OPERATION, BackendError
from envmgr.context import Context
from envmgr.core.db import read_session, rowcount
from envmgr.core.ids import new_id
from envmgr.core.models import Operation
from envmgr.runtimes import actions

log = logging.getLogger("envmgr.runtimes.worker")

OPS_FINISHED = Counter("envmgr_operations_total", "Operations finished", ["action", "outcome"])
OP_SECONDS = Histogram("envmgr_operation_seconds", "Operation wall time", ["action"],
                       buckets=(0.5, 1, 2, 3, 5, 10, 30, 60, 300, 1800))
UNFINISHED = ("pending", "running")


class Worker:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.instance = new_id("w")
        self.lease = timedelta(seconds=ctx.settings.operation_lease_seconds)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.create_task(self._run(), name="envmgr-worker")

    def wake(self) -> None:
        """Thread-safe: API handlers call it after committing an operation."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        """Stop driving; leases are released so the next start re-drives at once."""
        tasks = [t for t in (self._main, *self._tasks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await actions.off_loop(self._release_leases)

    async def _run(self) -> None:
        while True:
            try:
                for op in await actions.off_loop(self._claim):
                    self._tasks[op.id] = asyncio.create_task(self._execute(op))
            except Exception:
                log.exception("claiming operations failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.ctx.settings.worker_poll_seconds)
            self._wake.clear()

    def _claim(self) -> list[Operation]:
        room = self.ctx.settings.worker_concurrency - len(self._tasks)
        if room <= 0:
            return []
        now = self.ctx.clock.now()
        with read_session(self.ctx.engine) as s:
            candidates = s.execute(
                select(Operation).where(col(Operation.status).in_(UNFINISHED))
                .order_by(col(Operation.created_at), col(Operation.id)).limit(500)
            ).scalars().all()
        first_per_resource: dict[str, Operation] = {}
        for op in candidates:
            first_per_resource.setdefault(op.resource_id, op)
        claimed: list[Operation] = []
        for op in first_per_resource.values():
            if len(claimed) >= room:
                break
            if op.id in self._tasks or (op.status == "running" and op.lease_until
                                        and op.lease_until > now):
                continue
            with self.ctx.tx() as s:
                res = s.execute(
                    update(Operation)
                    .where(col(Operation.id) == op.id, or_(
                        col(Operation.status) == "pending",
                        and_(col(Operation.status) == "running", col(Operation.lease_until) < now)))
                    .values(status="running", lease_owner=self.instance,
                            lease_until=now + self.lease, attempts=col(Operation.attempts) + 1,
                            started_at=op.started_at or now)
                )
            if rowcount(res) == 1:
                if op.attempts:
                    log.info("re-driving operation", extra={"op": op.id, "action": op.action,
                                                            "resource": op.resource_id})
                claimed.append(op)
        return claimed

    def _renew(self, op_id: str) -> None:
        with self.ctx.tx() as s:
            s.execute(update(Operation)
                      .where(col(Operation.id) == op_id,
                             col(Operation.lease_owner) == self.instance,
                             col(Operation.status) == "running")
                      .values(lease_until=self.ctx.clock.now() + self.lease))

    def _release_leases(self) -> None:
        with self.ctx.tx() as s:
            s.execute(update(Operation)
                      .where(col(Operation.lease_owner) == self.instance,
                             col(Operation.status) == "running")
                      .values(lease_until=self.ctx.clock.now()))

    async def _keep_lease(self, op_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                await actions.off_loop(self._renew, op_id)
            except Exception:
                log.exception("lease renewal failed", extra={"op": op_id})

    async def _execute(self, op: Operation) -> None:
        CURRENT_OPERATION.set(op.id)  # this task's context only
        renew = asyncio.create_task(self._keep_lease(op.id))
        started = asyncio.get_running_loop().time()
        outcome = "done"
        try:
            remaining = (op.deadline_at - self.ctx.clock.now()).total_seconds()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(actions.perform(self.ctx, op), remaining)
            except TimeoutError:
                total = (op.deadline_at - op.created_at).total_seconds()
                outcome = "timeout"
                await actions.fail(self.ctx, op,
                                   f"{op.action} did not finish within its deadline of "
                                   f"{total:.0f} s")
            except BackendError as exc:
                outcome = "failed"
                await actions.fail(self.ctx, op, str(exc))
            except LookupError as exc:
                outcome = "failed"
                await actions.fail(self.ctx, op, str(exc))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outcome = "failed"
                log.exception("operation crashed", extra={"op": op.id})
                await actions.fail(self.ctx, op, f"internal error: {exc}")
        except asyncio.CancelledError:
            outcome = "interrupted"
            raise
        except Exception:
            log.exception("could not record the end of an operation", extra={"op": op.id})
        finally:
            renew.cancel()
            self._tasks.pop(op.id, None)
            OPS_FINISHED.labels(op.action, outcome).inc()
            OP_SECONDS.labels(op.action).observe(asyncio.get_running_loop().time() - started)
            log.info("operation ended", extra={"op": op.id, "action": op.action,
                                               "resource": op.resource_id, "outcome": outcome})
            self.wake()  # the next operation on this resource may now run
