"""ErrorStore and ErrorRecord: bounds, ages, eviction order, bad input."""

from __future__ import annotations

import gc
import weakref

import pytest
from ferrule import ErrorRecord, ErrorStore, ManualClock


@pytest.mark.smoke
def test_record_count_and_history_newest_first() -> None:
    clock = ManualClock(100.0)
    store = ErrorStore(clock=clock)
    errors = [ValueError(n) for n in range(5)]
    for e in errors:
        assert store.record("a1", e) is True
        clock.advance(1.0)
    assert store.count("a1") == 5
    assert store.count("unknown") == 0
    hist = store.history("a1")
    assert [r.error for r in hist] == errors[::-1]
    assert [r.timestamp for r in hist] == [104.0, 103.0, 102.0, 101.0, 100.0]
    assert all(isinstance(r, ErrorRecord) and r.agent_id == "a1" for r in hist)
    assert [r.error for r in store.history("a1", limit=2)] == errors[:2:-1]
    assert store.history("a1", limit=0) == []
    assert store.history("unknown") == []
    assert repr(hist[0]) == "ErrorRecord(agent_id='a1', error=ValueError(4), timestamp=104.0)"
    with pytest.raises(AttributeError):
        hist[0].error = None  # type: ignore[misc]


def test_defaults_and_repr() -> None:
    store = ErrorStore()
    assert (store.max_per_agent, store.max_age, store.max_agents) == (1000, 86400.0, 100_000)
    assert repr(store) == "ErrorStore(max_per_agent=1000, max_age=86400.0, max_agents=100000)"
    assert store.agents() == []


def test_per_agent_bound_drops_the_oldest() -> None:
    store = ErrorStore(max_per_agent=3)
    for n in range(10):
        store.record("a", n)
    assert store.count("a") == 3
    assert [r.error for r in store.history("a")] == [9, 8, 7]


def test_entries_vanish_at_their_deadline() -> None:
    clock = ManualClock()
    store = ErrorStore(max_age=10.0, clock=clock)
    store.record("a", "first")
    clock.set(4.0)
    store.record("a", "second")
    store.record("b", "only")
    clock.set(9.999)
    assert store.count("a") == 2
    clock.set(10.0)  # live while now < t + max_age
    assert store.count("a") == 1
    assert [r.error for r in store.history("a")] == ["second"]
    assert store.agents() == ["a", "b"]
    clock.set(14.0)
    assert store.count("a") == 0
    assert store.agents() == []


def test_full_store_evicts_the_least_recently_recorded_agent() -> None:
    store = ErrorStore(max_agents=3)
    for a in ("a", "b", "c"):
        store.record(a, 0)
    store.record("a", 1)  # b is now the least recently recorded
    store.count("b")  # reading does not refresh recency
    assert store.record("d", 2) is True
    assert store.agents() == ["a", "c", "d"]
    assert store.count("b") == 0
    store.record("e", 3)  # then c
    assert store.agents() == ["a", "d", "e"]


def test_max_agents_one_keeps_the_new_record() -> None:
    store = ErrorStore(max_agents=1)
    store.record("a", 1)
    store.record("b", 2)
    assert store.agents() == ["b"]
    assert store.count("b") == 1


def test_reset() -> None:
    store = ErrorStore(max_agents=2)
    store.record("a", 1)
    store.record("b", 2)
    assert store.reset("a") is True
    assert store.reset("a") is False
    store.record("c", 3)  # the freed place is reused: b stays
    assert store.agents() == ["b", "c"]


def test_evicted_errors_are_released() -> None:
    class Err(Exception):
        pass

    store = ErrorStore(max_per_agent=1)
    first = Err()
    ref = weakref.ref(first)
    store.record("a", first)
    del first
    store.record("a", Err())
    gc.collect()
    assert ref() is None


def test_del_of_an_evicted_error_may_use_the_store() -> None:
    # The last reference is dropped after the shard lock is released: a __del__ that
    # calls back into the store does not deadlock.
    store = ErrorStore(max_per_agent=1)
    seen: list[int] = []

    class Err:
        def __del__(self) -> None:
            seen.append(store.count("a"))
            store.record("b", "from __del__")

    store.record("a", Err())
    store.record("a", "replacement")
    assert seen == [1]
    assert store.count("b") == 1


def test_bad_input_names_the_argument() -> None:
    store = ErrorStore()
    with pytest.raises(TypeError, match=r"^agent_id must be a str, not 'int'$"):
        store.record(1, ValueError())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^agent_id must be a str, not 'NoneType'$"):
        store.count(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^agent_id must be a str, not 'bytes'$"):
        store.history(b"a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^agent_id must be a str, not 'int'$"):
        store.reset(2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^limit must be >= 0$"):
        store.history("a", limit=-1)
    with pytest.raises(TypeError, match=r"^limit must be an int, not 'float'$"):
        store.history("a", limit=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_per_agent must be >= 1$"):
        ErrorStore(max_per_agent=0)
    with pytest.raises(ValueError, match=r"^max_agents must be >= 1$"):
        ErrorStore(max_agents=0)
    with pytest.raises(TypeError, match=r"^max_agents must be an int, not 'float'$"):
        ErrorStore(max_agents=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^max_age must be > 0$"):
        ErrorStore(max_age=0)
    with pytest.raises(ValueError, match=r"^max_age must be a finite number of seconds$"):
        ErrorStore(max_age=float("nan"))
    with pytest.raises(TypeError, match=r"^clock must be a ferrule.ManualClock or None"):
        ErrorStore(clock="now")  # type: ignore[arg-type]
    assert store.agents() == []


# ---- garbage collection ------------------------------------------------------------------


class Canary:
    """Something whose collection a weak reference can observe."""


def test_cycle_through_a_stored_traceback_is_collected() -> None:
    """An error whose traceback refers back to the store's holder (the frame that
    recorded it holds `self`) kept the holder alive forever: the store held its errors
    without taking part in garbage collection."""

    class Agent:
        def __init__(self) -> None:
            self.canary = Canary()
            self.errors = ErrorStore()

        def work(self) -> None:
            try:
                raise RuntimeError("boom")
            except RuntimeError as e:
                self.errors.record("me", e)  # e -> traceback -> frame -> self

    a = Agent()
    a.work()
    assert a.errors.count("me") == 1
    gone = weakref.ref(a.canary)
    del a
    gc.collect()
    assert gone() is None


def test_cycle_through_an_error_record_is_collected() -> None:
    """An ErrorRecord held its error without taking part in garbage collection."""

    def leak() -> weakref.ref[Canary]:
        store = ErrorStore()
        holder: dict[str, object] = {"canary": Canary()}
        err = ValueError(holder)
        store.record("a", err)
        holder["records"] = store.history("a")  # record -> err -> holder -> record
        store.reset("a")
        return weakref.ref(holder["canary"])  # type: ignore[arg-type]

    gone = leak()
    gc.collect()
    assert gone() is None


def test_traverse_shows_every_error_and_records_are_exact() -> None:
    store = ErrorStore(max_per_agent=3)
    errs = [ValueError(i) for i in range(3)]
    for e in errs:
        store.record("a", e)
    store.record("b", errs[0])
    referents = gc.get_referents(store)
    assert all(any(r is e for r in referents) for e in errs)
    assert len(referents) == 4

    class Id(str):
        pass

    rec = store.history(Id("a"), limit=1)[0]
    assert type(rec.agent_id) is str
    assert gc.get_referents(rec) == [errs[2]]


def test_huge_bounds_are_accepted_and_ints_beyond_i64_overflow() -> None:
    """`max_agents` and `limit` beyond i64 were ValueError; they are OverflowError now,
    like every int argument that cannot be represented."""
    store = ErrorStore(max_agents=2**62, max_per_agent=2**62)
    for i in range(100):
        assert store.record(f"a{i}", i)
    assert len(store.agents()) == 100
    assert [r.error for r in store.history("a1", limit=2**62)] == [1]
    with pytest.raises(OverflowError, match=r"^limit is out of range$"):
        store.history("a1", limit=2**70)
    with pytest.raises(OverflowError, match=r"^max_agents is out of range$"):
        ErrorStore(max_agents=2**70)
    with pytest.raises(OverflowError, match=r"^max_age is out of range$"):
        ErrorStore(max_age=10**400)


def test_near_the_clocks_largest_time() -> None:
    clock = ManualClock(4e9)
    clock.advance((2**62 - 4 * 10**18) / 1e9 - 1.0)
    store = ErrorStore(max_age=4e9, clock=clock)
    store.record("a", 1)
    clock.advance(1.0)
    assert store.count("a") == 1
    assert store.history("a")[0].timestamp == 2**62 / 1e9 - 1.0
