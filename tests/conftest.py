"""Shared fixtures. Thread tests use `threads` so they run wider on free-threaded builds."""

from __future__ import annotations

import os
import sys
import sysconfig

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


def pytest_report_header(config: pytest.Config) -> str:
    return f"ferrule: free-threaded={FREE_THREADED} gil-enabled={GIL_ENABLED} stress={STRESS}"


# The real redis-server fixtures of the ferrule.redis tests (skip without the binary).
from tests.redis_server import redis_client, redis_server  # noqa: E402, F401
