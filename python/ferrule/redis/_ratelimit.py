"""``RedisRateLimiter``: GCRA with each key's state in Redis (see the package docs).

The arguments are checked by the native module with ``ferrule.RateLimiter``'s own rules
(``_gcra_params``, ``_check_cost``, ``_timeout``), which also gives the emission interval
and window the script uses; keys are encoded there too (``_redis_key``). The decision
itself is ``lua/gcra.lua``, run by the server.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine
from typing import Any, Literal

from ferrule._native import (
    _WAIT_SLICE,
    BackendError,
    Decision,
    _check_cost,
    _gcra_params,
    _prefix,
    _redis_key,
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

    >>> import redis
    >>> rl = RedisRateLimiter(redis.Redis(), 10, per=1.0)   # 10/s, burst 10
    >>> rl.try_acquire("user:1")                            # doctest: +SKIP
    True
    """

    __slots__ = (
        "_async",
        "_burst",
        "_client",
        "_interval",
        "_on_error",
        "_per",
        "_prefix",
        "_rate",
        "_tau",
    )

    def __init__(
        self,
        client: SyncClient | AsyncClient,
        rate: float,
        per: float = 1.0,
        *,
        burst: int | None = None,
        prefix: str = "ferrule:rl:",
        on_error: OnError = "raise",
    ) -> None:
        check_client(client)
        self._rate, self._per, self._interval, self._burst, self._tau = _gcra_params(
            rate, per, burst
        )
        self._prefix = _prefix(prefix).encode()
        if on_error not in ("raise", "allow", "deny"):
            raise ValueError(f"on_error must be one of 'raise', 'allow', 'deny', not {on_error!r}")
        self._on_error: OnError = on_error
        self._client = client
        self._async = is_async(client)

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def per(self) -> float:
        return self._per

    @property
    def burst(self) -> int:
        """The bucket's capacity."""
        return self._burst

    @property
    def prefix(self) -> str:
        return self._prefix.decode()

    @property
    def on_error(self) -> OnError:
        return self._on_error

    def __repr__(self) -> str:
        return (
            f"RedisRateLimiter(rate={self._rate!r}, per={self._per!r}, burst={self._burst}, "
            f"prefix={self.prefix!r}, on_error={self._on_error!r})"
        )

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
        return [self._interval, self._tau, cost, mode]

    def _decision(self, reply: Any) -> Decision:
        allowed, remaining, retry_ns, reset_ns = (int(x) for x in reply)
        return Decision(bool(allowed), remaining, retry_ns / 1e9, reset_ns / 1e9)

    def _fallback(self, cost: int, err: BackendError) -> Decision:
        if self._on_error == "raise":
            raise err
        need = cost * self._interval / 1e9
        if self._on_error == "allow":
            return Decision(True, self._burst - cost, 0.0, need)
        return Decision(False, 0, need, self._tau / 1e9)

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
