"""SignalBus.publish beside blinker (synchronous signals) and a dict-of-lists dispatcher.

Each group publishes 1000 signals to one matching subscriber among a crowd of 1, 10 or
1000 subscribers (the rest subscribed to other types), plus a fan-out group where 10
subscribers match. ferrule's subscribers are pull subscriptions whose mailbox
(``drop_oldest``, 1024) keeps the newest signals; the peers' receivers append to a
``deque(maxlen=1024)``, the same bounded work. The peers route by exact name only;
ferrule matches patterns (``*``, ``#``) through its trie, and its crowd includes
wildcard patterns that do not match.

Run (release build): .venv/bin/python -m pytest benches/test_bus.py --benchmark-only
--benchmark-columns=min,median,ops -q
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import ferrule
import pytest

PUBLISHES = 1_000
MAILBOX = 1024
KINDS = ["ferrule.SignalBus", "blinker", "dict of lists"]


class DictDispatcher:
    """The hand-made peer: exact-name handlers in a dict of lists, called in publish."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Callable[[Any], object]]] = {}

    def subscribe(self, name: str, handler: Callable[[Any], object]) -> None:
        self.handlers.setdefault(name, []).append(handler)

    def publish(self, name: str, data: Any = None) -> int:
        handlers = self.handlers.get(name, ())
        for h in handlers:
            h(data)
        return len(handlers)


def crowd_names(crowd: int) -> list[str]:
    return [f"agent.{i}.error" for i in range(1, crowd)]


def setup(kind: str, crowd: int, matching: int) -> tuple[Callable[[str, Any], object], Any]:
    """A publish function for `kind` with `matching` subscribers of "agent.0.error" among
    `crowd` in all, and something that holds what the matching ones received."""
    others = crowd_names(crowd - matching + 1)
    if kind == "ferrule.SignalBus":
        bus = ferrule.SignalBus()
        subs = [bus.subscribe("agent.0.error", maxsize=MAILBOX) for _ in range(matching)]
        for i, name in enumerate(others):
            # Every tenth non-matching subscriber uses a wildcard pattern.
            bus.subscribe(f"{name.rsplit('.', 1)[0]}.*" if i % 10 == 9 else name, maxsize=4)
        return bus.publish, subs
    sinks = [collections.deque[Any](maxlen=MAILBOX) for _ in range(matching)]
    if kind == "blinker":
        blinker = pytest.importorskip("blinker")
        ns = blinker.Namespace()
        for sink in sinks:
            ns.signal("agent.0.error").connect(sink.append, weak=False)
        for name in others:
            ns.signal(name).connect(collections.deque[Any](maxlen=4).append, weak=False)

        def publish(name: str, data: Any) -> object:
            return ns.signal(name).send(data)

        return publish, sinks
    d = DictDispatcher()
    for sink in sinks:
        d.subscribe("agent.0.error", sink.append)
    for name in others:
        d.subscribe(name, collections.deque[Any](maxlen=4).append)
    return d.publish, sinks


def received(kind: str, holders: Any) -> list[int]:
    if kind == "ferrule.SignalBus":
        return [s.qsize() for s in holders]
    return [len(s) for s in holders]


def run_group(benchmark: Any, kind: str, crowd: int, matching: int) -> None:
    publish, holders = setup(kind, crowd, matching)

    def run() -> None:
        for i in range(PUBLISHES):
            publish("agent.0.error", i)

    benchmark(run)
    # Bounded: each holder keeps the newest signals, at most MAILBOX of them.
    assert all(min(MAILBOX, PUBLISHES) <= n <= MAILBOX for n in received(kind, holders))


@pytest.mark.benchmark(group="bus: publish x1000, 1 subscriber (matching)")
@pytest.mark.parametrize("kind", KINDS)
def test_publish_1(benchmark: Any, kind: str) -> None:
    run_group(benchmark, kind, 1, 1)


@pytest.mark.benchmark(group="bus: publish x1000, 1 matching of 10 subscribers")
@pytest.mark.parametrize("kind", KINDS)
def test_publish_10(benchmark: Any, kind: str) -> None:
    run_group(benchmark, kind, 10, 1)


@pytest.mark.benchmark(group="bus: publish x1000, 1 matching of 1000 subscribers")
@pytest.mark.parametrize("kind", KINDS)
def test_publish_1000(benchmark: Any, kind: str) -> None:
    run_group(benchmark, kind, 1000, 1)


@pytest.mark.benchmark(group="bus: publish x1000, 10 matching of 1000 subscribers")
@pytest.mark.parametrize("kind", KINDS)
def test_publish_fan_out(benchmark: Any, kind: str) -> None:
    run_group(benchmark, kind, 1000, 10)


@pytest.mark.benchmark(group="bus: publish x1000, nobody subscribed to the type (of 1000)")
@pytest.mark.parametrize("kind", KINDS)
def test_publish_unmatched(benchmark: Any, kind: str) -> None:
    publish, _ = setup(kind, 1000, 1)

    def run() -> None:
        for i in range(PUBLISHES):
            publish("agent.x.warning", i)

    benchmark(run)
