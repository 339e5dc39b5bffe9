"""Read queries over the event history: GetUsage, ListUsageEvents, bills.

Aggregations run in SQL with the meter's own aggregation, over windows that
the caller computed (metering.domain.windows), using the index
(customer_id, meter_slug, event_time, event_id). Results come in a stable
order and are paginated by keyset, never by offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from metering.domain.catalog import Meter
from metering.domain.records import EventPosition, StoredEvent
from metering.domain.windows import Window, whole_hours
from metering.ledger.pool import PoolUser, translate_errors
from metering.ledger.sql import EVENT_FROM, EVENT_SELECT, NOT_VOIDED, PARTS_VALUE_SQL, VALUE_SQL, Sql, stored_event


@dataclass(frozen=True, slots=True)
class PropertyFilter:
    """Events whose property `key` has one of `values` (a GetUsage filter)."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UsageCursor:
    """Where a page ended: the last row's window index and group values."""

    window_index: int
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AggregateRow:
    """One window and group of an aggregation, as SQL computed it."""

    window_index: int  # 1-based position in the windows given
    window: Window
    groups: tuple[str, ...]  # group values ("" when the property is absent)
    value: Decimal
    event_count: int


@dataclass(frozen=True, slots=True)
class AggregateQuery:
    """One meter's aggregate per window (and group) for one customer."""

    customer_id: str
    meter: Meter
    windows: Sequence[Window]
    group_by: Sequence[str] = ()
    group_by_price: bool = False  # a leading group on the price each event was recorded with
    filters: Sequence[PropertyFilter] = ()
    after: UsageCursor | None = None  # keyset: only rows after this one
    limit: int | None = None


def aggregate_sql(query: AggregateQuery) -> tuple[str, list[Any]]:
    """The statement (and its arguments) that `UsageReports.aggregate` runs;
    separate so that benchmarks can EXPLAIN exactly what the service runs.

    Whole UTC hours are read from the hourly rollups and only the partial
    hours at each window's edges from the events, so the cost follows the
    number of windows and buckets, not of events. Grouping or filtering by a
    property the meter does not declare as a dimension reads every event of
    the range instead (`raw_aggregate_sql`)."""
    keys = [*query.group_by, *(f.key for f in query.filters)]
    if not query.meter.serves_from_rollups(keys):
        return raw_aggregate_sql(query)
    sql = Sql()
    customer = sql.param(query.customer_id)
    meter_param = sql.param(query.meter.slug)
    whole = [whole_hours(w) for w in query.windows]
    starts = sql.param([w[0] for w in query.windows], "::timestamptz[]")
    ends = sql.param([w[1] for w in query.windows], "::timestamptz[]")
    whole_starts = sql.param([w[0] for w in whole], "::timestamptz[]")
    whole_ends = sql.param([w[1] for w in whole], "::timestamptz[]")
    unique = sql.param(query.meter.unique_property) if query.meter.unique_property else None
    bucket = f"r.customer_id = {customer} AND r.meter_slug = {meter_param}"
    event = f"e.customer_id = {customer} AND e.meter_slug = {meter_param} AND {NOT_VOIDED}"
    event_columns = (
        "w.n, e.price_slug, e.properties AS props, 1::bigint AS event_count, e.quantity AS quantity_sum, "
        "e.quantity AS quantity_max, e.quantity AS latest_quantity, e.event_time AS latest_event_time, "
        f"e.event_id AS latest_event_id, {f'e.properties ->> {unique}' if unique else 'NULL::text'} AS value"
    )
    parts = [
        f"""SELECT w.n, r.price_slug, r.dimensions, r.event_count, r.quantity_sum, r.quantity_max, r.latest_quantity,
                   r.latest_event_time, r.latest_event_id, NULL::text
              FROM w JOIN usage_rollups r ON {bucket} AND r.hour >= w.whole_start AND r.hour < w.whole_end""",
        # The leading and trailing partial hours, each an index range scan.
        f"""SELECT {event_columns}
              FROM w JOIN usage_events e ON {event}
                   AND e.event_time >= w.window_start AND e.event_time < w.whole_start""",
        f"""SELECT {event_columns}
              FROM w JOIN usage_events e ON {event}
                   AND e.event_time >= w.whole_end AND e.event_time < w.window_end""",
    ]
    if unique is not None:
        # Distinct values of whole hours: a value counts once however many
        # hours (or edge events) carry it.
        parts.append(
            f"""SELECT w.n, r.price_slug, r.dimensions, 0::bigint, NULL::numeric, NULL::numeric, NULL::numeric,
                       NULL::timestamptz, NULL::uuid, r.value
                  FROM w JOIN usage_rollup_values r ON {bucket} AND r.hour >= w.whole_start AND r.hour < w.whole_end"""
        )
    group_exprs = ["p.price_slug"] if query.group_by_price else []
    group_exprs += [f"p.props ->> {sql.param(key)}" for key in query.group_by]
    filters = "".join(
        f" AND p.props ->> {sql.param(f.key)} = ANY({sql.param(list(f.values), '::text[]')})" for f in query.filters
    )
    shape = _Shape(sql, group_exprs, query)
    statement = f"""
        WITH w AS (
            SELECT * FROM unnest({starts}, {ends}, {whole_starts}, {whole_ends})
                   WITH ORDINALITY AS w (window_start, window_end, whole_start, whole_end, n)
        ), parts (n, price_slug, props, event_count, quantity_sum, quantity_max, latest_quantity, latest_event_time,
                  latest_event_id, value) AS (
            {" UNION ALL ".join(parts)}
        )
        SELECT w.n, w.window_start, w.window_end{shape.select_groups},
               coalesce({PARTS_VALUE_SQL[query.meter.aggregation]}, 0) AS value,
               coalesce(sum(p.event_count), 0)::bigint AS event_count
          FROM w LEFT JOIN parts p ON p.n = w.n{filters}
          {shape.where}
         GROUP BY w.n, w.window_start, w.window_end{shape.group_clause}
         {shape.having}
         ORDER BY w.n{shape.group_clause}
         {shape.limit}
    """
    return statement, sql.args


def raw_aggregate_sql(query: AggregateQuery) -> tuple[str, list[Any]]:
    """The same aggregates computed from every event of the windows: for
    groupings the rollups do not keep, for the benchmark that compares both
    ways, and for the property test that checks they agree."""
    customer_id, meter, windows = query.customer_id, query.meter, query.windows
    sql = Sql()
    customer = sql.param(customer_id)
    starts = sql.param([w[0] for w in windows], "::timestamptz[]")
    ends = sql.param([w[1] for w in windows], "::timestamptz[]")
    meter_param = sql.param(meter.slug)
    group_exprs = ["e.price_slug"] if query.group_by_price else []
    group_exprs += [f"e.properties ->> {sql.param(key)}" for key in query.group_by]
    value = VALUE_SQL[meter.aggregation].format(
        unique=sql.param(meter.unique_property) if meter.unique_property else "NULL"
    )
    conditions = [
        f"e.customer_id = {customer}",
        f"e.meter_slug = {meter_param}",
        "e.event_time >= w.window_start",
        "e.event_time < w.window_end",
    ]
    conditions += [
        f"e.properties ->> {sql.param(f.key)} = ANY({sql.param(list(f.values), '::text[]')})" for f in query.filters
    ]
    conditions.append(NOT_VOIDED)
    shape = _Shape(sql, group_exprs, query)
    statement = f"""
        SELECT w.n, w.window_start, w.window_end{shape.select_groups},
               coalesce({value}, 0) AS value, count(e.event_id) AS event_count
          FROM unnest({starts}, {ends}) WITH ORDINALITY AS w (window_start, window_end, n)
          LEFT JOIN LATERAL (SELECT * FROM usage_events e WHERE {" AND ".join(conditions)}) e ON true
          {shape.where}
         GROUP BY w.n, w.window_start, w.window_end{shape.group_clause}
         {shape.having}
         ORDER BY w.n{shape.group_clause}
         {shape.limit}
    """
    return statement, sql.args


class _Shape:
    """What both ways of aggregating share: the group columns, and keyset
    pagination (rows after the cursor's window and group values) with a limit."""

    def __init__(self, sql: Sql, group_exprs: Sequence[str], query: AggregateQuery) -> None:
        # Group values compare in byte order ("C") whatever the database's locale.
        group_values = [f"coalesce({expr}, '') COLLATE \"C\"" for expr in group_exprs]
        groups = [f"g{i}" for i in range(len(group_values))]
        self.select_groups = "".join(f", {v} AS {name}" for v, name in zip(group_values, groups, strict=True))
        self.group_clause = "".join(f", {name}" for name in groups)
        self.where = self.having = ""
        after = query.after
        if after is not None:
            self.where = f"WHERE w.n >= {sql.param(after.window_index)}"
            key = ", ".join(["w.n", *group_values])  # HAVING cannot name output columns
            bound = ", ".join([sql.param(after.window_index), *(sql.param(g) for g in after.groups)])
            self.having = f"HAVING ({key}) > ({bound})"
        self.limit = f"LIMIT {sql.param(query.limit)}" if query.limit is not None else ""


class UsageReports(PoolUser):
    """The read queries over the event history (and the rollups, for whole hours): aggregations
    in windows, event listings and what bills need. Results come in a stable order and page by
    keyset, so a page boundary never skips or repeats an event."""

    async def aggregate(self, query: AggregateQuery) -> list[AggregateRow]:
        """The meter's aggregate per window and group, ordered by window then
        group values (byte order). Every window is present: an empty one as a
        single row with value 0, event count 0 and empty group values."""
        statement, args = aggregate_sql(query)
        groups = len(query.group_by) + (1 if query.group_by_price else 0)
        async with translate_errors(), self._connection() as conn:
            rows = await conn.fetch(statement, *args)
        return [
            AggregateRow(
                window_index=row["n"],
                window=(row["window_start"], row["window_end"]),
                groups=tuple(row[f"g{i}"] for i in range(groups)),
                value=row["value"],
                event_count=row["event_count"],
            )
            for row in rows
        ]

    async def meters_with_usage(
        self, customer_id: str, start: datetime, end: datetime, candidates: Sequence[str]
    ) -> list[str]:
        """Which of the `candidates` meters have events that count in [start, end):
        one probe of the rollups (whole hours) and of the edge events per meter."""
        first, last = whole_hours((start, end))
        async with translate_errors(), self._connection() as conn:
            rows = await conn.fetch(
                f"""
                SELECT m.slug FROM unnest($6::text[]) AS m (slug)
                 WHERE EXISTS (SELECT 1 FROM usage_rollups r
                                WHERE r.customer_id = $1 AND r.meter_slug = m.slug AND r.hour >= $4 AND r.hour < $5)
                    OR EXISTS (SELECT 1 FROM usage_events e
                                WHERE e.customer_id = $1 AND e.meter_slug = m.slug AND {NOT_VOIDED}
                                  AND ((e.event_time >= $2 AND e.event_time < $4)
                                       OR (e.event_time >= $5 AND e.event_time < $3)))
                 ORDER BY m.slug
                """,
                customer_id,
                start,
                end,
                first,
                last,
                list(candidates),
            )
        return [row["slug"] for row in rows]

    async def list_events(
        self,
        customer_id: str,
        *,
        meter_slug: str | None,
        start: datetime | None,
        end: datetime | None,
        before: EventPosition | None,
        limit: int,
    ) -> list[StoredEvent]:
        """Events newest first by (event_time, event_id), strictly before `before`."""
        sql = Sql()
        conditions = [f"e.customer_id = {sql.param(customer_id)}"]
        if meter_slug:
            conditions.append(f"e.meter_slug = {sql.param(meter_slug)}")
        if start is not None:
            conditions.append(f"e.event_time >= {sql.param(start)}")
        if end is not None:
            conditions.append(f"e.event_time < {sql.param(end)}")
        if before is not None:
            bound = f"({sql.param(before.event_time)}, {sql.param(before.event_id, '::uuid')})"
            conditions.append(f"(e.event_time, e.event_id) < {bound}")
        statement = (
            f"SELECT {EVENT_SELECT} FROM {EVENT_FROM} WHERE {' AND '.join(conditions)} "
            f"ORDER BY e.event_time DESC, e.event_id DESC LIMIT {sql.param(limit)}"
        )
        async with translate_errors(), self._connection() as conn:
            rows = await conn.fetch(statement, *sql.args)
        return [stored_event(row) for row in rows]

    async def plan_at(self, customer_id: str, instant: datetime) -> str | None:
        """The plan the customer was on at `instant` (its first plan if earlier)."""
        async with translate_errors(), self._connection() as conn:
            return await conn.fetchval(  # type: ignore[no-any-return]
                """
                SELECT plan_slug FROM customer_plan_history
                 WHERE customer_id = $1
                 ORDER BY effective_at <= $2 DESC,
                          CASE WHEN effective_at <= $2 THEN effective_at END DESC,
                          effective_at ASC
                 LIMIT 1
                """,
                customer_id,
                instant,
            )
