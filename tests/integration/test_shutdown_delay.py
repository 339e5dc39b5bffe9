"""Shutdown behind a load balancer (METERING_SHUTDOWN_DELAY): on SIGTERM health
turns NOT_SERVING first, calls are still served for the delay, then the
service drains and exits."""

from __future__ import annotations

import queue
import signal
import threading
import urllib.error
import urllib.request
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import ServiceProcess, run_sql, wait_for

# Slow tier: a service of its own, stopped by signal.
pytestmark = pytest.mark.slow

# Long enough for the calls below on a busy machine; the test waits for no timer.
DELAY_SECONDS = 5
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def watch_health(channel: grpc.Channel, seen: queue.Queue[int]) -> None:
    """Every status the server pushes on one health Watch stream, until it ends."""
    try:
        for response in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=120):
            seen.put(response.status)
    except grpc.RpcError:
        pass  # the server went away: the stream's end
    seen.put(-1)


def http_health(service: ServiceProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/health", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def record(channel: grpc.Channel, customer: str, transaction_id: str) -> None:
    metering_service_pb2_grpc.MeteringServiceStub(channel).RecordUsage(
        usage_pb2.RecordUsageRequest(
            customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=transaction_id
        ),
        timeout=10,
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_health_watch_sees_not_serving_while_calls_still_succeed(database_url: str, workers: str) -> None:
    env = {"METERING_SHUTDOWN_DELAY": f"{DELAY_SECONDS}s", "METERING_WORKERS": workers}
    service = ServiceProcess(database_url, extra_env=env).start()
    assert service.process is not None
    customer = f"prestop-{uuid.uuid4().hex[:8]}"
    seen: queue.Queue[int] = queue.Queue()
    with grpc.insecure_channel(service.target) as channel:
        metering_service_pb2_grpc.MeteringServiceStub(channel).UpsertCustomer(
            customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="open"), timeout=10
        )
        watcher = threading.Thread(target=watch_health, args=(channel, seen), daemon=True)
        watcher.start()
        assert seen.get(timeout=10) == SERVING
        # GET /health on the metrics port says the same with one process or many.
        assert http_health(service) == (200, f"SERVING: {workers} of {workers} workers serving\n")
        service.process.send_signal(signal.SIGTERM)
        assert seen.get(timeout=10) == NOT_SERVING
        stopping = f"NOT_SERVING: {workers} of {workers} workers serving; stopping\n"
        assert wait_for(lambda: http_health(service) == (503, stopping), timeout=5), http_health(service)
        # NOT_SERVING, and still serving: on the open connection and on a new one.
        acknowledged = set()
        for i in range(5):
            record(channel, customer, f"open-{i}")
            acknowledged.add(f"open-{i}")
        with grpc.insecure_channel(service.target, options=[("grpc.use_local_subchannel_pool", 1)]) as fresh:
            record(fresh, customer, "fresh")
            acknowledged.add("fresh")
        assert service.process.poll() is None
        # Then the drain: the watch stream ends and the process exits cleanly.
        assert service.process.wait(timeout=DELAY_SECONDS + 10 + 15) == 0
        watcher.join(timeout=10)
    rest = [seen.get(timeout=1)]
    while rest[-1] != -1:
        rest.append(seen.get(timeout=1))
    assert SERVING not in rest  # never SERVING again once shutting down
    stored = {
        row["transaction_id"]
        for row in run_sql(database_url, "SELECT transaction_id FROM usage_events WHERE customer_id = $1", customer)
    }
    assert stored == acknowledged
