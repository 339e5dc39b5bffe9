"""The outbox's cost: the same load with and without the outbox, in one run.

    .venv/bin/python bench/outbox.py                                  # this tree, embedded PostgreSQL
    .venv/bin/python bench/outbox.py --trees /work/base .             # two trees, alternating
    .venv/bin/python bench/outbox.py --scenarios worst --pg-stats     # the worst case; statements per event

Per source tree (a checkout: its `src` and `clients/python/src` are put in
front of PYTHONPATH, so `--trees /work/base .` compares a base and a branch
with this venv), three `metering serve` processes, each on a database of its
own on one server:

- "no outbox": the tree's code with notifications turned off (a copy of its
  `src` in which the batch decision announces nothing, so no notification is
  built, written, notified or delivered; the bench checks that its outbox
  stays empty). Everything else (limits, refusals, counters) is the same
  code doing the same work: the ceiling the outbox is measured against.
- "outbox": the tree as it is, no webhook endpoint (notifications written,
  nobody delivers them).
- "outbox+webhooks": the tree as it is, delivering every type to a local HTTP
  receiver on 127.0.0.1: the deliveries pay on the same CPU.

The load (`worst`): fresh customers on plans with small hard limits (20 to
200), so each crosses 80% and 100% and is then refused within seconds and most
batches announce something; `roomy` repeats it on a plan whose limit is never
reached (the common case: the outbox only checks for crossings). Throughput is
events decided per second, recorded or refused: each is decided in a write
transaction. Runs alternate tree and variant (reversed every other run), and a
run's ratio is taken against the "no outbox" run of the same tree in the same
round, so slow drifts of a shared machine cancel; the table gives the median
(and range) of those ratios, the server's and PostgreSQL's CPU per event
(PostgreSQL's only with the embedded server: its processes are the bench's),
and the webhook delivery lag at the receiver (arrival minus the
notification's time). Prints figures; asserts only that "no outbox" wrote no
notification.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tests.*` and `bench.*`

from bench import run as bench_run  # noqa: E402
from bench.loadgen import BATCH, RECORD, Scenario, customer_id, run  # noqa: E402
from metering.runtime.embedded import start_embedded  # noqa: E402
from metering.v1 import customer_pb2, metering_service_pb2_grpc  # noqa: E402
from tests.receiver import Receiver, webhook_receiver  # noqa: E402
from tests.support import ServiceProcess  # noqa: E402

# Plans with limits 20, 40, ... 200: customers spread over them cross 80% and
# 100% at different moments of a run, so notifications are written steadily
# rather than in one burst when every customer reaches the same usage.
LIMITS = [20 * k for k in range(1, 11)]
CATALOG = (
    '[meters.ai_tokens]\naggregation = "sum"\nunit = "token"\n'
    + "".join(
        f'\n[plans.capped{limit}]\ncurrency = "USD"\n[plans.capped{limit}.meters.ai_tokens]\n'
        f'limit = "{limit}"\nenforcement = "hard"\n'
        for limit in LIMITS
    )
    + '\n[plans.roomy]\ncurrency = "USD"\n[plans.roomy.meters.ai_tokens]\n'
    + 'limit = "1000000000000"\nenforcement = "hard"\n'
)
TYPES = ["usage.threshold_crossed", "usage.limit_rejected", "invoice.finalized"]

# "No outbox": appended to the copy's modules, these definitions replace the
# originals (the decision looks them up at call time): the batch decision
# announces nothing, so no notification is built and `enqueue` never runs.
NO_OUTBOX = {
    Path("metering/domain/usage.py"): (
        "def _announce(",
        "\n\ndef _announce(announce, new):  # type: ignore[no-redef]  # bench/outbox.py: no outbox\n    return None\n",
    ),
    Path("metering/domain/notifications.py"): (
        "def thresholds_notifications(",
        "\n\ndef thresholds_notifications(*args, **kwargs):  # type: ignore[no-redef]  # bench/outbox.py\n"
        "    return []\n\n\n"
        "def limit_rejected_notification(*args, **kwargs):  # type: ignore[no-redef]  # bench/outbox.py\n"
        "    return None\n",
    ),
}
VARIANTS = ["no outbox", "outbox", "outbox+webhooks"]


@dataclass
class Figures:
    rates: list[float] = field(default_factory=list)  # events decided per second, per round
    server_us: list[float] = field(default_factory=list)  # server CPU per event decided
    database_us: list[float] = field(default_factory=list)  # PostgreSQL CPU per event decided (embedded)


@dataclass
class Service:
    tree: str
    variant: str
    database: str
    process: ServiceProcess
    receiver: Receiver | None = None
    lags: list[float] = field(default_factory=list)


def no_outbox_copy(tree: Path, folder: Path) -> Path:
    """A copy of `tree`'s src with NO_OUTBOX applied; returns its src."""
    src = folder / "src"
    shutil.copytree(tree / "src", src, ignore=shutil.ignore_patterns("__pycache__"))
    for path, (needed, patch) in NO_OUTBOX.items():
        module = src / path
        text = module.read_text()
        if needed not in text:
            raise SystemExit(f"{tree}: {path} has no `{needed}`: update bench/outbox.py's NO_OUTBOX")
        module.write_text(text + patch)
    return src


def python_path(src: Path, tree: Path) -> str:
    return os.pathsep.join([str(src), str(tree / "clients" / "python" / "src")])


def imported_from(env_path: str) -> str:
    """Where a service with this PYTHONPATH imports the ledger from (checks the tree really is the one run)."""
    return subprocess.run(
        [sys.executable, "-c", "import metering.ledger.outbox as m; print(m.__file__)"],
        env={**os.environ, "PYTHONPATH": env_path},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def new_database(url: str, label: str, statistics: bool) -> str:
    """A fresh database on the server of `url` (with pg_stat_statements' functions when `statistics`)."""
    name = f"bench_outbox_{label}_{uuid.uuid4().hex[:8]}"
    database = urlunsplit(urlsplit(url)._replace(path=f"/{name}"))

    async def create() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        if statistics:
            conn = await asyncpg.connect(database)
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            finally:
                await conn.close()

    asyncio.run(create())
    return database


def count_notifications(url: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM notifications"))
        finally:
            await conn.close()

    return asyncio.run(count())


def create_customers(target: str, tag: str, count: int, roomy: bool) -> None:
    """Customers on the small capped plans (every one crosses 80% and 100% and is
    refused during a run: the worst case for the outbox), or on a plan whose
    hard limit is never reached (the common case: enforcement on, nothing to
    announce)."""
    with grpc.insecure_channel(target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        for index in range(count):
            plan = "roomy" if roomy else f"capped{LIMITS[index % len(LIMITS)]}"
            request = customer_pb2.UpsertCustomerRequest(customer_id=customer_id(tag, index), plan_slug=plan)
            stub.UpsertCustomer(request, timeout=10)


def database_cpu_seconds() -> float:
    """CPU of the embedded server: its processes' own, plus what its backends
    that ended used (the postmaster's children time: a pool that closes an idle
    connection must not take that backend's CPU out of the sum)."""
    postmaster = bench_run.POSTMASTER[0]
    with open(f"/proc/{postmaster}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return bench_run.database_cpu_seconds() + reaped


def quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100)[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a temporary embedded server)")
    parser.add_argument("--trees", nargs="+", type=Path, default=[ROOT], help="source trees to compare")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    parser.add_argument("--scenarios", choices=["worst", "roomy", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--runs", type=int, default=3, help="rounds: each tree and variant once per round")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--customers", type=int, default=500, help="fresh customers per batch run (a tenth for RecordUsage)"
    )
    parser.add_argument(
        "--pg-stats", action="store_true", help="pg_stat_statements per event of each last-round run (embedded only)"
    )
    args = parser.parse_args()
    if "no outbox" not in args.variants:
        parser.error("the ratios need the 'no outbox' variant")
    if args.database_url:
        execute(args.database_url, args)
        return
    with tempfile.TemporaryDirectory() as folder:
        embedded = start_embedded(f"{folder}/pg", delete_on_stop=True)
        try:
            if args.pg_stats:
                bench_run.preload_statistics(embedded, 0.0)
            bench_run.POSTMASTER.append(bench_run.postmaster_pid(embedded))
            execute(embedded.uri(), args)
        finally:
            embedded.stop()


def execute(url: str, args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="metering-outbox-bench-"))
    catalog = folder / "catalog.toml"
    catalog.write_text(CATALOG)
    trees = [tree.resolve() for tree in args.trees]
    names = [tree.name for tree in trees]
    if len(set(names)) != len(names):
        names = [str(tree) for tree in trees]
    services: list[Service] = []
    lock = threading.Lock()
    with contextlib.ExitStack() as stack:
        try:
            for index, (tree, name) in enumerate(zip(trees, names, strict=True)):
                for variant in args.variants:
                    if variant == "no outbox":
                        src = no_outbox_copy(tree, folder / f"no-outbox-{index}")
                    else:
                        src = tree / "src"
                    env = {"PYTHONPATH": python_path(src, tree)}
                    service_folder = folder / f"{index}-{variant.replace(' ', '-').replace('+', '-')}"
                    service_folder.mkdir()
                    receiver = None
                    lags: list[float] = []
                    if variant == "outbox+webhooks":
                        receiver = stack.enter_context(webhook_receiver(lag_recorder(lags, lock)))
                        secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
                        webhooks = service_folder / "webhooks.toml"
                        kinds = ", ".join(f'"{t}"' for t in TYPES)
                        webhooks.write_text(
                            f'[endpoints.bench]\nurl = "{receiver.url}"\nsecrets = ["{secret}"]\ntypes = [{kinds}]\n'
                        )
                        env["METERING_WEBHOOKS_FILE"] = str(webhooks)
                    database = new_database(url, f"{index}_{variant.split()[0].replace('+', '_')}", args.pg_stats)
                    process = ServiceProcess(database, catalog=catalog, extra_env=env).start()
                    service = Service(name, variant, database, process, receiver, lags)
                    services.append(service)
                    assert process.process is not None
                    print(
                        f"{name:<12} {variant:<16} pid {process.process.pid}: {imported_from(env['PYTHONPATH'])}",
                        flush=True,
                    )
            measure(services, args, lock)
        finally:
            for service in services:
                service.process.stop()
            shutil.rmtree(folder, ignore_errors=True)  # the catalog, webhook files and "no outbox" copies


def lag_recorder(lags: list[float], lock: threading.Lock) -> Callable[[dict[str, str], bytes, int], int]:
    """A receiver's answer: 200, noting each delivery's lag (arrival minus the notification's time)."""

    def answer(headers: dict[str, str], body: bytes, before: int) -> int:
        arrived = time.time()
        committed = datetime.fromisoformat(json.loads(body)["time"].replace("Z", "+00:00")).timestamp()
        with lock:
            lags.append(arrived - committed)
        return 200

    return answer


def measure(services: list[Service], args: argparse.Namespace, lock: threading.Lock) -> None:
    scenarios = []
    if args.scenarios in ("worst", "all"):
        scenarios += [
            (Scenario("RecordUsage", RECORD, customers=max(1, args.customers // 10)), 64, False),
            (Scenario("RecordUsageBatch x100", BATCH, customers=args.customers, events_per_call=100), 8, False),
        ]
    if args.scenarios in ("roomy", "all"):
        scenarios += [
            (Scenario("RecordUsage, roomy", RECORD, customers=max(1, args.customers // 10)), 64, True),
            (Scenario("RecordUsageBatch x100, roomy", BATCH, customers=args.customers, events_per_call=100), 8, True),
        ]
    # A first run pays for what a process does once (imports, caches, the first
    # connections): not in the figures.
    for service in services:
        tag = f"warm{uuid.uuid4().hex[:8]}"
        create_customers(service.process.target, tag, 20, roomy=False)
        run(
            service.process.target,
            Scenario("warm-up", BATCH, customers=20, events_per_call=100, customer_tag=tag),
            concurrency=4,
            seconds=1.0,
            processes=1,
            run_tag=tag,
        )
    table: list[Row] = []
    for scenario, concurrency, roomy in scenarios:
        figures = {id(service): Figures() for service in services}
        for round_ in range(args.runs):
            order = services if round_ % 2 == 0 else list(reversed(services))
            for service in order:
                tag = f"ob{uuid.uuid4().hex[:8]}"
                create_customers(service.process.target, tag, args.customers, roomy)
                if args.pg_stats and round_ == args.runs - 1:
                    asyncio.run(bench_run.statement_stats(service.database, reset=True))
                assert service.process.process is not None
                pid = service.process.process.pid
                server_before = bench_run.server_cpu_seconds(pid)
                database_before = database_cpu_seconds() if bench_run.POSTMASTER else 0.0
                result = run(
                    service.process.target,
                    Scenario(
                        scenario.name,
                        scenario.method,
                        customers=scenario.customers,
                        events_per_call=scenario.events_per_call,
                        customer_tag=tag,
                    ),
                    concurrency=concurrency,
                    seconds=args.seconds,
                    processes=args.processes,
                    run_tag=f"{tag}r{round_}",
                )
                server = bench_run.server_cpu_seconds(pid) - server_before
                database = (database_cpu_seconds() - database_before) if bench_run.POSTMASTER else 0.0
                # Every call's events were decided in a write transaction,
                # recorded or refused by their limit: both count.
                decided = result.calls * scenario.events_per_call
                figure = figures[id(service)]
                figure.rates.append(decided / args.seconds)
                figure.server_us.append(server * 1e6 / max(1, decided))
                figure.database_us.append(database * 1e6 / max(1, decided))
                print(
                    f"{scenario.name:<28} c={concurrency:<3} {service.tree:<12} {service.variant:<16} "
                    f"round {round_ + 1}: {decided / args.seconds:>9,.0f} events decided/s  "
                    f"server {figure.server_us[-1]:6.1f} us/event  db {figure.database_us[-1]:6.1f} us/event  "
                    f"p99 {result.p99_ms:7.2f} ms  errors {result.errors or '{}'}",
                    flush=True,
                )
                if args.pg_stats and round_ == args.runs - 1:
                    print(f"   {service.tree} {service.variant}:")
                    bench_run.print_statement_stats(service.database, decided)
        for service in services:
            if service.variant == "no outbox":
                continue
            ceiling = next(s for s in services if s.tree == service.tree and s.variant == "no outbox")
            mine, theirs = figures[id(service)], figures[id(ceiling)]
            paired = [a / b if b else float("nan") for a, b in zip(mine.rates, theirs.rates, strict=True)]
            # CPU per event decided, server and PostgreSQL together, the ceiling's
            # over this variant's: what the throughput ratio tends to when the
            # two cores are the bottleneck, steadier on a shared machine.
            cpu = [
                (ts + td) / (ms + md) if ms + md else float("nan")
                for ms, md, ts, td in zip(
                    mine.server_us, mine.database_us, theirs.server_us, theirs.database_us, strict=True
                )
            ]
            table.append((scenario.name, service, mine, paired, cpu))
        for service in services:
            if service.variant == "no outbox":
                table.append((scenario.name, service, figures[id(service)], [], []))
    for service in services:
        if service.variant == "no outbox" and service.database:
            assert count_notifications(service.database) == 0, "the 'no outbox' variant wrote notifications"
    print_table(table, args)
    # Let the last deliveries arrive, then the lag of every one of them.
    hooked = [s for s in services if s.receiver is not None]
    settle = time.monotonic() + 60
    while hooked and time.monotonic() < settle:
        before = sum(len(s.receiver.requests) for s in hooked if s.receiver is not None)
        time.sleep(2)
        if sum(len(s.receiver.requests) for s in hooked if s.receiver is not None) == before:
            break
    for service in hooked:
        with lock:
            measured = sorted(service.lags)
        print(
            f"{service.tree}: webhook deliveries {len(measured):,}: lag p50 {quantile(measured, 50) * 1000:.0f} ms, "
            f"p99 {quantile(measured, 99) * 1000:.0f} ms, max {(measured[-1] if measured else 0) * 1000:.0f} ms "
            f"(target p99 <= 1000 ms)"
        )


Row = tuple[str, Service, Figures, list[float], list[float]]


def print_table(table: list[Row], args: argparse.Namespace) -> None:
    print(
        f"\n== the same load with the outbox / without it (median of {args.runs} paired rounds [min-max]; "
        "events/s ratio, and CPU ratio: server + db CPU per event of no outbox / of the variant; "
        "target >= 0.90 for outbox+webhooks in the worst case) ==",
        flush=True,
    )
    print(
        f"{'scenario':<28} {'tree':<12} {'variant':<16} {'events/s':>9} {'server us/ev':>12} {'db us/ev':>9}  "
        f"{'events/s ratio':<18} CPU ratio"
    )

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]" if values else "1 (ceiling)"

    for name, service, figures, paired, cpu in sorted(table, key=lambda row: (row[0], row[1].tree, row[1].variant)):
        print(
            f"{name:<28} {service.tree:<12} {service.variant:<16} {statistics.median(figures.rates):>9,.0f} "
            f"{statistics.median(figures.server_us):>12.1f} {statistics.median(figures.database_us):>9.1f}  "
            f"{spread(paired):<18} {spread(cpu)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
