"""``ferrule.redis.RedisInvalidation`` / ``InvalidatingCache`` against a real redis-server:
writes in one process evict the key in the others, never in the writer; reads stay the
cache's own; a lost connection clears the local cache once it is back; bad input."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import ferrule
import pytest

from tests.redis_server import RedisServer, server_or_skip

pytest.importorskip("redis")
from ferrule.redis import InvalidatingCache, KeyCodec, RedisInvalidation


def _eventually(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A server of the test's own, which it may stop and start."""
    s = server_or_skip()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def pair(redis_server: RedisServer) -> Iterator[tuple[InvalidatingCache, InvalidatingCache]]:
    """Two caches on one channel, each with its own client, as two processes would be."""
    channel = f"inval-{time.monotonic_ns()}"
    a = RedisInvalidation(redis_server.client(), channel).wrap(ferrule.Cache(100))
    b = RedisInvalidation(redis_server.client(), channel).wrap(ferrule.Cache(100))
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_a_write_evicts_the_key_elsewhere_but_not_here(
    pair: tuple[InvalidatingCache, InvalidatingCache],
) -> None:
    a, b = pair
    b.cache.set("user:1", "old")
    a.set("user:1", "new")
    assert _eventually(lambda: "user:1" not in b)
    assert a.get("user:1") == "new"
    b.cache.set("user:2", 2)
    a.delete("user:2")
    assert _eventually(lambda: "user:2" not in b)


def test_every_write_form_publishes(pair: tuple[InvalidatingCache, InvalidatingCache]) -> None:
    a, b = pair
    keys: list[Any] = ["s", 7, 2.5, True, None, b"raw", ("t", 1, (b"x", None))]
    b.cache.set_many({k: "old" for k in keys})
    a.set_many({k: "new" for k in keys})
    assert _eventually(lambda: len(b) == 0)
    assert all(a.get(k) == "new" for k in keys)
    b.cache.set("p", 1)
    assert a.pop("p", None) is None
    assert _eventually(lambda: "p" not in b)
    b.cache["item"] = 1
    a["item"] = 2
    assert _eventually(lambda: "item" not in b)
    b.cache["item"] = 1
    del a["item"]
    assert _eventually(lambda: "item" not in b)
    b.cache.set_many({"x": 1, "y": 2})
    a.clear()
    assert _eventually(lambda: len(b) == 0)


def test_get_or_set_is_a_read_and_publishes_nothing(
    pair: tuple[InvalidatingCache, InvalidatingCache],
) -> None:
    a, b = pair
    b.cache.set("k", "b's")
    b.cache.set("marker", 0)
    assert a.get_or_set("k", lambda: "loaded") == "loaded"
    a.set("marker", 1)  # published after anything get_or_set could have published
    assert _eventually(lambda: "marker" not in b)
    assert b.get("k") == "b's"


def test_reads_are_the_cache_s_own_methods(
    pair: tuple[InvalidatingCache, InvalidatingCache],
) -> None:
    a, _ = pair
    for name in ("get", "peek", "get_many", "get_or_set", "get_or_set_async"):
        bound = getattr(a, name)
        assert bound.__self__ is a.cache and bound.__name__ == name


def test_a_key_that_cannot_cross_is_refused_before_the_local_write(
    pair: tuple[InvalidatingCache, InvalidatingCache],
) -> None:
    a, _ = pair
    with pytest.raises(TypeError, match="frozenset"):
        a.set(frozenset({1}), 1)
    with pytest.raises(TypeError, match="object"):
        a.set_many({"fine": 1, object(): 2})
    assert len(a) == 0


def test_key_codec_round_trips() -> None:
    codec = KeyCodec()
    for key in ["s", 0, -(2**70), 1.5, False, None, b"\x00\xff", (), ("a", (1, (b"", None)))]:
        assert codec.decode(codec.encode(key)) == key
        assert type(codec.decode(codec.encode(key))) is type(key)


def test_malformed_messages_are_ignored(
    redis_server: RedisServer, pair: tuple[InvalidatingCache, InvalidatingCache]
) -> None:
    a, b = pair
    b.cache.set("keep", 1)
    client = redis_server.client()
    for junk in [b"not json", b"[]", b'{"k": 5}', b'{"k": [{"t": 3}]}', b"{}"]:
        client.publish(a.invalidation.channel, junk)
    b.cache.set("after", 0)
    a.set("after", 1)  # delivered after the junk, on the same channel
    assert _eventually(lambda: "after" not in b)
    assert b.get("keep") == 1


def test_a_restarted_server_clears_the_local_cache_once_back(server: RedisServer) -> None:
    channel = "restart"
    inv = RedisInvalidation(server.client(), channel, reconnect=(0.02, 0.1))
    c = inv.wrap(ferrule.Cache(10))
    other = RedisInvalidation(server.client(), channel).wrap(ferrule.Cache(10))
    try:
        c.set("stale", 1)
        server.stop()
        assert _eventually(lambda: inv.reconnects >= 1)
        c.cache.set("cached while down", 1)  # may have missed an invalidation
        server.start()
        assert _eventually(lambda: len(c) == 0)
        c.cache.set("k", 1)
        assert _eventually(lambda: other.invalidation.reconnects >= 1)
        other.set("k", 2)  # the other listener is back as well: c hears it
        assert _eventually(lambda: "k" not in c)
    finally:
        c.close()
        other.close()


def test_a_failed_publish_raises_or_logs(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    raising = RedisInvalidation(server.client(), "down").wrap(ferrule.Cache(10))
    logging_ = RedisInvalidation(server.client(), "down", on_error="log").wrap(ferrule.Cache(10))
    try:
        server.stop()
        with pytest.raises(ferrule.BackendError):
            raising.set("k", 1)
        assert raising.get("k") == 1  # the local write happened; the others were not told
        logging_.set("k", 1)
        assert "not published" in caplog.text
    finally:
        raising.close()
        logging_.close()


def test_bad_arguments(redis_server: RedisServer) -> None:
    client = redis_server.client()
    with pytest.raises(TypeError, match="client"):
        RedisInvalidation(object(), "c")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="synchronous"):
        RedisInvalidation(redis_server.async_client(), "c")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel"):
        RedisInvalidation(client, "")
    with pytest.raises(ValueError, match="on_error"):
        RedisInvalidation(client, "c", on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reconnect"):
        RedisInvalidation(client, "c", reconnect=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reconnect"):
        RedisInvalidation(client, "c", reconnect=(2.0, 1.0))
    with pytest.raises(ValueError, match="connect_timeout"):
        RedisInvalidation(client, "c", connect_timeout=0)
    inv = RedisInvalidation(client, "c")
    with pytest.raises(TypeError, match="cache"):
        inv.wrap({})  # type: ignore[arg-type]
    w = inv.wrap(ferrule.Cache(1))
    try:
        with pytest.raises(ValueError, match="already"):
            inv.wrap(ferrule.Cache(1))
    finally:
        w.close()


def test_unreachable_server_at_wrap_raises_backend_error() -> None:
    import redis

    from tests.redis_server import free_port

    client = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    inv = RedisInvalidation(client, "c", connect_timeout=0.3)
    with pytest.raises(ferrule.BackendError):
        inv.wrap(ferrule.Cache(1))


def test_close_wakes_the_listener_at_once(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() does not wait out the listener's read: with a read timeout far longer
    than close's join, the thread is still gone when close returns."""
    import ferrule.redis._invalidation as mod

    monkeypatch.setattr(mod, "_POLL", 60.0)
    inv = RedisInvalidation(redis_server.client(), "wake")
    w = inv.wrap(ferrule.Cache(4))
    thread = inv._thread
    assert thread is not None and thread.is_alive()
    w.set("k", 1)  # a message on the channel itself is still applied, not taken for a wake
    inv.close()
    assert not thread.is_alive()
    assert redis_server.client().pubsub_channels("wake*") == []


def test_a_collected_wrapper_ends_its_listener(redis_server: RedisServer) -> None:
    w = RedisInvalidation(redis_server.client(), "gc").wrap(ferrule.Cache(1))
    thread = w.invalidation._thread
    assert thread is not None and thread.is_alive()
    ref = weakref.ref(w)
    del w
    gc.collect()
    assert ref() is None
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_concurrent_writers_lose_no_invalidation(
    pair: tuple[InvalidatingCache, InvalidatingCache],
) -> None:
    a, b = pair
    b.cache.set_many({f"k{i}": "old" for i in range(64)})

    def write(lo: int) -> None:
        for i in range(lo, 64, 4):
            a.set(f"k{i}", "new")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _eventually(lambda: len(b) == 0)


CHILD = textwrap.dedent(
    """
    import sys, time
    import redis, ferrule
    from ferrule.redis import RedisInvalidation
    port, channel = int(sys.argv[1]), sys.argv[2]
    cache = RedisInvalidation(redis.Redis(port=port), channel).wrap(ferrule.Cache(10))
    cache.cache.set("shared", "child's copy")
    print("ready", flush=True)
    deadline = time.monotonic() + 10
    while "shared" in cache and time.monotonic() < deadline:
        time.sleep(0.005)
    print("evicted" if "shared" not in cache else "stale", flush=True)
    """
)


def test_a_write_in_one_process_evicts_in_another(redis_server: RedisServer) -> None:
    channel = f"procs-{time.monotonic_ns()}"
    here = RedisInvalidation(redis_server.client(), channel).wrap(ferrule.Cache(10))
    try:
        with subprocess.Popen(
            [sys.executable, "-c", CHILD, str(redis_server.port), channel],
            stdout=subprocess.PIPE,
            text=True,
        ) as child:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            here.set("shared", "new value")
            assert child.stdout.readline().strip() == "evicted"
            assert child.wait(timeout=10) == 0
    finally:
        here.close()


def test_interpreter_exit_with_a_listener_running(redis_server: RedisServer) -> None:
    code = textwrap.dedent(
        f"""
        import redis, ferrule
        from ferrule.redis import RedisInvalidation
        c = RedisInvalidation(redis.Redis(port={redis_server.port}), "exit").wrap(
            ferrule.Cache(4)
        )
        c.set("k", 1)
        print("ok", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok", "")
