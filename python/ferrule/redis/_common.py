"""What both Redis classes share: the client types and check, the error mapping, and the
server-side scripts (the package's ``lua/*.lua`` files, called by EVALSHA)."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

try:
    import redis
    import redis.asyncio
    from redis.exceptions import NoScriptError, RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ferrule.redis needs the 'redis' package: pip install 'ferrule[redis]'"
    ) from exc

from ferrule._native import BackendError

__all__ = [
    "AsyncClient",
    "RedisError",
    "Script",
    "SyncClient",
    "backend",
    "check_client",
    "is_async",
    "lua",
    "text",
]

SyncClient = redis.Redis | redis.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster


def check_client(client: object) -> None:
    if not callable(getattr(client, "evalsha", None)):
        raise TypeError(
            f"client must be a redis.Redis or redis.asyncio.Redis, not '{type(client).__name__}'"
        )


def is_async(client: object) -> bool:
    return isinstance(client, (redis.asyncio.Redis, redis.asyncio.RedisCluster))


def text(x: Any) -> str:
    """A reply as str (bytes unless the client decodes responses)."""
    return x.decode() if isinstance(x, bytes) else str(x)


def backend(e: RedisError) -> BackendError:
    err = BackendError(f"redis: {e}")
    err.__cause__ = e
    return err


def lua(*names: str) -> str:
    """The source of a script: the named files of ``lua/``, in order."""
    folder = resources.files("ferrule.redis").joinpath("lua")
    return "".join(folder.joinpath(f"{name}.lua").read_text("utf-8") for name in names)


class Script:
    """One Lua script: called by EVALSHA, loaded (SCRIPT LOAD) when the server answers
    NOSCRIPT (first use, or after a restart or SCRIPT FLUSH)."""

    __slots__ = ("sha", "src")

    def __init__(self, src: str) -> None:
        self.src = src
        self.sha = hashlib.sha1(src.encode()).hexdigest()

    def __call__(self, client: SyncClient, keys: list[Any], args: list[Any]) -> Any:
        try:
            try:
                return client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                client.script_load(self.src)
                return client.evalsha(self.sha, len(keys), *keys, *args)
        except RedisError as e:
            raise backend(e) from e

    async def acall(self, client: AsyncClient, keys: list[Any], args: list[Any]) -> Any:
        try:
            try:
                return await client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                await client.script_load(self.src)
                return await client.evalsha(self.sha, len(keys), *keys, *args)
        except RedisError as e:
            raise backend(e) from e
