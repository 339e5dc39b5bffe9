"""Usage periods anchored on a customer's billing anchor. Pure functions, UTC.

A period is the half-open interval [start, end). Periods are derived from the
anchor every time (never chained from the previous period), so a customer
anchored on the 31st resets on Feb 28 (or 29) and again on Mar 31.
"""

from __future__ import annotations

import calendar
import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Timestamps are years 2 to 9998: a year inside what a Timestamp (and a Python
# datetime) can hold on each side, because periods (up to a month) and local
# windows (a day) are computed around an accepted instant and must not leave
# that range, and because asyncpg stores the very first and last instants
# (datetime.min and datetime.max) as -infinity and infinity.
MIN_TIME = datetime(2, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9998, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

# The start of the single period of meters that never reset.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ResetPeriod(enum.Enum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Period:
    """A meter's usage period: [start, end), or from EPOCH with no end for a
    meter that never resets (its counter row's period_end is NULL and the
    wire leaves period_end_time unset)."""

    start: datetime
    end: datetime | None  # None: never resets

    def contains(self, instant: datetime) -> bool:
        return self.start <= instant and (self.end is None or instant < self.end)

    # By value across the subclass: a BillingPeriod is the month period of
    # the same span, not a different thing.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Period):
            return NotImplemented
        return self.start == other.start and self.end == other.end

    def __hash__(self) -> int:
        return hash((self.start, self.end))


@dataclass(frozen=True, slots=True, eq=False)  # Period's equality
class BillingPeriod(Period):
    """A customer's billing period, which always ends: bills, invoices and the
    closing of periods need its end, so the type carries it rather than every
    use asserting it. Build one with billing_period_containing."""

    end: datetime


def rfc3339(instant: datetime) -> str:
    """An instant as RFC 3339 in UTC with a `Z` (microseconds only when it has
    some): the one form errors write their times in, on the wire and in
    their messages."""
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def add_months(anchor: datetime, months: int) -> datetime:
    """The anchor moved by whole months, its day clamped to the month's last day."""
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month0 = divmod(index, 12)
    month = month0 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def period_containing(instant: datetime, anchor: datetime, reset: ResetPeriod) -> Period:
    """The period of `reset` length, anchored on `anchor`, that contains `instant`."""
    if instant.tzinfo is None or anchor.tzinfo is None:
        raise ValueError("period math needs timezone-aware datetimes")
    instant = instant.astimezone(UTC)
    anchor = anchor.astimezone(UTC)
    if reset is ResetPeriod.NONE:
        return Period(EPOCH, None)
    if reset in (ResetPeriod.DAY, ResetPeriod.WEEK):
        length = timedelta(days=1 if reset is ResetPeriod.DAY else 7)
        count = (instant - anchor) // length  # floor division: negative before the anchor
        start = anchor + count * length
        return Period(start, start + length)
    # Months: add_months(anchor, m) falls in calendar month anchor.month + m, so
    # the estimate's start is in the instant's own month: the period starts
    # there, or (when that is later in the month than the instant) a month
    # before; either way the next start is in a later month than the instant.
    months = (instant.year - anchor.year) * 12 + (instant.month - anchor.month)
    start = add_months(anchor, months)
    while start > instant:
        months -= 1
        start = add_months(anchor, months)
    return Period(start, add_months(anchor, months + 1))


def billing_period_containing(instant: datetime, anchor: datetime, reset: ResetPeriod) -> BillingPeriod:
    """The period of `reset` length containing `instant`, as a period that
    ends; `reset` must be one that resets (a bill needs an end)."""
    period = period_containing(instant, anchor, reset)
    if period.end is None:
        raise ValueError(f"a {reset.value!r} period never ends: it cannot be a billing period")
    return BillingPeriod(period.start, period.end)


class Periods:
    """period_containing that remembers the last period found per anchor and
    reset (at most `capacity`, then it starts over), for many instants that
    mostly share one (the events of a customer, close in time). Periods tile
    time, so a remembered period that contains the instant is the one
    period_containing would compute."""

    def __init__(self, capacity: int = 50_000) -> None:
        self._capacity = capacity
        self._last: dict[tuple[datetime, ResetPeriod], tuple[Period, datetime]] = {}  # and the last instant in it

    def containing(self, instant: datetime, anchor: datetime, reset: ResetPeriod) -> Period:
        key = (anchor, reset)
        found = self._last.get(key)
        # The same instant object as the last look-up (the events of one call
        # share the server's time) needs no comparison of aware datetimes.
        if found is not None and found[1] is instant:
            return found[0]
        if found is None or instant.tzinfo is None or not found[0].contains(instant):
            period = period_containing(instant, anchor, reset)
            if len(self._last) >= self._capacity:
                self._last.clear()
        else:
            period = found[0]
        self._last[key] = (period, instant)
        return period
