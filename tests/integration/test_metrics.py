"""The Prometheus endpoint, scraped before and after known traffic."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest

from metering.v1 import metering_service_pb2_grpc, usage_pb2
from tests.support import ServiceProcess, metric_value, record

# Slow tier: a service of its own (a fresh metrics registry).
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub
RECORD = "/metering.v1.MeteringService/RecordUsage"


@pytest.fixture(scope="module")
def counted_service(database_url: str) -> Iterator[ServiceProcess]:
    """A service of this module's own: counters that no other test moved. On the
    session's service, a test recording a quantity of 10^20 would leave a float
    total that absorbs the small deltas asserted here."""
    process = ServiceProcess(database_url).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def counted_stub(counted_service: ServiceProcess) -> Iterator[Stub]:
    with grpc.insecure_channel(counted_service.target) as channel:
        yield metering_service_pb2_grpc.MeteringServiceStub(channel)


def test_counters_move_by_the_right_amounts(
    counted_service: ServiceProcess, counted_stub: Stub, new_customer: Callable[..., str]
) -> None:
    service, stub = counted_service, counted_stub
    customer, zero = new_customer(plan="open"), new_customer(plan="zero")
    before = service.scrape()

    for txn, quantity in (("m1", "1"), ("m2", "2"), ("m3", "3.5")):
        record(stub, customer, txn, quantity)
    record(stub, customer, "m1", "1")  # duplicate
    failures = []
    for who, txn, quantity in (
        (customer, "m1", "9"),  # payload conflict
        (zero, "z1", "1"),  # hard limit 0
        (customer, "bad", "-1"),  # invalid
    ):
        with pytest.raises(grpc.RpcError) as caught:
            record(stub, who, txn, quantity)
        failures.append(caught.value.code())
    assert failures == [
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    ]
    stub.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id=customer), timeout=10)

    after = service.scrape()

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("metering_events_total", meter="tokens", outcome="recorded") == 3
    assert delta("metering_events_total", meter="tokens", outcome="duplicate") == 1
    assert delta("metering_events_total", meter="tokens", outcome="payload_conflict") == 1
    assert delta("metering_events_total", meter="tokens", outcome="rejected") == 1
    assert delta("metering_quantity_recorded_total", meter="tokens") == 6.5
    assert delta("metering_limit_rejections_total", meter="tokens", plan="zero") == 1
    assert delta("metering_grpc_requests_total", method=RECORD, code="OK", caller="anonymous", protocol="grpc") == 4
    assert (
        delta("metering_grpc_requests_total", method=RECORD, code="ALREADY_EXISTS", caller="anonymous", protocol="grpc")
        == 1
    )
    assert (
        delta(
            "metering_grpc_requests_total",
            method=RECORD,
            code="RESOURCE_EXHAUSTED",
            caller="anonymous",
            protocol="grpc",
        )
        == 1
    )
    assert (
        delta(
            "metering_grpc_requests_total", method=RECORD, code="INVALID_ARGUMENT", caller="anonymous", protocol="grpc"
        )
        == 1
    )
    balance_method = "/metering.v1.MeteringService/CheckBalance"
    assert (
        delta("metering_grpc_requests_total", method=balance_method, code="OK", caller="anonymous", protocol="grpc")
        == 1
    )
    assert delta("metering_grpc_request_duration_seconds_count", method=RECORD, protocol="grpc") == 7
    assert metric_value(after, "metering_database_up") == 1
    assert metric_value(after, "metering_db_pool_max") == 10
    assert metric_value(after, "metering_db_pool_size") >= 1
    assert "metering_db_pool_in_use" in after
    # Customer ids never become label values.
    assert customer not in after
    assert zero not in after
