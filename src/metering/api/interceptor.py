"""One interceptor for every RPC: admission (the drain, credentials, roles and
limits: api.admission, shared with the HTTP edge), status mapping, request
counts by caller, latency, and a log line for each failed call (metering.telemetry.logs).

A servicer raises domain errors; here they become gRPC statuses with rich
details (api.errors), so no RPC can answer UNKNOWN with a Python traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc
from google.protobuf.message import DecodeError

from metering.api.admission import UNAUTHENTICATED, Admission, Call
from metering.api.auth import is_open
from metering.api.errors import to_status
from metering.domain.access import ANONYMOUS
from metering.domain.errors import FieldViolation, InvalidArgument
from metering.telemetry.metrics import GRPC

log = logging.getLogger(__name__)

_OK = grpc.StatusCode.OK
_ANONYMOUS = ANONYMOUS.name

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Behavior: TypeAlias = Callable[[Any, Context], Awaitable[Any]]
Deserializer: TypeAlias = Callable[[bytes], Any]
StreamBehavior: TypeAlias = Callable[[Any, Context], AsyncIterator[Any]]


class ObservedServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every RPC handler: authenticates, maps domain errors to gRPC statuses with details
    (never UNKNOWN with a traceback), counts and times calls by caller, and logs each failed call once."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission  # the drain, credentials, roles and limits; the calls' metrics
        self._authenticator = admission.authenticator
        # method -> (the handler found for it, its observed wrapper)
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method  # "/package.Service/Method": bounded by the API
        # A method's handler is wrapped once and reused: the generic handlers
        # return the same handler object for a method on every call, so a call
        # builds no closure and no handler here (a handler that differs, e.g.
        # from an interceptor ahead of this one that wraps per call, is wrapped anew).
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        if handler is not None:  # unknown methods are not kept: their names are the caller's
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Handler | None) -> Handler:
        # Every call of ours is observed; the open services' server-streaming
        # ones (reflection, health Watch) pass through untouched.
        if handler is not None and handler.unary_unary is not None:
            # The request is decoded by the observed behaviour, after the
            # caller is authenticated and admitted: a call refused for its
            # credentials or its limits costs no decoding (grpc.aio hands the
            # raw bytes through when a handler has no deserializer).
            return grpc.unary_unary_rpc_method_handler(
                self._observe(method, cast(Behavior, handler.unary_unary), handler.request_deserializer),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler is not None and handler.stream_unary is not None:
            # A client stream's messages are decoded as the servicer reads
            # them, so after the checks already.
            return grpc.stream_unary_rpc_method_handler(
                self._observe(method, cast(Behavior, handler.stream_unary), None, streaming=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler is not None and handler.unary_stream is not None and not is_open(method):
            return grpc.unary_stream_rpc_method_handler(
                self._observe_stream(method, cast(StreamBehavior, handler.unary_stream)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler is not None and not is_open(method):
            # A bidirectional method of ours would skip authentication above:
            # refuse it (UNIMPLEMENTED) rather than serve it unchecked.
            return None  # type: ignore[return-value]
        return handler  # type: ignore[return-value]

    def _observe_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        """A server-streaming call: admitted before its first message and
        counted when it ends (not timed: see api.admission.Accounting)."""
        admission = self._admission
        account = admission.accounting(method, GRPC, log, timed=False)
        identify = self._authenticator.identify

        async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
            call = Call(time.perf_counter())
            code: grpc.StatusCode | None = _OK  # None once counted
            try:
                # Not counted in flight (the drain ends the streams), and
                # spends a token of the caller's rate but no in-flight slot.
                await admission.enter(call, method, identify, context, counted=False, hold=False)
                async for message in behavior(request, context):
                    yield message
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                status = to_status(exc)
                # Counted before the status leaves, as for unary calls.
                account(status.code, call.caller, call.started)
                code = None
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                admission.leave(call)
                if code is not None:
                    account(code, call.caller, call.started)

        return observed

    def _observe(
        self, method: str, behavior: Behavior, deserialize: Deserializer | None, *, streaming: bool = False
    ) -> Behavior:
        # Health checks answer NOT_SERVING themselves and reflection is open:
        # no admission, the anonymous caller.
        admission = None if is_open(method) else self._admission
        account = self._admission.accounting(method, GRPC, log)
        identify = self._authenticator.identify
        counted = not streaming  # a client stream may last longer than the drain's grace
        first_caller = _ANONYMOUS if admission is None else UNAUTHENTICATED
        perf_counter = time.perf_counter

        # `request` is the request message (its bytes, when `deserialize` is
        # given), or the request iterator of a client-streaming call.
        async def observed(request: Any, context: Context) -> Any:
            call = Call(perf_counter(), first_caller)
            code: grpc.StatusCode | None = _OK  # None once counted
            try:
                if admission is not None:
                    await admission.enter(call, method, identify, context, counted=counted)
                if deserialize is not None:
                    try:
                        request = deserialize(request)
                    except DecodeError:
                        raise InvalidArgument(
                            [FieldViolation("request", "not a valid message of the method")]
                        ) from None
                return await behavior(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN  # the servicer aborted on its own
                raise
            except Exception as exc:
                if admission is not None:
                    exc = await admission.refusal(exc, context.time_remaining)
                status = to_status(exc)
                # Counted before the status leaves: abort sends it at once, and a
                # scrape right after the client's answer must already see this call.
                account(status.code, call.caller, call.started)
                code = None
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                if admission is not None:
                    admission.leave(call)
                if code is not None:
                    account(code, call.caller, call.started)

        return observed
