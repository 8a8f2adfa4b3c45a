"""Type stubs and user documentation for ferrule's native module.

Import these names from ``ferrule``; ``ferrule._native`` is private.
"""

from collections.abc import Callable, Coroutine, Hashable, Iterator
from typing import Any, TypeVar, final, overload

__version__: str

_T = TypeVar("_T")

# ---------------------------------------------------------------------------------------
# Exceptions
# ---------------------------------------------------------------------------------------

class FerruleError(Exception):
    """Base class of every exception ferrule raises."""

class AlreadyRegistered(FerruleError, KeyError):
    """The agent id is already registered (a ``KeyError``)."""

class QueueFull(FerruleError, Exception):
    """The queue is full (also a ``queue.Full``)."""

class QueueEmpty(FerruleError, Exception):
    """The queue is empty (also a ``queue.Empty``)."""

class QueueClosed(FerruleError):
    """Raised by ``put`` after ``close()``, and by ``get`` once closed and drained."""

class CircuitOpen(FerruleError):
    """The circuit is open; the call was not made."""

class PoolTimeout(FerruleError, TimeoutError):
    """No resource became available before the timeout (a ``TimeoutError``)."""

class Discard(FerruleError):
    """Raise inside a pool's ``with`` block to close and replace the item."""

class BackendError(FerruleError, ConnectionError):
    """The backend (e.g. Redis) failed (a ``ConnectionError``)."""

# ---------------------------------------------------------------------------------------
# Clock
# ---------------------------------------------------------------------------------------

@final
class ManualClock:
    """A clock that moves only when told to, for deterministic tests.

    Pass it as ``clock=`` to any time-based class: it then governs that object's TTLs,
    leases, windows and refills. Waits and ``timeout=`` arguments stay in real time.
    Thread-safe; it never goes backwards.

    >>> clock = ManualClock()
    >>> cache = Cache(100, ttl=5.0, clock=clock)
    >>> cache["k"] = "v"
    >>> clock.advance(5.0)
    5.0
    >>> "k" in cache
    False
    """

    def __new__(cls, start: float = 0.0) -> ManualClock:
        """Start at ``start`` seconds (>= 0)."""

    def now(self) -> float:
        """The current reading in seconds."""

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0, else ValueError); returns the new reading."""

    def set(self, seconds: float) -> None:
        """Jump to ``seconds``; ValueError if that is earlier than now."""

# ---------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------

@final
class CacheStats:
    """Counters of a :class:`Cache`, summed over its shards.

    ``get``/``[]`` count hits and misses (``in`` counts neither); every ``set`` counts an
    insert; ``evictions`` counts live entries pushed out by the size bound, and
    ``expirations`` entries removed because their TTL had passed.

    >>> c = Cache(10)
    >>> c["a"] = 1
    >>> c.get("a"), c.get("b")
    (1, None)
    >>> s = c.stats()
    >>> (s.hits, s.misses, s.inserts, s.size)
    (1, 1, 1, 1)
    """

    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    @property
    def inserts(self) -> int: ...
    @property
    def evictions(self) -> int: ...
    @property
    def expirations(self) -> int: ...
    @property
    def size(self) -> int:
        """Live entries now."""
    @property
    def max_size(self) -> int: ...
    @property
    def hit_ratio(self) -> float:
        """``hits / (hits + misses)``; 0.0 before the first lookup."""

@final
class Cache:
    """A thread-safe, sharded LRU cache with optional TTL.

    ``len(cache) <= max_size`` at every instant, also under concurrent writers. An entry
    set at time t with ttl d is live while ``clock.now() < t + d`` and is never returned
    after that. With ``shards=1`` eviction is exact LRU (a hit refreshes recency); the
    default shard count leaves every shard at least 64 entries, so small caches are exact
    LRU too. Keys are any hashable objects with dict semantics (``1``, ``1.0`` and
    ``True`` are one key); an exception from a key's ``__hash__`` or ``__eq__``
    propagates. No user code (``__eq__``, a factory, a value's ``__del__``) ever runs
    under an internal lock.

    >>> cache = Cache(1000, ttl=60.0)
    >>> cache.set("user:1", {"name": "Ada"})
    >>> cache.get("user:1")
    {'name': 'Ada'}
    >>> cache.get_or_set("user:2", lambda: {"name": "Grace"})
    {'name': 'Grace'}
    >>> len(cache), "user:2" in cache
    (2, True)
    """

    def __new__(
        cls,
        max_size: int,
        *,
        ttl: float | None = None,
        shards: int | None = None,
        clock: ManualClock | None = None,
    ) -> Cache:
        """``max_size`` >= 1; ``ttl`` > 0 seconds (default: entries never expire);
        ``1 <= shards <= max_size``; ``clock`` a :class:`ManualClock` or None (monotonic)."""

    @property
    def max_size(self) -> int: ...
    @property
    def ttl(self) -> float | None:
        """The default TTL in seconds, or None."""
    @property
    def shards(self) -> int:
        """The number of shards (each with its own lock and LRU order)."""

    @overload
    def get(self, key: Hashable) -> Any | None:
        """The live value for ``key``, else ``default``. Counts a hit or a miss.

        >>> Cache(10).get("missing", 0)
        0
        """
    @overload
    def get(self, key: Hashable, default: _T) -> Any | _T: ...
    def set(self, key: Hashable, value: Any, *, ttl: float | None = None) -> None:
        """Insert or replace; ``ttl`` overrides the cache's default for this entry.

        >>> c = Cache(10)
        >>> c.set("k", 1, ttl=0.5)
        """

    def delete(self, key: Hashable) -> bool:
        """Remove ``key``; True if a live entry was removed.

        >>> c = Cache(10); c["k"] = 1
        >>> c.delete("k"), c.delete("k")
        (True, False)
        """

    @overload
    def pop(self, key: Hashable) -> Any:
        """Remove ``key`` and return its value; ``default`` (or KeyError) when missing.

        >>> c = Cache(10); c["k"] = 1
        >>> c.pop("k"), c.pop("k", None)
        (1, None)
        """
    @overload
    def pop(self, key: Hashable, default: _T) -> Any | _T: ...
    def get_or_set(
        self, key: Hashable, factory: Callable[[], _T], *, ttl: float | None = None
    ) -> _T:
        """The value for ``key``; on a miss, exactly one caller per key runs ``factory()``
        (with no lock held) while concurrent callers for that key wait for its result with
        the GIL released (single-flight). If the factory raises, every waiter gets the
        exception and nothing is cached. A factory that calls ``get_or_set`` for its own
        key gets RuntimeError instead of a deadlock.

        >>> c = Cache(10)
        >>> c.get_or_set("answer", lambda: 42)
        42
        """

    def clear(self) -> None:
        """Remove every entry."""

    def expire(self) -> int:
        """Remove expired entries now; returns how many. (Expired entries are also
        reclaimed a few at a time on every write.)"""

    def keys(self) -> list[Any]:
        """A snapshot list of the live keys."""

    def values(self) -> list[Any]:
        """A snapshot list of the live values."""

    def items(self) -> list[tuple[Any, Any]]:
        """A snapshot list of the live ``(key, value)`` pairs."""

    def stats(self) -> CacheStats:
        """Counters; see :class:`CacheStats`."""

    def __len__(self) -> int:
        """Live entries (expired ones are reclaimed first)."""

    def __contains__(self, key: object, /) -> bool:
        """True if ``key`` has a live entry; neither counts nor refreshes recency."""

    def __getitem__(self, key: Hashable, /) -> Any:
        """The live value, else KeyError. Counts a hit or a miss."""

    def __setitem__(self, key: Hashable, value: Any, /) -> None: ...
    def __delitem__(self, key: Hashable, /) -> None:
        """Remove ``key``; KeyError if it has no live entry."""

    def __iter__(self) -> Iterator[Any]:
        """Iterate over a snapshot of the live keys."""

# ---------------------------------------------------------------------------------------
# RateLimiter
# ---------------------------------------------------------------------------------------

_Key = None | str | int | bytes | tuple[Any, ...]

@final
class Decision:
    """The outcome of :meth:`RateLimiter.check`. Immutable.

    >>> clock = ManualClock()
    >>> rl = RateLimiter(10, clock=clock)
    >>> d = rl.check("user:1", cost=4)
    >>> d.allowed, d.remaining, d.retry_after, d.reset_after
    (True, 6, 0.0, 0.4)
    """

    @property
    def allowed(self) -> bool:
        """True if the tokens were granted (and taken)."""
    @property
    def remaining(self) -> int:
        """Whole tokens left in the bucket after this decision."""
    @property
    def retry_after(self) -> float:
        """0.0 when allowed; else seconds until ``cost`` tokens are there."""
    @property
    def reset_after(self) -> float:
        """Seconds until the bucket is full again."""

@final
class RateLimiter:
    """A keyed token-bucket rate limiter: capacity ``burst``, refilled at ``rate`` tokens
    per ``per`` seconds, one bucket per key.

    Implemented as GCRA: each key's whole state is one atomic word (its theoretical
    arrival time in integer nanoseconds) updated by a compare-and-swap, so no lock is taken
    on the check path and a check-then-increment race cannot happen. For any set of
    concurrent callers, tokens granted on one key in any interval of length t never exceed
    ``burst + rate * t / per``, and nothing is refused while the tokens are there. An
    emission interval (``per / rate``) that is not a whole number of nanoseconds rounds up.

    Keys are ``None`` (the default key), ``str``, ``int``, ``bytes`` and tuples of those,
    compared by value (``True`` is the key ``1``, as in a dict). A key whose bucket is
    full again carries no state and is dropped automatically, a few at a time on writes
    (after it has been full for ``max(burst * per / rate, 1 s)``), so memory tracks the
    active keys; :meth:`sweep` drops them all now.

    >>> clock = ManualClock()
    >>> rl = RateLimiter(10, per=1.0, clock=clock)   # 10/s, burst 10
    >>> sum(rl.try_acquire("user:1") for _ in range(11))
    10
    >>> rl.check("user:1").retry_after
    0.1
    >>> clock.advance(0.1)
    0.1
    >>> rl.try_acquire("user:1")
    True
    """

    def __new__(
        cls,
        rate: float,
        per: float = 1.0,
        *,
        burst: int | None = None,
        clock: ManualClock | None = None,
    ) -> RateLimiter:
        """``rate`` > 0 tokens per ``per`` > 0 seconds; ``burst`` >= 1 (default
        ``max(1, ceil(rate))``); ``clock`` a :class:`ManualClock` or None (monotonic).
        Bad values raise TypeError/ValueError naming the argument."""

    @property
    def rate(self) -> float: ...
    @property
    def per(self) -> float: ...
    @property
    def burst(self) -> int:
        """The bucket's capacity."""

    def try_acquire(self, key: _Key = None, cost: int = 1) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if they are there; True if taken.
        ``cost`` must be between 1 and ``burst`` (ValueError otherwise).

        >>> rl = RateLimiter(2, clock=ManualClock())
        >>> rl.try_acquire(), rl.try_acquire(), rl.try_acquire()
        (True, True, False)
        """

    def check(self, key: _Key = None, cost: int = 1) -> Decision:
        """Like :meth:`try_acquire`, returning the whole :class:`Decision`.

        >>> rl = RateLimiter(1, burst=2, clock=ManualClock())
        >>> rl.check("k", 2).allowed, rl.check("k").retry_after
        (True, 1.0)
        """

    def acquire(self, key: _Key = None, cost: int = 1, *, timeout: float | None = None) -> bool:
        """Wait until ``cost`` tokens are granted; True then. Returns False when
        ``timeout`` seconds (real time, also with a ManualClock) pass, and at once when the
        tokens cannot be there before the timeout. The wait releases the GIL and raises
        KeyboardInterrupt promptly on Ctrl-C.

        >>> rl = RateLimiter(100, burst=1)
        >>> rl.acquire("k"), rl.acquire("k", timeout=1.0)   # the second waits ~10 ms
        (True, True)
        """

    def acquire_async(
        self, key: _Key = None, cost: int = 1, *, timeout: float | None = None
    ) -> Coroutine[Any, Any, bool]:
        """:meth:`acquire` for asyncio: ``await rl.acquire_async(key)``. Waiting sleeps on
        the event loop (no thread per waiter). Bad arguments raise at the call, before the
        first await.

        >>> import asyncio
        >>> rl = RateLimiter(100, burst=1)
        >>> asyncio.run(rl.acquire_async("k"))
        True
        """

    def peek(self, key: _Key = None) -> int:
        """Whole tokens available on ``key`` now, taking none.

        >>> RateLimiter(5).peek("never-seen")
        5
        """

    def reset(self, key: _Key = None) -> None:
        """Refill ``key``'s bucket (the key is then reclaimed like any idle key)."""

    def sweep(self) -> int:
        """Drop every key whose bucket is full again; returns how many. Releases the GIL."""

    def __len__(self) -> int:
        """The number of keys tracked."""
