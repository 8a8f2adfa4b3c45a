"""Cache: unit, semantics, re-entrancy, single-flight, bad input."""

from __future__ import annotations

import _thread
import gc
import threading
import time
import weakref

import ferrule
import pytest
from ferrule import Cache, ManualClock

from .conftest import FREE_THREADED

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


# ---- mapping behaviour ----------------------------------------------------------------


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


def test_hash_and_eq_exceptions_propagate_and_leave_cache_consistent() -> None:
    class BadHash:
        def __hash__(self) -> int:
            raise RuntimeError("no hash")

    class BadEq:
        def __hash__(self) -> int:
            return 42

        def __eq__(self, other: object) -> bool:
            raise ValueError("no eq")

    c = Cache(10)
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


# ---- cached decorator -------------------------------------------------------------------


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
