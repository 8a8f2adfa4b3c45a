"""Cache.get_or_set_async: single-flight across tasks, loops and threads; exceptions,
cancellation at each await point, clear(), ttl, bad input, deadlock guards, GC."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from ferrule import Cache, ManualClock

WAIT = 10.0  # seconds any ordering wait may take before the test fails


def until(cond: Callable[[], bool]) -> None:
    """Waits (bounded) for a condition another thread or task makes true."""
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


async def until_async(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.001)


def misses(c: Cache) -> int:
    return c.stats().misses


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Runs ``fn`` in a thread; the list gets its result or its exception."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # the test inspects it
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def joined(t: threading.Thread, out: list[Any]) -> Any:
    t.join(WAIT)
    assert not t.is_alive()
    return out[0]


def no_flight_left(c: Cache, key: object) -> None:
    """The key's flight has left the table: a blocking call now runs its own factory
    (a flight left behind by a task of this thread would raise RuntimeError instead)."""
    c.delete(key)
    assert c.get_or_set(key, lambda: "fresh") == "fresh"


class Gate:
    """A factory that counts its calls and waits, on its own loop, until opened (from
    any thread)."""

    def __init__(self, value: object = "v") -> None:
        self.value = value
        self.calls = 0
        self.entered = threading.Event()
        self._open = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        with self._lock:
            self._open.set()
            for loop, ev in self._waiters:
                loop.call_soon_threadsafe(ev.set)

    async def __call__(self) -> object:
        self.calls += 1
        ev = asyncio.Event()
        with self._lock:
            if self._open.is_set():
                ev.set()
            else:
                self._waiters.append((asyncio.get_running_loop(), ev))
        self.entered.set()
        await ev.wait()
        return self.value


# ---- basics ----------------------------------------------------------------------------


@pytest.mark.smoke
def test_a_miss_runs_the_factory_and_a_hit_does_not() -> None:
    c = Cache(10)
    calls = 0

    async def factory() -> int:
        nonlocal calls
        calls += 1
        return 42

    async def main() -> None:
        assert await c.get_or_set_async("k", factory) == 42
        assert await c.get_or_set_async("k", factory) == 42

    asyncio.run(main())
    assert calls == 1
    assert c["k"] == 42
    s = c.stats()
    assert (s.hits, s.misses, s.inserts) == (1 + 1, 1, 1)  # c["k"] counts a hit too


def test_any_callable_returning_an_awaitable_is_a_factory() -> None:
    c = Cache(10)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def make_future() -> asyncio.Future[str]:
            f: asyncio.Future[str] = loop.create_future()
            f.set_result("from a future")
            return f

        assert await c.get_or_set_async("f", make_future) == "from a future"

    asyncio.run(main())


def test_a_factory_that_returns_a_plain_value_raises_type_error_naming_factory() -> None:
    c = Cache(10)

    async def main() -> None:
        with pytest.raises(TypeError, match="factory must return an awaitable, not 'int'"):
            await c.get_or_set_async("k", lambda: 1)

    asyncio.run(main())
    assert "k" not in c
    no_flight_left(c, "k")


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({"factory": 1}, TypeError, "factory must be callable"),
        ({"ttl": 0}, ValueError, "ttl"),
        ({"ttl": -1.0}, ValueError, "ttl"),
        ({"ttl": "1"}, TypeError, "ttl"),
        ({"ttl": float("nan")}, ValueError, "ttl"),
        ({"key": []}, TypeError, "key must be hashable, not 'list'"),
    ],
)
def test_bad_arguments_raise_at_the_call(kwargs: dict[str, Any], exc: type, msg: str) -> None:
    c = Cache(10)

    async def factory() -> int:
        return 1

    args: dict[str, Any] = {"key": "k", "factory": factory, **kwargs}
    ttl = args.pop("ttl", None)
    with pytest.raises(exc, match=msg) as got:
        c.get_or_set_async(args["key"], args["factory"], ttl=ttl)
    # The same check and message as get_or_set.
    sync_factory: Any = args["factory"] if "factory" in kwargs else (lambda: 1)
    with pytest.raises(exc) as sync_got:
        c.get_or_set(args["key"], sync_factory, ttl=ttl)
    assert str(got.value) == str(sync_got.value)
    assert c.stats().misses == 0


def test_ttl_is_the_entry_ttl() -> None:
    clock = ManualClock()
    c = Cache(10, ttl=100.0, clock=clock)
    calls = 0

    async def factory() -> int:
        nonlocal calls
        calls += 1
        return calls

    async def main() -> None:
        assert await c.get_or_set_async("k", factory, ttl=5.0) == 1
        clock.advance(4.9)
        assert await c.get_or_set_async("k", factory, ttl=5.0) == 1
        clock.advance(0.1)  # t + ttl: expired
        assert await c.get_or_set_async("k", factory) == 2
        clock.advance(99.9)  # the cache's default ttl
        assert await c.get_or_set_async("k", factory) == 2

    asyncio.run(main())


# ---- single-flight ---------------------------------------------------------------------


@pytest.mark.parametrize("tasks", [2, 16])
def test_tasks_on_one_loop_share_one_call(tasks: int) -> None:
    c = Cache(10)
    gate = Gate()

    async def main() -> list[object]:
        callers = [asyncio.create_task(c.get_or_set_async("k", gate)) for _ in range(tasks)]
        await until_async(lambda: misses(c) == tasks)
        gate.open()
        return await asyncio.gather(*callers)

    assert asyncio.run(main()) == ["v"] * tasks
    assert gate.calls == 1
    assert (c.stats().misses, c.stats().hits) == (tasks, 0)
    no_flight_left(c, "k")


def test_tasks_on_two_loops_in_two_threads_share_one_call() -> None:
    c = Cache(10)
    gate = Gate()
    barrier = threading.Barrier(2)

    def on_its_own_loop() -> object:
        barrier.wait(WAIT)
        return asyncio.run(c.get_or_set_async("k", gate))

    runs = [in_thread(on_its_own_loop) for _ in range(2)]
    until(lambda: misses(c) == 2)
    gate.open()
    assert [joined(t, out) for t, out in runs] == ["v", "v"]
    assert gate.calls == 1
    no_flight_left(c, "k")


def test_threads_in_get_or_set_wait_for_a_task_that_leads() -> None:
    c = Cache(10)
    gate = Gate()
    sync_calls = 0

    def sync_factory() -> str:
        nonlocal sync_calls
        sync_calls += 1
        return "from a thread"

    leader = in_thread(lambda: asyncio.run(c.get_or_set_async("k", gate)))
    assert gate.entered.wait(WAIT)
    threads = [in_thread(lambda: c.get_or_set("k", sync_factory)) for _ in range(4)]
    until(lambda: misses(c) == 5)
    gate.open()
    assert [joined(*t) for t in [leader, *threads]] == ["v"] * 5
    assert (gate.calls, sync_calls) == (1, 0)


def test_tasks_wait_for_a_thread_that_leads_in_get_or_set() -> None:
    c = Cache(10)
    release = threading.Event()
    entered = threading.Event()

    def sync_factory() -> str:
        entered.set()
        assert release.wait(WAIT)
        return "from a thread"

    async def never() -> str:
        raise AssertionError("a follower ran its factory")

    leader = in_thread(lambda: c.get_or_set("k", sync_factory))
    assert entered.wait(WAIT)

    async def main() -> list[object]:
        callers = [asyncio.create_task(c.get_or_set_async("k", never)) for _ in range(8)]
        await until_async(lambda: misses(c) == 9)
        release.set()  # ends the flight from another thread: wakers cross threads
        return await asyncio.gather(*callers)

    assert asyncio.run(main()) == ["from a thread"] * 8
    assert joined(*leader) == "from a thread"


# ---- exceptions ------------------------------------------------------------------------


def test_an_exception_reaches_every_waiter_and_nothing_is_cached() -> None:
    c = Cache(10)

    class Boom(Exception):
        pass

    async def main() -> None:
        go = asyncio.Event()
        started = asyncio.Event()

        async def factory() -> int:
            started.set()
            await go.wait()
            raise Boom("down")

        callers = [asyncio.create_task(c.get_or_set_async("k", factory)) for _ in range(4)]
        await started.wait()
        thread = in_thread(lambda: c.get_or_set("k", lambda: 1))
        await until_async(lambda: misses(c) == 5)
        go.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(r, Boom) and str(r) == "down" for r in results)
        got = await asyncio.to_thread(joined, *thread)
        assert isinstance(got, Boom)

    asyncio.run(main())
    assert "k" not in c
    assert c.stats().inserts == 0
    no_flight_left(c, "k")


# ---- cancellation ----------------------------------------------------------------------


def test_a_cancelled_follower_leaves_the_others_their_value_and_nothing_behind() -> None:
    c = Cache(10)
    gate = Gate()

    async def main() -> None:
        leader = asyncio.create_task(c.get_or_set_async("k", gate))
        follower = asyncio.create_task(c.get_or_set_async("k", gate))
        other = asyncio.create_task(c.get_or_set_async("k", gate))
        await until_async(lambda: misses(c) == 3)  # each joined and waits since
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower
        # Its waker was taken back: nothing of it is left in the running flight.
        gone = weakref.ref(follower)
        del follower
        await asyncio.sleep(0)  # out of the loop's handle that resumed us with it
        gc.collect()
        assert gone() is None
        assert not leader.done()
        gate.open()
        assert await leader == "v"
        assert await other == "v"

    asyncio.run(main())
    assert gate.calls == 1
    no_flight_left(c, "k")


def test_a_follower_cancelled_after_its_wake_up_loses_nothing() -> None:
    c = Cache(10)
    tasks: dict[str, asyncio.Task[Any]] = {}

    async def factory() -> str:
        loop = asyncio.get_running_loop()
        await until_async(lambda: misses(c) == 2)
        # Runs after the flight has ended and woken the follower, before it resumes.
        loop.call_soon(loop.call_soon, tasks["follower"].cancel)
        return "v"

    async def main() -> None:
        tasks["leader"] = asyncio.create_task(c.get_or_set_async("k", factory))
        tasks["follower"] = asyncio.create_task(c.get_or_set_async("k", factory))
        assert await tasks["leader"] == "v"
        with pytest.raises(asyncio.CancelledError):
            await tasks["follower"]

    asyncio.run(main())
    assert c["k"] == "v"
    no_flight_left(c, "k")


def test_the_leaders_caller_cancelled_does_not_cancel_the_shared_call() -> None:
    c = Cache(10)
    gate = Gate()

    async def main() -> None:
        leader = asyncio.create_task(c.get_or_set_async("k", gate))
        await until_async(gate.entered.is_set)
        followers = [asyncio.create_task(c.get_or_set_async("k", gate)) for _ in range(3)]
        await until_async(lambda: misses(c) == 4)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        gate.open()
        assert await asyncio.gather(*followers) == ["v"] * 3

    asyncio.run(main())
    assert gate.calls == 1
    assert c["k"] == "v"
    no_flight_left(c, "k")


def test_a_leaders_caller_cancelled_before_the_factory_started_still_shares_it() -> None:
    c = Cache(10)
    gate = Gate()

    async def main() -> None:
        leader = asyncio.create_task(c.get_or_set_async("k", gate))
        await asyncio.sleep(0)  # one step of the leader: it joins and starts the call
        assert (misses(c), gate.calls) == (1, 0)
        leader.cancel()
        follower = asyncio.create_task(c.get_or_set_async("k", gate))
        with pytest.raises(asyncio.CancelledError):
            await leader
        await until_async(gate.entered.is_set)
        gate.open()
        assert await follower == "v"

    asyncio.run(main())
    assert gate.calls == 1


def test_the_shared_call_cancelled_makes_a_waiter_lead_anew() -> None:
    c = Cache(10)
    shared: list[asyncio.Task[Any]] = []
    calls = 0

    async def factory() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            shared.append(asyncio.current_task())  # type: ignore[arg-type]
            await asyncio.Event().wait()  # until cancelled
        return f"call {calls}"

    async def main() -> None:
        leader = asyncio.create_task(c.get_or_set_async("k", factory))
        await until_async(lambda: bool(shared))
        followers = [asyncio.create_task(c.get_or_set_async("k", factory)) for _ in range(3)]
        thread = in_thread(lambda: c.get_or_set("k", lambda: "from the thread"))
        await until_async(lambda: misses(c) == 5)
        shared[0].cancel()
        results = await asyncio.gather(leader, *followers)
        got = await asyncio.to_thread(joined, *thread)
        # One of the waiters led anew; everybody shares its result.
        assert len({*results, got}) == 1
        assert results[0] in ("call 2", "from the thread")

    asyncio.run(main())
    assert calls in (1, 2)
    no_flight_left(c, "k")


def test_keyboard_interrupt_in_the_shared_call_makes_a_waiter_lead() -> None:
    c = Cache(10)
    started = threading.Event()
    go = threading.Event()

    async def interrupted() -> str:
        started.set()
        while not go.is_set():
            await asyncio.sleep(0.001)
        raise KeyboardInterrupt

    leader = in_thread(lambda: asyncio.run(c.get_or_set_async("k", interrupted)))
    assert started.wait(WAIT)
    sync_follower = in_thread(lambda: c.get_or_set("k", lambda: "thread led"))

    async def async_factory() -> str:
        return "task led"

    async_follower = in_thread(lambda: asyncio.run(c.get_or_set_async("k", async_factory)))
    until(lambda: misses(c) == 3)
    go.set()
    assert isinstance(joined(*leader), KeyboardInterrupt)
    a, b = joined(*sync_follower), joined(*async_follower)
    assert a == b
    assert a in ("thread led", "task led")
    assert c["k"] == a


class Stop(BaseException):
    """A BaseException that is not an Exception, as SystemExit is."""


def test_a_base_exception_stays_with_the_leaders_caller_and_a_waiter_leads() -> None:
    c = Cache(10)
    calls = 0

    async def factory() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await until_async(lambda: misses(c) == 3)
            raise Stop
        return "second"

    async def main() -> None:
        leader = asyncio.create_task(c.get_or_set_async("k", factory))
        await asyncio.sleep(0)  # one step of the leader: it joins and starts the call
        followers = [asyncio.create_task(c.get_or_set_async("k", factory)) for _ in range(2)]
        results = await asyncio.gather(leader, *followers, return_exceptions=True)
        assert isinstance(results[0], Stop)  # raised once: not run again for this caller
        assert results[1:] == ["second", "second"]

    asyncio.run(main())
    assert calls == 2
    assert c["k"] == "second"
    no_flight_left(c, "k")


# ---- clear() ---------------------------------------------------------------------------


def test_a_flight_that_began_before_clear_answers_but_does_not_store() -> None:
    c = Cache(10)
    gate = Gate("old")

    async def main() -> None:
        leader = asyncio.create_task(c.get_or_set_async("k", gate))
        follower = asyncio.create_task(c.get_or_set_async("k", gate))
        await until_async(lambda: misses(c) == 2)
        c.clear()

        async def new() -> str:
            return "new"

        # Not joined after the clear: this call leads a flight of its own.
        assert await c.get_or_set_async("k", new) == "new"
        c.delete("k")
        gate.open()
        assert await leader == "old"
        assert await follower == "old"

    asyncio.run(main())
    assert "k" not in c


# ---- deadlock guards -------------------------------------------------------------------


def test_a_blocking_get_or_set_on_the_loop_of_the_leading_task_raises() -> None:
    c = Cache(10)

    async def factory() -> int:
        return c.get_or_set("k", lambda: 1)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="would block the event loop"):
            await c.get_or_set_async("k", factory)

    asyncio.run(main())
    assert "k" not in c
    no_flight_left(c, "k")


def test_a_blocking_get_or_set_elsewhere_on_the_loop_thread_raises() -> None:
    c = Cache(10)
    gate = Gate()

    async def main() -> None:
        leader = asyncio.create_task(c.get_or_set_async("k", gate))
        await until_async(gate.entered.is_set)
        with pytest.raises(RuntimeError, match="would block the event loop"):
            c.get_or_set("k", lambda: 1)
        gate.open()
        assert await leader == "v"

    asyncio.run(main())


def test_an_event_loop_inside_a_sync_factory_cannot_wait_for_its_own_key() -> None:
    c = Cache(10)

    async def inner() -> int:
        return 2

    def factory() -> int:
        return asyncio.run(c.get_or_set_async("k", inner))  # type: ignore[no-any-return]

    with pytest.raises(RuntimeError, match="would never return"):
        c.get_or_set("k", factory)
    assert c.get_or_set("k", lambda: 3) == 3


def test_other_keys_from_inside_the_factory_work() -> None:
    c = Cache(10)

    async def inner() -> int:
        return 1

    async def outer() -> int:
        return await c.get_or_set_async("inner", inner) + c.get_or_set("sync", lambda: 10)

    assert asyncio.run(c.get_or_set_async("outer", outer)) == 11
    assert (c["inner"], c["sync"], c["outer"]) == (1, 10, 11)


# ---- garbage collection ----------------------------------------------------------------


class Owner:
    async def make(self) -> Owner:
        return self


def test_a_cycle_through_the_value_and_the_factory_is_collected() -> None:
    """owner -> cache -> value owner, and a factory bound to owner."""
    owner = Owner()
    owner.cache = Cache(8)  # type: ignore[attr-defined]
    got = asyncio.run(owner.cache.get_or_set_async("self", owner.make))  # type: ignore[attr-defined]
    assert got is owner
    gone = weakref.ref(owner)
    del owner, got
    gc.collect()
    assert gone() is None


def test_a_cycle_through_a_call_object_is_collected() -> None:
    """owner -> _CacheCall -> cache -> owner: only the call's traversal shows the
    collector the cache."""
    owner = Owner()
    cache = Cache(8)
    cache.set("owner", owner)

    async def factory() -> int:
        return 1

    coro: Coroutine[Any, Any, Any] = cache.get_or_set_async("k", factory)  # type: ignore[assignment]
    call = coro.cr_frame.f_locals["call"]
    coro.close()
    assert gc.is_tracked(call)
    owner.call = call  # type: ignore[attr-defined]
    gone = weakref.ref(owner)
    del cache, owner, coro, call
    gc.collect()
    assert gone() is None
