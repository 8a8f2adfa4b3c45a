"""RateLimiter: exact GCRA decisions on a ManualClock, keys, reclamation, waits, bad input."""

from __future__ import annotations

import _thread
import asyncio
import math
import threading
import time

import pytest
from ferrule import Decision, ManualClock, RateLimiter


def limiter(rate: float = 10.0, **kw: object) -> tuple[ManualClock, RateLimiter]:
    clock = ManualClock()
    return clock, RateLimiter(rate, clock=clock, **kw)  # type: ignore[arg-type]


# ---- exact GCRA --------------------------------------------------------------------------


def test_ten_per_second_is_exact() -> None:
    clock, rl = limiter(10)
    assert [rl.try_acquire() for _ in range(10)] == [True] * 10
    d = rl.check()
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (False, 0, 0.1, 1.0)
    clock.advance(0.1)
    assert rl.try_acquire()
    assert not rl.try_acquire()
    clock.advance(0.05)
    assert rl.check().retry_after == 0.05


def test_decision_fields_when_allowed() -> None:
    _, rl = limiter(10)
    d = rl.check("k")
    assert isinstance(d, Decision)
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (True, 9, 0.0, 0.1)
    d = rl.check("k", cost=4)
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (True, 5, 0.0, 0.5)
    assert repr(d) == "Decision(allowed=True, remaining=5, retry_after=0.0, reset_after=0.5)"
    with pytest.raises(AttributeError):
        d.allowed = False  # type: ignore[misc]


def test_refill_is_continuous_and_capped_at_burst() -> None:
    clock, rl = limiter(2, per=1.0, burst=4)
    assert rl.try_acquire("k", cost=4)
    assert rl.peek("k") == 0
    clock.advance(1.0)
    assert rl.peek("k") == 2
    clock.advance(100.0)
    assert rl.peek("k") == 4
    d = rl.check("k", cost=4)
    assert d.allowed and d.remaining == 0 and d.reset_after == 2.0


def test_denied_cost_reports_wait_for_all_tokens() -> None:
    clock, rl = limiter(1, burst=5)
    assert rl.try_acquire(cost=5)
    clock.advance(1.0)
    d = rl.check(cost=3)
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (False, 1, 2.0, 4.0)
    # A refusal consumes nothing.
    assert rl.peek() == 1


def test_defaults_and_properties() -> None:
    assert RateLimiter(10).burst == 10
    assert RateLimiter(2.5).burst == 3
    assert RateLimiter(0.5).burst == 1
    rl = RateLimiter(5, 2.0, burst=7)
    assert (rl.rate, rl.per, rl.burst) == (5.0, 2.0, 7)
    assert repr(rl) == "RateLimiter(rate=5.0, per=2.0, burst=7)"


def test_fractional_interval_rounds_up() -> None:
    # 1 s / 3 is 333_333_333.3 ns; rounding up means three refills take just over 1 s.
    clock, rl = limiter(3, burst=1)
    assert rl.try_acquire()
    clock.advance(0.333333333)
    assert not rl.try_acquire()
    clock.advance(0.000000001)
    assert rl.try_acquire()


# ---- keys --------------------------------------------------------------------------------


def test_keys_are_independent_and_compare_by_value() -> None:
    _, rl = limiter(1)
    keys = [None, "a", b"a", 1, -(2**100), ("a", 1, (None, b"x")), ()]
    assert all(rl.try_acquire(k) for k in keys)
    assert not any(rl.try_acquire(k) for k in keys)
    assert not rl.try_acquire()  # the default key is None
    assert not rl.try_acquire("".join(["a"]))
    assert not rl.try_acquire(True)  # True == 1, as in a dict
    assert not rl.try_acquire(("a", 1, (None, b"x")))
    assert rl.try_acquire(2**100)
    assert len(rl) == len(keys) + 1


def test_unsupported_keys_raise_type_error() -> None:
    _, rl = limiter(1)
    with pytest.raises(
        TypeError, match=r"^key must be None, str, int, bytes or a tuple of those, not 'float'$"
    ):
        rl.try_acquire(1.5)
    with pytest.raises(TypeError, match=r"not 'list'$"):
        rl.check(["a"])
    with pytest.raises(TypeError, match=r"not 'object'$"):
        rl.peek(("a", object()))
    deep: object = "x"
    for _ in range(20):
        deep = (deep,)
    with pytest.raises(TypeError, match="nest tuples"):
        rl.try_acquire(deep)
    assert len(rl) == 0


# ---- peek, reset, len, sweep, reclamation ------------------------------------------------


def test_peek_reset_len_sweep() -> None:
    clock, rl = limiter(10)
    assert rl.peek("k") == 10
    assert len(rl) == 0  # peek inserts nothing
    rl.try_acquire("k", cost=10)
    rl.try_acquire("j")
    assert (rl.peek("k"), rl.peek("j"), len(rl)) == (0, 9, 2)
    rl.reset("k")
    assert rl.peek("k") == 10
    assert rl.sweep() == 1  # "k" is full again; "j" is not
    assert len(rl) == 1
    clock.advance(0.1)
    assert rl.sweep() == 1
    assert len(rl) == 0
    rl.reset("absent")
    assert rl.sweep() == 0


def test_idle_keys_are_reclaimed_on_writes() -> None:
    clock, rl = limiter(10)
    for i in range(50_000):
        rl.try_acquire(i)
    assert len(rl) == 50_000
    clock.advance(100.0)
    for i in range(50_000, 100_000):
        rl.try_acquire(i)
    assert len(rl) < 60_000
    clock.advance(100.0)
    tracked = len(rl)
    assert rl.sweep() == tracked
    assert len(rl) == 0


def test_hot_key_traffic_reclaims_other_idle_keys() -> None:
    clock, rl = limiter(1e9)
    for i in range(2_000):
        rl.try_acquire(("user", i))
    clock.advance(10.0)
    for _ in range(100_000):
        rl.try_acquire("hot")
    # Every 64th decision runs a bounded reclaim step.
    assert len(rl) < 2_000


# ---- acquire -----------------------------------------------------------------------------


def test_acquire_fails_at_once_when_tokens_cannot_come_in_time() -> None:
    _, rl = limiter(1)
    assert rl.acquire("k")
    t0 = time.monotonic()
    assert rl.acquire("k", timeout=0.5) is False
    assert rl.acquire("k", timeout=0) is False
    assert time.monotonic() - t0 < 0.1


def test_acquire_waits_for_tokens() -> None:
    rl = RateLimiter(50, burst=1)
    assert rl.acquire()
    assert rl.acquire(timeout=1.0)  # waits ~20 ms


def test_acquire_sees_a_manual_clock_advanced_by_another_thread() -> None:
    clock, rl = limiter(1)
    rl.try_acquire()
    threading.Timer(0.05, clock.advance, args=(1.0,)).start()
    assert rl.acquire(timeout=5.0)


def test_acquire_releases_the_gil() -> None:
    rl = RateLimiter(5, burst=1)
    rl.try_acquire()
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.01)
        before = ticks
        assert rl.acquire()  # ~200 ms, GIL released
        during = ticks - before
    finally:
        stop.set()
        t.join()
    assert during > 1_000


def test_acquire_is_interruptible() -> None:
    _, rl = limiter(1)
    rl.try_acquire()
    # The manual clock never moves: without a signal this would wait forever.
    timer = threading.Timer(0.1, _thread.interrupt_main)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        rl.acquire(timeout=None)
    assert time.monotonic() - t0 < 1.0
    timer.join()


# ---- acquire_async -----------------------------------------------------------------------


def test_acquire_async_waits_without_threads() -> None:
    async def main() -> list[bool]:
        rl = RateLimiter(100, burst=1)
        threads_before = threading.active_count()
        tasks = [asyncio.ensure_future(rl.acquire_async("k")) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert threading.active_count() == threads_before
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(main()) == [True] * 5


def test_acquire_async_timeout_and_manual_clock() -> None:
    async def main() -> tuple[bool, bool, bool]:
        clock, rl = limiter(1)
        first = await rl.acquire_async()
        fast_fail = await rl.acquire_async(timeout=0.5)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, clock.advance, 1.0)
        waited = await rl.acquire_async(timeout=5.0)
        return first, fast_fail, waited

    assert asyncio.run(main()) == (True, False, True)


def test_acquire_async_checks_arguments_eagerly() -> None:
    _, rl = limiter(1)
    with pytest.raises(ValueError, match=r"^cost must be <= burst \(1\)"):
        rl.acquire_async(cost=2)
    with pytest.raises(TypeError, match=r"^key must be"):
        rl.acquire_async(1.5)
    with pytest.raises(ValueError, match=r"^timeout must be >= 0$"):
        rl.acquire_async(timeout=-1)


# ---- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "msg"),
    [
        (("10",), {}, TypeError, "rate must be a number, not 'str'"),
        ((True,), {}, TypeError, "rate must be a number, not 'bool'"),
        ((0,), {}, ValueError, "rate must be > 0"),
        ((-1.5,), {}, ValueError, "rate must be > 0"),
        ((math.nan,), {}, ValueError, "rate must be a finite number"),
        ((math.inf,), {}, ValueError, "rate must be a finite number"),
        ((1, 0), {}, ValueError, "per must be > 0"),
        ((1, -1), {}, ValueError, "per must be > 0"),
        ((1, math.nan), {}, ValueError, "per must be a finite number of seconds"),
        ((1, "1"), {}, TypeError, "per must be a number of seconds, not 'str'"),
        ((1, False), {}, TypeError, "per must be a number of seconds, not 'bool'"),
        ((1,), {"burst": 0}, ValueError, "burst must be >= 1"),
        ((1,), {"burst": -3}, ValueError, "burst must be >= 1"),
        ((1,), {"burst": 1.5}, TypeError, "burst must be an int, not 'float'"),
        ((1,), {"burst": True}, TypeError, "burst must be an int, not 'bool'"),
        ((1,), {"burst": 2**62}, ValueError, "burst is out of range: burst * per / rate must"),
        ((1e30,), {}, ValueError, "rate is out of range: burst * per / rate must"),
        ((1e-12,), {}, ValueError, "rate is out of range: burst * per / rate must"),
        ((1,), {"clock": 3}, TypeError, "clock must be a ferrule.ManualClock or None, not 'int'"),
    ],
)
def test_bad_constructor_arguments(
    args: tuple[object, ...], kwargs: dict[str, object], exc: type[Exception], msg: str
) -> None:
    with pytest.raises(exc) as info:
        RateLimiter(*args, **kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(msg)


@pytest.mark.parametrize("method", ["try_acquire", "check", "acquire"])
def test_bad_cost(method: str) -> None:
    rl = RateLimiter(10)
    call = getattr(rl, method)
    with pytest.raises(ValueError, match=r"^cost must be >= 1$"):
        call("k", 0)
    with pytest.raises(ValueError, match=r"^cost must be >= 1$"):
        call("k", cost=-1)
    with pytest.raises(
        ValueError, match=r"^cost must be <= burst \(10\), got 11: it could never be granted$"
    ):
        call("k", 11)
    with pytest.raises(TypeError, match=r"^cost must be an int, not 'float'$"):
        call("k", 1.0)
    with pytest.raises(TypeError, match=r"^cost must be an int, not 'bool'$"):
        call("k", True)
    assert len(rl) == 0


def test_bad_timeout() -> None:
    rl = RateLimiter(10)
    with pytest.raises(ValueError, match=r"^timeout must be >= 0$"):
        rl.acquire(timeout=-0.1)
    with pytest.raises(ValueError, match=r"^timeout must be a finite number of seconds$"):
        rl.acquire(timeout=math.nan)
    with pytest.raises(TypeError, match=r"^timeout must be a number of seconds, not 'str'$"):
        rl.acquire(timeout="1")


def test_subclass_keys_are_keyed_by_value() -> None:
    class S(str):
        def __hash__(self) -> int:
            return 42

    class B(bytes):
        pass

    class I(int):  # noqa: E742
        pass

    _, rl = limiter(1)
    assert rl.try_acquire("abc")
    assert not rl.try_acquire(S("abc"))
    assert rl.try_acquire(B(b"abc"))
    assert not rl.try_acquire(b"abc")
    assert rl.try_acquire(I(2**70))
    assert not rl.try_acquire(2**70)
    assert rl.try_acquire(("t", S("x")))
    assert not rl.try_acquire(("t", "x"))
    assert len(rl) == 4


def test_many_distinct_keys_of_every_kind_stay_distinct() -> None:
    _, rl = limiter(1)
    keys: list[object] = []
    for i in range(300):
        keys += [i, -i - 1, str(i), str(i).encode(), (i,), (str(i), i), 2**64 + i]
    assert all(rl.try_acquire(k) for k in keys)
    assert len(rl) == len(keys)
    assert not any(rl.try_acquire(k) for k in keys)
