"""RedisBus against a real redis-server: SignalBus's API across processes (fan-out,
exactly-once for the publisher's own subscriptions, pattern routing, the publisher's
timestamp everywhere), both modes, consumer groups (one member per signal,
acknowledgement, redelivery after a crash, catching up after being offline), replay,
codecs and the wire format, a server killed and restarted, what stays in Redis, and
garbage collection and interpreter exit.

Multi-process tests run workers in spawned processes (the functions below); they report
through multiprocessing queues and wait on events, never on sleeps for ordering.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ferrule import BackendError, QueueEmpty, Signal, SignalBus

from tests.redis_server import RedisServer, free_port, server_or_skip

redis = pytest.importorskip("redis")
from ferrule.redis import Codec, JsonCodec, PickleCodec, RedisBus  # noqa: E402

FAST = {"backoff": 0.01, "max_backoff": 0.1}
MP = multiprocessing.get_context("spawn")


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def drain(sub: Any, n: int, timeout: float = 5.0) -> list[Signal]:
    return [sub.get(timeout=timeout) for _ in range(n)]


def nothing_more(sub: Any, wait: float = 0.3) -> bool:
    try:
        sub.get(timeout=wait)
    except QueueEmpty:
        return True
    return False


@pytest.fixture
def clients() -> Iterator[Callable[..., Any]]:
    """A factory of clients of a server, closed after the test."""
    made: list[Any] = []

    def make(server: RedisServer, **kw: Any) -> Any:
        c = server.client(**kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def buses(
    redis_server: RedisServer, redis_client: Any, clients: Any
) -> Iterator[Callable[..., RedisBus]]:
    """A factory of buses, each on its own client of the session's (emptied) server."""
    made: list[RedisBus] = []

    def make(**kw: Any) -> RedisBus:
        b = RedisBus(clients(redis_server), **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


# ---- one process -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["broadcast", "stream"])
def test_publisher_and_other_buses_each_get_a_signal_once(buses: Any, mode: str) -> None:
    a, b = buses(mode=mode), buses(mode=mode)
    mine = a.subscribe("job.#")
    theirs = b.subscribe("job.*")
    exact = b.subscribe("job.done")  # overlaps job.*: a separate Redis subscription
    before = time.time()
    assert a.publish("job.done", {"n": 1}) == 1  # this process's subscriptions
    after = time.time()
    got = [drain(mine, 1)[0], drain(theirs, 1)[0], drain(exact, 1)[0]]
    assert [(s.type, s.data) for s in got] == [("job.done", {"n": 1})] * 3
    # One timestamp in every bus: the publisher's clock read in publish, not each bus's
    # delivery time.
    assert len({s.timestamp for s in got}) == 1
    assert before <= got[0].timestamp <= after
    assert nothing_more(mine) and nothing_more(theirs, 0.01) and nothing_more(exact, 0.01)


@pytest.mark.parametrize("mode", ["broadcast", "stream"])
def test_patterns_route_as_in_signal_bus(buses: Any, mode: str) -> None:
    a, b = buses(mode=mode), buses(mode=mode)
    star = b.subscribe("a.*")
    hashes = b.subscribe("#.error")
    for t in ("a.b", "a.b.c", "ab", "x.error", "a.b.error", "error", "a"):
        a.publish(t)
    assert [s.type for s in drain(star, 1)] == ["a.b"]
    assert [s.type for s in drain(hashes, 3)] == ["x.error", "a.b.error", "error"]
    assert nothing_more(star) and nothing_more(hashes, 0.01)


def test_handlers_weak_owner_and_overflow_are_signal_bus_ones(buses: Any) -> None:
    a, b = buses(), buses()

    class Listener:
        def __init__(self) -> None:
            self.got: list[Any] = []
            self.done = threading.Event()

        def on(self, sig: Signal) -> None:
            self.got.append(sig.data)
            self.done.set()

    obj = Listener()
    sub = b.subscribe("x", obj.on)  # weak=True: a bound method held weakly
    a.publish("x", 1)
    assert obj.done.wait(5)
    assert obj.got == [1]
    del obj
    gc.collect()
    assert wait_for(lambda: sub.cancelled)
    bounded = b.subscribe("y", maxsize=2, overflow="drop_newest")
    for i in range(5):
        a.publish("y", i)
    assert wait_for(lambda: bounded.stats().accepted + bounded.stats().rejected == 5)
    assert [s.data for s in drain(bounded, 2)] == [0, 1]
    with pytest.raises(ValueError, match="empty segment"):
        b.subscribe("a..b")


def test_subscriptions_made_on_the_local_bus_receive_too(buses: Any) -> None:
    local = SignalBus()
    a, b = buses(), buses(local=local)
    assert b.local is local
    theirs = a.subscribe("direct.#")
    b.subscribe("first")  # starts b's listener
    direct = local.subscribe("direct.#")  # bridged by the listener's reconciliation
    assert wait_for(lambda: a.publish("direct.x", 1) == 1 and direct.qsize() > 0)
    local.publish("direct.local", 2)  # published on the local bus: stays in it
    assert {s.type for s in _all(direct)} == {"direct.x", "direct.local"}
    assert {s.type for s in _all(theirs)} == {"direct.x"}


def _all(sub: Any) -> list[Signal]:
    out = []
    while True:
        try:
            out.append(sub.get(timeout=0.3))
        except QueueEmpty:
            return out


def test_async_handler(buses: Any) -> None:
    import asyncio

    a, b = buses(), buses()

    async def main() -> list[Any]:
        got: list[Any] = []
        done = asyncio.Event()

        async def on(sig: Signal) -> None:
            got.append(sig.data)
            done.set()

        b.subscribe("async.x", on)
        a.publish("async.x", [1, 2])
        await asyncio.wait_for(done.wait(), 5)
        return got

    assert asyncio.run(main()) == [[1, 2]]


def test_publish_checks_before_sending(buses: Any, redis_client: Any) -> None:
    a = buses(mode="stream")
    with pytest.raises(ValueError, match="empty segment"):
        a.publish("a..b")
    with pytest.raises(ValueError):
        a.publish("a.*")
    with pytest.raises(TypeError):
        a.publish("a", object())  # JSON cannot encode it
    with pytest.raises(TypeError):
        a.publish(7)  # type: ignore[arg-type]
    assert redis_client.exists(b"ferrule:bus:stream") == 0  # nothing was sent


# ---- codecs -----------------------------------------------------------------------------


def test_codecs(buses: Any) -> None:
    a, b = buses(codec=PickleCodec()), buses(codec=PickleCodec())
    sub = b.subscribe("p")
    a.publish("p", {"t": (1, 2), "s": {3}})
    assert drain(sub, 1)[0].data == {"t": (1, 2), "s": {3}}
    j1, j2 = buses(prefix="j:"), buses(prefix="j:")
    sub = j2.subscribe("p")
    j1.publish("p", {"t": (1, 2), 1: "x"})
    assert drain(sub, 1)[0].data == {"t": [1, 2], "1": "x"}  # as JSON gives it back

    class Upper:
        def encode(self, obj: Any) -> bytes:
            return str(obj).upper().encode()

        def decode(self, data: bytes) -> Any:
            return data.decode()

    assert isinstance(Upper(), Codec) and isinstance(JsonCodec(), Codec)
    u1, u2 = buses(prefix="u:", codec=Upper()), buses(prefix="u:", codec=Upper())
    sub = u2.subscribe("p")
    u1.publish("p", "abc")
    assert drain(sub, 1)[0].data == "ABC"

    class Bad:
        def encode(self, obj: Any) -> Any:
            return "not bytes"

        def decode(self, data: bytes) -> Any:
            return data

    with pytest.raises(TypeError, match=r"codec\.encode must return bytes, not 'str'"):
        buses(codec=Bad()).publish("p", 1)
    with pytest.raises(TypeError, match="codec must have encode"):
        RedisBus(redis.Redis(), codec=object())  # type: ignore[arg-type]


def test_undecodable_messages_are_skipped(buses: Any, redis_client: Any) -> None:
    a, b = buses(), buses()
    sub = b.subscribe("x")
    redis_client.publish(b"ferrule:bus:s:x", b"short")  # a foreign writer
    redis_client.publish(b"ferrule:bus:s:x", b"\0" * 24 + b"{not json")
    a.publish("x", "ok")
    assert [s.data for s in drain(sub, 1)] == ["ok"]


def _head(origin: bytes, stamp: float) -> bytes:
    """A Pub/Sub message's head as RedisBus writes it: origin, sequence, publish time."""
    return struct.pack("!8sQd", origin, 1, stamp)


@pytest.mark.parametrize("mode", ["broadcast", "stream"])
def test_the_time_on_the_wire_is_the_signals_timestamp(
    buses: Any, redis_client: Any, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A received signal carries the publish time its message holds, whatever the
    receiver's clock says; a message whose time is missing or not a time is skipped."""
    a, b = buses(mode=mode), buses(mode=mode)
    sub = b.subscribe("x")
    if mode == "broadcast":
        channel = b"ferrule:bus:s:x"
        redis_client.publish(channel, _head(b"foreign1", 1000.5) + b'"then"')
        bad = [_head(b"foreign2", float("nan")), _head(b"foreign3", -5.0)]
        for i, head in enumerate(bad):
            redis_client.publish(channel, head + str(i).encode())
    else:
        key = b"ferrule:bus:stream"
        redis_client.xadd(key, {b"t": b"x", b"d": b'"then"', b"ts": b"1000.5", b"o": b"foreign1"})
        bad = [b"nan", b"-5", b"soon", None]
        for stamp in bad:
            entry = {b"t": b"x", b"d": b"0", b"o": b"foreign2"}
            if stamp is not None:
                entry[b"ts"] = stamp
            redis_client.xadd(key, entry)
    before = time.time()
    a.publish("x", "now")
    got = drain(sub, 2)
    assert [s.data for s in got] == ["then", "now"]
    assert got[0].timestamp == 1000.5
    assert got[1].timestamp >= before
    assert nothing_more(sub)
    skipped = [r for r in caplog.records if "could not be delivered" in r.getMessage()]
    assert len(skipped) == len(bad)


# ---- bad input ---------------------------------------------------------------------------


def test_bad_constructor_arguments() -> None:
    c = redis.Redis()
    with pytest.raises(TypeError, match=r"client must be a redis\.Redis, not 'int'"):
        RedisBus(1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode must be 'broadcast' or 'stream'"):
        RedisBus(c, mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'local'"):
        RedisBus(c, on_error="allow")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"local must be a ferrule\.SignalBus"):
        RedisBus(c, local=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"maxlen must be 1..2\*\*63-1"):
        RedisBus(c, maxlen=0)
    with pytest.raises(ValueError, match="claim_after must be a finite number"):
        RedisBus(c, claim_after=float("nan"))
    with pytest.raises(ValueError, match="max_backoff"):
        RedisBus(c, backoff=2.0, max_backoff=1.0)
    with pytest.raises(TypeError, match="timeout must be a number"):
        RedisBus(c, timeout="1")  # type: ignore[arg-type]


def test_bad_subscribe_arguments(buses: Any) -> None:
    b = buses()
    with pytest.raises(ValueError, match="group and start_id need mode='stream'"):
        b.subscribe("x", print, group="g")
    s = buses(mode="stream")
    with pytest.raises(TypeError, match="a group subscription needs a handler"):
        s.subscribe("x", group="g")
    with pytest.raises(ValueError, match="without '/'"):
        s.subscribe("x", print, group="a/b")
    with pytest.raises(ValueError, match="start_id must be"):
        s.subscribe("x", start_id="$")  # only a new group starts at '$'
    with pytest.raises(ValueError, match="start_id must be"):
        s.subscribe("x", print, group="g", start_id="12-x")
    with pytest.raises(TypeError, match="handler must be callable"):
        s.subscribe("x", 3, group="g")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty segment"):
        s.subscribe("a..b", print, group="g")
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.publish("x")
    with pytest.raises(RuntimeError, match="closed"):
        s.subscribe("x")


def test_constructor_does_no_io() -> None:
    bus = RedisBus(redis.Redis(port=free_port(), socket_connect_timeout=0.2))
    assert bus.mode == "broadcast" and bus.prefix == "ferrule:bus:"
    assert repr(bus) == (
        "RedisBus(prefix='ferrule:bus:', mode='broadcast', codec=JsonCodec(), on_error='raise')"
    )
    bus.close()


# ---- stream mode: groups and replay ------------------------------------------------------


def test_group_members_share_the_signals_and_ack_them(buses: Any, redis_client: Any) -> None:
    a, b, pub = buses(mode="stream"), buses(mode="stream"), buses(mode="stream")
    got: queue.Queue[tuple[str, Any]] = queue.Queue()
    a.subscribe("job.*", lambda s: got.put(("a", s.data)), group="workers")
    b.subscribe("job.*", lambda s: got.put(("b", s.data)), group="workers")
    other = b.subscribe("job.#", group="audit", handler=lambda s: got.put(("audit", s.data)))
    for i in range(40):
        pub.publish("job.run", i)
    pub.publish("mail.x", "not a job")
    items = [got.get(timeout=5) for _ in range(80)]
    workers = sorted(d for who, d in items if who != "audit")
    assert workers == list(range(40))  # each once, by one member
    assert sorted(d for who, d in items if who == "audit") == list(range(40))
    assert {who for who, _ in items} == {"a", "b", "audit"}
    with pytest.raises(queue.Empty):
        got.get(timeout=0.3)
    key = b"ferrule:bus:stream"
    assert wait_for(lambda: redis_client.xpending(key, "workers/job.*")["pending"] == 0)
    other.cancel()


def test_handler_that_raises_leaves_the_signal_for_redelivery(buses: Any) -> None:
    a, pub = buses(mode="stream", claim_after=0.2), buses(mode="stream")
    calls: queue.Queue[Any] = queue.Queue()
    attempts: list[int] = []  # only the handler touches it; calls is drained meanwhile

    def flaky(sig: Signal) -> None:
        attempts.append(1)
        calls.put((sig.data, sig.timestamp))
        if len(attempts) == 1:
            raise RuntimeError("first try fails")

    a.subscribe("t", flaky, group="g")
    mine = pub.local.subscribe("t")
    pub.publish("t", "x")
    stamp = mine.get_nowait().timestamp
    # Redelivered with its publish time, not the time of the second delivery.
    assert [calls.get(timeout=5), calls.get(timeout=5)] == [("x", stamp), ("x", stamp)]
    assert len(attempts) == 2


def test_offline_group_catches_up(buses: Any) -> None:
    pub = buses(mode="stream")
    first = buses(mode="stream")
    first.subscribe("job.*", print, group="workers")  # creates the group
    first.close()  # the group has no member now
    for i in range(5):
        pub.publish("job.run", i)
    back = buses(mode="stream")
    got: queue.Queue[Any] = queue.Queue()
    back.subscribe("job.*", lambda s: got.put(s.data), group="workers")
    assert [got.get(timeout=5) for _ in range(5)] == list(range(5))


def test_replay_from_an_id(buses: Any, redis_client: Any) -> None:
    pub = buses(mode="stream")
    for i in range(3):
        pub.publish("r.x", i)
    ids = [e[0].decode() for e in redis_client.xrange(b"ferrule:bus:stream")]
    reader = buses(mode="stream")
    everything = reader.subscribe("r.#", start_id="0")
    after_first = reader.subscribe("r.#", start_id=ids[0])
    assert [s.data for s in drain(everything, 3)] == [0, 1, 2]
    assert [s.data for s in drain(after_first, 2)] == [1, 2]
    pub.publish("r.x", 3)  # then they follow the stream
    assert drain(everything, 1)[0].data == 3 and drain(after_first, 1)[0].data == 3


def test_replayed_and_caught_up_signals_keep_their_publish_time(
    buses: Any, redis_client: Any
) -> None:
    pub = buses(mode="stream")
    mine = pub.local.subscribe("r.#")
    pub.publish("r.x", 0)
    stamp = mine.get_nowait().timestamp
    ((_id, entry),) = redis_client.xrange(b"ferrule:bus:stream")
    assert float(entry[b"ts"]) == stamp  # what the stream holds
    reader = buses(mode="stream")
    replay = reader.subscribe("r.#", start_id="0")
    late: queue.Queue[float] = queue.Queue()
    reader.subscribe("r.*", lambda s: late.put(s.timestamp), group="late", start_id="0")
    assert drain(replay, 1)[0].timestamp == stamp
    assert late.get(timeout=5) == stamp


def test_stream_is_trimmed_to_about_maxlen(buses: Any, redis_client: Any) -> None:
    pub = buses(mode="stream", maxlen=100)
    for i in range(1000):
        pub.publish("t", i)
    assert redis_client.xlen(b"ferrule:bus:stream") < 300  # MAXLEN ~: whole macro nodes


def test_group_weak_handler_and_async_handler(buses: Any) -> None:
    import asyncio

    a, pub = buses(mode="stream"), buses(mode="stream")

    class Worker:
        def on(self, sig: Signal) -> None:
            pass

    w = Worker()
    sub = a.subscribe("w", w.on, group="g")
    del w
    gc.collect()
    assert sub.cancelled

    async def main() -> list[Any]:
        got: list[Any] = []
        done = asyncio.Event()

        async def on(sig: Signal) -> None:
            await asyncio.sleep(0)
            got.append(sig.data)
            done.set()

        a.subscribe("aw", on, group="ga")
        pub.publish("aw", "x")
        await asyncio.wait_for(done.wait(), 5)
        return got

    assert asyncio.run(main()) == ["x"]


def test_close_leaves_only_the_stream_and_its_groups(buses: Any, redis_client: Any) -> None:
    b = buses()
    b.subscribe("x.#")
    b.publish("x.y")
    b.close()
    assert redis_client.keys("*") == []
    assert redis_client.pubsub_numpat() == 0
    assert wait_for(lambda: redis_client.pubsub_channels() == [])
    s = buses(mode="stream")
    handled = threading.Event()
    s.subscribe("x", lambda sig: handled.set(), group="g")
    s.publish("x")
    assert handled.wait(5)
    s.close()  # acknowledges it, and removes its consumer (it holds nothing now)
    assert redis_client.keys("*") == [b"ferrule:bus:stream"]
    groups = redis_client.xinfo_groups(b"ferrule:bus:stream")
    assert [(g["name"], g["consumers"], g["pending"]) for g in groups] == [(b"g/x", 0, 0)]


def test_clients_that_decode_responses_work_too(redis_server: RedisServer, clients: Any) -> None:
    decoding = clients(redis_server, decode_responses=True)
    with RedisBus(decoding, mode="stream") as a, RedisBus(decoding) as b:
        sub = a.subscribe("d")
        plain = b.subscribe("d")
        a.publish("d", "é")
        with RedisBus(clients(redis_server), mode="stream") as other:
            other.publish("d", 1)
        assert [s.data for s in drain(sub, 2)] == ["é", 1]
        b.publish("d", 2)
        assert drain(plain, 1)[0].data == 2


# ---- several processes -------------------------------------------------------------------


def fan_worker(port: int, me: int, n: int, ready: Any, go: Any, out: Any) -> None:
    """Subscribe ``fan.#`` and ``only.*``, then publish ``fan.<me>``; report everything
    received once every process's signal is there (and a little longer)."""
    import redis as r
    from ferrule.redis import RedisBus

    bus = RedisBus(r.Redis(port=port))
    fan = bus.subscribe("fan.#")
    only = bus.subscribe("only.*")
    ready.put(me)
    go.wait(10)
    bus.publish(f"fan.{me}", {"from": me, "pid": os.getpid()})
    got = [fan.get(timeout=10) for _ in range(n)]
    got += _all(fan)
    only_got = _all(only)
    out.put((me, [(s.type, s.data["from"]) for s in got], [s.type for s in only_got]))
    bus.close()


def test_fan_out_across_processes(redis_server: RedisServer, clients: Any) -> None:
    n = 3
    ready, out, go = MP.Queue(), MP.Queue(), MP.Event()
    procs = [
        MP.Process(target=fan_worker, args=(redis_server.port, i, n + 1, ready, go, out))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    with RedisBus(clients(redis_server)) as bus:
        fan = bus.subscribe("fan.#")
        for _ in range(n):
            ready.get(timeout=30)
        go.set()
        bus.publish("fan.parent", {"from": "parent"})
        bus.publish("only.one", {"from": "parent"})
        bus.publish("only.one.two", {"from": "parent"})  # only.* does not match it
        results = sorted(out.get(timeout=30) for _ in range(n))
        mine = drain(fan, n + 1) + _all(fan)
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    expected = sorted([("fan.parent", "parent")] + [(f"fan.{i}", i) for i in range(n)], key=str)
    assert sorted(((s.type, s.data["from"]) for s in mine), key=str) == expected
    for _me, got, only in results:
        assert sorted(got, key=str) == expected  # every signal once, its own included
        assert only == ["only.one"]


def stamp_worker(port: int, mode: str, out: Any) -> None:
    """Publish ``stamp.x`` once; report the pid and the timestamp this process's own
    subscription got."""
    import redis as r
    from ferrule.redis import RedisBus

    with RedisBus(r.Redis(port=port), mode=mode) as bus:
        mine = bus.local.subscribe("stamp.#")
        bus.publish("stamp.x", os.getpid())
        out.put((os.getpid(), mine.get(timeout=10).timestamp))


@pytest.mark.parametrize("mode", ["broadcast", "stream"])
def test_a_signal_from_another_process_keeps_its_publish_time(
    redis_server: RedisServer, clients: Any, mode: str
) -> None:
    out = MP.Queue()
    with RedisBus(clients(redis_server), mode=mode) as bus:
        sub = bus.subscribe("stamp.#")
        proc = MP.Process(target=stamp_worker, args=(redis_server.port, mode, out))
        proc.start()
        pid, stamp = out.get(timeout=30)
        sig = sub.get(timeout=10)
    proc.join(10)
    assert proc.exitcode == 0
    assert sig.data == pid != os.getpid()
    assert sig.timestamp == stamp


def group_worker(port: int, name: str, ready: Any, out: Any, stop: Any) -> None:
    import redis as r
    from ferrule.redis import RedisBus

    bus = RedisBus(r.Redis(port=port), mode="stream")
    bus.subscribe("job.*", lambda s: out.put((name, s.data)), group="workers")
    ready.put(name)
    stop.wait(30)
    bus.close()


def test_group_delivers_to_exactly_one_member_across_processes(
    redis_server: RedisServer, clients: Any
) -> None:
    clients(redis_server).flushall()
    ready, out, stop = MP.Queue(), MP.Queue(), MP.Event()
    procs = [
        MP.Process(target=group_worker, args=(redis_server.port, f"w{i}", ready, out, stop))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=30)
        with RedisBus(clients(redis_server), mode="stream") as pub:
            for i in range(50):
                pub.publish("job.run", i)
        got = [out.get(timeout=10) for _ in range(50)]
        with pytest.raises(queue.Empty):
            out.get(timeout=0.5)
    finally:
        stop.set()
        for p in procs:
            p.join(10)
    assert sorted(d for _, d in got) == list(range(50))
    assert {w for w, _ in got} == {"w0", "w1"}


def crashing_member(port: int, ready: Any) -> None:
    import redis as r
    from ferrule.redis import RedisBus

    bus = RedisBus(r.Redis(port=port), mode="stream")
    bus.subscribe("job.*", lambda s: os._exit(3), group="workers")
    ready.put("up")
    time.sleep(30)


def test_signal_of_a_crashed_member_is_redelivered(redis_server: RedisServer, clients: Any) -> None:
    clients(redis_server).flushall()
    ready = MP.Queue()
    p = MP.Process(target=crashing_member, args=(redis_server.port, ready))
    p.start()
    ready.get(timeout=30)
    with RedisBus(clients(redis_server), mode="stream") as pub:
        pub.publish("job.run", "important")
        p.join(15)
        assert p.exitcode == 3  # it took the signal and died before acknowledging
        got: queue.Queue[Any] = queue.Queue()
        with RedisBus(clients(redis_server), mode="stream", claim_after=0.3) as rescuer:
            rescuer.subscribe("job.*", lambda s: got.put(s.data), group="workers")
            assert got.get(timeout=10) == "important"
            # The dead member's consumer is reaped once it holds nothing.
            c = clients(redis_server)
            assert wait_for(
                lambda: len(c.xinfo_consumers(b"ferrule:bus:stream", "workers/job.*")) == 1
            )


# ---- the server killed and restarted -----------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    s = server_or_skip()
    yield s
    s.close()


def test_broadcast_survives_a_restart(own_server: RedisServer, clients: Any) -> None:
    pub = RedisBus(clients(own_server), **FAST)
    lenient = RedisBus(clients(own_server), on_error="local", **FAST)
    sub_bus = RedisBus(clients(own_server), **FAST)
    sub = sub_bus.subscribe("t")
    here = lenient.subscribe("t")
    own_server.stop()
    with pytest.raises(BackendError) as info:
        pub.publish("t", "lost")
    assert isinstance(info.value.__cause__, redis.RedisError)
    assert lenient.publish("t", "local only") == 1  # this process only
    assert drain(here, 1)[0].data == "local only"
    with pytest.raises(BackendError):
        pub.subscribe("u")
    assert pub.local.subscriptions() == []  # the failed subscription was not made
    own_server.start()
    # The listeners resubscribe by themselves; once they have, signals flow again.
    assert wait_for(lambda: pub.publish("t", "back") >= 0 and sub.qsize() > 0, 10)
    assert {s.data for s in _all(sub)} == {"back"}
    for b in (pub, lenient, sub_bus):
        b.close()


def test_stream_group_resumes_after_a_restart_without_loss(
    own_server: RedisServer, clients: Any
) -> None:
    got: queue.Queue[Any] = queue.Queue()
    member = RedisBus(clients(own_server), mode="stream", **FAST)
    member.subscribe("job.*", lambda s: got.put(s.data), group="workers")
    follower = member.subscribe("job.#")
    pub = RedisBus(clients(own_server), mode="stream", **FAST)
    pub.publish("job.run", 0)
    assert got.get(timeout=5) == 0 and drain(follower, 1)[0].data == 0
    own_server.stop()
    with pytest.raises(BackendError):
        pub.publish("job.run", "lost")
    own_server.start()  # empty: no persistence
    for i in range(1, 4):  # published before the readers are back
        pub.publish("job.run", i)
    assert sorted(got.get(timeout=10) for _ in range(3)) == [1, 2, 3]
    assert [s.data for s in drain(follower, 3, timeout=10)] == [1, 2, 3]
    member.close()
    pub.close()


# ---- garbage collection and exit ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["broadcast", "stream"])
def test_a_cycle_through_a_handler_is_collected_and_its_threads_end(
    redis_server: RedisServer, mode: str, clients: Any
) -> None:
    before = set(threading.enumerate())
    client = clients(redis_server)

    class Service:
        def __init__(self) -> None:
            self.bus = RedisBus(client, mode=mode)
            self.bus.subscribe("a", lambda s: self, weak=False)  # closure -> self -> bus
            if mode == "stream":
                self.bus.subscribe("b", lambda s: self, group="g")

    svc = Service()
    ref = weakref.ref(svc.bus)
    del svc
    gc.collect()
    assert ref() is None
    assert wait_for(lambda: set(threading.enumerate()) <= before, 5), threading.enumerate()
    client.close()


def test_dropped_bus_stops_its_listener(redis_client: Any) -> None:
    bus = RedisBus(redis_client)
    bus.subscribe("x")
    listener = bus._link.thread
    assert listener is not None and listener.daemon and listener.is_alive()
    del bus
    listener.join(5)
    assert not listener.is_alive()


EXIT_PROGRAM = """
import os, redis, threading
from ferrule.redis import RedisBus
port = {port}
busy = threading.Event()
def slow(sig):
    busy.set()
    time.sleep(1)  # still running when the main thread exits
for mode in ("broadcast", "stream"):
    bus = RedisBus(redis.Redis(port=port), mode=mode, prefix="exit:" + mode + ":")
    bus.subscribe("x.#", slow)
    bus.subscribe("y")
    if mode == "stream":
        bus.subscribe("g", slow, group="g")
        bus.publish("g")
    daemon(forever(lambda b=bus: b.publish("x.y", 1)), 2)
    daemon(forever(lambda b=bus: b.publish("y", 2)), 2)
busy.wait(5)
"""


def test_threads_inside_the_bus_at_exit(redis_server: RedisServer) -> None:
    from tests.test_exit import run

    proc = run(EXIT_PROGRAM.format(port=redis_server.port))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for marker in ("FATAL", "Fatal Python error", "panicked", "Traceback"):
        assert marker not in proc.stderr, proc.stderr[-2000:]


def test_close_wakes_a_broadcast_listener_at_once(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() does not wait out the listener's socket read: with a read timeout far
    longer than close's join, the thread is gone when close returns."""
    import ferrule.redis._bus as mod

    monkeypatch.setattr(mod, "_POLL", 60.0)
    bus = RedisBus(redis_server.client(), prefix="wake:")
    bus.subscribe("a", maxsize=1)
    listener = bus._link.thread
    assert listener is not None and listener.is_alive()
    bus.close()
    assert not listener.is_alive()


def test_public_names() -> None:
    import ferrule.redis

    for name in ("RedisBus", "JsonCodec", "PickleCodec", "Codec"):
        assert getattr(ferrule.redis, name).__module__ == "ferrule.redis"
    assert not hasattr(ferrule, "RedisBus")  # import ferrule never needs redis
