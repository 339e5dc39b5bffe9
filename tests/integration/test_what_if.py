"""What-if bills against the running service: EstimateBill with what_if_plan_slug
prices the period's usage on another plan beside the bill of the customer's own
(test catalog: `limited` bills tokens at 0.002 with 10 included and calls at
0.01; `soft` bills tokens at the meter's default 0.001 and does not list calls;
`open` includes 1,000 tokens)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import pytest

from metering.client import Connection, MeteringClient, NotFound
from metering.v1 import billing_pb2, customer_pb2, metering_service_pb2_grpc
from tests.support import ServiceProcess, error_info, record, stamp, violated_fields

Stub = metering_service_pb2_grpc.MeteringServiceStub


def estimate(stub: Stub, customer: str, plan: str, at: datetime | None = None) -> billing_pb2.EstimateBillResponse:
    request = billing_pb2.EstimateBillRequest(customer_id=customer, what_if_plan_slug=plan)
    if at is not None:
        request.period_time.CopyFrom(stamp(at))
    response: billing_pb2.EstimateBillResponse = stub.EstimateBill(request, timeout=10)
    return response


def lines(message: billing_pb2.EstimateBillResponse | billing_pb2.WhatIfBill) -> list[tuple[str, str, str, str, str]]:
    return [(x.meter_slug, x.price_slug, x.quantity, x.included_quantity, x.amount.amount) for x in message.lines]


def test_a_what_if_bill_prices_the_same_usage_on_another_plan_beside_the_bill(
    stub: Stub, new_customer: Callable[..., str]
) -> None:
    customer = new_customer("limited")
    record(stub, customer, "t1", "25")
    record(stub, customer, "t2", "15")
    for n in range(3):
        record(stub, customer, f"c{n}", meter="calls")
    record(stub, customer, "u1", "5", meter="unplanned")

    response = estimate(stub, customer, "soft")
    # The bill of the customer's own plan is unchanged by the question.
    assert response.plan_slug == "limited"
    assert response.invoice_status == billing_pb2.INVOICE_STATUS_GATHERING
    assert [line for line in lines(response) if line[0] in ("tokens", "calls")] == [
        ("tokens", "tokens_premium", "40", "10", "0.06"),  # (40 - 10) x 0.002
        ("calls", "calls_per_unit", "3", "0", "0.03"),
    ]
    assert response.total.amount == "0.09"

    what_if = response.what_if
    assert what_if.plan_slug == "soft"
    # tokens at soft's price (the meter's default, 0.001) with nothing included; calls and
    # unplanned are not listed by soft: billed as soft would bill them (no default price:
    # no charge) and named.
    assert lines(what_if) == [
        ("tokens", "tokens_per_unit", "40", "0", "0.04"),
        ("calls", "calls_no_charge", "3", "0", "0.00"),
        ("unplanned", "unplanned_no_charge", "5", "0", "0.00"),
    ]
    assert list(what_if.unlisted_meter_slugs) == ["calls", "unplanned"]
    assert (what_if.subtotal.amount, what_if.credits.amount, what_if.total.amount) == ("0.04", "0.00", "0.04")
    assert what_if.total.currency_code == "USD"

    # On a plan that includes 1,000 tokens the same usage costs nothing.
    assert estimate(stub, customer, "open").what_if.total.amount == "0.00"
    # Without a plan there is no what-if.
    plain = stub.EstimateBill(billing_pb2.EstimateBillRequest(customer_id=customer), timeout=10)
    assert not plain.HasField("what_if")


def test_on_the_customers_own_plan_the_what_if_is_the_bill(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer("limited")
    record(stub, customer, "t1", "73.5")
    record(stub, customer, "c1", meter="calls")
    record(stub, customer, "p1", "4", meter="peak")
    record(stub, customer, "p2", "9", meter="peak")
    response = estimate(stub, customer, "limited")
    assert lines(response.what_if) == lines(response)
    assert (response.what_if.subtotal, response.what_if.total) == (response.subtotal, response.total)
    assert list(response.what_if.unlisted_meter_slugs) == []


def test_a_plan_change_splits_the_bill_by_price_and_the_what_if_prices_the_whole_period(
    stub: Stub, new_customer: Callable[..., str]
) -> None:
    """Events carry the price of the plan they were recorded under; a what-if
    prices the meter's whole usage at its own plan's price."""
    customer = new_customer("soft")
    record(stub, customer, "before", "30")  # at soft's tokens_per_unit
    stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="limited"), timeout=10)
    record(stub, customer, "after", "20")  # at limited's tokens_premium
    response = estimate(stub, customer, "soft")
    assert [line for line in lines(response) if line[0] == "tokens"] == [
        ("tokens", "tokens_premium", "20", "10", "0.02"),
        ("tokens", "tokens_per_unit", "30", "0", "0.03"),
    ]
    assert lines(response.what_if)[0] == ("tokens", "tokens_per_unit", "50", "0", "0.05")


def test_a_past_period_has_its_what_if_too(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer("open", anchor="2020-01-01T00:00:00Z")
    march = datetime(2021, 3, 10, tzinfo=UTC)
    record(stub, customer, "old", "1000", event_time=stamp(march))
    record(stub, customer, "now", "7")  # the current period, not March's
    response = estimate(stub, customer, "limited", at=march)
    assert response.period_start_time.ToDatetime(tzinfo=UTC) == datetime(2021, 3, 1, tzinfo=UTC)
    assert lines(response) == [("tokens", "tokens_per_unit", "1000", "1000", "0.00")]
    # On limited: (1,000 - 10 included) x 0.002; its other meters have no usage.
    assert lines(response.what_if)[0] == ("tokens", "tokens_premium", "1000", "10", "1.98")
    assert response.what_if.total.amount == "1.98"


def test_an_unknown_plan_is_not_found_and_a_malformed_one_invalid(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer("limited")
    with pytest.raises(grpc.RpcError) as caught:
        estimate(stub, customer, "platinum")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(caught.value)
    assert (info.reason, dict(info.metadata)) == ("PLAN_NOT_FOUND", {"plan": "platinum"})
    with pytest.raises(grpc.RpcError) as caught:
        estimate(stub, customer, "Not A Slug")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["what_if_plan_slug"]


def test_the_client_asks_for_a_what_if(service: ServiceProcess, new_customer: Callable[..., str]) -> None:
    customer = new_customer("limited")
    with MeteringClient(Connection(target=service.target)) as client:
        client.record_usage(customer, "tokens", Decimal(40), transaction_id="t1")
        bill = client.estimate_bill(customer, what_if_plan_slug="soft")
        assert bill.what_if is not None and bill.what_if.plan_slug == "soft"
        assert bill.what_if.total.amount == Decimal("0.04") and bill.total.amount == Decimal("0.06")
        assert bill.what_if.unlisted_meter_slugs == ()
        assert client.estimate_bill(customer).what_if is None
        with pytest.raises(NotFound) as caught:
            client.estimate_bill(customer, what_if_plan_slug="platinum", period_time=datetime.now(UTC) - timedelta(1))
        assert (caught.value.kind, caught.value.name) == ("plan", "platinum")
