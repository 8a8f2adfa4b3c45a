"""ferrule: concurrency and resource-management building blocks for Python services.

Every block is thread-safe (also on free-threaded CPython), bounded in memory, and backed
by a Rust core. Import everything from here; ``ferrule._native`` is private.
"""

from ferrule._cached import cached
from ferrule._native import (
    Agent,
    AlreadyRegistered,
    BackendError,
    Cache,
    CacheStats,
    CircuitOpen,
    Decision,
    Discard,
    FerruleError,
    ManualClock,
    PoolTimeout,
    QueueClosed,
    QueueEmpty,
    QueueFull,
    QueueStats,
    RateLimiter,
    Registry,
    TaskPoolStats,
    WorkQueue,
    __version__,
)
from ferrule._pool import TaskPool

__all__ = [
    "Agent",
    "AlreadyRegistered",
    "BackendError",
    "Cache",
    "CacheStats",
    "CircuitOpen",
    "Decision",
    "Discard",
    "FerruleError",
    "ManualClock",
    "PoolTimeout",
    "QueueClosed",
    "QueueEmpty",
    "QueueFull",
    "QueueStats",
    "RateLimiter",
    "Registry",
    "TaskPool",
    "TaskPoolStats",
    "WorkQueue",
    "__version__",
    "cached",
]
