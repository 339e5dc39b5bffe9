"""Waking the outbox's readers: LISTEN as the fast path, polling as the fallback.

One connection per process listens on the outbox channel (a transaction that
wrote notifications notifies at commit; the connection is the ledger's,
metering.ledger.listen) and wakes every reader. A reader looks again at the
latest after the poll interval, so a lost connection, a missed notification or
a notification that arrives before its row is readable (an older transaction
still running holds the horizon back) only delays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref

from metering.ledger.listen import OutboxListener

log = logging.getLogger(__name__)

# After a wake-up whose look found nothing yet (the horizon had not passed the
# new row), look again this often, this many times, before waiting again.
_RECHECK_SECONDS = 0.02
_RECHECKS = 25
_RECONNECT_SECONDS = 1.0


class Waiter:
    """One reader's view of the wake-ups: `arm` before a look, then `pause`."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._rechecks = 0

    def wake(self) -> None:
        self._event.set()

    def arm(self) -> None:
        """Forget earlier wake-ups: call it just before reading, so that a
        commit during the read still wakes the pause after it."""
        self._event.clear()

    async def pause(self, found: bool, longest: float) -> None:
        """Wait before the next look: until a wake-up or `longest` seconds; or
        briefly, while a recent wake-up has not been found yet."""
        if found:
            self._rechecks = 0
        if self._rechecks > 0 and not self._event.is_set():
            self._rechecks -= 1
            await asyncio.sleep(min(_RECHECK_SECONDS, longest))
            return
        try:
            await asyncio.wait_for(self._event.wait(), timeout=max(longest, 0.0))
        except TimeoutError:
            return
        self._rechecks = _RECHECKS


class OutboxWakeup:
    """The process's LISTEN connection, reconnected whenever it is lost."""

    def __init__(self, listener: OutboxListener) -> None:
        self._listener = listener
        self._waiters: weakref.WeakSet[Waiter] = weakref.WeakSet()
        self._task: asyncio.Task[None] | None = None

    def waiter(self) -> Waiter:
        waiter = Waiter()
        self._waiters.add(waiter)
        return waiter

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake_all(self) -> None:
        for waiter in list(self._waiters):
            waiter.wake()

    async def _listen(self) -> None:
        while True:
            try:
                await self._listener.listen(self.wake_all)
                log.warning("the outbox LISTEN connection was lost; polling until it is back")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot LISTEN for outbox notifications (%s: %s); polling", type(exc).__name__, exc)
            await asyncio.sleep(_RECONNECT_SECONDS)
