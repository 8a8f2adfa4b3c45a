"""Hypothesis stateful test: Metrics (window and lifetime totals) against a small
pure-Python model."""

from __future__ import annotations

import pytest
from ferrule import ManualClock, Metrics
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule


class MetricsMachine(RuleBasedStateMachine):
    """Counts, errors and max against a list of (t, seconds, ok) with the slot rule; the
    totals against every row since the op's last reset."""

    WINDOW = 10.0
    SLOT = 1.0
    BOUNDS_US = (1_000, 500_000, 2_000_000)  # the buckets, in microseconds

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.m = Metrics(
            window=self.WINDOW, clock=self.clock, buckets=[b / 1e6 for b in self.BOUNDS_US]
        )
        self.rows: list[tuple[str, int, int, bool]] = []  # (op, slot, micros, ok)

    @rule(
        op=st.sampled_from(["x", "y"]),
        micros=st.one_of(
            st.sampled_from([0, 999, 1_000, 1_001, 500_000, 2_000_000, 2_000_001]),
            st.integers(0, 5_000_000),
        ),
        ok=st.booleans(),
    )
    def record(self, op: str, micros: int, ok: bool) -> None:
        self.m.record(op, micros / 1e6, ok)
        self.rows.append((op, int(self.clock.now() // self.SLOT), micros, ok))

    @rule(dt=st.sampled_from([0.25, 1.0, 4.0, 9.0, 11.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule(op=st.sampled_from(["x", "y", None]))
    def reset(self, op: str | None) -> None:
        self.m.reset(op)
        self.rows = [r for r in self.rows if op is not None and r[0] != op]

    @invariant()
    def snapshots_match(self) -> None:
        cur = int(self.clock.now() // self.SLOT)
        for op in ("x", "y"):
            live = [r for r in self.rows if r[0] == op and cur - r[1] < 10]
            s = self.m.snapshot(op)
            assert s.count == len(live)
            assert s.errors == sum(1 for r in live if not r[3])
            assert s.max == pytest.approx(max((r[2] for r in live), default=0) / 1e6)
            assert s.rate == pytest.approx(len(live) / self.WINDOW)
            rows = [r for r in self.rows if r[0] == op]
            t = self.m.totals(op)
            assert (t.count, t.errors) == (len(rows), sum(1 for r in rows if not r[3]))
            assert t.sum == pytest.approx(sum(r[2] for r in rows) / 1e6, abs=1e-9)
            cumulative = [sum(1 for r in rows if r[2] <= b) for b in self.BOUNDS_US]
            assert t.buckets == (*cumulative, len(rows))
        assert self.m.ops() == sorted({r[0] for r in self.rows})


TestMetricsModel = MetricsMachine.TestCase
TestMetricsModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
