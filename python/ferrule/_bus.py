"""Worker threads and weak handlers for ``SignalBus`` handler subscriptions.

Routing, mailboxes and the worker loop are native (``ferrule._native``); this module
only decides how the handler is held and starts the thread:

- ``weak=True`` and a bound method: the worker holds a ``weakref.WeakMethod``, whose
  callback cancels the subscription when the method's object is collected. The native
  loop also cancels when it finds the reference dead. Anything else is held strongly.
- Each handler subscription owns one (non-daemon) thread, which returns once the
  subscription is cancelled: the native loop finds its mailbox closed and drained.
  At interpreter exit every live worker's subscription is cancelled (before threading
  joins non-daemon threads), so a forgotten subscription does not hang the exit.
- A handler's exception is counted by the native loop and reported here, on the
  ``ferrule.bus`` logger, with its traceback.
"""

from __future__ import annotations

import logging
import threading
import types
import weakref
from collections.abc import Callable
from typing import Any

from ferrule._native import Signal, Subscription, _run_subscription

__all__: list[str] = []

logger = logging.getLogger("ferrule.bus")

# Subscriptions whose worker thread is running, by id; each worker removes its own.
_workers: dict[int, Subscription] = {}


def _cancel_all() -> None:
    for sub in list(_workers.values()):
        sub.cancel()


# Runs before threading joins non-daemon threads at exit.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_cancel_all)


def _cancel_on_collect(sub: Subscription) -> Callable[[Any], None]:
    def collected(_ref: Any) -> None:
        sub.cancel()

    return collected


def _work(sub: Subscription, target: Callable[..., Any], weak: bool) -> None:
    try:
        _run_subscription(sub, target, weak)
    finally:
        _workers.pop(sub._id, None)


def _start(sub: Subscription, handler: Callable[[Signal], Any], weak: bool) -> None:
    """Starts ``sub``'s worker thread (called by ``SignalBus.subscribe``)."""
    target: Callable[..., Any] = handler
    held_weakly = False
    if weak and isinstance(handler, types.MethodType):
        try:
            target = weakref.WeakMethod(handler, _cancel_on_collect(sub))
        except TypeError:
            name = type(handler.__self__).__name__
            raise TypeError(
                f"handler is bound to a '{name}' object, which cannot be weakly "
                "referenced; pass weak=False"
            ) from None
        held_weakly = True
    thread = threading.Thread(
        target=_work,
        args=(sub, target, held_weakly),
        name=f"ferrule-bus {sub.pattern}",
    )
    _workers[sub._id] = sub
    try:
        thread.start()
    except BaseException:
        _workers.pop(sub._id, None)
        raise


def _report(sub: Subscription, signal: Signal, exc: BaseException) -> None:
    """Logs a handler's exception (called by the worker loop)."""
    logger.error(
        "handler of subscription %r raised on signal %r",
        sub.pattern,
        signal.type,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
