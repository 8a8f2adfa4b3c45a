"""Demo step: CircuitBreaker and retry in front of a flaky dependency."""

from __future__ import annotations

import threading
import time

import ferrule
from ferrule._demos import rate


def run() -> None:
    print("== Resilience: CircuitBreaker (one atomic state word) and retry (full jitter)")
    clock = ferrule.ManualClock()
    changes: list[str] = []
    cb = ferrule.CircuitBreaker(
        3,
        10.0,
        clock=clock,
        name="inventory",
        on_state_change=lambda old, new: changes.append(f"{old}->{new}"),
    )
    healthy = False
    calls = 0

    def inventory(item: str) -> int:
        nonlocal calls
        calls += 1
        if not healthy:
            raise ConnectionError("inventory unreachable")
        return 42

    # retry outside, breaker inside: a retry never hammers an open circuit.
    fetch = ferrule.retry(attempts=2, backoff=0.0, retry_on=ConnectionError)(cb(inventory))
    outcomes: dict[str, int] = {}
    for _ in range(6):
        try:
            fetch("widget")
            outcome = "ok"
        except (ConnectionError, ferrule.CircuitOpen) as e:
            outcome = type(e).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(
        f"  6 requests while the dependency is down: it was called {calls} times, "
        f"outcomes {outcomes}, breaker {cb.state}, retry_after={cb.retry_after:.1f} s"
    )
    healthy = True
    clock.advance(10.0)
    print(f"  10 s later: breaker {cb.state}; a request -> {fetch('widget')}, breaker {cb.state}")
    print(f"  state changes: {', '.join(changes)}; {cb.stats()}")

    # Protected calls run in the caller's thread with no lock held: they overlap.
    par = ferrule.CircuitBreaker()
    n, pause = 4, 0.05
    ts = [threading.Thread(target=par.call, args=(time.sleep, pause)) for _ in range(n)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    print(
        f"  {n} threads x one {pause * 1000:.0f} ms call through one breaker: {wall * 1000:.0f} ms"
    )

    def nothing() -> None:
        return None

    m = 200_000
    hot = ferrule.CircuitBreaker()
    call = hot.call
    t0 = time.perf_counter()
    for _ in range(m):
        call(nothing)
    t1 = time.perf_counter()
    retried = ferrule.retry()(nothing)
    for _ in range(m):
        retried()
    t2 = time.perf_counter()
    for _ in range(m):
        nothing()
    t3 = time.perf_counter()
    print(
        f"  {m} cb.call(f): {rate(m, t1 - t0)}; {m} @retry f(): {rate(m, t2 - t1)}; "
        f"plain f(): {rate(m, t3 - t2)}"
    )
