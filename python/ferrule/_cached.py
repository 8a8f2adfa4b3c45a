"""``cached``: a thread-safe, single-flight memoising decorator on top of ``Cache``; and
where an eviction listener's errors go (the ``ferrule.cache`` logger).

A ``Cache``'s ``on_evict`` runs beside the operation that removed the entry, after the
removal: what it raises cannot undo that, so the native code hands an ``Exception`` to
``_report_evict_error``, which logs it with its traceback and returns (any other
BaseException goes to ``sys.unraisablehook``).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar, cast

from ferrule._native import Cache

__all__ = ["cached"]

F = TypeVar("F", bound=Callable[..., Any])

_MISSING: Any = object()
_KWD_MARK = (object(),)
_FAST_TYPES = frozenset({int, str})

_log = logging.getLogger("ferrule.cache")


def _report_evict_error(cause: str, exc: BaseException) -> None:
    """Logs what a ``Cache``'s ``on_evict`` raised (called by the native cache)."""
    _log.error(
        "on_evict raised for an entry removed (%s)",
        cause,
        exc_info=(type(exc), exc, exc.__traceback__),
    )


def _make_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    """Same argument-tuple key as functools.lru_cache (untyped)."""
    if kwargs:
        key: tuple[Any, ...] = args + _KWD_MARK
        for item in kwargs.items():
            key += item
        return key
    if len(args) == 1 and type(args[0]) in _FAST_TYPES:
        return cast(Hashable, args[0])
    return args


def cached(max_size: int, *, ttl: float | None = None) -> Callable[[F], F]:
    """Memoise a function in a ``ferrule.Cache`` (like ``functools.lru_cache``).

    Thread-safe and single-flight per argument tuple: concurrent callers with the same
    arguments share one call. If that call raises an ``Exception``, every caller waiting
    for it gets the exception and nothing is cached. If it leaves with a BaseException
    that is not an Exception (``KeyboardInterrupt``, ``SystemExit``), only the caller
    that ran it sees that; the others retry, and one of them runs the function again.
    An ``async def`` goes through :meth:`Cache.get_or_set_async`: its awaiters on any
    loop share one call, a cancelled awaiter does not cancel it, and a shared call that
    is itself cancelled makes every awaiter look again. The wrapper exposes ``.cache`` and
    ``.cache_clear()``; reference cycles through it (a result that refers to the
    function, say) are collected.

    >>> @cached(100)
    ... def square(x: int) -> int:
    ...     return x * x
    >>> square(4), square(4), len(square.cache)
    (16, 16, 1)
    """
    cache = Cache(max_size, ttl=ttl)

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            return cast(F, _async_wrapper(fn, cache))

        # The wrapper's own `get` counts the hit or the miss; after a miss the single-flight
        # call counts nothing more, so one call is one hit or one miss in `cache.stats()`.
        get_or_set_after_miss = cache._get_or_set_after_miss  # type: ignore[attr-defined]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = _make_key(args, kwargs)
            value = cache.get(key, _MISSING)
            if value is not _MISSING:
                return value
            return get_or_set_after_miss(key, functools.partial(fn, *args, **kwargs))

        wrapper.cache = cache  # type: ignore[attr-defined]
        wrapper.cache_clear = cache.clear  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


def _async_wrapper(fn: Callable[..., Awaitable[Any]], cache: Cache) -> Callable[..., Any]:
    # Cache.get_or_set_async is the single flight: awaiters of one key share one task on
    # the loop that started it, threads and other loops included; an awaiter that is
    # cancelled does not cancel the shared call.
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = _make_key(args, kwargs)
        return await cache.get_or_set_async(key, functools.partial(fn, *args, **kwargs))

    wrapper.cache = cache  # type: ignore[attr-defined]
    wrapper.cache_clear = cache.clear  # type: ignore[attr-defined]
    return wrapper
