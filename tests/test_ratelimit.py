"""RateLimiter: exact GCRA decisions on a ManualClock, keys, reclamation, waits, bad input."""

from __future__ import annotations

import _thread
import asyncio
import datetime
import enum
import gc
import math
import re
import subprocess
import sys
import threading
import time
import uuid
import weakref
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

import ferrule
import pytest
from ferrule import Decision, FerruleError, ManualClock, RateLimited, RateLimiter
from ferrule._ratelimit import Limit


def limiter(rate: float = 10.0, **kw: object) -> tuple[ManualClock, RateLimiter]:
    clock = ManualClock()
    return clock, RateLimiter(rate, clock=clock, **kw)  # type: ignore[arg-type]


# ---- exact GCRA --------------------------------------------------------------------------


@pytest.mark.smoke
def test_ten_per_second_is_exact() -> None:
    clock, rl = limiter(10)
    assert [rl.try_acquire() for _ in range(10)] == [True] * 10
    d = rl.check()
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (False, 0, 0.1, 1.0)
    clock.advance(0.1)
    assert rl.try_acquire()
    assert not rl.try_acquire()
    clock.advance(0.05)
    assert rl.check().retry_after == 0.05


def test_decision_fields_when_allowed() -> None:
    _, rl = limiter(10)
    d = rl.check("k")
    assert isinstance(d, Decision)
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (True, 9, 0.0, 0.1)
    d = rl.check("k", cost=4)
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (True, 5, 0.0, 0.5)
    assert repr(d) == "Decision(allowed=True, remaining=5, retry_after=0.0, reset_after=0.5)"
    with pytest.raises(AttributeError):
        d.allowed = False  # type: ignore[misc]


def test_refill_is_continuous_and_capped_at_burst() -> None:
    clock, rl = limiter(2, per=1.0, burst=4)
    assert rl.try_acquire("k", cost=4)
    assert rl.peek("k") == 0
    clock.advance(1.0)
    assert rl.peek("k") == 2
    clock.advance(100.0)
    assert rl.peek("k") == 4
    d = rl.check("k", cost=4)
    assert d.allowed and d.remaining == 0 and d.reset_after == 2.0


def test_denied_cost_reports_wait_for_all_tokens() -> None:
    clock, rl = limiter(1, burst=5)
    assert rl.try_acquire(cost=5)
    clock.advance(1.0)
    d = rl.check(cost=3)
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (False, 1, 2.0, 4.0)
    # A refusal consumes nothing.
    assert rl.peek() == 1


def test_defaults_and_properties() -> None:
    assert RateLimiter(10).burst == 10
    assert RateLimiter(2.5).burst == 3
    assert RateLimiter(0.5).burst == 1
    rl = RateLimiter(5, 2.0, burst=7)
    assert (rl.rate, rl.per, rl.burst) == (5.0, 2.0, 7)
    assert repr(rl) == "RateLimiter(rate=5.0, per=2.0, burst=7)"


def test_fractional_interval_rounds_up() -> None:
    # 1 s / 3 is 333_333_333.3 ns; rounding up means three refills take just over 1 s.
    clock, rl = limiter(3, burst=1)
    assert rl.try_acquire()
    clock.advance(0.333333333)
    assert not rl.try_acquire()
    clock.advance(0.000000001)
    assert rl.try_acquire()


# ---- keys --------------------------------------------------------------------------------


@pytest.mark.smoke
def test_keys_are_independent_and_compare_by_value() -> None:
    _, rl = limiter(1)
    keys = [None, "a", b"a", 1, -(2**100), ("a", 1, (None, b"x")), ()]
    assert all(rl.try_acquire(k) for k in keys)
    assert not any(rl.try_acquire(k) for k in keys)
    assert not rl.try_acquire()  # the default key is None
    assert not rl.try_acquire("".join(["a"]))
    assert not rl.try_acquire(True)  # True == 1, as in a dict
    assert not rl.try_acquire(("a", 1, (None, b"x")))
    assert rl.try_acquire(2**100)
    assert len(rl) == len(keys) + 1


def grants_like_a_dict(rl: RateLimiter, keys: list[object]) -> None:
    """With burst 1 on a frozen clock, each key is granted iff no earlier key is equal to
    it as a dict says (the first of each class); nothing else."""
    seen: dict[object, None] = {}
    for i, k in enumerate(keys):
        fresh = k not in seen
        seen[k] = None
        assert rl.try_acquire(k) is fresh, (i, k)
    assert len(rl) == len(seen)


class Color(enum.Enum):
    RED = 1
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Point(NamedTuple):
    x: object
    y: object


class Ident:
    """A user class with identity semantics."""


class Val:
    """A user class equal to anything with the same ``v`` (and to ``v`` itself)."""

    def __init__(self, v: object) -> None:
        self.v = v

    def __hash__(self) -> int:
        return hash(self.v)

    def __eq__(self, other: object) -> bool:
        return self.v == (other.v if isinstance(other, Val) else other)


class Str(str):
    """A str subclass keeping str's == and hash: equal to the plain str."""


class Loud(str):
    """A str subclass with its own hash: never the same dict key as the plain str."""

    def __hash__(self) -> int:
        return 42


def test_keys_are_any_hashable_with_dict_semantics() -> None:
    """Guards the key contract: any hashable is a key, and keys that a dict would merge
    share one bucket, whichever kind (native or Python-compared) came first. Before,
    floats, UUIDs, enum members and user classes raised TypeError, and a str subclass with
    its own __hash__ was keyed by its value."""
    nan = math.nan
    uid = uuid.UUID(int=7)
    deep: object = "x"
    for _ in range(20):
        deep = (deep,)
    keys: list[object] = [
        None, "a", b"a", 1, 1.0, True, Level.LOW, Decimal(1), Fraction(1), 1 + 0j, Val(1),
        0, False, 0.0, -0.0, Decimal("-0"),
        1.5, Fraction(3, 2), Decimal("1.5"), Val(1.5),
        2**100, float(2**100), Val(2**100), -(2**63), float(-(2**63)), 2**63, float(2**63),
        2**63 - 1, 2**61 - 1, 2**61, -1, -2, Val(-1), Val(-2), Val(2**61 - 1),
        math.inf, -math.inf, nan, nan, float("nan"),
        uid, uuid.UUID(int=7), Color.RED, Color.GREEN, "green", Level.HIGH, 2,
        ("a", 1), ("a", 1.0), ("a", True), Point("a", 1), ("a", Decimal(1)), ("a", Val(1)),
        (1, (2, (3, "x"))), (1.0, (2.0, (3, "x"))), (), Point(1, 2), (1, 2),
        frozenset({1, 2}), frozenset({2.0, 1.0}), datetime.date(2024, 1, 1),
        Str("abc"), "abc", Loud("abc"), Loud("abc"), Str("def"),
        Ident(), Ident(), Val("v"), "v", Val(b"w"), b"w",
        deep, deep, 10**5000, "\ud800", "\ud800",
    ]  # fmt: skip
    _, rl = limiter(1)
    grants_like_a_dict(rl, keys)
    # Every one of them is tracked, then reclaimed like any key.
    assert rl.sweep() == 0
    assert all(rl.peek(k) == 0 for k in keys)
    for k in keys:
        rl.reset(k)
    tracked = len(rl)
    assert rl.sweep() == tracked
    assert len(rl) == 0


@pytest.mark.parametrize(
    "v", [0, 1, -1, -2, 2**30, 2**61 - 2, 2**61 - 1, 2**61, 2**62, -(2**61), 2**63 - 1, -(2**63)]
)
@pytest.mark.parametrize("native_first", [True, False])
def test_native_int_hash_is_pythons(v: int, native_first: bool) -> None:
    """The native path hashes ints itself; a key equal to the int must hash (and so find
    its bucket) alike, at the ends of the hash modulus too."""
    _, rl = limiter(1)
    first, second = (v, Val(v)) if native_first else (Val(v), v)
    assert rl.try_acquire(first)
    assert not rl.try_acquire(second)
    if float(v) == v:
        assert not rl.try_acquire(float(v))
    assert len(rl) == 1


def test_unhashable_keys_raise_type_error() -> None:
    _, rl = limiter(1)
    with pytest.raises(TypeError, match=r"^key must be hashable, not 'list'$"):
        rl.try_acquire(["a"])
    with pytest.raises(TypeError, match=r"^key must be hashable, not 'dict'$"):
        rl.check({})
    with pytest.raises(TypeError, match=r"unhashable type: 'list'"):
        rl.peek(("a", []))
    with pytest.raises(TypeError, match=r"^key must be hashable, not 'set'$"):
        rl.reset({1})
    assert len(rl) == 0


class Boom(Exception):
    pass


class BadHash:
    def __hash__(self) -> int:
        raise Boom("hash")


class BadEq:
    """Hashes like every other BadEq; comparing two of them raises."""

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        raise Boom("eq")


def test_hash_and_eq_exceptions_propagate_and_consume_nothing() -> None:
    _, rl = limiter(2)
    with pytest.raises(Boom, match="hash"):
        rl.try_acquire(BadHash())
    with pytest.raises(Boom, match="hash"):
        rl.acquire_async(BadHash())
    first = BadEq()
    assert rl.try_acquire(first)  # no other key with its hash: nothing to compare
    assert rl.try_acquire(first)  # the same object: identity, no __eq__
    for call in (rl.try_acquire, rl.check, rl.peek, rl.reset, rl.acquire):
        with pytest.raises(Boom, match="eq"):
            call(BadEq())
    # A native key with the same hash is compared with the stored one too (as in a dict).
    with pytest.raises(Boom, match="eq"):
        rl.try_acquire(7)
    assert len(rl) == 1
    assert rl.peek(first) == 0


class Reentrant:
    """Equal to Reentrants with the same tag; every comparison uses the limiter."""

    calls = 0

    def __init__(self, rl: RateLimiter, tag: str) -> None:
        self.rl, self.tag = rl, tag

    def __hash__(self) -> int:
        return 11

    def __eq__(self, other: object) -> bool:
        Reentrant.calls += 1
        self.rl.try_acquire("side")
        self.rl.peek(("side", 1))
        self.rl.reset("side")
        self.rl.sweep()
        len(self.rl)
        return isinstance(other, Reentrant) and other.tag == self.tag


def test_eq_may_call_back_into_the_limiter() -> None:
    """Guards against deadlock by re-entrance: __eq__ runs with no lock of the limiter
    held, so it may decide, peek, reset and sweep on the same limiter."""
    clock, rl = limiter(1)
    a = Reentrant(rl, "a")
    assert rl.try_acquire(a)
    assert not rl.try_acquire(Reentrant(rl, "a"))  # compared: equal
    assert rl.try_acquire(Reentrant(rl, "b"))  # compared: not equal
    assert rl.peek(Reentrant(rl, "a")) == 0
    rl.reset(Reentrant(rl, "a"))
    assert rl.try_acquire(Reentrant(rl, "a"))
    assert Reentrant.calls > 0
    clock.advance(1.0)
    rl.sweep()
    assert len(rl) == 0


class Shifty:
    """A key whose hash changes on every call (a dict loses such keys too)."""

    n = 0

    def __hash__(self) -> int:
        Shifty.n += 1
        return Shifty.n

    def __eq__(self, other: object) -> bool:
        return self is other


def test_keys_whose_hash_changes_stay_consistent() -> None:
    clock, rl = limiter(1)
    k = Shifty()
    # Each call hashes anew, so each finds no bucket: like a dict, a new entry each time.
    assert all(rl.try_acquire(k) for _ in range(10))
    assert len(rl) == 10
    clock.advance(1.0)
    assert rl.sweep() == 10
    assert len(rl) == 0


class Breeder:
    """Hashes like every Breeder; comparing a stored Breeder with a key adds a new Breeder
    to the limiter (not from within another Breeder's comparison)."""

    busy = False

    def __init__(self, rl: RateLimiter) -> None:
        self.rl = rl

    def __hash__(self) -> int:
        return 5

    def __eq__(self, other: object) -> bool:
        if not Breeder.busy:
            Breeder.busy = True
            try:
                self.rl.try_acquire(Breeder(self.rl))
            finally:
                Breeder.busy = False
        return self is other


def test_a_lookup_that_keeps_losing_gives_up() -> None:
    """A key whose __eq__ inserts a new key of its own hash every time makes each
    insertion lose its race (the limiter would spin forever): it gives up instead."""
    _, rl = limiter(1)
    Breeder.busy = True
    rl.try_acquire(Breeder(rl))
    Breeder.busy = False
    with pytest.raises(RuntimeError, match=r"^gave up finding the key after 100 attempts"):
        rl.try_acquire(Breeder(rl))
    assert len(rl) == 101


def test_python_keys_are_reclaimed_and_released() -> None:
    """Guards memory: keys stored as Python objects leave with their buckets (sweep,
    automatic steps), and the limiter then holds no reference to them."""
    clock, rl = limiter(10)
    keys = [Ident() for _ in range(2_000)]
    refs = [weakref.ref(k) for k in keys]
    for k in keys:
        assert rl.try_acquire(k)
    assert len(rl) == 2_000
    del keys, k
    assert sum(r() is not None for r in refs) == 2_000
    clock.advance(100.0)
    for _ in range(100_000):
        rl.try_acquire("hot")
    assert len(rl) < 1_000
    assert sum(r() is not None for r in refs) < 1_000
    clock.advance(100.0)
    tracked = len(rl)
    assert rl.sweep() == tracked
    assert len(rl) == 0
    assert all(r() is None for r in refs)


def test_comparisons_leak_no_references() -> None:
    """The stored key copied out for each comparison is released again, whether the
    comparison says equal, not equal or raises."""
    _, rl = limiter(1e9, burst=10**6)
    stored = uuid.UUID(int=5)
    rival = BadEq()
    rl.try_acquire(stored)
    rl.try_acquire(rival)
    before = sys.getrefcount(stored), sys.getrefcount(rival)
    for _ in range(1_000):
        assert rl.try_acquire(uuid.UUID(int=5))  # equal, another object
        assert rl.peek(uuid.UUID(int=5)) > 0
        rl.try_acquire(stored)  # the same object: no comparison at all
        with pytest.raises(Boom):
            rl.try_acquire(BadEq())
    assert (sys.getrefcount(stored), sys.getrefcount(rival)) == before
    assert len(rl) == 2


def test_a_key_that_refers_to_its_limiter_is_collected() -> None:
    """Guards GC support: a key object holding the limiter that holds it is a cycle the
    collector must see through the limiter (__traverse__) and break (__clear__)."""

    class Owner:
        def __init__(self) -> None:
            self.rl = RateLimiter(1)
            assert self.rl.try_acquire(self)

    o = Owner()
    gone = weakref.ref(o)
    del o
    gc.collect()
    assert gone() is None


def test_a_limiter_reachable_only_from_its_key_is_collected() -> None:
    rl = RateLimiter(1)
    k = Val(rl)  # holds the limiter; hashes and compares by it (identity)
    rl.try_acquire(k)
    gone = weakref.ref(k)
    del rl, k
    gc.collect()
    assert gone() is None


def test_keys_dropped_by_the_limiter_run_their_del_outside_it() -> None:
    """A key's __del__ runs when the limiter lets it go, with no lock held: it may use
    the limiter."""
    clock, rl = limiter(1)
    seen: list[int] = []

    class Haunt:
        def __del__(self) -> None:
            seen.append(len(rl))
            rl.try_acquire("from del")

    rl.try_acquire(Haunt())
    clock.advance(1.0)
    assert rl.sweep() == 1
    assert seen == [0]
    assert len(rl) == 1


EXIT_PROGRAM = """
import threading, time, ferrule

clock = ferrule.ManualClock()
rl = ferrule.RateLimiter(1, clock=clock)

class Slow:
    def __hash__(self):
        time.sleep(0.001)
        return 1
    def __eq__(self, other):
        time.sleep(0.001)
        return False
    def __del__(self):
        time.sleep(0.001)

def loop():
    while True:
        rl.try_acquire(Slow())
        rl.check(Slow())
        clock.advance(1.0)
        rl.sweep()

for _ in range(4):
    threading.Thread(target=loop, daemon=True).start()
time.sleep(0.2)
"""


@pytest.mark.parametrize("run", range(3))
def test_daemon_threads_in_key_code_at_exit(run: int) -> None:
    """Exit safety: daemon threads inside a key's __hash__, __eq__ or __del__ (called by
    the limiter) when the process exits end it normally, with no abort. (A stored key
    copied out for a comparison and then dropped by the limiter as its last reference,
    after a concurrent sweep, used to run __del__ in a Rust frame and abort.)"""
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_PROGRAM], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "Fatal" not in proc.stderr and "panicked" not in proc.stderr, proc.stderr[-2000:]


# ---- peek, reset, len, sweep, reclamation ------------------------------------------------


def test_peek_reset_len_sweep() -> None:
    clock, rl = limiter(10)
    assert rl.peek("k") == 10
    assert len(rl) == 0  # peek inserts nothing
    rl.try_acquire("k", cost=10)
    rl.try_acquire("j")
    assert (rl.peek("k"), rl.peek("j"), len(rl)) == (0, 9, 2)
    rl.reset("k")
    assert rl.peek("k") == 10
    assert rl.sweep() == 1  # "k" is full again; "j" is not
    assert len(rl) == 1
    clock.advance(0.1)
    assert rl.sweep() == 1
    assert len(rl) == 0
    rl.reset("absent")
    assert rl.sweep() == 0


def test_idle_keys_are_reclaimed_on_writes() -> None:
    clock, rl = limiter(10)
    for i in range(50_000):
        rl.try_acquire(i)
    assert len(rl) == 50_000
    clock.advance(100.0)
    for i in range(50_000, 100_000):
        rl.try_acquire(i)
    assert len(rl) < 60_000
    clock.advance(100.0)
    tracked = len(rl)
    assert rl.sweep() == tracked
    assert len(rl) == 0


def test_hot_key_traffic_reclaims_other_idle_keys() -> None:
    clock, rl = limiter(1e9)
    for i in range(2_000):
        rl.try_acquire(("user", i))
    clock.advance(10.0)
    for _ in range(100_000):
        rl.try_acquire("hot")
    # Every 64th decision runs a bounded reclaim step.
    assert len(rl) < 2_000


def test_try_acquire_answers_every_shape_of_call_as_its_signature_says() -> None:
    # `try_acquire(key)` with a tracked exact str key is decided in front of the general
    # method; every other call goes to it. Both must agree, and count alike.
    import inspect

    assert str(inspect.signature(RateLimiter.try_acquire)) == "(self, /, key=None, cost=1)"
    assert RateLimiter.try_acquire.__doc__
    assert RateLimiter.try_acquire.__doc__.startswith("Take `cost` tokens")
    clock, rl = limiter(1, burst=3)
    assert rl.try_acquire("k") is True  # untracked: the general path tracks it
    assert rl.try_acquire("k") is True and rl.try_acquire("k") is True  # tracked
    assert rl.try_acquire("k") is False
    assert rl.try_acquire(key="k") is False and rl.try_acquire("k", 1) is False
    assert rl.try_acquire() is True and rl.try_acquire(None) is True
    assert rl.try_acquire(7) is True and rl.try_acquire(7) is True
    clock.advance(1.0)
    assert rl.try_acquire("k") is True and rl.try_acquire("k") is False
    st = rl.stats()
    assert (st.allowed, st.denied) == (8, 4)
    assert RateLimiter.try_acquire(rl, "other") is True
    with pytest.raises(ValueError, match="cost"):
        rl.try_acquire("k", 4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        rl.try_acquire("k", nope=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="takes from 0 to 2 positional arguments but 3"):
        rl.try_acquire("k", 1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="doesn't apply to a 'object' object"):
        RateLimiter.try_acquire(object(), "k")  # type: ignore[arg-type]


def test_try_acquire_of_tracked_str_keys_on_several_limits_or_with_a_bus() -> None:
    # Limiters whose decisions do more than one bucket's CAS take the general path.
    clock = ManualClock()
    two = RateLimiter.parse("2/second; 3/minute", clock=clock)
    assert [two.try_acquire("k") for _ in range(3)] == [True, True, False]
    clock.advance(1.0)
    assert [two.try_acquire("k") for _ in range(2)] == [True, False]
    bus = ferrule.SignalBus()
    sub = bus.subscribe("ratelimit.*.denied")
    rl = RateLimiter(1, burst=1, clock=clock, bus=bus, name="api", deny_threshold=1)
    assert rl.try_acquire("k") is True and rl.try_acquire("k") is False
    sig = sub.get(timeout=5.0)
    assert sig.data["denied"] == 1 and sig.data["keys"] == ["'k'"]


def test_try_acquire_of_a_hot_str_key_releases_reclaimed_keys_at_once() -> None:
    # The reclaim step a decision runs every 64th time drops the key objects it removes
    # then, not later.
    class Key:
        def __init__(self, i: int) -> None:
            self.i = i

        def __hash__(self) -> int:
            return self.i

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Key) and other.i == self.i

    clock, rl = limiter(1e9)
    keys = [Key(i) for i in range(500)]
    refs = [weakref.ref(k) for k in keys]
    for k in keys:
        rl.try_acquire(k)
    del keys, k
    clock.advance(10.0)
    rl.try_acquire("hot")
    for _ in range(20_000):
        rl.try_acquire("hot")
    alive = sum(r() is not None for r in refs)
    assert len(rl) < 500 and alive == len(rl) - 1


def test_try_acquire_keeps_reference_counts() -> None:
    _, rl = limiter(1e9)
    key = "a key of its own"
    rl.try_acquire(key)
    before = (sys.getrefcount(key), sys.getrefcount(True), sys.getrefcount(False))
    for _ in range(1000):
        rl.try_acquire(key)
    after = (sys.getrefcount(key), sys.getrefcount(True), sys.getrefcount(False))
    assert after[0] == before[0]
    if sys.version_info < (3, 12):  # immortal since 3.12
        assert after[1:] == before[1:]


# ---- acquire -----------------------------------------------------------------------------


def test_acquire_fails_at_once_when_tokens_cannot_come_in_time() -> None:
    _, rl = limiter(1)
    assert rl.acquire("k")
    t0 = time.monotonic()
    assert rl.acquire("k", timeout=0.5) is False
    assert rl.acquire("k", timeout=0) is False
    assert time.monotonic() - t0 < 0.1


def test_acquire_waits_for_tokens() -> None:
    rl = RateLimiter(50, burst=1)
    assert rl.acquire()
    assert rl.acquire(timeout=1.0)  # waits ~20 ms


def test_acquire_sees_a_manual_clock_advanced_by_another_thread() -> None:
    clock, rl = limiter(1)
    rl.try_acquire()
    threading.Timer(0.05, clock.advance, args=(1.0,)).start()
    assert rl.acquire(timeout=5.0)


def test_acquire_releases_the_gil() -> None:
    rl = RateLimiter(5, burst=1)
    rl.try_acquire()
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        deadline = time.monotonic() + 5.0
        while ticks == 0 and time.monotonic() < deadline:  # the spinner is running
            time.sleep(0.001)
        before = ticks
        assert rl.acquire()  # ~200 ms, GIL released
        during = ticks - before
    finally:
        stop.set()
        t.join()
    assert during > 1_000


def test_acquire_is_interruptible() -> None:
    _, rl = limiter(1)
    rl.try_acquire()
    # The manual clock never moves: without a signal this would wait forever.
    timer = threading.Timer(0.1, _thread.interrupt_main)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        rl.acquire(timeout=None)
    assert time.monotonic() - t0 < 1.0
    timer.join()


# ---- acquire_async -----------------------------------------------------------------------


def test_acquire_async_waits_without_threads() -> None:
    async def main() -> list[bool]:
        rl = RateLimiter(100, burst=1)
        threads_before = threading.active_count()
        tasks = [asyncio.ensure_future(rl.acquire_async("k")) for _ in range(5)]
        await asyncio.sleep(0.01)
        assert threading.active_count() == threads_before
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(main()) == [True] * 5


def test_acquire_async_timeout_and_manual_clock() -> None:
    async def main() -> tuple[bool, bool, bool]:
        clock, rl = limiter(1)
        first = await rl.acquire_async()
        fast_fail = await rl.acquire_async(timeout=0.5)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, clock.advance, 1.0)
        waited = await rl.acquire_async(timeout=5.0)
        return first, fast_fail, waited

    assert asyncio.run(main()) == (True, False, True)


def test_acquire_async_checks_arguments_eagerly() -> None:
    _, rl = limiter(1)
    with pytest.raises(ValueError, match=r"^cost must be <= burst \(1\)"):
        rl.acquire_async(cost=2)
    with pytest.raises(TypeError, match=r"^key must be hashable, not 'list'$"):
        rl.acquire_async([1.5])
    with pytest.raises(ValueError, match=r"^timeout must be >= 0$"):
        rl.acquire_async(timeout=-1)


# ---- limit: with, async with, decorators -------------------------------------------------


def test_limit_with_block_spends_tokens() -> None:
    _, rl = limiter(10)
    lim = rl.limit("k", cost=4)
    assert isinstance(lim, Limit)
    with lim as got:
        assert got is None
        assert rl.peek("k") == 6
    assert rl.peek("k") == 6  # leaving gives nothing back
    three = rl.limit("k", cost=3)
    with three, three:  # no per-entry state: nested entries of one object
        pass
    assert rl.peek("k") == 0
    with rl.limit():  # the default key
        pass
    assert rl.peek() == 9


def test_limit_raises_rate_limited_with_the_decision_and_takes_nothing() -> None:
    _, rl = limiter(1, burst=10)
    assert rl.try_acquire("k", cost=8)
    ran = False
    t0 = time.monotonic()
    for timeout in (0, 0.5):  # refused at once: the tokens cannot come in time
        with pytest.raises(RateLimited) as info, rl.limit("k", cost=3, timeout=timeout):
            ran = True
        e = info.value
        assert isinstance(e, FerruleError)
        assert str(e) == "rate limit exceeded for key 'k': retry after 1.0 s"
        d = e.decision
        assert isinstance(d, Decision)
        assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (False, 2, 1.0, 8.0)
    assert time.monotonic() - t0 < 0.4
    assert not ran
    assert rl.peek("k") == 2  # the refusals took nothing
    with rl.limit("k", cost=2, timeout=0):
        pass
    assert rl.peek("k") == 0


def test_limit_waits_for_a_manual_clock_advanced_by_another_thread() -> None:
    clock, rl = limiter(1)
    rl.try_acquire("k")
    entered = threading.Event()

    def worker() -> None:
        with rl.limit("k"):  # timeout None: waits as long as needed
            entered.set()

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert not entered.wait(0.1)  # the clock is frozen: it cannot have entered
        clock.advance(1.0)
        assert entered.wait(5.0)
    finally:
        if not entered.is_set():  # let a failing test's thread finish
            clock.advance(1.0)
        t.join()
    assert rl.peek("k") == 0


def test_limit_with_block_is_interruptible() -> None:
    _, rl = limiter(1)
    rl.try_acquire()
    timer = threading.Timer(0.1, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt), rl.limit():
        pytest.fail("entered a block whose tokens never come")
    timer.join()


def test_limit_async_with() -> None:
    async def main() -> None:
        clock, rl = limiter(1, burst=2)
        async with rl.limit("k"):
            assert rl.peek("k") == 1
        async with rl.limit("k", timeout=0):
            pass
        with pytest.raises(RateLimited) as info:
            async with rl.limit("k", timeout=0.5):
                pytest.fail("refused block ran")
        assert info.value.decision.retry_after == 1.0
        assert rl.peek("k") == 0
        loop = asyncio.get_running_loop()
        loop.call_soon(clock.advance, 1.0)  # after the waiter's first refusal
        async with rl.limit("k", timeout=5.0):
            pass
        assert rl.peek("k") == 0

    asyncio.run(main())


def test_a_cancelled_async_with_wait_takes_nothing() -> None:
    async def main() -> None:
        clock, rl = limiter(1, burst=2)
        assert rl.try_acquire("k", cost=2)
        entered = False

        async def waiter() -> None:
            nonlocal entered
            async with rl.limit("k", cost=2):
                entered = True

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)  # one step: the waiter was refused and sleeps
        assert not task.done()
        clock.advance(1.0)  # one token back; the waiter wants two and is still asleep
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not entered
        assert rl.peek("k") == 1
        clock.advance(1.0)
        assert rl.peek("k") == 2

    asyncio.run(main())


def test_limit_decorates_sync_and_async_functions() -> None:
    _, rl = limiter(1, burst=3)
    calls: list[object] = []

    @rl.limit("k", timeout=0)
    def work(x: int, *, y: int = 0) -> int:
        """Doc."""
        calls.append(x)
        return x + y

    @rl.limit("k", cost=2, timeout=0)
    async def awork(x: int) -> int:
        calls.append(x)
        return x

    assert work.__name__ == "work" and work.__doc__ == "Doc."
    assert awork.__name__ == "awork" and asyncio.iscoroutinefunction(awork)
    assert work(1, y=2) == 3
    assert rl.peek("k") == 2
    assert asyncio.run(awork(5)) == 5
    assert rl.peek("k") == 0
    with pytest.raises(RateLimited, match=r"^rate limit exceeded for key 'k': retry after 1\.0 s$"):
        work(2)
    with pytest.raises(RateLimited) as info:
        asyncio.run(awork(6))
    assert info.value.decision.retry_after == 2.0
    assert calls == [1, 5]  # a refused call never runs


def test_a_callable_key_is_resolved_per_call_in_a_decorator() -> None:
    _, rl = limiter(1, burst=2)
    seen: list[tuple[object, ...]] = []

    def key(user: str, *args: object, **kwargs: object) -> tuple[str, str]:
        seen.append((user, *args, *kwargs.items()))
        return ("user", user)

    @rl.limit(key, timeout=0)
    def fetch(user: str, page: int = 0, *, q: str = "") -> str:
        return f"{user}:{page}:{q}"

    @rl.limit(key, timeout=0)
    async def afetch(user: str) -> str:
        return user

    assert fetch("ann", 2, q="x") == "ann:2:x"
    assert seen == [("ann", 2, ("q", "x"))]
    assert asyncio.run(afetch("ann")) == "ann"
    assert asyncio.run(afetch("bob")) == "bob"
    assert rl.peek(("user", "ann")) == 0 and rl.peek(("user", "bob")) == 1
    with pytest.raises(RateLimited) as info:
        fetch("ann")
    assert str(info.value).startswith("rate limit exceeded for key ('user', 'ann'): ")
    assert rl.peek(key) == 2  # the function itself was never a key


def test_a_callable_key_is_the_key_itself_in_a_with_block() -> None:
    _, rl = limiter(1, burst=2)

    def key() -> str:
        raise AssertionError("a with block does not call its key")

    with rl.limit(key):
        pass
    assert rl.peek(key) == 1


def test_a_failing_key_function_propagates_and_takes_nothing() -> None:
    _, rl = limiter(10)
    called = False

    def key(x: int) -> object:
        if x == 0:
            raise ZeroDivisionError("no key")
        return [x]  # unhashable

    @rl.limit(key)
    def work(x: int) -> None:
        nonlocal called
        called = True

    with pytest.raises(ZeroDivisionError, match=r"^no key$"):
        work(0)
    with pytest.raises(TypeError, match=r"^key must be hashable, not 'list'$"):
        work(1)
    assert not called and len(rl) == 0


def test_limit_checks_its_arguments_at_the_call() -> None:
    _, rl = limiter(10)
    with pytest.raises(ValueError, match=r"^cost must be >= 1$"):
        rl.limit("k", 0)
    with pytest.raises(
        ValueError, match=r"^cost must be <= burst \(10\), got 11: it could never be granted$"
    ):
        rl.limit("k", cost=11)
    with pytest.raises(TypeError, match=r"^cost must be an int, not 'float'$"):
        rl.limit("k", 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^cost must be an int, not 'bool'$"):
        rl.limit("k", True)
    with pytest.raises(OverflowError, match=r"^cost is out of range$"):
        rl.limit("k", 2**70)
    with pytest.raises(ValueError, match=r"^timeout must be >= 0$"):
        rl.limit("k", timeout=-1)
    with pytest.raises(ValueError, match=r"^timeout must be a finite number of seconds$"):
        rl.limit("k", timeout=math.inf)
    with pytest.raises(TypeError, match=r"^timeout must be a number of seconds, not 'str'$"):
        rl.limit("k", timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^key must be hashable, not 'list'$"):
        rl.limit([1])
    with pytest.raises(TypeError, match=r"^func must be callable, not 'int'$"):
        rl.limit("k")(3)  # type: ignore[arg-type]

    class CallableUnhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self) -> str:
            return "k"

    rl.limit(CallableUnhashable())  # a decorator's key function need not be hashable
    assert len(rl) == 0


def test_a_refusal_that_finds_the_tokens_back_runs_the_block() -> None:
    """acquire gave up, but the check that reads the refusal was granted (the tokens came
    back in between): the block runs on those tokens instead of raising."""

    class Racy:
        def __init__(self) -> None:
            self.checks = 0

        def acquire(self, key: object, cost: int = 1, *, timeout: float | None = None) -> bool:
            return False

        def check(self, key: object, cost: int = 1) -> Decision:
            self.checks += 1
            return Decision(True, 0, 0.0, 1.0)

    racy = Racy()
    ran = False
    with Limit(racy, "k", 1, 0.0):  # type: ignore[arg-type]
        ran = True
    assert ran and racy.checks == 1


def test_decisions_stay_exact_while_sweep_runs_without_the_gil() -> None:
    """`sweep` removes keys with the GIL released while other threads decide, insert and
    reset keys (on builds with the GIL decisions read the key table without its lock
    unless a sweep is running): no grant is lost or made twice."""
    burst = 50
    _, rl = limiter(1, burst=burst)
    keys = [f"k{i}" for i in range(64)]
    granted = dict.fromkeys(keys, 0)
    stop = threading.Event()

    def sweeper() -> None:
        while not stop.is_set():
            rl.sweep()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            k = f"churn{n % 5000}"
            rl.try_acquire(k)
            rl.reset(k)  # full again: the next sweep removes it
            n += 1

    def decide(part: list[str]) -> None:
        for _ in range(2 * burst):
            for k in part:
                if rl.try_acquire(k):
                    granted[k] += 1

    helpers = [threading.Thread(target=sweeper), threading.Thread(target=churn)]
    deciders = [threading.Thread(target=decide, args=(keys[i::2],)) for i in range(2)]
    for t in helpers + deciders:
        t.start()
    for t in deciders:
        t.join()
    stop.set()
    for t in helpers:
        t.join()
    assert granted == dict.fromkeys(keys, burst)
    assert all(rl.peek(k) == 0 for k in keys)


def test_threads_share_one_limit(threads: int) -> None:
    _, rl = limiter(1, burst=threads)
    lim = rl.limit("shared", timeout=0)
    barrier = threading.Barrier(2 * threads)
    entered: list[int] = []
    refused: list[Decision] = []

    def work(i: int) -> None:
        barrier.wait()
        try:
            with lim:
                entered.append(i)
        except RateLimited as e:
            refused.append(e.decision)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(2 * threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(entered) == threads and len(refused) == threads
    assert all(not d.allowed and d.remaining == 0 for d in refused)
    assert rl.peek("shared") == 0


def test_threads_wait_in_one_decorated_function(threads: int) -> None:
    rl = RateLimiter(2000, burst=1)
    done: list[int] = []

    @rl.limit("k")
    def work(i: int) -> None:
        done.append(i)

    ts = [threading.Thread(target=lambda i=i: [work(i) for _ in range(3)]) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(done) == sorted(list(range(threads)) * 3)


def test_tasks_share_one_limit() -> None:
    async def main() -> tuple[int, int, int]:
        clock, rl = limiter(1, burst=5)
        lim = rl.limit("shared", timeout=0)

        async def one() -> bool:
            try:
                async with lim:
                    return True
            except RateLimited:
                return False

        got = await asyncio.gather(*(one() for _ in range(12)))

        @rl.limit("waited")
        async def waited() -> None:
            pass

        tasks = [asyncio.ensure_future(waited()) for _ in range(7)]
        await asyncio.sleep(0)
        clock.advance(2.0)  # five at once, the other two once the clock moved
        await asyncio.gather(*tasks)
        return sum(got), len(got) - sum(got), rl.peek("waited")

    assert asyncio.run(main()) == (5, 7, 0)


# ---- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "msg"),
    [
        (("10",), {}, TypeError, "rate must be a number, not 'str'"),
        ((True,), {}, TypeError, "rate must be a number, not 'bool'"),
        ((0,), {}, ValueError, "rate must be > 0"),
        ((-1.5,), {}, ValueError, "rate must be > 0"),
        ((math.nan,), {}, ValueError, "rate must be a finite number"),
        ((math.inf,), {}, ValueError, "rate must be a finite number"),
        ((1, 0), {}, ValueError, "per must be > 0"),
        ((1, -1), {}, ValueError, "per must be > 0"),
        ((1, math.nan), {}, ValueError, "per must be a finite number of seconds"),
        ((1, "1"), {}, TypeError, "per must be a number of seconds, not 'str'"),
        ((1, False), {}, TypeError, "per must be a number of seconds, not 'bool'"),
        ((1,), {"burst": 0}, ValueError, "burst must be >= 1"),
        ((1,), {"burst": -3}, ValueError, "burst must be >= 1"),
        ((1,), {"burst": 1.5}, TypeError, "burst must be an int, not 'float'"),
        ((1,), {"burst": True}, TypeError, "burst must be an int, not 'bool'"),
        ((1,), {"burst": 2**62}, ValueError, "burst is out of range: burst * per / rate must"),
        ((1e30,), {}, ValueError, "rate is out of range: burst * per / rate must"),
        ((1e-12,), {}, ValueError, "rate is out of range: burst * per / rate must"),
        ((1,), {"clock": 3}, TypeError, "clock must be a ferrule.ManualClock or None, not 'int'"),
        ((10**400,), {}, OverflowError, "rate is out of range"),
        ((1, 10**400), {}, OverflowError, "per is out of range"),
        ((1, 2**70), {}, ValueError, "per is too large"),
        ((1, math.inf), {}, ValueError, "per must be a finite number of seconds"),
        ((2**70,), {}, ValueError, "rate is out of range: burst * per / rate must"),
        ((1,), {"burst": 2**70}, OverflowError, "burst is out of range"),
        ((5e-324,), {"burst": 1}, ValueError, "rate is out of range: burst * per / rate must"),
    ],
)
def test_bad_constructor_arguments(
    args: tuple[object, ...], kwargs: dict[str, object], exc: type[Exception], msg: str
) -> None:
    with pytest.raises(exc) as info:
        RateLimiter(*args, **kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(msg)


@pytest.mark.parametrize("method", ["try_acquire", "check", "acquire"])
def test_bad_cost(method: str) -> None:
    rl = RateLimiter(10)
    call = getattr(rl, method)
    with pytest.raises(ValueError, match=r"^cost must be >= 1$"):
        call("k", 0)
    with pytest.raises(ValueError, match=r"^cost must be >= 1$"):
        call("k", cost=-1)
    with pytest.raises(
        ValueError, match=r"^cost must be <= burst \(10\), got 11: it could never be granted$"
    ):
        call("k", 11)
    with pytest.raises(TypeError, match=r"^cost must be an int, not 'float'$"):
        call("k", 1.0)
    with pytest.raises(TypeError, match=r"^cost must be an int, not 'bool'$"):
        call("k", True)
    with pytest.raises(OverflowError, match=r"^cost is out of range$"):
        call("k", 2**70)
    with pytest.raises(TypeError, match=r"^cost must be an int, not 'float'$"):
        call("k", math.nan)
    assert len(rl) == 0


def test_bad_timeout() -> None:
    rl = RateLimiter(10)
    with pytest.raises(ValueError, match=r"^timeout must be >= 0$"):
        rl.acquire(timeout=-0.1)
    with pytest.raises(ValueError, match=r"^timeout must be a finite number of seconds$"):
        rl.acquire(timeout=math.nan)
    with pytest.raises(TypeError, match=r"^timeout must be a number of seconds, not 'str'$"):
        rl.acquire(timeout="1")
    with pytest.raises(ValueError, match=r"^timeout is too large$"):
        rl.acquire(timeout=2**70)
    with pytest.raises(ValueError, match=r"^timeout must be a finite number of seconds$"):
        rl.acquire_async(timeout=math.inf)


@pytest.mark.parametrize(
    ("args", "exc", "msg"),
    [
        ((True, -1, 0.0, 0.0), ValueError, "remaining must be >= 0"),
        ((True, 2**70, 0.0, 0.0), OverflowError, "remaining is out of range"),
        ((True, 1.0, 0.0, 0.0), TypeError, "remaining must be an int, not 'float'"),
        ((True, 1, "0", 0.0), TypeError, "retry_after must be a number of seconds, not 'str'"),
        ((True, 1, math.nan, 0.0), ValueError, "retry_after must be a finite number of seconds"),
        ((True, 1, 0.0, math.inf), ValueError, "reset_after must be a finite number of seconds"),
        ((True, 1, -0.5, 0.0), ValueError, "retry_after must be >= 0"),
        ((True, 1, 0.0, -1), ValueError, "reset_after must be >= 0"),
    ],
)
def test_decision_rejects_bad_fields(
    args: tuple[object, ...], exc: type[Exception], msg: str
) -> None:
    """Guards the house rule for Decision's constructor: a bad field raises an error naming
    it (before, -1 and 2**70 gave an unnamed OverflowError; NaN, inf and negative waits
    were accepted)."""
    with pytest.raises(exc, match=f"^{re.escape(msg)}$"):
        Decision(*args)  # type: ignore[arg-type]
    assert Decision(False, 0, 5e9, 5e9).retry_after == 5e9


# ---- the ends of time --------------------------------------------------------------------

# A ManualClock's largest reading is 2**62 ns; a step is at most 4e9 s. From 4e9 s, this
# step lands exactly on the end.
LAST_STEP = (2**62 - 4 * 10**18) / 1e9


def to_the_end(clock: ManualClock) -> None:
    """Moves the clock (at 0 or at 4e9 s) to its largest reading, exactly."""
    if clock.now() == 0.0:
        clock.advance(4e9)
    assert clock.now() == 4e9
    clock.advance(LAST_STEP)
    with pytest.raises(OverflowError):
        clock.advance(1e-9)


@pytest.mark.parametrize("start", [0.0, 4e9])
def test_a_limiter_driven_to_the_largest_clock_reading_decides_exactly(start: float) -> None:
    """Nothing overflows at the end of a ManualClock's range: a limiter made early and
    driven to the end decides exactly and reports exact waits."""
    clock = ManualClock(start)
    rl = RateLimiter(10, clock=clock)
    assert rl.try_acquire("k", 10)
    assert rl.try_acquire(Val("j"), 10)
    to_the_end(clock)
    assert rl.peek("k") == 10
    d = rl.check("k", 10)
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (True, 0, 0.0, 1.0)
    d = rl.check("k")
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (False, 0, 0.1, 1.0)
    # Time no longer moves: the bucket never refills, and acquire says so at once.
    assert rl.acquire("k", timeout=0.5) is False
    # Val("j") is full again, "k" is not. The periodic reclaim (every so many decisions
    # of this thread, whatever limiter made them) may have dropped "j" already.
    before = len(rl)
    assert before - rl.sweep() == 1 == len(rl)
    assert rl.peek("k") == 0
    rl.reset("k")
    rl.sweep()
    assert len(rl) == 0


def test_a_limiter_made_at_the_largest_clock_reading() -> None:
    clock = ManualClock(4e9)
    to_the_end(clock)
    rl = RateLimiter(2, per=4e9, burst=2, clock=clock)  # the largest window: ~253 years
    assert rl.try_acquire(cost=2)
    d = rl.check(cost=2)
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (False, 0, 4e9, 4e9)
    assert rl.peek() == 0
    assert rl.acquire(timeout=1e9) is False


def test_the_largest_window_driven_to_the_largest_time() -> None:
    """A bucket granted at the end of time with the largest window holds tat = 2**63 ns:
    the sums stay below 2**64 and the waits are what the arithmetic says."""
    clock = ManualClock(4e9)
    rl = RateLimiter(2, per=4e9, burst=2, clock=clock)
    to_the_end(clock)  # ~20 years later: one token back... of two, each 2e9 s
    d = rl.check(cost=2)
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (True, 0, 0.0, 4e9)
    d = rl.check()
    assert (d.allowed, d.remaining, d.retry_after, d.reset_after) == (False, 0, 2e9, 4e9)


def test_many_distinct_keys_of_every_kind_stay_distinct() -> None:
    _, rl = limiter(1)
    keys: list[object] = []
    for i in range(300):
        keys += [i, -i - 1, str(i), str(i).encode(), (i,), (str(i), i), 2**64 + i]
    assert all(rl.try_acquire(k) for k in keys)
    assert len(rl) == len(keys)
    assert not any(rl.try_acquire(k) for k in keys)


# -- several limits per key ------------------------------------------------------------

BOTH = "give rate (with per and burst) or limits, not both"
TUPLE = "a (rate, per) or (rate, per, burst) tuple"


@pytest.mark.parametrize(
    ("spec", "limits"),
    [
        ("10/second", ((10.0, 1.0, 10),)),
        ("10 per second", ((10.0, 1.0, 10),)),
        ("10 PER Second", ((10.0, 1.0, 10),)),
        ("  10 / seconds  ", ((10.0, 1.0, 10),)),
        ("100/5 minutes", ((100.0, 300.0, 100),)),
        ("100/5minutes", ((100.0, 300.0, 100),)),
        ("100 per 5 minutes", ((100.0, 300.0, 100),)),
        ("1000 per day", ((1000.0, 86400.0, 1000),)),
        ("3/2 hours", ((3.0, 7200.0, 3),)),
        ("1/minute", ((1.0, 60.0, 1),)),
        ("10/second;100/minute", ((10.0, 1.0, 10), (100.0, 60.0, 100))),
        (
            "10/second, 100 per minute, 1/day",
            ((10.0, 1.0, 10), (100.0, 60.0, 100), (1.0, 86400.0, 1)),
        ),
        ("10/second;", ((10.0, 1.0, 10),)),
    ],
)
def test_parse_reads_the_limits_notation(spec: str, limits: tuple[object, ...]) -> None:
    rl = RateLimiter.parse(spec)
    assert rl.limits == limits
    assert (rl.rate, rl.per, rl.burst) == limits[0]


@pytest.mark.parametrize(
    ("spec", "exc", "msg"),
    [
        ("", ValueError, "spec holds no limit"),
        (" ; , ", ValueError, "spec holds no limit"),
        ("10", ValueError, "spec item '10' is not '<amount>/<unit>' or '<amount> per <unit>'"),
        ("10 seconds", ValueError, "spec item '10 seconds' is not '<amount>/<unit>'"),
        ("10 pr second", ValueError, "spec item '10 pr second' is not '<amount>/<unit>'"),
        ("10 persecond", ValueError, "spec item '10 persecond' is not '<amount>/<unit>'"),
        ("10/", ValueError, "spec item '10/' is not '<amount>/<unit>'"),
        ("/second", ValueError, "spec item '/second' is not '<amount>/<unit>'"),
        ("10/5", ValueError, "spec item '10/5' is not '<amount>/<unit>'"),
        (
            "10/fortnight",
            ValueError,
            "spec item '10/fortnight': unknown unit 'fortnight' (second, minute, hour",
        ),
        ("10/month", ValueError, "spec item '10/month': unknown unit 'month'"),
        ("10/s", ValueError, "spec item '10/s': unknown unit 's'"),
        ("0/second", ValueError, "spec item '0/second': '0' is not a whole number >= 1"),
        ("-1/second", ValueError, "spec item '-1/second': '-1' is not a whole number >= 1"),
        ("1.5/second", ValueError, "spec item '1.5/second': '1.5' is not a whole number >= 1"),
        ("x per day", ValueError, "spec item 'x per day': 'x' is not a whole number >= 1"),
        ("10/0 seconds", ValueError, "spec item '10/0 seconds': '0' is not a whole number >= 1"),
        ("10/second;10/eon", ValueError, "spec item '10/eon': unknown unit 'eon'"),
        (";".join(["1/second"] * 17), ValueError, "spec holds 17 limits; at most 16"),
        (b"10/second", TypeError, "spec must be a str, not 'bytes'"),
        (10, TypeError, "spec must be a str, not 'int'"),
    ],
)
def test_parse_refuses_bad_specs_naming_what_is_wrong(
    spec: object, exc: type[Exception], msg: str
) -> None:
    with pytest.raises(exc) as info:
        RateLimiter.parse(spec)  # type: ignore[arg-type]
    assert str(info.value).startswith(msg), str(info.value)


def test_limits_pairs_take_the_default_burst_and_one_limit_is_a_plain_limiter() -> None:
    rl = RateLimiter(limits=[(10, 1.0), (100, 60.0, 20)])
    assert rl.limits == ((10.0, 1.0, 10), (100.0, 60.0, 20))
    assert (rl.rate, rl.per, rl.burst) == (10.0, 1.0, 10)
    assert repr(rl) == "RateLimiter(limits=[(10.0, 1.0, 10), (100.0, 60.0, 20)])"
    assert eval(repr(rl)).limits == rl.limits
    one = RateLimiter(limits=iter([(2.5, 3.0, None)]))
    assert repr(one) == "RateLimiter(rate=2.5, per=3.0, burst=3)"
    assert one.limits == ((2.5, 3.0, 3),) == RateLimiter(2.5, 3.0).limits
    assert repr(RateLimiter.parse("10/second")) == repr(RateLimiter(10))


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({}, TypeError, "give rate (with per and burst) or limits"),
        ({"rate": 1, "limits": [(1, 1)]}, TypeError, BOTH),
        ({"per": 1.0, "limits": [(1, 1)]}, TypeError, BOTH),
        ({"burst": 2, "limits": [(1, 1)]}, TypeError, BOTH),
        ({"limits": []}, ValueError, "limits must hold at least one limit"),
        ({"limits": 3}, TypeError, "limits must be an iterable of tuples, not 'int'"),
        (
            {"limits": "10/second"},
            TypeError,
            "limits must be an iterable of (rate, per[, burst]) tuples",
        ),
        ({"limits": [[1, 1]]}, TypeError, "limits[0] must be " + TUPLE + ", not 'list'"),
        (
            {"limits": [(1, 1), (1,)]},
            TypeError,
            "limits[1] must be " + TUPLE + ", not a tuple of 1",
        ),
        (
            {"limits": [(1, 1, 1, 1)]},
            TypeError,
            "limits[0] must be " + TUPLE + ", not a tuple of 4",
        ),
        ({"limits": [(1, 1), (0, 1)]}, ValueError, "limits[1]: rate must be > 0"),
        ({"limits": [(1, 0)]}, ValueError, "limits[0]: per must be > 0"),
        (
            {"limits": [(1, "1")]},
            TypeError,
            "limits[0]: per must be a number of seconds, not 'str'",
        ),
        ({"limits": [(1, 1, 0)]}, ValueError, "limits[0]: burst must be >= 1"),
        ({"limits": [(1, 1), (1, 1, 2**62)]}, ValueError, "limits[1]: burst is out of range"),
        ({"limits": [(1, 1)] * 17}, ValueError, "limits must hold at most 16 limits"),
    ],
)
def test_bad_limits_arguments(kwargs: dict[str, object], exc: type[Exception], msg: str) -> None:
    with pytest.raises(exc) as info:
        RateLimiter(**kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(msg), str(info.value)


def test_every_window_holds_and_a_refusal_takes_from_none() -> None:
    clock = ManualClock()
    rl = RateLimiter.parse("2/second; 3 per 10 seconds", clock=clock)
    assert [rl.try_acquire("k") for _ in range(3)] == [True, True, False]
    d = rl.check("k")
    # The 2/s window needs 0.5 s; the 3/10 s one has a token left.
    assert (d.allowed, d.remaining, d.retry_after) == (False, 0, 0.5)
    assert d.reset_after == pytest.approx(20 / 3)
    clock.advance(1.0)
    d = rl.check("k")
    assert (d.allowed, d.remaining, d.retry_after) == (True, 0, 0.0)
    # Now the 3/10 s window refuses; the 2/s one had 1 left and still has it.
    d = rl.check("k")
    assert (d.allowed, d.remaining) == (False, 0)
    assert d.retry_after == pytest.approx(10 / 3 - 1, abs=1e-8)
    clock.advance(d.retry_after)
    assert rl.try_acquire("k")


def test_cost_applies_to_every_window_and_is_bounded_by_the_smallest_burst() -> None:
    clock = ManualClock()
    rl = RateLimiter(limits=[(10, 1.0, 8), (100, 60.0, 5)], clock=clock)
    assert rl.burst == 8
    d = rl.check("k", 4)
    assert (d.allowed, d.remaining) == (True, 1)  # the 5-token window
    assert not rl.try_acquire("k", 2)
    assert rl.peek("k") == 1
    for method in ("try_acquire", "check", "acquire", "acquire_async", "limit"):
        with pytest.raises(ValueError, match=r"^cost must be <= burst \(5\), got 6"):
            getattr(rl, method)("k", 6)


def test_several_limits_work_with_every_method_and_key_kind() -> None:
    clock = ManualClock()
    rl = RateLimiter(limits=[(1, 1.0, 2), (3, 60.0)], clock=clock)
    for key in ("s", 1, b"b", ("t", 2), None, uuid.UUID(int=5), 1.5):
        assert rl.acquire(key, 2, timeout=0)
        assert not rl.acquire(key, timeout=0.0)
        assert rl.peek(key) == 0
        rl.reset(key)
        assert rl.peek(key) == 2
        assert asyncio.run(rl.acquire_async(key))
        with rl.limit(key):
            pass
        with pytest.raises(RateLimited) as info, rl.limit(key, timeout=0):
            pass
        assert info.value.decision.retry_after == 1.0
    assert len(rl) == 7


def test_a_key_with_several_limits_is_idle_only_when_every_window_is_full() -> None:
    clock = ManualClock()
    rl = RateLimiter(limits=[(10, 1.0), (5, 100.0)], clock=clock)
    rl.try_acquire("k")
    rl.try_acquire(uuid.UUID(int=1))
    clock.advance(1.0)  # the first window is full again, the second is not
    assert rl.sweep() == 0
    assert len(rl) == 2
    clock.advance(19.0)
    assert rl.sweep() == 2
    assert len(rl) == 0


def test_a_key_that_refers_to_its_multi_limit_limiter_is_collected() -> None:
    """GC support holds for either kind of limiter (see the single-limit test above)."""

    class Owner:
        def __init__(self) -> None:
            self.rl = RateLimiter(limits=[(1, 1.0), (2, 10.0)])
            assert self.rl.try_acquire(self)

    o = Owner()
    gone = weakref.ref(o)
    del o
    gc.collect()
    assert gone() is None


def test_acquire_waits_for_the_slowest_window() -> None:
    rl = RateLimiter(limits=[(1000, 1.0, 1), (20, 1.0, 1)])
    assert rl.acquire("k")
    start = time.monotonic()
    assert rl.acquire("k", timeout=1.0)
    assert time.monotonic() - start >= 0.04  # the 20/s window: 50 ms
    assert not rl.acquire("k", timeout=0.01)
