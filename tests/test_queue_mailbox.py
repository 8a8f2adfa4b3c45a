"""The mailbox both WorkQueue and a pull Subscription are (src/py/mailbox.rs): the same
get, asyncio getter, wake-up, close and garbage-collection behaviour, pinned on both."""

from __future__ import annotations

import asyncio
import gc
import re
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from ferrule import QueueClosed, QueueEmpty, SignalBus, WorkQueue


@dataclass
class Box:
    """One mailbox and how to feed it, read a value back, and close it."""

    mailbox: Any
    put: Callable[[Any], None]
    value: Callable[[Any], Any]
    close: Callable[[], object]
    words: tuple[str, str, str]  # empty, timed out, closed


def _work_queue() -> Box:
    q: WorkQueue[Any] = WorkQueue(8)
    words = ("queue is empty", "queue is empty (get timed out)", "queue is closed")
    return Box(q, q.put, lambda item: item, q.close, words)


def _subscription(overflow: str = "drop_oldest") -> Box:
    bus = SignalBus()
    sub = bus.subscribe("t", maxsize=8, overflow=overflow)
    words = ("no signal queued", "no signal queued (get timed out)", "subscription is cancelled")
    return Box(sub, lambda x: bus.publish("t", x), lambda s: s.data, sub.cancel, words)


MAKERS = pytest.mark.parametrize(
    "make", [_work_queue, _subscription], ids=["WorkQueue", "Subscription"]
)


@pytest.fixture(params=[_work_queue, _subscription], ids=["WorkQueue", "Subscription"])
def box(request: pytest.FixtureRequest) -> Iterator[Box]:
    b: Box = request.param()
    yield b
    b.close()


def _wakers(mailbox: Any) -> list[Any]:
    """The asyncio wakers the mailbox reports to the collector."""
    return [r for r in gc.get_referents(mailbox) if isinstance(r, partial)]


def test_get_messages(box: Box) -> None:
    empty, timed_out, closed = box.words
    with pytest.raises(QueueEmpty, match=f"^{empty}$"):
        box.mailbox.get_nowait()
    with pytest.raises(QueueEmpty, match=f"^{empty}$"):
        box.mailbox.get(timeout=0)
    with pytest.raises(QueueEmpty, match=f"^{re.escape(timed_out)}$"):
        box.mailbox.get(timeout=0.01)
    box.put(1)
    box.close()
    assert box.value(box.mailbox.get_nowait()) == 1  # closed: what is queued stays readable
    for get in (box.mailbox.get_nowait, box.mailbox.get):
        with pytest.raises(QueueClosed, match=f"^{closed}$"):
            get()
    assert list(box.mailbox) == []  # iteration ends once closed and drained


def test_a_woken_getter_that_is_cancelled_passes_the_item_on(box: Box) -> None:
    """An item whose wake-up went to a getter cancelled before it ran goes to the next
    getter: nothing is lost."""

    async def main() -> Any:
        a = asyncio.ensure_future(box.mailbox.get_async())
        b = asyncio.ensure_future(box.mailbox.get_async())
        await asyncio.sleep(0.01)  # both wait; a registered first
        box.put("x")  # wakes a (scheduled on this loop)...
        a.cancel()  # ...which is cancelled before it runs: b must get the item
        with pytest.raises(asyncio.CancelledError):
            await a
        return box.value(await asyncio.wait_for(b, 5))

    assert asyncio.run(main()) == "x"
    assert box.mailbox.qsize() == 0


def test_a_cancelled_waiting_getter_leaves_nothing_behind(box: Box) -> None:
    async def main() -> None:
        g = asyncio.ensure_future(box.mailbox.get_async())
        await asyncio.sleep(0.01)
        g.cancel()
        with pytest.raises(asyncio.CancelledError):
            await g

    asyncio.run(main())
    assert _wakers(box.mailbox) == []  # its waker was taken out
    box.put("kept")
    assert box.value(box.mailbox.get_nowait()) == "kept"


def test_get_async_is_woken_by_another_thread(box: Box) -> None:
    async def main() -> list[Any]:
        threading.Timer(0.02, lambda: [box.put(i) for i in range(3)]).start()
        return [box.value(await box.mailbox.get_async()) for _ in range(3)]

    assert asyncio.run(main()) == [0, 1, 2]


def test_close_wakes_async_getters(box: Box) -> None:
    async def main() -> list[type[BaseException]]:
        tasks = [asyncio.ensure_future(box.mailbox.get_async()) for _ in range(2)]
        await asyncio.sleep(0.01)
        threading.Thread(target=box.close).start()
        res = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        return [type(r) for r in res]  # type: ignore[misc]

    assert asyncio.run(main()) == [QueueClosed, QueueClosed]


def test_a_waker_of_a_closed_loop_passes_the_wake_up_on(box: Box) -> None:
    loop = asyncio.new_event_loop()
    dead = loop.create_task(box.mailbox.get_async())
    loop.run_until_complete(asyncio.sleep(0.01))  # dead's waker is registered
    loop.close()  # ...and its loop is gone: calling its waker raises RuntimeError

    async def main() -> Any:
        g = asyncio.ensure_future(box.mailbox.get_async())
        await asyncio.sleep(0.01)
        box.put(5)
        return box.value(await asyncio.wait_for(g, 5))

    assert asyncio.run(main()) == 5
    del dead


def test_a_waker_that_raises_is_reported_and_the_wake_up_passes_on(box: Box) -> None:
    seen: list[BaseException] = []
    woken: list[int] = []

    def bad() -> None:
        raise KeyboardInterrupt

    pending = object()
    assert box.mailbox._get_or_wait(bad, pending) is pending
    assert box.mailbox._get_or_wait(lambda: woken.append(1), pending) is pending
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_value)  # type: ignore[assignment]
    try:
        box.put(1)
    finally:
        sys.unraisablehook = old
    assert [type(e) for e in seen] == [KeyboardInterrupt]
    assert woken == [1]


@MAKERS
def test_gc_collects_an_abandoned_async_getter(make: Callable[[], Box]) -> None:
    """A task left waiting in get_async() on a loop that was closed forms a cycle
    mailbox -> waker -> future -> task -> mailbox (through the bus for a subscription);
    the collector sees all of it."""
    box = make()
    loop = asyncio.new_event_loop()
    task = loop.create_task(box.mailbox.get_async())
    loop.run_until_complete(asyncio.sleep(0.01))  # the task waits: its waker is registered
    assert len(_wakers(box.mailbox)) == 1
    dead = weakref.ref(task)
    loop.close()
    del task, loop, box
    gc.collect()
    assert dead() is None


# ---- async for ---------------------------------------------------------------------------


async def _collect(box: Box, out: list[Any]) -> None:
    async for item in box.mailbox:
        out.append(box.value(item))


def test_async_for_yields_in_order_and_ends_once_closed_and_drained(box: Box) -> None:
    assert box.mailbox.__aiter__() is box.mailbox
    for i in range(5):
        box.put(i)

    async def main() -> list[Any]:
        got: list[Any] = []
        task = asyncio.ensure_future(_collect(box, got))
        await asyncio.sleep(0.01)  # drained what was queued, now waits
        assert got == [0, 1, 2, 3, 4] and not task.done()
        box.put(5)
        await asyncio.sleep(0.01)
        threading.Thread(target=box.close).start()  # ends the loop from another thread
        await asyncio.wait_for(task, 5)
        again: list[Any] = []
        await _collect(box, again)  # closed and drained: ends at once
        assert again == []
        with pytest.raises(StopAsyncIteration):
            await box.mailbox.__anext__()
        return got

    assert asyncio.run(main()) == [0, 1, 2, 3, 4, 5]


def test_async_for_drains_what_was_queued_before_the_close(box: Box) -> None:
    for i in range(3):
        box.put(i)
    box.close()

    async def main() -> list[Any]:
        return [box.value(item) async for item in box.mailbox]

    assert asyncio.run(main()) == [0, 1, 2]


def test_a_task_cancelled_in_async_for_loses_no_item(box: Box) -> None:
    """Cancelling a task waiting in __anext__ after an item's wake-up went to it: the
    other consumer gets the item."""

    async def main() -> tuple[list[Any], list[Any]]:
        got_a: list[Any] = []
        got_b: list[Any] = []
        a = asyncio.ensure_future(_collect(box, got_a))
        await asyncio.sleep(0.01)  # a registered first
        b = asyncio.ensure_future(_collect(box, got_b))
        await asyncio.sleep(0.01)
        box.put("x")  # wakes a (scheduled on this loop)...
        a.cancel()  # ...which is cancelled before it runs: b must get the item
        with pytest.raises(asyncio.CancelledError):
            await a

        async def b_got_it() -> None:  # without a close (which would wake b anyway)
            while not got_b:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(b_got_it(), 5)
        box.close()
        await asyncio.wait_for(b, 5)
        return got_a, got_b

    assert asyncio.run(main()) == ([], ["x"])
    assert _wakers(box.mailbox) == []


def test_a_task_cancelled_in_async_for_leaves_nothing_behind(box: Box) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(_collect(box, []))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert _wakers(box.mailbox) == []
    box.put("kept")
    assert box.value(box.mailbox.get_nowait()) == "kept"


@pytest.mark.parametrize(
    "make", [_work_queue, partial(_subscription, "block")], ids=["WorkQueue", "Subscription"]
)
def test_threads_put_while_tasks_consume_with_async_for(
    make: Callable[[], Box], threads: int
) -> None:
    """Producer threads and consumer tasks on one loop, through a mailbox of 8 that
    blocks its producers: every item arrives once, each producer's items in order."""
    box = make()
    per_thread = 200

    def produce(t: int) -> None:
        for i in range(per_thread):
            box.put((t, i))

    async def main() -> list[list[Any]]:
        outs: list[list[Any]] = [[] for _ in range(4)]
        tasks = [asyncio.ensure_future(_collect(box, out)) for out in outs]
        producers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
        for p in producers:
            p.start()
        loop = asyncio.get_running_loop()
        for p in producers:
            await loop.run_in_executor(None, p.join)
        box.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return outs

    outs = asyncio.run(main())
    everything = sorted(item for out in outs for item in out)
    assert everything == [(t, i) for t in range(threads) for i in range(per_thread)]
    for out in outs:  # one consumer sees each producer's items in the order put
        for t in range(threads):
            mine = [i for tt, i in out if tt == t]
            assert mine == sorted(mine)
