"""Wallets end to end: prepaid credit in money, burned in the transaction that records usage.

These tests run their own service (and a second replica) on their own database with
tests/wallets_catalog.toml, whose `prepaid` plan prices tokens with graduated tiers (0.01 up to
100, then 0.005 plus a 0.25 flat up to 1000, then 0.001) and images with volume
tiers (0.10 each up to 3 images, 0.05 each from the 4th); `wallet` prices the
same but does not require credit (10 tokens included).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc
import pytest

from metering.v1 import billing_pb2, customer_pb2, ingest_pb2, metering_service_pb2_grpc, usage_pb2, wallets_pb2
from tests.support import (
    ROOT,
    ServiceProcess,
    calls_across,
    error_details,
    error_info,
    record,
    run_sql,
    stamp,
    violated_fields,
)
from tests.support import audit as audit_with

# Slow tier: a service (and a second replica) of their own, on a catalog of their own.
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub
WALLETS_CATALOG = ROOT / "tests" / "wallets_catalog.toml"


@pytest.fixture(scope="module")
def database_url(make_database: Callable[[], str]) -> str:
    return make_database()


@pytest.fixture(scope="module")
def service(database_url: str) -> Iterator[ServiceProcess]:
    process = ServiceProcess(database_url, catalog=WALLETS_CATALOG).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def second_service(database_url: str, service: ServiceProcess) -> Iterator[ServiceProcess]:
    """Another replica on the same database."""
    replica = ServiceProcess(database_url, catalog=WALLETS_CATALOG).start()
    yield replica
    replica.stop()


@pytest.fixture(scope="module")
def stub(service: ServiceProcess) -> Iterator[Stub]:
    with grpc.insecure_channel(service.target) as channel:
        yield metering_service_pb2_grpc.MeteringServiceStub(channel)


@pytest.fixture(scope="module")
def new_customer(stub: Stub) -> Callable[..., str]:
    def create(plan: str = "plain") -> str:
        customer_id = f"cust-{uuid.uuid4().hex[:16]}"
        request = customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug=plan)
        request.billing_anchor_time.FromDatetime(datetime.now(UTC) - timedelta(days=3))
        stub.UpsertCustomer(request, timeout=10)
        return customer_id

    return create


def audit(database_url: str, customers: list[str]) -> Any:
    return audit_with(database_url, customers, catalog=WALLETS_CATALOG)


def top_up(
    stub: Stub, customer: str, grant_id: str, amount: str, **fields: Any
) -> wallets_pb2.GrantWalletCreditResponse:
    request = wallets_pb2.GrantWalletCreditRequest(
        customer_id=customer,
        grant_id=grant_id,
        amount=billing_pb2.Money(currency_code=fields.pop("currency", "USD"), amount=amount),
        **fields,
    )
    return stub.GrantWalletCredit(request, timeout=10)


def wallet(stub: Stub, customer: str, include_inactive: bool = False) -> wallets_pb2.WalletSummary:
    request = wallets_pb2.GetWalletRequest(customer_id=customer, include_inactive=include_inactive)
    return stub.GetWallet(request, timeout=10).wallet


def remaining(stub: Stub, customer: str) -> dict[str, Decimal]:
    return {g.grant_id: Decimal(g.remaining.amount) for g in wallet(stub, customer, include_inactive=True).grants}


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_prepaid_usage_burns_the_exact_marginal_cost_and_is_refused_past_the_credit(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer("prepaid")
    # Nothing to pay with: a priced event is refused, with the figures.
    error = refused(lambda: record(stub, customer, "t0", "1"))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error)
    assert info.reason == "CREDITS_EXHAUSTED"
    assert dict(info.metadata) == {
        "meter": "tokens",
        "plan": "prepaid",
        "currency": "USD",
        "cost": "0.01",
        "available": "0",
    }
    quota = error_details(error)["QuotaFailure"]
    assert [v.subject for v in quota.violations] == [f"wallet:{customer}"]  # type: ignore[attr-defined]

    granted = top_up(stub, customer, "topup-1", "2.00", reason="first top-up")
    assert not granted.duplicate
    assert granted.grant.remaining.amount == "2.00"
    assert granted.wallet.available.amount == "2.00" and granted.wallet.prepaid
    # 90 tokens at 0.01 = 0.90; 20 more cross into the second tier: 10 at 0.01,
    # 10 at 0.005 and its 0.25 flat = 0.40 (marginal); 1.30 in all, 0.70 left.
    record(stub, customer, "t1", "90")
    record(stub, customer, "t2", "20")
    assert remaining(stub, customer) == {"topup-1": Decimal("0.70")}
    # 200 more would cost 1.00: refused, nothing written, credit untouched.
    error = refused(lambda: record(stub, customer, "t3", "200"))
    assert Decimal(error_info(error).metadata["cost"]) == Decimal("1.00")
    assert Decimal(error_info(error).metadata["available"]) == Decimal("0.70")
    # 140 costs exactly 0.70: the wallet reaches exactly zero.
    record(stub, customer, "t4", "140")
    assert remaining(stub, customer) == {"topup-1": Decimal(0)}
    assert refused(lambda: record(stub, customer, "t5", "1")).code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # A replay of an accepted event is still a duplicate, not a refusal.
    assert record(stub, customer, "t4", "140").duplicate
    # Notifications: credits.low (below 0.5) once, credits.exhausted once for this generation.
    rows = run_sql(
        database_url, "SELECT type, dedupe_key FROM notifications WHERE customer_id = $1 ORDER BY type", customer
    )
    assert [(r["type"], r["dedupe_key"]) for r in rows] == [
        ("credits.exhausted", "credits.exhausted/USD/0"),
        ("credits.exhausted", "credits.exhausted/USD/1"),
        ("credits.low", "credits.low/USD/1"),
    ]
    assert audit(database_url, [customer]).ok


def test_a_top_up_re_arms_the_notifications_and_usage_resumes(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer("prepaid")
    top_up(stub, customer, "a", "0.60")
    record(stub, customer, "t1", "60")  # 0.60: low and exhausted
    top_up(stub, customer, "b", "1")
    record(stub, customer, "t2", "60")  # 0.40 + ... crosses low again under generation 2
    types = run_sql(
        database_url, "SELECT dedupe_key FROM notifications WHERE customer_id = $1 ORDER BY dedupe_key", customer
    )
    assert [r["dedupe_key"] for r in types] == ["credits.exhausted/USD/1", "credits.low/USD/1", "credits.low/USD/2"]


def test_grants_burn_by_priority_then_expiry_then_effective_time(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer("prepaid")
    now = datetime.now(UTC)
    top_up(stub, customer, "late-expiry", "0.10", expire_time=stamp(now + timedelta(days=20)))
    top_up(stub, customer, "never", "0.10")
    top_up(stub, customer, "soon", "0.10", expire_time=stamp(now + timedelta(days=2)))
    top_up(stub, customer, "urgent", "0.10", priority=-1, category=billing_pb2.CREDIT_CATEGORY_PROMOTIONAL)
    top_up(stub, customer, "images-only", "1", priority=-5, meter_slugs=["images"])
    order = [g.grant_id for g in wallet(stub, customer).grants]
    assert order == ["images-only", "urgent", "soon", "late-expiry", "never"]
    record(stub, customer, "t1", "25")  # 0.25: urgent, soon, then half of late-expiry (images-only: not tokens)
    assert remaining(stub, customer) == {
        "images-only": Decimal(1),
        "urgent": Decimal(0),
        "soon": Decimal(0),
        "late-expiry": Decimal("0.05"),
        "never": Decimal("0.10"),
    }
    assert audit(database_url, [customer]).ok


def test_a_volume_tier_that_makes_usage_cheaper_gives_credit_back(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer("prepaid")
    top_up(stub, customer, "first", "0.25", priority=1)
    top_up(stub, customer, "second", "1", priority=2)
    for n in range(3):  # 3 images at 0.10: first pays 0.25, second 0.05
        record(stub, customer, f"i{n}", meter="images")
    assert remaining(stub, customer) == {"first": Decimal(0), "second": Decimal("0.95")}
    # The 4th image puts all 4 at 0.05: 0.20 in all, 0.10 less than before.
    # The credit comes back in reverse burn order: second first, then first.
    record(stub, customer, "i3", meter="images")
    assert remaining(stub, customer) == {"first": Decimal("0.05"), "second": Decimal(1)}
    assert audit(database_url, [customer]).ok


def test_a_void_gives_the_credit_back(stub: Stub, new_customer: Callable[..., str], database_url: str) -> None:
    customer = new_customer("prepaid")
    top_up(stub, customer, "g", "1")
    record(stub, customer, "t1", "30")
    record(stub, customer, "t2", "20")
    assert remaining(stub, customer) == {"g": Decimal("0.50")}
    from metering.v1 import events_pb2

    stub.VoidUsage(events_pb2.VoidUsageRequest(customer_id=customer, transaction_id="t1", reason="test"), timeout=10)
    assert remaining(stub, customer) == {"g": Decimal("0.80")}
    assert audit(database_url, [customer]).ok


def test_a_batch_burns_its_events_in_order(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer("prepaid")
    top_up(stub, customer, "g", "0.50")
    events = [
        usage_pb2.RecordUsageRequest(customer_id=customer, meter_slug="tokens", quantity=q, transaction_id=f"b{i}")
        for i, q in enumerate(["30", "30", "5", "1"])  # 0.30, then 0.30 does not fit, 0.05 and 0.01 do
    ]
    response = stub.RecordUsageBatch(ingest_pb2.RecordUsageBatchRequest(events=events), timeout=10)
    assert [r.status.code for r in response.results] == [0, 8, 0, 0]  # 8: RESOURCE_EXHAUSTED
    assert error_info(response.results[1].status).reason == "CREDITS_EXHAUSTED"
    assert remaining(stub, customer) == {"g": Decimal("0.14")}


def test_grant_ids_are_idempotency_keys(stub: Stub, new_customer: Callable[..., str]) -> None:
    customer = new_customer("prepaid")
    first = top_up(stub, customer, "g", "5", reason="top-up")
    again = top_up(stub, customer, "g", "5", reason="top-up")
    assert again.duplicate and again.grant.create_time == first.grant.create_time
    assert wallet(stub, customer).available.amount == "5.00"
    error = refused(lambda: top_up(stub, customer, "g", "6", reason="top-up"))
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert error_info(error).reason == "IDEMPOTENCY_KEY_CONFLICT"
    error = refused(lambda: top_up(stub, customer, "eur", "5", currency="EUR"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["amount.currency_code"]
    error = refused(lambda: top_up(stub, customer, "neg", "-1"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_check_balance_answers_the_wallet_and_counts_credit_for_requests(
    stub: Stub, new_customer: Callable[..., str]
) -> None:
    customer = new_customer("prepaid")
    top_up(stub, customer, "g", "0.50")
    ask = usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug="tokens", requested_quantity="50")
    answer = stub.CheckBalance(ask, timeout=10)
    assert answer.requested_allowed  # 50 tokens cost exactly 0.50
    assert answer.wallet.available.amount == "0.50"
    assert [g.grant_id for g in answer.wallet.grants] == ["g"]
    ask.requested_quantity = "51"
    assert not stub.CheckBalance(ask, timeout=10).requested_allowed
    # A customer without a wallet on a plan that needs none: no wallet in the answer.
    plain = new_customer()
    answer = stub.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id=plain), timeout=10)
    assert not answer.HasField("wallet")


def test_without_prepaid_the_grants_pay_what_they_can_and_the_bill_shows_them(
    stub: Stub, new_customer: Callable[..., str], database_url: str
) -> None:
    customer = new_customer("wallet")
    top_up(stub, customer, "promo", "0.30", priority=0, category=billing_pb2.CREDIT_CATEGORY_PROMOTIONAL)
    top_up(stub, customer, "paid", "0.20", priority=1)
    # 10 tokens included; 60 billable at 0.01 = 0.60: promo 0.30, paid 0.20, 0.10 billed.
    record(stub, customer, "t1", "70")
    assert remaining(stub, customer) == {"promo": Decimal(0), "paid": Decimal(0)}
    bill = stub.EstimateBill(billing_pb2.EstimateBillRequest(customer_id=customer), timeout=10)
    assert bill.subtotal.amount == "0.60"
    assert [(c.grant_id, c.amount.amount, c.category) for c in bill.credits_applied] == [
        ("paid", "0.20", billing_pb2.CREDIT_CATEGORY_PAID),
        ("promo", "0.30", billing_pb2.CREDIT_CATEGORY_PROMOTIONAL),
    ]
    assert bill.credits.amount == "-0.50"
    assert bill.total.amount == "0.10"
    assert audit(database_url, [customer]).ok


def test_a_wallet_is_burned_to_exactly_zero_across_two_processes_then_refuses(
    service: ServiceProcess, second_service: ServiceProcess, database_url: str, new_customer: Callable[..., str]
) -> None:
    customer = new_customer(plan="prepaid")  # tokens at 0.01 each up to 100
    with grpc.insecure_channel(service.target) as channel:
        wallets_stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        # Two grants, so that the race crosses from one to the other as well.
        for grant_id, amount in (("first", "0.37"), ("second", "0.63")):
            wallets_stub.GrantWalletCredit(
                wallets_pb2.GrantWalletCreditRequest(
                    customer_id=customer,
                    grant_id=grant_id,
                    amount=billing_pb2.Money(currency_code="USD", amount=amount),
                    priority=0 if grant_id == "first" else 1,
                ),
                timeout=10,
            )
    # $1.00 of credit, 200 one-token calls at $0.01 in flight at once, alternating
    # between the two replicas (each coalesces its calls into batches).
    requests = [
        usage_pb2.RecordUsageRequest(
            customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=f"burn-{i}"
        )
        for i in range(200)
    ]
    codes = calls_across([service, second_service], "RecordUsage", requests)
    assert codes.count(grpc.StatusCode.OK) == 100
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 100
    grants = run_sql(
        database_url, "SELECT grant_id, remaining FROM credit_grants WHERE customer_id = $1 ORDER BY grant_id", customer
    )
    assert [(r["grant_id"], r["remaining"]) for r in grants] == [("first", 0), ("second", 0)]
    burned = run_sql(
        database_url,
        "SELECT sum(b.value::numeric) FROM wallet_spend s CROSS JOIN LATERAL jsonb_each_text(s.burned) b "
        "WHERE s.customer_id = $1",
        customer,
    )
    assert burned[0][0] == 1  # exactly the credit, never more
    # And after it, on either replica: refused for credit.
    for target in (service, second_service):
        with grpc.insecure_channel(target.target) as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.RecordUsage(
                    usage_pb2.RecordUsageRequest(
                        customer_id=customer, meter_slug="tokens", quantity="1", transaction_id=f"after-{target.port}"
                    ),
                    timeout=10,
                )
            assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_info(caught.value).reason == "CREDITS_EXHAUSTED"
    assert audit(database_url, [customer]).ok


def test_a_finalized_invoice_keeps_the_credit_applied_per_grant(make_database: Callable[[], str]) -> None:
    from metering.v1 import invoices_pb2
    from tests.integration.test_invoices import FAST_CLOSING, period_ending_soon
    from tests.support import wait_for

    url = make_database()
    closing = ServiceProcess(url, catalog=WALLETS_CATALOG, extra_env=FAST_CLOSING).start()
    try:
        with grpc.insecure_channel(closing.target) as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            anchor, start, _, _ = period_ending_soon(4)
            customer = f"cust-{uuid.uuid4().hex[:16]}"
            request = customer_pb2.UpsertCustomerRequest(
                customer_id=customer, plan_slug="wallet", billing_anchor_time=stamp(anchor)
            )
            stub.UpsertCustomer(request, timeout=10)
            # Grants effective from the period's start: the event is dated in it.
            since = stamp(start)
            top_up(
                stub, customer, "promo", "0.30", category=billing_pb2.CREDIT_CATEGORY_PROMOTIONAL, effective_time=since
            )
            top_up(stub, customer, "paid", "0.20", priority=1, effective_time=since)
            record(stub, customer, "t1", "70", event_time=stamp(start + timedelta(seconds=1)))

            def finalized() -> list[Any]:
                listing = stub.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id=customer), timeout=10)
                return [i for i in listing.invoices if i.status == billing_pb2.INVOICE_STATUS_FINALIZED]

            assert wait_for(lambda: finalized(), timeout=60)
            [invoice] = finalized()
            assert invoice.subtotal.amount == "0.60"
            assert [(c.grant_id, c.amount.amount) for c in invoice.credits_applied] == [
                ("paid", "0.20"),
                ("promo", "0.30"),
            ]
            assert (invoice.credits.amount, invoice.total.amount) == ("-0.50", "0.10")
            assert audit_with(url, [customer], catalog=WALLETS_CATALOG).ok
    finally:
        closing.stop()
