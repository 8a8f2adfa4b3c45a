"""TaskPool: an Executor with a bounded queue, a worker limit and lock-free stats."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import gc
import threading
import time
import weakref
from typing import Any

import pytest
from ferrule import QueueFull, TaskPool


def wait_until(cond: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.001)


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
            assert 0 <= s.active <= 4 and s.queued <= 64
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
    time.sleep(0.05)
    pool.shutdown(wait=False)
    t.join(5)
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
    with pytest.raises(ValueError, match=r"^max_workers must be >= 1$"):
        TaskPool(0)
    with pytest.raises(TypeError, match=r"^max_workers must be an int, not 'float'$"):
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
