"""UpsertCustomer and GetCustomer."""

from __future__ import annotations

import uuid

import grpc
import pytest

from metering.v1 import customer_pb2, metering_service_pb2_grpc
from tests.support import error_info, record, violated_fields

Stub = metering_service_pb2_grpc.MeteringServiceStub


def upsert(stub: Stub, customer: str, plan: str, anchor: str | None = None) -> customer_pb2.UpsertCustomerResponse:
    request = customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug=plan)
    if anchor:
        request.billing_anchor_time.FromJsonString(anchor)
    return stub.UpsertCustomer(request, timeout=10)


def test_create_then_change_plan_keeps_the_anchor(stub: Stub) -> None:
    customer = f"c-{uuid.uuid4().hex}"
    created = upsert(stub, customer, "limited", "2026-01-31T10:00:00Z")
    assert created.created
    assert created.customer.billing_anchor_time.ToJsonString() == "2026-01-31T10:00:00Z"
    changed = upsert(stub, customer, "open")
    assert not changed.created
    assert changed.customer.plan_slug == "open"
    assert changed.customer.billing_anchor_time == created.customer.billing_anchor_time
    fetched = stub.GetCustomer(customer_pb2.GetCustomerRequest(customer_id=customer), timeout=10).customer
    assert fetched == changed.customer
    # The same anchor again is accepted; another one is refused and changes nothing.
    assert upsert(stub, customer, "open", "2026-01-31T10:00:00Z").customer.plan_slug == "open"
    with pytest.raises(grpc.RpcError) as caught:
        upsert(stub, customer, "limited", "2026-02-01T00:00:00Z")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "BILLING_ANCHOR_IMMUTABLE"
    fetched = stub.GetCustomer(customer_pb2.GetCustomerRequest(customer_id=customer), timeout=10).customer
    assert fetched.plan_slug == "open"


def test_unknown_plan_is_not_found(stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        upsert(stub, f"c-{uuid.uuid4().hex}", "platinum")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).reason == "PLAN_NOT_FOUND"


def test_plan_change_applies_to_limits_immediately(stub: Stub) -> None:
    customer = f"c-{uuid.uuid4().hex}"
    upsert(stub, customer, "open")
    record(stub, customer, "a", "150")
    upsert(stub, customer, "limited")  # hard limit 100, already passed
    with pytest.raises(grpc.RpcError) as caught:
        record(stub, customer, "b", "1")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    upsert(stub, customer, "open")
    assert record(stub, customer, "b", "1").balance.used == "151"


def test_invalid_upsert(stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id="", plan_slug=""), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = set(violated_fields(caught.value))
    assert fields == {"customer_id", "plan_slug"}
