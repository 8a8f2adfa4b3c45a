"""Demo step: the RateLimiter."""

from __future__ import annotations

import threading
import time

import ferrule
from ferrule._demos import rate


def run() -> None:
    print("== RateLimiter: keyed GCRA token buckets, one atomic word per key")
    clock = ferrule.ManualClock()
    rl = ferrule.RateLimiter(10, per=1.0, clock=clock)
    granted = sum(rl.try_acquire("user:1") for _ in range(11))
    d = rl.check("user:1")
    print(f"  rate 10/s, burst 10: {granted} of 11 granted at t=0; then {d}")
    clock.advance(0.1)
    print(f"  0.1 s later: try_acquire -> {rl.try_acquire('user:1')}")

    for i in range(10_000):
        rl.try_acquire(("tenant", i))
    before = len(rl)
    clock.advance(10.0)
    for i in range(10_000, 20_000):
        rl.try_acquire(("tenant", i))
    print(
        f"  10k keys, then 10 s later 10k new keys: {len(rl)} tracked (was {before}); "
        f"sweep() dropped {rl.sweep()} more"
    )

    hot = ferrule.RateLimiter(1000, burst=100)
    barrier = threading.Barrier(8)
    counts = [0] * 8
    start = time.monotonic()

    def worker(i: int) -> None:
        barrier.wait()
        end = time.monotonic() + 0.2
        n = 0
        while time.monotonic() < end:
            n += hot.try_acquire("hot")
        counts[i] = n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    print(
        f"  8 threads hammering one key for 0.2 s: granted {sum(counts)}, "
        f"allowed {100 + 1000 * elapsed:.0f} (burst + rate * elapsed)"
    )

    n = 300_000
    fast = ferrule.RateLimiter(1e9)
    attempt = fast.try_acquire
    keys = [f"user:{i % 1000}" for i in range(n)]
    t0 = time.perf_counter()
    for k in keys:
        attempt(k)
    t1 = time.perf_counter()
    print(f"  {n} try_acquire over 1000 keys: {rate(n, t1 - t0)}")
