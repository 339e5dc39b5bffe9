"""Chaos run: load on two replicas while processes and the database die, then
check that the ledger says exactly what the clients were told.

    .venv/bin/python bench/chaos.py                  # 60 s of load (default)
    .venv/bin/python bench/chaos.py --duration 300   # longer
    .venv/bin/python bench/chaos.py --smoke          # 18 s of load, for CI
    .venv/bin/python bench/chaos.py --failover both  # the failover scenario, synchronous then asynchronous

It starts its own embedded PostgreSQL and two `python -m metering serve`
processes on it (own ports, a catalog of its own with hard limits), drives
RecordUsage and RecordUsageBatch from concurrent clients that retry every
uncertain answer with the same transaction id, and on a schedule:

1. SIGKILLs one service and starts it again;
2. SIGKILLs PostgreSQL (postmaster and backends) and starts it again;
3. ends every session of the services (pg_terminate_backend), five times;
4. SIGTERMs the other service (in-flight calls must finish, the process must
   exit within its grace period) and starts it again;
5. SIGSTOPs PostgreSQL for a while (a hung server) and SIGCONTs it;
6. gives every first attempt a deadline of 1-20 ms for a while.

With --failover it runs the failover scenario instead (tests/failover.py): a
primary and a pg_basebackup -R standby, synchronous and/or asynchronous,
the primary SIGKILLed under load and the standby promoted.

Then it checks the ledger against every answer (nothing acknowledged lost, no
duplicate, no event nobody asked for, no hard limit exceeded, every counter
equal to its events) and prints a table. Exit code 0 only if everything held.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `tests.faults` and `tests.support`
# Services are started (fork + exec) from threads while the client's gRPC is
# busy; the children exec at once, so gRPC's fork handlers are not needed (and
# would only print a warning that they were skipped).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from grpc_health.v1 import health_pb2

from metering.runtime.embedded import EmbeddedPostgres, start_embedded
from tests.failover import failover
from tests.failover import report as report_failover
from tests.faults import (
    EXIT_MARGIN,
    Attempt,
    Book,
    Client,
    LedgerCheck,
    LoadMix,
    Outcome,
    Replica,
    RetryPolicy,
    add_customers,
    check_ledger,
    crash_postgres,
    drive,
    end_sessions,
    freeze_postgres,
    health,
    restart_postgres,
    thaw_postgres,
    wait_health,
    wait_serving,
    write_catalog,
)

GRACE = 3.0  # METERING_SHUTDOWN_GRACE of the services
DB_TIMEOUT = 2.0  # METERING_DB_TIMEOUT of the services
CALL_DEADLINE = 3 * DB_TIMEOUT  # of every call but the tiny-deadline first attempts
GRPC_SEND_FAILED = "ExecuteBatchError raised in core by servicer method"
DRAIN_ANSWERS = ("OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "CANCELLED")
RECOVERY_LIMIT = 60.0  # a fault after which nothing serves for this long fails the run
SERVICE_SETTINGS = {
    "METERING_SHUTDOWN_GRACE": f"{GRACE:g}s",
    "METERING_HEALTH_INTERVAL": "200ms",
    "METERING_DB_TIMEOUT": f"{DB_TIMEOUT:g}s",
}


@dataclass
class Fault:
    at: float  # seconds into the load
    name: str
    replica: str
    serving_again: float | None  # seconds from the fault until the replica(s) served again
    ok: bool
    detail: str
    measured: bool = True  # False: a fault that takes nothing down, no recovery to time


@dataclass
class Run:
    started: float
    replicas: list[Replica]
    probe: str  # a customer that only CheckBalance probes touch
    faults: list[Fault]
    outages: list[tuple[float, float]] = field(default_factory=list)  # database down or frozen: from, to
    drain_in_flight: list[Attempt] | None = None  # calls to the SIGTERMed replica in flight at SIGTERM

    def now(self) -> float:
        return time.monotonic() - self.started


def customers(tag: str) -> tuple[dict[str, str], LoadMix]:
    """The customers (id -> plan) and the load's weights over them: hot ones,
    one of them hard-limited, some near small hard limits, a tail of quiet ones."""
    plans: dict[str, str] = {}
    weights: list[tuple[str, float]] = []

    def add(name: str, plan: str, weight: float) -> None:
        plans[f"chaos-{tag}-{name}"] = plan
        weights.append((f"chaos-{tag}-{name}", weight))

    add("hot-open", "open", 20)
    add("hot-capped", "roomy", 15)
    for i in range(2):
        add(f"tight-{i}", "tight", 4)
        add(f"medium-{i}", "medium", 5)
    for i in range(10):
        add(f"quiet-{i}", "open", 3)
    return plans, LoadMix(customers=weights)


async def sleep_until(run: Run, at: float) -> None:
    await asyncio.sleep(max(0.0, at - run.now()))


async def kill_service(run: Run, replica: Replica, book: Book) -> Fault:
    at, t0 = run.now(), time.monotonic()
    await asyncio.to_thread(replica.kill)
    await asyncio.sleep(0.5)  # down for a moment: clients must fail over, not hang
    took = await asyncio.to_thread(replica.start)
    again = await wait_serving(replica.target, run.probe, limit=RECOVERY_LIMIT, since=t0)
    cut = Counter(a.code for a in book.attempts if a.target == replica.target and a.started < t0 < a.ended)
    detail = (
        f"calls in flight when it died: {sum(cut.values())} ({_codes(cut)}); "
        f"restarted on the same port (start-up {took:.2f} s)"
    )
    return Fault(at, "SIGKILL service mid-load, restart", replica.name, again, again is not None, detail)


async def kill_database(run: Run, embedded: EmbeddedPostgres, book: Book, down: float) -> Fault:
    at, t0 = run.now(), time.monotonic()
    crashed = crash_postgres(embedded)
    seen = {r.name: False for r in run.replicas}
    while time.monotonic() < t0 + down:
        for replica in run.replicas:
            if await health(replica.target, wait=0.5) == health_pb2.HealthCheckResponse.NOT_SERVING:
                seen[replica.name] = True
        await asyncio.sleep(0.1)
    await asyncio.to_thread(restart_postgres, embedded, crashed)
    restarted = time.monotonic()
    run.outages.append((t0, restarted))
    waits = await asyncio.gather(
        *(wait_serving(r.target, run.probe, limit=RECOVERY_LIMIT, since=restarted) for r in run.replicas)
    )
    # Health follows its own probe (every METERING_HEALTH_INTERVAL), not the calls.
    healthy = await asyncio.gather(
        *(wait_health(r.target, health_pb2.HealthCheckResponse.SERVING, limit=RECOVERY_LIMIT) for r in run.replicas)
    )
    ok = all(w is not None for w in waits) and all(seen.values()) and all(h is not None for h in healthy)
    again = None if any(w is None for w in waits) else max(w for w in waits if w is not None) + (restarted - t0)
    during = [a for a in book.attempts if t0 <= a.started and a.ended <= restarted]
    refused = [a.ended - a.started for a in during if a.code == "UNAVAILABLE"]
    detail = (
        f"calls sent while it was down: {len(during)} ({_codes(Counter(a.code for a in during))}; events in them "
        f"left without a definite answer: {sum(a.uncertain for a in during)} of {sum(a.events for a in during)}), "
        f"slowest UNAVAILABLE {max(refused, default=0):.2f} s; down {restarted - t0:.1f} s (restart took "
        f"{restarted - t0 - down:.2f} s); serving after restart: "
        + ", ".join(f"{r.name} {_secs(w)}" for r, w in zip(run.replicas, waits, strict=True))
        + "; NOT_SERVING seen: "
        + ", ".join(f"{name} {'yes' if s else 'NO'}" for name, s in seen.items())
        + "; health SERVING again: "
        + ", ".join(f"{r.name} {'yes' if h is not None else 'NO'}" for r, h in zip(run.replicas, healthy, strict=True))
    )
    return Fault(at, "SIGKILL PostgreSQL (postmaster + backends), restart", "all", again, ok, detail)


async def freeze_database(run: Run, embedded: EmbeddedPostgres, book: Book, frozen_for: float) -> Fault:
    at, t0 = run.now(), time.monotonic()
    pids = freeze_postgres(embedded)
    seen = {r.name: False for r in run.replicas}
    try:
        while time.monotonic() < t0 + frozen_for:
            for replica in run.replicas:
                if await health(replica.target, wait=0.5) == health_pb2.HealthCheckResponse.NOT_SERVING:
                    seen[replica.name] = True
            await asyncio.sleep(0.1)
    finally:
        thaw_postgres(pids)
    thawed = time.monotonic()
    run.outages.append((t0, thawed))
    waits = await asyncio.gather(
        *(wait_serving(r.target, run.probe, limit=RECOVERY_LIMIT, since=thawed) for r in run.replicas)
    )
    # A call sent while it was frozen is answered within twice METERING_DB_TIMEOUT
    # (a stuck batch ahead of it, then its own): wait for those answers.
    await asyncio.sleep(max(0.0, thawed + 2 * DB_TIMEOUT - time.monotonic()))
    during = [a for a in book.attempts if t0 <= a.started <= thawed]
    slowest = max((a.ended - a.started for a in during if a.code != "DEADLINE_EXCEEDED"), default=0.0)
    again = None if any(w is None for w in waits) else max(w for w in waits if w is not None) + (thawed - t0)
    detail = (
        f"frozen {thawed - t0:.1f} s; calls meanwhile: {len(during)} ({_codes(Counter(a.code for a in during))}), "
        f"slowest answer {slowest:.2f} s (METERING_DB_TIMEOUT {DB_TIMEOUT:g} s); "
        "NOT_SERVING seen: " + ", ".join(f"{name} {'yes' if s else 'NO'}" for name, s in seen.items())
    )
    ok = again is not None and all(seen.values())
    return Fault(at, "SIGSTOP PostgreSQL (a hung server), SIGCONT", "all", again, ok, detail)


async def end_sessions_fault(run: Run, database_url: str, book: Book, rounds: int = 5) -> Fault:
    at, t0 = run.now(), time.monotonic()
    ended = 0
    for _ in range(rounds):
        ended += await end_sessions(database_url)
        await asyncio.sleep(0.2)
    last = time.monotonic()
    waits = await asyncio.gather(
        *(wait_serving(r.target, run.probe, limit=RECOVERY_LIMIT, since=last) for r in run.replicas)
    )
    during = Counter(a.code for a in book.attempts if t0 <= a.started and a.ended <= last)
    again = None if any(w is None for w in waits) else max(w for w in waits if w is not None)
    detail = (
        f"{ended} sessions ended in {rounds} rounds over {last - t0:.1f} s; calls meanwhile: {_codes(during)}; "
        "serving again counted from the last round"
    )
    name = "PostgreSQL ends every session (pg_terminate_backend)"
    return Fault(at, name, "all", again, again is not None, detail)


async def terminate_service(run: Run, replica: Replica, book: Book) -> Fault:
    at = run.now()
    stopped = await asyncio.to_thread(replica.terminate, GRACE + EXIT_MARGIN + 10)
    t0, ended = stopped.sent, stopped.sent + stopped.exited_after
    mine = [a for a in book.attempts if a.target == replica.target]
    # Calls in flight when SIGTERM came finish with their answer (OK, or a
    # limit's refusal), or are refused retryable if the server had not started
    # them yet: UNAVAILABLE, or CANCELLED for calls gRPC had received but not
    # yet handed to the service (as test_operations.py accepts). That those
    # refused wrote nothing is checked once every event has its answer. A
    # call with a 1-20 ms deadline of its own may run out of it here as
    # anywhere else: its client gave up; the drain did not cut it off.
    run.drain_in_flight = [a for a in mine if a.started < t0 < a.ended]
    in_flight = Counter(a.code for a in run.drain_in_flight)
    cut_off = sum(
        1
        for a in run.drain_in_flight
        if a.code not in DRAIN_ANSWERS and not (a.code == "DEADLINE_EXCEEDED" and a.timeout <= 0.02)
    )
    # Calls sent once the drain had begun must be refused, not served.
    drain = stopped.drain_seen
    served = ("OK", "RESOURCE_EXHAUSTED")
    late = 0 if drain is None else sum(1 for a in mine if drain < a.started < ended and a.code in served)
    restart = await asyncio.to_thread(replica.start)
    again = await wait_serving(replica.target, run.probe, limit=RECOVERY_LIMIT, since=t0)
    within = stopped.code == 0 and stopped.exited_after <= GRACE + EXIT_MARGIN
    detail = (
        f"exited after {stopped.exited_after:.2f} s with code {stopped.code} (grace {GRACE:g} s); "
        f"calls in flight at SIGTERM: {sum(in_flight.values())} ({_codes(in_flight)}); "
        f"calls served after the drain began: {late}; restarted (start-up {restart:.2f} s)"
    )
    ok = within and drain is not None and cut_off == 0 and late == 0 and again is not None
    return Fault(at, f"SIGTERM service (grace {GRACE:g} s), restart", replica.name, again, ok, detail)


def deadline_storm(run: Run, book: Book, start: float, end: float) -> Fault:
    window = [a for a in book.attempts if start <= a.started - run.started < end and a.timeout <= 0.02]
    codes = Counter(a.code for a in window)
    detail = f"{len(window)} calls with a 1-20 ms deadline: {_codes(codes)}"
    return Fault(start, "tiny client deadlines (1-20 ms) on every first attempt", "both", None, True, detail, False)


async def faults(
    run: Run, embedded: EmbeddedPostgres, book: Book, duration: float, storm: tuple[float, float], down: float
) -> None:
    a, b = run.replicas
    await sleep_until(run, 0.15 * duration)
    run.faults.append(await kill_service(run, a, book))
    await sleep_until(run, 0.35 * duration)
    run.faults.append(await kill_database(run, embedded, book, down))
    await sleep_until(run, 0.45 * duration)
    run.faults.append(await end_sessions_fault(run, embedded.uri(), book))
    await sleep_until(run, 0.55 * duration)
    run.faults.append(await terminate_service(run, b, book))
    await sleep_until(run, 0.65 * duration)
    # The health probe gives up on a frozen database after METERING_DB_TIMEOUT: freeze it for longer.
    run.faults.append(await freeze_database(run, embedded, book, down + 1.5))
    await sleep_until(run, storm[1])
    run.faults.append(deadline_storm(run, book, *storm))


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def _codes(codes: Counter[str]) -> str:
    return ", ".join(f"{code} {n}" for code, n in codes.most_common()) or "none"


async def chaos(duration: float, tasks: int, down: float) -> int:
    tag = uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory(prefix="metering-chaos-") as tmp:
        catalog = write_catalog(Path(tmp))
        print(f"chaos: starting an embedded PostgreSQL in {tmp} and two services", flush=True)
        embedded = await asyncio.to_thread(start_embedded, Path(tmp) / "pg", delete_on_stop=True)
        replicas = [Replica(name, embedded.uri(), catalog, **SERVICE_SETTINGS) for name in ("A", "B")]
        try:
            await asyncio.gather(*(asyncio.to_thread(r.start) for r in replicas))
            return await _chaos(tag, catalog, embedded, replicas, duration, tasks, down)
        finally:
            for replica in replicas:
                await asyncio.to_thread(replica.stop)
            await asyncio.to_thread(embedded.server.ensure_postgres_running)  # its cleanup needs it running
            await asyncio.to_thread(embedded.stop)


async def _chaos(
    tag: str,
    catalog: Path,
    embedded: EmbeddedPostgres,
    replicas: list[Replica],
    duration: float,
    tasks: int,
    down: float,
) -> int:
    plans, mix = customers(tag)
    probe = f"chaos-{tag}-probe"
    await add_customers(replicas[0].target, {**plans, probe: "open"})
    book = Book(f"chaos-{tag}")
    storm = (0.75 * duration, 0.9 * duration)
    print(f"chaos: {duration:g} s of load from {tasks} client tasks on {', '.join(r.target for r in replicas)}")
    run = Run(time.monotonic(), replicas, probe, [])
    until = run.started + duration
    # A call with the database hung waits for at most one stuck batch ahead of
    # it, then its own: twice METERING_DB_TIMEOUT. Its deadline is three times
    # that, so only a call the service failed to bound runs into it.
    policy = RetryPolicy(call_timeout=CALL_DEADLINE, give_up_at=until + 60)  # then every event has its answer
    async with Client([r.target for r in replicas], book, policy) as client:

        def storming() -> bool:
            return storm[0] <= run.now() < storm[1]

        await asyncio.gather(
            drive(client, mix, until=until, tasks=tasks, storm=storming),
            faults(run, embedded, book, duration, storm, down),
        )
        await client.resolve(book.pending())
    load_seconds = run.now()
    for replica in replicas:  # a quiet ledger for the check
        await asyncio.to_thread(replica.stop)
    check = await check_ledger(embedded.uri(), book, catalog)
    return report(run, book, check, duration, load_seconds, tasks)


def report(run: Run, book: Book, check: LedgerCheck, duration: float, load_seconds: float, tasks: int) -> int:
    intents = book.intents
    uncertain = [i for i in intents if i.uncertain and i.outcome is not Outcome.PENDING]
    tiny = [i for i in intents if i.tiny_deadline]
    tiny_exceeded = [a for a in book.attempts if a.timeout <= 0.02 and a.code == "DEADLINE_EXCEEDED"]
    # A call with an ordinary deadline (CALL_DEADLINE, above the services' own
    # bound of twice METERING_DB_TIMEOUT) must have been answered while the
    # database was down or frozen, not left to run into its deadline.
    hung = sum(
        1
        for a in book.attempts
        if a.code == "DEADLINE_EXCEEDED"
        and a.timeout > 1
        and any(a.ended >= start and a.started <= end for start, end in run.outages)
    )
    # A call refused at SIGTERM (its first attempt, with an ordinary deadline)
    # whose event a later retry found already recorded was cut off mid-way.
    by_key = {i.key: i for i in intents}
    refused_at_drain = [
        a for a in run.drain_in_flight or [] if a.code in ("UNAVAILABLE", "CANCELLED") and not a.retry and a.timeout > 1
    ]
    drain_written = sum(by_key[k].duplicate_ack for a in refused_at_drain for k in a.keys)
    lines = [line for r in run.replicas for line in r.log().splitlines()]
    # gRPC itself logs ExecuteBatchError (with a traceback) when it cannot send
    # an answer because the client has gone, e.g. its deadline expired as the
    # answer was sent: reported, but not the service's error.
    batch_errors = sum(GRPC_SEND_FAILED in line for line in lines)
    errors = sum(" ERROR " in line and GRPC_SEND_FAILED not in line for line in lines)

    print()
    print(f"== chaos run: {duration:g} s of load ({load_seconds:.1f} s with the final retries), {tasks} client tasks,")
    print(f"   2 service processes on one embedded PostgreSQL; {len(book.customers)} customers ==")
    print()
    print("faults (time into the load; 'serving again' counts from the fault until a CheckBalance answered OK)")
    print(f"  {'t (s)':>6}  {'fault':<55} {'replica':<8} {'serving again':>13}  result")
    for f in run.faults:
        again = _secs(f.serving_again) if f.measured else "-"
        print(f"  {f.at:6.1f}  {f.name:<55} {f.replica:<8} {again:>13}  {'ok' if f.ok else 'FAILED'}")
        print(f"  {'':6}    {f.detail}")
    print()
    rows: list[tuple[str, str]] = [
        ("events sent (one transaction id each)", f"{len(intents):,}"),
        ("requests sent (calls, retries included)", f"{len(book.attempts):,}"),
        ("  of them RecordUsageBatch calls", f"{sum(1 for a in book.attempts if a.events > 1):,}"),
        ("acknowledged OK", f"{book.count(Outcome.ACKED):,}"),
        ("refused by limit", f"{book.count(Outcome.REFUSED):,}"),
        ("retried (calls)", f"{book.retries:,}"),
        ("events retried after an uncertain answer", f"{len(uncertain):,}"),
        (
            "  resolved: had been recorded / recorded by the retry / refused",
            f"{sum(i.duplicate_ack for i in uncertain):,} / "
            f"{sum(i.outcome is Outcome.ACKED and not i.duplicate_ack for i in uncertain):,} / "
            f"{sum(i.outcome is Outcome.REFUSED for i in uncertain):,}",
        ),
        ("first attempts with a 1-20 ms deadline", f"{len(tiny):,}"),
        ("  ended DEADLINE_EXCEEDED", f"{len(tiny_exceeded):,}"),
        ("  later found already recorded", f"{sum(i.duplicate_ack for i in tiny):,}"),
        ("answers by code", _codes(Counter(a.code for a in book.attempts))),
        ("gRPC 'ExecuteBatchError' log lines (an answer whose client had gone)", f"{batch_errors:,}"),
        ("rows in the ledger", f"{check.rows:,}"),
    ]
    print("load")
    for label, value in rows:
        print(f"  {label:<64} {value}")
    print()
    print("hard-limited customers (limit / counter)")
    for customer, limit, used in check.hard_limited:
        refused = sum(1 for i in intents if i.customer_id == customer and i.outcome is Outcome.REFUSED)
        print(f"  {customer:<40} {limit:>8} / {used:<8} refused {refused:,}")
    print()

    invariants: list[tuple[str, int | str, bool]] = [
        ("acknowledged events missing from the ledger", len(check.acked_missing), not check.acked_missing),
        ("acknowledged events stored differently (id, quantity)", len(check.acked_changed), not check.acked_changed),
        ("duplicates (a transaction id twice, an event nobody sent)", check.duplicates, check.duplicates == 0),
        ("events refused by a limit yet in the ledger", len(check.refused_stored), not check.refused_stored),
        ("overspend (hard-limited counters or events above the limit)", len(check.overspend), not check.overspend),
        ("counter mismatches (ledger audit)", len(check.audit.mismatches), check.audit.ok),
        ("events without a definite answer after every retry", len(check.unresolved), not check.unresolved),
        (
            "rows in the ledger minus events acknowledged",
            check.rows - book.count(Outcome.ACKED),
            check.rows == book.count(Outcome.ACKED),
        ),
        (
            "INTERNAL/UNKNOWN answers, other refusals",
            sum(check.server_errors.values()) + len(check.rejected),
            not check.server_errors and not check.rejected,
        ),
        ("calls left to their deadline, the database down or frozen", hung, hung == 0),
        ("events of calls refused at SIGTERM found written after all", drain_written, drain_written == 0),
        ("errors logged by the services (gRPC's ExecuteBatchError aside)", errors, errors == 0),
        ("faults the service did not come through", sum(not f.ok for f in run.faults), all(f.ok for f in run.faults)),
    ]
    print("invariants")
    for label, count, ok in invariants:
        print(f"  {label:<64} {count!s:>6}  {'ok' if ok else 'FAILED'}")
    for problems in (
        check.acked_missing,
        check.acked_changed,
        check.unwanted,
        check.refused_stored,
        check.overspend,
        check.unresolved,
        check.rejected,
    ):
        for line in problems[:10]:
            print(f"    {line}")
    for m in check.audit.mismatches[:10]:
        print(f"    MISMATCH {m.customer_id} {m.meter_slug}: counter {m.stored_used}, events {m.expected_used}")
    held = all(ok for _, _, ok in invariants)
    print()
    print(
        "checked: every OK answer is one event in the ledger with the acknowledged id and quantity; every event in\n"
        "the ledger was sent by a client and stored once; nothing refused by a limit was stored; no hard-limited\n"
        "counter (nor the sum of its events) is above its limit; every counter equals its events (metering audit);\n"
        "every uncertain call was retried with the same transaction id until it had a definite answer; while\n"
        "PostgreSQL was down or frozen calls failed with UNAVAILABLE and health said NOT_SERVING; after SIGTERM\n"
        "the process"
        " finished its in-flight calls (those not yet started were refused and wrote nothing), served no new\n"
        "ones and exited within its grace period; after every fault the service served again without help."
    )
    print("RESULT: every invariant held" if held else "RESULT: INVARIANTS VIOLATED")
    return 0 if held else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--tasks", type=int, default=16, help="concurrent client tasks (default 16)")
    parser.add_argument(
        "--db-down", type=float, default=3.0, help="seconds the database stays down (default 3; frozen 1.5 s longer)"
    )
    parser.add_argument("--smoke", action="store_true", help="a CI-sized run: 18 s of load, 2 s database outage")
    parser.add_argument(
        "--failover",
        choices=("sync", "async", "both"),
        help="run the failover scenario (primary SIGKILLed, standby promoted) with this replication instead",
    )
    args = parser.parse_args(argv)
    # The embedded PostgreSQL's platformdirs warns when XDG_RUNTIME_DIR is unset (as in CI).
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    if args.smoke:
        args.duration, args.db_down = 18.0, 2.0
    if args.duration < 10:
        parser.error("--duration must be at least 10 s: the faults need room")
    if args.failover:
        modes = {"sync": [True], "async": [False], "both": [True, False]}[args.failover]
        return asyncio.run(failover_runs(modes, args.duration, args.tasks))
    return asyncio.run(chaos(args.duration, args.tasks, args.db_down))


async def failover_runs(modes: Sequence[bool], duration: float, tasks: int) -> int:
    held = True
    for synchronous in modes:
        with tempfile.TemporaryDirectory(prefix="metering-failover-") as tmp:
            mode = "synchronous" if synchronous else "asynchronous"
            print(
                f"chaos: failover, {mode}: a primary and a pg_basebackup -R standby in {tmp}, two services", flush=True
            )
            result = await failover(Path(tmp), synchronous=synchronous, duration=duration, tasks=tasks)
        report_failover(result)
        held = held and result.ok
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
