"""UsageRecorder throughput against awaiting one RecordUsage at a time, in one run.

    .venv/bin/python bench/recorder.py                      # embedded PostgreSQL
    .venv/bin/python bench/recorder.py --database-url URL   # a database it may fill

One service process on 127.0.0.1 (tests/catalog.toml). In turns, --runs
times each, for --seconds each:

* one task awaiting AsyncMeteringClient.record_usage for one event after
  another (what a caller without the recorder does);
* --tasks tasks calling UsageRecorder.record (max_batch --batch, linger
  --linger) as fast as they can, with back-pressure; the run's events are
  counted once every future has resolved (close()).

Every event has its own transaction id, on customers of the `open` plan (no
limit refusals). Prints events/s of each run, the medians and their ratio
(the target: >= 10x); asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tests.*`

from metering.client import AsyncMeteringClient, Connection, UsageRecord, UsageRecorder  # noqa: E402
from metering.runtime.embedded import start_embedded  # noqa: E402
from tests.support import ServiceProcess  # noqa: E402


async def _customers(client: AsyncMeteringClient, count: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    names = [f"bench-rec-{tag}-{i}" for i in range(count)]
    for name in names:
        await client.upsert_customer(name, "open", billing_anchor=datetime.now(UTC) - timedelta(days=1))
    return names


async def one_at_a_time(client: AsyncMeteringClient, seconds: float) -> float:
    (customer,) = await _customers(client, 1)
    done = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        await client.record_usage(customer, "tokens", 1, transaction_id=f"{customer}-{done}")
        done += 1
    return done / (time.monotonic() - started)


async def with_recorder(client: AsyncMeteringClient, seconds: float, args: argparse.Namespace) -> tuple[float, str]:
    customers = await _customers(client, args.tasks)
    recorder = UsageRecorder(client, max_batch=args.batch, linger=args.linger)
    futures = []
    started = time.monotonic()

    async def produce(customer: str) -> None:
        i = 0
        while time.monotonic() - started < seconds:
            futures.append(await recorder.record(UsageRecord(customer, "tokens", 1, f"{customer}-{i}")))
            i += 1

    await asyncio.gather(*(produce(c) for c in customers))
    await recorder.close()  # every queued event sent and answered
    elapsed = time.monotonic() - started
    failed = sum(1 for f in futures if f.exception() is not None)
    if failed:
        raise SystemExit(f"{failed} recorder events failed")
    stats = recorder.stats
    shape = f"{stats.batches} batches, mean {stats.events / max(stats.batches, 1):.0f} events"
    return len(futures) / elapsed, shape


async def measure(target: str, args: argparse.Namespace) -> None:
    singles: list[float] = []
    batched: list[float] = []
    async with AsyncMeteringClient(Connection(target=target)) as client:
        await one_at_a_time(client, 0.5)  # warm-up: connections, the service's caches
        for run in range(1, args.runs + 1):
            single = await one_at_a_time(client, args.seconds)
            rate, shape = await with_recorder(client, args.seconds, args)
            singles.append(single)
            batched.append(rate)
            print(f"run {run}: one RecordUsage at a time {single:8.0f} events/s   ", end="")
            print(f"UsageRecorder {rate:8.0f} events/s ({shape})")
    single, rate = statistics.median(singles), statistics.median(batched)
    print(f"median: one RecordUsage at a time {single:.0f} events/s, UsageRecorder {rate:.0f} events/s")
    print(f"ratio UsageRecorder / one at a time: {rate / single:.1f}x (target >= 10x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL URL (default: a temporary embedded server)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant, in turns")
    parser.add_argument("--tasks", type=int, default=8, help="tasks recording through the UsageRecorder")
    parser.add_argument("--batch", type=int, default=1000, help="UsageRecorder max_batch")
    parser.add_argument("--linger", type=float, default=0.05, help="UsageRecorder linger, seconds")
    args = parser.parse_args()
    embedded = None
    url = args.database_url
    if url is None:
        folder = Path(tempfile.mkdtemp(prefix="metering-recorder-bench-"))
        embedded = start_embedded(folder / "pg", delete_on_stop=True)
        url = embedded.uri("postgres")
    service = ServiceProcess(url).start()
    print(f"service {service.target} on {url.rsplit('@', 1)[-1]}; {args.runs} runs of {args.seconds:g} s each")
    try:
        asyncio.run(measure(service.target, args))
    finally:
        service.stop()
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
