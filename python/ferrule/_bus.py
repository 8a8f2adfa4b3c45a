"""Worker threads and weak handlers for ``SignalBus`` handler subscriptions.

Routing, mailboxes and the worker loop are native (``ferrule._native``); this module
only decides how the handler is held and starts the thread:

- ``weak=True`` and a bound method: the subscription holds a ``weakref.WeakMethod``,
  whose callback cancels the subscription when the method's object is collected. The
  native loop also cancels when it finds the reference dead. Anything else is held
  strongly, by the ``Subscription`` object (which the bus holds while it routes to it).
- Each handler subscription owns one (non-daemon) thread, which returns once the
  subscription is cancelled: the native loop finds its mailbox closed and drained.
  The thread holds only a native worker object, never the handler or the
  ``Subscription``, so a reference cycle through a handler (bus -> subscription ->
  handler -> object -> bus) is left to the garbage collector, which cancels the
  subscription when it collects the cycle. At interpreter exit every live worker's
  subscription is cancelled (before threading joins non-daemon threads), so a forgotten
  subscription does not hang the exit.
- A handler's exception is counted by the native loop and reported here, on the
  ``ferrule.bus`` logger, with its traceback. A thread handler that returns an awaitable
  (nothing would run it) has it closed, and the call counts as such an error.

Async handlers (an ``async def``, a partial of one, an object whose ``__call__`` is one,
or any handler when ``loop=`` is given) get no thread. One task per subscription on the
event loop (the one running in the thread that called ``subscribe``, or ``loop=``) takes
the signals one at a time, in order, and awaits the handler on each:

- Waiting costs no thread: when the mailbox is empty the task registers a waker,
  ``loop.call_soon_threadsafe`` of a future it awaits, in the critical section that found
  it empty (``ferrule._queue``'s protocol), so ``publish`` from any thread only schedules
  a callback and never blocks the loop. A ``block`` mailbox refuses a publisher on the
  loop's own thread instead of making it wait for the loop it stops.
- The task ends when the subscription is cancelled and drained. Cancelling the task
  (``asyncio.run`` does so at its end) cancels the subscription; so does a waker that
  finds its loop closed. The task is marked not to log "Task was destroyed but it is
  pending": a loop closed while the task waits is an ordinary end for it (its ``finally``
  then cancels the subscription when the coroutine is closed).
- Like the worker thread, the task holds only the native worker, never the handler
  between signals, so the collector sees a cycle through the handler whole.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import itertools
import logging
import threading
import time
import types
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

from ferrule._native import QueueClosed, Signal, _run_subscription
from ferrule._queue import _wake, is_async_callable

_PENDING: Any = object()

__all__: list[str] = []

logger = logging.getLogger("ferrule.bus")

# The native worker objects of the running worker threads and tasks, each under a key
# of its own (subscription ids are numbered per bus, so two buses share them); each
# worker removes its own. They hold no Python object (see ferrule._native).
_workers: dict[int, Any] = {}
_keys = itertools.count()


def _cancel_all() -> None:
    for worker in list(_workers.values()):
        worker.cancel()


# Runs before threading joins non-daemon threads at exit.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_cancel_all)


def _cancel_worker(key: int, _ref: object) -> None:
    """A weak handler's object was collected: cancel its subscription (by key, so that
    the weak reference's callback refers to nothing)."""
    worker = _workers.get(key)
    if worker is not None:
        worker.cancel()


def _work(worker: Any, key: int) -> None:
    try:
        _run_subscription(worker)
    finally:
        _workers.pop(key, None)


def _start(
    worker: Any,
    handler: Callable[[Signal], Any],
    weak: bool,
    loop: asyncio.AbstractEventLoop | None,
) -> None:
    """Gives ``worker`` its handler and starts its thread, or its task on an event loop
    for an async handler (called by ``SignalBus.subscribe``)."""
    if loop is not None and not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"loop must be an asyncio event loop or None, not '{type(loop).__name__}'")
    if loop is None and is_async_callable(handler):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "an async handler is delivered on an event loop: subscribe it from a "
                "running loop, or pass loop="
            ) from None
    target: Callable[..., Any] = handler
    held_weakly = False
    key = next(_keys)
    if weak and isinstance(handler, types.MethodType):
        try:
            target = weakref.WeakMethod(handler, partial(_cancel_worker, key))
        except TypeError:
            name = type(handler.__self__).__name__
            raise TypeError(
                f"handler is bound to a '{name}' object, which cannot be weakly "
                "referenced; pass weak=False"
            ) from None
        held_weakly = True
    worker._hold(target, held_weakly)
    _workers[key] = worker
    try:
        if loop is None:
            name = f"ferrule-bus {worker.pattern}"
            threading.Thread(target=_work, args=(worker, key), name=name).start()
        else:
            _start_task(worker, loop, key)
    except BaseException:
        _workers.pop(key, None)
        raise


def _start_task(worker: Any, loop: asyncio.AbstractEventLoop, key: int) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        # Bound now: this thread may publish before the task first runs.
        worker._bind_thread()
        _create_task(worker, loop, key)
    else:
        # RuntimeError if the loop is closed: the subscription is then not made.
        loop.call_soon_threadsafe(_create_task, worker, loop, key)


def _create_task(worker: Any, loop: asyncio.AbstractEventLoop, key: int) -> None:
    task = loop.create_task(_deliver(worker, loop, key), name=f"ferrule-bus {worker.pattern}")
    # A loop closed while the task waits is an ordinary end (see the module docstring).
    task._log_destroy_pending = False  # type: ignore[attr-defined]


def _wake_or_cancel(
    worker: Any, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]
) -> None:
    """The consuming task's waker: schedules its wake-up on its loop, or cancels the
    subscription once that loop is closed (nobody will ever take its signals)."""
    try:
        loop.call_soon_threadsafe(_wake, fut)
    except RuntimeError:
        worker.cancel()


def _cancelling() -> bool:
    """True if the current task was asked to stop (3.11+). On 3.10 a CancelledError
    cannot be told apart from a handler's own, and ends the delivery either way."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or bool(cancelling())


async def _deliver(worker: Any, loop: asyncio.AbstractEventLoop, key: int) -> None:
    """The task of an async handler subscription: delivers its signals one at a time."""
    worker._bind_thread()
    try:
        while True:
            try:
                nxt = worker._next(None, _PENDING)
                while nxt is _PENDING:
                    fut: asyncio.Future[None] = loop.create_future()
                    waker = partial(_wake_or_cancel, worker, loop, fut)
                    nxt = worker._next(waker, _PENDING)
                    if nxt is _PENDING:
                        try:
                            await fut
                        except BaseException:
                            worker._forget_getter(waker)
                            raise
            except QueueClosed:
                return
            handler, signal = nxt
            del nxt
            try:
                result = handler(signal)
                del handler
                if inspect.isawaitable(result):
                    await result
                del result
            except asyncio.CancelledError as exc:
                if _cancelling():
                    raise
                worker._failed(signal, exc)
            except Exception as exc:
                worker._failed(signal, exc)
            except BaseException as exc:
                worker._failed(signal, exc)
                raise
    finally:
        worker.cancel()
        worker._release()
        _workers.pop(key, None)


# ---- owners ------------------------------------------------------------------------------
#
# ``subscribe(..., owner=obj)`` cancels the subscription when its owner dies or ends, with
# the Registry's owner kinds. Each watch holds only a canceller (a native worker with no
# Python reference), never the subscription or its handler:
# - a weak-referenceable object: a ``weakref.ref`` whose callback cancels; the
#   ``Subscription`` holds the reference (and lets go of it when cancelled);
# - an ``asyncio.Future``/``Task`` or ``concurrent.futures.Future``: a done-callback;
# - a ``threading.Thread``: Python has no callback for a thread's end, so one sweeper
#   thread (``ferrule-bus-owners``, a daemon, running only while such owners exist)
#   checks ``is_alive()`` every ``_SWEEP`` seconds and cancels the subscriptions of
#   finished threads. Its list holds one entry per live thread-owned subscription:
#   entries leave when the thread ends or the subscription is cancelled.

_SWEEP = 0.05
_thread_owners: list[tuple[threading.Thread, Any]] = []
_sweeper: threading.Thread | None = None
_owners_lock = threading.Lock()


def _owner_ended(canceller: Any, _arg: object = None) -> None:
    canceller.cancel()


def _thread_finished(t: threading.Thread) -> bool:
    # An unstarted thread has no ident yet and is not finished.
    return t.ident is not None and not t.is_alive()


def _sweep_thread_owners() -> None:
    global _sweeper
    while True:
        time.sleep(_SWEEP)
        with _owners_lock:
            entries = list(_thread_owners)
        ended = []
        for t, canceller in entries:
            try:
                finished = _thread_finished(t)
            except Exception:  # a broken owner never stops the sweep
                logger.exception("is_alive() of the owner thread %s raised", object.__repr__(t))
                finished = False
            if finished or canceller.cancelled:
                ended.append((t, canceller))
        for _, canceller in ended:
            canceller.cancel()
        with _owners_lock:
            for entry in ended:
                _thread_owners.remove(entry)
            if not _thread_owners:
                _sweeper = None
                return


def _watch_owner(canceller: Any, owner: object) -> object:
    """Watches ``owner`` for ``canceller``'s subscription (called by ``subscribe``);
    returns what the ``Subscription`` must hold, or None."""
    global _sweeper
    if isinstance(owner, threading.Thread):
        if _thread_finished(owner):
            raise ValueError("owner thread has already finished")
        with _owners_lock:
            _thread_owners.append((owner, canceller))
            if _sweeper is None:
                _sweeper = threading.Thread(
                    target=_sweep_thread_owners, name="ferrule-bus-owners", daemon=True
                )
                try:
                    _sweeper.start()
                except BaseException:
                    _thread_owners.pop()
                    _sweeper = None
                    raise
        return None
    if isinstance(owner, (asyncio.Future, concurrent.futures.Future)):
        if owner.done():
            raise ValueError("owner future is already done")
        owner.add_done_callback(partial(_owner_ended, canceller))
        return None
    try:
        return weakref.ref(owner, partial(_owner_ended, canceller))
    except TypeError:
        raise TypeError(
            "owner must be weak-referenceable, a threading.Thread, an asyncio.Task or a "
            f"concurrent.futures.Future, not '{type(owner).__name__}'"
        ) from None


def _report(pattern: str, signal: Signal, exc: BaseException) -> None:
    """Logs a handler's exception (called by the worker loop)."""
    logger.error(
        "handler of subscription %r raised on signal %r",
        pattern,
        signal.type,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
