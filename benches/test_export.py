"""Export benchmarks: the cost of one Prometheus scrape (and one OpenTelemetry
collection) of ferrule objects, beside prometheus_client's own metrics of similar size.

One scrape = ``generate_latest(registry)``: collect and render the text. Run for real
(release build) with:

    .venv/bin/python -m pytest benches/test_export.py --benchmark-only \
        --benchmark-columns=min,median,ops -q

Groups:

- ``export 1000 ops``: a ``ferrule.Metrics`` with 1,000 operation names recorded, as
  ``ferrule_op_seconds`` histograms, beside one prometheus_client ``Histogram`` with
  1,000 label values and the same buckets count (so the same number of series).
- ``export 100 objects``: 100 ferrule objects (20 each of Cache, WorkQueue,
  CircuitBreaker, TaskPool, ResourceManager), beside prometheus_client Counters and
  Gauges with the same series (same families, 100 label values each); and the same 100
  objects through ``ferrule.otel.instrument`` and the OpenTelemetry SDK's
  ``InMemoryMetricReader`` (one collection).

Per-object cost = the reported time / 100 (or / 1,000 ops).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import ferrule
import pytest

prometheus_client = pytest.importorskip("prometheus_client")

from ferrule._export import PARTS  # noqa: E402
from ferrule.metrics import PrometheusCollector  # noqa: E402
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram  # noqa: E402
from prometheus_client import generate_latest as scrape  # noqa: E402

OPS = 1000
OBJECTS = 100


def _metrics() -> ferrule.Metrics:
    rng = random.Random(42)
    m = ferrule.Metrics()
    for n in range(OPS):
        for _ in range(5):
            m.record(f"op.{n}", rng.lognormvariate(-6.0, 1.0), ok=rng.random() > 0.05)
    return m


@pytest.mark.benchmark(group="export 1000 ops")
def test_ferrule_metrics_scrape(benchmark: Any) -> None:
    m = _metrics()
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(m))
    text = benchmark(scrape, registry)
    assert text.count(b"ferrule_op_seconds_count{") == OPS
    benchmark.extra_info["ops"] = OPS


@pytest.mark.benchmark(group="export 1000 ops")
def test_prometheus_client_histogram_scrape(benchmark: Any) -> None:
    rng = random.Random(42)
    registry = CollectorRegistry()
    bounds = ferrule.Metrics().buckets
    h = Histogram("op_seconds", "latency", ["op"], registry=registry, buckets=bounds)
    errors = Counter("op_errors", "errors", ["op"], registry=registry)
    for n in range(OPS):
        child = h.labels(f"op.{n}")
        errors.labels(f"op.{n}")
        for _ in range(5):
            child.observe(rng.lognormvariate(-6.0, 1.0))
    text = benchmark(scrape, registry)
    assert text.count(b"op_seconds_count{") == OPS
    benchmark.extra_info["ops"] = OPS


def _objects() -> Iterator[object]:
    for _ in range(OBJECTS // 5):
        cache = ferrule.Cache(100)
        cache["k"] = 1
        yield cache
        yield ferrule.WorkQueue(10)
        yield ferrule.CircuitBreaker()
        yield ferrule.TaskPool(1)
        yield ferrule.ResourceManager({"db": 10, "gpu": 2})


@pytest.fixture
def objects() -> Iterator[list[object]]:
    objs = list(_objects())
    yield objs
    for obj in objs:
        if isinstance(obj, ferrule.TaskPool):
            obj.shutdown()


@pytest.mark.benchmark(group="export 100 objects")
def test_ferrule_objects_scrape(benchmark: Any, objects: list[object]) -> None:
    collector = PrometheusCollector()
    for n, obj in enumerate(objects):
        collector.add(obj, name=f"o{n}")
    registry = CollectorRegistry()
    registry.register(collector)
    text = benchmark(scrape, registry)
    assert text.count(b"ferrule_cache_hits_total{") == OBJECTS // 5
    benchmark.extra_info["ops"] = OBJECTS


@pytest.mark.benchmark(group="export 100 objects")
def test_prometheus_client_same_series_scrape(benchmark: Any) -> None:
    # The same families and series as the ferrule scrape, as prometheus_client's own
    # Counters and Gauges (values set, nothing read at scrape time).
    registry = CollectorRegistry()
    keys = {ferrule.Cache: "cache", ferrule.WorkQueue: "queue"}
    keys |= {ferrule.CircuitBreaker: "breaker", ferrule.TaskPool: "task_pool"}
    keys |= {ferrule.ResourceManager: "resource"}
    for part in PARTS:
        if part.key not in keys.values():
            continue
        for f in part.figures:
            labels = ["name", *f.labels]
            name = f.prometheus_name()
            if f.kind == "counter":
                metric: Any = Counter(
                    name.removesuffix("_total"), f.help, labels, registry=registry
                )
            else:
                metric = Gauge(name, f.help, labels, registry=registry)
            states = {"state": ["a", "b", "c"]} if "state" in f.labels else {}
            for n in range(OBJECTS // 5):
                values = [f"o{n}"]
                if "resource" in f.labels:
                    values.append("db")
                for s in states.get("state", [None]):
                    child = metric.labels(*values, *([s] if s else []))
                    child.inc() if f.kind == "counter" else child.set(1)
    benchmark(scrape, registry)
    benchmark.extra_info["ops"] = OBJECTS


@pytest.mark.benchmark(group="export 100 objects")
def test_ferrule_objects_otel_collection(benchmark: Any, objects: list[object]) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from ferrule.otel import instrument
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    with instrument(MeterProvider(metric_readers=[reader]), **{
        f"o{n}": obj for n, obj in enumerate(objects)
    }):  # fmt: skip
        benchmark(reader.get_metrics_data)
    benchmark.extra_info["ops"] = OBJECTS
