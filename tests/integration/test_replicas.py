"""Two service processes on one database: no overspend, read-your-writes, migrations."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest

from metering.ledger.migrate import load_migrations
from metering.v1 import customer_pb2, ingest_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import ROOT, ServiceProcess, audit, calls_across, metric_value, run_sql

# Slow tier: a second service and concurrent CLI processes.
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub


@pytest.fixture(scope="module")
def second_service(database_url: str, service: ServiceProcess) -> Iterator[ServiceProcess]:
    """Another replica on the same database as the session's service."""
    replica = ServiceProcess(database_url).start()
    yield replica
    replica.stop()


def test_hard_limit_holds_across_two_processes(
    service: ServiceProcess, second_service: ServiceProcess, database_url: str, new_customer: Callable[..., str]
) -> None:
    customer = new_customer()  # tokens: hard limit 100
    # 200 calls in flight at once, alternating between the two replicas.
    requests = [
        usage_pb2.RecordUsageRequest(
            customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=f"race-{i}"
        )
        for i in range(200)
    ]
    codes = calls_across([service, second_service], "RecordUsage", requests)
    assert codes.count(grpc.StatusCode.OK) == 100
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 100
    rows = run_sql(database_url, "SELECT count(*), sum(quantity) FROM usage_events WHERE customer_id = $1", customer)
    assert (rows[0][0], rows[0][1]) == (100, 100)
    counter = run_sql(database_url, "SELECT used, event_count FROM meter_counters WHERE customer_id = $1", customer)
    assert (counter[0]["used"], counter[0]["event_count"]) == (100, 100)


def test_concurrent_calls_share_write_transactions(service: ServiceProcess, new_customer: Callable[..., str]) -> None:
    customer = new_customer(plan="open")
    before = service.scrape()
    with grpc.insecure_channel(service.target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        futures = [
            stub.RecordUsage.future(
                usage_pb2.RecordUsageRequest(
                    customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=f"b{i}"
                ),
                timeout=60,
            )
            for i in range(300)
        ]
        assert all(not f.result().duplicate for f in futures)
    after = service.scrape()
    events = metric_value(after, "metering_write_batch_events_sum") - metric_value(
        before, "metering_write_batch_events_sum"
    )
    batches = metric_value(after, "metering_write_batch_events_count") - metric_value(
        before, "metering_write_batch_events_count"
    )
    assert events == 300
    assert batches < 300  # calls in flight together were written together


def test_concurrent_retries_of_one_transaction_id_record_once(
    service: ServiceProcess, second_service: ServiceProcess, database_url: str, new_customer: Callable[..., str]
) -> None:
    customer = new_customer(plan="open")
    channels = [grpc.insecure_channel(s.target) for s in (service, second_service)]
    stubs = [metering_service_pb2_grpc.MeteringServiceStub(c) for c in channels]
    request = usage_pb2.RecordUsageRequest(customer_id=customer, meter_slug="tokens", quantity="5", transaction_id="r")
    try:
        futures = [stubs[i % 2].RecordUsage.future(request, timeout=60) for i in range(40)]
        responses = [f.result() for f in futures]
    finally:
        for channel in channels:
            channel.close()
    assert len({r.event.event_id for r in responses}) == 1
    assert sum(not r.duplicate for r in responses) == 1
    rows = run_sql(database_url, "SELECT count(*) FROM usage_events WHERE customer_id = $1", customer)
    assert rows[0][0] == 1
    counter = run_sql(database_url, "SELECT used FROM meter_counters WHERE customer_id = $1", customer)
    assert counter[0]["used"] == 5


def test_concurrent_batches_of_the_same_transaction_ids_record_once(
    service: ServiceProcess, second_service: ServiceProcess, database_url: str, new_customer: Callable[..., str]
) -> None:
    """Batches of the common case (decided as columns) racing on two replicas:
    each transaction id is recorded once, every answer names the same event."""
    customers = [new_customer(plan="open") for _ in range(2)]
    events = [
        usage_pb2.RecordUsageRequest(
            customer_id=customers[i % 2], meter_slug="tokens", quantity=str(i % 7 + 1), transaction_id=f"b{i}"
        )
        for i in range(60)
    ]
    request = ingest_pb2.RecordUsageBatchRequest(events=events)
    channels = [grpc.insecure_channel(s.target) for s in (service, second_service)]
    stubs = [metering_service_pb2_grpc.MeteringServiceStub(c) for c in channels]
    try:
        futures = [stubs[i % 2].RecordUsageBatch.future(request, timeout=60) for i in range(12)]
        responses = [f.result() for f in futures]
    finally:
        for channel in channels:
            channel.close()
    for index in range(len(events)):
        answers = [r.results[index].response for r in responses]
        assert all(r.results[index].status.code == 0 for r in responses)
        assert len({a.event.event_id for a in answers}) == 1
        assert sum(not a.duplicate for a in answers) == 1
    rows = run_sql(database_url, "SELECT count(*) FROM usage_events WHERE customer_id = ANY($1::text[])", customers)
    assert rows[0][0] == len(events)
    used = run_sql(
        database_url, "SELECT sum(used) AS used FROM meter_counters WHERE customer_id = ANY($1::text[])", customers
    )
    assert used[0]["used"] == sum(i % 7 + 1 for i in range(len(events)))
    assert audit(database_url, customers).ok


def test_read_your_writes_across_processes(
    service: ServiceProcess, second_service: ServiceProcess, new_customer: Callable[..., str]
) -> None:
    customer = new_customer(plan="open")
    with grpc.insecure_channel(service.target) as a, grpc.insecure_channel(second_service.target) as b:
        writer, reader = (
            metering_service_pb2_grpc.MeteringServiceStub(a),
            metering_service_pb2_grpc.MeteringServiceStub(b),
        )
        for i in range(1, 51):
            writer, reader = reader, writer  # alternate which replica writes
            writer.RecordUsage(
                usage_pb2.RecordUsageRequest(
                    customer_id=customer, meter_slug="tokens", quantity="2", transaction_id=f"ryw-{i}"
                ),
                timeout=10,
            )
            balance = reader.CheckBalance(
                usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug="tokens"), timeout=10
            )
            assert balance.balances[0].used == str(2 * i)


def test_customer_created_on_one_replica_is_visible_on_the_other(
    service: ServiceProcess, second_service: ServiceProcess
) -> None:
    with grpc.insecure_channel(service.target) as a, grpc.insecure_channel(second_service.target) as b:
        metering_service_pb2_grpc.MeteringServiceStub(a).UpsertCustomer(
            customer_pb2.UpsertCustomerRequest(customer_id="replica-visible", plan_slug="open"), timeout=10
        )
        seen = metering_service_pb2_grpc.MeteringServiceStub(b).GetCustomer(
            customer_pb2.GetCustomerRequest(customer_id="replica-visible"), timeout=10
        )
    assert seen.customer.plan_slug == "open"


def test_replicas_migrating_at_once_do_not_race(make_database: Callable[[], str]) -> None:
    url = make_database()
    env = {"METERING_DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "metering", "migrate"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], outputs
    every = ", ".join(f"{m.version:04d}_{m.name}" for m in load_migrations())
    assert sum(f"applied: {every}" in out for out in outputs) == 1, outputs
    assert sum("up to date" in out for out in outputs) == 3, outputs
    versions = run_sql(url, "SELECT version FROM schema_migrations ORDER BY version")
    assert [row["version"] for row in versions] == [m.version for m in load_migrations()]


def test_a_plan_change_on_one_replica_shows_at_once_on_another(
    service: ServiceProcess, second_service: ServiceProcess
) -> None:
    customer = f"plan-switch-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(service.target) as a, grpc.insecure_channel(second_service.target) as b:
        writer, reader = (
            metering_service_pb2_grpc.MeteringServiceStub(a),
            metering_service_pb2_grpc.MeteringServiceStub(b),
        )
        for plan in ("open", "limited", "soft", "open"):
            writer.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug=plan), timeout=10)
            # The reader has the customer cached from the previous round.
            balance = reader.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id=customer), timeout=10)
            assert balance.plan_slug == plan
