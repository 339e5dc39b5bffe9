"""The ledger: every SQL statement the service runs, and nothing else.

Recording an event is one transaction on one customer:

1. lock the counter row of (customer, meter, period), creating it if needed;
2. look the transaction id up: an existing event makes this call a duplicate
   (same payload) or a conflict (different payload), and nothing is written;
3. decide against the limit (metering.limits) while the lock is held;
4. insert the event; the unique (customer_id, transaction_id) constraint is
   the final guard: if a concurrent call inserted the same id first, this
   insert does nothing and the whole step runs again, now finding it;
5. update the counter and commit. OK is answered after the commit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from metering import limits
from metering.errors import BillingAnchorImmutable, TransactionConflict
from metering.ledger.pool import PoolUser, translate_errors
from metering.periods import Period

# How often step 4 may find the id taken by a concurrent insert before giving
# up; the second attempt always sees the committed row, so 3 is generous.
_RECORD_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    customer_id: str
    plan_slug: str
    billing_anchor: datetime
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class NewEvent:
    customer_id: str
    transaction_id: str
    meter_slug: str
    price_slug: str
    requested_price_slug: str | None  # the price the caller named, if it named one
    quantity: Decimal
    event_time: datetime
    event_time_given: bool  # False: server time; a replay then matches any time
    properties: dict[str, str]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    event_id: UUID
    customer_id: str
    transaction_id: str
    meter_slug: str
    price_slug: str
    requested_price_slug: str | None
    quantity: Decimal
    event_time: datetime
    period_start: datetime
    recorded_at: datetime
    properties: dict[str, str]


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    event: StoredEvent | None  # None when refused
    duplicate: bool
    decision: limits.Decision | None  # None for a duplicate
    counter: limits.CounterState  # the counter after the call
    period: Period


def new_event_id() -> UUID:
    """A UUIDv7: time-ordered, so ledger inserts stay local in the primary key
    index and ties on event time resolve in recording order."""
    millis = time.time_ns() // 1_000_000
    random_bits = int.from_bytes(os.urandom(10), "big")
    value = (millis & (2**48 - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= (random_bits >> 68) << 64  # 12 bits of rand_a
    value |= 0b10 << 62  # RFC 4122 variant
    value |= random_bits & (2**62 - 1)  # 62 bits of rand_b
    return UUID(int=value)


def payload_differences(stored: StoredEvent, new: NewEvent) -> list[str]:
    """The request fields in which a replay differs from the recorded event."""
    differences = []
    if stored.meter_slug != new.meter_slug:
        differences.append("meter_slug")
    if stored.requested_price_slug != new.requested_price_slug:
        differences.append("price_slug")
    if stored.quantity != new.quantity:
        differences.append("quantity")
    if new.event_time_given and stored.event_time != new.event_time:
        differences.append("event_time")
    if stored.properties != new.properties:
        differences.append("properties")
    return differences


EVENT_COLUMNS = (
    "event_id, customer_id, transaction_id, meter_slug, price_slug, requested_price_slug, "
    "quantity, event_time, period_start, recorded_at, properties"
)
_COUNTER_COLUMNS = "used, event_count, latest_event_time, latest_event_id"


class Ledger(PoolUser):
    """The write path (events, counters, customers) and counter reads."""

    async def ping(self) -> None:
        async with translate_errors(), self._connection() as conn:
            await conn.fetchval("SELECT 1")

    # -- customers ------------------------------------------------------------

    async def get_customer(self, customer_id: str) -> CustomerRecord | None:
        async with translate_errors(), self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT customer_id, plan_slug, billing_anchor, created_at, updated_at "
                "FROM customers WHERE customer_id = $1",
                customer_id,
            )
        return None if row is None else CustomerRecord(**dict(row))

    async def upsert_customer(
        self, customer_id: str, plan_slug: str, billing_anchor: datetime | None, now: datetime
    ) -> tuple[CustomerRecord, bool]:
        """Create the customer or change its plan; the anchor is set once."""
        async with translate_errors(), self._connection() as conn, conn.transaction():
            previous_plan = await conn.fetchval(
                "SELECT plan_slug FROM customers WHERE customer_id = $1 FOR UPDATE", customer_id
            )
            row = await conn.fetchrow(
                """
                INSERT INTO customers AS c (customer_id, plan_slug, billing_anchor, created_at, updated_at)
                VALUES ($1, $2, $3, $4, $4)
                ON CONFLICT (customer_id) DO UPDATE
                    SET plan_slug = EXCLUDED.plan_slug,
                        updated_at = CASE WHEN c.plan_slug = EXCLUDED.plan_slug THEN c.updated_at
                                          ELSE EXCLUDED.updated_at END
                RETURNING customer_id, plan_slug, billing_anchor, created_at, updated_at,
                          (xmax = 0) AS created
                """,
                customer_id,
                plan_slug,
                billing_anchor or now,
                now,
            )
            assert row is not None
            fields = dict(row)
            created = bool(fields.pop("created"))
            record = CustomerRecord(**fields)
            if billing_anchor is not None and not created and record.billing_anchor != billing_anchor:
                # Raising inside the transaction rolls the plan change back too.
                raise BillingAnchorImmutable(customer_id, record.billing_anchor.isoformat())
            if plan_slug != previous_plan:
                # The history prices past periods with the plan they ran under.
                await conn.execute(
                    "INSERT INTO customer_plan_history (customer_id, effective_at, plan_slug) VALUES ($1, $2, $3) "
                    "ON CONFLICT (customer_id, effective_at) DO UPDATE SET plan_slug = EXCLUDED.plan_slug",
                    customer_id,
                    now,
                    plan_slug,
                )
            return record, created

    # -- usage ----------------------------------------------------------------

    async def record_usage(
        self,
        new: NewEvent,
        allowance: limits.Allowance,
        period: Period,
        *,
        unique_value: str | None,
        allow_overage: bool,
    ) -> RecordOutcome:
        async with translate_errors(), self._connection() as conn:
            for _ in range(_RECORD_ATTEMPTS):
                try:
                    async with conn.transaction():
                        return await self._record_once(conn, new, allowance, period, unique_value, allow_overage)
                except _RetryRecord:
                    continue
        raise RuntimeError(f"transaction id {new.transaction_id!r} kept colliding with concurrent inserts")

    async def _record_once(
        self,
        conn: asyncpg.Connection,
        new: NewEvent,
        allowance: limits.Allowance,
        period: Period,
        unique_value: str | None,
        allow_overage: bool,
    ) -> RecordOutcome:
        """One attempt; raises _RetryRecord when a concurrent insert took the id."""
        # 1. Lock the counter row (created at zero if new). The no-op update
        #    is what takes the row lock in the same statement.
        row = await conn.fetchrow(
            f"""
            INSERT INTO meter_counters AS c (customer_id, meter_slug, period_start, period_end)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (customer_id, meter_slug, period_start) DO UPDATE SET period_end = c.period_end
            RETURNING {_COUNTER_COLUMNS}
            """,
            new.customer_id,
            new.meter_slug,
            period.start,
            period.end,
        )
        state = _counter_state(row)
        # 2. Exactly once: an existing event answers this call.
        existing = await self._find_event(conn, new.customer_id, new.transaction_id)
        if existing is not None:
            differences = payload_differences(existing, new)
            if differences:
                raise TransactionConflict(new.transaction_id, differences, str(existing.event_id))
            if existing.meter_slug != new.meter_slug or existing.period_start != period.start:
                state = await self._counter(conn, existing.customer_id, existing.meter_slug, existing.period_start)
            return RecordOutcome(existing, True, None, state, period)
        # 3. Decide while holding the lock.
        new_value = unique_value is not None and not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM meter_unique_values "
            "WHERE customer_id = $1 AND meter_slug = $2 AND period_start = $3 AND value = $4)",
            new.customer_id,
            new.meter_slug,
            period.start,
            unique_value,
        )
        event_id = new_event_id()
        decision = limits.decide(
            allowance,
            state,
            new.quantity,
            event_time=new.event_time,
            event_id=event_id,
            new_unique_value=new_value,
            allow_overage=allow_overage,
        )
        if not decision.accepted:
            return RecordOutcome(None, False, decision, state, period)
        # 4. Insert; the unique constraint guards against a concurrent twin.
        stored_row = await conn.fetchrow(
            f"""
            INSERT INTO usage_events ({EVENT_COLUMNS})
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), $10)
            ON CONFLICT (customer_id, transaction_id) DO NOTHING
            RETURNING {EVENT_COLUMNS}
            """,
            event_id,
            new.customer_id,
            new.transaction_id,
            new.meter_slug,
            new.price_slug,
            new.requested_price_slug,
            new.quantity,
            new.event_time,
            period.start,
            new.properties,
        )
        if stored_row is None:
            # Roll back (the caller's transaction block ends) and run again.
            raise _RetryRecord
        # 5. Update the counter.
        after = decision.state_after
        await conn.execute(
            """
            UPDATE meter_counters
               SET used = $4, event_count = $5, latest_event_time = $6, latest_event_id = $7, updated_at = now()
             WHERE customer_id = $1 AND meter_slug = $2 AND period_start = $3
            """,
            new.customer_id,
            new.meter_slug,
            period.start,
            after.used,
            after.event_count,
            after.latest_event_time,
            after.latest_event_id,
        )
        if new_value:
            await conn.execute(
                "INSERT INTO meter_unique_values (customer_id, meter_slug, period_start, value, first_event_id) "
                "VALUES ($1, $2, $3, $4, $5)",
                new.customer_id,
                new.meter_slug,
                period.start,
                unique_value,
                event_id,
            )
        return RecordOutcome(stored_event(stored_row), False, decision, after, period)

    async def read_counters(
        self, customer_id: str, keys: Sequence[tuple[str, datetime]]
    ) -> dict[tuple[str, datetime], limits.CounterState]:
        """Counter rows by (meter, period start); missing rows are absent."""
        async with translate_errors(), self._connection() as conn:
            rows = await conn.fetch(
                f"""
                SELECT c.meter_slug, c.period_start, {_COUNTER_COLUMNS}
                  FROM unnest($2::text[], $3::timestamptz[]) AS k (meter_slug, period_start)
                  JOIN meter_counters c
                    ON c.customer_id = $1 AND c.meter_slug = k.meter_slug AND c.period_start = k.period_start
                """,
                customer_id,
                [meter for meter, _ in keys],
                [start for _, start in keys],
            )
        return {(row["meter_slug"], row["period_start"]): _counter_state(row) for row in rows}

    async def count_events(self, customer_id: str) -> int:
        """How many events the ledger holds for a customer (for audits and tests)."""
        async with translate_errors(), self._connection() as conn:
            count = await conn.fetchval("SELECT count(*) FROM usage_events WHERE customer_id = $1", customer_id)
        return int(count)

    async def _find_event(self, conn: asyncpg.Connection, customer_id: str, transaction_id: str) -> StoredEvent | None:
        row = await conn.fetchrow(
            f"SELECT {EVENT_COLUMNS} FROM usage_events WHERE customer_id = $1 AND transaction_id = $2",
            customer_id,
            transaction_id,
        )
        return None if row is None else stored_event(row)

    async def _counter(
        self, conn: asyncpg.Connection, customer_id: str, meter_slug: str, period_start: datetime
    ) -> limits.CounterState:
        row = await conn.fetchrow(
            f"SELECT {_COUNTER_COLUMNS} FROM meter_counters "
            "WHERE customer_id = $1 AND meter_slug = $2 AND period_start = $3",
            customer_id,
            meter_slug,
            period_start,
        )
        return limits.CounterState() if row is None else _counter_state(row)


class _RetryRecord(Exception):
    """A concurrent insert took the transaction id: roll back and run again."""


def _counter_state(row: Any) -> limits.CounterState:
    return limits.CounterState(
        used=row["used"],
        event_count=row["event_count"],
        latest_event_time=row["latest_event_time"],
        latest_event_id=row["latest_event_id"],
    )


def stored_event(row: Any) -> StoredEvent:
    """A usage_events row selected with EVENT_COLUMNS."""
    return StoredEvent(**dict(row))
