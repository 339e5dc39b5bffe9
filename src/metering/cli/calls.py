"""Client commands for people: one per RPC they need, a table by default and
`--json` (the proto3 JSON mapping) for scripts."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Callable
from typing import Any, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from metering.cli import render
from metering.cli.connection import connection, connection_arguments, print_error
from metering.client import NO_RETRIES, MeteringClient, MeteringError
from metering.v1 import billing_pb2, customer_pb2, events_pb2, grants_pb2, invoices_pb2, reservations_pb2, usage_pb2

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Renderer: TypeAlias = Callable[[Any], str]

_INVOICE_STATUSES = {"draft": billing_pb2.INVOICE_STATUS_DRAFT, "finalized": billing_pb2.INVOICE_STATUS_FINALIZED}
_WINDOWS = {"hour": usage_pb2.WINDOW_SIZE_HOUR, "day": usage_pb2.WINDOW_SIZE_DAY, "month": usage_pb2.WINDOW_SIZE_MONTH}


def add_commands(commands: Subparsers) -> None:
    def command(name: str, help_text: str, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text)
        connection_arguments(parser)
        parser.add_argument("--json", action="store_true", help="print the answer as JSON (proto3 JSON mapping)")
        parser.set_defaults(run=run)
        return parser

    record = command("record", "record one usage event", _record)
    record.add_argument("customer_id")
    record.add_argument("meter_slug")
    record.add_argument("quantity", nargs="?", default="", help="decimal string; empty for counting meters")
    record.add_argument("--transaction-id", help="idempotency key (default: a new UUID; set it to retry safely)")
    record.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    record.add_argument("--allow-overage", action="store_true", help="record past a hard limit")
    record.add_argument(
        "--event-time", default="", help="RFC 3339 time of the usage (default: now, the server's clock)"
    )

    balance = command("balance", "what a customer has used and may still use", _balance)
    balance.add_argument("customer_id")
    balance.add_argument("meter_slug", nargs="?", default="")
    balance.add_argument("--requested", default="", help="quantity about to be used: does it fit?")

    usage = command("usage", "aggregated usage of one or more meters, in windows", _usage)
    usage.add_argument("customer_id")
    usage.add_argument("meter_slugs", nargs="+")
    usage.add_argument("--window", choices=sorted(_WINDOWS), help="window size (default: the whole range)")
    usage.add_argument("--time-zone", default="", help="IANA time zone of day and month windows (and of the table)")
    usage.add_argument("--group-by", action="append", default=[], metavar="PROPERTY")
    usage.add_argument("--start", help="RFC 3339 start (default: the current period)")
    usage.add_argument("--end", help="RFC 3339 end (default: now)")
    usage.add_argument("--page-token", default="")

    events = command("events", "a customer's raw events, newest first", _events)
    events.add_argument("customer_id")
    events.add_argument("meter_slug", nargs="?", default="")
    events.add_argument("--page-size", type=int, default=20)

    bill = command("bill", "estimate the bill of the current (or a past) period: line items", _bill)
    bill.add_argument("customer_id")
    bill.add_argument("--period-time", help="RFC 3339 instant inside the period (default: now)")

    invoices = command("invoices", "a customer's invoices, newest period first (drafts, then finalized)", _invoices)
    invoices.add_argument("customer_id")
    invoices.add_argument("--status", choices=sorted(_INVOICE_STATUSES), help="only drafts or only finalized")
    invoices.add_argument("--page-size", type=int, default=12)
    invoices.add_argument("--page-token", default="")

    invoice = command("invoice", "one finalized invoice with its lines", _invoice)
    invoice.add_argument("invoice_id")

    customer = command("customer", "show a customer, or with a plan create it or change its plan", _customer)
    customer.add_argument("customer_id")
    customer.add_argument("plan_slug", nargs="?", help="create the customer on this plan, or move it to this plan")
    customer.add_argument("--billing-anchor", help="RFC 3339 anchor of a new customer (default: now)")

    grant = command("grant", "grant units of a meter (credits)", _grant)
    grant.add_argument("customer_id")
    grant.add_argument("meter_slug")
    grant.add_argument("quantity")
    grant.add_argument("--grant-id", help="idempotency key (default: a new UUID)")
    grant.add_argument("--until-period-end", action="store_true", help="expire at the end of the current period")
    grant.add_argument("--reason", default="")

    grants = command("grants", "a customer's grants and what is left of each", _grants)
    grants.add_argument("customer_id")
    grants.add_argument("meter_slug", nargs="?", default="")
    grants.add_argument("--all", action="store_true", help="include expired grants")

    reserve = command("reserve", "hold units of a sum meter before expensive work", _reserve)
    reserve.add_argument("customer_id")
    reserve.add_argument("meter_slug")
    reserve.add_argument("quantity")
    reserve.add_argument("reservation_id")
    reserve.add_argument("--ttl", type=float, default=300.0, help="seconds to hold (default 300)")

    commit = command("commit", "record the actual usage of a reservation", _commit)
    commit.add_argument("customer_id")
    commit.add_argument("reservation_id")
    commit.add_argument("quantity", nargs="?", default="", help="at most the reserved quantity (default: all)")

    release = command("release", "free a reservation without recording usage", _release)
    release.add_argument("customer_id")
    release.add_argument("reservation_id")

    void = command("void", "void a recorded event (a compensating ledger entry)", _void)
    void.add_argument("customer_id")
    void.add_argument("transaction_id")
    void.add_argument("reason")


def call(args: argparse.Namespace, method: str, request: Message, show: Renderer) -> int:
    """Send one request; print the answer (table or JSON) or the refusal. Exit 0 or 1.

    One attempt, failing fast when the service is down: a person sees the
    refusal at once and repeats the command (with the same --transaction-id).
    """
    with MeteringClient(connection(args), timeout=10, retry=NO_RETRIES, wait_for_ready=False) as client:
        try:
            response = client.call(method, request)
        except MeteringError as error:
            print_error(error, as_json=args.json)
            return 1
    print(json_format.MessageToJson(response, preserving_proto_field_name=True) if args.json else show(response))
    return 0


def _record(args: argparse.Namespace) -> int:
    try:
        properties = dict(item.split("=", 1) for item in args.property)
    except ValueError:
        raise SystemExit("metering record: --property takes KEY=VALUE") from None
    request = usage_pb2.RecordUsageRequest(
        customer_id=args.customer_id,
        meter_slug=args.meter_slug,
        quantity=args.quantity,
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
    return call(args, "CheckBalance", request, render.balances)


def _usage(args: argparse.Namespace) -> int:
    try:
        zone = ZoneInfo(args.time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise SystemExit(f"metering usage: unknown time zone {args.time_zone!r}") from None
    request = usage_pb2.GetUsageRequest(
        customer_id=args.customer_id,
        meter_slugs=args.meter_slugs,
        window_size=_WINDOWS[args.window] if args.window else usage_pb2.WINDOW_SIZE_UNSPECIFIED,
        time_zone=args.time_zone,
        group_by=args.group_by,
        page_token=args.page_token,
    )
    _set_time(request.start_time, args.start, "--start")
    _set_time(request.end_time, args.end, "--end")
    return call(args, "GetUsage", request, lambda response: render.usage(response, zone))


def _events(args: argparse.Namespace) -> int:
    request = events_pb2.ListUsageEventsRequest(
        customer_id=args.customer_id, meter_slug=args.meter_slug, page_size=args.page_size
    )
    return call(args, "ListUsageEvents", request, render.events)


def _bill(args: argparse.Namespace) -> int:
    request = billing_pb2.EstimateBillRequest(customer_id=args.customer_id)
    _set_time(request.period_time, args.period_time, "--period-time")
    return call(args, "EstimateBill", request, render.bill)


def _invoices(args: argparse.Namespace) -> int:
    request = invoices_pb2.ListInvoicesRequest(
        customer_id=args.customer_id,
        status=_INVOICE_STATUSES[args.status] if args.status else billing_pb2.INVOICE_STATUS_UNSPECIFIED,
        page_size=args.page_size,
        page_token=args.page_token,
    )
    return call(args, "ListInvoices", request, render.invoices)


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
        raise SystemExit(f"metering: {option} {text!r} is not an RFC 3339 time (2026-11-01T00:00:00Z)") from None
