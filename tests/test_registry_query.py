"""find, count and ids share one parsed criteria value and one run: they always agree.

Each case mixes what the core decides under its guards (indexes, plain metadata) with what
only Python can judge (an opaque metadata value, a callable ``where``, a thread owner that
has finished), with and without a limit, and over more agents than the size at which a
query releases the GIL. Declared indexes change where a query starts, never its answer:
a property test runs the same writes and queries on a registry with them and one without.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from ferrule import AlreadyRegistered, Registry
from hypothesis import given, settings
from hypothesis import strategies as st


class Opaque:
    """A metadata value the core cannot look into: Python compares it."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return other == self.v

    __hash__ = None  # type: ignore[assignment]


class Model:
    """What was registered, minus the agents whose owner thread has finished."""

    def __init__(self) -> None:
        self.live: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def alive() -> Iterator[threading.Thread]:
    go = threading.Event()
    t = threading.Thread(target=go.wait, daemon=True)
    t.start()
    yield t
    go.set()
    t.join()


def build(alive: threading.Thread) -> tuple[Registry, Model]:
    """600 agents; those registered with owner `ending` are orphaned once it finishes."""
    reg, model = Registry(), Model()
    stop = threading.Event()
    ending = threading.Thread(target=stop.wait, daemon=True)
    ending.start()
    try:
        for i in range(600):
            owner = None
            if i % 50 == 0:
                owner = alive
            elif i % 50 == 1:
                owner = ending if i < 300 else alive
            kw: dict[str, Any] = {
                "capabilities": {"all", f"m{i % 3}"},
                "health": "healthy" if i % 4 else "degraded",
                "metadata": {"i": i, "o": Opaque(i % 5), "tags": [f"t{i % 7}"]},
            }
            reg.register(f"a{i}", i, owner=owner, **kw)
            if owner is not ending:
                model.live.append({"agent_id": f"a{i}", "value": i, **kw})
    finally:
        stop.set()
        ending.join()
    return reg, model


CRITERIA: list[dict[str, Any]] = [
    {},
    {"capability": "m1"},
    {"capability": "all", "health": "degraded"},
    {"where": [("i", "lt", 100)]},
    {"where": [("o", "eq", 2)]},
    {"where": [("o", "eq", 2), ("tags", "eq", "t3")]},
    {"capability": "m0", "where": [("o", "in", [1, 3])]},
    {"where": lambda a: a.value % 11 == 0},
    {"capability": "m2", "where": lambda a: "t1" in a.metadata["tags"]},
    {"capability": "nope"},
]


def expected(model: Model, crit: dict[str, Any]) -> set[str]:
    """The matches, judged in Python on the model."""
    out = set()
    for a in model.live:
        if crit.get("capability") and crit["capability"] not in a["capabilities"]:
            continue
        if crit.get("health") and a["health"] != crit["health"]:
            continue
        w = crit.get("where")
        if callable(w):
            if not w(SimpleNamespace(**a)):
                continue
        elif w is not None:
            ok = True
            for path, op, value in w:
                v = a["metadata"][path]
                if op == "lt":
                    ok &= v < value
                elif op == "eq":
                    ok &= v == value or (isinstance(v, list) and value in v)
                elif op == "in":
                    ok &= v in value
            if not ok:
                continue
        out.add(a["agent_id"])
    return out


@pytest.mark.parametrize("crit", CRITERIA, ids=range(len(CRITERIA)))
def test_find_count_ids_agree(alive: threading.Thread, crit: dict[str, Any]) -> None:
    # A fresh registry for each call, so each meets the orphaned agents itself.
    reg, model = build(alive)
    want = expected(model, crit)
    assert {a.agent_id for a in reg.find(**crit)} == want
    assert len(reg.find(**crit)) == len(want)
    reg, _ = build(alive)
    assert sorted(reg.ids(**crit)) == sorted(want)
    reg, _ = build(alive)
    assert reg.count(**crit) == len(want)


@pytest.mark.parametrize("crit", CRITERIA, ids=range(len(CRITERIA)))
@pytest.mark.parametrize("limit", [0, 1, 7, 10_000])
def test_limit_caps_each_alike(alive: threading.Thread, crit: dict[str, Any], limit: int) -> None:
    reg, model = build(alive)
    want = expected(model, crit)
    n = min(limit, len(want))
    found = reg.find(**crit, limit=limit)
    assert len(found) == n and {a.agent_id for a in found} <= want
    reg, _ = build(alive)
    ids = reg.ids(**crit, limit=limit)
    assert len(ids) == n and set(ids) <= want
    reg, _ = build(alive)
    assert reg.count(**crit, limit=limit) == n


def test_a_callable_where_stops_being_called_at_the_limit(alive: threading.Thread) -> None:
    reg, _ = build(alive)
    calls = 0

    def every(_: object) -> bool:
        nonlocal calls
        calls += 1
        return True

    assert reg.count(where=every, limit=5) == 5
    assert calls == 5


def test_bad_criteria_are_refused_alike() -> None:
    reg = Registry()
    for call in (reg.find, reg.count, reg.ids):
        with pytest.raises(TypeError, match="capability must be"):
            call(capability=1)
        with pytest.raises(ValueError, match="limit must be >= 0"):
            call(limit=-1)
        with pytest.raises(TypeError, match="where must be a callable"):
            call(where=3)
        with pytest.raises(ValueError, match="where op must be one of"):
            call(where=[("a", "like", 1)])


# ---- declared indexes change nothing but speed ------------------------------------------


class _Num:
    """A hashable value only Python can compare: equal to the number it was made with."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return bool(other == self.v)

    def __hash__(self) -> int:
        return hash(self.v)

    def __repr__(self) -> str:
        return f"_Num({self.v})"


SHARED_NAN = float("nan")
# A small pool, so that values collide often; equal across types (1, 1.0, True; 0, -0.0,
# False), at the 64-bit edges and beyond (Python compares those), and a NaN.
KEYED = st.sampled_from(
    [
        *(0, 1, 2**63 - 1, -(2**63), 2**63, 2**70),
        *(-0.0, 1.0, 0.5, 2.0**63, 2.0**70, float("inf"), SHARED_NAN),
        *(True, False, None, "eu", "us", ""),
    ]
)
ITEM = st.one_of(KEYED, KEYED, KEYED, st.sampled_from([0, 1, 2**70]).map(_Num))
VALUE = st.one_of(
    ITEM,
    ITEM,
    st.lists(ITEM, max_size=3),
    st.lists(ITEM, max_size=3).map(tuple),
    st.dictionaries(st.sampled_from(["k", "eu"]), KEYED, max_size=2),
)
META = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"k": VALUE},
        optional={
            "d": st.one_of(st.fixed_dictionaries({"k": VALUE}), VALUE),
            "o": VALUE,
        },
    ),
)
AGENT_IDS = st.sampled_from([f"a{i}" for i in range(6)])
WRITES = st.lists(
    st.tuples(st.sampled_from(["register", "register", "update", "unregister"]), AGENT_IDS, META),
    max_size=25,
)
COLLECTION = st.tuples(
    st.lists(ITEM, max_size=3), st.sampled_from([list, tuple, set, frozenset])
).map(lambda t: t[1](t[0]))
CONDITION = st.one_of(
    st.tuples(st.sampled_from(["k", "d.k", "o"]), st.sampled_from(["eq", "ne", "lt"]), ITEM),
    st.tuples(st.sampled_from(["k", "d.k", "o"]), st.sampled_from(["eq", "ne"]), VALUE),
    st.tuples(st.sampled_from(["k", "d.k", "o"]), st.sampled_from(["in", "not_in"]), COLLECTION),
)


def _write(reg: Registry, op: str, aid: str, meta: dict[str, Any] | None) -> None:
    try:
        if op == "register":
            reg.register(aid, metadata=meta)
        elif op == "update":
            reg.update(aid, metadata=meta)
        else:
            reg.unregister(aid)
    except (AlreadyRegistered, KeyError):
        pass


@settings(max_examples=300, deadline=None)
@given(
    first=st.lists(META, min_size=6, max_size=6),
    writes=WRITES,
    queries=st.lists(st.lists(CONDITION, min_size=1, max_size=2), min_size=1, max_size=6),
    limit=st.integers(0, 3),
)
def test_declared_indexes_never_change_an_answer(
    first: list[dict[str, Any] | None],
    writes: list[tuple[str, str, dict[str, Any] | None]],
    queries: list[list[tuple[str, str, Any]]],
    limit: int,
) -> None:
    indexed, plain = Registry(indexes=["k", "d.k"]), Registry()
    for op, aid, meta in [("register", f"a{i}", m) for i, m in enumerate(first)] + writes:
        _write(indexed, op, aid, meta)
        _write(plain, op, aid, meta)
    for where in queries:
        want = sorted(plain.ids(where=where))
        assert sorted(indexed.ids(where=where)) == want, where
        assert indexed.count(where=where) == len(want), where
        assert len(indexed.find(where=where, limit=limit)) == min(limit, len(want)), where
    for aid in indexed.ids():
        indexed.unregister(aid)
    assert indexed._declared_index_sizes() == {"k": (0, 0), "d.k": (0, 0)}
