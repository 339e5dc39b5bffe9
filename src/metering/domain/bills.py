"""A billing period's bill from its usage, and the same usage on another plan: pure, no I/O.

Which lines a bill has and at which price each is charged; the money itself
is computed by metering.domain.pricing (the one place). Two ways to bill one
period's usage:

* the bill of the customer's own plan (`plan_lines`): each event is billed at
  the price stored with it when it was recorded, so a meter has one line per
  price its events carry; the plan's own price always has a line and takes the
  plan's included units;
* a what-if bill on another plan (`what_if_bill`): each meter's whole usage of
  the period (every price together, aggregated as the meter says) at the price
  that plan gives the meter, less that plan's included units: one line per
  meter. A meter the plan does not list is billed as that plan would bill it
  (the meter's default price, else no charge: Catalog.plan_meter) and named in
  `unlisted_meters`. Limits are not replayed: usage that plan's hard limits
  would have refused is priced as recorded.

Both price every line with `pricing.price_line`, in the plan's currency, and
total them with `totals`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple

from metering.domain import decimals
from metering.domain.catalog import Catalog, Meter, Plan, Price, PricingModel
from metering.domain.decimals import ZERO
from metering.domain.errors import PriceCurrencyMismatch
from metering.domain.pricing import LineCharge, price_line
from metering.domain.records import InvoiceLine


@dataclass(frozen=True, slots=True)
class BillLine:
    """One priced line of a bill: a meter at one price."""

    meter: Meter
    price: Price
    charge: LineCharge


class Totals(NamedTuple):
    """A bill's sums: the lines, the credits applied (zero or negative), and what is owed."""

    subtotal: Decimal
    credits: Decimal
    total: Decimal


@dataclass(frozen=True, slots=True)
class WhatIfBill:
    """A period's usage priced on another plan than the customer's: never stored."""

    plan: Plan
    currency: str
    lines: tuple[InvoiceLine, ...]  # one per meter: the plan's meters, then the unlisted ones
    subtotal: Decimal
    credits: Decimal
    total: Decimal
    unlisted_meters: tuple[str, ...]  # meters with usage that the plan does not list


def plan_currency(plan: Plan) -> str:
    assert plan.currency is not None  # every plan of a checked catalog has one
    return plan.currency


def bill_meters(plan: Plan, used_elsewhere: Sequence[str]) -> list[str]:
    """The meters a bill on `plan` has lines for: the plan's own, in the
    plan's order, then those of `used_elsewhere` (meters with usage in the period
    that the plan does not list)."""
    return [*plan.meters, *(slug for slug in used_elsewhere if slug not in plan.meters)]


def _line(
    catalog: Catalog, plan: Plan, meter: Meter, price_slug: str, quantity: Decimal, included: Decimal
) -> BillLine:
    # Events priced with a price the catalog no longer has: refused (NotFound)
    # rather than billed at nothing.
    price = catalog.price(price_slug)
    currency = plan_currency(plan)
    if price.currency is not None and price.currency != currency:
        raise PriceCurrencyMismatch(price.slug, price.currency, currency)
    return BillLine(meter, price, price_line(price, quantity, included, currency))


def plan_lines(catalog: Catalog, plan: Plan, meter: Meter, by_price: Mapping[str, Decimal]) -> list[BillLine]:
    """The bill's lines of one meter on the customer's own plan, from its usage
    per price the events were recorded with (`by_price`, prices without events
    left out): the plan's price first (it takes the included units), then the
    others in slug order."""
    terms = catalog.plan_meter(plan, meter)
    price_slugs = [terms.price, *sorted(slug for slug in by_price if slug != terms.price)]
    return [
        _line(catalog, plan, meter, slug, by_price.get(slug, ZERO), terms.included if slug == terms.price else ZERO)
        for slug in price_slugs
    ]


def what_if_line(catalog: Catalog, plan: Plan, meter: Meter, quantity: Decimal) -> BillLine:
    """The line of one meter on `plan`: its whole usage of the period at the
    plan's price for it, less the plan's included units."""
    terms = catalog.plan_meter(plan, meter)
    return _line(catalog, plan, meter, terms.price, quantity, terms.included)


def totals(lines: Sequence[BillLine], credits: Decimal = ZERO) -> Totals:
    """Subtotal, credits and total of a bill's lines. `credits` (zero or
    negative) is the wallet credit applied (domain.wallets.credits_total); the
    total never goes below zero."""
    subtotal = decimals.add(*(line.charge.amount for line in lines))
    return Totals(subtotal, credits, max(ZERO, decimals.add(subtotal, credits)))


def invoice_line(line: BillLine) -> InvoiceLine:
    """A priced line in its self-contained form (it reads the same after the catalog changes)."""
    price = line.price
    return InvoiceLine(
        meter_slug=line.meter.slug,
        price_slug=price.slug,
        model=price.model,
        unit_amount=price.unit_amount if price.model in (PricingModel.PER_UNIT, PricingModel.PACKAGE) else None,
        package_size=price.package_size,
        charge=line.charge,
    )


def what_if_bill(
    catalog: Catalog, plan: Plan, usage: Mapping[str, Decimal], unlisted: Sequence[str] = ()
) -> WhatIfBill:
    """The what-if bill on `plan` of a period whose usage per meter is
    `usage` (slug -> the meter's aggregate over the period; every meter of
    `bill_meters(plan, unlisted)`, a missing one counting as no usage)."""
    lines = [
        what_if_line(catalog, plan, catalog.meter(slug), usage.get(slug, ZERO)) for slug in bill_meters(plan, unlisted)
    ]
    subtotal, credits, total = totals(lines)
    return WhatIfBill(
        plan=plan,
        currency=plan_currency(plan),
        lines=tuple(invoice_line(line) for line in lines),
        subtotal=subtotal,
        credits=credits,
        total=total,
        unlisted_meters=tuple(slug for slug in unlisted if slug not in plan.meters),
    )
