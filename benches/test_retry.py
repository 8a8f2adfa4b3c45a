"""Overhead of a retried call that succeeds at once: retry vs tenacity, with a plain call
as the floor.

Each round makes N calls, so the figures are per N calls; compare within a group.

    .venv/bin/python -m pytest benches/test_retry.py --benchmark-only \\
        --benchmark-columns=min,median,ops -q
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import ferrule
import pytest

N = 1000


def target(x: int = 1) -> int:
    return x


def loop(call: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(N):
            call()

    return run


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(1234)


# ---- retry: a decorated call that succeeds at once -------------------------------------


@pytest.mark.benchmark(group="retry: decorated f, succeeds")
def test_retry_floor_direct_call(benchmark: Any) -> None:
    benchmark(loop(target))


@pytest.mark.benchmark(group="retry: decorated f, succeeds")
def test_retry_ferrule(benchmark: Any) -> None:
    f = ferrule.retry(attempts=3, backoff=0.1, max_backoff=10.0)(target)
    benchmark(loop(f))


@pytest.mark.benchmark(group="retry: decorated f, succeeds")
def test_retry_ferrule_with_deadline(benchmark: Any) -> None:
    f = ferrule.retry(attempts=3, backoff=0.1, max_backoff=10.0, deadline=5.0)(target)
    benchmark(loop(f))


@pytest.mark.benchmark(group="retry: decorated f, succeeds")
def test_retry_tenacity(benchmark: Any) -> None:
    tenacity = pytest.importorskip("tenacity")
    f = tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=10.0),
        reraise=True,
    )(target)
    benchmark(loop(f))


# ---- retry: the call form, a call that succeeds at once -------------------------------


@pytest.mark.benchmark(group="retry: policy.call(f), succeeds")
def test_call_floor_direct_call(benchmark: Any) -> None:
    benchmark(loop(target))


@pytest.mark.benchmark(group="retry: policy.call(f), succeeds")
def test_call_ferrule(benchmark: Any) -> None:
    policy = ferrule.retry(attempts=3, backoff=0.1, max_backoff=10.0)
    benchmark(loop(lambda: policy.call(target)))


@pytest.mark.benchmark(group="retry: policy.call(f), succeeds")
def test_call_tenacity(benchmark: Any) -> None:
    tenacity = pytest.importorskip("tenacity")
    policy = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=10.0),
        reraise=True,
    )
    benchmark(loop(lambda: policy(target)))
