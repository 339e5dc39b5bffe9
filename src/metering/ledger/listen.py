"""The outbox's LISTEN connection: a transaction that wrote notifications
notifies the outbox channel at commit (the 0004 migration's trigger).

The connection is the process's own, not a pooled one: a pooled connection
must leave no session state behind (metering.ledger.pool), and LISTEN is
session state. What to do with a wake-up, and when to listen again after the
connection is lost, is the caller's (metering.delivery.wakeup).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from metering.ledger.connector import HostByHost
from metering.ledger.outbox import CHANNEL
from metering.ledger.pool import is_unavailable


class OutboxListener:
    """Listens on the outbox channel of the database at `url`, connecting as
    the pool does: host by host, each for at most `connect_timeout` seconds,
    hosts that failed recently last (metering.ledger.connector)."""

    def __init__(self, url: str, *, connect_timeout: float = 60.0) -> None:
        self._connect = HostByHost(url, connect_timeout=connect_timeout, is_unavailable=is_unavailable)

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call `wake` once listening has begun (for whatever committed while
        nobody listened) and at every notification, until the connection is
        lost; then return. A failure to connect raises."""
        conn = await self._connect(server_settings={"application_name": "metering-listen"})
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, lambda *_: wake())
            wake()
            await lost.wait()
        finally:
            if not conn.is_closed():
                conn.terminate()
