"""A real ``redis-server`` for the tests and benchmarks of ``ferrule.redis``.

Each server runs on 127.0.0.1 with a free port, no persistence (``--save ''
--appendonly no``) and its own temporary directory, and is stopped afterwards. The
fixtures skip (with the reason) only when the ``redis`` package or the ``redis-server``
binary cannot be had; ``make test`` installs the binary (Debian's ``redis-server``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

_CANDIDATES = ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server")


def binary() -> str | None:
    """The redis-server binary, or None."""
    found = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if found:
        return found
    return next((c for c in _CANDIDATES if os.access(c, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def skip_reason() -> str | None:
    """Why the Redis tests cannot run here, or None."""
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the 'redis' package is not installed (pip install 'ferrule[redis]')"
    if binary() is None:
        return "redis-server is not installed (make test installs it: apt-get install redis-server)"
    return None


class RedisServer:
    """One redis-server process; ``start``/``stop`` may be repeated on the same port."""

    def __init__(self, port: int | None = None) -> None:
        exe = binary()
        if exe is None:
            raise RuntimeError("redis-server not found")
        self.exe = exe
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="ferrule-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--daemonize", "no", "--protected-mode", "no", "--logfile", ""]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer PING in time")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        p.kill()
        p.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self, **kw: Any) -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kw.setdefault("socket_timeout", 5.0)
        kw.setdefault("socket_connect_timeout", 2.0)
        kw.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    def async_client(self, **kw: Any) -> Any:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        kw.setdefault("socket_timeout", 5.0)
        kw.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.asyncio.Redis(host="127.0.0.1", port=self.port, **kw)


def server_or_skip() -> RedisServer:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    s = RedisServer()
    try:
        s.start()
    except RuntimeError as e:
        s.close()
        pytest.skip(f"redis-server could not start: {e}")
    return s


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server for the whole session."""
    s = server_or_skip()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[Any]:
    """A client of the session's server, on an empty database."""
    c = redis_server.client()
    c.flushall()
    try:
        yield c
    finally:
        c.close()


# ---- workers for the multi-process tests (importable by spawned children) ----------------


def hammer(
    port: int, rate: float, burst: int, key: str, seconds: float, start: float
) -> tuple[int, float, float]:
    """Try to acquire ``key`` as fast as possible from ``start`` (wall clock, or at once if
    that has passed) for ``seconds``; return the grants and the wall-clock instants just
    before the first request and just after the last reply."""
    import redis
    from ferrule.redis import RedisRateLimiter

    rl = RedisRateLimiter(redis.Redis(host="127.0.0.1", port=port), rate, burst=burst)
    while time.time() < start:
        time.sleep(0.001)
    granted = 0
    first = time.time()
    end = first + seconds
    while time.time() < end:
        granted += rl.try_acquire(key)
    return granted, first, time.time()


def lease_holder(port: int, agent_id: str, ttl: float, beats: int, gap: float) -> int:
    """Register ``agent_id`` with a lease, heartbeat it ``beats`` times ``gap`` apart,
    then stop (the lease then runs out); return how many heartbeats succeeded."""
    import redis
    from ferrule.redis import RedisRegistry

    reg = RedisRegistry(redis.Redis(host="127.0.0.1", port=port), ttl=ttl)
    reg.register(agent_id, {"pid": os.getpid()}, capabilities=["work"], node="n1")
    ok = 0
    for _ in range(beats):
        time.sleep(gap)
        ok += reg.heartbeat(agent_id)
    return ok


def breaker_fail(port: int, name: str, failures: int) -> str:
    """Fail ``failures`` calls through the shared breaker ``name`` (threshold
    ``failures``, an hour's reset timeout); return the state this process then sees."""
    import redis
    from ferrule.redis import RedisCircuitBreaker

    cb = RedisCircuitBreaker(
        redis.Redis(host="127.0.0.1", port=port), name, failures, 3600.0, expected=OSError
    )

    def down() -> None:
        raise OSError("down")

    for _ in range(failures):
        with contextlib.suppress(OSError):
            cb.call(down)
    return cb.state


def breaker_call(port: int, name: str) -> str:
    """One call through the shared breaker ``name`` from a new process: "ran" or "open"."""
    import redis
    from ferrule import CircuitOpen
    from ferrule.redis import RedisCircuitBreaker

    cb = RedisCircuitBreaker(redis.Redis(host="127.0.0.1", port=port), name, 5, 3600.0)
    try:
        cb.call(len, "x")
    except CircuitOpen:
        return "open"
    return "ran"


def breaker_probe(port: int, name: str, start: float, hold: float, after: float) -> tuple[str, str]:
    """At ``start`` (wall clock) try to enter the shared half-open breaker ``name``: a
    probe holds its slot for ``hold`` seconds, then succeeds. At ``after``, call again.
    Returns ("probe" or "rejected", then "ran" or "open")."""
    import redis
    from ferrule import CircuitOpen
    from ferrule.redis import RedisCircuitBreaker

    cb = RedisCircuitBreaker(redis.Redis(host="127.0.0.1", port=port), name, 1, 1.0)
    while time.time() < start:
        time.sleep(0.001)
    try:
        with cb:
            first = "probe"
            time.sleep(hold)
    except CircuitOpen:
        first = "rejected"
    while time.time() < after:
        time.sleep(0.005)
    try:
        cb.call(len, "x")
    except CircuitOpen:
        return first, "open"
    return first, "ran"
