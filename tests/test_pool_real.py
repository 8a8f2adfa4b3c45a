"""Pool doing real work: sqlite3 connections shared by threads, and http.client
connections to an http.server started by the test on 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.client
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from ferrule import Discard, Pool


class Counted:
    """Counts objects open at once (a stand-in for the server's view)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.peak = 0
        self.total = 0

    def up(self) -> None:
        with self.lock:
            self.open += 1
            self.total += 1
            self.peak = max(self.peak, self.open)

    def down(self) -> None:
        with self.lock:
            self.open -= 1


def run_threads(n: int, body: Any) -> None:
    errors: list[BaseException] = []

    def wrap(i: int) -> None:
        try:
            body(i)
        except BaseException as e:
            errors.append(e)

    ts = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors[:3]


# ---- sqlite3 -------------------------------------------------------------------------------


def test_sqlite_connections_shared_by_threads(tmp_path: Path, threads: int) -> None:
    db = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(db)) as setup:
        setup.execute("create table hits (worker int, n int)")
    counted = Counted()

    class Conn(sqlite3.Connection):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            counted.up()

        def close(self) -> None:
            counted.down()
            super().close()

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(db, timeout=30, check_same_thread=False, factory=Conn)
        conn.execute("pragma synchronous = off")  # the test needs no durability
        return conn

    k = 3
    pool = Pool(connect, max_size=k, validate=lambda c: c.execute("select 1").fetchone() == (1,))
    per_thread = 25

    def body(i: int) -> None:
        for n in range(per_thread):
            with pool.acquire(timeout=30) as conn, conn:  # conn: one transaction
                conn.execute("insert into hits values (?, ?)", (i, n))

    run_threads(threads, body)
    with pool.acquire() as conn:
        (rows,) = conn.execute("select count(*) from hits").fetchone()
    assert rows == threads * per_thread
    assert counted.peak <= k
    s = pool.stats()
    assert s.created == counted.total <= k
    pool.close()
    assert counted.open == 0


# ---- http.server + http.client -----------------------------------------------------------


class Server:
    def __init__(self) -> None:
        self.connections = Counted()
        self.release_slow = threading.Event()
        self.slow_started = threading.Event()
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: one TCP connection per pooled client
            disable_nagle_algorithm = True  # headers and body are separate small writes

            def setup(self) -> None:
                super().setup()
                state.connections.up()

            def finish(self) -> None:
                state.connections.down()
                super().finish()

            def do_GET(self) -> None:
                if self.path == "/slow":
                    state.slow_started.set()
                    state.release_slow.wait(30)
                body = self.path.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.release_slow.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.read()


def test_http_clients_never_exceed_max_size(server: Server, threads: int) -> None:
    k = 3
    opened = Counted()

    def connect() -> http.client.HTTPConnection:
        opened.up()
        return http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)

    pool = Pool(connect, max_size=k)
    per_thread = 20

    def body(i: int) -> None:
        for n in range(per_thread):
            path = f"/item/{i}/{n}"
            with pool.acquire(timeout=30) as conn:
                assert get(conn, path) == path.encode()

    run_threads(threads, body)
    assert opened.total <= k
    assert server.connections.peak <= k
    assert server.connections.total <= k  # keep-alive: connections were reused
    pool.close()


def test_slow_request_does_not_block_other_checkouts(server: Server) -> None:
    pool = Pool(
        lambda: http.client.HTTPConnection("127.0.0.1", server.port, timeout=30),
        max_size=3,
    )
    slow_result: list[bytes] = []

    def slow() -> None:
        with pool.acquire() as conn:
            slow_result.append(get(conn, "/slow"))

    t = threading.Thread(target=slow)
    t.start()
    assert server.slow_started.wait(10)
    # While the slow request holds one connection (and the server holds the request),
    # four threads make 40 fast requests through the other two.
    fast_done: list[int] = []

    def fast(i: int) -> None:
        for n in range(10):
            with pool.acquire(timeout=10) as conn:
                assert get(conn, f"/fast/{i}/{n}") == f"/fast/{i}/{n}".encode()
        fast_done.append(i)

    run_threads(4, fast)
    assert sorted(fast_done) == [0, 1, 2, 3]
    assert not slow_result  # the slow request is still in flight
    server.release_slow.set()
    t.join(10)
    assert slow_result == [b"/slow"]
    assert server.connections.peak <= 3
    pool.close()


def test_broken_connection_is_discarded_and_replaced(server: Server) -> None:
    made: list[http.client.HTTPConnection] = []

    def connect() -> http.client.HTTPConnection:
        c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        made.append(c)
        return c

    pool = Pool(connect, max_size=1)
    with pytest.raises(Discard), pool.acquire() as conn:
        get(conn, "/a")
        raise Discard("protocol error seen")
    assert conn.sock is None  # closed by the pool
    with pool.acquire() as conn2:
        assert get(conn2, "/b") == b"/b"
    assert len(made) == 2
    pool.close()
