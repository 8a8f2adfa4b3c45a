"""The pieces of CPython's ``test.support`` that the vendored tests use, so that they
run where the ``test`` package is not installed (a distribution's Python often lacks it,
and so does the free-threaded CPython that ``scripts/free-threaded.sh`` builds). Each
behaves as the original does when a test file is run directly, outside regrtest."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
import unittest
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])


def _keep(fn: _F) -> _F:
    return fn


class support:  # stands in for the package of that name
    verbose = False
    SHORT_TIMEOUT = 30.0

    @staticmethod
    def requires_resource(resource: str) -> Callable[[_F], _F]:
        """Outside regrtest every resource is enabled."""
        return _keep

    cpython_only = staticmethod(_keep)

    @staticmethod
    def requires_fork() -> Callable[[_F], _F]:
        return unittest.skipUnless(hasattr(os, "fork"), "requires working os.fork()")

    @staticmethod
    def gc_collect() -> None:
        for _ in range(3):
            gc.collect()

    @staticmethod
    def reap_children() -> None:
        """Nothing to reap: the vendored tests start no child without waiting for it."""

    @staticmethod
    def setswitchinterval(interval: float) -> None:
        sys.setswitchinterval(interval)

    @staticmethod
    def sleeping_retry(timeout: float, err_msg: str | None = None) -> Iterator[None]:
        """Yields until the caller breaks out, sleeping a little longer each time; fails
        once ``timeout`` seconds have passed."""
        delay = 0.01
        deadline = time.monotonic() + timeout
        while True:
            yield
            if time.monotonic() >= deadline:
                raise AssertionError(err_msg or f"timeout ({timeout:.1f} seconds)")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def assert_python_ok(*args: str) -> tuple[int, bytes, bytes]:
    """``test.support.script_helper.assert_python_ok``: runs this interpreter isolated
    (``-X faulthandler -I``) with ``args`` and fails unless it exits with 0."""
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-I", *args], capture_output=True, timeout=120
    )
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")
        raise AssertionError(f"process exited with {proc.returncode}; stderr:\n{stderr}")
    return proc.returncode, proc.stdout, proc.stderr


class threading_helper:  # stands in for the module of that name
    @staticmethod
    def threading_setup() -> tuple[int]:
        return (threading.active_count(),)

    @staticmethod
    def threading_cleanup(*original: int) -> None:
        """The original only reports leftover threads in verbose runs; the suite's own
        watchdog (tests/conftest.py) fails a test that leaves a thread running."""

    @staticmethod
    def join_thread(thread: threading.Thread, timeout: float = 300.0) -> None:
        """``test.support.threading_helper.join_thread``: join, failing if it is stuck."""
        thread.join(timeout)
        if thread.is_alive():
            raise AssertionError(f"failed to join the thread in {timeout:.1f} seconds")
