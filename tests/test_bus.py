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


def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


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
    # cancelled; a signal still queued at cancellation is discarded (counted).
    bus.publish("t", 2)
    sub.cancel()
    assert [s.data for s in it] == []
    s = sub.stats()
    assert (s.accepted, s.delivered, s.dropped, s.queued) == (4, 2, 2, 0)
    with pytest.raises(QueueClosed, match=r"^subscription is cancelled$"):
        sub.get()
    with pytest.raises(QueueClosed):
        sub.get_nowait()


def test_blocked_get_is_woken_by_publish_and_by_cancel() -> None:
    bus = SignalBus()
    sub = bus.subscribe("t")
    threading.Timer(0.02, bus.publish, args=("t", "late")).start()
    assert sub.get(timeout=5).data == "late"
    threading.Timer(0.02, sub.cancel).start()
    with pytest.raises(QueueClosed):
        sub.get(timeout=5)


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
        ("drop_newest", 5, [0, 1], 3, 0),
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


def test_block_policy_waits_for_room_and_is_woken_by_cancel() -> None:
    bus = SignalBus()
    sub = bus.subscribe("t", maxsize=1, overflow="block")
    free = bus.subscribe("t", maxsize=1)  # never blocks the publisher
    assert bus.publish("t", 0) == 2
    threading.Timer(0.05, sub.get).start()
    assert bus.publish("t", 1) == 2  # waited until the getter made room
    assert sub.get_nowait().data == 1
    assert free.get_nowait().data == 1
    assert bus.publish("t", 2) == 2
    threading.Timer(0.05, sub.cancel).start()
    assert bus.publish("t", 3) == 1  # woken by the cancellation: not accepted there


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


def test_del_of_an_evicted_or_discarded_signal_may_use_the_bus() -> None:
    bus = SignalBus()
    log: list[str] = []

    class Reentrant:
        def __init__(self, name: str) -> None:
            self.name = name

        def __del__(self) -> None:
            # Runs when the mailbox lets go of the last signal holding it.
            log.append(self.name)
            bus.publish("audit", self.name)
            bus.subscribe("late").cancel()

    audit = bus.subscribe("audit", maxsize=10)
    sub = bus.subscribe("t", maxsize=1, overflow="drop_oldest")
    bus.publish("t", Reentrant("evicted"))
    bus.publish("t", Reentrant("discarded"))  # evicts the first: its __del__ runs
    sub.cancel()  # discards the second
    gc.collect()
    assert log == ["evicted", "discarded"]
    assert [audit.get_nowait().data for _ in range(2)] == ["evicted", "discarded"]


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


def test_get_bad_timeout() -> None:
    sub = SignalBus().subscribe("a")
    with pytest.raises(ValueError, match=r"^timeout must be >= 0$"):
        sub.get(timeout=-1)
    with pytest.raises(TypeError, match=r"^timeout must be a number of seconds, not 'str'$"):
        sub.get(timeout="1")  # type: ignore[arg-type]


def test_signal_cannot_be_made_directly() -> None:
    with pytest.raises(TypeError):
        Signal()
