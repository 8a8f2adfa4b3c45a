"""RateLimiter under real concurrency: no over-admission, no false refusals."""

from __future__ import annotations

import threading
import time

from ferrule import ManualClock, RateLimiter


def hammer(n_threads: int, body: object) -> list[int]:
    """Runs body(i) -> int on n_threads threads started together; returns the results."""
    barrier = threading.Barrier(n_threads)
    results = [0] * n_threads

    def run(i: int) -> None:
        barrier.wait()
        results[i] = body(i)  # type: ignore[operator]

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def test_frozen_clock_grants_exactly_the_burst_then_exactly_the_refill(threads: int) -> None:
    clock = ManualClock()
    rl = RateLimiter(1000, burst=1000, clock=clock)

    def body(_: int) -> int:
        return sum(rl.try_acquire("k") for _ in range(400))

    # Demand (threads * 400) exceeds supply: exactly the supply is granted, so nothing
    # was over-admitted and nothing falsely refused.
    assert sum(hammer(threads, body)) == 1000
    clock.advance(0.25)
    assert sum(hammer(threads, body)) == 250
    clock.advance(0.0125)
    assert sum(hammer(threads, body)) == 12


def test_costs_under_contention_are_exact(threads: int) -> None:
    clock = ManualClock()
    rl = RateLimiter(100, burst=100, clock=clock)

    def body(i: int) -> int:
        cost = 1 + i % 3
        return sum(cost for _ in range(200) if rl.try_acquire(None, cost))

    granted = sum(hammer(threads, body))
    # Tokens are only ever granted whole; a refusal leaves at most 2 (the largest cost - 1).
    assert 98 <= granted <= 100
    assert rl.peek() == 100 - granted


def test_real_clock_never_over_admits_one_key(threads: int, stress_scale: int) -> None:
    rate, burst, run_for = 2000.0, 20, 0.3 * stress_scale
    rl = RateLimiter(rate, burst=burst)
    start = time.monotonic()

    def body(_: int) -> int:
        n = 0
        end = time.monotonic() + run_for
        while time.monotonic() < end:
            n += rl.try_acquire("hot")
        return n

    granted = sum(hammer(threads, body))
    elapsed = time.monotonic() - start
    assert granted <= burst + rate * elapsed
    # The key was hammered all along, so the whole burst and most of the refill went out.
    assert granted >= burst


def test_grants_stay_exact_while_full_buckets_are_swept(threads: int) -> None:
    """Every round starts with all buckets full (removable) on a frozen clock, and a
    sweeper runs throughout: each key must still grant exactly its burst per round. A
    removal that dropped a bucket just after a grant would let a fresh bucket grant again."""
    clock = ManualClock()
    rl = RateLimiter(10, burst=3, clock=clock)
    keys = [("k", i) for i in range(64)]
    for _ in range(5):
        stop = threading.Event()

        def sweep(stop: threading.Event) -> None:
            while not stop.is_set():
                rl.sweep()

        sweeper = threading.Thread(target=sweep, args=(stop,))
        sweeper.start()

        def body(i: int) -> int:
            return sum(rl.try_acquire(keys[(j + 7 * i) % 64]) for j in range(64 * 6))

        try:
            granted = sum(hammer(threads, body))
        finally:
            stop.set()
            sweeper.join()
        assert granted == 3 * 64
        assert all(rl.peek(k) == 0 for k in keys)
        clock.advance(1.0)
    assert rl.sweep() == 64
    assert len(rl) == 0


def test_distinct_keys_with_concurrent_sweeps(threads: int) -> None:
    clock = ManualClock()
    rl = RateLimiter(10, burst=10, clock=clock)

    def body(i: int) -> int:
        n = 0
        for j in range(2_000):
            n += rl.try_acquire(("t", i, j % 50))
            if j % 101 == 0:
                rl.sweep()
        return n

    # Each thread's 50 keys hold 10 tokens each, and the clock is frozen.
    assert hammer(threads, body) == [500] * threads
    clock.advance(1.0)
    assert rl.sweep() == 50 * threads
    assert len(rl) == 0
