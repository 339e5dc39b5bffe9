"""OpenTelemetry traces from a real service process to a real OTLP/gRPC
receiver in the test process (tests/otlp_receiver.py)."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import httpx
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from metering.telemetry.tracing import SHUTDOWN_EXPORT_SECONDS
from metering.v1 import metering_service_pb2_grpc, usage_pb2
from tests.http_edge import call
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.support import ServiceProcess, health_status, wait_for

# Slow tier: services of their own exporting to an OTLP receiver.
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub
SERVICE = "metering.v1.MeteringService"
RECORD = f"/{SERVICE}/RecordUsage"
WRITE_BATCH = "metering.ledger.write_batch"
SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def traced_service(database_url: str, receiver: OtlpReceiver) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        database_url,
        extra_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: the test waits for spans, not for the default 5 s
            "METERING_LOG_FORMAT": "json",
            "METERING_LOG_LEVEL": "DEBUG",  # refusals are logged at DEBUG
        },
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def traced_stub(traced_service: ServiceProcess) -> Iterator[Stub]:
    with grpc.insecure_channel(traced_service.target) as channel:
        yield metering_service_pb2_grpc.MeteringServiceStub(channel)


def new_traceparent() -> tuple[str, str, str]:
    """A caller's trace id, span id and the W3C traceparent (sampled) naming them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def record(stub: Stub, customer: str, traceparent: str, quantity: str = "1") -> None:
    request = usage_pb2.RecordUsageRequest(
        customer_id=customer, meter_slug="tokens", quantity=quantity, transaction_id=secrets.token_hex(8)
    )
    stub.RecordUsage(request, timeout=10, metadata=(("traceparent", traceparent),))


def server_span(spans: list[ReceivedSpan], trace_id: str) -> ReceivedSpan | None:
    return next((s for s in spans if s.trace_id == trace_id and s.kind == SERVER), None)


def test_a_call_continues_the_callers_trace_down_to_its_sql(
    traced_stub: Stub, receiver: OtlpReceiver, new_customer: Callable[..., str]
) -> None:
    customer = new_customer(plan="open")
    trace_id, caller_span_id, traceparent = new_traceparent()
    record(traced_stub, customer, traceparent)

    def complete(spans: list[ReceivedSpan]) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        return (
            any(s.kind == SERVER for s in mine)
            and any(s.name == WRITE_BATCH for s in mine)
            and any(s.kind == CLIENT for s in mine)
        )

    spans = [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]
    server = server_span(spans, trace_id)
    assert server is not None, spans
    assert server.name == RECORD
    assert server.service_name == "metering"
    assert server.parent_span_id == caller_span_id  # the caller's trace, continued
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.service"] == SERVICE
    assert server.attributes["rpc.method"] == "RecordUsage"
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert server.status_code != trace_pb2.Status.STATUS_CODE_ERROR

    # The writer's transaction: a child of the call (the first it carried), linked to it.
    [batch] = [s for s in spans if s.name == WRITE_BATCH]
    assert batch.parent_span_id == server.span_id
    assert (trace_id, server.span_id) in batch.links
    assert batch.attributes["metering.batch.calls"] == 1
    assert batch.attributes["metering.batch.events"] == 1

    # Its statements, children of the transaction's span, under the caller's trace id.
    statements = [s for s in spans if s.kind == CLIENT]
    assert statements
    assert all(s.parent_span_id == batch.span_id for s in statements)
    assert all(s.attributes.get("db.system") == "postgresql" for s in statements)
    assert any("INSERT INTO usage_events" in str(s.attributes.get("db.statement")) for s in statements)


def test_a_connect_call_is_traced_as_a_grpc_one_is(
    traced_service: ServiceProcess, receiver: OtlpReceiver, new_customer: Callable[..., str]
) -> None:
    customer = new_customer(plan="limited")
    trace_id, caller_span_id, traceparent = new_traceparent()
    refused_trace, _, refused_parent = new_traceparent()
    with httpx.Client(base_url=traced_service.http_url, timeout=10) as http:
        body = {"customerId": customer, "meterSlug": "tokens", "quantity": "1", "transactionId": secrets.token_hex(8)}
        assert call(http, "", "RecordUsage", body, {"traceparent": traceparent}).status_code == 200
        over = {**body, "quantity": "1000", "transactionId": secrets.token_hex(8)}
        assert call(http, "", "RecordUsage", over, {"traceparent": refused_parent}).status_code == 402

    def complete(spans: list[ReceivedSpan]) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        return (
            any(s.kind == SERVER for s in mine)
            and any(s.name == WRITE_BATCH for s in mine)
            and server_span(spans, refused_trace) is not None
        )

    spans = receiver.wait_for(complete)
    server = server_span(spans, trace_id)
    assert server is not None, spans
    assert server.name == RECORD
    assert server.parent_span_id == caller_span_id  # the caller's trace, continued from its header
    assert server.attributes["rpc.system"] == "connect_rpc"
    assert (server.attributes["rpc.service"], server.attributes["rpc.method"]) == (SERVICE, "RecordUsage")
    assert server.status_code != trace_pb2.Status.STATUS_CODE_ERROR
    [batch] = [s for s in spans if s.trace_id == trace_id and s.name == WRITE_BATCH]
    assert batch.parent_span_id == server.span_id and (trace_id, server.span_id) in batch.links
    refused = server_span(spans, refused_trace)
    assert refused is not None
    assert refused.attributes["rpc.connect_rpc.error_code"] == "resource_exhausted"
    assert refused.status_code == trace_pb2.Status.STATUS_CODE_ERROR


def test_the_writers_transaction_links_every_call_it_carries(
    traced_stub: Stub, receiver: OtlpReceiver, new_customer: Callable[..., str]
) -> None:
    customer = new_customer(plan="open")
    shared: list[ReceivedSpan] = []
    # Concurrent calls queue while the writer's transaction is in flight and
    # share the next one; a round where each call happened to get a
    # transaction of its own is sent again (at most 5 rounds).
    for _ in range(5):
        traces = [new_traceparent() for _ in range(16)]
        with futures.ThreadPoolExecutor(len(traces)) as pool:
            list(pool.map(lambda t: record(traced_stub, customer, t[2]), traces))
        ids = {trace_id for trace_id, _, _ in traces}

        def complete(spans: list[ReceivedSpan], ids: set[str] = ids) -> bool:
            servers = {s.trace_id for s in spans if s.kind == SERVER and s.trace_id in ids}
            linked = {t for s in spans if s.name == WRITE_BATCH for t, _ in s.links if t in ids}
            return servers == ids and linked == ids

        spans = receiver.wait_for(complete)
        servers = {s.trace_id: s for s in spans if s.kind == SERVER and s.trace_id in ids}
        batches = [s for s in spans if s.name == WRITE_BATCH and any(t in ids for t, _ in s.links)]
        assert set(servers) == ids
        # Every call is carried by exactly one transaction, which links to its server span.
        links = [link for batch in batches for link in batch.links]
        assert sorted(links) == sorted((s.trace_id, s.span_id) for s in servers.values())
        for batch in batches:
            assert batch.attributes["metering.batch.calls"] == len(batch.links)
            # A child of the first call it carried: in that call's trace.
            assert (batch.trace_id, batch.parent_span_id) in batch.links
        shared = [batch for batch in batches if len(batch.links) > 1]
        if shared:
            break
    assert shared, "no transaction carried more than one call in 5 rounds of 16 concurrent calls"


def test_a_failed_call_has_its_status_in_the_span_and_its_trace_id_in_the_log(
    traced_service: ServiceProcess, traced_stub: Stub, receiver: OtlpReceiver, new_customer: Callable[..., str]
) -> None:
    customer = new_customer(plan="open")
    trace_id, _, traceparent = new_traceparent()
    with pytest.raises(grpc.RpcError) as refused:
        record(traced_stub, customer, traceparent, quantity="not a number")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    spans = receiver.wait_for(lambda spans: server_span(spans, trace_id) is not None)
    server = server_span(spans, trace_id)
    assert server is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    def failure_lines() -> list[dict[str, object]]:
        lines = [json.loads(line) for line in list(traced_service.output) if line.startswith("{")]
        return [line for line in lines if line.get("trace_id") == trace_id]

    assert wait_for(lambda: bool(failure_lines()), timeout=5)
    [failed] = failure_lines()
    assert failed["method"] == RECORD
    assert failed["code"] == "INVALID_ARGUMENT"
    assert failed["span_id"] == server.span_id


def test_health_checks_and_background_statements_start_no_trace(
    traced_service: ServiceProcess, traced_stub: Stub, receiver: OtlpReceiver, new_customer: Callable[..., str]
) -> None:
    health_status(traced_service.target)
    # The service's health probe runs a statement every second, outside any
    # call: over this second and a half, it would have started traces.
    time.sleep(1.5)
    trace_id, _, traceparent = new_traceparent()
    record(traced_stub, new_customer(plan="open"), traceparent)
    spans = receiver.wait_for(lambda spans: server_span(spans, trace_id) is not None)
    assert server_span(spans, trace_id) is not None  # exported after the probes ran
    assert not [s for s in spans if "Health" in s.name]
    assert [s for s in spans if not s.parent_span_id and s.kind != SERVER] == []


def test_an_unreachable_collector_fails_no_call_and_holds_up_no_shutdown(
    database_url: str, new_customer: Callable[..., str]
) -> None:
    with socket.socket() as probe:  # a port of 127.0.0.1 that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = ServiceProcess(
        database_url,
        extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": "100"},
    ).start()
    try:
        customer = new_customer(plan="open")
        with grpc.insecure_channel(service.target) as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            for _ in range(20):
                record(stub, customer, new_traceparent()[2])
        time.sleep(1)  # exports fail and are retried meanwhile
    finally:
        started = time.monotonic()
        assert service.stop() == 0
        stopped_in = time.monotonic() - started
    # At most SHUTDOWN_EXPORT_SECONDS (5 s) for the last spans, with a margin;
    # the drain of calls adds nothing with none in flight.
    assert stopped_in < SHUTDOWN_EXPORT_SECONDS + 5, stopped_in
