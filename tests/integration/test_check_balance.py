"""CheckBalance: the counter row, the plan's terms, periods, requested quantities."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from metering.v1 import metering_service_pb2_grpc, usage_pb2
from tests.integration.test_record_usage import record

Stub = metering_service_pb2_grpc.MeteringServiceStub


def balance(stub: Stub, customer: str, meter: str = "", requested: str = "") -> usage_pb2.CheckBalanceResponse:
    request = usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug=meter, requested_quantity=requested)
    return stub.CheckBalance(request, timeout=10)


def test_all_meters_of_the_plan_in_plan_order(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    response = balance(stub, customer)
    assert response.plan_slug == "limited"
    assert [b.meter_slug for b in response.balances] == ["tokens", "calls", "peak", "storage", "users"]
    tokens = response.balances[0]
    assert tokens.used == "0"
    assert tokens.limit == "100"
    assert tokens.available == "100"
    assert tokens.percent_used == "0.00"
    assert tokens.granted == "0"
    assert tokens.reserved == "0"
    assert tokens.included_quantity == "10"
    assert tokens.price_slug == "tokens_premium"
    assert tokens.unit == "token"
    assert tokens.aggregation == usage_pb2.AGGREGATION_SUM
    assert tokens.limit_enforcement == usage_pb2.LIMIT_ENFORCEMENT_HARD
    assert tokens.approaching_threshold_percent == "80"
    assert not tokens.approaching_limit
    assert not tokens.limit_reached
    assert response.HasField("as_of_time")
    assert not response.HasField("requested_allowed")


def test_thresholds_and_percent(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    record(stub, customer, "a", "79.99")
    before = balance(stub, customer, "tokens").balances[0]
    assert before.percent_used == "79.99"
    assert not before.approaching_limit
    record(stub, customer, "b", "0.01")
    at = balance(stub, customer, "tokens").balances[0]
    assert at.percent_used == "80.00"
    assert at.approaching_limit
    assert not at.limit_reached
    record(stub, customer, "c", "20")
    full = balance(stub, customer, "tokens").balances[0]
    assert full.percent_used == "100.00"
    assert full.available == "0"
    assert full.limit_reached


def test_requested_quantity(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    record(stub, customer, "a", "70")
    assert balance(stub, customer, "tokens", requested="30").requested_allowed is True
    assert balance(stub, customer, "tokens", requested="30.000000001").requested_allowed is False
    # For gauges the requested quantity is the value about to be reported.
    record(stub, customer, "p", "9", meter="peak")
    assert balance(stub, customer, "peak", requested="10").requested_allowed is True
    assert balance(stub, customer, "peak", requested="11").requested_allowed is False
    soft = new_customer(plan="soft")
    assert balance(stub, soft, "tokens", requested="101").requested_allowed is False
    unlimited = new_customer(plan="open")
    assert balance(stub, unlimited, "tokens", requested="99999999999").requested_allowed is True


def test_zero_limit_is_full(stub: Stub, new_customer: Callable[..., str]) -> None:
    tokens = balance(stub, new_customer(plan="zero"), "tokens").balances[0]
    assert tokens.available == "0"
    assert tokens.percent_used == "100.00"
    assert tokens.limit_reached


def test_gauge_available_is_headroom(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    record(stub, customer, "s", "20", meter="storage")
    storage = balance(stub, customer, "storage").balances[0]
    assert storage.used == "20"
    assert storage.available == "30"
    assert storage.percent_used == "40.00"
    assert storage.reset_period == usage_pb2.RESET_PERIOD_NONE
    assert not storage.HasField("period_end_time")


def test_monthly_period_bounds_follow_the_anchor(stub: Stub, new_customer: Callable[..., str]) -> None:
    now = datetime.now(UTC)
    anchor = (now - timedelta(days=400)).replace(microsecond=0)
    customer = new_customer(anchor=anchor.isoformat().replace("+00:00", "Z"))
    tokens = balance(stub, customer, "tokens").balances[0]
    start = tokens.period_start_time.ToDatetime(tzinfo=UTC)
    end = tokens.period_end_time.ToDatetime(tzinfo=UTC)
    assert start <= now < end
    assert start.time() == anchor.time()
    assert 28 <= (end - start).days <= 31
    calls = balance(stub, customer, "calls").balances[0]
    assert (calls.period_end_time.ToDatetime() - calls.period_start_time.ToDatetime()) == timedelta(days=1)


def test_read_your_writes_on_one_server(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer(plan="open")
    for i in range(1, 31):
        record(stub, customer, f"t{i}", "1")
        assert balance(stub, customer, "tokens").balances[0].used == str(i)
