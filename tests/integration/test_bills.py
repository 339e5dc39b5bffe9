"""EstimateBill against the sample catalog: totals computed by hand below."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from metering.v1 import billing_pb2, customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import ServiceProcess, stamp, violated_fields

# Slow tier: a service of its own (no catalog file).
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub


@pytest.fixture(scope="module")
def sample(database_url: str) -> Iterator[Stub]:
    """A service with the packaged sample catalog (free, pro, enterprise)."""
    service = ServiceProcess(database_url, catalog=None).start()
    with grpc.insecure_channel(service.target) as channel:
        yield metering_service_pb2_grpc.MeteringServiceStub(channel)
    service.stop()


def customer(stub: Stub, plan: str, anchor: datetime | None = None) -> str:
    customer_id = f"bill-{uuid.uuid4().hex[:12]}"
    request = customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug=plan)
    request.billing_anchor_time.CopyFrom(stamp(anchor or datetime.now(UTC) - timedelta(days=1)))
    stub.UpsertCustomer(request, timeout=10)
    return customer_id


def use(stub: Stub, customer_id: str, meter: str, quantity: str = "", at: datetime | None = None) -> None:
    request = usage_pb2.RecordUsageRequest(
        customer_id=customer_id, meter_slug=meter, quantity=quantity, transaction_id=str(uuid.uuid4())
    )
    if at is not None:
        request.event_time.CopyFrom(stamp(at))
    stub.RecordUsage(request, timeout=10)


def bill(stub: Stub, customer_id: str, at: datetime | None = None) -> billing_pb2.EstimateBillResponse:
    request = billing_pb2.EstimateBillRequest(customer_id=customer_id)
    if at is not None:
        request.period_time.CopyFrom(stamp(at))
    return stub.EstimateBill(request, timeout=10)


def lines(response: billing_pb2.EstimateBillResponse) -> list[tuple[str, str, str, str, str]]:
    return [(x.meter_slug, x.price_slug, x.quantity, x.billable_quantity, x.amount.amount) for x in response.lines]


def test_pro_plan(sample: Stub) -> None:
    c = customer(sample, "pro")
    for _ in range(3):
        use(sample, c, "api_calls")
    use(sample, c, "ai_tokens", "10000000")
    use(sample, c, "ai_tokens", "2500000")
    use(sample, c, "storage_gb", "40")
    use(sample, c, "storage_gb", "25")  # latest: 25 GB
    response = bill(sample, c)
    # api_calls: 3 calls, 100,000 included -> 0.00
    # ai_tokens: 12,500,000 - 1,000,000 included = 11,500,000 graduated:
    #            10,000,000 x 0.000002 = 20.00 + 1,500,000 x 0.0000015 = 2.25 -> 22.25
    # storage_gb: 25 - 10 included = 15 x 0.10 = 1.50
    assert lines(response) == [
        ("api_calls", "api_calls_package", "3", "0", "0.00"),
        ("ai_tokens", "ai_tokens_graduated", "12500000", "11500000", "22.25"),
        ("storage_gb", "storage_gb_per_unit", "25", "15", "1.50"),
    ]
    tokens = response.lines[1]
    assert tokens.pricing_model == billing_pb2.PRICING_MODEL_GRADUATED
    assert tokens.included_quantity == "1000000"
    assert [(t.from_quantity, t.up_to_quantity, t.quantity, t.unit_amount, t.amount) for t in tokens.tiers] == [
        ("0", "10000000", "10000000", "0.000002", "20"),
        ("10000000", "100000000", "1500000", "0.0000015", "2.25"),
    ]
    assert response.lines[0].package_size == "1000"
    assert response.lines[0].unit_amount == "0.2"
    assert response.subtotal == billing_pb2.Money(currency_code="USD", amount="23.75")
    assert response.credits == billing_pb2.Money(currency_code="USD", amount="0.00")
    assert response.total == billing_pb2.Money(currency_code="USD", amount="23.75")
    assert response.plan_slug == "pro"
    start, end = response.period_start_time.ToDatetime(tzinfo=UTC), response.period_end_time.ToDatetime(tzinfo=UTC)
    assert start <= datetime.now(UTC) < end


def test_enterprise_plan_volume_cliff(sample: Stub) -> None:
    c = customer(sample, "enterprise")
    use(sample, c, "ai_tokens", "150000001")
    use(sample, c, "storage_gb", "1500.5")
    response = bill(sample, c)
    # ai_tokens: 150,000,001 - 50,000,000 included = 100,000,001, just past the first volume tier:
    #            every token at 0.0000012 = 120.0000012 -> 120.00 (at 100,000,000 it would be 150.00)
    # storage_gb: 1500.5 - 1000 included = 500.5 x 0.10 = 50.05
    assert lines(response) == [
        ("api_calls", "api_calls_package", "0", "0", "0.00"),
        ("ai_tokens", "ai_tokens_volume", "150000001", "100000001", "120.00"),
        ("storage_gb", "storage_gb_per_unit", "1500.5", "500.5", "50.05"),
    ]
    assert response.lines[1].tiers[0].amount == "120.0000012"
    assert response.total.amount == "170.05"


def test_free_plan_bills_nothing(sample: Stub) -> None:
    c = customer(sample, "free")
    use(sample, c, "api_calls")
    use(sample, c, "ai_tokens", "5000")
    use(sample, c, "storage_gb", "1")
    response = bill(sample, c)
    assert lines(response) == [
        ("api_calls", "api_calls_no_charge", "1", "0", "0.00"),
        ("ai_tokens", "ai_tokens_no_charge", "5000", "0", "0.00"),
        ("storage_gb", "storage_gb_no_charge", "1", "0", "0.00"),
    ]
    assert response.total == billing_pb2.Money(currency_code="USD", amount="0.00")


def test_a_past_period_is_unchanged_by_current_events(sample: Stub) -> None:
    now = datetime.now(UTC)
    anchor = (now - timedelta(days=45)).replace(microsecond=0)
    c = customer(sample, "pro", anchor)
    in_past_period = anchor + timedelta(days=5)
    use(sample, c, "ai_tokens", "2000000", at=in_past_period)
    before = bill(sample, c, in_past_period)
    # 2,000,000 - 1,000,000 included = 1,000,000 x 0.000002 = 2.00
    assert before.total.amount == "2.00"
    assert before.period_start_time.ToDatetime(tzinfo=UTC) == anchor
    use(sample, c, "ai_tokens", "5000000")
    assert bill(sample, c, in_past_period) == before
    assert bill(sample, c, anchor) == before  # the period's start names it too
    current = bill(sample, c)
    assert current.period_start_time == before.period_end_time
    assert current.total.amount == "8.00"  # 4,000,000 billable x 0.000002


def test_plan_change_splits_a_meter_by_recorded_price(sample: Stub) -> None:
    c = customer(sample, "pro")
    use(sample, c, "ai_tokens", "3000000")  # priced ai_tokens_graduated under pro
    sample.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=c, plan_slug="enterprise"), timeout=10)
    use(sample, c, "ai_tokens", "1000000")  # priced ai_tokens_volume under enterprise
    response = bill(sample, c)
    assert response.plan_slug == "enterprise"
    # The plan in effect now supplies the included units, to its own price's line only.
    assert [line for line in lines(response) if line[0] == "ai_tokens"] == [
        ("ai_tokens", "ai_tokens_volume", "1000000", "0", "0.00"),
        ("ai_tokens", "ai_tokens_graduated", "3000000", "3000000", "6.00"),
    ]
    assert response.total.amount == "6.00"


def test_estimate_bill_refusals(sample: Stub) -> None:
    c = customer(sample, "pro")
    with pytest.raises(grpc.RpcError) as caught:
        bill(sample, c, datetime.now(UTC) + timedelta(days=40))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["period_time"]
    with pytest.raises(grpc.RpcError) as missing:
        bill(sample, "nobody-at-all")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
