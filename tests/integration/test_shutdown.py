"""SIGTERM to a fully configured service, with webhook deliveries in flight:
every background task stops before the pool closes, and the process exits 0
within its drain bound with nothing in its log but the shutdown itself.

Configured: a webhooks file (a local receiver that holds every delivery
open, so deliveries are mid-flight at SIGTERM), the Stripe export (a local
stand-in), a read replica URL (the primary's own database: the router probes
it, finds no standby and keeps reads on the primary, but its pool and probe
run as with a real standby), an auth file, a pid file, and a SIGHUP reload of
both files before the shutdown.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from metering.domain.access import caller_entry, new_token, token_digest
from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.receiver import Receiver, webhook_receiver
from tests.stripe_standin import MeterEvent, StripeStandIn
from tests.support import ServiceProcess, metric_value, wait_for

Stub = metering_service_pb2_grpc.MeteringServiceStub
API_KEY = "sk_test_standin_" + "s" * 24
# The drain bound: METERING_SHUTDOWN_DELAY (0 here) plus METERING_SHUTDOWN_GRACE.
GRACE_SECONDS = 5
# Beyond the bound: the interpreter's own exit, on a machine shared with other tests.
MARGIN_SECONDS = 10
# How long the Stripe stand-in takes to answer a meter event.
STRIPE_ANSWER_SECONDS = 3
# Customers whose first event crosses 80% of their limit: a notification each,
# more than one endpoint delivers at once (16), so deliveries queue behind the held ones.
CUSTOMERS = 20
# What a clean shutdown never logs: the bug (a task of the pool's users left
# running as the pool closed) showed as the first three.
FORBIDDEN = (
    "Traceback",
    "Task exception was never retrieved",
    "was destroyed but it is pending",
    "pool is closed",
    "unhandled exception during asyncio.run() shutdown",
    "Exception ignored",
)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the test's end: the receiver and the stand-in answer what they hold."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def standin(release: threading.Event) -> Iterator[StripeStandIn]:
    """Stripe's stand-in, slow to answer each meter event it counts: the export is mid-send."""

    def hold(event: MeterEvent) -> None:
        # Not until the test's end: the library's request blocks a thread,
        # which no cancellation stops, and the interpreter waits for it at exit.
        release.wait(STRIPE_ANSWER_SECONDS)

    server = StripeStandIn(API_KEY, on_counted=hold).start()
    try:
        yield server
    finally:
        release.set()  # its threads end before it shuts down
        server.stop()


@pytest.fixture
def receiver(release: threading.Event) -> Iterator[Receiver]:
    """A webhook receiver that answers no delivery until the test's end."""

    def answer(headers: dict[str, str], body: bytes, before: int) -> int:
        release.wait(60)
        return 200

    with webhook_receiver(answer) as receiver:
        try:
            yield receiver
        finally:
            release.set()


def secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def write_files(directory: Path, receiver: Receiver, customers: list[str], token: str) -> dict[str, Path]:
    files = {
        "auth": directory / "callers.toml",
        "webhooks": directory / "webhooks.toml",
        "stripe": directory / "stripe.toml",
        "pid": directory / "metering.pid",
    }
    files["auth"].write_text(caller_entry("admin", ["admin", "recorder"], token_digests=[token_digest(token)]))
    files["webhooks"].write_text(
        f'[endpoints.held]\nurl = "{receiver.url}"\nsecrets = ["{secret()}"]\ntypes = ["usage.threshold_crossed"]\n'
    )
    ids = "".join(f'"{c}" = "cus_{c.replace("-", "")}"\n' for c in customers)
    files["stripe"].write_text(
        f'[meters.tokens]\nevent_name = "api_tokens"\n[customers]\nunlisted = "skip"\n[customers.ids]\n{ids}'
    )
    return files


def environment(files: dict[str, Path], database_url: str, standin: StripeStandIn) -> dict[str, str]:
    return {
        "METERING_LOG_LEVEL": "INFO",  # the shutdown's own lines, down to "stopped"
        "METERING_AUTH_FILE": str(files["auth"]),
        "METERING_PID_FILE": str(files["pid"]),
        "METERING_WEBHOOKS_FILE": str(files["webhooks"]),
        "METERING_NOTIFICATION_POLL": "200ms",
        "METERING_WEBHOOK_TIMEOUT": "60s",  # a held delivery is still in flight at SIGTERM
        "METERING_STRIPE_FILE": str(files["stripe"]),
        "METERING_STRIPE_API_KEY": API_KEY,
        "METERING_STRIPE_API_BASE": standin.url,
        "METERING_STRIPE_SETTLE_DELAY": "0s",
        "METERING_STRIPE_INTERVAL": "200ms",
        "METERING_STRIPE_TIMEOUT": "60s",  # a slow answer is an answer
        "METERING_READ_DATABASE_URL": database_url,
        "METERING_HEALTH_INTERVAL": "200ms",  # the replica's probe and the health probe run often
        "METERING_SHUTDOWN_GRACE": f"{GRACE_SECONDS}s",
    }


def reloaded(service: ServiceProcess) -> Callable[[], bool]:
    """Whether both files were reloaded (applied) once SIGHUP has been sent."""

    def applied(file: str) -> float:
        return metric_value(service.scrape(), "metering_config_reloads_total", file=file, outcome="applied")

    return lambda: applied("auth") >= 1 and applied("webhooks") >= 1


def earlier_usage(database_url: str, customers: list[str]) -> None:
    """An event of the hour before for each customer, through a service of its
    own: the exporter looks for closed hours when it starts (and then at each
    new hour), so these are there for it to send at once."""
    service = ServiceProcess(database_url).start()
    try:
        with grpc.insecure_channel(service.target) as channel:
            stub = Stub(channel)
            for customer in customers:
                request = customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="limited")
                request.billing_anchor_time.FromDatetime(datetime.now(UTC) - timedelta(days=3))
                stub.UpsertCustomer(request, timeout=10)
                earlier = usage_pb2.RecordUsageRequest(
                    customer_id=customer, meter_slug="tokens", quantity="1", transaction_id="earlier"
                )
                earlier.event_time.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
                stub.RecordUsage(earlier, timeout=10)
    finally:
        assert service.stop() == 0


def crossing_usage(stub: Stub, customers: list[str], token: str) -> None:
    """Each customer's next event takes its usage past 80% of its limit: a notification each."""
    metadata = (("authorization", f"Bearer {token}"),)
    for customer in customers:
        crossing = usage_pb2.RecordUsageRequest(
            customer_id=customer, meter_slug="tokens", quantity="89", transaction_id="crossing"
        )
        stub.RecordUsage(crossing, timeout=10, metadata=metadata)


def test_sigterm_mid_delivery_stops_every_task_before_the_pool_closes(
    make_database: Callable[[], str],
    tmp_path: Path,
    standin: StripeStandIn,
    receiver: Receiver,
) -> None:
    database_url = make_database()  # its own: the endpoint's cursor and the export see only this test
    token = new_token()
    customers = [f"shut-{uuid.uuid4().hex[:10]}" for _ in range(CUSTOMERS)]
    earlier_usage(database_url, customers)
    files = write_files(tmp_path, receiver, customers, token)
    stderr = tmp_path / "stderr.log"
    service = ServiceProcess(
        database_url, extra_env=environment(files, database_url, standin), stderr_path=stderr
    ).start()
    assert service.process is not None
    try:
        service.process.send_signal(signal.SIGHUP)
        assert wait_for(reloaded(service), timeout=15), stderr.read_text()
        time.sleep(1.0)  # an endpoint's cursor starts "from now" at its first lease
        with grpc.insecure_channel(service.target) as channel:
            crossing_usage(Stub(channel), customers, token)
        # Deliveries and a meter event are held open: in flight, not answered.
        assert wait_for(lambda: len(receiver.arrivals) >= 1, timeout=30), stderr.read_text()
        assert wait_for(lambda: len(standin.counted()) >= 1, timeout=30), stderr.read_text()
        assert not receiver.delivered() and not standin.attempts
        stopping = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        try:
            code = service.process.wait(timeout=GRACE_SECONDS + MARGIN_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {GRACE_SECONDS + MARGIN_SECONDS}s after SIGTERM:\n{stderr.read_text()}")
        took = time.monotonic() - stopping
    finally:
        service.stop()
    errors = stderr.read_text()
    log = errors + "".join(service.output)
    assert code == 0, log
    assert took < GRACE_SECONDS + MARGIN_SECONDS
    assert [text for text in FORBIDDEN if text in log] == [], log
    assert errors.splitlines()[-1].endswith(" stopped"), log  # the shutdown ran to its end, and nothing after it
    assert not files["pid"].exists()
