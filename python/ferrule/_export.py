"""What each ferrule part exports: one table of figures, one reader per part.

Both exporters render from here -- :class:`ferrule.metrics.PrometheusCollector` and
:func:`ferrule.otel.instrument` -- so each figure has one home: its names (Prometheus and
OpenTelemetry), kind, unit and help text are one :class:`Figure` row in ``FIGURES``,
and the value comes from one reader function per part, which turns the object's
``stats()`` (or ``usage()``, ``totals()``, ...) into neutral readings.

Structure:

- ``Figure``: a figure of a part. ``kind`` is ``"counter"`` (monotonic),
  ``"updown"`` (a level that is summed across objects: sizes, limits; a Prometheus
  gauge, an OpenTelemetry up-down counter), ``"gauge"`` (a level that is not summed: a
  state-set 0/1, a high-water mark, a windowed quantile) or ``"histogram"``.
- ``Part``: the ferrule type, its default name stem and its reader. ``part_of(obj)``
  finds it by the object's type (or a base class), TypeError otherwise.
- A reader ``read(obj, options) -> list[Reading]`` calls only the object's public
  reads, takes no lock of its own and holds none while it calls the object. A reading
  carries the figure, its extra labels (``op``, ``agent``, ``resource``, ``state``,
  ``quantile``; the exporter adds ``name``) and a value: a number, or a
  ``HistogramValue`` (cumulative bucket counts, ``+Inf`` last).

Holding: ``Exports`` is the set of named objects an exporter reads, shared by both.
An object is held weakly when its type allows it (``TaskPool``, ``HealthMonitor``,
``Retry``, ``Pool``, ``ResourceManager``): once collected, it leaves the export and
its name is free again. The native classes without weak-reference support (``Cache``,
``WorkQueue``, ``Metrics``, ...) are held strongly, until ``remove(name)``. Its lock
guards only its dict: reads happen on a snapshot of it, with no lock held.

Failures: ``read_all`` logs a reader's exception on the ``ferrule.export`` logger (with
a traceback the first time in a row for that name) and skips that object: one broken
object never fails the whole export.

Bounds: per-agent series (ErrorStore, HealthMonitor) are limited to
``Options.max_agents`` per object, so a scrape stays bounded whatever the number of
agents; the per-status and per-store totals are always complete.

Metrics' distribution is a Prometheus histogram (``<prefix>_seconds``); OpenTelemetry
has no observable histogram, so there the same lifetime totals are two observable
counters, ``ferrule.op.calls`` and ``ferrule.op.time`` (see ``ferrule.otel``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from ferrule._health import HealthMonitor
from ferrule._native import (
    Cache,
    CircuitBreaker,
    ErrorStore,
    Metrics,
    Pool,
    RateLimiter,
    Registry,
    ResourceManager,
    SignalBus,
    Subscription,
    WorkQueue,
)
from ferrule._retry import Retry
from ferrule._taskpool import TaskPool

Kind = Literal["counter", "updown", "gauge", "histogram"]

# The states of the state-set figures, in the order they are exported.
BREAKER_STATES = ("closed", "open", "half_open", "forced_open", "forced_closed")
PRESSURES = ("normal", "moderate", "severe")
HEALTH_STATES = ("healthy", "degraded", "unhealthy", "unresponsive")

# A name given to add(): it becomes a label value; kept short and plain so it reads
# well in queries and never needs escaping.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}\Z")
_PROM_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


@dataclasses.dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: a dict key
class Figure:
    """One exported figure of a part (one row of the tables in docs/observability.md)."""

    part: str  # "cache"; the Prometheus stem is ferrule_<part>, the OTel one ferrule.<part>
    figure: str  # "hits"
    kind: Kind
    unit: str  # UCUM, as OpenTelemetry wants it: "s", "{hit}", "{entry}"
    help: str
    labels: tuple[str, ...] = ()  # beyond "name"
    # The Prometheus name after the stem, when the rule (figure, _seconds for "s",
    # _total for counters) does not give it; None: not exported to Prometheus.
    prom: str | None = ""
    otel: bool = True  # exported to OpenTelemetry

    def prometheus_name(self, stem: str | None = None) -> str:
        """``ferrule_<part>_<figure>[_seconds][_total]`` (``stem`` replaces
        ``ferrule_<part>``: Metrics' ``prefix``)."""
        base = stem if stem is not None else f"ferrule_{self.part}"
        if self.prom:
            return f"{base}_{self.prom}"
        name = f"{base}_{self.figure}"
        if self.unit == "s":
            name += "_seconds"
        if self.kind == "counter":
            name += "_total"
        return name

    @property
    def otel_name(self) -> str:
        """``ferrule.<part>.<figure>`` (OpenTelemetry's dotted namespaces)."""
        return f"ferrule.{self.part}.{self.figure}"


@dataclasses.dataclass(frozen=True, slots=True)
class HistogramValue:
    """Lifetime totals of a distribution: ``buckets[i]`` counts the values ``<=
    bounds[i]``, the last one (``+Inf``) all of them (== ``count``)."""

    count: int
    sum: float
    bounds: tuple[float, ...]
    buckets: tuple[int, ...]


Labels = tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Reading:
    figure: Figure
    labels: Labels  # extra labels, without "name"
    value: float | HistogramValue


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """What a collector or an instrumentation handle asks of every reader."""

    max_agents: int = 100  # per-agent series per object (ErrorStore, HealthMonitor)
    window_quantiles: bool = False  # Metrics: the windowed p50/p90/p99 as gauges


Reader = Callable[[Any, Options], list[Reading]]


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    type: type
    key: str  # the figures' part
    figures: tuple[Figure, ...]
    read: Reader


def _f(
    part: str,
    figure: str,
    kind: Kind,
    unit: str,
    help: str,
    labels: tuple[str, ...] = (),
    *,
    prom: str | None = "",
    otel: bool = True,
) -> Figure:
    return Figure(part, figure, kind, unit, help, labels, prom, otel)


def _figures(*rows: Figure) -> dict[str, Figure]:
    return {f.figure: f for f in rows}


# -- the figures ------------------------------------------------------------------------

CACHE = _figures(
    _f("cache", "hits", "counter", "{hit}", "Lookups (get, []) that found a live entry"),
    _f("cache", "misses", "counter", "{miss}", "Lookups that found no live entry"),
    _f("cache", "inserts", "counter", "{entry}", "Writes that stored an entry"),
    _f("cache", "evictions", "counter", "{entry}", "Live entries pushed out by the bound"),
    _f("cache", "expirations", "counter", "{entry}", "Entries removed once their TTL passed"),
    _f("cache", "rejected", "counter", "{write}", "Writes refused: the value weighed too much"),
    _f("cache", "size", "updown", "{entry}", "Live entries"),
    _f("cache", "weight", "updown", "1", "Sum of the live entries' weights"),
    _f("cache", "max_size", "updown", "{entry}", "The size bound"),
)
QUEUE = _figures(
    _f("queue", "put", "counter", "{item}", "Items that entered the queue"),
    _f("queue", "got", "counter", "{item}", "Items taken out"),
    _f("queue", "rejected", "counter", "{item}", "Items refused for lack of room"),
    _f("queue", "dropped", "counter", "{item}", "Items that entered and were evicted"),
    _f("queue", "size", "updown", "{item}", "Items queued"),
    _f("queue", "max_size", "updown", "{item}", "The queue's maxsize"),
    _f("queue", "high_water", "gauge", "{item}", "The largest length seen"),
)
TASK_POOL = _figures(
    _f("task_pool", "submitted", "counter", "{task}", "Tasks accepted by submit"),
    _f("task_pool", "started", "counter", "{task}", "Tasks a worker started"),
    _f("task_pool", "completed", "counter", "{task}", "Tasks that returned"),
    _f("task_pool", "failed", "counter", "{task}", "Tasks that raised"),
    _f("task_pool", "rejected", "counter", "{task}", "Submits refused with QueueFull"),
    _f("task_pool", "cancelled", "counter", "{task}", "Queued tasks cancelled before they ran"),
    _f("task_pool", "active", "updown", "{task}", "Tasks running"),
    _f("task_pool", "queued", "updown", "{task}", "Tasks waiting for a worker"),
)
SUBSCRIPTION = _figures(
    _f("subscription", "accepted", "counter", "{signal}", "Signals its mailbox took"),
    _f(
        "subscription", "delivered", "counter", "{signal}", "Signals handed to the handler or a get"
    ),
    _f("subscription", "dropped", "counter", "{signal}", "Signals accepted, then lost"),
    _f("subscription", "rejected", "counter", "{signal}", "Signals its full mailbox refused"),
    _f("subscription", "errors", "counter", "{error}", "Handler calls that raised"),
    _f("subscription", "queued", "updown", "{signal}", "Signals waiting in the mailbox"),
)
BREAKER = _figures(
    _f("breaker", "state", "gauge", "1", "1 for the breaker's state, 0 for the others", ("state",)),
    _f("breaker", "calls", "counter", "{call}", "Calls admitted (the function ran)"),
    _f("breaker", "successes", "counter", "{call}", "Admitted calls that succeeded"),
    _f("breaker", "failures", "counter", "{call}", "Admitted calls that failed (or were slow)"),
    _f("breaker", "slow_calls", "counter", "{call}", "Of the failures: calls that were slow"),
    _f("breaker", "ignored", "counter", "{call}", "Calls that raised an unexpected exception"),
    _f("breaker", "rejections", "counter", "{call}", "Calls refused with CircuitOpen"),
    _f("breaker", "state_changes", "counter", "{change}", "Transitions between states"),
)
RESOURCE = _figures(
    _f("resource", "used", "updown", "{unit}", "Units held", ("resource",)),
    _f("resource", "limit", "updown", "{unit}", "The budget", ("resource",)),
    _f(
        "resource",
        "pressure",
        "gauge",
        "1",
        "1 for the budget's pressure, 0 for the others",
        ("resource", "state"),
    ),
)
POOL = _figures(
    _f("pool", "size", "updown", "{item}", "Items that exist (idle and in use)"),
    _f("pool", "idle", "updown", "{item}", "Items idle in the pool"),
    _f("pool", "in_use", "updown", "{item}", "Items checked out"),
    _f("pool", "waiting", "updown", "{checkout}", "Checkouts waiting for an item"),
    _f("pool", "max_size", "updown", "{item}", "The size bound"),
    _f("pool", "created", "counter", "{item}", "Items made by the factory"),
    _f("pool", "discarded", "counter", "{item}", "Items closed"),
    _f("pool", "timeouts", "counter", "{checkout}", "Checkouts that raised PoolTimeout"),
    _f("pool", "factory_errors", "counter", "{call}", "Factory calls that raised"),
)
ERROR_STORE = _figures(
    _f("error_store", "recorded", "counter", "{error}", "Errors stored"),
    _f("error_store", "agents", "updown", "{agent}", "Agents with errors held"),
    _f(
        "error_store",
        "evicted_agents",
        "counter",
        "{agent}",
        "Agents evicted to make room under max_agents",
    ),
    _f(
        "error_store",
        "agent_errors",
        "updown",
        "{error}",
        "Errors held per agent (the agents with most, up to max_agents)",
        ("agent",),
    ),
)
HEALTH = _figures(
    _f(
        "health",
        "status",
        "gauge",
        "1",
        "1 for the agent's status at the last round, 0 for the others (up to max_agents)",
        ("agent", "state"),
    ),
    _f("health", "agents", "updown", "{agent}", "Agents per status at the last round", ("state",)),
    _f("health", "rounds", "counter", "{round}", "Rounds completed"),
)
OP = _figures(
    _f(
        "op",
        "duration",
        "histogram",
        "s",
        "Latency per operation, lifetime (ferrule.Metrics)",
        ("op",),
        prom="seconds",
        otel=False,
    ),
    _f("op", "calls", "counter", "{call}", "Calls recorded, lifetime", ("op",), prom=None),
    _f("op", "time", "counter", "s", "Seconds spent in the calls, lifetime", ("op",), prom=None),
    _f("op", "errors", "counter", "{call}", "Calls recorded as failed, lifetime", ("op",)),
    _f(
        "op",
        "window_duration",
        "gauge",
        "s",
        "Latency quantile over the sliding window (window_quantiles=True)",
        ("op", "quantile"),
        prom="window_seconds",
    ),
)
RETRY = _figures(
    _f("retry", "calls", "counter", "{call}", "Calls finished"),
    _f("retry", "attempts", "counter", "{attempt}", "Attempts those calls made"),
    _f("retry", "retries", "counter", "{attempt}", "Attempts beyond the first"),
    _f("retry", "successes", "counter", "{call}", "Calls that succeeded"),
    _f("retry", "give_ups", "counter", "{call}", "Calls that ran out of attempts or time"),
    _f("retry", "failures", "counter", "{call}", "Calls ended by an exception not retried"),
)
RATE_LIMITER = _figures(
    _f("rate_limiter", "allowed", "counter", "{decision}", "Decisions that granted the tokens"),
    _f("rate_limiter", "denied", "counter", "{decision}", "Decisions that refused them"),
    _f("rate_limiter", "keys", "updown", "{key}", "Keys tracked"),
)
BUS = _figures(
    _f("bus", "published", "counter", "{signal}", "publish calls"),
    _f("bus", "unrouted", "counter", "{signal}", "Publishes no subscription matched"),
    _f("bus", "delivered", "counter", "{signal}", "Signals a mailbox took (one per subscription)"),
    _f("bus", "dropped", "counter", "{signal}", "Signals a matching mailbox did not take"),
    _f("bus", "subscriptions", "updown", "{subscription}", "Live subscriptions"),
)
REGISTRY = _figures(
    _f("registry", "agents", "updown", "{agent}", "Agents registered"),
)

QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))


# -- the readers ------------------------------------------------------------------------


def _attrs(table: Mapping[str, Figure], stats: object) -> list[Reading]:
    """One reading per figure of ``table``, from the attribute of that name."""
    return [Reading(f, (), getattr(stats, key)) for key, f in table.items()]


def _read_cache(cache: Cache, options: Options) -> list[Reading]:
    return _attrs(CACHE, cache.stats())


def _read_queue(queue: WorkQueue[Any], options: Options) -> list[Reading]:
    s = queue.stats()
    out = _attrs({k: f for k, f in QUEUE.items() if k != "max_size"}, s)
    out.append(Reading(QUEUE["max_size"], (), queue.maxsize))
    return out


def _read_task_pool(pool: TaskPool, options: Options) -> list[Reading]:
    return _attrs(TASK_POOL, pool.stats())


def _read_subscription(sub: Subscription, options: Options) -> list[Reading]:
    return _attrs(SUBSCRIPTION, sub.stats())


def _state_set(
    figure: Figure, states: Iterable[str], current: str, labels: Labels = ()
) -> list[Reading]:
    """The state-set idiom: one series per state, 1 for the current one, 0 for the
    others (a state outside ``states`` gets a series of its own)."""
    names = list(states)
    if current not in names:
        names.append(current)
    return [Reading(figure, (*labels, ("state", s)), 1 if s == current else 0) for s in names]


def _read_breaker(breaker: CircuitBreaker, options: Options) -> list[Reading]:
    s = breaker.stats()
    out = _state_set(BREAKER["state"], BREAKER_STATES, s.state)
    out += _attrs({k: f for k, f in BREAKER.items() if k != "state"}, s)
    return out


def _read_resources(manager: ResourceManager, options: Options) -> list[Reading]:
    out: list[Reading] = []
    for resource, usage in manager.usage().items():
        labels = (("resource", resource),)
        out.append(Reading(RESOURCE["used"], labels, usage.used))
        out.append(Reading(RESOURCE["limit"], labels, usage.limit))
        out += _state_set(RESOURCE["pressure"], PRESSURES, usage.pressure, labels)
    return out


def _read_pool(pool: Pool[Any], options: Options) -> list[Reading]:
    out = _attrs({k: f for k, f in POOL.items() if k != "max_size"}, pool.stats())
    out.append(Reading(POOL["max_size"], (), pool.max_size))
    return out


def _read_error_store(store: ErrorStore, options: Options) -> list[Reading]:
    out = _attrs({k: f for k, f in ERROR_STORE.items() if k != "agent_errors"}, store.stats())
    if not options.max_agents:
        return out
    agents = store.agents()
    if len(agents) > options.max_agents:
        # The agents with most errors held (ties by id): what an operator looks for.
        counted = sorted((-store.count(a), a) for a in agents)[: options.max_agents]
        rows = [(a, -n) for n, a in counted]
    else:
        rows = [(a, store.count(a)) for a in agents]
    figure = ERROR_STORE["agent_errors"]
    out += [Reading(figure, (("agent", a),), n) for a, n in rows if n]
    return out


_SEVERITY = {"unresponsive": 0, "unhealthy": 1, "degraded": 2, "healthy": 3}


def _read_health(monitor: HealthMonitor, options: Options) -> list[Reading]:
    # The last round's statuses: the monitor swaps in a new pair of lists after each
    # round and never mutates one it has published, so this reads a consistent round
    # without taking the round lock (a round may take up to its timeout).
    ids, health = monitor._known
    statuses = dict(zip(ids, health, strict=True))
    out = [Reading(HEALTH["rounds"], (), monitor.rounds)]
    counts = dict.fromkeys(HEALTH_STATES, 0)
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    out += [Reading(HEALTH["agents"], (("state", s),), n) for s, n in counts.items()]
    rows = sorted(statuses.items(), key=lambda kv: (_SEVERITY.get(kv[1], -1), kv[0]))
    for agent, status in rows[: options.max_agents]:  # the least healthy first
        out += _state_set(HEALTH["status"], HEALTH_STATES, status, (("agent", agent),))
    return out


def _read_metrics(metrics: Metrics, options: Options) -> list[Reading]:
    bounds = tuple(metrics.buckets)
    out: list[Reading] = []
    for op in metrics.ops():
        t = metrics.totals(op)
        labels = (("op", op),)
        out.append(
            Reading(OP["duration"], labels, HistogramValue(t.count, t.sum, bounds, t.buckets))
        )
        out.append(Reading(OP["calls"], labels, t.count))
        out.append(Reading(OP["time"], labels, t.sum))
        out.append(Reading(OP["errors"], labels, t.errors))
        if options.window_quantiles:
            s = metrics.snapshot(op)
            if s.count:
                for q, attr in QUANTILES:
                    value = getattr(s, attr)
                    out.append(Reading(OP["window_duration"], (*labels, ("quantile", q)), value))
    return out


def _read_retry(policy: Retry, options: Options) -> list[Reading]:
    return _attrs(RETRY, policy.stats())


def _read_rate_limiter(limiter: RateLimiter, options: Options) -> list[Reading]:
    return _attrs(RATE_LIMITER, limiter.stats())


def _read_bus(bus: SignalBus, options: Options) -> list[Reading]:
    return _attrs(BUS, bus.stats())


def _read_registry(registry: Registry, options: Options) -> list[Reading]:
    return [Reading(REGISTRY["agents"], (), len(registry))]


PARTS: tuple[Part, ...] = (
    Part(Metrics, "op", tuple(OP.values()), _read_metrics),
    Part(Cache, "cache", tuple(CACHE.values()), _read_cache),
    Part(RateLimiter, "rate_limiter", tuple(RATE_LIMITER.values()), _read_rate_limiter),
    Part(WorkQueue, "queue", tuple(QUEUE.values()), _read_queue),
    Part(TaskPool, "task_pool", tuple(TASK_POOL.values()), _read_task_pool),
    Part(SignalBus, "bus", tuple(BUS.values()), _read_bus),
    Part(Subscription, "subscription", tuple(SUBSCRIPTION.values()), _read_subscription),
    Part(CircuitBreaker, "breaker", tuple(BREAKER.values()), _read_breaker),
    Part(Retry, "retry", tuple(RETRY.values()), _read_retry),
    Part(ResourceManager, "resource", tuple(RESOURCE.values()), _read_resources),
    Part(Pool, "pool", tuple(POOL.values()), _read_pool),
    Part(ErrorStore, "error_store", tuple(ERROR_STORE.values()), _read_error_store),
    Part(HealthMonitor, "health", tuple(HEALTH.values()), _read_health),
    Part(Registry, "registry", tuple(REGISTRY.values()), _read_registry),
)
_BY_TYPE = {p.type: p for p in PARTS}


def part_of(obj: object) -> Part:
    """The part exporting ``obj`` (by its type or a base class); TypeError otherwise."""
    for cls in type(obj).__mro__:
        part = _BY_TYPE.get(cls)
        if part is not None:
            return part
    supported = ", ".join(p.type.__name__ for p in PARTS)
    raise TypeError(f"cannot export a {type(obj).__name__!r}; supported: {supported}")


def check_name(name: object) -> str:
    """``name`` if it is a valid export name (a label value), else TypeError/ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__!r}")
    if not _NAME.match(name):
        raise ValueError(
            f"name must be 1 to 128 letters, digits or '_.:-', starting with a letter or "
            f"'_', not {name!r}"
        )
    return name


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not _PROM_NAME.match(prefix):
        raise ValueError(f"prefix must be a valid Prometheus metric name, not {prefix!r}")
    return prefix


def check_max_agents(max_agents: object) -> int:
    if not isinstance(max_agents, int) or isinstance(max_agents, bool):
        raise TypeError(f"max_agents must be an int, not {type(max_agents).__name__!r}")
    if max_agents < 0:
        raise ValueError("max_agents must be >= 0")
    return max_agents


def default_name(obj: object, taken: Iterable[str]) -> str:
    """The class name in snake case (``cache``, ``work_queue``, ``circuit_breaker``) for
    the first object of a class, then ``<that>_2``, ``<that>_3``... (the first name not
    taken): adding an object never renames an earlier one."""
    stem = re.sub(r"(?<!^)(?=[A-Z])", "_", type(obj).__name__).lower()
    used = set(taken)
    if stem not in used:
        return stem
    n = 2
    while f"{stem}_{n}" in used:
        n += 1
    return f"{stem}_{n}"


_log = logging.getLogger("ferrule.export")


class Exports:
    """The named objects an exporter reads (thread-safe)."""

    __slots__ = ("_entries", "_failing", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # name -> (a callable giving the object or None once collected, its part)
        self._entries: dict[str, tuple[Callable[[], Any], Part]] = {}
        self._failing: set[str] = set()

    def add(self, obj: object, name: str | None = None, taken: Iterable[str] = ()) -> str:
        """Hold ``obj`` under ``name`` (default: see ``default_name``); returns the name.
        TypeError for an object no part exports; ValueError for a bad name, a name
        taken (here or in ``taken``), or an object already held (under any name)."""
        part = part_of(obj)
        if name is not None:
            check_name(name)
        try:
            ref: Callable[[], Any] = weakref.ref(obj)
        except TypeError:  # a native class without weak-reference support
            ref = _Strong(obj)
        with self._lock:
            live = self._prune()
            for other, (held, _) in live.items():
                if held() is obj:
                    raise ValueError(f"this {type(obj).__name__} is already added as {other!r}")
            others = set(taken)
            if name is None:
                name = default_name(obj, [*live, *others])
            elif name in live or name in others:
                raise ValueError(f"name {name!r} is already taken")
            self._entries[name] = (ref, part)
        return name

    def remove(self, name: str) -> bool:
        """Stop exporting ``name``; True if it was there."""
        with self._lock:
            self._failing.discard(name)
            return self._entries.pop(name, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._failing.clear()

    def _prune(self) -> dict[str, tuple[Callable[[], Any], Part]]:
        # Under the lock: drop the collected objects' entries.
        dead = [n for n, (ref, _) in self._entries.items() if ref() is None]
        for n in dead:
            del self._entries[n]
        return self._entries

    def snapshot(self) -> list[tuple[str, Any, Part]]:
        """``(name, object, part)`` of the live entries, in the order they were added."""
        with self._lock:
            entries = list(self._entries.items())
        out = []
        for name, (ref, part) in entries:
            obj = ref()
            if obj is not None:
                out.append((name, obj, part))
        return out

    def parts(self) -> list[Part]:
        """The parts of the live entries, in ``PARTS`` order."""
        held = {id(part) for _, _, part in self.snapshot()}
        return [p for p in PARTS if id(p) in held]

    def read_all(self, options: Options) -> list[tuple[str, list[Reading]]]:
        """Each live object's readings, no lock held; an object whose reader raises is
        logged and skipped."""
        out = []
        for name, obj, part in self.snapshot():
            try:
                readings = part.read(obj, options)
            except Exception:
                with self._lock:
                    first = name not in self._failing
                    self._failing.add(name)
                _log.warning(
                    "cannot read %s %r for export; skipped",
                    type(obj).__name__,
                    name,
                    exc_info=first,
                )
                continue
            if self._failing:
                with self._lock:
                    self._failing.discard(name)
            out.append((name, readings))
        return out

    def __len__(self) -> int:
        return len(self.snapshot())


class _Strong:
    """A strong reference with ``weakref.ref``'s call protocol."""

    __slots__ = ("_obj",)

    def __init__(self, obj: object) -> None:
        self._obj = obj

    def __call__(self) -> object:
        return self._obj
