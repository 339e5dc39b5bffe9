"""The batching writer reads the recorded events and the holdings before it
locks the counters (metering.ledger.writer, "Why each read is where it is").
What another transaction commits while the batch waits for a counter row is
still seen: a twin, by the unique constraint (answered as the duplicate it
is), and a hold, by the write statement's check (no overspend)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from metering.config.catalog import load_catalog
from metering.domain.catalog import Catalog
from metering.domain.columns import Recorded
from metering.domain.errors import MeteringError
from metering.domain.terms import TermsBook
from metering.domain.usage import UsageCommand, Written, resolve
from metering.ledger import steps
from metering.ledger import usage as batch_sql
from metering.ledger.pool import Connection, create_pool, is_unavailable
from metering.ledger.rollups import add_events, rollup_input
from metering.ledger.writer import BatchWriter
from tests.support import TEST_CATALOG, audit, eventually, hold_counter

APP = "metering-writer-locks-test"  # this test's own sessions, told apart from the shared service's


def _command(catalog: Catalog, customer: str, transaction_id: str) -> UsageCommand:
    """3 tokens: the `limited` plan has a hard limit of 100."""
    return UsageCommand(
        customer_id=customer,
        transaction_id=transaction_id,
        meter=catalog.meters["tokens"],
        price=None,
        quantity=Decimal("3"),
        event_time=datetime.now(UTC) - timedelta(minutes=1),
        properties={},
        unique_value=None,
        allow_overage=False,
        received_at=datetime.now(UTC),
    )


async def _record_directly(conn: Connection, book: TermsBook, command: UsageCommand) -> uuid.UUID:
    """What another writer (a replica) does for the same transaction id, inside
    `conn`'s transaction, which holds the counter row: the event, its bucket,
    its counter."""
    customers = await batch_sql.customers(conn, {command.customer_id})
    resolution = resolve(command, customers[command.customer_id], book)
    event_id = uuid.uuid4()
    stored = await steps.insert_event(conn, resolution.event, event_id, resolution.period.start)
    assert stored is not None
    await add_events(conn, [rollup_input(command.meter, stored, None)])
    await steps.recompute_counter(conn, command.customer_id, command.meter, resolution.period.start)
    return event_id


async def _events_and_used(database_url: str, customer: str) -> tuple[int, Decimal]:
    """How many events the customer has, and what its counters say they used."""
    conn = await asyncpg.connect(database_url)
    try:
        events = await conn.fetchval("SELECT count(*) FROM usage_events WHERE customer_id = $1", customer)
        used = await conn.fetchval("SELECT sum(used) FROM meter_counters WHERE customer_id = $1", customer)
        return events, used
    finally:
        await conn.close()


async def _waits_on_lock(conn: Connection) -> bool:
    waiting = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", APP
    )
    return bool(waiting)


async def _twin_committed_while_waiting(database_url: str, customer: str) -> uuid.UUID:
    catalog = load_catalog(TEST_CATALOG)
    book = TermsBook(catalog, anchor_skew_tolerance=timedelta(0))
    pool = await create_pool(
        database_url, min_size=1, max_size=3, db_timeout=timedelta(seconds=30), application_name=APP
    )
    writer = BatchWriter(pool, acquire_timeout=30)
    proxy = await pool.acquire()
    other: Connection = proxy  # the pool's codecs (jsonb), for the ledger's own steps
    try:
        first = await writer.submit_group([_command(catalog, customer, "first")], book)
        assert isinstance(first[0], Written)  # the counter row exists now
        held = other.transaction()  # as tests.support.hold_counter, on a pooled connection
        await held.start()
        await other.execute("SELECT 1 FROM meter_counters WHERE customer_id = $1 FOR UPDATE", customer)
        twin = _command(catalog, customer, "twin")
        # The batch reads no recorded "twin", then waits for the counter row.
        waiting = asyncio.ensure_future(writer.submit_group([twin], book))
        assert await eventually(lambda: _waits_on_lock(other), 10), "the writer never reached the counter lock"
        # Meanwhile a twin is recorded and committed by the row's holder.
        twin_id = await _record_directly(other, book, twin)
        await held.commit()
        [result] = await asyncio.wait_for(waiting, 30)
        assert not isinstance(result, MeteringError | BaseException), result
        assert result.outcome.duplicate
        assert result.outcome.event is not None and result.outcome.event.event_id == twin_id
        assert result.outcome.reading.state.used == Decimal("6")
        return twin_id
    finally:
        await pool.release(proxy)
        await writer.close()
        await pool.close()


async def _hold_committed_while_waiting(database_url: str, customer: str, *, columnar: bool) -> None:
    catalog = load_catalog(TEST_CATALOG)
    book = TermsBook(catalog, anchor_skew_tolerance=timedelta(0))
    pool = await create_pool(
        database_url, min_size=1, max_size=2, db_timeout=timedelta(seconds=30), application_name=APP
    )
    writer = BatchWriter(pool, acquire_timeout=30)
    other = await asyncpg.connect(database_url)
    try:
        [first] = await writer.submit_group([_command(catalog, customer, "first")], book)
        assert isinstance(first, Written)
        period_start = first.resolution.period.start
        held = await hold_counter(other, customer)
        # The batch reads no hold, then waits for the counter row.
        # As a batch RPC asks (columnar: the common case is tried first, and
        # its write is checked the same way) or as a unary call does.
        submit = writer.submit_columnar if columnar else writer.submit_group
        waiting = asyncio.ensure_future(submit([_command(catalog, customer, "after-hold")], book))
        assert await eventually(lambda: _waits_on_lock(other), 10), "the writer never reached the counter lock"
        # Meanwhile the row's holder reserves 95 of what is left (100 - 3) and
        # commits, as ReserveUsage does under the counter's lock.
        await other.execute(
            "INSERT INTO reservations (customer_id, reservation_id, meter_slug, period_start, quantity, status, "
            "expires_at) VALUES ($1, 'big-hold', 'tokens', $2, 95, 'held', now() + interval '1 hour')",
            customer,
            period_start,
        )
        await held.commit()
        answer = await asyncio.wait_for(waiting, 30)
        assert isinstance(answer, list), answer  # not recorded as the common case: refused
        [result] = answer
        # 3 used + 95 held + 3 more > 100: refused, as if the hold had been read under the lock.
        assert isinstance(result, Written), result
        assert not result.outcome.duplicate and result.outcome.event is None
        assert result.outcome.reading.reserved == Decimal("95")
    finally:
        await other.close()
        await writer.close()
        await pool.close()


@pytest.mark.parametrize("columnar", [False, True], ids=["typed", "columnar"])
def test_a_hold_committed_while_the_batch_waited_for_its_counter_refuses_what_no_longer_fits(
    database_url: str, new_customer: Callable[..., str], columnar: bool
) -> None:
    customer = new_customer("limited")
    asyncio.run(_hold_committed_while_waiting(database_url, customer, columnar=columnar))

    async def used() -> Decimal:
        conn = await asyncpg.connect(database_url)
        try:
            value: Decimal = await conn.fetchval(
                "SELECT sum(used) FROM meter_counters WHERE customer_id = $1", customer
            )
            return value
        finally:
            await conn.close()

    assert asyncio.run(used()) == Decimal("3")
    assert audit(database_url, [customer]).ok


def test_a_twin_committed_while_the_batch_waited_for_its_counter_is_a_duplicate(
    database_url: str, new_customer: Callable[..., str]
) -> None:
    customer = new_customer("limited")
    asyncio.run(_twin_committed_while_waiting(database_url, customer))

    assert asyncio.run(_events_and_used(database_url, customer)) == (2, Decimal("6"))
    assert audit(database_url, [customer]).ok


async def _deadlock_with_a_twin_under_a_counter_lock(database_url: str, customer: str, victim: str) -> object:
    """A columnar batch inserts its event before the counter locks, then waits
    for the counter that another transaction holds; that transaction then
    inserts the same transaction id under the lock (as CommitReservation, or a
    batch in the old order, does): a cycle, which PostgreSQL breaks by failing
    `victim` (the side whose deadlock_timeout runs out first). Returns the
    writer's answer."""
    catalog = load_catalog(TEST_CATALOG)
    book = TermsBook(catalog, anchor_skew_tolerance=timedelta(0))
    pool = await create_pool(
        database_url, min_size=1, max_size=3, db_timeout=timedelta(seconds=30), application_name=APP
    )
    writer = BatchWriter(pool, acquire_timeout=30)
    proxy = await pool.acquire()
    other: Connection = proxy
    try:
        first = await writer.submit_group([_command(catalog, customer, "first")], book)
        assert isinstance(first[0], Written)  # the counter row exists now
        held = other.transaction()
        await held.start()
        # The writer's sessions keep the server's 1 s: the other side detects
        # the cycle first with 10 ms, the writer first against 20 s.
        await other.execute(f"SET LOCAL deadlock_timeout = '{'10ms' if victim == 'other' else '20s'}'")
        await other.execute("SELECT 1 FROM meter_counters WHERE customer_id = $1 FOR UPDATE", customer)
        twin = _command(catalog, customer, "twin")
        # The batch inserts "twin", then waits for the counter row.
        waiting = asyncio.ensure_future(writer.submit_columnar([twin], book))
        assert await eventually(lambda: _waits_on_lock(other), 10), "the writer never reached the counter lock"
        assert (
            await other.fetchval(
                "SELECT count(*) FROM usage_events WHERE customer_id = $1 AND transaction_id = 'twin'", customer
            )
            == 0
        )  # not committed: invisible to the other side, whose insert must wait for it
        failed: BaseException | None = None
        try:
            await _record_directly(other, book, twin)  # waits for the writer's insert: the cycle
        except asyncpg.DeadlockDetectedError as exc:
            failed = exc
        if victim == "other":
            # CommitReservation's translate_errors answers it UNAVAILABLE: its retry is answered.
            assert failed is not None and is_unavailable(failed)
            await held.rollback()
        else:
            assert failed is None  # the writer ran again, in the old order, behind this lock
            await held.commit()
        return await asyncio.wait_for(waiting, 30)
    finally:
        await pool.release(proxy)
        await writer.close()
        await pool.close()


@pytest.mark.parametrize("victim", ["writer", "other"])
def test_a_batch_that_inserted_early_and_a_twin_under_a_counter_lock_both_end_correctly(
    database_url: str, new_customer: Callable[..., str], victim: str
) -> None:
    customer = new_customer("limited")
    answer = asyncio.run(_deadlock_with_a_twin_under_a_counter_lock(database_url, customer, victim))
    if victim == "other":
        # The other side rolled back: the batch recorded the event, as the common case.
        assert isinstance(answer, Recorded) and len(answer) == 1, answer
    else:
        # The other side recorded it: the batch, run again, answers the duplicate.
        assert isinstance(answer, list), answer
        [result] = answer
        assert isinstance(result, Written), result
        assert result.outcome.duplicate

    assert asyncio.run(_events_and_used(database_url, customer)) == (2, Decimal("6"))
    assert audit(database_url, [customer]).ok


async def _near_the_limit(database_url: str, customer: str) -> tuple[list[object], int]:
    """A columnar batch inserted early that the common case declines once its
    counter is read (it would pass the hard limit): the early rows are deleted
    and decide_batch refuses what does not fit. Returns the answers and how
    many events the customer has."""
    catalog = load_catalog(TEST_CATALOG)
    book = TermsBook(catalog, anchor_skew_tolerance=timedelta(0))
    pool = await create_pool(
        database_url, min_size=1, max_size=2, db_timeout=timedelta(seconds=30), application_name=APP
    )
    writer = BatchWriter(pool, acquire_timeout=30)
    try:
        [first] = await writer.submit_group([_command(catalog, customer, "first")], book)
        assert isinstance(first, Written)
        answer = await writer.submit_columnar([_command(catalog, customer, f"n{i}") for i in range(40)], book)
        assert isinstance(answer, list), answer  # not the common case
        # The next batch on that counter inserts nothing early (the writer
        # remembers the decline): 99 of 100 used, every event is refused.
        again = await writer.submit_columnar([_command(catalog, customer, f"m{i}") for i in range(5)], book)
        assert isinstance(again, list), again
        assert all(isinstance(a, Written) and a.outcome.event is None for a in again), again
        async with pool.acquire() as conn:
            events: int = await conn.fetchval("SELECT count(*) FROM usage_events WHERE customer_id = $1", customer)
        return list(answer), events
    finally:
        await writer.close()
        await pool.close()


def test_a_batch_inserted_early_that_reaches_the_limit_keeps_only_what_it_accepted(
    database_url: str, new_customer: Callable[..., str]
) -> None:
    customer = new_customer("limited")
    answers, events = asyncio.run(_near_the_limit(database_url, customer))
    accepted = [a for a in answers if isinstance(a, Written) and a.outcome.event is not None]
    refused = [a for a in answers if not (isinstance(a, Written) and a.outcome.event is not None)]
    # 3 used, 3 each, a hard limit of 100: 32 more fit, 8 are refused.
    assert (len(accepted), len(refused)) == (32, 8)
    assert events == 1 + 32  # nothing refused was committed
    assert audit(database_url, [customer]).ok
