"""Registry and Agent: unit tests, owners, leases, batches and bad input."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import sys
import threading
import types
import weakref
from typing import Any

import pytest
from ferrule import Agent, AlreadyRegistered, FerruleError, ManualClock, Registry


@pytest.mark.smoke
def test_register_get_lookup_and_agent_fields() -> None:
    clock = ManualClock(5.0)
    reg = Registry(clock=clock)
    value = object()
    reg.register(
        "a1",
        value,
        capabilities=["search", "code", "search"],
        node="n1",
        metadata={"gpu": 2},
    )
    agent = reg.get("a1")
    assert isinstance(agent, Agent)
    assert agent.agent_id == "a1"
    assert agent.value is value
    assert agent.capabilities == frozenset({"search", "code"})
    assert agent.node == "n1"
    assert agent.health == "healthy"
    assert dict(agent.metadata) == {"gpu": 2}
    assert isinstance(agent.metadata, types.MappingProxyType)
    assert agent.registered_at == 5.0
    assert agent.expires_at is None
    assert reg.lookup("a1") is value
    assert "a1" in reg
    assert "zz" not in reg
    assert 1 not in reg
    assert len(reg) == 1
    assert reg.get("zz") is None
    with pytest.raises(KeyError):
        reg.lookup("zz")
    assert (
        repr(agent)
        == "Agent(agent_id='a1', capabilities={'code', 'search'}, node='n1', health='healthy')"
    )


def test_agent_is_immutable_and_metadata_is_a_copy() -> None:
    reg = Registry()
    meta = {"k": 1}
    reg.register("a", metadata=meta)
    meta["k"] = 2
    agent = reg.get("a")
    assert agent is not None
    assert agent.metadata["k"] == 1
    with pytest.raises(TypeError):
        agent.metadata["k"] = 3  # type: ignore[index]
    with pytest.raises(AttributeError):
        agent.health = "x"  # type: ignore[misc]
    assert reg.get("a") is not None and reg.get("a").metadata == {"k": 1}  # type: ignore[union-attr]
    reg.register("b")
    assert dict(reg.get("b").metadata) == {}  # type: ignore[union-attr]


def test_already_registered_is_a_key_error_and_leaves_the_winner() -> None:
    reg = Registry()
    reg.register("a", 1, capabilities=["x"])
    with pytest.raises(AlreadyRegistered) as ei:
        reg.register("a", 2, capabilities=["y"], node="n")
    assert isinstance(ei.value, KeyError)
    assert isinstance(ei.value, FerruleError)
    assert ei.value.args == ("agent id 'a' is already registered",)
    assert reg.lookup("a") == 1
    assert reg.ids(capability="y") == []
    assert reg.ids(node="n") == []
    assert reg._index_sizes() == (1, 0, 1, 0)


def test_unregister_and_update() -> None:
    reg = Registry()
    reg.register("a", capabilities=["x", "y"], node="n1", metadata={"v": 1})
    reg.update("a", capabilities=["y", "z"], node=None, health="degraded", metadata={"v": 2})
    agent = reg.get("a")
    assert agent is not None
    assert agent.capabilities == {"y", "z"}
    assert agent.node is None
    assert agent.health == "degraded"
    assert agent.metadata == {"v": 2}
    assert reg.ids(capability="x") == []
    assert reg.ids(capability="z") == ["a"]
    assert reg.ids(node="n1") == []
    assert reg.ids(health="healthy") == []
    reg.update("a", node="n2")
    assert reg.get("a").capabilities == {"y", "z"}  # type: ignore[union-attr]
    assert reg.ids(node="n2") == ["a"]
    assert reg.unregister("a") is True
    assert reg.unregister("a") is False
    assert reg._index_sizes() == (0, 0, 0, 0)
    with pytest.raises(KeyError):
        reg.update("a", health="x")
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        reg.register("b")
        reg.update("b", colour="red")


@pytest.mark.smoke
def test_find_count_ids_and_limit() -> None:
    reg = Registry()
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
    assert reg.ids(where=lambda a: a.value == 7) == ["a7"]
    assert len(reg.ids(capability="all", where=lambda a: a.value > 2, limit=4)) == 4


def test_where_falls_back_to_python_for_opaque_values() -> None:
    class Version:
        def __init__(self, n: int) -> None:
            self.n = n

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Version) and other.n == self.n

        def __hash__(self) -> int:
            return self.n

        def __gt__(self, other: Version) -> bool:
            return self.n > other.n

    reg = Registry()
    reg.register("a", metadata={"v": Version(1), "big": 2**70, "s": {1, 2}})
    reg.register("b", metadata={"v": Version(2), "big": 5})
    assert reg.ids(where=[("v", "eq", Version(2))]) == ["b"]
    assert reg.ids(where=[("v", "gt", Version(1))]) == ["b"]
    assert reg.ids(where=[("big", "gt", 2**69)]) == ["a"]
    assert reg.ids(where=[("s", "eq", {2, 1})]) == ["a"]
    # Python refuses the comparison: no match rather than an error.
    assert reg.ids(where=[("v", "lt", 3)]) == []


def test_empty_index_sets_are_removed() -> None:
    reg = Registry()
    for i in range(100):
        reg.register(str(i), capabilities=[f"c{i}", "shared"], node=f"n{i}", health=f"h{i}")
    assert reg._index_sizes() == (101, 100, 100, 0)
    for i in range(100):
        reg.unregister(str(i))
    assert reg._index_sizes() == (0, 0, 0, 0)


# ---- register_many --------------------------------------------------------------------


def test_register_many_is_all_or_nothing() -> None:
    reg = Registry()
    reg.register("taken", capabilities=["c"])
    owner = threading.Event()  # any weak-referenceable object
    items = [
        {"agent_id": "m1", "capabilities": ["c"], "owner": owner},
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


def test_register_many_limits_the_batch_and_checks_items() -> None:
    reg = Registry(max_batch=3)
    assert reg.max_batch == 3
    with pytest.raises(ValueError, match=r"items must hold at most max_batch \(3\) items"):
        reg.register_many({"agent_id": str(i)} for i in range(4))
    assert len(reg) == 0
    with pytest.raises(TypeError, match="unexpected key 'colour'"):
        reg.register_many([{"agent_id": "a", "colour": 1}])
    with pytest.raises(TypeError, match="missing 'agent_id'"):
        reg.register_many([{"value": 1}])
    with pytest.raises(TypeError, match="items must be an iterable of dicts"):
        reg.register_many([1])
    with pytest.raises(TypeError, match="agent_id must be a str"):
        reg.register_many([{"agent_id": "ok"}, {"agent_id": 5}])
    assert len(reg) == 0
    assert reg.register_many([]) == 0


# ---- owners ---------------------------------------------------------------------------


class Owner:
    pass


def test_weakref_owner_removes_on_collection() -> None:
    reg = Registry()
    o = Owner()
    reg.register("a", capabilities=["c"], owner=o)
    assert "a" in reg
    del o
    gc.collect()
    assert "a" not in reg
    assert reg._index_sizes() == (0, 0, 0, 0)


def test_failed_registration_leaves_no_watch() -> None:
    reg = Registry()
    winner = Owner()
    loser = Owner()
    reg.register("a", "win", owner=winner)
    with pytest.raises(AlreadyRegistered):
        reg.register("a", "lose", owner=loser)
    del loser
    gc.collect()
    assert reg.lookup("a") == "win"


def test_earlier_owner_death_spares_a_later_registration() -> None:
    reg = Registry()
    first = Owner()
    reg.register("a", 1, owner=first)
    reg.unregister("a")
    reg.register("a", 2)
    del first
    gc.collect()
    assert reg.lookup("a") == 2


def test_failed_future_registration_attaches_no_callback() -> None:
    reg = Registry()
    reg.register("a", "win")
    fut: concurrent.futures.Future[None] = concurrent.futures.Future()
    with pytest.raises(AlreadyRegistered):
        reg.register("a", "lose", owner=fut)
    fut.set_result(None)
    assert reg.lookup("a") == "win"
    assert fut._done_callbacks == []  # type: ignore[attr-defined]


def test_thread_owner_is_never_returned_once_finished() -> None:
    reg = Registry()
    go = threading.Event()
    t = threading.Thread(target=go.wait)
    t.start()
    reg.register("t", capabilities=["c"], owner=t)
    assert reg.ids(capability="c") == ["t"]
    go.set()
    t.join()
    assert reg.get("t") is None
    assert reg.ids(capability="c") == []
    assert len(reg) == 0
    with pytest.raises(ValueError, match="owner thread has already finished"):
        reg.register("t2", owner=t)
    # A finished thread's id can be taken again.
    reg.register("t")


def test_thread_owners_are_swept_on_writes() -> None:
    reg = Registry()
    threads = [threading.Thread(target=lambda: None) for _ in range(5)]
    for t in threads:
        t.start()
    done = threading.Event()
    live = threading.Thread(target=done.wait)
    live.start()
    # Register while the short threads may still run; each registration is allowed
    # only if its thread has not finished yet.
    n = 0
    for i, t in enumerate(threads):
        t.join()
        with pytest.raises(ValueError):
            reg.register(f"dead{i}", owner=t)
    reg.register("live", owner=live)
    n = reg.expire()
    assert n == 0
    assert "live" in reg
    done.set()
    live.join()
    assert reg.expire() == 1
    assert reg._index_sizes() == (0, 0, 0, 0)


def test_concurrent_future_owner() -> None:
    reg = Registry()
    fut: concurrent.futures.Future[int] = concurrent.futures.Future()
    reg.register("f", owner=fut)
    assert "f" in reg
    fut.set_result(1)
    assert "f" not in reg
    done: concurrent.futures.Future[int] = concurrent.futures.Future()
    done.set_result(1)
    with pytest.raises(ValueError, match="owner future is already done"):
        reg.register("g", owner=done)
    assert "g" not in reg


def test_unregister_detaches_the_asyncio_callback() -> None:
    reg = Registry()
    loop = asyncio.new_event_loop()
    try:
        fut = loop.create_future()
        for i in range(50):
            reg.register(f"f{i}", owner=fut)
            reg.unregister(f"f{i}")
        assert not fut._callbacks  # type: ignore[attr-defined]
        reg.register("kept", owner=fut)
        reg.update("kept", health="degraded")
        assert len(fut._callbacks) == 1  # type: ignore[attr-defined]
        fut.set_result(None)
        loop.run_until_complete(asyncio.sleep(0))
        assert "kept" not in reg
    finally:
        loop.close()


def test_concurrent_future_watch_is_a_no_op_after_unregister() -> None:
    reg = Registry()
    fut: concurrent.futures.Future[int] = concurrent.futures.Future()
    reg.register("f", owner=fut)
    reg.unregister("f")
    reg.register("f", "second")
    fut.set_result(1)
    assert reg.lookup("f") == "second"


def test_asyncio_task_owner() -> None:
    reg = Registry()

    async def main() -> None:
        gate = asyncio.Event()

        async def agent() -> None:
            await gate.wait()

        task = asyncio.create_task(agent())
        reg.register("task", owner=task)
        assert "task" in reg
        gate.set()
        await task
        await asyncio.sleep(0)  # done-callbacks run on the next loop turn
        assert "task" not in reg
        with pytest.raises(ValueError, match="owner future is already done"):
            reg.register("task2", owner=task)

    asyncio.run(main())


def test_owner_that_cannot_be_watched() -> None:
    reg = Registry()
    with pytest.raises(TypeError, match=r"owner must be weak-referenceable.*not 'int'"):
        reg.register("a", owner=5)
    assert "a" not in reg


# ---- leases ---------------------------------------------------------------------------


def test_lease_expires_at_the_deadline_and_heartbeat_renews() -> None:
    clock = ManualClock()
    reg = Registry(clock=clock)
    reg.register("a", capabilities=["c"], ttl=10.0)
    reg.register("b", capabilities=["c"], ttl=10.0)
    assert reg.get("a").expires_at == 10.0  # type: ignore[union-attr]
    clock.advance(9.0)
    assert reg.heartbeat("a") is True
    assert reg.get("a").expires_at == 19.0  # type: ignore[union-attr]
    clock.advance(1.0)  # b: now == t + d, expired
    assert reg.get("b") is None
    assert "b" not in reg
    assert reg.heartbeat("b") is False
    assert reg.ids(capability="c") == ["a"]
    assert reg.count(capability="c") == 1
    with pytest.raises(KeyError):
        reg.lookup("b")
    assert len(reg) == 1
    reg.register("b")  # an expired id is free again
    assert reg.heartbeat("a", ttl=1.0) is True
    clock.advance(1.0)
    assert reg.expire() == 1  # its heap item said 19: expire() scans
    assert sorted(reg.ids()) == ["b"]
    assert reg._index_sizes() == (0, 0, 1, 0)
    assert reg.heartbeat("b") is True  # no lease: nothing to renew, but it is live
    assert reg.get("b").expires_at is None  # type: ignore[union-attr]
    assert reg.heartbeat("b", ttl=2.0) is True
    assert reg.get("b").expires_at == 13.0  # type: ignore[union-attr]


def test_expired_entries_are_reclaimed_by_writes() -> None:
    clock = ManualClock()
    reg = Registry(clock=clock)
    for i in range(1000):
        reg.register(str(i), capabilities=["c"], ttl=5.0)
        clock.advance(1.0)
    sizes = reg._index_sizes()
    assert sizes[3] < 100  # lease items: most were reclaimed by later writes
    assert len(reg) == 4
    assert reg.count(capability="c") == 4


# ---- bad input ------------------------------------------------------------------------


def test_bad_input() -> None:
    reg = Registry()
    with pytest.raises(TypeError, match="agent_id must be a str, not 'int'"):
        reg.register(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="agent_id must be a str, not 'NoneType'"):
        reg.get(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="agent_id must be a str"):
        reg.unregister(b"a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl must be > 0"):
        reg.register("a", ttl=0)
    with pytest.raises(ValueError, match="ttl must be a finite number of seconds"):
        reg.register("a", ttl=float("nan"))
    with pytest.raises(TypeError, match="ttl must be a number of seconds, not 'str'"):
        reg.register("a", ttl="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="capabilities must be an iterable of str, not a str"):
        reg.register("a", capabilities="abc")
    with pytest.raises(TypeError, match="capabilities must contain only str, not 'int'"):
        reg.register("a", capabilities=["x", 1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="node must be a str, not 'int'"):
        reg.register("a", node=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="health must be a str, not 'int'"):
        reg.register("a", health=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="metadata must be a mapping or None, not 'list'"):
        reg.register("a", metadata=[1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="metadata keys must be str, not 'int'"):
        reg.register("a", metadata={1: 2})  # type: ignore[dict-item]
    assert len(reg) == 0 and reg._index_sizes() == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        Registry(max_batch=0)
    with pytest.raises(TypeError, match=r"clock must be a ferrule\.ManualClock or None"):
        Registry(clock=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl must be > 0"):
        reg.heartbeat("a", ttl=-1)


def test_bad_where() -> None:
    reg = Registry()
    reg.register("a", metadata={"x": 1})
    with pytest.raises(
        ValueError, match="where op must be one of eq, ne, gt, gte, lt, lte, in, not_in, not 'like'"
    ):
        reg.find(where=[("x", "like", 1)])
    with pytest.raises(TypeError, match="where must be a callable or a list of"):
        reg.find(where="x == 1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="where must be a callable or a list of"):
        reg.find(where=[("x", "eq")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="where path must be a str"):
        reg.find(where=[(1, "eq", 1)])  # type: ignore[list-item]
    with pytest.raises(
        TypeError, match="where value for 'in' must be a list, tuple or set, not 'int'"
    ):
        reg.find(where=[("x", "in", 1)])
    with pytest.raises(ValueError, match="limit must be >= 0"):
        reg.find(limit=-1)
    with pytest.raises(TypeError, match="capability must be a str"):
        reg.find(capability=1)  # type: ignore[arg-type]

    def boom(agent: Agent) -> bool:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        reg.find(where=boom)


def test_lease_churn_keeps_memory_bounded() -> None:
    clock = ManualClock()
    reg = Registry(clock=clock)
    for i in range(20_000):
        reg.register(f"a{i}", capabilities=["c"], ttl=3600.0)
        reg.unregister(f"a{i}")
    assert len(reg) == 0
    sizes = reg._index_sizes()
    assert sizes[:3] == (0, 0, 0)
    assert sizes[3] < 8 * 64 * 2  # stale deadline items are purged, not kept per churn


def test_a_limit_of_any_size() -> None:
    """A limit too large for any count means no limit (it used to raise); a negative
    one, however large, is refused by name."""
    reg = Registry()
    reg.register_many([{"agent_id": f"a{i}", "capabilities": ["c"]} for i in range(5)])
    assert len(reg.find(limit=2**70)) == 5
    assert reg.count(capability="c", limit=2**64) == 5
    assert reg.count(limit=sys.maxsize) == 5
    assert reg.count(limit=3) == 3
    with pytest.raises(ValueError, match="limit must be >= 0"):
        reg.ids(limit=-(2**70))
    with pytest.raises(TypeError, match="limit must be an int, not 'bool'"):
        reg.find(limit=True)
    with pytest.raises(OverflowError, match="max_batch is out of range"):
        Registry(max_batch=2**70)


# ---- register_many: all or nothing, every owner watched -------------------------------


class _RefusingFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    def add_done_callback(self, fn: Any) -> None:
        raise RuntimeError("no callbacks here")


class _ClassRaises:
    """A weak-referenceable object that cannot even say what it is."""

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("no class")


def test_register_many_takes_back_everything_when_an_owner_cannot_be_watched() -> None:
    """A batch with an owner whose watch cannot be attached leaves nothing behind: no
    entry, no index row, no callback on an asyncio future, a concurrent future's watch
    inert (guards against the items before it staying registered and the items after
    it never being watched)."""
    reg = Registry()
    loop = asyncio.new_event_loop()
    go = threading.Event()
    t = threading.Thread(target=go.wait)
    t.start()
    try:
        afut = loop.create_future()
        cfut: concurrent.futures.Future[None] = concurrent.futures.Future()
        weak = Owner()
        items: list[dict[str, Any]] = [
            {"agent_id": "a", "capabilities": ["c"], "owner": afut},
            {"agent_id": "b", "node": "n", "owner": cfut},
            {"agent_id": "bad", "owner": _RefusingFuture()},
            {"agent_id": "t", "owner": t, "ttl": 5.0, "health": "h"},
            {"agent_id": "w", "owner": weak},
        ]
        with pytest.raises(RuntimeError, match="no callbacks here"):
            reg.register_many(items)
        assert len(reg) == 0
        assert reg._index_sizes()[:3] == (0, 0, 0)
        assert not afut._callbacks
        # The concurrent future's watch matches no registration: a later one survives.
        reg.register("b", "later")
        cfut.set_result(None)
        assert reg.lookup("b") == "later"
        # An owner that fails while being classified: nothing is published at all.
        with pytest.raises(RuntimeError, match="no class"):
            reg.register_many([{"agent_id": "x"}, {"agent_id": "y", "owner": _ClassRaises()}])
        assert reg.ids() == ["b"]
    finally:
        go.set()
        t.join()
        loop.close()


def test_register_many_watches_every_owner() -> None:
    """Every owner of a successful batch is watched: each entry goes when its owner
    does (guards against items of a batch never being watched)."""
    reg = Registry()
    loop = asyncio.new_event_loop()
    go = threading.Event()
    t = threading.Thread(target=go.wait)
    t.start()
    try:
        afut = loop.create_future()
        cfut: concurrent.futures.Future[None] = concurrent.futures.Future()
        weak = Owner()
        n = reg.register_many(
            [
                {"agent_id": "f", "owner": cfut},
                {"agent_id": "t", "owner": t},
                {"agent_id": "w", "owner": weak},
                {"agent_id": "a", "owner": afut},
                {"agent_id": "plain"},
            ]
        )
        assert n == 5 and len(reg) == 5
        cfut.set_result(None)
        assert "f" not in reg
        del weak
        gc.collect()
        assert "w" not in reg
        go.set()
        t.join()
        assert reg.expire() == 1  # the thread owner was queued for the sweep
        afut.set_result(None)
        loop.run_until_complete(asyncio.sleep(0))
        assert reg.ids() == ["plain"]
    finally:
        go.set()
        t.join()
        loop.close()


def test_a_single_registration_whose_watch_fails_leaves_nothing() -> None:
    """register() with an owner whose done-callback cannot be attached raises and
    leaves no entry or index row."""
    reg = Registry()
    with pytest.raises(RuntimeError, match="no callbacks here"):
        reg.register("a", capabilities=["c"], node="n", owner=_RefusingFuture())
    assert len(reg) == 0 and reg._index_sizes() == (0, 0, 0, 0)


# ---- an owner check that raises ------------------------------------------------------


class _BrokenThread(threading.Thread):
    broken = False

    def is_alive(self) -> bool:
        if self.broken:
            raise RuntimeError("is_alive failed")
        return super().is_alive()


def test_a_failing_owner_check_is_reported_and_does_not_stop_the_sweep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An owner thread whose is_alive() raises is kept (treated as running) and the
    error goes to sys.unraisablehook; the rest of the sweep still reclaims the dead
    owners, and no read or write fails because of it (guards against the failing check
    stopping the sweep and leaving the batch's dead owners behind)."""
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    reg = Registry()
    go = threading.Event()
    broken = _BrokenThread(target=go.wait)
    broken.start()
    reg.register("broken", owner=broken)
    short = [threading.Thread(target=go.wait) for _ in range(4)]
    for t in short:
        t.start()
    for i, t in enumerate(short):
        reg.register(f"s{i}", capabilities=["c"], owner=t)
    broken.broken = True
    go.set()
    for t in [*short, broken]:
        t.join()
    assert reg.expire() == 4
    assert reg._index_sizes()[0] == 0
    assert reported and all(isinstance(r.exc_value, RuntimeError) for r in reported)
    assert reported[0].object is broken
    # Reads and writes go on; the entry stays until the check works or it is removed.
    reg.register("x", capabilities=["c"])
    assert reg.ids(capability="c") == ["x"]
    assert "broken" in reg
    assert reg.count() == 2
    assert len(reg) == 2
    assert reg.unregister("broken") is True
    broken.broken = False
    assert reg.ids() == ["x"]


# ---- where: exact numbers, hostile values, deep nesting --------------------------------


def test_where_compares_ints_and_floats_exactly() -> None:
    """Ints are never rounded to floats (guards against 2**53 + 1 == 2.0**53)."""
    reg = Registry()
    reg.register("a", metadata={"x": 2**53 + 1, "big": 2**64 + 1, "n": float("nan")})
    for op, expected in [
        ("eq", False),
        ("ne", True),
        ("gt", True),
        ("gte", True),
        ("lt", False),
        ("lte", False),
    ]:
        assert reg.count(where=[("x", op, 2.0**53)]) == int(expected), op
        assert reg.count(where=[("big", op, 2.0**64)]) == int(expected), op
    assert reg.count(where=[("x", "in", [2.0**53])]) == 0
    assert reg.count(where=[("x", "not_in", {2.0**53})]) == 1
    assert reg.count(where=[("x", "lt", float("inf"))]) == 1
    assert reg.count(where=[("n", "ne", float("nan"))]) == 1
    assert reg.count(where=[("n", "eq", float("nan"))]) == 0
    assert reg.count(where=[("n", "gte", float("-inf"))]) == 0


def test_a_nan_is_found_by_identity_where_python_uses_it() -> None:
    """`in` and container equality use `x is y or x == y` in Python: the same NaN object
    matches itself there, and nowhere else."""
    nan = float("nan")
    reg = Registry()
    reg.register("a", metadata={"n": nan, "l": [nan]})
    assert reg.count(where=[("n", "in", [nan])]) == 1
    assert reg.count(where=[("n", "in", {nan})]) == 1
    assert reg.count(where=[("n", "in", [float("nan")])]) == 0
    assert reg.count(where=[("l", "eq", [nan])]) == 1
    assert reg.count(where=[("l", "eq", [float("nan")])]) == 0
    assert reg.count(where=[("n", "eq", nan)]) == 0  # `==` itself never is


class _Hostile:
    def __init__(self, exc: type[BaseException] = RuntimeError) -> None:
        self.exc = exc

    def __eq__(self, other: object) -> bool:
        raise self.exc("eq")

    def __hash__(self) -> int:
        raise self.exc("hash")

    def __lt__(self, other: object) -> bool:
        return _Falsy()  # type: ignore[return-value]


class _Falsy:
    def __bool__(self) -> bool:
        raise RuntimeError("bool")


def test_hostile_values_in_where_and_metadata_are_no_match() -> None:
    """A raising __eq__, __hash__ or __bool__ on either side is no match, never an
    error or a crash; KeyboardInterrupt is not swallowed (guards against it being
    taken for a refused comparison)."""
    reg = Registry()
    reg.register("a", metadata={"h": _Hostile(), "n": 1, "l": [_Hostile()]})
    for path, op, q in [
        ("h", "eq", 1),
        ("h", "ne", 1),
        ("h", "lt", 1),
        ("h", "in", {1, 2}),
        ("h", "in", [1, 2]),
        ("h", "not_in", {1}),
        ("n", "eq", _Hostile()),
        ("n", "in", [_Hostile()]),
        ("l", "eq", 1),
        ("l", "in", [1]),
    ]:
        assert reg.count(where=[(path, op, q)]) == 0, (path, op, q)
    reg.register("k", metadata={"h": _Hostile(KeyboardInterrupt)})
    with pytest.raises(KeyboardInterrupt):
        reg.ids(where=[("h", "eq", 1)])


class _HashOne:
    """Hashes like 1, and refuses every comparison once armed."""

    armed = False

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        if _HashOne.armed:
            raise RuntimeError("eq")
        return self is other


def _python_says(v: Any, op: str, q: Any) -> bool:
    """Python's answer, a raised Exception counting as no match."""
    ops: dict[str, Any] = {
        "ne": lambda: v != q,
        "in": lambda: v in q,
        "not_in": lambda: v not in q,
    }
    try:
        return bool(ops[op]())
    except Exception:
        return False


def test_an_item_python_would_compare_first_decides_like_python() -> None:
    """Python compares container items in order and stops at the first decisive one; an
    item that raises before it makes the whole comparison refused (no match) (guards
    against answering from a later item: `1 in [hostile, 1]` raises in Python)."""
    reg = Registry()
    h = _Hostile()
    meta = {"n": 1, "l": [h, 1], "d": {"h": h, "x": 1}}
    reg.register("a", metadata=meta)
    colliding = [{_HashOne(), 1, 2}, {1, _HashOne()}, {_HashOne(), 3}]
    _HashOne.armed = True
    try:
        _check_against_python(reg, meta, colliding, h)
    finally:
        _HashOne.armed = False


def _check_against_python(reg: Registry, meta: dict[str, Any], colliding: Any, h: Any) -> None:
    for path, op, q in [
        ("n", "in", [h, 1]),
        ("n", "in", (2, h, 1)),
        ("n", "in", [1, h]),
        ("n", "not_in", [h, 2]),
        ("n", "in", colliding[0]),
        ("n", "in", colliding[1]),
        ("n", "not_in", colliding[2]),
        ("l", "ne", [2, 2]),
        ("l", "ne", [h, 2]),
        ("d", "ne", {"h": 0, "x": 2}),
        ("d", "ne", {"h": h, "y": 1}),
    ]:
        expected = _python_says(meta[path], op, q)
        assert reg.count(where=[(path, op, q)]) == int(expected), (path, op, q)


class _Key(str):
    __slots__ = ()

    def __hash__(self) -> int:
        return hash(str(self))

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("key eq")


def test_metadata_keys_with_hostile_eq_raise_ordinarily() -> None:
    """A str-subclass metadata key whose __eq__ raises: registration works, and a query
    whose path lookup reaches it raises that error, as a dict lookup would."""
    reg = Registry()
    reg.register("a", metadata={_Key("k"): 1})
    assert reg.count(where=[("other", "eq", 1)]) == 0
    with pytest.raises(RuntimeError, match="key eq"):
        reg.count(where=[("k", "eq", 1)])


def test_deep_nesting_is_compared_by_python_without_overflowing_the_stack() -> None:
    """Metadata and where values nested far deeper than the Rust trees go (32 levels)
    are left to Python, which bounds its own recursion (guards against a stack
    overflow in the conversion or comparison)."""
    deep: Any = 1
    other: Any = 1
    for _ in range(100_000):
        deep = [deep]
        other = [other]
    chain: Any = {"end": 1}
    for _ in range(100_000):
        chain = {"a": chain}
    reg = Registry()
    reg.register("a", metadata={"deep": deep, "chain": chain})
    reg.update("a", metadata={"deep": deep, "chain": chain})
    assert reg.count(where=[("deep", "eq", deep)]) == 1  # the same object: equal
    # Python's own comparison of two distinct such lists raises RecursionError: no match.
    assert reg.count(where=[("deep", "eq", other)]) == 0
    assert reg.count(where=[("chain" + ".a" * 40, "ne", 0)]) == 1
    assert reg.count(where=[("x", "in", [deep])]) == 0


# ---- leases near the end of time -------------------------------------------------------


def test_leases_at_the_largest_clock_reading() -> None:
    """ttl and heartbeat arithmetic near ManualClock's largest reading (2**62 ns) with
    the largest ttl stays exact and never overflows."""
    top = 2**62 / 1e9
    clock = ManualClock(4e9)  # the largest start
    clock.advance(top - 4e9 - 10.0)
    reg = Registry(clock=clock)
    reg.register("a", ttl=4e9)
    reg.register("b", ttl=1.0)
    assert reg.get("a").expires_at == pytest.approx(top - 10.0 + 4e9)  # type: ignore[union-attr]
    assert reg.heartbeat("a", ttl=4e9) is True
    with pytest.raises(ValueError, match="ttl is too large"):
        reg.heartbeat("a", ttl=4.1e9)
    with pytest.raises(OverflowError):
        clock.advance(20.0)
    clock.advance(9.0)
    assert reg.expire() == 1
    assert reg.ids() == ["a"]


# ---- garbage collection ------------------------------------------------------------------


class Node:
    """A plain object to close a reference cycle with."""

    reg: Registry
    agent: Agent | None
    agents: list[Agent]


def _collected(ref: weakref.ref[Any]) -> bool:
    gc.collect()
    return ref() is None


def test_a_cycle_through_a_value_is_collected() -> None:
    """A registry whose agent's value refers back to it is garbage once unreachable
    (guards against the registry leaking forever, invisible to the collector)."""
    reg = Registry()
    obj = Node()
    obj.reg = reg
    reg.register("a", obj, capabilities=["c"], ttl=60.0)
    ref = weakref.ref(obj)
    del reg, obj
    assert _collected(ref)


def test_a_cycle_through_metadata_is_collected() -> None:
    """A cycle through a metadata value (at any depth) is collected."""
    reg = Registry()
    obj = Node()
    obj.reg = reg
    reg.register("a", metadata={"deep": {"list": [obj]}})
    ref = weakref.ref(obj)
    del reg, obj
    assert _collected(ref)


def test_cycles_through_owners_are_collected() -> None:
    """Cycles through a future owner (whose done-callback is the watch) and a thread
    owner are collected."""
    reg = Registry()
    fut: concurrent.futures.Future[None] = concurrent.futures.Future()
    fut.reg = reg  # type: ignore[attr-defined]
    reg.register("f", owner=fut)
    go = threading.Event()
    t = threading.Thread(target=go.wait)
    t.reg = reg  # type: ignore[attr-defined]
    t.start()
    reg.register("t", owner=t)
    go.set()
    t.join()
    refs: list[weakref.ref[Any]] = [weakref.ref(fut), weakref.ref(t)]
    del reg, fut, t
    gc.collect()
    assert all(r() is None for r in refs)


def test_a_cycle_through_an_agent_is_collected() -> None:
    """An Agent is part of the collector's graph: a value holding its own Agent is
    collected once unregistered (guards against Agent hiding its references)."""
    reg = Registry()
    obj = Node()
    reg.register("a", obj, metadata={"self": obj})
    obj.agent = reg.get("a")
    reg.unregister("a")
    ref = weakref.ref(obj)
    del obj
    assert _collected(ref)


def test_only_agents_that_can_be_in_a_cycle_are_tracked_by_the_collector() -> None:
    """An Agent whose value the collector does not track and that has no metadata and no
    owner cannot be in a collectable cycle: it is created untracked (a query returning
    thousands of them then sets off no collection). Any other Agent is tracked."""
    reg = Registry()
    reg.register("plain-int", 7, capabilities=["x"])
    reg.register("plain-str", "v", capabilities=["x"])
    reg.register("none", capabilities=["x"])
    reg.register("obj", Node(), capabilities=["x"])
    reg.register("empty-dict", {}, capabilities=["x"])
    reg.register("meta", 7, capabilities=["x"], metadata={"k": 1})
    done = threading.Event()
    t = threading.Thread(target=done.wait)
    t.start()
    try:
        reg.register("owned", 7, capabilities=["x"], owner=t)
        untracked = {"plain-int", "plain-str", "none"}
        agents = {a.agent_id: a for a in reg.find(capability="x")}
        assert set(agents) == untracked | {"obj", "empty-dict", "meta", "owned"}
        for aid, a in agents.items():
            assert gc.is_tracked(a) is (aid not in untracked), aid
            got = reg.get(aid)
            assert got is not None and gc.is_tracked(got) is (aid not in untracked), aid
        # An untracked Agent reads as any other.
        a = agents["plain-int"]
        assert (a.value, a.capabilities, dict(a.metadata)) == (7, frozenset({"x"}), {})
        del agents, a, got
        # A value that may later refer back to its Agent keeps the Agent in the graph.
        agent = reg.get("empty-dict")
        assert agent is not None
        marker = Node()
        agent.value["self"] = agent
        agent.value["marker"] = marker
        reg.unregister("empty-dict")
        ref = weakref.ref(marker)
        del agent, marker
        assert _collected(ref)
    finally:
        done.set()
        t.join()


def test_a_cycle_through_a_registry_and_its_agents_is_collected() -> None:
    """A cycle through a registry and Agents of its entries (the current version and
    an older one) is collected."""
    reg = Registry()
    obj = Node()
    obj.reg = reg
    reg.register("a", obj, metadata={"m": 1}, ttl=60.0)
    obj.agents = [reg.get("a")]  # type: ignore[list-item]
    reg.heartbeat("a")  # a new version; the old one stays with the first Agent
    reg.update("a", metadata={"m": 2, "obj": obj})
    obj.agents.append(reg.get("a"))  # type: ignore[arg-type]
    ref = weakref.ref(obj)
    del reg, obj
    assert _collected(ref)


def test_an_agent_held_from_outside_keeps_its_cycle_alive_and_intact() -> None:
    """The collector never takes what an outside Agent still reaches (guards against
    visiting one reference twice, which would clear live objects)."""
    reg = Registry()
    obj = Node()
    obj.reg = reg
    reg.register("a", obj, metadata={"obj": obj})
    agent = reg.get("a")
    assert agent is not None
    del reg, obj
    gc.collect()
    value = agent.value
    assert value.reg.lookup("a") is value
    assert agent.metadata["obj"] is value
    assert value.reg.get("a").value is value


def test_an_exception_from_the_arguments_own_iter_propagates() -> None:
    """Regression: an error from ``iter(capabilities)`` or ``iter(items)`` (KeyboardInterrupt
    included) was replaced by TypeError; only "not iterable" is a TypeError."""

    class Hostile:
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise KeyboardInterrupt

    reg = Registry()
    with pytest.raises(KeyboardInterrupt):
        reg.register("a", capabilities=Hostile())  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        reg.register_many(Hostile())  # type: ignore[arg-type]
    reg.register("b")
    with pytest.raises(KeyboardInterrupt):
        reg.update("b", capabilities=Hostile())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="capabilities must be an iterable of str"):
        reg.register("c", capabilities=5)  # type: ignore[arg-type]
    assert reg.ids() == ["b"]


# ---- declared indexes -----------------------------------------------------------------


class _Loose:
    """A metadata value only Python can compare: equal to whatever it was made with."""

    def __init__(self, v: object) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return bool(other == self.v)

    def __hash__(self) -> int:
        return hash(self.v)


class _Dict(dict):  # type: ignore[type-arg]
    """A dict subclass: the core leaves it to Python, which looks into it like a dict."""


def test_indexes_are_declared_once_and_listed_in_order() -> None:
    assert Registry().indexes == ()
    assert Registry(indexes=None).indexes == ()  # type: ignore[arg-type]
    reg = Registry(indexes=(p for p in ["region", "resource.kind"]))
    assert reg.indexes == ("region", "resource.kind")
    assert reg._declared_index_sizes() == {"region": (0, 0), "resource.kind": (0, 0)}


def test_bad_indexes() -> None:
    with pytest.raises(TypeError, match="indexes must be an iterable of str paths, not a str"):
        Registry(indexes="region")
    with pytest.raises(TypeError, match="indexes must be an iterable of str paths, not 'int'"):
        Registry(indexes=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="indexes must contain only str paths, not 'bytes'"):
        Registry(indexes=["a", b"b"])  # type: ignore[list-item]
    for bad in ["", ".", "a.", ".a", "a..b"]:
        with pytest.raises(ValueError, match="indexes must hold dotted paths without empty"):
            Registry(indexes=[bad])
    with pytest.raises(ValueError, match=r"indexes lists 'a\.b' twice"):
        Registry(indexes=["a.b", "c", "a.b"])
    Registry(indexes=[f"p{i}" for i in range(32)])
    with pytest.raises(ValueError, match="indexes must hold at most 32 paths"):
        Registry(indexes=[f"p{i}" for i in range(33)])


def test_an_indexed_where_finds_what_a_scan_finds() -> None:
    paths = ["region", "resource.kind"]
    metas: list[dict[str, Any]] = [
        {"region": "eu", "resource": {"kind": "gpu"}},
        {"region": ["us", "eu"], "resource": {"kind": ["cpu", "gpu"]}},
        {"region": ("ap", 1), "resource": {"kind": "cpu"}},
        {"region": 1.0},
        {"region": True},
        {"region": 2**70},  # beyond 64 bits: Python compares it
        {"region": 2.0**70},
        {"region": float("nan")},
        {"region": None},
        {"region": {"eu": 1}},
        {"region": _Loose("eu")},
        {"region": [_Loose(1)]},
        {"resource": "gpu"},
        {"resource": _Dict(kind="gpu")},  # a dict subclass in the way: Python looks in
        {"resource": {"kind": {"gpu": True}}},
        {},
    ]
    indexed, plain = Registry(indexes=paths), Registry()
    for reg in (indexed, plain):
        for i, m in enumerate(metas):
            reg.register(f"a{i}", metadata=m)
    queries: list[tuple[str, str, Any]] = [
        ("region", "eq", "eu"),
        ("region", "eq", 1),
        ("region", "eq", 1.0),
        ("region", "eq", True),
        ("region", "eq", 2**70),
        ("region", "eq", 2.0**70),
        ("region", "eq", None),
        ("region", "eq", float("nan")),
        ("region", "eq", ("ap", 1)),
        ("region", "in", ["eu", "ap"]),
        ("region", "in", {1, None}),
        ("region", "in", []),
        ("region", "ne", "eu"),
        ("region", "not_in", ["eu"]),
        ("resource.kind", "eq", "gpu"),
        ("resource.kind", "in", ("cpu",)),
    ]
    for q in queries:
        want = sorted(plain.ids(where=[q]))
        assert sorted(indexed.ids(where=[q])) == want, q
        assert indexed.count(where=[q]) == len(want), q
    assert sorted(indexed.ids(where=[("region", "eq", "eu")])) == ["a0", "a1", "a10"]
    assert sorted(indexed.ids(where=[("region", "eq", 1)])) == ["a11", "a2", "a3", "a4"]
    assert sorted(indexed.ids(where=[("region", "eq", 2.0**70)])) == ["a5", "a6"]
    assert sorted(indexed.ids(where=[("resource.kind", "eq", "gpu")])) == ["a0", "a1", "a13"]


def test_declared_index_rows_follow_every_change_and_removal() -> None:
    clock = ManualClock()
    reg = Registry(clock=clock, indexes=["region"])

    def sizes() -> tuple[int, int]:
        return reg._declared_index_sizes()["region"]

    reg.register("a", metadata={"region": "eu"})
    reg.register("b", metadata={"region": ["eu", "us"]})
    assert sizes() == (2, 3)
    reg.update("a", metadata={"region": "ap"})
    assert reg.ids(where=[("region", "eq", "eu")]) == ["b"]
    reg.update("a", health="degraded")  # the metadata stays: so do its rows
    assert reg.ids(where=[("region", "eq", "ap")]) == ["a"]
    reg.update("b", metadata=None)
    assert reg.ids(where=[("region", "in", ["eu", "us"])]) == []
    assert sizes() == (1, 1)
    assert reg.unregister("a") and sizes() == (0, 0)

    # A refused registration leaves no row.
    with pytest.raises(AlreadyRegistered):
        reg.register("b", metadata={"region": "eu"})
    assert sizes() == (0, 0)

    # Owner death, a finished thread owner, lease expiry.
    o = Owner()
    reg.register("o", owner=o, metadata={"region": "eu"})
    go = threading.Event()
    t = threading.Thread(target=go.wait)
    t.start()
    reg.register("t", owner=t, metadata={"region": "eu"})
    reg.register("l", ttl=1.0, metadata={"region": "eu"})
    assert sorted(reg.ids(where=[("region", "eq", "eu")])) == ["l", "o", "t"]
    del o
    gc.collect()
    go.set()
    t.join()
    clock.advance(1.0)
    assert reg.ids(where=[("region", "eq", "eu")]) == []
    assert reg.expire() == 1  # the lease (the query dropped the finished thread's entry)
    assert sizes() == (0, 0)

    # Re-registering an expired id replaces its rows.
    reg.register("l", ttl=1.0, metadata={"region": "eu"})
    clock.advance(2.0)
    reg.register("l", metadata={"region": "us"})
    assert reg.ids(where=[("region", "eq", "us")]) == ["l"]
    assert sizes() == (1, 1)


def test_declared_index_memory_tracks_live_values_only() -> None:
    reg = Registry(indexes=["k", "deep.k"])
    for i in range(2_000):
        reg.register(f"a{i % 50}", metadata={"k": i, "deep": {"k": [f"v{i}", i]}})
        reg.update(f"a{i % 50}", metadata={"k": -i})
        reg.unregister(f"a{(i + 25) % 50}")
    live = len(reg)
    assert reg._declared_index_sizes()["k"] == (live, live)
    for a in reg.ids():
        reg.unregister(a)
    assert reg._declared_index_sizes() == {"k": (0, 0), "deep.k": (0, 0)}


# ---- repeated queries of one capability, node or health -------------------------------

BIG = 40  # results this large are kept ready-made between queries


def test_repeated_ids_and_count_see_every_change_between_them() -> None:
    clock = ManualClock()
    reg = Registry(clock=clock)
    for i in range(BIG):
        reg.register(f"a{i}", capabilities=["x"], node="n", health="healthy")
    everyone = {f"a{i}" for i in range(BIG)}
    for _ in range(2):  # the second answer may be the first one's, kept
        assert set(reg.ids(capability="x")) == everyone
        assert reg.count(capability="x") == BIG
        assert set(reg.ids(node="n")) == everyone
        assert set(reg.ids(health="healthy")) == everyone
    results = reg.ids(capability="x")
    results.append("not in the registry")  # a copy: the next answer is unaffected
    assert len(reg.ids(capability="x")) == BIG

    reg.register("new", capabilities=["x"])
    everyone.add("new")
    assert set(reg.ids(capability="x")) == everyone
    assert reg.count(capability="x") == BIG + 1

    reg.unregister("a0")
    everyone.discard("a0")
    assert set(reg.ids(capability="x")) == everyone
    assert reg.count(capability="x") == BIG

    reg.update("a1", capabilities=["y"], node="m", health="degraded")
    everyone.discard("a1")
    assert set(reg.ids(capability="x")) == everyone
    assert "a1" not in reg.ids(node="n") and "a1" not in reg.ids(health="healthy")
    assert reg.count(node="n") == BIG - 2  # "new" has no node
    assert reg.count(health="healthy") == BIG - 1

    # Updates that keep the value leave the answer as it was, with fresh agents.
    reg.update("a2", metadata={"k": 1})
    assert set(reg.ids(capability="x")) == everyone
    assert {a.agent_id: a.metadata for a in reg.find(capability="x")}["a2"] == {"k": 1}

    # limit applies to a kept answer too.
    assert len(reg.ids(capability="x", limit=3)) == 3
    assert reg.count(capability="x", limit=3) == 3
    assert reg.ids(capability="x", limit=0) == []


def test_repeated_find_hands_out_kept_agents_only_while_each_is_current() -> None:
    clock = ManualClock()
    reg = Registry(clock=clock)
    for i in range(BIG):
        reg.register(f"a{i}", i, capabilities=["x"], health="healthy", ttl=100.0)
    first = reg.find(capability="x")
    again = reg.find(capability="x")
    assert again is not first and len(again) == BIG
    assert all(a is b for a, b in zip(first, again, strict=True))  # kept, not rebuilt
    again.clear()  # a copy: the next answer is unaffected
    assert len(reg.find(capability="x")) == BIG
    assert [a.agent_id for a in reg.find(capability="x", limit=3)] == [
        a.agent_id for a in first[:3]
    ]

    # Changes the capability's row does not see (its stamp stays) still show.
    reg.update("a1", health="degraded", metadata={"k": 1})
    clock.advance(1.0)
    assert reg.heartbeat("a2")
    assert reg.lookup("a3") == 3
    now = {a.agent_id: a for a in reg.find(capability="x")}
    assert now["a1"].health == "degraded" and now["a1"].metadata == {"k": 1}
    assert now["a2"].expires_at == 101.0
    assert len(now) == BIG
    # And what the row sees.
    reg.unregister("a0")
    reg.update("a4", capabilities=["y"])
    reg.register("new", capabilities=["x"])
    ids = {a.agent_id for a in reg.find(capability="x")}
    assert ids == {f"a{i}" for i in range(1, BIG) if i != 4} | {"new"}
    clock.advance(99.5)  # every lease but a2's (renewed at 1.0) and new's has ended
    assert {a.agent_id for a in reg.find(capability="x")} == {"a2", "new"}


def test_kept_agents_do_not_keep_a_removed_agents_value() -> None:
    reg = Registry()
    values = [Node() for _ in range(BIG)]
    for i, v in enumerate(values):
        reg.register(f"a{i}", v, capabilities=["x"], node="n")
    assert len(reg.find(capability="x")) == BIG
    assert len(reg.find(node="n")) == BIG
    refs = [weakref.ref(v) for v in values[:2]]
    del values[:2]
    reg.unregister("a0")
    reg.update("a1", capabilities=["y"], node="m")
    reg.unregister("a1")
    assert all(_collected(r) for r in refs)
    assert len(reg.find(capability="x")) == BIG - 2


def test_a_cycle_through_kept_agents_is_collected() -> None:
    reg = Registry()
    obj = Node()
    obj.reg = reg
    for i in range(BIG):
        reg.register(f"a{i}", obj, capabilities=["c"])
    obj.agents = reg.find(capability="c")
    assert reg.find(capability="c")[0] is obj.agents[0]
    ref = weakref.ref(obj)
    del reg, obj
    assert _collected(ref)


def test_repeated_queries_never_return_an_expired_lease() -> None:
    clock = ManualClock()
    reg = Registry(clock=clock)
    for i in range(BIG):
        reg.register(f"a{i}", capabilities=["x"], ttl=100.0 if i else 10.0)
    assert reg.count(capability="x") == BIG
    assert len(reg.ids(capability="x")) == BIG
    clock.advance(10.0)  # a0's lease ends: nobody wrote anything
    assert "a0" not in reg.ids(capability="x")
    assert reg.count(capability="x") == BIG - 1
    # A heartbeat that brings a deadline forward is seen as well.
    assert len(reg.ids(capability="x")) == BIG - 1
    assert reg.heartbeat("a1", ttl=1.0)
    clock.advance(1.0)
    assert "a1" not in reg.ids(capability="x")
    assert reg.count(capability="x") == BIG - 2


def test_repeated_queries_judge_thread_owners_every_time() -> None:
    reg = Registry()
    done = threading.Event()
    owner = threading.Thread(target=done.wait)
    owner.start()
    for i in range(BIG):
        reg.register(f"a{i}", capabilities=["x"], owner=owner if i == 0 else None)
    assert len(reg.ids(capability="x")) == BIG
    assert len(reg.ids(capability="x")) == BIG
    done.set()
    owner.join()
    assert "a0" not in reg.ids(capability="x")
    assert reg.count(capability="x") == BIG - 1
