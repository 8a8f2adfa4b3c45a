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
   its due time; the monitor's clock measures it). Sync checks sharing a check and a
   timeout go to a bounded :class:`~ferrule.TaskPool` as one batch (``_Batch``): a worker
   calls them back to back, and the round's thread, watching, moves the checks after
   one that ran ``_STALL`` seconds without returning to another worker (one hand-off per
   round while checks are instant). ``async`` checks (a coroutine function, or a sync
   check's awaitable result) run as tasks on the monitor's event loop: the ``loop`` it
   was given, or one of its own on a thread started at the first async check. The round
   waits for them together, each at most its ``timeout`` from the round's start. A sync
   check still running then is ``"unresponsive"`` (and is not resubmitted while it runs:
   the agent stays ``"unresponsive"``); one not started never runs, also
   ``"unresponsive"``; an async one is cancelled, ``"unresponsive"``, and not
   resubmitted until its task has ended (at once, unless it resists the cancellation).
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
import operator
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future, wait
from types import TracebackType
from typing import Any, cast

from ferrule._native import Agent, ManualClock, QueueFull, Registry, SignalBus, _health_statuses
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
#: A batch of sync checks to run: ``(check, timeout, agents, their ids or None)``.
_BatchJob = tuple[Check, float, list[Agent], list[str] | None]


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


#: Seconds a batch of sync checks may go without finishing one before the checks after
#: the one running move to another worker.
_STALL = 0.005

_agent_id = operator.attrgetter("agent_id")
_health = operator.attrgetter("health")


class _Failed:
    """What ``_Batch.run`` records for a check that raised."""

    __slots__ = ()


_FAILED = _Failed()


def _is_awaitable(value: object) -> bool:
    return type(value) is not str and inspect.isawaitable(value)


def _status(value: object) -> str:
    """A check's result as a status: one of the three, else ``"unhealthy"``."""
    return value if isinstance(value, str) and value in CHECK_RESULTS else "unhealthy"


class _Chunk:
    """A run of one batch's agents that one worker checks in turn.

    ``out`` holds the results in ``agents`` order (a check that raised: ``_FAILED``);
    ``it`` is the iterator the worker takes agents from, which the round may drain:
    what it drains is moved to a new chunk (``stolen``) or never runs (``cancelled``).
    ``cut`` is ``len(out)`` when the round stopped waiting: results beyond it are late.
    """

    __slots__ = ("agents", "cancelled", "cut", "done", "it", "out", "runner", "seen", "stolen")

    def __init__(self, agents: list[Agent]) -> None:
        self.agents = agents
        self.it = iter(agents)
        self.out: list[object] = []
        self.runner: _Runner | None = None  # the worker that took it
        self.seen = 0  # len(out) at the round's last look
        self.stolen = 0
        self.cancelled: list[Agent] = []
        self.cut = 0
        self.done = False


class _Runner:
    """One pool task working on a batch; ``future`` is its pool future: done once the
    check it is running (if any) has returned."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: Future[object] | None = None


class _Batch:
    """The sync checks of one round that share a check and a timeout, run back to back
    on a pool worker: one hand-off per round instead of one per agent.

    The worker takes a chunk from ``work`` and calls the check on each of its agents
    (``list.extend(map(check, it))``: no per-agent bookkeeping); the round thread
    watches (``_Batch.watch``): when a claimed chunk shows no progress for ``_STALL``
    seconds, the agents after the one running are moved to a new chunk for another
    worker (up to ``max_workers``), so a slow or hanging check holds up only itself.
    At the deadline (``finish``) the round stops waiting: the check still running is
    ``"unresponsive"`` (its worker's future marks it in flight), chunks not taken are
    never run. ``lock`` orders ``finish`` against a worker ending a chunk, so a result
    either counts or is late, and a late awaitable is closed by the worker.
    """

    __slots__ = (
        "check",
        "chunks",
        "deadline",
        "done",
        "ids",
        "left",
        "lock",
        "over",
        "runners",
        "work",
    )

    def __init__(
        self, check: Check, deadline: float, agents: list[Agent], ids: list[str] | None
    ) -> None:
        first = _Chunk(agents)
        self.ids = ids  # of ``agents``, if known: the first chunk's, in order
        self.check = check
        self.deadline = deadline
        self.chunks = [first]
        self.work: deque[_Chunk] = deque([first])
        self.left = 1  # chunks not done
        self.over = False
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.runners: list[_Runner] = []

    def run(self, runner: _Runner) -> None:
        """On a pool worker: check the agents of each chunk taken from ``work``."""
        check, work = self.check, self.work
        while not self.over:
            try:
                chunk = work.popleft()
            except IndexError:
                return
            chunk.runner = runner
            out, it = chunk.out, chunk.it
            while True:
                try:
                    out.extend(map(check, it))
                    break
                except BaseException:  # like a pool task's exception: "unhealthy"
                    out.append(_FAILED)
            with self.lock:
                chunk.done = True
                self.left -= 1
                if self.left == 0:
                    self.done.set()
                late: list[object] = chunk.out[chunk.cut :] if self.over else []
            for value in late:
                if _is_awaitable(value):
                    _close_awaitable(value)

    def add_runner(self, pool: TaskPool) -> None:
        """Start one more worker on the batch (QueueFull or RuntimeError propagate)."""
        runner = _Runner()
        runner.future = pool.submit(self.run, runner)
        self.runners.append(runner)

    def steal_stalled(self, pool: TaskPool, max_workers: int) -> None:
        """Move the agents after a stalled check to a new chunk for another worker."""
        moved = False
        with self.lock:
            for chunk in list(self.chunks):
                n = len(chunk.out)
                stalled = chunk.runner is not None and not chunk.done and n == chunk.seen
                chunk.seen = n
                if not stalled:
                    continue
                tail = list(chunk.it)
                if tail:
                    chunk.stolen += len(tail)
                    new = _Chunk(tail)
                    self.chunks.append(new)
                    self.left += 1
                    self.work.appendleft(new)
                    moved = True
        if moved:
            busy = sum(1 for r in self.runners if r.future is not None and not r.future.done())
            if busy < max_workers:
                with contextlib.suppress(QueueFull, RuntimeError):
                    self.add_runner(pool)

    def finish(self) -> None:
        """Stop waiting: no chunk starts or goes on; results from now on are late."""
        with self.lock:
            self.over = True
            self.work.clear()
            for chunk in self.chunks:
                chunk.cancelled.extend(chunk.it)
                chunk.cut = len(chunk.out)
        for runner in self.runners:
            if runner.future is not None:
                runner.future.cancel()  # one not started never runs


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
        # The agents the last round saw, and the health it left each with (same order).
        # Replaced whole after each round, never mutated: readers take it without a lock.
        self._known: tuple[list[str], list[str]] = ([], [])
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

    def _run_checks(
        self,
        batches: list[_BatchJob],
        jobs: list[tuple[Agent, Check, float]],
        healths: list[str] | None = None,
    ) -> tuple[dict[str, str], list[int] | None]:
        """Run each sync ``(check, timeout, agents, ids)`` batch on the pool (``_Batch``;
        ``ids``, the agents' ids when the caller has them, or None)
        and each async ``(agent, check, timeout)`` job on the loop, at once, and wait for
        them; each check's deadline is its timeout after the round started them.

        Returns the statuses, and, when ``healths`` (the registry's, in ``ids`` order) was
        given for the one batch and its every check returned a plain status in time, the
        positions in ``ids`` whose status differs from it (else None)."""
        statuses: dict[str, str] = {}
        changed: list[int] | None = None
        calls: dict[str, _AsyncCall] = {}  # async checks and sync checks' awaitables
        deadlines: dict[str, float] = {}
        runner = self._runner
        inflight = self._inflight
        start = time.monotonic()
        for agent, check, timeout in jobs:
            aid = agent.agent_id
            try:
                calls[aid] = runner.submit(_invoke, check, agent)
            except RuntimeError:  # the loop is closed, or the interpreter exiting
                statuses[aid] = "unresponsive"
                continue
            deadlines[aid] = start + timeout
        pending: list[_Batch] = []
        for check, timeout, agents, ids in batches:
            batch = _Batch(check, start + timeout, agents, ids)
            try:
                batch.add_runner(self._get_pool())
            except QueueFull:  # no room this round: leave them as they are
                statuses.update(zip(map(_agent_id, agents), map(_health, agents), strict=True))
                continue
            except RuntimeError:  # the pool is shut down: the interpreter is exiting
                statuses.update(dict.fromkeys(map(_agent_id, agents), "unresponsive"))
                continue
            pending.append(batch)
        pending.sort(key=operator.attrgetter("deadline"))
        while pending:
            now = time.monotonic()
            for batch in [b for b in pending if b.done.is_set() or now >= b.deadline]:
                pending.remove(batch)
                batch.finish()
                if healths is not None and not statuses and not calls:
                    plain = self._plain_statuses(batch, healths)
                    if plain is not None:
                        statuses, changed = plain  # the only batch: nothing to merge
                        continue
                self._batch_statuses(batch, statuses, calls, deadlines)
            if not pending:
                break
            first = pending[0]
            if not first.done.wait(min(_STALL, max(0.0, first.deadline - now))):
                for batch in pending:
                    batch.steal_stalled(self._get_pool(), self._max_workers)
        # Async checks and the awaitables sync checks returned: shortest deadline first.
        groups: dict[float, list[str]] = {}
        for aid, deadline in deadlines.items():
            groups.setdefault(deadline, []).append(aid)
        for deadline in sorted(groups):
            group = groups[deadline]
            wait(
                [calls[aid].future for aid in group],
                timeout=max(0.0, deadline - time.monotonic()),
            )
            for aid in group:
                call = calls[aid]
                fut = call.future
                if not fut.done():
                    call.cancel()  # its future completes once the task has ended
                    inflight[aid] = fut
                    statuses[aid] = "unresponsive"
                elif fut.cancelled() or fut.exception() is not None:
                    statuses[aid] = "unhealthy"
                else:
                    statuses[aid] = _status(fut.result())
        return statuses, changed

    @staticmethod
    def _plain_statuses(
        batch: _Batch, healths: list[str]
    ) -> tuple[dict[str, str], list[int]] | None:
        """The usual round, decided in one native pass: if every agent of ``batch`` (in
        one chunk) was checked in time and each check returned one of the three statuses
        as a plain str, their statuses (a new dict) and the positions whose status differs
        from ``healths``; else None."""
        first = batch.chunks[0]
        if batch.ids is None or len(batch.chunks) != 1 or first.cut != len(batch.ids):
            return None
        return _health_statuses(batch.ids, first.out, healths)

    def _batch_statuses(
        self,
        batch: _Batch,
        statuses: dict[str, str],
        calls: dict[str, _AsyncCall],
        deadlines: dict[str, float],
    ) -> None:
        """The statuses of a finished batch; awaitables its checks returned are handed to
        the loop (``calls``) within the batch's deadline."""
        inflight = self._inflight
        for chunk in batch.chunks:
            cut = chunk.cut
            values = chunk.out[:cut]
            if chunk is batch.chunks[0] and batch.ids is not None:
                ids = batch.ids[:cut]
            else:
                ids = list(map(_agent_id, chunk.agents[:cut]))
            # All three statuses, as plain str: the usual case, decided without a loop.
            if set(map(type, values)) <= {str} and CHECK_RESULTS.issuperset(values):
                statuses.update(zip(ids, cast("list[str]", values), strict=True))
            else:
                for aid, value in zip(ids, values, strict=True):
                    if value is _FAILED:
                        statuses[aid] = "unhealthy"
                    elif _is_awaitable(value):
                        try:
                            calls[aid] = self._runner.submit(_await, value)
                        except BaseException:  # refused: the awaitable is closed, and fails
                            _close_awaitable(value)
                            statuses[aid] = "unhealthy"
                            continue
                        deadlines[aid] = batch.deadline
                    else:
                        statuses[aid] = _status(value)
            ran = len(chunk.agents) - chunk.stolen - len(chunk.cancelled)
            if ran > cut and chunk.runner is not None and chunk.runner.future is not None:
                # Still running: "unresponsive", and not resubmitted while it runs.
                aid = chunk.agents[cut].agent_id
                statuses[aid] = "unresponsive"
                inflight[aid] = chunk.runner.future
            for agent in chunk.cancelled:
                statuses[agent.agent_id] = "unresponsive"

    def _round(self) -> dict[str, str]:
        started = self._now()
        registry = self._registry
        # Taken before find(): a watch made after it, for an agent registered after it,
        # is not mistaken for one whose agent vanished.
        with self._lock:
            watches = dict(self._watches)
        registry.expire()
        agents, ids, healths = registry._health_round()
        if watches:
            live = set(ids)
            vanished = [aid for aid in watches if aid not in live]
        else:
            vanished = []
        if vanished:
            with self._lock:
                for aid in vanished:
                    if self._watches.get(aid) is watches[aid]:
                        del self._watches[aid]
        # Only rounds touch _inflight, and they hold the round lock: no other lock needed.
        inflight = self._inflight
        for aid in [aid for aid, fut in inflight.items() if fut.done()]:
            del inflight[aid]  # returned since: checked again below, or reclaimed if gone
        statuses: dict[str, str] = {}
        changed: list[int] | None = None  # where statuses differ from healths, if known
        batches: dict[tuple[int, float], _BatchJob] = {}
        jobs: list[tuple[Agent, Check, float]] = []
        default, default_async, timeout = self._check, self._check_async, self._timeout
        plain = not watches and not inflight
        if plain:
            # Every agent gets the monitor's check (or keeps its health).
            if default is None:
                statuses = dict(zip(ids, healths, strict=True))
                changed = []
            elif default_async:
                jobs = [(agent, default, timeout) for agent in agents]
            elif agents:
                batches[id(default), timeout] = (default, timeout, agents, ids)
        else:
            slack = self._interval / 2
            for agent in agents:
                aid = agent.agent_id
                w = watches.get(aid)
                if w is None:
                    if default is None:
                        statuses[aid] = agent.health
                        continue
                    check, is_async, t = default, default_async, timeout
                else:
                    if (
                        w.interval is not None
                        and w.last is not None
                        and started < w.last + w.interval - slack
                    ):
                        statuses[aid] = agent.health  # not due: left as it is
                        continue
                    if aid not in inflight:
                        w.last = started  # submitted now (a check still running is not)
                    check, is_async = w.check, w.is_async
                    t = timeout if w.timeout is None else w.timeout
                if aid in inflight:
                    statuses[aid] = "unresponsive"  # its last check is still running
                elif is_async:
                    jobs.append((agent, check, t))
                else:
                    # Checks are grouped by identity (a check need not be hashable).
                    batches.setdefault((id(check), t), (check, t, [], None))[2].append(agent)
        if batches or jobs:
            got, changed = self._run_checks(
                list(batches.values()), jobs, healths if plain and not jobs else None
            )
            if statuses:
                statuses.update(got)
            else:
                statuses = got  # ours: no copy of a table of every agent

        # statuses has every live agent: those of ids, each once.
        if changed is None:
            pairs = enumerate(zip(ids, healths, strict=True))
            changed = [i for i, (aid, h) in pairs if statuses[aid] != h]
        transitions: list[tuple[str, str, str]] = []
        known = healths  # the health each agent is left with (ours: not the caller's)
        if changed:
            known = list(healths)
            for i in changed:
                aid, previous = ids[i], healths[i]
                status = statuses[aid]
                try:
                    registry.update(aid, health=status)
                except KeyError:
                    continue  # vanished meanwhile: the next round reports it "gone"
                known[i] = status
                transitions.append((aid, status, previous))
        result = statuses
        known_ids, known_health = self._known
        if ids != known_ids:  # fast when equal: the same str objects, in order
            for aid, previous in zip(known_ids, known_health, strict=True):
                if aid not in statuses:
                    transitions.append((aid, "gone", previous))
                    result[aid] = "gone"
        self._known = (ids, known)
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
