"""Test helpers: real service processes, real databases, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from metering.api.errors import read_details, status_details
from metering.api.page_tokens import PageTokens
from metering.ledger.audit import AuditReport
from metering.v1 import reservations_pb2, usage_pb2
from metering.v1.metering_service_pb2_grpc import MeteringServiceStub

if TYPE_CHECKING:
    from metering.v1.metering_service_pb2_grpc import MeteringServiceAsyncStub
from tests.processes import children_of

ROOT = Path(__file__).resolve().parent.parent
TEST_CATALOG = ROOT / "tests" / "catalog.toml"
SERVING_LINE = re.compile(
    r"serving \S+ on (?P<host>[^ ;]+):(?P<port>\d+); "
    r"(?:HTTP off|HTTP \(Connect, gRPC-Web\) on http://[^ ;]+:(?P<http>\d+)); "
    r"metrics on http://[^:]+:(?P<metrics>\d+)/"
)


@dataclass
class ServiceProcess:
    """`python -m metering serve` in a child process, on free ports of 127.0.0.1."""

    database_url: str
    catalog: Path | None = TEST_CATALOG  # None: the packaged sample catalog
    extra_env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    port: int = 0
    http_port: int = 0  # 0 too with METERING_HTTP_PORT=off
    metrics_port: int = 0
    output: list[str] = field(default_factory=list)
    stderr_path: Path | None = None  # stderr to this file; None: merged into `output`

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """The HTTP edge's base URL (Connect, gRPC-Web, /healthz)."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        env = {
            **os.environ,
            "METERING_DATABASE_URL": self.database_url,
            "METERING_GRPC_HOST": "127.0.0.1",
            "METERING_GRPC_PORT": "0",
            "METERING_HTTP_HOST": "127.0.0.1",
            "METERING_HTTP_PORT": "0",
            "METERING_METRICS_HOST": "127.0.0.1",
            "METERING_METRICS_PORT": "0",
            "METERING_LOG_LEVEL": "WARNING",
            # Fixed past dates (a DST change in 2025, say) must stay recordable.
            "METERING_BACKFILL_WINDOW": "3650d",
            # No period of another test's customer closes under it: the first
            # closing pass would run a day after start-up. Tests of closing
            # (tests/integration/test_invoices.py) set seconds, on a database
            # of their own.
            "METERING_CLOSE_INTERVAL": "1d",
            **self.extra_env,
        }
        if "METERING_AUTH_FILE" not in self.extra_env:
            # Most tests exercise the ledger, not authentication (tests/integration/test_auth.py does).
            env.setdefault("METERING_ALLOW_UNAUTHENTICATED", "1")
        env.pop("METERING_CATALOG", None)
        if self.catalog is not None:
            env["METERING_CATALOG"] = str(self.catalog)
        with contextlib.ExitStack() as files:  # the child keeps its own copy of the file
            stderr = subprocess.STDOUT if self.stderr_path is None else files.enter_context(open(self.stderr_path, "w"))
            self.process = subprocess.Popen(
                [sys.executable, "-m", "metering", "serve"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        ready = threading.Event()
        threading.Thread(target=self._drain, args=(ready,), daemon=True).start()
        if not ready.wait(timeout) or self.port == 0:
            self.stop()
            raise RuntimeError("service did not start:\n" + "".join(self.output))
        return self

    def _drain(self, ready: threading.Event) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            match = SERVING_LINE.search(line)
            if match:
                self.port = int(match["port"])
                self.http_port = int(match["http"] or 0)
                self.metrics_port = int(match["metrics"])
                ready.set()
        self.process.stdout.close()  # the process ended (EOF): no pipe left for the garbage collector
        ready.set()

    def stop(self, timeout: float = 20.0) -> int:
        if self.process is None:
            return 0
        log = "".join(self.output)
        if "Traceback" in log or " ERROR " in log:
            # Unexpected server-side errors are shown with the test output.
            print(f"--- service {self.target} log ---\n{log}", file=sys.stderr)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())


def health_status(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status)


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


async def eventually(predicate: Callable[[], Awaitable[bool]], limit: float, interval: float = 0.05) -> bool:
    """wait_for for an async predicate: whether it held within `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval)
    return await predicate()


def error_details(error: grpc.RpcError) -> dict[str, Message]:
    """The google.rpc details of a failed call, by type name."""
    found = read_details(error)
    assert found is not None, "the error carries no google.rpc.Status"
    return found


def run_sql(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement on a fresh connection (tests check the ledger directly)."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def page_tokens_of(database_url: str) -> PageTokens:
    """Page tokens signed with the key of the service on this database (tests sign hostile cursors)."""
    [row] = run_sql(database_url, "SELECT key FROM page_token_key")
    return PageTokens(bytes(row["key"]))


def audit(database_url: str, customer_ids: Sequence[str] | None = None, catalog: Path = TEST_CATALOG) -> AuditReport:
    """The ledger audit (`metering audit`) of some customers, against the test catalog."""
    from metering.config.catalog import load_catalog
    from metering.ledger.audit import audit_ledger

    async def go() -> AuditReport:
        conn = await asyncpg.connect(database_url)
        try:
            return await audit_ledger(conn, load_catalog(str(catalog)), customer_ids)
        finally:
            await conn.close()

    return asyncio.run(go())


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, label_text = sample.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text))
        if found == labels:
            return float(value)
    return 0.0


def calls_across(services: Sequence[ServiceProcess], method: str, requests: Sequence[Message]) -> list[grpc.StatusCode]:
    """Send every request at once, alternating between the services (replicas),
    and return the status code of each, in request order."""
    from metering.v1 import metering_service_pb2_grpc

    channels = [grpc.insecure_channel(s.target) for s in services]
    try:
        stubs = [metering_service_pb2_grpc.MeteringServiceStub(c) for c in channels]
        futures = [getattr(stubs[i % len(stubs)], method).future(r, timeout=60) for i, r in enumerate(requests)]
        codes = []
        for future in futures:
            try:
                future.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
        return codes
    finally:
        for channel in channels:
            channel.close()


def usage_request(customer: str, transaction_id: str, quantity: str = "1") -> usage_pb2.RecordUsageRequest:
    """A RecordUsage of the test catalog's `tokens` meter."""
    return usage_pb2.RecordUsageRequest(
        customer_id=customer, meter_slug="tokens", quantity=quantity, transaction_id=transaction_id
    )


async def hold_counter(conn: asyncpg.Connection, customer: str) -> asyncpg.transaction.Transaction:
    """Lock the customer's counter rows: the service's next write for them waits."""
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute("SELECT 1 FROM meter_counters WHERE customer_id = $1 FOR UPDATE", customer)
    return transaction


async def service_waits_on_lock(conn: asyncpg.Connection) -> bool:
    """Whether a service session of this database waits on a lock."""
    waiting = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'metering' "
        "AND wait_event_type = 'Lock' AND datname = current_database()"
    )
    return bool(waiting)


async def stall_the_writer(
    stub: MeteringServiceAsyncStub, conn: asyncpg.Connection, blocker: str, *, stalled_deadline: float
) -> tuple[asyncpg.transaction.Transaction, asyncio.Future[usage_pb2.RecordUsageResponse]]:
    """Stall the writer's next transaction: record a first event for `blocker`
    (its counter row exists then), lock that row from `conn`, and send one more
    event for it, which waits on the lock until the returned transaction ends.
    Returns that transaction and the stalled call."""
    await stub.RecordUsage(usage_request(blocker, "first"), timeout=10)
    held = await hold_counter(conn, blocker)
    stalled = asyncio.ensure_future(stub.RecordUsage(usage_request(blocker, "stalled"), timeout=stalled_deadline))
    assert await eventually(lambda: service_waits_on_lock(conn), 10), "the writer never reached the lock"
    return held, stalled


def coalescing(service: ServiceProcess) -> tuple[float, float, float, float]:
    """From the service's metrics: write transactions and the events they
    carried; balance-read statements and the reads they carried."""
    text = service.scrape()
    return (
        metric_value(text, "metering_write_batch_events_count"),
        metric_value(text, "metering_write_batch_events_sum"),
        metric_value(text, "metering_balance_read_batch_reads_count"),
        metric_value(text, "metering_balance_read_batch_reads_sum"),
    )


# -- shared helpers of the integration tests (one copy each, not imported from test modules) --

Details: TypeAlias = Mapping[str, Message]
# A refusal: a failed call, one event's status in a batch or stream, or details already read.
Refusal: TypeAlias = grpc.RpcError | status_pb2.Status | Details


def _details_of(source: Refusal) -> Details:
    if isinstance(source, grpc.RpcError):
        return error_details(source)
    if isinstance(source, status_pb2.Status):
        return status_details(source)
    return source


def error_info(source: Refusal) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo of a refusal."""
    info = _details_of(source).get("ErrorInfo")
    assert isinstance(info, error_details_pb2.ErrorInfo), "the refusal carries no ErrorInfo"
    return info


def violations(source: Refusal) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The BadRequest field violations of an INVALID_ARGUMENT refusal."""
    bad_request = _details_of(source).get("BadRequest")
    assert isinstance(bad_request, error_details_pb2.BadRequest), "the refusal carries no BadRequest"
    return list(bad_request.field_violations)


def violated_fields(source: Refusal) -> list[str]:
    """The fields an INVALID_ARGUMENT refusal names, in its order."""
    return [violation.field for violation in violations(source)]


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def record(
    stub: MeteringServiceStub, customer: str, txn: str, quantity: str = "1", meter: str = "tokens", **fields: Any
) -> usage_pb2.RecordUsageResponse:
    """RecordUsage of `quantity` (the test catalog's `tokens` meter unless told)."""
    request = usage_pb2.RecordUsageRequest(
        customer_id=customer, meter_slug=meter, quantity=quantity, transaction_id=txn, **fields
    )
    response: usage_pb2.RecordUsageResponse = stub.RecordUsage(request, timeout=10)
    return response


def reserve(
    stub: MeteringServiceStub, customer: str, rid: str, quantity: str, ttl: float = 300
) -> reservations_pb2.ReserveUsageResponse:
    """ReserveUsage of `quantity` tokens for `ttl` seconds."""
    duration = Duration()
    duration.FromTimedelta(timedelta(seconds=ttl))
    request = reservations_pb2.ReserveUsageRequest(
        customer_id=customer, meter_slug="tokens", quantity=quantity, reservation_id=rid, ttl=duration
    )
    response: reservations_pb2.ReserveUsageResponse = stub.ReserveUsage(request, timeout=10)
    return response


def commit(
    stub: MeteringServiceStub, customer: str, rid: str, quantity: str = "", **fields: Any
) -> reservations_pb2.CommitReservationResponse:
    request = reservations_pb2.CommitReservationRequest(
        customer_id=customer, reservation_id=rid, quantity=quantity, **fields
    )
    response: reservations_pb2.CommitReservationResponse = stub.CommitReservation(request, timeout=10)
    return response


def release(stub: MeteringServiceStub, customer: str, rid: str) -> reservations_pb2.ReleaseReservationResponse:
    request = reservations_pb2.ReleaseReservationRequest(customer_id=customer, reservation_id=rid)
    response: reservations_pb2.ReleaseReservationResponse = stub.ReleaseReservation(request, timeout=10)
    return response


def child_pids(pid: int) -> set[int]:
    """The processes whose parent is `pid` (a supervisor's workers), from /proc."""
    return set(children_of(pid))
