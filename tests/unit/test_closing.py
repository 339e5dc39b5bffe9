"""The pure decisions of closing periods (metering.domain.closing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from metering.domain import closing
from metering.domain.closing import EventTime
from metering.domain.errors import BeforeFirstPeriod, PeriodClosed
from metering.domain.periods import ResetPeriod, period_containing

# hypothesis takes naive bounds and attaches the time zone itself.
instants = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)


def test_a_period_is_due_once_its_grace_has_passed() -> None:
    end = datetime(2026, 3, 1, tzinfo=UTC)
    grace = timedelta(hours=1)
    assert not closing.is_due(end, grace, end)
    assert not closing.is_due(end, grace, end + grace - timedelta(microseconds=1))
    assert closing.is_due(end, grace, end + grace)
    assert closing.is_due(end, timedelta(0), end)


def test_the_waiting_age_counts_from_the_period_end() -> None:
    end = datetime(2026, 3, 1, tzinfo=UTC)
    assert closing.waiting_age(None, end) == 0.0
    assert closing.waiting_age(end, end - timedelta(seconds=5)) == 0.0
    assert closing.waiting_age(end, end + timedelta(minutes=90)) == 5400.0


def test_month_end_anchors_close_on_clamped_days() -> None:
    anchor = datetime(2026, 1, 31, 10, tzinfo=UTC)
    ends = [closing.first_period_end(anchor)]
    for _ in range(3):
        ends.append(closing.following_period_end(ends[-1], anchor))
    assert [e.date().isoformat() for e in ends] == ["2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31"]


@given(anchor=instants, steps=st.integers(1, 30))
def test_closing_walks_the_billing_periods_without_gap_or_overlap(anchor: datetime, steps: int) -> None:
    start, end = anchor, closing.first_period_end(anchor)
    for _ in range(steps):
        assert period_containing(start, anchor, ResetPeriod.MONTH) == closing.billing_period(start, anchor)
        assert closing.billing_period(start, anchor).end == end
        assert closing.billing_period(end - timedelta(microseconds=1), anchor).start == start
        start, end = end, closing.following_period_end(end, anchor)


@given(anchor=instants, offset=st.timedeltas(timedelta(days=-400), timedelta(days=400)), closed=st.integers(0, 6))
def test_an_event_time_is_before_the_first_period_closed_or_open(
    anchor: datetime, offset: timedelta, closed: int
) -> None:
    closed_through = None
    for _ in range(closed):
        closed_through = closing.following_period_end(closed_through or anchor, anchor)
    event_time = anchor + offset
    kind = closing.classify(event_time, anchor, closed_through)
    refusal = closing.late_refusal("c", "t", event_time, anchor, closed_through)
    if event_time < anchor:
        assert kind is EventTime.BEFORE_FIRST_PERIOD and isinstance(refusal, BeforeFirstPeriod)
    elif closed_through is not None and event_time < closed_through:
        assert kind is EventTime.CLOSED and isinstance(refusal, PeriodClosed)
        period = closing.billing_period(event_time, anchor)
        assert period.end is not None and period.end <= closed_through  # a whole period, all of it closed
        assert refusal.invoice_id == str(closing.invoice_id_for("c", period.start))
        assert refusal.period_start == closing.rfc3339(period.start)
    else:
        assert kind is EventTime.OPEN and refusal is None


def test_invoice_ids_are_one_per_customer_and_period() -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    same = closing.invoice_id_for("acme", start)
    assert same == closing.invoice_id_for("acme", start)
    assert same != closing.invoice_id_for("acme", start + timedelta(microseconds=1))
    assert same != closing.invoice_id_for("acme2", start)
    # The separator keeps (customer, period) pairs apart whatever the ids hold.
    assert closing.invoice_id_for("a\n2026", start) != closing.invoice_id_for("a", start)
