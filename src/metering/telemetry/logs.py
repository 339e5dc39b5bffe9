"""Log lines: the one place that decides what a line says and how it is written.

Two formats (METERING_LOG_FORMAT), one line per record either way:

- `text` (the default): `time LEVEL logger: message`, then ` key=value` for
  the fields of a failed call and the trace ids;
- `json`: one JSON object per line with `time` (RFC 3339, UTC), `level`,
  `logger`, `message`, the same fields when the record has them, and
  `exception` (the traceback as one string) when one was logged.

A failed call is one record (each edge logs it through `failed_call`: the gRPC
interceptor, the HTTP edge) whose fields are `method`, `code` (the gRPC status
code's name, whatever the protocol), `caller`, `duration_ms` and `protocol`
(grpc, connect or grpc-web). `trace_id` and
`span_id` are added to every record logged inside a traced span (TraceIds,
installed when tracing is on), so an error line leads to its trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

# The record attributes a line shows beyond the message, in this order.
CALL_FIELDS = ("method", "code", "caller", "duration_ms", "protocol")
TRACE_FIELDS = ("trace_id", "span_id")
_FIELDS = CALL_FIELDS + TRACE_FIELDS

# The server's own failures, worth a page.
_ERROR_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
# The server could not answer (the database is down, or too slow): worth a look.
_WARNING_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def failed_call_level(code: grpc.StatusCode) -> int:
    """How loud the line of a failed call is. Refusals (the caller's request,
    credentials or limits were wrong; the caller went away) are DEBUG: a
    caller at its limit or with a bad token is refused call after call, and a
    line each at INFO would let any caller flood the log. Metrics count them."""
    if code in _ERROR_CODES:
        return logging.ERROR
    if code in _WARNING_CODES:
        return logging.WARNING
    return logging.DEBUG


def failed_call(
    logger: logging.Logger,
    method: str,
    code: grpc.StatusCode,
    caller: str,
    duration_seconds: float,
    protocol: str,
) -> None:
    """The line of one failed call."""
    level = failed_call_level(code)
    if not logger.isEnabledFor(level):
        return
    duration_ms = round(duration_seconds * 1000, 3)
    logger.log(
        level,
        "%s failed: %s",
        method,
        code.name,
        extra={"method": method, "code": code.name, "caller": caller, "duration_ms": duration_ms, "protocol": protocol},
    )


class TraceIds(logging.Filter):
    """Stamps a record with the ids of the span current where it was logged
    (`current` answers them as hex strings, or None outside a span)."""

    def __init__(self, current: Callable[[], tuple[str, str] | None]) -> None:
        super().__init__()
        self._current = current

    def filter(self, record: logging.LogRecord) -> bool:
        ids = self._current()
        if ids is not None:
            record.trace_id, record.span_id = ids
        return True


def add_trace_ids(current: Callable[[], tuple[str, str] | None]) -> None:
    """Stamp every record that reaches the root logger's handlers (a handler's
    filter sees the records of every logger, a logger's only its own)."""
    trace_ids = TraceIds(current)
    for handler in logging.getLogger().handlers:
        handler.addFilter(trace_ids)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _FIELDS if hasattr(record, name)}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if not fields:
            return line
        # After the first line: a traceback, when there is one, follows the fields.
        first, newline, rest = line.partition("\n")
        return first + "".join(f" {name}={value}" for name, value in fields.items()) + newline + rest


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a value a library logs (an exception, an address) is still one line.
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()
