"""A toy multi-agent platform as an asyncio HTTP service, built on ferrule.

Structure (one ``Service`` per process, owned by the Starlette app's lifespan):

- ``POST /tasks/{capability}`` (header ``X-Client``): the client's settings come first,
  from a ``Cache`` in front of the ``ClientStore`` (a blocked client is answered 403;
  ``POST /admin/clients/{id}`` changes them); then the client's ``RateLimiter`` bucket
  is charged (``limiter.limit(client, timeout=0)``); a refusal answers 429 with
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
- With ``--redis-url`` (``shared.py``), the processes given the same server and prefix
  are one service: the limiter, the breaker, the client settings (a Redis hash, and an
  invalidating cache) and an agent directory are shared, and the breaker's changes and
  the ``/admin/upstream`` switch (``upstream.switch``) cross between processes on a
  ``RedisBus`` over the ``SignalBus``. Without it, everything is in-process.
- ``GET /metrics``: Prometheus text: ``ferrule.metrics.PrometheusCollector`` over the
  ``Metrics`` (the ``agent_service_op_seconds`` histogram) and every other ferrule part
  (``ferrule_<part>_<figure>``, labelled ``name``: the limiter ``clients``, the breaker
  and retry policy ``upstream``, the bus ``signals`` and its subscriptions, the error
  store, registry, connection pool and health monitor), plus the ``ServiceCollector``
  gauges (with Redis, the limiter and the breaker are not among the parts: they have no
  export, and the breaker's shared state is a ``ServiceCollector`` gauge); ``GET
  /health``: JSON, one row per agent. ``POST /admin/upstream`` switches the upstream's
  failure rate.

Every request gets an answer: 200, 403 (``client_blocked``), 429, or 503 with ``reason``
one of ``no_agent`` (no
capable agent is healthy or degraded), ``circuit_open`` (the breaker fails fast; with
``Retry-After``), ``upstream_failed`` (still failing after the retries) or
``pool_timeout`` (no upstream connection within ``pool_timeout`` seconds).

Everything runs on the event loop's thread, the monitor's async checks included; only
the monitor's round itself (which waits for the checks) runs on its own thread, and with
Redis the listeners of the ``RedisBus`` and the ``RedisInvalidation``, which only hand
signals to the ``SignalBus`` (whose handlers run on the loop) and evict cache entries.
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
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # shared.py needs the redis package: imported only with --redis-url
    from ferrule.redis import InvalidatingCache, RedisCircuitBreaker, RedisRateLimiter

    from examples.agent_service.shared import Fleet, RedisClientStore, RedisTier

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
    # The Redis tier (shared.py): "" keeps every part in-process.
    redis_url: str = ""
    redis_prefix: str = "agent-service:"
    node: str = ""  # this process in the agent directory; "": <host>:<pid>


# How long a client's settings stay cached. Without Redis, a change made through another
# process would show here only this much later; with it, at once (RedisInvalidation).
CLIENT_SETTINGS_TTL = 30.0


class ClientStore:
    """The clients' settings (``{"blocked": true}``), standing for the service's database:
    a dict here, a Redis hash every process reads (``shared.RedisClientStore``) with
    ``--redis-url``. Read through the service's cache; written by the admin endpoint."""

    def __init__(self) -> None:
        self._settings: dict[str, dict[str, Any]] = {}

    async def load(self, client_id: str) -> dict[str, Any]:
        return dict(self._settings.get(client_id, {}))

    def save(self, client_id: str, settings: dict[str, Any]) -> None:
        self._settings[client_id] = dict(settings)


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
        """Renew the lease three times per lease period; join again if it lapsed. The
        entry in the agent directory (with Redis) follows the same lease."""
        registry, fleet = self.service.registry, self.service.fleet
        while True:
            await asyncio.sleep(self.service.settings.lease / 3)
            if not self.heartbeating:
                continue
            if not registry.heartbeat(self.agent_id):
                self.register()
                self.rejoined += 1
            if fleet is not None:
                fleet.beat(self.agent_id, self.capabilities)

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
        self.clients: ferrule.Cache | InvalidatingCache = ferrule.Cache(
            10_000, ttl=CLIENT_SETTINGS_TTL
        )
        breaker_args: dict[str, Any] = {
            "failure_threshold": s.failure_threshold,
            "reset_timeout": s.reset_timeout,
            "expected": (UpstreamError,),
        }
        # With --redis-url, the parts every process shares, from shared.py's RedisTier;
        # otherwise their in-process counterparts.
        self.redis: RedisTier | None = None
        self.fleet: Fleet | None = None  # the agent directory, with Redis only
        self.limiter: ferrule.RateLimiter | RedisRateLimiter
        # The breaker the calls go through, and the one its state is read from: one
        # object in-process; with Redis, the same breaker on a sync client.
        self.breaker: ferrule.CircuitBreaker | RedisCircuitBreaker
        self.breaker_reads: ferrule.CircuitBreaker | RedisCircuitBreaker
        # What is published for every process: the local bus, or a RedisBus over it.
        self.signals: Any
        self.client_store: ClientStore | RedisClientStore
        if s.redis_url:
            from examples.agent_service.shared import RedisTier

            self.redis = r = RedisTier(s.redis_url, s.redis_prefix, s.node)
            self.signals = r.signal_bus(self.bus)
            self.limiter = r.limiter(s.rate, s.burst)
            self.breaker, self.breaker_reads = r.breakers(self.signals, **breaker_args)
            self.client_store = r.client_store()
            self.fleet = r.fleet(s.lease)
        else:
            self.signals = self.bus
            self.limiter = ferrule.RateLimiter(s.rate, burst=s.burst)
            self.breaker = self.breaker_reads = ferrule.CircuitBreaker(
                name="upstream", bus=self.bus, **breaker_args
            )
            self.client_store = ClientStore()
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
        self.subscriptions: dict[str, ferrule.Subscription] = {}  # by their /metrics name
        self._tasks: list[asyncio.Task[None]] = []  # the agents' heartbeats

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if self.redis is not None:
            self.redis.check()  # fail now, with the reason, if the server is not there
            # Evicts in every process what this one writes; waits until it listens.
            assert isinstance(self.clients, ferrule.Cache)
            self.clients = self.redis.invalidating(self.clients)
        await self.upstream.start()
        port = self.upstream.port
        self.pool = ferrule.Pool(
            lambda: UpstreamConnection("127.0.0.1", port),
            max_size=s.pool_size,
            timeout=s.pool_timeout,
            validate=lambda conn: not conn.broken,
        )
        d = self.dashboard
        handlers = [
            ("dashboard_task", "task.*.done", d.on_task_done),
            ("dashboard_agent", "agent.*.health", d.on_health),
            ("dashboard_breaker", "breaker.upstream.state", d.on_breaker),
        ]
        if self.redis is not None:
            handlers += [
                ("upstream_switch", "upstream.switch", self._on_upstream_switch),
                ("agent_directory", "agent.*.health", self._on_agent_health),
            ]
        for name, pattern, handler in handlers:
            self._subscribe(name, pattern, handler)
        for agent in self.agents.values():
            agent.register()
            if self.fleet is not None:
                self.fleet.join(agent.agent_id, agent.capabilities)
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
        for sub in self.subscriptions.values():
            sub.cancel()
        if self.pool is not None:
            self.pool.close()
        await self.upstream.stop()
        if self.redis is not None:
            assert self.fleet is not None
            self.fleet.leave(list(self.agents))
            await asyncio.to_thread(self.redis.close)  # joins the listener threads
            await self.redis.aclose()

    def _subscribe(
        self, name: str, pattern: str, handler: Callable[[ferrule.Signal], Awaitable[None]]
    ) -> None:
        """Deliver the signals matching ``pattern`` (from every process, with Redis) to
        an async handler: one task on this (the running) loop per subscription, no
        thread. The handlers are bound methods, held weakly: the Service keeps their
        objects alive."""
        self.subscriptions[name] = self.signals.subscribe(pattern, handler, maxsize=65536)

    def switch_upstream(self, fail_rate: float) -> None:
        """Set the upstream's failure rate here and, with Redis, in every process (the
        upstream stands for one dependency every process calls)."""
        self.upstream.fail_rate = fail_rate
        if self.redis is not None:
            self.signals.publish("upstream.switch", {"fail_rate": fail_rate, "node": self.node})

    async def _on_upstream_switch(self, signal: ferrule.Signal) -> None:
        if signal.data["node"] != self.node:  # this process switched already
            self.upstream.fail_rate = float(signal.data["fail_rate"])

    async def _on_agent_health(self, signal: ferrule.Signal) -> None:
        """The monitor's transitions, copied into the agent directory."""
        assert self.fleet is not None
        self.fleet.health(signal.data["agent_id"], signal.data["health"])

    @property
    def node(self) -> str:
        return self.redis.node if self.redis is not None else "local"

    async def client_settings(self, client: str) -> dict[str, Any]:
        """The client's settings: the cache's, else loaded from the store (one load per
        client at a time, shared by its concurrent requests). A store that cannot be
        read (Redis down) lets the client through, and nothing is cached."""
        try:
            settings: dict[str, Any] = await self.clients.get_or_set_async(
                client, lambda: self.client_store.load(client)
            )
        except ferrule.BackendError:
            return {}
        return settings

    def set_client_settings(self, client: str, settings: dict[str, Any]) -> None:
        """Write the store, then the cache (with Redis, that evicts the client's entry
        from every other process's cache)."""
        self.client_store.save(client, settings)
        self.clients.set(client, settings)

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
        if (await self.client_settings(client)).get("blocked"):
            return 403, {"reason": "client_blocked", "client": client}, {}
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

    def breaker_figures(self) -> dict[str, Any]:
        """The breaker's state (shared by every process, with Redis) and this process's
        calls through it."""
        figures: dict[str, Any] = {"trips": self.dashboard.breaker_trips}
        try:  # an open breaker past its timeout reads half_open
            figures["state"] = self.breaker_reads.state
            figures["retry_after"] = self.breaker_reads.retry_after
        except ferrule.BackendError:  # Redis is down: the calls fail open meanwhile
            figures["state"], figures["retry_after"] = "unknown", None
        if isinstance(self.breaker, ferrule.CircuitBreaker):
            stats = self.breaker.stats()
            return {**figures, **{k: getattr(stats, k) for k in _BREAKER_COUNTS}}
        # A RedisCircuitBreaker on an asyncio client reads nothing synchronously, its
        # counters included; the calls it admitted are the timed upstream calls, and what
        # it refused is what was answered circuit_open.
        calls = self.metrics.totals("upstream.call")
        rejected = self.responses[(503, "circuit_open")]
        return {**figures, "calls": calls.count, "failures": calls.errors, "rejections": rejected}

    def health(self) -> dict[str, Any]:
        assert self.pool is not None
        rows = self.agent_rows()
        pool = self.pool.stats()
        responses: Counter[str] = Counter()
        for (status, _), n in self.responses.items():
            responses[str(status)] += n
        breaker = self.breaker_figures()
        ok = breaker["state"] == "closed" and all(r["health"] == "healthy" for r in rows)
        shared = None
        if self.redis is not None and self.fleet is not None:
            shared = {
                "url": self.redis.url,
                "prefix": self.redis.prefix,
                "node": self.node,
                "directory": self.fleet.summary(),
            }
        return {
            "status": "ok" if ok else "degraded",
            "redis": shared,
            "breaker": breaker,
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


_BREAKER_COUNTS = ("calls", "failures", "rejections")


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
        shared_state = svc.breaker_figures()["state"]
        state = GaugeMetricFamily(
            "agent_service_breaker_state", "1 for the upstream breaker's state", labels=["state"]
        )
        for name in ("closed", "open", "half_open"):
            state.add_metric([name], 1.0 if shared_state == name else 0.0)
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
    exported: list[tuple[str, object]] = [
        ("upstream_retry", service.retry),
        ("signals", service.bus),
        ("agent_errors", service.errors),
        ("agents", service.registry),
    ]
    if service.redis is None:  # the Redis parts have no PrometheusCollector export
        exported += [("clients", service.limiter), ("upstream", service.breaker)]
    for name, part in exported:
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
        service.switch_upstream(float(body["fail_rate"]))
        return JSONResponse(service.upstream.stats())

    async def admin_client(request: Request) -> Response:
        client = request.path_params["client_id"]
        body = await request.json()
        settings = {"blocked": bool(body.get("blocked", False))}
        service.set_client_settings(client, settings)
        return JSONResponse({"client_id": client, **settings})

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
        for name, sub in service.subscriptions.items():
            parts.add(sub, name=name)
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
            Route("/admin/clients/{client_id}", admin_client, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
