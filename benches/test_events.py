"""What events cost: each part's busiest event-making operation without a bus, with a
bus nobody listens to, and with a subscription receiving the events.

The operations are the ones that count toward an event on every call: a cache write
that evicts, a limiter decision that is refused, a put on a full ``drop_oldest``
queue. Every benchmark runs a batch of BATCH operations per call, so the per-operation
cost is the reported time / BATCH. Run for real with:

    .venv/bin/python -m pytest benches/test_events.py --benchmark-only \
        --benchmark-columns=min,median,ops -q

"no bus" is the default of every part; "bus" publishes to a SignalBus with no
subscription; "listened" adds a pull subscription (maxsize 1000, drop_oldest) to every
topic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ferrule
import pytest

BATCH = 10_000
MODES = ["no bus", "bus", "listened"]


def _bus(mode: str) -> dict[str, Any]:
    if mode == "no bus":
        return {}
    bus = ferrule.SignalBus()
    if mode == "listened":
        bus.subscribe("#", maxsize=1000, overflow="drop_oldest")
    return {"bus": bus, "name": "bench"}


def _cache_evicting(mode: str) -> Callable[[], None]:
    cache = ferrule.Cache(1000, **_bus(mode))
    keys = list(range(BATCH))
    for k in keys[:1000]:
        cache[k] = k
    put = cache.set
    offset = [1000]

    def run() -> None:
        base = offset[0]
        for k in keys:
            put(base + k, k)  # every write evicts the oldest
        offset[0] = base + BATCH

    return run


def _limiter_denied(mode: str) -> Callable[[], None]:
    rl = ferrule.RateLimiter(1.0, per=3600.0, **_bus(mode))
    acquire = rl.try_acquire
    acquire("user:1")  # the one token: every call below is refused

    def run() -> None:
        for _ in range(BATCH):
            acquire("user:1")

    return run


def _queue_overflowing(mode: str) -> Callable[[], None]:
    q: ferrule.WorkQueue[int] = ferrule.WorkQueue(10, overflow="drop_oldest", **_bus(mode))
    put = q.put
    for n in range(10):
        put(n)

    def run() -> None:
        for n in range(BATCH):
            put(n)  # full: each put drops the oldest item

    return run


PARTS = {
    "cache set, evicting": _cache_evicting,
    "limiter try_acquire, refused": _limiter_denied,
    "queue put, full (drop_oldest)": _queue_overflowing,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("part", list(PARTS))
def test_event_cost(benchmark: Any, part: str, mode: str) -> None:
    benchmark.group = f"events: {part}"
    benchmark.extra_info["ops"] = BATCH
    benchmark(PARTS[part](mode))
