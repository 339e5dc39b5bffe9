"""The gRPC server's methods are served through generic handlers only
(metering.runtime.wiring): grpc.aio waits on one pending request per
registered method on every call it accepts, so none is registered."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from metering.runtime.wiring import _GenericHandlersOnly
from metering.v1 import metering_service_pb2_grpc


class _Recorder:
    """Stands in for grpc.aio.Server: records what the generated code registers."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler[Any, Any]] = []
        self.registered: list[str] = []

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler[Any, Any], ...]) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: dict[str, Any]) -> None:
        self.registered.append(service_name)


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_every_method_is_found_through_a_generic_handler_and_none_is_registered() -> None:
    server = _Recorder()
    only = _GenericHandlersOnly(server)  # type: ignore[arg-type]
    metering_service_pb2_grpc.add_MeteringServiceServicer_to_server(
        metering_service_pb2_grpc.MeteringServiceServicer(),  # type: ignore[abstract]
        only,  # type: ignore[arg-type]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), only)
    assert server.registered == []
    for method in ("/metering.v1.MeteringService/RecordUsage", "/grpc.health.v1.Health/Check"):
        found = [h.service(_Details(method)) for h in server.generic]
        assert any(handler is not None for handler in found), method
