"""Hypothesis stateful test: Cache(shards=1) against an OrderedDict LRU model with TTL."""

from __future__ import annotations

from collections import OrderedDict

from ferrule import Cache, ManualClock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

KEYS = st.sampled_from(["a", "b", "c", "d", "e", 1, 2, (1, "x")])
TTLS = st.one_of(st.none(), st.sampled_from([0.5, 1.0, 2.5]))
CAPACITY = 4


class Model:
    """Exact LRU over live entries; a write into a full cache removes the entry with the
    earliest passed deadline if there is one, else the least recently used entry."""

    def __init__(self) -> None:
        self.d: OrderedDict[object, tuple[object, float]] = OrderedDict()
        self.hits = self.misses = self.inserts = self.evictions = 0

    def live(self, k: object, now: float) -> bool:
        return k in self.d and now < self.d[k][1]

    def drop_expired(self, now: float) -> None:
        for k in [k for k, (_, exp) in self.d.items() if now >= exp]:
            del self.d[k]

    def get(self, k: object, now: float, count: bool = True) -> object:
        if self.live(k, now):
            if count:
                self.hits += 1
                self.d.move_to_end(k)
            return self.d[k][0]
        self.d.pop(k, None)
        if count:
            self.misses += 1
        return None

    def set(self, k: object, v: object, exp: float, now: float) -> None:
        self.inserts += 1
        if k in self.d:
            self.d[k] = (v, exp)
            self.d.move_to_end(k)
            return
        if len(self.d) >= CAPACITY:
            expired = [(e, key) for key, (_, e) in self.d.items() if now >= e]
            if expired:
                self.drop_expired(now)
            else:
                self.d.popitem(last=False)
                self.evictions += 1
        self.d[k] = (v, exp)


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.cache = Cache(CAPACITY, shards=1, clock=self.clock)
        self.model = Model()
        self.counter = 0

    @property
    def now(self) -> float:
        return self.clock.now()

    @rule(k=KEYS, ttl=TTLS)
    def set(self, k: object, ttl: float | None) -> None:
        self.counter += 1
        self.cache.set(k, self.counter, ttl=ttl)
        exp = float("inf") if ttl is None else self.now + ttl
        self.model.set(k, self.counter, exp, self.now)

    @rule(k=KEYS)
    def get(self, k: object) -> None:
        assert self.cache.get(k) == self.model.get(k, self.now)

    @rule(k=KEYS)
    def contains(self, k: object) -> None:
        assert (k in self.cache) == self.model.live(k, self.now)

    @rule(k=KEYS)
    def delete(self, k: object) -> None:
        expected = self.model.live(k, self.now)
        self.model.d.pop(k, None)
        assert self.cache.delete(k) is expected

    @rule(k=KEYS)
    def get_or_set(self, k: object) -> None:
        self.counter += 1
        value = self.counter
        got = self.cache.get_or_set(k, lambda: value)
        want = self.model.get(k, self.now)
        if want is None:
            self.model.set(k, value, float("inf"), self.now)
            want = value
        assert got == want

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @precondition(lambda self: self.counter % 7 == 0)
    @rule()
    def expire(self) -> None:
        self.cache.expire()
        self.model.drop_expired(self.now)

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.d.clear()

    @invariant()
    def same_live_contents(self) -> None:
        now = self.now
        live = {k: v for k, (v, e) in self.model.d.items() if now < e}
        assert dict(self.cache.items()) == live
        assert len(self.cache) == len(live) <= CAPACITY
        st_ = self.cache.stats()
        m = self.model
        assert (st_.hits, st_.misses, st_.inserts, st_.evictions) == (
            m.hits,
            m.misses,
            m.inserts,
            m.evictions,
        )


TestCacheModel = CacheMachine.TestCase
TestCacheModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
