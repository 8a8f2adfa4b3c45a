"""Demo step: SignalBus."""

from __future__ import annotations

import gc
import threading
import time

import ferrule
from ferrule._demos import rate


class _Agent:
    def __init__(self) -> None:
        self.seen = 0

    def on_error(self, sig: ferrule.Signal) -> None:
        self.seen += 1


def run() -> None:
    print("== SignalBus: pattern routing, a bounded mailbox per subscription, weak handlers")
    bus = ferrule.SignalBus()
    errors = bus.subscribe("agent.*.error")
    everything = bus.subscribe("#", maxsize=16)
    for ty in ("agent.42.error", "agent.42.ok", "agent.7.error"):
        print(f"  publish({ty!r}) -> accepted by {bus.publish(ty, {'id': ty.split('.')[1]})}")
    got = [errors.get_nowait().type for _ in range(errors.qsize())]
    print(f"  'agent.*.error' got {got}; '#' holds {everything.qsize()} signals")

    # A slow handler does not slow the publisher: its mailbox drops the oldest signals.
    release = threading.Event()
    slow = bus.subscribe("tick", lambda sig: release.wait(), maxsize=8)
    t0 = time.perf_counter()
    for i in range(10_000):
        bus.publish("tick", i)
    elapsed = time.perf_counter() - t0
    s = slow.stats()
    print(
        f"  10000 publishes to a stuck handler (maxsize 8): {rate(10_000, elapsed)}, "
        f"delivered={s.delivered} queued={s.queued} dropped={s.dropped}"
    )
    release.set()
    slow.cancel()

    # A handler may publish on the bus that called it: delivery is asynchronous.
    done = threading.Event()
    relay = bus.subscribe("ping", lambda sig: bus.publish("pong", sig.data), weak=False)
    pong = bus.subscribe("pong", lambda sig: done.set())
    bus.publish("ping", 1)
    print(f"  handler re-publishing on the same bus: pong received = {done.wait(5)}")
    relay.cancel()
    pong.cancel()

    agent = _Agent()
    weak = bus.subscribe("agent.#", agent.on_error)
    del agent
    gc.collect()
    print(f"  bound-method handler whose object was collected: cancelled = {weak.cancelled}")

    # Routing cost does not grow with non-matching subscriptions.
    crowd = ferrule.SignalBus()
    target = crowd.subscribe("svc.0.event", maxsize=1024)
    n = 100_000
    figures = []
    for size in (1, 1000):
        for i in range(1, size):
            crowd.subscribe(f"svc.{i}.event", maxsize=1)
        publish = crowd.publish
        t0 = time.perf_counter()
        for i in range(n):
            publish("svc.0.event", i)
        figures.append((size, time.perf_counter() - t0))
    print(
        "  publish to 1 match among "
        + ", among ".join(f"{size} subscriptions: {rate(n, secs)}" for size, secs in figures)
    )
    target.cancel()
    for sub in bus.subscriptions():
        sub.cancel()
