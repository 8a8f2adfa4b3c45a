"""``cached``: a thread-safe, single-flight memoising decorator on top of ``Cache``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar, cast

from ferrule._native import Cache

__all__ = ["cached"]

F = TypeVar("F", bound=Callable[..., Any])

_MISSING: Any = object()
_KWD_MARK = (object(),)
_FAST_TYPES = frozenset({int, str})


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
    """Memoise a function in a ``ferrule.Cache`` (see the stubs for the full contract)."""
    cache = Cache(max_size, ttl=ttl)

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            return cast(F, _async_wrapper(fn, cache))

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = _make_key(args, kwargs)
            value = cache.get(key, _MISSING)
            if value is not _MISSING:
                return value
            return cache.get_or_set(key, functools.partial(fn, *args, **kwargs))

        wrapper.cache = cache  # type: ignore[attr-defined]
        wrapper.cache_clear = cache.clear  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


def _async_wrapper(fn: Callable[..., Awaitable[Any]], cache: Cache) -> Callable[..., Any]:
    # Concurrent awaiters of one key share one task; the task lives in the loop that
    # started it, and an awaiter that is cancelled does not cancel the shared call.
    inflight: dict[Hashable, asyncio.Task[Any]] = {}
    lock = threading.Lock()

    async def run(key: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            value = await fn(*args, **kwargs)
            cache.set(key, value)
            return value
        finally:
            with lock:
                if inflight.get(key) is asyncio.current_task():
                    del inflight[key]

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = _make_key(args, kwargs)
        value = cache.get(key, _MISSING)
        if value is not _MISSING:
            return value
        loop = asyncio.get_running_loop()
        with lock:
            task = inflight.get(key)
            if task is None or task.get_loop() is not loop:
                task = loop.create_task(run(key, args, kwargs))
                inflight[key] = task
        return await asyncio.shield(task)

    wrapper.cache = cache  # type: ignore[attr-defined]
    wrapper.cache_clear = cache.clear  # type: ignore[attr-defined]
    return wrapper
