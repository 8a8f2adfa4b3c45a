"""CircuitBreaker: state machine, call forms, notifications, threads, bad input, model."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import random
import sys
import threading
import weakref
from typing import Any

import ferrule
import pytest
from ferrule import CircuitBreaker, CircuitOpen, ManualClock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.conftest import FREE_THREADED, run_threads


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom("down")


def fail(cb: CircuitBreaker, times: int = 1, exc: type[BaseException] = Boom) -> None:
    for _ in range(times):
        with pytest.raises(exc):
            cb.call(_raiser(exc))


def _raiser(exc: type[BaseException]) -> Any:
    def f() -> None:
        raise exc("x")

    return f


class FakeBus:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, signal_type: str, data: Any = None) -> int:
        self.published.append((signal_type, data))
        return 1


# ---- construction and bad input -------------------------------------------------------


def test_defaults_and_properties() -> None:
    cb = CircuitBreaker()
    assert (cb.failure_threshold, cb.reset_timeout, cb.half_open_max_calls) == (5, 30.0, 1)
    assert cb.expected == (Exception,)
    assert cb.name is None
    assert cb.state == "closed"
    assert cb.retry_after == 0.0
    assert repr(cb) == (
        "CircuitBreaker(name=None, state='closed', failure_threshold=5, reset_timeout=30.0)"
    )
    cb = CircuitBreaker(2, 0.5, half_open_max_calls=3, expected=KeyError, name="db")
    assert (cb.failure_threshold, cb.reset_timeout, cb.half_open_max_calls) == (2, 0.5, 3)
    assert cb.expected == (KeyError,)
    assert cb.name == "db"
    assert (cb.failure_rate, cb.min_calls, cb.window, cb.window_calls) == (None,) * 4
    assert (cb.slow_call, cb.success_threshold) == (None, 1)


def test_failure_rate_options_and_their_defaults() -> None:
    cb = CircuitBreaker(failure_rate=0.5)
    assert cb.failure_threshold is None
    assert (cb.failure_rate, cb.min_calls, cb.window, cb.window_calls) == (0.5, 20, 60.0, None)
    assert repr(cb) == (
        "CircuitBreaker(name=None, state='closed', failure_rate=0.5, reset_timeout=30.0)"
    )
    cb = CircuitBreaker(
        failure_rate=1, min_calls=3, window_calls=10, slow_call=2.5, success_threshold=4
    )
    assert (cb.failure_rate, cb.min_calls, cb.window, cb.window_calls) == (1.0, 3, None, 10)
    assert (cb.slow_call, cb.success_threshold) == (2.5, 4)
    cb = CircuitBreaker(None, 1.0, failure_rate=0.25, window=5.0)
    assert (cb.window, cb.reset_timeout) == (5.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({"failure_threshold": 0}, ValueError, "failure_threshold must be >= 1"),
        ({"failure_threshold": -3}, ValueError, "failure_threshold must be >= 1"),
        ({"failure_threshold": 2**30}, ValueError, "failure_threshold must be <= 1073741823"),
        # Not representable (beyond i64): OverflowError; representable but too big:
        # ValueError (the convention of every ferrule argument).
        ({"failure_threshold": 2**70}, OverflowError, "failure_threshold is out of range"),
        ({"failure_threshold": -(2**70)}, OverflowError, "failure_threshold is out of range"),
        ({"half_open_max_calls": 2**64}, OverflowError, "half_open_max_calls is out of range"),
        ({"reset_timeout": 10**400}, OverflowError, "reset_timeout is out of range"),
        ({"reset_timeout": 2**70}, ValueError, "reset_timeout is too large"),
        ({"reset_timeout": 1e300}, ValueError, "reset_timeout is too large"),
        ({"reset_timeout": float("inf")}, ValueError, "reset_timeout must be a finite number"),
        ({"failure_threshold": "5"}, TypeError, "failure_threshold must be an int, not 'str'"),
        ({"failure_threshold": True}, TypeError, "failure_threshold must be an int, not 'bool'"),
        ({"failure_threshold": 2.0}, TypeError, "failure_threshold must be an int, not 'float'"),
        ({"reset_timeout": -0.1}, ValueError, "reset_timeout must be >= 0"),
        ({"reset_timeout": float("nan")}, ValueError, "reset_timeout must be a finite number"),
        ({"reset_timeout": "1"}, TypeError, "reset_timeout must be a number of seconds"),
        ({"half_open_max_calls": 0}, ValueError, "half_open_max_calls must be >= 1"),
        ({"half_open_max_calls": 1.5}, TypeError, "half_open_max_calls must be an int"),
        ({"expected": ()}, ValueError, "expected must not be empty"),
        ({"expected": int}, TypeError, "expected must be an exception class or a tuple"),
        ({"expected": (ValueError, 3)}, TypeError, "expected must be an exception class"),
        ({"expected": ValueError()}, TypeError, "expected must be an exception class"),
        ({"clock": 1.0}, TypeError, "clock must be a ferrule.ManualClock or None"),
        ({"name": 3}, TypeError, "name must be a str or None, not 'int'"),
        ({"name": ""}, ValueError, "name must not be empty"),
        ({"on_state_change": 3}, TypeError, "on_state_change must be callable or None"),
        ({"bus": object(), "name": "x"}, TypeError, "bus must be an object with a publish"),
        ({"bus": FakeBus()}, ValueError, "name is required when bus is given"),
        ({"failure_threshold": None}, None, ""),
        ({"failure_rate": 0}, ValueError, "failure_rate must be > 0 and <= 1"),
        ({"failure_rate": 1.5}, ValueError, "failure_rate must be > 0 and <= 1"),
        ({"failure_rate": float("nan")}, ValueError, "failure_rate must be > 0 and <= 1"),
        ({"failure_rate": "0.5"}, TypeError, "failure_rate must be a number, not 'str'"),
        ({"failure_rate": True}, TypeError, "failure_rate must be a number, not 'bool'"),
        ({"failure_rate": 0.5, "min_calls": 0}, ValueError, "min_calls must be >= 1"),
        ({"failure_rate": 0.5, "min_calls": 2**30}, ValueError, "min_calls must be <= 1073741823"),
        ({"failure_rate": 0.5, "min_calls": 2**70}, OverflowError, "min_calls is out of range"),
        ({"failure_rate": 0.5, "min_calls": 1.0}, TypeError, "min_calls must be an int"),
        ({"failure_rate": 0.5, "window": 0}, ValueError, "window must be > 0"),
        ({"failure_rate": 0.5, "window": -1.0}, ValueError, "window must be > 0"),
        ({"failure_rate": 0.5, "window": "1"}, TypeError, "window must be a number of seconds"),
        ({"failure_rate": 0.5, "window": float("inf")}, ValueError, "window must be a finite"),
        ({"failure_rate": 0.5, "window_calls": 0}, ValueError, "window_calls must be >= 1"),
        (
            {"failure_rate": 0.5, "window_calls": 10**4 + 1},
            ValueError,
            "window_calls must be <= 10000",
        ),
        ({"failure_rate": 0.5, "window_calls": "3"}, TypeError, "window_calls must be an int"),
        (
            {"failure_rate": 0.5, "window_calls": 10},
            ValueError,
            "min_calls must be <= window_calls",
        ),
        ({"slow_call": 0}, ValueError, "slow_call must be > 0"),
        ({"slow_call": -1}, ValueError, "slow_call must be > 0"),
        ({"slow_call": "1"}, TypeError, "slow_call must be a number of seconds"),
        ({"success_threshold": 0}, ValueError, "success_threshold must be >= 1"),
        ({"success_threshold": 1.0}, TypeError, "success_threshold must be an int"),
        (
            {"success_threshold": 2, "half_open_max_calls": 2**30 - 1},
            ValueError,
            "success_threshold must be <= 1 with half_open_max_calls=1073741823",
        ),
        # Which rule: exclusive arguments, and the rate rule's without failure_rate.
        (
            {"failure_threshold": 5, "failure_rate": 0.5},
            ValueError,
            "failure_threshold and failure_rate cannot both be given",
        ),
        (
            {"failure_rate": 0.5, "window": 1.0, "window_calls": 5},
            ValueError,
            "window and window_calls cannot both be given",
        ),
        ({"min_calls": 3}, ValueError, "min_calls requires failure_rate"),
        ({"window": 3.0}, ValueError, "window requires failure_rate"),
        ({"window_calls": 3}, ValueError, "window_calls requires failure_rate"),
    ],
)
def test_bad_arguments_name_the_argument(
    kwargs: dict[str, Any], exc: type | None, msg: str
) -> None:
    if exc is None:  # accepted: None means the default
        CircuitBreaker(**kwargs)
        return
    with pytest.raises(exc, match="^" + msg.replace("(", r"\(").replace(")", r"\)")):
        CircuitBreaker(**kwargs)


def test_bad_call_arguments() -> None:
    cb = CircuitBreaker()
    with pytest.raises(TypeError, match=r"^func must be callable, not 'int'$"):
        cb(3)  # type: ignore[call-overload, misc]
    with pytest.raises(TypeError, match="'int' object is not callable"):
        cb.call(3)  # type: ignore[call-overload, misc]
    with pytest.raises(ValueError, match=r"^permit is not a permit of this breaker$"):
        cb._record(1 << 100)
    with pytest.raises(TypeError, match=r"^exc must be an exception instance or None$"):
        cb._record(cb._acquire(), "boom")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="exit without a matching enter"):
        cb.__exit__(None, None, None)


# ---- the state machine ----------------------------------------------------------------


@pytest.mark.smoke
def test_trips_after_consecutive_expected_failures() -> None:
    cb = CircuitBreaker(3, 10.0, clock=ManualClock())
    fail(cb, 2)
    assert cb.call(lambda: "ok") == "ok"  # a success resets the run
    assert cb.stats().consecutive_failures == 0
    fail(cb, 2)
    assert cb.state == "closed"
    assert cb.stats().consecutive_failures == 2
    fail(cb)
    assert cb.state == "open"


@pytest.mark.smoke
def test_open_rejects_without_calling_until_the_deadline() -> None:
    clock = ManualClock(100.0)
    cb = CircuitBreaker(1, 10.0, clock=clock, name="db")
    fail(cb)
    called = []
    clock.advance(4.0)
    with pytest.raises(CircuitOpen) as info:
        cb.call(called.append, 1)
    assert called == []
    assert info.value.retry_after == pytest.approx(6.0)
    assert str(info.value) == "circuit breaker 'db' is open; retry after 6.000 s"
    assert isinstance(info.value, ferrule.FerruleError)
    assert cb.retry_after == pytest.approx(6.0)
    # Opened at t=100 with d=10: open while now < 110.
    clock.set(110.0 - 1e-9)
    assert cb.state == "open"
    with pytest.raises(CircuitOpen):
        cb.call(called.append, 1)
    clock.set(110.0)
    assert cb.state == "half_open"
    assert cb.retry_after == 0.0
    assert cb.call(lambda: 7) == 7
    assert cb.state == "closed"
    assert called == []


def test_half_open_limits_probes_and_a_failed_probe_reopens() -> None:
    clock = ManualClock()
    cb = CircuitBreaker(1, 5.0, clock=clock)
    fail(cb)
    clock.advance(5.0)
    permit = cb._acquire()  # the one probe, in flight
    with pytest.raises(CircuitOpen, match="half-open and its 1 probe call") as info:
        cb.call(lambda: None)
    assert info.value.retry_after == 0.0
    clock.advance(1.0)
    cb._record(permit, Boom())
    assert cb.state == "open"
    assert cb.retry_after == pytest.approx(5.0)  # stamped anew at t=6
    clock.advance(5.0)
    assert cb.state == "half_open"


def test_exceptions_outside_expected_pass_through_and_do_not_count() -> None:
    clock = ManualClock()
    cb = CircuitBreaker(2, 1.0, expected=(Boom,), clock=clock)
    fail(cb, 5, KeyError)
    assert cb.state == "closed"
    s = cb.stats()
    assert (s.calls, s.failures, s.ignored, s.consecutive_failures) == (5, 0, 5, 0)
    # ...and do not reset the run either.
    fail(cb)
    fail(cb, 1, KeyError)
    fail(cb)
    assert cb.state == "open"
    # A probe that raises one frees its slot for the next probe.
    clock.advance(1.0)
    fail(cb, 1, KeyError)
    assert cb.state == "half_open"
    assert cb.call(lambda: 1) == 1
    assert cb.state == "closed"


def test_subclasses_of_expected_count() -> None:
    cb = CircuitBreaker(1, expected=OSError)
    fail(cb, 1, ConnectionRefusedError)
    assert cb.state == "open"


def test_base_exceptions_do_not_count_by_default() -> None:
    cb = CircuitBreaker(1)
    fail(cb, 1, KeyboardInterrupt)
    fail(cb, 1, SystemExit)
    assert cb.state == "closed"
    assert cb.stats().ignored == 2


def test_zero_reset_timeout_probes_at_once() -> None:
    cb = CircuitBreaker(1, 0)
    fail(cb)
    assert cb.state == "half_open"


def test_reset_closes_and_forgets_calls_in_flight() -> None:
    cb = CircuitBreaker(2, 60.0, clock=ManualClock())
    fail(cb, 2)
    assert cb.state == "open"
    cb.reset()
    assert cb.state == "closed"
    permit = cb._acquire()
    fail(cb)
    cb.reset()
    cb._record(permit, Boom())  # admitted before the reset: does not count
    fail(cb)
    assert cb.state == "closed"
    assert cb.stats().consecutive_failures == 1


def test_a_slow_call_that_fails_after_the_trip_does_not_restamp() -> None:
    clock = ManualClock()
    cb = CircuitBreaker(1, 10.0, clock=clock)
    slow = cb._acquire()
    fail(cb)
    clock.advance(8.0)
    cb._record(slow, Boom())
    assert cb.retry_after == pytest.approx(2.0)


def test_stats_count_every_outcome() -> None:
    clock = ManualClock()
    cb = CircuitBreaker(2, 1.0, expected=Boom, clock=clock)
    cb.call(int)
    fail(cb, 1, KeyError)
    fail(cb, 2)
    fail(cb, 3, CircuitOpen)
    clock.advance(1.0)
    cb.call(int)
    s = cb.stats()
    assert (s.state, s.calls, s.successes, s.failures, s.ignored, s.rejections) == (
        "closed",
        5,
        2,
        2,
        1,
        3,
    )
    assert s.state_changes == 3  # closed->open->half_open->closed
    assert repr(s).startswith("BreakerStats(state='closed', calls=5, successes=2")


def test_failure_rate_opens_at_the_threshold_after_min_calls() -> None:
    clock = ManualClock()
    cb = CircuitBreaker(failure_rate=0.5, min_calls=4, window=20.0, expected=Boom, clock=clock)
    fail(cb, 3)  # 3 of 3 failed, but fewer than min_calls calls
    assert cb.state == "closed"
    assert cb.call(int) == 0  # a success never opens, even as it reaches min_calls
    s = cb.stats()
    assert (s.state, s.window_calls, s.window_failures, s.consecutive_failures) == (
        "closed",
        4,
        3,
        0,
    )
    fail(cb)  # 4 of 5
    assert cb.state == "open"
    assert cb.stats().window_calls == 0  # read while closed only


def test_failure_rate_window_slides_in_steps_of_a_twentieth() -> None:
    clock = ManualClock()
    cb = CircuitBreaker(failure_rate=0.5, min_calls=2, window=10.0, expected=Boom, clock=clock)
    fail(cb)
    clock.advance(9.5)  # the failure's step (0.5 s) is the oldest in the window
    assert cb.stats().window_calls == 1
    clock.advance(0.5)
    assert cb.stats().window_calls == 0  # it aged out
    cb.call(int)
    fail(cb)  # 1 of 2: the threshold itself opens
    assert cb.state == "open"


def test_failure_rate_over_the_last_n_calls() -> None:
    cb = CircuitBreaker(failure_rate=0.5, min_calls=4, window_calls=4, expected=Boom)
    for _ in range(10):
        cb.call(int)
    fail(cb)
    s = cb.stats()
    assert (s.window_calls, s.window_failures) == (4, 1)
    fail(cb)  # the last 4: 2 failed
    assert cb.state == "open"


def test_closing_starts_an_empty_window() -> None:
    clock = ManualClock()
    cb = CircuitBreaker(
        None, 1.0, failure_rate=0.5, min_calls=2, window=60.0, expected=Boom, clock=clock
    )
    fail(cb, 2)
    assert cb.state == "open"
    clock.advance(1.0)
    cb.call(int)  # the probe closes
    assert cb.state == "closed"
    fail(cb)  # 1 of 1: below min_calls in the new period
    assert cb.state == "closed"
    assert (cb.stats().window_calls, cb.stats().window_failures) == (1, 1)


def test_slow_calls_count_as_failures() -> None:
    clock = ManualClock()
    cb = CircuitBreaker(2, 10.0, slow_call=1.0, clock=clock)

    def takes(seconds: float) -> str:
        clock.advance(seconds)
        return "done"

    assert cb.call(takes, 0.5) == "done"
    assert cb.stats().consecutive_failures == 0
    assert cb.call(takes, 1.0) == "done"  # returned, but slow: a failure
    assert cb.stats().consecutive_failures == 1
    assert cb.call(takes, 3.0) == "done"
    assert cb.state == "open"
    s = cb.stats()
    assert (s.calls, s.successes, s.failures, s.slow_calls) == (3, 1, 2, 2)


def test_slow_calls_through_the_decorator_and_with_blocks() -> None:
    clock = ManualClock()
    cb = CircuitBreaker(3, 10.0, slow_call=1.0, clock=clock)

    @cb
    async def slow() -> int:
        clock.advance(1.0)
        return 1

    assert asyncio.run(slow()) == 1
    with cb:
        clock.advance(2.0)
    with cb:
        pass
    s = cb.stats()
    assert (s.successes, s.failures, s.slow_calls) == (1, 2, 2)


def test_success_threshold_closes_after_that_many_probe_successes() -> None:
    clock = ManualClock()
    seen: list[tuple[str, str]] = []
    cb = CircuitBreaker(
        1,
        1.0,
        half_open_max_calls=1,
        success_threshold=3,
        clock=clock,
        on_state_change=lambda old, new: seen.append((old, new)),
    )
    fail(cb)
    clock.advance(1.0)
    for _ in range(2):
        cb.call(int)  # a success frees the one probe slot
        assert cb.state == "half_open"
    fail(cb)  # the first failure re-opens, whatever the successes so far
    assert cb.state == "open"
    clock.advance(1.0)
    for _ in range(3):
        cb.call(int)
    assert cb.state == "closed"
    assert seen == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_force_open_and_force_closed_hold_until_reset() -> None:
    clock = ManualClock()
    seen: list[tuple[str, str]] = []
    bus = FakeBus()
    cb = CircuitBreaker(
        1,
        1.0,
        clock=clock,
        name="db",
        bus=bus,
        on_state_change=lambda old, new: seen.append((old, new)),
    )
    cb.force_open()
    cb.force_open()  # already there: no change reported
    clock.advance(3600.0)
    assert cb.state == "forced_open"
    assert cb.retry_after == math.inf
    ran: list[int] = []
    with pytest.raises(CircuitOpen, match=r"^circuit breaker 'db' is forced open$") as info:
        cb.call(ran.append, 1)
    assert ran == []
    assert info.value.retry_after == math.inf
    cb.force_closed()
    fail(cb, 5)
    assert cb.state == "forced_closed"
    assert cb.retry_after == 0.0
    s = cb.stats()
    assert (s.state, s.failures, s.consecutive_failures, s.rejections) == (
        "forced_closed",
        5,
        0,
        1,
    )
    cb.reset()
    fail(cb)
    assert cb.state == "open"
    cb.force_closed()
    transitions = [
        ("closed", "forced_open"),
        ("forced_open", "forced_closed"),
        ("forced_closed", "closed"),
        ("closed", "open"),
        ("open", "forced_closed"),
    ]
    assert seen == transitions
    assert [d["state"] for _, d in bus.published] == [new for _, new in transitions]


def test_calls_in_flight_when_forced_do_not_count() -> None:
    cb = CircuitBreaker(1)
    permit = cb._acquire()
    cb.force_closed()
    cb.reset()
    cb._record(permit, Boom())
    assert cb.state == "closed"


# ---- notifications --------------------------------------------------------------------


def test_on_state_change_and_bus_see_every_transition() -> None:
    clock = ManualClock()
    seen: list[tuple[str, str]] = []
    bus = FakeBus()
    cb = CircuitBreaker(
        1,
        1.0,
        clock=clock,
        name="payments",
        bus=bus,
        on_state_change=lambda old, new: seen.append((old, new)),
    )
    fail(cb)
    clock.advance(1.0)
    fail(cb)
    clock.advance(1.0)
    cb.call(int)
    fail(cb)
    cb.reset()
    transitions = [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
        ("closed", "open"),
        ("open", "closed"),
    ]
    assert seen == transitions
    assert bus.published == [
        ("breaker.payments.state", {"name": "payments", "state": new, "previous": old})
        for old, new in transitions
    ]


def test_a_callback_may_use_the_breaker_without_deadlock() -> None:
    states: list[str] = []
    cb: CircuitBreaker

    def on_change(old: str, new: str) -> None:
        states.append(cb.state)
        states.append(cb.stats().state)
        if new == "open":
            cb.reset()

    cb = CircuitBreaker(1, 60.0, on_state_change=on_change)
    fail(cb)
    assert cb.state == "closed"
    assert states == ["open", "open", "closed", "closed"]


def test_a_failing_callback_goes_to_the_unraisable_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    caught: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", caught.append)

    def bad(old: str, new: str) -> None:
        raise RuntimeError("callback bug")

    class BadBus:
        def publish(self, signal_type: str, data: Any) -> None:
            raise OSError("bus down")

    cb = CircuitBreaker(1, on_state_change=bad, bus=BadBus(), name="x")
    fail(cb)  # the call's own exception still propagates
    assert cb.state == "open"
    assert [type(u.exc_value) for u in caught] == [RuntimeError, OSError]


def test_an_instancecheck_that_raises_counts_neither_way(monkeypatch: pytest.MonkeyPatch) -> None:
    caught: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", caught.append)

    class Meta(type):
        def __instancecheck__(cls, obj: object) -> bool:
            raise RuntimeError("bad check")

    class Weird(Exception, metaclass=Meta):
        pass

    cb = CircuitBreaker(1, expected=Weird)
    fail(cb)  # Boom still propagates
    assert cb.state == "closed"
    assert cb.stats().ignored == 1
    assert [type(u.exc_value) for u in caught] == [RuntimeError]


# ---- call forms -----------------------------------------------------------------------


def test_call_passes_arguments_through() -> None:
    cb = CircuitBreaker()

    def f(a: int, /, b: int, *, c: int = 0) -> tuple[int, int, int]:
        return (a, b, c)

    assert cb.call(f, 1, 2, c=3) == (1, 2, 3)
    assert cb.call(f, 1, b=2) == (1, 2, 0)


def test_decorator_sync_keeps_metadata_and_counts() -> None:
    cb = CircuitBreaker(2)

    @cb
    def fetch(key: str) -> str:
        """Fetch a thing."""
        if key == "bad":
            raise Boom(key)
        return key.upper()

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch a thing."
    assert fetch("a") == "A"
    for _ in range(2):
        with pytest.raises(Boom):
            fetch("bad")
    with pytest.raises(CircuitOpen):
        fetch("a")
    assert cb.stats().calls == 3


def test_decorator_works_on_methods() -> None:
    cb = CircuitBreaker()

    class Client:
        def __init__(self) -> None:
            self.n = 0

        @cb
        def get(self, x: int) -> int:
            self.n += x
            return self.n

    c = Client()
    assert c.get(2) == 2
    assert c.get(3) == 5


def test_decorator_async() -> None:
    clock = ManualClock()
    cb = CircuitBreaker(1, 1.0, clock=clock)

    @cb
    async def fetch(ok: bool) -> str:
        await asyncio.sleep(0)
        if not ok:
            raise Boom("down")
        return "up"

    async def main() -> None:
        assert await fetch(True) == "up"
        with pytest.raises(Boom):
            await fetch(False)
        assert cb.state == "open"
        with pytest.raises(CircuitOpen):
            await fetch(True)
        clock.advance(1.0)
        assert await fetch(True) == "up"
        assert cb.state == "closed"

    asyncio.run(main())
    assert asyncio.iscoroutinefunction(fetch)


def test_cancelled_probe_frees_its_slot() -> None:
    cb = CircuitBreaker(1, 0.0)
    fail(cb)

    @cb
    async def hang(ev: asyncio.Event) -> None:
        ev.set()
        await asyncio.sleep(3600)

    async def main() -> None:
        ev = asyncio.Event()
        task = asyncio.create_task(hang(ev))
        await ev.wait()
        with pytest.raises(CircuitOpen):
            await hang(asyncio.Event())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cb.state == "half_open"
    assert cb.call(int) == 0
    assert cb.state == "closed"


def test_context_manager_sync() -> None:
    cb = CircuitBreaker(2, 60.0)
    with cb as entered:
        assert entered is cb
    for _ in range(2):
        with pytest.raises(Boom), cb:
            raise Boom("x")
    ran = []
    with pytest.raises(CircuitOpen), cb:
        ran.append(1)
    assert ran == []
    s = cb.stats()
    assert (s.calls, s.successes, s.failures, s.rejections) == (3, 1, 2, 1)


def test_nested_with_blocks_record_their_own_permits() -> None:
    clock = ManualClock()
    cb = CircuitBreaker(1, 1.0, clock=clock)
    outer = CircuitBreaker(1, 1.0, clock=clock)
    with outer, pytest.raises(Boom), cb:
        raise Boom("inner only")
    assert (cb.state, outer.state) == ("open", "closed")


def test_with_blocks_in_threads_and_tasks_do_not_mix() -> None:
    # Many concurrent blocks on one breaker, each exiting in its own context.
    cb = CircuitBreaker(10**6)
    barrier = threading.Barrier(4)

    def worker(i: int) -> None:
        for n in range(50):
            if n % 10 == 0:
                barrier.wait(timeout=10)
            try:
                with cb:
                    if (n + i) % 2:
                        raise Boom("x")
            except Boom:
                pass

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()

    async def task(i: int) -> None:
        for n in range(20):
            try:
                async with cb:
                    await asyncio.sleep(0)
                    if (n + i) % 2:
                        raise Boom("x")
            except Boom:
                pass

    async def main() -> None:
        await asyncio.gather(*(task(i) for i in range(5)))

    asyncio.run(main())
    s = cb.stats()
    assert (s.calls, s.successes, s.failures) == (300, 150, 150)


def test_async_with_rejects_while_open() -> None:
    cb = CircuitBreaker(1, 60.0)

    async def main() -> list[int]:
        ran = []
        with pytest.raises(Boom):
            async with cb:
                raise Boom("x")
        with pytest.raises(CircuitOpen):
            async with cb:
                ran.append(1)
        return ran

    assert asyncio.run(main()) == []


# ---- threads --------------------------------------------------------------------------


@pytest.mark.parametrize("probes", [1, 3])
def test_half_open_probe_limit_under_threads(threads: int, probes: int) -> None:
    clock = ManualClock()
    cb = CircuitBreaker(1, 1.0, half_open_max_calls=probes, clock=clock)
    fail(cb)
    clock.advance(1.0)
    release = threading.Event()
    start = threading.Barrier(threads)
    admitted: list[int] = []
    rejected: list[float] = []
    lock = threading.Lock()

    def probe(i: int) -> None:
        start.wait(timeout=10)
        try:
            cb.call(_wait_then_record, release, admitted, lock, i)
        except CircuitOpen as e:
            with lock:
                rejected.append(e.retry_after)

    ts = [threading.Thread(target=probe, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    # Probes stay in flight until every thread has been admitted or rejected.
    for _ in range(2000):
        with lock:
            if len(admitted) + len(rejected) == threads:
                break
        release.wait(0.005)
    release.set()
    for t in ts:
        t.join()
    assert len(admitted) == probes
    assert rejected == [0.0] * (threads - probes)
    assert cb.state == "closed"


def _wait_then_record(
    release: threading.Event, admitted: list[int], lock: threading.Lock, i: int
) -> None:
    with lock:
        admitted.append(i)
    assert release.wait(10)


def test_protected_calls_run_in_parallel(threads: int) -> None:
    # Every call waits inside the breaker for all the others to arrive: if the breaker
    # serialised calls, the barrier would break instead.
    cb = CircuitBreaker()
    inside = threading.Barrier(threads)
    results: list[int] = []

    def work() -> None:
        results.append(cb.call(inside.wait, 10))

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(results) == list(range(threads))
    assert cb.stats().successes == threads


@pytest.mark.parametrize("probes", [1, 2])
def test_half_open_with_success_threshold_never_over_admits(threads: int, probes: int) -> None:
    # Successful probes free their slots while the breaker stays half-open (a threshold
    # no run reaches): at no instant are more than `probes` probes inside the call.
    clock = ManualClock()
    cb = CircuitBreaker(1, 1.0, half_open_max_calls=probes, success_threshold=10**6, clock=clock)
    fail(cb)
    clock.advance(1.0)
    inside = 0
    most = 0
    lock = threading.Lock()

    def probe() -> None:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        for _ in range(20):  # stay a moment: let the others try to get in
            pass
        with lock:
            inside -= 1

    def body(i: int) -> None:
        for _ in range(300):
            try:
                cb.call(probe)
            except CircuitOpen as e:
                assert e.retry_after == 0.0

    run_threads(threads, body)
    assert 1 <= most <= probes
    s = cb.stats()
    assert s.state == "half_open"
    assert s.calls == s.successes + 1  # and the failure that opened it
    assert s.calls - 1 + s.rejections == threads * 300


@pytest.mark.parametrize("window", [{"window": 60.0}, {"window_calls": 10_000}])
def test_window_counts_are_exact_under_threads(threads: int, window: dict[str, Any]) -> None:
    per_thread = 400
    # Rate 1.0 with a min_calls above what is recorded: it never opens.
    cb = CircuitBreaker(failure_rate=1.0, min_calls=10_000, expected=Boom, **window)

    def body(i: int) -> None:
        for k in range(per_thread):
            if (i + k) % 4 == 0:
                with pytest.raises(Boom):
                    cb.call(boom)
            else:
                cb.call(int)

    run_threads(threads, body)
    s = cb.stats()
    n = threads * per_thread
    assert (s.window_calls, s.window_failures) == (n, n // 4)
    assert (s.successes, s.failures) == (n - n // 4, n // 4)


def test_rate_breaker_trips_once_under_threads(threads: int) -> None:
    trips: list[tuple[str, str]] = []
    cb = CircuitBreaker(
        failure_rate=0.5,
        min_calls=10,
        window_calls=100,
        reset_timeout=3600.0,
        expected=Boom,
        on_state_change=lambda old, new: trips.append((old, new)),
    )

    def body(i: int) -> None:
        for _ in range(200):
            with contextlib.suppress(Boom, CircuitOpen):
                cb.call(boom)

    run_threads(threads, body)
    assert trips == [("closed", "open")]
    s = cb.stats()
    assert s.calls + s.rejections == threads * 200
    assert s.calls == s.failures >= 10


def test_stress_counts_add_up(threads: int, stress_scale: int) -> None:
    per_thread = 2000 * stress_scale
    errors: list[BaseException] = []
    transitions: list[tuple[str, str]] = []
    seen_lock = threading.Lock()

    def on_change(old: str, new: str) -> None:
        with seen_lock:
            transitions.append((old, new))

    cb = CircuitBreaker(3, 0.0, half_open_max_calls=2, expected=Boom, on_state_change=on_change)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(per_thread):
                r = rng.random()
                try:
                    if r < 0.4:
                        cb.call(boom)
                    elif r < 0.5:
                        cb.call(_raiser(KeyError))
                    else:
                        cb.call(int)
                except (Boom, KeyError, CircuitOpen):
                    pass
                assert cb.state in ("closed", "open", "half_open")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    s = cb.stats()
    assert s.calls + s.rejections == threads * per_thread
    assert s.calls == s.successes + s.failures + s.ignored
    assert s.state_changes == len(transitions)
    allowed = {
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("half_open", "closed"),
    }
    assert set(transitions) <= allowed


# ---- model-based test -----------------------------------------------------------------


class Model:
    """The contract in plain Python, on the same ManualClock readings (in ns, as the core
    reads them). ``rule`` is ``("consecutive", threshold)``, ``("time", rate, min_calls,
    window_ns)`` or ``("calls", rate, min_calls, n)``."""

    def __init__(
        self,
        rule: tuple[Any, ...],
        timeout: float,
        probes: int,
        success_threshold: int = 1,
        slow_ns: int | None = None,
    ) -> None:
        self.rule, self.timeout, self.max_probes = rule, timeout, probes
        self.success_threshold, self.slow_ns = success_threshold, slow_ns
        self.state = "closed"
        self.gen = 0
        self.run = 0
        self.probes = 0
        self.successes = 0
        self.opened_at = 0.0
        # (gen, step or None, failed) of every record, oldest first.
        self.records: list[tuple[int, int | None, bool]] = []
        self.stats = dict.fromkeys(
            (
                "calls",
                "successes",
                "failures",
                "slow_calls",
                "ignored",
                "rejections",
                "state_changes",
            ),
            0,
        )
        self.transitions: list[tuple[str, str]] = []

    def _move(self, new: str) -> None:
        if new != self.state:
            self.transitions.append((self.state, new))
            self.stats["state_changes"] += 1
        self.state = new
        self.gen += 1
        self.run = 0
        self.probes = 0
        self.successes = 0

    def _step(self, now_ns: int) -> int:
        return now_ns // max(1, self.rule[3] // 20)

    def window(self, now_ns: int) -> tuple[int, int]:
        """(calls, failures) of the current period in the window."""
        if self.rule[0] == "time":
            step = self._step(now_ns)
            mine = [r for r in self.records if r[0] == self.gen and step - (r[1] or 0) < 20]
        elif self.rule[0] == "calls":
            mine = [r for r in self.records[-self.rule[3] :] if r[0] == self.gen]
        else:
            return (0, 0)
        return len(mine), sum(r[2] for r in mine)

    def observe(self, now: float) -> str:
        if self.state == "open" and now >= self.opened_at + self.timeout:
            self._move("half_open")
        return self.state

    def admit(self, now: float, now_ns: int) -> tuple[int, bool, int] | float:
        """A permit (gen, probe, start), or the retry_after of the rejection."""
        if self.state == "forced_open":
            self.stats["rejections"] += 1
            return math.inf
        if self.state == "open":
            if now < self.opened_at + self.timeout:
                self.stats["rejections"] += 1
                return self.opened_at + self.timeout - now
            self._move("half_open")
        if self.state in ("closed", "forced_closed"):
            self.stats["calls"] += 1
            return (self.gen, False, now_ns)
        if self.probes < self.max_probes:
            self.probes += 1
            self.stats["calls"] += 1
            return (self.gen, True, now_ns)
        self.stats["rejections"] += 1
        return 0.0

    def success(self, permit: tuple[int, bool, int], now: float, now_ns: int) -> None:
        if self.slow_ns is not None and now_ns - permit[2] >= self.slow_ns:
            self.stats["slow_calls"] += 1
            self.failure(permit, now, now_ns)
            return
        self.stats["successes"] += 1
        if permit[0] != self.gen:
            return
        if self.state == "half_open":
            self.successes += 1
            self.probes -= 1
            if self.successes >= self.success_threshold:
                self._move("closed")
        elif self.state == "closed":
            if self.rule[0] == "consecutive":
                self.run = 0
            else:
                self.records.append((self.gen, self._step_of(now_ns), False))

    def _step_of(self, now_ns: int) -> int | None:
        return self._step(now_ns) if self.rule[0] == "time" else None

    def failure(self, permit: tuple[int, bool, int], now: float, now_ns: int) -> None:
        self.stats["failures"] += 1
        if permit[0] != self.gen or self.state not in ("closed", "half_open"):
            return
        if self.state == "closed":
            if self.rule[0] == "consecutive":
                self.run += 1
                if self.run < self.rule[1]:
                    return
            else:
                self.records.append((self.gen, self._step_of(now_ns), True))
                calls, failures = self.window(now_ns)
                if calls < self.rule[2] or failures / calls < self.rule[1]:
                    return
        self._move("open")
        self.opened_at = now

    def ignore(self, permit: tuple[int, bool, int]) -> None:
        self.stats["ignored"] += 1
        if permit[1] and permit[0] == self.gen and self.state == "half_open":
            self.probes -= 1

    def force(self, state: str) -> None:
        self._move(state)


class BreakerMachine(RuleBasedStateMachine):
    @initialize(
        rule=st.one_of(
            st.tuples(st.just("consecutive"), st.integers(1, 3)),
            st.tuples(
                st.sampled_from(["time", "calls"]),
                st.sampled_from([0.25, 0.5, 2 / 3, 1.0]),
                st.integers(1, 4),
                st.sampled_from([4, 5]),
            ),
        ),
        timeout=st.sampled_from([0.0, 1.0, 2.5]),
        probes=st.integers(1, 2),
        success_threshold=st.integers(1, 3),
        slow_call=st.sampled_from([None, None, 1.0]),
    )
    def setup(
        self,
        rule: tuple[Any, ...],
        timeout: float,
        probes: int,
        success_threshold: int,
        slow_call: float | None,
    ) -> None:
        self.clock = ManualClock()
        self.now_ns = 0
        self.seen: list[tuple[str, str]] = []
        kwargs: dict[str, Any] = {}
        if rule[0] == "consecutive":
            kwargs["failure_threshold"] = rule[1]
        else:
            # A time window of 4 or 5 s (steps of 0.2 or 0.25 s), or the last 4 or 5
            # calls.
            kwargs.update(failure_rate=rule[1], min_calls=rule[2])
            if rule[0] == "time":
                kwargs["window"] = float(rule[3])
                rule = (*rule[:3], rule[3] * 10**9)
            else:
                kwargs["window_calls"] = rule[3]
        self.cb = CircuitBreaker(
            reset_timeout=timeout,
            half_open_max_calls=probes,
            success_threshold=success_threshold,
            slow_call=slow_call,
            expected=Boom,
            clock=self.clock,
            on_state_change=lambda old, new: self.seen.append((old, new)),
            **kwargs,
        )
        slow_ns = None if slow_call is None else int(slow_call * 10**9)
        self.model = Model(rule, timeout, probes, success_threshold, slow_ns)
        self.held: list[tuple[int, tuple[int, bool, int]]] = []

    def _admit(self) -> tuple[int, tuple[int, bool, int]] | None:
        expect = self.model.admit(self.clock.now(), self.now_ns)
        if isinstance(expect, float):
            with pytest.raises(CircuitOpen) as info:
                self.cb._acquire()
            assert info.value.retry_after == pytest.approx(expect, abs=1e-9)
            return None
        return self.cb._acquire(), expect

    @rule(outcome=st.sampled_from(["ok", "fail", "other"]))
    def call(self, outcome: str) -> None:
        admitted = self._admit()
        if admitted is not None:
            self._finish(admitted, outcome)

    @rule()
    def begin(self) -> None:
        admitted = self._admit()
        if admitted is not None:
            self.held.append(admitted)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "fail", "other"]))
    def end(self, data: st.DataObject, outcome: str) -> None:
        i = data.draw(st.integers(0, len(self.held) - 1))
        self._finish(self.held.pop(i), outcome)

    def _finish(self, admitted: tuple[int, tuple[int, bool, int]], outcome: str) -> None:
        permit, mine = admitted
        now = self.clock.now()
        if outcome == "ok":
            self.cb._record(permit)
            self.model.success(mine, now, self.now_ns)
        elif outcome == "fail":
            self.cb._record(permit, Boom())
            self.model.failure(mine, now, self.now_ns)
        else:
            self.cb._record(permit, KeyError())
            self.model.ignore(mine)

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 2.5]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)
        self.now_ns += int(dt * 10**9)

    @rule()
    def reset(self) -> None:
        self.cb.reset()
        self.model.force("closed")

    @rule(state=st.sampled_from(["forced_open", "forced_closed"]))
    def force(self, state: str) -> None:
        getattr(self.cb, state.replace("forced", "force"))()
        self.model.force(state)

    @rule()
    def read_state(self) -> None:
        assert self.cb.state == self.model.observe(self.clock.now())

    @invariant()
    def agrees(self) -> None:
        if not hasattr(self, "cb"):
            return
        s = self.cb.stats()
        self.model.observe(self.clock.now())
        assert s.state == self.model.state
        got = {k: getattr(s, k) for k in self.model.stats}
        assert got == self.model.stats
        closed = self.model.state == "closed"
        expect_run = self.model.run if closed else 0
        assert s.consecutive_failures == expect_run
        window = self.model.window(self.now_ns) if closed else (0, 0)
        assert (s.window_calls, s.window_failures) == window
        assert self.seen == self.model.transitions


TestBreakerModel = BreakerMachine.TestCase
TestBreakerModel.settings = settings(max_examples=400, stateful_step_count=40, deadline=None)


# ---- garbage collection -----------------------------------------------------------------


class Canary:
    """Something whose collection a weak reference can observe."""


def test_cycle_through_on_state_change_is_collected() -> None:
    """`self.cb = CircuitBreaker(on_state_change=self.on_change)` kept `self` alive
    forever: the breaker held the bound method without taking part in garbage
    collection."""

    class Service:
        def __init__(self) -> None:
            self.canary = Canary()
            self.changes: list[tuple[str, str]] = []
            self.cb = CircuitBreaker(1, on_state_change=self.on_change)

        def on_change(self, old: str, new: str) -> None:
            self.changes.append((old, new))

    s = Service()
    fail(s.cb)
    assert s.changes == [("closed", "open")]
    gone = weakref.ref(s.canary)
    del s
    gc.collect()
    assert gone() is None


def test_cycle_through_the_bus_is_collected() -> None:
    """A bus that refers back to the breaker's holder (here the holder is the bus)."""

    class Service(FakeBus):
        def __init__(self) -> None:
            super().__init__()
            self.canary = Canary()
            self.cb = CircuitBreaker(1, name="svc", bus=self)

    s = Service()
    fail(s.cb)
    assert [t for t, _ in s.published] == ["breaker.svc.state"]
    gone = weakref.ref(s.canary)
    del s
    gc.collect()
    assert gone() is None


@pytest.mark.skipif(
    FREE_THREADED,
    reason="CPython 3.13t does not always collect a cycle through a class made in a "
    "function once other threads have run (reproducible without ferrule)",
)
def test_cycle_through_the_expected_classes_is_collected() -> None:
    """An exception class made for one service (it refers back to the service)."""

    def make() -> weakref.ref[Canary]:
        class Service:
            pass

        service = Service()

        class ServiceError(Exception):
            owner = service

        service.canary = Canary()  # type: ignore[attr-defined]
        service.cb = CircuitBreaker(2, expected=ServiceError)  # type: ignore[attr-defined]
        fail(service.cb, exc=ServiceError)  # type: ignore[attr-defined]
        return weakref.ref(service.canary)  # type: ignore[attr-defined]

    gone = make()
    gc.collect()
    assert gone() is None


def test_traverse_visits_every_hook() -> None:
    """The breaker shows the collector `expected`, `on_state_change` and `bus`."""
    bus = FakeBus()

    def on_change(old: str, new: str) -> None:
        pass

    cb = CircuitBreaker(1, expected=Boom, name="n", bus=bus, on_state_change=on_change)
    referents = gc.get_referents(cb)
    assert cb.expected in referents
    assert on_change in referents
    assert bus in referents
    assert gc.is_tracked(cb)


def test_name_is_stored_as_an_exact_str() -> None:
    """A `str` subclass name could hold references; the breaker keeps an exact copy."""

    class Name(str):
        pass

    n = Name("db")
    n.canary = Canary()  # type: ignore[attr-defined]
    cb = CircuitBreaker(name=n)
    assert cb.name == "db" and type(cb.name) is str
    gone = weakref.ref(n.canary)  # type: ignore[attr-defined]
    del n
    gc.collect()
    assert gone() is None


# ---- exit safety: user code reached from a breaker ---------------------------------------


def _exits_cleanly(body: str) -> None:
    """Runs `body` (with tests/test_exit.py's prelude) in a fresh interpreter that exits
    while daemon threads are inside ferrule, and checks that it ends normally."""
    from tests.test_exit import RUNS, run

    for _ in range(RUNS):
        proc = run(body)
        assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
        for marker in ("FATAL", "Fatal Python error", "panicked", "PanicException"):
            assert marker not in proc.stderr, proc.stderr[-2000:]


def test_daemon_threads_rejected_by_an_open_breaker_at_exit() -> None:
    """Each rejection made a lazy `CircuitOpen` and normalized it to set `retry_after`;
    PyO3 normalizes by detaching and re-attaching outside `wait`, so a daemon thread
    rejected at interpreter exit was ended by a forced unwind through Rust frames: the
    process aborted ("FATAL: exception not rethrown") or crashed, most of the time."""
    _exits_cleanly(
        """
        cb = ferrule.CircuitBreaker(1, 3600.0)
        try:
            cb.call(lambda: 1 / 0)
        except ZeroDivisionError:
            pass
        daemon(forever(lambda: cb.call(int)), 4)
        """
    )


def test_daemon_thread_inside_a_bus_publish_at_exit() -> None:
    """`bus.publish` was called directly rather than through `wait::call`: a daemon
    thread sleeping in it at interpreter exit was ended by a forced unwind through Rust
    frames, which aborts the process ("FATAL: exception not rethrown")."""
    _exits_cleanly(
        """
        class SlowBus:
            def publish(self, signal_type, data):
                time.sleep(0.002)
        cb = ferrule.CircuitBreaker(1, 0.0, name="x", bus=SlowBus())
        def boom():
            raise ValueError("down")
        def call():
            try:
                cb.call(boom)
            except ValueError:
                pass
        daemon(forever(call), 4)
        """
    )


def test_daemon_thread_inside_an_instancecheck_at_exit() -> None:
    """The `expected` check ran a metaclass's `__instancecheck__` (user code) directly
    rather than through `wait::call`: a daemon thread sleeping in it at exit aborted the
    process."""
    _exits_cleanly(
        """
        class Meta(type):
            def __instancecheck__(cls, obj):
                time.sleep(0.002)
                return False
        class Slow(Exception, metaclass=Meta):
            pass
        cb = ferrule.CircuitBreaker(1, expected=Slow)
        def boom():
            raise ValueError("down")
        def call():
            try:
                cb.call(boom)
            except ValueError:
                pass
        daemon(forever(call), 4)
        """
    )
