"""ferrule.redis beside its peers, all on one local redis-server started for the run.

Circuit breaker: ``RedisCircuitBreaker.call`` against pybreaker with its Redis storage
(``pybreaker.CircuitRedisStorage``), on a closed breaker (one script call per outcome) and
on an open one (ferrule refuses from its local view, with no request);
``test_breaker_round_trips_per_call`` prints the requests per protected call.

Rate limit: ``RedisRateLimiter.try_acquire`` against ``limits`` with its Redis storage
(MovingWindow and FixedWindow strategies), one decision per call, from one process and
from four processes at once (a pool of spawned workers, each on its own keys). The
limiters allow 1000 requests per second with a burst (window limit) of 1000, and the keys
cycle so that nothing is ever refused. Registry: ``RedisRegistry.register`` and ``find``
against a hand-written redis-py equivalent (an HSET/SADD/ZADD transaction per register,
SINTER plus a pipeline of HGETALL per find, without a lease check).

    .venv/bin/python -m pytest benches/test_redis.py --benchmark-only \
        --benchmark-columns=min,median,ops -q

``test_round_trips_per_decision`` prints how many requests each limiter sends per
decision (counted on redis-py's connection) and checks ferrule's is one.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from tests.redis_server import RedisServer, server_or_skip

redis = pytest.importorskip("redis")
from ferrule.redis import (  # noqa: E402
    RedisBus,
    RedisCircuitBreaker,
    RedisRateLimiter,
    RedisRegistry,
)

RATE = 1000
CALLS = 200  # decisions per benchmark round (1 process)
PER_PROC = 200  # decisions per process per round (4 processes)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    s = server_or_skip()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def client(server: RedisServer) -> Iterator[Any]:
    c = server.client()
    c.flushall()
    yield c
    c.close()


def make_limiter(kind: str, url: str) -> Callable[[str], bool]:
    """One decision per call on a fresh limiter of the given kind."""
    if kind == "ferrule":
        return RedisRateLimiter(redis.Redis.from_url(url), RATE, burst=RATE).try_acquire
    limits = pytest.importorskip("limits")
    storage = limits.storage.storage_from_string(url)
    strategy = {
        "limits-moving": limits.strategies.MovingWindowRateLimiter,
        "limits-fixed": limits.strategies.FixedWindowRateLimiter,
    }[kind](storage)
    item = limits.RateLimitItemPerSecond(RATE)
    return lambda k: bool(strategy.hit(item, k))


KINDS = ["ferrule", "limits-moving", "limits-fixed"]


@pytest.mark.parametrize("kind", KINDS)
def test_try_acquire_one_process(benchmark: Any, server: RedisServer, kind: str) -> None:
    benchmark.group = "redis try_acquire, 1 process"
    attempt = make_limiter(kind, server.url)
    keys = itertools.cycle([f"{kind}:user:{i}" for i in range(100)])

    def run() -> None:
        for _ in range(CALLS):
            attempt(next(keys))

    benchmark.extra_info["decisions_per_round"] = CALLS
    benchmark(run)


def _proc_worker(args: tuple[str, str, int, int]) -> int:
    kind, url, proc, n = args
    attempt = make_limiter(kind, url)
    return sum(attempt(f"{kind}:p{proc}:user:{i % 50}") for i in range(n))


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    with multiprocessing.get_context("spawn").Pool(4) as p:
        p.map(abs, range(4))  # start every worker before timing
        yield p


@pytest.mark.parametrize("kind", KINDS)
def test_try_acquire_four_processes(
    benchmark: Any, server: RedisServer, pool: Any, kind: str
) -> None:
    benchmark.group = "redis try_acquire, 4 processes"
    if kind != "ferrule":
        pytest.importorskip("limits")  # here: a skip raised in a pool worker would hang it
    jobs = [(kind, server.url, p, PER_PROC) for p in range(4)]

    def run() -> None:
        pool.map(_proc_worker, jobs)

    benchmark.extra_info["decisions_per_round"] = 4 * PER_PROC
    benchmark(run)


def test_round_trips_per_decision(server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.connection import Connection

    sent = 0
    original = Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        nonlocal sent
        sent += 1
        original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    report = {}
    for kind in KINDS:
        try:
            attempt = make_limiter(kind, server.url)
        except pytest.skip.Exception:
            continue
        attempt(f"{kind}:warm")  # loads the scripts
        sent = 0
        for i in range(100):
            attempt(f"{kind}:k{i}")
        report[kind] = sent / 100
    print(f"\nrequests per try_acquire/hit: {report}")
    assert report["ferrule"] == 1.0
    # A decision with its details (remaining, reset): ferrule's check() is one script;
    # limits needs hit() and then get_window_stats().
    rl = RedisRateLimiter(redis.Redis.from_url(server.url), RATE, burst=RATE)
    rl.check("detail:warm")
    sent = 0
    d = rl.check("detail:k")
    detailed = {"ferrule check()": sent}
    limits = pytest.importorskip("limits")
    item = limits.RateLimitItemPerSecond(RATE)
    moving = limits.strategies.MovingWindowRateLimiter(
        limits.storage.storage_from_string(server.url)
    )
    moving.hit(item, "detail:warm")
    moving.get_window_stats(item, "detail:warm")
    sent = 0
    moving.hit(item, "detail:k")
    stats = moving.get_window_stats(item, "detail:k")
    detailed["limits hit() + get_window_stats()"] = sent
    print(f"requests per decision with details: {detailed}")
    assert detailed["ferrule check()"] == 1 and d.remaining == stats.remaining == RATE - 1


# ---- registry ---------------------------------------------------------------------------

CAPS = ["search", "code", "plan", "review"]


def meta(i: int) -> dict[str, Any]:
    return {"i": i, "zone": ["eu", "us"][i % 2]}


class HandWritten:
    """What a service would write by hand with redis-py: the same keys, one transaction
    per registration, no scripts, no lease check on reads."""

    def __init__(self, client: Any, prefix: str = "hand:") -> None:
        self.r = client
        self.p = prefix

    def register(self, aid: str, value: Any, caps: list[str], node: str, md: Any) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            self.p + "e:" + aid,
            mapping={
                "v": json.dumps(value),
                "c": json.dumps(caps),
                "n": node,
                "h": "healthy",
                "m": json.dumps(md),
            },
        )
        for c in caps:
            pipe.sadd(self.p + "c:" + c, aid)
        pipe.sadd(self.p + "n:" + node, aid)
        pipe.sadd(self.p + "h:healthy", aid)
        pipe.zadd(self.p + "d", {aid: 0})
        pipe.execute()

    def find(self, cap: str, node: str) -> list[dict[str, Any]]:
        ids = self.r.sinter([self.p + "c:" + cap, self.p + "n:" + node])
        pipe = self.r.pipeline(transaction=False)
        for aid in ids:
            pipe.hgetall(self.p + "e:" + aid.decode())
        return [
            {"value": json.loads(h[b"v"]), "metadata": json.loads(h[b"m"])} for h in pipe.execute()
        ]


counter = itertools.count()


@pytest.mark.parametrize("kind", ["ferrule", "hand-written"])
def test_registry_register(benchmark: Any, client: Any, kind: str) -> None:
    benchmark.group = "redis registry register (100 agents)"
    reg = RedisRegistry(client, ttl=600.0)
    hand = HandWritten(client)

    def run() -> None:
        for _ in range(100):
            i = next(counter)
            caps = [CAPS[i % 4], CAPS[(i + 1) % 4]]
            if kind == "ferrule":
                reg.register(f"a{i}", i, capabilities=caps, node=f"n{i % 3}", metadata=meta(i))
            else:
                hand.register(f"a{i}", i, caps, f"n{i % 3}", meta(i))

    benchmark(run)


@pytest.mark.parametrize("kind", ["ferrule", "hand-written"])
def test_registry_find(benchmark: Any, client: Any, kind: str) -> None:
    benchmark.group = "redis registry find (1000 agents, ~83 hits)"
    reg = RedisRegistry(client, ttl=600.0)
    hand = HandWritten(client)
    for i in range(1000):
        caps = [CAPS[i % 4], CAPS[(i + 1) % 4]]
        if kind == "ferrule":
            reg.register(f"a{i}", i, capabilities=caps, node=f"n{i % 3}", metadata=meta(i))
        else:
            hand.register(f"a{i}", i, caps, f"n{i % 3}", meta(i))
    if kind == "ferrule":
        found = benchmark(lambda: reg.find(capability="code", node="n1"))
    else:
        found = benchmark(lambda: hand.find("code", "n1"))
    assert len(found) == 167


# ---- circuit breaker --------------------------------------------------------------------

BREAKER_CALLS = 200  # protected calls per benchmark round


def make_breaker(kind: str, url: str, name: str, open_: bool = False) -> Callable[[], Any]:
    """``call(f)`` on a shared breaker of the given kind (closed, or opened first)."""
    client = redis.Redis.from_url(url)
    if kind == "ferrule":
        cb = RedisCircuitBreaker(client, name, 5, 3600.0)
        call = cb.call
        if open_:
            cb.force_open()
            call = _rejected(call)
        else:
            call(len, "warm")  # the view: closed
        return lambda: call(len, "x")
    pybreaker = pytest.importorskip("pybreaker")
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=name)
    pb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=3600, state_storage=storage)
    pcall = pb.call
    if open_:
        pb.open()
        pcall = _rejected(pcall, pybreaker.CircuitBreakerError)
    return lambda: pcall(len, "x")


def _rejected(
    call: Callable[..., Any], exc: type[BaseException] | None = None
) -> Callable[..., Any]:
    from ferrule import CircuitOpen

    caught = exc or CircuitOpen

    def run(*args: Any) -> None:
        try:
            call(*args)
        except caught:
            return
        raise AssertionError("the breaker let a call through")

    return run


BREAKERS = ["ferrule", "pybreaker"]


@pytest.mark.parametrize("kind", BREAKERS)
def test_breaker_call_closed(benchmark: Any, server: RedisServer, kind: str) -> None:
    benchmark.group = "redis breaker call(f), closed"
    server.client().flushall()
    call = make_breaker(kind, server.url, f"{kind}-closed")

    def run() -> None:
        for _ in range(BREAKER_CALLS):
            call()

    benchmark.extra_info["calls_per_round"] = BREAKER_CALLS
    benchmark(run)


@pytest.mark.parametrize("kind", BREAKERS)
def test_breaker_call_open(benchmark: Any, server: RedisServer, kind: str) -> None:
    benchmark.group = "redis breaker call(f), open (rejected)"
    server.client().flushall()
    call = make_breaker(kind, server.url, f"{kind}-open", open_=True)

    def run() -> None:
        for _ in range(BREAKER_CALLS):
            call()

    benchmark.extra_info["calls_per_round"] = BREAKER_CALLS
    benchmark(run)


def test_breaker_round_trips_per_call(server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.connection import Connection

    sent = 0
    original = Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        nonlocal sent
        sent += 1
        original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    report = {}
    for kind in BREAKERS:
        for open_ in (False, True):
            try:
                call = make_breaker(kind, server.url, f"{kind}-rt-{open_}", open_)
            except pytest.skip.Exception:
                continue
            call()
            sent = 0
            for _ in range(100):
                call()
            report[f"{kind} {'open' if open_ else 'closed'}"] = sent / 100
    print(f"\nrequests per protected call: {report}")
    assert report["ferrule closed"] == 1.0
    assert report["ferrule open"] == 0.0
    server.client().flushall()


# ---- signal bus across processes (RedisBus) -------------------------------------------
#
# Publish: one call sends one signal; RedisBus (broadcast: PUBLISH; stream: XADD MAXLEN ~)
# beside the same request written by hand with redis-py and json. End to end: a ping-pong
# with an echo process (spawned): the parent publishes "ping", the child's subscription
# publishes "pong" back, the parent waits for it; a round is PINGS such round trips (two
# one-way deliveries each). The hand-written peers: a Pub/Sub listener thread, and an
# XREADGROUP/XACK loop answering with XADD.


BUS_CALLS = 200  # publishes per benchmark round
PINGS = 20  # round trips per benchmark round
BUS_KINDS = ["ferrule-broadcast", "redis-py-pubsub", "ferrule-stream", "redis-py-streams"]


def _bus_publisher(kind: str, client: Any) -> Callable[[str, Any], Any]:
    if kind == "ferrule-broadcast":
        return RedisBus(client, prefix="bench:").publish
    if kind == "ferrule-stream":
        return RedisBus(client, prefix="bench:", mode="stream").publish
    if kind == "redis-py-pubsub":
        return lambda t, d: client.publish(f"hand:{t}", json.dumps(d))
    return lambda t, d: client.xadd(
        "hand:stream", {"t": t, "d": json.dumps(d)}, maxlen=10_000, approximate=True
    )


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_bus_publish(benchmark: Any, client: Any, kind: str) -> None:
    benchmark.group = "redis bus publish"
    publish = _bus_publisher(kind, client)
    data = {"job": 7, "state": "done"}

    def run() -> None:
        for _ in range(BUS_CALLS):
            publish("job.done", data)

    benchmark.extra_info["publishes_per_round"] = BUS_CALLS
    benchmark(run)


def _echo(kind: str, url: str, ready: Any, stop: Any) -> None:
    """The echo process: answers every ping with a pong carrying the same data."""
    import redis as r

    client = r.Redis.from_url(url)
    if kind.startswith("ferrule"):
        mode = "stream" if kind == "ferrule-stream" else "broadcast"
        bus = RedisBus(client, prefix="echo:", mode=mode)
        group = "echo" if mode == "stream" else None
        bus.subscribe("ping", lambda s: bus.publish("pong", s.data), weak=False, group=group)
        ready.set()
        stop.wait()
        bus.close()
    elif kind == "redis-py-pubsub":
        ps = client.pubsub(ignore_subscribe_messages=True)
        ps.subscribe("hand:ping")
        ps.get_message(timeout=1.0)  # the subscription's confirmation
        ready.set()
        while not stop.is_set():
            msg = ps.get_message(timeout=0.25)
            if msg is not None:
                client.publish("hand:pong", msg["data"])
        ps.close()
    else:
        client.xgroup_create("hand:ping", "echo", id="$", mkstream=True)
        ready.set()
        while not stop.is_set():
            reply = client.xreadgroup("echo", "c1", {"hand:ping": ">"}, count=16, block=250)
            for _key, entries in reply or []:
                for entry_id, fields in entries:
                    client.xadd("hand:pong", fields, maxlen=10_000, approximate=True)
                    client.xack("hand:ping", "echo", entry_id)


@pytest.mark.parametrize("kind", BUS_KINDS)
def test_bus_end_to_end_two_processes(benchmark: Any, server: RedisServer, kind: str) -> None:
    benchmark.group = "redis bus ping-pong, 2 processes"
    c = server.client()
    c.flushall()
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_echo, args=(kind, server.url, ready, stop))
    child.start()
    try:
        assert ready.wait(30)
        if kind.startswith("ferrule"):
            mode = "stream" if kind == "ferrule-stream" else "broadcast"
            bus = RedisBus(c, prefix="echo:", mode=mode)
            pong = bus.subscribe("pong")

            def ping(i: int) -> None:
                bus.publish("ping", i)
                assert pong.get(timeout=5.0).data == i

        elif kind == "redis-py-pubsub":
            ps = c.pubsub(ignore_subscribe_messages=True)
            ps.subscribe("hand:pong")
            ps.get_message(timeout=1.0)

            def ping(i: int) -> None:
                c.publish("hand:ping", json.dumps(i))
                msg = None
                while msg is None:
                    msg = ps.get_message(timeout=5.0)
                assert json.loads(msg["data"]) == i

        else:
            last = ["0-0"]  # the pong stream is empty (flushed)

            def ping(i: int) -> None:
                c.xadd("hand:ping", {"t": "ping", "d": json.dumps(i)}, maxlen=10_000)
                reply = c.xread({"hand:pong": last[0]}, count=1, block=2000)
                entry_id, fields = reply[0][1][0]
                last[0] = entry_id
                assert json.loads(fields[b"d"]) == i

        counter = itertools.count()
        ping(next(counter))  # warm: connections, the stream's first id

        def run() -> None:
            for _ in range(PINGS):
                ping(next(counter))

        benchmark.extra_info["round_trips_per_round"] = PINGS
        benchmark(run)
        if kind.startswith("ferrule"):
            bus.close()
    finally:
        stop.set()
        child.join(10)
        c.close()


def test_bus_requests_per_publish(server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.connection import Connection

    sent = 0
    original = Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        nonlocal sent
        sent += 1
        original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    for mode in ("broadcast", "stream"):
        bus = RedisBus(redis.Redis.from_url(server.url), prefix="count:", mode=mode)  # type: ignore[arg-type]
        bus.publish("warm")
        sent = 0
        for i in range(100):
            bus.publish("job.done", i)
        print(f"\nrequests per RedisBus.publish ({mode}): {sent / 100}")
        assert sent == 100
        bus.close()
