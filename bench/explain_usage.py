"""EXPLAIN ANALYZE of GetUsage's main query on a ledger of N events.

Loads N events for one customer with COPY (three meters, 30 days, two
properties), then prints the plan and timing of the exact statements the
service runs: DAY windows in Europe/Berlin grouped by a property, the whole
month without windows, and the first page of ListUsageEvents.

    .venv/bin/python bench/explain_usage.py                      # embedded PostgreSQL
    .venv/bin/python bench/explain_usage.py --database-url URL   # a database it may fill
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.loadgen` when run as a script

from bench.loadgen import COPY_COLUMNS, copy_row
from metering.config.catalog import load_catalog
from metering.domain.windows import WindowSize, windows
from metering.ledger.migrate import migrate
from metering.ledger.pool import Connection, create_pool
from metering.ledger.reporting import AggregateQuery, UsageReports, aggregate_sql
from metering.ledger.rollups import rebuild_meter
from metering.runtime.embedded import start_embedded

CUSTOMER = "bench-customer"
START = datetime(2026, 1, 1, tzinfo=UTC)
REGIONS = ("eu", "us", "ap", "sa")
MODELS = ("small", "medium", "large")
METERS = ("ai_tokens", "api_calls", "storage_gb")


async def load(conn: Connection, count: int) -> float:
    await conn.execute(
        # closing_period_end: the end of the first billing period, a month from the anchor (UTC).
        "INSERT INTO customers (customer_id, plan_slug, billing_anchor, closing_period_end) "
        "VALUES ($1, 'pro', $2, (($2::timestamptz AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC') "
        "ON CONFLICT DO NOTHING",
        CUSTOMER,
        START,
    )
    step = timedelta(days=30) / count

    def rows() -> Iterator[tuple[object, ...]]:
        for i in range(count):
            row = copy_row(
                CUSTOMER, f"txn-{i}", START + step * i, json.dumps({"region": REGIONS[i % 4], "model": MODELS[i % 3]})
            )
            meter = METERS[i % 3]  # three meters, each with the quantity pattern of the original load
            yield (*row[:3], meter, f"{meter}_no_charge", None, Decimal(i % 1000 + 1), row[7], START, START, row[10])

    started = time.perf_counter()
    await conn.copy_records_to_table("usage_events", records=rows(), columns=COPY_COLUMNS)
    # The rollups the writer would have kept, from the one definition the audit checks.
    catalog = load_catalog(None)
    for meter in METERS:
        async with conn.transaction():
            await rebuild_meter(conn, catalog.meters[meter])
    elapsed = time.perf_counter() - started
    await conn.execute("VACUUM ANALYZE usage_events")
    await conn.execute("VACUUM ANALYZE usage_rollups")
    return elapsed


async def explain(conn: Connection, title: str, statement: str, args: list[object]) -> None:
    plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", *args)
    print(f"\n--- {title} ---")
    for row in plan:
        print(row[0])
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        await conn.fetch(statement, *args)
        timings.append((time.perf_counter() - started) * 1000)
    print(
        f"client-side time over 5 runs: median {statistics.median(timings):.1f} ms, "
        f"min {min(timings):.1f} ms, max {max(timings):.1f} ms"
    )


async def main(url: str, count: int) -> None:
    pool = await create_pool(url, min_size=1, max_size=2, db_timeout=timedelta(minutes=10))
    # A plain connection loads: COPY needs asyncpg's own binary jsonb codec,
    # not the service's text codec.
    loader = await asyncpg.connect(url)
    try:
        await migrate(loader)
        existing = await loader.fetchval("SELECT count(*) FROM usage_events WHERE customer_id = $1", CUSTOMER)
        if existing != count:
            await loader.execute("DELETE FROM usage_events WHERE customer_id = $1", CUSTOMER)
            seconds = await load(loader, count)
            print(f"loaded {count:,} events with COPY in {seconds:.1f} s ({count / seconds:,.0f} rows/s)")
    finally:
        await loader.close()
    async with pool.acquire() as conn:
        total = await conn.fetchval("SELECT count(*) FROM usage_events")
        print(f"usage_events holds {total:,} rows; {count:,} for {CUSTOMER}")
        meter = load_catalog(None).meters["ai_tokens"]
        month = (START, START + timedelta(days=30))
        days = windows(*month, WindowSize.DAY, ZoneInfo("Europe/Berlin"))
        statement, args = aggregate_sql(AggregateQuery(CUSTOMER, meter, days, group_by=["region"], limit=1001))
        await explain(conn, "GetUsage: ai_tokens, 31 DAY windows (Europe/Berlin), group by region", statement, args)
        statement, args = aggregate_sql(AggregateQuery(CUSTOMER, meter, [month]))
        await explain(conn, "GetUsage: ai_tokens, whole month, no windows", statement, args)
    reports = UsageReports(pool, acquire_timeout=10)
    started = time.perf_counter()
    events = await reports.list_events(CUSTOMER, meter_slug=None, start=None, end=None, before=None, limit=101)
    print(f"\nListUsageEvents first page ({len(events)} rows): {(time.perf_counter() - started) * 1000:.1f} ms")
    await pool.close()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a temporary embedded server)")
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.database_url:
        asyncio.run(main(args.database_url, args.events))
        return
    with tempfile.TemporaryDirectory() as folder:
        embedded = start_embedded(f"{folder}/pg", delete_on_stop=True)
        try:
            asyncio.run(main(embedded.uri(), args.events))
        finally:
            embedded.stop()


if __name__ == "__main__":
    run()
