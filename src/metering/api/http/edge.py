"""The MeteringService on the HTTP edge: the Connect protocol and gRPC-Web.

The RPC bodies are the gRPC servicer's own (api.servicer): protocol-neutral,
they read the request message and raise domain errors, and never look at the
call's context. This edge is the HTTP twin of the gRPC interceptor
(api.interceptor): every call passes the same admission (api.admission: the
drain, the caller from its `authorization` header, the method's role, the
caller's limits), then this edge applies the `Idempotency-Key` header
(api.http.idempotency), calls the body, and maps a refusal with the one error
mapping (api.errors) into a Connect error carrying the same google.rpc details.
The call is counted by the same accounting with its `protocol` label (a failed
one logged with the same line), and traced as a server span when tracing is on.

Plain-HTTP conventions on top of Connect's: a unary refusal whose reason calls
for it answers another HTTP status than the protocol's mapping of its code
(api.errors.HTTP_STATUS_BY_REASON: 402 over the limit, 429 rate limited), and a
refusal with a RetryInfo carries `Retry-After` in whole seconds. The code and
details in the body are unchanged, which is all a Connect client reads.

The handlers are made from the service's descriptor, one per RPC of the
contract: an RPC added to the .proto is served here with nothing to add.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.request import Headers, RequestContext
from google.protobuf.message import Message
from google.rpc import status_pb2
from protobuf import Message as DetailMessage
from protobuf.wkt import Any as AnyDetail

from metering.api.admission import Admission, Call
from metering.api.drain import Drain
from metering.api.errors import http_status, retry_after, to_rpc_status
from metering.api.http.exchange import current_exchange
from metering.api.http.idempotency import HEADER as IDEMPOTENCY_KEY
from metering.api.http.idempotency import apply_idempotency_key
from metering.api.http.v1 import error_details_pb
from metering.api.http.v1.metering_service_connect import MeteringService
from metering.api.servicer import MeteringServicer
from metering.domain.access import Caller
from metering.telemetry.metrics import CONNECT, GRPC, GRPC_WEB, PROTOCOLS
from metering.telemetry.tracing import Tracing
from metering.v1 import metering_service_pb2

log = logging.getLogger(__name__)

SERVICE = metering_service_pb2.DESCRIPTOR.services_by_name["MeteringService"]

Context: TypeAlias = "RequestContext[Any, Any]"
Body: TypeAlias = Callable[[Any, Any], Awaitable[Message]]
StreamBody: TypeAlias = Callable[[Any, Any], AsyncIterator[Message]]
Unary: TypeAlias = Callable[[Any, Context], Awaitable[Message]]
Streaming: TypeAlias = Callable[[Any, Context], AsyncIterator[Message]]

# google.rpc.Status.code (the gRPC code's number) as a gRPC code and a Connect code.
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}
_CONNECT_CODES = {
    code.value[0]: Code.CANCELED if code is grpc.StatusCode.CANCELLED else Code(code.name.lower())
    for code in grpc.StatusCode
    if code is not grpc.StatusCode.OK
}


def local_name(rpc: str) -> str:
    """The Connect generator's Python name of an RPC: RecordUsageBatch -> record_usage_batch."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", rpc).lower()


def protocol_of(content_type: str) -> str:
    """The `protocol` label of a call on the HTTP edge, from its content type."""
    if content_type.startswith("application/grpc-web"):
        return GRPC_WEB
    if content_type.startswith("application/grpc"):
        return GRPC
    return CONNECT


# The google.rpc details this service sends, as protobuf-py messages (generated beside the
# Connect code): connectrpc writes each one's `debug` JSON beside its type and bytes.
_DEBUGGABLE: dict[str, type[DetailMessage]] = {
    f"type.googleapis.com/{kind.desc().type_name}": kind
    for kind in (
        error_details_pb.ErrorInfo,
        error_details_pb.BadRequest,
        error_details_pb.QuotaFailure,
        error_details_pb.ResourceInfo,
        error_details_pb.PreconditionFailure,
        error_details_pb.RetryInfo,
    )
}


def connect_error(status: status_pb2.Status) -> ConnectError:
    """A refusal as a Connect error: the code, message and google.rpc details of
    its Status (each detail as its type name and bytes, Connect's error details,
    and its `debug` JSON for people reading the body)."""
    details = []
    for detail in status.details:
        kind = _DEBUGGABLE.get(detail.type_url)
        details.append(
            ErrorDetail(
                AnyDetail(type_url=detail.type_url, value=detail.value)
                if kind is None
                else kind.from_binary(detail.value)
            )
        )
    return ConnectError(_CONNECT_CODES.get(status.code, Code.INTERNAL), status.message, details)


class ConnectEdge:
    """Serves the gRPC servicer's RPC bodies over Connect and gRPC-Web: authenticates, admits, applies
    the Idempotency-Key header, maps refusals with the one error mapping (plus the plain-HTTP statuses),
    and counts, logs and traces every call as the gRPC interceptor does, labelled with its protocol."""

    def __init__(self, rpcs: MeteringServicer, admission: Admission, tracing: Tracing | None) -> None:
        self._rpcs = rpcs
        self._admission = admission  # shared with the gRPC edge: the same drain, credentials, roles and limits
        self._tracing = tracing

    @property
    def drain(self) -> Drain:
        """The gate this edge's calls pass (shared with the gRPC edge)."""
        return self._admission.drain

    def service(self) -> MeteringService:
        """The object the generated Connect application calls: one handler per RPC of the contract."""
        handlers: dict[str, object] = {}
        for method in SERVICE.methods:
            path = f"/{SERVICE.full_name}/{method.name}"
            body = getattr(self._rpcs, method.name)
            if method.server_streaming:
                handlers[local_name(method.name)] = self._observe_stream(path, body)
            else:
                handlers[local_name(method.name)] = self._observe(
                    path, method.name, body, streaming=method.client_streaming
                )
        return cast(MeteringService, types.SimpleNamespace(**handlers))

    def _refusal(self, exc: Exception, ctx: Context) -> tuple[grpc.StatusCode, ConnectError]:
        """The code and Connect error that answer `exc`, with the HTTP status and
        Retry-After of a plain-HTTP refusal set for the unary response."""
        status = to_rpc_status(exc)
        seconds = retry_after(status)
        if seconds is not None:
            ctx.response_headers["retry-after"] = str(seconds)
        exchange = current_exchange()
        if exchange is not None:
            exchange.status = http_status(status)
        return _GRPC_CODES.get(status.code, grpc.StatusCode.UNKNOWN), connect_error(status)

    def _identify(self, headers: Headers) -> Caller:
        """The caller of an HTTP call, from its `authorization` headers (no client certificates: mTLS is gRPC's)."""
        return self._admission.authenticator.identify_http(headers.getall("authorization"))

    def _span(self, method: str, ctx: Context) -> contextlib.AbstractContextManager[Callable[[str], None] | None]:
        if self._tracing is None:
            return contextlib.nullcontext()
        return self._tracing.http_call(method, ctx.request_headers)

    def _observe(self, method: str, rpc: str, body: Body, *, streaming: bool = False) -> Unary:
        admission = self._admission
        accounts = {protocol: admission.accounting(method, protocol, log) for protocol in PROTOCOLS}
        counted = not streaming  # a client stream may last longer than the drain's grace
        identify = self._identify  # bound once, not per call

        # `request` is the request message, or the request iterator of a client-streaming call.
        async def observed(request: Any, ctx: Context) -> Message:
            call = Call(time.perf_counter())
            headers = ctx.request_headers
            account = accounts[protocol_of(headers.get("content-type", ""))]
            code = grpc.StatusCode.OK
            with self._span(method, ctx) as failed:
                try:
                    await admission.enter(call, method, identify, headers, counted=counted)
                    apply_idempotency_key(rpc, request, headers.getall(IDEMPOTENCY_KEY))
                    return await body(request, ctx)
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                except Exception as exc:
                    exc = await admission.refusal(exc, functools.partial(_seconds_left, ctx))
                    code, error = self._refusal(exc, ctx)
                    if failed is not None:
                        failed(code.name)
                    raise error from None
                finally:
                    admission.leave(call)
                    account(code, call.caller, call.started)

        return observed

    def _observe_stream(self, method: str, body: StreamBody) -> Streaming:
        """A server-streaming call: admitted before its first message, counted
        when it ends, not timed (its length is the client's), as on gRPC."""
        admission = self._admission
        accounts = {protocol: admission.accounting(method, protocol, log, timed=False) for protocol in PROTOCOLS}
        identify = self._identify

        async def observed(request: Any, ctx: Context) -> AsyncIterator[Message]:
            call = Call(time.perf_counter())
            headers = ctx.request_headers
            account = accounts[protocol_of(headers.get("content-type", ""))]
            code = grpc.StatusCode.OK
            try:
                # Not counted in flight (the drain ends the streams), and
                # spends a token of the caller's rate but no in-flight slot.
                await admission.enter(call, method, identify, headers, counted=False, hold=False)
                async for message in body(request, ctx):
                    yield message
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code, error = self._refusal(exc, ctx)
                raise error from None
            finally:
                admission.leave(call)
                account(code, call.caller, call.started)

        return observed


def _seconds_left(ctx: Context) -> float | None:
    left = ctx.timeout_ms
    return None if left is None else left / 1000
