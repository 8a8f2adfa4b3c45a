"""Pool benchmarks, ferrule beside its peers in each group.

Every benchmark runs a batch of BATCH operations per call, so the per-operation cost is
the reported time / BATCH. Run for real (release build) with:

    .venv/bin/python -m pytest benches/test_pool.py --benchmark-only \
        --benchmark-columns=min,median,ops -q --benchmark-json=/tmp/r.json
    .venv/bin/python benches/report.py /tmp/r.json

Peers: a hand-made pool over ``queue.LifoQueue`` (what services usually write) and
SQLAlchemy's ``QueuePool`` with a dummy creator.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import ferrule
import pytest

BATCH = 10_000


class DummyConn:
    """A connection that does nothing (what SQLAlchemy's pool calls on it)."""

    def close(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def commit(self) -> None:
        pass


class QueueBackedPool:
    """The usual hand-made pool: a LIFO queue of idle items plus a size counter."""

    def __init__(self, factory: Callable[[], Any], max_size: int, timeout: float = 30.0):
        self.factory = factory
        self.max_size = max_size
        self.timeout = timeout
        self.idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self.size = 0
        self.lock = threading.Lock()

    def get(self) -> Any:
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            pass
        with self.lock:
            create = self.size < self.max_size
            if create:
                self.size += 1
        if create:
            try:
                return self.factory()
            except BaseException:
                with self.lock:
                    self.size -= 1
                raise
        return self.idle.get(timeout=self.timeout)

    def put(self, item: Any) -> None:
        self.idle.put(item)

    def acquire(self) -> _QueueCheckout:
        return _QueueCheckout(self)


class _QueueCheckout:
    __slots__ = ("item", "pool")

    def __init__(self, pool: QueueBackedPool) -> None:
        self.pool = pool

    def __enter__(self) -> Any:
        self.item = self.pool.get()
        return self.item

    def __exit__(self, *exc: object) -> None:
        self.pool.put(self.item)


# A checkout: a callable that checks one item out and returns it.
Checkout = Callable[[], None]


def _ferrule_pool(max_size: int) -> Checkout:
    pool = ferrule.Pool(DummyConn, max_size=max_size)
    acquire = pool.acquire

    def run() -> None:
        with acquire():
            pass

    return run


def _queue_pool(max_size: int) -> Checkout:
    pool = QueueBackedPool(DummyConn, max_size)
    acquire = pool.acquire

    def run() -> None:
        with acquire():
            pass

    return run


def _sqlalchemy_pool(max_size: int) -> Checkout:
    sa_pool = pytest.importorskip("sqlalchemy.pool")
    pool = sa_pool.QueuePool(DummyConn, pool_size=max_size, max_overflow=0, timeout=30)
    connect = pool.connect

    def run() -> None:
        connect().close()  # close() returns the connection to the pool

    return run


POOLS: dict[str, Callable[[int], Checkout]] = {
    "ferrule": _ferrule_pool,
    "queue.LifoQueue pool": _queue_pool,
    "sqlalchemy QueuePool": _sqlalchemy_pool,
}


@pytest.mark.parametrize("impl", list(POOLS))
def test_pool_checkout_return(benchmark: Any, impl: str) -> None:
    benchmark.group = "pool checkout+return, 1 thread"
    benchmark.extra_info["ops"] = BATCH
    one = POOLS[impl](4)

    def run() -> None:
        for _ in range(BATCH):
            one()

    benchmark(run)


CONTENDED_THREADS = 4


@pytest.mark.parametrize("impl", list(POOLS))
def test_pool_contended(benchmark: Any, impl: str) -> None:
    """4 threads share a pool of 2: checkouts wait and are handed over."""
    benchmark.group = f"pool checkout+return, {CONTENDED_THREADS} threads, max_size=2"
    per_thread = BATCH // CONTENDED_THREADS // 4
    benchmark.extra_info["ops"] = per_thread * CONTENDED_THREADS
    one = POOLS[impl](2)

    def run() -> None:
        barrier = threading.Barrier(CONTENDED_THREADS)

        def body() -> None:
            barrier.wait()
            for _ in range(per_thread):
                one()

        ts = [threading.Thread(target=body) for _ in range(CONTENDED_THREADS)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    benchmark.pedantic(run, rounds=10, iterations=1)
