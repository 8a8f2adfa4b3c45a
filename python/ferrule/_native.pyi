"""Type stubs and user documentation for ferrule's native module.

Import these names from ``ferrule``; ``ferrule._native`` is private.
"""

from collections.abc import Callable, Coroutine, Hashable, Iterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, final, overload

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
# Resource limits and pools
# ---------------------------------------------------------------------------------------

class _Bus(Protocol):
    def publish(self, signal_type: str, data: Any, /) -> object: ...

@final
class Usage:
    """A snapshot of one budget, from :meth:`ResourceManager.usage`.

    >>> rm = ResourceManager({"db": 10})
    >>> lease = rm.acquire("db", 9)
    >>> rm.usage()["db"]
    Usage(used=9, limit=10, pressure='moderate')
    """

    @property
    def used(self) -> int: ...
    @property
    def limit(self) -> int: ...
    @property
    def pressure(self) -> str:
        """``"normal"``, ``"moderate"`` or ``"severe"``."""

@final
class Lease:
    """Units of one budget, held until released.

    ``release()`` is idempotent: the units go back exactly once, whether by ``release``,
    by leaving the ``with`` block, by ttl expiry, or when the Lease object is collected
    unreleased (so an abandoned lease never leaks capacity). A collected lease runs no
    Python code: the pressure change it causes is published by the manager's next
    operation on that budget.

    >>> rm = ResourceManager({"db": 2})
    >>> with rm.acquire("db") as lease:
    ...     (lease.name, lease.amount, rm.usage()["db"].used)
    ('db', 1, 1)
    >>> lease.released
    True
    """

    def release(self) -> None:
        """Give the units back; later calls do nothing."""

    @property
    def name(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def released(self) -> bool:
        """True once released, or reclaimed because its ttl passed."""
    @property
    def expires_at(self) -> float | None:
        """The manager's clock time (seconds) at which a ttl lease expires, else None.

        >>> clock = ManualClock(100.0)
        >>> ResourceManager({"x": 1}, clock=clock).acquire("x", ttl=5.0).expires_at
        105.0
        """
    def __enter__(self) -> Lease: ...
    def __exit__(self, *exc: object) -> bool:
        """Release; exceptions propagate."""

@final
class ResourceManager:
    """Named budgets of resources (``{"gpu_mem_gb": 80, "workers": 16}``), each held in
    one atomic counter changed by compare-and-swap: ``0 <= used <= limit`` holds at every
    instant under any number of threads, acquiring and releasing a lease without ttl takes
    no lock, and budgets share no lock (a ttl lease also enters its own budget's deadline
    heap, under that budget's small mutex).

    Pressure: a budget is ``"moderate"`` when ``used >= alert_threshold * limit``,
    ``"severe"`` when ``used >= severe_threshold * limit``, else ``"normal"``. With a
    ``bus`` (a ``SignalBus``, or any object with ``publish(type, data)``), each change of
    a budget's level is published once as ``resource.<name>.pressure`` with data
    ``{"name", "pressure", "previous", "used", "limit"}``. Publishing happens after every
    internal lock is released, so a subscriber may call back into the manager; an
    exception from ``publish`` goes to ``sys.unraisablehook`` and does not fail the
    acquire or release that caused the change. Under concurrent callers the published
    changes form one chain per budget (each ``previous`` is the level last published),
    but calls from different threads may reach the bus in either order.

    A lease taken with ``ttl`` at clock time t is live while ``now < t + ttl``; after that
    it is reclaimed (lazily: on the next acquire, wait slice or snapshot of that budget).

    >>> rm = ResourceManager({"gpu_mem_gb": 20, "workers": 4})
    >>> lease = rm.acquire("gpu_mem_gb", 18, timeout=5.0)
    >>> rm.pressure("gpu_mem_gb")
    'moderate'
    >>> rm.try_acquire("gpu_mem_gb", 4) is None
    True
    >>> lease.release()
    """

    def __new__(
        cls,
        limits: dict[str, int],
        *,
        alert_threshold: float = 0.9,
        severe_threshold: float = 0.95,
        bus: _Bus | None = None,
        clock: ManualClock | None = None,
    ) -> ResourceManager:
        """``limits`` maps each name to its limit (>= 1);
        ``0 < alert_threshold <= severe_threshold <= 1``; ``clock`` governs ttls."""

    def acquire(
        self,
        name: str,
        amount: int = 1,
        *,
        timeout: float | None = None,
        ttl: float | None = None,
    ) -> Lease:
        """Take ``amount`` units of ``name``, waiting for room with the GIL released (Ctrl-C
        interrupts the wait). ``timeout`` seconds (None: forever) then raises
        :class:`PoolTimeout`. ValueError for an unknown name, or an amount < 1 or above
        the limit (it could never succeed).

        >>> rm = ResourceManager({"workers": 1})
        >>> held = rm.acquire("workers")
        >>> rm.acquire("workers", timeout=0.01)
        Traceback (most recent call last):
        ferrule.PoolTimeout: no room for 1 of 'workers' within 0.01 s
        """

    def try_acquire(self, name: str, amount: int = 1, *, ttl: float | None = None) -> Lease | None:
        """Take ``amount`` units now if they are free, else return None.

        >>> ResourceManager({"x": 1}).try_acquire("x", ttl=30.0) is not None
        True
        """

    def acquire_async(
        self,
        name: str,
        amount: int = 1,
        *,
        timeout: float | None = None,
        ttl: float | None = None,
    ) -> Coroutine[Any, Any, Lease]:
        """``acquire`` for asyncio: the coroutine waits on a future that a release
        resolves (no thread per waiter). Arguments are checked at the call.

        >>> async def job(rm: ResourceManager) -> None:
        ...     with await rm.acquire_async("workers", timeout=5.0):
        ...         ...
        """

    def usage(self) -> dict[str, Usage]:
        """A snapshot of every budget, in the order of ``limits`` (expired leases are
        reclaimed first).

        >>> ResourceManager({"a": 2, "b": 3}).usage()
        {'a': Usage(used=0, limit=2, pressure='normal'), 'b': Usage(used=0, limit=3, pressure='normal')}
        """

    def pressure(self, name: str) -> str:
        """``"normal"``, ``"moderate"`` or ``"severe"`` for ``name``."""

    @property
    def limits(self) -> dict[str, int]:
        """A copy of ``{name: limit}``."""
    # Private: used by ferrule._resources (asyncio).
    def _add_waker(self, name: str, callback: Callable[[], object]) -> int: ...
    def _remove_waker(self, name: str, token: int) -> None: ...

@final
class PoolStats:
    """Counters of a :class:`Pool` (atomics; reading them takes no lock).

    ``size`` items exist (idle + in use, counting ones being created); ``created`` and
    ``discarded`` count items made and closed (by Discard, failed validation, idle
    reaping or ``close()``); ``timeouts`` counts checkouts that raised PoolTimeout;
    ``factory_errors`` counts factory calls that raised.

    >>> pool = Pool(object, max_size=2)
    >>> with pool.acquire():
    ...     s = pool.stats()
    >>> (s.size, s.in_use, s.created)
    (1, 1, 1)
    """

    @property
    def size(self) -> int: ...
    @property
    def idle(self) -> int: ...
    @property
    def in_use(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def created(self) -> int: ...
    @property
    def discarded(self) -> int: ...
    @property
    def timeouts(self) -> int: ...
    @property
    def factory_errors(self) -> int: ...

@final
class PoolCheckout(Generic[_T]):
    """One checkout, from :meth:`Pool.acquire`; use it once as a context manager.

    Entered and never exited (and then collected), it returns its item to the pool.

    >>> pool = Pool(list, max_size=1)
    >>> with pool.acquire() as item:
    ...     item.append(1)
    """

    def __enter__(self) -> _T:
        """Check an item out (see :meth:`Pool.acquire`)."""
    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
        /,
    ) -> bool:
        """Return the item, or close and replace it after :class:`Discard` (or any
        exception with ``discard_on_error=True``). Exceptions propagate."""

@final
class Pool(Generic[_T]):
    """A pool of reusable items (database connections, HTTP clients).

    At most ``max_size`` items exist at any instant. ``factory()``, ``validate(item)``
    and ``item.close()`` always run with no internal lock held. A checkout takes the most
    recently returned idle item, else creates one if fewer than ``max_size`` exist, else
    waits with the GIL released; waiters are served first come, first served (a freed
    item or slot goes to the oldest waiter; a newcomer never overtakes one) and get
    :class:`PoolTimeout` after ``timeout`` seconds (None: wait forever).

    - ``validate(item)`` runs when an idle item is checked out (not for a fresh one):
      false closes it and the checkout continues without losing its turn (with another
      idle item, or a new one made in the same slot); an exception closes it, frees its
      slot and propagates.
    - :class:`Discard` raised in the ``with`` block closes and replaces the item, and
      propagates. Other exceptions return the item, unless ``discard_on_error=True``.
    - If ``factory()`` raises, the checkout that called it gets the exception, the slot
      is freed for the next waiter, and ``stats().factory_errors`` counts it.
    - Items idle for ``max_idle`` seconds or more (by ``clock``) are closed lazily, on
      the next checkout, return or ``stats()``; never below ``min_size`` items.
      ``min_size`` items are created at construction (a factory error propagates) and
      replaced after a discard.
    - ``close()`` closes the idle items, fails every waiter with ``RuntimeError("pool is
      closed")``, and closes items in use when they come back.
    - An exception from an item's ``close()`` goes to ``sys.unraisablehook``.

    >>> import sqlite3
    >>> pool = Pool(lambda: sqlite3.connect(":memory:", check_same_thread=False),
    ...             max_size=4, validate=lambda c: c.execute("select 1").fetchone() == (1,))
    >>> with pool.acquire(timeout=5.0) as conn:
    ...     conn.execute("select 2").fetchone()
    (2,)
    >>> pool.close()
    """

    def __new__(
        cls,
        factory: Callable[[], _T],
        *,
        max_size: int,
        min_size: int = 0,
        timeout: float | None = 30.0,
        validate: Callable[[_T], object] | None = None,
        max_idle: float | None = None,
        discard_on_error: bool = False,
        clock: ManualClock | None = None,
    ) -> Pool[_T]:
        """``max_size`` >= 1; ``0 <= min_size <= max_size``; ``timeout`` >= 0 or None;
        ``max_idle`` > 0 seconds or None; ``clock`` governs ``max_idle``."""

    def acquire(self, timeout: float | None = None) -> PoolCheckout[_T]:
        """``with pool.acquire() as item:``; ``timeout`` overrides the pool's default.

        >>> pool = Pool(object, max_size=1, timeout=0.01)
        >>> with pool.acquire():
        ...     with pool.acquire():
        ...         pass
        Traceback (most recent call last):
        ferrule.PoolTimeout: no pool item became available within 0.01 s
        """

    def acquire_async(self, timeout: float | None = None) -> AbstractAsyncContextManager[_T]:
        """``async with pool.acquire_async() as item:``; waits on a future, not a thread.

        >>> async def handler(pool: Pool[Any]) -> None:
        ...     async with pool.acquire_async(timeout=5.0) as client:
        ...         ...
        """

    def close(self) -> None:
        """Close every idle item and fail every waiter; items in use are closed when
        they are returned. Later checkouts raise RuntimeError."""

    def stats(self) -> PoolStats:
        """Counters; see :class:`PoolStats`."""

    @property
    def closed(self) -> bool: ...
    @property
    def max_size(self) -> int: ...
    @property
    def min_size(self) -> int: ...
    @property
    def timeout(self) -> float | None:
        """The default checkout timeout in seconds (None: wait forever)."""
    def __enter__(self) -> Pool[_T]: ...
    def __exit__(self, *exc: object) -> bool:
        """``close()`` the pool."""
    # Private: used by ferrule._resources (asyncio).
    def _checkout_async(self, wake: Callable[[], object]) -> tuple[bool, Any]: ...
    def _resume(self, waiter: Any) -> tuple[bool, Any]: ...
    def _give_up(self, waiter: Any, timed_out: bool, timeout: float | None) -> tuple[bool, Any]: ...
    def _finish(self, item: Any, exc: BaseException | None = None) -> None: ...
