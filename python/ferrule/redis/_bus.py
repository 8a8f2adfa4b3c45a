"""``RedisBus``: ``ferrule.SignalBus`` across processes, with Redis carrying the signals.

Structure. Redis only carries signals between processes; a ``ferrule.SignalBus`` delivers
them in each process, so mailboxes, overflow policies, weak, async and owned handlers
are SignalBus's own:

- ``publish`` validates the type (by the native router's rule, on an empty SignalBus),
  encodes the data with the codec, reads the wall clock once, sends ONE request
  (``PUBLISH`` in broadcast mode, ``XADD ... MAXLEN ~`` in stream mode), then publishes
  on the local bus. A signal a bus sent itself is skipped when it comes back, so the
  publisher's own subscriptions get it exactly once (by its origin: 8 random bytes per
  RedisBus).
- Wire format: the type is the channel name (broadcast) or the field ``t`` (stream); the
  data, encoded by the codec, follows a 24-byte head (``_HEAD``: origin, sequence, the
  publish time as a big-endian double) or is the field ``d``, beside the fields ``ts``
  (the publish time, ``repr`` of a float) and ``o`` (the origin). Every process delivers
  through ``SignalBus._publish_at`` with that publish time, the publisher's own
  subscriptions included, so a ``Signal`` has one timestamp in every process (and in a
  replay). A message whose data or time cannot be read is logged and skipped.
- One listener thread per RedisBus (a daemon, started by the first ``subscribe``) turns
  what the server sends into ``local._publish_at`` calls. Broadcast: one Pub/Sub
  connection, ``SUBSCRIBE``/``PSUBSCRIBE`` to what the local bus's subscriptions need
  (reconciled from ``local.subscriptions()`` at each subscribe and every second).
  Stream: ``XREAD BLOCK`` from the position it has delivered up to.
- A stream subscription with ``group=`` or ``start_id=`` has its own reader thread and
  its own private SignalBus with that one subscription (a group's share of the signals
  must reach that subscription only, a replay must not reach the others). A group reader
  fetches a batch (``XREADGROUP``, or ``XAUTOCLAIM`` of signals left unacknowledged for
  ``claim_after``) only once the previous batch is handled, so the mailbox always has
  room and no signal is dropped by it; the handler is wrapped so that each signal's
  entry id is recorded as handled when the handler returns, and the reader ``XACK``s the
  batch before it fetches the next one.

Keys (everything starts with ``prefix``): broadcast mode stores nothing; the channels are
``<prefix>s:<signal type>`` and ``<prefix>w:<bus origin>`` (wakes the listener). Stream
mode keeps one stream, ``<prefix>stream``, for every signal type: one ``XADD`` per
publish, one total order and one id space (``start_id`` means one thing), and a pattern
whose first segment is a wildcard needs no discovery of streams; each reader filters
with the local router. Groups are ``<group>/<pattern>`` on that stream.

Ownership and threads. Every thread holds only a weak reference to the object it serves
(the RedisBus, or the private subscription's record), plus plain data (the client, names,
an Event), and dereferences it per message, never across a blocking read: a bus
collected with a cycle through a handler, or dropped without ``close()``, stops its
threads (a ``weakref.finalize`` sets their stop event; a dead reference stops them too).
Every wait is a slice of at most ``_POLL``/``_BLOCK_MS`` or an interruptible Event wait,
so ``close()`` ends them promptly; an exit hook stops every live bus's threads before
the interpreter joins its threads. Reconnection: a failed read closes the connection and
waits ``backoff``, doubling up to ``max_backoff`` (with jitter), then reconnects and
resubscribes (broadcast) or resumes from its position (stream; a group recreated
after a server restart lost it starts after the last id this reader delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import math
import os
import pickle
import random
import struct
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import redis
from redis.exceptions import ResponseError

from ferrule._native import (
    _WAIT_SLICE,
    BackendError,
    Signal,
    SignalBus,
    Subscription,
    _prefix,
)
from ferrule._queue import is_async_callable
from ferrule.redis._common import RedisError, backend

__all__ = ["BusOnError", "Codec", "JsonCodec", "Mode", "PickleCodec", "RedisBus"]

logger = logging.getLogger("ferrule.redis.bus")

Mode = Literal["broadcast", "stream"]
BusOnError = Literal["raise", "local"]

_POLL = 0.25  # s a Pub/Sub listener waits on its socket before it checks its stop event
_BLOCK_MS = 500  # ms a stream read blocks on the server
_RECONCILE = 1.0  # s between reconciliations of a broadcast listener's channels
_BATCH = 16  # signals a group reader fetches at most at once
_JOIN = 2.0  # s close() waits for each thread
_MAX_I64 = 2**63 - 1  # Redis's integer arguments
_HEAD = struct.Struct("!8sQd")  # origin, sequence, timestamp: a Pub/Sub message's head
_GLOB = str.maketrans({c: "\\" + c for c in "*?[]\\"})

# Validates signal types by SignalBus's own rule and messages: it has no subscription,
# so its publish only checks the type and counts.
_CHECK = SignalBus()


@runtime_checkable
class Codec(Protocol):
    """What ``RedisBus(codec=...)`` takes: ``encode(obj) -> bytes`` and
    ``decode(bytes) -> obj``. Only a signal's data goes through it; its type and
    timestamp travel beside it.

    >>> import zlib
    >>> class Compressed:
    ...     def encode(self, obj: object) -> bytes:
    ...         return zlib.compress(JsonCodec().encode(obj))
    ...     def decode(self, data: bytes) -> object:
    ...         return JsonCodec().decode(zlib.decompress(data))
    >>> isinstance(Compressed(), Codec)
    True
    """

    def encode(self, obj: Any) -> bytes:
        """The bytes that carry ``obj``."""
        ...

    def decode(self, data: bytes) -> Any:
        """The object ``data`` carries."""
        ...


class JsonCodec:
    """The default codec: compact JSON in UTF-8. Data must be JSON-serialisable
    (``publish`` raises ``TypeError`` before sending anything otherwise) and comes back
    as JSON gives it: tuples as lists, dict keys as str.

    >>> JsonCodec().encode({"id": 7, "tags": ("a", "b")})
    b'{"id":7,"tags":["a","b"]}'
    >>> JsonCodec().decode(b'{"id":7}')
    {'id': 7}
    """

    __slots__ = ()

    def encode(self, obj: Any) -> bytes:
        """``obj`` as compact UTF-8 JSON."""
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def decode(self, data: bytes) -> Any:
        """The object the JSON in ``data`` stands for."""
        return json.loads(data)

    def __repr__(self) -> str:
        return "JsonCodec()"


class PickleCodec:
    """Any picklable data, crossing as it is (tuples, sets, dataclasses). Unpickling runs
    code chosen by whoever wrote the message: use it only when every process that can
    publish on the server is trusted.

    >>> PickleCodec().decode(PickleCodec().encode({"when": (1, 2)}))
    {'when': (1, 2)}
    """

    __slots__ = ("protocol",)

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        if isinstance(protocol, bool) or not isinstance(protocol, int):
            raise TypeError(f"protocol must be an int, not '{type(protocol).__name__}'")
        if not -1 <= protocol <= pickle.HIGHEST_PROTOCOL:
            raise ValueError(f"protocol must be -1..{pickle.HIGHEST_PROTOCOL}, got {protocol}")
        self.protocol = protocol

    def encode(self, obj: Any) -> bytes:
        """``obj`` pickled; ``TypeError`` (chained) for an object pickle refuses, as
        :class:`JsonCodec` refuses what JSON cannot hold."""
        try:
            return pickle.dumps(obj, protocol=self.protocol)
        except (pickle.PicklingError, AttributeError) as e:
            raise TypeError(f"cannot pickle {type(obj).__name__!r} object: {e}") from e

    def decode(self, data: bytes) -> Any:
        """The object ``data`` pickles; ``ValueError`` (chained) if it is not a pickle
        this process can load."""
        try:
            return pickle.loads(data)
        except Exception as e:
            raise ValueError(f"data is not a pickle this process can load: {e}") from e

    def __repr__(self) -> str:
        return f"PickleCodec(protocol={self.protocol})"


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not '{type(value).__name__}'")
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return v


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """The entries of an XREAD/XREADGROUP reply (RESP2 list or RESP3 dict) of one stream."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [e for entries in reply.values() for e in (entries[0] if entries else [])]
    return [e for _key, entries in reply for e in entries]


def _text_id(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def _later(a: str, b: str) -> str:
    """The later of two stream ids."""
    ka = tuple(int(x) for x in a.split("-"))
    kb = tuple(int(x) for x in b.split("-"))
    return a if ka >= kb else b


class _Backoff:
    """Reconnection delays: ``first``, doubling up to ``most``, each drawn in [d/2, d]."""

    __slots__ = ("delay", "first", "most")

    def __init__(self, first: float, most: float) -> None:
        self.first = self.delay = first
        self.most = most

    def next(self) -> float:
        d = self.delay
        self.delay = min(self.delay * 2, self.most)
        return d / 2 + random.random() * d / 2

    def reset(self) -> None:
        self.delay = self.first


class _Link:
    """What a bus's listener thread shares with the bus: plain data, no user object."""

    def __init__(self, client: redis.Redis, prefix: str, origin: bytes, backoff: _Backoff) -> None:
        self.client = client
        self.prefix = prefix
        self.origin = origin
        self.backoff = backoff
        self.stop = threading.Event()
        self.kick = threading.Event()  # cuts a reconnection wait short (set by subscribe)
        self.cond = threading.Condition()
        # Broadcast: (is_pattern, name) the connection is subscribed to, those the server
        # confirmed, and reconciliation requests (requested) and completions (done).
        self.subscribed: set[tuple[bool, bytes]] = set()
        self.confirmed: set[bytes] = set()
        self.requested = 0
        self.done = 0
        self.connected = False
        # Stream: the id delivered up to.
        self.position = "0-0"
        self.thread: threading.Thread | None = None

    @property
    def wake(self) -> bytes:
        return f"{self.prefix}w:".encode() + self.origin.hex().encode()

    def nap(self) -> None:
        """Waits before reconnecting: the next backoff delay, or until kicked."""
        self.kick.wait(self.backoff.next())
        self.kick.clear()


def _route(prefix: str, pattern: str) -> tuple[bool, bytes]:
    """The Redis channel (False) or glob pattern (True) that carries every signal type
    ``pattern`` can match: the literal segments before its first wildcard, then ``*``.
    The glob may match more (``a.*`` matches ``a.b.c``); the local router filters."""
    segs = pattern.split(".")
    head: list[str] = []
    for s in segs:
        if s in ("*", "#"):
            break
        head.append(s)
    base = f"{prefix}s:" + ".".join(head)
    if len(head) == len(segs):
        return False, base.encode()
    glob = base.translate(_GLOB)
    if head and segs[len(head)] == "*":
        glob += "."
    return True, (glob + "*").encode()


class RedisBus:
    """``ferrule.SignalBus`` across processes: a signal published through any RedisBus
    with the same ``prefix`` on the same server reaches the matching subscriptions of
    every process, the publisher's own included, exactly once each.

    Delivery in each process is a :class:`ferrule.SignalBus` (``local``, or one made for
    this bus), so subscriptions, mailboxes, overflow policies, weak, async and owned
    handlers are SignalBus's own; Redis only carries the signals between processes.
    Every subscription of the local bus (made here, or on ``local`` directly once this
    bus has a listener) receives the signals other processes publish; signals published
    on ``local`` directly stay in the process. A signal's ``timestamp`` is its
    publisher's wall-clock time (``time.time()``) at ``publish``, in every process that
    receives it and also when it is redelivered or replayed later; on another host it
    compares with that host's ``time.time()`` as well as the two clocks agree.

    ``mode="broadcast"``: Redis Pub/Sub, at most once, nothing stored. ``mode="stream"``:
    one Redis stream (bounded by ``maxlen``, trimmed approximately); subscriptions may
    join a consumer group (``group=``: each signal handled by one member, acknowledged
    when its handler returns, redelivered after ``claim_after`` seconds otherwise) or
    replay from an id (``start_id=``). ``codec`` encodes the data (:class:`JsonCodec` by
    default). When Redis fails, ``on_error="raise"`` raises
    :class:`ferrule.BackendError` from ``publish`` and ``subscribe``; ``"local"`` delivers
    in this process only. Listeners reconnect by themselves, waiting ``backoff`` seconds
    doubled up to ``max_backoff``. The constructor does no I/O.

    >>> import redis
    >>> bus = RedisBus(redis.Redis(), prefix="app:bus:")
    >>> bus
    RedisBus(prefix='app:bus:', mode='broadcast', codec=JsonCodec(), on_error='raise')
    >>> bus.close()
    """

    __slots__ = (
        "__weakref__",
        "_claim_after",
        "_client",
        "_closed",
        "_codec",
        "_finalizer",
        "_link",
        "_local",
        "_lock",
        "_maxlen",
        "_mode",
        "_on_error",
        "_owns_local",
        "_owns_raw",
        "_prefix",
        "_private",
        "_raw",
        "_seq",
        "_stops",
        "_timeout",
    )

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "ferrule:bus:",
        local: SignalBus | None = None,
        mode: Mode = "broadcast",
        codec: Codec | None = None,
        on_error: BusOnError = "raise",
        maxlen: int = 10_000,
        claim_after: float = 30.0,
        backoff: float = 0.05,
        max_backoff: float = 5.0,
        timeout: float = 5.0,
    ) -> None:
        """``maxlen``: the stream's approximate bound (stream mode). ``claim_after``:
        seconds after which a group's unacknowledged signal is redelivered. ``timeout``:
        how long ``subscribe`` waits for the server to route signals to this bus."""
        if not isinstance(client, redis.Redis):
            raise TypeError(f"client must be a redis.Redis, not '{type(client).__name__}'")
        self._prefix = _prefix(prefix)
        if local is not None and not isinstance(local, SignalBus):
            raise TypeError(
                f"local must be a ferrule.SignalBus or None, not '{type(local).__name__}'"
            )
        if mode not in ("broadcast", "stream"):
            raise ValueError(f"mode must be 'broadcast' or 'stream', not {mode!r}")
        if codec is None:
            codec = JsonCodec()
        elif not (
            callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None))
        ):
            raise TypeError(
                "codec must have encode(obj) -> bytes and decode(bytes) -> obj, "
                f"not '{type(codec).__name__}'"
            )
        if on_error not in ("raise", "local"):
            raise ValueError(f"on_error must be 'raise' or 'local', not {on_error!r}")
        if isinstance(maxlen, bool) or not isinstance(maxlen, int):
            raise TypeError(f"maxlen must be an int, not '{type(maxlen).__name__}'")
        if not 1 <= maxlen <= _MAX_I64:
            raise ValueError(f"maxlen must be 1..2**63-1, got {maxlen}")
        self._claim_after = _seconds(claim_after, "claim_after")
        first = _seconds(backoff, "backoff")
        most = _seconds(max_backoff, "max_backoff")
        if most < first:
            raise ValueError(f"max_backoff ({max_backoff!r}) must be >= backoff ({backoff!r})")
        self._timeout = _seconds(timeout, "timeout")
        self._mode: Mode = mode
        self._codec = codec
        self._on_error: BusOnError = on_error
        self._maxlen = maxlen
        self._client = client
        self._raw, self._owns_raw = _raw_client(client)
        self._owns_local = local is None
        self._local = SignalBus() if local is None else local
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        self._private: dict[int, _Private] = {}
        self._link = _Link(self._raw, self._prefix, os.urandom(8), _Backoff(first, most))
        # The stop events of the live group and replay readers (pruned at each subscribe).
        self._stops: list[threading.Event] = []
        self._finalizer = weakref.finalize(self, _stop_all, self._link, self._stops)
        _live.add(self)

    # -- properties --

    @property
    def prefix(self) -> str:
        """What every channel and key of this bus in Redis starts with."""
        return self._prefix

    @property
    def mode(self) -> Mode:
        """``"broadcast"`` (Pub/Sub) or ``"stream"`` (a capped Redis stream)."""
        return self._mode

    @property
    def local(self) -> SignalBus:
        """The SignalBus that delivers in this process."""
        return self._local

    @property
    def codec(self) -> Codec:
        """The codec that turns signal data into bytes and back."""
        return self._codec

    @property
    def on_error(self) -> BusOnError:
        """When Redis fails: ``"raise"`` (BackendError) or ``"local"`` (this process only)."""
        return self._on_error

    @property
    def closed(self) -> bool:
        """Whether ``close()`` has run."""
        return self._closed

    def __repr__(self) -> str:
        return (
            f"RedisBus(prefix={self._prefix!r}, mode={self._mode!r}, codec={self._codec!r}, "
            f"on_error={self._on_error!r})"
        )

    def __enter__(self) -> RedisBus:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- publishing --

    def publish(self, signal_type: str, data: Any = None) -> int:
        """Publish a signal to every process: one request to the server (``PUBLISH``, or
        ``XADD`` in stream mode), then delivery to this process's subscriptions. Returns
        how many of this process's subscriptions took it, as :meth:`SignalBus.publish`
        counts; other processes receive it asynchronously and are not counted.

        ``ValueError`` for a type SignalBus refuses, ``TypeError`` (or the codec's own
        error) for data the codec cannot encode: both before anything is sent. When the
        server cannot be reached, ``BackendError`` (``on_error="raise"``, and nothing is
        delivered anywhere) or delivery in this process only (``"local"``, logged).
        """
        self._check_open()
        _CHECK.publish(signal_type)
        payload = self._codec.encode(data)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"codec.encode must return bytes, not '{type(payload).__name__}'")
        kind = str.encode(signal_type, "utf-8")
        ts = time.time()
        try:
            if self._mode == "broadcast":
                head = _HEAD.pack(self._link.origin, next(self._seq), ts)
                self._raw.publish(self._prefix.encode() + b"s:" + kind, head + bytes(payload))
            else:
                self._raw.xadd(
                    self._stream_key,
                    {b"t": kind, b"d": bytes(payload), b"ts": repr(ts), b"o": self._link.origin},
                    maxlen=self._maxlen,
                    approximate=True,
                )
        except RedisError as e:
            if self._on_error == "raise":
                raise backend(e) from e
            logger.warning("signal %r reached this process only: redis: %s", signal_type, e)
        return self._local._publish_at(signal_type, data, ts)

    @property
    def _stream_key(self) -> bytes:
        return f"{self._prefix}stream".encode()

    # -- subscribing --

    def subscribe(
        self,
        pattern: str,
        handler: Callable[[Signal], object] | None = None,
        *,
        maxsize: int = 1024,
        overflow: str = "drop_oldest",
        weak: bool = True,
        loop: asyncio.AbstractEventLoop | None = None,
        owner: object | None = None,
        group: str | None = None,
        start_id: str | None = None,
    ) -> Subscription:
        """Subscribe to the signal types matching ``pattern`` in every process, with
        :meth:`SignalBus.subscribe`'s arguments and semantics. Returns once the server
        routes matching signals to this process: a signal published anywhere after that
        reaches it.

        Stream mode only: ``group`` makes the subscription a member of a consumer group
        (named by ``group`` and ``pattern``; no ``/`` in ``group``): each signal is
        delivered to one member, acknowledged when the handler returns, and redelivered
        (to any member) if it is not acknowledged within ``claim_after`` seconds; a new
        group starts at ``start_id`` (``"$"``: signals published from now on, the
        default; ``"0"``: everything the stream still holds). A group subscription needs
        a handler. Without ``group``, ``start_id`` replays the stream from after that id
        (``"0"``: from its start; an entry id ``"<ms>-<seq>"``, or a Unix time in
        milliseconds), then follows it.

        ``BackendError`` if the server cannot be reached (``on_error="raise"``; the
        subscription is then not made) or does not confirm within ``timeout``.
        """
        self._check_open()
        if group is not None or start_id is not None:
            return self._subscribe_stream(
                pattern, handler, maxsize, overflow, weak, loop, owner, group, start_id
            )
        sub = self._local.subscribe(
            pattern, handler, maxsize=maxsize, overflow=overflow, weak=weak, loop=loop, owner=owner
        )
        try:
            self._bridge(sub)
        except BackendError:
            if self._on_error == "raise":
                sub.cancel()
                raise
        return sub

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this RedisBus is closed")

    def _bridge(self, sub: Subscription) -> None:
        """Makes sure the listener routes ``sub``'s signals here before returning."""
        link = self._link
        pattern = sub.pattern
        if self._mode == "stream":
            with self._lock:
                if link.thread is None:
                    link.position = self._last_id()
                    self._start_listener()
            return
        with self._lock:
            if link.thread is None:
                self._start_listener()
        _, name = _route(self._prefix, pattern)
        with link.cond:
            link.requested += 1
            mine = link.requested
        link.kick.set()
        try:
            self._raw.publish(link.wake, b"")
        except RedisError as e:
            raise backend(e) from e
        deadline = time.monotonic() + self._timeout
        with link.cond:
            while not (link.done >= mine and name in link.confirmed) and not sub.cancelled:
                left = deadline - time.monotonic()
                if left <= 0 or link.stop.is_set():
                    raise BackendError(
                        f"redis: the bus's listener did not subscribe to {pattern!r} "
                        f"within {self._timeout} s"
                    )
                link.cond.wait(min(left, _WAIT_SLICE))

    def _last_id(self) -> str:
        try:
            last = self._raw.xrevrange(self._stream_key, count=1)
        except RedisError as e:
            if self._on_error == "raise":
                raise backend(e) from e
            return f"{int(time.time() * 1000)}-0"
        return _text_id(last[0][0]) if last else "0-0"  # type: ignore[arg-type]

    def _start_listener(self) -> None:
        target = _listen_broadcast if self._mode == "broadcast" else _listen_stream
        t = threading.Thread(
            target=target,
            args=(self._link, weakref.ref(self)),
            name=f"ferrule-redis-bus {self._prefix}",
            daemon=True,
        )
        self._link.thread = t
        t.start()

    def _subscribe_stream(
        self,
        pattern: str,
        handler: Callable[[Signal], object] | None,
        maxsize: int,
        overflow: str,
        weak: bool,
        loop: asyncio.AbstractEventLoop | None,
        owner: object | None,
        group: str | None,
        start_id: str | None,
    ) -> Subscription:
        if self._mode != "stream":
            raise ValueError("group and start_id need mode='stream'")
        if group is not None:
            if not isinstance(group, str):
                raise TypeError(f"group must be a str or None, not '{type(group).__name__}'")
            if not group or "/" in group:
                raise ValueError(f"group must be a non-empty str without '/', got {group!r}")
            if handler is None:
                raise TypeError(
                    "a group subscription needs a handler: a signal is acknowledged when "
                    "its handler returns"
                )
        if start_id is not None:
            if not isinstance(start_id, str):
                raise TypeError(f"start_id must be a str or None, not '{type(start_id).__name__}'")
            if not _valid_id(start_id, allow_dollar=group is not None):
                raise ValueError(
                    "start_id must be '0', a stream id '<ms>-<seq>' or a time in ms"
                    + (", or '$'" if group is not None else "")
                    + f", got {start_id!r}"
                )
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable or None, not '{type(handler).__name__}'")
        private = SignalBus()
        flow: _Flow | None = None
        acking: _Acking | None = None
        target: Any = handler
        if group is not None and handler is not None:
            flow = _Flow()
            target = acking = _acking(flow, handler, weak, loop)
            weak = False
        sub = private.subscribe(
            pattern, target, maxsize=maxsize, overflow=overflow, weak=weak, loop=loop, owner=owner
        )
        if acking is not None:
            acking.sub = sub
        record = _Private(private, sub, flow)
        number = next(self._seq)  # unique in this bus (subscription ids are per SignalBus)
        names = _StreamNames(
            self._raw,
            self._stream_key,
            "" if group is None else f"{group}/{sub.pattern}",
            f"{self._link.origin.hex()}:{number}",
            start_id or ("$" if group is not None else "0"),
            min(maxsize, _BATCH),
            self._claim_after,
            self._link.backoff.first,
            self._link.backoff.most,
        )
        try:
            if group is not None:
                names.create_group(names.start)
        except RedisError as e:
            if self._on_error == "raise":
                sub.cancel()
                raise backend(e) from e
        with self._lock:
            self._private = {k: v for k, v in self._private.items() if not v.sub.cancelled}
            self._private[number] = record
            self._stops[:] = [p.stop for p in self._private.values()]
        t = threading.Thread(
            target=_read_group if group is not None else _read_replay,
            args=(names, record.stop, weakref.ref(record), weakref.ref(self)),
            name=f"ferrule-redis-bus {self._prefix} {pattern}",
            daemon=True,
        )
        record.thread = t
        t.start()
        return sub

    # -- shutting down --

    def close(self) -> None:
        """Stop the listener and reader threads (waiting briefly for them) and cancel the
        group and replay subscriptions; if the local bus was made by this bus, cancel
        its subscriptions too. A group reader acknowledges what was handled and removes
        its consumer from the group when it holds no pending signal. Idempotent; after
        it, ``publish`` and ``subscribe`` raise ``RuntimeError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            privates = list(self._private.values())
            self._private.clear()
        self._finalizer()
        for p in privates:
            p.stop.set()
            p.sub.cancel()
        if self._owns_local:
            for s in self._local.subscriptions():
                s.cancel()
        me = threading.current_thread()
        link = self._link
        if link.thread is not None and link.thread.is_alive() and self._mode == "broadcast":
            # The listener waits on its socket up to _POLL; a message on its wake channel
            # ends the wait now (best effort: a server that is down leaves it napping on
            # the stop event, which is already set).
            with contextlib.suppress(RedisError, OSError):
                self._raw.publish(link.wake, b"")
        for t in [link.thread, *(p.thread for p in privates)]:
            if t is not None and t is not me:
                t.join(_JOIN)
        if self._owns_raw:
            self._raw.close()


# ---- shared by the threads ---------------------------------------------------------------

_live: weakref.WeakSet[RedisBus] = weakref.WeakSet()


def _stop_all(link: _Link, stops: list[threading.Event]) -> None:
    link.stop.set()
    link.kick.set()
    with link.cond:
        link.cond.notify_all()
    for s in list(stops):
        s.set()


def _at_exit() -> None:
    """Stops every live bus's threads before the interpreter joins its threads."""
    for bus in list(_live):
        bus._finalizer()


_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_at_exit)


def _raw_client(client: redis.Redis) -> tuple[redis.Redis, bool]:
    """A client that returns bytes: ``client`` itself, or one on a pool of its own with
    the same connection settings if ``client`` decodes responses."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    if not kwargs.get("decode_responses"):
        return client, False
    kwargs["decode_responses"] = False
    raw_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=raw_pool), True


def _valid_id(s: str, allow_dollar: bool) -> bool:
    if s == "$":
        return allow_dollar
    ms, _, seq = s.partition("-")
    return ms.isascii() and ms.isdigit() and (not _ or (seq.isascii() and seq.isdigit()))


def _deliver(
    bus: RedisBus, kind: bytes, payload: bytes, stamp: float | bytes, target: SignalBus
) -> None:
    """Decodes one received signal and publishes it on ``target`` stamped with its
    publish time ``stamp`` (a float, or its text); a signal that cannot be decoded or
    published (a foreign writer's: a time that is missing, NaN or negative too) is
    logged and skipped."""
    try:
        target._publish_at(kind.decode(), bus._codec.decode(payload), float(stamp))
    except Exception:
        logger.exception("received signal %r could not be delivered; skipped", kind)


def _listen_broadcast(link: _Link, ref: weakref.ref[RedisBus]) -> None:
    """A broadcast bus's listener: Pub/Sub messages into ``local._publish_at``."""
    ps: Any = None
    last: tuple[bytes, int] | None = None
    start = len(link.prefix.encode()) + 2  # "<prefix>s:"
    next_reconcile = 0.0
    try:
        while not link.stop.is_set():
            try:
                if ps is None:
                    ps = link.client.pubsub()  # type: ignore[no-untyped-call]
                    ps.subscribe(link.wake)
                    link.subscribed = set()
                    with link.cond:
                        link.confirmed = set()
                    _reconcile(ps, link, ref)
                    next_reconcile = time.monotonic() + _RECONCILE
                msg = ps.get_message(timeout=_POLL)
                if time.monotonic() >= next_reconcile:
                    _reconcile(ps, link, ref)
                    next_reconcile = time.monotonic() + _RECONCILE
                if msg is None:
                    continue
                kind = msg["type"]
                if kind in ("subscribe", "psubscribe"):
                    with link.cond:
                        if msg["channel"] == link.wake:
                            link.connected = True
                            link.backoff.reset()
                        link.confirmed.add(msg["channel"])
                        link.cond.notify_all()
                elif kind in ("message", "pmessage"):
                    if msg["channel"] == link.wake:
                        _reconcile(ps, link, ref)
                        continue
                    raw = msg["data"]
                    if len(raw) < _HEAD.size:
                        logger.error("malformed message on %r skipped", msg["channel"])
                        continue
                    origin, seq, stamp = _HEAD.unpack_from(raw)
                    # One PUBLISH reaches a connection once per subscription it matches,
                    # consecutively: deliver the first only. Our own were delivered at once.
                    if (origin, seq) == last or origin == link.origin:
                        continue
                    last = (origin, seq)
                    bus = ref()
                    if bus is None:
                        return
                    _deliver(bus, msg["channel"][start:], raw[_HEAD.size :], stamp, bus._local)
                    del bus
            except Exception as e:  # a lost or closed connection
                with link.cond:
                    link.connected = False
                    link.confirmed = set()
                logger.debug("bus listener lost its connection: %s", e)
                if ps is not None:
                    _close_quietly(ps)
                    ps = None
                link.nap()
    finally:
        if ps is not None:
            _close_quietly(ps)


def _reconcile(ps: Any, link: _Link, ref: weakref.ref[RedisBus]) -> None:
    """Subscribes the connection to what the local bus's subscriptions need, and
    unsubscribes it from what they no longer need."""
    with link.cond:
        seen = link.requested
    bus = ref()
    if bus is None:
        link.stop.set()
        return
    patterns = {s.pattern for s in bus._local.subscriptions()}
    del bus
    want = {_route(link.prefix, p) for p in patterns}
    add = want - link.subscribed
    drop = link.subscribed - want
    if chans := [n for is_pat, n in add if not is_pat]:
        ps.subscribe(*chans)
    if pats := [n for is_pat, n in add if is_pat]:
        ps.psubscribe(*pats)
    if chans := [n for is_pat, n in drop if not is_pat]:
        ps.unsubscribe(*chans)
    if pats := [n for is_pat, n in drop if is_pat]:
        ps.punsubscribe(*pats)
    link.subscribed = want
    with link.cond:
        for _, n in drop:
            link.confirmed.discard(n)
        link.done = max(link.done, seen)
        link.cond.notify_all()


def _close_quietly(ps: Any) -> None:
    try:
        ps.close()
    except Exception:  # a broken connection may refuse even to close
        logger.debug("closing a Pub/Sub connection failed", exc_info=True)


def _fields(fields: dict[bytes, bytes]) -> tuple[bytes, bytes, bytes]:
    """A stream entry's type, encoded data and publish time (``b""`` where absent)."""
    return fields.get(b"t", b""), fields.get(b"d", b""), fields.get(b"ts", b"")


def _listen_stream(link: _Link, ref: weakref.ref[RedisBus]) -> None:
    """A stream bus's listener: ``XREAD`` from its position into ``local._publish_at``."""
    key = f"{link.prefix}stream".encode()
    while not link.stop.is_set():
        try:
            reply = link.client.xread({key: link.position}, count=100, block=_BLOCK_MS)
            link.backoff.reset()
        except Exception as e:  # a lost or closed connection
            logger.debug("bus listener lost its connection: %s", e)
            link.nap()
            continue
        entries = _entries(reply)
        if not entries:
            continue
        bus = ref()
        if bus is None:
            return
        for entry_id, fields in entries:
            link.position = _text_id(entry_id)
            if fields and fields.get(b"o") != link.origin:
                _deliver(bus, *_fields(fields), bus._local)
        del bus


# ---- group and replay subscriptions ----------------------------------------------------


class _Private:
    """A group or replay subscription: its private bus (which keeps it routed), the
    subscription, its handled-signal record and its reader's stop event and thread."""

    __slots__ = ("__weakref__", "bus", "flow", "stop", "sub", "thread")

    def __init__(self, bus: SignalBus, sub: Subscription, flow: _Flow | None) -> None:
        self.bus = bus
        self.sub = sub
        self.flow = flow
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None


class _StreamNames:
    """A reader's plain data: client, key, group, consumer and settings."""

    __slots__ = (
        "backoff",
        "batch",
        "claim_ms",
        "client",
        "consumer",
        "group",
        "key",
        "start",
    )

    def __init__(
        self,
        client: redis.Redis,
        key: bytes,
        group: str,
        consumer: str,
        start: str,
        batch: int,
        claim_after: float,
        backoff: float,
        max_backoff: float,
    ) -> None:
        self.client = client
        self.key = key
        self.group = group
        self.consumer = consumer
        self.start = start
        self.batch = batch
        self.claim_ms = max(1, min(int(claim_after * 1000), _MAX_I64))
        self.backoff = _Backoff(backoff, max_backoff)

    def create_group(self, start: str) -> None:
        try:
            self.client.xgroup_create(self.key, self.group, id=start, mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


class _Flow:
    """The ids of a group subscription's fetched batch, in delivery order, and what the
    handler made of them. The reader appends, the wrapped handler pops (on another
    thread); the lock guards only these containers and no Python code runs under it."""

    __slots__ = ("acks", "done", "fifo", "lock", "outstanding")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fifo: deque[bytes] = deque()
        self.acks: list[bytes] = []
        self.outstanding = 0
        self.done = threading.Event()
        self.done.set()

    def offered(self, entry_id: bytes) -> None:
        with self.lock:
            self.fifo.append(entry_id)
            self.outstanding += 1
            self.done.clear()

    def refused(self) -> None:
        """The last offered id did not enter the mailbox (cannot have been popped)."""
        with self.lock:
            self.fifo.pop()
            self.outstanding -= 1
            if self.outstanding == 0:
                self.done.set()

    def begin(self) -> bytes | None:
        with self.lock:
            return self.fifo.popleft() if self.fifo else None

    def end(self, entry_id: bytes | None, ok: bool) -> None:
        with self.lock:
            if entry_id is None:
                return
            if ok:
                self.acks.append(entry_id)
            self.outstanding -= 1
            if self.outstanding == 0:
                self.done.set()

    def ack(self, entry_id: bytes) -> None:
        with self.lock:
            self.acks.append(entry_id)

    def keep_acks(self, acks: list[bytes]) -> None:
        """Acks that could not be sent, to send with the next ones."""
        with self.lock:
            self.acks[:0] = acks

    def take_acks(self) -> list[bytes]:
        with self.lock:
            acks, self.acks = self.acks, []
            return acks


class _Acking:
    """A group subscription's handler: calls the user's handler, then records the
    signal's entry as handled (acknowledged by the reader) if it returned. Holds a bound
    method weakly with ``weak=True`` (the subscription cancels when its object goes), as
    SignalBus would."""

    __slots__ = ("__weakref__", "flow", "sub", "target", "weak")

    def __init__(self, flow: _Flow, handler: Callable[[Signal], object], weak: bool) -> None:
        self.flow = flow
        # Set once subscribed. The reader thread holds the flow, never this wrapper or
        # the subscription, so nothing it holds leads to the user's handler.
        self.sub: Subscription | None = None
        self.weak = weak and isinstance(handler, types.MethodType)
        self.target: Any = handler
        if self.weak:
            try:
                self.target = weakref.WeakMethod(handler, self._gone)
            except TypeError:
                name = type(handler.__self__).__name__  # type: ignore[attr-defined]
                raise TypeError(
                    f"handler is bound to a '{name}' object, which cannot be weakly "
                    "referenced; pass weak=False"
                ) from None

    def _gone(self, _ref: object) -> None:
        sub = self.sub
        if sub is not None:
            sub.cancel()

    def _handler(self) -> Callable[[Signal], object] | None:
        return self.target() if self.weak else self.target  # type: ignore[no-any-return]


class _SyncAcking(_Acking):
    __slots__ = ()

    def __call__(self, signal: Signal) -> object:
        entry = self.flow.begin()
        ok = False
        try:
            fn = self._handler()
            if fn is None:
                self._gone(None)
                return None
            result = fn(signal)
            del fn
            # SignalBus closes an awaitable a thread handler returns and counts an error.
            ok = not inspect.isawaitable(result)
            return result
        finally:
            self.flow.end(entry, ok)


class _AsyncAcking(_Acking):
    __slots__ = ()

    async def __call__(self, signal: Signal) -> None:
        entry = self.flow.begin()
        ok = False
        try:
            fn = self._handler()
            if fn is None:
                self._gone(None)
                return
            result = fn(signal)
            del fn
            if inspect.isawaitable(result):
                await result
            ok = True
        finally:
            self.flow.end(entry, ok)


def _acking(
    flow: _Flow,
    handler: Callable[[Signal], object],
    weak: bool,
    loop: asyncio.AbstractEventLoop | None,
) -> _Acking:
    if loop is not None or is_async_callable(handler):
        return _AsyncAcking(flow, handler, weak)
    return _SyncAcking(flow, handler, weak)


def _read_group(
    names: _StreamNames,
    stop: threading.Event,
    ref: weakref.ref[_Private],
    busref: weakref.ref[RedisBus],
) -> None:
    """A group member's reader: a batch at a time, acknowledged once handled."""
    record = ref()
    if record is None or record.flow is None:
        return
    flow = record.flow
    del record
    # The last id this member fetched: where its group is recreated if the server lost it.
    position: str | None = None if names.start == "$" else names.start
    next_claim = 0.0
    cursor = "0-0"
    try:
        while not stop.is_set() and _alive(ref):
            try:
                if acks := flow.take_acks():
                    try:
                        names.client.xack(names.key, names.group, *acks)
                    except BaseException:
                        flow.keep_acks(acks)
                        raise
                entries: list[Any] = []
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + names.claim_ms / 2000
                    cursor, entries = _claim(names, cursor)
                if not entries:
                    reply = names.client.xreadgroup(
                        names.group, names.consumer, {names.key: ">"},
                        count=names.batch, block=_BLOCK_MS,
                    )  # fmt: skip
                    entries = _entries(reply)
                names.backoff.reset()
            except ResponseError as e:
                if "NOGROUP" not in str(e):
                    logger.error("bus group reader: redis refused: %s", e)
                    stop.wait(names.backoff.next())
                    continue
                # The server lost the group (restarted without persistence, or it was
                # destroyed): recreate it after what this member fetched (from the
                # stream's start if nothing yet).
                try:
                    names.create_group(position or "0")
                except Exception as e2:
                    logger.debug("bus group reader could not recreate its group: %s", e2)
                    stop.wait(names.backoff.next())
                continue
            except Exception as e:  # a lost or closed connection
                logger.debug("bus group reader lost its connection: %s", e)
                stop.wait(names.backoff.next())
                continue
            if not entries:
                continue
            position = _later(position or "0-0", _text_id(entries[-1][0]))
            if not _offer_batch(entries, ref, busref, flow):
                return
            while not flow.done.wait(_WAIT_SLICE):
                if stop.is_set() or not _alive(ref):
                    return
    finally:
        _leave_group(names, flow)


def _alive(ref: weakref.ref[_Private]) -> bool:
    record = ref()
    return record is not None and not record.sub.cancelled


def _claim(names: _StreamNames, cursor: str) -> tuple[str, list[Any]]:
    """Takes over up to a batch of the group's signals left unacknowledged for
    ``claim_after`` (XAUTOCLAIM, resuming at ``cursor``), and reaps idle empty consumers."""
    reply = names.client.xautoclaim(
        names.key, names.group, names.consumer, names.claim_ms, cursor, count=names.batch
    )
    _reap(names.client, names.key, names.group, names.consumer, names.claim_ms)
    return _text_id(reply[0]), list(reply[1])


def _offer_batch(
    entries: list[Any],
    ref: weakref.ref[_Private],
    busref: weakref.ref[RedisBus],
    flow: _Flow,
) -> bool:
    """Publishes a fetched batch into the member's private bus (whose mailbox is empty,
    so it takes every signal its pattern matches); False if the member or bus is gone."""
    record, bus = ref(), busref()
    if record is None or bus is None:
        return False
    for entry_id, fields in entries:
        try:
            kind = fields[b"t"].decode()
            data = bus._codec.decode(fields[b"d"])
            stamp = float(fields[b"ts"])
        except Exception:
            # Trimmed while pending (no fields), or not a signal this bus can read.
            if fields:
                logger.exception("stream entry %r could not be decoded; acknowledged", entry_id)
            flow.ack(entry_id)
            continue
        flow.offered(entry_id)
        try:
            taken = record.bus._publish_at(kind, data, stamp)
        except Exception:
            logger.exception("stream entry %r could not be delivered; acknowledged", entry_id)
            taken = 0
        if taken == 0:
            flow.refused()
            if not record.sub.cancelled:  # not for this pattern: nothing to handle
                flow.ack(entry_id)
    return True


def _reap(client: redis.Redis, key: bytes, group: str, me: str, idle_ms: int) -> None:
    """Removes consumers of the group that hold no pending signal and have been idle for
    longer than ``claim_after`` (members that crashed, once their signals were claimed).
    A live member removed this way is recreated by its next read."""
    for c in client.xinfo_consumers(key, group):
        name = c.get("name") if isinstance(c, dict) else None
        if name is None:
            continue
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name != me and int(c.get("pending", 1)) == 0 and int(c.get("idle", 0)) > idle_ms:
            client.xgroup_delconsumer(key, group, name)


def _leave_group(names: _StreamNames, flow: _Flow) -> None:
    """At a member's end: acknowledge what was handled, and remove its consumer if it
    holds no pending signal (those it holds are redelivered to other members)."""
    client, key, group = names.client, names.key, names.group
    try:
        if acks := flow.take_acks():
            client.xack(key, group, *acks)
        if not client.xpending_range(key, group, "-", "+", 1, consumername=names.consumer):
            client.xgroup_delconsumer(key, group, names.consumer)
    except Exception as e:
        logger.debug("bus group member could not leave its group: %s", e)


def _read_replay(
    names: _StreamNames,
    stop: threading.Event,
    ref: weakref.ref[_Private],
    busref: weakref.ref[RedisBus],
) -> None:
    """A replay subscription's reader: ``XREAD`` from ``start_id`` into its private bus."""
    position = names.start
    while not stop.is_set():
        record = ref()
        if record is None or record.sub.cancelled:
            return
        del record
        try:
            reply = names.client.xread({names.key: position}, count=names.batch, block=_BLOCK_MS)
            names.backoff.reset()
        except Exception as e:  # a lost or closed connection
            logger.debug("bus replay reader lost its connection: %s", e)
            stop.wait(names.backoff.next())
            continue
        entries = _entries(reply)
        if not entries:
            continue
        record, bus = ref(), busref()
        if record is None or bus is None:
            return
        for entry_id, fields in entries:
            position = _text_id(entry_id)
            if fields:
                _deliver(bus, *_fields(fields), record.bus)
        del record, bus
