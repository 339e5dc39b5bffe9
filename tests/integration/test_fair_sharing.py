"""Fair sharing between callers: a flooding caller is refused RATE_LIMITED
(with RetryInfo, nothing written) while every call of another caller succeeds."""

from __future__ import annotations

import math
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import pytest

from metering.domain.access import caller_entry, new_token, token_digest
from metering.domain.rate_limits import MAX_RETRY_SECONDS
from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.support import ServiceProcess, error_details, metric_value, run_sql

# Slow tier: a service of its own with rate limits.
pytestmark = pytest.mark.slow

Stub = metering_service_pb2_grpc.MeteringServiceStub

# The flooder may send 20 calls per second (a burst of 10) and 4 at once.
FLOODER_LIMITS = "requests_per_second = 20\nburst = 10\nmax_in_flight = 4\n"


@dataclass
class Callers:
    service: ServiceProcess
    tokens: dict[str, str]
    channel: grpc.Channel

    def metadata(self, name: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[name]}"),)


@pytest.fixture(scope="module")
def callers(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callers]:
    tokens = {name: new_token() for name in ("flooder", "trickle", "steady", "admin")}
    path: Path = tmp_path_factory.mktemp("fair") / "callers.toml"
    path.write_text(
        caller_entry("flooder", ["recorder"], token_digests=[token_digest(tokens["flooder"])])
        + FLOODER_LIMITS
        + caller_entry("trickle", ["recorder"], token_digests=[token_digest(tokens["trickle"])])
        + "requests_per_second = 1\nburst = 3\n"
        + caller_entry("steady", ["recorder", "reader"], token_digests=[token_digest(tokens["steady"])])
        + caller_entry("admin", ["admin"], token_digests=[token_digest(tokens["admin"])])
    )
    service = ServiceProcess(database_url, extra_env={"METERING_AUTH_FILE": str(path)}).start()
    try:
        with grpc.insecure_channel(service.target) as channel:
            yield Callers(service, tokens, channel)
    finally:
        service.stop()


def customer(callers: Callers) -> str:
    customer_id = f"fair-{uuid.uuid4().hex[:12]}"
    Stub(callers.channel).UpsertCustomer(
        customer_pb2.UpsertCustomerRequest(customer_id=customer_id, plan_slug="open"),
        timeout=10,
        metadata=callers.metadata("admin"),
    )
    return customer_id


def record(customer_id: str, transaction_id: str) -> usage_pb2.RecordUsageRequest:
    return usage_pb2.RecordUsageRequest(
        customer_id=customer_id, meter_slug="tokens", quantity="1", transaction_id=transaction_id
    )


def test_a_flooding_caller_is_rate_limited_while_another_is_served(callers: Callers) -> None:
    stub = Stub(callers.channel)
    flooded, served = customer(callers), customer(callers)
    stop = threading.Event()
    answers: list[tuple[str, grpc.StatusCode, grpc.RpcError | None]] = []

    def flood() -> None:
        # Waves of 32 calls at once, far past the flooder's 4 in flight and 20 per second.
        wave = 0
        while not stop.is_set() and wave < 60:
            ids = [f"flood-{wave}-{i}" for i in range(32)]
            futures = [
                stub.RecordUsage.future(record(flooded, t), timeout=10, metadata=callers.metadata("flooder"))
                for t in ids
            ]
            for transaction_id, future in zip(ids, futures, strict=True):
                error = future.exception()
                if error is None:
                    answers.append((transaction_id, grpc.StatusCode.OK, None))
                else:
                    assert isinstance(error, grpc.RpcError)
                    answers.append((transaction_id, error.code(), error))
            wave += 1

    flooder = threading.Thread(target=flood)
    flooder.start()
    steady_codes = []
    try:
        for i in range(60):
            try:
                stub.RecordUsage(record(served, f"steady-{i}"), timeout=10, metadata=callers.metadata("steady"))
                steady_codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                steady_codes.append(error.code())
    finally:
        stop.set()
        flooder.join(60)
    assert steady_codes == [grpc.StatusCode.OK] * 60

    codes = Counter(code for _, code, _ in answers)
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert codes[grpc.StatusCode.OK] > 0 and codes[grpc.StatusCode.RESOURCE_EXHAUSTED] > 0, codes
    kinds: Counter[str] = Counter()
    for _, _, refused_error in answers:
        if refused_error is None:
            continue
        details = error_details(refused_error)
        info = details["ErrorInfo"]
        assert info.reason == "RATE_LIMITED"  # type: ignore[attr-defined]
        assert info.metadata["caller"] == "flooder"  # type: ignore[attr-defined]
        kinds[info.metadata["limit"]] += 1  # type: ignore[attr-defined]
        delay = details["RetryInfo"].retry_delay  # type: ignore[attr-defined]
        # Spread (metering.domain.rate_limits.CallerGate): from one token's refill up to MAX_RETRY_SECONDS.
        assert 0 < delay.seconds + delay.nanos / 1e9 <= MAX_RETRY_SECONDS + 0.001
    assert set(kinds) <= {"rate", "concurrency"} and kinds["concurrency"] > 0, kinds

    # Nothing written for a refused call: the ledger holds exactly the OK ones.
    rows = run_sql(
        callers.service.database_url, "SELECT transaction_id FROM usage_events WHERE customer_id = $1", flooded
    )
    assert {row["transaction_id"] for row in rows} == {t for t, code, _ in answers if code == grpc.StatusCode.OK}

    scraped = callers.service.scrape()
    refused = codes[grpc.StatusCode.RESOURCE_EXHAUSTED]
    counted = sum(
        metric_value(scraped, "metering_rate_limited_total", caller="flooder", reason=kind)
        for kind in ("rate", "concurrency")
    )
    assert counted == refused
    assert metric_value(scraped, "metering_rate_limited_total", caller="steady", reason="rate") == 0


def test_a_caller_over_its_rate_is_told_when_to_retry(callers: Callers) -> None:
    stub = Stub(callers.channel)
    flooded = customer(callers)
    # One at a time: only the bucket (3, refilling at 1 per second) can refuse.
    refusal = None
    for i in range(10):
        try:
            stub.RecordUsage(record(flooded, f"seq-{i}"), timeout=10, metadata=callers.metadata("trickle"))
        except grpc.RpcError as error:
            refusal = error
            break
    assert refusal is not None, "10 calls in a row passed a bucket of 3 refilling at 1 per second"
    assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error_details(refusal)
    info = details["ErrorInfo"]
    assert info.reason == "RATE_LIMITED"  # type: ignore[attr-defined]
    assert dict(info.metadata) == {  # type: ignore[attr-defined]
        "caller": "trickle",
        "limit": "rate",
        "requests_per_second": "1",
        "burst": "3",
    }
    delay = details["RetryInfo"].retry_delay  # type: ignore[attr-defined]
    seconds = delay.seconds + delay.nanos / 1e9
    assert 0 < seconds <= 1.001
    # The same delay for gRPC's own retries (a service config retrying RESOURCE_EXHAUSTED).
    # grpcio's stubs type metadata as objects; they are (key, value) pairs.
    trailer = dict(cast("list[tuple[str, str]]", list(refusal.trailing_metadata() or ())))
    assert int(trailer["grpc-retry-pushback-ms"]) == math.ceil(seconds * 1000)
    threading.Event().wait(seconds)
    # Waiting as told is enough.
    stub.RecordUsage(record(flooded, "after-the-wait"), timeout=10, metadata=callers.metadata("trickle"))
