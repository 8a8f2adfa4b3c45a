"""SignalBus against a small pure-Python model (hypothesis stateful testing): routing,
per-subscription overflow, counters and cancellation, for pull subscriptions.

``publish`` counts the mailboxes that took the signal: a full ``drop_newest`` mailbox
refuses it (counted in ``rejected``, like ``reject``). A cancelled pull subscription
takes nothing new and keeps what it had queued, readable until drained."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from ferrule import QueueClosed, QueueEmpty, SignalBus, Subscription
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule


def model_match(pattern: list[str], segs: list[str]) -> bool:
    """AMQP topic matching by recursion (independent of the regex in test_bus)."""
    if not pattern:
        return not segs
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(model_match(rest, segs[i:]) for i in range(len(segs) + 1))
    if not segs:
        return False
    return (head in ("*", segs[0])) and model_match(rest, segs[1:])


@dataclass
class ModelSub:
    pattern: str
    maxsize: int
    overflow: str
    items: collections.deque[int] = field(default_factory=collections.deque)
    cancelled: bool = False
    accepted: int = 0
    delivered: int = 0
    dropped: int = 0
    rejected: int = 0

    def offer(self, n: int) -> bool:
        if self.cancelled:
            return False
        if len(self.items) < self.maxsize:
            self.items.append(n)
        elif self.overflow == "drop_oldest":
            self.items.popleft()
            self.items.append(n)
            self.dropped += 1
        else:  # reject, drop_newest: not taken
            self.rejected += 1
            return False
        self.accepted += 1
        return True


segment = st.sampled_from(["a", "b", "c"])
patterns = st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=4).map(".".join)
types = st.lists(segment, min_size=1, max_size=4).map(".".join)


class BusMachine(RuleBasedStateMachine):
    subs = Bundle("subs")

    def __init__(self) -> None:
        super().__init__()
        self.bus = SignalBus()
        self.model: dict[int, ModelSub] = {}
        self.real: dict[int, Subscription] = {}
        self.counter = 0

    @rule(
        target=subs,
        pattern=patterns,
        maxsize=st.integers(1, 3),
        overflow=st.sampled_from(["drop_oldest", "drop_newest", "reject"]),
    )
    def subscribe(self, pattern: str, maxsize: int, overflow: str) -> int:
        sub = self.bus.subscribe(pattern, maxsize=maxsize, overflow=overflow)
        key = len(self.real)
        self.real[key] = sub
        self.model[key] = ModelSub(pattern, maxsize, overflow)
        return key

    @rule(signal_type=types)
    def publish(self, signal_type: str) -> None:
        self.counter += 1
        segs = signal_type.split(".")
        want = sum(
            m.offer(self.counter)
            for m in self.model.values()
            if not m.cancelled and model_match(m.pattern.split("."), segs)
        )
        assert self.bus.publish(signal_type, self.counter) == want

    @rule(key=subs)
    def get_nowait(self, key: int) -> None:
        m, sub = self.model[key], self.real[key]
        if not m.items:
            want = QueueClosed if m.cancelled else QueueEmpty
            try:
                sub.get_nowait()
                raise AssertionError("an empty mailbox returned a signal")
            except want:
                return
        assert sub.get_nowait().data == m.items.popleft()
        m.delivered += 1

    @rule(key=subs)
    def cancel(self, key: int) -> None:
        m = self.model[key]
        assert self.real[key].cancel() == (not m.cancelled)
        m.cancelled = True  # what is queued stays readable

    @precondition(lambda self: self.real)
    @rule()
    def listed(self) -> None:
        live = {sub._id for sub in self.bus.subscriptions()}
        want = {self.real[k]._id for k, m in self.model.items() if not m.cancelled}
        assert live == want

    @invariant()
    def counters_agree(self) -> None:
        for key, m in self.model.items():
            s = self.real[key].stats()
            assert (s.accepted, s.delivered, s.dropped, s.rejected, s.queued) == (
                m.accepted,
                m.delivered,
                m.dropped,
                m.rejected,
                len(m.items),
            )
            assert self.real[key].cancelled == m.cancelled


def test_model_match_examples() -> None:
    assert model_match(["a", "#", "c"], ["a", "c"])
    assert not model_match(["a", "*"], ["a"])
    assert model_match(["#"], ["a", "b"])
    assert not model_match(["#", "b"], ["b", "a"])


TestBusModel = BusMachine.TestCase
TestBusModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
