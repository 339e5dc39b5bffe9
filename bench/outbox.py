"""The outbox's cost and webhook delivery lag, measured in one run.

    .venv/bin/python bench/outbox.py                      # embedded PostgreSQL
    .venv/bin/python bench/outbox.py --database-url URL   # a database it may fill

Three service processes, measured in turns with the same load: the code of
--baseline (main before the outbox, from a git worktree, on a database of its
own), and this tree with no webhook endpoint and with an endpoint (every type)
delivering to a local receiver on 127.0.0.1 (on one database). Every run uses fresh customers on plans with
small hard limits (20 to 200), so the load writes notifications throughout
(each customer crosses 80% and 100%, then is refused, announced once): the
figure with the endpoint pays for its deliveries on the same CPU. The
"roomy" scenarios repeat both on a plan whose hard limit is never reached:
the common case, where the outbox only checks for crossings. Throughput
is events decided per second, recorded or refused: each is decided in a write
transaction. The ratio that
answers "what does the outbox cost" is with endpoint / before the outbox; with
/ without endpoint is the cost of delivering alone.

Delivery lag is measured at the receiver: the arrival of each 2xx delivery
minus the notification's commit time (same machine, same clock). Prints
figures and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tests.*` and `bench.loadgen`

from bench.loadgen import BATCH, RECORD, Scenario, customer_id, run  # noqa: E402
from metering.runtime.embedded import start_embedded  # noqa: E402
from metering.v1 import customer_pb2, metering_service_pb2_grpc  # noqa: E402
from tests.receiver import webhook_receiver  # noqa: E402
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


BASELINE = "dae708d"  # main just before the outbox was merged


def baseline_service(url: str, commit: str, catalog: Path) -> tuple[ServiceProcess, Path]:
    """`commit`'s service, from a git worktree, on a fresh database of the same server."""
    tree = Path(tempfile.mkdtemp(prefix="metering-outbox-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True)
    name = f"bench_baseline_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    database = urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    return ServiceProcess(database, catalog=catalog, extra_env={"PYTHONPATH": str(tree / "src")}).start(), tree


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


def quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100)[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a temporary embedded server)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant, in turns")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument(
        "--baseline", default=BASELINE, help="the commit measured as 'before the outbox' ('' to skip it)"
    )
    parser.add_argument(
        "--customers", type=int, default=500, help="fresh customers per batch run (a tenth for RecordUsage)"
    )
    args = parser.parse_args()
    if args.database_url:
        execute(args.database_url, args)
        return
    with tempfile.TemporaryDirectory() as folder:
        embedded = start_embedded(f"{folder}/pg", delete_on_stop=True)
        try:
            execute(embedded.uri(), args)
        finally:
            embedded.stop()


def execute(url: str, args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="metering-outbox-bench-"))
    catalog = folder / "catalog.toml"
    catalog.write_text(CATALOG)
    lags: list[float] = []
    lock = threading.Lock()

    def answer(headers: dict[str, str], body: bytes, before: int) -> int:
        arrived = time.time()
        committed = datetime.fromisoformat(json.loads(body)["time"].replace("Z", "+00:00")).timestamp()
        with lock:
            lags.append(arrived - committed)
        return 200

    with webhook_receiver(answer) as receiver:
        secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        webhooks = folder / "webhooks.toml"
        webhooks.write_text(
            f'[endpoints.bench]\nurl = "{receiver.url}"\nsecrets = ["{secret}"]\n'
            'types = ["usage.threshold_crossed", "usage.limit_rejected", "invoice.finalized"]\n'
        )
        plain = ServiceProcess(url, catalog=catalog).start()
        hooked = ServiceProcess(url, catalog=catalog, extra_env={"METERING_WEBHOOKS_FILE": str(webhooks)}).start()
        variants = [("without endpoint", plain), ("with endpoint", hooked)]
        tree = None
        if args.baseline:
            baseline_process, tree = baseline_service(url, args.baseline, catalog)
            variants.insert(0, ("before the outbox", baseline_process))
        try:
            scenarios = [
                (Scenario("RecordUsage", RECORD, customers=max(1, args.customers // 10)), 64, False),
                (Scenario("RecordUsageBatch x100", BATCH, customers=args.customers, events_per_call=100), 8, False),
                (Scenario("RecordUsage, roomy", RECORD, customers=max(1, args.customers // 10)), 64, True),
                (
                    Scenario("RecordUsageBatch x100, roomy", BATCH, customers=args.customers, events_per_call=100),
                    8,
                    True,
                ),
            ]
            for scenario, concurrency, roomy in scenarios:
                figures: dict[str, list[float]] = {label: [] for label, _ in variants}
                for index in range(args.runs):
                    for label, service in variants:
                        tag = f"ob{uuid.uuid4().hex[:8]}"
                        create_customers(service.target, tag, args.customers, roomy)
                        result = run(
                            service.target,
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
                            run_tag=f"{tag}r{index}",
                        )
                        # Every call's events were decided in a write transaction,
                        # recorded or refused by their limit: both count.
                        decided = result.calls_per_second * scenario.events_per_call
                        figures[label].append(decided)
                        print(
                            f"{scenario.name:<22} c={concurrency:<3} {label:<17} run {index + 1}: "
                            f"{decided:>9,.0f} events decided/s  p99 {result.p99_ms:7.2f} ms  "
                            f"errors {result.errors or '{}'}",
                            flush=True,
                        )
                without, with_ = (
                    statistics.median(figures["without endpoint"]),
                    statistics.median(figures["with endpoint"]),
                )
                print(
                    f"-- {scenario.name}: median {with_:,.0f} with endpoint / {without:,.0f} without = "
                    f"{with_ / without if without else float('nan'):.2f}",
                    flush=True,
                )
                if "before the outbox" in figures:
                    baseline = statistics.median(figures["before the outbox"])
                    print(
                        f"-- {scenario.name}: median {with_:,.0f} with outbox and endpoint / {baseline:,.0f} before "
                        f"the outbox = {with_ / baseline if baseline else float('nan'):.2f} (target >= 0.90)",
                        flush=True,
                    )
            # Let the last deliveries arrive, then the lag of every one of them.
            settle = time.monotonic() + 60
            while time.monotonic() < settle:
                before = len(receiver.requests)
                time.sleep(2)
                if len(receiver.requests) == before:
                    break
            with lock:
                measured = sorted(lags)
            print(
                f"\nwebhook deliveries {len(measured):,}: lag p50 {quantile(measured, 50) * 1000:.0f} ms, "
                f"p99 {quantile(measured, 99) * 1000:.0f} ms, max {(measured[-1] if measured else 0) * 1000:.0f} ms "
                f"(target p99 <= 1000 ms)"
            )
        finally:
            for _, service in variants:
                service.stop()
            if tree is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


if __name__ == "__main__":
    main()
