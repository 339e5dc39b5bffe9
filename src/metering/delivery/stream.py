"""The outbox as a stream (WatchNotifications): every notification after a
position, in outbox order, then new ones as they commit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta

from metering.delivery.wakeup import OutboxWakeup
from metering.domain.errors import DatabaseUnavailable
from metering.domain.notifications import Position, StoredNotification
from metering.ledger.outbox import OutboxStore

_PAGE = 500

Wanted = Callable[[StoredNotification], bool]


class OutboxStream:
    """WatchNotifications' source: every notification after a position, in outbox order, then the
    new ones as they commit (woken by LISTEN, polling as a fallback). Reads only committed rows, so a
    stream never shows a change that was rolled back."""

    def __init__(self, store: OutboxStore, wakeup: OutboxWakeup, *, poll: timedelta) -> None:
        self._store = store
        self._wakeup = wakeup
        self._poll = poll.total_seconds()
        self._closing = False

    def close(self) -> None:
        """End every watch (UNAVAILABLE: reconnect with the last cursor), so a
        stopping server need not wait its grace period for them."""
        self._closing = True
        self._wakeup.wake_all()

    async def now(self) -> Position:
        return await self._store.horizon()

    async def watch(self, after: Position, wanted: Wanted) -> AsyncIterator[StoredNotification]:
        """Never ends by itself. Filters apply here rather than in SQL, so the
        position moves over what nobody wants and no page is read twice."""
        waiter = self._wakeup.waiter()
        position = after
        while not self._closing:
            waiter.arm()
            page = await self._store.read_after(position, _PAGE)
            for notification in page:
                position = notification.position
                if wanted(notification):
                    yield notification
            if len(page) < _PAGE:
                await waiter.pause(bool(page), self._poll)
        raise DatabaseUnavailable("the server is stopping: watch again from the last cursor, on another replica")
