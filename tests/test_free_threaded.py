"""The module must not turn the GIL back on when imported on a free-threaded build, and on
free-threaded 3.13 its classes are immortal (src/py/immortal.rs)."""

from __future__ import annotations

import gc
import subprocess
import sys
import sysconfig
import threading
import weakref

import ferrule
import pytest

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
# CPython 3.14 keeps heap types' reference counts per thread: nothing to do there.
IMMORTAL_TYPES = FREE_THREADED and sys.version_info[:2] == (3, 13)
PRIVATE = ("_SubscriptionWorker", "_CacheCall", "_PoolWaiter", "_OwnerWatch")


# Run in a fresh interpreter with the collector off: the free-threaded collector untracks
# immortal objects, after which gc.get_objects() no longer finds the private classes.
PROBE = """
import gc, sys
gc.disable()
import ferrule._native as native
private = {
    t.__name__: t
    for t in gc.get_objects()
    if isinstance(t, type) and t.__module__ == "ferrule._native" and t.__name__ in %r
}
public = {n: t for n, t in vars(native).items() if isinstance(t, type)}
for name, t in sorted({**public, **private}.items()):
    print(name, sys.getrefcount(t) >= 2**31)
"""


def test_classes_are_immortal_only_where_that_removes_contention() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE % (PRIVATE,)], capture_output=True, text=True, check=True
    ).stdout
    seen = dict(line.split() for line in out.splitlines())
    assert {"Lease", "Signal", "Agent", "QueueFull"} <= seen.keys()
    if IMMORTAL_TYPES:  # created at initialisation there; elsewhere at first use
        assert set(PRIVATE) <= seen.keys()
    assert seen == dict.fromkeys(seen, str(IMMORTAL_TYPES)), out


def test_instances_of_immortal_classes_are_created_freed_and_collected_from_threads() -> None:
    rm = ferrule.ResourceManager({f"t{i}": 4 for i in range(4)})
    bus = ferrule.SignalBus()

    def work(i: int) -> None:
        sub = bus.subscribe(f"t{i}")
        for _ in range(2000):
            rm.acquire(f"t{i}").release()
            bus.publish(f"t{i}", i)
            sub.get_nowait()
        sub.cancel()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # A cycle through an instance: collected, with its class (immortal or not) intact.
    class Marker:
        pass

    cache, marker = ferrule.Cache(4), Marker()
    cache.set("self", cache)
    cache.set("marker", marker)
    ref = weakref.ref(marker)
    del cache, marker
    gc.collect()
    assert ref() is None
    assert rm.usage()["t0"].used == 0 and ferrule.Cache(1).max_size == 1


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="GIL build")
def test_import_keeps_the_gil_disabled() -> None:
    code = "import sys, ferrule; print(sys._is_gil_enabled())"
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False", out.stderr


def test_module_declares_its_version() -> None:
    import ferrule

    assert ferrule.__version__.count(".") == 2
