"""Counter reads that share statements: what CheckBalance costs under load.

A balance check is one indexed read, so what it costs the service is the
round trip around it: a pooled connection taken and given back, a statement
sent, its answer parsed, timers armed and cancelled. Under concurrent load the
reads queue here and go to the database together, as the writer's events do:
while a statement is in flight, new reads wait for the next one, and when the
last statement carried more than one read (calls are arriving concurrently)
the next one lingers a moment (`linger`, 1 ms) so that more reads join it. A
lone read goes at once, so it pays no added latency. Without the linger, at
64 calls in flight, statements carried 1.1 reads on average.

Every read of a statement sees the same snapshot, taken after the read was
queued: a balance checked after a write was acknowledged includes that write.
A read whose caller has gone still runs (it writes nothing) and its answer is
dropped; one caller's deadline never fails the others of its statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from metering.domain.records import CounterReading
from metering.domain.usage import CounterKey
from metering.ledger.pool import ConnectionSource, PoolUser, answer_within, translate_errors
from metering.ledger.sql import active_grants_sum, counter_state, live_holds_sum

# The customer's plan (None: unknown), its counters, and whether it has a wallet.
Readings = tuple[str | None, dict[CounterKey, CounterReading], bool]

# One row per (read, counter); a read of no counters still gets one row, with
# NULL meter, so that it learns the customer's plan.
_READ_COUNTERS = f"""
SELECT k.n, cu.plan_slug, cu.has_wallet, k.meter_slug, k.period_start,
       coalesce(c.used, 0) AS used, coalesce(c.event_count, 0) AS event_count,
       c.latest_event_time, c.latest_event_id,
       {active_grants_sum("k.customer_id", "k.meter_slug", "k.at")} AS granted,
       {live_holds_sum("k.customer_id", "k.meter_slug", "k.period_start")} AS reserved
  FROM unnest($1::int[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
       AS k (n, customer_id, meter_slug, period_start, at)
  LEFT JOIN customers cu ON cu.customer_id = k.customer_id
  LEFT JOIN meter_counters c
    ON c.customer_id = k.customer_id AND c.meter_slug = k.meter_slug AND c.period_start = k.period_start
"""


@dataclass(eq=False, slots=True)
class _Read:
    customer_id: str
    keys: Sequence[CounterKey]
    at: datetime
    answer: asyncio.Future[Readings]


class CounterReader(PoolUser):
    """Balance reads that share statements: concurrent reads queue and go to the database together
    (a lone read goes at once). Every read sees a snapshot taken after it was queued, so a balance
    checked after an acknowledged write includes that write."""

    def __init__(
        self,
        pool: ConnectionSource,
        *,
        acquire_timeout: float,
        linger: float = 0.001,
        max_reads: int = 256,
        on_statement: Callable[[int], None] = lambda reads: None,
    ) -> None:
        super().__init__(pool, acquire_timeout=acquire_timeout)
        self._on_statement = on_statement  # observes the reads of every statement
        self._linger = linger
        self._concurrent_reads = False  # whether the last statement carried more than one read
        self._max_reads = max_reads  # per statement
        self._queue: list[_Read] = []
        self._in_flight: asyncio.Task[None] | None = None  # the one statement at a time

    async def read(self, customer_id: str, keys: Sequence[CounterKey], at: datetime) -> Readings:
        """The customer's plan now (None: no such customer) and each of its
        counters in `keys`, with the grants active at `at` and the
        unexpired holds of its period: no event history is read. Answered
        within METERING_DB_TIMEOUT (or DatabaseUnavailable), however long the
        statement in flight ahead of it takes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._acquire_timeout
        read = _Read(customer_id, keys, at, loop.create_future())
        self._queue.append(read)
        if self._in_flight is None:
            self._send()
        return await answer_within(read.answer, deadline)

    def _send(self) -> None:
        # A task of its own: the caller that started it may be cancelled
        # (deadline) without failing the other reads of the statement.
        self._in_flight = asyncio.create_task(self._run())
        self._in_flight.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight = None
        if self._queue:
            self._send()

    async def _run(self) -> None:
        if self._linger and self._concurrent_reads:
            await asyncio.sleep(self._linger)  # cancelled only when the loop ends: the reads stay queued
        reads, self._queue = self._queue[: self._max_reads], self._queue[self._max_reads :]
        self._concurrent_reads = len(reads) > 1
        self._on_statement(len(reads))
        try:
            answers = _answers(reads, await self._fetch(reads))
        except Exception as exc:  # every reader learns why
            for read in reads:
                if not read.answer.done():
                    read.answer.set_exception(exc)
            return
        except BaseException:  # cancelled: the service is stopping
            for read in reads:
                read.answer.cancel()
            raise
        for read, answer in zip(reads, answers, strict=True):
            if not read.answer.done():
                read.answer.set_result(answer)

    async def _fetch(self, reads: list[_Read]) -> list[asyncpg.Record]:
        numbers: list[int] = []
        customers: list[str] = []
        meters: list[str | None] = []
        starts: list[datetime | None] = []
        times: list[datetime] = []
        for n, read in enumerate(reads):
            if not read.keys:  # only the plan
                numbers.append(n)
                customers.append(read.customer_id)
                meters.append(None)
                starts.append(None)
                times.append(read.at)
            for key in read.keys:
                numbers.append(n)
                customers.append(read.customer_id)
                meters.append(key.meter_slug)
                starts.append(key.period_start)
                times.append(read.at)
        async with translate_errors(), self._connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(_READ_COUNTERS, numbers, customers, meters, starts, times)
            return rows


def _answers(reads: list[_Read], rows: list[asyncpg.Record]) -> list[Readings]:
    """The rows of a statement, back to the reads they answer (by index)."""
    answers: list[Readings] = [(None, {}, False) for _ in reads]
    for row in rows:
        n = row["n"]
        plan, readings, _ = answers[n]
        if plan is None and row["plan_slug"] is not None:
            answers[n] = plan, readings, _ = row["plan_slug"], readings, row["has_wallet"]
        if row["meter_slug"] is not None and row["plan_slug"] is not None:
            key = CounterKey(reads[n].customer_id, row["meter_slug"], row["period_start"])
            readings[key] = CounterReading(counter_state(row), row["granted"], row["reserved"])
    return answers
