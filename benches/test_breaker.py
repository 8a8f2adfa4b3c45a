"""Overhead of a protected call: CircuitBreaker vs pybreaker, with a plain call as the
floor, on a closed breaker (consecutive and failure-rate rules) and on an open one (the
cost of failing fast).

Each round makes N calls, so the figures are per N calls; compare within a group.

    .venv/bin/python -m pytest benches/test_breaker.py --benchmark-only \\
        --benchmark-columns=min,median,ops -q
"""

from __future__ import annotations

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


# ---- circuit breaker: call(f) on a closed breaker --------------------------------------


@pytest.mark.benchmark(group="breaker: call(f), closed")
def test_breaker_floor_direct_call(benchmark: Any) -> None:
    benchmark(loop(target))


@pytest.mark.benchmark(group="breaker: call(f), closed")
def test_breaker_ferrule_call(benchmark: Any) -> None:
    cb = ferrule.CircuitBreaker(5, 30.0)
    call = cb.call
    benchmark(loop(lambda: call(target)))
    assert cb.stats().successes >= N


@pytest.mark.benchmark(group="breaker: call(f), closed")
def test_breaker_ferrule_decorated(benchmark: Any) -> None:
    f = ferrule.CircuitBreaker(5, 30.0)(target)
    benchmark(loop(f))


@pytest.mark.benchmark(group="breaker: call(f), closed")
def test_breaker_pybreaker_call(benchmark: Any) -> None:
    pybreaker = pytest.importorskip("pybreaker")
    cb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    call = cb.call
    benchmark(loop(lambda: call(target)))


@pytest.mark.benchmark(group="breaker: call(f), closed")
def test_breaker_pybreaker_decorated(benchmark: Any) -> None:
    pybreaker = pytest.importorskip("pybreaker")
    f = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)(target)
    benchmark(loop(f))


# ---- the failure-rate rule: call(f) on a closed breaker --------------------------------
# pybreaker has no failure-rate rule: its row is its consecutive-failures breaker, the
# nearest it offers, so the group shows what the window costs on top of a call.


@pytest.mark.benchmark(group="breaker: call(f), closed, failure-rate rule")
def test_rate_ferrule_time_window(benchmark: Any) -> None:
    cb = ferrule.CircuitBreaker(failure_rate=0.5, min_calls=20, window=60.0)
    call = cb.call
    benchmark(loop(lambda: call(target)))
    assert cb.stats().window_calls >= N


@pytest.mark.benchmark(group="breaker: call(f), closed, failure-rate rule")
def test_rate_ferrule_count_window(benchmark: Any) -> None:
    cb = ferrule.CircuitBreaker(failure_rate=0.5, min_calls=20, window_calls=100)
    call = cb.call
    benchmark(loop(lambda: call(target)))
    assert cb.stats().window_calls == 100


@pytest.mark.benchmark(group="breaker: call(f), closed, failure-rate rule")
def test_rate_pybreaker_consecutive_nearest(benchmark: Any) -> None:
    pybreaker = pytest.importorskip("pybreaker")
    cb = pybreaker.CircuitBreaker(fail_max=20, reset_timeout=30)
    call = cb.call
    benchmark(loop(lambda: call(target)))


# ---- the same through a breaker that is open: the cost of failing fast ----------------


@pytest.mark.benchmark(group="breaker: call(f), open (rejected)")
def test_open_ferrule(benchmark: Any) -> None:
    cb = ferrule.CircuitBreaker(1, 3600.0)
    with pytest.raises(ZeroDivisionError):
        cb.call(lambda: 1 / 0)

    def run() -> None:
        for _ in range(N):
            try:  # noqa: SIM105 (cheaper than contextlib.suppress, which would dominate)
                cb.call(target)
            except ferrule.CircuitOpen:
                pass

    benchmark(run)


@pytest.mark.benchmark(group="breaker: call(f), open (rejected)")
def test_open_pybreaker(benchmark: Any) -> None:
    pybreaker = pytest.importorskip("pybreaker")
    cb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    with pytest.raises(pybreaker.CircuitBreakerError):
        cb.call(lambda: 1 / 0)

    def run() -> None:
        for _ in range(N):
            try:  # noqa: SIM105 (cheaper than contextlib.suppress, which would dominate)
                cb.call(target)
            except pybreaker.CircuitBreakerError:
                pass

    benchmark(run)
