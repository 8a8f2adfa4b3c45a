"""``RedisCircuitBreaker``: one circuit breaker whose state every process shares, in one
Redis hash (see the package docs for the layout).

The arguments are checked by constructing a ``ferrule.CircuitBreaker`` with them (and
then dropping it), so a bad argument gets the in-process breaker's own error, and the
rule it chose (consecutive or rate, time or count window) is read back from it. The
state, the counts and the half-open probes live in the server; every change is
``lua/breaker.lua``, one script call on the server's clock.

What each process keeps is a *view*: the state and generation the server last told it,
and for an open breaker the local monotonic instant its reset timeout ends. The view is
replaced (one tuple, one attribute store) by every reply, so threads share it without a
lock; a stale view costs at most one extra round trip or one extra call, never a wrong
count, because the server counts an outcome only when the generation its permit carries
is the current one.

- closed (or forced closed) view: a call is admitted here, with no request; its outcome
  is one script call (an exception outside ``expected`` on a closed view: none), whose
  reply is the new view.
- open (or forced open) view: a call is refused here, with no request, until the instant
  the reset timeout ends (forced open: ``reset_timeout`` seconds), then the server is
  asked.
- half-open or unknown view (a new object, or after a failed request): the admission is
  one script call, which may move an open breaker to half-open and hand out a probe
  slot.

Notifications (``on_state_change``, then ``bus.publish``) follow every change a script
run of this object made, after the reply and with no lock held; what they raise goes to
``sys.unraisablehook``, as from the native breaker.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, ParamSpec, Protocol, TypeVar, cast

from ferrule._native import BackendError, CircuitBreaker, CircuitOpen, _prefix
from ferrule.redis._common import AsyncClient, Script, SyncClient, check_client, is_async, lua, text

__all__ = ["BreakerOnError", "RedisBreakerStats", "RedisCircuitBreaker"]

P = ParamSpec("P")
R = TypeVar("R")

BreakerOnError = Literal["raise", "allow", "deny"]
_State = Literal["closed", "open", "half_open", "forced_open", "forced_closed"]

_BREAKER: Final = Script(lua("breaker"))
_STATES: Final[dict[str, _State]] = {
    "c": "closed",
    "o": "open",
    "h": "half_open",
    "fo": "forced_open",
    "fc": "forced_closed",
}
# A view: (state code, generation, monotonic instant the server must be asked again).
# "?" is unknown: ask at the next admission.
_View = tuple[str, int, float]
_UNKNOWN: Final[_View] = ("?", 0, 0.0)
# A permit: (generation, probe token or "", monotonic admission time or 0.0). A
# generation of -1: admitted by on_error="allow", recorded nowhere.
_Permit = tuple[int, str, float]
_FALLBACK: Final = -1


class _Bus(Protocol):
    def publish(self, signal_type: str, data: Any, /) -> object: ...


@dataclass(frozen=True, slots=True)
class RedisBreakerStats:
    """What :meth:`RedisCircuitBreaker.stats` reads: the shared ``state`` and window,
    read from the server in one script call, beside this object's own counters.

    Shared (every process's calls): ``state``, ``consecutive_failures`` (the current run
    while closed under the consecutive rule, else 0), ``window_calls`` and
    ``window_failures`` (the failure-rate window while closed, else 0).

    This object's (this process's calls through it), as :class:`ferrule.BreakerStats`
    counts them: ``calls`` (admitted) ``== successes + failures + ignored`` once none is
    in flight; ``slow_calls`` (part of ``failures``); ``rejections``; ``state_changes``
    (the changes this object's script calls made); and ``backend_errors``: requests to
    Redis that failed (an outcome whose request failed is not counted on the server).
    """

    state: _State
    calls: int
    successes: int
    failures: int
    slow_calls: int
    ignored: int
    rejections: int
    state_changes: int
    consecutive_failures: int
    window_calls: int
    window_failures: int
    backend_errors: int


class _Unraisable:
    """Raises ``exc`` from ``__del__``: CPython hands it to ``sys.unraisablehook``, where
    the native breaker reports what its callbacks raise."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc: BaseException | None = exc

    def __del__(self) -> None:
        exc, self.exc = self.exc, None
        if exc is not None:
            raise exc


def _report(exc: BaseException) -> None:
    _Unraisable(exc)  # collected here: its __del__ raises into sys.unraisablehook


# Permits of the `with` blocks open in this context, innermost last (as ferrule._breaker).
_PERMITS: ContextVar[tuple[tuple[RedisCircuitBreaker, _Permit], ...]] = ContextVar(
    "ferrule_redis_breaker_permits", default=()
)


class RedisCircuitBreaker:
    """A circuit breaker whose state every process that uses the same Redis server,
    ``prefix`` and ``name`` shares: :class:`ferrule.CircuitBreaker`'s rules, arguments and
    forms (``call``, decorator, ``with``, ``async with``), with the state, the counts and
    the half-open probes in one hash, ``<prefix><name>``, changed by one server-side
    script per admission or outcome, on the server's clock.

    Failures in one process open the breaker for all; in half-open at most
    ``half_open_max_calls`` probes run across every process, each holding a lease of
    ``probe_timeout`` seconds (a prober that dies frees its slot when its lease ends; an
    outcome that comes after that does not count); the probe successes that close it
    close it for all.

    Each process keeps a view of the state: while it saw the breaker closed, a call costs
    one script call (recording its outcome), none to be admitted; while it saw it open,
    calls are refused without a request until the reset timeout it was told ends. So a
    process sees a breaker opened elsewhere with its next recorded outcome, and a breaker
    closed (or reset) elsewhere at the latest when that timeout ends (a forced-open one
    after ``reset_timeout`` seconds).

    ``client`` is a ``redis.Redis`` (``call``, ``with``, plain functions) or a
    ``redis.asyncio.Redis`` (``async with``, ``async def`` functions); the constructor
    does no I/O. When a request fails, ``on_error`` decides an admission: ``"raise"``
    raises :class:`ferrule.BackendError`, ``"allow"`` admits the call (its outcome is not
    recorded), ``"deny"`` raises :class:`ferrule.CircuitOpen` (``retry_after`` 0.0)
    chained from the BackendError. A failed recording never changes the call's outcome:
    it is counted in ``stats().backend_errors`` and the next admission asks the server.
    ``state``, ``retry_after``, ``stats()``, ``reset()``, ``force_open()`` and
    ``force_closed()`` raise BackendError whatever ``on_error`` says.

    >>> import redis
    >>> cb = RedisCircuitBreaker(redis.Redis(), "payments", failure_threshold=5)
    >>> cb.key
    'ferrule:breaker:payments'
    >>> cb.call(len, "abc")   # doctest: +SKIP
    3
    """

    __slots__ = (
        "__weakref__",
        "_args",
        "_async",
        "_bus",
        "_client",
        "_expected",
        "_key",
        "_lock",
        "_n",
        "_name",
        "_on_error",
        "_on_state_change",
        "_probe_us",
        "_recheck",
        "_rule",
        "_slow",
        "_spec",
        "_topic",
        "_view",
    )

    def __init__(
        self,
        client: SyncClient | AsyncClient,
        name: str,
        failure_threshold: int | None = None,
        reset_timeout: float = 30.0,
        *,
        failure_rate: float | None = None,
        min_calls: int | None = None,
        window: float | None = None,
        window_calls: int | None = None,
        slow_call: float | None = None,
        half_open_max_calls: int = 1,
        success_threshold: int = 1,
        expected: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        on_state_change: Callable[[str, str], object] | None = None,
        bus: _Bus | None = None,
        prefix: str = "ferrule:breaker:",
        on_error: BreakerOnError = "raise",
        probe_timeout: float = 30.0,
    ) -> None:
        """``name`` (a non-empty str) names the breaker: its key is ``prefix + name``,
        its topic ``breaker.<name>.state``. Every other argument is
        :class:`ferrule.CircuitBreaker`'s, checked by its rules (and messages);
        ``probe_timeout`` > 0 seconds is a probe's lease."""
        check_client(client)
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not '{type(name).__name__}'")
        spec = CircuitBreaker(
            failure_threshold,
            reset_timeout,
            failure_rate=failure_rate,
            min_calls=min_calls,
            window=window,
            window_calls=window_calls,
            slow_call=slow_call,
            half_open_max_calls=half_open_max_calls,
            success_threshold=success_threshold,
            expected=expected,
            name=name,
            on_state_change=on_state_change,
            bus=bus,
        )
        if on_error not in ("raise", "allow", "deny"):
            raise ValueError(f"on_error must be one of 'raise', 'allow', 'deny', not {on_error!r}")
        probe = _positive(probe_timeout, "probe_timeout")
        self._key = (_prefix(prefix) + name).encode()  # a surrogate: UnicodeEncodeError
        self._spec = spec
        self._name = name
        self._client = client
        self._async = is_async(client)
        self._on_error: BreakerOnError = on_error
        self._on_state_change = on_state_change
        self._bus = bus
        self._topic = f"breaker.{name}.state"
        self._expected = spec.expected
        self._slow = spec.slow_call
        self._recheck = spec.reset_timeout
        self._probe_us = _micros(probe)
        reset_us = _micros(spec.reset_timeout)
        if spec.failure_rate is None:
            rule, limit, rate, win = "n", spec.failure_threshold, 1.0, 0
            idle = 0
        elif spec.window_calls is not None:
            rule, limit, rate, win = "w", spec.min_calls, spec.failure_rate, spec.window_calls
            idle = 0
        else:
            window_us = _micros(cast(float, spec.window))
            rule, limit, rate, win = "t", spec.min_calls, spec.failure_rate, window_us
            idle = window_us
        self._rule = rule
        # breaker.lua's ARGV[2:10]; an idle hash lives reset + probe (+ window) longer.
        self._args: list[Any] = [
            rule,
            limit,
            repr(rate),
            win,
            reset_us,
            spec.half_open_max_calls,
            spec.success_threshold,
            self._probe_us,
            reset_us + self._probe_us + idle,
        ]
        self._view: _View = _UNKNOWN
        self._lock = threading.Lock()  # guards the counters only
        # calls, successes, failures, slow_calls, ignored, rejections, state_changes,
        # backend_errors
        self._n = [0] * 8

    # -- configuration --

    @property
    def name(self) -> str:
        """The name shared by every process (the key ``<prefix><name>``)."""
        return self._name

    @property
    def key(self) -> str:
        """The hash that holds the breaker's state: ``prefix + name``."""
        return self._key.decode()

    @property
    def on_error(self) -> BreakerOnError:
        """When Redis fails: ``"raise"``, ``"allow"`` or ``"deny"``."""
        return self._on_error

    @property
    def probe_timeout(self) -> float:
        """Seconds a probe's lease lasts."""
        return self._probe_us / 1e6

    @property
    def failure_threshold(self) -> int | None:
        """Consecutive failures that open the breaker; None under the failure-rate rule."""
        return self._spec.failure_threshold

    @property
    def failure_rate(self) -> float | None:
        """The failure rate that opens the breaker; None under the consecutive rule."""
        return self._spec.failure_rate

    @property
    def min_calls(self) -> int | None:
        """Calls in the window before the rate rule can open the breaker (rate rule), or None."""
        return self._spec.min_calls

    @property
    def window(self) -> float | None:
        """The rate rule's window in seconds, or None."""
        return self._spec.window

    @property
    def window_calls(self) -> int | None:
        """The rate rule's window in calls, or None."""
        return self._spec.window_calls

    @property
    def slow_call(self) -> float | None:
        """Seconds after which a call counts as a failure, or None."""
        return self._spec.slow_call

    @property
    def success_threshold(self) -> int:
        """Successful probes that close a half-open breaker."""
        return self._spec.success_threshold

    @property
    def reset_timeout(self) -> float:
        """Seconds an open breaker refuses calls before it half-opens."""
        return self._spec.reset_timeout

    @property
    def half_open_max_calls(self) -> int:
        """Probes let through at once while half-open (across processes)."""
        return self._spec.half_open_max_calls

    @property
    def expected(self) -> tuple[type[BaseException], ...]:
        """Exception types that count as failures."""
        return self._expected

    def __repr__(self) -> str:
        rule = (
            f"failure_threshold={self.failure_threshold}"
            if self.failure_rate is None
            else f"failure_rate={self.failure_rate!r}"
        )
        return (
            f"RedisCircuitBreaker(name={self._name!r}, {rule}, "
            f"reset_timeout={self.reset_timeout!r}, key={self.key!r}, "
            f"on_error={self._on_error!r})"
        )

    # -- the server --

    def _sync(self) -> SyncClient:
        if self._async:
            raise TypeError(
                "this breaker has a redis.asyncio client: use async with or an async def "
                "function, or give a redis.Redis client for call, with and plain functions"
            )
        return self._client  # type: ignore[return-value]

    def _aclient(self) -> AsyncClient:
        if not self._async:
            raise TypeError("async with and async def functions need a redis.asyncio.Redis client")
        return self._client  # type: ignore[return-value]

    def _argv(self, op: str, gen: int = 0, token: str = "", out: str = "") -> list[Any]:
        return [op, *self._args, gen, token, out]

    def _run(self, op: str, gen: int = 0, token: str = "", out: str = "") -> list[Any]:
        try:
            return cast(
                list[Any], _BREAKER(self._sync(), [self._key], self._argv(op, gen, token, out))
            )
        except BackendError:
            self._failed()
            raise

    async def _arun(self, op: str, gen: int = 0, token: str = "", out: str = "") -> list[Any]:
        try:
            client = self._aclient()
            return cast(
                list[Any],
                await _BREAKER.acall(client, [self._key], self._argv(op, gen, token, out)),
            )
        except BackendError:
            self._failed()
            raise

    def _failed(self) -> None:
        self._view = _UNKNOWN
        self._count(7)

    def _count(self, i: int, n: int = 1) -> None:
        with self._lock:
            self._n[i] += n

    def _apply(self, reply: list[Any]) -> tuple[str, float]:
        """Take a reply as the new view, report the changes it made; (state code,
        seconds until a probe may go: math.inf when forced open)."""
        s, g, retry_us, moves = text(reply[0]), int(reply[1]), int(reply[2]), text(reply[3])
        now = time.monotonic()
        if s == "o":
            retry = retry_us / 1e6
            self._view = (s, g, now + retry)
        elif s == "fo":
            retry = math.inf
            self._view = (s, g, now + self._recheck)
        else:
            retry = 0.0
            self._view = (s, g, 0.0) if s in ("c", "fc") else _UNKNOWN
        if moves:
            changes = [m.split(":") for m in moves.split(",")]
            self._count(6, len(changes))
            for old, new in changes:
                self._notify(_STATES[old], _STATES[new])
        return s, retry

    def _notify(self, old: str, new: str) -> None:
        cb, bus = self._on_state_change, self._bus
        if cb is not None:
            try:
                cb(old, new)
            except BaseException as e:
                _report(e)
        if bus is not None:
            try:
                bus.publish(self._topic, {"name": self._name, "state": new, "previous": old})
            except BaseException as e:
                _report(e)

    # -- admission and outcome --

    def _local(self) -> _Permit | None:
        """A permit from the view alone, or None when the server must be asked. Raises
        CircuitOpen while an open view lasts."""
        s, g, until = self._view
        if s in ("c", "fc"):
            self._count(0)
            return (g, "", time.monotonic() if self._slow is not None else 0.0)
        if s in ("o", "fo"):
            left = until - time.monotonic()
            if left > 0:
                self._count(5)
                raise self._open(s, math.inf if s == "fo" else left)
        return None

    @staticmethod
    def _token_next() -> str:
        """A probe's token: 64 random bits, unique across processes and threads."""
        return os.urandom(8).hex()

    def _granted(self, reply: list[Any], token: str) -> _Permit:
        s, retry = self._apply(reply)
        admitted = int(reply[4])
        if not admitted:
            self._count(5)
            raise self._open(s, retry)
        self._count(0)
        start = time.monotonic() if self._slow is not None else 0.0
        return (int(reply[1]), token if admitted == 2 else "", start)

    def _fallback(self, err: BackendError) -> _Permit:
        if self._on_error == "raise":
            raise err
        if self._on_error == "allow":
            self._count(0)
            return (_FALLBACK, "", time.monotonic() if self._slow is not None else 0.0)
        self._count(5)
        exc = self._open("?", 0.0)
        raise exc from err

    def _acquire(self) -> _Permit:
        permit = self._local()
        if permit is not None:
            return permit
        token = self._token_next()
        try:
            reply = self._run("a", token=token)
        except BackendError as e:
            return self._fallback(e)
        return self._granted(reply, token)

    async def _acquire_async(self) -> _Permit:
        self._aclient()
        permit = self._local()
        if permit is not None:
            return permit
        token = self._token_next()
        try:
            reply = await self._arun("a", token=token)
        except BackendError as e:
            return self._fallback(e)
        return self._granted(reply, token)

    def _outcome(self, permit: _Permit, exc: BaseException | None) -> str:
        """'s', 'f' or 'i', counted here."""
        if exc is None:
            if self._slow is not None and time.monotonic() - permit[2] >= self._slow:
                self._count_all((2, 3))
                return "f"
            self._count(1)
            return "s"
        try:
            failed = isinstance(exc, self._expected)
        except BaseException as e:
            _report(e)
            failed = False
        self._count(2 if failed else 4)
        return "f" if failed else "i"

    def _count_all(self, idx: tuple[int, ...]) -> None:
        with self._lock:
            for i in idx:
                self._n[i] += 1

    def _needs_request(self, permit: _Permit, out: str) -> bool:
        # An exception outside `expected` changes nothing on a closed period; the
        # fallback's permits are recorded nowhere.
        return permit[0] != _FALLBACK and not (out == "i" and not permit[1])

    def _record(self, permit: _Permit, exc: BaseException | None = None) -> None:
        out = self._outcome(permit, exc)
        if not self._needs_request(permit, out):
            return
        try:
            reply = self._run("r", permit[0], permit[1], out)
        except BackendError:
            return  # counted in backend_errors; the next admission asks the server
        self._apply(reply)

    async def _record_async(self, permit: _Permit, exc: BaseException | None = None) -> None:
        out = self._outcome(permit, exc)
        if not self._needs_request(permit, out):
            return
        try:
            reply = await self._arun("r", permit[0], permit[1], out)
        except BackendError:
            return
        self._apply(reply)

    def _open(self, s: str, retry: float) -> CircuitOpen:
        label = f"circuit breaker '{self._name}'"
        if s == "fo":
            msg = f"{label} is forced open"
        elif s == "h":
            msg = (
                f"{label} is half-open and its {self.half_open_max_calls} probe call(s) "
                "are in flight"
            )
        elif s == "?":
            msg = f"{label}: redis failed, and on_error is 'deny'"
        else:
            msg = f"{label} is open; retry after {retry:.3f} s"
        exc = CircuitOpen(msg)
        exc.retry_after = retry
        return exc

    # -- the API --

    def call(self, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """``func(*args, **kwargs)`` through the breaker: raises
        :class:`ferrule.CircuitOpen` without calling while open; otherwise returns or
        raises what ``func`` does. Needs a ``redis.Redis`` client."""
        self._sync()
        permit = self._acquire()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._record(permit, exc)
            raise
        self._record(permit)
        return result

    def __call__(self, func: Callable[P, R], /) -> Callable[P, R]:
        """Decorate a function (through :meth:`call`; needs a ``redis.Redis`` client) or
        an ``async def`` function (needs a ``redis.asyncio.Redis`` client)."""
        if not callable(func):
            raise TypeError(f"func must be callable, not '{type(func).__name__}'")
        if inspect.iscoroutinefunction(func):
            return cast(Callable[P, R], self._decorate_async(func))
        call = self.call

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return call(func, *args, **kwargs)

        return wrapper

    def _decorate_async(self, func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            permit = await self._acquire_async()
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                await self._record_async(permit, exc)
                raise
            await self._record_async(permit)
            return result

        return wrapper

    def _push(self, permit: _Permit) -> None:
        _PERMITS.set((*_PERMITS.get(), (self, permit)))

    def _pop(self) -> _Permit:
        stack = _PERMITS.get()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] is self:
                _PERMITS.set(stack[:i] + stack[i + 1 :])
                return stack[i][1]
        raise RuntimeError("RedisCircuitBreaker exit without a matching enter in this context")

    def __enter__(self) -> RedisCircuitBreaker:
        """Admit the block as one call (or raise :class:`ferrule.CircuitOpen`)."""
        self._sync()
        self._push(self._acquire())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        """Record the block's outcome; never suppresses its exception."""
        self._record(self._pop(), exc)
        return False

    async def __aenter__(self) -> RedisCircuitBreaker:
        """``async with cb:`` admits the block as one call."""
        self._push(await self._acquire_async())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        await self._record_async(self._pop(), exc)
        return False

    def _read(self) -> tuple[str, float, list[Any]]:
        reply = self._run("q")
        s, retry = self._apply(reply)
        return s, retry, reply

    @property
    def state(self) -> _State:
        """The state a call would meet now, read from the server (one script call): an
        open breaker whose timeout has passed becomes half-open when read."""
        return _STATES[self._read()[0]]

    @property
    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through, read from the server; 0.0
        when not open, infinity when forced open."""
        return self._read()[1]

    def reset(self) -> None:
        """Close the breaker for every process (from any state, the forced ones too) and
        clear its run of failures and its window; calls in flight from before the reset
        no longer count."""
        self._apply(self._run("x"))

    def force_open(self) -> None:
        """Hold the breaker open for every process until ``reset()`` or
        ``force_closed()``: every call raises :class:`ferrule.CircuitOpen`. The hash
        then has no expiry."""
        self._apply(self._run("o"))

    def force_closed(self) -> None:
        """Hold the breaker closed for every process until ``reset()`` or
        ``force_open()``: every call goes through and no outcome changes the state."""
        self._apply(self._run("k"))

    def stats(self) -> RedisBreakerStats:
        """The shared state and window (one script call) and this object's counters;
        see :class:`RedisBreakerStats`."""
        s, _, reply = self._read()
        with self._lock:
            n = list(self._n)
        return RedisBreakerStats(
            state=_STATES[s],
            calls=n[0],
            successes=n[1],
            failures=n[2],
            slow_calls=n[3],
            ignored=n[4],
            rejections=n[5],
            state_changes=n[6],
            consecutive_failures=int(reply[5]),
            window_calls=int(reply[6]),
            window_failures=int(reply[7]),
            backend_errors=n[7],
        )


def _micros(seconds: float) -> int:
    """Whole microseconds, rounded up (a timeout never shorter than asked)."""
    return math.ceil(round(seconds * 1e9) / 1000)


def _positive(x: object, arg: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{arg} must be a number, not '{type(x).__name__}'")
    v = float(x)
    if not v > 0 or math.isinf(v):
        raise ValueError(f"{arg} must be > 0 and finite")
    if v > 4e9:
        raise ValueError(f"{arg} must be at most 4e9 seconds")
    return v
