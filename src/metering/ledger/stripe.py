"""Every SQL statement of the billing sync to Stripe: which customers' meters
have closed hours to export, their hourly usage from the rollups, and the
progress and meter events tables (migration 0005).

All of it runs on the one connection the exporter holds with its session
advisory lock (`STRIPE_EXPORT_LOCK_KEY`): one replica exports at a time, and
a replica that dies releases the lock with its connection. The exporter
(metering.delivery.stripe) sees that connection only as a
`StripeExportSession`, opened by `StripeExportStore.session()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

import asyncpg

from metering.domain.catalog import Aggregation
from metering.domain.stripe import HourUsage, Progress, Step
from metering.ledger.pool import Connection, ConnectionSource

STRIPE_EXPORT_LOCK_KEY = 0x6D74722D73747270  # "mtr-strp"

# The figure of a rollup row that Stripe adds up: the quantity of a SUM meter,
# the number of events of a COUNT meter (the mapping admits no other).
_VALUE_SQL = "CASE WHEN r.meter_slug = ANY($1::text[]) THEN r.event_count::numeric ELSE r.quantity_sum END"


@dataclass(frozen=True, slots=True)
class ExportScope:
    """What is exported: the mapped meters and, when only listed customers
    are, those customers."""

    meters: Collection[str]
    count_meters: Collection[str]  # those of them that count events
    customers: Collection[str] | None  # None: every customer

    @classmethod
    def of(cls, aggregations: dict[str, Aggregation], customers: Collection[str] | None) -> ExportScope:
        count = [slug for slug, aggregation in aggregations.items() if aggregation is Aggregation.COUNT]
        return cls(sorted(aggregations), sorted(count), None if customers is None else sorted(customers))


@dataclass(frozen=True, slots=True)
class Pair:
    """A customer's meter, the unit the Stripe export keeps progress for."""

    customer_id: str
    meter_slug: str


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """A meter event decided and not yet acknowledged, with what it was decided from."""

    step: Step
    identifier: str
    event_name: str
    stripe_customer_id: str


@dataclass(frozen=True, slots=True)
class PairState:
    """A pair's export progress, and the event it left in flight (None: none)."""

    progress: Progress
    pending: PendingEvent | None
    # Hours skipped as too old for Stripe, saved in the progress, whose log
    # line is not written yet (a process stopped between the two).
    unlogged_skipped_hours: int = 0


async def try_lock(conn: Connection) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", STRIPE_EXPORT_LOCK_KEY))


async def unlock(conn: Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", STRIPE_EXPORT_LOCK_KEY)


async def pairs_to_export(
    conn: Connection, scope: ExportScope, closed_before: datetime, *, check_exported: bool
) -> list[Pair]:
    """The customers' meters with work: an event in flight, skipped hours not
    logged yet, usage in closed hours not yet exported, and (with `check_exported`, once per closed hour:
    it reads every exported hour's rollups) a change to hours already
    exported since they were accounted."""
    customers = None if scope.customers is None else list(scope.customers)
    late = ""
    if check_exported:
        late = f"""
            UNION
            SELECT p.customer_id, p.meter_slug FROM stripe_export_progress p
             WHERE p.meter_slug = ANY($2::text[]) AND ($3::text[] IS NULL OR p.customer_id = ANY($3::text[]))
               AND p.accounted_total <> (SELECT coalesce(sum({_VALUE_SQL}), 0) FROM usage_rollups r
                                          WHERE r.customer_id = p.customer_id AND r.meter_slug = p.meter_slug
                                            AND r.hour < p.exported_through)"""
    rows = await conn.fetch(
        f"""
        SELECT e.customer_id, e.meter_slug FROM stripe_meter_events e
         WHERE e.acknowledged_at IS NULL AND e.abandoned_at IS NULL
        UNION
        SELECT p.customer_id, p.meter_slug FROM stripe_export_progress p
         WHERE p.unlogged_skipped_hours > 0
           AND p.meter_slug = ANY($2::text[]) AND ($3::text[] IS NULL OR p.customer_id = ANY($3::text[]))
        UNION
        SELECT DISTINCT r.customer_id, r.meter_slug
          FROM usage_rollups r
          LEFT JOIN stripe_export_progress p ON p.customer_id = r.customer_id AND p.meter_slug = r.meter_slug
         WHERE r.meter_slug = ANY($2::text[]) AND ($3::text[] IS NULL OR r.customer_id = ANY($3::text[]))
           AND r.hour < $4 AND (p.exported_through IS NULL OR r.hour >= p.exported_through)
        {late}
        ORDER BY 1, 2
        """,
        list(scope.count_meters),
        list(scope.meters),
        customers,
        closed_before,
    )
    return [Pair(row["customer_id"], row["meter_slug"]) for row in rows]


async def load_state(conn: Connection, pair: Pair) -> PairState:
    row = await conn.fetchrow(
        "SELECT exported_through, accounted_total, skipped_total, sent_units, unlogged_skipped_hours "
        "FROM stripe_export_progress WHERE customer_id = $1 AND meter_slug = $2",
        pair.customer_id,
        pair.meter_slug,
    )
    progress = Progress(None) if row is None else _progress(row)
    pending_row = await conn.fetchrow(
        """
        SELECT hour, identifier, event_name, stripe_customer_id, value, exported_through, accounted_total,
               skipped_total, sent_units
          FROM stripe_meter_events
         WHERE customer_id = $1 AND meter_slug = $2 AND acknowledged_at IS NULL AND abandoned_at IS NULL
        """,
        pair.customer_id,
        pair.meter_slug,
    )
    pending = None
    if pending_row is not None:
        step = Step(pending_row["hour"], _progress(pending_row), int(pending_row["value"]))
        pending = PendingEvent(
            step, pending_row["identifier"], pending_row["event_name"], pending_row["stripe_customer_id"]
        )
    return PairState(progress, pending, 0 if row is None else row["unlogged_skipped_hours"])


def _progress(row: asyncpg.Record) -> Progress:
    return Progress(row["exported_through"], row["accounted_total"], row["skipped_total"], int(row["sent_units"]))


class HourlyUsage(NamedTuple):
    """A pair's usage for the exporter: the total already exported and each hour since."""

    exported: Decimal  # the rollups' total of the hours before `since` (exported already)
    hours: list[HourUsage]  # each hour from `since` on, oldest first


async def hourly_usage(
    conn: Connection, scope: ExportScope, pair: Pair, since: datetime | None, closed_before: datetime
) -> HourlyUsage:
    """The rollups' total of the hours before `since` (the exported ones) and
    the usage of each hour from `since` to `closed_before`, in one index
    range scan of the pair's rollups."""
    rows = await conn.fetch(
        f"""
        SELECT CASE WHEN $4::timestamptz IS NOT NULL AND r.hour < $4 THEN NULL ELSE r.hour END AS hour,
               sum({_VALUE_SQL}) AS quantity
          FROM usage_rollups r
         WHERE r.customer_id = $2 AND r.meter_slug = $3 AND r.hour < $5
         GROUP BY 1
         ORDER BY 1 NULLS FIRST
        """,
        list(scope.count_meters),
        pair.customer_id,
        pair.meter_slug,
        since,
        closed_before,
    )
    exported = Decimal(0)
    usage: list[HourUsage] = []
    for row in rows:
        if row["hour"] is None:
            exported = row["quantity"]
        else:
            usage.append(HourUsage(row["hour"], row["quantity"]))
    return HourlyUsage(exported, usage)


async def save_progress(
    conn: Connection, pair: Pair, before: Progress, after: Progress, skipped_hours: int = 0
) -> None:
    """Advance the pair's progress from `before` (what this exporter read) to
    `after`, which passes over `skipped_hours` hours too old for Stripe (added
    to the count whose log line is due, `skips_logged`); a progress moved
    meanwhile by anyone else is an error, never overwritten."""
    if before == after:
        return
    moved = await conn.fetchval(
        """
        INSERT INTO stripe_export_progress AS p
               (customer_id, meter_slug, exported_through, accounted_total, skipped_total, sent_units,
                unlogged_skipped_hours)
        VALUES ($1, $2, $3, $4, $5, $6, $8)
        ON CONFLICT (customer_id, meter_slug) DO UPDATE
           SET exported_through = EXCLUDED.exported_through, accounted_total = EXCLUDED.accounted_total,
               skipped_total = EXCLUDED.skipped_total, sent_units = EXCLUDED.sent_units,
               unlogged_skipped_hours = p.unlogged_skipped_hours + EXCLUDED.unlogged_skipped_hours,
               updated_at = now()
         WHERE p.exported_through = $7
        RETURNING 1
        """,
        pair.customer_id,
        pair.meter_slug,
        after.exported_through,
        after.accounted_total,
        after.skipped_total,
        after.sent_units,
        before.exported_through,
        skipped_hours,
    )
    if moved is None:
        raise ProgressMoved(pair)


async def skips_logged(conn: Connection, pair: Pair, hours: int) -> None:
    """The log line of `hours` skipped hours is written: no longer due."""
    await conn.execute(
        "UPDATE stripe_export_progress SET unlogged_skipped_hours = unlogged_skipped_hours - $3 "
        "WHERE customer_id = $1 AND meter_slug = $2",
        pair.customer_id,
        pair.meter_slug,
        hours,
    )


class ProgressMoved(RuntimeError):
    """Another exporter advanced the progress: the advisory lock was lost."""

    def __init__(self, pair: Pair) -> None:
        super().__init__(f"the Stripe export progress of {pair.customer_id}/{pair.meter_slug} moved meanwhile")


async def decide_event(
    conn: Connection, pair: Pair, saved: Progress, current: Progress, event: PendingEvent, skipped_hours: int = 0
) -> None:
    """Store the progress so far (`current`: hours without an event since
    `saved`, `skipped_hours` of them too old for Stripe) and the event about
    to be sent, in one transaction."""
    step = event.step
    async with conn.transaction():
        await save_progress(conn, pair, saved, current, skipped_hours)
        await conn.execute(
            """
            INSERT INTO stripe_meter_events
                   (customer_id, meter_slug, hour, identifier, event_name, stripe_customer_id, value,
                    exported_through, accounted_total, skipped_total, sent_units)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            """,
            pair.customer_id,
            pair.meter_slug,
            step.hour,
            event.identifier,
            event.event_name,
            event.stripe_customer_id,
            step.units,
            step.progress.exported_through,
            step.progress.accounted_total,
            step.progress.skipped_total,
            step.progress.sent_units,
        )


async def acknowledge_event(conn: Connection, pair: Pair, before: Progress, event: PendingEvent) -> None:
    """Stripe has the event: mark it and advance the progress to where it leads, together."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE stripe_meter_events SET acknowledged_at = now() "
            "WHERE customer_id = $1 AND meter_slug = $2 AND hour = $3",
            pair.customer_id,
            pair.meter_slug,
            event.step.hour,
        )
        await save_progress(conn, pair, before, event.step.progress)


async def abandon_event(conn: Connection, pair: Pair, before: Progress, event: PendingEvent, after: Progress) -> None:
    """The event can no longer be sent (too old for Stripe): mark it and
    advance the progress as if its hour were skipped."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE stripe_meter_events SET abandoned_at = now() "
            "WHERE customer_id = $1 AND meter_slug = $2 AND hour = $3",
            pair.customer_id,
            pair.meter_slug,
            event.step.hour,
        )
        await save_progress(conn, pair, before, after)


class StripeExportSession:
    """The statements of one export session, all on the connection that holds
    the export lock: valid only inside `StripeExportStore.session()`."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def pairs_to_export(self, scope: ExportScope, closed_before: datetime, *, check_exported: bool) -> list[Pair]:
        return await pairs_to_export(self._conn, scope, closed_before, check_exported=check_exported)

    async def load_state(self, pair: Pair) -> PairState:
        return await load_state(self._conn, pair)

    async def hourly_usage(
        self, scope: ExportScope, pair: Pair, since: datetime | None, closed_before: datetime
    ) -> HourlyUsage:
        return await hourly_usage(self._conn, scope, pair, since, closed_before)

    async def save_progress(self, pair: Pair, before: Progress, after: Progress, skipped_hours: int = 0) -> None:
        await save_progress(self._conn, pair, before, after, skipped_hours)

    async def skips_logged(self, pair: Pair, hours: int) -> None:
        await skips_logged(self._conn, pair, hours)

    async def decide_event(
        self, pair: Pair, saved: Progress, current: Progress, event: PendingEvent, skipped_hours: int = 0
    ) -> None:
        await decide_event(self._conn, pair, saved, current, event, skipped_hours)

    async def acknowledge_event(self, pair: Pair, before: Progress, event: PendingEvent) -> None:
        await acknowledge_event(self._conn, pair, before, event)

    async def abandon_event(self, pair: Pair, before: Progress, event: PendingEvent, after: Progress) -> None:
        await abandon_event(self._conn, pair, before, event, after)


class StripeExportStore:
    """Where the exporter's sessions come from: a pooled connection held for
    as long as this replica exports, with the export lock on it."""

    def __init__(self, pool: ConnectionSource, *, acquire_timeout: float) -> None:
        self._pool = pool
        # Bounds only the wait for the connection: a session lasts as long as
        # the export does, each of its statements bounded by its own timeout.
        self._acquire_timeout = acquire_timeout

    @asynccontextmanager
    async def session(self) -> AsyncIterator[StripeExportSession | None]:
        """A session holding the export lock, or None while another replica
        holds it. On exit the lock is released, unless the connection is
        closed already (the lock went with it); the connection returns to the
        pool either way."""
        async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
            if not await try_lock(conn):
                yield None
                return
            try:
                yield StripeExportSession(conn)
            finally:
                if not conn.is_closed():
                    await unlock(conn)
