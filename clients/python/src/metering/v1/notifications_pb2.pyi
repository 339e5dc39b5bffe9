import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from metering.v1 import billing_pb2 as _billing_pb2
from metering.v1 import invoices_pb2 as _invoices_pb2
from metering.v1 import wallets_pb2 as _wallets_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NotificationType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NOTIFICATION_TYPE_UNSPECIFIED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_USAGE_THRESHOLD_CROSSED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_USAGE_LIMIT_REJECTED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_INVOICE_FINALIZED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_INVOICE_CREDIT_NOTE_ISSUED: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_CREDITS_LOW: _ClassVar[NotificationType]
    NOTIFICATION_TYPE_CREDITS_EXHAUSTED: _ClassVar[NotificationType]
NOTIFICATION_TYPE_UNSPECIFIED: NotificationType
NOTIFICATION_TYPE_USAGE_THRESHOLD_CROSSED: NotificationType
NOTIFICATION_TYPE_USAGE_LIMIT_REJECTED: NotificationType
NOTIFICATION_TYPE_INVOICE_FINALIZED: NotificationType
NOTIFICATION_TYPE_INVOICE_CREDIT_NOTE_ISSUED: NotificationType
NOTIFICATION_TYPE_CREDITS_LOW: NotificationType
NOTIFICATION_TYPE_CREDITS_EXHAUSTED: NotificationType

class Notification(_message.Message):
    __slots__ = ("id", "type", "time", "customer_id", "cursor", "threshold_crossed", "limit_rejected", "invoice_finalized", "credit_note_issued", "credits_low", "credits_exhausted")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_CROSSED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_REJECTED_FIELD_NUMBER: _ClassVar[int]
    INVOICE_FINALIZED_FIELD_NUMBER: _ClassVar[int]
    CREDIT_NOTE_ISSUED_FIELD_NUMBER: _ClassVar[int]
    CREDITS_LOW_FIELD_NUMBER: _ClassVar[int]
    CREDITS_EXHAUSTED_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: NotificationType
    time: _timestamp_pb2.Timestamp
    customer_id: str
    cursor: str
    threshold_crossed: ThresholdCrossed
    limit_rejected: LimitRejected
    invoice_finalized: InvoiceFinalized
    credit_note_issued: CreditNoteIssued
    credits_low: _wallets_pb2.CreditsLow
    credits_exhausted: _wallets_pb2.CreditsExhausted
    def __init__(self, id: _Optional[str] = ..., type: _Optional[_Union[NotificationType, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., customer_id: _Optional[str] = ..., cursor: _Optional[str] = ..., threshold_crossed: _Optional[_Union[ThresholdCrossed, _Mapping]] = ..., limit_rejected: _Optional[_Union[LimitRejected, _Mapping]] = ..., invoice_finalized: _Optional[_Union[InvoiceFinalized, _Mapping]] = ..., credit_note_issued: _Optional[_Union[CreditNoteIssued, _Mapping]] = ..., credits_low: _Optional[_Union[_wallets_pb2.CreditsLow, _Mapping]] = ..., credits_exhausted: _Optional[_Union[_wallets_pb2.CreditsExhausted, _Mapping]] = ...) -> None: ...

class ThresholdCrossed(_message.Message):
    __slots__ = ("meter_slug", "plan_slug", "period_start_time", "period_end_time", "threshold_percent", "used", "limit", "granted", "allowance", "percent_used", "unit")
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    PLAN_SLUG_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_TIME_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_TIME_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    ALLOWANCE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_USED_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    meter_slug: str
    plan_slug: str
    period_start_time: _timestamp_pb2.Timestamp
    period_end_time: _timestamp_pb2.Timestamp
    threshold_percent: str
    used: str
    limit: str
    granted: str
    allowance: str
    percent_used: str
    unit: str
    def __init__(self, meter_slug: _Optional[str] = ..., plan_slug: _Optional[str] = ..., period_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., threshold_percent: _Optional[str] = ..., used: _Optional[str] = ..., limit: _Optional[str] = ..., granted: _Optional[str] = ..., allowance: _Optional[str] = ..., percent_used: _Optional[str] = ..., unit: _Optional[str] = ...) -> None: ...

class LimitRejected(_message.Message):
    __slots__ = ("meter_slug", "plan_slug", "period_start_time", "period_end_time", "limit", "available", "requested", "transaction_id", "unit")
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    PLAN_SLUG_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_TIME_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_TIME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    meter_slug: str
    plan_slug: str
    period_start_time: _timestamp_pb2.Timestamp
    period_end_time: _timestamp_pb2.Timestamp
    limit: str
    available: str
    requested: str
    transaction_id: str
    unit: str
    def __init__(self, meter_slug: _Optional[str] = ..., plan_slug: _Optional[str] = ..., period_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[str] = ..., available: _Optional[str] = ..., requested: _Optional[str] = ..., transaction_id: _Optional[str] = ..., unit: _Optional[str] = ...) -> None: ...

class InvoiceFinalized(_message.Message):
    __slots__ = ("invoice_id", "invoice_number", "period_start_time", "period_end_time", "total")
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_TIME_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_TIME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    invoice_number: int
    period_start_time: _timestamp_pb2.Timestamp
    period_end_time: _timestamp_pb2.Timestamp
    total: _billing_pb2.Money
    def __init__(self, invoice_id: _Optional[str] = ..., invoice_number: _Optional[int] = ..., period_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., total: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ...) -> None: ...

class CreditNoteIssued(_message.Message):
    __slots__ = ("invoice_id", "invoice_number", "credit_note_id", "credit_note_number", "reason", "amount", "invoice_net_total", "whole_invoice")
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    CREDIT_NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_NOTE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    INVOICE_NET_TOTAL_FIELD_NUMBER: _ClassVar[int]
    WHOLE_INVOICE_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    invoice_number: int
    credit_note_id: str
    credit_note_number: int
    reason: _invoices_pb2.CreditNoteReason
    amount: _billing_pb2.Money
    invoice_net_total: _billing_pb2.Money
    whole_invoice: bool
    def __init__(self, invoice_id: _Optional[str] = ..., invoice_number: _Optional[int] = ..., credit_note_id: _Optional[str] = ..., credit_note_number: _Optional[int] = ..., reason: _Optional[_Union[_invoices_pb2.CreditNoteReason, str]] = ..., amount: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., invoice_net_total: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., whole_invoice: _Optional[bool] = ...) -> None: ...

class WatchNotificationsRequest(_message.Message):
    __slots__ = ("cursor", "types", "customer_id")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    types: _containers.RepeatedScalarFieldContainer[NotificationType]
    customer_id: str
    def __init__(self, cursor: _Optional[str] = ..., types: _Optional[_Iterable[_Union[NotificationType, str]]] = ..., customer_id: _Optional[str] = ...) -> None: ...

class WatchNotificationsResponse(_message.Message):
    __slots__ = ("notification",)
    NOTIFICATION_FIELD_NUMBER: _ClassVar[int]
    notification: Notification
    def __init__(self, notification: _Optional[_Union[Notification, _Mapping]] = ...) -> None: ...
