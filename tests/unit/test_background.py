"""The lifecycle's background tasks (metering.runtime.serve.Background): each is
cancelled and awaited in reverse order of start, and one that ends by itself
is logged when it ends and, if fatal, asks the process to stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest

from metering.runtime.serve import Background


async def forever(name: str, events: list[str]) -> None:
    events.append(f"start {name}")
    try:
        await asyncio.Event().wait()
    finally:
        events.append(f"stop {name}")


async def fail_soon() -> None:
    await asyncio.sleep(0)
    raise RuntimeError("boom")


def test_tasks_are_cancelled_and_awaited_in_reverse_order_of_start() -> None:
    events: list[str] = []

    async def run() -> None:
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(events.append, "pool closed")
            background = Background(stack, stop)
            for name in ("a", "b", "c"):
                background.start(name, forever(name, events))
            await asyncio.sleep(0)
        assert background.failed == []
        assert not stop.is_set()
        assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing left running

    asyncio.run(run())
    assert events == ["start a", "start b", "start c", "stop c", "stop b", "stop a", "pool closed"]


@pytest.mark.parametrize("fatal", [True, False])
def test_a_task_that_fails_is_logged_once_and_stops_the_process_if_fatal(
    fatal: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> tuple[bool, list[str]]:
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            background = Background(stack, stop)
            background.start("sampler", fail_soon(), fatal=fatal)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        return stop.is_set(), background.failed

    stopped, failed = asyncio.run(run())
    gc.collect()  # an unretrieved exception would be logged now, by the task's finalizer
    assert stopped is fatal
    assert failed == (["sampler"] if fatal else [])
    errors = [record for record in caplog.records if record.levelname == "ERROR"]
    assert [record.getMessage() for record in errors] == [
        f"background task 'sampler' failed; {'the service stops' if fatal else 'serving on without it'}"
    ]
    assert errors[0].exc_info is not None and str(errors[0].exc_info[1]) == "boom"


def test_a_task_that_returns_is_a_failure_too(caplog: pytest.LogCaptureFixture) -> None:
    async def returns() -> None:
        return None

    async def run() -> list[str]:
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            background = Background(stack, stop)
            background.start("closer", returns())
            await asyncio.wait_for(stop.wait(), 5)
        return background.failed

    assert asyncio.run(run()) == ["closer"]
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "background task 'closer' ended by itself; the service stops"
    ]
