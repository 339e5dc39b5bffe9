"""Client commands for people: one per RPC they need, a table by default and
`--json` (the proto3 JSON mapping, every field without presence printed) for scripts.

Adding a command is one small function and one `client_command` declaration:

    def _customers(args: argparse.Namespace) -> int:
        request = customer_pb2.ListCustomersRequest(plan_slug=args.plan, page_size=page_size(args, 100))
        return paged(args, "ListCustomers", request, "customers", render.customers)
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from metering.cli import render
from metering.cli.connection import connection, connection_arguments, print_error
from metering.cli.exits import Exit, UsageError, for_error
from metering.cli.parsing import Runner, Subparsers, add_command
from metering.client import NO_RETRIES, MeteringClient, MeteringError
from metering.v1 import (
    billing_pb2,
    catalog_pb2,
    customer_pb2,
    events_pb2,
    grants_pb2,
    invoices_pb2,
    reservations_pb2,
    usage_pb2,
    wallets_pb2,
)

Renderer: TypeAlias = Callable[[Any], str]
# What a definite answer means for the exit status: a reason to exit 1 (printed), or None for 0.
Verdict: TypeAlias = Callable[[Any], "str | None"]

_INVOICE_STATUSES = {"draft": billing_pb2.INVOICE_STATUS_DRAFT, "finalized": billing_pb2.INVOICE_STATUS_FINALIZED}
_WINDOWS = {"hour": usage_pb2.WINDOW_SIZE_HOUR, "day": usage_pb2.WINDOW_SIZE_DAY, "month": usage_pb2.WINDOW_SIZE_MONTH}
_CREDIT_NOTE_REASONS: dict[str, invoices_pb2.CreditNoteReason] = {
    name.removeprefix("CREDIT_NOTE_REASON_").lower().replace("_", "-"): cast(invoices_pb2.CreditNoteReason, number)
    for name, number in invoices_pb2.CreditNoteReason.items()
    if number != invoices_pb2.CREDIT_NOTE_REASON_UNSPECIFIED
}
_ALL_PAGE_SIZE = 1000  # the largest page every List RPC takes: --all makes as few calls as it can


def client_command(
    commands: Subparsers, name: str, help_text: str, run: Runner, examples: Sequence[str], usage: str | None = None
) -> argparse.ArgumentParser:
    """A command that calls the service: the connection options and --json come with it."""
    parser = add_command(commands, name, help_text, run, examples=examples, usage=usage)
    connection_arguments(parser)
    parser.add_argument(
        "--json", action="store_true", help="print the answer as JSON (proto3 JSON mapping, empty fields included)"
    )
    return parser


def paging_arguments(parser: argparse.ArgumentParser, default_size: int) -> None:
    parser.add_argument(
        "--page-size", type=int, help=f"results per page (default {default_size}; {_ALL_PAGE_SIZE} with --all)"
    )
    parser.add_argument("--page-token", default="", help="continue from a previous answer's next_page_token")
    parser.add_argument("--all", action="store_true", help="follow next_page_token to the last page; print them all")


def page_size(args: argparse.Namespace, default: int) -> int:
    size: int | None = args.page_size
    if size is None:
        return _ALL_PAGE_SIZE if args.all else default
    return size


def add_commands(commands: Subparsers) -> None:
    record = client_command(
        commands,
        "record",
        "record one usage event",
        _record,
        [
            "metering record acme ai_tokens 1500 --transaction-id req-42 --property model=small",
            "metering record acme api_calls --json",
            "metering record acme --price ai_tokens_graduated 250 --transaction-id req-43",
        ],
        usage="metering record CUSTOMER METER [QUANTITY] [options]\n"
        "       metering record CUSTOMER --price PRICE [QUANTITY] [options]",
    )
    record.add_argument("customer_id", metavar="CUSTOMER")
    record.add_argument("meter_slug", metavar="METER", nargs="?", default="", help="the meter (not with --price)")
    record.add_argument(
        "quantity", metavar="QUANTITY", nargs="?", default="", help="decimal string; empty for counting meters"
    )
    record.add_argument(
        "--price", default="", metavar="PRICE", help="bill the event with this price (its meter is the price's)"
    )
    record.add_argument("--transaction-id", help="idempotency key (default: a new UUID; set it to retry safely)")
    record.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    record.add_argument("--allow-overage", action="store_true", help="record past a hard limit")
    record.add_argument(
        "--event-time", default="", help="RFC 3339 time of the usage (default: now, the server's clock)"
    )

    balance = client_command(
        commands,
        "balance",
        "what a customer has used and may still use (exit 1 if --requested does not fit)",
        _balance,
        [
            "metering balance acme",
            "metering balance acme ai_tokens --json",
            "metering balance acme ai_tokens --requested 5000 && run-the-expensive-job",
        ],
    )
    balance.add_argument("customer_id", metavar="CUSTOMER")
    balance.add_argument("meter_slug", metavar="METER", nargs="?", default="")
    balance.add_argument(
        "--requested", default="", metavar="QUANTITY", help="quantity about to be used: exit 0 if it fits, 1 if not"
    )

    usage = client_command(
        commands,
        "usage",
        "aggregated usage of one or more meters, in windows",
        _usage,
        [
            "metering usage acme ai_tokens",
            "metering usage acme ai_tokens --window day --time-zone Europe/Berlin --group-by model",
            "metering usage acme ai_tokens api_calls --start 2026-11-01T00:00:00Z --end 2026-12-01T00:00:00Z --json",
        ],
    )
    usage.add_argument("customer_id", metavar="CUSTOMER")
    usage.add_argument("meter_slugs", metavar="METER", nargs="+")
    usage.add_argument("--window", choices=sorted(_WINDOWS), help="window size (default: the whole range)")
    usage.add_argument("--time-zone", default="", help="IANA time zone of day and month windows (and of the table)")
    usage.add_argument("--group-by", action="append", default=[], metavar="PROPERTY")
    usage.add_argument("--start", help="RFC 3339 start (default: the current period)")
    usage.add_argument("--end", help="RFC 3339 end (default: now)")
    paging_arguments(usage, 0)

    events = client_command(
        commands,
        "events",
        "a customer's raw events, newest first",
        _events,
        [
            "metering events acme",
            "metering events acme ai_tokens --start 2026-11-01T00:00:00Z --end 2026-11-02T00:00:00Z",
            "metering events acme --all --json > events.json",
        ],
    )
    events.add_argument("customer_id", metavar="CUSTOMER")
    events.add_argument("meter_slug", metavar="METER", nargs="?", default="")
    events.add_argument("--start", help="RFC 3339: only events at or after this event time")
    events.add_argument("--end", help="RFC 3339: only events before this event time")
    paging_arguments(events, 20)

    bill = client_command(
        commands,
        "bill",
        "estimate the bill of the current (or a past) period: line items",
        _bill,
        [
            "metering bill acme",
            "metering bill acme --period-time 2026-10-15T00:00:00Z --json",
            "metering bill acme --what-if pro",
        ],
    )
    bill.add_argument("customer_id", metavar="CUSTOMER")
    bill.add_argument("--period-time", help="RFC 3339 instant inside the period (default: now)")
    bill.add_argument("--what-if", metavar="PLAN", default="", help="also price the same usage on this plan")

    invoices = client_command(
        commands,
        "invoices",
        "a customer's invoices, newest period first (drafts, then finalized)",
        _invoices,
        ["metering invoices acme", "metering invoices acme --status finalized --all --json"],
    )
    invoices.add_argument("customer_id", metavar="CUSTOMER")
    invoices.add_argument("--status", choices=sorted(_INVOICE_STATUSES), help="only drafts or only finalized")
    paging_arguments(invoices, 12)

    invoice = client_command(
        commands,
        "invoice",
        "one finalized invoice with its lines",
        _invoice,
        ["metering invoice 0190f3c2-5d7e-7cc1-9a43-3f1c2b9d8e11"],
    )
    invoice.add_argument("invoice_id", metavar="INVOICE")

    customer = client_command(
        commands,
        "customer",
        "show a customer, or with a plan create it or change its plan",
        _customer,
        [
            "metering customer acme",
            "metering customer acme pro",
            "metering customer acme pro --billing-anchor 2026-11-01T00:00:00Z",
        ],
    )
    customer.add_argument("customer_id", metavar="CUSTOMER")
    customer.add_argument(
        "plan_slug", metavar="PLAN", nargs="?", help="create the customer on this plan, or move it to this plan"
    )
    customer.add_argument("--billing-anchor", help="RFC 3339 anchor of a new customer (default: now)")

    customers = client_command(
        commands,
        "customers",
        "list customers by id (byte order), of every plan or of one",
        _customers,
        ["metering customers", "metering customers --plan pro --all --json"],
    )
    customers.add_argument("--plan", default="", metavar="PLAN", help="only the customers on this plan")
    paging_arguments(customers, 100)

    client_command(
        commands,
        "catalog",
        "the catalog the service serves with: meters, prices and plans with their terms",
        _catalog,
        ["metering catalog", "metering catalog --json | jq -r '.plans[].slug'"],
    )

    grant = client_command(
        commands,
        "grant",
        "grant units of a meter (credits)",
        _grant,
        [
            "metering grant acme ai_tokens 50000 --grant-id promo-2026-11 --reason 'launch promo'",
            "metering grant acme api_calls 1000 --until-period-end",
        ],
    )
    grant.add_argument("customer_id", metavar="CUSTOMER")
    grant.add_argument("meter_slug", metavar="METER")
    grant.add_argument("quantity", metavar="QUANTITY")
    grant.add_argument("--grant-id", help="idempotency key (default: a new UUID)")
    grant.add_argument("--until-period-end", action="store_true", help="expire at the end of the current period")
    grant.add_argument("--reason", default="")

    grants = client_command(
        commands,
        "grants",
        "a customer's grants and what is left of each",
        _grants,
        ["metering grants acme", "metering grants acme ai_tokens --all --json"],
    )
    grants.add_argument("customer_id", metavar="CUSTOMER")
    grants.add_argument("meter_slug", metavar="METER", nargs="?", default="")
    grants.add_argument("--all", action="store_true", help="include expired grants")

    wallet = client_command(
        commands,
        "wallet",
        "a customer's prepaid credit: what is available, grant by grant in burn order",
        _wallet,
        ["metering wallet acme", "metering wallet acme --all --json"],
    )
    wallet.add_argument("customer_id", metavar="CUSTOMER")
    wallet.add_argument("--all", action="store_true", help="include used-up and expired grants")

    topup = client_command(
        commands,
        "topup",
        "give a customer prepaid credit in money (a wallet grant)",
        _topup,
        [
            "metering topup acme 20.00 USD --grant-id order-1042",
            "metering topup acme 5 USD --promotional --priority 0 --expires 2027-01-01T00:00:00Z --meter ai_tokens",
        ],
    )
    topup.add_argument("customer_id", metavar="CUSTOMER")
    topup.add_argument("amount", metavar="AMOUNT", help="a positive decimal in the currency's minor units at most")
    topup.add_argument("currency", metavar="CURRENCY", help="ISO 4217 code, the customer's plan's (e.g. USD)")
    topup.add_argument("--grant-id", help="idempotency key (default: a new UUID)")
    topup.add_argument("--promotional", action="store_true", help="promotional credit (default: paid)")
    topup.add_argument("--priority", type=int, default=0, help="lower burns first (default 0)")
    topup.add_argument("--effective", help="RFC 3339 time it starts counting (default: now)")
    topup.add_argument("--expires", help="RFC 3339 time it stops counting (default: never)")
    topup.add_argument(
        "--meter", action="append", default=[], dest="meters", help="only for this meter (repeatable; default: all)"
    )
    topup.add_argument("--reason", default="")

    credit_note = client_command(
        commands,
        "credit-note",
        "credit a finalized invoice, whole or line by line (the invoice itself never changes)",
        _credit_note,
        [
            "metering credit-note acme INVOICE --whole --reason goodwill --id cn-1",
            "metering credit-note acme INVOICE --line ai_tokens tokens_std 1.50 --reason billing-error --id cn-2",
        ],
    )
    credit_note.add_argument("customer_id", metavar="CUSTOMER")
    credit_note.add_argument("invoice_id", metavar="INVOICE")
    credit_note.add_argument(
        "--reason",
        required=True,
        choices=sorted(_CREDIT_NOTE_REASONS),
        help="why it is issued (duplicate, fraudulent, order-change and product-unsatisfactory are Stripe's reasons)",
    )
    credit_note.add_argument("--id", dest="credit_note_id", help="idempotency key (default: a new UUID)")
    credit_note.add_argument("--memo", default="", help="free text about the reason")
    target = credit_note.add_mutually_exclusive_group(required=True)
    target.add_argument("--whole", action="store_true", help="credit what remains of the invoice's total")
    target.add_argument(
        "--line",
        nargs=3,
        action="append",
        metavar=("METER", "PRICE", "AMOUNT"),
        help="credit AMOUNT on the invoice line of METER at PRICE (repeatable)",
    )

    reserve = client_command(
        commands,
        "reserve",
        "hold units of a sum meter before expensive work",
        _reserve,
        ["metering reserve acme ai_tokens 4000 job-7", "metering reserve acme ai_tokens 4000 job-7 --ttl 60"],
    )
    reserve.add_argument("customer_id", metavar="CUSTOMER")
    reserve.add_argument("meter_slug", metavar="METER")
    reserve.add_argument("quantity", metavar="QUANTITY")
    reserve.add_argument("reservation_id", metavar="RESERVATION")
    reserve.add_argument("--ttl", type=float, default=300.0, help="seconds to hold (default 300)")

    commit = client_command(
        commands,
        "commit",
        "record the actual usage of a reservation",
        _commit,
        ["metering commit acme job-7 3120", "metering commit acme job-7"],
    )
    commit.add_argument("customer_id", metavar="CUSTOMER")
    commit.add_argument("reservation_id", metavar="RESERVATION")
    commit.add_argument(
        "quantity", metavar="QUANTITY", nargs="?", default="", help="at most the reserved quantity (default: all)"
    )

    release = client_command(
        commands,
        "release",
        "free a reservation without recording usage",
        _release,
        ["metering release acme job-7"],
    )
    release.add_argument("customer_id", metavar="CUSTOMER")
    release.add_argument("reservation_id", metavar="RESERVATION")

    void = client_command(
        commands,
        "void",
        "void a recorded event (a compensating ledger entry)",
        _void,
        ["metering void acme req-42 'recorded twice by the old importer'"],
    )
    void.add_argument("customer_id", metavar="CUSTOMER")
    void.add_argument("transaction_id", metavar="TRANSACTION")
    void.add_argument("reason", metavar="REASON")


def _client(args: argparse.Namespace) -> MeteringClient:
    # One attempt, failing fast when the service is down: a person sees the
    # refusal at once and repeats the command (with the same --transaction-id).
    return MeteringClient(connection(args), timeout=10, retry=NO_RETRIES, wait_for_ready=False)


def call(
    args: argparse.Namespace, method: str, request: Message, show: Renderer, verdict: Verdict | None = None
) -> int:
    """Send one request; print the answer (table or JSON) or the refusal. The exit status
    comes from exits.for_error, or from `verdict` for an answer that says no."""
    with _client(args) as client:
        try:
            response = client.call(method, request)
        except MeteringError as error:
            print_error(error, as_json=args.json)
            return for_error(error)
    return _answer(args, response, show, verdict)


def paged(args: argparse.Namespace, method: str, request: Any, items: str, show: Renderer) -> int:
    """A List call: one page, or with --all every page from the request's page_token on,
    printed as one answer (the `items` of every page, no next_page_token)."""
    with _client(args) as client:
        try:
            response = client.call(method, request)
            while args.all and response.next_page_token:
                request.page_token = response.next_page_token
                page = client.call(method, request)
                getattr(response, items).extend(getattr(page, items))
                response.next_page_token = page.next_page_token
        except MeteringError as error:
            print_error(error, as_json=args.json)
            return for_error(error)
    return _answer(args, response, show, None)


def _answer(args: argparse.Namespace, response: Message, show: Renderer, verdict: Verdict | None) -> int:
    print(render.as_json(response) if args.json else show(response))
    refusal = verdict(response) if verdict is not None else None
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return Exit.REFUSED
    return Exit.OK


def record_target(meter: str, quantity: str, price: str) -> tuple[str, str, str]:
    """(meter_slug, price_slug, quantity) from `record`'s positionals: with --price the
    second positional, if any, is the quantity (the meter is the price's)."""
    if not price:
        if not meter:
            raise UsageError("metering record: give the meter (CUSTOMER METER [QUANTITY]) or --price PRICE")
        return meter, "", quantity
    if quantity:
        raise UsageError(
            f"metering record: with --price give CUSTOMER [QUANTITY] (the meter is the price's), not two values: "
            f"{meter!r} {quantity!r}"
        )
    return "", price, meter


def _record(args: argparse.Namespace) -> int:
    try:
        properties = dict(item.split("=", 1) for item in args.property)
    except ValueError:
        raise UsageError("metering record: --property takes KEY=VALUE") from None
    meter_slug, price_slug, quantity = record_target(args.meter_slug, args.quantity, args.price)
    request = usage_pb2.RecordUsageRequest(
        customer_id=args.customer_id,
        meter_slug=meter_slug,
        price_slug=price_slug,
        quantity=quantity,
        transaction_id=args.transaction_id or str(uuid.uuid4()),
        properties=properties,
        enforcement_mode=(
            usage_pb2.ENFORCEMENT_MODE_ALLOW_OVERAGE if args.allow_overage else usage_pb2.ENFORCEMENT_MODE_ENFORCE_LIMIT
        ),
    )
    _set_time(request.event_time, args.event_time, "--event-time")
    return call(args, "RecordUsage", request, render.record)


def _balance(args: argparse.Namespace) -> int:
    request = usage_pb2.CheckBalanceRequest(
        customer_id=args.customer_id, meter_slug=args.meter_slug, requested_quantity=args.requested
    )
    return call(args, "CheckBalance", request, render.balances, render.requested_refusal)


def _usage(args: argparse.Namespace) -> int:
    try:
        zone = ZoneInfo(args.time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"metering usage: unknown time zone {args.time_zone!r}") from None
    request = usage_pb2.GetUsageRequest(
        customer_id=args.customer_id,
        meter_slugs=args.meter_slugs,
        window_size=_WINDOWS[args.window] if args.window else usage_pb2.WINDOW_SIZE_UNSPECIFIED,
        time_zone=args.time_zone,
        group_by=args.group_by,
        page_size=page_size(args, 0),
        page_token=args.page_token,
    )
    _set_time(request.start_time, args.start, "--start")
    _set_time(request.end_time, args.end, "--end")
    return paged(args, "GetUsage", request, "rows", lambda response: render.usage(response, zone))


def _events(args: argparse.Namespace) -> int:
    request = events_pb2.ListUsageEventsRequest(
        customer_id=args.customer_id,
        meter_slug=args.meter_slug,
        page_size=page_size(args, 20),
        page_token=args.page_token,
    )
    _set_time(request.start_time, args.start, "--start")
    _set_time(request.end_time, args.end, "--end")
    return paged(args, "ListUsageEvents", request, "events", render.events)


def _bill(args: argparse.Namespace) -> int:
    request = billing_pb2.EstimateBillRequest(customer_id=args.customer_id, what_if_plan_slug=args.what_if)
    _set_time(request.period_time, args.period_time, "--period-time")
    return call(args, "EstimateBill", request, render.bill)


def _invoices(args: argparse.Namespace) -> int:
    request = invoices_pb2.ListInvoicesRequest(
        customer_id=args.customer_id,
        status=_INVOICE_STATUSES[args.status] if args.status else billing_pb2.INVOICE_STATUS_UNSPECIFIED,
        page_size=page_size(args, 12),
        page_token=args.page_token,
    )
    return paged(args, "ListInvoices", request, "invoices", render.invoices)


def _invoice(args: argparse.Namespace) -> int:
    request = invoices_pb2.GetInvoiceRequest(invoice_id=args.invoice_id)
    return call(args, "GetInvoice", request, lambda response: render.invoice(response.invoice))


def _customer(args: argparse.Namespace) -> int:
    if args.plan_slug is None:
        get = customer_pb2.GetCustomerRequest(customer_id=args.customer_id)
        return call(args, "GetCustomer", get, lambda response: render.customer(response.customer))
    upsert = customer_pb2.UpsertCustomerRequest(customer_id=args.customer_id, plan_slug=args.plan_slug)
    _set_time(upsert.billing_anchor_time, args.billing_anchor, "--billing-anchor")
    return call(
        args, "UpsertCustomer", upsert, lambda response: render.customer(response.customer, created=response.created)
    )


def _customers(args: argparse.Namespace) -> int:
    request = customer_pb2.ListCustomersRequest(
        plan_slug=args.plan, page_size=page_size(args, 100), page_token=args.page_token
    )
    return paged(args, "ListCustomers", request, "customers", render.customers)


def _catalog(args: argparse.Namespace) -> int:
    return call(args, "GetCatalog", catalog_pb2.GetCatalogRequest(), render.catalog)


def _grant(args: argparse.Namespace) -> int:
    request = grants_pb2.GrantCreditsRequest(
        customer_id=args.customer_id,
        meter_slug=args.meter_slug,
        quantity=args.quantity,
        grant_id=args.grant_id or str(uuid.uuid4()),
        expire_at_period_end=args.until_period_end,
        reason=args.reason,
    )
    return call(args, "GrantCredits", request, render.grant)


def _grants(args: argparse.Namespace) -> int:
    request = grants_pb2.ListGrantsRequest(
        customer_id=args.customer_id, meter_slug=args.meter_slug, include_expired=args.all
    )
    return call(args, "ListGrants", request, render.grants)


def _wallet(args: argparse.Namespace) -> int:
    request = wallets_pb2.GetWalletRequest(customer_id=args.customer_id, include_inactive=args.all)
    return call(args, "GetWallet", request, render.wallet)


def _topup(args: argparse.Namespace) -> int:
    request = wallets_pb2.GrantWalletCreditRequest(
        customer_id=args.customer_id,
        grant_id=args.grant_id or str(uuid.uuid4()),
        amount=billing_pb2.Money(currency_code=args.currency, amount=args.amount),
        category=billing_pb2.CREDIT_CATEGORY_PROMOTIONAL if args.promotional else billing_pb2.CREDIT_CATEGORY_PAID,
        priority=args.priority,
        meter_slugs=args.meters,
        reason=args.reason,
    )
    _set_time(request.effective_time, args.effective, "--effective")
    _set_time(request.expire_time, args.expires, "--expires")
    return call(args, "GrantWalletCredit", request, render.topup)


def _credit_note(args: argparse.Namespace) -> int:
    request = invoices_pb2.IssueCreditNoteRequest(
        customer_id=args.customer_id,
        invoice_id=args.invoice_id,
        credit_note_id=args.credit_note_id or str(uuid.uuid4()),
        reason=_CREDIT_NOTE_REASONS[args.reason],
        memo=args.memo,
        whole_invoice=args.whole,
        lines=[
            invoices_pb2.CreditNoteLineRequest(meter_slug=meter, price_slug=price, amount=amount)
            for meter, price, amount in args.line or ()
        ],
    )
    return call(args, "IssueCreditNote", request, render.credit_note)


def _reserve(args: argparse.Namespace) -> int:
    ttl = Duration()
    ttl.FromNanoseconds(int(args.ttl * 1_000_000_000))
    request = reservations_pb2.ReserveUsageRequest(
        customer_id=args.customer_id,
        meter_slug=args.meter_slug,
        quantity=args.quantity,
        reservation_id=args.reservation_id,
        ttl=ttl,
    )
    return call(
        args,
        "ReserveUsage",
        request,
        lambda r: render.reservation(r.reservation, r.balance, duplicate=r.duplicate),
    )


def _commit(args: argparse.Namespace) -> int:
    request = reservations_pb2.CommitReservationRequest(
        customer_id=args.customer_id, reservation_id=args.reservation_id, quantity=args.quantity
    )
    return call(
        args,
        "CommitReservation",
        request,
        lambda r: render.reservation(r.reservation, r.balance, duplicate=r.duplicate),
    )


def _release(args: argparse.Namespace) -> int:
    request = reservations_pb2.ReleaseReservationRequest(
        customer_id=args.customer_id, reservation_id=args.reservation_id
    )
    return call(args, "ReleaseReservation", request, lambda r: render.reservation(r.reservation, r.balance))


def _void(args: argparse.Namespace) -> int:
    request = events_pb2.VoidUsageRequest(
        customer_id=args.customer_id, transaction_id=args.transaction_id, reason=args.reason
    )
    return call(args, "VoidUsage", request, render.void)


def _set_time(field: Any, text: str | None, option: str) -> None:
    if not text:
        return
    try:
        field.FromJsonString(text)
    except ValueError:
        raise UsageError(f"metering: {option} {text!r} is not an RFC 3339 time (2026-11-01T00:00:00Z)") from None
