"""asyncio glue for the native mailboxes (``WorkQueue``, and a pull ``Subscription``):
``get_async`` for both, ``put_async`` and ``join_async`` for ``WorkQueue``, without a
thread per waiter.

A task that must wait registers a *waker* with the mailbox in the same critical section that
found it empty (or full), so no wake-up can be missed. The waker is
``partial(loop.call_soon_threadsafe, _wake, future)``: whichever thread adds an item (or
makes room) calls it after the mailbox's lock is released, and the task retries. Items are
never handed to a waiting task directly, so a task cancelled after its wake-up loses no
item; it passes its unused wake-up on to the next waiter (``_forget_getter`` /
``_forget_putter``). The native side of each step is ``src/py/mailbox.rs``.

``is_async_callable`` tells which user callables (bus handlers, health checks) are awaited.

``next_async`` is ``__anext__`` of both mailboxes (``async for``): ``get_async`` with the
closed-and-drained end (``QueueClosed``) turned into ``StopAsyncIteration``.

``join_async`` waits the same way for the queue's unfinished count to reach zero
(``_join_or_wait``); every waiting joiner is woken then, so one that is cancelled has no
wake-up to pass on and only leaves (``_forget_joiner``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol, TypeVar

from ferrule._native import QueueClosed, WorkQueue

__all__ = ["get_async", "join_async", "next_async", "put_async"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

_PENDING: Any = object()

Waker = Callable[[], object]


class Gettable(Protocol[T_co]):
    """What ``get_async`` needs of a mailbox (``WorkQueue``, ``Subscription``)."""

    def _get_or_wait(self, waker: Waker | None, pending: object) -> T_co: ...

    def _forget_getter(self, waker: Waker) -> None: ...


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def is_async_callable(fn: Callable[..., object]) -> bool:
    """True for a callable to await: an ``async def`` function or bound method, a
    ``functools.partial`` of one (nested too), or an object whose ``__call__`` is one.
    (A plain callable that only returns an awaitable cannot be told apart in advance.)"""
    target: object = fn
    while isinstance(target, partial):
        target = target.func
    if inspect.iscoroutinefunction(target):
        return True
    if inspect.isroutine(target) or isinstance(target, type):
        return False
    return inspect.iscoroutinefunction(inspect.getattr_static(type(target), "__call__", None))


async def _wait(attempt: Callable[[Waker], Any], forget: Callable[[Waker], None]) -> Any:
    """Retries ``attempt(waker)`` until it returns something other than ``_PENDING``,
    waiting on the running loop for ``waker`` between attempts; a task that gives up
    (cancelled) has ``forget(waker)`` pass its wake-up on."""
    loop = asyncio.get_running_loop()
    while True:
        fut: asyncio.Future[None] = loop.create_future()
        waker = partial(loop.call_soon_threadsafe, _wake, fut)
        result = attempt(waker)
        if result is not _PENDING:
            return result
        try:
            await fut
        except BaseException:
            forget(waker)
            raise


async def get_async(q: Gettable[T]) -> T:
    """The next item; waits on the running loop while the mailbox is empty."""
    item = q._get_or_wait(None, _PENDING)
    if item is not _PENDING:
        return item
    result: T = await _wait(lambda waker: q._get_or_wait(waker, _PENDING), q._forget_getter)
    return result


async def next_async(q: Gettable[T]) -> T:
    """The next item for ``async for``; ``StopAsyncIteration`` once closed and drained."""
    try:
        return await get_async(q)
    except QueueClosed:
        raise StopAsyncIteration from None


async def put_async(q: WorkQueue[T], item: T) -> None:
    """Puts ``item``; waits on the running loop while a block-policy queue is full."""
    if q._put_or_wait(item, None):
        return
    await _wait(lambda waker: None if q._put_or_wait(item, waker) else _PENDING, q._forget_putter)


async def join_async(q: WorkQueue[Any]) -> None:
    """Returns once every item put was marked done; waits on the running loop until then."""
    if q._join_or_wait(None):
        return
    await _wait(lambda waker: None if q._join_or_wait(waker) else _PENDING, q._forget_joiner)
