"""The schema distributes on Citus with customer_id as the distribution column
(docs/citus.md): read from the catalog of a freshly migrated database.

Citus enforces a primary key or unique constraint of a distributed table only
if it includes the distribution column (each shard checks its own rows), and a
foreign key between distributed tables only if both sides include it. These
tests fail when a migration adds a table, key, index, foreign key or trigger
that breaks that, unless the table is in the allow-list below with its reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from metering.ledger.migrate import migrate
from tests.statement_log import examine

# Tables that are not distributed by customer_id, and why. On Citus each is a
# reference table (copied to every node; small, the same for every customer)
# or stays on the coordinator (a local table). docs/citus.md has the plan.
NOT_DISTRIBUTED: dict[str, str] = {
    # One row per applied migration; read and written only by `metering migrate`
    # under its advisory lock, before anything serves. A coordinator-local table.
    "schema_migrations": "migrations' bookkeeping (coordinator-local)",
    # One row per meter of the catalog: the layout its rollups were built with.
    "rollup_layouts": "catalog-like, one row per meter (reference table)",
    # One row per webhook endpoint: the endpoint's scan position over the whole
    # outbox and the lease of the replica delivering to it.
    "webhook_cursors": "one row per endpoint, over every customer (reference table; "
    "TODO for Citus: the cursor's (txid, seq) is a position in one node's transaction ids)",
    # One row: the key that signs page tokens, the same for every replica.
    "page_token_key": "one row for the whole service (reference table)",
}

# Triggers, each reviewed for Citus (docs/citus.md, "Triggers"). A new one
# fails the test until it is added here with what it does on a shard.
REVIEWED_TRIGGERS: dict[tuple[str, str], str] = {
    ("invoices", "invoices_immutable"): "row trigger raising on UPDATE/DELETE: runs on the shard, touches nothing",
    ("credit_notes", "credit_notes_immutable"): "row trigger raising on UPDATE/DELETE: runs on the shard",
    ("notifications", "notifications_position"): "only for a row inserted without a position (an older "
    "release's; enqueue positions its own since 0015): writes notification_heads for NEW.customer_id, a co-located "
    "shard, but nextval('notifications_seq') is per node (TODO for Citus: the outbox's order)",
    ("notifications", "notifications_wake"): "pg_notify: reaches listeners of the node the shard is on, not the "
    "coordinator's (TODO for Citus: LISTEN/NOTIFY)",
}


async def _migrate(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


async def _catalog(url: str) -> dict[str, list[asyncpg.Record]]:
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            """
            SELECT c.relname AS table_name,
                   EXISTS (SELECT 1 FROM pg_attribute a
                            WHERE a.attrelid = c.oid AND a.attname = 'customer_id' AND NOT a.attisdropped)
                       AS has_customer_id
              FROM pg_class c
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
             ORDER BY 1
            """
        )
        # Every unique index: primary keys, unique constraints and unique
        # indexes (partial ones too), with their key columns in order.
        unique = await conn.fetch(
            """
            SELECT t.relname AS table_name, i.relname AS index_name,
                   array_agg(a.attname ORDER BY k.n) AS columns
              FROM pg_index x
              JOIN pg_class i ON i.oid = x.indexrelid
              JOIN pg_class t ON t.oid = x.indrelid
              CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k (attnum, n)
              LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
             WHERE t.relnamespace = 'public'::regnamespace AND x.indisunique
             GROUP BY 1, 2
             ORDER BY 1, 2
            """
        )
        foreign = await conn.fetch(
            """
            SELECT t.relname AS table_name, f.relname AS referenced, con.conname AS name,
                   (SELECT array_agg(a.attname ORDER BY k.n) FROM unnest(con.conkey) WITH ORDINALITY AS k (attnum, n)
                      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum) AS columns,
                   (SELECT array_agg(a.attname ORDER BY k.n) FROM unnest(con.confkey) WITH ORDINALITY AS k (attnum, n)
                      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum) AS referenced_columns
              FROM pg_constraint con
              JOIN pg_class t ON t.oid = con.conrelid
              JOIN pg_class f ON f.oid = con.confrelid
             WHERE con.contype = 'f' AND t.relnamespace = 'public'::regnamespace
             ORDER BY 1, 3
            """
        )
        triggers = await conn.fetch(
            """
            SELECT c.relname AS table_name, tg.tgname AS name
              FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
             WHERE NOT tg.tgisinternal AND c.relnamespace = 'public'::regnamespace
             ORDER BY 1, 2
            """
        )
        return {"tables": tables, "unique": unique, "foreign": foreign, "triggers": triggers}
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def migrated(make_database: Callable[[], str]) -> str:
    """A fresh database with every migration applied."""
    url = make_database()
    asyncio.run(_migrate(url))
    return url


@pytest.fixture(scope="module")
def catalog(migrated: str) -> dict[str, list[asyncpg.Record]]:
    return asyncio.run(_catalog(migrated))


def _distributed(catalog: dict[str, list[asyncpg.Record]]) -> set[str]:
    return {row["table_name"] for row in catalog["tables"]} - set(NOT_DISTRIBUTED)


def test_every_table_is_either_keyed_by_customer_or_allowed_with_a_reason(
    catalog: dict[str, list[asyncpg.Record]],
) -> None:
    tables = {row["table_name"]: row["has_customer_id"] for row in catalog["tables"]}
    assert set(NOT_DISTRIBUTED) <= set(tables), "an allow-listed table no longer exists: drop it from the list"
    missing = sorted(name for name, has in tables.items() if not has and name not in NOT_DISTRIBUTED)
    assert missing == [], f"tables without customer_id (no distribution column for Citus): {missing}"
    # The allow-list holds no distributed table by mistake.
    assert {name for name in NOT_DISTRIBUTED if tables[name]} == set()
    # The tables the plan distributes, so that a new one is a conscious change of docs/citus.md.
    planned = {
        "credit_grants",
        "credit_notes",
        "customer_plan_history",
        "customers",
        "grants",
        "invoices",
        "meter_counters",
        "meter_unique_values",
        "notification_heads",
        "notifications",
        "reservations",
        "stripe_export_progress",
        "stripe_meter_events",
        "usage_events",
        "usage_rollup_values",
        "usage_rollups",
        "usage_voids",
        "wallet_spend",
        "wallets",
        "webhook_deliveries",
    }
    found = _distributed(catalog)
    assert found == planned, (
        f"distributed tables not in docs/citus.md's plan: {sorted(found - planned)}; gone: {sorted(planned - found)}"
    )


def test_every_primary_key_and_unique_index_of_a_distributed_table_includes_customer_id(
    catalog: dict[str, list[asyncpg.Record]],
) -> None:
    distributed = _distributed(catalog)
    checked = [row for row in catalog["unique"] if row["table_name"] in distributed]
    assert len(checked) >= len(distributed), "every distributed table has at least its primary key"
    lacking = [
        f"{row['table_name']}.{row['index_name']} {list(row['columns'])}"
        for row in checked
        if "customer_id" not in row["columns"]
    ]
    assert lacking == [], f"unique keys Citus cannot enforce across shards: {lacking}"


def test_every_foreign_key_between_distributed_tables_joins_on_customer_id(
    catalog: dict[str, list[asyncpg.Record]],
) -> None:
    distributed = _distributed(catalog)
    keys = list(catalog["foreign"])
    assert keys, "the schema has foreign keys"
    wrong = []
    for row in keys:
        if row["table_name"] not in distributed or row["referenced"] not in distributed:
            wrong.append(f"{row['name']}: {row['table_name']} -> {row['referenced']} (not both distributed)")
            continue
        pairs = dict(zip(row["columns"], row["referenced_columns"], strict=True))
        if pairs.get("customer_id") != "customer_id":
            wrong.append(f"{row['name']}: {row['table_name']} -> {row['referenced']} not on customer_id")
    assert wrong == [], f"foreign keys Citus cannot enforce within one shard group: {wrong}"


def test_every_trigger_is_reviewed_for_citus(catalog: dict[str, list[asyncpg.Record]]) -> None:
    found = {(row["table_name"], row["name"]) for row in catalog["triggers"]}
    assert found == set(REVIEWED_TRIGGERS), (
        f"triggers not reviewed for Citus: {sorted(found - set(REVIEWED_TRIGGERS))}; "
        f"reviewed but gone: {sorted(set(REVIEWED_TRIGGERS) - found)}"
    )


def test_the_write_path_check_tells_keyed_statements_from_ones_that_cross_customers(
    migrated: str, catalog: dict[str, list[asyncpg.Record]]
) -> None:
    """tests/integration/test_citus_write_path.py's check, on this database's
    planner: statements keyed by customer pass, cross-customer ones are named."""
    keyed = [
        "SELECT e.event_id FROM usage_events e LEFT JOIN usage_voids v"
        " ON v.customer_id = e.customer_id AND v.event_id = e.event_id"
        " WHERE e.customer_id = $1 AND e.transaction_id = $2",
        "UPDATE meter_counters c SET used = u.used FROM unnest($1::text[], $2::text[], $3::timestamptz[],"
        " $4::numeric[]) AS u (customer_id, meter_slug, period_start, used)"
        " WHERE c.customer_id = u.customer_id AND c.meter_slug = u.meter_slug AND c.period_start = u.period_start",
        "SELECT customer_id FROM customers WHERE customer_id = ANY($1::text[]) FOR SHARE",
    ]
    crossing = {
        # The closer's kind of scan, GetInvoice by id, retention, a join on another column.
        "SELECT customer_id FROM customers WHERE closing_period_end <= $1": ["customers (customers)"],
        "SELECT invoice_id FROM invoices WHERE invoice_id = $1": ["invoices (invoices)"],
        "DELETE FROM notifications WHERE created_at < $1": ["notifications (notifications)"],
        "SELECT 1 FROM usage_events e JOIN usage_voids v ON v.event_id = e.event_id WHERE e.customer_id = $1": [
            "usage_voids (v)"
        ],
    }
    results = asyncio.run(examine(migrated, [*keyed, *crossing], _distributed(catalog)))
    assert {statement: results[statement] for statement in keyed} == {statement: [] for statement in keyed}
    for statement, scans in crossing.items():
        # "table (alias): node type": the node type is the planner's choice.
        assert [scan.split(":")[0] for scan in results[statement]] == scans, statement
