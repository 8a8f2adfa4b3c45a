"""RedisRegistry against a real redis-server: Registry's contract (shared tests run on
both), leases on the server clock, index consistency, reclamation down to no key at all,
two processes, a stateful model test, a server restart and bad input."""

from __future__ import annotations

import math
import multiprocessing
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import pytest
from ferrule import AlreadyRegistered, BackendError, FerruleError, Registry
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.redis_server import RedisServer, free_port, lease_holder, server_or_skip

redis = pytest.importorskip("redis")
from ferrule.redis import RedisAgent, RedisRegistry  # noqa: E402

Make = Callable[..., Any]


@pytest.fixture(params=["memory", "redis"])
def make(request: pytest.FixtureRequest) -> Make:
    """A factory of registries: the in-process one, then the Redis one."""
    if request.param == "memory":
        return Registry
    client = request.getfixturevalue("redis_client")
    return lambda **kw: RedisRegistry(client, **kw)


def keys(client: Any, prefix: str = "ferrule:reg:") -> list[str]:
    """Live keys under a prefix (SCAN skips keys whose expiry has passed)."""
    return sorted(k.decode() for k in client.scan_iter(match=prefix + "*", count=1000))


# ---- Registry's contract, on both ------------------------------------------------------


def test_register_get_lookup_and_agent_fields(make: Make) -> None:
    reg = make()
    reg.register(
        "a1",
        {"url": "http://a1"},
        capabilities=["search", "code", "search"],
        node="n1",
        metadata={"gpu": 2},
    )
    agent = reg.get("a1")
    assert agent.agent_id == "a1"
    assert agent.value == {"url": "http://a1"}
    assert agent.capabilities == frozenset({"search", "code"})
    assert agent.node == "n1"
    assert agent.health == "healthy"
    assert dict(agent.metadata) == {"gpu": 2}
    assert isinstance(agent.metadata, types.MappingProxyType)
    assert reg.lookup("a1") == {"url": "http://a1"}
    assert "a1" in reg and "zz" not in reg and 1 not in reg
    assert len(reg) == 1
    assert reg.get("zz") is None
    with pytest.raises(KeyError):
        reg.lookup("zz")
    with pytest.raises(AttributeError):
        agent.health = "x"
    with pytest.raises(TypeError):
        agent.metadata["gpu"] = 3


def test_already_registered_leaves_the_winner(make: Make) -> None:
    reg = make()
    reg.register("a", 1, capabilities=["x"])
    with pytest.raises(AlreadyRegistered) as ei:
        reg.register("a", 2, capabilities=["y"], node="n")
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, FerruleError)
    assert ei.value.args == ("agent id 'a' is already registered",)
    assert reg.lookup("a") == 1
    assert reg.ids(capability="y") == [] and reg.ids(node="n") == []


def test_unregister_and_update(make: Make) -> None:
    reg = make()
    reg.register("a", capabilities=["x", "y"], node="n1", metadata={"v": 1})
    reg.update("a", capabilities=["y", "z"], node=None, health="degraded", metadata={"v": 2})
    agent = reg.get("a")
    assert agent.capabilities == {"y", "z"}
    assert agent.node is None
    assert agent.health == "degraded"
    assert agent.metadata == {"v": 2}
    assert reg.ids(capability="x") == []
    assert reg.ids(capability="z") == ["a"]
    assert reg.ids(node="n1") == []
    assert reg.ids(health="healthy") == []
    reg.update("a", node="n2")
    assert reg.get("a").capabilities == {"y", "z"}
    assert reg.ids(node="n2") == ["a"]
    assert reg.unregister("a") is True
    assert reg.unregister("a") is False
    with pytest.raises(KeyError):
        reg.update("a", health="x")
    reg.register("b")
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'colour'"):
        reg.update("b", colour="red")


def test_find_count_ids_limit_and_where(make: Make) -> None:
    reg = make()
    for i in range(20):
        reg.register(
            f"a{i}",
            i,
            capabilities=["even" if i % 2 == 0 else "odd", "all"],
            node=f"n{i % 3}",
            health="healthy" if i < 15 else "unhealthy",
            metadata={"i": i, "tags": ["t", f"t{i % 4}"], "deep": {"load": i / 20}},
        )
    assert sorted(reg.ids(capability="even", node="n0")) == ["a0", "a12", "a18", "a6"]
    assert reg.count(capability="all", health="unhealthy") == 5
    assert reg.count() == 20
    assert len(reg.find(capability="all", limit=3)) == 3
    assert reg.find(capability="all", limit=0) == []
    assert reg.count(capability="nope") == 0
    found = reg.find(capability="odd", where=[("i", "gt", 14)])
    assert sorted(a.agent_id for a in found) == ["a15", "a17", "a19"]
    assert sorted(reg.ids(where=[("deep.load", "lt", 0.1)])) == ["a0", "a1"]
    assert reg.count(where=[("tags", "eq", "t")]) == 20
    assert reg.count(where=[("tags", "in", ["t3", "t2"])]) == 10
    assert reg.count(where=[("i", "not_in", {1, 2, 3})]) == 17
    assert reg.count(where=[("i", "ne", 1), ("i", "lte", 3)]) == 3
    assert reg.count(where=[("i", "gte", 19)]) == 1
    assert reg.count(where=[("missing", "ne", 1)]) == 0
    assert reg.count(where=[("i.x", "eq", 1)]) == 0
    assert reg.count(where=[("i", "lt", "x")]) == 0  # Python refuses: no match
    assert reg.ids(where=lambda a: a.value == 7) == ["a7"]
    assert len(reg.ids(capability="all", where=lambda a: a.value > 2, limit=4)) == 4
    assert reg.count(where=[("i", "gte", 10)], limit=3) == 3


def test_register_many_is_all_or_nothing(make: Make) -> None:
    reg = make()
    reg.register("taken", capabilities=["c"])
    items = [
        {"agent_id": "m1", "capabilities": ["c"]},
        {"agent_id": "m2", "ttl": 5.0},
        {"agent_id": "taken"},
    ]
    with pytest.raises(AlreadyRegistered):
        reg.register_many(items)
    assert "m1" not in reg and "m2" not in reg
    assert sorted(reg.ids(capability="c")) == ["taken"]
    assert reg.register_many(items[:2]) == 2
    assert "m1" in reg and "m2" in reg
    with pytest.raises(AlreadyRegistered):
        reg.register_many([{"agent_id": "d"}, {"agent_id": "d"}])
    assert "d" not in reg
    assert reg.register_many([]) == 0


def test_register_many_limits_the_batch_and_checks_items(make: Make) -> None:
    reg = make(max_batch=3)
    assert reg.max_batch == 3
    with pytest.raises(ValueError, match=r"items must hold at most max_batch \(3\) items"):
        reg.register_many({"agent_id": str(i)} for i in range(4))
    assert len(reg) == 0
    with pytest.raises(TypeError, match=r"unexpected key 'colour'"):
        reg.register_many([{"agent_id": "a", "colour": 1}])
    with pytest.raises(TypeError, match=r"missing 'agent_id'"):
        reg.register_many([{"value": 1}])
    with pytest.raises(TypeError, match=r"items must be an iterable of dicts"):
        reg.register_many([1])
    with pytest.raises(TypeError, match=r"agent_id must be a str"):
        reg.register_many([{"agent_id": "ok"}, {"agent_id": 5}])
    assert len(reg) == 0


def test_bad_input(make: Make) -> None:
    reg = make()
    with pytest.raises(TypeError, match=r"agent_id must be a str, not 'int'"):
        reg.register(1)
    with pytest.raises(TypeError, match=r"agent_id must be a str, not 'NoneType'"):
        reg.get(None)
    with pytest.raises(TypeError, match=r"agent_id must be a str"):
        reg.unregister(b"a")
    with pytest.raises(ValueError, match=r"ttl must be > 0"):
        reg.register("a", ttl=0)
    with pytest.raises(ValueError, match=r"ttl must be a finite number of seconds"):
        reg.register("a", ttl=float("nan"))
    with pytest.raises(TypeError, match=r"ttl must be a number of seconds, not 'str'"):
        reg.register("a", ttl="1")
    with pytest.raises(TypeError, match=r"capabilities must be an iterable of str, not a str"):
        reg.register("a", capabilities="abc")
    with pytest.raises(TypeError, match=r"capabilities must contain only str, not 'int'"):
        reg.register("a", capabilities=["x", 1])
    with pytest.raises(TypeError, match=r"node must be a str, not 'int'"):
        reg.register("a", node=1)
    with pytest.raises(TypeError, match=r"health must be a str, not 'int'"):
        reg.register("a", health=1)
    with pytest.raises(TypeError, match=r"metadata must be a mapping or None, not 'list'"):
        reg.register("a", metadata=[1])
    with pytest.raises(TypeError, match=r"metadata keys must be str, not 'int'"):
        reg.register("a", metadata={1: 2})
    with pytest.raises(ValueError, match=r"max_batch must be >= 1"):
        make(max_batch=0)
    with pytest.raises(ValueError, match=r"ttl must be > 0"):
        reg.heartbeat("a", ttl=-1)
    assert len(reg) == 0


def test_bad_where(make: Make) -> None:
    reg = make()
    reg.register("a", metadata={"x": 1})
    with pytest.raises(
        ValueError,
        match=r"where op must be one of eq, ne, gt, gte, lt, lte, in, not_in, not 'like'",
    ):
        reg.find(where=[("x", "like", 1)])
    with pytest.raises(TypeError, match=r"where must be a callable or a list of"):
        reg.find(where="x == 1")
    with pytest.raises(TypeError, match=r"where must be a callable or a list of"):
        reg.find(where=[("x", "eq")])
    with pytest.raises(TypeError, match=r"where path must be a str"):
        reg.find(where=[(1, "eq", 1)])
    with pytest.raises(
        TypeError, match=r"where value for 'in' must be a list, tuple or set, not 'int'"
    ):
        reg.find(where=[("x", "in", 1)])
    with pytest.raises(ValueError, match=r"limit must be >= 0"):
        reg.find(limit=-1)
    with pytest.raises(TypeError, match=r"capability must be a str"):
        reg.find(capability=1)

    def boom(agent: Any) -> bool:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match=r"boom"):
        reg.find(where=boom)


# ---- Redis only -----------------------------------------------------------------------


def test_agent_fields_from_the_server(redis_client: Any) -> None:
    reg = RedisRegistry(redis_client, ttl=10.0)
    sec, usec = redis_client.time()
    reg.register("a", [1, (2, 3)], metadata={"t": (1, 2)})
    a = reg.get("a")
    assert isinstance(a, RedisAgent)
    assert a.value == [1, [2, 3]]  # JSON: tuples come back as lists
    assert a.metadata == {"t": [1, 2]}
    assert math.isclose(a.registered_at, sec + usec / 1e6, abs_tol=1.0)
    assert a.expires_at is not None
    assert math.isclose(a.expires_at - a.registered_at, 10.0, abs_tol=1e-6)
    assert repr(a) == "RedisAgent(agent_id='a', capabilities={}, node=None, health='healthy')"
    assert reg.ttl == 10.0 and reg.prefix == "ferrule:reg:"
    assert repr(reg) == "RedisRegistry(prefix='ferrule:reg:', ttl=10.0)"


def test_owner_refused_and_values_must_be_json(redis_client: Any) -> None:
    reg = RedisRegistry(redis_client)
    with pytest.raises(ValueError, match=r"^owner is not supported by RedisRegistry: leases"):
        reg.register("a", owner=threading.current_thread())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^owner is not supported"):
        reg.register_many([{"agent_id": "a", "owner": object()}])
    with pytest.raises(TypeError, match=r"^value must be JSON-serialisable: "):
        reg.register("a", object())
    with pytest.raises(TypeError, match=r"^value must be JSON-serialisable: "):
        reg.register("a", math.nan)
    with pytest.raises(TypeError, match=r"^metadata must be JSON-serialisable: "):
        reg.register("a", metadata={"s": {1, 2}})
    with pytest.raises(TypeError, match=r"^metadata must be JSON-serialisable: "):
        reg.register("b")
        reg.update("b", metadata={"f": print})
    assert keys(redis_client) == [
        "ferrule:reg:d",
        "ferrule:reg:e:b",
        "ferrule:reg:h:healthy",
    ]
    with pytest.raises(TypeError, match=r"client must be a synchronous redis.Redis"):
        RedisRegistry(redis.asyncio.Redis())
    with pytest.raises(TypeError, match=r"^client must be a redis.Redis"):
        RedisRegistry(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^prefix must be a str"):
        RedisRegistry(redis_client, prefix=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^ttl must be a number of seconds"):
        RedisRegistry(redis_client, ttl=None)  # type: ignore[arg-type]


def test_values_resized_by_other_threads_are_encoded_as_one_snapshot(redis_client: Any) -> None:
    """A value or metadata that another thread resizes while it is encoded: each stored
    JSON is one state it had (CPython 3.13t's C encoder crashed walking such a dict), a
    cycle is still refused, and nothing crashes."""
    reg = RedisRegistry(redis_client)
    shared: dict[str, Any] = {"items": [], "nested": {"n": 0}}
    stop = threading.Event()

    def resize() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            shared[f"k{n % 64}"] = n
            shared.pop(f"k{(n + 32) % 64}", None)
            shared["items"].append(n)
            if len(shared["items"]) > 64:
                shared["items"].clear()
            shared["nested"][n % 16] = [n]

    mutator = threading.Thread(target=resize)
    # With the GIL, each reply waits for the mutator's switch interval: shorten it.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    mutator.start()
    try:
        for i in range(300):
            reg.register(f"a{i}", shared, metadata={"m": shared})
            got = reg.get(f"a{i}")
            assert got is not None and isinstance(got.value, dict) and "items" in got.value
            reg.unregister(f"a{i}")
    finally:
        stop.set()
        mutator.join()
        sys.setswitchinterval(interval)
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(TypeError, match=r"^value must be JSON-serialisable: Circular"):
        reg.register("c", loop)


def test_every_key_has_the_prefix_and_none_stays_after_unregister(redis_client: Any) -> None:
    reg = RedisRegistry(redis_client, prefix="app:")
    for i in range(50):
        reg.register(str(i), capabilities=[f"c{i}", "shared"], node=f"n{i % 5}", health=f"h{i}")
    ks = keys(redis_client, "")
    assert all(k.startswith("app:") for k in ks)
    assert len(ks) == 50 + 51 + 5 + 50 + 1  # entries, capabilities, nodes, health, deadlines
    for i in range(50):
        assert reg.unregister(str(i))
    assert keys(redis_client, "") == []


def test_lease_expires_on_the_server_clock_and_heartbeat_renews(redis_client: Any) -> None:
    reg = RedisRegistry(redis_client, ttl=0.3)
    reg.register("a", capabilities=["c"], node="n")
    reg.register("b", capabilities=["c"], node="n", ttl=0.15)
    assert sorted(reg.ids(capability="c")) == ["a", "b"]
    time.sleep(0.2)
    assert reg.heartbeat("a") is True
    assert reg.get("b") is None and "b" not in reg
    assert reg.heartbeat("b") is False
    assert reg.ids(capability="c") == ["a"] and reg.ids(node="n") == ["a"]
    assert reg.count() == 1 and len(reg) == 1
    with pytest.raises(KeyError):
        reg.lookup("b")
    with pytest.raises(KeyError):
        reg.update("b", health="x")
    assert reg.unregister("b") is False  # expired: removed, but it was not live
    reg.register("b")  # an expired id is free again
    time.sleep(0.15)
    assert "a" in reg  # renewed at 0.2 s for 0.3 s
    assert reg.heartbeat("a", ttl=5.0)
    assert reg.get("a").expires_at - time.time() > 4.0  # type: ignore[union-attr]


def test_expire_sweeps_entries_and_rows(redis_client: Any) -> None:
    reg = RedisRegistry(redis_client, ttl=60.0)
    reg.register("long", capabilities=["c"])
    # One script stamps all 30 leases at once: no write in between sweeps any of them,
    # however slow the machine (separate registers let later writes reclaim earlier ones).
    reg.register_many(
        {"agent_id": f"s{i}", "capabilities": ["c", f"c{i}"], "node": "n", "ttl": 0.05}
        for i in range(30)
    )
    time.sleep(0.08)
    assert reg.count(capability="c") == 1
    assert reg.expire() == 30
    assert reg.expire() == 0
    assert keys(redis_client) == [
        "ferrule:reg:c:c",
        "ferrule:reg:d",
        "ferrule:reg:e:long",
        "ferrule:reg:h:healthy",
    ]


def test_writes_reclaim_expired_entries(redis_client: Any) -> None:
    reg = RedisRegistry(redis_client)
    for i in range(40):
        reg.register(f"s{i}", capabilities=["c"], ttl=0.01)
    time.sleep(0.03)
    for i in range(10):
        reg.register(f"n{i}")
    # Each write swept up to 8 expired entries on its way.
    assert redis_client.zcard("ferrule:reg:d") == 10
    assert redis_client.scard("ferrule:reg:c:c") == 0


def test_no_key_stays_behind_after_idle(redis_client: Any) -> None:
    # Nobody calls expire(): every key expires a lease of grace after its last deadline.
    reg = RedisRegistry(redis_client, ttl=0.1)
    reg.register_many(
        {"agent_id": f"a{i}", "capabilities": ["x", f"c{i}"], "node": "n", "metadata": {"i": i}}
        for i in range(20)
    )
    reg.update("a0", health="degraded", capabilities=["y"])
    assert reg.heartbeat("a1")
    assert len(keys(redis_client)) > 20
    time.sleep(0.35)
    assert keys(redis_client) == []
    assert len(reg) == 0 and reg.find() == []


def test_stale_rows_never_match_a_new_registration(redis_client: Any) -> None:
    # An entry whose hash the server already dropped leaves its id in index sets until
    # they expire; a query checks each candidate against its entry, so the id's next
    # registration is never found under the old rows.
    reg = RedisRegistry(redis_client)
    reg.register("a", capabilities=["old"], node="n-old", ttl=0.02)
    redis_client.delete("ferrule:reg:e:a")
    reg.register("a", capabilities=["new"], node="n-new")
    assert reg.ids(capability="old") == [] and reg.ids(node="n-old") == []
    assert reg.ids(capability="new") == ["a"] and reg.count() == 1


def test_script_is_reloaded_after_script_flush(redis_client: Any) -> None:
    reg = RedisRegistry(redis_client)
    reg.register("a")
    redis_client.script_flush()
    assert reg.ids() == ["a"]


def test_server_killed_then_restarted() -> None:
    server = server_or_skip()
    try:
        reg = RedisRegistry(server.client(socket_timeout=1.0))
        reg.register("a")
        server.stop()
        with pytest.raises(BackendError) as info:
            reg.register("b")
        assert isinstance(info.value.__cause__, redis.ConnectionError)
        with pytest.raises(BackendError):
            reg.find()
        server.start()
        reg.register("b")
        assert reg.ids() == ["b"]  # no persistence: the restarted server is empty
    finally:
        server.close()


def test_constructor_does_no_io() -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    reg = RedisRegistry(dead)
    with pytest.raises(BackendError):
        len(reg)


def test_two_processes_share_leases_and_indexes(redis_server: RedisServer) -> None:
    client = redis_server.client()
    client.flushall()
    reg = RedisRegistry(client)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        # The other process registers "w" (ttl 0.3 s) and renews it 4 times, 0.1 s apart.
        r = pool.apply_async(lease_holder, (redis_server.port, "w", 0.3, 4, 0.1))
        deadline = time.monotonic() + 20
        while "w" not in reg and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = 0
        while not r.ready():
            assert reg.ids(capability="work", node="n1") == ["w"]
            seen += 1
            time.sleep(0.02)
        assert r.get(timeout=30) == 4
    assert seen > 5
    a = reg.get("w")
    assert a is not None and a.value["pid"] != 0
    # The holder stopped renewing: its lease runs out, and with it every row.
    time.sleep(0.35)
    assert "w" not in reg
    assert reg.ids(capability="work") == [] and reg.count(node="n1") == 0
    assert reg.expire() == 1
    assert keys(client) == []


def test_threads_register_and_unregister_consistently(redis_client: Any, threads: int) -> None:
    reg = RedisRegistry(redis_client)
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait()
            for i in range(15):
                aid = f"t{t}-{i}"
                reg.register(aid, capabilities=["c", f"t{t}"], node=f"n{i % 2}")
                reg.update(aid, health="degraded")
                if i % 3 == 0:
                    reg.unregister(aid)
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    live = threads * 10
    assert reg.count(capability="c") == live == len(reg)
    assert reg.count(health="degraded") == live and reg.count(health="healthy") == 0
    assert redis_client.scard("ferrule:reg:c:c") == live


# ---- stateful: RedisRegistry against a dict model --------------------------------------

IDS = st.sampled_from([f"a{i}" for i in range(6)])
CAPS = st.sets(st.sampled_from(["search", "code", "plan"]), max_size=3)
NODES = st.sampled_from([None, "n1", "n2"])
HEALTH = st.sampled_from(["healthy", "degraded"])
META = st.fixed_dictionaries({}, optional={"n": st.integers(-3, 3), "s": st.sampled_from("xy")})


class RedisRegistryMachine(RuleBasedStateMachine):
    client: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.client.flushall()
        self.reg = RedisRegistry(self.client)
        self.model: dict[str, dict[str, Any]] = {}

    @rule(aid=IDS, caps=CAPS, node=NODES, health=HEALTH, meta=META)
    def register(self, aid: str, caps: set[str], node: str | None, health: str, meta: Any) -> None:
        try:
            self.reg.register(aid, capabilities=caps, node=node, health=health, metadata=meta)
        except AlreadyRegistered:
            assert aid in self.model
        else:
            assert aid not in self.model
            self.model[aid] = {"caps": caps, "node": node, "health": health, "meta": meta}

    @rule(aid=IDS)
    def unregister(self, aid: str) -> None:
        assert self.reg.unregister(aid) == (self.model.pop(aid, None) is not None)

    @rule(aid=IDS, caps=CAPS, node=NODES, health=HEALTH)
    def update(self, aid: str, caps: set[str], node: str | None, health: str) -> None:
        if aid in self.model:
            self.reg.update(aid, capabilities=caps, node=node, health=health)
            self.model[aid].update(caps=caps, node=node, health=health)
        else:
            with pytest.raises(KeyError):
                self.reg.update(aid, health=health)

    @rule(cap=st.sampled_from([None, "search", "code"]), node=NODES, n=st.integers(-3, 3))
    def find(self, cap: str | None, node: str | None, n: int) -> None:
        want = sorted(
            aid
            for aid, e in self.model.items()
            if (cap is None or cap in e["caps"])
            and (node is None or e["node"] == node)
            and e["meta"].get("n", math.inf) <= n
        )
        assert sorted(self.reg.ids(capability=cap, node=node, where=[("n", "lte", n)])) == want

    @invariant()
    def indexes_match_entries(self) -> None:
        assert len(self.reg) == len(self.model)
        for cap in ("search", "code", "plan"):
            want = {a for a, e in self.model.items() if cap in e["caps"]}
            assert {k.decode() for k in self.client.smembers(f"ferrule:reg:c:{cap}")} == want


def test_stateful_against_a_model(redis_client: Any) -> None:
    RedisRegistryMachine.client = redis_client
    RedisRegistryMachine.TestCase.settings = settings(
        max_examples=25,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    RedisRegistryMachine.TestCase().runTest()


def test_clients_that_decode_responses_work_too(redis_server: RedisServer) -> None:
    c = redis_server.client(decode_responses=True)
    c.flushall()
    reg = RedisRegistry(c)
    reg.register("a", {"v": 1}, capabilities=["x"], node="n")
    a = reg.get("a")
    assert a is not None and (a.value, a.node, a.capabilities) == ({"v": 1}, "n", {"x"})
    assert reg.ids(capability="x") == ["a"] and [b.agent_id for b in reg.find(node="n")] == ["a"]


def test_non_ascii_ids_capabilities_and_nodes(redis_client: Any) -> None:
    reg = RedisRegistry(redis_client)
    reg.register("agént-☃", "v", capabilities=["séarch", "日本"], node="nœud", health="bien")
    assert reg.ids(capability="日本", node="nœud", health="bien") == ["agént-☃"]
    assert "ferrule:reg:c:séarch" in keys(redis_client)
    reg.update("agént-☃", capabilities=["x"])
    assert reg.ids(capability="séarch") == [] and reg.ids(capability="x") == ["agént-☃"]
    assert reg.unregister("agént-☃") and keys(redis_client) == []
