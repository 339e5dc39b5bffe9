"""Refusals as exceptions: the one place a gRPC status becomes a client error.

The service sends every refusal as a google.rpc.Status in the
`grpc-status-details-bin` trailer (or, for one event of a batch, inside the
batch's result), with an ErrorInfo whose reason says what happened and whose
metadata carries the figures (metering.api.errors builds them). Each reason is
decoded here, once, into an exception with typed fields: Decimal quantities,
datetimes, tuples of field names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, cast

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "metering.v1"
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One offending request field (google.rpc.BadRequest.FieldViolation)."""

    field: str  # dotted for nested fields, e.g. "properties.region" or "events[3].quantity"
    description: str


@dataclass(frozen=True, slots=True)
class ErrorDetails:
    """What a google.rpc.Status carries, unpacked: the raw detail messages stay available."""

    reason: str  # ErrorInfo.reason ("" without an ErrorInfo)
    metadata: Mapping[str, str]  # ErrorInfo.metadata
    field_violations: tuple[FieldViolation, ...]  # BadRequest
    retry_delay: float | None  # RetryInfo, seconds
    messages: Mapping[str, Message]  # every detail by type name ("ErrorInfo", "QuotaFailure", ...)


class MeteringError(Exception):
    """A call the service refused or could not answer: its code, message and decoded details."""

    def __init__(self, code: grpc.StatusCode, message: str, details: ErrorDetails | None = None) -> None:
        self.code = code
        self.message = message
        self.details = details if details is not None else _NO_DETAILS
        super().__init__(f"{code.name}: {message}")

    @property
    def reason(self) -> str:
        """The ErrorInfo reason (LIMIT_EXCEEDED, CUSTOMER_NOT_FOUND...), "" without one."""
        return self.details.reason

    @property
    def metadata(self) -> Mapping[str, str]:
        """The ErrorInfo metadata: the figures of the refusal, as sent."""
        return self.details.metadata


class InvalidRequest(MeteringError):
    """INVALID_ARGUMENT: malformed input (reason INVALID_ARGUMENT or INVALID_PAGE_TOKEN)."""

    @property
    def field_violations(self) -> tuple[FieldViolation, ...]:
        """The offending fields (google.rpc.BadRequest)."""
        return self.details.field_violations


class NotFound(MeteringError):
    """NOT_FOUND: an unknown customer, meter, price, plan, reservation, event or invoice."""

    def __init__(self, code: grpc.StatusCode, message: str, details: ErrorDetails, *, kind: str, name: str) -> None:
        super().__init__(code, message, details)
        self.kind = kind  # "customer", "meter", "price", "plan", "reservation", "event" or "invoice"
        self.name = name


class TransactionConflict(MeteringError):
    """ALREADY_EXISTS (TRANSACTION_ID_CONFLICT): the transaction id was recorded with another payload."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: ErrorDetails,
        *,
        transaction_id: str,
        conflicting_fields: tuple[str, ...],
        original_event_id: str,
    ) -> None:
        super().__init__(code, message, details)
        self.transaction_id = transaction_id
        self.conflicting_fields = conflicting_fields
        self.original_event_id = original_event_id


class IdempotencyKeyConflict(MeteringError):
    """ALREADY_EXISTS (IDEMPOTENCY_KEY_CONFLICT): a grant, reservation or credit note id reused with another
    payload."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: ErrorDetails,
        *,
        kind: str,
        key: str,
        conflicting_fields: tuple[str, ...],
    ) -> None:
        super().__init__(code, message, details)
        self.kind = kind  # "grant", "reservation" or "credit_note"
        self.key = key
        self.conflicting_fields = conflicting_fields


class LimitExceeded(MeteringError):
    """RESOURCE_EXHAUSTED (LIMIT_EXCEEDED): a hard limit would be passed; nothing was written."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: ErrorDetails,
        *,
        meter: str,
        plan: str,
        limit: Decimal,
        available: Decimal,
        requested: Decimal,
        period_end: datetime | None,
    ) -> None:
        super().__init__(code, message, details)
        self.meter = meter
        self.plan = plan
        self.limit = limit
        self.available = available
        self.requested = requested
        self.period_end = period_end  # None when the meter never resets


class CreditsExhausted(MeteringError):
    """RESOURCE_EXHAUSTED (CREDITS_EXHAUSTED): the customer's plan requires prepaid
    credit and the event costs more than the wallet credit that can pay for it;
    nothing was written. Top the wallet up (grant_wallet_credit) and retry."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: ErrorDetails,
        *,
        meter: str,
        plan: str,
        currency: str,
        cost: Decimal,
        available: Decimal,
    ) -> None:
        super().__init__(code, message, details)
        self.meter = meter
        self.plan = plan
        self.currency = currency
        self.cost = cost  # the event's exact marginal cost
        self.available = available  # the credit that could pay for it


class FailedPrecondition(MeteringError):
    """FAILED_PRECONDITION: the request conflicts with the stored state (see the subclasses)."""


class BillingAnchorImmutable(FailedPrecondition):
    """A customer's billing anchor is set once: another one was asked for."""

    def __init__(
        self, code: grpc.StatusCode, message: str, details: ErrorDetails, *, billing_anchor_time: datetime | None
    ) -> None:
        super().__init__(code, message, details)
        self.billing_anchor_time = billing_anchor_time


class PeriodClosed(FailedPrecondition):
    """The event's billing period is finalized: its invoice never changes."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: ErrorDetails,
        *,
        transaction_id: str,
        invoice_id: str,
        period_start: datetime | None,
        period_end: datetime | None,
    ) -> None:
        super().__init__(code, message, details)
        self.transaction_id = transaction_id
        self.invoice_id = invoice_id
        self.period_start = period_start
        self.period_end = period_end


class BeforeFirstPeriod(FailedPrecondition):
    """The event's time is before the customer's billing anchor (its first period)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: ErrorDetails,
        *,
        transaction_id: str,
        event_time: datetime | None,
        billing_anchor_time: datetime | None,
    ) -> None:
        super().__init__(code, message, details)
        self.transaction_id = transaction_id
        self.event_time = event_time
        self.billing_anchor_time = billing_anchor_time


class PriceCurrencyMismatch(FailedPrecondition):
    """The price's currency is not the plan's."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: ErrorDetails,
        *,
        price: str,
        price_currency: str,
        plan_currency: str,
    ) -> None:
        super().__init__(code, message, details)
        self.price = price
        self.price_currency = price_currency
        self.plan_currency = plan_currency


class InvoiceNotFinalized(FailedPrecondition):
    """INVOICE_NOT_FINALIZED: the invoice's period is still gathering or in its grace; only a
    finalized invoice takes credit notes."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: ErrorDetails,
        *,
        invoice_id: str,
        period_start: datetime | None,
        period_end: datetime | None,
        status: str,
    ) -> None:
        super().__init__(code, message, details)
        self.invoice_id = invoice_id
        self.period_start = period_start
        self.period_end = period_end
        self.status = status  # "gathering" or "draft"


class CreditNoteExceedsInvoiced(FailedPrecondition):
    """CREDIT_NOTE_EXCEEDS_INVOICED: the credit note would credit more than was invoiced on a line
    (meter and price set) or on the invoice's total (both empty); nothing was written."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: ErrorDetails,
        *,
        invoice_id: str,
        meter: str,
        price: str,
        invoiced: Decimal,
        credited: Decimal,
        requested: Decimal,
        currency: str,
    ) -> None:
        super().__init__(code, message, details)
        self.invoice_id = invoice_id
        self.meter = meter
        self.price = price
        self.invoiced = invoiced
        self.credited = credited  # by the credit notes issued before
        self.requested = requested
        self.currency = currency


class ReservationStateError(FailedPrecondition):
    """RESERVATION_EXPIRED, RESERVATION_RELEASED or RESERVATION_COMMITTED."""

    def __init__(
        self, code: grpc.StatusCode, message: str, details: ErrorDetails, *, reservation_id: str, status: str
    ) -> None:
        super().__init__(code, message, details)
        self.reservation_id = reservation_id
        self.status = status  # "expired", "released" or "committed"


class Unauthenticated(MeteringError):
    """UNAUTHENTICATED: no credentials (CREDENTIALS_MISSING), unknown ones (CREDENTIALS_INVALID)
    or a token past its expiry date (CREDENTIALS_EXPIRED)."""

    @property
    def missing(self) -> bool:
        """True when no credentials were sent at all."""
        return self.reason == "CREDENTIALS_MISSING"


class PermissionDenied(MeteringError):
    """PERMISSION_DENIED: the caller's roles (ROLE_REQUIRED) or meters (METER_NOT_ALLOWED) do not allow this."""

    @property
    def caller(self) -> str:
        """Who the service took the caller for (its name in the callers file)."""
        return self.metadata.get("caller", "")


class RoleRequired(PermissionDenied):
    """The caller lacks the role the method needs (`required_role`)."""

    def __init__(
        self, code: grpc.StatusCode, message: str, details: ErrorDetails, *, method: str, required_role: str
    ) -> None:
        super().__init__(code, message, details)
        self.method = method
        self.required_role = required_role


class MeterNotAllowed(PermissionDenied):
    """The caller may not use this meter."""

    def __init__(self, code: grpc.StatusCode, message: str, details: ErrorDetails, *, meter: str) -> None:
        super().__init__(code, message, details)
        self.meter = meter  # empty: the request spanned every meter


class RateLimited(MeteringError):
    """RESOURCE_EXHAUSTED with RATE_LIMITED: this caller is past its own rate or in-flight limit
    (not the customer's allowance). Nothing was written; the clients resend the same request
    after `retry_after` while attempts and time are left, and raise this after the last one."""

    def __init__(self, code: grpc.StatusCode, message: str, details: ErrorDetails, *, limit: str) -> None:
        super().__init__(code, message, details)
        self.limit = limit  # "rate" or "concurrency"

    @property
    def retry_after(self) -> float | None:
        """Seconds the service asked to wait before trying again (RetryInfo), if it said."""
        return self.details.retry_delay


class Unavailable(MeteringError):
    """The service did not answer: UNAVAILABLE (reason DATABASE_UNAVAILABLE, CATALOG_RELOADED or
    SHUTTING_DOWN, or no connection), DEADLINE_EXCEEDED or CANCELLED, after the last retry
    (`attempts` calls were made). The request may or may not have been carried out: send it again
    with the same ids."""

    def __init__(
        self, code: grpc.StatusCode, message: str, details: ErrorDetails | None = None, *, attempts: int = 1
    ) -> None:
        super().__init__(code, message, details)
        self.attempts = attempts


class Unreachable(Unavailable):
    """UNAVAILABLE before any request was sent: no connection to the service could be made
    (nothing listens, the name does not resolve...). Raised at once, without retries, by a
    client that does not wait for the service (`wait_for_ready=False`, the default); its text
    says where and why: `cannot reach metering at 127.0.0.1:50051: connection refused`."""

    def __init__(self, target: str, cause: str, *, attempts: int = 1) -> None:
        message = f"cannot reach metering at {target}: {cause}"
        super().__init__(grpc.StatusCode.UNAVAILABLE, message, attempts=attempts)
        self.target = target
        self.cause = cause
        self.args = (message,)  # str(error) is the sentence alone

    def __str__(self) -> str:
        """The sentence: `cannot reach metering at TARGET: CAUSE`."""
        return self.message


# What gRPC core says when a fail-fast call meets a channel that could not connect
# (TRANSIENT_FAILURE): the pick fails with one of these, before anything is sent.
_NOT_CONNECTED = ("failed to connect to all addresses", "errors resolving", "dns resolution failed")
# The cause in a few words, from the OS error gRPC reports last.
_CAUSES = (
    ("connection refused", "connection refused"),
    ("errors resolving", "the name does not resolve"),
    ("dns resolution failed", "the name does not resolve"),
    ("domain name not found", "the name does not resolve"),
    ("no route to host", "no route to host"),
    ("network is unreachable", "network is unreachable"),
    ("timed out", "connection timed out"),
    ("deadline exceeded", "connection timed out"),
    ("handshake", "TLS handshake failed"),
    ("ssl", "TLS handshake failed"),
    ("connection reset", "connection reset"),
)


def unreachable_cause(code: grpc.StatusCode, details: str) -> str | None:
    """Why no connection could be made, when a failed call says so (else None).

    A fail-fast call on a channel in TRANSIENT_FAILURE fails with UNAVAILABLE and gRPC's own
    text ("failed to connect to all addresses; last error: ... Connection refused"); a status
    the service sent, or a connection lost mid-call, says something else and may be retried.
    """
    text = details.lower()
    if code != grpc.StatusCode.UNAVAILABLE or not text.startswith(_NOT_CONNECTED):
        return None
    last = text.rpartition("last error:")[2]
    for needle, cause in _CAUSES:
        if needle in last:
            return cause
    # Else the OS's or gRPC's own words: the last part of "UNKNOWN: ipv4:HOST:PORT: ...: <cause>".
    return details.rpartition("last error:")[2].rpartition(": ")[2].strip() or details


def exhausted(error: MeteringError, attempts: int) -> MeteringError:
    """What a caller gets when the last retry of `error` is spent: a rate-limit refusal as
    itself (nothing was written), anything else as Unavailable (the outcome is unknown)."""
    if isinstance(error, RateLimited):
        return error
    return Unavailable(error.code, error.message, error.details, attempts=attempts)


class InternalError(MeteringError):
    """INTERNAL: a bug in the service; its log has the details."""


_NO_DETAILS = ErrorDetails(reason="", metadata={}, field_violations=(), retry_delay=None, messages={})

# The detail types the service attaches (metering.api.errors.DETAIL_TYPES).
_DETAIL_TYPES = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.QuotaFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.RetryInfo,
)


def unpack_details(status: status_pb2.Status) -> ErrorDetails:
    """The details a google.rpc.Status carries, unpacked (ErrorInfo, BadRequest, RetryInfo...)."""
    messages: dict[str, Message] = {}
    for packed in status.details:
        for kind in _DETAIL_TYPES:
            if packed.Is(kind.DESCRIPTOR):
                message = kind()
                packed.Unpack(message)
                messages[kind.DESCRIPTOR.name] = message
    info = messages.get("ErrorInfo")
    bad_request = messages.get("BadRequest")
    retry = messages.get("RetryInfo")
    return ErrorDetails(
        reason=info.reason if isinstance(info, error_details_pb2.ErrorInfo) else "",
        metadata=dict(info.metadata) if isinstance(info, error_details_pb2.ErrorInfo) else {},
        field_violations=tuple(FieldViolation(v.field, v.description) for v in bad_request.field_violations)
        if isinstance(bad_request, error_details_pb2.BadRequest)
        else (),
        retry_delay=retry.retry_delay.ToTimedelta().total_seconds()
        if isinstance(retry, error_details_pb2.RetryInfo) and retry.HasField("retry_delay")
        else None,
        messages=messages,
    )


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        return Decimal(0)


def _time(text: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _fields(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.split(",") if name)


_Decoder = Callable[[grpc.StatusCode, str, ErrorDetails], MeteringError]


def _not_found(kind: str) -> _Decoder:
    return lambda code, message, d: NotFound(code, message, d, kind=kind, name=d.metadata.get(kind, ""))


def _reservation_state(code: grpc.StatusCode, message: str, d: ErrorDetails) -> MeteringError:
    return ReservationStateError(
        code, message, d, reservation_id=d.metadata.get("reservation_id", ""), status=d.metadata.get("status", "")
    )


def _idempotency_conflict(code: grpc.StatusCode, message: str, d: ErrorDetails) -> MeteringError:
    kind = next((k for k in ("grant", "credit_note") if f"{k}_id" in d.metadata), "reservation")
    return IdempotencyKeyConflict(
        code,
        message,
        d,
        kind=kind,
        key=d.metadata.get(f"{kind}_id", ""),
        conflicting_fields=_fields(d.metadata.get("conflicting_fields", "")),
    )


# Every ErrorInfo reason the service sends (metering.api.errors.to_rpc_status), decoded.
_BY_REASON: dict[str, _Decoder] = {
    "INVALID_ARGUMENT": InvalidRequest,
    "INVALID_PAGE_TOKEN": InvalidRequest,
    "CUSTOMER_NOT_FOUND": _not_found("customer"),
    "METER_NOT_FOUND": _not_found("meter"),
    "PRICE_NOT_FOUND": _not_found("price"),
    "PLAN_NOT_FOUND": _not_found("plan"),
    "RESERVATION_NOT_FOUND": _not_found("reservation"),
    "EVENT_NOT_FOUND": _not_found("event"),
    "INVOICE_NOT_FOUND": _not_found("invoice"),
    "TRANSACTION_ID_CONFLICT": lambda code, message, d: TransactionConflict(
        code,
        message,
        d,
        transaction_id=d.metadata.get("transaction_id", ""),
        conflicting_fields=_fields(d.metadata.get("conflicting_fields", "")),
        original_event_id=d.metadata.get("original_event_id", ""),
    ),
    "IDEMPOTENCY_KEY_CONFLICT": _idempotency_conflict,
    "LIMIT_EXCEEDED": lambda code, message, d: LimitExceeded(
        code,
        message,
        d,
        meter=d.metadata.get("meter", ""),
        plan=d.metadata.get("plan", ""),
        limit=_decimal(d.metadata.get("limit", "0")),
        available=_decimal(d.metadata.get("available", "0")),
        requested=_decimal(d.metadata.get("requested", "0")),
        period_end=_time(d.metadata.get("period_end", "")),
    ),
    "CREDITS_EXHAUSTED": lambda code, message, d: CreditsExhausted(
        code,
        message,
        d,
        meter=d.metadata.get("meter", ""),
        plan=d.metadata.get("plan", ""),
        currency=d.metadata.get("currency", ""),
        cost=_decimal(d.metadata.get("cost", "0")),
        available=_decimal(d.metadata.get("available", "0")),
    ),
    "BILLING_ANCHOR_IMMUTABLE": lambda code, message, d: BillingAnchorImmutable(
        code, message, d, billing_anchor_time=_time(d.metadata.get("billing_anchor_time", ""))
    ),
    "RESERVATION_EXPIRED": _reservation_state,
    "RESERVATION_RELEASED": _reservation_state,
    "RESERVATION_COMMITTED": _reservation_state,
    "PERIOD_CLOSED": lambda code, message, d: PeriodClosed(
        code,
        message,
        d,
        transaction_id=d.metadata.get("transaction_id", ""),
        invoice_id=d.metadata.get("invoice_id", ""),
        period_start=_time(d.metadata.get("period_start", "")),
        period_end=_time(d.metadata.get("period_end", "")),
    ),
    "BEFORE_FIRST_PERIOD": lambda code, message, d: BeforeFirstPeriod(
        code,
        message,
        d,
        transaction_id=d.metadata.get("transaction_id", ""),
        event_time=_time(d.metadata.get("event_time", "")),
        billing_anchor_time=_time(d.metadata.get("billing_anchor_time", "")),
    ),
    "PRICE_CURRENCY_MISMATCH": lambda code, message, d: PriceCurrencyMismatch(
        code,
        message,
        d,
        price=d.metadata.get("price", ""),
        price_currency=d.metadata.get("price_currency", ""),
        plan_currency=d.metadata.get("plan_currency", ""),
    ),
    "INVOICE_NOT_FINALIZED": lambda code, message, d: InvoiceNotFinalized(
        code,
        message,
        d,
        invoice_id=d.metadata.get("invoice_id", ""),
        period_start=_time(d.metadata.get("period_start", "")),
        period_end=_time(d.metadata.get("period_end", "")),
        status=d.metadata.get("status", ""),
    ),
    "CREDIT_NOTE_EXCEEDS_INVOICED": lambda code, message, d: CreditNoteExceedsInvoiced(
        code,
        message,
        d,
        invoice_id=d.metadata.get("invoice_id", ""),
        meter=d.metadata.get("meter", ""),
        price=d.metadata.get("price", ""),
        invoiced=_decimal(d.metadata.get("invoiced", "0")),
        credited=_decimal(d.metadata.get("credited", "0")),
        requested=_decimal(d.metadata.get("requested", "0")),
        currency=d.metadata.get("currency", ""),
    ),
    "CREDENTIALS_MISSING": Unauthenticated,
    "CREDENTIALS_INVALID": Unauthenticated,
    "CREDENTIALS_EXPIRED": Unauthenticated,
    "RATE_LIMITED": lambda code, message, d: RateLimited(code, message, d, limit=d.metadata.get("limit", "")),
    "ROLE_REQUIRED": lambda code, message, d: RoleRequired(
        code, message, d, method=d.metadata.get("method", ""), required_role=d.metadata.get("required_role", "")
    ),
    "METER_NOT_ALLOWED": lambda code, message, d: MeterNotAllowed(code, message, d, meter=d.metadata.get("meter", "")),
    "DATABASE_UNAVAILABLE": Unavailable,
    "CATALOG_RELOADED": Unavailable,
    "SHUTTING_DOWN": Unavailable,  # the server's drain began: nothing was done, retry (another replica)
    "INTERNAL": InternalError,
}

# A status without a known reason (from a proxy, or a reason newer than this client).
_BY_CODE: dict[grpc.StatusCode, _Decoder] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.CANCELLED: Unavailable,
    grpc.StatusCode.INTERNAL: InternalError,
}
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def error_from_status(status: status_pb2.Status) -> MeteringError:
    """The exception for a google.rpc.Status: a call's, or one event's in a batch."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return decode(code, status.message, unpack_details(status))


def decode(code: grpc.StatusCode, message: str, details: ErrorDetails) -> MeteringError:
    """The exception for a code, message and details: by ErrorInfo reason, else by code."""
    decoder = _BY_REASON.get(details.reason) or _BY_CODE.get(code) or MeteringError
    return decoder(code, message, details)


class _FailedCall(Protocol):
    """What a failed call exposes, in grpcio (grpc.Call) and grpc.aio (AioRpcError) alike."""

    def code(self) -> grpc.StatusCode: ...
    def details(self) -> str | None: ...
    def trailing_metadata(self) -> Any: ...


def error_from_rpc(error: grpc.RpcError, *, target: str | None = None) -> MeteringError:
    """The exception for a failed call (sync or grpc.aio), from its status and trailer.

    With the call's `target`, a call that never reached the service is `Unreachable`.
    """
    if not callable(getattr(error, "code", None)):
        return MeteringError(grpc.StatusCode.UNKNOWN, str(error))
    call = cast(_FailedCall, error)
    code = call.code()
    if target is not None:
        cause = unreachable_cause(code, call.details() or "")
        if cause is not None:
            return Unreachable(target, cause)
    details = _NO_DETAILS
    for key, value in call.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                break
            # The trailer must describe this very status (a proxy may have replaced it).
            if status.code == code.value[0]:
                details = unpack_details(status)
            break
    return decode(code, call.details() or "", details)
