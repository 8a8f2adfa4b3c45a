"""HealthMonitor benchmarks: one ``check_now()`` round beside the design it replaces, a
single caller that calls every agent's check in turn and records the result in a dict.

Run for real (release build) with:

    .venv/bin/python -m pytest benches/test_health.py --benchmark-only \
        --benchmark-columns=min,median,ops -q

Groups:
- ``health round, 1000 agents, trivial check``: the overhead of the pool, the shared
  deadline and the registry updates when every check returns at once. The sequential
  loop wins here: it does no thread hand-off.
- ``health round, 100 agents, one hanging check``: one check takes HANG seconds; the
  monitor's round ends after ``timeout`` (TIMEOUT) with that agent "unresponsive",
  while the sequential loop waits for it (and forever for a check that never returns).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ferrule import Agent, HealthMonitor, Registry

HANG = 0.25
TIMEOUT = 0.05
STATUSES = ("healthy", "degraded", "unhealthy")


def registry_of(n: int) -> Registry:
    reg = Registry()
    rng = random.Random(42)
    for i in range(n):
        reg.register(f"agent-{i}", rng.choice(STATUSES))
    return reg


def trivial(agent: Agent) -> str:
    return str(agent.value)


def sequential_round(reg: Registry, check: Callable[[Agent], object]) -> dict[str, object]:
    """The design being replaced: one caller, every agent in turn."""
    status: dict[str, object] = {}
    for agent in reg.find():
        try:
            status[agent.agent_id] = check(agent)
        except Exception:
            status[agent.agent_id] = "unhealthy"
    return status


@pytest.fixture
def stopper() -> Iterator[list[HealthMonitor]]:
    monitors: list[HealthMonitor] = []
    yield monitors
    for m in monitors:
        m.stop()


def test_round_trivial_ferrule(benchmark: Any, stopper: list[HealthMonitor]) -> None:
    benchmark.group = "health round, 1000 agents, trivial check"
    reg = registry_of(1000)
    mon = HealthMonitor(reg, check=trivial, timeout=5.0)
    stopper.append(mon)
    result = benchmark(mon.check_now)
    assert len(result) == 1000


def test_round_trivial_sequential(benchmark: Any) -> None:
    benchmark.group = "health round, 1000 agents, trivial check"
    reg = registry_of(1000)
    result = benchmark(sequential_round, reg, trivial)
    assert len(result) == 1000


def hanging_check(release: threading.Event) -> Callable[[Agent], object]:
    def check(agent: Agent) -> object:
        if agent.agent_id == "agent-0":
            release.wait(HANG)
        return agent.value

    return check


def test_round_hanging_ferrule(benchmark: Any, stopper: list[HealthMonitor]) -> None:
    benchmark.group = "health round, 100 agents, one hanging check"
    reg = registry_of(100)
    release = threading.Event()
    check = hanging_check(release)

    def setup() -> tuple[tuple[HealthMonitor], dict[str, object]]:
        # A fresh monitor per round, so every round submits the hanging check anew
        # (a monitor does not resubmit a check that is still running).
        mon = HealthMonitor(reg, check=check, timeout=TIMEOUT)
        stopper.append(mon)
        return (mon,), {}

    result = benchmark.pedantic(HealthMonitor.check_now, setup=setup, rounds=5, iterations=1)
    release.set()
    assert result["agent-0"] == "unresponsive"
    assert len(result) == 100


def test_round_hanging_sequential(benchmark: Any) -> None:
    benchmark.group = "health round, 100 agents, one hanging check"
    reg = registry_of(100)
    check = hanging_check(threading.Event())
    result = benchmark.pedantic(sequential_round, args=(reg, check), rounds=5, iterations=1)
    assert len(result) == 100


def test_handoff_script_measures_a_nonnegative_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """A smoke run of ``benches/handoff.py`` (the docs' figure for the hand-off)."""
    import handoff

    monkeypatch.setattr(handoff, "ROUNDS", 20)
    for work in (handoff.nothing, handoff.spin, handoff.sleep):
        assert handoff.overhead(work) >= 0.0  # wall time covers the worker's own time
