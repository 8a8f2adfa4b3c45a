"""ferrule.otel against the real OpenTelemetry SDK: the exported points equal stats(),
names and units follow OpenTelemetry's conventions, and signals land on spans."""

from __future__ import annotations

import gc
import threading
from typing import Any

import ferrule
import pytest
from ferrule import ManualClock, Metrics

from tests.conftest import run_doctests, wait_until

pytest.importorskip("opentelemetry.sdk")

import ferrule.otel
from ferrule.otel import instrument, span_events
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    InMemoryMetricReader,
    Sum,
)
from opentelemetry.sdk.trace import TracerProvider

Points = dict[tuple[str, tuple[tuple[str, Any], ...]], Any]


def collect(reader: InMemoryMetricReader) -> tuple[Points, dict[str, Any]]:
    """(points by (name, attributes), metric by name) of one collection."""
    data = reader.get_metrics_data()
    points: Points = {}
    metrics: dict[str, Any] = {}
    if data is None:
        return points, metrics
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "ferrule"
            for m in sm.metrics:
                metrics[m.name] = m
                for p in m.data.data_points:
                    points[(m.name, tuple(sorted(p.attributes.items())))] = p.value
    return points, metrics


def attrs(name: str, **more: str) -> tuple[tuple[str, Any], ...]:
    return tuple(
        sorted({"ferrule.name": name, **{f"ferrule.{k}": v for k, v in more.items()}}.items())
    )


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> MeterProvider:
    return MeterProvider(metric_readers=[reader])


def test_module_example_runs() -> None:
    result = run_doctests(ferrule.otel)
    assert result.failed == 0
    assert result.attempted > 0


def test_points_equal_stats_with_otel_names_units_and_kinds(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    cache = ferrule.Cache(2)
    for k in "abc":
        cache[k] = k
    cache.get("c"), cache.get("zz")
    q: ferrule.WorkQueue[int] = ferrule.WorkQueue(2, overflow="drop_oldest")
    q.put_many([1, 2, 3])
    breaker = ferrule.CircuitBreaker(failure_threshold=1, clock=ManualClock())
    with pytest.raises(KeyError):
        breaker.call({}.__getitem__, "x")
    limiter = ferrule.RateLimiter(1, clock=ManualClock())
    limiter.try_acquire("a"), limiter.try_acquire("a")
    budget = ferrule.ResourceManager({"db": 10})
    lease = budget.acquire("db", 9)
    with instrument(provider, cache, q, upstream=breaker, api=limiter, budget=budget) as h:
        assert h.names() == ["cache", "work_queue", "upstream", "api", "budget"]
        points, metrics = collect(reader)
    s = cache.stats()
    for f in ("hits", "misses", "inserts", "evictions", "expirations", "rejected"):
        assert points[(f"ferrule.cache.{f}", attrs("cache"))] == getattr(s, f)
    assert points[("ferrule.cache.size", attrs("cache"))] == s.size == 2
    qs = q.stats()
    for f in ("put", "got", "rejected", "dropped", "size", "high_water"):
        assert points[(f"ferrule.queue.{f}", attrs("work_queue"))] == getattr(qs, f)
    b = breaker.stats()
    assert points[("ferrule.breaker.failures", attrs("upstream"))] == b.failures == 1
    assert points[("ferrule.breaker.state", attrs("upstream", state="open"))] == 1
    assert points[("ferrule.breaker.state", attrs("upstream", state="closed"))] == 0
    assert points[("ferrule.rate_limiter.allowed", attrs("api"))] == 1
    assert points[("ferrule.rate_limiter.denied", attrs("api"))] == 1
    assert points[("ferrule.resource.used", attrs("budget", resource="db"))] == 9
    assert (
        points[("ferrule.resource.pressure", attrs("budget", resource="db", state="moderate"))] == 1
    )

    hits = metrics["ferrule.cache.hits"]
    assert (hits.unit, type(hits.data), hits.data.is_monotonic) == ("{hit}", Sum, True)
    size = metrics["ferrule.cache.size"]
    assert (size.unit, type(size.data), size.data.is_monotonic) == ("{entry}", Sum, False)
    assert type(metrics["ferrule.queue.high_water"].data) is Gauge
    assert type(metrics["ferrule.breaker.state"].data) is Gauge
    assert metrics["ferrule.breaker.calls"].unit == "{call}"
    lease.release()


def test_metrics_lifetime_totals_as_counters(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    m = Metrics()
    for ms in range(1, 11):
        m.record("db", ms / 1000, ok=ms != 10)
    with instrument(provider, m, window_quantiles=True):
        points, metrics = collect(reader)
    t = m.totals("db")
    assert points[("ferrule.op.calls", attrs("metrics", op="db"))] == t.count == 10
    assert points[("ferrule.op.time", attrs("metrics", op="db"))] == pytest.approx(t.sum)
    assert points[("ferrule.op.errors", attrs("metrics", op="db"))] == t.errors == 1
    assert metrics["ferrule.op.time"].unit == "s"
    assert metrics["ferrule.op.time"].data.is_monotonic
    p99 = points[("ferrule.op.window_duration", attrs("metrics", op="db", quantile="0.99"))]
    assert p99 == pytest.approx(m.snapshot("db").p99)
    assert not any(name == "ferrule.op.duration" for name, _ in points)  # no fake histogram


class CountingPool(ferrule.TaskPool):
    reads = 0

    def stats(self) -> ferrule.TaskPoolStats:
        CountingPool.reads += 1
        return super().stats()


def test_one_read_per_object_per_collection(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    pool = CountingPool(1)
    with instrument(provider, pool):
        for n in range(1, 4):
            pool.submit(int).result()
            points, _ = collect(reader)
            assert CountingPool.reads == n  # eight figures, one stats() call
            assert points[("ferrule.task_pool.completed", attrs("counting_pool"))] == n
    pool.shutdown()


def test_handles_share_a_provider_and_names(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    first = instrument(provider, ferrule.Cache(1))
    second = instrument(provider, ferrule.Cache(2))
    assert (first.names(), second.names()) == (["cache"], ["cache_2"])
    with pytest.raises(ValueError, match=r"^name 'cache' is already taken$"):
        second.add(ferrule.Cache(3), name="cache")
    points, _ = collect(reader)
    assert points[("ferrule.cache.max_size", attrs("cache"))] == 1
    assert points[("ferrule.cache.max_size", attrs("cache_2"))] == 2
    first.close()
    first.close()  # idempotent
    assert first.closed
    with pytest.raises(ValueError, match=r"^this instrumentation is closed$"):
        first.add(ferrule.Cache(1))
    points, _ = collect(reader)
    assert ("ferrule.cache.max_size", attrs("cache")) not in points
    assert points[("ferrule.cache.max_size", attrs("cache_2"))] == 2
    assert second.remove("cache_2") is True
    points, _ = collect(reader)
    assert points == {}
    second.close()


def test_weakly_held_objects_vanish(provider: MeterProvider, reader: InMemoryMetricReader) -> None:
    pool = ferrule.TaskPool(1)
    with instrument(provider, pool) as handle:
        assert ("ferrule.task_pool.submitted", attrs("task_pool")) in collect(reader)[0]
        pool.shutdown()
        del pool
        gc.collect()
        assert handle.names() == []
        assert collect(reader)[0] == {}


def test_bad_arguments(provider: MeterProvider) -> None:
    with pytest.raises(TypeError, match=r"^meter_provider must be an OpenTelemetry MeterProvider"):
        instrument(ferrule.Cache(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^cannot export a 'int'"):
        instrument(provider, 5)
    with pytest.raises(ValueError, match=r"^name must be 1 to 128 letters"):
        instrument(provider, **{"bad name": ferrule.Cache(1)})
    with pytest.raises(TypeError, match=r"^max_agents must be an int, not 'Cache'$"):
        instrument(provider, max_agents=ferrule.Cache(1))  # type: ignore[arg-type]


def test_the_global_provider_is_the_default() -> None:
    handle = instrument(None, ferrule.Cache(1))  # the API's no-op provider: nothing fails
    assert handle.names() == ["cache"]
    handle.close()


# ---- span events ------------------------------------------------------------------------


def test_span_events_land_on_the_span_current_at_the_call() -> None:
    tracer = TracerProvider().get_tracer("test")
    bus = ferrule.SignalBus()
    with tracer.start_as_current_span("job") as job:
        sub = span_events(bus, "job.#")
        # Published from another thread, and under another span current here: the
        # events land on "job" (chosen when span_events was called), delivered by the
        # subscription's worker thread.
        t = threading.Thread(target=lambda: bus.publish("job.1.done", {"n": 1, "obj": object()}))
        t.start()
        t.join()
        with tracer.start_as_current_span("other") as other:
            bus.publish("job.2.done", "ok")
            bus.publish("unrelated")
        assert wait_until(lambda: len(job.events) == 2)
    assert [(e.name, dict(e.attributes)) for e in job.events] == [
        ("job.1.done", {"ferrule.signal.type": "job.1.done", "ferrule.signal.data.n": 1}),
        ("job.2.done", {"ferrule.signal.type": "job.2.done", "ferrule.signal.data": "ok"}),
    ]
    assert other.events == ()
    assert job.events[0].timestamp > 0
    sub.cancel()


def test_span_events_cancel_themselves_once_the_span_ended() -> None:
    tracer = TracerProvider().get_tracer("test")
    bus = ferrule.SignalBus()
    with tracer.start_as_current_span("job") as job:
        sub = span_events(bus)
    assert bus.publish("late") == 1
    wait_until(lambda: sub.cancelled)
    assert job.events == ()
    assert bus.publish("later") == 0


def test_span_events_bad_bus() -> None:
    with pytest.raises(TypeError, match=r"^bus must be a ferrule.SignalBus, not 'str'$"):
        span_events("bus")  # type: ignore[arg-type]
