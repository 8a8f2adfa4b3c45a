"""Threaded stress: budgets never over their limit and never leaked, expiry under
contention, pressure events consistent."""

from __future__ import annotations

import random
import threading
from typing import Any

from ferrule import ManualClock, PoolTimeout, ResourceManager

from tests.conftest import run_threads


class ChainBus:
    """Records pressure events per name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []

    def publish(self, signal_type: str, data: dict[str, Any]) -> int:
        assert signal_type == f"resource.{data['name']}.pressure"
        assert data["pressure"] != data["previous"]
        with self.lock:
            self.events.append(data)
        return 1


def test_budget_never_over_limit_never_leaked(threads: int, stress_scale: int) -> None:
    bus = ChainBus()
    limit = 7
    rm = ResourceManager({"x": limit}, bus=bus)
    held = 0
    peak = 0
    lock = threading.Lock()

    def body(i: int) -> None:
        nonlocal held, peak
        rnd = random.Random(i)
        for _ in range(2000 * stress_scale):
            amount = rnd.randint(1, 3)
            lease = rm.acquire("x", amount, timeout=30)
            with lock:
                held += amount
                peak = max(peak, held)
                assert held <= limit
            assert rm.usage()["x"].used <= limit
            with lock:
                held -= amount
            if rnd.random() < 0.5:
                lease.release()
            else:
                del lease  # released when collected

    run_threads(threads, body)
    assert rm.usage()["x"].used == 0
    assert peak <= limit
    # Every change leaves one level and enters another; publish calls from different
    # threads may interleave, but the changes net out to a chain from normal to normal.
    counts = {"normal": 0, "moderate": 0, "severe": 0}
    for e in bus.events:
        counts[e["pressure"]] += 1
        counts[e["previous"]] -= 1
    assert counts == {"normal": 0, "moderate": 0, "severe": 0}
    assert rm.pressure("x") == "normal"


def test_release_races_with_expiry_exactly_once(threads: int, stress_scale: int) -> None:
    clock = ManualClock()
    rm = ResourceManager({"x": 1000}, clock=clock)
    leases = [rm.acquire("x", 1, ttl=1.0) for _ in range(500)]
    assert rm.usage()["x"].used == 500

    def body(i: int) -> None:
        if i == 0:
            clock.advance(1.0)
        for j, lease in enumerate(leases):
            if (i + j) % 2:
                lease.release()
            else:
                rm.usage()  # reclaims expired leases

    run_threads(threads, body)
    u = rm.usage()["x"]
    assert u.used == 0, u
    assert all(lease.released for lease in leases)


def test_mixed_budgets_with_ttl_and_timeouts(threads: int, stress_scale: int) -> None:
    rm = ResourceManager({"a": 3, "b": 5})
    timeouts = 0
    lock = threading.Lock()

    def body(i: int) -> None:
        nonlocal timeouts
        rnd = random.Random(100 + i)
        for _ in range(200 * stress_scale):
            name = rnd.choice("ab")
            try:
                lease = rm.acquire(name, rnd.randint(1, 2), timeout=0.2, ttl=0.001)
            except PoolTimeout:
                with lock:
                    timeouts += 1
                continue
            if rnd.random() < 0.7:
                lease.release()
            # else: left to expire (ttl) or to be collected

    run_threads(threads, body)
    usage = rm.usage()
    assert usage["a"].used <= 3 and usage["b"].used <= 5
