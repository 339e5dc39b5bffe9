"""Wallets in the ledger database: credit grants, the priced quantities their burns
are computed from, and the burns (metering.domain.wallets decides; this stores).

Lock order. A transaction that charges a wallet takes, in this order: the
customer rows (FOR SHARE, sorted), the counter rows (sorted), then the wallet
rows (FOR UPDATE, sorted by customer). Granting credit takes the customer row
(FOR UPDATE, only the first time, to set `has_wallet`) and then the wallet row.
Every path takes the locks it needs in that one global order (customers <
counters < wallets), so no two transactions can wait on each other in a cycle,
on any number of replicas. The wallet row is what serializes every change of a
customer's credit and priced quantities: both are read only after it is held.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from metering.domain import decimals, limits
from metering.domain.catalog import Meter
from metering.domain.errors import IdempotencyKeyConflict
from metering.domain.usage import WalletCharging, WalletTerms, WalletWrites
from metering.domain.wallets import (
    CreditApplied,
    CreditCategory,
    CreditGrant,
    Spend,
    SpendKey,
    Wallet,
    sort_grants,
    start,
)
from metering.ledger.pool import Connection, Pool, PoolUser, one_row, translate_errors
from metering.ledger.sql import NOT_VOIDED, VALUE_SQL, recomputed_counter_columns

GRANT_COLUMNS = (
    "customer_id, grant_id, currency, amount, category, priority, effective_at, expires_at, meters, reason, created_at"
)
_GRANT_COLUMNS_OF_G = ", ".join(f"g.{column.strip()}" for column in GRANT_COLUMNS.split(","))
_SPEND_COLUMNS = "used, event_count, latest_event_time, latest_event_id, charged, burned"


def _grant(row: asyncpg.Record) -> CreditGrant:
    return CreditGrant(
        customer_id=row["customer_id"],
        grant_id=row["grant_id"],
        currency=row["currency"],
        amount=row["amount"],
        category=CreditCategory(row["category"]),
        priority=row["priority"],
        effective_at=row["effective_at"],
        expires_at=row["expires_at"],
        meters=tuple(row["meters"]),
        reason=row["reason"],
        created_at=row["created_at"],
    )


def _spend(row: asyncpg.Record) -> Spend:
    state = limits.CounterState(row["used"], row["event_count"], row["latest_event_time"], row["latest_event_id"])
    burned = {grant_id: Decimal(amount) for grant_id, amount in row["burned"].items()}
    return Spend(state, row["charged"], burned)


async def lock(
    conn: Connection, customer_ids: Collection[str], keys: Sequence[SpendKey]
) -> tuple[dict[str, Wallet], dict[SpendKey, Spend]]:
    """Lock the wallets of `customer_ids` (creating missing ones: a prepaid plan's
    customer without credit gets an empty wallet), then read their grants and
    the priced quantities of `keys`. Run after the counter rows are locked."""
    ids = sorted(customer_ids)
    rows = await conn.fetch(
        "SELECT customer_id, generation FROM wallets WHERE customer_id = ANY($1::text[]) "
        "ORDER BY customer_id FOR UPDATE",
        ids,
    )
    generations = {row["customer_id"]: row["generation"] for row in rows}
    missing = [customer_id for customer_id in ids if customer_id not in generations]
    if missing:  # rare: once per prepaid customer that was never given credit
        await conn.execute(
            "INSERT INTO wallets (customer_id) SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT DO NOTHING", missing
        )
        rows = await conn.fetch(
            "SELECT customer_id, generation FROM wallets WHERE customer_id = ANY($1::text[]) "
            "ORDER BY customer_id FOR UPDATE",
            missing,
        )
        generations.update((row["customer_id"], row["generation"]) for row in rows)
    spends = await _spends(conn, keys)
    # The grants with credit left, and those that burned for these priced
    # quantities (credit may be given back to them).
    referenced = sorted({(key.customer_id, grant_id) for key, spend in spends.items() for grant_id in spend.burned})
    grant_rows = await conn.fetch(
        f"""
        SELECT {GRANT_COLUMNS}, remaining FROM credit_grants g
         WHERE g.customer_id = ANY($1::text[])
           AND (g.remaining > 0 OR (g.customer_id, g.grant_id) IN (SELECT * FROM unnest($2::text[], $3::text[])))
        """,
        ids,
        [r[0] for r in referenced],
        [r[1] for r in referenced],
    )
    by_customer: dict[str, list[CreditGrant]] = {customer_id: [] for customer_id in ids}
    remaining: dict[str, dict[str, Decimal]] = {customer_id: {} for customer_id in ids}
    for row in grant_rows:
        grant = _grant(row)
        by_customer[grant.customer_id].append(grant)
        remaining[grant.customer_id][grant.grant_id] = row["remaining"]
    wallets = {
        customer_id: Wallet(
            customer_id, generations[customer_id], sort_grants(by_customer[customer_id]), remaining[customer_id]
        )
        for customer_id in ids
    }
    return wallets, spends


async def charging(conn: Connection, terms_by_key: dict[SpendKey, WalletTerms]) -> WalletCharging:
    """Lock the wallets of these priced quantities' customers (after the
    counter rows: the global lock order), read their grants and the priced
    quantities, starting any never stored from the recorded events."""
    keys = sorted(terms_by_key)
    wallet_states, spends = await lock(conn, {key.customer_id for key in keys}, keys)
    for key in keys:
        if key not in spends:
            terms = terms_by_key[key]
            state = await recorded_state(conn, key, terms.meter, terms.billing_period.end)
            spends[key] = start(terms.price, terms.included, terms.currency, state)
    return WalletCharging(wallet_states, spends)


async def _spends(conn: Connection, keys: Sequence[SpendKey]) -> dict[SpendKey, Spend]:
    """The stored priced quantities of `keys`; a missing one is left out (the
    caller starts it from the recorded events: `start_spends`)."""
    if not keys:
        return {}
    rows = await conn.fetch(
        f"""
        SELECT customer_id, meter_slug, period_start, price_slug, {_SPEND_COLUMNS} FROM wallet_spend
         WHERE (customer_id, meter_slug, period_start, price_slug)
               IN (SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[]))
        """,
        [k.customer_id for k in keys],
        [k.meter_slug for k in keys],
        [k.period_start for k in keys],
        [k.price_slug for k in keys],
    )
    return {
        SpendKey(row["customer_id"], row["meter_slug"], row["period_start"], row["price_slug"]): _spend(row)
        for row in rows
    }


async def recorded_state(conn: Connection, key: SpendKey, meter: Meter, period_end: datetime) -> limits.CounterState:
    """The priced quantity of `key` recomputed from the events that still count
    (the same aggregation SQL as bills): where a Spend starts when the customer
    had usage before its wallet, and what a void leaves."""
    args: list[object] = [key.customer_id, key.meter_slug, key.period_start, period_end, key.price_slug]
    if meter.unique_property is not None:
        args.append(meter.unique_property)
    value = VALUE_SQL[meter.aggregation].format(unique="$6")
    row = await one_row(
        conn,
        f"""
        SELECT {recomputed_counter_columns(value)}
          FROM usage_events e
         WHERE e.customer_id = $1 AND e.meter_slug = $2 AND e.event_time >= $3 AND e.event_time < $4
           AND e.price_slug = $5 AND {NOT_VOIDED}
        """,
        *args,
    )
    return limits.CounterState(row["used"], row["event_count"], row["latest_event_time"], row["latest_event_id"])


async def write(conn: Connection, writes: WalletWrites) -> None:
    """One statement: each Spend upserted (with what each grant paid of it) and
    each grant's remaining credit set."""
    if not writes:
        return
    spends, remaining = writes.spends, writes.remaining
    await conn.execute(
        """
        WITH spends AS (
            INSERT INTO wallet_spend AS s (customer_id, meter_slug, period_start, price_slug, used, event_count,
                                           latest_event_time, latest_event_id, charged, burned)
            SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::numeric[], $6::bigint[],
                                 $7::timestamptz[], $8::uuid[], $9::numeric[], $10::jsonb[])
            ON CONFLICT (customer_id, meter_slug, period_start, price_slug) DO UPDATE
               SET used = excluded.used, event_count = excluded.event_count,
                   latest_event_time = excluded.latest_event_time, latest_event_id = excluded.latest_event_id,
                   charged = excluded.charged, burned = excluded.burned
        )
        UPDATE credit_grants g SET remaining = r.remaining
          FROM unnest($11::text[], $12::text[], $13::numeric[]) AS r (customer_id, grant_id, remaining)
         WHERE g.customer_id = r.customer_id AND g.grant_id = r.grant_id
        """,
        [k.customer_id for k, _ in spends],
        [k.meter_slug for k, _ in spends],
        [k.period_start for k, _ in spends],
        [k.price_slug for k, _ in spends],
        [s.state.used for _, s in spends],
        [s.state.event_count for _, s in spends],
        [s.state.latest_event_time for _, s in spends],
        [s.state.latest_event_id for _, s in spends],
        [s.charged for _, s in spends],
        [_burned_json(s) for _, s in spends],
        [r[0] for r in remaining],
        [r[1] for r in remaining],
        [r[2] for r in remaining],
    )


def _burned_json(spend: Spend) -> dict[str, str]:
    return {grant_id: decimals.format_decimal(amount) for grant_id, amount in spend.burned.items() if amount != 0}


@dataclass(frozen=True, slots=True)
class GrantOutcome:
    """A wallet grant as stored (the first call's, for a replay), and whether it was one."""

    grant: CreditGrant
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StoredWallet:
    """A wallet as read (not locked): its grants with their remaining credit, and the database's clock."""

    wallet: Wallet | None
    read_at: datetime


class WalletStore(PoolUser):
    """Wallet grants and reads; the burns are written by the transactions that record usage."""

    def __init__(self, pool: Pool, *, acquire_timeout: float) -> None:
        super().__init__(pool, acquire_timeout=acquire_timeout)

    async def grant(self, grant: CreditGrant, *, effective_given: bool) -> GrantOutcome:
        """Store a grant once per grant id (a replay returns the original; the
        same id with another payload is IdempotencyKeyConflict). A new grant
        starts a new wallet generation: credits.low and credits.exhausted are re-armed."""
        async with translate_errors(), self._connection() as conn, conn.transaction():
            # customers < wallets: the global lock order. The customer row is
            # locked only the first time (to set the flag the writer reads).
            await conn.execute(
                "UPDATE customers SET has_wallet = true WHERE customer_id = $1 AND NOT has_wallet", grant.customer_id
            )
            await conn.execute(
                "INSERT INTO wallets (customer_id) VALUES ($1) ON CONFLICT DO NOTHING", grant.customer_id
            )
            await conn.execute("SELECT 1 FROM wallets WHERE customer_id = $1 FOR UPDATE", grant.customer_id)
            row = await conn.fetchrow(
                f"""
                INSERT INTO credit_grants ({GRANT_COLUMNS}, remaining)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $4)
                ON CONFLICT (customer_id, grant_id) DO NOTHING
                RETURNING {GRANT_COLUMNS}
                """,
                grant.customer_id,
                grant.grant_id,
                grant.currency,
                grant.amount,
                str(grant.category),
                grant.priority,
                grant.effective_at,
                grant.expires_at,
                list(grant.meters),
                grant.reason,
                grant.created_at,
            )
            if row is not None:
                await conn.execute(
                    "UPDATE wallets SET generation = generation + 1 WHERE customer_id = $1", grant.customer_id
                )
                return GrantOutcome(_grant(row), False)
            existing = _grant(
                await one_row(
                    conn,
                    f"SELECT {GRANT_COLUMNS} FROM credit_grants WHERE customer_id = $1 AND grant_id = $2",
                    grant.customer_id,
                    grant.grant_id,
                )
            )
        differences = [
            name
            for name, same in (
                ("amount", existing.amount == grant.amount and existing.currency == grant.currency),
                ("category", existing.category == grant.category),
                ("priority", existing.priority == grant.priority),
                ("effective_time", not effective_given or existing.effective_at == grant.effective_at),
                ("expire_time", existing.expires_at == grant.expires_at),
                ("meter_slugs", existing.meters == grant.meters),
                ("reason", existing.reason == grant.reason),
            )
            if not same
        ]
        if differences:
            raise IdempotencyKeyConflict("grant", grant.grant_id, differences)
        return GrantOutcome(existing, True)

    async def read(self, customer_id: str) -> StoredWallet:
        """The customer's wallet (None: never given credit), every grant, and the database's clock."""
        async with translate_errors(), self._connection() as conn:
            rows = await conn.fetch(
                f"""
                SELECT w.generation, clock_timestamp() AS db_now, {_GRANT_COLUMNS_OF_G}, g.remaining
                  FROM (SELECT 1) AS one
                  LEFT JOIN wallets w ON w.customer_id = $1
                  LEFT JOIN credit_grants g ON g.customer_id = w.customer_id
                """,
                customer_id,
            )
        read_at: datetime = rows[0]["db_now"]
        if rows[0]["generation"] is None:
            return StoredWallet(None, read_at)
        grants = [_grant(row) for row in rows if row["grant_id"] is not None]
        remaining = {row["grant_id"]: row["remaining"] for row in rows if row["grant_id"] is not None}
        return StoredWallet(Wallet(customer_id, rows[0]["generation"], sort_grants(grants), remaining), read_at)

    async def credits_applied(self, customer_id: str, period_start: datetime) -> list[CreditApplied]:
        """The credit each grant paid toward the billing period starting at `period_start`."""
        async with translate_errors(), self._connection() as conn:
            return await credits_applied(conn, customer_id, period_start)


async def credits_applied(conn: Connection, customer_id: str, period_start: datetime) -> list[CreditApplied]:
    """The exact sum of each grant's burns for a billing period, in grant id
    order (grants whose burns net to zero left out)."""
    rows = await conn.fetch(
        """
        SELECT b.key AS grant_id, g.category, sum(b.value::numeric) AS amount
          FROM wallet_spend s CROSS JOIN LATERAL jsonb_each_text(s.burned) AS b
          JOIN credit_grants g ON g.customer_id = s.customer_id AND g.grant_id = b.key
         WHERE s.customer_id = $1 AND s.period_start = $2
         GROUP BY b.key, g.category
        HAVING sum(b.value::numeric) <> 0
         ORDER BY b.key
        """,
        customer_id,
        period_start,
    )
    return [CreditApplied(row["grant_id"], CreditCategory(row["category"]), row["amount"]) for row in rows]


def applied_document(applied: Sequence[CreditApplied]) -> list[dict[str, Any]]:
    """The invoice's stored form of its credits applied."""
    return [
        {"grant_id": c.grant_id, "category": str(c.category), "amount": decimals.format_decimal(c.amount)}
        for c in applied
    ]


def applied_from(document: Sequence[dict[str, Any]]) -> list[CreditApplied]:
    return [CreditApplied(d["grant_id"], CreditCategory(d["category"]), Decimal(d["amount"])) for d in document]
