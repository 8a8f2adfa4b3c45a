"""WorkQueue against a pure-Python model (a deque), for every overflow policy.

``drop_newest`` refuses the new item of a full queue without an error: it does not enter
(not in ``put``, not returned by ``put_many``) and counts in ``rejected``.

The model also keeps ``queue.Queue``'s unfinished-task count: one per item that entered,
one off per ``task_done`` (refused at zero), and an item that leaves without a get
(evicted by ``drop_oldest``, discarded by ``shutdown(immediate=True)``) is done at once.
``join`` is probed without waiting: it would return exactly when the count is zero."""

from __future__ import annotations

import collections
import contextlib
from typing import Any

import pytest
from ferrule import QueueClosed, QueueEmpty, QueueFull, WorkQueue
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

POLICIES = ["block", "reject", "drop_oldest", "drop_newest"]


class Model:
    def __init__(self, maxsize: int, overflow: str) -> None:
        self.items: collections.deque[int] = collections.deque()
        self.maxsize, self.overflow = maxsize, overflow
        self.closed = False
        self.put = self.got = self.rejected = self.dropped = self.high_water = 0
        self.unfinished = 0

    def offer(self) -> str:
        """What one non-waiting put does: 'ok', 'full' or 'closed' (state updated)."""
        if self.closed:
            return "closed"
        return "room" if len(self.items) < self.maxsize else self.overflow

    def push(self, x: int) -> str:
        """'ok', 'discarded' (drop_newest, no error), 'full' (an error) or 'closed'."""
        what = self.offer()
        if what == "room":
            self.items.append(x)
            self.put += 1
            self.unfinished += 1
        elif what == "drop_oldest":
            self.items.popleft()  # done at once; x takes its place in unfinished
            self.items.append(x)
            self.put += 1
            self.dropped += 1
        elif what == "drop_newest":
            self.rejected += 1
            return "discarded"
        elif what in ("block", "reject"):
            self.rejected += 1
            return "full"
        else:
            return "closed"
        self.high_water = max(self.high_water, len(self.items))
        return "ok"


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    @initialize(maxsize=st.integers(-1, 5), overflow=st.sampled_from(POLICIES))
    def make(self, maxsize: int, overflow: str) -> None:
        self.q: WorkQueue[int] = WorkQueue(maxsize, overflow=overflow)
        # maxsize <= 0: queue.Queue's "no bound", which a few steps never reach.
        self.m = Model(maxsize if maxsize > 0 else 2**31, overflow)

    def fresh(self) -> int:
        self.n += 1
        return self.n

    @rule(how=st.sampled_from(["nowait", "timeout", "no_block"]))
    def put(self, how: str) -> None:
        x = self.fresh()
        expect = self.m.push(x)
        if expect == "discarded":
            expect = "ok"  # refused silently
        try:
            if how == "nowait":
                self.q.put_nowait(x)
            elif how == "timeout":
                self.q.put(x, timeout=0)
            else:
                self.q.put(x, False)
            got = "ok"
        except QueueFull:
            got = "full"
        except QueueClosed:
            got = "closed"
        assert got == expect

    @rule(count=st.integers(0, 7))
    def put_many(self, count: int) -> None:
        xs = [self.fresh() for _ in range(count)]
        accepted = 0
        closed = False
        for i, x in enumerate(xs):
            r = self.m.push(x)
            if r == "ok":
                accepted += 1
            elif r in ("full", "discarded"):
                self.m.rejected += len(xs) - i - 1  # the rest of the batch is refused
                break
            else:
                closed = True
                break
        try:
            assert self.q.put_many(xs, timeout=0) == accepted
            assert not (closed and accepted == 0)
        except QueueClosed:
            assert closed and accepted == 0

    @rule(nowait=st.booleans())
    def get(self, nowait: bool) -> None:
        try:
            x = self.q.get_nowait() if nowait else self.q.get(False)
        except QueueEmpty:
            assert not self.m.items and not self.m.closed
        except QueueClosed:
            assert not self.m.items and self.m.closed
        else:
            assert x == self.m.items.popleft()
            self.m.got += 1

    @rule(max_items=st.integers(1, 6))
    def get_many(self, max_items: int) -> None:
        try:
            xs = self.q.get_many(max_items, timeout=0)
        except QueueClosed:
            assert not self.m.items and self.m.closed
            return
        want = [self.m.items.popleft() for _ in range(min(max_items, len(self.m.items)))]
        assert xs == want
        self.m.got += len(want)

    @rule()
    def close(self) -> None:
        self.q.close()
        self.m.closed = True

    @rule(immediate=st.booleans())
    def shutdown(self, immediate: bool) -> None:
        self.q.shutdown(immediate)
        m = self.m
        m.closed = True
        if immediate:
            m.dropped += len(m.items)
            m.unfinished = max(0, m.unfinished - len(m.items))
            m.items.clear()

    @rule()
    def task_done(self) -> None:
        try:
            self.q.task_done()
        except ValueError:
            assert self.m.unfinished == 0
        else:
            assert self.m.unfinished > 0
            self.m.unfinished -= 1

    @rule()
    def join(self) -> None:
        if self.m.unfinished == 0:
            self.q.join()  # returns at once
        else:
            assert self.q._join_or_wait(None) is False  # would wait

    @invariant()
    def agrees(self) -> None:
        if not hasattr(self, "q"):
            return
        s = self.q.stats()
        m = self.m
        assert (s.put, s.got, s.rejected, s.dropped, s.high_water) == (
            m.put,
            m.got,
            m.rejected,
            m.dropped,
            m.high_water,
        )
        assert s.size == len(self.q) == len(m.items)
        assert s.put == s.got + s.dropped + s.size
        assert self.q.empty() == (not m.items)
        assert self.q.full() == (len(m.items) >= m.maxsize)
        assert self.q.closed == m.closed
        assert self.q.unfinished_tasks == m.unfinished


TestQueueModel = QueueMachine.TestCase
TestQueueModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize("overflow", POLICIES)
def test_every_policy_is_reachable(overflow: str) -> None:
    # The machine draws the policy; make sure each one runs at least once here too.
    q: WorkQueue[Any] = WorkQueue(1, overflow=overflow)
    m = Model(1, overflow)
    for x in range(3):
        assert m.push(x) in ("ok", "full", "discarded")
        with contextlib.suppress(QueueFull):
            q.put_nowait(x)
    s = q.stats()
    assert (s.put, s.rejected, s.dropped) == (m.put, m.rejected, m.dropped)
    assert list(q.get_many(5)) == list(m.items)
