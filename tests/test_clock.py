"""ManualClock: moves only when told to, never backwards, never wraps."""

from __future__ import annotations

import threading

import pytest
from ferrule import Cache, ManualClock

# The largest reading (2**62 ns, about 146 years), in seconds.
MAX_READING = 2**62 / 1e9


@pytest.mark.smoke
def test_starts_where_told_and_moves_forward() -> None:
    c = ManualClock(1.5)
    assert c.now() == 1.5
    assert c.advance(0.5) == 2.0
    c.set(10)
    assert c.now() == 10.0
    assert repr(c) == "ManualClock(10.0)"


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda c: c.set(0.5), ValueError, "earlier than the clock's current time"),
        (lambda c: c.advance(-1), ValueError, "a clock never goes backwards"),
        (lambda c: c.advance(float("nan")), ValueError, "finite"),
        (lambda c: c.advance(float("inf")), ValueError, "finite"),
        (lambda c: c.advance(True), TypeError, "seconds must be a number of seconds"),
        (lambda c: c.set("1"), TypeError, "seconds must be a number of seconds"),
    ],
)
def test_bad_moves_are_refused_and_change_nothing(call, exc, match) -> None:  # type: ignore[no-untyped-def]
    c = ManualClock(1.0)
    with pytest.raises(exc, match=match):
        call(c)
    assert c.now() == 1.0


def test_bad_start_is_refused() -> None:
    with pytest.raises(ValueError, match="start must be >= 0"):
        ManualClock(-1)
    with pytest.raises(ValueError, match="start is too large"):
        ManualClock(1e10)
    with pytest.raises(TypeError, match="start must be a number of seconds"):
        ManualClock("0")  # type: ignore[arg-type]


def test_never_wraps_to_a_negative_time() -> None:
    """Regression: ManualClock(4e9) advanced by 4e9 twice used to wrap below zero."""
    c = ManualClock(4e9)
    with pytest.raises(OverflowError, match="largest time"):
        c.advance(4e9)
    assert c.now() == 4e9
    c.advance(MAX_READING - 4e9 - 1e-6)
    assert c.now() == pytest.approx(MAX_READING)
    with pytest.raises(OverflowError):
        c.advance(1)
    with pytest.raises(OverflowError):
        ManualClock().set(MAX_READING * 1.01)


def test_components_stay_exact_at_the_largest_time() -> None:
    """Every accepted duration fits on top of the largest reading: a TTL still expires."""
    clock = ManualClock(4e9)
    clock.advance(MAX_READING - 4e9 - 1e-6)
    cache = Cache(4, ttl=4e9, clock=clock)
    cache["k"] = 1
    assert cache["k"] == 1


def test_concurrent_advances_are_all_counted(threads: int) -> None:
    c = ManualClock()
    per_thread = 1000

    def work() -> None:
        for _ in range(per_thread):
            c.advance(1e-9)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert round(c.now() * 1e9) == threads * per_thread
