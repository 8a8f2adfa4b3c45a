"""ResourceManager benchmark, ferrule beside ``threading.BoundedSemaphore``.

Every benchmark runs a batch of BATCH operations per call, so the per-operation cost is
the reported time / BATCH. Run for real (release build) with:

    .venv/bin/python -m pytest benches/test_budget.py --benchmark-only \
        --benchmark-columns=min,median,ops -q --benchmark-json=/tmp/r.json
    .venv/bin/python benches/report.py /tmp/r.json
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import ferrule
import pytest

BATCH = 10_000

# A unit of work: a callable that takes and gives back once.
Take = Callable[[], None]


def _ferrule_budget() -> Take:
    rm = ferrule.ResourceManager({"db": 100})
    acquire = rm.acquire

    def run() -> None:
        acquire("db").release()

    return run


def _ferrule_budget_with() -> Take:
    rm = ferrule.ResourceManager({"db": 100})
    acquire = rm.acquire

    def run() -> None:
        with acquire("db"):
            pass

    return run


def _bounded_semaphore() -> Take:
    sem = threading.BoundedSemaphore(100)
    acquire, release = sem.acquire, sem.release

    def run() -> None:
        acquire()
        release()

    return run


def _bounded_semaphore_with() -> Take:
    sem = threading.BoundedSemaphore(100)

    def run() -> None:
        with sem:
            pass

    return run


BUDGETS: dict[str, Callable[[], Take]] = {
    "ferrule": _ferrule_budget,
    "ferrule (with)": _ferrule_budget_with,
    "threading.BoundedSemaphore": _bounded_semaphore,
    "threading.BoundedSemaphore (with)": _bounded_semaphore_with,
}


@pytest.mark.parametrize("impl", list(BUDGETS))
def test_budget_acquire_release(benchmark: Any, impl: str) -> None:
    benchmark.group = "budget acquire+release, 1 thread"
    benchmark.extra_info["ops"] = BATCH
    one = BUDGETS[impl]()

    def run() -> None:
        for _ in range(BATCH):
            one()

    benchmark(run)
