"""``HealthMonitor``: keeps every registered agent's ``health`` current.

It replaces a monitor that made a synchronous call into every agent, one at a time,
from a single process: one slow agent delayed every other agent's check, and a hanging
one stopped the monitor for good.

How a round works (the monitor thread runs one every ``interval`` seconds; ``check_now``
runs one synchronously):

1. ``registry.expire()`` removes entries whose owner died or whose lease ended, so
   liveness costs no call into any agent.
2. ``registry.find()`` lists the live agents. An agent the previous round saw that is no
   longer listed has vanished (unregistered, owner collected, lease expired): its
   transition is published with health ``"gone"``.
3. With a ``check``, every agent's check is submitted at once to a bounded
   :class:`~ferrule.TaskPool` and the round waits for all of them together, at most
   ``timeout`` seconds from submission. A check still running then is ``"unresponsive"``
   (and is not resubmitted while it runs: the agent stays ``"unresponsive"``); a check
   still queued then is cancelled, also ``"unresponsive"``.
4. Each agent whose new status differs from its ``health`` in the registry is updated
   (``registry.update(agent_id, health=...)``), then its transition is published as
   ``agent.<id>.health`` with ``{"agent_id", "health", "previous"}``.

Invariants: rounds never overlap (a round lock); transitions are published after the
registry update, in the order the rounds made them, by whichever thread drains the
pending list, never under a lock; ``_known`` holds one entry per agent the last round
saw (reclaimed when it vanishes) and ``_inflight`` one per check that outlived its
round's deadline (reclaimed by the first round after it returns), so memory is bounded
by the registry's size.

Ownership: the monitor thread holds the monitor only through a weak reference (and
strongly only during a round), so a monitor dropped without ``stop()`` -- say one made
with ``check=self.check`` and stored on ``self`` -- is still collected; a finalizer then
sets the stop event and the thread ends at once. The check workers hold the monitor's
``check`` only while a check is queued or running (a hanging check keeps its object alive
until it returns); the worker pool is closed when the monitor is collected.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, wait
from types import TracebackType

from ferrule._native import Agent, ManualClock, QueueFull, Registry, SignalBus
from ferrule._taskpool import TaskPool

__all__ = ["HealthMonitor"]

_log = logging.getLogger("ferrule.health")

#: What a ``check`` may return; anything else counts as ``"unhealthy"``.
CHECK_RESULTS = frozenset({"healthy", "degraded", "unhealthy"})

_MAX_QUEUE = 65536
#: Longest interval or timeout accepted, in seconds: ferrule's bound on every duration
#: (about 126 years), well below ``threading.TIMEOUT_MAX``.
_MAX_SECONDS = 4e9

Check = Callable[[Agent], object]


def _type_name(obj: object) -> str:
    return type(obj).__name__


def _positive_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {_type_name(value)!r}")
    try:
        seconds = float(value)
    except OverflowError:
        raise OverflowError(f"{name} is out of range") from None
    if not seconds > 0.0 or math.isinf(seconds):
        raise ValueError(f"{name} must be > 0 and finite")
    if seconds > _MAX_SECONDS:
        raise ValueError(f"{name} is too large")
    return seconds


def _monitor(ref: weakref.ref[HealthMonitor], stop: threading.Event, interval: float) -> None:
    """The monitor thread: a round every ``interval`` seconds until ``stop`` is set or the
    monitor is collected. It holds the monitor strongly only during a round."""
    next_start = time.monotonic()
    while not stop.is_set():
        monitor = ref()
        if monitor is None:
            return
        try:
            monitor._scheduled_round()
        except Exception:  # keep monitoring; the next round starts afresh
            _log.exception("health monitor round failed")
        monitor = None
        now = time.monotonic()
        # Fixed rate without catch-up bursts: an overrun round is followed at once.
        next_start = max(next_start + interval, now)
        stop.wait(next_start - now)


class HealthMonitor:
    """Keeps each registered agent's ``health`` current from one monitor thread,
    without calling into every agent in turn.

    Liveness comes from the registry's owners and leases: each round calls
    ``registry.expire()``, and an agent that vanished since the previous round (owner
    collected, thread finished, lease expired, unregistered) gets a transition with
    health ``"gone"`` (published only; there is no entry left to update).

    ``check(agent)`` (optional) receives the :class:`~ferrule.Agent` and returns
    ``"healthy"``, ``"degraded"`` or ``"unhealthy"``. All agents' checks run at once on
    a bounded :class:`~ferrule.TaskPool` of ``max_workers`` threads, and a round waits
    at most ``timeout`` seconds for them, so one slow agent never delays the others:

    - a check still running after ``timeout`` makes the agent ``"unresponsive"``; it is
      not submitted again while it still runs (the agent stays ``"unresponsive"``),
      and its late result is discarded;
    - a check that raises, or returns anything else than the three statuses above,
      makes the agent ``"unhealthy"``.

    Without ``check``, statuses are the registry's own ``health`` values and the only
    transitions are ``"gone"``.

    ``interval`` and ``timeout`` are seconds, > 0 and at most 4e9. The monitor thread
    holds the monitor weakly: a monitor dropped without ``stop()`` (one made with
    ``check=self.check`` and stored on ``self``, say) is collected, and its thread ends.

    A transition (new status != the agent's ``health`` in the registry) first updates
    the registry (``registry.update(agent_id, health=...)``; an agent that vanished
    meanwhile is skipped and reported ``"gone"`` by the next round), then, if ``bus`` is
    given, is published as ``agent.<agent_id>.health`` with data
    ``{"agent_id": ..., "health": ..., "previous": ...}``: once per change, in order,
    outside any lock.

    >>> import ferrule
    >>> reg, bus = ferrule.Registry(), ferrule.SignalBus()
    >>> reg.register("a1", {"ok": True})
    >>> reg.register("a2", {"ok": False})
    >>> sub = bus.subscribe("agent.*.health")
    >>> def check(agent):
    ...     return "healthy" if agent.value["ok"] else "degraded"
    >>> with HealthMonitor(reg, interval=5.0, check=check, timeout=0.5, bus=bus) as mon:
    ...     sorted(mon.check_now().items())
    [('a1', 'healthy'), ('a2', 'degraded')]
    >>> reg.get("a2").health, sub.get(timeout=1.0).data
    ('degraded', {'agent_id': 'a2', 'health': 'degraded', 'previous': 'healthy'})
    """

    def __init__(
        self,
        registry: Registry,
        *,
        interval: float = 5.0,
        check: Check | None = None,
        timeout: float = 1.0,
        bus: SignalBus | None = None,
        clock: ManualClock | None = None,
        max_workers: int = 8,
    ) -> None:
        if not isinstance(registry, Registry):
            raise TypeError(f"registry must be a ferrule.Registry, not {_type_name(registry)!r}")
        self._interval = _positive_seconds("interval", interval)
        if check is not None and not callable(check):
            raise TypeError(f"check must be callable or None, not {_type_name(check)!r}")
        self._timeout = _positive_seconds("timeout", timeout)
        if bus is not None and not isinstance(bus, SignalBus):
            raise TypeError(f"bus must be a ferrule.SignalBus or None, not {_type_name(bus)!r}")
        if clock is not None and not isinstance(clock, ManualClock):
            raise TypeError(
                f"clock must be a ferrule.ManualClock or None, not {_type_name(clock)!r}"
            )
        if not isinstance(max_workers, int) or isinstance(max_workers, bool):
            raise TypeError(f"max_workers must be an int, not {_type_name(max_workers)!r}")
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
        self._registry = registry
        self._check = check
        self._bus = bus
        self._now: Callable[[], float] = time.monotonic if clock is None else clock.now
        self._max_workers = max_workers

        # Serialises rounds (and stop()'s pool shutdown against a round); guards _known,
        # _inflight and _pool.
        self._round_lock = threading.Lock()
        self._known: dict[str, str] = {}
        self._inflight: dict[str, Future[object]] = {}
        self._pool: TaskPool | None = None
        # Guards _pending, _draining and _thread; held only for a few dict/deque/attribute
        # operations, never around a wait or the user's code.
        self._lock = threading.Lock()
        self._pending: deque[tuple[str, str, str]] = deque()
        self._draining = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_round: float | None = None
        self._rounds = 0
        # A monitor collected without stop() ends its thread (which holds it weakly).
        weakref.finalize(self, self._stop.set)

    # -- properties ----------------------------------------------------------------

    @property
    def interval(self) -> float:
        """Seconds (real time) between the starts of two rounds of the monitor thread."""
        return self._interval

    @property
    def timeout(self) -> float:
        """Seconds a round waits for the checks it submitted."""
        return self._timeout

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        t = self._thread
        return t is not None and t.is_alive()

    @property
    def rounds(self) -> int:
        """Rounds completed so far (by the thread and by ``check_now``)."""
        return self._rounds

    @property
    def last_round(self) -> float | None:
        """When the last completed round started, in the clock's seconds
        (``time.monotonic()`` without a ``clock``); None before the first round."""
        return self._last_round

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the monitor thread (its first round runs at once). RuntimeError if it
        is already running. A stopped monitor may be started again.

        >>> import ferrule
        >>> mon = HealthMonitor(ferrule.Registry(), interval=60.0)
        >>> mon.start(); mon.running
        True
        >>> mon.stop(); mon.running
        False
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise RuntimeError("HealthMonitor is already running")
            self._stop.clear()
            self._thread = threading.Thread(
                target=_monitor,
                args=(weakref.ref(self), self._stop, self._interval),
                name="ferrule-health-monitor",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the monitor thread and join it (a round in progress finishes first: at
        most about ``timeout`` seconds), then shut the check workers down; those
        still running a hanging check exit when it returns. Idempotent; also releases
        the workers a ``check_now`` used without ``start``."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._round_lock:
            pool, self._pool = self._pool, None
            idle = not any(not fut.done() for fut in self._inflight.values())
            if pool is not None:
                # Joining a worker stuck in a check would hang stop(); idle ones exit at once.
                pool.shutdown(wait=idle, cancel_futures=True)

    def __enter__(self) -> HealthMonitor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def check_now(self) -> dict[str, str]:
        """Run one round now, in the calling thread (waiting for a round in progress
        first), and return each agent's status: the live agents' statuses, plus
        ``"gone"`` for those that vanished since the previous round.

        >>> import ferrule
        >>> reg = ferrule.Registry()
        >>> reg.register("a")
        >>> mon = HealthMonitor(reg, check=lambda agent: "unhealthy")
        >>> mon.check_now()
        {'a': 'unhealthy'}
        >>> reg.unregister("a"), mon.check_now()
        (True, {'a': 'gone'})
        >>> mon.stop()
        """
        with self._round_lock:
            result = self._round()
        self._drain()
        return result

    def __repr__(self) -> str:
        return (
            f"HealthMonitor(interval={self._interval}, timeout={self._timeout}, "
            f"check={self._check!r}, running={self.running})"
        )

    # -- the round -----------------------------------------------------------------

    def _scheduled_round(self) -> None:
        """One round of the monitor thread (see :func:`_monitor`)."""
        with self._round_lock:
            if self._stop.is_set():
                return
            self._round()
        self._drain()

    def _get_pool(self) -> TaskPool:
        pool = self._pool
        if pool is None:
            pool = TaskPool(
                self._max_workers,
                max_queue=_MAX_QUEUE,
                overflow="reject",
                name="ferrule-health-check",
            )
            self._pool = pool
        return pool

    def _run_checks(self, agents: list[Agent], check: Check) -> dict[str, str]:
        statuses: dict[str, str] = {}
        submitted: dict[str, Future[object]] = {}
        pool = self._get_pool()
        # Only rounds touch _inflight, and they hold the round lock: no other lock needed.
        inflight = self._inflight
        for aid in [aid for aid, fut in inflight.items() if fut.done()]:
            del inflight[aid]  # returned since: checked again below, or reclaimed if gone
        submit = pool.submit
        for agent in agents:
            aid = agent.agent_id
            if aid in inflight:
                statuses[aid] = "unresponsive"  # its last check is still running
                continue
            try:
                submitted[aid] = submit(check, agent)
            except QueueFull:
                statuses[aid] = agent.health  # no room this round: leave it as it is
        if submitted:
            # One shared deadline: every check had `timeout` seconds, all at once.
            wait(list(submitted.values()), timeout=self._timeout)
            for aid, fut in submitted.items():
                if not fut.done():
                    if not fut.cancel():  # queued: never runs; running: its result is ignored
                        inflight[aid] = fut
                    statuses[aid] = "unresponsive"
                elif fut.cancelled() or fut.exception() is not None:
                    statuses[aid] = "unhealthy"
                else:
                    value = fut.result()
                    statuses[aid] = (
                        value if isinstance(value, str) and value in CHECK_RESULTS else "unhealthy"
                    )
        return statuses

    def _round(self) -> dict[str, str]:
        started = self._now()
        registry = self._registry
        registry.expire()
        agents = registry.find()
        live = {a.agent_id: a for a in agents}
        check = self._check
        statuses = (
            self._run_checks(agents, check)
            if check is not None
            else {a.agent_id: a.health for a in agents}
        )

        transitions: list[tuple[str, str, str]] = []
        known: dict[str, str] = {}
        for aid, status in statuses.items():
            previous = live[aid].health
            known[aid] = previous
            if status == previous:
                continue
            try:
                registry.update(aid, health=status)
            except KeyError:
                continue  # vanished meanwhile: the next round reports it "gone"
            known[aid] = status
            transitions.append((aid, status, previous))
        result = dict(statuses)
        for aid, previous in self._known.items():
            if aid not in live:
                transitions.append((aid, "gone", previous))
                result[aid] = "gone"
        self._known = known
        if self._bus is not None and transitions:
            with self._lock:
                self._pending.extend(transitions)
        self._last_round = started
        self._rounds += 1
        return result

    def _drain(self) -> None:
        """Publish pending transitions in order, outside any lock; one drainer at a time
        (a thread that finds another draining leaves its items to it)."""
        bus = self._bus
        if bus is None:
            return
        with self._lock:
            if self._draining:
                return
            self._draining = True
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        self._draining = False
                        return
                    aid, status, previous = self._pending.popleft()
                try:
                    bus.publish(
                        f"agent.{aid}.health",
                        {"agent_id": aid, "health": status, "previous": previous},
                    )
                except Exception:  # e.g. an id the bus refuses as a segment ("", "*")
                    _log.exception("cannot publish the health of agent %r", aid)
        except BaseException:
            with self._lock:
                self._draining = False
            raise
