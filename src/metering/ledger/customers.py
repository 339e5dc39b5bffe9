"""The customers store: customers and their listing, voids, event lookups,
counter reads, and what a catalog change would strand.

Events are written by the batching writer (metering.ledger.writer); grants
and reservations by metering.ledger.entitlements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import NamedTuple

from metering.domain.catalog_change import CatalogUse, UsageQuestion
from metering.domain.errors import BillingAnchorImmutable
from metering.domain.periods import Period
from metering.domain.records import (
    CounterReading,
    CustomerRecord,
    StoredEvent,
)
from metering.domain.terms import PlanTerms
from metering.domain.usage import CounterKey, WalletTerms
from metering.ledger import rollups, steps, wallets
from metering.ledger.counters import CounterReader, Readings
from metering.ledger.pool import ConnectionSource, PoolUser, translate_errors
from metering.ledger.sql import CUSTOMER_COLUMNS, Sql

# How long the reload's questions about recorded usage may take: each walks
# every customer (one index probe per customer and meter, price or plan asked
# about), far past an ordinary call's METERING_DB_TIMEOUT on a large ledger.
CATALOG_CHECK_TIMEOUT_SECONDS = 300.0

# An event of a billing period not finalized yet: at or after the customer's
# closed_through (events before its billing anchor are never accepted).
_OPEN = "(c.closed_through IS NULL OR e.event_time >= c.closed_through)"

# Meters of $1 with events (of an open period: {open}) of any customer.
_METERS_WITH_EVENTS = """
SELECT m.slug FROM unnest($1::text[]) AS m (slug)
 WHERE EXISTS (SELECT 1 FROM customers c
                WHERE EXISTS (SELECT 1 FROM usage_events e
                               WHERE e.customer_id = c.customer_id AND e.meter_slug = m.slug AND {open}))
"""

# Prices of $1 (of the meters $2) that events of an open period were priced with.
_PRICES_IN_USE = f"""
SELECT p.slug FROM unnest($1::text[], $2::text[]) AS p (slug, meter_slug)
 WHERE EXISTS (SELECT 1 FROM customers c
                WHERE EXISTS (SELECT 1 FROM usage_events e
                               WHERE e.customer_id = c.customer_id AND e.meter_slug = p.meter_slug
                                 AND e.price_slug = p.slug AND {_OPEN}))
"""

# Plans of $1 a customer is on, or that a period not finalized yet may be
# billed with: the plan in effect at its end (metering.ledger.reporting
# plan_at) is one of the plan changes since closed_through, or the last one
# before it.
_PLANS_IN_USE = """
SELECT DISTINCT p.plan_slug FROM customers c
 CROSS JOIN LATERAL (
        SELECT c.plan_slug
        UNION ALL
        SELECT h.plan_slug FROM customer_plan_history h
         WHERE h.customer_id = c.customer_id AND (c.closed_through IS NULL OR h.effective_at >= c.closed_through)
        UNION ALL
        (SELECT h.plan_slug FROM customer_plan_history h
          WHERE h.customer_id = c.customer_id AND h.effective_at < c.closed_through
          ORDER BY h.effective_at DESC LIMIT 1)
       ) AS p (plan_slug)
 WHERE p.plan_slug = ANY($1::text[])
"""


class CustomerUpsert(NamedTuple):
    """What an upsert left: the customer as stored, and whether this call created it."""

    customer: CustomerRecord  # as stored after the call
    created: bool  # False: it existed (its plan may have changed)


class VoidOutcome(NamedTuple):
    """What a void left: the event with its void, whether it was voided before, and its counter."""

    event: StoredEvent  # with its void
    already_voided: bool  # a replay of the void: nothing changed
    reading: CounterReading  # the counter of the event's period after the void


class CustomerStore(PoolUser):
    """Customers, voids, event lookups and counter reads."""

    def __init__(
        self,
        pool: ConnectionSource,
        *,
        acquire_timeout: float,
        read_linger: float = 0.001,
        on_read_batch: Callable[[int], None] = lambda reads: None,
    ) -> None:
        super().__init__(pool, acquire_timeout=acquire_timeout)
        self._reader = CounterReader(
            pool, acquire_timeout=acquire_timeout, linger=read_linger, on_statement=on_read_batch
        )

    async def ping(self) -> None:
        async with translate_errors(), self._connection() as conn:
            await conn.fetchval("SELECT 1")

    # -- customers ------------------------------------------------------------

    async def get_customer(self, customer_id: str) -> CustomerRecord | None:
        async with translate_errors(), self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE customer_id = $1",
                customer_id,
            )
        return None if row is None else CustomerRecord(**dict(row))

    async def list_customers(self, plan_slug: str | None, after: str | None, limit: int) -> list[CustomerRecord]:
        """Up to `limit` customers (of `plan_slug`, or of every plan) by
        customer id in byte order, strictly after `after`."""
        sql = Sql()
        conditions = ["TRUE"]
        if plan_slug is not None:
            conditions.append(f"plan_slug = {sql.param(plan_slug)}")
        if after is not None:
            conditions.append(f'customer_id COLLATE "C" > {sql.param(after)}')
        statement = (
            f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE {' AND '.join(conditions)} "
            f'ORDER BY customer_id COLLATE "C" LIMIT {sql.param(limit)}'
        )
        async with translate_errors(), self._connection() as conn:
            rows = await conn.fetch(statement, *sql.args)
        return [CustomerRecord(**dict(row)) for row in rows]

    async def upsert_customer(
        self,
        customer_id: str,
        plan_slug: str,
        billing_anchor: datetime | None,
        now: datetime,
        first_period_end: datetime,
    ) -> CustomerUpsert:
        """Create the customer or change its plan; the anchor is set once.
        `first_period_end` (the end of the first billing period from the anchor
        given, or from `now`) is where a new customer's closing starts."""
        async with translate_errors(), self._connection() as conn, conn.transaction():
            previous_plan = await conn.fetchval(
                "SELECT plan_slug FROM customers WHERE customer_id = $1 FOR UPDATE", customer_id
            )
            row = await conn.fetchrow(
                f"""
                INSERT INTO customers AS c (customer_id, plan_slug, billing_anchor, created_at, updated_at,
                                            closing_period_end)
                VALUES ($1, $2, $3, $4, $4, $5)
                ON CONFLICT (customer_id) DO UPDATE
                    SET plan_slug = EXCLUDED.plan_slug,
                        updated_at = CASE WHEN c.plan_slug = EXCLUDED.plan_slug THEN c.updated_at
                                          ELSE EXCLUDED.updated_at END
                RETURNING {CUSTOMER_COLUMNS}, (xmax = 0) AS created
                """,
                customer_id,
                plan_slug,
                billing_anchor or now,
                now,
                first_period_end,
            )
            assert row is not None
            fields = dict(row)
            created = bool(fields.pop("created"))
            record = CustomerRecord(**fields)
            if billing_anchor is not None and not created and record.billing_anchor != billing_anchor:
                # Raising inside the transaction rolls the plan change back too.
                raise BillingAnchorImmutable(customer_id, record.billing_anchor)
            if plan_slug != previous_plan:
                # The history prices past periods with the plan they ran under.
                await conn.execute(
                    "INSERT INTO customer_plan_history (customer_id, effective_at, plan_slug) VALUES ($1, $2, $3) "
                    "ON CONFLICT (customer_id, effective_at) DO UPDATE SET plan_slug = EXCLUDED.plan_slug",
                    customer_id,
                    now,
                    plan_slug,
                )
            return CustomerUpsert(record, created)

    # -- events -----------------------------------------------------------------

    async def find_event(self, customer_id: str, transaction_id: str) -> StoredEvent | None:
        async with translate_errors(), self._connection() as conn:
            return await steps.find_event(conn, customer_id, transaction_id)

    async def void_event(
        self, event: StoredEvent, terms: PlanTerms, period: Period, reason: str, wallet: WalletTerms | None = None
    ) -> VoidOutcome:
        """Cancel an event with a compensating entry and rebuild its counter.
        Returns the event with its void, whether it was voided already, and the
        counter after. Refused (PeriodClosed) once the event's billing period is
        finalized, unless the event was voided already (a replay of the void)."""
        meter = terms.meter
        async with translate_errors(), self._connection() as conn, conn.transaction():
            closed = await steps.lock_customer(conn, event.customer_id, event.transaction_id, event.event_time)
            if closed is not None and event.void_time is None:
                raise closed
            await steps.lock_counter(conn, event.customer_id, event.meter_slug, period)
            inserted = await conn.fetchval(
                "INSERT INTO usage_voids (customer_id, event_id, transaction_id, reason) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (customer_id, event_id) DO NOTHING RETURNING true",
                event.customer_id,
                event.event_id,
                event.transaction_id,
                reason,
            )
            if inserted:
                state = await steps.recompute_counter(conn, event.customer_id, meter, event.period_start)
                await rollups.rebuild_bucket(conn, meter, rollups.rollup_input(meter, event, None))
                if wallet is not None:  # the priced quantity without the event: credit comes back
                    key = wallet.spend_key(event)
                    charging = await wallets.charging(conn, {key: wallet})
                    priced = await wallets.recorded_state(conn, key, meter, wallet.billing_period.end)
                    charging.settle(event, wallet, priced)
                    await wallets.write(conn, charging.writes())
            else:
                state = await steps.read_counter(conn, event.customer_id, event.meter_slug, event.period_start)
            # The balance of the event's period as its own answer gave it: the grants
            # active at its time (not now: the event may be backdated).
            allowance, _ = await steps.full_allowance(
                conn, terms, event.customer_id, event.meter_slug, event.period_start, event.event_time
            )
            voided = await steps.find_event(conn, event.customer_id, event.transaction_id)
            assert voided is not None
            return VoidOutcome(voided, not inserted, CounterReading(state, allowance.granted, allowance.reserved))

    # -- counters ---------------------------------------------------------------

    async def read_counters(self, customer_id: str, keys: Sequence[CounterKey], at: datetime) -> Readings:
        """The customer's plan now (None: no such customer) and each of its
        counters in `keys` with its grants and holds; concurrent reads
        share statements (metering.ledger.counters)."""
        return await self._reader.read(customer_id, keys, at)

    # -- catalog changes --------------------------------------------------------

    async def catalog_use(self, question: UsageQuestion) -> CatalogUse:
        """Which of the meters, prices and plans a catalog change touches have
        usage it would strand (metering.domain.catalog_change); no query for
        a kind not asked about. One read-only transaction, so every answer is
        of the same snapshot."""
        if question.empty:
            return CatalogUse()
        timeout = CATALOG_CHECK_TIMEOUT_SECONDS
        # Unbounded: each statement is bounded by the timeout, the whole by their number.
        async with translate_errors(), self._connection(bounded=False) as conn, conn.transaction(readonly=True):
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout * 1000)}")

            async def slugs(statement: str, *args: object) -> frozenset[str]:
                if not args[0]:
                    return frozenset()
                return frozenset(row[0] for row in await conn.fetch(statement, *args, timeout=timeout))

            prices = list(question.prices.items())
            return CatalogUse(
                open_meters=await slugs(_METERS_WITH_EVENTS.format(open=_OPEN), list(question.meters)),
                recorded_meters=await slugs(_METERS_WITH_EVENTS.format(open="TRUE"), list(question.layouts)),
                prices=await slugs(_PRICES_IN_USE, [p for p, _ in prices], [m for _, m in prices]),
                plans=await slugs(_PLANS_IN_USE, list(question.plans)),
            )
