"""The service of grants (credits) and reservations (holds): no gRPC, no SQL.

Grants raise a meter's allowance while active; reservations hold units of a
SUM meter before expensive work and are committed (recorded as usage) or
released. Every decision runs in the ledger under the counter row's lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from metering.domain import limits
from metering.domain.catalog import Meter
from metering.domain.decimals import ZERO
from metering.domain.errors import FieldViolation, InvalidArgument, NotFound
from metering.domain.periods import Period
from metering.domain.records import GrantRecord, ReservationRecord, StoredEvent
from metering.domain.terms import MeterBalance, PlanTerms
from metering.domain.usage import CounterKey
from metering.ledger.customers import CustomerStore
from metering.ledger.entitlements import EntitlementStore
from metering.services.catalog import Catalogs
from metering.services.usage import MeterGuard, allow_any_meter, require_customer, utc_now


@dataclass(frozen=True, slots=True)
class GrantCommand:
    """A GrantCredits request, checked."""

    customer_id: str
    meter: Meter
    quantity: Decimal
    grant_id: str
    effective_time: datetime | None  # None: now
    expire_time: datetime | None
    expire_at_period_end: bool
    reason: str


@dataclass(frozen=True, slots=True)
class GrantView:
    """A grant as ListGrants and GrantCredits show it: with what remains of it, and whether it is active."""

    grant: GrantRecord
    remaining: Decimal
    active: bool


class GrantAnswer(NamedTuple):
    """What GrantCredits answers: the grant, and whether the call was a replay."""

    view: GrantView  # the grant as stored (the first call's, for a replay), with what remains of it
    duplicate: bool


@dataclass(frozen=True, slots=True)
class ReserveCommand:
    """A Reserve request, checked."""

    customer_id: str
    meter: Meter
    quantity: Decimal
    reservation_id: str
    ttl: timedelta


@dataclass(frozen=True, slots=True)
class CommitCommand:
    """A CommitReservation request, checked."""

    customer_id: str
    reservation_id: str
    quantity: Decimal | None  # None: all of the hold
    properties: dict[str, str]


@dataclass(frozen=True, slots=True)
class ReservationResult:
    """What a reservation call answers: the reservation, its status, and the meter's balance."""

    reservation: ReservationRecord
    status: str  # as the caller sees it at the decision: held, committed, released or expired
    duplicate: bool
    balance: MeterBalance
    event: StoredEvent | None = None  # for a commit


class Entitlements:
    """Grants (credits) and reservations (holds) for callers: finds the customer's plan terms and
    period, then lets the ledger decide under the counter's lock. Idempotent on the grant or
    reservation id: a replay answers the first call's outcome."""

    def __init__(
        self,
        catalogs: Catalogs,
        ledger: CustomerStore,
        holds: EntitlementStore,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._catalogs = catalogs
        self._ledger = ledger
        self._holds = holds
        self._clock = clock

    # -- grants -------------------------------------------------------------------

    async def grant_credits(self, command: GrantCommand) -> GrantAnswer:
        customer = await require_customer(self._ledger, command.customer_id)
        now = self._clock()
        effective = command.effective_time or now
        expires = command.expire_time
        if command.expire_at_period_end:
            expires = self._catalogs.current.book.for_customer(customer, command.meter).period_at(effective).end
            if expires is None:
                raise InvalidArgument(
                    [FieldViolation("expire_at_period_end", f"meter {command.meter.slug!r} never resets")]
                )
        if expires is not None and expires <= effective:
            raise InvalidArgument([FieldViolation("expire_time", "must be after effective_time")])
        record = GrantRecord(
            grant_id=command.grant_id,
            customer_id=command.customer_id,
            meter_slug=command.meter.slug,
            quantity=command.quantity,
            effective_at=effective,
            expires_at=expires,
            reason=command.reason,
            created_at=now,
        )
        stored, duplicate = await self._holds.grant(record, effective_given=command.effective_time is not None)
        views = await self.list_grants(command.customer_id, command.meter, include_expired=True)
        return GrantAnswer(next(v for v in views if v.grant.grant_id == stored.grant_id), duplicate)

    async def list_grants(self, customer_id: str, meter: Meter | None, *, include_expired: bool) -> list[GrantView]:
        loaded = self._catalogs.current  # the whole call's catalog
        customer = await require_customer(self._ledger, customer_id)
        loaded.catalog.plan(customer.plan_slug)  # NotFound even when the customer has no grants
        now = self._clock()
        grants = await self._holds.list_grants(customer_id, meter.slug if meter else None)
        by_meter: dict[str, list[GrantRecord]] = {}
        for grant in grants:
            by_meter.setdefault(grant.meter_slug, []).append(grant)
        chains = {slug: loaded.book.for_customer(customer, loaded.catalog.meter(slug)) for slug in by_meter}
        keys = [CounterKey(customer_id, slug, chain.period_at(now).start) for slug, chain in chains.items()]
        _, readings, _ = await self._ledger.read_counters(customer_id, keys, now)
        views = []
        for key in keys:
            slug = key.meter_slug
            reading = readings[key]
            allowance = chains[slug].terms.allowance_of(reading)
            active = sorted(
                (g for g in by_meter[slug] if g.active_at(now)),
                key=lambda g: (g.expires_at is None, g.expires_at or now, g.effective_at, g.grant_id),
            )
            remaining = limits.grants_remaining(
                allowance, reading.state.used, [(g.grant_id, g.quantity) for g in active]
            )
            for grant in by_meter[slug]:
                expired = grant.expires_at is not None and grant.expires_at <= now
                if expired and not include_expired:
                    continue
                left = remaining.get(grant.grant_id, ZERO if expired else grant.quantity)
                views.append(GrantView(grant, left, grant.active_at(now)))
        return views

    # -- reservations ---------------------------------------------------------------

    async def reserve(self, command: ReserveCommand) -> ReservationResult:
        customer = await require_customer(self._ledger, command.customer_id)
        chain = self._catalogs.current.book.for_customer(customer, command.meter)
        terms, period = chain.terms, chain.period_at(self._clock())
        outcome = await self._holds.reserve(
            command.customer_id, command.reservation_id, terms, command.quantity, period, command.ttl
        )
        if not outcome.fits:
            raise terms.limit_exceeded(period, available=outcome.available_before or ZERO, requested=command.quantity)
        balance = terms.balance(period, outcome.reading)
        status = outcome.reservation.status_at(outcome.decided_at)
        return ReservationResult(outcome.reservation, status, outcome.duplicate, balance)

    async def commit(self, command: CommitCommand, *, allow_meter: MeterGuard = allow_any_meter) -> ReservationResult:
        customer = await require_customer(self._ledger, command.customer_id)
        reservation, terms, period = await self._reservation(command.customer_id, command.reservation_id)
        allow_meter(terms.meter.slug)
        outcome = await self._holds.commit(reservation, command.quantity, command.properties, terms, period, customer)
        balance = terms.balance(period, outcome.reading)
        status = outcome.reservation.status_at(outcome.decided_at)
        return ReservationResult(outcome.reservation, status, outcome.duplicate, balance, outcome.event)

    async def release(
        self, customer_id: str, reservation_id: str, *, allow_meter: MeterGuard = allow_any_meter
    ) -> ReservationResult:
        reservation, terms, period = await self._reservation(customer_id, reservation_id)
        allow_meter(terms.meter.slug)
        released, reading, decided_at = await self._holds.release(reservation, terms, period)
        balance = terms.balance(period, reading)
        return ReservationResult(released, released.status_at(decided_at), False, balance)

    async def _reservation(self, customer_id: str, reservation_id: str) -> tuple[ReservationRecord, PlanTerms, Period]:
        customer = await require_customer(self._ledger, customer_id)
        reservation = await self._holds.get_reservation(customer_id, reservation_id)
        if reservation is None:
            raise NotFound("reservation", reservation_id)
        loaded = self._catalogs.current
        chain = loaded.book.for_customer(customer, loaded.catalog.meter(reservation.meter_slug))
        # The hold's own period, whatever the time now: its commit counts there.
        return reservation, chain.terms, chain.period_at(reservation.period_start)
