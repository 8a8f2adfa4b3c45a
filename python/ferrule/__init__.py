"""ferrule: concurrency and resource-management building blocks for Python services.

Every block is thread-safe (also on free-threaded CPython), bounded in memory, and backed
by a Rust core. Import everything from here; ``ferrule._native`` is private.
"""

from ferrule._cached import cached
from ferrule._native import (
    Agent,
    AlreadyRegistered,
    BackendError,
    BreakerStats,
    Cache,
    CacheStats,
    CircuitBreaker,
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
    Signal,
    SignalBus,
    Subscription,
    SubscriptionStats,
    TaskPoolStats,
    WorkQueue,
    __version__,
)
from ferrule._pool import TaskPool
from ferrule._resilience import Retry, retry

__all__ = [
    "Agent",
    "AlreadyRegistered",
    "BackendError",
    "BreakerStats",
    "Cache",
    "CacheStats",
    "CircuitBreaker",
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
    "Retry",
    "Signal",
    "SignalBus",
    "Subscription",
    "SubscriptionStats",
    "TaskPool",
    "TaskPoolStats",
    "WorkQueue",
    "__version__",
    "cached",
    "retry",
]
