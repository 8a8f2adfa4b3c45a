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

from ferrule._native import Cache, _CachedCall

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

    For a plain function the wrapper is, like ``functools.lru_cache``'s, an object rather
    than a function: it carries what ``functools.update_wrapper`` copies (``__name__``,
    ``__doc__``, ``__wrapped__``, ...), binds as a method in a class, takes attributes,
    and pickles and copies by its qualified name. A call with one int or str argument
    (exactly those types) and no keywords is answered natively: a hit runs no Python
    code, and a miss runs the key's single-flight call in native code up to the function.

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
        return cast(F, _sync_wrapper(fn, cache))

    return decorate


class _CachedFunction(_CachedCall):
    """A function memoised by :func:`cached`.

    Calls are the native ``_CachedCall``'s: a call with one exact int or str argument and
    no keywords is answered from the cache without running Python code when it hits.
    This class adds what a function wrapper carries: ``__dict__`` (for
    ``functools.update_wrapper``, ``cache`` and ``cache_clear``), weak references, and
    pickling and copying by qualified name, as ``functools.lru_cache``'s wrapper does.
    """

    def __reduce__(self) -> str:
        return cast(str, self.__qualname__)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        name = getattr(self, "__qualname__", "?")
        return f"<ferrule.cached function {name} at {id(self):#x}>"


def _sync_wrapper(fn: Callable[..., Any], cache: Cache) -> _CachedFunction:
    # One call is one hit or one miss in `cache.stats()`: the native call counts its own
    # lookup and then flies uncounted, as does `slow` (its `get`, then the flight).
    get = cache.get
    get_or_set_after_miss = cache._get_or_set_after_miss  # type: ignore[attr-defined]

    def slow(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> Any:
        kwargs = kwargs or {}
        key = _make_key(args, kwargs)
        value = get(key, _MISSING)
        if value is not _MISSING:
            return value
        return get_or_set_after_miss(key, functools.partial(fn, *args, **kwargs))

    wrapper = _CachedFunction(cache, fn, slow)
    functools.update_wrapper(wrapper, fn)
    wrapper.cache = cache  # type: ignore[attr-defined]
    wrapper.cache_clear = cache.clear  # type: ignore[attr-defined]
    return wrapper


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
