"""Faults under load: a service SIGKILLed or SIGTERMed, PostgreSQL SIGKILLed,
frozen or ending every session, client deadlines of a few milliseconds, two
replicas racing near a hard limit.

Whatever happens: every OK answer is one event in the ledger, a retry with the
same transaction id converges on exactly one event, nothing refused is stored,
no hard limit is exceeded and every counter equals its events (the ledger
audit). The clients that retry, the book of what each was told, crashing
PostgreSQL and the ledger check are tests/faults.py's, shared with the chaos
script (bench/chaos.py), whose CI-sized run is the first test here.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2

from metering.runtime.embedded import EmbeddedPostgres
from metering.v1 import metering_service_pb2_grpc, usage_pb2
from tests.faults import (
    DRAIN_STARTED,
    EXIT_MARGIN,
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
from tests.support import (
    ROOT,
    TEST_CATALOG,
    ServiceProcess,
    audit,
    eventually,
    hold_counter,
    service_waits_on_lock,
    usage_request,
)

# Slow tier: services and PostgreSQL servers it kills, freezes and restarts; the chaos smoke run.
pytestmark = pytest.mark.slow

GRACE = 3.0  # METERING_SHUTDOWN_GRACE of the SIGTERM tests


def assert_exactly_once(check: LedgerCheck) -> None:
    """The ledger says exactly what the clients were told (one assertion per
    invariant, so that a failure names the one that broke)."""
    assert not check.acked_missing, f"acknowledged but not in the ledger: {check.acked_missing[:10]}"
    assert not check.acked_changed, f"stored as another event than acknowledged: {check.acked_changed[:10]}"
    assert check.duplicates == 0, (check.duplicate_ids, check.unwanted[:10], check.unasked_duplicates)
    assert not check.refused_stored, f"refused by a limit, yet stored: {check.refused_stored[:10]}"
    assert not check.unresolved, f"no definite answer after every retry: {check.unresolved[:10]}"
    assert not check.rejected, check.rejected[:10]
    assert not check.server_errors, check.server_errors
    assert not check.overspend, check.overspend
    assert check.audit.ok, check.audit
    assert check.ok


async def counted(book: Book, outcome: Outcome, at_least: int, limit: float = 30.0) -> None:
    async def enough() -> bool:
        return book.count(outcome) >= at_least

    assert await eventually(enough, limit), f"fewer than {at_least} events {outcome.value} within {limit} s"


async def stored_keys(database_url: str, customers: set[str]) -> set[tuple[str, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT customer_id, transaction_id FROM usage_events WHERE customer_id = ANY($1::text[])",
            sorted(customers),
        )
    finally:
        await conn.close()
    return {(row["customer_id"], row["transaction_id"]) for row in rows}


@pytest.mark.timeout(600)  # under a minute idle
def test_chaos_smoke_run_holds_every_invariant() -> None:
    result = subprocess.run(
        [sys.executable, "bench/chaos.py", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    for label in (
        "acknowledged events missing from the ledger",
        "duplicates",
        "events refused by a limit yet in the ledger",
        "overspend",
        "counter mismatches",
        "events without a definite answer after every retry",
        "faults the service did not come through",
    ):
        assert re.search(rf"^  {re.escape(label)}.*\s0  ok$", result.stdout, re.MULTILINE), label
    assert "RESULT: every invariant held" in result.stdout


def test_sigkill_mid_load_loses_no_acknowledged_event(make_database: Callable[[], str], tmp_path: Path) -> None:
    database_url = make_database()
    catalog = write_catalog(tmp_path)
    replica = Replica("A", database_url, catalog)
    replica.start()
    try:
        asyncio.run(_sigkill_mid_load(replica, database_url, catalog))
    finally:
        replica.stop()


async def _sigkill_mid_load(replica: Replica, database_url: str, catalog: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    plans = {f"kill-{tag}-{i}": "tight" if i < 2 else "open" for i in range(6)}
    await add_customers(replica.target, plans)
    book = Book(f"kill-{tag}")
    mix = LoadMix(customers=[(c, 1.0) for c in plans], tiny_deadline_share=0.0)
    # One attempt per event: what the process answered before it died is
    # exactly what the clients know.
    async with Client([replica.target], book, RetryPolicy(max_attempts=1)) as client:
        stop = asyncio.Event()
        load = asyncio.create_task(drive(client, mix, until=time.monotonic() + 60, tasks=16, stop=stop))
        await counted(book, Outcome.ACKED, 300)
        killed = time.monotonic()
        await asyncio.to_thread(replica.kill)
        stop.set()
        await load
    assert any(a.started < killed < a.ended for a in book.attempts), "no call was in flight at the kill"
    acknowledged = {i.key for i in book.intents if i.outcome is Outcome.ACKED}
    assert acknowledged <= await stored_keys(database_url, book.customers)  # before any retry

    await asyncio.to_thread(replica.start)  # the same database
    async with Client([replica.target], book, RetryPolicy(give_up_at=time.monotonic() + 60)) as client:
        await client.resolve(book.pending())
    assert_exactly_once(await check_ledger(database_url, book, catalog))


def test_tiny_deadlines_under_load_converge_exactly_once(service: ServiceProcess, database_url: str) -> None:
    asyncio.run(_tiny_deadlines(service, database_url))


async def _tiny_deadlines(service: ServiceProcess, database_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    customers = [f"deadline-{tag}-{i}" for i in range(6)]
    await add_customers(service.target, dict.fromkeys(customers, "open"))
    book = Book(f"deadline-{tag}")
    background = LoadMix(customers=[(c, 1.0) for c in customers], tiny_deadline_share=0.0)
    async with (
        Client([service.target], book) as steady,
        Client([service.target], book, RetryPolicy(max_attempts=1)) as impatient,
    ):
        stop = asyncio.Event()
        load = asyncio.create_task(drive(steady, background, until=time.monotonic() + 60, tasks=8, stop=stop))
        hurried = [book.intent(random.choice(customers), random.randint(1, 5)) for _ in range(400)]
        queue = list(hurried)

        async def hurry() -> None:
            while queue:
                await impatient.record(queue.pop(), first_timeout=random.randint(1, 20) / 1000)

        await asyncio.gather(*(hurry() for _ in range(20)))
        stop.set()
        await load
    codes = Counter(a.code for a in book.attempts if a.timeout <= 0.02)
    assert codes["DEADLINE_EXCEEDED"] > 0, f"no deadline expired; the test proved nothing: {codes}"
    assert set(codes) <= {"OK", "DEADLINE_EXCEEDED"}, codes

    # Every call that ran out of time, retried with no deadline at all.
    async with Client([service.target], book, RetryPolicy(call_timeout=None, max_attempts=1)) as patient:
        await patient.resolve(book.pending())
    assert all(i.outcome is Outcome.ACKED for i in hurried), Counter(i.outcome for i in hurried)
    # Each expired call had either written its event completely (the retry
    # finds it) or not at all (the retry writes it): the audit finds no event
    # without its counter, nor a counter without its events.
    assert_exactly_once(await check_ledger(database_url, book, TEST_CATALOG))


def test_database_crash_fails_fast_then_recovers_by_itself(own_database: EmbeddedPostgres, tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path)
    replica = Replica("A", own_database.uri(), catalog, METERING_HEALTH_INTERVAL="200ms", METERING_DB_TIMEOUT="2s")
    replica.start()
    try:
        asyncio.run(_database_crash(replica, own_database, catalog))
    finally:
        replica.stop()


async def _database_crash(replica: Replica, database: EmbeddedPostgres, catalog: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    plans = {f"crash-{tag}-{i}": "tight" if i < 2 else "open" for i in range(6)}
    probe = f"crash-{tag}-probe"
    await add_customers(replica.target, {**plans, probe: "open"})
    book = Book(f"crash-{tag}")
    # Unary calls with a 5 s deadline, one attempt each: each call's own status
    # says how it ended (a batch answers OK with a status per event).
    mix = LoadMix(customers=[(c, 1.0) for c in plans], batch_share=0.0, tiny_deadline_share=0.0)

    async def not_serving() -> bool:
        return bool(await health(replica.target) == health_pb2.HealthCheckResponse.NOT_SERVING)

    async with Client([replica.target], book, RetryPolicy(call_timeout=5.0, max_attempts=1)) as client:
        stop = asyncio.Event()
        load = asyncio.create_task(drive(client, mix, until=time.monotonic() + 60, tasks=16, stop=stop))
        await counted(book, Outcome.ACKED, 100)
        crashed = crash_postgres(database)
        # Taken once every server process is killed: a call that started while
        # the kill was under way could still commit (one per client task did).
        crashed_at = time.monotonic()
        assert await eventually(not_serving, 5), "health never said NOT_SERVING while the database was down"
        await asyncio.sleep(1.0)  # the load goes on against a dead database
        # The window "while it was down" ends when the restart begins: a call that
        # starts while PostgreSQL is coming back up may rightly succeed.
        restarting = time.monotonic()
        await asyncio.to_thread(restart_postgres, database, crashed)
        # Back by itself: no restart of the service, no help from the test.
        assert await wait_serving(replica.target, probe, limit=30) is not None
        serving = health_pb2.HealthCheckResponse.SERVING  # after its next probe of the database
        assert await wait_health(replica.target, serving, limit=10) is not None
        stop.set()
        await load
    during = [a for a in book.attempts if crashed_at <= a.started and a.ended <= restarting]
    assert during, "no call was sent while the database was down"
    # Refused at once as retryable; none left to run into its deadline.
    assert {a.code for a in during} == {"UNAVAILABLE"}, Counter(a.code for a in during)
    assert not [a for a in book.attempts if a.code == "DEADLINE_EXCEEDED"]

    async with Client([replica.target], book, RetryPolicy(give_up_at=time.monotonic() + 60)) as client:
        await client.resolve(book.pending())
    assert_exactly_once(await check_ledger(database.uri(), book, catalog))


def test_frozen_database_answers_unavailable_within_the_db_timeout(
    own_database: EmbeddedPostgres, tmp_path: Path
) -> None:
    """PostgreSQL stops answering but keeps its sockets open (SIGSTOP: a hung
    server, or a network partition where no RST comes back). Health says
    NOT_SERVING and each call is refused UNAVAILABLE about METERING_DB_TIMEOUT
    after it came. (Regression: a
    timed-out connection was released gracefully, a cancel request and a
    ROLLBACK each waiting the timeout again: twice the timeout and more; and
    health waited for its timed-out ping to wind down the same way.)"""
    catalog = write_catalog(tmp_path)
    replica = Replica("A", own_database.uri(), catalog, METERING_DB_TIMEOUT="1s", METERING_HEALTH_INTERVAL="200ms")
    replica.start()
    try:
        asyncio.run(_frozen_database(replica, own_database, catalog))
    finally:
        replica.stop()


async def _frozen_database(replica: Replica, database: EmbeddedPostgres, catalog: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    customer = f"frozen-{tag}"
    await add_customers(replica.target, {customer: "open"})
    book = Book(f"frozen-{tag}")
    # 1.75 s: the service's 1 s bound on a statement, plus room for the rest
    # of the call; short of the two timeouts one after the other.
    deadline = 1.75
    async with Client([replica.target], book, RetryPolicy(call_timeout=deadline, max_attempts=1)) as client:
        for _ in range(3):  # pooled connections in use, as under load
            await client.record(book.intent(customer, 1))
        pids = freeze_postgres(database)
        try:
            # The health probe gives up after the same 1 s (then up to 0.2 s until the next probe).
            not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
            assert await wait_health(replica.target, not_serving, limit=deadline) is not None
            for _ in range(2):
                await client.record(book.intent(customer, 1))
                await client.record_batch([book.intent(customer, 1) for _ in range(3)])
        finally:
            thaw_postgres(pids)
        frozen = book.attempts[3:]
        # RecordUsage answers UNAVAILABLE; a batch answers OK with UNAVAILABLE
        # per event. None ran into its deadline.
        seen = [(a.code, a.events, a.uncertain, round(a.ended - a.started, 2)) for a in frozen]
        assert {a.code for a in frozen if a.events == 1} == {"UNAVAILABLE"}, seen
        assert all(a.code != "DEADLINE_EXCEEDED" and a.uncertain == a.events for a in frozen), seen
        assert not book.server_errors, seen
        assert await wait_serving(replica.target, customer, limit=30) is not None
    async with Client([replica.target], book, RetryPolicy(give_up_at=time.monotonic() + 60)) as client:
        await client.resolve(book.pending())
    assert_exactly_once(await check_ledger(database.uri(), book, catalog))


def test_sessions_ended_by_the_server_answer_unavailable_never_internal(
    own_database: EmbeddedPostgres, tmp_path: Path
) -> None:
    """A fast shutdown or a failover ends every session with a FATAL message,
    then closes it. (Regression: asyncpg fails an operation started between
    the two with InternalClientError, which the service answered INTERNAL.)"""
    catalog = write_catalog(tmp_path)
    replica = Replica("A", own_database.uri(), catalog)
    replica.start()
    try:
        asyncio.run(_sessions_ended(replica, own_database.uri(), catalog))
    finally:
        replica.stop()


async def _sessions_ended(replica: Replica, database_url: str, catalog: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    plans = {f"ended-{tag}-{i}": "tight" if i < 2 else "open" for i in range(8)}
    await add_customers(replica.target, plans)
    book = Book(f"ended-{tag}")
    mix = LoadMix(customers=[(c, 1.0) for c in plans], batch_share=0.0, tiny_deadline_share=0.0)
    async with Client([replica.target], book, RetryPolicy(max_attempts=1)) as client:
        stop = asyncio.Event()
        load = asyncio.create_task(drive(client, mix, until=time.monotonic() + 60, tasks=16, stop=stop))
        ended = 0
        for _ in range(15):
            await asyncio.sleep(0.2)
            ended += await end_sessions(database_url)
        stop.set()
        await load
    codes = Counter(a.code for a in book.attempts)
    assert ended and codes["UNAVAILABLE"], f"no call met an ended session; the test proved nothing: {codes}"
    assert set(codes) <= {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}, codes

    async with Client([replica.target], book, RetryPolicy(give_up_at=time.monotonic() + 60)) as client:
        await client.resolve(book.pending())
    assert_exactly_once(await check_ledger(database_url, book, catalog))


# --- SIGTERM: test_operations.py covers the drain of many in-flight calls and
# that nothing acknowledged is lost; these add the bound on the exit, the
# refusal of new calls during the drain, and a call stuck past the grace. ---


async def _sigterm_with_a_held_call(
    replica: Replica, database_url: str, *, release_before_exit: bool
) -> tuple[asyncio.Future[usage_pb2.RecordUsageResponse], float, int | None, str]:
    """SIGTERM while one RecordUsage waits on a row lock; checks that new calls
    are refused during the drain. Returns the held call, the seconds from
    SIGTERM to the end of the process, its exit code and the customer."""
    customer = f"term-{uuid.uuid4().hex[:8]}"
    other = f"{customer}-other"
    await add_customers(replica.target, {customer: "open", other: "open"})
    conn = await asyncpg.connect(database_url)
    try:
        async with grpc.aio.insecure_channel(replica.target) as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            await stub.RecordUsage(usage_request(customer, "before"), timeout=10)  # its counter row exists now
            held = await hold_counter(conn, customer)
            call = asyncio.ensure_future(stub.RecordUsage(usage_request(customer, "held"), timeout=60))
            assert await eventually(lambda: service_waits_on_lock(conn), 10), "the call never reached the lock"

            sent = time.monotonic()
            replica.process.send_signal(signal.SIGTERM)
            exited = asyncio.ensure_future(asyncio.to_thread(replica.process.wait, GRACE + EXIT_MARGIN + 30))

            async def draining() -> bool:
                return any(DRAIN_STARTED in line for line in replica.generations[-1].output)

            assert await eventually(draining, 5, interval=0.01), "the service never started draining"
            # The drain is logged a few awaits before the server stops taking calls.
            await asyncio.sleep(0.2)
            for target_channel in (channel, grpc.aio.insecure_channel(replica.target)):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await metering_service_pb2_grpc.MeteringServiceStub(target_channel).RecordUsage(
                        usage_request(other, f"late-{id(target_channel)}"), timeout=5
                    )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                if target_channel is not channel:
                    await target_channel.close(None)
            assert not call.done(), "the held call ended before its lock was released"

            if release_before_exit:
                await held.commit()
                code = await exited
            else:
                code = await exited  # the lock still holds the call
                await held.rollback()
            took = time.monotonic() - sent
            await asyncio.wait([call], timeout=10)
    finally:
        await conn.close()
    return call, took, code, customer


def test_sigterm_finishes_the_call_in_flight_refuses_new_ones_and_exits_within_grace(
    database_url: str,
) -> None:
    replica = Replica("A", database_url, TEST_CATALOG, METERING_SHUTDOWN_GRACE=f"{GRACE:g}s", METERING_DB_TIMEOUT="10s")
    replica.start()
    try:
        call, took, code, customer = asyncio.run(
            _sigterm_with_a_held_call(replica, database_url, release_before_exit=True)
        )
    finally:
        replica.stop()
    assert call.done() and not call.exception(), call
    assert not call.result().duplicate
    assert code == 0
    assert took <= GRACE + EXIT_MARGIN, f"exited {took:.2f} s after SIGTERM (grace {GRACE} s)"
    assert asyncio.run(stored_keys(database_url, {customer})) == {(customer, "before"), (customer, "held")}


def test_sigterm_with_a_call_stuck_past_the_grace_still_exits_and_the_retry_converges(
    database_url: str,
) -> None:
    replica = Replica("A", database_url, TEST_CATALOG, METERING_SHUTDOWN_GRACE=f"{GRACE:g}s", METERING_DB_TIMEOUT="10s")
    replica.start()
    try:
        call, took, code, customer = asyncio.run(
            _sigterm_with_a_held_call(replica, database_url, release_before_exit=False)
        )
        assert code == 0
        assert took <= GRACE + EXIT_MARGIN, f"exited {took:.2f} s after SIGTERM (grace {GRACE} s)"
        # Cut off by the end of the grace: an answer that says "retry".
        error = call.exception()
        assert isinstance(error, grpc.aio.AioRpcError), call
        assert error.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, error
        # Nothing half-written: the stuck event is absent (and the audit below
        # finds its counter equal to the events that are there).
        assert asyncio.run(stored_keys(database_url, {customer})) == {(customer, "before")}

        replica.start()
        with grpc.insecure_channel(replica.target) as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            retried = stub.RecordUsage(usage_request(customer, "held"), timeout=10)
    finally:
        replica.stop()
    assert not retried.duplicate  # the cut-off call had written nothing; the retry wrote it, once
    assert asyncio.run(stored_keys(database_url, {customer})) == {(customer, "before"), (customer, "held")}
    assert audit(database_url, [customer]).ok


def test_replicas_mixed_batch_unary_and_retries_near_a_hard_limit(service: ServiceProcess, database_url: str) -> None:
    """test_replicas.py races unary calls of quantity 1 at the limit; here each
    event goes twice at once (one RecordUsage, one inside a RecordUsageBatch,
    on either replica), quantities vary, and tiny deadlines force retries."""
    second = Replica("B", database_url, TEST_CATALOG)
    second.start()
    try:
        asyncio.run(_replicas_near_a_limit([service.target, second.target], database_url))
    finally:
        second.stop()


async def _replicas_near_a_limit(targets: list[str], database_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    customers = [f"mixed-{tag}-{i}" for i in range(4)]  # plan "limited": tokens, hard limit 100 a month
    await add_customers(targets[0], dict.fromkeys(customers, "limited"))
    book = Book(f"mixed-{tag}")
    # About 4 units each, 60 events per customer: more than twice the limit.
    originals = [book.intent(random.choice(customers), random.randint(1, 7)) for _ in range(240)]
    twins = [book.twin(i) for i in originals]
    random.shuffle(twins)
    batches = [twins[i : i + 12] for i in range(0, len(twins), 12)]
    unary = list(originals)

    def first_timeout() -> float | None:
        return 0.001 if random.random() < 0.2 else None  # a retry after DEADLINE_EXCEEDED, on the other replica

    async with Client(targets, book, RetryPolicy(give_up_at=time.monotonic() + 60)) as client:

        async def send_unary() -> None:
            while unary:
                await client.record(unary.pop(), first_timeout())

        async def send_batches() -> None:
            while batches:
                await client.record_batch(batches.pop(), first_timeout())

        await asyncio.gather(*(send_unary() for _ in range(16)), *(send_batches() for _ in range(4)))

    assert any(i.uncertain for i in book.intents), "no call was retried"
    by_key: dict[tuple[str, str], list[tuple[Outcome, str]]] = {}
    for intent in book.intents:
        by_key.setdefault(intent.key, []).append((intent.outcome, intent.event_id))
    disagreements = {key: answers for key, answers in by_key.items() if answers[0] != answers[1]}
    assert not disagreements, f"the two sendings of an event got different answers: {list(disagreements.items())[:5]}"
    assert book.count(Outcome.REFUSED) > 0, "no event was refused: the limit was never contested"
    check = await check_ledger(database_url, book, TEST_CATALOG)
    assert_exactly_once(check)
    # Counters exact: each customer's counter is the sum of what was acknowledged, within the limit.
    acknowledged: dict[str, Decimal] = dict.fromkeys(customers, Decimal(0))
    for intent in originals:
        if intent.outcome is Outcome.ACKED:
            acknowledged[intent.customer_id] += intent.quantity
    counters = {customer: used for customer, _, used in check.hard_limited}
    assert counters == acknowledged
    assert all(used <= 100 for used in counters.values()), counters
