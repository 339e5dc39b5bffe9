"""A no-op RPC for benchmarks: the ceiling of what one RPC costs on this server.

Registered only when METERING_BENCH_NOOP=1, under a service that is not part
of the contract, and served through the same interceptor as every other
method, so that benchmarks compare like with like.
"""

from __future__ import annotations

from typing import Any

import grpc

SERVICE = "metering.bench.v1.Bench"
NOOP_METHOD = f"/{SERVICE}/Noop"


async def _noop(request: bytes, context: Any) -> bytes:
    return b""


def noop_handler() -> grpc.GenericRpcHandler[Any, Any]:
    # Raw bytes both ways: no (de)serialisation cost beyond gRPC's own.
    return grpc.method_handlers_generic_handler(SERVICE, {"Noop": grpc.unary_unary_rpc_method_handler(_noop)})
