"""Bill math at every boundary, and properties that must hold for any input."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.domain.catalog import PackageRounding, Price, PricingModel, Tier
from metering.domain.decimals import EXACT
from metering.domain.pricing import price_line, round_money

D = Decimal
HUGE = D("99999999999999999999.999999999")


def per_unit(amount: str) -> Price:
    return Price("p", "m", PricingModel.PER_UNIT, "USD", unit_amount=D(amount))


def package(size: str, amount: str, rounding: PackageRounding = PackageRounding.UP) -> Price:
    return Price(
        "p", "m", PricingModel.PACKAGE, "USD", unit_amount=D(amount), package_size=D(size), package_rounding=rounding
    )


# Graduated/volume: up to 100 at 1.00 (+10 flat), up to 1000 at 0.50 (+5 flat), then 0.25.
TIERS = (Tier(D(100), D("1.00"), D(10)), Tier(D(1000), D("0.50"), D(5)), Tier(None, D("0.25")))


def tiered(model: PricingModel, tiers: tuple[Tier, ...] = TIERS) -> Price:
    return Price("p", "m", model, "USD", tiers=tiers)


def amount(price: Price, quantity: str, included: str = "0", currency: str = "USD") -> str:
    return format(price_line(price, D(quantity), D(included), currency).amount, "f")


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("0", "0.00"),
        ("1", "0.01"),
        ("0.5", "0.00"),
        ("1.5", "0.02"),
        ("0.4", "0.00"),
        ("3", "0.03"),
        ("1000000", "10000.00"),
        ("12.345", "0.12"),
        (str(HUGE), "1000000000000000000.00"),
    ],
)
def test_per_unit(quantity: str, expected: str) -> None:
    assert amount(per_unit("0.01"), quantity) == expected


def test_per_unit_tiny_rates_keep_their_precision() -> None:
    assert amount(per_unit("0.000002"), "12345678") == "24.69"  # 24.691356
    assert price_line(per_unit("0.000002"), D(12345678), D(0), "USD").exact_amount == D("24.691356")


@pytest.mark.parametrize(
    ("quantity", "up", "down"),
    [
        ("0", "0.00", "0.00"),
        ("1", "0.20", "0.00"),
        ("999", "0.20", "0.00"),
        ("1000", "0.20", "0.20"),
        ("1001", "0.40", "0.20"),
        ("1000.5", "0.40", "0.20"),
        ("2500", "0.60", "0.40"),
    ],
)
def test_package_rounding(quantity: str, up: str, down: str) -> None:
    assert amount(package("1000", "0.20"), quantity) == up
    assert amount(package("1000", "0.20", PackageRounding.DOWN), quantity) == down


@pytest.mark.parametrize(
    ("quantity", "expected", "tier_quantities"),
    [
        ("0", "0.00", ["0"]),
        ("1", "11.00", ["1"]),  # 1 * 1.00 + 10 flat
        ("100", "110.00", ["100"]),  # the boundary is in the first tier
        ("100.5", "115.25", ["100", "0.5"]),  # 110 + 0.25 + 5 flat
        ("101", "115.50", ["100", "1"]),
        ("1000", "565.00", ["100", "900"]),  # 110 + 450 + 5
        ("1001", "565.25", ["100", "900", "1"]),
        ("1000000", "250315.00", ["100", "900", "999000"]),  # 565 + 249750
    ],
)
def test_graduated(quantity: str, expected: str, tier_quantities: list[str]) -> None:
    line = price_line(tiered(PricingModel.GRADUATED), D(quantity), D(0), "USD")
    assert format(line.amount, "f") == expected
    assert [format(t.quantity, "f") for t in line.tiers] == tier_quantities


@pytest.mark.parametrize(
    ("quantity", "expected", "tier_from"),
    [
        ("0", "0.00", "0"),  # nothing billable reaches no tier: no flat fee
        ("1", "11.00", "0"),
        ("100", "110.00", "0"),
        ("100.5", "55.25", "100"),  # all 100.5 at 0.50 + 5 flat: the volume discount cliff
        ("101", "55.50", "100"),
        ("1000", "505.00", "100"),
        ("1001", "250.25", "1000"),
    ],
)
def test_volume(quantity: str, expected: str, tier_from: str) -> None:
    line = price_line(tiered(PricingModel.VOLUME), D(quantity), D(0), "USD")
    assert format(line.amount, "f") == expected
    assert len(line.tiers) == 1
    assert format(line.tiers[0].from_quantity, "f") == tier_from


def test_included_units_come_off_before_pricing() -> None:
    line = price_line(tiered(PricingModel.GRADUATED), D(150), D(100), "USD")
    assert line.billable == 50
    assert format(line.amount, "f") == "60.00"
    assert price_line(per_unit("1"), D(50), D(100), "USD").billable == 0


def test_no_charge_bills_zero() -> None:
    free = Price("m_no_charge", "m", PricingModel.PER_UNIT, currency=None)
    assert amount(free, str(HUGE)) == "0.00"


@pytest.mark.parametrize(
    ("value", "currency", "expected"),
    [
        ("0.125", "USD", "0.12"),
        ("0.135", "USD", "0.14"),
        ("0.005", "USD", "0.00"),
        ("0.015", "USD", "0.02"),
        ("2.5", "JPY", "2"),
        ("3.5", "JPY", "4"),
        ("1.0005", "KWD", "1.000"),
        ("1.0015", "KWD", "1.002"),
    ],
)
def test_rounding_is_half_even_to_the_minor_unit(value: str, currency: str, expected: str) -> None:
    assert format(round_money(D(value), currency), "f") == expected


def test_negative_quantities_are_refused() -> None:
    with pytest.raises(ValueError, match="never negative"):
        price_line(per_unit("1"), D(-1), D(0), "USD")


# -- properties ---------------------------------------------------------------

amounts = st.decimals(min_value=0, max_value=100, places=6)
quantities = st.decimals(min_value=0, max_value=D(10) ** 12, places=9)


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = sorted(draw(st.sets(st.decimals(min_value=1, max_value=10**9, places=3), min_size=1, max_size=5)))
    tiers = [Tier(bound, draw(amounts), draw(amounts)) for bound in bounds]
    return (*tiers, Tier(None, draw(amounts), draw(amounts)))


@given(tiers=tier_lists(), quantity=quantities)
def test_graduated_is_the_sum_of_its_tiers_priced_alone(tiers: tuple[Tier, ...], quantity: Decimal) -> None:
    line = price_line(tiered(PricingModel.GRADUATED, tiers), quantity, D(0), "USD")
    expected = D(0)
    lower = D(0)
    for tier in tiers:
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        units = max(D(0), EXACT.subtract(top, lower))
        if units > 0:
            expected = EXACT.add(expected, EXACT.add(EXACT.multiply(units, tier.unit_amount), tier.flat_amount))
        if tier.up_to is not None:
            lower = tier.up_to
    assert line.exact_amount == expected
    assert sum((t.quantity for t in line.tiers), D(0)) == quantity


@given(tiers=tier_lists(), data=st.data())
def test_volume_and_graduated_agree_within_the_first_tier(tiers: tuple[Tier, ...], data: st.DataObject) -> None:
    first = tiers[0].up_to
    assert first is not None
    quantity = data.draw(st.decimals(min_value=0, max_value=first, places=3))
    graduated = price_line(tiered(PricingModel.GRADUATED, tiers), quantity, D(0), "USD")
    volume = price_line(tiered(PricingModel.VOLUME, tiers), quantity, D(0), "USD")
    assert graduated.exact_amount == volume.exact_amount


@given(
    model=st.sampled_from(list(PricingModel)),
    tiers=tier_lists(),
    quantity=quantities,
    included=quantities,
    unit=amounts,
    size=st.decimals(min_value=D("0.001"), max_value=10**6, places=3),
)
def test_amounts_are_exact_decimals_and_never_negative(
    model: PricingModel, tiers: tuple[Tier, ...], quantity: Decimal, included: Decimal, unit: Decimal, size: Decimal
) -> None:
    price = Price("p", "m", model, "USD", unit_amount=unit, package_size=size, tiers=tiers)
    line = price_line(price, quantity, included, "USD")
    for value in (line.amount, line.exact_amount, line.billable, *(t.amount for t in line.tiers)):
        assert isinstance(value, Decimal)
        assert value >= 0
    assert line.amount.as_tuple().exponent == -2
    assert abs(line.amount - line.exact_amount) <= D("0.005")


@given(
    st.decimals(D(0), D(5000), places=3),
    st.decimals(D(0), D(200), places=1),
    st.sampled_from(
        [
            tiered(PricingModel.GRADUATED),
            tiered(PricingModel.VOLUME),
            per_unit("0.013"),
            package("10", "1.5"),
            package("10", "1.5", PackageRounding.DOWN),
            Price("m_no_charge", "m", PricingModel.PER_UNIT, None),
        ]
    ),
)
def test_the_exact_amount_alone_is_the_lines(quantity: Decimal, included: Decimal, price: Price) -> None:
    from metering.domain.pricing import exact_amount

    assert exact_amount(price, quantity, included) == price_line(price, quantity, included, "USD").exact_amount
