"""Scaling benchmark: the same workload on 1 and 2 threads, ferrule beside a peer.

Meant for free-threaded CPython (``make scaling`` runs it on 3.13t with the GIL off);
on a GIL build every ratio is ~1.0 or below, which is the point of comparison.

Each row runs a fixed number of operations per thread, in 1 thread and then in 2, and
reports throughput(2 threads) / throughput(1 thread). Runs repeat (``--repeat``) and the
table gives the median ratio and its spread (min-max). The machine is shared: ratios from
one run are comparable, absolute times are not.

Adding a part: write ``setup_<part>()`` returning a per-thread ``work(thread_index)``
callable for ferrule and one for the peer, and append a ``Row`` to ``ROWS``.

Closures and shared constants: a ``work`` function copies every variable of its
enclosing function that its loop reads into a local first, and takes its own copy
(``own``) of a constant its loop uses. On free-threaded 3.13 reading a closure cell
takes the cell's lock (``PyCell_GetRef``), and every use of an object another thread
created is an atomic write to that object's shared reference count, so two threads
reading one cell or one ``1_000`` in their loops contend on it: with ``keyspace`` read
from the cell on every iteration, ``perf`` put a quarter of the RateLimiter row's
samples in that lock's spinning and yielding, and then 9% in the shared count of the
constant. That is the benchmark's own cost, not the part's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import ferrule

Work = Callable[[int], None]


def own(x: int) -> int:
    """A copy of ``x`` created (hence owned) by the calling thread: see "Closures and
    shared constants" above."""
    return int(str(x))


@dataclass
class Row:
    name: str
    ops_per_thread: int
    ferrule: Callable[[int], Work]  # (ops) -> work(thread_index)
    peer_name: str
    peer: Callable[[int], Work]


def run_threads(work: Work, threads: int) -> tuple[float, float]:
    """(wall seconds, summed thread CPU seconds) for `threads` threads each running
    work(i), started together."""
    barrier = threading.Barrier(threads + 1)
    cpu: list[float] = []
    lock = threading.Lock()

    def body(i: int) -> None:
        barrier.wait()
        c0 = time.thread_time()
        work(i)
        spent = time.thread_time() - c0
        with lock:
            cpu.append(spent)

    ts = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return time.perf_counter() - t0, sum(cpu)


def ratio(make: Callable[[int], Work], ops: int) -> tuple[float, float]:
    """(throughput 2T / 1T, CPU time per operation 2T / 1T).

    The second figure does not depend on how many idle cores the machine had: 1.0 means
    the two threads did not slow each other down (no lock or cache-line contention)."""
    wall1, cpu1 = run_threads(make(ops), 1)
    wall2, cpu2 = run_threads(make(ops), 2)
    # Two threads did twice the operations.
    return (2 * ops / wall2) / (ops / wall1), (cpu2 / (2 * ops)) / (cpu1 / ops)


# ---- cache: get and set on distinct keys per thread ------------------------------------


def cache_ferrule(ops: int, policy: str = "lru") -> Work:
    cache = ferrule.Cache(4 * ops, policy=policy)
    keyspace = 10_000

    def work(i: int) -> None:
        ks = own(keyspace)  # see "Closures and shared constants" above
        base = i * ks
        get, put = cache.get, cache.set
        for n in range(ops):
            k = base + n % ks
            if n & 1:
                put(k, n)
            else:
                get(k)

    return work


def cache_peer(ops: int) -> Work:
    try:
        import cachebox

        cache = cachebox.LRUCache(4 * ops)
        get, put = cache.get, cache.insert
    except ImportError:
        lock = threading.Lock()
        d: dict[int, int] = {}

        def get(k: int) -> int | None:
            with lock:
                return d.get(k)

        def put(k: int, v: int) -> None:
            with lock:
                d[k] = v

    keyspace = 10_000

    def work(i: int) -> None:
        ks, get_, put_ = own(keyspace), get, put
        base = i * ks
        for n in range(ops):
            k = base + n % ks
            if n & 1:
                put_(k, n)
            else:
                get_(k)

    return work


def _cache_peer_name() -> str:
    try:
        import cachebox  # noqa: F401

        return "cachebox.LRUCache"
    except ImportError:
        return "dict + Lock"


# ---- cache: reads only, each thread hitting its own keys ----------------------------------


HIT_KEYS = 10_000  # per thread


def _hits(getter: Callable[[], Callable[[int], object]], ops: int) -> Work:
    """Each thread reads its own HIT_KEYS keys (all present) through its own bound method
    (``getter()``: a method object both threads called would be a shared count)."""

    def work(i: int) -> None:
        ks, get = own(HIT_KEYS), getter()
        base = i * ks
        for n in range(ops):
            get(base + n % ks)

    return work


def _read_ferrule(ops: int, method: str, policy: str = "lru") -> Work:
    cache = ferrule.Cache(4 * ops, policy=policy)
    for k in range(2 * HIT_KEYS):
        cache.set(k, k)
    return _hits(lambda: getattr(cache, method), ops)


def _read_peer(ops: int, method: str) -> Work:
    """cachebox's `method` on a filled cache; without cachebox, a dict read under a lock."""
    try:
        import cachebox
    except ImportError:
        lock = threading.Lock()
        d = {k: k for k in range(2 * HIT_KEYS)}

        def get(k: int) -> int | None:
            with lock:
                return d.get(k)

        return _hits(lambda: get, ops)
    cache = cachebox.LRUCache(4 * ops)
    for k in range(2 * HIT_KEYS):
        cache.insert(k, k)
    return _hits(lambda: getattr(cache, method), ops)


def cache_hits_ferrule(ops: int) -> Work:
    return _read_ferrule(ops, "get")


def cache_hits_peer(ops: int) -> Work:
    return _read_peer(ops, "get")


def cache_peek_ferrule(ops: int) -> Work:
    """Reads that take the shard's lock and change nothing (no recency, no counts): the
    floor for any read path that locks."""
    return _read_ferrule(ops, "peek")


def cache_peek_peer(ops: int) -> Work:
    return _read_peer(ops, "peek")


def cache_tinylfu_hits_ferrule(ops: int) -> Work:
    """W-TinyLFU hits: on 3.13t they read under a shared lock and log their recency."""
    return _read_ferrule(ops, "get", "tinylfu")


def cache_tinylfu_ferrule(ops: int) -> Work:
    return cache_ferrule(ops, "tinylfu")


# ---- queue: put+get round trips, each thread on its own queue ----------------------------


def queue_ferrule(ops: int) -> Work:
    queues = [ferrule.WorkQueue(1024) for _ in range(64)]

    def work(i: int) -> None:
        q = queues[i]
        put, get = q.put, q.get
        for n in range(ops):
            put(n)
            get()

    return work


def queue_peer(ops: int) -> Work:
    import queue

    queues: list[queue.Queue[int]] = [queue.Queue(1024) for _ in range(64)]

    def work(i: int) -> None:
        q = queues[i]
        put, get = q.put, q.get
        for n in range(ops):
            put(n)
            get()

    return work


# ---- ratelimit: try_acquire on distinct keys per thread --------------------------------


def ratelimit_ferrule(ops: int) -> Work:
    limiter = ferrule.RateLimiter(1e9)
    keyspace = 1_000

    def work(i: int) -> None:
        ks = own(keyspace)
        keys = [f"t{i}:{n}" for n in range(ks)]
        attempt = limiter.try_acquire
        for n in range(ops):
            attempt(keys[n % ks])

    return work


def ratelimit_peer(ops: int) -> Work:
    """A dict + Lock token bucket: the usual hand-rolled limiter, made correct by its lock.
    (The fastest packaged peer, token-bucket, over-admits under threads; the others are
    slower per call than this, see benches/test_ratelimit.py.)"""
    rate, burst = 1e9, 1e9
    lock = threading.Lock()
    buckets: dict[str, tuple[float, float]] = {}
    keyspace = 1_000

    def attempt(key: str) -> bool:
        now = time.monotonic()
        with lock:
            tokens, last = buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1:
                buckets[key] = (tokens - 1, now)
                return True
            buckets[key] = (tokens, now)
            return False

    def work(i: int) -> None:
        ks, attempt_ = own(keyspace), attempt
        keys = [f"t{i}:{n}" for n in range(ks)]
        for n in range(ops):
            attempt_(keys[n % ks])

    return work


# ---- resilience: cb.call of a trivial function, one breaker per thread -----------------


def _noop() -> None:
    return None


def breaker_ferrule(ops: int) -> Work:
    breakers = [ferrule.CircuitBreaker() for _ in range(2)]

    def work(i: int) -> None:
        call = breakers[i].call
        for _ in range(ops):
            call(_noop)

    return work


class _LockBreaker:
    """The usual hand-rolled breaker: counters and state behind one Lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state = "closed"
        self.calls = self.failures = 0

    def call(self, fn: Callable[[], object]) -> object:
        with self.lock:
            if self.state == "open":
                raise RuntimeError("open")
            self.calls += 1
        try:
            result = fn()
        except Exception:
            with self.lock:
                self.failures += 1
            raise
        with self.lock:
            self.failures = 0
        return result


def breaker_peer(ops: int) -> Work:
    try:
        import pybreaker

        calls = [pybreaker.CircuitBreaker().call for _ in range(2)]
    except ImportError:
        calls = [_LockBreaker().call for _ in range(2)]

    def work(i: int) -> None:
        call = calls[i]
        for _ in range(ops):
            call(_noop)

    return work


def _breaker_peer_name() -> str:
    try:
        import pybreaker  # noqa: F401

        return "pybreaker"
    except ImportError:
        return "Lock-based breaker"


# ---- bus: each thread publishes on its own topic to its own pull subscription, drained --


def bus_ferrule(ops: int) -> Work:
    bus = ferrule.SignalBus()
    subs = [bus.subscribe(f"svc.{i}.event", maxsize=1024) for i in range(64)]

    def work(i: int) -> None:
        topic = f"svc.{i}.event"
        publish, get = bus.publish, subs[i].get_nowait
        for n in range(ops):
            publish(topic, n)
            get()

    return work


def bus_peer(ops: int) -> Work:
    import collections

    try:
        import blinker

        ns = blinker.Namespace()

        def connect(topic: str, sink: Callable[[int], None]) -> Callable[[int], object]:
            sig = ns.signal(topic)
            sig.connect(sink, weak=False)
            return lambda n: sig.send(n)

    except ImportError:
        lock = threading.Lock()
        handlers: dict[str, list[Callable[[int], None]]] = {}

        def connect(topic: str, sink: Callable[[int], None]) -> Callable[[int], object]:
            with lock:
                handlers.setdefault(topic, []).append(sink)

            def send(n: int) -> None:
                with lock:
                    hs = list(handlers.get(topic, ()))
                for h in hs:
                    h(n)

            return send

    sinks = [collections.deque[int](maxlen=1024) for _ in range(64)]
    sends = [connect(f"svc.{i}.event", sinks[i].append) for i in range(64)]

    def work(i: int) -> None:
        send, take = sends[i], sinks[i].popleft
        for n in range(ops):
            send(n)
            take()

    return work


def _bus_peer_name() -> str:
    try:
        import blinker  # noqa: F401

        return "blinker"
    except ImportError:
        return "dict of lists + Lock"


# ---- budget: acquire/release on a budget per thread -------------------------------------


def budget_ferrule(ops: int) -> Work:
    rm = ferrule.ResourceManager({f"t{i}": 100 for i in range(64)})

    def work(i: int) -> None:
        acquire = rm.acquire
        name = f"t{i}"
        for _ in range(ops):
            acquire(name).release()

    return work


def budget_peer(ops: int) -> Work:
    sems = [threading.BoundedSemaphore(100) for _ in range(64)]

    def work(i: int) -> None:
        sem = sems[i]
        for _ in range(ops):
            sem.acquire()
            sem.release()

    return work


ROWS: list[Row] = [
    Row("Cache get/set, distinct keys", 200_000, cache_ferrule, _cache_peer_name(), cache_peer),
    Row(
        "Cache get hits, distinct keys",
        200_000,
        cache_hits_ferrule,
        _cache_peer_name(),
        cache_hits_peer,
    ),
    Row(
        "Cache peek (no recency), distinct keys",
        200_000,
        cache_peek_ferrule,
        _cache_peer_name(),
        cache_peek_peer,
    ),
    Row(
        "Cache tinylfu get hits, distinct keys",
        200_000,
        cache_tinylfu_hits_ferrule,
        _cache_peer_name(),
        cache_hits_peer,
    ),
    Row(
        "Cache tinylfu get/set, distinct keys",
        200_000,
        cache_tinylfu_ferrule,
        _cache_peer_name(),
        cache_peer,
    ),
    Row("WorkQueue put+get, own queue", 200_000, queue_ferrule, "queue.Queue", queue_peer),
    Row(
        "RateLimiter try_acquire, distinct keys",
        200_000,
        ratelimit_ferrule,
        "dict + Lock token bucket",
        ratelimit_peer,
    ),
    Row(
        "CircuitBreaker.call(f), one breaker per thread",
        200_000,
        breaker_ferrule,
        _breaker_peer_name(),
        breaker_peer,
    ),
    Row("SignalBus publish+get, own topic", 200_000, bus_ferrule, _bus_peer_name(), bus_peer),
    Row(
        "ResourceManager acquire/release, budget per thread",
        100_000,
        budget_ferrule,
        "threading.BoundedSemaphore per thread",
        budget_peer,
    ),
]


# ---- registry: register, lookup, unregister on distinct ids per thread ---------------


class _LockedRegistry:
    """The dict + Lock + dict-of-sets registry that benches/test_registry.py measures."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[object, frozenset[str], str]] = {}
        self.by_cap: dict[str, set[str]] = {}
        self.by_node: dict[str, set[str]] = {}

    def register(self, agent_id: str, value: object, *, capabilities: list[str], node: str) -> None:
        caps = frozenset(capabilities)
        with self.lock:
            if agent_id in self.entries:
                raise KeyError(agent_id)
            self.entries[agent_id] = (value, caps, node)
            for c in caps:
                self.by_cap.setdefault(c, set()).add(agent_id)
            self.by_node.setdefault(node, set()).add(agent_id)

    def lookup(self, agent_id: str) -> object:
        with self.lock:
            return self.entries[agent_id][0]

    def unregister(self, agent_id: str) -> bool:
        with self.lock:
            e = self.entries.pop(agent_id, None)
            if e is None:
                return False
            for c in e[1]:
                s = self.by_cap[c]
                s.discard(agent_id)
                if not s:
                    del self.by_cap[c]
            s = self.by_node[e[2]]
            s.discard(agent_id)
            if not s:
                del self.by_node[e[2]]
        return True


def _registry_work(reg: ferrule.Registry | _LockedRegistry, ops: int) -> Work:
    caps = ["search", "code"]

    def work(i: int) -> None:
        register, lookup, unregister = reg.register, reg.lookup, reg.unregister
        caps_ = list(caps)
        ids = [f"t{i}-{n}" for n in range(64)]
        for n in range(ops // 3):
            aid = ids[n % 64]
            register(aid, n, capabilities=caps_, node=f"n{i}")
            lookup(aid)
            unregister(aid)

    return work


def registry_ferrule(ops: int) -> Work:
    return _registry_work(ferrule.Registry(), ops)


def registry_peer(ops: int) -> Work:
    return _registry_work(_LockedRegistry(), ops)


ROWS.append(
    Row(
        "Registry register/lookup/unregister, distinct ids",
        150_000,
        registry_ferrule,
        "dict + Lock + index sets",
        registry_peer,
    )
)


# ---- metrics: record on a per-thread operation name -------------------------------------


def metrics_ferrule(ops: int) -> Work:
    m = ferrule.Metrics()

    def work(i: int) -> None:
        rec, op = m.record, f"op-{i}"
        for n in range(ops):
            rec(op, 1e-4 * (n % 100 + 1))

    return work


def metrics_peer(ops: int) -> Work:
    try:
        import prometheus_client

        hs = [
            prometheus_client.Histogram(f"scaling_op_{i}", "latency", registry=None)
            for i in range(64)
        ]

        def observer(i: int) -> Callable[[float], None]:
            return hs[i].observe

    except ImportError:
        locks = [threading.Lock() for _ in range(64)]
        rows: list[list[float]] = [[] for _ in range(64)]

        def observer(i: int) -> Callable[[float], None]:
            lock, row = locks[i], rows[i]

            def observe(s: float) -> None:
                with lock:
                    row.append(s)

            return observe

    def work(i: int) -> None:
        observe = observer(i)
        for n in range(ops):
            observe(1e-4 * (n % 100 + 1))

    return work


def _metrics_peer_name() -> str:
    try:
        import prometheus_client  # noqa: F401

        return "prometheus_client Histogram"
    except ImportError:
        return "Lock + list"


ROWS.append(
    Row(
        "Metrics.record, per-thread op",
        200_000,
        metrics_ferrule,
        _metrics_peer_name(),
        metrics_peer,
    )
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a tenth of the operations, 1 repeat")
    ap.add_argument("--only", default=None, help="run rows whose name contains this text")
    a = ap.parse_args(argv)
    repeat = 1 if a.quick else a.repeat
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(
        f"# {sys.version.split()[0]} Py_GIL_DISABLED={sysconfig.get_config_var('Py_GIL_DISABLED')}"
        f" GIL enabled={gil}; 2T/1T = throughput(2 threads) / throughput(1 thread);"
        f" CPU/op 2T/1T = thread CPU time per operation, 2 threads / 1 thread (1.00 = no"
        f" contention); median of {repeat} (min-max)\n"
    )
    print(
        "| workload | ferrule 2T/1T | ferrule CPU/op 2T/1T | peer | peer 2T/1T |"
        " peer CPU/op 2T/1T |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for row in ROWS:
        if a.only and a.only not in row.name:
            continue
        ops = row.ops_per_thread // (10 if a.quick else 1)
        mine = [ratio(row.ferrule, ops) for _ in range(repeat)]
        theirs = [ratio(row.peer, ops) for _ in range(repeat)]

        def fmt(xs: list[float]) -> str:
            return f"{statistics.median(xs):.2f}x ({min(xs):.2f}-{max(xs):.2f})"

        print(
            f"| {row.name} | {fmt([m[0] for m in mine])} | {fmt([m[1] for m in mine])}"
            f" | {row.peer_name} | {fmt([t[0] for t in theirs])} | {fmt([t[1] for t in theirs])} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
