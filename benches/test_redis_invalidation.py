"""``InvalidatingCache`` beside a plain ``ferrule.Cache`` and the hand-written equivalent,
on one local redis-server started for the run.

- reads: ``get`` through the wrapper against the cache itself (the wrapper's ``get`` is
  the cache's bound method, so the two should be level);
- writes: ``set`` (local set + one PUBLISH) against ``cache.set`` followed by a
  hand-written ``client.publish`` of the key on the same channel (so the same two
  listeners receive each message): the cost of the wrapper over the round trip;
- delivery: from ``set`` in one cache to the key's eviction in another cache on the same
  channel (its own connection and listener thread), one round per write.

    .venv/bin/python -m pytest benches/test_redis_invalidation.py --benchmark-only \\
        --benchmark-columns=min,median,ops -q
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from tests.redis_server import RedisServer, server_or_skip

redis = pytest.importorskip("redis")
import ferrule  # noqa: E402
from ferrule.redis import InvalidatingCache, RedisInvalidation  # noqa: E402

KEYS = [f"user:{i}" for i in range(1000)]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    s = server_or_skip()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def pair(server: RedisServer) -> Iterator[tuple[InvalidatingCache, InvalidatingCache]]:
    channel = f"bench-{time.monotonic_ns()}"
    a = RedisInvalidation(server.client(), channel).wrap(ferrule.Cache(10_000))
    b = RedisInvalidation(server.client(), channel).wrap(ferrule.Cache(10_000))
    yield a, b
    a.close()
    b.close()


@pytest.mark.parametrize("kind", ["ferrule.Cache", "InvalidatingCache"])
def test_get_hit(benchmark: Any, kind: str, pair: tuple[InvalidatingCache, Any]) -> None:
    wrapper = pair[0]
    for k in KEYS:
        wrapper.cache.set(k, k)
    get = wrapper.cache.get if kind == "ferrule.Cache" else wrapper.get

    def run() -> None:
        for k in KEYS:
            get(k)

    benchmark(run)


@pytest.mark.parametrize("kind", ["cache.set + client.publish", "InvalidatingCache.set"])
def test_set(
    benchmark: Any, kind: str, server: RedisServer, pair: tuple[InvalidatingCache, Any]
) -> None:
    wrapper = pair[0]
    keys = KEYS[:100]
    if kind == "InvalidatingCache.set":

        def run() -> None:
            for k in keys:
                wrapper.set(k, 1)

    else:
        # The same channel, so the same two listeners receive each message.
        cache, client, channel = (
            ferrule.Cache(10_000),
            server.client(),
            wrapper.invalidation.channel,
        )

        def run() -> None:
            for k in keys:
                cache.set(k, 1)
                client.publish(channel, json.dumps({"k": [k]}))

    benchmark(run)


def test_delivery_to_another_cache(
    benchmark: Any, pair: tuple[InvalidatingCache, InvalidatingCache]
) -> None:
    a, b = pair

    def once() -> None:
        b.cache.set("hot", 1)
        a.set("hot", 2)
        while "hot" in b:
            pass

    benchmark.pedantic(once, rounds=200, warmup_rounds=10)
