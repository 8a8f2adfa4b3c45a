"""Demo step: ResourceManager budgets and a Pool of real HTTP connections."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import ferrule
from ferrule._demos import rate


class _PrintBus:
    """Stands in for a SignalBus: anything with publish(type, data)."""

    def publish(self, signal_type: str, data: dict[str, Any]) -> int:
        print(
            f"    {signal_type}: {data['previous']} -> {data['pressure']}"
            f" ({data['used']}/{data['limit']})"
        )
        return 1


def _budgets() -> None:
    print("== ResourceManager: named budgets in atomics, ttl leases, pressure events")
    clock = ferrule.ManualClock()
    rm = ferrule.ResourceManager({"gpu_mem_gb": 20, "workers": 4}, bus=_PrintBus(), clock=clock)
    job = rm.acquire("gpu_mem_gb", 18)  # 90%: moderate
    lease = rm.acquire("gpu_mem_gb", 2, ttl=30.0)  # 100%: severe
    print(f"  try_acquire with no room: {rm.try_acquire('gpu_mem_gb')}")
    clock.advance(30.0)  # the ttl lease was never released: it is reclaimed
    print(f"  30 s later: {rm.usage()['gpu_mem_gb']}, ttl lease released={lease.released}")
    job.release()

    n = 200_000
    acquire = rm.acquire
    t0 = time.perf_counter()
    for _ in range(n):
        acquire("workers").release()
    dt = time.perf_counter() - t0
    print(f"  {n} acquire+release: {rate(n, dt)}")


def _http_pool() -> None:
    print("== Pool: 8 threads share 3 keep-alive HTTP connections to a local server")
    lock = threading.Lock()
    server_conns = [0, 0]  # open now, peak

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            with lock:
                server_conns[0] += 1
                server_conns[1] = max(server_conns)

        def finish(self) -> None:
            with lock:
                server_conns[0] -= 1
            super().finish()

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    serving = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02})
    serving.start()
    pool = ferrule.Pool(
        lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=10), max_size=3
    )
    per_thread = 50

    def caller() -> None:
        for _ in range(per_thread):
            with pool.acquire() as conn:
                conn.request("GET", "/")
                conn.getresponse().read()

    try:
        ts = [threading.Thread(target=caller) for _ in range(8)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        dt = time.perf_counter() - t0
    finally:
        pool.close()
        httpd.shutdown()
        httpd.server_close()
        serving.join()
    s = pool.stats()
    n = 8 * per_thread
    print(
        f"  {n} requests in {dt:.2f} s ({n / dt:.0f} req/s); connections created={s.created},"
        f" server saw at most {server_conns[1]} at once"
    )

    local = ferrule.Pool(object, max_size=4)
    acquire = local.acquire
    m = 100_000
    t0 = time.perf_counter()
    for _ in range(m):
        with acquire():
            pass
    print(f"  {m} checkout+return: {rate(m, time.perf_counter() - t0)}")


def run() -> None:
    _budgets()
    _http_pool()
