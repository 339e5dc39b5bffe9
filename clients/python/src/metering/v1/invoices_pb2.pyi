import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from metering.v1 import billing_pb2 as _billing_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreditNoteReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CREDIT_NOTE_REASON_UNSPECIFIED: _ClassVar[CreditNoteReason]
    CREDIT_NOTE_REASON_DUPLICATE: _ClassVar[CreditNoteReason]
    CREDIT_NOTE_REASON_FRAUDULENT: _ClassVar[CreditNoteReason]
    CREDIT_NOTE_REASON_ORDER_CHANGE: _ClassVar[CreditNoteReason]
    CREDIT_NOTE_REASON_PRODUCT_UNSATISFACTORY: _ClassVar[CreditNoteReason]
    CREDIT_NOTE_REASON_BILLING_ERROR: _ClassVar[CreditNoteReason]
    CREDIT_NOTE_REASON_GOODWILL: _ClassVar[CreditNoteReason]
CREDIT_NOTE_REASON_UNSPECIFIED: CreditNoteReason
CREDIT_NOTE_REASON_DUPLICATE: CreditNoteReason
CREDIT_NOTE_REASON_FRAUDULENT: CreditNoteReason
CREDIT_NOTE_REASON_ORDER_CHANGE: CreditNoteReason
CREDIT_NOTE_REASON_PRODUCT_UNSATISFACTORY: CreditNoteReason
CREDIT_NOTE_REASON_BILLING_ERROR: CreditNoteReason
CREDIT_NOTE_REASON_GOODWILL: CreditNoteReason

class Invoice(_message.Message):
    __slots__ = ("invoice_id", "customer_id", "number", "status", "plan_slug", "period_start_time", "period_end_time", "lines", "subtotal", "credits", "total", "finalize_time", "credit_notes", "credited", "net_total", "credits_applied")
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PLAN_SLUG_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_TIME_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_TIME_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    SUBTOTAL_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FINALIZE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREDIT_NOTES_FIELD_NUMBER: _ClassVar[int]
    CREDITED_FIELD_NUMBER: _ClassVar[int]
    NET_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CREDITS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    customer_id: str
    number: int
    status: _billing_pb2.InvoiceStatus
    plan_slug: str
    period_start_time: _timestamp_pb2.Timestamp
    period_end_time: _timestamp_pb2.Timestamp
    lines: _containers.RepeatedCompositeFieldContainer[_billing_pb2.BillLine]
    subtotal: _billing_pb2.Money
    credits: _billing_pb2.Money
    total: _billing_pb2.Money
    finalize_time: _timestamp_pb2.Timestamp
    credit_notes: _containers.RepeatedCompositeFieldContainer[CreditNote]
    credited: _billing_pb2.Money
    net_total: _billing_pb2.Money
    credits_applied: _containers.RepeatedCompositeFieldContainer[_billing_pb2.CreditApplied]
    def __init__(self, invoice_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., number: _Optional[int] = ..., status: _Optional[_Union[_billing_pb2.InvoiceStatus, str]] = ..., plan_slug: _Optional[str] = ..., period_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lines: _Optional[_Iterable[_Union[_billing_pb2.BillLine, _Mapping]]] = ..., subtotal: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., credits: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., total: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., finalize_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., credit_notes: _Optional[_Iterable[_Union[CreditNote, _Mapping]]] = ..., credited: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., net_total: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., credits_applied: _Optional[_Iterable[_Union[_billing_pb2.CreditApplied, _Mapping]]] = ...) -> None: ...

class CreditNoteLine(_message.Message):
    __slots__ = ("meter_slug", "price_slug", "amount")
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    PRICE_SLUG_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    meter_slug: str
    price_slug: str
    amount: _billing_pb2.Money
    def __init__(self, meter_slug: _Optional[str] = ..., price_slug: _Optional[str] = ..., amount: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ...) -> None: ...

class CreditNote(_message.Message):
    __slots__ = ("credit_note_id", "customer_id", "invoice_id", "number", "reason", "memo", "whole_invoice", "lines", "amount", "issue_time")
    CREDIT_NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    WHOLE_INVOICE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    ISSUE_TIME_FIELD_NUMBER: _ClassVar[int]
    credit_note_id: str
    customer_id: str
    invoice_id: str
    number: int
    reason: CreditNoteReason
    memo: str
    whole_invoice: bool
    lines: _containers.RepeatedCompositeFieldContainer[CreditNoteLine]
    amount: _billing_pb2.Money
    issue_time: _timestamp_pb2.Timestamp
    def __init__(self, credit_note_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., invoice_id: _Optional[str] = ..., number: _Optional[int] = ..., reason: _Optional[_Union[CreditNoteReason, str]] = ..., memo: _Optional[str] = ..., whole_invoice: _Optional[bool] = ..., lines: _Optional[_Iterable[_Union[CreditNoteLine, _Mapping]]] = ..., amount: _Optional[_Union[_billing_pb2.Money, _Mapping]] = ..., issue_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreditNoteLineRequest(_message.Message):
    __slots__ = ("meter_slug", "price_slug", "amount")
    METER_SLUG_FIELD_NUMBER: _ClassVar[int]
    PRICE_SLUG_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    meter_slug: str
    price_slug: str
    amount: str
    def __init__(self, meter_slug: _Optional[str] = ..., price_slug: _Optional[str] = ..., amount: _Optional[str] = ...) -> None: ...

class IssueCreditNoteRequest(_message.Message):
    __slots__ = ("customer_id", "invoice_id", "credit_note_id", "reason", "memo", "whole_invoice", "lines")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_NOTE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    WHOLE_INVOICE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    invoice_id: str
    credit_note_id: str
    reason: CreditNoteReason
    memo: str
    whole_invoice: bool
    lines: _containers.RepeatedCompositeFieldContainer[CreditNoteLineRequest]
    def __init__(self, customer_id: _Optional[str] = ..., invoice_id: _Optional[str] = ..., credit_note_id: _Optional[str] = ..., reason: _Optional[_Union[CreditNoteReason, str]] = ..., memo: _Optional[str] = ..., whole_invoice: _Optional[bool] = ..., lines: _Optional[_Iterable[_Union[CreditNoteLineRequest, _Mapping]]] = ...) -> None: ...

class IssueCreditNoteResponse(_message.Message):
    __slots__ = ("credit_note", "duplicate", "invoice")
    CREDIT_NOTE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    INVOICE_FIELD_NUMBER: _ClassVar[int]
    credit_note: CreditNote
    duplicate: bool
    invoice: Invoice
    def __init__(self, credit_note: _Optional[_Union[CreditNote, _Mapping]] = ..., duplicate: _Optional[bool] = ..., invoice: _Optional[_Union[Invoice, _Mapping]] = ...) -> None: ...

class ListInvoicesRequest(_message.Message):
    __slots__ = ("customer_id", "status", "page_size", "page_token")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    status: _billing_pb2.InvoiceStatus
    page_size: int
    page_token: str
    def __init__(self, customer_id: _Optional[str] = ..., status: _Optional[_Union[_billing_pb2.InvoiceStatus, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInvoicesResponse(_message.Message):
    __slots__ = ("invoices", "next_page_token")
    INVOICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    invoices: _containers.RepeatedCompositeFieldContainer[Invoice]
    next_page_token: str
    def __init__(self, invoices: _Optional[_Iterable[_Union[Invoice, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetInvoiceRequest(_message.Message):
    __slots__ = ("invoice_id",)
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    def __init__(self, invoice_id: _Optional[str] = ...) -> None: ...

class GetInvoiceResponse(_message.Message):
    __slots__ = ("invoice",)
    INVOICE_FIELD_NUMBER: _ClassVar[int]
    invoice: Invoice
    def __init__(self, invoice: _Optional[_Union[Invoice, _Mapping]] = ...) -> None: ...
