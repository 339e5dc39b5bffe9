"""The decision of a batch (metering.domain.usage), without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from metering.domain import limits
from metering.domain.catalog import Aggregation, Enforcement, PlanMeter
from metering.domain.errors import (
    BeforeFirstPeriod,
    EventTooOld,
    FieldViolation,
    InvalidArgument,
    MeteringError,
    PeriodClosed,
    TransactionConflict,
)
from metering.domain.notifications import LimitRejected, MeterTerms, ThresholdCrossed
from metering.domain.periods import BillingPeriod, Period, ResetPeriod
from metering.domain.records import NewEvent, StoredEvent, new_event_ids
from metering.domain.usage import (
    BatchPlan,
    BatchReads,
    CounterKey,
    Insert,
    Resolution,
    Written,
    allowance_key_for,
    counters_to_lock,
    decide_batch,
    originals_unlocked,
)

START = datetime(2026, 11, 1, tzinfo=UTC)
PERIOD = Period(START, datetime(2026, 12, 1, tzinfo=UTC))
AT = START + timedelta(days=3)
TERMS = MeterTerms("pro", "tokens", Decimal(80))
PLAN_TERMS = PlanMeter(
    "ai_tokens", "ai_tokens_free", Decimal(100), Decimal(0), ResetPeriod.MONTH, Enforcement.HARD, Decimal(80)
)


def resolution(
    txn: str,
    quantity: str = "1",
    *,
    customer: str = "c1",
    limit: str | None = "100",
    enforcement: Enforcement = Enforcement.HARD,
    refusal: MeteringError | None = None,
    unique_value: str | None = None,
    aggregation: Aggregation = Aggregation.SUM,
) -> Resolution:
    event = NewEvent(customer, txn, "ai_tokens", "ai_tokens_free", None, Decimal(quantity), AT, True, {})
    allowance = limits.Allowance(aggregation, enforcement, None if limit is None else Decimal(limit))
    return Resolution(
        event,
        allowance,
        PERIOD,
        unique_value,
        False,
        TERMS,
        PLAN_TERMS,
        START,
        refusal=refusal,
    )


def reads(
    resolutions: list[Resolution | MeteringError],
    *,
    used: str = "0",
    existing: dict[tuple[str, str], StoredEvent] | None = None,
    granted: str = "0",
    reserved: str = "0",
    seen: set[tuple[CounterKey, str]] | None = None,
) -> BatchReads:
    valid = [r for r in resolutions if isinstance(r, Resolution)]
    counters = {key: limits.CounterState(used=Decimal(used)) for key in counters_to_lock(resolutions)}
    existing = existing or {}
    for key in originals_unlocked(existing, counters):
        counters[key] = limits.CounterState()
    return BatchReads(
        counters=counters,
        existing=existing,
        holdings={allowance_key_for(r, existing): (Decimal(granted), Decimal(reserved)) for r in valid},
        seen_values=seen or set(),
    )


def stored_of(plan_inserts: list[Insert], recorded_at: datetime = AT) -> list[StoredEvent]:
    return [
        StoredEvent(
            i.event_id,
            i.event.customer_id,
            i.event.transaction_id,
            i.event.meter_slug,
            i.event.price_slug,
            i.event.requested_price_slug,
            i.event.quantity,
            i.event.event_time,
            i.key[2],
            recorded_at,
            i.event.properties,
        )
        for i in plan_inserts
    ]


def decide(
    resolutions: list[Resolution | MeteringError],
    batch_reads: BatchReads,
    announced: set[tuple[str, str]] | None = None,
) -> tuple[list[Written | MeteringError], BatchPlan]:
    plan = decide_batch(resolutions, batch_reads, iter(new_event_ids(len(resolutions))), announced or set())
    return plan.answers(stored_of(plan.inserts)), plan


def test_accepts_in_order_and_writes_each_counter_once() -> None:
    batch: list[Resolution | MeteringError] = [resolution("t1", "30"), resolution("t2", "40"), resolution("t3", "50")]
    answers, plan = decide(batch, reads(batch))
    assert [isinstance(a, Written) and a.outcome.event is not None for a in answers] == [True, True, False]
    refused = answers[2]
    assert isinstance(refused, Written) and refused.outcome.decision is not None
    assert refused.outcome.decision.available_before == Decimal(30)
    assert [i.event.transaction_id for i in plan.inserts] == ["t1", "t2"]
    assert plan.counters == [(("c1", "ai_tokens", START), plan.counters[0][1])]
    assert plan.counters[0][1].used == Decimal(70)
    kinds = sorted(type(n.payload).__name__ for n in plan.notifications)
    assert kinds == ["LimitRejected"]  # 70% crosses nothing; the refusal is announced once


def test_thresholds_are_announced_once_per_batch() -> None:
    batch: list[Resolution | MeteringError] = [resolution(f"t{i}", "45") for i in range(3)]
    answers, plan = decide(batch, reads(batch, used="0"))
    assert [isinstance(a, Written) and a.outcome.event is not None for a in answers] == [True, True, False]
    crossed = [n.payload for n in plan.notifications if isinstance(n.payload, ThresholdCrossed)]
    assert [c.threshold_percent for c in crossed] == [Decimal(80)]  # 90% after the second; the third is refused
    assert sum(isinstance(n.payload, LimitRejected) for n in plan.notifications) == 1


def test_an_announced_refusal_is_not_built_again() -> None:
    batch: list[Resolution | MeteringError] = [resolution("t1", "200")]
    _, first = decide(batch, reads(batch))
    [notification] = first.notifications
    _, again = decide(batch, reads(batch), {(notification.customer_id, notification.dedupe_key)})
    assert again.notifications == []


def test_a_repeated_transaction_id_in_the_batch_is_a_duplicate_of_the_first() -> None:
    batch: list[Resolution | MeteringError] = [resolution("t1", "5"), resolution("t1", "5"), resolution("t1", "6")]
    answers, plan = decide(batch, reads(batch))
    first, twin, conflict = answers
    assert isinstance(first, Written) and isinstance(twin, Written)
    assert twin.outcome.duplicate and twin.outcome.event == first.outcome.event
    assert isinstance(conflict, TransactionConflict)
    assert len(plan.inserts) == 1


def test_a_recorded_event_is_answered_as_it_was_even_when_late() -> None:
    late = InvalidArgument([FieldViolation("event_time", "too old")])
    _, recorded = decide([resolution("t1")], reads([resolution("t1")]))
    [original] = stored_of(recorded.inserts)
    batch: list[Resolution | MeteringError] = [resolution("t1", refusal=late), resolution("t2", refusal=late)]
    answers, plan = decide(batch, reads(batch, existing={("c1", "t1"): original}))
    replay, new = answers
    assert isinstance(replay, Written) and replay.outcome.duplicate and replay.outcome.event == original
    assert new is late
    assert plan.inserts == [] and plan.counters == []


def test_errors_of_resolution_pass_through_in_place() -> None:
    unknown = InvalidArgument([FieldViolation("customer_id", "unknown")])
    batch: list[Resolution | MeteringError] = [unknown, resolution("t1")]
    answers, _ = decide(batch, reads(batch))
    assert answers[0] is unknown and isinstance(answers[1], Written)


def test_a_distinct_value_is_recorded_once() -> None:
    batch: list[Resolution | MeteringError] = [
        resolution(f"t{i}", unique_value=v, aggregation=Aggregation.UNIQUE_COUNT) for i, v in enumerate("aab")
    ]
    key = CounterKey("c1", "ai_tokens", START)
    _, plan = decide(batch, reads(batch, seen={(key, "b")}))
    assert [u.value for u in plan.unique_values] == ["a"]
    assert plan.counters[0][1].used == Decimal(1)


@given(
    limit=st.integers(min_value=0, max_value=50),
    used=st.integers(min_value=0, max_value=50),
    reserved=st.integers(min_value=0, max_value=20),
    quantities=st.lists(st.integers(min_value=0, max_value=20), max_size=30),
    soft=st.booleans(),
)
def test_matches_deciding_one_event_at_a_time(
    limit: int, used: int, reserved: int, quantities: list[int], soft: bool
) -> None:
    """The batch decides exactly as limits.decide applied event by event would,
    and a hard limit is never exceeded."""
    enforcement = Enforcement.SOFT if soft else Enforcement.HARD
    batch: list[Resolution | MeteringError] = [
        resolution(f"t{i}", str(q), limit=str(limit), enforcement=enforcement) for i, q in enumerate(quantities)
    ]
    answers, plan = decide(batch, reads(batch, used=str(used), reserved=str(reserved)))
    allowance = limits.Allowance(Aggregation.SUM, enforcement, Decimal(limit), reserved=Decimal(reserved))
    state = limits.CounterState(used=Decimal(used))
    for quantity, answer in zip(quantities, answers, strict=True):
        expected = limits.decide(allowance, state, Decimal(quantity), event_time=AT, event_id=UUID(int=1))
        assert isinstance(answer, Written) and answer.outcome.decision is not None
        assert answer.outcome.decision.accepted == expected.accepted
        assert answer.outcome.reading.state.used == expected.state_after.used
        state = expected.state_after
    accepted = sum(
        Decimal(q) for q, a in zip(quantities, answers, strict=True) if isinstance(a, Written) and a.outcome.event
    )
    if quantities:
        assert plan.counters[0][1].used == used + accepted
    if not soft and accepted:
        assert used + accepted + reserved <= max(limit, used + reserved)
    assert len(plan.inserts) == sum(1 for a in answers if isinstance(a, Written) and a.outcome.event)


@example(limit=Decimal(100), threshold=Decimal(80), offset=Decimal("-0.01"), quantities=[Decimal("0.005")])
@given(
    limit=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(1000), places=2),
    threshold=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(120), places=2),
    offset=st.decimals(min_value=Decimal(-50), max_value=Decimal("0.05"), places=3),
    quantities=st.lists(
        st.one_of(
            st.decimals(min_value=Decimal(0), max_value=Decimal("0.02"), places=3),
            st.decimals(min_value=Decimal(0), max_value=Decimal(300), places=3),
        ),
        max_size=20,
    ),
)
def test_announces_every_threshold_that_deciding_one_event_at_a_time_crosses(
    limit: Decimal, threshold: Decimal, offset: Decimal, quantities: list[Decimal]
) -> None:
    """The batch skips the threshold arithmetic for events far from any
    threshold: it must still announce exactly what limits.thresholds_crossed
    reports event by event, at any limit, threshold and rounding (usage starts
    near the approaching threshold, where rounding decides)."""
    used = max(Decimal(0), (limit * min(threshold, Decimal(100)) / 100).quantize(Decimal("0.001")) + offset)
    terms = MeterTerms("pro", "tokens", threshold)
    batch: list[Resolution | MeteringError] = []
    for i, quantity in enumerate(quantities):
        r = resolution(f"t{i}", str(quantity), limit=str(limit), enforcement=Enforcement.SOFT)
        batch.append(
            Resolution(r.event, r.plan, r.period, None, False, terms, PLAN_TERMS, START)  # with this threshold
        )
    _, plan = decide(batch, reads(batch, used=str(used)))
    allowance = limits.Allowance(Aggregation.SUM, Enforcement.SOFT, limit)
    expected: list[Decimal] = []
    state = used
    for quantity in quantities:
        after = state + quantity
        expected.extend(limits.thresholds_crossed(allowance, state, after, threshold))
        state = after
    announced = [n.payload.threshold_percent for n in plan.notifications if isinstance(n.payload, ThresholdCrossed)]
    assert announced == list(dict.fromkeys(expected))  # once each per batch, in the order crossed


# Every time policy a resolution can carry: older than the backfill window,
# before the customer's first period, in a finalized period.
TIME_REFUSALS: list[MeteringError] = [
    EventTooOld("older than the backfill window of 35 days"),
    BeforeFirstPeriod("t1", AT - timedelta(days=40), START),
    PeriodClosed("t1", period=BillingPeriod(START, PERIOD.end or START), invoice_id="inv"),
]


@pytest.mark.parametrize("late", TIME_REFUSALS, ids=lambda e: type(e).__name__)
def test_a_reused_id_with_another_payload_is_a_conflict_whatever_its_time(late: MeteringError) -> None:
    # The reused id is judged first: a replay with another payload (here the
    # quantity; an earlier event_time alike) is TRANSACTION_ID_CONFLICT, not the
    # refusal of its time, whether its original is recorded or earlier in the batch.
    _, recorded = decide([resolution("t1")], reads([resolution("t1")]))
    [original] = stored_of(recorded.inserts)
    batch: list[Resolution | MeteringError] = [
        resolution("t1", "2", refusal=late),  # t1 was recorded with 1
        resolution("t2", "1"),
        resolution("t2", "2", refusal=late),  # t2 is earlier in this batch with 1
    ]
    answers, plan = decide(batch, reads(batch, existing={("c1", "t1"): original}))
    assert isinstance(answers[0], TransactionConflict) and answers[0].fields == ["quantity"]
    assert answers[0].original_event_id == str(original.event_id)
    assert isinstance(answers[2], TransactionConflict) and answers[2].fields == ["quantity"]
    assert isinstance(answers[1], Written) and answers[1].outcome.event is not None
    assert [i.event.transaction_id for i in plan.inserts] == ["t2"]


def test_a_reused_id_with_an_earlier_event_time_is_a_conflict_not_before_first_period() -> None:
    _, recorded = decide([resolution("t1")], reads([resolution("t1")]))
    [original] = stored_of(recorded.inserts)
    earlier = START - timedelta(days=1)
    replay = resolution("t1", refusal=BeforeFirstPeriod("t1", earlier, START))
    replay.event = NewEvent("c1", "t1", "ai_tokens", "ai_tokens_free", None, Decimal(1), earlier, True, {})
    [answer], plan = decide([replay], reads([replay], existing={("c1", "t1"): original}))
    assert isinstance(answer, TransactionConflict) and answer.fields == ["event_time"]
    assert plan.inserts == []


@pytest.mark.parametrize("late", TIME_REFUSALS, ids=lambda e: type(e).__name__)
def test_an_exact_replay_is_a_duplicate_whatever_its_time_now(late: MeteringError) -> None:
    _, recorded = decide([resolution("t1")], reads([resolution("t1")]))
    [original] = stored_of(recorded.inserts)
    batch: list[Resolution | MeteringError] = [resolution("t1", refusal=late), resolution("t2", refusal=late)]
    answers, plan = decide(batch, reads(batch, existing={("c1", "t1"): original}))
    replay, new = answers
    assert isinstance(replay, Written) and replay.outcome.duplicate and replay.outcome.event == original
    assert new is late  # a new id is what the time policy judges
    assert plan.inserts == [] and plan.counters == []


def test_an_unlimited_meter_accepts_everything_and_announces_nothing() -> None:
    batch: list[Resolution | MeteringError] = [
        resolution(f"t{i}", "1000000", limit=None, enforcement=Enforcement.UNLIMITED) for i in range(3)
    ]
    answers, plan = decide(batch, reads(batch))
    assert all(isinstance(a, Written) and a.outcome.event is not None for a in answers)
    assert plan.notifications == []
    assert plan.counters[0][1].used == Decimal(3_000_000)


def test_wallet_charged_events_burn_in_order_and_a_prepaid_shortfall_is_refused() -> None:
    from metering.domain.catalog import Meter, Price, PricingModel
    from metering.domain.errors import CreditsExhausted
    from metering.domain.periods import BillingPeriod
    from metering.domain.usage import WalletTerms
    from metering.domain.wallets import CreditCategory, CreditGrant, Wallet

    price = Price("ai_tokens_free", "ai_tokens", PricingModel.PER_UNIT, "USD", unit_amount=Decimal("0.10"))
    terms = WalletTerms(
        price,
        Decimal(0),
        "USD",
        True,
        None,
        Meter("ai_tokens", Aggregation.SUM, "token"),
        BillingPeriod(START, PERIOD.end or START),
    )
    batch: list[Resolution | MeteringError] = []
    for txn, quantity in (("a", "3"), ("b", "3"), ("c", "2")):
        r = resolution(txn, quantity, limit=None)
        r.wallet = terms
        batch.append(r)
    credit = CreditGrant("c1", "g", "USD", Decimal("0.5"), CreditCategory.PAID, 0, START, None, (), "", START)
    wallet = Wallet("c1", 1, [credit], {"g": Decimal("0.5")})
    base = reads(batch)
    with_wallet = BatchReads(base.counters, base.existing, base.holdings, base.seen_values, {"c1": wallet}, {})
    answers, plan = decide(batch, with_wallet)
    assert isinstance(answers[0], Written) and isinstance(answers[2], Written)
    assert isinstance(answers[1], CreditsExhausted)  # 0.30 with 0.20 left
    assert [row.burn.amount for row in plan.wallet_writes.burns] == [Decimal("0.30"), Decimal("0.20")]
    assert plan.wallet_writes.remaining == [("c1", "g", Decimal(0))]
    # Without wallet reads (a customer whose first charge is in this batch) the writer starts empty.
    answers, plan = decide(batch, base)
    assert all(isinstance(a, CreditsExhausted) for a in answers)
    assert not plan.wallet_writes
