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
  ``ferrule.bus`` logger, with its traceback.
"""

from __future__ import annotations

import logging
import threading
import types
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

from ferrule._native import Signal, _run_subscription

__all__: list[str] = []

logger = logging.getLogger("ferrule.bus")

# The native worker objects of the running worker threads, by subscription id; each
# worker removes its own. They hold no Python object (see ferrule._native).
_workers: dict[int, Any] = {}


def _cancel_all() -> None:
    for worker in list(_workers.values()):
        worker.cancel()


# Runs before threading joins non-daemon threads at exit.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_cancel_all)


def _cancel_worker(sub_id: int, _ref: object) -> None:
    """A weak handler's object was collected: cancel its subscription (by id, so that
    the weak reference's callback refers to nothing)."""
    worker = _workers.get(sub_id)
    if worker is not None:
        worker.cancel()


def _work(worker: Any) -> None:
    try:
        _run_subscription(worker)
    finally:
        _workers.pop(worker.id, None)


def _start(worker: Any, handler: Callable[[Signal], Any], weak: bool) -> None:
    """Gives ``worker`` its handler and starts its thread (called by
    ``SignalBus.subscribe``)."""
    target: Callable[..., Any] = handler
    held_weakly = False
    if weak and isinstance(handler, types.MethodType):
        try:
            target = weakref.WeakMethod(handler, partial(_cancel_worker, worker.id))
        except TypeError:
            name = type(handler.__self__).__name__
            raise TypeError(
                f"handler is bound to a '{name}' object, which cannot be weakly "
                "referenced; pass weak=False"
            ) from None
        held_weakly = True
    worker._hold(target, held_weakly)
    thread = threading.Thread(target=_work, args=(worker,), name=f"ferrule-bus {worker.pattern}")
    _workers[worker.id] = worker
    try:
        thread.start()
    except BaseException:
        _workers.pop(worker.id, None)
        raise


def _report(pattern: str, signal: Signal, exc: BaseException) -> None:
    """Logs a handler's exception (called by the worker loop)."""
    logger.error(
        "handler of subscription %r raised on signal %r",
        pattern,
        signal.type,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
