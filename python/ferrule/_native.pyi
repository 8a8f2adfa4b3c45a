"""Type stubs and user documentation for ferrule's native module.

Import these names from ``ferrule``; ``ferrule._native`` is private.
"""

import asyncio
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Hashable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager
from types import GenericAlias, TracebackType
from typing import Any, Generic, Literal, ParamSpec, Protocol, TypeVar, final, overload

from typing_extensions import disjoint_base

from ferrule._ratelimit import Limit

__version__: str
_WAIT_SLICE: float
"""Internal: the longest stretch, in seconds, that a wait runs before it checks for
signals and deadlines again (``crate::core::wait::SLICE``); Python waits that poll use
it too, so ferrule has one wait slice."""

_T = TypeVar("_T")
_R = TypeVar("_R")
_P = ParamSpec("_P")
_BreakerState = Literal["closed", "open", "half_open", "forced_open", "forced_closed"]

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
    """Raised by ``put`` after ``close()``/``shutdown()``, and by ``get`` once closed and drained.

    On Python 3.13 and later it is also a ``queue.ShutDown``, so code written for
    ``queue.Queue.shutdown`` catches it unchanged.
    """

class CircuitOpen(FerruleError):
    """The circuit is open; the call was not made.

    Raised by :class:`CircuitBreaker` with ``retry_after`` set: seconds until the breaker
    lets a probe call through (0.0 when it is half-open and its probes are in flight,
    ``math.inf`` when it is forced open).
    """

    retry_after: float

class PoolTimeout(FerruleError, TimeoutError):
    """No resource became available before the timeout (a ``TimeoutError``)."""

class Discard(FerruleError):
    """Raise inside a pool's ``with`` block to close and replace the item."""

class BackendError(FerruleError, ConnectionError):
    """The backend (e.g. Redis) failed (a ``ConnectionError``)."""

class RateLimited(FerruleError):
    """A rate limiter's tokens could not be had in time; ``decision`` says why.

    Raised by :meth:`RateLimiter.limit` (and ``RedisRateLimiter.limit``) when ``acquire``
    gives up. ``decision`` is the refused :class:`Decision` for that key and cost (its
    ``retry_after`` is how long until the tokens are there); the refusal took nothing.

    >>> rl = RateLimiter(10, clock=ManualClock())
    >>> rl.try_acquire("k", cost=10)
    True
    >>> try:
    ...     with rl.limit("k", timeout=0):
    ...         pass
    ... except RateLimited as e:
    ...     print(e, e.decision.retry_after)
    rate limit exceeded for key 'k': retry after 0.1 s 0.1
    """

    decision: Decision

# ---------------------------------------------------------------------------------------
# Clock
# ---------------------------------------------------------------------------------------

def _close_gate() -> None:
    """Internal: the ``atexit`` hook that keeps daemon threads waiting inside ferrule from
    re-attaching while the interpreter exits (they park instead; see ``src/py/wait.rs``).
    Registered when ``ferrule`` is imported; calling it by hand makes every later wait on
    another thread park forever."""

@final
class ManualClock:
    """A clock that moves only when told to, for deterministic tests.

    Pass it as ``clock=`` to any time-based class: it then governs that object's TTLs,
    leases, windows and refills. Waits and ``timeout=`` arguments stay in real time.
    Thread-safe; it never goes backwards and never wraps: its largest time is 2**62 ns
    (about 146 years), and a move past it raises ``OverflowError`` and leaves the clock
    where it was (so any TTL or lease of up to 4e9 s still adds up exactly).

    >>> clock = ManualClock()
    >>> cache = Cache(100, ttl=5.0, clock=clock)
    >>> cache["k"] = "v"
    >>> clock.advance(5.0)
    5.0
    >>> "k" in cache
    False
    """

    def __new__(cls, start: float = 0.0) -> ManualClock:
        """Start at ``start`` seconds (0 <= start <= 4e9)."""

    def now(self) -> float:
        """The current reading in seconds."""

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0, else ValueError); returns the new reading.
        ``OverflowError`` if that would pass the largest time."""

    def set(self, seconds: float) -> None:
        """Jump to ``seconds``; ValueError if that is earlier than now, ``OverflowError``
        if it is past the largest time."""

# ---------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------

@final
class CacheStats:
    """Counters of a :class:`Cache`, summed over its shards.

    ``get``/``[]`` count hits and misses (``in`` and ``peek`` count neither); every
    ``set`` that stores counts an insert; ``evictions`` counts live entries pushed out by
    the size (or weight) bound, ``expirations`` entries removed because their TTL or time
    to idle had passed, and ``rejected`` writes not stored because the value weighed more
    than its shard may hold.

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
    def rejected(self) -> int:
        """Writes not stored because the value weighed more than its shard may hold."""
    @property
    def size(self) -> int:
        """Live entries now."""
    @property
    def weight(self) -> int:
        """The sum of the live entries' weights (``size`` without a weigher)."""
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
    while leaving every shard at least 64 entries, so small caches are exact LRU too. Keys
    are any hashable objects with dict semantics (``1``, ``1.0`` and ``True`` are one
    key); an exception from a key's ``__hash__`` or ``__eq__`` propagates. No user code
    (``__eq__``, a factory, a value's ``__del__``) ever runs under an internal lock, so
    any of them may use the same cache; the cache never holds two equal keys, even when
    an ``__eq__`` clears or refills it.

    With ``weigher``, ``max_size`` bounds the total weight of the entries instead of
    their number (see ``__new__``); with ``tti`` an entry also expires once it has not
    been read for ``tti`` seconds; ``on_evict`` is told of every entry that leaves the
    cache, and why. ``policy="tinylfu"`` evicts by estimated frequency as well as
    recency (W-TinyLFU), for a higher hit ratio under skewed or scan-polluted traffic.

    Memory grows with the entries actually stored, never in proportion to ``max_size``;
    if it cannot grow, the operation raises MemoryError and changes nothing. The cache
    takes part in garbage collection: reference cycles through its keys and values
    (``cache["self"] = cache``), its weigher or its listener are collected.

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
        tti: float | None = None,
        weigher: Callable[[Any, Any], int] | None = None,
        on_evict: Callable[[Any, Any, Literal["size", "expired", "replaced", "deleted"]], object]
        | None = None,
        shards: int | None = None,
        clock: ManualClock | None = None,
        name: str | None = None,
        bus: _Bus | None = None,
        event_interval: float = 1.0,
        policy: Literal["lru", "tinylfu"] = "lru",
    ) -> Cache:
        """``1 <= max_size <= 2**32 - 2`` (4294967294; OverflowError above); ``ttl`` > 0
        seconds, at most 4e9 (default: entries never expire); ``tti`` likewise (default:
        no time to idle); ``1 <= shards <= min(max_size, 1024)``; ``clock`` a
        :class:`ManualClock` or None (monotonic). Only the shards' locks are allocated up
        front.

        ``tti``: an entry not read for ``tti`` seconds expires, whichever of its TTL and
        its idle time runs out first. A read is what refreshes recency: a hit of ``get``,
        ``[]``, ``get_many`` or ``get_or_set``; ``in``, ``peek`` and the snapshots
        (``keys()``...) are not reads. A write restarts the idle time too.

        ``weigher(key, value) -> int``: ``max_size`` bounds the sum of the weights, and
        eviction removes least recently used entries until a new one fits. Each shard
        holds ``max_size / shards`` of the weight (as it does of the count without a
        weigher): with ``shards=1`` the bound is exact, and an entry heavier than its
        shard's share is not stored (counted in ``stats().rejected``; an older value of
        its key is removed, so no read returns what that write superseded). The weigher
        runs with no lock held, once per write; a result that is not an int (bool
        included) raises TypeError, a negative one ValueError, and an exception of the
        weigher propagates: in each case nothing is stored. Weight 0 is allowed; the
        number of entries stays at most ``max_size`` whatever the weights.

        ``on_evict(key, value, cause)`` is called once for every entry that leaves the
        cache, with ``cause`` one of ``"size"`` (pushed out by the bound), ``"expired"``
        (its TTL or idle time ran out: found by a read, a write, ``expire()``, ``len()``
        or ``stats()``), ``"replaced"`` (a write gave its key another value) and
        ``"deleted"`` (``delete``, ``pop``, ``del``, ``clear()``). It runs after the
        cache's locks are released, on the thread whose call removed the entry, before
        that call returns; it may use the cache. What it raises is never raised into that
        call: an ``Exception`` is logged (logger ``ferrule.cache``), a ``KeyboardInterrupt``
        or ``SystemExit`` goes to ``sys.unraisablehook`` (as from a ``__del__``). Entries
        still in a cache that is collected or cleared by the garbage collector are not
        reported.

        ``policy``: which entry a full cache gives up (per shard; with ``shards=1`` for
        the whole cache). ``"lru"`` (the default): the least recently used. ``"tinylfu"``
        (W-TinyLFU, as in Caffeine and moka): a new entry enters an LRU admission window
        (1% of the shard); the entry the window gives up is admitted to the main space (a
        segmented LRU: probation, and protected for entries read again) only if a
        frequency sketch of recent accesses estimates it more frequent than the main
        space's least recently used probation entry, which then goes; otherwise it goes
        itself. One-off keys and scans then cannot push out frequently used entries. An
        entry refused admission leaves with cause ``"size"`` and counts in
        ``stats().evictions``, like any entry pushed out by the bound. Everything else
        (bounds, TTL, ``tti``, weights, the listener, the counters) is as with ``"lru"``.
        On free-threaded builds a ``"tinylfu"`` cache without ``tti`` reads (``get``, ``[]``,
        ``peek``, ``in``) under a lock shared by threads that each write only their
        own cache line, and a hit's effect on the policy is logged and applied by the
        next write (or after some hundreds of reads): hits and misses are still
        counted exactly, and two threads reading one cache nearly double one's
        throughput. Any other value raises ValueError (TypeError if not a str).

        >>> Cache(100_000, shards=8).shards
        8
        >>> Cache(100_000, shards=4096)
        Traceback (most recent call last):
        ...
        ValueError: shards must be between 1 and 1024
        >>> sized = Cache(10, weigher=lambda k, v: len(v), shards=1)
        >>> sized.set("a", "xxxx"); sized.set("b", "yyyyyy"); sized.set("c", "z")
        >>> sorted(sized.keys()), sized.stats().weight
        (['b', 'c'], 7)

        ``bus`` (a :class:`SignalBus`, or anything with ``publish(type, data)``; ``name``
        is required with it) is told of evictions under pressure, aggregated: entries
        pushed out by the bound (cause ``"size"``) are counted, and the write that finds
        ``event_interval`` seconds (by ``clock``) passed since the last signal publishes
        ``cache.<name>.evicting`` with data ``{"evicted": n, "size", "max_size"}``, ``n``
        the evictions since the last signal. So 10,000 evictions within one interval
        make one signal; a burst's tail is published by a write (the clock is read
        once per 64) after the interval. ``publish`` runs with no lock held (it may use the cache); what it
        raises goes to ``sys.unraisablehook``. See ``ferrule.events``."""

    @property
    def max_size(self) -> int: ...
    @property
    def ttl(self) -> float | None:
        """The default TTL in seconds, or None."""
    @property
    def tti(self) -> float | None:
        """The time to idle in seconds, or None."""
    @property
    def shards(self) -> int:
        """The number of shards (each with its own lock and LRU order)."""
    @property
    def name(self) -> str | None:
        """The name given (the topics' middle segment), or None."""
    @property
    def policy(self) -> Literal["lru", "tinylfu"]:
        """The eviction policy: ``"lru"`` or ``"tinylfu"``.

        >>> Cache(10, policy="tinylfu").policy
        'tinylfu'
        """

    @overload
    def get(self, key: Hashable) -> Any | None:
        """The live value for ``key``, else ``default``. Counts a hit or a miss.

        >>> Cache(10).get("missing", 0)
        0
        """
    @overload
    def get(self, key: Hashable, default: _T) -> Any | _T: ...
    def set(self, key: Hashable, value: Any, *, ttl: float | None = None) -> None:
        """Insert or replace; ``ttl`` overrides the cache's default for this entry. The
        entry is live while ``clock.now() < t + ttl``, with ``t`` read once per call.

        >>> c = Cache(10)
        >>> c.set("k", 1, ttl=0.5)
        """

    @overload
    def peek(self, key: Hashable) -> Any | None:
        """The live value for ``key``, else ``default``, without counting a hit or a miss
        and without refreshing its recency or idle time.

        >>> c = Cache(2, shards=1); c["a"] = 1; c["b"] = 2
        >>> c.peek("a"), c.peek("zz", 0)
        (1, 0)
        >>> c["c"] = 3  # "a" is still the least recently used
        >>> "a" in c
        False
        """
    @overload
    def peek(self, key: Hashable, default: _T) -> Any | _T: ...
    def get_many(self, keys: Iterable[Hashable]) -> dict[Any, Any]:
        """A dict of the live entries among ``keys`` (absent keys are left out).

        Each key counts a hit or a miss and a hit is a read, as with ``get``. ``keys`` is
        any iterable of keys but not a ``str`` or ``bytes`` (TypeError).

        >>> c = Cache(10); c.set_many({"a": 1, "b": 2})
        >>> c.get_many(["a", "b", "zz"])
        {'a': 1, 'b': 2}
        """
    def set_many(self, mapping: Mapping[Any, Any], *, ttl: float | None = None) -> None:
        """Set every ``(key, value)`` pair of ``mapping``, in its order, as ``set`` does.

        ``mapping`` is a dict (its pairs are copied first) or any object whose ``items()``
        yields pairs. Each pair is one ``set``: an error (a key's ``__hash__``, the
        weigher) stops at that pair, and the pairs before it stay set.
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
        the GIL released (single-flight). If the factory raises an ``Exception``, every
        waiter gets that exception and nothing is cached. If it raises a BaseException
        that is not an Exception (``KeyboardInterrupt``, ``SystemExit``, ...), only the
        caller that ran it gets it: the waiters look again and one of them runs its own
        factory. A factory that calls ``get_or_set`` for its own key gets RuntimeError
        instead of a deadlock.

        >>> c = Cache(10)
        >>> c.get_or_set("answer", lambda: 42)
        42
        """

    def get_or_set_async(
        self, key: Hashable, factory: Callable[[], Awaitable[_T]], *, ttl: float | None = None
    ) -> Coroutine[Any, Any, _T]:
        """Coroutine: ``get_or_set`` for asyncio, one flight per key shared with every
        other caller.

        On a miss, exactly one caller per key awaits ``factory()`` while the others wait
        for its result, without a thread each; tasks on any event loop (several loops in
        several threads) and threads in ``get_or_set`` all share that one call.
        ``factory`` is a coroutine function or any callable that returns an awaitable;
        one that returns anything else fails with TypeError (shared like any exception
        of the factory). The factory runs in a task of its own, so a caller that is
        cancelled, the one that started it included, does not cancel it for the others.
        If it raises an ``Exception``, every waiter gets that exception and nothing is
        cached. If it leaves with another BaseException (``KeyboardInterrupt``,
        ``SystemExit``, its task cancelled), the waiters look again and one of them runs
        its own factory; the caller that started it raises that BaseException, as with
        ``get_or_set``, but looks again too when the factory's task was cancelled. As for ``get_or_set``: one call counts one hit or one miss,
        ``ttl`` overrides the cache's default, a factory that began before ``clear()``
        answers its callers but does not store its result, and an argument error
        (``factory`` not callable, a bad ``ttl``, an unhashable ``key``) raises at the
        call. A blocking ``get_or_set`` for the key, made on the thread whose event loop
        runs the leading task, raises RuntimeError instead of stopping that loop.

        >>> import asyncio
        >>> c = Cache(10)
        >>> async def load_user() -> dict[str, str]:
        ...     return {"name": "Ada"}
        >>> async def main() -> list[dict[str, str]]:
        ...     return await asyncio.gather(
        ...         *(c.get_or_set_async("user:1", load_user) for _ in range(3))
        ...     )
        >>> asyncio.run(main())  # one load_user() call for the three
        [{'name': 'Ada'}, {'name': 'Ada'}, {'name': 'Ada'}]
        >>> c.stats().misses, c.stats().inserts
        (3, 1)
        """

    def clear(self) -> None:
        """Remove every entry (and release the memory they used). Removed values are
        released after the cache's locks, so their ``__del__`` may use the cache. A
        ``get_or_set`` factory that began before ``clear()`` still answers its callers, but
        its result is not stored, and later callers do not wait for it."""

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

@disjoint_base
class _CachedCall:
    """Internal: the call of a function memoised by ``ferrule.cached`` (the base of
    ``ferrule._cached._CachedFunction``). A call with one exact int or str argument and
    no keywords is looked up in ``cache`` natively (a hit runs no Python code; a miss is
    ``cache.get_or_set``'s flight, its leader calling ``func(key)``); every other call is
    ``slow(args, kwargs)``."""

    def __new__(
        cls,
        cache: Cache,
        func: Callable[[Any], Any],
        slow: Callable[[tuple[Any, ...], dict[str, Any] | None], Any],
    ) -> _CachedCall: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __get__(self, instance: object, owner: type | None = None, /) -> Any: ...

# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

@final
class Agent:
    """One registered agent, as it was when read. Immutable and cheap to create.

    An Agent takes part in garbage collection: a cycle through it (say, an agent's
    value that keeps its own Agent) is collected.

    >>> reg = Registry()
    >>> reg.register("a1", "handle", capabilities=["search"], metadata={"gpu": 2})
    >>> a = reg.get("a1")
    >>> a.agent_id, a.value, a.capabilities, a.health, a.metadata["gpu"]
    ('a1', 'handle', frozenset({'search'}), 'healthy', 2)
    """

    @property
    def agent_id(self) -> str: ...
    @property
    def value(self) -> Any:
        """The object registered with the agent (``lookup`` returns it)."""
    @property
    def capabilities(self) -> frozenset[str]: ...
    @property
    def node(self) -> str | None: ...
    @property
    def health(self) -> str: ...
    @property
    def metadata(self) -> Mapping[str, Any]:
        """A read-only view (``types.MappingProxyType``) of a shallow copy of the
        metadata given at registration or the last ``update``. Nested containers are
        the caller's own objects; ``where`` conditions on plain values (see
        :meth:`Registry.find`) see them as they were when the metadata was given."""
    @property
    def registered_at(self) -> float:
        """When it was registered, in the registry's clock seconds."""
    @property
    def expires_at(self) -> float | None:
        """When its lease ends (clock seconds), or None without a lease."""

@final
class Registry:
    """A concurrent agent directory: find agents by id, capability, node, health and
    metadata, with owners and leases that remove what outlives its purpose.

    Entries are immutable and live in a sharded map with sharded secondary indexes; no
    global lock. A query takes candidates from the smallest matching index and checks
    each against the entry itself, so a result never holds an agent that did not match
    when it was read. ``unregister`` and ``update`` touch only that agent's index rows.
    No Python code (a ``where`` callable, an owner check) runs under an internal lock.

    Arguments are read once, as a snapshot: a builtin dict, list, tuple, set or
    frozenset given as metadata (at any depth), capabilities, a ``where`` value or a
    ``register_many`` item may be changed by another thread meanwhile (free-threaded
    builds) and is seen either before or after each change, never half-changed. The registry takes part in
    garbage collection: a cycle through it (a value, metadata or owner that refers back
    to the registry) is collected.

    >>> reg = Registry()
    >>> reg.register("a1", "worker-1", capabilities=["search", "code"], node="n1",
    ...              metadata={"gpu": 2, "tags": ["fast"]})
    >>> reg.register("a2", "worker-2", capabilities=["search"], node="n2", health="degraded")
    >>> sorted(reg.ids(capability="search"))
    ['a1', 'a2']
    >>> reg.ids(capability="search", health="healthy", where=[("gpu", "gte", 1)])
    ['a1']
    >>> reg.lookup("a2"), "a3" in reg, len(reg)
    ('worker-2', False, 2)
    """

    def __new__(
        cls,
        *,
        clock: ManualClock | None = None,
        max_batch: int = 10000,
        indexes: Iterable[str] = (),
    ) -> Registry:
        """``clock`` governs leases (None: monotonic time); ``max_batch`` (>= 1) bounds
        ``register_many``; ``indexes`` declares secondary indexes on metadata paths.

        ``indexes`` is an iterable of distinct dotted paths into nested metadata dicts
        (at most 32; a bare str, a non-str item, an empty segment or a repeated path
        raises TypeError or ValueError). A ``where`` condition ``eq`` or ``in`` on a
        declared path then reads that index instead of scanning every agent, with the
        same results: each candidate is still checked against its entry. Indexed values
        are None, bool, int, float and str (and the items of a list or tuple there, which
        ``eq`` and ``in`` also match), filed by Python's equality (``1 == 1.0 == True``);
        an entry whose value there only Python can compare is always a candidate, and a
        condition whose value is not one of these types (or is a NaN) scans as before.

        >>> reg = Registry(indexes=["region", "resource.kind"])
        >>> reg.register("a", metadata={"region": "eu", "resource": {"kind": "gpu"}})
        >>> reg.register("b", metadata={"region": ["eu", "us"]})
        >>> sorted(reg.ids(where=[("region", "eq", "eu")]))
        ['a', 'b']
        >>> reg.ids(where=[("resource.kind", "in", ["gpu", "tpu"])]), reg.indexes
        (['a'], ('region', 'resource.kind'))
        """

    @property
    def max_batch(self) -> int: ...
    @property
    def indexes(self) -> tuple[str, ...]:
        """The metadata paths with a declared index, in the order given."""
    def register(
        self,
        agent_id: str,
        value: Any = None,
        *,
        capabilities: Iterable[str] = (),
        node: str | None = None,
        health: str = "healthy",
        metadata: Mapping[str, Any] | None = None,
        owner: object | None = None,
        ttl: float | None = None,
    ) -> None:
        """Register an agent. Raises :class:`AlreadyRegistered` (a ``KeyError``) if the
        id is taken by a live entry; then nothing of this call stays behind.

        ``owner``: a ``threading.Thread`` (the entry goes once the thread has finished),
        an ``asyncio.Task``/``asyncio.Future`` or ``concurrent.futures.Future`` (removed
        when done), or any weak-referenceable object (removed when it is collected). An
        owner that is already finished raises ValueError. If a thread owner's
        ``is_alive()`` raises later, the entry is kept (treated as running) and the
        error goes to :func:`sys.unraisablehook`; no other call fails because of it.
        ``ttl`` (> 0 seconds) makes the entry a lease that expires unless
        :meth:`heartbeat` renews it.

        >>> import threading
        >>> reg = Registry()
        >>> reg.register("w", owner=threading.current_thread(), ttl=30.0)
        >>> reg.heartbeat("w")
        True
        """

    def register_many(self, items: Iterable[Mapping[str, Any]]) -> int:
        """Register every item (a dict of :meth:`register`'s arguments plus
        ``agent_id``) or none. Every item is checked before any is made; if one is
        refused, or one owner cannot be watched (its ``add_done_callback`` raises), the
        ones already made are removed with their index rows and owner watches, and the
        error propagates. On success every owner is watched. More than ``max_batch``
        items raise ValueError.

        >>> Registry().register_many([{"agent_id": "a"}, {"agent_id": "b", "node": "n1"}])
        2
        """

    def unregister(self, agent_id: str) -> bool:
        """Remove the agent; True if it was registered and live (not expired or orphaned).
        Cost: its own index rows."""

    def update(
        self,
        agent_id: str,
        *,
        capabilities: Iterable[str] = ...,
        node: str | None = ...,
        health: str = ...,
        metadata: Mapping[str, Any] | None = ...,
    ) -> None:
        """Change the given fields as one step (readers see the old or the new entry,
        never a mix). KeyError if the agent is not registered.

        >>> reg = Registry()
        >>> reg.register("a", capabilities=["x"])
        >>> reg.update("a", health="degraded", capabilities=["y"])
        >>> reg.get("a").health, reg.ids(capability="x")
        ('degraded', [])
        """

    def get(self, agent_id: str) -> Agent | None:
        """The agent, or None if absent, expired or orphaned."""

    def lookup(self, agent_id: str) -> Any:
        """The agent's value; KeyError if absent."""

    def heartbeat(self, agent_id: str, ttl: float | None = None) -> bool:
        """Renew the lease for ``ttl`` seconds (default: the registration's ttl) from
        now; False if the agent is absent or already expired. With ``ttl`` on an entry
        without a lease, the entry becomes a lease.

        >>> clock = ManualClock()
        >>> reg = Registry(clock=clock)
        >>> reg.register("a", ttl=10.0)
        >>> clock.advance(9.0)
        9.0
        >>> reg.heartbeat("a"), reg.get("a").expires_at
        (True, 19.0)
        """

    def expire(self) -> int:
        """Remove expired and orphaned entries now (a full scan); return how many.
        Without it they are still never returned, and are reclaimed a few per write."""

    def find(
        self,
        *,
        capability: str | None = None,
        node: str | None = None,
        health: str | None = None,
        where: Callable[[Agent], object] | Iterable[tuple[str, str, Any]] | None = None,
        limit: int | None = None,
    ) -> list[Agent]:
        """Agents matching every given criterion (in no particular order).

        ``where`` filters last (but for an ``eq`` or ``in`` triple on a path declared in
        ``indexes``, which is served from that index when it is the smallest candidate
        set): a callable on :class:`Agent`, or a list of
        ``(path, op, value)`` triples over ``metadata`` (dotted path into nested dicts;
        op one of ``eq ne gt gte lt lte in not_in``; ``eq`` and ``in`` also match an
        element of a list value; a missing path never matches, and a comparison Python
        refuses (any ``Exception``: TypeError, a raising ``__eq__``, ``__hash__`` or
        ``__bool__``, a RecursionError) is no match, while KeyboardInterrupt and the like
        propagate). Every answer is Python's own: ints of any size against floats
        without rounding (``2**53 + 1 != 2.0**53``), ``True == 1``, NaN unequal to
        everything (except itself by identity inside ``in`` and container equality, as
        in Python). Triples over plain values (None, bool, int, float, str, lists,
        tuples, dicts, up to 32 levels deep) are evaluated in Rust with the GIL
        released; other values fall back to Python comparisons. ``limit`` (an int >= 0,
        any size) caps the result.

        A query of one capability, node or health and nothing else keeps its answer
        (32 matches or more): repeated, it returns the same :class:`Agent` objects for
        entries unchanged since, and new ones for entries updated since.

        >>> reg = Registry()
        >>> reg.register("a", metadata={"zone": "eu", "tags": ["gpu", "ssd"]})
        >>> reg.register("b", metadata={"zone": "us", "tags": ["ssd"]})
        >>> [a.agent_id for a in reg.find(where=[("tags", "eq", "gpu")])]
        ['a']
        >>> reg.count(where=[("zone", "in", ["eu", "us"])])
        2
        """

    def count(
        self,
        *,
        capability: str | None = None,
        node: str | None = None,
        health: str | None = None,
        where: Callable[[Agent], object] | Iterable[tuple[str, str, Any]] | None = None,
        limit: int | None = None,
    ) -> int:
        """How many agents :meth:`find` would return (without building the list)."""

    def ids(
        self,
        *,
        capability: str | None = None,
        node: str | None = None,
        health: str | None = None,
        where: Callable[[Agent], object] | Iterable[tuple[str, str, Any]] | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """The ids of the agents :meth:`find` would return."""

    def _health_round(self) -> tuple[list[Agent], list[str], list[str]]:
        """Internal (``HealthMonitor``'s round): every live agent, with its id and its
        health in the same order, read in one pass."""

    def __contains__(self, key: object, /) -> bool:
        """True if a live agent has this id (False for non-str)."""

    def __len__(self) -> int:
        """Registered agents (expired and orphaned ones are reclaimed first)."""

def _health_statuses(
    ids: list[str], values: list[object], healths: list[str], /
) -> tuple[dict[str, str], list[int]] | None:
    """Internal (``HealthMonitor``'s round): ``{ids[i]: values[i]}`` and the positions
    where ``values[i] != healths[i]``, if every value is an exact ``str`` among the three
    check results; else None. ValueError if the lengths differ."""

# WorkQueue and the TaskPool counters
# ---------------------------------------------------------------------------------------

@final
class QueueStats:
    """Counters of a :class:`WorkQueue`, read together in one critical section, so
    ``put == got + dropped + size`` holds exactly in every snapshot.

    ``put`` counts the items that entered the queue; ``got`` those taken out;
    ``dropped`` those that entered and were then lost (evicted by ``drop_oldest``);
    ``rejected`` those that did not enter for lack of room: the ``reject`` policy, a
    full ``put_nowait`` or a timed-out ``put`` (each raising :class:`QueueFull`), and
    the ``drop_newest`` policy, which refuses the new item without an error;
    ``high_water`` is the largest length seen.

    >>> q = WorkQueue(2, overflow="drop_oldest")
    >>> q.put_many([1, 2, 3])
    3
    >>> s = q.stats()
    >>> (s.put, s.got, s.dropped, s.size, s.high_water)
    (3, 0, 1, 2, 2)
    """

    @property
    def put(self) -> int: ...
    @property
    def got(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def high_water(self) -> int: ...
    @property
    def size(self) -> int:
        """Items queued when the snapshot was taken."""

@final
class WorkQueue(Generic[_T]):
    """A bounded multi-producer, multi-consumer FIFO queue with an overflow policy.

    ``overflow`` decides what a put does when ``maxsize`` items are queued: ``"block"``
    waits for room (``put_nowait`` raises :class:`QueueFull`), ``"reject"`` raises
    :class:`QueueFull`, ``"drop_oldest"`` evicts the oldest item to make room (counted
    in ``stats().dropped``), ``"drop_newest"`` refuses the new item without an error:
    the queue keeps what it has, the put returns normally and the refusal counts in
    ``stats().rejected`` (``put_many`` tells how many items entered).

    Waits release the GIL, honour ``timeout`` (seconds; ``None`` waits forever, ``0``
    does not wait) and wake on the matching event; Ctrl-C interrupts them within 50 ms.
    ``close()`` wakes every waiter: blocked putters get :class:`QueueClosed`, getters
    drain what is left, then get :class:`QueueClosed`; iteration stops there. No item is
    lost or duplicated: every item that entered is got exactly once or counted as
    dropped. :class:`QueueFull` and :class:`QueueEmpty` subclass ``queue.Full`` and
    ``queue.Empty``. The queue takes part in garbage collection: an item (or a waiting
    asyncio task) that refers back to the queue does not keep it alive.

    It is a drop-in for ``queue.Queue(maxsize)``: ``put(item, block=True,
    timeout=None)``, ``get(block=True, timeout=None)``, ``task_done()``/``join()``
    (``unfinished_tasks``) and ``shutdown(immediate=False)`` behave as there.
    ``maxsize <= 0`` (``queue.Queue``'s "no bound") still has one: ``2**31`` items, past
    which a put raises :class:`QueueFull` instead of waiting.

    >>> q: WorkQueue[str] = WorkQueue(100)
    >>> q.put("job-1"); q.put_nowait("job-2")
    >>> q.get(), len(q)
    ('job-1', 1)
    >>> q.close()
    >>> list(q)
    ['job-2']
    """

    def __new__(
        cls,
        maxsize: int,
        *,
        overflow: str = "block",
        name: str | None = None,
        bus: _Bus | None = None,
    ) -> WorkQueue[_T]:
        """``maxsize`` >= 1 (up to ``2**63 - 1``; memory grows with the items, not the
        bound), or ``0`` or less for ``queue.Queue``'s "no bound": a bound of ``2**31``
        items at which a put is refused with :class:`QueueFull` rather than waiting
        (``"block"`` acts as ``"reject"`` there); ``overflow`` one of ``"block"``,
        ``"reject"``, ``"drop_oldest"``, ``"drop_newest"``.

        ``bus`` (with ``name``) is told when an overflow begins and ends:
        ``queue.<name>.overflow`` with data ``{"state": "begin" | "end", "rejected",
        "dropped", "size"}``. It begins at the first put refused or dropped for lack of
        room (reject, ``drop_newest``, a full ``put_nowait``, a timed-out put, an item
        evicted by ``drop_oldest``) and ends when a get leaves at most half the bound
        queued (``maxsize // 2``: the low-water mark); ``rejected`` and ``dropped`` count
        since the previous end (at ``end``, the episode's totals). A put that waits under
        ``"block"`` is not an overflow. ``publish`` runs with no lock held; what it
        raises goes to ``sys.unraisablehook``. See ``ferrule.events``."""

    def put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``. Block policy: wait up to ``timeout`` for room, then raise
        :class:`QueueFull` (counted in ``rejected``); with ``block`` false, do not wait
        (``put_nowait``; ``timeout`` is checked but not used). The other policies never
        wait: ``reject`` raises :class:`QueueFull`, ``drop_oldest`` evicts,
        ``drop_newest`` returns without adding it (counted in ``rejected``). Raises
        :class:`QueueClosed` after ``close()`` or ``shutdown()``. ``block`` is a bool (or
        an int, as ``queue.Queue`` allows); a float is refused, so ``put(item, 0.5)``
        from before ``block`` existed fails loudly: pass ``timeout=`` by keyword.

        >>> q = WorkQueue(1); q.put("a")
        >>> q.put("b", timeout=0.01)
        Traceback (most recent call last):
        ...
        ferrule.QueueFull: queue is full (put timed out)
        >>> q.put("b", False)
        Traceback (most recent call last):
        ...
        ferrule.QueueFull: queue is full
        """

    def put_nowait(self, item: _T) -> None:
        """Add ``item`` without waiting: :class:`QueueFull` if there is no room, unless
        ``drop_oldest`` makes room or ``drop_newest`` refuses the item silently (counted
        in ``rejected``).

        >>> q = WorkQueue(1, overflow="drop_oldest")
        >>> q.put_nowait(1); q.put_nowait(2); q.get_nowait()
        2
        >>> q = WorkQueue(1, overflow="drop_newest")
        >>> q.put_nowait(1); q.put_nowait(2); q.get_nowait(), q.stats().rejected
        (1, 1)
        """

    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        """Remove and return the oldest item, waiting up to ``timeout`` for one
        (:class:`QueueEmpty` then). Raises :class:`QueueClosed` once closed and drained.
        With ``block`` false it does not wait (``get_nowait``); ``block`` is read as in
        :meth:`put`.

        >>> q = WorkQueue(4); q.put(1)
        >>> q.get(timeout=1.0)
        1
        >>> q.get(False)
        Traceback (most recent call last):
        ...
        ferrule.QueueEmpty: queue is empty
        """

    def get_nowait(self) -> _T:
        """The oldest item without waiting; :class:`QueueEmpty` if there is none.

        >>> WorkQueue(4).get_nowait()
        Traceback (most recent call last):
        ...
        ferrule.QueueEmpty: queue is empty
        """

    def put_many(self, items: Iterable[_T], timeout: float | None = None) -> int:
        """Add the items in order under as few lock holds as possible; returns how many
        entered the queue. It stops early, returning a partial count, when the queue is
        full under ``reject`` or ``drop_newest`` or ``timeout`` passes (the rest count
        as ``rejected``), or when the queue is closed (:class:`QueueClosed` if nothing
        entered). ``items`` is read to the end first, with Python's iteration protocol
        (all or nothing: an exception from it puts nothing); a container that another
        thread changes meanwhile raises what Python raises for it (``RuntimeError`` for
        a dict, set or deque).

        >>> q = WorkQueue(3, overflow="reject")
        >>> q.put_many(range(5))
        3
        >>> WorkQueue(2, overflow="drop_newest").put_many("abc")
        2
        """

    def get_many(self, max_items: int, timeout: float | None = None) -> list[_T]:
        """Up to ``max_items`` (>= 1) of the oldest items, waiting up to ``timeout`` for
        the first: ``[]`` on timeout; :class:`QueueClosed` once closed and drained.

        >>> q = WorkQueue(10); q.put_many("abc")
        3
        >>> q.get_many(2), q.get_many(5, timeout=0)
        (['a', 'b'], ['c'])
        """

    def put_async(self, item: _T) -> Coroutine[Any, Any, None]:
        """Coroutine: ``put`` for asyncio. Waits on the running loop (no thread) while a
        block-policy queue is full; other policies never wait (``drop_newest`` returns
        without adding the item). Cancelling it puts nothing.

        >>> import asyncio
        >>> q = WorkQueue(1)
        >>> asyncio.run(q.put_async(1))
        >>> q.get_nowait()
        1
        """

    def get_async(self) -> Coroutine[Any, Any, _T]:
        """Coroutine: ``get`` for asyncio. Waits on the running loop (no thread); any
        thread's ``put`` wakes it. Cancelling it never loses an item.

        >>> import asyncio
        >>> q = WorkQueue(1); q.put(7)
        >>> asyncio.run(q.get_async())
        7
        """

    def _put_or_wait(self, item: _T, waker: Callable[[], object] | None) -> bool:
        """Internal (asyncio glue): put (True, also when ``drop_newest`` refused it), or
        register ``waker`` and return False."""

    def _get_or_wait(self, waker: Callable[[], object] | None, pending: object) -> _T:
        """Internal (asyncio glue): an item, or ``pending`` after registering ``waker``."""

    def _forget_getter(self, waker: Callable[[], object]) -> None:
        """Internal (asyncio glue): a waiting getter gave up."""

    def _forget_putter(self, waker: Callable[[], object]) -> None:
        """Internal (asyncio glue): a waiting putter gave up."""

    def _join_or_wait(self, waker: Callable[[], object] | None) -> bool:
        """Internal (asyncio glue): True if nothing is unfinished, else register
        ``waker`` and return False."""

    def _forget_joiner(self, waker: Callable[[], object]) -> None:
        """Internal (asyncio glue): a waiting joiner gave up."""

    def close(self) -> None:
        """Close the queue (idempotent) and wake every waiter: puts raise
        :class:`QueueClosed` from now on; gets drain what is left, then raise it."""

    def shutdown(self, immediate: bool = False) -> None:
        """``queue.Queue.shutdown``: ``close()``, and with ``immediate`` the queued items
        are discarded too.

        Puts raise :class:`QueueClosed` (a ``queue.ShutDown`` on Python 3.13+) from now
        on, blocked ones included. Without ``immediate`` getters drain what is left, then
        raise it; with it the items still queued are dropped at once (counted in
        ``stats().dropped``) and count as done, so ``join()`` returns as soon as the items
        already got are marked done. Idempotent; ``shutdown(immediate=True)`` may follow
        ``shutdown()`` or ``close()``.

        >>> q = WorkQueue(4); q.put_many("ab")
        2
        >>> q.shutdown(immediate=True)
        >>> q.unfinished_tasks, q.stats().dropped
        (0, 2)
        >>> q.get()
        Traceback (most recent call last):
        ...
        ferrule.QueueClosed: queue is closed
        """

    @property
    def closed(self) -> bool:
        """True once ``close()`` or ``shutdown()`` was called."""

    def task_done(self) -> None:
        """Mark one item got earlier as processed, as ``queue.Queue.task_done`` does.

        Each item put adds one to ``unfinished_tasks``; each call takes one off and the
        one that reaches zero releases every ``join()``. ``ValueError`` if nothing is
        unfinished. Items that leave without a ``get`` (evicted by ``drop_oldest``,
        discarded by ``shutdown(immediate=True)``) count as done at once. The count is
        kept in the critical section the put already takes.

        >>> q = WorkQueue(4); q.put("job")
        >>> q.get(); q.task_done(); q.join()
        'job'
        >>> q.task_done()
        Traceback (most recent call last):
        ...
        ValueError: task_done() called too many times
        """

    def join(self) -> None:
        """Wait until every item put has been processed (``task_done``), as
        ``queue.Queue.join`` does.

        Returns at once when ``unfinished_tasks`` is 0. The wait releases the GIL and
        Ctrl-C interrupts it within 50 ms; a daemon thread waiting here at interpreter
        exit does not stop the process from exiting.

        >>> import threading
        >>> q: WorkQueue[int] = WorkQueue(0)
        >>> def worker() -> None:
        ...     for item in q:
        ...         q.task_done()
        >>> t = threading.Thread(target=worker); t.start()
        >>> q.put_many(range(100))
        100
        >>> q.join(); q.unfinished_tasks
        0
        >>> q.close(); t.join()
        """

    def join_async(self) -> Coroutine[Any, Any, None]:
        """Coroutine: ``join`` for asyncio. It waits without blocking the event loop.

        No thread per waiter: the ``task_done`` that reaches zero wakes every waiting
        task. Cancelling it changes nothing in the queue.

        >>> import asyncio
        >>> q = WorkQueue(4); q.put(1)
        >>> async def main() -> None:
        ...     q.get(); q.task_done()
        ...     await q.join_async()
        >>> asyncio.run(main())
        """

    @property
    def unfinished_tasks(self) -> int:
        """Items put and not yet marked done with ``task_done`` (nor discarded)."""

    def qsize(self) -> int:
        """Items queued now."""

    def __len__(self) -> int:
        """Items queued now."""

    def empty(self) -> bool: ...
    def full(self) -> bool: ...
    @property
    def maxsize(self) -> int:
        """The bound as given: ``0`` or less is ``queue.Queue``'s "no bound" (see the
        class)."""

    @property
    def overflow(self) -> str:
        """The overflow policy's name."""
    @property
    def name(self) -> str | None:
        """The name given (the topics' middle segment), or None."""

    def stats(self) -> QueueStats:
        """Counters; see :class:`QueueStats`."""

    def __iter__(self) -> WorkQueue[_T]:
        """Iterate by blocking ``get()`` until the queue is closed and drained."""

    def __next__(self) -> _T: ...
    def __aiter__(self) -> WorkQueue[_T]:
        """``async for item in queue``: each item as ``await get_async()`` gives it,
        waiting on the running loop (no thread); the loop ends once the queue is closed
        and drained. Cancelling a task waiting in it never loses an item.

        >>> import asyncio
        >>> q: WorkQueue[int] = WorkQueue(8)
        >>> q.put_many([1, 2, 3])
        3
        >>> q.close()
        >>> async def total() -> int:
        ...     return sum([item async for item in q])
        >>> asyncio.run(total())
        6
        """

    def __anext__(self) -> Coroutine[Any, Any, _T]:
        """Coroutine: the next item, or ``StopAsyncIteration`` once closed and drained."""

    def __class_getitem__(cls, item: Any) -> GenericAlias:
        """``WorkQueue[int]`` for annotations."""

@final
class TaskPoolStats:
    """Counters of a ``TaskPool``, read from atomics:
    ``started == completed + failed + active``. ``submitted`` counts accepted submits,
    ``rejected`` those refused with :class:`QueueFull`, ``cancelled`` queued tasks
    cancelled before they started, ``queued`` tasks not yet taken by a worker (at most
    ``max_workers + max_queue`` with ``active``: at most ``max_queue`` beyond the idle
    workers). Once the pool is idle, ``submitted == completed + failed + cancelled``
    exactly, also after concurrent submitters on free-threaded builds.

    >>> from ferrule import TaskPool
    >>> with TaskPool(2) as pool:
    ...     pool.submit(pow, 2, 10).result()
    1024
    >>> s = pool.stats()
    >>> (s.submitted, s.completed, s.failed, s.active, s.queued)
    (1, 1, 0, 0, 0)
    """

    @property
    def submitted(self) -> int: ...
    @property
    def started(self) -> int: ...
    @property
    def completed(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def cancelled(self) -> int: ...
    @property
    def active(self) -> int:
        """Tasks running now."""
    @property
    def queued(self) -> int: ...

@final
class TaskCounters:
    """Internal: the lock-free counters and the admission rule of a ``TaskPool``
    (atomics): at most ``limit`` tasks outstanding (admitted, not yet finished,
    cancelled or withdrawn).

    >>> c = TaskCounters(2)
    >>> c.admit(0), c.admit(0), c.admit(0)
    (0, 0, 1)
    >>> c.start(); c.finish(True)
    >>> c.admit(0), c.outstanding, c.snapshot(0).completed
    (0, 2, 1)
    """

    def __new__(
        cls,
        limit: int | None = None,
        *,
        name: str | None = None,
        bus: _Bus | None = None,
        low_water: int | None = None,
    ) -> TaskCounters:
        """``limit`` >= 1 (up to ``2**63 - 1``, the default). With ``bus`` (and
        ``name``), ``taskpool.<name>.saturated`` begins when an admission finds no room
        and ends when a task's end leaves at most ``low_water`` outstanding (default
        ``limit // 2``)."""
    def _view(self) -> TaskCounters:
        """The same counters, referring to the events (the bus) only weakly: for the
        pool's worker threads and finalizer (see the module documentation)."""
    def admit(self, timeout: float | None = None) -> int:
        """Admit a task if fewer than ``limit`` are outstanding, waiting up to
        ``timeout`` seconds for room (``None``: no limit; GIL released, interruptible):
        0 admitted (counted as submitted), 1 no room, 2 closed. A refusal counts nothing."""
    def reject(self) -> None:
        """A submit was refused for lack of room."""
    def withdraw(self) -> None:
        """The admitted task was not queued after all (its room is given back)."""
    def start(self) -> None: ...
    def finish(self, ok: bool) -> None: ...
    def cancel(self) -> None:
        """A queued task was cancelled before it started."""
    def close(self) -> None:
        """Wake every waiting ``admit`` (it returns 2) and make later waits return at once."""
    @property
    def closed(self) -> bool: ...
    @property
    def limit(self) -> int: ...
    @property
    def waiting(self) -> int:
        """Submitters waiting for room now."""
    @property
    def outstanding(self) -> int:
        """Tasks admitted and not yet finished, cancelled or withdrawn (queued, in
        transit, running): exact, at most ``limit``."""
    def snapshot(self, queued: int) -> TaskPoolStats: ...

def _run_worker(queue: WorkQueue[Any], counters: TaskCounters) -> None:
    """Internal: a ``TaskPool`` worker loop. Runs ``(future, fn, args, kwargs)`` tasks from
    ``queue`` until it is closed and drained; a task's exception goes on its future.

    >>> q = WorkQueue(4)
    >>> q.close()
    >>> _run_worker(q, TaskCounters())
    """

# RateLimiter
# ---------------------------------------------------------------------------------------

# Any hashable object (exact None, str, int, bytes and tuples of them are the fast path).
_Key = Hashable

@final
class Decision:
    """The outcome of :meth:`RateLimiter.check`. Immutable.

    >>> clock = ManualClock()
    >>> rl = RateLimiter(10, clock=clock)
    >>> d = rl.check("user:1", cost=4)
    >>> d.allowed, d.remaining, d.retry_after, d.reset_after
    (True, 6, 0.0, 0.4)
    """

    def __new__(
        cls, allowed: bool, remaining: int, retry_after: float, reset_after: float
    ) -> Decision:
        """Build a decision (``ferrule.redis.RedisRateLimiter`` returns these too).
        ``remaining`` is an int >= 0 and the waits finite numbers of seconds >= 0; anything
        else raises TypeError/ValueError naming the field.

        >>> Decision(True, 3, 0.0, 0.7)
        Decision(allowed=True, remaining=3, retry_after=0.0, reset_after=0.7)
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
class LimiterStats:
    """What a :class:`RateLimiter` has decided, from :meth:`RateLimiter.stats`. Immutable.

    ``allowed`` and ``denied`` count decisions since the limiter was made and only ever
    grow: one per ``try_acquire`` and ``check``, and one per ``acquire``,
    ``acquire_async`` or ``limit`` entry (its outcome: granted, or given up at the
    timeout), however long it waited. ``keys`` is how many keys are tracked now.

    >>> rl = RateLimiter(1, clock=ManualClock())
    >>> rl.try_acquire("a"), rl.try_acquire("a"), rl.try_acquire("b")
    (True, False, True)
    >>> rl.stats()
    LimiterStats(allowed=2, denied=1, keys=2)
    """

    @property
    def allowed(self) -> int:
        """Decisions that granted the tokens."""
    @property
    def denied(self) -> int:
        """Decisions that refused them."""
    @property
    def keys(self) -> int:
        """Keys tracked now (``len(limiter)``)."""

@final
class RateLimiter:
    """A keyed token-bucket rate limiter: capacity ``burst``, refilled at ``rate`` tokens
    per ``per`` seconds, one bucket per key; or several such limits on every key, all of
    which must allow a request.

    Implemented as GCRA: each key's whole state is one atomic word (its theoretical
    arrival time in integer nanoseconds) updated by a compare-and-swap, so no lock is taken
    on the check path and a check-then-increment race cannot happen. For any set of
    concurrent callers, tokens granted on one key in any interval of length t never exceed
    ``burst + rate * t / per``, and nothing is refused while the tokens are there. An
    emission interval (``per / rate``) that is not a whole number of nanoseconds rounds up.

    **Keys** are any hashable object, with dict semantics: keys that are equal (and hash
    alike) share one bucket, so ``1``, ``1.0``, ``True`` and ``Decimal(1)`` are one key, and
    ``None`` is the default key. An exception raised by a key's ``__hash__`` or ``__eq__``
    propagates and consumes nothing; an unhashable key raises TypeError. Exact ``None``,
    ``str``, ``int``, ``bytes`` (and ``bool``, floats with an integral value, and exact
    tuples of these) take the lock-free fast path: copied into Rust, compared by value, no
    Python object kept. Any other key (a UUID, an enum member, a float with a fraction, a
    subclass, a user class, a tuple holding one) is kept as the object itself and compared
    with ``==`` outside every internal lock, so a key's ``__eq__`` may even call back into
    the limiter. As in a dict, a key must not change its hash while it is in use: one that
    does is a new key each time. A lookup that keeps racing with insertions of keys with
    its own hash (an ``__eq__`` that adds keys to the limiter) gives up after 100 attempts
    with RuntimeError.

    A key whose bucket is full again carries no state and is dropped automatically, a few
    at a time on writes (after it has been full for ``max(burst * per / rate, 1 s)``), so
    memory tracks the active keys, kept objects included; :meth:`sweep` drops them all now.
    The limiter takes part in garbage collection, so a key that refers back to its limiter
    does not keep either alive.

    **Time** is integer nanoseconds since the limiter was made, on its clock. Nothing
    overflows anywhere in a clock's range (up to 2**62 ns, about 146 years; every window
    ``burst * per / rate`` is at most that too, or the constructor refuses it): decisions
    stay exact up to a ManualClock's largest reading. A clock that stops there (or any
    frozen ManualClock) refills nothing more, and :meth:`acquire` then fails at once.

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

    **Several limits** on every key (``limits=[(rate, per[, burst]), ...]``, or a spec
    such as ``"10/second; 1000/hour"`` through :meth:`parse`) must all allow a request:
    a granted one takes ``cost`` from every limit, a refused one from none, and no limit
    ever admits more than it would alone, under any concurrency. A decision's
    ``remaining`` is the fewest tokens any limit has, ``retry_after`` the wait until every
    limit allows ``cost``, ``reset_after`` the longest until all are full; ``cost`` may be
    at most the smallest burst. A key is idle (and reclaimed) once every limit is full.
    With one limit each key is one atomic word and a decision is lock-free; with several,
    each key keeps one word per limit behind a lock of its own, held only for the
    arithmetic of one decision (keys never contend with each other).

    >>> rl = RateLimiter.parse("2/second; 3 per 10 seconds", clock=clock)
    >>> [rl.try_acquire("k") for _ in range(3)]       # the 2/s limit refuses the third
    [True, True, False]
    >>> clock.advance(1.0)
    1.1
    >>> rl.try_acquire("k"), rl.try_acquire("k")      # the 3 per 10 s limit refuses
    (True, False)
    """

    def __new__(
        cls,
        rate: float | None = None,
        per: float = 1.0,
        *,
        burst: int | None = None,
        limits: Iterable[tuple[float, float] | tuple[float, float, int | None]] | None = None,
        clock: ManualClock | None = None,
        name: str | None = None,
        bus: _Bus | None = None,
        event_interval: float = 1.0,
        deny_threshold: int = 1,
    ) -> RateLimiter:
        """``rate`` > 0 tokens per ``per`` > 0 seconds; ``burst`` >= 1 (default
        ``max(1, ceil(rate))``); ``clock`` a :class:`ManualClock` or None (monotonic).
        Bad values raise TypeError/ValueError naming the argument (OverflowError for an
        int too large for a float); a window ``burst * per / rate`` beyond 2**62 ns (about
        146 years) is refused with ValueError.

        Or ``limits``: 1 to 16 ``(rate, per)`` or ``(rate, per, burst)`` tuples (a pair's
        burst is the default, as above), checked by the same rules, a bad one named by its
        position (``limits[1]: rate must be > 0``). Give ``rate`` (with ``per`` and
        ``burst``) or ``limits``: both, or neither, is a TypeError. One limit in
        ``limits`` makes the same limiter as ``rate``.

        ``bus`` (a :class:`SignalBus`, or anything with ``publish(type, data)``; ``name``
        is required with it) is told of denials, aggregated: a refused ``try_acquire`` or
        ``check``, and an ``acquire`` or ``acquire_async`` that gives up, count one each
        (their waits count nothing). A decision after ``event_interval`` seconds (by
        ``clock``; read once per 64 decisions) since the last window closed closes the
        next one and, if it
        counted ``deny_threshold`` (>= 1) denials or more, publishes
        ``ratelimit.<name>.denied`` with data ``{"denied": n, "keys": [...],
        "interval"}``: ``keys`` holds up to 8 distinct ``repr``s (cut to 100 characters)
        of the window's first denied keys, so no key object is kept. ``publish`` runs with
        no lock held; what it raises goes to ``sys.unraisablehook``. See
        ``ferrule.events``.

        >>> RateLimiter(1, per=60.0, burst=5)   # 5 at once, then one a minute
        RateLimiter(rate=1.0, per=60.0, burst=5)
        >>> RateLimiter(limits=[(10, 1.0), (100, 60.0, 20)])
        RateLimiter(limits=[(10.0, 1.0, 10), (100.0, 60.0, 20)])
        """

    @classmethod
    def parse(
        cls,
        spec: str,
        *,
        clock: ManualClock | None = None,
        name: str | None = None,
        bus: _Bus | None = None,
        event_interval: float = 1.0,
        deny_threshold: int = 1,
    ) -> RateLimiter:
        """A limiter from a spec in the ``limits`` library's notation: one or more limits
        separated by ``;`` or ``,``, each ``"<amount>/<unit>"`` or ``"<amount> per
        <unit>"`` with an optional multiplier (``"100/5 minutes"``), unit second, minute,
        hour or day.

        Units may be plural and in any case, whitespace around the parts is ignored; the
        amount and multiplier are whole numbers >= 1. Each limit's burst is its amount.
        The keywords are the constructor's.
        A bad spec raises ValueError naming the item and what is wrong in it; a spec that
        is not a str, TypeError.

        >>> RateLimiter.parse("10/second; 1000 per day")
        RateLimiter(limits=[(10.0, 1.0, 10), (1000.0, 86400.0, 1000)])
        >>> RateLimiter.parse("100/5 minutes")
        RateLimiter(rate=100.0, per=300.0, burst=100)
        >>> RateLimiter.parse("10/fortnight")
        Traceback (most recent call last):
        ValueError: spec item '10/fortnight': unknown unit 'fortnight' (second, minute, hour or day)
        """

    @property
    def rate(self) -> float:
        """The first limit's rate."""
    @property
    def per(self) -> float:
        """The first limit's period."""
    @property
    def burst(self) -> int:
        """The first limit's capacity."""
    @property
    def limits(self) -> tuple[tuple[float, float, int], ...]:
        """Every limit as ``(rate, per, burst)``, in order.

        >>> RateLimiter(5).limits
        ((5.0, 1.0, 5),)
        """
    @property
    def name(self) -> str | None:
        """The name given (the topics' middle segment), or None."""

    def try_acquire(self, key: _Key = None, cost: int = 1) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if they are there; True if taken.
        ``cost`` must be between 1 and ``burst`` (ValueError otherwise; with several
        limits, the smallest burst).

        >>> rl = RateLimiter(2, clock=ManualClock())
        >>> rl.try_acquire(), rl.try_acquire(), rl.try_acquire()
        (True, True, False)
        >>> import uuid
        >>> tenant = uuid.UUID(int=42)
        >>> rl.try_acquire(tenant), rl.try_acquire(("tenant", tenant), cost=2)
        (True, True)
        >>> rl.try_acquire(1), rl.try_acquire(1.0), rl.try_acquire(True)   # one key
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

    def limit(self, key: _Key = None, cost: int = 1, *, timeout: float | None = None) -> Limit:
        """:meth:`acquire` as a ``with`` / ``async with`` block or a decorator: ``with
        rl.limit(key):``. Raises :class:`RateLimited` when the tokens cannot be had within
        ``timeout`` (None: wait as long as needed); bad arguments raise at the call.

        ``with`` waits as :meth:`acquire` does (GIL released), ``async with`` as
        :meth:`acquire_async` (on the event loop). On a ``def`` or ``async def`` function
        every call acquires first; there a callable ``key`` is called with the call's
        arguments (``key(*args, **kwargs)``) to give that call's key. In a ``with`` block
        a callable key is the key itself. Leaving a block gives nothing back: the tokens
        are spent. The object keeps no per-entry state: threads and tasks may share it.

        >>> rl = RateLimiter(10, clock=ManualClock())
        >>> with rl.limit("k", cost=4):
        ...     rl.peek("k")
        6
        >>> @rl.limit(lambda user: ("user", user))
        ... def fetch(user: str) -> str:
        ...     return user
        >>> fetch("ann"), rl.peek(("user", "ann"))
        ('ann', 9)
        """

    def peek(self, key: _Key = None) -> int:
        """Whole tokens available on ``key`` now, taking none.

        >>> RateLimiter(5).peek("never-seen")
        5
        """

    def reset(self, key: _Key = None) -> None:
        """Refill ``key``'s bucket (the key is then reclaimed like any idle key).

        >>> rl = RateLimiter(1, clock=ManualClock())
        >>> rl.try_acquire("k"), rl.try_acquire("k")
        (True, False)
        >>> rl.reset("k")
        >>> rl.try_acquire("k")
        True
        """

    def sweep(self) -> int:
        """Drop every key whose bucket is full again (kept key objects included); returns
        how many. Releases the GIL.

        >>> clock = ManualClock()
        >>> rl = RateLimiter(10, clock=clock)
        >>> rl.try_acquire("a"), rl.try_acquire(object())
        (True, True)
        >>> clock.advance(1.0)
        1.0
        >>> rl.sweep(), len(rl)
        (2, 0)
        """

    def stats(self) -> LimiterStats:
        """Decisions made so far and keys tracked now; see :class:`LimiterStats`. The
        counters are striped by thread, so threads deciding at once do not share a counter's
        cache line."""

    def _decide(self, key: _Key = None, cost: int = 1) -> Decision:
        """``check`` for the waits of ``acquire_async`` and ``Limit``: counted neither in
        ``stats()`` nor as a denial event (their outcome is counted once, by ``_count``)."""
    def _count(self, key: _Key, allowed: bool) -> None:
        """Counts the outcome of a waiting ``acquire_async`` (in ``stats()`` and the
        events)."""
    def __len__(self) -> int:
        """The number of keys tracked (one per class of equal keys)."""

# ---------------------------------------------------------------------------------------
# Resilience
# ---------------------------------------------------------------------------------------

class _Bus(Protocol):
    """Anything with ``publish(signal_type, data)``, e.g. a :class:`SignalBus`."""

    def publish(self, signal_type: str, data: Any, /) -> object: ...

@final
class BreakerStats:
    """Counters of a :class:`CircuitBreaker`, read without stopping it.

    ``calls`` counts admitted calls (the function ran); each ends as one of
    ``successes``, ``failures`` (an ``expected`` exception) or ``ignored`` (any other
    exception), so ``calls == successes + failures + ignored`` once none is in flight.
    ``rejections`` counts calls refused with :class:`CircuitOpen`. A call that returned
    after ``slow_call`` seconds or more counts in ``failures`` and in ``slow_calls``, not
    in ``successes``. ``window_calls`` and ``window_failures`` are the failure-rate
    window's contents while closed (0 otherwise, and under the consecutive rule).

    >>> cb = CircuitBreaker(failure_threshold=1)
    >>> cb.call(len, "abc")
    3
    >>> s = cb.stats()
    >>> (s.state, s.calls, s.successes, s.failures, s.rejections)
    ('closed', 1, 1, 0, 0)
    """

    @property
    def state(self) -> _BreakerState: ...
    @property
    def calls(self) -> int: ...
    @property
    def successes(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def slow_calls(self) -> int:
        """Of ``failures``: calls that returned but took ``slow_call`` or longer."""
    @property
    def ignored(self) -> int: ...
    @property
    def rejections(self) -> int: ...
    @property
    def state_changes(self) -> int: ...
    @property
    def consecutive_failures(self) -> int:
        """The current run of expected failures while closed (0 otherwise)."""
    @property
    def window_calls(self) -> int:
        """Calls in the failure-rate window while closed (0 otherwise)."""
    @property
    def window_failures(self) -> int:
        """Failures in the failure-rate window while closed (0 otherwise)."""

@final
class CircuitBreaker:
    """A circuit breaker: stops calling a dependency that keeps failing, and probes it
    again after a while.

    - closed: calls go through. By default ``failure_threshold`` (5) consecutive
      failures (exceptions that are instances of ``expected``) open the breaker; a
      success resets the run. With ``failure_rate`` instead, the breaker opens on a
      failure that leaves the window with at least ``min_calls`` (20) calls of which a
      fraction ``failures / calls >= failure_rate`` failed. The window is the last
      ``window`` seconds (60.0; 20 buckets, so it moves in steps of ``window / 20``) or
      the last ``window_calls`` calls; it holds only the current closed period's calls.
      Giving ``failure_threshold`` with ``failure_rate``, ``window`` with
      ``window_calls``, or ``min_calls``/``window``/``window_calls`` without
      ``failure_rate`` is a ValueError.
    - open: calls raise :class:`CircuitOpen` (with ``retry_after``) without running.
      Opened at time t, it stays open while ``now < t + reset_timeout``.
    - half_open: then up to ``half_open_max_calls`` probe calls run at once (others are
      rejected); a probe that succeeds frees its slot, and the ``success_threshold``-th
      success (1) closes the breaker; the first probe to fail re-opens it.
    - forced_open / forced_closed: after :meth:`force_open` / :meth:`force_closed`, until
      :meth:`reset` or the other one. Forced open rejects every call (``retry_after`` is
      ``math.inf``); forced closed runs every call and no outcome changes the state.

    With ``slow_call`` (seconds), a call that returns ``slow_call`` or more after it was
    admitted counts as a failure (in ``stats()``: in ``failures`` and ``slow_calls``).

    Exceptions outside ``expected`` propagate and count neither way (a probe that raises
    one frees its slot). Only the outcome of a call admitted in the breaker's current
    period counts: a slow call that fails after the breaker opened does not re-open it.

    The state is one atomic word in Rust, changed by compare-and-swap with no lock at all
    (model-checked with loom); the protected call runs in the caller's thread with no
    lock held, so calls through one breaker run in parallel. On each change of
    state, in the thread that made it and after it was made: ``on_state_change(old,
    new)``, then ``bus.publish(f"breaker.{name}.state", {"name", "state",
    "previous"})``. An exception from either goes to ``sys.unraisablehook`` (every
    exception, ``KeyboardInterrupt`` included, as Python does for weakref callbacks and
    ``__del__``): a callback never leaves the breaker's bookkeeping half done.

    The breaker takes part in garbage collection: ``self.cb =
    CircuitBreaker(on_state_change=self.on_change)`` does not keep ``self`` alive, nor
    does a ``bus`` or an ``expected`` class that refers back to the breaker's owner.

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
        clock: ManualClock | None = None,
        name: str | None = None,
        on_state_change: Callable[[str, str], object] | None = None,
        bus: _Bus | None = None,
    ) -> CircuitBreaker:
        """``failure_threshold`` (5 unless ``failure_rate`` is given), ``min_calls`` (20
        with ``failure_rate``) and ``half_open_max_calls`` >= 1 (at most 2**30 - 1);
        ``failure_rate`` in (0, 1]; ``window`` > 0 seconds (60.0 with ``failure_rate``
        unless ``window_calls`` is given); ``window_calls`` from 1 to 10000 and at least
        ``min_calls``; ``slow_call`` > 0 seconds; ``success_threshold`` >= 1 (at most
        2**(30 - half_open_max_calls.bit_length())); ``reset_timeout`` >= 0 seconds
        (at most 4e9); ``expected`` an exception class or a
        non-empty tuple of them; ``name`` is required with ``bus`` (any object with
        ``publish(type, data)``, e.g. a ``SignalBus``). A number that cannot be
        represented (an int beyond 64 bits) raises OverflowError; one that is
        representable but out of bounds, ValueError; both name the argument."""

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
    def state(self) -> _BreakerState:
        """The state a call would meet now. ``"closed"``, ``"open"``, ``"half_open"``,
        ``"forced_open"`` or ``"forced_closed"``; an open breaker whose timeout has
        passed becomes half-open when it is next called or its state is read."""
    @property
    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through; 0.0 when not open,
        infinity when forced open."""
    @property
    def name(self) -> str | None: ...
    @property
    def failure_threshold(self) -> int | None:
        """Consecutive failures that open the breaker; None under the failure-rate
        rule."""
    @property
    def failure_rate(self) -> float | None:
        """The failure rate that opens the breaker; None under the consecutive rule."""
    @property
    def min_calls(self) -> int | None:
        """Calls the window must hold before the rate can open the breaker; None under
        the consecutive rule."""
    @property
    def window(self) -> float | None:
        """Seconds of a time window; None otherwise."""
    @property
    def window_calls(self) -> int | None:
        """Calls of a count window; None otherwise."""
    @property
    def slow_call(self) -> float | None:
        """Seconds from which a call that returns counts as a failure; None when off."""
    @property
    def success_threshold(self) -> int:
        """Probe successes in half-open that close the breaker."""
    @property
    def reset_timeout(self) -> float: ...
    @property
    def half_open_max_calls(self) -> int: ...
    @property
    def expected(self) -> tuple[type[BaseException], ...]: ...
    def reset(self) -> None:
        """Close the breaker (from any state, the forced ones too) and clear its run of
        failures and its window; calls in flight from before the reset no longer
        count."""

    def force_open(self) -> None:
        """Hold the breaker open until ``reset()`` or ``force_closed()``: every call
        raises :class:`CircuitOpen` (with ``retry_after`` infinity).

        >>> cb = CircuitBreaker()
        >>> cb.force_open()
        >>> cb.state, cb.retry_after
        ('forced_open', inf)
        """

    def force_closed(self) -> None:
        """Hold the breaker closed until ``reset()`` or ``force_open()``: every call
        goes through and no outcome changes the state.

        >>> cb = CircuitBreaker(failure_threshold=1)
        >>> cb.force_closed()
        >>> cb.call(int, "x")
        Traceback (most recent call last):
        ...
        ValueError: invalid literal for int() with base 10: 'x'
        >>> cb.state
        'forced_closed'
        >>> cb.reset()
        >>> cb.state
        'closed'
        """

    def stats(self) -> BreakerStats:
        """Counters; see :class:`BreakerStats`."""

# ---------------------------------------------------------------------------------------
# SignalBus
# ---------------------------------------------------------------------------------------

@final
class Signal:
    """One published signal, shared (frozen) by every subscription it reached. It
    takes part in garbage collection (data that refers back to it does not leak).

    >>> bus = SignalBus()
    >>> sub = bus.subscribe("agent.*.error")
    >>> bus.publish("agent.42.error", {"code": 7})
    1
    >>> sig = sub.get_nowait()
    >>> sig.type, sig.data
    ('agent.42.error', {'code': 7})
    """

    @property
    def type(self) -> str:
        """The signal type it was published under (dot-separated segments), a plain
        ``str`` also when a ``str`` subclass was published."""
    @property
    def data(self) -> Any:
        """What was published with it (``None`` by default)."""
    @property
    def timestamp(self) -> float:
        """Wall-clock seconds (``time.time()``) at publication, for logs. Through a
        :class:`ferrule.redis.RedisBus`, the publisher's clock, in whichever process it
        published."""

@final
class SubscriptionStats:
    """Counters of one :class:`Subscription`; once it is quiet,
    ``accepted == delivered + dropped + queued``.

    ``accepted`` counts signals its mailbox took (what :meth:`SignalBus.publish`
    counts); ``delivered`` those given to the handler or returned by a get; ``dropped``
    those accepted and then lost: evicted by ``drop_oldest``, or, for a handler
    subscription, still queued when it was cancelled (a cancelled pull subscription
    keeps them readable: they stay in ``queued``); ``rejected`` those its full mailbox
    refused: ``reject`` and ``drop_newest`` (which differ only in name here: neither
    raises in ``publish``), or ``block`` when the publisher is the subscription's own
    worker; ``errors`` handler calls that raised.

    >>> bus = SignalBus()
    >>> sub = bus.subscribe("tick", maxsize=2)
    >>> for _ in range(5):
    ...     _ = bus.publish("tick")
    >>> s = sub.stats()
    >>> (s.accepted, s.delivered, s.dropped, s.queued)
    (5, 0, 3, 2)
    >>> newest = bus.subscribe("tock", maxsize=2, overflow="drop_newest")
    >>> [bus.publish("tock") for _ in range(3)]
    [1, 1, 0]
    >>> s = newest.stats()
    >>> (s.accepted, s.dropped, s.rejected, s.queued)
    (2, 0, 1, 2)
    """

    @property
    def accepted(self) -> int: ...
    @property
    def delivered(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def queued(self) -> int:
        """Signals waiting in the mailbox when the snapshot was taken."""

@final
class Subscription:
    """A subscription of a :class:`SignalBus`, made by :meth:`SignalBus.subscribe`.

    It lives until ``cancel()`` (or, for a weakly held bound-method handler, until the
    method's object is collected), whether or not the caller keeps this object: the
    bus holds it, and :meth:`SignalBus.subscriptions` returns this same object.
    ``cancel()`` is idempotent, may be called from any thread (also from inside its own
    handler) and removes the subscription from routing at once: no new signal reaches
    it. Like :meth:`WorkQueue.close`, it leaves what a pull subscription had queued
    readable (``get``, ``get_nowait``, iteration, ``await get_async()``, also for
    asyncio getters already waiting) until drained; then gets raise
    :class:`QueueClosed` and iteration ends. A handler subscription's signals still
    queued are not delivered: they are counted in ``stats().dropped``, and its worker
    thread exits after the handler call in progress, if any, releasing the handler. A
    context manager: ``with`` cancels on exit.

    What keeps what alive: the bus holds its subscriptions; a subscription holds its
    queued signals and its handler (a strong one, or a ``weakref.WeakMethod`` with
    ``weak=True``), never its bus; the worker thread borrows the handler only for each
    call. All of it takes part in garbage collection: a cycle such as bus ->
    subscription -> handler -> object -> bus is collected once nothing else refers to
    it, which cancels the subscription and ends its worker thread.

    >>> bus = SignalBus()
    >>> with bus.subscribe("job.#") as sub:
    ...     _ = bus.publish("job.7.done", "ok")
    ...     sub.get(timeout=1.0).data
    'ok'
    >>> sub.cancelled
    True
    """

    @property
    def pattern(self) -> str:
        """The pattern it was subscribed with."""
    @property
    def active(self) -> bool:
        """True until cancelled."""
    @property
    def cancelled(self) -> bool:
        """True once cancelled."""
    @property
    def maxsize(self) -> int:
        """The mailbox's bound."""
    @property
    def overflow(self) -> str:
        """The mailbox's overflow policy."""
    @property
    def _id(self) -> int:
        """Internal: identifies the subscription within the process."""
    def qsize(self) -> int:
        """Signals waiting in the mailbox now."""
    def stats(self) -> SubscriptionStats:
        """Counters; see :class:`SubscriptionStats`."""
    def cancel(self) -> bool:
        """Stop the subscription; True if this call did it, False if it was already
        cancelled. Signals already queued in a pull subscription stay readable.

        >>> bus = SignalBus(); sub = bus.subscribe("a")
        >>> bus.publish("a", "queued")
        1
        >>> sub.cancel(), sub.cancel(), bus.publish("a", "late")
        (True, False, 0)
        >>> [sig.data for sig in sub]
        ['queued']
        """
    def __enter__(self) -> Subscription: ...
    def __exit__(self, *_exc: object) -> bool:
        """Cancel; exceptions propagate."""
    def get(self, timeout: float | None = None) -> Signal:
        """The oldest queued signal, waiting up to ``timeout`` seconds (``None``: no
        limit) with the GIL released: :class:`QueueEmpty` on timeout,
        :class:`QueueClosed` once cancelled and drained. ``TypeError`` on a handler
        subscription.

        >>> bus = SignalBus(); sub = bus.subscribe("a.*")
        >>> bus.publish("a.b", 1)
        1
        >>> sub.get(timeout=0.5).type
        'a.b'
        """
    def get_nowait(self) -> Signal:
        """The oldest queued signal without waiting; :class:`QueueEmpty` if none,
        :class:`QueueClosed` once cancelled and drained.

        >>> bus = SignalBus()
        >>> bus.subscribe("a").get_nowait()
        Traceback (most recent call last):
        ...
        ferrule.QueueEmpty: no signal queued
        """
    def get_async(self) -> Coroutine[Any, Any, Signal]:
        """Coroutine: ``get`` for asyncio, waiting on the running loop (no thread); a
        publish from any thread wakes it, and so does ``cancel()`` (it then gets what is
        still queued, or :class:`QueueClosed`). Cancelling it never loses a signal.

        >>> import asyncio
        >>> bus = SignalBus(); sub = bus.subscribe("job.*")
        >>> bus.publish("job.done", 42)
        1
        >>> asyncio.run(sub.get_async()).data
        42
        """
    def _get_or_wait(self, waker: Callable[[], object] | None, pending: object) -> Signal:
        """Internal (asyncio glue): a signal, or ``pending`` after registering ``waker``."""
    def _forget_getter(self, waker: Callable[[], object]) -> None:
        """Internal (asyncio glue): a waiting getter gave up."""
    def __iter__(self) -> Subscription:
        """Iterate by blocking ``get()`` until the subscription is cancelled and
        drained."""
    def __next__(self) -> Signal: ...
    def __aiter__(self) -> Subscription:
        """``async for sig in sub``: each signal as ``await get_async()`` gives it,
        waiting on the running loop (no thread); the loop ends once the subscription is
        cancelled and drained. Cancelling a task waiting in it never loses a signal.
        ``TypeError`` on a handler subscription.

        >>> import asyncio
        >>> bus = SignalBus(); sub = bus.subscribe("job.*")
        >>> bus.publish("job.a", 1), bus.publish("job.b", 2), sub.cancel()
        (1, 1, True)
        >>> async def types() -> list[str]:
        ...     return [sig.type async for sig in sub]
        >>> asyncio.run(types())
        ['job.a', 'job.b']
        """

    def __anext__(self) -> Coroutine[Any, Any, Signal]:
        """Coroutine: the next signal, or ``StopAsyncIteration`` once cancelled and
        drained."""

    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class BusStats:
    """What a :class:`SignalBus` has carried, from :meth:`SignalBus.stats`. Immutable;
    the counters only ever grow.

    ``published`` counts ``publish`` calls (with a valid type) and ``unrouted`` those no
    subscription matched; ``delivered`` counts signals a subscription's mailbox took (a
    signal taken by three subscriptions counts three: the sum of ``publish``'s results)
    and ``dropped`` those a matching subscription did not take (a full ``reject`` or
    ``drop_newest`` mailbox, or one cancelled meanwhile). Items a ``drop_oldest`` mailbox
    pushes out later are in that subscription's own ``stats().dropped``.

    >>> bus = SignalBus()
    >>> sub = bus.subscribe("job.*")
    >>> bus.publish("job.done"), bus.publish("other")
    (1, 0)
    >>> bus.stats()
    BusStats(published=2, unrouted=1, delivered=1, dropped=0, subscriptions=1)
    """

    @property
    def published(self) -> int:
        """``publish`` calls with a valid signal type."""
    @property
    def unrouted(self) -> int:
        """Publishes that no subscription matched."""
    @property
    def delivered(self) -> int:
        """Signals taken into a subscription's mailbox (one per subscription)."""
    @property
    def dropped(self) -> int:
        """Signals a matching subscription's mailbox did not take."""
    @property
    def subscriptions(self) -> int:
        """Live subscriptions now."""

@final
class SignalBus:
    """Publish/subscribe with AMQP-style pattern routing and a bounded mailbox per
    subscription.

    Signal types are dot-separated names (``"agent.42.error"``). A pattern segment is
    a literal, ``*`` (exactly one segment) or ``#`` (zero or more segments, anywhere);
    a pattern has at most 256 segments. Routing walks a segment trie in Rust, so
    ``publish`` costs grow with the type's segments and the matching subscriptions,
    not with the number of subscriptions, and stay linear in the type's length for any
    patterns (no backtracking).

    Each subscription has its own mailbox (``maxsize``, ``overflow``): a slow
    subscriber loses its own signals (counted) and never slows the publisher or the
    others, unless it chose ``overflow="block"``. Handlers run on a worker thread owned
    by their subscription, never inside ``publish``; no internal lock is held while
    Python code runs, so a handler may publish, subscribe or cancel on the same bus.

    >>> bus = SignalBus()
    >>> seen = []
    >>> sub = bus.subscribe("agent.#", seen.append, weak=False)
    >>> bus.publish("agent.42.error", {"code": 7})
    1
    >>> sub.cancel()
    True
    """

    def __new__(cls) -> SignalBus: ...
    def subscribe(
        self,
        pattern: str,
        handler: Callable[[Signal], object] | None = None,
        *,
        maxsize: int = 1024,
        overflow: str = "drop_oldest",
        weak: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
        owner: object | None = None,
    ) -> Subscription:
        """Subscribe to the signal types matching ``pattern``.

        With ``handler``, each signal is passed to ``handler(signal)`` on the
        subscription's own worker thread; an exception is counted
        (``stats().errors``) and logged on the ``ferrule.bus`` logger, and the worker
        carries on. Without one, the subscription is a queue (``get`` and friends).

        An ``async def`` handler (also bound, in a ``functools.partial``, or an object's
        async ``__call__``) gets no thread: one task per subscription on an event loop
        awaits it on each signal, in order, one at a time. The loop is ``loop``, or the
        one running in the thread that calls ``subscribe`` (``RuntimeError`` with
        neither). With ``loop`` any handler is called on that loop, and an awaitable it
        returns is awaited, so a plain function returning a coroutine works too. Waiting
        costs no thread and ``publish`` from any thread never blocks the loop; a
        publisher on the loop's own thread is refused, not made to wait, by a full
        ``block`` mailbox. ``cancel()`` ends the task after the call in progress;
        cancelling the task (as the end of ``asyncio.run`` does) or closing the loop
        cancels the subscription, with no pending-task warnings. A thread handler that
        returns an awaitable counts an error (the awaitable is closed unrun).

        ``owner`` gives the subscription a lifetime, as in :meth:`Registry.register`: it
        is cancelled when ``owner`` is collected (any weak-referenceable object), when a
        ``threading.Thread`` owner has finished (checked every 50 ms by one shared
        sweeper thread), or when an ``asyncio.Task``/``Future`` or
        ``concurrent.futures.Future`` owner is done. So a closure handler, which
        ``weak=True`` cannot hold weakly, still goes with the object it serves. The
        watch never keeps the owner alive. ``ValueError`` for an owner already finished
        or done; ``TypeError`` for one that cannot be watched.
        ``overflow`` is the mailbox's policy when ``maxsize`` signals wait:
        ``"drop_oldest"``, ``"drop_newest"``, ``"reject"`` or ``"block"`` (the
        publisher waits for room). With ``weak=True`` a bound-method handler holds its
        object weakly and the subscription cancels itself when the object is
        collected; other handlers are held strongly (by the subscription, which the bus
        holds until it is cancelled; see :class:`Subscription` for what keeps what
        alive).

        ``ValueError`` for an empty pattern or segment, a pattern of more than 256
        segments, ``maxsize < 1`` or an unknown policy; ``TypeError`` for arguments of
        the wrong type, or ``loop`` without a handler.

        >>> import asyncio
        >>> async def main() -> list[object]:
        ...     bus, got, done = SignalBus(), [], asyncio.Event()
        ...     async def on_job(signal: Signal) -> None:
        ...         got.append(signal.data)
        ...         if len(got) == 2:
        ...             done.set()
        ...     bus.subscribe("job.*", on_job)
        ...     bus.publish("job.done", 1)
        ...     bus.publish("job.done", 2)
        ...     await done.wait()
        ...     return got
        >>> asyncio.run(main())
        [1, 2]
        >>> bus = SignalBus()
        >>> bus.subscribe("a..b")
        Traceback (most recent call last):
        ...
        ValueError: pattern "a..b" has an empty segment
        """
    def publish(self, signal_type: str, data: Any = None) -> int:
        """Publish a :class:`Signal`; returns how many subscriptions' mailboxes took it
        (a full mailbox under ``reject`` or ``drop_newest`` does not, nor does a
        cancelled subscription). ``data`` is passed by reference, not copied. Never
        waits, unless a matching subscription chose ``overflow="block"`` and its mailbox
        is full (then it waits for room, GIL released). ``ValueError`` for an empty
        type or segment, or a ``*``/``#`` in it.

        >>> bus = SignalBus()
        >>> bus.publish("nobody.listens")
        0
        """
    def _publish_at(self, signal_type: str, data: Any, timestamp: float) -> int:
        """Internal (``ferrule.redis.RedisBus``): :meth:`publish`, with the
        :class:`Signal` stamped ``timestamp`` (wall-clock seconds, as ``time.time()``)
        instead of now. Routing, counting in :meth:`stats`, backpressure, errors and the
        result are ``publish``'s. ``TypeError`` for a ``timestamp`` that is not an int or
        float (bool refused), ``ValueError`` for NaN, an infinity or a negative one,
        ``OverflowError`` for an int no float can hold; each before anything is routed
        or counted.

        >>> bus = SignalBus()
        >>> sub = bus.subscribe("job.*")
        >>> bus._publish_at("job.done", {"id": 7}, 1700000000.25)
        1
        >>> sub.get_nowait().timestamp
        1700000000.25
        """
    def subscriptions(self) -> list[Subscription]:
        """A snapshot of the live subscriptions (the same objects ``subscribe``
        returned), for inspection."""

    def stats(self) -> BusStats:
        """Counters since the bus was made and the live subscriptions; see
        :class:`BusStats`. Each publishing thread counts in its own stripe, so publishers
        do not share a counter's cache line."""

def _run_subscription(worker: Any) -> None:
    """Internal: a handler subscription's worker loop, given the native worker object
    ``SignalBus.subscribe`` hands to ``ferrule._bus._start``; returns once the
    subscription is cancelled."""

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
    The timer keeps an exact ``str`` copy of the name (``op``).

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
class OpTotals:
    """Lifetime figures of one operation of a :class:`Metrics`, since it was first
    recorded (or reset); ``sum`` in seconds.

    ``count`` calls, ``errors`` of them failed, ``sum`` of their durations; ``buckets``
    holds cumulative counts, one per bound of :attr:`Metrics.buckets` (calls that took at
    most that long: Prometheus ``le``) and a last one for ``+Inf``, equal to ``count``.
    The figures only grow until :meth:`Metrics.reset` (or eviction beyond ``max_ops``)
    drops the operation; an unknown operation gives all zeros. Each read is
    self-consistent: the cumulative counts never decrease and the last is ``count``, also
    while other threads record (the count is derived from the same per-bucket loads).

    >>> m = Metrics(buckets=(0.01, 0.1))
    >>> for ms in (5, 10, 50, 200):
    ...     m.record("db", ms / 1000)
    >>> t = m.totals("db")
    >>> t.count, t.errors, round(t.sum, 3), t.buckets
    (4, 0, 0.265, (2, 3, 4))
    """

    @property
    def count(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def sum(self) -> float: ...
    @property
    def buckets(self) -> tuple[int, ...]:
        """Cumulative counts: one per bound of ``Metrics.buckets``, then ``+Inf`` (==
        ``count``)."""

@final
class Metrics:
    """Latency and outcome per operation name over a sliding window, in fixed memory per
    operation, and lifetime totals in a fixed histogram.

    Each operation has a ring of 10 time slots of ``window / 10`` seconds; each slot holds
    a log-scale latency histogram (32 buckets per power of two from 16 ns to ~275 s, so
    quantiles are within 2% of exact), the error count, the sum and the maximum, all
    updated with atomics: ``record`` takes no lock and allocates nothing for a known
    operation. A snapshot at time ``now`` covers the slots ``floor(now / L) - 9 ..=
    floor(now / L)`` (``L = window / 10``): every recording younger than ``window - L``
    is in it, none older than ``window``. ``clock`` (a :class:`ManualClock`) drives the
    slots and the durations measured by :meth:`time`.

    Beside the window, each operation keeps lifetime totals (:meth:`totals`): count,
    errors, sum and a count per bucket of ``buckets`` (upper bounds in seconds, ``+Inf``
    implied; default 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1, 2.5, 5, 10), for a Prometheus histogram whose ``_count`` and
    ``_sum`` never go down. ``record`` adds to them with one or two more atomic adds.

    Memory: the ring (~75 KiB) is dropped once the operation has no recording in the
    window; its totals (``len(buckets) + 3`` words) stay, so an idle operation keeps its
    series. At most ``max_ops`` operations are kept: when a new name makes more, the
    longest-idle ones (oldest last recording, at the resolution of a slot; never the new
    name) are dropped, totals and all, until ``max_ops - max_ops // 8`` remain (briefly
    more while several threads add new names at once). A dropped operation, like a reset
    one, starts again from zero: Prometheus reads that as a counter reset.

    >>> clock = ManualClock()
    >>> m = Metrics(window=60.0, clock=clock)
    >>> m.record("db.query", 0.012)
    >>> m.record("db.query", 0.030, ok=False)
    >>> s = m.snapshot("db.query")
    >>> s.count, s.errors, s.rate
    (2, 1, 0.03333333333333333)
    >>> clock.advance(60.0)
    60.0
    >>> m.snapshot("db.query").count, m.totals("db.query").count
    (0, 2)
    """

    def __new__(
        cls,
        *,
        window: float = 60.0,
        clock: ManualClock | None = None,
        buckets: Sequence[float] | None = None,
        max_ops: int = 10_000,
    ) -> Metrics:
        """``window`` seconds (>= 0.001); ``clock`` None means monotonic time;
        ``buckets`` None (the default bounds) or 1 to 64 finite, positive, strictly
        increasing upper bounds in seconds, ``+Inf`` implied and not given (else
        TypeError or ValueError naming ``buckets``); ``max_ops`` >= 1."""

    @property
    def window(self) -> float:
        """The window in seconds."""

    @property
    def buckets(self) -> tuple[float, ...]:
        """The upper bounds of the lifetime histogram in seconds, without ``+Inf``.

        >>> Metrics(buckets=[0.1, 1]).buckets
        (0.1, 1.0)
        """

    @property
    def max_ops(self) -> int:
        """Most operations kept (see the class docs)."""

    def record(self, op: str, seconds: float, ok: bool = True) -> None:
        """Record one call of ``op`` that took ``seconds`` (>= 0, finite, at most 4e9:
        else ValueError; an int too large for a float: OverflowError); ``ok=False`` counts
        it as an error. ``op`` must be a str (else TypeError). Durations above 10**6 s are
        recorded as 10**6 s. A duration equal to a bound of ``buckets`` counts in that
        bound's bucket (compared at nanosecond resolution)."""

    def time(self, op: str) -> Timer:
        """A :class:`Timer` for ``op``: ``with m.time("op"): ...`` or ``@m.time("op")``.
        A name that is not valid UTF-8 (a lone surrogate) raises UnicodeEncodeError here.

        >>> import asyncio
        >>> m = Metrics()
        >>> @m.time("work")
        ... async def work() -> str:
        ...     return "done"
        >>> asyncio.run(work()), m.snapshot("work").count
        ('done', 1)
        """

    def snapshot(self, op: str) -> OpStats:
        """Statistics of ``op`` over the window (all zeros if unknown or reset).

        >>> Metrics().snapshot("never").count
        0
        """

    def totals(self, op: str) -> OpTotals:
        """Lifetime figures of ``op`` since it was first recorded or reset (all zeros if
        unknown, reset or evicted).

        >>> m = Metrics(buckets=[0.1])
        >>> m.record("a", 0.1); m.record("a", 0.2, ok=False)
        >>> m.totals("a")
        OpTotals(count=2, errors=1, sum=0.3, buckets=(1, 2))
        """

    def ops(self) -> list[str]:
        """Sorted names of every operation with totals (recorded since its last reset and
        not evicted), idle in the window or not.

        >>> m = Metrics()
        >>> m.record("b", 0.1); m.record("a", 0.1)
        >>> m.ops()
        ['a', 'b']
        """

    def reset(self, op: str | None = None) -> None:
        """Forget ``op`` (its recordings and totals vanish), or every operation when None.
        Its totals start again from zero: Prometheus reads that as a counter reset.

        >>> m = Metrics()
        >>> m.record("a", 0.1)
        >>> m.reset("a")
        >>> m.snapshot("a").count, m.totals("a").count
        (0, 0)
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
class ErrorStoreStats:
    """What an :class:`ErrorStore` has seen, from :meth:`ErrorStore.stats`. Immutable.

    ``recorded`` and ``evicted_agents`` only ever grow: records stored, and agents
    dropped (with their records) to make room for another under ``max_agents``. ``agents``
    is how many agents hold records now (one whose records all expired may still count
    until a call touches it or a later record sweeps its shard).

    >>> s = ErrorStore(max_agents=1)
    >>> s.record("a", ValueError()), s.record("b", ValueError())
    (True, True)
    >>> s.stats()
    ErrorStoreStats(recorded=2, agents=1, evicted_agents=1)
    """

    @property
    def recorded(self) -> int:
        """Records stored since the store was made."""
    @property
    def agents(self) -> int:
        """Agents holding records now."""
    @property
    def evicted_agents(self) -> int:
        """Agents evicted to make room under ``max_agents``."""

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
    The store (and each :class:`ErrorRecord`) takes part in garbage collection: an
    error whose traceback refers back to the store's owner does not keep it alive.

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
        name: str | None = None,
        bus: _Bus | None = None,
    ) -> ErrorStore:
        """Bounds: ``max_per_agent`` and ``max_agents`` >= 1, ``max_age`` > 0 seconds.

        ``bus`` (with ``name``) is told of each agent evicted to make room at
        ``max_agents`` (not of agents whose errors aged out): ``errors.<name>.agent_evicted``
        with data ``{"agent_id": ...}``, published after the record, with no lock held;
        what ``publish`` raises goes to ``sys.unraisablehook``. See ``ferrule.events``."""

    @property
    def max_per_agent(self) -> int: ...
    @property
    def max_age(self) -> float: ...
    @property
    def max_agents(self) -> int: ...
    @property
    def name(self) -> str | None:
        """The name given (the topics' middle segment), or None."""
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

    def stats(self) -> ErrorStoreStats:
        """Counters since the store was made and the agents held now; see
        :class:`ErrorStoreStats`."""

# ---------------------------------------------------------------------------------------
# Resource limits and pools
# ---------------------------------------------------------------------------------------

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
    one atomic counter changed by compare-and-swap. ``0 <= used <= limit`` holds at every
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

    The manager and its leases take part in garbage collection: a ``bus`` that refers
    back to the manager's owner (``ResourceManager(limits, bus=self)``) does not keep it
    alive, also while the owner holds leases.

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
        ``0 < alert_threshold <= severe_threshold <= 1``; ``clock`` governs ttls. An int
        beyond 64 bits (a limit, an amount) or a number too large for a float raises
        OverflowError naming the argument; other values out of bounds, ValueError."""

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

        >>> import asyncio
        >>> rm = ResourceManager({"workers": 2})
        >>> async def job() -> int:
        ...     with await rm.acquire_async("workers", timeout=5.0):
        ...         return rm.usage()["workers"].used
        >>> asyncio.run(job()), rm.usage()["workers"].used
        (1, 0)
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
    # Private: used by ferrule._budget (asyncio).
    def _add_waker(self, name: str, callback: Callable[[], object]) -> int:
        """``callback`` must be callable (else TypeError)."""
    def _remove_waker(self, name: str, token: int) -> None: ...

@final
class PoolStats:
    """Counters of a :class:`Pool`, read from atomics once ``stats()`` has closed the idle
    items past ``max_idle``.

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
    - An exception from an item's ``close()`` goes to ``sys.unraisablehook`` (every
      exception, ``KeyboardInterrupt`` included: closing one item never stops the others).
    - The pool takes part in garbage collection (its callables, idle items and waiters'
      wake-ups are visited): ``self.pool = Pool(self.connect, validate=self.check)``
      does not keep ``self`` alive. A pool collected that way drops its idle items
      without calling their ``close()``; a ``PoolCheckout`` collected while entered
      returns its item to the pool.

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
        name: str | None = None,
        bus: _Bus | None = None,
    ) -> Pool[_T]:
        """``max_size`` >= 1; ``0 <= min_size <= max_size``; ``timeout`` >= 0 or None;
        ``max_idle`` > 0 seconds or None; ``clock`` governs ``max_idle``.

        ``bus`` (with ``name``) is told when the pool is exhausted: ``pool.<name>.exhausted``
        with data ``{"state": "begin" | "end", "waited", "timeouts", "max_size"}``. It
        begins when a checkout finds no idle item and no room to create one (it must
        wait), and ends when a returned item goes back to idle (or a discarded item's
        slot is freed) with nobody waiting; ``waited`` and ``timeouts`` count the
        episode's checkouts that waited and that timed out. ``publish`` runs with no lock
        held; what it raises goes to ``sys.unraisablehook``. See ``ferrule.events``."""

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

        >>> import asyncio
        >>> pool = Pool(list, max_size=1)
        >>> async def handler() -> int:
        ...     async with pool.acquire_async(timeout=5.0) as item:
        ...         item.append("used")
        ...         return len(item)
        >>> asyncio.run(handler())
        1
        """

    def close(self) -> None:
        """Close every idle item and fail every waiter; items in use are closed when
        they are returned. Later checkouts raise RuntimeError."""

    def stats(self) -> PoolStats:
        """Counters; see :class:`PoolStats`."""

    @property
    def closed(self) -> bool: ...
    @property
    def name(self) -> str | None:
        """The name given (the topics' middle segment), or None."""
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
    # Private: used by ferrule._pool (asyncio).
    def _checkout_async(self, wake: Callable[[], object]) -> tuple[bool, Any]: ...
    def _resume(self, waiter: Any) -> tuple[bool, Any]: ...
    def _give_up(
        self, waiter: Any, timed_out: bool, timeout: float | None = None
    ) -> tuple[bool, Any]:
        """``waiter`` must come from this pool (else ValueError); ``timeout`` is checked
        like every timeout (TypeError, ValueError, OverflowError)."""
    def _finish(self, item: Any, exc: BaseException | None = None) -> None:
        """ValueError if no item is checked out (``item`` cannot be a return)."""

# ---------------------------------------------------------------------------------------
# Redis tier: private helpers of ferrule.redis (src/py/redis.rs)
# ---------------------------------------------------------------------------------------
# The Redis classes check their arguments here, with the in-process classes' own rules
# and messages, so that ``RedisRateLimiter``/``RedisRegistry`` refuse what
# ``RateLimiter``/``Registry`` refuse, with the same errors.

def _gcra_params(
    rate: float, per: float = 1.0, burst: int | None = None
) -> tuple[float, float, int, int, int]:
    """Internal: ``RateLimiter(rate, per, burst=burst)``'s checks, then the Redis tier's
    bound (a window ``burst * per / rate`` of at most 52 days, where Lua's doubles stay
    exact). Returns ``(rate, per, interval_ns, burst, tau_ns)``.

    >>> _gcra_params(3, burst=1)
    (3.0, 1.0, 333333334, 1, 333333334)
    """

def _gcra_windows(
    rate: float | None = None,
    per: float = 1.0,
    burst: int | None = None,
    limits: Iterable[tuple[float, float] | tuple[float, float, int | None]] | None = None,
) -> list[tuple[float, float, int, int, int]]:
    """Internal: ``RateLimiter(rate, per, burst=burst, limits=limits)``'s checks (either
    form), then the Redis tier's bound on each limit, as :func:`_gcra_params`: one
    ``(rate, per, interval_ns, burst, tau_ns)`` per limit, in order.

    >>> _gcra_windows(limits=[(3, 1.0, 1), (10, 60.0)])
    [(3.0, 1.0, 333333334, 1, 333333334), (10.0, 60.0, 6000000000, 10, 60000000000)]
    """

def _spec_windows(spec: str) -> list[tuple[float, float, int, int, int]]:
    """Internal: ``RateLimiter.parse(spec)``'s checks, then the Redis tier's bound on each
    limit, as :func:`_gcra_windows`.

    >>> _spec_windows("2/second")
    [(2.0, 1.0, 500000000, 2, 1000000000)]
    """

def _check_cost(cost: int | None, burst: int) -> int:
    """Internal: a request's ``cost`` by ``RateLimiter``'s rule (None is 1) for a bucket
    of capacity ``burst``.

    >>> _check_cost(2, 10)
    2
    """

def _timeout(timeout: float | None) -> float | None:
    """Internal: ``RateLimiter.acquire``'s ``timeout`` rule; None or whole nanoseconds as
    seconds."""

def _redis_key(key: object) -> bytes:
    """Internal: a ``RedisRateLimiter`` key as the bytes naming its bucket (after the
    prefix): ``n:`` None, ``s:`` str (UTF-8), ``i:`` int (decimal; a bool is its int),
    ``b:`` bytes, ``t:`` a tuple of ``<length>:<item>`` parts; tuples nest at most 16 deep.
    Anything else is a TypeError.

    >>> _redis_key(("user", 1))
    b't:6:s:user3:i:1'
    """

def _prefix(prefix: str) -> str:
    """Internal: a Redis class's ``prefix`` (a str), as an exact str."""

def _agent_id(agent_id: str) -> str:
    """Internal: an ``agent_id`` by ``Registry``'s rule, as an exact str."""

@overload
def _ttl(ttl: float, required: Literal[True]) -> int: ...
@overload
def _ttl(ttl: float | None, required: bool = False) -> int | None:
    """Internal: a lease ``ttl`` by ``Registry``'s rule (seconds > 0), in nanoseconds;
    None passes unless ``required``."""

def _max_batch(max_batch: int) -> int:
    """Internal: ``Registry(max_batch=...)``'s rule (an int >= 1)."""

def _already_registered(agent_id: str) -> AlreadyRegistered:
    """Internal: the ``AlreadyRegistered`` error for ``agent_id``, with ``Registry``'s
    message (raised by the caller)."""

def _registration(
    agent_id: str,
    capabilities: Iterable[str] | None = None,
    node: str | None = None,
    health: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    ttl: float | None = None,
) -> tuple[str, list[str], str | None, str, dict[str, Any], int | None]:
    """Internal: ``Registry.register``'s checks, in its order. Returns ``(agent_id,
    capabilities, node, health, metadata, ttl_ns)``: the capabilities sorted without
    duplicates, the health ``"healthy"`` when None, the metadata a new dict.

    >>> _registration("a", capabilities=["b", "a", "b"], metadata={"k": 1})
    ('a', ['a', 'b'], None, 'healthy', {'k': 1}, None)
    """

def _registrations(
    items: Iterable[Mapping[str, Any]], max_batch: int
) -> list[tuple[str, list[str], str | None, str, dict[str, Any], int | None, Any, Any]]:
    """Internal: ``Registry.register_many``'s checks (at most ``max_batch`` items, each a
    dict with known keys and an ``agent_id``, no id twice: ``AlreadyRegistered``). One
    ``_registration`` tuple per item, followed by its ``value`` and ``owner``."""

def _changes(**changes: Any) -> dict[str, Any]:
    """Internal: ``Registry.update``'s checks of the given changes (``capabilities``,
    ``node``, ``health``, ``metadata``), converted as ``_registration`` converts them."""

@final
class _Where:
    """Internal: a ``where`` list of ``(path, op, value)`` conditions, parsed by
    ``Registry``'s parser (``_criteria`` makes one; see ``_match_where``). None is no
    condition; a callable is refused (TypeError)."""

    def __new__(cls, where: Iterable[tuple[str, str, Any]] | None = None) -> _Where: ...

def _criteria(
    capability: str | None = None,
    node: str | None = None,
    health: str | None = None,
    where: Callable[[Any], object] | Iterable[tuple[str, str, Any]] | None = None,
    limit: int | None = None,
) -> tuple[str | None, str | None, str | None, Callable[[Any], object] | _Where | None, int | None]:
    """Internal: ``Registry.find``'s checks, in its order. ``where`` comes back as None,
    the caller's callable, or a :class:`_Where`; a limit too large for any count comes
    back as the largest one."""

def _match_where(where: _Where | None, metadata: Mapping[str, Any]) -> bool:
    """Internal: whether ``metadata`` meets every condition of ``where`` (None: True),
    decided as ``Registry.find`` decides it: a missing path never matches, a comparison
    Python refuses is no match, ``eq`` and ``in`` also match an element of a list value.

    >>> w = _criteria(where=[("gpu.count", "gte", 2), ("zone", "in", ["a", "b"])])[3]
    >>> _match_where(w, {"gpu": {"count": 4}, "zone": "b"}), _match_where(w, {"zone": "a"})
    (True, False)
    """
