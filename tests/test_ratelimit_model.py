"""RateLimiter against a small pure-Python GCRA model (hypothesis, stateful)."""

from __future__ import annotations

import math

from ferrule import ManualClock, RateLimiter
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

NS = 1_000_000_000
KEYS = st.sampled_from([None, "a", "b", b"a", 7, ("a", 7)])


class Model:
    """GCRA on integer nanoseconds: the contract, written plainly."""

    def __init__(self, rate: int, per_ns: int, burst: int) -> None:
        self.interval = -(-per_ns // rate)  # rounded up
        self.burst = burst
        self.tau = burst * self.interval
        self.tat: dict[object, int] = {}

    def check(self, key: object, cost: int, now: int) -> tuple[bool, int, int, int]:
        base = max(self.tat.get(key, 0), now)
        new_tat = base + cost * self.interval
        limit = now + self.tau
        if new_tat <= limit:
            self.tat[key] = new_tat
            return True, (limit - new_tat) // self.interval, 0, new_tat - now
        return False, max(0, limit - base) // self.interval, new_tat - limit, base - now

    def peek(self, key: object, now: int) -> int:
        return (now + self.tau - max(self.tat.get(key, 0), now)) // self.interval

    def live(self, now: int) -> int:
        return sum(1 for t in self.tat.values() if t > now)


class LimiterMachine(RuleBasedStateMachine):
    @initialize(
        rate=st.integers(1, 50),
        per_ms=st.sampled_from([250, 1000, 3000]),
        burst=st.one_of(st.none(), st.integers(1, 8)),
    )
    def setup(self, rate: int, per_ms: int, burst: int | None) -> None:
        self.clock = ManualClock()
        self.now = 0
        self.rl = RateLimiter(rate, per_ms / 1000, burst=burst, clock=self.clock)
        self.model = Model(rate, per_ms * 1_000_000, burst if burst is not None else rate)
        assert self.rl.burst == self.model.burst

    @rule(ms=st.integers(0, 400))
    def advance(self, ms: int) -> None:
        self.clock.advance(ms / 1000)
        self.now += ms * 1_000_000

    @rule(key=KEYS, data=st.data())
    def check(self, key: object, data: st.DataObject) -> None:
        cost = data.draw(st.integers(1, self.model.burst))
        d = self.rl.check(key, cost)
        allowed, remaining, retry, reset = self.model.check(key, cost, self.now)
        assert (d.allowed, d.remaining) == (allowed, remaining)
        assert d.retry_after == retry / NS
        assert d.reset_after == reset / NS

    @rule(key=KEYS)
    def try_acquire(self, key: object) -> None:
        assert self.rl.try_acquire(key) == self.model.check(key, 1, self.now)[0]

    @rule(key=KEYS)
    def reset(self, key: object) -> None:
        self.rl.reset(key)
        self.model.tat.pop(key, None)

    @rule()
    def sweep(self) -> None:
        self.rl.sweep()
        assert len(self.rl) == self.model.live(self.now)

    @invariant()
    def peeks_agree(self) -> None:
        for key in [None, "a", b"a", 7]:
            assert self.rl.peek(key) == self.model.peek(key, self.now)
        assert len(self.rl) >= self.model.live(self.now)


TestLimiterModel = LimiterMachine.TestCase
TestLimiterModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_model_rounding_matches_contract() -> None:
    assert Model(3, NS, 3).interval == math.ceil(NS / 3)
