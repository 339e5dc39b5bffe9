"""Notifications: what other systems hear about, and their place in the outbox.

A notification is written by the ledger transaction that makes the change it
announces (metering.ledger.outbox), so it exists if and only if the change
happened. Its dedupe key makes it once-only per customer: a threshold once per
meter, period and threshold; a limit refusal once per meter and period; an
invoice once; a credit note once. Delivery (metering.delivery) reads them in outbox order.

Everything here is pure: building notifications from a decision, their
payloads as stored (JSON, decimals as strings), and their place in the
outbox (a Position; its signed wire form, the cursor, is in metering.api.page_tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

from metering.domain import limits
from metering.domain.decimals import ZERO, format_decimal
from metering.domain.periods import Period
from metering.domain.records import CreditNote, CreditNoteReason, Invoice


class NotificationType(StrEnum):
    """The types, by the dotted names webhook endpoints subscribe with."""

    THRESHOLD_CROSSED = "usage.threshold_crossed"
    LIMIT_REJECTED = "usage.limit_rejected"
    INVOICE_FINALIZED = "invoice.finalized"
    CREDIT_NOTE_ISSUED = "invoice.credit_note_issued"
    CREDITS_LOW = "credits.low"
    CREDITS_EXHAUSTED = "credits.exhausted"


@dataclass(frozen=True, slots=True)
class MeterTerms:
    """What a notification about a customer's meter says of the plan it ran under."""

    plan_slug: str
    unit: str
    approaching_threshold: Decimal  # percent


@dataclass(frozen=True, slots=True)
class ThresholdCrossed:
    meter_slug: str
    plan_slug: str
    unit: str
    period: Period
    threshold_percent: Decimal
    used: Decimal
    limit: Decimal
    granted: Decimal
    allowance: Decimal  # limit + granted
    percent_used: Decimal


@dataclass(frozen=True, slots=True)
class LimitRejected:
    meter_slug: str
    plan_slug: str
    unit: str
    period: Period
    limit: Decimal
    available: Decimal
    requested: Decimal
    transaction_id: str


@dataclass(frozen=True, slots=True)
class InvoiceFinalized:
    invoice_id: str
    invoice_number: int
    period: Period
    total: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class CreditNoteIssued:
    invoice_id: str
    invoice_number: int
    credit_note_id: str
    credit_note_number: int
    reason: CreditNoteReason
    amount: Decimal
    invoice_net_total: Decimal  # the invoice's total less every credit note so far, this one included
    currency: str
    whole_invoice: bool


@dataclass(frozen=True, slots=True)
class CreditsLow:
    """The wallet's available credit fell below the plan's threshold: the hook for an auto top-up."""

    currency: str
    available: Decimal
    threshold: Decimal
    generation: int  # the wallet's generation (grants given): a top-up re-arms it
    transaction_id: str  # the event that crossed it


@dataclass(frozen=True, slots=True)
class CreditsExhausted:
    """The wallet's available credit reached zero, or an event was refused for credit."""

    currency: str
    available: Decimal
    generation: int
    transaction_id: str
    meter_slug: str
    requested: Decimal  # the cost of the event that exhausted it (or was refused)
    refused: bool  # whether that event was refused (prepaid plans)


Payload = ThresholdCrossed | LimitRejected | InvoiceFinalized | CreditNoteIssued | CreditsLow | CreditsExhausted

_TYPES: dict[type[Any], NotificationType] = {
    ThresholdCrossed: NotificationType.THRESHOLD_CROSSED,
    LimitRejected: NotificationType.LIMIT_REJECTED,
    InvoiceFinalized: NotificationType.INVOICE_FINALIZED,
    CreditNoteIssued: NotificationType.CREDIT_NOTE_ISSUED,
    CreditsLow: NotificationType.CREDITS_LOW,
    CreditsExhausted: NotificationType.CREDITS_EXHAUSTED,
}


def type_of(payload: Payload) -> NotificationType:
    return _TYPES[type(payload)]


def limit_rejected_key(meter_slug: str, period: Period) -> str:
    """The dedupe key of the first hard-limit refusal of a meter in a period,
    computable before the notification is built (the writer skips building
    one its process has already seen written)."""
    return f"{NotificationType.LIMIT_REJECTED}/{meter_slug}/{period.start.isoformat()}"


def credits_key(kind: NotificationType, currency: str, generation: int) -> str:
    """A wallet notification is once per wallet generation: a top-up re-arms it."""
    return f"{kind}/{currency}/{generation}"


def dedupe_key(payload: Payload) -> str:
    """What makes a notification once-only among its customer's."""
    if isinstance(payload, ThresholdCrossed):
        return (
            f"{type_of(payload)}/{payload.meter_slug}/{payload.period.start.isoformat()}/"
            f"{format_decimal(payload.threshold_percent)}"
        )
    if isinstance(payload, LimitRejected):
        return limit_rejected_key(payload.meter_slug, payload.period)
    if isinstance(payload, CreditNoteIssued):
        return f"{type_of(payload)}/{payload.credit_note_id}"
    if isinstance(payload, CreditsLow | CreditsExhausted):
        return credits_key(type_of(payload), payload.currency, payload.generation)
    return f"{type_of(payload)}/{payload.invoice_id}"


@dataclass(frozen=True, slots=True)
class NewNotification:
    """A notification about to be written; the database adds its time and position."""

    customer_id: str
    payload: Payload
    notification_id: UUID = field(default_factory=uuid4)

    @property
    def type(self) -> NotificationType:
        return type_of(self.payload)

    @property
    def dedupe_key(self) -> str:
        return dedupe_key(self.payload)


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in the outbox: a transaction id (the writer's own, or its
    customer's previous notification's if later), then a sequence number, both
    assigned under the customer's outbox lock until the commit, so that one
    customer's positions follow the order its transactions committed
    (metering.ledger.outbox, migrations 0011 and 0015)."""

    txid: int
    seq: int


@dataclass(frozen=True, slots=True)
class StoredNotification:
    notification_id: UUID
    customer_id: str
    created_at: datetime
    position: Position
    payload: Payload

    @property
    def type(self) -> NotificationType:
        return type_of(self.payload)


@dataclass(frozen=True, slots=True)
class WatchQuery:
    """Where a watch starts (None: now) and which notifications it shows."""

    after: Position | None
    types: frozenset[NotificationType]  # empty: every type
    customer_id: str | None  # None: every customer

    def wants(self, notification: StoredNotification) -> bool:
        return (not self.types or notification.type in self.types) and (
            self.customer_id is None or notification.customer_id == self.customer_id
        )


# -- building them from decisions ---------------------------------------------------


def thresholds_notifications(
    customer_id: str,
    meter_slug: str,
    terms: MeterTerms,
    period: Period,
    allowance: limits.Allowance,
    used_before: Decimal,
    used_after: Decimal,
) -> list[NewNotification]:
    """One notification per threshold that a change from used_before to
    used_after crossed (limits.thresholds_crossed)."""
    crossed = limits.thresholds_crossed(allowance, used_before, used_after, terms.approaching_threshold)
    if not crossed:
        return []
    assert allowance.limit is not None and allowance.total is not None  # an unlimited meter crosses nothing
    percent = limits.percent_used(allowance, used_after)
    assert percent is not None
    return [
        NewNotification(
            customer_id,
            ThresholdCrossed(
                meter_slug=meter_slug,
                plan_slug=terms.plan_slug,
                unit=terms.unit,
                period=period,
                threshold_percent=threshold,
                used=used_after,
                limit=allowance.limit,
                granted=allowance.granted,
                allowance=allowance.total,
                percent_used=percent,
            ),
        )
        for threshold in crossed
    ]


def invoice_finalized_notification(
    customer_id: str, invoice_id: str, number: int, period: Period, total: Decimal, currency: str
) -> NewNotification:
    return NewNotification(customer_id, InvoiceFinalized(invoice_id, number, period, total, currency))


def credit_note_issued_notification(invoice: Invoice, note: CreditNote) -> NewNotification:
    """The announcement of `note`, issued against `invoice` (whose credit notes include it)."""
    assert invoice.invoice_id is not None and invoice.number is not None  # finalized
    return NewNotification(
        invoice.customer_id,
        CreditNoteIssued(
            invoice_id=str(invoice.invoice_id),
            invoice_number=invoice.number,
            credit_note_id=note.credit_note_id,
            credit_note_number=note.number,
            reason=note.reason,
            amount=note.amount,
            invoice_net_total=invoice.net_total,
            currency=note.currency,
            whole_invoice=note.whole_invoice,
        ),
    )


def credits_low_notification(
    customer_id: str,
    currency: str,
    generation: int,
    *,
    available: Decimal,
    threshold: Decimal,
    transaction_id: str,
) -> NewNotification:
    return NewNotification(customer_id, CreditsLow(currency, available, threshold, generation, transaction_id))


def credits_exhausted_notification(
    customer_id: str,
    currency: str,
    generation: int,
    *,
    available: Decimal,
    requested: Decimal,
    transaction_id: str,
    meter_slug: str,
    refused: bool,
) -> NewNotification:
    return NewNotification(
        customer_id,
        CreditsExhausted(currency, available, generation, transaction_id, meter_slug, requested, refused),
    )


def limit_rejected_notification(
    customer_id: str,
    meter_slug: str,
    terms: MeterTerms,
    period: Period,
    allowance: limits.Allowance,
    *,
    available: Decimal | None,
    requested: Decimal,
    transaction_id: str,
) -> NewNotification:
    return NewNotification(
        customer_id,
        LimitRejected(
            meter_slug=meter_slug,
            plan_slug=terms.plan_slug,
            unit=terms.unit,
            period=period,
            limit=allowance.limit if allowance.limit is not None else ZERO,
            available=available if available is not None else ZERO,
            requested=requested,
            transaction_id=transaction_id,
        ),
    )


# -- payloads as stored --------------------------------------------------------------


def _period_json(period: Period) -> dict[str, str | None]:
    return {"start": period.start.isoformat(), "end": period.end.isoformat() if period.end else None}


def _period_from(data: dict[str, Any]) -> Period:
    end = data["end"]
    return Period(datetime.fromisoformat(data["start"]), datetime.fromisoformat(end) if end else None)


def payload_json(payload: Payload) -> dict[str, Any]:
    """The stored form: every field, decimals as exact strings, times ISO 8601."""
    data: dict[str, Any] = {}
    for name in payload.__dataclass_fields__:
        value = getattr(payload, name)
        if isinstance(value, Decimal):
            data[name] = format_decimal(value)
        elif isinstance(value, Period):
            data[name] = _period_json(value)
        else:
            data[name] = value
    return data


def payload_from_json(kind: NotificationType, data: dict[str, Any]) -> Payload:
    cls = next(cls for cls, t in _TYPES.items() if t is kind)
    fields: dict[str, Any] = {}
    for name, spec in cls.__dataclass_fields__.items():
        value = data[name]
        if spec.type == "Decimal":
            fields[name] = Decimal(value)
        elif spec.type == "Period":
            fields[name] = _period_from(value)
        elif spec.type == "CreditNoteReason":
            fields[name] = CreditNoteReason(value)
        else:
            fields[name] = value
    result: Payload = cls(**fields)
    return result
