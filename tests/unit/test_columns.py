"""The common case of a batch's decision as columns (metering.domain.columns), without a database.

The property: whenever decide_common answers, decide_batch gives the same
plan and answers for the same input (same inserts, counters, balances, nothing
announced). decide_common may decline anything; it may never decide otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from metering.domain import limits
from metering.domain.catalog import Aggregation, Enforcement, Meter, PlanMeter, Price, PricingModel
from metering.domain.columns import (
    BalanceColumns,
    CommonPlan,
    Recorded,
    balance_columns,
    decide_common,
    preinsertable,
    recorded,
)
from metering.domain.errors import EventTooOld, MeteringError, NotFound
from metering.domain.notifications import MeterTerms
from metering.domain.periods import BillingPeriod, Period, ResetPeriod
from metering.domain.records import NewEvent, StoredEvent, new_event_ids
from metering.domain.usage import (
    BatchReads,
    CounterKey,
    Resolution,
    WalletTerms,
    Written,
    allowance_key_for,
    counters_to_lock,
    decide_batch,
    originals_unlocked,
)

START = datetime(2026, 11, 1, tzinfo=UTC)
PERIOD = Period(START, datetime(2026, 12, 1, tzinfo=UTC))
AT = START + timedelta(days=3)
RECORDED_AT = AT + timedelta(seconds=1)


@dataclass(frozen=True)
class MeterSetup:
    """One meter's terms, shared by every event of it (as a TermsBook shares them)."""

    slug: str
    plan: limits.Allowance
    terms: MeterTerms
    plan_terms: PlanMeter


def setup(
    slug: str, aggregation: Aggregation, limit: str | None, enforcement: Enforcement, threshold: int
) -> MeterSetup:
    plan_terms = PlanMeter(
        slug,
        f"{slug}_no_charge",
        None if limit is None else Decimal(limit),
        Decimal(0),
        ResetPeriod.MONTH,
        enforcement,
        Decimal(threshold),
    )
    return MeterSetup(
        slug,
        limits.Allowance(aggregation, enforcement, plan_terms.limit),
        MeterTerms("pro", "unit", Decimal(threshold)),
        plan_terms,
    )


def resolution(
    meter: MeterSetup,
    txn: str,
    quantity: Decimal,
    *,
    customer: str = "c1",
    at: datetime = AT,
    refusal: MeteringError | None = None,
    unique_value: str | None = None,
    properties: dict[str, str] | None = None,
) -> Resolution:
    event = NewEvent(customer, txn, meter.slug, f"{meter.slug}_no_charge", None, quantity, at, True, properties or {})
    return Resolution(
        event,
        meter.plan,
        PERIOD,
        unique_value,
        False,
        meter.terms,
        meter.plan_terms,
        START,
        dimensions=dict(properties or {}),
        refusal=refusal,
    )


def reads_for(
    resolutions: list[Resolution | MeteringError],
    used: dict[CounterKey, Decimal],
    holdings: dict[tuple[str, str, datetime, datetime], tuple[Decimal, Decimal]],
    existing: dict[tuple[str, str], StoredEvent],
    seen: set[tuple[CounterKey, str]],
) -> BatchReads:
    valid = [r for r in resolutions if isinstance(r, Resolution)]
    counters = {
        key: limits.CounterState(used=used.get(key, Decimal(0)), event_count=3 if used.get(key) else 0)
        for key in counters_to_lock(resolutions)
    }
    for key in originals_unlocked(existing, counters):
        counters[key] = limits.CounterState()
    return BatchReads(
        counters=counters,
        existing=existing,
        holdings={
            allowance_key_for(r, existing): holdings.get(allowance_key_for(r, existing), (Decimal(0), Decimal(0)))
            for r in valid
        },
        seen_values=seen,
    )


def stored(resolution: Resolution, event_id_text: str = "0190a000-0000-7000-8000-000000000001") -> StoredEvent:
    event = resolution.event
    return StoredEvent(
        UUID(event_id_text),
        event.customer_id,
        event.transaction_id,
        event.meter_slug,
        event.price_slug,
        event.requested_price_slug,
        event.quantity,
        event.event_time,
        START,
        RECORDED_AT,
        event.properties,
    )


def assert_same_as_decide_batch(resolutions: list[Resolution | MeteringError], reads: BatchReads) -> CommonPlan | None:
    """decide_common's answer, checked against decide_batch's whenever it gives one."""
    ids = new_event_ids(len(resolutions))
    common = decide_common(resolutions, reads, ids)
    if common is None:
        return None
    plan = decide_batch(resolutions, reads, iter(ids), set())
    assert plan.notifications == []
    assert plan.unique_values == []
    assert not plan.wallet_writes
    assert len(plan.inserts) == len(resolutions)
    valid = [r for r in resolutions if isinstance(r, Resolution)]
    assert len(valid) == len(resolutions)
    assert [i.event_id for i in plan.inserts] == list(common.event_ids)
    assert [i.event for i in plan.inserts] == [r.event for r in valid]
    assert [i.key for i in plan.inserts] == [r.counter_key for r in valid]
    assert [i.dimensions for i in plan.inserts] == [r.dimensions for r in valid]
    assert all(i.unique_value is None for i in plan.inserts)
    assert plan.counters == common.counters
    stored_events = [
        StoredEvent(
            i.event_id,
            i.event.customer_id,
            i.event.transaction_id,
            i.event.meter_slug,
            i.event.price_slug,
            i.event.requested_price_slug,
            i.event.quantity,
            i.event.event_time,
            i.key.period_start,
            RECORDED_AT,
            i.event.properties,
        )
        for i in plan.inserts
    ]
    answers = plan.answers(stored_events)
    events = recorded(common, valid, [RECORDED_AT] * len(valid), 0, len(valid))
    balances = balance_columns(events)
    assert len(events) == len(answers)
    for index, (answer, resolution) in enumerate(zip(answers, valid, strict=True)):
        assert isinstance(answer, Written)
        outcome = answer.outcome
        assert outcome.event is not None and not outcome.duplicate
        assert outcome.event.event_id == events.event_ids[index]
        assert outcome.event.recorded_at == events.recorded_at[index]
        assert outcome.decision is not None and outcome.decision.accepted
        assert outcome.decision.overage == 0
        reading = outcome.reading
        allowance = events.allowances[events.allowance_of[index]]
        assert reading.allowance == allowance
        assert (reading.granted, reading.reserved) == (allowance.granted, allowance.reserved)
        assert reading.state.used == events.used[index]
        threshold = resolution.plan_terms.approaching_threshold
        assert events.thresholds[events.allowance_of[index]] == threshold
        assert reading.allowance is not None
        expected = limits.balance_figures(reading.allowance, reading.state.used, threshold)
        assert figures(balances, events.used[index], allowance, index) == expected
    return common


def figures(columns: BalanceColumns, used: Decimal, allowance: limits.Allowance, index: int) -> limits.BalanceFigures:
    return limits.BalanceFigures(
        used=used,
        limit=allowance.limit,
        granted=allowance.granted,
        reserved=allowance.reserved,
        available=columns.available[index],
        percent_used=columns.percent_used[index],
        approaching_limit=columns.approaching_limit[index],
        limit_reached=columns.limit_reached[index],
    )


quantities = st.one_of(
    st.integers(0, 60).map(Decimal),
    st.decimals(min_value=0, max_value=60, places=2, allow_nan=False, allow_infinity=False),
)
meter_setups = st.tuples(
    st.sampled_from([None, "0", "50", "100", "1000", "1000000"]),
    st.sampled_from([Enforcement.HARD, Enforcement.SOFT]),
    st.sampled_from([50, 80, 100, 150]),
)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[Resolution | MeteringError], BatchReads]:
    meters = []
    for slug, aggregation in (
        ("tokens", Aggregation.SUM),
        ("calls", Aggregation.COUNT),
        ("seats", Aggregation.UNIQUE_COUNT),
        ("disk", Aggregation.MAX),
    ):
        limit, enforcement, threshold = draw(meter_setups)
        meters.append(setup(slug, aggregation, limit, enforcement, threshold))
    # Mostly the common meters, so that the property is exercised, not only declined.
    weights = draw(st.sampled_from([[0, 1], [0, 1, 2, 3], [0]]))
    resolutions: list[Resolution | MeteringError] = []
    for _ in range(draw(st.integers(0, 12))):
        meter = meters[draw(st.sampled_from(weights))]
        quantity = (
            Decimal(1) if meter.plan.aggregation in (Aggregation.COUNT, Aggregation.UNIQUE_COUNT) else draw(quantities)
        )
        kind = draw(st.sampled_from(["plain"] * 8 + ["refused", "error", "properties"]))
        if kind == "error":
            resolutions.append(NotFound("customer", "c9"))
            continue
        resolutions.append(
            resolution(
                meter,
                draw(st.sampled_from([f"t{i}" for i in range(40)])),
                quantity,
                customer=draw(st.sampled_from(["c1", "c2"])),
                at=draw(st.sampled_from([AT, AT + timedelta(hours=1)])),
                refusal=EventTooOld("older than the backfill window") if kind == "refused" else None,
                unique_value=draw(st.sampled_from(["a", "b"]))
                if meter.plan.aggregation is Aggregation.UNIQUE_COUNT
                else None,
                properties={"model": "m1"} if kind == "properties" else None,
            )
        )
    valid = [r for r in resolutions if isinstance(r, Resolution)]
    used = {
        r.counter_key: draw(st.sampled_from([Decimal(0), Decimal(10), Decimal(49), Decimal(79), Decimal(120)]))
        for r in valid
    }
    holdings = {
        r.allowance_key: (
            draw(st.sampled_from([Decimal(0), Decimal(5)])),
            draw(st.sampled_from([Decimal(0), Decimal(7)])),
        )
        for r in valid
    }
    existing: dict[tuple[str, str], StoredEvent] = {}
    if valid and draw(st.integers(0, 9)) == 0:
        first = valid[0]
        existing[(first.event.customer_id, first.event.transaction_id)] = stored(first)
    return resolutions, reads_for(resolutions, used, holdings, existing, set())


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_whenever_the_common_case_answers_decide_batch_answers_the_same(
    batch: tuple[list[Resolution | MeteringError], BatchReads],
) -> None:
    resolutions, reads = batch
    common = assert_same_as_decide_batch(resolutions, reads)
    event("decided as columns" if common is not None else "left to decide_batch")
    # The writer inserts a batch's events before its counter locks only when
    # preinsertable says so: it never misses a batch the common case decides.
    if common is not None and resolutions:  # a writer's batch is never empty
        assert preinsertable(resolutions)


LIMITED = setup("tokens", Aggregation.SUM, "1000000", Enforcement.HARD, 80)
UNLIMITED = setup("other_tokens", Aggregation.SUM, None, Enforcement.HARD, 80)
COUNTED = setup("calls", Aggregation.COUNT, "100", Enforcement.HARD, 80)


def plain_reads(resolutions: list[Resolution | MeteringError], used: str = "0", reserved: str = "0") -> BatchReads:
    valid = [r for r in resolutions if isinstance(r, Resolution)]
    return reads_for(
        resolutions,
        {r.counter_key: Decimal(used) for r in valid},
        {r.allowance_key: (Decimal(0), Decimal(reserved)) for r in valid},
        {},
        set(),
    )


def test_a_batch_far_from_its_limits_is_decided_as_columns() -> None:
    batch: list[Resolution | MeteringError] = [
        resolution(LIMITED, f"t{i}", Decimal(i), customer=f"c{i % 3}") for i in range(30)
    ]
    batch += [resolution(UNLIMITED, "u1", Decimal("0.5"), customer="c1"), resolution(COUNTED, "n1", Decimal(1))]
    common = assert_same_as_decide_batch(batch, plain_reads(batch, used="10"))
    assert common is not None
    assert [key.customer_id for key, _ in common.counters] == ["c0", "c1", "c1", "c1", "c2"]


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=30), st.sampled_from(["0", "3", "997"]))
@example([1] * 5, "0")
@example([3000, 3000], "0")
def test_balances_whose_percentage_changes_within_the_batch(quantities: list[int], reserved: str) -> None:
    limit = setup("tokens", Aggregation.SUM, "100000", Enforcement.HARD, 80)
    batch: list[Resolution | MeteringError] = [resolution(limit, f"t{i}", Decimal(q)) for i, q in enumerate(quantities)]
    assert assert_same_as_decide_batch(batch, plain_reads(batch, reserved=reserved)) is not None


def test_what_is_not_the_common_case_is_left_to_decide_batch() -> None:
    wallet = WalletTerms(
        price=Price("tokens_usd", "tokens", PricingModel.PER_UNIT, "USD", Decimal("0.01")),
        included=Decimal(0),
        currency="USD",
        prepaid=False,
        low_threshold=None,
        meter=Meter("tokens", Aggregation.SUM, "unit"),
        billing_period=BillingPeriod(START, datetime(2026, 12, 1, tzinfo=UTC)),
    )
    one = resolution(LIMITED, "t1", Decimal(1))
    near = setup("tokens", Aggregation.SUM, "100", Enforcement.SOFT, 80)
    gauge = setup("disk", Aggregation.MAX, None, Enforcement.HARD, 80)
    declined: list[tuple[str, list[Resolution | MeteringError], str]] = [
        ("a repeated transaction id", [one, resolution(LIMITED, "t1", Decimal(1))], "0"),
        ("a refusal it carries", [replace(one, refusal=EventTooOld("old"))], "0"),
        ("an error", [one, NotFound("customer", "x")], "0"),
        ("a wallet", [replace(one, wallet=wallet)], "0"),
        ("a distinct value", [replace(one, unique_value="a")], "0"),
        ("a gauge", [resolution(gauge, "t1", Decimal(1))], "0"),
        ("a threshold the batch reaches", [resolution(near, "t1", Decimal(80))], "0"),
        ("holds that leave no room", [resolution(near, "t1", Decimal(1))], "100"),
    ]
    for name, batch, reserved in declined:
        reads = plain_reads(batch, reserved=reserved)
        assert decide_common(batch, reads, new_event_ids(len(batch))) is None, name
        # What no read can change is known before the counter locks: such a
        # batch's events are never inserted early (only a near limit or
        # threshold is found after them, and their early rows deleted).
        assert preinsertable(batch) == name.startswith(("a threshold", "holds")), name
    assert not preinsertable([])
    replay = plain_reads([one])
    replay = replace(replay, existing={("c1", "t1"): stored(one)})
    assert decide_common([one], replay, new_event_ids(1)) is None
    # Just below the threshold is still the common case (79.99% rounds below 80).
    below: list[Resolution | MeteringError] = [resolution(near, "t1", Decimal("78.98"))]
    assert assert_same_as_decide_batch(below, plain_reads(below)) is not None


def test_two_catalogs_terms_for_one_allowance_and_a_negative_quantity_are_left_to_decide_batch() -> None:
    reloaded = setup("tokens", Aggregation.SUM, "1000000", Enforcement.HARD, 80)  # equal terms, other objects
    mixed: list[Resolution | MeteringError] = [
        resolution(LIMITED, "t1", Decimal(1)),
        resolution(reloaded, "t2", Decimal(1)),
    ]
    assert decide_common(mixed, plain_reads(mixed), new_event_ids(2)) is None
    negative: list[Resolution | MeteringError] = [resolution(LIMITED, "t1", Decimal(-1))]
    assert decide_common(negative, plain_reads(negative), new_event_ids(1)) is None


@given(st.lists(st.integers(0, 300_000), min_size=1, max_size=12), st.sampled_from(["0", "100000", "250000"]))
def test_balance_columns_are_balance_figures_in_any_order(used: list[int], limit: str) -> None:
    """Each event's figures are limits.balance_figures of its usage, whatever
    the order of the usages (the percentage is computed once only when the
    lowest and highest round alike)."""
    allowance = limits.Allowance(Aggregation.SUM, Enforcement.HARD, Decimal(limit), Decimal(3), Decimal(2))
    unlimited = limits.Allowance(Aggregation.SUM, Enforcement.HARD, None)
    one = resolution(LIMITED, "t1", Decimal(1))
    events = Recorded(
        resolutions=[one] * len(used),
        event_ids=new_event_ids(len(used)),
        recorded_at=[RECORDED_AT] * len(used),
        used=[Decimal(u) for u in used],
        allowance_of=[i % 2 for i in range(len(used))],
        allowances=[allowance, unlimited],
        thresholds=[Decimal(80), Decimal(80)],
    )
    columns = balance_columns(events)
    for index, value in enumerate(events.used):
        chosen = events.allowances[events.allowance_of[index]]
        assert figures(columns, value, chosen, index) == limits.balance_figures(chosen, value, Decimal(80))
