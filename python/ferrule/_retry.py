"""``retry`` and ``Retry``: pure Python; the cost is one ``try`` and one counter step
around the call until something fails.

Structure. A ``Retry`` policy is immutable once made (its arguments), except for its
statistics. It runs a call in one of three ways:

- the fast path (``__call__``/``call`` of a policy without ``retry_if_result``, hooks or
  ``attempt_timeout``): the first attempt runs inline, and only a failure enters the loop
  (``_again``/``_again_async``);
- the full path (``_run``/``_run_async``): one loop that judges every attempt with
  ``_settle`` (retry or not, the pause, the hooks);
- attempt blocks (``for attempt in policy: with attempt:``, and ``async for``): the
  generator owns the loop and each ``Attempt``'s ``__exit__`` judges its block with the
  same ``_settle``.

Every path asks ``_next_pause`` for the pause after a failed attempt or the reason to
give up, and sleeps through ``_pause_sync``/``_pause_async``.

Statistics. A call is counted once, when it ends: as a success, a give-up (attempts or
deadline exhausted) or a failure (an exception the policy does not retry, a hook's or a
predicate's exception, a ``BaseException``, an abandoned attempt loop). A call that
succeeds at its first attempt is one step of an ``itertools.count`` (the stdlib's one
atomic counter: ``next`` is atomic under the GIL and, since 3.13, a compare-exchange on
free-threaded builds, gh-117657); every other call adds its numbers under ``_lock``.
``stats()`` reads both, so every snapshot has ``calls == successes + give_ups +
failures`` and ``attempts == calls + retries``. No lock is held while user code runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import itertools
import math
import random
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Literal, ParamSpec, TypeVar, cast

from ferrule._native import ManualClock

__all__ = ["Attempt", "Retry", "RetryState", "RetryStats", "retry"]

P = ParamSpec("P")
R = TypeVar("R")

# ---- retry ---------------------------------------------------------------------------

PolicyName = Literal["exponential", "linear", "fixed", "immediate"]
_POLICIES = ("exponential", "linear", "fixed", "immediate")
_HAS_NOTES = sys.version_info >= (3, 11)

# How a call ended (the statistics' columns).
_OK, _GAVE_UP, _FAILED = 0, 1, 2


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


def _hook(value: object, arg: str) -> Callable[..., object] | None:
    """A hook argument: ``None`` or a plain callable (hooks are called, never awaited)."""
    if value is None:
        return None
    if not callable(value):
        raise TypeError(f"{arg} must be callable or None, not '{_type_name(value)}'")
    if inspect.iscoroutinefunction(value):
        raise TypeError(f"{arg} must be a plain callable, not an async def function")
    return cast(Callable[..., object], value)


def _is_exc_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseException)


def _check_retryable(classes: tuple[type[BaseException], ...]) -> None:
    for c in classes:
        if not issubclass(c, Exception):
            raise ValueError(
                f"retry_on must name Exception subclasses, not {c.__name__} "
                "(KeyboardInterrupt, SystemExit and cancellation are never retried)"
            )


def _count_value(counter: itertools.count[int]) -> int:
    """How many steps ``counter`` (started at 0, step 1) has taken, without taking one:
    ``repr`` is the only read ``itertools.count`` offers (``count(7)``)."""
    return int(repr(counter)[6:-1])


async def _within(aw: Awaitable[R], seconds: float) -> R:
    """Await ``aw``, cancelling it after ``seconds`` with a ``TimeoutError``."""
    message = f"attempt timed out after {seconds} s (attempt_timeout)"
    if sys.version_info >= (3, 11):
        cm = asyncio.timeout(seconds)
        try:
            async with cm:
                return await aw
        except TimeoutError as e:
            if cm.expired():
                raise TimeoutError(message) from e
            raise
    try:  # 3.10: asyncio.TimeoutError is not yet the builtin TimeoutError
        return await asyncio.wait_for(aw, seconds)
    except asyncio.TimeoutError as e:
        raise TimeoutError(message) from e


@dataclasses.dataclass(frozen=True, slots=True)
class RetryState:
    """What a hook is told about the attempt that just ended (read-only).

    - ``attempt``: its number, from 1.
    - ``exception``: what it raised, or ``None`` when it returned.
    - ``result``: what it returned (``None`` when it raised, and in ``with attempt:``
      blocks).
    - ``elapsed``: seconds since the first attempt began, by the policy's clock.
    - ``next_delay``: the pause before the next attempt, or ``None`` when there is none
      (it succeeded, its exception is not retried, or the policy gives up).
    - ``fn``: the function retried (``None`` in ``with attempt:`` blocks).

    >>> seen = []
    >>> policy = retry(attempts=2, backoff=0.0, after_attempt=seen.append)
    >>> policy.call(abs, -3)
    3
    >>> seen[0].attempt, seen[0].result, seen[0].next_delay
    (1, 3, None)
    """

    attempt: int
    exception: Exception | None
    result: Any
    elapsed: float
    next_delay: float | None
    fn: Callable[..., Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RetryStats:
    """Counts of the calls a policy has finished (``Retry.stats()``).

    - ``calls``: calls finished (decorated, ``call()``, or attempt loops);
      ``calls == successes + give_ups + failures``.
    - ``attempts``: attempts those calls made; ``retries == attempts - calls``.
    - ``successes``: calls that returned (or whose block finished without an exception).
    - ``give_ups``: calls that ran out of attempts or time: the last exception propagated
      (or, with ``retry_if_result``, the last result was returned).
    - ``failures``: calls that ended with an exception the policy does not retry, a
      hook's or a predicate's exception, a ``BaseException`` (``KeyboardInterrupt``,
      cancellation), or a loop of attempts left early.

    >>> policy = retry(attempts=2, backoff=0.0)
    >>> policy.call(int, "7")
    7
    >>> policy.stats()
    RetryStats(calls=1, attempts=1, retries=0, successes=1, give_ups=0, failures=0)
    """

    calls: int
    attempts: int
    retries: int
    successes: int
    give_ups: int
    failures: int


_NEW, _ENTERED, _EXITED = 0, 1, 2


class Attempt:
    """One attempt of a retry loop over a code block; use it as ``with attempt:``.

    Made by iterating a :class:`Retry` policy (``for attempt in policy:`` or ``async for
    attempt in policy:``), never directly. An exception the policy retries is suppressed
    at the end of the ``with`` block and the loop pauses and goes on; the loop ends after
    a block that finished; after the last failed attempt (or one not retried) the
    exception propagates from the ``with`` block, with the same note as the decorator
    form.

    >>> for attempt in retry(attempts=3, backoff=0.0):
    ...     with attempt:
    ...         n = attempt.number
    ...         if n < 2:
    ...             raise ConnectionError("try again")
    >>> n
    2
    """

    __slots__ = ("_counted", "_pause", "_policy", "_stage", "_start", "number")

    number: int
    _policy: Retry
    _start: float
    _stage: int
    _pause: float | None
    _counted: bool

    def __init__(self) -> None:
        raise TypeError("Attempt objects are made by iterating a ferrule.Retry policy")

    @classmethod
    def _make(cls, policy: Retry, number: int, start: float) -> Attempt:
        self = object.__new__(cls)
        self.number = number
        self._policy = policy
        self._start = start
        self._stage = _NEW
        self._pause = None
        self._counted = False
        return self

    def _finish(self, outcome: int) -> None:
        """Count the call as ended here (once)."""
        if not self._counted:
            self._counted = True
            self._policy._tally(self.number, outcome)

    def _abandon(self) -> None:
        """The loop ended without this attempt ending the call (a ``break`` after a
        retried failure, an attempt never entered, a pause that raised): a failure, of
        the attempts made; a loop that made none is no call."""
        made = self.number if self._stage != _NEW else self.number - 1
        if not self._counted and made:
            self._counted = True
            self._policy._tally(made, _FAILED)

    def __enter__(self) -> Attempt:
        if self._stage != _NEW:
            raise RuntimeError("an attempt can be entered only once")
        self._stage = _ENTERED
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        if self._stage != _ENTERED:
            raise RuntimeError("this attempt is not inside its with block")
        self._stage = _EXITED
        policy = self._policy
        try:
            if exc_type is None:
                pause, outcome = policy._settle(None, self.number, self._start, None, None)
            elif isinstance(exc, Exception):
                pause, outcome = policy._settle(None, self.number, self._start, exc, None)
            else:  # a BaseException: never retried, no hooks
                pause, outcome = None, _FAILED
        except BaseException:
            self._finish(_FAILED)
            raise
        self._pause = pause
        if pause is None:
            self._finish(outcome)
            return False
        return True

    def __repr__(self) -> str:
        return f"<ferrule.Attempt number={self.number}>"


class AttemptCount(int):
    """``Retry.attempts``: the most attempts a call makes, an ``int``; called, the
    policy's attempt blocks, so that ``for attempt in policy.attempts(): with attempt:``
    (and ``async for``) reads as tenacity users write it. ``policy.attempts()`` is the
    policy itself, which iterates the same way.

    >>> policy = retry(attempts=2, backoff=0.0)
    >>> policy.attempts == 2, policy.attempts() is policy
    (True, True)
    """

    _policy: weakref.ref[Retry]

    def __new__(cls, value: int, policy: Retry) -> AttemptCount:
        self = super().__new__(cls, value)
        self._policy = weakref.ref(policy)
        return self

    def __call__(self) -> Retry:
        policy = self._policy()
        if policy is None:  # only reachable through a count kept past its policy
            raise RuntimeError("the policy of this attempt count is gone")
        return policy

    def __repr__(self) -> str:
        return int.__repr__(self)

    def __reduce__(self) -> tuple[type[int], tuple[int]]:
        return (int, (int(self),))


class Retry:
    """A retry policy; call it on a function to decorate it, use :meth:`call`, or
    iterate it to retry a code block.

    Made by :func:`retry`, which documents the arguments. Immutable once made (only its
    statistics change), so one policy can decorate many functions and be shared
    between threads.

    >>> policy = retry(attempts=4, backoff=0.5, jitter=False, policy="linear")
    >>> [policy.delay(n) for n in range(3)]
    [0.5, 1.0, 1.5]
    >>> policy.call(divmod, 7, 2)
    (3, 1)
    """

    __slots__ = (
        "__weakref__",
        "_after_attempt",
        "_before_sleep",
        "_catch",
        "_clock",
        "_fast_ok",
        "_full",
        "_lock",
        "_n_attempts",
        "_n_calls",
        "_n_failures",
        "_n_give_ups",
        "_n_successes",
        "_policy",
        "_predicate",
        "_result_predicate",
        "_sleep",
        "attempt_timeout",
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
        retry_if_result: Callable[[Any], object] | None = None,
        before_sleep: Callable[[RetryState], object] | None = None,
        after_attempt: Callable[[RetryState], object] | None = None,
        attempt_timeout: float | None = None,
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise TypeError(f"attempts must be an int, not '{_type_name(attempts)}'")
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.attempts = AttemptCount(attempts, self)
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

        self._result_predicate = _hook(retry_if_result, "retry_if_result")
        self._before_sleep = _hook(before_sleep, "before_sleep")
        self._after_attempt = _hook(after_attempt, "after_attempt")
        self.attempt_timeout = (
            None
            if attempt_timeout is None
            else _seconds(attempt_timeout, "attempt_timeout", positive=True)
        )
        # Only what a caller asked for costs anything: without these, calls take the
        # fast path.
        self._full = (
            self._result_predicate is not None
            or self._before_sleep is not None
            or self._after_attempt is not None
            or self.attempt_timeout is not None
        )

        self._fast_ok = itertools.count()  # calls that succeeded at their first attempt
        self._lock = threading.Lock()  # guards the _n_* counters (every other call)
        self._n_calls = self._n_attempts = self._n_successes = 0
        self._n_give_ups = self._n_failures = 0

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

    # -- statistics -------------------------------------------------------------------

    def stats(self) -> RetryStats:
        """Counts of the calls this policy has finished (a :class:`RetryStats`).

        A call is counted once, when it ends, so every snapshot has ``calls == successes
        + give_ups + failures`` and ``attempts == calls + retries``; exact under threads.

        >>> policy = retry(attempts=3, backoff=0.0)
        >>> policy.call(abs, -1), policy.stats().successes
        (1, 1)
        """
        fast = _count_value(self._fast_ok)
        with self._lock:
            calls, attempts = self._n_calls, self._n_attempts
            successes, give_ups, failures = self._n_successes, self._n_give_ups, self._n_failures
        return RetryStats(
            calls=fast + calls,
            attempts=fast + attempts,
            retries=attempts - calls,
            successes=fast + successes,
            give_ups=give_ups,
            failures=failures,
        )

    def _tally(self, attempts: int, outcome: int) -> None:
        """Count a call that ended after ``attempts`` attempts (not a first-try success)."""
        with self._lock:
            self._n_calls += 1
            self._n_attempts += attempts
            if outcome == _OK:
                self._n_successes += 1
            elif outcome == _GAVE_UP:
                self._n_give_ups += 1
            else:
                self._n_failures += 1

    def _failed_first(self) -> None:
        self._tally(1, _FAILED)

    # -- running ----------------------------------------------------------------------

    def _give_up(self, exc: BaseException, attempts: int, why: str) -> BaseException:
        if _HAS_NOTES:
            exc.add_note(f"ferrule.retry: gave up after {attempts} attempt(s) ({why})")
        return exc

    def _next_pause(self, failed: int, start: float) -> float | str:
        """The pause after ``failed`` failed attempts, or why there is no next one."""
        if failed >= self.attempts:
            return "attempts exhausted"
        pause = self.delay(failed - 1)
        if self.deadline is not None and self._clock() + pause >= start + self.deadline:
            return f"deadline of {self.deadline} s"
        return pause

    def _retryable(self, exc: BaseException) -> bool:
        return self._predicate is None or bool(self._predicate(exc))

    def _judge_first(self, exc: BaseException) -> bool:
        """The predicate's verdict on a first attempt's exception; a call it ends (a
        refusal, or the predicate raising) is counted."""
        try:
            again = self._retryable(exc)
        except BaseException:
            self._failed_first()
            raise
        if not again:
            self._failed_first()
        return again

    def _pause_sync(self, pause: float) -> None:
        if self._sleep is not None:
            self._sleep(pause)
        elif pause > 0:
            time.sleep(pause)

    async def _pause_async(self, pause: float) -> None:
        if self._sleep is not None:
            slept = self._sleep(pause)
            if inspect.isawaitable(slept):
                await slept
        else:
            await asyncio.sleep(pause)

    def _settle(
        self,
        fn: Callable[..., Any] | None,
        n: int,
        start: float,
        exc: Exception | None,
        result: Any,
    ) -> tuple[float | None, int]:
        """Judge attempt ``n``, which raised ``exc`` or returned ``result``, and run the
        hooks. Returns the pause before the next attempt (``None``: the call ends here;
        a give-up's exception has its note) and how the call ends if it ends now."""
        pause: float | str | None
        if exc is not None:
            if not (isinstance(exc, self._catch) and self._retryable(exc)):
                pause, outcome = None, _FAILED
            else:
                pause, outcome = self._next_pause(n, start), _FAILED
                if isinstance(pause, str):
                    self._give_up(exc, n, pause)
                    pause, outcome = None, _GAVE_UP
        elif self._result_predicate is not None and self._result_predicate(result):
            pause, outcome = self._next_pause(n, start), _FAILED
            if isinstance(pause, str):
                pause, outcome = None, _GAVE_UP
        else:
            pause, outcome = None, _OK
        after, before = self._after_attempt, self._before_sleep
        if after is not None or (pause is not None and before is not None):
            state = RetryState(n, exc, result, self._clock() - start, pause, fn)
            if after is not None:
                after(state)
            if pause is not None and before is not None:
                before(state)
        return pause, outcome

    def _again(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        start: float,
        exc: BaseException,
    ) -> R:
        """The fast path after a first attempt that raised ``exc`` (retryable)."""
        failed = 1
        outcome = _FAILED
        try:
            while True:
                pause = self._next_pause(failed, start)
                if isinstance(pause, str):
                    outcome = _GAVE_UP
                    raise self._give_up(exc, failed, pause)
                self._pause_sync(pause)
                failed += 1
                try:
                    result = fn(*args, **kwargs)
                except self._catch as e:
                    if not self._retryable(e):
                        raise
                    exc = e
                else:
                    outcome = _OK
                    return result
        finally:
            self._tally(failed, outcome)

    async def _again_async(
        self,
        fn: Callable[..., Awaitable[R]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        start: float,
        exc: BaseException,
    ) -> R:
        failed = 1
        outcome = _FAILED
        try:
            while True:
                pause = self._next_pause(failed, start)
                if isinstance(pause, str):
                    outcome = _GAVE_UP
                    raise self._give_up(exc, failed, pause)
                await self._pause_async(pause)
                failed += 1
                try:
                    result = await fn(*args, **kwargs)
                except self._catch as e:
                    if not self._retryable(e):
                        raise
                    exc = e
                else:
                    outcome = _OK
                    return result
        finally:
            self._tally(failed, outcome)

    def _run(self, fn: Callable[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        """The full path: every attempt judged by ``_settle``."""
        start = self._clock()
        n = 0
        outcome = _FAILED
        try:
            while True:
                n += 1
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:
                    pause, outcome = self._settle(fn, n, start, exc, None)
                    if pause is None:
                        raise
                else:
                    pause, outcome = self._settle(fn, n, start, None, result)
                    if pause is None:
                        return result
                self._pause_sync(pause)
        finally:
            self._tally(n, outcome)

    async def _run_async(
        self, fn: Callable[..., Awaitable[R]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        start = self._clock()
        timeout = self.attempt_timeout
        n = 0
        outcome = _FAILED
        try:
            while True:
                n += 1
                try:
                    if timeout is None:
                        result = await fn(*args, **kwargs)
                    else:
                        result = await _within(fn(*args, **kwargs), timeout)
                except Exception as exc:
                    pause, outcome = self._settle(fn, n, start, exc, None)
                    if pause is None:
                        raise
                else:
                    pause, outcome = self._settle(fn, n, start, None, result)
                    if pause is None:
                        return result
                await self._pause_async(pause)
        finally:
            self._tally(n, outcome)

    def _sync_only(self, fn: object) -> None:
        if self.attempt_timeout is not None:
            raise TypeError(
                "attempt_timeout needs an async def function (a plain function cannot be "
                f"interrupted), not {getattr(fn, '__qualname__', _type_name(fn))!r}"
            )

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``fn`` (a plain or ``async def`` function)."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not '{_type_name(fn)}'")
        if inspect.iscoroutinefunction(fn):
            return cast(Callable[P, R], self._wrap_async(fn))
        self._sync_only(fn)
        if self._full:
            run = self._run

            @functools.wraps(fn)
            def full(*args: P.args, **kwargs: P.kwargs) -> R:
                return run(fn, args, kwargs)

            return full

        catch, predicate, again = self._catch, self._predicate, self._again
        judge, ok, failed = self._judge_first, self._fast_ok, self._failed_first
        now = self._clock if self.deadline is not None else None

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            start = now() if now is not None else 0.0
            try:
                result = fn(*args, **kwargs)
            except catch as exc:
                if predicate is not None and not judge(exc):
                    raise
                first = exc
            except BaseException:
                failed()
                raise
            else:
                next(ok)
                return result
            return again(fn, args, kwargs, start, first)

        return wrapper

    def _wrap_async(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        if self._full:
            run = self._run_async

            @functools.wraps(fn)
            async def full(*args: P.args, **kwargs: P.kwargs) -> R:
                return await run(fn, args, kwargs)

            return full

        catch, predicate, again = self._catch, self._predicate, self._again_async
        judge, ok, failed = self._judge_first, self._fast_ok, self._failed_first
        now = self._clock if self.deadline is not None else None

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            start = now() if now is not None else 0.0
            try:
                result = await fn(*args, **kwargs)
            except catch as exc:
                if predicate is not None and not judge(exc):
                    raise
                first = exc
            except BaseException:
                failed()
                raise
            else:
                next(ok)
                return result
            return await again(fn, args, kwargs, start, first)

        return wrapper

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` under this policy (for an ``async def`` function,
        returns the coroutine to await)."""
        if inspect.iscoroutinefunction(fn):
            return cast(R, self._call_async(fn, args, kwargs))
        if self._full:
            self._sync_only(fn)
            return self._run(fn, args, kwargs)
        start = self._clock() if self.deadline is not None else 0.0
        try:
            result = fn(*args, **kwargs)
        except self._catch as exc:
            if self._predicate is not None and not self._judge_first(exc):
                raise
            first = exc
        except BaseException:
            self._failed_first()
            raise
        else:
            next(self._fast_ok)
            return result
        return self._again(fn, args, kwargs, start, first)

    async def _call_async(
        self, fn: Callable[..., Awaitable[R]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        if self._full:
            return await self._run_async(fn, args, kwargs)
        start = self._clock() if self.deadline is not None else 0.0
        try:
            result = await fn(*args, **kwargs)
        except self._catch as exc:
            if self._predicate is not None and not self._judge_first(exc):
                raise
            first = exc
        except BaseException:
            self._failed_first()
            raise
        else:
            next(self._fast_ok)
            return result
        return await self._again_async(fn, args, kwargs, start, first)

    # -- attempt blocks ---------------------------------------------------------------

    def _check_blocks(self) -> None:
        if self.attempt_timeout is not None:
            raise TypeError(
                "attempt_timeout applies to async def functions (decorated or passed to "
                "call()), not to 'with attempt:' blocks"
            )
        if self._result_predicate is not None:
            raise TypeError(
                "retry_if_result applies to function results (decorated or passed to "
                "call()); a 'with attempt:' block has none"
            )

    def __iter__(self) -> Iterator[Attempt]:
        """Retry a code block: ``for attempt in policy: with attempt: ...``."""
        self._check_blocks()
        return self._blocks()

    def __aiter__(self) -> AsyncIterator[Attempt]:
        """Retry a code block in a coroutine: ``async for attempt in policy: with
        attempt: ...`` (pauses with ``asyncio.sleep``)."""
        self._check_blocks()
        return self._blocks_async()

    def _blocks(self) -> Iterator[Attempt]:
        start = self._clock()
        attempt: Attempt | None = None
        n = 0
        try:
            while True:
                n += 1
                attempt = Attempt._make(self, n, start)
                yield attempt
                pause = self._block_done(attempt)
                if pause is None:
                    return
                self._pause_sync(pause)
        finally:
            if attempt is not None:
                attempt._abandon()

    async def _blocks_async(self) -> AsyncIterator[Attempt]:
        start = self._clock()
        attempt: Attempt | None = None
        n = 0
        try:
            while True:
                n += 1
                attempt = Attempt._make(self, n, start)
                yield attempt
                pause = self._block_done(attempt)
                if pause is None:
                    return
                await self._pause_async(pause)
        finally:
            if attempt is not None:
                attempt._abandon()

    @staticmethod
    def _block_done(attempt: Attempt) -> float | None:
        if attempt._stage != _EXITED:
            raise RuntimeError(
                f"attempt {attempt.number} was not used as 'with attempt:' before the next"
            )
        return attempt._pause

    def __repr__(self) -> str:
        extra = ""
        hooks = {
            "retry_if_result": self._result_predicate,
            "before_sleep": self._before_sleep,
            "after_attempt": self._after_attempt,
        }
        for name, fn in hooks.items():
            if fn is not None:
                extra += f", {name}={getattr(fn, '__qualname__', _type_name(fn))}"
        if self.attempt_timeout is not None:
            extra += f", attempt_timeout={self.attempt_timeout}"
        return (
            f"Retry(attempts={self.attempts}, backoff={self.backoff}, "
            f"max_backoff={self.max_backoff}, jitter={self.jitter}, deadline={self.deadline}, "
            f"policy={self.policy!r}{extra})"
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
    retry_if_result: Callable[[Any], object] | None = None,
    before_sleep: Callable[[RetryState], object] | None = None,
    after_attempt: Callable[[RetryState], object] | None = None,
    attempt_timeout: float | None = None,
) -> Retry:
    """Retry a function (plain or ``async def``) that raises, or a code block.

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
      ``clock``: a ``ManualClock`` to measure the deadline and ``elapsed`` with.
    - ``retry_if_result``: ``retry_if_result(result) -> bool``; a result for which it is
      true is retried like an exception. When the attempts or the deadline run out, the
      last result is returned (it is counted as a give-up in ``stats()``).
    - ``after_attempt(state)``: called after every attempt that returned or raised an
      ``Exception``; ``before_sleep(state)``: called before each pause, after
      ``after_attempt``. ``state`` is a :class:`RetryState`. Hooks are plain callables,
      called in the calling thread (or task) with no lock held; an exception a hook
      raises propagates and ends the call (no more attempts).
    - ``attempt_timeout``: seconds per attempt of an ``async def`` function (the attempt
      is cancelled and raises ``TimeoutError``, which is retried when ``retry_on``
      retries ``TimeoutError``, as the default does). Plain functions cannot be
      interrupted: decorating one with ``attempt_timeout`` raises ``TypeError``.

    When it gives up, the last exception propagates unchanged, with a note saying after
    how many attempts (Python 3.11+). Async functions pause with ``asyncio.sleep``, never
    blocking the loop. ``for attempt in policy: with attempt: ...`` (and ``async for``)
    retries a block: see :class:`Attempt`.

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
        retry_if_result=retry_if_result,
        before_sleep=before_sleep,
        after_attempt=after_attempt,
        attempt_timeout=attempt_timeout,
    )
