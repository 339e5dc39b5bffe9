"""The batch insert, two ways, alternating in one run: arrays or binary COPY.

Inserts batches of --size events (spread over 100 customers) into usage_events,
each in its own transaction, in alternating rounds of:

    arrays   one INSERT ... SELECT FROM unnest($1::uuid[], ...) ON CONFLICT DO NOTHING
             RETURNING event_id, recorded_at (the shape of metering.ledger.usage)
    copy     binary COPY into a per-connection temporary staging table
             (ON COMMIT DELETE ROWS), then one INSERT ... SELECT FROM the staging
             table ON CONFLICT DO NOTHING RETURNING event_id, recorded_at

and prints, per variant, the median over the rounds of: events/s, the client's
CPU per event (the encoding: asyncpg's per-value encoders or COPY's), and the
PostgreSQL backend's CPU per event (read from /proc for the connection's
server process: only with a database on this machine).

    .venv/bin/python bench/ingest_statement.py                      # embedded PostgreSQL
    .venv/bin/python bench/ingest_statement.py --database-url URL   # a database it may fill
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.loadgen` when run as a script

from bench.loadgen import cpu_seconds
from metering.ledger.migrate import migrate
from metering.ledger.sql import EVENT_COLUMNS, EVENT_INSERT, EVENT_INSERT_GUARD, epoch_micros, timestamp_from_micros
from metering.runtime.embedded import start_embedded

CUSTOMERS = 100
STAGING = """
    CREATE TEMPORARY TABLE IF NOT EXISTS ingest_staging (
        event_id uuid, customer_id text, transaction_id text, meter_slug text, price_slug text,
        requested_price_slug text, quantity numeric, event_time timestamptz, period_start timestamptz,
        properties jsonb
    ) ON COMMIT DELETE ROWS
"""
STAGING_COLUMNS = [
    "event_id",
    "customer_id",
    "transaction_id",
    "meter_slug",
    "price_slug",
    "requested_price_slug",
    "quantity",
    "event_time",
    "period_start",
    "properties",
]
ARRAYS = f"""
    {EVENT_INSERT}
    SELECT k.event_id, k.customer_id, k.transaction_id, k.meter_slug, k.price_slug, k.requested_price_slug,
           k.quantity::numeric, {timestamp_from_micros("k.event_time")}, {timestamp_from_micros("k.period_start")},
           now(), k.properties::jsonb
      FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                  $8::bigint[], $9::bigint[], $10::text[])
           AS k (event_id, customer_id, transaction_id, meter_slug, price_slug, requested_price_slug, quantity,
                 event_time, period_start, properties)
    {EVENT_INSERT_GUARD}
    RETURNING event_id, recorded_at
"""
FROM_STAGING = f"""
    INSERT INTO usage_events ({EVENT_COLUMNS})
    SELECT event_id, customer_id, transaction_id, meter_slug, price_slug, requested_price_slug, quantity,
           event_time, period_start, now(), properties
      FROM ingest_staging
    {EVENT_INSERT_GUARD}
    RETURNING event_id, recorded_at
"""

Batch = list[tuple[uuid.UUID, str, str, str, str, None, str, datetime, datetime]]


def batch(size: int, tag: str) -> Batch:
    now = datetime.now(UTC)
    return [
        (uuid.uuid4(), f"stmt-{i % CUSTOMERS}", f"{tag}-{i}", "ai_tokens", "ai_tokens_graduated", None, "1", now, now)
        for i in range(size)
    ]


async def with_arrays(conn: asyncpg.Connection, rows: Batch) -> int:
    async with conn.transaction():
        inserted = await conn.fetch(
            ARRAYS,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
            [r[4] for r in rows],
            [r[5] for r in rows],
            [r[6] for r in rows],
            epoch_micros([r[7] for r in rows]),
            epoch_micros([r[8] for r in rows]),
            ["{}"] * len(rows),
        )
    return len(inserted)


async def with_copy(conn: asyncpg.Connection, rows: Batch) -> int:
    async with conn.transaction():
        await conn.copy_records_to_table(
            "ingest_staging",
            records=[(*r[:6], r[6], r[7], r[8], "{}") for r in rows],
            columns=STAGING_COLUMNS,
        )
        inserted = await conn.fetch(FROM_STAGING)
    return len(inserted)


async def main(url: str, size: int, batches: int, rounds: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        await conn.executemany(
            "INSERT INTO customers (customer_id, plan_slug, billing_anchor, closing_period_end) "
            "VALUES ($1, 'pro', now(), now() + interval '1 month') ON CONFLICT DO NOTHING",
            [(f"stmt-{i}",) for i in range(CUSTOMERS)],
        )
        await conn.execute(STAGING)
        backend = conn.get_server_pid()
        local = Path(f"/proc/{backend}").exists()  # noqa: ASYNC240 (once, before timing)
        variants: dict[str, Callable[[asyncpg.Connection, Batch], Awaitable[int]]] = {
            "arrays": with_arrays,
            "copy": with_copy,
        }
        figures: dict[str, dict[str, list[float]]] = {name: {"rate": [], "client": [], "db": []} for name in variants}
        for round_ in range(rounds + 1):  # round 0 warms both up and is not counted
            for name, write in variants.items():
                work = [batch(size, f"{name}{round_}-{n}-{uuid.uuid4().hex[:6]}") for n in range(batches)]
                db_before = cpu_seconds(backend) if local else 0.0
                client_before = time.process_time()
                started = time.perf_counter()
                for rows in work:
                    assert await write(conn, rows) == size
                elapsed = time.perf_counter() - started
                events = size * batches
                if round_:
                    figures[name]["rate"].append(events / elapsed)
                    figures[name]["client"].append((time.process_time() - client_before) / events * 1e6)
                    figures[name]["db"].append(((cpu_seconds(backend) if local else 0.0) - db_before) / events * 1e6)
        print(f"{rounds} rounds of {batches} batches of {size} events, alternating; medians [min-max]")
        for name, values in figures.items():

            def span(v: list[float], fmt: str) -> str:
                return f"{statistics.median(v):{fmt}} [{min(v):{fmt}}-{max(v):{fmt}}]"

            db = f"   PostgreSQL {span(values['db'], '.1f')} us/event" if local else ""
            print(
                f"{name:<8} {span(values['rate'], ',.0f')} events/s   "
                f"client {span(values['client'], '.1f')} us/event{db}"
            )
    finally:
        await conn.close()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a temporary embedded server)")
    parser.add_argument("--size", type=int, default=1000, help="events per batch")
    parser.add_argument("--batches", type=int, default=20, help="batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with open("/proc/loadavg") as handle:
        print(f"load average before: {' '.join(handle.read().split()[:3])}")
    if args.database_url:
        asyncio.run(main(args.database_url, args.size, args.batches, args.rounds))
        return
    with tempfile.TemporaryDirectory() as folder:
        embedded = start_embedded(f"{folder}/pg", delete_on_stop=True)
        try:
            asyncio.run(main(embedded.uri(), args.size, args.batches, args.rounds))
        finally:
            embedded.stop()


if __name__ == "__main__":
    run()
