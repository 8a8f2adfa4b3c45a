"""``RedisRateLimiter``: GCRA with each key's state in Redis (see the package docs).

The arguments are checked by the native module with ``ferrule.RateLimiter``'s own rules
(``_gcra_windows``, ``_spec_windows``, ``_check_cost``, ``_timeout``), which also give
each limit's emission interval and window for the script; keys are encoded there too
(``_redis_key``). The decision itself is ``lua/gcra.lua``, run by the server: one script
call per decision whatever the number of limits, every window checked on the server's
clock and written together (all or none) in one value.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine, Iterable
from typing import Any, Literal

from ferrule._native import (
    _WAIT_SLICE,
    BackendError,
    Decision,
    _check_cost,
    _gcra_windows,
    _prefix,
    _redis_key,
    _spec_windows,
    _timeout,
)
from ferrule._ratelimit import Limit
from ferrule.redis._common import (
    AsyncClient,
    RedisError,
    Script,
    SyncClient,
    backend,
    check_client,
    is_async,
    lua,
)

__all__ = ["OnError", "RedisRateLimiter"]

_Key = None | str | int | bytes | tuple[Any, ...]
OnError = Literal["raise", "allow", "deny"]
# A limit as given: (rate, per) or (rate, per, burst).
_LimitArg = tuple[float, float] | tuple[float, float, int | None]
# A checked limit: (rate, per, interval_ns, burst, tau_ns).
_Window = tuple[float, float, int, int, int]


class _DefaultPer(float):
    """``per``'s default (1.0), told apart by identity: ``per`` beside ``limits`` is
    refused, as :class:`ferrule.RateLimiter` refuses it."""

    __slots__ = ()


_PER = _DefaultPer(1.0)

_GCRA = Script(lua("gcra"))


class RedisRateLimiter:
    """A keyed GCRA token-bucket limiter shared by every process that uses the same Redis
    server and ``prefix``: ``ferrule.RateLimiter``'s API and exact decisions, with each
    decision one script call (one round trip) that reads the server's clock.

    ``client`` is a ``redis.Redis`` (for the sync methods) or a ``redis.asyncio.Redis``
    (for :meth:`acquire_async`). The constructor does no I/O. When Redis fails,
    ``on_error="raise"`` raises :class:`ferrule.BackendError` (chained from the redis
    error), ``"allow"`` admits as if the bucket were full (taking nothing) and ``"deny"``
    refuses as if it were empty.

    Several limits on every key (``limits=[(rate, per[, burst]), ...]``, or a spec
    through :meth:`parse`) are checked by the same one script call: a request is granted
    only if every limit allows it, and then taken from every one.

    >>> import redis
    >>> rl = RedisRateLimiter(redis.Redis(), 10, per=1.0)   # 10/s, burst 10
    >>> rl.try_acquire("user:1")                            # doctest: +SKIP
    True
    >>> rl = RedisRateLimiter.parse(redis.Redis(), "10/second; 100/minute")
    >>> rl.limits
    ((10.0, 1.0, 10), (100.0, 60.0, 100))
    """

    __slots__ = (
        "_async",
        "_burst",
        "_client",
        "_on_error",
        "_prefix",
        "_wargs",
        "_windows",
    )

    def __init__(
        self,
        client: SyncClient | AsyncClient,
        rate: float | None = None,
        per: float = _PER,
        *,
        burst: int | None = None,
        limits: Iterable[_LimitArg] | None = None,
        prefix: str = "ferrule:rl:",
        on_error: OnError = "raise",
    ) -> None:
        """``rate`` tokens per ``per`` seconds (default 1.0) with capacity ``burst``, or
        ``limits``: ``(rate, per)`` or ``(rate, per, burst)`` tuples that must all allow a
        request, checked as :class:`ferrule.RateLimiter` checks them (either form, not
        both: TypeError)."""
        check_client(client)
        if per is _PER:
            windows = _gcra_windows(rate, burst=burst, limits=limits)
        else:
            windows = _gcra_windows(rate, per, burst, limits)
        self._setup(client, windows, prefix, on_error)

    @classmethod
    def parse(
        cls,
        client: SyncClient | AsyncClient,
        spec: str,
        *,
        prefix: str = "ferrule:rl:",
        on_error: OnError = "raise",
    ) -> RedisRateLimiter:
        """A limiter from a spec, as :meth:`ferrule.RateLimiter.parse` reads it:
        ``RedisRateLimiter.parse(client, "10/second; 1000 per hour")``."""
        check_client(client)
        self = cls.__new__(cls)
        self._setup(client, _spec_windows(spec), prefix, on_error)
        return self

    def _setup(
        self,
        client: SyncClient | AsyncClient,
        windows: list[_Window],
        prefix: str,
        on_error: OnError,
    ) -> None:
        self._windows = tuple(windows)
        self._burst = min(w[3] for w in windows)
        # The script's per-window arguments: interval and window of each, in order.
        self._wargs = [x for w in windows for x in (w[2], w[4])]
        self._prefix = _prefix(prefix).encode()
        if on_error not in ("raise", "allow", "deny"):
            raise ValueError(f"on_error must be one of 'raise', 'allow', 'deny', not {on_error!r}")
        self._on_error: OnError = on_error
        self._client = client
        self._async = is_async(client)

    @property
    def rate(self) -> float:
        """The first limit's rate."""
        return self._windows[0][0]

    @property
    def per(self) -> float:
        """The first limit's period."""
        return self._windows[0][1]

    @property
    def burst(self) -> int:
        """The first limit's capacity."""
        return self._windows[0][3]

    @property
    def limits(self) -> tuple[tuple[float, float, int], ...]:
        """Every limit as ``(rate, per, burst)``, in order."""
        return tuple((w[0], w[1], w[3]) for w in self._windows)

    @property
    def prefix(self) -> str:
        """What every key of this limiter in Redis starts with."""
        return self._prefix.decode()

    @property
    def on_error(self) -> OnError:
        """When Redis fails: ``"raise"``, ``"allow"`` or ``"deny"``."""
        return self._on_error

    def __repr__(self) -> str:
        if len(self._windows) == 1:
            head = f"rate={self.rate!r}, per={self.per!r}, burst={self.burst}"
        else:
            head = "limits=[" + ", ".join(f"({r!r}, {p!r}, {b})" for r, p, b in self.limits) + "]"
        return f"RedisRateLimiter({head}, prefix={self.prefix!r}, on_error={self._on_error!r})"

    # -- internals --

    def _cost(self, cost: int) -> int:
        return _check_cost(cost, self._burst)

    def _key(self, key: object) -> bytes:
        return self._prefix + _redis_key(key)

    def _sync(self) -> SyncClient:
        if self._async:
            raise TypeError(
                "this limiter has a redis.asyncio client: use acquire_async, or give a "
                "redis.Redis client for the synchronous methods"
            )
        return self._client  # type: ignore[return-value]

    def _args(self, cost: int, mode: str) -> list[Any]:
        return [cost, mode, *self._wargs]

    def _decision(self, reply: Any) -> Decision:
        allowed, remaining, retry_ns, reset_ns = (int(x) for x in reply)
        return Decision(bool(allowed), remaining, retry_ns / 1e9, reset_ns / 1e9)

    def _fallback(self, cost: int, err: BackendError) -> Decision:
        if self._on_error == "raise":
            raise err
        # As if every window were full ("allow") or empty ("deny").
        need = max(cost * w[2] for w in self._windows) / 1e9
        if self._on_error == "allow":
            return Decision(True, self._burst - cost, 0.0, need)
        return Decision(False, 0, need, max(w[4] for w in self._windows) / 1e9)

    def _check(self, k: bytes, cost: int) -> Decision:
        try:
            return self._decision(_GCRA(self._sync(), [k], self._args(cost, "d")))
        except BackendError as e:
            return self._fallback(cost, e)

    async def _acheck(self, k: bytes, cost: int) -> Decision:
        client: AsyncClient = self._client  # type: ignore[assignment]
        try:
            return self._decision(await _GCRA.acall(client, [k], self._args(cost, "d")))
        except BackendError as e:
            return self._fallback(cost, e)

    # -- the API --

    def try_acquire(self, key: _Key = None, cost: int = 1) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if they are there; True if taken."""
        c = self._cost(cost)
        k = self._key(key)
        try:
            return bool(_GCRA(self._sync(), [k], self._args(c, "t")))
        except BackendError as e:
            return self._fallback(c, e).allowed

    def check(self, key: _Key = None, cost: int = 1) -> Decision:
        """Like :meth:`try_acquire`, returning the whole :class:`ferrule.Decision`."""
        c = self._cost(cost)
        return self._check(self._key(key), c)

    def acquire(self, key: _Key = None, cost: int = 1, *, timeout: float | None = None) -> bool:
        """Wait until ``cost`` tokens are granted; True then. False when ``timeout``
        seconds pass, and at once when the tokens cannot be there before it. Sleeps
        (``time.sleep``, GIL released) in naps of at most the native wait slice (50 ms)
        plus a little jitter, so waiters in many processes do not retry in lockstep."""
        c = self._cost(cost)
        t = _timeout(timeout)
        k = self._key(key)
        self._sync()
        start = time.monotonic()
        deadline = None if t is None else start + t
        while True:
            d = self._check(k, c)
            if d.allowed:
                return True
            now = time.monotonic()
            wait = d.retry_after
            if deadline is not None and wait > deadline - now:
                return False
            wake = now + wait + _jitter(wait)
            if deadline is not None:
                wake = min(wake, deadline)
            while (left := wake - time.monotonic()) > 0:
                time.sleep(min(left, _WAIT_SLICE))

    def acquire_async(
        self, key: _Key = None, cost: int = 1, *, timeout: float | None = None
    ) -> Coroutine[Any, Any, bool]:
        """:meth:`acquire` for asyncio on a ``redis.asyncio.Redis`` client:
        ``await rl.acquire_async(key)``. Bad arguments raise at the call."""
        c = self._cost(cost)
        t = _timeout(timeout)
        k = self._key(key)
        if not self._async:
            raise TypeError("acquire_async needs a redis.asyncio.Redis client")
        return self._acquire_async(k, c, t)

    async def _acquire_async(self, k: bytes, cost: int, timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            d = await self._acheck(k, cost)
            if d.allowed:
                return True
            wait = d.retry_after
            if deadline is not None and wait > deadline - loop.time():
                return False
            wait += _jitter(wait)
            if deadline is not None:
                wait = min(wait, max(deadline - loop.time(), 0.0))
            await asyncio.sleep(wait)

    def limit(self, key: _Key = None, cost: int = 1, *, timeout: float | None = None) -> Limit:
        """:meth:`acquire` as a ``with`` / ``async with`` block or a decorator, as
        :meth:`ferrule.RateLimiter.limit`: raises :class:`ferrule.RateLimited` when the
        tokens cannot be had within ``timeout``. ``with`` and sync functions need a
        ``redis.Redis`` client, ``async with`` and ``async def`` functions a
        ``redis.asyncio.Redis`` one. Bad arguments raise at the call; a callable ``key``
        (a decorator's per-call key) is checked where it is used."""
        c = self._cost(cost)
        t = _timeout(timeout)
        if not callable(key):
            self._key(key)
        return _RedisLimit(self, key, c, t)

    def peek(self, key: _Key = None) -> int:
        """Whole tokens available on ``key`` now, taking none. With ``on_error`` set,
        a failure reads as a full (``"allow"``) or empty (``"deny"``) bucket."""
        k = self._key(key)
        try:
            return int(_GCRA(self._sync(), [k], self._args(1, "p")))
        except BackendError:
            if self._on_error == "raise":
                raise
            return self._burst if self._on_error == "allow" else 0

    def reset(self, key: _Key = None) -> None:
        """Refill ``key``'s bucket (deletes its key). Raises BackendError on failure
        whatever ``on_error`` says: there is no decision to fall back on."""
        k = self._key(key)
        try:
            self._sync().delete(k)
        except RedisError as e:
            raise backend(e) from e


class _RedisLimit(Limit):
    """``Limit`` whose async refusal asks the server through the asyncio client."""

    __slots__ = ()

    _limiter: RedisRateLimiter

    async def _check_async(self, key: Any) -> Decision:
        rl = self._limiter
        return await rl._acheck(rl._key(key), self._cost)


def _jitter(wait: float) -> float:
    """Up to 10% of the wait, at most 5 ms: spreads retries without delaying them much."""
    return random.random() * min(wait * 0.1, 0.005)
