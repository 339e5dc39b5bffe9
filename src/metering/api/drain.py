"""The drain's gate, shared by both edges: once shutdown's drain begins, a new
call is answered UNAVAILABLE (ErrorInfo SHUTTING_DOWN, RetryInfo) by this
service's own code, never CANCELLED, while the calls already in flight finish.

Why the servers' own stop is not enough: grpc.aio's `server.stop(grace)`
shuts the core server down at once, and a call that reached the server in
that instant (received, not yet handed to a handler) is dropped by the core:
its client hears CANCELLED (grpc/grpc#41785), which the contract never
answers (2 to 5 in 5 of 19 shutdowns measured under a steady load). A client sends
its next call as soon as it has an answer (or after the RetryInfo delay), so
answering new calls at once right up to the stop would keep calls arriving in
that instant. So the gate has two phases:

- while calls are in flight (up to the grace), a new call is refused at once:
  UNAVAILABLE, so that its client goes elsewhere (another replica) without
  waiting for this server's slowest call;
- once none is (or the grace is spent), the gate parks new calls until the
  servers have begun to stop, so that nothing arrives in that instant, and
  answers them UNAVAILABLE then: the servers have stopped listening and told
  every connection to go away.

The sequence (metering.runtime.serve._drain): close() the gate (refusing);
wait_idle() for the calls in flight (up to METERING_SHUTDOWN_GRACE); park();
a settle longer than the refusals' RetryInfo delay, for the clients whose
answer just left to send their next call (parked); begin the servers' stop;
release() the parked calls.
"""

from __future__ import annotations

import asyncio

from metering.domain.errors import ShuttingDown


class Drain:
    """Counts the calls in flight on both edges; once closed refuses new ones, once parking holds them until
    released."""

    def __init__(self) -> None:
        self._closed = False
        self._parking = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._released = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def enter(self, *, counted: bool = True) -> bool:
        """A call begins: counted in flight (leave() when it ends) and True;
        once the gate is closed, refused with ShuttingDown (while parking,
        held until release() first). A streaming call is not `counted`: it may last
        longer than the grace (the servers' stop ends it), and the held calls
        would wait for it."""
        if self._closed:
            if self._parking:
                await self._released.wait()
            raise ShuttingDown("this server is shutting down")
        if counted:
            self._in_flight += 1
            self._idle.clear()
        return counted

    def leave(self) -> None:
        """A call that entered has ended (answered, refused or cancelled)."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def close(self) -> None:
        """From now on, new calls are refused at once (the calls in flight finish)."""
        self._closed = True

    def park(self) -> None:
        """From now on, new calls are held until release(), then refused: the servers' stop is near."""
        self._closed = True
        self._parking = True

    def release(self) -> None:
        """Answer the held calls (and any later one) UNAVAILABLE, SHUTTING_DOWN, at once."""
        self._closed = True
        self._released.set()

    async def wait_idle(self, limit: float) -> bool:
        """Wait until no call that entered is in flight, up to `limit` seconds; whether none is."""
        try:
            await asyncio.wait_for(self._idle.wait(), limit)
        except TimeoutError:
            return False
        return True
