"""find, count and ids share one parsed criteria value and one run: they always agree.

Each case mixes what the core decides under its guards (indexes, plain metadata) with what
only Python can judge (an opaque metadata value, a callable ``where``, a thread owner that
has finished), with and without a limit, and over more agents than the size at which a
query releases the GIL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from ferrule import Registry


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
