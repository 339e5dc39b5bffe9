"""metering.ledger.pool.answer_within: a queued call's wait has a deadline."""

from __future__ import annotations

import asyncio

import pytest

from metering.domain.errors import DatabaseUnavailable
from metering.ledger.pool import answer_within


def test_an_answer_before_the_deadline_is_returned() -> None:
    async def go() -> str:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()
        loop.call_soon(answer.set_result, "recorded")
        return await answer_within(answer, loop.time() + 10)

    assert asyncio.run(go()) == "recorded"


def test_no_answer_by_the_deadline_is_unavailable_and_the_answer_is_cancelled() -> None:
    async def go() -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()
        with pytest.raises(DatabaseUnavailable):
            await answer_within(answer, loop.time() + 0.01)
        return answer

    # Cancelled: a queue that has not taken the call yet skips it, and an
    # answer that comes later is dropped.
    assert asyncio.run(go()).cancelled()


def test_a_deadline_already_past_still_returns_an_answer_that_is_there() -> None:
    async def go() -> str:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()
        answer.set_result("recorded")
        return await answer_within(answer, loop.time() - 1)

    assert asyncio.run(go()) == "recorded"


def test_a_failure_is_raised_as_it_came() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()
        answer.set_exception(KeyError("a bug"))
        with pytest.raises(KeyError):
            await answer_within(answer, loop.time() + 10)

    asyncio.run(go())


def test_a_caller_cancelled_while_waiting_is_cancelled_not_unavailable() -> None:
    async def go() -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()
        waiting = asyncio.ensure_future(answer_within(answer, loop.time() + 10))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return answer

    # The client went away: its answer is cancelled too, so the queue skips it.
    assert asyncio.run(go()).cancelled()
