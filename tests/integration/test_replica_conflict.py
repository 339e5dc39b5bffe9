"""A hot standby's recovery conflict ("canceling statement due to conflict
with recovery", SQLSTATE 40001) answers UNAVAILABLE with RetryInfo, never
INTERNAL: a real one, provoked on a `pg_basebackup -R` standby
(tests/replication.py) with max_standby_streaming_delay = 0, through the
ledger's translate_errors and the API's one mapping."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from google.rpc import code_pb2, error_details_pb2

from metering.api.errors import status_details, to_rpc_status
from metering.domain.errors import DatabaseUnavailable
from metering.ledger.pool import translate_errors
from tests.replication import PostgresNode, start_primary, start_standby, wait_replayed

# Slow tier: two PostgreSQL servers of the test's own.
pytestmark = pytest.mark.slow


async def provoke(primary: PostgresNode, standby: PostgresNode) -> BaseException:
    """A read running on the standby whose snapshot still sees rows that the
    primary then deletes and vacuums away: replaying the cleanup cancels it."""
    await primary.execute("CREATE TABLE conflict (k int PRIMARY KEY, v text)", database="metering")
    await primary.execute(
        "INSERT INTO conflict SELECT g, repeat('x', 100) FROM generate_series(1, 10000) g", database="metering"
    )
    await wait_replayed(primary, standby)
    reader = await asyncpg.connect(standby.url())
    try:

        async def long_read() -> BaseException:
            try:
                async with translate_errors():
                    # Its snapshot is taken as it starts; it runs until the cleanup's replay cancels it.
                    await reader.fetchval("SELECT count(*) FROM conflict, pg_sleep(30) AS s", timeout=60)
            except DatabaseUnavailable as exc:
                return exc
            raise AssertionError("the standby's read was not cancelled by the recovery conflict")

        read = asyncio.create_task(long_read())
        await asyncio.sleep(1.0)  # the read is running, its snapshot taken
        await primary.execute("DELETE FROM conflict", database="metering")
        await primary.execute("VACUUM conflict", database="metering")
        return await read
    finally:
        reader.terminate()


def test_a_recovery_conflict_on_a_standby_answers_unavailable_with_retry_info(tmp_path: Path) -> None:
    primary = start_primary(tmp_path)
    standby: PostgresNode | None = None
    try:
        asyncio.run(primary.execute("CREATE DATABASE metering"))
        standby = start_standby(primary, tmp_path)
        asyncio.run(standby.execute("ALTER SYSTEM SET max_standby_streaming_delay = 0"))
        asyncio.run(standby.execute("SELECT pg_reload_conf()"))
        error = asyncio.run(provoke(primary, standby))
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()
    cause = error.__cause__
    assert isinstance(cause, asyncpg.PostgresError), cause
    assert cause.sqlstate == "40001", (cause.sqlstate, str(cause))
    assert "conflict with recovery" in str(cause), str(cause)
    status = to_rpc_status(error)
    assert status.code == code_pb2.UNAVAILABLE
    retry = status_details(status)["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo) and retry.retry_delay.seconds >= 1
