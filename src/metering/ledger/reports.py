"""Read queries over the event history: GetUsage, ListUsageEvents, bills.

Aggregations run in SQL with the meter's own aggregation, over windows that
the caller computed (metering.windows), using the index
(customer_id, meter_slug, event_time, event_id). Results come in a stable
order and are paginated by keyset, never by offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from metering.catalog import Meter
from metering.ledger.pool import PoolUser, translate_errors
from metering.ledger.records import StoredEvent
from metering.ledger.sql import EVENT_FROM, EVENT_SELECT, NOT_VOIDED, VALUE_SQL, Sql, stored_event
from metering.windows import Window


@dataclass(frozen=True, slots=True)
class PropertyFilter:
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UsageCursor:
    """Where a page ended: the last row's window index and group values."""

    window_index: int
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AggregateRow:
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
    separate so that benchmarks can EXPLAIN exactly what the service runs."""
    customer_id, meter, windows = query.customer_id, query.meter, query.windows
    group_by, filters, after = query.group_by, query.filters, query.after
    sql = Sql()
    customer = sql.param(customer_id)
    starts = sql.param([w[0] for w in windows], "::timestamptz[]")
    ends = sql.param([w[1] for w in windows], "::timestamptz[]")
    meter_param = sql.param(meter.slug)
    # Group values compare in byte order ("C") whatever the database's locale.
    group_exprs = ["e.price_slug"] if query.group_by_price else []
    group_exprs += [f"e.properties ->> {sql.param(key)}" for key in group_by]
    group_values = [f"coalesce({expr}, '') COLLATE \"C\"" for expr in group_exprs]
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
        f"e.properties ->> {sql.param(f.key)} = ANY({sql.param(list(f.values), '::text[]')})" for f in filters
    ]
    conditions.append(NOT_VOIDED)
    groups = [f"g{i}" for i in range(len(group_values))]
    select_groups = "".join(f", {v} AS {name}" for v, name in zip(group_values, groups, strict=True))
    group_clause = "".join(f", {name}" for name in groups)
    where = having = ""
    if after is not None:
        where = f"WHERE w.n >= {sql.param(after.window_index)}"
        key = ", ".join(["w.n", *group_values])  # HAVING cannot name output columns
        bound = ", ".join([sql.param(after.window_index), *(sql.param(g) for g in after.groups)])
        having = f"HAVING ({key}) > ({bound})"
    limit_clause = f"LIMIT {sql.param(query.limit)}" if query.limit is not None else ""
    statement = f"""
        SELECT w.n, w.window_start, w.window_end{select_groups},
               coalesce({value}, 0) AS value, count(e.event_id) AS event_count
          FROM unnest({starts}, {ends}) WITH ORDINALITY AS w (window_start, window_end, n)
          LEFT JOIN LATERAL (SELECT * FROM usage_events e WHERE {" AND ".join(conditions)}) e ON true
          {where}
         GROUP BY w.n, w.window_start, w.window_end{group_clause}
         {having}
         ORDER BY w.n{group_clause}
         {limit_clause}
    """
    return statement, sql.args


class UsageReports(PoolUser):
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

    async def meters_with_usage(self, customer_id: str, start: datetime, end: datetime) -> list[str]:
        async with translate_errors(), self._connection() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT e.meter_slug FROM usage_events e "
                f"WHERE e.customer_id = $1 AND e.event_time >= $2 AND e.event_time < $3 AND {NOT_VOIDED} "
                "ORDER BY e.meter_slug",
                customer_id,
                start,
                end,
            )
        return [row["meter_slug"] for row in rows]

    async def list_events(
        self,
        customer_id: str,
        *,
        meter_slug: str | None,
        start: datetime | None,
        end: datetime | None,
        before: tuple[datetime, str] | None,
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
            bound = f"({sql.param(before[0])}, {sql.param(before[1], '::uuid')})"
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
