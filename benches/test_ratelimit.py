"""RateLimiter beside its peers: one attempt per key in a Python loop.

Every benchmark in a group runs the same loop over the same keys, so a dict lookup in
that loop is the floor. Each limiter allows 1000 requests per second per key with a
burst of 1000 (the window limit for the window-based peers).

    .venv/bin/python -m pytest benches/test_ratelimit.py --benchmark-only \
        --benchmark-columns=min,median,ops -q

pyrate-limiter appears only in the one-key group: its ``Limiter`` over a single bucket
counts every name against that one bucket, so it is not a keyed limiter.

The "keys compared by Python" group uses UUID keys: ferrule keeps such keys as objects and
compares them with ``==`` (its slower path), where the peers need a string, so they are
shown with ``str(key)`` made in the loop, as a caller would.
"""

from __future__ import annotations

import random
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ferrule
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import overadmission

RATE = overadmission.RATE
BURST = overadmission.BURST
ONE_KEY = ["user:1"] * 1_000
rng = random.Random(20261127)
MANY_KEYS = [f"user:{i}" for i in range(10_000)]
rng.shuffle(MANY_KEYS)
UUID_KEYS = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(1_000)]

Attempt = Callable[[Any], Any]


def loop(benchmark: Any, attempt: Attempt, keys: list[Any]) -> None:
    def run() -> None:
        for k in keys:
            attempt(k)

    benchmark(run)


def make_dict(keys: list[Any]) -> Attempt:
    d = dict.fromkeys(keys, 0)
    return d.get


def make_ferrule(keys: list[Any]) -> Attempt:
    return ferrule.RateLimiter(RATE, burst=BURST).try_acquire


def make_limits_moving(keys: list[Any]) -> Attempt:
    limits = pytest.importorskip("limits")
    item = limits.RateLimitItemPerSecond(RATE)
    lim = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())
    return lambda k: lim.hit(item, k)


def make_limits_fixed(keys: list[Any]) -> Attempt:
    limits = pytest.importorskip("limits")
    item = limits.RateLimitItemPerSecond(RATE)
    lim = limits.strategies.FixedWindowRateLimiter(limits.storage.MemoryStorage())
    return lambda k: lim.hit(item, k)


def make_pyrate_inmemory(keys: list[Any]) -> Attempt:
    pl = pytest.importorskip("pyrate_limiter")
    lim = pl.Limiter(pl.InMemoryBucket([pl.Rate(RATE, pl.Duration.SECOND)]))
    return lambda k: lim.try_acquire(k, blocking=False)


def make_pyrate_gcra(keys: list[Any]) -> Attempt:
    pl = pytest.importorskip("pyrate_limiter")
    if not hasattr(pl, "StateBucket"):
        pytest.skip("this pyrate-limiter has no GCRA bucket")
    rate = pl.Rate(RATE, pl.Duration.SECOND, burst=BURST)
    lim = pl.Limiter(pl.StateBucket([rate], pl.GCRA()))
    return lambda k: lim.try_acquire(k, blocking=False)


def make_token_bucket(keys: list[Any]) -> Attempt:
    tb = pytest.importorskip("token_bucket")
    lim = tb.Limiter(RATE, BURST, tb.MemoryStorage())
    return lim.consume  # type: ignore[no-any-return]


ONE_KEY_CASES = {
    "dict.get (floor)": make_dict,
    "ferrule": make_ferrule,
    "limits MovingWindow": make_limits_moving,
    "limits FixedWindow": make_limits_fixed,
    "pyrate-limiter InMemoryBucket": make_pyrate_inmemory,
    "pyrate-limiter GCRA": make_pyrate_gcra,
    "token-bucket": make_token_bucket,
}

MANY_KEY_CASES = {k: v for k, v in ONE_KEY_CASES.items() if not k.startswith("pyrate-limiter")}


def make_ferrule_str(keys: list[Any]) -> Attempt:
    attempt = ferrule.RateLimiter(RATE, burst=BURST).try_acquire
    return lambda k: attempt(str(k))


def make_token_bucket_str(keys: list[Any]) -> Attempt:
    attempt = make_token_bucket(keys)
    return lambda k: attempt(str(k))


def make_limits_fixed_str(keys: list[Any]) -> Attempt:
    attempt = make_limits_fixed(keys)
    return lambda k: attempt(str(k))


UUID_CASES = {
    "dict.get (floor)": make_dict,
    "ferrule, UUID keys": make_ferrule,
    "ferrule, str(key)": make_ferrule_str,
    "limits FixedWindow, str(key)": make_limits_fixed_str,
    "token-bucket, str(key)": make_token_bucket_str,
}


@pytest.mark.benchmark(group="ratelimit: try_acquire x1000, keys compared by Python (UUID)")
@pytest.mark.parametrize("name", list(UUID_CASES))
def test_uuid_keys(benchmark: Any, name: str) -> None:
    loop(benchmark, UUID_CASES[name](UUID_KEYS), UUID_KEYS)


@pytest.mark.benchmark(group="ratelimit: try_acquire x1000, one key")
@pytest.mark.parametrize("name", list(ONE_KEY_CASES))
def test_one_key(benchmark: Any, name: str) -> None:
    loop(benchmark, ONE_KEY_CASES[name](ONE_KEY), ONE_KEY)


@pytest.mark.benchmark(group="ratelimit: try_acquire x10000, 10k keys")
@pytest.mark.parametrize("name", list(MANY_KEY_CASES))
def test_many_keys(benchmark: Any, name: str) -> None:
    loop(benchmark, MANY_KEY_CASES[name](MANY_KEYS), MANY_KEYS)


# Two limits on every key: 1000 per second and 20,000 per minute (the window-based peers
# hit each of their two items; pyrate-limiter's bucket holds both rates).
# pyrate-limiter is here for one key only, as above.
MULTI_SPEC = "1000/second; 20000/minute"


def make_ferrule_multi(keys: list[Any]) -> Attempt:
    return ferrule.RateLimiter.parse(MULTI_SPEC).try_acquire


def _limits_multi(strategy: str) -> Attempt:
    limits = pytest.importorskip("limits")
    items = limits.parse_many(MULTI_SPEC)
    lim = getattr(limits.strategies, strategy)(limits.storage.MemoryStorage())

    # A hit on each item, as a caller of `limits` holds a key to several limits (a
    # refusal by one item has still counted against the others).
    return lambda k: all([lim.hit(item, k) for item in items])


def make_limits_moving_multi(keys: list[Any]) -> Attempt:
    return _limits_multi("MovingWindowRateLimiter")


def make_limits_fixed_multi(keys: list[Any]) -> Attempt:
    return _limits_multi("FixedWindowRateLimiter")


def make_pyrate_multi(keys: list[Any]) -> Attempt:
    pl = pytest.importorskip("pyrate_limiter")
    rates = [pl.Rate(1000, pl.Duration.SECOND), pl.Rate(20_000, pl.Duration.MINUTE)]
    lim = pl.Limiter(pl.InMemoryBucket(rates))
    return lambda k: lim.try_acquire(k, blocking=False)


MULTI_CASES = {
    "dict.get (floor)": make_dict,
    "ferrule, 2 limits": make_ferrule_multi,
    "ferrule, 1 limit": make_ferrule,
    "limits MovingWindow, 2 items": make_limits_moving_multi,
    "limits FixedWindow, 2 items": make_limits_fixed_multi,
    "pyrate-limiter InMemoryBucket, 2 rates": make_pyrate_multi,
}


@pytest.mark.benchmark(group="ratelimit: try_acquire x1000, one key, two limits")
@pytest.mark.parametrize("name", list(MULTI_CASES))
def test_one_key_two_limits(benchmark: Any, name: str) -> None:
    loop(benchmark, MULTI_CASES[name](ONE_KEY), ONE_KEY)


MANY_MULTI_CASES = {k: v for k, v in MULTI_CASES.items() if not k.startswith("pyrate-limiter")}


@pytest.mark.benchmark(group="ratelimit: try_acquire x10000, 10k keys, two limits")
@pytest.mark.parametrize("name", list(MANY_MULTI_CASES))
def test_many_keys_two_limits(benchmark: Any, name: str) -> None:
    loop(benchmark, MANY_MULTI_CASES[name](MANY_KEYS), MANY_KEYS)


def test_over_admission_report(request: pytest.FixtureRequest) -> None:
    """8 threads on one key per limiter; prints granted vs allowed (no claim on peers)."""
    disabled = request.config.getoption("benchmark_disable", default=False)
    seconds = 0.05 if disabled else 0.5
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():  # type: ignore[union-attr]
        results = overadmission.report(threads=8, seconds=seconds)
    for name in ("ferrule.RateLimiter", "ferrule.RateLimiter, UUID key"):
        granted, allowed = results[name]
        # One token of slack for the float rounding of the measured elapsed time.
        assert granted <= allowed + 1, name
