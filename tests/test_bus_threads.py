"""SignalBus under real threads: publishers racing subscribe/cancel churn, handler
subscriptions coming and going, and many threads on one pull subscription."""

from __future__ import annotations

import collections
import gc
import threading
import time
from typing import Any

from ferrule import Signal, SignalBus, Subscription

from tests.conftest import wait_until


def test_publish_races_subscribe_and_cancel(threads: int, stress_scale: int) -> None:
    bus = SignalBus()
    publishers = max(2, threads // 2)
    churners = max(2, threads - publishers)
    per = 1500 * stress_scale
    # Subscriptions that live through the whole run see every matching publication.
    everything = bus.subscribe("#", maxsize=publishers * per)
    evens = bus.subscribe("t.*.even", maxsize=publishers * per)
    accepted = [0] * publishers
    churned: list[list[Subscription]] = [[] for _ in range(churners)]
    barrier = threading.Barrier(publishers + churners)
    stop = threading.Event()

    def publish(p: int) -> None:
        barrier.wait()
        for i in range(per):
            accepted[p] += bus.publish(f"t.{p}.{'even' if i % 2 == 0 else 'odd'}", (p, i))

    def churn(c: int) -> None:
        barrier.wait()
        n = 0
        while not stop.is_set():
            pattern = ("t.#", "t.*.odd", f"t.{n % publishers}.*", "#.even")[n % 4]
            sub = bus.subscribe(pattern, maxsize=8)
            churned[c].append(sub)
            if n % 3:
                assert sub.cancel()
            else:
                with sub:
                    if sub.qsize():
                        sub.get_nowait()
            n += 1

    ps = [threading.Thread(target=publish, args=(p,)) for p in range(publishers)]
    cs = [threading.Thread(target=churn, args=(c,)) for c in range(churners)]
    for t in ps + cs:
        t.start()
    for t in ps:
        t.join()
    stop.set()
    for t in cs:
        t.join()

    total = publishers * per
    assert everything.qsize() == total and everything.stats().dropped == 0
    assert evens.qsize() == publishers * ((per + 1) // 2)
    got = [everything.get_nowait().data for _ in range(total)]
    assert collections.Counter(got) == collections.Counter(
        (p, i) for p in range(publishers) for i in range(per)
    )
    # Each publisher's signals arrive in its order.
    for p in range(publishers):
        assert [i for (pp, i) in got if pp == p] == list(range(per))
    churn_accepted = 0
    for subs in churned:
        for sub in subs:
            s = sub.stats()
            assert sub.cancelled
            # A cancelled pull subscription keeps what it had queued, readable.
            assert s.queued == sub.qsize() <= 8 and s.dropped <= s.accepted
            assert s.accepted == s.delivered + s.dropped + s.queued
            churn_accepted += s.accepted
    # Every acceptance publish reported happened in exactly one mailbox.
    assert sum(accepted) == total + evens.stats().accepted + churn_accepted
    assert set(bus.subscriptions()) == {everything, evens}


def test_handler_subscriptions_churn_without_leaking_threads(
    threads: int, stress_scale: int
) -> None:
    before = threading.active_count()
    bus = SignalBus()
    delivered = collections.Counter[int]()
    lock = threading.Lock()

    def make_handler(k: int) -> object:
        def handler(sig: Signal) -> None:
            with lock:
                delivered[k] += 1

        return handler

    rounds = 30 * stress_scale
    barrier = threading.Barrier(threads)
    subs: list[list[Subscription]] = [[] for _ in range(threads)]

    def body(t: int) -> None:
        barrier.wait()
        for r in range(rounds):
            k = t * rounds + r
            sub = bus.subscribe(f"h.{k}", make_handler(k), maxsize=4)  # type: ignore[arg-type]
            subs[t].append(sub)
            for _ in range(3):
                bus.publish(f"h.{k}")
            bus.publish("h.broadcast")
            sub.cancel()

    ts = [threading.Thread(target=body, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    gc.collect()
    assert wait_until(lambda: threading.active_count() <= before, timeout=10.0)
    assert bus.subscriptions() == []
    for group in subs:
        for sub in group:
            s = sub.stats()
            assert s.errors == 0 and s.queued == 0
            assert s.accepted == s.delivered + s.dropped
            assert delivered[int(sub.pattern.split(".")[1])] == s.delivered


def test_many_consumers_share_one_pull_subscription(threads: int, stress_scale: int) -> None:
    bus = SignalBus()
    sub = bus.subscribe("job.*", maxsize=16, overflow="block")
    per = 1000 * stress_scale
    producers = max(1, threads // 2)
    consumers = max(1, threads - producers)
    out: list[list[int]] = [[] for _ in range(consumers)]

    def consume(c: int) -> None:
        # Iteration ends (no QueueClosed) once the subscription is cancelled.
        out[c].extend(sig.data for sig in sub)

    def produce(p: int) -> None:
        for i in range(per):
            assert bus.publish("job.x", p * per + i) == 1

    cs = [threading.Thread(target=consume, args=(c,)) for c in range(consumers)]
    ps = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for t in cs + ps:
        t.start()
    for t in ps:
        t.join()
    assert wait_until(lambda: sub.qsize() == 0, timeout=10.0)
    sub.cancel()
    for t in cs:
        t.join()
    got = sorted(x for o in out for x in o)
    assert got == list(range(producers * per))
    s = sub.stats()
    assert (s.accepted, s.delivered, s.dropped, s.rejected) == (len(got), len(got), 0, 0)


def test_publish_data_mutated_meanwhile(threads: int, stress_scale: int) -> None:
    """Data is passed by reference: publishers share one dict that other threads mutate
    while handlers and pull consumers read it (and repr the signal). Nothing panics,
    every publication is counted once, nothing is lost."""
    bus = SignalBus()
    shared: dict[int, int] = {}
    stop = threading.Event()
    failures: list[BaseException] = []
    seen = collections.Counter[str]()
    lock = threading.Lock()

    def handler(sig: Signal) -> None:
        repr(sig)
        _ = len(sig.data), list(sig.data.items())
        with lock:
            seen["handler"] += 1

    h = bus.subscribe("m.#", handler, maxsize=100_000, weak=False)
    pull = bus.subscribe("m.*", maxsize=100_000)
    per = 500 * stress_scale
    publishers = max(2, threads // 4)

    def mutate() -> None:
        i = 0
        while not stop.is_set():
            shared[i % 64] = i
            shared.pop((i * 7) % 64, None)
            i += 1

    def publish() -> None:
        try:
            for _ in range(per):
                assert bus.publish("m.x", shared) == 2
        except BaseException as e:  # pragma: no cover - reported below
            failures.append(e)

    def read() -> None:
        try:
            while not stop.is_set() or pull.qsize():
                try:
                    sig = pull.get(timeout=0.01)
                except Exception:
                    continue
                repr(sig)
                _ = dict(sig.data)
                with lock:
                    seen["pull"] += 1
        except BaseException as e:  # pragma: no cover - reported below
            failures.append(e)

    mutators = [threading.Thread(target=mutate) for _ in range(2)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    pubs = [threading.Thread(target=publish) for _ in range(publishers)]
    for t in mutators + readers + pubs:
        t.start()
    for t in pubs:
        t.join()
    assert wait_until(lambda: h.stats().delivered == publishers * per, timeout=10.0)
    stop.set()
    for t in mutators + readers:
        t.join()
    h.cancel()
    assert failures == []
    assert seen == {"handler": publishers * per, "pull": publishers * per}


def test_collections_during_publishing_leave_live_signals_alone(
    threads: int, stress_scale: int
) -> None:
    """Signals move in and out of mailboxes only while attached, so a collection running
    meanwhile never takes a live signal or its data for garbage (a self-referencing
    list as data would be cleared under its reader)."""
    bus = SignalBus()
    pull = bus.subscribe("g.pull", maxsize=4, overflow="block")
    handled: list[Any] = []
    per = 300 * stress_scale
    publishers = max(2, threads // 4)
    done = threading.Event()

    def handler(sig: Signal) -> None:
        handled.append(sig.data)
        if len(handled) == publishers * per:
            done.set()

    h = bus.subscribe("g.handler", handler, maxsize=4, overflow="block", weak=False)
    stop = threading.Event()

    rounds = 0

    def collect() -> None:
        # Paced: on a free-threaded build every collection stops the world and walks the
        # whole heap, so back-to-back collections late in a long run starve the publishers.
        nonlocal rounds
        while not stop.is_set():
            gc.collect(0)
            rounds += 1
            time.sleep(0.002)

    def publish(p: int) -> None:
        for i in range(per):
            for kind in ("pull", "handler"):
                data: list[Any] = [kind, p, i]
                data.append(data)
                bus.publish(f"g.{kind}", data)

    pulled: list[Any] = []

    def read() -> None:
        pulled.extend(sig.data for sig in pull)

    reader = threading.Thread(target=read)
    collector = threading.Thread(target=collect, daemon=True)
    pubs = [threading.Thread(target=publish, args=(p,)) for p in range(publishers)]
    for t in [collector, reader, *pubs]:
        t.start()
    try:
        for t in pubs:
            t.join()
        assert done.wait(30)
    finally:
        pull.cancel()
        reader.join()
        stop.set()
        collector.join()
        h.cancel()
    assert rounds > 0
    want = sorted((p, i) for p in range(publishers) for i in range(per))
    for kind, got in (("pull", pulled), ("handler", handled)):
        assert all(len(d) == 4 and d[3] is d and d[0] == kind for d in got)
        assert sorted((d[1], d[2]) for d in got) == want
