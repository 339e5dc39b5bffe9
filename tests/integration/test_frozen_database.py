"""PostgreSQL frozen under load: every call answers within its timeout.

SIGSTOP of the test's own PostgreSQL (the postmaster and its backends, found
as the postmaster's children: no other server on the machine is touched)
while several callers send RecordUsage, RecordUsageBatch, CheckBalance,
GetUsage and reservations to two replicas. The README promises UNAVAILABLE
past METERING_DB_TIMEOUT, not after a hang: every call, whatever was queued
or in flight ahead of it, is answered within METERING_DB_TIMEOUT + 1 s
(measured per call by the client), UNAVAILABLE or OK, never INTERNAL. After
SIGCONT, retries with the same transaction ids converge, every acknowledged
event is in the ledger, and `metering audit` is clean. (Regression: calls
queued behind the writer's stuck batch answered after 4-6 s with a 2 s
timeout, and some waited out a whole 5 s freeze, then answered OK.)

Uses tests/faults.py's retrying client, book and ledger check.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2

from metering.runtime.embedded import EmbeddedPostgres
from metering.v1 import metering_service_pb2_grpc, reservations_pb2, usage_pb2
from tests.faults import (
    Book,
    Client,
    LoadMix,
    Outcome,
    Replica,
    RetryPolicy,
    add_customers,
    check_ledger,
    drive,
    freeze_postgres,
    thaw_postgres,
    wait_serving,
    write_catalog,
)

# Slow tier: a PostgreSQL of its own, frozen under load on two services.
pytestmark = pytest.mark.slow

DB_TIMEOUT = 1.0  # METERING_DB_TIMEOUT of the replicas
BOUND = DB_TIMEOUT + 1.0  # every call's answer, measured from the client
FREEZE = 5.0  # seconds PostgreSQL is stopped: several timeouts, one after the other
CALL_DEADLINE = 15.0  # far past the bound: only a service that hangs runs into it


@dataclass(frozen=True)
class Call:
    """A call other than the writes the book logs: when, how long, how it ended."""

    method: str
    started: float
    ended: float
    code: str


def test_frozen_database_answers_every_call_within_the_db_timeout(
    own_database: EmbeddedPostgres, tmp_path: Path
) -> None:
    catalog = write_catalog(tmp_path)
    settings = {"METERING_DB_TIMEOUT": f"{DB_TIMEOUT:g}s", "METERING_HEALTH_INTERVAL": "200ms"}
    replicas = [Replica(name, own_database.uri(), catalog, **settings) for name in ("A", "B")]
    try:
        for replica in replicas:
            replica.start()
        asyncio.run(_frozen_under_load(replicas, own_database, catalog))
    finally:
        for replica in replicas:
            replica.stop()
    for replica in replicas:
        assert "Traceback" not in replica.log()
    _metering_audit_is_clean(own_database.uri(), catalog)


async def _frozen_under_load(replicas: list[Replica], database: EmbeddedPostgres, catalog: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    targets = [r.target for r in replicas]
    plans = {f"frozen-{tag}-{i}": "open" for i in range(4)}
    customers = list(plans)
    await add_customers(targets[0], plans)
    book = Book(f"frozen-{tag}")
    others: list[Call] = []
    stop = asyncio.Event()
    # Unary and batch writers apart, so that both kinds are waiting whenever the freeze comes.
    unary = LoadMix([(c, 1.0) for c in customers], batch_share=0.0, tiny_deadline_share=0.0)
    batches = LoadMix([(c, 1.0) for c in customers], batch_share=1.0, tiny_deadline_share=0.0)
    async with Client(targets, book, RetryPolicy(call_timeout=CALL_DEADLINE)) as client:
        channels = [grpc.aio.insecure_channel(t) for t in targets]
        stubs: list[metering_service_pb2_grpc.MeteringServiceAsyncStub] = [
            metering_service_pb2_grpc.MeteringServiceStub(c) for c in channels
        ]

        async def timed(method: str, call: Awaitable[object]) -> str:
            started = time.monotonic()  # the call was sent just now, as it was made
            code = grpc.StatusCode.OK
            try:
                await call
            except grpc.aio.AioRpcError as error:
                code = error.code()
            others.append(Call(method, started, time.monotonic(), code.name))
            return code.name

        async def until_ok(method: str, send: Callable[[], Awaitable[object]]) -> None:
            for _ in range(100):  # bounded: each attempt answers within BOUND
                if await timed(method, send()) == "OK":
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"{method} never answered OK")

        async def read_balances() -> None:
            while not stop.is_set():
                await client.check_balance(random.choice(customers))

        async def read_usage() -> None:
            while not stop.is_set():
                request = usage_pb2.GetUsageRequest(customer_id=random.choice(customers), meter_slugs=["tokens"])
                await timed("GetUsage", random.choice(stubs).GetUsage(request, timeout=CALL_DEADLINE))

        async def hold_and_release(customer: str) -> None:
            # Held and released, never committed: reservations write no event
            # the ledger check would have to account for. Each is sent again
            # with the same id until it answers OK (both are idempotent).
            reservation = f"hold-{uuid.uuid4().hex[:8]}"
            reserve = reservations_pb2.ReserveUsageRequest(
                customer_id=customer,
                meter_slug="tokens",
                quantity="1",
                reservation_id=reservation,
                ttl=duration_pb2.Duration(seconds=60),
            )
            release = reservations_pb2.ReleaseReservationRequest(customer_id=customer, reservation_id=reservation)
            await until_ok("ReserveUsage", lambda: random.choice(stubs).ReserveUsage(reserve, timeout=CALL_DEADLINE))
            await until_ok(
                "ReleaseReservation", lambda: random.choice(stubs).ReleaseReservation(release, timeout=CALL_DEADLINE)
            )

        async def reserve_and_release() -> None:
            while not stop.is_set():
                await hold_and_release(random.choice(customers))

        load = asyncio.gather(
            drive(client, unary, until=time.monotonic() + 120, tasks=4, stop=stop),
            drive(client, batches, until=time.monotonic() + 120, tasks=2, stop=stop),
            *(read_balances() for _ in range(2)),
            read_usage(),
            reserve_and_release(),
        )
        try:
            await asyncio.sleep(2.0)  # every replica's pool and queues in use
            frozen_at = time.monotonic()
            pids = freeze_postgres(database)
            try:
                await asyncio.sleep(FREEZE)
            finally:
                thaw_postgres(pids)
            thawed = time.monotonic()
            await asyncio.sleep(2.0)
        finally:
            stop.set()
            await load
            for channel in channels:
                await channel.close(None)
        for target in targets:
            assert await wait_serving(target, customers[0], limit=30) is not None
        await client.resolve(book.pending())

    # Every call that waited on the service at some moment of the freeze.
    writes = [(a.method, a.started, a.ended, a.code) for a in book.attempts]
    calls = writes + [(c.method, c.started, c.ended, c.code) for c in others]
    during = [c for c in calls if c[1] < thawed and c[2] > frozen_at]
    methods = {c[0] for c in during}
    assert {"RecordUsage", "RecordUsageBatch", "CheckBalance", "GetUsage"} <= methods, methods
    assert {"ReserveUsage", "ReleaseReservation"} & methods, methods
    seen = sorted((round(ended - started, 2), method, code) for method, started, ended, code in during)
    assert [c for c in seen if c[0] > BOUND] == [], seen
    assert {code for _, _, code in seen} <= {"OK", "UNAVAILABLE"}, seen
    assert any(code == "UNAVAILABLE" for _, _, code in seen), seen  # the freeze was felt
    assert not book.server_errors, book.server_errors  # no INTERNAL/UNKNOWN, in a batch's events either

    check = await check_ledger(database.uri(), book, catalog)
    assert not check.acked_missing, f"acknowledged but not in the ledger: {check.acked_missing[:10]}"
    assert not check.acked_changed, check.acked_changed[:10]
    assert check.duplicates == 0, (check.duplicate_ids, check.unwanted[:10], check.unasked_duplicates)
    assert not check.unresolved, f"no definite answer after every retry: {check.unresolved[:10]}"
    assert not check.rejected, check.rejected[:10]
    assert check.audit.ok, check.audit
    assert check.rows == book.count(Outcome.ACKED)


def _metering_audit_is_clean(database_url: str, catalog: Path) -> None:
    """The operator's check after an incident: `metering audit` exits 0."""
    env = {**os.environ, "METERING_DATABASE_URL": database_url, "METERING_CATALOG": str(catalog)}
    result = subprocess.run(
        [sys.executable, "-m", "metering", "audit"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
