"""Registry against a dict-based model: register, update, unregister and every query."""

from __future__ import annotations

import contextlib
import math
from typing import Any

from ferrule import AlreadyRegistered, Registry
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

IDS = st.sampled_from([f"a{i}" for i in range(8)])
CAPS = st.sets(st.sampled_from(["search", "code", "plan"]), max_size=3)
NODES = st.sampled_from([None, "n1", "n2"])
HEALTH = st.sampled_from(["healthy", "degraded", "unhealthy"])
SCALARS = st.one_of(
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False),
    st.sampled_from(["x", "y", "z"]),
    st.booleans(),
    st.none(),
)
META = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "n": st.integers(-3, 3),
            "s": st.sampled_from(["x", "y", "z"]),
            "tags": st.lists(st.sampled_from(["x", "y", "z"]), max_size=3),
            "deep": st.fixed_dictionaries({}, optional={"v": SCALARS}),
            "any": SCALARS,
        },
    ),
)
PATHS = st.sampled_from(["n", "s", "tags", "deep.v", "any", "missing", "n.x"])
OPS = st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in"])


def model_match(meta: dict[str, Any] | None, path: str, op: str, q: Any) -> bool:
    """The documented semantics, in plain Python."""
    cur: Any = meta or {}
    for seg in path.split("."):
        if not isinstance(cur, dict) or seg not in cur:
            return False
        cur = cur[seg]
    v = cur
    seq = isinstance(v, (list, tuple))

    def safe(f: Any) -> bool:
        try:
            return bool(f())
        except TypeError:
            return False

    if op == "eq":
        return safe(lambda: v == q) or (seq and any(safe(lambda x=x: x == q) for x in v))
    if op == "ne":
        return safe(lambda: v != q)
    if op == "gt":
        return safe(lambda: v > q)
    if op == "gte":
        return safe(lambda: v >= q)
    if op == "lt":
        return safe(lambda: v < q)
    if op == "lte":
        return safe(lambda: v <= q)
    if op == "in":
        return safe(lambda: v in q) or (seq and any(safe(lambda x=x: x in q) for x in v))
    assert op == "not_in"
    return safe(lambda: v not in q)


class RegistryModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.reg = Registry()
        self.model: dict[str, dict[str, Any]] = {}

    @rule(agent_id=IDS, caps=CAPS, node=NODES, health=HEALTH, meta=META)
    def register(
        self, agent_id: str, caps: set[str], node: str | None, health: str, meta: Any
    ) -> None:
        if agent_id in self.model:
            try:
                self.reg.register(agent_id, capabilities=caps, node=node)
            except AlreadyRegistered:
                return
            raise AssertionError("register of a taken id succeeded")
        self.reg.register(
            agent_id, agent_id.upper(), capabilities=caps, node=node, health=health, metadata=meta
        )
        self.model[agent_id] = {"caps": caps, "node": node, "health": health, "meta": meta}

    @rule(
        agent_id=IDS,
        changes=st.fixed_dictionaries(
            {}, optional={"capabilities": CAPS, "node": NODES, "health": HEALTH, "metadata": META}
        ),
    )
    def update(self, agent_id: str, changes: dict[str, Any]) -> None:
        if agent_id not in self.model:
            try:
                self.reg.update(agent_id, **changes)
            except KeyError:
                return
            raise AssertionError("update of a missing id succeeded")
        self.reg.update(agent_id, **changes)
        m = self.model[agent_id]
        for k, field in [
            ("capabilities", "caps"),
            ("node", "node"),
            ("health", "health"),
            ("metadata", "meta"),
        ]:
            if k in changes:
                m[field] = changes[k]

    @rule(agent_id=IDS)
    def unregister(self, agent_id: str) -> None:
        assert self.reg.unregister(agent_id) is (agent_id in self.model)
        self.model.pop(agent_id, None)

    @rule(
        cap=st.one_of(st.none(), st.sampled_from(["search", "code", "plan", "other"])),
        node=st.one_of(st.none(), st.sampled_from(["n1", "n2"])),
        health=st.one_of(st.none(), HEALTH),
        where=st.lists(
            st.tuples(PATHS, OPS, SCALARS, st.lists(SCALARS, max_size=3), st.booleans()),
            max_size=2,
        ),
        limit=st.one_of(st.none(), st.integers(0, 4)),
        as_callable=st.booleans(),
    )
    def find(
        self,
        cap: str | None,
        node: str | None,
        health: str | None,
        where: list[tuple[str, str, Any, list[Any], bool]],
        limit: int | None,
        as_callable: bool,
    ) -> None:
        triples = []
        for path, op, scalar, many, as_set in where:
            if op in ("in", "not_in"):
                q: Any = list(many)
                if as_set:
                    with contextlib.suppress(TypeError):
                        q = set(many)
            else:
                q = scalar
            triples.append((path, op, q))

        def ok(aid: str) -> bool:
            m = self.model[aid]
            return (
                (cap is None or cap in m["caps"])
                and (node is None or m["node"] == node)
                and (health is None or m["health"] == health)
                and all(model_match(m["meta"], p, o, q) for p, o, q in triples)
            )

        expected = {aid for aid in self.model if ok(aid)}
        where_arg: Any = triples or None
        if as_callable and triples:
            where_arg = lambda a: all(  # noqa: E731
                model_match(dict(a.metadata), p, o, q) for p, o, q in triples
            )
        got = self.reg.ids(capability=cap, node=node, health=health, where=where_arg, limit=limit)
        assert len(got) == len(set(got))
        if limit is None:
            assert set(got) == expected
            assert self.reg.count(capability=cap, node=node, health=health, where=where_arg) == len(
                expected
            )
        else:
            assert set(got) <= expected
            assert len(got) == min(limit, len(expected))
        for a in self.reg.find(capability=cap, node=node, health=health, where=where_arg):
            m = self.model[a.agent_id]
            assert a.capabilities == m["caps"]
            assert a.node == m["node"] and a.health == m["health"]
            assert dict(a.metadata) == (m["meta"] or {})
            assert a.value == a.agent_id.upper()

    @invariant()
    def same_ids(self) -> None:
        assert len(self.reg) == len(self.model)
        assert sorted(self.reg.ids()) == sorted(self.model)

    def teardown(self) -> None:
        for aid in list(self.model):
            assert self.reg.unregister(aid)
        assert self.reg._index_sizes() == (0, 0, 0, 0)


RegistryModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_registry_model = RegistryModel.TestCase


# ---- numbers: `where` against Python's own operators -----------------------------------

# The same NaN object on both sides, where Python's `in` and container equality match
# it by identity.
SHARED_NAN = float("nan")
EDGES = [2**53, 2**63, 2**64, 2**100]
INTS = st.one_of(
    st.integers(-1000, 1000),
    st.tuples(st.sampled_from(EDGES), st.integers(-3, 3), st.booleans()).map(
        lambda t: (t[0] + t[1]) * (-1 if t[2] else 1)
    ),
    st.integers(),
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, SHARED_NAN, 0.5, -2.5]),
    INTS.map(float),
    st.tuples(INTS.map(float), st.booleans()).map(
        lambda t: math.nextafter(t[0], math.inf if t[1] else -math.inf)
    ),
)
NUMBERS = st.one_of(INTS, FLOATS, st.booleans())


@settings(max_examples=400, deadline=None)
@example(v=2**53 + 1, q=2.0**53, others=[], as_set=False)
@example(v=-(2**63) - 1, q=-(2.0**63), others=[2**64], as_set=True)
@example(v=SHARED_NAN, q=SHARED_NAN, others=[float("nan")], as_set=False)
@given(v=NUMBERS, q=NUMBERS, others=st.lists(NUMBERS, max_size=3), as_set=st.booleans())
def test_where_on_numbers_matches_python(v: Any, q: Any, others: list[Any], as_set: bool) -> None:
    """Every op over ints of any size, floats (inf, nan, -0.0, values around 2**53,
    2**63, 2**64 and beyond) and bools gives Python's answer, for a plain value, a value
    in a list (where eq and in also look at the items) and a value in a tuple (guards
    against ints being rounded to floats, e.g. 2**53 + 1 == 2.0**53)."""
    reg = Registry()
    meta = {"x": v, "l": [v, *others], "t": (v,)}
    reg.register("a", metadata=meta)
    many: Any = [q, *others]
    if as_set:
        many = set(many)
    for path in ("x", "l", "t"):
        for op in ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in"):
            value = many if op in ("in", "not_in") else q
            expected = model_match(meta, path, op, value)
            got = reg.count(where=[(path, op, value)])
            assert got == int(expected), (path, op, meta[path], value)
    # Whole containers on the query side.
    for value in ([v], (v,), [q], [v, *others]):
        expected = model_match(meta, "l", "eq", value)
        assert reg.count(where=[("l", "eq", value)]) == int(expected), value
