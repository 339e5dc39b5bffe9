"""The outbox in the ledger database: writing notifications, reading them in
order, and the webhook delivery state (cursors, leases, pending deliveries,
dead letters).

Order: a notification's position is (txid, seq), assigned under a lock on
its customer's head row (`notification_heads`), held by the writing
transaction until it commits: txid is the larger of the writer's own
transaction id and the customer's last txid, seq a sequence value drawn
after the lock. So one customer's notifications are in the order their
transactions committed, whichever replica or worker wrote them, and
customers share no lock. `enqueue` assigns them for its whole set in its one
statement (migration 0015): one head upsert per customer, then the seq
values in the rows' order; the `notifications_position` trigger (migrations
0007 and 0011) still positions a row inserted without a position (an older
release's), under the same lock.

Every reader reads only up to the horizon, the oldest transaction still
running (`_HORIZON`): a row's txid is at least its writer's id, so below the
horizon nothing can appear any more, and a reader that has read up to a
position never misses a row at or before it (nor reads one twice).

Writing: `enqueue` is the one statement that writes notifications. It must
be the last write of its transaction that may wait on a lock (what comes
after it may touch only rows the transaction already holds): the head locks
are then the last locks taken, in customer order, so no deadlock cycle can
go through them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import asyncpg

from metering.domain.notifications import (
    NewNotification,
    NotificationType,
    Position,
    StoredNotification,
    payload_from_json,
    payload_json,
)
from metering.ledger.pool import Connection, PoolUser, one_row, translate_errors

# The channel a transaction that wrote notifications notifies at commit (the
# migration's trigger).
CHANNEL = "metering_outbox"
# The horizon: the oldest transaction of this database still running in the
# statement's snapshot (else the snapshot's next transaction id); every
# transaction with a smaller id has finished, and its rows are visible. A
# transaction is left out only when pg_stat_activity positively shows it in
# another database (transaction ids are never reused, so that cannot be
# wrong; one gone from the view by now counts as ours): on a shared server,
# another database's long transaction does not hold this outbox back, and
# without the privilege to see other sessions the horizon is simply
# pg_snapshot_xmin, later but as correct.
_HORIZON = """(
    SELECT coalesce(min(x.xid), max(pg_snapshot_xmax(s.snapshot)))
      FROM (SELECT pg_current_snapshot() AS snapshot) s
      LEFT JOIN LATERAL pg_snapshot_xip(s.snapshot) AS x (xid)
        ON NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                        WHERE a.backend_xid = xid(x.xid) AND a.datname IS DISTINCT FROM current_database()))"""
_NOTIFICATION_SELECT = (
    "n.notification_id, n.customer_id, n.created_at, n.txid::text::bigint AS txid, n.seq, n.type, n.payload"
)


def insert_arrays(notifications: Sequence[NewNotification]) -> list[Any]:
    """The arguments of `enqueue`'s statement: the notifications' columns as
    arrays (`$1` customer, `$2` id, `$3` type, `$4` dedupe key), their payloads
    as ONE JSON array (`$5`, one `json.dumps` for the set: the pool's jsonb
    codec would run one per row), and the set's customers, each once, in the
    order their head rows are locked (`$6`): the one mapping of notifications
    to rows. Rows are sorted by customer (stably: one customer's keep their
    order), the order their seq values are drawn in."""
    ordered = sorted(notifications, key=lambda n: n.customer_id)
    return [
        [n.customer_id for n in ordered],
        [n.notification_id for n in ordered],
        [str(n.type) for n in ordered],
        [n.dedupe_key for n in ordered],
        json.dumps([payload_json(n.payload) for n in ordered]),
        sorted({n.customer_id for n in ordered}),
    ]


async def enqueue(conn: Connection, notifications: Sequence[NewNotification]) -> list[NotificationType]:
    """Write notifications in the caller's transaction; one already written
    (same customer and dedupe key) is skipped. Returns the types written.

    One statement for the set, the last write of the transaction that may
    wait (see the module doc). `heads` locks (creating) each customer's head
    row until the commit, in customer order, and gives its txid; the sort
    over the join with it produces no row before it has read every head, so
    every seq value is drawn after every lock of the set, in the rows' order
    (the outer query draws them as the sorted rows come: a subquery with an
    ORDER BY is never flattened). A skipped duplicate has drawn a head lock
    and a seq value too, as with the trigger: harmless, seq only orders."""
    if not notifications:
        return []
    rows = await conn.fetch(
        """
        WITH heads AS (
            INSERT INTO notification_heads AS h (customer_id, txid)
            SELECT c.customer_id, pg_current_xact_id()
              FROM unnest($6::text[]) WITH ORDINALITY AS c (customer_id, k)
             ORDER BY c.k
            ON CONFLICT (customer_id) DO UPDATE SET txid = greatest(h.txid, EXCLUDED.txid)
            RETURNING h.customer_id, h.txid
        )
        INSERT INTO notifications (customer_id, txid, seq, notification_id, type, dedupe_key, payload)
        SELECT s.customer_id, s.txid, nextval('notifications_seq'), s.notification_id, s.type, s.dedupe_key,
               s.payload
          FROM (SELECT n.customer_id, h.txid, n.notification_id, n.type, n.dedupe_key, n.payload
                  FROM ROWS FROM (unnest($1::text[]), unnest($2::uuid[]), unnest($3::text[]), unnest($4::text[]),
                                  jsonb_array_elements($5::text::jsonb))
                       WITH ORDINALITY AS n (customer_id, notification_id, type, dedupe_key, payload, i)
                  JOIN heads h ON h.customer_id = n.customer_id
                 ORDER BY n.i
                OFFSET 0) s
        ON CONFLICT (customer_id, dedupe_key) DO NOTHING
        RETURNING type
        """,
        *insert_arrays(notifications),
    )
    return [NotificationType(row["type"]) for row in rows]


def stored_notification(row: asyncpg.Record) -> StoredNotification:
    kind = NotificationType(row["type"])
    return StoredNotification(
        notification_id=row["notification_id"],
        customer_id=row["customer_id"],
        created_at=row["created_at"],
        position=Position(row["txid"], row["seq"]),
        payload=payload_from_json(kind, row["payload"]),
    )


async def horizon(conn: Connection) -> Position:
    """The position of "now": every notification after it is yet to come or
    belongs to a transaction that was still running."""
    txid = await conn.fetchval(f"SELECT {_HORIZON}::text::bigint")
    return Position(int(txid), 0)


async def read_after(conn: Connection, after: Position, limit: int) -> list[StoredNotification]:
    """Up to `limit` notifications after `after`, in outbox order, up to the horizon."""
    rows = await conn.fetch(
        f"""
        SELECT {_NOTIFICATION_SELECT} FROM notifications n
         WHERE (n.txid, n.seq) > ($1::text::xid8, $2) AND n.txid < {_HORIZON}
         ORDER BY n.txid, n.seq
         LIMIT $3
        """,
        str(after.txid),
        after.seq,
        limit,
    )
    return [stored_notification(row) for row in rows]


# -- webhook delivery state -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """The oldest undelivered notification of one customer for an endpoint."""

    notification: StoredNotification
    attempts: int  # made so far
    next_attempt_at: datetime
    more: bool = False  # another pending delivery of the customer waits behind this one


class LeaseLost(Exception):
    """Another replica holds the endpoint's lease now: stop delivering to it."""


async def acquire_lease(conn: Connection, endpoint: str, owner: str, ttl: timedelta) -> bool:
    """Take or renew the endpoint's lease; False while another replica holds
    it. A new endpoint's scan starts from now: it is not sent the past."""
    held = await conn.fetchval(
        f"""
        INSERT INTO webhook_cursors AS c (endpoint, txid, seq, owner, lease_until)
        VALUES ($1, {_HORIZON}, 0, $2, clock_timestamp() + $3::interval)
        ON CONFLICT (endpoint) DO UPDATE SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until
         WHERE c.owner = EXCLUDED.owner OR c.lease_until < clock_timestamp()
        RETURNING true
        """,
        endpoint,
        owner,
        ttl,
    )
    return bool(held)


async def release_lease(conn: Connection, endpoint: str, owner: str) -> None:
    """Let another replica take over at once (a stopping replica)."""
    await conn.execute(
        "UPDATE webhook_cursors SET lease_until = clock_timestamp() WHERE endpoint = $1 AND owner = $2",
        endpoint,
        owner,
    )


# Fences a write: it happens only while `owner` still holds the lease of `endpoint`.
_FENCE = (
    "EXISTS (SELECT 1 FROM webhook_cursors c WHERE c.endpoint = $1 AND c.owner = $2 "
    "AND c.lease_until > clock_timestamp())"
)


async def scan(conn: Connection, endpoint: str, owner: str, types: frozenset[NotificationType], limit: int) -> int:
    """Move the endpoint's cursor over up to `limit` notifications, making a
    pending delivery of each it wants, in one transaction. Returns how many
    were passed over (fewer than `limit`: the scan is up to date)."""
    async with conn.transaction():
        # Read first, before this transaction writes (and takes an id that
        # would hold its own horizon back).
        cursor = await conn.fetchrow(
            "SELECT txid::text::bigint AS txid, seq FROM webhook_cursors WHERE endpoint = $1 AND owner = $2",
            endpoint,
            owner,
        )
        if cursor is None:
            raise LeaseLost(endpoint)
        passed = await read_after(conn, Position(cursor["txid"], cursor["seq"]), limit)
        if not passed:
            return 0
        wanted = [n for n in passed if n.type in types]
        last = passed[-1].position
        moved = await conn.fetchval(
            f"""
            WITH deliveries AS (
                INSERT INTO webhook_deliveries (customer_id, endpoint, txid, seq, status)
                SELECT k.customer_id, $1, k.txid::text::xid8, k.seq, 'pending'
                  FROM unnest($5::text[], $6::bigint[], $7::bigint[]) AS k (customer_id, txid, seq)
                 WHERE {_FENCE}
                ON CONFLICT DO NOTHING
            )
            UPDATE webhook_cursors SET txid = $3::text::xid8, seq = $4
             WHERE endpoint = $1 AND owner = $2 AND lease_until > clock_timestamp()
            RETURNING true
            """,
            endpoint,
            owner,
            str(last.txid),
            last.seq,
            [n.customer_id for n in wanted],
            [n.position.txid for n in wanted],
            [n.position.seq for n in wanted],
        )
        if not moved:
            raise LeaseLost(endpoint)
        return len(passed)


class PendingHeads(NamedTuple):
    """The deliveries an endpoint may attempt now (one per customer, keeping order), and the clock."""

    now: datetime  # the database's clock
    heads: list[PendingDelivery]  # per customer, its oldest pending delivery; soonest due first


async def pending_heads(conn: Connection, endpoint: str, limit: int) -> PendingHeads:
    """The database's clock and, per customer, the oldest pending delivery of
    the endpoint (the only one that may be attempted: order per customer),
    soonest due first, each saying whether more of the customer's wait behind
    it. One round trip, also when nothing is pending (the clock's row alone)."""
    rows = await conn.fetch(
        f"""
        SELECT c.db_now, p.*
          FROM (SELECT clock_timestamp() AS db_now) c
          LEFT JOIN LATERAL (
                SELECT h.attempts, h.next_attempt_at, h.pending > 1 AS more, {_NOTIFICATION_SELECT}
                  FROM (SELECT DISTINCT ON (d.customer_id) d.customer_id, d.seq, d.attempts, d.next_attempt_at,
                               count(*) OVER (PARTITION BY d.customer_id) AS pending
                          FROM webhook_deliveries d
                         WHERE d.endpoint = $1 AND d.status = 'pending'
                         ORDER BY d.customer_id, d.txid, d.seq) h
                  JOIN notifications n ON n.customer_id = h.customer_id AND n.seq = h.seq
                 ORDER BY h.next_attempt_at, n.txid, n.seq
                 LIMIT $2) p ON true
        """,
        endpoint,
        limit,
    )
    heads = [
        PendingDelivery(stored_notification(row), row["attempts"], row["next_attempt_at"], row["more"])
        for row in rows
        if row["notification_id"] is not None
    ]
    return PendingHeads(rows[0]["db_now"], heads)


async def mark_delivered(
    conn: Connection, endpoint: str, owner: str, notifications: Sequence[StoredNotification]
) -> None:
    """Forget the pending deliveries of `notifications` (answered 2xx), in one
    statement; LeaseLost when `owner` no longer holds the endpoint's lease."""
    if not notifications:
        return
    done = await conn.fetchval(
        f"""
        WITH gone AS (
            DELETE FROM webhook_deliveries d
             USING unnest($3::text[], $4::bigint[]) AS k (customer_id, seq)
             WHERE d.customer_id = k.customer_id AND d.endpoint = $1 AND d.seq = k.seq AND {_FENCE}
            RETURNING 1
        )
        SELECT count(*) FROM gone
        """,
        endpoint,
        owner,
        [n.customer_id for n in notifications],
        [n.position.seq for n in notifications],
    )
    if done != len(notifications):
        raise LeaseLost(endpoint)


async def mark_failed(
    conn: Connection,
    endpoint: str,
    owner: str,
    notification: StoredNotification,
    *,
    attempts: int,
    retry_in: timedelta | None,
    error: str,
) -> None:
    """Record a failed attempt: retried after `retry_in`, or (None) a dead letter."""
    done = await conn.fetchval(
        f"""
        UPDATE webhook_deliveries
           SET attempts = $5, last_error = $6,
               status = CASE WHEN $7::interval IS NULL THEN 'dead' ELSE 'pending' END,
               next_attempt_at = clock_timestamp() + coalesce($7::interval, '0s')
         WHERE customer_id = $3 AND endpoint = $1 AND seq = $4 AND {_FENCE}
        RETURNING true
        """,
        endpoint,
        owner,
        notification.customer_id,
        notification.position.seq,
        attempts,
        error[:1000],
        retry_in,
    )
    if not done:
        raise LeaseLost(endpoint)


async def replay_dead_letters(conn: Connection, endpoint: str, since: datetime | None) -> int:
    """Queue an endpoint's dead letters (of notifications since `since`) again,
    with a fresh schedule of attempts. Returns how many."""
    result = await conn.execute(
        """
        UPDATE webhook_deliveries d SET status = 'pending', attempts = 0, next_attempt_at = clock_timestamp()
          FROM notifications n
         WHERE n.customer_id = d.customer_id AND n.seq = d.seq
           AND d.endpoint = $1 AND d.status = 'dead' AND ($2::timestamptz IS NULL OR n.created_at >= $2)
        """,
        endpoint,
        since,
    )
    replayed = int(result.rsplit(" ", 1)[-1])
    if replayed:
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
    return replayed


class Undelivered(NamedTuple):
    """How far an endpoint's deliveries lag: the clock and its oldest undelivered notification."""

    now: datetime  # the database's clock
    oldest: datetime | None  # the time of the oldest notification not delivered (None: none)


async def oldest_undelivered(conn: Connection, endpoint: str, types: frozenset[NotificationType]) -> Undelivered:
    """The database's clock and the time of the oldest notification the
    endpoint wants and has not received: pending, or not scanned yet (dead
    letters are counted apart)."""
    row = await one_row(
        conn,
        f"""
        SELECT clock_timestamp() AS db_now, least(
            (SELECT min(n.created_at) FROM webhook_deliveries d
               JOIN notifications n ON n.customer_id = d.customer_id AND n.seq = d.seq
              WHERE d.endpoint = $1 AND d.status = 'pending'),
            (SELECT n.created_at FROM notifications n, webhook_cursors c
              WHERE c.endpoint = $1 AND (n.txid, n.seq) > (c.txid, c.seq) AND n.txid < {_HORIZON}
                AND n.type = ANY($2::text[])
              ORDER BY n.txid, n.seq LIMIT 1)) AS oldest
        """,
        endpoint,
        sorted(str(t) for t in types),
    )
    return Undelivered(row["db_now"], row["oldest"])


async def purge(conn: Connection, older_than: timedelta, endpoints: Sequence[str], limit: int) -> int:
    """Delete up to `limit` notifications older than `older_than` that every
    configured endpoint has received (scanned past, nothing pending, no dead
    letter). Returns how many."""
    result = await conn.execute(
        f"""
        DELETE FROM notifications n
         WHERE (n.customer_id, n.seq) IN (
            SELECT m.customer_id, m.seq FROM notifications m
             WHERE m.created_at < clock_timestamp() - $1::interval AND m.txid < {_HORIZON}
               AND NOT EXISTS (SELECT 1 FROM webhook_cursors c
                                WHERE c.endpoint = ANY($2::text[]) AND (m.txid, m.seq) > (c.txid, c.seq))
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                WHERE d.customer_id = m.customer_id AND d.seq = m.seq)
             ORDER BY m.created_at
             LIMIT $3
               FOR UPDATE SKIP LOCKED)
        """,
        older_than,
        list(endpoints),
        limit,
    )
    return int(result.rsplit(" ", 1)[-1])


class OutboxStore(PoolUser):
    """The outbox for its readers (the watch stream, webhook delivery,
    retention): each method takes a pooled connection, bounded by
    METERING_DB_TIMEOUT, and gives it back, so no connection leaves the ledger.

    The stream's reads (`horizon`, `read_after`) turn an unreachable database
    into DatabaseUnavailable, since a watching caller hears it as UNAVAILABLE;
    the background tasks' methods let the driver's own exception through, as
    they only log it and try again."""

    async def horizon(self) -> Position:
        async with translate_errors(), self._connection() as conn:
            return await horizon(conn)

    async def read_after(self, after: Position, limit: int) -> list[StoredNotification]:
        async with translate_errors(), self._connection() as conn:
            return await read_after(conn, after, limit)

    async def acquire_lease(self, endpoint: str, owner: str, ttl: timedelta) -> bool:
        async with self._connection() as conn:
            return await acquire_lease(conn, endpoint, owner, ttl)

    async def release_leases(self, endpoints: Sequence[str], owner: str) -> None:
        """Release several endpoints' leases on one connection."""
        async with self._connection() as conn:
            for endpoint in endpoints:
                await release_lease(conn, endpoint, owner)

    async def scan(self, endpoint: str, owner: str, types: frozenset[NotificationType], limit: int) -> int:
        async with self._connection() as conn:
            return await scan(conn, endpoint, owner, types, limit)

    async def pending_heads(self, endpoint: str, limit: int) -> PendingHeads:
        async with self._connection() as conn:
            return await pending_heads(conn, endpoint, limit)

    async def mark_delivered(self, endpoint: str, owner: str, notifications: Sequence[StoredNotification]) -> None:
        async with self._connection() as conn:
            await mark_delivered(conn, endpoint, owner, notifications)

    async def mark_failed(
        self,
        endpoint: str,
        owner: str,
        notification: StoredNotification,
        *,
        attempts: int,
        retry_in: timedelta | None,
        error: str,
    ) -> None:
        async with self._connection() as conn:
            await mark_failed(conn, endpoint, owner, notification, attempts=attempts, retry_in=retry_in, error=error)

    async def oldest_undelivered(self, endpoint: str, types: frozenset[NotificationType]) -> Undelivered:
        async with self._connection() as conn:
            return await oldest_undelivered(conn, endpoint, types)

    async def purge(self, older_than: timedelta, endpoints: Sequence[str], limit: int) -> int:
        """One batch of retention (see `purge`); its caller loops while batches are full."""
        async with self._connection() as conn:
            return await purge(conn, older_than, endpoints, limit)

    async def replay_dead_letters(self, endpoint: str, since: datetime | None) -> int:
        """For `metering webhooks replay`: an operator's one statement on a
        pool of its own; not cut off like a served call's, its statement
        timeout bounds it."""
        async with self._connection(bounded=False) as conn:
            return await replay_dead_letters(conn, endpoint, since)
