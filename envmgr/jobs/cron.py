"""Cron as Debian's cron runs it, evaluated by cronsim (Healthchecks.io's evaluator, which
documents and tests exactly these rules): no I/O, no clock.

- Five fields: minute hour day-of-month month day-of-week, or an alias (`@yearly`,
  `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`).
- Day of month and day of week: when either field starts with `*`, a day must match both;
  otherwise either (`0 0 */2 * 1` is every other day that is a Monday; `0 0 1 * 1` is the
  1st and every Monday).
- `L` (the last day of the month), `LW` (its last weekday), `5L` in day-of-week (the last
  Friday), `1#2` (the second Monday).
- In a time zone with daylight saving time: a fixed time in the hour skipped at the jump
  forward runs right after the jump, once; a fixed time in the hour repeated at the jump
  back runs once (the first pass); a job whose minute or hour field starts with `*` runs
  in both passes (so `0 * * * *` runs at 01:00 twice, once in each offset).
- Anything cron does not define (`R`, `?`, `15W`, `5-1`, seconds) is refused, naming the
  field, the value and what is allowed. A schedule never stops by itself: a rare date (the
  29th of February that is a Monday) is looked for as far ahead as the calendar repeats."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}
FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
ALLOWED = {
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31, L (the last day) or LW (the last weekday)",
    "month": "1-12 or JAN-DEC",
    "day-of-week": "0-7 or SUN-SAT (0 and 7 are Sunday), 5L (the last Friday) or 1#2 "
                   "(the second Monday)",
}
FORMS = "each a value, a list (1,15), a range from low to high (1-5) or a step (*/2, 10-50/5)"
YEARS_REPEAT = 400  # the Gregorian calendar's cycle: no slot in 400 years is none ever


class CronError(ValueError):
    """A refused expression: which field (or None), and words for the user."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


def _fields(expr: str) -> list[str]:
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() not in ALIASES:
            raise CronError(None, f"{text!r} is not a cron alias; use one of "
                            f"{', '.join(ALIASES)}")
        return ALIASES[text.lower()].split()
    fields = text.split()
    if len(fields) != 5 or len(text) > 200:
        raise CronError(None, f"{expr!r} is not a 5-field cron expression (minute hour "
                        "day-of-month month day-of-week, like '0 6 * * 1-5') or an alias "
                        f"({', '.join(ALIASES)})")
    return fields


def check(expr: str) -> str:
    """The expression as stored (fields single-spaced, an alias as given in lower case),
    or CronError: syntax cron does not define, or a schedule that never fires."""
    fields = _fields(expr)
    try:
        CronSim(" ".join(fields), datetime(2026, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise _explain(fields, str(exc)) from None
    if next_after(expr, ZoneInfo("UTC"), datetime(2026, 1, 1, tzinfo=UTC)) is None:
        raise CronError(None, f"{expr!r} never fires: no such day in "
                        f"{YEARS_REPEAT} years, and the calendar repeats after that")
    text = expr.strip()
    return text.lower() if text.startswith("@") else " ".join(fields)


def _explain(fields: list[str], message: str) -> CronError:
    """cronsim says which field ("Bad day-of-month"); say its value and what is allowed,
    or that it never comes (the 30th of February)."""
    name = next((f for f in FIELDS if message == f"Bad {f}"), None)
    if name is None:
        return CronError(None, f"{' '.join(fields)!r}: {message}")
    i = FIELDS.index(name)
    if name == "day-of-month":
        with_any_month = [*fields[:3], "*", fields[4]]
        try:
            CronSim(" ".join(with_any_month), datetime(2026, 1, 1, tzinfo=UTC))
        except CronSimError:
            pass
        else:
            return CronError(name, f"day-of-month {fields[2]!r} never comes in month "
                             f"{fields[3]!r}, so this schedule would never fire")
    return CronError(name, f"{name} {fields[i]!r} is not something cron understands; "
                     f"allowed: {ALLOWED[name]}, {FORMS}")


def next_after(expr: str, tz: ZoneInfo, after: datetime) -> datetime | None:
    """The first run strictly after `after` (aware), in UTC; None when it never fires.

    cronsim matches the calendar (wall-clock times, naive); the daylight saving rules are
    Debian's, applied here to each wall time: in a gap a fixed time runs at the jump (each
    skipped slot: several runs at the same instant, a microsecond apart so each is a slot
    of its own), a wildcard one not at all; in a repeated hour a fixed time runs on the
    first pass, a wildcard one on both. (cronsim's own zone handling misses runs around
    half-hour changes, as Lord Howe's.)"""
    fields = " ".join(_fields(expr))
    try:
        return _next(fields, tz, after)
    except (OverflowError, ValueError) as exc:
        if isinstance(exc, CronError):
            raise
        return None  # at the ends of datetime's calendar (years 1 and 9999)


def _next(fields: str, tz: ZoneInfo, after: datetime) -> datetime | None:
    parts = fields.split()
    wild = parts[0].startswith("*") or parts[1].startswith("*")
    margin = timedelta(hours=3)  # wider than any change of offset
    best: datetime | None = None
    for wall in _walls(fields, after.astimezone(tz).replace(tzinfo=None) - margin):
        if best is not None and wall > best.astimezone(tz).replace(tzinfo=None) + margin:
            break
        for run in _runs(wall, tz, wild):
            if run > after and (best is None or run < best):
                best = run
    return best


def _walls(fields: str, start: datetime) -> Iterator[datetime]:
    """Wall-clock times that match, after `start` (naive), in order, for as long as the
    calendar takes to repeat (cronsim looks 50 years ahead at a time)."""
    end = start.replace(year=min(start.year + YEARS_REPEAT, datetime.max.year))
    while start < end:
        try:
            it = CronSim(fields, start)
        except CronSimError as exc:  # a row saved before cron was checked as cron checks
            raise _explain(fields.split(), str(exc)) from None
        try:
            while True:
                start = next(it)
                yield start
        except StopIteration:
            start = it.dt.replace(tzinfo=None)
        except (OverflowError, ValueError):  # the end of datetime's calendar (year 9999)
            return


def _runs(wall: datetime, tz: ZoneInfo, wild: bool) -> list[datetime]:
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first < second:  # a repeated hour: both passes, or the first
        return [first, second] if wild else [first]
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return [first]
    if wild:  # in a gap: a wildcard job runs only at wall times that exist
        return []
    jump = _jump(second, first, tz)
    skipped = int((wall - (jump + (second.astimezone(tz).utcoffset() or timedelta()))
                   .replace(tzinfo=None)).total_seconds() // 60)
    return [jump + timedelta(microseconds=1 + skipped)]


def _jump(before: datetime, after: datetime, tz: ZoneInfo) -> datetime:
    """The instant (to the second) in (before, after] at which `tz` changes its offset."""
    offset = before.astimezone(tz).utcoffset()
    while after - before > timedelta(seconds=1):
        mid = before + (after - before) / 2
        if mid.astimezone(tz).utcoffset() == offset:
            before = mid
        else:
            after = mid
    return after.replace(microsecond=0)
