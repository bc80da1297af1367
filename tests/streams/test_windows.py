"""Minute buckets and windows: boundaries, day start, DST days, interval alignment."""

from datetime import UTC, datetime

import pytest

from streams.windows import MINUTE_MS, WindowSpec, bucket_start


def ms(*args, tz=UTC):
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


@pytest.mark.parametrize(
    ("ts", "start"),
    [
        (ms(2026, 1, 1, 10, 4, 0), ms(2026, 1, 1, 10, 4, 0)),  # exactly on the minute: the new bucket
        (ms(2026, 1, 1, 10, 4, 0) - 1, ms(2026, 1, 1, 10, 3, 0)),  # 1 ms before: the previous bucket
        (ms(2026, 1, 1, 10, 4, 59) + 999, ms(2026, 1, 1, 10, 4, 0)),  # last ms of the minute
        (0, 0),
    ],
)
def test_bucket_start_is_half_open(ts, start):
    assert bucket_start(ts) == start


def test_trailing_windows_end_with_the_current_minute():
    spec = WindowSpec()
    now = ms(2026, 1, 1, 10, 4, 30)
    end = ms(2026, 1, 1, 10, 5, 0)
    assert spec.window("5m", now) == (ms(2026, 1, 1, 10, 0, 0), end)
    assert spec.window("15m", now) == (ms(2026, 1, 1, 9, 50, 0), end)
    assert spec.window("1h", now) == (ms(2026, 1, 1, 9, 5, 0), end)
    assert spec.window("interval", now) == (ms(2026, 1, 1, 10, 0, 0), end)
    assert spec.window("today", now) == (ms(2026, 1, 1, 0, 0, 0), end)


def test_interval_of_30_minutes_and_its_boundary():
    spec = WindowSpec(interval_min=30)
    assert spec.window("interval", ms(2026, 1, 1, 10, 29, 59))[0] == ms(2026, 1, 1, 10, 0, 0)
    assert spec.window("interval", ms(2026, 1, 1, 10, 30, 0))[0] == ms(2026, 1, 1, 10, 30, 0)


def test_intervals_align_to_local_time():
    # Kathmandu is UTC+05:45: a local half hour starts at UTC :15 and :45.
    spec = WindowSpec(tz="Asia/Kathmandu", interval_min=30)
    now = ms(2026, 1, 1, 10, 20, 0)  # 16:05 local
    assert spec.window("interval", now)[0] == ms(2026, 1, 1, 10, 15, 0)  # 16:00 local


def test_day_start_shifts_the_business_day():
    spec = WindowSpec(tz="UTC", day_start_h=4)
    # 03:59 belongs to the business day that began yesterday at 04:00; 04:00 starts a new one.
    assert spec.window("today", ms(2026, 1, 2, 3, 59, 0))[0] == ms(2026, 1, 1, 4, 0, 0)
    assert spec.window("today", ms(2026, 1, 2, 4, 0, 0))[0] == ms(2026, 1, 2, 4, 0, 0)


def test_today_in_a_time_zone():
    spec = WindowSpec(tz="America/New_York")
    # 2026-07-01 03:00 UTC is 23:00 EDT on June 30: the day began at June 30 04:00 UTC.
    assert spec.window("today", ms(2026, 7, 1, 3, 0, 0))[0] == ms(2026, 6, 30, 4, 0, 0)


def test_today_on_a_25_hour_day():
    # New York leaves DST on 2026-11-01 at 02:00 EDT (06:00 UTC). Midnight EDT is 04:00 UTC; at 23:30 EST
    # (04:30 UTC next day) the day is 24.5 h old, and it has 25 h in all.
    spec = WindowSpec(tz="America/New_York")
    start, end = spec.window("today", ms(2026, 11, 2, 4, 30, 0))
    assert start == ms(2026, 11, 1, 4, 0, 0)
    assert (end - start) == 24 * 3600_000 + 31 * MINUTE_MS
    # the next local midnight (05:00 UTC, EST) starts the next day
    assert spec.window("today", ms(2026, 11, 2, 5, 0, 0))[0] == ms(2026, 11, 2, 5, 0, 0)


def test_today_on_a_23_hour_day_with_a_day_start():
    # Berlin enters DST on 2026-03-29 at 02:00 CET; with day_start 4 h the day starts at 04:00 CEST = 02:00 UTC,
    # and the previous day started at 04:00 CET = 03:00 UTC on 03-28: 23 hours between them.
    spec = WindowSpec(tz="Europe/Berlin", day_start_h=4)
    assert spec.window("today", ms(2026, 3, 29, 1, 59, 0))[0] == ms(2026, 3, 28, 3, 0, 0)
    assert spec.window("today", ms(2026, 3, 29, 2, 0, 0))[0] == ms(2026, 3, 29, 2, 0, 0)


@pytest.mark.parametrize("kwargs", [{"day_start_h": 24}, {"interval_min": 20}, {"tz": "Mars/Olympus"}])
def test_bad_window_settings_fail_at_construction(kwargs):
    with pytest.raises(Exception):  # noqa: B017 - ValueError or ZoneInfoNotFoundError
        WindowSpec(**kwargs)
