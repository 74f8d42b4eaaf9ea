"""Cron slots in a time zone, without processes: DST in two zones, validation."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from envmgr.core.errors import APIError
from envmgr.jobs.schedules import check_cron, next_slot, slots_between, zone


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
    assert forward[0].astimezone(ZoneInfo(tz)).hour == 3  # 02:30 does not exist: 03:30
    assert all(t.astimezone(ZoneInfo(tz)).strftime("%H:%M") == "02:30" for t in forward[1:])
    back = slots("30 2 * * *", tz, fall, 3)
    assert len({t.astimezone(ZoneInfo(tz)).date() for t in back}) == 3, local(back, tz)
    assert all(b - a >= timedelta(hours=23) for a, b in itertools.pairwise(back))


def test_weekdays_at_six_in_paris() -> None:
    got = slots("0 6 * * 1-5", "Europe/Paris", datetime(2026, 12, 4, 12, tzinfo=UTC), 3)
    assert local(got, "Europe/Paris") == ["12-07 06:00+0100", "12-08 06:00+0100",
                                          "12-09 06:00+0100"]
    assert got[0] == datetime(2026, 12, 7, 5, tzinfo=UTC)


def test_slots_between_counts_and_finds_the_latest() -> None:
    start = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    count, latest = slots_between("*/15 * * * *", ZoneInfo("UTC"), start,
                                  start + timedelta(hours=1, minutes=5))
    assert count == 5 and latest == datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
    assert slots_between("0 0 1 1 *", ZoneInfo("UTC"), start, start + timedelta(days=1)) == \
        (0, None)


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
