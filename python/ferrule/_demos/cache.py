"""Demo step: the Cache."""

from __future__ import annotations

import threading
import time

import ferrule
from ferrule._demos import rate


def run() -> None:
    print("== Cache: sharded LRU with TTL and single-flight get_or_set")
    clock = ferrule.ManualClock()
    cache = ferrule.Cache(3, ttl=10.0, clock=clock)
    for name in "abc":
        cache[name] = name.upper()
    cache.get("a")  # a is now the most recently used
    cache["d"] = "D"  # evicts b, the least recently used
    print(f"  after a hit on 'a' and inserting 'd': keys={sorted(cache.keys())}")
    clock.advance(10.0)
    print(f"  10 s later (ttl=10): len={len(cache)}, 'a' in cache: {'a' in cache}")

    calls = []
    barrier = threading.Barrier(8)
    shared = ferrule.Cache(100)

    def load() -> str:
        calls.append(1)
        time.sleep(0.05)
        return "loaded"

    def worker() -> None:
        barrier.wait()
        shared.get_or_set("config", load)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"  8 threads asked for one missing key at once: the factory ran {len(calls)} time(s)")

    n = 200_000
    big = ferrule.Cache(100_000)
    keys = list(range(n))
    t0 = time.perf_counter()
    for k in keys:
        big[k] = k
    t1 = time.perf_counter()
    get = big.get
    for k in keys:
        get(k)
    t2 = time.perf_counter()
    st = big.stats()
    print(
        f"  {n} sets: {rate(n, t1 - t0)}; {n} gets: {rate(n, t2 - t1)}; "
        f"size={st.size}/{st.max_size}, evictions={st.evictions}, hits={st.hits}"
    )
