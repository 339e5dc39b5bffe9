"""One customer's notifications arrive in the order their transactions
committed, by webhook and by the watch stream: real `metering serve` replicas,
real PostgreSQL, a real HTTP receiver (tests/receiver.py).

Commit order is what a reader of the database sees: a poller reads the
customer's notifications over and over on a connection of its own and notes
the first poll each became visible in. A notification visible in an earlier
poll than another committed before it, and must be delivered before it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest

from metering.v1 import customer_pb2, ingest_pb2, metering_service_pb2_grpc, notifications_pb2, usage_pb2
from tests.receiver import Receiver, webhook_receiver
from tests.support import (
    ServiceProcess,
    calls_across,
    eventually,
    hold_counter,
    run_sql,
    service_waits_on_lock,
    stamp,
    wait_for,
)

# Slow tier: replicas of their own delivering to a webhook receiver.
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub
TYPES = ["usage.threshold_crossed", "usage.limit_rejected", "invoice.finalized"]


@pytest.fixture
def database(make_database: Callable[[], str]) -> str:
    return make_database()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as running:
        yield running


@pytest.fixture
def replicas(database: str, receiver: Receiver, tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    """Two replicas with two writer workers each (four write transactions in
    flight at once), delivering every type to the receiver."""
    path = tmp_path / "webhooks.toml"
    types = ", ".join(f'"{t}"' for t in TYPES)
    path.write_text(f'[endpoints.order]\nurl = "{receiver.url}"\nsecrets = ["whsec_{"a" * 44}"]\ntypes = [{types}]\n')
    env = {
        "METERING_WEBHOOKS_FILE": str(path),
        "METERING_NOTIFICATION_POLL": "200ms",
        "METERING_WRITER_WORKERS": "2",
    }
    started: list[ServiceProcess] = []
    try:
        for _ in range(2):
            started.append(ServiceProcess(database, extra_env=env).start())
        # The endpoint's scan starts "from now", at its first lease.
        assert wait_for(lambda: run_sql(database, "SELECT 1 FROM webhook_cursors"), timeout=30)
        yield started
    finally:
        for process in started:
            process.stop()


def new_customer(target: str, anchor: datetime | None = None) -> str:
    customer_id = f"order-{uuid.uuid4().hex[:12]}"
    request = customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug="limited")
    if anchor is not None:
        request.billing_anchor_time.CopyFrom(stamp(anchor))
    with grpc.insecure_channel(target) as channel:
        Stub(channel).UpsertCustomer(request, timeout=10)
    return customer_id


def calls_request(customer_id: str, transaction_id: str, at: datetime | None = None) -> usage_pb2.RecordUsageRequest:
    """One event of the test catalog's `calls` meter (limit 5 a day, hard)."""
    request = usage_pb2.RecordUsageRequest(
        customer_id=customer_id, meter_slug="calls", quantity="1", transaction_id=transaction_id
    )
    if at is not None:
        request.event_time.CopyFrom(stamp(at))
    return request


class Watch:
    """WatchNotifications of one customer in a thread: from now, or from a cursor."""

    def __init__(self, target: str, customer_id: str, cursor: str = "", count: int = 0) -> None:
        self.seen: list[notifications_pb2.Notification] = []
        self._request = notifications_pb2.WatchNotificationsRequest(cursor=cursor, customer_id=customer_id)
        self._target = target
        self._count = count  # stop after this many (0: until closed)
        self._call: grpc.CallIterator[notifications_pb2.WatchNotificationsResponse] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(10)

    def _run(self) -> None:
        with grpc.insecure_channel(self._target) as channel:
            call = Stub(channel).WatchNotifications(self._request, timeout=120)
            self._call = call
            self._started.set()
            try:
                for message in call:
                    self.seen.append(message.notification)
                    if len(self.seen) == self._count:
                        break
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.CANCELLED:
                    raise

    def close(self) -> list[notifications_pb2.Notification]:
        assert self._call is not None
        self._call.cancel()  # type: ignore[no-untyped-call]
        self._thread.join(10)
        return self.seen

    def join(self, timeout: float) -> list[notifications_pb2.Notification]:
        self._thread.join(timeout)
        return self.seen


def marker(target: str, customer_id: str, receiver: Receiver) -> tuple[str, str]:
    """A first notification of the customer (its `peak` meter at 80%), as the
    receiver got it: its id and its cursor. A watch from that cursor sees
    everything the test writes next, with no race against its start."""
    with grpc.insecure_channel(target) as channel:
        Stub(channel).RecordUsage(
            usage_pb2.RecordUsageRequest(customer_id=customer_id, meter_slug="peak", quantity="8", transaction_id="m"),
            timeout=10,
        )
    assert receiver.wait(lambda r: len(delivered_ids(r, customer_id)) == 1, timeout=30)
    [received] = [r for r in receiver.delivered() if r.notification["customerId"] == customer_id]
    return received.webhook_id, str(received.notification["cursor"])


class Poller:
    """Reads the customer's notifications again and again: the poll each first
    became visible in is the order their transactions committed (ties: the
    same poll)."""

    def __init__(self, database: str, customer_id: str, expected: int) -> None:
        self.first_seen: dict[str, int] = {}
        self.writer_xid: dict[str, int] = {}  # xmin: the id of the transaction that wrote it
        self._database = database
        self._customer_id = customer_id
        self._expected = expected
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        conn = await asyncpg.connect(self._database)
        try:
            poll = 0
            while len(self.first_seen) < self._expected and not self._stop.is_set():
                rows = await conn.fetch(
                    "SELECT notification_id::text AS id, xmin::text::bigint AS xid FROM notifications "
                    "WHERE customer_id = $1",
                    self._customer_id,
                )
                for row in rows:
                    if row["id"] not in self.first_seen:
                        self.first_seen[row["id"]] = poll
                        self.writer_xid[row["id"]] = row["xid"]
                poll += 1
        finally:
            await conn.close()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        self._stop.set()
        return len(self.first_seen) == self._expected

    def inverted_pairs(self) -> int:
        """Pairs whose writer started first (smaller transaction id) but whose
        commit became visible strictly later: what ordering by writer id
        would have delivered out of commit order."""
        ids = list(self.first_seen)
        return sum(
            1
            for a in ids
            for b in ids
            if self.writer_xid[a] < self.writer_xid[b] and self.first_seen[a] > self.first_seen[b]
        )

    def out_of_commit_order(self, delivered: list[str]) -> list[tuple[str, str]]:
        """Consecutive deliveries where the later one committed strictly earlier."""
        return [(a, b) for a, b in itertools.pairwise(delivered) if self.first_seen[a] > self.first_seen[b]]


def delivered_ids(receiver: Receiver, customer_id: str) -> list[str]:
    return [r.webhook_id for r in receiver.delivered() if r.notification["customerId"] == customer_id]


def test_a_transaction_that_commits_later_is_delivered_later_though_it_started_first(
    replicas: list[ServiceProcess], database: str, receiver: Receiver
) -> None:
    first, second = replicas
    customer_id = new_customer(first.target)
    marked, cursor = marker(first.target, customer_id, receiver)
    watch = Watch(first.target, customer_id, cursor=cursor, count=2)

    async def scenario() -> None:
        conn = await asyncpg.connect(database)
        try:
            with grpc.insecure_channel(first.target) as channel_1, grpc.insecure_channel(second.target) as channel_2:
                # The tokens counter exists; the test holds it.
                Stub(channel_1).RecordUsage(
                    usage_pb2.RecordUsageRequest(
                        customer_id=customer_id, meter_slug="tokens", quantity="1", transaction_id="t0"
                    ),
                    timeout=10,
                )
                held = await hold_counter(conn, customer_id)
                # Replica 1's transaction starts (it share-locks the customer:
                # it has its transaction id) and waits on the counter: 86 of 100
                # tokens will cross 80%.
                tokens = Stub(channel_1).RecordUsage.future(
                    usage_pb2.RecordUsageRequest(
                        customer_id=customer_id, meter_slug="tokens", quantity="85", transaction_id="t1"
                    ),
                    timeout=60,
                )
                assert await eventually(lambda: service_waits_on_lock(conn), 10), "the writer never reached the lock"
                # Replica 2's transaction starts after it and commits first:
                # 4 of 5 calls cross 80%.
                batch = ingest_pb2.RecordUsageBatchRequest(
                    events=[calls_request(customer_id, f"c{i}") for i in range(4)]
                )
                answer = Stub(channel_2).RecordUsageBatch(batch, timeout=10)
                assert all(r.status.code == 0 for r in answer.results)
                await held.rollback()
                tokens.result()
        finally:
            await conn.close()

    asyncio.run(scenario())
    rows = run_sql(
        database,
        "SELECT notification_id::text AS id, payload->>'meter_slug' AS meter, xmin::text::bigint AS xid "
        "FROM notifications WHERE customer_id = $1 AND notification_id <> $2::uuid",
        customer_id,
        marked,
    )
    by_meter = {row["meter"]: row for row in rows}
    assert set(by_meter) == {"tokens", "calls"}
    # The precondition: the tokens threshold's writer has the smaller
    # transaction id, though its transaction committed second.
    assert by_meter["tokens"]["xid"] < by_meter["calls"]["xid"]
    commit_order = [by_meter["calls"]["id"], by_meter["tokens"]["id"]]

    assert receiver.wait(lambda r: len(delivered_ids(r, customer_id)) == 3, timeout=30)
    assert delivered_ids(receiver, customer_id) == [marked, *commit_order]
    streamed = watch.join(30)
    assert [n.id for n in streamed] == commit_order
    # Outbox order agrees: what a cursor resumes from.
    stored = run_sql(
        database,
        "SELECT notification_id::text AS id FROM notifications WHERE customer_id = $1 ORDER BY txid, seq",
        customer_id,
    )
    assert [row["id"] for row in stored] == [marked, *commit_order]


DAYS = 40  # periods of the daily `calls` meter, 3 notifications each (80%, 100%, the refusal)
EVENTS_PER_DAY = 6
ROUNDS = 10  # at most: a round whose transactions happened not to commit out of writer-id order is run again


def race(replicas: list[ServiceProcess], database: str, receiver: Receiver, seed: int) -> int:
    """One round of the race for a new customer; returns how many pairs of its
    notifications committed out of writer-id order (Poller.inverted_pairs)."""
    first, second = replicas
    now = datetime.now(UTC).replace(microsecond=0)
    customer_id = new_customer(first.target, anchor=now - timedelta(days=DAYS + 2))
    expected = 3 * DAYS
    marked, cursor = marker(first.target, customer_id, receiver)
    head = Watch(second.target, customer_id, cursor=cursor, count=expected // 2)
    poller = Poller(database, customer_id, expected + 1)
    days = [now - timedelta(days=d, hours=1) for d in range(1, DAYS + 1)]
    requests = [
        calls_request(customer_id, f"d{d}-e{e}", at) for d, at in enumerate(days) for e in range(EVENTS_PER_DAY)
    ]
    random.Random(seed).shuffle(requests)
    codes = calls_across(replicas, "RecordUsage", requests)
    assert codes.count(grpc.StatusCode.OK) == 5 * DAYS
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == DAYS
    assert poller.join(60), "not every notification became visible"

    # The watch: half of them from the marker's cursor, then the rest resumed
    # from the last cursor received, on the other replica.
    streamed = head.join(60)
    assert len(streamed) == expected // 2
    rest = Watch(first.target, customer_id, cursor=streamed[-1].cursor, count=expected - len(streamed))
    streamed += rest.join(60)
    streamed_ids = [n.id for n in streamed]
    assert len(streamed_ids) == expected and len(set(streamed_ids)) == expected  # none skipped or repeated
    assert marked not in streamed_ids
    assert poller.out_of_commit_order(streamed_ids) == []

    assert receiver.wait(lambda r: len(delivered_ids(r, customer_id)) == expected + 1, timeout=60)
    marked_first, *webhooks = delivered_ids(receiver, customer_id)
    assert marked_first == marked and len(set(webhooks)) == expected
    assert poller.out_of_commit_order(webhooks) == []
    return poller.inverted_pairs()


def test_racing_writers_deliver_each_customers_notifications_in_commit_order(
    replicas: list[ServiceProcess], database: str, receiver: Receiver
) -> None:
    """Hundreds of concurrent RecordUsage calls for one customer over two
    replicas (four write transactions in flight), each daily period's events
    crossing 80% and 100% and then refused: the webhook receiver and the watch
    stream (resumed from a cursor halfway) get the customer's notifications
    in the order their transactions committed."""
    inverted = 0
    rounds = 0
    while inverted == 0 and rounds < ROUNDS:
        rounds += 1
        inverted = race(replicas, database, receiver, seed=rounds)
    # The race raced: some transaction committed after one that started after
    # it (ordered by writer id, those pairs would have arrived out of order).
    assert inverted > 0, f"no transaction committed out of writer-id order in {rounds} rounds"
