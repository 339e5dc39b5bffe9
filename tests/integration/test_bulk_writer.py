"""Bulk writer workers (METERING_WRITER_BULK_WORKERS): a second write
transaction starts only while half a batch or more is queued, so a stalled
transaction holds up calls of a few events but not a big batch behind it."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest

from metering.v1 import customer_pb2, ingest_pb2, metering_service_pb2_grpc
from tests.support import ServiceProcess, audit, stall_the_writer, usage_request

# Slow tier: a service of its own (writer settings).
pytestmark = pytest.mark.slow

BULK = 600  # events of the big batch: more than half of the writer's 1,000


async def _behind_a_stalled_transaction(target: str, database_url: str, blocker: str, other: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            for name in (blocker, other):
                await stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=name, plan_slug="open"))
            # The one writer worker's next transaction waits on the blocker's counter row.
            held, stalled = await stall_the_writer(stub, conn, blocker, stalled_deadline=60)

            # A call of one event for another customer queues behind the stall:
            # too little for a bulk worker.
            small = asyncio.ensure_future(stub.RecordUsage(usage_request(other, "small"), timeout=60))
            await asyncio.sleep(1.0)
            assert not small.done(), "a one-event call was written beside the stalled transaction"

            # A big batch joins the queue: now a bulk worker takes it (and the
            # small call ahead of it) and writes them while the stall lasts.
            events = [usage_request(other, f"bulk-{i}") for i in range(BULK)]
            big = await stub.RecordUsageBatch(ingest_pb2.RecordUsageBatchRequest(events=events), timeout=30)
            assert all(result.status.code == 0 for result in big.results)
            assert not (await small).duplicate
            assert not stalled.done(), "the stalled transaction finished before its lock was released"
            count = "SELECT count(*) FROM usage_events WHERE customer_id = $1"
            assert await conn.fetchval(count, other) == BULK + 1

            await held.rollback()
            assert not (await stalled).duplicate
            assert await conn.fetchval(count, blocker) == 2
    finally:
        await conn.close()


def test_a_big_batch_is_written_beside_a_stalled_transaction_and_a_small_call_is_not(database_url: str) -> None:
    service = ServiceProcess(
        database_url, extra_env={"METERING_WRITER_WORKERS": "1", "METERING_WRITER_BULK_WORKERS": "1"}
    ).start()
    blocker, other = f"stall-{uuid.uuid4().hex[:8]}", f"bulk-{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_behind_a_stalled_transaction(service.target, database_url, blocker, other))
        assert audit(database_url, [blocker, other]).ok
    finally:
        service.stop()
