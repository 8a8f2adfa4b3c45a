"""Demo step: the distributed tier, shown only when a Redis server is reachable at
``REDIS_URL`` or 127.0.0.1:6379. Every key it writes has a prefix of its own, and it
deletes them before it returns."""

from __future__ import annotations

import os
import socket
import time
from typing import Any
from urllib.parse import urlparse


def _reachable(url: str) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=0.2):
            return True
    except OSError:
        return False


def run() -> None:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis
    except ImportError:
        print("== ferrule.redis: skipped (the 'redis' package is not installed)")
        return
    if not _reachable(url):
        print(f"== ferrule.redis: skipped (no Redis server at {url}; set REDIS_URL)")
        return
    from ferrule.redis import RedisRateLimiter, RedisRegistry

    client: Any = redis.Redis.from_url(url, socket_timeout=2.0)
    prefix = f"ferrule-demo:{os.getpid()}:"
    try:
        _show(client, prefix, RedisRateLimiter, RedisRegistry)
    finally:
        left = list(client.scan_iter(match=prefix + "*"))
        if left:
            client.delete(*left)
        client.close()


def _show(client: Any, prefix: str, limiter: Any, registry: Any) -> None:
    print("== ferrule.redis: the rate limiter and registry with their state in Redis")
    rl = limiter(client, 10, per=1.0, prefix=prefix + "rl:")
    granted = sum(rl.try_acquire("user:1") for _ in range(11))
    print(f"  rate 10/s, burst 10, one script per decision: {granted} of 11 granted")
    print(f"  then {rl.check('user:1')}")
    key = client.keys(prefix + "rl:*")[0]
    print(f"  its key {key.decode()!r} expires in {client.pttl(key)} ms (= reset_after)")

    fast = limiter(client, 1e6, prefix=prefix + "fast:")
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        fast.try_acquire(f"user:{n % 100}")
        n += 1
    elapsed = time.perf_counter() - t0
    print(f"  {n} try_acquire in {elapsed:.2f} s: {n / elapsed:,.0f} decisions/s from 1 process")

    reg = registry(client, prefix=prefix + "reg:", ttl=5.0)
    reg.register("a1", {"url": "http://a1"}, capabilities=["search"], node="n1")
    reg.register("a2", {"url": "http://a2"}, capabilities=["search", "code"], node="n2")
    reg.register("a3", {"url": "http://a3"}, capabilities=["code"], node="n1", health="degraded")
    print(
        f"  registry: search -> {sorted(reg.ids(capability='search'))}, "
        f"code on n1 -> {reg.ids(capability='code', node='n1')}, "
        f"heartbeat(a1) -> {reg.heartbeat('a1')}"
    )
    for aid in ("a1", "a2", "a3"):
        reg.unregister(aid)
    left = len(list(client.scan_iter(match=prefix + "reg:*")))
    print(f"  after unregistering all three: {left} registry keys left")
