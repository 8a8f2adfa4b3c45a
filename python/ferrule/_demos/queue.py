"""Demo step: WorkQueue and TaskPool."""

from __future__ import annotations

import asyncio
import queue
import threading
import time

import ferrule
from ferrule._demos import rate


def _transfer(q: ferrule.WorkQueue[int] | queue.Queue[int], n: int) -> float:
    def produce() -> None:
        for i in range(n):
            q.put(i)

    t = threading.Thread(target=produce)
    t0 = time.perf_counter()
    t.start()
    for _ in range(n):
        q.get()
    t.join()
    return time.perf_counter() - t0


def run() -> None:
    print("== WorkQueue: bounded MPMC queue with overflow policies; TaskPool executor")
    for policy in ("drop_oldest", "drop_newest", "reject"):
        q: ferrule.WorkQueue[int] = ferrule.WorkQueue(3, overflow=policy)
        accepted = q.put_many(range(6))
        s = q.stats()
        print(
            f"  {policy:>11}: put_many(range(6)) into maxsize 3 accepted {accepted}, "
            f"queue={q.get_many(10)}, dropped={s.dropped}, rejected={s.rejected}"
        )

    q = ferrule.WorkQueue(10)
    q.put_many([1, 2])
    q.close()
    print(f"  after close(): getters drain {list(q)}, then iteration ends")

    async def agen() -> list[int]:
        aq: ferrule.WorkQueue[int] = ferrule.WorkQueue(1)
        threading.Thread(target=aq.put_many, args=([0, 1, 2],)).start()
        return [await aq.get_async() for _ in range(3)]

    print(f"  get_async() fed by a plain thread: {asyncio.run(agen())}")

    n = 100_000
    fq: ferrule.WorkQueue[int] = ferrule.WorkQueue(1024)
    put, get = fq.put, fq.get
    t0 = time.perf_counter()
    for i in range(n):
        put(i)
        get()
    mine = time.perf_counter() - t0
    sq: queue.Queue[int] = queue.Queue(1024)
    sput, sget = sq.put, sq.get
    t0 = time.perf_counter()
    for i in range(n // 10):
        sput(i)
        sget()
    theirs = (time.perf_counter() - t0) * 10
    print(f"  put+get round trip, one thread: {rate(n, mine)} ({theirs / mine:.1f}x queue.Queue)")
    m = 50_000
    mine = _transfer(ferrule.WorkQueue(1024), m)
    theirs = _transfer(queue.Queue(1024), m // 5) * 5
    print(
        f"  producer -> consumer across two threads: {rate(m, mine)} "
        f"({theirs / mine:.1f}x queue.Queue)"
    )

    with ferrule.TaskPool(4, max_queue=64) as pool:
        futs = [pool.submit(pow, i, 2) for i in range(2000)]
        total = sum(f.result() for f in futs)
        bad = pool.submit(lambda: 1 / 0)
        err = type(bad.exception()).__name__
    ps = pool.stats()
    print(
        f"  TaskPool(4): 2001 tasks, sum={total}, the failing one gave {err}; "
        f"stats: completed={ps.completed} failed={ps.failed} active={ps.active} queued={ps.queued}"
    )
