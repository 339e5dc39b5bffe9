"""A call whose client gives up while it waits for the batching writer writes
nothing: the ledger is as if it never happened, and a retry records it once."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest

from metering.v1 import customer_pb2, metering_service_pb2_grpc
from tests.support import ServiceProcess, audit, stall_the_writer, usage_request

# Slow tier: a service of its own (one writer worker).
pytestmark = pytest.mark.slow


async def _abandon_a_queued_call(target: str, database_url: str, blocker: str, customer: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            for name in (blocker, customer):
                await stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=name, plan_slug="open"))
            # Stall the one writer worker: its next transaction waits on the
            # blocker's counter row, which this connection holds.
            held, stalled = await stall_the_writer(stub, conn, blocker, stalled_deadline=30)
            # Queued behind the stalled transaction, this call's deadline passes.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.RecordUsage(usage_request(customer, "late", "5"), timeout=0.1)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await held.rollback()
            assert not (await stalled).duplicate
            # The queue is first in, first out: once a call sent now is
            # answered, the worker has taken (and skipped) the abandoned one.
            await stub.RecordUsage(usage_request(blocker, "after"), timeout=10)
            query = "SELECT count(*) FROM usage_events WHERE customer_id = $1"
            assert await conn.fetchval(query, customer) == 0
            retried = await stub.RecordUsage(usage_request(customer, "late", "5"), timeout=10)
            assert not retried.duplicate and retried.balance.used == "5"
            assert await conn.fetchval(query, customer) == 1
    finally:
        await conn.close()


def test_a_call_abandoned_in_the_writer_queue_writes_nothing(database_url: str) -> None:
    service = ServiceProcess(database_url, extra_env={"METERING_WRITER_WORKERS": "1"}).start()
    blocker, customer = f"stall-{uuid.uuid4().hex[:8]}", f"abandon-{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_abandon_a_queued_call(service.target, database_url, blocker, customer))
        assert audit(database_url, [blocker, customer]).ok
    finally:
        service.stop()
