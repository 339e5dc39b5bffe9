"""GetUsage and ListUsageEvents over known event sets (fixed past dates)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from metering.api.page_tokens import PageTokens
from metering.v1 import events_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import error_info, page_tokens_of, record, violated_fields

Stub = metering_service_pb2_grpc.MeteringServiceStub


def ts(text: str) -> Timestamp:
    value = Timestamp()
    value.FromJsonString(text)
    return value


def usage(stub: Stub, customer: str, meters: list[str], **fields: Any) -> list[usage_pb2.UsageRow]:
    """Every row of a GetUsage query, following next_page_token."""
    request = usage_pb2.GetUsageRequest(customer_id=customer, meter_slugs=meters, **fields)
    rows: list[usage_pb2.UsageRow] = []
    while True:
        response = stub.GetUsage(request, timeout=10)
        rows.extend(response.rows)
        if not response.next_page_token:
            return rows
        request.page_token = response.next_page_token


def simple(rows: list[usage_pb2.UsageRow]) -> list[tuple[str, str, str, int, dict[str, str]]]:
    return [
        (
            r.window_start_time.ToJsonString(),
            r.window_end_time.ToJsonString(),
            r.value,
            r.event_count,
            dict(r.group_values),
        )
        for r in rows
    ]


@pytest.fixture(scope="module")
def dst_customer(stub: Stub, new_customer: Callable[..., str]) -> str:
    """tokens events around the end of summer time in Berlin (2025-10-26, a 25-hour day)."""
    customer = new_customer(plan="open")
    for txn, at, quantity, region in [
        ("e1", "2025-10-25T21:59:59.999999Z", "1", "eu"),  # Berlin: the 25th, last microsecond
        ("e2", "2025-10-25T22:00:00Z", "2", "eu"),  # Berlin: midnight starting the 26th
        ("e3", "2025-10-26T01:30:00Z", "4", "us"),  # after the clocks went back
        ("e4", "2025-10-26T22:59:59Z", "8", "us"),  # Berlin: 23:59:59 on the 26th
        ("e5", "2025-10-26T23:00:00Z", "16", "eu"),  # Berlin: midnight starting the 27th
    ]:
        record(stub, customer, txn, quantity, event_time=ts(at), properties={"region": region})
    return customer


BERLIN_RANGE: dict[str, Any] = {"start_time": ts("2025-10-24T22:00:00Z"), "end_time": ts("2025-10-27T23:00:00Z")}


def test_day_windows_in_a_time_zone_with_a_25_hour_day(stub: Stub, dst_customer: str) -> None:
    rows = usage(
        stub, dst_customer, ["tokens"], window_size=usage_pb2.WINDOW_SIZE_DAY, time_zone="Europe/Berlin", **BERLIN_RANGE
    )
    assert simple(rows) == [
        ("2025-10-24T22:00:00Z", "2025-10-25T22:00:00Z", "1", 1, {}),
        ("2025-10-25T22:00:00Z", "2025-10-26T23:00:00Z", "14", 3, {}),  # 25 hours
        ("2025-10-26T23:00:00Z", "2025-10-27T23:00:00Z", "16", 1, {}),
    ]
    utc_days = usage(
        stub,
        dst_customer,
        ["tokens"],
        window_size=usage_pb2.WINDOW_SIZE_DAY,
        start_time=ts("2025-10-25T00:00:00Z"),
        end_time=ts("2025-10-27T00:00:00Z"),
    )
    assert [(r.value, r.event_count) for r in utc_days] == [("3", 2), ("28", 3)]


def test_group_by_and_filters(stub: Stub, dst_customer: str) -> None:
    grouped = usage(
        stub,
        dst_customer,
        ["tokens"],
        window_size=usage_pb2.WINDOW_SIZE_DAY,
        time_zone="Europe/Berlin",
        group_by=["region"],
        **BERLIN_RANGE,
    )
    assert [(r.window_start_time.ToJsonString(), dict(r.group_values), r.value) for r in grouped] == [
        ("2025-10-24T22:00:00Z", {"region": "eu"}, "1"),
        ("2025-10-25T22:00:00Z", {"region": "eu"}, "2"),
        ("2025-10-25T22:00:00Z", {"region": "us"}, "12"),
        ("2025-10-26T23:00:00Z", {"region": "eu"}, "16"),
    ]
    us_only = usage(
        stub,
        dst_customer,
        ["tokens"],
        window_size=usage_pb2.WINDOW_SIZE_DAY,
        time_zone="Europe/Berlin",
        filters=[usage_pb2.PropertyFilter(key="region", values=["us"])],
        **BERLIN_RANGE,
    )
    # Empty windows are present, with zero.
    assert [(r.value, r.event_count) for r in us_only] == [("0", 0), ("12", 2), ("0", 0)]
    missing = usage(stub, dst_customer, ["tokens"], group_by=["model"], **BERLIN_RANGE)
    assert [(dict(r.group_values), r.value) for r in missing] == [({"model": ""}, "31")]


def test_pages_add_up_to_the_whole_result(stub: Stub, dst_customer: str) -> None:
    query: dict[str, Any] = {
        "window_size": usage_pb2.WINDOW_SIZE_DAY,
        "time_zone": "Europe/Berlin",
        "group_by": ["region"],
        **BERLIN_RANGE,
    }
    whole = usage(stub, dst_customer, ["tokens", "calls"], **query)
    paged = usage(stub, dst_customer, ["tokens", "calls"], page_size=1, **query)
    assert [r.meter_slug for r in whole] == ["tokens"] * 4 + ["calls"] * 3
    assert simple(paged) == simple(whole)
    assert [r.meter_slug for r in paged] == [r.meter_slug for r in whole]
    first = stub.GetUsage(
        usage_pb2.GetUsageRequest(customer_id=dst_customer, meter_slugs=["tokens"], page_size=2, **query), timeout=10
    )
    assert len(first.rows) == 2 and first.next_page_token


def test_a_page_token_only_works_for_its_own_query(stub: Stub, dst_customer: str) -> None:
    request = usage_pb2.GetUsageRequest(
        customer_id=dst_customer,
        meter_slugs=["tokens"],
        page_size=1,
        window_size=usage_pb2.WINDOW_SIZE_DAY,
        **BERLIN_RANGE,
    )
    token = stub.GetUsage(request, timeout=10).next_page_token
    request.page_token = token
    request.page_size = 2  # the page size may change between pages
    assert stub.GetUsage(request, timeout=10).rows
    request.time_zone = "Europe/Berlin"  # the query may not
    for bad in (token, "not-a-token", token[:-3]):
        request.page_token = bad
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetUsage(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(caught.value).reason == "INVALID_PAGE_TOKEN"


# Tokens are signed (metering.api.page_tokens), but their cursors are still
# checked like any field: these are signed with the service's own key.
_NOW = "2025-01-01T00:00:00+00:00"
FORGED_USAGE_CURSORS: list[dict[str, Any]] = [
    {"m": float("inf"), "w": 0, "g": [], "now": _NOW},
    {"m": 0, "w": 10**30, "g": [], "now": _NOW},
    {"m": 0, "w": 0, "g": "", "now": _NOW},
    {"m": 0, "w": 0, "g": [], "now": "0001-01-01T00:00:00+14:00"},
    {"m": 0, "w": 0, "g": [], "now": "9999-12-31T23:59:59-14:00"},
]
FORGED_EVENTS_CURSORS: list[dict[str, Any]] = [
    {"t": _NOW, "id": 5},
    {"t": _NOW, "id": ["a"]},
    {"t": "0001-01-01T00:00:00+14:00", "id": "00000000-0000-0000-0000-000000000000"},
]
DEEP_TOKEN = base64.urlsafe_b64encode(b"[" * 100_000).decode()


def test_a_forged_page_token_is_invalid(stub: Stub, new_customer: Callable[..., str], database_url: str) -> None:
    customer = new_customer()
    signer = page_tokens_of(database_url)
    other_key = PageTokens(b"another service's key, 32 bytes.")
    requests: list[tuple[Callable[..., Any], usage_pb2.GetUsageRequest | events_pb2.ListUsageEventsRequest]] = []
    valid_usage_cursor = {"m": 0, "w": 0, "g": [], "now": _NOW}
    for cursor in [*FORGED_USAGE_CURSORS, None, valid_usage_cursor]:
        usage = usage_pb2.GetUsageRequest(customer_id=customer, meter_slugs=["tokens"])
        if cursor is valid_usage_cursor:  # a well-formed cursor, signed with another key
            usage.page_token = other_key.seal(usage, cursor)
        else:
            usage.page_token = signer.seal(usage, cursor) if cursor is not None else DEEP_TOKEN
        requests.append((stub.GetUsage, usage))
    for cursor in [*FORGED_EVENTS_CURSORS, None]:
        events = events_pb2.ListUsageEventsRequest(customer_id=customer)
        events.page_token = signer.seal(events, cursor) if cursor is not None else DEEP_TOKEN
        requests.append((stub.ListUsageEvents, events))
    # Another customer's token, genuine for that customer's query.
    usage = usage_pb2.GetUsageRequest(customer_id=customer, meter_slugs=["tokens"])
    theirs = usage_pb2.GetUsageRequest(customer_id=new_customer(), meter_slugs=["tokens"])
    usage.page_token = signer.seal(theirs, valid_usage_cursor)
    requests.append((stub.GetUsage, usage))
    theirs.page_token = usage.page_token
    stub.GetUsage(theirs, timeout=10)  # the cursor itself is a good one: its own query accepts it
    for call, request in requests:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request.page_token
        assert error_info(caught.value).reason == "INVALID_PAGE_TOKEN"


@pytest.fixture(scope="module")
def hourly_customer(stub: Stub, new_customer: Callable[..., str]) -> str:
    """One meter per aggregation, events in two hours of 2025-06-15 (UTC)."""
    customer = new_customer(plan="open")
    events = [
        ("tokens", "10:00", "3", {}),
        ("tokens", "10:30", "5", {}),
        ("tokens", "11:15", "7", {}),
        ("calls", "10:05", "", {}),
        ("calls", "10:10", "", {}),
        ("calls", "11:00", "", {}),  # 11:00 opens hour 11
        ("peak", "10:00", "4", {}),
        ("peak", "10:20", "9", {}),
        ("peak", "10:40", "6", {}),
        ("peak", "11:10", "2", {}),
        ("storage", "10:00", "30", {}),
        ("storage", "10:45", "20", {}),
        ("storage", "10:45", "25", {}),
        ("storage", "11:30", "5", {}),
        ("users", "10:00", "", {"user_id": "ann"}),
        ("users", "10:10", "", {"user_id": "bob"}),
        ("users", "10:20", "", {"user_id": "ann"}),
        ("users", "11:00", "", {"user_id": "ann"}),
    ]
    for i, (meter, clock, quantity, properties) in enumerate(events):
        record(
            stub,
            customer,
            f"h{i}",
            quantity,
            meter=meter,
            event_time=ts(f"2025-06-15T{clock}:00Z"),
            properties=properties,
        )
    return customer


@pytest.mark.parametrize(
    ("meter", "values"),
    [
        ("tokens", [("0", 0), ("8", 2), ("7", 1), ("0", 0)]),
        ("calls", [("0", 0), ("2", 2), ("1", 1), ("0", 0)]),
        ("peak", [("0", 0), ("9", 3), ("2", 1), ("0", 0)]),
        ("storage", [("0", 0), ("25", 3), ("5", 1), ("0", 0)]),  # a tie on event time: the later record wins
        ("users", [("0", 0), ("2", 3), ("1", 1), ("0", 0)]),
    ],
)
def test_each_aggregation_per_hour(stub: Stub, hourly_customer: str, meter: str, values: list[tuple[str, int]]) -> None:
    rows = usage(
        stub,
        hourly_customer,
        [meter],
        window_size=usage_pb2.WINDOW_SIZE_HOUR,
        start_time=ts("2025-06-15T09:00:00Z"),
        end_time=ts("2025-06-15T13:00:00Z"),
    )
    assert [(r.value, r.event_count) for r in rows] == values
    assert [r.window_start_time.ToJsonString() for r in rows] == [
        f"2025-06-15T{h}:00:00Z" for h in ("09", "10", "11", "12")
    ]


def test_month_window_and_whole_range(stub: Stub, hourly_customer: str) -> None:
    month = usage(
        stub,
        hourly_customer,
        ["tokens", "users"],
        window_size=usage_pb2.WINDOW_SIZE_MONTH,
        start_time=ts("2025-05-20T00:00:00Z"),
        end_time=ts("2025-07-10T00:00:00Z"),
    )
    assert [(r.meter_slug, r.window_start_time.ToJsonString(), r.value) for r in month] == [
        ("tokens", "2025-05-20T00:00:00Z", "0"),
        ("tokens", "2025-06-01T00:00:00Z", "15"),
        ("tokens", "2025-07-01T00:00:00Z", "0"),
        ("users", "2025-05-20T00:00:00Z", "0"),
        ("users", "2025-06-01T00:00:00Z", "2"),
        ("users", "2025-07-01T00:00:00Z", "0"),
    ]


def test_default_range_is_the_current_period(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer(plan="open")
    record(stub, customer, "old", "100", event_time=ts("2025-06-15T10:00:00Z"))
    record(stub, customer, "now", "5")
    rows = usage(stub, customer, ["tokens"])
    assert [(r.value, r.event_count) for r in rows] == [("5", 1)]


@pytest.mark.parametrize(
    ("fields", "violation"),
    [
        ({"meter_slugs": []}, "meter_slugs"),
        ({"meter_slugs": ["tokens", "tokens"]}, "meter_slugs"),
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"time_zone": "../../etc/passwd"}, "time_zone"),
        ({"start_time": ts("2025-01-02T00:00:00Z"), "end_time": ts("2025-01-01T00:00:00Z")}, "end_time"),
        (
            {
                "start_time": ts("2020-01-01T00:00:00Z"),
                "end_time": ts("2025-01-01T00:00:00Z"),
                "window_size": usage_pb2.WINDOW_SIZE_HOUR,
            },
            "window_size",
        ),
        ({"group_by": ["bad key"]}, "group_by[0]"),
        ({"group_by": ["a", "b", "c", "d", "e", "f"]}, "group_by"),
        ({"filters": [usage_pb2.PropertyFilter(key="region")]}, "filters[0].values"),
        ({"page_size": -1}, "page_size"),
        ({"page_size": 10001}, "page_size"),
        ({"window_size": 9}, "window_size"),
    ],
)
def test_get_usage_validation(
    stub: Stub, new_customer: Callable[..., str], fields: dict[str, Any], violation: str
) -> None:
    request: dict[str, Any] = {"customer_id": new_customer(plan="open"), "meter_slugs": ["tokens"], **fields}
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetUsage(usage_pb2.GetUsageRequest(**request), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation in violated_fields(caught.value)


def test_get_usage_unknown_references(stub: Stub, new_customer: Callable[..., str]) -> None:
    for request, reason in (
        (usage_pb2.GetUsageRequest(customer_id="nobody", meter_slugs=["tokens"]), "CUSTOMER_NOT_FOUND"),
        (usage_pb2.GetUsageRequest(customer_id=new_customer(), meter_slugs=["ghost"]), "METER_NOT_FOUND"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetUsage(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(caught.value).reason == reason


# -- ListUsageEvents -------------------------------------------------------------


def list_all(stub: Stub, request: events_pb2.ListUsageEventsRequest) -> list[str]:
    ids: list[str] = []
    while True:
        response = stub.ListUsageEvents(request, timeout=10)
        ids.extend(e.transaction_id for e in response.events)
        if not response.next_page_token:
            return ids
        request.page_token = response.next_page_token


def test_list_events_newest_first_paginated_and_filtered(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer(plan="open")
    base = datetime(2025, 6, 1, tzinfo=UTC)
    for i in range(7):
        at = Timestamp()
        at.FromDatetime(base + timedelta(hours=i // 2))  # pairs share an event time
        record(stub, customer, f"t{i}", "1", meter="tokens" if i % 3 else "peak", event_time=at)
    everything = list_all(stub, events_pb2.ListUsageEventsRequest(customer_id=customer, page_size=2))
    # Newest first; among equal event times the later-recorded (higher id) first.
    assert everything == ["t6", "t5", "t4", "t3", "t2", "t1", "t0"]
    tokens = list_all(stub, events_pb2.ListUsageEventsRequest(customer_id=customer, meter_slug="tokens", page_size=3))
    assert tokens == ["t5", "t4", "t2", "t1"]
    window = list_all(
        stub,
        events_pb2.ListUsageEventsRequest(
            customer_id=customer, start_time=ts("2025-06-01T01:00:00Z"), end_time=ts("2025-06-01T03:00:00Z")
        ),
    )
    assert window == ["t5", "t4", "t3", "t2"]
    first = stub.ListUsageEvents(events_pb2.ListUsageEventsRequest(customer_id=customer, page_size=1), timeout=10)
    event = first.events[0]
    assert (event.meter_slug, event.quantity, event.price_slug) == ("peak", "1", "peak_no_charge")
    assert event.event_time.ToJsonString() == "2025-06-01T03:00:00Z"


def test_list_events_validation(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer()
    for request, code in (
        (events_pb2.ListUsageEventsRequest(customer_id=customer, page_size=1001), grpc.StatusCode.INVALID_ARGUMENT),
        (events_pb2.ListUsageEventsRequest(customer_id=customer, page_token="x"), grpc.StatusCode.INVALID_ARGUMENT),
        (events_pb2.ListUsageEventsRequest(customer_id=customer, meter_slug="ghost"), grpc.StatusCode.NOT_FOUND),
        (events_pb2.ListUsageEventsRequest(customer_id="nobody"), grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListUsageEvents(request, timeout=10)
        assert caught.value.code() == code
