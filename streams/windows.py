"""Event-time minute buckets and the KPI windows (DESIGN 4): ``5m``, ``15m``, ``1h``, ``today``, ``interval``.

Buckets are half-open minutes ``[start, start + 60 s)``: an event at exactly hh:mm:00 belongs to the new
minute. Every window ends with the minute that holds ``now`` (inclusive) and is a whole number of buckets:

- ``5m``, ``15m``, ``1h``: the current minute and the N-1 before it (so between N-1 and N minutes of data);
- ``today``: from the start of the business day, local midnight in ``tz`` plus ``day_start_h`` hours
  (a day is 23 or 25 hours long across a DST change; the start is computed in local wall time);
- ``interval``: the current interval of ``interval_min`` minutes, aligned in local time (15 or 30).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

#: One bucket, in milliseconds.
MINUTE_MS = 60_000
#: Trailing windows: name -> number of minute buckets.
TRAILING = {"5m": 5, "15m": 15, "1h": 60}
WINDOWS = ("5m", "15m", "1h", "today", "interval")


def bucket_start(ts_ms: int) -> int:
    """Start of the minute bucket holding ``ts_ms``."""
    return ts_ms - ts_ms % MINUTE_MS


def next_bucket_start(ts_ms: int) -> int:
    """The first minute boundary at or after ``ts_ms``."""
    return -(-ts_ms // MINUTE_MS) * MINUTE_MS


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """Calendar settings of the windows."""

    tz: str = "UTC"
    day_start_h: int = 0
    interval_min: int = 15

    def __post_init__(self) -> None:
        if not 0 <= self.day_start_h <= 23:
            msg = "day_start_h must lie in 0..23"
            raise ValueError(msg)
        if self.interval_min not in (15, 30):
            msg = "interval_min must be 15 or 30"
            raise ValueError(msg)
        ZoneInfo(self.tz)  # raises for an unknown zone

    @property
    def zone(self) -> ZoneInfo:
        """The time zone ``today`` is counted in."""
        return ZoneInfo(self.tz)

    def day_start_ms(self, now_ms: int) -> int:
        """Start of the business day holding ``now_ms``: local midnight + day_start_h (wall time)."""
        zone = self.zone
        local = datetime.fromtimestamp(now_ms / 1000, zone)
        start = datetime(local.year, local.month, local.day, self.day_start_h, tzinfo=zone)
        if start > local:
            day = local.date() - timedelta(days=1)
            start = datetime(day.year, day.month, day.day, self.day_start_h, tzinfo=zone)
        return bucket_start(int(start.astimezone(UTC).timestamp() * 1000))

    def interval_start_ms(self, now_ms: int) -> int:
        """Start of the current interval, aligned to local time."""
        offset = datetime.fromtimestamp(now_ms / 1000, self.zone).utcoffset()
        offset_ms = int(offset.total_seconds() * 1000) if offset else 0
        local_ms = now_ms + offset_ms
        length = self.interval_min * MINUTE_MS
        return local_ms - local_ms % length - offset_ms

    def window(self, name: str, now_ms: int) -> tuple[int, int]:
        """Return ``[start_ms, end_ms)`` of window ``name`` at ``now_ms``; both on minute boundaries."""
        end = bucket_start(now_ms) + MINUTE_MS
        if name in TRAILING:
            return end - TRAILING[name] * MINUTE_MS, end
        if name == "today":
            return self.day_start_ms(now_ms), end
        if name == "interval":
            return self.interval_start_ms(now_ms), end
        msg = f"unknown window {name!r}"
        raise ValueError(msg)

    def windows(self, now_ms: int) -> dict[str, tuple[int, int]]:
        """Every window's [start, end) at ``now_ms``."""
        return {name: self.window(name, now_ms) for name in WINDOWS}


def local_hour_start(zone: ZoneInfo, ts_ms: int) -> int:
    """Start (epoch ms) of the local hour holding ``ts_ms``: the wall-clock hour in ``zone``.

    In a zone offset by a half or three quarters of an hour, local hours start at :30 or :45 UTC; across a
    DST change an hour may repeat in wall time, and each of the two keeps its own start.
    """
    local = datetime.fromtimestamp(ts_ms / 1000, zone)
    return int(local.replace(minute=0, second=0, microsecond=0).timestamp() * 1000)
