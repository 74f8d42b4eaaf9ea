"""What the service offers (machine types, disk types) and what each costs, from a data file
that operators may replace with ENVMGR_CATALOG_FILE."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from envmgr.costs.money import MICROS
from envmgr.settings import Settings

DEFAULT_FILE = Path(__file__).parent / "catalog.json"
HOURS_PER_MONTH = 730  # the convention GCP's own price pages use
DISK_SIZE_RANGE = (10, 4096)


@dataclass(frozen=True)
class Catalog:
    machine_types: dict[str, dict[str, Any]]
    disk_types: dict[str, dict[str, Any]]
    default_machine_type: str
    default_disk_type: str
    default_disk_size_gb: int
    currency: str
    source: str
    as_of: str

    def machine_micros_per_hour(self, machine_type: str) -> Decimal:
        """Micro-dollars per hour, exact (prices are read as decimals, never floats)."""
        price = self.machine_types.get(machine_type, {}).get("usd_per_hour", 0)
        return Decimal(price) * MICROS

    def disk_micros_per_hour(self, disk_type: str, size_gb: int) -> Decimal:
        price = self.disk_types.get(disk_type, {}).get("usd_per_gb_month", 0)
        return Decimal(price) * MICROS * size_gb / HOURS_PER_MONTH


@cache
def load_catalog(path: Path | None = None) -> Catalog:
    """The catalog in `path` (the setting ENVMGR_CATALOG_FILE), else the shipped one."""
    raw = json.loads(Path(path or DEFAULT_FILE).read_text(), parse_float=Decimal)
    return Catalog(
        machine_types=raw["machine_types"],
        disk_types=raw["disk_types"],
        default_machine_type=raw["default_machine_type"],
        default_disk_type=raw["default_disk_type"],
        default_disk_size_gb=int(raw["default_disk_size_gb"]),
        currency=raw.get("currency", "USD"),
        source=raw.get("source", ""),
        as_of=raw.get("as_of", ""),
    )


@cache
def configured_catalog() -> Catalog:
    """The catalog this process's settings name: request bodies are checked against it
    before a handler (and its context) is reached."""
    return load_catalog(Settings().catalog_file)
