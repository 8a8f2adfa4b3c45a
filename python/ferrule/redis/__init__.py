"""The distributed tier: a rate limiter, an agent registry and a circuit breaker whose
state lives in Redis.

``RedisRateLimiter``, ``RedisRegistry`` and ``RedisCircuitBreaker`` mirror
:class:`ferrule.RateLimiter`, :class:`ferrule.Registry` and
:class:`ferrule.CircuitBreaker` for services that run as many processes or hosts. Every
decision or change is ONE server-side Lua script (sent once with ``SCRIPT LOAD``
semantics, then called by ``EVALSHA``; reloaded when the server answers ``NOSCRIPT``), so
what one call reads and what it writes can never interleave with another process's
call: the server runs scripts one at a time. The scripts are the package's
``lua/*.lua`` files.

The arguments of both classes are checked by the native module with the in-process
classes' own rules and messages (``ferrule._native``'s private ``_gcra_params``,
``_registration``, ``_criteria``, ... in ``src/py/redis.rs``), so a bad argument gets the
same error from ``RateLimiter`` and ``RedisRateLimiter``, or from ``Registry`` and
``RedisRegistry``; the GCRA parameters and a ``where``'s evaluation come from there too.

Rate limiter (GCRA, as in the in-process limiter):
  * a key's state is its theoretical arrival time ``tat``, stored as
    ``"<unix seconds>:<nanoseconds>"`` so that Lua's doubles never hold an absolute time
    in nanoseconds (which would exceed 2^53);
  * the script reads the server's ``TIME`` (never the client's clock), computes the debt
    ``max(tat - now, 0)`` exactly (all relative quantities stay below 2^52 ns, which is
    why the window ``burst * per / rate`` is capped at 52 days here), and decides with
    the same integer arithmetic as ``ferrule.RateLimiter`` (emission interval rounded up
    to a whole nanosecond);
  * a grant writes ``tat`` with an expiry (``PX``) equal to the decision's
    ``reset_after``, rounded up to a millisecond: a key disappears exactly when its
    bucket is full again, which is what a missing key means. Denials write nothing.

Registry:
  * an entry is a hash ``<prefix>e:<id>``; its index rows are the sets
    ``<prefix>c:<capability>``, ``<prefix>n:<node>`` and ``<prefix>h:<health>``; the
    sorted set ``<prefix>d`` holds every entry's lease deadline (server microseconds);
  * register, register_many, update, unregister and heartbeat are each one script that
    changes the entry, its rows and its deadline together;
  * a query is one read-only script: ``SINTER`` of the index sets (or the live range of
    the deadline set), then each candidate is checked against its own hash (lease not
    over, fields equal to the criteria), so a result never holds an expired agent or one
    that did not match when it was read; ``where`` is evaluated in the client afterwards
    (conditions by the native module, as ``Registry.find`` evaluates them);
  * reclamation: ``expire()`` sweeps the deadline set; every write also sweeps a few
    expired entries; and every key carries an expiry of at least its members' lease
    deadline plus one lease of grace, so after everything goes idle no key stays behind
    even if nobody ever calls ``expire()``. Redis deletes a set the moment it is empty.

Circuit breaker:
  * one hash ``<prefix><name>`` (prefix ``ferrule:breaker:``) holds the state, its
    generation (bumped by every change and by ``reset``), the end of an open period, the
    run of failures or the failure-rate window (20 time buckets, or a ring of the last
    ``window_calls`` outcomes with running counts) and the half-open probes, each a
    field ``p:<token>`` holding its lease deadline;
  * an admission the process cannot decide from its view, each outcome and each read or
    change is one script run (``lua/breaker.lua``) on the server's clock; an outcome
    counts only if its permit's generation is the current one (and a probe's only if
    its lease was not reclaimed), so stale views never miscount;
  * every write sets the hash's expiry to ``reset_timeout + probe_timeout`` (plus the
    window of a time window) past now, or past the end of an open period; a forced
    state has no expiry. A consecutive-rule breaker that only succeeds writes nothing.

Cache invalidation: ``RedisInvalidation(client, channel).wrap(cache)`` publishes each
write's keys on a Pub/Sub channel and evicts other processes' writes locally (see
``_invalidation``); nothing is stored in Redis.

Importing ``ferrule`` never imports this package; it needs the ``redis`` package
(``pip install 'ferrule[redis]'``) and a Redis >= 6.2 server.
"""

from ferrule.redis._breaker import BreakerOnError as BreakerOnError
from ferrule.redis._breaker import RedisBreakerStats, RedisCircuitBreaker
from ferrule.redis._bus import BusOnError as BusOnError
from ferrule.redis._bus import Codec, JsonCodec, PickleCodec, RedisBus
from ferrule.redis._bus import Mode as Mode
from ferrule.redis._invalidation import InvalidatingCache, KeyCodec, RedisInvalidation
from ferrule.redis._ratelimit import OnError as OnError
from ferrule.redis._ratelimit import RedisRateLimiter
from ferrule.redis._registry import RedisAgent, RedisRegistry

__all__ = [
    "Codec",
    "InvalidatingCache",
    "JsonCodec",
    "KeyCodec",
    "PickleCodec",
    "RedisAgent",
    "RedisBreakerStats",
    "RedisBus",
    "RedisCircuitBreaker",
    "RedisInvalidation",
    "RedisRateLimiter",
    "RedisRegistry",
]

# The public classes report the import path users write (reprs, pickling, docs).
for _cls in (
    Codec,
    InvalidatingCache,
    JsonCodec,
    KeyCodec,
    PickleCodec,
    RedisAgent,
    RedisBreakerStats,
    RedisBus,
    RedisCircuitBreaker,
    RedisInvalidation,
    RedisRateLimiter,
    RedisRegistry,
):
    _cls.__module__ = __name__
del _cls
