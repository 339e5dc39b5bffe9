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

from metering.client.models import CreditCategory, EnforcementMode, InvoiceStatus, NotificationType, WindowSize
from metering.v1 import (
    billing_pb2,
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

    The transaction id is required: it makes a resend harmless. Derive it from
    the operation (transaction_id_for) or store it with the operation before
    the first attempt, never draw a new one for a retry.
    """

    customer_id: str
    meter_slug: str
    quantity: Quantity | None  # None (or "") for COUNT and UNIQUE_COUNT meters
    transaction_id: str
    price_slug: str = ""  # instead of meter_slug: bill with this price
    event_time: datetime | None = None  # None: the server's clock on first receipt
    properties: Mapping[str, str] | None = None
    enforcement: EnforcementMode = EnforcementMode.ENFORCE_LIMIT

    def to_proto(self) -> usage_pb2.RecordUsageRequest:
        if not self.transaction_id:
            raise ValueError("transaction_id is required: derive it from the operation (transaction_id_for)")
        request = usage_pb2.RecordUsageRequest(
            customer_id=self.customer_id,
            meter_slug=self.meter_slug,
            price_slug=self.price_slug,
            quantity=quantity_text(self.quantity),
            transaction_id=self.transaction_id,
            properties=dict(self.properties or {}),
            enforcement_mode=int(self.enforcement),  # type: ignore[arg-type]
        )
        set_time(request.event_time, self.event_time)
        return request


def void_usage(customer_id: str, transaction_id: str, reason: str) -> events_pb2.VoidUsageRequest:
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
    return grants_pb2.ListGrantsRequest(customer_id=customer_id, meter_slug=meter_slug, include_expired=include_expired)


def reserve_usage(
    customer_id: str, meter_slug: str, quantity: Quantity, *, reservation_id: str, ttl: timedelta | None = None
) -> reservations_pb2.ReserveUsageRequest:
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
    return reservations_pb2.CommitReservationRequest(
        customer_id=customer_id,
        reservation_id=reservation_id,
        quantity=quantity_text(quantity),
        properties=dict(properties or {}),
    )


def release_reservation(customer_id: str, reservation_id: str) -> reservations_pb2.ReleaseReservationRequest:
    return reservations_pb2.ReleaseReservationRequest(customer_id=customer_id, reservation_id=reservation_id)


def check_balance(
    customer_id: str, meter_slug: str = "", *, requested: Quantity | None = None
) -> usage_pb2.CheckBalanceRequest:
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
    request = events_pb2.ListUsageEventsRequest(
        customer_id=customer_id, meter_slug=meter_slug, page_size=page_size, page_token=page_token
    )
    set_time(request.start_time, start)
    set_time(request.end_time, end)
    return request


def estimate_bill(customer_id: str, *, period_time: datetime | None = None) -> billing_pb2.EstimateBillRequest:
    request = billing_pb2.EstimateBillRequest(customer_id=customer_id)
    set_time(request.period_time, period_time)
    return request


def upsert_customer(
    customer_id: str, plan_slug: str, *, billing_anchor: datetime | None = None
) -> customer_pb2.UpsertCustomerRequest:
    request = customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug=plan_slug)
    set_time(request.billing_anchor_time, billing_anchor)
    return request


def get_customer(customer_id: str) -> customer_pb2.GetCustomerRequest:
    return customer_pb2.GetCustomerRequest(customer_id=customer_id)


def list_invoices(
    customer_id: str, *, status: InvoiceStatus = InvoiceStatus.UNSPECIFIED, page_size: int = 0, page_token: str = ""
) -> invoices_pb2.ListInvoicesRequest:
    return invoices_pb2.ListInvoicesRequest(
        customer_id=customer_id,
        status=int(status),  # type: ignore[arg-type]
        page_size=page_size,
        page_token=page_token,
    )


def get_invoice(invoice_id: str) -> invoices_pb2.GetInvoiceRequest:
    return invoices_pb2.GetInvoiceRequest(invoice_id=invoice_id)


def watch_notifications(
    cursor: str = "", *, types: Sequence[NotificationType] = (), customer_id: str = ""
) -> notifications_pb2.WatchNotificationsRequest:
    return notifications_pb2.WatchNotificationsRequest(
        cursor=cursor,
        types=[int(t) for t in types],  # type: ignore[misc]
        customer_id=customer_id,
    )
