"""metering.domain.usage.resolve: what an event means under its customer's plan, without a database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.config.catalog import parse_catalog
from metering.domain.catalog import Catalog
from metering.domain.errors import (
    BeforeFirstPeriod,
    CatalogReloaded,
    EventTooOld,
    MeteringError,
    NotFound,
    PeriodClosed,
    PriceCurrencyMismatch,
)
from metering.domain.periods import period_containing
from metering.domain.records import CustomerRecord
from metering.domain.terms import TermsBook
from metering.domain.usage import CounterKey, Resolution, UsageCommand, resolve, resolve_all

CATALOG_TEXT = """
    [meters.tokens]
    aggregation = "sum"
    unit = "token"
    dimensions = ["model"]

    [meters.seats]
    aggregation = "unique_count"
    unit = "seat"
    property = "user"

    [prices.tokens_usd]
    meter = "tokens"
    model = "per_unit"
    currency = "USD"
    unit_amount = "0.01"

    [prices.tokens_eur]
    meter = "tokens"
    model = "per_unit"
    currency = "EUR"
    unit_amount = "0.01"

    [plans.pro]
    [plans.pro.meters.tokens]
    limit = "100"
    price = "tokens_usd"
    reset = "day"

    [plans.euro]
    [plans.euro.meters.tokens]
    price = "tokens_eur"
    """
CATALOG: Catalog = parse_catalog(CATALOG_TEXT)
ANCHOR = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
CUSTOMER = CustomerRecord("c1", "pro", ANCHOR, ANCHOR, ANCHOR)
EURO_CUSTOMER = CustomerRecord("c1", "euro", ANCHOR, ANCHOR, ANCHOR)


def command(
    *,
    event_time: datetime | None = None,
    price: str | None = None,
    meter: str = "tokens",
    too_old: EventTooOld | None = None,
    properties: dict[str, str] | None = None,
    received_at: datetime = NOW,
) -> UsageCommand:
    return UsageCommand(
        customer_id="c1",
        transaction_id="t1",
        meter=CATALOG.meter(meter),
        price=CATALOG.price(price) if price else None,
        quantity=Decimal(3),
        event_time=event_time,
        properties=properties or {},
        unique_value=None,
        allow_overage=False,
        received_at=received_at,
        too_old=too_old,
    )


def test_an_event_without_a_time_happens_when_the_call_was_received() -> None:
    resolution = resolve(command(), CUSTOMER, TermsBook(CATALOG))
    assert resolution.event.event_time is NOW
    assert not resolution.event.event_time_given
    assert resolution.period == period_containing(NOW, ANCHOR, CATALOG.plan("pro").meters["tokens"].reset)
    assert resolution.refusal is None


def test_the_plans_terms_and_price_apply_unless_the_caller_names_a_price() -> None:
    book = TermsBook(CATALOG)
    by_meter = resolve(command(), CUSTOMER, book)
    assert (by_meter.event.price_slug, by_meter.event.requested_price_slug) == ("tokens_usd", None)
    assert by_meter.plan is book.of("pro", CATALOG.meter("tokens")).plan_allowance
    assert by_meter.plan.limit == Decimal(100)
    assert by_meter.terms.plan_slug == "pro" and by_meter.terms.unit == "token"
    named = resolve(command(price="tokens_usd"), CUSTOMER, book)
    assert (named.event.price_slug, named.event.requested_price_slug) == ("tokens_usd", "tokens_usd")


def test_a_meter_the_plan_does_not_list_is_unlimited_and_resets_monthly() -> None:
    resolution = resolve(command(meter="seats"), CUSTOMER, TermsBook(CATALOG))
    assert resolution.plan.limit is None
    assert resolution.event.price_slug == "seats_no_charge"
    assert resolution.period == period_containing(
        NOW, ANCHOR, CATALOG.plan_meter(CATALOG.plan("pro"), CATALOG.meter("seats")).reset
    )


def test_an_unknown_customer_is_not_found_unless_the_time_is_refused_first() -> None:
    with pytest.raises(NotFound) as found:
        resolve(command(), None, TermsBook(CATALOG))
    assert found.value.kind == "customer"
    too_old = EventTooOld("older than the backfill window")
    with pytest.raises(EventTooOld) as refused:
        resolve(command(too_old=too_old), None, TermsBook(CATALOG))
    assert refused.value is too_old


def test_a_plan_the_catalog_lost_is_not_found() -> None:
    lost = CustomerRecord("c1", "gone", ANCHOR, ANCHOR, ANCHOR)
    with pytest.raises(NotFound) as found:
        resolve(command(), lost, TermsBook(CATALOG))
    assert (found.value.kind, found.value.name) == ("plan", "gone")


def test_a_price_in_another_currency_than_the_plans_is_refused() -> None:
    with pytest.raises(PriceCurrencyMismatch):
        resolve(command(price="tokens_eur"), CUSTOMER, TermsBook(CATALOG))


def test_late_events_carry_their_refusal_and_the_backfill_one_comes_first() -> None:
    book = TermsBook(CATALOG)
    before = resolve(command(event_time=ANCHOR - timedelta(seconds=1)), CUSTOMER, book)
    assert isinstance(before.refusal, BeforeFirstPeriod)
    closed_through = datetime(2026, 2, 15, 9, 30, tzinfo=UTC)
    closed = CustomerRecord("c1", "pro", ANCHOR, ANCHOR, ANCHOR, closed_through)
    in_closed = resolve(command(event_time=closed_through - timedelta(days=1)), closed, book)
    assert isinstance(in_closed.refusal, PeriodClosed)
    assert resolve(command(event_time=closed_through), closed, book).refusal is None
    too_old = EventTooOld("older than the backfill window")
    assert resolve(command(event_time=ANCHOR - timedelta(days=1), too_old=too_old), closed, book).refusal is too_old


def test_an_event_within_the_skew_tolerance_before_the_anchor_counts_in_the_first_period() -> None:
    book = TermsBook(CATALOG, anchor_skew_tolerance=timedelta(minutes=5))
    early = ANCHOR - timedelta(seconds=60)
    resolution = resolve(command(event_time=early), CUSTOMER, book)
    assert resolution.refusal is None
    assert resolution.event.event_time == early  # stored with its own time
    first = period_containing(ANCHOR, ANCHOR, CATALOG.plan("pro").meters["tokens"].reset)
    assert first.start == ANCHOR and resolution.period == first
    assert resolution.counter_key == CounterKey("c1", "tokens", ANCHOR)
    # Beyond the tolerance, or with none: before the first period.
    beyond = resolve(command(event_time=ANCHOR - timedelta(minutes=5, microseconds=1)), CUSTOMER, book)
    assert isinstance(beyond.refusal, BeforeFirstPeriod)
    assert isinstance(resolve(command(event_time=early), CUSTOMER, TermsBook(CATALOG)).refusal, BeforeFirstPeriod)


def test_the_dimensions_of_the_meter_are_kept() -> None:
    resolution = resolve(command(properties={"model": "m1", "other": "x"}), CUSTOMER, TermsBook(CATALOG))
    assert resolution.dimensions == {"model": "m1"}
    assert resolution.event.properties == {"model": "m1", "other": "x"}


# hypothesis takes naive bounds and attaches the time zone itself.
instants = st.datetimes(
    min_value=datetime(2026, 1, 15, 9, 30),  # noqa: DTZ001
    max_value=datetime(2030, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@given(event_time=instants, received_at=instants, given_time=st.booleans())
def test_the_period_is_the_one_containing_the_event_time_and_keys_its_counter(
    event_time: datetime, received_at: datetime, given_time: bool
) -> None:
    book = TermsBook(CATALOG)
    resolution: Resolution = resolve(
        command(event_time=event_time if given_time else None, received_at=received_at), CUSTOMER, book
    )
    at = event_time if given_time else received_at
    assert resolution.event.event_time == at
    assert resolution.period.contains(at)
    assert resolution.period == period_containing(at, ANCHOR, CATALOG.plan("pro").meters["tokens"].reset)
    assert resolution.counter_key == CounterKey("c1", "tokens", resolution.period.start)
    assert resolution.counter_key is resolution.counter_key  # built once
    # The same answer from a book that has seen other instants (the periods' memory).
    assert resolve(command(event_time=at), CUSTOMER, book).period == resolution.period


# A reload swaps the catalog between an event's validation (the API edge) and
# its resolution (the writer's transaction): the event names the old objects.


def test_an_event_validated_before_a_reload_is_decided_under_the_new_terms() -> None:
    pro = CATALOG.plans["pro"]
    higher = replace(pro.meters["tokens"], limit=Decimal(500))
    new = replace(CATALOG, plans={"pro": replace(pro, meters={"tokens": higher})})
    resolution = resolve(command(price="tokens_usd"), CUSTOMER, TermsBook(new))
    assert resolution.event.price_slug == "tokens_usd"
    assert resolution.plan.limit == Decimal(500)


def test_an_unchanged_file_read_again_names_equal_objects() -> None:
    again = parse_catalog(CATALOG_TEXT)
    assert again.meters["tokens"] is not CATALOG.meters["tokens"]
    assert resolve(command(price="tokens_eur"), EURO_CUSTOMER, TermsBook(again)).event.price_slug == "tokens_eur"


def test_an_event_whose_meter_a_reload_changed_is_refused() -> None:
    tokens = replace(CATALOG.meters["tokens"], unit="ktoken")
    new = replace(CATALOG, meters={**CATALOG.meters, "tokens": tokens})
    with pytest.raises(CatalogReloaded, match="meter 'tokens'") as caught:
        resolve(command(), CUSTOMER, TermsBook(new))
    assert (caught.value.meter, caught.value.price) == ("tokens", "")


def test_an_event_whose_price_a_reload_changed_or_removed_is_refused() -> None:
    dearer = replace(CATALOG.prices["tokens_usd"], unit_amount=Decimal("0.02"))
    changed = replace(CATALOG, prices={**CATALOG.prices, "tokens_usd": dearer})
    removed = replace(CATALOG, prices={k: v for k, v in CATALOG.prices.items() if k != "tokens_usd"})
    for new in (changed, removed):
        with pytest.raises(CatalogReloaded, match="price 'tokens_usd'"):
            resolve(command(price="tokens_usd"), CUSTOMER, TermsBook(new))


def test_a_customer_with_a_wallet_is_charged_in_its_billing_period_at_the_events_price() -> None:
    book = TermsBook(CATALOG)
    assert resolve(command(), CUSTOMER, book).wallet is None  # no wallet, no prepaid plan: nothing to charge
    with_wallet = CustomerRecord("c1", "pro", ANCHOR, ANCHOR, ANCHOR, has_wallet=True)
    resolution = resolve(command(), with_wallet, book)
    wallet = resolution.wallet
    assert wallet is not None and not wallet.prepaid and wallet.currency == "USD"
    assert wallet.price.slug == "tokens_usd" and wallet.included == Decimal(0)
    # The billing period (monthly from the anchor), not the meter's daily one.
    assert wallet.billing_period.start == datetime(2026, 2, 15, 9, 30, tzinfo=UTC)
    assert resolution.spend_key == ("c1", "tokens", wallet.billing_period.start, "tokens_usd")
    # Without a TermsBook's memory of periods (a void, a commit): the same billing period.
    from metering.domain.usage import wallet_terms

    alone = wallet_terms(with_wallet, book.of("pro", CATALOG.meter("tokens")), CATALOG.price("tokens_usd"), NOW)
    assert alone is not None and alone.billing_period == wallet.billing_period


# resolve_all: resolve for each command, with what the events of one customer,
# meter, named price and event time share decided once.
CUSTOMERS = {
    "c1": CUSTOMER,
    "c2": CustomerRecord("c2", "pro", ANCHOR, ANCHOR, ANCHOR, datetime(2026, 2, 15, 9, 30, tzinfo=UTC)),
    "c3": EURO_CUSTOMER,
    "c4": CustomerRecord("c4", "pro", ANCHOR, ANCHOR, ANCHOR, has_wallet=True),
    "c5": CustomerRecord("c5", "gone", ANCHOR, ANCHOR, ANCHOR),
}


@st.composite
def commands(draw: st.DrawFn) -> UsageCommand:
    meter = draw(st.sampled_from(["tokens", "tokens", "seats"]))
    properties = draw(st.sampled_from([{}, {}, {"model": "m1", "user": "u1"}, {"other": "x"}]))
    return replace(
        command(
            event_time=draw(
                st.sampled_from(
                    [
                        None,
                        None,
                        NOW,
                        NOW - timedelta(hours=1),
                        ANCHOR - timedelta(days=1),
                        datetime(2026, 2, 1, tzinfo=UTC),
                    ]
                )
            ),
            price=draw(st.sampled_from([None, None, "tokens_usd", "tokens_eur"])) if meter == "tokens" else None,
            meter=meter,
            too_old=draw(st.sampled_from([None, None, None, EventTooOld("older than the backfill window")])),
            properties=properties,
            received_at=draw(st.sampled_from([NOW, NOW + timedelta(seconds=1)])),
        ),
        customer_id=draw(st.sampled_from([*CUSTOMERS, "c9"])),
        transaction_id=draw(st.sampled_from(["t1", "t2", "t3"])),
        quantity=draw(st.sampled_from([Decimal(1), Decimal("0.5"), Decimal(3)])),
        unique_value=properties.get("user") if meter == "seats" else None,
        allow_overage=draw(st.booleans()),
    )


def comparable(item: Resolution | BaseException) -> object:
    """A resolution with its refusal as text, or an error as text (errors compare by identity)."""
    if isinstance(item, BaseException):
        return type(item), str(item)
    refusal = item.refusal
    return replace(item, refusal=None), type(refusal), str(refusal)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(commands(), max_size=30))
def test_resolve_all_is_resolve_for_each_event(batch: list[UsageCommand]) -> None:
    book = TermsBook(CATALOG)
    expected = []
    for each in batch:
        try:
            expected.append(comparable(resolve(each, CUSTOMERS.get(each.customer_id), book)))
        except MeteringError as exc:
            expected.append(comparable(exc))
    assert [comparable(item) for item in resolve_all(batch, CUSTOMERS, book)] == expected


def test_resolve_all_shares_what_events_of_one_key_share() -> None:
    book = TermsBook(CATALOG)
    batch = [replace(command(), transaction_id=f"t{n}", quantity=Decimal(n)) for n in range(3)]
    first, *others = resolve_all(batch, CUSTOMERS, book)
    assert isinstance(first, Resolution)
    for n, other in enumerate(others, start=1):
        assert isinstance(other, Resolution)
        assert other.period is first.period and other.plan is first.plan
        assert (other.event.transaction_id, other.event.quantity) == (f"t{n}", Decimal(n))


def test_resolve_all_keeps_whether_each_event_gave_its_time() -> None:
    book = TermsBook(CATALOG)
    batch = [command(), replace(command(event_time=NOW), transaction_id="t2"), replace(command(), transaction_id="t3")]
    resolved = resolve_all(batch, CUSTOMERS, book)
    assert [r.event.event_time_given for r in resolved if isinstance(r, Resolution)] == [False, True, False]
    assert resolved == [resolve(each, CUSTOMER, book) for each in batch]
