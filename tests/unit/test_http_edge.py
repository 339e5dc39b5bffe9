"""The HTTP edge's pure decisions, without a database or a socket: the plain-HTTP
status and Retry-After of a refusal, the Idempotency-Key rule, the protocol
label, the handler names the generated Connect code calls, and its settings."""

from __future__ import annotations

import base64
from decimal import Decimal

import pytest
from connectrpc.code import Code
from google.rpc import status_pb2
from protobuf import message_to_json_value

from metering.api.errors import HTTP_STATUS_BY_REASON, http_status, retry_after, status_details, to_rpc_status
from metering.api.http.edge import SERVICE, connect_error, local_name, protocol_of
from metering.api.http.idempotency import IDEMPOTENCY_FIELDS, apply_idempotency_key
from metering.api.http.v1 import metering_service_connect
from metering.config.settings import ConfigError, Settings
from metering.domain import errors
from metering.v1 import events_pb2, grants_pb2, reservations_pb2, usage_pb2

LIMIT = errors.LimitExceeded(
    meter="tokens",
    plan="limited",
    unit="token",
    limit=Decimal("100"),
    available=Decimal("10"),
    requested=Decimal("20"),
    period_end=None,
)


def rate_limited(seconds: float) -> errors.RateLimited:
    return errors.RateLimited("svc", "rate", seconds, requests_per_second=1.0, burst=1.0, max_in_flight=None)


CREDITS = errors.CreditsExhausted(
    customer_id="c", meter="tokens", plan="prepaid", currency="USD", cost=Decimal("0.02"), available=Decimal("0.01")
)


def test_a_limit_is_402_and_rate_limiting_429_by_reason() -> None:
    assert http_status(to_rpc_status(LIMIT)) == 402
    assert http_status(to_rpc_status(CREDITS)) == 402
    assert http_status(to_rpc_status(rate_limited(0.5))) == 429
    # Every other refusal keeps the Connect protocol's status for its code.
    assert http_status(to_rpc_status(errors.NotFound("customer", "c"))) is None
    assert http_status(to_rpc_status(errors.Unauthenticated(missing=True))) is None
    assert set(HTTP_STATUS_BY_REASON) == {"LIMIT_EXCEEDED", "CREDITS_EXHAUSTED", "RATE_LIMITED"}


@pytest.mark.parametrize(("delay", "header"), [(0.0004, 1), (0.5, 1), (1.0, 1), (1.001, 2), (2.5, 3)])
def test_retry_after_is_the_retry_delay_rounded_up_to_whole_seconds(delay: float, header: int) -> None:
    assert retry_after(to_rpc_status(rate_limited(delay))) == header


def test_only_a_refusal_with_retry_info_has_a_retry_after() -> None:
    assert retry_after(to_rpc_status(LIMIT)) is None
    assert retry_after(to_rpc_status(errors.DatabaseUnavailable())) == 1


def test_a_refusal_keeps_its_code_message_and_details_in_connect() -> None:
    status = to_rpc_status(LIMIT)
    error = connect_error(status)
    assert error.code is Code.RESOURCE_EXHAUSTED
    assert error.message == status.message
    # The same details: each detail's bytes decode to the same google.rpc message.
    echoed = status_pb2.Status()
    for detail in error.details:
        echoed.details.add(type_url=f"type.googleapis.com/{detail.type_name}", value=detail.message_bytes)
    assert status_details(echoed) == status_details(status)
    assert [d.type_name for d in error.details] == ["google.rpc.ErrorInfo", "google.rpc.QuotaFailure"]
    # Each one a message connectrpc renders as `debug` JSON too.
    info = error.details[0].value()
    assert info is not None
    rendered = message_to_json_value(info)
    assert isinstance(rendered, dict) and rendered["reason"] == "LIMIT_EXCEEDED"
    assert connect_error(to_rpc_status(errors.NotFound("meter", "m"))).code is Code.NOT_FOUND
    assert base64.b64encode(error.details[0].message_bytes)  # bytes, sent as Connect's base64 value


def test_the_idempotency_key_fills_an_empty_id() -> None:
    request = usage_pb2.RecordUsageRequest(customer_id="c")
    apply_idempotency_key("RecordUsage", request, ["key-1"])
    assert request.transaction_id == "key-1"
    same = usage_pb2.RecordUsageRequest(transaction_id="key-1")
    apply_idempotency_key("RecordUsage", same, ["key-1"])
    assert same.transaction_id == "key-1"
    hold = reservations_pb2.ReserveUsageRequest()
    apply_idempotency_key("ReserveUsage", hold, ["r"])
    grant = grants_pb2.GrantCreditsRequest()
    apply_idempotency_key("GrantCredits", grant, ["g"])
    assert (hold.reservation_id, grant.grant_id) == ("r", "g")


def test_a_different_id_in_the_body_is_invalid_argument_on_its_field() -> None:
    request = usage_pb2.RecordUsageRequest(transaction_id="body")
    with pytest.raises(errors.InvalidArgument) as refused:
        apply_idempotency_key("RecordUsage", request, ["header"])
    [violation] = refused.value.violations
    assert violation.field == "transaction_id" and "Idempotency-Key" in violation.description
    assert request.transaction_id == "body"
    with pytest.raises(errors.InvalidArgument):
        apply_idempotency_key("RecordUsage", usage_pb2.RecordUsageRequest(), ["a", "b"])


def test_other_rpcs_ignore_the_header() -> None:
    void = events_pb2.VoidUsageRequest(transaction_id="t")
    apply_idempotency_key("VoidUsage", void, ["other"])
    assert void.transaction_id == "t"
    assert set(IDEMPOTENCY_FIELDS) == {"RecordUsage", "ReserveUsage", "GrantCredits", "IssueCreditNote"}


def test_each_idempotency_field_is_a_string_field_of_its_request() -> None:
    requests = {method.name: method.input_type for method in SERVICE.methods}
    for rpc, field in IDEMPOTENCY_FIELDS.items():
        assert requests[rpc].fields_by_name[field].type == requests[rpc].fields_by_name[field].TYPE_STRING


def test_the_protocol_label_comes_from_the_content_type() -> None:
    assert protocol_of("application/json") == "connect"
    assert protocol_of("application/connect+proto") == "connect"
    assert protocol_of("application/grpc-web+proto") == "grpc-web"
    assert protocol_of("application/grpc-web-text") == "grpc-web"
    assert protocol_of("application/grpc+proto") == "grpc"


def test_every_rpc_has_the_handler_name_the_generated_code_calls() -> None:
    protocol = metering_service_connect.MeteringService
    generated = {name for name in vars(protocol) if not name.startswith("_")}
    assert {local_name(method.name) for method in SERVICE.methods} == generated
    assert local_name("RecordUsageBatch") == "record_usage_batch"


def test_http_settings() -> None:
    defaults = Settings.from_env({})
    # The gRPC host's default too: this machine only while authentication is off.
    assert (defaults.http_host, defaults.http_port, defaults.http_cors_origins) == ("127.0.0.1", 8080, ())
    assert Settings.from_env({"METERING_AUTH_FILE": "callers.toml"}).http_host == "0.0.0.0"
    follows = Settings.from_env({"METERING_GRPC_HOST": "10.0.0.5"})
    assert follows.http_host == "10.0.0.5"  # the gRPC host unless said otherwise
    configured = Settings.from_env(
        {
            "METERING_HTTP_HOST": "::1",
            "METERING_HTTP_PORT": "0",
            "METERING_HTTP_CORS_ORIGINS": "https://app.example.com, http://localhost:3000/",
        }
    )
    assert (configured.http_host, configured.http_port) == ("::1", 0)
    assert configured.http_cors_origins == ("https://app.example.com", "http://localhost:3000")
    assert Settings.from_env({"METERING_HTTP_PORT": "off"}).http_port is None
    assert Settings.from_env({"METERING_HTTP_CORS_ORIGINS": "*"}).http_cors_origins == ("*",)
    with pytest.raises(ConfigError, match="METERING_HTTP_CORS_ORIGINS"):
        Settings.from_env({"METERING_HTTP_CORS_ORIGINS": "app.example.com"})
    with pytest.raises(ConfigError, match="METERING_HTTP_PORT"):
        Settings.from_env({"METERING_HTTP_PORT": "http"})
