"""The example agent service (examples/agent_service) under real HTTP load.

One service process (``python -m examples.agent_service --port 0``) serves most of the
module; the tests drive it with ``httpx`` and switch its upstream and agents through its
admin endpoints. Each test reads the server's counters before and after its own load,
so the tests do not depend on one another's traffic.

With a real redis-server (``tests/redis_server.py``): the ``python -m ferrule`` demo's
Redis step shows every part and leaves nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.agent_service.load import start_service
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
