"""Rollups benchmark: GetUsage flat in the number of events, ingest cost of rollups.

    .venv/bin/python bench/rollups.py                      # embedded PostgreSQL (~10 min with 10M events)
    .venv/bin/python bench/rollups.py --database-url URL   # a server on which it may create databases
    .venv/bin/python bench/rollups.py --events 100000 --small 1000 --ingest-runs 1   # a quick look

1. GetUsage of one calendar month in DAY windows (UTC), through the real
   service, for a customer with --events events in that month and one with
   --small events: medians over --queries calls. Beside them, the same query
   computed from the raw events only (the statement GetUsage ran before
   rollups, `raw_aggregate_sql`), run directly on the database.
2. RecordUsageBatch x1000 events/s with rollups (this tree) and without them:
   the same commit (--baseline, default HEAD) checked out in a git worktree
   with the rollup CTEs taken out of the batching writer's statement, and
   nothing else changed; alternating runs on one database server, so the
   ratio is the cost of maintaining rollups on the write path.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import asyncpg
import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tests.support` and `bench.loadgen`

from bench.loadgen import BATCH, COPY_COLUMNS, Scenario, customer_id, run  # noqa: E402
from metering.config.catalog import load_catalog  # noqa: E402
from metering.domain.periods import add_months  # noqa: E402
from metering.domain.records import new_event_id  # noqa: E402
from metering.domain.windows import WindowSize, windows  # noqa: E402
from metering.ledger.migrate import migrate  # noqa: E402
from metering.ledger.reporting import AggregateQuery, raw_aggregate_sql  # noqa: E402
from metering.ledger.rollups import sync_layouts  # noqa: E402
from metering.runtime.embedded import start_embedded  # noqa: E402
from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2  # noqa: E402
from tests.support import ServiceProcess  # noqa: E402

MONTH = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
ANCHOR = datetime(2026, 10, 1, tzinfo=UTC)
MODELS = ("small", "medium", "large")
# The writer's statement without its rollup CTEs: the "without rollups" service.
ROLLUP_CTES = "), {rollup_ctes}, counters AS ("
WITHOUT_ROLLUPS = "), counters AS ("


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def create_database(server_url: str) -> str:
    name = f"bench_rollups_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def load_month(url: str, customer: str, events: int, chunk: int = 500_000) -> float:
    """COPY `events` ai_tokens events spread over MONTH for `customer`. Seconds taken."""
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        await conn.execute(
            # closing_period_end: the end of the first billing period, a month from the anchor.
            "INSERT INTO customers (customer_id, plan_slug, billing_anchor, closing_period_end) "
            "VALUES ($1, 'enterprise', $2, $3)",
            customer,
            ANCHOR,
            add_months(ANCHOR, 1),
        )
        started = time.perf_counter()
        step = (MONTH[1] - MONTH[0]) / events
        for first in range(0, events, chunk):
            size = min(chunk, events - first)
            records = (
                (
                    customer,
                    new_event_id(),
                    f"h-{i}",
                    "ai_tokens",
                    "ai_tokens_volume",
                    None,
                    Decimal(1 + i % 7),
                    MONTH[0] + step * i,
                    MONTH[0],
                    MONTH[0] + step * i,
                    json.dumps({"model": MODELS[i % 3]}),
                )
                for i in range(first, first + size)
            )
            await conn.copy_records_to_table("usage_events", records=records, columns=COPY_COLUMNS)
            print(f"  ... {customer}: {first + size:,} events", flush=True)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def build_rollups(url: str) -> float:
    """The rollups the writer would have kept for the COPYed events, built as
    `metering serve` does for a ledger without them (sync_layouts: the one
    definition the writer maintains and the audit checks). Seconds taken."""
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await sync_layouts(conn, load_catalog(None))
        elapsed = time.perf_counter() - started
        await conn.execute("VACUUM ANALYZE usage_events")
        await conn.execute("VACUUM ANALYZE usage_rollups")
        return elapsed
    finally:
        await conn.close()


def get_usage_ms(target: str, customer: str, queries: int, group_by: tuple[str, ...] = ()) -> list[float]:
    request = usage_pb2.GetUsageRequest(
        customer_id=customer, meter_slugs=["ai_tokens"], window_size=usage_pb2.WINDOW_SIZE_DAY, time_zone="UTC"
    )
    request.start_time.FromDatetime(MONTH[0])
    request.end_time.FromDatetime(MONTH[1])
    request.group_by.extend(group_by)
    request.page_size = 1000
    timings = []
    with grpc.insecure_channel(target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        stub.GetUsage(request, timeout=120)  # warm
        for _ in range(queries):
            started = time.perf_counter()
            stub.GetUsage(request, timeout=120)
            timings.append((time.perf_counter() - started) * 1000)
    return timings


async def raw_ms(url: str, customer: str, queries: int) -> list[float]:
    meter = load_catalog(None).meters["ai_tokens"]
    statement, args = raw_aggregate_sql(
        AggregateQuery(customer, meter, windows(*MONTH, WindowSize.DAY, ZoneInfo("UTC")))
    )
    conn = await asyncpg.connect(url)
    try:
        timings = []
        for _ in range(queries):
            started = time.perf_counter()
            await conn.fetch(statement, *args)
            timings.append((time.perf_counter() - started) * 1000)
        return timings
    finally:
        await conn.close()


def summary(label: str, timings: list[float]) -> float:
    median = statistics.median(timings)
    print(f"  {label:<58} median {median:8.2f} ms  [{min(timings):.2f}-{max(timings):.2f}]  n={len(timings)}")
    return median


def create_bench_customers(target: str, tag: str, count: int) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        for index in range(count):
            stub.UpsertCustomer(
                customer_pb2.UpsertCustomerRequest(customer_id=customer_id(tag, index), plan_slug="pro"), timeout=10
            )


def ingest(service: ServiceProcess, tag: str, seconds: float) -> float:
    create_bench_customers(service.target, tag, 100)
    scenario = Scenario("RecordUsageBatch x1000", BATCH, customers=100, events_per_call=1000, customer_tag=tag)
    result = run(
        service.target, scenario, concurrency=2, seconds=seconds, processes=1, run_tag=f"{tag}-{uuid.uuid4().hex[:6]}"
    )
    if result.errors:
        print(f"    errors: {result.errors}")
    return result.events_per_second


def baseline_tree(commit: str) -> Path:
    """A worktree of `commit` whose batching writer writes no rollups."""
    folder = Path(tempfile.mkdtemp(prefix="metering-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), commit], check=True)
    writer = folder / "src" / "metering" / "ledger" / "usage.py"
    text = writer.read_text()
    if text.count(ROLLUP_CTES) != 1:
        raise SystemExit(f"{writer}: the rollup CTEs are not where this benchmark expects them; update ROLLUP_CTES")
    writer.write_text(text.replace(ROLLUP_CTES, WITHOUT_ROLLUPS))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="a PostgreSQL server URL (databases are created on it)")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--raw-queries", type=int, default=3)
    parser.add_argument("--ingest-runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--baseline", default="HEAD", help="the commit measured without rollups")
    args = parser.parse_args()
    embedded = None
    server_url = args.database_url
    if server_url is None:
        embedded = start_embedded(Path(tempfile.mkdtemp(prefix="bench-rollups-")) / "pg", delete_on_stop=True)
        server_url = embedded.uri("postgres")
    try:
        execute(server_url, args)
    finally:
        if embedded is not None:
            embedded.stop()


def execute(server_url: str, args: argparse.Namespace) -> None:
    env = {"METERING_ALLOW_UNAUTHENTICATED": "1", "METERING_LOG_LEVEL": "WARNING"}
    print("== GetUsage: one month, DAY windows (UTC) ==", flush=True)
    url = asyncio.run(create_database(server_url))
    big, small = "usage-big", "usage-small"
    print(f"  loaded {args.events:,} events in {asyncio.run(load_month(url, big, args.events)):.0f} s", flush=True)
    asyncio.run(load_month(url, small, args.small))
    print(f"  rollups built from them in {asyncio.run(build_rollups(url)):.0f} s", flush=True)
    service = ServiceProcess(url, catalog=None, extra_env=env).start()
    try:
        big_ms = summary(f"GetUsage, {args.events:,} events (rollups)", get_usage_ms(service.target, big, args.queries))
        small_ms = summary(
            f"GetUsage, {args.small:,} events (rollups)", get_usage_ms(service.target, small, args.queries)
        )
        summary(
            f"GetUsage by model, {args.events:,} events (rollups)",
            get_usage_ms(service.target, big, args.queries, ("model",)),
        )
        raw_big = summary(
            f"same query from raw events, {args.events:,} events", asyncio.run(raw_ms(url, big, args.raw_queries))
        )
        summary(f"same query from raw events, {args.small:,} events", asyncio.run(raw_ms(url, small, args.raw_queries)))
    finally:
        service.stop()
    print(f"  big / small: {big_ms / small_ms:.2f}x (target <= 1.5x); big median {big_ms:.1f} ms (target <= 20 ms)")
    print(f"  raw / rollups at {args.events:,} events: {raw_big / big_ms:.0f}x")

    print("\n== Ingest: RecordUsageBatch x1000, concurrency 2, 100 customers ==", flush=True)
    tree = baseline_tree(args.baseline)
    try:
        with_rollups = ServiceProcess(asyncio.run(create_database(server_url)), catalog=None, extra_env=env).start()
        without = ServiceProcess(
            asyncio.run(create_database(server_url)),
            catalog=None,
            extra_env={**env, "PYTHONPATH": str(tree / "src")},
        ).start()
        rates: dict[str, list[float]] = {"with": [], "without": []}
        try:
            for index in range(args.ingest_runs):
                rates["without"].append(ingest(without, f"wo{index}", args.seconds))
                rates["with"].append(ingest(with_rollups, f"wi{index}", args.seconds))
                print(
                    f"  run {index + 1}: without rollups {rates['without'][-1]:,.0f} events/s, "
                    f"with rollups {rates['with'][-1]:,.0f} events/s",
                    flush=True,
                )
        finally:
            with_rollups.stop()
            without.stop()
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    ratio = statistics.median(rates["with"]) / statistics.median(rates["without"])
    print(
        f"  medians: without {statistics.median(rates['without']):,.0f}, with {statistics.median(rates['with']):,.0f} "
        f"events/s; with / without = {ratio:.2f} (target >= 0.90)"
    )


if __name__ == "__main__":
    main()
