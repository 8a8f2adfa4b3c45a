"""Demo step: HealthMonitor."""

from __future__ import annotations

import gc
import threading
import time

import ferrule


class _Worker:
    """Stands for an agent's handle; the registry entry goes when it is collected."""


def run() -> None:
    print("== HealthMonitor: checks on a bounded pool with a timeout, liveness from owners")
    reg, bus = ferrule.Registry(), ferrule.SignalBus()
    sub = bus.subscribe("agent.#", maxsize=10_000)
    release = threading.Event()
    owner = _Worker()
    reg.register("db", "ok")
    reg.register("cache", "slow")
    reg.register("search", "hangs")
    reg.register("llm", "raises")
    reg.register("ephemeral", "ok", owner=owner)

    def check(agent: ferrule.Agent) -> str:
        if agent.value == "hangs":
            release.wait(10.0)
        elif agent.value == "slow":
            return "degraded"
        elif agent.value == "raises":
            raise ConnectionError("no reply")
        return "healthy"

    with ferrule.HealthMonitor(reg, interval=60.0, check=check, timeout=0.1, bus=bus) as mon:
        t0 = time.perf_counter()
        statuses = mon.check_now()
        dt = time.perf_counter() - t0
        print(f"  one round, one check hanging, timeout=0.1 s: {dt:.3f} s")
        print(f"    {dict(sorted(statuses.items()))}")
        del owner  # the owner is collected: its entry goes, the monitor reports "gone"
        gc.collect()
        gone = {k: v for k, v in mon.check_now().items() if v == "gone"}
        print(f"  after the owner of 'ephemeral' is collected: {gone}")
        release.set()
        while sub.qsize():
            sig = sub.get_nowait()
            print(f"  published {sig.type}: {sig.data}")

    big = ferrule.Registry()
    for i in range(1000):
        big.register(f"agent-{i}", "ok")
    with ferrule.HealthMonitor(big, interval=60.0, check=check, timeout=1.0) as mon:
        t0 = time.perf_counter()
        rounds = 5
        for _ in range(rounds):
            mon.check_now()
        dt = time.perf_counter() - t0
    print(
        f"  check_now() over 1000 agents, trivial check: {dt / rounds * 1e3:.1f} ms per round "
        f"({1000 * rounds / dt:,.0f} checks/s)"
    )
