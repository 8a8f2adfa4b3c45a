"""``RedisRegistry`` and ``RedisAgent``: leased entries and their index rows in Redis
(see the package docs for the layout).

The arguments are checked by the native module with ``ferrule.Registry``'s own rules
(``_registration``, ``_registrations``, ``_changes``, ``_criteria``), and a ``where`` of
conditions is evaluated there too (``_match_where``), as ``Registry.find`` evaluates it.
What is Redis's own is here: JSON for values and metadata, no owners, and the scripts in
``lua/`` that change an entry and its rows together.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ferrule._native import (
    _agent_id,
    _already_registered,
    _changes,
    _criteria,
    _match_where,
    _max_batch,
    _prefix,
    _registration,
    _registrations,
    _ttl,
)
from ferrule.redis._common import Script, SyncClient, check_client, is_async, lua, text

__all__ = ["RedisAgent", "RedisRegistry"]

# Expired entries a write reclaims on the way; expire() works in batches of this.
_WRITE_SWEEP: Final = 8
_EXPIRE_BATCH: Final = 1000


def _script(name: str) -> Script:
    return Script(lua("common", "registry", name))


_REGISTER = _script("register")
_UNREGISTER = _script("unregister")
_UPDATE = _script("update")
_HEARTBEAT = _script("heartbeat")
_EXPIRE = _script("expire")
_FIND = _script("find")
_GET = _script("get")
_LEN = _script("len")


@dataclass(frozen=True, slots=True)
class RedisAgent:
    """One agent of a :class:`RedisRegistry`, as it was when read: the fields of
    :class:`ferrule.Agent` (``value`` and ``metadata`` come back from JSON;
    ``registered_at`` and ``expires_at`` are the server's Unix time in seconds)."""

    agent_id: str
    value: Any
    capabilities: frozenset[str]
    node: str | None
    health: str
    metadata: Mapping[str, Any]
    registered_at: float
    expires_at: float | None

    def __repr__(self) -> str:
        caps = ", ".join(repr(c) for c in sorted(self.capabilities))
        return (
            f"RedisAgent(agent_id={self.agent_id!r}, capabilities={{{caps}}}, "
            f"node={self.node!r}, health={self.health!r})"
        )


def _agent_and_metadata(row: list[Any]) -> tuple[RedisAgent, dict[str, Any]]:
    """A script's row as an agent, and the agent's metadata as a plain dict."""
    aid, v, caps, node, health, meta, reg, exp = row
    metadata = json.loads(meta)
    agent = RedisAgent(
        agent_id=text(aid),
        value=json.loads(v),
        capabilities=frozenset(json.loads(caps)),
        node=None if node is None else text(node),
        health=text(health),
        metadata=types.MappingProxyType(metadata),
        registered_at=int(reg) / 1e6,
        expires_at=int(exp) / 1e6,
    )
    return agent, metadata


def _agent(row: list[Any]) -> RedisAgent:
    return _agent_and_metadata(row)[0]


def _snapshot(obj: object, path: set[int]) -> object:
    """A private copy of ``obj``'s dicts, lists and tuples, each taken in one step
    (``dict.copy``, ``list``), so that what is encoded is what was there at one moment:
    CPython 3.13t's C JSON encoder crashes on a container another thread resizes while it
    walks it. ``path`` holds the containers being copied, to refuse a cycle as the
    encoder does."""
    if isinstance(obj, dict):
        items: Iterable[tuple[object, object]] = dict.copy(obj).items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(list(obj))
    else:
        return obj
    if id(obj) in path:
        raise ValueError("Circular reference detected")
    path.add(id(obj))
    try:
        if isinstance(obj, dict):
            return {k: _snapshot(v, path) for k, v in items}
        return [_snapshot(v, path) for _, v in items]
    finally:
        path.discard(id(obj))


def _json(obj: object, arg: str) -> str:
    try:
        return json.dumps(_snapshot(obj, set()), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{arg} must be JSON-serialisable: {e}") from None


def _micros(ns: int) -> int:
    """A lease in whole server microseconds, rounded up (never shorter than asked)."""
    return -(-ns // 1000)


def _opt(s: str | None) -> str:
    """An optional field as the scripts take it: '' for none, else '.' and the value."""
    return "" if s is None else "." + s


_Where = Callable[[RedisAgent], object] | Iterable[tuple[str, str, Any]] | None
_UNSET: Any = object()


class RedisRegistry:
    """An agent directory shared by every process that uses the same Redis server and
    ``prefix``: ``ferrule.Registry``'s API, with leases instead of owners.

    Every entry is a lease of ``ttl`` seconds (the registry's default, or the
    ``register`` call's) that :meth:`heartbeat` renews; an entry whose lease is over is
    never returned, and its keys are reclaimed by :meth:`expire`, by later writes, and
    by the server's own key expiry after one more lease of grace. ``value`` and
    ``metadata`` must be JSON-serialisable (they come back as JSON gives them:
    tuples become lists). ``client`` is a ``redis.Redis``; the constructor does no I/O.
    A Redis failure raises :class:`ferrule.BackendError`.

    >>> import redis
    >>> reg = RedisRegistry(redis.Redis(), ttl=30.0)
    >>> reg.register("a1", {"url": "http://a1"}, capabilities=["search"])  # doctest: +SKIP
    >>> reg.ids(capability="search")                                       # doctest: +SKIP
    ['a1']
    """

    __slots__ = ("_client", "_dl", "_max_batch", "_prefix", "_ttl_us")

    def __init__(
        self,
        client: SyncClient,
        *,
        prefix: str = "ferrule:reg:",
        ttl: float = 30.0,
        max_batch: int = 10_000,
    ) -> None:
        check_client(client)
        if is_async(client):
            raise TypeError("client must be a synchronous redis.Redis, not redis.asyncio.Redis")
        self._client = client
        self._prefix = _prefix(prefix)
        self._dl = self._prefix + "d"
        self._ttl_us = _micros(_ttl(ttl, required=True))
        self._max_batch = _max_batch(max_batch)

    @property
    def prefix(self) -> str:
        """What every key of this registry in Redis starts with."""
        return self._prefix

    @property
    def ttl(self) -> float:
        """The default lease, in seconds."""
        return self._ttl_us / 1e6

    @property
    def max_batch(self) -> int:
        """The most agents one ``register_many`` call takes."""
        return self._max_batch

    def __repr__(self) -> str:
        return f"RedisRegistry(prefix={self._prefix!r}, ttl={self.ttl!r})"

    def _run(self, script: Script, args: list[Any]) -> Any:
        return script(self._client, [self._dl], [self._prefix, *args])

    def _row(self, fields: tuple[Any, ...], value: object, owner: object) -> list[Any]:
        """A checked registration (``_registration``'s fields) as register.lua's ARGV."""
        aid, caps, node, health, metadata, ttl_ns = fields
        if owner is not None:
            raise ValueError("owner is not supported by RedisRegistry: leases replace owners")
        meta = _json(metadata, "metadata")
        v = _json(value, "value")
        ttl_us = self._ttl_us if ttl_ns is None else _micros(ttl_ns)
        caps_json = json.dumps(caps, separators=(",", ":"))
        return [aid, v, caps_json, _opt(node), health, meta, ttl_us]

    def register(
        self,
        agent_id: str,
        value: Any = None,
        *,
        capabilities: Iterable[str] = (),
        node: str | None = None,
        health: str = "healthy",
        metadata: Mapping[str, Any] | None = None,
        owner: None = None,
        ttl: float | None = None,
    ) -> None:
        """Register an agent with a lease of ``ttl`` seconds (default: the registry's).
        Raises :class:`ferrule.AlreadyRegistered` if a live entry holds the id; then
        nothing of this call stays behind. ``owner`` is refused (ValueError)."""
        fields = _registration(agent_id, capabilities, node, health, metadata, ttl)
        self._publish(self._row(fields, value, owner))

    def _publish(self, flat: list[Any]) -> int:
        reply = self._run(_REGISTER, [_WRITE_SWEEP, *flat])
        if int(reply[0]) == 0:
            raise _already_registered(text(reply[1]))
        return int(reply[1])

    def register_many(self, items: Iterable[Mapping[str, Any]]) -> int:
        """Register every item (a dict of :meth:`register`'s arguments plus
        ``agent_id``) or none, in one script. More than ``max_batch`` items raise
        ValueError."""
        flat: list[Any] = []
        for *fields, value, owner in _registrations(items, self._max_batch):
            flat += self._row(tuple(fields), value, owner)
        if not flat:
            return 0
        return self._publish(flat)

    def unregister(self, agent_id: str) -> bool:
        """Remove the agent and its index rows; True if it was registered and live."""
        aid = _agent_id(agent_id)
        return bool(int(self._run(_UNREGISTER, [_WRITE_SWEEP, aid])))

    def update(
        self,
        agent_id: str,
        *,
        capabilities: Iterable[str] = _UNSET,
        node: str | None = _UNSET,
        health: str = _UNSET,
        metadata: Mapping[str, Any] | None = _UNSET,
    ) -> None:
        """Change the given fields, the entry and its index rows together (one script).
        KeyError if the agent is not registered. The lease is unchanged."""
        aid = _agent_id(agent_id)
        given = {
            "capabilities": capabilities,
            "node": node,
            "health": health,
            "metadata": metadata,
        }
        ch = _changes(**{k: v for k, v in given.items() if v is not _UNSET})
        caps = json.dumps(ch["capabilities"], separators=(",", ":")) if "capabilities" in ch else ""
        # node: '' unchanged, '-' None, '.' and the node
        n = "" if "node" not in ch else "-" if ch["node"] is None else "." + ch["node"]
        h = "." + ch["health"] if "health" in ch else ""
        m = _json(ch["metadata"], "metadata") if "metadata" in ch else ""
        if not int(self._run(_UPDATE, [_WRITE_SWEEP, aid, caps, n, h, m])):
            raise KeyError(aid)

    def get(self, agent_id: str) -> RedisAgent | None:
        """The agent, or None if absent or its lease is over."""
        aid = _agent_id(agent_id)
        row = self._run(_GET, [aid])
        return _agent(row) if row else None

    def lookup(self, agent_id: str) -> Any:
        """The agent's value; KeyError if absent."""
        a = self.get(agent_id)
        if a is None:
            raise KeyError(agent_id)
        return a.value

    def heartbeat(self, agent_id: str, ttl: float | None = None) -> bool:
        """Renew the lease for ``ttl`` seconds (default: the entry's own) from now
        (server time); False if the agent is absent or its lease is already over."""
        ttl_ns = _ttl(ttl)
        aid = _agent_id(agent_id)
        t = "" if ttl_ns is None else _micros(ttl_ns)
        return bool(int(self._run(_HEARTBEAT, [_WRITE_SWEEP, aid, t])))

    def expire(self) -> int:
        """Remove every entry whose lease is over, with its index rows, now (in
        batches of 1000 per script); return how many."""
        total = 0
        while True:
            n = int(self._run(_EXPIRE, [_EXPIRE_BATCH]))
            total += n
            if n < _EXPIRE_BATCH:
                return total

    def _select(
        self,
        what: str,
        capability: str | None,
        node: str | None,
        health: str | None,
        where: _Where,
        limit: int | None,
    ) -> Any:
        cap, nd, hl, wh, lim = _criteria(capability, node, health, where, limit)
        opt = [_opt(cap), _opt(nd), _opt(hl)]
        if wh is None:
            return self._run(_FIND, [what, "" if lim is None else lim, *opt])
        out: list[RedisAgent] = []
        for row in self._run(_FIND, ["a", "", *opt]):
            if lim is not None and len(out) >= lim:
                break
            a, meta = _agent_and_metadata(row)
            if not (wh(a) if callable(wh) else _match_where(wh, meta)):
                continue
            out.append(a)
        if what == "a":
            return out
        if what == "i":
            return [a.agent_id for a in out]
        return len(out)

    def find(
        self,
        *,
        capability: str | None = None,
        node: str | None = None,
        health: str | None = None,
        where: _Where = None,
        limit: int | None = None,
    ) -> list[RedisAgent]:
        """Agents matching every given criterion (in no particular order): the index
        sets' intersection, each candidate checked against its entry and lease on the
        server; then ``where`` (a callable on :class:`RedisAgent`, or ``(path, op,
        value)`` triples over metadata, as in ``ferrule.Registry``) here."""
        r = self._select("a", capability, node, health, where, limit)
        return r if where is not None else [_agent(x) for x in r]

    def count(
        self,
        *,
        capability: str | None = None,
        node: str | None = None,
        health: str | None = None,
        where: _Where = None,
        limit: int | None = None,
    ) -> int:
        """How many agents :meth:`find` would return."""
        return int(self._select("n", capability, node, health, where, limit))

    def ids(
        self,
        *,
        capability: str | None = None,
        node: str | None = None,
        health: str | None = None,
        where: _Where = None,
        limit: int | None = None,
    ) -> list[str]:
        """The ids of the agents :meth:`find` would return."""
        r = self._select("i", capability, node, health, where, limit)
        return r if where is not None else [text(x) for x in r]

    def __contains__(self, agent_id: object) -> bool:
        """True if a live agent has this id (False for non-str)."""
        if not isinstance(agent_id, str):
            return False
        return bool(self._run(_GET, [_agent_id(agent_id)]))

    def __len__(self) -> int:
        """Live agents (entries whose lease is not over)."""
        return int(self._run(_LEN, []))
