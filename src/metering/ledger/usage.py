"""The batching writer's SQL: the reads of a batch and the one statement that writes it.

Each function is one round trip inside the writer's transaction
(metering.ledger.writer); what is decided between the reads and the write is
metering.domain.usage's, without SQL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from metering.domain.columns import CommonPlan
from metering.domain.limits import CounterState
from metering.domain.notifications import NotificationType
from metering.domain.periods import Period
from metering.domain.records import CustomerRecord, NewEvent, StoredEvent
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


async def holdings_and_values(
    conn: Connection, wanted: Sequence[AllowanceKey], values: Sequence[tuple[CounterKey, str]]
) -> tuple[dict[AllowanceKey, tuple[Decimal, Decimal]], set[tuple[CounterKey, str]]]:
    """In one round trip: (granted, reserved) of each allowance key (the
    grants active at its event time and the unexpired holds of its period, by
    the database's clock), and which of `values` (a counter's distinct value)
    are already counted.

    Holds and distinct values change only under the counter row's lock. Read
    after lock_counters returned, in a statement of their own (never inside
    the locking statement: a statement reads the snapshot taken when it
    starts, before it waited for the row, so it would miss a hold that
    ReserveUsage, or a value that another writer, committed meanwhile), they
    are exact. Read before the locks, the holdings are only a guess that the
    write statement checks (write_batch's `guessed`)."""
    if not wanted and not values:
        return {}, set()
    rows = await conn.fetch(
        f"""
        SELECT k.n, FALSE AS is_value,
               {active_grants_sum("k.customer_id", "k.meter_slug", "k.at")} AS granted,
               {live_holds_sum("k.customer_id", "k.meter_slug", "k.period_start")} AS reserved
          FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[])
               WITH ORDINALITY AS k (customer_id, meter_slug, period_start, at, n)
        UNION ALL
        SELECT w.n, TRUE, NULL, NULL
          FROM unnest($5::text[], $6::text[], $7::timestamptz[], $8::text[])
               WITH ORDINALITY AS w (customer_id, meter_slug, period_start, value, n)
         WHERE EXISTS (SELECT 1 FROM meter_unique_values u
                        WHERE u.customer_id = w.customer_id AND u.meter_slug = w.meter_slug
                          AND u.period_start = w.period_start AND u.value = w.value)
        """,
        [k[0] for k in wanted],
        [k[1] for k in wanted],
        [k[2] for k in wanted],
        [k[3] for k in wanted],
        [k.customer_id for k, _ in values],
        [k.meter_slug for k, _ in values],
        [k.period_start for k, _ in values],
        [v for _, v in values],
    )
    holdings: dict[AllowanceKey, tuple[Decimal, Decimal]] = {}
    seen: set[tuple[CounterKey, str]] = set()
    for row in rows:
        n = row["n"] - 1  # WITH ORDINALITY counts from 1
        if row["is_value"]:
            seen.add(values[n])
        else:
            holdings[wanted[n]] = (row["granted"], row["reserved"])
    return holdings, seen


class HoldingsChanged(Exception):
    """The holdings a batch was decided under, read before its counter locks,
    were not those of the write's snapshot: nothing was written, the caller
    rolls back and runs the batch again (reading them under the locks)."""


def _holdings_unchanged(first: int) -> str:
    """A SELECT of one boolean, `ok`: whether the (granted, reserved) of each
    allowance key sent as six arrays from parameter `first` on (customer,
    meter, period start, event time, granted, reserved) are those the
    statement reads now (holdings_and_values' sums). True for no keys."""
    c, m, p, a, g, r = (f"${first + i}" for i in range(6))
    return f"""
        SELECT coalesce(bool_and(k.granted = {active_grants_sum("k.customer_id", "k.meter_slug", "k.at")}
                                 AND k.reserved = {live_holds_sum("k.customer_id", "k.meter_slug", "k.period_start")}),
                        TRUE) AS ok
          FROM unnest({c}::text[], {m}::text[], {p}::timestamptz[], {a}::timestamptz[], {g}::numeric[], {r}::numeric[])
               AS k (customer_id, meter_slug, period_start, at, granted, reserved)
    """


def _holdings_args(guessed: dict[AllowanceKey, tuple[Decimal, Decimal]] | None) -> list[list[object]]:
    keys = list(guessed or {})
    values = [guessed[k] for k in keys] if guessed else []
    return [
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [k[3] for k in keys],
        [v[0] for v in values],
        [v[1] for v in values],
    ]


async def write_batch(
    conn: Connection, plan: BatchPlan, guessed: dict[AllowanceKey, tuple[Decimal, Decimal]] | None = None
) -> tuple[dict[UUID, datetime], list[NotificationType]]:
    """One statement writes the batch: the accepted events (one multi-row
    insert), their hourly rollup buckets (metering.ledger.rollups), each
    counter once and the distinct values seen for the first time; then, when
    the batch announces anything, a second writes the notifications not
    written before (outbox.enqueue: last, as the outbox's order requires).
    Returns when each inserted event was recorded, by event id (fewer than the
    plan's inserts when a concurrent insert took a transaction id: the caller
    rolls back and runs again, and nothing is announced), and the types of
    the notifications written. Only what the database decides comes back
    (which rows it inserted, and when): see stored_events.

    `guessed`: the holdings the plan was decided under when they were read
    before the counter locks (metering.ledger.writer). The statement then
    writes only if they are still those its snapshot reads, which, taken
    after the locks, has every hold committed under them (holds change only
    under the counter's lock); else it writes nothing and HoldingsChanged is
    raised. Equal holdings, locked counters: the decision is the one the
    reads under the locks would have given."""
    rows, counters, unique_values = plan.inserts, plan.counters, plan.unique_values
    recorded_at: dict[UUID, datetime] = {}
    if rows or counters or unique_values:
        recorded_at = await _write_usage(conn, plan, guessed)
        if len(recorded_at) != len(rows):
            return recorded_at, []  # the caller rolls back and runs the batch again
    elif guessed and not await conn.fetchval(_holdings_unchanged(1), *_holdings_args(guessed)):
        raise HoldingsChanged  # nothing to write, but the answers' balances were read before the locks
    # After every other write, in a statement of their own: the outbox's head
    # locks are the last locks the transaction takes (metering.ledger.outbox).
    # A round trip more, only for the few batches that announce something.
    return recorded_at, await outbox.enqueue(conn, plan.notifications)


async def _write_usage(
    conn: Connection, plan: BatchPlan, guessed: dict[AllowanceKey, tuple[Decimal, Decimal]] | None
) -> dict[UUID, datetime]:
    """The batch's one statement of usage (write_batch): when each event it
    inserted was recorded. Every part writes only if the `guessed` holdings
    are unchanged (`fresh`); else nothing is, and HoldingsChanged is raised."""
    rows, counters, unique_values = plan.inserts, plan.counters, plan.unique_values
    unique_values_of_rows = [row.unique_value for row in rows]
    c = _event_columns(
        [row.event_id for row in rows], [row.event for row in rows], [row.key.period_start for row in rows]
    )
    return await _usage_statement(
        conn,
        any(value is not None for value in unique_values_of_rows),
        guessed,
        False,
        *c.arrays(),
        *_counter_arrays(counters),
        [u.key.customer_id for u in unique_values],
        [u.key.meter_slug for u in unique_values],
        [u.key.period_start for u in unique_values],
        [u.value for u in unique_values],
        [u.first_event_id for u in unique_values],
        [_json_text(row.dimensions) for row in rows],
        unique_values_of_rows,
    )


def _counter_arrays(counters: Sequence[tuple[CounterKey, CounterState]]) -> list[Sequence[object]]:
    """Each counter's new state, as the statement's arrays $11 to $17."""
    return [
        [k.customer_id for k, _ in counters],
        [k.meter_slug for k, _ in counters],
        [k.period_start for k, _ in counters],
        [state.used for _, state in counters],
        [state.event_count for _, state in counters],
        [state.latest_event_time for _, state in counters],
        [state.latest_event_id for _, state in counters],
    ]


@dataclass(frozen=True, slots=True)
class EventColumns:
    """A batch's events as the arrays the event insert sends, built once for
    `preinsert` and reused by write_common's rollups (`preinserted`)."""

    event_ids: list[UUID]
    customer_ids: list[str]
    transaction_ids: list[str]
    meter_slugs: list[str]
    price_slugs: list[str | None]
    requested_price_slugs: list[str | None]
    quantities: list[str]  # as text: asyncpg's numeric encoding costs 2x str()
    event_times: list[int]  # epoch microseconds
    period_starts: list[int]
    properties: list[str]

    def arrays(self) -> list[Sequence[object]]:
        """The columns in the statements' order ($1 to $10)."""
        return [
            self.event_ids,
            self.customer_ids,
            self.transaction_ids,
            self.meter_slugs,
            self.price_slugs,
            self.requested_price_slugs,
            self.quantities,
            self.event_times,
            self.period_starts,
            self.properties,
        ]


def event_columns(resolutions: Sequence[Resolution], event_ids: Sequence[UUID]) -> EventColumns:
    """The columns of resolved events, every one an insert, with these ids."""
    return _event_columns(list(event_ids), [r.event for r in resolutions], [r.period.start for r in resolutions])


def _event_columns(
    event_ids: list[UUID], events: Sequence[NewEvent], period_starts: Sequence[datetime]
) -> EventColumns:
    """The one mapping of events to the event insert's arrays."""
    return EventColumns(
        event_ids,
        [e.customer_id for e in events],
        [e.transaction_id for e in events],
        [e.meter_slug for e in events],
        [e.price_slug for e in events],
        [e.requested_price_slug for e in events],
        [str(e.quantity) for e in events],  # as text: asyncpg's numeric encoding costs 2x str()
        epoch_micros([e.event_time for e in events]),
        epoch_micros(period_starts),
        [_json_text(e.properties) for e in events],
    )


# The rows of usage_events from EventColumns.arrays() ($1 to $10), numbered
# `n` in their order: the one SELECT of both statements that insert events.
_EVENT_ROWS = f"""
    SELECT k.event_id, k.customer_id, k.transaction_id, k.meter_slug, k.price_slug, k.requested_price_slug,
           k.quantity::numeric, {timestamp_from_micros("k.event_time")},
           {timestamp_from_micros("k.period_start")}, now(), k.properties::jsonb
      FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                  $8::bigint[], $9::bigint[], $10::text[])
           WITH ORDINALITY AS k (event_id, customer_id, transaction_id, meter_slug, price_slug,
                                 requested_price_slug, quantity, event_time, period_start, properties, n)
"""


async def preinsert(conn: Connection, columns: EventColumns) -> dict[UUID, datetime]:
    """Insert a batch's events before its counters are locked (the writer's
    "Events inserted before the counter locks"): in (customer, transaction id)
    order, so two batches that share transaction ids take their rows in the
    same order and wait on each other, never in a cycle; a twin committed or
    in flight makes the insert skip or wait, exactly as the write statement's
    insert would. When each inserted event was recorded (the transaction's
    now(), as in the write statement), by event id: fewer than the events
    when a twin took a transaction id (the caller runs the batch again in the
    old order)."""
    c = columns
    rows = await conn.fetch(
        f"""
        {EVENT_INSERT}
        {_EVENT_ROWS}
         ORDER BY k.customer_id, k.transaction_id
        {EVENT_INSERT_GUARD}
        RETURNING event_id, recorded_at
        """,
        *c.arrays(),
    )
    return {row[0]: row[1] for row in rows}


async def delete_preinserted(conn: Connection, columns: EventColumns) -> None:
    """Delete the events `preinsert` inserted in this transaction (the batch
    was not of the common case once its counters were read): the usual
    decision and write then run as if they had never been inserted, and
    nothing of them is ever committed."""
    await conn.execute(
        """
        DELETE FROM usage_events e
         USING unnest($1::text[], $2::uuid[]) AS k (customer_id, event_id)
         WHERE e.customer_id = k.customer_id AND e.event_id = k.event_id
        """,
        columns.customer_ids,
        columns.event_ids,
    )


async def write_common(
    conn: Connection,
    plan: CommonPlan,
    resolutions: Sequence[Resolution],
    guessed: dict[AllowanceKey, tuple[Decimal, Decimal]] | None,
    *,
    preinserted: EventColumns | None = None,
) -> dict[UUID, datetime]:
    """write_batch for a batch of the common case (metering.domain.columns):
    the same one statement, its arrays straight from the plan's columns and
    the resolutions (every one an insert); nothing to announce, no distinct
    value. When each event it inserted was recorded (fewer than the events
    when a concurrent insert took a transaction id: the caller runs again).
    `guessed`: as for write_batch (HoldingsChanged when they changed).
    `preinserted`: the events are already inserted (`preinsert`, this
    transaction, these its arrays): the statement writes their rollups and
    counters only, and returns nothing (the caller has preinsert's times)."""
    counters = plan.counters
    empty: list[object] = []
    c = preinserted if preinserted is not None else event_columns(resolutions, plan.event_ids)
    left_out = preinserted is not None  # the insert's own arrays ($3, $6, $9, $10) are then not sent
    return await _usage_statement(
        conn,
        False,
        guessed,
        left_out,
        c.event_ids,
        c.customer_ids,
        empty if left_out else c.transaction_ids,
        c.meter_slugs,
        c.price_slugs,
        empty if left_out else c.requested_price_slugs,
        c.quantities,
        c.event_times,
        empty if left_out else c.period_starts,
        empty if left_out else c.properties,
        *_counter_arrays(counters),
        empty,
        empty,
        empty,
        empty,
        empty,
        [_json_text(r.dimensions) for r in resolutions],
        [None] * len(resolutions),
    )


async def _usage_statement(
    conn: Connection,
    with_unique_values: bool,
    guessed: dict[AllowanceKey, tuple[Decimal, Decimal]] | None,
    preinserted: bool,
    *arrays: Sequence[object],
) -> dict[UUID, datetime]:
    """The one statement of usage, given its arrays ($1 to $24, in order) and
    the holdings guessed before the counter locks ($25 to $30, checked by
    `fresh`: none, nothing to check). Raises HoldingsChanged, having written
    nothing, when they are not those of the statement's snapshot.
    `preinserted`: the events are in usage_events already (the insert part
    is left out; still $1 to $10, unread)."""
    rollup_ctes = rollup_upserts(with_unique_values)
    # Left out, the insert still names its arrays' types for the statement.
    insert_where = "FALSE" if preinserted else "(SELECT ok FROM fresh)"
    # Data-modifying WITH clauses always run to completion, read or not. The
    # rollups add every event of the batch: if the insert skipped one (a
    # concurrent twin took its transaction id), the caller rolls the whole
    # transaction back and runs the batch again, so they never count an event
    # that was not inserted (nor announce what it would have crossed).
    inserted = await conn.fetch(
        f"""
        WITH fresh AS ({_holdings_unchanged(25)}), inserted AS (
            {EVENT_INSERT}
            {_EVENT_ROWS}
             WHERE {insert_where}
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
             WHERE (SELECT ok FROM fresh)
        ), {rollup_ctes}, counters AS (
            UPDATE meter_counters c
               SET used = u.used, event_count = u.event_count, latest_event_time = u.latest_event_time,
                   latest_event_id = u.latest_event_id, updated_at = now()
              FROM unnest($11::text[], $12::text[], $13::timestamptz[], $14::numeric[], $15::bigint[],
                          $16::timestamptz[], $17::uuid[])
                   AS u (customer_id, meter_slug, period_start, used, event_count, latest_event_time, latest_event_id)
             WHERE c.customer_id = u.customer_id AND c.meter_slug = u.meter_slug AND c.period_start = u.period_start
               AND (SELECT ok FROM fresh)
        ), unique_values AS (
            INSERT INTO meter_unique_values (customer_id, meter_slug, period_start, value, first_event_id)
            SELECT * FROM unnest($18::text[], $19::text[], $20::timestamptz[], $21::text[], $22::uuid[])
             WHERE (SELECT ok FROM fresh)
        )
        SELECT event_id, recorded_at FROM inserted
        UNION ALL
        SELECT NULL, NULL WHERE NOT (SELECT ok FROM fresh)
        """,
        *arrays,
        *_holdings_args(guessed),
    )
    if any(row[0] is None for row in inserted):
        raise HoldingsChanged
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
