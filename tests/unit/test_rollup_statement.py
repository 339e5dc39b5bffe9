"""The batch statement's rollup CTEs: the unique-value part only when a batch has unique values."""

from __future__ import annotations

from metering.ledger.rollups import ROLLUP_UPSERTS, rollup_upserts


def test_a_batch_without_unique_values_writes_no_unique_value_rollups() -> None:
    ctes = rollup_upserts(False)
    assert ctes.startswith("rollup_rows AS (")
    assert "usage_rollup_values" not in ctes
    assert "INSERT INTO usage_rollups" in ctes


def test_a_batch_with_unique_values_writes_both_rollups() -> None:
    ctes = rollup_upserts(True)
    assert ctes == ROLLUP_UPSERTS
    assert ctes.index("INSERT INTO usage_rollups") < ctes.index("INSERT INTO usage_rollup_values")
    assert ctes.count(" AS (") == 2
