"""The database's edges: a host of a multi-host METERING_DATABASE_URL that
accepts TCP and then says nothing costs one METERING_DB_CONNECT_TIMEOUT, once,
and the next host serves (metering.ledger.connector); a transaction the server
rolled back for a conflict answers UNAVAILABLE, not INTERNAL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from urllib.parse import quote

import asyncpg
from google.rpc import code_pb2, error_details_pb2

from metering.api.errors import status_details, to_rpc_status
from metering.domain.errors import DatabaseUnavailable
from metering.ledger.hosts import Host, hosts_of, without_hosts
from metering.ledger.pool import create_pool, is_unavailable, translate_errors

DB_TIMEOUT = timedelta(seconds=2)
CONNECT_TIMEOUT = timedelta(milliseconds=300)


@asynccontextmanager
async def silent_host() -> AsyncIterator[tuple[Host, list[int]]]:
    """A TCP port on 127.0.0.1 that accepts connections and never answers
    (a hung server, or a proxy whose backend is gone); yields its address and
    a list that grows by one at every connection it got."""
    attempts: list[int] = []
    held: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(1)
        held.append(writer)  # kept open, unanswered

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Host("127.0.0.1", port), attempts
    finally:
        for writer in held:
            writer.close()
        server.close()


def own_host(url: str) -> Host:
    """The one host of the test database's URL (a TCP host, or the embedded server's socket directory)."""
    (host,) = hosts_of(url)
    return host


def with_hosts(url: str, *hosts: Host) -> str:
    """`url` naming `hosts` instead of its own (as libpq's `host` and `port`
    parameters, which take socket directories too), with target_session_attrs=read-write."""
    names = ",".join(quote(h.host, safe="") for h in hosts)
    ports = ",".join("" if h.port is None else str(h.port) for h in hosts)
    base = without_hosts(url)
    return f"{base}{'&' if '?' in base else '?'}host={names}&port={ports}&target_session_attrs=read-write"


def test_a_silent_first_host_costs_one_connect_timeout_then_is_tried_last(database_url: str) -> None:
    async def run() -> tuple[int, int]:
        async with silent_host() as (silent, attempts):
            url = with_hosts(database_url, silent, own_host(database_url))
            pool = await create_pool(
                url, min_size=0, max_size=4, db_timeout=DB_TIMEOUT, connect_timeout=CONNECT_TIMEOUT
            )
            try:
                # Each acquire is given METERING_DB_TIMEOUT, as PoolUser gives it. Before
                # the per-host timeout, the silent host took all of it: every acquire failed.
                async with pool.acquire(timeout=DB_TIMEOUT.total_seconds()) as conn:
                    assert await conn.fetchval("SELECT 1") == 1
                    tried_first = len(attempts)
                    # Three more connections while the first is held: the silent host is
                    # tried last now, so none of them waits for it.
                    others = [await pool.acquire(timeout=DB_TIMEOUT.total_seconds()) for _ in range(3)]
                    assert [await o.fetchval("SELECT 1") for o in others] == [1, 1, 1]
                    for other in others:
                        await pool.release(other)
                return tried_first, len(attempts)
            finally:
                await pool.close()

    tried_first, tried_in_all = asyncio.run(run())
    assert tried_first == 1  # the silent host was tried, and given up on
    assert tried_in_all == 1  # ... once: the next connections went to the other host first


def test_a_multi_host_url_whose_every_host_is_silent_is_unavailable(database_url: str) -> None:
    """Two silent hosts: each costs its connect timeout, then the pool says the database is unavailable."""

    async def run() -> BaseException | None:
        async with silent_host() as (first, a), silent_host() as (second, b):
            url = with_hosts(database_url, first, second)
            pool = await create_pool(
                url, min_size=0, max_size=1, db_timeout=DB_TIMEOUT, connect_timeout=CONNECT_TIMEOUT
            )
            try:
                async with pool.acquire(timeout=DB_TIMEOUT.total_seconds()):
                    return None
            except Exception as exc:
                assert (len(a), len(b)) == (1, 1)  # both tried, each once
                return exc
            finally:
                await pool.close()

    error = asyncio.run(run())
    assert error is not None and is_unavailable(error), error


def test_a_real_serialization_failure_answers_unavailable_with_retry_info(database_url: str) -> None:
    """A real SQLSTATE 40001 from PostgreSQL (two SERIALIZABLE transactions
    that each read what the other writes: write skew), through the ledger's
    translate_errors and the API's one mapping: UNAVAILABLE with RetryInfo,
    as a hot standby's "canceling statement due to conflict with recovery"
    (the same SQLSTATE) answers. It was INTERNAL before."""

    async def provoke() -> BaseException:
        setup = await asyncpg.connect(database_url)
        table = f"skew_{uuid.uuid4().hex[:8]}"
        try:
            await setup.execute(f"CREATE TABLE {table} (k int PRIMARY KEY, v int)")
            await setup.execute(f"INSERT INTO {table} VALUES (1, 0), (2, 0)")
            first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
            try:
                for conn in (first, second):
                    await conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                    await conn.fetchval(f"SELECT sum(v) FROM {table}")
                await first.execute(f"UPDATE {table} SET v = 1 WHERE k = 1")
                await second.execute(f"UPDATE {table} SET v = 1 WHERE k = 2")
                await first.execute("COMMIT")
                try:
                    async with translate_errors():
                        await second.execute("COMMIT")
                except DatabaseUnavailable as exc:
                    return exc
                raise AssertionError("the second SERIALIZABLE commit succeeded: no write skew was refused")
            finally:
                await first.close()
                await second.close()
        finally:
            await setup.execute(f"DROP TABLE IF EXISTS {table}")
            await setup.close()

    error = asyncio.run(provoke())
    assert isinstance(error.__cause__, asyncpg.SerializationError)
    assert error.__cause__.sqlstate == "40001"
    status = to_rpc_status(error)
    assert status.code == code_pb2.UNAVAILABLE
    retry = status_details(status)["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo) and retry.retry_delay.seconds >= 1
