"""Small asyncio helpers shared by the stages (a bottom module: it imports nothing of agent)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

_T = TypeVar("_T")


async def race(work: Awaitable[_T], stop: asyncio.Event | asyncio.Future[Any]) -> asyncio.Task[_T]:
    """Run ``work`` until it ends or ``stop`` happens (an event set, a future done).

    Returns the work's task, always done: finished on its own, or cancelled (and awaited,
    so whatever it cleans up on cancellation is cleaned up) because ``stop`` came first.
    The caller reads the outcome from it. When the caller itself is cancelled, the work is
    cancelled and awaited too before the cancellation goes on. ``stop`` is only watched,
    never cancelled.
    """
    task = asyncio.ensure_future(work)
    watch: asyncio.Future[Any] = (
        asyncio.ensure_future(stop.wait()) if isinstance(stop, asyncio.Event) else stop
    )
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if watch is not stop:
            watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    return task
