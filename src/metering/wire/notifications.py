"""A notification on the wire: the watch stream's Notification message, and the
webhook body (the same message's proto3 JSON, its type by the dotted name).

NOTIFICATION_TYPES is the one table between the dotted names (the domain's
NotificationType: the webhooks file, webhook bodies, metrics, docs) and the
gRPC enum (the watch stream and its filter)."""

from __future__ import annotations

import json

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from metering.domain.decimals import format_decimal
from metering.domain.notifications import (
    CreditNoteIssued,
    CreditsExhausted,
    CreditsLow,
    LimitRejected,
    NotificationType,
    StoredNotification,
    ThresholdCrossed,
)
from metering.domain.periods import Period
from metering.v1 import notifications_pb2
from metering.wire.credit_notes import REASONS
from metering.wire.values import exact_money, money, set_timestamp, timestamp, timestamp_json

NOTIFICATION_TYPES = {
    NotificationType.THRESHOLD_CROSSED: notifications_pb2.NOTIFICATION_TYPE_USAGE_THRESHOLD_CROSSED,
    NotificationType.LIMIT_REJECTED: notifications_pb2.NOTIFICATION_TYPE_USAGE_LIMIT_REJECTED,
    NotificationType.INVOICE_FINALIZED: notifications_pb2.NOTIFICATION_TYPE_INVOICE_FINALIZED,
    NotificationType.CREDIT_NOTE_ISSUED: notifications_pb2.NOTIFICATION_TYPE_INVOICE_CREDIT_NOTE_ISSUED,
    NotificationType.CREDITS_LOW: notifications_pb2.NOTIFICATION_TYPE_CREDITS_LOW,
    NotificationType.CREDITS_EXHAUSTED: notifications_pb2.NOTIFICATION_TYPE_CREDITS_EXHAUSTED,
}
# The same table read the other way: the gRPC enum to the dotted name.
NOTIFICATION_TYPE_NAMES = {wire: dotted for dotted, wire in NOTIFICATION_TYPES.items()}


def _set_period(start: Timestamp, end: Timestamp, period: Period) -> None:
    set_timestamp(start, period.start)
    if period.end is not None:
        set_timestamp(end, period.end)


def notification(stored: StoredNotification, cursor: str) -> notifications_pb2.Notification:
    """The Notification message: the watch stream's, and the webhook body (its
    proto3 JSON). `cursor` is its position's signed form (metering.api.page_tokens)."""
    message = notifications_pb2.Notification(
        id=str(stored.notification_id),
        type=NOTIFICATION_TYPES[stored.type],
        time=timestamp(stored.created_at),
        customer_id=stored.customer_id,
        cursor=cursor,
    )
    payload = stored.payload
    if isinstance(payload, ThresholdCrossed):
        crossed = message.threshold_crossed
        crossed.meter_slug, crossed.plan_slug, crossed.unit = payload.meter_slug, payload.plan_slug, payload.unit
        _set_period(crossed.period_start_time, crossed.period_end_time, payload.period)
        crossed.threshold_percent = format_decimal(payload.threshold_percent)
        crossed.used = format_decimal(payload.used)
        crossed.limit = format_decimal(payload.limit)
        crossed.granted = format_decimal(payload.granted)
        crossed.allowance = format_decimal(payload.allowance)
        crossed.percent_used = format(payload.percent_used, "f")
    elif isinstance(payload, LimitRejected):
        rejected = message.limit_rejected
        rejected.meter_slug, rejected.plan_slug, rejected.unit = payload.meter_slug, payload.plan_slug, payload.unit
        _set_period(rejected.period_start_time, rejected.period_end_time, payload.period)
        rejected.limit = format_decimal(payload.limit)
        rejected.available = format_decimal(payload.available)
        rejected.requested = format_decimal(payload.requested)
        rejected.transaction_id = payload.transaction_id
    elif isinstance(payload, CreditNoteIssued):
        issued = message.credit_note_issued
        issued.invoice_id, issued.invoice_number = payload.invoice_id, payload.invoice_number
        issued.credit_note_id, issued.credit_note_number = payload.credit_note_id, payload.credit_note_number
        issued.reason = REASONS[payload.reason]
        issued.amount.CopyFrom(money(payload.amount, payload.currency))
        issued.invoice_net_total.CopyFrom(money(payload.invoice_net_total, payload.currency))
        issued.whole_invoice = payload.whole_invoice
    elif isinstance(payload, CreditsLow):
        low = message.credits_low
        low.available.CopyFrom(exact_money(payload.available, payload.currency))
        low.threshold.CopyFrom(exact_money(payload.threshold, payload.currency))
        low.transaction_id = payload.transaction_id
    elif isinstance(payload, CreditsExhausted):
        exhausted = message.credits_exhausted
        exhausted.available.CopyFrom(exact_money(payload.available, payload.currency))
        exhausted.requested.CopyFrom(exact_money(payload.requested, payload.currency))
        exhausted.transaction_id, exhausted.meter_slug = payload.transaction_id, payload.meter_slug
        exhausted.refused = payload.refused
    else:
        invoice = message.invoice_finalized
        invoice.invoice_id, invoice.invoice_number = payload.invoice_id, payload.invoice_number
        _set_period(invoice.period_start_time, invoice.period_end_time, payload.period)
        invoice.total.CopyFrom(money(payload.total, payload.currency))
    return message


def notification_json(stored: StoredNotification, cursor: str) -> str:
    """The webhook body: the Notification's proto3 JSON, compact, with its type by the
    dotted name (the Standard Webhooks convention), as the webhooks file subscribes to it.

    The two types an ingest writes by the thousand (a threshold crossed, a limit's
    refusal) are built as the same dict directly, a fifth of the CPU of going through
    the message and json_format; tests/unit/test_notification_wire.py holds them equal."""
    payload = stored.payload
    if isinstance(payload, ThresholdCrossed | LimitRejected):
        body = _usage_json(stored, payload, cursor)
    else:
        body = json_format.MessageToDict(notification(stored, cursor))
        body["type"] = stored.type.value
    return json.dumps(body, separators=(",", ":"))


def _usage_json(
    stored: StoredNotification, payload: ThresholdCrossed | LimitRejected, cursor: str
) -> dict[str, object]:
    """MessageToDict of notification(stored, cursor) for these two payloads, with the
    dotted type: keys in field-number order, proto3's empty strings left out."""
    body: dict[str, object] = {
        "id": str(stored.notification_id),
        "type": stored.type.value,
        "time": timestamp_json(stored.created_at),
    }
    _put(body, "customerId", stored.customer_id)
    _put(body, "cursor", cursor)
    fields: dict[str, object] = {}
    _put(fields, "meterSlug", payload.meter_slug)
    _put(fields, "planSlug", payload.plan_slug)
    if isinstance(payload, LimitRejected):
        _put_period(fields, payload.period)
        fields["limit"] = format_decimal(payload.limit)
        fields["available"] = format_decimal(payload.available)
        fields["requested"] = format_decimal(payload.requested)
        _put(fields, "transactionId", payload.transaction_id)
        _put(fields, "unit", payload.unit)
        body["limitRejected"] = fields
    else:
        _put_period(fields, payload.period)
        fields["thresholdPercent"] = format_decimal(payload.threshold_percent)
        fields["used"] = format_decimal(payload.used)
        fields["limit"] = format_decimal(payload.limit)
        fields["granted"] = format_decimal(payload.granted)
        fields["allowance"] = format_decimal(payload.allowance)
        _put(fields, "percentUsed", format(payload.percent_used, "f"))
        _put(fields, "unit", payload.unit)
        body["thresholdCrossed"] = fields
    return body


def _put(fields: dict[str, object], key: str, value: str) -> None:
    if value:  # proto3 JSON leaves a field at its default (the empty string) out
        fields[key] = value


def _put_period(fields: dict[str, object], period: Period) -> None:
    fields["periodStartTime"] = timestamp_json(period.start)
    if period.end is not None:
        fields["periodEndTime"] = timestamp_json(period.end)
