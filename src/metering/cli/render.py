"""Answers as readable text: aligned tables and key-value lines.

Numbers stay the exact decimal strings the service sent; they are only
right-aligned, never reformatted, so what a person reads is what the ledger holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, tzinfo

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

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

_NUMBER_RE = re.compile(r"^-?[0-9][0-9,]*(\.[0-9]+)?%?$")


def as_json(message: Message, *, compact: bool = False) -> str:
    """A message in the proto3 JSON mapping, for scripts: field names as in the .proto, and every
    field without presence printed, empty lists and zero values included (`"events": []`,
    `"quantity": "0"`), so a script never meets a missing key. Fields with presence (`limit`
    of an unlimited meter) are left out when unset, as the mapping says."""
    fields = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps(fields, separators=(",", ":")) if compact else json.dumps(fields, indent=2)


def more(next_page_token: str) -> str:
    """The line under a page that is not the last one."""
    return f"\n(more: add --page-token {next_page_token}, or --all)" if next_page_token else ""


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; numeric columns right-aligned."""
    if not rows:
        return "(none)"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    numeric = [all(_NUMBER_RE.match(r[i]) or r[i] in ("", "-") for r in rows) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric, strict=True)]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def when(stamp: Timestamp, zone: tzinfo = UTC) -> str:
    if stamp.seconds == 0 and stamp.nanos == 0:
        return "-"
    moment = stamp.ToDatetime(tzinfo=UTC).astimezone(zone)
    offset = moment.utcoffset()
    return moment.strftime("%Y-%m-%d %H:%M:%S") + ("Z" if not offset else moment.strftime("%z"))


def _enum_suffix(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


def balances(response: usage_pb2.CheckBalanceResponse) -> str:
    rows = []
    for b in response.balances:
        flags = "limit reached" if b.limit_reached else ("approaching" if b.approaching_limit else "")
        rows.append(
            [
                b.meter_slug,
                b.used,
                b.limit if b.HasField("limit") else "unlimited",
                b.granted,
                b.reserved,
                b.available if b.HasField("available") else "unlimited",
                f"{b.percent_used}%" if b.HasField("percent_used") else "-",
                _enum_suffix(usage_pb2.LimitEnforcement.Name(b.limit_enforcement), "LIMIT_ENFORCEMENT_"),
                when(b.period_end_time),
                flags,
            ]
        )
    head = f"customer {response.customer_id} on plan {response.plan_slug} (as of {when(response.as_of_time)})"
    if response.HasField("requested_allowed"):
        head += f"; the requested quantity {'fits' if response.requested_allowed else 'does NOT fit'}"
    headers = ["meter", "used", "limit", "granted", "reserved", "available", "used %", "enforcement", "resets", ""]
    return head + "\n" + table(headers, rows)


def requested_refusal(response: usage_pb2.CheckBalanceResponse) -> str | None:
    """Why `balance --requested` does not fit (exit 1), or None when it fits or nothing was asked."""
    if not response.HasField("requested_allowed") or response.requested_allowed:
        return None
    reasons = [
        f"{b.meter_slug} has {b.available if b.HasField('available') else 'unlimited'} {b.unit} available"
        + (f" (limit {b.limit}, {b.used} used, {b.reserved} reserved)" if b.HasField("limit") else "")
        for b in response.balances
    ]
    return "the requested quantity does not fit: " + "; ".join(reasons)


def record(response: usage_pb2.RecordUsageResponse) -> str:
    e = response.event
    verb = "already recorded (duplicate)" if response.duplicate else "recorded"
    lines = [
        f"{verb}: {e.quantity} of {e.meter_slug} at price {e.price_slug}, transaction {e.transaction_id}, "
        f"event {e.event_id} at {when(e.event_time)}"
    ]
    if response.overage_quantity not in ("", "0"):
        lines.append(f"overage: {response.overage_quantity} past the limit")
    lines.append(_balance_line(response.balance))
    return "\n".join(lines)


def _balance_line(b: usage_pb2.Balance) -> str:
    limit = b.limit if b.HasField("limit") else "unlimited"
    available = b.available if b.HasField("available") else "unlimited"
    return f"{b.meter_slug}: used {b.used} of {limit} {b.unit}, available {available} until {when(b.period_end_time)}"


def usage(response: usage_pb2.GetUsageResponse, zone: tzinfo) -> str:
    group_keys = sorted({k for row in response.rows for k in row.group_values})
    rows = [
        [
            r.meter_slug,
            when(r.window_start_time, zone),
            when(r.window_end_time, zone),
            *(r.group_values.get(k, "") for k in group_keys),
            r.value,
        ]
        for r in response.rows
    ]
    return table(["meter", "from", "to", *group_keys, "value"], rows) + more(response.next_page_token)


def events(response: events_pb2.ListUsageEventsResponse) -> str:
    rows = [
        [
            when(e.event_time),
            e.transaction_id,
            e.meter_slug,
            e.quantity,
            e.price_slug,
            " ".join(f"{k}={v}" for k, v in sorted(e.properties.items())),
            f"voided: {e.void_reason}" if e.HasField("void_time") else "",
        ]
        for e in response.events
    ]
    return table(["time", "transaction", "meter", "quantity", "price", "properties", ""], rows) + more(
        response.next_page_token
    )


def _status(value: int) -> str:
    return _enum_suffix(billing_pb2.InvoiceStatus.Name(value), "INVOICE_STATUS_")


def bill(response: billing_pb2.EstimateBillResponse) -> str:
    parts = [_bill_text(response)]
    parts.extend(_credits_applied(response.credits_applied))
    state = _status(response.invoice_status)
    if response.invoice_id:
        state += f": invoice {response.invoice_id} (number {response.invoice_number}, {when(response.finalize_time)})"
    parts.append(state)
    if response.HasField("what_if"):
        parts.append(_what_if(response.what_if, response.total))
    return "\n".join(parts)


def _what_if(what_if: billing_pb2.WhatIfBill, current: billing_pb2.Money) -> str:
    """The same usage priced on another plan, beside the current plan's total."""
    rows = [
        [
            line.meter_slug,
            line.price_slug,
            line.quantity,
            line.included_quantity,
            line.billable_quantity,
            line.amount.amount,
        ]
        for line in what_if.lines
    ]
    unlisted = (
        [f"not on plan {what_if.plan_slug} (priced at their default price): {', '.join(what_if.unlisted_meter_slugs)}"]
        if what_if.unlisted_meter_slugs
        else []
    )
    return "\n".join(
        [
            f"what if on plan {what_if.plan_slug}:",
            table(["meter", "price", "quantity", "included", "billable", "amount"], rows),
            *unlisted,
            f"total on {what_if.plan_slug}: {what_if.total.amount} {what_if.total.currency_code} "
            f"(now {current.amount} {current.currency_code})",
        ]
    )


def _credited_lines(note: invoices_pb2.CreditNote) -> str:
    if note.whole_invoice:
        return "whole invoice"
    return ", ".join(f"{line.meter_slug}/{line.price_slug}" for line in note.lines)


def _credits_applied(applied: Sequence[billing_pb2.CreditApplied]) -> list[str]:
    if not applied:
        return []
    rows = [[c.grant_id, _category(c.category), c.amount.amount, c.amount.currency_code] for c in applied]
    return ["wallet credit applied:", table(["grant", "category", "amount", "currency"], rows)]


def _category(value: int) -> str:
    return _enum_suffix(billing_pb2.CreditCategory.Name(value), "CREDIT_CATEGORY_")


def invoice(message: invoices_pb2.Invoice) -> str:
    number = f" number {message.number}" if message.number else ""
    name = f"invoice {message.invoice_id}{number}" if message.invoice_id else "draft invoice"
    finalized = f", finalized {when(message.finalize_time)}" if message.HasField("finalize_time") else ""
    parts = [f"{name} ({_status(message.status)}{finalized})", _bill_text(message)]
    parts.extend(_credits_applied(message.credits_applied))
    if message.credit_notes:
        rows = [
            [
                str(note.number),
                note.credit_note_id,
                _enum_suffix(invoices_pb2.CreditNoteReason.Name(note.reason), "CREDIT_NOTE_REASON_"),
                _credited_lines(note),
                note.amount.amount,
                when(note.issue_time),
            ]
            for note in message.credit_notes
        ]
        parts.append("credit notes:")
        parts.append(table(["number", "credit note", "reason", "credits", "amount", "issued"], rows))
        parts.append(
            f"credited {message.credited.amount}, net total {message.net_total.amount} {message.total.currency_code}"
        )
    return "\n".join(parts)


def invoices(response: invoices_pb2.ListInvoicesResponse) -> str:
    rows = [
        [
            str(i.number) if i.number else "-",
            _status(i.status),
            when(i.period_start_time),
            when(i.period_end_time),
            i.plan_slug,
            i.total.amount,
            i.total.currency_code,
            i.invoice_id or "-",
        ]
        for i in response.invoices
    ]
    headers = ["number", "status", "from", "to", "plan", "total", "currency", "invoice"]
    return table(headers, rows) + more(response.next_page_token)


def _bill_text(response: billing_pb2.EstimateBillResponse | invoices_pb2.Invoice) -> str:
    currency = response.total.currency_code
    rows = [
        [
            line.meter_slug,
            line.price_slug,
            _enum_suffix(billing_pb2.PricingModel.Name(line.pricing_model), "PRICING_MODEL_"),
            line.quantity,
            line.included_quantity,
            line.billable_quantity,
            line.amount.amount,
        ]
        for line in response.lines
    ]
    width = max([len(response.subtotal.amount), len(response.credits.amount), len(response.total.amount)])
    return "\n".join(
        [
            f"customer {response.customer_id} on plan {response.plan_slug}, period "
            f"{when(response.period_start_time)} to {when(response.period_end_time)} ({currency})",
            table(["meter", "price", "model", "quantity", "included", "billable", "amount"], rows),
            f"subtotal  {response.subtotal.amount.rjust(width)}",
            f"credits   {response.credits.amount.rjust(width)}",
            f"total     {response.total.amount.rjust(width)} {currency}",
        ]
    )


def customer(c: customer_pb2.Customer, *, created: bool | None = None) -> str:
    state = "" if created is None else (" (created)" if created else " (updated)")
    return f"customer {c.customer_id}{state}: plan {c.plan_slug}, billing anchor {when(c.billing_anchor_time)}"


def customers(response: customer_pb2.ListCustomersResponse) -> str:
    rows = [[c.customer_id, c.plan_slug, when(c.billing_anchor_time), when(c.create_time)] for c in response.customers]
    return table(["customer", "plan", "billing anchor", "created"], rows) + more(response.next_page_token)


def catalog(response: catalog_pb2.GetCatalogResponse) -> str:
    """Meters, prices and plans, one table each (a plan's meters in its own table)."""
    meters = [
        [
            m.slug,
            _enum_suffix(usage_pb2.Aggregation.Name(m.aggregation), "AGGREGATION_"),
            m.unit,
            m.unique_property or "-",
            ",".join(m.dimensions) or "-",
            m.default_price_slug or m.no_charge_price_slug,
        ]
        for m in response.meters
    ]
    prices = [
        [
            p.slug,
            p.meter_slug,
            _enum_suffix(billing_pb2.PricingModel.Name(p.pricing_model), "PRICING_MODEL_"),
            p.currency_code or "-",
            _price_terms(p),
        ]
        for p in response.prices
    ]
    parts = [
        f"catalog revision {response.revision[:12]}, loaded {when(response.load_time)}",
        table(["meter", "aggregation", "unit", "counts", "dimensions", "default price"], meters),
        table(["price", "meter", "model", "currency", "amounts"], prices),
    ]
    for plan in response.plans:
        terms = [
            [
                t.meter_slug,
                t.price_slug,
                t.limit or "unlimited",
                t.included_quantity,
                _enum_suffix(usage_pb2.ResetPeriod.Name(t.reset_period), "RESET_PERIOD_"),
                _enum_suffix(usage_pb2.LimitEnforcement.Name(t.limit_enforcement), "LIMIT_ENFORCEMENT_"),
                f"{t.approaching_threshold_percent}%",
            ]
            for t in plan.meters
        ]
        prepaid = ", prepaid" if plan.prepaid else ""
        heading = f"plan {plan.slug} ({plan.name}, {plan.currency_code}{prepaid}); meters it does not list: unlimited"
        parts.append(
            heading + "\n" + table(["meter", "price", "limit", "included", "reset", "enforcement", "warn at"], terms)
        )
    return "\n\n".join(parts)


def _price_terms(p: catalog_pb2.CatalogPrice) -> str:
    if p.no_charge:
        return "0 (no charge)"
    if p.tiers:
        return "; ".join(_tier(t) for t in p.tiers)
    if p.package_size:
        rounding = _enum_suffix(catalog_pb2.PackageRounding.Name(p.package_rounding), "PACKAGE_ROUNDING_")
        return f"{p.unit_amount} per {p.package_size} (rounded {rounding})"
    return f"{p.unit_amount} per unit"


def _tier(t: catalog_pb2.CatalogPriceTier) -> str:
    flat = f" + {t.flat_amount} flat" if t.flat_amount not in ("", "0") else ""
    return f"{'to ' + t.up_to_quantity if t.up_to_quantity else 'above'}: {t.unit_amount}/unit{flat}"


def grants(response: grants_pb2.ListGrantsResponse) -> str:
    rows = [
        [
            g.grant_id,
            g.meter_slug,
            g.quantity,
            g.remaining_quantity,
            when(g.effective_time),
            when(g.expire_time),
            "active" if g.active else "inactive",
            g.reason,
        ]
        for g in response.grants
    ]
    return table(["grant", "meter", "quantity", "remaining", "from", "until", "state", "reason"], rows)


def grant(response: grants_pb2.GrantCreditsResponse) -> str:
    g = response.grant
    verb = "already granted (duplicate)" if response.duplicate else "granted"
    span = f"from {when(g.effective_time)} until {when(g.expire_time)}"
    return f"{verb}: {g.quantity} {g.meter_slug} as {g.grant_id}, {span}"


def reservation(r: reservations_pb2.Reservation, balance: usage_pb2.Balance, *, duplicate: bool = False) -> str:
    status = _enum_suffix(reservations_pb2.ReservationStatus.Name(r.status), "RESERVATION_STATUS_")
    committed = f", committed {r.committed_quantity}" if r.committed_quantity else ""
    again = " (duplicate)" if duplicate else ""
    return (
        f"reservation {r.reservation_id}{again}: {r.quantity} {r.meter_slug}, {status}{committed}, "
        f"expires {when(r.expire_time)}\n{_balance_line(balance)}"
    )


def void(response: events_pb2.VoidUsageResponse) -> str:
    e = response.event
    verb = "already voided" if response.duplicate else "voided"
    return f"{verb}: transaction {e.transaction_id} ({e.quantity} {e.meter_slug}): {e.void_reason}\n" + _balance_line(
        response.balance
    )


def wallet(response: wallets_pb2.GetWalletResponse) -> str:
    w = response.wallet
    currency = w.available.currency_code
    prepaid = (
        "prepaid plan: usage the credit cannot pay is refused" if w.prepaid else "usage beyond the credit is billed"
    )
    low = f", credits.low below {w.low_threshold.amount}" if w.HasField("low_threshold") else ""
    rows = [
        [
            g.grant_id,
            _category(g.category),
            str(g.priority),
            g.amount.amount,
            g.remaining.amount,
            when(g.effective_time),
            when(g.expire_time),
            ",".join(g.meter_slugs) or "all",
            "active" if g.active else "inactive",
        ]
        for g in w.grants
    ]
    return "\n".join(
        [
            f"customer {response.customer_id}: {w.available.amount} {currency} available ({prepaid}{low})",
            table(["grant", "category", "priority", "amount", "remaining", "from", "until", "meters", "state"], rows),
        ]
    )


def topup(response: wallets_pb2.GrantWalletCreditResponse) -> str:
    g = response.grant
    verb = "already granted (duplicate)" if response.duplicate else "granted"
    return (
        f"{verb}: {g.amount.amount} {g.amount.currency_code} of {_category(g.category).lower()} credit as "
        f"{g.grant_id}; {response.wallet.available.amount} {response.wallet.available.currency_code} available"
    )


def credit_note(response: invoices_pb2.IssueCreditNoteResponse) -> str:
    note = response.credit_note
    verb = "already issued (duplicate)" if response.duplicate else "issued"
    invoice = response.invoice
    return (
        f"{verb}: credit note {note.credit_note_id} (number {note.number}) of {note.amount.amount} "
        f"{note.amount.currency_code} against invoice {note.invoice_id}; invoice total {invoice.total.amount}, "
        f"credited {invoice.credited.amount}, net {invoice.net_total.amount} {invoice.total.currency_code}"
    )
