"""Cache benchmarks: ferrule.Cache beside its peers, one group per workload.

Every benchmark runs a batch of BATCH operations per call, at capacity 100k, so the
per-operation cost is the reported time / BATCH. Run for real with:

    .venv/bin/python -m pytest benches/test_cache.py --benchmark-only --benchmark-json=b.json

and turn the JSON into the README's ratio table with benches/report.py.
"""

from __future__ import annotations

import functools
import itertools
import random
import threading
from collections.abc import Callable
from typing import Any

import ferrule
import pytest

CAPACITY = 100_000
BATCH = 10_000
UNIVERSE = 1_000_000

Get = Callable[[Any], Any]
Set = Callable[[Any, Any], Any]


def _ferrule() -> tuple[Get, Set, object]:
    c = ferrule.Cache(CAPACITY)
    return c.get, c.set, c


def _ferrule_1shard() -> tuple[Get, Set, object]:
    c = ferrule.Cache(CAPACITY, shards=1)
    return c.get, c.set, c


def _ferrule_tinylfu() -> tuple[Get, Set, object]:
    c = ferrule.Cache(CAPACITY, policy="tinylfu")
    return c.get, c.set, c


def _cachebox() -> tuple[Get, Set, object]:
    cachebox = pytest.importorskip("cachebox")
    c = cachebox.LRUCache(CAPACITY)
    return c.get, c.insert, c


def _lru_dict() -> tuple[Get, Set, object]:
    lru = pytest.importorskip("lru")
    c = lru.LRU(CAPACITY)
    return c.get, c.__setitem__, c


def _moka() -> tuple[Get, Set, object]:
    moka_py = pytest.importorskip("moka_py")
    c = moka_py.Moka(CAPACITY)
    return c.get, c.set, c


def _cachetools_locked() -> tuple[Get, Set, object]:
    cachetools = pytest.importorskip("cachetools")
    c = cachetools.LRUCache(CAPACITY)
    lock = threading.Lock()

    def get(k: Any) -> Any:
        with lock:
            return c.get(k)

    def put(k: Any, v: Any) -> None:
        with lock:
            c[k] = v

    return get, put, c


def _dict() -> tuple[Get, Set, object]:
    d: dict[Any, Any] = {}
    return d.get, d.__setitem__, d


IMPLS: dict[str, Callable[[], tuple[Get, Set, object]]] = {
    "ferrule": _ferrule,
    "ferrule-1shard": _ferrule_1shard,
    "ferrule-tinylfu": _ferrule_tinylfu,
    "cachebox": _cachebox,
    "lru-dict": _lru_dict,
    "moka-py": _moka,
    "cachetools+lock": _cachetools_locked,
    "dict (floor, unbounded)": _dict,
}


def int_keys(n: int, offset: int = 0) -> list[int]:
    # Large ints: fresh objects, not the small-int cache.
    return [offset + 10**9 + i for i in range(n)]


def str_keys(n: int, offset: int = 0) -> list[str]:
    return [f"user:{offset + i}" for i in range(n)]


KEYS = {"int": int_keys, "str": str_keys}


@functools.cache
def filled(impl: str, kind: str) -> tuple[Get, Set, list[Any]]:
    get, put, _ = IMPLS[impl]()
    keys = KEYS[kind](CAPACITY)
    for k in keys:
        put(k, k)
    probe = random.Random(7).sample(keys, BATCH)
    # Probe with equal but distinct key objects, as a service would.
    probe = [type(k)(k) if isinstance(k, int) else "".join(k) for k in probe]
    return get, put, probe


@pytest.mark.parametrize("kind", ["int", "str"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_get_hit(benchmark: Any, impl: str, kind: str) -> None:
    benchmark.group = f"cache get-hit {kind}"
    benchmark.extra_info["ops"] = BATCH
    get, _, probe = filled(impl, kind)

    def run() -> None:
        for k in probe:
            get(k)

    benchmark(run)
    assert get(probe[0]) is not None


@pytest.mark.parametrize("kind", ["int", "str"])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_get_miss(benchmark: Any, impl: str, kind: str) -> None:
    benchmark.group = f"cache get-miss {kind}"
    benchmark.extra_info["ops"] = BATCH
    get, _, _ = filled(impl, kind)
    missing = KEYS[kind](BATCH, offset=UNIVERSE * 10)

    def run() -> None:
        for k in missing:
            get(k)

    benchmark(run)
    assert get(missing[0]) is None


@pytest.mark.parametrize("kind", ["int", "str"])
@pytest.mark.parametrize("impl", [i for i in IMPLS if not i.startswith("dict")])
def test_set_with_eviction(benchmark: Any, impl: str, kind: str) -> None:
    benchmark.group = f"cache set-evict {kind}"
    benchmark.extra_info["ops"] = BATCH
    _, put, _ = IMPLS[impl]()
    for k in KEYS[kind](CAPACITY):
        put(k, k)
    fresh = itertools.count(UNIVERSE)
    make = KEYS[kind]

    def setup() -> tuple[tuple[list[Any]], dict[str, Any]]:
        return (make(BATCH, offset=next(fresh) * BATCH),), {}

    def run(keys: list[Any]) -> None:
        for k in keys:
            put(k, k)

    benchmark.pedantic(run, setup=setup, rounds=20, iterations=1)


# Weighted caches: the same set-with-eviction workload over str keys, each entry weighing
# len(value) (about 11), in a cache bounded to CAPACITY * 8 weight units.
WEIGHT_BOUND = CAPACITY * 8


def _ferrule_weighted() -> Set:
    return ferrule.Cache(WEIGHT_BOUND, weigher=lambda k, v: len(v), shards=1).set


def _cachetools_weighted_locked() -> Set:
    cachetools = pytest.importorskip("cachetools")
    c = cachetools.LRUCache(WEIGHT_BOUND, getsizeof=len)
    lock = threading.Lock()

    def put(k: Any, v: Any) -> None:
        with lock:
            c[k] = v

    return put


def _cachetools_weighted() -> Set:
    cachetools = pytest.importorskip("cachetools")
    return cachetools.LRUCache(WEIGHT_BOUND, getsizeof=len).__setitem__


WEIGHTED: dict[str, Callable[[], Set]] = {
    "ferrule weigher=len": _ferrule_weighted,
    "cachetools getsizeof=len +lock": _cachetools_weighted_locked,
    "cachetools getsizeof=len (no lock)": _cachetools_weighted,
}


@pytest.mark.parametrize("impl", list(WEIGHTED))
def test_set_weighted_with_eviction(benchmark: Any, impl: str) -> None:
    """set() into a full cache bounded by total weight, not count."""
    benchmark.group = "cache set-evict weighted str"
    benchmark.extra_info["ops"] = BATCH
    put = WEIGHTED[impl]()
    for k in str_keys(CAPACITY):
        put(k, k)
    fresh = itertools.count(UNIVERSE)

    def setup() -> tuple[tuple[list[Any]], dict[str, Any]]:
        return (str_keys(BATCH, offset=next(fresh) * BATCH),), {}

    def run(keys: list[Any]) -> None:
        for k in keys:
            put(k, k)

    benchmark.pedantic(run, setup=setup, rounds=20, iterations=1)


def zipf_trace(n: int, universe: int, s: float = 1.0, seed: int = 42) -> list[int]:
    weights = [1.0 / (r**s) for r in range(1, universe + 1)]
    cum = list(itertools.accumulate(weights))
    rng = random.Random(seed)
    ranks = rng.choices(range(universe), cum_weights=cum, k=n)
    # Scatter ranks over the key space so hot keys are not adjacent integers.
    return [(r * 2654435761) % (universe * 4) for r in ranks]


@functools.cache
def trace() -> list[int]:
    return zipf_trace(ZIPF_OPS, UNIVERSE)


ZIPF_OPS = 200_000


def cold_hit_ratio(get: Get, put: Set, keys: list[Any]) -> float:
    """Hit ratio of one pass over the trace, starting from an empty cache."""
    hits = lookups = 0
    for i, k in enumerate(keys):
        if i % 10 == 9:
            put(k, k)
            continue
        lookups += 1
        if get(k) is None:
            put(k, k)
        else:
            hits += 1
    return hits / lookups


@pytest.mark.parametrize("kind", ["int", "str"])
@pytest.mark.parametrize("impl", [i for i in IMPLS if not i.startswith("dict")] + ["lru_cache"])
def test_zipf_mix(benchmark: Any, impl: str, kind: str) -> None:
    """90% reads / 10% writes over a Zipf(1.0) trace; a read miss loads the key."""
    benchmark.group = f"cache zipf 90/10 {kind}"
    benchmark.extra_info["ops"] = ZIPF_OPS
    keys = trace() if kind == "int" else [f"user:{k}" for k in trace()]

    if impl == "lru_cache":

        @functools.lru_cache(maxsize=CAPACITY)
        def load(k: Any) -> Any:
            return k

        for k in keys:
            load(k)
        info = load.cache_info()
        benchmark.extra_info["hit_ratio"] = round(info.hits / (info.hits + info.misses), 4)

        def run_lru() -> None:
            for k in keys:
                load(k)  # lru_cache has no separate write path

        benchmark(run_lru)
        return

    get, put, _ = IMPLS[impl]()
    benchmark.extra_info["hit_ratio"] = round(cold_hit_ratio(get, put, keys), 4)

    def run() -> None:
        for i, k in enumerate(keys):
            if i % 10 == 9 or get(k) is None:
                put(k, k)

    benchmark(run)


def _dict_get_or_set() -> Callable[[Any, Callable[[], Any]], Any]:
    """A dict behind a lock, the factory run outside it: the usual hand-written
    get-or-compute (no single-flight: concurrent misses of one key all compute)."""
    d: dict[Any, Any] = {}
    lock = threading.Lock()
    missing = object()

    def get_or_set(k: Any, factory: Callable[[], Any]) -> Any:
        with lock:
            v = d.get(k, missing)
        if v is missing:
            v = factory()
            with lock:
                d[k] = v
        return v

    return get_or_set


GET_OR_SET: dict[str, Callable[[], Callable[[Any, Callable[[], Any]], Any]]] = {
    "ferrule": lambda: ferrule.Cache(CAPACITY).get_or_set,
    "dict+lock (no single-flight)": _dict_get_or_set,
}


@pytest.mark.parametrize("case", ["hit", "miss"])
@pytest.mark.parametrize("impl", list(GET_OR_SET))
def test_get_or_set(benchmark: Any, impl: str, case: str) -> None:
    """`get_or_set(key, factory)`: a hit, or a miss that runs the factory and stores."""
    benchmark.group = f"cache get_or_set {case}"
    benchmark.extra_info["ops"] = BATCH
    get_or_set = GET_OR_SET[impl]()
    factory = object
    keys = int_keys(CAPACITY)
    for k in keys:
        get_or_set(k, factory)
    if case == "hit":
        probe = random.Random(7).sample(keys, BATCH)

        def run_hit() -> None:
            for k in probe:
                get_or_set(k, factory)

        benchmark(run_hit)
        return
    fresh = itertools.count(UNIVERSE)

    def setup() -> tuple[tuple[list[Any]], dict[str, Any]]:
        return (int_keys(BATCH, offset=next(fresh) * BATCH),), {}

    def run_miss(batch: list[Any]) -> None:
        for k in batch:
            get_or_set(k, factory)

    benchmark.pedantic(run_miss, setup=setup, rounds=20, iterations=1)


@pytest.mark.parametrize("case", ["hit", "miss"])
@pytest.mark.parametrize("impl", ["ferrule.cached", "functools.lru_cache"])
def test_get_or_set_decorator(benchmark: Any, impl: str, case: str) -> None:
    """A memoised one-argument function: `ferrule.cached` (single-flight through
    get_or_set on a miss) beside `functools.lru_cache`."""
    benchmark.group = f"cache get_or_set decorator {case}"
    benchmark.extra_info["ops"] = BATCH
    deco = ferrule.cached(CAPACITY) if impl == "ferrule.cached" else functools.lru_cache(CAPACITY)

    @deco
    def load(k: int) -> int:
        return k

    keys = int_keys(CAPACITY)
    for k in keys:
        load(k)
    if case == "hit":
        probe = random.Random(7).sample(keys, BATCH)

        def run_hit() -> None:
            for k in probe:
                load(k)

        benchmark(run_hit)
        return
    fresh = itertools.count(UNIVERSE)

    def setup() -> tuple[tuple[list[Any]], dict[str, Any]]:
        return (int_keys(BATCH, offset=next(fresh) * BATCH),), {}

    def run_miss(batch: list[Any]) -> None:
        for k in batch:
            load(k)

    benchmark.pedantic(run_miss, setup=setup, rounds=20, iterations=1)
