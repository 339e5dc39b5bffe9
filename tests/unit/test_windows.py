from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.domain.windows import MAX_WINDOWS, TooManyWindowsError, WindowSize, floor_hour, whole_hours, windows

BERLIN = ZoneInfo("Europe/Berlin")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_dst_days_have_23_and_25_hours() -> None:
    spring = windows(utc(2025, 3, 29, 23), utc(2025, 3, 30, 22), WindowSize.DAY, BERLIN)
    assert spring == [(utc(2025, 3, 29, 23), utc(2025, 3, 30, 22))]
    assert spring[0][1] - spring[0][0] == timedelta(hours=23)
    autumn = windows(utc(2025, 10, 25, 22), utc(2025, 10, 26, 23), WindowSize.DAY, BERLIN)
    assert autumn == [(utc(2025, 10, 25, 22), utc(2025, 10, 26, 23))]
    assert autumn[0][1] - autumn[0][0] == timedelta(hours=25)


def test_windows_are_clipped_to_the_range() -> None:
    result = windows(utc(2026, 1, 1, 10, 30), utc(2026, 1, 3, 5), WindowSize.DAY, ZoneInfo("UTC"))
    assert result == [
        (utc(2026, 1, 1, 10, 30), utc(2026, 1, 2)),
        (utc(2026, 1, 2), utc(2026, 1, 3)),
        (utc(2026, 1, 3), utc(2026, 1, 3, 5)),
    ]


def test_months_follow_the_local_calendar() -> None:
    result = windows(utc(2025, 12, 31, 23), utc(2026, 3, 31, 22), WindowSize.MONTH, BERLIN)
    assert [w[0] for w in result] == [utc(2025, 12, 31, 23), utc(2026, 1, 31, 23), utc(2026, 2, 28, 23)]
    assert result[-1][1] == utc(2026, 3, 31, 22)  # March ends in summer time


def test_hours_in_a_half_hour_offset_zone() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")
    result = windows(utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 2, 0), WindowSize.HOUR, kolkata)
    assert [w[0] for w in result] == [utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 30), utc(2026, 1, 1, 1, 30)]


def test_no_window_means_the_whole_range_and_empty_ranges_have_none() -> None:
    assert windows(utc(2026, 1, 1), utc(2026, 2, 1), WindowSize.NONE, BERLIN) == [(utc(2026, 1, 1), utc(2026, 2, 1))]
    assert windows(utc(2026, 1, 1), utc(2026, 1, 1), WindowSize.DAY, BERLIN) == []


def test_too_many_windows_are_refused() -> None:
    assert len(windows(utc(2026, 1, 1), utc(2026, 1, 1) + timedelta(hours=MAX_WINDOWS), WindowSize.HOUR, BERLIN)) == (
        MAX_WINDOWS
    )
    with pytest.raises(TooManyWindowsError):
        windows(utc(2026, 1, 1), utc(2026, 1, 1) + timedelta(hours=MAX_WINDOWS + 1), WindowSize.HOUR, ZoneInfo("UTC"))


# Hypothesis takes naive bounds and attaches the time zone itself.
EARLIEST, LATEST = datetime(2020, 1, 1), datetime(2030, 1, 1)  # noqa: DTZ001


@given(
    start=st.datetimes(min_value=EARLIEST, max_value=LATEST, timezones=st.just(UTC)),
    length=st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=3)),
)
def test_whole_hours_and_the_edges_tile_the_window(start: datetime, length: timedelta) -> None:
    end = start + length
    first, last = whole_hours((start, end))
    # [start, first) and [last, end) are the edges read from events; [first, last) the rollups.
    assert start <= first <= last <= end
    if first < last:
        assert floor_hour(first) == first and floor_hour(last) == last
        assert first - start < timedelta(hours=1) and end - last < timedelta(hours=1)
    else:
        assert (first, last) == (start, start)  # no whole hour: the whole window is one edge
        assert floor_hour(end) <= start or end - start < timedelta(hours=2)


def test_whole_hours_of_a_half_hour_zone() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")
    [day] = windows(utc(2025, 1, 1, 18, 30), utc(2025, 1, 2, 18, 30), WindowSize.DAY, kolkata)
    assert whole_hours(day) == (utc(2025, 1, 1, 19), utc(2025, 1, 2, 18))
