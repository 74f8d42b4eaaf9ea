"""A reference for the cron tests, written apart from envmgr and from cronsim: Debian's cron
daemon simulated minute by minute, as its cron.c loop runs (Debian cron 3.0pl1).

Each real minute the daemon reads the wall clock of its zone and compares it with the
minute it expected ("virtual time"):
- one minute on: jobs matching the wall minute run;
- the wall clock jumped forward by up to three hours (daylight saving time began): the
  wildcard jobs (minute or hour field starting with `*`) run for the current minute only,
  and the fixed-time jobs run for every wall minute that was skipped, right away;
- the wall clock went back by up to three hours (it ended): wildcard jobs run for the
  current minute; fixed-time jobs do not run again until the wall clock passes the latest
  minute already seen.

Matching is cron's: day-of-month and day-of-week AND-ed when either starts with `*`, else
OR-ed; `L`, `LW`, `nL` and `n#k` as cronsim documents them (the extensions it adds to
Debian's syntax)."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
ALIASES = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
           "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
           "@hourly": "0 * * * *"}


def _value(text: str, names: list[str], base: int) -> int:
    return names.index(text.upper()) + base if text.upper() in names else int(text)


def _set(field: str, lo: int, hi: int, names: list[str] | None = None,
         base: int = 0) -> set[int]:
    out: set[int] = set()
    for part in field.split(","):
        step = 1
        if "/" in part:
            part, s = part.split("/")
            step = int(s)
        if part == "*":
            a, b = lo, hi
        elif "-" in part:
            x, y = part.split("-")
            a, b = _value(x, names or [], base), _value(y, names or [], base)
        else:
            a = _value(part, names or [], base)
            b = hi if step > 1 else a
        out.update(range(a, b + 1, step))
    return out


class Entry:
    def __init__(self, expr: str) -> None:
        f = ALIASES.get(expr, expr).split()
        self.wild = f[0].startswith("*") or f[1].startswith("*")
        self.minutes = _set(f[0], 0, 59)
        self.hours = _set(f[1], 0, 23)
        self.months = _set(f[3], 1, 12, MONTHS, 1)
        self.dom_text, self.dow_text = f[2], f[4]
        self.day_and = f[2].startswith("*") or f[4].startswith("*")

    def _dom(self, d: datetime) -> bool:
        last = calendar.monthrange(d.year, d.month)[1]
        for part in self.dom_text.split(","):
            if part == "L" and d.day == last:
                return True
            if part == "LW":
                lw = last
                while calendar.weekday(d.year, d.month, lw) >= 5:
                    lw -= 1
                if d.day == lw:
                    return True
            elif part not in ("L", "LW") and d.day in _set(part, 1, 31):
                return True
        return False

    def _dow(self, d: datetime) -> bool:
        cron_dow = (d.weekday() + 1) % 7  # Sunday 0
        last = calendar.monthrange(d.year, d.month)[1]
        for part in self.dow_text.split(","):
            if part.endswith("L"):
                if _value(part[:-1], DAYS, 0) % 7 == cron_dow and d.day > last - 7:
                    return True
            elif "#" in part:
                day, nth = part.split("#")
                if _value(day, DAYS, 0) % 7 == cron_dow and (d.day - 1) // 7 + 1 == int(nth):
                    return True
            elif cron_dow in {v % 7 for v in _set(part, 0, 7, DAYS, 0)}:
                return True
        return False

    def matches(self, wall: datetime) -> bool:
        if wall.minute not in self.minutes or wall.hour not in self.hours \
                or wall.month not in self.months:
            return False
        dom, dow = self._dom(wall), self._dow(wall)
        return (dom and dow) if self.day_and else (dom or dow)


def firings(expr: str, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """When Debian's cron runs `expr` in zone `tz` between `start` and `end` (UTC), as the
    UTC minutes it runs it in (a minute may hold several runs: a list, in order)."""
    entry = Entry(expr)
    out: list[datetime] = []
    t = start.replace(second=0, microsecond=0)
    virtual = t.astimezone(tz).replace(tzinfo=None)
    seen = virtual
    while t < end:
        t += timedelta(minutes=1)
        wall = t.astimezone(tz).replace(tzinfo=None)
        diff = (wall - virtual).total_seconds() / 60
        if diff == 1:
            if entry.matches(wall) and (entry.wild or wall > seen):
                out.append(t)
        elif 1 < diff <= 180:  # jumped forward: skipped minutes' fixed jobs, now
            if entry.wild and entry.matches(wall):
                out.append(t)
            minute = virtual
            while minute < wall:
                minute += timedelta(minutes=1)
                if not entry.wild and entry.matches(minute):
                    out.append(t)
        elif -180 <= diff < 1:  # went back: wildcard jobs only, until caught up
            if entry.matches(wall) and (entry.wild or wall > seen):
                out.append(t)
        else:
            raise AssertionError(f"a clock change of {diff} minutes is not a DST change")
        virtual = wall
        seen = max(seen, wall)
    return [x.astimezone(UTC) for x in out]


def transitions(tz: ZoneInfo, year: int) -> list[datetime]:
    """The instants (UTC) at which `tz` changes its offset in `year`."""
    out = []
    t = datetime(year, 1, 1, tzinfo=UTC)
    off = t.astimezone(tz).utcoffset()
    while t.year == year:
        nxt = t + timedelta(hours=1)
        if nxt.astimezone(tz).utcoffset() != off:
            lo, hi = t, nxt  # narrow down to the minute
            while hi - lo > timedelta(minutes=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(tz).utcoffset() == off:
                    lo = mid
                else:
                    hi = mid
            out.append(hi.replace(second=0, microsecond=0))
            off = nxt.astimezone(tz).utcoffset()
        t = nxt
    return out
