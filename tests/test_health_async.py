"""HealthMonitor with asyncio checks and per-agent watches: async statuses and failures,
timeouts that cancel the task, concurrency on one loop, the monitor's own loop thread
and a loop it is given, watch/unwatch (intervals, timeouts, reclamation), and that
nothing is left pending, unawaited or alive after stop(), collection or a cancelled
round."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from ferrule import Agent, HealthMonitor, ManualClock, Registry, SignalBus
from ferrule._queue import is_async_callable as _is_async

from tests.conftest import wait_until

LOOP_THREAD = "ferrule-health-loop"


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown so a hanging check always returns."""
    ev = threading.Event()
    yield ev
    ev.set()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own (stopped and closed at teardown)."""
    lp = asyncio.new_event_loop()
    t = threading.Thread(target=lp.run_forever, name="test-loop")
    t.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    t.join(5.0)
    lp.close()


@pytest.fixture
def no_leaks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails the test on a task destroyed pending or a coroutine never awaited."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.ERROR, "asyncio"):
        warnings.simplefilter("always")
        yield
        gc.collect()
    assert [str(w.message) for w in caught] == []
    assert "Task was destroyed but it is pending" not in caplog.text
    assert "never awaited" not in caplog.text


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOOP_THREAD]


def settled(mon: HealthMonitor) -> bool:
    return all(f.done() for f in mon._inflight.values())


def tasks_of(lp: asyncio.AbstractEventLoop) -> set[asyncio.Task[Any]]:
    """The tasks of a running loop other than the one asking (after letting it run)."""

    async def ask() -> set[asyncio.Task[Any]]:
        for _ in range(3):
            await asyncio.sleep(0)
        return asyncio.all_tasks() - {asyncio.current_task()}

    return asyncio.run_coroutine_threadsafe(ask(), lp).result(5.0)


# ---- detection ---------------------------------------------------------------------------


async def _async_fn(agent: Agent) -> str:
    return "healthy"


class _AsyncCallable:
    async def __call__(self, agent: Agent) -> str:
        return "healthy"

    async def method(self, agent: Agent) -> str:
        return "healthy"

    def sync_method(self, agent: Agent) -> str:
        return "healthy"


def test_what_counts_as_an_async_check() -> None:
    obj = _AsyncCallable()
    assert _is_async(_async_fn)
    assert _is_async(functools.partial(_async_fn))
    assert _is_async(functools.partial(functools.partial(obj)))
    assert _is_async(obj)
    assert _is_async(obj.method)
    assert not _is_async(obj.sync_method)
    assert not _is_async(lambda agent: "healthy")
    assert not _is_async(_AsyncCallable)  # a class: calling it makes an instance
    assert not _is_async(len)


# ---- async checks on the monitor's own loop ----------------------------------------------


def test_async_statuses_failures_and_bad_values(no_leaks: None) -> None:
    reg = Registry()
    for aid in ("ok", "deg", "sick", "boom", "bad", "none", "ki", "notaw"):
        reg.register(aid)
    threads: set[str] = set()

    async def check(agent: Agent) -> object:
        threads.add(threading.current_thread().name)
        await asyncio.sleep(0)
        aid = agent.agent_id
        if aid == "boom":
            raise RuntimeError("down")
        if aid == "ki":
            raise KeyboardInterrupt  # fails the check; the loop carries on
        return {"ok": "healthy", "deg": "degraded", "sick": "unhealthy", "bad": "fine"}.get(aid)

    mon = HealthMonitor(reg, check=check, timeout=5.0)
    mon.watch("notaw", lambda agent: 42)  # sync: its value is no awaitable, just bad
    try:
        expected = {
            "ok": "healthy",
            "deg": "degraded",
            "sick": "unhealthy",
            "boom": "unhealthy",
            "bad": "unhealthy",
            "none": "unhealthy",
            "ki": "unhealthy",
            "notaw": "unhealthy",
        }
        assert mon.check_now() == expected
        assert mon.check_now() == expected  # the loop survived the KeyboardInterrupt
        assert threads == {LOOP_THREAD}
        assert len(loop_threads()) == 1
    finally:
        mon.stop()
    assert loop_threads() == []


def test_every_kind_of_async_check_runs_on_the_loop(no_leaks: None) -> None:
    reg = Registry()
    for aid in ("fn", "partial", "callable", "method", "returns_coro", "returns_future"):
        reg.register(aid)
    seen: dict[str, str] = {}

    async def status(agent: Agent, value: str = "degraded") -> str:
        seen[agent.agent_id] = threading.current_thread().name
        await asyncio.sleep(0)
        return value

    class Checker:
        async def __call__(self, agent: Agent) -> str:
            return await status(agent)

        async def method(self, agent: Agent) -> str:
            return await status(agent)

    def returns_coro(agent: Agent) -> Any:
        return status(agent)  # sync-looking: its coroutine is awaited on the loop

    def returns_future(agent: Agent) -> Any:
        class Awaitable:
            def __await__(self) -> Any:
                return status(agent).__await__()

        return Awaitable()

    checker = Checker()
    mon = HealthMonitor(reg, check=status, timeout=5.0)
    mon.watch("partial", functools.partial(status, value="unhealthy"))
    mon.watch("callable", checker)
    mon.watch("method", checker.method)
    mon.watch("returns_coro", returns_coro)
    mon.watch("returns_future", returns_future)
    try:
        assert mon.check_now() == {
            "fn": "degraded",
            "partial": "unhealthy",
            "callable": "degraded",
            "method": "degraded",
            "returns_coro": "degraded",
            "returns_future": "degraded",
        }
        assert set(seen.values()) == {LOOP_THREAD}
    finally:
        mon.stop()


def test_async_checks_run_concurrently() -> None:
    """Each check waits until all have started: run one after another, the first would
    wait for ever (and the round end with all of them unresponsive)."""
    n = 50
    reg = Registry()
    for i in range(n):
        reg.register(f"a{i}")
    started = 0
    everyone: asyncio.Event | None = None

    async def check(agent: Agent) -> str:
        nonlocal started, everyone
        if everyone is None:
            everyone = asyncio.Event()
        started += 1
        if started == n:
            everyone.set()
        await everyone.wait()
        await asyncio.sleep(0.2)  # "slow": all of them together take one sleep
        return "healthy"

    mon = HealthMonitor(reg, check=check, timeout=10.0)
    try:
        t0 = time.monotonic()
        assert mon.check_now() == {f"a{i}": "healthy" for i in range(n)}
        assert time.monotonic() - t0 < 5.0  # one after another: at least 10 s
        assert started == n
    finally:
        mon.stop()


def test_async_timeout_is_unresponsive_and_cancels_the_task(no_leaks: None) -> None:
    reg, bus = Registry(), SignalBus()
    reg.register("slow")
    reg.register("fast")
    sub = bus.subscribe("agent.slow.health")
    calls: dict[str, int] = {"slow": 0, "fast": 0}
    cancelled = threading.Event()
    hang = {"on": True}

    async def check(agent: Agent) -> str:
        calls[agent.agent_id] += 1
        if agent.agent_id == "slow" and hang["on"]:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return "healthy"

    mon = HealthMonitor(reg, check=check, timeout=0.1, bus=bus)
    try:
        t0 = time.monotonic()
        assert mon.check_now() == {"slow": "unresponsive", "fast": "healthy"}
        assert time.monotonic() - t0 < 5.0
        assert cancelled.wait(5.0)
        assert sub.get(timeout=5.0).data == {
            "agent_id": "slow",
            "health": "unresponsive",
            "previous": "healthy",
        }
        # Cancelled, so checked again once its task has ended.
        assert wait_until(lambda: settled(mon))
        hang["on"] = False
        assert mon.check_now() == {"slow": "healthy", "fast": "healthy"}
        assert calls == {"slow": 2, "fast": 2}
    finally:
        mon.stop()
        sub.cancel()


def test_async_check_resisting_cancellation_is_not_resubmitted(
    release: threading.Event, no_leaks: None
) -> None:
    reg = Registry()
    reg.register("stubborn")
    calls = 0

    async def check(agent: Agent) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                while not release.is_set():  # keeps running after the cancellation
                    await asyncio.sleep(0.005)
        return "healthy"

    mon = HealthMonitor(reg, check=check, timeout=0.05)
    try:
        assert mon.check_now() == {"stubborn": "unresponsive"}
        assert mon.check_now() == {"stubborn": "unresponsive"}  # still running
        assert calls == 1
        release.set()
        assert wait_until(lambda: settled(mon))
        assert mon.check_now() == {"stubborn": "healthy"}
        assert calls == 2
    finally:
        mon.stop()


def test_sync_check_returning_a_hanging_coroutine_is_cancelled(no_leaks: None) -> None:
    reg = Registry()
    reg.register("a")
    cancelled = threading.Event()

    async def hang() -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "healthy"

    mon = HealthMonitor(reg, check=lambda agent: hang(), timeout=0.1)
    try:
        assert mon.check_now() == {"a": "unresponsive"}
        assert cancelled.wait(5.0)
        assert wait_until(lambda: settled(mon))
    finally:
        mon.stop()


def test_check_now_on_the_monitors_loop_raises_and_check_now_async_works(
    no_leaks: None,
) -> None:
    reg = Registry()
    reg.register("a")
    reg.register("b")
    errors: list[str] = []

    async def check(agent: Agent) -> str:
        if agent.agent_id == "a":
            try:
                mon.check_now()  # would wait for this very loop
            except RuntimeError as exc:
                errors.append(str(exc))
        return "healthy"

    mon = HealthMonitor(reg, check=check, timeout=5.0)
    try:
        assert mon.check_now() == {"a": "healthy", "b": "healthy"}
        assert errors == [
            "check_now() would block the monitor's event loop: use await check_now_async() there"
        ]

        async def from_another_loop() -> dict[str, str]:
            return await mon.check_now_async()

        assert asyncio.run(from_another_loop()) == {"a": "healthy", "b": "healthy"}
    finally:
        mon.stop()


def test_stop_and_restart_the_own_loop(no_leaks: None) -> None:
    reg = Registry()
    reg.register("a")
    before = threading.active_count()
    mon = HealthMonitor(reg, check=_async_fn, interval=0.01)
    assert loop_threads() == []  # started lazily
    with mon:
        assert wait_until(lambda: mon.rounds >= 2)
        assert len(loop_threads()) == 1
    assert loop_threads() == []  # nothing was running: stop() joined it
    assert threading.active_count() == before
    assert mon.check_now() == {"a": "healthy"}  # a new loop thread
    mon.stop()
    mon.stop()
    assert threading.active_count() == before


def test_stop_mid_round_leaves_no_pending_task(no_leaks: None) -> None:
    reg = Registry()
    for i in range(5):
        reg.register(f"a{i}")
    entered = threading.Event()
    cancelled: list[str] = []

    async def check(agent: Agent) -> str:
        entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(agent.agent_id)
            raise
        return "healthy"

    mon = HealthMonitor(reg, check=check, interval=60.0, timeout=0.2)
    mon.start()
    assert entered.wait(5.0)
    mon.stop()  # the round in progress ends at its deadline, cancelling every check
    assert wait_until(lambda: loop_threads() == [])
    assert sorted(cancelled) == [f"a{i}" for i in range(5)]
    assert settled(mon)
    assert {a.health for a in reg.find()} == {"unresponsive"}


# ---- a loop given to the monitor ---------------------------------------------------------


def test_given_loop_runs_the_checks(loop: asyncio.AbstractEventLoop, no_leaks: None) -> None:
    reg = Registry()
    reg.register("a")
    reg.register("b")
    seen: set[str] = set()

    async def check(agent: Agent) -> str:
        seen.add(threading.current_thread().name)
        assert asyncio.get_running_loop() is loop
        await asyncio.sleep(0.01)
        return "degraded"

    mon = HealthMonitor(reg, check=check, loop=loop, timeout=5.0)
    try:
        assert mon.check_now() == {"a": "degraded", "b": "degraded"}
        assert seen == {"test-loop"}
        assert loop_threads() == []  # no loop of its own

        async def on_that_loop() -> tuple[str, dict[str, str]]:
            try:
                mon.check_now()
            except RuntimeError as exc:
                error = str(exc)
            return error, await mon.check_now_async()

        error, result = asyncio.run_coroutine_threadsafe(on_that_loop(), loop).result(10.0)
        assert error.startswith("check_now() would block the monitor's event loop")
        assert result == {"a": "degraded", "b": "degraded"}
    finally:
        mon.stop()
    assert loop.is_running()  # stop() leaves a given loop alone
    assert tasks_of(loop) == set()


def test_given_loop_stop_cancels_checks_still_running(
    loop: asyncio.AbstractEventLoop, release: threading.Event, no_leaks: None
) -> None:
    reg = Registry()
    reg.register("stubborn")
    reg.register("plain")
    cancelled: list[str] = []

    async def check(agent: Agent) -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(agent.agent_id)
            if agent.agent_id == "stubborn":  # survives the round's cancellation once
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    cancelled.append("stubborn again")
            raise
        return "healthy"

    mon = HealthMonitor(reg, check=check, loop=loop, timeout=0.05)
    assert mon.check_now() == {"stubborn": "unresponsive", "plain": "unresponsive"}
    assert wait_until(lambda: len(cancelled) == 2)
    assert len(tasks_of(loop)) == 1  # the stubborn one
    mon.stop()  # cancels it again
    assert wait_until(lambda: settled(mon))
    assert sorted(cancelled) == ["plain", "stubborn", "stubborn again"]
    assert tasks_of(loop) == set()


def test_bad_loop_arguments() -> None:
    with pytest.raises(TypeError) as info:
        HealthMonitor(Registry(), loop=object())  # type: ignore[arg-type]
    assert str(info.value) == "loop must be an asyncio event loop or None, not 'object'"
    lp = asyncio.new_event_loop()
    lp.close()
    with pytest.raises(ValueError) as info2:
        HealthMonitor(Registry(), loop=lp)
    assert str(info2.value) == "loop is closed"


def test_given_loop_closed_later_makes_async_checks_unresponsive(no_leaks: None) -> None:
    reg = Registry()
    reg.register("a")
    lp = asyncio.new_event_loop()
    mon = HealthMonitor(reg, check=_async_fn, loop=lp, timeout=0.05)
    lp.close()
    assert mon.check_now() == {"a": "unresponsive"}
    mon.stop()


# ---- watch and unwatch -------------------------------------------------------------------


def test_mixed_sync_default_and_async_watch(no_leaks: None) -> None:
    reg, bus = Registry(), SignalBus()
    for aid in ("s1", "s2", "w"):
        reg.register(aid)
    sub = bus.subscribe("agent.*.health", maxsize=100)
    threads: dict[str, str] = {}

    def sync_check(agent: Agent) -> str:
        threads[agent.agent_id] = threading.current_thread().name
        return "healthy"

    async def watched(agent: Agent) -> str:
        threads[agent.agent_id] = threading.current_thread().name
        return "degraded"

    mon = HealthMonitor(reg, check=sync_check, bus=bus)
    try:
        mon.watch("w", watched)
        assert mon.check_now() == {"s1": "healthy", "s2": "healthy", "w": "degraded"}
        assert threads["w"] == LOOP_THREAD
        assert threads["s1"].startswith("ferrule-health-check")
        assert sub.get(timeout=5.0).data == {
            "agent_id": "w",
            "health": "degraded",
            "previous": "healthy",
        }
        # Replaced, then removed: the default check again.
        mon.watch("w", lambda agent: "unhealthy")
        assert mon.check_now()["w"] == "unhealthy"
        assert mon.unwatch("w") is True
        assert mon.unwatch("w") is False
        assert mon.check_now()["w"] == "healthy"
        assert mon.unwatch("never") is False
    finally:
        mon.stop()
        sub.cancel()


def test_watch_without_a_default_check() -> None:
    reg = Registry()
    reg.register("a", health="degraded")
    reg.register("b")
    mon = HealthMonitor(reg)
    mon.watch("b", lambda agent: "unhealthy")
    assert mon.check_now() == {"a": "degraded", "b": "unhealthy"}
    mon.stop()


def test_watch_timeout_is_per_agent(release: threading.Event, no_leaks: None) -> None:
    reg = Registry()
    reg.register("quick")
    reg.register("patient")
    cancelled = threading.Event()

    async def slow(agent: Agent) -> str:
        try:
            await asyncio.sleep(0.3)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "healthy"

    # The default timeout is too short for the slow check; the watch's is long enough.
    mon = HealthMonitor(reg, check=slow, timeout=0.05)
    mon.watch("patient", slow, timeout=10.0)
    try:
        assert mon.check_now() == {"quick": "unresponsive", "patient": "healthy"}
        # "quick" was cancelled at its own deadline, not held to the longest one.
        assert cancelled.is_set()
        mon.watch("quick", lambda agent: release.wait(30.0) and "healthy", timeout=0.05)
        mon.unwatch("patient")
        assert wait_until(lambda: settled(mon))
        t0 = time.monotonic()
        assert mon.check_now() == {"quick": "unresponsive", "patient": "unresponsive"}
        assert time.monotonic() - t0 < 5.0
    finally:
        release.set()
        mon.stop()


def test_watch_interval_counts_on_the_monitors_clock() -> None:
    clock = ManualClock()
    reg = Registry(clock=clock)
    reg.register("often")
    reg.register("rarely")
    calls = {"often": 0, "rarely": 0}
    result = {"rarely": "degraded"}

    def count(agent: Agent) -> str:
        calls[agent.agent_id] += 1
        return result.get(agent.agent_id, "healthy")

    # Round interval 4: a watch interval of 10 is due on the round nearest 10 s later,
    # i.e. once at least 10 - 4/2 = 8 s have passed.
    mon = HealthMonitor(reg, interval=4.0, check=count, clock=clock)
    mon.watch("rarely", count, interval=10.0)
    try:
        assert mon.check_now() == {"often": "healthy", "rarely": "degraded"}
        result["rarely"] = "unhealthy"
        clock.advance(4.0)
        # Not due: left as it is (the registry's health, no transition).
        assert mon.check_now() == {"often": "healthy", "rarely": "degraded"}
        clock.advance(3.9)
        assert mon.check_now()["rarely"] == "degraded"
        clock.advance(0.1)  # 8 s since it was checked
        assert mon.check_now()["rarely"] == "unhealthy"
        assert calls == {"often": 4, "rarely": 2}
        clock.advance(7.99)
        mon.check_now()
        assert calls["rarely"] == 2
        # A new watch is due at once.
        mon.watch("rarely", count, interval=10.0)
        mon.check_now()
        assert calls["rarely"] == 3
    finally:
        mon.stop()


def test_watch_of_a_vanished_agent_is_reclaimed() -> None:
    reg = Registry()
    reg.register("a")
    reg.register("b")
    mon = HealthMonitor(reg)
    mon.watch("a", lambda agent: "degraded")
    mon.watch("b", lambda agent: "degraded")
    assert mon.check_now() == {"a": "degraded", "b": "degraded"}
    reg.unregister("a")
    assert set(mon._watches) == {"a", "b"}
    # The round that finds it gone drops its watch.
    assert mon.check_now() == {"a": "gone", "b": "degraded"}
    assert set(mon._watches) == {"b"}
    assert mon.unwatch("a") is False
    # Churn: watches never outgrow the registry.
    for i in range(500):
        reg.register(f"c{i}")
        mon.watch(f"c{i}", lambda agent: "healthy")
        reg.unregister(f"c{i}")
    mon.check_now()
    assert set(mon._watches) == {"b"}
    mon.stop()


def test_watch_made_during_a_round_for_a_new_agent_survives_it(release: threading.Event) -> None:
    reg = Registry()
    reg.register("slow")
    entered = threading.Event()

    def check(agent: Agent) -> str:
        entered.set()
        release.wait(30.0)
        return "healthy"

    mon = HealthMonitor(reg, check=check, timeout=10.0)
    round_ = threading.Thread(target=mon.check_now)
    round_.start()
    try:
        assert entered.wait(5.0)
        reg.register("late")  # after the round listed the agents
        mon.watch("late", lambda agent: "degraded")
        release.set()
        round_.join(10.0)
        assert "late" in mon._watches
        assert mon.check_now()["late"] == "degraded"
    finally:
        release.set()
        round_.join(10.0)
        mon.stop()


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "msg"),
    [
        ((1, _async_fn), {}, TypeError, "agent_id must be a str, not 'int'"),
        (("a", None), {}, TypeError, "check must be callable, not 'NoneType'"),
        (("a", "healthy"), {}, TypeError, "check must be callable, not 'str'"),
        (("a", _async_fn), {"interval": 0}, ValueError, "interval must be > 0 and finite"),
        (("a", _async_fn), {"interval": "1"}, TypeError, "interval must be a number, not 'str'"),
        (("a", _async_fn), {"interval": 1e300}, ValueError, "interval is too large"),
        (("a", _async_fn), {"timeout": -1.0}, ValueError, "timeout must be > 0 and finite"),
        (("a", _async_fn), {"timeout": True}, TypeError, "timeout must be a number, not 'bool'"),
        (("a", _async_fn), {"timeout": float("nan")}, ValueError, "timeout must be > 0 and finite"),
        (("missing", _async_fn), {}, KeyError, "'missing'"),
    ],
)
def test_watch_bad_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], exc: type[Exception], msg: str
) -> None:
    reg = Registry()
    reg.register("a")
    mon = HealthMonitor(reg)
    with pytest.raises(exc) as info:
        mon.watch(*args, **kwargs)
    assert str(info.value) == msg
    assert mon._watches == {}
    with pytest.raises(TypeError) as info2:
        mon.unwatch(None)  # type: ignore[arg-type]
    assert str(info2.value) == "agent_id must be a str, not 'NoneType'"


# ---- ownership ---------------------------------------------------------------------------


class Canary:
    """Something whose collection a weak reference can observe."""


async def _hang(agent: Agent) -> str:
    await asyncio.sleep(3600)  # cancelled at each round's deadline
    return "healthy"


def test_monitor_with_an_async_bound_method_check_is_collected(no_leaks: None) -> None:
    """`self.monitor = HealthMonitor(reg, check=self.check)` with an `async def check`,
    started and dropped without stop(): neither the monitor thread nor the loop thread
    keeps it alive, and both end."""
    reg = Registry()
    reg.register("a1")
    reg.register("a2")
    before = {t.ident for t in threading.enumerate()}

    class Service:
        def __init__(self) -> None:
            self.canary = Canary()
            self.checked = threading.Event()
            # Rounds (at most `timeout`) shorter than `interval`: the monitor thread holds
            # the monitor only during a round, so there are gaps to collect in (with
            # rounds back to back, a loaded machine may never give one).
            self.monitor = HealthMonitor(reg, interval=0.2, check=self.check, timeout=0.05)
            # Not a method: a check still running keeps its own object alive (as a hanging
            # sync check does), so a hanging method would hold the service between rounds.
            self.monitor.watch("a2", _hang)
            self.monitor.start()

        async def check(self, agent: Agent) -> str:
            self.checked.set()
            return "healthy"

    s = Service()
    assert s.checked.wait(5.0)
    gone = weakref.ref(s.canary)
    del s
    deadline = time.monotonic() + 5.0
    while gone() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert gone() is None
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.ident not in before])
    assert [t.name for t in threading.enumerate() if t.ident not in before] == []


def test_monitor_with_a_given_loop_is_collected_and_its_tasks_cancelled(
    loop: asyncio.AbstractEventLoop, no_leaks: None
) -> None:
    """A task still running holds its check, and a check's object, alive (as a hanging
    sync check does); once the monitor is collected, its tasks still running on the
    given loop are cancelled."""
    reg = Registry()
    reg.register("a")
    reg.register("b")
    cancelled: list[str] = []

    async def stubborn(agent: Agent) -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # resists the round's cancellation once
            cancelled.append("round")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append("collected")
                raise
        return "healthy"

    class Service:
        def __init__(self) -> None:
            self.canary = Canary()
            self.monitor = HealthMonitor(reg, check=self.check, loop=loop, timeout=0.05)
            self.monitor.watch("b", stubborn)

        async def check(self, agent: Agent) -> str:
            return "healthy"

    s = Service()
    assert s.monitor.check_now() == {"a": "healthy", "b": "unresponsive"}
    assert wait_until(lambda: cancelled == ["round"])
    gone = weakref.ref(s.canary)
    del s
    deadline = time.monotonic() + 5.0
    while gone() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert gone() is None
    assert wait_until(lambda: cancelled == ["round", "collected"])
    assert tasks_of(loop) == set()
