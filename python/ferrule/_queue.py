"""asyncio glue for ``WorkQueue``: ``put_async`` and ``get_async`` without a thread per waiter.

A task that must wait registers a *waker* with the queue in the same critical section that
found the queue full or empty, so no wake-up can be missed. The waker is
``partial(loop.call_soon_threadsafe, _wake, future)``: whichever thread makes room or adds
an item calls it (after the queue's lock is released), and the task retries. Items are
never handed to a waiting task directly, so a task cancelled after its wake-up loses no
item; it passes its unused wake-up on to the next waiter (``_forget_getter`` /
``_forget_putter``).
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, TypeVar

from ferrule._native import WorkQueue

__all__ = ["get_async", "put_async"]

T = TypeVar("T")

_PENDING: Any = object()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def get_async(q: WorkQueue[T]) -> T:
    """The next item; waits on the running loop while the queue is empty."""
    item = q._get_or_wait(None, _PENDING)
    if item is not _PENDING:
        return item
    loop = asyncio.get_running_loop()
    while True:
        fut: asyncio.Future[None] = loop.create_future()
        waker = partial(loop.call_soon_threadsafe, _wake, fut)
        item = q._get_or_wait(waker, _PENDING)
        if item is not _PENDING:
            return item
        try:
            await fut
        except BaseException:
            q._forget_getter(waker)
            raise


async def put_async(q: WorkQueue[T], item: T) -> None:
    """Puts ``item``; waits on the running loop while a block-policy queue is full."""
    if q._put_or_wait(item, None):
        return
    loop = asyncio.get_running_loop()
    while True:
        fut: asyncio.Future[None] = loop.create_future()
        waker = partial(loop.call_soon_threadsafe, _wake, fut)
        if q._put_or_wait(item, waker):
            return
        try:
            await fut
        except BaseException:
            q._forget_putter(waker)
            raise
