"""Log lines (metering.telemetry.logs) and the tracing rules that need no service."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import grpc
import pytest

from metering.config.settings import ConfigError, Settings
from metering.telemetry import logs

REFUSALS = [
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.CANCELLED,
]


def record(message: str = "hello %s", *args: object, **fields: object) -> logging.LogRecord:
    made = logging.LogRecord("metering.test", logging.ERROR, __file__, 1, message, args or ("world",), None)
    for name, value in fields.items():
        setattr(made, name, value)
    return made


def test_server_faults_are_loud_and_refusals_stay_below_info() -> None:
    for code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS):
        assert logs.failed_call_level(code) == logging.ERROR
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        assert logs.failed_call_level(code) == logging.WARNING
    for code in REFUSALS:
        assert logs.failed_call_level(code) == logging.DEBUG  # no per-call line at INFO


def test_a_failed_call_is_one_record_with_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("metering.test.calls")
    with caplog.at_level(logging.INFO, logger="metering.test.calls"):
        logs.failed_call(logger, "/s/Refused", grpc.StatusCode.NOT_FOUND, "acme", 0.5, "grpc")  # DEBUG: not at INFO
        logs.failed_call(logger, "/s/Broken", grpc.StatusCode.INTERNAL, "acme", 0.0123456, "connect")
    [line] = caplog.records
    assert (line.levelno, line.getMessage()) == (logging.ERROR, "/s/Broken failed: INTERNAL")
    assert (line.method, line.code, line.caller, line.duration_ms, line.protocol) == (  # type: ignore[attr-defined]
        "/s/Broken",
        "INTERNAL",
        "acme",
        12.346,
        "connect",
    )


def test_text_lines_append_the_fields_and_keep_a_traceback_below() -> None:
    formatter = logs.TextFormatter()
    plain = formatter.format(record())
    assert plain.endswith(" ERROR metering.test: hello world")
    traced = record(method="/s/M", code="INTERNAL", caller="acme", duration_ms=1.5, trace_id="ab" * 16)
    assert formatter.format(traced).endswith(
        f"hello world method=/s/M code=INTERNAL caller=acme duration_ms=1.5 trace_id={'ab' * 16}"
    )
    try:
        raise ValueError("boom")
    except ValueError:
        failing = record(trace_id="cd" * 16)
        failing.exc_info = sys.exc_info()
    first, *rest = formatter.format(failing).splitlines()
    assert first.endswith(f"hello world trace_id={'cd' * 16}")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"


def test_json_lines_are_one_object_per_record_even_with_a_traceback() -> None:
    formatter = logs.JsonFormatter()
    try:
        raise ValueError("two\nlines")
    except ValueError:
        failing = record(method="/s/M", code="INTERNAL", caller="acme", duration_ms=2.0, trace_id="ef" * 16)
        failing.exc_info = sys.exc_info()
    line = formatter.format(failing)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["level"] == "ERROR" and parsed["logger"] == "metering.test" and parsed["message"] == "hello world"
    assert parsed["time"].endswith("+00:00")
    fields = (parsed["method"], parsed["code"], parsed["caller"], parsed["duration_ms"])
    assert fields == ("/s/M", "INTERNAL", "acme", 2.0)
    assert parsed["trace_id"] == "ef" * 16
    assert parsed["exception"].endswith("ValueError: two\nlines")
    assert json.loads(formatter.format(record())).keys() == {"time", "level", "logger", "message"}
    # A value only str() can show (a library logging an object) still makes one line.
    assert json.loads(formatter.format(record(caller=object())))["caller"].startswith("<object")


def test_trace_ids_are_stamped_only_inside_a_span() -> None:
    inside = logs.TraceIds(lambda: ("a" * 32, "b" * 16))
    outside = logs.TraceIds(lambda: None)
    stamped, plain = record(), record()
    assert inside.filter(stamped) and outside.filter(plain)
    assert (stamped.trace_id, stamped.span_id) == ("a" * 32, "b" * 16)  # type: ignore[attr-defined]
    assert not hasattr(plain, "trace_id")


def test_log_format_and_tracing_settings() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"METERING_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="METERING_LOG_FORMAT"):
        Settings.from_env({"METERING_LOG_FORMAT": "xml"})
    assert not Settings.from_env({}).tracing
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert Settings.from_env(endpoint).tracing
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}).tracing
    assert not Settings.from_env({**endpoint, "OTEL_SDK_DISABLED": "true"}).tracing
    assert Settings.from_env({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).tracing
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        Settings.from_env({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    # The traces' own variable decides over the general one.
    both = {**endpoint, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    assert Settings.from_env(both).tracing


def test_tracing_off_imports_nothing_of_opentelemetry() -> None:
    """Off, the service's modules never load OpenTelemetry: nothing is
    installed, nothing costs anything."""
    probe = (
        "import sys, metering.runtime.serve, metering.api.interceptor, metering.ledger.writer; "
        "import metering.telemetry.logs; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_only_calls_start_traces() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import Decision
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

    from metering.telemetry.tracing import _start_at_calls

    sampler = _start_at_calls()
    trace_id = 0x1234
    for kind in (SpanKind.CLIENT, SpanKind.INTERNAL):  # a background statement, a span of no call
        assert sampler.should_sample(None, trace_id, "SELECT", kind).decision == Decision.DROP
    assert sampler.should_sample(None, trace_id, "/s/M", SpanKind.SERVER).decision == Decision.RECORD_AND_SAMPLE
    call = SpanContext(trace_id, 0x5678, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    inside = trace.set_span_in_context(NonRecordingSpan(call))
    assert sampler.should_sample(inside, trace_id, "SELECT", SpanKind.CLIENT).decision == Decision.RECORD_AND_SAMPLE
    # The default OTEL_TRACES_SAMPLER (parent based) still decides inside a trace.
    unsampled = trace.set_span_in_context(NonRecordingSpan(SpanContext(trace_id, 0x5678, is_remote=True)))
    assert sampler.should_sample(unsampled, trace_id, "SELECT", SpanKind.CLIENT).decision == Decision.DROP
