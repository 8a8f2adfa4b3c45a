"""Cache eviction policies: `policy="tinylfu"` (W-TinyLFU) beside the default `"lru"`.

What the policy changes is which entry a full cache gives up; everything else (bounds,
TTL and time to idle, weights, the listener's causes, the counters, key semantics) is
the same for both, and is pinned here for TinyLFU where it differs in mechanism. The
hostile-key tests of test_cache.py and the threaded invariants of test_cache_threads.py
run with both policies.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import pytest
from ferrule import Cache, ManualClock

from tests.conftest import run_threads

POLICIES = ["lru", "tinylfu"]


def load(c: Cache, k: object) -> bool:
    """A read, and a write on a miss: a cache in front of a loader. True on a hit."""
    if c.get(k) is None:
        c.set(k, k)
        return False
    return True


# ---- construction --------------------------------------------------------------------


def test_policy_property_and_repr() -> None:
    assert Cache(10).policy == "lru"
    assert Cache(10, policy="lru").policy == "lru"
    c = Cache(10, policy="tinylfu", shards=1)
    assert c.policy == "tinylfu"
    assert repr(c) == "Cache(max_size=10, ttl=None, shards=1, policy='tinylfu')"
    assert repr(Cache(10, policy="lru")) == "Cache(max_size=10, ttl=None, shards=1)"


@pytest.mark.parametrize(
    ("policy", "exc", "msg"),
    [
        ("lfu", ValueError, "policy must be 'lru' or 'tinylfu', not 'lfu'"),
        ("LRU", ValueError, "policy must be 'lru' or 'tinylfu', not 'LRU'"),
        ("", ValueError, "policy must be 'lru' or 'tinylfu', not ''"),
        (None, TypeError, "policy must be a str, not 'NoneType'"),
        (1, TypeError, "policy must be a str, not 'int'"),
        (b"lru", TypeError, "policy must be a str, not 'bytes'"),
    ],
)
def test_bad_policy_names_the_argument(policy: object, exc: type, msg: str) -> None:
    with pytest.raises(exc, match=msg):
        Cache(10, policy=policy)  # type: ignore[arg-type]


def test_a_str_subclass_names_a_policy() -> None:
    class Name(str):
        pass

    assert Cache(10, policy=Name("tinylfu")).policy == "tinylfu"


# ---- what the policy decides -----------------------------------------------------------


def test_frequent_entries_survive_a_scan_that_flushes_lru() -> None:
    # Int keys hash the same in every process, so the sketch's collisions (which can
    # let a rare scan key look as frequent as a hot one) are the same in every run.
    kept = {}
    for policy in POLICIES:
        c = Cache(1000, policy=policy, shards=1)
        hot = range(500)
        for _ in range(8):
            for k in hot:
                load(c, k)
        for i in range(10_000):  # a one-pass scan, ten times the cache
            load(c, 10**6 + i)
        kept[policy] = sum(k in c for k in hot)
        assert len(c) == 1000
    assert kept["lru"] == 0
    assert kept["tinylfu"] >= 495, kept


def test_one_hit_wonders_do_not_evict_hot_entries() -> None:
    c = Cache(1000, policy="tinylfu", shards=1)
    hot = list(range(1000))
    for _ in range(8):
        for k in hot:
            load(c, k)
    for i in range(5000):
        c.set(10**6 + i, i)
    # (A few wonders whose counters the sketch shares with hot keys look hot too.)
    assert sum(k in c for k in hot) >= 985
    assert 10**6 + 4999 in c, "the newest entry waits in the admission window"
    st = c.stats()
    assert (st.size, st.evictions, st.inserts) == (1000, 5000, 6000)


def test_a_new_entry_read_while_in_the_window_is_admitted() -> None:
    c = Cache(100, policy="tinylfu", shards=1)
    for _ in range(3):
        for k in range(100):
            load(c, k)
    c["new"] = 1
    for _ in range(5):
        assert c["new"] == 1
    c["next"] = 2  # pushes "new" out of the window: more frequent than its victim
    assert c["new"] == 1
    assert len(c) == 100


def test_zipf_hit_ratio_beats_lru() -> None:
    """A quick behavioural check; benches/hit_ratio.py measures it properly."""
    rng = random.Random(3)
    universe = 20_000
    weights = [1 / r for r in range(1, universe + 1)]
    trace = rng.choices(range(universe), weights=weights, k=60_000)
    ratios = {}
    for policy in POLICIES:
        c = Cache(500, policy=policy, shards=1)
        ratios[policy] = sum(load(c, k) for k in trace) / len(trace)
        assert c.stats().hit_ratio == pytest.approx(ratios[policy])
    assert ratios["tinylfu"] > ratios["lru"] + 0.03, ratios


def test_evictions_by_admission_are_size_evictions() -> None:
    """A candidate the frequency filter refuses leaves like any entry pushed out by the
    bound: cause "size", counted in `evictions`, never in `rejected`."""
    events: list[tuple[Any, str]] = []
    c = Cache(
        100, policy="tinylfu", shards=1, on_evict=lambda k, v, cause: events.append((k, cause))
    )
    for _ in range(3):
        for k in range(100):
            load(c, k)
    for i in range(50):
        c[f"cold{i}"] = i
    assert len(events) == 50
    assert {cause for _, cause in events} == {"size"}
    assert sum(str(k).startswith("cold") for k, _ in events) >= 48
    st = c.stats()
    assert (st.evictions, st.rejected, st.size) == (50, 0, 100)


# ---- the same semantics as lru ---------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_ttl_with_a_manual_clock(policy: str) -> None:
    clock = ManualClock()
    c = Cache(100, ttl=1.0, clock=clock, policy=policy)
    for k in range(150):
        load(c, k)
    assert len(c) == 100
    c.set("short", 1, ttl=0.5)
    clock.advance(0.5)
    assert "short" not in c and c.get("short") is None
    clock.advance(0.49)
    assert len(c) > 0
    clock.advance(0.01)
    assert len(c) == 0
    st = c.stats()
    assert st.expirations >= 100 and st.size == 0


@pytest.mark.parametrize("policy", POLICIES)
def test_a_full_cache_drops_expired_entries_before_live_ones(policy: str) -> None:
    clock = ManualClock()
    c = Cache(10, clock=clock, policy=policy, shards=1)
    for k in range(10):
        for _ in range(4):
            load(c, k)
    c.set(3, "soon", ttl=1.0)
    clock.advance(1.0)
    c["new"] = 1
    assert 3 not in c and all(k in c for k in range(10) if k != 3) and "new" in c
    assert (c.stats().expirations, c.stats().evictions) == (1, 0)


@pytest.mark.parametrize("policy", POLICIES)
def test_tti_expires_unread_entries(policy: str) -> None:
    clock = ManualClock()
    c = Cache(10, tti=1.0, clock=clock, policy=policy)
    c["a"], c["b"] = 1, 2
    clock.advance(0.9)
    assert c["a"] == 1
    clock.advance(0.2)
    assert c.get("b") is None and c["a"] == 1


@pytest.mark.parametrize("policy", POLICIES)
def test_weigher_bounds_the_total_weight(policy: str) -> None:
    events: list[tuple[Any, str]] = []
    c = Cache(
        100,
        weigher=lambda k, v: len(v),
        policy=policy,
        shards=1,
        on_evict=lambda k, v, cause: events.append((k, cause)),
    )
    rng = random.Random(5)
    for _ in range(2000):
        k = rng.randrange(300)
        if rng.random() < 0.5:
            c.get(k)
        else:
            c[k] = "x" * rng.choice([0, 1, 3, 10, 40, 99])
        assert c.stats().weight <= 100
    c["big"] = "y" * 101
    assert "big" not in c and c.stats().rejected == 1
    c["heavy"] = "z" * 90  # heavier than the window: still stored, others make room
    assert c["heavy"] == "z" * 90
    st = c.stats()
    assert st.weight == sum(len(v) for v in c.values()) <= 100
    assert st.evictions == sum(cause == "size" for _, cause in events)


@pytest.mark.parametrize("policy", POLICIES)
def test_on_evict_causes(policy: str) -> None:
    clock = ManualClock()
    events: list[tuple[Any, Any, str]] = []
    c = Cache(
        2,
        clock=clock,
        policy=policy,
        shards=1,
        on_evict=lambda k, v, cause: events.append((k, v, cause)),
    )
    c["a"] = 1
    c["a"] = 2
    c.set("b", 3, ttl=1.0)
    clock.advance(1.0)
    c["c"] = 4  # b expired: it goes first
    c["d"] = 5  # full: one of a and c goes
    (other,) = [k for k in c if k != "d"]
    del c[other]
    c.clear()
    assert [cause for _, _, cause in events] == [
        "replaced",
        "expired",
        "size",
        "deleted",
        "deleted",
    ]
    assert events[0][:2] == ("a", 1) and events[1][:2] == ("b", 3)


# ---- threads ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_operations_from_threads_keep_the_books(
    threads: int, stress_scale: int, policy: str
) -> None:
    """8 threads of mixed operations on a small sharded cache: `len` never exceeds
    max_size; every value that entered is either still there or was reported exactly
    once (no lost entries); and the counters agree with the reports."""
    max_size = 200
    clock = ManualClock()
    lock = threading.Lock()
    reports: Counter[int] = Counter()
    causes: Counter[str] = Counter()

    def on_evict(k: object, v: tuple[int, int], cause: str) -> None:
        with lock:
            reports[v[1]] += 1
            causes[cause] += 1

    c = Cache(max_size, shards=4, clock=clock, policy=policy, on_evict=on_evict)
    stop = threading.Event()
    errors: list[str] = []

    def watcher() -> None:
        while not stop.is_set():
            if (n := len(c)) > max_size:
                errors.append(f"len {n} > {max_size}")

    def body(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(4000 * stress_scale):
            # Skewed: half the accesses on a few hot keys, half spread over 1000.
            k = int(rng.paretovariate(1.0)) if rng.random() < 0.5 else rng.randrange(1000)
            v = (k, seed * 10_000_000 + i)  # unique
            r = rng.random()
            if r < 0.45:
                got = c.get(k)
                if got is not None and got[0] != k:
                    errors.append(f"{k} gave {got}")
            elif r < 0.75:
                c.set(k, v, ttl=0.5 if r < 0.5 else None)
            elif r < 0.85:
                c.get_or_set(k, lambda v=v: v)
            elif r < 0.9:
                c.pop(k, None)
            elif r < 0.95 and seed == 0:
                clock.advance(0.01)
            else:
                _ = k in c

    w = threading.Thread(target=watcher)
    w.start()
    try:
        run_threads(threads, body)
    finally:
        stop.set()
        w.join()
    assert errors == []
    # One entry expires whatever the schedule was (the clock may have moved first).
    c.set(-1, (-1, -1), ttl=0.5)
    clock.advance(1.0)
    st = c.stats()  # reclaims what expired first
    left = [v[1] for v in c.values()]
    assert st.size == len(left) <= max_size
    assert st.inserts == sum(reports.values()) + len(left)
    assert not set(left) & set(reports), "a value both reported and still there"
    assert max(reports.values()) == 1, "a value reported twice"
    assert st.evictions == causes["size"] > 0
    assert st.expirations == causes["expired"] > 0
