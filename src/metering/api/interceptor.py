"""One interceptor for every RPC: status mapping, request counts and latency.

A servicer raises domain errors; here they become gRPC statuses with rich
details (api.errors), so no RPC can answer UNKNOWN with a Python traceback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, cast

import grpc

from metering.api.errors import to_status
from metering.metrics import Metrics

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Behavior: TypeAlias = Callable[[Any, Context], Awaitable[Any]]


class ObservedServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method  # "/package.Service/Method": bounded by the API
        # Calls with one response are observed; server-streaming ones
        # (reflection, health Watch) pass through untouched.
        if handler is not None and handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._observe(method, cast(Behavior, handler.unary_unary)),  # async under grpc.aio
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler is not None and handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._observe(method, cast(Behavior, handler.stream_unary)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _observe(self, method: str, behavior: Behavior) -> Behavior:
        metrics = self._metrics

        # `request` is the request message, or the request iterator of a
        # client-streaming call.
        async def observed(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN  # the servicer aborted on its own
                raise
            except Exception as exc:
                status = to_status(exc)
                code = status.code
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                metrics.requests.labels(method, code.name).inc()
                metrics.latency.labels(method).observe(time.perf_counter() - started)

        return observed
