"""ferrule.metrics.PrometheusCollector against the real prometheus_client: every part's
figures, read back with prometheus_client's own parsers (text and OpenMetrics)."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import ferrule
import ferrule._export
import pytest
from ferrule import ManualClock, Metrics

from tests.conftest import run_doctests

prometheus_client = pytest.importorskip("prometheus_client")

import ferrule.metrics  # noqa: E402
from ferrule.metrics import PrometheusCollector  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.openmetrics import exposition as om_exposition  # noqa: E402
from prometheus_client.openmetrics import parser as om_parser  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

Key = tuple[str, tuple[tuple[str, str], ...]]


def samples(text: str) -> dict[Key, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(registry: CollectorRegistry) -> dict[Key, float]:
    return samples(generate_latest(registry).decode())


def registry_of(collector: PrometheusCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def named(name: str, **labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"name": name, **labels}.items()))


def test_module_example_runs() -> None:
    result = run_doctests(ferrule.metrics)
    assert result.failed == 0
    assert result.attempted > 0


# ---- every part: what is exported equals what stats() says ------------------------------


def busy_cache() -> ferrule.Cache:
    cache = ferrule.Cache(2)
    for k in "abc":
        cache[k] = k
    cache.get("c")
    cache.get("zz")
    return cache


def busy_queue() -> ferrule.WorkQueue[int]:
    q: ferrule.WorkQueue[int] = ferrule.WorkQueue(2, overflow="drop_oldest")
    q.put_many([1, 2, 3])
    q.get_nowait()
    return q


STAT_PARTS: dict[str, tuple[Callable[[], Any], dict[str, str]]] = {
    # part -> (builder, {figure: stats attribute}); gauges and counters alike
    "cache": (
        busy_cache,
        {f: f for f in ("hits", "misses", "inserts", "evictions", "expirations", "rejected")}
        | {f: f for f in ("size", "weight", "max_size")},
    ),
    "queue": (
        busy_queue,
        {f: f for f in ("put", "got", "rejected", "dropped", "size", "high_water")},
    ),
    "retry": (
        lambda: ferrule.retry(attempts=2, backoff=0.0),
        {f: f for f in ("calls", "attempts", "retries", "successes", "give_ups", "failures")},
    ),
    "rate_limiter": (
        lambda: ferrule.RateLimiter(1, clock=ManualClock()),
        {"allowed": "allowed", "denied": "denied", "keys": "keys"},
    ),
    "bus": (
        ferrule.SignalBus,
        {f: f for f in ("published", "unrouted", "delivered", "dropped", "subscriptions")},
    ),
}


@pytest.mark.parametrize("part", sorted(STAT_PARTS))
def test_each_figure_equals_stats(part: str) -> None:
    build, figures = STAT_PARTS[part]
    obj = build()
    if part == "retry":
        obj.call(int, "1")
    if part == "rate_limiter":
        obj.try_acquire("a"), obj.try_acquire("a"), obj.try_acquire("b")
    if part == "bus":
        sub = obj.subscribe("a.*")
        obj.publish("a.b"), obj.publish("x")
    collector = PrometheusCollector()
    collector.add(obj, name="it")
    got = scrape(registry_of(collector))
    s = obj.stats()
    table = ferrule._export.PARTS
    (p,) = [p for p in table if p.key == part]
    kinds = {f.figure: f.kind for f in p.figures}
    for figure, attr in figures.items():
        suffix = "_total" if kinds[figure] == "counter" else ""
        assert got[(f"ferrule_{part}_{figure}{suffix}", named("it"))] == getattr(s, attr), figure
    if part == "bus":
        sub.cancel()


def test_task_pool_subscription_breaker_pool_and_resources() -> None:
    collector = PrometheusCollector()
    with ferrule.TaskPool(2) as pool:
        pool.submit(pow, 2, 3).result()
        with pytest.raises(ZeroDivisionError):
            pool.submit(divmod, 1, 0).result()
        collector.add(pool, name="workers")
        bus = ferrule.SignalBus()
        sub = bus.subscribe("t", maxsize=1)
        bus.publish("t"), bus.publish("t")
        collector.add(sub, name="ticks")
        breaker = ferrule.CircuitBreaker(failure_threshold=1, clock=ManualClock())
        with pytest.raises(KeyError):
            breaker.call({}.__getitem__, "x")
        with pytest.raises(ferrule.CircuitOpen):
            breaker.call(int)
        collector.add(breaker, name="upstream")
        conns = ferrule.Pool(object, max_size=3)
        collector.add(conns, name="conns")
        budget = ferrule.ResourceManager({"db": 10, "gpu": 2})
        lease = budget.acquire("db", 10)
        collector.add(budget, name="budget")
        with conns.acquire():
            got = scrape(registry_of(collector))
            pool_stats = conns.stats()
        stats = pool.stats()
    for f in ("submitted", "started", "completed", "failed", "rejected", "cancelled"):
        assert got[(f"ferrule_task_pool_{f}_total", named("workers"))] == getattr(stats, f)
    assert got[("ferrule_task_pool_failed_total", named("workers"))] == 1
    s = sub.stats()
    for f in ("accepted", "delivered", "dropped", "rejected", "errors"):
        assert got[(f"ferrule_subscription_{f}_total", named("ticks"))] == getattr(s, f)
    assert got[("ferrule_subscription_queued", named("ticks"))] == 1
    b = breaker.stats()
    for f in ("calls", "successes", "failures", "slow_calls", "ignored", "rejections"):
        assert got[(f"ferrule_breaker_{f}_total", named("upstream"))] == getattr(b, f)
    assert got[("ferrule_breaker_state_changes_total", named("upstream"))] == 1
    states = {
        k[1]: v for k, v in got.items() if k[0] == "ferrule_breaker_state"
    }  # the state-set: one series per state, the current one 1
    assert states == {
        named("upstream", state=s): float(s == "open")
        for s in ("closed", "open", "half_open", "forced_open", "forced_closed")
    }
    for f in ("size", "idle", "in_use", "waiting"):
        assert got[(f"ferrule_pool_{f}", named("conns"))] == getattr(pool_stats, f)
    assert got[("ferrule_pool_in_use", named("conns"))] == 1
    assert got[("ferrule_pool_created_total", named("conns"))] == 1
    assert got[("ferrule_pool_max_size", named("conns"))] == 3
    assert got[("ferrule_resource_used", named("budget", resource="db"))] == 10
    assert got[("ferrule_resource_limit", named("budget", resource="gpu"))] == 2
    pressure = {(k[1], v) for k, v in got.items() if k[0] == "ferrule_resource_pressure" and v == 1}
    assert pressure == {
        (named("budget", resource="db", state="severe"), 1),
        (named("budget", resource="gpu", state="normal"), 1),
    }
    lease.release()
    sub.cancel()


def test_error_store_and_health_per_agent_series_are_bounded() -> None:
    store = ferrule.ErrorStore()
    for n in range(10):
        for _ in range(n):
            store.record(f"a{n}", ValueError(n))
    reg = ferrule.Registry()
    for n in range(6):
        reg.register(f"agent{n}")
    statuses = ["healthy", "degraded", "unhealthy", "healthy", "slow", "healthy"]
    release = threading.Event()

    def check(agent: ferrule.Agent) -> str:
        status = statuses[int(agent.agent_id[-1])]
        if status == "slow":  # still running at the timeout: "unresponsive"
            release.wait(10.0)
        return status

    monitor = ferrule.HealthMonitor(reg, check=check, timeout=1.0)
    monitor.check_now()
    release.set()
    collector = PrometheusCollector(max_agents=3)
    collector.add(store, name="errs")
    collector.add(monitor, name="mon")
    collector.add(reg, name="reg")
    got = scrape(registry_of(collector))
    monitor.stop()
    s = store.stats()
    assert got[("ferrule_error_store_recorded_total", named("errs"))] == s.recorded == 45
    assert got[("ferrule_error_store_agents", named("errs"))] == s.agents == 9
    per_agent = {
        dict(k[1])["agent"]: v for k, v in got.items() if k[0] == "ferrule_error_store_agent_errors"
    }
    assert per_agent == {"a9": 9, "a8": 8, "a7": 7}  # the three with most errors
    by_state = {dict(k[1])["state"]: v for k, v in got.items() if k[0] == "ferrule_health_agents"}
    assert by_state == {"healthy": 3, "degraded": 1, "unhealthy": 1, "unresponsive": 1}
    shown = {
        dict(k[1])["agent"]: dict(k[1])["state"]
        for k, v in got.items()
        if k[0] == "ferrule_health_status" and v == 1
    }
    assert shown == {"agent4": "unresponsive", "agent2": "unhealthy", "agent1": "degraded"}
    assert got[("ferrule_health_rounds_total", named("mon"))] == 1
    assert got[("ferrule_registry_agents", named("reg"))] == 6


# ---- Metrics: a real histogram ----------------------------------------------------------


def test_metrics_histogram_equals_totals() -> None:
    m = Metrics(window=10.0, clock=ManualClock())
    for ms in range(1, 101):
        m.record("db.query", ms / 1000, ok=ms % 10 != 0)
    m.record('weird "op"\n', 0.5)
    collector = PrometheusCollector(m)
    got = scrape(registry_of(collector))
    t = m.totals("db.query")
    op = named("metrics", op="db.query")
    assert got[("ferrule_op_seconds_count", op)] == t.count == 100
    assert got[("ferrule_op_seconds_sum", op)] == pytest.approx(t.sum) == pytest.approx(5.05)
    assert got[("ferrule_op_errors_total", op)] == t.errors == 10
    bounds = [*m.buckets, math.inf]
    for bound, cumulative in zip(bounds, t.buckets, strict=True):
        le = "+Inf" if bound == math.inf else prometheus_client.utils.floatToGoString(bound)
        assert got[("ferrule_op_seconds_bucket", named("metrics", op="db.query", le=le))] == (
            cumulative
        )
    assert got[("ferrule_op_seconds_count", named("metrics", op='weird "op"\n'))] == 1
    assert not any(k[0].startswith("ferrule_op_window") for k in got)  # opt-in only


def test_window_quantiles_are_opt_in_gauges() -> None:
    clock = ManualClock()
    m = Metrics(window=10.0, clock=clock)
    for ms in range(1, 101):
        m.record("db", ms / 1000)
    registry = registry_of(PrometheusCollector(m, window_quantiles=True))
    got = scrape(registry)
    s = m.snapshot("db")
    for q, attr in (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99")):
        key = ("ferrule_op_window_seconds", named("metrics", op="db", quantile=q))
        assert got[key] == pytest.approx(getattr(s, attr))
    clock.advance(10.0)  # the window empties: the quantiles go, the lifetime totals stay
    got = scrape(registry)
    assert not any(k[0] == "ferrule_op_window_seconds" for k in got)
    assert got[("ferrule_op_seconds_count", named("metrics", op="db"))] == 100


def test_the_first_form_with_a_prefix() -> None:
    m = Metrics()
    m.record("x", 0.001)
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(m, prefix="svc_calls"))
    text = generate_latest(registry).decode()
    assert "# TYPE svc_calls_seconds histogram" in text
    assert "# TYPE svc_calls_errors_total counter" in text
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["svc_calls_seconds"] == "histogram"
    # A second collector with the same names is refused by the registry (describe()).
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(PrometheusCollector(m, prefix="svc_calls"))


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"^metrics must be a ferrule.Metrics, not 'dict'$"):
        PrometheusCollector({})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^prefix must be a valid Prometheus metric name"):
        PrometheusCollector(Metrics(), prefix="bad-name")
    with pytest.raises(ValueError, match=r"^max_agents must be >= 0$"):
        PrometheusCollector(max_agents=-1)
    c = PrometheusCollector()
    with pytest.raises(TypeError, match=r"^cannot export a 'dict'; supported: Metrics, Cache"):
        c.add({})
    with pytest.raises(TypeError, match=r"^name must be a str, not 'int'$"):
        c.add(ferrule.Cache(1), name=7)  # type: ignore[arg-type]
    for bad in ("", "has space", "9lives", "x" * 129, 'q"uote'):
        with pytest.raises(ValueError, match=r"^name must be 1 to 128 letters"):
            c.add(ferrule.Cache(1), name=bad)
    cache = ferrule.Cache(1)
    assert c.add(cache, name="a") == "a"
    with pytest.raises(ValueError, match=r"^name 'a' is already taken$"):
        c.add(ferrule.Cache(1), name="a")
    with pytest.raises(ValueError, match=r"^this Cache is already added as 'a'$"):
        c.add(cache, name="b")
    assert c.names() == ["a"]


def test_default_names_are_stable() -> None:
    c = PrometheusCollector()
    assert c.add(ferrule.Cache(1)) == "cache"
    assert c.add(ferrule.CircuitBreaker()) == "circuit_breaker"
    assert c.add(ferrule.Cache(1)) == "cache_2"
    assert c.remove("cache") is True
    assert c.remove("cache") is False
    assert c.add(ferrule.Cache(1)) == "cache"  # free again
    assert c.names() == ["circuit_breaker", "cache_2", "cache"]


# ---- holding, failures, locks -----------------------------------------------------------


def test_weakly_held_objects_leave_the_scrape_when_collected() -> None:
    collector = PrometheusCollector()
    registry = registry_of(collector)
    pool = ferrule.TaskPool(1)
    collector.add(pool, name="p")
    collector.add(ferrule.retry(attempts=2), name="r")  # no other reference: gone at once
    gc.collect()
    assert ("ferrule_task_pool_submitted_total", named("p")) in scrape(registry)
    assert collector.names() == ["p"]
    pool.shutdown()
    del pool
    gc.collect()
    assert scrape(registry) == {}
    assert collector.add(ferrule.TaskPool(1), name="p") == "p"  # the name is free again


def test_natively_held_objects_stay_until_removed() -> None:
    # Cache (like the other native classes without weak-reference support) is held
    # strongly: the collector keeps it, and its figures, until remove().
    collector = PrometheusCollector()
    registry = registry_of(collector)
    collector.add(ferrule.Cache(4), name="c")
    gc.collect()
    assert scrape(registry)[("ferrule_cache_max_size", named("c"))] == 4
    collector.remove("c")
    assert scrape(registry) == {}


class BrokenPool(ferrule.TaskPool):
    def stats(self) -> ferrule.TaskPoolStats:
        raise RuntimeError("stats failed")


def test_a_failing_object_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    collector = PrometheusCollector()
    registry = registry_of(collector)
    broken = BrokenPool(1)
    collector.add(broken, name="broken")
    collector.add(ferrule.Cache(3), name="fine")
    with caplog.at_level(logging.WARNING, logger="ferrule.export"):
        got = scrape(registry)
        got_again = scrape(registry)
    assert got == got_again
    assert got[("ferrule_cache_max_size", named("fine"))] == 3
    assert not any(k[0].startswith("ferrule_task_pool") for k in got)
    records = [r for r in caplog.records if r.name == "ferrule.export"]
    assert [r.getMessage() for r in records] == [
        "cannot read BrokenPool 'broken' for export; skipped"
    ] * 2
    assert records[0].exc_info is not None  # the traceback once per failing streak
    assert not records[1].exc_info
    broken.shutdown()


def test_no_lock_is_held_while_an_object_is_read() -> None:
    collector = PrometheusCollector()

    class Reentrant(ferrule.TaskPool):
        def stats(self) -> ferrule.TaskPoolStats:
            # Re-entering the collector from a read must not deadlock.
            collector.remove("other")
            collector.add(ferrule.Cache(1), name="added")
            assert "added" in collector.names()
            return super().stats()

    pool = Reentrant(1)
    collector.add(pool, name="re")
    collector.add(ferrule.Cache(2), name="other")
    got = scrape(registry_of(collector))
    assert ("ferrule_task_pool_submitted_total", named("re")) in got
    assert collector.names() == ["re", "added"]
    pool.shutdown()


# ---- scrapes over time, at scale, in OpenMetrics ----------------------------------------


def counters(text: str) -> dict[Key, float]:
    """Every monotonic sample: counters, and a histogram's buckets, count and sum."""
    out = {}
    for family in text_string_to_metric_families(text):
        if family.type in ("counter", "histogram"):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_never_go_down_across_scrapes() -> None:
    rng = random.Random(7)
    clock = ManualClock()
    m = Metrics(window=1.0, clock=clock)
    cache = ferrule.Cache(8, ttl=0.5, clock=clock)
    q: ferrule.WorkQueue[int] = ferrule.WorkQueue(4, overflow="drop_oldest")
    breaker = ferrule.CircuitBreaker(failure_threshold=2, reset_timeout=0.2, clock=clock)
    collector = PrometheusCollector(m)
    for obj in (cache, q, breaker):
        collector.add(obj)
    registry = registry_of(collector)
    before = counters(generate_latest(registry).decode())
    for _ in range(30):
        for _ in range(20):
            op = rng.choice(["a", "b", "c"])
            m.record(op, rng.expovariate(100), ok=rng.random() > 0.1)
            cache.get(rng.randrange(20)) or cache.set(rng.randrange(20), 1)
            q.put_nowait(1) if rng.random() < 0.6 or q.empty() else q.get_nowait()
            with contextlib.suppress(ZeroDivisionError, ferrule.CircuitOpen):
                breaker.call(lambda: 1 / rng.choice([0, 1]))
        clock.advance(rng.uniform(0, 0.6))  # windows slide, entries expire
        after = counters(generate_latest(registry).decode())
        assert set(before) <= set(after)
        went_down = {k: (before[k], after[k]) for k in before if after[k] < before[k]}
        assert went_down == {}
        before = after
    assert before[("ferrule_op_seconds_count", named("metrics", op="a"))] > 0


def test_a_scrape_of_100_objects() -> None:
    collector = PrometheusCollector()
    caches = [ferrule.Cache(10) for _ in range(100)]
    for n, c in enumerate(caches):
        c[n] = n
        collector.add(c, name=f"c{n}")
    text = generate_latest(registry_of(collector)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(families["ferrule_cache_inserts"].samples) == 100
    assert {s.labels["name"] for s in families["ferrule_cache_size"].samples} == {
        f"c{n}" for n in range(100)
    }
    assert text.count("# TYPE ferrule_cache_hits_total counter") == 1  # one family each


def test_openmetrics_exposition_parses_back() -> None:
    m = Metrics()
    m.record("db", 0.004)
    m.record("db", 0.2, ok=False)
    collector = PrometheusCollector(m, window_quantiles=True)
    collector.add(ferrule.Cache(5), name="c")
    collector.add(ferrule.CircuitBreaker(), name="b")
    text = om_exposition.generate_latest(registry_of(collector)).decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in om_parser.text_string_to_metric_families(text)}
    assert families["ferrule_op_seconds"].type == "histogram"
    assert families["ferrule_op_seconds"].unit == "seconds"
    assert families["ferrule_op_errors"].type == "counter"
    assert families["ferrule_op_window_seconds"].type == "gauge"
    assert families["ferrule_cache_hits"].type == "counter"
    assert families["ferrule_breaker_state"].type == "gauge"
    by_name = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values()
               for s in f.samples}  # fmt: skip
    assert by_name[("ferrule_op_seconds_count", named("metrics", op="db"))] == 2
    assert by_name[("ferrule_op_errors_total", named("metrics", op="db"))] == 1


# ---- histogram_quantile over two processes ----------------------------------------------

_CHILD = textwrap.dedent(
    """
    import random, sys
    import ferrule
    from ferrule.metrics import PrometheusCollector
    from prometheus_client import CollectorRegistry, generate_latest
    seed, scale = int(sys.argv[1]), float(sys.argv[2])
    rng = random.Random(seed)
    m = ferrule.Metrics()
    values = [rng.lognormvariate(0, 1) * scale for _ in range(5000)]
    for v in values:
        m.record("rpc", v)
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(m))
    sys.stdout.write(repr(values) + "\\n")
    sys.stdout.write(generate_latest(registry).decode())
    """
)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus's histogram_quantile over cumulative ``(le, count)`` pairs sorted by
    ``le`` (+Inf last): the rank ``q * total``, linearly interpolated inside the bucket
    that holds it (the first bucket's lower bound is 0)."""
    total = buckets[-1][1]
    rank = q * total
    for i, (upper, count) in enumerate(buckets):
        if count >= rank:
            if upper == math.inf:
                return buckets[i - 1][0]  # Prometheus answers the last finite bound
            lower, below = (0.0, 0.0) if i == 0 else buckets[i - 1]
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
    raise AssertionError("unreachable")


def test_histogram_quantile_over_two_processes_is_right_within_a_bucket() -> None:
    outputs = []
    for seed, scale in ((1, 0.002), (2, 0.02)):  # two services, different latencies
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(seed), str(scale)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        values_line, text = proc.stdout.split("\n", 1)
        outputs.append((eval(values_line), text))  # a list of floats we printed
    merged: dict[float, float] = {}
    for _, text in outputs:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "ferrule_op_seconds_bucket":  # sum by (le)
                    le = float(s.labels["le"])
                    merged[le] = merged.get(le, 0.0) + s.value
    buckets = sorted(merged.items())
    union = sorted(v for values, _ in outputs for v in values)
    assert buckets[-1][1] == len(union) == 10_000
    bounds = [le for le, _ in buckets]
    for q in (0.5, 0.9, 0.99):
        exact = union[math.ceil(q * len(union)) - 1]
        got = histogram_quantile(q, buckets)
        # Right within bucket resolution: the estimate lies in the bucket holding the
        # exact quantile (or on its edge).
        i = next(i for i, b in enumerate(bounds) if exact <= b)
        lower = 0.0 if i == 0 else bounds[i - 1]
        assert lower <= got <= bounds[i], (q, exact, got, lower, bounds[i])


def test_every_figure_is_documented() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "observability.md").read_text()
    for part in ferrule._export.PARTS:
        for f in part.figures:
            if f.prom is not None:
                assert f"`{f.prometheus_name()}" in text, f.prometheus_name()
            if f.otel:
                assert f"`{f.otel_name}`" in text, f.otel_name
