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

# ---------------------------------------------------------------------------------------
# Observability: Metrics, ErrorStore
# ---------------------------------------------------------------------------------------

_F = TypeVar("_F", bound=Callable[..., Any])

@final
class OpStats:
    """Statistics of one operation over a :class:`Metrics` window; durations in seconds.

    ``count`` calls, ``errors`` of them failed, ``rate = count / window``; ``mean`` and
    ``max`` are exact; ``p50``, ``p90`` and ``p99`` are nearest-rank quantiles from a
    log-scale histogram, within 2% of the exact value from 1 µs to 275 s (bucket
    midpoint, never above ``max``). An unknown or reset operation gives all zeros.

    >>> m = Metrics(window=60.0)
    >>> for ms in (10, 20, 30, 40):
    ...     m.record("db", ms / 1000)
    >>> s = m.snapshot("db")
    >>> s.count, s.errors, round(s.mean, 3), round(s.max, 3)
    (4, 0, 0.025, 0.04)
    """

    @property
    def count(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def rate(self) -> float:
        """Calls per second of window: ``count / window``."""
    @property
    def mean(self) -> float: ...
    @property
    def p50(self) -> float: ...
    @property
    def p90(self) -> float: ...
    @property
    def p99(self) -> float: ...
    @property
    def max(self) -> float: ...

@final
class Timer:
    """Returned by :meth:`Metrics.time`: times a ``with`` block, or decorates a function.

    As a context manager it measures with the metrics' clock and records on exit
    (``ok=False`` if the block raised; the exception propagates). One Timer times one
    block at a time: entering it again while it runs raises RuntimeError. As a decorator
    (on ``def`` or ``async def``) every call is timed separately, from any thread.

    >>> m = Metrics()
    >>> with m.time("parse"):
    ...     pass
    >>> @m.time("fetch")
    ... def fetch() -> int:
    ...     return 1
    >>> fetch(), m.snapshot("parse").count, m.snapshot("fetch").count
    (1, 1, 1)
    """

    @property
    def op(self) -> str:
        """The operation name."""
    def __enter__(self) -> Timer: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any, /
    ) -> bool:
        """Record the elapsed time; never suppresses the exception."""
    def __call__(self, func: _F, /) -> _F:
        """Wrap ``func`` (sync or async) so that every call is recorded."""

@final
class Metrics:
    """Latency and outcome per operation name over a sliding window, in fixed memory.

    Each operation has a ring of 10 time slots of ``window / 10`` seconds; each slot holds
    a log-scale latency histogram (32 buckets per power of two from 16 ns to ~275 s, so
    quantiles are within 2% of exact), the error count, the sum and the maximum, all
    updated with atomics: ``record`` takes no lock and allocates nothing for a known
    operation. Memory per operation is fixed (~75 KiB); operations with no recording in
    the window are reclaimed. A snapshot at time ``now`` covers the slots ``floor(now /
    L) - 9 ..= floor(now / L)`` (``L = window / 10``): every recording younger than
    ``window - L`` is in it, none older than ``window``. ``clock`` (a :class:`ManualClock`)
    drives the slots and the durations measured by :meth:`time`.

    >>> clock = ManualClock()
    >>> m = Metrics(window=60.0, clock=clock)
    >>> m.record("db.query", 0.012)
    >>> m.record("db.query", 0.030, ok=False)
    >>> s = m.snapshot("db.query")
    >>> s.count, s.errors, s.rate
    (2, 1, 0.03333333333333333)
    >>> clock.advance(60.0)
    60.0
    >>> m.snapshot("db.query").count
    0
    """

    def __new__(cls, *, window: float = 60.0, clock: ManualClock | None = None) -> Metrics:
        """``window`` seconds (>= 0.001); ``clock`` None means monotonic time."""

    @property
    def window(self) -> float:
        """The window in seconds."""

    def record(self, op: str, seconds: float, ok: bool = True) -> None:
        """Record one call of ``op`` that took ``seconds`` (>= 0, finite: else ValueError);
        ``ok=False`` counts it as an error. ``op`` must be a str (else TypeError).
        Durations above 10**6 s are recorded as 10**6 s."""

    def time(self, op: str) -> Timer:
        """A :class:`Timer` for ``op``: ``with m.time("op"): ...`` or ``@m.time("op")``.

        >>> m = Metrics()
        >>> @m.time("work")
        ... async def work() -> None: ...
        """

    def snapshot(self, op: str) -> OpStats:
        """Statistics of ``op`` over the window (all zeros if unknown or reset).

        >>> Metrics().snapshot("never").count
        0
        """

    def ops(self) -> list[str]:
        """Sorted names of the operations with a recording in the window.

        >>> m = Metrics()
        >>> m.record("b", 0.1); m.record("a", 0.1)
        >>> m.ops()
        ['a', 'b']
        """

    def reset(self, op: str | None = None) -> None:
        """Forget ``op`` (its recordings vanish), or every operation when None.

        >>> m = Metrics()
        >>> m.record("a", 0.1)
        >>> m.reset("a")
        >>> m.snapshot("a").count
        0
        """

@final
class ErrorRecord:
    """One error held by an :class:`ErrorStore` (immutable).

    ``timestamp`` is the store's clock reading in seconds when it was recorded.

    >>> store = ErrorStore(clock=ManualClock(5.0))
    >>> store.record("agent-1", ValueError("boom"))
    True
    >>> r = store.history("agent-1")[0]
    >>> r.agent_id, repr(r.error), r.timestamp
    ('agent-1', "ValueError('boom')", 5.0)
    """

    @property
    def agent_id(self) -> str: ...
    @property
    def error(self) -> Any: ...
    @property
    def timestamp(self) -> float: ...

@final
class ErrorStore:
    """Recent errors per agent, bounded per agent, by age and by number of agents.

    - At most ``max_per_agent`` errors per agent: recording one more drops its oldest.
    - An error recorded at ``t`` is held while ``now < t + max_age`` (the store's clock);
      an agent with no error left vanishes from :meth:`agents`.
    - At most ``max_agents`` agents at every instant, also under concurrent writers: a new
      agent evicts the least recently recorded one (never the new record). Sequentially
      this is exact LRU; under concurrent recording the victim is the least recent as
      seen shard by shard.

    Thread-safe with 16 shards (no global lock on ``record``). Evicted and expired errors
    are released after the shard lock, so an error's ``__del__`` never runs under it.

    >>> clock = ManualClock()
    >>> store = ErrorStore(max_per_agent=2, max_age=60.0, clock=clock)
    >>> for n in range(3):
    ...     store.record("a1", RuntimeError(n))
    True
    True
    True
    >>> store.count("a1"), [str(r.error) for r in store.history("a1")]
    (2, ['2', '1'])
    >>> clock.advance(60.0)
    60.0
    >>> store.count("a1"), store.agents()
    (0, [])
    """

    def __new__(
        cls,
        *,
        max_per_agent: int = 1000,
        max_age: float = 86400.0,
        max_agents: int = 100000,
        clock: ManualClock | None = None,
    ) -> ErrorStore:
        """Bounds: ``max_per_agent`` and ``max_agents`` >= 1, ``max_age`` > 0 seconds."""

    @property
    def max_per_agent(self) -> int: ...
    @property
    def max_age(self) -> float: ...
    @property
    def max_agents(self) -> int: ...
    def record(self, agent_id: str, error: Any) -> bool:
        """Store ``error`` for ``agent_id`` (a str); returns True once it is stored."""

    def count(self, agent_id: str) -> int:
        """Errors currently held for ``agent_id``; 0 when unknown."""

    def history(self, agent_id: str, limit: int = 100) -> list[ErrorRecord]:
        """Up to ``limit`` (>= 0) held errors of ``agent_id``, newest first.

        >>> s = ErrorStore()
        >>> _ = s.record("a", KeyError("k"))
        >>> [type(r.error).__name__ for r in s.history("a", limit=5)]
        ['KeyError']
        """

    def reset(self, agent_id: str) -> bool:
        """Forget every error of ``agent_id``; True if it had any."""

    def agents(self) -> list[str]:
        """Sorted ids of the agents with errors held."""
