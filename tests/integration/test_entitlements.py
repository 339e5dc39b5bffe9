"""Grants, reservations, batches, streams and voids, end to end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2

from metering.v1 import events_pb2, grants_pb2, ingest_pb2, metering_service_pb2_grpc, reservations_pb2, usage_pb2
from tests.support import (
    ServiceProcess,
    calls_across,
    commit,
    error_details,
    error_info,
    record,
    release,
    reserve,
    run_sql,
    stamp,
    violated_fields,
)

Stub = metering_service_pb2_grpc.MeteringServiceStub


def tokens(stub: Stub, customer: str) -> usage_pb2.Balance:
    request = usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug="tokens")
    return stub.CheckBalance(request, timeout=10).balances[0]


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    reason = error_details(caught.value).get("ErrorInfo")
    return caught.value.code(), reason.reason if reason is not None else ""  # type: ignore[attr-defined]


def grant(stub: Stub, customer: str, grant_id: str, quantity: str, **fields: Any) -> grants_pb2.GrantCreditsResponse:
    request = grants_pb2.GrantCreditsRequest(
        customer_id=customer, meter_slug="tokens", quantity=quantity, grant_id=grant_id, **fields
    )
    return stub.GrantCredits(request, timeout=10)


# -- grants -------------------------------------------------------------------


def test_a_grant_raises_the_allowance(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()  # tokens: hard limit 100
    response = grant(stub, customer, "g1", "50", reason="apology")
    assert not response.duplicate
    assert (response.grant.quantity, response.grant.remaining_quantity, response.grant.active) == ("50", "50", True)
    balance = tokens(stub, customer)
    assert (balance.granted, balance.available) == ("50", "150")
    assert record(stub, customer, "a", "150").balance.available == "0"
    assert refusal(lambda: record(stub, customer, "b", "1")) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LIMIT_EXCEEDED")
    assert grant(stub, customer, "g1", "50", reason="apology").duplicate
    code, reason = refusal(lambda: grant(stub, customer, "g1", "60", reason="apology"))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_CONFLICT")


def test_an_expired_grant_stops_counting_at_its_expiry_exactly(stub: Stub, new_customer: Callable[..., str]) -> None:
    expiry = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    just_before, just_at = expiry - timedelta(microseconds=1), expiry
    for moment, fits, too_much in ((just_before, "150", "150.000000001"), (just_at, "100", "100.000000001")):
        customer = new_customer()  # tokens: hard limit 100; the grant adds 50 until `expiry`
        grant(stub, customer, "g", "50", effective_time=stamp(expiry - timedelta(days=1)), expire_time=stamp(expiry))
        with pytest.raises(grpc.RpcError) as caught:
            record(stub, customer, "over", too_much, event_time=stamp(moment))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert record(stub, customer, "fits", fits, event_time=stamp(moment)).event.quantity == fits
    listed = stub.ListGrants(grants_pb2.ListGrantsRequest(customer_id=customer), timeout=10).grants
    assert listed == []  # expired grants are hidden unless asked for
    everything = stub.ListGrants(
        grants_pb2.ListGrantsRequest(customer_id=customer, include_expired=True), timeout=10
    ).grants
    assert [(g.grant_id, g.active, g.remaining_quantity) for g in everything] == [("g", False, "0")]


def test_usage_past_the_limit_draws_on_the_soonest_expiring_grant(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    soon = datetime.now(UTC) + timedelta(days=1)
    grant(stub, customer, "later", "50")
    grant(stub, customer, "sooner", "30", expire_time=stamp(soon))
    record(stub, customer, "use", "120")  # 20 past the limit of 100
    listed = stub.ListGrants(grants_pb2.ListGrantsRequest(customer_id=customer, meter_slug="tokens"), timeout=10)
    assert {g.grant_id: g.remaining_quantity for g in listed.grants} == {"sooner": "10", "later": "50"}


def test_grant_until_period_end(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    response = grant(stub, customer, "month", "10", expire_at_period_end=True)
    assert response.grant.expire_time == tokens(stub, customer).period_end_time


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"quantity": "0"}, "quantity"),
        ({"quantity": ""}, "quantity"),
        ({"grant_id": ""}, "grant_id"),
        ({"expire_at_period_end": True, "expire_time": Timestamp(seconds=2_000_000_000)}, "expire_time"),
        (
            {"effective_time": Timestamp(seconds=2_000_000_000), "expire_time": Timestamp(seconds=1_900_000_000)},
            "expire_time",
        ),
        ({"reason": "x" * 257}, "reason"),
    ],
)
def test_grant_validation(stub: Stub, new_customer: Callable[..., str], fields: dict[str, Any], field: str) -> None:
    request: dict[str, Any] = {"customer_id": new_customer(), "meter_slug": "tokens", "quantity": "5", "grant_id": "g"}
    request.update(fields)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GrantCredits(grants_pb2.GrantCreditsRequest(**request), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violated_fields(caught.value)


# -- reservations -------------------------------------------------------------


def test_reserve_then_commit_part(stub: Stub, new_customer: Callable[..., str], database_url: str) -> None:
    customer = new_customer()  # tokens: hard limit 100
    held = reserve(stub, customer, "job-1", "60")
    assert held.reservation.status == reservations_pb2.RESERVATION_STATUS_HELD
    assert (held.balance.reserved, held.balance.available) == ("60", "40")
    assert reserve(stub, customer, "job-1", "60").duplicate
    assert refusal(lambda: record(stub, customer, "other", "41"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    done = commit(stub, customer, "job-1", "45", properties={"model": "large"})
    assert done.event.transaction_id == "job-1"
    assert (done.event.quantity, done.reservation.committed_quantity) == ("45", "45")
    assert done.reservation.status == reservations_pb2.RESERVATION_STATUS_COMMITTED
    assert done.reservation.event_id == done.event.event_id
    assert (done.balance.used, done.balance.reserved, done.balance.available) == ("45", "0", "55")
    again = commit(stub, customer, "job-1", "45", properties={"model": "large"})
    assert again.duplicate and again.event.event_id == done.event.event_id
    assert refusal(lambda: commit(stub, customer, "job-1", "46")) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_CONFLICT",
    )
    assert refusal(lambda: release(stub, customer, "job-1")) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESERVATION_COMMITTED",
    )
    rows = run_sql(database_url, "SELECT count(*) FROM usage_events WHERE customer_id = $1", customer)
    assert rows[0][0] == 1


def test_release_and_its_refusals(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    reserve(stub, customer, "r", "30")
    released = release(stub, customer, "r")
    assert released.reservation.status == reservations_pb2.RESERVATION_STATUS_RELEASED
    assert (released.balance.reserved, released.balance.available) == ("0", "100")
    assert release(stub, customer, "r").reservation.status == reservations_pb2.RESERVATION_STATUS_RELEASED
    assert refusal(lambda: commit(stub, customer, "r")) == (grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_RELEASED")
    assert refusal(lambda: commit(stub, customer, "missing")) == (grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    reserve(stub, customer, "small", "5")
    code, _ = refusal(lambda: commit(stub, customer, "small", "5.1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "ttl",
    [Duration(seconds=0), Duration(seconds=86_401), Duration(seconds=-(10**12)), Duration(seconds=2**62)],
    ids=["zero", "over a day", "far negative", "beyond timedelta"],
)
def test_a_ttl_out_of_range_is_invalid(stub: Stub, new_customer: Callable[..., str], ttl: Duration) -> None:
    request = reservations_pb2.ReserveUsageRequest(
        customer_id=new_customer(), meter_slug="tokens", quantity="1", reservation_id="r", ttl=ttl
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.ReserveUsage(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ttl" in violated_fields(caught.value)


def test_an_expired_hold_frees_itself(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    reserve(stub, customer, "brief", "90", ttl=1)
    assert tokens(stub, customer).available == "10"
    time.sleep(1.2)
    assert tokens(stub, customer).available == "100"  # no job ran
    assert refusal(lambda: commit(stub, customer, "brief")) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESERVATION_EXPIRED",
    )
    assert release(stub, customer, "brief").reservation.status == reservations_pb2.RESERVATION_STATUS_EXPIRED
    assert record(stub, customer, "after", "100").balance.available == "0"


def test_reservation_refusals(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    assert refusal(lambda: reserve(stub, customer, "big", "101")) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "LIMIT_EXCEEDED",
    )
    record(stub, customer, "taken", "1")
    assert refusal(lambda: reserve(stub, customer, "taken", "1")) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_CONFLICT",
    )
    request = reservations_pb2.ReserveUsageRequest(
        customer_id=customer, meter_slug="peak", quantity="1", reservation_id="gauge"
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.ReserveUsage(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reserve(stub, customer, "dup", "5")
    assert refusal(lambda: reserve(stub, customer, "dup", "6")) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_CONFLICT",
    )


@pytest.fixture(scope="module")
def replica(database_url: str, service: ServiceProcess) -> Iterator[ServiceProcess]:
    other = ServiceProcess(database_url).start()
    yield other
    other.stop()


@pytest.mark.slow  # a second service of its own (the `replica` fixture)
def test_64_concurrent_reservations_never_over_commit(
    service: ServiceProcess, replica: ServiceProcess, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer()  # tokens: hard limit 100; 64 x 3 asked, 33 fit
    requests = [
        reservations_pb2.ReserveUsageRequest(
            customer_id=customer, meter_slug="tokens", quantity="3", reservation_id=f"r{i}"
        )
        for i in range(64)
    ]
    codes = calls_across([service, replica], "ReserveUsage", requests)
    assert codes.count(grpc.StatusCode.OK) == 33
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 31
    held = run_sql(database_url, "SELECT sum(quantity) FROM reservations WHERE customer_id = $1", customer)
    assert held[0][0] == 99
    with grpc.insecure_channel(service.target) as channel:
        assert tokens(metering_service_pb2_grpc.MeteringServiceStub(channel), customer).available == "1"


def test_a_commit_racing_the_expiry_ends_in_exactly_one_outcome(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer(plan="open")
    trials = 24
    for i in range(trials):
        reserve(stub, customer, f"race-{i}", "1", ttl=1)
    started = time.monotonic()
    outcomes: dict[int, str] = {}

    def attempt(i: int) -> None:
        # Spread the commits from 0.85 s to 1.15 s after the holds were taken.
        time.sleep(max(0.0, started + 0.85 + 0.3 * i / trials - time.monotonic()))
        try:
            commit(stub, customer, f"race-{i}")
            outcomes[i] = "committed"
        except grpc.RpcError as error:
            info = error_info(error)
            outcomes[i] = info.reason

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(trials)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(outcomes.values()) <= {"committed", "RESERVATION_EXPIRED"}, outcomes
    rows = run_sql(
        database_url,
        "SELECT r.reservation_id, r.status, e.event_id IS NOT NULL AS recorded FROM reservations r "
        "LEFT JOIN usage_events e ON e.customer_id = r.customer_id AND e.transaction_id = r.reservation_id "
        "WHERE r.customer_id = $1",
        customer,
    )
    for row in rows:
        i = int(row["reservation_id"].split("-")[1])
        committed = outcomes[i] == "committed"
        # The answer, the reservation and the ledger agree, whichever won.
        assert row["recorded"] == committed
        assert (row["status"] == "committed") == committed
    used = run_sql(database_url, "SELECT coalesce(sum(used), 0) FROM meter_counters WHERE customer_id = $1", customer)
    assert used[0][0] == sum(1 for o in outcomes.values() if o == "committed")


# -- batches and streams ------------------------------------------------------


def event(customer: str, txn: str, quantity: str = "1", **fields: Any) -> usage_pb2.RecordUsageRequest:
    return usage_pb2.RecordUsageRequest(
        customer_id=customer, meter_slug="tokens", quantity=quantity, transaction_id=txn, **fields
    )


def test_a_batch_answers_each_event_and_writes_only_the_valid_ones(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer()  # tokens: hard limit 100
    record(stub, customer, "earlier", "10")
    batch = [
        event(customer, "v1", "20"),  # recorded
        event(customer, "earlier", "10"),  # duplicate of an earlier call
        event(customer, "v2", "80"),  # over the limit: 30 used, 70 left
        event(customer, "bad", "-5"),  # malformed
        event(customer, "v3", "70"),  # exactly the rest
        event(customer, "v3", "70"),  # the same id again in the batch: duplicate
        event(customer, "v1", "21"),  # the same id, another payload: conflict
        event("nobody", "x"),  # unknown customer
    ]
    results = stub.RecordUsageBatch(ingest_pb2.RecordUsageBatchRequest(events=batch), timeout=30).results
    assert [r.index for r in results] == list(range(len(batch)))
    assert [r.status.code for r in results] == [
        code_pb2.OK,
        code_pb2.OK,
        code_pb2.RESOURCE_EXHAUSTED,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.OK,
        code_pb2.OK,
        code_pb2.ALREADY_EXISTS,
        code_pb2.NOT_FOUND,
    ]
    assert [r.response.duplicate for r in results if r.status.code == code_pb2.OK] == [False, True, False, True]
    # A refused event carries the same google.rpc details RecordUsage would send.
    bad_request = error_details_pb2.BadRequest()
    [packed] = [d for d in results[3].status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
    packed.Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["quantity"]
    limit_info = error_details_pb2.ErrorInfo()
    [packed] = [d for d in results[2].status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    packed.Unpack(limit_info)
    assert (limit_info.reason, limit_info.metadata["available"]) == ("LIMIT_EXCEEDED", "70")
    # A conflict inside the batch names the event the batch recorded under that id.
    conflict_info = error_details_pb2.ErrorInfo()
    [packed] = [d for d in results[6].status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    packed.Unpack(conflict_info)
    assert conflict_info.reason == "TRANSACTION_ID_CONFLICT"
    assert conflict_info.metadata["original_event_id"] == results[0].response.event.event_id
    rows = run_sql(
        database_url, "SELECT transaction_id FROM usage_events WHERE customer_id = $1 ORDER BY transaction_id", customer
    )
    assert [r["transaction_id"] for r in rows] == ["earlier", "v1", "v3"]
    assert tokens(stub, customer).used == "100"


def test_a_batch_over_the_maximum_is_refused(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer(plan="open")
    batch = [event(customer, f"t{i}") for i in range(1001)]
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecordUsageBatch(ingest_pb2.RecordUsageBatchRequest(events=batch), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    results = stub.RecordUsageBatch(ingest_pb2.RecordUsageBatchRequest(events=batch[:1000]), timeout=60).results
    assert all(r.status.code == code_pb2.OK for r in results)
    assert tokens(stub, customer).used == "1000"


def test_a_stream_summarises_and_lists_its_failures(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer(plan="open")
    messages = [
        ingest_pb2.RecordUsageStreamRequest(events=[event(customer, "s1"), event(customer, "s2")]),
        ingest_pb2.RecordUsageStreamRequest(events=[event(customer, "s1"), event(customer, "s3", "x")]),
        ingest_pb2.RecordUsageStreamRequest(events=[event(customer, "s4", "2.5")]),
    ]
    summary = stub.RecordUsageStream(iter(messages), timeout=30)
    assert (summary.recorded_count, summary.duplicate_count, summary.failed_count) == (3, 1, 1)
    assert [(f.index, f.status.code) for f in summary.failures] == [(3, code_pb2.INVALID_ARGUMENT)]
    assert tokens(stub, customer).used == "4.5"


def test_a_stream_sent_ahead_is_decided_in_stream_order(stub: Stub, new_customer: Callable[..., str]) -> None:
    # 40 messages sent at once: the service writes those that arrive while one
    # is written as one group, and every event is still decided in stream order.
    customer = new_customer()  # tokens: hard limit 100
    messages = [
        ingest_pb2.RecordUsageStreamRequest(events=[event(customer, f"m{i}", "3"), event(customer, f"m{i - 1}", "3")])
        for i in range(1, 41)
    ]
    summary = stub.RecordUsageStream(iter(messages), timeout=30)
    # Message i holds events 2(i-1) and 2(i-1)+1. m0..m32 fit (99 of 100); each
    # later replay of a recorded id is a duplicate; m33 is refused (index 64),
    # and from message 34 on both events are refused: the new one for the
    # limit, and the replay of one that was refused (nothing was recorded).
    assert [f.index for f in summary.failures] == [64, *range(66, 80)]
    assert all(f.status.code == code_pb2.RESOURCE_EXHAUSTED for f in summary.failures)
    assert (summary.recorded_count, summary.duplicate_count, summary.failed_count) == (33, 32, 15)
    assert tokens(stub, customer).used == "99"


def test_a_stream_message_too_big_is_refused_after_what_came_before(
    stub: Stub, new_customer: Callable[..., str]
) -> None:
    customer = new_customer(plan="open")
    messages = [ingest_pb2.RecordUsageStreamRequest(events=[event(customer, f"b{i}")]) for i in range(20)]
    messages.append(ingest_pb2.RecordUsageStreamRequest(events=[event(customer, f"x{i}") for i in range(1001)]))
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecordUsageStream(iter(messages), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert tokens(stub, customer).used == "20"


# -- voids ----------------------------------------------------------------------


def void(stub: Stub, customer: str, txn: str, reason: str = "duplicate upstream") -> events_pb2.VoidUsageResponse:
    return stub.VoidUsage(
        events_pb2.VoidUsageRequest(customer_id=customer, transaction_id=txn, reason=reason), timeout=10
    )


def test_a_void_is_a_compensating_entry(stub: Stub, new_customer: Callable[..., str], database_url: str) -> None:
    customer = new_customer()  # tokens: hard limit 100
    record(stub, customer, "keep", "30")
    record(stub, customer, "oops", "70", properties={"region": "eu"})
    voided = void(stub, customer, "oops")
    assert not voided.duplicate
    assert voided.event.void_reason == "duplicate upstream" and voided.event.HasField("void_time")
    assert (voided.balance.used, voided.balance.available) == ("30", "70")
    assert void(stub, customer, "oops").duplicate
    # The room is usable again; the replay of the voided id stays a duplicate.
    assert record(stub, customer, "more", "70").balance.used == "100"
    replay = record(stub, customer, "oops", "70", properties={"region": "eu"})
    assert replay.duplicate and replay.event.HasField("void_time")
    usage = stub.GetUsage(usage_pb2.GetUsageRequest(customer_id=customer, meter_slugs=["tokens"]), timeout=10)
    assert [(r.value, r.event_count) for r in usage.rows] == [("100", 2)]
    listed = stub.ListUsageEvents(events_pb2.ListUsageEventsRequest(customer_id=customer), timeout=10).events
    assert {e.transaction_id: e.HasField("void_time") for e in listed} == {"keep": False, "oops": True, "more": False}
    rows = run_sql(database_url, "SELECT count(*) FROM usage_events WHERE customer_id = $1", customer)
    assert rows[0][0] == 3  # nothing deleted


def test_voids_rebuild_every_aggregation(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer(plan="open")
    record(stub, customer, "p1", "4", meter="peak")
    record(stub, customer, "p2", "9", meter="peak")
    assert void(stub, customer, "p2").balance.used == "4"
    record(stub, customer, "u1", "", meter="users", properties={"user_id": "ann"})
    record(stub, customer, "u2", "", meter="users", properties={"user_id": "ann"})
    record(stub, customer, "u3", "", meter="users", properties={"user_id": "bob"})
    assert void(stub, customer, "u1").balance.used == "2"  # ann still counted by u2
    assert void(stub, customer, "u2").balance.used == "1"
    record(stub, customer, "u4", "", meter="users", properties={"user_id": "ann"})
    assert record(stub, customer, "u5", "", meter="users", properties={"user_id": "ann"}).balance.used == "2"


def test_void_refusals(stub: Stub, new_customer: Callable[..., str]) -> None:
    anchor = datetime.now(UTC) - timedelta(days=45)
    customer = new_customer(anchor=anchor.isoformat().replace("+00:00", "Z"))
    record(stub, customer, "old", "1", event_time=stamp(anchor + timedelta(days=5)))
    # The period has ended but its invoice is still a draft (the session's
    # service finalizes nothing): a void still counts. Once the invoice is
    # finalized it is refused PERIOD_CLOSED (tests/integration/test_invoices.py).
    assert void(stub, customer, "old").event.HasField("void_time")
    assert refusal(lambda: void(stub, customer, "never")) == (grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND")
    code, _ = refusal(lambda: void(stub, customer, "old", reason=""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_answers_about_a_backdated_event_give_its_own_period_and_grants(
    stub: Stub, new_customer: Callable[..., str]
) -> None:
    """Found by the model (tests/integration/test_model.py): a replay without
    event_time of an event of the previous period, and a void of it, answered
    the previous period's usage with the current period's holds and the grants
    active now. Every answer about the event now gives its period as its
    first answer did: the grants active at its time, the holds of its period."""
    anchor = datetime.now(UTC) - timedelta(days=45)
    customer = new_customer(anchor=anchor.isoformat().replace("+00:00", "Z"))  # tokens: hard limit 100
    first = record(stub, customer, "old", "30", event_time=stamp(anchor + timedelta(days=5)))
    assert (first.balance.used, first.balance.granted, first.balance.reserved) == ("30", "0", "0")
    grant(stub, customer, "now", "50")  # active from now: not at the old event's time
    reserve(stub, customer, "job", "20")  # held in the current period
    replay = record(stub, customer, "old", "30")  # a retry that omits the time is the same event
    assert replay.duplicate
    assert replay.balance.period_start_time == first.balance.period_start_time
    assert (replay.balance.used, replay.balance.granted, replay.balance.reserved) == ("30", "0", "0")
    assert replay.balance.available == "70"
    voided = void(stub, customer, "old")
    assert voided.balance.period_start_time == first.balance.period_start_time
    assert (voided.balance.used, voided.balance.granted, voided.balance.reserved) == ("0", "0", "0")
    now = tokens(stub, customer)  # the current period: the grant and the hold count
    assert (now.used, now.granted, now.reserved, now.available) == ("0", "50", "20", "130")
