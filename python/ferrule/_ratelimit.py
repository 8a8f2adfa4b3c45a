"""Python helpers of ``RateLimiter``.

``acquire_async`` is the asyncio glue: no thread is parked per waiter. The native method
validates its arguments and returns the coroutine made here. The coroutine asks the
limiter for a decision and, when refused, sleeps on the event loop for exactly the
``retry_after`` the decision reported (in naps of ``nap`` seconds when the limiter runs on
a ManualClock, whose time does not pass by itself), then asks again.

``_equal`` is how the native limiter compares keys that may run user code: called through
the limiter's exit guard, and never while it holds a lock.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ferrule._native import RateLimiter, _Key

__all__ = ["acquire_async"]


def _equal(stored: object, key: object) -> bool:
    """``stored == key`` as a dict compares keys: the stored key on the left, the result
    made a bool here (its ``__bool__`` may be user code too)."""
    return bool(stored == key)


async def acquire_async(
    limiter: RateLimiter,
    key: _Key,
    cost: int,
    timeout: float | None,
    nap: float | None,
) -> bool:
    """Wait until ``limiter`` grants ``cost`` tokens on ``key``; False on timeout, or at
    once when the tokens cannot be there before it."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        decision = limiter.check(key, cost)
        if decision.allowed:
            return True
        wait = decision.retry_after
        if deadline is not None and wait > deadline - loop.time():
            return False
        await asyncio.sleep(wait if nap is None else min(wait, nap))
