"""Hourly rollups: every SQL rule that writes or rebuilds them.

A rollup bucket is (customer, meter, UTC hour, price, values of the meter's
declared dimensions). Buckets are written in the transaction that writes their
events, by one statement per batch (`ROLLUP_UPSERTS`, a pair of CTEs that the
batching writer puts into its single statement, and `add_events` for the other
writers). A void rebuilds its event's bucket from the ledger, which is exact
for every aggregation (a MAX or LATEST cannot be un-applied by arithmetic).

`FROM_EVENTS` is the one definition of a bucket computed from the events: the
rebuild after a void, the rebuild of a meter whose layout changed, and the
audit (metering.ledger.audit) all use it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from metering.domain.catalog import Catalog, Meter
from metering.domain.records import StoredEvent
from metering.domain.windows import HOUR, floor_hour
from metering.ledger.migrate import MIGRATION_LOCK_KEY
from metering.ledger.pool import Connection
from metering.ledger.sql import NOT_VOIDED, Sql

log = logging.getLogger(__name__)

# The UTC hour of an instant; the bucket every event is counted in.
HOUR_SQL = "date_trunc('hour', {time}, 'UTC')"

# The values of the declared dimensions `{dims}` (text[]) in the properties
# `{props}`: the SQL twin of Meter.dimension_values.
DIMENSIONS_SQL = (
    "(SELECT coalesce(jsonb_object_agg(d.key, d.value), '{{}}'::jsonb) "
    "FROM jsonb_each({props}) d WHERE d.key = ANY({dims}))"
)

# How long one statement of a meter's rebuild may take (a scan of its events).
REBUILD_TIMEOUT_SECONDS = 6 * 3600.0

ROLLUP_KEY = "customer_id, meter_slug, hour, price_slug, dimensions"
ROLLUP_COLUMNS = (
    f"{ROLLUP_KEY}, event_count, quantity_sum, quantity_max, latest_quantity, latest_event_time, latest_event_id"
)

# The aggregates of a bucket over events `{e}` (the order of LATEST is the
# events query's: event time, then event id).
_BUCKET_AGGREGATES = (
    "count(*) AS event_count, sum({e}.quantity) AS quantity_sum, max({e}.quantity) AS quantity_max, "
    "(array_agg({e}.quantity ORDER BY {e}.event_time DESC, {e}.event_id DESC))[1] AS latest_quantity, "
    "max({e}.event_time) AS latest_event_time, "
    "(array_agg({e}.event_id ORDER BY {e}.event_time DESC, {e}.event_id DESC))[1] AS latest_event_id"
)

# Two CTEs that add the events of a relation `rollup_src` (customer_id,
# meter_slug, price_slug, event_time, event_id, quantity, dimensions,
# unique_value) to their buckets: ROLLUP_ROWS the buckets, ROLLUP_VALUE_ROWS
# the distinct values of UNIQUE_COUNT meters (a statement whose events carry no
# unique value leaves it out: it scans every event for none, ~0.7 ms a batch
# of 1,000). Rows go in key order, so concurrent writers lock bucket rows in
# one order and cannot deadlock on them.
ROLLUP_ROWS = f"""
    rollup_rows AS (
        INSERT INTO usage_rollups AS r ({ROLLUP_COLUMNS})
        SELECT s.customer_id, s.meter_slug, {HOUR_SQL.format(time="s.event_time")}, s.price_slug, s.dimensions,
               {_BUCKET_AGGREGATES.format(e="s")}
          FROM rollup_src s
         GROUP BY 1, 2, 3, 4, 5
         ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT ({ROLLUP_KEY}) DO UPDATE
           SET event_count = r.event_count + EXCLUDED.event_count,
               quantity_sum = r.quantity_sum + EXCLUDED.quantity_sum,
               quantity_max = greatest(r.quantity_max, EXCLUDED.quantity_max),
               latest_quantity = CASE WHEN (EXCLUDED.latest_event_time, EXCLUDED.latest_event_id)
                                           > (r.latest_event_time, r.latest_event_id)
                                      THEN EXCLUDED.latest_quantity ELSE r.latest_quantity END,
               latest_event_time = CASE WHEN (EXCLUDED.latest_event_time, EXCLUDED.latest_event_id)
                                             > (r.latest_event_time, r.latest_event_id)
                                        THEN EXCLUDED.latest_event_time ELSE r.latest_event_time END,
               latest_event_id = CASE WHEN (EXCLUDED.latest_event_time, EXCLUDED.latest_event_id)
                                           > (r.latest_event_time, r.latest_event_id)
                                      THEN EXCLUDED.latest_event_id ELSE r.latest_event_id END
    )"""
ROLLUP_VALUE_ROWS = f"""
    rollup_value_rows AS (
        INSERT INTO usage_rollup_values AS v ({ROLLUP_KEY}, value, event_count)
        SELECT s.customer_id, s.meter_slug, {HOUR_SQL.format(time="s.event_time")}, s.price_slug, s.dimensions,
               s.unique_value, count(*)
          FROM rollup_src s
         WHERE s.unique_value IS NOT NULL
         GROUP BY 1, 2, 3, 4, 5, 6
         ORDER BY 1, 2, 3, 4, 5, 6
        ON CONFLICT ({ROLLUP_KEY}, value) DO UPDATE SET event_count = v.event_count + EXCLUDED.event_count
    )"""
ROLLUP_UPSERTS = f"{ROLLUP_ROWS.strip()}, {ROLLUP_VALUE_ROWS.strip()}"


def rollup_upserts(has_unique_values: bool) -> str:
    """The rollup CTEs a statement's events need (see ROLLUP_ROWS)."""
    return ROLLUP_UPSERTS if has_unique_values else ROLLUP_ROWS.strip()


@dataclass(frozen=True, slots=True)
class RollupInput:
    """One newly stored event as its bucket sees it."""

    customer_id: str
    meter_slug: str
    price_slug: str
    event_time: datetime
    event_id: UUID
    quantity: Decimal
    dimensions: dict[str, str]
    unique_value: str | None


# A condition on the events `e` a rebuild or an audit covers, with its
# parameters added to the statement being built.
Scope = Callable[[Sql], str]


def buckets_from_events(meter: Meter, sql: Sql, scope: Scope) -> str:
    """A SELECT of the buckets (in ROLLUP_COLUMNS order) computed from the
    events of `meter` in `scope` that still count."""
    return f"""
        SELECT e.customer_id, e.meter_slug, {HOUR_SQL.format(time="e.event_time")} AS hour, e.price_slug,
               {_dimensions(meter, sql)} AS dimensions, {_BUCKET_AGGREGATES.format(e="e")}
          FROM usage_events e
         WHERE e.meter_slug = {sql.param(meter.slug)} AND {scope(sql)} AND {NOT_VOIDED}
         GROUP BY 1, 2, 3, 4, 5
    """


def values_from_events(meter: Meter, sql: Sql, scope: Scope) -> str:
    """A SELECT of the distinct values per bucket of a UNIQUE_COUNT meter, with
    the number of events carrying each, from the events that still count."""
    assert meter.unique_property is not None
    unique = sql.param(meter.unique_property)
    return f"""
        SELECT e.customer_id, e.meter_slug, {HOUR_SQL.format(time="e.event_time")} AS hour, e.price_slug,
               {_dimensions(meter, sql)} AS dimensions, e.properties ->> {unique} AS value, count(*) AS event_count
          FROM usage_events e
         WHERE e.meter_slug = {sql.param(meter.slug)} AND {scope(sql)} AND {NOT_VOIDED} AND e.properties ? {unique}
         GROUP BY 1, 2, 3, 4, 5, 6
    """


def _dimensions(meter: Meter, sql: Sql) -> str:
    return DIMENSIONS_SQL.format(props="e.properties", dims=sql.param(list(meter.dimensions), "::text[]"))


def rollup_input(meter: Meter, stored: StoredEvent, unique_value: str | None) -> RollupInput:
    """The bucket view of a stored event."""
    return RollupInput(
        customer_id=stored.customer_id,
        meter_slug=stored.meter_slug,
        price_slug=stored.price_slug,
        event_time=stored.event_time,
        event_id=stored.event_id,
        quantity=stored.quantity,
        dimensions=meter.dimension_values(stored.properties),
        unique_value=unique_value,
    )


async def add_events(conn: Connection, events: Sequence[RollupInput]) -> None:
    """Add newly inserted events to their buckets, in one statement; for the
    writers other than the batching writer (which inlines ROLLUP_UPSERTS)."""
    if not events:
        return
    await conn.execute(
        f"""
        WITH rollup_src AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::uuid[], $6::numeric[],
                                 $7::jsonb[], $8::text[])
                   AS s (customer_id, meter_slug, price_slug, event_time, event_id, quantity, dimensions,
                         unique_value)
        ), {ROLLUP_UPSERTS.strip()}
        SELECT 1
        """,
        [e.customer_id for e in events],
        [e.meter_slug for e in events],
        [e.price_slug for e in events],
        [e.event_time for e in events],
        [e.event_id for e in events],
        [e.quantity for e in events],
        [e.dimensions for e in events],
        [e.unique_value for e in events],
    )


async def rebuild_bucket(conn: Connection, meter: Meter, bucket: RollupInput) -> None:
    """Rebuild the bucket of `bucket`'s event from the events that still count
    (after a void). The bucket row is locked first, so a writer adding to it
    concurrently is either already counted or adds to the rebuilt row."""
    hour = floor_hour(bucket.event_time)
    key = (bucket.customer_id, meter.slug, hour, bucket.price_slug, bucket.dimensions)
    key_condition = "customer_id = $1 AND meter_slug = $2 AND hour = $3 AND price_slug = $4 AND dimensions = $5::jsonb"
    await conn.execute(f"SELECT 1 FROM usage_rollups WHERE {key_condition} FOR UPDATE", *key)
    await conn.execute(f"DELETE FROM usage_rollups WHERE {key_condition}", *key)
    await conn.execute(f"DELETE FROM usage_rollup_values WHERE {key_condition}", *key)

    def in_bucket(sql: Sql) -> str:
        return (
            f"e.customer_id = {sql.param(bucket.customer_id)} AND e.price_slug = {sql.param(bucket.price_slug)} "
            f"AND e.event_time >= {sql.param(hour)} AND e.event_time < {sql.param(hour + HOUR)}"
        )

    await _insert_from_events(conn, meter, in_bucket, dimensions=bucket.dimensions)


async def _insert_from_events(
    conn: Connection,
    meter: Meter,
    scope: Scope,
    *,
    dimensions: dict[str, str] | None = None,
    statement_seconds: float | None = None,
) -> None:
    """Insert the buckets (and distinct values) computed from the events in
    `scope`, only those of `dimensions` when given. `statement_seconds`: the
    client-side bound on each statement (None: the connection's command timeout)."""
    sql = Sql()
    select = buckets_from_events(meter, sql, scope)
    only = "" if dimensions is None else f" WHERE b.dimensions = {sql.param(dimensions, '::jsonb')}"
    await conn.execute(
        f"INSERT INTO usage_rollups ({ROLLUP_COLUMNS}) SELECT * FROM ({select}) b{only}",
        *sql.args,
        timeout=statement_seconds,
    )
    if meter.unique_property is not None:
        sql = Sql()
        select = values_from_events(meter, sql, scope)
        only = "" if dimensions is None else f" WHERE b.dimensions = {sql.param(dimensions, '::jsonb')}"
        await conn.execute(
            f"INSERT INTO usage_rollup_values ({ROLLUP_KEY}, value, event_count) SELECT * FROM ({select}) b{only}",
            *sql.args,
            timeout=statement_seconds,
        )


async def rebuild_meter(conn: Connection, meter: Meter) -> None:
    """Rebuild every bucket of a meter from the events, inside the caller's
    transaction, with the rollup tables locked against writers meanwhile."""
    await conn.execute(
        "LOCK TABLE usage_rollups, usage_rollup_values IN EXCLUSIVE MODE", timeout=REBUILD_TIMEOUT_SECONDS
    )
    # A scan of the meter's whole history: not bound by the per-statement
    # timeout of ordinary calls (METERING_DB_TIMEOUT).
    await conn.execute("SET LOCAL statement_timeout = 0")
    for table in ("usage_rollups", "usage_rollup_values"):
        await conn.execute(f"DELETE FROM {table} WHERE meter_slug = $1", meter.slug, timeout=REBUILD_TIMEOUT_SECONDS)
    await _insert_from_events(conn, meter, lambda sql: "TRUE", statement_seconds=REBUILD_TIMEOUT_SECONDS)


async def sync_layouts(conn: Connection, catalog: Catalog) -> list[str]:
    """Rebuild the rollups of every meter whose declared dimensions or counted
    property differ from those its rollups were built with (a new meter, a
    changed catalog, a ledger from before rollups existed). Run at start-up
    under the migration lock; returns the meters rebuilt. Its cost is a scan
    of those meters' events."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)  # replicas starting together
    try:
        return await _sync_layouts(conn, catalog)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def _sync_layouts(conn: Connection, catalog: Catalog) -> list[str]:
    rebuilt: list[str] = []
    rows = await conn.fetch("SELECT meter_slug, dimensions, unique_property FROM rollup_layouts")
    recorded = {row["meter_slug"]: (tuple(row["dimensions"]), row["unique_property"]) for row in rows}
    for meter in catalog.meters.values():
        layout = (meter.dimensions, meter.unique_property)
        if recorded.get(meter.slug) == layout:
            continue
        async with conn.transaction():
            await rebuild_meter(conn, meter)
            await conn.execute(
                """
                INSERT INTO rollup_layouts (meter_slug, dimensions, unique_property) VALUES ($1, $2, $3)
                ON CONFLICT (meter_slug) DO UPDATE
                   SET dimensions = EXCLUDED.dimensions, unique_property = EXCLUDED.unique_property
                """,
                meter.slug,
                list(meter.dimensions),
                meter.unique_property,
            )
        log.info("rollups of meter %s built for dimensions %s", meter.slug, list(meter.dimensions))
        rebuilt.append(meter.slug)
    return rebuilt
