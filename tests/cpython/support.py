"""The one piece of CPython's ``test.support`` that the vendored tests use, so that they
run where the ``test`` package is not installed (a distribution's Python often lacks it)."""

from __future__ import annotations

import threading


class threading_helper:  # stands in for the module of that name
    @staticmethod
    def join_thread(thread: threading.Thread, timeout: float = 300.0) -> None:
        """``test.support.threading_helper.join_thread``: join, failing if it is stuck."""
        thread.join(timeout)
        if thread.is_alive():
            raise AssertionError(f"failed to join the thread in {timeout:.1f} seconds")
