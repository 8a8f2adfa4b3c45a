"""Cache: unit, semantics, re-entrancy, single-flight, bad input."""

from __future__ import annotations

import _thread
import decimal
import fractions
import gc
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import ferrule
import pytest
from ferrule import Cache, ManualClock

from tests.conftest import run_doctests

from .conftest import FREE_THREADED

# The eviction policies; tests of behaviour that must not depend on the policy run with
# each.
POLICIES = ["lru", "tinylfu"]

# ---- construction and bad input -------------------------------------------------------


def test_repr_and_properties() -> None:
    c = Cache(10, ttl=1.5)
    assert (c.max_size, c.ttl, c.shards) == (10, 1.5, 1)
    assert repr(c) == "Cache(max_size=10, ttl=1.5, shards=1)"
    # One shard with the GIL (calls are serialised anyway); sharded by CPUs without it.
    if FREE_THREADED:
        assert Cache(100_000).shards > 1
    else:
        assert Cache(100_000).shards == 1
    assert Cache(100_000, shards=3).shards == 3


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({"max_size": 0}, ValueError, "max_size must be >= 1"),
        ({"max_size": -5}, ValueError, "max_size must be >= 1"),
        ({"max_size": 1.5}, TypeError, "max_size must be an int, not 'float'"),
        ({"max_size": "10"}, TypeError, "max_size must be an int, not 'str'"),
        ({"max_size": True}, TypeError, "max_size must be an int, not 'bool'"),
        ({"max_size": 10, "ttl": 0}, ValueError, "ttl must be > 0"),
        ({"max_size": 10, "ttl": -1.0}, ValueError, "ttl must be > 0"),
        ({"max_size": 10, "ttl": float("nan")}, ValueError, "ttl must be a finite number"),
        ({"max_size": 10, "ttl": float("inf")}, ValueError, "ttl must be a finite number"),
        ({"max_size": 10, "ttl": "1"}, TypeError, "ttl must be a number of seconds, not 'str'"),
        ({"max_size": 10, "shards": 0}, ValueError, "shards must be >= 1"),
        ({"max_size": 10, "shards": 11}, ValueError, "shards must be between 1 and max_size"),
        ({"max_size": 10, "clock": 5}, TypeError, "clock must be a ferrule.ManualClock or None"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], exc: type, msg: str) -> None:
    with pytest.raises(exc, match=msg):
        Cache(**kwargs)  # type: ignore[arg-type]


def test_bad_call_arguments() -> None:
    c = Cache(10)
    with pytest.raises(TypeError, match="key must be hashable, not 'list'"):
        c.get([1])
    with pytest.raises(TypeError, match="key must be hashable, not 'dict'"):
        c[{}] = 1
    with pytest.raises(ValueError, match="ttl must be > 0"):
        c.set("k", 1, ttl=0)
    with pytest.raises(TypeError, match="factory must be callable, not 'int'"):
        c.get_or_set("k", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pop expected at most 2 arguments"):
        c.pop("k", 1, 2)  # type: ignore[call-overload]
    assert len(c) == 0


def test_get_answers_every_shape_of_call_as_its_signature_says() -> None:
    # `get(key)` and `get(key, default)` with an exact int or str key are answered in
    # front of the general method; every other call goes to it. Both must agree.
    import inspect

    assert str(inspect.signature(Cache.get)) == "(self, /, key, default=None)"
    assert Cache.get.__doc__ and Cache.get.__doc__.startswith("The live value for `key`")
    c = Cache(10)
    c[1] = "one"
    c["s"] = "ess"
    sentinel = object()
    assert c.get(1) == "one" and c.get("s") == "ess"
    assert c.get(2) is None and c.get("t") is None
    assert c.get(2, sentinel) is sentinel and c.get("t", sentinel) is sentinel
    assert c.get(1, sentinel) == "one"
    assert c.get(key=1) == "one" and c.get(1, default=sentinel) == "one"
    assert c.get(key="t", default=sentinel) is sentinel
    assert c.get(1.0) == "one" and c.get(True) == "one" and c.get((1,), 5) == 5
    assert c.get(2**70, sentinel) is sentinel
    st = c.stats()
    assert (st.hits, st.misses) == (7, 7)
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'key'"):
        c.get()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="takes from 1 to 2 positional arguments but 3"):
        c.get(1, 2, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        c.get(1, nope=2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="got multiple values for argument 'key'"):
        c.get(1, key=1)  # type: ignore[misc]
    with pytest.raises(TypeError, match="doesn't apply to a 'object' object"):
        Cache.get(object(), 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be hashable"):
        c.get([1])
    # Bound and unbound forms, and a bound method kept across calls.
    get = c.get
    assert get(1) == "one" and Cache.get(c, "s") == "ess" and Cache.get(c, 9, 0) == 0


def test_get_keeps_reference_counts_on_hits_misses_and_defaults() -> None:
    c = Cache(10)
    value, default = object(), object()
    c["k"] = value
    c[10**12] = value
    before = (sys.getrefcount(value), sys.getrefcount(default))
    for _ in range(1000):
        assert c.get("k") is value and c.get(10**12, default) is value
        assert c.get("missing", default) is default and c.get(7, default) is default
        assert c.get("missing") is None
    assert (sys.getrefcount(value), sys.getrefcount(default)) == before


def test_get_of_an_expired_entry_takes_the_general_path_and_reports_it() -> None:
    clock = ManualClock()
    evicted: list[tuple[object, object, str]] = []
    c = Cache(10, ttl=1.0, clock=clock, on_evict=lambda k, v, why: evicted.append((k, v, why)))
    c[1] = "a"
    c["s"] = "b"
    clock.advance(2.0)
    assert c.get(1) is None and c.get("s", 0) == 0
    assert set(evicted) == {(1, "a", "expired"), ("s", "b", "expired")}
    assert len(c) == 0 and c.stats().misses == 2


def test_get_with_a_user_key_still_compares_outside_the_lock() -> None:
    # A key whose class runs `__eq__` never takes the fast path (it is not an exact int
    # or str), however it was stored.
    calls = []

    class K:
        def __hash__(self) -> int:
            return hash("s")

        def __eq__(self, other: object) -> bool:
            calls.append(other)
            return other == "s"

    c = Cache(10)
    c["s"] = 1
    assert c.get(K()) == 1 and calls == ["s"]


def test_set_answers_every_shape_of_call_as_its_signature_says() -> None:
    # `set(key, value)` with an exact int or str key is written in front of the general
    # method; a `ttl`, keywords and other keys go to it. Both must agree.
    import inspect

    assert str(inspect.signature(Cache.set)) == "(self, /, key, value, *, ttl=None)"
    assert Cache.set.__doc__ and Cache.set.__doc__.startswith("Insert or replace")
    clock = ManualClock()
    c = Cache(10, clock=clock)
    assert c.set(1, "one") is None and c.set("s", "ess") is None
    assert c.set(2**70, "big") is None and c.set((1,), "tuple") is None
    assert c.set(key=3, value="three") is None and c.set(4, value="four") is None
    assert c.set(5, "five", ttl=1.0) is None
    assert c.set(1.0, "one again") is None  # equal to the int key 1: replaces it
    assert dict(c.items()) == {
        1: "one again",
        "s": "ess",
        2**70: "big",
        (1,): "tuple",
        3: "three",
        4: "four",
        5: "five",
    }
    clock.advance(2.0)
    assert 5 not in c and len(c) == 6
    assert c.stats().inserts == 8
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'value'"):
        c.set(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="takes 2 positional arguments but 3"):
        c.set(1, 2, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        c.set(1, 2, nope=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="doesn't apply to a 'object' object"):
        Cache.set(object(), 1, 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be hashable"):
        c.set([1], 2)
    put = c.set
    put(7, "seven")
    Cache.set(c, "t", "tee")
    assert c[7] == "seven" and c["t"] == "tee"


@pytest.mark.parametrize("policy", POLICIES)
def test_set_releases_what_it_replaces_and_evicts_at_once(policy: str) -> None:
    class V:
        pass

    c = Cache(4, shards=1, policy=policy)
    first = V()
    gone = weakref.ref(first)
    c.set("k", first)
    del first
    c.set("k", V())  # replaces: the old value is released by the call itself
    assert gone() is None
    refs = []
    for i in range(100):
        v = V()
        refs.append(weakref.ref(v))
        c.set(i, v)
        del v
    # No collection needed: only what the cache still holds is alive.
    assert sum(r() is not None for r in refs) + ("k" in c) == len(c) == 4
    value, key = V(), "x" * 50
    before = (sys.getrefcount(value), sys.getrefcount(key))
    for i in range(1000):
        c.set(key, value)
        c.set(i, value)
    c.clear()
    assert (sys.getrefcount(value), sys.getrefcount(key)) == before


def test_set_with_ttl_by_default_or_a_listener_keeps_its_semantics() -> None:
    clock = ManualClock()
    evicted: list[tuple[object, object, str]] = []
    c = Cache(2, shards=1, ttl=1.0, clock=clock)
    c.set(1, "a")
    clock.advance(2.0)
    assert 1 not in c  # the default ttl applies to the fast write too
    c = Cache(2, shards=1, on_evict=lambda k, v, why: evicted.append((k, v, why)))
    c.set(1, "a")
    c.set(1, "b")
    c.set(2, "c")
    c.set(3, "d")
    assert evicted == [(1, "a", "replaced"), (1, "b", "size")]
    w = Cache(10, weigher=lambda k, v: len(v))
    w.set(1, "abc")
    assert w.stats().weight == 3


def test_set_with_a_user_key_stored_compares_outside_the_lock() -> None:
    # An int or str key meeting a stored key whose class runs `__eq__` takes the general
    # path, which compares without the lock (and may run that `__eq__`).
    calls = []

    class K:
        def __hash__(self) -> int:
            return hash(7)

        def __eq__(self, other: object) -> bool:
            calls.append(other)
            return other == 7

    c = Cache(10, shards=1)
    k = K()
    c.set(k, "user")
    c.set(7, "int")
    assert calls == [7] and len(c) == 1 and c[k] == "int"


# ---- mapping behaviour ----------------------------------------------------------------


@pytest.mark.smoke
def test_get_set_delete_pop() -> None:
    c = Cache(10)
    assert c.get("a") is None
    assert c.get("a", 7) == 7
    c.set("a", 1)
    c["b"] = 2
    assert c.get("a") == 1 and c["b"] == 2
    assert "a" in c and "z" not in c
    assert len(c) == 2
    assert c.delete("a") is True
    assert c.delete("a") is False
    assert c.pop("b") == 2
    assert c.pop("b", None) is None
    with pytest.raises(KeyError):
        c.pop("b")
    with pytest.raises(KeyError):
        c["missing"]
    with pytest.raises(KeyError):
        del c["missing"]
    c["x"] = 1
    del c["x"]
    assert len(c) == 0


def test_snapshots_and_iteration() -> None:
    c = Cache(10)
    for i in range(5):
        c[i] = i * 10
    assert sorted(c.keys()) == [0, 1, 2, 3, 4]
    assert sorted(c.values()) == [0, 10, 20, 30, 40]
    assert sorted(c.items()) == [(i, i * 10) for i in range(5)]
    assert sorted(c) == [0, 1, 2, 3, 4]
    keys = c.keys()
    c.clear()
    assert keys == [4, 3, 2, 1, 0]  # snapshot, most recent first in one shard
    assert len(c) == 0 and c.keys() == []


def test_dict_key_semantics() -> None:
    c = Cache(10)
    c[1] = "int"
    assert c[1.0] == "int" and c[True] == "int"
    c[1.0] = "float"
    assert len(c) == 1 and c[1] == "float"
    c[("a", 1)] = "tuple"
    assert c[("a", 1.0)] == "tuple"
    nan = float("nan")
    c[nan] = "nan"
    assert c[nan] == "nan"  # identity, as in a dict
    assert float("nan") not in c
    c[None] = "none"
    c[b"x"] = "bytes"
    assert c[None] == "none" and c[b"x"] == "bytes"
    assert "x" not in c  # str and bytes differ


@pytest.mark.parametrize(
    "v",
    [
        0,
        1,
        -1,
        -2,
        2**61 - 2,
        2**61 - 1,
        2**61,
        2**62 + 5,
        2**63 - 1,
        -(2**61 - 1),
        -(2**61),
        -(2**63),
        10**18 + 7,
        -(10**18 + 7),
    ],
)
def test_int_keys_meet_every_equal_key_of_another_type(v: int) -> None:
    # An exact int is hashed by the cache itself; an int subclass, a float, a Decimal or a
    # Fraction equal to it is hashed by Python: both must file the key under one hash.
    class Int(int):
        pass

    equal: list[object] = [Int(v), decimal.Decimal(v), fractions.Fraction(v)]
    if float(v) == v:
        equal.append(float(v))
    for other in equal:
        c = Cache(10, shards=4)
        c[v] = "int"
        assert c.get(other) == "int", other
        assert other in c
        c2 = Cache(10, shards=4)
        c2[other] = "other"
        assert c2.get(v) == "other", other
        assert c2.pop(v) == "other" and len(c2) == 0


class Key:
    """A key with user-defined equality."""

    def __init__(self, v: int, h: int | None = None) -> None:
        self.v = v
        self.h = v if h is None else h
        self.eq_calls = 0

    def __hash__(self) -> int:
        return self.h

    def __eq__(self, other: object) -> bool:
        self.eq_calls += 1
        return isinstance(other, Key) and other.v == self.v


def test_user_keys_use_eq() -> None:
    c = Cache(10)
    c[Key(1)] = "one"
    assert c[Key(1)] == "one"
    c[Key(1)] = "uno"
    assert len(c) == 1 and c[Key(1)] == "uno"
    # colliding hashes, different keys
    c[Key(2, h=99)] = "two"
    c[Key(3, h=99)] = "three"
    assert c[Key(2, h=99)] == "two" and c[Key(3, h=99)] == "three"
    assert len(c) == 3


@pytest.mark.parametrize("policy", POLICIES)
def test_hash_and_eq_exceptions_propagate_and_leave_cache_consistent(policy: str) -> None:
    class BadHash:
        def __hash__(self) -> int:
            raise RuntimeError("no hash")

    class BadEq:
        def __hash__(self) -> int:
            return 42

        def __eq__(self, other: object) -> bool:
            raise ValueError("no eq")

    c = Cache(10, policy=policy)
    with pytest.raises(RuntimeError, match="no hash"):
        c[BadHash()] = 1
    bad = BadEq()
    c[bad] = 1  # identity: no __eq__ needed
    assert c[bad] == 1
    with pytest.raises(ValueError, match="no eq"):
        c[Key(5, h=42)] = 2
    with pytest.raises(ValueError, match="no eq"):
        c.get(Key(5, h=42))
    assert len(c) == 1 and c[bad] == 1
    c["other"] = 3
    assert sorted(map(str, c.values())) == ["1", "3"]


def test_eq_may_reenter_the_cache() -> None:
    c = Cache(10, shards=1)

    class Reentrant:
        def __hash__(self) -> int:
            return 7

        def __eq__(self, other: object) -> bool:
            # Runs while another operation on the same shard is in progress.
            c["seen"] = c.get("seen", 0) + 1
            return isinstance(other, Reentrant)

    c[Reentrant()] = "a"
    assert c[Reentrant()] == "a"
    assert c["seen"] >= 1


# ---- LRU and TTL ------------------------------------------------------------------------


def test_exact_lru_and_hit_refresh() -> None:
    c = Cache(3, shards=1)
    c["a"], c["b"], c["c"] = 1, 2, 3
    c.get("a")
    c["d"] = 4
    assert "b" not in c and sorted(c.keys()) == ["a", "c", "d"]
    assert "a" in c  # `in` does not refresh recency
    c["e"] = 5
    assert "c" not in c
    st = c.stats()
    assert (st.evictions, st.size, st.max_size) == (2, 3, 3)


def test_small_caches_never_evict_below_their_size() -> None:
    c = Cache(10)
    for i in range(10):
        c[i] = i
    assert len(c) == 10 and all(i in c for i in range(10))


def test_len_never_exceeds_max_size_with_many_shards() -> None:
    c = Cache(1000, shards=16)
    for i in range(10_000):
        c[i] = i
        if i % 100 == 0:
            assert len(c) <= 1000
    assert len(c) == 1000


def test_ttl_deadline_is_exclusive() -> None:
    clock = ManualClock()
    c = Cache(10, ttl=1.0, clock=clock)
    c["a"] = 1
    clock.advance(0.999)
    assert c["a"] == 1
    clock.advance(0.001)
    assert c.get("a") is None and "a" not in c and len(c) == 0


def test_per_entry_ttl_overrides_default() -> None:
    clock = ManualClock()
    c = Cache(10, ttl=10.0, clock=clock)
    c.set("short", 1, ttl=1.0)
    c.set("long", 2)
    c2 = Cache(10, clock=clock)
    c2.set("forever", 3)
    c2.set("brief", 4, ttl=2.0)
    clock.advance(1.0)
    assert "short" not in c and c["long"] == 2
    clock.advance(1.0)
    assert "brief" not in c2 and c2["forever"] == 3
    clock.advance(8.0)
    assert "long" not in c


def test_expire_and_stats_count_expirations() -> None:
    clock = ManualClock()
    c = Cache(100, ttl=5.0, clock=clock)
    for i in range(50):
        c[i] = i
    clock.advance(5.0)
    assert c.expire() == 50
    assert c.expire() == 0
    st = c.stats()
    assert (st.expirations, st.size, st.inserts) == (50, 0, 50)


def test_full_cache_drops_expired_before_live() -> None:
    clock = ManualClock()
    c = Cache(2, shards=1, clock=clock)
    c.set("old", 1, ttl=1.0)
    c.set("live", 2)
    c.get("old")  # old is most recent, live is the LRU entry
    clock.advance(1.0)
    c["new"] = 3
    assert c["live"] == 2 and c["new"] == 3
    assert c.stats().evictions == 0


def test_stats_counting_rules() -> None:
    c = Cache(10)
    c["a"] = 1
    c["a"] = 2
    c.get("a")
    c["a"]
    c.get("zz")
    _ = "a" in c
    _ = "zz" in c
    st = c.stats()
    assert (st.hits, st.misses, st.inserts) == (2, 1, 2)
    assert st.hit_ratio == pytest.approx(2 / 3)
    assert "hits=2" in repr(st)


def test_values_are_released_when_removed() -> None:
    class Value:
        pass

    clock = ManualClock()
    c = Cache(2, shards=1, ttl=1.0, clock=clock)
    v = Value()
    ref = weakref.ref(v)
    c["a"] = v
    del v
    gc.collect()
    assert ref() is not None
    clock.advance(2.0)
    c["b"] = 1  # the write reclaims the expired entry
    gc.collect()
    assert ref() is None


def test_value_del_may_use_the_cache() -> None:
    c = Cache(1, shards=1)

    class Noisy:
        def __del__(self) -> None:
            c.get("anything")  # would deadlock if dropped under the shard lock

    c["a"] = Noisy()
    c["b"] = 1  # evicts a; its __del__ runs after the lock is released
    c.clear()
    assert len(c) == 0


# ---- get_or_set and single-flight -------------------------------------------------------


def test_get_or_set_basic() -> None:
    c = Cache(10)
    assert c.get_or_set("k", lambda: 1) == 1
    assert c.get_or_set("k", lambda: 2) == 1
    st = c.stats()
    assert (st.hits, st.misses, st.inserts) == (1, 1, 1)


def test_get_or_set_with_ttl() -> None:
    clock = ManualClock()
    c = Cache(10, clock=clock)
    assert c.get_or_set("k", lambda: 1, ttl=1.0) == 1
    clock.advance(1.0)
    assert c.get_or_set("k", lambda: 2, ttl=1.0) == 2


def test_single_flight_under_contention(threads: int) -> None:
    c = Cache(100)
    calls = 0
    calls_lock = threading.Lock()
    started = threading.Event()
    release = threading.Event()

    def factory() -> str:
        nonlocal calls
        with calls_lock:
            calls += 1
        started.set()
        release.wait(5)
        return "value"

    results: list[str] = []
    barrier = threading.Barrier(threads)

    def worker() -> None:
        barrier.wait()
        results.append(c.get_or_set("key", factory))

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    assert started.wait(5)
    time.sleep(0.05)  # let the others reach the flight
    release.set()
    for t in ts:
        t.join()
    assert calls == 1
    assert results == ["value"] * threads


def test_factory_exception_reaches_every_waiter_and_nothing_is_cached(threads: int) -> None:
    c = Cache(100)
    gate = threading.Event()

    def factory() -> str:
        gate.wait(5)
        raise LookupError("backend down")

    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            c.get_or_set("key", factory)
        except LookupError as e:
            with lock:
                errors.append(e)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in ts:
        t.join()
    assert len(errors) == threads
    assert all(str(e) == "backend down" for e in errors)
    assert "key" not in c
    assert c.get_or_set("key", lambda: "ok") == "ok"


def test_factory_may_use_the_cache() -> None:
    c = Cache(10, shards=1)

    def outer() -> int:
        return c.get_or_set("inner", lambda: 1) + 1

    assert c.get_or_set("outer", outer) == 2
    assert c["inner"] == 1


def test_recursive_get_or_set_of_the_same_key_raises() -> None:
    c = Cache(10)

    def factory() -> int:
        return c.get_or_set("k", lambda: 1)

    with pytest.raises(RuntimeError, match="recursively"):
        c.get_or_set("k", factory)
    assert "k" not in c
    assert c.get_or_set("k", lambda: 3) == 3


def test_waiters_release_the_gil() -> None:
    c = Cache(10)
    release = threading.Event()
    progress = 0

    def factory() -> int:
        release.wait(5)
        return 1

    leader = threading.Thread(target=c.get_or_set, args=("k", factory))
    leader.start()
    time.sleep(0.02)
    waiter = threading.Thread(target=c.get_or_set, args=("k", factory))
    waiter.start()
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        progress += 1
    release.set()
    leader.join()
    waiter.join()
    assert progress > 1000


def test_waiting_is_interruptible() -> None:
    c = Cache(10)
    release = threading.Event()

    def factory() -> int:
        release.wait(5)
        return 1

    leader = threading.Thread(target=c.get_or_set, args=("k", factory))
    leader.start()
    time.sleep(0.02)
    timer = threading.Timer(0.1, _thread.interrupt_main)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        c.get_or_set("k", factory)
    assert time.monotonic() - t0 < 0.5
    release.set()
    leader.join()
    assert c["k"] == 1


def test_a_flight_that_began_before_clear_does_not_store_after_it() -> None:
    """`clear()` while a factory runs: the factory's result still reaches its caller but
    is not stored, and a caller after the clear does not wait for that factory, it runs
    its own. (That the old flight's followers get its result is a core test.)"""
    c = Cache(10)
    entered = threading.Semaphore(0)
    release = {"old": threading.Event(), "new": threading.Event()}
    results: dict[str, object] = {}

    def call(tag: str) -> None:
        def factory() -> str:
            entered.release()
            release[tag].wait(10)
            return tag

        results[tag] = c.get_or_set("k", factory)

    old = threading.Thread(target=call, args=("old",))
    old.start()
    assert entered.acquire(timeout=10)
    c.clear()
    new = threading.Thread(target=call, args=("new",))
    new.start()
    assert entered.acquire(timeout=10)  # a second factory: the old flight is not joined
    release["old"].set()
    old.join()
    assert results == {"old": "old"} and "k" not in c
    release["new"].set()
    new.join()
    assert results["new"] == "new" and c["k"] == "new"


# ---- cached decorator -------------------------------------------------------------------


def test_cached_counts_one_hit_or_one_miss_per_call() -> None:
    """Guards against a miss counted twice (the wrapper's `get`, then the single-flight
    call's own lookup)."""

    @ferrule.cached(10)
    def pair(x: object, *, y: int = 0) -> tuple[object, int]:
        return (x, y)

    stats = pair.cache.stats  # type: ignore[attr-defined]
    assert pair(1) == (1, 0)
    assert (stats().hits, stats().misses, stats().inserts) == (0, 1, 1)
    assert pair(1) == (1, 0)
    assert (stats().hits, stats().misses) == (1, 1)
    assert pair(1, y=1) == (1, 1) and pair((1,)) == ((1,), 0)  # the slower key forms
    assert (stats().hits, stats().misses, stats().inserts) == (1, 3, 3)


@ferrule.cached(4)
def _square_at_module_level(x: int) -> int:
    """Squares."""
    return x * x


def test_cached_wrapper_carries_what_a_function_wrapper_does() -> None:
    """Guards the attributes `functools.update_wrapper` gives, the signature, weak
    references, and pickling and copying by qualified name (as lru_cache's wrapper)."""
    import copy
    import inspect
    import pickle

    def f(a: int, b: str = "x") -> str:
        """Doc of f."""
        return b * a

    f.marker = "kept"  # type: ignore[attr-defined]
    w = ferrule.cached(4)(f)
    assert (w.__name__, w.__qualname__, w.__doc__, w.__module__) == (
        f.__name__,
        f.__qualname__,
        "Doc of f.",
        f.__module__,
    )
    assert w.__wrapped__ is f  # type: ignore[attr-defined]
    assert w.marker == "kept"  # type: ignore[attr-defined]
    assert inspect.signature(w) == inspect.signature(f)
    w.extra = 1  # type: ignore[attr-defined]
    assert w.extra == 1  # type: ignore[attr-defined]
    assert weakref.ref(w)() is w
    assert "f" in repr(w)
    g = _square_at_module_level
    assert pickle.loads(pickle.dumps(g)) is g
    assert copy.copy(g) is g and copy.deepcopy(g) is g
    assert g(3) == 9


def test_cached_methods_bind_like_functions() -> None:
    """Guards `__get__`: on an instance the wrapper binds as a method (the instance is
    part of the key), on the class it is the wrapper itself."""

    class Box:
        def __init__(self, n: int) -> None:
            self.n = n

        @ferrule.cached(8)
        def times(self, k: int) -> int:
            return self.n * k

        @staticmethod
        @ferrule.cached(8)
        def static(k: int) -> int:
            return -k

    a, b = Box(2), Box(3)
    assert (a.times(5), b.times(5), a.times(5)) == (10, 15, 10)
    assert Box.times(a, 5) == 10
    assert Box.__dict__["times"].__get__(None, Box) is Box.__dict__["times"]
    assert a.times.__self__ is a  # type: ignore[attr-defined]
    assert Box.static(4) == -4 and a.static(4) == -4
    stats = Box.__dict__["times"].cache.stats()
    assert (stats.hits, stats.misses) == (2, 2)


def test_cached_fast_path_misses_raise_and_recurse_like_the_general_path() -> None:
    """Guards the native call: a miss on the fast path (one int or str argument) runs the
    function with no lock held, so it may call itself; what it raises propagates, is not
    cached, and counts one miss."""

    @ferrule.cached(64)
    def fib(n: int) -> int:
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert fib(40) == 102334155
    assert len(fib.cache) == 41  # type: ignore[attr-defined]
    calls = 0

    @ferrule.cached(8)
    def fails(key: object) -> object:
        nonlocal calls
        calls += 1
        raise ValueError(key)

    for key in (7, "seven", 2**70, 7.0):  # fast int, fast str, big int, a float
        with pytest.raises(ValueError):
            fails(key)
    assert calls == 4 and len(fails.cache) == 0  # type: ignore[attr-defined]
    stats = fails.cache.stats()  # type: ignore[attr-defined]
    assert (stats.hits, stats.misses, stats.inserts) == (0, 4, 0)

    @ferrule.cached(8)
    def interrupted(key: int) -> int:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted(1)


def test_cached_keys_of_subclasses_and_user_eq_take_the_general_path() -> None:
    """Guards the fast path's key test: only exact int and str keys are looked up
    natively; a str subclass with its own `__eq__`/`__hash__`, and a bool (equal to 1 but
    keyed as a tuple, as before), are keyed by the general path."""

    class Loud(str):
        eqs = 0

        def __eq__(self, other: object) -> bool:
            Loud.eqs += 1
            return str.__eq__(self, other)

        __hash__ = str.__hash__

    seen: list[object] = []

    @ferrule.cached(8)
    def ident(x: object) -> object:
        seen.append(x)
        return x

    assert ident(Loud("k")) == "k" and ident(Loud("k")) == "k"
    assert ident(1) == 1 and ident(True) is True and ident(1) == 1
    assert seen == ["k", 1, True]


def test_cached_expired_entry_is_computed_again() -> None:
    """Guards the fast path's hand-off: an expired entry (which the native lookup leaves
    to the general one) is a miss, and the function runs again."""
    calls: list[int] = []

    @ferrule.cached(8, ttl=0.02)
    def stamp(k: int) -> int:
        calls.append(k)
        return len(calls)

    assert stamp(1) == 1 and stamp(1) == 1
    time.sleep(0.05)
    assert stamp(1) == 2 and stamp(1) == 2
    stats = stamp.cache.stats()  # type: ignore[attr-defined]
    assert (stats.hits, stats.misses) == (2, 2)


def test_cached_call_refuses_callbacks_that_are_not_callable() -> None:
    from ferrule._native import _CachedCall

    with pytest.raises(TypeError, match="func must be callable"):
        _CachedCall(Cache(2), 1, lambda args, kwargs: None)
    with pytest.raises(TypeError, match="slow must be callable"):
        _CachedCall(Cache(2), lambda key: key, None)
    with pytest.raises(TypeError):
        _CachedCall(object(), lambda key: key, lambda args, kwargs: None)


def test_cached_decorator() -> None:
    calls: list[tuple[object, ...]] = []

    @ferrule.cached(100)
    def add(a: int, b: int = 0) -> int:
        calls.append((a, b))
        return a + b

    assert add(1, 2) == 3 and add(1, 2) == 3
    assert add(1, b=2) == 3  # keyword form is a different key, like lru_cache
    assert add(5) == 5 and add(5) == 5
    assert calls == [(1, 2), (1, 2), (5, 0)]
    assert isinstance(add.cache, Cache)  # type: ignore[attr-defined]
    assert add.__name__ == "add"
    add.cache_clear()  # type: ignore[attr-defined]
    add(5)
    assert len(calls) == 4


def test_cached_single_flight_threads(threads: int) -> None:
    calls = 0
    lock = threading.Lock()

    @ferrule.cached(10)
    def slow(x: int) -> int:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.05)
        return x * 2

    barrier = threading.Barrier(threads)
    out: list[int] = []

    def worker() -> None:
        barrier.wait()
        out.append(slow(21))

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert calls == 1 and out == [42] * threads


def test_cached_async_shares_one_call() -> None:
    import asyncio

    calls = 0

    @ferrule.cached(10, ttl=60.0)
    async def fetch(x: int) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        return x + 1

    async def main() -> list[int]:
        return await asyncio.gather(*(fetch(1) for _ in range(20)))

    assert asyncio.run(main()) == [2] * 20
    assert calls == 1
    assert asyncio.run(fetch(1)) == 2 and calls == 1


def test_cached_async_exception_not_cached() -> None:
    import asyncio

    calls = 0

    @ferrule.cached(10)
    async def boom() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise ValueError("nope")

    async def main() -> list[object]:
        return await asyncio.gather(boom(), boom(), return_exceptions=True)

    res = asyncio.run(main())
    assert all(isinstance(r, ValueError) for r in res) and calls == 1
    with pytest.raises(ValueError):
        asyncio.run(boom())
    assert calls == 2


def test_cached_async_cancelled_awaiter_does_not_cancel_the_call() -> None:
    import asyncio

    @ferrule.cached(10)
    async def slow() -> str:
        await asyncio.sleep(0.05)
        return "done"

    async def main() -> str:
        first = asyncio.ensure_future(slow())
        second = asyncio.ensure_future(slow())
        await asyncio.sleep(0.01)
        first.cancel()
        return await second

    assert asyncio.run(main()) == "done"


STR_KEYS = [
    "",
    "a",
    "ab",
    "ba",
    "user:1",
    "user:2",
    "é",
    "e",
    "ü" * 3,
    "\u0100",
    "\u0101",
    "a\u0100",
    "\U0001f600",
    "\U0001f601",
    "x" * 1000,
    "x" * 999 + "y",
    "\x00",
    "\x00\x00",
    "ab\u0100"[:2],
]


@pytest.mark.parametrize("policy", POLICIES)
def test_str_keys_match_by_value_across_kinds_and_lengths(policy: str) -> None:
    """Guards the str comparison of lookups: a key found by an equal but distinct str
    object, never by a different one, for every width of code unit (1, 2, 4 bytes), the
    empty str, long strs and one sliced down to a narrower one."""
    c = ferrule.Cache(100, shards=1, policy=policy)
    for i, k in enumerate(STR_KEYS):
        c[k] = i
    assert len(c) == len(set(STR_KEYS))
    for k in STR_KEYS:
        copy = "".join(list(k))  # equal, another object
        assert copy is not k or len(k) <= 1
        assert c.get(copy) == max(i for i, j in enumerate(STR_KEYS) if j == k)
    for missing in ["abc", "user:3", "\u0102", "\U0001f602", "x" * 1001, "b", "\x00" * 3]:
        assert c.get("".join(list(missing))) is None
    # Tuples of strs compare their items the same way.
    c[("é", "\u0100")] = "t"
    assert c.get(("".join(["é"]), "".join(["\u0100"]))) == "t"
    assert c.get(("é", "\u0101")) is None


def test_str_and_bytes_keys_never_reach_bytes_warning() -> None:
    # hash("x") == hash(b"x"): they collide, and under `python -b` comparing them emits a
    # BytesWarning. The cache never asks Python to compare them (that would run the
    # warnings machinery, Python code, under a shard lock).
    import subprocess
    import sys

    code = (
        "import ferrule\n"
        "c = ferrule.Cache(10, shards=1)\n"
        "c['x'] = 1; c[b'x'] = 2; c[('a', 'x')] = 3; c[('a', b'x')] = 4\n"
        "assert (c['x'], c[b'x'], c[('a', 'x')], c[('a', b'x')]) == (1, 2, 3, 4)\n"
        "assert len(c) == 4\n"
    )
    out = subprocess.run([sys.executable, "-b", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "BytesWarning" not in out.stderr


# ---- hardening: regression tests ---------------------------------------------------------


class _Tracked:
    """A value whose collection can be observed (and whose __del__ uses the cache)."""

    def __init__(self, cache: Cache | None = None) -> None:
        self.cache = cache

    def __del__(self) -> None:
        if self.cache is not None:
            self.cache.get("anything")  # deadlocks if dropped under the shard lock


def test_replacing_with_a_ttl_that_has_already_passed() -> None:
    """Guards against a PanicException ("handle to an empty slot") when `set` replaces an
    existing key whose new deadline has passed by the time the write reclaims expired
    entries (two clock reads in one operation), and against the old value being dropped
    (running its __del__) while the shard lock is held."""
    c = Cache(10, shards=1)
    for i in range(200):
        c.set("k", _Tracked(c))
        c.set("k", i, ttl=1e-9)  # 1 ns: passes between two clock reads
    c.set("k", 1)
    assert c["k"] == 1
    c.set("k", 2, ttl=1e-9)
    assert c.get("k") in (2, None)
    assert len(c) == len(c.keys()) <= 1


def test_one_clock_reading_per_write_with_a_manual_clock() -> None:
    """Guards the rule "live while now < t + d" for a replace: with a ManualClock the
    deadline and the reclaim use the same reading, so a 1 ns TTL is live until the clock
    moves."""
    clock = ManualClock()
    c = Cache(10, clock=clock)
    c["k"] = 0
    c.set("k", 1, ttl=1e-9)
    assert c["k"] == 1
    clock.advance(1e-9)
    assert "k" not in c and len(c) == 0


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


def test_huge_shard_counts_raise_instead_of_aborting() -> None:
    """Guards against the process aborting on a huge allocation (`Cache(2**31,
    shards=2**31)`) and against refusals that name the wrong argument or bound."""
    out = _run(
        """
        import ferrule
        for args, kwargs in [((2**31,), {"shards": 2**31}), ((2**32 - 2,), {"shards": 2**20})]:
            try:
                ferrule.Cache(*args, **kwargs)
            except ValueError as e:
                print(e)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["shards must be between 1 and 1024"] * 2


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "msg"),
    [
        ((100_000,), {"shards": 70_000}, ValueError, "shards must be between 1 and 1024"),
        ((100_000,), {"shards": 1025}, ValueError, "shards must be between 1 and 1024"),
        ((100_000,), {"shards": 2**64}, ValueError, "shards must be between 1 and 1024"),
        ((100_000,), {"shards": -(2**64)}, ValueError, "shards must be >= 1"),
        ((100_000,), {"shards": -1}, ValueError, "shards must be >= 1"),
        ((5,), {"shards": 6}, ValueError, r"shards must be between 1 and max_size \(5\)"),
        ((2**32 - 1,), {}, OverflowError, "max_size must be <= 4294967294"),
        ((2**40,), {}, OverflowError, "max_size must be <= 4294967294"),
        ((2**64,), {}, OverflowError, "max_size must be <= 4294967294"),
        ((-(2**64),), {}, ValueError, "max_size must be >= 1"),
        ((0,), {}, ValueError, "max_size must be >= 1"),
    ],
)
def test_size_refusals_name_the_argument_and_bound(
    args: tuple[int], kwargs: dict[str, int], exc: type, msg: str
) -> None:
    """Guards against refusals with the wrong message ("max_size must be >= 1" for a shard
    count or a max_size that is too large) and against out-of-range ints mapped to the
    wrong exception."""
    with pytest.raises(exc, match=f"^{msg}$"):
        Cache(*args, **kwargs)


def test_largest_sizes_are_accepted_without_preallocating() -> None:
    """Guards against memory proportional to max_size being reserved up front: the
    largest cache with the most shards costs little until it is filled."""
    out = _run(
        """
        import ferrule
        def rss_kb():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4
        before = rss_kb()
        caches = [ferrule.Cache(2**32 - 2, shards=1024) for _ in range(4)]
        caches += [ferrule.Cache(2**32 - 2, shards=1) for _ in range(4)]
        for c in caches:
            for i in range(100):
                c[i] = i
        assert all(len(c) == 100 for c in caches)
        print(rss_kb() - before)
        """
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 50_000  # KB; 8 caches of 2**32 - 2 entries would be ~2 TB


def test_running_out_of_memory_raises_memory_error() -> None:
    """Guards against an abort when the cache cannot grow: with the address space capped,
    filling a huge cache ends in MemoryError (from ferrule or from Python), never in a
    crash."""
    out = _run(
        """
        import resource, ferrule
        c = ferrule.Cache(2**32 - 2, shards=1)
        with open("/proc/self/statm") as f:
            vm = int(f.read().split()[0]) * 4096
        limit = vm + 400 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        v = None
        try:
            for i in range(10**9):
                c[i] = v
        except MemoryError:
            pass
        n = len(c)
        c.clear()
        c["ok"] = 1
        print(n > 1000, c["ok"])
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "1"]


class _Hostile:
    """A key whose first comparison clears the cache and re-inserts an equal key."""

    def __init__(self, v: int, cache: Cache | None = None) -> None:
        self.v = v
        self.cache = cache

    def __hash__(self) -> int:
        return 12345

    def __eq__(self, other: object) -> bool:
        if self.cache is not None:
            cache, self.cache = self.cache, None
            cache.clear()
            cache[_Hostile(self.v)] = "reinserted"
            return False
        return isinstance(other, _Hostile) and other.v == self.v


def _assert_no_equal_keys(c: Cache) -> None:
    keys = c.keys()
    assert len(c) == len(keys)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert a != b, f"two equal keys: {a!r} and {b!r}"


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("op", ["set", "get_or_set", "setitem"])
def test_eq_that_clears_and_reinserts_never_leaves_two_equal_keys(op: str, policy: str) -> None:
    """Guards against a stale comparison result being applied to another entry after
    clear() (slot generations restarted at 0), which let the cache hold two equal keys."""
    c = Cache(10, shards=1, policy=policy)
    c[_Hostile(1, c)] = "first"
    key = _Hostile(1)
    if op == "set":
        c.set(key, "second")
    elif op == "setitem":
        c[key] = "second"
    else:
        assert c.get_or_set(key, lambda: "second") == "reinserted"
    _assert_no_equal_keys(c)
    assert len(c) == 1
    assert c[_Hostile(1)] in ("second", "reinserted")


@pytest.mark.parametrize("policy", POLICIES)
def test_eq_that_clears_and_reinserts_repeatedly(policy: str) -> None:
    """The same hostile comparison, over many keys and rounds: the cache never holds two
    equal keys, and len() always matches keys()."""
    c = Cache(64, shards=1, policy=policy)
    for round_ in range(50):
        c[_Hostile(round_ % 5, c)] = round_
        c[_Hostile(round_ % 5)] = -round_
        c[_Hostile((round_ + 1) % 5)] = round_
        _assert_no_equal_keys(c)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_base_exception_in_leader_is_not_given_to_waiters(exc: type[BaseException]) -> None:
    """Guards against a leader's KeyboardInterrupt/SystemExit (any BaseException that is
    not an Exception) being re-raised in every waiting thread: the leader gets it, the
    waiters retry and one of them runs the factory."""
    c = Cache(10)
    waiters = 4
    go = threading.Event()
    calls = 0
    lock = threading.Lock()

    def factory() -> str:
        nonlocal calls
        with lock:
            calls += 1
            first = calls == 1
        if first:
            go.wait(10)
            raise exc()
        return "value"

    results: list[object] = []

    def worker() -> None:
        try:
            results.append(c.get_or_set("k", factory))
        except BaseException as e:  # the test inspects what arrived
            results.append(type(e))

    leader = threading.Thread(target=worker)
    leader.start()
    _wait_for(lambda: calls == 1)
    ts = [threading.Thread(target=worker) for _ in range(waiters)]
    for t in ts:
        t.start()
    _wait_for(lambda: c.stats().misses == waiters + 1)  # every waiter missed
    go.set()
    leader.join()
    for t in ts:
        t.join()
    assert sorted(map(str, results)) == sorted([str(exc)] + ["value"] * waiters)
    assert calls == 2 and c["k"] == "value"


def test_exception_in_leader_still_reaches_every_waiter() -> None:
    """The contract for ordinary exceptions is unchanged: every waiter gets the leader's
    exception and nothing is cached."""
    c = Cache(10)
    go = threading.Event()
    calls = 0

    def factory() -> str:
        nonlocal calls
        calls += 1
        go.wait(10)
        raise LookupError("down")

    results: list[object] = []

    def worker() -> None:
        try:
            results.append(c.get_or_set("k", factory))
        except LookupError as e:
            results.append(e)

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    _wait_for(lambda: c.stats().misses == 4)
    go.set()
    for t in ts:
        t.join()
    assert calls == 1 and len(results) == 4
    assert all(isinstance(r, LookupError) for r in results)
    assert "k" not in c


def test_cached_base_exception_in_leader_is_not_given_to_waiters() -> None:
    """`ferrule.cached` (sync) inherits the rule: a leader's KeyboardInterrupt stays with
    the leader and a waiter runs the function again."""
    go = threading.Event()
    calls = 0
    lock = threading.Lock()

    @ferrule.cached(10)
    def f(x: int) -> int:
        nonlocal calls
        with lock:
            calls += 1
            first = calls == 1
        if first:
            go.wait(10)
            raise KeyboardInterrupt
        return x * 2

    results: list[object] = []

    def worker() -> None:
        try:
            results.append(f(21))
        except KeyboardInterrupt:
            results.append("interrupted")

    leader = threading.Thread(target=worker)
    leader.start()
    _wait_for(lambda: calls == 1)
    ts = [threading.Thread(target=worker) for _ in range(3)]
    for t in ts:
        t.start()
    # One miss per call: the wrapper's get (the single-flight call counts nothing more).
    _wait_for(lambda: f.cache.stats().misses == 1 + 3)  # type: ignore[attr-defined]
    go.set()
    leader.join()
    for t in ts:
        t.join()
    assert sorted(map(str, results)) == ["42", "42", "42", "interrupted"]
    assert calls == 2


def test_cached_async_cancelled_leader_task_does_not_poison_waiters() -> None:
    """Guards against a cancelled shared call being passed on to every awaiter as
    CancelledError: the awaiters (not cancelled themselves) retry and one runs it again."""
    import asyncio

    calls = 0

    @ferrule.cached(10)
    async def fetch(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # the shared call is cancelled, not its awaiters
        await asyncio.sleep(0)
        return x + 1

    async def main() -> list[object]:
        return await asyncio.gather(*(fetch(1) for _ in range(5)), return_exceptions=True)

    assert asyncio.run(main()) == [2] * 5
    assert calls == 2


def test_cached_async_awaiter_cancellation_still_propagates() -> None:
    """An awaiter that is itself cancelled still gets CancelledError (the retry rule
    applies only to the shared call's own cancellation)."""
    import asyncio

    @ferrule.cached(10)
    async def slow() -> str:
        await asyncio.sleep(0.05)
        return "done"

    async def main() -> tuple[bool, str]:
        first = asyncio.ensure_future(slow())
        second = asyncio.ensure_future(slow())
        await asyncio.sleep(0)
        first.cancel()
        try:
            await first
        except asyncio.CancelledError:
            cancelled = True
        else:
            cancelled = False
        return cancelled, await second

    assert asyncio.run(main()) == (True, "done")


def _wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls a condition that another thread makes true (no ordering by sleeps)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


# ---- garbage collection -----------------------------------------------------------------


class _Holder:
    cache: Cache


def _collected(ref: weakref.ref[object]) -> bool:
    gc.collect()
    return ref() is None


def test_cycle_through_the_cache_itself_is_collected() -> None:
    """Guards against `c["self"] = c` leaking forever: Cache takes part in GC."""
    c = Cache(10)
    marker = _Holder()
    c["self"] = c
    c["marker"] = marker
    ref = weakref.ref(marker)
    del c, marker
    assert _collected(ref)


def test_cycle_through_a_value_is_collected() -> None:
    """Guards against a value that refers back to the object holding the cache leaking."""
    holder = _Holder()
    holder.cache = Cache(10, ttl=60.0)
    holder.cache["back"] = [holder]
    holder.cache[("k", 1)] = {"nested": holder}
    ref = weakref.ref(holder)
    del holder
    assert _collected(ref)


def test_cycle_through_a_key_is_collected() -> None:
    """Keys are visited too: a key object that holds the cache."""

    class K:
        cache: Cache

    k = K()
    k.cache = Cache(10)
    k.cache[k] = 1
    ref = weakref.ref(k)
    del k
    assert _collected(ref)


def test_cycle_through_a_cached_function_is_collected() -> None:
    """Guards against a `cached` wrapper leaking through its cache: the function's
    closure refers to the wrapper, and a cached result refers to it too."""

    def make() -> Callable[[int], object]:
        @ferrule.cached(10)
        def f(x: int) -> object:
            return (f, x)  # the result refers to the wrapper, which holds the cache

        return f

    f = make()
    f(1)
    ref = weakref.ref(f)
    del f
    assert _collected(ref)


def test_cycle_through_an_async_cached_function_is_collected() -> None:
    import asyncio

    def make() -> Callable[[int], Any]:
        @ferrule.cached(10)
        async def f(x: int) -> object:
            return (f, x)

        return f

    f = make()
    asyncio.run(f(1))
    ref = weakref.ref(f)
    del f
    assert _collected(ref)


def test_clearing_a_cycle_drops_values_outside_the_lock() -> None:
    """The collector's __clear__ takes entries out and drops them after unlocking: a
    value's __del__ that uses the cache does not deadlock."""
    holder = _Holder()
    holder.cache = Cache(10, shards=1)
    holder.cache["a"] = _Tracked(holder.cache)
    holder.cache["back"] = holder
    ref = weakref.ref(holder)
    del holder
    assert _collected(ref)


# ---- audit: hostile numbers, hashes and comparisons ---------------------------------------


def test_deadlines_near_the_largest_clock_time() -> None:
    """`now + ttl` stays exact with a ManualClock near its largest time (2**62 ns) and
    the longest TTL (4e9 s): no overflow, no wrap to the past."""
    clock = ManualClock(4e9)  # set() takes at most 4e9 s; advance() goes further
    top = 2**62 / 1e9
    clock.advance(top - 4e9 - 10.0)
    c = Cache(10, ttl=4e9, clock=clock)
    c["long"] = 1
    c.set("short", 2, ttl=1.0)
    c.set("max", 3, ttl=4e9)
    assert (c["long"], c["short"], c["max"]) == (1, 2, 3)
    clock.advance(1.0)
    assert "short" not in c and c["long"] == 1
    with pytest.raises(OverflowError):
        clock.advance(20.0)
    clock.advance(top - clock.now() - 1e-6)
    assert c["long"] == 1 and c["max"] == 3 and len(c) == 2
    c.set("late", 4, ttl=4e9)
    assert c["late"] == 4 and c.expire() == 0
    with pytest.raises(ValueError, match="ttl is too large"):
        c.set("k", 1, ttl=4.1e9)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("h", [2**100, -(2**100), -1, sys.maxsize, -sys.maxsize - 1, 0])
def test_hostile_hash_values(h: int, policy: str) -> None:
    """`__hash__` may return any int: Python reduces it, the cache mixes it; no panic."""

    class H:
        def __init__(self, v: int) -> None:
            self.v = v

        def __hash__(self) -> int:
            return h

        def __eq__(self, other: object) -> bool:
            return isinstance(other, H) and other.v == self.v

    c = Cache(100, shards=4, policy=policy)  # one shard of 25 takes every key
    for i in range(5):
        c[H(i)] = i
    assert [c[H(i)] for i in range(5)] == list(range(5))
    assert c.delete(H(3)) and len(c) == 4


def test_hash_that_returns_a_non_int_propagates() -> None:
    class Bad:
        def __hash__(self) -> int:
            return "x"  # type: ignore[return-value]

    c = Cache(10)
    with pytest.raises(TypeError):
        c[Bad()] = 1
    with pytest.raises(TypeError):
        c.get_or_set(Bad(), lambda: 1)
    assert len(c) == 0


class _RaisingEq:
    def __hash__(self) -> int:
        return 99

    def __eq__(self, other: object) -> bool:
        raise ArithmeticError("eq")


class _BadBool:
    def __bool__(self) -> bool:
        raise ArithmeticError("bool")


class _BadBoolEq:
    def __hash__(self) -> int:
        return 99

    def __eq__(self, other: object) -> Any:
        return _BadBool()


@pytest.mark.parametrize("stored", [_RaisingEq, _BadBoolEq])
@pytest.mark.parametrize(
    "op",
    [
        lambda c, k: c.get(k),
        lambda c, k: c.set(k, 1),
        lambda c, k: c.delete(k),
        lambda c, k: c.pop(k, None),
        lambda c, k: k in c,
        lambda c, k: c.get_or_set(k, lambda: 1),
        lambda c, k: c.__delitem__(k),
    ],
)
@pytest.mark.parametrize("policy", POLICIES)
def test_eq_that_raises_propagates_from_every_operation(stored: type, op: Any, policy: str) -> None:
    """An exception from `__eq__` (or from the truth value it returns) propagates from
    every operation and leaves the cache consistent."""
    c = Cache(10, policy=policy)
    k = stored()
    c[k] = "kept"

    class Other:
        def __hash__(self) -> int:
            return 99

    with pytest.raises(ArithmeticError):
        op(c, Other())
    assert c[k] == "kept" and len(c) == 1 == len(c.keys())


_REENTER = {
    "get": lambda c: c.get("x"),
    "set": lambda c: c.set("x", 1),
    "set_same_hash": lambda c: c.set(_Plain(0), "inner"),
    "delete": lambda c: c.delete("x"),
    "clear": lambda c: c.clear(),
    "get_or_set": lambda c: c.get_or_set("y", lambda: 2),
    "get_or_set_same_key": lambda c: c.get_or_set(_Plain(5), lambda: "inner"),
    "expire": lambda c: c.expire(),
    "len": lambda c: len(c),
}


class _Plain:
    """A user key with plain equality on `v` and a constant hash."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Plain) and other.v == self.v


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("action", list(_REENTER))
@pytest.mark.parametrize("op", ["get", "set", "delete", "get_or_set", "contains"])
def test_eq_may_reenter_the_same_cache_with_any_operation(
    action: str, op: str, policy: str
) -> None:
    """`__eq__` runs with no lock held, so it may call any method of the same cache on
    the same shard: no deadlock, no panic, and the invariants hold afterwards."""
    c = Cache(10, shards=1, policy=policy)
    count = 0

    class Reentrant(_Plain):
        __hash__ = _Plain.__hash__

        def __eq__(self, other: object) -> bool:
            nonlocal count
            count += 1
            if count < 20:
                _REENTER[action](c)
            return super().__eq__(other)

    c[Reentrant(1)] = "r"
    probe = _Plain(5)
    if op == "get":
        c.get(probe)
    elif op == "set":
        c.set(probe, "v")
    elif op == "delete":
        c.delete(probe)
    elif op == "contains":
        _ = probe in c
    else:
        assert c.get_or_set(probe, lambda: "v") in ("v", "inner")
    assert count >= 1 or action == "clear"
    _assert_no_equal_keys(c)
    assert len(c) <= 10


# ---- weights, time to idle, the eviction listener, bulk reads and writes ----------------


Event = tuple[Any, Any, str]


def _listening(max_size: int = 10, **kwargs: Any) -> tuple[Cache, list[Event]]:
    events: list[Event] = []
    c = Cache(
        max_size, shards=1, on_evict=lambda k, v, cause: events.append((k, v, cause)), **kwargs
    )
    return c, events


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({"tti": 0}, ValueError, "tti must be > 0"),
        ({"tti": -1.0}, ValueError, "tti must be > 0"),
        ({"tti": float("nan")}, ValueError, "tti must be a finite number"),
        ({"tti": "1"}, TypeError, "tti must be a number of seconds, not 'str'"),
        ({"weigher": 5}, TypeError, "weigher must be callable or None, not 'int'"),
        ({"on_evict": "log"}, TypeError, "on_evict must be callable or None, not 'str'"),
    ],
)
def test_bad_new_constructor_arguments(kwargs: dict[str, object], exc: type, msg: str) -> None:
    with pytest.raises(exc, match=msg):
        Cache(10, **kwargs)  # type: ignore[arg-type]


def test_new_options_in_repr_and_properties() -> None:
    c = Cache(10, tti=2.5, weigher=lambda k, v: 1, shards=1)
    assert (c.tti, Cache(10).tti) == (2.5, None)
    assert repr(c) == "Cache(max_size=10, ttl=None, tti=2.5, shards=1, weighted)"
    assert Cache(10, weigher=None, on_evict=None, tti=None).stats().weight == 0


def test_weigher_bounds_the_total_weight_and_evicts_lru_until_the_entry_fits() -> None:
    c, events = _listening(10, weigher=lambda k, v: len(v))
    c["a"], c["b"], c["c"] = "aaaa", "bbbb", "cc"
    assert c["a"] == "aaaa"  # b is now the least recently used
    c["d"] = "ddddd"  # 15 > 10: b goes, then c
    assert events == [("b", "bbbb", "size"), ("c", "cc", "size")]
    st = c.stats()
    assert (len(c), st.size, st.weight, st.evictions) == (2, 2, 9, 2)
    # A heavier value for a stored key evicts others, never that key.
    c["d"] = "d" * 10
    assert events[-1] == ("a", "aaaa", "size")
    assert events[-2] == ("d", "ddddd", "replaced")
    assert (c.stats().weight, list(c.keys())) == (10, ["d"])


def test_without_a_weigher_weight_is_the_entry_count() -> None:
    c = Cache(3)
    for k in "abcde":
        c[k] = k
    st = c.stats()
    assert (st.size, st.weight, st.rejected) == (3, 3, 0)


def test_an_entry_heavier_than_the_bound_is_rejected_and_counted() -> None:
    c, events = _listening(10, weigher=lambda k, v: v)
    c.set("a", 4)
    c.set("b", 11)  # heavier than max_size: not stored
    assert ("b" in c, c.stats().rejected, c.stats().inserts) == (False, 1, 1)
    # A rejected write supersedes the key's old value: it is removed, not kept stale.
    c.set("a", 10**40)
    assert ("a" in c, events) == (False, [("a", 4, "replaced")])
    assert (len(c), c.stats().weight, c.stats().rejected) == (0, 0, 2)
    # get_or_set answers with a value it could not store.
    assert c.get_or_set("big", lambda: 99) == 99
    assert "big" not in c


def test_weight_bound_is_per_shard() -> None:
    c = Cache(100, shards=4, weigher=lambda k, v: v)
    c.set("fits", 25)
    c.set("too heavy for a shard", 26)
    assert ("fits" in c, "too heavy for a shard" in c) == (True, False)
    for i in range(200):
        c.set(i, i % 25)
    assert c.stats().weight <= 100


def test_zero_weights_are_allowed_and_the_count_stays_bounded() -> None:
    c = Cache(5, weigher=lambda k, v: 0)
    for i in range(50):
        c[i] = i
    st = c.stats()
    assert (len(c), st.weight, st.evictions) == (5, 0, 45)


@pytest.mark.parametrize(
    ("result", "exc", "msg"),
    [
        (True, TypeError, "weigher's result must be an int, not 'bool'"),
        (1.0, TypeError, "weigher's result must be an int, not 'float'"),
        ("3", TypeError, "weigher's result must be an int, not 'str'"),
        (None, TypeError, "weigher's result must be an int, not 'NoneType'"),
        (-1, ValueError, "weigher's result must be >= 0"),
        (-(10**40), ValueError, "weigher's result must be >= 0"),
    ],
)
def test_a_bad_weight_raises_and_stores_nothing(result: object, exc: type, msg: str) -> None:
    c, events = _listening(10, weigher=lambda k, v: result)
    with pytest.raises(exc, match=msg):
        c.set("k", 1)
    with pytest.raises(exc, match=msg):
        c.get_or_set("k", lambda: 1)
    with pytest.raises(exc, match=msg):
        c.set_many({"k": 1})
    assert (len(c), c.stats().inserts, events) == (0, 0, [])


def test_huge_weights_and_int_subclasses() -> None:
    class Weight(int):
        pass

    c = Cache(10, weigher=lambda k, v: v)
    c.set("w", Weight(3))
    c.set("huge", 2**64 + 1)
    c.set("huger", 10**100)
    assert (list(c.keys()), c.stats().weight, c.stats().rejected) == (["w"], 3, 2)


def test_weigher_exception_propagates_and_nothing_is_stored() -> None:
    def weigher(k: object, v: object) -> int:
        raise KeyError("no size")

    c = Cache(10, weigher=weigher)
    with pytest.raises(KeyError, match="no size"):
        c["k"] = 1
    assert len(c) == 0


def test_weigher_runs_outside_the_lock_and_may_use_the_cache() -> None:
    c: Cache

    def weigher(k: object, v: object) -> int:
        if k != "side":
            c["side"] = 0  # re-enters the same cache (and its shard)
            assert c.get("side") == 0
        return 1

    c = Cache(10, weigher=weigher)
    c["k"] = 1
    assert (c["k"], c["side"]) == (1, 0)


def test_weigher_sees_the_callers_key_and_value() -> None:
    seen: list[tuple[object, object]] = []
    c = Cache(10, weigher=lambda k, v: seen.append((k, v)) or 1)  # type: ignore[func-returns-value]
    c.set(1, "one")
    c[1.0] = "uno"
    c.get_or_set(2, lambda: "two")
    c.set_many({3: "three"})
    assert seen == [(1, "one"), (1.0, "uno"), (2, "two"), (3, "three")]
    assert c.keys() == [3, 2, 1]  # the stored key is kept, as in a dict


def test_tti_expires_unread_entries_and_reads_refresh_it() -> None:
    clock = ManualClock()
    c, events = _listening(10, tti=1.0, clock=clock)
    c["a"], c["b"], c["c"], c["d"], c["e"] = 1, 2, 3, 4, 5
    clock.advance(0.75)
    assert c.get("a") == 1
    assert c["b"] == 2
    assert c.get_or_set("c", lambda: 0) == 3
    assert c.get_many(["d"]) == {"d": 4}
    # Not reads: in, peek and the snapshots do not refresh idle time.
    assert ("e" in c, c.peek("e"), c.items()[-1]) == (True, 5, ("e", 5))
    clock.advance(0.25)  # e idle for 1.0: expired; a-d read at 0.75
    assert ("e" in c, sorted(c.keys())) == (False, ["a", "b", "c", "d"])
    clock.advance(0.75)
    assert c.get("a") is None
    assert events == [("e", 5, "expired"), ("a", 1, "expired")]
    assert (len(c), c.stats().expirations) == (0, 5)


def test_tti_and_ttl_whichever_comes_first() -> None:
    clock = ManualClock()
    c = Cache(10, ttl=2.0, tti=1.0, clock=clock)
    c["k"] = 1
    c.set("short", 1, ttl=0.5)
    for _ in range(3):
        clock.advance(0.5)
        assert c.get("k") == 1  # reads keep it from idling
    assert "short" not in c
    clock.advance(0.5)  # t = 2.0: its TTL ends, read or not
    assert c.get("k") is None
    c["k"] = 2  # a write restarts both
    clock.advance(0.9)
    assert c.peek("k") == 2
    clock.advance(0.1)
    assert c.peek("k") is None


def test_tti_prefers_idle_entries_when_full() -> None:
    clock = ManualClock()
    c, events = _listening(2, tti=1.0, clock=clock)
    c["a"] = 1
    clock.advance(0.5)
    c["b"] = 2
    clock.advance(0.4)
    assert c["a"] == 1  # a read at 0.9: b is least recent
    clock.advance(0.6)  # b idle since 0.5: expired at 1.5
    c["c"] = 3
    assert events == [("b", 2, "expired")]
    assert sorted(c.keys()) == ["a", "c"]


def test_on_evict_reports_each_cause() -> None:
    clock = ManualClock()
    c, events = _listening(2, clock=clock)
    c["a"] = 1
    c["a"] = 2
    c.set("t", 1, ttl=1.0)
    c["b"] = 3  # full: the LRU entry a goes
    assert events == [("a", 1, "replaced"), ("a", 2, "size")]
    events.clear()
    clock.advance(1.0)
    assert c.expire() == 1
    c["c"] = 4
    assert c.pop("b") == 3
    c["d"] = 5
    del c["c"]
    c["e"] = 6
    assert c.delete("d") is True
    assert events == [
        ("t", 1, "expired"),
        ("b", 3, "deleted"),
        ("c", 4, "deleted"),
        ("d", 5, "deleted"),
    ]
    events.clear()
    c["f"] = 7
    c.clear()
    assert sorted(events) == [("e", 6, "deleted"), ("f", 7, "deleted")]
    assert len(c) == 0


def test_expired_entries_found_by_reads_and_bulk_calls_are_reported() -> None:
    clock = ManualClock()
    c, events = _listening(10, ttl=1.0, clock=clock)
    ops: list[Callable[[], object]] = [
        lambda: c.get("k"),
        lambda: c.peek("k"),
        lambda: "k" in c,
        lambda: c.delete("k"),
        lambda: c.get_or_set("k", lambda: 0),
        lambda: len(c),
        lambda: c.stats(),
        lambda: c.expire(),
        lambda: c.get_many(["k"]),
    ]
    for i, op in enumerate(ops):
        c["k"] = i
        clock.advance(1.0)
        op()
        assert events[-1] == ("k", i, "expired"), i
        c.delete("k")
    # get_or_set stored its factory's 0, which the delete after it removed.
    assert [e for e in events if e[2] != "expired"] == [("k", 0, "deleted")]
    assert len(events) == len(ops) + 1


def test_replaced_reports_the_stored_key() -> None:
    c, events = _listening(10)
    c[1] = "a"
    c[1.0] = "b"
    c[True] = "c"
    assert events == [(1, "a", "replaced"), (1, "b", "replaced")]
    assert all(type(k) is int for k, _, _ in events)


def test_on_evict_exceptions_are_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def on_evict(k: object, v: object, cause: str) -> None:
        calls.append(cause)
        raise RuntimeError(f"listener failed on {k}")

    c = Cache(1, on_evict=on_evict)
    with caplog.at_level("ERROR", logger="ferrule.cache"):
        c["a"] = 1
        c["b"] = 2  # evicts a: the listener raises, the set still succeeds
        c["b"] = 3
        assert c.pop("b") == 3
        c["c"] = 4
        c.clear()
    assert calls == ["size", "replaced", "deleted", "deleted"]
    records = [r for r in caplog.records if r.name == "ferrule.cache"]
    assert len(records) == 4
    assert "on_evict raised" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert str(records[0].exc_info[1]) == "listener failed on a"


def test_on_evict_memory_error_is_logged_too(caplog: pytest.LogCaptureFixture) -> None:
    def on_evict(k: object, v: object, cause: str) -> None:
        raise MemoryError

    c = Cache(1, on_evict=on_evict)
    with caplog.at_level("ERROR", logger="ferrule.cache"):
        c["a"] = 1
        c["b"] = 2
    assert (list(c.keys()), len(caplog.records)) == (["b"], 1)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_on_evict_base_exceptions_go_to_the_unraisable_hook(
    exc: type[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    def on_evict(k: object, v: object, cause: str) -> None:
        raise exc

    seen: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    c = Cache(1, on_evict=on_evict)
    c["a"] = 1
    c["b"] = 2  # not interrupted: the eviction has happened
    c.clear()
    assert list(c.keys()) == []
    assert [type(e) for e in seen] == [exc, exc]


def test_a_failing_logger_goes_to_the_unraisable_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    def refuse(record: logging.LogRecord) -> bool:
        raise OSError("log sink gone")

    logger = logging.getLogger("ferrule.cache")
    logger.addFilter(refuse)  # a filter's exception leaves logger.error
    seen: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    try:
        c = Cache(1, on_evict=lambda k, v, cause: 1 / 0)
        c["a"] = 1
        c["b"] = 2
    finally:
        logger.removeFilter(refuse)
    assert list(c.keys()) == ["b"]
    assert [type(e) for e in seen] == [OSError]


def test_on_evict_may_reenter_the_cache() -> None:
    c: Cache
    events: list[Event] = []

    def on_evict(k: object, v: object, cause: str) -> None:
        events.append((k, v, cause))
        if cause == "size" and isinstance(k, str):
            c[("again", k)] = v  # a write that itself evicts, reported in turn
        assert len(c) <= 2
        c.get("whatever")

    c = Cache(2, on_evict=on_evict)
    c["a"], c["b"], c["c"] = 1, 2, 3
    assert len(c) == 2
    assert events[0] == ("a", 1, "size")
    assert ("b", 2, "size") in events


def test_on_evict_runs_with_no_lock_held() -> None:
    # A listener that blocks until another thread has used the same shard: under a lock
    # this would deadlock.
    done = threading.Event()
    first = threading.Lock()

    def on_evict(k: object, v: object, cause: str) -> None:
        if not first.acquire(blocking=False):
            return  # the other thread's own evictions
        t = threading.Thread(target=lambda: (c.set("other", 1), c.get("a"), done.set()))
        t.start()
        t.join(timeout=10)

    c = Cache(1, on_evict=on_evict)
    c["a"] = 1
    c["b"] = 2
    assert done.is_set()


def test_peek_neither_counts_nor_refreshes_recency() -> None:
    c = Cache(2, shards=1)
    c["a"], c["b"] = 1, 2
    assert (c.peek("a"), c.peek("zz"), c.peek("zz", "d")) == (1, None, "d")
    c["c"] = 3  # a is still the least recently used
    assert ("a" in c, c.stats().hits, c.stats().misses) == (False, 0, 0)
    with pytest.raises(TypeError, match="key must be hashable"):
        c.peek([])


def test_get_many_counts_each_key_and_keeps_the_callers_keys() -> None:
    c = Cache(3, shards=1)
    c[1], c["b"], c["c"] = "one", "bee", "sea"
    found = c.get_many(iter([1.0, "b", "zz", "b"]))
    assert found == {1.0: "one", "b": "bee"}
    assert type(next(iter(found))) is float  # the caller's key object
    st = c.stats()
    assert (st.hits, st.misses) == (3, 1)
    c["d"] = "dee"  # c was not read: it goes
    assert sorted(map(str, c.keys())) == ["1", "b", "d"]
    assert c.get_many([]) == {}


def test_get_many_with_user_keys() -> None:
    class K:
        def __init__(self, n: int) -> None:
            self.n = n

        def __hash__(self) -> int:
            return self.n % 2

        def __eq__(self, other: object) -> bool:
            return isinstance(other, K) and other.n == self.n

    c = Cache(10)
    c[K(1)], c[K(2)] = "one", "two"
    found = c.get_many([K(1), K(3), K(2)])
    assert sorted(found.values()) == ["one", "two"]


@pytest.mark.parametrize(
    ("keys", "msg"),
    [
        ("abc", "keys must be an iterable of keys, not 'str'"),
        (b"abc", "keys must be an iterable of keys, not 'bytes'"),
        (5, "keys must be an iterable of keys, not 'int'"),
    ],
)
def test_get_many_bad_arguments(keys: object, msg: str) -> None:
    with pytest.raises(TypeError, match=msg):
        Cache(10).get_many(keys)  # type: ignore[arg-type]


def test_get_many_propagates_key_and_iterator_errors() -> None:
    def keys() -> Any:
        yield "a"
        raise LookupError("iteration failed")

    c = Cache(10)
    with pytest.raises(LookupError, match="iteration failed"):
        c.get_many(keys())
    with pytest.raises(TypeError, match="key must be hashable, not 'list'"):
        c.get_many([[1]])


def test_set_many_sets_each_pair_in_order() -> None:
    from collections import OrderedDict
    from types import MappingProxyType

    clock = ManualClock()
    c = Cache(3, shards=1, clock=clock)
    c.set_many({"a": 1, "b": 2})
    c.set_many(MappingProxyType({"c": 3}), ttl=1.0)
    c.set_many(OrderedDict([("d", 4)]))  # a, the least recent, goes
    assert sorted(c.items()) == [("b", 2), ("c", 3), ("d", 4)]
    assert c.stats().inserts == 4
    clock.advance(1.0)
    assert "c" not in c
    c.set_many({})


def test_set_many_bad_arguments_and_partial_failure() -> None:
    c = Cache(10)
    with pytest.raises(TypeError, match="mapping must be a mapping, not 'list'"):
        c.set_many([("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl must be > 0"):
        c.set_many({"a": 1}, ttl=0)

    class Pairs:
        def items(self) -> list[object]:
            return [("a", 1), ("b", 2, 3)]

    with pytest.raises(TypeError, match=r"each item of mapping must be a \(key, value\) pair"):
        c.set_many(Pairs())  # type: ignore[arg-type]
    assert c.items() == [("a", 1)]  # the pairs before the bad one stay set
    with pytest.raises(TypeError, match="key must be hashable"):
        c.set_many(Pairs2())  # type: ignore[arg-type]


class Pairs2:
    def items(self) -> list[tuple[object, object]]:
        return [([1], 1)]


def test_set_many_survives_a_weigher_that_mutates_the_mapping() -> None:
    data = {i: i for i in range(10)}

    def weigher(k: object, v: object) -> int:
        data.clear()  # the pairs were copied first
        return 1

    c = Cache(20, weigher=weigher)
    c.set_many(data)
    assert len(c) == 10


def test_docstring_examples_run() -> None:
    """The examples in the Cache/CacheStats stubs and in `cached`'s docstring are the
    user documentation; they must run as written."""
    import ast
    import doctest
    from pathlib import Path

    import ferrule._cached

    stub = Path(ferrule.__file__).with_name("_native.pyi")
    tree = ast.parse(stub.read_text())
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for cls in tree.body:
        if isinstance(cls, ast.ClassDef) and cls.name in ("Cache", "CacheStats"):
            for node in [cls, *cls.body]:
                if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                    continue
                doc = ast.get_docstring(node)
                if doc and ">>>" in doc:
                    test = parser.get_doctest(doc, {"Cache": Cache}, node.name, str(stub), 0)
                    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    result = run_doctests(ferrule._cached)
    assert result.attempted > 0 and result.failed == 0
