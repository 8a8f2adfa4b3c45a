"""RedisRateLimiter against a real redis-server: RateLimiter's contract (shared tests run
on both), server time, key expiry, NOSCRIPT, on_error, a server restart, and exactness
across 4 processes hammering one key.

The server's clock is real, so exact figures are checked where elapsed microseconds
cannot change them: emission intervals of 100 ms or more, fresh keys, hour-long windows.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from ferrule import BackendError, Decision, RateLimited, RateLimiter
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.redis_server import RedisServer, free_port, hammer, server_or_skip

redis = pytest.importorskip("redis")
from ferrule.redis import RedisRateLimiter  # noqa: E402

Make = Callable[..., Any]


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest) -> Make:
    """A factory of limiters: the in-process one, then the Redis one."""
    if request.param == "memory":
        return RateLimiter
    client = request.getfixturevalue("redis_client")
    return lambda *a, **kw: RedisRateLimiter(client, *a, **kw)


# ---- RateLimiter's contract, on both -------------------------------------------------------


def test_ten_per_second(make: Make) -> None:
    # Ten per 100 s rather than per second: the same arithmetic, scaled so that a loaded
    # machine taking most of a second over these calls cannot refill a token.
    rl = make(10, 100.0)
    assert [rl.try_acquire() for _ in range(10)] == [True] * 10
    d = rl.check()
    assert isinstance(d, Decision)
    assert (d.allowed, d.remaining) == (False, 0)
    assert 9.0 < d.retry_after <= 10.0
    assert 99.0 < d.reset_after <= 100.0
    assert rl.peek() == 0


def test_decision_fields_when_allowed(make: Make) -> None:
    rl = make(10)
    d = rl.check("k")
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (True, 9, 0.0, 0.1)
    d = rl.check("k", cost=4)
    assert (d.allowed, d.remaining, d.retry_after) == (True, 5, 0.0)
    assert 0.49 < d.reset_after <= 0.5
    assert repr(d).startswith("Decision(allowed=True, remaining=5, retry_after=0.0, ")


def test_fractional_interval_rounds_up(make: Make) -> None:
    # 1 s / 3 is 333_333_333.3 ns: both round up to ...334 ns per token.
    assert make(3, burst=1).check("k1").reset_after == 0.333333334
    assert make(3).check("k2", cost=3).reset_after == 1.000000002
    assert make(7, 2.0).check("k3").reset_after == 0.285714286


def test_exact_decisions_on_an_hour_long_interval(make: Make) -> None:
    # One token per hour, burst 5: microseconds of real time cannot change a decision.
    rl = make(1, 3600.0, burst=5)
    got = [rl.check("k", c) for c in (2, 2, 2, 1, 1)]
    assert [(d.allowed, d.remaining) for d in got] == [
        (True, 3),
        (True, 1),
        (False, 1),
        (True, 0),
        (False, 0),
    ]
    assert math.isclose(got[2].retry_after, 3600.0, abs_tol=1.0)
    assert math.isclose(got[4].retry_after, 3600.0, abs_tol=1.0)
    assert math.isclose(got[4].reset_after, 5 * 3600.0, abs_tol=1.0)
    assert math.isclose(got[3].reset_after, 5 * 3600.0, abs_tol=1.0)


def test_keys_are_independent_and_compare_by_value(make: Make) -> None:
    rl = make(1, 3600.0)
    keys = [None, "a", b"a", 1, -(2**100), ("a", 1, (None, b"x")), (), ("a",), "1"]
    assert all(rl.try_acquire(k) for k in keys)
    assert not any(rl.try_acquire(k) for k in keys)
    assert not rl.try_acquire(True)  # True == 1, as in a dict
    assert not rl.try_acquire("".join(["a"]))
    assert rl.try_acquire(2**100)


def test_a_str_subclass_key(redis_client: Any) -> None:
    """In process, keys follow dict semantics: a str subclass with its own hash is its
    own key. In Redis a key is its encoded value, so the subclass meets the str."""

    class S(str):
        def __hash__(self) -> int:
            return 42

    rl = RateLimiter(1, 3600.0)
    assert rl.try_acquire("a")
    assert S("a") not in {"a": 1}
    assert rl.try_acquire(S("a"))
    remote = RedisRateLimiter(redis_client, 1, 3600.0)
    assert remote.try_acquire("a")
    assert not remote.try_acquire(S("a"))


def test_peek_and_reset(make: Make) -> None:
    rl = make(10)
    assert rl.peek("k") == 10
    rl.try_acquire("k", cost=10)
    assert rl.peek("k") == 0
    rl.reset("k")
    assert rl.peek("k") == 10
    rl.reset("absent")


def test_acquire_fails_at_once_when_tokens_cannot_come_in_time(make: Make) -> None:
    rl = make(1)
    assert rl.acquire("k")
    t0 = time.monotonic()
    assert rl.acquire("k", timeout=0.5) is False
    assert rl.acquire("k", timeout=0) is False
    assert time.monotonic() - t0 < 0.2


def test_acquire_waits_for_tokens(make: Make) -> None:
    rl = make(50, burst=1)
    assert rl.acquire()
    t0 = time.monotonic()
    assert rl.acquire(timeout=1.0)  # waits ~20 ms
    assert time.monotonic() - t0 >= 0.01


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "msg"),
    [
        (("10",), {}, TypeError, "rate must be a number, not 'str'"),
        ((True,), {}, TypeError, "rate must be a number, not 'bool'"),
        ((0,), {}, ValueError, "rate must be > 0"),
        ((math.nan,), {}, ValueError, "rate must be a finite number"),
        ((1, 0), {}, ValueError, "per must be > 0"),
        ((1, math.nan), {}, ValueError, "per must be a finite number of seconds"),
        ((1, "1"), {}, TypeError, "per must be a number of seconds, not 'str'"),
        ((1,), {"burst": 0}, ValueError, "burst must be >= 1"),
        ((1,), {"burst": 1.5}, TypeError, "burst must be an int, not 'float'"),
        ((1,), {"burst": True}, TypeError, "burst must be an int, not 'bool'"),
        ((1,), {"burst": 2**62}, ValueError, "burst is out of range: burst * per / rate must"),
        ((1e30,), {}, ValueError, "rate is out of range: burst * per / rate must"),
        ((1e-12,), {}, ValueError, "rate is out of range: burst * per / rate must"),
    ],
)
def test_bad_constructor_arguments(
    make: Make, args: tuple[object, ...], kwargs: dict[str, object], exc: type, msg: str
) -> None:
    with pytest.raises(exc) as info:
        make(*args, **kwargs)
    assert str(info.value).startswith(msg)


@pytest.mark.parametrize("method", ["try_acquire", "check", "acquire"])
def test_bad_cost(make: Make, method: str) -> None:
    call = getattr(make(10), method)
    with pytest.raises(ValueError, match=r"^cost must be >= 1$"):
        call("k", 0)
    with pytest.raises(
        ValueError, match=r"^cost must be <= burst \(10\), got 11: it could never be granted$"
    ):
        call("k", 11)
    with pytest.raises(TypeError, match=r"^cost must be an int, not 'float'$"):
        call("k", 1.0)
    with pytest.raises(TypeError, match=r"^cost must be an int, not 'bool'$"):
        call("k", True)


def test_bad_timeout(make: Make) -> None:
    rl = make(10)
    with pytest.raises(ValueError, match=r"^timeout must be >= 0$"):
        rl.acquire(timeout=-0.1)
    with pytest.raises(TypeError, match=r"^timeout must be a number of seconds, not 'str'$"):
        rl.acquire(timeout="1")


def test_limit_with_block_and_decorator(make: Make) -> None:
    rl = make(1, 3600.0, burst=3)
    with rl.limit("k"):
        assert rl.peek("k") == 2

    @rl.limit(lambda user: ("user", user), cost=2, timeout=0)
    def fetch(user: str) -> str:
        return user

    assert fetch("ann") == "ann"
    assert rl.peek(("user", "ann")) == 1
    with pytest.raises(RateLimited) as info:
        fetch("ann")
    d = info.value.decision
    assert (d.allowed, d.remaining) == (False, 1)
    assert 3599.0 < d.retry_after <= 3600.0
    assert str(info.value).startswith("rate limit exceeded for key ('user', 'ann'): retry after ")
    assert rl.peek(("user", "ann")) == 1  # the refusal took nothing
    with pytest.raises(RateLimited), rl.limit("k", cost=3, timeout=0.5):
        pytest.fail("refused block ran")
    assert rl.peek("k") == 2


def test_limit_checks_its_arguments_at_the_call(make: Make) -> None:
    rl = make(10)
    with pytest.raises(ValueError, match=r"^cost must be >= 1$"):
        rl.limit("k", 0)
    with pytest.raises(
        ValueError, match=r"^cost must be <= burst \(10\), got 11: it could never be granted$"
    ):
        rl.limit("k", 11)
    with pytest.raises(TypeError, match=r"^cost must be an int, not 'float'$"):
        rl.limit("k", 1.0)
    with pytest.raises(ValueError, match=r"^timeout must be >= 0$"):
        rl.limit("k", timeout=-0.1)
    with pytest.raises(TypeError, match=r"^timeout must be a number of seconds, not 'str'$"):
        rl.limit("k", timeout="1")
    with pytest.raises(TypeError, match=r"^func must be callable, not 'int'$"):
        rl.limit("k")(3)


def test_keys_redis_cannot_encode(redis_client: Any) -> None:
    """RedisRateLimiter encodes keys by value (None, str, int, bytes, tuples of those);
    anything else has no identity shared across processes and is refused. (The
    in-process RateLimiter takes any hashable key.)"""
    rl = RedisRateLimiter(redis_client, 10)
    with pytest.raises(
        TypeError, match=r"^key must be None, str, int, bytes or a tuple of those, not 'float'$"
    ):
        rl.try_acquire(1.5)
    with pytest.raises(TypeError, match=r"not 'object'$"):
        rl.peek(("a", object()))
    deep: object = "x"
    for _ in range(20):
        deep = (deep,)
    with pytest.raises(TypeError, match=r"nest tuples"):
        rl.try_acquire(deep)
    with pytest.raises(TypeError, match=r"not 'float'$"):
        rl.limit(1.5)

    @rl.limit(lambda x: x)  # a key function is checked where its key is used
    def work(x: object) -> None:
        pass

    with pytest.raises(TypeError, match=r"not 'float'$"):
        work(1.5)
    assert rl.peek(1) == 10
    local = RateLimiter(10)
    assert local.try_acquire(1.5) and local.try_acquire(("a", object())) and local.try_acquire(deep)


# ---- Redis only ---------------------------------------------------------------------------


def live_keys(client: Any) -> int:
    """Keys a SCAN finds (unlike DBSIZE, SCAN skips keys whose expiry has passed but that
    the server's background expiry has not collected yet)."""
    return sum(1 for _ in client.scan_iter(count=1000))


def dead_client() -> Any:
    """A client of a port where no server listens (no retries: fail at once)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


def test_keys_carry_the_prefix_and_expire_with_reset_after(redis_client: Any) -> None:
    rl = RedisRateLimiter(redis_client, 100, burst=2, prefix="app:rl:")
    d = rl.check(("user", 1), cost=2)
    assert d.reset_after == 0.02
    keys = redis_client.keys("*")
    assert keys == [b"app:rl:t:6:s:user3:i:1"]
    assert 0 < redis_client.pttl(keys[0]) <= 20
    time.sleep(0.05)
    # The bucket is full again: its key has gone by itself, nothing stays behind.
    assert live_keys(redis_client) == 0
    assert rl.peek(("user", 1)) == 2
    assert live_keys(redis_client) == 0  # peek and denials write nothing
    assert rl.check(("user", 1), 2).allowed and not rl.check(("user", 1)).allowed
    assert live_keys(redis_client) == 1


def test_many_keys_leave_nothing_behind_when_idle(redis_client: Any) -> None:
    rl = RedisRateLimiter(redis_client, 4)  # a full bucket again 250 ms after one token
    for i in range(200):
        rl.try_acquire(i)
    assert 0 < live_keys(redis_client) <= 200
    time.sleep(0.3)
    assert live_keys(redis_client) == 0


def test_script_is_reloaded_after_script_flush(redis_client: Any) -> None:
    rl = RedisRateLimiter(redis_client, 10)
    assert rl.try_acquire("k")
    redis_client.script_flush()
    assert rl.try_acquire("k")
    assert rl.peek("k") == 8


def test_uses_the_server_clock() -> None:
    # TIME is read inside the script: the client's clock is never asked. A stored tat in
    # the server's far future makes the bucket empty whatever this process's clock says.
    server = server_or_skip()
    try:
        c = server.client()
        rl = RedisRateLimiter(c, 1, 3600.0, burst=1)
        sec, usec = c.time()
        c.set(b"ferrule:rl:s:k", f"{sec + 7200}:{usec * 1000}", px=10_000)
        d = rl.check("k")
        assert not d.allowed
        assert math.isclose(d.reset_after, 7200.0, abs_tol=1.0)
        assert math.isclose(d.retry_after, 7200.0, abs_tol=1.0)
    finally:
        server.close()


def test_constructor_does_no_io_and_checks_arguments() -> None:
    dead = dead_client()
    rl = RedisRateLimiter(dead, 5, 2.0, burst=7, prefix="p:", on_error="deny")
    assert (rl.rate, rl.per, rl.burst, rl.prefix, rl.on_error) == (5.0, 2.0, 7, "p:", "deny")
    assert repr(rl) == "RedisRateLimiter(rate=5.0, per=2.0, burst=7, prefix='p:', on_error='deny')"
    with pytest.raises(ValueError, match=r"^on_error must be one of 'raise', 'allow', 'deny'"):
        RedisRateLimiter(dead, 1, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^client must be a redis.Redis or redis.asyncio.Redis"):
        RedisRateLimiter(object(), 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^prefix must be a str, not 'bytes'"):
        RedisRateLimiter(dead, 1, prefix=b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"acquire_async needs a redis.asyncio.Redis client"):
        rl.acquire_async()


def test_on_error_policies_when_the_server_is_unreachable() -> None:
    dead = dead_client()
    rl = RedisRateLimiter(dead, 10)
    with pytest.raises(BackendError) as info:
        rl.try_acquire("k")
    assert isinstance(info.value, ConnectionError)
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    assert str(info.value).startswith("redis: ")
    with pytest.raises(BackendError):
        rl.peek("k")
    with pytest.raises(BackendError):
        rl.reset("k")
    allow = RedisRateLimiter(dead, 10, on_error="allow")
    assert allow.try_acquire("k") and allow.acquire("k", timeout=0)
    d = allow.check("k", 3)
    assert (d.allowed, d.remaining, d.retry_after) == (True, 7, 0.0)
    assert allow.peek("k") == 10
    deny = RedisRateLimiter(dead, 10, on_error="deny")
    d = deny.check("k", 2)
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (False, 0, 0.2, 1.0)
    assert deny.peek("k") == 0
    assert deny.acquire("k", timeout=0.1) is False


def test_server_killed_mid_run_then_restarted_on_the_same_port() -> None:
    server = server_or_skip()
    try:
        c = server.client(socket_timeout=1.0)
        # One token per second back: the peek below cannot see a refill however slow the
        # restart was.
        rl = RedisRateLimiter(c, 1000, 1000.0, burst=1000)
        deny = RedisRateLimiter(c, 1000, 1000.0, burst=1000, on_error="deny")
        assert rl.try_acquire("k")
        server.stop()
        with pytest.raises(BackendError):
            rl.try_acquire("k")
        assert deny.try_acquire("k") is False
        server.start()
        # A new server: empty, no script cached. The limiter reconnects and reloads.
        assert rl.try_acquire("k")
        assert deny.try_acquire("k")
        assert rl.peek("k") == 998
    finally:
        server.close()


def test_acquire_async_on_an_asyncio_client(redis_server: RedisServer) -> None:
    async def main() -> tuple[bool, bool, list[bool], bool]:
        client = redis_server.async_client()
        try:
            await client.flushall()
            rl = RedisRateLimiter(client, 100, burst=1)
            first = await rl.acquire_async("k")
            fast_fail = await rl.acquire_async("k", 1, timeout=0.001)
            threads_before = threading.active_count()
            tasks = [asyncio.ensure_future(rl.acquire_async("k")) for _ in range(5)]
            await asyncio.sleep(0.01)
            no_thread = threading.active_count() == threads_before
            return first, fast_fail, list(await asyncio.gather(*tasks)), no_thread
        finally:
            await client.aclose()

    assert asyncio.run(main()) == (True, False, [True] * 5, True)


def test_limit_on_an_asyncio_client(redis_server: RedisServer) -> None:
    async def main() -> None:
        client = redis_server.async_client()
        sync = redis_server.client()
        try:
            await client.flushall()
            rl = RedisRateLimiter(client, 1, 3600.0, burst=3)
            view = RedisRateLimiter(sync, 1, 3600.0, burst=3)  # peeks at the same keys
            async with rl.limit("k"):
                assert view.peek("k") == 2

            @rl.limit(lambda user: ("user", user), cost=2, timeout=0)
            async def fetch(user: str) -> str:
                return user

            assert await fetch("ann") == "ann"
            with pytest.raises(RateLimited) as info:  # decided through the async client
                await fetch("ann")
            d = info.value.decision
            assert (d.allowed, d.remaining) == (False, 1)
            assert 3599.0 < d.retry_after <= 3600.0
            assert view.peek(("user", "ann")) == 1

            # A cancelled wait takes nothing.
            view.try_acquire("w", cost=3)
            entered = False

            async def waiter() -> None:
                nonlocal entered
                async with rl.limit("w"):
                    entered = True

            # The bucket stays empty for an hour: every decision the waiter gets refuses,
            # and a refusal writes nothing. The cancellation lands in the waiter's sleep
            # after its first refusal (a cancellation during the script call itself is
            # not tested here: the await of the cancelled task then does not return).
            task = asyncio.ensure_future(waiter())
            deadline = time.monotonic() + 10.0
            while not _asleep_after_a_refusal(task):
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not entered
            assert view.peek("w") == 0
            sync_block = rl.limit("k")
            with pytest.raises(TypeError, match=r"this limiter has a redis.asyncio client"):
                sync_block.__enter__()
        finally:
            await client.aclose()
            sync.close()

    asyncio.run(main())


def _asleep_after_a_refusal(task: asyncio.Task[None]) -> bool:
    """Whether ``task`` is suspended in ``_acquire_async``'s sleep: the frame has its
    ``wait``, assigned after the decision, and no await comes between it and the sleep."""
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None)
        if frame is not None and frame.f_code.co_name == "_acquire_async":
            return "wait" in frame.f_locals
        coro = getattr(coro, "cr_await", None)
    return False


def test_async_client_refuses_sync_methods_and_checks_eagerly(redis_server: RedisServer) -> None:
    client = redis_server.async_client()
    rl = RedisRateLimiter(client, 1)
    with pytest.raises(TypeError, match=r"this limiter has a redis.asyncio client"):
        rl.try_acquire()
    with pytest.raises(ValueError, match=r"^cost must be <= burst \(1\)"):
        rl.acquire_async(cost=2)
    with pytest.raises(TypeError, match=r"^key must be"):
        rl.acquire_async(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^timeout must be >= 0$"):
        rl.acquire_async(timeout=-1)


def test_threads_share_one_limiter_exactly(redis_client: Any, threads: int) -> None:
    # One token per hour, burst 50: exactly 50 grants whatever the interleaving.
    rl = RedisRateLimiter(redis_client, 1, 3600.0, burst=50)
    granted = [0] * threads
    barrier = threading.Barrier(threads)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(20):
            granted[i] += rl.try_acquire("shared")

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sum(granted) == 50


def test_four_processes_never_exceed_burst_plus_rate(redis_server: RedisServer) -> None:
    rate, burst, seconds = 200.0, 20, 1.0
    port = redis_server.port
    redis_server.client().flushall()
    start = time.time() + 1.0  # every child imports first, then all start together
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = [
            pool.apply_async(hammer, (port, rate, burst, "hot", seconds, start)) for _ in range(4)
        ]
        done = [r.get(timeout=60) for r in results]
    counts = [g for g, _, _ in done]
    # Every decision happened (by the server's clock, the same machine's) between the
    # first request sent and the last reply received; the bucket started full.
    window = max(t for _, _, t in done) - min(t for _, t, _ in done)
    assert all(c > 0 for c in counts)
    assert sum(counts) <= burst + rate * (window + 0.005)
    # And no false denials: close to the bound when the four ran together.
    together = min(t for _, _, t in done) - max(t for _, t, _ in done)
    assert sum(counts) >= burst + rate * together * 0.9


def test_clients_that_decode_responses_work_too(redis_server: RedisServer) -> None:
    c = redis_server.client(decode_responses=True)
    c.flushall()
    rl = RedisRateLimiter(c, 10)
    d = rl.check("k", 3)
    assert (d.allowed, d.remaining) == (True, 7) and rl.try_acquire("k") and rl.peek("k") == 6


# ---- stateful: exact decisions against a GCRA model -----------------------------------------
# One token per hour: the microseconds that pass during a run never change a decision, so
# the model can run at a fixed instant and the comparison is exact.

HOUR_NS = 3600 * 10**9


class ExactMachine(RuleBasedStateMachine):
    client: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.client.flushall()
        self.rl = RedisRateLimiter(self.client, 1, 3600.0, burst=6)
        self.debt: dict[object, int] = {}  # tat - now, in ns, per key

    @rule(key=st.sampled_from([None, "a", b"a", 7, ("a", 7)]), cost=st.integers(1, 6))
    def check(self, key: object, cost: int) -> None:
        base = self.debt.get(key, 0)
        room = 6 * HOUR_NS - base
        need = cost * HOUR_NS
        d = self.rl.check(key, cost)  # type: ignore[arg-type]
        if need <= room:
            self.debt[key] = base + need
            assert (d.allowed, d.remaining) == (True, (room - need) // HOUR_NS)
        else:
            assert (d.allowed, d.remaining) == (False, room // HOUR_NS)
            assert math.isclose(d.retry_after, (need - room) / 1e9, abs_tol=5.0)

    @rule(key=st.sampled_from([None, "a", 7]))
    def reset(self, key: object) -> None:
        self.rl.reset(key)  # type: ignore[arg-type]
        self.debt.pop(key, None)

    @invariant()
    def peek_matches(self) -> None:
        for key in (None, "a", ("a", 7)):
            want = (6 * HOUR_NS - self.debt.get(key, 0)) // HOUR_NS
            assert self.rl.peek(key) == want  # type: ignore[arg-type]


def test_stateful_exact_decisions(redis_client: Any) -> None:
    ExactMachine.client = redis_client
    ExactMachine.TestCase.settings = settings(
        max_examples=20, stateful_step_count=20, deadline=None
    )
    ExactMachine.TestCase().runTest()


# ---- several limits per key ----------------------------------------------------------------

BOTH = "give rate (with per and burst) or limits, not both"
TUPLE = "a (rate, per) or (rate, per, burst) tuple"


@pytest.fixture(params=["memory", "redis"])
def make_parsed(request: pytest.FixtureRequest) -> Make:
    """``parse`` of either tier."""
    if request.param == "memory":
        return RateLimiter.parse
    client = request.getfixturevalue("redis_client")
    return lambda spec: RedisRateLimiter.parse(client, spec)


def test_several_limits_exact_on_hour_long_windows(make: Make) -> None:
    # 5 per hour (burst 5) and 3 per day (burst 2): microseconds cannot change these.
    rl = make(limits=[(5, 3600.0), (3, 86400.0, 2)])
    assert rl.limits == ((5.0, 3600.0, 5), (3.0, 86400.0, 2))
    assert (rl.rate, rl.per, rl.burst) == (5.0, 3600.0, 5)
    d = rl.check("k")
    assert (d.allowed, d.remaining, d.retry_after) == (True, 1, 0.0)
    assert d.reset_after == 28800.0  # the day window's one token
    assert rl.try_acquire("k")
    d = rl.check("k")  # the day window refuses; the hour window still has 3
    assert (d.allowed, d.remaining) == (False, 0)
    assert 28799.0 < d.retry_after <= 28800.0
    assert 57599.0 < d.reset_after <= 57600.0
    assert rl.peek("k") == 0
    with pytest.raises(ValueError, match=r"^cost must be <= burst \(2\), got 3"):
        rl.check("other", 3)
    rl.reset("k")
    assert rl.peek("k") == 2
    assert rl.check("k", 2).allowed
    assert rl.peek("k") == 0


def test_parse_on_both_tiers(make_parsed: Make) -> None:
    rl = make_parsed("10/second; 100 per 5 minutes, 1000/day")
    assert rl.limits == ((10.0, 1.0, 10), (100.0, 300.0, 100), (1000.0, 86400.0, 1000))
    with pytest.raises(ValueError, match=r"^spec item '10/eon': unknown unit 'eon'"):
        make_parsed("10/eon")
    with pytest.raises(TypeError, match=r"^spec must be a str, not 'int'"):
        make_parsed(10)


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({}, TypeError, "give rate (with per and burst) or limits"),
        ({"rate": 1, "limits": [(1, 1)]}, TypeError, BOTH),
        ({"per": 1.0, "limits": [(1, 1)]}, TypeError, BOTH),
        ({"limits": []}, ValueError, "limits must hold at least one limit"),
        ({"limits": [(1, 1), (1,)]}, TypeError, "limits[1] must be " + TUPLE),
        ({"limits": [(1, 1), (0, 1)]}, ValueError, "limits[1]: rate must be > 0"),
    ],
)
def test_bad_limits_on_both_tiers(
    make: Make, kwargs: dict[str, Any], exc: type[Exception], msg: str
) -> None:
    with pytest.raises(exc) as info:
        make(**kwargs)
    assert str(info.value).startswith(msg), str(info.value)


def test_redis_limits_keep_lua_exact_windows(redis_client: Any) -> None:
    # 1 per 100 days is beyond Lua's 52 days for that limit alone; named by position.
    with pytest.raises(ValueError, match=r"^limits\[1\]: rate is out of range: .* 52 days"):
        RedisRateLimiter(redis_client, limits=[(1, 1.0), (1, 100 * 86400.0)])
    rl = RedisRateLimiter(redis_client, limits=[(1, 1.0), (2, 60.0)], prefix="p:")
    assert repr(rl) == (
        "RedisRateLimiter(limits=[(1.0, 1.0, 1), (2.0, 60.0, 2)], prefix='p:', on_error='raise')"
    )


def test_one_value_holds_every_window_and_expires_with_the_longest(redis_client: Any) -> None:
    rl = RedisRateLimiter(redis_client, limits=[(100, 1.0, 2), (10, 1.0, 2)], prefix="m:")
    d = rl.check("k")
    assert (d.allowed, d.remaining, d.reset_after) == (True, 1, 0.1)
    keys = redis_client.keys("*")
    assert keys == [b"m:s:k"]
    assert redis_client.get(keys[0]).count(b",") == 1  # two windows, one value
    assert 0 < redis_client.pttl(keys[0]) <= 100
    before = redis_client.get(keys[0])
    assert rl.try_acquire("k")
    assert not rl.try_acquire("k")  # refused by the 10/s window ...
    after = redis_client.get(keys[0])
    assert before != after
    assert not rl.check("k").allowed
    assert redis_client.get(keys[0]) == after  # ... and refusals wrote nothing
    time.sleep(0.25)
    assert live_keys(redis_client) == 0


def test_threads_share_a_multi_limit_limiter_exactly(redis_client: Any, threads: int) -> None:
    # 50 per hour and 30 per day: exactly the tighter 30 whatever the interleaving.
    rl = RedisRateLimiter(redis_client, limits=[(50, 3600.0), (30, 86400.0)])
    granted = [0] * threads
    barrier = threading.Barrier(threads)

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(20):
            granted[i] += rl.try_acquire("shared")

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sum(granted) == 30
    assert rl.check("shared").remaining == 0


def test_on_error_with_several_limits() -> None:
    dead = dead_client()
    allow = RedisRateLimiter(dead, limits=[(10, 1.0), (2, 60.0)], on_error="allow")
    d = allow.check("k", 2)
    assert (d.allowed, d.remaining, d.reset_after) == (True, 0, 60.0)
    assert allow.peek("k") == 2
    deny = RedisRateLimiter(dead, limits=[(10, 1.0), (2, 60.0)], on_error="deny")
    d = deny.check("k")
    assert (d.allowed, d.retry_after, d.reset_after) == (False, 30.0, 60.0)
