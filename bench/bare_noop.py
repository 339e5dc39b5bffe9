"""The RPC ceiling: a bare grpc.aio server with one no-op method, nothing else.

No interceptor, no authentication, no metrics, no database: what one unary
call costs grpc.aio itself on this machine. bench/run.py drives it with the
same load generator and the same method name as the service's own no-op
(metering.api.bench), so the two figures differ only by what the service adds.

    .venv/bin/python bench/bare_noop.py   # prints "bare no-op serving on 127.0.0.1:PORT"
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import grpc

SERVICE = "metering.bench.v1.Bench"  # the same method as the service's no-op
READY = "bare no-op serving on"


async def _noop(request: bytes, context: Any) -> bytes:
    return b""


async def serve() -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Noop": grpc.unary_unary_rpc_method_handler(_noop)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"{READY} 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(serve())
