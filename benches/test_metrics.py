"""Metrics benchmarks: ferrule beside prometheus_client and plain baselines.

Every benchmark runs a batch of BATCH operations per call, so the per-operation cost is
the reported time / BATCH. Run for real (release build) with:

    .venv/bin/python -m pytest benches/test_metrics.py --benchmark-only \
        --benchmark-columns=min,median,ops -q

Groups: ``metrics record`` (one latency observation by operation name), ``metrics time``
(timing an empty block), ``metrics snapshot`` (one operation's statistics).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import ferrule
import pytest

BATCH = 10_000
OPS = ["db.query", "http.get", "cache.fill", "auth.check"]


def latencies() -> list[float]:
    rng = random.Random(42)
    return [rng.lognormvariate(-6.0, 1.0) for _ in range(BATCH)]


# ---- record ------------------------------------------------------------------------------

Record = Callable[[str, float], Any]


def _ferrule_record() -> Record:
    return ferrule.Metrics().record


def _prometheus_labels() -> Record:
    prometheus_client = pytest.importorskip("prometheus_client")
    h = prometheus_client.Histogram("op_seconds", "latency", ["op"], registry=None)
    return lambda op, s: h.labels(op).observe(s)


def _prometheus_observe() -> Record:
    # One Histogram per operation, looked up in a dict: the cheapest way to use it.
    prometheus_client = pytest.importorskip("prometheus_client")
    hs = {
        op: prometheus_client.Histogram(f"h_{i}", "latency", registry=None)
        for i, op in enumerate(OPS)
    }
    return lambda op, s: hs[op].observe(s)


def _locked_list() -> Record:
    lock = threading.Lock()
    rows: list[tuple[str, float]] = []

    def record(op: str, s: float) -> None:
        with lock:
            rows.append((op, s))
            if len(rows) > 100_000:  # keep memory bounded between rounds
                rows.clear()

    return record


RECORDERS: dict[str, Callable[[], Record]] = {
    "ferrule Metrics.record": _ferrule_record,
    "prometheus Histogram.observe": _prometheus_observe,
    "prometheus labels(op).observe": _prometheus_labels,
    "Lock + list.append": _locked_list,
}


@pytest.mark.parametrize("impl", list(RECORDERS))
def test_record(benchmark: Any, impl: str) -> None:
    benchmark.group = "metrics record"
    benchmark.extra_info["ops"] = BATCH
    record = RECORDERS[impl]()
    work = list(zip([OPS[i % len(OPS)] for i in range(BATCH)], latencies(), strict=True))

    def run() -> None:
        for op, s in work:
            record(op, s)

    benchmark(run)


# ---- time() ------------------------------------------------------------------------------

Timer = Callable[[], AbstractContextManager[Any]]


def _ferrule_time() -> Timer:
    m = ferrule.Metrics()
    return lambda: m.time("block")


def _prometheus_time() -> Timer:
    prometheus_client = pytest.importorskip("prometheus_client")
    h = prometheus_client.Histogram("block_seconds", "latency", registry=None)
    return h.time


class _LockedListTimer:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[float] = []
        self.start = 0.0

    def __call__(self) -> _LockedListTimer:
        return self

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        with self.lock:
            self.rows.append(elapsed)
            if len(self.rows) > 100_000:
                self.rows.clear()


TIMERS: dict[str, Callable[[], Timer]] = {
    "ferrule with m.time(op)": _ferrule_time,
    "prometheus with h.time()": _prometheus_time,
    "perf_counter + Lock + list": _LockedListTimer,
}


@pytest.mark.parametrize("impl", list(TIMERS))
def test_time(benchmark: Any, impl: str) -> None:
    benchmark.group = "metrics time"
    benchmark.extra_info["ops"] = BATCH
    timer = TIMERS[impl]()

    def run() -> None:
        for _ in range(BATCH):
            with timer():
                pass

    benchmark(run)


def test_time_decorator(benchmark: Any) -> None:
    benchmark.group = "metrics time"
    benchmark.extra_info["ops"] = BATCH
    m = ferrule.Metrics()

    @m.time("fn")
    def fn() -> None:
        pass

    def run() -> None:
        for _ in range(BATCH):
            fn()

    benchmark(run)
    assert m.snapshot("fn").count > 0


def test_snapshot(benchmark: Any) -> None:
    benchmark.group = "metrics snapshot"
    m = ferrule.Metrics()
    for s in latencies():
        m.record("op", s)
    benchmark(m.snapshot, "op")
