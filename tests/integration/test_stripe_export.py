"""The billing sync to Stripe against a local stand-in (tests/stripe_standin.py),
with real `metering serve` processes on a database of each test's own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from metering.domain.stripe import identifier
from metering.domain.windows import HOUR, floor_hour
from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.stripe_standin import MeterEvent, StripeStandIn
from tests.support import ServiceProcess, metric_value, run_sql, wait_for

# Slow tier: services of their own exporting to a Stripe stand-in.
pytestmark = pytest.mark.slow

API_KEY = "sk_test_standin_" + "x" * 24
EVENT_NAMES = {"tokens": "api_tokens", "calls": "api_calls"}
Stub = metering_service_pb2_grpc.MeteringServiceStub


@pytest.fixture
def standin() -> Iterator[StripeStandIn]:
    server = StripeStandIn(API_KEY).start()
    yield server
    server.stop()


def stripe_id(customer: str) -> str:
    return "cus_" + customer.replace("-", "")


def write_mapping(path: Path, customers: list[str]) -> Path:
    lines = [f'[meters.{meter}]\nevent_name = "{name}"' for meter, name in EVENT_NAMES.items()]
    lines.append('[customers]\nunlisted = "skip"\n[customers.ids]')
    lines += [f'"{c}" = "{stripe_id(c)}"' for c in customers]
    path.write_text("\n".join(lines) + "\n")
    return path


def exporter_env(mapping: Path, standin: StripeStandIn, api_key: str = API_KEY) -> dict[str, str]:
    return {
        "METERING_STRIPE_FILE": str(mapping),
        "METERING_STRIPE_API_KEY": api_key,
        "METERING_STRIPE_API_BASE": standin.url,
        "METERING_STRIPE_SETTLE_DELAY": "0s",
        "METERING_STRIPE_INTERVAL": "200ms",
        "METERING_STRIPE_TIMEOUT": "5s",
    }


def record(stub: Stub, customer: str, meter: str, quantity: str, at: datetime) -> None:
    request = usage_pb2.RecordUsageRequest(
        customer_id=customer, meter_slug=meter, quantity=quantity, transaction_id=uuid.uuid4().hex
    )
    request.event_time.FromDatetime(at)
    stub.RecordUsage(request, timeout=10)


def with_usage(database_url: str, build: Callable[[Stub], None]) -> None:
    """Record the test's usage through a service without the exporter, so
    that no hour is exported while its events are still arriving."""
    service = ServiceProcess(database_url).start()
    try:
        with grpc.insecure_channel(service.target) as channel:
            build(Stub(channel))
    finally:
        service.stop()


def new_customer(stub: Stub) -> str:
    customer = f"stripe-{uuid.uuid4().hex[:12]}"
    # Anchored before the hours the tests record into (an event before the
    # customer's first period is refused).
    request = customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="open")
    request.billing_anchor_time.FromDatetime(datetime.now(UTC) - timedelta(days=60))
    stub.UpsertCustomer(request, timeout=10)
    return customer


def get_usage(stub: Stub, customer: str, meter: str, start: datetime, end: datetime) -> Decimal:
    request = usage_pb2.GetUsageRequest(customer_id=customer, meter_slugs=[meter])
    request.start_time.FromDatetime(start)
    request.end_time.FromDatetime(end)
    (row,) = stub.GetUsage(request, timeout=10).rows
    return Decimal(row.value)


def totals(events: list[MeterEvent]) -> dict[tuple[str, str], int]:
    found: dict[tuple[str, str], int] = {}
    for event in events:
        key = (event.customer, event.event_name)
        found[key] = found.get(key, 0) + event.value
    return found


def pending_events(database_url: str) -> int:
    rows = run_sql(
        database_url,
        "SELECT count(*) AS n FROM stripe_meter_events WHERE acknowledged_at IS NULL AND abandoned_at IS NULL",
    )
    return int(rows[0]["n"])


def test_a_service_killed_mid_export_reports_every_hour_exactly_once(
    make_database: Callable[[], str], standin: StripeStandIn, tmp_path: Path
) -> None:
    database_url = make_database()
    now = datetime.now(UTC)
    hours = [floor_hour(now) - k * HOUR for k in range(4, 0, -1)]  # four closed hours
    customers: list[str] = []

    def build(stub: Stub) -> None:
        for _ in range(2):
            customer = new_customer(stub)
            customers.append(customer)
            for n, hour in enumerate(hours, start=1):
                for minute in (5, 25, 45):
                    record(stub, customer, "tokens", str(10 * n), hour + timedelta(minutes=minute))
                record(stub, customer, "calls", "", hour + timedelta(minutes=30))
                record(stub, customer, "calls", "1", hour + timedelta(minutes=31))

    with_usage(database_url, build)
    env = exporter_env(write_mapping(tmp_path / "stripe.toml", customers), standin)
    first = ServiceProcess(database_url, extra_env=env)

    def crash_on_third(event: MeterEvent) -> None:
        # Stripe has counted the event; the exporter dies before it hears so.
        if len(standin.counted()) == 3 and first.process is not None:
            first.process.kill()

    standin.on_counted = crash_on_third
    first.start()
    assert wait_for(lambda: first.process is not None and first.process.poll() is not None, timeout=30)
    assert len(standin.counted()) == 3
    assert pending_events(database_url) == 1  # decided, sent, counted, never acknowledged
    standin.on_counted = None

    second = ServiceProcess(database_url, extra_env=env).start()
    try:
        expected = len(customers) * len(EVENT_NAMES) * len(hours)
        assert wait_for(lambda: len(standin.counted()) == expected and pending_events(database_url) == 0, 30)
        # The interrupted event was sent again under its identifier, and not counted twice.
        assert "resource_already_exists" in [a.code for a in standin.attempts]
        want = {
            identifier("metering", customer, meter, hour)
            for customer in customers
            for meter in EVENT_NAMES
            for hour in hours
        }
        assert set(standin.events) == want
        end = hours[-1] + HOUR
        with grpc.insecure_channel(second.target) as channel:
            stub = Stub(channel)
            usage = {
                (stripe_id(c), EVENT_NAMES[m]): get_usage(stub, c, m, hours[0], end)
                for c in customers
                for m in EVENT_NAMES
            }
        assert totals(standin.counted()) == {key: int(value) for key, value in usage.items()}
        assert all(
            event.timestamp == int(hour.timestamp())
            for event in standin.counted()
            for hour in hours
            if event.identifier.startswith(f"metering-{hour:%Y%m%dT%H}Z-")
        )
        acknowledged = run_sql(
            database_url, "SELECT count(*) AS n FROM stripe_meter_events WHERE acknowledged_at IS NOT NULL"
        )
        assert acknowledged[0]["n"] == expected
        text = second.scrape()
        assert metric_value(text, "metering_stripe_export_lag_seconds", meter="tokens") == 0
        assert metric_value(text, "metering_stripe_meter_events_total", meter="tokens", outcome="sent") >= 1
    finally:
        second.stop()


def test_fractions_are_carried_and_hours_too_old_for_stripe_are_skipped(
    make_database: Callable[[], str], standin: StripeStandIn, tmp_path: Path
) -> None:
    database_url = make_database()
    now = datetime.now(UTC)
    hours = [floor_hour(now) - k * HOUR for k in range(4, 1, -1)]
    old = floor_hour(now - timedelta(days=36))
    customers: list[str] = []

    def build(stub: Stub) -> None:
        fractional, aged = new_customer(stub), new_customer(stub)
        customers.extend([fractional, aged])
        for quantity, at in [("0.4", 0), ("0.4", 0), ("0.4", 0), ("0.5", 1), ("1.3", 2)]:
            record(stub, fractional, "tokens", quantity, hours[at] + timedelta(minutes=10))
        record(stub, aged, "tokens", "7", old + timedelta(minutes=10))
        record(stub, aged, "tokens", "2", hours[2] + timedelta(minutes=10))

    with_usage(database_url, build)
    fractional, aged = customers
    service = ServiceProcess(
        database_url, extra_env=exporter_env(write_mapping(tmp_path / "s.toml", customers), standin)
    )
    service.start()
    try:
        assert wait_for(lambda: len(standin.counted()) == 3, timeout=30)
        by_customer = sorted((e.customer, e.timestamp, e.value) for e in standin.counted())
        # 1.2 -> 1 unit; 1.7 -> nothing due; 3.0 -> 2 more: floor of the exact total, no fraction lost.
        assert [(t, v) for c, t, v in by_customer if c == stripe_id(fractional)] == [
            (int(hours[0].timestamp()), 1),
            (int(hours[2].timestamp()), 2),
        ]
        # The hour 36 days ago cannot be reported: skipped and counted; the recent one is sent.
        assert [(t, v) for c, t, v in by_customer if c == stripe_id(aged)] == [(int(hours[2].timestamp()), 2)]
        skipped = "metering_stripe_meter_events_skipped_total"
        assert wait_for(lambda: metric_value(service.scrape(), skipped, meter="tokens") == 1, 10)
        progress = run_sql(
            database_url,
            "SELECT customer_id, accounted_total, skipped_total, sent_units FROM stripe_export_progress ORDER BY 1",
        )
        got = {
            row["customer_id"]: (row["accounted_total"], row["skipped_total"], row["sent_units"]) for row in progress
        }
        assert got[fractional] == (Decimal("3.0"), 0, 3)
        assert got[aged] == (9, 7, 2)
        assert "older than Stripe's 35 days" in "".join(service.output)
    finally:
        service.stop()


def test_the_log_line_of_hours_too_old_for_stripe_survives_a_restart(
    make_database: Callable[[], str], standin: StripeStandIn, tmp_path: Path
) -> None:
    database_url = make_database()
    now = datetime.now(UTC)
    old = [floor_hour(now - timedelta(days=36)) + k * HOUR for k in range(3)]
    recent = floor_hour(now) - 2 * HOUR
    customers: list[str] = []

    def build(stub: Stub) -> None:
        aged = new_customer(stub)
        customers.append(aged)
        for hour in old:
            record(stub, aged, "tokens", "5", hour + timedelta(minutes=10))
        record(stub, aged, "tokens", "2", recent + timedelta(minutes=10))

    with_usage(database_url, build)
    [aged] = customers
    env = exporter_env(write_mapping(tmp_path / "stripe.toml", customers), standin)
    first = ServiceProcess(database_url, extra_env=env)

    def crash(event: MeterEvent) -> None:
        # The progress has passed the three old hours (saved with the event
        # about to be sent); the exporter dies before it could log them.
        if first.process is not None:
            first.process.kill()

    standin.on_counted = crash
    first.start()
    assert wait_for(lambda: first.process is not None and first.process.poll() is not None, timeout=30)
    line = f"customer {aged} meter tokens: 3 hours with usage are older than Stripe's 35 days: not reported"
    assert line not in "".join(first.output)
    due = "SELECT unlogged_skipped_hours AS n FROM stripe_export_progress WHERE customer_id = $1"
    assert run_sql(database_url, due, aged)[0]["n"] == 3
    standin.on_counted = None

    second = ServiceProcess(database_url, extra_env=env).start()
    try:
        assert wait_for(lambda: line in "".join(second.output), timeout=30), "".join(second.output)
        assert wait_for(lambda: run_sql(database_url, due, aged)[0]["n"] == 0, timeout=10)
        assert wait_for(lambda: pending_events(database_url) == 0, timeout=30)
        assert metric_value(second.scrape(), "metering_stripe_meter_events_skipped_total", meter="tokens") == 3
        assert "".join(second.output).count("older than Stripe's 35 days") == 1  # once
        assert [(e.timestamp, e.value) for e in standin.counted()] == [(int(recent.timestamp()), 2)]
    finally:
        second.stop()


def test_a_wrong_api_key_fails_counted_and_exports_nothing(
    make_database: Callable[[], str], standin: StripeStandIn, tmp_path: Path
) -> None:
    database_url = make_database()
    hour = floor_hour(datetime.now(UTC)) - HOUR
    customers: list[str] = []

    def build(stub: Stub) -> None:
        customers.append(new_customer(stub))
        record(stub, customers[0], "tokens", "5", hour + timedelta(minutes=1))

    with_usage(database_url, build)
    wrong = "sk_test_wrong_" + os.urandom(8).hex()
    env = exporter_env(write_mapping(tmp_path / "s.toml", customers), standin, api_key=wrong)
    service = ServiceProcess(database_url, extra_env=env).start()
    try:
        assert wait_for(
            lambda: (
                metric_value(service.scrape(), "metering_stripe_meter_events_total", meter="tokens", outcome="failed")
                >= 2
            ),
            timeout=30,
        )
        assert set(standin.statuses()) == {401}
        assert standin.counted() == []
        assert run_sql(database_url, "SELECT * FROM stripe_export_progress") == []
        assert run_sql(database_url, "SELECT * FROM stripe_meter_events WHERE acknowledged_at IS NOT NULL") == []
        log = "".join(service.output)
        assert "the API key was refused" in log
        assert wrong not in log
    finally:
        service.stop()
