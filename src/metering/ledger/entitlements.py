"""Grants (credits) and reservations (holds) in the ledger database.

Reservations move held -> committed | released; a held reservation past its
expiry is expired, evaluated by the database's clock whenever it is read or
written, so no job has to run. Every transition happens under the lock of the
reservation's counter row, so a commit racing an expiry, a release or another
commit ends in exactly one outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

from metering.domain import decimals, limits, notifications
from metering.domain.catalog import Enforcement
from metering.domain.errors import FieldViolation, IdempotencyKeyConflict, InvalidArgument, ReservationStateError
from metering.domain.notifications import NotificationType
from metering.domain.periods import Period
from metering.domain.records import (
    COMMITTED,
    EXPIRED,
    HELD,
    RELEASED,
    CounterReading,
    CustomerRecord,
    GrantRecord,
    NewEvent,
    ReservationRecord,
    StoredEvent,
    new_event_id,
)
from metering.domain.terms import PlanTerms
from metering.domain.usage import wallet_terms as wallet_terms_for
from metering.ledger import outbox, rollups, steps, wallets
from metering.ledger.pool import Connection, Pool, PoolUser, one_row, translate_errors
from metering.ledger.sql import GRANT_COLUMNS, RESERVATION_COLUMNS, grant_record, reservation_record


@dataclass(frozen=True, slots=True)
class HoldOutcome:
    """What a reservation call decided, with the counter and the database's clock at the decision
    (`fits` False: refused by a hard limit, nothing held)."""

    reservation: ReservationRecord
    duplicate: bool
    reading: CounterReading
    decided_at: datetime  # the database's clock at the decision
    fits: bool = True
    available_before: Decimal | None = None


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    """What a commit decided: the reservation, the usage event it recorded, and the counter after."""

    reservation: ReservationRecord
    event: StoredEvent
    duplicate: bool
    reading: CounterReading
    decided_at: datetime


class GrantOutcome(NamedTuple):
    """What a grant call left: the grant as stored (the first call's, for a replay), and whether it was one."""

    grant: GrantRecord  # as stored (the first call's, for a replay)
    duplicate: bool


class ReleaseOutcome(NamedTuple):
    """What a release left: the reservation, the counter after, and the clock that decided expiry."""

    reservation: ReservationRecord  # after the call (released, or as it was: expired, released before)
    reading: CounterReading  # the counter of the hold's period after the call
    decided_at: datetime  # the database's clock, which decides expiry


class EntitlementStore(PoolUser):
    """Grants and reservations in the database. Every reservation transition happens under its
    counter row's lock and decides expiry by the database's clock, so a commit racing an expiry, a
    release or another commit ends in exactly one outcome, on any number of replicas."""

    def __init__(
        self,
        pool: Pool,
        *,
        acquire_timeout: float,
        on_notifications: Callable[[Sequence[NotificationType]], None] = lambda types: None,
    ) -> None:
        super().__init__(pool, acquire_timeout=acquire_timeout)
        self._on_notifications = on_notifications  # observes the notifications of every commit

    # -- grants -----------------------------------------------------------------

    async def grant(self, grant: GrantRecord, *, effective_given: bool) -> GrantOutcome:
        """Store a grant once per grant id; a replay returns the original."""
        async with translate_errors(), self._connection() as conn:
            row = await conn.fetchrow(
                f"""
                INSERT INTO grants ({GRANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                ON CONFLICT (customer_id, grant_id) DO NOTHING
                RETURNING {GRANT_COLUMNS}
                """,
                grant.grant_id,
                grant.customer_id,
                grant.meter_slug,
                grant.quantity,
                grant.effective_at,
                grant.expires_at,
                grant.reason,
                grant.created_at,
            )
            if row is not None:
                return GrantOutcome(grant_record(row), False)
            existing = grant_record(
                await one_row(
                    conn,
                    f"SELECT {GRANT_COLUMNS} FROM grants WHERE customer_id = $1 AND grant_id = $2",
                    grant.customer_id,
                    grant.grant_id,
                )
            )
        differences = [
            name
            for name, same in (
                ("meter_slug", existing.meter_slug == grant.meter_slug),
                ("quantity", existing.quantity == grant.quantity),
                ("effective_time", not effective_given or existing.effective_at == grant.effective_at),
                ("expire_time", not effective_given or existing.expires_at == grant.expires_at),
                ("reason", existing.reason == grant.reason),
            )
            if not same
        ]
        if differences:
            raise IdempotencyKeyConflict("grant", grant.grant_id, differences)
        return GrantOutcome(existing, True)

    async def list_grants(self, customer_id: str, meter_slug: str | None) -> list[GrantRecord]:
        async with translate_errors(), self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {GRANT_COLUMNS} FROM grants WHERE customer_id = $1 AND ($2::text IS NULL OR meter_slug = $2) "
                "ORDER BY meter_slug, effective_at, grant_id",
                customer_id,
                meter_slug,
            )
        return [grant_record(row) for row in rows]

    # -- reservations -------------------------------------------------------------

    async def get_reservation(self, customer_id: str, reservation_id: str) -> ReservationRecord | None:
        async with translate_errors(), self._connection() as conn:
            return await _reservation(conn, customer_id, reservation_id, lock=False)

    async def reserve(
        self,
        customer_id: str,
        reservation_id: str,
        terms: PlanTerms,
        quantity: Decimal,
        period: Period,
        ttl: timedelta,
    ) -> HoldOutcome:
        """Hold `quantity` of the meter of `terms` in `period` for `ttl`, if it
        fits (a hard limit refuses it, and announces the refusal once a period)."""
        announced: list[NotificationType] = []
        outcome = await self._reserve(customer_id, reservation_id, terms, quantity, period, ttl, announced)
        self._on_notifications(announced)
        return outcome

    async def _reserve(
        self,
        customer_id: str,
        reservation_id: str,
        terms: PlanTerms,
        quantity: Decimal,
        period: Period,
        ttl: timedelta,
        announced: list[NotificationType],
    ) -> HoldOutcome:
        meter_slug = terms.meter.slug
        async with translate_errors(), self._connection() as conn, conn.transaction():
            state = await steps.lock_counter(conn, customer_id, meter_slug, period)
            allowance, now = await steps.full_allowance(conn, terms, customer_id, meter_slug, period.start, None)
            reading = CounterReading(state, allowance.granted, allowance.reserved)
            existing = await _reservation(conn, customer_id, reservation_id, lock=True)
            if existing is not None:
                differences = [
                    name
                    for name, same in (
                        ("meter_slug", existing.meter_slug == meter_slug),
                        ("quantity", existing.quantity == quantity),
                    )
                    if not same
                ]
                if differences:
                    raise IdempotencyKeyConflict("reservation", reservation_id, differences)
                return HoldOutcome(existing, True, reading, now)
            if await steps.find_event(conn, customer_id, reservation_id) is not None:
                raise IdempotencyKeyConflict("reservation", reservation_id, ["reservation_id"], used_by_event=True)
            available = limits.available_quantity(allowance, state.used)
            if not limits.requested_fits(allowance, state.used, quantity) and allowance.enforcement is Enforcement.HARD:
                placeholder = ReservationRecord(
                    reservation_id, customer_id, meter_slug, period.start, quantity, HELD, now, now, None, None, None
                )
                # Nothing else is written, but the refusal is announced (once a period).
                refusal = notifications.limit_rejected_notification(
                    customer_id,
                    meter_slug,
                    terms.notified,
                    period,
                    allowance,
                    available=available,
                    requested=quantity,
                    transaction_id=reservation_id,
                )
                announced.extend(await outbox.enqueue(conn, [refusal]))
                return HoldOutcome(placeholder, False, reading, now, fits=False, available_before=available)
            # A hold never outlives its period: its commit must count there.
            expires_at = now + ttl if period.end is None else min(now + ttl, period.end)
            row = await one_row(
                conn,
                f"""
                INSERT INTO reservations (customer_id, reservation_id, meter_slug, period_start, quantity, status,
                                          expires_at, created_at)
                VALUES ($1, $2, $3, $4, $5, 'held', $6, $7)
                RETURNING {RESERVATION_COLUMNS}
                """,
                customer_id,
                reservation_id,
                meter_slug,
                period.start,
                quantity,
                expires_at,
                now,
            )
            held = CounterReading(state, allowance.granted, decimals.add(allowance.reserved, quantity))
            return HoldOutcome(reservation_record(row), False, held, now)

    async def commit(
        self,
        reservation: ReservationRecord,
        quantity: Decimal | None,
        properties: dict[str, str],
        terms: PlanTerms,
        period: Period,
        customer: CustomerRecord | None = None,
    ) -> CommitOutcome:
        """Record the reservation's usage (all of it when `quantity` is None) as
        an event at the database's clock, priced with the price of `terms`, and announce
        the thresholds it crossed. The event is at the database's clock, so only
        a finalized period can refuse it (a hold never outlives its own period,
        which cannot close before it ends)."""
        announced: list[NotificationType] = []
        outcome = await self._commit(reservation, quantity, properties, terms, period, announced, customer)
        self._on_notifications(announced)
        return outcome

    async def _commit(
        self,
        reservation: ReservationRecord,
        quantity: Decimal | None,
        properties: dict[str, str],
        terms: PlanTerms,
        period: Period,
        announced: list[NotificationType],
        customer: CustomerRecord | None,
    ) -> CommitOutcome:
        meter = terms.meter
        async with translate_errors(), self._connection() as conn, conn.transaction():
            closed = await steps.lock_customer(conn, reservation.customer_id, reservation.reservation_id, None)
            state = await steps.lock_counter(conn, reservation.customer_id, reservation.meter_slug, period)
            current = await _reservation(conn, reservation.customer_id, reservation.reservation_id, lock=True)
            assert current is not None
            allowance, now = await steps.full_allowance(
                conn,
                terms,
                current.customer_id,
                current.meter_slug,
                current.period_start,
                None,
                exclude_reservation=current.reservation_id,
            )
            amount = current.quantity if quantity is None else quantity
            status = current.status_at(now)
            if status == COMMITTED:
                event = await steps.find_event(conn, current.customer_id, current.reservation_id)
                assert event is not None
                if amount != current.committed_quantity or event.properties != properties:
                    raise IdempotencyKeyConflict("reservation", current.reservation_id, ["quantity", "properties"])
                return CommitOutcome(
                    current, event, True, CounterReading(state, allowance.granted, allowance.reserved), now
                )
            if status in (RELEASED, EXPIRED):
                raise ReservationStateError(current.reservation_id, status)
            if closed is not None:  # after the replay check: a replay of a commit is answered
                raise closed
            if amount > current.quantity:
                raise InvalidArgument(
                    [FieldViolation("quantity", f"at most the reserved quantity, {current.quantity}")]
                )
            event_id = new_event_id()
            # The hold secured the units: the commit is recorded even if the
            # allowance shrank since (a grant expired, the plan changed).
            decision = limits.decide(allowance, state, amount, event_time=now, event_id=event_id, allow_overage=True)
            to_record = NewEvent(
                customer_id=current.customer_id,
                transaction_id=current.reservation_id,
                meter_slug=current.meter_slug,
                price_slug=terms.terms.price,
                requested_price_slug=None,
                quantity=amount,
                event_time=now,
                event_time_given=False,
                properties=properties,
            )
            # The customer's wallet pays for the commit (a prepaid plan's commit
            # the credit cannot cover is refused: holds reserve units, not money).
            wallet_terms = None if customer is None else wallet_terms_for(customer, terms, terms.price, now)
            charging = None
            charged: dict[tuple[str, str], notifications.NewNotification] = {}
            if wallet_terms is not None:
                charging = await wallets.charging(conn, {wallet_terms.spend_key(to_record): wallet_terms})
                refused = charging.charge(
                    to_record, terms.plan.slug, wallet_terms, event_id, new_value=False, announce=charged
                )
                if refused is not None:
                    raise refused
            stored = await steps.insert_event(conn, to_record, event_id, current.period_start)
            if stored is None:
                raise IdempotencyKeyConflict(
                    "reservation", current.reservation_id, ["reservation_id"], used_by_event=True
                )
            # Reservations are SUM meters only: no distinct value to count.
            await rollups.add_events(conn, [rollups.rollup_input(meter, stored, None)])
            await steps.write_counter(
                conn, current.customer_id, current.meter_slug, current.period_start, decision.state_after
            )
            crossed = notifications.thresholds_notifications(
                current.customer_id,
                current.meter_slug,
                terms.notified,
                period,
                allowance,
                state.used,
                decision.state_after.used,
            )
            if charging is not None:
                await wallets.write(conn, charging.writes())
                crossed.extend(charged.values())
            announced.extend(await outbox.enqueue(conn, crossed))
            row = await one_row(
                conn,
                f"""
                UPDATE reservations SET status = 'committed', committed_quantity = $3, event_id = $4, settled_at = $5
                 WHERE customer_id = $1 AND reservation_id = $2
                RETURNING {RESERVATION_COLUMNS}
                """,
                current.customer_id,
                current.reservation_id,
                amount,
                event_id,
                now,
            )
            reading = CounterReading(decision.state_after, allowance.granted, allowance.reserved)
            return CommitOutcome(reservation_record(row), stored, False, reading, now)

    async def release(self, reservation: ReservationRecord, terms: PlanTerms, period: Period) -> ReleaseOutcome:
        async with translate_errors(), self._connection() as conn, conn.transaction():
            state = await steps.lock_counter(conn, reservation.customer_id, reservation.meter_slug, period)
            current = await _reservation(conn, reservation.customer_id, reservation.reservation_id, lock=True)
            assert current is not None
            _, now = await steps.full_allowance(
                conn, terms, current.customer_id, current.meter_slug, period.start, None
            )
            status = current.status_at(now)
            if status == COMMITTED:
                raise ReservationStateError(current.reservation_id, status)
            if status == HELD:
                row = await one_row(
                    conn,
                    f"""
                    UPDATE reservations SET status = 'released', settled_at = $3
                     WHERE customer_id = $1 AND reservation_id = $2
                    RETURNING {RESERVATION_COLUMNS}
                    """,
                    current.customer_id,
                    current.reservation_id,
                    now,
                )
                current = reservation_record(row)
            allowance, now = await steps.full_allowance(
                conn, terms, current.customer_id, current.meter_slug, period.start, None
            )
            return ReleaseOutcome(current, CounterReading(state, allowance.granted, allowance.reserved), now)


async def _reservation(
    conn: Connection, customer_id: str, reservation_id: str, *, lock: bool
) -> ReservationRecord | None:
    row = await conn.fetchrow(
        f"SELECT {RESERVATION_COLUMNS} FROM reservations WHERE customer_id = $1 AND reservation_id = $2"
        + (" FOR UPDATE" if lock else ""),
        customer_id,
        reservation_id,
    )
    return None if row is None else reservation_record(row)
