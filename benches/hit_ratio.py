"""Hit ratios: every cache replays the same seeded traces, beside Belady's OPT.

Not a timing benchmark: each cache sees every access of a trace as `get(key)` and, on a
miss, `set(key, key)` (functools.lru_cache: one call of a wrapped function that counts
its own misses), and the table reports hits / accesses. The caches: ferrule's `lru` and
`tinylfu` policies, cachebox.LRUCache, lru-dict, functools.lru_cache, moka-py (TinyLFU)
and theine (adaptive W-TinyLFU), whichever are installed; and two references that are
not caches one could use: Belady's OPT (evict the entry used furthest in the future),
the ceiling for any cache of that size, and an exact-count LFU (what W-TinyLFU
approximates with its sketch: exact counts over the whole trace, the same admission
rule), which shows what frequency alone can reach on each trace.

The traces (seeded, so every run replays the same accesses):

- zipf: Zipf(1.0) over 1M keys, capacity 10k: a stable popularity skew.
- scan: the same Zipf accesses in runs of 30k, each followed by a one-pass scan of 20k
  keys never seen before or after (twice the capacity): an LRU cache is flushed by every
  scan; a frequency-aware one keeps its hot entries.
- loop: a loop over 95% of the capacity's worth of keys, with 2% one-off keys mixed in:
  recency is all that matters, and every key of the loop fits.

Run (release build; about two minutes, most of it in the slower peers):

    make dev
    .venv/bin/python benches/hit_ratio.py            # the table in docs/guide/cache.md
    .venv/bin/python benches/hit_ratio.py --quick    # 10x smaller traces, seconds

`pytest benches` runs the `--quick` form once (benches/test_hit_ratio.py).
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ferrule

Replay = Callable[[Sequence[int], int], int]
"""replay(trace, capacity) -> hits."""


@dataclass(frozen=True)
class Trace:
    name: str
    what: str
    capacity: int
    keys: list[int]


# ---- traces ----


def zipf_ranks(n: int, universe: int, rng: random.Random, s: float = 1.0) -> list[int]:
    """`n` ranks in `range(universe)`, rank r drawn with probability ~ 1 / (r + 1)**s."""
    cum = list(itertools.accumulate(1.0 / (r**s) for r in range(1, universe + 1)))
    return rng.choices(range(universe), cum_weights=cum, k=n)


def scatter(rank: int, universe: int) -> int:
    """A key for a rank: hot keys are not neighbouring integers (a bijection of
    range(4 * universe), 2654435761 being prime to it)."""
    return (rank * 2654435761) % (universe * 4)


def zipf_trace(n: int, universe: int, capacity: int, seed: int) -> Trace:
    ranks = zipf_ranks(n, universe, random.Random(seed))
    return Trace(
        "zipf",
        f"Zipf(1.0) over {universe:,} keys, {n:,} accesses",
        capacity,
        [scatter(r, universe) for r in ranks],
    )


def scan_trace(n: int, universe: int, capacity: int, seed: int) -> Trace:
    run, scan = 3 * capacity, 2 * capacity
    blocks = max(1, n // (run + scan))
    ranks = zipf_ranks(blocks * run, universe, random.Random(seed))
    fresh = itertools.count(universe * 4)  # beyond every Zipf key
    keys: list[int] = []
    for b in range(blocks):
        keys.extend(scatter(r, universe) for r in ranks[b * run : (b + 1) * run])
        keys.extend(itertools.islice(fresh, scan))
    return Trace(
        "scan",
        f"Zipf(1.0) over {universe:,} keys in runs of {run:,}, each followed by a scan of "
        f"{scan:,} new keys, {len(keys):,} accesses",
        capacity,
        keys,
    )


def loop_trace(n: int, capacity: int, seed: int) -> Trace:
    rng = random.Random(seed)
    loop = int(capacity * 0.95)
    fresh = itertools.count(loop)
    keys: list[int] = []
    i = 0
    while len(keys) < n:
        if rng.random() < 0.02:
            keys.append(next(fresh))
        else:
            keys.append(i)
            i = (i + 1) % loop
    return Trace(
        "loop",
        f"a loop over {loop:,} keys with 2% one-off keys, {n:,} accesses",
        capacity,
        keys,
    )


def traces(quick: bool, seed: int) -> list[Trace]:
    scale = 10 if quick else 1
    n, universe, capacity = 1_000_000 // scale, 1_000_000 // scale, 10_000 // scale
    return [
        zipf_trace(n, universe, capacity, seed),
        scan_trace(n, universe, capacity, seed + 1),
        loop_trace(n, capacity, seed + 2),
    ]


# ---- caches ----


def replay_get_set(get: Callable[[int], object], put: Callable[[int, int], object]) -> Replay:
    def run(trace: Sequence[int], capacity: int) -> int:
        hits = 0
        for k in trace:
            if get(k) is None:
                put(k, k)
            else:
                hits += 1
        return hits

    return run


def ferrule_cache(policy: str) -> Callable[[int], Replay]:
    def make(capacity: int) -> Replay:
        c = ferrule.Cache(capacity, policy=policy, shards=1)
        return replay_get_set(c.get, c.set)

    return make


def cachebox_lru(capacity: int) -> Replay:
    import cachebox

    c = cachebox.LRUCache(capacity)
    return replay_get_set(c.get, c.insert)


def lru_dict(capacity: int) -> Replay:
    import lru

    c = lru.LRU(capacity)
    return replay_get_set(c.get, c.__setitem__)


def moka(capacity: int) -> Replay:
    import moka_py

    c = moka_py.Moka(capacity)
    return replay_get_set(c.get, c.set)


def theine_cache(capacity: int) -> Replay:
    import theine

    c = theine.Cache(capacity)
    get, put = c.get, c.set

    def run(trace: Sequence[int], capacity: int) -> int:
        hits = 0
        for k in trace:
            if get(k)[1]:
                hits += 1
            else:
                put(k, k)
        return hits

    return run


def lru_cache(capacity: int) -> Replay:
    def run(trace: Sequence[int], capacity: int) -> int:
        misses = 0

        @functools.lru_cache(maxsize=capacity)
        def load(k: int) -> int:
            nonlocal misses
            misses += 1
            return k

        for k in trace:
            load(k)
        return len(trace) - misses

    return run


def belady(capacity: int) -> Replay:
    """OPT: on a miss in a full cache, evict the entry whose next use is furthest away
    (never used again first)."""

    def run(trace: Sequence[int], capacity: int) -> int:
        n = len(trace)
        never = n
        next_use = [never] * n
        seen: dict[int, int] = {}
        for i in range(n - 1, -1, -1):
            k = trace[i]
            next_use[i] = seen.get(k, never)
            seen[k] = i
        resident: dict[int, int] = {}  # key -> its next use
        heap: list[tuple[int, int]] = []  # (-next use, key), stale rows skipped
        hits = 0
        for i, k in enumerate(trace):
            if k in resident:
                hits += 1
            elif len(resident) >= capacity:
                while True:
                    nu, victim = heapq.heappop(heap)
                    if resident.get(victim) == -nu:
                        del resident[victim]
                        break
            resident[k] = next_use[i]
            heapq.heappush(heap, (-next_use[i], k))
        return hits

    return run


def exact_lfu(capacity: int) -> Replay:
    """What W-TinyLFU approximates, without its approximations: exact access counts over
    the whole trace (an evicted key keeps its count), no aging and no window. On a miss
    in a full cache the least counted entry is the victim, and the missed key replaces
    it only if counted more (TinyLFU's admission rule; ties keep the victim)."""

    def run(trace: Sequence[int], capacity: int) -> int:
        count: dict[int, int] = {}
        resident: set[int] = set()
        heap: list[tuple[int, int]] = []  # (count when pushed, key), stale rows skipped
        hits = 0
        for k in trace:
            c = count.get(k, 0) + 1
            count[k] = c
            if k in resident:
                hits += 1
            elif len(resident) < capacity:
                resident.add(k)
            else:
                while True:  # the least counted resident key (lazy deletion)
                    vc, victim = heap[0]
                    if victim in resident and count[victim] == vc:
                        break
                    heapq.heappop(heap)
                if c <= vc:
                    continue
                heapq.heappop(heap)
                resident.discard(victim)
                resident.add(k)
            heapq.heappush(heap, (c, k))
        return hits

    return run


CACHES: dict[str, Callable[[int], Replay]] = {
    "OPT (Belady)": belady,
    "exact LFU": exact_lfu,
    "ferrule tinylfu": ferrule_cache("tinylfu"),
    "ferrule lru": ferrule_cache("lru"),
    "cachebox LRUCache": cachebox_lru,
    "lru-dict": lru_dict,
    "functools.lru_cache": lru_cache,
    "moka-py": moka,
    "theine": theine_cache,
}


# ---- the run ----


def measure(trace: Trace, names: Sequence[str]) -> dict[str, float | None]:
    """Hit ratio per cache (None: the package is not installed)."""
    out: dict[str, float | None] = {}
    for name in names:
        try:
            replay = CACHES[name](trace.capacity)
        except ImportError:
            out[name] = None
            continue
        out[name] = replay(trace.keys, trace.capacity) / len(trace.keys)
    return out


def table(rows: list[tuple[Trace, dict[str, float | None]]], names: Sequence[str]) -> str:
    head = "| trace (capacity) | " + " | ".join(names) + " |"
    rule = "| --- |" + " ---: |" * len(names)
    lines = [head, rule]
    for trace, ratios in rows:
        cells = []
        for name in names:
            r = ratios[name]
            cells.append("—" if r is None else f"{r:.3f}")
        lines.append(f"| {trace.name} ({trace.capacity:,}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[tuple[Trace, dict[str, float | None]]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="traces 10x smaller (seconds)")
    ap.add_argument("--seed", type=int, default=42, help="trace seed (default 42)")
    ap.add_argument(
        "--only", action="append", choices=list(CACHES), help="these caches only (repeat)"
    )
    ap.add_argument("--trace", action="append", choices=["zipf", "scan", "loop"])
    a = ap.parse_args(argv)
    names = a.only or list(CACHES)
    rows = []
    for trace in traces(a.quick, a.seed):
        if a.trace and trace.name not in a.trace:
            continue
        t0 = time.perf_counter()
        rows.append((trace, measure(trace, names)))
        print(f"{trace.name}: {trace.what} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    print(table(rows, names))
    return rows


if __name__ == "__main__":
    main()
