"""``python -m examples.agent_service.load --duration 20``: start the service, drive load
against it, break things on a schedule, and print what happened.

Load: ``--workers`` concurrent ``httpx.AsyncClient`` loops spread over ``--clients``
client ids (``X-Client``). Polite workers wait out the ``retry_after`` of a 429 or 503;
``--greedy`` more workers share one client id and ignore it, so they meet the rate
limit. Chaos, at fixed fractions of the run: the upstream fails every request for a
while (the breaker opens, then recovers once the upstream is healthy again), and one
agent is switched sick for a while (the monitor marks it unhealthy; nothing is routed
to it until it is well). Exit status 1 if any request got no HTTP answer.

With a Redis server (``--redis-url``, default ``$REDIS_URL``) it starts ``--processes``
service processes (default 2) sharing it under a prefix of the run's own, spreads the
clients over them, switches things through the first one only (the upstream switch
reaches every process over the bus; the sick agent is the first process's), and deletes
what the run left in Redis at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from examples.agent_service.service import CAPABILITIES, Settings

SICK_AGENT = "agent-2"
ROOT = Path(__file__).resolve().parents[2]  # where `python -m examples.agent_service` runs


@contextlib.contextmanager
def start_service(*args: str, timeout: float = 30.0) -> Iterator[str]:
    """Run ``python -m examples.agent_service --port 0 *args`` in a subprocess; yield its
    base URL once it listens, and always stop it (SIGTERM, then SIGKILL) afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.agent_service", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # EOF (''): the process ended before listening
        if not line.startswith("listening on "):
            raise RuntimeError(f"the service did not start (exit status {proc.wait(timeout)})")
        yield line.split()[-1]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class Tally:
    """Every request's outcome, from the client's side."""

    started: float = field(default_factory=time.perf_counter)
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    served_by: Counter[str] = field(default_factory=Counter)
    sick_window: tuple[float, float] | None = None
    sick_base: str = ""  # the process whose agent is switched sick
    served_by_sick_agent_while_sick: int = 0
    sick_agent_seen_after_heal: bool = False
    greedy: Counter[str] = field(default_factory=Counter)

    def add(self, t0: float, t1: float, response: httpx.Response, base: str) -> None:
        body = response.json()
        reason = body.get("reason", "ok")
        self.statuses[f"{response.status_code} {reason}"] += 1
        self.latencies.append(t1 - t0)
        agent = body.get("agent")
        if response.status_code == 200:
            self.served_by[agent] += 1
            if agent == SICK_AGENT and base == self.sick_base and self.sick_window is not None:
                begin, end = self.sick_window
                # Requests sent after the sick switch was acknowledged and answered
                # before the heal was requested: none may reach the sick agent.
                if t0 >= begin and (end == 0.0 or t1 <= end):
                    self.served_by_sick_agent_while_sick += 1
                elif end and t0 > end:
                    self.sick_agent_seen_after_heal = True


async def worker(
    base: str, client_id: str, n: int, tally: Tally, stop_at: float, *, polite: bool
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30.0) as http:
        i = 0
        while time.perf_counter() < stop_at:
            capability = CAPABILITIES[(n + i) % len(CAPABILITIES)]
            i += 1
            t0 = time.perf_counter()
            try:
                response = await http.post(
                    f"/tasks/{capability}", json={"n": i}, headers={"X-Client": client_id}
                )
            except httpx.HTTPError as exc:
                tally.lost.append(repr(exc))
                continue
            t1 = time.perf_counter()
            tally.add(t0, t1, response, base)
            if not polite:
                tally.greedy[str(response.status_code)] += 1
            if response.status_code != 200:
                wait = float(response.json().get("retry_after", 0.01)) if polite else 0.005
                await asyncio.sleep(min(wait, 1.0))


async def chaos(base: str, duration: float, tally: Tally, log: list[str]) -> None:
    """The upstream fails hard for a while, then one agent is sick for a while."""
    start = tally.started
    outage = max(1.5, 0.1 * duration)

    async def at(fraction: float) -> None:
        await asyncio.sleep(max(0.0, start + fraction * duration - time.perf_counter()))

    def note(what: str) -> None:
        log.append(f"  t={time.perf_counter() - start:5.1f}s  {what}")

    async with httpx.AsyncClient(base_url=base, timeout=30.0) as http:
        await at(0.3)
        await http.post("/admin/upstream", json={"fail_rate": 1.0})
        note("upstream fails every request")
        await asyncio.sleep(outage)
        await http.post("/admin/upstream", json={"fail_rate": 0.05})
        note("upstream back to 5% failures")
        await at(0.55)
        r = await http.post(f"/admin/agents/{SICK_AGENT}", json={"sick": True})
        tally.sick_window = (time.perf_counter(), 0.0)
        note(f"{SICK_AGENT} switched sick: health {r.json()['health']}")
        await at(0.8)
        heal_at = time.perf_counter()
        r = await http.post(f"/admin/agents/{SICK_AGENT}", json={"sick": False})
        tally.sick_window = (tally.sick_window[0], heal_at)
        note(f"{SICK_AGENT} well again: health {r.json()['health']}")


async def drive(
    bases: list[str], args: argparse.Namespace
) -> tuple[Tally, list[dict[str, Any]], list[str]]:
    """Clients spread over ``bases`` (round robin); chaos through the first."""
    tally = Tally(sick_base=bases[0])
    log: list[str] = []
    stop_at = tally.started + args.duration

    def at(n: int) -> str:
        return bases[n % len(bases)]

    workers = [
        worker(at(n), f"client-{n % args.clients}", n, tally, stop_at, polite=True)
        for n in range(args.workers)
    ]
    workers += [
        worker(at(n), "greedy", n, tally, stop_at, polite=False) for n in range(args.greedy)
    ]
    await asyncio.gather(chaos(bases[0], args.duration, tally, log), *workers)
    healths = []
    for base in bases:
        async with httpx.AsyncClient(base_url=base, timeout=30.0) as http:
            healths.append((await http.get("/health")).json())
    return tally, healths, log


def report(tally: Tally, healths: list[dict[str, Any]], log: list[str], duration: float) -> None:
    health = healths[0]
    answered = len(tally.latencies)
    ms = sorted(x * 1000 for x in tally.latencies)
    q = statistics.quantiles(ms, n=100) if len(ms) >= 2 else [ms[0] if ms else 0.0] * 99
    ok = sum(n for k, n in tally.statuses.items() if k.startswith("200"))
    limited = sum(n for k, n in tally.statuses.items() if k.startswith("429"))
    cores, load = os.cpu_count(), os.getloadavg()[0]
    print(f"\n== {duration:.0f} s of load ({cores} cores, load average {load:.1f} at the end) ==")
    print("events:")
    print("\n".join(log))
    print(
        f"requests: {answered + len(tally.lost)} sent, {answered} answered, {len(tally.lost)} lost"
    )
    print(f"throughput: {answered / duration:.0f} answers/s ({ok / duration:.0f} 200s/s)")
    print(f"latency: p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {ms[-1] if ms else 0:.1f} ms")
    print(f"429s: {limited}")
    print("by status: " + ", ".join(f"{k}: {n}" for k, n in sorted(tally.statuses.items())))
    settings = Settings()
    greedy_ok, greedy_sent = tally.greedy["200"], sum(tally.greedy.values())
    print(
        f"greedy client over {len(healths)} process(es): {greedy_ok} of {greedy_sent} answered "
        f"200, at most {settings.burst + settings.rate * duration:.0f} allowed "
        f"(burst {settings.burst} + {settings.rate:g}/s x {duration:g} s)"
    )
    b = health["breaker"]
    trips = ", ".join(str(h["breaker"]["trips"]) for h in healths)
    trips = f"trips seen by each process {trips}" if len(healths) > 1 else f"{trips} trip(s)"
    print(
        f"breaker: {trips}, now {b['state']}; "
        f"{sum(h['breaker']['rejections'] for h in healths)} calls failed fast"
    )
    for h in healths:
        p, u = h["pool"], h["upstream"]
        print(
            f"pool{_node(h)}: max_size {p['max_size']}, created {p['created']}, discarded "
            f"{p['discarded']}; upstream saw at most {u['peak_connections']} connections open "
            "at once"
        )
    print(
        f"{SICK_AGENT}{_node(health)} served {tally.served_by_sick_agent_while_sick} requests "
        "while unhealthy, "
        f"{'and was routed to again' if tally.sick_agent_seen_after_heal else 'not yet since'} "
        "once well"
    )
    if health["redis"] is not None:
        d = health["redis"]["directory"] or {"agents": "?", "nodes": {}}
        print(
            f"redis: {len(healths)} process(es) sharing {health['redis']['url']} under "
            f"{health['redis']['prefix']!r}; the agent directory held {d['agents']} agents "
            f"on nodes {sorted(d['nodes'])}"
        )
    for h in healths:
        print(f"health{_node(h)}:")
        print(
            f"  {'agent':9} {'capabilities':20} {'health':10} {'served':>7} {'on bus':>7} "
            f"{'errors':>6}"
        )
        for row in h["agents"]:
            caps = ",".join(row["capabilities"])
            print(
                f"  {row['agent_id']:9} {caps:20} {row['health']:10} {row['served']:7} "
                f"{row['tasks_done_seen_on_bus']:7} {row['recent_errors']:6}"
            )
    for error in tally.lost[:5]:
        print(f"lost: {error}")


def _node(health: dict[str, Any]) -> str:
    """`` (node A)`` for a process sharing Redis, else nothing."""
    return f" ({health['redis']['node']})" if health["redis"] is not None else ""


def _reachable(url: str) -> bool:
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=0.5):
            return True
    except OSError:
        return False


def _drop_keys(url: str, prefix: str) -> str:
    """Delete every key under ``prefix``; what there was, by kind (``rl: 17, ...``)."""
    import redis

    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    kinds = Counter(k.decode()[len(prefix) :].split(":")[0] for k in keys)
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(kinds.items())) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.agent_service.load")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--workers", type=int, default=32, help="polite concurrent clients")
    parser.add_argument("--clients", type=int, default=16, help="client ids they share")
    parser.add_argument("--greedy", type=int, default=4, help="workers of one greedy client")
    parser.add_argument("--url", help="drive a service already running there instead")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", ""),
        help="run the service processes on this Redis server (default $REDIS_URL; '': none)",
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="service processes sharing Redis (default 2)"
    )
    args = parser.parse_args(argv)
    redis_url = "" if args.url else args.redis_url
    if redis_url and not _reachable(redis_url):
        print(f"no Redis server at {redis_url}: one process, every part in-process")
        redis_url = ""
    prefix = f"agent-service:{os.getpid()}:"
    with contextlib.ExitStack() as stack:
        if args.url:
            bases = [args.url]
        elif redis_url:
            shared = ("--redis-url", redis_url, "--redis-prefix", prefix)
            bases = [
                stack.enter_context(start_service(*shared, "--node", f"p{i + 1}"))
                for i in range(max(1, args.processes))
            ]
        else:
            bases = [stack.enter_context(start_service())]
        print(
            f"service at {', '.join(bases)}; driving load for {args.duration:g} s ...",
            flush=True,
        )
        tally, healths, log = asyncio.run(drive(bases, args))
    report(tally, healths, log, args.duration)
    if redis_url:
        print(f"redis: keys the run left, deleted: {_drop_keys(redis_url, prefix)}")
    return 1 if tally.lost else 0


if __name__ == "__main__":
    sys.exit(main())
