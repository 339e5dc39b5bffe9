"""The pure decisions of closing periods (metering.domain.closing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from metering.domain import closing
from metering.domain.closing import EventTime
from metering.domain.errors import BeforeFirstPeriod, PeriodClosed
from metering.domain.periods import MIN_TIME, ResetPeriod, period_containing

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


TOLERANCES = st.sampled_from([timedelta(0), timedelta(seconds=1), timedelta(minutes=5), timedelta(days=1)])


@given(
    anchor=instants,
    offset=st.one_of(
        st.timedeltas(timedelta(days=-400), timedelta(days=400)),
        st.timedeltas(timedelta(days=-2), timedelta(0)),  # around the tolerance before the anchor
    ),
    closed=st.integers(0, 6),
    tolerance=TOLERANCES,
)
def test_an_event_time_is_before_the_first_period_closed_or_open(
    anchor: datetime, offset: timedelta, closed: int, tolerance: timedelta
) -> None:
    closed_through = None
    for _ in range(closed):
        closed_through = closing.following_period_end(closed_through or anchor, anchor)
    event_time = anchor + offset
    kind = closing.classify(event_time, anchor, closed_through, tolerance)
    refusal = closing.late_refusal("c", "t", event_time, anchor, closed_through, tolerance)
    counted = closing.counting_time(event_time, anchor)
    assert counted == max(event_time, anchor)
    if event_time < anchor - tolerance:
        assert kind is EventTime.BEFORE_FIRST_PERIOD and isinstance(refusal, BeforeFirstPeriod)
    elif closed_through is not None and counted < closed_through:
        # Within the tolerance before the anchor, the first period's closing refuses it.
        assert kind is EventTime.CLOSED and isinstance(refusal, PeriodClosed)
        assert closing.is_closed(event_time, anchor, closed_through)
        period = closing.billing_period(counted, anchor)
        assert period.end is not None and period.end <= closed_through  # a whole period, all of it closed
        assert refusal.invoice_id == str(closing.invoice_id_for("c", period.start))
        assert refusal.period_start == closing.rfc3339(period.start)
    else:
        assert kind is EventTime.OPEN and refusal is None
        assert not closing.is_closed(event_time, anchor, closed_through)


def test_an_event_within_the_tolerance_before_the_anchor_counts_in_the_first_period() -> None:
    anchor = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
    tolerance = timedelta(minutes=5)
    early = anchor - timedelta(seconds=60)
    assert closing.classify(early, anchor, None, tolerance) is EventTime.OPEN
    assert closing.late_refusal("c", "t", early, anchor, None, tolerance) is None
    assert closing.counting_time(early, anchor) == anchor
    assert closing.counting_time(anchor + timedelta(seconds=1), anchor) == anchor + timedelta(seconds=1)
    # Beyond the tolerance (and with none), before the first period.
    assert closing.classify(anchor - tolerance - timedelta(microseconds=1), anchor, None, tolerance) is (
        EventTime.BEFORE_FIRST_PERIOD
    )
    assert closing.classify(anchor - tolerance, anchor, None, tolerance) is EventTime.OPEN
    assert isinstance(closing.late_refusal("c", "t", early, anchor, None, timedelta(0)), BeforeFirstPeriod)
    # Once the first period is closed, it refuses the early event with the first invoice.
    first_end = closing.first_period_end(anchor)
    refusal = closing.late_refusal("c", "t", early, anchor, first_end, tolerance)
    assert isinstance(refusal, PeriodClosed)
    assert refusal.invoice_id == str(closing.invoice_id_for("c", anchor))


def test_the_first_periods_bill_adds_up_the_events_before_its_anchor() -> None:
    anchor = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
    first = closing.billing_period(anchor, anchor)
    assert closing.usage_range(first, anchor) == (MIN_TIME, first.end)
    second = closing.billing_period(first.end, anchor)
    assert closing.usage_range(second, anchor) == (second.start, second.end)


def test_invoice_ids_are_one_per_customer_and_period() -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    same = closing.invoice_id_for("acme", start)
    assert same == closing.invoice_id_for("acme", start)
    assert same != closing.invoice_id_for("acme", start + timedelta(microseconds=1))
    assert same != closing.invoice_id_for("acme2", start)
    # The separator keeps (customer, period) pairs apart whatever the ids hold.
    assert closing.invoice_id_for("a\n2026", start) != closing.invoice_id_for("a", start)
