"""The events ferrule's parts publish on a bus, and a bridge from a bus to ``logging``.

Every part takes ``bus=`` (a :class:`ferrule.SignalBus`, or anything with
``publish(type, data)``) and ``name=`` (required with a bus); it then publishes its rare,
meaningful changes as ``<part>.<name>.<what>`` with a dict of data. Nothing is published
per operation: evictions and denials are aggregated per interval, overflow, saturation
and exhaustion are ``begin``/``end`` pairs. ``publish`` always runs with no internal
lock held (a handler may call back into the part) and what it raises goes to
``sys.unraisablehook``, never into the operation. :data:`EVENTS` lists every event;
``docs/events.md`` has the same table.

:func:`log_events` subscribes a handler that logs every matching event.

>>> EVENTS[QUEUE_OVERFLOW].fields
('state', 'rejected', 'dropped', 'size')
>>> sorted(EVENTS)[:3]
['agent.*.health', 'breaker.*.state', 'cache.*.evicting']
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ferrule._native import Signal, SignalBus, Subscription

__all__ = [
    "AGENT_HEALTH",
    "BREAKER_STATE",
    "CACHE_EVICTING",
    "ERRORS_AGENT_EVICTED",
    "EVENTS",
    "POOL_EXHAUSTED",
    "QUEUE_OVERFLOW",
    "RATELIMIT_DENIED",
    "RESOURCE_PRESSURE",
    "TASKPOOL_SATURATED",
    "EventKind",
    "log_events",
]

# Topic patterns (for ``SignalBus.subscribe``): ``*`` is the part's name.
BREAKER_STATE = "breaker.*.state"
RESOURCE_PRESSURE = "resource.*.pressure"
AGENT_HEALTH = "agent.*.health"
CACHE_EVICTING = "cache.*.evicting"
QUEUE_OVERFLOW = "queue.*.overflow"
TASKPOOL_SATURATED = "taskpool.*.saturated"
RATELIMIT_DENIED = "ratelimit.*.denied"
POOL_EXHAUSTED = "pool.*.exhausted"
ERRORS_AGENT_EVICTED = "errors.*.agent_evicted"


@dataclass(frozen=True)
class EventKind:
    """One kind of event: its topic ``pattern``, the class that publishes it, the
    ``fields`` of its data, ``when`` it is published and its ``rate`` bound."""

    pattern: str
    source: str
    fields: tuple[str, ...]
    when: str
    rate: str


EVENTS: Mapping[str, EventKind] = MappingProxyType(
    {
        k.pattern: k
        for k in (
            EventKind(
                BREAKER_STATE,
                "CircuitBreaker",
                ("name", "state", "previous"),
                "every change of state",
                "one per change of state",
            ),
            EventKind(
                RESOURCE_PRESSURE,
                "ResourceManager",
                ("name", "pressure", "previous", "used", "limit"),
                "a budget's pressure level changes (the topic names the budget)",
                "one per change of level",
            ),
            EventKind(
                AGENT_HEALTH,
                "HealthMonitor",
                ("agent_id", "health", "previous"),
                "an agent's health changes (the topic names the agent)",
                "one per change of health",
            ),
            EventKind(
                CACHE_EVICTING,
                "Cache",
                ("evicted", "size", "max_size"),
                "entries are pushed out by the size or weight bound",
                "at most one per event_interval",
            ),
            EventKind(
                QUEUE_OVERFLOW,
                "WorkQueue",
                ("state", "rejected", "dropped", "size"),
                "begin: a put is refused or drops an item for lack of room; "
                "end: a get leaves at most maxsize // 2 items",
                "one begin and one end per episode",
            ),
            EventKind(
                TASKPOOL_SATURATED,
                "TaskPool",
                ("state", "rejected", "active", "queued"),
                "begin: a submit finds every worker busy and the queue full; "
                "end: at most max_workers + max_queue // 2 tasks outstanding",
                "one begin and one end per episode",
            ),
            EventKind(
                RATELIMIT_DENIED,
                "RateLimiter",
                ("denied", "keys", "interval"),
                "a window of at least event_interval ends with deny_threshold denials or more",
                "at most one per event_interval",
            ),
            EventKind(
                POOL_EXHAUSTED,
                "Pool",
                ("state", "waited", "timeouts", "max_size"),
                "begin: a checkout must wait; end: an item goes back idle with nobody waiting",
                "one begin and one end per episode",
            ),
            EventKind(
                ERRORS_AGENT_EVICTED,
                "ErrorStore",
                ("agent_id",),
                "an agent is evicted to make room at max_agents",
                "one per evicted agent (at most one per record of a new agent)",
            ),
        )
    }
)


def log_events(
    bus: SignalBus,
    logger: logging.Logger | None = None,
    level: int = logging.INFO,
    pattern: str = "#",
) -> Subscription:
    """Log every signal of ``bus`` matching ``pattern`` (default: all) on ``logger``
    (default ``logging.getLogger("ferrule.events")``) at ``level``; returns the
    :class:`ferrule.Subscription` (``cancel()`` it, or use it as a context manager, to
    stop).

    The message is ``"<topic> <data>"``; the record carries the event as structured
    ``extra``: ``event`` (the topic), ``event_data`` (the data) and ``event_time`` (the
    signal's wall-clock timestamp), for a JSON formatter or a filter. Records are
    emitted on the subscription's worker thread, never inside ``publish``.

    >>> import logging, threading
    >>> import ferrule
    >>> seen: list[logging.LogRecord] = []
    >>> got = threading.Event()
    >>> class Keep(logging.Handler):
    ...     def emit(self, record: logging.LogRecord) -> None:
    ...         seen.append(record)
    ...         got.set()
    >>> log = logging.getLogger("example.events")
    >>> log.addHandler(Keep())
    >>> bus = ferrule.SignalBus()
    >>> sub = log_events(bus, log, level=logging.WARNING)
    >>> cache = ferrule.Cache(1, name="sessions", bus=bus)
    >>> cache["a"] = 1
    >>> cache["b"] = 2  # evicts "a"
    >>> got.wait(5.0)
    True
    >>> seen[0].event, seen[0].event_data["evicted"], seen[0].levelname
    ('cache.sessions.evicting', 1, 'WARNING')
    >>> sub.cancel()
    """
    if not callable(getattr(bus, "subscribe", None)):
        raise TypeError(f"bus must be a SignalBus, not {type(bus).__name__!r}")
    if not isinstance(level, int) or isinstance(level, bool):
        raise TypeError(f"level must be an int, not {type(level).__name__!r}")
    log = logger if logger is not None else logging.getLogger("ferrule.events")
    if not isinstance(log, logging.Logger):
        raise TypeError(f"logger must be a logging.Logger or None, not {type(log).__name__!r}")

    def handle(signal: Signal) -> None:
        if log.isEnabledFor(level):
            extra = {
                "event": signal.type,
                "event_data": signal.data,
                "event_time": signal.timestamp,
            }
            log.log(level, "%s %s", signal.type, signal.data, extra=extra)

    return bus.subscribe(pattern, handle)
