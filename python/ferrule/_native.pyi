"""Type stubs and user documentation for ferrule's native module.

Import these names from ``ferrule``; ``ferrule._native`` is private.
"""

from collections.abc import Callable, Hashable, Iterator
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
    after that. With ``shards=1`` eviction is exact LRU (a hit refreshes recency). The
    default is one shard on GIL builds (the GIL serialises calls anyway, and one shard
    has the best locality) and, on free-threaded builds, a count that scales with the CPUs
    while leaving every shard at least 64 entries, so small caches are exact LRU too. Keys are any hashable objects with dict semantics (``1``, ``1.0`` and
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
