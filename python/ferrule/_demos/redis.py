"""Demo step: the distributed tier, shown only when a Redis server is reachable at
``REDIS_URL`` or 127.0.0.1:6379.

Structure: one part after another (rate limiter, registry, circuit breaker, cache
invalidation, signal bus), each on a client of its own; where a part is about what one
process sees of another's work, a second client (a second object, with its own
connections) stands for the other process.

Ownership: everything the step writes is under one prefix of its own
(``ferrule-demo:<pid>:``: keys, Pub/Sub channels, the bus's stream); it closes every
object and client it made, deletes what is left under the prefix (the breaker's hash and
the bus's stream are data by design) and checks with SCAN that no key remains.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import threading
import time
from collections import Counter
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
    clients: list[Any] = []

    def connect() -> Any:
        client = redis.Redis.from_url(url, socket_timeout=2.0)
        clients.append(client)
        return client

    prefix = f"ferrule-demo:{os.getpid()}:"
    admin = connect()
    try:
        print(
            "== ferrule.redis: rate limiter, registry, circuit breaker, cache invalidation"
            " and signal bus, shared through Redis"
        )
        _limiter_and_registry(admin, prefix)
        _breaker(connect, prefix + "breaker:")
        _invalidation(connect, prefix + "inval")
        _bus(connect, prefix + "bus:")
        kept = sorted(k.decode()[len(prefix) :] for k in _drop(admin, prefix))
        left = sum(1 for _ in admin.scan_iter(match=prefix + "*"))
        channels = _channels(admin, prefix)
        print(
            f"  all closed; deleted the keys still there ({', '.join(kept) or 'none'}): "
            f"SCAN {prefix}* finds {left}, {channels} channels subscribed"
        )
    finally:
        _drop(admin, prefix)
        for client in clients:
            client.close()


def _drop(client: Any, prefix: str) -> list[bytes]:
    """Deletes every key under ``prefix``; returns their names."""
    left = list(client.scan_iter(match=prefix + "*"))
    if left:
        client.delete(*left)
    return left


def _channels(client: Any, prefix: str) -> int:
    """Channels under ``prefix`` with a subscriber, once the server has seen the closed
    listeners' connections go (it may read that after a later request; 1 s at most)."""
    deadline = time.monotonic() + 1.0
    while (n := len(client.pubsub_channels(prefix + "*"))) and time.monotonic() < deadline:
        time.sleep(0.01)
    return n


def _close_side_by_side(*objects: Any) -> None:
    """``close()`` each object on a thread of its own: each waits up to a fraction of a
    second for its listener's blocking read to return, so together they wait for the
    longest only."""
    closing = [threading.Thread(target=o.close) for o in objects]
    for t in closing:
        t.start()
    for t in closing:
        t.join()


def _limiter_and_registry(client: Any, prefix: str) -> None:
    from ferrule.redis import RedisRateLimiter, RedisRegistry

    rl = RedisRateLimiter(client, 10, per=1.0, prefix=prefix + "rl:")
    granted = sum(rl.try_acquire("user:1") for _ in range(11))
    print(f"  rate 10/s, burst 10, one script per decision: {granted} of 11 granted")
    print(f"  then {rl.check('user:1')}")
    key = client.keys(prefix + "rl:*")[0]
    print(f"  its key {key.decode()!r} expires in {client.pttl(key)} ms (= reset_after)")

    fast = RedisRateLimiter(client, 1e6, prefix=prefix + "fast:")
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        fast.try_acquire(f"user:{n % 100}")
        n += 1
    elapsed = time.perf_counter() - t0
    print(f"  {n} try_acquire in {elapsed:.2f} s: {n / elapsed:,.0f} decisions/s from 1 process")

    reg = RedisRegistry(client, prefix=prefix + "reg:", ttl=5.0)
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


def _breaker(connect: Any, prefix: str) -> None:
    from ferrule import CircuitOpen
    from ferrule.redis import RedisCircuitBreaker

    def breaker(client: Any) -> RedisCircuitBreaker:
        return RedisCircuitBreaker(
            client, "upstream", 3, 30.0, expected=ConnectionError, prefix=prefix
        )

    def down() -> None:
        raise ConnectionError("upstream down")

    a = breaker(connect())
    b_client = connect()
    b = breaker(b_client)  # the same breaker in another process
    for _ in range(3):
        with contextlib.suppress(ConnectionError):
            a.call(down)
    # Count the commands B's client sends: the open fast path sends none.
    sent = 0
    send = b_client.execute_command

    def counting(*args: Any, **options: Any) -> Any:
        nonlocal sent
        sent += 1
        return send(*args, **options)

    b_client.execute_command = counting
    try:
        b.call(len, "x")
        first = "ran"
    except CircuitOpen as e:
        first = f"CircuitOpen(retry_after={e.retry_after:.2f})"
    asked, n, refused = sent, 10_000, 0
    t0 = time.perf_counter()
    for _ in range(n):
        try:
            b.call(len, "x")
        except CircuitOpen:
            refused += 1
    elapsed = time.perf_counter() - t0
    print(
        f"  breaker: 3 failures in process A open it for B too; B's first call: {first}, "
        f"{asked} request(s)"
    )
    requests = sent - asked
    a.reset()
    print(
        f"  then B refuses {refused} of {n} calls in {elapsed * 1e3:.1f} ms "
        f"({elapsed / n * 1e6:.2f} µs each), {requests} requests; after A.reset(), "
        f"B reads {b.state!r}"
    )


def _invalidation(connect: Any, channel: str) -> None:
    import ferrule
    from ferrule.redis import RedisInvalidation

    evicted: dict[Any, float] = {}
    arrived = threading.Event()

    def on_evict(key: Any, value: Any, reason: str) -> None:
        if reason == "deleted":
            evicted[key] = time.perf_counter()
            arrived.set()

    a = RedisInvalidation(connect(), channel).wrap(ferrule.Cache(100))
    b = RedisInvalidation(connect(), channel).wrap(ferrule.Cache(100, on_evict=on_evict))
    try:
        n, delays = 20, []
        for i in range(n):
            b.get_or_set(f"user:{i}", lambda: {"name": "Ann"})  # loaded and cached in B
            arrived.clear()
            t0 = time.perf_counter()
            a.set(f"user:{i}", {"name": "Anne"})  # a write in A ...
            if not arrived.wait(5.0):
                break
            delays.append(evicted[f"user:{i}"] - t0)  # ... evicts the key in B
        stale = sum(f"user:{i}" in b for i in range(n))
        print(
            f"  invalidation: a set in A evicts the key from B's cache in {_ms(delays)} "
            f"(median of {len(delays)}); stale in B: {stale}, kept by the writer A: {len(a)}"
        )
    finally:
        _close_side_by_side(a, b)


def _bus(connect: Any, prefix: str) -> None:
    import ferrule
    from ferrule.redis import RedisBus

    buses = [
        RedisBus(connect(), prefix=prefix),
        RedisBus(connect(), prefix=prefix),
        RedisBus(connect(), prefix=prefix, mode="stream"),
        RedisBus(connect(), prefix=prefix, mode="stream"),
    ]
    try:
        a, b, a_stream, b_stream = buses
        there = b.subscribe("job.*")  # returns once Redis routes job.* to B
        mine = a.subscribe("job.#")
        n, delays = 20, []
        for i in range(n):
            t0 = time.perf_counter()
            a.publish("job.done", {"id": i})
            there.get(timeout=5.0)  # B's subscriber has it
            delays.append(time.perf_counter() - t0)
        print(
            f"  bus, broadcast: A.publish('job.done') reaches B's 'job.*' in {_ms(delays)} "
            f"(median of {len(delays)}); A's own 'job.#' got {mine.qsize()} of {n}"
        )

        handled: list[tuple[str, int]] = []
        done = threading.Semaphore(0)

        def member(name: str) -> Any:
            def handle(signal: ferrule.Signal) -> None:
                handled.append((name, signal.data["id"]))
                done.release()

            return handle

        handle_a, handle_b = member("A"), member("B")  # held weakly by the subscriptions
        a_stream.subscribe("job.*", handle_a, group="workers")
        b_stream.subscribe("job.*", handle_b, group="workers")
        for i in range(n):
            (a_stream, b_stream)[i % 2].publish("job.run", {"id": i})
        got = sum(done.acquire(timeout=5.0) for _ in range(n))
        by = Counter(name for name, _ in handled)
        print(
            f"  bus, stream: {n} signals to the consumer group 'workers' (a member in A, one "
            f"in B): {got} handled, {len({i for _, i in handled})} distinct, "
            f"{by['A']} by A and {by['B']} by B"
        )
    finally:
        _close_side_by_side(*buses)


def _ms(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1e3:.2f} ms" if seconds else "n/a"
