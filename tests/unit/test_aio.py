"""``agent.aio.race``: the work against an event or a future, cleaned up either way."""

from __future__ import annotations

import asyncio

import pytest

from agent.aio import race


async def test_work_that_ends_first_is_returned_done() -> None:
    stop = asyncio.Event()
    task = await race(asyncio.sleep(0, "done"), stop)
    assert task.done() and task.result() == "done"
    assert not stop.is_set()


async def test_a_stop_cancels_the_work_and_waits_for_its_cleanup() -> None:
    stop = asyncio.Event()
    cleaned = []

    async def work() -> None:
        try:
            stop.set()
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0)  # a cleanup that itself awaits
            cleaned.append(True)

    task = await race(work(), stop)
    assert task.cancelled() and cleaned == [True]


async def test_a_future_stop_is_watched_never_cancelled() -> None:
    died: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(died.set_result, 9)
    task = await race(asyncio.sleep(60), died)
    assert task.cancelled() and died.result() == 9


async def test_a_cancelled_caller_cancels_and_awaits_the_work() -> None:
    cleaned = asyncio.Event()
    started = asyncio.Event()

    async def work() -> None:
        try:
            started.set()
            await asyncio.sleep(60)
        finally:
            cleaned.set()

    caller = asyncio.ensure_future(race(work(), asyncio.Event()))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert cleaned.is_set()
    assert asyncio.all_tasks() == {asyncio.current_task()}
