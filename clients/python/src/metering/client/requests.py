"""Typed arguments to request messages: the one place the client writes the wire.

Quantities go out as exact decimal strings (a float is refused: it is not an
exact quantity), times as google.protobuf.Timestamp (a naive datetime is refused:
its time zone would be a guess).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from metering.client.models import (
    CreditCategory,
    CreditNoteReason,
    EnforcementMode,
    InvoiceStatus,
    NotificationType,
    WindowSize,
)
from metering.v1 import (
    billing_pb2,
    catalog_pb2,
    customer_pb2,
    events_pb2,
    grants_pb2,
    invoices_pb2,
    notifications_pb2,
    reservations_pb2,
    usage_pb2,
    wallets_pb2,
)

Quantity = Decimal | int | str


def quantity_text(value: Quantity | None) -> str:
    """A quantity as the service reads it: a plain decimal string, never an exponent."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise TypeError(f"a quantity is a Decimal, an int or a decimal string, not {type(value).__name__}")
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def set_time(field: Timestamp, value: datetime | None) -> None:
    """Set a Timestamp field from a timezone-aware datetime (None leaves it unset; a naive one is refused)."""
    if value is None:
        return
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("times must be timezone-aware (e.g. datetime.now(UTC))")
    field.FromDatetime(value)


def _set_duration(field: Duration, value: timedelta | None) -> None:
    if value is not None:
        field.FromTimedelta(value)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One usage event to record (RecordUsage, RecordUsageBatch, RecordUsageStream, UsageRecorder).

    It names a meter (`UsageRecord("acme", "ai_tokens", 1500, "req-42")`, priced by the
    customer's plan) or a price (`UsageRecord("acme", price_slug="gpu_hour_a100",
    quantity=2, transaction_id="job-7")`, whose meter it counts against): exactly one of
    the two, else TypeError. The transaction id is required (ValueError without it): it
    makes a resend harmless. Derive it from the operation (transaction_id_for) or store it
    with the operation before the first attempt, never draw a new one for a retry.
    """

    customer_id: str
    meter_slug: str | None = None  # the meter, or None (or "") with price_slug
    quantity: Quantity | None = None  # None (or "") for COUNT and UNIQUE_COUNT meters
    transaction_id: str = ""  # required
    price_slug: str | None = None  # instead of meter_slug: bill with this price (its meter counts)
    event_time: datetime | None = None  # None: the server's clock on first receipt
    properties: Mapping[str, str] | None = None
    enforcement: EnforcementMode = EnforcementMode.ENFORCE_LIMIT

    def __post_init__(self) -> None:
        """Refuse an event that names both a meter and a price, or neither, or has no transaction id."""
        if bool(self.meter_slug) == bool(self.price_slug):
            given = "both" if self.meter_slug else "neither"
            raise TypeError(f"a usage event names exactly one of meter_slug and price_slug, not {given}")
        if not self.transaction_id:
            raise ValueError("transaction_id is required: derive it from the operation (transaction_id_for)")

    def to_proto(self) -> usage_pb2.RecordUsageRequest:
        """The RecordUsageRequest for this event (a float quantity or a naive time is refused here)."""
        request = usage_pb2.RecordUsageRequest(
            customer_id=self.customer_id,
            meter_slug=self.meter_slug or "",
            price_slug=self.price_slug or "",
            quantity=quantity_text(self.quantity),
            transaction_id=self.transaction_id,
            properties=dict(self.properties or {}),
            enforcement_mode=int(self.enforcement),  # type: ignore[arg-type]
        )
        set_time(request.event_time, self.event_time)
        return request


def void_usage(customer_id: str, transaction_id: str, reason: str) -> events_pb2.VoidUsageRequest:
    """The VoidUsageRequest for the clients' `void_usage` (the one place it is built)."""
    return events_pb2.VoidUsageRequest(customer_id=customer_id, transaction_id=transaction_id, reason=reason)


def grant_credits(
    customer_id: str,
    meter_slug: str,
    quantity: Quantity,
    *,
    grant_id: str,
    effective_time: datetime | None = None,
    expire_time: datetime | None = None,
    expire_at_period_end: bool = False,
    reason: str = "",
) -> grants_pb2.GrantCreditsRequest:
    """The GrantCreditsRequest for the clients' `grant_credits` (the one place it is built)."""
    request = grants_pb2.GrantCreditsRequest(
        customer_id=customer_id,
        meter_slug=meter_slug,
        quantity=quantity_text(quantity),
        grant_id=grant_id,
        expire_at_period_end=expire_at_period_end,
        reason=reason,
    )
    set_time(request.effective_time, effective_time)
    set_time(request.expire_time, expire_time)
    return request


def grant_wallet_credit(
    customer_id: str,
    amount: Quantity,
    currency: str,
    *,
    grant_id: str,
    category: CreditCategory = CreditCategory.PAID,
    priority: int = 0,
    effective_time: datetime | None = None,
    expire_time: datetime | None = None,
    meter_slugs: Sequence[str] = (),
    reason: str = "",
) -> wallets_pb2.GrantWalletCreditRequest:
    """A GrantWalletCreditRequest: `amount` of `currency` credit for the customer's wallet."""
    request = wallets_pb2.GrantWalletCreditRequest(
        customer_id=customer_id,
        grant_id=grant_id,
        amount=billing_pb2.Money(currency_code=currency, amount=quantity_text(amount)),
        category=int(category),  # type: ignore[arg-type]
        priority=priority,
        meter_slugs=list(meter_slugs),
        reason=reason,
    )
    set_time(request.effective_time, effective_time)
    set_time(request.expire_time, expire_time)
    return request


def list_grants(
    customer_id: str, meter_slug: str = "", *, include_expired: bool = False
) -> grants_pb2.ListGrantsRequest:
    """The ListGrantsRequest for the clients' `list_grants` (the one place it is built)."""
    return grants_pb2.ListGrantsRequest(customer_id=customer_id, meter_slug=meter_slug, include_expired=include_expired)


def reserve_usage(
    customer_id: str, meter_slug: str, quantity: Quantity, *, reservation_id: str, ttl: timedelta | None = None
) -> reservations_pb2.ReserveUsageRequest:
    """The ReserveUsageRequest for the clients' `reserve_usage` (the one place it is built)."""
    request = reservations_pb2.ReserveUsageRequest(
        customer_id=customer_id, meter_slug=meter_slug, quantity=quantity_text(quantity), reservation_id=reservation_id
    )
    _set_duration(request.ttl, ttl)
    return request


def commit_reservation(
    customer_id: str,
    reservation_id: str,
    quantity: Quantity | None = None,
    *,
    properties: Mapping[str, str] | None = None,
) -> reservations_pb2.CommitReservationRequest:
    """The CommitReservationRequest for the clients' `commit_reservation` (the one place it is built)."""
    return reservations_pb2.CommitReservationRequest(
        customer_id=customer_id,
        reservation_id=reservation_id,
        quantity=quantity_text(quantity),
        properties=dict(properties or {}),
    )


def release_reservation(customer_id: str, reservation_id: str) -> reservations_pb2.ReleaseReservationRequest:
    """The ReleaseReservationRequest for the clients' `release_reservation` (the one place it is built)."""
    return reservations_pb2.ReleaseReservationRequest(customer_id=customer_id, reservation_id=reservation_id)


def check_balance(
    customer_id: str, meter_slug: str = "", *, requested: Quantity | None = None
) -> usage_pb2.CheckBalanceRequest:
    """The CheckBalanceRequest for the clients' `check_balance` (the one place it is built)."""
    return usage_pb2.CheckBalanceRequest(
        customer_id=customer_id, meter_slug=meter_slug, requested_quantity=quantity_text(requested)
    )


def get_usage(
    customer_id: str,
    meter_slugs: Sequence[str],
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    window: WindowSize = WindowSize.UNSPECIFIED,
    time_zone: str = "",
    group_by: Sequence[str] = (),
    filters: Mapping[str, Sequence[str]] | None = None,
    page_size: int = 0,
    page_token: str = "",
) -> usage_pb2.GetUsageRequest:
    """The GetUsageRequest for the clients' `get_usage` (the one place it is built)."""
    request = usage_pb2.GetUsageRequest(
        customer_id=customer_id,
        meter_slugs=list(meter_slugs),
        window_size=int(window),  # type: ignore[arg-type]
        time_zone=time_zone,
        group_by=list(group_by),
        filters=[usage_pb2.PropertyFilter(key=k, values=list(v)) for k, v in (filters or {}).items()],
        page_size=page_size,
        page_token=page_token,
    )
    set_time(request.start_time, start)
    set_time(request.end_time, end)
    return request


def list_usage_events(
    customer_id: str,
    meter_slug: str = "",
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    page_size: int = 0,
    page_token: str = "",
) -> events_pb2.ListUsageEventsRequest:
    """The ListUsageEventsRequest for the clients' `list_usage_events` (the one place it is built)."""
    request = events_pb2.ListUsageEventsRequest(
        customer_id=customer_id, meter_slug=meter_slug, page_size=page_size, page_token=page_token
    )
    set_time(request.start_time, start)
    set_time(request.end_time, end)
    return request


def estimate_bill(
    customer_id: str, *, period_time: datetime | None = None, what_if_plan_slug: str = ""
) -> billing_pb2.EstimateBillRequest:
    """The EstimateBillRequest for the clients' `estimate_bill` (the one place it is built)."""
    request = billing_pb2.EstimateBillRequest(customer_id=customer_id, what_if_plan_slug=what_if_plan_slug)
    set_time(request.period_time, period_time)
    return request


def upsert_customer(
    customer_id: str, plan_slug: str, *, billing_anchor: datetime | None = None
) -> customer_pb2.UpsertCustomerRequest:
    """The UpsertCustomerRequest for the clients' `upsert_customer` (the one place it is built)."""
    request = customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug=plan_slug)
    set_time(request.billing_anchor_time, billing_anchor)
    return request


def get_customer(customer_id: str) -> customer_pb2.GetCustomerRequest:
    """The GetCustomerRequest for the clients' `get_customer` (the one place it is built)."""
    return customer_pb2.GetCustomerRequest(customer_id=customer_id)


def list_customers(
    *, plan_slug: str = "", page_size: int = 0, page_token: str = ""
) -> customer_pb2.ListCustomersRequest:
    """The ListCustomersRequest for the clients' `list_customers` (the one place it is built)."""
    return customer_pb2.ListCustomersRequest(plan_slug=plan_slug, page_size=page_size, page_token=page_token)


def get_catalog() -> catalog_pb2.GetCatalogRequest:
    """The GetCatalogRequest for the clients' `get_catalog` (the one place it is built)."""
    return catalog_pb2.GetCatalogRequest()


def list_invoices(
    customer_id: str, *, status: InvoiceStatus = InvoiceStatus.UNSPECIFIED, page_size: int = 0, page_token: str = ""
) -> invoices_pb2.ListInvoicesRequest:
    """The ListInvoicesRequest for the clients' `list_invoices` (the one place it is built)."""
    return invoices_pb2.ListInvoicesRequest(
        customer_id=customer_id,
        status=int(status),  # type: ignore[arg-type]
        page_size=page_size,
        page_token=page_token,
    )


def get_invoice(invoice_id: str) -> invoices_pb2.GetInvoiceRequest:
    """The GetInvoiceRequest for the clients' `get_invoice` (the one place it is built)."""
    return invoices_pb2.GetInvoiceRequest(invoice_id=invoice_id)


@dataclass(frozen=True, slots=True)
class CreditLine:
    """An amount to credit on one invoice line (a meter at a price), in the invoice's currency."""

    meter_slug: str
    price_slug: str
    amount: Decimal | int | str  # a decimal amount, e.g. Decimal("1.50")


def issue_credit_note(
    customer_id: str,
    invoice_id: str,
    *,
    credit_note_id: str,
    reason: CreditNoteReason,
    memo: str = "",
    lines: Sequence[CreditLine] = (),
    whole_invoice: bool = False,
) -> invoices_pb2.IssueCreditNoteRequest:
    """The IssueCreditNoteRequest for the clients' `issue_credit_note` (the one place it is built)."""
    return invoices_pb2.IssueCreditNoteRequest(
        customer_id=customer_id,
        invoice_id=invoice_id,
        credit_note_id=credit_note_id,
        reason=int(reason),  # type: ignore[arg-type]
        memo=memo,
        whole_invoice=whole_invoice,
        lines=[
            invoices_pb2.CreditNoteLineRequest(
                meter_slug=line.meter_slug, price_slug=line.price_slug, amount=quantity_text(line.amount)
            )
            for line in lines
        ],
    )


def watch_notifications(
    cursor: str = "", *, types: Sequence[NotificationType] = (), customer_id: str = ""
) -> notifications_pb2.WatchNotificationsRequest:
    """The WatchNotificationsRequest for the clients' `watch_notifications` (the one place it is built)."""
    return notifications_pb2.WatchNotificationsRequest(
        cursor=cursor,
        types=[int(t) for t in types],  # type: ignore[misc]
        customer_id=customer_id,
    )
