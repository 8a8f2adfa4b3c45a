"""WorkQueue beside queue.Queue and deque + Condition.

Run (release build): .venv/bin/python -m pytest benches/test_queue.py --benchmark-only
--benchmark-columns=min,median,ops -q
"""

from __future__ import annotations

import collections
import queue
import threading
from typing import Any

import ferrule
import pytest

ROUND_TRIPS = 1_000
TRANSFER = 20_000
MAXSIZE = 1024


class DequeQueue:
    """The hand-rolled peer: a bounded deque guarded by one Condition."""

    def __init__(self, maxsize: int) -> None:
        self.items: collections.deque[Any] = collections.deque()
        self.maxsize = maxsize
        self.cond = threading.Condition()

    def put(self, item: Any) -> None:
        with self.cond:
            while len(self.items) >= self.maxsize:
                self.cond.wait()
            self.items.append(item)
            self.cond.notify_all()

    def get(self) -> Any:
        with self.cond:
            while not self.items:
                self.cond.wait()
            item = self.items.popleft()
            self.cond.notify_all()
            return item


def make(kind: str) -> Any:
    if kind == "ferrule.WorkQueue":
        return ferrule.WorkQueue(MAXSIZE)
    if kind == "queue.Queue":
        return queue.Queue(MAXSIZE)
    return DequeQueue(MAXSIZE)


KINDS = ["ferrule.WorkQueue", "queue.Queue", "deque + Condition"]


@pytest.mark.benchmark(group="queue: put+get round trip, one thread (x1000)")
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(benchmark: Any, kind: str) -> None:
    q = make(kind)
    put, get = q.put, q.get

    def run() -> None:
        for i in range(ROUND_TRIPS):
            put(i)
            get()

    benchmark(run)
    assert (len(q.items) if isinstance(q, DequeQueue) else q.qsize()) == 0


@pytest.mark.benchmark(group="queue: put+get+task_done round trip, then join (x1000)")
@pytest.mark.parametrize("kind", ["ferrule.WorkQueue", "queue.Queue"])
def test_task_done_round_trip(benchmark: Any, kind: str) -> None:
    """The queue.Queue worker protocol: its bookkeeping beside the plain round trip."""
    q = make(kind)
    put, get, task_done = q.put, q.get, q.task_done

    def run() -> None:
        for i in range(ROUND_TRIPS):
            put(i)
            get()
            task_done()
        q.join()

    benchmark(run)
    assert q.unfinished_tasks == 0


@pytest.mark.benchmark(group="queue: producer -> consumer across two threads (x20000)")
@pytest.mark.parametrize("kind", KINDS)
def test_two_thread_transfer(benchmark: Any, kind: str) -> None:
    def run() -> int:
        q = make(kind)
        put, get = q.put, q.get

        def produce() -> None:
            for i in range(TRANSFER):
                put(i)

        t = threading.Thread(target=produce)
        t.start()
        total = 0
        for _ in range(TRANSFER):
            total += get()
        t.join()
        return total

    assert benchmark(run) == TRANSFER * (TRANSFER - 1) // 2
