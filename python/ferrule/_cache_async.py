"""asyncio glue for ``Cache.get_or_set_async``: single-flight on the cache's own flight
table, shared with the blocking ``get_or_set`` (tasks on any loop and threads in any mix).

``Cache.get_or_set_async`` returns ``get_or_set_async(call, factory)``, where ``call`` is
the native ``_CacheCall`` (``src/py/cache_async.rs``). ``call._join`` looks the key up and,
on a miss, makes this caller lead or follow the key's flight:

- A leader runs ``factory()`` and awaits it in a task of its own and awaits that task
  shielded, so a leader's caller that is cancelled does not cancel the shared call; the
  task ends the flight: ``_finish`` (the value is stored unless ``clear()`` ran since the
  flight began, and shared), ``_fail`` (an ``Exception`` is shared; nothing is cached) or
  ``_abandon`` (any other BaseException, the task's cancellation included). The running
  tasks are held in ``_RUNNING`` until done, so nothing but the loop needs to refer to them.
- A follower registers a waker, ``partial(loop.call_soon_threadsafe, _wake, future)``,
  with the flight through ``_poll``; the thread that ends the flight calls it, and the
  follower reads the outcome. A follower that is cancelled takes its waker back
  (``_forget``); the flight goes on for the others.

After an abandoned flight every follower joins again, and one of them leads anew. The
leader's caller joins again too when the shared call was cancelled (unless it was itself
cancelled); any other BaseException of the factory (``KeyboardInterrupt``,
``SystemExit``) it raises, as the caller of ``get_or_set`` that ran the factory does.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from ferrule._queue import _wake

__all__ = ["get_or_set_async"]

_LEAD: Any = object()
_FOLLOW: Any = object()
_PENDING: Any = object()
_ABANDONED: Any = object()

# Shared calls in progress, held until done (a task only the loop refers to may be
# collected before it finishes). Bounded by the flights in progress.
_RUNNING: set[asyncio.Task[Any]] = set()


def _cancel_requested() -> bool:
    """True if someone asked to cancel the current task (3.11+; on 3.10 this cannot be
    told apart from the shared call's own cancellation when both happen at once)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling is not None and cancelling())


async def get_or_set_async(call: Any, factory: Callable[[], Any]) -> Any:
    """The value for ``call``'s key: a hit, the result of the flight this caller leads,
    or that of the flight it follows; joins again after an abandoned flight."""
    while True:
        got = call._join(_LEAD, _FOLLOW)
        if got is _LEAD:
            got = await _lead(call, factory)
        elif got is _FOLLOW:
            got = await _follow(call)
        if got is not _ABANDONED:
            return got


async def _run(call: Any, factory: Callable[[], Any]) -> Any:
    """The shared call: awaits ``factory()`` and ends the flight with its outcome."""
    try:
        awaitable = factory()
        if not inspect.isawaitable(awaitable):
            raise TypeError(f"factory must return an awaitable, not {type(awaitable).__name__!r}")
        value = await awaitable
    except Exception as e:
        call._fail(e)
        raise
    except BaseException:
        call._abandon()
        raise
    return call._finish(value)


async def _lead(call: Any, factory: Callable[[], Any]) -> Any:
    task = asyncio.get_running_loop().create_task(_run(call, factory))
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    try:
        return await asyncio.shield(task)
    except BaseException:
        # The shared call cancelled (not this caller): look again, like every waiter. Any
        # other BaseException of the factory stays with this caller, as with get_or_set
        # (looking again would run the factory again and again).
        if task.done() and task.cancelled() and not _cancel_requested():
            return _ABANDONED
        raise


async def _follow(call: Any) -> Any:
    loop = asyncio.get_running_loop()
    while True:
        fut: asyncio.Future[None] = loop.create_future()
        got = call._poll(partial(loop.call_soon_threadsafe, _wake, fut), _PENDING, _ABANDONED)
        if got is not _PENDING:
            return got
        try:
            await fut
        except BaseException:
            call._forget()
            raise
