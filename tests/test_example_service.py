"""The example agent service (examples/agent_service) under real HTTP load.

One service process (``python -m examples.agent_service --port 0``) serves most of the
module; the tests drive it with ``httpx`` and switch its upstream and agents through its
admin endpoints. Each test reads the server's counters before and after its own load,
so the tests do not depend on one another's traffic.

With a real redis-server (``tests/redis_server.py``): two service processes on one
server and prefix act as one service (the Redis tier, ``examples/agent_service/shared.py``),
and the ``python -m ferrule`` demo's Redis step shows every part and leaves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.agent_service.load import start_service
from examples.agent_service.service import CLIENT_SETTINGS_TTL
from tests.conftest import wait_until
from tests.redis_server import RedisServer

RATE, BURST, POOL, THRESHOLD, RESET = 10, 10, 4, 3, 1.0
AGENTS = ["agent-1", "agent-2", "agent-3", "agent-4"]
# What a request may be answered with (examples/agent_service/service.py).
DOCUMENTED = {
    "200 ok",
    "429 rate_limited",
    "503 no_agent",
    "503 circuit_open",
    "503 upstream_failed",
    "503 pool_timeout",
    "403 client_blocked",
}


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    args = [
        "--agents", str(len(AGENTS)),
        "--rate", str(RATE),
        "--burst", str(BURST),
        "--pool-size", str(POOL),
        "--failure-threshold", str(THRESHOLD),
        "--reset-timeout", str(RESET),
        "--fail-rate", "0.0",
        "--health-interval", "0.2",
    ]  # fmt: skip
    with start_service(*args) as url:
        yield url


@pytest.fixture
def http(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=10.0) as client:
        yield client


def burst(base: str, requests: list[tuple[str, str]], concurrency: int) -> list[httpx.Response]:
    """POST each (client id, capability) with at most ``concurrency`` in flight."""

    async def run() -> list[httpx.Response]:
        gate = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=base, timeout=10.0, limits=limits) as client:

            async def one(client_id: str, capability: str) -> httpx.Response:
                async with gate:
                    return await client.post(
                        f"/tasks/{capability}", json={}, headers={"X-Client": client_id}
                    )

            return await asyncio.gather(*(one(c, cap) for c, cap in requests))

    return asyncio.run(run())


def outcome(response: httpx.Response) -> str:
    return f"{response.status_code} {response.json().get('reason', 'ok')}"


def health(http: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = http.get("/health").json()
    return answer


def wait_for(predicate: Any, http: httpx.Client, timeout: float = 5.0) -> dict[str, Any]:
    """Poll /health until ``predicate(health)`` holds (state the service reaches in time:
    a breaker's reset timeout, a bus handler's delivery)."""
    deadline = time.monotonic() + timeout
    while True:
        h = health(http)
        if predicate(h) or time.monotonic() > deadline:
            return h
        time.sleep(0.02)


def test_health_lists_every_agent_with_capabilities_and_health(http: httpx.Client) -> None:
    h = health(http)
    assert [row["agent_id"] for row in h["agents"]] == AGENTS
    for row in h["agents"]:
        assert len(row["capabilities"]) == 2
        assert row["health"] in {"healthy", "degraded"}
    assert h["pool"]["max_size"] == POOL


def test_metrics_are_prometheus_text(http: httpx.Client) -> None:
    assert http.post("/tasks/search", json={}, headers={"X-Client": "metrics"}).status_code == 200
    response = http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    latency = families["agent_service_op_seconds"]
    assert latency.type == "histogram"
    assert {s.labels["op"] for s in latency.samples} >= {"task.search", "upstream.call"}
    # Every ferrule part of the service, one name each.
    names = {
        "ferrule_rate_limiter_allowed": "clients",
        "ferrule_breaker_calls": "upstream",
        "ferrule_retry_calls": "upstream_retry",
        "ferrule_bus_published": "signals",
        "ferrule_error_store_recorded": "agent_errors",
        "ferrule_registry_agents": "agents",
        "ferrule_pool_size": "upstream_connections",
        "ferrule_health_rounds": "agent_health",
    }
    for family, name in names.items():
        assert [s.labels["name"] for s in families[family].samples] == [name], family
    assert families["ferrule_rate_limiter_allowed"].type == "counter"
    assert families["ferrule_rate_limiter_allowed"].samples[0].value >= 1
    assert {s.labels["name"] for s in families["ferrule_subscription_delivered"].samples} == {
        "dashboard_task",
        "dashboard_agent",
        "dashboard_breaker",
    }
    assert {s.labels["agent"] for s in families["ferrule_health_status"].samples} == set(AGENTS)
    assert {s.labels["agent"] for s in families["agent_service_agent_health"].samples} == set(
        AGENTS
    )
    assert families["agent_service_responses"].type == "counter"
    assert families["agent_service_breaker_state"].type == "gauge"


def test_a_client_over_its_limit_gets_429_with_retry_after(base: str) -> None:
    sent = 4 * BURST
    started = time.monotonic()
    responses = burst(base, [("over-limit", "search")] * sent, concurrency=sent)
    elapsed = time.monotonic() - started
    outcomes = Counter(outcome(r) for r in responses)
    # The bucket's bound over the burst: burst + rate * elapsed.
    assert 1 <= outcomes["200 ok"] <= BURST + RATE * elapsed
    assert outcomes["200 ok"] + outcomes["429 rate_limited"] == sent
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert 0 < r.json()["retry_after"] <= 1 / RATE * 1.001


def test_no_request_is_lost_under_concurrent_load(base: str, http: httpx.Client) -> None:
    before = health(http)["responses_by_reason"]
    capabilities = ("search", "translate", "summarize")
    requests = [(f"client-{i % 12}", capabilities[i % 3]) for i in range(120)]
    responses = burst(base, requests, concurrency=16)
    assert len(responses) == len(requests)
    seen = Counter(outcome(r) for r in responses)
    assert set(seen) <= DOCUMENTED
    assert seen["200 ok"] >= len(requests) // 2  # 10 per client id: within the burst
    after = health(http)
    # The server answered exactly what the clients received, reason by reason.
    counted = {
        k: n - before.get(k, 0)
        for k, n in after["responses_by_reason"].items()
        if n != before.get(k, 0)
    }
    assert counted == dict(seen)
    # Pool bound, seen from the upstream: never more keep-alive connections than max_size.
    assert after["upstream"]["peak_connections"] <= POOL
    assert after["pool"]["created"] <= POOL + after["pool"]["discarded"]


def test_an_unhealthy_agent_is_not_routed_to(base: str, http: httpx.Client) -> None:
    sick = "agent-1"
    row = next(r for r in health(http)["agents"] if r["agent_id"] == sick)
    try:
        answer = http.post(f"/admin/agents/{sick}", json={"sick": True}).json()
        assert answer == {"agent_id": sick, "health": "unhealthy"}
        requests = [(f"route-{i}", row["capabilities"][i % 2]) for i in range(40)]
        responses = burst(base, requests, concurrency=8)
        assert [outcome(r) for r in responses] == ["200 ok"] * len(requests)
        assert sick not in {r.json()["agent"] for r in responses}
        assert next(r for r in health(http)["agents"] if r["agent_id"] == sick)["health"] == (
            "unhealthy"
        )
    finally:
        answer = http.post(f"/admin/agents/{sick}", json={"sick": False}).json()
    assert answer == {"agent_id": sick, "health": "healthy"}


def test_breaker_opens_under_upstream_failure_and_recovers(http: httpx.Client) -> None:
    trips = health(http)["breaker"]["trips"]

    def task() -> httpx.Response:
        return http.post("/tasks/search", json={}, headers={"X-Client": "breaker"})

    http.post("/admin/upstream", json={"fail_rate": 1.0})
    try:
        # Each request makes up to 3 attempts: the breaker opens within THRESHOLD requests.
        seen = [outcome(task()) for _ in range(THRESHOLD)]
        assert "503 circuit_open" in seen
        assert set(seen) <= {"503 upstream_failed", "503 circuit_open"}
        fast = task()
        assert outcome(fast) == "503 circuit_open" and int(fast.headers["Retry-After"]) >= 1
        h = wait_for(lambda h: h["breaker"]["trips"] > trips, http)  # counted off the bus
        assert h["breaker"]["trips"] > trips and h["breaker"]["state"] != "closed"
    finally:
        http.post("/admin/upstream", json={"fail_rate": 0.0})
    h = wait_for(lambda h: h["breaker"]["state"] == "half_open", http, timeout=RESET + 5.0)
    assert h["breaker"]["state"] == "half_open"
    assert outcome(task()) == "200 ok"  # the probe closes it
    assert health(http)["breaker"]["state"] == "closed"


def test_a_blocked_client_is_refused(http: httpx.Client) -> None:
    def task() -> str:
        return outcome(http.post("/tasks/search", json={}, headers={"X-Client": "blocked"}))

    assert task() == "200 ok"
    answer = http.post("/admin/clients/blocked", json={"blocked": True}).json()
    assert answer == {"client_id": "blocked", "blocked": True}
    assert task() == "403 client_blocked"
    http.post("/admin/clients/blocked", json={"blocked": False})
    assert task() == "200 ok"


# ---- the Redis tier: two processes on one server ------------------------------------


def test_two_processes_on_redis_share_limit_settings_breaker_and_directory(
    redis_server: RedisServer,
) -> None:
    prefix = f"svc-{time.monotonic_ns()}:"
    rate, burst, threshold = 2, 4, 3
    args = [
        "--agents", "2",
        "--rate", str(rate),
        "--burst", str(burst),
        "--failure-threshold", str(threshold),
        "--reset-timeout", "30",
        "--fail-rate", "0.0",
        "--health-interval", "0.2",
        "--redis-url", redis_server.url,
        "--redis-prefix", prefix,
    ]  # fmt: skip
    redis = redis_server.client()
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(
            httpx.Client(base_url=stack.enter_context(start_service(*args, "--node", "A")))
        )
        b = stack.enter_context(
            httpx.Client(base_url=stack.enter_context(start_service(*args, "--node", "B")))
        )

        def task(http: httpx.Client, client: str) -> str:
            return outcome(http.post("/tasks/search", json={}, headers={"X-Client": client}))

        # The agent directory (RedisRegistry) holds both processes' agents.
        assert health(a)["redis"]["directory"]["nodes"] == {"A": 2, "B": 2}

        # The limit is the fleet's (RedisRateLimiter): one bucket across both processes.
        started = time.monotonic()
        seen = Counter(task((a, b)[i % 2], "limited") for i in range(2 * burst))
        elapsed = time.monotonic() - started
        assert burst <= seen["200 ok"] <= burst + rate * elapsed < 2 * burst
        assert seen["200 ok"] + seen["429 rate_limited"] == 2 * burst

        # Client settings (RedisInvalidation): B caches c1's, A blocks c1, B refuses it
        # at once, not CLIENT_SETTINGS_TTL later.
        assert task(b, "c1") == "200 ok"
        blocked = a.post("/admin/clients/c1", json={"blocked": True})
        changed = time.monotonic()
        assert blocked.json() == {"client_id": "c1", "blocked": True}
        assert wait_until(lambda: task(b, "c1") == "403 client_blocked", timeout=2.0)
        assert time.monotonic() - changed < CLIENT_SETTINGS_TTL / 10

        # Health transitions reach the directory, read from the other process.
        a.post("/admin/agents/agent-1", json={"sick": True})
        assert wait_until(
            lambda: health(b)["redis"]["directory"]["health"] == {"healthy": 3, "unhealthy": 1}
        )
        a.post("/admin/agents/agent-1", json={"sick": False})

        # The upstream switch crosses on the RedisBus; failures seen by A open the breaker
        # (RedisCircuitBreaker) for B, whose dashboard counts the trip off the bus.
        a.post("/admin/upstream", json={"fail_rate": 1.0})
        assert wait_until(lambda: health(b)["upstream"]["fail_rate"] == 1.0)
        trips = health(b)["breaker"]["trips"]
        assert [task(a, "trip") for _ in range(2)] == ["503 upstream_failed", "503 circuit_open"]
        assert wait_until(lambda: health(b)["breaker"]["trips"] == trips + 1)
        assert health(b)["breaker"]["state"] == "open"  # read from Redis
        # B admits at most one call from its stale view (its outcome tells it the state);
        # then it refuses without calling its upstream.
        assert task(b, "open") == "503 circuit_open"
        before = health(b)["upstream"]["requests"]
        assert [task(b, "open") for _ in range(2)] == ["503 circuit_open"] * 2
        assert health(b)["upstream"]["requests"] == before
        b.post("/admin/upstream", json={"fail_rate": 0.0})
        assert wait_until(lambda: health(a)["upstream"]["fail_rate"] == 0.0)

        # What the processes keep in Redis, all under the prefix.
        keys = {k.decode() for k in redis.scan_iter(match=prefix + "*")}
        assert {prefix + "breaker:upstream", prefix + "clients", prefix + "fleet:d"} <= keys
        assert redis.hget(prefix + "clients", "c1") == b'{"blocked": true}'
        channels = {c.decode() for c in redis.pubsub_channels(prefix + "*")}
        assert {prefix + "clients", prefix + "bus:s:upstream.switch"} <= channels
        assert health(a)["breaker"]["rejections"] == 1
    # Stopped: each process took its agents out of the directory and unsubscribed.
    assert list(redis.scan_iter(match=prefix + "fleet:*")) == []
    assert wait_until(lambda: redis.pubsub_channels(prefix + "*") == [])
    redis.close()


def test_the_demo_redis_step_shows_every_part_and_leaves_nothing(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ferrule._demos import redis as step

    monkeypatch.setenv("REDIS_URL", redis_server.url)
    started = time.monotonic()
    step.run()
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert "skipped" not in out
    for line in (
        "10 of 11 granted",
        "after unregistering all three: 0 registry keys left",
        "breaker: 3 failures in process A open it for B too",
        "B refuses 10000 of 10000 calls in",
        ", 0 requests; after A.reset(), B reads 'closed'",
        "invalidation: a set in A evicts the key from B's cache in",
        "stale in B: 0, kept by the writer A: 20",
        "bus, broadcast: A.publish('job.done') reaches B's 'job.*' in",
        "A's own 'job.#' got 20 of 20",
        "20 handled, 20 distinct",
        "finds 0, 0 channels subscribed",
    ):
        assert line in out, line
    assert elapsed < 5.0  # about 1 s; generous for a loaded machine
    with redis_server.client() as client:
        assert list(client.scan_iter(match="ferrule-demo:*")) == []
        assert wait_until(lambda: client.pubsub_channels("ferrule-demo:*") == [])
