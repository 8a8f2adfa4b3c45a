"""ErrorStore benchmark: ferrule beside the usual dict + Lock + deque store.

Every benchmark runs a batch of BATCH operations per call, so the per-operation cost is
the reported time / BATCH. Run for real (release build) with:

    .venv/bin/python -m pytest benches/test_error_store.py --benchmark-only \
        --benchmark-columns=min,median,ops -q

Group: ``errorstore record`` (storing an error for one of 1000 agents).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import ferrule
import pytest

BATCH = 10_000

AGENTS = [f"agent-{i}" for i in range(1000)]


class _DictLockDeque:
    """The usual hand-rolled store: one lock, a dict of bounded deques (no ages)."""

    def __init__(self, max_per_agent: int) -> None:
        self.lock = threading.Lock()
        self.d: dict[str, deque[tuple[object, float]]] = {}
        self.max = max_per_agent

    def record(self, agent_id: str, error: object) -> bool:
        now = time.monotonic()
        with self.lock:
            q = self.d.get(agent_id)
            if q is None:
                q = self.d[agent_id] = deque(maxlen=self.max)
            q.append((error, now))
        return True


STORES: dict[str, Callable[[], Callable[[str, object], bool]]] = {
    "ferrule ErrorStore.record": lambda: ferrule.ErrorStore(max_per_agent=100).record,
    "dict + Lock + deque": lambda: _DictLockDeque(100).record,
}


@pytest.mark.parametrize("impl", list(STORES))
def test_error_store_record(benchmark: Any, impl: str) -> None:
    benchmark.group = "errorstore record"
    benchmark.extra_info["ops"] = BATCH
    record = STORES[impl]()
    rng = random.Random(3)
    work = [(rng.choice(AGENTS), ValueError(i)) for i in range(BATCH)]

    def run() -> None:
        for a, e in work:
            record(a, e)

    benchmark(run)
