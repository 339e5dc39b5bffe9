"""Billing periods closing into invoices, against real `metering serve`
processes closing every few hundred milliseconds on a database of their own
(the session's service closes nothing: tests/support.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from metering.domain.periods import ResetPeriod, add_months, period_containing
from metering.ledger.invoicing import CLOSER_LOCK_NAMESPACE
from metering.v1 import (
    billing_pb2,
    customer_pb2,
    events_pb2,
    ingest_pb2,
    invoices_pb2,
    metering_service_pb2_grpc,
    usage_pb2,
)
from tests.support import ServiceProcess, error_details, error_info, metric_value, run_sql, stamp, wait_for

# Slow tier: services of their own (closing settings, concurrent closers).
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub

GRACE = timedelta(seconds=5)
FAST_CLOSING = {"METERING_INVOICE_GRACE": "5s", "METERING_CLOSE_INTERVAL": "200ms"}


def period_ending_soon(seconds: float) -> tuple[datetime, datetime, datetime, int]:
    """(anchor, start, end, periods before it) of a billing period that ends
    `seconds` from now: usually the first period of an anchor a month back,
    but a month-end anchor reaches some days only in later periods."""
    target = (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)
    for months in range(1, 13):
        anchor = add_months(target, -months)
        period = period_containing(target - timedelta(microseconds=1), anchor, ResetPeriod.MONTH)
        if period.end == target:
            return anchor, period.start, target, months - 1
    raise AssertionError(f"no monthly anchor has a period ending at {target}")


def create(stub: Stub, customer: str, anchor: datetime, plan: str = "limited") -> None:
    stub.UpsertCustomer(
        customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug=plan, billing_anchor_time=stamp(anchor)),
        timeout=10,
    )


def record_request(customer: str, txn: str, quantity: str, at: datetime | None) -> usage_pb2.RecordUsageRequest:
    request = usage_pb2.RecordUsageRequest(
        customer_id=customer, meter_slug="tokens", quantity=quantity, transaction_id=txn
    )
    if at is not None:
        request.event_time.CopyFrom(stamp(at))
    return request


def record(stub: Stub, customer: str, txn: str, quantity: str, at: datetime | None) -> usage_pb2.RecordUsageResponse:
    response: usage_pb2.RecordUsageResponse = stub.RecordUsage(record_request(customer, txn, quantity, at), timeout=10)
    return response


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, error_details_pb2.ErrorInfo]:
    try:
        call()
    except grpc.RpcError as error:
        info = error_info(error)
        assert isinstance(info, error_details_pb2.ErrorInfo)
        return error.code(), info
    raise AssertionError("the call was accepted")


def bill(stub: Stub, customer: str, at: datetime) -> billing_pb2.EstimateBillResponse:
    request = billing_pb2.EstimateBillRequest(customer_id=customer, period_time=stamp(at))
    response: billing_pb2.EstimateBillResponse = stub.EstimateBill(request, timeout=10)
    return response


def invoices(stub: Stub, customer: str, **fields: Any) -> list[invoices_pb2.Invoice]:
    """Every invoice of a ListInvoices query, following next_page_token."""
    request = invoices_pb2.ListInvoicesRequest(customer_id=customer, **fields)
    found: list[invoices_pb2.Invoice] = []
    while True:
        response = stub.ListInvoices(request, timeout=10)
        found.extend(response.invoices)
        if not response.next_page_token:
            return found
        request.page_token = response.next_page_token


def finalized(stub: Stub, customer: str) -> list[invoices_pb2.Invoice]:
    return invoices(stub, customer, status=billing_pb2.INVOICE_STATUS_FINALIZED)


def bill_content(message: Any) -> tuple[Any, ...]:
    """What a bill says, whichever message carries it (EstimateBillResponse or Invoice)."""
    return (
        message.customer_id,
        message.plan_slug,
        message.period_start_time.ToDatetime(),
        message.period_end_time.ToDatetime(),
        [line.SerializeToString(deterministic=True) for line in message.lines],
        message.subtotal,
        message.credits,
        message.total,
    )


@pytest.fixture(scope="module")
def invoice_database(make_database: Callable[[], str]) -> str:
    return make_database()


@pytest.fixture(scope="module")
def closing_service(invoice_database: str) -> Iterator[ServiceProcess]:
    process = ServiceProcess(invoice_database, extra_env=FAST_CLOSING).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def closing_stub(closing_service: ServiceProcess) -> Iterator[Stub]:
    with grpc.insecure_channel(closing_service.target) as channel:
        yield Stub(channel)


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(6).hex()}"


def test_a_period_closes_after_its_grace_and_then_refuses_late_events(
    closing_stub: Stub, closing_service: ServiceProcess, invoice_database: str
) -> None:
    stub = closing_stub
    anchor, start, end, earlier = period_ending_soon(3)
    customer = new_id("late")
    create(stub, customer, anchor)
    inside = end - timedelta(hours=1)
    record(stub, customer, "e1", "25", inside)
    assert bill(stub, customer, inside).invoice_status == billing_pb2.INVOICE_STATUS_GATHERING

    # The period ends: a draft during the grace, and late events and voids still count.
    assert wait_for(lambda: datetime.now(UTC) > end + timedelta(milliseconds=100), timeout=10)
    record(stub, customer, "e2", "5", end - timedelta(seconds=1))
    record(stub, customer, "e3", "50", inside)
    voided = stub.VoidUsage(events_pb2.VoidUsageRequest(customer_id=customer, transaction_id="e3", reason="t"))
    assert voided.event.HasField("void_time")
    draft = bill(stub, customer, inside)
    assert draft.invoice_status == billing_pb2.INVOICE_STATUS_DRAFT and not draft.invoice_id
    assert [line.quantity for line in draft.lines if line.meter_slug == "tokens"] == ["30"]
    assert invoices(stub, customer)[0].status == billing_pb2.INVOICE_STATUS_DRAFT

    # Finalized: EstimateBill answers the stored invoice, which is the last draft exactly.
    def is_final() -> bool:
        return bill(stub, customer, inside).invoice_status == billing_pb2.INVOICE_STATUS_FINALIZED

    assert wait_for(is_final, timeout=30, interval=0.2)
    final = bill(stub, customer, inside)
    assert bill_content(final) == bill_content(draft)
    invoice = stub.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_id=final.invoice_id), timeout=10).invoice
    assert bill_content(invoice) == bill_content(draft)
    assert invoice.status == billing_pb2.INVOICE_STATUS_FINALIZED and invoice.HasField("finalize_time")
    assert (invoice.period_start_time.ToDatetime(tzinfo=UTC), invoice.period_end_time.ToDatetime(tzinfo=UTC)) == (
        start,
        end,
    )
    assert [i.number for i in finalized(stub, customer)] == list(range(earlier + 1, 0, -1))  # in period order

    # After finalization: a new event in the period is refused with the invoice, nothing written.
    code, info = refusal(lambda: record(stub, customer, "e4", "1", inside))
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PERIOD_CLOSED")
    assert info.metadata["invoice_id"] == final.invoice_id
    assert (info.metadata["period_start"], info.metadata["period_end"]) == (
        start.isoformat().replace("+00:00", "Z"),
        end.isoformat().replace("+00:00", "Z"),
    )
    # ... in a batch too, without failing the batch's other events; a reused
    # transaction id with another time is a conflict, judged before its time.
    batch = stub.RecordUsageBatch(
        ingest_pb2.RecordUsageBatchRequest(
            events=[
                record_request(customer, "e5", "1", inside),
                record_request(customer, "e6", "1", None),
                record_request(customer, "e1", "25", inside + timedelta(seconds=1)),
            ]
        ),
        timeout=10,
    )
    assert [r.status.code for r in batch.results] == [
        grpc.StatusCode.FAILED_PRECONDITION.value[0],
        grpc.StatusCode.OK.value[0],
        grpc.StatusCode.ALREADY_EXISTS.value[0],
    ]
    assert error_info(batch.results[2].status).reason == "TRANSACTION_ID_CONFLICT"
    stored = run_sql(
        invoice_database, "SELECT transaction_id FROM usage_events WHERE customer_id = $1 ORDER BY 1", customer
    )
    assert [row[0] for row in stored] == ["e1", "e2", "e3", "e6"]
    # A replay of a recorded event is a duplicate though its period closed
    # since; a reused id with an earlier time is a conflict; a void is refused.
    assert record(stub, customer, "e1", "25", inside).duplicate
    code, info = refusal(lambda: record(stub, customer, "e1", "25", inside - timedelta(minutes=1)))
    assert (code, info.reason) == (grpc.StatusCode.ALREADY_EXISTS, "TRANSACTION_ID_CONFLICT")
    code, info = refusal(
        lambda: stub.VoidUsage(events_pb2.VoidUsageRequest(customer_id=customer, transaction_id="e1", reason="t"))
    )
    assert (code, info.reason, info.metadata["invoice_id"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PERIOD_CLOSED",
        final.invoice_id,
    )
    # The invoice never changes, and the database refuses to change it.
    again = stub.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_id=final.invoice_id), timeout=10).invoice
    assert again == invoice
    with pytest.raises(Exception, match="never updated or deleted"):
        run_sql(invoice_database, "UPDATE invoices SET total = 0 WHERE customer_id = $1", customer)
    with pytest.raises(Exception, match="never updated or deleted"):
        run_sql(invoice_database, "DELETE FROM invoices WHERE customer_id = $1", customer)
    metrics = closing_service.scrape()
    assert metric_value(metrics, "metering_late_events_refused_total", reason="period_closed") >= 2  # e4, e5
    assert metric_value(metrics, "metering_invoices_finalized_total") >= earlier + 1
    assert metric_value(metrics, "metering_invoice_grace_seconds") == GRACE.total_seconds()


def test_every_period_closes_in_order_even_without_usage(closing_stub: Stub) -> None:
    """A customer five periods behind (as after downtime): its zero invoices
    1 to 5 come out one period per transaction, promptly, in order."""
    anchor = add_months(datetime.now(UTC).replace(microsecond=0), -5) - timedelta(days=1)
    customer = new_id("backlog")
    create(closing_stub, customer, anchor)
    assert wait_for(lambda: len(finalized(closing_stub, customer)) == 5, timeout=30, interval=0.2)
    listed = invoices(closing_stub, customer, page_size=2)
    assert [i.number for i in listed] == [5, 4, 3, 2, 1]
    assert all(i.status == billing_pb2.INVOICE_STATUS_FINALIZED for i in listed)
    assert all(i.total.amount in ("0", "0.00") and i.total.currency_code == "USD" for i in listed)
    assert all({line.meter_slug for line in i.lines} >= {"tokens", "calls"} for i in listed)
    starts = [i.period_start_time.ToDatetime(tzinfo=UTC) for i in reversed(listed)]
    assert starts == [add_months(anchor, n) for n in range(5)]
    assert invoices(closing_stub, customer, status=billing_pb2.INVOICE_STATUS_DRAFT) == []
    code, info = refusal(
        lambda: closing_stub.GetInvoice(
            invoices_pb2.GetInvoiceRequest(invoice_id="00000000-0000-0000-0000-000000000000"), timeout=10
        )
    )
    assert (code, info.reason) == (grpc.StatusCode.NOT_FOUND, "INVOICE_NOT_FOUND")


def test_a_period_that_cannot_be_priced_waits_without_holding_up_others(
    closing_stub: Stub, closing_service: ServiceProcess, invoice_database: str
) -> None:
    anchor = add_months(datetime.now(UTC).replace(microsecond=0), -2) - timedelta(days=1)
    broken, healthy = new_id("unpriced"), new_id("healthy")
    # A customer with an event priced with a price the catalog no longer has
    # (as after a catalog change), written in one statement (with its rollup
    # bucket, as the writer would) so that no pass closes its first period
    # before the event is there.
    run_sql(
        invoice_database,
        """
        WITH customer AS (
            INSERT INTO customers (customer_id, plan_slug, billing_anchor, closing_period_end)
            VALUES ($1, 'limited', $2, $3) RETURNING customer_id
        ), event AS (
            INSERT INTO usage_events (customer_id, event_id, transaction_id, meter_slug, price_slug, quantity,
                                      event_time, period_start)
            SELECT customer_id, gen_random_uuid(), 'old', 'tokens', 'retired_price', 3, $4, $2 FROM customer
            RETURNING customer_id, event_id, event_time
        )
        INSERT INTO usage_rollups (customer_id, meter_slug, hour, price_slug, dimensions, event_count, quantity_sum,
                                   quantity_max, latest_quantity, latest_event_time, latest_event_id)
        SELECT customer_id, 'tokens', date_trunc('hour', event_time, 'UTC'), 'retired_price', '{}', 1, 3, 3, 3,
               event_time, event_id
          FROM event
        """,
        broken,
        anchor,
        add_months(anchor, 1),
        anchor + timedelta(hours=1),
    )
    create(closing_stub, healthy, anchor)
    assert wait_for(lambda: len(finalized(closing_stub, healthy)) == 2, timeout=30, interval=0.2)
    time.sleep(1)  # several more passes
    assert finalized(closing_stub, broken) == []
    code, info = refusal(lambda: bill(closing_stub, broken, anchor))  # its draft cannot be priced either
    assert (code, info.reason) == (grpc.StatusCode.NOT_FOUND, "PRICE_NOT_FOUND")
    assert metric_value(closing_service.scrape(), "metering_invoice_pricing_failures_total") == 1
    logged = [line for line in closing_service.output if broken in line and "cannot finalize" in line]
    assert len(logged) == 1, logged  # once per period, not every pass
    # The oldest period waiting to close is that one, and its age shows it.
    assert metric_value(closing_service.scrape(), "metering_invoice_oldest_unclosed_period_age_seconds") > 86400


def test_before_the_first_period_and_replays_older_than_the_backfill_window(
    closing_stub: Stub, invoice_database: str
) -> None:
    now = datetime.now(UTC)
    customer = new_id("anchor")
    create(closing_stub, customer, now - timedelta(days=10))
    code, info = refusal(lambda: record(closing_stub, customer, "early", "1", now - timedelta(days=11)))
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BEFORE_FIRST_PERIOD")
    assert info.metadata["transaction_id"] == "early"
    old = now - timedelta(days=5)
    first = record(closing_stub, customer, "old", "2", old)
    # A replica whose backfill window is shorter than the event's age.
    strict = ServiceProcess(invoice_database, extra_env={**FAST_CLOSING, "METERING_BACKFILL_WINDOW": "1d"}).start()
    try:
        with grpc.insecure_channel(strict.target) as channel:
            strict_stub = Stub(channel)
            replay = record(strict_stub, customer, "old", "2", old)
            assert replay.duplicate and replay.event.event_id == first.event.event_id
            # Reused with an earlier time (before the anchor and the window): a conflict.
            code, info = refusal(lambda: record(strict_stub, customer, "old", "2", now - timedelta(days=11)))
            assert (code, info.reason) == (grpc.StatusCode.ALREADY_EXISTS, "TRANSACTION_ID_CONFLICT")
            with pytest.raises(grpc.RpcError) as caught:
                record(strict_stub, customer, "new-old", "2", old)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            bad = error_details(caught.value)["BadRequest"]
            assert isinstance(bad, error_details_pb2.BadRequest)
            assert [v.field for v in bad.field_violations] == ["event_time"]
            late = strict.scrape()
            assert metric_value(late, "metering_late_events_refused_total", reason="too_old") == 1
    finally:
        strict.stop()
    rows = run_sql(invoice_database, "SELECT transaction_id FROM usage_events WHERE customer_id = $1", customer)
    assert [row[0] for row in rows] == ["old"]


def set_up(database: str, customers: list[str], anchor: datetime, quantity: str) -> None:
    """Customers with usage in their first period, through a service that closes
    nothing (tests/support.py), so that no period closes before its events."""
    setup = ServiceProcess(database).start()
    try:
        with grpc.insecure_channel(setup.target) as channel:
            stub = Stub(channel)
            for customer in customers:
                create(stub, customer, anchor)
                record(stub, customer, "usage", quantity, anchor + timedelta(days=1))
    finally:
        setup.stop()


def test_two_replicas_closing_at_once_make_one_invoice_per_period(make_database: Callable[[], str]) -> None:
    database = make_database()
    anchor = add_months(datetime.now(UTC).replace(microsecond=0), -3) - timedelta(days=1)
    customers = [new_id("pair") for _ in range(20)]
    set_up(database, customers, anchor, "40")
    replicas = [ServiceProcess(database, extra_env={**FAST_CLOSING, "METERING_CLOSE_INTERVAL": "50ms"}) for _ in "ab"]
    with grpc.insecure_channel(replicas[0].start().target) as channel:
        stub = Stub(channel)
        replicas[1].start()
        try:

            def all_closed() -> bool:
                return bool(run_sql(database, "SELECT count(*) FROM invoices")[0][0] == 60)

            assert wait_for(all_closed, timeout=60, interval=0.2)
            rows = run_sql(
                database, "SELECT customer_id, array_agg(number ORDER BY period_start) FROM invoices GROUP BY 1"
            )
            assert {row[0]: list(row[1]) for row in rows} == {customer: [1, 2, 3] for customer in customers}
            made = sum(metric_value(r.scrape(), "metering_invoices_finalized_total") for r in replicas)
            assert made == 60  # each invoice was finalized by one replica, once
            first = finalized(stub, customers[0])[-1]
            assert [line.quantity for line in first.lines if line.meter_slug == "tokens"] == ["40"]
        finally:
            for replica in replicas:
                replica.stop()


def test_a_replica_killed_mid_close_leaves_nothing_and_the_next_close_completes_it(
    make_database: Callable[[], str],
) -> None:
    database = make_database()
    anchor = add_months(datetime.now(UTC).replace(microsecond=0), -1) - timedelta(days=1)
    customer = new_id("killed")
    set_up(database, [customer], anchor, "12")
    paused = ServiceProcess(database, extra_env={**FAST_CLOSING, "METERING_TEST_ONLY_CLOSE_PAUSE": "60s"}).start()

    def closing() -> bool:
        held = run_sql(
            database,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1",
            CLOSER_LOCK_NAMESPACE,
        )
        return bool(held[0][0])

    try:
        assert wait_for(closing, timeout=30, interval=0.1), "the closer never got inside its transaction"
        assert paused.process is not None
        paused.process.send_signal(signal.SIGKILL)
        paused.process.wait(10)
    finally:
        paused.stop()
    assert wait_for(lambda: not closing(), timeout=30, interval=0.1)  # PostgreSQL rolled it back
    assert run_sql(database, "SELECT count(*) FROM invoices")[0][0] == 0
    assert run_sql(database, "SELECT closed_through FROM customers WHERE customer_id = $1", customer)[0][0] is None

    successor = ServiceProcess(database, extra_env=FAST_CLOSING).start()
    try:
        with grpc.insecure_channel(successor.target) as channel:
            stub = Stub(channel)
            assert wait_for(lambda: len(finalized(stub, customer)) == 1, timeout=30, interval=0.2)
            [invoice] = finalized(stub, customer)
            assert invoice.number == 1
            assert [line.quantity for line in invoice.lines if line.meter_slug == "tokens"] == ["12"]
    finally:
        successor.stop()


def test_the_cli_lists_and_shows_invoices(closing_stub: Stub, closing_service: ServiceProcess) -> None:
    anchor = add_months(datetime.now(UTC).replace(microsecond=0), -2) - timedelta(days=1)
    customer = new_id("cli")
    create(closing_stub, customer, anchor)
    assert wait_for(lambda: len(finalized(closing_stub, customer)) == 2, timeout=30, interval=0.2)

    def metering(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "METERING_TARGET": closing_service.target}
        return subprocess.run(
            [sys.executable, "-m", "metering", *args], env=env, capture_output=True, text=True, timeout=120
        )

    listed = metering("invoices", customer)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["number", "status", "from", "to", "plan", "total", "currency", "invoice"]
    assert [line.split()[:2] for line in lines[2:]] == [["2", "finalized"], ["1", "finalized"]]
    as_json = json.loads(metering("invoices", customer, "--status", "finalized", "--json").stdout)
    assert [i["number"] for i in as_json["invoices"]] == ["2", "1"]  # int64 is a string in proto3 JSON
    first = as_json["invoices"][1]["invoice_id"]
    shown = metering("invoice", first)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"invoice {first} number 1 (finalized, finalized ")
    assert any(line.split() == ["total", "0.00", "USD"] for line in shown.stdout.splitlines()), shown.stdout
    missing = metering("invoice", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and "INVOICE_NOT_FOUND" in missing.stdout + missing.stderr


def test_an_invoice_counts_exactly_the_late_events_accepted_while_it_was_finalized(
    closing_stub: Stub, invoice_database: str
) -> None:
    """Late events keep arriving across the instant the closer finalizes their
    period: every one answered OK is in the invoice, every one after it is
    refused PERIOD_CLOSED, none is lost between the two."""
    anchor, start, end, _ = period_ending_soon(2)
    customer = new_id("race")
    create(closing_stub, customer, anchor, plan="open")
    inside = end - timedelta(minutes=1)
    assert wait_for(lambda: datetime.now(UTC) > end, timeout=10)
    accepted = refused = 0
    deadline = time.monotonic() + 30
    for n in range(100_000):
        batch = closing_stub.RecordUsageBatch(
            ingest_pb2.RecordUsageBatchRequest(
                events=[record_request(customer, f"r{n}-{i}", "1", inside + timedelta(seconds=i)) for i in range(5)]
            ),
            timeout=10,
        )
        codes = [r.status.code for r in batch.results]
        accepted += codes.count(grpc.StatusCode.OK.value[0])
        refused += codes.count(grpc.StatusCode.FAILED_PRECONDITION.value[0])
        assert accepted + refused == 5 * (n + 1)
        if refused >= 50 or time.monotonic() > deadline:
            break
    assert accepted > 0 and refused >= 50
    [invoice] = [i for i in finalized(closing_stub, customer) if i.period_start_time.ToDatetime(tzinfo=UTC) == start]
    assert [line.quantity for line in invoice.lines if line.meter_slug == "tokens"] == [str(accepted)]
    stored = run_sql(
        invoice_database,
        "SELECT count(*) FROM usage_events WHERE customer_id = $1 AND event_time >= $2 AND event_time < $3",
        customer,
        start,
        end,
    )
    assert stored[0][0] == accepted


def test_a_finalized_invoice_is_announced_once_in_its_closing_transaction(
    closing_stub: Stub, invoice_database: str
) -> None:
    anchor, _, end, _ = period_ending_soon(2)
    customer = new_id("announced")
    create(closing_stub, customer, anchor)
    record(closing_stub, customer, "a1", "40", end - timedelta(minutes=5))
    assert wait_for(lambda: len(finalized(closing_stub, customer)) == 1, timeout=30, interval=0.2)
    [invoice] = finalized(closing_stub, customer)
    time.sleep(1)  # more passes of the closer: still one announcement
    rows = run_sql(
        invoice_database, "SELECT type, payload FROM notifications WHERE customer_id = $1 ORDER BY seq", customer
    )
    assert [row["type"] for row in rows] == ["invoice.finalized"]
    payload = json.loads(rows[0]["payload"])
    assert (payload["invoice_id"], payload["invoice_number"]) == (invoice.invoice_id, invoice.number)
    assert (payload["total"], payload["currency"]) == (invoice.total.amount, invoice.total.currency_code)
    assert payload["period"]["start"] == invoice.period_start_time.ToDatetime(tzinfo=UTC).isoformat()
