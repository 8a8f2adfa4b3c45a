"""asyncio form of ``Pool.acquire``: ``async with pool.acquire_async() as item:``.

The native pool does the accounting and queues waiters fairly; a waiting coroutine
waits on an asyncio future that the pool resolves (through ``loop.call_soon_threadsafe``)
when it hands the waiter an item or a slot, so it costs no thread.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ferrule._queue import _wake

if TYPE_CHECKING:
    from ferrule._native import Pool

__all__ = ["AsyncCheckout"]

_NONE: Any = object()


class _Wakeup:
    """Called by the pool (from any thread) when a waiter is handed something."""

    __slots__ = ("fut", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fut: asyncio.Future[None] = loop.create_future()

    def __call__(self) -> None:
        self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        _wake(self.fut)


async def _checkout(pool: Pool[Any], timeout: float | None) -> Any:
    loop = asyncio.get_running_loop()
    wake = _Wakeup(loop)
    deadline = None if timeout is None else loop.time() + timeout
    got, value = pool._checkout_async(wake)
    while not got:
        waiter = value
        left = None if deadline is None else deadline - loop.time()
        try:
            if left is None or left > 0:
                await asyncio.wait({wake.fut}, timeout=left)
        except BaseException:
            # Cancelled: leave the queue, giving back anything already handed to us.
            pool._give_up(waiter, False, timeout)
            raise
        if wake.fut.done():
            wake.fut = loop.create_future()
            got, value = pool._resume(waiter)
        else:
            got, value = pool._give_up(waiter, True, timeout)
    return value


class AsyncCheckout:
    """``async with pool.acquire_async() as item:`` (returned by ``Pool.acquire_async``)."""

    __slots__ = ("_entered", "_item", "_pool", "_timeout")

    def __init__(self, pool: Pool[Any], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._entered = False
        self._item: Any = _NONE

    async def __aenter__(self) -> Any:
        if self._entered:
            raise RuntimeError("a pool checkout can be entered only once")
        self._entered = True
        self._item = await _checkout(self._pool, self._timeout)
        return self._item

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        item, self._item = self._item, _NONE
        if item is not _NONE:
            self._pool._finish(item, exc)
        return False
