"""A call whose client gives up while it waits for the batching writer writes
nothing: the ledger is as if it never happened, and a retry records it once."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import ServiceProcess, audit, run_sql


def test_a_call_abandoned_in_the_writer_queue_writes_nothing(database_url: str) -> None:
    # The writer lingers 400 ms before taking a batch: the call's 100 ms
    # deadline passes while its event is still queued.
    service = ServiceProcess(database_url, extra_env={"METERING_WRITER_LINGER": "400ms"}).start()
    try:
        with grpc.insecure_channel(service.target) as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            customer = f"abandon-{uuid.uuid4().hex[:8]}"
            stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="open"), timeout=10)
            request = usage_pb2.RecordUsageRequest(
                customer_id=customer, meter_slug="tokens", quantity="5", transaction_id="late"
            )
            with pytest.raises(grpc.RpcError) as caught:
                stub.RecordUsage(request, timeout=0.1)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(1.0)  # past the linger: the worker has taken (and skipped) the batch
            query = "SELECT count(*) FROM usage_events WHERE customer_id = $1"
            assert run_sql(database_url, query, customer)[0][0] == 0
            retried = stub.RecordUsage(request, timeout=10)
            assert not retried.duplicate and retried.balance.used == "5"
            assert run_sql(database_url, query, customer)[0][0] == 1
            assert audit(database_url, [customer]).ok
    finally:
        service.stop()
