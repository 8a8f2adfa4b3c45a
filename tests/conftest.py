"""Shared fixtures. Thread tests use `threads` so they run wider on free-threaded builds."""

from __future__ import annotations

import doctest
import faulthandler
import os
import signal
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable, Iterator

import pytest

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
GIL_ENABLED = getattr(sys, "_is_gil_enabled", lambda: True)()
# FERRULE_STRESS=1 (the free-threaded CI run) widens every thread test.
STRESS = os.environ.get("FERRULE_STRESS") == "1" or FREE_THREADED


@pytest.fixture
def threads() -> int:
    """How many threads a concurrency test should start."""
    return 16 if STRESS else 8


@pytest.fixture
def stress_scale() -> int:
    """A multiplier for iteration counts in stress tests."""
    return 2 if STRESS else 1


def wait_until(pred: Callable[[], object], timeout: float = 5.0) -> bool:
    """Polls ``pred()`` every millisecond until it is true (True) or ``timeout`` seconds
    pass (False): for state another thread changes, where no event can be waited on."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def run_threads(threads: int, body: Callable[[int], object], timeout: float = 60.0) -> None:
    """Run ``body(i)`` on ``threads`` threads released together by a barrier; any
    exception in a thread fails the caller."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def wrap(i: int) -> None:
        try:
            barrier.wait()
            body(i)
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=wrap, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout)
    assert not errors, errors[:3]


def _defined_in(obj: object, globs_of: object) -> bool:
    """A function whose globals are the module's, or a class with such a method."""
    home = vars(globs_of)
    if getattr(obj, "__globals__", None) is home:
        return True
    members = vars(obj).values() if isinstance(obj, type) else ()
    return any(getattr(m, "__globals__", None) is home for m in members)


def run_doctests(module: object) -> doctest.TestResults:
    """Run the ``>>>`` examples of a module and of every object it defines.

    ``doctest.testmod`` finds only objects whose ``__module__`` is the module itself; the
    public ones report ``ferrule`` (the import path users write), so they are collected
    here by where they are defined.
    """
    name = module.__name__  # type: ignore[attr-defined]
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs = dict(vars(module))
    found = finder.find(module, name, globs=globs)
    for attr, obj in vars(module).items():
        if getattr(obj, "__module__", None) == "ferrule" and _defined_in(obj, globs_of=module):
            found += finder.find(obj, f"{name}.{attr}", module=False, globs=globs)
    for test in found:
        runner.run(test)
    return runner.summarize(verbose=False)


# How long a test's own threads may outlive it, how long a test may run in all (past
# pytest-timeout's limit, which can only interrupt a main thread that reaches Python
# code), and how long the interpreter may take to exit after the session: past any of
# them something is stuck, and a stuck run must fail with the stacks that show where
# instead of hanging the whole CI job.
STRAY_GRACE = 10.0
STUCK_TEST = 300.0
EXIT_GRACE = 120.0


def _stacks(threads: list[threading.Thread]) -> str:
    frames = sys._current_frames()
    out = []
    for t in threads:
        frame = frames.get(t.ident) if t.ident is not None else None
        stack = "".join(traceback.format_stack(frame)) if frame else "  (no frame)\n"
        out.append(f"{t!r}:\n{stack}")
    return "\n".join(out)


@pytest.fixture(autouse=True)
def _watchdogs() -> Iterator[None]:
    """A test that runs past STUCK_TEST ends the run with every thread's stack. A
    non-daemon thread a test started must end with it: one left looping (a stop
    flag never set because an assertion failed first) would slow every later test and
    keep the interpreter from exiting. ferrule's own threads (named ``ferrule-...``) are
    exempt: they live as long as their object, and the package ends them at exit."""
    before = set(threading.enumerate())
    faulthandler.dump_traceback_later(STUCK_TEST, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
    deadline = time.monotonic() + STRAY_GRACE
    stray = [
        t
        for t in threading.enumerate()
        if t not in before and not t.daemon and not t.name.startswith("ferrule-")
    ]
    for t in stray:
        t.join(max(0.0, deadline - time.monotonic()))
    left = [t for t in stray if t.is_alive()]
    if left:
        pytest.fail(f"the test left {len(left)} thread(s) running:\n{_stacks(left)}")


def pytest_configure(config: pytest.Config) -> None:
    # The Ctrl-C tests interrupt a blocked call with `_thread.interrupt_main()`, which
    # does nothing while SIGINT is ignored, as it is for a runner started in the
    # background by a shell without job control: the blocked call would never return.
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_unconfigure(config: pytest.Config) -> None:
    # Past this point only interpreter exit remains; if it hangs, print every stack
    # and end the process with a failure status.
    faulthandler.dump_traceback_later(EXIT_GRACE, exit=True)


def pytest_report_header(config: pytest.Config) -> str:
    return f"ferrule: free-threaded={FREE_THREADED} gil-enabled={GIL_ENABLED} stress={STRESS}"


# The real redis-server fixtures of the ferrule.redis tests (skip without the binary).
from tests.redis_server import redis_client, redis_server  # noqa: E402, F401
