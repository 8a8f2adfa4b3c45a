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
   transition is published with health ``"gone"``, and its watch (``watch()``), if any,
   is dropped.
3. Each agent's check is its watch's, else the monitor's ``check``. An agent whose
   watch has an ``interval`` is checked only on a round at least ``interval`` minus half
   the monitor's ``interval`` after the round that last checked it (the round nearest
   its due time; the monitor's clock measures it). Sync checks are submitted at once to
   a bounded :class:`~ferrule.TaskPool`; ``async`` checks (a coroutine function, or a
   check whose result is awaitable) run as tasks on the monitor's event loop: the
   ``loop`` it was given, or one of its own on a thread started at the first async check.
   The round waits for them together, each at most its ``timeout`` from submission. A
   sync check still running then is ``"unresponsive"`` (and is not resubmitted while it
   runs: the agent stays ``"unresponsive"``); one still queued is cancelled, also
   ``"unresponsive"``; an async one is cancelled, ``"unresponsive"``, and not resubmitted
   until its task has ended (at once, unless it resists the cancellation).
4. Each agent whose new status differs from its ``health`` in the registry is updated
   (``registry.update(agent_id, health=...)``), then its transition is published as
   ``agent.<id>.health`` with ``{"agent_id", "health", "previous"}``.

Invariants: rounds never overlap (a round lock); transitions are published after the
registry update, in the order the rounds made them, by whichever thread drains the
pending list, never under a lock; ``_known`` holds one entry per agent the last round
saw (reclaimed when it vanishes), ``_watches`` one per watched agent (reclaimed by the
first round that finds it gone), ``_inflight`` one per check that outlived its round's
deadline (reclaimed by the first round after it ends), and the async runner one per
async check still running, so memory is bounded by the registry's size.

Ownership: the monitor thread holds the monitor only through a weak reference (and
strongly only during a round), so a monitor dropped without ``stop()`` -- say one made
with ``check=self.check`` and stored on ``self`` -- is still collected; a finalizer then
sets the stop event (the thread ends at once) and tells the async runner to cancel its
tasks and end its loop thread. The check workers and the loop hold a check only while it
is queued or running (a hanging check keeps its object alive until it returns); neither
they nor the loop thread refer to the monitor. The worker pool is closed when the monitor
is collected. At interpreter exit (``threading``'s exit hooks, before daemon threads are
frozen) every monitor-owned loop cancels its tasks and closes; the exit waits at most
one second for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future, wait
from types import TracebackType
from typing import Any

from ferrule._native import Agent, ManualClock, QueueFull, Registry, SignalBus
from ferrule._queue import is_async_callable
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


def _optional_seconds(name: str, value: object) -> float | None:
    return None if value is None else _positive_seconds(name, value)


def _close_awaitable(obj: object) -> None:
    """Close a coroutine that will never be awaited (no "never awaited" warning)."""
    if inspect.iscoroutine(obj):
        obj.close()


class _Raised:
    """What an async check raised (KeyboardInterrupt and SystemExit included: raised out
    of a task they would stop the loop); the runner turns it back into an exception."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def _invoke(check: Callable[[Agent], Awaitable[object]], agent: Agent) -> object:
    try:
        return await check(agent)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return _Raised(exc)


async def _await(awaitable: Awaitable[object]) -> object:
    try:
        return await awaitable
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        return _Raised(exc)


class _Loop:
    """An event loop the runner schedules on. ``closing`` is set (on the loop's own
    thread) once a monitor-owned loop is shutting down: no task is started after it."""

    __slots__ = ("closing", "loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread | None) -> None:
        self.loop = loop
        self.thread = thread
        self.closing = False


class _AsyncCall:
    """One async check on a loop. The coroutine is made on the loop, when the task
    starts, so a call cancelled before it starts leaves none unawaited. ``future``
    completes when the task has ended (result, exception, or cancelled): until then the
    check still runs, whatever the round decided."""

    __slots__ = ("_args", "_cancelled", "_fn", "_loop", "_runner", "_task", "future")

    def __init__(
        self,
        runner: _AsyncRunner,
        loop: _Loop,
        fn: Callable[..., Coroutine[Any, Any, object]],
        args: tuple[Any, ...],
    ) -> None:
        self.future: Future[object] = Future()
        self._runner = runner
        self._loop = loop
        self._fn: Callable[..., Coroutine[Any, Any, object]] | None = fn
        self._args: tuple[Any, ...] = args
        self._task: asyncio.Task[object] | None = None
        self._cancelled = False

    def start(self) -> None:
        """On the loop: start the task (unless cancelled or the loop is closing)."""
        fn, args = self._fn, self._args
        self._fn, self._args = None, ()
        if fn is None:
            return
        if self._cancelled or self._loop.closing:
            for arg in args:
                _close_awaitable(arg)
            self._end()
            self.future.cancel()
            return
        task = self._loop.loop.create_task(fn(*args))
        self._task = task
        task.add_done_callback(self._done)

    def cancel(self) -> None:
        """From any thread: cancel the task (or never start it)."""
        self._cancelled = True
        try:
            self._loop.loop.call_soon_threadsafe(self._cancel_here)
        except RuntimeError:  # the loop is closed: its callbacks never run
            args, self._fn, self._args = self._args, None, ()
            for arg in args:
                _close_awaitable(arg)
            self._end()
            self.future.cancel()

    def _cancel_here(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()

    def _end(self) -> None:
        self._runner._calls.discard(self)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._task = None
        self._end()
        if task.cancelled():
            self.future.cancel()
            return
        value = task.result()  # _invoke and _await never raise but CancelledError
        if isinstance(value, _Raised):
            self.future.set_exception(value.exc)
        else:
            self.future.set_result(value)


def _stop_loop(handle: _Loop) -> None:
    """On a monitor-owned loop: start no more tasks, cancel those running, stop."""
    handle.closing = True
    for task in asyncio.all_tasks(handle.loop):
        task.cancel()
    handle.loop.stop()


def _run_loop(handle: _Loop) -> None:
    """The loop thread of a monitor-owned loop: runs until ``_stop_loop``, then lets every
    cancelled task end (no task is destroyed pending) and closes the loop."""
    loop = handle.loop
    try:
        loop.run_forever()
        while tasks := asyncio.all_tasks(loop):
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


#: Runners with a loop thread of their own, for the exit hook.
_runners: weakref.WeakSet[_AsyncRunner] = weakref.WeakSet()
_exiting = False


def _close_loops() -> None:
    """At exit: every monitor-owned loop cancels its tasks and closes (waiting at most a
    second in all for them), and no new one starts."""
    global _exiting
    _exiting = True
    threads = [t for t in (r._shutdown() for r in list(_runners)) if t is not None]
    deadline = time.monotonic() + 1.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


# Runs before threading joins non-daemon threads at exit, while threads still run.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_close_loops)


class _AsyncRunner:
    """Runs one monitor's async checks: on the loop it was given, or on a loop of its own,
    on a daemon thread started by the first async check and ended by ``stop()``,
    collection of the monitor or interpreter exit (a later check starts a new one). It
    never refers to the monitor.

    ``_calls`` holds the calls scheduled and not ended (one per agent at most: a check
    still running is not resubmitted); set.add/discard and list() of it are each atomic,
    so it needs no lock (``_abandon`` runs in a finalizer, where taking one could
    deadlock). ``_lock`` guards starting and stopping the own loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._given = None if loop is None else _Loop(loop, None)
        self._own: _Loop | None = None
        self._lock = threading.Lock()
        self._calls: set[_AsyncCall] = set()

    def loops(self) -> tuple[asyncio.AbstractEventLoop, ...]:
        handle = self._given or self._own
        return () if handle is None else (handle.loop,)

    def submit(self, fn: Callable[..., Coroutine[Any, Any, object]], *args: Any) -> _AsyncCall:
        """Schedule ``fn(*args)`` as a task; RuntimeError if the loop is closed or the
        interpreter is exiting."""
        handle = self._given or self._loop()
        call = _AsyncCall(self, handle, fn, args)
        self._calls.add(call)
        try:
            handle.loop.call_soon_threadsafe(call.start)
        except BaseException:
            self._calls.discard(call)
            raise
        return call

    def _loop(self) -> _Loop:
        with self._lock:
            handle = self._own
            if handle is not None:
                return handle
            if _exiting:
                raise RuntimeError("the interpreter is exiting")
            loop = asyncio.new_event_loop()
            handle = _Loop(loop, None)
            thread = threading.Thread(
                target=_run_loop, args=(handle,), name="ferrule-health-loop", daemon=True
            )
            handle.thread = thread
            try:
                thread.start()
            except BaseException:
                loop.close()
                raise
            self._own = handle
            _runners.add(self)
            return handle

    def stop(self, wait: bool) -> None:
        """Cancel every call; end the own loop's thread (joined if ``wait``, unless this is
        that thread)."""
        if self._given is not None:
            for call in list(self._calls):
                call.cancel()
            return
        thread = self._shutdown()
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    def _shutdown(self) -> threading.Thread | None:
        with self._lock:
            handle, self._own = self._own, None
        if handle is None:
            return None
        with contextlib.suppress(RuntimeError):  # already closed
            handle.loop.call_soon_threadsafe(_stop_loop, handle)
        return handle.thread

    def _abandon(self) -> None:
        """The monitor was collected (a finalizer: no lock, no wait)."""
        handle = self._given or self._own
        if handle is None:
            return
        try:
            if handle is self._given:
                for call in list(self._calls):
                    call._cancelled = True  # one not started yet never starts
                    handle.loop.call_soon_threadsafe(call._cancel_here)
            else:
                self._own = None
                handle.loop.call_soon_threadsafe(_stop_loop, handle)
        except RuntimeError:
            pass  # the loop is closed


class _Handoff:
    """A sync check returned an awaitable: ``_call_sync`` scheduled it on the loop."""

    __slots__ = ("call",)

    def __init__(self, call: _AsyncCall) -> None:
        self.call = call


def _call_sync(
    check: Check, agent: Agent, runner: _AsyncRunner, handoffs: list[tuple[str, _AsyncCall]]
) -> object:
    """A sync check on a pool worker. An awaitable result is awaited on the monitor's
    loop (within the same timeout), and listed in the round's ``handoffs`` (so the
    round looks only at those); one the runner refuses is closed, and fails."""
    result = check(agent)
    if type(result) is not str and inspect.isawaitable(result):
        try:
            call = runner.submit(_await, result)
        except BaseException:
            _close_awaitable(result)
            raise
        handoffs.append((agent.agent_id, call))
        return _Handoff(call)
    return result


def _discard_late(fut: Future[object]) -> None:
    """A sync check outlived its round and ended: a late awaitable is not awaited."""
    if not fut.cancelled() and fut.exception() is None:
        value = fut.result()
        if isinstance(value, _Handoff):
            value.call.cancel()


class _Watch:
    """One agent's own check (``HealthMonitor.watch``). ``last`` is the monitor clock's
    time of the round that last submitted its check; only rounds touch it."""

    __slots__ = ("check", "interval", "is_async", "last", "timeout")

    def __init__(self, check: Check, interval: float | None, timeout: float | None) -> None:
        self.check = check
        self.is_async = is_async_callable(check)
        self.interval = interval
        self.timeout = timeout
        self.last: float | None = None


def _collected(stop: threading.Event, runner: _AsyncRunner) -> None:
    stop.set()
    runner._abandon()


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
    ``"healthy"``, ``"degraded"`` or ``"unhealthy"``; ``watch()`` gives one agent a check
    (and interval, timeout) of its own. All agents' checks run at once, and a round waits
    at most ``timeout`` seconds for them, so one slow agent never delays the others:

    - a sync check runs on a bounded :class:`~ferrule.TaskPool` of ``max_workers``
      threads; an ``async def`` check (a coroutine function, a ``functools.partial`` of
      one, an object with an ``async def __call__``) runs as a task on an event loop:
      ``loop`` if given (scheduled thread-safely; it must be running), else one the
      monitor starts on a daemon thread, ``ferrule-health-loop``, at its first async
      check. A sync check whose result is awaitable has it awaited on that loop too,
      within the same timeout;
    - a check still running after ``timeout`` makes the agent ``"unresponsive"``; it is
      not submitted again while it still runs (the agent stays ``"unresponsive"``),
      and its late result is discarded. An async check is cancelled then, so its agent
      is checked again by the next round (unless it resists the cancellation: then once
      its task has ended);
    - a check that raises, or returns anything else than the three statuses above,
      makes the agent ``"unhealthy"``.

    Without ``check``, statuses are the registry's own ``health`` values and the only
    transitions are ``"gone"`` (and those of watched agents).

    ``interval`` and ``timeout`` are seconds, > 0 and at most 4e9. The monitor thread
    and the loop thread hold the monitor weakly, or not at all: a monitor dropped
    without ``stop()`` (one made with ``check=self.check`` and stored on ``self``, say)
    is collected, its thread ends, and its async checks are cancelled.

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
        loop: asyncio.AbstractEventLoop | None = None,
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
        if loop is not None:
            if not isinstance(loop, asyncio.AbstractEventLoop):
                raise TypeError(
                    f"loop must be an asyncio event loop or None, not {_type_name(loop)!r}"
                )
            if loop.is_closed():
                raise ValueError("loop is closed")
        self._registry = registry
        self._check = check
        self._check_async = check is not None and is_async_callable(check)
        self._bus = bus
        self._now: Callable[[], float] = time.monotonic if clock is None else clock.now
        self._max_workers = max_workers

        # Serialises rounds (and stop()'s pool shutdown against a round); guards _known,
        # _inflight, _pool and the watches' ``last``.
        self._round_lock = threading.Lock()
        self._known: dict[str, str] = {}
        self._inflight: dict[str, Future[object]] = {}
        self._pool: TaskPool | None = None
        self._runner = _AsyncRunner(loop)
        # Guards _pending, _draining, _thread and _watches; held only for a few
        # dict/deque/attribute operations, never around a wait or the user's code.
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._pending: deque[tuple[str, str, str]] = deque()
        self._draining = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_round: float | None = None
        self._rounds = 0
        # A monitor collected without stop() ends its thread (which holds it weakly) and
        # its async checks (the runner does not refer to it).
        weakref.finalize(self, _collected, self._stop, self._runner)

    # -- properties ----------------------------------------------------------------

    @property
    def interval(self) -> float:
        """Seconds (real time) between the starts of two rounds of the monitor thread."""
        return self._interval

    @property
    def timeout(self) -> float:
        """Seconds a round waits for the checks it submitted (a watch may set its own)."""
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
        most about the longest timeout), then shut the check workers down; those
        still running a hanging check exit when it returns. Async checks still running
        are cancelled; the monitor's own loop thread ends once they have (joined when
        none was running). Idempotent; also releases the workers and the loop a
        ``check_now`` used without ``start``."""
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
            self._runner.stop(wait=idle)

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
        if self._on_monitor_loop():
            raise RuntimeError(
                "check_now() would block the monitor's event loop: "
                "use await check_now_async() there"
            )
        with self._round_lock:
            result = self._round()
        self._drain()
        return result

    async def check_now_async(self) -> dict[str, str]:
        """Like ``check_now()``, awaited: the round runs on a thread of the running
        loop's default executor, so the loop (the monitor's own included) keeps
        running. Cancelling the await does not stop the round.

        >>> import asyncio, ferrule
        >>> reg = ferrule.Registry()
        >>> reg.register("a")
        >>> async def check(agent):
        ...     await asyncio.sleep(0)
        ...     return "degraded"
        >>> async def main():
        ...     mon = HealthMonitor(reg, check=check, loop=asyncio.get_running_loop())
        ...     try:
        ...         return await mon.check_now_async()
        ...     finally:
        ...         mon.stop()
        >>> asyncio.run(main())
        {'a': 'degraded'}
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.check_now)

    def _on_monitor_loop(self) -> bool:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return running in self._runner.loops()

    # -- per-agent checks ----------------------------------------------------------

    def watch(
        self,
        agent_id: str,
        check: Check,
        *,
        interval: float | None = None,
        timeout: float | None = None,
    ) -> None:
        """Check agent ``agent_id`` with ``check`` (sync or ``async def``) instead of the
        monitor's check, from the next round on; a watch of the same agent is replaced.

        ``interval`` (seconds on the monitor's clock): check it only on a round at
        least ``interval`` minus half the monitor's ``interval`` after the round that
        last checked it, i.e. on the round nearest each due time (rounds are the
        granularity); between those rounds its health is left as it is. ``timeout``:
        how long a round waits for this check (default: the monitor's). KeyError if no
        such agent is registered; the watch ends with ``unwatch()`` or when a round
        finds the agent gone.

        >>> import ferrule
        >>> reg = ferrule.Registry()
        >>> reg.register("a"); reg.register("b")
        >>> mon = HealthMonitor(reg, check=lambda agent: "healthy")
        >>> mon.watch("b", lambda agent: "degraded", timeout=0.5)
        >>> sorted(mon.check_now().items())
        [('a', 'healthy'), ('b', 'degraded')]
        >>> mon.unwatch("b"), mon.unwatch("b"), mon.check_now()["b"]
        (True, False, 'healthy')
        >>> mon.stop()
        """
        if not isinstance(agent_id, str):
            raise TypeError(f"agent_id must be a str, not {_type_name(agent_id)!r}")
        if not callable(check):
            raise TypeError(f"check must be callable, not {_type_name(check)!r}")
        entry = _Watch(
            check, _optional_seconds("interval", interval), _optional_seconds("timeout", timeout)
        )
        if agent_id not in self._registry:
            raise KeyError(agent_id)
        with self._lock:
            self._watches[agent_id] = entry

    def unwatch(self, agent_id: str) -> bool:
        """End agent ``agent_id``'s watch (its check in progress, if any, is left to
        finish): from the next round on it gets the monitor's check again. True if it
        was watched."""
        if not isinstance(agent_id, str):
            raise TypeError(f"agent_id must be a str, not {_type_name(agent_id)!r}")
        with self._lock:
            return self._watches.pop(agent_id, None) is not None

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

    def _run_checks(self, jobs: list[tuple[Agent, Check, bool, float]]) -> dict[str, str]:
        """Submit each ``(agent, check, is_async, timeout)`` job at once and wait for
        them; each check's deadline is its timeout after submission."""
        statuses: dict[str, str] = {}
        submitted: dict[str, Future[object]] = {}
        calls: dict[str, _AsyncCall] = {}  # the async ones: cancelled, never Future.cancel()
        groups: dict[float, list[str]] = {}  # timeout -> agents
        runner = self._runner
        handoffs: list[tuple[str, _AsyncCall]] = []  # appended to by the workers
        pool: TaskPool | None = None
        # Only rounds touch _inflight, and they hold the round lock: no other lock needed.
        inflight = self._inflight
        for aid in [aid for aid, fut in inflight.items() if fut.done()]:
            del inflight[aid]  # returned since: checked again below, or reclaimed if gone
        for agent, check, is_async, timeout in jobs:
            aid = agent.agent_id
            if aid in inflight:
                statuses[aid] = "unresponsive"  # its last check is still running
                continue
            if is_async:
                try:
                    call = runner.submit(_invoke, check, agent)
                except RuntimeError:  # the loop is closed, or the interpreter exiting
                    statuses[aid] = "unresponsive"
                    continue
                calls[aid] = call
                submitted[aid] = call.future
            else:
                if pool is None:
                    pool = self._get_pool()
                try:
                    submitted[aid] = pool.submit(_call_sync, check, agent, runner, handoffs)
                except QueueFull:
                    statuses[aid] = agent.health  # no room this round: leave it as it is
                    continue
                except RuntimeError:  # the pool is shut down: the interpreter is exiting
                    statuses[aid] = "unresponsive"
                    continue
            groups.setdefault(timeout, []).append(aid)
        start = time.monotonic()
        seen = 0  # handoffs taken over
        # Shortest timeout first; the later groups' checks run meanwhile.
        for timeout in sorted(groups):
            group = groups[timeout]
            deadline = start + timeout
            while True:
                wait(
                    [submitted[aid] for aid in group],
                    timeout=max(0.0, deadline - time.monotonic()),
                )
                handed = False
                while seen < len(handoffs):  # now wait for their awaitables instead
                    aid, call = handoffs[seen]
                    seen += 1
                    if aid not in statuses:  # else decided already: _discard_late cancels it
                        calls[aid] = call
                        submitted[aid] = call.future
                        handed = True
                if not handed or time.monotonic() >= deadline:
                    break
            for aid in group:
                fut = submitted[aid]
                if not fut.done():
                    running = calls.get(aid)
                    if running is not None:
                        running.cancel()  # its future completes once the task has ended
                        inflight[aid] = fut
                    elif not fut.cancel():  # queued: never runs; running: result ignored
                        inflight[aid] = fut
                        fut.add_done_callback(_discard_late)
                    statuses[aid] = "unresponsive"
                elif fut.cancelled() or fut.exception() is not None:
                    statuses[aid] = "unhealthy"
                else:
                    value = fut.result()
                    if isinstance(value, _Handoff):  # returned after the last look
                        value.call.cancel()
                        statuses[aid] = "unresponsive"
                        continue
                    statuses[aid] = (
                        value if isinstance(value, str) and value in CHECK_RESULTS else "unhealthy"
                    )
        return statuses

    def _round(self) -> dict[str, str]:
        started = self._now()
        registry = self._registry
        # Taken before find(): a watch made after it, for an agent registered after it,
        # is not mistaken for one whose agent vanished.
        with self._lock:
            watches = dict(self._watches)
        registry.expire()
        agents = registry.find()
        live = {a.agent_id: a for a in agents}
        vanished = [aid for aid in watches if aid not in live]
        if vanished:
            with self._lock:
                for aid in vanished:
                    if self._watches.get(aid) is watches[aid]:
                        del self._watches[aid]
        statuses: dict[str, str] = {}
        jobs: list[tuple[Agent, Check, bool, float]] = []
        default, default_async, timeout = self._check, self._check_async, self._timeout
        slack = self._interval / 2
        inflight = self._inflight
        for agent in agents:
            aid = agent.agent_id
            w = watches.get(aid)
            if w is None:
                if default is None:
                    statuses[aid] = agent.health
                else:
                    jobs.append((agent, default, default_async, timeout))
                continue
            if (
                w.interval is not None
                and w.last is not None
                and started < w.last + w.interval - slack
            ):
                statuses[aid] = agent.health  # not due: left as it is
                continue
            fut = inflight.get(aid)
            if fut is None or fut.done():
                w.last = started  # submitted now (a check still running is not)
            jobs.append((agent, w.check, w.is_async, timeout if w.timeout is None else w.timeout))
        if jobs:
            statuses.update(self._run_checks(jobs))

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
