"""The decorator and context-manager halves of the native ``CircuitBreaker``.

``CircuitBreaker`` itself is native (``ferrule._native``): ``call`` runs the protected
function in the caller's thread and keeps the breaker's state in one atomic word. Its
``__call__``, ``__enter__``/``__exit__`` and ``__aenter__``/``__aexit__`` land here. A
``with`` block's permit (which period of the breaker admitted it) travels from enter to
exit in a context variable, so concurrent blocks on one breaker in different threads or
asyncio tasks each record their own outcome.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import ParamSpec, TypeVar, cast

from ferrule._native import CircuitBreaker

P = ParamSpec("P")
R = TypeVar("R")

# ---- CircuitBreaker: decorator and context managers ------------------------------------

# Permits of the `with` blocks open in this context, innermost last. Tuples, never
# mutated, so a task that copied the context cannot disturb its parent's stack.
_PERMITS: ContextVar[tuple[tuple[CircuitBreaker, int], ...]] = ContextVar(
    "ferrule_breaker_permits", default=()
)


def _decorate(cb: CircuitBreaker, fn: Callable[P, R]) -> Callable[P, R]:
    if inspect.iscoroutinefunction(fn):
        return cast(Callable[P, R], _decorate_async(cb, fn))
    call = cb.call

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return call(fn, *args, **kwargs)

    return wrapper


def _decorate_async(cb: CircuitBreaker, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    acquire, record = cb._acquire, cb._record

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        permit = acquire()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            record(permit, exc)
            raise
        record(permit)
        return result

    return wrapper


def _enter(cb: CircuitBreaker) -> CircuitBreaker:
    permit = cb._acquire()
    _PERMITS.set((*_PERMITS.get(), (cb, permit)))
    return cb


def _exit(cb: CircuitBreaker, exc: BaseException | None) -> None:
    stack = _PERMITS.get()
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][0] is cb:
            permit = stack[i][1]
            _PERMITS.set(stack[:i] + stack[i + 1 :])
            break
    else:
        raise RuntimeError("CircuitBreaker exit without a matching enter in this context")
    cb._record(permit, exc)


async def _aenter(cb: CircuitBreaker) -> CircuitBreaker:
    return _enter(cb)


async def _aexit(cb: CircuitBreaker, exc: BaseException | None) -> bool:
    _exit(cb, exc)
    return False
