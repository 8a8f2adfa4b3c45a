"""Metrics under real concurrency: exact counts, flat memory."""

from __future__ import annotations

import threading

from ferrule import ManualClock, Metrics

from tests.conftest import run_threads


def test_concurrent_recording_counts_are_exact(threads: int, stress_scale: int) -> None:
    m = Metrics(window=3600.0)
    per = 20_000 * stress_scale

    def body(i: int) -> None:
        rec = m.record
        for n in range(per):
            rec("shared", 1e-4 * (n % 50 + 1), n % 10 != 0)
            if n % 4 == 0:
                rec(f"own-{i}", 2e-3, ok=False)

    run_threads(threads, body)
    s = m.snapshot("shared")
    assert s.count == threads * per
    assert s.errors == threads * (per // 10)
    assert s.max == 5e-3
    for i in range(threads):
        own = m.snapshot(f"own-{i}")
        assert (own.count, own.errors) == (per // 4, per // 4)
    assert len(m.ops()) == threads + 1


def test_concurrent_recording_while_the_window_moves(threads: int) -> None:
    # One thread moves the clock a slot at a time while the others record with timers:
    # every recording lands in some slot, so after the last move nothing older than the
    # window is visible and the whole window holds at most what was recorded.
    clock = ManualClock()
    m = Metrics(window=1.0, clock=clock)
    stop = threading.Event()
    recorded = [0] * threads

    def mover() -> None:
        for _ in range(200):
            clock.advance(0.05)
        stop.set()

    def body(i: int) -> None:
        if i == 0:
            mover()
            return
        while not stop.is_set():
            with m.time("op"):
                pass
            recorded[i] += 1

    run_threads(threads, body)
    total = sum(recorded)
    assert 0 <= m.snapshot("op").count <= total
    m.record("op", 0.0)  # same time as the last reading: in the window
    clock.advance(1.0)
    assert m.snapshot("op").count == 0


def test_memory_is_flat_after_millions_of_recordings() -> None:
    def rss_kib() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4

    clock = ManualClock()
    m = Metrics(window=10.0, clock=clock)
    rec = m.record
    for i in range(100_000):
        rec("op", (i % 1000) * 1e-5, i % 7 != 0)
    before = rss_kib()
    for _step in range(20):
        clock.advance(0.7)  # rotate through the ring many times
        for i in range(100_000):
            rec("op", (i % 1000) * 1e-5, i % 7 != 0)
    after = rss_kib()
    assert after - before < 2048, f"RSS grew by {after - before} KiB"
    assert m.snapshot("op").count <= 15 * 100_000
    assert m.ops() == ["op"]
