"""The HTTP edge of services of their own: bearer tokens and roles, rate limits
answered 429 with Retry-After, CORS for a configured origin, the shutdown delay
on /healthz, and METERING_HTTP_PORT=off."""

from __future__ import annotations

import signal
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from metering.domain.access import caller_entry, new_token, token_digest
from tests.http_edge import SERVICE_PATH, call, details, refusal_info
from tests.support import ServiceProcess, metric_value

# Slow tier: services of their own (an auth file, a shutdown).
pytestmark = pytest.mark.slow

ORIGIN = "http://app.example.test:8000"
RECORD = f"{SERVICE_PATH}/RecordUsage"
CALLERS = {
    "recorder-svc": (["recorder"], ""),
    "reader-svc": (["reader"], ""),
    "admin-svc": (["admin"], ""),
    # One call, then one a second: the second call at once is RATE_LIMITED.
    "throttled": (["recorder", "reader"], "requests_per_second = 0.5\nburst = 1\n"),
}


@dataclass
class Secured:
    service: ServiceProcess
    tokens: dict[str, str]
    http: httpx.Client

    def auth(self, caller: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[caller]}"}


@pytest.fixture(scope="module")
def secured(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tokens = {name: new_token() for name in CALLERS}
    auth_file = tmp_path_factory.mktemp("auth") / "callers.toml"
    auth_file.write_text(
        "".join(
            caller_entry(name, roles, token_digests=[token_digest(tokens[name])]) + limits
            for name, (roles, limits) in CALLERS.items()
        )
    )
    env = {
        "METERING_AUTH_FILE": str(auth_file),
        "METERING_RATE_LIMIT_HOLD": "0s",  # answer a refusal at once
        "METERING_HTTP_CORS_ORIGINS": f"{ORIGIN}, https://other.example.test",
    }
    service = ServiceProcess(database_url, extra_env=env).start()
    try:
        with httpx.Client(base_url=service.http_url, timeout=10) as http:
            yield Secured(service, tokens, http)
    finally:
        service.stop()


def new_customer(secured: Secured) -> str:
    customer = f"http-{uuid.uuid4().hex[:12]}"
    body = {"customerId": customer, "planSlug": "limited"}
    assert call(secured.http, "", "UpsertCustomer", body, secured.auth("admin-svc")).status_code == 200
    return customer


def record_body(customer: str) -> dict[str, str]:
    return {"customerId": customer, "meterSlug": "tokens", "quantity": "1", "transactionId": uuid.uuid4().hex}


def test_calls_without_known_credentials_are_401(secured: Secured) -> None:
    customer = new_customer(secured)
    missing = call(secured.http, "", "RecordUsage", record_body(customer))
    assert (missing.status_code, missing.json()["code"]) == (401, "unauthenticated")
    assert refusal_info(missing).reason == "CREDENTIALS_MISSING"
    wrong = call(secured.http, "", "RecordUsage", record_body(customer), {"authorization": "Bearer nope"})
    assert (wrong.status_code, refusal_info(wrong).reason) == (401, "CREDENTIALS_INVALID")
    basic = call(secured.http, "", "RecordUsage", record_body(customer), {"authorization": "Basic dTpw"})
    assert refusal_info(basic).reason == "CREDENTIALS_INVALID"
    # Health stays open, as the gRPC health does.
    assert secured.http.get("/healthz").status_code == 200


def test_a_caller_without_the_role_is_403(secured: Secured) -> None:
    customer = new_customer(secured)
    denied = call(secured.http, "", "RecordUsage", record_body(customer), secured.auth("reader-svc"))
    assert (denied.status_code, denied.json()["code"]) == (403, "permission_denied")
    info = refusal_info(denied)
    assert info.reason == "ROLE_REQUIRED"
    assert dict(info.metadata) == {"caller": "reader-svc", "method": "RecordUsage", "required_role": "recorder"}
    allowed = call(secured.http, "", "RecordUsage", record_body(customer), secured.auth("recorder-svc"))
    assert allowed.status_code == 200
    read = call(secured.http, "", "CheckBalance", {"customerId": customer}, secured.auth("reader-svc"))
    assert read.json()["balances"][0]["used"] == "1"
    text = secured.service.scrape()
    labels = {"method": RECORD, "protocol": "connect"}
    assert metric_value(text, "metering_grpc_requests_total", code="OK", caller="recorder-svc", **labels) >= 1
    assert (
        metric_value(text, "metering_grpc_requests_total", code="PERMISSION_DENIED", caller="reader-svc", **labels) >= 1
    )


def test_rate_limited_is_429_with_retry_after(secured: Secured) -> None:
    customer = new_customer(secured)
    headers = secured.auth("throttled")
    answers = [call(secured.http, "", "RecordUsage", record_body(customer), headers) for _ in range(2)]
    assert answers[0].status_code == 200
    limited = answers[1]
    assert (limited.status_code, limited.json()["code"]) == (429, "resource_exhausted")
    found = details(limited)
    assert found["ErrorInfo"].reason == "RATE_LIMITED"  # type: ignore[attr-defined]
    delay = found["RetryInfo"].retry_delay  # type: ignore[attr-defined]
    # Whole seconds, rounded up from the RetryInfo delay: never earlier than the limit allows.
    assert int(limited.headers["retry-after"]) == delay.seconds + (1 if delay.nanos else 0)
    assert 1 <= int(limited.headers["retry-after"]) <= 2
    # Out of credits and rate limited are told apart by their status alone.
    assert limited.status_code != 402


def test_cors_answers_the_configured_origins_only(secured: Secured) -> None:
    preflight = secured.http.options(
        RECORD,
        headers={
            "origin": ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, x-grpc-web, authorization",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    customer = new_customer(secured)
    answer = call(
        secured.http, "", "RecordUsage", record_body(customer), {**secured.auth("recorder-svc"), "origin": ORIGIN}
    )
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "grpc-status-details-bin" in answer.headers["access-control-expose-headers"]
    stranger = secured.http.options(
        RECORD, headers={"origin": "https://evil.example.test", "access-control-request-method": "POST"}
    )
    assert stranger.status_code == 403
    refused = call(secured.http, "", "RecordUsage", record_body(customer), {"origin": "https://evil.example.test"})
    assert "access-control-allow-origin" not in refused.headers


def test_healthz_is_503_during_the_shutdown_delay_while_calls_still_succeed(database_url: str) -> None:
    service = ServiceProcess(database_url, extra_env={"METERING_SHUTDOWN_DELAY": "5s"}).start()
    assert service.process is not None
    try:
        with httpx.Client(base_url=service.http_url, timeout=10) as http:
            customer = f"http-stop-{uuid.uuid4().hex[:8]}"
            assert call(http, "", "UpsertCustomer", {"customerId": customer, "planSlug": "open"}).status_code == 200
            assert http.get("/healthz").status_code == 200
            service.process.send_signal(signal.SIGTERM)
            for _ in range(100):
                health = http.get("/healthz")
                if health.status_code == 503:
                    break
            assert (health.status_code, health.text) == (503, "NOT_SERVING\n")
            # NOT_SERVING, and still serving: on this connection and on a new one.
            assert call(http, "", "RecordUsage", record_body(customer)).status_code == 200
            with httpx.Client(base_url=service.http_url, timeout=10) as fresh:
                assert call(fresh, "", "RecordUsage", record_body(customer)).status_code == 200
        assert service.process.wait(timeout=30) == 0
    finally:
        service.stop()


def test_the_http_port_can_be_turned_off(database_url: str, tmp_path: Path) -> None:
    service = ServiceProcess(database_url, extra_env={"METERING_HTTP_PORT": "off"}).start()
    try:
        assert service.http_port == 0
        assert "HTTP off" in "".join(service.output)
    finally:
        assert service.stop() == 0


def test_a_taken_http_port_is_one_clear_line(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = ServiceProcess(database_url, extra_env={"METERING_HTTP_PORT": str(port)})
        with pytest.raises(RuntimeError, match="did not start"):
            service.start(timeout=30)
    output = "".join(service.output)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in output
    assert "Traceback" not in output
    assert service.stop() == 2
