"""SyncUsageRecorder (the blocking twin of UsageRecorder) against a real server: per-event
results from batches, linger, flush, close, back-pressure, and 6,000 events from 4 threads
across a SIGKILL and restart of the service, each in the ledger exactly once."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from metering.client import (
    Connection,
    InvalidRequest,
    LimitExceeded,
    MeteringClient,
    RecordResult,
    RetryNotice,
    RetryPolicy,
    SyncUsageRecorder,
    UsageRecord,
)
from tests.faults import Replica
from tests.support import TEST_CATALOG, ServiceProcess, eventually, hold_counter, run_sql, service_waits_on_lock


def test_each_future_gets_its_own_events_answer(service: ServiceProcess, new_customer: Callable[..., str]) -> None:
    customer = new_customer()  # plan "limited": 100 tokens
    with (
        MeteringClient(Connection(target=service.target)) as client,
        SyncUsageRecorder(client, max_batch=10, linger=0.2) as recorder,
    ):
        futures = [
            recorder.record(UsageRecord(customer, "tokens", 30, "a")),
            recorder.record(UsageRecord(customer, "tokens", "x", "bad")),
            recorder.record(UsageRecord(customer, "tokens", 30, "a")),  # again: a duplicate
            recorder.record(UsageRecord(customer, "tokens", 80, "over")),  # 70 left of 100
            recorder.record(UsageRecord(customer, "tokens", 70, "rest")),
        ]
        first = futures[0].result(timeout=20)
        assert isinstance(first, RecordResult) and not first.duplicate
        with pytest.raises(InvalidRequest) as bad:
            futures[1].result()
        assert [v.field for v in bad.value.field_violations] == ["quantity"]
        duplicate = futures[2].result()
        assert duplicate.duplicate and duplicate.event.event_id == first.event.event_id
        with pytest.raises(LimitExceeded) as over:
            futures[3].result()
        assert (over.value.available, over.value.requested) == (Decimal(70), Decimal(80))
        assert futures[4].result().balance.available == 0
        # Five events, fewer than max_batch: one batch, sent when the linger ran out.
        assert recorder.stats.batches == 1 and recorder.stats.batch_sizes == {5: 1}

        # flush() sends what is queued without waiting for the linger, and waits for the answers.
        recorder.linger = 30.0
        flushed = recorder.record(UsageRecord(customer, "calls", None, "flushed"))
        recorder.flush()
        assert flushed.done() and flushed.result().event.transaction_id == "flushed"

        # close() (leaving `with`) sends what is queued, again without waiting for the linger.
        last = recorder.record(UsageRecord(customer, "calls", None, "on-close"))
    assert last.done() and last.result().event.transaction_id == "on-close"
    assert recorder.stats.batches == 3
    with pytest.raises(RuntimeError, match="closed"):
        recorder.record(UsageRecord(customer, "calls", None, "too-late"))
    rows = run_sql(service.database_url, "SELECT count(*) FROM usage_events WHERE customer_id = $1", customer)
    assert rows[0][0] == 4


def test_record_blocks_while_the_queue_is_full(service: ServiceProcess, new_customer: Callable[..., str]) -> None:
    customer = new_customer("open")

    async def go() -> None:
        conn = await asyncpg.connect(service.database_url)
        try:
            with MeteringClient(Connection(target=service.target)) as client:
                client.record_usage(customer, "tokens", 1, transaction_id="warm-up")  # the counter row exists
                lock = await hold_counter(conn, customer)  # the service's next write for the customer waits
                recorder = SyncUsageRecorder(client, max_batch=2, linger=0.0, max_pending=4, max_in_flight=1)
                futures = [recorder.record(UsageRecord(customer, "tokens", 1, f"e{i}")) for i in range(4)]
                assert await eventually(lambda: service_waits_on_lock(conn), 20)
                fifth = asyncio.ensure_future(
                    asyncio.to_thread(recorder.record, UsageRecord(customer, "tokens", 1, "e4"))
                )
                await asyncio.sleep(0.5)
                assert not fifth.done()  # four events pending: the fifth waits for room
                await lock.rollback()
                futures.append(await asyncio.wait_for(fifth, 20))
                await asyncio.to_thread(recorder.close)
                assert all(f.done() and not f.result().duplicate for f in futures)
        finally:
            await conn.close()

    asyncio.run(go())


EVENTS, THREADS, BATCH = 6_000, 4, 250


@pytest.mark.slow  # a service of its own, killed and restarted (Replica)
def test_6000_events_from_4_threads_across_a_restart_land_exactly_once(make_database: Callable[[], str]) -> None:
    database_url = make_database()
    replica = Replica("sync-recorder", database_url, TEST_CATALOG)
    replica.start()
    try:
        _many_events_across_a_restart(replica, database_url)
    finally:
        replica.generations[-1].stop()


def _many_events_across_a_restart(replica: Replica, database_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    customers = [f"srec-{tag}-{i}" for i in range(THREADS)]
    retries: list[RetryNotice] = []
    policy = RetryPolicy(max_attempts=30, initial_backoff=0.1, max_backoff=2.0, total_timeout=120.0)
    futures: list[Future[RecordResult]] = []
    appending = threading.Lock()
    # Waits for the service while it restarts (the default fails fast when nothing listens).
    with MeteringClient(
        Connection(target=replica.target), retry=policy, timeout=30.0, wait_for_ready=True, on_retry=retries.append
    ) as client:
        anchor = datetime.now(UTC) - timedelta(days=1)
        for customer in customers:
            client.upsert_customer(customer, "open", billing_anchor=anchor)
        recorder = SyncUsageRecorder(client, max_batch=BATCH, linger=0.2, max_pending=10 * BATCH)

        def produce(customer: str) -> None:
            for i in range(EVENTS // THREADS):
                event = UsageRecord(customer, "tokens", Decimal("0.5"), f"{customer}-{i}", properties={"n": str(i)})
                future = recorder.record(event)
                with appending:
                    futures.append(future)

        async def restart_midway() -> float:
            # As in test_recorder.py: once a third of the events went out, the first
            # customer's counter row is locked, and the kill comes while the writer waits
            # on that lock with a batch the recorder has not had answered.
            watcher = await asyncpg.connect(database_url)
            try:

                async def a_third_sent() -> bool:
                    if recorder.stats.events < EVENTS // 3:
                        return False
                    counters = "SELECT count(*) FROM meter_counters WHERE customer_id = $1"
                    return bool(await watcher.fetchval(counters, customers[0]))

                assert await eventually(a_third_sent, 120, interval=0.01)
                lock = await hold_counter(watcher, customers[0])
                assert await eventually(lambda: service_waits_on_lock(watcher), 60)
                await asyncio.to_thread(replica.kill)
                killed = time.monotonic()
                await lock.rollback()
                await asyncio.sleep(0.5)
                await asyncio.to_thread(replica.start)
                return time.monotonic() - killed
            finally:
                await watcher.close()

        producers = [threading.Thread(target=produce, args=(c,)) for c in customers]
        for producer in producers:
            producer.start()
        down_for = asyncio.run(restart_midway())
        for producer in producers:
            producer.join()
        recorder.close()

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
    row = run_sql(
        database_url,
        "SELECT count(*), count(DISTINCT (customer_id, transaction_id)) FROM usage_events "
        "WHERE customer_id = ANY($1::text[])",
        customers,
    )[0]
    assert (row[0], row[1]) == (EVENTS, EVENTS)
    assert max(sizes) <= BATCH and sum(size * n for size, n in sizes.items()) == EVENTS
