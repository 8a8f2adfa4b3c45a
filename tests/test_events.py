"""Events (``bus=``) of every part, and ``ferrule.events``: what is published when, that
nothing is published per operation, ``begin``/``end`` pairing, a raising bus, a handler
that calls back into its part, and the logging bridge. (Garbage collection of a part
holding its bus: tests/test_gc.py; a handler at interpreter exit: tests/test_exit.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import ferrule
import pytest
from ferrule import events
from ferrule._native import TaskCounters


class Bus:
    """Records what is published, in order (thread-safe)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def publish(self, signal_type: str, data: Any = None) -> int:
        with self.lock:
            self.got.append((signal_type, data))
        return 1

    def topics(self) -> list[str]:
        return [t for t, _ in self.got]


class BadBus:
    def publish(self, signal_type: str, data: Any = None) -> None:
        raise OSError("bus down")


# The clock is read by the first count after a publish, then once per STRIDE operations
# (src/py/events.rs, `Tally`): a burst's tail is published within STRIDE operations
# after the interval.
STRIDE = 64


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    caught: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", caught.append)
    return caught


# ---- arguments -----------------------------------------------------------------------


PARTS: dict[str, Callable[..., object]] = {
    "Cache": lambda **kw: ferrule.Cache(4, **kw),
    "WorkQueue": lambda **kw: ferrule.WorkQueue(4, **kw),
    "RateLimiter": lambda **kw: ferrule.RateLimiter(1, **kw),
    "RateLimiter.parse": lambda **kw: ferrule.RateLimiter.parse("1/second", **kw),
    "Pool": lambda **kw: ferrule.Pool(object, max_size=1, **kw),
    "ErrorStore": lambda **kw: ferrule.ErrorStore(**kw),
    "TaskCounters": lambda **kw: TaskCounters(4, **kw),
}


@pytest.mark.parametrize("part", sorted(PARTS))
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"bus": Bus()}, ValueError, "name is required when bus is given"),
        ({"bus": object(), "name": "x"}, TypeError, "bus must be an object with a publish"),
        ({"name": ""}, ValueError, "name must not be empty"),
        ({"name": 3}, TypeError, "name must be a str or None, not 'int'"),
    ],
)
def test_bad_bus_and_name_arguments(
    part: str, kwargs: dict[str, Any], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        PARTS[part](**kwargs)


@pytest.mark.parametrize("part", sorted(PARTS))
def test_name_is_kept_and_no_bus_is_the_default(part: str) -> None:
    obj = PARTS[part](name="svc")
    if part != "TaskCounters":
        assert obj.name == "svc"  # type: ignore[attr-defined]
        assert PARTS[part]().name is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("make", [PARTS["Cache"], PARTS["RateLimiter"]])
@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        (0, ValueError, "event_interval must be > 0"),
        ("1", TypeError, "event_interval must be a number of seconds"),
    ],
)
def test_bad_event_interval(
    make: Callable[..., object], value: object, exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        make(event_interval=value)


def test_bad_deny_threshold() -> None:
    with pytest.raises(ValueError, match="deny_threshold must be >= 1"):
        ferrule.RateLimiter(1, deny_threshold=0)
    with pytest.raises(TypeError, match="deny_threshold must be an int"):
        ferrule.RateLimiter(1, deny_threshold=1.5)


# ---- Cache -----------------------------------------------------------------------------


def test_cache_ten_thousand_evictions_in_one_interval_make_one_signal() -> None:
    bus, clock = Bus(), ferrule.ManualClock()
    c = ferrule.Cache(2, name="s", bus=bus, clock=clock)
    for i in range(10_002):
        c[i] = i
    assert bus.got == [("cache.s.evicting", {"evicted": 1, "size": 2, "max_size": 2})]
    clock.advance(1.0)
    for _ in range(STRIDE):  # writes (replacing: no eviction) after the interval
        c[10_001] = 0
    assert bus.got[1] == ("cache.s.evicting", {"evicted": 9_999, "size": 2, "max_size": 2})
    clock.advance(5.0)
    for _ in range(STRIDE):
        c[10_001] = 0  # nothing pending, nothing published
    assert len(bus.got) == 2


def test_cache_publishes_only_evictions_by_size() -> None:
    bus, clock = Bus(), ferrule.ManualClock()
    c = ferrule.Cache(4, ttl=1.0, name="s", bus=bus, clock=clock)
    for i in range(4):
        c[i] = i
    c[0] = "again"
    del c[1]
    clock.advance(2.0)
    assert c.expire() == 3
    c.clear()
    assert bus.got == []


def test_cache_counts_evictions_by_weight() -> None:
    bus = Bus()
    c = ferrule.Cache(10, weigher=lambda k, v: v, name="w", bus=bus)
    c["a"], c["b"] = 4, 4
    c["big"] = 9  # pushes out a and b
    assert bus.got == [("cache.w.evicting", {"evicted": 2, "size": 1, "max_size": 10})]


def test_cache_handler_may_write_into_the_cache() -> None:
    """The handler runs with no lock held: its own evictions are counted for later."""
    clock = ferrule.ManualClock()
    seen: list[dict[str, Any]] = []

    class Reentrant:
        def publish(self, signal_type: str, data: dict[str, Any]) -> None:
            seen.append(data)
            for i in range(3):
                c[f"h{i}"] = i  # evicts again, inside the publish

    c = ferrule.Cache(2, name="r", bus=Reentrant(), clock=clock)
    for i in range(3):
        c[i] = i
    assert seen == [{"evicted": 1, "size": 2, "max_size": 2}]
    clock.advance(1.0)
    for _ in range(STRIDE):
        c["z"] = 0
    assert seen[1]["evicted"] == 4  # three from the handler, one from the first "z"


def test_cache_raising_bus_is_unraisable_and_the_write_stands(unraisable: list[Any]) -> None:
    c = ferrule.Cache(1, name="b", bus=BadBus())
    c["a"], c["b"] = 1, 2
    assert c.keys() == ["b"]
    assert [type(u.exc_value) for u in unraisable] == [OSError]


# ---- WorkQueue -------------------------------------------------------------------------


def overflow(bus: Bus) -> list[tuple[str, int, int]]:
    return [(d["state"], d["rejected"], d["dropped"]) for _, d in bus.got]


def test_queue_overflow_begins_once_and_ends_at_the_low_water_mark() -> None:
    bus = Bus()
    q: ferrule.WorkQueue[int] = ferrule.WorkQueue(4, overflow="reject", name="jobs", bus=bus)
    for i in range(1000):
        with contextlib.suppress(ferrule.QueueFull):
            q.put_nowait(i)
    assert bus.got == [
        ("queue.jobs.overflow", {"state": "begin", "rejected": 1, "dropped": 0, "size": 4})
    ]
    q.get()  # 3 left: above the low-water mark (2)
    assert len(bus.got) == 1
    q.get()
    assert bus.got[1] == (
        "queue.jobs.overflow",
        {"state": "end", "rejected": 996, "dropped": 0, "size": 2},
    )
    q.put(1)
    q.put(2)
    with pytest.raises(ferrule.QueueFull):
        q.put(3)
    assert overflow(bus)[2] == ("begin", 1, 0)  # counts since the previous end


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("drop_oldest", [("begin", 0, 1), ("end", 0, 5)]),
        ("drop_newest", [("begin", 1, 0), ("end", 5, 0)]),
        ("block", [("begin", 1, 0), ("end", 5, 0)]),
    ],
)
def test_queue_overflow_under_each_policy(policy: str, expected: list[Any]) -> None:
    bus = Bus()
    q: ferrule.WorkQueue[int] = ferrule.WorkQueue(2, overflow=policy, name="q", bus=bus)
    q.put(0)
    q.put(1)
    for i in range(5):
        if policy == "block":
            with pytest.raises(ferrule.QueueFull):
                q.put(i, timeout=0)
        else:
            q.put(i)
    q.get_many(2)
    assert overflow(bus) == expected


def test_queue_put_many_overflows_and_async_get_ends_it() -> None:
    bus = Bus()
    q: ferrule.WorkQueue[int] = ferrule.WorkQueue(2, overflow="reject", name="q", bus=bus)
    assert q.put_many(range(5)) == 2
    assert overflow(bus) == [("begin", 3, 0)]

    async def drain() -> None:
        await q.get_async()
        await q.get_async()

    asyncio.run(drain())
    assert overflow(bus) == [("begin", 3, 0), ("end", 3, 0)]


def test_queue_handler_may_use_the_queue() -> None:
    """A handler that puts (overflowing again) and gets: no deadlock, and the edges it
    causes are published after its own, in order."""
    got: list[str] = []

    class Reentrant:
        def publish(self, signal_type: str, data: dict[str, Any]) -> None:
            got.append(data["state"])
            if data["state"] == "begin":
                q.get_nowait()
                q.get_nowait()  # down to the low-water mark: the end
            else:
                q.put_nowait(7)

    q: ferrule.WorkQueue[int] = ferrule.WorkQueue(2, overflow="reject", name="q", bus=Reentrant())
    q.put(1)
    q.put(2)
    with pytest.raises(ferrule.QueueFull):
        q.put_nowait(3)
    assert got == ["begin", "end"]
    assert len(q) == 1


def test_queue_edges_alternate_under_threads() -> None:
    bus = Bus()
    q: ferrule.WorkQueue[int] = ferrule.WorkQueue(4, overflow="drop_newest", name="q", bus=bus)

    def work() -> None:
        for i in range(3000):
            q.put(i)
            if i % 5 == 0:
                q.get_many(4, timeout=0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(bus.got) > 2, "the queue overflowed, several times"
    # The edges alternate as queued. A publisher descheduled while the others queue more
    # than the outbox holds (1024) drops the oldest, and the next event says how many
    # ("lost"): an odd number lost repeats the previous state.
    expected = "begin"
    for n, (_, d) in enumerate(bus.got):
        if d.get("lost", 0) % 2:
            expected = "end" if expected == "begin" else "begin"
        assert d["state"] == expected, (n, d)
        expected = "end" if expected == "begin" else "begin"


def test_queue_raising_bus(unraisable: list[Any]) -> None:
    q: ferrule.WorkQueue[int] = ferrule.WorkQueue(1, overflow="reject", name="q", bus=BadBus())
    q.put(1)
    with pytest.raises(ferrule.QueueFull):  # the put's own error, not the bus's
        q.put(2)
    assert q.get() == 1
    assert [type(u.exc_value) for u in unraisable] == [OSError, OSError]


# ---- TaskPool --------------------------------------------------------------------------


def test_taskpool_saturation_begins_and_ends() -> None:
    bus = Bus()
    release = threading.Event()
    with ferrule.TaskPool(1, max_queue=2, overflow="reject", name="w", bus=bus) as pool:
        futures = [pool.submit(release.wait, 5.0) for _ in range(3)]
        for _ in range(10):
            with pytest.raises(ferrule.QueueFull):
                pool.submit(release.wait)
        assert [(t, d["state"]) for t, d in bus.got] == [("taskpool.w.saturated", "begin")]
        release.set()
        for f in futures:
            f.result()
    assert [(d["state"], d["rejected"]) for _, d in bus.got] == [("begin", 0), ("end", 10)]


def test_task_counters_end_at_low_water() -> None:
    bus = Bus()
    c = TaskCounters(4, name="c", bus=bus, low_water=1)
    for _ in range(4):
        assert c.admit(0) == 0
    assert c.admit(0) == 1
    c.reject()
    for _ in range(2):
        c.start()
        c.finish(True)
    assert [d["state"] for _, d in bus.got] == ["begin"]
    c.cancel()  # 1 outstanding: the low-water mark
    assert [(d["state"], d["rejected"]) for _, d in bus.got] == [("begin", 0), ("end", 1)]


# ---- RateLimiter -----------------------------------------------------------------------


def test_ratelimit_denials_are_aggregated_per_interval() -> None:
    bus, clock = Bus(), ferrule.ManualClock()
    rl = ferrule.RateLimiter(1, burst=1, name="api", bus=bus, clock=clock, deny_threshold=3)
    assert rl.try_acquire("a")
    assert not rl.try_acquire("a")  # ends the first (empty) window: 1 < 3, nothing
    for _ in range(10_000):
        rl.try_acquire("a")
        rl.check("b")
    assert bus.got == []
    clock.advance(1.0)
    for i in range(STRIDE):  # allowed decisions: one of them ends the window
        assert rl.try_acquire(f"c{i}")
    ((topic, data),) = bus.got
    assert topic == "ratelimit.api.denied"
    assert data == {"denied": 19_999, "keys": ["'a'", "'b'"], "interval": 1.0}


def test_ratelimit_below_the_threshold_publishes_nothing() -> None:
    bus, clock = Bus(), ferrule.ManualClock()
    rl = ferrule.RateLimiter(1, burst=1, name="api", bus=bus, clock=clock, deny_threshold=5)
    for _ in range(5):
        rl.try_acquire("k")  # one allowed, four denied
        clock.advance(1.0)
    assert bus.got == []


def test_ratelimit_sample_keys_are_bounded_distinct_reprs() -> None:
    class Loud:
        def __hash__(self) -> int:
            return 1

        def __repr__(self) -> str:
            return "L" * 500

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    bus, clock = Bus(), ferrule.ManualClock()
    rl = ferrule.RateLimiter(1, burst=1, name="api", bus=bus, clock=clock, deny_threshold=1)
    keys: list[object] = [Loud(), Broken(), *range(20)]
    rl.try_acquire("z")
    rl.try_acquire("z")  # the first denial ends the first window (published: z)
    for k in keys:
        rl.try_acquire(k)
    for k in keys:
        rl.try_acquire(k)
    clock.advance(1.0)
    for i in range(STRIDE):
        rl.try_acquire(f"x{i}")
    sample = bus.got[-1][1]["keys"]
    assert sample == ["L" * 100 + "...", "<Broken>", "0", "1", "2", "3", "4", "5"]


def test_ratelimit_waits_count_one_denial_when_they_give_up() -> None:
    bus, clock = Bus(), ferrule.ManualClock()
    rl = ferrule.RateLimiter(1, per=60.0, name="api", bus=bus, clock=clock)
    assert rl.acquire("k")
    assert not rl.acquire("k", timeout=0.01)
    assert not asyncio.run(rl.acquire_async("k", timeout=0.01))
    with pytest.raises(ferrule.RateLimited), rl.limit("k", timeout=0.01):
        pass
    assert bus.got == [("ratelimit.api.denied", {"denied": 1, "keys": ["'k'"], "interval": 1.0})]
    clock.advance(1.0)
    for i in range(STRIDE):
        rl.try_acquire(f"other{i}")
    assert bus.got[1][1]["denied"] == 2  # acquire_async and limit: one each


def test_ratelimit_handler_may_use_the_limiter(unraisable: list[Any]) -> None:
    clock = ferrule.ManualClock()
    seen: list[int] = []

    class Reentrant:
        def publish(self, signal_type: str, data: dict[str, Any]) -> None:
            seen.append(data["denied"])
            rl.try_acquire("k")  # denied again, inside the publish
            raise ValueError("after using it")

    rl = ferrule.RateLimiter(1, burst=1, name="r", bus=Reentrant(), clock=clock)
    rl.try_acquire("k")
    assert rl.try_acquire("k") is False
    assert seen == [1]
    assert [type(u.exc_value) for u in unraisable] == [ValueError]


# ---- Pool ------------------------------------------------------------------------------


def test_pool_exhaustion_begins_and_ends() -> None:
    bus = Bus()
    pool = ferrule.Pool(object, max_size=1, timeout=0.01, name="db", bus=bus)
    with pool.acquire():
        for _ in range(3):
            with pytest.raises(ferrule.PoolTimeout), pool.acquire():
                pass
    with pool.acquire():
        pass
    assert bus.got == [
        ("pool.db.exhausted", {"state": "begin", "waited": 1, "timeouts": 0, "max_size": 1}),
        ("pool.db.exhausted", {"state": "end", "waited": 3, "timeouts": 3, "max_size": 1}),
    ]


def test_pool_handler_may_check_out(unraisable: list[Any]) -> None:
    states: list[str] = []

    class Reentrant:
        def publish(self, signal_type: str, data: dict[str, Any]) -> None:
            states.append(data["state"])
            if data["state"] == "end":
                with pool.acquire(timeout=1.0):
                    pass

    pool = ferrule.Pool(object, max_size=1, timeout=0.01, name="p", bus=Reentrant())
    with pool.acquire(), pytest.raises(ferrule.PoolTimeout), pool.acquire():
        pass
    assert states == ["begin", "end"]
    assert pool.stats().in_use == 0


# ---- ErrorStore ------------------------------------------------------------------------


def test_error_store_publishes_each_evicted_agent() -> None:
    bus, clock = Bus(), ferrule.ManualClock()
    store = ferrule.ErrorStore(max_agents=2, max_age=10.0, name="svc", bus=bus, clock=clock)
    for agent in "abcd":
        store.record(agent, ValueError(agent))
    assert bus.got == [
        ("errors.svc.agent_evicted", {"agent_id": "a"}),
        ("errors.svc.agent_evicted", {"agent_id": "b"}),
    ]
    clock.advance(10.0)  # c and d age out: not evictions
    store.record("e", ValueError())
    store.record("f", ValueError())
    assert len(bus.got) == 2


def test_error_store_handler_may_record() -> None:
    seen: list[str] = []

    class Reentrant:
        def publish(self, signal_type: str, data: dict[str, Any]) -> None:
            seen.append(data["agent_id"])
            if len(seen) < 5:
                store.record(f"from-handler-{len(seen)}", ValueError())

    store = ferrule.ErrorStore(max_agents=1, name="s", bus=Reentrant())
    store.record("a", ValueError())
    store.record("b", ValueError())
    assert seen == ["a", "b", "from-handler-1", "from-handler-2", "from-handler-3"]


# ---- ferrule.events --------------------------------------------------------------------


def test_the_table_names_every_topic() -> None:
    assert set(events.EVENTS) == {
        getattr(events, n) for n in events.__all__ if n.isupper() and n != "EVENTS"
    }
    for pattern, kind in events.EVENTS.items():
        assert kind.pattern == pattern and pattern.count(".") == 2 and kind.fields


def test_log_events_logs_with_structured_extra() -> None:
    bus = ferrule.SignalBus()
    records: list[logging.LogRecord] = []
    done = threading.Event()

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
            done.set()

    log = logging.getLogger("test.events")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(Keep())
    with log_events_sub(bus, log):
        q: ferrule.WorkQueue[int] = ferrule.WorkQueue(1, overflow="drop_newest", name="q", bus=bus)
        q.put(1)
        q.put(2)
        assert done.wait(5.0)
    (record,) = records
    assert record.levelno == logging.INFO
    assert record.event == "queue.q.overflow"  # type: ignore[attr-defined]
    assert record.event_data["state"] == "begin"  # type: ignore[attr-defined]
    assert record.getMessage().startswith("queue.q.overflow {")


def log_events_sub(bus: ferrule.SignalBus, log: logging.Logger) -> ferrule.Subscription:
    return events.log_events(bus, log, pattern=events.QUEUE_OVERFLOW)


def test_log_events_bad_arguments() -> None:
    bus = ferrule.SignalBus()
    with pytest.raises(TypeError, match="bus must be a SignalBus"):
        events.log_events(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="level must be an int"):
        events.log_events(bus, level="INFO")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"logger must be a logging\.Logger"):
        events.log_events(bus, logger=print)  # type: ignore[arg-type]
