"""Export every ferrule part's figures to Prometheus.

``PrometheusCollector`` needs the optional ``prometheus_client`` package
(``pip install 'ferrule[prometheus]'``); nothing else in ferrule imports it. The
figures, their names and units are described once, in ``ferrule._export``, which the
OpenTelemetry exporter (``ferrule.otel``) renders too; docs/observability.md lists them.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> import ferrule
>>> from ferrule.metrics import PrometheusCollector
>>> m = ferrule.Metrics()
>>> m.record("db.query", 0.004)
>>> collector = PrometheusCollector(m)
>>> collector.add(ferrule.Cache(100), name="sessions")
'sessions'
>>> registry = CollectorRegistry()
>>> registry.register(collector)
>>> text = generate_latest(registry).decode()
>>> 'ferrule_op_seconds_count{name="metrics",op="db.query"} 1.0' in text
True
>>> 'ferrule_cache_hits_total{name="sessions"} 0.0' in text
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

try:
    from prometheus_client import utils as _prometheus_utils
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ferrule.metrics needs prometheus_client: pip install 'ferrule[prometheus]'"
    ) from exc

from ferrule._export import (
    Exports,
    Figure,
    HistogramValue,
    Options,
    Part,
    check_max_agents,
    check_prefix,
)
from ferrule._native import Metrics

__all__ = ["PrometheusCollector"]


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client's own histograms write it (``0.005``,
    ``1e-06``, ``1.0``): the ``le`` label must be the same text everywhere."""
    to_text: Callable[[float], str] = _prometheus_utils.floatToGoString
    return to_text(bound)


class PrometheusCollector(Collector):
    """Expose ferrule objects to ``prometheus_client``; register it yourself
    (``prometheus_client.REGISTRY.register(collector)``).

    ``add(obj, name=...)`` any :class:`~ferrule.Cache`, :class:`~ferrule.WorkQueue`,
    :class:`~ferrule.TaskPool`, :class:`~ferrule.SignalBus`,
    :class:`~ferrule.Subscription`, :class:`~ferrule.CircuitBreaker`,
    :class:`~ferrule.Retry`, :class:`~ferrule.RateLimiter`,
    :class:`~ferrule.ResourceManager`, :class:`~ferrule.Pool`,
    :class:`~ferrule.ErrorStore`, :class:`~ferrule.HealthMonitor`,
    :class:`~ferrule.Registry` or :class:`~ferrule.Metrics`. Each scrape reads every
    object once (its ``stats()``, or ``usage()``, ``totals()``...) and yields
    ``ferrule_<part>_<figure>_total`` counters and ``ferrule_<part>_<figure>`` gauges
    (``_seconds`` for durations), labelled ``name="<name>"`` (and ``op``, ``agent``,
    ``resource`` or ``state`` where a figure has several series). A
    :class:`~ferrule.Metrics` gives ``<prefix>_seconds``, a histogram of lifetime
    latencies per ``op`` (``_bucket{le=...}``, ``_count``, ``_sum``: they never go
    down, so ``rate()`` and ``histogram_quantile()`` work, also summed over processes),
    and ``<prefix>_errors_total``; with ``window_quantiles=True`` also
    ``<prefix>_window_seconds{quantile="0.5"|"0.9"|"0.99"}``, gauges over its sliding
    window.

    ``PrometheusCollector(metrics, prefix=...)`` (the first form) is
    ``PrometheusCollector(prefix=...)`` followed by ``add(metrics, name="metrics")``.
    ``prefix`` (default ``"ferrule_op"``) names the Metrics figures; ``max_agents``
    (default 100) bounds the per-agent series of each ErrorStore (the agents with most
    errors) and HealthMonitor (the least healthy).

    Holding: objects whose type supports weak references (TaskPool, HealthMonitor,
    Retry, Pool, ResourceManager) are held weakly and leave the scrape once collected;
    the others are held until ``remove(name)``.

    A scrape never raises because of one object: an object whose read fails is logged
    on the ``ferrule.export`` logger and left out of that scrape. No lock is held while
    an object is read. ``describe()`` lists the families of the parts added so far, so
    a registry refuses a second collector whose names would clash.
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        prefix: str = "ferrule_op",
        window_quantiles: bool = False,
        max_agents: int = 100,
    ) -> None:
        if metrics is not None and not isinstance(metrics, Metrics):
            raise TypeError(f"metrics must be a ferrule.Metrics, not {type(metrics).__name__!r}")
        self._prefix = check_prefix(prefix)
        self._options = Options(
            max_agents=check_max_agents(max_agents), window_quantiles=bool(window_quantiles)
        )
        self._exports = Exports()
        if metrics is not None:
            self._exports.add(metrics, "metrics")

    def add(self, obj: object, name: str | None = None) -> str:
        """Export ``obj`` under ``name`` (the ``name`` label) and return the name.

        ``name`` defaults to the class name in snake case (``cache``, ``work_queue``),
        then ``cache_2``, ``cache_3``... for more of one class. TypeError for an object
        this collector cannot export; ValueError for a name that is not 1 to 128
        letters, digits or ``_.:-`` (starting with a letter or ``_``), a name already
        added, or an object already added under another name.

        >>> import ferrule
        >>> c = PrometheusCollector()
        >>> c.add(ferrule.WorkQueue(10)), c.add(ferrule.WorkQueue(10), name="jobs")
        ('work_queue', 'jobs')
        >>> c.add(object())
        Traceback (most recent call last):
        ...
        TypeError: cannot export a 'object'; supported: Metrics, Cache, RateLimiter, WorkQueue, ...
        """
        return self._exports.add(obj, name)

    def remove(self, name: str) -> bool:
        """Stop exporting ``name``; True if it was there."""
        return self._exports.remove(name)

    def names(self) -> list[str]:
        """The names exported now, in the order they were added."""
        return [name for name, _, _ in self._exports.snapshot()]

    def _stem(self, part: Part) -> str | None:
        return self._prefix if part.key == "op" else None

    def _family(self, figure: Figure, stem: str | None) -> Any:
        if figure.prom is None:
            return None
        name = figure.prometheus_name(stem)
        labels = ["name", *figure.labels]
        unit = "seconds" if figure.unit == "s" else ""
        if figure.kind == "counter":
            return CounterMetricFamily(name, figure.help, labels=labels, unit=unit)
        if figure.kind == "histogram":
            return HistogramMetricFamily(name, figure.help, labels=labels, unit=unit)
        return GaugeMetricFamily(name, figure.help, labels=labels, unit=unit)

    def describe(self) -> Iterator[Metric]:
        """The families of the parts added so far, without samples."""
        for part in self._exports.parts():
            stem = self._stem(part)
            for figure in part.figures:
                if figure.figure == "window_duration" and not self._options.window_quantiles:
                    continue
                family = self._family(figure, stem)
                if family is not None:
                    yield family

    def collect(self) -> Iterator[Metric]:
        """Read every object once; one family per figure, objects as series."""
        families: dict[Figure, Any] = {}
        for name, readings in self._exports.read_all(self._options):
            for r in readings:
                figure = r.figure
                try:
                    family = families[figure]
                except KeyError:
                    family = families[figure] = self._family(
                        figure, self._prefix if figure.part == "op" else None
                    )
                if family is None:
                    continue
                values = [name, *(v for _, v in r.labels)]
                value = r.value
                if isinstance(value, HistogramValue):
                    buckets = [
                        (_le(b), n) for b, n in zip(value.bounds, value.buckets, strict=False)
                    ]
                    buckets.append(("+Inf", value.buckets[-1]))
                    family.add_metric(values, buckets, value.sum)
                else:
                    family.add_metric(values, value)
        for family in families.values():
            if family is not None:
                yield family
