"""TaskPool beside concurrent.futures.ThreadPoolExecutor.

Run (release build): .venv/bin/python -m pytest benches/test_taskpool.py --benchmark-only
--benchmark-columns=min,median,ops -q
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ferrule
import pytest

TASKS = 200


def _noop(x: int) -> int:
    return x


POOLS: dict[str, Callable[[], Any]] = {
    "ferrule.TaskPool": lambda: ferrule.TaskPool(2, max_queue=2048),
    "ThreadPoolExecutor": lambda: ThreadPoolExecutor(2),
}


@pytest.mark.benchmark(group="pool: submit + result of a trivial task (x200)")
@pytest.mark.parametrize("kind", list(POOLS))
def test_pool_submit_result(benchmark: Any, kind: str) -> None:
    with POOLS[kind]() as pool:
        submit = pool.submit

        def run() -> int:
            total = 0
            for i in range(TASKS):
                total += submit(_noop, i).result()
            return total

        assert benchmark(run) == TASKS * (TASKS - 1) // 2


@pytest.mark.benchmark(group="pool: submit 1000 trivial tasks, then collect the results")
@pytest.mark.parametrize("kind", list(POOLS))
def test_pool_burst(benchmark: Any, kind: str) -> None:
    with POOLS[kind]() as pool:
        submit = pool.submit

        def run() -> int:
            futs = [submit(_noop, i) for i in range(1000)]
            return sum(f.result() for f in futs)

        assert benchmark(run) == 1000 * 999 // 2
