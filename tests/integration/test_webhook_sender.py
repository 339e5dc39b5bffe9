"""One webhook POST over a real socket (no database): what each kind of answer
is as an attempt's outcome, and what the receiver gets."""

from __future__ import annotations

import asyncio
import base64
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from standardwebhooks.webhooks import Webhook

from metering.config.endpoints import Endpoint
from metering.delivery.webhooks import (
    DELIVERED,
    REFUSED,
    TIMEOUT,
    UNREACHABLE,
    Attempt,
    WebhookSender,
    make_session,
)
from metering.domain.notifications import NotificationType, Position, StoredNotification, ThresholdCrossed
from metering.domain.periods import Period
from metering.wire.notifications import notification_json
from tests.receiver import Answer, webhook_receiver

SECRETS = ("whsec_" + base64.b64encode(b"a" * 32).decode(), "whsec_" + base64.b64encode(b"b" * 32).decode())
START = datetime(2026, 12, 1, tzinfo=UTC)
NOTIFICATION = StoredNotification(
    notification_id=uuid.UUID("6a4f1f63-44f6-4f0d-9b0a-3f3c4d6f1e2a"),
    customer_id="acme",
    created_at=START + timedelta(days=3),
    position=Position(7, 1),
    payload=ThresholdCrossed(
        meter_slug="api_calls",
        plan_slug="pro",
        unit="call",
        period=Period(START, START + timedelta(days=31)),
        threshold_percent=Decimal(80),
        used=Decimal("160.5"),
        limit=Decimal(200),
        granted=Decimal(0),
        allowance=Decimal(200),
        percent_used=Decimal("80.25"),
    ),
)


def cursor_of(position: Position) -> str:
    return f"c{position.txid}.{position.seq}"


def send(url: str, times: int = 1, timeout: float = 5.0) -> list[Attempt]:
    endpoint = Endpoint(name="hooks", url=url, secrets=SECRETS, types=frozenset(NotificationType))

    async def run() -> list[Attempt]:
        session = make_session(timedelta(seconds=timeout))
        try:
            sender = WebhookSender(endpoint, session, cursor_of)
            return [await sender.send(NOTIFICATION) for _ in range(times)]
        finally:
            await session.close()

    return asyncio.run(run())


def test_a_2xx_is_delivered_signed_with_every_secret_and_the_same_id_each_time() -> None:
    with webhook_receiver() as receiver:
        assert send(receiver.url, times=3) == [Attempt(DELIVERED, "")] * 3
        received = receiver.delivered()
    assert len(received) == 3
    for request in received:
        assert request.body == notification_json(NOTIFICATION, "c7.1").encode()
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"] == "metering-webhooks/1"
        assert request.webhook_id == str(NOTIFICATION.notification_id)
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
        assert len(request.headers["webhook-signature"].split(" ")) == 2
        for secret in SECRETS:  # each verifies on its own, as while a secret rotates
            assert Webhook(secret).verify(request.body, request.headers)["customerId"] == "acme"


def answering(status: int) -> Answer:
    return lambda headers, body, before: status


def test_another_status_is_refused_and_a_redirect_is_not_followed() -> None:
    for status in (500, 404, 302):
        with webhook_receiver(answering(status)) as receiver:
            assert send(receiver.url) == [Attempt(REFUSED, f"HTTP {status}")]
            assert len(receiver.arrivals) == 1


def test_no_answer_within_the_timeout_is_a_timeout() -> None:
    def slow(headers: dict[str, str], body: bytes, before: int) -> int:
        time.sleep(1.0)
        return 200

    with webhook_receiver(slow) as receiver:
        started = time.monotonic()
        assert send(receiver.url, timeout=0.2) == [Attempt(TIMEOUT, "no answer within the timeout")]
        assert time.monotonic() - started < 0.9


def test_a_refused_connection_is_unreachable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (attempt,) = send(f"http://127.0.0.1:{port}/hooks")
    assert attempt.outcome == UNREACHABLE
    assert attempt.error
