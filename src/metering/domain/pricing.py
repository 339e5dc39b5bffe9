"""Bill math: pure functions, no I/O. The one place money is computed.

Rules, in order:

1. billable = max(0, quantity - included)
2. the price's model turns `billable` into an exact amount:
   * per_unit:  billable * unit_amount
   * package:   ceil (or floor) of billable / package_size, times the package amount
   * graduated: each unit at the rate of the tier it falls in, plus the flat
                amount of every tier that has at least one unit
   * volume:    every unit at the rate of the tier the total falls in, plus
                that tier's flat amount
   A tier's `up_to` is inclusive: with up_to = 100, unit 100 is in that tier
   and unit 100.5 in the next. A billable quantity of 0 reaches no tier and
   costs nothing.
3. the line total is rounded once, half-even, to the currency's minor unit.

Everything is decimal arithmetic in an exact context: a float can never
appear, and any inexact step raises instead of rounding silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from metering.domain import decimals
from metering.domain.catalog import PackageRounding, Price, PricingModel, Tier, minor_unit_digits
from metering.domain.decimals import EXACT, ONE, ROUNDING, ZERO


@dataclass(frozen=True, slots=True)
class TierCharge:
    from_quantity: Decimal  # exclusive lower bound
    up_to: Decimal | None  # inclusive upper bound; None for the open last tier
    quantity: Decimal  # billable units priced in this tier
    unit_amount: Decimal
    flat_amount: Decimal  # charged once when the tier has units
    amount: Decimal  # exact, before rounding


@dataclass(frozen=True, slots=True)
class LineCharge:
    quantity: Decimal
    included: Decimal
    billable: Decimal
    tiers: tuple[TierCharge, ...]
    exact_amount: Decimal  # before rounding
    amount: Decimal  # rounded half-even to the currency's minor unit


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Half-even to the currency's minor unit: the one rounding of a bill."""
    step = Decimal(1).scaleb(-minor_unit_digits(currency))
    return amount.quantize(step, rounding=ROUND_HALF_EVEN, context=ROUNDING)


def price_line(price: Price, quantity: Decimal, included: Decimal, currency: str) -> LineCharge:
    """The charge for `quantity` units at `price`, `included` of them free."""
    if quantity < 0 or included < 0:
        raise ValueError("quantities are never negative")
    billable = max(ZERO, EXACT.subtract(quantity, included))
    tiers: tuple[TierCharge, ...] = ()
    if price.is_no_charge:
        exact = ZERO
    elif price.model is PricingModel.PER_UNIT:
        exact = EXACT.multiply(billable, price.unit_amount)
    elif price.model is PricingModel.PACKAGE:
        assert price.package_size is not None
        exact = EXACT.multiply(_packages(billable, price.package_size, price.package_rounding), price.unit_amount)
    elif price.model is PricingModel.GRADUATED:
        tiers = _graduated(billable, price.tiers)
        exact = decimals.add(*(t.amount for t in tiers))
    else:
        tiers = _volume(billable, price.tiers)
        exact = decimals.add(*(t.amount for t in tiers))
    return LineCharge(quantity, included, billable, tiers, exact, round_money(exact, currency))


def exact_amount(price: Price, quantity: Decimal, included: Decimal) -> Decimal:
    """price_line's exact amount (before rounding), without building its tiers:
    the wallet's marginal costs compute it for every event. The same rules, in
    the same exact arithmetic (a unit test keeps the two equal)."""
    billable = quantity - included if quantity > included else ZERO
    if price.is_no_charge or billable == 0:
        return ZERO
    model = price.model
    if model is PricingModel.PER_UNIT:
        return EXACT.multiply(billable, price.unit_amount)
    if model is PricingModel.PACKAGE:
        assert price.package_size is not None
        return EXACT.multiply(_packages(billable, price.package_size, price.package_rounding), price.unit_amount)
    tiers = price.tiers
    if model is PricingModel.VOLUME:
        # As in _volume: the last tier is open-ended (the catalog check).
        reached = next((t for t in tiers[:-1] if t.up_to is not None and billable <= t.up_to), tiers[-1])
        return EXACT.add(EXACT.multiply(billable, reached.unit_amount), reached.flat_amount)
    total = ZERO
    lower = ZERO
    for tier in tiers:
        upper = billable if tier.up_to is None or billable <= tier.up_to else tier.up_to
        units = EXACT.subtract(upper, lower)
        total = EXACT.add(total, EXACT.add(EXACT.multiply(units, tier.unit_amount), tier.flat_amount))
        if upper == billable:
            return total
        lower = upper
    raise AssertionError("the catalog check makes the last tier open-ended")  # pragma: no cover


def _packages(billable: Decimal, size: Decimal, rounding: PackageRounding) -> Decimal:
    # 100 significant digits: the ratio of two valid quantities is never rounded
    # across a whole number before it is rounded to whole packages here.
    ratio = ROUNDING.divide(billable, size)
    mode = ROUND_CEILING if rounding is PackageRounding.UP else ROUND_FLOOR
    return ratio.quantize(ONE, rounding=mode, context=ROUNDING)


def _graduated(billable: Decimal, tiers: tuple[Tier, ...]) -> tuple[TierCharge, ...]:
    # The catalog check makes every tier but the last bounded and the last
    # open-ended: the last tier takes whatever the bounded ones do not.
    charges: list[TierCharge] = []
    lower = ZERO
    for tier in tiers[:-1]:
        assert tier.up_to is not None
        if billable <= tier.up_to:
            return (*charges, _tier_charge(lower, tier, max(ZERO, EXACT.subtract(billable, lower))))
        charges.append(_tier_charge(lower, tier, max(ZERO, EXACT.subtract(tier.up_to, lower))))
        lower = tier.up_to
    return (*charges, _tier_charge(lower, tiers[-1], max(ZERO, EXACT.subtract(billable, lower))))


def _volume(billable: Decimal, tiers: tuple[Tier, ...]) -> tuple[TierCharge, ...]:
    # As in _graduated, the last tier is open-ended (the catalog check).
    lower = ZERO
    for tier in tiers[:-1]:
        assert tier.up_to is not None
        if billable <= tier.up_to:
            return (_tier_charge(lower, tier, billable),)
        lower = tier.up_to
    return (_tier_charge(lower, tiers[-1], billable),)


def _tier_charge(lower: Decimal, tier: Tier, units: Decimal) -> TierCharge:
    flat = tier.flat_amount if units > 0 else ZERO
    amount = EXACT.add(EXACT.multiply(units, tier.unit_amount), flat)
    return TierCharge(lower, tier.up_to, units, tier.unit_amount, tier.flat_amount, amount)
