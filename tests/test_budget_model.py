"""Hypothesis stateful test: ResourceManager against a list-of-leases model with ttl
expiry and pressure events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ferrule import Lease, ManualClock, PoolTimeout, ResourceManager
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

LIMITS = {"cpu": 10, "mem": 3}
NAMES = st.sampled_from(sorted(LIMITS))
TTLS = st.one_of(st.none(), st.sampled_from([0.5, 1.0, 2.5]))
ALERT, SEVERE = 0.7, 0.9


def level(used: int, limit: int) -> str:
    if used >= SEVERE * limit:
        return "severe"
    if used >= ALERT * limit:
        return "moderate"
    return "normal"


@dataclass
class ModelLease:
    name: str
    amount: int
    deadline: float
    released: bool
    lease: Lease | None


class Bus:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, signal_type: str, data: dict[str, Any]) -> int:
        self.events.append(data)
        return 1


class ResourceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.bus = Bus()
        self.rm = ResourceManager(
            dict(LIMITS),
            alert_threshold=ALERT,
            severe_threshold=SEVERE,
            bus=self.bus,
            clock=self.clock,
        )
        self.leases: list[ModelLease] = []

    def live(self, m: ModelLease) -> bool:
        return not m.released and self.clock.now() < m.deadline

    def used(self, name: str) -> int:
        return sum(m.amount for m in self.leases if m.name == name and self.live(m))

    def expire(self) -> None:
        for m in self.leases:
            if not self.live(m):
                m.released = True

    @rule(name=NAMES, data=st.data(), ttl=TTLS, blocking=st.booleans())
    def acquire(self, name: str, data: st.DataObject, ttl: float | None, blocking: bool) -> None:
        amount = data.draw(st.integers(1, LIMITS[name]))
        self.expire()
        fits = self.used(name) + amount <= LIMITS[name]
        if blocking:
            try:
                lease: Lease | None = self.rm.acquire(name, amount, timeout=0, ttl=ttl)
            except PoolTimeout:
                lease = None
        else:
            lease = self.rm.try_acquire(name, amount, ttl=ttl)
        assert (lease is not None) == fits
        if lease is not None:
            deadline = float("inf") if ttl is None else self.clock.now() + ttl
            assert lease.expires_at == (None if ttl is None else deadline)
            self.leases.append(ModelLease(name, amount, deadline, False, lease))

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), how=st.sampled_from(["release", "exit", "drop"]))
    def release(self, data: st.DataObject, how: str) -> None:
        m = data.draw(st.sampled_from(self.leases))
        if m.lease is None:
            return
        if how == "release":
            m.lease.release()
        elif how == "exit":
            m.lease.__exit__(None, None, None)
        else:
            m.lease = None  # the only reference: released when collected
        m.released = True

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule()
    def forget_finished(self) -> None:
        self.leases = [m for m in self.leases if self.live(m)]

    @invariant()
    def usage_and_pressure_match(self) -> None:
        usage = self.rm.usage()
        self.expire()
        for name, limit in LIMITS.items():
            used = self.used(name)
            assert (usage[name].used, usage[name].limit) == (used, limit)
            want = level(used, limit)
            assert usage[name].pressure == want
            assert self.rm.pressure(name) == want
            # The published changes form one chain that ends at the current level.
            prev = "normal"
            for e in (e for e in self.bus.events if e["name"] == name):
                assert e["previous"] == prev != e["pressure"]
                assert e["pressure"] == level(e["used"], e["limit"])
                prev = e["pressure"]
            assert prev == want
        for m in self.leases:
            if m.lease is not None:
                assert m.lease.released == (not self.live(m))


TestResourceModel = ResourceMachine.TestCase
TestResourceModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_model_levels_match_the_manager() -> None:
    assert [level(u, 10) for u in (6, 7, 8, 9, 10)] == [
        "normal",
        "moderate",
        "moderate",
        "severe",
        "severe",
    ]
    rm = ResourceManager({"x": 10}, alert_threshold=ALERT, severe_threshold=SEVERE)
    held = []
    for used in range(1, 11):
        held.append(rm.acquire("x", 1))
        assert rm.pressure("x") == level(used, 10)
