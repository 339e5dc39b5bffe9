"""A frozen database, measured from outside: how long each call waits for its answer.

    .venv/bin/python bench/frozen.py                    # freezes of 8 s and 5 s (default)
    .venv/bin/python bench/frozen.py --freeze 8 --freeze 3

It starts its own embedded PostgreSQL and two `python -m metering serve`
processes on it (METERING_DB_TIMEOUT 2 s), and 12 callers: 8 send
RecordUsage and RecordUsageBatch (retrying every uncertain answer with the
same transaction id, as a client should), 4 send CheckBalance. Every call has
a deadline of 30 s, so that what is measured is the service's answer, not the
client's patience. For each freeze: 3 s of load, SIGSTOP of the postmaster and
every backend for the given time, SIGCONT, 3 s of load again.

It prints, for the calls that were waiting on the service at some moment of
the freeze, the distribution of their answer times by code and method, how
many took longer than METERING_DB_TIMEOUT + 1 s, and the calls sent in the
first second of the freeze. Then every pending event is retried to a definite
answer and the ledger is checked against every answer (tests.faults.check_ledger:
nothing acknowledged lost, nothing twice, the audit clean). Exit code 0 only if
every call answered within METERING_DB_TIMEOUT + 1 s, none INTERNAL/UNKNOWN, and
the ledger check held.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `tests.faults` and `tests.support`
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # see bench/chaos.py

from metering.runtime.embedded import EmbeddedPostgres, start_embedded
from tests.faults import (
    Attempt,
    Book,
    Client,
    LoadMix,
    Replica,
    RetryPolicy,
    add_customers,
    check_ledger,
    drive,
    freeze_postgres,
    thaw_postgres,
    wait_serving,
    write_catalog,
)

DB_TIMEOUT = 2.0  # METERING_DB_TIMEOUT of the services
BOUND = DB_TIMEOUT + 1.0  # what every call's answer must come within
CALL_DEADLINE = 30.0  # longer than any freeze: the service answers, not the deadline
WRITERS = 8
READERS = 4
LOAD_AROUND = 3.0  # seconds of load before and after each freeze


@dataclass(frozen=True)
class Freeze:
    seconds: float
    started: float  # time.monotonic()
    thawed: float


def waiting_during(attempts: Sequence[Attempt], freeze: Freeze) -> list[Attempt]:
    """The calls that were waiting on the service at some moment of the freeze."""
    return [a for a in attempts if a.started < freeze.thawed and a.ended > freeze.started]


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def answer(a: Attempt) -> str:
    """The call's code; a batch answered OK says how many of its events were refused UNAVAILABLE."""
    if a.code == "OK" and a.uncertain:
        return "OK, events UNAVAIL." if a.uncertain == a.events else "OK, some UNAVAIL."
    return a.code


def distribution(attempts: Sequence[Attempt]) -> str:
    times = [a.ended - a.started for a in attempts]
    if not times:
        return "none"
    return (
        f"n {len(times):>4}  p50 {quantile(times, 0.5):5.2f}  p90 {quantile(times, 0.9):5.2f}  "
        f"p99 {quantile(times, 0.99):5.2f}  max {max(times):5.2f} s"
    )


def report_freeze(freeze: Freeze, attempts: Sequence[Attempt]) -> int:
    """Prints the freeze's answer times; returns how many calls broke the bound."""
    during = waiting_during(attempts, freeze)
    print(f"\n== PostgreSQL frozen {freeze.thawed - freeze.started:.1f} s ==")
    print(f"  calls waiting on the service during the freeze: {distribution(during)}")
    groups: dict[tuple[str, str], list[Attempt]] = {}
    for a in during:
        groups.setdefault((a.method, answer(a)), []).append(a)
    for (method, code), group in sorted(groups.items()):
        print(f"    {method:<17} {code:<20} {distribution(group)}")
    first = [a for a in during if freeze.started <= a.started < freeze.started + 1.0]
    print(f"  sent in the first second of the freeze:          {distribution(first)}")
    print(f"    answered: {', '.join(sorted({answer(a) for a in first})) or 'none'}")
    slow = [a for a in during if a.ended - a.started > BOUND]
    slow_ok = [a for a in during if answer(a) == "OK" and a.ended - a.started > DB_TIMEOUT]
    print(f"  answered after more than METERING_DB_TIMEOUT + 1 s ({BOUND:g} s): {len(slow)}")
    print(f"  answered OK after more than METERING_DB_TIMEOUT ({DB_TIMEOUT:g} s): {len(slow_ok)}")
    return len(slow)


async def frozen(freezes: Sequence[float]) -> int:
    tag = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory(prefix="metering-frozen-") as tmp:
        catalog = write_catalog(Path(tmp))
        print(f"frozen: starting an embedded PostgreSQL in {tmp} and two services", flush=True)
        embedded = await asyncio.to_thread(start_embedded, Path(tmp) / "pg", delete_on_stop=True)
        settings = {"METERING_DB_TIMEOUT": f"{DB_TIMEOUT:g}s", "METERING_HEALTH_INTERVAL": "200ms"}
        replicas = [Replica(name, embedded.uri(), catalog, **settings) for name in ("A", "B")]
        try:
            await asyncio.gather(*(asyncio.to_thread(r.start) for r in replicas))
            targets = [r.target for r in replicas]
            plans = {f"frozen-{tag}-{i}": "open" for i in range(8)}
            await add_customers(targets[0], plans)
            customers = list(plans)
            mix = LoadMix([(c, 1.0) for c in customers], tiny_deadline_share=0.0)
            book = Book(f"frozen-{tag}")
            policy = RetryPolicy(call_timeout=CALL_DEADLINE)
            results: list[Freeze] = []
            async with Client(targets, book, policy) as client:
                for seconds in freezes:
                    results.append(await _freeze_under_load(client, mix, customers, embedded, seconds))
                    assert await wait_serving(targets[0], customers[0], limit=60) is not None
                await client.resolve(book.pending())
            for replica in replicas:  # a quiet ledger for the check
                await asyncio.to_thread(replica.stop)
            check = await check_ledger(embedded.uri(), book, catalog)
        finally:
            for replica in replicas:
                await asyncio.to_thread(replica.stop)
            await asyncio.to_thread(embedded.server.ensure_postgres_running)  # its cleanup needs it running
            await asyncio.to_thread(embedded.stop)
    print(
        f"\nfrozen: {len(book.attempts):,} calls ({WRITERS} writing callers, {READERS} CheckBalance callers, "
        f"2 replicas, METERING_DB_TIMEOUT {DB_TIMEOUT:g} s, call deadline {CALL_DEADLINE:g} s)"
    )
    broken = sum(report_freeze(freeze, book.attempts) for freeze in results)
    print(
        f"\nledger: {check.rows:,} events; acknowledged missing {len(check.acked_missing)}, "
        f"duplicates {check.duplicates}, unresolved {len(check.unresolved)}, INTERNAL/UNKNOWN "
        f"{sum(check.server_errors.values())}, audit {'clean' if check.audit.ok else 'NOT CLEAN'}"
    )
    ok = broken == 0 and check.ok
    print(f"frozen: {'every call answered within the bound; ledger ok' if ok else 'FAILED'}")
    return 0 if ok else 1


async def _freeze_under_load(
    client: Client, mix: LoadMix, customers: list[str], embedded: EmbeddedPostgres, seconds: float
) -> Freeze:
    stop = asyncio.Event()

    async def read() -> None:
        while not stop.is_set():
            await client.check_balance(random.choice(customers))

    until = time.monotonic() + 2 * LOAD_AROUND + seconds + 60  # `stop` ends it sooner
    load = asyncio.gather(drive(client, mix, until=until, tasks=WRITERS, stop=stop), *(read() for _ in range(READERS)))
    await asyncio.sleep(LOAD_AROUND)
    started = time.monotonic()
    pids = freeze_postgres(embedded)
    try:
        await asyncio.sleep(seconds)
    finally:
        thaw_postgres(pids)
    thawed = time.monotonic()
    await asyncio.sleep(LOAD_AROUND)
    stop.set()
    await load
    return Freeze(seconds, started, thawed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--freeze", type=float, action="append", help="seconds of one freeze (repeatable; default: 8 and 5)"
    )
    args = parser.parse_args(argv)
    return asyncio.run(frozen(args.freeze or [8.0, 5.0]))


if __name__ == "__main__":
    sys.exit(main())
