"""ferrule: concurrency and resource-management building blocks for Python services.

Every block is thread-safe (also on free-threaded CPython), bounded in memory, and backed
by a Rust core. Import everything from here; ``ferrule._native`` is private.
"""

from ferrule._cached import cached
from ferrule._health import HealthMonitor
from ferrule._native import (
    Agent,
    AlreadyRegistered,
    BackendError,
    BreakerStats,
    BusStats,
    Cache,
    CacheStats,
    CircuitBreaker,
    CircuitOpen,
    Decision,
    Discard,
    ErrorRecord,
    ErrorStore,
    ErrorStoreStats,
    FerruleError,
    Lease,
    LimiterStats,
    ManualClock,
    Metrics,
    OpStats,
    Pool,
    PoolCheckout,
    PoolStats,
    PoolTimeout,
    QueueClosed,
    QueueEmpty,
    QueueFull,
    QueueStats,
    RateLimited,
    RateLimiter,
    Registry,
    ResourceManager,
    Signal,
    SignalBus,
    Subscription,
    SubscriptionStats,
    TaskPoolStats,
    Timer,
    Usage,
    WorkQueue,
    __version__,
)
from ferrule._retry import Attempt, Retry, RetryState, RetryStats, retry
from ferrule._taskpool import TaskPool

__all__ = [
    "Agent",
    "AlreadyRegistered",
    "Attempt",
    "BackendError",
    "BreakerStats",
    "BusStats",
    "Cache",
    "CacheStats",
    "CircuitBreaker",
    "CircuitOpen",
    "Decision",
    "Discard",
    "ErrorRecord",
    "ErrorStore",
    "ErrorStoreStats",
    "FerruleError",
    "HealthMonitor",
    "Lease",
    "LimiterStats",
    "ManualClock",
    "Metrics",
    "OpStats",
    "Pool",
    "PoolCheckout",
    "PoolStats",
    "PoolTimeout",
    "QueueClosed",
    "QueueEmpty",
    "QueueFull",
    "QueueStats",
    "RateLimited",
    "RateLimiter",
    "Registry",
    "ResourceManager",
    "Retry",
    "RetryState",
    "RetryStats",
    "Signal",
    "SignalBus",
    "Subscription",
    "SubscriptionStats",
    "TaskPool",
    "TaskPoolStats",
    "Timer",
    "Usage",
    "WorkQueue",
    "__version__",
    "cached",
    "retry",
]

# Every public name reports the import path users write (reprs, pickling errors, docs).
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "ferrule") != "ferrule":
        _obj.__module__ = "ferrule"
del _name, _obj
