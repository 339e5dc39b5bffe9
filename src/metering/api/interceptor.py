"""One interceptor for every RPC: authentication, status mapping, request
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

from metering.api.auth import Authenticator, is_open
from metering.api.drain import Drain
from metering.api.errors import to_status
from metering.domain.access import ANONYMOUS
from metering.domain.errors import RateLimited
from metering.telemetry.logs import failed_call
from metering.telemetry.metrics import GRPC, Metrics

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Behavior: TypeAlias = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior: TypeAlias = Callable[[Any, Context], AsyncIterator[Any]]


class ObservedServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every RPC handler: authenticates, maps domain errors to gRPC statuses with details
    (never UNKNOWN with a traceback), counts and times calls by caller, and logs each failed call once."""

    def __init__(self, metrics: Metrics, authenticator: Authenticator, drain: Drain | None = None) -> None:
        self._metrics = metrics
        self._authenticator = authenticator
        self._drain = Drain() if drain is None else drain  # refuses new calls once shutdown drains

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method  # "/package.Service/Method": bounded by the API
        # Every call of ours is observed; the open services' server-streaming
        # ones (reflection, health Watch) pass through untouched.
        if handler is not None and handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._observe(method, cast(Behavior, handler.unary_unary)),  # async under grpc.aio
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler is not None and handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._observe(method, cast(Behavior, handler.stream_unary), streaming=True),
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
        return handler

    def _observe_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        """A server-streaming call: authenticated before its first message and
        counted when it ends. Not timed: its duration is the life of a
        watch, which the client decides, not a latency."""
        metrics = self._metrics
        authenticator = self._authenticator
        drain = self._drain

        async def observed(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            code: grpc.StatusCode | None = grpc.StatusCode.OK
            caller = "unauthenticated"
            try:
                # Held, then refused, once the drain begins; not counted in flight: the drain ends the streams.
                await drain.enter(counted=False)
                identified = authenticator.identify(context)
                caller = identified.name
                authenticator.authorize(identified, method)
                authenticator.admit(identified, hold=False)
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
                metrics.requests.labels(method, status.code.name, caller, GRPC).inc()
                failed_call(log, method, status.code, caller, time.perf_counter() - started, GRPC)
                code = None
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                if code is not None:
                    metrics.requests.labels(method, code.name, caller, GRPC).inc()
                    if code is not grpc.StatusCode.OK:
                        failed_call(log, method, code, caller, time.perf_counter() - started, GRPC)

        return observed

    def _observe(self, method: str, behavior: Behavior, *, streaming: bool = False) -> Behavior:
        metrics = self._metrics
        authenticator = None if is_open(method) else self._authenticator
        latency = metrics.child(metrics.latency, method, GRPC)
        drain = None if is_open(method) else self._drain  # health checks answer NOT_SERVING themselves

        # `request` is the request message, or the request iterator of a
        # client-streaming call.
        async def observed(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            caller = ANONYMOUS.name if authenticator is None else "unauthenticated"
            counted = False
            gate = None  # the caller's limits, left when the call ends
            entered = False  # counted in flight by the drain

            def count() -> None:
                elapsed = time.perf_counter() - started
                metrics.child(metrics.requests, method, code.name, caller, GRPC).inc()
                latency.observe(elapsed)
                if code is not grpc.StatusCode.OK:
                    failed_call(log, method, code, caller, elapsed, GRPC)

            try:
                if drain is not None:
                    entered = await drain.enter(counted=not streaming)
                if authenticator is not None:
                    identified = authenticator.identify(context)
                    caller = identified.name
                    authenticator.authorize(identified, method)
                    gate = authenticator.admit(identified)
                return await behavior(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN  # the servicer aborted on its own
                raise
            except Exception as exc:
                if isinstance(exc, RateLimited) and authenticator is not None:
                    exc = await authenticator.hold(exc, context.time_remaining())
                status = to_status(exc)
                code = status.code
                # Counted before the status leaves: abort sends it at once, and a
                # scrape right after the client's answer must already see this call.
                count()
                counted = True
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                if gate is not None:
                    gate.leave()
                if entered and drain is not None:
                    drain.leave()
                if not counted:
                    count()

        return observed
