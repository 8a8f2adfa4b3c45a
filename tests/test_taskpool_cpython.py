"""CPython's own ``concurrent.futures`` executor tests, run against ``ferrule.TaskPool``.

The tests are vendored from CPython 3.13 in ``tests/cpython/concurrent_futures.py`` (PSF
license; what was adapted is listed in its header). Here each ThreadPool-flavoured test
class is rebuilt with a TaskPool in place of ``ThreadPoolExecutor``: once with the
default ``max_queue``, and the map and cancellation tests once more with ``max_queue=1``
(where ``map`` must stay lazy and cancellation must reach a small queue). The tests
excluded, and why, are in ``EXCLUDED`` and ``EXCLUDED_SMALL_QUEUE``; they are reported
as skipped. Without the stdlib ``test`` package the pieces of ``test.support`` they use
come from ``tests/cpython/support.py``.
"""

from __future__ import annotations

import unittest
from typing import Any

from ferrule import TaskPool

from tests.cpython import concurrent_futures as cpy

# The tests marked with the regrtest "walltime" resource (test_map_timeout sleeps 6 s,
# test_first_exception 3 s) run too: outside regrtest `requires_resource` lets them.

EXCLUDED: dict[str, str] = {
    "test_hang_global_shutdown_lock": (
        "tests the stdlib's own _global_shutdown_lock after fork (bpo-45021) with "
        "ThreadPoolExecutor and ProcessPoolExecutor themselves"
    ),
}

# max_queue=1: only the map and cancellation tests run; these need a queue of many tasks.
EXCLUDED_SMALL_QUEUE: dict[str, str] = {
    "test_map_submits_without_iteration": (
        "TaskPool.map submits only max_workers + max_queue tasks before iteration "
        "(documented difference: lazy map); covered with the default max_queue"
    ),
    "test_cancel_futures": (
        "expects more than 20 of 50 submitted tasks still queued at shutdown; a queue of "
        "1 holds at most max_queue beyond the workers (the 50 submits wait for room)"
    ),
}


def pool_type(max_queue: int | None) -> type[TaskPool]:
    """A TaskPool class taking ThreadPoolExecutor's constructor arguments."""

    class Pool(TaskPool):
        def __init__(self, max_workers: int | None = None, **kwargs: Any) -> None:
            if max_queue is not None:
                kwargs.setdefault("max_queue", max_queue)
            super().__init__(max_workers, **kwargs)

    Pool.__name__ = Pool.__qualname__ = "TaskPool"
    return Pool


def build(
    name: str, mixins: tuple[type, ...], max_queue: int | None, only: tuple[str, ...] = ()
) -> type[unittest.TestCase]:
    excluded = dict(EXCLUDED)
    if max_queue is not None:
        excluded.update(EXCLUDED_SMALL_QUEUE)
    ns: dict[str, Any] = {"executor_type": pool_type(max_queue), "__module__": __name__}
    cls = type(name, (*mixins, cpy.ExecutorMixin, cpy.BaseTestCase), ns)
    for attr in dir(cls):
        if not attr.startswith("test_"):
            continue
        if attr in excluded:
            setattr(cls, attr, unittest.skip(excluded[attr])(getattr(cls, attr)))
        elif only and not any(key in attr for key in only):
            setattr(cls, attr, None)  # not a test of this variant (not collected)
    return cls


TestExecutor = build("TestExecutor", (cpy.ThreadPoolExecutorTests, cpy.ExecutorTest), None)
TestWait = build("TestWait", (cpy.ThreadPoolWaitTests, cpy.WaitTests), None)
TestAsCompleted = build("TestAsCompleted", (cpy.AsCompletedTests,), None)
TestShutdown = build("TestShutdown", (cpy.ThreadPoolShutdownTests, cpy.ExecutorShutdownTest), None)
TestInitializer = build("TestInitializer", (cpy.InitializerMixin,), None)
TestFailingInitializer = build("TestFailingInitializer", (cpy.FailingInitializerMixin,), None)

# max_queue=1: the map and cancellation tests.
SMALL = ("map", "cancel", "shutdown_race", "free_reference", "gh94440")
TestExecutorSmallQueue = build(
    "TestExecutorSmallQueue", (cpy.ThreadPoolExecutorTests, cpy.ExecutorTest), 1, SMALL
)
TestShutdownSmallQueue = build(
    "TestShutdownSmallQueue",
    (cpy.ThreadPoolShutdownTests, cpy.ExecutorShutdownTest),
    1,
    SMALL,
)
