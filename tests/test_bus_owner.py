"""SignalBus ``subscribe(..., owner=obj)``: the subscription is cancelled when its owner
dies or ends (a weak-referenceable object, a Thread, an asyncio Task or Future, a
concurrent.futures Future), for pull, thread-handler and async-handler subscriptions; the
watch never keeps the owner, the handler or the subscription alive."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
import weakref
from typing import Any

import pytest
from ferrule import Signal, SignalBus, Subscription

from tests.conftest import wait_until


class Owner:
    pass


def test_a_collected_owner_cancels_a_pull_subscription() -> None:
    bus = SignalBus()
    owner = Owner()
    sub = bus.subscribe("a", owner=owner)
    assert bus.publish("a", 1) == 1
    del owner
    gc.collect()
    assert sub.cancelled
    assert bus.publish("a", 2) == 0
    # Queued signals stay readable, as after any cancel.
    assert sub.get_nowait().data == 1


def test_a_closure_handler_lives_as_long_as_its_owner() -> None:
    bus = SignalBus()
    got: list[Any] = []
    owner = Owner()
    sub = bus.subscribe("a", lambda s: got.append(s.data), owner=owner)
    bus.publish("a", 1)
    assert wait_until(lambda: got == [1])
    del owner
    gc.collect()
    assert sub.cancelled and bus.subscriptions() == []


def test_the_owner_is_not_kept_alive_by_its_subscription_or_handler() -> None:
    bus = SignalBus()
    owner = Owner()
    ref = weakref.ref(owner)
    sub = bus.subscribe("a", lambda s: None, owner=owner)
    del owner
    gc.collect()
    assert ref() is None and sub.cancelled


def test_a_thread_owner_cancels_when_the_thread_ends() -> None:
    bus = SignalBus()
    release = threading.Event()
    subs: list[Subscription] = []

    def worker() -> None:
        subs.append(bus.subscribe("job.*", owner=threading.current_thread()))
        release.wait(5)

    t = threading.Thread(target=worker)
    t.start()
    assert wait_until(lambda: len(subs) == 1)
    assert bus.publish("job.1") == 1 and subs[0].active
    release.set()
    t.join()
    assert wait_until(lambda: subs[0].cancelled)
    sweepers = lambda: [t for t in threading.enumerate() if t.name == "ferrule-bus-owners"]  # noqa: E731
    assert wait_until(lambda: not sweepers())


def test_an_unstarted_thread_owner_is_accepted_and_a_finished_one_refused() -> None:
    bus = SignalBus()
    t = threading.Thread(target=lambda: None)
    sub = bus.subscribe("a", owner=t)
    assert sub.active
    t.start()
    t.join()
    assert wait_until(lambda: sub.cancelled)
    with pytest.raises(ValueError, match="owner thread has already finished"):
        bus.subscribe("a", owner=t)
    assert bus.subscriptions() == []


def test_a_thread_owner_whose_is_alive_raises_does_not_stop_the_sweep(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(threading.Thread):
        fail = False

        def is_alive(self) -> bool:
            if self.fail:
                raise RuntimeError("broken")
            return super().is_alive()

    bus = SignalBus()
    release = threading.Event()
    broken = Broken(target=release.wait, args=(5,))
    broken.start()
    b = bus.subscribe("b", owner=broken)
    good = threading.Thread(target=lambda: None)
    a = bus.subscribe("a", owner=good)
    broken.fail = True
    good.start()
    good.join()
    assert wait_until(lambda: a.cancelled)
    assert b.active
    assert any("is_alive()" in r.getMessage() for r in caplog.records)
    release.set()
    broken.join()
    b.cancel()


def test_an_asyncio_task_owner_cancels_when_the_task_ends() -> None:
    async def main() -> None:
        bus = SignalBus()
        got: list[Any] = []
        step = asyncio.Event()

        async def handler(signal: Signal) -> None:
            got.append(signal.data)

        async def agent() -> None:
            bus.subscribe("a", handler, owner=asyncio.current_task())
            await step.wait()

        task = asyncio.get_running_loop().create_task(agent())
        await asyncio.sleep(0)
        bus.publish("a", 1)
        while got != [1]:
            await asyncio.sleep(0.001)
        step.set()
        await task
        await asyncio.sleep(0)
        assert bus.subscriptions() == []
        assert bus.publish("a", 2) == 0

    asyncio.run(main())


def test_a_concurrent_future_owner_and_done_futures() -> None:
    bus = SignalBus()
    fut: concurrent.futures.Future[None] = concurrent.futures.Future()
    sub = bus.subscribe("a", owner=fut)
    assert sub.active
    fut.set_result(None)
    assert sub.cancelled
    with pytest.raises(ValueError, match="owner future is already done"):
        bus.subscribe("a", owner=fut)


@pytest.mark.parametrize("owner", [1, "s", (1, 2), object()])
def test_an_owner_that_cannot_be_watched_is_refused(owner: object) -> None:
    bus = SignalBus()
    with pytest.raises(TypeError, match="owner must be weak-referenceable"):
        bus.subscribe("a", owner=owner)
    with pytest.raises(TypeError, match="owner must be weak-referenceable"):
        bus.subscribe("a", print, owner=owner)
    assert bus.subscriptions() == []


def test_cancel_lets_go_of_the_owner_watch() -> None:
    bus = SignalBus()
    owner = Owner()
    sub = bus.subscribe("a", owner=owner)
    assert len(weakref.getweakrefs(owner)) == 1
    sub.cancel()
    assert weakref.getweakrefs(owner) == []


def test_gc_collects_a_cycle_through_the_owner() -> None:
    class Agent:
        def __init__(self) -> None:
            self.bus = SignalBus()
            self.sub = self.bus.subscribe("a", self.on, owner=self, weak=False)

        def on(self, signal: Signal) -> None:
            pass

    agent = Agent()
    ref = weakref.ref(agent)
    del agent
    gc.collect()
    assert ref() is None
