"""SIGHUP (and `metering reload`) re-read the auth and webhooks files of a
running service: a good file is applied with no call failing, a bad one is
refused with every problem logged and the old one stays; tokens may expire."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from metering.domain.access import caller_entry, new_token, token_digest
from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.receiver import Receiver, webhook_receiver
from tests.support import ServiceProcess, error_details, metric_value, wait_for

# Slow tier: services of their own, reloaded by signal.
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub


@dataclass
class Running:
    service: ServiceProcess
    auth_file: Path
    pid_file: Path
    channel: grpc.Channel

    @property
    def stub(self) -> Stub:
        return Stub(self.channel)

    def reloads(self, file: str, outcome: str) -> float:
        return metric_value(self.service.scrape(), "metering_config_reloads_total", file=file, outcome=outcome)

    def sighup_and_wait(self, file: str, outcome: str) -> None:
        """Send SIGHUP and wait until the service counted the reload's outcome."""
        before = self.reloads(file, outcome)
        assert self.service.process is not None
        self.service.process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: self.reloads(file, outcome) > before, timeout=10), self.service.output


def entries(tokens: dict[str, str], extra: str = "") -> str:
    text = caller_entry("admin", ["admin"], token_digests=[token_digest(tokens["admin"])])
    text += caller_entry("app", ["recorder", "reader"], token_digests=[token_digest(tokens["app"])])
    return text + extra


@pytest.fixture(scope="module")
def tokens() -> dict[str, str]:
    return {"admin": new_token(), "app": new_token()}


@pytest.fixture(scope="module")
def running(database_url: str, tmp_path_factory: pytest.TempPathFactory, tokens: dict[str, str]) -> Iterator[Running]:
    directory = tmp_path_factory.mktemp("reload")
    auth_file, pid_file = directory / "callers.toml", directory / "metering.pid"
    auth_file.write_text(entries(tokens))
    env = {"METERING_AUTH_FILE": str(auth_file), "METERING_PID_FILE": str(pid_file)}
    service = ServiceProcess(database_url, extra_env=env).start()
    try:
        with grpc.insecure_channel(service.target) as channel:
            yield Running(service, auth_file, pid_file, channel)
    finally:
        service.stop()
    assert not pid_file.exists()  # removed on the way out


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def new_customer(running: Running, tokens: dict[str, str]) -> str:
    customer_id = f"reload-{uuid.uuid4().hex[:12]}"
    request = customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug="open")
    running.stub.UpsertCustomer(request, timeout=10, metadata=bearer(tokens["admin"]))
    return customer_id


def balance(running: Running, customer_id: str, token: str) -> grpc.StatusCode:
    try:
        running.stub.CheckBalance(
            usage_pb2.CheckBalanceRequest(customer_id=customer_id, meter_slug="tokens"),
            timeout=10,
            metadata=bearer(token),
        )
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_the_pid_file_names_the_service(running: Running) -> None:
    assert running.service.process is not None
    assert running.pid_file.read_text().strip() == str(running.service.process.pid)


def test_a_new_token_works_after_reload_and_a_removed_one_stops(running: Running, tokens: dict[str, str]) -> None:
    customer_id = new_customer(running, tokens)
    newcomer = new_token()
    assert balance(running, customer_id, newcomer) == grpc.StatusCode.UNAUTHENTICATED
    running.auth_file.write_text(
        entries(tokens, caller_entry("newcomer", ["reader"], token_digests=[token_digest(newcomer)]))
    )
    running.sighup_and_wait("auth", "applied")
    assert balance(running, customer_id, newcomer) == grpc.StatusCode.OK
    assert balance(running, customer_id, tokens["app"]) == grpc.StatusCode.OK
    running.auth_file.write_text(entries(tokens))
    running.sighup_and_wait("auth", "applied")
    assert balance(running, customer_id, newcomer) == grpc.StatusCode.UNAUTHENTICATED


def test_a_bad_file_is_refused_with_every_problem_and_the_old_one_stays(
    running: Running, tokens: dict[str, str]
) -> None:
    customer_id = new_customer(running, tokens)
    running.auth_file.write_text(
        entries(tokens)
        + '[callers.broken]\nroles = ["nobody"]\ntoken_sha256 = "abc"\nmax_in_flight = 0\nsurprise = 1\n'
    )
    running.sighup_and_wait("auth", "refused")
    log = "".join(running.service.output)
    for problem in (
        "callers.broken.roles: unknown role 'nobody'",
        "callers.broken.token_sha256: expected 64 hexadecimal digits",
        "callers.broken.max_in_flight: expected a whole number of at least 1",
        "callers.broken.surprise: unknown key",
    ):
        assert problem in log
    assert balance(running, customer_id, tokens["app"]) == grpc.StatusCode.OK
    running.auth_file.write_text("[callers.app\n")  # not even TOML
    running.sighup_and_wait("auth", "refused")
    assert "not valid TOML" in "".join(running.service.output)
    assert balance(running, customer_id, tokens["app"]) == grpc.StatusCode.OK
    running.auth_file.write_text(entries(tokens))


def test_an_expired_token_is_refused_with_its_reason(running: Running, tokens: dict[str, str]) -> None:
    customer_id = new_customer(running, tokens)
    expired, lasting = new_token(), new_token()
    running.auth_file.write_text(
        entries(tokens) + '[callers.temp]\nroles = ["reader"]\ntoken_sha256 = [\n'
        f'  {{ sha256 = "{token_digest(expired)}", expires = 2020-01-01T00:00:00Z }},\n'
        f'  {{ sha256 = "{token_digest(lasting)}", expires = 2999-01-01 }},\n]\n'
    )
    running.sighup_and_wait("auth", "applied")
    assert balance(running, customer_id, lasting) == grpc.StatusCode.OK
    with pytest.raises(grpc.RpcError) as caught:
        running.stub.CheckBalance(
            usage_pb2.CheckBalanceRequest(customer_id=customer_id), timeout=10, metadata=bearer(expired)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired at 2020-01-01T00:00:00+00:00" in str(caught.value.details())
    info = error_details(caught.value)["ErrorInfo"]
    assert info.reason == "CREDENTIALS_EXPIRED"  # type: ignore[attr-defined]
    assert dict(info.metadata) == {"caller": "temp", "expired_at": "2020-01-01T00:00:00+00:00"}  # type: ignore[attr-defined]
    running.auth_file.write_text(entries(tokens))
    running.sighup_and_wait("auth", "applied")


def test_reloads_under_load_fail_no_call(running: Running, tokens: dict[str, str]) -> None:
    customer_id = new_customer(running, tokens)
    stop = threading.Event()
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()

    def load(worker: int) -> None:
        stub = Stub(running.channel)
        i = 0
        while not stop.is_set() and i < 2_000:
            request = usage_pb2.RecordUsageRequest(
                customer_id=customer_id, meter_slug="tokens", quantity="1", transaction_id=f"load-{worker}-{i}"
            )
            try:
                stub.RecordUsage(request, timeout=10, metadata=bearer(tokens["app"]))
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            with lock:
                codes.append(code)
            i += 1

    workers = [threading.Thread(target=load, args=(w,)) for w in range(8)]
    for worker in workers:
        worker.start()
    try:
        # Ten reloads, each with another caller list (limits that never bind
        # the loaded caller, a caller more or less), and one refused file.
        for round_ in range(10):
            extra = caller_entry(f"extra-{round_}", ["reader"], token_digests=[token_digest(new_token())])
            if round_ % 2:
                extra += "requests_per_second = 5\nmax_in_flight = 1\n"
            running.auth_file.write_text(entries(tokens, extra))
            running.sighup_and_wait("auth", "applied")
            time.sleep(0.1)
        running.auth_file.write_text("[callers]\nbroken = 1\n")
        running.sighup_and_wait("auth", "refused")
        time.sleep(0.2)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
        running.auth_file.write_text(entries(tokens))
    assert len(codes) > 50
    assert set(codes) == {grpc.StatusCode.OK}, {code: codes.count(code) for code in set(codes)}


def test_metering_reload_finds_the_service_by_its_pid_file(running: Running, tokens: dict[str, str]) -> None:
    newcomer = new_token()
    running.auth_file.write_text(
        entries(tokens, caller_entry("via-cli", ["reader"], token_digests=[token_digest(newcomer)]))
    )
    before = running.reloads("auth", "applied")
    env = {**os.environ, "METERING_PID_FILE": str(running.pid_file)}
    done = subprocess.run(
        [sys.executable, "-m", "metering", "reload"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "sent SIGHUP to process" in done.stdout
    assert wait_for(lambda: running.reloads("auth", "applied") > before, timeout=10)
    assert balance(running, new_customer(running, tokens), newcomer) == grpc.StatusCode.OK
    missing = subprocess.run(
        [sys.executable, "-m", "metering", "reload"],
        env={**os.environ, "METERING_PID_FILE": str(running.pid_file) + ".nope"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2 and "is the service running?" in missing.stderr
    running.auth_file.write_text(entries(tokens))


# -- the webhooks file ------------------------------------------------------------------


def webhook_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def endpoint(name: str, url: str) -> str:
    return f'[endpoints.{name}]\nurl = "{url}"\nsecrets = ["{webhook_secret()}"]\ntypes = ["usage.threshold_crossed"]\n'


def test_a_reloaded_webhooks_file_moves_delivery_and_a_bad_one_is_refused(database_url: str, tmp_path: Path) -> None:
    with webhook_receiver() as first, webhook_receiver() as second:
        path = tmp_path / "webhooks.toml"
        path.write_text(endpoint("first", first.url))
        env = {"METERING_WEBHOOKS_FILE": str(path), "METERING_NOTIFICATION_POLL": "200ms"}
        service = ServiceProcess(database_url, extra_env=env).start()
        try:

            def reloads(outcome: str) -> float:
                return metric_value(service.scrape(), "metering_config_reloads_total", file="webhooks", outcome=outcome)

            def sighup(outcome: str) -> None:
                before = reloads(outcome)
                assert service.process is not None
                service.process.send_signal(signal.SIGHUP)
                assert wait_for(lambda: reloads(outcome) > before, timeout=10), service.output

            with grpc.insecure_channel(service.target) as channel:
                stub = Stub(channel)

                def crossing() -> str:
                    """A customer whose first event crosses 80% of its limit (a notification)."""
                    customer_id = f"hooks-{uuid.uuid4().hex[:12]}"
                    stub.UpsertCustomer(
                        customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug="limited"), timeout=10
                    )
                    stub.RecordUsage(
                        usage_pb2.RecordUsageRequest(
                            customer_id=customer_id, meter_slug="tokens", quantity="90", transaction_id="t1"
                        ),
                        timeout=10,
                    )
                    return customer_id

                def customers(receiver: Receiver) -> set[str]:
                    return {json.loads(r.body)["customerId"] for r in receiver.delivered()}

                time.sleep(1.0)  # an endpoint's cursor starts "from now" at its first lease
                before = crossing()
                assert wait_for(lambda: before in customers(first), timeout=30)

                path.write_text(endpoint("second", second.url))
                sighup("applied")
                time.sleep(1.0)
                after = crossing()
                assert wait_for(lambda: after in customers(second), timeout=30)

                path.write_text('[endpoints.second]\nurl = "ftp://nowhere"\nsecrets = ["nope"]\n')
                sighup("refused")
                log = "".join(service.output)
                assert "endpoints.second.url" in log and "endpoints.second.secrets" in log
                still = crossing()
                assert wait_for(lambda: still in customers(second), timeout=30)  # the old file stays in force
                assert after not in customers(first) and still not in customers(first)
        finally:
            service.stop()
