"""Exporters for :class:`ferrule.Metrics`.

``PrometheusCollector`` needs the optional ``prometheus_client`` package
(``pip install 'ferrule[prometheus]'``); nothing else in ferrule imports it.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> import ferrule
>>> from ferrule.metrics import PrometheusCollector
>>> m = ferrule.Metrics()
>>> m.record("db.query", 0.004)
>>> registry = CollectorRegistry()
>>> registry.register(PrometheusCollector(m))
>>> b'ferrule_op_latency_seconds_count{op="db.query"} 1.0' in generate_latest(registry)
True
"""

from __future__ import annotations

import re
from collections.abc import Iterator

try:
    from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ferrule.metrics needs prometheus_client: pip install 'ferrule[prometheus]'"
    ) from exc

from ferrule._native import Metrics

__all__ = ["PrometheusCollector"]

# (label value, OpStats attribute)
QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


class PrometheusCollector(Collector):
    """Expose a :class:`ferrule.Metrics` to ``prometheus_client``; register it yourself.

    Each scrape takes one snapshot per operation and yields, labelled ``op``:

    - ``<prefix>_latency_seconds`` (summary): ``quantile`` 0.5, 0.9 and 0.99, plus
      ``_count`` and ``_sum`` -- all over the metrics' sliding window, so ``_count`` and
      ``_sum`` may go down (they are not lifetime counters: use them as gauges);
    - ``<prefix>_errors`` (gauge): failed calls in the window;
    - ``<prefix>_rate`` (gauge): calls per second over the window;
    - ``<prefix>_latency_max_seconds`` (gauge): the slowest call in the window.

    ``prefix`` defaults to ``"ferrule_op"``.
    """

    def __init__(self, metrics: Metrics, *, prefix: str = "ferrule_op") -> None:
        if not isinstance(metrics, Metrics):
            raise TypeError(f"metrics must be a ferrule.Metrics, not {type(metrics).__name__!r}")
        if not isinstance(prefix, str) or not _NAME.match(prefix):
            raise ValueError(f"prefix must be a valid Prometheus metric name, not {prefix!r}")
        self._metrics = metrics
        self._prefix = prefix

    def _families(
        self,
    ) -> tuple[SummaryMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        p = self._prefix
        window = self._metrics.window
        return (
            SummaryMetricFamily(
                f"{p}_latency_seconds",
                f"Latency per operation over the last {window:g} s (ferrule.Metrics)",
                labels=["op"],
            ),
            GaugeMetricFamily(
                f"{p}_errors",
                f"Failed calls per operation over the last {window:g} s",
                labels=["op"],
            ),
            GaugeMetricFamily(
                f"{p}_rate", f"Calls per second over the last {window:g} s", labels=["op"]
            ),
            GaugeMetricFamily(
                f"{p}_latency_max_seconds",
                f"Slowest call per operation over the last {window:g} s",
                labels=["op"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (lets a registry check names without a scrape)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """One snapshot per operation with a recording in the window."""
        latency, errors, rate, slowest = self._families()
        for op in self._metrics.ops():
            s = self._metrics.snapshot(op)
            if s.count == 0:  # reset or expired since ops() was read
                continue
            for label, attr in QUANTILES:
                latency.add_sample(latency.name, {"op": op, "quantile": label}, getattr(s, attr))
            latency.add_metric([op], s.count, s.mean * s.count)
            errors.add_metric([op], s.errors)
            rate.add_metric([op], s.rate)
            slowest.add_metric([op], s.max)
        yield latency
        yield errors
        yield rate
        yield slowest
