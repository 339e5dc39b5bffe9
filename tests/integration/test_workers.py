"""METERING_WORKERS=2: one supervisor, two serving processes on one port
(metering.runtime.supervisor). Which worker served a call is read from the kernel:
the worker process that owns the server end of the call's TCP connection."""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2

from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.http_edge import call
from tests.support import ServiceProcess, child_pids, health_status, metric_value, run_sql, wait_for

# Slow tier: a supervisor and its worker processes.
pytestmark = pytest.mark.slow

RECORD = "/metering.v1.MeteringService/RecordUsage"
CONNECTIONS = 16  # one worker gets none of 16 connections with probability 2^-15
WORKERS_ENV = {"METERING_WORKERS": "2"}


@pytest.fixture(scope="module")
def workers_service(database_url: str) -> Iterator[ServiceProcess]:
    process = ServiceProcess(database_url, extra_env=WORKERS_ENV).start()
    yield process
    process.stop()


def workers_of(service: ServiceProcess) -> set[int]:
    assert service.process is not None
    return child_pids(service.process.pid)


def connections_held(pid: int, port: int) -> int:
    """Established TCP connections to local `port` whose socket `pid` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed since listed
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    held = 0
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        with open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                established = fields[3] == "01"
                if established and local_port == port and fields[9] in inodes:
                    held += 1
    return held


def new_customer_on(target: str) -> str:
    customer = f"workers-{uuid.uuid4().hex[:10]}"
    with grpc.insecure_channel(target) as channel:
        metering_service_pb2_grpc.MeteringServiceStub(channel).UpsertCustomer(
            customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="open"), timeout=10
        )
    return customer


def own_channels(target: str, count: int) -> list[grpc.Channel]:
    """Channels that do not share one TCP connection (gRPC shares subchannels by default)."""
    return [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(count)]


def record_on(channels: list[grpc.Channel], customer: str, prefix: str) -> None:
    for index, channel in enumerate(channels):
        metering_service_pb2_grpc.MeteringServiceStub(channel).RecordUsage(
            usage_pb2.RecordUsageRequest(
                customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=f"{prefix}-{index}"
            ),
            timeout=30,
        )


def scrape_path(service: ServiceProcess, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def test_both_workers_serve_and_metrics_sum_them(workers_service: ServiceProcess) -> None:
    service = workers_service
    workers = workers_of(service)
    assert len(workers) == 2
    customer = new_customer_on(service.target)
    before = service.scrape()
    channels = own_channels(service.target, CONNECTIONS)
    try:
        record_on(channels, customer, "sum")
        held = {pid: connections_held(pid, service.port) for pid in workers}
        assert sum(held.values()) >= CONNECTIONS, held
        assert all(count > 0 for count in held.values()), f"one worker served no connection: {held}"
        after = service.scrape()
    finally:
        for channel in channels:
            channel.close()

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    # Counters and histograms of both workers, added up: exactly the calls made.
    grpc_ok = {"method": RECORD, "code": "OK", "caller": "anonymous", "protocol": "grpc"}
    assert delta("metering_grpc_requests_total", **grpc_ok) == CONNECTIONS
    assert delta("metering_grpc_request_duration_seconds_count", method=RECORD, protocol="grpc") == CONNECTIONS
    assert delta("metering_events_total", meter="tokens", outcome="recorded") == CONNECTIONS
    # Gauges by their mode: pools summed over the workers, one figure each.
    assert metric_value(after, "metering_db_pool_max") == 2 * 10  # the default METERING_DB_POOL_MAX per worker
    assert metric_value(after, "metering_database_up") == 1
    assert metric_value(after, "metering_workers") == 2
    assert metric_value(after, "metering_workers_serving") == 2
    assert "pid=" not in after  # no per-process series leaks out
    assert scrape_path(service, "/health") == (200, "SERVING: 2 of 2 workers serving\n")
    assert health_status(service.target) == health_pb2.HealthCheckResponse.SERVING


def test_both_workers_serve_the_http_port(workers_service: ServiceProcess) -> None:
    service = workers_service
    customer = new_customer_on(service.target)
    before = service.scrape()
    clients = [httpx.Client(base_url=service.http_url, timeout=30) for _ in range(CONNECTIONS)]
    try:
        for index, client in enumerate(clients):  # one keep-alive connection each
            body = {"customerId": customer, "meterSlug": "tokens", "quantity": "1", "transactionId": f"http-{index}"}
            assert call(client, "", "RecordUsage", body).status_code == 200
        held = {pid: connections_held(pid, service.http_port) for pid in workers_of(service)}
        assert sum(held.values()) >= CONNECTIONS, held
        assert all(count > 0 for count in held.values()), f"one worker served no HTTP connection: {held}"
        assert clients[0].get("/healthz").text == "SERVING\n"
    finally:
        for client in clients:
            client.close()
    connect_ok = {"method": RECORD, "code": "OK", "caller": "anonymous", "protocol": "connect"}
    after = service.scrape()
    assert (
        metric_value(after, "metering_grpc_requests_total", **connect_ok)
        - metric_value(before, "metering_grpc_requests_total", **connect_ok)
        == CONNECTIONS
    )


def test_a_killed_worker_is_started_again_and_serves(workers_service: ServiceProcess) -> None:
    service = workers_service
    workers = workers_of(service)
    assert len(workers) == 2
    customer = new_customer_on(service.target)
    before = service.scrape()
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: len(workers_of(service) - {victim}) == 2, timeout=30), workers_of(service)
    assert wait_for(lambda: metric_value(service.scrape(), "metering_workers_serving") == 2, timeout=60)
    replacement = (workers_of(service) - workers).pop()
    channels = own_channels(service.target, CONNECTIONS)
    try:
        record_on(channels, customer, "restart")
        assert connections_held(replacement, service.port) > 0, "the new worker took no connection"
    finally:
        for channel in channels:
            channel.close()
    after = service.scrape()
    assert (
        metric_value(after, "metering_worker_restarts_total")
        == metric_value(before, "metering_worker_restarts_total") + 1
    )
    # The dead worker's counts stay in the sums: totals never go backwards.
    grpc_ok = {"method": RECORD, "code": "OK", "caller": "anonymous", "protocol": "grpc"}
    ok = metric_value(before, "metering_grpc_requests_total", **grpc_ok)
    assert metric_value(after, "metering_grpc_requests_total", **grpc_ok) == ok + CONNECTIONS
    assert "died: killed by SIGKILL; starting it again" in "".join(service.output)


def test_sigterm_drains_every_worker_and_loses_no_acknowledged_event(database_url: str) -> None:
    # INFO: the supervisor logs each worker's exit there.
    service = ServiceProcess(database_url, extra_env={**WORKERS_ENV, "METERING_LOG_LEVEL": "INFO"}).start()
    assert len(workers_of(service)) == 2
    customer = new_customer_on(service.target)
    channels = own_channels(service.target, CONNECTIONS)
    try:
        stubs = [metering_service_pb2_grpc.MeteringServiceStub(channel) for channel in channels]
        futures = [
            stubs[i % CONNECTIONS].RecordUsage.future(
                usage_pb2.RecordUsageRequest(
                    customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=f"w{i}"
                ),
                timeout=30,
            )
            for i in range(600)
        ]
        assert service.process is not None
        # SIGTERM once the first answer is in: the rest are in flight or queued.
        assert wait_for(lambda: any(f.done() for f in futures), timeout=30)
        service.process.send_signal(signal.SIGTERM)
        acknowledged, refused = set(), []
        for i, future in enumerate(futures):
            try:
                future.result()
                acknowledged.add(f"w{i}")
            except grpc.RpcError as error:
                refused.append(error.code())
    finally:
        for channel in channels:
            channel.close()
    assert service.stop() == 0
    assert acknowledged, "no call was in flight when SIGTERM arrived; the test proved nothing"
    assert set(refused) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, refused
    log = "".join(service.output)
    assert log.count("stopped: exit code 0") == 2, log  # both workers drained and exited cleanly
    stored = {
        row["transaction_id"]
        for row in run_sql(database_url, "SELECT transaction_id FROM usage_events WHERE customer_id = $1", customer)
    }
    assert acknowledged <= stored  # nothing acknowledged is lost


def test_workers_serve_on_uvloop(database_url: str) -> None:
    # METERING_EVENT_LOOP=uvloop: each worker runs libuv's loop (its grpc.aio
    # server, asyncpg pool and HTTP edge); a record and a balance on each worker.
    service = ServiceProcess(database_url, extra_env={**WORKERS_ENV, "METERING_EVENT_LOOP": "uvloop"}).start()
    try:
        assert service.process is not None
        for pid in workers_of(service):
            with open(f"/proc/{pid}/maps") as maps:
                assert "uvloop" in maps.read(), f"worker {pid} has not loaded uvloop"
        customer = f"uv-{uuid.uuid4().hex[:8]}"
        for index in range(CONNECTIONS):  # connections spread over both workers
            with grpc.insecure_channel(service.target) as channel:
                stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
                if index == 0:
                    stub.UpsertCustomer(
                        customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="open"), timeout=10
                    )
                stub.RecordUsage(
                    usage_pb2.RecordUsageRequest(
                        customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=f"t{index}"
                    ),
                    timeout=10,
                )
                balance = stub.CheckBalance(
                    usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug="tokens"), timeout=10
                )
                assert balance.balances[0].used == str(index + 1)
    finally:
        assert service.stop() == 0
