"""How the client tells an outage from a refusal, over real sockets: nothing listening is
reported at once as Unreachable by both clients and both recorders; the clients wait for
the service only when asked; check_balance fails open only when asked, only for an
outage, and never for a refusal of the real service; usage is recorded by price without
a meter.

(The service that is up but answers UNAVAILABLE, and the client that waits for a service
starting after its call, are in test_client_outage.py: they start services of their own.)
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest

from metering.client import (
    NO_RETRIES,
    AsyncMeteringClient,
    Connection,
    FailOpenNotice,
    InvalidRequest,
    MeteringClient,
    NotFound,
    RetryNotice,
    SyncUsageRecorder,
    Unavailable,
    Unreachable,
    UsageRecord,
    UsageRecorder,
)
from tests.support import ServiceProcess


@pytest.fixture
def nothing_listens() -> Iterator[str]:
    """A loopback target whose port this test holds bound but not listening: connecting is refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{held.getsockname()[1]}"


def test_nothing_listening_is_reported_at_once_by_both_clients(nothing_listens: str) -> None:
    # The default policy (5 attempts within 30 s) and a 10 s deadline per attempt: the 30 s
    # this used to take. Unreachable after one attempt and no retry is the proof that the
    # client neither waited for the service nor retried (waiting ends in DEADLINE_EXCEEDED).
    retries: list[RetryNotice] = []
    with (
        MeteringClient(Connection(target=nothing_listens), on_retry=retries.append) as client,
        pytest.raises(Unreachable) as blocking,
    ):
        client.check_balance("acme")

    async def in_asyncio() -> Unreachable:
        async with AsyncMeteringClient(Connection(target=nothing_listens), on_retry=retries.append) as client:
            with pytest.raises(Unreachable) as caught:
                await client.record_usage("acme", "tokens", 1, transaction_id="t1")
        return caught.value

    for error in (blocking.value, asyncio.run(in_asyncio())):
        assert str(error) == f"cannot reach metering at {nothing_listens}: connection refused"
        assert isinstance(error, Unavailable) and error.code == grpc.StatusCode.UNAVAILABLE
        assert (error.target, error.cause, error.attempts) == (nothing_listens, "connection refused", 1)
    assert retries == []


def test_a_name_that_does_not_resolve_is_unreachable_too() -> None:
    with MeteringClient(Connection(target="metering.invalid:50051")) as client, pytest.raises(Unreachable) as caught:
        client.get_customer("acme")
    assert str(caught.value) == "cannot reach metering at metering.invalid:50051: the name does not resolve"


def test_the_recorders_hand_unreachable_to_every_future(nothing_listens: str) -> None:
    with (
        MeteringClient(Connection(target=nothing_listens)) as client,
        SyncUsageRecorder(client, linger=0.0) as recorder,
    ):
        futures = [recorder.record(UsageRecord("acme", "tokens", 1, f"t{i}")) for i in range(3)]
    for future in futures:
        assert isinstance(future.exception(), Unreachable)

    async def in_asyncio() -> list[BaseException | None]:
        async with (
            AsyncMeteringClient(Connection(target=nothing_listens)) as client,
            UsageRecorder(client, linger=0.0) as recorder,
        ):
            waiting = [await recorder.record(UsageRecord("acme", "tokens", 1, f"t{i}")) for i in range(3)]
        return [f.exception() for f in waiting]

    assert all(isinstance(error, Unreachable) for error in asyncio.run(in_asyncio()))


def test_a_client_waits_for_the_service_only_when_asked(nothing_listens: str) -> None:
    # Asked to wait, the call waits for a connection until its deadline: DEADLINE_EXCEEDED, not Unreachable.
    connection = Connection(target=nothing_listens)
    with (
        MeteringClient(connection, wait_for_ready=True, timeout=0.3, retry=NO_RETRIES) as client,
        pytest.raises(Unavailable) as waited,
    ):
        client.check_balance("acme")
    assert not isinstance(waited.value, Unreachable)
    assert waited.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_check_balance_fails_open_during_an_outage_when_asked(
    nothing_listens: str, caplog: pytest.LogCaptureFixture
) -> None:
    notices: list[FailOpenNotice] = []
    connection = Connection(target=nothing_listens)
    with MeteringClient(connection, fail_open=True, on_fail_open=notices.append) as client:
        with caplog.at_level(logging.WARNING, logger="metering.client"):
            report = client.check_balance("acme", "tokens", requested=5)
        assert report.fail_open and report.requested_allowed is True and report.balances == ()
        assert report.customer_id == "acme"
        assert client.fail_open_count == 1
        [notice] = notices
        assert (notice.customer_id, notice.meter_slug, notice.requested) == ("acme", "tokens", "5")
        assert isinstance(notice.error, Unreachable)
        [line] = [r for r in caplog.records if r.name == "metering.client"]
        assert line.levelno == logging.WARNING
        assert line.getMessage() == (
            "check_balance failed open (answered allowed) for customer 'acme' meter 'tokens': "
            f"cannot reach metering at {nothing_listens}: connection refused after 1 attempt(s)"
        )
        # Off for one call: the outage is raised, and not counted.
        with pytest.raises(Unreachable):
            client.check_balance("acme", fail_open=False)
        assert client.fail_open_count == 1

    # Off by default.
    with MeteringClient(connection) as client, pytest.raises(Unreachable):
        client.check_balance("acme")

    async def in_asyncio() -> tuple[bool, int]:
        async with AsyncMeteringClient(connection) as client:
            answer = await client.check_balance("acme", fail_open=True)  # on for one call
            return answer.fail_open, client.fail_open_count

    assert asyncio.run(in_asyncio()) == (True, 1)


def test_a_refusal_never_fails_open(service: ServiceProcess, new_customer: Callable[..., str]) -> None:
    customer = new_customer()  # plan "limited": 100 tokens
    notices: list[FailOpenNotice] = []
    with MeteringClient(Connection(target=service.target), fail_open=True, on_fail_open=notices.append) as client:
        with pytest.raises(NotFound):
            client.check_balance(f"nobody-{uuid.uuid4().hex[:8]}")
        with pytest.raises(InvalidRequest) as invalid:
            client.check_balance(customer, "tokens", requested="lots")
        assert [v.field for v in invalid.value.field_violations] == ["requested_quantity"]
        # The service's "no" is an answer too: it does not fit, and that is what the report says.
        refused = client.check_balance(customer, "tokens", requested=101)
        assert refused.requested_allowed is False and not refused.fail_open
        assert client.check_balance(customer, "tokens", requested=100).requested_allowed is True
        assert client.fail_open_count == 0 and notices == []


def test_usage_is_recorded_by_price_without_a_meter(service: ServiceProcess, new_customer: Callable[..., str]) -> None:
    customer = new_customer("open")
    connection = Connection(target=service.target)
    with MeteringClient(connection) as client:
        recorded = client.record_usage(customer, price_slug="tokens_premium", quantity=3, transaction_id="p1")
        assert (recorded.event.meter_slug, recorded.event.price_slug) == ("tokens", "tokens_premium")
        with pytest.raises(TypeError, match="not both"):
            client.record_usage(customer, "tokens", 1, price_slug="tokens_premium", transaction_id="p2")
        with pytest.raises(TypeError, match="not neither"):
            client.record_usage(customer, quantity=1, transaction_id="p2")
        with SyncUsageRecorder(client, linger=0.0) as recorder:
            queued = recorder.record(
                UsageRecord(customer, price_slug="tokens_per_unit", quantity=2, transaction_id="p3")
            )
        assert queued.result().event.price_slug == "tokens_per_unit"

    async def in_asyncio() -> tuple[str, str]:
        async with AsyncMeteringClient(connection) as client:
            again = await client.record_usage(customer, price_slug="tokens_premium", quantity=3, transaction_id="p1")
            assert again.duplicate
            async with UsageRecorder(client, linger=0.0) as recorder:
                future = await recorder.record(
                    UsageRecord(customer, price_slug="tokens_premium", quantity=4, transaction_id="p4")
                )
            result = await future
            return result.event.meter_slug, result.event.price_slug

    assert asyncio.run(in_asyncio()) == ("tokens", "tokens_premium")
    with MeteringClient(connection) as client:
        assert client.check_balance(customer, "tokens").balances[0].used == 9
