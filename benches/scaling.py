"""Scaling benchmark: the same workload on 1 and 2 threads, ferrule beside a peer.

Meant for free-threaded CPython (``make scaling`` runs it on 3.13t with the GIL off);
on a GIL build every ratio is ~1.0 or below, which is the point of comparison.

Each row runs a fixed number of operations per thread, in 1 thread and then in 2, and
reports throughput(2 threads) / throughput(1 thread). Runs repeat (``--repeat``) and the
table gives the median ratio and its spread (min-max). The machine is shared: ratios from
one run are comparable, absolute times are not.

Adding a part: write ``setup_<part>()`` returning a per-thread ``work(thread_index)``
callable for ferrule and one for the peer, and append a ``Row`` to ``ROWS``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import ferrule

Work = Callable[[int], None]


@dataclass
class Row:
    name: str
    ops_per_thread: int
    ferrule: Callable[[int], Work]  # (ops) -> work(thread_index)
    peer_name: str
    peer: Callable[[int], Work]


def run_threads(work: Work, threads: int) -> float:
    """Wall seconds for `threads` threads each running work(i), started together."""
    barrier = threading.Barrier(threads + 1)
    done: list[float] = []

    def body(i: int) -> None:
        barrier.wait()
        work(i)

    ts = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    done.append(time.perf_counter() - t0)
    return done[0]


def ratio(make: Callable[[int], Work], ops: int) -> float:
    one = run_threads(make(ops), 1)
    two = run_threads(make(ops), 2)
    # Two threads did twice the operations.
    return (2 * ops / two) / (ops / one)


# ---- cache: get and set on distinct keys per thread ------------------------------------


def cache_ferrule(ops: int) -> Work:
    cache = ferrule.Cache(4 * ops)
    keyspace = 10_000

    def work(i: int) -> None:
        base = i * keyspace
        get, put = cache.get, cache.set
        for n in range(ops):
            k = base + n % keyspace
            if n & 1:
                put(k, n)
            else:
                get(k)

    return work


def cache_peer(ops: int) -> Work:
    try:
        import cachebox

        cache = cachebox.LRUCache(4 * ops)
        get, put = cache.get, cache.insert
    except ImportError:
        lock = threading.Lock()
        d: dict[int, int] = {}

        def get(k: int) -> int | None:
            with lock:
                return d.get(k)

        def put(k: int, v: int) -> None:
            with lock:
                d[k] = v

    keyspace = 10_000

    def work(i: int) -> None:
        base = i * keyspace
        for n in range(ops):
            k = base + n % keyspace
            if n & 1:
                put(k, n)
            else:
                get(k)

    return work


def _cache_peer_name() -> str:
    try:
        import cachebox  # noqa: F401

        return "cachebox.LRUCache"
    except ImportError:
        return "dict + Lock"


# ---- resources: acquire/release on a budget per thread ----------------------------------


def resources_ferrule(ops: int) -> Work:
    rm = ferrule.ResourceManager({f"t{i}": 100 for i in range(64)})

    def work(i: int) -> None:
        acquire = rm.acquire
        name = f"t{i}"
        for _ in range(ops):
            acquire(name).release()

    return work


def resources_peer(ops: int) -> Work:
    sems = [threading.BoundedSemaphore(100) for _ in range(64)]

    def work(i: int) -> None:
        sem = sems[i]
        for _ in range(ops):
            sem.acquire()
            sem.release()

    return work


ROWS: list[Row] = [
    Row("Cache get/set, distinct keys", 200_000, cache_ferrule, _cache_peer_name(), cache_peer),
    Row(
        "ResourceManager acquire/release, budget per thread",
        100_000,
        resources_ferrule,
        "threading.BoundedSemaphore per thread",
        resources_peer,
    ),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a tenth of the operations, 1 repeat")
    ap.add_argument("--only", default=None, help="run rows whose name contains this text")
    a = ap.parse_args(argv)
    repeat = 1 if a.quick else a.repeat
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(
        f"# {sys.version.split()[0]} Py_GIL_DISABLED={sysconfig.get_config_var('Py_GIL_DISABLED')}"
        f" GIL enabled={gil}; ratio = throughput(2 threads) / throughput(1 thread),"
        f" median of {repeat} (min-max)\n"
    )
    print("| workload | ferrule 2T/1T | peer | peer 2T/1T |")
    print("| --- | --- | --- | --- |")
    for row in ROWS:
        if a.only and a.only not in row.name:
            continue
        ops = row.ops_per_thread // (10 if a.quick else 1)
        mine = [ratio(row.ferrule, ops) for _ in range(repeat)]
        theirs = [ratio(row.peer, ops) for _ in range(repeat)]

        def fmt(xs: list[float]) -> str:
            return f"{statistics.median(xs):.2f}x ({min(xs):.2f}-{max(xs):.2f})"

        print(f"| {row.name} | {fmt(mine)} | {row.peer_name} | {fmt(theirs)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
