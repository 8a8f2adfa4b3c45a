"""A toy multi-agent platform as an asyncio HTTP service, built on ferrule.

Structure (one ``Service`` per process, owned by the Starlette app's lifespan):

- ``POST /tasks/{capability}`` (header ``X-Client``): the client's ``RateLimiter`` bucket
  is charged first (``limiter.limit(client, timeout=0)``); a refusal answers 429 with
  ``Retry-After`` from the refused ``Decision``. The task then goes to the least busy
  agent that has the capability and whose registry health is ``healthy`` (``degraded``
  ones only when no healthy one is left; ``unhealthy`` and ``unresponsive`` never). The
  agent calls the upstream: ``retry`` (outside) around the ``CircuitBreaker`` (inside)
  around one request on a keep-alive connection checked out of a ``Pool``.
- Agents are ``Registry`` entries with capabilities and a lease (``ttl``) that each
  agent's heartbeat task renews; an agent whose lease lapsed registers again.
- A ``HealthMonitor`` re-checks every agent each ``health_interval`` seconds: unhealthy
  when switched sick (``POST /admin/agents/{id}``), degraded with ``DEGRADED_AFTER`` or
  more upstream failures in the ``ErrorStore``'s window, healthy otherwise; it updates
  the registry (which is what routing reads) and publishes ``agent.<id>.health``.
- The ``SignalBus`` carries ``task.<capability>.done`` (from the agents),
  ``agent.<id>.health`` (from the monitor) and ``breaker.upstream.state`` (from the
  breaker); the ``Dashboard``'s async handlers count them on the event loop.
- ``GET /metrics``: Prometheus text: ``ferrule.metrics.PrometheusCollector`` over the
  ``Metrics`` (the ``agent_service_op_seconds`` histogram) and every other ferrule part
  (``ferrule_<part>_<figure>``, labelled ``name``: the limiter ``clients``, the breaker
  and retry policy ``upstream``, the bus ``signals`` and its subscriptions, the error
  store, registry, connection pool and health monitor), plus the ``ServiceCollector``
  gauges; ``GET /health``: JSON, one row per
  agent. ``POST /admin/upstream`` switches the upstream's failure rate.

Every request gets an answer: 200, 429, or 503 with ``reason`` one of ``no_agent`` (no
capable agent is healthy or degraded), ``circuit_open`` (the breaker fails fast; with
``Retry-After``), ``upstream_failed`` (still failing after the retries) or
``pool_timeout`` (no upstream connection within ``pool_timeout`` seconds).

Everything runs on the event loop's thread, the monitor's async checks included; only
the monitor's round itself (which waits for the checks) runs on its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ferrule
from ferrule.metrics import PrometheusCollector
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from examples.agent_service.upstream import FlakyUpstream, UpstreamConnection, UpstreamError

CAPABILITIES = ("summarize", "translate", "search")
# Upstream failures held in the ErrorStore (its max_age window) that make an agent degraded.
DEGRADED_AFTER = 3
ROUTABLE = ("healthy", "degraded")  # in order of preference


@dataclass
class Settings:
    """What the command line (``python -m examples.agent_service --help``) can change."""

    agents: int = 6
    rate: float = 20.0  # requests per second per client
    burst: int = 20
    fail_rate: float = 0.05  # the upstream's share of 503s
    upstream_latency: float = 0.002
    pool_size: int = 8
    pool_timeout: float = 5.0
    failure_threshold: int = 5
    reset_timeout: float = 1.0
    retry_attempts: int = 3
    lease: float = 3.0
    health_interval: float = 0.5
    error_window: float = 10.0


class AgentWorker:
    """One agent: its registry entry's value. Touched only on the event loop, except
    ``sick``, which the monitor's check reads from its threads."""

    def __init__(self, agent_id: str, capabilities: tuple[str, ...], service: Service) -> None:
        self.agent_id = agent_id
        self.capabilities = capabilities
        self.service = service
        self.sick = False  # switched by POST /admin/agents/{id}; the check reports it
        self.heartbeating = True
        self.inflight = 0
        self.served = 0
        self.rejoined = 0

    def register(self) -> None:
        self.service.registry.register(
            self.agent_id,
            self,
            capabilities=self.capabilities,
            node="local",
            ttl=self.service.settings.lease,
        )

    async def heartbeat(self) -> None:
        """Renew the lease three times per lease period; join again if it lapsed."""
        registry = self.service.registry
        while True:
            await asyncio.sleep(self.service.settings.lease / 3)
            if self.heartbeating and not registry.heartbeat(self.agent_id):
                self.register()
                self.rejoined += 1

    async def handle(self, capability: str, payload: object) -> Any:
        self.inflight += 1
        try:
            answer = await self.service.call_upstream(
                {"agent": self.agent_id, "task": capability, "payload": payload}
            )
        finally:
            self.inflight -= 1
        self.served += 1
        self.service.bus.publish(f"task.{capability}.done", {"agent": self.agent_id})
        return answer


class Dashboard:
    """What the bus reports, counted by async handlers on the event loop."""

    def __init__(self) -> None:
        self.tasks_done: Counter[str] = Counter()
        self.breaker_trips = 0
        self.breaker_state = "closed"
        self.transitions: deque[dict[str, Any]] = deque(maxlen=100)

    async def on_task_done(self, signal: ferrule.Signal) -> None:
        self.tasks_done[signal.data["agent"]] += 1

    async def on_health(self, signal: ferrule.Signal) -> None:
        self.transitions.append({**signal.data, "at": round(signal.timestamp, 3)})

    async def on_breaker(self, signal: ferrule.Signal) -> None:
        self.breaker_state = signal.data["state"]
        if self.breaker_state == "open":
            self.breaker_trips += 1


class Service:
    """The platform's parts and their lifecycle (``start``/``stop`` on the event loop)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = s = settings or Settings()
        self.registry = ferrule.Registry()
        self.bus = ferrule.SignalBus()
        self.metrics = ferrule.Metrics(window=60.0)
        self.errors = ferrule.ErrorStore(max_per_agent=100, max_age=s.error_window)
        self.limiter = ferrule.RateLimiter(s.rate, burst=s.burst)
        self.breaker = ferrule.CircuitBreaker(
            failure_threshold=s.failure_threshold,
            reset_timeout=s.reset_timeout,
            expected=(UpstreamError,),
            name="upstream",
            bus=self.bus,
        )
        # Retry outside, breaker inside: an open circuit fails fast (CircuitOpen is not
        # an UpstreamError, so it is not retried).
        self.retry = ferrule.retry(
            attempts=s.retry_attempts, backoff=0.005, max_backoff=0.05, retry_on=(UpstreamError,)
        )
        self.call_upstream: Callable[[object], Awaitable[Any]] = self.retry(
            self.breaker(self._call_upstream_once)
        )
        self.upstream = FlakyUpstream(fail_rate=s.fail_rate, latency=s.upstream_latency)
        self.dashboard = Dashboard()
        self.agents = {
            f"agent-{i}": AgentWorker(
                f"agent-{i}",
                (CAPABILITIES[i % 3], CAPABILITIES[(i + 1) % 3]),
                self,
            )
            for i in range(1, s.agents + 1)
        }
        self.responses: Counter[tuple[int, str]] = Counter()
        self.pool: ferrule.Pool[UpstreamConnection] | None = None
        self.monitor: ferrule.HealthMonitor | None = None
        self._subscriptions: list[ferrule.Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []  # the agents' heartbeats

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        await self.upstream.start()
        port = self.upstream.port
        self.pool = ferrule.Pool(
            lambda: UpstreamConnection("127.0.0.1", port),
            max_size=s.pool_size,
            timeout=s.pool_timeout,
            validate=lambda conn: not conn.broken,
        )
        d = self.dashboard
        for pattern, handler in (
            ("task.*.done", d.on_task_done),
            ("agent.*.health", d.on_health),
            ("breaker.upstream.state", d.on_breaker),
        ):
            self._subscribe(pattern, handler)
        for agent in self.agents.values():
            agent.register()
            self._tasks.append(asyncio.create_task(agent.heartbeat()))
        self.monitor = ferrule.HealthMonitor(
            self.registry,
            interval=s.health_interval,
            check=self.check,
            timeout=0.5,
            bus=self.bus,
            loop=asyncio.get_running_loop(),  # async checks run as tasks on this loop
        )
        self.monitor.start()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.monitor is not None:
            await asyncio.to_thread(self.monitor.stop)  # joins its thread: not on the loop
        for sub in self._subscriptions:
            sub.cancel()
        if self.pool is not None:
            self.pool.close()
        await self.upstream.stop()

    def _subscribe(
        self, pattern: str, handler: Callable[[ferrule.Signal], Awaitable[None]]
    ) -> None:
        """Deliver the signals matching ``pattern`` to an async handler: one task on this
        (the running) loop per subscription, no thread. The Dashboard's handlers are bound
        methods, held weakly: the Service keeps the Dashboard alive."""
        self._subscriptions.append(self.bus.subscribe(pattern, handler, maxsize=65536))

    # ---- the agents' work -----------------------------------------------------------

    async def _call_upstream_once(self, payload: object) -> Any:
        assert self.pool is not None
        with self.metrics.time("upstream.call"):
            try:
                async with self.pool.acquire_async() as conn:
                    try:
                        status, body = await conn.request("/work", payload)
                    except (OSError, asyncio.IncompleteReadError) as exc:
                        raise ferrule.Discard(f"upstream connection lost: {exc!r}") from exc
            except ferrule.Discard as exc:  # the pool closed that connection
                raise UpstreamError(str(exc)) from exc
            if status != 200:
                raise UpstreamError(f"upstream answered {status}")
            return json.loads(body)

    async def check(self, agent: ferrule.Agent) -> str:
        """The monitor's check: a task on the service's loop, all agents concurrently."""
        worker: AgentWorker = agent.value
        if worker.sick:
            return "unhealthy"
        if self.errors.count(agent.agent_id) >= DEGRADED_AFTER:
            return "degraded"
        return "healthy"

    def pick(self, capability: str) -> AgentWorker | None:
        """The least busy routable agent with ``capability`` (healthy before degraded)."""
        for health in ROUTABLE:
            found = self.registry.find(capability=capability, health=health)
            if found:
                workers: list[AgentWorker] = [a.value for a in found]
                return min(workers, key=lambda w: (w.inflight, w.served))
        return None

    async def run_task(
        self, client: str, capability: str, payload: object
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, headers) for one task request."""
        try:
            async with self.limiter.limit(client, timeout=0):
                agent = self.pick(capability)
                if agent is None:
                    return 503, {"reason": "no_agent", "capability": capability}, _after(1.0)
                try:
                    answer = await agent.handle(capability, payload)
                except ferrule.CircuitOpen as exc:
                    body = {"reason": "circuit_open", "retry_after": exc.retry_after}
                    return 503, body, _after(exc.retry_after)
                except UpstreamError as exc:
                    self.errors.record(agent.agent_id, exc)
                    return 503, {"reason": "upstream_failed", "agent": agent.agent_id}, {}
                except ferrule.PoolTimeout:
                    return 503, {"reason": "pool_timeout"}, _after(1.0)
                return 200, {"agent": agent.agent_id, "answer": answer}, {}
        except ferrule.RateLimited as exc:
            retry_after = exc.decision.retry_after
            return 429, {"reason": "rate_limited", "retry_after": retry_after}, _after(retry_after)

    # ---- reports --------------------------------------------------------------------

    def agent_rows(self) -> list[dict[str, Any]]:
        rows = []
        for agent_id, worker in sorted(self.agents.items()):
            entry = self.registry.get(agent_id)
            rows.append(
                {
                    "agent_id": agent_id,
                    "capabilities": list(worker.capabilities),
                    "health": entry.health if entry is not None else "gone",
                    "served": worker.served,
                    "tasks_done_seen_on_bus": self.dashboard.tasks_done[agent_id],
                    "inflight": worker.inflight,
                    "recent_errors": self.errors.count(agent_id),
                    "rejoined": worker.rejoined,
                    "sick": worker.sick,
                }
            )
        return rows

    def health(self) -> dict[str, Any]:
        assert self.pool is not None
        rows = self.agent_rows()
        stats = self.breaker.stats()
        pool = self.pool.stats()
        responses: Counter[str] = Counter()
        for (status, _), n in self.responses.items():
            responses[str(status)] += n
        state = self.breaker.state  # an open breaker past its timeout reads half_open
        ok = state == "closed" and all(r["health"] == "healthy" for r in rows)
        return {
            "status": "ok" if ok else "degraded",
            "breaker": {
                "state": state,
                "trips": self.dashboard.breaker_trips,
                "retry_after": self.breaker.retry_after,
                "calls": stats.calls,
                "failures": stats.failures,
                "rejections": stats.rejections,
            },
            "pool": {
                "max_size": self.pool.max_size,
                "size": pool.size,
                "in_use": pool.in_use,
                "waiting": pool.waiting,
                "created": pool.created,
                "discarded": pool.discarded,
                "timeouts": pool.timeouts,
            },
            "upstream": self.upstream.stats(),
            "responses": dict(responses),
            "responses_by_reason": {f"{s} {r}": n for (s, r), n in sorted(self.responses.items())},
            "health_transitions": len(self.dashboard.transitions),
            "agents": rows,
        }


def _after(seconds: float) -> dict[str, str]:
    """A ``Retry-After`` header: whole seconds, rounded up, at least 1 (RFC 9110)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class ServiceCollector(Collector):
    """The service's own gauges and counters, read at scrape time."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        responses = CounterMetricFamily(
            "agent_service_responses", "Responses by status and reason", labels=["status", "reason"]
        )
        for (status, reason), n in sorted(svc.responses.items()):
            responses.add_metric([str(status), reason], n)
        yield responses
        stats = svc.breaker.stats()
        state = GaugeMetricFamily(
            "agent_service_breaker_state", "1 for the upstream breaker's state", labels=["state"]
        )
        for name in ("closed", "open", "half_open"):
            state.add_metric([name], 1.0 if stats.state == name else 0.0)
        yield state
        yield CounterMetricFamily(
            "agent_service_breaker_trips",
            "Times the breaker opened",
            value=svc.dashboard.breaker_trips,
        )
        if svc.pool is not None:
            pool = svc.pool.stats()
            for name, value in (
                ("size", pool.size),
                ("in_use", pool.in_use),
                ("waiting", pool.waiting),
            ):
                yield GaugeMetricFamily(
                    f"agent_service_pool_{name}", f"Upstream connection pool: {name}", value=value
                )
        up = svc.upstream.stats()
        yield GaugeMetricFamily(
            "agent_service_upstream_peak_connections",
            "Most upstream connections open at once",
            value=up["peak_connections"],
        )
        health = GaugeMetricFamily(
            "agent_service_agent_health", "1 for each agent's health", labels=["agent", "health"]
        )
        served = CounterMetricFamily("agent_service_agent_tasks", "Tasks served", labels=["agent"])
        errors = GaugeMetricFamily(
            "agent_service_agent_recent_errors", "Upstream failures held", labels=["agent"]
        )
        for row in svc.agent_rows():
            health.add_metric([row["agent_id"], row["health"]], 1.0)
            served.add_metric([row["agent_id"]], row["served"])
            errors.add_metric([row["agent_id"]], row["recent_errors"])
        yield health
        yield served
        yield errors


def build_app(service: Service) -> Starlette:
    """The ASGI app; its lifespan starts and stops ``service``."""
    prometheus = CollectorRegistry()
    parts = PrometheusCollector(service.metrics, prefix="agent_service_op")
    for name, part in (
        ("clients", service.limiter),
        ("upstream", service.breaker),
        ("upstream_retry", service.retry),
        ("signals", service.bus),
        ("agent_errors", service.errors),
        ("agents", service.registry),
    ):
        parts.add(part, name=name)
    prometheus.register(parts)
    prometheus.register(ServiceCollector(service))

    async def tasks(request: Request) -> Response:
        started = time.perf_counter()
        capability = request.path_params["capability"]
        client = request.headers.get("x-client", "anonymous")
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        status, body, headers = await service.run_task(client, capability, payload)
        service.responses[(status, body.get("reason", "ok"))] += 1
        service.metrics.record(f"task.{capability}", time.perf_counter() - started, status == 200)
        return JSONResponse(body, status_code=status, headers=headers)

    async def health(request: Request) -> Response:
        return JSONResponse(service.health())

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(prometheus), media_type=CONTENT_TYPE_LATEST)

    async def admin_upstream(request: Request) -> Response:
        body = await request.json()
        service.upstream.fail_rate = float(body["fail_rate"])
        return JSONResponse(service.upstream.stats())

    async def admin_agent(request: Request) -> Response:
        agent = service.agents.get(request.path_params["agent_id"])
        if agent is None:
            return JSONResponse({"reason": "unknown agent"}, status_code=404)
        body = await request.json()
        agent.sick = bool(body.get("sick", agent.sick))
        agent.heartbeating = bool(body.get("heartbeat", agent.heartbeating))
        assert service.monitor is not None
        # One round now, so the registry (what routing reads) has changed on return.
        statuses = await service.monitor.check_now_async()
        return JSONResponse({"agent_id": agent.agent_id, "health": statuses.get(agent.agent_id)})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        # Made by start(); held weakly by the collector (the service keeps them).
        assert service.pool is not None and service.monitor is not None
        parts.add(service.pool, name="upstream_connections")
        parts.add(service.monitor, name="agent_health")
        for sub in service._subscriptions:
            parts.add(sub, name="dashboard_" + sub.pattern.split(".")[0])
        try:
            yield
        finally:
            await service.stop()

    return Starlette(
        routes=[
            Route("/tasks/{capability}", tasks, methods=["POST"]),
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/admin/upstream", admin_upstream, methods=["POST"]),
            Route("/admin/agents/{agent_id}", admin_agent, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
