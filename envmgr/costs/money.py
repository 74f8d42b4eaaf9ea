"""Money is an integer number of micro-dollars (1e-6 of the catalog's currency) in the
database, the rollups and the reports; prices are exact Decimals from the catalog file.
Amounts become a JSON number or a CSV field only at the edge, from the integer, so sums
never drift the way float cents do."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

MICROS = 1_000_000
_HOUR_US = Decimal(3600 * MICROS)  # microseconds in an hour


def micros(amount: Decimal) -> int:
    """Micro-dollars, rounded half to even (banker's rounding, as ledgers do)."""
    return int(amount.to_integral_value(rounding=ROUND_HALF_EVEN))


def per_hour_for(rate_micros_per_hour: Decimal, microseconds: int) -> Decimal:
    """What `microseconds` cost at a rate in micro-dollars per hour, exactly."""
    return rate_micros_per_hour * microseconds / _HOUR_US


def usd(amount_micros: int) -> float:
    """For JSON: the number whose shortest form is the exact 6-decimal amount."""
    return amount_micros / MICROS


def usd_text(amount_micros: int) -> str:
    """For CSV: the exact decimal, no float in between."""
    return f"{Decimal(amount_micros).scaleb(-6):f}"


def from_usd(amount: float) -> int:
    """Back from `usd()`: exact for any amount `usd()` produced."""
    return round(amount * MICROS)
