"""The ledger audit: counters recomputed from events, through every write path."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from metering.v1 import customer_pb2, events_pb2, ingest_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import TEST_CATALOG, ServiceProcess, audit, commit, record, reserve, run_sql

# Slow tier: services of its own and the `metering audit` command.
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub


def _write_through_every_path(stub: Stub, customer: str) -> None:
    for i in range(3):
        record(stub, customer, f"t{i}", "7")
    record(stub, customer, "t0", "7")  # a replay
    record(stub, customer, "c1", "", meter="calls")
    record(stub, customer, "p1", "4", meter="peak")
    record(stub, customer, "s1", "9", meter="storage")
    for user in ("ann", "bob", "ann"):
        record(stub, customer, f"u-{user}-{os.urandom(2).hex()}", "", meter="users", properties={"user_id": user})
    reserve(stub, customer, "r1", "20")
    commit(stub, customer, "r1", "12")
    stub.VoidUsage(events_pb2.VoidUsageRequest(customer_id=customer, transaction_id="t1", reason="test"), timeout=10)


def test_audit_finds_every_counter_consistent_after_every_write_path(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer()
    _write_through_every_path(stub, customer)
    report = audit(database_url, [customer])
    assert report.ok, report
    assert report.customers == 1
    assert report.events == 10  # 3 tokens + calls + peak + storage + 3 users + the commit
    assert report.voided == 1
    assert report.counters == 5


def test_audit_reports_a_tampered_counter_and_a_lost_counter(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer()
    _write_through_every_path(stub, customer)
    tamper = "UPDATE meter_counters SET used = used + 1 WHERE customer_id = $1 AND meter_slug = 'tokens'"
    run_sql(database_url, tamper, customer)
    run_sql(database_url, "DELETE FROM meter_unique_values WHERE customer_id = $1 AND value = 'bob'", customer)
    report = audit(database_url, [customer])
    assert not report.ok
    [mismatch] = report.mismatches
    assert (mismatch.meter_slug, mismatch.stored_used, mismatch.expected_used) == ("tokens", Decimal(27), Decimal(26))
    assert report.unique_value_mismatches == 1


def test_audit_reports_events_and_counters_without_their_customer(database_url: str) -> None:
    """No foreign key checks an event's customer per row (migration 0014): the
    writers' lock on the customer row proves it, and the audit counts what a
    writer that skipped the lock would leave."""
    ghost = f"ghost-{os.urandom(4).hex()}"
    run_sql(
        database_url,
        "INSERT INTO usage_events (customer_id, event_id, transaction_id, meter_slug, price_slug, quantity, "
        "event_time, period_start) VALUES ($1, gen_random_uuid(), 't', 'tokens', 'tokens', 1, now(), now())",
        ghost,
    )
    run_sql(
        database_url,
        "INSERT INTO meter_counters (customer_id, meter_slug, period_start, used, event_count) "
        "VALUES ($1, 'tokens', now(), 1, 1)",
        ghost,
    )
    report = audit(database_url, [ghost])
    assert not report.ok
    assert report.orphan_rows == 2
    run_sql(database_url, "DELETE FROM usage_events WHERE customer_id = $1", ghost)
    run_sql(database_url, "DELETE FROM meter_counters WHERE customer_id = $1", ghost)


def test_recording_for_an_unknown_customer_writes_nothing(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    """The invariant the dropped foreign key checked, kept by the writers: a
    batch naming a customer that does not exist writes no event and no
    counter of it, and the batch's other events are recorded."""
    known, ghost = new_customer("open"), f"ghost-{os.urandom(4).hex()}"
    with pytest.raises(grpc.RpcError) as refused:
        record(stub, ghost, "lone", "3")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    reply = stub.RecordUsageBatch(
        ingest_pb2.RecordUsageBatchRequest(
            events=[
                usage_pb2.RecordUsageRequest(customer_id=c, meter_slug="tokens", quantity="2", transaction_id=t)
                for c, t in ((known, "a"), (ghost, "b"), (known, "c"))
            ]
        ),
        timeout=10,
    )
    ok, not_found = grpc.StatusCode.OK.value[0], grpc.StatusCode.NOT_FOUND.value[0]
    assert [r.status.code for r in reply.results] == [ok, not_found, ok]
    [row] = run_sql(
        database_url,
        "SELECT (SELECT count(*) FROM usage_events WHERE customer_id = $1) AS events, "
        "(SELECT count(*) FROM meter_counters WHERE customer_id = $1) AS counters",
        ghost,
    )
    assert (row["events"], row["counters"]) == (0, 0)
    assert audit(database_url, [known, ghost]).ok


def test_audit_command_exit_status(stub: Stub, new_customer: Callable[..., str], database_url: str) -> None:
    customer = new_customer()
    record(stub, customer, "only", "3")
    env = {**os.environ, "METERING_DATABASE_URL": database_url, "METERING_CATALOG": str(TEST_CATALOG)}
    command = [sys.executable, "-m", "metering", "audit", "--customer", customer]
    clean = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "ledger consistent" in clean.stdout
    assert "customers 1, events 1 (0 voided), counters 1" in clean.stdout
    run_sql(database_url, "UPDATE meter_counters SET event_count = 2 WHERE customer_id = $1", customer)
    broken = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert broken.returncode == 1
    assert f"MISMATCH {customer} tokens" in broken.stdout
    assert "LEDGER INCONSISTENT" in broken.stdout


def test_audit_reports_a_tampered_rollup_bucket_and_a_lost_distinct_value(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer()
    _write_through_every_path(stub, customer)
    assert audit(database_url, [customer]).rollups == 5  # one bucket per meter: every event in this hour
    tamper = "UPDATE usage_rollups SET quantity_sum = quantity_sum + 1 WHERE customer_id = $1 AND meter_slug = 'tokens'"
    run_sql(database_url, tamper, customer)
    run_sql(database_url, "DELETE FROM usage_rollup_values WHERE customer_id = $1 AND value = 'bob'", customer)
    report = audit(database_url, [customer])
    assert not report.ok
    assert sorted((m.meter_slug, m.value) for m in report.rollup_mismatches) == [("tokens", None), ("users", "bob")]
    assert not report.mismatches  # the counters are untouched


def test_a_changed_layout_rebuilds_the_rollups_at_start_up(make_database: Callable[[], str], tmp_path: Path) -> None:
    """A catalog that declares other dimensions: the service rebuilds that
    meter's buckets from the events before it serves, and the audit agrees."""
    url = make_database()
    first = ServiceProcess(url).start()
    try:
        with grpc.insecure_channel(first.target) as channel:
            own = metering_service_pb2_grpc.MeteringServiceStub(channel)
            own.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id="layout", plan_slug="soft"), timeout=10)
            for i, (region, tier) in enumerate([("eu", "a"), ("eu", "b"), ("us", "a")]):
                record(own, "layout", f"l{i}", "2", properties={"region": region, "tier": tier})
    finally:
        first.stop()
    by_tier = tmp_path / "catalog.toml"
    by_tier.write_text(TEST_CATALOG.read_text().replace('dimensions = ["region", "tier"]', 'dimensions = ["tier"]'))
    second = ServiceProcess(url, catalog=by_tier).start()
    try:
        rows = run_sql(url, "SELECT dimensions, quantity_sum FROM usage_rollups WHERE meter_slug = 'tokens' ORDER BY 2")
        assert [(row["dimensions"], row["quantity_sum"]) for row in rows] == [
            ('{"tier": "b"}', Decimal(2)),
            ('{"tier": "a"}', Decimal(4)),
        ]
    finally:
        second.stop()
    assert audit(url, catalog=by_tier).ok
