"""The writer's wire form of a batch's times: client CPU per event of sending
its two time arrays (event times, period starts) as timestamptz[] against
epoch_micros and bigint[] (metering.ledger.sql), alternated in one process.

    .venv/bin/python bench/timestamps.py --database-url URL

Each event of a batch has its own time here, and they share one period start.
Prints the median, min and max of --rounds rounds of --calls calls each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from metering.ledger.sql import epoch_micros

EVENTS = 1000


async def measure(args: argparse.Namespace) -> None:
    conn = await asyncpg.connect(args.database_url)
    try:
        now = datetime.now(UTC)
        event_times = [now + timedelta(microseconds=i) for i in range(EVENTS)]
        period_starts = [now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)] * EVENTS
        as_timestamps = await conn.prepare("SELECT cardinality($1::timestamptz[]) + cardinality($2::timestamptz[])")
        as_micros = await conn.prepare("SELECT cardinality($1::bigint[]) + cardinality($2::bigint[])")

        async def timestamps() -> object:
            return await as_timestamps.fetchval(event_times, period_starts)

        async def micros() -> object:
            return await as_micros.fetchval(epoch_micros(event_times), epoch_micros(period_starts))

        variants: dict[str, Callable[[], Awaitable[object]]] = {
            "timestamptz[] x2": timestamps,
            "epoch_micros + bigint[] x2": micros,
        }
        figures: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, send in variants.items():
                started = time.process_time()
                for _ in range(args.calls):
                    await send()
                figures[name].append((time.process_time() - started) / args.calls / EVENTS * 1e6)
        for name, values in figures.items():
            print(
                f"{name:<28} {statistics.median(values):5.2f} us client CPU per event "
                f"[{min(values):.2f}-{max(values):.2f}]"
            )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=100)
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
