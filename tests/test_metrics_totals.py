"""Metrics lifetime totals (OpTotals) and their buckets: placement at the bounds, counters
that only grow under concurrent recording, idle windows, reset, eviction beyond max_ops,
bad bounds."""

from __future__ import annotations

import gc
import itertools
import math
import threading

import ferrule
import pytest
from ferrule import ManualClock, Metrics, OpTotals

from tests.conftest import run_threads

DEFAULT = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
DEFAULT += (0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def fields(t: OpTotals) -> tuple[int, int, float, tuple[int, ...]]:
    return (t.count, t.errors, t.sum, t.buckets)


# ---- buckets -------------------------------------------------------------------------------


def test_default_layout() -> None:
    m = Metrics()
    assert m.buckets == DEFAULT
    assert fields(m.totals("never")) == (0, 0, 0.0, (0,) * 17)


def test_a_value_equal_to_a_bound_is_in_that_bounds_bucket() -> None:
    """Prometheus `le`: the bucket of bound b counts the values <= b."""
    bounds = (0.001, 0.01, 0.1)
    m = Metrics(buckets=bounds)
    for b in bounds:
        m.record("at", b)
    assert m.totals("at").buckets == (1, 2, 3, 3)
    d = Metrics()  # the default bounds, most of which are not exact binary fractions
    for b in DEFAULT:
        d.record("op", b)
    assert d.totals("op").buckets == (*range(1, 17), 16)


@pytest.mark.parametrize("bound", [0.00025, 0.001, 0.1, 1.0, 2.5])
def test_placement_around_a_bound_is_at_nanosecond_resolution(bound: float) -> None:
    m = Metrics(buckets=[bound])
    m.record("op", bound - 1e-9)  # one nanosecond below: le bound
    m.record("op", math.nextafter(bound, 0.0))
    m.record("op", bound)
    m.record("op", math.nextafter(bound, math.inf))  # the same nanosecond as the bound
    m.record("op", bound + 1e-9)  # one nanosecond above: +Inf
    m.record("op", 0)
    assert m.totals("op").buckets == (5, 6)


def test_int_bounds_read_back_as_floats_and_huge_values_go_to_inf() -> None:
    m = Metrics(buckets=range(1, 4))
    assert m.buckets == (1.0, 2.0, 3.0)
    m.record("op", 10**9)  # recorded as 10**6 s
    m.record("op", 3)
    t = m.totals("op")
    assert t.buckets == (0, 0, 1, 2)
    assert t.sum == 1e6 + 3


def test_totals_add_every_recording_and_timers() -> None:
    clock = ManualClock()
    m = Metrics(buckets=(0.1, 1.0), clock=clock)
    m.record("op", 0.05)
    m.record("op", 0.5, ok=False)
    with m.time("op"):
        clock.advance(2.0)
    with pytest.raises(KeyError), m.time("op"):
        raise KeyError("x")
    t = m.totals("op")
    assert fields(t) == (4, 2, pytest.approx(2.55), (2, 3, 4))
    assert repr(t) == "OpTotals(count=4, errors=2, sum=2.55, buckets=(2, 3, 4))"
    one = Metrics(buckets=[1])
    one.record("x", 5)
    assert repr(one.totals("x")) == "OpTotals(count=1, errors=0, sum=5.0, buckets=(0, 1))"


def test_optotals_is_frozen_and_exported() -> None:
    t = Metrics().totals("op")
    assert type(t) is ferrule.OpTotals and "OpTotals" in ferrule.__all__
    with pytest.raises(AttributeError):
        t.count = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        OpTotals()  # type: ignore[call-arg]
    assert not gc.is_tracked(t)
    assert gc.get_referents(t) == []


# ---- lifetime: idle windows, reset ----------------------------------------------------------


def test_totals_survive_idle_windows() -> None:
    clock = ManualClock()
    m = Metrics(window=10.0, clock=clock, buckets=[0.1])
    m.record("rare", 0.05)
    m.record("rare", 0.5, ok=False)
    for _ in range(5):
        clock.advance(60.0)  # several whole windows with no recording
        assert m.snapshot("rare").count == 0
        assert m.ops() == ["rare"]  # listed: it has totals (its ring is reclaimed)
        assert fields(m.totals("rare")) == (2, 1, pytest.approx(0.55), (1, 2))
    m.record("rare", 0.01)
    assert m.snapshot("rare").count == 1
    assert fields(m.totals("rare")) == (3, 1, pytest.approx(0.56), (2, 3))
    assert repr(m) == "Metrics(window=10.0, ops=1)"


def test_reset_clears_the_totals() -> None:
    m = Metrics(buckets=[1])
    m.record("a", 0.5)
    m.record("b", 2, ok=False)
    m.reset("a")
    assert fields(m.totals("a")) == (0, 0, 0.0, (0, 0))
    assert m.ops() == ["b"]
    m.record("a", 0.5)
    assert m.totals("a").count == 1  # from zero again
    m.reset()
    assert m.ops() == []
    assert fields(m.totals("b")) == (0, 0, 0.0, (0, 0))


# ---- max_ops -------------------------------------------------------------------------------


def test_beyond_max_ops_the_longest_idle_operations_go() -> None:
    """max_ops=8: a 9th name drops the longest idle until 8 - 8 // 8 = 7 remain."""
    clock = ManualClock()
    m = Metrics(window=10.0, clock=clock, max_ops=8)  # 1 s slots
    assert m.max_ops == 8
    for i in range(8):
        m.record(f"op{i}", 0.1)
        clock.advance(1.0)
    m.record("op0", 0.1)  # refreshed: now among the newest
    assert len(m.ops()) == 8
    m.record("new", 0.1)
    assert m.ops() == ["new", "op0", "op3", "op4", "op5", "op6", "op7"]
    assert m.totals("op1").count == m.totals("op2").count == 0
    assert m.totals("op0").count == 2
    # Long idle: every ring is reclaimed; what counts is still each one's last recording.
    clock.advance(100.0)
    assert m.ops() == ["new", "op0", "op3", "op4", "op5", "op6", "op7"]
    m.record("late", 0.1)  # 8 names: nothing goes
    m.record("later", 0.1)  # 9: op3 and op4 (idle longest) go
    assert m.ops() == ["late", "later", "new", "op0", "op5", "op6", "op7"]


def test_max_ops_of_one_keeps_the_new_name() -> None:
    m = Metrics(max_ops=1)
    m.record("a", 0.1)
    m.record("b", 0.1)  # the same slot as "a": "a" goes, never the name just added
    assert m.ops() == ["b"]
    assert m.totals("a").count == 0


def test_many_names_stay_within_max_ops() -> None:
    m = Metrics(max_ops=100)
    for i in range(1000):
        m.record(f"req-{i}", 0.001)
        assert len(m.ops()) <= 100
    assert "req-999" in m.ops()


# ---- concurrency -----------------------------------------------------------------------------


def test_every_read_is_consistent_and_only_grows_under_eight_writers() -> None:
    """8 threads record while a reader checks each snapshot: cumulative counts
    non-decreasing, the last equal to count, errors <= count, and nothing smaller than in
    the previous read. At the end the figures are exact."""
    writers, per = 8, 20_000
    values = [0.0005, 0.001, 0.002, 0.01, 0.05, 0.3, 7.0, 20.0]
    bounds = (0.001, 0.01, 0.1, 1.0, 10.0)
    m = Metrics(buckets=bounds)
    done = threading.Event()
    finished = [0]
    lock = threading.Lock()
    reads = [0]

    def reader() -> None:
        last = (0, 0, 0.0, (0,) * 6)
        while not done.is_set():
            t = m.totals("op")
            b = t.buckets
            assert all(x <= y for x, y in itertools.pairwise(b)), b
            assert b[-1] == t.count and t.errors <= t.count
            assert t.count >= last[0] and t.errors >= last[1] and t.sum >= last[2]
            assert all(x >= y for x, y in zip(b, last[3], strict=True)), (b, last[3])
            last = (t.count, t.errors, t.sum, b)
            reads[0] += 1

    def body(i: int) -> None:
        if i == writers:
            reader()
            return
        try:
            rec = m.record
            for n in range(per):
                rec("op", values[(n + i) % len(values)], n % 5 != 0)
        finally:
            with lock:
                finished[0] += 1
                if finished[0] == writers:
                    done.set()

    run_threads(writers + 1, body)
    assert reads[0] > 0
    t = m.totals("op")
    total = writers * per
    assert (t.count, t.errors) == (total, writers * (per // 5))
    per_value = total // len(values)
    expected = tuple(per_value * sum(1 for v in values if v <= b) for b in bounds)
    assert t.buckets == (*expected, total)
    assert t.sum == pytest.approx(per_value * sum(values), rel=1e-12)


# ---- bad arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buckets", "error", "message"),
    [
        ([], ValueError, r"^buckets must hold at least 1 bound$"),
        (list(range(1, 66)), ValueError, r"^buckets must hold at most 64 bounds$"),
        (itertools.count(1), ValueError, r"^buckets must hold at most 64 bounds$"),
        ([0.1, math.inf], ValueError, r"^buckets must be finite \(\+Inf is implied\)$"),
        ([math.nan], ValueError, r"^buckets must be finite \(\+Inf is implied\)$"),
        ([0, 1], ValueError, r"^buckets must be > 0$"),
        ([-1.0], ValueError, r"^buckets must be > 0$"),
        ([1, 1.0], ValueError, r"^buckets must be strictly increasing$"),
        ([2, 1], ValueError, r"^buckets must be strictly increasing$"),
        (["0.1"], TypeError, r"^buckets must be a number of seconds, not 'str'$"),
        ([True], TypeError, r"^buckets must be a number of seconds, not 'bool'$"),
        ([None], TypeError, r"^buckets must be a number of seconds, not 'NoneType'$"),
        (0.1, TypeError, r"^buckets must be a sequence of numbers of seconds, not 'float'$"),
        ([10**400], OverflowError, r"^buckets is out of range$"),
    ],
)
def test_bad_buckets_are_refused_naming_buckets(
    buckets: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Metrics(buckets=buckets)  # type: ignore[arg-type]


def test_good_bucket_forms() -> None:
    assert Metrics(buckets=None).buckets == DEFAULT
    assert Metrics(buckets=(0.5,)).buckets == (0.5,)
    assert Metrics(buckets=[x / 10 for x in range(1, 65)]).buckets[-1] == 6.4
    assert Metrics(buckets=[1e-10, 1e300]).buckets == (1e-10, 1e300)


def test_bad_max_ops() -> None:
    with pytest.raises(ValueError, match=r"^max_ops must be >= 1$"):
        Metrics(max_ops=0)
    with pytest.raises(TypeError, match=r"^max_ops must be an int, not 'str'$"):
        Metrics(max_ops="10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^max_ops must be an int, not 'bool'$"):
        Metrics(max_ops=True)
    with pytest.raises(OverflowError, match=r"^max_ops is out of range$"):
        Metrics(max_ops=2**64)
    with pytest.raises(TypeError, match=r"^op must be a str, not 'int'$"):
        Metrics().totals(3)  # type: ignore[arg-type]
