"""The Redis tier's rules come from the native module: the same bad argument gets the
same error from ``RateLimiter`` and ``RedisRateLimiter``, and from ``Registry`` and
``RedisRegistry`` (side by side, on tables of bad input); a ``where`` is decided as
``Registry.find`` decides it; keys keep their encoding; the package layout (public
names, Lua scripts as package resources).

No server is needed: arguments are checked before any I/O, so the Redis objects here
talk to a port where nothing listens, and a check that let a bad argument through would
show up as a BackendError instead of the in-process error.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.resources
import json
import math
import pickle
import weakref
from collections.abc import Callable
from typing import Any

import ferrule
import pytest
from ferrule import RateLimiter, Registry, _native
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.redis_server import free_port

redis = pytest.importorskip("redis")
import ferrule.redis  # noqa: E402
from ferrule.redis import (  # noqa: E402
    RedisAgent,
    RedisRateLimiter,
    RedisRegistry,
    _breaker,
    _bus,
    _common,
    _ratelimit,
    _registry,
)

Call = Callable[[Any], Any]


@pytest.fixture(scope="module")
def dead() -> Any:
    """A client of a port where no server listens (no retries: fail at once)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


def outcome(call: Call, obj: Any) -> tuple[type, str]:
    try:
        result = call(obj)
    except Exception as e:
        return type(e), str(e)
    if hasattr(result, "close"):  # an acquire_async coroutine: not awaited here
        result.close()
    pytest.fail(f"accepted: {result!r}")


def same_error(local: Any, remote: Any, call: Call) -> None:
    want = outcome(call, local)
    assert issubclass(want[0], (TypeError, ValueError, OverflowError, KeyError))
    assert outcome(call, remote) == want


# ---- the rate limiter ------------------------------------------------------------------

BAD_LIMITERS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    (("10",), {}),
    ((True,), {}),
    ((None,), {}),
    ((0,), {}),
    ((-1,), {}),
    ((-0.0,), {}),
    ((math.nan,), {}),
    ((math.inf,), {}),
    ((2**64,), {}),
    ((2**1100,), {}),
    ((1e30,), {}),
    ((1e-12,), {}),
    ((5e-324,), {}),
    ((1, 0), {}),
    ((1, -1), {}),
    ((1, math.nan), {}),
    ((1, math.inf), {}),
    ((1, 1e10), {}),
    ((1, 2**64), {}),
    ((1, "1"), {}),
    ((1, True), {}),
    ((1,), {"burst": 0}),
    ((1,), {"burst": -1}),
    ((1,), {"burst": 1.5}),
    ((1,), {"burst": 1.0}),
    ((1,), {"burst": True}),
    ((1,), {"burst": "1"}),
    ((1,), {"burst": 2**62}),
    ((1,), {"burst": 2**63}),
    ((1,), {"burst": 2**64}),
    ((3, 1e9), {"burst": 2**40}),
]


@pytest.mark.parametrize(("args", "kwargs"), BAD_LIMITERS)
def test_limiter_constructors_refuse_alike(
    dead: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    want = outcome(lambda _: RateLimiter(*args, **kwargs), None)
    got = outcome(lambda _: RedisRateLimiter(dead, *args, **kwargs), None)
    assert got == want


def test_the_redis_window_bound_is_the_only_extra_rule(dead: Any) -> None:
    """Lua's doubles are exact below 2^53: the Redis limiter also refuses a window
    ``burst * per / rate`` beyond 52 days, which the in-process one takes."""
    for args, kwargs, arg in [
        ((1, 60 * 86400.0), {}, "rate"),
        ((1, 3600.0), {"burst": 60 * 24}, "burst"),
        ((1e-7,), {"burst": 1}, "rate"),
    ]:
        RateLimiter(*args, **kwargs)
        with pytest.raises(ValueError) as info:
            RedisRateLimiter(dead, *args, **kwargs)
        assert str(info.value) == (
            f"{arg} is out of range: burst * per / rate must be at most 52 days"
        )
    # Just inside: 52 days of one token each.
    rl = RedisRateLimiter(dead, 1, 52 * 86400.0)
    assert rl.burst == 1


def test_limiter_parameters_come_from_the_native_rules(dead: Any) -> None:
    for args, kwargs in [((3,), {}), ((7, 2.0), {}), ((2.5, 1), {"burst": 4}), ((1e6,), {})]:
        local = RateLimiter(*args, **kwargs)
        remote = RedisRateLimiter(dead, *args, **kwargs)
        assert (remote.rate, remote.per, remote.burst) == (local.rate, local.per, local.burst)
        rate, per, interval, burst, tau = _native._gcra_params(*args, **kwargs)
        assert (rate, per, burst) == (local.rate, local.per, local.burst)
        assert tau == burst * interval
    # None is not a period (the default is 1.0, not None), in either tier.
    none: Any = None
    for make in (lambda: RedisRateLimiter(dead, 2, none), lambda: RateLimiter(2, none)):
        with pytest.raises(TypeError, match=r"^per must be a number of seconds, not 'NoneType'$"):
            make()


BAD_COSTS = [0, -1, 11, 2**63, 2**64, 1.0, 1.5, True, "1", b"1"]
METHODS: dict[str, Callable[[Any, Any], Any]] = {
    "try_acquire": lambda rl, c: rl.try_acquire("k", c),
    "check": lambda rl, c: rl.check("k", cost=c),
    "acquire": lambda rl, c: rl.acquire("k", c, timeout=0),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("cost", BAD_COSTS, ids=repr)
def test_costs_are_refused_alike(dead: Any, method: str, cost: object) -> None:
    call = METHODS[method]
    same_error(RateLimiter(10), RedisRateLimiter(dead, 10), lambda rl: call(rl, cost))


@pytest.mark.parametrize("cost", BAD_COSTS, ids=repr)
def test_acquire_async_refuses_costs_alike_and_at_the_call(cost: object) -> None:
    client = redis.asyncio.Redis(port=free_port())
    same_error(
        RateLimiter(10), RedisRateLimiter(client, 10), lambda rl: rl.acquire_async("k", cost)
    )


@pytest.mark.parametrize(
    "timeout", [-1, -0.001, math.nan, math.inf, -math.inf, 1e10, 2**64, True, "1", b"1", []]
)
def test_timeouts_are_refused_alike(timeout: object) -> None:
    local = RateLimiter(10)
    remote = RedisRateLimiter(redis.asyncio.Redis(port=free_port()), 10)
    same_error(local, remote, lambda rl: rl.acquire_async("k", timeout=timeout))
    sync = RedisRateLimiter(redis.Redis(port=free_port()), 10)
    same_error(local, sync, lambda rl: rl.acquire("k", timeout=timeout))


def test_keys_the_in_process_limiter_refuses_are_refused_too(dead: Any) -> None:
    """In process a key is any hashable; in Redis one of None, str, int, bytes or a tuple
    of those (the encoding needs a value every process computes alike). Both refuse an
    unhashable key with a TypeError."""
    local, remote = RateLimiter(10), RedisRateLimiter(dead, 10)
    for key in ([1], {}, {1}, ("a", [1]), bytearray(b"x")):
        for rl in (local, remote):
            with pytest.raises(TypeError):
                rl.try_acquire(key)


def test_key_encoding_is_stable() -> None:
    """The bytes name buckets in Redis: changing them would empty every bucket of a
    running deployment."""

    class S(str):
        def __str__(self) -> str:
            return "other"

    class I(int):  # noqa: E742
        def __repr__(self) -> str:
            return "other"

    table: list[tuple[object, bytes]] = [
        (None, b"n:"),
        ("", b"s:"),
        ("user:1", b"s:user:1"),
        ("é☃", "s:é☃".encode()),
        ("\ud800", b"s:\xed\xa0\x80"),  # a lone surrogate passes through
        (S("a"), b"s:a"),
        (0, b"i:0"),
        (-7, b"i:-7"),
        (True, b"i:1"),
        (I(5), b"i:5"),
        (2**64, b"i:18446744073709551616"),
        (-(2**100), b"i:-1267650600228229401496703205376"),
        (b"", b"b:"),
        (b"\x00\xff", b"b:\x00\xff"),
        ((), b"t:"),
        (("user", 1), b"t:6:s:user3:i:1"),
        ((None, (b"x",)), b"t:2:n:7:t:3:b:x"),
    ]
    for key, want in table:
        assert _native._redis_key(key) == want, key
    deep: object = "x"
    for _ in range(16):
        deep = (deep,)
    assert _native._redis_key(deep).startswith(b"t:")
    with pytest.raises(TypeError, match=r"^key must not nest tuples more than 16 deep$"):
        _native._redis_key((deep,))
    with pytest.raises(TypeError, match=r"^key must be None, str, int, bytes or a tuple"):
        _native._redis_key(1.0)


def test_waits_use_the_native_slice() -> None:
    assert _native._WAIT_SLICE == 0.05
    assert _ratelimit._WAIT_SLICE is _native._WAIT_SLICE


# ---- the registry ------------------------------------------------------------------------


def taken_registry() -> Registry:
    reg = Registry()
    reg.register("a")
    return reg


BAD_REGISTRY_CALLS: dict[str, Call] = {
    # register
    "id int": lambda r: r.register(1),
    "id None": lambda r: r.register(None),
    "id bytes": lambda r: r.register(b"a"),
    "id surrogate": lambda r: r.register("\ud800"),
    "caps str": lambda r: r.register("a", capabilities="abc"),
    "caps int": lambda r: r.register("a", capabilities=5),
    "caps item": lambda r: r.register("a", capabilities=["x", 1]),
    "caps gen item": lambda r: r.register("a", capabilities=(c for c in ["x", None])),
    "node int": lambda r: r.register("a", node=1),
    "node bytes": lambda r: r.register("a", node=b"n"),
    "health int": lambda r: r.register("a", health=1),
    "metadata list": lambda r: r.register("a", metadata=[1]),
    "metadata str": lambda r: r.register("a", metadata="m"),
    "metadata key": lambda r: r.register("a", metadata={1: 2}),
    "ttl zero": lambda r: r.register("a", ttl=0),
    "ttl negative": lambda r: r.register("a", ttl=-1),
    "ttl nan": lambda r: r.register("a", ttl=math.nan),
    "ttl inf": lambda r: r.register("a", ttl=math.inf),
    "ttl huge": lambda r: r.register("a", ttl=1e10),
    "ttl str": lambda r: r.register("a", ttl="1"),
    "ttl bool": lambda r: r.register("a", ttl=True),
    "id before caps": lambda r: r.register(1, capabilities=5),
    "caps before ttl": lambda r: r.register("a", capabilities=5, ttl=-1),
    # register_many
    "items int": lambda r: r.register_many(5),
    "items str item": lambda r: r.register_many(["a"]),
    "items list item": lambda r: r.register_many([[("agent_id", "a")]]),
    "items unknown key": lambda r: r.register_many([{"agent_id": "a", "colour": 1}]),
    "items key not str": lambda r: r.register_many([{"agent_id": "a", 1: 1}]),
    "items no id": lambda r: r.register_many([{"value": 1}]),
    "items bad id": lambda r: r.register_many([{"agent_id": "ok"}, {"agent_id": 5}]),
    "items bad caps": lambda r: r.register_many([{"agent_id": "a", "capabilities": "c"}]),
    "items bad ttl": lambda r: r.register_many([{"agent_id": "a", "ttl": 0}]),
    "items twice": lambda r: r.register_many([{"agent_id": "d"}, {"agent_id": "d"}]),
    "items too many": lambda r: r.register_many({"agent_id": str(i)} for i in range(4)),
    "items checked first": lambda r: r.register_many([{"agent_id": 1}] + [{}] * 4),
    # the other calls taking an id
    "get": lambda r: r.get(1),
    "lookup": lambda r: r.lookup(None),
    "unregister": lambda r: r.unregister(b"a"),
    "heartbeat id": lambda r: r.heartbeat(1),
    "heartbeat ttl": lambda r: r.heartbeat("a", ttl=0),
    "heartbeat ttl str": lambda r: r.heartbeat("a", ttl="1"),
    "heartbeat ttl first": lambda r: r.heartbeat(1, ttl=-1),
    # update
    "update id": lambda r: r.update(1, health="x"),
    "update caps": lambda r: r.update("a", capabilities="x"),
    "update caps item": lambda r: r.update("a", capabilities=[1]),
    "update node": lambda r: r.update("a", node=1),
    "update health": lambda r: r.update("a", health=1),
    "update health None": lambda r: r.update("a", health=None),
    "update metadata": lambda r: r.update("a", metadata=[1]),
    "update metadata key": lambda r: r.update("a", metadata={(1,): 1}),
    # queries
    "capability": lambda r: r.find(capability=1),
    "node": lambda r: r.count(node=b"n"),
    "health": lambda r: r.ids(health=1),
    "limit negative": lambda r: r.find(limit=-1),
    "limit huge negative": lambda r: r.find(limit=-(2**70)),
    "limit float": lambda r: r.count(limit=1.5),
    "limit bool": lambda r: r.ids(limit=True),
    "where str": lambda r: r.find(where="x == 1"),
    "where int": lambda r: r.find(where=1),
    "where dict": lambda r: r.find(where={"x": 1}),
    "where pair": lambda r: r.find(where=[("x", "eq")]),
    "where item": lambda r: r.count(where=[5]),
    "where path": lambda r: r.find(where=[(1, "eq", 1)]),
    "where op type": lambda r: r.find(where=[("x", 1, 1)]),
    "where op": lambda r: r.ids(where=[("x", "like", 1)]),
    "where in int": lambda r: r.find(where=[("x", "in", 1)]),
    "where not_in str": lambda r: r.find(where=[("x", "not_in", "abc")]),
    "where list of lists": lambda r: r.find(where=[["x", "eq", 1], ["y", "gt"]]),
    "capability before where": lambda r: r.find(capability=1, where="x"),
    "where before limit": lambda r: r.find(where="x", limit=-1),
}


@pytest.mark.parametrize("name", sorted(BAD_REGISTRY_CALLS))
def test_registries_refuse_alike(dead: Any, name: str) -> None:
    local = Registry(max_batch=3)
    remote = RedisRegistry(dead, max_batch=3)
    same_error(local, remote, BAD_REGISTRY_CALLS[name])


@pytest.mark.parametrize("max_batch", [0, -1, 1.5, True, "1", 2**63, 2**64])
def test_registry_constructors_refuse_alike(dead: Any, max_batch: object) -> None:
    want = outcome(lambda _: Registry(max_batch=max_batch), None)
    assert outcome(lambda _: RedisRegistry(dead, max_batch=max_batch), None) == want


def test_registry_arguments_are_converted_as_in_process() -> None:
    fields = _native._registration(
        "a", capabilities=("c", "b", "c"), node="n", health=None, metadata={"k": [1]}, ttl=1.5
    )
    assert fields == ("a", ["b", "c"], "n", "healthy", {"k": [1]}, 1_500_000_000)
    assert _native._registration("a") == ("a", [], None, "healthy", {}, None)
    assert _native._changes(node=None, health="x") == {"node": None, "health": "x"}
    assert _native._criteria(limit=2**70)[4] == 2**64 - 1
    err = _native._already_registered("a")
    assert isinstance(err, ferrule.AlreadyRegistered)
    assert str(err) == str(outcome(lambda r: r.register("a"), taken_registry())[1])
    assert _native._max_batch(10_000) == Registry().max_batch
    with pytest.raises(ValueError, match=r"^owner is not supported by RedisRegistry"):
        RedisRegistry(redis.Redis(port=free_port())).register("a", owner=object())  # type: ignore[arg-type]


# ---- where: decided as Registry.find decides it ------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(2**63 - 2, 2**65),  # beyond 64 bits: Python decides
    st.sampled_from([0.5, -1.0, 2.0, math.inf]),
    st.sampled_from(["a", "b", "ab", ""]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("xyz"), inner),
    max_leaves=6,
)
OPS = st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in"])
PATHS = st.sampled_from(["x", "y", "x.y", "x.z", "z.x.y"])


@st.composite
def conditions(draw: st.DrawFn) -> tuple[str, str, Any]:
    op = draw(OPS)
    value = draw(
        st.lists(JSON, max_size=3) | st.tuples(JSON) | st.frozensets(SCALARS, max_size=3)
        if op in ("in", "not_in")
        else JSON
    )
    return draw(PATHS), op, value


@settings(max_examples=300, deadline=None)
@given(
    metadata=st.dictionaries(st.sampled_from("xyz"), JSON, max_size=3),
    where=st.lists(conditions(), min_size=1, max_size=3),
)
def test_where_matches_as_the_registry_finds(metadata: dict[str, Any], where: list[Any]) -> None:
    reg = Registry()
    reg.register("a", metadata=metadata)
    want = reg.count(where=where) == 1
    parsed = _native._criteria(where=where)[3]
    assert _native._match_where(parsed, metadata) is want
    # What the Redis registry matches against: the metadata after a JSON round trip.
    if json.loads(json.dumps(metadata)) == metadata:
        assert _native._match_where(_native._Where(where), json.loads(json.dumps(metadata))) is want


def test_where_edge_cases() -> None:
    w = _native._Where([("tags", "eq", "t"), ("n", "in", {1, 2})])
    assert _native._match_where(w, {"tags": ["s", "t"], "n": 2})
    assert not _native._match_where(w, {"tags": ["s"], "n": 2})
    assert not _native._match_where(w, {"n": 2})  # a missing path never matches
    assert not _native._match_where(_native._Where([("n", "lt", "x")]), {"n": 1})  # refused
    assert _native._match_where(None, {"n": 1})
    assert _native._match_where(_native._Where(), {})
    with pytest.raises(TypeError, match=r"^where must be a list of"):
        _native._Where(lambda a: True)
    with pytest.raises(TypeError, match=r"^where must be a parsed where"):
        _native._match_where([("n", "eq", 1)], {"n": 1})  # type: ignore[arg-type]
    f = _native._criteria(where=len)[3]
    assert f is len  # a callable is the caller's to call (on the agent)


def test_a_where_is_collected_with_a_cycle_through_its_values() -> None:
    class Box:
        pass

    box = Box()
    box.where = _native._Where([("x", "in", [box])])  # type: ignore[attr-defined]
    ref = weakref.ref(box)
    del box
    gc.collect()
    assert ref() is None


# ---- the package ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ferrule.redis.__all__)
def test_public_names_report_module_ferrule_redis(name: str) -> None:
    obj = getattr(ferrule.redis, name)
    assert obj.__module__ == "ferrule.redis"
    assert getattr(ferrule.redis, obj.__qualname__) is obj
    assert repr(obj) == f"<class 'ferrule.redis.{name}'>"
    assert pickle.loads(pickle.dumps(obj)) is obj


def test_the_package_exports_what_the_module_did() -> None:
    assert ferrule.redis.__all__ == [
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
    assert ferrule.redis.OnError is _ratelimit.OnError
    assert ferrule.redis.BreakerOnError is _breaker.BreakerOnError
    assert ferrule.redis.BusOnError is _bus.BusOnError
    assert ferrule.redis.Mode is _bus.Mode
    assert RedisAgent.__dataclass_fields__.keys() == {
        "agent_id",
        "value",
        "capabilities",
        "node",
        "health",
        "metadata",
        "registered_at",
        "expires_at",
    }


LUA = {
    "breaker",
    "common",
    "registry",
    "gcra",
    "register",
    "unregister",
    "update",
    "heartbeat",
    "expire",
    "find",
    "get",
    "len",
}


def test_scripts_are_package_resources() -> None:
    folder = importlib.resources.files("ferrule.redis").joinpath("lua")
    shipped = {p.name.removesuffix(".lua") for p in folder.iterdir() if p.name.endswith(".lua")}
    assert shipped == LUA
    alone = {"gcra": _ratelimit._GCRA, "breaker": _breaker._BREAKER}
    scripts = {
        **alone,
        **{n: getattr(_registry, f"_{n.upper()}") for n in LUA - {"common", "registry", *alone}},
    }
    for name, script in scripts.items():
        parts = [name] if name in alone else ["common", "registry", name]
        src = "".join(folder.joinpath(f"{p}.lua").read_text("utf-8") for p in parts)
        assert script.src == src == _common.lua(*parts)
        assert script.sha == hashlib.sha1(src.encode()).hexdigest()
        assert "redis.call" in src or name == "expire"
