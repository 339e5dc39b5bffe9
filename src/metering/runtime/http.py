"""The HTTP port: hypercorn serving the HTTP edge's ASGI application in process.

It runs on the service's own event loop, beside the gRPC server, and speaks
HTTP/1.1 and HTTP/2 over cleartext (h2c, by prior knowledge or upgrade) on one
port. The socket is bound here: with workers it sets SO_REUSEPORT, as the gRPC
port does, so that every worker of a supervisor serves the port the supervisor
reserved (metering.runtime.supervisor); port 0 picks a free one, read back for
the announcement.

`stop(grace)` is the drain: no new connection, idle keep-alive connections
closed, calls in flight given up to `grace` seconds, then cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, cast

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from metering.api.http.app import HttpApplication
from metering.config.settings import ConfigError

if TYPE_CHECKING:
    from hypercorn.typing import Framework

log = logging.getLogger(__name__)


def bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening socket on host:port (0: a free port)."""
    family, kind, _proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listener.bind(address)
        listener.listen(1024)
    except OSError:
        listener.close()
        raise
    return listener


class HttpServer:
    """Serves the HTTP edge on its port, in this process's event loop, until the drain stops it."""

    def __init__(self, app: HttpApplication, host: str, port: int, *, reuse_port: bool) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._config = HypercornConfig()

    async def start(self) -> int:
        """Bind, serve, and return the bound port."""
        try:
            listener = bind(self._host, self._port, reuse_port=self._reuse_port)
        except OSError as exc:
            raise ConfigError(
                f"METERING_HTTP_HOST/METERING_HTTP_PORT: cannot listen on {self._host}:{self._port}: {exc.strerror}"
                " (METERING_HTTP_PORT=off serves no HTTP)"
            ) from None
        port = int(listener.getsockname()[1])
        config = self._config
        config.bind = [f"fd://{listener.detach()}"]  # hypercorn owns the socket from here
        config.include_server_header = False
        errors = logging.getLogger("metering.runtime.http.hypercorn")
        errors.setLevel(logging.WARNING)  # not its "Running on fd://..." line: the announcement says where
        config.errorlog = errors
        config.accesslog = None
        # hypercorn types an application with asgiref's event types; ours takes mappings of them.
        app = cast("Framework", self._app)
        self._task = asyncio.create_task(serve(app, config, shutdown_trigger=self._stopping.wait), name="http")
        self._task.add_done_callback(self._ended)
        return port

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()  # read here: never "Task exception was never retrieved"
        if error is not None or not self._stopping.is_set():
            log.error("the HTTP server stopped by itself; the HTTP port no longer answers", exc_info=error)

    async def stop(self, grace: float) -> None:
        """Stop accepting, give calls in flight `grace` seconds, then cancel them."""
        if self._task is None:
            return
        self._config.graceful_timeout = grace
        self._stopping.set()
        await asyncio.wait({self._task})
