"""metering.client against a real server: typed calls for every RPC, decoded
refusals with the server's figures, refusals never retried, and retries that
converge on exactly one event across a SIGKILL and restart of the server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import grpc
import pytest

from metering.client import (
    Aggregation,
    AsyncMeteringClient,
    Connection,
    EnforcementMode,
    InvalidRequest,
    InvoiceStatus,
    LimitEnforcement,
    LimitExceeded,
    MeteringClient,
    NotFound,
    NotificationType,
    ReservationStatus,
    RetryNotice,
    RetryPolicy,
    TransactionConflict,
    UsageRecord,
    WindowSize,
)
from tests.faults import Replica
from tests.support import TEST_CATALOG, ServiceProcess, hold_counter, metric_value, run_sql, service_waits_on_lock

# Slow tier: a service it kills and restarts (Replica).
pytestmark = pytest.mark.slow

RECORD = "/metering.v1.MeteringService/RecordUsage"


def _client(service: ServiceProcess, **options: object) -> AsyncMeteringClient:
    return AsyncMeteringClient(Connection(target=service.target), **options)  # type: ignore[arg-type]


def test_every_rpc_through_the_typed_async_client(service: ServiceProcess) -> None:
    asyncio.run(_walk(service))


async def _walk(service: ServiceProcess) -> None:
    customer = f"client-{uuid.uuid4().hex[:12]}"
    anchor = datetime.now(UTC) - timedelta(days=1)  # one period, still running: no drafts
    async with _client(service) as client:
        upserted = await client.upsert_customer(customer, "limited", billing_anchor=anchor)
        assert upserted.created and upserted.customer.plan_slug == "limited"
        assert upserted.customer.billing_anchor == anchor
        assert (await client.get_customer(customer)).customer_id == customer

        # A watch from now on: it sees the threshold crossing below.
        watch = client.watch_notifications(customer_id=customer, types=[NotificationType.USAGE_THRESHOLD_CROSSED])
        first_notification = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.5)  # let the stream open before the usage it should see

        recorded = await client.record_usage(
            customer, "tokens", Decimal("30.5"), transaction_id="t1", properties={"region": "eu"}
        )
        assert not recorded.duplicate
        assert recorded.event.quantity == Decimal("30.5") and recorded.event.price_slug == "tokens_premium"
        assert recorded.event.event_time.tzinfo is not None
        balance = recorded.balance
        assert (balance.used, balance.limit, balance.available) == (Decimal("30.5"), Decimal(100), Decimal("69.5"))
        assert balance.aggregation is Aggregation.SUM and balance.limit_enforcement is LimitEnforcement.HARD
        assert recorded.overage == 0
        again = await client.record_usage(
            customer, "tokens", Decimal("30.50"), transaction_id="t1", properties={"region": "eu"}
        )
        assert again.duplicate and again.event.event_id == recorded.event.event_id

        with pytest.raises(TransactionConflict) as conflict:
            await client.record_usage(customer, "tokens", 31, transaction_id="t1", properties={"region": "eu"})
        assert conflict.value.conflicting_fields == ("quantity",)
        assert conflict.value.original_event_id == recorded.event.event_id

        outcomes = await client.record_usage_batch(
            [
                UsageRecord(customer, "tokens", 10, "b1"),
                UsageRecord(customer, "tokens", "1.2.3", "b2"),
                UsageRecord(customer, "tokens", 10, "b1"),  # the same event again: a duplicate
                UsageRecord(customer, "tokens", 1000, "b3"),
            ]
        )
        assert [o.index for o in outcomes] == [0, 1, 2, 3]
        assert outcomes[0].result is not None and not outcomes[0].result.duplicate
        assert isinstance(outcomes[1].error, InvalidRequest)
        assert [v.field for v in outcomes[1].error.field_violations] == ["quantity"]
        assert outcomes[2].result is not None and outcomes[2].result.duplicate
        assert isinstance(outcomes[3].error, LimitExceeded) and outcomes[3].error.available == Decimal("59.5")

        summary = await client.record_usage_stream([UsageRecord(customer, "tokens", 1, f"s{i}") for i in range(3)])
        assert (summary.recorded, summary.duplicates, summary.failed) == (3, 0, 0)

        report = await client.check_balance(customer, "tokens", requested=Decimal("56.5"))
        assert report.requested_allowed is True and report.balances[0].used == Decimal("43.5")
        assert (await client.check_balance(customer, "tokens", requested=57)).requested_allowed is False

        usage = await client.get_usage(customer, ["tokens"], group_by=["region"], window=WindowSize.UNSPECIFIED)
        assert {row.group_values.get("region", ""): row.value for row in usage.rows} == {
            "eu": Decimal("30.5"),
            "": Decimal(13),
        }
        events = await client.list_usage_events(customer, "tokens", page_size=2)
        assert len(events.events) == 2 and events.next_page_token

        bill = await client.estimate_bill(customer)
        assert bill.invoice_status is InvoiceStatus.GATHERING
        assert bill.total.currency == "USD"
        # 43.5 used, 10 included: 33.5 billable at 0.002 USD.
        assert [(line.billable_quantity, line.amount.amount) for line in bill.lines if line.meter_slug == "tokens"] == [
            (Decimal("33.5"), Decimal("0.07"))
        ]

        grant = await client.grant_credits(customer, "tokens", Decimal(50), grant_id="g1", reason="promo")
        assert not grant.duplicate and grant.grant.quantity == 50
        assert [g.grant_id for g in await client.list_grants(customer)] == ["g1"]

        held = await client.reserve_usage(customer, "tokens", 20, reservation_id="r1", ttl=timedelta(minutes=1))
        assert held.reservation.status is ReservationStatus.HELD and held.balance.reserved == 20
        committed = await client.commit_reservation(customer, "r1", Decimal(15), properties={"region": "us"})
        assert committed.reservation.committed_quantity == 15 and committed.event.transaction_id == "r1"
        await client.reserve_usage(customer, "tokens", 5, reservation_id="r2")
        released = await client.release_reservation(customer, "r2")
        assert released.reservation.status is ReservationStatus.RELEASED

        voided = await client.void_usage(customer, "s0", "test void")
        assert voided.event.void_time is not None and voided.event.void_reason == "test void"

        assert (await client.list_invoices(customer)).invoices == ()
        with pytest.raises(NotFound) as missing:
            await client.get_invoice(str(uuid.uuid4()))
        assert missing.value.kind == "invoice"

        # Used 57.5 (43.5 + 15 committed - 1 voided) of 150 (the limit and the grant): 65 more crosses
        # the default approaching threshold (80%, 120).
        crossing = await client.record_usage(
            customer, "tokens", 65, transaction_id="t-80", enforcement=EnforcementMode.ALLOW_OVERAGE
        )
        assert crossing.balance.used == Decimal("122.5") and crossing.balance.approaching_limit
        notification = await asyncio.wait_for(first_notification, 20)
        assert notification.type is NotificationType.USAGE_THRESHOLD_CROSSED
        assert notification.customer_id == customer and notification.cursor
        await watch.aclose()


def test_the_sync_client_and_a_decoded_limit_with_the_servers_figures(
    service: ServiceProcess, new_customer: Callable[..., str]
) -> None:
    customer = new_customer()
    with MeteringClient(Connection(target=service.target)) as client:
        assert client.record_usage(customer, "tokens", 40, transaction_id="first").balance.available == 60
        before = client.check_balance(customer, "tokens").balances[0]
        with pytest.raises(LimitExceeded) as caught:
            client.record_usage(customer, "tokens", Decimal(61), transaction_id="over")
    limit = caught.value
    assert limit.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (limit.meter, limit.plan) == ("tokens", "limited")
    assert (limit.limit, limit.available, limit.requested) == (Decimal(100), Decimal(60), Decimal(61))
    # The server's own period end for this meter, as CheckBalance reports it.
    assert limit.period_end == before.period_end
    rows = run_sql(service.database_url, "SELECT count(*) FROM usage_events WHERE customer_id = $1", customer)
    assert rows[0][0] == 1  # the refused event was not written


def test_a_refusal_is_never_retried(service: ServiceProcess, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    retries: list[RetryNotice] = []

    def requests(code: str) -> float:
        return metric_value(
            service.scrape(),
            "metering_grpc_requests_total",
            method=RECORD,
            code=code,
            caller="anonymous",
            protocol="grpc",
        )

    async def refused() -> None:
        async with _client(service, on_retry=retries.append, retry=RetryPolicy(max_attempts=5)) as client:
            with pytest.raises(LimitExceeded):
                await client.record_usage(customer, "tokens", 500, transaction_id="too-much")
            with pytest.raises(InvalidRequest):
                await client.record_usage(customer, "tokens", "-1", transaction_id="negative")
            with pytest.raises(NotFound):
                await client.record_usage("nobody-at-all", "tokens", 1, transaction_id="x")

    exhausted, invalid, missing = requests("RESOURCE_EXHAUSTED"), requests("INVALID_ARGUMENT"), requests("NOT_FOUND")
    asyncio.run(refused())
    # Exactly one call reached the server per refusal.
    assert requests("RESOURCE_EXHAUSTED") - exhausted == 1
    assert requests("INVALID_ARGUMENT") - invalid == 1
    assert requests("NOT_FOUND") - missing == 1
    assert retries == []


def test_retries_converge_on_exactly_one_event_across_a_sigkill_and_restart(
    make_database: Callable[[], str],
) -> None:
    database_url = make_database()
    replica = Replica("client", database_url, TEST_CATALOG)
    replica.start()
    try:
        asyncio.run(_killed_mid_call(replica, database_url))
    finally:
        replica.generations[-1].stop()


async def _killed_mid_call(replica: Replica, database_url: str) -> None:
    customer = f"killed-{uuid.uuid4().hex[:8]}"
    retries: list[RetryNotice] = []
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.2, max_backoff=2.0, total_timeout=90.0)
    # Waits for the service while it restarts (the default fails fast when nothing listens).
    async with AsyncMeteringClient(
        Connection(target=replica.target), retry=policy, timeout=30.0, wait_for_ready=True, on_retry=retries.append
    ) as client:
        await client.upsert_customer(customer, "open", billing_anchor=datetime.now(UTC) - timedelta(days=1))
        await client.record_usage(customer, "tokens", 1, transaction_id="warm-up")  # the counter row exists
        conn = await asyncpg.connect(database_url)
        try:
            lock = await hold_counter(conn, customer)
            call = asyncio.create_task(client.record_usage(customer, "tokens", 7, transaction_id="across-the-kill"))
            deadline = time.monotonic() + 20
            while not await service_waits_on_lock(conn):  # the call is inside the server now
                assert time.monotonic() < deadline, "the call never reached the ledger"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(replica.kill)
            await lock.rollback()
            await asyncio.sleep(0.5)  # the client sees the connection drop and retries against nothing
            await asyncio.to_thread(replica.start)
            result = await asyncio.wait_for(call, 60)
            stored = await conn.fetch(
                "SELECT quantity FROM usage_events WHERE customer_id = $1 AND transaction_id = $2",
                customer,
                "across-the-kill",
            )
        finally:
            await conn.close()
    print(f"retries: {[(r.attempt, r.code.name, round(r.delay, 3)) for r in retries]}; duplicate={result.duplicate}")
    assert retries and retries[0].code == grpc.StatusCode.UNAVAILABLE
    assert result.event.transaction_id == "across-the-kill" and result.event.quantity == 7
    assert [row["quantity"] for row in stored] == [Decimal(7)]
    assert result.balance.used == 8
