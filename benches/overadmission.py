"""Over-admission check: 8 threads hammer one key of each rate limiter for a fixed time.

Prints, for each limiter that is installed, how many requests it granted and how many its
own configuration allows (``burst + rate * elapsed``). A limiter whose check and update
are not one atomic step grants more than it allows.

    .venv/bin/python benches/overadmission.py [--seconds 0.5] [--threads 8]
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Callable

import ferrule

RATE = 1000  # tokens per second
BURST = 1000  # bucket capacity / window limit
KEY = "user:1"

Attempt = Callable[[], bool]


def make_ferrule() -> Attempt:
    rl = ferrule.RateLimiter(RATE, burst=BURST)
    return lambda: rl.try_acquire(KEY)


def make_ferrule_uuid() -> Attempt:
    """A key ferrule compares with ``==`` (its slower path): equal UUIDs, made per call."""
    rl = ferrule.RateLimiter(RATE, burst=BURST)
    n = uuid.UUID(int=1).int
    return lambda: rl.try_acquire(uuid.UUID(int=n))


def make_limits(window: str) -> Callable[[], Attempt]:
    def make() -> Attempt:
        from limits import RateLimitItemPerSecond, storage, strategies

        item = RateLimitItemPerSecond(RATE)
        cls = {
            "moving": strategies.MovingWindowRateLimiter,
            "fixed": strategies.FixedWindowRateLimiter,
        }[window]
        lim = cls(storage.MemoryStorage())
        return lambda: lim.hit(item, KEY)

    return make


def make_pyrate(gcra: bool) -> Callable[[], Attempt]:
    def make() -> Attempt:
        from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

        rate = Rate(RATE, Duration.SECOND)
        if gcra:
            from pyrate_limiter import GCRA, StateBucket

            bucket: object = StateBucket([Rate(RATE, Duration.SECOND, burst=BURST)], GCRA())
        else:
            bucket = InMemoryBucket([rate])
        lim = Limiter(bucket)  # type: ignore[arg-type]
        return lambda: bool(lim.try_acquire(KEY, blocking=False))

    return make


def make_token_bucket() -> Attempt:
    import token_bucket

    lim = token_bucket.Limiter(RATE, BURST, token_bucket.MemoryStorage())
    return lambda: lim.consume(KEY)


LIMITERS: list[tuple[str, Callable[[], Attempt]]] = [
    ("ferrule.RateLimiter", make_ferrule),
    ("ferrule.RateLimiter, UUID key", make_ferrule_uuid),
    ("limits MovingWindow", make_limits("moving")),
    ("limits FixedWindow", make_limits("fixed")),
    ("pyrate-limiter InMemoryBucket", make_pyrate(gcra=False)),
    ("pyrate-limiter GCRA StateBucket", make_pyrate(gcra=True)),
    ("token-bucket", make_token_bucket),
]


def hammer(attempt: Attempt, threads: int, seconds: float) -> tuple[int, int, float]:
    """(granted, attempts, elapsed) with `threads` threads calling attempt() for `seconds`."""
    barrier = threading.Barrier(threads + 1)
    granted = [0] * threads
    tried = [0] * threads

    def body(i: int) -> None:
        barrier.wait()
        end = time.monotonic() + seconds
        g = n = 0
        while time.monotonic() < end:
            g += attempt()
            n += 1
        granted[i], tried[i] = g, n

    ts = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    start = time.monotonic()
    barrier.wait()
    for t in ts:
        t.join()
    return sum(granted), sum(tried), time.monotonic() - start


def report(threads: int = 8, seconds: float = 0.5) -> dict[str, tuple[int, float]]:
    """Prints the table; returns {name: (granted, allowed)} for the limiters that ran."""
    out: dict[str, tuple[int, float]] = {}
    print(f"\n{threads} threads, one key, {seconds} s; rate {RATE}/s, burst {BURST}")
    print("| limiter | attempts | granted | allowed | granted / allowed |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, make in LIMITERS:
        try:
            attempt = make()
        except ImportError:
            continue
        granted, tried, elapsed = hammer(attempt, threads, seconds)
        allowed = BURST + RATE * elapsed
        out[name] = (granted, allowed)
        print(f"| {name} | {tried} | {granted} | {allowed:.0f} | {granted / allowed:.2f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=8)
    a = ap.parse_args(argv)
    report(a.threads, a.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
