"""``TaskPool``: a ``concurrent.futures.Executor`` with a bounded queue and worker limit.

Tasks go through a ``WorkQueue`` of ``max_queue`` items to at most ``max_workers``
threads. The counters live in a native ``TaskCounters`` (atomics, no lock on the submit
or worker path); the worker loop is native too (``_run_worker``): it sets each task's
result or exception on its future and never dies of a task's exception. Threads start
on demand: a submit starts one when the tasks outstanding (submitted, not yet finished
or cancelled) exceed the threads there are, so a task never waits for a busy worker
while fewer than ``max_workers`` threads exist.

An ``initializer`` runs once in each worker thread before it takes a task. If one
raises, the pool breaks as ``ThreadPoolExecutor`` does: the exception is logged on the
``concurrent.futures`` logger, the queue is closed, the tasks still queued fail with
``BrokenThreadPool`` (counted as cancelled: they never started) and every later submit
raises it. Closing the queue is what makes this race-free without a lock on submit: a
submit that finds the queue closed reads the broken flag, set before the close.

Shutdown closes the queue: later submits fail, a submit blocked on a full queue wakes
with ``RuntimeError``, and each worker drains what is left and exits. At interpreter
exit every live pool's queue is closed (before non-daemon threads are joined), so a
forgotten pool does not hang the exit; a pool that is garbage-collected closes its queue
too.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from concurrent.futures.thread import BrokenThreadPool
from functools import partial
from typing import Any, ParamSpec, TypeVar

from ferrule._native import (
    QueueClosed,
    QueueEmpty,
    QueueFull,
    TaskCounters,
    TaskPoolStats,
    WorkQueue,
    _run_worker,
)

__all__ = ["TaskPool"]

P = ParamSpec("P")
T = TypeVar("T")

_Task = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]

_BROKEN = "A thread initializer failed, the thread pool is not usable anymore"
# ThreadPoolExecutor's logger: a drop-in pool reports a failed initializer where it does.
_log = logging.getLogger("concurrent.futures")

_names = itertools.count()
_live: weakref.WeakSet[TaskPool] = weakref.WeakSet()
_exiting = False


def _close_all() -> None:
    global _exiting
    _exiting = True
    for pool in list(_live):
        pool._queue.close()


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
    queue.close()
    while True:
        try:
            fut = queue.get_nowait()[0]
        except (QueueEmpty, QueueClosed):
            return
        if fut.set_running_or_notify_cancel():
            fut.set_exception(BrokenThreadPool(_BROKEN))
        counters.cancel()


class TaskPool(Executor):
    """A ``concurrent.futures.Executor`` with a worker limit and a queue limit.

    At most ``max_workers`` threads run tasks; at most ``max_queue`` tasks wait. When the
    queue is full, ``submit`` waits for room (``overflow="block"``, GIL released,
    interruptible) or raises :class:`ferrule.QueueFull` (``overflow="reject"``). A task's
    exception is set on its ``Future`` and counted as failed; it never ends a worker.
    ``submit`` after ``shutdown`` raises ``RuntimeError`` like the stdlib executors.
    ``stats()`` reads lock-free counters: ``started == completed + failed + active``.

    As with ``ThreadPoolExecutor``, ``initializer(*initargs)`` runs once in each worker
    thread before it takes a task; if it raises, the exception is logged (logger
    ``concurrent.futures``), the pool is broken: queued tasks fail and later submits
    raise ``concurrent.futures.thread.BrokenThreadPool``. Worker threads are named
    ``f"{thread_name_prefix}_{n}"``; the prefix defaults to the pool's ``name``.

    >>> with TaskPool(4, max_queue=100, name="resize") as pool:
    ...     futures = [pool.submit(pow, n, 2) for n in range(10)]
    ...     [f.result() for f in futures][:4]
    [0, 1, 4, 9]
    >>> pool.stats().completed
    10
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
        max_workers: int,
        *,
        max_queue: int = 1024,
        overflow: str = "block",
        name: str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        thread_name_prefix: str = "",
    ) -> None:
        if not isinstance(max_workers, int) or isinstance(max_workers, bool):
            raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__!r}")
        if max_workers < 1:
            raise ValueError("max_workers must be >= 1")
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
        self._overflow = overflow
        self._name = name if name is not None else f"TaskPool-{next(_names)}"
        # "" means the default, as for ThreadPoolExecutor.
        self._prefix = thread_name_prefix or self._name
        self._initializer = initializer
        self._initargs = initargs
        # Set (never cleared) by the first failing initializer, before it closes the queue.
        self._broken: list[str] = []
        self._queue: WorkQueue[_Task] = WorkQueue(max_queue)
        self._put = self._queue.put if overflow == "block" else self._queue.put_nowait
        self._counters = TaskCounters()
        self._threads: list[threading.Thread] = []
        self._spawn_lock = threading.Lock()
        _live.add(self)
        weakref.finalize(self, self._queue.close)

    @property
    def max_workers(self) -> int:
        return self._max_workers

    @property
    def name(self) -> str:
        return self._name

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; returns its ``Future``."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__!r}")
        if self._broken:
            raise BrokenThreadPool(self._broken[0])
        fut: Future[T] = Future()
        counters = self._counters
        counters.submit()
        try:
            self._put((fut, fn, args, kwargs))
        except QueueFull:
            counters.withdraw(True)
            raise
        except QueueClosed:
            counters.withdraw(False)
            if self._broken:
                raise BrokenThreadPool(self._broken[0]) from None
            if _exiting:
                raise RuntimeError(
                    "cannot schedule new futures after interpreter shutdown"
                ) from None
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        except BaseException:
            counters.withdraw(False)
            raise
        if len(self._threads) < self._max_workers and counters.outstanding > len(self._threads):
            self._spawn()
        return fut

    def _spawn(self) -> None:
        # No shutdown check here: a task queued just before shutdown() still needs a
        # worker, and a worker started after close drains the queue and exits.
        with self._spawn_lock:
            n = len(self._threads)
            if n >= self._max_workers or self._counters.outstanding <= n:
                return
            q, c = self._queue, self._counters
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
        self._queue.close()
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
        """Counters read from atomics; ``queued`` is the queue's length now."""
        return self._counters.snapshot(self._queue.qsize())

    def __repr__(self) -> str:
        return (
            f"TaskPool(max_workers={self._max_workers}, max_queue={self._queue.maxsize}, "
            f"overflow={self._overflow!r}, name={self._name!r})"
        )
