"""Exact decimal quantities: the one place that parses and formats them.

No float ever touches a quantity or an amount. Arithmetic runs in a context
wide enough that sums of valid quantities never round, and that traps any
operation that would (Inexact), so a silent rounding is impossible.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow

# Wire limits for a quantity: 20 integer digits, 9 fractional digits.
MAX_INTEGER_DIGITS = 20
MAX_FRACTION_DIGITS = 9

# Plain decimal notation only: no sign, exponent, white space, "inf" or "nan".
# \Z, not $: "$" also matches before a trailing newline, and Decimal("5\n") is 5.
_DECIMAL_RE = re.compile(r"^(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?\Z")

# 100 digits hold any sum of up to 10^70 maximal quantities exactly.
EXACT = Context(prec=100, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
# For ratios that are rounded on purpose right after (e.g. percent used).
ROUNDING = Context(prec=100, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, DivisionByZero, Overflow])

ZERO = Decimal(0)
ONE = Decimal(1)
HUNDRED = Decimal(100)
# Percentages are reported with two decimals ("80.00").
PERCENT_STEP = Decimal("0.01")
FULL_PERCENT = Decimal("100.00")


class DecimalFormatError(ValueError):
    """A string is not an acceptable decimal; the message says why."""


def parse_decimal(
    text: str,
    *,
    max_integer_digits: int = MAX_INTEGER_DIGITS,
    max_fraction_digits: int = MAX_FRACTION_DIGITS,
) -> Decimal:
    """Parse a non-negative decimal in plain notation, refusing anything inexact."""
    match = _DECIMAL_RE.match(text)
    if match is None:
        raise DecimalFormatError(
            "must be a non-negative decimal in plain notation such as '12' or '0.25' "
            "(no sign, exponent, spaces or thousands separators)"
        )
    integer = match.group("int").lstrip("0")
    fraction = (match.group("frac") or "").rstrip("0")
    if len(integer) > max_integer_digits:
        raise DecimalFormatError(f"has more than {max_integer_digits} integer digits")
    if len(fraction) > max_fraction_digits:
        raise DecimalFormatError(f"has more than {max_fraction_digits} fractional digits")
    return Decimal(text)


# Texts already formatted. Equal decimals have one canonical text (1, 1.0 and
# 1.00 all give "1"), so a value that compares equal may share it; a response
# formats several per event (quantity, used, available, limit...) and most are
# values seen before. Bounded: past the size it starts over.
_FORMATTED: dict[Decimal, str] = {}
_FORMATTED_KEPT = 8192


def format_decimal(value: Decimal) -> str:
    """Canonical text: plain notation, no exponent, no trailing fractional zeros."""
    text = _FORMATTED.get(value)
    if text is not None:
        return text
    if value == 0:
        return "0"  # also folds "-0" and "0.000"
    text = format(value.normalize(EXACT), "f")
    if len(_FORMATTED) >= _FORMATTED_KEPT:
        _FORMATTED.clear()
    _FORMATTED[value] = text
    return text


def add(*values: Decimal) -> Decimal:
    """Exact sum."""
    if len(values) == 2:  # the common case, without the loop (one operation: an inexact sum traps)
        return EXACT.add(values[0], values[1])
    total = ZERO
    for value in values:
        total = EXACT.add(total, value)
    return total


def sub(a: Decimal, b: Decimal) -> Decimal:
    """Exact difference."""
    return EXACT.subtract(a, b)


def percent(part: Decimal, whole: Decimal) -> Decimal:
    """part / whole * 100, rounded half-even to 2 decimals. whole must be > 0."""
    ratio = ROUNDING.multiply(ROUNDING.divide(part, whole), HUNDRED)
    return ratio.quantize(PERCENT_STEP, context=ROUNDING)
