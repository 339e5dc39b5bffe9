"""Steps of the ledger's write transactions, shared by events, commits and voids.

Every step runs on a connection inside a transaction that the caller opened,
after `lock_counter` took the counter row's lock: that lock serialises every
decision on one customer's meter in one period, on every replica. Before any
counter row, a transaction that adds or removes usage share-locks the
customer's row (`lock_customer`; the batching writer in its customers
read): the closing of a period locks it FOR UPDATE (metering.ledger.invoicing).
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from metering.domain import closing, limits
from metering.domain.catalog import Meter
from metering.domain.errors import PeriodClosed
from metering.domain.periods import Period
from metering.domain.records import NewEvent, StoredEvent
from metering.domain.terms import PlanTerms
from metering.ledger.pool import Connection, one_row
from metering.ledger.sql import (
    COUNTER_COLUMNS,
    COUNTER_LOCK,
    EVENT_COLUMNS,
    EVENT_FROM,
    EVENT_INSERT,
    EVENT_INSERT_GUARD,
    EVENT_SELECT,
    NOT_VOIDED,
    VALUE_SQL,
    active_grants_sum,
    counter_state,
    live_holds_sum,
    recomputed_counter_columns,
    stored_event,
)


async def lock_customer(
    conn: Connection, customer_id: str, transaction_id: str, instant: datetime | None
) -> PeriodClosed | None:
    """Share-lock the customer's row until the commit; returns the refusal of a
    change of usage at `instant` (None: the database's clock) if that falls in
    a finalized period. Read Committed re-reads a row locked FOR SHARE once a
    closer that held it commits, so this sees every period closed before the
    change counts."""
    row = await conn.fetchrow(
        "SELECT billing_anchor, closed_through, clock_timestamp() AS db_now FROM customers "
        "WHERE customer_id = $1 FOR SHARE",
        customer_id,
    )
    if row is None:
        return None
    at = instant or row["db_now"]
    if closing.is_closed(at, row["billing_anchor"], row["closed_through"]):
        return closing.period_closed(customer_id, transaction_id, at, row["billing_anchor"])
    return None


async def lock_counter(conn: Connection, customer_id: str, meter_slug: str, period: Period) -> limits.CounterState:
    """Lock the counter row (created at zero if new) and return it. The no-op
    update is what takes the row lock in the same statement."""
    row = await one_row(
        conn,
        f"""
        INSERT INTO meter_counters AS c (customer_id, meter_slug, period_start, period_end)
        VALUES ($1, $2, $3, $4)
        {COUNTER_LOCK}
        RETURNING {COUNTER_COLUMNS}
        """,
        customer_id,
        meter_slug,
        period.start,
        period.end,
    )
    return counter_state(row)


async def full_allowance(
    conn: Connection,
    terms: PlanTerms,
    customer_id: str,
    meter_slug: str,
    period_start: datetime,
    grants_at: datetime | None,
    *,
    exclude_reservation: str | None = None,
) -> tuple[limits.Allowance, datetime]:
    """The allowance of the terms with the grants active at `grants_at` (the
    database's clock when None) and the unexpired holds of the period; and
    the database's clock, the one clock that decides expiry on every replica."""
    row = await one_row(
        conn,
        f"""
        SELECT clock_timestamp() AS db_now,
               {active_grants_sum("$1", "$2", "coalesce($4, clock_timestamp())")} AS granted,
               {live_holds_sum("$1", "$2", "$3", " AND r.reservation_id IS DISTINCT FROM $5")} AS reserved
        """,
        customer_id,
        meter_slug,
        period_start,
        grants_at,
        exclude_reservation,
    )
    return terms.allowance(row["granted"], row["reserved"]), row["db_now"]


async def find_event(conn: Connection, customer_id: str, transaction_id: str) -> StoredEvent | None:
    row = await conn.fetchrow(
        f"SELECT {EVENT_SELECT} FROM {EVENT_FROM} WHERE e.customer_id = $1 AND e.transaction_id = $2",
        customer_id,
        transaction_id,
    )
    return None if row is None else stored_event(row)


async def insert_event(conn: Connection, new: NewEvent, event_id: UUID, period_start: datetime) -> StoredEvent | None:
    """Insert the event; None when a concurrent insert took its transaction id
    (the unique constraint is the final guard of exactly-once)."""
    row = await conn.fetchrow(
        f"""
        {EVENT_INSERT}
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), $10)
        {EVENT_INSERT_GUARD}
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
        period_start,
        new.properties,
    )
    return None if row is None else stored_event(row)


async def write_counter(
    conn: Connection, customer_id: str, meter_slug: str, period_start: datetime, state: limits.CounterState
) -> None:
    await conn.execute(
        """
        UPDATE meter_counters
           SET used = $4, event_count = $5, latest_event_time = $6, latest_event_id = $7, updated_at = now()
         WHERE customer_id = $1 AND meter_slug = $2 AND period_start = $3
        """,
        customer_id,
        meter_slug,
        period_start,
        state.used,
        state.event_count,
        state.latest_event_time,
        state.latest_event_id,
    )


async def read_counter(
    conn: Connection, customer_id: str, meter_slug: str, period_start: datetime
) -> limits.CounterState:
    row = await conn.fetchrow(
        f"SELECT {COUNTER_COLUMNS} FROM meter_counters "
        "WHERE customer_id = $1 AND meter_slug = $2 AND period_start = $3",
        customer_id,
        meter_slug,
        period_start,
    )
    return limits.CounterState() if row is None else counter_state(row)


async def recompute_counter(
    conn: Connection, customer_id: str, meter: Meter, period_start: datetime
) -> limits.CounterState:
    """Rebuild a counter from the events that still count in its period (after
    a void), with the same aggregation SQL as usage queries and bills."""
    args: list[object] = [customer_id, meter.slug, period_start]
    if meter.unique_property is not None:
        args.append(meter.unique_property)
    value = VALUE_SQL[meter.aggregation].format(unique="$4")
    row = await one_row(
        conn,
        f"""
        SELECT {recomputed_counter_columns(value)}
          FROM usage_events e
         WHERE e.customer_id = $1 AND e.meter_slug = $2 AND e.period_start = $3 AND e.event_time >= $3
           AND {NOT_VOIDED}
        """,
        *args,
    )
    state = counter_state(row)
    await write_counter(conn, customer_id, meter.slug, period_start, state)
    if meter.unique_property is not None:
        # A distinct value no event counts any more stops being seen.
        await conn.execute(
            f"""
            DELETE FROM meter_unique_values u
             WHERE u.customer_id = $1 AND u.meter_slug = $2 AND u.period_start = $3
               AND NOT EXISTS (SELECT 1 FROM usage_events e
                                WHERE e.customer_id = $1 AND e.meter_slug = $2 AND e.period_start = $3
                                  AND e.properties ->> $4 = u.value AND {NOT_VOIDED})
            """,
            customer_id,
            meter.slug,
            period_start,
            meter.unique_property,
        )
    return state
