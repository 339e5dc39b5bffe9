"""Coalescing: concurrent calls share transactions and statements; a lone
caller is never held back by the linger that gathers them."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import ServiceProcess, audit, coalescing, usage_request

# Slow tier: services of their own (batching settings).
pytestmark = pytest.mark.slow


def test_a_lone_caller_is_not_held_back_by_the_linger(database_url: str) -> None:
    # Lingers far longer than each call's deadline: a call that waited for
    # company would run out of time.
    env = {"METERING_WRITER_LINGER": "10s", "METERING_READ_LINGER": "10s"}
    service = ServiceProcess(database_url, extra_env=env).start()
    customer = f"lone-{uuid.uuid4().hex[:8]}"
    try:
        with grpc.insecure_channel(service.target) as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="open"), timeout=5)
            for i in range(1, 21):
                stub.RecordUsage(usage_request(customer, f"t{i}"), timeout=5)
                request = usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug="tokens")
                assert stub.CheckBalance(request, timeout=5).balances[0].used == str(i)
        writes, events, statements, reads = coalescing(service)
        assert (writes, events) == (20, 20)  # one call per transaction: nobody to wait for
        assert statements == reads == 20
    finally:
        service.stop()
    assert audit(database_url, [customer]).ok


def test_concurrent_calls_share_transactions_and_statements(database_url: str) -> None:
    service = ServiceProcess(database_url).start()
    customers = [f"crowd-{uuid.uuid4().hex[:8]}" for _ in range(8)]

    async def crowd() -> None:
        async with grpc.aio.insecure_channel(service.target) as channel:
            stub: metering_service_pb2_grpc.MeteringServiceAsyncStub = metering_service_pb2_grpc.MeteringServiceStub(
                channel
            )
            for customer in customers:
                await stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="open"))

            async def caller(customer: str, worker: int) -> None:
                for i in range(25):
                    await stub.RecordUsage(usage_request(customer, f"w{worker}-{i}"), timeout=30)
                    await stub.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id=customer), timeout=30)

            await asyncio.gather(*(caller(customers[w % len(customers)], w) for w in range(32)))

    try:
        asyncio.run(crowd())
        writes, events, statements, reads = coalescing(service)
    finally:
        service.stop()
    assert events == 32 * 25
    assert writes < events, "no transaction carried more than one call"
    assert reads == 32 * 25
    assert statements < reads, "no statement carried more than one read"
    report = audit(database_url, customers)
    assert report.ok
