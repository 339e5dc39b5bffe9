"""The positions `enqueue` gives a set of notifications (metering.ledger.outbox,
migration 0015): against real PostgreSQL, two sessions of our own, no service.

The rule is 0011's: per customer, under its head row lock held until the
commit, txid = greatest(the writer's id, the customer's last txid) and seq
drawn after the lock; so per customer (txid, seq) is commit order. Since 0015
one statement applies it to a whole set of customers; a row inserted without
a position (an older release's statement) is still positioned row by row by
the trigger, under the same lock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from metering.domain.notifications import (
    LimitRejected,
    NewNotification,
    NotificationType,
    Position,
    ThresholdCrossed,
    dedupe_key,
)
from metering.domain.periods import Period
from metering.ledger.migrate import migrate
from metering.ledger.outbox import (
    LeaseLost,
    acquire_lease,
    enqueue,
    horizon,
    mark_delivered,
    pending_heads,
    read_after,
    scan,
)
from tests.support import eventually

PERIOD = Period(datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


def crossed(customer_id: str, threshold: str) -> NewNotification:
    return NewNotification(
        customer_id,
        ThresholdCrossed(
            meter_slug="tokens",
            plan_slug="limited",
            unit="token",
            period=PERIOD,
            threshold_percent=Decimal(threshold),
            used=Decimal(threshold),
            limit=Decimal(100),
            granted=Decimal(0),
            allowance=Decimal(100),
            percent_used=Decimal(threshold),
        ),
    )


def refused(customer_id: str, transaction_id: str) -> NewNotification:
    return NewNotification(
        customer_id,
        LimitRejected(
            meter_slug="tokens",
            plan_slug="limited",
            unit="token",
            period=PERIOD,
            limit=Decimal(100),
            available=Decimal("0.5"),
            requested=Decimal(1),
            transaction_id=transaction_id,
        ),
    )


@pytest.fixture
def database(make_database: Callable[[], str]) -> str:
    url = make_database()

    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(go())
    return url


async def rows_of(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT customer_id, notification_id, type, dedupe_key, payload::text AS payload, "
        "txid::text::bigint AS txid, seq FROM notifications ORDER BY txid, seq"
    )


def test_a_set_of_customers_is_positioned_in_one_statement_as_row_by_row(database: str) -> None:
    """Customers given out of order, several notifications each: every row of
    a customer has its head's txid (the writer's own id, or a later one the
    head kept), seq follows customer order and, within a customer, the set's
    order; a duplicate dedupe key is skipped; each head holds the txid."""

    async def go() -> None:
        conn = await asyncpg.connect(database)
        try:
            # c-b already has a head from a later transaction id than the writer's
            # (as after a transaction that committed later though it started first).
            async with conn.transaction():
                own = int(await conn.fetchval("SELECT pg_current_xact_id()::text::bigint"))
                await conn.execute(
                    "INSERT INTO notification_heads (customer_id, txid) VALUES ('c-b', $1::text::xid8)",
                    str(own + 1000),
                )
                batch = [
                    crossed("c-c", "80"),
                    crossed("c-b", "80"),
                    crossed("c-a", "80"),
                    crossed("c-c", "100"),
                    refused("c-c", "t1"),
                    crossed("c-a", "100"),
                ]
                written = await enqueue(conn, [*batch, crossed("c-a", "80")])  # the last: a duplicate key
                assert written == [n.type for n in sorted(batch, key=lambda n: n.customer_id)]
                heads = {
                    row["customer_id"]: row["txid"]
                    for row in await conn.fetch(
                        "SELECT customer_id, txid::text::bigint AS txid FROM notification_heads"
                    )
                }
            rows = await rows_of(conn)
        finally:
            await conn.close()
        assert heads == {"c-a": own, "c-b": own + 1000, "c-c": own}
        # Outbox order: the writer's own txid first (c-a, then c-c, by seq), then c-b's later one.
        expected = sorted(batch, key=lambda n: n.customer_id)
        expected = [n for n in expected if n.customer_id != "c-b"] + [n for n in expected if n.customer_id == "c-b"]
        assert [row["notification_id"] for row in rows] == [n.notification_id for n in expected]
        assert [row["txid"] for row in rows] == [heads[row["customer_id"]] for row in rows]
        by_seq = sorted(rows, key=lambda row: row["seq"])
        in_customer_order = sorted(batch, key=lambda n: n.customer_id)
        assert [row["notification_id"] for row in by_seq] == [n.notification_id for n in in_customer_order]
        assert [row["dedupe_key"] for row in by_seq] == [n.dedupe_key for n in in_customer_order]
        assert [row["type"] for row in by_seq] == [str(n.type) for n in in_customer_order]
        # The payloads, one JSON array for the set, each landed on its own row.
        stored = {row["notification_id"]: json.loads(row["payload"]) for row in rows}
        assert stored[expected[-1].notification_id]["threshold_percent"] == "80"  # c-b's
        rejected = [n for n in batch if n.type is NotificationType.LIMIT_REJECTED]
        assert [stored[n.notification_id]["transaction_id"] for n in rejected] == ["t1"]

    asyncio.run(go())


def test_a_set_that_waits_on_a_head_commits_after_its_holder_in_every_customer_it_shares(database: str) -> None:
    """Two multi-customer sets share c-b. The first writer (the smaller
    transaction id) is held on c-b's head by the second, which commits first:
    in c-b the first writer's rows come after the second's, in c-a and c-c
    each writer's rows are where its own id puts them; a reader that read up
    to the horizon in between misses nothing."""

    async def go() -> None:
        first = await asyncpg.connect(database)
        second = await asyncpg.connect(database)
        observer = await asyncpg.connect(database)
        try:
            early = first.transaction()
            await early.start()
            first_xid = int(await first.fetchval("SELECT pg_current_xact_id()::text::bigint"))
            late = second.transaction()
            await late.start()
            second_xid = int(await second.fetchval("SELECT pg_current_xact_id()::text::bigint"))
            assert first_xid < second_xid
            second_set = [crossed("c-c", "80"), crossed("c-b", "80")]
            await enqueue(second, second_set)  # holds c-b's and c-c's heads
            first_set = [crossed("c-b", "100"), crossed("c-a", "80"), refused("c-b", "t9")]
            waiting = asyncio.ensure_future(enqueue(first, first_set))

            async def blocked() -> bool:
                return bool(
                    await observer.fetchval(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                )

            assert await eventually(blocked, 10), "the first writer never waited on c-b's head"
            assert not waiting.done()
            before = await horizon(observer)
            assert await read_after(observer, Position(0, 0), 100) == []  # nothing committed yet
            await late.commit()
            await waiting
            await early.commit()
            rows = await rows_of(observer)
            assert before.txid <= first_xid
        finally:
            for conn in (first, second, observer):
                await conn.close()
        per_customer: dict[str, list[tuple[int, int, object]]] = {}
        for row in rows:
            per_customer.setdefault(row["customer_id"], []).append((row["txid"], row["seq"], row["notification_id"]))

        def ids(customer: str) -> list[object]:
            return [n for _, _, n in sorted(per_customer[customer])]

        # c-b: the second writer committed first, so its row comes first, and the
        # first writer's rows carry the second's txid (the head's), later seqs.
        assert ids("c-b") == [second_set[1].notification_id, first_set[0].notification_id, first_set[2].notification_id]
        assert [t for t, _, _ in sorted(per_customer["c-b"])] == [second_xid] * 3
        assert [t for t, _, _ in per_customer["c-a"]] == [first_xid]
        assert [t for t, _, _ in per_customer["c-c"]] == [second_xid]

    asyncio.run(go())


def test_a_row_inserted_without_a_position_is_still_positioned_by_the_trigger(database: str) -> None:
    """An older release's insert (no txid, no seq: migration 0011's statement)
    during a rolling upgrade: the trigger positions it under the head lock,
    after the rows `enqueue` wrote for that customer in the same transaction."""

    async def go() -> None:
        conn = await asyncpg.connect(database)
        try:
            async with conn.transaction():
                own = int(await conn.fetchval("SELECT pg_current_xact_id()::text::bigint"))
                await enqueue(conn, [crossed("c-a", "80")])
                await conn.execute(
                    """
                    INSERT INTO notifications (customer_id, notification_id, type, dedupe_key, payload)
                    VALUES ('c-a', gen_random_uuid(), 'usage.threshold_crossed', 'legacy', '{}'::jsonb)
                    """
                )
            rows = await rows_of(conn)
        finally:
            await conn.close()
        assert [row["dedupe_key"] for row in rows] == [crossed("c-a", "80").dedupe_key, "legacy"]
        assert [row["txid"] for row in rows] == [own, own]
        assert rows[0]["seq"] < rows[1]["seq"]

    asyncio.run(go())


def test_pending_heads_say_what_waits_behind_them_and_a_rounds_deliveries_go_at_once(database: str) -> None:
    """The webhook delivery's bookkeeping: per customer the oldest pending
    delivery, saying whether more wait behind it (then the loop looks again at
    once); the round's 2xx answers forgotten in one statement, fenced by the
    lease; nothing pending is one row of the clock."""

    async def go() -> None:
        conn = await asyncpg.connect(database)
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        try:
            assert await acquire_lease(conn, "e", "me", timedelta(minutes=1))
            async with conn.transaction():
                await enqueue(conn, [crossed("c-a", "80"), crossed("c-a", "100"), crossed("c-b", "80")])
            types = frozenset(NotificationType)
            assert await scan(conn, "e", "me", types, 500) == 3
            now, heads = await pending_heads(conn, "e", 200)
            assert {(h.notification.customer_id, h.more) for h in heads} == {("c-a", True), ("c-b", False)}
            assert {dedupe_key(h.notification.payload) for h in heads} == {
                crossed("c-a", "80").dedupe_key,
                crossed("c-b", "80").dedupe_key,
            }
            with pytest.raises(LeaseLost):
                await mark_delivered(conn, "e", "someone else", [h.notification for h in heads])
            await mark_delivered(conn, "e", "me", [h.notification for h in heads])
            _, [last] = await pending_heads(conn, "e", 200)
            assert (last.notification.customer_id, dedupe_key(last.notification.payload), last.more) == (
                "c-a",
                crossed("c-a", "100").dedupe_key,
                False,
            )
            await mark_delivered(conn, "e", "me", [last.notification])
            later, none = await pending_heads(conn, "e", 200)
            assert none == [] and later >= now
            await mark_delivered(conn, "e", "me", [])  # nothing to forget: no statement
        finally:
            await conn.close()

    asyncio.run(go())
