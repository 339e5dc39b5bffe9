"""A period's bill and its what-if on another plan, from usage, without a database
(metering.domain.bills): which lines, at which prices, and that both price
with the one pricing function."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.config.catalog import parse_catalog
from metering.domain import bills
from metering.domain.errors import NotFound, PriceCurrencyMismatch
from metering.domain.pricing import price_line
from metering.domain.records import InvoiceLine

D = Decimal

CATALOG = parse_catalog(
    """
[meters.tokens]
aggregation = "sum"
unit = "token"
default_price = "tokens_list"

[meters.calls]
aggregation = "count"
unit = "call"
default_price = "calls_per_unit"

[meters.peak]
aggregation = "max"
unit = "session"

[prices.tokens_list]
meter = "tokens"
model = "per_unit"
currency = "USD"
unit_amount = "0.002"

[prices.tokens_cheap]
meter = "tokens"
model = "per_unit"
currency = "USD"
unit_amount = "0.001"

[prices.tokens_tiered]
meter = "tokens"
model = "graduated"
currency = "USD"
tiers = [{ up_to = "1000", unit_amount = "0.0015" }, { unit_amount = "0.0005" }]

[prices.tokens_eur]
meter = "tokens"
model = "per_unit"
currency = "EUR"
unit_amount = "0.001"

[prices.calls_per_unit]
meter = "calls"
model = "per_unit"
currency = "USD"
unit_amount = "0.01"

[plans.basic]
[plans.basic.meters.tokens]
included = "100"
price = "tokens_cheap"
[plans.basic.meters.calls]
price = "calls_per_unit"

[plans.growth]
[plans.growth.meters.tokens]
included = "1000"
price = "tokens_tiered"

[plans.euro]
[plans.euro.meters.tokens]
price = "tokens_eur"
[plans.euro.meters.calls]
price = "calls_no_charge"
"""
)
BASIC, GROWTH, EURO = CATALOG.plans["basic"], CATALOG.plans["growth"], CATALOG.plans["euro"]
TOKENS, CALLS = CATALOG.meters["tokens"], CATALOG.meters["calls"]


Summary = list[tuple[str, str, str, str, str]]


def summary(lines: Sequence[InvoiceLine | bills.BillLine]) -> Summary:
    """(meter, price, quantity, included, amount) of each line."""
    out = []
    for line in lines:
        shown = bills.invoice_line(line) if isinstance(line, bills.BillLine) else line
        charge = shown.charge
        out.append(
            (
                shown.meter_slug,
                shown.price_slug,
                format(charge.quantity, "f"),
                format(charge.included, "f"),
                format(charge.amount, "f"),
            )
        )
    return out


def test_the_plan_bill_has_a_line_per_recorded_price_and_the_plan_price_takes_the_included_units() -> None:
    # A plan change mid-period: 300 tokens recorded at the list price, 1,000 at the plan's.
    lines = bills.plan_lines(CATALOG, BASIC, TOKENS, {"tokens_list": D(300), "tokens_cheap": D(1000)})
    assert summary(lines) == [
        ("tokens", "tokens_cheap", "1000", "100", "0.90"),  # (1000 - 100) x 0.001
        ("tokens", "tokens_list", "300", "0", "0.60"),
    ]
    # Without usage the plan's price still has its (zero) line.
    assert summary(bills.plan_lines(CATALOG, BASIC, TOKENS, {})) == [("tokens", "tokens_cheap", "0", "100", "0.00")]


def test_a_what_if_prices_each_meters_whole_usage_at_the_other_plans_price_and_included_units() -> None:
    what_if = bills.what_if_bill(CATALOG, GROWTH, {"tokens": D(1300), "calls": D(7)}, ["calls"])
    assert what_if.plan is GROWTH and what_if.currency == "USD"
    # tokens: 1,300 - 1,000 included = 300 graduated at 0.0015 -> 0.45; calls: not in growth,
    # billed as growth would bill it: the meter's default price, 7 x 0.01.
    assert summary(what_if.lines) == [
        ("tokens", "tokens_tiered", "1300", "1000", "0.45"),
        ("calls", "calls_per_unit", "7", "0", "0.07"),
    ]
    assert (what_if.subtotal, what_if.credits, what_if.total) == (D("0.52"), D(0), D("0.52"))
    assert what_if.unlisted_meters == ("calls",)
    tokens = what_if.lines[0]
    assert [(t.quantity, t.unit_amount, t.amount) for t in tokens.charge.tiers] == [(D(300), D("0.0015"), D("0.45"))]


def test_a_meter_without_a_default_price_bills_nothing_on_a_plan_that_does_not_list_it() -> None:
    what_if = bills.what_if_bill(CATALOG, GROWTH, {"tokens": D(0), "peak": D(40)}, ["peak"])
    assert summary(what_if.lines)[1] == ("peak", "peak_no_charge", "40", "0", "0.00")
    assert what_if.unlisted_meters == ("peak",)
    assert what_if.total == D("0.00")


def test_a_meter_the_plan_lists_is_never_unlisted_and_missing_usage_is_zero() -> None:
    what_if = bills.what_if_bill(CATALOG, BASIC, {}, ["tokens", "peak"])
    assert [line.meter_slug for line in what_if.lines] == ["tokens", "calls", "peak"]
    assert what_if.unlisted_meters == ("peak",)
    assert all(line.charge.quantity == 0 for line in what_if.lines)


def test_a_what_if_bills_in_the_other_plans_currency() -> None:
    what_if = bills.what_if_bill(CATALOG, EURO, {"tokens": D(2500), "calls": D(3)})
    assert what_if.currency == "EUR" and what_if.total == D("2.50")
    assert summary(what_if.lines)[1] == ("calls", "calls_no_charge", "3", "0", "0.00")


def test_usage_recorded_at_a_price_in_another_currency_is_refused() -> None:
    # The catalog check keeps a plan's own and default prices in one currency;
    # an event's stored price is what can still differ.
    with pytest.raises(PriceCurrencyMismatch):
        bills.plan_lines(CATALOG, BASIC, TOKENS, {"tokens_eur": D(1)})


def test_a_price_the_catalog_no_longer_has_is_not_found() -> None:
    with pytest.raises(NotFound):
        bills.plan_lines(CATALOG, BASIC, TOKENS, {"tokens_retired": D(5)})


@given(
    tokens=st.decimals(min_value=0, max_value=10**9, places=3),
    calls=st.integers(min_value=0, max_value=10**6),
)
def test_on_the_customers_own_plan_a_what_if_is_the_bill(tokens: Decimal, calls: int) -> None:
    """Usage recorded at the plan's own prices: the what-if on that plan has exactly the bill's lines and totals."""
    usage = {"tokens": tokens, "calls": D(calls)}
    bill_lines = [
        line
        for meter in (TOKENS, CALLS)
        for line in bills.plan_lines(CATALOG, BASIC, meter, {BASIC.meters[meter.slug].price: usage[meter.slug]})
    ]
    what_if = bills.what_if_bill(CATALOG, BASIC, usage)
    assert summary(bill_lines) == summary(what_if.lines)
    assert tuple(bills.totals(bill_lines)) == (what_if.subtotal, what_if.credits, what_if.total)


@given(tokens=st.decimals(min_value=0, max_value=10**9, places=3))
def test_a_what_if_line_is_the_pricing_functions_charge(tokens: Decimal) -> None:
    """No second copy of pricing: the line's charge is price_line's, with the plan's included units."""
    [line] = bills.what_if_bill(CATALOG, GROWTH, {"tokens": tokens}).lines
    assert line.charge == price_line(CATALOG.prices["tokens_tiered"], tokens, D(1000), "USD")


def test_totals_add_the_rounded_line_amounts() -> None:
    lines = bills.plan_lines(CATALOG, BASIC, TOKENS, {"tokens_cheap": D(105), "tokens_list": D(3)})
    assert bills.totals(lines) == bills.Totals(D("0.01"), D(0), D("0.01"))  # 0.005 -> 0.00 (half-even), 0.006 -> 0.01
