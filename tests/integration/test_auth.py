"""Who may call: bearer tokens, roles, meter restrictions, open health and
reflection, per-caller metrics, and start-up refusals, against a real server."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from metering.api.auth import METHOD_ROLES
from metering.domain.access import caller_entry, new_token, token_digest
from metering.v1 import (
    billing_pb2,
    catalog_pb2,
    customer_pb2,
    events_pb2,
    ingest_pb2,
    metering_service_pb2,
    metering_service_pb2_grpc,
    usage_pb2,
)
from tests.support import TEST_CATALOG, ServiceProcess, error_info, health_status, metric_value, run_sql

# Slow tier: a service of its own with an auth file, and services that must fail to start.
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub
SERVICE = metering_service_pb2.DESCRIPTOR.services_by_name["MeteringService"]


@dataclass
class Secured:
    service: ServiceProcess
    tokens: dict[str, str]  # caller name -> token
    channel: grpc.Channel

    @property
    def stub(self) -> Stub:
        return metering_service_pb2_grpc.MeteringServiceStub(self.channel)

    def as_caller(self, name: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[name]}"),)


CALLERS = {
    "recorder-svc": (["recorder"], None),
    "reader-svc": (["reader"], None),
    "admin-svc": (["admin"], None),
    "tokens-only": (["recorder", "reader"], ["tokens"]),
}


def write_auth_file(directory: Path, tokens: dict[str, str]) -> Path:
    path = directory / "callers.toml"
    path.write_text(
        "".join(
            caller_entry(name, roles, token_digests=[token_digest(tokens[name])], meters=meters)
            for name, (roles, meters) in CALLERS.items()
        )
    )
    return path


@pytest.fixture(scope="module")
def secured(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tokens = {name: new_token() for name in CALLERS}
    auth_file = write_auth_file(tmp_path_factory.mktemp("auth"), tokens)
    service = ServiceProcess(database_url, extra_env={"METERING_AUTH_FILE": str(auth_file)}).start()
    try:
        with grpc.insecure_channel(service.target) as channel:
            yield Secured(service, tokens, channel)
    finally:
        service.stop()


def customer_for(secured: Secured) -> str:
    customer = f"auth-{uuid.uuid4().hex[:12]}"
    request = customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="limited")
    secured.stub.UpsertCustomer(request, timeout=10, metadata=secured.as_caller("admin-svc"))
    return customer


def call(stub: Stub, method: str, metadata: Any = ()) -> grpc.StatusCode:
    """Call `method` with an empty request; the status code it answers."""
    descriptor = SERVICE.methods_by_name[method]
    try:
        if descriptor.client_streaming:
            getattr(stub, method)(iter([ingest_pb2.RecordUsageStreamRequest()]), timeout=10, metadata=metadata)
        elif descriptor.server_streaming:
            # The answer to a stream comes with its first message: a watch
            # allowed in waits for one until its deadline.
            request_class = message_factory.GetMessageClass(descriptor.input_type)
            next(iter(getattr(stub, method)(request_class(), timeout=2, metadata=metadata)))
        else:
            request_class = message_factory.GetMessageClass(descriptor.input_type)
            getattr(stub, method)(request_class(), timeout=10, metadata=metadata)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def reason(error: grpc.RpcError) -> str:
    return str(error_info(error).reason)


def test_every_method_of_the_service_has_a_role() -> None:
    assert set(METHOD_ROLES) == set(SERVICE.methods_by_name)


@pytest.mark.parametrize("method", sorted(SERVICE.methods_by_name))
def test_a_call_without_credentials_is_unauthenticated(secured: Secured, method: str) -> None:
    assert call(secured.stub, method) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("header", "expected_reason"),
    [
        (None, "CREDENTIALS_MISSING"),
        ("Bearer mtr_not-a-token-we-issued", "CREDENTIALS_INVALID"),
        ("Bearer ", "CREDENTIALS_INVALID"),
        ("Basic dXNlcjpwYXNz", "CREDENTIALS_INVALID"),
        ("mtr_without_scheme", "CREDENTIALS_INVALID"),
    ],
)
def test_missing_or_wrong_credentials_say_which(secured: Secured, header: str | None, expected_reason: str) -> None:
    metadata = () if header is None else (("authorization", header),)
    request = usage_pb2.CheckBalanceRequest(customer_id="anyone")
    with pytest.raises(grpc.RpcError) as caught:
        secured.stub.CheckBalance(request, timeout=10, metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(caught.value) == expected_reason
    assert "mtr_" not in (caught.value.details() or "")  # never echo a credential


def test_a_token_of_another_caller_with_a_changed_character_is_refused(secured: Secured) -> None:
    token = secured.tokens["reader-svc"]
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    with pytest.raises(grpc.RpcError) as caught:
        secured.stub.CheckBalance(
            usage_pb2.CheckBalanceRequest(customer_id="x"),
            timeout=10,
            metadata=(("authorization", f"Bearer {forged}"),),
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("caller", ["recorder-svc", "reader-svc", "admin-svc"])
@pytest.mark.parametrize("method", sorted(SERVICE.methods_by_name))
def test_each_role_may_call_exactly_its_methods(secured: Secured, caller: str, method: str) -> None:
    code = call(secured.stub, method, secured.as_caller(caller))
    role = caller.removesuffix("-svc")
    if METHOD_ROLES[method].value == role:
        # Allowed: the empty request is then refused by validation, not by auth.
        assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), code
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED


def test_a_role_refusal_names_caller_method_and_role(secured: Secured) -> None:
    request = usage_pb2.RecordUsageRequest(customer_id="c", meter_slug="tokens", quantity="1", transaction_id="t")
    with pytest.raises(grpc.RpcError) as caught:
        secured.stub.RecordUsage(request, timeout=10, metadata=secured.as_caller("reader-svc"))
    info = error_info(caught.value)
    assert info.reason == "ROLE_REQUIRED"
    assert dict(info.metadata) == {
        "caller": "reader-svc",
        "method": "RecordUsage",
        "required_role": "recorder",
    }


def test_health_and_reflection_need_no_credentials(secured: Secured) -> None:
    assert health_status(secured.service.target) == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(secured.channel)
    [answer] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert "metering.v1.MeteringService" in [s.name for s in answer.list_services_response.service]


def test_meter_restricted_token_uses_its_meters_only(secured: Secured) -> None:
    stub, customer = secured.stub, customer_for(secured)
    limited, recorder = secured.as_caller("tokens-only"), secured.as_caller("recorder-svc")

    def record(meter: str, txn: str, metadata: Any) -> usage_pb2.RecordUsageResponse:
        quantity = "2" if meter == "tokens" else ""
        request = usage_pb2.RecordUsageRequest(
            customer_id=customer, meter_slug=meter, quantity=quantity, transaction_id=txn
        )
        return stub.RecordUsage(request, timeout=10, metadata=metadata)

    assert record("tokens", "ok-1", limited).balance.used == "2"
    with pytest.raises(grpc.RpcError) as caught:
        record("calls", "no-1", limited)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(caught.value) == "METER_NOT_ALLOWED"

    # In a batch the refused event fails alone.
    batch = ingest_pb2.RecordUsageBatchRequest(
        events=[
            usage_pb2.RecordUsageRequest(customer_id=customer, meter_slug="tokens", quantity="1", transaction_id="b1"),
            usage_pb2.RecordUsageRequest(customer_id=customer, meter_slug="calls", transaction_id="b2"),
        ]
    )
    results = stub.RecordUsageBatch(batch, timeout=10, metadata=limited).results
    assert [r.status.code for r in results] == [0, grpc.StatusCode.PERMISSION_DENIED.value[0]]

    # Voiding an event of another meter is refused before anything changes.
    record("calls", "theirs", recorder)
    void = events_pb2.VoidUsageRequest(customer_id=customer, transaction_id="theirs", reason="not mine")
    with pytest.raises(grpc.RpcError) as caught:
        stub.VoidUsage(void, timeout=10, metadata=limited)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    voids = run_sql(secured.service.database_url, "SELECT count(*) FROM usage_voids WHERE customer_id = $1", customer)
    assert voids[0][0] == 0

    # Reads: its meter yes; "every meter" (no meter, or a bill) no.
    balance = usage_pb2.CheckBalanceRequest(customer_id=customer, meter_slug="tokens")
    assert stub.CheckBalance(balance, timeout=10, metadata=limited).balances[0].used == "3"
    for method, request in (
        ("CheckBalance", usage_pb2.CheckBalanceRequest(customer_id=customer)),
        ("EstimateBill", billing_pb2.EstimateBillRequest(customer_id=customer)),
        ("ListUsageEvents", events_pb2.ListUsageEventsRequest(customer_id=customer)),
        ("GetCatalog", catalog_pb2.GetCatalogRequest()),  # the catalog spans every meter
    ):
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, method)(request, timeout=10, metadata=limited)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
        assert reason(caught.value) == "METER_NOT_ALLOWED"
    # Customers are no meter's: the listing is a read like GetCustomer.
    listed = stub.ListCustomers(customer_pb2.ListCustomersRequest(page_size=1000), timeout=10, metadata=limited)
    assert customer in [c.customer_id for c in listed.customers]
    rows = run_sql(
        secured.service.database_url, "SELECT transaction_id FROM usage_events WHERE customer_id = $1", customer
    )
    assert sorted(r[0] for r in rows) == ["b1", "ok-1", "theirs"]


def test_requests_are_counted_by_caller_and_no_credential_leaks(secured: Secured) -> None:
    def scrape() -> str:
        url = f"http://127.0.0.1:{secured.service.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    method = "/metering.v1.MeteringService/CheckBalance"

    def count(text: str, code: str, caller: str) -> float:
        return metric_value(
            text, "metering_grpc_requests_total", method=method, code=code, caller=caller, protocol="grpc"
        )

    before = scrape()
    customer = customer_for(secured)
    request = usage_pb2.CheckBalanceRequest(customer_id=customer)
    for _ in range(3):
        secured.stub.CheckBalance(request, timeout=10, metadata=secured.as_caller("reader-svc"))
    for metadata in ((), (("authorization", "Bearer mtr_wrong"),)):
        with pytest.raises(grpc.RpcError):
            secured.stub.CheckBalance(request, timeout=10, metadata=metadata)
    with pytest.raises(grpc.RpcError):
        secured.stub.CheckBalance(request, timeout=10, metadata=secured.as_caller("recorder-svc"))
    after = scrape()
    assert count(after, "OK", "reader-svc") - count(before, "OK", "reader-svc") == 3
    assert count(after, "UNAUTHENTICATED", "unauthenticated") - count(before, "UNAUTHENTICATED", "unauthenticated") == 2
    delta = count(after, "PERMISSION_DENIED", "recorder-svc") - count(before, "PERMISSION_DENIED", "recorder-svc")
    assert delta == 1
    log = "".join(secured.service.output)
    for token in secured.tokens.values():
        assert token not in after and token not in log
        assert token_digest(token) not in after and token_digest(token) not in log
    assert "auth on (4 callers)" in log


def _start_failure(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "METERING_GRPC_PORT": "0", "METERING_HTTP_PORT": "0", "METERING_METRICS_PORT": "0"}
    return subprocess.run(
        [sys.executable, "-m", "metering", "serve"],
        env={**base, "METERING_CATALOG": str(TEST_CATALOG), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_external_database_without_callers_refuses_to_start(database_url: str) -> None:
    result = _start_failure({"METERING_DATABASE_URL": database_url})
    assert result.returncode == 2
    assert "no callers configured: set METERING_AUTH_FILE" in result.stderr


def test_a_bad_auth_file_is_refused_with_every_problem(database_url: str, tmp_path: Path) -> None:
    pasted = new_token()
    path = tmp_path / "callers.toml"
    path.write_text(
        f"""
        [callers.gateway]
        roles = ["recorder", "owner"]
        token_sha256 = ["{pasted}"]
        meters = ["tokens", "nope"]
        [callers."bad name!"]
        roles = ["reader"]
        [callers.twin]
        roles = ["reader"]
        token_sha256 = "{token_digest("x")}"
        [callers.twin2]
        roles = ["reader"]
        token_sha256 = "{token_digest("x")}"
        """
    )
    result = _start_failure({"METERING_DATABASE_URL": database_url, "METERING_AUTH_FILE": str(path)})
    assert result.returncode == 2
    for problem in (
        "callers.gateway.roles: unknown role 'owner'",
        "callers.gateway.token_sha256: expected 64 hexadecimal digits (this looks like a token",
        "callers.gateway.meters: no meter 'nope' in the catalog",
        "callers.bad name!: a caller name is 1 to 64 characters",
        "callers.bad name!: needs token_sha256 or certificate_cn",
        "callers.twin2.token_sha256: also the token of 'twin'",
    ):
        assert problem in result.stderr, result.stderr
    assert pasted not in result.stderr


def test_running_open_says_so_loudly(service: ServiceProcess) -> None:
    log = "".join(service.output)
    assert "AUTHENTICATION IS OFF" in log
    assert "auth OFF (open to anyone)" in log


def test_message_size_limit_refuses_an_oversized_request_cleanly(
    stub: Stub, new_customer: Callable[..., str], service: ServiceProcess
) -> None:
    customer = new_customer()
    # 5 MiB of transaction ids: over the default 4 MiB, refused before it is decoded.
    events = [
        usage_pb2.RecordUsageRequest(customer_id=customer, meter_slug="tokens", quantity="1", transaction_id="x" * 5000)
        for _ in range(1050)
    ]
    with pytest.raises(grpc.RpcError) as caught:
        stub.RecordUsageBatch(ingest_pb2.RecordUsageBatchRequest(events=events), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    rows = run_sql(service.database_url, "SELECT count(*) FROM usage_events WHERE customer_id = $1", customer)
    assert rows[0][0] == 0
    # The server is unharmed: the next call is served.
    request = usage_pb2.RecordUsageRequest(customer_id=customer, meter_slug="tokens", quantity="1", transaction_id="t")
    assert stub.RecordUsage(request, timeout=10).balance.used == "1"
