"""Ledger audit: recompute every counter and rollup bucket from the events and compare.

The counters are a cache of the events (the limit decision reads them, not
the events), so the one invariant that proves "no double count, nothing lost
between event and counter" is: each counter equals its events aggregated with
the meter's own definition (sql.VALUE_SQL, the same one bills and voids use).
The hourly rollups are another cache of the events (usage queries and bills
read them): each bucket must equal its events aggregated by the one
definition in metering.ledger.rollups. Credit notes never credit more than
was invoiced: per invoice line, the line credit notes add up to at most the
line's amount, and per invoice every credit note to at most its total (each
note's amount being the sum of its lines). Run by `metering audit`, by the
fault tests and by the chaos script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from metering.domain.catalog import Catalog, Meter
from metering.ledger.pool import Connection, one_row
from metering.ledger.rollups import ROLLUP_COLUMNS, ROLLUP_KEY, buckets_from_events, values_from_events
from metering.ledger.sql import NOT_VOIDED, VALUE_SQL, Sql


@dataclass(frozen=True, slots=True)
class CounterMismatch:
    """A counter row that disagrees with the events it counts (or is missing): what the audit reports."""

    customer_id: str
    meter_slug: str
    period_start: datetime
    stored_used: Decimal | None  # None: no counter row although events count
    stored_events: int | None
    expected_used: Decimal
    expected_events: int


@dataclass(frozen=True, slots=True)
class RollupMismatch:
    """A rollup bucket (or one of its distinct values) that differs from its
    events: stored but not expected, expected but missing, or other figures."""

    customer_id: str
    meter_slug: str
    hour: datetime
    price_slug: str
    dimensions: dict[str, str]
    value: str | None  # the distinct value, for a UNIQUE_COUNT bookkeeping row


@dataclass(frozen=True, slots=True)
class CreditOverrun:
    """Credit notes that credit more than was invoiced: on an invoice line, or
    (meter and price empty) on the invoice's total; `invoiced` is None for a
    line the invoice does not have."""

    customer_id: str
    invoice_id: str
    meter_slug: str
    price_slug: str
    invoiced: Decimal | None
    credited: Decimal


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What `metering audit` found: the ledger's totals and every disagreement between counters,
    rollups and events. Zero mismatches is the invariant the audit checks."""

    customers: int
    events: int  # rows in usage_events, voided ones included
    voided: int
    counters: int
    duplicate_transaction_ids: int  # the unique constraint makes this 0; counted, not assumed
    unknown_meter_events: int  # events of a meter the catalog no longer defines
    unique_value_mismatches: int  # UNIQUE_COUNT bookkeeping rows without a counting event, or missing
    dangling_commits: int  # committed reservations whose event does not exist
    # Events and counters of a customer that does not exist. No foreign key checks
    # it per row (migration 0014): every writer holds the customer's row FOR SHARE
    # and no path deletes a customer; this count proves it.
    orphan_rows: int = 0
    mismatches: list[CounterMismatch] = field(default_factory=list)
    rollup_mismatches: list[RollupMismatch] = field(default_factory=list)
    rollups: int = 0  # rollup bucket rows checked
    credit_notes: int = 0  # credit notes checked
    credit_overruns: list[CreditOverrun] = field(default_factory=list)
    credit_note_amount_mismatches: int = 0  # line notes whose amount is not the sum of their lines
    # Wallets: grants whose amount less their net burns (kept per priced quantity)
    # is not their remaining credit, or whose remaining is below zero or above the amount...
    wallet_grant_mismatches: int = 0
    # ...and priced quantities whose covered credit falls outside 0 <= covered <= charged.
    wallet_spend_mismatches: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.mismatches
            or self.rollup_mismatches
            or self.credit_overruns
            or self.credit_note_amount_mismatches
            or self.duplicate_transaction_ids
            or self.unknown_meter_events
            or self.unique_value_mismatches
            or self.dangling_commits
            or self.orphan_rows
            or self.wallet_grant_mismatches
            or self.wallet_spend_mismatches
        )


class _Scope:
    """An optional restriction to some customers, as a condition on an alias."""

    def __init__(self, sql: Sql, customer_ids: Sequence[str] | None) -> None:
        self._param = None if customer_ids is None else sql.param(list(customer_ids), "::text[]")

    def on(self, alias: str) -> str:
        return "TRUE" if self._param is None else f"{alias}.customer_id = ANY({self._param})"


async def audit_ledger(conn: Connection, catalog: Catalog, customer_ids: Sequence[str] | None = None) -> AuditReport:
    """Check the ledger of `customer_ids` (every customer when None).

    Run it on a quiet ledger or inside a REPEATABLE READ transaction: a
    counter and its events are compared as of one snapshot.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        sql = Sql()
        scope = _Scope(sql, customer_ids)
        meters = list(catalog.meters)
        meters_param = sql.param(meters, "::text[]")
        totals = await one_row(
            conn,
            f"""
            SELECT (SELECT count(*) FROM customers c WHERE {scope.on("c")}) AS customers,
                   (SELECT count(*) FROM usage_events e WHERE {scope.on("e")}) AS events,
                   (SELECT count(*) FROM usage_voids v WHERE {scope.on("v")}) AS voided,
                   (SELECT count(*) FROM meter_counters c WHERE {scope.on("c")}) AS counters,
                   (SELECT count(*) FROM (SELECT 1 FROM usage_events e WHERE {scope.on("e")}
                                           GROUP BY e.customer_id, e.transaction_id HAVING count(*) > 1) d)
                       AS duplicate_transaction_ids,
                   (SELECT count(*) FROM usage_events e
                     WHERE {scope.on("e")} AND NOT (e.meter_slug = ANY({meters_param}))) AS unknown_meter_events,
                   (SELECT count(*) FROM reservations r
                     WHERE {scope.on("r")} AND r.status = 'committed'
                       AND NOT EXISTS (SELECT 1 FROM usage_events e
                                        WHERE e.customer_id = r.customer_id AND e.event_id = r.event_id))
                       AS dangling_commits,
                   (SELECT count(*) FROM usage_events e
                     WHERE {scope.on("e")}
                       AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = e.customer_id))
                   + (SELECT count(*) FROM meter_counters m
                       WHERE {scope.on("m")}
                         AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = m.customer_id))
                       AS orphan_rows,
                   (SELECT count(*) FROM credit_grants g
                     WHERE {scope.on("g")}
                       AND (g.remaining < 0 OR g.remaining > g.amount
                            OR g.amount - g.remaining
                               <> coalesce((SELECT sum(b.value::numeric)
                                              FROM wallet_spend s CROSS JOIN LATERAL jsonb_each_text(s.burned) b
                                             WHERE s.customer_id = g.customer_id AND b.key = g.grant_id), 0)))
                       AS wallet_grant_mismatches,
                   (SELECT count(*) FROM wallet_spend s
                      CROSS JOIN LATERAL (SELECT coalesce(sum(value::numeric), 0) AS covered
                                            FROM jsonb_each_text(s.burned)) j
                     WHERE {scope.on("s")} AND (j.covered < 0 OR j.covered > s.charged))
                       AS wallet_spend_mismatches
            """,
            *sql.args,
        )
        mismatches: list[CounterMismatch] = []
        rollup_mismatches: list[RollupMismatch] = []
        unique_value_mismatches = 0
        for meter in catalog.meters.values():
            mismatches += await _counter_mismatches(conn, meter, customer_ids)
            rollup_mismatches += await _rollup_mismatches(conn, meter, customer_ids)
            if meter.unique_property is not None:
                unique_value_mismatches += await _unique_value_mismatches(conn, meter, customer_ids)
                rollup_mismatches += await _rollup_value_mismatches(conn, meter, customer_ids)
        sql = Sql()
        rollups = await conn.fetchval(
            f"SELECT count(*) FROM usage_rollups r WHERE {_Scope(sql, customer_ids).on('r')}", *sql.args
        )
        credit_notes, amount_mismatches = await _credit_note_totals(conn, customer_ids)
        credit_overruns = await _credit_overruns(conn, customer_ids)
    return AuditReport(
        customers=totals["customers"],
        events=totals["events"],
        voided=totals["voided"],
        counters=totals["counters"],
        duplicate_transaction_ids=totals["duplicate_transaction_ids"],
        unknown_meter_events=totals["unknown_meter_events"],
        unique_value_mismatches=unique_value_mismatches,
        dangling_commits=totals["dangling_commits"],
        orphan_rows=totals["orphan_rows"],
        mismatches=mismatches,
        wallet_grant_mismatches=totals["wallet_grant_mismatches"],
        wallet_spend_mismatches=totals["wallet_spend_mismatches"],
        rollup_mismatches=rollup_mismatches,
        rollups=rollups,
        credit_notes=credit_notes,
        credit_overruns=credit_overruns,
        credit_note_amount_mismatches=amount_mismatches,
    )


# The lines of an invoice or a credit note (jsonb documents with "meter",
# "price" and "amount", amounts as exact decimal strings), one row each.
_LINE_AMOUNTS = "CROSS JOIN LATERAL jsonb_array_elements({alias}.lines) AS l (line)"


async def _credit_note_totals(conn: Connection, customer_ids: Sequence[str] | None) -> tuple[int, int]:
    """The credit notes checked, and those by line whose amount is not the sum of their lines."""
    sql = Sql()
    scope = _Scope(sql, customer_ids)
    row = await one_row(
        conn,
        f"""
        SELECT count(*) AS notes,
               count(*) FILTER (
                   WHERE NOT n.whole_invoice
                     AND n.amount IS DISTINCT FROM (SELECT sum((l.line ->> 'amount')::numeric)
                                                      FROM jsonb_array_elements(n.lines) AS l (line))
               ) AS mismatches
          FROM credit_notes n
         WHERE {scope.on("n")}
        """,
        *sql.args,
    )
    return row["notes"], row["mismatches"]


async def _credit_overruns(conn: Connection, customer_ids: Sequence[str] | None) -> list[CreditOverrun]:
    sql = Sql()
    scope = _Scope(sql, customer_ids)
    rows = await conn.fetch(
        f"""
        WITH invoiced AS (
            SELECT i.customer_id, i.invoice_id, l.line ->> 'meter' AS meter_slug, l.line ->> 'price' AS price_slug,
                   sum((l.line ->> 'amount')::numeric) AS amount
              FROM invoices i {_LINE_AMOUNTS.format(alias="i")}
             WHERE {scope.on("i")}
             GROUP BY 1, 2, 3, 4
        ), credited AS (
            SELECT n.customer_id, n.invoice_id, l.line ->> 'meter' AS meter_slug, l.line ->> 'price' AS price_slug,
                   sum((l.line ->> 'amount')::numeric) AS amount
              FROM credit_notes n {_LINE_AMOUNTS.format(alias="n")}
             WHERE {scope.on("n")}
             GROUP BY 1, 2, 3, 4
        ), credited_totals AS (
            SELECT n.customer_id, n.invoice_id, sum(n.amount) AS amount
              FROM credit_notes n
             WHERE {scope.on("n")}
             GROUP BY 1, 2
        )
        SELECT c.customer_id, c.invoice_id::text AS invoice_id, c.meter_slug, c.price_slug,
               x.amount AS invoiced, c.amount AS credited
          FROM credited c
          LEFT JOIN invoiced x USING (customer_id, invoice_id, meter_slug, price_slug)
         WHERE x.amount IS NULL OR c.amount > x.amount
        UNION ALL
        SELECT t.customer_id, t.invoice_id::text, '', '', i.total, t.amount
          FROM credited_totals t
          LEFT JOIN invoices i USING (customer_id, invoice_id)
         WHERE i.total IS NULL OR t.amount > i.total
         ORDER BY 1, 2, 3, 4
        """,
        *sql.args,
    )
    return [CreditOverrun(**dict(row)) for row in rows]


async def _counter_mismatches(
    conn: Connection, meter: Meter, customer_ids: Sequence[str] | None
) -> list[CounterMismatch]:
    sql = Sql()
    meter_param = sql.param(meter.slug)
    scope = _Scope(sql, customer_ids)
    unique = sql.param(meter.unique_property) if meter.unique_property is not None else ""
    value = VALUE_SQL[meter.aggregation].format(unique=unique)
    # A counter row with nothing counted (a reservation's period, every event
    # voided) is consistent with no events; an event without its counter is not.
    rows = await conn.fetch(
        f"""
        WITH expected AS (
            SELECT e.customer_id, e.period_start, {value} AS used, count(e.event_id) AS events
              FROM usage_events e
             WHERE e.meter_slug = {meter_param} AND {scope.on("e")} AND {NOT_VOIDED}
             GROUP BY e.customer_id, e.period_start
        ), stored AS (
            SELECT c.customer_id, c.period_start, c.used, c.event_count AS events
              FROM meter_counters c
             WHERE c.meter_slug = {meter_param} AND {scope.on("c")}
        )
        SELECT coalesce(s.customer_id, x.customer_id) AS customer_id,
               coalesce(s.period_start, x.period_start) AS period_start,
               s.used AS stored_used, s.events AS stored_events,
               coalesce(x.used, 0) AS expected_used, coalesce(x.events, 0) AS expected_events
          FROM stored s FULL JOIN expected x ON x.customer_id = s.customer_id AND x.period_start = s.period_start
         WHERE s.used IS DISTINCT FROM coalesce(x.used, 0) OR s.events IS DISTINCT FROM coalesce(x.events, 0)
         ORDER BY 1, 2
        """,
        *sql.args,
    )
    return [
        CounterMismatch(
            customer_id=row["customer_id"],
            meter_slug=meter.slug,
            period_start=row["period_start"],
            stored_used=row["stored_used"],
            stored_events=row["stored_events"],
            expected_used=row["expected_used"],
            expected_events=row["expected_events"],
        )
        for row in rows
    ]


async def _unique_value_mismatches(conn: Connection, meter: Meter, customer_ids: Sequence[str] | None) -> int:
    """Distinct values remembered for UNIQUE_COUNT limits must be exactly the
    values of the events that still count."""
    sql = Sql()
    meter_param = sql.param(meter.slug)
    prop = sql.param(meter.unique_property)
    scope = _Scope(sql, customer_ids)
    count = await conn.fetchval(
        f"""
        WITH expected AS (
            SELECT DISTINCT e.customer_id, e.period_start, e.properties ->> {prop} AS value
              FROM usage_events e
             WHERE e.meter_slug = {meter_param} AND {scope.on("e")} AND {NOT_VOIDED}
               AND e.properties ? {prop}
        ), stored AS (
            SELECT u.customer_id, u.period_start, u.value FROM meter_unique_values u
             WHERE u.meter_slug = {meter_param} AND {scope.on("u")}
        )
        SELECT count(*) FROM stored s FULL JOIN expected x USING (customer_id, period_start, value)
         WHERE s.value IS NULL OR x.value IS NULL
        """,
        *sql.args,
    )
    return int(count)


async def _rollup_mismatches(
    conn: Connection, meter: Meter, customer_ids: Sequence[str] | None
) -> list[RollupMismatch]:
    sql = Sql()
    expected = buckets_from_events(meter, sql, lambda sql: _Scope(sql, customer_ids).on("e"))
    stored_scope = _Scope(sql, customer_ids).on("r")
    meter_param = sql.param(meter.slug)
    figures = ("event_count", "quantity_sum", "quantity_max", "latest_quantity", "latest_event_time", "latest_event_id")
    differs = " OR ".join(f"s.{f} IS DISTINCT FROM x.{f}" for f in figures)
    rows = await conn.fetch(
        f"""
        WITH expected AS ({expected}), stored AS (
            SELECT {ROLLUP_COLUMNS} FROM usage_rollups r WHERE r.meter_slug = {meter_param} AND {stored_scope}
        )
        SELECT {ROLLUP_KEY}, NULL::text AS value
          FROM stored s FULL JOIN expected x USING ({ROLLUP_KEY})
         WHERE {differs}
         ORDER BY 1, 3, 4
        """,
        *sql.args,
    )
    return [RollupMismatch(**dict(row)) for row in rows]


async def _rollup_value_mismatches(
    conn: Connection, meter: Meter, customer_ids: Sequence[str] | None
) -> list[RollupMismatch]:
    sql = Sql()
    expected = values_from_events(meter, sql, lambda sql: _Scope(sql, customer_ids).on("e"))
    stored_scope = _Scope(sql, customer_ids).on("r")
    meter_param = sql.param(meter.slug)
    rows = await conn.fetch(
        f"""
        WITH expected AS ({expected}), stored AS (
            SELECT {ROLLUP_KEY}, value, event_count FROM usage_rollup_values r
             WHERE r.meter_slug = {meter_param} AND {stored_scope}
        )
        SELECT {ROLLUP_KEY}, value
          FROM stored s FULL JOIN expected x USING ({ROLLUP_KEY}, value)
         WHERE s.event_count IS DISTINCT FROM x.event_count
         ORDER BY 1, 3, 4
        """,
        *sql.args,
    )
    return [RollupMismatch(**dict(row)) for row in rows]
