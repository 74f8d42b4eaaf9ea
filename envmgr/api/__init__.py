"""The HTTP API: one router per resource under /api/v1, probes at the root."""

from fastapi import APIRouter

from envmgr.api import (
    catalog,
    costs,
    disks,
    health,
    jobs,
    notebooks,
    proxy,
    runtimes,
    schedules,
    session,
    users,
    workspaces,
)

v1 = APIRouter(prefix="/api/v1")
for module in (users, session, workspaces, runtimes, disks, notebooks, jobs, schedules, costs,
               catalog):
    v1.include_router(module.router)

__all__ = ["health", "proxy", "v1"]
