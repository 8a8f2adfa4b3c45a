"""Threaded stress: Pool's bound holds under many threads, with validation failures and
discards."""

from __future__ import annotations

import random
import threading

from ferrule import Discard, Pool

from tests.conftest import run_threads


def test_pool_bound_under_threads(threads: int, stress_scale: int) -> None:
    max_size = 3
    lock = threading.Lock()
    live = 0
    peak_live = 0
    out = 0
    peak_out = 0

    class Item:
        def __init__(self) -> None:
            nonlocal live, peak_live
            with lock:
                live += 1
                peak_live = max(peak_live, live)

        def close(self) -> None:
            nonlocal live
            with lock:
                live -= 1

    pool = Pool(Item, max_size=max_size, validate=lambda it: random.random() > 0.05)

    def body(i: int) -> None:
        nonlocal out, peak_out
        rnd = random.Random(i)
        for _ in range(1000 * stress_scale):
            try:
                with pool.acquire(timeout=30):
                    with lock:
                        out += 1
                        peak_out = max(peak_out, out)
                        assert out <= max_size
                    with lock:
                        out -= 1
                    if rnd.random() < 0.05:
                        raise Discard
            except Discard:
                pass

    run_threads(max(threads, 16), body)
    s = pool.stats()
    assert peak_live <= max_size
    assert peak_out <= max_size
    assert (s.in_use, s.waiting) == (0, 0)
    assert s.size == live <= max_size
    assert s.created - s.discarded == s.size
    pool.close()
    assert live == 0
