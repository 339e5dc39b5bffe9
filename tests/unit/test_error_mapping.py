"""The status of every domain error (metering.domain.errors -> metering.api.errors), without a database.

One case per domain error class (and per variant that maps differently): the
gRPC code, the ErrorInfo reason, domain and metadata, and the detail its code
calls for. A test also checks that every subclass of MeteringError has a case,
so a new domain error cannot reach the wire unmapped (as INTERNAL).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from metering.api.errors import DOMAIN, status_details, to_rpc_status, to_status
from metering.domain import errors
from metering.domain.periods import BillingPeriod
from tests.support import error_info, violations


@dataclass(frozen=True)
class Case:
    error: errors.MeteringError
    code: grpc.StatusCode
    reason: str
    metadata: dict[str, str]
    # Checks of the detail (besides ErrorInfo) the code calls for, by type name.
    details: dict[str, Callable[[Message], bool]] = field(default_factory=dict)
    # The status message, when it is neither the error's text nor the code's fixed one (MESSAGES).
    message: str | None = None


def bad_request(*fields: str) -> dict[str, Callable[[Message], bool]]:
    def check(detail: Message) -> bool:
        assert isinstance(detail, error_details_pb2.BadRequest)
        return [v.field for v in detail.field_violations] == list(fields) and all(
            v.description for v in detail.field_violations
        )

    return {"BadRequest": check}


def resource(resource_type: str, name: str) -> dict[str, Callable[[Message], bool]]:
    def check(detail: Message) -> bool:
        assert isinstance(detail, error_details_pb2.ResourceInfo)
        return (detail.resource_type, detail.resource_name) == (resource_type, name) and bool(detail.description)

    return {"ResourceInfo": check}


def precondition(kind: str, subject: str) -> dict[str, Callable[[Message], bool]]:
    def check(detail: Message) -> bool:
        assert isinstance(detail, error_details_pb2.PreconditionFailure)
        [violation] = detail.violations
        return (violation.type, violation.subject) == (kind, subject) and bool(violation.description)

    return {"PreconditionFailure": check}


def quota(subject: str) -> dict[str, Callable[[Message], bool]]:
    def check(detail: Message) -> bool:
        assert isinstance(detail, error_details_pb2.QuotaFailure)
        [violation] = detail.violations
        return violation.subject == subject and bool(violation.description)

    return {"QuotaFailure": check}


def retry_after(seconds: float) -> dict[str, Callable[[Message], bool]]:
    def check(detail: Message) -> bool:
        assert isinstance(detail, error_details_pb2.RetryInfo)
        return bool(detail.retry_delay.ToTimedelta().total_seconds() == seconds)

    return {"RetryInfo": check}


NOT_FOUND_TYPES = {
    "customer": "metering.v1.Customer",
    "meter": "metering.v1.Meter",
    "price": "metering.v1.Price",
    "plan": "metering.v1.Plan",
    "reservation": "metering.v1.Reservation",
    "event": "metering.v1.UsageEvent",
    "invoice": "metering.v1.Invoice",
}

CASES: dict[str, Case] = {
    "InvalidArgument": Case(
        errors.InvalidArgument(
            [errors.FieldViolation("quantity", "not a decimal"), errors.FieldViolation("properties.a", "too long")]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        {},
        bad_request("quantity", "properties.a"),
    ),
    "InvalidPageToken": Case(
        errors.InvalidPageToken("the token is not for this query"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        {},
        bad_request("page_token"),
    ),
    "EventTooOld": Case(
        errors.EventTooOld("older than the backfill window"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        {},
        bad_request("event_time"),
    ),
    **{
        f"NotFound[{kind}]": Case(
            errors.NotFound(kind, f"the-{kind}"),
            grpc.StatusCode.NOT_FOUND,
            f"{'EVENT' if kind == 'event' else kind.upper()}_NOT_FOUND",
            {kind: f"the-{kind}"},
            resource(resource_type, f"the-{kind}"),
        )
        for kind, resource_type in NOT_FOUND_TYPES.items()
    },
    "TransactionConflict": Case(
        errors.TransactionConflict("txn-1", ["quantity", "meter"], "0190-event"),
        grpc.StatusCode.ALREADY_EXISTS,
        "TRANSACTION_ID_CONFLICT",
        {"transaction_id": "txn-1", "conflicting_fields": "quantity,meter", "original_event_id": "0190-event"},
    ),
    "LimitExceeded": Case(
        errors.LimitExceeded(
            meter="tokens",
            plan="limited",
            unit="token",
            limit=Decimal("100"),
            available=Decimal("2.50"),
            requested=Decimal("3.000"),
            period_end=datetime(2026, 12, 1, tzinfo=UTC),
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "LIMIT_EXCEEDED",
        {
            "meter": "tokens",
            "plan": "limited",
            "limit": "100",
            "available": "2.5",  # normalised, as quantities are on the wire
            "requested": "3",
            "period_end": "2026-12-01T00:00:00Z",
        },
        quota("meter:tokens"),
    ),
    "CreditsExhausted": Case(
        errors.CreditsExhausted(
            customer_id="acme",
            meter="tokens",
            plan="prepaid",
            currency="USD",
            cost=Decimal("0.0150"),
            available=Decimal("0.01"),
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "CREDITS_EXHAUSTED",
        {"meter": "tokens", "plan": "prepaid", "currency": "USD", "cost": "0.015", "available": "0.01"},
        quota("wallet:acme"),
    ),
    "BillingAnchorImmutable": Case(
        errors.BillingAnchorImmutable("acme", datetime(2026, 1, 1, tzinfo=UTC)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "BILLING_ANCHOR_IMMUTABLE",
        {"billing_anchor_time": "2026-01-01T00:00:00Z"},
        precondition("BILLING_ANCHOR_IMMUTABLE", "customer:acme"),
    ),
    "DatabaseUnavailable": Case(
        errors.DatabaseUnavailable("connection refused"),
        grpc.StatusCode.UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
        {},
        retry_after(1),
    ),
    "ShuttingDown": Case(
        errors.ShuttingDown("this server is shutting down"),
        grpc.StatusCode.UNAVAILABLE,
        "SHUTTING_DOWN",
        {},
        retry_after(0.1),
        message="this server is shutting down; retry (another replica will answer)",
    ),
    "CatalogReloaded": Case(
        errors.CatalogReloaded("tokens", "tokens_premium"),
        grpc.StatusCode.UNAVAILABLE,
        "CATALOG_RELOADED",
        {"meter": "tokens", "price": "tokens_premium"},
        retry_after(0),
        message="the catalog was reloaded during the call and changed price 'tokens_premium'; "
        "retry with the same transaction id",
    ),
    "PriceCurrencyMismatch": Case(
        errors.PriceCurrencyMismatch("tokens_eur", "EUR", "USD"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PRICE_CURRENCY_MISMATCH",
        {"price": "tokens_eur", "price_currency": "EUR", "plan_currency": "USD"},
    ),
    "IdempotencyKeyConflict[grant]": Case(
        errors.IdempotencyKeyConflict("grant", "g-1", ["quantity"]),
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_CONFLICT",
        {"grant_id": "g-1", "conflicting_fields": "quantity"},
    ),
    "IdempotencyKeyConflict[reservation used by an event]": Case(
        errors.IdempotencyKeyConflict("reservation", "r-1", [], used_by_event=True),
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_CONFLICT",
        {"reservation_id": "r-1", "conflicting_fields": ""},
    ),
    **{
        f"ReservationStateError[{status}]": Case(
            errors.ReservationStateError("r-1", status),
            grpc.StatusCode.FAILED_PRECONDITION,
            f"RESERVATION_{status.upper()}",
            {"reservation_id": "r-1", "status": status},
        )
        for status in ("expired", "released", "committed")
    },
    "PeriodClosed": Case(
        errors.PeriodClosed(
            "txn-1",
            period=BillingPeriod(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)),
            invoice_id="inv-1",
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PERIOD_CLOSED",
        {
            "transaction_id": "txn-1",
            "invoice_id": "inv-1",
            "period_start": "2026-10-01T00:00:00Z",
            "period_end": "2026-11-01T00:00:00Z",
        },
        precondition("PERIOD_CLOSED", "invoice:inv-1"),
    ),
    "BeforeFirstPeriod": Case(
        errors.BeforeFirstPeriod(
            "txn-1", datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "BEFORE_FIRST_PERIOD",
        {
            "transaction_id": "txn-1",
            "event_time": "2025-12-31T23:59:59Z",
            "billing_anchor_time": "2026-01-01T00:00:00Z",
        },
    ),
    "IdempotencyKeyConflict[credit_note]": Case(
        errors.IdempotencyKeyConflict("credit_note", "cn-1", ["memo", "lines"]),
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_CONFLICT",
        {"credit_note_id": "cn-1", "conflicting_fields": "memo,lines"},
    ),
    "InvoiceNotFinalized": Case(
        errors.InvoiceNotFinalized(
            "inv-1", BillingPeriod(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)), "draft"
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVOICE_NOT_FINALIZED",
        {
            "invoice_id": "inv-1",
            "period_start": "2026-10-01T00:00:00Z",
            "period_end": "2026-11-01T00:00:00Z",
            "status": "draft",
        },
        precondition("INVOICE_NOT_FINALIZED", "invoice:inv-1"),
    ),
    "CreditExceedsInvoiced[line]": Case(
        errors.CreditExceedsInvoiced(
            "inv-1",
            meter_slug="tokens",
            price_slug="tokens_premium",
            invoiced=Decimal("10.00"),
            credited=Decimal("4.00"),
            requested=Decimal("6.50"),
            currency="USD",
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CREDIT_NOTE_EXCEEDS_INVOICED",
        {
            "invoice_id": "inv-1",
            "meter": "tokens",
            "price": "tokens_premium",
            "invoiced": "10",
            "credited": "4",
            "requested": "6.5",
            "currency": "USD",
        },
        precondition("CREDIT_NOTE_EXCEEDS_INVOICED", "invoice:inv-1"),
    ),
    "CreditExceedsInvoiced[invoice, in full]": Case(
        errors.CreditExceedsInvoiced(
            "inv-1",
            meter_slug="",
            price_slug="",
            invoiced=Decimal("10.00"),
            credited=Decimal("10.00"),
            requested=Decimal("0"),
            currency="USD",
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CREDIT_NOTE_EXCEEDS_INVOICED",
        {
            "invoice_id": "inv-1",
            "meter": "",
            "price": "",
            "invoiced": "10",
            "credited": "10",
            "requested": "0",
            "currency": "USD",
        },
        precondition("CREDIT_NOTE_EXCEEDS_INVOICED", "invoice:inv-1"),
    ),
    "Unauthenticated[missing]": Case(
        errors.Unauthenticated(missing=True), grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_MISSING", {}
    ),
    "Unauthenticated[invalid]": Case(
        errors.Unauthenticated(missing=False), grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_INVALID", {}
    ),
    "TokenExpired": Case(
        errors.TokenExpired("ingest", datetime(2026, 1, 1, tzinfo=UTC)),
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_EXPIRED",
        {"caller": "ingest", "expired_at": "2026-01-01T00:00:00+00:00"},
    ),
    "RateLimited[rate]": Case(
        errors.RateLimited("flooder", "rate", 2.0, requests_per_second=100.0, burst=50.0, max_in_flight=None),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        {"caller": "flooder", "limit": "rate", "requests_per_second": "100", "burst": "50"},
        {**retry_after(2), **quota("caller:flooder")},
    ),
    "RateLimited[concurrency]": Case(
        errors.RateLimited("flooder", "concurrency", 1.0, requests_per_second=None, burst=None, max_in_flight=4),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        {"caller": "flooder", "limit": "concurrency", "max_in_flight": "4"},
        {**retry_after(1), **quota("caller:flooder")},
    ),
    "RoleRequired": Case(
        errors.RoleRequired("billing-ui", "/metering.v1.MeteringService/RecordUsage", "recorder"),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_REQUIRED",
        {"caller": "billing-ui", "method": "/metering.v1.MeteringService/RecordUsage", "required_role": "recorder"},
    ),
    "MeterNotAllowed": Case(
        errors.MeterNotAllowed("ingest", "tokens"),
        grpc.StatusCode.PERMISSION_DENIED,
        "METER_NOT_ALLOWED",
        {"caller": "ingest", "meter": "tokens"},
    ),
    "MeterNotAllowed[every meter]": Case(
        errors.MeterNotAllowed("ingest", ""),
        grpc.StatusCode.PERMISSION_DENIED,
        "METER_NOT_ALLOWED",
        {"caller": "ingest", "meter": ""},
    ),
}


# The codes whose message is not the error's own text.
MESSAGES = {
    grpc.StatusCode.INVALID_ARGUMENT: "invalid request: {error}",
    grpc.StatusCode.UNAVAILABLE: "the ledger database is unavailable; retry with the same transaction id",
}


def subclasses(cls: type) -> set[type]:
    found: set[type] = set(cls.__subclasses__())
    for sub in list(found):
        found |= subclasses(sub)
    return found


def test_every_domain_error_has_a_case() -> None:
    covered = {type(case.error) for case in CASES.values()}
    assert subclasses(errors.MeteringError) <= covered, subclasses(errors.MeteringError) - covered


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_status_of_each_domain_error(name: str) -> None:
    case = CASES[name]
    status = to_rpc_status(case.error)
    assert status.code == getattr(code_pb2, case.code.name)
    expected = case.message or MESSAGES.get(case.code, str(case.error)).format(error=case.error)
    assert status.message == expected
    info = error_info(status)
    assert (info.reason, info.domain, dict(info.metadata)) == (case.reason, DOMAIN, case.metadata)
    details = status_details(status)
    # ErrorInfo and exactly the details the case names: nothing else travels.
    assert set(details) == {"ErrorInfo", *case.details}
    for kind, check in case.details.items():
        assert check(details[kind]), details[kind]
    if case.code == grpc.StatusCode.INVALID_ARGUMENT:
        assert violations(status)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_grpc_status_carries_the_same_details_in_its_trailer(name: str) -> None:
    case = CASES[name]
    answer = to_status(case.error)
    assert answer.code == case.code
    trailer = dict(answer.trailing_metadata)
    assert status_pb2.Status.FromString(trailer.pop("grpc-status-details-bin")) == to_rpc_status(case.error)
    # A rate-limit refusal also tells gRPC retry policies when to retry (RetryInfo's delay, in ms).
    if isinstance(case.error, errors.RateLimited):
        assert trailer.pop("grpc-retry-pushback-ms") == str(int(case.error.retry_after * 1000))
    assert trailer == {}


def test_an_unexpected_exception_is_internal_without_its_text(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="metering.api.errors"):
        status = to_rpc_status(KeyError("secret internal detail"))
    assert status.code == code_pb2.INTERNAL
    assert status.message == "internal error"
    assert "secret" not in str(status)
    assert error_info(status).reason == "INTERNAL"
    assert set(status_details(status)) == {"ErrorInfo"}
    # The traceback goes to the server log only.
    assert any(record.exc_info for record in caplog.records)


def test_the_database_outage_message_says_to_retry() -> None:
    status = to_rpc_status(errors.DatabaseUnavailable("asyncpg: connection refused to 10.0.0.1"))
    assert "10.0.0.1" not in status.message  # no internal address leaks
    assert "retry" in status.message
