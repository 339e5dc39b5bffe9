"""BillingPeriod: a period that always ends, equal by value to the plain period of the same span."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from metering.domain.errors import PeriodClosed
from metering.domain.periods import BillingPeriod, Period, ResetPeriod, billing_period_containing

ANCHOR = datetime(2026, 1, 31, tzinfo=UTC)


def test_a_billing_period_equals_and_hashes_like_the_period_of_the_same_span() -> None:
    billing = billing_period_containing(datetime(2026, 2, 10, tzinfo=UTC), ANCHOR, ResetPeriod.MONTH)
    plain = Period(billing.start, billing.end)
    assert billing == plain and hash(billing) == hash(plain)
    assert {billing, plain} == {plain}
    assert billing.end == datetime(2026, 2, 28, tzinfo=UTC)


def test_a_period_is_never_equal_to_something_else() -> None:
    period = Period(ANCHOR, None)
    assert period != (ANCHOR, None)
    assert period.__eq__(object()) is NotImplemented


def test_a_period_that_never_resets_cannot_be_a_billing_period() -> None:
    with pytest.raises(ValueError, match="never ends"):
        billing_period_containing(datetime(2026, 2, 10, tzinfo=UTC), ANCHOR, ResetPeriod.NONE)


def test_a_closed_period_carries_its_end() -> None:
    closed = PeriodClosed("tx", period=BillingPeriod(ANCHOR, datetime(2026, 2, 28, tzinfo=UTC)), invoice_id="inv")
    assert closed.end == datetime(2026, 2, 28, tzinfo=UTC)
