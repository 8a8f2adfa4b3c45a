"""HealthMonitor against a pure-Python model: statuses, registry updates and the published
transitions (including "gone") after any sequence of registry changes and check results."""

from __future__ import annotations

from typing import Any

from ferrule import Agent, HealthMonitor, ManualClock, QueueEmpty, Registry, SignalBus
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

IDS = st.sampled_from([f"a{i}" for i in range(6)])
HEALTH = st.sampled_from(["healthy", "degraded", "unhealthy", "unresponsive"])
RESULTS = st.sampled_from(["healthy", "degraded", "unhealthy", "raise", "bogus", None])
ALLOWED = {"healthy", "degraded", "unhealthy"}


class HealthModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.reg = Registry(clock=self.clock)
        self.bus = SignalBus()
        self.sub = self.bus.subscribe("agent.*.health", maxsize=10_000)
        self.results: dict[str, Any] = {}
        self.mon = HealthMonitor(self.reg, check=self.check, bus=self.bus, timeout=5.0)
        # The model: registry health per live agent, leased ids, the monitor's last view.
        self.health: dict[str, str] = {}
        self.leased: set[str] = set()
        self.known: dict[str, str] = {}

    def check(self, agent: Agent) -> Any:
        r = self.results.get(agent.agent_id, "healthy")
        if r == "raise":
            raise RuntimeError("check failed")
        return r

    @rule(aid=IDS, health=HEALTH, leased=st.booleans())
    def register(self, aid: str, health: str, leased: bool) -> None:
        if aid in self.health:
            return
        self.reg.register(aid, health=health, ttl=1.0 if leased else None)
        self.health[aid] = health
        if leased:
            self.leased.add(aid)

    @rule(aid=IDS)
    def unregister(self, aid: str) -> None:
        assert self.reg.unregister(aid) == (aid in self.health)
        self.health.pop(aid, None)
        self.leased.discard(aid)

    @rule(aid=IDS, result=RESULTS)
    def set_result(self, aid: str, result: Any) -> None:
        self.results[aid] = result

    @precondition(lambda self: bool(self.health))
    @rule(data=st.data(), health=HEALTH)
    def set_health_by_hand(self, data: st.DataObject, health: str) -> None:
        aid = data.draw(st.sampled_from(sorted(self.health)))
        self.reg.update(aid, health=health)
        self.health[aid] = health

    @rule()
    def leases_expire(self) -> None:
        self.clock.advance(2.0)
        for aid in self.leased:
            del self.health[aid]
        self.leased.clear()

    @rule()
    def check_now(self) -> None:
        expected: dict[str, str] = {}
        transitions: list[dict[str, str]] = []
        for aid, previous in self.health.items():
            r = self.results.get(aid, "healthy")
            status = r if r in ALLOWED else "unhealthy"
            expected[aid] = status
            if status != previous:
                transitions.append({"agent_id": aid, "health": status, "previous": previous})
                self.health[aid] = status
        for aid, previous in self.known.items():
            if aid not in self.health:
                expected[aid] = "gone"
                transitions.append({"agent_id": aid, "health": "gone", "previous": previous})
        self.known = {aid: expected[aid] for aid in self.health}

        assert self.mon.check_now() == expected
        published = []
        while True:
            try:
                published.append(self.sub.get_nowait().data)
            except QueueEmpty:
                break
        key = lambda d: d["agent_id"]  # noqa: E731
        assert sorted(published, key=key) == sorted(transitions, key=key)

    @invariant()
    def registry_matches(self) -> None:
        assert {a.agent_id: a.health for a in self.reg.find()} == self.health

    def teardown(self) -> None:
        self.mon.stop()
        self.sub.cancel()


TestHealthModel = HealthModel.TestCase
TestHealthModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
