"""RedisCircuitBreaker against a real redis-server: CircuitBreaker's contract (shared tests
run on both), the shared state across processes (failures in one open it for all, one
prober in half-open, a success closes it for all), the local view and its staleness
bound, probe leases, keys and their expiry, on_error, a server restart, asyncio
clients, notifications, a stateful model against the in-process breaker, garbage
collection and interpreter exit.

The server's clock is real: open periods are either an hour (nothing times out during a
test) or zero (half-open at once, as the in-process breaker with ``reset_timeout=0``).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import ferrule
import pytest
from ferrule import BackendError, CircuitBreaker, CircuitOpen, SignalBus
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.redis_server import (
    RedisServer,
    breaker_call,
    breaker_fail,
    breaker_probe,
    free_port,
    server_or_skip,
)

redis = pytest.importorskip("redis")
from ferrule.redis import RedisBreakerStats, RedisCircuitBreaker  # noqa: E402

Make = Callable[..., Any]
HOUR = 3600.0


class Down(Exception):
    pass


def down() -> None:
    raise Down("refused")


def fail(cb: Any, n: int = 1) -> None:
    for _ in range(n):
        with pytest.raises(Down):
            cb.call(down)


def live_keys(client: Any) -> list[bytes]:
    """Keys a SCAN finds (it skips keys whose expiry has passed)."""
    return sorted(client.scan_iter(count=1000))


def dead_client() -> Any:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest) -> Make:
    """A factory of breakers: the in-process one, then the Redis one (named "b")."""
    if request.param == "memory":
        return lambda *a, **kw: CircuitBreaker(*a, name="b", **kw)
    client = request.getfixturevalue("redis_client")
    return lambda *a, **kw: RedisCircuitBreaker(client, "b", *a, **kw)


# ---- CircuitBreaker's contract, on both -----------------------------------------------------


def test_consecutive_failures_open_and_a_success_resets_the_run(make: Make) -> None:
    cb = make(3, HOUR, expected=Down)
    fail(cb, 2)
    assert cb.call(len, "ab") == 2
    fail(cb, 2)
    assert cb.state == "closed" and cb.stats().consecutive_failures == 2
    fail(cb)
    assert cb.state == "open"
    with pytest.raises(CircuitOpen) as info:
        cb.call(len, "x")
    assert HOUR - 5 < info.value.retry_after <= HOUR
    assert str(info.value).startswith("circuit breaker 'b' is open; retry after ")
    s = cb.stats()
    assert (s.state, s.calls, s.successes, s.failures, s.rejections) == ("open", 6, 1, 5, 1)


def test_half_open_probe_closes_or_reopens(make: Make) -> None:
    cb = make(1, 0.0, success_threshold=2, half_open_max_calls=1)
    fail(cb)
    assert cb.state == "half_open"  # a zero timeout: half-open at once
    with cb:
        with pytest.raises(CircuitOpen) as info:  # the one slot is taken
            cb.call(len, "x")
        assert info.value.retry_after == 0.0
        assert "half-open and its 1 probe call(s) are in flight" in str(info.value)
    assert cb.state == "half_open"  # one success of two
    cb.call(len, "x")
    assert cb.state == "closed"
    fail(cb)
    cb.call(len, "x")
    fail(cb)  # a failed probe re-opens
    assert cb.state == "half_open" and cb.stats().state_changes == 7


def test_ignored_exceptions_count_neither_way_and_free_a_probe(make: Make) -> None:
    cb = make(1, 0.0, expected=Down)
    with pytest.raises(KeyError):
        cb.call(dict().__getitem__, "k")
    assert cb.state == "closed"
    fail(cb)
    with pytest.raises(KeyError), cb:  # a probe ending outside `expected`
        raise KeyError("k")
    assert cb.state == "half_open"
    assert cb.call(len, "ab") == 2 and cb.state == "closed"
    assert cb.stats().ignored == 2


def test_failure_rate_over_the_last_calls(make: Make) -> None:
    cb = make(failure_rate=0.5, min_calls=4, window_calls=4, reset_timeout=HOUR)
    cb.call(len, "a")
    fail(cb, 2)
    assert cb.state == "closed"  # 2 of 3: fewer than min_calls
    s = cb.stats()
    assert (s.window_calls, s.window_failures) == (3, 2)
    cb.call(len, "a")  # a success never opens
    for _ in range(3):
        cb.call(len, "a")
    s = cb.stats()
    assert (s.window_calls, s.window_failures) == (4, 0)  # the ring moved on
    fail(cb, 1)
    assert cb.state == "closed"
    fail(cb, 1)  # 2 of the last 4
    assert cb.state == "open"


def test_failure_rate_over_a_time_window(make: Make) -> None:
    cb = make(failure_rate=0.5, min_calls=4, window=HOUR, reset_timeout=HOUR)
    for _ in range(2):
        cb.call(len, "a")
    fail(cb)
    s = cb.stats()
    assert (s.state, s.window_calls, s.window_failures) == ("closed", 3, 1)
    fail(cb)
    assert cb.state == "open"


def test_slow_calls_count_as_failures(make: Make) -> None:
    cb = make(2, HOUR, slow_call=0.05)
    assert cb.call(time.sleep, 0.06) is None
    assert cb.call(len, "a") == 1
    cb.call(time.sleep, 0.06)
    cb.call(time.sleep, 0.06)
    s = cb.stats()
    assert (s.state, s.failures, s.slow_calls, s.successes) == ("open", 3, 3, 1)


def test_forced_states_and_reset(make: Make) -> None:
    cb = make(1, HOUR)
    cb.force_open()
    with pytest.raises(CircuitOpen) as info:
        cb.call(len, "a")
    assert info.value.retry_after == float("inf")
    assert (cb.state, cb.retry_after) == ("forced_open", float("inf"))
    cb.force_closed()
    fail(cb, 3)
    assert cb.state == "forced_closed"
    cb.reset()
    assert cb.state == "closed" and cb.retry_after == 0.0
    fail(cb)
    assert cb.state == "open"
    cb.reset()
    assert cb.state == "closed"


def test_outcomes_from_before_a_change_do_not_count(make: Make) -> None:
    cb = make(1, 0.0)
    with pytest.raises(Down), cb:  # admitted while closed...
        cb.reset()  # ...a new period starts
        down()
    assert cb.state == "closed"
    with pytest.raises(Down), cb:
        down()
    assert cb.state == "half_open"
    with cb:  # the probe
        cb.reset()
    # Its success belonged to a half-open period that is over.
    assert cb.state == "closed" and cb.stats().state_changes == 3


def test_decorator_and_with(make: Make) -> None:
    cb = make(2, HOUR)

    @cb
    def charge(amount: int) -> str:
        return f"charged {amount}"

    assert charge(5) == "charged 5" and charge.__name__ == "charge"
    with cb as entered:
        assert entered is cb
    with pytest.raises(TypeError, match=r"^func must be callable, not 'int'"):
        cb(3)
    s = cb.stats()
    assert (s.calls, s.successes) == (2, 2)


def test_notifications_on_bus_and_callback(make: Make) -> None:
    bus = SignalBus()
    sub = bus.subscribe("breaker.b.state")
    seen: list[tuple[str, str]] = []
    cb = make(1, 0.0, bus=bus, on_state_change=lambda old, new: seen.append((old, new)))
    fail(cb)
    cb.call(len, "a")
    got = [sub.get(timeout=1.0) for _ in range(3)]
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert [(s.type, s.data) for s in got] == [
        ("breaker.b.state", {"name": "b", "state": new, "previous": old}) for old, new in seen
    ]


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({"failure_threshold": 0}, ValueError, "failure_threshold must be >= 1"),
        ({"reset_timeout": -1.0}, ValueError, "reset_timeout"),
        ({"failure_rate": 0.5, "failure_threshold": 3}, ValueError, "cannot both be given"),
        ({"window": 1.0}, ValueError, "window requires failure_rate"),
        ({"failure_rate": 2.0}, ValueError, "failure_rate must be > 0 and <= 1"),
        ({"expected": ()}, ValueError, "expected must not be empty"),
        ({"expected": int}, TypeError, "expected must be an exception class"),
        ({"bus": object()}, TypeError, "bus must be an object with a publish"),
        ({"on_state_change": 3}, TypeError, "on_state_change must be callable or None"),
        ({"half_open_max_calls": 0}, ValueError, "half_open_max_calls"),
    ],
)
def test_bad_arguments_get_the_in_process_errors(
    redis_client: Any, kwargs: dict[str, Any], exc: type[Exception], msg: str
) -> None:
    with pytest.raises(exc) as native:
        CircuitBreaker(name="b", **kwargs)
    with pytest.raises(exc) as remote:
        RedisCircuitBreaker(redis_client, "b", **kwargs)
    assert msg in str(native.value)
    assert str(remote.value) == str(native.value)


# ---- Redis only: keys, expiry, the local view ---------------------------------------------


def test_one_hash_under_the_prefix_expiring_when_idle(redis_client: Any) -> None:
    cb = RedisCircuitBreaker(redis_client, "db", 2, 0.2, prefix="app:cb:", probe_timeout=0.2)
    assert cb.key == "app:cb:db"
    cb.call(len, "a")
    assert live_keys(redis_client) == []  # only successes under the consecutive rule
    fail(cb)
    assert live_keys(redis_client) == [b"app:cb:db"]
    assert 0 < redis_client.pttl(b"app:cb:db") <= 400  # reset + probe timeouts
    fail(cb)  # opens: expires 0.4 s past the end of the open period
    assert 400 < redis_client.pttl(b"app:cb:db") <= 600
    cb.force_open()
    assert redis_client.pttl(b"app:cb:db") == -1  # until reset
    cb.reset()
    assert 0 < redis_client.pttl(b"app:cb:db") <= 400
    time.sleep(0.45)
    assert live_keys(redis_client) == []
    assert cb.state == "closed"


def test_a_failure_rate_window_is_one_bounded_hash(redis_client: Any) -> None:
    ring = RedisCircuitBreaker(redis_client, "ring", failure_rate=1.0, min_calls=5, window_calls=5)
    times = RedisCircuitBreaker(redis_client, "time", failure_rate=1.0, min_calls=5, window=60.0)
    for _ in range(40):
        ring.call(len, "a")
        times.call(len, "a")
    assert redis_client.hlen(ring.key) == 5 + 3  # r0..r4; wi, wn, wf
    assert redis_client.hlen(times.key) <= 20  # at most 20 buckets
    assert (ring.stats().window_calls, times.stats().window_calls) == (5, 40)
    ring.reset()
    times.reset()
    assert redis_client.hlen(ring.key) == redis_client.hlen(times.key) == 2  # s, g


def test_an_open_view_refuses_without_a_request(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.connection import Connection

    cb = RedisCircuitBreaker(redis_client, "db", 1, HOUR)
    cb.call(len, "a")  # learns the state
    sent = 0
    original = Connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        nonlocal sent
        sent += 1
        original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    cb.call(len, "a")
    assert sent == 1  # a closed view: one request per outcome, none to admit
    fail(cb)
    sent = 0
    for _ in range(100):
        with pytest.raises(CircuitOpen):
            cb.call(len, "a")
    assert sent == 0


def test_staleness_bound_of_the_views(redis_client: Any, redis_server: RedisServer) -> None:
    a = RedisCircuitBreaker(redis_client, "db", 1, 0.3)
    b = RedisCircuitBreaker(redis_server.client(), "db", 1, 0.3)
    a.call(len, "a")
    b.call(len, "a")  # both views closed
    fail(a)  # opens it for all
    # b's view is stale: its next call runs, and its outcome (admitted in the closed
    # period that is over) does not count; the reply tells it the breaker is open.
    assert b.call(len, "b") == 1 and b.stats().successes == 2
    with pytest.raises(CircuitOpen) as info:
        b.call(len, "b")
    assert 0 < info.value.retry_after <= 0.3
    # A reset elsewhere is seen when the open period b was told of ends, not before.
    a.reset()
    with pytest.raises(CircuitOpen):
        b.call(len, "b")
    time.sleep(info.value.retry_after)
    assert b.call(len, "b") == 1


def test_a_lost_prober_frees_its_slot_when_its_lease_ends(redis_client: Any) -> None:
    cb = RedisCircuitBreaker(redis_client, "db", 1, 0.0, probe_timeout=0.2)
    other = RedisCircuitBreaker(redis_client, "db", 1, 0.0, probe_timeout=0.2)
    fail(cb)
    lost = cb._acquire()  # a prober that never reports (a crashed process)
    assert lost[1]
    with pytest.raises(CircuitOpen):
        other.call(len, "a")
    time.sleep(0.25)
    with pytest.raises(Down), other:  # its lease is over: another may probe
        down()
    assert other.state == "half_open"
    cb._record(lost)  # the lost probe's late success does not count
    assert other.state == "half_open"
    other.call(len, "a")
    assert other.state == "closed"


def test_clients_that_decode_responses_work_too(redis_server: RedisServer) -> None:
    c = redis_server.client(decode_responses=True)
    c.flushall()
    cb = RedisCircuitBreaker(c, "db", 1, HOUR)
    fail(cb)
    assert cb.state == "open" and cb.stats().failures == 1
    cb.reset()


def test_script_is_reloaded_after_script_flush(redis_client: Any) -> None:
    cb = RedisCircuitBreaker(redis_client, "db", 2, HOUR)
    fail(cb)
    redis_client.script_flush()
    fail(cb)
    assert cb.state == "open"


def test_constructor_does_no_io_and_checks_its_own_arguments() -> None:
    dead = dead_client()
    cb = RedisCircuitBreaker(dead, "db", 4, 10.0, prefix="p:", on_error="deny", probe_timeout=2)
    assert (cb.name, cb.key, cb.failure_threshold, cb.reset_timeout) == ("db", "p:db", 4, 10.0)
    assert (cb.on_error, cb.probe_timeout, cb.half_open_max_calls) == ("deny", 2.0, 1)
    assert repr(cb) == (
        "RedisCircuitBreaker(name='db', failure_threshold=4, reset_timeout=10.0, "
        "key='p:db', on_error='deny')"
    )
    with pytest.raises(TypeError, match=r"^name must be a str, not 'NoneType'"):
        RedisCircuitBreaker(dead, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^name must not be empty"):
        RedisCircuitBreaker(dead, "")
    with pytest.raises(ValueError, match=r"^on_error must be one of 'raise', 'allow', 'deny'"):
        RedisCircuitBreaker(dead, "db", on_error="open")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^probe_timeout must be > 0"):
        RedisCircuitBreaker(dead, "db", probe_timeout=0)
    with pytest.raises(TypeError, match=r"^probe_timeout must be a number, not 'str'"):
        RedisCircuitBreaker(dead, "db", probe_timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^client must be a redis.Redis"):
        RedisCircuitBreaker(object(), "db")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^prefix must be a str, not 'bytes'"):
        RedisCircuitBreaker(dead, "db", prefix=b"x")  # type: ignore[arg-type]


# ---- Redis down ---------------------------------------------------------------------------


def test_on_error_when_the_server_is_unreachable() -> None:
    dead = dead_client()
    cb = RedisCircuitBreaker(dead, "db")
    with pytest.raises(BackendError) as info:
        cb.call(len, "a")
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    for read in (lambda: cb.state, lambda: cb.retry_after, cb.stats, cb.reset, cb.force_open):
        with pytest.raises(BackendError):
            read()
    allow = RedisCircuitBreaker(dead, "db", on_error="allow")
    assert allow.call(len, "ab") == 2  # admitted; its outcome is recorded nowhere
    with pytest.raises(Down):
        allow.call(down)
    deny = RedisCircuitBreaker(dead, "db", on_error="deny")
    with pytest.raises(CircuitOpen) as refused:
        deny.call(len, "ab")
    assert refused.value.retry_after == 0.0
    assert isinstance(refused.value.__cause__, BackendError)
    assert "redis failed, and on_error is 'deny'" in str(refused.value)


def test_server_killed_mid_run_then_restarted() -> None:
    server = server_or_skip()
    try:
        c = server.client(socket_timeout=1.0)
        cb = RedisCircuitBreaker(c, "db", 2, HOUR)
        fail(cb)
        assert cb.call(len, "a") == 1  # closed view
        server.stop()
        # The call was admitted from the view; recording its outcome fails, which never
        # changes the call's own outcome: counted, and the next admission asks.
        assert cb.call(len, "ab") == 2
        assert cb.stats.__self__ is cb and cb._view[0] == "?"
        with pytest.raises(BackendError):  # the view was dropped: asked, and refused
            cb.call(down)
        server.start()
        # A new server: empty (closed, nothing counted), no script cached.
        fail(cb)
        assert cb.state == "closed"
        fail(cb)
        assert cb.state == "open"
    finally:
        server.close()


def test_an_open_view_outlives_a_server_outage() -> None:
    server = server_or_skip()
    try:
        cb = RedisCircuitBreaker(server.client(socket_timeout=1.0), "db", 1, HOUR)
        fail(cb)
        server.stop()
        with pytest.raises(CircuitOpen):  # decided from the view: no request
            cb.call(len, "a")
        with pytest.raises(BackendError):
            cb.stats()
    finally:
        server.close()


# ---- several processes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    with multiprocessing.get_context("spawn").Pool(4) as p:
        p.map(abs, range(4))  # every worker started (and importing) before a test times
        yield p


def test_failures_in_one_process_open_it_for_all(redis_server: RedisServer, pool: Any) -> None:
    port = redis_server.port
    c = redis_server.client()
    c.flushall()
    mine = RedisCircuitBreaker(c, "shared", 3, HOUR)
    mine.call(len, "a")
    assert pool.apply(breaker_fail, (port, "shared", 3)) == "open"
    assert [pool.apply(breaker_call, (port, "shared")) for _ in range(4)] == ["open"] * 4
    mine.call(len, "a")  # a stale closed view: one call, whose reply says open
    with pytest.raises(CircuitOpen):
        mine.call(len, "a")
    mine.reset()
    assert pool.apply(breaker_call, (port, "shared")) == "ran"


def test_exactly_one_prober_across_processes_and_its_success_closes_for_all(
    redis_server: RedisServer, pool: Any
) -> None:
    port = redis_server.port
    c = redis_server.client()
    c.flushall()
    cb = RedisCircuitBreaker(c, "probe", 1, 1.0)
    fail(cb)
    start = time.time() + 1.5  # past the reset timeout, every child spinning
    jobs = [(port, "probe", start, 1.0, start + 2.5) for _ in range(4)]
    got = [r.get(timeout=60) for r in [pool.apply_async(breaker_probe, j) for j in jobs]]
    assert sorted(first for first, _ in got) == ["probe", "rejected", "rejected", "rejected"]
    assert [then for _, then in got] == ["ran"] * 4
    assert cb.state == "closed"
    assert live_keys(c) == [b"ferrule:breaker:probe"]
    cb.reset()


def test_threads_share_one_breaker(redis_client: Any, threads: int) -> None:
    cb = RedisCircuitBreaker(redis_client, "db", 10**6, HOUR)
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait()
        for _ in range(10):
            with pytest.raises(Down):
                cb.call(down)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    s = cb.stats()
    assert s.consecutive_failures == s.failures == s.calls == 10 * threads


# ---- asyncio clients ------------------------------------------------------------------------


def test_async_forms_on_an_asyncio_client(redis_server: RedisServer) -> None:
    async def main() -> None:
        client = redis_server.async_client()
        try:
            await client.flushall()
            cb = RedisCircuitBreaker(client, "db", 2, HOUR)

            @cb
            async def fetch(x: int) -> int:
                await asyncio.sleep(0)
                return x

            assert await fetch(3) == 3
            async with cb:
                pass
            for _ in range(2):
                with pytest.raises(Down):
                    async with cb:
                        down()
            with pytest.raises(CircuitOpen):
                await fetch(4)
            with pytest.raises(TypeError, match=r"this breaker has a redis.asyncio client"):
                cb.call(len, "a")
            with pytest.raises(TypeError, match=r"this breaker has a redis.asyncio client"):
                cb.state  # noqa: B018
            s = await client.hgetall(cb.key)
            assert s[b"s"] == b"o"
            await client.delete(cb.key)
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_sync_client_refuses_the_async_forms(redis_client: Any) -> None:
    cb = RedisCircuitBreaker(redis_client, "db")

    @cb
    async def fetch() -> int:
        return 1

    with pytest.raises(TypeError, match=r"async with and async def functions need"):
        asyncio.run(fetch())


# ---- callbacks, collection, exit ----------------------------------------------------------


def test_what_a_callback_raises_goes_to_unraisablehook(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))

    class Boom(Exception):
        pass

    def boom(old: str, new: str) -> None:
        raise Boom(f"{old}->{new}")

    cb = RedisCircuitBreaker(redis_client, "db", 1, HOUR, on_state_change=boom)
    fail(cb)  # the call's own exception, unchanged
    assert [str(e) for e in reported] == ["closed->open"]
    assert cb.state == "open"


def test_a_breaker_in_a_cycle_through_its_callback_is_collected(redis_client: Any) -> None:
    class Owner:
        def __init__(self) -> None:
            self.cb = RedisCircuitBreaker(
                redis_client, "db", on_state_change=self.on_change, bus=SignalBus()
            )

        def on_change(self, old: str, new: str) -> None:
            pass

    owner = Owner()
    owner.cb.call(len, "a")
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None


def test_a_daemon_thread_inside_a_protected_call_at_exit(redis_server: RedisServer) -> None:
    program = textwrap.dedent(
        f"""
        import threading, time, redis
        from ferrule.redis import RedisCircuitBreaker
        cb = RedisCircuitBreaker(redis.Redis(port={redis_server.port}), "exit", 1, 0.0)
        def loop():
            while True:
                try:
                    cb.call(time.sleep, 0.001)
                    with cb:
                        raise OSError("down")
                except Exception:
                    pass
        for _ in range(4):
            threading.Thread(target=loop, daemon=True).start()
        time.sleep(0.3)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Fatal" not in proc.stderr
    redis_server.client().delete("ferrule:breaker:exit")


def test_stats_is_a_frozen_record(redis_client: Any) -> None:
    s = RedisCircuitBreaker(redis_client, "db").stats()
    assert isinstance(s, RedisBreakerStats)
    assert s == RedisBreakerStats("closed", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    with pytest.raises(AttributeError):
        s.calls = 1  # type: ignore[misc]
    assert ferrule.redis.RedisBreakerStats is RedisBreakerStats


# ---- stateful: the Redis breaker against the in-process one ---------------------------------
# A zero reset timeout (an open breaker is half-open at once) and a count window: no
# decision depends on the clock, so the two must agree on every state and count.


class SameAsInProcess(RuleBasedStateMachine):
    client: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.client.flushall()
        self.pairs: list[tuple[Any, Any]] = []
        self.made = False

    @precondition(lambda self: not self.made)
    @rule(
        config=st.sampled_from(
            [
                {"failure_threshold": 2, "success_threshold": 2, "half_open_max_calls": 2},
                {"failure_threshold": 1},
                {"failure_rate": 0.5, "min_calls": 3, "window_calls": 4, "half_open_max_calls": 3},
            ]
        )
    )
    def make(self, config: dict[str, Any]) -> None:
        kw = {"reset_timeout": 0.0, "expected": Down, **config}
        self.native = CircuitBreaker(name="m", **kw)
        self.remote = RedisCircuitBreaker(self.client, "m", **kw)
        self.made = True

    def both(self, fn: Callable[[Any], Any]) -> None:
        got = []
        for cb in (self.native, self.remote):
            try:
                fn(cb)
                got.append("ok")
            except CircuitOpen as e:
                got.append(("open", e.retry_after))
            except (Down, KeyError) as e:
                got.append(type(e).__name__)
        assert got[0] == got[1]

    @precondition(lambda self: self.made)
    @rule(outcome=st.sampled_from(["ok", "down", "ignored"]))
    def call(self, outcome: str) -> None:
        fn = {"ok": lambda: 1, "down": down, "ignored": lambda: {}["k"]}[outcome]
        self.both(lambda cb: cb.call(fn))

    @precondition(lambda self: self.made and len(self.pairs) < 4)
    @rule()
    def enter(self) -> None:
        entered: list[Any] = []
        self.both(lambda cb: entered.append(cb._acquire()))
        if len(entered) == 2:
            self.pairs.append((entered[0], entered[1]))
        else:
            assert not entered

    @precondition(lambda self: self.made and self.pairs)
    @rule(outcome=st.sampled_from(["ok", "down", "ignored"]), data=st.data())
    def leave(self, outcome: str, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.pairs) - 1))
        p_native, p_remote = self.pairs.pop(i)
        exc = {"ok": None, "down": Down("x"), "ignored": KeyError("k")}[outcome]
        self.native._record(p_native, exc)
        self.remote._record(p_remote, exc)

    @precondition(lambda self: self.made)
    @rule(change=st.sampled_from(["reset", "force_open", "force_closed"]))
    def change(self, change: str) -> None:
        getattr(self.native, change)()
        getattr(self.remote, change)()

    @invariant()
    def agree(self) -> None:
        if not self.made:
            return
        a, b = self.native.stats(), self.remote.stats()
        fields = [
            "state",
            "calls",
            "successes",
            "failures",
            "ignored",
            "rejections",
            "state_changes",
            "consecutive_failures",
            "window_calls",
            "window_failures",
        ]
        assert {f: getattr(a, f) for f in fields} == {f: getattr(b, f) for f in fields}


def test_stateful_same_as_in_process(redis_client: Any) -> None:
    SameAsInProcess.client = redis_client
    SameAsInProcess.TestCase.settings = settings(
        max_examples=25, stateful_step_count=30, deadline=None
    )
    SameAsInProcess.TestCase().runTest()
    redis_client.flushall()
    assert live_keys(redis_client) == []
