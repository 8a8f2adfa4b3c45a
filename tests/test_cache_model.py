"""Hypothesis stateful tests: Cache(shards=1) against an exact OrderedDict LRU model with
TTL, and the same model with weights, a time to idle and the eviction listener's reports.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from ferrule import Cache, ManualClock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

KEYS = st.sampled_from(["a", "b", "c", "d", "e", 1, 2, (1, "x")])
TTLS = st.one_of(st.none(), st.sampled_from([0.5, 1.0, 2.5]))
CAPACITY = 4
INF = float("inf")


class Model:
    """Exact LRU over live entries; a write into a full cache removes the entry with the
    earliest passed deadline if there is one, else the least recently used entry.

    Weighted (`weights`): the capacity bounds the sum of the weights as well as the
    count; a write first reclaims every expired entry (the cache reclaims up to four per
    write, and never holds more than four), then removes least recently used entries
    until the new one fits; a value heavier than the capacity is rejected and removes
    the key's old value. With `tti` an entry's deadline is the earlier of its own and
    its last read (or write) plus `tti`. `events` are the listener's reports.
    """

    def __init__(self, weights: bool = False, tti: float | None = None) -> None:
        # key -> (value, own deadline, effective deadline, weight)
        self.d: OrderedDict[object, tuple[object, float, float, int]] = OrderedDict()
        self.hits = self.misses = self.inserts = self.evictions = self.rejected = 0
        self.weights = weights
        self.tti = tti
        self.events: list[tuple[object, object, str]] = []

    def live(self, k: object, now: float) -> bool:
        return k in self.d and now < self.d[k][2]

    def weight(self) -> int:
        return sum(e[3] for e in self.d.values()) if self.weights else len(self.d)

    def remove(self, k: object, cause: str) -> None:
        v = self.d.pop(k)[0]
        self.events.append((k, v, cause))

    def drop_expired(self, now: float) -> None:
        for k in [k for k, e in self.d.items() if now >= e[2]]:
            self.remove(k, "expired")

    def effective(self, own: float, now: float) -> float:
        return own if self.tti is None else min(own, now + self.tti)

    def get(self, k: object, now: float, count: bool = True) -> object:
        if self.live(k, now):
            v, own, eff, w = self.d[k]
            if count:
                self.hits += 1
                self.d.move_to_end(k)
                if self.tti is not None:
                    self.d[k] = (v, own, min(own, max(eff, now + self.tti)), w)
            return v
        if k in self.d:
            self.remove(k, "expired")
        if count:
            self.misses += 1
        return None

    def set(self, k: object, v: object, own: float, now: float, w: int = 1) -> None:
        if self.weights and w > CAPACITY:
            self.rejected += 1
            if k in self.d:
                self.remove(k, "replaced" if self.live(k, now) else "expired")
            return
        self.inserts += 1
        entry = (v, own, self.effective(own, now), w)
        if k in self.d:
            self.events.append((k, self.d[k][0], "replaced"))
            self.d[k] = entry
            self.d.move_to_end(k)
            self.drop_expired(now)
            self.evict(0, 0)
            return
        if self.weights:
            self.drop_expired(now)
            self.evict(1, w)
        elif len(self.d) >= CAPACITY:
            if any(now >= e[2] for e in self.d.values()):
                self.drop_expired(now)
            else:
                self.evict(1, 0)
        self.d[k] = entry

    def evict(self, extra: int, w: int) -> None:
        while len(self.d) + extra > CAPACITY or (self.weights and self.weight() + w > CAPACITY):
            self.remove(next(iter(self.d)), "size")
            self.evictions += 1


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
        exp = INF if ttl is None else self.now + ttl
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
            self.model.set(k, value, INF, self.now)
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
        live = {k: e[0] for k, e in self.model.d.items() if now < e[2]}
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


WEIGHTS = st.sampled_from([0, 1, 2, 3, 4, 5])  # 5 > CAPACITY: rejected


class WeightedIdleMachine(RuleBasedStateMachine):
    """Weights (the value's second item), a time to idle of 1.0 beside per-entry TTLs,
    and every report of the listener, against the model."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.events: list[tuple[object, object, str]] = []
        self.cache = Cache(
            CAPACITY,
            shards=1,
            clock=self.clock,
            tti=1.0,
            weigher=lambda k, v: v[1],
            on_evict=lambda k, v, cause: self.events.append((k, v, cause)),
        )
        self.model = Model(weights=True, tti=1.0)
        self.counter = 0

    @property
    def now(self) -> float:
        return self.clock.now()

    def value(self, w: int) -> tuple[int, int]:
        self.counter += 1
        return (self.counter, w)

    @rule(k=KEYS, w=WEIGHTS, ttl=TTLS)
    def set(self, k: object, w: int, ttl: float | None) -> None:
        v = self.value(w)
        self.cache.set(k, v, ttl=ttl)
        self.model.set(k, v, INF if ttl is None else self.now + ttl, self.now, w)

    @rule(pairs=st.lists(st.tuples(KEYS, WEIGHTS), max_size=4, unique_by=lambda p: p[0]))
    def set_many(self, pairs: list[tuple[object, int]]) -> None:
        mapping = {k: self.value(w) for k, w in pairs}
        self.cache.set_many(mapping)
        for k, v in mapping.items():
            self.model.set(k, v, INF, self.now, v[1])

    @rule(k=KEYS)
    def get(self, k: object) -> None:
        assert self.cache.get(k) == self.model.get(k, self.now)

    @rule(keys=st.lists(KEYS, max_size=4))
    def get_many(self, keys: list[object]) -> None:
        want: dict[object, Any] = {}
        for k in keys:
            v = self.model.get(k, self.now)
            if v is not None:
                want[k] = v
        assert self.cache.get_many(keys) == want

    @rule(k=KEYS)
    def peek(self, k: object) -> None:
        assert self.cache.peek(k) == self.model.get(k, self.now, count=False)

    @rule(k=KEYS)
    def contains(self, k: object) -> None:
        assert (k in self.cache) == self.model.live(k, self.now)
        self.model.get(k, self.now, count=False)  # an expired entry found is removed

    @rule(k=KEYS)
    def pop(self, k: object) -> None:
        live = self.model.live(k, self.now)
        want = self.model.d[k][0] if live else None
        if k in self.model.d:
            self.model.remove(k, "deleted" if live else "expired")
        assert self.cache.pop(k, None) == want

    @rule(k=KEYS, w=WEIGHTS)
    def get_or_set(self, k: object, w: int) -> None:
        v = self.value(w)
        got = self.cache.get_or_set(k, lambda: v)
        want = self.model.get(k, self.now)
        if want is None:
            self.model.set(k, v, INF, self.now, w)
            want = v
        assert got == want

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule()
    def expire(self) -> None:
        self.cache.expire()
        self.model.drop_expired(self.now)

    @precondition(lambda self: self.counter % 5 == 0)
    @rule()
    def clear(self) -> None:
        self.cache.clear()
        for k in list(self.model.d):
            self.model.remove(k, "deleted")

    @invariant()
    def same_contents_and_reports(self) -> None:
        # The same reports, op by op (order within one operation aside: heap order).
        assert Counter(self.events) == Counter(self.model.events)
        self.events.clear()
        self.model.events.clear()
        now = self.now
        live = {k: e[0] for k, e in self.model.d.items() if now < e[2]}
        assert {k: self.cache.peek(k) for k in live} == live
        st_ = self.cache.stats()  # reclaims expired entries: reported as such
        self.model.drop_expired(now)
        assert Counter(self.events) == Counter(self.model.events)
        self.events.clear()
        self.model.events.clear()
        m = self.model
        assert dict(self.cache.items()) == live
        assert (st_.size, st_.weight) == (len(live), m.weight())
        assert st_.weight <= CAPACITY and st_.size <= CAPACITY
        assert (st_.hits, st_.misses, st_.inserts, st_.evictions, st_.rejected) == (
            m.hits,
            m.misses,
            m.inserts,
            m.evictions,
            m.rejected,
        )


TestWeightedIdleModel = WeightedIdleMachine.TestCase
TestWeightedIdleModel.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
