"""Overhead of retried calls: retry vs tenacity, with a plain call as the floor.

Groups: a call that succeeds at once (decorated, and the call form); the same with hooks
or a result predicate, which take ferrule's full path; and a call that fails once and
then succeeds, with a no-op sleep on both sides, so that the retry machinery is measured
rather than ``time.sleep(0)``.

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


# ---- hooks and retry_if_result: a call that succeeds at once --------------------------


def noop(state: Any) -> None:
    return None


def is_none(value: object) -> bool:
    return value is None


def no_sleep(seconds: float) -> None:
    return None


def tenacity_policy(**kwargs: Any) -> Any:
    tenacity = pytest.importorskip("tenacity")
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_none(),
        sleep=no_sleep,
        reraise=True,
        **kwargs,
    )


@pytest.mark.benchmark(group="retry: hooks / retry_if_result, succeeds")
def test_hooks_floor_direct_call(benchmark: Any) -> None:
    benchmark(loop(target))


@pytest.mark.benchmark(group="retry: hooks / retry_if_result, succeeds")
def test_hooks_ferrule(benchmark: Any) -> None:
    policy = ferrule.retry(attempts=3, backoff=0.0, after_attempt=noop, before_sleep=noop)
    benchmark(loop(policy(target)))


@pytest.mark.benchmark(group="retry: hooks / retry_if_result, succeeds")
def test_hooks_tenacity(benchmark: Any) -> None:
    benchmark(loop(tenacity_policy(before=noop, after=noop, before_sleep=noop)(target)))


@pytest.mark.benchmark(group="retry: hooks / retry_if_result, succeeds")
def test_result_ferrule(benchmark: Any) -> None:
    policy = ferrule.retry(attempts=3, backoff=0.0, retry_if_result=is_none)
    benchmark(loop(policy(target)))


@pytest.mark.benchmark(group="retry: hooks / retry_if_result, succeeds")
def test_result_tenacity(benchmark: Any) -> None:
    tenacity = pytest.importorskip("tenacity")
    benchmark(loop(tenacity_policy(retry=tenacity.retry_if_result(is_none))(target)))


# ---- a call that fails once, then succeeds (no pause) --------------------------------


class FailsEveryOther:
    """Raises (or returns None) on odd calls: each retried call takes two attempts."""

    def __init__(self, returns_none: bool = False) -> None:
        self.calls = 0
        self.returns_none = returns_none

    def __call__(self) -> int | None:
        self.calls += 1
        if self.calls % 2:
            if self.returns_none:
                return None
            raise ConnectionError("once")
        return 1


@pytest.mark.benchmark(group="retry: fails once, then succeeds")
def test_once_ferrule(benchmark: Any) -> None:
    policy = ferrule.retry(attempts=3, backoff=0.0, sleep=no_sleep)
    benchmark(loop(policy(FailsEveryOther())))


@pytest.mark.benchmark(group="retry: fails once, then succeeds")
def test_once_tenacity(benchmark: Any) -> None:
    benchmark(loop(tenacity_policy()(FailsEveryOther())))


@pytest.mark.benchmark(group="retry: fails once, then succeeds")
def test_once_hooks_ferrule(benchmark: Any) -> None:
    policy = ferrule.retry(
        attempts=3, backoff=0.0, sleep=no_sleep, after_attempt=noop, before_sleep=noop
    )
    benchmark(loop(policy(FailsEveryOther())))


@pytest.mark.benchmark(group="retry: fails once, then succeeds")
def test_once_hooks_tenacity(benchmark: Any) -> None:
    f = tenacity_policy(before=noop, after=noop, before_sleep=noop)(FailsEveryOther())
    benchmark(loop(f))


@pytest.mark.benchmark(group="retry: fails once, then succeeds")
def test_once_result_ferrule(benchmark: Any) -> None:
    policy = ferrule.retry(attempts=3, backoff=0.0, sleep=no_sleep, retry_if_result=is_none)
    benchmark(loop(policy(FailsEveryOther(returns_none=True))))


@pytest.mark.benchmark(group="retry: fails once, then succeeds")
def test_once_result_tenacity(benchmark: Any) -> None:
    tenacity = pytest.importorskip("tenacity")
    f = tenacity_policy(retry=tenacity.retry_if_result(is_none))(FailsEveryOther(True))
    benchmark(loop(f))
