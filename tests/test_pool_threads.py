"""Threaded stress: Pool's bound holds under many threads, with validation failures and
discards; items that other threads resize are kept by reference."""

from __future__ import annotations

import random
import threading
from typing import Any

from ferrule import Discard, Pool

from tests.conftest import run_threads


def test_pool_bound_under_threads(threads: int, stress_scale: int) -> None:
    max_size = 3
    lock = threading.Lock()
    live = 0
    peak_live = 0
    out = 0
    peak_out = 0

    class Item:
        def __init__(self) -> None:
            nonlocal live, peak_live
            with lock:
                live += 1
                peak_live = max(peak_live, live)

        def close(self) -> None:
            nonlocal live
            with lock:
                live -= 1

    pool = Pool(Item, max_size=max_size, validate=lambda it: random.random() > 0.05)

    def body(i: int) -> None:
        nonlocal out, peak_out
        rnd = random.Random(i)
        for _ in range(1000 * stress_scale):
            try:
                with pool.acquire(timeout=30):
                    with lock:
                        out += 1
                        peak_out = max(peak_out, out)
                        assert out <= max_size
                    with lock:
                        out -= 1
                    if rnd.random() < 0.05:
                        raise Discard
            except Discard:
                pass

    run_threads(max(threads, 16), body)
    s = pool.stats()
    assert peak_live <= max_size
    assert peak_out <= max_size
    assert (s.in_use, s.waiting) == (0, 0)
    assert s.size == live <= max_size
    assert s.created - s.discarded == s.size
    pool.close()
    assert live == 0


def test_items_resized_by_other_threads_are_kept_by_reference(
    threads: int, stress_scale: int
) -> None:
    """Guards the item path against reading a user's container: the factory returns
    lists and dicts, which two other threads keep resizing while the pool stores them
    idle, validates them (``validate`` returns the item itself, so its truth is read
    mid-resize), hands them out, takes them back and discards them. Every checkout
    returns (no PanicException, no crash) with an object the factory made, held by one
    checkout at a time; the counts add up."""
    made: list[Any] = []  # every item the factory made, kept alive: ids stay unique
    made_ids: set[int] = set()
    held: set[int] = set()
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []

    def factory() -> Any:
        with lock:
            # Never empty (the resizers keep the first entry), so validate is always true.
            item: Any = [len(made)] if len(made) % 2 else {"n": len(made)}
            made.append(item)
            made_ids.add(id(item))
        return item

    def resize(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            with lock:
                item = made[rng.randrange(len(made))] if made else None
            if isinstance(item, list):
                item.extend(range(32))
                del item[1:]
            elif isinstance(item, dict):
                for i in range(32):
                    item[i] = i
                for i in range(32):
                    item.pop(i, None)

    pool = Pool(factory, max_size=4, validate=lambda item: item)
    resizers = [threading.Thread(target=resize, args=(i,)) for i in range(2)]
    for t in resizers:
        t.start()

    def body(i: int) -> None:
        rng = random.Random(i)
        try:
            for _ in range(300 * stress_scale):
                try:
                    with pool.acquire(timeout=30) as item:
                        with lock:
                            if id(item) not in made_ids:
                                errors.append(f"not an item the factory made: {item!r:.60}")
                            if id(item) in held:
                                errors.append("one item in two checkouts")
                            held.add(id(item))
                        with lock:
                            held.discard(id(item))
                        if rng.random() < 0.1:
                            raise Discard
                except Discard:
                    pass
        except BaseException as e:  # a PanicException is a BaseException
            errors.append(f"{type(e).__name__}: {e}")

    try:
        run_threads(threads, body)
    finally:
        stop.set()
        for t in resizers:
            t.join()
    assert errors == []
    s = pool.stats()
    assert (s.in_use, s.waiting) == (0, 0)
    assert s.created == len(made)
    assert s.created - s.discarded == s.size <= 4
    pool.close()
