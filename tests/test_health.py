"""HealthMonitor: checks on a bounded pool with a shared timeout, liveness from owners and
leases, transitions updated and published once, lifecycle, bad input and churn."""

from __future__ import annotations

import gc
import logging
import random
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import ferrule
import pytest
from ferrule import Agent, HealthMonitor, ManualClock, QueueEmpty, Registry, SignalBus, Subscription

from tests.conftest import run_doctests, wait_until


def drain(sub: Subscription) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        try:
            out.append(sub.get_nowait().data)
        except QueueEmpty:
            return out


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown so a hanging check always returns."""
    ev = threading.Event()
    yield ev
    ev.set()


class Owner:
    pass


def test_docstring_examples() -> None:
    import ferrule._health as mod

    result = run_doctests(mod)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.smoke
def test_statuses_and_transitions_published_once() -> None:
    reg, bus = Registry(), SignalBus()
    status = {"a": "healthy", "b": "degraded", "c": "healthy"}
    for aid in status:
        reg.register(aid)
    sub = bus.subscribe("agent.*.health", maxsize=1000)
    mon = HealthMonitor(reg, check=lambda ag: status[ag.agent_id], bus=bus, timeout=1.0)
    try:
        assert mon.check_now() == {"a": "healthy", "b": "degraded", "c": "healthy"}
        assert drain(sub) == [{"agent_id": "b", "health": "degraded", "previous": "healthy"}]
        agent_b = reg.get("b")
        assert agent_b is not None and agent_b.health == "degraded"
        # No change: nothing published, however many rounds.
        mon.check_now()
        mon.check_now()
        assert drain(sub) == []
        status["a"] = "unhealthy"
        status["b"] = "healthy"
        assert mon.check_now() == {"a": "unhealthy", "b": "healthy", "c": "healthy"}
        got = sorted(drain(sub), key=lambda d: d["agent_id"])
        assert got == [
            {"agent_id": "a", "health": "unhealthy", "previous": "healthy"},
            {"agent_id": "b", "health": "healthy", "previous": "degraded"},
        ]
        assert mon.rounds == 4
    finally:
        mon.stop()


def test_signal_type_and_update_before_publish() -> None:
    reg, bus = Registry(), SignalBus()
    reg.register("x1")
    seen: list[tuple[str, str | None]] = []

    def handler(sig: ferrule.Signal) -> None:
        agent = reg.get(sig.data["agent_id"])
        seen.append((sig.type, None if agent is None else agent.health))

    sub = bus.subscribe("agent.#", handler, weak=False)
    with HealthMonitor(reg, check=lambda ag: "degraded", bus=bus, interval=60.0) as mon:
        mon.check_now()
        deadline = time.monotonic() + 5.0
        while not seen and time.monotonic() < deadline:
            time.sleep(0.005)
    sub.cancel()
    # The registry already held the new health when the signal was published.
    assert seen == [("agent.x1.health", "degraded")]


def test_failing_and_invalid_checks_are_unhealthy() -> None:
    reg = Registry()
    for aid in ("boom", "bad", "none", "ok"):
        reg.register(aid)

    def check(agent: Agent) -> object:
        if agent.agent_id == "boom":
            raise RuntimeError("down")
        if agent.agent_id == "bad":
            return "fine"
        if agent.agent_id == "none":
            return None
        return "healthy"

    with HealthMonitor(reg, check=check, interval=60.0) as mon:
        assert mon.check_now() == {
            "boom": "unhealthy",
            "bad": "unhealthy",
            "none": "unhealthy",
            "ok": "healthy",
        }
    assert sorted(reg.ids(health="unhealthy")) == ["bad", "boom", "none"]


class Healthy(str):
    """A str subclass equal to "healthy": not a plain result."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


def test_round_reads_ids_and_healths_in_one_pass() -> None:
    reg = Registry()
    for i, health in enumerate(["healthy", "degraded", "unhealthy", "odd", "healthy"]):
        reg.register(f"a{i}", i, health=health)
    agents, ids, healths = reg._health_round()
    assert ids == [a.agent_id for a in agents] and healths == [a.health for a in agents]
    assert sorted(ids) == [f"a{i}" for i in range(5)]
    # Equal healths are one (interned) str, so a check returning a literal matches by identity.
    firsts = {h: h for h in healths}
    assert all(h is firsts[h] for h in healths) and "healthy" in firsts
    assert firsts["healthy"] is "healthy"  # noqa: F632 - identity is the point


def test_plain_statuses_are_decided_in_one_pass_or_left_to_the_general_path() -> None:
    from ferrule._native import _health_statuses

    ids, healths = ["a", "b", "c"], ["healthy", "healthy", "degraded"]
    got = _health_statuses(ids, ["healthy", "unhealthy", "degraded"], healths)
    assert got == ({"a": "healthy", "b": "unhealthy", "c": "degraded"}, [1])
    from ferrule._health import CHECK_RESULTS

    for result in CHECK_RESULTS:  # the native list is the monitor's
        assert _health_statuses(["a"], [result], [result]) == ({"a": result}, [])
    # Anything but an exact str among the three results: None (nothing decided).
    for odd in ("fine", None, Healthy("healthy"), b"healthy", 1):
        assert _health_statuses(ids, ["healthy", odd, "degraded"], healths) is None
    # A health that is not a plain str (or not equal) counts as changed.
    assert _health_statuses(["a"], ["healthy"], [Healthy("x")])[1] == [0]  # type: ignore[index]
    with pytest.raises(ValueError, match="same length"):
        _health_statuses(ids, ["healthy"], healths)
    with pytest.raises(TypeError):
        _health_statuses(tuple(ids), ["healthy"] * 3, healths)  # type: ignore[arg-type]


def test_a_result_that_only_pretends_to_be_a_status_is_not_taken_as_one() -> None:
    reg = Registry()
    reg.register("a", health="degraded")
    reg.register("b")
    with HealthMonitor(reg, check=lambda agent: Healthy("nope"), interval=60.0) as mon:
        assert mon.check_now() == {"a": "unhealthy", "b": "unhealthy"}
    assert sorted(reg.ids(health="unhealthy")) == ["a", "b"]


def test_reregistered_agents_in_a_new_order_are_not_gone() -> None:
    reg, bus = Registry(), SignalBus()
    for aid in "abcdef":
        reg.register(aid)
    sub = bus.subscribe("agent.*.health")
    with HealthMonitor(reg, check=lambda agent: "healthy", bus=bus, interval=60.0) as mon:
        assert mon.check_now() == dict.fromkeys("abcdef", "healthy")
        for aid in "fedcba":  # same agents, fresh entries: the registry's order may change
            reg.unregister(aid)
            reg.register(aid)
        assert mon.check_now() == dict.fromkeys("abcdef", "healthy")
        reg.unregister("c")
        assert mon.check_now() == {**dict.fromkeys("abdef", "healthy"), "c": "gone"}
        assert drain(sub) == [{"agent_id": "c", "health": "gone", "previous": "healthy"}]
        assert mon.check_now() == dict.fromkeys("abdef", "healthy")
        assert sorted(mon._known[0]) == list("abdef")


def test_hanging_check_does_not_delay_the_others(release: threading.Event) -> None:
    reg, bus = Registry(), SignalBus()
    for i in range(50):
        reg.register(f"a{i}")
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def check(agent: Agent) -> str:
        with lock:
            calls[agent.agent_id] = calls.get(agent.agent_id, 0) + 1
        if agent.agent_id == "a7":
            release.wait(30.0)
        elif agent.agent_id == "a8":
            time.sleep(0.02)  # slow but within the timeout
        return "healthy"

    sub = bus.subscribe("agent.#", maxsize=1000)
    timeout = 0.2
    mon = HealthMonitor(reg, check=check, timeout=timeout, bus=bus, max_workers=8)
    try:
        t0 = time.monotonic()
        result = mon.check_now()
        elapsed = time.monotonic() - t0
        # The round ended after about `timeout` (one shared deadline), not 50 x anything.
        assert timeout * 0.9 <= elapsed < timeout + 1.0
        assert result["a7"] == "unresponsive"
        assert all(result[f"a{i}"] == "healthy" for i in range(50) if i != 7)
        assert drain(sub) == [{"agent_id": "a7", "health": "unresponsive", "previous": "healthy"}]
        # Still hanging: not resubmitted, stays unresponsive, nothing published again,
        # and the round no longer waits for it.
        t0 = time.monotonic()
        assert mon.check_now()["a7"] == "unresponsive"
        assert time.monotonic() - t0 < timeout + 1.0
        assert calls["a7"] == 1 and calls["a0"] == 2
        assert drain(sub) == []
        # Once it returns, the next round checks it again.
        release.set()
        deadline = time.monotonic() + 5.0
        while not all(f.done() for f in mon._inflight.values()) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert mon.check_now()["a7"] == "healthy"
        assert calls["a7"] == 2
        assert drain(sub) == [{"agent_id": "a7", "health": "healthy", "previous": "unresponsive"}]
    finally:
        mon.stop()


def test_instant_checks_run_back_to_back_on_one_worker() -> None:
    reg = Registry()
    for i in range(200):
        reg.register(f"a{i}", health="degraded" if i % 2 else "healthy")
    threads: set[str] = set()

    def check(agent: Agent) -> str:
        threads.add(threading.current_thread().name)
        return "healthy" if agent.agent_id != "a5" else "unhealthy"

    mon = HealthMonitor(reg, check=check, timeout=5.0, max_workers=8)
    try:
        for _ in range(3):
            result = mon.check_now()
            assert result == {f"a{i}": "unhealthy" if i == 5 else "healthy" for i in range(200)}
            assert reg.count(health="healthy") == 199
        # One hand-off per round, not one per agent.
        pool = mon._pool
        assert pool is not None
        assert pool.stats().submitted == 3
        assert len(threads) == 1 and threading.current_thread().name not in threads
    finally:
        mon.stop()


def test_the_checks_after_a_hanging_one_move_to_another_worker(
    release: threading.Event,
) -> None:
    reg = Registry()
    for i in range(30):
        reg.register(f"a{i}")
    order = [a.agent_id for a in reg.find()]  # the order a round checks them in
    hang, fail = order[10], order[20]
    ran_on: dict[str, str] = {}

    def check(agent: Agent) -> str:
        ran_on[agent.agent_id] = threading.current_thread().name
        if agent.agent_id == hang:
            release.wait(30.0)
        if agent.agent_id == fail:
            raise RuntimeError("down")
        return "healthy"

    timeout = 0.3
    mon = HealthMonitor(reg, check=check, timeout=timeout, max_workers=4)
    try:
        t0 = time.monotonic()
        result = mon.check_now()
        elapsed = time.monotonic() - t0
        assert timeout * 0.9 <= elapsed < timeout + 1.0  # bounded by the timeout
        expected = dict.fromkeys(order, "healthy")
        expected.update({hang: "unresponsive", fail: "unhealthy"})
        assert result == expected
        # Every check ran; those after the hanging one on other workers.
        assert set(ran_on) == set(order)
        assert len({ran_on[aid] for aid in order[:10]}) == 1
        assert all(ran_on[aid] != ran_on[hang] for aid in order[11:])
        assert hang in mon._inflight
        release.set()
        assert wait_until(lambda: all(f.done() for f in mon._inflight.values()))
        assert mon.check_now()[hang] == "healthy"
    finally:
        mon.stop()


def test_queued_checks_past_the_timeout_are_cancelled(release: threading.Event) -> None:
    reg = Registry()
    for i in range(4):
        reg.register(f"a{i}")
    started: list[str] = []

    def check(agent: Agent) -> str:
        started.append(agent.agent_id)
        release.wait(30.0)
        return "healthy"

    mon = HealthMonitor(reg, check=check, timeout=0.05, max_workers=1)
    try:
        result = mon.check_now()
        assert set(result.values()) == {"unresponsive"}
        release.set()
        deadline = time.monotonic() + 5.0
        while not all(f.done() for f in mon._inflight.values()) and time.monotonic() < deadline:
            time.sleep(0.005)
        # Only the first check ever ran: the queued ones were cancelled at the deadline.
        assert len(started) == 1
        assert mon.check_now() == {f"a{i}": "healthy" for i in range(4)}
    finally:
        mon.stop()


def test_owner_death_publishes_gone() -> None:
    reg, bus = Registry(), SignalBus()
    owner = Owner()
    reg.register("owned", owner=owner)
    reg.register("stays")
    sub = bus.subscribe("agent.*.health")
    # Rounds by check_now only: a started monitor's own first round could otherwise run
    # after the owner's death and report it first.
    mon = HealthMonitor(reg, check=lambda ag: "degraded", bus=bus, interval=60.0)
    try:
        assert mon.check_now() == {"owned": "degraded", "stays": "degraded"}
        assert len(drain(sub)) == 2
        del owner
        gc.collect()
        assert mon.check_now() == {"owned": "gone", "stays": "degraded"}
        assert drain(sub) == [{"agent_id": "owned", "health": "gone", "previous": "degraded"}]
        # Reported once: the next round no longer knows it.
        assert mon.check_now() == {"stays": "degraded"}
        assert drain(sub) == []
    finally:
        mon.stop()


def test_lease_expiry_with_manual_clock_publishes_gone() -> None:
    clock = ManualClock()
    reg, bus = Registry(clock=clock), SignalBus()
    reg.register("leased", ttl=10.0)
    reg.register("kept", ttl=10.0)
    sub = bus.subscribe("agent.leased.health")
    mon = HealthMonitor(reg, bus=bus, clock=clock)  # no check: liveness only
    try:
        assert mon.check_now() == {"leased": "healthy", "kept": "healthy"}
        assert mon.last_round == 0.0
        clock.advance(9.0)
        assert reg.heartbeat("kept")
        clock.advance(2.0)
        assert mon.check_now() == {"leased": "gone", "kept": "healthy"}
        assert mon.last_round == 11.0
        assert drain(sub) == [{"agent_id": "leased", "health": "gone", "previous": "healthy"}]
    finally:
        mon.stop()


def test_unregistered_agent_is_gone_and_vanishing_during_a_round_is_tolerated() -> None:
    reg, bus = Registry(), SignalBus()
    reg.register("v")
    reg.register("w")
    sub = bus.subscribe("agent.*.health")

    def check(agent: Agent) -> str:
        if agent.agent_id == "v":
            reg.unregister("v")  # vanishes before the monitor updates it
        return "degraded"

    mon = HealthMonitor(reg, check=check, bus=bus)
    try:
        assert mon.check_now() == {"v": "degraded", "w": "degraded"}
        # The update of "v" failed quietly: only "w" changed.
        assert drain(sub) == [{"agent_id": "w", "health": "degraded", "previous": "healthy"}]
        assert mon.check_now() == {"v": "gone", "w": "degraded"}
        assert drain(sub) == [{"agent_id": "v", "health": "gone", "previous": "healthy"}]
    finally:
        mon.stop()


def test_monitor_thread_runs_rounds_on_its_interval() -> None:
    reg, bus = Registry(), SignalBus()
    reg.register("a")
    state = {"s": "healthy"}
    sub = bus.subscribe("agent.a.health")
    with HealthMonitor(reg, interval=0.02, check=lambda ag: state["s"], bus=bus) as mon:
        assert mon.running
        state["s"] = "degraded"
        sig = sub.get(timeout=5.0)
        assert sig.data == {"agent_id": "a", "health": "degraded", "previous": "healthy"}
        deadline = time.monotonic() + 5.0
        while mon.rounds < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mon.rounds >= 3
    assert not mon.running
    assert sub.qsize() == 0  # the change was published once over all those rounds


def test_start_stop_context_manager_restore_thread_count() -> None:
    reg = Registry()
    for i in range(20):
        reg.register(f"a{i}")
    before = threading.active_count()
    mon = HealthMonitor(reg, interval=0.01, check=lambda ag: "healthy", max_workers=4)
    mon.start()
    with pytest.raises(RuntimeError, match=r"^HealthMonitor is already running$"):
        mon.start()
    deadline = time.monotonic() + 5.0
    while mon.rounds < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert threading.active_count() > before
    mon.stop()
    mon.stop()  # idempotent
    assert not mon.running
    assert threading.active_count() == before
    # Restartable, and as a context manager.
    with mon:
        assert mon.running
        mon.check_now()
    assert threading.active_count() == before
    # check_now without start also releases its workers on stop().
    mon2 = HealthMonitor(reg, check=lambda ag: "healthy", max_workers=4)
    mon2.check_now()
    mon2.stop()
    assert threading.active_count() == before


def test_stop_does_not_wait_for_a_hanging_check(release: threading.Event) -> None:
    reg = Registry()
    reg.register("h")
    mon = HealthMonitor(
        reg, interval=60.0, timeout=0.1, check=lambda ag: release.wait(30.0) and "healthy"
    )
    mon.start()
    deadline = time.monotonic() + 5.0
    while mon.rounds < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    t0 = time.monotonic()
    mon.stop()
    assert time.monotonic() - t0 < 1.0
    assert reg.get("h") is not None
    agent = reg.get("h")
    assert agent is not None and agent.health == "unresponsive"


def test_without_check_statuses_are_the_registry_health() -> None:
    reg = Registry()
    reg.register("a", health="degraded")
    reg.register("b")
    mon = HealthMonitor(reg)
    assert mon.check_now() == {"a": "degraded", "b": "healthy"}
    assert mon.last_round is not None
    mon.stop()


def test_round_errors_are_logged_and_the_thread_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg, bus = Registry(), SignalBus()
    reg.register("*")  # the bus refuses "agent.*.health" as a signal type
    reg.register("ok")
    sub = bus.subscribe("agent.#")
    with caplog.at_level(logging.ERROR, logger="ferrule.health"):
        mon = HealthMonitor(reg, check=lambda ag: "degraded", bus=bus)
        mon.check_now()
        mon.stop()
    assert [d["agent_id"] for d in drain(sub)] == ["ok"]
    assert "cannot publish the health of agent '*'" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({"interval": 0}, ValueError, "interval must be > 0 and finite"),
        ({"interval": -1.0}, ValueError, "interval must be > 0 and finite"),
        ({"interval": float("nan")}, ValueError, "interval must be > 0 and finite"),
        ({"interval": float("inf")}, ValueError, "interval must be > 0 and finite"),
        ({"interval": "5"}, TypeError, "interval must be a number, not 'str'"),
        ({"interval": True}, TypeError, "interval must be a number, not 'bool'"),
        ({"timeout": 0.0}, ValueError, "timeout must be > 0 and finite"),
        ({"timeout": None}, TypeError, "timeout must be a number, not 'NoneType'"),
        ({"check": 3}, TypeError, "check must be callable or None, not 'int'"),
        ({"bus": object()}, TypeError, "bus must be a ferrule.SignalBus or None, not 'object'"),
        (
            {"clock": 1.0},
            TypeError,
            "clock must be a ferrule.ManualClock or None, not 'float'",
        ),
        ({"max_workers": 0}, ValueError, "max_workers must be >= 1"),
        ({"max_workers": 2.0}, TypeError, "max_workers must be an int, not 'float'"),
        # A finite interval or timeout too long to wait for was accepted, and the monitor
        # thread (or every round) then died of OverflowError in Event.wait.
        ({"interval": 1e300}, ValueError, "interval is too large"),
        ({"interval": 2**70}, ValueError, "interval is too large"),
        ({"timeout": 4.1e9}, ValueError, "timeout is too large"),
        ({"interval": 10**400}, OverflowError, "interval is out of range"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], exc: type[Exception], msg: str) -> None:
    with pytest.raises(exc) as info:
        HealthMonitor(Registry(), **kwargs)
    assert str(info.value) == msg


def test_bad_registry() -> None:
    with pytest.raises(TypeError) as info:
        HealthMonitor({})  # type: ignore[arg-type]
    assert str(info.value) == "registry must be a ferrule.Registry, not 'dict'"


def test_churn_while_the_monitor_runs(threads: int, stress_scale: int) -> None:
    reg, bus = Registry(), SignalBus()
    sub = bus.subscribe("agent.#", maxsize=1_000_000)

    def check(agent: Agent) -> str:
        # Deterministic per agent, so every agent settles on one status.
        return ("healthy", "degraded", "unhealthy")[hash(agent.agent_id) % 3]

    n_per_thread = 200 * stress_scale
    registered: set[str] = set()
    removed: set[str] = set()
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def churn(w: int) -> None:
        rng = random.Random(w)
        mine: list[str] = []
        barrier.wait()
        k = 0
        # n_per_thread agents each, more (bounded) until the monitor has run 10 rounds.
        while k < n_per_thread or (mon.rounds < 10 and k < 4 * n_per_thread):
            k += 1
            aid = f"w{w}-{k}"  # unique ids: each agent's history is one chain
            reg.register(aid)
            mine.append(aid)
            with lock:
                registered.add(aid)
            if rng.random() < 0.5:
                victim = mine.pop(rng.randrange(len(mine)))
                assert reg.unregister(victim)
                with lock:
                    removed.add(victim)
            if k % 20 == 0:
                time.sleep(0.001)

    mon = HealthMonitor(reg, interval=0.005, check=check, bus=bus, timeout=2.0, max_workers=4)
    workers = [threading.Thread(target=churn, args=(w,)) for w in range(threads)]
    with mon:
        for t in workers:
            t.start()
        barrier.wait()
        for t in workers:
            t.join()
        mon.check_now()  # everything left is settled by this round
    final = mon.check_now()
    mon.stop()
    assert mon.rounds >= 3
    assert len(removed) > 0

    live = registered - removed
    assert set(reg.ids()) == live
    for aid in live:
        agent = reg.get(aid)
        assert agent is not None and agent.health == check(agent)
        assert final[aid] == agent.health
    # Each agent's published transitions form one chain: previous == the last health,
    # at most one "gone", always last, and only for removed agents.
    last: dict[str, str] = {}
    for data in drain(sub):
        aid = data["agent_id"]
        assert data["health"] != data["previous"]
        assert data["previous"] == last.get(aid, "healthy")
        assert last.get(aid) != "gone"
        last[aid] = data["health"]
        if data["health"] == "gone":
            assert aid in removed
    for aid in live:
        assert last.get(aid, "healthy") == final[aid]
    assert not set(mon._known[0]) - live
    assert "gone" in last.values()


# ---- ownership -------------------------------------------------------------------------------


class Canary:
    """Something whose collection a weak reference can observe."""


def test_monitor_dropped_without_stop_is_collected_and_its_thread_ends() -> None:
    """`self.monitor = HealthMonitor(reg, check=self.check)` started and then dropped
    without `stop()`: the monitor thread ran a bound method of the monitor, so the
    monitor, its check's object and the thread lived (and ran rounds) forever."""
    reg = Registry()
    reg.register("a1")
    before = {t.ident for t in threading.enumerate()}

    class Service:
        def __init__(self) -> None:
            self.canary = Canary()
            self.checked = threading.Event()
            self.monitor = HealthMonitor(reg, interval=0.01, check=self.check, timeout=1.0)
            self.monitor.start()

        def check(self, agent: Agent) -> str:
            self.checked.set()
            return "healthy"

    s = Service()
    assert s.checked.wait(5.0)
    gone = weakref.ref(s.canary)
    del s
    deadline = time.monotonic() + 5.0
    while gone() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert gone() is None
    # The monitor thread and the check workers end by themselves.
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t.ident not in before]
        if not extra:
            break
        time.sleep(0.01)
    assert [t.name for t in threading.enumerate() if t.ident not in before] == []
