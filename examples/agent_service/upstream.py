"""The flaky upstream every agent depends on, and the keep-alive connection to it.

``FlakyUpstream`` is an HTTP/1.1 server on ``asyncio.start_server`` (the same event loop
as the service): each request sleeps a little and answers 200, or 503 with probability
``fail_rate``, which can be changed while it runs. It counts the connections it has
open, so the pool's bound can be checked from the server's side: at most
``Pool.max_size`` connections are ever open at once.

``UpstreamConnection`` is one keep-alive connection, the item of the service's
``ferrule.Pool``. The pool's factory is synchronous, so a connection opens lazily on its
first request; a transport failure marks it broken (the caller raises ``ferrule.Discard``
and the pool's ``validate`` refuses it), while a 503 leaves it usable.

Only what this example sends is spoken: a request line, headers, a Content-Length body;
the answer always carries Content-Length.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random


class UpstreamError(ConnectionError):
    """The upstream failed a request (a 503, or a broken connection)."""


class FlakyUpstream:
    """An in-process HTTP/1.1 keep-alive server with a switchable failure rate."""

    def __init__(self, *, fail_rate: float = 0.0, latency: float = 0.002, seed: int = 0) -> None:
        self.fail_rate = fail_rate
        self.latency = latency
        self._random = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.requests = 0
        self.failed = 0
        self.connections_opened = 0
        self.open_connections = 0
        self.peak_connections = 0

    async def start(self, host: str = "127.0.0.1") -> None:
        self._server = await asyncio.start_server(self._serve, host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):  # keep-alive connections the pool still holds
            writer.close()
        await self._server.wait_closed()
        self._server = None

    def stats(self) -> dict[str, float]:
        return {
            "fail_rate": self.fail_rate,
            "requests": self.requests,
            "failed": self.failed,
            "connections_opened": self.connections_opened,
            "open_connections": self.open_connections,
            "peak_connections": self.peak_connections,
        }

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.connections_opened += 1
        self.open_connections += 1
        self.peak_connections = max(self.peak_connections, self.open_connections)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                self.requests += 1
                await asyncio.sleep(self._random.uniform(0.5, 1.5) * self.latency)
                if self._random.random() < self.fail_rate:
                    self.failed += 1
                    status, body = "503 Service Unavailable", b'{"error": "overloaded"}'
                else:
                    status, body = "200 OK", json.dumps({"answer": self.requests}).encode()
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its connection
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            writer.close()


class UpstreamConnection:
    """One keep-alive HTTP/1.1 connection to the upstream (a ``ferrule.Pool`` item)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.broken = False
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, path: str, payload: object) -> tuple[int, bytes]:
        """POST ``payload`` as JSON; (status, body). Raises ``OSError`` or
        ``asyncio.IncompleteReadError`` on a transport failure, after marking the
        connection broken."""
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            assert self._reader is not None
            body = json.dumps(payload).encode()
            self._writer.write(
                f"POST {path} HTTP/1.1\r\nHost: upstream\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await self._writer.drain()
            head = await self._reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split()[1])
            length = next(
                int(v)
                for n, _, v in (line.partition(b":") for line in lines[1:])
                if n.strip().lower() == b"content-length"
            )
            return status, await self._reader.readexactly(length)
        except BaseException:
            # Cancelled or failed mid-exchange: the stream is out of step; never reuse it.
            self.broken = True
            raise

    def close(self) -> None:
        """Called by the pool when it closes or discards this connection."""
        self.broken = True
        if self._writer is not None:
            with contextlib.suppress(RuntimeError):  # its event loop is already closed
                self._writer.close()
            self._writer = None
