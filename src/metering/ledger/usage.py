"""The batching writer's SQL: the reads of a batch and the one statement that writes it.

Each function is one round trip inside the writer's transaction
(metering.ledger.writer); what is decided between the reads and the write is
metering.domain.usage's, without SQL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from metering.domain.columns import CommonPlan
from metering.domain.limits import CounterState
from metering.domain.notifications import NotificationType
from metering.domain.periods import Period
from metering.domain.records import CustomerRecord, StoredEvent
from metering.domain.usage import AllowanceKey, BatchPlan, CounterKey, Resolution
from metering.ledger import outbox
from metering.ledger.pool import Connection
from metering.ledger.rollups import rollup_upserts
from metering.ledger.sql import (
    COUNTER_COLUMNS,
    COUNTER_LOCK,
    CUSTOMER_COLUMNS,
    EVENT_FROM,
    EVENT_INSERT,
    EVENT_INSERT_GUARD,
    EVENT_SELECT,
    active_grants_sum,
    counter_state,
    epoch_micros,
    live_holds_sum,
    stored_event,
    timestamp_from_micros,
)


def _json_text(value: dict[str, str]) -> str:
    """A jsonb value sent as text and cast in the statement: most events have
    no properties, and "{}" needs no encoding per event (the pool's jsonb
    codec would run json.dumps for each)."""
    return json.dumps(value) if value else "{}"


async def customers(conn: Connection, ids: set[str]) -> dict[str, CustomerRecord]:
    """The batch's customers, share-locked until the commit, in a stable order
    (before any counter row, as every write path does: no deadlock cycles).
    The lock is what serialises writes with the closing of a period: the
    closer locks the row FOR UPDATE, so a batch either commits before the
    closer reads the period's usage, or waits and then reads (Read Committed
    re-reads a row locked FOR SHARE after its locker commits) the closed_through
    that the closer moved, and refuses the late events. No extra round trip."""
    rows = await conn.fetch(
        f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE customer_id = ANY($1::text[]) ORDER BY customer_id FOR SHARE",
        sorted(ids),
    )
    return {row["customer_id"]: CustomerRecord(*row) for row in rows}


async def lock_counters(conn: Connection, periods: dict[CounterKey, Period]) -> dict[CounterKey, CounterState]:
    """Lock (creating at zero) every counter of the batch, in the order of `periods`."""
    keys = list(periods)
    rows = await conn.fetch(
        f"""
        INSERT INTO meter_counters AS c (customer_id, meter_slug, period_start, period_end)
        SELECT k.customer_id, k.meter_slug, k.period_start, k.period_end
          FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
               WITH ORDINALITY AS k (customer_id, meter_slug, period_start, period_end, n)
         ORDER BY k.n
        {COUNTER_LOCK}
        RETURNING customer_id, meter_slug, period_start, {COUNTER_COLUMNS}
        """,
        [k.customer_id for k in keys],
        [k.meter_slug for k in keys],
        [k.period_start for k in keys],
        [periods[k].end for k in keys],
    )
    return {CounterKey(row["customer_id"], row["meter_slug"], row["period_start"]): counter_state(row) for row in rows}


async def read_counters(conn: Connection, keys: Sequence[CounterKey]) -> dict[CounterKey, CounterState]:
    """Counters read without a lock (zero when they do not exist)."""
    rows = await conn.fetch(
        f"""
        SELECT k.customer_id, k.meter_slug, k.period_start, {COUNTER_COLUMNS}
          FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS k (customer_id, meter_slug, period_start)
          JOIN meter_counters c USING (customer_id, meter_slug, period_start)
        """,
        [k.customer_id for k in keys],
        [k.meter_slug for k in keys],
        [k.period_start for k in keys],
    )
    found = {CounterKey(row["customer_id"], row["meter_slug"], row["period_start"]): counter_state(row) for row in rows}
    return {key: found.get(key, CounterState()) for key in keys}


async def existing(conn: Connection, txns: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredEvent]:
    """The recorded events of these (customer, transaction id) pairs."""
    rows = await conn.fetch(
        f"""
        SELECT {EVENT_SELECT} FROM {EVENT_FROM}
         WHERE (e.customer_id, e.transaction_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
        """,
        [t[0] for t in txns],
        [t[1] for t in txns],
    )
    return {(row["customer_id"], row["transaction_id"]): stored_event(row) for row in rows}


async def holdings(conn: Connection, wanted: Sequence[AllowanceKey]) -> dict[AllowanceKey, tuple[Decimal, Decimal]]:
    """(granted, reserved) of each key: the grants active at its event time and
    the unexpired holds of its period, by the database's clock."""
    if not wanted:
        return {}
    rows = await conn.fetch(
        f"""
        SELECT k.n,
               {active_grants_sum("k.customer_id", "k.meter_slug", "k.at")} AS granted,
               {live_holds_sum("k.customer_id", "k.meter_slug", "k.period_start")} AS reserved
          FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
               WITH ORDINALITY AS k (customer_id, meter_slug, period_start, at, n)
         ORDER BY k.n
        """,
        [k[0] for k in wanted],
        [k[1] for k in wanted],
        [k[2] for k in wanted],
        [k[3] for k in wanted],
    )
    return {k: (row["granted"], row["reserved"]) for k, row in zip(wanted, rows, strict=True)}


async def seen_unique_values(conn: Connection, wanted: Sequence[tuple[CounterKey, str]]) -> set[tuple[CounterKey, str]]:
    if not wanted:
        return set()
    rows = await conn.fetch(
        """
        SELECT u.customer_id, u.meter_slug, u.period_start, u.value FROM meter_unique_values u
         WHERE (u.customer_id, u.meter_slug, u.period_start, u.value)
               IN (SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[]))
        """,
        [k.customer_id for k, _ in wanted],
        [k.meter_slug for k, _ in wanted],
        [k.period_start for k, _ in wanted],
        [v for _, v in wanted],
    )
    return {(CounterKey(row["customer_id"], row["meter_slug"], row["period_start"]), row["value"]) for row in rows}


async def write_batch(conn: Connection, plan: BatchPlan) -> tuple[dict[UUID, datetime], list[NotificationType]]:
    """One statement writes the batch: the accepted events (one multi-row
    insert), their hourly rollup buckets (metering.ledger.rollups), each
    counter once and the distinct values seen for the first time; then, when
    the batch announces anything, a second writes the notifications not
    written before (outbox.enqueue: last, as the outbox's order requires).
    Returns when each inserted event was recorded, by event id (fewer than the
    plan's inserts when a concurrent insert took a transaction id: the caller
    rolls back and runs again, and nothing is announced), and the types of
    the notifications written. Only what the database decides comes back
    (which rows it inserted, and when): see stored_events."""
    rows, counters, unique_values = plan.inserts, plan.counters, plan.unique_values
    recorded_at: dict[UUID, datetime] = {}
    if rows or counters or unique_values:
        recorded_at = await _write_usage(conn, plan)
        if len(recorded_at) != len(rows):
            return recorded_at, []  # the caller rolls back and runs the batch again
    # After every other write, in a statement of their own: the outbox's head
    # locks are the last locks the transaction takes (metering.ledger.outbox).
    # A round trip more, only for the few batches that announce something.
    return recorded_at, await outbox.enqueue(conn, plan.notifications)


async def _write_usage(conn: Connection, plan: BatchPlan) -> dict[UUID, datetime]:
    """The batch's one statement of usage (write_batch): when each event it inserted was recorded."""
    rows, counters, unique_values = plan.inserts, plan.counters, plan.unique_values
    events = [row.event for row in rows]
    unique_values_of_rows = [row.unique_value for row in rows]
    return await _usage_statement(
        conn,
        any(value is not None for value in unique_values_of_rows),
        [row.event_id for row in rows],
        [e.customer_id for e in events],
        [e.transaction_id for e in events],
        [e.meter_slug for e in events],
        [e.price_slug for e in events],
        [e.requested_price_slug for e in events],
        [str(e.quantity) for e in events],  # as text: asyncpg's numeric encoding costs 2x str()
        epoch_micros([e.event_time for e in events]),
        epoch_micros([row.key.period_start for row in rows]),
        [_json_text(e.properties) for e in events],
        [k.customer_id for k, _ in counters],
        [k.meter_slug for k, _ in counters],
        [k.period_start for k, _ in counters],
        [state.used for _, state in counters],
        [state.event_count for _, state in counters],
        [state.latest_event_time for _, state in counters],
        [state.latest_event_id for _, state in counters],
        [u.key.customer_id for u in unique_values],
        [u.key.meter_slug for u in unique_values],
        [u.key.period_start for u in unique_values],
        [u.value for u in unique_values],
        [u.first_event_id for u in unique_values],
        [_json_text(row.dimensions) for row in rows],
        unique_values_of_rows,
    )


async def write_common(conn: Connection, plan: CommonPlan, resolutions: Sequence[Resolution]) -> dict[UUID, datetime]:
    """write_batch for a batch of the common case (metering.domain.columns):
    the same one statement, its arrays straight from the plan's columns and
    the resolutions (every one an insert); nothing to announce, no distinct
    value. When each event it inserted was recorded (fewer than the events
    when a concurrent insert took a transaction id: the caller runs again)."""
    events = [r.event for r in resolutions]
    counters = plan.counters
    empty: list[object] = []
    return await _usage_statement(
        conn,
        False,
        plan.event_ids,
        [e.customer_id for e in events],
        [e.transaction_id for e in events],
        [e.meter_slug for e in events],
        [e.price_slug for e in events],
        [e.requested_price_slug for e in events],
        [str(e.quantity) for e in events],
        epoch_micros([e.event_time for e in events]),
        epoch_micros([r.period.start for r in resolutions]),
        [_json_text(e.properties) for e in events],
        [k.customer_id for k, _ in counters],
        [k.meter_slug for k, _ in counters],
        [k.period_start for k, _ in counters],
        [state.used for _, state in counters],
        [state.event_count for _, state in counters],
        [state.latest_event_time for _, state in counters],
        [state.latest_event_id for _, state in counters],
        empty,
        empty,
        empty,
        empty,
        empty,
        [_json_text(r.dimensions) for r in resolutions],
        [None] * len(resolutions),
    )


async def _usage_statement(
    conn: Connection, with_unique_values: bool, *arrays: Sequence[object]
) -> dict[UUID, datetime]:
    """The one statement of usage, given its arrays ($1 to $24, in order)."""
    rollup_ctes = rollup_upserts(with_unique_values)
    # Data-modifying WITH clauses always run to completion, read or not. The
    # rollups add every event of the batch: if the insert skipped one (a
    # concurrent twin took its transaction id), the caller rolls the whole
    # transaction back and runs the batch again, so they never count an event
    # that was not inserted (nor announce what it would have crossed).
    inserted = await conn.fetch(
        f"""
        WITH inserted AS (
            {EVENT_INSERT}
            SELECT k.event_id, k.customer_id, k.transaction_id, k.meter_slug, k.price_slug, k.requested_price_slug,
                   k.quantity::numeric, {timestamp_from_micros("k.event_time")},
                   {timestamp_from_micros("k.period_start")}, now(), k.properties::jsonb
              FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                          $8::bigint[], $9::bigint[], $10::text[])
                   WITH ORDINALITY AS k (event_id, customer_id, transaction_id, meter_slug, price_slug,
                                         requested_price_slug, quantity, event_time, period_start, properties, n)
             ORDER BY k.n
            {EVENT_INSERT_GUARD}
            RETURNING event_id, recorded_at
        ), rollup_src AS (
            SELECT s.customer_id, s.meter_slug, s.price_slug, {timestamp_from_micros("s.event_time")} AS event_time,
                   s.event_id, s.quantity::numeric AS quantity, s.dimensions::jsonb AS dimensions, s.unique_value
              FROM unnest($2::text[], $4::text[], $5::text[], $8::bigint[], $1::uuid[], $7::text[],
                          $23::text[], $24::text[])
                   AS s (customer_id, meter_slug, price_slug, event_time, event_id, quantity, dimensions,
                         unique_value)
        ), {rollup_ctes}, counters AS (
            UPDATE meter_counters c
               SET used = u.used, event_count = u.event_count, latest_event_time = u.latest_event_time,
                   latest_event_id = u.latest_event_id, updated_at = now()
              FROM unnest($11::text[], $12::text[], $13::timestamptz[], $14::numeric[], $15::bigint[],
                          $16::timestamptz[], $17::uuid[])
                   AS u (customer_id, meter_slug, period_start, used, event_count, latest_event_time, latest_event_id)
             WHERE c.customer_id = u.customer_id AND c.meter_slug = u.meter_slug AND c.period_start = u.period_start
        ), unique_values AS (
            INSERT INTO meter_unique_values (customer_id, meter_slug, period_start, value, first_event_id)
            SELECT * FROM unnest($18::text[], $19::text[], $20::timestamptz[], $21::text[], $22::uuid[])
        )
        SELECT event_id, recorded_at FROM inserted
        """,
        *arrays,
    )
    return {row[0]: row[1] for row in inserted}


def stored_events(plan: BatchPlan, recorded_at: dict[UUID, datetime]) -> list[StoredEvent]:
    """The plan's inserts as stored, in order: what was inserted, and when the
    database recorded it (write_batch)."""
    rows = plan.inserts
    return [
        StoredEvent(
            event_id=row.event_id,
            customer_id=row.event.customer_id,
            transaction_id=row.event.transaction_id,
            meter_slug=row.event.meter_slug,
            price_slug=row.event.price_slug,
            requested_price_slug=row.event.requested_price_slug,
            quantity=row.event.quantity,
            event_time=row.event.event_time,
            period_start=row.key.period_start,
            recorded_at=recorded_at[row.event_id],
            properties=row.event.properties,
        )
        for row in rows
    ]
