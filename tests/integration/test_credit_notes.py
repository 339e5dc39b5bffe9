"""Credit notes against finalized invoices, on real services closing periods every
200 ms on a database of their own, two replicas for the races.

Every customer here is on the test catalog's `soft` plan, with one finalized
invoice of 20.00 USD: 10,000 tokens at tokens_per_unit (0.001) and 5,000
tokens recorded at tokens_premium (0.002), a line of 10.00 each."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2

from metering.client import (
    Connection,
    CreditLine,
    CreditNoteExceedsInvoiced,
    CreditNoteReason,
    IdempotencyKeyConflict,
    InvoiceNotFinalized,
    MeteringClient,
)
from metering.domain import closing
from metering.domain.periods import add_months
from metering.v1 import (
    billing_pb2,
    customer_pb2,
    invoices_pb2,
    metering_service_pb2_grpc,
    notifications_pb2,
)
from tests.http_edge import call, ok, refusal_info
from tests.support import (
    ServiceProcess,
    audit,
    calls_across,
    error_info,
    metric_value,
    record,
    run_sql,
    stamp,
    violated_fields,
    wait_for,
)

# Slow tier: services of their own, closing periods.
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub
FAST_CLOSING = {"METERING_INVOICE_GRACE": "5s", "METERING_CLOSE_INTERVAL": "200ms"}
PER_UNIT = ("tokens", "tokens_per_unit")
PREMIUM = ("tokens", "tokens_premium")
BILLING_ERROR = invoices_pb2.CREDIT_NOTE_REASON_BILLING_ERROR
CUSTOMERS = ("lines", "whole", "refusals", "race", "race-whole", "client", "what-if", "open", "http")
ANCHOR = add_months(datetime.now(UTC).replace(microsecond=0), -1) - timedelta(days=1)


class Ledger:
    """The module's database, its two replicas, and its customers (by role) with their finalized invoice."""

    def __init__(
        self, database: str, replicas: list[ServiceProcess], channel: grpc.Channel, customers: dict[str, str]
    ) -> None:
        self.database = database
        self.replicas = replicas
        self.stub = Stub(channel)
        self.customers = customers

    def invoice(self, role: str) -> invoices_pb2.Invoice:
        customer = self.customers[role]
        request = invoices_pb2.ListInvoicesRequest(customer_id=customer, status=billing_pb2.INVOICE_STATUS_FINALIZED)
        [found] = self.stub.ListInvoices(request, timeout=10).invoices
        return found


@pytest.fixture(scope="module")
def ledger(make_database: Callable[[], str]) -> Iterator[Ledger]:
    database = make_database()
    setup = ServiceProcess(database).start()  # closes nothing: the usage lands before any close
    customers = {role: f"cn-{role}-{os.urandom(4).hex()}" for role in CUSTOMERS}
    try:
        with grpc.insecure_channel(setup.target) as channel:
            stub = Stub(channel)
            for customer in customers.values():
                request = customer_pb2.UpsertCustomerRequest(
                    customer_id=customer, plan_slug="soft", billing_anchor_time=stamp(ANCHOR)
                )
                stub.UpsertCustomer(request, timeout=10)
                at = stamp(ANCHOR + timedelta(days=1))
                record(stub, customer, "u1", "10000", event_time=at)
                record(stub, customer, "u2", "5000", meter="", event_time=at, price_slug="tokens_premium")
    finally:
        setup.stop()
    replicas = [ServiceProcess(database, extra_env=FAST_CLOSING).start() for _ in "ab"]
    try:
        with grpc.insecure_channel(replicas[0].target) as channel:
            found = Ledger(database, replicas, channel, customers)

            def all_finalized() -> bool:
                count = run_sql(database, "SELECT count(*) FROM invoices")[0][0]
                return bool(count == len(customers))

            assert wait_for(all_finalized, timeout=60, interval=0.2)
            yield found
    finally:
        for replica in replicas:
            replica.stop()


def issue(
    stub: Stub,
    customer: str,
    invoice_id: str,
    note_id: str,
    *lines: tuple[tuple[str, str], str],
    whole: bool = False,
    memo: str = "",
    reason: int = BILLING_ERROR,
) -> invoices_pb2.IssueCreditNoteResponse:
    response: invoices_pb2.IssueCreditNoteResponse = stub.IssueCreditNote(
        request(customer, invoice_id, note_id, *lines, whole=whole, memo=memo, reason=reason), timeout=10
    )
    return response


def request(
    customer: str,
    invoice_id: str,
    note_id: str,
    *lines: tuple[tuple[str, str], str],
    whole: bool = False,
    memo: str = "",
    reason: int = BILLING_ERROR,
) -> invoices_pb2.IssueCreditNoteRequest:
    return invoices_pb2.IssueCreditNoteRequest(
        customer_id=customer,
        invoice_id=invoice_id,
        credit_note_id=note_id,
        reason=reason,  # type: ignore[arg-type]
        memo=memo,
        whole_invoice=whole,
        lines=[
            invoices_pb2.CreditNoteLineRequest(meter_slug=meter, price_slug=price, amount=amount)
            for (meter, price), amount in lines
        ],
    )


def refusal(
    stub: Stub, message: invoices_pb2.IssueCreditNoteRequest
) -> tuple[grpc.StatusCode, error_details_pb2.ErrorInfo, grpc.RpcError]:
    """The refusal of an IssueCreditNote call."""
    try:
        stub.IssueCreditNote(message, timeout=10)
    except grpc.RpcError as error:
        info = error_info(error)
        assert isinstance(info, error_details_pb2.ErrorInfo)
        return error.code(), info, error
    raise AssertionError("the call was accepted")


def amounts(invoice: invoices_pb2.Invoice) -> tuple[str, str, str]:
    return invoice.total.amount, invoice.credited.amount, invoice.net_total.amount


def test_the_invoices_to_credit(ledger: Ledger) -> None:
    invoice = ledger.invoice("lines")
    assert invoice.status == billing_pb2.INVOICE_STATUS_FINALIZED
    assert [(x.meter_slug, x.price_slug, x.amount.amount) for x in invoice.lines] == [
        ("tokens", "tokens_per_unit", "10.00"),
        ("tokens", "tokens_premium", "10.00"),
    ]
    assert amounts(invoice) == ("20.00", "0.00", "20.00") and list(invoice.credit_notes) == []


def test_a_line_credit_note_is_stored_listed_announced_once_and_never_changed(ledger: Ledger) -> None:
    stub, customer = ledger.stub, ledger.customers["lines"]
    invoice = ledger.invoice("lines")
    watched: list[notifications_pb2.Notification] = []
    watch = stub.WatchNotifications(
        notifications_pb2.WatchNotificationsRequest(
            customer_id=customer, types=[notifications_pb2.NOTIFICATION_TYPE_INVOICE_CREDIT_NOTE_ISSUED]
        ),
        timeout=30,
    )

    def read() -> None:
        # At the deadline `watched` stays empty, and the test fails below.
        with contextlib.suppress(grpc.RpcError):
            watched.append(next(iter(watch)).notification)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    streams = "metering_watch_streams_open"
    assert wait_for(lambda: metric_value(ledger.replicas[0].scrape(), streams) >= 1, timeout=10)

    issued = issue(stub, customer, invoice.invoice_id, "cn-1", (PER_UNIT, "2.5"), memo="events of a test tenant")
    note = issued.credit_note
    assert not issued.duplicate
    assert (note.credit_note_id, note.customer_id, note.invoice_id, note.number) == (
        "cn-1",
        customer,
        invoice.invoice_id,
        1,
    )
    assert (note.reason, note.memo, note.whole_invoice, note.amount.amount) == (
        BILLING_ERROR,
        "events of a test tenant",
        False,
        "2.50",
    )
    assert [(x.meter_slug, x.price_slug, x.amount.amount) for x in note.lines] == [
        ("tokens", "tokens_per_unit", "2.50")
    ]
    assert note.HasField("issue_time")
    # The invoice is unchanged; its credit notes and net total come with it, everywhere it is read.
    assert amounts(issued.invoice) == ("20.00", "2.50", "17.50")
    got = stub.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_id=invoice.invoice_id), timeout=10).invoice
    assert list(got.credit_notes) == [note] and amounts(got) == ("20.00", "2.50", "17.50")
    assert list(got.lines) == list(invoice.lines) and got.finalize_time == invoice.finalize_time
    assert ledger.invoice("lines") == got
    second = issue(stub, customer, invoice.invoice_id, "cn-2", (PREMIUM, "1"), (PER_UNIT, "0.5"))
    assert (second.credit_note.number, second.credit_note.amount.amount) == (2, "1.50")
    assert amounts(second.invoice) == ("20.00", "4.00", "16.00")

    # Announced once each, in the transaction that stored it.
    reader.join(timeout=30)
    watch.cancel()  # type: ignore[no-untyped-call]
    [heard] = watched
    assert heard.type == notifications_pb2.NOTIFICATION_TYPE_INVOICE_CREDIT_NOTE_ISSUED
    assert heard.customer_id == customer
    payload = heard.credit_note_issued
    assert (payload.invoice_id, payload.invoice_number, payload.credit_note_id, payload.credit_note_number) == (
        invoice.invoice_id,
        1,
        "cn-1",
        1,
    )
    assert (payload.reason, payload.amount.amount, payload.invoice_net_total.amount, payload.whole_invoice) == (
        BILLING_ERROR,
        "2.50",
        "17.50",
        False,
    )
    assert payload.amount.currency_code == "USD"

    # A replay answers the original note and writes nothing; another payload under the id is a conflict.
    replay = issue(stub, customer, invoice.invoice_id, "cn-1", (PER_UNIT, "2.50"), memo="events of a test tenant")
    assert replay.duplicate and replay.credit_note == note and amounts(replay.invoice) == ("20.00", "4.00", "16.00")
    code, info, _ = refusal(stub, request(customer, invoice.invoice_id, "cn-1", (PER_UNIT, "3")))
    assert (code, info.reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_CONFLICT")
    assert (info.metadata["credit_note_id"], info.metadata["conflicting_fields"]) == ("cn-1", "memo,lines")
    rows = run_sql(
        ledger.database,
        "SELECT type, payload FROM notifications WHERE customer_id = $1 AND type LIKE 'invoice.%' ORDER BY seq",
        customer,
    )
    assert [row["type"] for row in rows] == ["invoice.finalized", *["invoice.credit_note_issued"] * 2]
    assert json.loads(rows[1]["payload"])["credit_note_id"] == "cn-1"

    # Stored immutably: the database refuses to change or remove a credit note.
    with pytest.raises(Exception, match="never updated or deleted"):
        run_sql(ledger.database, "UPDATE credit_notes SET amount = 1 WHERE customer_id = $1", customer)
    with pytest.raises(Exception, match="never updated or deleted"):
        run_sql(ledger.database, "DELETE FROM credit_notes WHERE customer_id = $1", customer)
    report = audit(ledger.database, [customer])
    assert report.ok and report.credit_notes == 2
    written = sum(
        metric_value(r.scrape(), "metering_notifications_written_total", type="invoice.credit_note_issued")
        for r in ledger.replicas
    )
    assert written >= 2


def test_a_whole_invoice_note_credits_what_remains_and_then_nothing_is_left(ledger: Ledger) -> None:
    stub, customer = ledger.stub, ledger.customers["whole"]
    invoice_id = ledger.invoice("whole").invoice_id
    issue(stub, customer, invoice_id, "part", (PREMIUM, "4.25"))
    whole = issue(stub, customer, invoice_id, "rest", whole=True, reason=invoices_pb2.CREDIT_NOTE_REASON_GOODWILL)
    assert (whole.credit_note.whole_invoice, whole.credit_note.amount.amount, list(whole.credit_note.lines)) == (
        True,
        "15.75",
        [],
    )
    assert amounts(whole.invoice) == ("20.00", "20.00", "0.00")
    again = request(customer, invoice_id, "again", whole=True)
    line = request(customer, invoice_id, "line", (PER_UNIT, "0.01"))
    for attempt in (again, line):
        code, info, _ = refusal(stub, attempt)
        assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CREDIT_NOTE_EXCEEDS_INVOICED")
        assert (info.metadata["meter"], info.metadata["invoiced"], info.metadata["credited"]) == ("", "20", "20")
    # A replay of a whole-invoice note still answers it, though nothing is left.
    replay = issue(stub, customer, invoice_id, "rest", whole=True, reason=invoices_pb2.CREDIT_NOTE_REASON_GOODWILL)
    assert replay.duplicate and replay.credit_note == whole.credit_note
    assert audit(ledger.database, [customer]).ok


def test_refusals_of_a_line_too_large_unknown_or_finer_than_cents_and_of_invoices_not_finalized(
    ledger: Ledger,
) -> None:
    stub, customer = ledger.stub, ledger.customers["refusals"]
    invoice_id = ledger.invoice("refusals").invoice_id
    issue(stub, customer, invoice_id, "first", (PREMIUM, "9.99"))
    code, info, _ = refusal(stub, request(customer, invoice_id, "second", (PREMIUM, "0.02")))
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CREDIT_NOTE_EXCEEDS_INVOICED")
    assert dict(info.metadata) == {
        "invoice_id": invoice_id,
        "meter": "tokens",
        "price": "tokens_premium",
        "invoiced": "10",
        "credited": "9.99",
        "requested": "0.02",
        "currency": "USD",
    }
    code, _, error = refusal(stub, request(customer, invoice_id, "x", (("tokens", "tokens_eur"), "1")))
    assert (code, violated_fields(error)) == (grpc.StatusCode.INVALID_ARGUMENT, ["lines[0]"])
    code, _, error = refusal(stub, request(customer, invoice_id, "x", (PER_UNIT, "0.001")))
    assert (code, violated_fields(error)) == (grpc.StatusCode.INVALID_ARGUMENT, ["lines[0].amount"])
    code, _, error = refusal(
        stub, request(customer, invoice_id, "x", (PER_UNIT, "1"), (PER_UNIT, "2"), whole=True, reason=0)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["reason", "lines", "lines[1]"]

    # The invoice of the running period exists only once finalized: its id is not finalized yet.
    current = closing.billing_period(datetime.now(UTC), ANCHOR)
    running = str(closing.invoice_id_for(customer, current.start))
    code, info, _ = refusal(stub, request(customer, running, "early", whole=True))
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INVOICE_NOT_FINALIZED")
    assert (info.metadata["invoice_id"], info.metadata["status"]) == (running, "gathering")
    # Unknown, and another customer's, are NOT_FOUND.
    other = ledger.invoice("open").invoice_id
    for unknown in (str(uuid.uuid4()), other):
        code, info, _ = refusal(stub, request(customer, unknown, "x", whole=True))
        assert (code, info.reason) == (grpc.StatusCode.NOT_FOUND, "INVOICE_NOT_FOUND")
    rows = run_sql(ledger.database, "SELECT credit_note_id FROM credit_notes WHERE customer_id = $1", customer)
    assert [row[0] for row in rows] == ["first"]  # nothing refused was written


def test_concurrent_notes_across_two_replicas_never_credit_more_than_the_line_or_the_invoice(ledger: Ledger) -> None:
    customer = ledger.customers["race"]
    invoice_id = ledger.invoice("race").invoice_id
    # 12 notes of 3.00 on a 10.00 line at once, alternating replicas: 3 fit.
    requests = [request(customer, invoice_id, f"race-{n}", (PER_UNIT, "3.00")) for n in range(12)]
    codes = calls_across(ledger.replicas, "IssueCreditNote", requests)
    assert codes.count(grpc.StatusCode.OK) == 3
    assert codes.count(grpc.StatusCode.FAILED_PRECONDITION) == 9
    invoice = ledger.invoice("race")
    assert amounts(invoice) == ("20.00", "9.00", "11.00")
    assert sorted(note.number for note in invoice.credit_notes) == [1, 2, 3]

    # Two whole-invoice notes at once, with line notes racing them: the total is credited once.
    customer = ledger.customers["race-whole"]
    invoice_id = ledger.invoice("race-whole").invoice_id
    requests = [
        request(customer, invoice_id, "whole-a", whole=True),
        request(customer, invoice_id, "line-a", (PREMIUM, "6")),
        request(customer, invoice_id, "whole-b", whole=True),
        request(customer, invoice_id, "line-b", (PER_UNIT, "6")),
    ]
    codes = calls_across(ledger.replicas, "IssueCreditNote", requests)
    assert codes.count(grpc.StatusCode.FAILED_PRECONDITION) >= 2  # once a whole note is in, nothing else fits
    invoice = ledger.invoice("race-whole")
    assert amounts(invoice) == ("20.00", "20.00", "0.00")
    assert sum(note.whole_invoice for note in invoice.credit_notes) == 1
    assert audit(ledger.database, [ledger.customers["race"], customer]).ok


def test_the_client_issues_credit_notes_and_decodes_their_refusals(ledger: Ledger) -> None:
    customer = ledger.customers["client"]
    with MeteringClient(Connection(target=ledger.replicas[1].target)) as client:
        [invoice] = client.list_invoices(customer).invoices
        result = client.issue_credit_note(
            customer,
            invoice.invoice_id,
            credit_note_id="c-1",
            reason=CreditNoteReason.PRODUCT_UNSATISFACTORY,
            memo="slow answers",
            lines=[CreditLine("tokens", "tokens_premium", Decimal("7.5"))],
        )
        assert not result.duplicate
        note = result.credit_note
        assert (note.number, note.reason, note.amount.amount, note.amount.currency) == (
            1,
            CreditNoteReason.PRODUCT_UNSATISFACTORY,
            Decimal("7.50"),
            "USD",
        )
        assert note.lines[0].amount.amount == Decimal("7.50")
        assert result.invoice.net_total is not None and result.invoice.net_total.amount == Decimal("12.50")
        got = client.get_invoice(invoice.invoice_id)
        assert got.credit_notes == (note,) and got.credited is not None and got.credited.amount == Decimal("7.50")
        with pytest.raises(CreditNoteExceedsInvoiced) as exceeded:
            client.issue_credit_note(
                customer,
                invoice.invoice_id,
                credit_note_id="c-2",
                reason=CreditNoteReason.GOODWILL,
                lines=[CreditLine("tokens", "tokens_premium", "2.51")],
            )
        assert (exceeded.value.meter, exceeded.value.invoiced, exceeded.value.credited, exceeded.value.requested) == (
            "tokens",
            Decimal(10),
            Decimal("7.5"),
            Decimal("2.51"),
        )
        with pytest.raises(IdempotencyKeyConflict) as conflict:
            client.issue_credit_note(
                customer, invoice.invoice_id, credit_note_id="c-1", reason=CreditNoteReason.GOODWILL, whole_invoice=True
            )
        assert (conflict.value.kind, conflict.value.key) == ("credit_note", "c-1")
        running = str(closing.invoice_id_for(customer, closing.billing_period(datetime.now(UTC), ANCHOR).start))
        with pytest.raises(InvoiceNotFinalized) as early:
            client.issue_credit_note(
                customer, running, credit_note_id="c-3", reason=CreditNoteReason.DUPLICATE, whole_invoice=True
            )
        assert early.value.status == "gathering" and early.value.period_end is not None


def test_a_finalized_period_answers_its_invoice_with_the_what_if_beside_it(ledger: Ledger) -> None:
    customer = ledger.customers["what-if"]
    request = billing_pb2.EstimateBillRequest(
        customer_id=customer, period_time=stamp(ANCHOR + timedelta(days=2)), what_if_plan_slug="open"
    )
    response = ledger.stub.EstimateBill(request, timeout=10)
    assert response.invoice_status == billing_pb2.INVOICE_STATUS_FINALIZED and response.total.amount == "20.00"
    # On open: the 15,000 tokens at open's price (0.001), 1,000 included: 14.00.
    [line] = response.what_if.lines
    assert (line.price_slug, line.quantity, line.included_quantity, line.amount.amount) == (
        "tokens_per_unit",
        "15000",
        "1000",
        "14.00",
    )


def test_over_http_the_idempotency_key_header_is_the_credit_note_id(ledger: Ledger) -> None:
    customer = ledger.customers["http"]
    invoice_id = ledger.invoice("http").invoice_id
    body = {
        "customerId": customer,
        "invoiceId": invoice_id,
        "reason": "CREDIT_NOTE_REASON_ORDER_CHANGE",
        "lines": [{"meterSlug": "tokens", "priceSlug": "tokens_per_unit", "amount": "1.25"}],
    }
    key = {"Idempotency-Key": "http-cn-1"}
    with httpx.Client(base_url=ledger.replicas[1].http_url, timeout=10) as http:
        first = ok(call(http, "", "IssueCreditNote", body, key))
        assert first["creditNote"]["creditNoteId"] == "http-cn-1"
        assert (first["creditNote"]["amount"]["amount"], first["invoice"]["netTotal"]["amount"]) == ("1.25", "18.75")
        again = ok(call(http, "", "IssueCreditNote", body, key))
        assert again["duplicate"] is True and again["creditNote"] == first["creditNote"]
        too_much = {**body, "lines": [{"meterSlug": "tokens", "priceSlug": "tokens_per_unit", "amount": "9"}]}
        refused = call(http, "", "IssueCreditNote", too_much, {"Idempotency-Key": "http-cn-2"})
        assert refused.status_code == 400 and refused.json()["code"] == "failed_precondition"
        assert refusal_info(refused).reason == "CREDIT_NOTE_EXCEEDS_INVOICED"
