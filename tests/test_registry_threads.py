"""Registry under threads: every result matches its criteria and holds each agent once; at
rest the indexes are exact."""

from __future__ import annotations

import gc
import random
import threading
from collections.abc import Callable
from typing import Any

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
            found = reg.find(capability=cap)
            for a in found:
                if cap not in a.capabilities:
                    errors.append(f"{a} lacks {cap}")
            # Each writer thread files its registrations apart: an id re-registered by
            # another writer while this query reads is still answered once.
            for ids in ([a.agent_id for a in found], reg.ids(capability=cap)):
                if len(set(ids)) != len(ids):
                    errors.append(f"an agent twice in {sorted(ids)}")
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


def test_agents_registered_on_many_threads_are_each_found_once(threads: int) -> None:
    reg = Registry()
    per_thread = 300
    barrier = threading.Barrier(threads)

    def register(t: int) -> None:
        barrier.wait()
        for n in range(per_thread):
            reg.register(f"t{t}-{n}", n, capabilities=["x", f"c{n % 3}"], node=f"n{n % 2}")

    ts = [threading.Thread(target=register, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    everyone = {f"t{t}-{n}" for t in range(threads) for n in range(per_thread)}
    ids = reg.ids(capability="x")
    assert len(ids) == len(everyone) and set(ids) == everyone
    assert reg.count(capability="x") == len(everyone)
    assert sorted(a.agent_id for a in reg.find(capability="x")) == sorted(everyone)
    c1 = {i for i in everyone if int(i.split("-")[1]) % 3 == 1}
    assert sorted(reg.ids(capability="c1")) == sorted(c1)
    assert reg.count(capability="c1", node="n0") == len(
        [i for i in c1 if int(i.split("-")[1]) % 2 == 0]
    )
    # Unregistered from other threads than registered them: every row leaves.
    half = sorted(everyone)
    ts = [
        threading.Thread(target=lambda part=half[k::threads]: [reg.unregister(i) for i in part])
        for k in range(threads)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(reg) == 0 and reg._index_sizes() == (0, 0, 0, 0)


def test_repeated_find_under_writers_shows_current_agents(threads: int, stress_scale: int) -> None:
    # Enough agents of one capability for find to keep its answer between calls.
    reg = Registry()
    ids = [f"a{i}" for i in range(48)]
    for i, aid in enumerate(ids):
        reg.register(aid, i, capabilities=["x"], metadata={"n": 0}, ttl=600.0)
    writers = max(1, threads // 2)
    readers = max(1, threads - writers)
    rounds = 400 * stress_scale
    stop = threading.Event()
    errors: list[str] = []
    barrier = threading.Barrier(writers + readers)

    def writer(w: int) -> None:
        rng = random.Random(w)
        barrier.wait()
        for n in range(rounds):
            aid = rng.choice(ids)
            op = rng.random()
            try:
                if op < 0.5:
                    reg.update(aid, health=rng.choice(HEALTH), metadata={"n": n})
                elif op < 0.8:
                    reg.heartbeat(aid)
                elif op < 0.9:
                    reg.unregister(aid)
                else:
                    reg.register(aid, w, capabilities=["x"], metadata={"n": n}, ttl=600.0)
            except (AlreadyRegistered, KeyError):
                pass

    def reader() -> None:
        barrier.wait()
        while not stop.is_set():
            found = reg.find(capability="x")
            seen = [a.agent_id for a in found]
            if len(set(seen)) != len(seen):
                errors.append(f"an agent twice in {sorted(seen)}")
            for a in found:
                if "x" not in a.capabilities or a.health not in HEALTH:
                    errors.append(f"{a} does not match")

    ws = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    rs = [threading.Thread(target=reader) for _ in range(readers)]
    for t in ws + rs:
        t.start()
    for t in ws:
        t.join()
    stop.set()
    for t in rs:
        t.join()
    assert errors == []
    # At rest, kept or not, every Agent shows its entry as it is now.
    for _ in range(2):
        found = {a.agent_id: a for a in reg.find(capability="x")}
        assert set(found) == {aid for aid in ids if aid in reg}
        for aid, a in found.items():
            now = reg.get(aid)
            assert now is not None
            assert (a.health, dict(a.metadata), a.expires_at, a.value) == (
                now.health,
                dict(now.metadata),
                now.expires_at,
                now.value,
            )


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


# ---- arguments another thread changes meanwhile ----------------------------------------


def _run_with_mutators(
    mutators: list[Callable[[int], None]],
    work: Callable[[int, int], None],
    workers: int,
    rounds: int,
) -> list[BaseException]:
    """Runs `work(worker, round)` on `workers` threads while every mutator runs in a
    loop on a thread of its own; returns what the workers raised beyond ordinary
    exceptions (a PanicException is a BaseException, not an Exception)."""
    stop = threading.Event()
    barrier = threading.Barrier(workers + len(mutators))
    bad: list[BaseException] = []

    def mutate(m: Callable[[int], None]) -> None:
        barrier.wait()
        i = 0
        while not stop.is_set():
            m(i)
            i += 1

    def run(w: int) -> None:
        barrier.wait()
        for r in range(rounds):
            try:
                work(w, r)
            except Exception:  # an ordinary refusal is allowed
                pass
            except BaseException as e:  # PanicException
                bad.append(e)
                return

    ms = [threading.Thread(target=mutate, args=(m,)) for m in mutators]
    ws = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for t in ms + ws:
        t.start()
    for t in ws:
        t.join()
    stop.set()
    for t in ms:
        t.join()
    return bad


def test_arguments_resized_by_other_threads_never_panic(threads: int, stress_scale: int) -> None:
    """Metadata dicts nested several levels deep, lists inside metadata, where values
    (lists, sets, dicts) and capabilities (a set, a list) resized by other threads
    while register, register_many, update, find, count and ids read them: each call
    succeeds or raises an ordinary exception, never PanicException (guards against
    PyO3's dict iterator panicking with "dictionary changed size during iteration" on
    free-threaded builds)."""
    inner: dict[str, Any] = {"k": 0}
    items: list[Any] = [0, {"n": 1}]
    meta = {"a": {"b": {"c": {"d": inner}}, "items": items}, "top": items}
    caps_set = {"c0", "c1"}
    caps_list = ["c0", "c1"]
    in_list: list[Any] = [0, 1]
    in_set = {0, 1}
    eq_dict: dict[str, Any] = {"d": inner}

    def grow_and_shrink(i: int) -> None:
        inner[f"x{i % 64}"] = i
        inner.pop(f"x{(i + 32) % 64}", None)
        items.append({"i": i})
        if len(items) > 40:
            del items[2:30]

    def churn_where(i: int) -> None:
        in_list.append(i % 50)
        in_set.add(i % 50)
        eq_dict[f"k{i % 16}"] = i
        if len(in_list) > 40:
            del in_list[2:]
            in_set.difference_update(range(2, 50))
            eq_dict.clear()
            eq_dict["d"] = inner

    def churn_caps(i: int) -> None:
        caps_set.add(f"c{i % 30}")
        caps_set.discard(f"c{(i + 15) % 30}")
        caps_list.append(f"c{i % 30}")
        if len(caps_list) > 30:
            del caps_list[2:]

    reg = Registry()

    def work(w: int, r: int) -> None:
        aid = f"w{w}-{r % 20}"
        step = r % 6
        if step == 0:
            reg.unregister(aid)
            reg.register(aid, capabilities=caps_set, metadata=meta)
        elif step == 1:
            reg.update(aid, capabilities=caps_list, metadata=meta)
        elif step == 2:
            reg.find(
                capability="c1",
                where=[
                    ("a.b.c.d.k", "in", in_list),
                    ("top", "in", in_set),
                    ("a.items", "ne", items),
                ],
            )
        elif step == 3:
            reg.count(where=[("a.b.c.d", "eq", eq_dict), ("a.b.c.d.k", "not_in", in_set)])
        elif step == 4:
            reg.ids(where=[("top", "eq", items), ("a.b.c", "ne", {"d": inner})])
        else:
            ids = [f"{aid}-m{j}" for j in range(3)]
            for i in ids:
                reg.unregister(i)
            reg.register_many(
                [{"agent_id": i, "capabilities": caps_set, "metadata": meta} for i in ids]
            )

    bad = _run_with_mutators(
        [grow_and_shrink, churn_where, churn_caps],
        work,
        workers=max(2, threads // 2),
        rounds=300 * stress_scale,
    )
    assert bad == []
    assert len(reg) > 0


def test_arguments_changed_by_other_threads_are_read_as_one_snapshot(
    threads: int, stress_scale: int
) -> None:
    """A container changed by another thread is read as it was at one instant: a
    dict whose values are always set together, a list whose items are always replaced
    together and a capability set whose two members are swapped in one step are never
    seen half-changed."""
    width = 64
    keys = [f"k{j}" for j in range(width)]
    pair = dict.fromkeys(keys, 0)
    row = [0] * width
    caps = {"base", "x0"}
    meta = {"pair": pair, "row": row}

    def change(i: int) -> None:
        v = i % 8
        pair.update(dict.fromkeys(keys, v))  # one step under the dict's lock
        row[:] = [v] * width  # likewise
        caps.symmetric_difference_update({"x0", "x1"})  # swaps x0 and x1 in one step

    reg = Registry()

    def work(w: int, r: int) -> None:
        reg.register(f"w{w}-{r}", capabilities=caps, metadata=meta)

    rounds = 300 * stress_scale
    workers = max(2, threads // 2)
    bad = _run_with_mutators([change], work, workers=workers, rounds=rounds)
    assert bad == []
    total = len(reg)
    assert total == workers * rounds
    # The comparable trees were made from the copies: each agent saw one state.
    by_pair = sum(reg.count(where=[("pair", "eq", dict.fromkeys(keys, v))]) for v in range(8))
    by_row = sum(reg.count(where=[("row", "eq", [v] * width)]) for v in range(8))
    assert by_pair == total
    assert by_row == total
    for a in reg.find():
        assert len(a.capabilities & {"x0", "x1"}) == 1


def test_indexed_where_only_returns_agents_that_matched_when_read(
    threads: int, stress_scale: int
) -> None:
    regions = ["eu", "us", "ap"]
    reg = Registry(indexes=["region", "hw.kind"])
    writers = max(2, threads // 2)
    readers = max(2, threads - writers)
    rounds = 1500 * stress_scale
    stop = threading.Event()
    errors: list[str] = []
    barrier = threading.Barrier(writers + readers)

    def metadata(rng: random.Random) -> dict[str, Any]:
        # A scalar, a list (its items are indexed too), or an equal number of another type.
        region: Any = rng.choice([*regions, regions[:2], 1, 1.0, True])
        return {"region": region, "hw": {"kind": rng.choice(["gpu", "cpu"])}}

    def writer(w: int) -> None:
        rng = random.Random(w)
        barrier.wait()
        for _ in range(rounds):
            aid = f"a{rng.randrange(40)}"  # shared between writers: writes to one id race
            op = rng.random()
            try:
                if op < 0.3:
                    reg.register(aid, metadata=metadata(rng))
                elif op < 0.8:
                    reg.update(aid, metadata=metadata(rng))
                else:
                    reg.unregister(aid)
            except (AlreadyRegistered, KeyError):
                pass

    def matches(v: Any, q: Any) -> bool:
        return bool(v == q) or (isinstance(v, list) and q in v)

    def reader(r: int) -> None:
        rng = random.Random(1000 + r)
        barrier.wait()
        while not stop.is_set():
            q = rng.choice([*regions, 1])
            for a in reg.find(where=[("region", "eq", q)]):
                if not matches(a.metadata["region"], q):
                    errors.append(f"{a} does not have region {q!r}")
            allowed = rng.sample(regions, 2)
            for a in reg.find(where=[("region", "in", allowed), ("hw.kind", "eq", "gpu")]):
                v = a.metadata["region"]
                ok = any(matches(v, x) for x in allowed) and a.metadata["hw"]["kind"] == "gpu"
                if not ok:
                    errors.append(f"{a} is not in {allowed} on a gpu")

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

    # At rest, each indexed query equals the same query without the index.
    agents = reg.find()
    plain = Registry()
    for a in agents:
        plain.register(a.agent_id, metadata=dict(a.metadata))
    for q in [*regions, 1, True, 1.5]:
        assert sorted(reg.ids(where=[("region", "eq", q)])) == sorted(
            plain.ids(where=[("region", "eq", q)])
        )
    for a in agents:
        assert reg.unregister(a.agent_id)
    assert reg._declared_index_sizes() == {"region": (0, 0), "hw.kind": (0, 0)}


def test_agents_moved_to_another_capability_never_leak_into_repeated_queries(
    threads: int, stress_scale: int
) -> None:
    """Agents leave capability "x" for "y" for good (re-registered, or updated) while
    readers repeat ids/count/find on "x": an agent whose move had finished before a
    query started is never in its result, however often the same query ran before."""
    reg = Registry()
    stable = [f"s{i}" for i in range(40)]
    movers = [f"m{i}" for i in range(300 * stress_scale)]
    for aid in stable + movers:
        reg.register(aid, capabilities=["x"])
    moved: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []
    writers = max(1, threads // 4)
    readers = max(2, threads - writers)

    def writer(w: int) -> None:
        for i, aid in enumerate(movers[w::writers]):
            if i % 2:
                reg.update(aid, capabilities=["y"])
            else:
                reg.unregister(aid)
                reg.register(aid, capabilities=["y"])
            with lock:
                moved.add(aid)

    def reader() -> None:
        while not stop.is_set():
            with lock:
                banned = set(moved)
            got = set(reg.ids(capability="x"))
            if got & banned:
                errors.append(f"ids leaked {sorted(got & banned)[:3]}")
            if not set(stable) <= got:
                errors.append("ids lost a stable agent")
            found = {a.agent_id for a in reg.find(capability="x")}
            if found & banned:
                errors.append(f"find leaked {sorted(found & banned)[:3]}")
            if reg.count(capability="x") > len(stable) + len(movers) - len(banned):
                errors.append("count includes a moved agent")

    rs = [threading.Thread(target=reader) for _ in range(readers)]
    ws = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in rs + ws:
        t.start()
    for t in ws:
        t.join()
    stop.set()
    for t in rs:
        t.join()
    assert errors == []
    assert sorted(reg.ids(capability="x")) == sorted(stable)
    assert sorted(reg.ids(capability="y")) == sorted(movers)
