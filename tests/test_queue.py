"""WorkQueue: unit tests, bad input, GIL release, KeyboardInterrupt, asyncio."""

from __future__ import annotations

import _thread
import asyncio
import functools
import gc
import inspect
import math
import queue
import threading
import time
import weakref
from typing import Any

import ferrule
import pytest
from ferrule import FerruleError, QueueClosed, QueueEmpty, QueueFull, WorkQueue


def test_exceptions_subclass_the_stdlib_ones() -> None:
    assert issubclass(QueueFull, queue.Full) and issubclass(QueueFull, FerruleError)
    assert issubclass(QueueEmpty, queue.Empty) and issubclass(QueueEmpty, FerruleError)
    assert issubclass(QueueClosed, FerruleError)
    assert issubclass(QueueClosed, getattr(queue, "ShutDown", QueueClosed))
    q: WorkQueue[int] = WorkQueue(1)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.put(1)
    with pytest.raises(queue.Full):
        q.put_nowait(2)


@pytest.mark.smoke
def test_fifo_and_introspection() -> None:
    q: WorkQueue[int] = WorkQueue(3)
    assert (q.maxsize, q.overflow, q.closed) == (3, "block", False)
    assert q.empty() and not q.full() and len(q) == 0 and q.qsize() == 0
    q.put(1)
    q.put_nowait(2)
    q.put(3, timeout=0.5)
    assert q.full() and len(q) == 3
    assert [q.get(), q.get_nowait(), q.get(timeout=0)] == [1, 2, 3]
    assert repr(q) == "WorkQueue(maxsize=3, overflow='block', qsize=0, closed=False)"
    s = q.stats()
    assert (s.put, s.got, s.rejected, s.dropped, s.high_water, s.size) == (3, 3, 0, 0, 3, 0)
    assert repr(s) == "QueueStats(put=3, got=3, rejected=0, dropped=0, high_water=3, size=0)"
    assert WorkQueue[int] is not WorkQueue  # usable in annotations at run time


def test_full_and_empty_messages_and_rejection_counts() -> None:
    q: WorkQueue[str] = WorkQueue(1)
    with pytest.raises(QueueEmpty, match=r"^queue is empty$"):
        q.get_nowait()
    with pytest.raises(QueueEmpty, match=r"^queue is empty$"):
        q.get(timeout=0)
    t0 = time.monotonic()
    with pytest.raises(QueueEmpty, match=r"^queue is empty \(get timed out\)$"):
        q.get(timeout=0.05)
    assert time.monotonic() - t0 >= 0.05
    q.put("a")
    with pytest.raises(QueueFull, match=r"^queue is full$"):
        q.put_nowait("b")
    with pytest.raises(QueueFull, match=r"^queue is full \(put timed out\)$"):
        q.put("b", timeout=0)
    t0 = time.monotonic()
    with pytest.raises(QueueFull, match=r"^queue is full \(put timed out\)$"):
        q.put("b", timeout=0.05)
    assert time.monotonic() - t0 >= 0.05
    assert q.stats().rejected == 3
    assert q.stats().put == 1


@pytest.mark.parametrize(
    ("overflow", "after", "dropped", "rejected"),
    [
        ("reject", [1, 2], 0, 1),
        ("drop_oldest", [2, 3], 1, 0),
        ("drop_newest", [1, 2], 0, 1),
    ],
)
def test_overflow_policies(overflow: str, after: list[int], dropped: int, rejected: int) -> None:
    q: WorkQueue[int] = WorkQueue(2, overflow=overflow)
    q.put(1)
    q.put(2)
    if overflow == "reject":
        with pytest.raises(QueueFull, match=r"^queue is full$"):
            q.put(3)  # never waits
    else:
        q.put(3)
    assert q.get_many(10) == after
    s = q.stats()
    assert (s.dropped, s.rejected) == (dropped, rejected)
    assert s.put == s.got + s.dropped + s.size


def test_put_many_and_get_many() -> None:
    q: WorkQueue[int] = WorkQueue(4)
    assert q.put_many([]) == 0
    assert q.put_many(range(3)) == 3
    assert q.put_many(iter([3, 4, 5]), timeout=0.01) == 1  # partial on timeout
    assert q.stats().rejected == 2
    assert q.get_many(2) == [0, 1]
    assert q.get_many(10, timeout=0) == [2, 3]
    assert q.get_many(10, timeout=0) == []
    assert q.get_many(10, timeout=0.01) == []
    r: WorkQueue[int] = WorkQueue(2, overflow="reject")
    assert r.put_many([1, 2, 3, 4]) == 2  # partial on reject, no exception
    assert r.stats().rejected == 2
    o: WorkQueue[int] = WorkQueue(2, overflow="drop_oldest")
    assert o.put_many(range(5)) == 5
    assert o.get_many(5) == [3, 4]
    assert o.stats().dropped == 3


def test_put_many_waits_for_room_from_a_consumer() -> None:
    q: WorkQueue[int] = WorkQueue(2)
    got: list[int] = []

    def consume() -> None:
        while len(got) < 10:
            got.extend(q.get_many(3, timeout=5))

    t = threading.Thread(target=consume)
    t.start()
    assert q.put_many(range(10), timeout=5) == 10
    t.join()
    assert got == list(range(10))


def test_close_semantics() -> None:
    q: WorkQueue[int] = WorkQueue(3)
    q.put_many([1, 2, 3])
    q.close()
    q.close()  # idempotent
    assert q.closed
    for put in (lambda: q.put(4), lambda: q.put_nowait(4), lambda: q.put_many([4])):
        with pytest.raises(QueueClosed, match=r"^queue is closed$"):
            put()
    assert q.put_many([]) == 0
    assert q.get() == 1  # getters drain first
    assert q.get_many(1) == [2]
    assert list(q) == [3]
    for get in (q.get, q.get_nowait, lambda: q.get_many(1), lambda: q.get(timeout=1)):
        with pytest.raises(QueueClosed, match=r"^queue is closed$"):
            get()
    s = q.stats()
    assert (s.put, s.got, s.rejected) == (3, 3, 0)


@pytest.mark.smoke
def test_close_wakes_blocked_putters_and_getters() -> None:
    full: WorkQueue[int] = WorkQueue(1)
    full.put(0)
    empty: WorkQueue[int] = WorkQueue(1)
    errors: list[BaseException] = []

    def call(fn: Any) -> None:
        try:
            fn()
        except BaseException as e:
            errors.append(e)

    ts = [
        threading.Thread(target=call, args=(lambda: full.put(1),)),
        threading.Thread(target=call, args=(lambda: full.put_many([1, 2]),)),
        threading.Thread(target=call, args=(empty.get,)),
        threading.Thread(target=call, args=(lambda: empty.get_many(5),)),
    ]
    for t in ts:
        t.start()
    time.sleep(0.05)
    full.close()
    empty.close()
    for t in ts:
        t.join(5)
    assert [type(e) for e in errors] == [QueueClosed] * 4
    assert full.get() == 0


def test_iteration_ends_when_closed_and_drained() -> None:
    q: WorkQueue[int] = WorkQueue(100)
    q.put_many(range(5))

    def closer() -> None:
        time.sleep(0.02)
        q.close()

    threading.Thread(target=closer).start()
    assert list(q) == [0, 1, 2, 3, 4]


class Reentrant:
    """An item whose finaliser calls back into the queue that drops it."""

    def __init__(self, q: WorkQueue[Any], log: list[str]) -> None:
        self.q, self.log = q, log

    def __del__(self) -> None:
        self.log.append(f"del with qsize={self.q.qsize()} stats.put={self.q.stats().put}")


@pytest.mark.parametrize(("overflow", "put"), [("drop_oldest", 2), ("drop_newest", 1)])
def test_dropped_items_are_released_outside_the_lock(overflow: str, put: int) -> None:
    q: WorkQueue[Any] = WorkQueue(1, overflow=overflow)
    log: list[str] = []
    q.put(Reentrant(q, log))
    q.put(Reentrant(q, log))  # one of the two is let go; its __del__ re-enters the queue
    gc.collect()
    assert log == [f"del with qsize=1 stats.put={put}"]
    q.put_many([Reentrant(q, log), Reentrant(q, log)])
    gc.collect()
    assert len(log) == 3


def test_drop_newest_refuses_silently_and_counts_a_rejection() -> None:
    """Guards the drop_newest bookkeeping: a full queue does not take the new item, so
    put_many does not count it and stats() has it in `rejected` (it used to count in
    both `put` and `dropped`, and put_many counted it as accepted); put and put_nowait
    stay silent (no exception), like every drop policy."""
    q: WorkQueue[int] = WorkQueue(2, overflow="drop_newest")
    assert q.put_many(range(5)) == 2
    q.put(5)
    q.put(6, timeout=0)
    q.put_nowait(7)

    async def main() -> None:
        await q.put_async(8)

    asyncio.run(main())
    s = q.stats()
    assert (s.put, s.got, s.dropped, s.rejected, s.size) == (2, 0, 0, 7, 2)
    assert q.get_many(10) == [0, 1]
    assert q.put_many([9, 10, 11]) == 2
    s = q.stats()
    assert s.put == s.got + s.dropped + s.size
    assert (s.put, s.rejected) == (4, 8)


# ---- bad input -----------------------------------------------------------------------


def test_bad_constructor_arguments() -> None:
    with pytest.raises(TypeError, match=r"^maxsize must be an int, not 'str'$"):
        WorkQueue("3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^maxsize must be an int, not 'bool'$"):
        WorkQueue(True)
    with pytest.raises(
        ValueError,
        match=r"^overflow must be 'block', 'reject', 'drop_oldest' or 'drop_newest', not 'x'$",
    ):
        WorkQueue(1, overflow="x")
    with pytest.raises(TypeError, match=r"^overflow must be a str, not 'int'$"):
        WorkQueue(1, overflow=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        WorkQueue(1, "block")  # type: ignore[misc]


def test_bad_call_arguments() -> None:
    q: WorkQueue[int] = WorkQueue(2)
    for call in (
        lambda t: q.put(1, timeout=t),
        lambda t: q.get(timeout=t),
        lambda t: q.get(False, t),  # checked even when it is not used
        lambda t: q.get_many(1, t),
    ):
        with pytest.raises(ValueError, match=r"^timeout must be >= 0$"):
            call(-1)
        with pytest.raises(ValueError, match=r"^timeout must be a finite number of seconds$"):
            call(math.nan)
        with pytest.raises(TypeError, match=r"^timeout must be a number of seconds, not 'str'$"):
            call("1")
    with pytest.raises(ValueError, match=r"^max_items must be >= 1$"):
        q.get_many(0)
    with pytest.raises(TypeError, match=r"^max_items must be an int, not 'float'$"):
        q.get_many(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^items must be an iterable, not 'int'$"):
        q.put_many(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^timeout must be >= 0$"):
        q.put_many([1], timeout=-0.5)
    assert q.stats().put == 0  # nothing was put by a refused call

    def boom() -> Any:
        yield 1
        raise RuntimeError("from the iterable")

    with pytest.raises(RuntimeError, match="from the iterable"):
        q.put_many(boom())
    assert q.qsize() == 0  # all or nothing when the iterable itself fails


def test_hostile_sizes() -> None:
    """Sizes at and beyond the platform's limits: no panic, no memory up front, and a
    refusal that names the argument."""
    q: WorkQueue[int] = WorkQueue(2**63 - 1)
    assert q.maxsize == 2**63 - 1 and not q.full()
    assert q.put_many(range(100)) == 100
    assert q.get_many(2**63 - 1) == list(range(100))
    assert q.get_many(2**63 - 1, timeout=0) == []
    for bad in (2**63, 2**64, 2**200):
        with pytest.raises((ValueError, OverflowError), match=r"^maxsize "):
            WorkQueue(bad)
        with pytest.raises((ValueError, OverflowError), match=r"^max_items "):
            q.get_many(bad)
    for unbounded in (0, -1, -(2**63)):
        assert WorkQueue(unbounded).maxsize == unbounded
    for huge in (1e300, 2**70):
        with pytest.raises(ValueError, match=r"^timeout "):
            q.get(timeout=huge)


# ---- garbage collection -----------------------------------------------------------------


class Node:
    """Something weakly referenceable to hang a reference cycle on."""

    ref: Any = None


def test_gc_collects_a_cycle_through_queued_items() -> None:
    """Guards WorkQueue's GC support: an item that refers back to its queue used to keep
    both alive forever (the queue did not visit its items)."""
    q: WorkQueue[Node] = WorkQueue(4)
    node = Node()
    node.ref = q
    q.put(node)
    dead = weakref.ref(node)
    del node, q
    gc.collect()
    assert dead() is None


def test_gc_collects_an_abandoned_async_getter() -> None:
    """Guards the traversal of asyncio wakers: a task left waiting in get_async() on a
    loop that was closed forms a cycle queue -> waker -> future -> task -> queue."""
    q: WorkQueue[int] = WorkQueue(1)
    loop = asyncio.new_event_loop()
    task = loop.create_task(q.get_async())
    loop.run_until_complete(asyncio.sleep(0.01))  # the task waits: its waker is registered
    dead = weakref.ref(task)
    loop.close()
    del task, loop, q
    gc.collect()
    assert dead() is None


def test_gc_sees_items_and_leaves_live_ones_alone() -> None:
    """The queue reports its items to the collector (gc.get_referents) and a queue that
    is still referenced keeps them: a collection changes nothing in it."""
    q: WorkQueue[Any] = WorkQueue(4)
    items = [[1], {"k": 2}, Node()]
    q.put_many(items)
    assert all(any(r is i for r in gc.get_referents(q)) for i in items)
    assert gc.is_tracked(q)
    del items
    gc.collect()
    got = q.get_many(4)
    assert got[:2] == [[1], {"k": 2}] and isinstance(got[2], Node)
    s = q.stats()
    assert (s.put, s.got, s.dropped) == (3, 3, 0)


# ---- GIL release and KeyboardInterrupt -------------------------------------------------


def test_blocked_get_and_put_release_the_gil() -> None:
    q: WorkQueue[int] = WorkQueue(1)
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(q.get(timeout=10)))
    t.start()
    time.sleep(0.05)  # t is blocked in get(); this thread must still run Python
    spins = 0
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        spins += 1
    q.put(7)
    t.join(5)
    assert got == [7] and spins > 100

    q.put(1)
    t = threading.Thread(target=lambda: q.put(2, timeout=10))
    t.start()
    time.sleep(0.05)
    assert q.get() == 1
    t.join(5)
    assert q.get_nowait() == 2


def _interrupt_after(delay: float, sent: list[float]) -> threading.Thread:
    def fire() -> None:
        time.sleep(delay)
        sent.append(time.monotonic())
        _thread.interrupt_main()

    t = threading.Thread(target=fire)
    t.start()
    return t


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="main")
@pytest.mark.parametrize("op", ["get", "put", "get_many", "put_many", "join"])
def test_ctrl_c_interrupts_a_blocked_call(op: str) -> None:
    q: WorkQueue[int] = WorkQueue(1)
    if not op.startswith("get"):
        q.put(0)  # full, and one task unfinished
    calls = {
        "get": lambda: q.get(),
        "put": lambda: q.put(1),
        "get_many": lambda: q.get_many(5),
        "put_many": lambda: q.put_many([1, 2]),
        "join": lambda: q.join(),
    }
    sent: list[float] = []
    t = _interrupt_after(0.1, sent)
    with pytest.raises(KeyboardInterrupt):
        calls[op]()
    latency = time.monotonic() - sent[0]
    t.join()
    assert latency < 0.2
    assert q.stats().rejected == 0


# ---- asyncio -----------------------------------------------------------------------------


def test_async_get_and_put_with_threads() -> None:
    q: WorkQueue[int] = WorkQueue(1)

    async def main() -> list[int]:
        def produce() -> None:
            for i in range(50):
                q.put(i)
            q.close()

        t = threading.Thread(target=produce)
        t.start()
        out = []
        while True:
            try:
                out.append(await q.get_async())
            except QueueClosed:
                break
        t.join()
        return out

    assert asyncio.run(main()) == list(range(50))


def test_async_put_waits_for_room() -> None:
    q: WorkQueue[int] = WorkQueue(2)

    async def main() -> None:
        def consume() -> None:
            time.sleep(0.02)
            for _ in range(20):
                q.get(timeout=5)

        t = threading.Thread(target=consume)
        t.start()
        for i in range(20):
            await q.put_async(i)
        await asyncio.get_running_loop().run_in_executor(None, t.join)

    asyncio.run(main())
    s = q.stats()
    assert (s.put, s.got, s.rejected) == (20, 20, 0)


def test_async_producers_and_consumers_on_one_loop() -> None:
    q: WorkQueue[int] = WorkQueue(3)

    async def main() -> list[int]:
        async def produce(base: int) -> None:
            for i in range(100):
                await q.put_async(base + i)

        async def consume() -> list[int]:
            return [await q.get_async() for _ in range(100)]

        results = await asyncio.gather(
            *(consume() for _ in range(4)), *(produce(k * 1000) for k in range(4))
        )
        return sorted(x for r in results[:4] for x in r)  # type: ignore[union-attr]

    assert asyncio.run(main()) == sorted(k * 1000 + i for k in range(4) for i in range(100))


def test_async_for_with_async_producers_on_one_loop() -> None:
    """put_async producers and async-for consumers share one loop through a queue of 2;
    closing it after the producers ends every consumer; the counts balance."""
    q: WorkQueue[int] = WorkQueue(2)

    async def main() -> list[list[int]]:
        async def produce(base: int) -> None:
            for i in range(50):
                await q.put_async(base + i)

        async def consume() -> list[int]:
            return [item async for item in q]

        consumers = [asyncio.ensure_future(consume()) for _ in range(3)]
        await asyncio.gather(*(produce(k * 1000) for k in range(4)))
        q.close()
        return await asyncio.wait_for(asyncio.gather(*consumers), 5)

    outs = asyncio.run(main())
    assert sorted(i for out in outs for i in out) == [
        k * 1000 + i for k in range(4) for i in range(50)
    ]
    s = q.stats()
    assert (s.put, s.got, s.dropped, s.size) == (200, 200, 0, 0)


def test_async_for_under_drop_oldest_sees_what_was_not_evicted() -> None:
    q: WorkQueue[int] = WorkQueue(3, overflow="drop_oldest")
    q.put_many(range(10))
    q.close()

    async def main() -> list[int]:
        return [item async for item in q]

    assert asyncio.run(main()) == [7, 8, 9]
    s = q.stats()
    assert (s.put, s.got, s.dropped) == (10, 3, 7)


def test_cancelled_getter_loses_no_item() -> None:
    q: WorkQueue[str] = WorkQueue(4)

    async def main() -> str:
        a = asyncio.ensure_future(q.get_async())
        b = asyncio.ensure_future(q.get_async())
        await asyncio.sleep(0.01)  # both are waiting; a registered first
        q.put("x")  # wakes a (scheduled on the loop)...
        a.cancel()  # ...but a is cancelled before it runs: b must get the item
        with pytest.raises(asyncio.CancelledError):
            await a
        return await asyncio.wait_for(b, 5)

    assert asyncio.run(main()) == "x"
    assert q.stats().got == 1


def test_cancelled_waiting_getter_and_putter_leave_the_queue_intact() -> None:
    q: WorkQueue[str] = WorkQueue(1)

    async def main() -> None:
        g = asyncio.ensure_future(q.get_async())
        await asyncio.sleep(0.01)
        g.cancel()
        with pytest.raises(asyncio.CancelledError):
            await g
        q.put("kept")
        p = asyncio.ensure_future(q.put_async("never"))
        await asyncio.sleep(0.01)
        p.cancel()
        with pytest.raises(asyncio.CancelledError):
            await p

    asyncio.run(main())
    assert q.get_nowait() == "kept" and q.empty()
    s = q.stats()
    assert (s.put, s.got, s.rejected) == (1, 1, 0)


def test_cancelled_putter_passes_its_wakeup_on() -> None:
    q: WorkQueue[str] = WorkQueue(1)
    q.put("first")

    async def main() -> None:
        a = asyncio.ensure_future(q.put_async("a"))
        b = asyncio.ensure_future(q.put_async("b"))
        await asyncio.sleep(0.01)
        assert q.get() == "first"  # wakes a...
        a.cancel()  # ...which gives up: b must be woken instead
        with pytest.raises(asyncio.CancelledError):
            await a
        await asyncio.wait_for(b, 5)

    asyncio.run(main())
    assert q.get_nowait() == "b"


def test_close_wakes_async_waiters() -> None:
    q: WorkQueue[int] = WorkQueue(1)
    full: WorkQueue[int] = WorkQueue(1)
    full.put(0)

    async def main() -> list[type[BaseException]]:
        tasks = [asyncio.ensure_future(q.get_async()), asyncio.ensure_future(full.put_async(1))]
        await asyncio.sleep(0.01)
        threading.Thread(target=q.close).start()
        threading.Thread(target=full.close).start()
        res = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        return [type(r) for r in res]  # type: ignore[misc]

    assert asyncio.run(main()) == [QueueClosed, QueueClosed]


def test_async_policies_never_wait() -> None:
    q: WorkQueue[int] = WorkQueue(1, overflow="reject")
    d: WorkQueue[int] = WorkQueue(1, overflow="drop_oldest")

    async def main() -> None:
        await q.put_async(1)
        with pytest.raises(QueueFull, match=r"^queue is full$"):
            await q.put_async(2)
        await d.put_async(1)
        await d.put_async(2)
        assert await d.get_async() == 2

    asyncio.run(main())


def test_waker_of_a_closed_loop_passes_the_wakeup_on() -> None:
    q: WorkQueue[int] = WorkQueue(1)
    loop = asyncio.new_event_loop()
    dead = loop.create_task(q.get_async())
    loop.run_until_complete(asyncio.sleep(0.01))  # dead's getter is registered
    loop.close()  # ...and its loop is gone: its waker raises RuntimeError

    async def main() -> int:
        g = asyncio.ensure_future(q.get_async())
        await asyncio.sleep(0.01)
        q.put(5)
        return await asyncio.wait_for(g, 5)

    assert asyncio.run(main()) == 5
    del dead


def test_public_names() -> None:
    for name in ("WorkQueue", "QueueStats", "TaskPool", "TaskPoolStats"):
        assert name in ferrule.__all__


def test_an_exception_from_the_items_own_iter_propagates() -> None:
    """Regression: put_many replaced any error from ``iter(items)`` (KeyboardInterrupt
    included) by TypeError; only "not iterable" is a TypeError naming the argument."""

    class Hostile:
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise KeyboardInterrupt

    q: WorkQueue[int] = WorkQueue(4)
    with pytest.raises(KeyboardInterrupt):
        q.put_many(Hostile())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="items must be an iterable, not 'int'"):
        q.put_many(5)  # type: ignore[arg-type]


def test_a_waker_that_raises_is_reported_and_the_wake_up_passes_on() -> None:
    """A waker failing with anything but the RuntimeError of a closed loop is reported to
    sys.unraisablehook (KeyboardInterrupt included) and the wake-up goes to the next."""
    import sys

    seen: list[BaseException] = []
    woken: list[int] = []

    def bad() -> None:
        raise KeyboardInterrupt

    q: WorkQueue[int] = WorkQueue(4)
    pending = object()
    assert q._get_or_wait(bad, pending) is pending
    assert q._get_or_wait(lambda: woken.append(1), pending) is pending
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_value)
    try:
        q.put(1)
    finally:
        sys.unraisablehook = old
    assert [type(e) for e in seen] == [KeyboardInterrupt]
    assert woken == [1]


# ---- queue.Queue compatibility ------------------------------------------------------------

QUEUE_METHODS = [
    "put",
    "get",
    "put_nowait",
    "get_nowait",
    "qsize",
    "empty",
    "full",
    "task_done",
    "join",
]


@pytest.mark.parametrize("name", [*QUEUE_METHODS, "shutdown"])
def test_queue_queue_methods_have_its_signatures(name: str) -> None:
    def params(fn: Any) -> list[tuple[str, Any]]:
        ps = list(inspect.signature(fn).parameters.values())[1:]  # without self
        return [(p.name, p.default) for p in ps]

    if name == "shutdown" and not hasattr(queue.Queue, "shutdown"):
        assert params(WorkQueue.shutdown) == [("immediate", False)]  # as in 3.13
        return
    assert params(getattr(WorkQueue, name)) == params(getattr(queue.Queue, name))


def test_block_and_timeout_as_queue_queue_takes_them() -> None:
    q: WorkQueue[int] = WorkQueue(2)
    q.put(1, True, 1.0)
    q.put(2, block=True, timeout=0.5)
    for refused in (
        lambda: q.put(3, False),
        lambda: q.put(3, 0),
        lambda: q.put(3, block=False, timeout=5),  # timeout unused without block
        lambda: q.put(3, True, 0.01),
    ):
        with pytest.raises(queue.Full):
            refused()
    assert q.get(True, 1.0) == 1
    assert q.get(block=1) == 2
    for empty in (lambda: q.get(False), lambda: q.get(0), lambda: q.get(True, 0.01)):
        with pytest.raises(queue.Empty):
            empty()
    q.put(4, timeout=0.1)  # the keyword forms of before still work
    assert q.get(timeout=0.1) == 4
    s = q.stats()
    assert (s.put, s.got, s.rejected) == (3, 3, 4)


def test_block_and_immediate_are_flags_and_a_float_is_refused() -> None:
    """A float in block's place is most likely a timeout passed by position, which
    before block existed meant a timeout: refused, not read as block=True (a wait with
    no end)."""
    q: WorkQueue[int] = WorkQueue(1)
    q.put(0)
    for call, arg, got in (
        (lambda: q.put(1, 0.5), "block", "float"),
        (lambda: q.get(0.5), "block", "float"),
        (lambda: q.put(1, "yes"), "block", "str"),
        (lambda: q.get(None), "block", "NoneType"),
        (lambda: q.shutdown(1.5), "immediate", "float"),
        (lambda: q.shutdown(immediate=None), "immediate", "NoneType"),
    ):
        with pytest.raises(TypeError, match=rf"^{arg} must be a bool, not '{got}'$"):
            call()
    assert (q.qsize(), q.closed, q.stats().rejected) == (1, False, 0)


@pytest.mark.parametrize("maxsize", [0, -1])
def test_maxsize_zero_or_less_has_the_implicit_bound(maxsize: int) -> None:
    """queue.Queue's "no bound": maxsize is reported as given, full() stays false and
    nothing waits; the bound behind it (2**31 items, beyond which a put raises
    QueueFull) is pinned by the core's tests."""
    q: WorkQueue[int] = WorkQueue(maxsize)
    assert (q.maxsize, q.overflow, q.full()) == (maxsize, "block", False)
    assert repr(q) == f"WorkQueue(maxsize={maxsize}, overflow='block', qsize=0, closed=False)"
    assert q.put_many(range(10_000)) == 10_000
    q.put(1, False)
    q.put_nowait(2)
    assert not q.full() and q.qsize() == 10_002
    d: WorkQueue[int] = WorkQueue(maxsize=0, overflow="drop_oldest")
    assert (d.maxsize, d.overflow) == (0, "drop_oldest")


# ---- task_done and join ---------------------------------------------------------------------


def test_task_done_counts_down_what_was_put() -> None:
    q: WorkQueue[str] = WorkQueue(4)
    assert q.unfinished_tasks == 0
    q.join()  # nothing unfinished: at once
    with pytest.raises(ValueError, match=r"^task_done\(\) called too many times$"):
        q.task_done()
    q.put("a")
    q.put_nowait("b")
    assert q.put_many("cd") == 2
    assert q.unfinished_tasks == 4
    assert q.get() == "a"
    assert q.unfinished_tasks == 4  # got is not done
    q.task_done()
    assert q.unfinished_tasks == 3
    assert q.get_many(3) == ["b", "c", "d"]
    for _ in range(3):
        q.task_done()
    q.join()
    with pytest.raises(ValueError, match=r"^task_done\(\) called too many times$"):
        q.task_done()
    assert q.unfinished_tasks == 0


def test_items_that_never_reach_a_getter_count_as_done() -> None:
    o: WorkQueue[int] = WorkQueue(2, overflow="drop_oldest")
    o.put_many(range(5))
    assert o.unfinished_tasks == 2  # three evicted
    n: WorkQueue[int] = WorkQueue(2, overflow="drop_newest")
    n.put_many(range(5))
    r: WorkQueue[int] = WorkQueue(2, overflow="reject")
    r.put_many(range(5))
    assert n.unfinished_tasks == r.unfinished_tasks == 2  # refused ones never entered
    o.shutdown(immediate=True)
    assert o.unfinished_tasks == 0
    o.join()


def test_join_waits_for_the_last_task_done_and_releases_the_gil() -> None:
    q: WorkQueue[int] = WorkQueue(4)
    q.put_many([1, 2])
    joined = threading.Event()
    t = threading.Thread(target=lambda: (q.join(), joined.set()))
    t.start()
    assert q.get() == 1
    q.task_done()
    assert not joined.wait(0.05)  # one left; this thread ran meanwhile (GIL released)
    assert q.get() == 2
    q.task_done()
    assert joined.wait(5)
    t.join(5)


def test_join_is_not_ended_by_close() -> None:
    """As queue.Queue's join after shutdown(): it waits for the items got to be done."""
    q: WorkQueue[int] = WorkQueue(4)
    q.put(1)
    q.close()
    joined = threading.Event()
    t = threading.Thread(target=lambda: (q.join(), joined.set()))
    t.start()
    assert not joined.wait(0.05)
    assert q.get() == 1
    q.task_done()
    assert joined.wait(5)
    t.join(5)


# ---- shutdown ----------------------------------------------------------------------------


def test_shutdown_is_close_and_immediate_discards_what_is_queued() -> None:
    q: WorkQueue[int] = WorkQueue(4)
    q.put_many([1, 2, 3])
    q.shutdown()
    assert q.closed
    for put in (lambda: q.put(4), lambda: q.put(4, False), lambda: q.put_nowait(4)):
        with pytest.raises(QueueClosed, match=r"^queue is closed$"):
            put()
    assert q.get() == 1  # a plain shutdown drains
    q.shutdown(immediate=True)  # after a plain one
    for get in (q.get, q.get_nowait, lambda: q.get(False), lambda: q.get(True, 5)):
        with pytest.raises(QueueClosed, match=r"^queue is closed$"):
            get()
    s = q.stats()
    assert (s.put, s.got, s.dropped, s.size) == (3, 1, 2, 0)
    assert q.unfinished_tasks == 1  # the one got, not yet done
    q.task_done()
    q.join()


def test_shutdown_transitions() -> None:
    """CPython's test_shutdown_allowed_transitions, with closed for is_shutdown."""
    q: WorkQueue[int] = WorkQueue(0)
    assert not q.closed
    q.shutdown()
    assert q.closed
    q.shutdown(immediate=True)
    assert q.closed
    q.shutdown(immediate=False)
    q.close()
    assert q.closed


def test_immediate_shutdown_releases_blocked_threads() -> None:
    full: WorkQueue[int] = WorkQueue(1)
    full.put(0)
    empty: WorkQueue[int] = WorkQueue(1)
    outcomes: list[str] = []
    lock = threading.Lock()

    def call(name: str, fn: Any) -> None:
        try:
            fn()
            out = f"{name}: returned"
        except QueueClosed:
            out = f"{name}: closed"
        with lock:
            outcomes.append(out)

    ts = [
        threading.Thread(target=call, args=("put", lambda: full.put(1))),
        threading.Thread(target=call, args=("join", full.join)),
        threading.Thread(target=call, args=("get", empty.get)),
    ]
    for t in ts:
        t.start()
    time.sleep(0.05)  # let them wait (the outcomes are the same if one has not yet)
    full.shutdown(immediate=True)
    empty.shutdown(immediate=True)
    for t in ts:
        t.join(5)
    assert sorted(outcomes) == ["get: closed", "join: returned", "put: closed"]
    assert full.stats().dropped == 1 and full.unfinished_tasks == 0


def test_immediate_shutdown_releases_the_items_outside_the_lock() -> None:
    q: WorkQueue[Any] = WorkQueue(4)
    log: list[str] = []
    q.put_many([Reentrant(q, log), Reentrant(q, log)])
    q.shutdown(immediate=True)
    gc.collect()
    assert log == ["del with qsize=0 stats.put=2"] * 2


# ---- asyncio join ------------------------------------------------------------------------


def test_join_async_waits_for_task_done_from_a_thread() -> None:
    q: WorkQueue[int] = WorkQueue(8)
    q.put_many(range(5))
    done: list[int] = []

    def work() -> None:
        for item in q:
            done.append(item)
            q.task_done()

    async def main() -> list[int]:
        t = threading.Thread(target=work)
        t.start()
        await asyncio.wait_for(q.join_async(), 5)
        seen = list(done)  # every item was done before join_async returned
        q.close()
        await asyncio.get_running_loop().run_in_executor(None, t.join)
        return seen

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_join_async_with_async_workers_on_one_loop() -> None:
    q: WorkQueue[int] = WorkQueue(3)
    total: list[int] = []

    async def main() -> int:
        async def worker() -> None:
            async for item in q:
                await asyncio.sleep(0)
                total.append(item)
                q.task_done()

        workers = [asyncio.ensure_future(worker()) for _ in range(3)]
        for i in range(50):
            await q.put_async(i)
        await asyncio.wait_for(q.join_async(), 5)
        done = sum(total)
        q.close()
        await asyncio.gather(*workers)
        return done

    assert asyncio.run(main()) == sum(range(50))


def test_cancelled_join_async_loses_nothing() -> None:
    """A joiner cancelled while it waits, or after its wake-up but before it ran,
    changes nothing: the items, the unfinished count and the other joiners are as if it
    had never waited."""
    q: WorkQueue[str] = WorkQueue(4)
    q.put_many("ab")

    async def main() -> None:
        waiting = asyncio.ensure_future(q.join_async())
        woken = asyncio.ensure_future(q.join_async())
        other = asyncio.ensure_future(q.join_async())
        await asyncio.sleep(0.01)  # all three registered
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert q.unfinished_tasks == 2 and q.qsize() == 2
        assert q.get_many(2) == ["a", "b"]
        q.task_done()
        q.task_done()  # wakes the joiners (scheduled on this loop)...
        woken.cancel()  # ...but this one is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await woken
        await asyncio.wait_for(other, 5)

    asyncio.run(main())
    s = q.stats()
    assert (s.put, s.got, s.dropped, q.unfinished_tasks) == (2, 2, 0, 0)
    with pytest.raises(ValueError, match=r"^task_done\(\) called too many times$"):
        q.task_done()


def test_immediate_shutdown_wakes_async_joiners_and_waiters() -> None:
    q: WorkQueue[int] = WorkQueue(1)
    q.put(1)
    e: WorkQueue[int] = WorkQueue(1)

    async def main() -> list[Any]:
        tasks = [
            asyncio.ensure_future(q.join_async()),
            asyncio.ensure_future(q.put_async(2)),
            asyncio.ensure_future(e.get_async()),
        ]
        await asyncio.sleep(0.01)
        threading.Thread(target=q.shutdown, args=(True,)).start()
        threading.Thread(target=e.shutdown, kwargs={"immediate": True}).start()
        res = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        return [r if r is None else type(r) for r in res]

    assert asyncio.run(main()) == [None, QueueClosed, QueueClosed]


def test_gc_collects_an_abandoned_async_joiner() -> None:
    """A task left waiting in join_async() on a loop that was closed forms a cycle
    queue -> waker -> future -> task -> queue; the queue visits its joiners."""
    q: WorkQueue[int] = WorkQueue(1)
    q.put(1)
    loop = asyncio.new_event_loop()
    task = loop.create_task(q.join_async())
    loop.run_until_complete(asyncio.sleep(0.01))  # the task waits: its waker is registered
    assert any(isinstance(r, functools.partial) for r in gc.get_referents(q))
    dead = weakref.ref(task)
    loop.close()
    del task, loop, q
    gc.collect()
    assert dead() is None
