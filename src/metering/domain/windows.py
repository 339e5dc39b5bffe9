"""GetUsage windows: calendar-aligned in an IANA time zone. Pure functions.

DAY and MONTH windows run from local midnight to local midnight, so a day is
23 or 25 hours long when daylight saving time starts or ends. HOUR windows
are whole local hours. The first and last windows are clipped to the range.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from metering.domain.periods import add_months

# A bound on the work one request can ask for; larger requests are refused.
MAX_WINDOWS = 10_000
HOUR = timedelta(hours=1)


class WindowSize(enum.Enum):
    NONE = "none"
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


class TooManyWindowsError(ValueError):
    pass


Window = tuple[datetime, datetime]


def windows(start: datetime, end: datetime, size: WindowSize, zone: ZoneInfo) -> list[Window]:
    """The windows covering [start, end), in order, clipped to the range."""
    if end <= start:
        return []
    if size is WindowSize.NONE:
        return [(start, end)]
    result: list[Window] = []
    boundary = _floor(start, size, zone)
    while boundary < end:
        following = _next(boundary, size, zone)
        result.append((max(boundary, start), min(following, end)))
        if len(result) > MAX_WINDOWS:
            raise TooManyWindowsError(f"the range holds more than {MAX_WINDOWS} {size.value} windows")
        boundary = following
    return result


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def _floor(instant: datetime, size: WindowSize, zone: ZoneInfo) -> datetime:
    local = instant.astimezone(zone)
    if size is WindowSize.HOUR:
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    if size is WindowSize.DAY:
        return _local_midnight(local.date(), zone)
    return _local_midnight(local.date().replace(day=1), zone)


def _next(boundary: datetime, size: WindowSize, zone: ZoneInfo) -> datetime:
    if size is WindowSize.HOUR:
        return boundary + timedelta(hours=1)  # absolute hours: DST moves whole hours
    local_day = boundary.astimezone(zone).date()
    if size is WindowSize.DAY:
        return _local_midnight(local_day + timedelta(days=1), zone)
    first = datetime.combine(local_day.replace(day=1), time(0))
    return _local_midnight(add_months(first, 1).date(), zone)


def floor_hour(instant: datetime) -> datetime:
    """The start of the UTC hour holding `instant`: the bucket of the hourly
    rollups (the SQL twin is metering.ledger.rollups.HOUR_SQL)."""
    return instant.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def whole_hours(window: Window) -> Window:
    """The whole UTC hours inside a window, [first, last): what rollups can
    answer. The rest of the window, [start, first) and [last, end), is read
    from the events. A window without a whole hour gives the empty span
    (start, start), so that all of it is an edge."""
    start, end = window
    first = floor_hour(start)
    if first < start:
        first += HOUR
    last = floor_hour(end)
    if first >= last:
        return (start, start)
    return (first, last)
