"""WorkQueue under real threads: nothing lost, nothing duplicated, bounds kept."""

from __future__ import annotations

import collections
import contextlib
import gc
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from ferrule import QueueClosed, WorkQueue

from .conftest import FREE_THREADED


def run(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()


@pytest.mark.parametrize("batched", [False, True])
def test_no_loss_no_duplicate(threads: int, stress_scale: int, batched: bool) -> None:
    producers = consumers = max(2, threads // 2)
    per = 2000 * stress_scale
    q: WorkQueue[tuple[int, int]] = WorkQueue(16)
    barrier = threading.Barrier(producers + consumers)
    received: list[list[tuple[int, int]]] = [[] for _ in range(consumers)]

    def produce(p: int) -> None:
        barrier.wait()
        items = [(p, i) for i in range(per)]
        if batched:
            for k in range(0, per, 50):
                assert q.put_many(items[k : k + 50]) == len(items[k : k + 50])
        else:
            for item in items:
                q.put(item)

    def consume(c: int) -> None:
        barrier.wait()
        out = received[c]
        if batched:
            while True:
                try:
                    out.extend(q.get_many(7))
                except QueueClosed:
                    return
        else:
            out.extend(q)

    ps = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    cs = [threading.Thread(target=consume, args=(c,)) for c in range(consumers)]
    run(ps + cs)
    for t in ps:
        t.join()
    q.close()
    for t in cs:
        t.join()
    got = collections.Counter(x for out in received for x in out)
    want = collections.Counter((p, i) for p in range(producers) for i in range(per))
    assert got == want
    for out in received:  # each producer's items arrive in order at each consumer
        for p in range(producers):
            seq = [i for (pp, i) in out if pp == p]
            assert seq == sorted(seq)
    s = q.stats()
    assert s.put == s.got == producers * per
    assert s.dropped == s.rejected == s.size == 0
    assert s.high_water <= 16


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest", "reject"])
def test_lossy_policies_account_for_every_item(
    threads: int, stress_scale: int, overflow: str
) -> None:
    producers = consumers = max(2, threads // 2)
    per = 2000 * stress_scale
    q: WorkQueue[tuple[int, int]] = WorkQueue(8, overflow=overflow)
    received: list[list[tuple[int, int]]] = [[] for _ in range(consumers)]
    refused = [0] * producers

    def produce(p: int) -> None:
        for i in range(per):
            try:
                q.put((p, i))
            except Exception:
                refused[p] += 1

    def consume(c: int) -> None:
        received[c].extend(q)

    ps = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    cs = [threading.Thread(target=consume, args=(c,)) for c in range(consumers)]
    run(ps + cs)
    for t in ps:
        t.join()
    q.close()
    for t in cs:
        t.join()
    got = collections.Counter(x for out in received for x in out)
    assert max(got.values(), default=1) == 1  # nothing twice
    s = q.stats()
    assert s.got == sum(got.values())
    assert s.put == s.got + s.dropped  # drained: size is 0
    assert s.put + s.rejected == producers * per
    # reject raises for each refusal; drop_newest refuses silently (still counted).
    assert sum(refused) == (s.rejected if overflow == "reject" else 0)
    assert s.high_water <= 8


def test_timed_waits_under_contention_keep_the_books(threads: int) -> None:
    q: WorkQueue[int] = WorkQueue(2)
    stop = threading.Event()

    def churn(k: int) -> None:
        n = 0
        while not stop.is_set() and n < 3000:
            n += 1
            try:
                if k % 2:
                    q.put(n, timeout=0.0005)
                else:
                    q.get(timeout=0.0005)
            except Exception:
                pass

    ts = [threading.Thread(target=churn, args=(k,)) for k in range(threads)]
    run(ts)
    for t in ts:
        t.join()
    s = q.stats()
    assert s.put == s.got + s.dropped + s.size
    assert s.size == len(q) <= 2


def _source(kind: str, n: int) -> tuple[Any, Callable[[], Any], Callable[[], None]]:
    """A container of `kind`, a way to iterate it, and one mutation step."""
    if kind == "list":
        lst = list(range(n))
        return (
            lst,
            lambda: lst,
            lambda: (lst.append(0), lst.pop(0), lst.clear(), lst.extend(range(n))),
        )
    if kind == "deque":
        dq = collections.deque(range(n))
        return dq, lambda: dq, lambda: (dq.append(0), dq.popleft(), dq.rotate(3))
    if kind == "generator over a list":
        src = list(range(n))

        def step() -> None:
            src.append(0)
            del src[:1]

        return src, lambda: (x for x in src), step
    if kind == "set":
        st = set(range(n))
        return st, lambda: st, lambda: (st.add(n + 1), st.discard(n + 1), st.discard(3), st.add(3))
    d = dict.fromkeys(range(n), 0)
    views = {"dict keys": d.keys, "dict values": d.values, "dict items": d.items}

    def mutate_dict() -> None:
        d[n + 1] = 1
        del d[n + 1]
        d.pop(3, None)
        d[3] = 0

    return d, lambda: views[kind](), mutate_dict


@pytest.mark.parametrize(
    "kind",
    ["list", "deque", "set", "dict keys", "dict values", "dict items", "generator over a list"],
)
def test_put_many_of_a_container_mutated_meanwhile(kind: str, stress_scale: int) -> None:
    """Guards put_many (and get_many beside it) against concurrent mutation of the
    argument (free-threaded builds): it is read through Python's own iteration
    protocol, so a change raises an ordinary exception (or is read as it is); never a
    PanicException (which `except Exception` would not catch), and the books balance."""
    container, view, mutate = _source(kind, 200)
    q: WorkQueue[Any] = WorkQueue(10_000, overflow="drop_oldest")
    stop = threading.Event()
    errors: list[BaseException] = []

    def mutator() -> None:
        try:
            while not stop.is_set():
                # Two mutators race each other too: their own lookups may miss.
                with contextlib.suppress(LookupError):
                    mutate()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def consumer() -> None:
        try:
            while not stop.is_set():
                q.get_many(64, timeout=0.01)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    helpers = [threading.Thread(target=mutator) for _ in range(2)]
    helpers.append(threading.Thread(target=consumer))
    for t in helpers:
        t.start()
    calls = raised = 0
    try:
        for _ in range(300 * stress_scale):
            calls += 1
            try:
                n = q.put_many(view())
                assert n >= 0
            except RuntimeError:  # "... changed size during iteration", "deque mutated"
                raised += 1
    finally:
        stop.set()
        for t in helpers:
            t.join()
    assert errors == []
    assert calls == 300 * stress_scale and raised <= calls
    s = q.stats()
    assert s.put == s.got + s.dropped + s.size
    assert container is not None


@pytest.mark.skipif(
    FREE_THREADED,
    reason="CPython 3.13t itself crashes when threads resume one generator concurrently",
)
def test_put_many_of_a_generator_shared_by_threads(threads: int) -> None:
    """Several threads draining one generator through put_many: each call reads it
    with Python's iteration protocol, so a clash surfaces as Python's own exception
    ('generator already executing'); whatever each call read is put exactly once.
    (Which values a shared iterator yields under concurrent use is Python's business on
    free-threaded builds; the queue's books are ferrule's.)"""
    q: WorkQueue[int] = WorkQueue(1_000_000)

    def numbers() -> Any:
        yield from range(100_000)

    gen = numbers()
    barrier = threading.Barrier(threads)
    counts: list[int] = []
    failures: list[BaseException] = []

    def body() -> None:
        barrier.wait()
        while True:
            try:
                n = q.put_many(x for _, x in zip(range(1000), gen, strict=False))
            except ValueError:
                continue
            except BaseException as e:  # pragma: no cover - reported below
                failures.append(e)
                return
            counts.append(n)
            if n == 0:
                return

    ts = [threading.Thread(target=body) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert failures == []
    got = q.get_many(1_000_000, timeout=0)
    assert sum(counts) == len(got) == q.stats().put
    assert set(got) <= set(range(100_000))


def test_collections_during_transfers_leave_live_items_alone(
    threads: int, stress_scale: int
) -> None:
    """Items and wakers enter and leave a queue only while their thread is attached to
    the interpreter, so a garbage collection running meanwhile sees what it visits hold
    still: a live item (here a self-referencing list, a collectable shape) is never
    taken for garbage, which would clear it under its consumer."""
    q: WorkQueue[list[Any]] = WorkQueue(4)
    per = 400 * stress_scale
    producers = consumers = max(2, threads // 4)
    stop = threading.Event()
    received: list[list[list[Any]]] = [[] for _ in range(consumers)]

    def produce(p: int) -> None:
        for i in range(per):
            item: list[Any] = [p, i]
            item.append(item)
            q.put(item)

    def consume(c: int) -> None:
        received[c].extend(q)

    rounds = 0

    def collect() -> None:
        # Paced: on a free-threaded build every collection stops the world and walks the
        # whole heap; back-to-back ones starve the producers and consumers (each has to
        # re-attach between two of them) until the test times out.
        nonlocal rounds
        while not stop.is_set():
            gc.collect(0)
            rounds += 1
            time.sleep(0.002)

    ps = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    cs = [threading.Thread(target=consume, args=(c,)) for c in range(consumers)]
    collector = threading.Thread(target=collect, daemon=True)
    run([collector, *ps, *cs])
    try:
        for t in ps:
            t.join()
    finally:
        q.close()
        for t in cs:
            t.join()
        stop.set()
        collector.join()
    assert rounds > 0
    items = [item for out in received for item in out]
    assert len(items) == producers * per
    assert all(len(item) == 3 and item[2] is item for item in items)
    assert sorted((item[0], item[1]) for item in items) == sorted(
        (p, i) for p in range(producers) for i in range(per)
    )


def test_join_returns_once_every_item_of_many_producers_is_done(
    threads: int, stress_scale: int
) -> None:
    """N producers, N consumers calling task_done after their work, and several threads
    in join(): each join returns only once every item put before it began was done, and
    the books balance (nothing done twice, nothing left unfinished)."""
    producers = consumers = max(2, threads // 2)
    per = 1000 * stress_scale
    q: WorkQueue[int] = WorkQueue(8)
    processed = collections.Counter[int]()
    lock = threading.Lock()

    def produce(p: int) -> None:
        for i in range(per):
            q.put(p * per + i)

    def consume() -> None:
        for item in q:
            with lock:
                processed[item] += 1
            q.task_done()

    seen_at_join: list[int] = []

    def join() -> None:
        q.join()
        with lock:
            seen_at_join.append(sum(processed.values()))

    ps = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    cs = [threading.Thread(target=consume) for _ in range(consumers)]
    run(ps + cs)
    for t in ps:
        t.join()
    js = [threading.Thread(target=join) for _ in range(3)]  # every item is put by now
    run(js)
    q.join()
    assert sum(processed.values()) == producers * per
    for t in js:
        t.join(30)
    assert seen_at_join == [producers * per] * 3
    q.shutdown()
    for t in cs:
        t.join(30)
    assert processed == collections.Counter(range(producers * per))
    assert q.unfinished_tasks == 0
    s = q.stats()
    assert s.put == s.got == producers * per


def test_shutdown_immediate_under_traffic_keeps_the_books(threads: int) -> None:
    """Producers and consumers running when an immediate shutdown comes: every item put
    is got or dropped, a join then returns once the consumers finish what they got."""
    q: WorkQueue[int] = WorkQueue(4)
    got = collections.Counter[int]()
    lock = threading.Lock()
    started = threading.Barrier(threads + 1)

    def produce(p: int) -> None:
        started.wait()
        with contextlib.suppress(QueueClosed):
            for i in range(100_000):
                q.put(p * 100_000 + i)

    def consume() -> None:
        started.wait()
        for item in q:
            with lock:
                got[item] += 1
            q.task_done()

    half = threads // 2
    ts = [threading.Thread(target=produce, args=(p,)) for p in range(half)]
    ts += [threading.Thread(target=consume) for _ in range(threads - half)]
    run(ts)
    started.wait()
    while q.stats().got < 1000:
        time.sleep(0.001)
    q.shutdown(immediate=True)
    for t in ts:
        t.join(30)
    q.join()
    s = q.stats()
    assert s.put == s.got + s.dropped and s.size == 0
    assert sum(got.values()) == s.got and max(got.values()) == 1
    assert q.unfinished_tasks == 0
