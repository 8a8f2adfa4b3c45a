"""What the service's processes share when it runs with ``--redis-url``: ferrule.redis.

Without ``--redis-url`` every part is in-process and each process is a service of its
own. With it, several processes (uvicorn workers, or hosts behind one address) given the
same server and ``--redis-prefix`` act as one service; ``RedisTier`` makes their parts:

- ``RedisRateLimiter`` instead of ``RateLimiter``: a client's limit holds for the whole
  fleet, not once per process.
- ``RedisCircuitBreaker`` instead of ``CircuitBreaker``: one breaker for the upstream;
  failures seen by any process open it for all, and an open one refuses calls with no
  request to Redis.
- ``RedisBus`` over the service's ``SignalBus``: what is published through it (the
  breaker's state changes, the ``/admin/upstream`` switch) reaches every process's
  subscriptions; what the agents and the health monitor publish on the local bus stays
  in the process.
- ``RedisInvalidation`` over the cache of client settings: a change made through one
  process (``/admin/clients/{id}``) evicts that client's entry from every process's
  cache at once, instead of when its TTL ends; ``RedisClientStore`` (a Redis hash) is
  the settings' source, which every process reads on a miss.
- ``RedisRegistry`` as the fleet directory: every process's agents (id
  ``<node>/<agent>``, node, capabilities, health, a lease renewed with the local one),
  read by ``/health``. Routing stays on the local ``Registry``, whose values are the
  agent objects this process can call.

Clients: a ``redis.asyncio`` client for what a request awaits (the limiter, the
breaker's outcomes, a client's settings on a cache miss); a ``redis.Redis`` one for the
listener threads, the breaker's reads for ``/health`` and ``/metrics`` (an object with
an asyncio client cannot read synchronously, so a second object of the same name
reads the same state), the fleet directory and the admin writes: rare, short calls.
Both fail fast (no client-side retries); the limiter and the breaker then fail open
(``on_error="allow"``), a client whose settings cannot be loaded is let through
(uncached), so every request is still answered while Redis is down; the fleet
directory's writes are logged and skipped.

Keys, all under the prefix: ``rl:*`` (the clients' buckets, each gone once full again),
``breaker:upstream`` (gone once the breaker is idle), ``fleet:*`` (the directory's
entries and index sets: each process unregisters its agents when it stops, and leases
end by themselves), ``clients`` (the settings hash: data, kept). Channels (nothing
stored): ``bus:s:<signal type>`` and the like, ``clients`` (invalidations).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections import Counter
from typing import Any

import ferrule
import redis
import redis.asyncio
from ferrule.redis import (
    InvalidatingCache,
    RedisBus,
    RedisCircuitBreaker,
    RedisInvalidation,
    RedisRateLimiter,
    RedisRegistry,
)
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger("examples.agent_service")


class RedisClientStore:
    """The clients' settings, one JSON object per client in the hash ``<prefix>clients``."""

    def __init__(self, client: redis.Redis, aclient: redis.asyncio.Redis, key: str) -> None:
        self._client = client
        self._aclient = aclient
        self.key = key

    async def load(self, client_id: str) -> dict[str, Any]:
        """The client's settings (``{}`` if none); ``BackendError`` if Redis fails."""
        try:
            raw = await self._aclient.hget(self.key, client_id)
        except redis.RedisError as exc:
            raise ferrule.BackendError(f"client store: {exc}") from exc
        return dict(json.loads(raw)) if raw is not None else {}

    def save(self, client_id: str, settings: dict[str, Any]) -> None:
        self._client.hset(self.key, client_id, json.dumps(settings))


class Fleet:
    """The fleet directory: this process's agents in a ``RedisRegistry`` every process
    writes to, as ``<node>/<agent>`` with a lease the agents' heartbeats renew. Its
    writes never fail the caller: a Redis failure is logged and the write skipped (the
    next heartbeat registers the agent again)."""

    def __init__(self, registry: RedisRegistry, node: str, lease: float) -> None:
        self.registry = registry
        self.node = node
        self.lease = lease

    def entry(self, agent_id: str) -> str:
        return f"{self.node}/{agent_id}"

    def join(self, agent_id: str, capabilities: tuple[str, ...]) -> None:
        self._write(
            "join",
            self.registry.register,
            self.entry(agent_id),
            {"agent": agent_id},
            capabilities=capabilities,
            node=self.node,
            ttl=self.lease,
        )

    def beat(self, agent_id: str, capabilities: tuple[str, ...]) -> None:
        """Renew the agent's lease; join again if it lapsed."""
        if self._write("heartbeat", self.registry.heartbeat, self.entry(agent_id)) is False:
            self.join(agent_id, capabilities)

    def health(self, agent_id: str, health: str) -> None:
        self._write("update", self.registry.update, self.entry(agent_id), health=health)

    def leave(self, agent_ids: list[str]) -> None:
        for agent_id in agent_ids:
            self._write("leave", self.registry.unregister, self.entry(agent_id))

    def summary(self) -> dict[str, Any] | None:
        """Every live agent of every process, counted by node and by health (None while
        Redis cannot be reached)."""
        try:
            agents = self.registry.find()
        except ferrule.BackendError:
            return None
        return {
            "agents": len(agents),
            "nodes": dict(Counter(a.node for a in agents)),
            "health": dict(Counter(a.health for a in agents)),
        }

    def _write(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except (ferrule.BackendError, ferrule.AlreadyRegistered, KeyError) as exc:
            log.warning("fleet directory: %s failed: %r", what, exc)
            return None


class RedisTier:
    """The connections and the Redis parts of one service process (see the module)."""

    def __init__(self, url: str, prefix: str, node: str) -> None:
        self.url = url
        self.prefix = prefix
        self.node = node or f"{socket.gethostname()}:{os.getpid()}"
        timeouts: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 1.0}
        self.client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **timeouts)
        self.aclient = redis.asyncio.Redis.from_url(
            url, retry=AsyncRetry(NoBackoff(), 0), **timeouts
        )
        self.bus: RedisBus | None = None
        self.invalidation: RedisInvalidation | None = None

    def check(self) -> None:
        """Raise ``redis.ConnectionError`` now if the server cannot be reached."""
        self.client.ping()

    def limiter(self, rate: float, burst: int) -> RedisRateLimiter:
        return RedisRateLimiter(
            self.aclient, rate, burst=burst, prefix=self.prefix + "rl:", on_error="allow"
        )

    def breakers(
        self, bus: RedisBus, **args: Any
    ) -> tuple[RedisCircuitBreaker, RedisCircuitBreaker]:
        """(the breaker the calls go through, on the asyncio client; the same breaker on
        the sync client, for reading its state). Both publish the changes their own
        script calls make (a read may move an open breaker to half-open), so every
        change reaches ``bus`` once, from the process that made it."""
        prefix = self.prefix + "breaker:"
        calls = RedisCircuitBreaker(
            self.aclient, "upstream", prefix=prefix, on_error="allow", bus=bus, **args
        )
        reads = RedisCircuitBreaker(self.client, "upstream", prefix=prefix, bus=bus, **args)
        return calls, reads

    def signal_bus(self, local: ferrule.SignalBus) -> RedisBus:
        self.bus = RedisBus(self.client, prefix=self.prefix + "bus:", local=local)
        return self.bus

    def fleet(self, lease: float) -> Fleet:
        registry = RedisRegistry(self.client, prefix=self.prefix + "fleet:", ttl=lease)
        return Fleet(registry, self.node, lease)

    def client_store(self) -> RedisClientStore:
        return RedisClientStore(self.client, self.aclient, self.prefix + "clients")

    def invalidating(self, cache: ferrule.Cache) -> InvalidatingCache:
        """``cache`` wrapped so that its writes evict the key in every other process;
        waits until the listener is subscribed."""
        self.invalidation = RedisInvalidation(self.client, self.prefix + "clients", on_error="log")
        return self.invalidation.wrap(cache)

    def close(self) -> None:
        """Stop the listener threads and close the sync client (blocks briefly: call it
        off the event loop); ``aclose`` closes the asyncio one."""
        if self.bus is not None:
            self.bus.close()
        if self.invalidation is not None:
            self.invalidation.close()
        self.client.close()

    async def aclose(self) -> None:
        await self.aclient.aclose()
