"""RecordUsage against a real service and database: exactly once, limits, prices."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from metering.v1 import billing_pb2, events_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import error_details, error_info, record, run_sql, stamp

Stub = metering_service_pb2_grpc.MeteringServiceStub


def ledger_rows(database_url: str, customer: str) -> int:
    return int(run_sql(database_url, "SELECT count(*) FROM usage_events WHERE customer_id = $1", customer)[0][0])


# -- exactly once ---------------------------------------------------------------


def test_replay_with_same_payload_returns_the_original_event(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer()
    at = stamp(datetime.now(UTC) - timedelta(minutes=1))
    first = record(stub, customer, "txn-1", "7", event_time=at, properties={"region": "eu"})
    again = record(stub, customer, "txn-1", "7", event_time=at, properties={"region": "eu"})
    assert not first.duplicate
    assert again.duplicate
    assert again.event.event_id == first.event.event_id
    assert again.event.recorded_time == first.event.recorded_time
    assert again.overage_quantity == "0"
    assert again.balance.used == "7"
    assert ledger_rows(database_url, customer) == 1


def test_replay_without_timestamp_is_still_the_same_event(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer()
    at = stamp(datetime.now(UTC) - timedelta(minutes=2))
    first = record(stub, customer, "txn-explicit", "3", event_time=at)
    replay = record(stub, customer, "txn-explicit", "3")  # the retry lost the timestamp
    assert replay.duplicate
    assert replay.event.event_id == first.event.event_id
    assert replay.event.event_time == at

    server_timed = record(stub, customer, "txn-server-time", "2")
    later = record(stub, customer, "txn-server-time", "2")
    assert later.duplicate
    assert later.event.event_id == server_timed.event.event_id
    assert later.event.event_time == server_timed.event.event_time
    assert ledger_rows(database_url, customer) == 2


def test_equal_decimals_are_the_same_payload(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    first = record(stub, customer, "txn-dec", "1.50")
    assert first.event.quantity == "1.5"
    assert record(stub, customer, "txn-dec", "1.5000").duplicate


@pytest.mark.parametrize(
    ("change", "conflicting"),
    [
        ({"quantity": "8"}, "quantity"),
        ({"meter": "peak"}, "meter_slug"),
        ({"properties": {"region": "us"}}, "properties"),
        ({"properties": {}}, "properties"),
        ({"event_time_shift": timedelta(seconds=1)}, "event_time"),
    ],
)
def test_replay_with_a_different_payload_is_already_exists(
    stub: Stub, new_customer: Callable[..., str], database_url: str, change: dict[str, object], conflicting: str
) -> None:
    customer = new_customer()
    moment = datetime.now(UTC) - timedelta(minutes=1)
    original = record(stub, customer, "txn-x", "7", event_time=stamp(moment), properties={"region": "eu"})
    replay: dict[str, object] = {
        "quantity": "7",
        "meter": "tokens",
        "event_time": stamp(moment + change.pop("event_time_shift", timedelta(0))),  # type: ignore[operator]
        "properties": {"region": "eu"},
    }
    replay.update(change)
    with pytest.raises(grpc.RpcError) as caught:
        record(stub, customer, "txn-x", **replay)  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(caught.value)
    assert info.reason == "TRANSACTION_ID_CONFLICT"
    assert info.domain == "metering.v1"
    assert conflicting in info.metadata["conflicting_fields"].split(",")
    assert info.metadata["original_event_id"] == original.event.event_id
    assert ledger_rows(database_url, customer) == 1
    used = run_sql(database_url, "SELECT sum(used) FROM meter_counters WHERE customer_id = $1", customer)[0][0]
    assert used == 7


@pytest.mark.parametrize(
    ("shift", "new_id_refusal"),
    [
        # Before the customer's first period (its anchor is a day back).
        (timedelta(days=2), (grpc.StatusCode.FAILED_PRECONDITION, "BEFORE_FIRST_PERIOD")),
        # Older than the test service's backfill window (3650 days) too.
        (timedelta(days=3700), (grpc.StatusCode.INVALID_ARGUMENT, None)),
    ],
    ids=["before_first_period", "older_than_the_backfill_window"],
)
def test_a_reused_id_is_judged_before_the_time_policy(
    stub: Stub,
    new_customer: Callable[..., str],
    database_url: str,
    shift: timedelta,
    new_id_refusal: tuple[grpc.StatusCode, str | None],
) -> None:
    now = datetime.now(UTC)
    customer = new_customer(anchor=(now - timedelta(days=1)).isoformat().replace("+00:00", "Z"))
    moment = now - timedelta(minutes=1)
    original = record(stub, customer, "txn-r", "7", event_time=stamp(moment))
    earlier = stamp(moment - shift)
    # A replay reusing the id with an earlier event_time: a conflict, not the refusal of its time.
    with pytest.raises(grpc.RpcError) as caught:
        record(stub, customer, "txn-r", "7", event_time=earlier)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(caught.value)
    assert (info.reason, info.metadata["conflicting_fields"]) == ("TRANSACTION_ID_CONFLICT", "event_time")
    assert info.metadata["original_event_id"] == original.event.event_id
    # The exact replay is still a duplicate; a new id at that time gets the time's refusal.
    assert record(stub, customer, "txn-r", "7", event_time=stamp(moment)).duplicate
    with pytest.raises(grpc.RpcError) as refused:
        record(stub, customer, "txn-new", "7", event_time=earlier)
    code, reason = new_id_refusal
    assert refused.value.code() == code
    if reason is not None:
        assert error_info(refused.value).reason == reason
    assert ledger_rows(database_url, customer) == 1


def test_an_event_a_little_before_a_new_customers_anchor_counts_in_its_first_period(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    # A customer created 30 s ago (its anchor then), an event stamped 60 s
    # before that: within METERING_ANCHOR_SKEW_TOLERANCE (5 minutes).
    now = datetime.now(UTC).replace(microsecond=0)
    anchor = now - timedelta(seconds=30)
    customer = new_customer(anchor=anchor.isoformat().replace("+00:00", "Z"))
    early = anchor - timedelta(seconds=60)
    recorded = record(stub, customer, "early", "7", event_time=stamp(early))
    assert not recorded.duplicate
    assert recorded.event.event_time == stamp(early)  # stored with its own time
    assert recorded.balance.used == "7"
    assert recorded.balance.period_start_time == stamp(anchor)  # counted in the first period
    balance = stub.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug="tokens"), timeout=10)
    assert balance.balances[0].used == "7"
    # The first period's bill includes it; GetUsage shows it at its own time.
    bill = stub.EstimateBill(billing_pb2.EstimateBillRequest(customer_id=customer), timeout=10)
    assert bill.period_start_time == stamp(anchor)
    assert [line.quantity for line in bill.lines if line.meter_slug == "tokens"] == ["7"]
    usage = stub.GetUsage(
        usage_pb2.GetUsageRequest(
            customer_id=customer,
            meter_slugs=["tokens"],
            start_time=stamp(anchor - timedelta(hours=1)),
            end_time=stamp(anchor),
        ),
        timeout=10,
    )
    assert [(row.value, row.event_count) for row in usage.rows] == [("7", 1)]
    # Beyond the tolerance: before the first period; nothing written.
    with pytest.raises(grpc.RpcError) as refused:
        record(stub, customer, "too-early", "1", event_time=stamp(anchor - timedelta(minutes=5, seconds=1)))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused.value).reason == "BEFORE_FIRST_PERIOD"
    assert ledger_rows(database_url, customer) == 1
    counters = run_sql(database_url, "SELECT period_start, used FROM meter_counters WHERE customer_id = $1", customer)
    assert [(row["period_start"], row["used"]) for row in counters] == [(anchor, 7)]
    # Its replay and its void answer the first period too.
    replay = record(stub, customer, "early", "7", event_time=stamp(early))
    assert replay.duplicate and replay.balance.period_start_time == stamp(anchor)
    voided = stub.VoidUsage(events_pb2.VoidUsageRequest(customer_id=customer, transaction_id="early", reason="t"))
    assert voided.balance.used == "0" and voided.balance.period_start_time == stamp(anchor)


def test_transaction_ids_are_scoped_to_the_customer(stub: Stub, new_customer: Callable[..., str]) -> None:
    first, second = new_customer(), new_customer()
    a = record(stub, first, "shared-txn", "1")
    b = record(stub, second, "shared-txn", "1")
    assert not a.duplicate and not b.duplicate
    assert a.event.event_id != b.event.event_id


def test_naming_a_price_is_part_of_the_payload(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    stub.RecordUsage(
        usage_pb2.RecordUsageRequest(
            customer_id=customer, price_slug="tokens_per_unit", quantity="1", transaction_id="p"
        ),
        timeout=10,
    )
    with pytest.raises(grpc.RpcError) as caught:
        record(stub, customer, "p", "1")  # same meter, but named by meter this time
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


# -- limits -----------------------------------------------------------------------


def test_hard_limit_refuses_and_writes_nothing(stub: Stub, new_customer: Callable[..., str], database_url: str) -> None:
    customer = new_customer()  # tokens: hard limit 100
    ok = record(stub, customer, "a", "60")
    assert ok.balance.available == "40"
    with pytest.raises(grpc.RpcError) as caught:
        record(stub, customer, "b", "41")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error_details(caught.value)
    info = details["ErrorInfo"]
    assert info.reason == "LIMIT_EXCEEDED"  # type: ignore[attr-defined]
    assert dict(info.metadata) | {"period_end": ""} == {  # type: ignore[attr-defined]
        "meter": "tokens",
        "plan": "limited",
        "limit": "100",
        "available": "40",
        "requested": "41",
        "period_end": "",
    }
    assert info.metadata["period_end"].endswith("Z")  # type: ignore[attr-defined]
    quota = details["QuotaFailure"]
    assert quota.violations[0].subject == "meter:tokens"  # type: ignore[attr-defined]
    assert ledger_rows(database_url, customer) == 1
    # Exactly the rest still fits, and then nothing more.
    assert record(stub, customer, "c", "40").balance.available == "0"
    with pytest.raises(grpc.RpcError):
        record(stub, customer, "d", "0.000000001")
    assert record(stub, customer, "zero", "0").balance.used == "100"  # costs nothing: accepted


def test_refused_event_can_be_retried_once_room_exists(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer(plan="zero")  # tokens: limit 0
    with pytest.raises(grpc.RpcError):
        record(stub, customer, "retry-me", "5")
    # Nothing was written under that id, so another payload is not a conflict.
    with pytest.raises(grpc.RpcError) as caught:
        record(stub, customer, "retry-me", "6")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_allow_overage_records_past_a_hard_limit_and_reports_it(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    record(stub, customer, "a", "90")
    response = record(stub, customer, "b", "25", enforcement_mode=usage_pb2.ENFORCEMENT_MODE_ALLOW_OVERAGE)
    assert response.overage_quantity == "15"
    assert response.balance.used == "115"
    assert response.balance.available == "0"
    assert response.balance.percent_used == "115.00"
    assert response.balance.limit_reached
    # Further overage counts only this event's share.
    again = record(stub, customer, "c", "5", enforcement_mode=usage_pb2.ENFORCEMENT_MODE_ALLOW_OVERAGE)
    assert again.overage_quantity == "5"


def test_soft_limit_accepts_and_reports_overage(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer(plan="soft")
    assert record(stub, customer, "a", "80").overage_quantity == "0"
    response = record(stub, customer, "b", "30")
    assert response.overage_quantity == "10"
    assert response.balance.limit_enforcement == usage_pb2.LIMIT_ENFORCEMENT_SOFT
    assert response.balance.used == "110"


def test_unlimited_meter_always_accepts(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer(plan="open")
    response = record(stub, customer, "a", "99999999999999999999.999999999")
    assert response.balance.limit_enforcement == usage_pb2.LIMIT_ENFORCEMENT_UNLIMITED
    assert not response.balance.HasField("limit")
    assert not response.balance.HasField("available")
    assert not response.balance.HasField("percent_used")
    assert response.overage_quantity == "0"
    assert record(stub, customer, "b", "1").balance.used == "100000000000000000000.999999999"


def test_count_meter_counts_events(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()  # calls: hard limit 5 per day
    for i in range(5):
        response = record(stub, customer, f"call-{i}", "", meter="calls")
    assert response.balance.used == "5"
    assert response.balance.reset_period == usage_pb2.RESET_PERIOD_DAY
    with pytest.raises(grpc.RpcError) as caught:
        record(stub, customer, "call-6", "", meter="calls")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_max_meter_compares_each_value_with_the_limit(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()  # peak: hard limit 10
    assert record(stub, customer, "a", "4", meter="peak").balance.used == "4"
    assert record(stub, customer, "b", "9", meter="peak").balance.used == "9"
    assert record(stub, customer, "c", "2", meter="peak").balance.used == "9"
    assert record(stub, customer, "d", "10", meter="peak").balance.used == "10"
    with pytest.raises(grpc.RpcError) as caught:
        record(stub, customer, "e", "10.5", meter="peak")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_latest_meter_follows_event_time_not_arrival(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()  # storage: hard limit 50, never resets
    now = datetime.now(UTC)
    newer = record(stub, customer, "a", "30", meter="storage", event_time=stamp(now - timedelta(minutes=1)))
    assert newer.balance.used == "30"
    assert not newer.balance.HasField("period_end_time")
    older = record(stub, customer, "b", "45", meter="storage", event_time=stamp(now - timedelta(minutes=5)))
    assert older.balance.used == "30"  # an older report does not replace a newer one
    assert record(stub, customer, "c", "12", meter="storage").balance.used == "12"
    with pytest.raises(grpc.RpcError) as caught:
        record(stub, customer, "d", "51", meter="storage")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unique_count_counts_a_value_once_per_period(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()  # users: hard limit 3 distinct user_id, threshold 60%
    for i, user in enumerate(["ann", "bob", "ann", "cy", "bob"]):
        response = record(stub, customer, f"u{i}", "", meter="users", properties={"user_id": user})
    assert response.balance.used == "3"
    assert response.balance.approaching_limit
    assert response.balance.limit_reached
    # A value already seen costs nothing, even at the limit; a new one is refused.
    assert record(stub, customer, "u5", "", meter="users", properties={"user_id": "cy"}).balance.used == "3"
    with pytest.raises(grpc.RpcError) as caught:
        record(stub, customer, "u6", "", meter="users", properties={"user_id": "dee"})
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_event_counts_in_the_period_of_its_event_time(stub: Stub, new_customer: Callable[..., str]) -> None:
    anchor = datetime.now(UTC) - timedelta(days=1, hours=1)  # calls reset daily at the anchor's time
    customer = new_customer(anchor=anchor.isoformat().replace("+00:00", "Z"))
    yesterday = stamp(anchor + timedelta(minutes=30))
    old = record(stub, customer, "old", "", meter="calls", event_time=yesterday)
    new = record(stub, customer, "new", "", meter="calls")
    assert old.balance.period_start_time != new.balance.period_start_time
    assert old.balance.used == "1"
    assert new.balance.used == "1"


# -- prices -------------------------------------------------------------------------


def test_price_resolution(stub: Stub, new_customer: Callable[..., str]) -> None:
    limited, open_plan = new_customer(), new_customer(plan="open")
    assert record(stub, limited, "plan-price", "1").event.price_slug == "tokens_premium"  # the plan's price
    assert record(stub, open_plan, "default", "1").event.price_slug == "tokens_per_unit"  # the meter's default
    # A meter with no plan terms and no default price bills nothing.
    unplanned = record(stub, limited, "none", "1", meter="unplanned")
    assert unplanned.event.price_slug == "unplanned_no_charge"
    assert unplanned.balance.limit_enforcement == usage_pb2.LIMIT_ENFORCEMENT_UNLIMITED
    named = stub.RecordUsage(
        usage_pb2.RecordUsageRequest(
            customer_id=limited, price_slug="tokens_no_charge", quantity="2", transaction_id="named"
        ),
        timeout=10,
    )
    assert named.event.meter_slug == "tokens"
    assert named.event.price_slug == "tokens_no_charge"
    assert named.balance.used == "3"  # a named price still counts against the meter's limit


def test_a_named_price_in_another_currency_is_refused(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()  # a USD plan
    request = usage_pb2.RecordUsageRequest(
        customer_id=customer, price_slug="tokens_eur", quantity="1", transaction_id="e"
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecordUsage(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert info.reason == "PRICE_CURRENCY_MISMATCH"
    assert dict(info.metadata) == {"price": "tokens_eur", "price_currency": "EUR", "plan_currency": "USD"}
