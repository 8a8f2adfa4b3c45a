"""Hypothesis stateful test: ErrorStore against a small pure-Python model."""

from __future__ import annotations

from collections import OrderedDict

from ferrule import ErrorStore, ManualClock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

AGENTS = st.sampled_from(["a", "b", "c", "d", "e"])
MAX_PER_AGENT = 3
MAX_AGENTS = 3
MAX_AGE = 10.0


class ErrorModel:
    """Per agent a list of (error, t); agents in least-recently-recorded-first order."""

    def __init__(self) -> None:
        self.d: OrderedDict[str, list[tuple[int, float]]] = OrderedDict()

    def prune(self, now: float) -> None:
        for a in list(self.d):
            self.d[a] = [(e, t) for e, t in self.d[a] if now < t + MAX_AGE]
            if not self.d[a]:
                del self.d[a]

    def record(self, a: str, e: int, now: float) -> None:
        self.prune(now)
        if a not in self.d and len(self.d) >= MAX_AGENTS:
            self.d.popitem(last=False)
        entries = self.d.setdefault(a, [])
        entries.append((e, now))
        del entries[:-MAX_PER_AGENT]
        self.d.move_to_end(a)


class ErrorStoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.store = ErrorStore(
            max_per_agent=MAX_PER_AGENT, max_age=MAX_AGE, max_agents=MAX_AGENTS, clock=self.clock
        )
        self.model = ErrorModel()
        self.n = 0

    @rule(agent=AGENTS)
    def record(self, agent: str) -> None:
        self.n += 1
        assert self.store.record(agent, self.n) is True
        self.model.record(agent, self.n, self.clock.now())

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 3.0, 9.5, 10.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule(agent=AGENTS)
    def reset(self, agent: str) -> None:
        self.model.prune(self.clock.now())
        existed = agent in self.model.d
        self.model.d.pop(agent, None)
        # An agent whose errors all expired may still be held until reclaimed.
        assert self.store.reset(agent) in ((True,) if existed else (True, False))

    @rule(agent=AGENTS, limit=st.integers(0, 4))
    def history(self, agent: str, limit: int) -> None:
        self.model.prune(self.clock.now())
        want = self.model.d.get(agent, [])[::-1][:limit]
        got = [(r.error, r.timestamp) for r in self.store.history(agent, limit)]
        assert got == want

    @invariant()
    def same_agents_and_counts(self) -> None:
        now = self.clock.now()
        self.model.prune(now)
        assert self.store.agents() == sorted(self.model.d)
        for a in ["a", "b", "c", "d", "e"]:
            assert self.store.count(a) == len(self.model.d.get(a, []))


TestErrorStoreModel = ErrorStoreMachine.TestCase
TestErrorStoreModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
