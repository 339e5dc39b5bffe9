"""metering.domain.terms: a customer's terms for a meter, the one place allowances and balances are computed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.config.catalog import load_catalog
from metering.domain import closing, limits, terms
from metering.domain.catalog import Aggregation, Enforcement
from metering.domain.errors import NotFound
from metering.domain.periods import Period, period_containing
from metering.domain.records import CounterReading, CustomerRecord
from metering.domain.terms import PlanTerms, TermsBook

CATALOG = load_catalog(None)  # the sample catalog
ANCHOR = datetime(2026, 1, 31, tzinfo=UTC)
CUSTOMER = CustomerRecord("c1", "pro", ANCHOR, ANCHOR, ANCHOR)
D = Decimal


def test_the_catalog_answers_each_kind_or_not_found() -> None:
    assert CATALOG.meter("ai_tokens").slug == "ai_tokens"
    assert CATALOG.plan("pro").slug == "pro"
    assert CATALOG.price("ai_tokens_no_charge").is_no_charge
    for lookup, kind in ((CATALOG.meter, "meter"), (CATALOG.plan, "plan"), (CATALOG.price, "price")):
        with pytest.raises(NotFound) as found:
            lookup("nope")
        assert (found.value.kind, found.value.name) == (kind, "nope")


def test_the_book_builds_the_terms_of_a_plan_and_meter_once() -> None:
    book = TermsBook(CATALOG)
    meter = CATALOG.meter("ai_tokens")
    known = book.of("pro", meter)
    assert known is book.of("pro", meter)
    assert known.terms == CATALOG.plan_meter(CATALOG.plan("pro"), meter)
    assert known.plan_allowance == limits.Allowance(meter.aggregation, known.terms.enforcement, known.terms.limit)
    assert (known.notified.plan_slug, known.notified.unit) == ("pro", meter.unit)
    assert known.notified.approaching_threshold == known.terms.approaching_threshold
    with pytest.raises(NotFound):
        book.of("gone", meter)


def test_a_customer_meter_resets_on_the_customers_anchor() -> None:
    book = TermsBook(CATALOG)
    chain = book.for_customer(CUSTOMER, CATALOG.meter("ai_tokens"))
    at = datetime(2026, 2, 28, 12, tzinfo=UTC)
    period = chain.period_at(at)
    assert period == period_containing(at, ANCHOR, chain.terms.terms.reset)
    assert chain.period_at(at, book.periods) == period
    # An event counts in its own time's period, or the first for one before the anchor.
    assert chain.event_period(at) == period
    first = chain.period_at(ANCHOR)
    assert first.start == ANCHOR
    assert chain.event_period(ANCHOR - timedelta(seconds=60)) == first
    assert chain.period_at(ANCHOR - timedelta(seconds=60)) != first


def test_the_balance_uses_the_decisions_allowance_when_the_writer_kept_it() -> None:
    known = TermsBook(CATALOG).of("pro", CATALOG.meter("ai_tokens"))
    decided = known.allowance(D(5), D(1))
    kept = CounterReading(limits.CounterState(used=D(10)), D(99), D(99), decided)
    assert known.allowance_of(kept) is decided
    fresh = CounterReading(limits.CounterState(used=D(10)), D(5), D(1))
    assert known.allowance_of(fresh) == decided
    period = Period(ANCHOR, ANCHOR + timedelta(days=28))
    assert known.balance(period, kept).figures == known.balance(period, fresh).figures


def test_a_hard_limit_refusal_names_the_plan_meter_and_figures() -> None:
    known = TermsBook(CATALOG).of("free", CATALOG.meter("ai_tokens"))
    assert known.terms.limit is not None
    refusal = known.limit_exceeded(Period(ANCHOR, ANCHOR + timedelta(days=1)), available=D(2), requested=D(3))
    assert (refusal.meter, refusal.plan, refusal.unit) == ("ai_tokens", "free", CATALOG.meter("ai_tokens").unit)
    assert (refusal.limit, refusal.available, refusal.requested) == (known.terms.limit, D(2), D(3))


quantities = st.decimals(min_value=0, max_value=10_000, places=2, allow_nan=False, allow_infinity=False)


@given(
    aggregation=st.sampled_from(Aggregation),
    enforcement=st.sampled_from([Enforcement.HARD, Enforcement.SOFT]),
    limit=quantities,
    granted=quantities,
    reserved=quantities,
    used=quantities,
    requested=quantities,
    threshold=st.decimals(min_value="0.01", max_value=100, places=2),
)
def test_the_figures_agree_with_the_limits_rules(
    aggregation: Aggregation,
    enforcement: Enforcement,
    limit: Decimal,
    granted: Decimal,
    reserved: Decimal,
    used: Decimal,
    requested: Decimal,
    threshold: Decimal,
) -> None:
    plan = limits.Allowance(aggregation, enforcement, limit)
    allowance = terms.allowance(plan, granted, reserved)
    assert (allowance.limit, allowance.granted, allowance.reserved) == (limit, granted, reserved)
    assert allowance.total == limit + granted
    assert (plan.granted, plan.reserved) == (D(0), D(0))  # the plan's part is never changed
    figures = limits.balance_figures(allowance, used, threshold)
    assert figures.available == limits.available_quantity(allowance, used)
    # No threshold is ever crossed by usage that stays below the quiet bound.
    bound = terms.quiet_below(allowance, threshold)
    assert bound is not None
    if used < bound:
        assert limits.thresholds_crossed(allowance, D(0), used, threshold) == ()
    assert bound <= allowance.total


def test_an_unlimited_meter_has_no_quiet_bound_and_fits_anything() -> None:
    known: PlanTerms = TermsBook(CATALOG).of("enterprise", CATALOG.meter("ai_tokens"))  # no limit in the sample
    assert known.terms.limit is None and known.plan_allowance.total is None
    assert terms.quiet_below(known.allowance(), D(80)) is None
    reading = CounterReading(limits.CounterState(used=D(10**9)), D(0), D(0))
    assert known.requested_fits(reading, D(10**9))
    assert known.balance(Period(ANCHOR, ANCHOR + timedelta(days=28)), reading).figures.available is None


graces = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10))
# hypothesis takes naive bounds and attaches the time zone itself.
instants = st.datetimes(
    min_value=datetime(2020, 1, 1),  # noqa: DTZ001
    max_value=datetime(2030, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@given(
    period_end=instants,
    grace=graces,
    now=instants,
    later=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30)),
)
def test_a_period_is_due_from_its_end_plus_grace_and_stays_due(
    period_end: datetime, grace: timedelta, now: datetime, later: timedelta
) -> None:
    due = closing.is_due(period_end, grace, now)
    assert due == (now - period_end >= grace)
    if due:
        assert closing.is_due(period_end, grace, now + later)  # the clock moving on never undoes it
        assert closing.is_due(period_end - later, grace, now)  # nor does an older period
