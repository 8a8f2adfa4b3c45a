"""Type stubs and user documentation for ferrule's native module.

Import these names from ``ferrule``; ``ferrule._native`` is private.
"""

from collections.abc import Callable, Hashable, Iterator
from types import TracebackType
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, final, overload

__version__: str

_T = TypeVar("_T")
_R = TypeVar("_R")
_P = ParamSpec("_P")

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
    """The circuit is open; the call was not made.

    Raised by :class:`CircuitBreaker` with ``retry_after`` set: seconds until the breaker
    lets a probe call through (0.0 when it is half-open and its probes are in flight).
    """

    retry_after: float

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
# Resilience
# ---------------------------------------------------------------------------------------

class _Bus(Protocol):
    def publish(self, signal_type: str, data: Any = ..., /) -> Any: ...

@final
class BreakerStats:
    """Counters of a :class:`CircuitBreaker`, read without stopping it.

    ``calls`` counts admitted calls (the function ran); each ends as one of
    ``successes``, ``failures`` (an ``expected`` exception) or ``ignored`` (any other
    exception), so ``calls == successes + failures + ignored`` once none is in flight.
    ``rejections`` counts calls refused with :class:`CircuitOpen`.

    >>> cb = CircuitBreaker(failure_threshold=1)
    >>> cb.call(len, "abc")
    3
    >>> s = cb.stats()
    >>> (s.state, s.calls, s.successes, s.failures, s.rejections)
    ('closed', 1, 1, 0, 0)
    """

    @property
    def state(self) -> Literal["closed", "open", "half_open"]: ...
    @property
    def calls(self) -> int: ...
    @property
    def successes(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def ignored(self) -> int: ...
    @property
    def rejections(self) -> int: ...
    @property
    def state_changes(self) -> int: ...
    @property
    def consecutive_failures(self) -> int:
        """The current run of expected failures while closed (0 otherwise)."""

@final
class CircuitBreaker:
    """A circuit breaker: stops calling a dependency that keeps failing, and probes it
    again after a while.

    - closed: calls go through; ``failure_threshold`` consecutive failures (exceptions
      that are instances of ``expected``) open the breaker. A success resets the run.
    - open: calls raise :class:`CircuitOpen` (with ``retry_after``) without running.
      Opened at time t, it stays open while ``now < t + reset_timeout``.
    - half_open: then up to ``half_open_max_calls`` probe calls run at once (others are
      rejected); the first probe to succeed closes the breaker, the first to fail
      re-opens it.

    Exceptions outside ``expected`` propagate and count neither way (a probe that raises
    one frees its slot). Only the outcome of a call admitted in the breaker's current
    period counts: a slow call that fails after the breaker opened does not re-open it.

    The state is one atomic word in Rust (a lock is taken only for the instant of
    tripping open); the protected call runs in the caller's thread with no lock held, so
    calls through one breaker run in parallel. On each change of
    state, in the thread that made it and after it was made: ``on_state_change(old,
    new)``, then ``bus.publish(f"breaker.{name}.state", {"name", "state",
    "previous"})``. An exception from either goes to ``sys.unraisablehook``.

    Use it as ``cb.call(fn, *args, **kwargs)``, as a decorator (plain and ``async def``
    functions), or as a context manager (``with cb:`` and ``async with cb:``; the block
    is the protected call).

    >>> clock = ManualClock()
    >>> cb = CircuitBreaker(failure_threshold=2, reset_timeout=30.0, clock=clock)
    >>> def down():
    ...     raise ConnectionError("refused")
    >>> for _ in range(2):
    ...     try:
    ...         cb.call(down)
    ...     except ConnectionError:
    ...         pass
    >>> cb.state
    'open'
    >>> try:
    ...     cb.call(down)
    ... except CircuitOpen as e:
    ...     print(e.retry_after)
    30.0
    >>> clock.advance(30.0)
    30.0
    >>> cb.state
    'half_open'
    >>> cb.call(lambda: "up"), cb.state
    ('up', 'closed')
    """

    def __new__(
        cls,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        *,
        half_open_max_calls: int = 1,
        expected: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        clock: ManualClock | None = None,
        name: str | None = None,
        on_state_change: Callable[[str, str], object] | None = None,
        bus: _Bus | None = None,
    ) -> CircuitBreaker:
        """``failure_threshold`` and ``half_open_max_calls`` >= 1; ``reset_timeout`` >= 0
        seconds; ``expected`` an exception class or a non-empty tuple of them; ``name`` is
        required with ``bus`` (any object with ``publish(type, data)``, e.g. a
        ``SignalBus``)."""

    def call(self, func: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """``func(*args, **kwargs)`` through the breaker: raises :class:`CircuitOpen`
        without calling while open; otherwise returns or raises what ``func`` does.

        >>> CircuitBreaker().call(max, 1, 2)
        2
        """

    def __call__(self, func: Callable[_P, _R], /) -> Callable[_P, _R]:
        """Decorate a function or ``async def`` function.

        >>> cb = CircuitBreaker(name="payments")
        >>> @cb
        ... def charge(amount: int) -> str:
        ...     return f"charged {amount}"
        >>> charge(5)
        'charged 5'
        """

    def __enter__(self) -> CircuitBreaker:
        """Admit the block as one call (or raise :class:`CircuitOpen`).

        >>> cb = CircuitBreaker()
        >>> with cb:
        ...     pass
        """

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool:
        """Record the block's outcome; never suppresses its exception."""

    async def __aenter__(self) -> CircuitBreaker:
        """``async with cb:`` admits the block as one call."""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> bool: ...
    def _acquire(self) -> int:
        """Admit a call; the permit to hand to ``_record``. (Used by the decorator.)"""

    def _record(self, permit: int, exc: BaseException | None = None) -> None:
        """Record the outcome of the call admitted with ``permit``."""

    @property
    def state(self) -> Literal["closed", "open", "half_open"]:
        """The state a call would meet now. An open breaker whose timeout has passed
        becomes half-open when it is next called or its state is read."""
    @property
    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through; 0.0 when not open."""
    @property
    def name(self) -> str | None: ...
    @property
    def failure_threshold(self) -> int: ...
    @property
    def reset_timeout(self) -> float: ...
    @property
    def half_open_max_calls(self) -> int: ...
    @property
    def expected(self) -> tuple[type[BaseException], ...]: ...
    def reset(self) -> None:
        """Close the breaker and clear its run of failures; calls in flight from before
        the reset no longer count."""

    def stats(self) -> BreakerStats:
        """Counters; see :class:`BreakerStats`."""
