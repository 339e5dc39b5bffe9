"""Error mapping: the one place a failure becomes a gRPC status.

Every refusal carries a google.rpc.Status in the `grpc-status-details-bin`
trailer with an ErrorInfo (reason, domain, metadata) and the detail its code
calls for (BadRequest, QuotaFailure, ResourceInfo, PreconditionFailure,
RetryInfo). Unexpected exceptions become INTERNAL without internal detail;
the traceback goes to the server log only.
"""

from __future__ import annotations

import logging
import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from metering.domain.decimals import format_decimal
from metering.domain.errors import (
    BeforeFirstPeriod,
    BillingAnchorImmutable,
    CatalogReloaded,
    CreditExceedsInvoiced,
    CreditsExhausted,
    DatabaseUnavailable,
    IdempotencyKeyConflict,
    InvalidArgument,
    InvalidPageToken,
    InvoiceNotFinalized,
    LimitExceeded,
    MeterNotAllowed,
    NotFound,
    PeriodClosed,
    PriceCurrencyMismatch,
    RateLimited,
    ReservationStateError,
    RoleRequired,
    ShuttingDown,
    TokenExpired,
    TransactionConflict,
    Unauthenticated,
)
from metering.domain.periods import rfc3339
from metering.v1 import metering_service_pb2

log = logging.getLogger(__name__)

DOMAIN = "metering.v1"
_NOT_FOUND_REASONS = {
    "customer": metering_service_pb2.ERROR_REASON_CUSTOMER_NOT_FOUND,
    "meter": metering_service_pb2.ERROR_REASON_METER_NOT_FOUND,
    "price": metering_service_pb2.ERROR_REASON_PRICE_NOT_FOUND,
    "plan": metering_service_pb2.ERROR_REASON_PLAN_NOT_FOUND,
    "reservation": metering_service_pb2.ERROR_REASON_RESERVATION_NOT_FOUND,
    "event": metering_service_pb2.ERROR_REASON_EVENT_NOT_FOUND,
    "invoice": metering_service_pb2.ERROR_REASON_INVOICE_NOT_FOUND,
}
_RESOURCE_TYPES = {
    "customer": "metering.v1.Customer",
    "meter": "metering.v1.Meter",
    "price": "metering.v1.Price",
    "plan": "metering.v1.Plan",
    "reservation": "metering.v1.Reservation",
    "event": "metering.v1.UsageEvent",
    "invoice": "metering.v1.Invoice",
}
# A field violation names what is wrong in domain terms (a command's or a
# query's field); where the request field that carries it on the wire has
# another name, this table gives it. Every other name is its own wire name.
_WIRE_FIELDS = {
    "end": "end_time",  # UsageQuery.end: GetUsage's end_time
}
_RESERVATION_REASONS = {
    "expired": metering_service_pb2.ERROR_REASON_RESERVATION_EXPIRED,
    "released": metering_service_pb2.ERROR_REASON_RESERVATION_RELEASED,
    "committed": metering_service_pb2.ERROR_REASON_RESERVATION_COMMITTED,
}


# The detail types this service attaches, for clients that read them back.
DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.QuotaFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.RetryInfo,
)


def read_details(error: grpc.RpcError) -> dict[str, Message] | None:
    """The google.rpc details of a failed call, by type name; None without a Status."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    return None if status is None else status_details(status)


def status_details(status: status_pb2.Status) -> dict[str, Message]:
    """The google.rpc details of a Status (a call's, or one event's in a batch), by type name."""
    found: dict[str, Message] = {}
    for detail in status.details:
        for kind in DETAIL_TYPES:
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return found


def reason_name(reason: int) -> str:
    """ErrorInfo.reason on the wire: the enum value name without its prefix."""
    return metering_service_pb2.ErrorReason.Name(reason).removeprefix("ERROR_REASON_")


def _info(reason: int, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason_name(reason), domain=DOMAIN, metadata=metadata)


def _status(code: grpc.StatusCode, message: str, *details: Message) -> status_pb2.Status:
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)


def retry_delay(seconds: float) -> duration_pb2.Duration:
    """A RetryInfo delay, rounded up to the millisecond (never earlier than the limit allows)."""
    millis = max(1, math.ceil(seconds * 1000))
    return duration_pb2.Duration(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)


# gRPC's own retry pushback (gRFC A6): a client whose service config retries
# RESOURCE_EXHAUSTED waits this many milliseconds, whatever its language,
# without reading RetryInfo.
PUSHBACK_KEY = "grpc-retry-pushback-ms"
# A call refused by a server that is shutting down may be sent again at once:
# the retry reaches another replica, or this one's successor.
SHUTTING_DOWN_RETRY_SECONDS = 0.1


def to_status(exc: BaseException) -> grpc.Status:
    """The gRPC status (with details in the trailer) that answers `exc`."""
    status = rpc_status.to_status(to_rpc_status(exc))
    if isinstance(exc, RateLimited):
        pushback = (PUSHBACK_KEY, str(max(1, math.ceil(exc.retry_after * 1000))))
        return status._replace(trailing_metadata=(*status.trailing_metadata, pushback))  # type: ignore[attr-defined,no-any-return]
    return status


# Plain-HTTP conventions (the HTTP edge, metering.api.http): the HTTP status of a
# Connect refusal whose ErrorInfo reason calls for another one than the Connect
# protocol's own mapping of its code. An out-of-credits or over-limit refusal
# (402) can then be told from rate limiting (429) without reading the body.
HTTP_STATUS_BY_REASON: dict[str, int] = {
    reason_name(metering_service_pb2.ERROR_REASON_LIMIT_EXCEEDED): 402,  # Payment Required
    reason_name(metering_service_pb2.ERROR_REASON_CREDITS_EXHAUSTED): 402,  # out of prepaid credit
    reason_name(metering_service_pb2.ERROR_REASON_RATE_LIMITED): 429,  # Too Many Requests
}


def http_status(status: status_pb2.Status) -> int | None:
    """The HTTP status a Connect unary refusal answers with, where it is not the
    protocol's own for its code (None: the protocol's)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return HTTP_STATUS_BY_REASON.get(str(info.reason))
    return None


def retry_after(status: status_pb2.Status) -> int | None:
    """Whole seconds for an HTTP `Retry-After` header: the refusal's RetryInfo
    delay, rounded up (never earlier than the limit allows); None without one."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay
            return max(1, int(delay.seconds) + (1 if delay.nanos > 0 else 0))
    return None


def write_ok_status(message: status_pb2.Status) -> None:
    """Makes an empty Status field the OK status, in place: OK is code 0, the
    default, so only the field's presence is set (the bytes of
    Status(code=OK)), without building a Status to copy for every event."""
    message.SetInParent()


def to_rpc_status(exc: BaseException) -> status_pb2.Status:
    """The google.rpc.Status that answers `exc`: sent as a call's status, or
    inside a batch or stream result."""
    if isinstance(exc, InvalidArgument):
        reason = (
            metering_service_pb2.ERROR_REASON_INVALID_PAGE_TOKEN
            if isinstance(exc, InvalidPageToken)
            else metering_service_pb2.ERROR_REASON_INVALID_ARGUMENT
        )
        violations = [
            error_details_pb2.BadRequest.FieldViolation(
                field=_WIRE_FIELDS.get(v.field, v.field), description=v.description
            )
            for v in exc.violations
        ]
        return _status(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"invalid request: {exc}",
            error_details_pb2.BadRequest(field_violations=violations),
            _info(reason),
        )
    if isinstance(exc, NotFound):
        return _status(
            grpc.StatusCode.NOT_FOUND,
            str(exc),
            _info(_NOT_FOUND_REASONS[exc.kind], **{exc.kind: exc.name}),
            error_details_pb2.ResourceInfo(
                resource_type=_RESOURCE_TYPES[exc.kind], resource_name=exc.name, description=str(exc)
            ),
        )
    if isinstance(exc, TransactionConflict):
        return _status(
            grpc.StatusCode.ALREADY_EXISTS,
            str(exc),
            _info(
                metering_service_pb2.ERROR_REASON_TRANSACTION_ID_CONFLICT,
                transaction_id=exc.transaction_id,
                conflicting_fields=",".join(exc.fields),
                original_event_id=exc.original_event_id,
            ),
        )
    if isinstance(exc, LimitExceeded):
        return _status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            str(exc),
            _info(
                metering_service_pb2.ERROR_REASON_LIMIT_EXCEEDED,
                meter=exc.meter,
                plan=exc.plan,
                limit=format_decimal(exc.limit),
                available=format_decimal(exc.available),
                requested=format_decimal(exc.requested),
                period_end="" if exc.period_end is None else rfc3339(exc.period_end),  # "": never resets
            ),
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=f"meter:{exc.meter}", description=str(exc))
                ]
            ),
        )
    if isinstance(exc, CreditsExhausted):
        return _status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            str(exc),
            _info(
                metering_service_pb2.ERROR_REASON_CREDITS_EXHAUSTED,
                meter=exc.meter,
                plan=exc.plan,
                currency=exc.currency,
                cost=format_decimal(exc.cost),
                available=format_decimal(exc.available),
            ),
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=f"wallet:{exc.customer_id}", description=str(exc))
                ]
            ),
        )
    if isinstance(exc, BillingAnchorImmutable):
        return _status(
            grpc.StatusCode.FAILED_PRECONDITION,
            str(exc),
            _info(metering_service_pb2.ERROR_REASON_BILLING_ANCHOR_IMMUTABLE, billing_anchor_time=rfc3339(exc.stored)),
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type="BILLING_ANCHOR_IMMUTABLE", subject=f"customer:{exc.customer_id}", description=str(exc)
                    )
                ]
            ),
        )
    if isinstance(exc, IdempotencyKeyConflict):
        return _status(
            grpc.StatusCode.ALREADY_EXISTS,
            str(exc),
            _info(
                metering_service_pb2.ERROR_REASON_IDEMPOTENCY_KEY_CONFLICT,
                **{f"{exc.kind}_id": exc.key, "conflicting_fields": ",".join(exc.fields)},
            ),
        )
    if isinstance(exc, ReservationStateError):
        return _status(
            grpc.StatusCode.FAILED_PRECONDITION,
            str(exc),
            _info(_RESERVATION_REASONS[exc.status], reservation_id=exc.reservation_id, status=exc.status),
        )
    if isinstance(exc, PeriodClosed):
        return _status(
            grpc.StatusCode.FAILED_PRECONDITION,
            str(exc),
            _info(
                metering_service_pb2.ERROR_REASON_PERIOD_CLOSED,
                transaction_id=exc.transaction_id,
                invoice_id=exc.invoice_id,
                period_start=rfc3339(exc.start),
                period_end=rfc3339(exc.end),
            ),
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type="PERIOD_CLOSED", subject=f"invoice:{exc.invoice_id}", description=str(exc)
                    )
                ]
            ),
        )
    if isinstance(exc, InvoiceNotFinalized):
        return _status(
            grpc.StatusCode.FAILED_PRECONDITION,
            str(exc),
            _info(
                metering_service_pb2.ERROR_REASON_INVOICE_NOT_FINALIZED,
                invoice_id=exc.invoice_id,
                period_start=rfc3339(exc.start),
                period_end=rfc3339(exc.end),
                status=exc.status,
            ),
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type="INVOICE_NOT_FINALIZED", subject=f"invoice:{exc.invoice_id}", description=str(exc)
                    )
                ]
            ),
        )
    if isinstance(exc, CreditExceedsInvoiced):
        return _status(
            grpc.StatusCode.FAILED_PRECONDITION,
            str(exc),
            _info(
                metering_service_pb2.ERROR_REASON_CREDIT_NOTE_EXCEEDS_INVOICED,
                invoice_id=exc.invoice_id,
                meter=exc.meter_slug,
                price=exc.price_slug,
                invoiced=format_decimal(exc.invoiced),
                credited=format_decimal(exc.credited),
                requested=format_decimal(exc.requested),
                currency=exc.currency,
            ),
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type="CREDIT_NOTE_EXCEEDS_INVOICED", subject=f"invoice:{exc.invoice_id}", description=str(exc)
                    )
                ]
            ),
        )
    if isinstance(exc, BeforeFirstPeriod):
        return _status(
            grpc.StatusCode.FAILED_PRECONDITION,
            str(exc),
            _info(
                metering_service_pb2.ERROR_REASON_BEFORE_FIRST_PERIOD,
                transaction_id=exc.transaction_id,
                event_time=rfc3339(exc.event_time),
                billing_anchor_time=rfc3339(exc.billing_anchor),
            ),
        )
    if isinstance(exc, PriceCurrencyMismatch):
        return _status(
            grpc.StatusCode.FAILED_PRECONDITION,
            str(exc),
            _info(
                metering_service_pb2.ERROR_REASON_PRICE_CURRENCY_MISMATCH,
                price=exc.price,
                price_currency=exc.price_currency,
                plan_currency=exc.plan_currency,
            ),
        )
    if isinstance(exc, Unauthenticated):
        reason = (
            metering_service_pb2.ERROR_REASON_CREDENTIALS_MISSING
            if exc.missing
            else metering_service_pb2.ERROR_REASON_CREDENTIALS_INVALID
        )
        return _status(grpc.StatusCode.UNAUTHENTICATED, str(exc), _info(reason))
    if isinstance(exc, TokenExpired):
        return _status(
            grpc.StatusCode.UNAUTHENTICATED,
            str(exc),
            _info(metering_service_pb2.ERROR_REASON_CREDENTIALS_EXPIRED, caller=exc.caller, expired_at=exc.expired_at),
        )
    if isinstance(exc, RateLimited):
        limits = (
            {"requests_per_second": f"{exc.requests_per_second:g}", "burst": f"{exc.burst:g}"}
            if exc.kind == "rate"
            else {"max_in_flight": str(exc.max_in_flight)}
        )
        return _status(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            str(exc),
            _info(metering_service_pb2.ERROR_REASON_RATE_LIMITED, caller=exc.caller, limit=exc.kind, **limits),
            error_details_pb2.RetryInfo(retry_delay=retry_delay(exc.retry_after)),
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=f"caller:{exc.caller}", description=f"{exc.kind} limit of the caller"
                    )
                ]
            ),
        )
    if isinstance(exc, RoleRequired):
        return _status(
            grpc.StatusCode.PERMISSION_DENIED,
            str(exc),
            _info(
                metering_service_pb2.ERROR_REASON_ROLE_REQUIRED,
                caller=exc.caller,
                method=exc.method,
                required_role=exc.role,
            ),
        )
    if isinstance(exc, MeterNotAllowed):
        return _status(
            grpc.StatusCode.PERMISSION_DENIED,
            str(exc),
            _info(metering_service_pb2.ERROR_REASON_METER_NOT_ALLOWED, caller=exc.caller, meter=exc.meter),
        )
    if isinstance(exc, CatalogReloaded):
        return _status(
            grpc.StatusCode.UNAVAILABLE,
            str(exc),
            _info(metering_service_pb2.ERROR_REASON_CATALOG_RELOADED, meter=exc.meter, price=exc.price),
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=0)),
        )
    if isinstance(exc, DatabaseUnavailable):
        return _status(
            grpc.StatusCode.UNAVAILABLE,
            "the ledger database is unavailable; retry with the same transaction id",
            _info(metering_service_pb2.ERROR_REASON_DATABASE_UNAVAILABLE),
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)),
        )
    if isinstance(exc, ShuttingDown):
        return _status(
            grpc.StatusCode.UNAVAILABLE,
            "this server is shutting down; retry (another replica will answer)",
            _info(metering_service_pb2.ERROR_REASON_SHUTTING_DOWN),
            error_details_pb2.RetryInfo(retry_delay=retry_delay(SHUTTING_DOWN_RETRY_SECONDS)),
        )
    log.error("unexpected error", exc_info=exc)
    return _status(grpc.StatusCode.INTERNAL, "internal error", _info(metering_service_pb2.ERROR_REASON_INTERNAL))
