"""Registry under threads: every result matches its criteria; at rest the indexes are exact."""

from __future__ import annotations

import gc
import random
import threading

from ferrule import AlreadyRegistered, Registry

CAPS = ["search", "code", "plan", "chat"]
NODES = ["n1", "n2", "n3"]
HEALTH = ["healthy", "degraded"]


def test_readers_only_see_matching_agents_while_writers_churn(
    threads: int, stress_scale: int
) -> None:
    reg = Registry()
    writers = max(2, threads // 2)
    readers = max(2, threads - writers)
    rounds = 1500 * stress_scale
    stop = threading.Event()
    errors: list[str] = []
    barrier = threading.Barrier(writers + readers)

    def writer(w: int) -> None:
        rng = random.Random(w)
        barrier.wait()
        for _ in range(rounds):
            # Ids are shared between writers, so writes to one id race.
            aid = f"a{rng.randrange(40)}"
            caps = rng.sample(CAPS, rng.randrange(3))
            op = rng.random()
            try:
                if op < 0.4:
                    reg.register(
                        aid,
                        capabilities=caps,
                        node=rng.choice(NODES),
                        health=rng.choice(HEALTH),
                        metadata={"w": w, "load": rng.randrange(10)},
                    )
                elif op < 0.7:
                    reg.update(
                        aid,
                        capabilities=caps,
                        node=rng.choice(NODES),
                        health=rng.choice(HEALTH),
                        metadata={"w": w, "load": rng.randrange(10)},
                    )
                else:
                    reg.unregister(aid)
            except (AlreadyRegistered, KeyError):
                pass

    def reader(r: int) -> None:
        rng = random.Random(1000 + r)
        barrier.wait()
        while not stop.is_set():
            cap, node, health = rng.choice(CAPS), rng.choice(NODES), rng.choice(HEALTH)
            for a in reg.find(capability=cap):
                if cap not in a.capabilities:
                    errors.append(f"{a} lacks {cap}")
            for a in reg.find(node=node, health=health):
                if a.node != node or a.health != health:
                    errors.append(f"{a} is not on {node}/{health}")
            for a in reg.find(capability=cap, where=[("load", "lt", 5)]):
                if cap not in a.capabilities or not a.metadata["load"] < 5:
                    errors.append(f"{a} fails where")

    ws = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    rs = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
    for t in ws + rs:
        t.start()
    for t in ws:
        t.join()
    stop.set()
    for t in rs:
        t.join()
    assert errors == []

    # At rest, each index query equals a scan of the entries.
    agents = {a.agent_id: a for a in reg.find()}
    assert len(reg) == len(agents)
    for cap in CAPS:
        expected = {i for i, a in agents.items() if cap in a.capabilities}
        assert set(reg.ids(capability=cap)) == expected
    for node in NODES:
        assert set(reg.ids(node=node)) == {i for i, a in agents.items() if a.node == node}
    for h in HEALTH:
        assert set(reg.ids(health=h)) == {i for i, a in agents.items() if a.health == h}
    for aid in agents:
        assert reg.unregister(aid)
    assert reg._index_sizes() == (0, 0, 0, 0)


def test_racing_registrations_one_winner_and_losers_leave_no_watch(threads: int) -> None:
    class Owner:
        pass

    def attempt(
        reg: Registry, owners: list[Owner], wins: list[int], barrier: threading.Barrier, i: int
    ) -> None:
        barrier.wait()
        try:
            reg.register("contested", i, capabilities=[f"c{i}"], owner=owners[i])
            wins.append(i)
        except AlreadyRegistered:
            pass

    for _ in range(20):
        reg = Registry()
        owners = [Owner() for _ in range(threads)]
        wins: list[int] = []
        barrier = threading.Barrier(threads)
        ts = [
            threading.Thread(target=attempt, args=(reg, owners, wins, barrier, i))
            for i in range(threads)
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(wins) == 1
        winner = wins[0]
        # Every loser's owner dies: the winner's entry must stay.
        for i in range(threads):
            if i != winner:
                owners[i] = None  # type: ignore[call-overload]
        gc.collect()
        assert reg.lookup("contested") == winner
        assert reg._index_sizes() == (1, 0, 1, 0)
        owners.clear()
        gc.collect()
        assert "contested" not in reg
        assert reg._index_sizes() == (0, 0, 0, 0)


def test_owner_death_and_unregister_race_cleans_up_exactly_once(threads: int) -> None:
    reg = Registry()

    class Owner:
        pass

    owners = {f"o{i}": Owner() for i in range(200 * threads)}
    for aid in owners:
        reg.register(aid, capabilities=["c"], owner=owners[aid])
    keys = list(owners)
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        barrier.wait()
        for aid in keys[t::threads]:
            if hash(aid) % 2:
                reg.unregister(aid)
            else:
                owners.pop(aid, None)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    owners.clear()
    gc.collect()
    assert len(reg) == 0
    assert reg._index_sizes() == (0, 0, 0, 0)


def test_update_is_one_step_for_readers(threads: int, stress_scale: int) -> None:
    reg = Registry()
    states = [
        (frozenset({"x"}), "n1", "healthy", {"v": 1}),
        (frozenset({"y", "z"}), "n2", "degraded", {"v": 2}),
    ]
    for i in range(8):
        caps, node, health, meta = states[0]
        reg.register(f"a{i}", capabilities=caps, node=node, health=health, metadata=meta)
    stop = threading.Event()
    errors: list[str] = []

    def writer(w: int) -> None:
        for n in range(2000 * stress_scale):
            caps, node, health, meta = states[(n + w) % 2]
            reg.update(f"a{n % 8}", capabilities=caps, node=node, health=health, metadata=meta)

    def reader() -> None:
        while not stop.is_set():
            for a in reg.find():
                seen = (a.capabilities, a.node, a.health, dict(a.metadata))
                if seen not in states:
                    errors.append(repr(seen))

    ws = [threading.Thread(target=writer, args=(i,)) for i in range(max(2, threads // 2))]
    rs = [threading.Thread(target=reader) for _ in range(max(2, threads // 2))]
    for t in ws + rs:
        t.start()
    for t in ws:
        t.join()
    stop.set()
    for t in rs:
        t.join()
    assert errors == []
    for caps, node, _, _ in states:
        expected = {a.agent_id for a in reg.find() if a.node == node}
        assert set(reg.ids(node=node)) == expected
        for c in caps:
            assert set(reg.ids(capability=c)) == {
                a.agent_id for a in reg.find() if c in a.capabilities
            }
