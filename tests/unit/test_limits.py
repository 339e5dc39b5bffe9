from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.domain.catalog import Aggregation, Enforcement
from metering.domain.limits import Allowance, CounterState, balance_figures, decide, requested_fits

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ID1, ID2 = UUID(int=1), UUID(int=2)
D = Decimal


def hard(aggregation: Aggregation, limit: str | None, **kw: Decimal) -> Allowance:
    enforcement = Enforcement.UNLIMITED if limit is None else Enforcement.HARD
    return Allowance(aggregation, enforcement, None if limit is None else D(limit), **kw)


def test_sum_accepts_up_to_the_limit_exactly() -> None:
    allowance = hard(Aggregation.SUM, "10")
    state = CounterState(used=D(7), event_count=3)
    fits = decide(allowance, state, D(3), event_time=T0, event_id=ID1)
    assert fits.accepted and fits.state_after.used == 10 and fits.overage == 0
    over = decide(allowance, state, D("3.000000001"), event_time=T0, event_id=ID1)
    assert not over.accepted
    assert over.state_after == state
    assert over.available_before == 3


def test_reservations_and_grants_shape_the_allowance() -> None:
    allowance = hard(Aggregation.SUM, "10", granted=D(5), reserved=D(4))
    state = CounterState(used=D(8), event_count=1)
    assert decide(allowance, state, D(3), event_time=T0, event_id=ID1).accepted
    assert not decide(allowance, state, D("3.1"), event_time=T0, event_id=ID1).accepted
    figures = balance_figures(allowance, D(8), D(80))
    assert figures.available == 3
    assert figures.percent_used == D("53.33")


def test_soft_limit_and_allowed_overage_report_the_excess_of_this_event_only() -> None:
    soft = Allowance(Aggregation.SUM, Enforcement.SOFT, D(10))
    first = decide(soft, CounterState(used=D(8), event_count=1), D(5), event_time=T0, event_id=ID1)
    assert first.accepted and first.overage == 3
    second = decide(soft, first.state_after, D(2), event_time=T0, event_id=ID2)
    assert second.overage == 2
    forced = decide(
        hard(Aggregation.SUM, "10"), CounterState(used=D(9)), D(4), event_time=T0, event_id=ID1, allow_overage=True
    )
    assert forced.accepted and forced.overage == 3


def test_zero_cost_events_are_accepted_even_when_exhausted() -> None:
    full = CounterState(used=D(12), event_count=3)
    assert decide(hard(Aggregation.SUM, "10"), full, D(0), event_time=T0, event_id=ID1).accepted
    unique = decide(
        hard(Aggregation.UNIQUE_COUNT, "3"),
        CounterState(used=D(3), event_count=3),
        D(1),
        event_time=T0,
        event_id=ID1,
        new_unique_value=False,
    )
    assert unique.accepted and unique.state_after.used == 3
    new_value = decide(
        hard(Aggregation.UNIQUE_COUNT, "3"),
        CounterState(used=D(3), event_count=3),
        D(1),
        event_time=T0,
        event_id=ID1,
        new_unique_value=True,
    )
    assert not new_value.accepted


def test_count_costs_one_whatever_the_quantity() -> None:
    decision = decide(
        hard(Aggregation.COUNT, "5"), CounterState(used=D(4), event_count=4), D(1), event_time=T0, event_id=ID1
    )
    assert decision.cost == 1 and decision.state_after.used == 5


def test_max_keeps_the_largest_and_compares_each_value() -> None:
    allowance = hard(Aggregation.MAX, "10")
    state = CounterState(used=D(6), event_count=1)
    assert decide(allowance, state, D(4), event_time=T0, event_id=ID1).state_after.used == 6
    assert decide(allowance, state, D(9), event_time=T0, event_id=ID1).state_after.used == 9
    assert not decide(allowance, state, D(11), event_time=T0, event_id=ID1).accepted


def test_latest_follows_event_time_then_id() -> None:
    allowance = hard(Aggregation.LATEST, None)
    state = CounterState(used=D(5), event_count=1, latest_event_time=T0, latest_event_id=ID2)
    older = decide(allowance, state, D(9), event_time=T0 - timedelta(seconds=1), event_id=UUID(int=3))
    assert older.state_after.used == 5 and older.state_after.latest_event_id == ID2
    tie_earlier_id = decide(allowance, state, D(9), event_time=T0, event_id=ID1)
    assert tie_earlier_id.state_after.used == 5
    tie_later_id = decide(allowance, state, D(9), event_time=T0, event_id=UUID(int=3))
    assert tie_later_id.state_after.used == 9 and tie_later_id.state_after.latest_event_id == UUID(int=3)
    first = decide(allowance, CounterState(), D(0), event_time=T0, event_id=ID1)
    assert first.state_after.used == 0 and first.state_after.latest_event_time == T0


@pytest.mark.parametrize("aggregation", [Aggregation.MAX, Aggregation.LATEST])
def test_gauges_ignore_reservations(aggregation: Aggregation) -> None:
    allowance = hard(aggregation, "10", reserved=D(9))
    assert decide(allowance, CounterState(used=D(2), event_count=1), D(10), event_time=T0, event_id=ID1).accepted
    assert requested_fits(allowance, D(2), D(10))
    assert balance_figures(allowance, D(2), D(80)).available == 8


def test_unlimited_has_no_available_or_percent() -> None:
    figures = balance_figures(hard(Aggregation.SUM, None), D(10**30), D(80))
    assert figures.available is None and figures.percent_used is None
    assert not figures.approaching_limit and not figures.limit_reached


quantities = st.decimals(min_value=0, max_value=1000, places=3)


@given(limit=quantities, events=st.lists(quantities, max_size=40))
def test_a_hard_limit_is_never_exceeded(limit: Decimal, events: list[Decimal]) -> None:
    allowance = hard(Aggregation.SUM, str(limit))
    state = CounterState()
    for i, quantity in enumerate(events):
        decision = decide(allowance, state, quantity, event_time=T0, event_id=UUID(int=i))
        assert decision.accepted == (state.used + quantity <= limit or quantity == 0)
        state = decision.state_after
        assert state.used <= limit
        assert isinstance(state.used, Decimal)


@given(limit=quantities, used=quantities, requested=quantities)
def test_requested_fits_agrees_with_decide(limit: Decimal, used: Decimal, requested: Decimal) -> None:
    allowance = hard(Aggregation.SUM, str(limit))
    decision = decide(allowance, CounterState(used=used, event_count=1), requested, event_time=T0, event_id=ID1)
    assert requested_fits(allowance, used, requested) == decision.accepted
