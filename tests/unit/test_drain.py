"""The drain's gate (metering.api.drain): no database, no server."""

from __future__ import annotations

import asyncio

import pytest

from metering.api.drain import Drain
from metering.domain.errors import ShuttingDown


def test_calls_in_flight_are_counted_until_they_leave() -> None:
    async def run() -> None:
        drain = Drain()
        assert await drain.enter() is True
        assert await drain.enter() is True
        assert drain.in_flight == 2
        assert await drain.wait_idle(0.01) is False
        drain.leave()
        drain.leave()
        assert await drain.wait_idle(0.01) is True

    asyncio.run(run())


def test_a_streaming_call_passes_the_open_gate_uncounted() -> None:
    async def run() -> None:
        drain = Drain()
        assert await drain.enter(counted=False) is False
        assert drain.in_flight == 0
        assert await drain.wait_idle(0.01) is True

    asyncio.run(run())


def test_once_closed_a_new_call_is_refused_at_once_while_calls_run() -> None:
    async def run() -> None:
        drain = Drain()
        await drain.enter()  # a call in flight, as slow as it likes
        drain.close()
        with pytest.raises(ShuttingDown):  # its client goes elsewhere now, not after the slowest call
            await asyncio.wait_for(drain.enter(), 0.5)
        assert drain.in_flight == 1

    asyncio.run(run())


def test_once_parked_a_new_call_is_held_until_released_then_refused() -> None:
    async def run() -> None:
        drain = Drain()
        drain.close()
        drain.park()
        held = asyncio.create_task(drain.enter())
        await asyncio.sleep(0.01)
        assert not held.done()  # held, not answered: its client sends nothing more as the servers stop
        assert drain.in_flight == 0
        drain.release()
        with pytest.raises(ShuttingDown):
            await held
        with pytest.raises(ShuttingDown):  # and later ones at once
            await drain.enter(counted=False)

    asyncio.run(run())


def test_the_calls_in_flight_when_it_closes_finish() -> None:
    async def run() -> None:
        drain = Drain()
        await drain.enter()
        drain.close()
        assert drain.closed
        waiting = asyncio.create_task(drain.wait_idle(5.0))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        drain.leave()
        assert await waiting is True

    asyncio.run(run())
