"""Export every ferrule part's figures to OpenTelemetry, and signals as span events.

Needs the optional ``opentelemetry-api`` package (``pip install 'ferrule[otel]'``); an
SDK (``opentelemetry-sdk``) or another implementation of the API does the exporting.
The figures, their names and units are described once, in ``ferrule._export``, which
the Prometheus collector (``ferrule.metrics``) renders too; docs/observability.md
lists them.

- :func:`instrument` creates one observable instrument per figure (counters for
  counts, up-down counters for levels that add up across objects, gauges for the
  rest) on the meter ``ferrule``, named ``ferrule.<part>.<figure>`` with UCUM units
  (``{hit}``, ``{call}``, ``s``) and the attribute ``ferrule.name`` (plus
  ``ferrule.op``, ``ferrule.agent``, ``ferrule.resource``, ``ferrule.state`` where a
  figure has several series). One collection reads each object once: the first
  callback of a collection takes a snapshot of every object, the others answer from it,
  so the figures of one object agree with each other (``put == got + dropped + size``).
- A :class:`~ferrule.Metrics` is exported as ``ferrule.op.calls``, ``ferrule.op.time``
  (seconds spent, lifetime) and ``ferrule.op.errors``, observable counters per
  ``ferrule.op``. OpenTelemetry has no observable histogram, and the honest ways to
  feed a synchronous ``Histogram`` would each make it disagree with the Metrics
  object: a hook inside ``Metrics.record`` would cost every recording a call into
  Python (~100 ns becomes several µs, under whatever lock the SDK takes), and wrapping
  ``time()`` would miss ``record()`` calls made elsewhere. So the distribution stays
  with the Prometheus histogram (``ferrule_op_seconds``); here ``rate(time) /
  rate(calls)`` is the mean latency, exact.
- :func:`span_events` adds each signal of a :class:`~ferrule.SignalBus` to a span.

>>> import ferrule
>>> from opentelemetry.sdk.metrics import MeterProvider
>>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
>>> reader = InMemoryMetricReader()
>>> cache = ferrule.Cache(100)
>>> cache["k"] = 1
>>> with instrument(MeterProvider(metric_readers=[reader]), api_cache=cache) as handle:
...     data = reader.get_metrics_data()
>>> [(m.name, m.unit, p.attributes["ferrule.name"], p.value)
...  for m in data.resource_metrics[0].scope_metrics[0].metrics
...  if m.name == "ferrule.cache.inserts" for p in m.data.data_points]
[('ferrule.cache.inserts', '{entry}', 'api_cache', 1)]
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.metrics import (
        CallbackOptions,
        Meter,
        MeterProvider,
        Observation,
        get_meter_provider,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("ferrule.otel needs opentelemetry-api: pip install 'ferrule[otel]'") from exc

from ferrule._export import (
    Exports,
    Figure,
    HistogramValue,
    Options,
    Part,
    check_max_agents,
)
from ferrule._native import Signal, SignalBus, Subscription, __version__

__all__ = ["Instrumentation", "instrument", "span_events"]

_Points = dict[Figure, list[Observation]]


class _Snapshot:
    __slots__ = ("points", "served")

    def __init__(self, points: _Points) -> None:
        self.points = points
        self.served: set[Figure] = set()


class _Hub:
    """The instruments of one meter, shared by every handle made on it (an instrument
    name can be registered once per meter), and the snapshot a collection reads."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.lock = threading.Lock()  # guards the fields below; never held over a read
        self.handles: list[Instrumentation] = []
        self.figures: set[Figure] = set()
        self.snapshot: _Snapshot | None = None

    def names(self, besides: Instrumentation) -> list[str]:
        return [n for h in self.handles if h is not besides for n in h.names()]

    def ensure(self, part: Part) -> None:
        """Create the part's instruments on first use (under no lock: creating one
        calls into the SDK; the meter has its own lock and answers a second creation of
        a name with the first instrument, which keeps the first callback)."""
        with self.lock:
            new = [f for f in part.figures if f.otel and f not in self.figures]
            self.figures.update(new)
        meter = self.meter
        for figure in new:
            callback = _Callback(self, figure)
            create: Callable[..., object]
            if figure.kind == "counter":
                create = meter.create_observable_counter
            elif figure.kind == "updown":
                create = meter.create_observable_up_down_counter
            else:
                create = meter.create_observable_gauge
            create(
                figure.otel_name, callbacks=[callback], unit=figure.unit, description=figure.help
            )

    def observe(self, figure: Figure) -> list[Observation]:
        with self.lock:
            snap = self.snapshot
            if snap is None or figure in snap.served:
                snap = None  # a new collection: every figure is asked once per collection
            handles = list(self.handles)
        if snap is None:
            snap = _Snapshot(_read(handles))
            with self.lock:
                self.snapshot = snap
        snap.served.add(figure)
        return snap.points.get(figure, [])


class _Callback:
    """An instrument's callback; holds its hub weakly, so the meter (which keeps the
    callback) does not keep the hub's handles and their objects alive."""

    __slots__ = ("figure", "hub")

    def __init__(self, hub: _Hub, figure: Figure) -> None:
        self.hub = weakref.ref(hub)
        self.figure = figure

    def __call__(self, options: CallbackOptions) -> Iterable[Observation]:
        hub = self.hub()
        return [] if hub is None else hub.observe(self.figure)


def _read(handles: list[Instrumentation]) -> _Points:
    points: _Points = {}
    for handle in handles:
        for name, readings in handle._exports.read_all(handle._options):
            for r in readings:
                figure = r.figure
                if not figure.otel or isinstance(r.value, HistogramValue):
                    continue
                attributes = {"ferrule.name": name}
                for key, value in r.labels:
                    attributes[f"ferrule.{key}"] = value
                points.setdefault(figure, []).append(Observation(r.value, attributes))
    return points


_HUBS: weakref.WeakKeyDictionary[Meter, _Hub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def _hub(provider: MeterProvider) -> _Hub:
    meter = provider.get_meter("ferrule", __version__)
    with _HUBS_LOCK:
        hub = _HUBS.get(meter)
        if hub is None:
            hub = _HUBS[meter] = _Hub(meter)
        return hub


class Instrumentation:
    """What :func:`instrument` returns: the objects exported to one meter provider.

    ``add(obj, name=...)`` exports one more object, ``remove(name)`` one less;
    ``close()`` (or leaving a ``with`` block) removes them all, so the instruments
    report nothing more for them. OpenTelemetry cannot delete an instrument, so the
    instruments stay registered on the provider (empty), and a later
    :func:`instrument` on the same provider uses them again. Names are unique per
    provider, across handles.

    Holding: as for :class:`ferrule.metrics.PrometheusCollector`, objects whose type
    supports weak references (TaskPool, HealthMonitor, Retry, Pool, ResourceManager)
    are held weakly and vanish from the export once collected; the others until
    ``remove`` or ``close``. The provider's meter holds the handle until ``close()``.
    """

    _hub: _Hub
    _options: Options
    _exports: Exports
    _closed: bool

    def __init__(self) -> None:
        raise TypeError("Instrumentation objects are made by ferrule.otel.instrument()")

    @classmethod
    def _make(cls, hub: _Hub, options: Options) -> Instrumentation:
        self = object.__new__(cls)
        self._hub = hub
        self._options = options
        self._exports = Exports()
        self._closed = False
        return self

    def add(self, obj: object, name: str | None = None) -> str:
        """Export ``obj`` under ``name`` (attribute ``ferrule.name``); returns the name.

        ``name`` defaults to the class name in snake case (``cache``, ``work_queue``),
        then ``cache_2``... TypeError for an object that cannot be exported; ValueError
        for a bad name (1 to 128 letters, digits or ``_.:-``, starting with a letter or
        ``_``), a name taken on this provider, an object already added, or a closed
        handle."""
        hub = self._hub
        with hub.lock:
            if self._closed:
                raise ValueError("this instrumentation is closed")
            name = self._exports.add(obj, name, taken=hub.names(self))
            if self not in hub.handles:
                hub.handles.append(self)
        hub.ensure(self._part(name))
        return name

    def _part(self, name: str) -> Part:
        for n, _, part in self._exports.snapshot():
            if n == name:
                return part
        raise KeyError(name)  # pragma: no cover - added just now, and held

    def remove(self, name: str) -> bool:
        """Stop exporting ``name``; True if it was there."""
        return self._exports.remove(name)

    def names(self) -> list[str]:
        """The names exported now, in the order they were added."""
        return [n for n, _, _ in self._exports.snapshot()]

    def close(self) -> None:
        """Stop exporting every object of this handle (idempotent)."""
        hub = self._hub
        with hub.lock:
            self._closed = True
            if self in hub.handles:
                hub.handles.remove(self)
            hub.snapshot = None
        self._exports.clear()

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has run (this handle's objects are no longer exported)."""
        return self._closed

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def instrument(
    meter_provider: MeterProvider | None = None,
    *objects: object,
    window_quantiles: bool = False,
    max_agents: int = 100,
    **named: object,
) -> Instrumentation:
    """Export ferrule objects through ``meter_provider`` (None: OpenTelemetry's global
    provider, ``opentelemetry.metrics.get_meter_provider()``).

    Names: ``instrument(provider, cache, queue)`` names the positional objects by
    class, in snake case, numbered from the second of a class on (``cache``,
    ``work_queue``; two caches: ``cache``, ``cache_2``); ``instrument(provider,
    api_cache=cache)`` names them explicitly. Both forms mix; the keyword names
    ``window_quantiles`` and ``max_agents`` are options, not names:
    ``window_quantiles=True`` adds ``ferrule.op.window_duration`` gauges (p50, p90,
    p99 over each Metrics' sliding window, attribute ``ferrule.quantile``);
    ``max_agents`` bounds the per-agent series of each ErrorStore and HealthMonitor.

    Objects are those :class:`ferrule.metrics.PrometheusCollector` takes; the errors
    those of :meth:`Instrumentation.add` (nothing is exported when one is refused).
    """
    if meter_provider is None:
        meter_provider = get_meter_provider()
    elif not hasattr(meter_provider, "get_meter"):
        raise TypeError(
            f"meter_provider must be an OpenTelemetry MeterProvider or None, "
            f"not {type(meter_provider).__name__!r}"
        )
    options = Options(max_agents=check_max_agents(max_agents), window_quantiles=window_quantiles)
    handle = Instrumentation._make(_hub(meter_provider), options)
    try:
        for obj in objects:
            handle.add(obj)
        for name, obj in named.items():
            handle.add(obj, name)
    except BaseException:
        handle.close()
        raise
    return handle


def _event_attributes(signal: Signal) -> dict[str, Any]:
    """``ferrule.signal.type``, and the data when OpenTelemetry can carry it: a str,
    bool, int or float as ``ferrule.signal.data``; a mapping's such values as
    ``ferrule.signal.data.<key>``. Other data is left out (never ``repr``'d: it may be
    large or private)."""
    attributes: dict[str, Any] = {"ferrule.signal.type": signal.type}
    data = signal.data
    if isinstance(data, (str, bool, int, float)):
        attributes["ferrule.signal.data"] = data
    elif isinstance(data, Mapping):
        for key, value in list(data.items()):
            if isinstance(key, str) and isinstance(value, (str, bool, int, float)):
                attributes[f"ferrule.signal.data.{key}"] = value
    return attributes


def span_events(
    bus: SignalBus, pattern: str = "#", *, span: trace.Span | None = None, maxsize: int = 1024
) -> Subscription:
    """Add each signal matching ``pattern`` as an event on ``span`` (None: the span
    current in the calling thread now); returns the :class:`~ferrule.Subscription`.

    The handler runs on the subscription's own worker thread, never inside
    ``publish``, and a span is "current" per thread (per context): there, no span of
    the publisher is current. So the span is chosen here, when ``span_events`` is
    called, and every event lands on it, whichever thread published. An event is
    named after the signal's type, stamped with its ``timestamp``, and carries
    ``ferrule.signal.type`` and the data when it is a str, bool, int or float (or a
    mapping's such values, ``ferrule.signal.data.<key>``).

    Delivery is asynchronous: a signal published just before the span ends may arrive
    after it and is then not added. Cancel the subscription when the span ends (it is a
    context manager); once the span has ended, the next signal cancels it anyway.

    >>> import ferrule
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> tracer = TracerProvider().get_tracer("demo")
    >>> bus = ferrule.SignalBus()
    >>> with tracer.start_as_current_span("job") as job:
    ...     with span_events(bus, "job.#") as sub:
    ...         _ = bus.publish("job.7.done", {"items": 3})
    ...         while not job.events: pass  # delivery is asynchronous
    >>> [(e.name, dict(e.attributes)) for e in job.events]
    [('job.7.done', {'ferrule.signal.type': 'job.7.done', 'ferrule.signal.data.items': 3})]
    """
    if not isinstance(bus, SignalBus):
        raise TypeError(f"bus must be a ferrule.SignalBus, not {type(bus).__name__!r}")
    target = trace.get_current_span() if span is None else span
    holder: list[Subscription] = []

    def add_event(signal: Signal) -> None:
        if not target.is_recording():  # sampled out, or ended
            if getattr(target, "end_time", None) is not None:  # ended (an SDK span)
                for sub in holder:
                    sub.cancel()
            return
        target.add_event(
            signal.type, _event_attributes(signal), timestamp=int(signal.timestamp * 1e9)
        )

    sub = bus.subscribe(pattern, add_event, maxsize=maxsize)
    holder.append(sub)
    return sub
