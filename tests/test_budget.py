"""ResourceManager and Lease: budgets, ttl expiry, pressure events, re-entrance, asyncio,
bad input."""

from __future__ import annotations

import _thread
import asyncio
import gc
import sys
import threading
import time
import weakref
from typing import Any

import ferrule
import pytest
from ferrule import Lease, ManualClock, PoolTimeout, ResourceManager

from tests.conftest import FREE_THREADED


class FakeBus:
    """The part of SignalBus a ResourceManager uses: publish(type, data)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def publish(self, signal_type: str, data: Any = None) -> int:
        with self.lock:
            self.events.append((signal_type, data))
        return 1

    def changes(self, name: str) -> list[tuple[str, str]]:
        return [
            (d["previous"], d["pressure"])
            for t, d in self.events
            if t == f"resource.{name}.pressure"
        ]


# ---- basics ----------------------------------------------------------------------------


@pytest.mark.smoke
def test_acquire_release_and_usage() -> None:
    rm = ResourceManager({"cpu": 10, "mem": 4})
    assert rm.limits == {"cpu": 10, "mem": 4}
    lease = rm.acquire("cpu", 3)
    assert isinstance(lease, Lease)
    assert (lease.name, lease.amount, lease.released, lease.expires_at) == ("cpu", 3, False, None)
    u = rm.usage()
    assert list(u) == ["cpu", "mem"]
    assert (u["cpu"].used, u["cpu"].limit, u["cpu"].pressure) == (3, 10, "normal")
    assert repr(u["cpu"]) == "Usage(used=3, limit=10, pressure='normal')"
    assert repr(rm) == "ResourceManager({'cpu': 3/10, 'mem': 0/4})"
    lease.release()
    lease.release()  # idempotent
    assert lease.released
    assert rm.usage()["cpu"].used == 0
    assert repr(lease) == "Lease(name='cpu', amount=3, released=True)"


def test_default_amount_is_one_and_context_manager_releases() -> None:
    rm = ResourceManager({"slots": 2})
    with rm.acquire("slots") as a, rm.acquire("slots") as b:
        assert (a.amount, b.amount) == (1, 1)
        assert rm.try_acquire("slots") is None
    assert rm.usage()["slots"].used == 0


def test_release_on_exception_in_with_block() -> None:
    rm = ResourceManager({"x": 1})
    with pytest.raises(KeyError), rm.acquire("x"):
        raise KeyError("boom")
    assert rm.usage()["x"].used == 0


def test_try_acquire_respects_the_limit() -> None:
    rm = ResourceManager({"x": 5})
    a = rm.try_acquire("x", 4)
    assert a is not None
    assert rm.try_acquire("x", 2) is None
    b = rm.try_acquire("x", 1)
    assert b is not None
    assert rm.usage()["x"].used == 5
    a.release()
    b.release()
    assert rm.usage()["x"].used == 0


def test_collected_lease_is_released() -> None:
    rm = ResourceManager({"x": 3})
    rm.acquire("x", 3)  # dropped at once
    gc.collect()
    assert rm.usage()["x"].used == 0
    lease = rm.acquire("x", 2)
    del lease
    gc.collect()
    assert rm.usage()["x"].used == 0


def test_acquire_times_out_with_pool_timeout() -> None:
    rm = ResourceManager({"x": 2})
    held = rm.acquire("x", 2)
    t0 = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"no room for 1 of 'x' within 0.05 s") as ei:
        rm.acquire("x", timeout=0.05)
    assert time.monotonic() - t0 >= 0.04
    assert isinstance(ei.value, TimeoutError)
    assert isinstance(ei.value, ferrule.FerruleError)
    with pytest.raises(PoolTimeout):
        rm.acquire("x", timeout=0)
    held.release()
    assert rm.acquire("x", 2, timeout=0).amount == 2


@pytest.mark.smoke
def test_blocked_acquire_wakes_on_release() -> None:
    rm = ResourceManager({"x": 1})
    held = rm.acquire("x")
    got: list[Lease] = []
    t = threading.Thread(target=lambda: got.append(rm.acquire("x", timeout=10)))
    t.start()
    time.sleep(0.02)
    assert not got
    held.release()
    t.join(5)
    assert got and not got[0].released
    got[0].release()


# ---- ttl ---------------------------------------------------------------------------------


def test_ttl_lease_is_reclaimed_at_its_deadline() -> None:
    clock = ManualClock(100.0)
    rm = ResourceManager({"x": 5}, clock=clock)
    lease = rm.acquire("x", 4, ttl=2.0)
    other = rm.acquire("x", 1)
    assert lease.expires_at == 102.0
    clock.advance(1.999)
    assert rm.usage()["x"].used == 5
    clock.advance(0.001)  # live while now < t + ttl
    assert rm.usage()["x"].used == 1
    assert lease.released
    lease.release()  # already reclaimed: gives nothing back twice
    assert rm.usage()["x"].used == 1
    assert not other.released
    other.release()
    assert rm.usage()["x"].used == 0


def test_expiry_is_reclaimed_lazily_on_acquire() -> None:
    clock = ManualClock()
    rm = ResourceManager({"x": 1}, clock=clock)
    rm_lease = rm.acquire("x", ttl=1.0)
    assert rm.try_acquire("x") is None
    clock.advance(1.0)
    fresh = rm.try_acquire("x")
    assert fresh is not None
    assert rm_lease.released
    fresh.release()


def test_waiter_is_served_when_a_lease_expires_by_manual_clock() -> None:
    clock = ManualClock()
    rm = ResourceManager({"x": 1}, clock=clock)
    held = rm.acquire("x", ttl=5.0)
    got: list[Lease] = []
    t = threading.Thread(target=lambda: got.append(rm.acquire("x", timeout=10)))
    t.start()
    time.sleep(0.02)
    clock.advance(5.0)
    t.join(5)
    assert got and held.released
    got[0].release()


def test_waiter_is_served_when_a_lease_expires_in_real_time() -> None:
    rm = ResourceManager({"x": 1})
    held = rm.acquire("x", ttl=0.05)
    t0 = time.monotonic()
    lease = rm.acquire("x", timeout=5)
    assert time.monotonic() - t0 < 2.0
    assert held.released
    lease.release()


# ---- pressure ----------------------------------------------------------------------------


def test_pressure_levels_and_thresholds() -> None:
    rm = ResourceManager({"x": 20}, alert_threshold=0.5, severe_threshold=0.75)
    assert rm.pressure("x") == "normal"
    a = rm.acquire("x", 9)
    assert rm.pressure("x") == "normal"
    b = rm.acquire("x", 1)  # 10/20 = 0.5
    assert rm.pressure("x") == "moderate"
    c = rm.acquire("x", 5)  # 15/20 = 0.75
    assert rm.pressure("x") == "severe"
    assert rm.usage()["x"].pressure == "severe"
    for lease in (a, b, c):
        lease.release()
    assert rm.pressure("x") == "normal"


def test_each_pressure_change_is_published_once() -> None:
    bus = FakeBus()
    rm = ResourceManager({"cpu": 100}, bus=bus)
    a = rm.acquire("cpu", 89)
    assert bus.events == []
    b = rm.acquire("cpu", 1)  # 90: moderate
    c = rm.acquire("cpu", 3)  # 93: still moderate
    d = rm.acquire("cpu", 2)  # 95: severe
    d.release()  # 93: moderate
    c.release()
    b.release()  # 89: normal
    a.release()
    assert bus.changes("cpu") == [
        ("normal", "moderate"),
        ("moderate", "severe"),
        ("severe", "moderate"),
        ("moderate", "normal"),
    ]
    t, data = bus.events[1]
    assert t == "resource.cpu.pressure"
    assert data == {
        "name": "cpu",
        "pressure": "severe",
        "previous": "moderate",
        "used": 95,
        "limit": 100,
    }


def test_expiry_publishes_the_pressure_change() -> None:
    clock = ManualClock()
    bus = FakeBus()
    rm = ResourceManager({"x": 10}, bus=bus, clock=clock)
    held = rm.acquire("x", 10, ttl=1.0)
    clock.advance(1.0)
    assert rm.pressure("x") == "normal"
    assert held.released
    assert bus.changes("x") == [("normal", "severe"), ("severe", "normal")]


def test_collected_lease_change_is_published_by_the_next_operation() -> None:
    bus = FakeBus()
    rm = ResourceManager({"x": 10}, bus=bus)
    rm.acquire("x", 10)  # severe, then collected at once: no Python runs in its destructor
    assert bus.changes("x") == [("normal", "severe")]
    assert rm.usage()["x"].used == 0  # the next operation publishes the change
    assert bus.changes("x") == [("normal", "severe"), ("severe", "normal")]
    rm.pressure("x")
    assert len(bus.events) == 2


def test_reentrant_subscriber_calls_back_into_the_manager() -> None:
    class ReentrantBus:
        def __init__(self) -> None:
            self.rm: ResourceManager | None = None
            self.events: list[dict[str, Any]] = []
            self.seen_used: list[int] = []
            self.shed: list[Lease] = []

        def publish(self, signal_type: str, data: dict[str, Any]) -> int:
            assert self.rm is not None
            self.events.append(data)
            self.seen_used.append(self.rm.usage()[data["name"]].used)
            if data["name"] == "x" and data["pressure"] == "severe":
                # Shed load from inside the handler: take and give back another budget,
                # and release a lease of this one.
                with self.rm.acquire("other", timeout=1):
                    pass
                self.shed.pop().release()
            return 1

    bus = ReentrantBus()
    rm = ResourceManager({"x": 10, "other": 1}, bus=bus)
    bus.rm = rm
    base = rm.acquire("x", 8)
    bus.shed.append(rm.acquire("x", 1))  # 9/10: moderate
    tip = rm.acquire("x", 1)  # 10/10: severe; the handler sheds one -> moderate
    assert rm.usage()["x"].used == 9
    assert [(e["previous"], e["pressure"]) for e in bus.events if e["name"] == "x"] == [
        ("normal", "moderate"),
        ("moderate", "severe"),
        ("severe", "moderate"),
    ]
    assert [(e["previous"], e["pressure"]) for e in bus.events if e["name"] == "other"] == [
        ("normal", "severe"),
        ("severe", "normal"),
    ]
    assert bus.seen_used[0] == 9
    base.release()
    tip.release()
    assert bus.events[-1]["pressure"] == "normal"
    assert rm.usage()["x"].used == 0


def test_failing_bus_does_not_break_acquire(monkeypatch: pytest.MonkeyPatch) -> None:
    class BadBus:
        def publish(self, signal_type: str, data: Any) -> int:
            raise RuntimeError("bus down")

    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    rm = ResourceManager({"x": 1}, bus=BadBus())
    lease = rm.acquire("x")
    assert rm.usage()["x"].used == 1
    lease.release()
    assert rm.usage()["x"].used == 0
    assert [str(r.exc_value) for r in reported] == ["bus down", "bus down"]


# ---- asyncio -------------------------------------------------------------------------------


def test_acquire_async_waits_without_a_thread() -> None:
    rm = ResourceManager({"x": 2})

    async def main() -> list[int]:
        order: list[int] = []
        active = 0
        peak = 0

        async def worker(i: int) -> None:
            nonlocal active, peak
            with await rm.acquire_async("x") as lease:
                assert lease.amount == 1
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.005)
                active -= 1
                order.append(i)

        before = threading.active_count()
        await asyncio.gather(*(worker(i) for i in range(10)))
        assert threading.active_count() == before
        assert peak == 2
        return order

    assert sorted(asyncio.run(main())) == list(range(10))
    assert rm.usage()["x"].used == 0


def test_acquire_async_timeout_and_bad_input() -> None:
    rm = ResourceManager({"x": 1})

    async def main() -> None:
        held = await rm.acquire_async("x")
        with pytest.raises(PoolTimeout, match=r"no room for 1 of 'x' within 0\.05 s"):
            await rm.acquire_async("x", timeout=0.05)
        with pytest.raises(ValueError, match="amount must be >= 1"):
            await rm.acquire_async("x", 0)
        task = asyncio.ensure_future(rm.acquire_async("x", timeout=5))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held.release()
        again = await rm.acquire_async("x", timeout=1)
        again.release()

    asyncio.run(main())
    assert rm.usage()["x"].used == 0


def test_acquire_async_reclaims_expired_leases() -> None:
    clock = ManualClock()
    rm = ResourceManager({"x": 1}, clock=clock)

    async def main() -> None:
        held = await rm.acquire_async("x", ttl=1.0)
        waiter = asyncio.ensure_future(rm.acquire_async("x", timeout=5))
        await asyncio.sleep(0.01)
        clock.advance(1.0)
        lease = await waiter
        assert held.released and not lease.released
        lease.release()

    asyncio.run(main())


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "msg"),
    [
        (([("x", 1)],), {}, TypeError, "limits must be a dict of str to int, not 'list'"),
        (({1: 1},), {}, TypeError, "limits keys must be str, not 'int'"),
        (({"x": 0},), {}, ValueError, r"limits\['x'\] must be >= 1"),
        (({"x": -3},), {}, ValueError, r"limits\['x'\] must be >= 1"),
        (({"x": 1.5},), {}, TypeError, r"limits\['x'\] must be an int, not 'float'"),
        (({"x": 1},), {"alert_threshold": 0}, ValueError, "alert_threshold must be > 0 and <= 1"),
        (({"x": 1},), {"alert_threshold": 1.5}, ValueError, "alert_threshold must be > 0"),
        (
            ({"x": 1},),
            {"alert_threshold": 0.9, "severe_threshold": 0.8},
            ValueError,
            "severe_threshold must be >= alert_threshold and <= 1",
        ),
        (({"x": 1},), {"alert_threshold": "hi"}, TypeError, "alert_threshold must be a number"),
        (({"x": 1},), {"bus": object()}, TypeError, "bus must be an object with a publish"),
        (({"x": 1},), {"clock": 1}, TypeError, "clock must be a ferrule.ManualClock or None"),
    ],
)
def test_bad_constructor_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], exc: type, msg: str
) -> None:
    with pytest.raises(exc, match=msg):
        ResourceManager(*args, **kwargs)


def test_bad_call_arguments() -> None:
    rm = ResourceManager({"x": 3})
    with pytest.raises(ValueError, match="name 'y' is not a configured resource"):
        rm.acquire("y")
    with pytest.raises(ValueError, match="name 'y' is not a configured resource"):
        rm.try_acquire("y")
    with pytest.raises(ValueError, match="name 'y' is not a configured resource"):
        rm.pressure("y")
    with pytest.raises(TypeError, match="name must be a str, not 'int'"):
        rm.acquire(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"amount must be <= the limit of 'x' \(3\)"):
        rm.acquire("x", 4)
    with pytest.raises(ValueError, match="amount must be >= 1"):
        rm.try_acquire("x", 0)
    with pytest.raises(ValueError, match="amount must be >= 1"):
        rm.acquire("x", -1)
    with pytest.raises(TypeError, match="amount must be an int, not 'float'"):
        rm.acquire("x", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl must be > 0"):
        rm.acquire("x", ttl=0)
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        rm.acquire("x", timeout=-1)
    with pytest.raises(TypeError, match="timeout must be a number of seconds, not 'str'"):
        rm.acquire("x", timeout="1")  # type: ignore[arg-type]
    assert rm.usage()["x"].used == 0


def test_cycle_through_the_bus_is_collected() -> None:
    class Subscriber:
        def __init__(self) -> None:
            self.rm: ResourceManager | None = None

        def publish(self, signal_type: str, data: Any) -> int:
            return 1

    bus = Subscriber()
    rm = ResourceManager({"x": 1}, bus=bus)
    bus.rm = rm  # rm -> bus -> rm
    lease = rm.acquire("x")
    gone = weakref.ref(bus)
    del bus, rm
    gc.collect()
    assert gone() is not None  # the lease keeps its manager, and so the bus, alive
    lease.release()
    del lease
    gc.collect()
    assert gone() is None


def test_blocked_acquire_is_interruptible() -> None:
    rm = ResourceManager({"x": 1})
    held = rm.acquire("x")
    timer = threading.Timer(0.1, _thread.interrupt_main)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        rm.acquire("x", timeout=10)
    assert time.monotonic() - t0 < 0.5
    timer.join()
    held.release()
    assert rm.usage()["x"].used == 0


# ---- numbers out of range ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        # Not representable (an int beyond i64, or beyond a float): OverflowError naming
        # the argument; representable but not allowed: ValueError naming it.
        ({"alert_threshold": 10**400}, OverflowError, "alert_threshold is out of range"),
        ({"severe_threshold": -(10**400)}, OverflowError, "severe_threshold is out of range"),
        ({"alert_threshold": 2**70}, ValueError, "alert_threshold must be > 0 and <= 1"),
        ({"alert_threshold": float("nan")}, ValueError, "alert_threshold must be > 0"),
        ({"alert_threshold": float("inf")}, ValueError, "alert_threshold must be > 0"),
    ],
)
def test_out_of_range_thresholds(kwargs: dict[str, Any], exc: type, msg: str) -> None:
    """A threshold too large for a float raised TypeError ("must be a float"): every
    conversion error was reported as a wrong type."""
    with pytest.raises(exc, match=msg):
        ResourceManager({"x": 1}, **kwargs)


def test_out_of_range_ints_and_durations() -> None:
    """Ints beyond i64 are OverflowError naming the argument (they were ValueError)."""
    with pytest.raises(OverflowError, match=r"limits\['x'\] is out of range"):
        ResourceManager({"x": 2**70})
    rm = ResourceManager({"x": 2**63 - 1})
    with pytest.raises(OverflowError, match="amount is out of range"):
        rm.acquire("x", 2**64)
    with pytest.raises(OverflowError, match="amount is out of range"):
        rm.try_acquire("x", -(2**64))
    with pytest.raises(OverflowError, match="ttl is out of range"):
        rm.acquire("x", ttl=10**400)
    with pytest.raises(ValueError, match="ttl is too large"):
        rm.acquire("x", ttl=1e300)
    with pytest.raises(ValueError, match="timeout is too large"):
        rm.acquire("x", timeout=2**70)
    with rm.acquire("x", 2**63 - 1) as lease:
        assert rm.usage()["x"].pressure == "severe"
        assert lease.amount == 2**63 - 1
    assert rm.usage()["x"].used == 0


def test_ttl_leases_near_the_clocks_largest_time() -> None:
    """The largest clock reading (2**62 ns) plus the longest ttl stays representable:
    nothing wraps or panics, and such a lease still expires on time."""
    clock = ManualClock(4e9)
    clock.advance((2**62 - 4 * 10**18) / 1e9 - 1.0)
    rm = ResourceManager({"x": 2}, clock=clock)
    long = rm.acquire("x", ttl=4e9)
    short = rm.acquire("x", ttl=0.5)
    assert long.expires_at is not None and long.expires_at > clock.now()
    clock.advance(0.5)
    assert short.released and not long.released
    assert rm.usage()["x"].used == 1
    with pytest.raises(OverflowError):
        clock.advance(4e9)


# ---- garbage collection -------------------------------------------------------------------


class Canary:
    """Something whose collection a weak reference can observe."""


def test_cycle_through_the_bus_and_a_held_lease_is_collected() -> None:
    """`self.rm = ResourceManager(bus=self)` with `self.lease = self.rm.acquire(...)`:
    while a lease held the budget neither the manager nor the lease showed the bus to
    the collector, so the service leaked as long as it held a lease."""

    class Service:
        def __init__(self) -> None:
            self.canary = Canary()
            self.events: list[str] = []
            self.rm = ResourceManager({"x": 2}, bus=self)
            self.lease = self.rm.acquire("x", 2)

        def publish(self, signal_type: str, data: Any) -> int:
            self.events.append(data["pressure"])
            return 1

    s = Service()
    assert s.events == ["severe"]
    gone = weakref.ref(s.canary)
    del s
    gc.collect()
    assert gone() is None


def test_cycle_through_a_lease_that_outlived_its_manager_is_collected() -> None:
    """A lease keeps a reference to the bus; once the manager is gone it was the only
    holder, and it did not take part in garbage collection."""

    class Bus:
        def __init__(self) -> None:
            self.canary = Canary()
            self.lease: Lease | None = None

        def publish(self, signal_type: str, data: Any) -> int:
            return 1

    bus = Bus()
    rm = ResourceManager({"x": 1}, bus=bus)
    bus.lease = rm.acquire("x")  # bus -> lease -> bus
    del rm
    gone = weakref.ref(bus.canary)
    del bus
    gc.collect()
    assert gone() is None


def test_waker_cycle_is_collected_and_traverse_shows_the_bus() -> None:
    """An asyncio wake-up callback registered and never removed (a coroutine that was
    dropped) that refers back to the manager's holder."""

    class Holder:
        pass

    def leak() -> weakref.ref[Canary]:
        h = Holder()
        h.canary = Canary()  # type: ignore[attr-defined]
        h.rm = ResourceManager({"x": 1})  # type: ignore[attr-defined]
        h.rm._add_waker("x", lambda: h)  # type: ignore[attr-defined]
        return weakref.ref(h.canary)  # type: ignore[attr-defined]

    gone = leak()
    gc.collect()
    assert gone() is None
    bus = FakeBus()
    rm = ResourceManager({"x": 1}, bus=bus)
    assert bus in gc.get_referents(rm)
    lease = rm.acquire("x")
    assert bus in gc.get_referents(lease)
    assert gc.get_referents(ResourceManager({"x": 1}).acquire("x")) == []


def test_add_waker_refuses_what_it_cannot_call() -> None:
    """A non-callable waker was accepted and failed only at the next release."""
    rm = ResourceManager({"x": 1})
    with pytest.raises(TypeError, match="callback must be callable, not 'int'"):
        rm._add_waker("x", 3)
    with pytest.raises(OverflowError):
        rm._remove_waker("x", -1)
    rm._remove_waker("x", 12345)  # unknown token: nothing to do


@pytest.mark.skipif(not FREE_THREADED, reason="needs free-threading to mutate concurrently")
def test_limits_mutated_by_another_thread_during_construction(threads: int) -> None:
    """The constructor iterated the caller's dict; on a free-threaded build another thread
    could resize it meanwhile, and PyO3's dict iterator then panics."""
    limits = {f"k{i}": 1 + i for i in range(64)}
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            limits[f"extra{n % 16}"] = 1
            limits.pop(f"extra{(n + 8) % 16}", None)
            n += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(2000):
            rm = ResourceManager(limits)
            assert len(rm.limits) >= 64
    finally:
        stop.set()
        t.join()


# ---- exit safety: user code reached from a manager ---------------------------------------


def test_daemon_thread_inside_a_bus_publish_at_exit() -> None:
    """A pressure change was published with a direct call of `bus.publish`, not through
    `wait::call`: a daemon thread sleeping in it at interpreter exit aborted the
    process ("FATAL: exception not rethrown")."""
    from tests.test_exit import run

    proc = run(
        """
        class SlowBus:
            def publish(self, signal_type, data):
                time.sleep(0.002)
        rm = ferrule.ResourceManager({"x": 1}, bus=SlowBus())
        def churn():
            with rm.acquire("x", timeout=1):
                pass
        daemon(forever(churn), 4)
        """
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    for marker in ("FATAL", "Fatal Python error", "panicked", "PanicException"):
        assert marker not in proc.stderr, proc.stderr[-2000:]
