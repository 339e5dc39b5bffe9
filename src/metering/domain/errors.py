"""Domain errors: what went wrong, in domain terms.

The API layer turns each into one gRPC status with rich details
(metering.api.errors); nothing below the API layer knows about gRPC. Errors
carry datetimes, not text: the API edge writes them (periods.rfc3339). Their
messages, which the API answers as the status message, write times the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from metering.domain.periods import BillingPeriod, rfc3339


class MeteringError(Exception):
    """Base of every refusal the service answers on purpose."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    # What is wrong, by its domain name (a command's or query's field, dotted for
    # nested ones, e.g. "properties.region"); metering.api.errors maps the names
    # that differ on the wire.
    field: str
    description: str


class InvalidArgument(MeteringError):
    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


class InvalidPageToken(InvalidArgument):
    def __init__(self, description: str) -> None:
        super().__init__([FieldViolation("page_token", description)])


class EventTooOld(InvalidArgument):
    """A new event older than the backfill window (a reused transaction id is
    judged first: a duplicate or a conflict, whatever its time)."""

    def __init__(self, description: str) -> None:
        super().__init__([FieldViolation("event_time", description)])


class NotFound(MeteringError):
    """An unknown customer, meter, price or plan."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind  # "customer", "meter", "price", "plan", "reservation", "event" or "invoice"
        self.name = name
        super().__init__(f"{kind} {name!r} not found")


class TransactionConflict(MeteringError):
    """The transaction id was already recorded with a different payload."""

    def __init__(self, transaction_id: str, fields: list[str], original_event_id: str) -> None:
        self.transaction_id = transaction_id
        self.fields = fields
        self.original_event_id = original_event_id
        super().__init__(
            f"transaction id {transaction_id!r} was already recorded with a different "
            f"{', '.join(fields)} (event {original_event_id})"
        )


class LimitExceeded(MeteringError):
    """The event would pass a hard limit; nothing was written."""

    def __init__(
        self,
        *,
        meter: str,
        plan: str,
        unit: str,
        limit: Decimal,
        available: Decimal,
        requested: Decimal,
        period_end: datetime | None,
    ) -> None:
        self.meter = meter
        self.plan = plan
        self.unit = unit
        self.limit = limit
        self.available = available
        self.requested = requested
        self.period_end = period_end  # None when the meter never resets
        super().__init__(
            f"meter {meter!r} has {available} {unit} available under plan {plan!r} (limit {limit}); "
            f"the event needs {requested}"
        )


class CreditsExhausted(MeteringError):
    """A prepaid plan's event costs more than the wallet credit that can pay
    for it (metering.domain.wallets); nothing was written."""

    def __init__(
        self, *, customer_id: str, meter: str, plan: str, currency: str, cost: Decimal, available: Decimal
    ) -> None:
        self.customer_id = customer_id
        self.meter = meter
        self.plan = plan
        self.currency = currency
        self.cost = cost
        self.available = available
        super().__init__(
            f"the event on meter {meter!r} costs {cost} {currency}; customer {customer_id!r} has "
            f"{available} {currency} of credit for it under prepaid plan {plan!r}"
        )


class BillingAnchorImmutable(MeteringError):
    def __init__(self, customer_id: str, stored: datetime) -> None:
        self.customer_id = customer_id
        self.stored = stored
        super().__init__(f"customer {customer_id!r} keeps its billing anchor {rfc3339(stored)}; it cannot change")


class DatabaseUnavailable(MeteringError):
    """The ledger database cannot be reached or did not answer in time."""


class CatalogReloaded(MeteringError):
    """The catalog was reloaded between an event's validation and its
    recording, and the meter or price the event names changed: nothing was
    written, and a retry is checked against the catalog now in force."""

    def __init__(self, meter: str, price: str) -> None:
        self.meter = meter
        self.price = price  # "" when the event named its meter
        super().__init__(
            "the catalog was reloaded during the call and changed "
            f"{f'price {price!r}' if price else f'meter {meter!r}'}; retry with the same transaction id"
        )


class ShuttingDown(MeteringError):
    """This server's drain has begun: it takes no new call (another replica will)."""


class PriceCurrencyMismatch(MeteringError):
    """A price bills in another currency than the customer's plan."""

    def __init__(self, price: str, price_currency: str, plan_currency: str) -> None:
        self.price = price
        self.price_currency = price_currency
        self.plan_currency = plan_currency
        super().__init__(f"price {price!r} bills in {price_currency}, the customer's plan in {plan_currency}")


class IdempotencyKeyConflict(MeteringError):
    """A grant, reservation or credit note id was used before with another
    payload (or, for a reservation, by a usage event)."""

    def __init__(self, kind: str, key: str, fields: list[str], *, used_by_event: bool = False) -> None:
        self.kind = kind  # "grant", "reservation" or "credit_note"
        self.key = key
        self.fields = fields
        self.used_by_event = used_by_event
        if used_by_event:
            message = f"{kind} id {key!r} is already the transaction id of a usage event"
        else:
            message = f"{kind} id {key!r} was already used with a different {', '.join(fields)}"
        super().__init__(message)


class ReservationStateError(MeteringError):
    """The reservation cannot take this transition (released, expired, committed)."""

    def __init__(self, reservation_id: str, status: str) -> None:
        self.reservation_id = reservation_id
        self.status = status
        super().__init__(f"reservation {reservation_id!r} is {status}")


class PeriodClosed(MeteringError):
    """The event's billing period is finalized: its invoice never changes."""

    def __init__(self, transaction_id: str, *, period: BillingPeriod, invoice_id: str) -> None:
        self.transaction_id = transaction_id
        self.start = period.start
        self.end = period.end
        self.invoice_id = invoice_id
        super().__init__(
            f"the event {transaction_id!r} belongs to the billing period {self.period_start} to {self.period_end}, "
            f"which is closed: its invoice {invoice_id} is final"
        )

    # The period's bounds as the wire writes them (ErrorInfo period_start, period_end).
    @property
    def period_start(self) -> str:
        return rfc3339(self.start)

    @property
    def period_end(self) -> str:
        return rfc3339(self.end)


class BeforeFirstPeriod(MeteringError):
    """The event's time is before the customer's billing anchor: no period of its own holds it."""

    def __init__(self, transaction_id: str, event_time: datetime, billing_anchor: datetime) -> None:
        self.transaction_id = transaction_id
        self.event_time = event_time
        self.billing_anchor = billing_anchor
        super().__init__(
            f"the event {transaction_id!r} at {rfc3339(event_time)} is before the customer's first billing period, "
            f"which starts at its billing anchor {rfc3339(billing_anchor)}"
        )


class Unauthenticated(MeteringError):
    """The call carries no credentials the service recognises."""

    def __init__(self, *, missing: bool) -> None:
        self.missing = missing  # False: a token was sent but is malformed or unknown
        super().__init__(
            "this service requires credentials: send `authorization: Bearer <token>` metadata"
            if missing
            else "the bearer token is not valid for this service"
        )


class RoleRequired(MeteringError):
    """The caller is known, but none of its roles allows the method."""

    def __init__(self, caller: str, method: str, role: str) -> None:
        self.caller = caller
        self.method = method
        self.role = role
        super().__init__(f"caller {caller!r} may not call {method}: it needs the {role!r} role")


class MeterNotAllowed(MeteringError):
    """The caller's credentials are restricted to other meters."""

    def __init__(self, caller: str, meter: str) -> None:
        self.caller = caller
        self.meter = meter  # empty: the request spans every meter
        super().__init__(
            f"caller {caller!r} may not use meter {meter!r}"
            if meter
            else f"caller {caller!r} is restricted to some meters: name a meter (this request spans every meter)"
        )


class TokenExpired(MeteringError):
    """The bearer token is known, but its expiry in the auth file has passed."""

    def __init__(self, caller: str, expires_at: datetime) -> None:
        self.caller = caller
        self.expires_at = expires_at
        super().__init__(f"the bearer token of caller {caller!r} expired at {self.expired_at}: ask for a new token")

    @property
    def expired_at(self) -> str:
        """The expiry as the wire has always written it (ErrorInfo expired_at):
        RFC 3339 with a +00:00 offset rather than Z, which callers already parse."""
        return self.expires_at.isoformat()


class RateLimited(MeteringError):
    """The caller is over its own limits (calls per second, or calls at once); nothing was done."""

    def __init__(
        self,
        caller: str,
        kind: str,
        retry_after: float,
        *,
        requests_per_second: float | None,
        burst: float | None,
        max_in_flight: int | None,
    ) -> None:
        self.caller = caller
        self.kind = kind  # "rate" or "concurrency" (metering.domain.rate_limits.LimitKind)
        self.retry_after = retry_after  # seconds
        self.requests_per_second = requests_per_second
        self.burst = burst
        self.max_in_flight = max_in_flight
        super().__init__(
            f"caller {caller!r} sent more than its {requests_per_second:g} calls per second (burst {burst:g}); "
            f"retry in {retry_after:.3f}s"
            if kind == "rate"
            else f"caller {caller!r} already has its {max_in_flight} calls in flight; retry when one has ended"
        )

    def waited(self, seconds: float) -> RateLimited:
        """The same refusal, answered `seconds` later: that much less to wait (at least 1 ms)."""
        return RateLimited(
            self.caller,
            self.kind,
            max(0.001, self.retry_after - seconds),
            requests_per_second=self.requests_per_second,
            burst=self.burst,
            max_in_flight=self.max_in_flight,
        )


class InvoiceNotFinalized(MeteringError):
    """The invoice of a period that is still gathering or in its grace: only a
    finalized invoice takes credit notes."""

    def __init__(self, invoice_id: str, period: BillingPeriod, status: str) -> None:
        self.invoice_id = invoice_id
        self.start = period.start
        self.end = period.end
        self.status = status  # "gathering" or "draft" (metering.domain.records)
        super().__init__(
            f"invoice {invoice_id} of the billing period {rfc3339(period.start)} to {rfc3339(period.end)} "
            f"is not finalized (the period is {status}): only a finalized invoice takes credit notes"
        )


class CreditExceedsInvoiced(MeteringError):
    """A credit note would credit more than was invoiced, on a line or on the
    whole invoice; nothing was written."""

    def __init__(
        self,
        invoice_id: str,
        *,
        meter_slug: str,  # "" with price_slug "": the invoice's total
        price_slug: str,
        invoiced: Decimal,
        credited: Decimal,  # by the credit notes issued before
        requested: Decimal,
        currency: str,
    ) -> None:
        self.invoice_id = invoice_id
        self.meter_slug = meter_slug
        self.price_slug = price_slug
        self.invoiced = invoiced
        self.credited = credited
        self.requested = requested
        self.currency = currency
        what = f"the line of meter {meter_slug!r} at price {price_slug!r}" if meter_slug else "the total"
        if credited >= invoiced:
            message = f"{what} of invoice {invoice_id} ({invoiced} {currency}) is credited in full: nothing is left"
        else:
            message = (
                f"{what} of invoice {invoice_id} is {invoiced} {currency}, of which {credited} {currency} is "
                f"credited already: a credit note of {requested} {currency} would credit more than was invoiced"
            )
        super().__init__(message)
