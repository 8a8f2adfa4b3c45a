"""``TaskPool``: a ``concurrent.futures.Executor`` with a bounded queue and worker limit.

Tasks go through a ``WorkQueue`` of ``max_queue`` items to at most ``max_workers``
threads. The counters live in a native ``TaskCounters`` (atomics, no lock on the submit
or worker path); the worker loop is native too (``_run_worker``): it sets each task's
result or exception on its future and never dies of a task's exception. Threads start
on demand: a submit starts one when the tasks outstanding (submitted, not yet finished
or cancelled) exceed the threads there are, so a task never waits for a busy worker
while fewer than ``max_workers`` threads exist.

Shutdown closes the queue: later submits fail, a submit blocked on a full queue wakes
with ``RuntimeError``, and each worker drains what is left and exits. At interpreter
exit every live pool's queue is closed (before non-daemon threads are joined), so a
forgotten pool does not hang the exit; a pool that is garbage-collected closes its queue
too.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
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


class TaskPool(Executor):
    """A ``concurrent.futures.Executor`` with a worker limit and a queue limit.

    At most ``max_workers`` threads run tasks; at most ``max_queue`` tasks wait. When the
    queue is full, ``submit`` waits for room (``overflow="block"``, GIL released,
    interruptible) or raises :class:`ferrule.QueueFull` (``overflow="reject"``). A task's
    exception is set on its ``Future`` and counted as failed; it never ends a worker.
    ``submit`` after ``shutdown`` raises ``RuntimeError`` like the stdlib executors.
    ``stats()`` reads lock-free counters: ``started == completed + failed + active``.

    >>> with TaskPool(4, max_queue=100, name="resize") as pool:
    ...     futures = [pool.submit(pow, n, 2) for n in range(10)]
    ...     [f.result() for f in futures][:4]
    [0, 1, 4, 9]
    >>> pool.stats().completed
    10
    """

    def __init__(
        self,
        max_workers: int,
        *,
        max_queue: int = 1024,
        overflow: str = "block",
        name: str | None = None,
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
        self._max_workers = max_workers
        self._overflow = overflow
        self._name = name if name is not None else f"TaskPool-{next(_names)}"
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
            t = threading.Thread(
                target=_run_worker, args=(self._queue, self._counters), name=f"{self._name}_{n}"
            )
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
