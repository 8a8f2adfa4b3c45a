"""``TaskPool``: a ``concurrent.futures.Executor`` with a bounded queue and worker limit.

Admission: a pool holds at most ``max_workers + max_queue`` tasks *outstanding*
(queued, on their way to a worker, or running). The native ``TaskCounters`` admits a
submit with one CAS on that count (no lock on submit; exact under threads, also on
free-threaded builds) and gives the room back when the task finishes or is cancelled,
before its future completes; a ``reject`` pool refuses with ``QueueFull`` when there is
none, a ``block`` pool waits for it (detached, interruptible). The tasks go through a
``WorkQueue`` sized to the same limit, which therefore always has room for an admitted
task (an admitted task is queued after its admission and leaves the queue before its
release). So a burst into idle workers is taken whole, up to ``max_workers +
max_queue``, and ``max_queue`` bounds the tasks waiting beyond the idle workers.

The worker loop is native too (``_run_worker``): it sets each task's result or
exception on its future and never dies of a task's exception. Threads start on demand:
a submit starts one when the outstanding tasks exceed the threads there are, so a task
never waits for a busy worker while fewer than ``max_workers`` threads exist.

``map`` keeps at most ``max_workers + max_queue`` of its tasks in flight: it submits
that many at once (without waiting for room) and one more as each result is taken. It
waits for room only when none of its own tasks is in flight, and never past its
``timeout``, so a long or infinite iterable neither deadlocks on a small queue nor
floods it. Its iterator cancels what it has in flight when it is closed or collected.

An ``initializer`` runs once in each worker thread before it takes a task. If one
raises, the pool breaks as ``ThreadPoolExecutor`` does: the exception is logged on the
``concurrent.futures`` logger, the queue is closed, the tasks still queued fail with
``BrokenThreadPool`` (counted as cancelled: they never started) and every later submit
raises it. Closing the queue is what makes this race-free without a lock on submit: a
submit that finds the queue closed reads the broken flag, set before the close.

Shutdown closes the queue, then the counters: later submits fail, a submit waiting for
room wakes with ``RuntimeError``, and each worker drains what is left and exits. At
interpreter exit every live pool is closed that way (before non-daemon threads are
joined), so a forgotten pool does not hang the exit; a pool that is garbage-collected
is closed too.

With ``bus=``, the native counters publish ``taskpool.<name>.saturated``: ``begin`` when
an admission finds no room (every worker busy and the queue full), ``end`` when a task's
end leaves at most ``max_workers + max_queue // 2`` tasks outstanding (see
``ferrule.events``). The pool's counters hold the bus (and take part in garbage
collection); the workers and the finalizer get a view of them (``_view()``) that refers
to the bus only weakly, so a bus that refers back to the pool does not keep it alive.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.thread import BrokenThreadPool
from functools import partial
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ferrule._native import (
    QueueClosed,
    QueueEmpty,
    QueueFull,
    TaskCounters,
    TaskPoolStats,
    WorkQueue,
    _run_worker,
)

if TYPE_CHECKING:
    from ferrule._native import _Bus

__all__ = ["TaskPool"]

P = ParamSpec("P")
T = TypeVar("T")

_Task = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]

_BROKEN = "A thread initializer failed, the thread pool is not usable anymore"
# TaskCounters.admit's answers.
_ADMITTED, _NO_ROOM, _CLOSED = 0, 1, 2
# The largest WorkQueue (and admission limit) there is.
_MAX_LIMIT = 2**63 - 1
_cpu_count: Callable[[], int | None] = getattr(os, "process_cpu_count", os.cpu_count)
# ThreadPoolExecutor's logger: a drop-in pool reports a failed initializer where it does.
_log = logging.getLogger("concurrent.futures")

_names = itertools.count()
_live: weakref.WeakSet[TaskPool] = weakref.WeakSet()
_exiting = False


def _close(queue: WorkQueue[_Task], counters: TaskCounters) -> None:
    """Closes a pool: its queue first (so a submit admitted from now on finds it closed),
    then its counters (which wakes the submits waiting for room)."""
    queue.close()
    counters.close()


def _close_all() -> None:
    global _exiting
    _exiting = True
    for pool in list(_live):
        _close(pool._queue, pool._counters)


# Runs before threading joins non-daemon threads at exit (what ThreadPoolExecutor uses).
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_close_all)


def _worker(
    queue: WorkQueue[_Task], counters: TaskCounters, setup: list[Callable[[], bool]]
) -> None:
    """A worker thread with an initializer: runs it, then the native loop. ``setup`` is
    this thread's own one-item list, emptied here, so the thread does not keep the
    initializer and its arguments (which may refer to the pool) alive while it waits."""
    if setup.pop()():
        _run_worker(queue, counters)


def _initialize(
    initializer: Callable[..., object], initargs: tuple[Any, ...], fail: Callable[[], None]
) -> bool:
    try:
        initializer(*initargs)
    except BaseException:
        _log.critical("Exception in initializer:", exc_info=True)
        fail()
        return False
    return True


def _break(queue: WorkQueue[_Task], counters: TaskCounters, broken: list[str]) -> None:
    """An initializer failed: mark the pool broken, then close its queue and fail what
    is still queued (a running task, or one another worker took first, still runs)."""
    broken.append(_BROKEN)
    _close(queue, counters)
    while True:
        try:
            fut = queue.get_nowait()[0]
        except (QueueEmpty, QueueClosed):
            return
        if fut.set_running_or_notify_cancel():
            fut.set_exception(BrokenThreadPool(_BROKEN))
        counters.cancel()


def _result_or_cancel(fut: Future[T], end_time: float | None) -> T:
    """``fut``'s result by ``end_time`` (monotonic); cancelled if that raises (a timeout
    or an interruption). Keeps no reference to ``fut`` once it returns."""
    try:
        try:
            if end_time is None:
                return fut.result()
            return fut.result(end_time - time.monotonic())
        finally:
            fut.cancel()
    finally:
        del fut


def _map_results(
    pool_ref: weakref.ref[TaskPool],
    fn: Callable[..., T],
    args: Iterator[tuple[Any, ...]],
    fs: collections.deque[Future[T]],
    held: tuple[Any, ...] | None,
    window: int,
    end_time: float | None,
) -> Iterator[T]:
    """``TaskPool.map``'s iterator: yields the results in order, submitting the next
    arguments (``held`` first: the ones refused room at the call) as results are taken,
    at most ``window`` in flight. Holds the pool weakly, like ``ThreadPoolExecutor``'s,
    so an iterator left unread does not keep it alive. An exception from ``args`` or
    from a submit is raised at its position, after the results before it; closing or
    collecting the iterator cancels what it has in flight."""
    error: BaseException | None = None
    try:
        while True:
            # Top up without waiting for room; wait (up to the deadline) only when none
            # of this map's tasks is in flight, so a full pool never deadlocks it.
            while error is None and len(fs) < window:
                if held is None:
                    try:
                        held = next(args)
                    except StopIteration:
                        break
                    except BaseException as e:
                        error = e
                        break
                pool = pool_ref()
                if pool is None:
                    error = RuntimeError("cannot schedule new futures after shutdown")
                    break
                wait: float | None = 0.0
                if not fs:
                    wait = None if end_time is None else max(0.0, end_time - time.monotonic())
                try:
                    fut = pool._submit(fn, held, {}, wait)
                except BaseException as e:
                    error = e
                    break
                finally:
                    del pool
                if fut is None:
                    if fs:
                        break
                    raise FuturesTimeout()
                fs.append(fut)
                del fut
                held = None
            if not fs:
                if error is not None:
                    raise error
                return
            yield _result_or_cancel(fs.popleft(), end_time)
    finally:
        for f in fs:
            f.cancel()
        error = None


def _default_workers() -> int:
    """ThreadPoolExecutor's default on this Python: min(32, CPUs + 4)."""
    return min(32, (_cpu_count() or 1) + 4)


class TaskPool(Executor):
    """A ``concurrent.futures.Executor`` with a worker limit and a queue limit, usable
    wherever a ``ThreadPoolExecutor`` is.

    At most ``max_workers`` threads run tasks (``None``: ``ThreadPoolExecutor``'s default,
    ``min(32, os.cpu_count() + 4)``). At most ``max_workers + max_queue`` tasks are
    outstanding (queued or running): a submit while a worker is idle goes to that worker,
    so an idle pool takes a burst of ``max_workers + max_queue`` tasks, and at most
    ``max_queue`` wait beyond the idle workers. When the pool is full, ``submit`` waits
    for room (``overflow="block"``, GIL released, interruptible) or raises
    :class:`ferrule.QueueFull` (``overflow="reject"``). A task's exception is set on its
    ``Future`` and counted as failed; it never ends a worker. ``submit`` after
    ``shutdown`` raises ``RuntimeError`` like the stdlib executors. ``stats()`` reads
    lock-free counters: ``started == completed + failed + active``.

    ``map`` differs from ``ThreadPoolExecutor.map`` in one way: it does not submit the
    whole iterable at once but keeps at most ``max_workers + max_queue`` tasks in flight
    (fewer with ``buffersize``), submitting more as results are taken, so it works on an
    infinite iterable and never deadlocks on a small queue.

    As with ``ThreadPoolExecutor``, ``initializer(*initargs)`` runs once in each worker
    thread before it takes a task; if it raises, the exception is logged (logger
    ``concurrent.futures``), the pool is broken: queued tasks fail and later submits
    raise ``concurrent.futures.thread.BrokenThreadPool``. Worker threads are named
    ``f"{thread_name_prefix}_{n}"``; the prefix defaults to the pool's ``name``.

    With ``bus`` (a :class:`ferrule.SignalBus`, or anything with ``publish(type,
    data)``), saturation is published as ``taskpool.<name>.saturated`` with data
    ``{"state": "begin" | "end", "rejected", "active", "queued"}``: it begins when a
    submit finds every worker busy and the queue full (it waits or is refused) and ends
    once at most ``max_workers + max_queue // 2`` tasks are outstanding. An exception
    from ``publish`` goes to ``sys.unraisablehook``. See ``ferrule.events``.

    >>> with TaskPool(4, max_queue=100, name="resize") as pool:
    ...     futures = [pool.submit(pow, n, 2) for n in range(10)]
    ...     [f.result() for f in futures][:4]
    [0, 1, 4, 9]
    >>> pool.stats().completed
    10
    >>> import itertools
    >>> with TaskPool(2, max_queue=1) as pool:  # lazy: fine on an endless iterable
    ...     list(itertools.islice(pool.map(abs, itertools.count(-3)), 5))
    [3, 2, 1, 0, 1]
    >>> import threading
    >>> local = threading.local()
    >>> def setup(base: int) -> None:
    ...     local.base = base
    >>> with TaskPool(2, initializer=setup, initargs=(100,), thread_name_prefix="io") as pool:
    ...     pool.submit(lambda: local.base + 1).result()
    ...     pool.submit(lambda: threading.current_thread().name).result()
    101
    'io_0'
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        max_queue: int = 1024,
        overflow: str = "block",
        name: str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        thread_name_prefix: str = "",
        bus: _Bus | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = _default_workers()
        if not isinstance(max_workers, int) or isinstance(max_workers, bool):
            raise TypeError(
                f"max_workers must be an int or None, not {type(max_workers).__name__!r}"
            )
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if not isinstance(max_queue, int) or isinstance(max_queue, bool):
            raise TypeError(f"max_queue must be an int, not {type(max_queue).__name__!r}")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if not isinstance(overflow, str):
            raise TypeError(f"overflow must be a str, not {type(overflow).__name__!r}")
        if overflow not in ("block", "reject"):
            raise ValueError(f"overflow must be 'block' or 'reject', not {overflow!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(
                f"initializer must be callable or None, not {type(initializer).__name__!r}"
            )
        try:
            initargs = tuple(initargs)
        except TypeError:
            raise TypeError(
                f"initargs must be an iterable, not {type(initargs).__name__!r}"
            ) from None
        if not isinstance(thread_name_prefix, str):
            raise TypeError(
                f"thread_name_prefix must be a str, not {type(thread_name_prefix).__name__!r}"
            )
        self._max_workers = max_workers
        self._max_queue = max_queue
        self._overflow = overflow
        # How long submit waits for room: forever, or not at all.
        self._wait: float | None = None if overflow == "block" else 0.0
        self._name = name if name is not None else f"TaskPool-{next(_names)}"
        # "" means the default, as for ThreadPoolExecutor.
        self._prefix = thread_name_prefix or self._name
        self._initializer = initializer
        self._initargs = initargs
        # Set (never cleared) by the first failing initializer, before it closes the queue.
        self._broken: list[str] = []
        # Admission by the outstanding count; the queue, sized alike, always has room for
        # an admitted task (module docs).
        self._limit = min(max_workers + max_queue, _MAX_LIMIT)
        self._queue: WorkQueue[_Task] = WorkQueue(self._limit)
        self._counters = TaskCounters(
            self._limit,
            name=self._name,
            bus=bus,
            low_water=min(max_workers + max_queue // 2, self._limit),
        )
        self._threads: list[threading.Thread] = []
        self._spawn_lock = threading.Lock()
        # What the workers and the finalizer hold: the same counters, the bus held weakly.
        self._view = self._counters._view()
        _live.add(self)
        weakref.finalize(self, _close, self._queue, self._view)

    @property
    def max_workers(self) -> int:
        return self._max_workers

    @property
    def max_queue(self) -> int:
        return self._max_queue

    @property
    def name(self) -> str:
        return self._name

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; returns its ``Future``."""
        fut = self._submit(fn, args, kwargs, self._wait)
        if fut is None:
            self._counters.reject()
            raise QueueFull("queue is full")
        return fut

    def _submit(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        wait: float | None,
    ) -> Future[T] | None:
        """Admit and queue one task, waiting up to ``wait`` seconds for room (``None``:
        no limit); None (nothing counted) if there was none."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__!r}")
        if self._broken:
            raise BrokenThreadPool(self._broken[0])
        counters = self._counters
        admitted = counters.admit(wait)
        if admitted != _ADMITTED:
            if admitted == _NO_ROOM:
                return None
            raise self._closed_error()
        fut: Future[T] = Future()
        try:
            self._queue.put_nowait((fut, fn, args, kwargs))
        except QueueClosed:
            counters.withdraw()
            raise self._closed_error() from None
        except BaseException:
            counters.withdraw()
            raise
        if len(self._threads) < self._max_workers and counters.outstanding > len(self._threads):
            self._spawn()
        return fut

    def _closed_error(self) -> BaseException:
        if self._broken:
            return BrokenThreadPool(self._broken[0])
        if _exiting:
            return RuntimeError("cannot schedule new futures after interpreter shutdown")
        return RuntimeError("cannot schedule new futures after shutdown")

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """``fn`` over the zipped ``iterables``, results in order, like
        ``Executor.map``: ``timeout`` (seconds from this call) bounds the wait for every
        result (``TimeoutError``); ``chunksize`` is accepted and ignored, as by
        ``ThreadPoolExecutor``; an exception is raised when its position is reached, and
        closing the iterator early cancels the tasks still pending.

        Unlike ``ThreadPoolExecutor.map``, which submits everything at once, at most
        ``max_workers + max_queue`` tasks (or ``buffersize``) of this map are in flight:
        that many are submitted now, if there is room, and one more as each result is
        taken. So ``map`` works on an endless iterable, never blocks on a full pool
        while its own results could be taken, and an exception from the iterable beyond
        that first window surfaces at its position instead of at the call.

        >>> with TaskPool(2, max_queue=1) as pool:
        ...     list(pool.map(pow, [2, 3, 4], [2, 2, 2]))
        [4, 9, 16]
        """
        if buffersize is not None:
            if not isinstance(buffersize, int) or isinstance(buffersize, bool):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        end_time = None if timeout is None else timeout + time.monotonic()
        window = self._limit if buffersize is None else min(buffersize, self._limit)
        args = zip(*iterables, strict=False)
        fs: collections.deque[Future[T]] = collections.deque()
        held: tuple[Any, ...] | None = None
        try:
            for held in itertools.islice(args, window):
                fut = self._submit(fn, held, {}, 0.0)
                if fut is None:
                    break
                fs.append(fut)
            else:
                held = None
        except BaseException:
            for f in fs:
                f.cancel()
            raise
        return _map_results(weakref.ref(self), fn, args, fs, held, window, end_time)

    def _spawn(self) -> None:
        # No shutdown check here: a task queued just before shutdown() still needs a
        # worker, and a worker started after close drains the queue and exits.
        with self._spawn_lock:
            n = len(self._threads)
            if n >= self._max_workers or self._counters.outstanding <= n:
                return
            q, c = self._queue, self._view
            if self._initializer is None:
                target: Callable[..., None] = _run_worker
                args: tuple[Any, ...] = (q, c)
            else:
                fail = partial(_break, q, c, self._broken)
                setup = partial(_initialize, self._initializer, self._initargs, fail)
                target, args = _worker, (q, c, [setup])
            t = threading.Thread(target=target, args=args, name=f"{self._prefix}_{n}")
            t.start()
            self._threads.append(t)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks (a blocked ``submit`` wakes with ``RuntimeError``); with
        ``cancel_futures`` cancel what is still queued; with ``wait`` join the workers
        once they have run everything else."""
        _close(self._queue, self._counters)
        if cancel_futures:
            while True:
                try:
                    fut = self._queue.get_nowait()[0]
                except (QueueEmpty, QueueClosed):
                    break
                fut.cancel()
                self._counters.cancel()
        if wait:
            me = threading.current_thread()
            for t in list(self._threads):
                if t is not me:
                    t.join()

    def stats(self) -> TaskPoolStats:
        """Counters read from atomics; ``queued`` is the queue's length now: tasks not
        yet taken by a worker, at most ``max_queue`` beyond the idle workers."""
        return self._counters.snapshot(self._queue.qsize())

    def __repr__(self) -> str:
        return (
            f"TaskPool(max_workers={self._max_workers}, max_queue={self._max_queue}, "
            f"overflow={self._overflow!r}, name={self._name!r})"
        )
