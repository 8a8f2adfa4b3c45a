"""RateLimiter under real concurrency: no over-admission, no false refusals, for keys of
every kind (native builtins, keys compared by Python, hostile keys)."""

from __future__ import annotations

import enum
import threading
import time
import uuid
from decimal import Decimal
from fractions import Fraction

from ferrule import ManualClock, RateLimiter


def hammer(n_threads: int, body: object) -> list[int]:
    """Runs body(i) -> int on n_threads threads started together; returns the results."""
    barrier = threading.Barrier(n_threads)
    results = [0] * n_threads

    def run(i: int) -> None:
        barrier.wait()
        results[i] = body(i)  # type: ignore[operator]

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def test_frozen_clock_grants_exactly_the_burst_then_exactly_the_refill(threads: int) -> None:
    clock = ManualClock()
    rl = RateLimiter(1000, burst=1000, clock=clock)

    def body(_: int) -> int:
        return sum(rl.try_acquire("k") for _ in range(400))

    # Demand (threads * 400) exceeds supply: exactly the supply is granted, so nothing
    # was over-admitted and nothing falsely refused.
    assert sum(hammer(threads, body)) == 1000
    clock.advance(0.25)
    assert sum(hammer(threads, body)) == 250
    clock.advance(0.0125)
    assert sum(hammer(threads, body)) == 12


def test_costs_under_contention_are_exact(threads: int) -> None:
    clock = ManualClock()
    rl = RateLimiter(100, burst=100, clock=clock)

    def body(i: int) -> int:
        cost = 1 + i % 3
        return sum(cost for _ in range(200) if rl.try_acquire(None, cost))

    granted = sum(hammer(threads, body))
    # Tokens are only ever granted whole; a refusal leaves at most 2 (the largest cost - 1).
    assert 98 <= granted <= 100
    assert rl.peek() == 100 - granted


def test_real_clock_never_over_admits_one_key(threads: int, stress_scale: int) -> None:
    rate, burst, run_for = 2000.0, 20, 0.3 * stress_scale
    rl = RateLimiter(rate, burst=burst)
    start = time.monotonic()

    def body(_: int) -> int:
        n = 0
        end = time.monotonic() + run_for
        while time.monotonic() < end:
            n += rl.try_acquire("hot")
        return n

    granted = sum(hammer(threads, body))
    elapsed = time.monotonic() - start
    assert granted <= burst + rate * elapsed
    # The key was hammered all along, so the whole burst and most of the refill went out.
    assert granted >= burst


def test_grants_stay_exact_while_full_buckets_are_swept(threads: int) -> None:
    """Every round starts with all buckets full (removable) on a frozen clock, and a
    sweeper runs throughout: each key must still grant exactly its burst per round. A
    removal that dropped a bucket just after a grant would let a fresh bucket grant again."""
    clock = ManualClock()
    rl = RateLimiter(10, burst=3, clock=clock)
    keys = [("k", i) for i in range(64)]
    for _ in range(5):
        stop = threading.Event()

        def sweep(stop: threading.Event) -> None:
            while not stop.is_set():
                rl.sweep()

        sweeper = threading.Thread(target=sweep, args=(stop,))
        sweeper.start()

        def body(i: int) -> int:
            return sum(rl.try_acquire(keys[(j + 7 * i) % 64]) for j in range(64 * 6))

        try:
            granted = sum(hammer(threads, body))
        finally:
            stop.set()
            sweeper.join()
        assert granted == 3 * 64
        assert all(rl.peek(k) == 0 for k in keys)
        clock.advance(1.0)
    assert rl.sweep() == 64
    assert len(rl) == 0


def test_distinct_keys_with_concurrent_sweeps(threads: int) -> None:
    clock = ManualClock()
    rl = RateLimiter(10, burst=10, clock=clock)

    def body(i: int) -> int:
        n = 0
        for j in range(2_000):
            n += rl.try_acquire(("t", i, j % 50))
            if j % 101 == 0:
                rl.sweep()
        return n

    # Each thread's 50 keys hold 10 tokens each, and the clock is frozen.
    assert hammer(threads, body) == [500] * threads
    clock.advance(1.0)
    assert rl.sweep() == 50 * threads
    assert len(rl) == 0


# ---- keys compared by Python --------------------------------------------------------------


class Val:
    """A user class equal to ``v`` (and to any Val of it), hashed like ``v``."""

    def __init__(self, v: object) -> None:
        self.v = v

    def __hash__(self) -> int:
        return hash(self.v)

    def __eq__(self, other: object) -> bool:
        return self.v == (other.v if isinstance(other, Val) else other)


class Level(enum.IntEnum):
    FIVE = 5


# One class of keys in seven forms: native (5, 5.0, True-free) and compared by Python.
FIVES: list[object] = [5, 5.0, Decimal(5), Fraction(5), Val(5), Level.FIVE, Val(5.0)]


def test_equal_keys_of_every_kind_share_one_bucket_under_threads(threads: int) -> None:
    """Guards the one-bucket-per-class invariant while native and Python-compared forms
    of one key race to insert it: on a frozen clock every round grants exactly the burst,
    and each round starts with the bucket swept away, so every round races insertions."""
    clock = ManualClock()
    rl = RateLimiter(10, burst=10, clock=clock)

    def body(i: int) -> int:
        return sum(rl.try_acquire(FIVES[(i + j) % len(FIVES)]) for j in range(40))

    for round_ in range(30):
        assert sum(hammer(threads, body)) == 10, round_
        assert len(rl) == 1
        clock.advance(1.0)
        assert rl.sweep() == 1


def test_real_clock_never_over_admits_a_python_key(threads: int, stress_scale: int) -> None:
    rate, burst, run_for = 2000.0, 20, 0.3 * stress_scale
    rl = RateLimiter(rate, burst=burst)
    keys = [uuid.UUID(int=1), uuid.UUID(int=1), Val(uuid.UUID(int=1))]
    start = time.monotonic()

    def body(i: int) -> int:
        n = 0
        k = keys[i % len(keys)]
        end = time.monotonic() + run_for
        while time.monotonic() < end:
            n += rl.try_acquire(k)
        return n

    granted = sum(hammer(threads, body))
    elapsed = time.monotonic() - start
    assert granted <= burst + rate * elapsed
    assert granted >= burst
    assert len(rl) == 1


class Boom(Exception):
    pass


class BadEq:
    """Hashes like every BadEq; comparing two of them raises."""

    def __hash__(self) -> int:
        return 99

    def __eq__(self, other: object) -> bool:
        raise Boom


class Shifty:
    """A key whose hash changes on every call (never to another test key's hash)."""

    def __init__(self) -> None:
        self.n = 0

    def __hash__(self) -> int:
        self.n += 1
        return 10**6 + self.n


class Reentrant:
    """Hashes like every Reentrant; each comparison uses the limiter, then says equal
    only to itself."""

    def __init__(self, rl: RateLimiter, i: int) -> None:
        self.rl, self.i = rl, i

    def __hash__(self) -> int:
        return 77

    def __eq__(self, other: object) -> bool:
        self.rl.try_acquire(("side", self.i))
        self.rl.reset(("side", self.i))
        if self.i % 4 == 0:
            self.rl.sweep()
        return self is other


def test_hostile_keys_under_threads_leave_other_keys_exact(threads: int) -> None:
    """Keys whose __eq__ raises or re-enters the limiter, and keys whose hash changes,
    hammered from every thread beside one ordinary key: no deadlock, no panic, and the
    ordinary key still grants exactly its burst per round on a frozen clock."""
    clock = ManualClock()
    rl = RateLimiter(10, burst=10, clock=clock)
    mine = [Reentrant(rl, i) for i in range(threads)]
    shifty = [Shifty() for _ in range(threads)]
    bad = [BadEq() for _ in range(threads)]
    raised = [0] * threads

    def body(i: int) -> int:
        n = 0
        for j in range(60):
            n += rl.try_acquire(FIVES[(i + j) % len(FIVES)])
            rl.try_acquire(mine[i])
            rl.check(shifty[i])
            try:
                rl.try_acquire(bad[i])
            except Boom:
                raised[i] += 1
        return n

    for round_ in range(5):
        assert sum(hammer(threads, body)) == 10, round_
        clock.advance(1.0)
        rl.sweep()
    # The first BadEq in a round is stored without a comparison; the others compare.
    assert sum(raised) > 0
    clock.advance(1.0)
    rl.sweep()
    assert len(rl) == 0


def test_distinct_python_keys_with_concurrent_sweeps(threads: int) -> None:
    clock = ManualClock()
    rl = RateLimiter(10, burst=10, clock=clock)

    def body(i: int) -> int:
        n = 0
        for j in range(2_000):
            n += rl.try_acquire(Val(("t", i, j % 50)))
            if j % 101 == 0:
                rl.sweep()
        return n

    assert hammer(threads, body) == [500] * threads
    clock.advance(1.0)
    assert rl.sweep() == 50 * threads
    assert len(rl) == 0


def test_key_function_results_holding_resized_containers(threads: int) -> None:
    """Guards the one place the limiter looks inside what a callback returned: a
    ``limit`` decorator's key function gives tuples, which the native key path reads
    item by item. Tuples holding a list or a dict that two other threads keep resizing
    raise TypeError (unhashable) every time, never PanicException; plain tuples from
    the same function are counted exactly meanwhile."""
    shared_list: list[int] = [0]
    shared_dict: dict[int, int] = {0: 0}
    stop = threading.Event()
    per_thread = 200
    rl = RateLimiter(1.0, per=3600.0, burst=threads * per_thread, clock=ManualClock())

    @rl.limit(key=lambda k, inner: ("user", (k, inner)), timeout=0)
    def call(k: str, inner: object) -> None:
        return None

    def resize() -> None:
        while not stop.is_set():
            shared_list.extend(range(32))
            del shared_list[1:]
            shared_dict.update(dict.fromkeys(range(1, 33), 1))
            for i in range(1, 33):
                shared_dict.pop(i, None)

    def body(i: int) -> int:
        refused = 0
        for j in range(per_thread):
            for inner in (shared_list, shared_dict):
                try:
                    call("k", inner)
                except TypeError:
                    refused += 1
            call("k", j % 3)
        return refused

    resizers = [threading.Thread(target=resize) for _ in range(2)]
    for t in resizers:
        t.start()
    try:
        refused = hammer(threads, body)
    finally:
        stop.set()
        for t in resizers:
            t.join()
    assert refused == [2 * per_thread] * threads
    # Every plain call took one token of the key ("user", ("k", n)) it named (the clock is
    # frozen: nothing refills).
    taken = threads * per_thread
    assert sum(rl.peek(("user", ("k", n))) for n in range(3)) == 3 * rl.burst - taken


def test_two_windows_never_over_admit_on_a_frozen_clock(threads: int) -> None:
    """N threads on one key with two limits (5 at once; 8 per 10 s): with the clock
    frozen, exactly the tighter allowance is granted; after time passes, each window's
    total stays within its own allowance, and a refusal took from neither."""
    clock = ManualClock()
    rl = RateLimiter(limits=[(5, 1.0), (8, 10.0)], clock=clock)

    def body(_: int) -> int:
        return sum(rl.try_acquire("k") for _ in range(50))

    assert sum(hammer(threads, body)) == 5  # the 5/s window's burst
    clock.advance(1.0)  # the first window refills 5; the second only 0.8
    assert sum(hammer(threads, body)) == 3  # the 8/10 s window: 8 in all
    assert rl.peek("k") == 0
    clock.advance(10.0)
    assert sum(hammer(threads, body)) == 5


def test_two_windows_under_a_moving_clock_stay_within_each_allowance(threads: int) -> None:
    """Threads with mixed costs race on one key while another thread moves the clock:
    tokens granted never exceed either window's ``burst + rate * t / per``."""
    clock = ManualClock()
    rl = RateLimiter(limits=[(20, 1.0, 4), (50, 10.0, 10)], clock=clock)
    stop = threading.Event()

    def mover() -> None:
        while not stop.is_set():
            clock.advance(0.001)
            time.sleep(0)

    m = threading.Thread(target=mover)
    m.start()
    try:

        def body(i: int) -> int:
            cost = 1 + i % 2
            return sum(cost for _ in range(3000) if rl.try_acquire(("k", 1), cost))

        granted = sum(hammer(threads, body))
    finally:
        stop.set()
        m.join()
    t = clock.now()
    assert granted <= 4 + 20 * t
    assert granted <= 10 + 50 * t / 10
