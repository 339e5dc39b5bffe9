"""Threshold crossings, notification payloads and cursors: pure rules."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from metering.domain.catalog import Aggregation, Enforcement
from metering.domain.limits import Allowance, balance_figures, thresholds_crossed
from metering.domain.notifications import (
    InvoiceFinalized,
    LimitRejected,
    MeterTerms,
    Position,
    dedupe_key,
    limit_rejected_key,
    limit_rejected_notification,
    payload_from_json,
    payload_json,
    thresholds_notifications,
    type_of,
)
from metering.domain.periods import Period

D = Decimal
PERIOD = Period(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
TERMS = MeterTerms("pro", "token", D(80))
quantities = st.decimals(min_value=0, max_value=1000, places=3)
thresholds = st.decimals(min_value="0.01", max_value=100, places=2)


def sum_allowance(limit: str | Decimal | None, granted: str = "0") -> Allowance:
    enforcement = Enforcement.UNLIMITED if limit is None else Enforcement.HARD
    return Allowance(Aggregation.SUM, enforcement, None if limit is None else D(limit), granted=D(granted))


def test_crossings_of_the_approaching_threshold_and_of_100_percent() -> None:
    allowance = sum_allowance("100")
    assert thresholds_crossed(allowance, D(0), D(79), D(80)) == ()
    assert thresholds_crossed(allowance, D(79), D(80), D(80)) == (D(80),)
    assert thresholds_crossed(allowance, D(80), D(99), D(80)) == ()
    assert thresholds_crossed(allowance, D(50), D(100), D(80)) == (D(80), D(100))
    assert thresholds_crossed(allowance, D(100), D(150), D(80)) == ()  # past 100% already
    assert thresholds_crossed(allowance, D(90), D(70), D(80)) == ()  # a void goes down
    assert thresholds_crossed(sum_allowance(None), D(0), D(10**9), D(80)) == ()  # unlimited
    assert thresholds_crossed(sum_allowance("100", granted="100"), D(0), D(160), D(80)) == (D(80),)
    # A threshold of 100 is one threshold, announced once.
    assert thresholds_crossed(allowance, D(0), D(100), D(100)) == (D(100),)


@given(
    limit=st.decimals(min_value="0.001", max_value=1000, places=3),
    threshold=thresholds,
    steps=st.lists(quantities, max_size=30),
)
def test_rising_usage_crosses_each_threshold_once_when_figures_say_so(
    limit: Decimal, threshold: Decimal, steps: list[Decimal]
) -> None:
    """Along any rising usage, each threshold is crossed at most once, and it
    has been crossed exactly when CheckBalance's own figures say usage is at
    or past it (one definition of percent used)."""
    allowance = sum_allowance(limit)
    used, crossed = D(0), list[Decimal]()
    for step in steps:
        crossed += thresholds_crossed(allowance, used, used + step, threshold)
        used += step
    assert len(crossed) == len(set(crossed))
    figures = balance_figures(allowance, used, threshold)
    assert (threshold in crossed) == figures.approaching_limit
    assert (D(100) in crossed) == (figures.percent_used is not None and figures.percent_used >= 100)


def test_notifications_carry_the_figures_and_a_dedupe_key_per_threshold() -> None:
    made = thresholds_notifications("c1", "tokens", TERMS, PERIOD, sum_allowance("100", "20"), D(0), D(120))
    assert [n.payload.threshold_percent for n in made] == [D(80), D(100)]  # type: ignore[union-attr]
    first = made[0].payload
    assert (first.used, first.allowance, first.percent_used) == (D(120), D(120), D("100.00"))  # type: ignore[union-attr]
    keys = {n.dedupe_key for n in made}
    assert keys == {
        "usage.threshold_crossed/tokens/2026-01-01T00:00:00+00:00/80",
        "usage.threshold_crossed/tokens/2026-01-01T00:00:00+00:00/100",
    }
    # The same crossing made again (another batch, another replica) has the same key.
    again = thresholds_notifications("c1", "tokens", TERMS, PERIOD, sum_allowance("100", "20"), D(90), D(100))
    assert {n.dedupe_key for n in again} <= keys
    assert made[0].notification_id != again[0].notification_id


def test_a_limit_refusal_is_keyed_by_meter_and_period_only() -> None:
    one = limit_rejected_notification(
        "c1", "tokens", TERMS, PERIOD, sum_allowance("100"), available=D(3), requested=D(5), transaction_id="t1"
    )
    two = limit_rejected_notification(
        "c1", "tokens", TERMS, PERIOD, sum_allowance("100"), available=D(0), requested=D(1), transaction_id="t2"
    )
    assert one.dedupe_key == two.dedupe_key == "usage.limit_rejected/tokens/2026-01-01T00:00:00+00:00"


def test_payloads_round_trip_through_their_stored_json() -> None:
    made = thresholds_notifications("c1", "tokens", TERMS, PERIOD, sum_allowance("100"), D(0), D("80.5"))
    refused = limit_rejected_notification(
        "c1",
        "tokens",
        TERMS,
        Period(PERIOD.start, None),
        sum_allowance("100"),
        available=None,
        requested=D("0.25"),
        transaction_id="t1",
    )
    invoice = InvoiceFinalized("inv_1", 1, PERIOD, D("12.30"), "USD")
    for payload in [made[0].payload, refused.payload, invoice]:
        assert payload_from_json(type_of(payload), payload_json(payload)) == payload
    assert dedupe_key(invoice) == "invoice.finalized/inv_1"


def test_positions_keep_outbox_order() -> None:
    assert Position(7, 1) < Position(7, 2) < Position(8, 0)


def test_written_keys_remember_committed_notifications_up_to_their_capacity() -> None:
    from metering.ledger.writer import WrittenKeys

    written = WrittenKeys(capacity=3)
    written.add([("c1", "usage.limit_rejected/tokens/2026-12-01T00:00:00+00:00"), ("c2", "k")])
    assert ("c1", "usage.limit_rejected/tokens/2026-12-01T00:00:00+00:00") in written
    assert ("c3", "k") not in written
    written.add([("c3", "k"), ("c4", "k")])  # past the capacity: it starts over
    assert ("c1", "usage.limit_rejected/tokens/2026-12-01T00:00:00+00:00") not in written
    assert ("c3", "k") in written and ("c4", "k") in written


def test_the_limit_rejected_key_is_the_payloads_dedupe_key() -> None:
    payload = LimitRejected("tokens", "p", "token", PERIOD, D("10"), D("0"), D("1"), "t1")
    assert limit_rejected_key("tokens", PERIOD) == dedupe_key(payload)
