"""ferrule.metrics.PrometheusCollector against the real prometheus_client."""

from __future__ import annotations

import pytest
from ferrule import ManualClock, Metrics

prometheus_client = pytest.importorskip("prometheus_client")

from ferrule.metrics import PrometheusCollector  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_exposition_parses_back() -> None:
    clock = ManualClock()
    m = Metrics(window=10.0, clock=clock)
    for ms in range(1, 101):
        m.record("db.query", ms / 1000, ok=ms % 10 != 0)
    m.record('weird "op"\n', 0.5)
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(m))
    got = scrape(registry)
    op = (("op", "db.query"),)
    s = m.snapshot("db.query")
    assert got[("ferrule_op_latency_seconds_count", op)] == 100
    assert got[("ferrule_op_latency_seconds_sum", op)] == pytest.approx(5.05)
    for q, want in (("0.5", s.p50), ("0.9", s.p90), ("0.99", s.p99)):
        key = ("ferrule_op_latency_seconds", (("op", "db.query"), ("quantile", q)))
        assert got[key] == pytest.approx(want)
    assert got[("ferrule_op_latency_seconds", (("op", "db.query"), ("quantile", "0.5")))] == (
        pytest.approx(0.05, rel=0.02)
    )
    assert got[("ferrule_op_errors", op)] == 10
    assert got[("ferrule_op_rate", op)] == pytest.approx(10.0)
    assert got[("ferrule_op_latency_max_seconds", op)] == pytest.approx(0.1)
    assert got[("ferrule_op_latency_seconds_count", (("op", 'weird "op"\n'),))] == 1

    clock.advance(10.0)  # the window empties: no samples, families still described
    assert scrape(registry) == {}


def test_prefix_and_types() -> None:
    m = Metrics()
    m.record("x", 0.001)
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(m, prefix="svc_calls"))
    text = generate_latest(registry).decode()
    assert "# TYPE svc_calls_latency_seconds summary" in text
    assert "# TYPE svc_calls_errors gauge" in text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["svc_calls_latency_seconds"] == "summary"
    # Registering a second collector with the same names is refused by the registry.
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(PrometheusCollector(m, prefix="svc_calls"))


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"^metrics must be a ferrule.Metrics, not 'dict'$"):
        PrometheusCollector({})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^prefix must be a valid Prometheus metric name"):
        PrometheusCollector(Metrics(), prefix="bad-name")
