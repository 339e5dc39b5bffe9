"""UsageRecorder against a real server: per-event results from batches,
linger, back-pressure, flush on close, and 20,000 events from 8 tasks across a
SIGKILL and restart of the service, each in the ledger exactly once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from metering.client import (
    AsyncMeteringClient,
    Connection,
    InvalidRequest,
    LimitExceeded,
    RecordResult,
    RetryNotice,
    RetryPolicy,
    UsageRecord,
    UsageRecorder,
)
from tests.faults import Replica
from tests.support import TEST_CATALOG, ServiceProcess, eventually, hold_counter, run_sql, service_waits_on_lock

# Slow tier: a service it kills and restarts (Replica).
pytestmark = pytest.mark.slow


def test_each_future_gets_its_own_events_answer(service: ServiceProcess, new_customer: Callable[..., str]) -> None:
    customer = new_customer()

    async def go() -> None:
        async with (
            AsyncMeteringClient(Connection(target=service.target)) as client,
            UsageRecorder(client, max_batch=10, linger=0.2) as recorder,
        ):
            started = time.monotonic()
            futures = [
                await recorder.record(UsageRecord(customer, "tokens", 30, "a")),
                await recorder.record(UsageRecord(customer, "tokens", "x", "bad")),
                await recorder.record(UsageRecord(customer, "tokens", 30, "a")),  # again: a duplicate
                await recorder.record(UsageRecord(customer, "tokens", 80, "over")),  # 70 left of 100
                await recorder.record(UsageRecord(customer, "tokens", 70, "rest")),
            ]
            first = await futures[0]
            waited = time.monotonic() - started
            assert isinstance(first, RecordResult) and not first.duplicate
            with pytest.raises(InvalidRequest) as bad:
                await futures[1]
            assert [v.field for v in bad.value.field_violations] == ["quantity"]
            duplicate = await futures[2]
            assert duplicate.duplicate and duplicate.event.event_id == first.event.event_id
            with pytest.raises(LimitExceeded) as over:
                await futures[3]
            assert (over.value.available, over.value.requested) == (Decimal(70), Decimal(80))
            assert (await futures[4]).balance.available == 0
            # Five events, fewer than max_batch: one batch, sent when the linger ran out.
            assert recorder.stats.batches == 1 and recorder.stats.batch_sizes == {5: 1}
            assert waited >= 0.2

            # close() sends what is queued without waiting for the linger.
            recorder.linger = 30.0
            last = await recorder.record(UsageRecord(customer, "calls", None, "on-close"))
        assert last.done() and (await last).event.transaction_id == "on-close"

    asyncio.run(go())
    rows = run_sql(service.database_url, "SELECT count(*) FROM usage_events WHERE customer_id = $1", customer)
    assert rows[0][0] == 3


def test_record_waits_while_the_queue_is_full(service: ServiceProcess, new_customer: Callable[..., str]) -> None:
    customer = new_customer("open")

    async def go() -> None:
        conn = await asyncpg.connect(service.database_url)
        try:
            async with AsyncMeteringClient(Connection(target=service.target)) as client:
                await client.record_usage(customer, "tokens", 1, transaction_id="warm-up")  # the counter row exists
                lock = await hold_counter(conn, customer)  # the service's next write for the customer waits
                recorder = UsageRecorder(client, max_batch=2, linger=0.0, max_pending=4, max_in_flight=1)
                futures = [await recorder.record(UsageRecord(customer, "tokens", 1, f"e{i}")) for i in range(4)]
                assert await eventually(lambda: service_waits_on_lock(conn), 20)
                fifth = asyncio.ensure_future(recorder.record(UsageRecord(customer, "tokens", 1, "e4")))
                await asyncio.sleep(0.5)
                assert not fifth.done()  # four events pending: the fifth waits for room
                await lock.rollback()
                futures.append(await asyncio.wait_for(fifth, 20))
                await recorder.close()
                assert all(f.done() and not f.result().duplicate for f in futures)
        finally:
            await conn.close()

    asyncio.run(go())


EVENTS, TASKS, BATCH = 20_000, 8, 500


def test_20000_events_from_8_tasks_across_a_restart_land_exactly_once(make_database: Callable[[], str]) -> None:
    database_url = make_database()
    replica = Replica("recorder", database_url, TEST_CATALOG)
    replica.start()
    try:
        asyncio.run(_many_events_across_a_restart(replica, database_url))
    finally:
        replica.generations[-1].stop()


async def _many_events_across_a_restart(replica: Replica, database_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    customers = [f"rec-{tag}-{i}" for i in range(TASKS)]
    retries: list[RetryNotice] = []
    policy = RetryPolicy(max_attempts=30, initial_backoff=0.1, max_backoff=2.0, total_timeout=120.0)
    # Waits for the service while it restarts (the default fails fast when nothing listens).
    client = AsyncMeteringClient(
        Connection(target=replica.target), retry=policy, timeout=30.0, wait_for_ready=True, on_retry=retries.append
    )
    async with client:
        anchor = datetime.now(UTC) - timedelta(days=1)
        for customer in customers:
            await client.upsert_customer(customer, "open", billing_anchor=anchor)
        recorder = UsageRecorder(client, max_batch=BATCH, linger=0.2, max_pending=10 * BATCH)
        futures: list[asyncio.Future[RecordResult]] = []

        async def produce(customer: str) -> None:
            for i in range(EVENTS // TASKS):
                event = UsageRecord(customer, "tokens", Decimal("0.5"), f"{customer}-{i}", properties={"n": str(i)})
                futures.append(await recorder.record(event))

        async def restart_midway() -> float:
            # The kill must find a batch in flight: a call started while the
            # service is down waits for it (waitForReady) and retries nothing.
            # So once a third of the events went out, the last customer's row
            # is locked, and the kill comes while the writer waits on that
            # lock (its share lock of the customers of a batch) with a batch
            # the recorder has not had answered. The last customer, not the
            # first: the tasks queue their events in order (the recorder takes
            # up to max_pending without yielding), so the first customer's
            # may all be written by then, and a fast writer never comes back
            # to it; the last one's are still to be sent.
            async def a_third_sent() -> bool:
                return recorder.stats.events >= EVENTS // 3

            assert await eventually(a_third_sent, 120, interval=0.01)
            lock = watcher.transaction()
            await lock.start()
            await watcher.execute("SELECT 1 FROM customers WHERE customer_id = $1 FOR UPDATE", customers[-1])
            assert await eventually(lambda: service_waits_on_lock(watcher), 60)
            await asyncio.to_thread(replica.kill)
            killed = time.monotonic()
            await lock.rollback()
            await asyncio.sleep(0.5)
            await asyncio.to_thread(replica.start)
            return time.monotonic() - killed

        watcher = await asyncpg.connect(database_url)
        try:
            restart = asyncio.create_task(restart_midway())
            await asyncio.gather(*(produce(c) for c in customers))
            await recorder.close()
            down_for = await restart
        finally:
            await watcher.close()

    assert len(futures) == EVENTS and all(f.done() for f in futures)
    results = [f.result() for f in futures]  # raises if any event was refused or never answered
    duplicates = sum(r.duplicate for r in results)
    sizes = recorder.stats.batch_sizes
    print(
        f"service down {down_for:.2f} s; {len(retries)} batch retries "
        f"({sorted({r.code.name for r in retries})}); {duplicates} events answered as duplicates; "
        f"{recorder.stats.batches} batches, sizes {dict(sorted(sizes.items()))}"
    )
    assert retries, "no batch was in flight across the restart"

    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT (customer_id, transaction_id)) FROM usage_events "
            "WHERE customer_id = ANY($1::text[])",
            customers,
        )
        assert row is not None  # an aggregate without GROUP BY: always one row
        total, distinct = row
    finally:
        await conn.close()
    assert (total, distinct) == (EVENTS, EVENTS)

    # Batches of about the configured size: never more, and nearly every event in a full one.
    assert max(sizes) <= BATCH and sum(size * n for size, n in sizes.items()) == EVENTS
    assert sizes[BATCH] * BATCH >= 0.9 * EVENTS, sizes
