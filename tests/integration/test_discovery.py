"""ListCustomers and GetCatalog against the shared service: over gRPC and through both clients."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable
from decimal import Decimal

import grpc
import pytest

from metering.client import (
    AsyncMeteringClient,
    Connection,
    LimitEnforcement,
    MeteringClient,
    PackageRounding,
    PricingModel,
    ResetPeriod,
)
from metering.config.catalog import load_catalog
from metering.v1 import billing_pb2, catalog_pb2, customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import TEST_CATALOG, ServiceProcess, error_info, violated_fields

Stub = metering_service_pb2_grpc.MeteringServiceStub


def all_pages(stub: Stub, plan: str = "", page_size: int = 0) -> tuple[list[customer_pb2.Customer], int]:
    """Every customer of the listing, following the tokens; and the number of pages."""
    customers: list[customer_pb2.Customer] = []
    token, pages = "", 0
    while True:
        request = customer_pb2.ListCustomersRequest(plan_slug=plan, page_size=page_size, page_token=token)
        response = stub.ListCustomers(request, timeout=10)
        customers.extend(response.customers)
        pages += 1
        token = response.next_page_token
        if not token:
            return customers, pages


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_customers_page_in_byte_order_and_filter_by_plan(stub: Stub, new_customer: Callable[..., str]) -> None:
    # Ids whose byte order differs from a natural-language collation's (case, punctuation).
    tag = uuid.uuid4().hex[:8]
    ids = [f"Z-{tag}", f"a-{tag}", f"a_{tag}", f"B.{tag}"]
    for customer_id in ids:
        stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug="soft"), timeout=10)
    elsewhere = new_customer("zero")
    listed, pages = all_pages(stub, "soft", page_size=2)
    listed_ids = [c.customer_id for c in listed]
    assert listed_ids == sorted(listed_ids, key=lambda text: text.encode())  # byte order, no repeats
    assert len(set(listed_ids)) == len(listed_ids)
    assert set(ids) <= set(listed_ids)
    assert elsewhere not in listed_ids
    assert {c.plan_slug for c in listed} == {"soft"}
    assert pages == -(-len(listed) // 2)  # no empty last page: a token only when more follow
    everyone = [c.customer_id for c in all_pages(stub, page_size=1000)[0]]
    assert set(ids) | {elsewhere} <= set(everyone)
    assert everyone == sorted(everyone, key=lambda text: text.encode())
    # A customer moved to another plan leaves the filter from the next call on.
    stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=ids[0], plan_slug="open"), timeout=10)
    assert ids[0] not in [c.customer_id for c in all_pages(stub, "soft", page_size=1000)[0]]
    moved = next(c for c in all_pages(stub, "open", page_size=1000)[0] if c.customer_id == ids[0])
    assert moved.billing_anchor_time.seconds > 0 and moved.update_time.seconds > 0


def test_a_page_token_belongs_to_its_filter(stub: Stub) -> None:
    for _ in range(2):
        customer_id = f"page-{uuid.uuid4().hex[:8]}"
        stub.UpsertCustomer(customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug="soft"), timeout=10)
    first = stub.ListCustomers(customer_pb2.ListCustomersRequest(plan_slug="soft", page_size=1), timeout=10)
    assert first.next_page_token
    # The page size may change between pages; the filter may not.
    request = customer_pb2.ListCustomersRequest(plan_slug="soft", page_size=5, page_token=first.next_page_token)
    assert stub.ListCustomers(request, timeout=10).customers[0].customer_id > first.customers[0].customer_id
    other = customer_pb2.ListCustomersRequest(plan_slug="open", page_token=first.next_page_token)
    error = refusal(lambda: stub.ListCustomers(other, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "INVALID_PAGE_TOKEN"
    forged = customer_pb2.ListCustomersRequest(plan_slug="soft", page_token=first.next_page_token[:-2] + "AA")
    assert refusal(lambda: stub.ListCustomers(forged, timeout=10)).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_bad_listing_request_names_every_field(stub: Stub) -> None:
    request = customer_pb2.ListCustomersRequest(plan_slug="Not A Slug", page_size=1001)
    error = refusal(lambda: stub.ListCustomers(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(violated_fields(error)) == ["page_size", "plan_slug"]
    # A well-formed plan the catalog lacks finds the customers left on it: none here.
    unknown = stub.ListCustomers(customer_pb2.ListCustomersRequest(plan_slug="retired_plan"), timeout=10)
    assert list(unknown.customers) == [] and unknown.next_page_token == ""


def test_the_catalog_is_answered_as_loaded(stub: Stub) -> None:
    answer = stub.GetCatalog(catalog_pb2.GetCatalogRequest(), timeout=10)
    expected = load_catalog(TEST_CATALOG)
    assert answer.revision == hashlib.sha256(TEST_CATALOG.read_text().encode()).hexdigest()
    assert answer.load_time.seconds > 0
    assert [m.slug for m in answer.meters] == list(expected.meters)
    assert [p.slug for p in answer.prices] == list(expected.prices)  # the file's, then the no-charge ones
    assert [p.slug for p in answer.plans] == list(expected.plans)
    meters = {m.slug: m for m in answer.meters}
    assert meters["users"].aggregation == usage_pb2.AGGREGATION_UNIQUE_COUNT
    assert (meters["users"].unit, meters["users"].unique_property) == ("user", "user_id")
    assert list(meters["tokens"].dimensions) == ["region", "tier"]
    assert meters["tokens"].default_price_slug == "tokens_per_unit"
    assert (meters["calls"].default_price_slug, meters["calls"].no_charge_price_slug) == ("", "calls_no_charge")
    prices = {p.slug: p for p in answer.prices}
    assert (prices["tokens_eur"].currency_code, prices["tokens_eur"].unit_amount) == ("EUR", "0.001")
    assert prices["tokens_eur"].pricing_model == billing_pb2.PRICING_MODEL_PER_UNIT
    assert prices["peak_no_charge"].no_charge and prices["peak_no_charge"].currency_code == ""
    assert prices["peak_no_charge"].unit_amount == "0"
    limited = next(p for p in answer.plans if p.slug == "limited")
    assert (limited.name, limited.currency_code) == ("limited", "USD")
    assert (limited.prepaid, limited.credits_low_threshold) == (False, "")
    terms = {t.meter_slug: t for t in limited.meters}
    assert list(terms) == ["tokens", "calls", "peak", "storage", "users"]
    tokens = terms["tokens"]
    assert (tokens.price_slug, tokens.limit, tokens.included_quantity) == ("tokens_premium", "100", "10")
    assert tokens.limit_enforcement == usage_pb2.LIMIT_ENFORCEMENT_HARD
    assert terms["calls"].reset_period == usage_pb2.RESET_PERIOD_DAY
    assert terms["storage"].reset_period == usage_pb2.RESET_PERIOD_NONE
    assert terms["users"].approaching_threshold_percent == "60"
    open_tokens = next(p for p in answer.plans if p.slug == "open").meters[0]
    assert (open_tokens.limit, open_tokens.included_quantity) == ("", "1000")
    assert open_tokens.limit_enforcement == usage_pb2.LIMIT_ENFORCEMENT_UNLIMITED


def test_both_clients_list_customers_and_read_the_catalog(
    service: ServiceProcess, new_customer: Callable[..., str]
) -> None:
    customer = new_customer("zero")
    with MeteringClient(Connection(target=service.target)) as client:
        page = client.list_customers(plan_slug="zero", page_size=1000)
        assert customer in [c.customer_id for c in page.customers]
        assert page.next_page_token == ""
        catalog = client.get_catalog()
    tokens = catalog.meter("tokens")
    assert tokens is not None and tokens.default_price_slug == "tokens_per_unit"
    assert catalog.price("nothing") is None and catalog.plan("nothing") is None
    premium = catalog.price("tokens_premium")
    assert premium is not None and premium.pricing_model is PricingModel.PER_UNIT
    assert (premium.currency, premium.unit_amount, premium.package_rounding) == (
        "USD",
        Decimal("0.002"),
        PackageRounding.UNSPECIFIED,
    )
    limited = catalog.plan("limited")
    assert limited is not None
    calls = next(t for t in limited.meters if t.meter_slug == "calls")
    assert (calls.limit, calls.reset_period, calls.limit_enforcement) == (
        Decimal(5),
        ResetPeriod.DAY,
        LimitEnforcement.HARD,
    )

    async def with_the_async_client() -> None:
        async with AsyncMeteringClient(Connection(target=service.target)) as client:
            first = await client.list_customers(page_size=1)
            assert len(first.customers) == 1 and first.next_page_token
            second = await client.list_customers(page_size=1, page_token=first.next_page_token)
            assert second.customers[0].customer_id.encode() > first.customers[0].customer_id.encode()
            assert (await client.get_catalog()) == catalog

    asyncio.run(with_the_async_client())
