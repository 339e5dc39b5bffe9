"""The HTTP edge's ASGI application: Connect and gRPC-Web, `GET /healthz`, CORS.

- `POST /metering.v1.MeteringService/<Method>` (and GET for the Connect
  protocol's side-effect-free calls): the generated Connect application
  (api.http.v1, from proto/) over the edge's handlers (api.http.edge).
- `GET /healthz`: 200 `SERVING` or 503 `NOT_SERVING`, the same answer as the
  standard gRPC health (api.health): the database probe, and NOT_SERVING for
  good once shutdown begins.
- CORS for browsers (gRPC-Web, connect-web): only for the origins configured
  (METERING_HTTP_CORS_ORIGINS, none by default); a preflight from any other
  origin is refused (403) and its calls carry no CORS header, so browsers
  withhold the answer.

The application also applies what a call's handler noted in its Exchange: the
HTTP status of a plain-HTTP refusal (402, 429), in place of the protocol's.
Only a response that is not 200 is changed: a Connect unary error. gRPC-Web and
Connect streams answer 200 with their status inside, as their clients expect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeAlias

from metering.api.drain import Drain
from metering.api.health import DatabaseHealth
from metering.api.http.exchange import begin_exchange, end_exchange

Scope: TypeAlias = MutableMapping[str, Any]
Event: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Event]]
Send: TypeAlias = Callable[[Event], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

HEALTH_PATH = "/healthz"
# What a browser may send and read, beyond the CORS-safelisted headers: the
# Connect and gRPC-Web protocols' own, and this service's plain-HTTP ones.
ALLOWED_HEADERS = (
    "authorization, content-type, connect-protocol-version, connect-timeout-ms, grpc-timeout, "
    "x-grpc-web, x-user-agent, idempotency-key, traceparent, tracestate"
)
EXPOSED_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin, retry-after, content-encoding"
PREFLIGHT_MAX_AGE = "7200"


class HttpApplication:
    """The ASGI application of the HTTP port: routes health, answers CORS for the configured origins,
    and hands every other request to the Connect application, giving a plain-HTTP refusal its status."""

    def __init__(
        self, connect: ASGIApp, health: DatabaseHealth, cors_origins: Iterable[str], drain: Drain | None = None
    ) -> None:
        self._connect = connect
        self._health = health
        self._drain = Drain() if drain is None else drain
        origins = frozenset(cors_origins)
        self._any_origin = "*" in origins
        self._origins = origins - {"*"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the Connect application's
            await self._connect(scope, receive, send)
            return
        method = scope["method"]
        origin = _header(scope, b"origin")
        allowed = origin is not None and self._allows(origin)
        if method == "OPTIONS" and origin is not None:
            await self._preflight(scope, send, origin if allowed else None)
            return
        cors = _cors_headers(origin) if allowed and origin is not None else []
        if scope["path"] == HEALTH_PATH and method in ("GET", "HEAD"):
            await self._healthz(send, cors, body=method == "GET")
            return
        exchange, token = begin_exchange()
        held: Event | None = None  # the response's start, until its body shows whether it is whole

        async def respond(event: Event) -> None:
            nonlocal held
            if event["type"] == "http.response.start":
                if event["status"] != 200 and exchange.status is not None:
                    event["status"] = exchange.status
                if cors:
                    event["headers"] = [*event.get("headers", ()), *cors]
                if self._drain.closed and scope.get("http_version") in ("1.0", "1.1"):
                    # Shutting down: the client must not send its next call on this
                    # connection, which closes (an HTTP/2 client has the GOAWAY).
                    event["headers"] = [*event.get("headers", ()), (b"connection", b"close")]
                if not event.get("trailers", False):
                    held = event
                    return
            elif held is not None:
                start, held = held, None
                if event["type"] == "http.response.body" and not event.get("more_body", False):
                    # A whole body (every unary answer): its length in the headers, so that
                    # HTTP/1.1 sends it as is rather than chunked (one write less per answer).
                    length = str(len(event.get("body", b""))).encode()
                    start["headers"] = [*start.get("headers", ()), (b"content-length", length)]
                await send(start)
            await send(event)

        try:
            await self._connect(scope, receive, respond)
            if held is not None:  # a start without a body: the body is empty
                await respond({"type": "http.response.body", "body": b""})
        finally:
            end_exchange(token)

    def _allows(self, origin: str) -> bool:
        return self._any_origin or origin in self._origins

    async def _healthz(self, send: Send, cors: list[tuple[bytes, bytes]], *, body: bool) -> None:
        serving = self._health.serving
        text = b"SERVING\n" if serving else b"NOT_SERVING\n"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(text)).encode()),
            (b"cache-control", b"no-store"),
            *cors,
        ]
        await send({"type": "http.response.start", "status": 200 if serving else 503, "headers": headers})
        await send({"type": "http.response.body", "body": text if body else b""})

    async def _preflight(self, scope: Scope, send: Send, origin: str | None) -> None:
        if origin is None:
            headers = [(b"content-length", b"0"), (b"vary", b"Origin")]
            await send({"type": "http.response.start", "status": 403, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        requested = _header(scope, b"access-control-request-headers")
        headers = [
            *_cors_headers(origin),
            (b"access-control-allow-methods", b"POST, GET"),
            # The headers it asks for when it names them (any it may send is checked by the call itself).
            (b"access-control-allow-headers", (requested or ALLOWED_HEADERS).encode("latin-1")),
            (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode()),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
        (b"vary", b"Origin"),
    ]
