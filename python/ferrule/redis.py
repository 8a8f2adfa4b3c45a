"""The distributed tier: a rate limiter and an agent registry whose state lives in Redis.

``RedisRateLimiter`` and ``RedisRegistry`` mirror :class:`ferrule.RateLimiter` and
:class:`ferrule.Registry` for services that run as many processes or hosts. Every
decision or change is ONE server-side Lua script (sent once with ``SCRIPT LOAD``
semantics, then called by ``EVALSHA``; reloaded when the server answers ``NOSCRIPT``), so
what one call reads and what it writes can never interleave with another process's
call: the server runs scripts one at a time.

Rate limiter (GCRA, as in the in-process limiter):
  * a key's state is its theoretical arrival time ``tat``, stored as
    ``"<unix seconds>:<nanoseconds>"`` so that Lua's doubles never hold an absolute time
    in nanoseconds (which would exceed 2^53);
  * the script reads the server's ``TIME`` (never the client's clock), computes the debt
    ``max(tat - now, 0)`` exactly (all relative quantities stay below 2^52 ns, which is
    why the window ``burst * per / rate`` is capped at 52 days here), and decides with
    the same integer arithmetic as ``ferrule.RateLimiter`` (emission interval rounded up
    to a whole nanosecond);
  * a grant writes ``tat`` with an expiry (``PX``) equal to the decision's
    ``reset_after``, rounded up to a millisecond: a key disappears exactly when its
    bucket is full again, which is what a missing key means. Denials write nothing.

Registry:
  * an entry is a hash ``<prefix>e:<id>``; its index rows are the sets
    ``<prefix>c:<capability>``, ``<prefix>n:<node>`` and ``<prefix>h:<health>``; the
    sorted set ``<prefix>d`` holds every entry's lease deadline (server microseconds);
  * register, register_many, update, unregister and heartbeat are each one script that
    changes the entry, its rows and its deadline together;
  * a query is one read-only script: ``SINTER`` of the index sets (or the live range of
    the deadline set), then each candidate is checked against its own hash (lease not
    over, fields equal to the criteria), so a result never holds an expired agent or one
    that did not match when it was read; ``where`` is evaluated here, afterwards;
  * reclamation: ``expire()`` sweeps the deadline set; every write also sweeps a few
    expired entries; and every key carries an expiry of at least its members' lease
    deadline plus one lease of grace, so after everything goes idle no key stays behind
    even if nobody ever calls ``expire()``. Redis deletes a set the moment it is empty.

Importing ``ferrule`` never imports this module; it needs the ``redis`` package
(``pip install 'ferrule[redis]'``) and a Redis >= 6.2 server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
import types
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

try:
    import redis
    import redis.asyncio
    from redis.exceptions import NoScriptError, RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ferrule.redis needs the 'redis' package: pip install 'ferrule[redis]'"
    ) from exc

from ferrule._native import AlreadyRegistered, BackendError, Decision

__all__ = ["RedisAgent", "RedisRateLimiter", "RedisRegistry"]

_Key = None | str | int | bytes | tuple[Any, ...]
_SyncClient = redis.Redis | redis.RedisCluster
_AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster
OnError = Literal["raise", "allow", "deny"]

# Largest window (burst * emission interval) in ns: every relative quantity the GCRA
# script computes stays below 2^53, where Lua's doubles are exact integers.
_MAX_WINDOW: Final = 1 << 52
# Longest sleep between two attempts' clock checks while acquire() waits.
_NAP: Final = 0.05
# Deepest tuple nesting accepted in a key (as RateLimiter).
_MAX_DEPTH: Final = 16
# Largest duration accepted in seconds (as the native part: ~126 years).
_MAX_SECONDS: Final = 4.0e9
# Expired registry entries a write reclaims on the way; expire() works in batches of this.
_WRITE_SWEEP: Final = 8
_EXPIRE_BATCH: Final = 1000


# ---- argument helpers (the same messages as the native ones in src/py/args.rs) -----------


def _tname(obj: object) -> str:
    return type(obj).__name__


def _number(obj: object, arg: str, what: str = "a number") -> float:
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        raise TypeError(f"{arg} must be {what}, not '{_tname(obj)}'")
    return float(obj)


def _secs_to_nanos(secs: float, arg: str) -> int:
    if not math.isfinite(secs):
        raise ValueError(f"{arg} must be a finite number of seconds")
    if abs(secs) > _MAX_SECONDS:
        raise ValueError(f"{arg} is too large")
    x = secs * 1e9
    # Rust's f64::round: halves away from zero.
    r = math.floor(abs(x))
    if abs(x) - r >= 0.5:
        r += 1
    return r if x >= 0 else -r


def _positive_nanos(obj: object, arg: str) -> int:
    secs = _number(obj, arg, "a number of seconds")
    ns = _secs_to_nanos(secs, arg)
    if secs <= 0:
        raise ValueError(f"{arg} must be > 0")
    return max(ns, 1)


def _opt_duration(obj: object, arg: str) -> float | None:
    if obj is None:
        return None
    secs = _number(obj, arg, "a number of seconds")
    ns = _secs_to_nanos(secs, arg)
    if secs < 0:
        raise ValueError(f"{arg} must be >= 0")
    return ns / 1e9


def _int_at_least(obj: object, arg: str, low: int) -> int:
    if isinstance(obj, bool) or not isinstance(obj, int):
        raise TypeError(f"{arg} must be an int, not '{_tname(obj)}'")
    if not -(2**63) <= obj < 2**63:
        raise ValueError(f"{arg} is out of range")
    if obj < low:
        raise ValueError(f"{arg} must be >= {low}")
    return int(obj)


def _string(obj: object, arg: str) -> str:
    if not isinstance(obj, str):
        raise TypeError(f"{arg} must be a str, not '{_tname(obj)}'")
    return str.__str__(obj)


def _opt_string(obj: object, arg: str) -> str | None:
    return None if obj is None else _string(obj, arg)


def _is_async(client: object) -> bool:
    return isinstance(client, (redis.asyncio.Redis, redis.asyncio.RedisCluster))


def _check_client(client: object) -> None:
    if not callable(getattr(client, "evalsha", None)):
        raise TypeError(
            f"client must be a redis.Redis or redis.asyncio.Redis, not '{_tname(client)}'"
        )


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _backend(e: RedisError) -> BackendError:
    err = BackendError(f"redis: {e}")
    err.__cause__ = e
    return err


class _Script:
    """One Lua script: called by EVALSHA, loaded (SCRIPT LOAD) when the server answers
    NOSCRIPT (first use, or after a restart or SCRIPT FLUSH)."""

    __slots__ = ("sha", "src")

    def __init__(self, src: str) -> None:
        self.src = src
        self.sha = hashlib.sha1(src.encode()).hexdigest()

    def __call__(self, client: _SyncClient, keys: list[Any], args: list[Any]) -> Any:
        try:
            try:
                return client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                client.script_load(self.src)
                return client.evalsha(self.sha, len(keys), *keys, *args)
        except RedisError as e:
            raise _backend(e) from e

    async def acall(self, client: _AsyncClient, keys: list[Any], args: list[Any]) -> Any:
        try:
            try:
                return await client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                await client.script_load(self.src)
                return await client.evalsha(self.sha, len(keys), *keys, *args)
        except RedisError as e:
            raise _backend(e) from e


# Shared Lua: floor division that is exact for integers below 2^53 (a / b in doubles can
# round up to the next integer), and integer formatting without Lua's %.14g.
_LUA_COMMON = """
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function fmt(x) return string.format('%.0f', x) end
"""

# ---- the rate limiter --------------------------------------------------------------------

# KEYS[1] bucket; ARGV interval_ns, tau_ns, cost, mode: 't' try (returns 1 or 0), 'd'
# decide (returns {allowed, remaining, retry_after_ns, reset_after_ns}), 'p' peek (returns
# remaining). The value is "<unix seconds>:<nanoseconds>" (both below 2^53, so Lua's
# number-to-text conversion is exact). Every quotient is corrected after the division:
# a rounded double quotient can only come out above the true one, never below.
_GCRA = _Script(
    """
local t = redis.call('TIME')
local s = tonumber(t[1])
local ns = tonumber(t[2]) * 1000
local T = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local mode = ARGV[4]
local base = 0
local v = redis.call('GET', KEYS[1])
if v then
  local i = string.find(v, ':', 1, true)
  base = (tonumber(string.sub(v, 1, i - 1)) - s) * 1000000000
    + (tonumber(string.sub(v, i + 1)) - ns)
  if base < 0 then base = 0 end
end
local room = tau - base
if mode == 'p' then
  if room <= 0 then return 0 end
  local q = math.floor(room / T)
  if q * T > room then q = q - 1 end
  return q
end
local need = tonumber(ARGV[3]) * T
if need <= room then
  local debt = base + need
  local tot = ns + debt
  local carry = math.floor(tot / 1000000000)
  if carry * 1000000000 > tot then carry = carry - 1 end
  local ms = math.ceil(debt / 1000000)
  if ms * 1000000 < debt then ms = ms + 1 end
  redis.call('SET', KEYS[1], (s + carry) .. ':' .. (tot - carry * 1000000000), 'PX', ms)
  if mode == 't' then return 1 end
  local left = room - need
  local q = math.floor(left / T)
  if q * T > left then q = q - 1 end
  return {1, q, 0, debt}
end
if mode == 't' then return 0 end
local left = room
if left < 0 then left = 0 end
local q = math.floor(left / T)
if q * T > left then q = q - 1 end
return {0, q, need - room, base}
"""
)


def _encode(key: object, depth: int = 0) -> bytes:
    """A key's bytes in Redis: tagged by kind, by value (``True`` is the key ``1``)."""
    if key is None:
        return b"n:"
    if isinstance(key, str):
        return b"s:" + str.encode(key, "utf-8", "surrogatepass")
    if isinstance(key, int):
        return b"i:" + int.__repr__(key).encode()
    if isinstance(key, bytes):
        return b"b:" + b"".join((key,))
    if isinstance(key, tuple):
        if depth >= _MAX_DEPTH:
            raise TypeError(f"key must not nest tuples more than {_MAX_DEPTH} deep")
        parts = [_encode(item, depth + 1) for item in key]
        return b"t:" + b"".join(b"%d:%s" % (len(p), p) for p in parts)
    raise TypeError(f"key must be None, str, int, bytes or a tuple of those, not '{_tname(key)}'")


def _gcra_params(rate_obj: object, per_obj: object, burst_obj: object) -> tuple[int, int, int]:
    """(interval_ns, burst, tau_ns), validated exactly as ``ferrule.RateLimiter``."""
    rate = _number(rate_obj, "rate")
    per_ns = _positive_nanos(per_obj, "per")
    burst_in = None if burst_obj is None else _int_at_least(burst_obj, "burst", 1)
    if not math.isfinite(rate):
        raise ValueError("rate must be a finite number")
    if rate <= 0:
        raise ValueError("rate must be > 0")
    limit = "burst * per / rate must be at most 52 days"
    if rate.is_integer() and rate <= 9.0e15:
        interval = -(-per_ns // int(rate))
    else:
        q = per_ns / rate
        if not q < _MAX_WINDOW:
            raise ValueError(f"rate is out of range: {limit}")
        interval = math.ceil(q)
        if interval >= _MAX_WINDOW:
            raise ValueError(f"rate is out of range: {limit}")
    interval = max(interval, 1)
    if burst_in is None:
        b = max(math.ceil(rate), 1)
        if b >= _MAX_WINDOW:
            raise ValueError(f"rate is out of range: {limit}")
        burst, arg = b, "rate"
    else:
        burst, arg = burst_in, "burst"
    tau = burst * interval
    if tau > _MAX_WINDOW:
        raise ValueError(f"{arg} is out of range: {limit}")
    return interval, burst, tau


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
        client: _SyncClient | _AsyncClient,
        rate: float,
        per: float = 1.0,
        *,
        burst: int | None = None,
        prefix: str = "ferrule:rl:",
        on_error: OnError = "raise",
    ) -> None:
        _check_client(client)
        self._interval, self._burst, self._tau = _gcra_params(rate, per, burst)
        self._rate = float(rate)
        self._per = float(per)
        self._prefix = _string(prefix, "prefix").encode()
        if on_error not in ("raise", "allow", "deny"):
            raise ValueError(f"on_error must be one of 'raise', 'allow', 'deny', not {on_error!r}")
        self._on_error: OnError = on_error
        self._client = client
        self._async = _is_async(client)

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

    def _cost(self, cost: object) -> int:
        c = _int_at_least(cost, "cost", 1)
        if c > self._burst:
            raise ValueError(
                f"cost must be <= burst ({self._burst}), got {c}: it could never be granted"
            )
        return c

    def _key(self, key: object) -> bytes:
        return self._prefix + _encode(key)

    def _sync(self) -> _SyncClient:
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

    # -- the API --

    def try_acquire(self, key: _Key = None, cost: int = 1) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if they are there; True if taken."""
        c = self._cost(cost)
        k = self._key(key)
        try:
            return bool(_GCRA(self._sync(), [k], [self._interval, self._tau, c, "t"]))
        except BackendError as e:
            return self._fallback(c, e).allowed

    def check(self, key: _Key = None, cost: int = 1) -> Decision:
        """Like :meth:`try_acquire`, returning the whole :class:`ferrule.Decision`."""
        c = self._cost(cost)
        return self._check(self._key(key), c)

    def acquire(self, key: _Key = None, cost: int = 1, *, timeout: float | None = None) -> bool:
        """Wait until ``cost`` tokens are granted; True then. False when ``timeout``
        seconds pass, and at once when the tokens cannot be there before it. Sleeps
        (``time.sleep``, GIL released) in naps of at most 50 ms plus a little jitter, so
        waiters in many processes do not retry in lockstep."""
        c = self._cost(cost)
        t = _opt_duration(timeout, "timeout")
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
                time.sleep(min(left, _NAP))

    def acquire_async(
        self, key: _Key = None, cost: int = 1, *, timeout: float | None = None
    ) -> Coroutine[Any, Any, bool]:
        """:meth:`acquire` for asyncio on a ``redis.asyncio.Redis`` client:
        ``await rl.acquire_async(key)``. Bad arguments raise at the call."""
        c = self._cost(cost)
        t = _opt_duration(timeout, "timeout")
        k = self._key(key)
        if not self._async:
            raise TypeError("acquire_async needs a redis.asyncio.Redis client")
        return self._acquire_async(k, c, t)

    async def _acquire_async(self, k: bytes, cost: int, timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        client: _AsyncClient = self._client  # type: ignore[assignment]
        while True:
            try:
                d = self._decision(await _GCRA.acall(client, [k], self._args(cost, "d")))
            except BackendError as e:
                d = self._fallback(cost, e)
            if d.allowed:
                return True
            wait = d.retry_after
            if deadline is not None and wait > deadline - loop.time():
                return False
            wait += _jitter(wait)
            if deadline is not None:
                wait = min(wait, max(deadline - loop.time(), 0.0))
            await asyncio.sleep(wait)

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
            raise _backend(e) from e


def _jitter(wait: float) -> float:
    """Up to 10% of the wait, at most 5 ms: spreads retries without delaying them much."""
    return random.random() * min(wait * 0.1, 0.005)


# ---- the registry ------------------------------------------------------------------------

# Lua shared by the registry scripts. ARGV[1] is the prefix; KEYS[1] the deadline set.
_LUA_REG = (
    _LUA_COMMON
    + """
local P = ARGV[1]
local DL = KEYS[1]
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function ekey(id) return P .. 'e:' .. id end
-- the index sets an entry with these fields sits in
local function rows(caps, node, health)
  local ks = {}
  for _, c in ipairs(cjson.decode(caps)) do ks[#ks + 1] = P .. 'c:' .. c end
  if node then ks[#ks + 1] = P .. 'n:' .. node end
  ks[#ks + 1] = P .. 'h:' .. health
  return ks
end
-- keep key k for at least ms more milliseconds (never shortens an expiry)
local function extend(k, ms)
  if redis.call('PTTL', k) < ms then redis.call('PEXPIRE', k, fmt(ms)) end
end
local function live(id, now)
  local x = redis.call('HGET', ekey(id), 'x')
  return x and tonumber(x) > now
end
-- remove an entry, its index rows and its deadline
local function drop(id)
  local k = ekey(id)
  local f = redis.call('HMGET', k, 'c', 'n', 'h')
  if f[1] then
    for _, r in ipairs(rows(f[1], f[2] or nil, f[3])) do redis.call('SREM', r, id) end
    redis.call('DEL', k)
  end
  redis.call('ZREM', DL, id)
end
-- remove up to n entries whose lease is over (deadline <= now); how many
local function reclaim(now, n)
  local ids = redis.call('ZRANGEBYSCORE', DL, '-inf', fmt(now), 'LIMIT', 0, n)
  for _, id in ipairs(ids) do drop(id) end
  return #ids
end
-- write an entry and its rows; ttl in microseconds; the keys live a lease of grace
-- past the deadline so that a sweep can still read the rows of an expired entry
local function put(id, v, caps, node, health, m, ttl, now, reg)
  local k = ekey(id)
  local keep = idiv(2 * ttl + 999, 1000)
  local f = {'v', v, 'c', caps, 'h', health, 'm', m, 'r', fmt(reg), 'x', fmt(now + ttl),
             't', fmt(ttl)}
  if node then f[#f + 1] = 'n'; f[#f + 1] = node end
  redis.call('HSET', k, unpack(f))
  redis.call('PEXPIRE', k, fmt(keep))
  redis.call('ZADD', DL, fmt(now + ttl), id)
  extend(DL, keep)
  for _, r in ipairs(rows(caps, node, health)) do
    redis.call('SADD', r, id)
    extend(r, keep)
  end
end
local function opt(s) if s == '' then return nil end return string.sub(s, 2) end
"""
)

# ARGV: prefix, then groups of 7: id, value json, caps json, node ('' or '.'..node),
# health, metadata json, ttl_us. All or nothing: {0, id} if an id is taken, else {1, n}.
_REGISTER = _Script(
    _LUA_REG
    + """
local now = now_us()
reclaim(now, tonumber(ARGV[2]))
local n = (#ARGV - 2) / 7
for i = 0, n - 1 do
  local id = ARGV[3 + i * 7]
  if live(id, now) then return {0, id} end
end
for i = 0, n - 1 do
  local b = 3 + i * 7
  drop(ARGV[b])
  put(ARGV[b], ARGV[b + 1], ARGV[b + 2], opt(ARGV[b + 3]), ARGV[b + 4], ARGV[b + 5],
      tonumber(ARGV[b + 6]), now, now)
end
return {1, n}
"""
)

# ARGV: prefix, sweep budget, id. 1 if a live entry was removed.
_UNREGISTER = _Script(
    _LUA_REG
    + """
local now = now_us()
local was = live(ARGV[3], now)
drop(ARGV[3])
reclaim(now, tonumber(ARGV[2]))
if was then return 1 end
return 0
"""
)

# ARGV: prefix, sweep budget, id, caps ('' unchanged or json), node ('' unchanged, '-'
# None, '.'..node), health ('' or '.'..health), metadata ('' or json). 0 if not live.
_UPDATE = _Script(
    _LUA_REG
    + """
local now = now_us()
local id = ARGV[3]
reclaim(now, tonumber(ARGV[2]))
if not live(id, now) then return 0 end
local k = ekey(id)
local f = redis.call('HMGET', k, 'c', 'n', 'h', 'm', 'v', 'r', 'x', 't')
local caps, node, health, m = f[1], f[2] or nil, f[3], f[4]
for _, r in ipairs(rows(caps, node, health)) do redis.call('SREM', r, id) end
if ARGV[4] ~= '' then caps = ARGV[4] end
if ARGV[5] == '-' then node = nil elseif ARGV[5] ~= '' then node = opt(ARGV[5]) end
if ARGV[6] ~= '' then health = opt(ARGV[6]) end
if ARGV[7] ~= '' then m = ARGV[7] end
local x, ttl = tonumber(f[7]), tonumber(f[8])
-- the lease is unchanged: put() from (x - ttl) writes the same deadline and expiry
redis.call('DEL', k)
put(id, f[5], caps, node, health, m, ttl, x - ttl, tonumber(f[6]))
local left = redis.call('PTTL', k)
if left > 0 then
  local want = idiv(x - now + ttl + 999, 1000)
  redis.call('PEXPIRE', k, fmt(want))
end
return 1
"""
)

# ARGV: prefix, sweep budget, id, ttl_us ('' = the entry's own). 1 if renewed.
_HEARTBEAT = _Script(
    _LUA_REG
    + """
local now = now_us()
local id = ARGV[3]
reclaim(now, tonumber(ARGV[2]))
if not live(id, now) then return 0 end
local k = ekey(id)
local f = redis.call('HMGET', k, 'c', 'n', 'h', 't')
local ttl = tonumber(f[4])
if ARGV[4] ~= '' then ttl = tonumber(ARGV[4]) end
local keep = idiv(2 * ttl + 999, 1000)
redis.call('HSET', k, 'x', fmt(now + ttl), 't', fmt(ttl))
redis.call('PEXPIRE', k, fmt(keep))
redis.call('ZADD', DL, fmt(now + ttl), id)
extend(DL, keep)
for _, r in ipairs(rows(f[1], f[2] or nil, f[3])) do extend(r, keep) end
return 1
"""
)

# ARGV: prefix, batch size. How many expired entries were removed (at most the batch).
_EXPIRE = _Script(
    _LUA_REG
    + """
return reclaim(now_us(), tonumber(ARGV[2]))
"""
)

# Read-only. ARGV: prefix, what ('a' rows, 'i' ids, 'n' count), limit ('' none),
# capability, node, health (each '' or '.'..value). A row: id, value, caps, node|nil,
# health, metadata, registered_us, expires_us.
_FIND = _Script(
    _LUA_REG
    + """
local now = now_us()
local what = ARGV[2]
local limit = tonumber(ARGV[3])
local cap, node, health = opt(ARGV[4]), opt(ARGV[5]), opt(ARGV[6])
local sets = {}
if cap then sets[#sets + 1] = P .. 'c:' .. cap end
if node then sets[#sets + 1] = P .. 'n:' .. node end
if health then sets[#sets + 1] = P .. 'h:' .. health end
local ids
if #sets == 0 then
  ids = redis.call('ZRANGEBYSCORE', DL, '(' .. fmt(now), '+inf')
else
  ids = redis.call('SINTER', unpack(sets))
end
local out, n = {}, 0
for _, id in ipairs(ids) do
  if limit and n >= limit then break end
  local f = redis.call('HMGET', ekey(id), 'x', 'c', 'n', 'h', 'v', 'm', 'r')
  local ok = f[1] and tonumber(f[1]) > now
  if ok and node and f[3] ~= node then ok = false end
  if ok and health and f[4] ~= health then ok = false end
  if ok and cap then
    ok = false
    for _, c in ipairs(cjson.decode(f[2])) do if c == cap then ok = true; break end end
  end
  if ok then
    n = n + 1
    if what == 'a' then
      out[n] = {id, f[5], f[2], f[3], f[4], f[6], f[7], f[1]}
    elseif what == 'i' then
      out[n] = id
    end
  end
end
if what == 'n' then return n end
return out
"""
)

# Read-only. ARGV: prefix, id. The row (as _FIND's) if live, else nil.
_GET = _Script(
    _LUA_REG
    + """
local now = now_us()
local id = ARGV[2]
local f = redis.call('HMGET', ekey(id), 'x', 'c', 'n', 'h', 'v', 'm', 'r')
if f[1] and tonumber(f[1]) > now then
  return {id, f[5], f[2], f[3], f[4], f[6], f[7], f[1]}
end
return false
"""
)

# Read-only. ARGV: prefix. Live entries.
_LEN = _Script(
    _LUA_REG
    + """
return redis.call('ZCOUNT', DL, '(' .. fmt(now_us()), '+inf')
"""
)


@dataclass(frozen=True, slots=True)
class RedisAgent:
    """One agent of a :class:`RedisRegistry`, as it was when read: the fields of
    :class:`ferrule.Agent` (``value`` and ``metadata`` come back from JSON;
    ``registered_at`` and ``expires_at`` are the server's Unix time in seconds)."""

    agent_id: str
    value: Any
    capabilities: frozenset[str]
    node: str | None
    health: str
    metadata: Mapping[str, Any]
    registered_at: float
    expires_at: float | None

    def __repr__(self) -> str:
        caps = ", ".join(repr(c) for c in sorted(self.capabilities))
        return (
            f"RedisAgent(agent_id={self.agent_id!r}, capabilities={{{caps}}}, "
            f"node={self.node!r}, health={self.health!r})"
        )


def _agent(row: list[Any]) -> RedisAgent:
    aid, v, caps, node, health, meta, reg, exp = row
    return RedisAgent(
        agent_id=_text(aid),
        value=json.loads(v),
        capabilities=frozenset(json.loads(caps)),
        node=None if node is None else _text(node),
        health=_text(health),
        metadata=types.MappingProxyType(json.loads(meta)),
        registered_at=int(reg) / 1e6,
        expires_at=int(exp) / 1e6,
    )


def _json(obj: object, arg: str) -> str:
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{arg} must be JSON-serialisable: {e}") from None


def _caps(obj: object) -> str:
    if obj is None:
        return "[]"
    if isinstance(obj, str):
        raise TypeError("capabilities must be an iterable of str, not a str")
    try:
        it = iter(obj)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"capabilities must be an iterable of str, not '{_tname(obj)}'") from None
    out = set()
    for c in it:
        if not isinstance(c, str):
            raise TypeError(f"capabilities must contain only str, not '{_tname(c)}'")
        out.add(str.__str__(c))
    return json.dumps(sorted(out), separators=(",", ":"))


def _metadata(obj: object) -> str:
    if obj is None:
        return "{}"
    if not isinstance(obj, Mapping):
        raise TypeError(f"metadata must be a mapping or None, not '{_tname(obj)}'")
    d = dict(obj)
    for k in d:
        if not isinstance(k, str):
            raise TypeError(f"metadata keys must be str, not '{_tname(k)}'")
    return _json(d, "metadata")


_OPS: Final = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in")
_WHERE_SHAPE: Final = "where must be a callable or a list of (path, op, value) triples"
_Where = Callable[[RedisAgent], object] | Iterable[tuple[str, str, Any]] | None
_Cond = tuple[list[str], str, Any]


def _parse_where(obj: object) -> Callable[[RedisAgent], object] | list[_Cond] | None:
    if obj is None:
        return None
    if callable(obj):
        return obj
    if not isinstance(obj, (list, tuple)):
        raise TypeError(f"{_WHERE_SHAPE}, not '{_tname(obj)}'")
    conds: list[_Cond] = []
    for t in obj:
        if not (isinstance(t, (tuple, list)) and len(t) == 3):
            raise TypeError(f"{_WHERE_SHAPE}; got an item of type '{_tname(t)}'")
        path = _string(t[0], "where path")
        op = _string(t[1], "where op")
        if op not in _OPS:
            raise ValueError(f"where op must be one of {', '.join(_OPS)}, not {op!r}")
        value = t[2]
        if op in ("in", "not_in") and not isinstance(value, (list, tuple, set, frozenset)):
            raise TypeError(
                f"where value for {op!r} must be a list, tuple or set, not '{_tname(value)}'"
            )
        conds.append((path.split("."), op, value))
    return conds


def _compare(op: str, v: Any, q: Any) -> bool:
    if op == "eq":
        return bool(v == q)
    if op == "ne":
        return bool(v != q)
    if op == "gt":
        return bool(v > q)
    if op == "gte":
        return bool(v >= q)
    if op == "lt":
        return bool(v < q)
    if op == "lte":
        return bool(v <= q)
    if op == "in":
        return v in q
    return v not in q


def _safe_compare(op: str, v: Any, q: Any) -> bool:
    """A comparison Python refuses is no match (as in ``ferrule.Registry``)."""
    try:
        return _compare(op, v, q)
    except Exception:
        return False


def _matches(meta: Mapping[str, Any], cond: _Cond) -> bool:
    path, op, q = cond
    cur: Any = meta
    for seg in path:
        if not isinstance(cur, (dict, types.MappingProxyType)) or seg not in cur:
            return False
        cur = cur[seg]
    if _safe_compare(op, cur, q):
        return True
    # eq and in also match an element of a list value
    return (
        op in ("eq", "in") and isinstance(cur, list) and any(_safe_compare(op, x, q) for x in cur)
    )


_ITEM_KEYS: Final = frozenset(
    ("agent_id", "value", "capabilities", "node", "health", "metadata", "owner", "ttl")
)
_UNSET: Any = object()


class RedisRegistry:
    """An agent directory shared by every process that uses the same Redis server and
    ``prefix``: ``ferrule.Registry``'s API, with leases instead of owners.

    Every entry is a lease of ``ttl`` seconds (the registry's default, or the
    ``register`` call's) that :meth:`heartbeat` renews; an entry whose lease is over is
    never returned, and its keys are reclaimed by :meth:`expire`, by later writes, and
    by the server's own key expiry after one more lease of grace. ``value`` and
    ``metadata`` must be JSON-serialisable (they come back as JSON gives them:
    tuples become lists). ``client`` is a ``redis.Redis``; the constructor does no I/O.
    A Redis failure raises :class:`ferrule.BackendError`.

    >>> import redis
    >>> reg = RedisRegistry(redis.Redis(), ttl=30.0)
    >>> reg.register("a1", {"url": "http://a1"}, capabilities=["search"])  # doctest: +SKIP
    >>> reg.ids(capability="search")                                       # doctest: +SKIP
    ['a1']
    """

    __slots__ = ("_client", "_dl", "_max_batch", "_prefix", "_ttl_us")

    def __init__(
        self,
        client: _SyncClient,
        *,
        prefix: str = "ferrule:reg:",
        ttl: float = 30.0,
        max_batch: int = 10_000,
    ) -> None:
        _check_client(client)
        if _is_async(client):
            raise TypeError("client must be a synchronous redis.Redis, not redis.asyncio.Redis")
        self._client = client
        self._prefix = _string(prefix, "prefix")
        self._dl = self._prefix + "d"
        self._ttl_us = self._ttl(ttl)
        self._max_batch = _int_at_least(max_batch, "max_batch", 1)

    @staticmethod
    def _ttl(obj: object) -> int:
        return -(-_positive_nanos(obj, "ttl") // 1000)

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def ttl(self) -> float:
        """The default lease, in seconds."""
        return self._ttl_us / 1e6

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def __repr__(self) -> str:
        return f"RedisRegistry(prefix={self._prefix!r}, ttl={self.ttl!r})"

    def _run(self, script: _Script, args: list[Any]) -> Any:
        return script(self._client, [self._dl], [self._prefix, *args])

    def _item(
        self,
        agent_id: object,
        value: object,
        capabilities: object,
        node: object,
        health: object,
        metadata: object,
        owner: object,
        ttl: object,
    ) -> list[Any]:
        aid = _string(agent_id, "agent_id")
        caps = _caps(capabilities)
        n = _opt_string(node, "node")
        h = "healthy" if health is None else _string(health, "health")
        meta = _metadata(metadata)
        ttl_us = self._ttl_us if ttl is None else self._ttl(ttl)
        if owner is not None:
            raise ValueError("owner is not supported by RedisRegistry: leases replace owners")
        v = _json(value, "value")
        return [aid, v, caps, "" if n is None else "." + n, h, meta, ttl_us]

    def register(
        self,
        agent_id: str,
        value: Any = None,
        *,
        capabilities: Iterable[str] = (),
        node: str | None = None,
        health: str = "healthy",
        metadata: Mapping[str, Any] | None = None,
        owner: None = None,
        ttl: float | None = None,
    ) -> None:
        """Register an agent with a lease of ``ttl`` seconds (default: the registry's).
        Raises :class:`ferrule.AlreadyRegistered` if a live entry holds the id; then
        nothing of this call stays behind. ``owner`` is refused (ValueError)."""
        item = self._item(agent_id, value, capabilities, node, health, metadata, owner, ttl)
        self._publish(item)

    def _publish(self, flat: list[Any]) -> int:
        reply = self._run(_REGISTER, [_WRITE_SWEEP, *flat])
        if int(reply[0]) == 0:
            raise AlreadyRegistered(f"agent id {_text(reply[1])!r} is already registered")
        return int(reply[1])

    def register_many(self, items: Iterable[Mapping[str, Any]]) -> int:
        """Register every item (a dict of :meth:`register`'s arguments plus
        ``agent_id``) or none, in one script. More than ``max_batch`` items raise
        ValueError."""
        try:
            it = iter(items)
        except TypeError:
            raise TypeError(f"items must be an iterable of dicts, not '{_tname(items)}'") from None
        raw: list[dict[str, Any]] = []
        for d in it:
            if len(raw) == self._max_batch:
                raise ValueError(f"items must hold at most max_batch ({self._max_batch}) items")
            if not isinstance(d, dict):
                raise TypeError(f"items must be an iterable of dicts, not '{_tname(d)}'")
            raw.append(d)
        flat: list[Any] = []
        seen: set[str] = set()
        for d in raw:
            for k in d:
                if k not in _ITEM_KEYS:
                    raise TypeError(f"register_many item has an unexpected key {k!r}")
            if "agent_id" not in d:
                raise TypeError("register_many item is missing 'agent_id'")
            item = self._item(
                d["agent_id"],
                d.get("value"),
                d.get("capabilities"),
                d.get("node"),
                d.get("health"),
                d.get("metadata"),
                d.get("owner"),
                d.get("ttl"),
            )
            if item[0] in seen:
                raise AlreadyRegistered(f"agent id {item[0]!r} is already registered")
            seen.add(item[0])
            flat += item
        if not raw:
            return 0
        return self._publish(flat)

    def unregister(self, agent_id: str) -> bool:
        """Remove the agent and its index rows; True if it was registered and live."""
        aid = _string(agent_id, "agent_id")
        return bool(int(self._run(_UNREGISTER, [_WRITE_SWEEP, aid])))

    def update(
        self,
        agent_id: str,
        *,
        capabilities: Iterable[str] = _UNSET,
        node: str | None = _UNSET,
        health: str = _UNSET,
        metadata: Mapping[str, Any] | None = _UNSET,
    ) -> None:
        """Change the given fields, the entry and its index rows together (one script).
        KeyError if the agent is not registered. The lease is unchanged."""
        aid = _string(agent_id, "agent_id")
        caps = "" if capabilities is _UNSET else _caps(capabilities)
        if node is _UNSET:
            n = ""
        else:
            nn = _opt_string(node, "node")
            n = "-" if nn is None else "." + nn
        h = "" if health is _UNSET else "." + _string(health, "health")
        m = "" if metadata is _UNSET else _metadata(metadata)
        if not int(self._run(_UPDATE, [_WRITE_SWEEP, aid, caps, n, h, m])):
            raise KeyError(aid)

    def get(self, agent_id: str) -> RedisAgent | None:
        """The agent, or None if absent or its lease is over."""
        aid = _string(agent_id, "agent_id")
        row = self._run(_GET, [aid])
        return _agent(row) if row else None

    def lookup(self, agent_id: str) -> Any:
        """The agent's value; KeyError if absent."""
        a = self.get(agent_id)
        if a is None:
            raise KeyError(agent_id)
        return a.value

    def heartbeat(self, agent_id: str, ttl: float | None = None) -> bool:
        """Renew the lease for ``ttl`` seconds (default: the entry's own) from now
        (server time); False if the agent is absent or its lease is already over."""
        aid = _string(agent_id, "agent_id")
        t = "" if ttl is None else self._ttl(ttl)
        return bool(int(self._run(_HEARTBEAT, [_WRITE_SWEEP, aid, t])))

    def expire(self) -> int:
        """Remove every entry whose lease is over, with its index rows, now (in
        batches of 1000 per script); return how many."""
        total = 0
        while True:
            n = int(self._run(_EXPIRE, [_EXPIRE_BATCH]))
            total += n
            if n < _EXPIRE_BATCH:
                return total

    def _select(
        self,
        what: str,
        capability: object,
        node: object,
        health: object,
        where: object,
        limit: object,
    ) -> Any:
        c = _opt_string(capability, "capability")
        n = _opt_string(node, "node")
        h = _opt_string(health, "health")
        wh = _parse_where(where)
        lim = None if limit is None else _int_at_least(limit, "limit", 0)
        opt = ["" if x is None else "." + x for x in (c, n, h)]
        if wh is None:
            return self._run(_FIND, [what, "" if lim is None else lim, *opt])
        agents = [_agent(r) for r in self._run(_FIND, ["a", "", *opt])]
        out: list[RedisAgent] = []
        for a in agents:
            if lim is not None and len(out) >= lim:
                break
            if callable(wh):
                if not wh(a):
                    continue
            elif not all(_matches(a.metadata, cond) for cond in wh):
                continue
            out.append(a)
        if what == "a":
            return out
        if what == "i":
            return [a.agent_id for a in out]
        return len(out)

    def find(
        self,
        *,
        capability: str | None = None,
        node: str | None = None,
        health: str | None = None,
        where: _Where = None,
        limit: int | None = None,
    ) -> list[RedisAgent]:
        """Agents matching every given criterion (in no particular order): the index
        sets' intersection, each candidate checked against its entry and lease on the
        server; then ``where`` (a callable on :class:`RedisAgent`, or ``(path, op,
        value)`` triples over metadata, as in ``ferrule.Registry``) here."""
        r = self._select("a", capability, node, health, where, limit)
        return r if where is not None else [_agent(x) for x in r]

    def count(
        self,
        *,
        capability: str | None = None,
        node: str | None = None,
        health: str | None = None,
        where: _Where = None,
        limit: int | None = None,
    ) -> int:
        """How many agents :meth:`find` would return."""
        return int(self._select("n", capability, node, health, where, limit))

    def ids(
        self,
        *,
        capability: str | None = None,
        node: str | None = None,
        health: str | None = None,
        where: _Where = None,
        limit: int | None = None,
    ) -> list[str]:
        """The ids of the agents :meth:`find` would return."""
        r = self._select("i", capability, node, health, where, limit)
        return r if where is not None else [_text(x) for x in r]

    def __contains__(self, agent_id: object) -> bool:
        """True if a live agent has this id (False for non-str)."""
        if not isinstance(agent_id, str):
            return False
        return bool(self._run(_GET, [agent_id]))

    def __len__(self) -> int:
        """Live agents (entries whose lease is not over)."""
        return int(self._run(_LEN, []))
