from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.domain.periods import EPOCH, Periods, ResetPeriod, add_months, period_containing


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_anchor_on_the_31st_resets_on_the_last_day_of_shorter_months() -> None:
    anchor = utc(2026, 1, 31, 10)
    assert add_months(anchor, 1) == utc(2026, 2, 28, 10)
    assert add_months(anchor, 2) == utc(2026, 3, 31, 10)
    assert add_months(anchor, 3) == utc(2026, 4, 30, 10)
    assert add_months(utc(2027, 12, 31), 2) == utc(2028, 2, 29)  # leap year
    assert add_months(anchor, -2) == utc(2025, 11, 30, 10)


@pytest.mark.parametrize(
    ("instant", "start", "end"),
    [
        (utc(2026, 2, 15), utc(2026, 1, 31, 10), utc(2026, 2, 28, 10)),
        (utc(2026, 2, 28, 9, 59, 59), utc(2026, 1, 31, 10), utc(2026, 2, 28, 10)),
        (utc(2026, 2, 28, 10), utc(2026, 2, 28, 10), utc(2026, 3, 31, 10)),  # the boundary starts the new one
        (utc(2026, 3, 31, 10), utc(2026, 3, 31, 10), utc(2026, 4, 30, 10)),
        (utc(2025, 12, 31, 11), utc(2025, 12, 31, 10), utc(2026, 1, 31, 10)),
        (utc(2025, 12, 31, 9), utc(2025, 11, 30, 10), utc(2025, 12, 31, 10)),  # before the anchor
    ],
)
def test_monthly_periods(instant: datetime, start: datetime, end: datetime) -> None:
    period = period_containing(instant, utc(2026, 1, 31, 10), ResetPeriod.MONTH)
    assert (period.start, period.end) == (start, end)


def test_daily_and_weekly_periods_follow_the_anchor_time() -> None:
    anchor = utc(2026, 3, 1, 6, 30)
    day = period_containing(utc(2026, 3, 10, 6, 29), anchor, ResetPeriod.DAY)
    assert (day.start, day.end) == (utc(2026, 3, 9, 6, 30), utc(2026, 3, 10, 6, 30))
    week = period_containing(utc(2026, 3, 8, 6, 30), anchor, ResetPeriod.WEEK)
    assert (week.start, week.end) == (utc(2026, 3, 8, 6, 30), utc(2026, 3, 15, 6, 30))
    before = period_containing(utc(2026, 2, 28), anchor, ResetPeriod.DAY)
    assert before.start == utc(2026, 2, 27, 6, 30)


def test_never_resetting_period() -> None:
    period = period_containing(utc(2030, 1, 1), utc(2026, 1, 1), ResetPeriod.NONE)
    assert period.start == EPOCH and period.end is None
    assert period.contains(utc(1999, 1, 1))


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        period_containing(datetime(2026, 1, 1), utc(2026, 1, 1), ResetPeriod.DAY)  # noqa: DTZ001


# hypothesis takes naive bounds and attaches the time zone itself.
moments = st.datetimes(
    min_value=datetime(1990, 1, 1),  # noqa: DTZ001
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@given(instant=moments, anchor=moments, reset=st.sampled_from([ResetPeriod.DAY, ResetPeriod.WEEK, ResetPeriod.MONTH]))
def test_every_instant_is_in_exactly_one_period(instant: datetime, anchor: datetime, reset: ResetPeriod) -> None:
    period = period_containing(instant, anchor, reset)
    assert period.end is not None
    assert period.contains(instant)
    # Consecutive periods tile time: the next one starts where this one ends.
    following = period_containing(period.end, anchor, reset)
    assert following.start == period.end
    previous = period_containing(period.start - timedelta(microseconds=1), anchor, reset)
    assert previous.end == period.start
    if reset is ResetPeriod.MONTH:
        assert 28 <= (period.end - period.start).days <= 31


@given(
    base=moments,
    offsets=st.lists(st.timedeltas(min_value=timedelta(days=-40), max_value=timedelta(days=40)), max_size=20),
    anchors=st.lists(moments, min_size=1, max_size=3),
    reset=st.sampled_from(list(ResetPeriod)),
    capacity=st.integers(min_value=1, max_value=3),
)
def test_remembered_periods_are_the_computed_ones(
    base: datetime, offsets: list[timedelta], anchors: list[datetime], reset: ResetPeriod, capacity: int
) -> None:
    # Instants close together, as the events of a batch: mostly in a period
    # already found, sometimes across its edge.
    periods = Periods(capacity)
    for index, instant in enumerate([base, base, *(base + offset for offset in offsets)]):
        anchor = anchors[index % len(anchors)]
        assert periods.containing(instant, anchor, reset) == period_containing(instant, anchor, reset)
