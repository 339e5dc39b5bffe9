"""CheckBalance: the counter row, the plan's terms, periods, requested quantities."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc

from metering.v1 import metering_service_pb2_grpc, usage_pb2
from tests.support import ServiceProcess, coalescing, record, usage_request

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


# Under concurrent load, CheckBalance reads share statements
# (metering.ledger.counters): every answer must still be its caller's own.


async def _check(
    stub: metering_service_pb2_grpc.MeteringServiceAsyncStub, customer: str, meter: str = "", deadline: float = 10
) -> usage_pb2.CheckBalanceResponse:
    """CheckBalance on a grpc.aio channel's stub."""
    request = usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug=meter)
    return await stub.CheckBalance(request, timeout=deadline)


def test_concurrent_checks_each_answer_their_own_customer(
    service: ServiceProcess, stub: Stub, new_customer: Callable[..., str]
) -> None:
    used = {new_customer(): str(i + 1) for i in range(12)}
    for customer, quantity in used.items():
        record(stub, customer, "only", quantity)
    unknown = [f"nobody-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    asks = [(customer, meter) for customer in [*used, *unknown] for meter in ("", "tokens")] * 8
    random.Random(7).shuffle(asks)

    async def ask_all() -> list[usage_pb2.CheckBalanceResponse | BaseException]:
        async with grpc.aio.insecure_channel(service.target) as channel:
            aio_stub: metering_service_pb2_grpc.MeteringServiceAsyncStub = (
                metering_service_pb2_grpc.MeteringServiceStub(channel)
            )
            return await asyncio.gather(*(_check(aio_stub, c, m) for c, m in asks), return_exceptions=True)

    *_, statements_before, reads_before = coalescing(service)
    answers = asyncio.run(ask_all())
    *_, statements, reads = coalescing(service)
    # An unknown customer is refused before its counters are read. The
    # session's service is shared: other tests' reads may be counted too.
    assert reads - reads_before >= sum(customer in used for customer, _ in asks)
    assert statements - statements_before < reads - reads_before, "no statement carried more than one read"
    for (customer, meter), answer in zip(asks, answers, strict=True):
        if customer in unknown:
            assert isinstance(answer, grpc.aio.AioRpcError) and answer.code() == grpc.StatusCode.NOT_FOUND, answer
            continue
        assert isinstance(answer, usage_pb2.CheckBalanceResponse), answer
        assert answer.customer_id == customer and answer.plan_slug == "limited"
        meters = [b.meter_slug for b in answer.balances]
        assert meters == (["tokens"] if meter else ["tokens", "calls", "peak", "storage", "users"])
        assert answer.balances[0].used == used[customer]
        assert all(b.used == "0" for b in answer.balances[1:])


def test_concurrent_writers_read_their_writes(service: ServiceProcess, new_customer: Callable[..., str]) -> None:
    customers = [new_customer(plan="open") for _ in range(16)]

    async def write_then_read(stub: metering_service_pb2_grpc.MeteringServiceAsyncStub, customer: str) -> None:
        for i in range(1, 11):
            await stub.RecordUsage(usage_request(customer, f"t{i}"), timeout=10)
            assert (await _check(stub, customer, "tokens")).balances[0].used == str(i)

    async def run() -> None:
        async with grpc.aio.insecure_channel(service.target) as channel:
            aio_stub: metering_service_pb2_grpc.MeteringServiceAsyncStub = (
                metering_service_pb2_grpc.MeteringServiceStub(channel)
            )
            await asyncio.gather(*(write_then_read(aio_stub, customer) for customer in customers))

    asyncio.run(run())


def test_a_caller_giving_up_does_not_fail_the_reads_it_shared_a_statement_with(
    service: ServiceProcess, stub: Stub, new_customer: Callable[..., str]
) -> None:
    customer = new_customer()
    record(stub, customer, "only", "7")

    async def mixed() -> list[usage_pb2.CheckBalanceResponse | BaseException]:
        async with grpc.aio.insecure_channel(service.target) as channel:
            aio_stub: metering_service_pb2_grpc.MeteringServiceAsyncStub = (
                metering_service_pb2_grpc.MeteringServiceStub(channel)
            )
            # Every other call has a deadline too short to be answered.
            calls = [_check(aio_stub, customer, "tokens", deadline=0.002 if i % 2 else 10) for i in range(200)]
            return await asyncio.gather(*calls, return_exceptions=True)

    answers = asyncio.run(mixed())
    patient = answers[::2]
    assert all(isinstance(a, usage_pb2.CheckBalanceResponse) and a.balances[0].used == "7" for a in patient), [
        a for a in patient if not isinstance(a, usage_pb2.CheckBalanceResponse)
    ][:3]
    for impatient in answers[1::2]:
        if isinstance(impatient, BaseException):
            assert isinstance(impatient, grpc.aio.AioRpcError)
            assert impatient.code() == grpc.StatusCode.DEADLINE_EXCEEDED
