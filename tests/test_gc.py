"""Every native class that can hold a Python object takes part in the garbage collector.

A class outside the collector that holds a reference to user code (a callback, a value,
a key) turns an ordinary cycle such as ``self.cb = CircuitBreaker(on_state_change=
self.on_change)`` into a leak. The per-part suites build such cycles and check that they
are collected; this test is the inventory: a new native class must either be GC-tracked
or be listed below with the reason it cannot close a cycle.
"""

from __future__ import annotations

import gc
import weakref

import ferrule
import pytest
from ferrule import _native

Py_TPFLAGS_HAVE_GC = 1 << 14

# Classes that hold no reference a user object could close a cycle through: plain data
# (numbers and strings the class made itself) or references only to such classes.
NOT_TRACKED = {
    "BreakerStats": "numbers only",
    "BusStats": "numbers only",
    "CacheStats": "numbers only",
    "ErrorStoreStats": "numbers only",
    "LimiterStats": "numbers only",
    "Decision": "numbers only",
    "ManualClock": "an atomic counter",
    "Metrics": "Rust-owned names and counters, no Python objects",
    "OpStats": "numbers only",
    "OpTotals": "numbers only (its buckets tuple is built on each access)",
    "PoolStats": "numbers only",
    "QueueStats": "numbers only",
    "SubscriptionStats": "numbers only",
    "TaskPoolStats": "numbers only",
    "Timer": "a Metrics and an exact str: neither can refer back to the Timer",
    "Usage": "numbers and the resource names as str",
}


def _cache_call(cache: ferrule.Cache | None = None) -> object:
    """A ``Cache.get_or_set_async`` call object (``_CacheCall``): private and not exported,
    it exists only inside the coroutine that method returns."""

    async def factory() -> None:
        return None

    coro = (cache if cache is not None else ferrule.Cache(8)).get_or_set_async("k", factory)
    call = coro.cr_frame.f_locals["call"]  # type: ignore[attr-defined]
    coro.close()  # type: ignore[attr-defined]
    return call


# Native classes that are not exported: how to reach one of their instances.
UNEXPORTED = {"_CacheCall": _cache_call}


@pytest.mark.parametrize("name", sorted(UNEXPORTED))
def test_unexported_class_is_tracked(name: str) -> None:
    cls = type(UNEXPORTED[name]())
    assert cls.__name__ == name
    assert cls.__flags__ & Py_TPFLAGS_HAVE_GC, f"{name} holds Python objects but is not GC-tracked"


def native_classes() -> list[type]:
    return sorted(
        (
            obj
            for obj in vars(_native).values()
            if isinstance(obj, type) and not issubclass(obj, BaseException)
        ),
        key=lambda t: t.__name__,
    )


@pytest.mark.parametrize("cls", native_classes(), ids=lambda t: t.__name__)
def test_class_is_tracked_or_listed(cls: type) -> None:
    tracked = bool(cls.__flags__ & Py_TPFLAGS_HAVE_GC)
    if cls.__name__ in NOT_TRACKED:
        assert not tracked, f"{cls.__name__} is GC-tracked now: drop it from NOT_TRACKED"
    else:
        assert tracked, f"{cls.__name__} holds Python objects but is not GC-tracked"


def test_listed_classes_exist() -> None:
    names = {cls.__name__ for cls in native_classes()}
    assert set(NOT_TRACKED) <= names


class Owner:
    """An object that owns a ferrule part which refers back to it."""

    def callback(self, *args: object) -> None:
        pass

    def publish(self, signal_type: str, data: object = None) -> None:
        """So that the owner itself can be a part's ``bus``."""


CYCLES = {
    "CircuitBreaker": lambda o: ferrule.CircuitBreaker(on_state_change=o.callback),
    "Cache": lambda o: _filled(ferrule.Cache(8), "k", o),
    "Cache.on_evict": lambda o: ferrule.Cache(8, on_evict=o.callback),
    "Cache.weigher": lambda o: _filled(
        ferrule.Cache(8, weigher=lambda k, v: 1 if o else 0), "k", 1
    ),
    "WorkQueue": lambda o: _put(ferrule.WorkQueue(4), o),
    "Registry": lambda o: _registered(ferrule.Registry(), o),
    "SignalBus": lambda o: _subscribed(ferrule.SignalBus(), o),
    "ErrorStore": lambda o: _recorded(ferrule.ErrorStore(max_per_agent=8), o),
    "RateLimiter": lambda o: _limited(ferrule.RateLimiter(10, 1.0), o),
    "Cache.get_or_set_async": lambda o: _call_holding(o),
    # Each part holds its bus (events, see ferrule.events).
    "Cache.bus": lambda o: ferrule.Cache(8, name="c", bus=o),
    "WorkQueue.bus": lambda o: ferrule.WorkQueue(4, name="q", bus=o),
    "RateLimiter.bus": lambda o: ferrule.RateLimiter(10, name="r", bus=o),
    "ErrorStore.bus": lambda o: ferrule.ErrorStore(name="e", bus=o),
    "Pool.bus": lambda o: ferrule.Pool(object, max_size=1, name="p", bus=o),
    "TaskCounters.bus": lambda o: _native.TaskCounters(4, name="t", bus=o),
    "TaskPool.bus": lambda o: ferrule.TaskPool(1, name="t", bus=o),
}


def _filled(c: ferrule.Cache, key: str, value: object) -> ferrule.Cache:
    c.set(key, value)
    return c


def _call_holding(owner: object) -> object:
    """A get_or_set_async call whose cache, reached only through the call, holds owner."""
    c = ferrule.Cache(8)
    c.set("owner", owner)
    return _cache_call(c)


def _put(q: ferrule.WorkQueue, item: object) -> ferrule.WorkQueue:
    q.put(item)
    return q


def _registered(r: ferrule.Registry, value: object) -> ferrule.Registry:
    r.register("a", metadata={"owner": value})
    return r


def _subscribed(bus: ferrule.SignalBus, owner: Owner) -> ferrule.SignalBus:
    bus.subscribe("t", owner.callback).cancel()
    bus.subscribe("t", owner.callback)
    return bus


def _recorded(store: ferrule.ErrorStore, owner: object) -> ferrule.ErrorStore:
    try:
        raise ValueError(owner)
    except ValueError as e:
        store.record("a1", e)
    return store


def _limited(limiter: ferrule.RateLimiter, owner: object) -> ferrule.RateLimiter:
    limiter.try_acquire(owner)
    return limiter


@pytest.mark.parametrize("part", sorted(CYCLES))
def test_owner_cycle_is_collected(part: str) -> None:
    owner = Owner()
    owner.part = CYCLES[part](owner)  # type: ignore[attr-defined]
    ref = weakref.ref(owner)
    del owner
    for _ in range(3):
        gc.collect()
    assert ref() is None, f"a cycle through {part} was not collected"
