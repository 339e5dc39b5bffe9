"""Edges of the pure rules that the feature tests do not reach on their own:
an unlimited accumulating meter, a gauge's fit, grants drawn down past the
limit, a reconfigured caller gate, a reservation's expiry, a grant's window,
the event ids, each payload difference, and the bounded format cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from metering.domain import decimals
from metering.domain.catalog import Aggregation, Enforcement
from metering.domain.limits import (
    Allowance,
    CounterState,
    available_quantity,
    decide,
    grants_remaining,
    percent_used,
    requested_fits,
)
from metering.domain.rate_limits import CallerGate, CallerLimits, LimitKind, RateLimit
from metering.domain.records import (
    COMMITTED,
    EXPIRED,
    HELD,
    GrantRecord,
    NewEvent,
    ReservationRecord,
    new_event_id,
    payload_differences,
)

D = Decimal
T0 = datetime(2026, 11, 3, tzinfo=UTC)


# -- limits ---------------------------------------------------------------------


def test_an_unlimited_sum_accepts_any_quantity_with_no_overage() -> None:
    allowance = Allowance(Aggregation.SUM, Enforcement.UNLIMITED, None)
    decision = decide(
        allowance, CounterState(used=D(10**12), event_count=5), D(10**12), event_time=T0, event_id=UUID(int=1)
    )
    assert decision.accepted
    assert decision.state_after.used == D(2 * 10**12) and decision.state_after.event_count == 6
    assert decision.overage == 0 and decision.available_before is None


def test_a_gauge_fits_when_the_value_is_within_the_allowance_whatever_is_held() -> None:
    gauge = Allowance(Aggregation.MAX, Enforcement.HARD, D(10), granted=D(2), reserved=D(50))
    assert requested_fits(gauge, D(11), D(12))  # the value itself, not added to what is used or held
    assert not requested_fits(gauge, D(0), D("12.01"))


def test_available_is_the_headroom_floored_at_zero() -> None:
    accumulating = Allowance(Aggregation.SUM, Enforcement.HARD, D(10), granted=D(2), reserved=D(3))
    assert available_quantity(accumulating, D(4)) == D(5)  # 10 + 2 - 4 - 3
    assert available_quantity(accumulating, D(40)) == 0
    gauge = Allowance(Aggregation.LATEST, Enforcement.HARD, D(10), granted=D(2), reserved=D(3))
    assert available_quantity(gauge, D(4)) == D(8)  # holds do not apply to gauges
    assert available_quantity(Allowance(Aggregation.SUM, Enforcement.UNLIMITED, None), D(4)) is None


def test_a_zero_allowance_is_full_from_the_start() -> None:
    # Nothing can ever be used: 100% (not a division by zero), and its balance says so.
    empty = Allowance(Aggregation.SUM, Enforcement.HARD, D(0))
    assert percent_used(empty, D(0)) == D(100)
    assert percent_used(Allowance(Aggregation.SUM, Enforcement.HARD, D(0), granted=D(4)), D(1)) == D(25)


def test_grants_of_an_unlimited_meter_are_never_drawn() -> None:
    unlimited = Allowance(Aggregation.SUM, Enforcement.UNLIMITED, None)
    assert grants_remaining(unlimited, D(500), [("g1", D(10)), ("g2", D(5))]) == {"g1": D(10), "g2": D(5)}


def test_usage_past_the_limit_draws_on_grants_in_order() -> None:
    allowance = Allowance(Aggregation.SUM, Enforcement.HARD, D(100), granted=D(15), reserved=D(3))
    # 110 used + 3 held: 13 past the limit, all from g1 (soonest-expiring first).
    assert grants_remaining(allowance, D(110), [("g1", D(10)), ("g2", D(5))]) == {"g1": D(0), "g2": D(2)}
    gauge = Allowance(Aggregation.MAX, Enforcement.HARD, D(100), granted=D(15), reserved=D(3))
    assert grants_remaining(gauge, D(110), [("g1", D(10)), ("g2", D(5))]) == {
        "g1": D(0),
        "g2": D(5),
    }  # holds: not for gauges


quantities = st.decimals(min_value=0, max_value=10_000, places=2)


@given(
    limit=quantities,
    used=quantities,
    reserved=quantities,
    grants=st.lists(quantities, max_size=5),
    aggregation=st.sampled_from(list(Aggregation)),
)
def test_grants_give_exactly_what_usage_past_the_limit_needs(
    limit: Decimal, used: Decimal, reserved: Decimal, grants: list[Decimal], aggregation: Aggregation
) -> None:
    allowance = Allowance(aggregation, Enforcement.HARD, limit, granted=sum(grants, D(0)), reserved=reserved)
    named = [(f"g{i}", quantity) for i, quantity in enumerate(grants)]
    remaining = grants_remaining(allowance, used, named)
    assert list(remaining) == [key for key, _ in named]
    drawn = [quantity - remaining[key] for key, quantity in named]
    assert all(0 <= d <= quantity for d, (_, quantity) in zip(drawn, named, strict=True))
    held = reserved if allowance.accumulates else D(0)
    assert sum(drawn, D(0)) == min(max(D(0), used + held - limit), allowance.granted)
    # Drawn in order: a grant is touched only once every earlier one is used up.
    for earlier, later in zip(range(len(named)), range(1, len(named)), strict=False):
        assert drawn[later] == 0 or remaining[named[earlier][0]] == 0


# -- rate limits ----------------------------------------------------------------


def test_a_gate_follows_its_callers_new_limits() -> None:
    gate = CallerGate.open(CallerLimits(), now=0.0)
    assert gate.bucket is None
    gate.reconfigure(CallerLimits(rate=RateLimit(per_second=1, burst=1)), now=0.0)  # a rate is added
    assert gate.enter(0.0) is None
    refusal = gate.enter(0.0)
    assert refusal is not None and refusal.kind is LimitKind.RATE
    gate.reconfigure(CallerLimits(rate=RateLimit(per_second=10, burst=5)), now=0.0)  # changed: still spent
    assert gate.enter(0.0) is not None
    gate.reconfigure(CallerLimits(), now=0.0)  # removed
    assert gate.bucket is None and gate.enter(0.0) is None
    assert gate.in_flight == 2


# -- records --------------------------------------------------------------------


def test_a_held_reservation_is_expired_from_its_expiry_on() -> None:
    held = ReservationRecord("r1", "c1", "m", T0, D(5), HELD, T0 + timedelta(minutes=5), T0, None, None, None)
    assert held.status_at(T0) == HELD
    assert held.status_at(T0 + timedelta(minutes=5)) == EXPIRED
    committed = ReservationRecord(
        "r2", "c1", "m", T0, D(5), COMMITTED, T0 + timedelta(minutes=5), T0, T0, D(4), UUID(int=3)
    )
    assert committed.status_at(T0 + timedelta(days=1)) == COMMITTED


def test_a_grant_is_active_from_its_start_until_its_expiry() -> None:
    grant = GrantRecord("g1", "c1", "m", D(10), T0, T0 + timedelta(days=30), "promo", T0)
    assert not grant.active_at(T0 - timedelta(microseconds=1))
    assert grant.active_at(T0) and grant.active_at(T0 + timedelta(days=29))
    assert not grant.active_at(T0 + timedelta(days=30))
    forever = GrantRecord("g2", "c1", "m", D(10), T0, None, "promo", T0)
    assert forever.active_at(T0 + timedelta(days=10_000))


def test_event_ids_are_version_7_and_time_ordered() -> None:
    first, second = new_event_id(), new_event_id()
    assert first.version == 7 and first.variant == "specified in RFC 4122"
    assert first != second
    # The top 48 bits are milliseconds since the epoch: ids made later never sort earlier.
    assert first.int >> 80 <= second.int >> 80


def event(**changes: object) -> NewEvent:
    fields: dict[str, object] = {
        "customer_id": "c1",
        "transaction_id": "t1",
        "meter_slug": "tokens",
        "price_slug": "tokens_no_charge",
        "requested_price_slug": None,
        "quantity": D(1),
        "event_time": T0,
        "event_time_given": True,
        "properties": {},
    }
    fields.update(changes)
    return NewEvent(**fields)  # type: ignore[arg-type]


def test_each_field_a_replay_changes_is_named() -> None:
    original = event()
    assert payload_differences(original, event()) == []
    changed = event(
        meter_slug="calls",
        requested_price_slug="calls_pro",
        quantity=D(2),
        event_time=T0 + timedelta(seconds=1),
        properties={"region": "eu"},
    )
    assert payload_differences(original, changed) == [
        "meter_slug",
        "price_slug",
        "quantity",
        "event_time",
        "properties",
    ]
    # A replay that gives no time matches whatever time the original had.
    assert payload_differences(original, event(event_time=T0 + timedelta(hours=1), event_time_given=False)) == []


# -- decimals -------------------------------------------------------------------


def test_the_format_cache_stays_bounded_and_correct_past_its_size() -> None:
    kept = decimals._FORMATTED_KEPT
    for n in range(1, kept + 10):  # distinct values, more than the cache keeps
        text = decimals.format_decimal(D(n) / 1000)
        assert D(text) == D(n) / 1000 and text == format(D(n) / 1000, "f").rstrip("0").rstrip(".")
        assert len(decimals._FORMATTED) <= kept
