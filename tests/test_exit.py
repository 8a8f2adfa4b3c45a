"""Exit safety: a process whose daemon threads are inside ferrule when it exits ends
normally (status 0, no abort, no panic, no fatal error), for every blocking wait and
every call into user code.

Each scenario is a small program run in a fresh interpreter: it puts daemon threads into
one wait (or into user code that ferrule called), lets them get there, and returns from
the main module. Before the exit gate (``src/py/wait.rs``) and the exit guard
(``src/c/exit_guard.c``) each of these aborted with "FATAL: exception not rethrown".
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import STRESS

RUNS = 4 if STRESS else 2

# Written once the interpreter has started and imported ferrule.
STARTED = "exit-test: started"

# Written by the last atexit hook (registered before ferrule's exit gate, so run after it).
FINALIZING = "exit-test: finalizing"

# CPython 3.10 itself can crash at exit when daemon threads compete for the GIL: a thread
# whose GIL wait timed out before finalization withdraws its drop request through the
# interpreter state that Py_FinalizeEx has already freed (take_gil, the 3.10 backport of
# gh-96387; 3.11+ allocate the main interpreter statically). No extension code runs then
# and a pure-Python program crashes the same way (see src/py/wait.rs). Such a run, a
# SIGSEGV after the last atexit hook with no faulthandler report (faulthandler is on until
# the interpreter is torn down), is run again on 3.10; any other crash fails the test.
CPYTHON_EXIT_CRASH = sys.version_info < (3, 11)

PRELUDE = f"""
import atexit, sys
atexit.register(lambda: print({FINALIZING!r}, file=sys.stderr, flush=True))
import threading, time, ferrule
print({STARTED!r}, file=sys.stderr, flush=True)

def daemon(fn, n=1):
    for _ in range(n):
        threading.Thread(target=fn, daemon=True).start()

def forever(fn):
    def loop():
        while True:
            try:
                fn()
            except ferrule.FerruleError:
                pass
    return loop
"""

SCENARIOS = {
    # WorkQueue: timed gets on an empty queue, the issue's own program.
    "queue_get_timeout": """
        q = ferrule.WorkQueue(10)
        daemon(forever(lambda: q.get(timeout=0.01)), 8)
    """,
    "queue_get_forever": """
        q = ferrule.WorkQueue(10)
        daemon(q.get, 4)
    """,
    "queue_put_timeout": """
        q = ferrule.WorkQueue(1)
        q.put(0)
        daemon(forever(lambda: q.put(1, timeout=0.01)), 8)
    """,
    "queue_put_forever": """
        q = ferrule.WorkQueue(1)
        q.put(0)
        daemon(lambda: q.put(1), 4)
    """,
    # join() waiting for a task_done that never comes, beside task_done churn that
    # wakes joiners (and lets them wait again) while the interpreter exits.
    "queue_join": """
        q = ferrule.WorkQueue(0)
        q.put(0)
        daemon(q.join, 4)
        busy = ferrule.WorkQueue(0)
        def churn():
            busy.put(1)
            busy.get()
            busy.task_done()
        daemon(forever(churn), 2)
        daemon(forever(busy.join), 4)
    """,
    "queue_batches": """
        q = ferrule.WorkQueue(2)
        q.put_many([0, 1])
        daemon(forever(lambda: q.put_many([2, 3], timeout=0.01)), 4)
        e = ferrule.WorkQueue(2)
        daemon(forever(lambda: e.get_many(4, timeout=0.01)), 4)
    """,
    # Once the exit has begun, submit raises RuntimeError (as ThreadPoolExecutor does);
    # the loop goes on rather than end each thread with an uncaught exception, whose
    # report while 3.13.5t finalizes can deadlock in CPython itself (gdb: the main
    # thread clearing a module dict waits on that dict's critical section, with a
    # daemon thread inside the thread excepthook waiting on it too).
    "taskpool_submit_blocked": """
        pool = ferrule.TaskPool(1, max_queue=1)
        def submit():
            try:
                pool.submit(time.sleep, 0.005)
            except RuntimeError:
                pass
        daemon(forever(submit), 4)
    """,
    "subscription_get": """
        bus = ferrule.SignalBus()
        sub = bus.subscribe("a.*")
        daemon(forever(lambda: sub.get(timeout=0.01)), 4)
        other = bus.subscribe("b.*")
        daemon(other.get, 2)
    """,
    "bus_publish_blocked": """
        bus = ferrule.SignalBus()
        def slow(signal):
            time.sleep(0.01)
        sub = bus.subscribe("a", slow, maxsize=1, overflow="block", weak=False)
        daemon(forever(lambda: bus.publish("a", 1)), 4)
    """,
    # Handler subscriptions of two buses: their subscription ids coincide (each bus
    # numbers its own), and the exit hook must still cancel both (it once missed one,
    # and the exit waited for it forever).
    "bus_handlers_on_two_buses": """
        first, second = ferrule.SignalBus(), ferrule.SignalBus()
        first.subscribe("a", lambda s: None, weak=False)
        second.subscribe("a", lambda s: None, weak=False)
    """,
    "bus_handler_sleeping": """
        bus = ferrule.SignalBus()
        bus.subscribe("a", lambda s: time.sleep(0.02), weak=False)
        daemon(forever(lambda: bus.publish("a")), 2)
    """,
    # An async handler on a loop that a daemon thread runs, publishers waiting for room.
    "bus_async_handler": """
        import asyncio
        bus = ferrule.SignalBus()
        loop = asyncio.new_event_loop()
        daemon(loop.run_forever)
        async def slow(signal):
            await asyncio.sleep(0.005)
        bus.subscribe("a", slow, maxsize=1, overflow="block", weak=False, loop=loop)
        daemon(forever(lambda: bus.publish("a", 1)), 4)
    """,
    "cache_single_flight": """
        c = ferrule.Cache(10)
        daemon(lambda: c.get_or_set("k", lambda: time.sleep(5)))
        time.sleep(0.05)
        daemon(lambda: c.get_or_set("k", lambda: 1), 4)
        daemon(forever(lambda: c.get_or_set(object(), lambda: time.sleep(0.001))), 2)
    """,
    # Tasks on a daemon thread's loop and threads share flights, each waking the other.
    "cache_async_single_flight": """
        import asyncio
        c = ferrule.Cache(100)
        loop = asyncio.new_event_loop()
        daemon(loop.run_forever)
        async def slow_async():
            await asyncio.sleep(0.005)
            return 1
        def both():
            key = object()
            asyncio.run_coroutine_threadsafe(c.get_or_set_async(key, slow_async), loop)
            c.get_or_set(key, lambda: time.sleep(0.005) or 2)
        daemon(forever(both), 4)
    """,
    # A listener and a weigher that sleep, called by daemon threads' writes and reads.
    "cache_on_evict_and_weigher_sleeping": """
        def on_evict(k, v, cause):
            time.sleep(0.002)
        def weigh(k, v):
            time.sleep(0.001)
            return 1
        clock = ferrule.ManualClock()
        c = ferrule.Cache(4, tti=0.01, weigher=weigh, on_evict=on_evict, clock=clock)
        daemon(forever(lambda: c.set(time.monotonic_ns() % 16, 1)), 4)
        daemon(forever(lambda: clock.advance(0.005) or c.get(3)), 2)
        daemon(forever(lambda: c.clear()), 1)
    """,
    "cache_key_eq_sleeping": """
        class Key:
            def __hash__(self):
                time.sleep(0.001)
                return 1
            def __eq__(self, other):
                time.sleep(0.002)
                return self is other
        c = ferrule.Cache(10)
        c.set(Key(), 1)
        daemon(forever(lambda: c.get(Key())), 4)
    """,
    "registry_where_compare_sleeping": """
        class Slow:
            def __eq__(self, other):
                time.sleep(0.002)
                return False
            __hash__ = object.__hash__
        reg = ferrule.Registry()
        reg.register("a", metadata={"x": Slow()})
        daemon(forever(lambda: reg.find(where=[("x", "eq", 1)])), 4)
    """,
    "cached_function": """
        @ferrule.cached(8)
        def slow(x):
            time.sleep(0.01)
            return x
        daemon(forever(lambda: slow(time.monotonic_ns() % 3)), 4)
    """,
    "limiter_acquire": """
        lim = ferrule.RateLimiter(1, 1.0)
        lim.try_acquire("k")
        daemon(lambda: lim.acquire("k", timeout=10), 2)
        fast = ferrule.RateLimiter(200, 1.0, burst=1)
        daemon(forever(lambda: fast.acquire("x", timeout=1)), 4)
    """,
    "budget_acquire": """
        rm = ferrule.ResourceManager({"gpu": 1})
        held = rm.acquire("gpu")
        daemon(forever(lambda: rm.acquire("gpu", timeout=0.01)), 4)
        daemon(lambda: rm.acquire("gpu"), 2)
    """,
    "pool_acquire": """
        pool = ferrule.Pool(object, max_size=1)
        cm = pool.acquire()
        item = cm.__enter__()
        def take():
            with pool.acquire(timeout=0.01):
                pass
        daemon(forever(take), 4)
        def take_forever():
            with pool.acquire(timeout=None):
                pass
        daemon(take_forever, 2)
    """,
    "pool_factory_sleeping": """
        def make():
            time.sleep(0.01)
            return object()
        pool = ferrule.Pool(make, max_size=8, validate=lambda x: time.sleep(0.001) or True)
        def take():
            with pool.acquire():
                time.sleep(0.001)
        daemon(forever(take), 4)
    """,
    # A part's bus handler (called by the thread whose put overflowed the queue)
    # sleeps while the interpreter exits.
    "events_bus_publish_sleeping": """
        class SlowBus:
            def publish(self, topic, data):
                time.sleep(0.002)
        q = ferrule.WorkQueue(1, overflow="reject", name="q", bus=SlowBus())
        def churn():
            try:
                q.put_nowait(1)
            except ferrule.QueueFull:
                pass
            try:
                q.get_nowait()
            except ferrule.QueueEmpty:
                pass
        daemon(forever(churn), 4)
    """,
    "breaker_call": """
        cb = ferrule.CircuitBreaker(on_state_change=lambda a, b: time.sleep(0.001))
        daemon(forever(lambda: cb.call(time.sleep, 0.002)), 4)
    """,
    "registry_where_callable": """
        reg = ferrule.Registry()
        for i in range(5):
            reg.register(f"a{i}", capabilities=["x"])
        def slow(agent):
            time.sleep(0.002)
            return True
        daemon(forever(lambda: reg.find(capability="x", where=slow)), 4)
    """,
    "health_monitor": """
        reg = ferrule.Registry()
        for i in range(4):
            reg.register(f"a{i}")
        def check(agent):
            time.sleep(0.01)
            return "healthy"
        mon = ferrule.HealthMonitor(reg, interval=0.01, check=check, timeout=0.5)
        mon.start()
        daemon(forever(mon.check_now), 2)
    """,
    # An async check hanging at exit (the monitor's own loop thread inside it), a sync
    # check returning a hanging coroutine, and rounds still being made.
    "health_monitor_async": """
        import asyncio
        reg = ferrule.Registry()
        for i in range(4):
            reg.register(f"a{i}")
        async def check(agent):
            await asyncio.sleep(3600)
            return "healthy"
        async def fast(agent):
            return "healthy"
        mon = ferrule.HealthMonitor(reg, interval=0.01, check=check, timeout=0.05)
        mon.watch("a0", fast)
        mon.watch("a1", lambda agent: check(agent))
        mon.start()
        daemon(forever(mon.check_now), 2)
        while mon.rounds < 2:
            time.sleep(0.01)
    """,
    "metrics_timer": """
        m = ferrule.Metrics()
        @m.time("op")
        def work():
            time.sleep(0.002)
        daemon(forever(work), 4)
    """,
    "asyncio_waiters": """
        import asyncio
        q = ferrule.WorkQueue(1)
        def run():
            async def main():
                await asyncio.gather(q.get_async(), q.get_async())
            asyncio.run(main())
        daemon(run, 2)
        daemon(forever(lambda: q.put(1, timeout=0.01)), 2)
    """,
}


def run(body: str, attempts: int = 3) -> subprocess.CompletedProcess[str]:
    """Run one scenario. A run that hangs before it has started is run again: CPython
    3.13.5t can livelock in its own startup on a loaded machine, before any ferrule code
    runs (gdb: the main thread alone, spinning in ``_PyMutex_LockTimed`` under
    ``_io__Buffered_close`` while an import writes a bytecode cache). A hang after the
    start is the scenario's own and fails it."""
    program = PRELUDE + textwrap.dedent(body) + "\ntime.sleep(0.2)\n"
    for attempt in range(attempts):
        try:
            proc = subprocess.run(
                [sys.executable, "-X", "faulthandler", "-c", program],
                capture_output=True,
                text=True,
                timeout=20,
            )
        except subprocess.TimeoutExpired as e:
            err = e.stderr or ""
            if isinstance(err, bytes):
                err = err.decode(errors="replace")
            if STARTED in err or attempt == attempts - 1:
                raise
            continue
        if attempt < attempts - 1 and cpython_exit_crash(proc):
            continue
        return proc
    raise AssertionError("unreachable")


def cpython_exit_crash(proc: subprocess.CompletedProcess[str]) -> bool:
    """Whether `proc` ended in CPython 3.10's own crash at exit (see CPYTHON_EXIT_CRASH)."""
    return (
        CPYTHON_EXIT_CRASH
        and proc.returncode == -11
        and FINALIZING in proc.stderr
        and "Fatal Python error" not in proc.stderr
    )


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_daemon_threads_inside_ferrule_at_exit(name: str) -> None:
    for _ in range(RUNS):
        proc = run(SCENARIOS[name])
        assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
        for marker in ("FATAL", "Fatal Python error", "panicked", "PanicException"):
            assert marker not in proc.stderr, proc.stderr[-2000:]


def test_async_health_checks_at_exit_leave_nothing_pending() -> None:
    """The monitor's loop cancels its tasks and closes at exit: no task destroyed
    pending, no coroutine never awaited."""
    for _ in range(RUNS):
        proc = run(SCENARIOS["health_monitor_async"])
        assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
        for marker in ("Task was destroyed", "never awaited", "Traceback"):
            assert marker not in proc.stderr, proc.stderr[-2000:]


def test_main_thread_waits_in_a_late_atexit_hook() -> None:
    """A wait on the finalizing thread, after ferrule's hook ran, detaches and comes back."""
    proc = run(
        """
        import atexit
        q = ferrule.WorkQueue(1)
        q.put("x")
        def late():
            print(q.get(timeout=1), flush=True)
            try:
                q.get(timeout=0.05)
            except ferrule.QueueEmpty:
                print("timed out", flush=True)
        atexit.unregister(ferrule._native._close_gate)
        atexit.register(late)
        atexit.register(ferrule._native._close_gate)
        """
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["x", "timed", "out"]
