"""The asyncpg connection pool and the mapping of database failures.

Every way the database can be unreachable, slow or going away becomes one
domain error, DatabaseUnavailable, which the API answers as UNAVAILABLE. The
pool reconnects by itself when the database comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import Protocol, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from metering.domain.errors import DatabaseUnavailable
from metering.ledger.connector import HostByHost

# SQLSTATE classes that mean "the database is not usable right now":
# 08 connection exception, 53 insufficient resources, 57 operator
# intervention (shutdown, cancel on timeout), 58 system error.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
# read_only_sql_transaction: the server this connection reached accepts no
# writes: it is (or has become) a standby. With a multi-host
# METERING_DATABASE_URL that is a failover under way, not a bug: the call is
# refused UNAVAILABLE and the connection dropped, so that the next one looks
# for the primary again (target_session_attrs=read-write).
_READ_ONLY_SERVER = "25006"
# The transaction was rolled back by the server and may be run again as it
# was: serialization_failure (40001: a SERIALIZABLE conflict, or on a hot
# standby "canceling statement due to conflict with recovery") and
# deadlock_detected (40P01: a deadlock, or a standby's buffer-pin deadlock
# with recovery). Nothing of it was written: a retry with the same ids is
# safe, so the call is refused UNAVAILABLE with RetryInfo, not INTERNAL. A
# recovery conflict that drops the database (57P04) is in class 57 already.
# Not the rest of class 40: 40002 (a constraint checked at commit) and 40003
# (completion unknown) are not "retry and it will do".
_ROLLED_BACK_RETRYABLE = ("40001", "40P01")

_T = TypeVar("_T")

# What the ledger's statements run on: a pooled connection (the proxy that
# Pool.acquire hands out, which forwards to its connection) or a connection of
# its own (the LISTEN connection, migrations run by tests and the CLI). Both
# answer the same calls; the stubs type them apart.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
# The pool's type under a ledger name: the composition root (metering.runtime)
# holds the pool and hands it to the stores without importing asyncpg, which
# only the ledger does.
Pool: TypeAlias = asyncpg.Pool


async def one_row(conn: Connection, query: str, *args: object) -> asyncpg.Record:
    """The row of a statement that always returns exactly one (a SELECT of
    aggregates or of the clock, without FROM or WHERE that could empty it)."""
    row = await conn.fetchrow(query, *args)
    if row is None:
        raise RuntimeError(f"expected one row, got none: {query.strip()[:80]}")
    return row


async def _init_connection(conn: Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _release(conn: Connection) -> None:
    """Runs when a connection returns to the pool. Nothing in this service
    leaves session state behind (no SET, LISTEN, cursors; the migration's
    advisory lock is released explicitly), so asyncpg's default reset query is
    a wasted round trip on every call. A transaction left open by a cancelled
    call is still rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(
    url: str,
    *,
    min_size: int,
    max_size: int,
    db_timeout: timedelta,
    connect_timeout: timedelta | None = None,
    application_name: str = "metering",
) -> Pool:
    """A pool on `url`, which may name several hosts (libpq's multi-host
    syntax, `postgresql://h1:p1,h2:p2/db?target_session_attrs=read-write`):
    every new connection tries them one by one, each for at most
    `connect_timeout` (METERING_DB_CONNECT_TIMEOUT), hosts that failed
    recently last (metering.ledger.connector), and keeps the first that
    qualifies, so that after a failover the pool finds the new primary by
    itself, even when the old one went silent. Connections that fail are
    dropped (PoolUser), never reused. Without `connect_timeout`, each host
    may take all of `db_timeout`."""
    seconds = db_timeout.total_seconds()
    per_host = seconds if connect_timeout is None else connect_timeout.total_seconds()
    # The stubs want `connect` to take every argument asyncpg.connect takes;
    # the pool passes only those given below, which HostByHost takes.
    pool: Pool = await asyncpg.create_pool(  # type: ignore[call-overload]
        url,
        min_size=min_size,
        max_size=max_size,
        connect=HostByHost(url, connect_timeout=per_host, is_unavailable=is_unavailable),
        command_timeout=seconds,  # client-side bound on every statement
        init=_init_connection,
        reset=_release,
        server_settings={
            "application_name": application_name,
            # OK is answered only after a durable commit, whatever the server default.
            "synchronous_commit": "on",
            "statement_timeout": str(int(seconds * 1000)),
            "idle_in_transaction_session_timeout": str(int(seconds * 1000) * 5),
            # Short OLTP statements: JIT compilation costs more than it saves
            # (measured: +29 ms on a 270 ms aggregation over 333k events).
            "jit": "off",
        },
    )
    return pool


def is_unavailable(exc: BaseException) -> bool:
    """Whether an exception means the database cannot serve now (retryable)."""
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError, asyncpg.InterfaceError)):
        return True
    if isinstance(exc, asyncpg.InternalClientError):
        # When the server goes away (crash, shutdown, pg_terminate_backend), an
        # idle connection reads a FATAL ErrorResponse before it reads the EOF.
        # asyncpg then fails the next operation on it with InternalClientError
        # ("cannot switch to state 15; another operation (2) is in progress")
        # instead of a connection error. Whether the call wrote anything is
        # unknown either way: a retry with the same transaction id converges.
        return True
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return (
            sqlstate[:2] in _UNAVAILABLE_CLASSES or sqlstate == _READ_ONLY_SERVER or sqlstate in _ROLLED_BACK_RETRYABLE
        )
    return False


@asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Turn database unavailability into DatabaseUnavailable; let bugs through."""
    try:
        yield
    except Exception as exc:
        if is_unavailable(exc):
            raise DatabaseUnavailable(f"the ledger database is unavailable: {type(exc).__name__}") from exc
        raise


class ConnectionSource(Protocol):
    """Where PoolUser takes its connections: an asyncpg.Pool, or a
    metering.ledger.replica.ReadRouter that picks the replica's pool or the
    primary's for each read."""

    def acquire(self, *, timeout: float | None = None) -> AbstractAsyncContextManager[PoolConnectionProxy]: ...


class PoolUser:
    """Base of the ledger's query classes: bounded waits for the database."""

    def __init__(self, pool: ConnectionSource, *, acquire_timeout: float) -> None:
        self._pool = pool
        # METERING_DB_TIMEOUT: how long one use of a pooled connection may
        # take, the wait for the connection (and connecting) and every
        # statement after it together. An overloaded or hung database answers
        # UNAVAILABLE instead of queueing calls forever.
        self._acquire_timeout = acquire_timeout

    @asynccontextmanager
    async def _connection(self, *, bounded: bool = True) -> AsyncIterator[PoolConnectionProxy]:
        """A pooled connection. `bounded` (the default): it is cut off (its
        socket closed) once METERING_DB_TIMEOUT has passed since it was asked
        for, so the caller hears UNAVAILABLE then, whatever it was waiting on.
        Each statement's own timeout is not enough on a hung server: a call
        that waited for a connection then waits for its statement as long
        again, and after a statement timed out inside a transaction, asyncpg's
        ROLLBACK first waits for the cancel request (sent over a new
        connection to the hung server) and then for itself: measured, 2-3
        times the timeout. Unbounded is for work whose statements are each
        bounded but whose transaction may take longer (closing a period)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._acquire_timeout
        async with self._pool.acquire(timeout=self._acquire_timeout) as conn:
            cut_off = loop.call_at(deadline, _drop, conn) if bounded else None
            try:
                yield conn
            except Exception as exc:
                if is_unavailable(exc):
                    # A connection that timed out, lost its server or its
                    # protocol state is dropped, not released: a release would
                    # first send a cancel request and a ROLLBACK, each allowed
                    # the timeout again on an unreachable server, so the caller
                    # heard UNAVAILABLE only after 2-3 times METERING_DB_TIMEOUT.
                    # The pool connects afresh when it needs to.
                    _drop(conn)
                raise
            finally:
                if cut_off is not None:
                    cut_off.cancel()


def _drop(conn: Connection) -> None:
    """Close a pooled connection's socket at once; the pool takes the holder back."""
    with contextlib.suppress(asyncpg.InterfaceError):  # dropped already (and so given back)
        conn.terminate()


async def answer_within(answer: asyncio.Future[_T], deadline: float) -> _T:
    """The answer of a call queued for the database (the batching writer's and
    reader's queues), or DatabaseUnavailable at `deadline` (loop time) if it
    has none by then, however much is queued or in flight ahead of it. The
    answer is cancelled then: the queue skips it if it is still waiting, and
    drops its result if its statement is in flight (what that statement did is
    then unknown to the caller, as after any UNAVAILABLE: a retry with the same
    transaction id answers what was recorded)."""
    # A timer on the answer itself rather than asyncio.wait_for: wait_for (3.11)
    # waits on a future of its own, which the answer completes through one more
    # turn of the event loop, on every call of the hot paths.
    expiry = asyncio.get_running_loop().call_at(deadline, answer.cancel)
    try:
        return await answer
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling() == 0:  # the timer cancelled the answer, not our caller
            raise DatabaseUnavailable("no answer from the ledger database within METERING_DB_TIMEOUT") from None
        raise
    finally:
        expiry.cancel()
