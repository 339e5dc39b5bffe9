"""UsageRecorder: many small usage events, few RecordUsageBatch calls (asyncio).

SyncUsageRecorder (sync_recorder.py) is its twin for threads, with the same
guarantees; what they share (the stats, a batch answer read per event) is here.

`record()` queues an event and hands back a future of its own result; a
background task sends the queue as one batch when `max_batch` events wait or
the oldest has waited `linger` seconds. The queue is bounded: once
`max_pending` events are queued or in flight, `record()` waits (back-pressure
when the service is slow or down) instead of growing without end.

Nothing is lost or duplicated: a batch that got no answer is resent by the
client's retry policy as the identical request (same transaction ids), so the
ledger answers the events it already holds as duplicates; every future is
resolved, with the event's result, its own refusal (LimitExceeded,
InvalidRequest...), or Unavailable when the retries ran out (the events may or
may not be recorded: record them again with the same ids). `close()` sends
what is queued and waits for every answer.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from types import TracebackType

import grpc
from google.rpc import code_pb2

from metering.client.aio import AsyncMeteringClient
from metering.client.errors import MeteringError, error_from_status
from metering.client.models import RecordResult
from metering.client.requests import UsageRecord
from metering.v1 import ingest_pb2, usage_pb2

MAX_BATCH = 1000  # RecordUsageBatch's own limit


@dataclass
class RecorderStats:
    """What the recorder sent: one batch per RecordUsageBatch request (resends not counted again)."""

    batches: int = 0
    events: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)

    def count(self, size: int) -> None:
        """Count one batch of `size` events."""
        self.batches += 1
        self.events += size
        self.batch_sizes[size] += 1


def check_settings(max_batch: int, linger: float, max_pending: int, max_in_flight: int) -> None:
    """Refuse recorder settings that cannot work (both recorders take the same)."""
    if not 1 <= max_batch <= MAX_BATCH:
        raise ValueError(f"max_batch must be 1 to {MAX_BATCH}")
    if linger < 0 or max_pending < max_batch or max_in_flight < 1:
        raise ValueError("need linger >= 0, max_pending >= max_batch and max_in_flight >= 1")


def batch_outcomes(size: int, response: ingest_pb2.RecordUsageBatchResponse) -> list[RecordResult | MeteringError]:
    """Each event's own outcome, in batch order: its result or its refusal (results carry
    the event's index in the batch; one the answer lacks is an INTERNAL error)."""
    by_index = {result.index: result for result in response.results}
    outcomes: list[RecordResult | MeteringError] = []
    for index in range(size):
        result = by_index.get(index)
        if result is None:
            outcomes.append(
                MeteringError(grpc.StatusCode.INTERNAL, f"the batch response has no result for event {index}")
            )
        elif result.status.code == code_pb2.OK:
            outcomes.append(RecordResult.from_proto(result.response))
        else:
            outcomes.append(error_from_status(result.status))
    return outcomes


@dataclass(frozen=True, slots=True)
class _Queued:
    request: usage_pb2.RecordUsageRequest
    future: asyncio.Future[RecordResult]


class UsageRecorder:
    """Batches usage events for one AsyncMeteringClient.

    `async with UsageRecorder(client) as recorder: future = await recorder.record(event)`
    """

    def __init__(
        self,
        client: AsyncMeteringClient,
        *,
        max_batch: int = MAX_BATCH,
        linger: float = 1.0,
        max_pending: int = 10_000,
        max_in_flight: int = 4,
        timeout: float | None = None,
    ) -> None:
        """Batch for `client`: up to `max_batch` events per call, sent once the oldest has waited
        `linger` seconds; at most `max_pending` events queued or in flight (then `record()`
        waits) and `max_in_flight` batches at once; `timeout` per attempt of a batch."""
        check_settings(max_batch, linger, max_pending, max_in_flight)
        self._client = client
        self.max_batch = max_batch
        self.linger = linger
        self._timeout = timeout  # per attempt of a batch; the client's default when None
        self._pending = asyncio.Semaphore(max_pending)  # queued or in flight
        self._slots = asyncio.Semaphore(max_in_flight)  # batches in flight
        self._queue: collections.deque[_Queued] = collections.deque()
        self._oldest = 0.0  # loop time the oldest queued event arrived
        self._queued = asyncio.Event()  # the queue is not empty (or the recorder closes)
        self._ready = asyncio.Event()  # a full batch waits, or a flush wants everything now
        self._urgent = False  # flush(): send without waiting for the linger
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.stats = RecorderStats()

    async def __aenter__(self) -> UsageRecorder:
        """Use the recorder in `async with`; it is closed (everything sent and answered) on the way out."""
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Close the recorder."""
        await self.close()

    async def record(self, event: UsageRecord) -> asyncio.Future[RecordResult]:
        """Queue one event (waiting while the queue is full); the future resolves with its result."""
        if self._closing:
            raise RuntimeError("the recorder is closed")
        request = event.to_proto()  # bad arguments fail here, in the caller's task
        await self._pending.acquire()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RecordResult] = loop.create_future()
        if not self._queue:
            self._oldest = loop.time()
        self._queue.append(_Queued(request, future))
        self._queued.set()
        if len(self._queue) >= self.max_batch:
            self._ready.set()
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="metering-usage-recorder")
        return future

    async def flush(self) -> None:
        """Send everything queued now and wait until each of those events is answered."""
        waiting = [q.future for q in self._queue]
        self._urgent = bool(self._queue)  # reset once the queue is sent
        self._ready.set()
        await asyncio.gather(*waiting, *self._sending, return_exceptions=True)

    async def close(self) -> None:
        """Stop taking events, send what is queued, wait for every answer."""
        self._closing = True
        self._queued.set()
        self._ready.set()
        if self._runner is not None:
            await self._runner
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._queued.clear()
                await self._queued.wait()
                continue
            await self._linger(loop)
            await self._slots.acquire()  # while every slot is busy, the next batch keeps filling
            count = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(count)]
            if self._queue:
                self._oldest = loop.time()
            else:
                self._urgent = False
            if len(self._queue) < self.max_batch:
                self._ready.clear()
            task = asyncio.create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _linger(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until a full batch is queued, the oldest event has waited `linger`, or a flush or close."""
        while len(self._queue) < self.max_batch and not (self._closing or self._urgent):
            left = self._oldest + self.linger - loop.time()
            if left <= 0:
                return
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), left)
            except TimeoutError:
                return

    async def _send(self, batch: list[_Queued]) -> None:
        self.stats.count(len(batch))
        request = ingest_pb2.RecordUsageBatchRequest(events=[q.request for q in batch])
        try:
            response = await self._client.call("RecordUsageBatch", request, timeout=self._timeout)
        except MeteringError as error:
            # The whole batch was refused (credentials, say) or never answered.
            for queued in batch:
                _settle(queued.future, error)
        except BaseException:
            # The recorder's task was cancelled (its loop is closing): nobody will answer these.
            for queued in batch:
                queued.future.cancel()
            raise
        else:
            for queued, outcome in zip(batch, batch_outcomes(len(batch), response), strict=True):
                _settle(queued.future, outcome)
        finally:
            self._slots.release()
            for _ in batch:
                self._pending.release()


def _settle(future: asyncio.Future[RecordResult], outcome: RecordResult | MeteringError) -> None:
    if future.done():  # the caller cancelled it
        return
    if isinstance(outcome, MeteringError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
