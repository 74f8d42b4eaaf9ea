"""What a runtime or disk costs now. Compute bills in the statuses where a VM is up."""

from __future__ import annotations

from envmgr.catalog import HOURS_PER_MONTH, Catalog
from envmgr.models import Disk, Runtime

BILLED_STATUSES = frozenset({"creating", "running", "pausing", "resuming"})


def runtime_cost_per_hour(catalog: Catalog, rt: Runtime, disk: Disk | None) -> float:
    compute = catalog.machine_usd_per_hour(rt.machine_type) if rt.status in BILLED_STATUSES \
        else 0.0
    storage = disk_cost_per_hour(catalog, disk) if disk is not None else 0.0
    return round(compute + storage, 6)


def disk_cost_per_hour(catalog: Catalog, disk: Disk) -> float:
    if disk.status == "deleted":
        return 0.0
    return catalog.disk_usd_per_hour(disk.type, disk.size_gb)


def disk_cost_per_month(catalog: Catalog, disk: Disk) -> float:
    return round(disk_cost_per_hour(catalog, disk) * HOURS_PER_MONTH, 4)
