"""Demo step: the Registry."""

from __future__ import annotations

import gc
import threading
import time

import ferrule
from ferrule._demos import rate


class _Worker:
    """Stands for an agent object whose collection should unregister it."""


def run() -> None:
    print("== Registry: agents by id, capability, node, health; owners and leases")
    clock = ferrule.ManualClock()
    reg = ferrule.Registry(clock=clock)
    reg.register_many(
        [
            {
                "agent_id": "planner",
                "capabilities": ["plan"],
                "node": "n1",
                "metadata": {"gpu": 0, "zone": "eu"},
            },
            {
                "agent_id": "coder-1",
                "capabilities": ["code", "search"],
                "node": "n1",
                "metadata": {"gpu": 1, "zone": "eu", "langs": ["py", "rust"]},
            },
            {
                "agent_id": "coder-2",
                "capabilities": ["code"],
                "node": "n2",
                "metadata": {"gpu": 2, "zone": "us", "langs": ["go"]},
                "ttl": 30.0,
            },
        ]
    )
    print(f"  registered {len(reg)} agents; code agents: {sorted(reg.ids(capability='code'))}")
    rust = reg.ids(capability="code", where=[("langs", "eq", "rust"), ("gpu", "gte", 1)])
    print(f"  code agents that speak rust with a GPU: {rust}")
    try:
        reg.register("planner")
    except ferrule.AlreadyRegistered as e:
        print(f"  a second 'planner' is refused: {e.args[0]}")
    reg.update("coder-1", health="degraded")
    healthy = reg.ids(capability="code", health="healthy")
    print(f"  healthy code agents after coder-1 degraded: {healthy}")

    clock.advance(30.0)
    print(f"  30 s without a heartbeat: 'coder-2' in reg -> {'coder-2' in reg}")

    worker = _Worker()
    reg.register("ephemeral", owner=worker)
    del worker
    gc.collect()
    print(f"  its owner object was collected: 'ephemeral' in reg -> {'ephemeral' in reg}")

    done = threading.Event()
    t = threading.Thread(target=done.wait)
    t.start()
    reg.register("threaded", owner=t)
    done.set()
    t.join()
    print(f"  its owner thread finished: reg.get('threaded') -> {reg.get('threaded')}")

    n = 20_000
    big = ferrule.Registry()
    ids = [f"agent-{i}" for i in range(n)]
    caps = [["search", "code"], ["plan"], ["search"]]
    t0 = time.perf_counter()
    for i, aid in enumerate(ids):
        big.register(aid, i, capabilities=caps[i % 3], node=f"n{i % 8}")
    t1 = time.perf_counter()
    lookup = big.lookup
    for aid in ids:
        lookup(aid)
    t2 = time.perf_counter()
    hits = big.ids(capability="search", node="n3")
    t3 = time.perf_counter()
    for aid in ids:
        big.unregister(aid)
    t4 = time.perf_counter()
    print(
        f"  {n} registers: {rate(n, t1 - t0)}; lookups: {rate(n, t2 - t1)}; "
        f"unregisters: {rate(n, t4 - t3)}; ids(capability, node) -> {len(hits)} ids "
        f"in {(t3 - t2) * 1e6:.0f} us"
    )
