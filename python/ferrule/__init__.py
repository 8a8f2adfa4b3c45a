"""ferrule: concurrency and resource-management building blocks for Python services.

Every block is thread-safe (also on free-threaded CPython), bounded in memory, and backed
by a Rust core. Import everything from here; ``ferrule._native`` is private.
"""

from ferrule._cached import cached
from ferrule._native import (
    AlreadyRegistered,
    BackendError,
    Cache,
    CacheStats,
    CircuitOpen,
    Discard,
    FerruleError,
    Lease,
    ManualClock,
    Pool,
    PoolCheckout,
    PoolStats,
    PoolTimeout,
    QueueClosed,
    QueueEmpty,
    QueueFull,
    ResourceManager,
    Usage,
    __version__,
)

__all__ = [
    "AlreadyRegistered",
    "BackendError",
    "Cache",
    "CacheStats",
    "CircuitOpen",
    "Discard",
    "FerruleError",
    "Lease",
    "ManualClock",
    "Pool",
    "PoolCheckout",
    "PoolStats",
    "PoolTimeout",
    "QueueClosed",
    "QueueEmpty",
    "QueueFull",
    "ResourceManager",
    "Usage",
    "__version__",
    "cached",
]
