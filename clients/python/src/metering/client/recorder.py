"""UsageRecorder: many small usage events, few RecordUsageBatch calls.

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
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be 1 to {MAX_BATCH}")
        if linger < 0 or max_pending < max_batch or max_in_flight < 1:
            raise ValueError("need linger >= 0, max_pending >= max_batch and max_in_flight >= 1")
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
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
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
        self._urgent = True
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
        self.stats.batches += 1
        self.stats.events += len(batch)
        self.stats.batch_sizes[len(batch)] += 1
        request = ingest_pb2.RecordUsageBatchRequest(events=[q.request for q in batch])
        try:
            response = await self._client.call("RecordUsageBatch", request, timeout=self._timeout)
        except MeteringError as error:
            # The whole batch was refused (credentials, say) or never answered.
            for queued in batch:
                _settle(queued.future, error=error)
        except BaseException:
            # The recorder's task was cancelled (its loop is closing): nobody will answer these.
            for queued in batch:
                queued.future.cancel()
            raise
        else:
            _answer(batch, response)
        finally:
            self._slots.release()
            for _ in batch:
                self._pending.release()


def _answer(batch: list[_Queued], response: ingest_pb2.RecordUsageBatchResponse) -> None:
    """Each event's own result (results carry the event's index in the batch)."""
    by_index = {result.index: result for result in response.results}
    for index, queued in enumerate(batch):
        result = by_index.get(index)
        if result is None:
            missing = MeteringError(grpc.StatusCode.INTERNAL, f"the batch response has no result for event {index}")
            _settle(queued.future, error=missing)
        elif result.status.code == code_pb2.OK:
            _settle(queued.future, result=RecordResult.from_proto(result.response))
        else:
            _settle(queued.future, error=error_from_status(result.status))


def _settle(
    future: asyncio.Future[RecordResult], *, result: RecordResult | None = None, error: MeteringError | None = None
) -> None:
    if future.done():  # the caller cancelled it
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)
