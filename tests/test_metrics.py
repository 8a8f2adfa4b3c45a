"""Metrics, OpStats and Timer: recording, quantiles, the sliding window, bad input."""

from __future__ import annotations

import asyncio
import gc
import inspect
import math
import random
import statistics
import weakref

import pytest
from ferrule import ManualClock, Metrics, OpStats, Timer

ZERO = (0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def fields(s: OpStats) -> tuple[float, ...]:
    return (s.count, s.errors, s.rate, s.mean, s.p50, s.p90, s.p99, s.max)


@pytest.mark.smoke
def test_record_and_snapshot() -> None:
    m = Metrics(window=10.0, clock=ManualClock())
    for ms in (10, 20, 30, 40):
        m.record("db", ms / 1000)
    m.record("db", 0.05, ok=False)
    s = m.snapshot("db")
    assert (s.count, s.errors) == (5, 1)
    assert s.rate == pytest.approx(0.5)
    assert s.mean == pytest.approx(0.03)
    assert s.max == pytest.approx(0.05)
    assert s.p50 == pytest.approx(0.03, rel=0.02)
    assert s.p90 == pytest.approx(0.05, rel=0.02)
    assert s.p99 <= s.max
    assert m.ops() == ["db"]
    assert m.window == 10.0
    assert repr(m) == "Metrics(window=10.0, ops=1)"
    assert repr(s).startswith("OpStats(count=5, errors=1, rate=0.5,")


def test_unknown_and_reset_ops_give_zeros() -> None:
    m = Metrics()
    assert fields(m.snapshot("nope")) == ZERO
    m.record("a", 0.1)
    m.record("b", 0.1)
    m.reset("a")
    assert fields(m.snapshot("a")) == ZERO
    assert m.ops() == ["b"]
    m.reset()
    assert m.ops() == []
    assert fields(m.snapshot("b")) == ZERO
    m.reset("never-seen")  # no error


def test_zero_seconds_and_huge_durations() -> None:
    m = Metrics()
    m.record("z", 0)
    m.record("big", 1000.0)
    assert m.snapshot("z").count == 1
    assert m.snapshot("z").p99 == 0.0
    big = m.snapshot("big")
    assert big.max == 1000.0
    assert big.p50 == 1000.0  # beyond the histogram's range: clamped to the exact max


@pytest.mark.parametrize("seed", [1, 2])
def test_quantiles_within_three_percent_of_statistics(seed: int) -> None:
    rng = random.Random(seed)
    xs = [rng.lognormvariate(math.log(0.005), 1.0) for _ in range(5000)]
    xs += [rng.uniform(2e-6, 5e-6) for _ in range(500)]  # a fast mode near 1 us
    m = Metrics()
    for x in xs:
        m.record("op", x)
    cuts = statistics.quantiles(xs, n=100, method="inclusive")
    s = m.snapshot("op")
    assert s.count == len(xs)
    for got, exact in ((s.p50, cuts[49]), (s.p90, cuts[89]), (s.p99, cuts[98])):
        assert got == pytest.approx(exact, rel=0.03)
    assert s.max == pytest.approx(max(xs), abs=1e-9)
    assert s.mean == pytest.approx(statistics.fmean(xs), rel=1e-6)


@pytest.mark.parametrize("value", [1e-6, 3.3e-5, 0.0123, 1.7, 99.0])
def test_single_values_are_resolved_within_two_percent(value: float) -> None:
    m = Metrics()
    for _ in range(3):
        m.record("op", value)
    m.record("op", value * 1.5)  # the max is not the quantile's answer
    s = m.snapshot("op")
    assert s.p50 == pytest.approx(value, rel=0.02)


def test_window_slides_slot_by_slot() -> None:
    clock = ManualClock()
    m = Metrics(window=10.0, clock=clock)  # 1 s slots
    m.record("op", 0.1)  # slot 0
    clock.set(0.999)
    m.record("op", 0.2, ok=False)  # slot 0
    clock.set(5.0)
    m.record("op", 0.3)  # slot 5
    clock.set(9.999)
    assert m.snapshot("op").count == 3
    clock.set(10.0)  # slot 0 leaves the window whole
    s = m.snapshot("op")
    assert (s.count, s.errors, s.max) == (1, 0, pytest.approx(0.3))
    clock.set(15.0)
    assert fields(m.snapshot("op")) == ZERO
    assert m.ops() == ["op"]  # idle for a whole window: its ring goes, its totals stay
    assert m.totals("op").count == 3
    m.record("op", 0.4)  # a new ring, from zero
    assert (m.snapshot("op").count, m.snapshot("op").max) == (1, pytest.approx(0.4))


def test_time_context_manager_uses_the_metrics_clock() -> None:
    clock = ManualClock()
    m = Metrics(clock=clock)
    t = m.time("block")
    assert isinstance(t, Timer)
    assert t.op == "block"
    assert repr(t) == "Timer(op='block')"
    with t as entered:
        assert entered is t
        clock.advance(0.25)
    with pytest.raises(KeyError), m.time("block"):
        clock.advance(0.5)
        raise KeyError("x")
    s = m.snapshot("block")
    assert (s.count, s.errors) == (2, 1)
    assert s.mean == pytest.approx(0.375)
    with t:  # a finished timer may be used again
        pass
    assert m.snapshot("block").count == 3


def test_timer_refuses_reentry_and_exit_without_enter() -> None:
    m = Metrics()
    t = m.time("x")
    with t, pytest.raises(RuntimeError, match="timer is already running"), t:
        pass
    with pytest.raises(RuntimeError, match="timer was not started"):
        t.__exit__(None, None, None)
    assert m.snapshot("x").count == 1


def test_time_decorates_sync_functions() -> None:
    clock = ManualClock()
    m = Metrics(clock=clock)

    @m.time("work")
    def work(x: int, *, fail: bool = False) -> int:
        """Doc kept."""
        clock.advance(0.1)
        if fail:
            raise ValueError("bad")
        return x * 2

    assert work(21) == 42
    with pytest.raises(ValueError, match="bad"):
        work(1, fail=True)
    assert work.__name__ == "work"
    assert work.__doc__ == "Doc kept."
    s = m.snapshot("work")
    assert (s.count, s.errors) == (2, 1)
    assert s.mean == pytest.approx(0.1)


def test_time_decorates_async_functions() -> None:
    clock = ManualClock()
    m = Metrics(clock=clock)

    @m.time("fetch")
    async def fetch(n: int) -> int:
        clock.advance(0.2)
        await asyncio.sleep(0)
        if n < 0:
            raise LookupError("negative")
        return n

    async def main() -> list[int]:
        ok = await asyncio.gather(fetch(1), fetch(2))
        with pytest.raises(LookupError):
            await fetch(-1)
        return list(ok)

    assert asyncio.run(main()) == [1, 2]
    assert inspect.iscoroutinefunction(fetch)
    s = m.snapshot("fetch")
    assert (s.count, s.errors) == (3, 1)


def test_bad_input_names_the_argument() -> None:
    m = Metrics()
    with pytest.raises(TypeError, match=r"^op must be a str, not 'int'$"):
        m.record(1, 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^seconds must be >= 0$"):
        m.record("op", -0.001)
    with pytest.raises(ValueError, match=r"^seconds must be a finite number of seconds$"):
        m.record("op", float("nan"))
    with pytest.raises(ValueError, match=r"^seconds must be a finite number of seconds$"):
        m.record("op", float("inf"))
    with pytest.raises(TypeError, match=r"^seconds must be a number of seconds, not 'str'$"):
        m.record("op", "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ok"):
        m.record("op", 0.1, ok="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^op must be a str, not 'bytes'$"):
        m.time(b"op")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^op must be a str, not 'NoneType'$"):
        m.snapshot(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^op must be a str, not 'int'$"):
        m.reset(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^func must be callable, not 'int'$"):
        m.time("op")(3)
    assert m.ops() == []


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match=r"^window must be > 0$"):
        Metrics(window=0)
    with pytest.raises(ValueError, match=r"^window must be >= 0.001$"):
        Metrics(window=0.0001)
    with pytest.raises(TypeError, match=r"^window must be a number of seconds, not 'str'$"):
        Metrics(window="60")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^clock must be a ferrule.ManualClock or None"):
        Metrics(clock=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Metrics(60.0)  # type: ignore[misc]


# ---- hostile numbers, names and clocks -----------------------------------------------------


def test_numbers_out_of_range_name_the_argument() -> None:
    """An int too large for a float raised Python's bare "int too large to convert to
    float", which did not say which argument was wrong."""
    m = Metrics()
    with pytest.raises(OverflowError, match=r"^seconds is out of range$"):
        m.record("op", 10**400)
    with pytest.raises(OverflowError, match=r"^window is out of range$"):
        Metrics(window=10**400)
    with pytest.raises(ValueError, match=r"^window is too large$"):
        Metrics(window=2**70)
    m.record("op", 10**9)  # allowed (at most 4e9 s): recorded, capped at 10**6 s
    assert m.snapshot("op").max == 1e6


def test_names_that_are_not_utf8_are_refused_at_time() -> None:
    """A name with a lone surrogate raised only when the timed block ended (so the block
    ran and its time was lost); it is refused when the timer is made."""
    m = Metrics()
    with pytest.raises(UnicodeEncodeError):
        m.time("bad\udc80")
    with pytest.raises(UnicodeEncodeError):
        m.record("bad\udc80", 0.1)
    assert m.ops() == []


def test_huge_names_work() -> None:
    m = Metrics()
    name = "x" * 5_000_000
    m.record(name, 0.1)
    with m.time(name):
        pass
    assert m.ops() == [name]
    assert m.snapshot(name).count == 2
    m.reset(name)
    assert m.ops() == []


def test_near_the_clocks_largest_time() -> None:
    """Slots and timers at the largest reading (2**62 ns): nothing wraps or panics."""
    for window, kept in ((0.001, 1), (60.0, 2), (4e9, 2)):
        clock = ManualClock(4e9)
        clock.advance((2**62 - 4 * 10**18) / 1e9 - 0.25)
        m = Metrics(window=window, clock=clock)
        m.record("op", 0.25)
        with m.time("op"):
            clock.advance(0.25)
        assert clock.now() == 2**62 / 1e9
        s = m.snapshot("op")
        assert (s.count, s.max) == (kept, 0.25)
        assert m.ops() == ["op"]


# ---- garbage collection --------------------------------------------------------------------


class Canary:
    """Something whose collection a weak reference can observe."""


def test_timer_keeps_an_exact_str_so_a_cycle_through_its_name_is_collected() -> None:
    """A `str` subclass name with attributes (here one pointing back at the timer) was
    kept by the Timer, which does not take part in garbage collection: the name leaked."""

    class Name(str):
        pass

    m = Metrics()
    name = Name("op")
    name.canary = Canary()  # type: ignore[attr-defined]
    timer = m.time(name)
    name.timer = timer  # type: ignore[attr-defined]  # name -> timer -> name
    assert type(timer.op) is str and timer.op == "op"
    gone = weakref.ref(name.canary)  # type: ignore[attr-defined]
    del name, timer
    gc.collect()
    assert gone() is None


def test_metrics_and_timers_hold_nothing_a_cycle_can_go_through() -> None:
    """Neither class holds a Python object that could lead back to it (module docs of
    src/py/metrics.rs), so neither needs to be tracked by the collector."""
    m = Metrics()
    assert gc.get_referents(m) == []
    assert not gc.is_tracked(m)
    assert not gc.is_tracked(m.time("op"))
