"""WorkQueue under real threads: nothing lost, nothing duplicated, bounds kept."""

from __future__ import annotations

import collections
import threading

import pytest
from ferrule import QueueClosed, WorkQueue


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
    assert s.rejected == sum(refused)
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
