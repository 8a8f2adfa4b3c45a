"""ferrule: concurrency and resource-management building blocks for Python services.

Every block is thread-safe (also on free-threaded CPython), bounded in memory, and backed
by a Rust core. Import everything from here; ``ferrule._native`` is private.
"""

from ferrule._cached import cached
from ferrule._native import (
    AlreadyRegistered,
    BackendError,
    BreakerStats,
    Cache,
    CacheStats,
    CircuitBreaker,
    CircuitOpen,
    Discard,
    FerruleError,
    ManualClock,
    PoolTimeout,
    QueueClosed,
    QueueEmpty,
    QueueFull,
    __version__,
)
from ferrule._resilience import Retry, retry

__all__ = [
    "AlreadyRegistered",
    "BackendError",
    "BreakerStats",
    "Cache",
    "CacheStats",
    "CircuitBreaker",
    "CircuitOpen",
    "Discard",
    "FerruleError",
    "ManualClock",
    "PoolTimeout",
    "QueueClosed",
    "QueueEmpty",
    "QueueFull",
    "Retry",
    "__version__",
    "cached",
    "retry",
]
