"""Cron slots in a time zone, without processes: Debian's cron's rules (a table of cases
against a simulation of its daemon, tests/cron_reference.py), DST in six zones, the
extensions (L, LW, nL, #, aliases), refusals that name the field, validation."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from envmgr.core.errors import APIError
from envmgr.jobs import cron
from envmgr.jobs.schedules import check_cron, next_slot, slots_in, zone
from tests import cron_reference


def slots(expr: str, tz: str, start: datetime, n: int) -> list[datetime]:
    out, t = [], start
    for _ in range(n):
        t = next_slot(expr, ZoneInfo(tz), t)
        out.append(t)
    return out


def local(ts: list[datetime], tz: str) -> list[str]:
    return [t.astimezone(ZoneInfo(tz)).strftime("%m-%d %H:%M%z") for t in ts]


@pytest.mark.parametrize("tz, spring, fall", [
    ("Europe/Paris", datetime(2027, 3, 27, 12, tzinfo=UTC), datetime(2026, 10, 24, 12, tzinfo=UTC)),
    ("America/New_York", datetime(2027, 3, 13, 12, tzinfo=UTC),
     datetime(2026, 10, 31, 12, tzinfo=UTC)),
])
def test_a_daily_0230_runs_once_on_both_dst_days(tz: str, spring: datetime,
                                                 fall: datetime) -> None:
    forward = slots("30 2 * * *", tz, spring, 3)
    days = [t.astimezone(ZoneInfo(tz)).date() for t in forward]
    assert len(set(days)) == 3, local(forward, tz)  # one run per day, none skipped
    # 02:30 does not exist: as Debian's cron, right after the jump (03:00)
    assert forward[0].astimezone(ZoneInfo(tz)).strftime("%H:%M") == "03:00"
    assert all(t.astimezone(ZoneInfo(tz)).strftime("%H:%M") == "02:30" for t in forward[1:])
    back = slots("30 2 * * *", tz, fall, 3)
    assert len({t.astimezone(ZoneInfo(tz)).date() for t in back}) == 3, local(back, tz)
    assert all(b - a >= timedelta(hours=23) for a, b in itertools.pairwise(back))


def test_weekdays_at_six_in_paris() -> None:
    got = slots("0 6 * * 1-5", "Europe/Paris", datetime(2026, 12, 4, 12, tzinfo=UTC), 3)
    assert local(got, "Europe/Paris") == ["12-07 06:00+0100", "12-08 06:00+0100",
                                          "12-09 06:00+0100"]
    assert got[0] == datetime(2026, 12, 7, 5, tzinfo=UTC)


def test_slots_in_counts_and_keeps_the_latest() -> None:
    start = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    count, recent = slots_in("*/15 * * * *", ZoneInfo("UTC"), start,
                             start + timedelta(hours=1, minutes=5), 2)
    assert count == 5 and recent == [datetime(2026, 12, 1, 10, 45, tzinfo=UTC),
                                     datetime(2026, 12, 1, 11, 0, tzinfo=UTC)]
    assert slots_in("0 0 1 1 *", ZoneInfo("UTC"), start, start + timedelta(days=1), 3) == \
        (0, [])


@pytest.mark.parametrize("expr", ["", "* * * *", "* * * * * *", "61 * * * *", "a b c d e",
                                  "0 0 30 2 *", "@hourly x"])
def test_bad_cron_is_a_422(expr: str) -> None:
    with pytest.raises(APIError) as exc:
        check_cron(expr)
    assert exc.value.status == 422 and "cron" in exc.value.message


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "/etc/localtime",
                                  "Europe/Paris/x", "x" * 80])
def test_unknown_time_zone_is_a_422(name: str) -> None:
    with pytest.raises(APIError) as exc:
        zone(name)
    assert exc.value.status == 422 and "IANA" in exc.value.message


def test_good_cron() -> None:
    assert check_cron("0  6 * *   1-5") == "0 6 * * 1-5"
    assert zone("Europe/Paris").key == "Europe/Paris"


# -- Debian's cron, case by case ---------------------------------------------------------
EXPRESSIONS = [
    "30 2 * * *", "0 2 * * *", "59 1 * * *", "0 3 * * *", "30 1 * * *", "0 1 * * *",
    "45 1 * * *", "0 * * * *", "30 * * * *", "*/15 * * * *", "0 */2 * * *", "0 */3 * * *",
    "15,45 2 * * *", "0 1-3 * * *", "15 0-4 * * *", "* 2 * * *", "*/30 2 * * *",
    "*/20 1-2 * * *", "45 23 * * *", "0 0 * * *", "30 0 * * *", "0 12 * * *", "5 2 * * 0",
    "0 2 * * 1-5", "30 1 * * SUN", "0 2,14 * * *", "30 2 L * *", "0 2 LW * *",
    "0 0 */2 * 1", "0 2 1,15 * 5", "0 0 * * 5L", "0 3 * * 0#1", "@daily", "@hourly",
    "@weekly", "10 2-3/1 * * *", "0 0-23/6 * * *", "30 3 * * *",
]
# Europe, both Americas (Havana changes at midnight), Lord Howe's half hour, and zones
# without daylight saving time.
ZONES = ["Europe/Paris", "America/New_York", "America/Santiago", "America/Havana",
         "Australia/Lord_Howe", "Asia/Tokyo", "Asia/Kolkata"]


def _around(tz: ZoneInfo) -> list[datetime]:
    """Each change of offset in 2026, or (no DST) two ordinary days."""
    return cron_reference.transitions(tz, 2026) or [datetime(2026, 3, 29, 1, tzinfo=UTC),
                                                   datetime(2026, 10, 25, 1, tzinfo=UTC)]


def _envmgr(expr: str, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    out, t = [], start
    while (t := cron.next_after(expr, tz, t)) is not None and t <= end:  # type: ignore[assignment]
        out.append(t.replace(microsecond=0))  # slots at one instant are a microsecond apart
    return out


@pytest.mark.parametrize("name", ZONES)
def test_slots_are_debian_crons_around_every_change_of_offset(name: str) -> None:
    """Every expression, around every change of offset of the year: the same runs as
    Debian's cron daemon, minute by minute (several at one instant included)."""
    tz, cases, wrong = ZoneInfo(name), 0, []
    for change in _around(tz):
        start, end = change - timedelta(hours=14), change + timedelta(hours=14)
        for expr in EXPRESSIONS:
            want = cron_reference.firings(expr, tz, start, end)
            got = _envmgr(expr, tz, start, end)
            cases += 1
            if got != want:
                wrong.append((expr, change.isoformat(), local(want, name), local(got, name)))
    assert not wrong, wrong
    assert cases == len(_around(tz)) * len(EXPRESSIONS)


def test_the_table_holds_at_least_500_cases() -> None:
    total = sum(len(_around(ZoneInfo(z))) for z in ZONES) * len(EXPRESSIONS)
    assert total >= 500, total


@pytest.mark.parametrize("expr, tz, start, want", [
    # a fixed time in the skipped hour runs right after the jump, once
    ("30 2 * * *", "Europe/Paris", "2026-03-29T00:00+01:00", ["03-29 03:00+0200"]),
    # two fixed times in it both run then, as cron runs each skipped minute's jobs
    ("15,45 2 * * *", "America/New_York", "2026-03-08T00:00-05:00",
     ["03-08 03:00-0400", "03-08 03:00-0400"]),
    # a fixed time in the repeated hour runs once, on the first pass
    ("30 1 * * *", "America/New_York", "2026-11-01T00:00-04:00",
     ["11-01 01:30-0400", "11-02 01:30-0500"]),
    # a wildcard minute or hour runs in both passes
    ("0 * * * *", "America/New_York", "2026-11-01T00:30-04:00",
     ["11-01 01:00-0400", "11-01 01:00-0500", "11-01 02:00-0500"]),
    # an hourly job does not gain a run at a half-hour jump (Lord Howe, 02:00 -> 02:30)
    ("0 * * * *", "Australia/Lord_Howe", "2026-10-04T01:00+10:30",
     ["10-04 03:00+1100", "10-04 04:00+1100"]),
    # Havana changes at midnight: a midnight job runs at the jump, 01:00
    ("0 0 * * *", "America/Havana", "2026-03-07T12:00-05:00", ["03-08 01:00-0400"]),
    # day of month and day of week: AND-ed when either starts with '*'...
    ("0 0 */2 * 1", "UTC", "2026-12-07T12:00+00:00", ["12-21 00:00+0000", "01-11 00:00+0000"]),
    # ...OR-ed otherwise (the 1st, and every Monday)
    ("0 0 1 * 1", "UTC", "2026-12-26T00:00+00:00", ["12-28 00:00+0000", "01-01 00:00+0000"]),
    ("0 0 L * *", "UTC", "2027-02-01T00:00+00:00", ["02-28 00:00+0000", "03-31 00:00+0000"]),
    ("0 0 LW * *", "UTC", "2027-07-01T00:00+00:00", ["07-30 00:00+0000", "08-31 00:00+0000"]),
    ("0 0 * * 5L", "UTC", "2026-12-01T00:00+00:00", ["12-25 00:00+0000", "01-29 00:00+0000"]),
    ("0 9 * * MON#2", "UTC", "2026-12-01T00:00+00:00", ["12-14 09:00+0000", "01-11 09:00+0000"]),
    ("@monthly", "Europe/Paris", "2026-12-07T00:00+01:00", ["01-01 00:00+0100",
                                                            "02-01 00:00+0100"]),
    ("@weekly", "UTC", "2026-12-07T00:00+00:00", ["12-13 00:00+0000", "12-20 00:00+0000"]),
])
def test_each_rule_with_an_example(expr: str, tz: str, start: str, want: list[str]) -> None:
    assert local(slots(expr, tz, datetime.fromisoformat(start), len(want)), tz) == want


def test_rare_dates_are_found_and_a_schedule_never_stops() -> None:
    utc = ZoneInfo("UTC")
    # the 5th Monday of February: 29 February 2044
    assert next_slot("0 0 * 2 1#5", utc, datetime(2026, 12, 7, tzinfo=UTC)) == \
        datetime(2044, 2, 29, tzinfo=UTC)
    # 29 February after 2096: 2100 is no leap year, so 2104
    assert next_slot("0 0 29 2 *", utc, datetime(2096, 3, 1, tzinfo=UTC)) == \
        datetime(2104, 2, 29, tzinfo=UTC)
    assert check_cron("@DAILY") == "@daily"


@pytest.mark.parametrize("expr, field, words", [
    ("R * * * *", "minute", "minute 'R'"),
    ("0 0 ? * *", "day-of-month", "day-of-month '?'"),
    ("5-1 * * * *", "minute", "range from low to high"),
    ("0 0 15W * *", "day-of-month", "LW (the last weekday)"),
    ("0 0 5L * *", "day-of-month", "day-of-month '5L'"),
    ("0 24 * * *", "hour", "0-23"),
    ("0 0 * 13 *", "month", "1-12 or JAN-DEC"),
    ("0 0 * * 8", "day-of-week", "0-7 or SUN-SAT"),
    ("0 0 * * 1#6", "day-of-week", "1#2"),
    ("0 0 30 2 *", "day-of-month", "never comes in month '2'"),
    ("0 0 31 4,6 *", "day-of-month", "never comes"),
    ("* * * * * *", None, "5-field"),
    ("@reboot", None, "@daily"),
    ("0 0 */30 2 1#5", None, "never fires"),
])
def test_what_cron_does_not_define_is_a_422_naming_the_field(expr: str, field: str | None,
                                                             words: str) -> None:
    with pytest.raises(APIError) as exc:
        check_cron(expr)
    err = exc.value
    assert err.status == 422 and words in err.message, err.message
    assert err.details["errors"][0]["cron_field"] == field
