"""Bad input: the right status code and a field violation naming the field."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from metering.v1 import billing_pb2, customer_pb2, grants_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import error_details, error_info, violated_fields, violations

Stub = metering_service_pb2_grpc.MeteringServiceStub


def _at(delta: timedelta) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(datetime.now(UTC) + delta)
    return value


def _request(customer: str, **overrides: Any) -> usage_pb2.RecordUsageRequest:
    fields: dict[str, Any] = {
        "customer_id": customer,
        "meter_slug": "tokens",
        "quantity": "1",
        "transaction_id": "txn-valid",
    }
    fields.update(overrides)
    return usage_pb2.RecordUsageRequest(**fields)


INVALID = [
    ("empty customer id", {"customer_id": ""}, "customer_id"),
    ("oversized customer id", {"customer_id": "c" * 129}, "customer_id"),
    ("customer id with a space", {"customer_id": "a b"}, "customer_id"),
    ("customer id with NUL", {"customer_id": "a\x00b"}, "customer_id"),
    ("empty transaction id", {"transaction_id": ""}, "transaction_id"),
    ("oversized transaction id", {"transaction_id": "t" * 129}, "transaction_id"),
    ("non-ASCII transaction id", {"transaction_id": "tx-é"}, "transaction_id"),
    ("transaction id with a trailing newline", {"transaction_id": "txn\n"}, "transaction_id"),
    ("negative quantity", {"quantity": "-1"}, "quantity"),
    ("non-numeric quantity", {"quantity": "ten"}, "quantity"),
    ("exponent quantity", {"quantity": "1e3"}, "quantity"),
    ("over-precise quantity", {"quantity": "0.0000000001"}, "quantity"),
    ("too many integer digits", {"quantity": "1" * 21}, "quantity"),
    ("quantity with spaces", {"quantity": " 1"}, "quantity"),
    ("quantity with a trailing newline", {"quantity": "1\n"}, "quantity"),
    ("NaN quantity", {"quantity": "NaN"}, "quantity"),
    ("infinite quantity", {"quantity": "Infinity"}, "quantity"),
    ("plus sign", {"quantity": "+1"}, "quantity"),
    ("missing quantity on a sum meter", {"quantity": ""}, "quantity"),
    ("quantity on a count meter", {"meter_slug": "calls", "quantity": "2"}, "quantity"),
    ("both meter and price", {"price_slug": "tokens_per_unit"}, "price_slug"),
    ("neither meter nor price", {"meter_slug": ""}, "meter_slug"),
    ("malformed meter slug", {"meter_slug": "Tokens!"}, "meter_slug"),
    ("meter slug with a trailing newline", {"meter_slug": "tokens\n"}, "meter_slug"),
    # Offsets from now become timestamps when the test runs, not when it is collected.
    ("future timestamp", {"event_time": timedelta(minutes=6)}, "event_time"),
    ("timestamp older than the backfill window", {"event_time": -timedelta(days=3651)}, "event_time"),
    ("invalid timestamp", {"event_time": Timestamp(seconds=-(10**12))}, "event_time"),
    ("too many properties", {"properties": {f"k{i}": "v" for i in range(33)}}, "properties"),
    ("oversized property value", {"properties": {"k": "v" * 257}}, "properties.k"),
    ("bad property key", {"properties": {"bad key": "v"}}, "properties['bad key']"),
    ("property key with a trailing newline", {"properties": {"k\n": "v"}}, "properties['k\\n']"),
    ("NUL in a property value", {"properties": {"k": "a\x00"}}, "properties.k"),
    ("unique_count without its property", {"meter_slug": "users", "quantity": ""}, "properties.user_id"),
    ("unknown enforcement mode", {"enforcement_mode": 7}, "enforcement_mode"),
]


@pytest.mark.parametrize(("case", "overrides", "field"), INVALID, ids=[case for case, _, _ in INVALID])
def test_invalid_record_usage(
    stub: Stub, new_customer: Callable[..., str], case: str, overrides: dict[str, Any], field: str
) -> None:
    customer = new_customer()
    resolved = {k: _at(v) if isinstance(v, timedelta) else v for k, v in overrides.items()}
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecordUsage(_request(customer, **resolved), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    details = error_details(caught.value)
    fields = violated_fields(details)
    assert field in fields, (case, fields)
    assert all(v.description for v in violations(details))
    assert error_info(details).reason == "INVALID_ARGUMENT"


def test_every_violation_is_reported_at_once(stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecordUsage(usage_pb2.RecordUsageRequest(quantity="-5"), timeout=10)
    fields = set(violated_fields(caught.value))
    assert {"customer_id", "transaction_id", "quantity", "meter_slug"} <= fields


@pytest.mark.parametrize(
    ("overrides", "reason", "resource"),
    [
        ({"meter_slug": "no_such_meter"}, "METER_NOT_FOUND", "no_such_meter"),
        ({"meter_slug": "", "price_slug": "no_such_price"}, "PRICE_NOT_FOUND", "no_such_price"),
    ],
)
def test_unknown_catalog_references_are_not_found(
    stub: Stub, new_customer: Callable[..., str], overrides: dict[str, Any], reason: str, resource: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecordUsage(_request(new_customer(), **overrides), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    details = error_details(caught.value)
    assert error_info(details).reason == reason
    assert details["ResourceInfo"].resource_name == resource  # type: ignore[attr-defined]


def test_unknown_customer_is_not_found(stub: Stub) -> None:
    calls: list[tuple[Callable[..., Any], Message]] = [
        (stub.RecordUsage, _request("nobody-here")),
        (stub.CheckBalance, usage_pb2.CheckBalanceRequest(customer_id="nobody-here")),
        (stub.GetCustomer, customer_pb2.GetCustomerRequest(customer_id="nobody-here")),
    ]
    for call, request in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(caught.value).reason == "CUSTOMER_NOT_FOUND"


def test_check_balance_validation(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    cases = [
        (usage_pb2.CheckBalanceRequest(customer_id=""), grpc.StatusCode.INVALID_ARGUMENT, "customer_id"),
        (
            usage_pb2.CheckBalanceRequest(customer_id=customer, requested_quantity="5"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "meter_slug",
        ),
        (
            usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug="tokens", requested_quantity="-5"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "requested_quantity",
        ),
        (usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug="nope"), grpc.StatusCode.NOT_FOUND, None),
    ]
    for request, code, field in cases:
        with pytest.raises(grpc.RpcError) as caught:
            stub.CheckBalance(request, timeout=10)
        assert caught.value.code() == code
        if field:
            assert field in violated_fields(caught.value)


# The first and last instants a Timestamp can hold: asyncpg stores them as
# -infinity and infinity, and period and window math around them leaves the
# datetime range, so they are refused up front.
_FIRST_INSTANT = Timestamp(seconds=int(datetime(1, 1, 1, tzinfo=UTC).timestamp()))
_LAST_INSTANT = Timestamp(seconds=int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()), nanos=999_999_999)


@pytest.mark.parametrize("instant", [_FIRST_INSTANT, _LAST_INSTANT], ids=["first", "last"])
def test_timestamps_at_the_ends_of_the_range_are_invalid(
    stub: Stub, new_customer: Callable[..., str], instant: Timestamp
) -> None:
    customer = new_customer()
    calls: list[tuple[Callable[..., Any], Message, str]] = [
        (
            stub.UpsertCustomer,
            customer_pb2.UpsertCustomerRequest(
                customer_id=f"{customer}-x", plan_slug="limited", billing_anchor_time=instant
            ),
            "billing_anchor_time",
        ),
        (stub.EstimateBill, billing_pb2.EstimateBillRequest(customer_id=customer, period_time=instant), "period_time"),
        (
            stub.GetUsage,
            usage_pb2.GetUsageRequest(customer_id=customer, meter_slugs=["tokens"], start_time=instant),
            "start_time",
        ),
        (
            stub.GrantCredits,
            grants_pb2.GrantCreditsRequest(
                customer_id=customer,
                meter_slug="tokens",
                quantity="1",
                grant_id="g",
                effective_time=instant,
                expire_at_period_end=True,
            ),
            "effective_time",
        ),
    ]
    for call, request, field in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in violated_fields(caught.value)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "\u200f" * 300, "../../etc/passwd", "Europe/" + "x" * 300])
def test_a_time_zone_that_is_no_iana_name_is_invalid_whatever_it_holds(
    stub: Stub, new_customer: Callable[..., str], zone: str
) -> None:
    # A name the file system refuses (too long) was once an INTERNAL error: found by
    # tests/integration/test_adversarial.py.
    request = usage_pb2.GetUsageRequest(customer_id=new_customer(), meter_slugs=["tokens"], time_zone=zone)
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetUsage(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["time_zone"]
