"""``python -m examples.agent_service [--port 8000] [--agents 6] ...``: run the service.

With ``--redis-url redis://HOST:PORT/0`` (and ``--redis-prefix``, ``--node``) the
processes on one server and prefix share the limiter, the breaker, the client settings
and an agent directory, and pass signals to one another (``shared.py``).

Once it accepts connections it prints one line, ``listening on http://HOST:PORT`` (with
``--port 0`` the port the system chose), which ``load.py`` and the tests wait for.
SIGINT or SIGTERM shut it down gracefully (uvicorn), which stops the service's parts.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket

import uvicorn

from examples.agent_service.service import Service, Settings, build_app


def parse_settings(argv: list[str] | None = None) -> tuple[str, int, Settings]:
    parser = argparse.ArgumentParser(prog="python -m examples.agent_service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    for field in dataclasses.fields(Settings):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(field.default),
            default=field.default,
            help=f"(default {field.default!r})",
        )
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    return host, port, Settings(**args)


async def serve(host: str, port: int, settings: Settings) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        build_app(Service(settings)),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if server.started:
        print(f"listening on http://{host}:{port}", flush=True)
    await serving


def main(argv: list[str] | None = None) -> None:
    host, port, settings = parse_settings(argv)
    asyncio.run(serve(host, port, settings))


if __name__ == "__main__":
    main()
