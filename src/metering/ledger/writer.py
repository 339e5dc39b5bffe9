"""The batching writer: concurrent RecordUsage calls share one transaction.

Calls queue as groups (one RecordUsage is a group of one; a batch RPC or a
stream message is one group, never split, so its order holds). A worker takes
everything queued, up to `max_batch` events, and in ONE transaction:

The reads and the write are metering.ledger.usage's; the decision between
them (steps 5-6's what) is metering.domain.usage's, a pure function.

1. reads the customers of the batch (plan, billing anchor, how far their
   periods are closed) under a share lock of their rows, and resolves each
   command with the customer row it read (plan terms, period, price, whether
   it is late) through the pure metering.domain.usage.resolve: the writer
   calls down into the domain, never back up into a service;
2. finds the transaction ids that already exist and, when there are none
   and no event counts a distinct value (the common case), reads the grants
   active at each event's time and the unexpired holds: both before any
   counter lock (see below);
   then, for a batch of columnar groups whose events can only be of the
   common case (metering.domain.columns.preinsertable), inserts its events
   (see "Events inserted before the counter locks");
3. locks every counter row involved, in a stable order (no deadlocks between
   workers or replicas), creating missing ones;
4. otherwise (a replay, a distinct value, or the batch runs again) reads
   them now, under the locks: the recorded events, then in one statement the
   grants, holds and distinct values already counted;
5. decides every event in arrival order (metering.domain.limits): duplicates, payload
   conflicts (also between two events of the same batch), whatever their
   time, then late events (the refusal a resolution carries applies only to a
   transaction id not recorded yet), limits. A batch whose calls all take
   columns (RecordUsageBatch, the stream) first tries the common case
   (metering.domain.columns: all new events, nothing near a limit or a
   threshold), decided and answered as columns with no object per event;
   any other batch is decided by decide_batch, in the same transaction;
6. in one statement, inserts the accepted events (one multi-row insert; the
   unique constraint still guards: a concurrent twin makes the batch run
   again; none when they were inserted in step 2), writes each counter once and records new distinct values; when
   the holdings were read in step 2, only if they are unchanged (else the
   batch runs again);
7. when the decisions call for notifications (thresholds crossed, the first
   hard-limit refusal of a period), writes them into the outbox in a
   statement of their own, the transaction's last (it locks each customer's
   outbox head until the commit: one customer's notifications are in commit
   order, metering.ledger.outbox);
8. commits, and answers every caller.

One bad event refuses only that event. A database failure answers every
caller of the batch with the same error, and nothing is half-written; the
calls queued behind that batch are refused with it. No call waits for its
answer longer than METERING_DB_TIMEOUT, whatever is queued or in flight ahead
of it: past that it is refused UNAVAILABLE (see `submit_group`).

Why each read is where it is. Every batch over the same customers queues on
the counter rows from step 3 to the commit, so in the common case that window
holds one round trip besides the lock and the commit: the write (and the
outbox and wallets, when a batch has them).
- The customers (step 1) come first, share-locked: that lock is what orders a
  batch with the closing of a period (metering.ledger.usage.customers), and
  every write path takes customers before counters.
- The recorded events (step 2) need no lock: exactly once is the unique
  constraint's, not this read's. A twin committed after the read makes the
  insert skip a row, and the batch runs again (`_RetryBatch`), reading under
  the locks as every run again does, so a run again never races for the same
  reason twice. A batch that repeats a recorded event reads them again under
  the locks (step 4), so a duplicate's answer and its counter come from one
  moment (a void, which locks the counter, is in both or in neither).
- The holds (step 2) change only under their counter's lock (ReserveUsage,
  its commit and release, metering.ledger.entitlements), and expire by the
  database's clock; grants are only ever added. Read before the locks they
  are a guess, which the write statement checks: its snapshot, taken after
  the locks, has every hold committed under them, and it recomputes the
  guessed sums and writes nothing unless every one is unchanged
  (metering.ledger.usage.write_batch); then the batch runs again
  (HoldingsChanged), reading under the locks. With the same holdings and
  locked counters, the decision is the one reads under the locks would have
  given: no overspend. A batch with nothing to write checks them in a
  statement of its own, since its answers carry them.
- Under the locks (step 4), never inside the locking statement: a statement
  reads the snapshot taken when it starts, before it waited for a row, so it
  would miss a hold ReserveUsage committed while this batch waited (an
  overspend) or a distinct value another writer counted (a duplicate key).
  Distinct values are read only there: a batch that has some takes the
  slower order.
- The wallets (locked FOR UPDATE, after the counters, metering.ledger.wallets)
  only for customers with one.

Events inserted before the counter locks. The insert into usage_events (its
four indexes) is most of the write statement, so a batch that can only be of
the common case inserts its events right after the replay lookup, before
lock_counters (metering.ledger.usage.preinsert), with the event ids the
common-case plan would give them; the write statement then writes only the
rollups and the counters, under the same `fresh` check. Why it stays exact:
- A twin committed since the lookup makes the early insert skip a row, and
  one in flight makes it wait and then skip, as the write's insert would:
  the batch runs again, in the old order (only a first attempt inserts early).
- Once the counters are read, decide_common may decline (a limit or a
  threshold near): the early rows are deleted in the same transaction, and
  decide_batch decides and writes as it always did. When it answers, its
  inserts are exactly the early rows. Either way nothing refused is ever
  committed, and the rollups (from the same arrays) equal the events.
- Early inserts take rows in (customer, transaction id) order: two batches
  that share transaction ids wait on each other in that order, never in a
  cycle. A transaction that inserts under a counter lock (CommitReservation,
  a batch in the old order) may close one with a batch that inserted the
  same transaction id early and now waits for that counter: PostgreSQL fails
  one of the two (40P01) after deadlock_timeout. This batch then runs again,
  in the old order; CommitReservation answers UNAVAILABLE, and its retry is
  answered from what was recorded (tests/integration/test_writer_locks.py).
  Both need two calls carrying the same transaction id at the same time.

Batch size is what makes this cheap: each transaction costs about six round
trips and a commit whatever its size (three of them under the counter locks). One worker (the default) lets calls
queue while a transaction is in flight, and under concurrent load it lingers a
moment (2 ms) before taking the queue. Measured at 64 calls in flight on two
cores: two workers without linger wrote ~5 events per transaction, one worker
with the linger ~20, and the server's CPU per call fell by a third. More
workers only help when transactions wait on each other (row locks held by
reservations or other replicas), at the price of smaller batches.

Bulk workers (METERING_WRITER_BULK_WORKERS, default 1) are extra workers that
take the queue only while at least half a batch of events waits in it: big
batch calls and streams at load. Then one transaction's round trips and commit
overlap another's reads and decision, which a single worker leaves idle, while
calls of a few events never see them and keep the one worker's large batches.
Their transactions lock counters in the same order as every writer's, so two
in flight over the same customers wait on each other's rows, never deadlock.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg

from metering.domain.columns import CommonPlan, Recorded, decide_common, preinsertable, recorded
from metering.domain.errors import DatabaseUnavailable, MeteringError
from metering.domain.notifications import NotificationType
from metering.domain.records import StoredEvent, new_event_ids
from metering.domain.terms import TermsBook
from metering.domain.usage import (
    AllowanceKey,
    BatchPlan,
    BatchReads,
    CounterKey,
    Resolution,
    UsageCommand,
    Written,
    allowance_key_for,
    counters_to_lock,
    decide_batch,
    originals_unlocked,
    resolve_all,
)
from metering.domain.wallets import Spend, SpendKey, Wallet
from metering.ledger import usage as batch_sql
from metering.ledger import wallets as wallet_sql
from metering.ledger.pool import Connection, Pool, PoolUser, answer_within, translate_errors

__all__ = ["BatchWriter", "GroupAnswer", "GroupResults", "Recorded", "Resolution", "Written", "WrittenKeys"]

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

    from metering.telemetry.tracing import Tracing

log = logging.getLogger(__name__)

# Attempts of one batch when a concurrent insert takes a transaction id first.
_BATCH_ATTEMPTS = 3

GroupResults = list[Written | BaseException]
# A group that takes columns (submit_columnar) is answered with them when its
# whole batch was of the common case (metering.domain.columns).
GroupAnswer = GroupResults | Recorded


@dataclass(eq=False, slots=True)
class _Group:
    """The events of one call (or stream message), queued and written together."""

    events: Sequence[UsageCommand]  # in order
    book: TermsBook  # the catalog's terms the events are resolved under
    # Answered once, with a result per event. Cancelled when the caller stops
    # waiting (its deadline in the queue, or the client gone): a group not yet
    # taken is then skipped.
    future: asyncio.Future[GroupAnswer]
    call: SpanContext | None = None  # the traced call that submitted it (tracing on)
    columnar: bool = False  # takes its answer as columns (Recorded) when its batch allows


@dataclass(frozen=True, slots=True)
class _Common:
    """A batch decided by the common-case decision, and the resolutions its answers need."""

    plan: CommonPlan
    resolutions: list[Resolution]


class _RetryBatch(Exception):
    """A concurrent insert took a transaction id: roll back and run the batch again."""


class BatchWriter(PoolUser):
    """Coalesces concurrent RecordUsage calls into one transaction per batch: customers and counter
    rows locked in a stable order, every event decided in arrival order, the accepted ones written
    together. A group (a batch RPC) is never split, and every call is answered only after the commit."""

    def __init__(
        self,
        pool: Pool,
        *,
        acquire_timeout: float,
        max_batch: int = 1000,
        workers: int = 1,
        bulk_workers: int = 0,
        linger: float = 0.002,
        on_batch: Callable[[int], None] = lambda size: None,
        on_notifications: Callable[[Sequence[NotificationType]], None] = lambda types: None,
        tracing: Tracing | None = None,
    ) -> None:
        # acquire_timeout (METERING_DB_TIMEOUT) also bounds each call's wait in
        # the queue, whatever is queued or in flight ahead of it.
        super().__init__(pool, acquire_timeout=acquire_timeout)
        self._tracing = tracing  # None: off, and nothing here costs anything
        self._on_batch = on_batch  # observes the size of every batch written
        self._on_notifications = on_notifications  # observes the notifications of every batch committed
        self._written = WrittenKeys()
        # Counters whose last batch of columns was not of the common case once
        # they were read (near a limit or a threshold, or past a hard limit and
        # refusing): a batch that has one inserts no events early, which would
        # only be deleted again. A guess, kept by this writer only: it changes
        # where the insert runs, never what is decided.
        self._declined = _DeclinedCounters()
        self._max_batch = max_batch
        self._linger = linger
        self._concurrent_calls = False  # whether the last batch held more than one call
        self._pending: deque[_Group] = deque()
        self._pending_events = 0  # events in self._pending
        # A bulk worker takes the queue only from this many events waiting.
        self._bulk_from = max(1, max_batch // 2)
        self._wakeup = asyncio.Event()
        self._workers = [asyncio.create_task(self._work(bulk=False)) for _ in range(workers)]
        self._workers += [asyncio.create_task(self._work(bulk=True)) for _ in range(bulk_workers)]

    async def submit_group(self, events: Sequence[UsageCommand], book: TermsBook) -> GroupResults:
        """submit_columnar's answer, always as one result per event."""
        answer = await self._submit(events, book, columnar=False)
        assert isinstance(answer, list)  # a group that asked for no columns gets none
        return answer

    async def submit_columnar(self, events: Sequence[UsageCommand], book: TermsBook) -> GroupAnswer:
        """submit_group, answered as columns (Recorded: every event recorded)
        when the whole batch it was written in was of the common case
        (metering.domain.columns), else as one result per event."""
        return await self._submit(events, book, columnar=True)

    async def _submit(self, events: Sequence[UsageCommand], book: TermsBook, *, columnar: bool) -> GroupAnswer:
        """Several events decided in this order, in the same transaction, under
        the catalog's terms in `book`; each result is the outcome or the
        exception that refused that event.

        A group without an answer within METERING_DB_TIMEOUT of its call,
        however much is queued ahead of it, is refused then, every event with
        DatabaseUnavailable. Still queued, it is never written; in a batch in
        flight, it may still commit, unknown to this caller (as after any
        UNAVAILABLE: a retry with the same transaction ids is answered with
        what was recorded, as duplicates)."""
        if not events:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._acquire_timeout
        future: asyncio.Future[GroupAnswer] = loop.create_future()
        call = None if self._tracing is None else self._tracing.current_call()
        self._pending.append(_Group(events, book, future, call, columnar))
        self._pending_events += len(events)
        self._wakeup.set()
        try:
            return await answer_within(future, deadline)
        except DatabaseUnavailable as exc:  # as if its batch had failed: one refusal per event
            return [exc] * len(events)

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    def _take(self) -> _Group:
        group = self._pending.popleft()
        self._pending_events -= len(group.events)
        return group

    async def _work(self, *, bulk: bool) -> None:
        while True:
            while not self._pending or (bulk and self._pending_events < self._bulk_from):
                self._wakeup.clear()
                await self._wakeup.wait()
            if (
                self._concurrent_calls
                and self._linger
                and len(self._pending) > 1
                and self._pending_events < self._max_batch
            ):
                # Calls are arriving concurrently: let more join, so the commit
                # and the statements of this transaction are paid by more
                # events. A lone call (nothing else queued, or the last batch
                # held one call) is taken at once: the wait would only add to
                # its latency.
                await asyncio.sleep(self._linger)
            batch: list[_Group] = []
            events = 0
            while self._pending and (not batch or events + len(self._pending[0].events) <= self._max_batch):
                group = self._take()
                batch.append(group)
                events += len(group.events)
            self._concurrent_calls = len(batch) > 1
            # A caller that went away while queued (its time in the queue up,
            # client cancelled) gets no answer: skip its events, so the ledger is
            # as if the call never happened and an overloaded writer sheds dead work.
            batch = [group for group in batch if not group.future.done()]
            if not batch:
                continue
            events = sum(len(group.events) for group in batch)
            self._on_batch(events)
            try:
                with self._span(batch, events):
                    await self._write(batch)
            except asyncio.CancelledError:
                _fail(batch, asyncio.CancelledError())
                raise
            except DatabaseUnavailable as exc:
                # The database just failed (or ran out the time of) this batch:
                # the calls queued behind it are answered now rather than each
                # waiting for a batch of its own to fail the same way. They
                # were never written; their retries come to a fresh batch.
                _fail(batch, exc)
                while self._pending:
                    _fail([self._take()], exc)
            except BaseException as exc:  # every caller learns why, nothing is half-written
                if not isinstance(exc, MeteringError):
                    log.exception("batch of %d events failed", events)
                _fail(batch, exc)

    def _span(self, batch: list[_Group], events: int) -> AbstractContextManager[None]:
        """The transaction's span, linked to the traced calls it carries."""
        if self._tracing is None:
            return nullcontext()
        calls = [group.call for group in batch if group.call is not None]
        return self._tracing.batch(calls, events) if calls else nullcontext()

    async def _write(self, batch: list[_Group]) -> None:
        async with translate_errors(), self._connection() as conn:
            for attempt in range(_BATCH_ATTEMPTS):
                announced: list[NotificationType] = []
                attempted: list[tuple[str, str]] = []
                try:
                    async with conn.transaction():
                        plan, recorded_at = await self._decide_and_write(conn, batch, announced, attempted, attempt)
                except (_RetryBatch, batch_sql.HoldingsChanged):
                    if attempt == _BATCH_ATTEMPTS - 1:
                        raise RuntimeError("a batch kept colliding with concurrent inserts") from None
                    continue
                except asyncpg.DeadlockDetectedError:
                    # Its events inserted before the counter locks, the batch
                    # closed a cycle with a transaction that inserts the same
                    # transaction id under a counter lock (CommitReservation,
                    # or a batch in the old order), and PostgreSQL rolled it
                    # back: run it again, in the old order (only the first
                    # attempt inserts early). The last attempt's deadlock is
                    # the database's retryable refusal (UNAVAILABLE).
                    if attempt == _BATCH_ATTEMPTS - 1:
                        raise
                    continue
                # Committed: every notification attempted exists now (written
                # by this batch or found by its dedupe key). The answers are
                # built only now, with the row locks released.
                self._written.add(attempted)
                if isinstance(plan, _Common):
                    _answer_common(batch, plan, recorded_at)
                else:
                    _answer(batch, plan.answers(batch_sql.stored_events(plan, recorded_at)))
                self._on_notifications(announced)
                return

    async def _decide_and_write(
        self,
        conn: Connection,
        batch: list[_Group],
        announced: list[NotificationType],
        attempted: list[tuple[str, str]],
        attempt: int,
    ) -> tuple[BatchPlan | _Common, dict[UUID, datetime]]:
        """The batch's reads (metering.ledger.usage), its decision
        (metering.domain.usage, pure) and the one statement that writes it.
        Returns the plan and when each of its events was recorded. Whatever
        needs no lock (event ids before, the answers after) is left out of the
        time the counter rows are held."""
        customers = await batch_sql.customers(conn, {command.customer_id for g in batch for command in g.events})
        resolutions: list[Resolution | MeteringError] = []
        for group in batch:
            resolutions.extend(resolve_all(group.events, customers, group.book))
        valid = [r for r in resolutions if isinstance(r, Resolution)]
        event_ids = new_event_ids(len(valid))
        txns = [(r.event.customer_id, r.event.transaction_id) for r in valid]
        values = [(r.counter_key, r.unique_value) for r in valid if r.unique_value is not None]
        # The first attempt reads what it can before the counter locks (see
        # "Why each read is where it is"); a run again reads under them.
        existing = await batch_sql.existing(conn, txns) if attempt == 0 else None
        guessed: dict[AllowanceKey, tuple[Decimal, Decimal]] | None = None
        if existing == {} and not values:  # no replay, no distinct value: the common case
            guessed, _ = await batch_sql.holdings_and_values(conn, _allowance_keys(valid, existing), [])
        columnar = all(group.columnar for group in batch)
        early: batch_sql.EventColumns | None = None  # the events inserted before the counter locks
        early_at: dict[UUID, datetime] = {}  # and when each was recorded
        to_lock = counters_to_lock(resolutions)
        may_be_common = columnar and preinsertable(resolutions)
        if guessed is not None and may_be_common and not self._declined.any_of(to_lock):
            # Events inserted before the counter locks (see the docstring):
            # the bulk of the write leaves the window every writer queues in.
            early = batch_sql.event_columns(valid, event_ids)
            early_at = await batch_sql.preinsert(conn, early)
            if len(early_at) != len(valid):
                raise _RetryBatch  # a twin took a transaction id: run again, in the old order
        counters = await batch_sql.lock_counters(conn, to_lock)
        if existing is None or existing:
            existing = await batch_sql.existing(conn, txns)
        unlocked = originals_unlocked(existing, counters)
        if unlocked:
            counters.update(await batch_sql.read_counters(conn, unlocked))
        if guessed is None:
            holdings, seen_values = await batch_sql.holdings_and_values(conn, _allowance_keys(valid, existing), values)
        else:
            holdings, seen_values = guessed, set[tuple[CounterKey, str]]()
        reads = BatchReads(counters=counters, existing=existing, holdings=holdings, seen_values=seen_values)
        charged = [r for r in valid if r.wallet is not None and r.refusal is None]
        if charged:  # only customers with a wallet or a prepaid plan: no SQL for the others
            wallet_states, spends = await _wallet_reads(conn, charged)
            reads = replace(reads, wallet_states=wallet_states, spends=spends)
        if columnar:
            # The common case as columns (metering.domain.columns); anything else
            # (it answers None) goes through decide_batch below, unchanged.
            common = decide_common(resolutions, reads, event_ids)
            if may_be_common:  # what its counters said, for the next batch's guess
                self._declined.update(to_lock, declined=common is None)
            if common is not None:
                if early is not None:  # its inserts are the events inserted, with the same ids
                    await batch_sql.write_common(conn, common, valid, guessed, preinserted=early)
                    return _Common(common, valid), early_at
                recorded_at = await batch_sql.write_common(conn, common, valid, guessed)
                if len(recorded_at) != len(valid):
                    raise _RetryBatch
                return _Common(common, valid), recorded_at
        if early is not None:  # not the common case after all: as if they had never been inserted
            await batch_sql.delete_preinserted(conn, early)
        plan = decide_batch(resolutions, reads, iter(event_ids), self._written)
        attempted.extend((n.customer_id, n.dedupe_key) for n in plan.notifications)
        recorded_at, written = await batch_sql.write_batch(conn, plan, guessed)
        announced.extend(written)
        if len(recorded_at) != len(plan.inserts):
            raise _RetryBatch
        await wallet_sql.write(conn, plan.wallet_writes)
        return plan, recorded_at


def _allowance_keys(valid: Sequence[Resolution], existing: dict[tuple[str, str], StoredEvent]) -> list[AllowanceKey]:
    """The allowance keys of a batch's events, each once (their grants and holds are read)."""
    return list(dict.fromkeys(allowance_key_for(r, existing) for r in valid))


async def _wallet_reads(
    conn: Connection, charged: Sequence[Resolution]
) -> tuple[dict[str, Wallet], dict[SpendKey, Spend]]:
    """The wallets of the batch's wallet-charged customers, locked, with their
    grants and priced quantities (metering.ledger.wallets.charging)."""
    terms = {r.spend_key: r.wallet for r in charged if r.wallet is not None}
    found = await wallet_sql.charging(conn, terms)
    return found.wallets, found.spends


def _answer(batch: list[_Group], results: Sequence[Written | BaseException]) -> None:
    """Answer each group of the batch once, with its events' results in order
    (the batch's results are its groups' events, group after group)."""
    assert len(results) == sum(len(group.events) for group in batch)
    start = 0
    for group in batch:
        end = start + len(group.events)
        if not group.future.done():  # a caller that went away meanwhile gets no answer
            group.future.set_result(list(results[start:end]))
        start = end


def _answer_common(batch: list[_Group], common: _Common, recorded_at: dict[UUID, datetime]) -> None:
    """Answer each group of a batch of the common case with its events' columns
    (the batch's events are its groups' events, group after group); a group
    that asked for none gets none (_decide_and_write took this way only
    when every group asked)."""
    plan, resolutions = common.plan, common.resolutions
    assert len(resolutions) == sum(len(group.events) for group in batch)
    times = [recorded_at[event_id] for event_id in plan.event_ids]
    start = 0
    for group in batch:
        end = start + len(group.events)
        if not group.future.done():
            group.future.set_result(recorded(plan, resolutions, times, start, end))
        start = end


def _fail(batch: list[_Group], exc: BaseException) -> None:
    """Every event of the batch is refused by the same error."""
    for group in batch:
        if not group.future.done():
            group.future.set_result([exc] * len(group.events))


class _DeclinedCounters:
    """Counters whose last preinsertable batch the common case declined once
    they were read (BatchWriter._declined). Bounded: past `capacity` it starts
    over (a batch then inserts early once more, and is deleted again)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._keys: set[CounterKey] = set()

    def any_of(self, keys: Collection[CounterKey]) -> bool:
        return bool(self._keys) and not self._keys.isdisjoint(keys)

    def update(self, keys: Collection[CounterKey], *, declined: bool) -> None:
        if declined:
            if len(self._keys) + len(keys) > self._capacity:
                self._keys.clear()
            self._keys.update(keys)
        elif self._keys:
            self._keys.difference_update(keys)


class WrittenKeys:
    """(customer, dedupe key) of notifications known to be in the outbox,
    because a transaction of this process that attempted them committed. Only
    saves building and re-inserting them: the outbox's unique key is what
    keeps a notification once. Bounded: past `capacity` it starts over."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._keys: set[tuple[str, str]] = set()

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, keys: Sequence[tuple[str, str]]) -> None:
        if len(self._keys) + len(keys) > self._capacity:
            self._keys.clear()
        self._keys.update(keys)
