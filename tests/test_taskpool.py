"""TaskPool: an Executor with a bounded queue, a worker limit and lock-free stats."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import gc
import itertools
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

import pytest
from ferrule import QueueFull, TaskPool

BROKEN = "^A thread initializer failed, the thread pool is not usable anymore$"


def wait_until(cond: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.001)


@pytest.mark.smoke
def test_is_an_executor_and_runs_tasks() -> None:
    with TaskPool(2, name="unit") as pool:
        assert isinstance(pool, cf.Executor)
        assert pool.submit(pow, 2, 10).result() == 1024
        assert pool.submit(lambda *, x: x * 2, x=21).result() == 42
        assert list(pool.map(abs, [-1, -2, 3])) == [1, 2, 3]
        assert pool.max_workers == 2 and pool.name == "unit"
        assert (
            repr(pool) == "TaskPool(max_workers=2, max_queue=1024, overflow='block', name='unit')"
        )
        names = {pool.submit(lambda: threading.current_thread().name).result() for _ in range(5)}
        assert all(n.startswith("unit_") for n in names)
    s = pool.stats()
    assert (s.submitted, s.started, s.completed, s.failed, s.active, s.queued) == (
        10,
        10,
        10,
        0,
        0,
        0,
    )
    assert repr(s).startswith("TaskPoolStats(submitted=10, started=10, completed=10, failed=0")


def test_failures_go_on_the_future_and_never_kill_a_worker() -> None:
    with TaskPool(1) as pool:

        def boom(n: int) -> None:
            raise ValueError(f"boom {n}")

        futs = [pool.submit(boom, n) for n in range(5)]
        for n, f in enumerate(futs):
            with pytest.raises(ValueError, match=f"^boom {n}$"):
                f.result()
        assert pool.submit(lambda: "alive").result() == "alive"
        exit_fut = pool.submit(lambda: (_ for _ in ()).throw(SystemExit(3)))
        assert isinstance(exit_fut.exception(), SystemExit)
        assert pool.submit(lambda: "still alive").result() == "still alive"
        s = pool.stats()
        assert (s.completed, s.failed) == (2, 6)
        assert s.started == s.completed + s.failed + s.active


def test_concurrency_never_exceeds_max_workers(threads: int) -> None:
    max_workers = 3
    lock = threading.Lock()
    active = peak = 0
    barrier = threading.Barrier(max_workers)

    def task(i: int) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        if i < max_workers:
            barrier.wait(5)  # the first max_workers tasks must run at once
        time.sleep(0.001)
        with lock:
            active -= 1
        return i

    with TaskPool(max_workers, max_queue=8) as pool:
        results: list[cf.Future[int]] = []
        results.extend(pool.submit(task, i) for i in range(max_workers))
        subs = []
        for k in range(threads):

            def submitter(k: int = k) -> None:
                for i in range(20):
                    results.append(pool.submit(task, 100 + k * 20 + i))

            subs.append(threading.Thread(target=submitter))
        for t in subs:
            t.start()
        for t in subs:
            t.join()
        assert sorted(f.result() for f in results) == sorted(
            list(range(max_workers)) + [100 + n for n in range(threads * 20)]
        )
        st = pool.stats()
        assert st.active == 0 and st.queued == 0
        assert st.completed == st.submitted == max_workers + threads * 20
        assert len(pool._threads) == max_workers
    assert peak == max_workers


def test_reject_policy_raises_queue_full_and_counts_it() -> None:
    gate = threading.Event()
    with TaskPool(1, max_queue=1, overflow="reject") as pool:
        running = pool.submit(gate.wait, 5)
        wait_until(lambda: pool.stats().active == 1)
        queued = pool.submit(int)
        with pytest.raises(QueueFull, match=r"^queue is full$"):
            pool.submit(int)
        s = pool.stats()
        assert (s.submitted, s.rejected, s.active, s.queued) == (2, 1, 1, 1)
        gate.set()
        assert running.result() is True and queued.result() == 0


@pytest.mark.smoke
def test_block_policy_waits_for_room() -> None:
    gate = threading.Event()
    with TaskPool(1, max_queue=1) as pool:
        pool.submit(gate.wait, 5)
        wait_until(lambda: pool.stats().active == 1)
        pool.submit(int)
        done = threading.Event()

        def blocked_submit() -> None:
            pool.submit(int).result()
            done.set()

        t = threading.Thread(target=blocked_submit)
        t.start()
        assert not done.wait(0.05)  # the queue is full: submit is blocked
        gate.set()
        t.join(5)
        assert done.is_set()


def test_stats_invariant_while_running(threads: int) -> None:
    stop = threading.Event()
    with TaskPool(4, max_queue=64) as pool:

        def feed() -> None:
            while not stop.is_set():
                pool.submit(time.sleep, 0)

        ts = [threading.Thread(target=feed) for _ in range(max(2, threads // 4))]
        for t in ts:
            t.start()
        for _ in range(300):
            s = pool.stats()
            assert s.started == s.completed + s.failed + s.active
            assert 0 <= s.active <= 4 and s.queued <= 4 + 64
            assert s.started <= s.submitted
        stop.set()
        for t in ts:
            t.join()
    s = pool.stats()
    assert s.submitted == s.completed and s.active == 0


def test_submit_after_shutdown_raises_runtime_error() -> None:
    pool = TaskPool(2)
    pool.submit(int).result()
    pool.shutdown()
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        pool.submit(int)
    pool.shutdown()  # idempotent
    s = pool.stats()
    assert (s.submitted, s.rejected) == (1, 0)


def test_shutdown_waits_for_queued_and_running_tasks() -> None:
    pool = TaskPool(1)
    futs = [pool.submit(time.sleep, 0.01) for _ in range(5)]
    pool.shutdown(wait=True)
    assert all(f.done() and not f.cancelled() for f in futs)
    assert all(not t.is_alive() for t in pool._threads)


def test_shutdown_cancel_futures_cancels_what_is_queued() -> None:
    gate = threading.Event()
    pool = TaskPool(1)
    running = pool.submit(gate.wait, 5)
    wait_until(lambda: pool.stats().active == 1)
    queued = [pool.submit(int) for _ in range(4)]
    threading.Timer(0.05, gate.set).start()
    pool.shutdown(wait=True, cancel_futures=True)
    assert running.result() is True
    assert all(f.cancelled() for f in queued)
    s = pool.stats()
    assert (s.completed, s.cancelled, s.queued) == (1, 4, 0)


def test_shutdown_wakes_a_blocked_submit() -> None:
    gate = threading.Event()
    pool = TaskPool(1, max_queue=1)
    pool.submit(gate.wait, 5)
    wait_until(lambda: pool.stats().active == 1)
    pool.submit(int)
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            pool.submit(int)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    wait_until(lambda: pool._counters.waiting == 1)
    pool.shutdown(wait=False)
    t.join(5)
    assert not t.is_alive(), "shutdown woke the submit while the task still ran"
    gate.set()
    pool.shutdown(wait=True)
    assert [type(e) for e in errors] == [RuntimeError]


def test_cancelled_future_is_not_run() -> None:
    gate = threading.Event()
    ran: list[int] = []
    with TaskPool(1) as pool:
        pool.submit(gate.wait, 5)
        wait_until(lambda: pool.stats().active == 1)
        f = pool.submit(ran.append, 1)
        assert f.cancel()
        gate.set()
    assert ran == [] and pool.stats().cancelled == 1


def test_shutdown_from_a_task_does_not_deadlock() -> None:
    pool = TaskPool(1)
    f = pool.submit(lambda: pool.shutdown(wait=True))
    assert f.result(5) is None
    pool.shutdown()


def test_bad_input() -> None:
    # ThreadPoolExecutor's wording, for 0 and negative counts alike.
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
            TaskPool(bad)
        with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
            cf.ThreadPoolExecutor(bad)
    with pytest.raises(TypeError, match=r"^max_workers must be an int or None, not 'float'$"):
        TaskPool(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_queue must be >= 1$"):
        TaskPool(1, max_queue=0)
    with pytest.raises(TypeError, match=r"^max_queue must be an int, not 'str'$"):
        TaskPool(1, max_queue="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^overflow must be 'block' or 'reject', not 'x'$"):
        TaskPool(1, overflow="x")
    with pytest.raises(TypeError, match=r"^overflow must be a str, not 'NoneType'$"):
        TaskPool(1, overflow=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^name must be a str or None, not 'int'$"):
        TaskPool(1, name=3)  # type: ignore[arg-type]
    with TaskPool(1) as pool:
        with pytest.raises(TypeError, match=r"^fn must be callable, not 'int'$"):
            pool.submit(5)  # type: ignore[arg-type]
        assert pool.stats().submitted == 0


def test_bad_initializer_arguments() -> None:
    with pytest.raises(TypeError, match=r"^initializer must be callable or None, not 'int'$"):
        TaskPool(1, initializer=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^initargs must be an iterable, not 'int'$"):
        TaskPool(1, initializer=print, initargs=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^thread_name_prefix must be a str, not 'NoneType'$"):
        TaskPool(1, thread_name_prefix=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^thread_name_prefix must be a str, not 'bytes'$"):
        TaskPool(1, thread_name_prefix=b"x")  # type: ignore[arg-type]


# ---- admission: max_workers + max_queue outstanding --------------------------------


def test_an_idle_pool_takes_a_burst_of_max_workers_plus_max_queue() -> None:
    """A submit while a worker is idle goes to that worker: 200 bursts of 5 tasks into
    5 idle workers with max_queue=1 are all accepted (194 of 200 bursts lost a task when
    admission looked only at the queue)."""
    with TaskPool(5, max_queue=1, overflow="reject") as pool:
        for _ in range(200):
            futs = [pool.submit(int, n) for n in range(5)]
            assert [f.result(5) for f in futs] == list(range(5))
        assert pool.stats().rejected == 0
        # The whole limit, max_workers + max_queue, also fits; one more does not.
        gate = threading.Event()
        futs = [pool.submit(gate.wait, 5) for _ in range(6)]
        with pytest.raises(QueueFull, match=r"^queue is full$"):
            pool.submit(int)
        gate.set()
        assert all(f.result(5) for f in futs)
    s = pool.stats()
    assert (s.submitted, s.completed, s.rejected, s.queued) == (1006, 1006, 1, 0)


def test_max_queue_bounds_the_tasks_waiting_beyond_busy_workers() -> None:
    gate = threading.Event()
    with TaskPool(2, max_queue=3, overflow="reject") as pool:
        running = [pool.submit(gate.wait, 5) for _ in range(2)]
        wait_until(lambda: pool.stats().active == 2)
        queued = [pool.submit(int) for _ in range(3)]
        with pytest.raises(QueueFull):
            pool.submit(int)
        s = pool.stats()
        assert (s.active, s.queued, s.rejected) == (2, 3, 1)
        gate.set()
        assert [f.result(5) for f in running + queued] == [True, True, 0, 0, 0]


def test_block_policy_admits_a_waiting_submit_when_a_task_finishes() -> None:
    gate = threading.Event()
    with TaskPool(1, max_queue=1) as pool:
        first = pool.submit(gate.wait, 5)
        pool.submit(int)  # outstanding: 2 = max_workers + max_queue
        out: list[cf.Future[int]] = []
        t = threading.Thread(target=lambda: out.append(pool.submit(int, 7)))
        t.start()
        wait_until(lambda: pool._counters.waiting == 1)
        assert pool.stats().submitted == 2  # the waiting submit is not counted yet
        gate.set()
        t.join(5)
        assert first.result(5) is True and out[0].result(5) == 7
    assert pool._counters.waiting == 0


def test_stats_are_exact_with_concurrent_submitters(threads: int) -> None:
    """Reject-policy submitters race (on free-threaded builds in parallel): admission
    never passes max_workers + max_queue, and the counters add up exactly."""
    max_workers, max_queue = 2, 3
    limit = max_workers + max_queue
    lock = threading.Lock()
    running = peak = 0

    def task(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0)
        with lock:
            running -= 1
        return i

    pool = TaskPool(max_workers, max_queue=max_queue, overflow="reject")
    go = threading.Barrier(threads)
    accepted: list[list[cf.Future[int]]] = [[] for _ in range(threads)]
    refused = [0] * threads
    over: list[int] = []

    def submitter(k: int) -> None:
        go.wait(5)
        for i in range(300):
            try:
                accepted[k].append(pool.submit(task, i))
            except QueueFull:
                refused[k] += 1
            n = pool._counters.outstanding
            if n > limit:
                over.append(n)

    ts = [threading.Thread(target=submitter, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    futs = [f for fs in accepted for f in fs]
    assert all(f.result(5) >= 0 for f in futs)
    pool.shutdown(wait=True)
    s = pool.stats()
    assert over == [] and peak <= max_workers
    assert (s.submitted, s.rejected) == (len(futs), sum(refused))
    assert s.submitted + s.rejected == threads * 300
    assert (s.completed, s.failed, s.cancelled, s.active, s.queued) == (len(futs), 0, 0, 0, 0)
    assert pool._counters.outstanding == 0


def test_max_workers_none_is_thread_pool_executors_default() -> None:
    std = cf.ThreadPoolExecutor()
    with TaskPool() as pool:
        assert pool.max_workers == std._max_workers
        cpus = getattr(os, "process_cpu_count", os.cpu_count)()
        assert pool.max_workers == min(32, (cpus or 1) + 4)
    std.shutdown()


# ---- map ------------------------------------------------------------------------------


def test_map_is_lazy_on_an_infinite_iterable_with_a_small_queue() -> None:
    drawn = 0

    def naturals() -> Iterator[int]:
        nonlocal drawn
        for n in itertools.count():
            drawn = n + 1
            yield n

    with TaskPool(2, max_queue=1) as pool:
        results = pool.map(lambda n: n * n, naturals())
        assert drawn <= 3  # the first window only: max_workers + max_queue
        assert list(itertools.islice(results, 50)) == [n * n for n in range(50)]
        assert drawn <= 50 + 3
        assert pool.stats().submitted <= 50 + 3


def test_map_keeps_at_most_the_limit_in_flight() -> None:
    lock = threading.Lock()
    in_flight = peak = 0

    def task(n: int) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.0005)
        with lock:
            in_flight -= 1
        return n

    with TaskPool(2, max_queue=1) as pool:
        out = []
        for r in pool.map(task, range(40)):
            out.append(r)
            assert pool._counters.outstanding <= 3
        assert out == list(range(40)) and peak <= 2
        assert list(pool.map(task, range(40), buffersize=1, chunksize=7)) == list(range(40))


def test_map_results_in_order_and_an_exception_at_its_position() -> None:
    def inv(n: int) -> float:
        return 1 / n

    with TaskPool(2, max_queue=1) as pool:
        it = pool.map(inv, [1, 2, 4, 0, 5])
        assert [next(it), next(it), next(it)] == [1.0, 0.5, 0.25]
        with pytest.raises(ZeroDivisionError):
            next(it)

        def items() -> Iterator[int]:
            yield from range(1, 8)
            raise LookupError("source failed")

        it = pool.map(abs, items())  # the window is 3: the error is beyond it
        assert [next(it) for _ in range(7)] == list(range(1, 8))
        with pytest.raises(LookupError, match=r"^source failed$"):
            next(it)


def test_map_timeout_counts_from_the_call() -> None:
    gate = threading.Event()
    with TaskPool(1, max_queue=1) as pool:
        it = pool.map(gate.wait, [5, 5, 5], timeout=0.05)
        t0 = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            next(it)
        assert time.monotonic() - t0 < 2
        gate.set()
    assert pool.stats().cancelled == 1  # the one queued; the running one finished


def test_map_timeout_also_bounds_the_wait_for_room() -> None:
    """With the pool full of other work, map waits for room only until its deadline."""
    gate = threading.Event()
    with TaskPool(1, max_queue=1) as pool:
        others = [pool.submit(gate.wait, 5) for _ in range(2)]
        it = pool.map(int, [1, 2], timeout=0.05)
        with pytest.raises(cf.TimeoutError):
            next(it)
        gate.set()
        assert all(f.result(5) for f in others)
        assert list(pool.map(int, [1, 2], timeout=5)) == [1, 2]


def test_abandoning_map_cancels_what_is_pending() -> None:
    gate = threading.Event()
    started = threading.Event()
    ran: list[int] = []

    def task(n: int) -> int:
        ran.append(n)
        if n == 1:
            started.set()
            gate.wait(5)
        return n

    with TaskPool(1, max_queue=4) as pool:
        it = pool.map(task, range(100))
        assert next(it) == 0
        assert started.wait(5)
        it.close()  # 1 is running; 2, 3 and 4 are queued and get cancelled
        gate.set()
    assert sorted(ran) == [0, 1]
    s = pool.stats()
    assert (s.completed, s.cancelled) == (2, 3)

    # Dropping the iterator does the same once it is collected.
    gate.clear()
    started.clear()
    ran.clear()
    with TaskPool(1, max_queue=4) as pool:
        it = pool.map(task, range(100))
        assert next(it) == 0
        assert started.wait(5)
        del it
        gc.collect()
        gate.set()
    assert sorted(ran) == [0, 1] and pool.stats().cancelled == 3


def test_map_after_shutdown_raises_and_a_shutdown_mid_map_surfaces_in_order() -> None:
    pool = TaskPool(1, max_queue=1)
    it = pool.map(abs, range(-5, 0))  # window of 2 submitted now
    pool.shutdown(wait=True)
    assert [next(it), next(it)] == [5, 4]
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        next(it)
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        pool.map(abs, [1])
    with TaskPool(1) as ok, pytest.raises(TypeError, match=r"^buffersize must be an integer"):
        ok.map(abs, [1], buffersize=1.5)  # type: ignore[arg-type]
    with TaskPool(1) as ok, pytest.raises(ValueError, match=r"^buffersize must be None or > 0$"):
        ok.map(abs, [1], buffersize=0)


# ---- initializer, thread names --------------------------------------------------------


def test_initializer_runs_once_in_each_worker_before_its_tasks() -> None:
    local = threading.local()
    calls: list[tuple[str, tuple[Any, ...]]] = []
    gate = threading.Barrier(3)

    def init(*args: Any) -> None:
        calls.append((threading.current_thread().name, args))
        local.ready = args

    def task() -> tuple[Any, ...]:
        gate.wait(5)  # all three workers hold a task at once
        return local.ready  # type: ignore[no-any-return]

    # initargs: any iterable, read once (a generator serves every worker).
    with TaskPool(3, initializer=init, initargs=(x for x in ("a", 1))) as pool:
        futs = [pool.submit(task) for _ in range(3)]
        assert [f.result(5) for f in futs] == [("a", 1)] * 3
        assert all(pool.submit(lambda: local.ready).result(5) == ("a", 1) for _ in range(10))
    assert sorted(name for name, _ in calls) == [f"{pool.name}_{n}" for n in range(3)]
    assert {args for _, args in calls} == {("a", 1)}


def test_thread_name_prefix() -> None:
    def name() -> str:
        return threading.current_thread().name

    with TaskPool(1, thread_name_prefix="io", name="pool") as pool:
        assert pool.submit(name).result(5) == "io_0"
        assert pool.name == "pool"
    with TaskPool(1, name="pool") as pool:
        assert pool.submit(name).result(5) == "pool_0"  # the default prefix is the name
    with TaskPool(1, thread_name_prefix="") as pool:  # "" is the default, as in the stdlib
        assert re.fullmatch(r"TaskPool-\d+_0", pool.submit(name).result(5))


def test_a_failing_initializer_breaks_the_pool_like_thread_pool_executor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As in ThreadPoolExecutor: the exception is logged on concurrent.futures, queued
    tasks fail with BrokenThreadPool, later submits raise it; shutdown still works."""

    go = threading.Event()

    def init() -> None:
        go.wait(5)  # fail only once all three tasks are queued
        raise ValueError("no database")

    pool = TaskPool(1, initializer=init)
    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        futs = [pool.submit(int, n) for n in range(3)]
        go.set()
        for f in futs:
            with pytest.raises(BrokenThreadPool, match=BROKEN):
                f.result(5)
    [record] = caplog.records
    assert record.name == "concurrent.futures"
    assert record.getMessage() == "Exception in initializer:"
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    with pytest.raises(BrokenThreadPool, match=BROKEN):
        pool.submit(int)
    pool.shutdown(wait=True)
    s = pool.stats()
    assert (s.submitted, s.started, s.cancelled, s.active, s.queued) == (3, 0, 3, 0, 0)

    # The stdlib's behaviour, for comparison.
    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        std = cf.ThreadPoolExecutor(1, initializer=init)
        with pytest.raises(BrokenThreadPool, match=BROKEN):
            std.submit(int).result(5)
        with pytest.raises(BrokenThreadPool, match=BROKEN):
            std.submit(int)
        std.shutdown()


def test_a_later_worker_failing_its_initializer_fails_only_the_queued_tasks() -> None:
    started = threading.Event()
    release = threading.Event()
    calls = 0
    lock = threading.Lock()

    def init() -> None:
        nonlocal calls
        with lock:
            calls += 1
            n = calls
        if n == 2:  # the second worker fails once the first is busy
            raise RuntimeError("second worker cannot start")

    def busy() -> None:
        started.set()
        release.wait(5)

    pool = TaskPool(2, max_queue=1, initializer=init)
    logging.getLogger("concurrent.futures").disabled = True
    try:
        running = pool.submit(busy)
        assert started.wait(5)
        queued = pool.submit(int)  # starts the second worker, whose initializer fails
        with pytest.raises(BrokenThreadPool, match=BROKEN):
            queued.result(5)
        with pytest.raises(BrokenThreadPool, match=BROKEN):
            pool.submit(int)
        release.set()
        assert running.result(5) is None  # a task already running finishes normally
    finally:
        logging.getLogger("concurrent.futures").disabled = False
        release.set()
        pool.shutdown()


def test_a_blocked_submit_wakes_with_broken_thread_pool() -> None:
    """A submit waiting for room in a full queue when the pool breaks raises
    BrokenThreadPool, not the shutdown RuntimeError."""
    started = threading.Event()
    release = threading.Event()
    fail = threading.Event()

    def init() -> None:
        if threading.current_thread().name.endswith("_1"):
            fail.wait(5)
            raise RuntimeError("late failure")

    def busy() -> None:
        started.set()
        release.wait(5)

    pool = TaskPool(2, max_queue=1, initializer=init)
    logging.getLogger("concurrent.futures").disabled = True
    out: list[BaseException] = []

    def blocked_submit() -> None:
        try:
            pool.submit(int)
        except BaseException as e:
            out.append(e)

    try:
        pool.submit(busy)
        assert started.wait(5)
        pool.submit(int)  # worker _1 starts and waits in its initializer
        pool.submit(int)  # 3 outstanding (max_workers + max_queue): the pool is full
        t = threading.Thread(target=blocked_submit)
        t.start()
        wait_until(lambda: pool._counters.waiting == 1)
        fail.set()
        t.join(5)
        assert [type(e) for e in out] == [BrokenThreadPool]
    finally:
        logging.getLogger("concurrent.futures").disabled = False
        fail.set()
        release.set()
        pool.shutdown()


def test_workers_do_not_keep_the_initializer_alive() -> None:
    """A worker drops its initializer (and initargs) once it has run: an initializer
    that refers to its pool does not keep the pool alive from the worker thread."""

    class Owner:
        pool: Any = None

        def setup(self, other: Any) -> None:
            assert other is self

    owner = Owner()
    owner.pool = TaskPool(2, initializer=owner.setup, initargs=(owner,))
    assert owner.pool.submit(int, 4).result(5) == 4
    threads = list(owner.pool._threads)
    dead = weakref.ref(owner.pool)
    del owner
    gc.collect()
    assert dead() is None
    for t in threads:
        t.join(5)
        assert not t.is_alive()


def test_futures_work_with_asyncio_wrap_future() -> None:
    async def main(pool: TaskPool) -> list[int]:
        one = await asyncio.wrap_future(pool.submit(pow, 2, 5))
        many = await asyncio.gather(*(asyncio.wrap_future(pool.submit(abs, -n)) for n in range(5)))
        return [one, *many]

    with TaskPool(2) as pool:
        assert asyncio.run(main(pool)) == [32, 0, 1, 2, 3, 4]
        failing = pool.submit(lambda: 1 / 0)

        async def fails() -> None:
            await asyncio.wrap_future(failing)

        with pytest.raises(ZeroDivisionError):
            asyncio.run(fails())


def _submit_racing_shutdown(pool: TaskPool, ready: threading.Event, out: list[Any]) -> None:
    ready.set()
    with contextlib.suppress(RuntimeError):
        out.append(pool.submit(int, 7))


def test_task_queued_just_before_shutdown_still_runs() -> None:
    for _ in range(50):
        pool = TaskPool(1)
        ready = threading.Event()
        accepted: list[cf.Future[int]] = []
        t = threading.Thread(target=_submit_racing_shutdown, args=(pool, ready, accepted))
        t.start()
        ready.wait()
        pool.shutdown(wait=False)
        t.join()
        if accepted:  # accepted before the close: it must run
            assert accepted[0].result(5) == 7
        pool.shutdown(wait=True)


class Box:
    """Something weakly referenceable to hang a reference cycle on."""

    pool: Any = None
    futures: Any = None


def _echo(x: Any) -> Any:
    return x


def test_gc_collects_a_pool_in_a_cycle_with_its_tasks_and_futures() -> None:
    """A pool reachable only from a cycle through its own tasks' arguments and futures
    (future -> result -> box -> future, box -> pool) is collected once dropped, and its
    workers exit: worker threads and the pool's finalizer hold its queue, never the
    pool, and each worker lets go of a task once it has run."""
    pool = TaskPool(2)
    box = Box()
    box.pool = pool
    box.futures = [pool.submit(_echo, box) for _ in range(4)]
    assert all(f.result(5) is box for f in box.futures)
    threads = list(pool._threads)
    dead = weakref.ref(pool)
    del pool, box
    gc.collect()
    assert dead() is None
    for t in threads:
        t.join(5)
        assert not t.is_alive()


def test_gc_collects_a_pool_after_its_queued_self_referencing_task_ran() -> None:
    """A queued task that refers to its pool keeps the pool alive (it will still run:
    the worker holds the queue); once it has run, the cycle through its future is
    collected and the worker exits."""
    gate = threading.Event()
    pool = TaskPool(1)
    pool.submit(gate.wait, 5)
    wait_until(lambda p=pool: p.stats().active == 1)
    box = Box()
    box.pool = pool
    box.futures = [pool.submit(_echo, box)]  # queued behind the gate
    future = box.futures[0]
    threads = list(pool._threads)
    dead = weakref.ref(pool)
    del pool, box
    gc.collect()
    assert dead() is not None  # the queued task still refers to it, and will run
    gate.set()
    assert future.result(5).pool is dead()
    del future
    gc.collect()
    assert dead() is None
    for t in threads:
        t.join(5)
        assert not t.is_alive()
