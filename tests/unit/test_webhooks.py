"""Webhook signing, the retry schedule and the endpoints file: pure rules."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
import yarl
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from metering.config.endpoints import parse_endpoints
from metering.config.settings import ConfigError
from metering.delivery.webhooks import proxy_for, retry_delay, signature_header
from metering.domain.notifications import NotificationType

SECRET_A = "whsec_" + base64.b64encode(b"a" * 32).decode()
SECRET_B = "whsec_" + base64.b64encode(b"b" * 32).decode()
SVIX = tuple(timedelta(seconds=s) for s in (0, 5, 300, 1800, 7200, 18000, 36000, 36000))


def test_one_signature_per_secret_each_verifiable_by_the_library() -> None:
    at = datetime.now(UTC).replace(microsecond=0)
    body = '{"id":"n1"}'
    header = signature_header([SECRET_A, SECRET_B], "n1", at, body)
    assert len(header.split(" ")) == 2 and all(s.startswith("v1,") for s in header.split(" "))
    headers = {"webhook-id": "n1", "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": header}
    for secret in (SECRET_A, SECRET_B):
        assert Webhook(secret).verify(body, headers) == {"id": "n1"}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET_A).verify(body + " ", headers)  # a changed body
    other = "whsec_" + base64.b64encode(b"c" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


@given(attempts=st.integers(min_value=0, max_value=12), jitter=st.floats(min_value=0, max_value=0.999999))
def test_retry_delays_follow_the_schedule_within_the_jitter(attempts: int, jitter: float) -> None:
    delay = retry_delay(SVIX, attempts, jitter)
    if attempts >= len(SVIX):
        assert delay is None  # the last attempt was made: a dead letter
        return
    assert delay is not None
    planned = SVIX[attempts]
    assert planned * 0.8 <= delay <= planned * 1.2
    if planned == timedelta(0):
        assert delay == timedelta(0)  # "immediately" stays immediate


def test_an_endpoints_file_is_read() -> None:
    [endpoint] = parse_endpoints(
        f'[endpoints.billing]\nurl = "https://billing.internal/hooks"\nsecrets = ["{SECRET_A}", "{SECRET_B}"]\n'
        'types = ["usage.threshold_crossed", "invoice.finalized"]\n'
    )
    assert endpoint.name == "billing" and endpoint.url == "https://billing.internal/hooks"
    assert endpoint.secrets == (SECRET_A, SECRET_B)
    assert endpoint.types == {NotificationType.THRESHOLD_CROSSED, NotificationType.INVOICE_FINALIZED}


def test_every_problem_of_an_endpoints_file_is_reported_with_its_key() -> None:
    short = "whsec_" + base64.b64encode(b"k" * 8).decode()
    text = (
        "extra = 1\n"
        '[endpoints.a]\nurl = "ftp://example.com/x"\nsecrets = ["nope", "whsec_***", "' + short + '"]\n'
        'types = ["usage.nothing"]\ncolour = "red"\n'
        '[endpoints."bad name!"]\nurl = "https://example.com"\nsecrets = ["' + SECRET_A + '"]\n'
        'types = ["usage.limit_rejected"]\n'
        "[endpoints.b]\nurl = 3\n"
    )
    with pytest.raises(ConfigError) as refused:
        parse_endpoints(text, "METERING_WEBHOOKS_FILE='x.toml'")
    message = str(refused.value)
    for key in (
        "extra: unknown key",
        "endpoints.a.url: only http:// and https://",
        "endpoints.a.secrets[0]:",
        "endpoints.a.secrets[1]: not valid base64",
        "endpoints.a.secrets[2]: the key must be 24 to 64 bytes",
        "endpoints.a.types: unknown type 'usage.nothing'",
        "endpoints.a.colour: unknown key",
        "endpoints.bad name!: an endpoint name",
        "endpoints.b.url: required",
        "endpoints.b.secrets: required",
        "endpoints.b.types: required",
    ):
        assert key in message
    assert SECRET_A not in message  # secrets are never echoed
    with pytest.raises(ConfigError, match="define at least one"):
        parse_endpoints("")


def test_an_endpoints_proxy_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    url = yarl.URL("https://billing.internal/hooks")
    assert proxy_for(url) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert proxy_for(url) == "http://proxy.internal:3128"
    assert proxy_for(yarl.URL("http://billing.internal/hooks")) is None  # no HTTP_PROXY
    monkeypatch.setenv("ALL_PROXY", "http://all.internal:3128")
    assert proxy_for(yarl.URL("http://billing.internal/hooks")) == "http://all.internal:3128"
    monkeypatch.setenv("NO_PROXY", "billing.internal")
    assert proxy_for(url) is None
