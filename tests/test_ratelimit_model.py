"""RateLimiter against a small pure-Python GCRA model (hypothesis, stateful).

The model keeps its buckets in a dict keyed by the same objects, so it is dict semantics
by construction: keys of every kind (native builtins, numbers of other types equal to
them, user classes, enum members, UUIDs, NaN, keys whose hash changes or whose __hash__
or __eq__ raises) must behave exactly as the model's dict says.
"""

from __future__ import annotations

import enum
import math
import uuid
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

from ferrule import ManualClock, RateLimiter
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

NS = 1_000_000_000


class Val:
    """A user class equal to ``v`` (and to any Val of it), hashed like ``v``."""

    def __init__(self, v: object) -> None:
        self.v = v

    def __hash__(self) -> int:
        return hash(self.v)

    def __eq__(self, other: object) -> bool:
        return self.v == (other.v if isinstance(other, Val) else other)

    def __repr__(self) -> str:
        return f"Val({self.v!r})"


class Ident:
    """A user class with identity semantics."""


class Color(enum.Enum):
    RED = 1


class Point(NamedTuple):
    x: object
    y: object


class Boom(Exception):
    pass


class BadHash:
    def __hash__(self) -> int:
        raise Boom("hash")


class BadEq:
    """Hashes alike (no other key does); comparing it with anything but itself raises."""

    def __hash__(self) -> int:
        return 123_456_789

    def __eq__(self, other: object) -> bool:
        raise Boom("eq")


class Shifty:
    """A key whose hash changes on every call."""

    n = 0

    def __hash__(self) -> int:
        Shifty.n += 1
        return Shifty.n * 1_000_003

    def __eq__(self, other: object) -> bool:
        return self is other


NAN = math.nan
KEY_LIST: list[object] = [
    None, "a", "b", b"a", 7, ("a", 7),
    7.0, True, 1, 1.0, Decimal(7), Fraction(7), Val(7), ("a", 7.0), Point("a", 7),
    0.5, Fraction(1, 2), Val(0.5), Val("a"), Val("c"), "c", 2**64, float(2**64),
    uuid.UUID(int=1), Color.RED, NAN, Ident(), Ident(), (Val("b"), 1), ("b", 1),
]  # fmt: skip
KEYS = st.sampled_from(KEY_LIST)
# Drawn by index: hypothesis would hash the objects themselves.
HOSTILE: list[object] = [BadHash(), BadEq(), BadEq(), Shifty()]


class Model:
    """GCRA on integer nanoseconds: the contract, written plainly."""

    def __init__(self, rate: int, per_ns: int, burst: int) -> None:
        self.interval = -(-per_ns // rate)  # rounded up
        self.burst = burst
        self.tau = burst * self.interval
        self.tat: dict[object, int] = {}
        # Buckets of keys whose hash changes: a new one each time (never found again).
        self.lost: list[int] = []

    def check(self, key: object, cost: int, now: int) -> tuple[bool, int, int, int]:
        base = max(self.tat.get(key, 0), now)
        new_tat = base + cost * self.interval
        limit = now + self.tau
        if new_tat <= limit:
            self.tat[key] = new_tat
            return True, (limit - new_tat) // self.interval, 0, new_tat - now
        return False, max(0, limit - base) // self.interval, new_tat - limit, base - now

    def reset(self, key: object) -> None:
        # A reset bucket is full but stays tracked (as in the limiter) until reclaimed.
        if key in self.tat:
            self.tat[key] = 0

    def peek(self, key: object, now: int) -> int:
        return (now + self.tau - max(self.tat.get(key, 0), now)) // self.interval

    def check_lost(self, cost: int, now: int) -> tuple[bool, int, int, int]:
        """A key whose hash changed since it was stored: a fresh bucket, kept apart (a dict
        may still find such a key by identity, depending on its table's layout)."""
        tat, self.tat = self.tat, {}
        try:
            d = self.check(None, cost, now)
            self.lost.append(self.tat[None])
        finally:
            self.tat = tat
        return d

    def live(self, now: int) -> int:
        return sum(1 for t in [*self.tat.values(), *self.lost] if t > now)


class LimiterMachine(RuleBasedStateMachine):
    @initialize(
        rate=st.integers(1, 50),
        per_ms=st.sampled_from([250, 1000, 3000]),
        burst=st.one_of(st.none(), st.integers(1, 8)),
    )
    def setup(self, rate: int, per_ms: int, burst: int | None) -> None:
        self.clock = ManualClock()
        self.now = 0
        Shifty.n = 0  # replayable
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

    @rule(which=st.integers(0, len(HOSTILE) - 1), data=st.data())
    def hostile(self, which: int, data: st.DataObject) -> None:
        """A key whose __hash__ or __eq__ raises, or whose hash changes: the limiter
        raises where the model's dict raises, and decides as the model otherwise."""
        key = HOSTILE[which]
        cost = data.draw(st.integers(1, self.model.burst))
        expected: object
        got: object
        try:
            if isinstance(key, Shifty):
                expected = self.model.check_lost(cost, self.now)
            else:
                expected = self.model.check(key, cost, self.now)
        except Boom as e:
            expected = str(e)
        try:
            d = self.rl.check(key, cost)
            got = (d.allowed, d.remaining, round(d.retry_after * NS), round(d.reset_after * NS))
        except Boom as e:
            got = str(e)
        if expected == "eq" and got != expected:
            # The model compared with a stored key that the limiter may have reclaimed:
            # only a full bucket can be. Without it, the model decides as the limiter.
            rivals = [k for k in self.model.tat if type(k) is BadEq and k is not key]
            assert all(self.model.tat[k] <= self.now for k in rivals), got
            for k in rivals:
                del self.model.tat[k]
            expected = self.model.check(key, cost, self.now)
        assert got == expected, key

    @rule(key=KEYS)
    def reset(self, key: object) -> None:
        self.rl.reset(key)
        self.model.reset(key)

    @rule()
    def sweep(self) -> None:
        self.rl.sweep()
        assert len(self.rl) == self.model.live(self.now)

    @invariant()
    def peeks_agree(self) -> None:
        for key in KEY_LIST:
            assert self.rl.peek(key) == self.model.peek(key, self.now), key
        assert len(self.rl) >= self.model.live(self.now)


TestLimiterModel = LimiterMachine.TestCase
TestLimiterModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_model_rounding_matches_contract() -> None:
    assert Model(3, NS, 3).interval == math.ceil(NS / 3)


# -- several limits per key ------------------------------------------------------------


class MultiModel:
    """Several GCRA windows per key, written plainly: a request is granted only if every
    window's model grants it, and then taken from every one."""

    def __init__(self, windows: list[tuple[int, int, int]]) -> None:
        self.models = [Model(rate, per_ns, burst) for rate, per_ns, burst in windows]

    def check(self, key: object, cost: int, now: int) -> tuple[bool, int, int, int]:
        # Decide on copies, so that a refusal takes from none.
        trial = [Model.__new__(Model) for _ in self.models]
        for t, m in zip(trial, self.models, strict=True):
            t.__dict__.update(m.__dict__, tat=dict(m.tat))
        each = [t.check(key, cost, now) for t in trial]
        if all(d[0] for d in each):
            for t, m in zip(trial, self.models, strict=True):
                m.tat = t.tat
            return True, min(d[1] for d in each), 0, max(d[3] for d in each)
        # Refused: every window as it stands (one that would allow reports its tokens,
        # no wait, and its time to full).
        before = []
        for m in self.models:
            base = max(m.tat.get(key, 0), now)
            before.append(
                (
                    max(0, now + m.tau - base) // m.interval,
                    max(0, base + cost * m.interval - (now + m.tau)),
                    base - now,
                )
            )
        return (
            False,
            min(b[0] for b in before),
            max(b[1] for b in before),
            max(b[2] for b in before),
        )

    def peek(self, key: object, now: int) -> int:
        return min(m.peek(key, now) for m in self.models)

    def reset(self, key: object) -> None:
        for m in self.models:
            m.reset(key)

    def live(self, now: int) -> int:
        keys = {k for m in self.models for k, t in m.tat.items() if t > now}
        return len(keys)


WINDOW = st.tuples(
    st.integers(1, 20), st.sampled_from([250, 1000, 3000]), st.one_of(st.none(), st.integers(1, 8))
)
MULTI_KEYS = st.sampled_from(["a", "b", 7, 7.0, Val("a"), uuid.UUID(int=1)])


class MultiLimiterMachine(RuleBasedStateMachine):
    """A limiter with two or three limits against ``MultiModel``: every decision (all
    four fields), peek, reset and sweep agree exactly."""

    @initialize(windows=st.lists(WINDOW, min_size=2, max_size=3))
    def setup(self, windows: list[tuple[int, int, int | None]]) -> None:
        self.clock = ManualClock()
        self.now = 0
        self.rl = RateLimiter(
            limits=[(rate, ms / 1000, burst) for rate, ms, burst in windows], clock=self.clock
        )
        exact = [(r, ms * 1_000_000, b if b is not None else r) for r, ms, b in windows]
        self.model = MultiModel(exact)
        assert self.rl.limits == tuple(
            (float(r), ms / 1000, b) for (r, ms, _), (_, _, b) in zip(windows, exact, strict=True)
        )
        self.max_cost = min(m.burst for m in self.model.models)

    @rule(ms=st.integers(0, 1500))
    def advance(self, ms: int) -> None:
        self.clock.advance(ms / 1000)
        self.now += ms * 1_000_000

    @rule(key=MULTI_KEYS, data=st.data())
    def check(self, key: object, data: st.DataObject) -> None:
        cost = data.draw(st.integers(1, self.max_cost))
        d = self.rl.check(key, cost)
        allowed, remaining, retry, reset = self.model.check(key, cost, self.now)
        assert (d.allowed, d.remaining) == (allowed, remaining)
        assert d.retry_after == retry / NS
        assert d.reset_after == reset / NS

    @rule(key=MULTI_KEYS)
    def try_acquire(self, key: object) -> None:
        assert self.rl.try_acquire(key) == self.model.check(key, 1, self.now)[0]

    @rule(key=MULTI_KEYS)
    def reset(self, key: object) -> None:
        self.rl.reset(key)
        self.model.reset(key)

    @rule()
    def sweep(self) -> None:
        self.rl.sweep()
        assert len(self.rl) == self.model.live(self.now)

    @invariant()
    def peeks_agree(self) -> None:
        for key in ["a", "b", 7, Val("a"), uuid.UUID(int=1), "never"]:
            assert self.rl.peek(key) == self.model.peek(key, self.now), key
        assert len(self.rl) >= self.model.live(self.now)


TestMultiLimiterModel = MultiLimiterMachine.TestCase
TestMultiLimiterModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
