"""Demo step: Metrics and ErrorStore."""

from __future__ import annotations

import random
import threading
import time

import ferrule
from ferrule._demos import rate


def run() -> None:
    print("== Metrics: per-operation latency histograms over a sliding window, in atomics")
    clock = ferrule.ManualClock()
    m = ferrule.Metrics(window=60.0, clock=clock)
    rng = random.Random(7)
    for _ in range(10_000):
        m.record("db.query", rng.lognormvariate(-5.0, 0.8), ok=rng.random() > 0.02)
    s = m.snapshot("db.query")
    print(
        f"  10000 calls: count={s.count} errors={s.errors} rate={s.rate:.1f}/s "
        f"mean={s.mean * 1e3:.2f} ms p50={s.p50 * 1e3:.2f} ms p99={s.p99 * 1e3:.2f} ms "
        f"max={s.max * 1e3:.2f} ms"
    )

    @m.time("handler")
    def handler() -> None:
        clock.advance(0.120)

    handler()
    with m.time("handler"):
        clock.advance(0.080)
    print(f"  timed with the metrics' clock: handler mean={m.snapshot('handler').mean:.3f} s")
    clock.advance(60.0)
    print(f"  60 s later the window is empty: count={m.snapshot('db.query').count}, ops={m.ops()}")

    live = ferrule.Metrics()
    n, workers = 200_000, 4
    barrier = threading.Barrier(workers + 1)

    def worker(i: int) -> None:
        rec = live.record
        barrier.wait()
        for k in range(n // workers):
            rec("rpc", 1e-4 * (k % 100 + 1))

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    print(
        f"  {workers} threads x {n // workers} record() on one op: {rate(n, dt)}; "
        f"count={live.snapshot('rpc').count} (exact)"
    )

    print("== ErrorStore: bounded per agent, by age and by number of agents")
    eclock = ferrule.ManualClock()
    store = ferrule.ErrorStore(max_per_agent=3, max_age=3600.0, max_agents=2, clock=eclock)
    for k in range(5):
        store.record("agent-1", RuntimeError(f"failure {k}"))
        eclock.advance(1.0)
    newest = [str(r.error) for r in store.history("agent-1")]
    print(f"  5 errors, max_per_agent=3: count={store.count('agent-1')}, newest first {newest}")
    store.record("agent-2", TimeoutError("slow"))
    store.record("agent-3", KeyError("gone"))  # full: agent-1 was recorded least recently
    print(f"  max_agents=2 after a third agent: agents={store.agents()}")
    eclock.advance(3600.0)
    print(f"  an hour later (max_age=3600): agents={store.agents()}")

    big = ferrule.ErrorStore(max_per_agent=10, max_agents=1000)
    err = ValueError("x")
    ids = [f"agent-{i % 5000}" for i in range(100_000)]
    t0 = time.perf_counter()
    for a in ids:
        big.record(a, err)
    dt = time.perf_counter() - t0
    print(
        f"  100000 records over 5000 agents (max_agents=1000): {rate(len(ids), dt)}; "
        f"agents held={len(big.agents())}"
    )
