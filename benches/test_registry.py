"""Registry beside the usual hand-made registry: a dict, a Lock and dict-of-set indexes.

Run: .venv/bin/python -m pytest benches/test_registry.py --benchmark-only \
         --benchmark-columns=min,median,ops -q
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from ferrule import Registry

SEED = 1234
HITS = 1_500


class DictRegistry:
    """The pure-Python baseline: one lock around a dict and three dict-of-set indexes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Any, frozenset[str], str | None, str, dict[str, Any]]] = {}
        self._by_cap: dict[str, set[str]] = {}
        self._by_node: dict[str, set[str]] = {}
        self._by_health: dict[str, set[str]] = {}

    def register(
        self,
        agent_id: str,
        value: Any = None,
        *,
        capabilities: Iterable[str] = (),
        node: str | None = None,
        health: str = "healthy",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        caps = frozenset(capabilities)
        entry = (value, caps, node, health, dict(metadata or {}))
        with self._lock:
            if agent_id in self._entries:
                raise KeyError(agent_id)
            self._entries[agent_id] = entry
            for c in caps:
                self._by_cap.setdefault(c, set()).add(agent_id)
            if node is not None:
                self._by_node.setdefault(node, set()).add(agent_id)
            self._by_health.setdefault(health, set()).add(agent_id)

    @staticmethod
    def _drop(index: dict[str, set[str]], key: str, agent_id: str) -> None:
        s = index[key]
        s.discard(agent_id)
        if not s:
            del index[key]

    def unregister(self, agent_id: str) -> bool:
        with self._lock:
            e = self._entries.pop(agent_id, None)
            if e is None:
                return False
            for c in e[1]:
                self._drop(self._by_cap, c, agent_id)
            if e[2] is not None:
                self._drop(self._by_node, e[2], agent_id)
            self._drop(self._by_health, e[3], agent_id)
        return True

    def lookup(self, agent_id: str) -> Any:
        with self._lock:
            return self._entries[agent_id][0]

    def update(self, agent_id: str, *, health: str) -> None:
        with self._lock:
            value, caps, node, old, metadata = self._entries[agent_id]
            self._entries[agent_id] = (value, caps, node, health, metadata)
            self._drop(self._by_health, old, agent_id)
            self._by_health.setdefault(health, set()).add(agent_id)

    def ids(self, *, capability: str) -> list[str]:
        with self._lock:
            return list(self._by_cap.get(capability, ()))

    def count(self, *, capability: str) -> int:
        with self._lock:
            return len(self._by_cap.get(capability, ()))

    def find(self, *, capability: str) -> list[Any]:
        """The entries (not copies) of the agents with ``capability``."""
        with self._lock:
            entries = self._entries
            return [entries[a] for a in self._by_cap.get(capability, ())]

    def count_two(self, *, capability: str, health: str) -> int:
        """`count(capability=..., health=...)`: the capability's set, each entry checked."""
        with self._lock:
            entries = self._entries
            return sum(1 for a in self._by_cap.get(capability, ()) if entries[a][3] == health)

    def ids_where_eq(self, key: str, value: Any) -> list[str]:
        """`ids(where=[(key, "eq", value)])` for a top-level scalar: a scan under the lock."""
        with self._lock:
            return [a for a, e in self._entries.items() if e[4].get(key) == value]


IMPLS: dict[str, Callable[[], Any]] = {"ferrule": Registry, "dict+Lock": DictRegistry}


def filled(make: Callable[[], Any], n: int) -> Any:
    rng = random.Random(SEED)
    reg = make()
    for i in range(n):
        caps = rng.sample(["search", "code", "plan", "chat", "vision"], 2)
        if i < HITS:
            caps.append("rare")
        reg.register(f"agent-{i}", i, capabilities=caps, node=f"n{i % 16}", health="healthy")
    return reg


@pytest.mark.parametrize("impl", list(IMPLS))
def test_register_unregister(benchmark: Any, impl: str) -> None:
    benchmark.group = "registry register+unregister (2 caps, node)"
    reg = filled(IMPLS[impl], 1_000)
    register, unregister = reg.register, reg.unregister
    caps = ["search", "code"]

    def op() -> None:
        register("new-agent", 1, capabilities=caps, node="n1")
        unregister("new-agent")

    benchmark(op)
    assert "new-agent" not in getattr(reg, "_entries", reg)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_lookup(benchmark: Any, impl: str) -> None:
    benchmark.group = "registry lookup (10k entries)"
    reg = filled(IMPLS[impl], 10_000)
    lookup = reg.lookup
    rng = random.Random(SEED)
    keys = [f"agent-{rng.randrange(10_000)}" for _ in range(1_000)]

    def op() -> None:
        for k in keys:
            lookup(k)

    benchmark(op)


@pytest.mark.parametrize("impl", list(IMPLS))
def test_ids_by_capability(benchmark: Any, impl: str) -> None:
    benchmark.group = f"registry ids(capability=...) ({HITS} hits of 10k)"
    reg = filled(IMPLS[impl], 10_000)
    result = benchmark(reg.ids, capability="rare")
    assert len(result) == HITS


@pytest.mark.parametrize("impl", list(IMPLS))
def test_find_by_capability(benchmark: Any, impl: str) -> None:
    benchmark.group = f"registry find(capability=...) ({HITS} hits of 10k)"
    reg = filled(IMPLS[impl], 10_000)
    result = benchmark(reg.find, capability="rare")
    assert len(result) == HITS


@pytest.mark.parametrize("impl", list(IMPLS))
def test_find_after_an_update(benchmark: Any, impl: str) -> None:
    # One match changes between two finds (its health): a kept answer is patched, not
    # rebuilt.
    benchmark.group = f"registry update one match + find(capability=...) ({HITS} hits of 10k)"
    reg = filled(IMPLS[impl], 10_000)
    update, find = reg.update, reg.find
    healths = itertools.cycle(["degraded", "healthy"])

    def op() -> list[Any]:
        update("agent-7", health=next(healths))
        found: list[Any] = find(capability="rare")
        return found

    assert len(benchmark(op)) == HITS


def filled_by_threads(make: Callable[[], Any], n: int, threads: int) -> Any:
    """`filled`'s registry, registered from `threads` threads (ids dealt in turn)."""
    reg = make()

    def register(t: int) -> None:
        for i in range(t, n, threads):
            caps = ["rare"] if i < HITS else ["search"]
            reg.register(f"agent-{i}", i, capabilities=caps, node=f"n{i % 16}")

    ts = [threading.Thread(target=register, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return reg


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_count_two_criteria(benchmark: Any, impl: str, threads: int) -> None:
    # Two criteria: never a kept answer, every candidate read. Agents registered on
    # several threads sit in several index parts, and each id is then answered once.
    benchmark.group = f"registry count(capability=..., health=...) ({HITS} hits of 10k)"
    reg = filled_by_threads(IMPLS[impl], 10_000, threads)
    count = reg.count if impl == "ferrule" else reg.count_two
    assert benchmark(count, capability="rare", health="healthy") == HITS


@pytest.mark.parametrize("impl", list(IMPLS))
def test_count_by_capability(benchmark: Any, impl: str) -> None:
    benchmark.group = "registry count(capability=...) (~4k hits of 10k)"
    reg = filled(IMPLS[impl], 10_000)
    result = benchmark(reg.count, capability="search")
    assert result == len(reg.ids(capability="search"))


@pytest.mark.parametrize("size", [1_000, 50_000])
@pytest.mark.parametrize("impl", list(IMPLS))
def test_unregister_cost_by_size(benchmark: Any, impl: str, size: int) -> None:
    benchmark.group = f"registry unregister ({size} entries)"
    reg = filled(IMPLS[impl], size)
    counter = itertools.count()
    caps = ["search", "code"]

    def setup() -> tuple[tuple[str], dict[str, Any]]:
        aid = f"extra-{next(counter)}"
        reg.register(aid, capabilities=caps, node="n1")
        return (aid,), {}

    benchmark.pedantic(reg.unregister, setup=setup, rounds=3_000, iterations=1)


REGIONS = 50
WHERE_SIZE = 100_000


@pytest.fixture(scope="module")
def by_region() -> dict[str, Any]:
    """100k agents in 50 regions (2k each), each registry filled alike."""
    rng = random.Random(SEED)
    regions = [rng.randrange(REGIONS) for _ in range(WHERE_SIZE)]
    out: dict[str, Any] = {
        "ferrule indexed": Registry(indexes=["region"]),
        "ferrule scan": Registry(),
        "dict+Lock scan": DictRegistry(),
    }
    for reg in out.values():
        for i, r in enumerate(regions):
            reg.register(f"agent-{i}", i, metadata={"region": f"r{r}", "load": i % 10})
    return out


@pytest.mark.parametrize("impl", ["ferrule indexed", "ferrule scan", "dict+Lock scan"])
def test_ids_where_eq(benchmark: Any, by_region: dict[str, Any], impl: str) -> None:
    benchmark.group = f"registry ids(where region eq) (~2k hits of {WHERE_SIZE // 1000}k)"
    reg = by_region[impl]
    if impl.startswith("dict"):
        result = benchmark(reg.ids_where_eq, "region", "r7")
    else:
        result = benchmark(reg.ids, where=[("region", "eq", "r7")])
    assert sorted(result) == sorted(by_region["ferrule scan"].ids(where=[("region", "eq", "r7")]))


@pytest.mark.parametrize("impl", ["ferrule indexed", "ferrule scan"])
def test_register_unregister_with_metadata(
    benchmark: Any, by_region: dict[str, Any], impl: str
) -> None:
    benchmark.group = "registry register+unregister (metadata; a declared index or none)"
    reg = by_region[impl]
    meta = {"region": "r1", "load": 3}

    def op() -> None:
        reg.register("new-agent", 1, metadata=meta)
        reg.unregister("new-agent")

    benchmark(op)
