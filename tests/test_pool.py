"""Pool: checkout and return, validation, Discard, factory failures, timeouts, close,
idle reaping, min_size, asyncio, bad input."""

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
from ferrule import Discard, ManualClock, Pool, PoolTimeout


class Conn:
    """A fake connection that records its life."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"Conn({self.n})"


class Factory:
    def __init__(self, fail: set[int] | None = None) -> None:
        self.made: list[Conn] = []
        self.calls = 0
        self.fail = fail or set()
        self.lock = threading.Lock()

    def __call__(self) -> Conn:
        with self.lock:
            self.calls += 1
            n = self.calls
        if n in self.fail:
            raise ConnectionError(f"connect {n} failed")
        c = Conn(n)
        with self.lock:
            self.made.append(c)
        return c

    def open(self) -> int:
        with self.lock:
            return sum(not c.closed for c in self.made)


def wait_until(cond: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.001)


# ---- basics ----------------------------------------------------------------------------------


@pytest.mark.smoke
def test_checkout_reuses_items() -> None:
    f = Factory()
    pool = Pool(f, max_size=2)
    with pool.acquire() as a:
        assert a.n == 1
        s = pool.stats()
        assert (s.size, s.idle, s.in_use, s.created) == (1, 0, 1, 1)
    with pool.acquire() as b:
        assert b is a
    s = pool.stats()
    assert (s.size, s.idle, s.in_use, s.waiting, s.created, s.discarded, s.timeouts) == (
        1,
        1,
        0,
        0,
        1,
        0,
        0,
    )
    assert repr(s).startswith("PoolStats(size=1, idle=1, in_use=0")
    assert (pool.max_size, pool.min_size, pool.timeout, pool.closed) == (2, 0, 30.0, False)
    assert repr(pool) == "Pool(max_size=2, size=1, idle=1, waiting=0)"


def test_most_recently_returned_item_is_reused_first() -> None:
    pool = Pool(Factory(), max_size=3)
    with pool.acquire() as a, pool.acquire() as b:
        pass
    with pool.acquire() as c:
        # a was returned last (the with statement exits b first): it is reused first
        assert c is a
    assert b.n == 2


def test_other_exceptions_return_the_item() -> None:
    f = Factory()
    pool = Pool(f, max_size=1)
    with pytest.raises(KeyError), pool.acquire() as a:
        raise KeyError("x")
    assert not a.closed
    with pool.acquire() as b:
        assert b is a
    assert pool.stats().discarded == 0


def test_discard_closes_and_replaces_and_propagates() -> None:
    f = Factory()
    pool = Pool(f, max_size=1)
    with pytest.raises(Discard), pool.acquire() as a:
        raise Discard("broken")
    assert a.closed
    s = pool.stats()
    assert (s.size, s.discarded) == (0, 1)
    with pool.acquire() as b:
        assert b is not a and b.n == 2


def test_discard_on_error_closes_on_any_exception() -> None:
    pool = Pool(Factory(), max_size=1, discard_on_error=True)
    with pytest.raises(OSError), pool.acquire() as a:
        raise OSError("reset")
    assert a.closed
    with pool.acquire() as b:
        assert b is not a
    assert not b.closed  # a clean exit returns it


def test_items_without_close_are_dropped() -> None:
    pool = Pool(object, max_size=1)
    with pytest.raises(Discard), pool.acquire():
        raise Discard
    assert pool.stats().discarded == 1


def test_checkout_object_is_single_use_and_returns_on_drop() -> None:
    pool = Pool(Factory(), max_size=1)
    co = pool.acquire()
    item = co.__enter__()
    with pytest.raises(RuntimeError, match="a pool checkout can be entered only once"):
        co.__enter__()
    del co  # never exited: the item goes back
    assert pool.stats().idle == 1
    with pool.acquire(timeout=0) as again:
        assert again is item


# ---- validation ---------------------------------------------------------------------------


def test_validate_false_closes_and_replaces() -> None:
    f = Factory()
    bad: set[int] = set()
    pool = Pool(f, max_size=1, validate=lambda c: c.n not in bad)
    with pool.acquire() as a:
        pass
    bad.add(1)
    with pool.acquire() as b:
        assert b.n == 2
    assert a.closed and not b.closed
    assert pool.stats().discarded == 1


def test_validate_error_propagates_and_frees_the_slot() -> None:
    calls = []

    def validate(c: Conn) -> bool:
        calls.append(c.n)
        raise ValueError("probe failed")

    pool = Pool(Factory(), max_size=1, validate=validate)
    with pool.acquire() as a:  # fresh items are not validated
        pass
    with pytest.raises(ValueError, match="probe failed"), pool.acquire():
        pass
    assert calls == [1]
    assert a.closed
    s = pool.stats()
    assert (s.size, s.discarded) == (0, 1)


# ---- factory failures --------------------------------------------------------------------


def test_factory_failure_is_counted_and_capacity_kept() -> None:
    f = Factory(fail={1})
    pool = Pool(f, max_size=1)
    with pytest.raises(ConnectionError, match="connect 1 failed"), pool.acquire():
        pass
    s = pool.stats()
    assert (s.size, s.created, s.factory_errors) == (0, 0, 1)
    with pool.acquire(timeout=0) as c:
        assert c.n == 2


def test_waiter_gets_the_factory_error() -> None:
    f = Factory(fail={2})
    pool = Pool(f, max_size=1)
    errors: list[BaseException] = []
    holder = pool.acquire()
    holder.__enter__()

    def waiter() -> None:
        try:
            with pool.acquire(timeout=10):
                pass
        except ConnectionError as e:
            errors.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    wait_until(lambda: pool.stats().waiting == 1)
    # Discard the held item: its slot goes to the waiter, whose factory call fails.
    holder.__exit__(Discard, Discard(), None)
    t.join(5)
    assert [str(e) for e in errors] == ["connect 2 failed"]
    s = pool.stats()
    assert (s.size, s.waiting, s.factory_errors) == (0, 0, 1)
    with pool.acquire(timeout=0) as c:
        assert c.n == 3


# ---- timeouts and waiting -----------------------------------------------------------------


def test_timeout_raises_pool_timeout() -> None:
    pool = Pool(Factory(), max_size=1, timeout=0.05)
    with pool.acquire():
        t0 = time.monotonic()
        with (
            pytest.raises(PoolTimeout, match=r"no pool item became available within 0\.05 s"),
            pool.acquire(),
        ):
            pass
        assert time.monotonic() - t0 >= 0.04
        with pytest.raises(TimeoutError), pool.acquire(timeout=0):
            pass
    s = pool.stats()
    assert (s.timeouts, s.waiting, s.size) == (2, 0, 1)


def test_fifo_fairness() -> None:
    pool = Pool(Factory(), max_size=1)
    order: list[int] = []
    held = pool.acquire()
    held.__enter__()

    def worker(i: int) -> None:
        with pool.acquire(timeout=10):
            order.append(i)

    ts = []
    for i in range(6):
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        ts.append(t)
        wait_until(lambda i=i: pool.stats().waiting == i + 1)
    held.__exit__(None, None, None)
    for t in ts:
        t.join(5)
    assert order == list(range(6))


def test_failed_validation_keeps_the_waiters_turn() -> None:
    bad = {1}
    pool = Pool(Factory(), max_size=1, validate=lambda c: c.n not in bad)
    order: list[tuple[str, int]] = []
    held = pool.acquire()
    held.__enter__()

    def worker(name: str) -> None:
        with pool.acquire(timeout=10) as c:
            order.append((name, c.n))

    ts = []
    for i, name in enumerate("AB"):
        t = threading.Thread(target=worker, args=(name,))
        t.start()
        ts.append(t)
        wait_until(lambda i=i: pool.stats().waiting == i + 1)
    # A is handed item 1, which fails validation: A replaces it and is still served first.
    held.__exit__(None, None, None)
    for t in ts:
        t.join(5)
    assert order == [("A", 2), ("B", 2)]
    assert pool.stats().discarded == 1


def test_close_fails_waiters_and_closes_items() -> None:
    f = Factory()
    pool = Pool(f, max_size=2)
    with pool.acquire():
        pass
    errors: list[BaseException] = []
    held = pool.acquire()
    a = held.__enter__()
    held2 = pool.acquire()
    b = held2.__enter__()

    def waiter() -> None:
        try:
            with pool.acquire(timeout=10):
                pass
        except RuntimeError as e:
            errors.append(e)

    ts = [threading.Thread(target=waiter) for _ in range(3)]
    for t in ts:
        t.start()
    wait_until(lambda: pool.stats().waiting == 3)
    pool.close()
    for t in ts:
        t.join(5)
    assert [str(e) for e in errors] == ["pool is closed"] * 3
    assert pool.closed
    assert not a.closed  # in use: closed when it comes back
    held.__exit__(None, None, None)
    held2.__exit__(Discard, Discard(), None)
    assert a.closed and b.closed
    assert f.open() == 0
    assert pool.stats().size == 0
    with pytest.raises(RuntimeError, match="pool is closed"), pool.acquire():
        pass


def test_pool_as_context_manager_closes() -> None:
    f = Factory()
    with Pool(f, max_size=2, min_size=2) as pool:
        assert pool.stats().idle == 2
    assert f.open() == 0


# ---- idle reaping and min_size -------------------------------------------------------------


def test_idle_items_past_max_idle_are_closed_lazily() -> None:
    clock = ManualClock()
    f = Factory()
    pool = Pool(f, max_size=2, max_idle=10.0, clock=clock)
    with pool.acquire() as a, pool.acquire() as b:
        pass
    clock.advance(9.999)
    assert pool.stats().idle == 2
    clock.advance(0.001)  # live while now < t + max_idle
    with pool.acquire() as c:
        assert c.n == 3
    assert a.closed and b.closed
    s = pool.stats()
    assert (s.size, s.discarded, s.created) == (1, 2, 3)


def test_min_size_is_kept_warm() -> None:
    clock = ManualClock()
    f = Factory()
    pool = Pool(f, max_size=3, min_size=2, max_idle=1.0, clock=clock)
    assert pool.stats().idle == 2
    with pytest.raises(Discard), pool.acquire():
        raise Discard
    assert pool.stats().size == 2  # replaced at once
    with pool.acquire(), pool.acquire(), pool.acquire():
        pass
    clock.advance(5.0)
    s = pool.stats()
    assert (s.size, s.idle) == (2, 2)
    assert f.open() == 2


def test_constructor_factory_failure_propagates() -> None:
    with pytest.raises(ConnectionError, match="connect 2 failed"):
        Pool(Factory(fail={2}), max_size=3, min_size=2)


def test_close_errors_are_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    class BadConn:
        def close(self) -> None:
            raise OSError("close failed")

    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    pool = Pool(BadConn, max_size=1)
    with pytest.raises(Discard), pool.acquire():
        raise Discard
    assert [str(r.exc_value) for r in reported] == ["close failed"]
    assert pool.stats().size == 0


# ---- asyncio -------------------------------------------------------------------------------


def test_async_checkout_bound_and_no_threads() -> None:
    f = Factory()
    pool = Pool(f, max_size=2)

    async def main() -> int:
        active = 0
        peak = 0

        async def worker() -> None:
            nonlocal active, peak
            async with pool.acquire_async() as c:
                assert isinstance(c, Conn)
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.002)
                active -= 1

        before = threading.active_count()
        await asyncio.gather(*(worker() for _ in range(20)))
        assert threading.active_count() == before
        return peak

    assert asyncio.run(main()) == 2
    s = pool.stats()
    assert (s.size, s.created, s.in_use, s.waiting) == (2, 2, 0, 0)


def test_async_discard_timeout_and_cancel() -> None:
    f = Factory()
    pool = Pool(f, max_size=1)

    async def main() -> None:
        with pytest.raises(Discard):
            async with pool.acquire_async() as a:
                raise Discard
        assert a.closed
        async with pool.acquire_async() as b:
            with pytest.raises(PoolTimeout, match=r"within 0\.02 s"):
                async with pool.acquire_async(timeout=0.02):
                    pass
            task = asyncio.ensure_future(pool.acquire_async(timeout=5).__aenter__())
            await asyncio.sleep(0.01)
            assert pool.stats().waiting == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.stats().waiting == 0
        async with pool.acquire_async(timeout=0.5) as c:
            assert c is b

    asyncio.run(main())
    s = pool.stats()
    assert (s.size, s.idle, s.timeouts) == (1, 1, 1)


def test_async_waiter_served_by_a_thread() -> None:
    pool = Pool(Factory(), max_size=1)
    held = pool.acquire()
    item = held.__enter__()

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        returner = threading.Thread(target=held.__exit__, args=(None, None, None))
        loop.call_later(0.02, returner.start)
        async with pool.acquire_async(timeout=5) as got:
            returner.join()
            return got

    assert asyncio.run(main()) is item


def test_async_close_fails_waiters() -> None:
    pool = Pool(Factory(), max_size=1)

    async def main() -> None:
        async with pool.acquire_async():
            waiter = asyncio.ensure_future(pool.acquire_async(timeout=5).__aenter__())
            await asyncio.sleep(0.01)
            pool.close()
            with pytest.raises(RuntimeError, match="pool is closed"):
                await waiter

    asyncio.run(main())


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "msg"),
    [
        ((1,), {"max_size": 1}, TypeError, "factory must be callable, not 'int'"),
        ((object,), {"max_size": 0}, ValueError, "max_size must be >= 1"),
        ((object,), {"max_size": "2"}, TypeError, "max_size must be an int, not 'str'"),
        ((object,), {"max_size": 1, "min_size": -1}, ValueError, "min_size must be >= 0"),
        ((object,), {"max_size": 1, "min_size": 2}, ValueError, "min_size must be <= max_size"),
        ((object,), {"max_size": 1, "timeout": -1}, ValueError, "timeout must be >= 0"),
        ((object,), {"max_size": 1, "max_idle": 0}, ValueError, "max_idle must be > 0"),
        ((object,), {"max_size": 1, "validate": 3}, TypeError, "validate must be callable or None"),
        (
            (object,),
            {"max_size": 1, "clock": "x"},
            TypeError,
            "clock must be a ferrule.ManualClock",
        ),
    ],
)
def test_bad_constructor_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], exc: type, msg: str
) -> None:
    with pytest.raises(exc, match=msg):
        Pool(*args, **kwargs)


def test_bad_call_arguments() -> None:
    pool = Pool(object, max_size=1)
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        pool.acquire(timeout=-0.5)
    with pytest.raises(TypeError, match="timeout must be a number of seconds, not 'str'"):
        pool.acquire_async(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Pool(object)  # type: ignore[call-arg]
    assert ferrule.Pool is Pool


def test_cycle_through_the_factory_is_collected() -> None:
    def make() -> weakref.ref[Pool[Conn]]:
        holder: dict[str, Any] = {}

        def factory() -> Conn:
            return Conn(len(holder))  # pool -> factory -> holder -> pool

        pool = Pool(factory, max_size=2)
        holder["pool"] = pool
        with pool.acquire():
            pass
        return weakref.ref(pool)

    gone = make()
    gc.collect()
    assert gone() is None


def test_blocked_checkout_is_interruptible() -> None:
    pool = Pool(Factory(), max_size=1)
    with pool.acquire():
        timer = threading.Timer(0.1, _thread.interrupt_main)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt), pool.acquire(timeout=10):
            pass
        assert time.monotonic() - t0 < 0.5
        timer.join()
        assert pool.stats().waiting == 0
    with pool.acquire(timeout=0):
        pass


# ---- the private asyncio hooks with hostile arguments ------------------------------------


def _waiting(pool: Pool[Any]) -> tuple[Any, Any]:
    """An item checked out through the asyncio hooks, and a waiter queued behind it."""
    got, item = pool._checkout_async(lambda: None)
    assert got
    got, waiter = pool._checkout_async(lambda: None)
    assert not got
    return item, waiter


@pytest.mark.parametrize(
    ("timeout", "exc", "msg"),
    [
        (-1.0, ValueError, "timeout must be >= 0"),
        (float("nan"), ValueError, "timeout must be a finite number of seconds"),
        (float("inf"), ValueError, "timeout must be a finite number of seconds"),
        (1e300, ValueError, "timeout is too large"),
        (10**400, OverflowError, "timeout is out of range"),
        ("1", TypeError, "timeout must be a number of seconds, not 'str'"),
    ],
)
def test_give_up_with_a_hostile_timeout_raises_instead_of_panicking(
    timeout: Any, exc: type, msg: str
) -> None:
    """`_give_up(waiter, True, t)` converted `t` with `Duration::from_secs_f64`, which
    panicked (PanicException) for a negative, NaN, infinite or huge `t`."""
    pool = Pool(Factory(), max_size=1)
    item, waiter = _waiting(pool)
    with pytest.raises(exc, match=msg):
        pool._give_up(waiter, True, timeout)
    # Nothing changed: the waiter is still queued and can still give up properly.
    assert pool.stats().waiting == 1
    with pytest.raises(PoolTimeout, match=r"within 0\.5 s"):
        pool._give_up(waiter, True, 0.5)
    assert pool._give_up(waiter, False, None) == (False, None)
    pool._finish(item)
    assert pool.stats().in_use == 0


def test_private_hooks_refuse_a_waiter_of_another_pool() -> None:
    """A `_PoolWaiter` of one pool handed to another pool's `_resume`/`_give_up` used to
    move grants between the pools (an item of one pool checked out of the other)."""
    a, b = Pool(Factory(), max_size=1), Pool(Factory(), max_size=1)
    item, waiter = _waiting(a)
    with pytest.raises(ValueError, match="waiter is not waiting on this pool"):
        b._resume(waiter)
    with pytest.raises(ValueError, match="waiter is not waiting on this pool"):
        b._give_up(waiter, False, None)
    assert (a.stats().waiting, b.stats().size) == (1, 0)
    a._finish(item)
    got, again = a._resume(waiter)
    assert got and again is item
    a._finish(again)


def test_finish_refuses_an_item_that_is_not_checked_out() -> None:
    """`_finish` of an object never checked out (or of one item twice) used to push it
    onto the idle stack regardless: the pool then held more idle items than `max_size`
    (no bound) and handed out objects it never made."""
    pool = Pool(Factory(), max_size=1)
    stranger = Conn(99)
    with pytest.raises(ValueError, match="item is not checked out from this pool"):
        pool._finish(stranger)
    with pytest.raises(ValueError, match="item is not checked out from this pool"):
        pool._finish(stranger, Discard())
    assert not stranger.closed  # a refused discard does not close the caller's object
    with pool.acquire() as c:
        pass
    with pytest.raises(ValueError, match="item is not checked out from this pool"):
        pool._finish(c)
    for _ in range(100):
        with pytest.raises(ValueError):
            pool._finish(Conn(0))
    s = pool.stats()
    assert (s.size, s.idle, s.in_use, s.discarded) == (1, 1, 0, 0)
    with pool.acquire() as again:
        assert again is c


def test_checkout_async_refuses_a_wake_hook_that_is_not_callable() -> None:
    """A non-callable `wake` was accepted and failed only when a grant arrived."""
    pool = Pool(Factory(), max_size=1)
    with pytest.raises(TypeError, match="wake must be callable, not 'int'"):
        pool._checkout_async(3)
    assert pool.stats().size == 0


# ---- garbage collection ------------------------------------------------------------------


class Canary:
    """Something whose collection a weak reference can observe."""


def test_cycle_through_validate_and_an_idle_item_is_collected() -> None:
    """`self.pool = Pool(make, validate=self.check)`: the pool visits its callables and
    idle items, so the holder is collected."""

    class Service:
        def __init__(self) -> None:
            self.canary = Canary()
            self.pool = Pool(self.make, max_size=2, validate=self.check)

        def make(self) -> list[Any]:
            return [self]  # an item that refers back to the service

        def check(self, item: list[Any]) -> bool:
            return item[0] is self

    s = Service()
    with s.pool.acquire():
        pass
    gone = weakref.ref(s.canary)
    del s
    gc.collect()
    assert gone() is None


def test_cycle_through_a_checkout_is_collected_and_returns_the_item() -> None:
    """A `PoolCheckout` entered and never exited, caught in a cycle with its item: the
    collector frees it and the item goes back to the pool (capacity is not lost)."""

    class Item:
        pass

    pool = Pool(Item, max_size=1)

    def leak() -> weakref.ref[Canary]:
        cm = pool.acquire()
        item = cm.__enter__()
        item.cm = cm  # type: ignore[attr-defined]  # checkout -> item -> checkout
        item.canary = Canary()  # type: ignore[attr-defined]
        return weakref.ref(item.canary)  # type: ignore[attr-defined]

    gone = leak()
    gc.collect()
    assert gone() is None
    s = pool.stats()
    assert (s.size, s.idle, s.in_use) == (1, 1, 0)
    with pool.acquire(timeout=0):
        pass


def test_cycle_through_an_abandoned_async_waiter_is_collected() -> None:
    """A queued asyncio waiter whose `_PoolWaiter` was dropped: the pool alone holds its
    wake-up hook and visits it, so a cycle through the hook back to the pool's holder is
    collected."""

    class Holder:
        pass

    def leak() -> weakref.ref[Canary]:
        h = Holder()
        h.canary = Canary()  # type: ignore[attr-defined]
        h.pool = Pool(Factory(), max_size=1)  # type: ignore[attr-defined]
        h.pool._checkout_async(lambda: h)  # type: ignore[attr-defined]
        got, waiter = h.pool._checkout_async(lambda: h)  # type: ignore[attr-defined]
        assert not got
        del waiter
        return weakref.ref(h.canary)  # type: ignore[attr-defined]

    gone = leak()
    gc.collect()
    assert gone() is None


def test_collected_pool_drops_its_items_without_closing_them() -> None:
    """Clearing a pool caught in a cycle drops its idle items (their own destructors
    run) and calls no user code such as their `close()`."""
    closed: list[int] = []

    class Item:
        def close(self) -> None:
            closed.append(1)

    class Holder:
        def __init__(self) -> None:
            self.pool = Pool(Item, max_size=2, min_size=2, validate=self.check)

        def check(self, item: Item) -> bool:
            return True

    h = Holder()
    made = [weakref.ref(x) for x in gc.get_referents(h.pool) if isinstance(x, Item)]
    assert len(made) == 2  # the pool visits its idle items
    del h
    gc.collect()
    assert [r() for r in made] == [None, None]
    assert closed == []
