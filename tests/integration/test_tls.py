"""TLS and mTLS: the server's certificate, required client certificates, and a
client certificate's common name standing for a caller."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from metering.domain.access import caller_entry, new_token, token_digest
from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.certificates import CertificateAuthority, Issued
from tests.support import ServiceProcess, error_info

# Slow tier: services of their own with certificates.
pytestmark = pytest.mark.slow


@dataclass
class MutualTls:
    service: ServiceProcess
    ca: CertificateAuthority
    reader: Issued  # CN billing-ui: a configured caller with the reader role
    stranger: Issued  # signed by the CA, but no caller has its CN
    impostor: Issued  # CN billing-ui, signed by another CA
    admin_token: str


@pytest.fixture(scope="module")
def mtls(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MutualTls]:
    directory = tmp_path_factory.mktemp("tls")
    ca = CertificateAuthority(directory, "metering-test-ca")
    server = ca.issue("metering.internal", server=True)
    other_ca = CertificateAuthority(directory, "other-ca")
    admin_token = new_token()
    auth_file = directory / "callers.toml"
    auth_file.write_text(
        caller_entry("billing-ui", ["reader"], certificate_cn="billing-ui")
        + caller_entry("ops", ["admin", "recorder"], token_digests=[token_digest(admin_token)])
    )
    env = {
        "METERING_AUTH_FILE": str(auth_file),
        "METERING_TLS_CERT": str(server.cert),
        "METERING_TLS_KEY": str(server.key),
        "METERING_TLS_CLIENT_CA": str(ca.cert),
    }
    service = ServiceProcess(database_url, extra_env=env).start()
    try:
        yield MutualTls(
            service=service,
            ca=ca,
            reader=ca.issue("billing-ui"),
            stranger=ca.issue("someone-else"),
            impostor=other_ca.issue("billing-ui"),
            admin_token=admin_token,
        )
    finally:
        service.stop()


def secure_channel(mtls: MutualTls, client: Issued | None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=mtls.ca.cert.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )
    return grpc.secure_channel(mtls.service.target, credentials)


def check_balance(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> usage_pb2.CheckBalanceResponse:
    stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
    return stub.CheckBalance(usage_pb2.CheckBalanceRequest(customer_id="nobody"), timeout=5, metadata=metadata)


def refusal(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        check_balance(channel, metadata)
    return caught.value


def test_the_certificate_common_name_is_the_caller(mtls: MutualTls) -> None:
    with secure_channel(mtls, mtls.reader) as channel:
        # Authenticated as billing-ui (reader): the call reaches the ledger.
        assert refusal(channel).code() == grpc.StatusCode.NOT_FOUND
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        request = usage_pb2.RecordUsageRequest(customer_id="c", meter_slug="tokens", quantity="1", transaction_id="t")
        with pytest.raises(grpc.RpcError) as caught:
            stub.RecordUsage(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert dict(error_info(caught.value).metadata)["caller"] == "billing-ui"


def test_a_bearer_token_takes_precedence_over_the_certificate(mtls: MutualTls) -> None:
    with secure_channel(mtls, mtls.reader) as channel:
        stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
        customer = f"tls-{uuid.uuid4().hex[:8]}"
        metadata = (("authorization", f"Bearer {mtls.admin_token}"),)
        stub.UpsertCustomer(
            customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="open"), timeout=5, metadata=metadata
        )
        request = usage_pb2.RecordUsageRequest(
            customer_id=customer, meter_slug="tokens", quantity="4", transaction_id="t"
        )
        assert stub.RecordUsage(request, timeout=5, metadata=metadata).balance.used == "4"


def test_a_verified_certificate_of_no_caller_is_unauthenticated(mtls: MutualTls) -> None:
    with secure_channel(mtls, mtls.stranger) as channel:
        error = refusal(channel)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).reason == "CREDENTIALS_MISSING"


@pytest.mark.parametrize("who", ["no client certificate", "another CA's certificate", "plaintext"])
def test_the_handshake_refuses_clients_without_a_trusted_certificate(mtls: MutualTls, who: str) -> None:
    if who == "plaintext":
        channel = grpc.insecure_channel(mtls.service.target)
    else:
        channel = secure_channel(mtls, None if who == "no client certificate" else mtls.impostor)
    with channel:
        assert refusal(channel).code() == grpc.StatusCode.UNAVAILABLE


def test_the_cli_connects_with_tls_options(mtls: MutualTls) -> None:
    env = {
        **os.environ,
        "METERING_CLIENT_TLS_CA": str(mtls.ca.cert),
        "METERING_CLIENT_TLS_CERT": str(mtls.reader.cert),
        "METERING_CLIENT_TLS_KEY": str(mtls.reader.key),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "metering", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    health = run("healthcheck", "--target", mtls.service.target)
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr
    balance = run("balance", "--target", mtls.service.target, "nobody")
    assert balance.returncode == 1
    assert "NOT_FOUND: customer 'nobody' not found" in balance.stderr
    denied = run("record", "--target", mtls.service.target, "nobody", "tokens", "1")
    assert "PERMISSION_DENIED: caller 'billing-ui' may not call RecordUsage" in denied.stderr


def test_the_client_library_connects_with_mtls_and_a_token(mtls: MutualTls) -> None:
    from metering.client import Connection, MeteringClient, NotFound, RoleRequired

    certificate = Connection(
        target=mtls.service.target, tls_ca=mtls.ca.cert, tls_cert=mtls.reader.cert, tls_key=mtls.reader.key
    )
    with MeteringClient(certificate) as client:
        with pytest.raises(NotFound):  # authenticated as billing-ui (reader): the call reached the ledger
            client.check_balance("nobody")
        with pytest.raises(RoleRequired) as denied:
            client.record_usage("nobody", "tokens", 1, transaction_id="t")
    assert (denied.value.caller, denied.value.required_role) == ("billing-ui", "recorder")
    customer = f"tls-lib-{uuid.uuid4().hex[:8]}"
    with MeteringClient(
        Connection(
            target=mtls.service.target,
            tls_ca=mtls.ca.cert,
            tls_cert=mtls.reader.cert,
            tls_key=mtls.reader.key,
            token=mtls.admin_token,
        )
    ) as client:
        assert client.upsert_customer(customer, "open").created
        assert client.record_usage(customer, "tokens", 4, transaction_id="t").balance.used == 4


def test_tls_settings_are_checked_at_start_up(database_url: str, tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin:/bin", "METERING_DATABASE_URL": database_url, "METERING_ALLOW_UNAUTHENTICATED": "1"}
    cases = [
        ({"METERING_TLS_CERT": "/nonexistent"}, "METERING_TLS_CERT and METERING_TLS_KEY go together"),
        (
            {"METERING_TLS_CERT": str(tmp_path / "missing.crt"), "METERING_TLS_KEY": str(tmp_path / "missing.key")},
            "cannot read it",
        ),
        ({"METERING_TLS_CLIENT_CA": "/nonexistent"}, "METERING_TLS_CLIENT_CA needs METERING_TLS_CERT"),
    ]
    for env, message in cases:
        result = subprocess.run(
            [sys.executable, "-m", "metering", "serve"], env={**base, **env}, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
