"""epoch_micros: aware datetimes as whole microseconds since the Unix epoch
(the batching writer's wire form of a timestamptz; the SQL side is checked
against PostgreSQL in tests/integration/test_epoch_micros.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.ledger.sql import epoch_micros

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Hypothesis takes naive bounds and attaches the zones itself.
aware = st.datetimes(
    min_value=datetime(1, 1, 2),  # noqa: DTZ001
    max_value=datetime(9999, 12, 30),  # noqa: DTZ001
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))]),
)


def test_known_values() -> None:
    assert epoch_micros([EPOCH, EPOCH + timedelta(microseconds=1), EPOCH - timedelta(microseconds=1)]) == [0, 1, -1]
    assert epoch_micros([datetime(2026, 12, 2, 12, 0, 0, 250000, tzinfo=UTC)]) == [1_796_212_800_250_000]


@given(st.lists(aware, max_size=50))
def test_each_value_is_its_exact_offset_from_the_epoch(values: list[datetime]) -> None:
    micros = epoch_micros(values)
    assert len(micros) == len(values)
    assert [EPOCH + timedelta(microseconds=m) for m in micros] == values


@given(aware)
def test_repeated_values_and_the_same_instant_in_another_zone_agree(value: datetime) -> None:
    elsewhere = value.astimezone(timezone(timedelta(hours=9)))
    assert epoch_micros([value, value, elsewhere]) == epoch_micros([value]) * 3


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(TypeError):
        epoch_micros([datetime(2026, 1, 1)])  # noqa: DTZ001 (naive on purpose)
