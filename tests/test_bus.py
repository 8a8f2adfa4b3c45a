"""SignalBus: routing semantics, mailboxes and overflow, handlers, weak handlers,
cancellation, re-entrancy, asyncio, bad input."""

from __future__ import annotations

import _thread
import asyncio
import gc
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from ferrule import (
    QueueClosed,
    QueueEmpty,
    Signal,
    SignalBus,
    Subscription,
    SubscriptionStats,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import wait_until


def balanced(s: SubscriptionStats) -> bool:
    return s.accepted == s.delivered + s.dropped + s.queued


@pytest.fixture
def no_thread_leak() -> Any:
    before = threading.active_count()
    yield
    gc.collect()
    assert wait_until(lambda: threading.active_count() <= before), (
        f"{threading.active_count()} threads, {before} before"
    )


# ---- pattern semantics -----------------------------------------------------------------

PATTERN_TABLE = [
    # literal and *
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b", "a.b.c", False),
    ("a.*.c", "a.x.c", True),
    ("a.*.c", "a.c", False),
    ("a.*.c", "a.x.y.c", False),
    ("*", "a", True),
    ("*", "a.b", False),
    ("*.*", "a.b", True),
    # # at the end
    ("a.#", "a", True),
    ("a.#", "a.b", True),
    ("a.#", "a.b.c.d", True),
    ("a.#", "b.a", False),
    # # at the start
    ("#", "a", True),
    ("#", "a.b.c", True),
    ("#.c", "c", True),
    ("#.c", "a.b.c", True),
    ("#.c", "a.c.d", False),
    # # in the middle
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.c", True),
    ("a.#.c", "a.b.b.c", True),
    ("a.#.c", "a.b", False),
    ("a.#.c", "a.c.d", False),
    # several wildcards
    ("#.b.#", "b", True),
    ("#.b.#", "a.b.c", True),
    ("#.b.#", "a.c", False),
    ("#.#", "a", True),
    ("*.#", "a", True),
    ("#.*", "a.b.c", True),
    ("a.*.#.d", "a.b.d", True),
    ("a.*.#.d", "a.d", False),
    ("agent.*.error", "agent.42.error", True),
    ("agent.*.error", "agent.42.ok", False),
]


@pytest.mark.parametrize(("pattern", "signal_type", "match"), PATTERN_TABLE)
def test_pattern_semantics(pattern: str, signal_type: str, match: bool) -> None:
    bus = SignalBus()
    sub = bus.subscribe(pattern)
    assert bus.publish(signal_type, 1) == int(match)
    assert sub.qsize() == int(match)


def regex_for(pattern: str) -> re.Pattern[str]:
    """The reference matcher: each type segment is `.seg`; `#` is any number of them."""
    parts = []
    for seg in pattern.split("."):
        if seg == "*":
            parts.append(r"\.[^.]+")
        elif seg == "#":
            parts.append(r"(?:\.[^.]+)*")
        else:
            parts.append(re.escape("." + seg))
    return re.compile("".join(parts))


def reference_match(pattern: str, signal_type: str) -> bool:
    return regex_for(pattern).fullmatch("." + signal_type) is not None


@pytest.mark.parametrize(("pattern", "signal_type", "match"), PATTERN_TABLE)
def test_reference_matcher_agrees_with_the_table(
    pattern: str, signal_type: str, match: bool
) -> None:
    assert reference_match(pattern, signal_type) == match


literal = st.sampled_from(["a", "b", "c"])
pattern_seg = st.sampled_from(["a", "b", "c", "*", "#"])
patterns = st.lists(pattern_seg, min_size=1, max_size=5).map(".".join)
types = st.lists(literal, min_size=1, max_size=6).map(".".join)


@settings(max_examples=150, deadline=None)
@given(st.lists(patterns, min_size=1, max_size=12), st.lists(types, min_size=1, max_size=8))
def test_trie_matches_regex_reference(pats: list[str], sigs: list[str]) -> None:
    bus = SignalBus()
    subs = [bus.subscribe(p, maxsize=64) for p in pats]
    for sig in sigs:
        want = [reference_match(p, sig) for p in pats]
        before = [s.qsize() for s in subs]
        assert bus.publish(sig) == sum(want)
        assert [s.qsize() - b for s, b in zip(subs, before, strict=True)] == [int(w) for w in want]
    # Cancelling half keeps the rest routed exactly.
    for s in subs[::2]:
        s.cancel()
    live = list(zip(pats, subs, strict=True))[1::2]
    for sig in sigs:
        assert bus.publish(sig) == sum(reference_match(p, sig) for p, _ in live)


def test_many_subscriptions_route_exactly() -> None:
    bus = SignalBus()
    subs = [bus.subscribe(f"agent.{i}.error", maxsize=4) for i in range(10_000)]
    star = bus.subscribe("agent.*.error", maxsize=10_000)
    for i in range(0, 10_000, 97):
        assert bus.publish(f"agent.{i}.error", i) == 2
        assert subs[i].get_nowait().data == i
    assert bus.publish("agent.5.ok") == 0
    assert sum(s.qsize() for s in subs) == 0
    assert star.qsize() == len(range(0, 10_000, 97))
    assert len(bus.subscriptions()) == 10_001
    for s in subs:
        s.cancel()
    assert bus.subscriptions() == [star]


# ---- pull subscriptions ----------------------------------------------------------------


@pytest.mark.smoke
def test_signal_fields_and_shared_object() -> None:
    bus = SignalBus()
    a = bus.subscribe("x.*")
    b = bus.subscribe("#")
    t0 = time.time()
    data = {"k": 1}
    assert bus.publish("x.y", data) == 2
    sa, sb = a.get_nowait(), b.get_nowait()
    assert isinstance(sa, Signal)
    assert sa is sb  # one frozen signal shared by every mailbox
    assert (sa.type, sa.data) == ("x.y", data)
    assert sa.data is data
    assert t0 - 1 <= sa.timestamp <= time.time() + 1
    assert repr(sa).startswith("Signal(type='x.y', data={'k': 1}, timestamp=")
    with pytest.raises(AttributeError):
        sa.data = 2  # type: ignore[misc]
    assert bus.publish("x.z") == 2
    assert a.get_nowait().data is None


def test_publish_at_stamps_the_signal_with_the_given_time() -> None:
    """`_publish_at` (what RedisBus delivers through) is `publish` but for the stamp."""
    bus = SignalBus()
    a = bus.subscribe("x.*")
    b = bus.subscribe("x.#")
    data = {"k": 1}
    assert bus._publish_at("x.y", data, 1_700_000_000.125) == 2
    sa, sb = a.get_nowait(), b.get_nowait()
    assert sa is sb and sa.data is data and sa.type == "x.y"
    assert sa.timestamp == 1_700_000_000.125
    assert repr(sa) == "Signal(type='x.y', data={'k': 1}, timestamp=1700000000.125)"
    assert bus._publish_at("x.z", None, 0) == 2  # the epoch itself; an int is a time too
    assert a.get_nowait().timestamp == 0.0 and b.get_nowait().data is None
    assert bus._publish_at("nobody.listens", 1, 5.0) == 0
    s = bus.stats()
    assert (s.published, s.unrouted, s.delivered, s.dropped) == (3, 1, 4, 0)


def test_get_get_nowait_and_iteration() -> None:
    bus = SignalBus()
    sub = bus.subscribe("t")
    with pytest.raises(QueueEmpty, match=r"^no signal queued$"):
        sub.get_nowait()
    with pytest.raises(QueueEmpty, match=r"^no signal queued \(get timed out\)$"):
        sub.get(timeout=0.01)
    for i in range(3):
        bus.publish("t", i)
    assert sub.get(timeout=1).data == 0
    it = iter(sub)
    assert next(it).data == 1
    # Iteration blocks for the next signal and ends once the subscription is
    # cancelled and drained: a signal still queued at cancellation stays readable.
    bus.publish("t", 3)
    sub.cancel()
    assert bus.publish("t", 4) == 0
    assert [s.data for s in it] == [2, 3]
    s = sub.stats()
    assert (s.accepted, s.delivered, s.dropped, s.queued) == (4, 4, 0, 0)
    with pytest.raises(QueueClosed, match=r"^subscription is cancelled$"):
        sub.get()
    with pytest.raises(QueueClosed):
        sub.get_nowait()


@pytest.mark.smoke
def test_blocked_get_is_woken_by_publish_and_by_cancel() -> None:
    bus = SignalBus()
    sub = bus.subscribe("t")
    threading.Timer(0.02, bus.publish, args=("t", "late")).start()
    assert sub.get(timeout=5).data == "late"
    threading.Timer(0.02, sub.cancel).start()
    with pytest.raises(QueueClosed):
        sub.get(timeout=5)


async def _drain_async(sub: Subscription, n: int) -> list[Any]:
    return [(await sub.get_async()).data for _ in range(n)]


async def _drain_async_for(sub: Subscription) -> list[Any]:
    return [sig.data async for sig in sub]


@pytest.mark.parametrize("how", ["get", "get_nowait", "iteration", "get_async", "async for"])
def test_cancelled_pull_subscription_keeps_its_signals_readable(how: str) -> None:
    """Guards cancel() on a pull subscription: new signals stop, but what was queued
    stays readable until drained; then gets raise QueueClosed and iteration ends, as
    after WorkQueue.close(). Cancel used to discard what was queued."""
    bus = SignalBus()
    sub = bus.subscribe("t")
    for i in range(3):
        bus.publish("t", i)
    assert sub.cancel()
    assert bus.publish("t", 3) == 0
    assert sub.qsize() == 3
    read: dict[str, Callable[[], list[Any]]] = {
        "get": lambda: [sub.get(timeout=1).data for _ in range(3)],
        "get_nowait": lambda: [sub.get_nowait().data for _ in range(3)],
        "iteration": lambda: [sig.data for sig in sub],
        "get_async": lambda: asyncio.run(_drain_async(sub, 3)),
        "async for": lambda: asyncio.run(_drain_async_for(sub)),
    }
    assert read[how]() == [0, 1, 2]
    for get in (sub.get, sub.get_nowait, lambda: sub.get(timeout=1)):
        with pytest.raises(QueueClosed, match=r"^subscription is cancelled$"):
            get()
    with pytest.raises(QueueClosed):
        asyncio.run(_drain_async(sub, 1))
    assert list(sub) == []
    assert asyncio.run(_drain_async_for(sub)) == []
    s = sub.stats()
    assert (s.accepted, s.delivered, s.dropped, s.queued) == (3, 3, 0, 0)


def test_async_for_ends_when_a_task_cancels_the_subscription() -> None:
    """A subscription as an async stream: the consumer's loop ends (after what was
    queued) when another task cancels it, here by leaving its ``with`` block."""
    bus = SignalBus()

    async def main() -> list[str]:
        seen: list[str] = []
        with bus.subscribe("job.#") as sub:

            async def consume() -> None:
                async for sig in sub:
                    seen.append(sig.type)

            consumer = asyncio.ensure_future(consume())
            bus.publish("job.1.start")
            await asyncio.sleep(0.01)
            bus.publish("job.1.done")
            bus.publish("other")
        await asyncio.wait_for(consumer, 5)
        return seen

    assert asyncio.run(main()) == ["job.1.start", "job.1.done"]


def test_async_getters_of_a_cancelled_pull_subscription_get_what_was_queued() -> None:
    """Guards the asyncio side of cancel(): getters woken by publishes that a cancel
    then overtakes still get those signals, and only then QueueClosed (cancel used to
    discard the signals, so the woken getters found nothing)."""
    bus = SignalBus()
    sub = bus.subscribe("t")

    async def main() -> list[Any]:
        a = asyncio.ensure_future(sub.get_async())
        b = asyncio.ensure_future(sub.get_async())
        await asyncio.sleep(0)  # both run up to their wait: their wakers are registered
        bus.publish("t", 1)  # wakes a (scheduled on this loop)
        bus.publish("t", 2)  # wakes b
        sub.cancel()  # ...before either runs
        got = [(await a).data, (await b).data]
        with pytest.raises(QueueClosed):
            await sub.get_async()
        return got

    assert asyncio.run(main()) == [1, 2]


def test_cancelled_handler_subscription_counts_what_it_did_not_deliver(
    no_thread_leak: None,
) -> None:
    """A handler subscription's signals still queued at cancel are counted in
    `dropped`, never lost silently."""
    bus = SignalBus()
    started, release = threading.Event(), threading.Event()

    def stuck(sig: Signal) -> None:
        started.set()
        release.wait(5)

    sub = bus.subscribe("t", stuck, maxsize=10, weak=False)
    bus.publish("t", 0)
    assert started.wait(5)
    for i in range(1, 6):
        bus.publish("t", i)  # queued behind the call in progress
    assert sub.cancel()
    release.set()
    assert wait_until(lambda: not bus_workers("t"))
    s = sub.stats()
    assert (s.accepted, s.delivered, s.dropped, s.queued) == (6, 1, 5, 0)


def test_cancel_ends_a_blocked_iteration() -> None:
    bus = SignalBus()
    sub = bus.subscribe("t")
    threading.Timer(0.02, sub.cancel).start()
    assert list(sub) == []


def test_subscription_lives_without_its_object() -> None:
    bus = SignalBus()
    bus.subscribe("orphan.#")
    gc.collect()
    assert bus.publish("orphan.x", 1) == 1
    [sub] = bus.subscriptions()
    assert sub.pattern == "orphan.#"
    assert sub.get_nowait().data == 1
    assert sub.cancel()
    assert bus.subscriptions() == []
    assert bus.publish("orphan.x") == 0


def test_subscriptions_lists_the_subscription_objects_themselves() -> None:
    """Each subscription has one Subscription object; the bus owns it while routing."""
    bus = SignalBus()
    sub = bus.subscribe("a")
    assert bus.subscriptions()[0] is sub
    sub_id = id(sub)
    del sub
    gc.collect()
    [again] = bus.subscriptions()
    assert id(again) == sub_id and again.pattern == "a"


def test_subscription_attributes_equality_and_context_manager() -> None:
    bus = SignalBus()
    with bus.subscribe("a.b", maxsize=3, overflow="reject") as sub:
        assert (sub.pattern, sub.maxsize, sub.overflow) == ("a.b", 3, "reject")
        assert sub.active and not sub.cancelled
        [listed] = bus.subscriptions()
        assert listed == sub and hash(listed) == hash(sub)
        assert listed != bus.subscribe("a.b") and listed != "a.b"
        assert repr(sub) == (
            "Subscription(pattern=\"a.b\", pull, maxsize=3, overflow='reject', active)"
        )
    assert sub.cancelled and not sub.active
    assert not sub.cancel()
    assert "cancelled" in repr(sub)
    assert repr(bus) == "SignalBus(subscriptions=1)"


# ---- overflow policies -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overflow", "accepted", "kept", "dropped", "rejected"),
    [
        ("drop_oldest", 5, [3, 4], 3, 0),
        ("drop_newest", 2, [0, 1], 0, 3),
        ("reject", 2, [0, 1], 0, 3),
    ],
)
def test_overflow_policies(
    overflow: str, accepted: int, kept: list[int], dropped: int, rejected: int
) -> None:
    bus = SignalBus()
    sub = bus.subscribe("t", maxsize=2, overflow=overflow)
    assert sum(bus.publish("t", i) for i in range(5)) == accepted
    assert [sub.get_nowait().data for _ in range(2)] == kept
    s = sub.stats()
    assert (s.accepted, s.dropped, s.rejected, s.delivered) == (accepted, dropped, rejected, 2)
    assert balanced(s)
    assert repr(s) == (
        f"SubscriptionStats(accepted={accepted}, delivered=2, dropped={dropped}, "
        f"rejected={rejected}, errors=0, queued=0)"
    )


# The two ways in: `publish`, and `_publish_at` (a given timestamp, for RedisBus), which
# must route, count and wait exactly like it.
PUBLISHERS: dict[str, Callable[[SignalBus, str, Any], int]] = {
    "publish": lambda bus, t, d: bus.publish(t, d),
    "_publish_at": lambda bus, t, d: bus._publish_at(t, d, 1234.5),
}


@pytest.mark.parametrize("how", PUBLISHERS)
def test_publish_counts_only_the_mailboxes_that_took_the_signal(how: str) -> None:
    """Guards publish()'s count: a full drop_newest mailbox does not take the signal, so
    it is not counted (it used to be, and its stats counted it as accepted and dropped);
    it counts in `rejected`, like reject's refusals."""
    publish = PUBLISHERS[how]
    bus = SignalBus()
    newest = bus.subscribe("t", maxsize=1, overflow="drop_newest")
    oldest = bus.subscribe("t", maxsize=1, overflow="drop_oldest")
    reject = bus.subscribe("t", maxsize=1, overflow="reject")
    assert publish(bus, "t", 0) == 3
    assert publish(bus, "t", 1) == 1  # only drop_oldest takes it, evicting 0
    assert [s.get_nowait().data for s in (newest, oldest, reject)] == [0, 1, 0]
    stats = [
        (s.accepted, s.delivered, s.dropped, s.rejected, s.queued)
        for s in (newest.stats(), oldest.stats(), reject.stats())
    ]
    assert stats == [(1, 1, 0, 1, 0), (2, 1, 1, 0, 0), (1, 1, 0, 1, 0)]
    b = bus.stats()
    assert (b.published, b.unrouted, b.delivered, b.dropped) == (2, 0, 4, 2)


@pytest.mark.parametrize("how", PUBLISHERS)
def test_block_policy_waits_for_room_and_is_woken_by_cancel(how: str) -> None:
    publish = PUBLISHERS[how]
    bus = SignalBus()
    sub = bus.subscribe("t", maxsize=1, overflow="block")
    free = bus.subscribe("t", maxsize=1)  # never blocks the publisher
    assert publish(bus, "t", 0) == 2
    threading.Timer(0.05, sub.get).start()
    assert publish(bus, "t", 1) == 2  # waited until the getter made room
    assert sub.get_nowait().data == 1
    assert free.get_nowait().data == 1
    assert publish(bus, "t", 2) == 2
    threading.Timer(0.05, sub.cancel).start()
    assert publish(bus, "t", 3) == 1  # woken by the cancellation: not accepted there


def test_slow_handler_does_not_slow_the_publisher(no_thread_leak: None) -> None:
    bus = SignalBus()
    started, release = threading.Event(), threading.Event()

    def slow(sig: Signal) -> None:
        started.set()
        release.wait()

    sub = bus.subscribe("t", slow, maxsize=4)
    other = bus.subscribe("t", maxsize=2000)
    assert bus.publish("t", 0) == 2
    assert started.wait(5)
    # The handler is stuck: if publish waited for it, this loop would never end.
    for i in range(1, 1000):
        assert bus.publish("t", i) == 2
    s = sub.stats()
    assert (s.accepted, s.delivered, s.queued, s.dropped) == (1000, 1, 4, 995)
    assert other.qsize() == 1000
    release.set()
    assert wait_until(lambda: sub.stats().delivered == 5)
    sub.cancel()
    other.cancel()


# ---- handlers ----------------------------------------------------------------------------


def test_handler_runs_on_its_own_thread_in_order(no_thread_leak: None) -> None:
    bus = SignalBus()
    seen: list[tuple[Any, str]] = []
    done = threading.Event()

    def handler(sig: Signal) -> None:
        seen.append((sig.data, threading.current_thread().name))
        if sig.data == 99:
            done.set()

    sub = bus.subscribe("work.*", handler)
    for i in range(100):
        assert bus.publish("work.item", i) == 1
    assert done.wait(5)
    assert [d for d, _ in seen] == list(range(100))
    names = {n for _, n in seen}
    assert names == {"ferrule-bus work.*"}
    assert threading.current_thread().name not in names
    assert sub.stats().delivered == 100
    with pytest.raises(TypeError, match=r"^get\(\) is for subscriptions without a handler$"):
        sub.get()
    with pytest.raises(TypeError, match=r"^get_nowait\(\) is for subscriptions"):
        sub.get_nowait()
    with pytest.raises(TypeError, match=r"^iteration is for subscriptions"):
        iter(sub)
    with pytest.raises(TypeError, match=r"^get_async\(\) is for subscriptions"):
        sub.get_async()  # type: ignore[unused-coroutine]
    with pytest.raises(TypeError, match=r"^async iteration is for subscriptions"):
        aiter(sub)
    with pytest.raises(TypeError, match=r"^async iteration is for subscriptions"):
        sub.__anext__()  # type: ignore[unused-coroutine]
    sub.cancel()


def test_handler_exception_is_counted_and_logged(
    caplog: pytest.LogCaptureFixture, no_thread_leak: None
) -> None:
    bus = SignalBus()
    ok = threading.Event()

    def handler(sig: Signal) -> None:
        if sig.data == "bad":
            raise RuntimeError("boom")
        ok.set()

    with caplog.at_level(logging.ERROR, logger="ferrule.bus"):
        sub = bus.subscribe("h", handler)
        bus.publish("h", "bad")
        bus.publish("h", "bad")
        bus.publish("h", "good")
        assert ok.wait(5)  # the worker survived both exceptions
        assert wait_until(lambda: len(caplog.records) == 2)
    assert sub.stats().errors == 2
    assert sub.stats().delivered == 3
    rec = caplog.records[0]
    assert rec.name == "ferrule.bus"
    assert rec.getMessage() == "handler of subscription 'h' raised on signal 'h'"
    assert rec.exc_info is not None and isinstance(rec.exc_info[1], RuntimeError)
    sub.cancel()


def test_handler_may_publish_and_subscribe_on_the_same_bus(no_thread_leak: None) -> None:
    bus = SignalBus()
    got: list[str] = []
    inner: list[Subscription] = []
    done = threading.Event()

    def relay(sig: Signal) -> None:
        # Subscribes and publishes from inside a handler: no lock is held here.
        if not inner:
            inner.append(bus.subscribe("relay.out"))
        assert bus.publish("relay.out", sig.data) == 1
        got.append(sig.type)
        if len(got) == 3:
            done.set()

    sub = bus.subscribe("relay.in", relay)
    for i in range(3):
        bus.publish("relay.in", i)
    assert done.wait(5)
    assert [inner[0].get(timeout=1).data for _ in range(3)] == [0, 1, 2]
    assert len(bus.subscriptions()) == 2
    sub.cancel()
    inner[0].cancel()


def test_handler_publishing_to_its_own_full_block_mailbox_does_not_deadlock(
    no_thread_leak: None,
) -> None:
    bus = SignalBus()
    results: list[int] = []
    done = threading.Event()

    def echo(sig: Signal) -> None:
        if sig.data == 0:
            # Fill its own mailbox, then publish once more: waiting for room would wait
            # for this very thread, so that signal is refused instead.
            results.append(bus.publish("echo", 1))
            results.append(bus.publish("echo", 2))
            done.set()

    sub = bus.subscribe("echo", echo, maxsize=1, overflow="block")
    bus.publish("echo", 0)
    assert done.wait(5)
    assert results == [1, 0]
    assert wait_until(lambda: sub.stats().delivered == 2)
    assert sub.stats().rejected == 1
    sub.cancel()


def test_cancel_from_inside_its_handler(no_thread_leak: None) -> None:
    bus = SignalBus()
    calls: list[int] = []
    subs: list[Subscription] = []
    first = threading.Event()
    go = threading.Event()

    def once(sig: Signal) -> None:
        go.wait(5)
        calls.append(sig.data)
        assert subs[0].cancel()
        first.set()

    subs.append(bus.subscribe("c", once))
    for i in range(5):
        bus.publish("c", i)
    go.set()
    assert first.wait(5)
    assert wait_until(lambda: subs[0].stats().queued == 0)
    assert calls == [0]
    assert bus.publish("c", 9) == 0
    s = subs[0].stats()
    assert (s.accepted, s.delivered, s.dropped) == (5, 1, 4)


def bus_workers(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"ferrule-bus {prefix}")]


def test_cancelled_handler_subscriptions_release_their_threads() -> None:
    bus = SignalBus()
    subs = [bus.subscribe(f"release.{i}", lambda sig: None) for i in range(20)]
    assert len(bus_workers("release.")) == 20
    for s in subs:
        s.cancel()
    assert wait_until(lambda: not bus_workers("release."))


def test_dropping_the_bus_cancels_its_subscriptions() -> None:
    bus = SignalBus()
    sub = bus.subscribe("dropped.x", lambda sig: None)
    pull = bus.subscribe("dropped.y")
    assert len(bus_workers("dropped.")) == 1
    del bus
    gc.collect()
    assert sub.cancelled and pull.cancelled
    assert wait_until(lambda: not bus_workers("dropped."))


# ---- weak handlers ---------------------------------------------------------------------


class Owner:
    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.event = threading.Event()

    def on_signal(self, sig: Signal) -> None:
        self.seen.append(sig.data)
        self.event.set()


def test_weak_handler_is_cancelled_when_its_object_is_collected(no_thread_leak: None) -> None:
    bus = SignalBus()
    owner = Owner()
    sub = bus.subscribe("w.#", owner.on_signal)
    bus.publish("w.1", "a")
    assert owner.event.wait(5)
    assert owner.seen == ["a"]
    del owner
    gc.collect()
    # The worker may still hold the bound method for a moment after the call.
    assert wait_until(lambda: sub.cancelled)
    assert bus.subscriptions() == []
    assert bus.publish("w.2") == 0


def test_weak_false_and_plain_functions_are_held_strongly(no_thread_leak: None) -> None:
    bus = SignalBus()
    owner = Owner()
    strong = bus.subscribe("s", owner.on_signal, weak=False)
    event = threading.Event()
    fn = bus.subscribe("s", lambda sig: event.set())  # only the bus holds the lambda
    del owner
    gc.collect()
    assert strong.active and fn.active
    assert bus.publish("s", 1) == 2
    assert event.wait(5)
    assert wait_until(lambda: strong.stats().delivered == 1)
    strong.cancel()
    fn.cancel()


def test_weak_handler_on_an_object_without_weakref_support() -> None:
    class Slotted:
        __slots__ = ()

        def on(self, sig: Signal) -> None:
            pass

    bus = SignalBus()
    with pytest.raises(
        TypeError,
        match=r"^handler is bound to a 'Slotted' object, which cannot be weakly referenced; "
        r"pass weak=False$",
    ):
        bus.subscribe("x", Slotted().on)
    assert bus.subscriptions() == []
    sub = bus.subscribe("x", Slotted().on, weak=False)
    sub.cancel()


# ---- no Python under an internal lock ------------------------------------------------


def test_del_of_an_evicted_or_discarded_signal_may_use_the_bus(no_thread_leak: None) -> None:
    bus = SignalBus()
    log: list[str] = []
    started, release = threading.Event(), threading.Event()

    def stuck(sig: Signal) -> None:
        started.set()
        release.wait(5)

    class Reentrant:
        def __init__(self, name: str) -> None:
            self.name = name

        def __del__(self) -> None:
            # Runs when the mailbox lets go of the last signal holding it.
            log.append(self.name)
            bus.publish("audit", self.name)
            bus.subscribe("late").cancel()

    audit = bus.subscribe("audit", maxsize=10)
    sub = bus.subscribe("t", stuck, maxsize=1, overflow="drop_oldest", weak=False)
    bus.publish("t", "first")
    assert started.wait(5)  # the worker is inside the handler: the mailbox fills
    bus.publish("t", Reentrant("evicted"))
    bus.publish("t", Reentrant("discarded"))  # evicts the first: its __del__ runs
    sub.cancel()  # a handler subscription discards what is queued: the second
    release.set()
    gc.collect()
    assert log == ["evicted", "discarded"]
    assert [audit.get_nowait().data for _ in range(2)] == ["evicted", "discarded"]
    assert sub.stats().dropped == 2


# ---- garbage collection ---------------------------------------------------------------


class Node:
    """Something weakly referenceable to hang a reference cycle on."""

    ref: Any = None

    def on_signal(self, sig: Signal) -> None:
        pass


def test_gc_collects_a_bus_whose_queued_signal_refers_to_it() -> None:
    """Guards SignalBus/Subscription/Signal GC support: bus -> subscription -> queued
    signal -> data -> bus used to leak forever."""
    bus = SignalBus()
    sub = bus.subscribe("t")
    node = Node()
    node.ref = bus
    assert bus.publish("t", node) == 1
    dead = weakref.ref(node)
    del bus, sub, node
    gc.collect()
    assert dead() is None


@pytest.mark.parametrize("kind", ["function", "bound method, weak=False"])
def test_gc_collects_a_bus_whose_strong_handler_refers_to_it(
    kind: str, no_thread_leak: None
) -> None:
    """Guards the handler's ownership: bus -> subscription -> handler -> object -> bus.
    The worker thread used to hold the handler itself, so the cycle (and the thread)
    lived forever; now the Subscription owns the handler, the collector sees the cycle,
    and collecting it cancels the subscription, so the worker exits."""
    bus = SignalBus()
    node = Node()
    node.ref = bus
    if kind == "function":

        def handler(sig: Signal, node: Node = node) -> None:
            pass

        sub = bus.subscribe("gc.handler", handler)
        del handler
    else:
        sub = bus.subscribe("gc.handler", node.on_signal, weak=False)
    assert bus.publish("gc.handler") == 1
    assert wait_until(lambda s=sub: s.stats().delivered == 1)
    dead = weakref.ref(node)
    del bus, sub, node
    gc.collect()
    assert dead() is None
    assert wait_until(lambda: not bus_workers("gc.handler"))


def test_gc_collects_a_cancelled_subscription_whose_signal_refers_to_it() -> None:
    """A cancelled pull subscription keeps its signals; one that refers back to the
    subscription makes a cycle through it, which the collector must see."""
    bus = SignalBus()
    sub = bus.subscribe("t")
    node = Node()
    node.ref = sub
    bus.publish("t", node)
    sub.cancel()
    dead = weakref.ref(node)
    del sub, node
    gc.collect()
    assert dead() is None
    assert bus.subscriptions() == []


def test_gc_collects_a_signal_whose_data_refers_to_it() -> None:
    """Guards Signal's GC support: signal -> data -> signal used to leak."""
    bus = SignalBus()
    sub = bus.subscribe("t")
    node = Node()
    bus.publish("t", node)
    node.ref = sub.get_nowait()
    dead = weakref.ref(node)
    del node
    gc.collect()
    assert dead() is None


def test_gc_leaves_live_subscriptions_and_signals_alone(no_thread_leak: None) -> None:
    """A collection changes nothing that is still reachable: routed subscriptions keep
    their queued signals (and their data), handlers keep running."""
    bus = SignalBus()
    seen: list[Any] = []
    done = threading.Event()

    def handler(sig: Signal) -> None:
        seen.append(sig.data)
        if sig.data == "last":
            done.set()

    bus.subscribe("live.h", handler)
    bus.subscribe("live.p", maxsize=8)
    for i in range(3):
        bus.publish("live.p", [i])
    gc.collect()
    bus.publish("live.h", "last")
    assert done.wait(5) and seen == ["last"]
    [h, p] = sorted(bus.subscriptions(), key=lambda s: s.pattern)
    assert [p.get_nowait().data for _ in range(3)] == [[0], [1], [2]]
    h.cancel()


# ---- hostile arguments -----------------------------------------------------------------


def test_patterns_are_bounded_and_hostile_ones_route_in_linear_time() -> None:
    """Guards topic matching against hostile patterns: '#.#.#...' and '#.a.#.a...'
    against a long type used to cost O(segments x states^2); each
    state now costs O(1), a run of '#' counts as one, and a pattern has at most 256
    segments."""
    bus = SignalBus()
    hashes = bus.subscribe(".".join(["#"] * 256))
    alternating = bus.subscribe(".".join(["#", "a"] * 128))
    with pytest.raises(ValueError, match=r"^pattern must not have more than 256 segments$"):
        bus.subscribe(".".join(["#"] * 257))
    with pytest.raises(ValueError, match=r"^pattern must not have more than 256 segments$"):
        bus.subscribe("a." * 10_000 + "a")
    long_type = ".".join(["a"] * 20_000)
    assert bus.publish(long_type) == 2
    assert bus.publish(long_type + ".b") == 1
    assert (hashes.qsize(), alternating.qsize()) == (2, 1)
    assert hashes.get_nowait().type == long_type


def test_huge_arguments_give_short_messages_and_no_panic() -> None:
    bus = SignalBus()
    huge = "x" * 1_000_000
    for call, start in (
        (lambda: bus.publish(huge + ".."), 'signal_type "xxx'),
        (lambda: bus.publish(huge + ".*"), 'signal_type "xxx'),
        (lambda: bus.subscribe(huge + ".."), 'pattern "xxx'),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value).startswith(start) and len(str(info.value)) < 200
    sub = bus.subscribe("a", maxsize=2**63 - 1)
    assert sub.maxsize == 2**63 - 1
    assert bus.publish("a", 1) == 1
    for bad in (2**63, 2**100):
        with pytest.raises((ValueError, OverflowError), match=r"^maxsize "):
            bus.subscribe("a", maxsize=bad)


def test_a_str_subclass_type_is_stored_as_a_plain_str() -> None:
    class Name(str):
        pass

    bus = SignalBus()
    sub = bus.subscribe("a.b")
    bus.publish(Name("a.b"))
    sig = sub.get_nowait()
    assert sig.type == "a.b" and type(sig.type) is str


# ---- Ctrl-C ------------------------------------------------------------------------------


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="main")
@pytest.mark.parametrize("op", ["get", "iterate", "publish to a full block mailbox"])
def test_ctrl_c_interrupts_a_blocked_call(op: str) -> None:
    bus = SignalBus()
    sub = bus.subscribe("t", maxsize=1, overflow="block")
    if op.startswith("publish"):
        bus.publish("t", 0)
    calls: dict[str, Callable[[], object]] = {
        "get": sub.get,
        "iterate": lambda: next(iter(sub)),
        "publish to a full block mailbox": lambda: bus.publish("t", 1),
    }
    sent: list[float] = []

    def fire() -> None:
        time.sleep(0.1)
        sent.append(time.monotonic())
        _thread.interrupt_main()

    t = threading.Thread(target=fire)
    t.start()
    with pytest.raises(KeyboardInterrupt):
        calls[op]()
    latency = time.monotonic() - sent[0]
    t.join()
    assert latency < 0.2
    assert sub.stats().rejected == 0
    sub.cancel()


# ---- asyncio ---------------------------------------------------------------------------


def test_get_async_is_woken_by_a_thread() -> None:
    bus = SignalBus()
    sub = bus.subscribe("a.*")

    async def main() -> list[Any]:
        threading.Timer(0.02, lambda: [bus.publish("a.b", i) for i in range(3)]).start()
        return [(await sub.get_async()).data for _ in range(3)]

    assert asyncio.run(main()) == [0, 1, 2]


def test_get_async_cancelled_loses_nothing_and_cancel_wakes_it() -> None:
    bus = SignalBus()
    sub = bus.subscribe("a")

    async def main() -> None:
        task = asyncio.ensure_future(sub.get_async())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        bus.publish("a", "kept")
        assert (await sub.get_async()).data == "kept"
        waiter = asyncio.ensure_future(sub.get_async())
        await asyncio.sleep(0.01)
        sub.cancel()
        with pytest.raises(QueueClosed):
            await waiter

    asyncio.run(main())


# ---- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"pattern": 1}, TypeError, "pattern must be a str, not 'int'"),
        ({"pattern": ""}, ValueError, "pattern must not be empty"),
        ({"pattern": "a..b"}, ValueError, 'pattern "a..b" has an empty segment'),
        ({"pattern": ".a"}, ValueError, 'pattern ".a" has an empty segment'),
        ({"pattern": "a."}, ValueError, 'pattern "a." has an empty segment'),
        ({"pattern": "a", "handler": 5}, TypeError, "handler must be callable or None, not 'int'"),
        ({"pattern": "a", "maxsize": 0}, ValueError, "maxsize must be >= 1"),
        ({"pattern": "a", "maxsize": "8"}, TypeError, "maxsize must be an int, not 'str'"),
        ({"pattern": "a", "maxsize": True}, TypeError, "maxsize must be an int, not 'bool'"),
        (
            {"pattern": "a", "overflow": "spill"},
            ValueError,
            "overflow must be 'block', 'reject', 'drop_oldest' or 'drop_newest', not 'spill'",
        ),
        ({"pattern": "a", "overflow": 1}, TypeError, "overflow must be a str, not 'int'"),
        ({"pattern": "a", "weak": 1}, TypeError, "weak must be a bool, not 'int'"),
    ],
)
def test_subscribe_bad_input(kwargs: dict[str, Any], exc: type[Exception], message: str) -> None:
    bus = SignalBus()
    with pytest.raises(exc) as info:
        bus.subscribe(**kwargs)
    assert str(info.value) == message
    assert bus.subscriptions() == []


@pytest.mark.parametrize(
    ("signal_type", "exc", "message"),
    [
        (1, TypeError, "signal_type must be a str, not 'int'"),
        (None, TypeError, "signal_type must be a str, not 'NoneType'"),
        ("", ValueError, "signal_type must not be empty"),
        ("a..b", ValueError, 'signal_type "a..b" has an empty segment'),
        ("a.*", ValueError, "signal_type \"a.*\" must not contain '*' or '#'"),
        ("#", ValueError, "signal_type \"#\" must not contain '*' or '#'"),
    ],
)
def test_publish_bad_input(signal_type: Any, exc: type[Exception], message: str) -> None:
    bus = SignalBus()
    bus.subscribe("#")
    with pytest.raises(exc) as info:
        bus.publish(signal_type)
    assert str(info.value) == message
    with pytest.raises(exc) as info:
        bus._publish_at(signal_type, None, 1.0)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("timestamp", "exc", "message"),
    [
        ("1.0", TypeError, "timestamp must be a number of seconds, not 'str'"),
        (None, TypeError, "timestamp must be a number of seconds, not 'NoneType'"),
        (True, TypeError, "timestamp must be a number of seconds, not 'bool'"),
        (float("nan"), ValueError, "timestamp must be a finite number of seconds"),
        (float("inf"), ValueError, "timestamp must be a finite number of seconds"),
        (float("-inf"), ValueError, "timestamp must be a finite number of seconds"),
        (-0.001, ValueError, "timestamp must be >= 0"),
        (-1, ValueError, "timestamp must be >= 0"),
        (10**400, OverflowError, "timestamp is out of range"),
    ],
)
def test_publish_at_bad_timestamp(timestamp: Any, exc: type[Exception], message: str) -> None:
    bus = SignalBus()
    sub = bus.subscribe("#")
    with pytest.raises(exc) as info:
        bus._publish_at("a.b", 1, timestamp)
    assert str(info.value) == message
    assert bus.stats().published == 0 and sub.qsize() == 0  # refused before routing


def test_get_bad_timeout() -> None:
    sub = SignalBus().subscribe("a")
    with pytest.raises(ValueError, match=r"^timeout must be >= 0$"):
        sub.get(timeout=-1)
    with pytest.raises(TypeError, match=r"^timeout must be a number of seconds, not 'str'$"):
        sub.get(timeout="1")  # type: ignore[arg-type]


def test_signal_cannot_be_made_directly() -> None:
    with pytest.raises(TypeError):
        Signal()
