"""The counters of ``RateLimiter.stats()``, ``SignalBus.stats()`` and ``ErrorStore.stats()``:
what each call counts, that nothing is counted twice or lost under threads, and that
they only grow."""

from __future__ import annotations

import asyncio
import itertools
import threading

import ferrule
import pytest
from ferrule import BusStats, ErrorStoreStats, LimiterStats, ManualClock, RateLimiter


def _run_threads(n: int, target: object) -> None:
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        target(i)  # type: ignore[operator]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- RateLimiter ---------------------------------------------------------------------


def test_try_acquire_and_check_each_count_one_decision() -> None:
    rl = RateLimiter(2, clock=ManualClock())
    assert [rl.try_acquire("a") for _ in range(3)] == [True, True, False]
    assert rl.check("b").allowed
    assert not rl.check("a").allowed
    s = rl.stats()
    assert isinstance(s, LimiterStats)
    assert (s.allowed, s.denied, s.keys) == (3, 2, 2)
    assert repr(s) == "LimiterStats(allowed=3, denied=2, keys=2)"


def test_a_waiting_acquire_counts_its_outcome_once() -> None:
    # With a ManualClock time does not pass, so the acquire naps until its real timeout:
    # several decisions inside, one denial counted.
    rl = RateLimiter(1, clock=ManualClock())
    assert rl.acquire("k")
    assert not rl.acquire("k", timeout=0.12)
    assert (rl.stats().allowed, rl.stats().denied) == (1, 1)


def test_acquire_async_counts_its_outcome_once() -> None:
    clock = ManualClock()
    rl = RateLimiter(1, clock=clock)

    async def main() -> tuple[bool, bool]:
        first = await rl.acquire_async("k")
        refused = await rl.acquire_async("k", timeout=0.12)
        return first, refused

    assert asyncio.run(main()) == (True, False)
    assert (rl.stats().allowed, rl.stats().denied) == (1, 1)


def test_a_refused_limit_block_counts_one_denial() -> None:
    rl = RateLimiter(1, clock=ManualClock())
    with rl.limit("k"):
        pass
    with pytest.raises(ferrule.RateLimited), rl.limit("k", timeout=0.0):
        pass
    assert (rl.stats().allowed, rl.stats().denied) == (1, 1)


def test_several_limits_are_counted_too() -> None:
    rl = RateLimiter(limits=[(1, 1.0), (5, 60.0)], clock=ManualClock())
    assert rl.try_acquire("k") and not rl.try_acquire("k")
    assert (rl.stats().allowed, rl.stats().denied) == (1, 1)


def test_rejected_arguments_count_nothing() -> None:
    rl = RateLimiter(1, clock=ManualClock())
    with pytest.raises(ValueError):
        rl.try_acquire("k", cost=5)
    with pytest.raises(TypeError):
        rl.try_acquire(["unhashable"])
    assert (rl.stats().allowed, rl.stats().denied) == (0, 0)


def test_limiter_counts_every_decision_from_many_threads() -> None:
    rl = RateLimiter(50, clock=ManualClock())
    per_thread = 2_000
    granted = [0] * 8

    def work(i: int) -> None:
        for n in range(per_thread):
            granted[i] += rl.try_acquire((i, n % 7))

    _run_threads(8, work)
    s = rl.stats()
    assert s.allowed + s.denied == 8 * per_thread
    assert s.allowed == sum(granted)


# --- SignalBus -----------------------------------------------------------------------


def test_bus_counts_publishes_offers_and_refusals() -> None:
    bus = ferrule.SignalBus()
    wide = bus.subscribe("job.#")
    narrow = bus.subscribe("job.done", maxsize=1, overflow="reject")
    assert bus.publish("job.done") == 2
    assert bus.publish("job.done") == 1  # narrow is full
    assert bus.publish("nobody.listens") == 0
    with pytest.raises(TypeError):
        bus.publish(42)  # type: ignore[arg-type]
    s = bus.stats()
    assert isinstance(s, BusStats)
    assert (s.published, s.unrouted, s.delivered, s.dropped, s.subscriptions) == (3, 1, 3, 1, 2)
    assert s.delivered == wide.stats().accepted + narrow.stats().accepted
    narrow.cancel()
    wide.cancel()
    after = bus.stats()
    assert (after.delivered, after.dropped, after.subscriptions) == (3, 1, 0)


def test_bus_counts_from_many_publishers() -> None:
    bus = ferrule.SignalBus()
    sub = bus.subscribe("t.*", maxsize=100_000)
    per_thread = 1_000

    def work(i: int) -> None:
        for _ in range(per_thread):
            bus.publish(f"t.{i}")

    _run_threads(8, work)
    s = bus.stats()
    assert (s.published, s.delivered, s.dropped) == (8 * per_thread,) * 2 + (0,)
    assert sub.qsize() == 8 * per_thread


# --- ErrorStore ----------------------------------------------------------------------


def test_error_store_counts_records_and_evicted_agents() -> None:
    clock = ManualClock()
    store = ferrule.ErrorStore(max_agents=2, max_age=10.0, clock=clock)
    for agent in ("a", "b", "a", "c", "d"):
        store.record(agent, ValueError(agent))
    s = store.stats()
    assert isinstance(s, ErrorStoreStats)
    assert (s.recorded, s.agents, s.evicted_agents) == (5, 2, 2)
    clock.advance(11.0)
    store.record("e", ValueError())  # the others expired: room without an eviction
    assert store.stats().evicted_agents == 2
    assert store.stats().recorded == 6


def test_counters_never_go_down_while_threads_work() -> None:
    store = ferrule.ErrorStore(max_agents=16)
    stop = threading.Event()
    seen: list[tuple[int, int]] = []

    def reader() -> None:
        while not stop.is_set():
            s = store.stats()
            seen.append((s.recorded, s.evicted_agents))

    r = threading.Thread(target=reader)
    r.start()
    try:
        _run_threads(4, lambda i: [store.record(f"{i}-{n}", n) for n in range(2_000)])
    finally:
        stop.set()
        r.join()
    assert all(x[0] <= y[0] and x[1] <= y[1] for x, y in itertools.pairwise(seen))
    assert store.stats().recorded == 8_000
    assert store.stats().evicted_agents == 8_000 - 16
