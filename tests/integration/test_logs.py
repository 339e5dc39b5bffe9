"""JSON log lines (METERING_LOG_FORMAT=json) from a real service process:
every line of its stderr is one JSON object, and a failed call's line says
which method, code, caller, how long and under which trace."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from metering.domain.access import caller_entry, new_token, token_digest
from metering.v1 import customer_pb2, metering_service_pb2_grpc, usage_pb2
from tests.otlp_receiver import otlp_receiver
from tests.support import ServiceProcess

# Slow tier: services of their own (log settings).
pytestmark = pytest.mark.slow

RECORD = "/metering.v1.MeteringService/RecordUsage"
UPSERT = "/metering.v1.MeteringService/UpsertCustomer"


def test_every_stderr_line_is_json_and_failed_calls_carry_their_fields(
    database_url: str, tmp_path: Path, new_customer: Callable[..., str]
) -> None:
    token = new_token()
    auth_file = tmp_path / "callers.toml"
    auth_file.write_text(caller_entry("json-logger", ["recorder"], token_digests=[token_digest(token)]))
    stderr = tmp_path / "stderr.log"
    customer = new_customer(plan="open")
    trace_id = secrets.token_hex(16)
    metadata = (("authorization", f"Bearer {token}"), ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"))
    with otlp_receiver() as receiver:
        service = ServiceProcess(
            database_url,
            extra_env={
                "METERING_AUTH_FILE": str(auth_file),
                "METERING_LOG_FORMAT": "json",
                "METERING_LOG_LEVEL": "DEBUG",  # refusals are logged at DEBUG
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            },
            stderr_path=stderr,
        ).start()
        try:
            with grpc.insecure_channel(service.target) as channel:
                stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
                bad = usage_pb2.RecordUsageRequest(
                    customer_id=customer, meter_slug="tokens", quantity="-1", transaction_id=uuid.uuid4().hex
                )
                with pytest.raises(grpc.RpcError) as invalid:
                    stub.RecordUsage(bad, timeout=10, metadata=metadata)
                assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                with pytest.raises(grpc.RpcError) as denied:  # a recorder may not manage customers
                    stub.UpsertCustomer(
                        customer_pb2.UpsertCustomerRequest(customer_id=customer, plan_slug="open"),
                        timeout=10,
                        metadata=metadata,
                    )
                assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            assert service.stop() == 0  # stopped: everything it logged is in the file

    lines = stderr.read_text().splitlines()
    assert lines
    records: list[dict[str, Any]] = [json.loads(line) for line in lines]  # every line, or this fails
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        assert datetime.fromisoformat(record["time"]).utcoffset() is not None
    failed = {record["method"]: record for record in records if "method" in record}
    assert set(failed) == {RECORD, UPSERT}
    for method, code in ((RECORD, "INVALID_ARGUMENT"), (UPSERT, "PERMISSION_DENIED")):
        record = failed[method]
        assert record["code"] == code
        assert record["caller"] == "json-logger"
        assert record["protocol"] == "grpc"
        assert record["level"] == "DEBUG"
        assert record["logger"] == "metering.api.interceptor"
        assert isinstance(record["duration_ms"], float) and record["duration_ms"] > 0
        assert record["trace_id"] == trace_id
        assert len(record["span_id"]) == 16
        assert record["message"] == f"{method} failed: {code}"
    # The start-up and shutdown lines go the same way.
    assert any(record["logger"] == "metering.runtime.serve" and record["message"] == "stopped" for record in records)
