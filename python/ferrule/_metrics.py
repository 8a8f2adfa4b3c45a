"""The decorator half of ``Metrics.time(op)``: wraps sync and async functions."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from ferrule._native import Metrics

_F = TypeVar("_F", bound=Callable[..., Any])


def timed(metrics: Metrics, op: str, func: _F) -> _F:
    """Return ``func`` wrapped so that every call is recorded under ``op``.

    Each call gets its own timer, so the wrapper is safe to call from many threads and
    tasks at once. An exception is recorded with ``ok=False`` and re-raised. For an
    ``async def`` function the time runs from the first step of the coroutine to its end.
    """
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            with metrics.time(op):
                return await func(*args, **kwargs)

        return cast("_F", async_wrapper)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with metrics.time(op):
            return func(*args, **kwargs)

    return cast("_F", wrapper)
