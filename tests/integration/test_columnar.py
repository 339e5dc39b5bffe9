"""RecordUsageBatch and the stream through the common-case decision (metering.domain.columns):
the same answers and the same ledger as the typed path."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from metering.v1 import ingest_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import audit, record, stamp

Stub = metering_service_pb2_grpc.MeteringServiceStub

# `limited`'s tokens: a hard limit of 100, threshold 80: these 37 units per
# customer stay below it, with a percentage that moves from event to event.
QUANTITIES = ["1", "2.5", "3", "10", "0.5", "20"]


def batch(customers: list[str], at: datetime, properties: dict[str, str]) -> list[usage_pb2.RecordUsageRequest]:
    return [
        usage_pb2.RecordUsageRequest(
            customer_id=customers[i % len(customers)],
            meter_slug="tokens",
            quantity=quantity,
            transaction_id=f"c-{i}",
            event_time=stamp(at),
            properties=properties if i % 3 == 0 else {},
        )
        for i, quantity in enumerate(q for q in QUANTITIES for _ in range(len(customers)))
    ]


def test_a_common_batch_answers_as_the_typed_path_does(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    at = datetime.now(UTC) - timedelta(minutes=2)
    # One anchor for all: their balances' periods are the same.
    anchor = stamp(datetime.now(UTC) - timedelta(days=3651)).ToJsonString()
    common = [new_customer("limited", anchor) for _ in range(2)]
    typed = [new_customer("limited", anchor) for _ in range(2)]
    # A replay of an event of another meter makes the second batch the typed
    # path's (decide_batch: a recorded transaction id), without touching tokens.
    replayed = record(stub, typed[0], "other", "1", meter="peak")
    replay = usage_pb2.RecordUsageRequest(customer_id=typed[0], meter_slug="peak", quantity="1", transaction_id="other")
    properties = {"region": "eu"}
    first = stub.RecordUsageBatch(ingest_pb2.RecordUsageBatchRequest(events=batch(common, at, properties)), timeout=10)
    second = stub.RecordUsageBatch(
        ingest_pb2.RecordUsageBatchRequest(events=[*batch(typed, at, properties), replay]), timeout=10
    )
    assert len(second.results) == len(first.results) + 1
    assert second.results[-1].response.duplicate
    assert second.results[-1].response.event.event_id == replayed.event.event_id
    for mine, theirs in zip(first.results, second.results, strict=False):
        assert mine.index == theirs.index and mine.status == theirs.status
        a, b = mine.response, theirs.response
        assert not a.duplicate and not b.duplicate
        assert a.balance == b.balance
        assert a.overage_quantity == b.overage_quantity == "0"
        assert len(a.event.event_id) == len(b.event.event_id) == 36
        assert a.event.HasField("recorded_time") and a.event.recorded_time.seconds >= b.event.recorded_time.seconds - 60
        for name in ("meter_slug", "price_slug", "quantity", "event_time", "properties"):
            assert getattr(a.event, name) == getattr(b.event, name), name
        assert a.event.transaction_id == b.event.transaction_id
        assert common.index(a.event.customer_id) == typed.index(b.event.customer_id)
    last = first.results[-1].response.balance
    assert (last.used, last.percent_used, last.available) == ("37", "37.00", "63")
    check = stub.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id=common[0], meter_slug="tokens"), timeout=10)
    assert check.balances[0].used == "37"
    # The replay of a common batch is the typed path's: every event a duplicate of its original.
    again = stub.RecordUsageBatch(ingest_pb2.RecordUsageBatchRequest(events=batch(common, at, properties)), timeout=10)
    for mine, replay_result in zip(first.results, again.results, strict=True):
        assert replay_result.response.duplicate
        assert replay_result.response.event == mine.response.event
    assert audit(database_url, common + typed).ok


def test_a_stream_of_common_batches_counts_every_event_once(stub: Stub, new_customer: Callable[..., str]) -> None:
    customers = [new_customer("open"), new_customer("open")]
    at = datetime.now(UTC) - timedelta(minutes=2)
    events = batch(customers, at, {})
    bad = usage_pb2.RecordUsageRequest(customer_id=customers[0], meter_slug="tokens", quantity="-1", transaction_id="x")
    messages = [
        ingest_pb2.RecordUsageStreamRequest(events=events[:5]),
        ingest_pb2.RecordUsageStreamRequest(events=[bad, *events[5:]]),
    ]
    summary = stub.RecordUsageStream(iter(messages), timeout=10)
    assert (summary.recorded_count, summary.duplicate_count, summary.failed_count) == (len(events), 0, 1)
    assert [failure.index for failure in summary.failures] == [5]
    again = stub.RecordUsageStream(iter(messages), timeout=10)
    assert (again.recorded_count, again.duplicate_count, again.failed_count) == (0, len(events), 1)
    for customer in customers:
        check = stub.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug="tokens"), timeout=10)
        assert check.balances[0].used == "37"
