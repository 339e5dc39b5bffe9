from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.domain.decimals import EXACT, DecimalFormatError, add, format_decimal, parse_decimal, percent


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", "0"),
        ("1", "1"),
        ("1.50", "1.5"),
        ("0.000", "0"),
        ("007", "7"),
        ("100", "100"),
        ("12345678901234567890.123456789", "12345678901234567890.123456789"),
        ("0.000000001", "0.000000001"),
    ],
)
def test_parse_and_format(text: str, expected: str) -> None:
    assert format_decimal(parse_decimal(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-1",
        "+1",
        "1e3",
        "1E3",
        "NaN",
        "Infinity",
        "inf",
        " 1",
        "1 ",
        "1,000",
        "1.",
        ".5",
        "0x10",
        "1_000",
        "0.0000000001",
        "123456789012345678901",
        "١٢",
        "5\n",
    ],
)
def test_parse_refuses(text: str) -> None:
    with pytest.raises(DecimalFormatError):
        parse_decimal(text)


def test_trailing_zeros_do_not_count_against_precision() -> None:
    assert parse_decimal("1.1000000000000") == Decimal("1.1")
    assert parse_decimal("000000000000000000000001") == 1


@given(st.decimals(min_value=0, max_value=Decimal("9" * 20), places=9, allow_nan=False, allow_infinity=False))
def test_format_round_trips(value: Decimal) -> None:
    text = format_decimal(value)
    assert "E" not in text and "e" not in text
    assert parse_decimal(text) == value


@given(st.lists(st.decimals(min_value=0, max_value=Decimal("9" * 20), places=9), max_size=50))
def test_sums_are_exact(values: list[Decimal]) -> None:
    # Reference in integers of 10^-9: Python's default 28-digit Decimal context
    # would round these sums, which is what `add` must never do.
    exact_nanos = sum(int(v.scaleb(9, EXACT)) for v in values)
    assert int(add(*values).scaleb(9, EXACT)) == exact_nanos


def test_percent_rounds_half_even_to_two_places() -> None:
    assert percent(Decimal(1), Decimal(3)) == Decimal("33.33")
    assert percent(Decimal(2), Decimal(3)) == Decimal("66.67")
    assert percent(Decimal("0.125"), Decimal(100)) == Decimal("0.12")  # half-even
    assert percent(Decimal("0.135"), Decimal(100)) == Decimal("0.14")
    assert str(percent(Decimal(80), Decimal(100))) == "80.00"
