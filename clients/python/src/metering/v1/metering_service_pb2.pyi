from metering.v1 import billing_pb2 as _billing_pb2
from metering.v1 import catalog_pb2 as _catalog_pb2
from metering.v1 import customer_pb2 as _customer_pb2
from metering.v1 import events_pb2 as _events_pb2
from metering.v1 import grants_pb2 as _grants_pb2
from metering.v1 import ingest_pb2 as _ingest_pb2
from metering.v1 import invoices_pb2 as _invoices_pb2
from metering.v1 import notifications_pb2 as _notifications_pb2
from metering.v1 import reservations_pb2 as _reservations_pb2
from metering.v1 import usage_pb2 as _usage_pb2
from metering.v1 import wallets_pb2 as _wallets_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_ARGUMENT: _ClassVar[ErrorReason]
    ERROR_REASON_CUSTOMER_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_METER_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_PRICE_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_PLAN_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_TRANSACTION_ID_CONFLICT: _ClassVar[ErrorReason]
    ERROR_REASON_LIMIT_EXCEEDED: _ClassVar[ErrorReason]
    ERROR_REASON_BILLING_ANCHOR_IMMUTABLE: _ClassVar[ErrorReason]
    ERROR_REASON_DATABASE_UNAVAILABLE: _ClassVar[ErrorReason]
    ERROR_REASON_INTERNAL: _ClassVar[ErrorReason]
    ERROR_REASON_PRICE_CURRENCY_MISMATCH: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_PAGE_TOKEN: _ClassVar[ErrorReason]
    ERROR_REASON_IDEMPOTENCY_KEY_CONFLICT: _ClassVar[ErrorReason]
    ERROR_REASON_RESERVATION_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_RESERVATION_EXPIRED: _ClassVar[ErrorReason]
    ERROR_REASON_RESERVATION_RELEASED: _ClassVar[ErrorReason]
    ERROR_REASON_RESERVATION_COMMITTED: _ClassVar[ErrorReason]
    ERROR_REASON_EVENT_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_PERIOD_CLOSED: _ClassVar[ErrorReason]
    ERROR_REASON_CREDENTIALS_MISSING: _ClassVar[ErrorReason]
    ERROR_REASON_CREDENTIALS_INVALID: _ClassVar[ErrorReason]
    ERROR_REASON_ROLE_REQUIRED: _ClassVar[ErrorReason]
    ERROR_REASON_METER_NOT_ALLOWED: _ClassVar[ErrorReason]
    ERROR_REASON_INVOICE_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_BEFORE_FIRST_PERIOD: _ClassVar[ErrorReason]
    ERROR_REASON_RATE_LIMITED: _ClassVar[ErrorReason]
    ERROR_REASON_CREDENTIALS_EXPIRED: _ClassVar[ErrorReason]
    ERROR_REASON_CATALOG_RELOADED: _ClassVar[ErrorReason]
    ERROR_REASON_INVOICE_NOT_FINALIZED: _ClassVar[ErrorReason]
    ERROR_REASON_CREDIT_NOTE_EXCEEDS_INVOICED: _ClassVar[ErrorReason]
    ERROR_REASON_CREDITS_EXHAUSTED: _ClassVar[ErrorReason]
    ERROR_REASON_SHUTTING_DOWN: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
ERROR_REASON_INVALID_ARGUMENT: ErrorReason
ERROR_REASON_CUSTOMER_NOT_FOUND: ErrorReason
ERROR_REASON_METER_NOT_FOUND: ErrorReason
ERROR_REASON_PRICE_NOT_FOUND: ErrorReason
ERROR_REASON_PLAN_NOT_FOUND: ErrorReason
ERROR_REASON_TRANSACTION_ID_CONFLICT: ErrorReason
ERROR_REASON_LIMIT_EXCEEDED: ErrorReason
ERROR_REASON_BILLING_ANCHOR_IMMUTABLE: ErrorReason
ERROR_REASON_DATABASE_UNAVAILABLE: ErrorReason
ERROR_REASON_INTERNAL: ErrorReason
ERROR_REASON_PRICE_CURRENCY_MISMATCH: ErrorReason
ERROR_REASON_INVALID_PAGE_TOKEN: ErrorReason
ERROR_REASON_IDEMPOTENCY_KEY_CONFLICT: ErrorReason
ERROR_REASON_RESERVATION_NOT_FOUND: ErrorReason
ERROR_REASON_RESERVATION_EXPIRED: ErrorReason
ERROR_REASON_RESERVATION_RELEASED: ErrorReason
ERROR_REASON_RESERVATION_COMMITTED: ErrorReason
ERROR_REASON_EVENT_NOT_FOUND: ErrorReason
ERROR_REASON_PERIOD_CLOSED: ErrorReason
ERROR_REASON_CREDENTIALS_MISSING: ErrorReason
ERROR_REASON_CREDENTIALS_INVALID: ErrorReason
ERROR_REASON_ROLE_REQUIRED: ErrorReason
ERROR_REASON_METER_NOT_ALLOWED: ErrorReason
ERROR_REASON_INVOICE_NOT_FOUND: ErrorReason
ERROR_REASON_BEFORE_FIRST_PERIOD: ErrorReason
ERROR_REASON_RATE_LIMITED: ErrorReason
ERROR_REASON_CREDENTIALS_EXPIRED: ErrorReason
ERROR_REASON_CATALOG_RELOADED: ErrorReason
ERROR_REASON_INVOICE_NOT_FINALIZED: ErrorReason
ERROR_REASON_CREDIT_NOTE_EXCEEDS_INVOICED: ErrorReason
ERROR_REASON_CREDITS_EXHAUSTED: ErrorReason
ERROR_REASON_SHUTTING_DOWN: ErrorReason
