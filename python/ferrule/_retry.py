"""``retry`` and ``Retry``: pure Python; the cost is one ``try`` around the call until
something fails.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, ParamSpec, TypeVar, cast

from ferrule._native import ManualClock

__all__ = ["Retry", "retry"]

P = ParamSpec("P")
R = TypeVar("R")

# ---- retry ---------------------------------------------------------------------------

PolicyName = Literal["exponential", "linear", "fixed", "immediate"]
_POLICIES = ("exponential", "linear", "fixed", "immediate")
_HAS_NOTES = sys.version_info >= (3, 11)


def _type_name(obj: object) -> str:
    return type(obj).__name__


def _seconds(value: object, arg: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{arg} must be a number of seconds, not '{_type_name(value)}'")
    secs = float(value)
    if not math.isfinite(secs):
        raise ValueError(f"{arg} must be a finite number of seconds")
    if positive and secs <= 0:
        raise ValueError(f"{arg} must be > 0")
    if secs < 0:
        raise ValueError(f"{arg} must be >= 0")
    return secs


def _is_exc_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseException)


def _check_retryable(classes: tuple[type[BaseException], ...]) -> None:
    for c in classes:
        if not issubclass(c, Exception):
            raise ValueError(
                f"retry_on must name Exception subclasses, not {c.__name__} "
                "(KeyboardInterrupt, SystemExit and cancellation are never retried)"
            )


class Retry:
    """A retry policy; call it on a function to decorate it, or use :meth:`call`.

    Made by :func:`retry`, which documents the arguments. Immutable once made, so one
    policy can decorate many functions and be shared between threads.

    >>> policy = retry(attempts=4, backoff=0.5, jitter=False, policy="linear")
    >>> [policy.delay(n) for n in range(3)]
    [0.5, 1.0, 1.5]
    >>> policy.call(divmod, 7, 2)
    (3, 1)
    """

    __slots__ = (
        "_catch",
        "_clock",
        "_policy",
        "_predicate",
        "_sleep",
        "attempts",
        "backoff",
        "deadline",
        "jitter",
        "max_backoff",
        "policy",
    )

    def __init__(
        self,
        *,
        attempts: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 10.0,
        jitter: bool = True,
        retry_on: type[BaseException]
        | tuple[type[BaseException], ...]
        | Callable[[BaseException], bool] = (Exception,),
        deadline: float | None = None,
        policy: PolicyName | Callable[[int], float] = "exponential",
        sleep: Callable[[float], object] | None = None,
        clock: ManualClock | None = None,
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise TypeError(f"attempts must be an int, not '{_type_name(attempts)}'")
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.attempts = attempts
        self.backoff = _seconds(backoff, "backoff")
        self.max_backoff = _seconds(max_backoff, "max_backoff")
        if not isinstance(jitter, bool):
            raise TypeError(f"jitter must be a bool, not '{_type_name(jitter)}'")
        self.jitter = jitter
        self.deadline = None if deadline is None else _seconds(deadline, "deadline", positive=True)

        self._predicate: Callable[[BaseException], bool] | None = None
        if _is_exc_class(retry_on):
            self._catch: tuple[type[BaseException], ...] = (cast(type[BaseException], retry_on),)
            _check_retryable(self._catch)
        elif isinstance(retry_on, tuple):
            if not retry_on:
                raise ValueError("retry_on must not be empty")
            if not all(_is_exc_class(c) for c in retry_on):
                raise TypeError(
                    "retry_on must be an exception class, a tuple of exception classes, "
                    "or a predicate"
                )
            self._catch = retry_on
            _check_retryable(self._catch)
        elif callable(retry_on):
            self._catch = (Exception,)
            self._predicate = cast(Callable[[BaseException], bool], retry_on)
        else:
            raise TypeError(
                "retry_on must be an exception class, a tuple of exception classes, "
                f"or a predicate, not '{_type_name(retry_on)}'"
            )

        if isinstance(policy, str):
            if policy not in _POLICIES:
                raise ValueError(
                    "policy must be one of 'exponential', 'linear', 'fixed', 'immediate' "
                    f"or a callable, not {policy!r}"
                )
            self._policy: Callable[[int], float] | None = None
        elif callable(policy):
            self._policy = policy
        else:
            raise TypeError(
                f"policy must be a policy name or a callable, not '{_type_name(policy)}'"
            )
        self.policy = policy

        if sleep is not None and not callable(sleep):
            raise TypeError(f"sleep must be callable or None, not '{_type_name(sleep)}'")
        self._sleep = sleep
        if clock is not None and not isinstance(clock, ManualClock):
            raise TypeError(
                f"clock must be a ferrule.ManualClock or None, not '{_type_name(clock)}'"
            )
        self._clock: Callable[[], float] = time.monotonic if clock is None else clock.now

    # -- delays ---------------------------------------------------------------------

    def _base(self, n: int) -> float:
        if self._policy is not None:
            return float(self._policy(n))
        if self.policy == "exponential":
            return self.backoff * 2.0 ** min(n, 1000)
        if self.policy == "linear":
            return self.backoff * (n + 1)
        if self.policy == "fixed":
            return self.backoff
        return 0.0

    def delay(self, n: int) -> float:
        """The pause after the ``n``-th failed attempt (0-based): the policy's delay, capped
        at ``max_backoff``; with jitter, uniform in ``[0, that]`` (full jitter).

        >>> retry(backoff=0.1, jitter=False).delay(3)
        0.8
        """
        base = self._base(n)
        if not base >= 0:  # also NaN
            raise ValueError(f"policy returned an invalid delay: {base!r}")
        base = min(self.max_backoff, base)
        return random.uniform(0.0, base) if self.jitter else base

    # -- running ----------------------------------------------------------------------

    def _give_up(self, exc: BaseException, attempts: int, why: str) -> BaseException:
        if _HAS_NOTES:
            exc.add_note(f"ferrule.retry: gave up after {attempts} attempt(s) ({why})")
        return exc

    def _plan(self, failed: int, start: float, exc: BaseException) -> float:
        """The pause before the next attempt, or raises ``exc`` when there is none."""
        if failed >= self.attempts:
            raise self._give_up(exc, failed, "attempts exhausted")
        pause = self.delay(failed - 1)
        if self.deadline is not None and self._clock() + pause >= start + self.deadline:
            raise self._give_up(exc, failed, f"deadline of {self.deadline} s")
        return pause

    def _retryable(self, exc: BaseException) -> bool:
        return self._predicate is None or bool(self._predicate(exc))

    def _again(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        start: float,
        exc: BaseException,
    ) -> R:
        failed = 1
        while True:
            pause = self._plan(failed, start, exc)
            if self._sleep is not None:
                self._sleep(pause)
            elif pause > 0:
                time.sleep(pause)
            try:
                return fn(*args, **kwargs)
            except self._catch as e:
                if not self._retryable(e):
                    raise
                exc = e
            failed += 1

    async def _again_async(
        self,
        fn: Callable[..., Awaitable[R]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        start: float,
        exc: BaseException,
    ) -> R:
        failed = 1
        while True:
            pause = self._plan(failed, start, exc)
            if self._sleep is not None:
                slept = self._sleep(pause)
                if inspect.isawaitable(slept):
                    await slept
            else:
                await asyncio.sleep(pause)
            try:
                return await fn(*args, **kwargs)
            except self._catch as e:
                if not self._retryable(e):
                    raise
                exc = e
            failed += 1

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``fn`` (a plain or ``async def`` function)."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not '{_type_name(fn)}'")
        if inspect.iscoroutinefunction(fn):
            return cast(Callable[P, R], self._wrap_async(fn))
        catch, predicate, again = self._catch, self._predicate, self._again
        now = self._clock if self.deadline is not None else None

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            start = now() if now is not None else 0.0
            try:
                return fn(*args, **kwargs)
            except catch as exc:
                if predicate is not None and not predicate(exc):
                    raise
                first = exc
            return again(fn, args, kwargs, start, first)

        return wrapper

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        catch, predicate, again = self._catch, self._predicate, self._again_async
        now = self._clock if self.deadline is not None else None

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            start = now() if now is not None else 0.0
            try:
                return await fn(*args, **kwargs)
            except catch as exc:
                if predicate is not None and not predicate(exc):
                    raise
                first = exc
            return await again(fn, args, kwargs, start, first)

        return wrapper

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` under this policy (for an ``async def`` function,
        returns the coroutine to await)."""
        if inspect.iscoroutinefunction(fn):
            return cast(R, self._call_async(fn, args, kwargs))
        start = self._clock() if self.deadline is not None else 0.0
        try:
            return fn(*args, **kwargs)
        except self._catch as exc:
            if not self._retryable(exc):
                raise
            first = exc
        return self._again(fn, args, kwargs, start, first)

    async def _call_async(
        self, fn: Callable[..., Awaitable[R]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        start = self._clock() if self.deadline is not None else 0.0
        try:
            return await fn(*args, **kwargs)
        except self._catch as exc:
            if not self._retryable(exc):
                raise
            first = exc
        return await self._again_async(fn, args, kwargs, start, first)

    def __repr__(self) -> str:
        return (
            f"Retry(attempts={self.attempts}, backoff={self.backoff}, "
            f"max_backoff={self.max_backoff}, jitter={self.jitter}, deadline={self.deadline}, "
            f"policy={self.policy!r})"
        )


def retry(
    *,
    attempts: int = 3,
    backoff: float = 0.1,
    max_backoff: float = 10.0,
    jitter: bool = True,
    retry_on: type[BaseException]
    | tuple[type[BaseException], ...]
    | Callable[[BaseException], bool] = (Exception,),
    deadline: float | None = None,
    policy: PolicyName | Callable[[int], float] = "exponential",
    sleep: Callable[[float], object] | None = None,
    clock: ManualClock | None = None,
) -> Retry:
    """Retry a function (plain or ``async def``) that raises.

    - ``attempts``: calls at most, the first included (>= 1).
    - ``backoff``, ``max_backoff``: seconds. The pause after the n-th failure (n from 0)
      is ``min(max_backoff, backoff * 2**n)`` for ``policy="exponential"``,
      ``backoff * (n + 1)`` for ``"linear"``, ``backoff`` for ``"fixed"`` and 0 for
      ``"immediate"``; a callable ``policy(n) -> seconds`` sets its own (also capped).
    - ``jitter=True``: full jitter, the pause is ``random.uniform(0, that)``;
      ``jitter=False`` sleeps exactly that.
    - ``retry_on``: exception classes to retry (others propagate at once), or a predicate
      ``retry_on(exc) -> bool`` over ``Exception``s. ``BaseException``s such as
      ``KeyboardInterrupt`` and ``asyncio.CancelledError`` are never retried.
    - ``deadline``: total seconds from the first attempt; a pause that would end at or
      past it is not taken, and the last exception propagates instead.
    - ``sleep``: replaces ``time.sleep`` (and ``asyncio.sleep`` for async functions; it
      may return an awaitable), e.g. a ``ManualClock``'s ``advance`` in tests;
      ``clock``: a ``ManualClock`` to measure the deadline with.

    When it gives up, the last exception propagates unchanged, with a note saying after
    how many attempts (Python 3.11+). Async functions pause with ``asyncio.sleep``, never
    blocking the loop.

    >>> calls = []
    >>> @retry(attempts=3, backoff=0.0)
    ... def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise ConnectionError("try again")
    ...     return "ok"
    >>> flaky(), len(calls)
    ('ok', 3)
    >>> retry(attempts=2, backoff=0.0).call(int, "42")
    42
    """
    return Retry(
        attempts=attempts,
        backoff=backoff,
        max_backoff=max_backoff,
        jitter=jitter,
        retry_on=retry_on,
        deadline=deadline,
        policy=policy,
        sleep=sleep,
        clock=clock,
    )
