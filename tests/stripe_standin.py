"""A local stand-in for Stripe's v1 meter events endpoint, for the billing sync tests.

Stripe cannot be reached from the test machines, so the exporter is pointed
at this server (METERING_STRIPE_API_BASE, the library's api base) on a free
port of 127.0.0.1. It enforces what Stripe documents for
`POST /v1/billing/meter_events`:

- the secret key as HTTP Bearer or Basic credentials, 401 otherwise;
- a form-encoded body with `event_name`, `payload[<customer key>]`,
  `payload[<value key>]`, an optional `identifier` (at most 100 characters)
  and `timestamp` (Unix seconds);
- the timestamp within the past 35 calendar days and at most 5 minutes ahead,
  400 otherwise;
- identifiers unique: a repeated one is not counted again and is answered
  400 `resource_already_exists` (the exporter takes that, like a 200, as
  "Stripe has this event");

and one rule of ours on top: the value must be a whole number (the exporter
sends whole units, metering.domain.stripe). It records every request and
the events it counted.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

MAX_AGE_SECONDS = 35 * 86400
MAX_AHEAD_SECONDS = 5 * 60
CUSTOMER_KEY = "stripe_customer_id"
VALUE_KEY = "value"


@dataclass(frozen=True)
class MeterEvent:
    identifier: str
    event_name: str
    customer: str
    value: int
    timestamp: int


@dataclass(frozen=True)
class Attempt:
    status: int
    identifier: str | None
    code: str | None


@dataclass
class StripeStandIn:
    api_key: str
    # Called with each counted event before it is answered (a test kills the exporter there).
    on_counted: Callable[[MeterEvent], None] | None = None
    events: dict[str, MeterEvent] = field(default_factory=dict)  # counted, by identifier
    attempts: list[Attempt] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> StripeStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                status, answer, identifier, code = standin.handle(self.path, dict(self.headers.items()), body)
                with standin.lock:
                    standin.attempts.append(Attempt(status, identifier, code))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def handle(
        self, path: str, headers: dict[str, str], body: str
    ) -> tuple[int, dict[str, Any], str | None, str | None]:
        if path != "/v1/billing/meter_events":
            return _error(404, "invalid_request_error", "resource_missing", f"Unrecognized request URL (POST: {path})")
        if not self._authorized(headers.get("Authorization", "")):
            return _error(401, "invalid_request_error", None, "Invalid API Key provided")
        if not headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return _error(400, "invalid_request_error", "parameter_invalid", "the body must be form-encoded")
        fields = dict(parse_qsl(body, keep_blank_values=True, strict_parsing=False))
        identifier = fields.get("identifier")
        for name in ("event_name", f"payload[{CUSTOMER_KEY}]", f"payload[{VALUE_KEY}]"):
            if not fields.get(name):
                return _error(400, "invalid_request_error", "parameter_missing", f"Missing required param: {name}.")
        if identifier is not None and not 0 < len(identifier) <= 100:
            return _error(400, "invalid_request_error", "parameter_invalid", "identifier: 1 to 100 characters")
        value = fields[f"payload[{VALUE_KEY}]"]
        if not value.isdigit():
            return _error(400, "invalid_request_error", "parameter_invalid", f"value {value!r} is not a whole number")
        now = time.time()
        timestamp = int(fields.get("timestamp") or now)
        if timestamp < now - MAX_AGE_SECONDS:
            return _error(
                400, "invalid_request_error", "timestamp_too_far_in_past", "more than 35 days ago", identifier
            )
        if timestamp > now + MAX_AHEAD_SECONDS:
            return _error(400, "invalid_request_error", "timestamp_in_future", "more than 5 minutes ahead", identifier)
        event = MeterEvent(
            identifier or f"gen-{time.monotonic_ns()}",
            fields["event_name"],
            fields[f"payload[{CUSTOMER_KEY}]"],
            int(value),
            timestamp,
        )
        with self.lock:
            if event.identifier in self.events:
                message = f"An event with identifier {event.identifier} already exists."
                return _error(400, "invalid_request_error", "resource_already_exists", message, identifier)
            self.events[event.identifier] = event
        if self.on_counted is not None:
            self.on_counted(event)
        answer = {
            "object": "billing.meter_event",
            "created": int(now),
            "event_name": event.event_name,
            "identifier": event.identifier,
            "livemode": False,
            "payload": {CUSTOMER_KEY: event.customer, VALUE_KEY: value},
            "timestamp": event.timestamp,
        }
        return 200, answer, identifier, None

    def _authorized(self, header: str) -> bool:
        scheme, _, credentials = header.partition(" ")
        if scheme == "Bearer":
            return credentials == self.api_key
        if scheme == "Basic":
            try:
                user = base64.b64decode(credentials).decode().partition(":")[0]
            except ValueError:
                return False
            return user == self.api_key
        return False

    def counted(self) -> list[MeterEvent]:
        with self.lock:
            return list(self.events.values())

    def statuses(self) -> list[int]:
        with self.lock:
            return [a.status for a in self.attempts]


def _error(
    status: int, kind: str, code: str | None, message: str, identifier: str | None = None
) -> tuple[int, dict[str, Any], str | None, str | None]:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code is not None:
        error["code"] = code
    return status, {"error": error}, identifier, code
