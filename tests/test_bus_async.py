"""SignalBus async handlers: delivery as tasks on an event loop (the subscriber's running
loop, or ``loop=``), in order and one at a time per subscription, bounded mailboxes,
errors counted and logged, cancellation and loop shutdown without pending-task warnings,
weak handlers, garbage collection, and threads publishing into tasks."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from ferrule import Signal, SignalBus, SubscriptionStats


def balanced(s: SubscriptionStats) -> bool:
    return s.accepted == s.delivered + s.dropped + s.queued


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own."""
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    t.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.close()


@pytest.fixture
def no_asyncio_complaints(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No 'Task was destroyed but it is pending' (or any other asyncio error log), and no
    'coroutine was never awaited' warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            yield
            gc.collect()
    complaints = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert complaints == []


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yields to the loop until ``pred()`` (a check of state other tasks change)."""
    async with asyncio.timeout(timeout) if hasattr(asyncio, "timeout") else _nullctx():
        while not pred():
            await asyncio.sleep(0.001)


class _nullctx:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]


# ---- delivery ---------------------------------------------------------------------------


def test_async_handler_gets_every_signal_in_order_one_at_a_time(
    no_asyncio_complaints: None,
) -> None:
    async def main() -> None:
        bus = SignalBus()
        got: list[int] = []
        running = 0
        most = 0
        loop_thread = threading.get_ident()
        threads: set[int] = set()

        async def handler(signal: Signal) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            threads.add(threading.get_ident())
            await asyncio.sleep(0)
            got.append(signal.data)
            running -= 1

        sub = bus.subscribe("job.*", handler)
        for i in range(200):
            assert bus.publish("job.done", i) == 1
        await until(lambda: len(got) == 200)
        assert got == list(range(200))
        assert most == 1
        assert threads == {loop_thread}
        s = sub.stats()
        assert (s.accepted, s.delivered, s.errors) == (200, 200, 0)

    run(main())


def test_subscriptions_on_one_loop_run_concurrently() -> None:
    async def main() -> None:
        bus = SignalBus()
        both = asyncio.Event()
        entered: list[str] = []

        async def wait_for_the_other(signal: Signal) -> None:
            entered.append(signal.data)
            if len(entered) == 2:
                both.set()
            await both.wait()

        bus.subscribe("x", wait_for_the_other)
        bus.subscribe("x", wait_for_the_other)
        bus.publish("x", "go")
        await asyncio.wait_for(both.wait(), 5)

    run(main())


def test_async_callable_forms_are_detected() -> None:
    class Callable_:
        def __init__(self) -> None:
            self.got: list[Any] = []

        async def __call__(self, signal: Signal) -> None:
            self.got.append(signal.data)

    async def tagged(tag: str, out: list[Any], signal: Signal) -> None:
        out.append((tag, signal.data))

    async def main() -> None:
        bus = SignalBus()
        obj = Callable_()
        out: list[Any] = []
        bus.subscribe("a", obj, weak=False)
        bus.subscribe("a", functools.partial(tagged, "p", out))
        bus.publish("a", 1)
        await until(lambda: obj.got == [1] and out == [("p", 1)])

    run(main())


def test_loop_argument_delivers_on_that_loop_from_any_thread(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    bus = SignalBus()
    done = threading.Event()
    seen: list[tuple[Any, int]] = []

    async def handler(signal: Signal) -> None:
        assert asyncio.get_running_loop() is loop_thread
        seen.append((signal.data, threading.get_ident()))
        if signal.data == 9:
            done.set()

    sub = bus.subscribe("t", handler, loop=loop_thread)
    for i in range(10):
        bus.publish("t", i)
    assert done.wait(5)
    assert [d for d, _ in seen] == list(range(10))
    assert len({t for _, t in seen}) == 1 and seen[0][1] != threading.get_ident()
    sub.cancel()


def test_a_plain_function_returning_an_awaitable_runs_on_the_given_loop(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    bus = SignalBus()
    done = threading.Event()
    calls: list[str] = []

    async def later(signal: Signal) -> None:
        calls.append("awaited")
        done.set()

    def handler(signal: Signal) -> Awaitable[None]:
        calls.append("called")
        return later(signal)

    bus.subscribe("t", handler, loop=loop_thread)
    bus.publish("t")
    assert done.wait(5)
    assert calls == ["called", "awaited"]


def test_a_sync_handler_with_loop_runs_on_the_loop(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    bus = SignalBus()
    where: list[asyncio.AbstractEventLoop] = []
    done = threading.Event()

    def handler(signal: Signal) -> None:
        where.append(asyncio.get_running_loop())
        done.set()

    bus.subscribe("t", handler, loop=loop_thread)
    bus.publish("t")
    assert done.wait(5)
    assert where == [loop_thread]


def test_a_thread_handler_returning_a_coroutine_counts_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = SignalBus()

    async def coro() -> None:
        raise AssertionError("never run")

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        sub = bus.subscribe("t", lambda s: coro())
        with caplog.at_level(logging.ERROR, logger="ferrule.bus"):
            bus.publish("t")
            deadline = threading.Event()
            for _ in range(500):
                if sub.stats().errors:
                    break
                deadline.wait(0.01)
        sub.cancel()
        gc.collect()
    assert sub.stats().errors == 1
    assert any("awaitable" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


# ---- errors and arguments ---------------------------------------------------------------


def test_an_async_handler_without_a_loop_is_a_clear_error() -> None:
    async def handler(signal: Signal) -> None:
        pass

    bus = SignalBus()
    with pytest.raises(RuntimeError, match=r"event loop.*loop="):
        bus.subscribe("a", handler)
    assert bus.subscriptions() == []


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"handler": print, "loop": 1}, TypeError, "loop must be an asyncio event loop"),
        ({"loop": asyncio.new_event_loop}, TypeError, "loop is for subscriptions with a handler"),
    ],
)
def test_bad_loop_arguments(kwargs: dict[str, Any], exc: type[Exception], message: str) -> None:
    bus = SignalBus()
    with pytest.raises(exc, match=message):
        bus.subscribe("a", **kwargs)
    assert bus.subscriptions() == []


def test_a_closed_loop_is_refused() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    bus = SignalBus()
    with pytest.raises(RuntimeError, match="closed"):
        bus.subscribe("a", print, loop=loop)
    assert bus.subscriptions() == []


def test_handler_exceptions_are_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> SubscriptionStats:
        bus = SignalBus()
        ok: list[int] = []

        async def handler(signal: Signal) -> None:
            if signal.data % 2:
                raise ValueError(f"odd {signal.data}")
            await asyncio.sleep(0)
            ok.append(signal.data)

        sub = bus.subscribe("n", handler)
        for i in range(6):
            bus.publish("n", i)
        await until(lambda: sub.stats().delivered == 6 and len(ok) == 3)
        await until(lambda: sub.stats().errors == 3)
        return sub.stats()

    with caplog.at_level(logging.ERROR, logger="ferrule.bus"):
        stats = run(main())
    assert stats.errors == 3
    messages = [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    assert messages == ["odd 1", "odd 3", "odd 5"]


def test_a_handler_raising_cancelled_error_itself_is_an_error_not_the_end() -> None:
    if not hasattr(asyncio.Task, "cancelling"):
        pytest.skip("3.10 cannot tell a handler's CancelledError from the task's")

    async def main() -> None:
        bus = SignalBus()
        got: list[int] = []

        async def handler(signal: Signal) -> None:
            if signal.data == 0:
                raise asyncio.CancelledError
            got.append(signal.data)

        sub = bus.subscribe("n", handler)
        bus.publish("n", 0)
        bus.publish("n", 1)
        await until(lambda: got == [1])
        assert sub.active and sub.stats().errors == 1

    run(main())


# ---- re-entrancy and bounds -------------------------------------------------------------


def test_handler_may_publish_and_subscribe() -> None:
    async def main() -> None:
        bus = SignalBus()
        echoes: list[Any] = []

        async def echo(signal: Signal) -> None:
            echoes.append(signal.data)

        async def relay(signal: Signal) -> None:
            if signal.data == "subscribe":
                bus.subscribe("echo", echo)
            else:
                bus.publish("echo", signal.data)

        bus.subscribe("in", relay)
        bus.publish("in", "subscribe")
        await until(lambda: len(bus.subscriptions()) == 2)
        bus.publish("in", "hello")
        await until(lambda: echoes == ["hello"])

    run(main())


def test_publishing_on_the_loop_into_its_full_block_mailbox_is_refused() -> None:
    """The loop's own thread must never wait for room that only the loop can make."""

    async def main() -> None:
        bus = SignalBus()
        got: list[int] = []

        async def handler(signal: Signal) -> None:
            got.append(signal.data)

        sub = bus.subscribe("b", handler, maxsize=2, overflow="block")
        taken = [bus.publish("b", i) for i in range(5)]
        assert taken == [1, 1, 0, 0, 0]
        await until(lambda: got == [0, 1])
        assert bus.publish("b", 5) == 1
        await until(lambda: got == [0, 1, 5])
        s = sub.stats()
        assert (s.rejected, s.delivered) == (3, 3)

    run(main())


def test_threads_publishing_into_a_block_mailbox_wait_without_blocking_the_loop(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    bus = SignalBus()
    got: list[tuple[int, int]] = []
    per_thread = 300

    async def handler(signal: Signal) -> None:
        await asyncio.sleep(0)
        got.append(signal.data)

    sub = bus.subscribe("b", handler, maxsize=4, overflow="block", loop=loop_thread)

    def publisher(n: int) -> None:
        for i in range(per_thread):
            assert bus.publish("b", (n, i)) == 1

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    # The loop stays responsive while the publishers wait for room.
    for _ in range(20):
        assert asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop_thread).result(5) is None
    for t in threads:
        t.join(30)
    assert (
        asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(until(lambda: len(got) == 4 * per_thread), 20), loop_thread
        ).result(30)
        is None
    )
    for n in range(4):
        assert [i for m, i in got if m == n] == list(range(per_thread))
    s = sub.stats()
    assert s.accepted == s.delivered == 4 * per_thread and balanced(s)


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "reject"])
def test_overflow_policies_bound_the_mailbox(overflow: str) -> None:
    async def main() -> None:
        bus = SignalBus()
        got: list[int] = []

        async def handler(signal: Signal) -> None:
            got.append(signal.data)

        sub = bus.subscribe("o", handler, maxsize=3, overflow=overflow)
        for i in range(10):
            bus.publish("o", i)
        assert sub.qsize() == 3
        await until(lambda: len(got) == 3)
        assert got == ([7, 8, 9] if overflow == "drop_oldest" else [0, 1, 2])
        assert balanced(sub.stats())

    run(main())


# ---- cancellation and loop shutdown -----------------------------------------------------


def _other_tasks() -> list[asyncio.Task[Any]]:
    """The bus' delivery tasks on the running loop."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("ferrule-bus")]


def test_cancel_stops_delivery_and_ends_the_task(no_asyncio_complaints: None) -> None:
    async def main() -> None:
        bus = SignalBus()
        inside = asyncio.Event()
        release = asyncio.Event()
        got: list[int] = []

        async def handler(signal: Signal) -> None:
            inside.set()
            await release.wait()
            got.append(signal.data)

        sub = bus.subscribe("c", handler)
        for i in range(5):
            bus.publish("c", i)
        await inside.wait()
        assert len(_other_tasks()) == 1
        assert sub.cancel()
        release.set()
        await until(lambda: not _other_tasks())
        # The call in progress finished; the queued signals were dropped, counted.
        assert got == [0]
        s = sub.stats()
        assert (s.delivered, s.dropped, s.queued) == (1, 4, 0) and balanced(s)
        assert bus.publish("c", 9) == 0 and bus.subscriptions() == []

    run(main())


def test_cancel_while_idle_ends_the_task(no_asyncio_complaints: None) -> None:
    async def main() -> None:
        bus = SignalBus()

        async def handler(signal: Signal) -> None:
            pass

        sub = bus.subscribe("c", handler)
        await asyncio.sleep(0)
        assert len(_other_tasks()) == 1
        sub.cancel()
        await until(lambda: not _other_tasks())

    run(main())


def test_the_end_of_asyncio_run_cancels_the_subscription(no_asyncio_complaints: None) -> None:
    bus = SignalBus()
    subs = []

    async def handler(signal: Signal) -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        subs.append(bus.subscribe("idle", handler))
        busy = bus.subscribe("busy", handler)
        subs.append(busy)
        bus.publish("busy")
        bus.publish("busy")
        await until(lambda: busy.stats().delivered == 1)

    run(main())
    assert [s.cancelled for s in subs] == [True, True]
    assert bus.subscriptions() == [] and balanced(subs[1].stats())


def test_a_loop_closed_while_the_task_waits_cancels_at_the_next_publish(
    no_asyncio_complaints: None,
) -> None:
    bus = SignalBus()
    loop = asyncio.new_event_loop()
    got: list[Any] = []

    async def handler(signal: Signal) -> None:
        got.append(signal.data)

    async def setup() -> Any:
        sub = bus.subscribe("x", handler)
        bus.publish("x", 1)
        await until(lambda: got == [1])
        return sub

    sub = loop.run_until_complete(setup())
    loop.close()  # the delivery task is still waiting
    assert sub.active
    assert bus.publish("x", 2) == 1
    assert sub.cancelled and bus.subscriptions() == []
    assert balanced(sub.stats()) and sub.stats().dropped == 1
    del sub, loop
    gc.collect()


def test_a_cancelled_publisher_on_the_loop_loses_nothing() -> None:
    """A task cancelled while a thread's publish is in flight does not lose that signal."""

    async def main() -> None:
        bus = SignalBus()
        got: list[int] = []

        async def handler(signal: Signal) -> None:
            got.append(signal.data)

        sub = bus.subscribe("x", handler)
        victim = asyncio.get_running_loop().create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        t = threading.Thread(target=lambda: [bus.publish("x", i) for i in range(100)])
        t.start()
        victim.cancel()
        await asyncio.to_thread(t.join)
        await until(lambda: len(got) == 100)
        assert got == list(range(100)) and balanced(sub.stats())

    run(main())


# ---- ownership --------------------------------------------------------------------------


class Agent:
    def __init__(self, bus: SignalBus) -> None:
        self.bus = bus
        self.got: list[Any] = []

    async def on_signal(self, signal: Signal) -> None:
        self.got.append(signal.data)


def test_a_weak_async_handler_is_cancelled_when_its_object_is_collected() -> None:
    async def main() -> None:
        bus = SignalBus()
        agent = Agent(bus)
        sub = bus.subscribe("w", agent.on_signal)
        bus.publish("w", 1)
        got = agent.got
        await until(lambda: got == [1])
        ref = weakref.ref(agent)
        del agent
        gc.collect()
        assert ref() is None
        await until(lambda: sub.cancelled)
        await until(lambda: not _other_tasks())

    run(main())


def test_gc_collects_a_cycle_through_a_strong_async_handler(
    no_asyncio_complaints: None,
) -> None:
    async def main() -> None:
        agent = Agent(SignalBus())
        agent.bus.subscribe("s", agent.on_signal, weak=False)
        agent.bus.publish("s", 1)
        got = agent.got
        await until(lambda: got == [1])
        ref = weakref.ref(agent)
        del agent
        gc.collect()
        assert ref() is None
        await until(lambda: not _other_tasks())

    run(main())


# ---- threads and tasks together ---------------------------------------------------------


def test_threads_and_tasks_publish_to_async_and_thread_handlers(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    bus = SignalBus()
    per = 200
    async_got: list[Any] = []
    thread_got: list[Any] = []
    lock = threading.Lock()

    async def on_loop(signal: Signal) -> None:
        async_got.append(signal.data)

    def on_thread(signal: Signal) -> None:
        with lock:
            thread_got.append(signal.data)

    a = bus.subscribe("m.*", on_loop, loop=loop_thread, maxsize=10_000)
    b = bus.subscribe("m.#", on_thread, maxsize=10_000)

    async def task_publisher(n: int) -> None:
        for i in range(per):
            bus.publish("m.task", (n, i))
            if i % 16 == 0:
                await asyncio.sleep(0)

    def thread_publisher(n: int) -> None:
        for i in range(per):
            bus.publish("m.thread", (n, i))

    threads = [threading.Thread(target=thread_publisher, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()

    async def task_publishers() -> None:
        await asyncio.gather(*(task_publisher(n) for n in range(10, 13)))

    fut = asyncio.run_coroutine_threadsafe(task_publishers(), loop_thread)
    fut.result(30)
    for t in threads:
        t.join(30)
    total = 6 * per
    done = asyncio.run_coroutine_threadsafe(
        asyncio.wait_for(until(lambda: len(async_got) == total), 20), loop_thread
    )
    done.result(30)
    for _ in range(3000):
        with lock:
            if len(thread_got) == total:
                break
        threading.Event().wait(0.005)
    assert sorted(async_got) == sorted(thread_got)
    for n in (0, 1, 2, 10, 11, 12):
        assert [i for m, i in async_got if m == n] == list(range(per))
    assert a.stats().delivered == b.stats().delivered == total
    a.cancel()
    b.cancel()
