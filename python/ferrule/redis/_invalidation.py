"""Cache invalidation across processes over Redis Pub/Sub.

``RedisInvalidation(client, channel)`` is the transport; ``invalidation.wrap(cache)``
gives an ``InvalidatingCache``: the same reads as the wrapped ``ferrule.Cache`` (its
``get``, ``peek``, ``get_many``, ``get_or_set`` and ``get_or_set_async`` are the cache's
own bound methods, so a read costs exactly what it costs without invalidation), and
writes that, after changing the local cache, publish one message on the channel.

Structure and protocol:

- A message is JSON ``{"o": <origin>, "k": [<key>, ...]}`` (those keys changed) or
  ``{"o": <origin>, "c": true}`` (cleared). ``origin`` is a random id per
  ``RedisInvalidation``: the listener skips its own messages, so a process never evicts
  the value it has just written.
- Keys cross as tagged JSON (``KeyCodec``): str, int, float, bool and None as
  themselves, bytes as ``{"b": base64}``, tuples as ``{"t": [...]}``, nested. A key
  outside these raises TypeError at the write, *before* the local cache changes.
- One daemon thread per ``RedisInvalidation`` (``ferrule-invalidation``) holds a Pub/Sub
  connection: it reads with a short timeout so that ``close()``, the collection of the
  wrapper, or the interpreter's exit ends it promptly. It calls the cache's own
  ``delete``/``clear`` (native, no lock of ours is held).
- Missed messages: Pub/Sub keeps nothing for a disconnected subscriber, so after the
  listener loses its connection it reconnects with capped exponential backoff and, once
  subscribed again, clears the local cache: it may have missed invalidations meanwhile.
  The cache is also cleared when the listener first subscribes (``wrap`` waits for that,
  up to ``connect_timeout``), so nothing read before is trusted.
- Ownership: the wrapper owns the ``RedisInvalidation`` and its thread; the thread holds
  the wrapper weakly (a collected wrapper ends it), and the cache strongly only through
  the wrapper.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import secrets
import threading
import weakref
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, Literal

from ferrule._native import Cache, CacheStats
from ferrule.redis._common import RedisError, SyncClient, backend, check_client, is_async

__all__ = ["InvalidatingCache", "KeyCodec", "RedisInvalidation"]

log = logging.getLogger("ferrule.redis")

OnPublishError = Literal["raise", "log"]
_MISSING: Any = object()


class KeyCodec:
    """Cache keys to and from JSON-safe values: str, int, float, bool and None as
    themselves, bytes as ``{"b": <base64>}``, tuples as ``{"t": [...]}`` (nested). Anything
    else raises TypeError naming the key's type."""

    def encode(self, key: object) -> Any:
        """``key`` as tagged JSON (TypeError for a key type it cannot carry)."""
        if key is None or type(key) in (str, int, float, bool):
            return key
        if type(key) is bytes:
            return {"b": base64.b64encode(key).decode("ascii")}
        if type(key) is tuple:
            return {"t": [self.encode(k) for k in key]}
        raise TypeError(
            "an invalidating cache's keys must be str, int, float, bool, None, bytes or "
            f"tuples of them, not {type(key).__name__!r}"
        )

    def decode(self, value: Any) -> Hashable:
        """The key a value made by ``encode`` stands for."""
        if value is None or type(value) in (str, int, float, bool):
            return value  # type: ignore[no-any-return]
        if type(value) is dict and len(value) == 1:
            if type(b := value.get("b")) is str:
                return base64.b64decode(b, validate=True)  # binascii.Error is a ValueError
            if type(t := value.get("t")) is list:
                return tuple(self.decode(v) for v in t)
        raise ValueError(f"not an encoded key: {value!r:.80}")


class RedisInvalidation:
    """The channel an :class:`InvalidatingCache` publishes its writes on and listens to.

    ``client`` is a synchronous ``redis.Redis``; ``channel`` a non-empty str (every
    process whose caches must agree uses the same one, one channel per kind of cached
    data). ``on_error`` says what a write does when the publish fails after the local
    change: ``"raise"`` (BackendError: the other processes were not told) or ``"log"``
    (logged on the ``ferrule.redis`` logger; the other processes keep their entry until
    it expires). ``reconnect`` is the listener's backoff ``(first, max)`` in seconds;
    ``connect_timeout`` how long :meth:`wrap` waits for the first subscription.
    """

    def __init__(
        self,
        client: SyncClient,
        channel: str,
        *,
        on_error: OnPublishError = "raise",
        reconnect: tuple[float, float] = (0.05, 2.0),
        connect_timeout: float = 5.0,
    ) -> None:
        check_client(client)
        if is_async(client):
            raise TypeError("client must be a synchronous redis.Redis (the listener is a thread)")
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"channel must be a non-empty str, not {channel!r}")
        if on_error not in ("raise", "log"):
            raise ValueError(f"on_error must be 'raise' or 'log', not {on_error!r}")
        first, cap = _backoff(reconnect)
        if not (isinstance(connect_timeout, (int, float)) and 0 < connect_timeout < 3600):
            raise ValueError(
                f"connect_timeout must be in (0, 3600) seconds, not {connect_timeout!r}"
            )
        self._client = client
        self._channel = channel
        self._on_error: OnPublishError = on_error
        self._backoff = (first, cap)
        self._connect_timeout = float(connect_timeout)
        self._origin = secrets.token_hex(8)
        # The listener's own channel: close() publishes there to end its wait at once.
        self._wake = f"{channel}:wake:{self._origin}"
        self._codec = KeyCodec()
        self._lock = threading.Lock()
        self._wrapped = False
        self._closed = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self.reconnects = 0
        """How many times the listener lost its connection and subscribed again (each
        time clearing the local cache)."""

    @property
    def channel(self) -> str:
        """The Pub/Sub channel the invalidations travel on."""
        return self._channel

    def __repr__(self) -> str:
        return f"RedisInvalidation(channel={self._channel!r}, on_error={self._on_error!r})"

    def wrap(self, cache: Cache) -> InvalidatingCache:
        """An :class:`InvalidatingCache` over ``cache`` (a ``ferrule.Cache``), listening
        on this channel from now on. One cache per ``RedisInvalidation``. Raises
        BackendError if the listener cannot subscribe within ``connect_timeout``."""
        if not isinstance(cache, Cache):
            raise TypeError(f"cache must be a ferrule.Cache, not {type(cache).__name__!r}")
        with self._lock:
            if self._wrapped:
                raise ValueError("this RedisInvalidation already serves a cache")
            self._wrapped = True
        wrapper = InvalidatingCache(cache, self)
        ref = weakref.ref(wrapper)
        self._thread = threading.Thread(
            target=_listen, args=(self, ref), name="ferrule-invalidation", daemon=True
        )
        self._thread.start()
        if not self._subscribed.wait(self._connect_timeout):
            # Not close(): that waits for the listener, which may be inside the client's
            # own connection retries for longer than connect_timeout. It ends once they do.
            self._closed.set()
            raise backend(RedisError(f"could not subscribe to {self._channel!r} in time"))
        return wrapper

    def close(self) -> None:
        """Stop listening (the cache stays as it is); idempotent."""
        self._closed.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            if t.is_alive():
                # Best effort: a server that is down leaves the listener on its backoff
                # wait, which the closed event already ends.
                with contextlib.suppress(RedisError, OSError):
                    self._client.publish(self._wake, b"")
            t.join(timeout=5.0)

    # -- publishing -----------------------------------------------------------------

    def _encode_keys(self, keys: Iterable[object]) -> list[Any]:
        return [self._codec.encode(k) for k in keys]

    def _publish(self, body: dict[str, Any]) -> None:
        body["o"] = self._origin
        try:
            self._client.publish(self._channel, json.dumps(body, separators=(",", ":")))
        except RedisError as e:
            if self._on_error == "raise":
                raise backend(e) from e
            log.warning("invalidation on %r not published: %s", self._channel, e)


def _backoff(reconnect: object) -> tuple[float, float]:
    ok = (
        isinstance(reconnect, tuple)
        and len(reconnect) == 2
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in reconnect)
    )
    if not ok:
        raise TypeError(f"reconnect must be a (first, max) pair of seconds, not {reconnect!r}")
    first, cap = float(reconnect[0]), float(reconnect[1])  # type: ignore[index]
    if not (0 < first <= cap <= 60):
        raise ValueError(f"reconnect must satisfy 0 < first <= max <= 60, not {reconnect!r}")
    return first, cap


# Seconds a listener read waits: the bound on how long close() or exit waits for it.
_POLL = 0.1


def _listen(inv: RedisInvalidation, ref: weakref.ref[InvalidatingCache]) -> None:
    """The listener thread: subscribe, apply other processes' messages, reconnect."""
    delay = inv._backoff[0]
    while not inv._closed.is_set():
        pubsub = inv._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(inv._channel, inv._wake)
            # Anything cached before this subscription may have missed an invalidation.
            if (w := ref()) is None:
                return
            w._cache.clear()
            del w
            inv._subscribed.set()
            delay = inv._backoff[0]
            channels = (inv._channel, inv._channel.encode())  # as the client decodes or not
            while not inv._closed.is_set():
                msg = pubsub.get_message(timeout=_POLL)
                if (w := ref()) is None:
                    return
                if msg is not None and msg.get("type") == "message" and msg["channel"] in channels:
                    _apply(inv, w._cache, msg["data"])
                del w
            return
        except RedisError as e:
            if inv._closed.is_set():
                return
            log.warning("invalidation listener on %r lost its connection: %s", inv._channel, e)
            inv.reconnects += 1
        except Exception:
            # A malformed message must not end the listener; it is logged and skipped
            # by _apply, so this is a bug or an interpreter shutting down.
            if inv._closed.is_set():
                return
            log.exception("invalidation listener on %r failed", inv._channel)
            inv.reconnects += 1
        finally:
            with contextlib.suppress(Exception):  # the connection is being dropped anyway
                pubsub.close()
        if inv._closed.wait(delay):
            return
        delay = min(delay * 2, inv._backoff[1])


def _apply(inv: RedisInvalidation, cache: Cache, data: Any) -> None:
    try:
        body = json.loads(data)
        if body.get("o") == inv._origin:
            return
        if body.get("c"):
            cache.clear()
            return
        for key in body["k"]:
            cache.delete(inv._codec.decode(key))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        log.warning("malformed invalidation on %r ignored: %s", inv._channel, e)


class InvalidatingCache:
    """A ``ferrule.Cache`` whose writes evict the same keys in every other process's
    cache on the same :class:`RedisInvalidation` channel. Made by
    :meth:`RedisInvalidation.wrap`.

    Reads (``get``, ``peek``, ``get_many``, ``get_or_set``, ``get_or_set_async``, ``in``,
    ``len``) are the cache's own and stay local. ``set``, ``set_many``, ``delete``,
    ``pop``, ``clear`` and item assignment/deletion change the local cache, then publish
    one message (one per call, whatever the number of keys); the other processes delete
    those keys (or clear) when it arrives, typically well under a millisecond later on a
    LAN. ``get_or_set`` does not publish: the value it stores came from the source every
    process reads. ``cache`` is the wrapped ``ferrule.Cache``.
    """

    __slots__ = (
        "__weakref__",
        "_cache",
        "_inv",
        "get",
        "get_many",
        "get_or_set",
        "get_or_set_async",
        "peek",
    )

    get: Callable[..., Any]
    peek: Callable[..., Any]
    get_many: Callable[[Iterable[Hashable]], dict[Any, Any]]
    get_or_set: Callable[..., Any]
    get_or_set_async: Callable[..., Awaitable[Any]]

    def __init__(self, cache: Cache, invalidation: RedisInvalidation) -> None:
        """Use :meth:`RedisInvalidation.wrap`, which also starts the listener."""
        if not isinstance(cache, Cache):
            raise TypeError(f"cache must be a ferrule.Cache, not {type(cache).__name__!r}")
        if not isinstance(invalidation, RedisInvalidation):
            raise TypeError(
                f"invalidation must be a RedisInvalidation, not {type(invalidation).__name__!r}"
            )
        self._cache = cache
        self._inv = invalidation
        # The cache's own bound methods: a read costs what it costs unwrapped.
        self.get = cache.get
        self.peek = cache.peek
        self.get_many = cache.get_many
        self.get_or_set = cache.get_or_set
        self.get_or_set_async = cache.get_or_set_async

    @property
    def cache(self) -> Cache:
        """The wrapped cache (its writes here are not published)."""
        return self._cache

    @property
    def invalidation(self) -> RedisInvalidation:
        """The RedisInvalidation that publishes and listens."""
        return self._inv

    def set(self, key: Hashable, value: Any, *, ttl: float | None = None) -> None:
        """``cache.set``, then evict ``key`` elsewhere."""
        encoded = self._inv._encode_keys((key,))
        self._cache.set(key, value, ttl=ttl)
        self._inv._publish({"k": encoded})

    def set_many(self, mapping: Mapping[Any, Any], *, ttl: float | None = None) -> None:
        """``cache.set_many``, then evict every key of ``mapping`` elsewhere (one message)."""
        items = dict(mapping)
        encoded = self._inv._encode_keys(items)
        self._cache.set_many(items, ttl=ttl)
        if encoded:
            self._inv._publish({"k": encoded})

    def delete(self, key: Hashable) -> bool:
        """``cache.delete``, then evict ``key`` elsewhere (also when it was not here)."""
        encoded = self._inv._encode_keys((key,))
        found = self._cache.delete(key)
        self._inv._publish({"k": encoded})
        return found

    def pop(self, key: Hashable, default: Any = _MISSING) -> Any:
        """``cache.pop``, then evict ``key`` elsewhere."""
        encoded = self._inv._encode_keys((key,))
        try:
            value = self._cache.pop(key) if default is _MISSING else self._cache.pop(key, default)
        finally:
            self._inv._publish({"k": encoded})
        return value

    def clear(self) -> None:
        """``cache.clear``, then clear every other process's cache on the channel."""
        self._cache.clear()
        self._inv._publish({"c": True})

    def close(self) -> None:
        """Stop listening; the wrapper's writes still publish."""
        self._inv.close()

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: Hashable) -> None:
        encoded = self._inv._encode_keys((key,))
        try:
            del self._cache[key]
        finally:
            self._inv._publish({"k": encoded})

    def __getitem__(self, key: Hashable) -> Any:
        return self._cache[key]

    def __contains__(self, key: object) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cache)

    def stats(self) -> CacheStats:
        """The wrapped cache's ``stats()``."""
        return self._cache.stats()

    def __repr__(self) -> str:
        return f"InvalidatingCache({self._cache!r}, channel={self._inv.channel!r})"

    def __del__(self) -> None:
        self._inv._closed.set()
