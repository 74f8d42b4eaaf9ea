"""What a runtime or disk costs now, and which statuses bill (notebook jobs' too). Compute
bills in the statuses where a VM is up; a disk bills for as long as it exists, attached or
not. Rates are exact (micro-dollars); the API
shows them as numbers of dollars."""

from __future__ import annotations

from decimal import Decimal

from envmgr.costs.catalog import HOURS_PER_MONTH, Catalog
from envmgr.costs.money import micros, usd

BILLED_STATUSES = frozenset({"creating", "running", "pausing", "resuming"})
JOB_BILLED = frozenset({"starting", "running", "canceling"})  # a notebook job's compute exists


def disk_micros_per_hour(catalog: Catalog, disk_type: str | None, size_gb: int | None,
                         status: str | None) -> Decimal:
    if disk_type is None or size_gb is None or status == "deleted":
        return Decimal(0)
    return catalog.disk_micros_per_hour(disk_type, size_gb)


def runtime_cost_per_hour(catalog: Catalog, machine_type: str, status: str,
                          disk_type: str | None, disk_size_gb: int | None,
                          disk_status: str | None) -> float:
    compute = catalog.machine_micros_per_hour(machine_type) if status in BILLED_STATUSES \
        else Decimal(0)
    return usd(micros(compute + disk_micros_per_hour(catalog, disk_type, disk_size_gb,
                                                     disk_status)))


def disk_cost_per_month(catalog: Catalog, disk_type: str, size_gb: int, status: str) -> float:
    return usd(micros(disk_micros_per_hour(catalog, disk_type, size_gb, status)
                      * HOURS_PER_MONTH))
