"""SyncUsageRecorder: UsageRecorder's twin for threaded or blocking code.

The same guarantees as the asyncio UsageRecorder (recorder.py), on a
MeteringClient: `record()` queues an event and hands back a
concurrent.futures.Future of its own result; a sender thread sends the queue as
one RecordUsageBatch when `max_batch` events wait or the oldest has waited
`linger` seconds, with at most `max_in_flight` batches in flight (each on a
worker thread). Once `max_pending` events are queued or in flight, `record()`
blocks (back-pressure) instead of growing without end.

Nothing is lost or duplicated: a batch that got no answer is resent by the
client's retry policy as the identical request (same transaction ids), so the
ledger answers the events it already holds as duplicates; every future is
resolved, with the event's result, its own refusal (LimitExceeded,
InvalidRequest...), or Unavailable when the retries ran out (the events may or
may not be recorded: record them again with the same ids). `close()` (or
leaving `with`) sends what is queued and waits for every answer.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from types import TracebackType

from metering.client.errors import MeteringError
from metering.client.models import RecordResult
from metering.client.recorder import MAX_BATCH, RecorderStats, batch_outcomes, check_settings
from metering.client.requests import UsageRecord
from metering.client.sync import MeteringClient
from metering.v1 import ingest_pb2, usage_pb2


@dataclass(frozen=True, slots=True)
class _Queued:
    request: usage_pb2.RecordUsageRequest
    future: Future[RecordResult]


class SyncUsageRecorder:
    """Batches usage events for one MeteringClient; `record()` may be called from any thread.

    `with SyncUsageRecorder(client) as recorder: future = recorder.record(event)`
    """

    def __init__(
        self,
        client: MeteringClient,
        *,
        max_batch: int = MAX_BATCH,
        linger: float = 1.0,
        max_pending: int = 10_000,
        max_in_flight: int = 4,
        timeout: float | None = None,
    ) -> None:
        """Batch for `client`: up to `max_batch` events per call, sent once the oldest has waited
        `linger` seconds; at most `max_pending` events queued or in flight (then `record()`
        blocks) and `max_in_flight` batches at once; `timeout` per attempt of a batch."""
        check_settings(max_batch, linger, max_pending, max_in_flight)
        self._client = client
        self.max_batch = max_batch
        self.linger = linger
        self._timeout = timeout  # per attempt of a batch; the client's default when None
        self._pending = threading.Semaphore(max_pending)  # queued or in flight
        self._slots = threading.Semaphore(max_in_flight)  # batches in flight
        self._changed = threading.Condition()  # guards everything below; notified on every change
        self._queue: collections.deque[_Queued] = collections.deque()
        self._oldest = 0.0  # monotonic time the oldest queued event arrived
        self._urgent = False  # flush(): send without waiting for the linger
        self._closing = False
        self._sending: set[Future[None]] = set()
        self._senders = ThreadPoolExecutor(max_in_flight, thread_name_prefix="metering-recorder-send")
        self._runner: threading.Thread | None = None
        self.stats = RecorderStats()

    def __enter__(self) -> SyncUsageRecorder:
        """Use the recorder in `with`; it is closed (everything sent and answered) on the way out."""
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Close the recorder."""
        self.close()

    def record(self, event: UsageRecord) -> Future[RecordResult]:
        """Queue one event (blocking while the queue is full); the future resolves with its result."""
        if self._closing:
            raise RuntimeError("the recorder is closed")
        request = event.to_proto()  # bad arguments fail here, in the caller's thread
        self._pending.acquire()
        future: Future[RecordResult] = Future()
        with self._changed:
            if self._closing:
                self._pending.release()
                raise RuntimeError("the recorder is closed")
            if not self._queue:
                self._oldest = time.monotonic()
            self._queue.append(_Queued(request, future))
            if self._runner is None:
                self._runner = threading.Thread(target=self._run, name="metering-usage-recorder", daemon=True)
                self._runner.start()
            self._changed.notify_all()
        return future

    def flush(self) -> None:
        """Send everything queued now and wait until each of those events is answered."""
        with self._changed:
            answers = [q.future for q in self._queue]
            sending = list(self._sending)
            self._urgent = bool(self._queue)  # reset once the queue is sent
            self._changed.notify_all()
        wait_all(answers)
        wait_all(sending)

    def close(self) -> None:
        """Stop taking events, send what is queued, wait for every answer."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
            runner = self._runner
        if runner is not None:
            runner.join()
        self._senders.shutdown(wait=True)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._queue and not self._closing:
                    self._changed.wait()
                if not self._queue:
                    return  # closing, and everything was handed to a sender
                self._linger()
            self._slots.acquire()  # while every slot is busy, the next batch keeps filling
            with self._changed:
                count = min(len(self._queue), self.max_batch)
                batch = [self._queue.popleft() for _ in range(count)]
                if self._queue:
                    self._oldest = time.monotonic()
                else:
                    self._urgent = False
                self.stats.count(len(batch))
                task = self._senders.submit(self._send, batch)
                self._sending.add(task)
            task.add_done_callback(self._sent)

    def _linger(self) -> None:
        """With the lock held: wait until a full batch is queued, the oldest event has waited
        `linger`, or a flush or close."""
        while len(self._queue) < self.max_batch and not (self._closing or self._urgent):
            left = self._oldest + self.linger - time.monotonic()
            if left <= 0:
                return
            self._changed.wait(left)

    def _sent(self, task: Future[None]) -> None:
        with self._changed:
            self._sending.discard(task)

    def _send(self, batch: list[_Queued]) -> None:
        request = ingest_pb2.RecordUsageBatchRequest(events=[q.request for q in batch])
        try:
            response = self._client.call("RecordUsageBatch", request, timeout=self._timeout)
        except MeteringError as error:
            # The whole batch was refused (credentials, say) or never answered.
            for queued in batch:
                _settle(queued.future, error)
        except Exception as error:  # a bug: each caller hears of it rather than wait forever
            for queued in batch:
                _settle(queued.future, error)
        else:
            for queued, outcome in zip(batch, batch_outcomes(len(batch), response), strict=True):
                _settle(queued.future, outcome)
        finally:
            self._slots.release()
            for _ in batch:
                self._pending.release()


def _settle(future: Future[RecordResult], outcome: RecordResult | BaseException) -> None:
    if not future.set_running_or_notify_cancel():  # the caller cancelled it
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
