"""Writes resume within seconds when the primary goes silent (its packets
dropped, no reset: a machine whose network died) and its standby is promoted.

A primary and its synchronous `pg_basebackup -R` standby (tests/replication.py),
a service on METERING_DATABASE_URL=primary,standby with
target_session_attrs=read-write (the primary FIRST), writers recording without
pause. Mid-load every packet to and from the primary's port is dropped by
iptables (tests/silence.py), and a second later the standby is promoted with
`pg_ctl promote`, standing for Patroni. Before each host had its own connect
timeout (METERING_DB_CONNECT_TIMEOUT), every new connection spent all of
METERING_DB_TIMEOUT on the silent first host and never reached the second: no
write was acknowledged until the old primary came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import pytest

from metering.v1 import metering_service_pb2_grpc, usage_pb2
from tests.faults import Replica, add_customers, write_catalog
from tests.replication import make_synchronous, multi_host_url, start_primary, start_standby
from tests.silence import ensure_iptables, silent

# Slow tier: two PostgreSQL servers and a service; the primary's port is silenced.
pytestmark = pytest.mark.slow

DB_TIMEOUT = 2.0  # METERING_DB_TIMEOUT (the default)
CONNECT_TIMEOUT = 1.0  # METERING_DB_CONNECT_TIMEOUT (the default)
# The documented bound (docs/operations.md, "A silent database host"): once the
# standby is promoted, the next write is acknowledged within one connect timeout
# to the silent host and one connection to the new primary, and a call already
# waiting answers within METERING_DB_TIMEOUT: DB_TIMEOUT + 3 s leaves the margin.
RESUME_BOUND = DB_TIMEOUT + 3.0
DECIDE = 1.0  # seconds between the silence and the promotion (a failover manager deciding)
WRITERS = 4


@dataclass
class Run:
    acked: list[str] = field(default_factory=list)  # transaction ids answered OK
    codes: Counter[str] = field(default_factory=Counter)
    acks: list[float] = field(default_factory=list)  # time.monotonic() of each OK answer
    silenced: float = 0.0
    promoted: float = 0.0
    resumed: asyncio.Event = field(default_factory=asyncio.Event)  # a write acknowledged after the promotion

    def first_ack_after_promotion(self) -> float | None:
        later = [t for t in self.acks if t >= self.promoted]
        return min(later) - self.promoted if later else None


async def write_until(target: str, customer: str, run: Run, stop: asyncio.Event) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        while not stop.is_set():
            transaction_id = uuid.uuid4().hex
            request = usage_pb2.RecordUsageRequest(
                customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=transaction_id
            )
            try:
                await stub.RecordUsage(request, timeout=3 * DB_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                run.codes[error.code().name] += 1
                await asyncio.sleep(0.05)
            else:
                run.codes["OK"] += 1
                run.acked.append(transaction_id)
                run.acks.append(time.monotonic())
                if run.promoted:
                    run.resumed.set()


def test_writes_resume_within_seconds_when_the_primary_goes_silent(tmp_path: Path) -> None:
    ensure_iptables()
    primary = start_primary(tmp_path)
    standby = None
    service = None
    try:
        asyncio.run(primary.execute("CREATE DATABASE metering"))
        standby = start_standby(primary, tmp_path)
        asyncio.run(make_synchronous(primary, standby))
        service = Replica(
            "A",
            multi_host_url(primary, standby),  # the primary first
            write_catalog(tmp_path),
            METERING_DB_TIMEOUT=f"{DB_TIMEOUT:g}s",
            METERING_DB_CONNECT_TIMEOUT=f"{CONNECT_TIMEOUT:g}s",
            METERING_HEALTH_INTERVAL="200ms",
            METERING_SHUTDOWN_GRACE="3s",
        )
        service.start()
        customer = f"silent-{uuid.uuid4().hex[:6]}"
        run = Run()

        async def scenario() -> None:
            await add_customers(service.target, {customer: "open"})
            stop = asyncio.Event()
            writers = [asyncio.create_task(write_until(service.target, customer, run, stop)) for _ in range(WRITERS)]
            try:
                await asyncio.sleep(1.5)
                assert run.codes["OK"] > 0, run.codes
                with silent(primary.port):
                    run.silenced = time.monotonic()
                    await asyncio.sleep(DECIDE)
                    assert standby is not None
                    await asyncio.to_thread(standby.promote)
                    run.promoted = time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(run.resumed.wait(), RESUME_BOUND + 3)
                    await asyncio.sleep(1.0)  # writes go on on the new primary
                    stop.set()
                    await asyncio.gather(*writers)
            finally:
                stop.set()
                await asyncio.gather(*writers, return_exceptions=True)

        asyncio.run(scenario())
        resumed = run.first_ack_after_promotion()
        print(
            f"silent primary: first acknowledged write {resumed} s after the promotion "
            f"({run.promoted - run.silenced:.2f} s after the silence); answers {dict(run.codes)}"
        )
        assert resumed is not None and resumed <= RESUME_BOUND, (resumed, run.codes)
        # Only OK or UNAVAILABLE (within its bound): never INTERNAL, UNKNOWN, CANCELLED or a missed deadline.
        assert set(run.codes) <= {"OK", "UNAVAILABLE"}, run.codes
        # Every acknowledged write is on the new primary, once (synchronous replication).
        stored = asyncio.run(_stored(standby.url(), customer))
        assert Counter(stored) == Counter(set(stored)), "a transaction id stored twice"
        assert set(run.acked) <= set(stored), set(run.acked) - set(stored)
    finally:
        if service is not None:
            service.stop()
        if standby is not None:
            standby.stop()
        primary.stop()


async def _stored(url: str, customer: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT transaction_id FROM usage_events WHERE customer_id = $1", customer)
    finally:
        await conn.close()
    return [row["transaction_id"] for row in rows]
