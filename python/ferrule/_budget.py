"""asyncio form of ``ResourceManager.acquire``.

The native manager does the accounting; this coroutine waits on an asyncio future that
the native side resolves (through ``loop.call_soon_threadsafe``) when room appears, so a
waiting coroutine costs no thread. It also wakes at least once per native wait slice
(``_WAIT_SLICE``) to reclaim expired leases, whose deadlines may be driven by a manual
clock, and to see room given back by a lease that was garbage-collected.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

from ferrule._native import _WAIT_SLICE, PoolTimeout
from ferrule._queue import _wake

if TYPE_CHECKING:
    from ferrule._native import Lease, ResourceManager

__all__ = ["acquire_async"]


async def acquire_async(
    manager: ResourceManager,
    name: str,
    amount: int,
    timeout: float | None,
    ttl: float | None,
) -> Lease:
    """See ``ResourceManager.acquire_async``; arguments were checked by the caller."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        fut: asyncio.Future[None] = loop.create_future()
        token = manager._add_waker(name, functools.partial(loop.call_soon_threadsafe, _wake, fut))
        try:
            # Re-try after registering, so a release between the two is not missed.
            lease = manager.try_acquire(name, amount, ttl=ttl)
            if lease is not None:
                return lease
            wait = _WAIT_SLICE
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    raise PoolTimeout(f"no room for {amount} of '{name}' within {timeout} s")
                wait = min(wait, left)
            await asyncio.wait({fut}, timeout=wait)
        finally:
            manager._remove_waker(name, token)
            fut.cancel()
