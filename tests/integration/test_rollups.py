"""Hourly rollups: every usage query gives the same answer from rollups
(whole hours) plus edge events as from the raw events alone.

Events go through the real service (batches out of time order, so late events
land in buckets that exist already; voids rebuild their bucket); the queries
are the exact statements the service runs (metering.ledger.reporting), compared
row for row with the statement that reads only events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.config.catalog import load_catalog
from metering.domain.catalog import Catalog
from metering.domain.periods import ResetPeriod, period_containing
from metering.domain.windows import WindowSize, windows
from metering.ledger.reporting import AggregateQuery, PropertyFilter, aggregate_sql, raw_aggregate_sql
from metering.v1 import billing_pb2, events_pb2, ingest_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import TEST_CATALOG, audit

Stub = metering_service_pb2_grpc.MeteringServiceStub

CATALOG: Catalog = load_catalog(TEST_CATALOG)
ANCHOR = datetime(2025, 10, 1, tzinfo=UTC)
# Days when clocks change: Europe on 2025-10-26, the United States on 2025-11-02.
DST_DAYS = (datetime(2025, 10, 25, 12, tzinfo=UTC), datetime(2025, 11, 1, 12, tzinfo=UTC))
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe")  # +5:30, 30-min DST
METERS = ("tokens", "calls", "peak", "storage", "users")
COUNTING = ("calls", "users")


@dataclass(frozen=True)
class Event:
    meter: str
    quantity: str
    at: datetime
    region: str | None
    tier: str | None
    user: str
    premium: bool  # tokens only: recorded with the price tokens_premium named directly


def _current_period_start() -> datetime:
    return period_containing(datetime.now(UTC), ANCHOR, ResetPeriod.MONTH).start


def _event_times() -> st.SearchStrategy[datetime]:
    around_dst = st.tuples(st.sampled_from(DST_DAYS), st.integers(0, 48 * 3600 - 1), st.integers(0, 999_999)).map(
        lambda t: t[0] + timedelta(seconds=t[1], microseconds=t[2])
    )
    # The current billing period, where events can still be voided.
    current = st.integers(0, 10**9).map(
        lambda n: (
            _current_period_start() + (datetime.now(UTC) - timedelta(minutes=1) - _current_period_start()) * (n / 10**9)
        )
    )
    return st.one_of(around_dst, current)


events_strategy = st.lists(
    st.builds(
        Event,
        meter=st.sampled_from(METERS),
        quantity=st.sampled_from(["1", "2", "0.25", "1.50", "7", "0"]),
        at=_event_times(),
        region=st.sampled_from([None, "eu", "us"]),
        tier=st.sampled_from([None, "a", "b"]),
        user=st.sampled_from(["ann", "bob", "cy", "dee"]),
        premium=st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


def _request(customer: str, index: int, event: Event) -> usage_pb2.RecordUsageRequest:
    properties = {"user_id": event.user}
    if event.region is not None:
        properties["region"] = event.region
    if event.tier is not None:
        properties["tier"] = event.tier
    stamp = Timestamp()
    stamp.FromDatetime(event.at)
    request = usage_pb2.RecordUsageRequest(
        customer_id=customer,
        transaction_id=f"t{index}",
        quantity="" if event.meter in COUNTING else event.quantity,
        event_time=stamp,
        properties=properties,
        enforcement_mode=usage_pb2.ENFORCEMENT_MODE_ALLOW_OVERAGE,
    )
    if event.meter == "tokens" and event.premium:
        request.price_slug = "tokens_premium"
    else:
        request.meter_slug = event.meter
    return request


def _queries(customer: str, zone: ZoneInfo, size: WindowSize, filter_region: bool) -> list[AggregateQuery]:
    now = datetime.now(UTC)
    if size is WindowSize.HOUR:
        ranges = [(DST_DAYS[0], DST_DAYS[0] + timedelta(days=2)), (DST_DAYS[1], DST_DAYS[1] + timedelta(days=2))]
    else:
        ranges = [(datetime(2025, 10, 20, 7, 31, tzinfo=UTC), now), (_current_period_start(), now)]
    queries = []
    filters = (PropertyFilter("region", ("eu",)),) if filter_region else ()
    for meter_slug in METERS:
        meter = CATALOG.meters[meter_slug]
        for start, end in ranges:
            spans = windows(start, end, size, zone)
            queries.append(AggregateQuery(customer, meter, spans, filters=filters))
            queries.append(AggregateQuery(customer, meter, spans, group_by=("region",), group_by_price=True))
            if meter_slug == "tokens":
                queries.append(AggregateQuery(customer, meter, spans, group_by=("tier", "region"), filters=filters))
    return queries


async def _compare(database_url: str, queries: Sequence[AggregateQuery]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for query in queries:
            served, served_args = aggregate_sql(query)
            raw, raw_args = raw_aggregate_sql(query)
            assert served != raw, "the query must read rollups: every key it uses is a declared dimension"
            from_rollups = [_row(r) for r in await conn.fetch(served, *served_args)]
            from_events = [_row(r) for r in await conn.fetch(raw, *raw_args)]
            assert from_rollups == from_events, (query.meter.slug, query.group_by, query.filters)
    finally:
        await conn.close()


def _row(record: asyncpg.Record) -> tuple[object, ...]:
    # str(): the decimal's scale is part of the answer ("1.50" and "1.5" differ on the wire).
    return tuple(str(value) if isinstance(value, Decimal) else value for value in record.values())


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=events_strategy,
    split=st.integers(0, 40),
    voids=st.lists(st.integers(0, 39), max_size=8, unique=True),
    zone=st.sampled_from(ZONES),
    size=st.sampled_from([WindowSize.HOUR, WindowSize.DAY, WindowSize.MONTH]),
    filter_region=st.booleans(),
)
def test_every_usage_query_from_rollups_equals_the_raw_events(
    stub: Stub,
    new_customer: Callable[..., str],
    database_url: str,
    events: list[Event],
    split: int,
    voids: list[int],
    zone: str,
    size: WindowSize,
    filter_region: bool,
) -> None:
    customer = new_customer("soft", anchor="2025-10-01T00:00:00Z")
    requests = [_request(customer, i, event) for i, event in enumerate(events)]
    # Two batches: the second one adds to buckets the first one wrote.
    for part in (requests[:split], requests[split:]):
        if part:
            response = stub.RecordUsageBatch(ingest_pb2.RecordUsageBatchRequest(events=part), timeout=30)
            assert all(result.status.code == 0 for result in response.results), response
    period_start = _current_period_start()
    voided = {index for index in voids if index < len(events) and events[index].at >= period_start}
    for index in voided:
        request = events_pb2.VoidUsageRequest(customer_id=customer, transaction_id=f"t{index}", reason="test")
        stub.VoidUsage(request, timeout=10)
    asyncio.run(_compare(database_url, _queries(customer, ZoneInfo(zone), size, filter_region)))
    for period_time in (DST_DAYS[0], datetime.now(UTC)):
        _check_bill(stub, database_url, customer, period_time)
    report = audit(database_url, [customer])
    assert report.ok, report
    assert (report.rollups > 0) == (len(voided) < len(events))  # a bucket exists while an event counts


def _check_bill(stub: Stub, database_url: str, customer: str, period_time: datetime) -> None:
    stamp = Timestamp()
    stamp.FromDatetime(period_time)
    bill = stub.EstimateBill(billing_pb2.EstimateBillRequest(customer_id=customer, period_time=stamp), timeout=10)
    lines = sum((Decimal(line.amount.amount) for line in bill.lines), Decimal(0))
    assert Decimal(bill.subtotal.amount) == lines
    assert Decimal(bill.total.amount) == max(Decimal(0), Decimal(bill.subtotal.amount) + Decimal(bill.credits.amount))
    for line in bill.lines:  # each line's quantity is its events' aggregate over the whole period
        meter = CATALOG.meters[line.meter_slug]
        period = [(bill.period_start_time.ToDatetime(UTC), bill.period_end_time.ToDatetime(UTC))]
        query = AggregateQuery(customer, meter, period, group_by_price=True)
        statement, args = raw_aggregate_sql(query)
        rows = asyncio.run(_fetch(database_url, statement, args))
        expected = {row["g0"]: row["value"] for row in rows if row["event_count"]}
        assert Decimal(line.quantity) == expected.get(line.price_slug, Decimal(0)), line


def test_a_void_rebuilds_the_bucket_of_a_max_and_a_latest_meter(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    """MAX and LATEST cannot be un-applied by arithmetic: voiding the event
    that set the hour's figure leaves the next one, read from the ledger."""
    customer = new_customer("soft", anchor="2025-10-01T00:00:00Z")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    for meter in ("peak", "storage"):
        for i, (minute, quantity) in enumerate([(10, "5"), (20, "9"), (30, "3"), (40, "8")]):
            event = Event(meter, quantity, hour + timedelta(minutes=minute), "eu", None, "ann", False)
            stub.RecordUsage(usage_pb2.RecordUsageRequest(**_fields(customer, f"{meter}-{i}", event)), timeout=10)

    def value(meter: str) -> str:
        spans = [(hour, hour + timedelta(hours=1))]
        statement, args = aggregate_sql(AggregateQuery(customer, CATALOG.meters[meter], spans))
        [row] = asyncio.run(_fetch(database_url, statement, args))
        return str(row["value"])

    assert (value("peak"), value("storage")) == ("9", "8")
    for txn in ("peak-1", "storage-3"):
        stub.VoidUsage(events_pb2.VoidUsageRequest(customer_id=customer, transaction_id=txn, reason="x"), timeout=10)
    assert (value("peak"), value("storage")) == ("8", "3")
    assert audit(database_url, [customer]).ok


def _fields(customer: str, txn: str, event: Event) -> dict[str, Any]:
    stamp = Timestamp()
    stamp.FromDatetime(event.at)
    return {
        "customer_id": customer,
        "transaction_id": txn,
        "meter_slug": event.meter,
        "quantity": event.quantity,
        "event_time": stamp,
        "properties": {"region": event.region or "", "user_id": event.user},
        "enforcement_mode": usage_pb2.ENFORCEMENT_MODE_ALLOW_OVERAGE,
    }


async def _fetch(database_url: str, statement: str, args: list[object]) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()


def test_grouping_by_an_undeclared_property_reads_the_events() -> None:
    meter = CATALOG.meters["tokens"]
    spans = [(DST_DAYS[0], DST_DAYS[0] + timedelta(days=1))]
    served = aggregate_sql(AggregateQuery("c", meter, spans, group_by=("model",)))
    assert served == raw_aggregate_sql(AggregateQuery("c", meter, spans, group_by=("model",)))
    assert "usage_rollups" in aggregate_sql(AggregateQuery("c", meter, spans, group_by=("region",)))[0]
