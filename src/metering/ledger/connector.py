"""Connecting host by host: a silent host costs one connect timeout, not the call.

asyncpg bounds a connection to a multi-host URL by one timeout for all its
hosts together: a first host that drops packets (a machine whose network
died: no reset comes back) takes the whole of it, and the next host is never
tried. HostByHost is the pool's `connect`: it tries each host on its own,
each bounded by METERING_DB_CONNECT_TIMEOUT (TCP, TLS, authentication and the
target_session_attrs check together: asyncpg makes that check on a one-host
connection too), in the order metering.ledger.hosts.HostOrder gives, and
notes how each attempt went so that hosts that failed recently are tried last.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg
from asyncpg.exceptions import TargetServerAttributeNotMatched

from metering.ledger.hosts import Attempt, HostOrder, describe, hosts_of, without_hosts

log = logging.getLogger(__name__)


class HostByHost:
    """The `connect` of an asyncpg pool on `url`, one host at a time."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        is_unavailable: Callable[[BaseException], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hosts = hosts_of(url)
        self._url = without_hosts(url) if self._hosts else url
        self._timeout = connect_timeout
        self._is_unavailable = is_unavailable
        self._clock = clock
        self.order = HostOrder(len(self._hosts))

    async def __call__(
        self,
        dsn: str | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        connection_class: type[asyncpg.Connection] = asyncpg.Connection,
        record_class: type[asyncpg.Record] = asyncpg.Record,
        command_timeout: float | None = None,
        server_settings: dict[str, str] | None = None,
    ) -> asyncpg.Connection:
        """A connection to the first host, in HostOrder's order, that qualifies.
        The arguments are those the pool passes (it was created with
        command_timeout and server_settings only); `dsn` is the pool's URL,
        given here already; each host has its own timeout."""
        del dsn

        async def connect(host: str | None, port: int | None) -> asyncpg.Connection:
            return await asyncpg.connect(
                self._url,
                host=host,
                port=port,
                timeout=self._timeout,
                loop=loop,
                connection_class=connection_class,
                record_class=record_class,
                command_timeout=command_timeout,
                server_settings=server_settings,
            )

        if not self._hosts:  # libpq's defaults (a unix socket, PGHOST): one attempt
            return await connect(None, None)
        last: BaseException | None = None
        for index in self.order.order(self._clock()):
            host = self._hosts[index]
            try:
                async with asyncio.timeout(self._timeout):
                    conn = await connect(host.host, host.port)
            except TargetServerAttributeNotMatched as exc:
                self.order.note(index, Attempt.WRONG_ROLE, self._clock())
                last = exc
            except Exception as exc:
                if not self._is_unavailable(exc):
                    raise  # a configuration error (password, database name): no other host will differ
                self.order.note(index, Attempt.UNREACHABLE, self._clock())
                log.info("database host %s unavailable, trying the next: %s: %s", host, type(exc).__name__, exc)
                last = exc
            else:
                self.order.note(index, Attempt.CONNECTED, self._clock())
                return conn
        assert last is not None  # at least one host was tried
        if isinstance(last, TargetServerAttributeNotMatched):
            raise TargetServerAttributeNotMatched(f"no host of {describe(self._hosts)} qualifies: {last}") from last
        raise last
