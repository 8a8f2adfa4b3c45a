"""Python helpers of ``RateLimiter``.

``acquire_async`` is the asyncio glue: no thread is parked per waiter. The native method
validates its arguments and returns the coroutine made here. The coroutine asks the
limiter for a decision (``_decide``, counted neither in ``stats()`` nor as a denial for
the limiter's events, ``bus=``: the outcome is counted once, by ``_count``) and, when
refused, sleeps on the event loop for exactly the ``retry_after`` the decision reported
(in naps of ``nap`` seconds when the limiter runs on a ManualClock, whose time does not
pass by itself), then asks again.

``_equal`` is how the native limiter compares keys that may run user code: called through
the limiter's exit guard, and never while it holds a lock.

``Limit`` is what ``RateLimiter.limit`` and ``RedisRateLimiter.limit`` return (the
limiter has checked the arguments): a ``with`` / ``async with`` block or a decorator
that acquires before it runs and raises ``RateLimited`` when ``acquire`` gives up. It
keeps no per-entry state, so one ``Limit`` may be entered by many threads and tasks at
once, and nested. The refusal's decision comes from ``check`` after ``acquire`` gave up:
a refused ``check`` takes nothing, and one that grants (the tokens arrived in between)
lets the block run on the tokens it took.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast

from ferrule._native import Decision, RateLimited

if TYPE_CHECKING:
    from ferrule._native import RateLimiter, _Key

__all__ = ["Limit", "acquire_async"]

P = ParamSpec("P")
R = TypeVar("R")


def _equal(stored: object, key: object) -> bool:
    """``stored == key`` as a dict compares keys: the stored key on the left, the result
    made a bool here (its ``__bool__`` may be user code too)."""
    return bool(stored == key)


async def acquire_async(
    limiter: RateLimiter,
    key: _Key,
    cost: int,
    timeout: float | None,
    nap: float | None,
) -> bool:
    """Wait until ``limiter`` grants ``cost`` tokens on ``key``; False on timeout, or at
    once when the tokens cannot be there before it."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        decision = limiter._decide(key, cost)  # the outcome is counted once, below
        if decision.allowed:
            limiter._count(key, True)
            return True
        wait = decision.retry_after
        if deadline is not None and wait > deadline - loop.time():
            limiter._count(key, False)
            return False
        await asyncio.sleep(wait if nap is None else min(wait, nap))


class _Limiter(Protocol):
    """What ``Limit`` needs of a limiter (``RateLimiter`` and ``RedisRateLimiter``)."""

    def acquire(self, key: Any = None, cost: int = 1, *, timeout: float | None = None) -> bool: ...
    def acquire_async(
        self, key: Any = None, cost: int = 1, *, timeout: float | None = None
    ) -> Coroutine[Any, Any, bool]: ...
    def check(self, key: Any = None, cost: int = 1) -> Decision: ...


def _refused(key: object, decision: Decision) -> RateLimited:
    exc = RateLimited(f"rate limit exceeded for key {key!r}: retry after {decision.retry_after} s")
    exc.decision = decision
    return exc


class Limit:
    """``with``, ``async with`` or decorator: acquire ``cost`` tokens on ``key`` first,
    waiting up to ``timeout`` seconds; raise :class:`ferrule.RateLimited` if they cannot be
    had. Made by ``RateLimiter.limit`` (or ``RedisRateLimiter.limit``)."""

    __slots__ = ("_cost", "_key", "_limiter", "_timeout")

    def __init__(self, limiter: _Limiter, key: Any, cost: int, timeout: float | None) -> None:
        self._limiter = limiter
        self._key = key
        self._cost = cost
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"<Limit key={self._key!r} cost={self._cost} timeout={self._timeout!r}>"

    # The decision on a refusal; the Redis tier overrides the async one (its async client
    # has no synchronous check). ``acquire`` counted the refusal for the limiter's events
    # already, so the native limiter's uncounted ``_decide`` is used where there is one.
    def _check(self, key: Any) -> Decision:
        decide = getattr(self._limiter, "_decide", self._limiter.check)
        decision: Decision = decide(key, self._cost)
        return decision

    async def _check_async(self, key: Any) -> Decision:
        return self._check(key)

    def _take(self, key: Any) -> None:
        if not self._limiter.acquire(key, self._cost, timeout=self._timeout):
            d = self._check(key)
            if not d.allowed:
                raise _refused(key, d)

    async def _take_async(self, key: Any) -> None:
        if not await self._limiter.acquire_async(key, self._cost, timeout=self._timeout):
            d = await self._check_async(key)
            if not d.allowed:
                raise _refused(key, d)

    def __enter__(self) -> None:
        self._take(self._key)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def __aenter__(self) -> None:
        await self._take_async(self._key)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def __call__(self, func: Callable[P, R], /) -> Callable[P, R]:
        """Wrap ``func`` (``def`` or ``async def``): each call acquires first. A callable
        ``key`` is called with the call's arguments to give that call's key."""
        if not callable(func):
            raise TypeError(f"func must be callable, not {type(func).__name__!r}")
        key = self._key
        resolve: Callable[..., Any] | None = key if callable(key) else None
        if inspect.iscoroutinefunction(func):
            afunc = cast(Callable[P, Awaitable[Any]], func)

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                await self._take_async(key if resolve is None else resolve(*args, **kwargs))
                return await afunc(*args, **kwargs)

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            self._take(key if resolve is None else resolve(*args, **kwargs))
            return func(*args, **kwargs)

        return wrapper
