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
from metering.domain.errors import MeteringError
from metering.domain.terms import TermsBook
from metering.domain.usage import UsageCommand, Written, resolve
from metering.ledger import steps
from metering.ledger import usage as batch_sql
from metering.ledger.pool import Connection, create_pool
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

    async def counts() -> tuple[int, Decimal]:
        conn = await asyncpg.connect(database_url)
        try:
            events = await conn.fetchval("SELECT count(*) FROM usage_events WHERE customer_id = $1", customer)
            used = await conn.fetchval("SELECT sum(used) FROM meter_counters WHERE customer_id = $1", customer)
            return events, used
        finally:
            await conn.close()

    assert asyncio.run(counts()) == (2, Decimal("6"))
    assert audit(database_url, [customer]).ok
