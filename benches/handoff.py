"""What a hand-off to another thread costs when that thread holds the GIL for a while.

One thread sets an Event, another runs ``work`` and sets a second Event back; printed is
the wall time per round trip minus the time spent in ``work`` (the hand-off's own cost),
for a worker that spins in Python (holding the GIL) and one that sleeps (releasing it)
for about the same time. ``HealthMonitor.check_now()`` pays this once per round
(docs/guide/health.md, Performance).

    .venv/bin/python benches/handoff.py
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

ROUNDS = 1000
SPAN = 170e-6


def spin() -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < SPAN:
        pass
    return time.perf_counter() - t0


def sleep() -> float:
    t0 = time.perf_counter()
    time.sleep(SPAN)
    return time.perf_counter() - t0


def nothing() -> float:
    return 0.0


def overhead(work: Callable[[], float]) -> float:
    """Microseconds per round trip beyond ``work`` itself."""
    go, back = threading.Event(), threading.Event()
    inside: list[float] = []

    def worker() -> None:
        for _ in range(ROUNDS):
            go.wait()
            go.clear()
            inside.append(work())
            back.set()

    t = threading.Thread(target=worker)
    t.start()
    t0 = time.perf_counter()
    for _ in range(ROUNDS):
        go.set()
        back.wait()
        back.clear()
    wall = time.perf_counter() - t0
    t.join()
    return (wall - sum(inside)) / ROUNDS * 1e6


def main() -> None:
    for work in (nothing, spin, sleep, spin, sleep):
        print(f"worker {work.__name__:7s}: hand-off {overhead(work):6.1f} us per round trip")


if __name__ == "__main__":
    main()
