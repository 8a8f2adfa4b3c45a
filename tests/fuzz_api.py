"""Bad-input fuzz of ferrule's whole public API.

Every constructor, method and property that a user (or ferrule's own Python glue) can
reach is called first with known-good arguments, then with each argument in turn
replaced by a hostile value: wrong types, None, NaN and infinities, huge and negative
numbers, 1 MB strings, structures nested 10 000 deep, objects whose dunder methods raise
or call back into the object under test, callables that raise ``KeyboardInterrupt``,
and so on. A short threaded phase then makes random valid and hostile calls on shared
objects from several threads (and mutates shared argument containers meanwhile).

A call passes when it returns or raises a documented exception (see ``ALLOWED``) or the
hostile object's own exception, unchanged; when a ``BaseException`` raised by hostile code
in the calling thread propagates; and when the object still works afterwards (``PROBES``).
It fails on a Rust panic (``PanicException``, "panicked at"), ``SystemError``, any other
exception type, a swallowed ``KeyboardInterrupt``/``SystemExit``, a hang (per-call
watchdog) or a dead process (abort, segfault). The fuzz runs in child processes, which
log each case before making it; the parent restarts a dead child after the case that
killed it, so one run reports every crash.

Where things live (each a table, so that the harness reads as data):
``KNOWN``           failures found and not fixed yet: skipped, with the reason (remove an
                    entry once its fix lands; ``--run-known`` runs them to check).
``NOT_APPLICABLE``  cases not made (slow, not wrong); ``EXCLUDED``: names not fuzzed
                    (and ``ferrule.redis`` where no Redis server runs: ``REDIS_ENV``);
                    ``NO_CONSTRUCTOR``: classes users cannot call (no constructor case).
``HOSTILE``         the hostile values (``core``: in the bounded sweep); ``EXTRA``: more
                    for one parameter name; ``MUTATING``: containers another thread keeps
                    resizing (threaded phase).
``BASELINE``        a known-good argument per parameter name; ``SPECIAL``: per call.
``OBJECTS``         how to build each object under test, per state ("variant").
``WAITS``           calls that block, and the state in which they must wait.
``REENTER``         what a re-entrant hostile calls on the object under test.
``PROBES``          the check after every call: invariants, and that the object still
                    works (which also fires what the call stored: wakers, evictions).
``REDIS_SWEEP``     the Redis classes' share of the bounded sweep (each case costs round
                    trips): one hostile value per group. BackendError is their documented
                    failure only for a connection lost, refused or timed out
                    (``_backend_rejection``).
``DRIVE``           what to do with an object a constructor just made, so that a hostile
                    factory, validate, bus or clock gets used; ``DECORATORS``, ``AWAITS``
                    and ``GENERATORS``: what to do with such a result of a call.

The public API is enumerated, not listed: ``ferrule.__all__``, the stubs (private
``_``-members of native classes included), every class and function of
``ferrule._native`` and each public submodule's ``__all__``. Parameters come from
``inspect.signature``, or from the stubs where the runtime has none.

Usage::

    python tests/fuzz_api.py                      # the bounded sweep + threads (as CI)
    python tests/fuzz_api.py --seconds 600 --seed 7   # long randomized run (make fuzz)
    python tests/fuzz_api.py --case 'Cache.get_or_set[ready]:factory=call_ki'
    python tests/fuzz_api.py --run-known          # also the KNOWN cases: which are fixed?
    python tests/fuzz_api.py --list               # the API as enumerated
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import faulthandler
import functools
import gc
import importlib
import inspect
import itertools
import json
import os
import pkgutil
import queue
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import ferrule
import ferrule._native as native

# ---------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------

CALL_TIMEOUT = 15.0  # seconds a case may take before the watchdog calls it a hang
AWAIT_TIMEOUT = 0.5  # a coroutine a call returned is awaited at most this long
WAIT_LONG = 0.2  # a hostile timeout longer than this is skipped where the call must wait
MEMORY_LIMIT = 8 << 30  # address space of a fuzz child: a runaway allocation fails fast
BASELINE_KEY = "k"  # the key every keyed object holds; colliding hostiles hash like it

# ---------------------------------------------------------------------------------------
# Known failures (skipped until fixed) and exclusions
# ---------------------------------------------------------------------------------------


def _each(call: tuple[str, str, str], hostiles: str, reason: str) -> dict[tuple[str, ...], str]:
    """KNOWN entries for one parameter and each of the (space-separated) hostile values."""
    return {(*call, h): reason for h in hostiles.split()}


# (owner, name[, parameter[, hostile]]) -> why it is skipped. A key matches every case of
# that call / parameter / hostile value. Remove an entry once the fix is merged.
KNOWN: dict[tuple[str, ...], str] = {}

# Cases not made at all, because what they would find is not a defect.
NOT_APPLICABLE: dict[tuple[str, ...], str] = {
    ("TaskPool", "map", "iterables", "str_1mb"): "a million tasks: Executor.map submits all",
    ("TaskPool", "map", "iterables", "bytes_1mb"): "a million tasks: Executor.map submits all",
    ("TaskPool", "map", "iterables", "str_dotted"): "200 000 tasks: slow, not wrong",
    ("TaskPool", "map", "iterables", "list_100k"): "100 000 tasks: slow, not wrong",
    ("TaskPool", "map", "iterables", "caps_many"): "100 000 tasks: slow, not wrong",
    ("RedisRegistry", "register", "capabilities", "caps_many"): "100k index sets: slow, not wrong",
    ("RedisRegistry", "update", "capabilities", "caps_many"): "100k index sets: slow, not wrong",
}

# Pure-Python classes whose objects only ferrule makes: calling the class raises
# TypeError, as calling a native class without a constructor does (not fuzzed, as those).
NO_CONSTRUCTOR: dict[str, str] = {
    "Attempt": "made by iterating a Retry policy (tests/test_retry.py tests Attempt())",
    "Instrumentation": "made by ferrule.otel.instrument (tests/test_otel.py)",
}

EXCLUDED: dict[str, str] = {
    "ferrule._close_gate": "the atexit hook: calling it makes every later wait park forever",
    "ferrule._run_subscription": "its only argument, a _SubscriptionWorker, exists only inside"
    " SignalBus.subscribe, which runs it on the subscription's own thread",
    "ferrule.EventKind": "ferrule.events' frozen dataclass describing an event (strings made by"
    " the module itself): no argument of a part, nothing to check",
}

# ``ferrule.redis`` is fuzzed against a real server: ``supervise`` starts a throwaway
# redis-server (tests/redis_server.py) when one is installed and gives its URL to the
# children in this variable. Where no server runs the module is excluded, and the report
# says why (``Report.redis``).
REDIS_ENV = "FERRULE_FUZZ_REDIS"
REDIS_MODULE = "ferrule.redis"


def redis_url() -> str | None:
    """The URL of the server the Redis classes are fuzzed against, or None."""
    return os.environ.get(REDIS_ENV) or None


# ---------------------------------------------------------------------------------------
# The API: enumerated from the runtime and the stubs
# ---------------------------------------------------------------------------------------

STUBS = Path(native.__file__).with_name("_native.pyi")

# Dunder methods of pure-Python classes that are part of their API.
PROTOCOL = [
    "__call__", "__contains__", "__delitem__", "__enter__", "__exit__", "__getitem__",
    "__iter__", "__len__", "__next__", "__setitem__", "__aenter__", "__aexit__",
]  # fmt: skip
# Class attributes that are not API.
NOT_MEMBERS = {
    "__doc__", "__module__", "__new__", "__init__", "__dict__", "__weakref__", "__slots__",
    "__annotations__", "__qualname__", "__text_signature__", "__match_args__",
    "__abstractmethods__", "_abc_impl", "__orig_bases__", "__parameters__", "__init_subclass__",
    "__subclasshook__",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "pos" (positional only), "any", "kw" (keyword only), "star", "starstar"
    required: bool


@dataclasses.dataclass(frozen=True)
class Target:
    owner: str  # class name, or "ferrule" for a module-level function
    name: str  # "__new__" for a constructor
    kind: str  # "new", "method", "classmethod", "property", "function"
    params: tuple[Param, ...]
    source: str  # where the parameters came from: "runtime" or "stub"

    @property
    def id(self) -> str:
        return f"{self.owner}.{self.name}"


_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "pos",
    inspect.Parameter.POSITIONAL_OR_KEYWORD: "any",
    inspect.Parameter.KEYWORD_ONLY: "kw",
    inspect.Parameter.VAR_POSITIONAL: "star",
    inspect.Parameter.VAR_KEYWORD: "starstar",
}


def _runtime_params(fn: Any, drop_first: bool) -> tuple[Param, ...] | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    ps = list(sig.parameters.values())[1 if drop_first else 0 :]
    return tuple(
        Param(p.name, _KINDS[p.kind], p.default is p.empty and p.kind in (0, 1, 3)) for p in ps
    )


def _stub_params(args: ast.arguments, drop_first: bool) -> tuple[Param, ...]:
    positional = [(a, "pos") for a in args.posonlyargs] + [(a, "any") for a in args.args]
    first_default = len(positional) - len(args.defaults)
    out = [Param(a.arg, kind, i < first_default) for i, (a, kind) in enumerate(positional)]
    if drop_first:
        out = out[1:]
    if args.vararg:
        out.append(Param(args.vararg.arg, "star", False))
    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        out.append(Param(a.arg, "kw", d is None))
    if args.kwarg:
        out.append(Param(args.kwarg.arg, "starstar", False))
    return tuple(out)


@functools.cache
def parse_stubs(path: Path = STUBS) -> dict[str, dict[str, tuple[str, tuple[Param, ...]]]]:
    """``{class name ("" for the module): {member: (kind, params)}}`` from the stub file;
    of several ``@overload``s the one with the most parameters. Parsed once per process
    (the sweep asks for it per case); callers do not change it."""
    out: dict[str, dict[str, tuple[str, tuple[Param, ...]]]] = {"": {}}

    def defs(body: list[ast.stmt], into: dict[str, tuple[str, tuple[Param, ...]]], meth: bool):
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                decos = {ast.unparse(d) for d in node.decorator_list}
                if "property" in decos:
                    into[node.name] = ("property", ())
                    continue
                if any(d.endswith((".setter", ".deleter")) for d in decos):
                    continue
                params = _stub_params(node.args, drop_first=meth and "staticmethod" not in decos)
                old = into.get(node.name)
                if old is None or len(params) > len(old[1]):
                    into[node.name] = ("method", params)

    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {}
            defs(node.body, out[node.name], meth=True)
    defs(tree.body, out[""], meth=False)
    return out


@functools.cache
def _submodule_function(name: str) -> Any:
    """A module-level function of a public submodule (``ferrule.events.log_events``)."""
    for modname, names in public_modules().items():
        if name in names and modname != "ferrule":
            fn = getattr(importlib.import_module(modname), name, None)
            if callable(fn):
                return fn
    raise AttributeError(f"no public function {name!r}")


def public_modules(with_redis: bool | None = None) -> dict[str, list[str]]:
    """Module -> the names to fuzz: ``ferrule.__all__``, everything the stubs declare,
    every class and function of ``ferrule._native``, and each public submodule's
    ``__all__`` (``EXCLUDED`` ones aside, and ``ferrule.redis`` unless ``with_redis``;
    None: when a server is there, see ``redis_url``)."""
    if with_redis is None:
        with_redis = redis_url() is not None
    stubs = parse_stubs()
    out: dict[str, list[str]] = {"ferrule": [n for n in ferrule.__all__ if n != "__version__"]}
    runtime = {
        n
        for n, v in vars(native).items()
        if not n.startswith("__") and (isinstance(v, type) or callable(v))
    }
    declared = (set(stubs) - {""}) | set(stubs[""])
    out["ferrule._native"] = sorted((declared & set(vars(native))) | runtime)
    for info in pkgutil.iter_modules(ferrule.__path__):
        name = f"ferrule.{info.name}"
        if info.name.startswith("_") or name in EXCLUDED:
            continue
        if name == REDIS_MODULE and not with_redis:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # an optional dependency (prometheus_client) is missing
            UNAVAILABLE[name] = str(exc)
            continue
        out[name] = list(getattr(module, "__all__", ()))
    return out


# Public modules that could not be imported here (optional dependency), with the error.
UNAVAILABLE: dict[str, str] = {}


def _uninformative(params: tuple[Param, ...] | None) -> bool:
    """No signature, or only ``(*args, **kwargs)``: the stub knows better."""
    return params is None or bool(params and all(p.kind in ("star", "starstar") for p in params))


def _member_kind(cls: type, name: str) -> str | None:
    try:
        attr = inspect.getattr_static(cls, name)
    except AttributeError:
        return None
    if isinstance(attr, property) or inspect.isdatadescriptor(attr):
        return "property"
    if isinstance(attr, classmethod) or type(attr).__name__ == "classmethod_descriptor":
        return "classmethod"
    if callable(attr) or isinstance(attr, staticmethod):
        return "method"
    return None


def _class_targets(cls: type, stub: dict[str, tuple[str, tuple[Param, ...]]]) -> list[Target]:
    owner = cls.__name__
    out: list[Target] = []
    is_native = getattr(native, cls.__name__, None) is cls
    # The constructor.
    if issubclass(cls, BaseException):
        out.append(Target(owner, "__new__", "new", (Param("args", "star", False),), "stub"))
        return out  # members are BaseException's
    has_new = "__new__" in stub or "__new__" in vars(cls) or not is_native
    has_new = has_new and owner not in NO_CONSTRUCTOR
    if has_new:
        params = _runtime_params(cls, drop_first=False)
        source = "runtime"
        if _uninformative(params) and "__new__" in stub:
            params, source = stub["__new__"][1], "stub"
        out.append(Target(owner, "__new__", "new", params or (), source))
    # Members.
    names = set(stub)
    if is_native:
        names |= set(vars(cls))
    else:
        names |= {n for n in dir(cls) if not n.startswith("_") and not hasattr(object, n)}
        names |= {d for d in PROTOCOL if any(d in vars(k) for k in cls.__mro__[:-1])}
    for name in sorted(names - NOT_MEMBERS):
        kind = _member_kind(cls, name)
        if kind is None:
            continue
        if kind == "property":
            out.append(Target(owner, name, "property", (), "runtime"))
            continue
        params = _runtime_params(getattr(cls, name), drop_first=kind == "method")
        source = "runtime"
        if _uninformative(params) and name in stub:
            params, source = stub[name][1], "stub"
        out.append(Target(owner, name, kind, params or (), source))
    return out


def enumerate_api(with_redis: bool | None = None) -> dict[str, Target]:
    """Every fuzz target by id, from the runtime and the stubs (``EXCLUDED`` aside;
    ``with_redis`` as for ``public_modules``)."""
    stubs = parse_stubs()
    targets: dict[str, Target] = {}
    seen: dict[str, object] = {}
    for modname, names in public_modules(with_redis).items():
        module = importlib.import_module(modname)
        for name in names:
            obj = getattr(module, name, None)
            if obj is None or f"ferrule.{name}" in EXCLUDED:
                continue
            key = obj.__name__ if isinstance(obj, type) else f"ferrule.{name}"
            if key in seen:
                assert seen[key] is obj, f"two public objects named {key}"
                continue
            seen[key] = obj
            if isinstance(obj, type):
                for t in _class_targets(obj, stubs.get(obj.__name__, {})):
                    targets[t.id] = t
            elif callable(obj):
                params = _runtime_params(obj, drop_first=False)
                source = "runtime"
                if params is None and name in stubs[""]:
                    params, source = stubs[""][name][1], "stub"
                t = Target("ferrule", name, "function", params or (), source)
                targets[t.id] = t
    for t in EXTRA_TARGETS:
        targets[t.id] = t
    return targets


# Callables that no enumeration can see: the wrapper ``cached`` returns (its argument
# tuple becomes a cache key, so hostile arguments matter).
EXTRA_TARGETS = [
    Target("cached_wrapper", "__call__", "method", (Param("args", "star", False),), "harness")
]

# ---------------------------------------------------------------------------------------
# Hostile values
# ---------------------------------------------------------------------------------------


class HostileError(Exception):
    """Raised by hostile code; it must propagate unchanged (or be swallowed as documented)."""


class HostileBaseError(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit."""


def _boom(ctx: Ctx, exc_type: type[BaseException], what: str) -> Any:
    exc = exc_type(f"hostile {what}")
    exc.fuzz_hostile = True  # type: ignore[attr-defined]  # (a stored one may fire later)
    ctx.raised.append((threading.get_ident(), exc))
    raise exc


def _raising(dunder: str, exc_type: type[BaseException] = HostileError) -> type:
    """A class whose ``dunder`` raises; it hashes like the baseline key (so ``__eq__`` is
    reached in a hash table) and is equal only to itself."""

    def init(self: Any, ctx: Ctx) -> None:
        self._ctx = ctx

    def method(self: Any, *args: Any) -> Any:
        return _boom(self._ctx, exc_type, dunder)

    ns: dict[str, Any] = {"__init__": init, dunder: method}
    ns.setdefault("__hash__", lambda self: hash(BASELINE_KEY))
    ns.setdefault("__eq__", lambda self, other: self is other)
    ns.setdefault("__repr__", lambda self: f"<raises on {dunder}>")
    return type(f"Raises_{dunder.strip('_')}_{exc_type.__name__}", (), ns)


class Reenters:
    """Every dunder calls back into the object under test (``REENTER``), then behaves."""

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx

    def __hash__(self) -> int:
        self._ctx.reenter()
        return hash(BASELINE_KEY)

    def __eq__(self, other: object) -> bool:
        self._ctx.reenter()
        return self is other

    def __call__(self, *args: Any, **kwargs: Any) -> int:
        self._ctx.reenter()
        return 1

    def __len__(self) -> int:
        self._ctx.reenter()
        return 0

    def __iter__(self) -> Iterator[Any]:
        self._ctx.reenter()
        return iter(())

    def __bool__(self) -> bool:
        self._ctx.reenter()
        return True

    def __index__(self) -> int:
        self._ctx.reenter()
        return 1

    def __float__(self) -> float:
        self._ctx.reenter()
        return 1.0

    def __str__(self) -> str:
        self._ctx.reenter()
        return "reenters"

    __repr__ = __str__


class Liar:
    """A key that breaks the hash/eq contract: ``how`` is "hash_changes" (a new hash on
    every call), "eq_always" (equal to everything, hashing like the baseline key),
    "hash_raises_later" (hashes once, raises afterwards) or "eq_raise_bool" (``__eq__``
    returns an object whose truth value raises)."""

    _counter = itertools.count()

    def __init__(self, ctx: Ctx, how: str) -> None:
        self._ctx, self._how, self._hashed = ctx, how, 0

    def __hash__(self) -> int:
        self._hashed += 1
        if self._how == "hash_changes":
            return next(Liar._counter)
        if self._how == "hash_raises_later" and self._hashed > 1:
            return _boom(self._ctx, HostileError, "__hash__ (later)")  # type: ignore[no-any-return]
        return hash(BASELINE_KEY)

    def __eq__(self, other: object) -> Any:
        if self._how == "eq_always":
            return True
        if self._how == "eq_raise_bool":
            return _raising("__bool__")(self._ctx)
        return self is other

    def __repr__(self) -> str:
        return f"<liar {self._how}>"


class Collects:
    """Every dunder runs the garbage collector (``__traverse__``/``__clear__`` of the
    ferrule objects alive, while ferrule is in the middle of a call): the whole heap the
    first time, the young generations after that."""

    def __init__(self) -> None:
        self._generation = 2

    def _collect(self) -> None:
        gc.collect(self._generation)
        self._generation = 1

    def __hash__(self) -> int:
        self._collect()
        return hash(BASELINE_KEY)

    def __eq__(self, other: object) -> bool:
        self._collect()
        return self is other

    def __call__(self, *args: Any, **kwargs: Any) -> int:
        self._collect()
        return 1

    def __bool__(self) -> bool:
        self._collect()
        return True

    def __iter__(self) -> Iterator[Any]:
        self._collect()
        return iter(())

    def __index__(self) -> int:
        self._collect()
        return 1


def _cycle(ctx: Ctx) -> Any:
    """A list holding the object under test and itself: stored, it makes a cycle through
    the object that only the collector can free."""
    box: list[Any] = [ctx.obj]
    box.append(box)
    return box


class ReentersOnDel:
    """Calls back into the object under test when it is dropped (e.g. evicted)."""

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx

    def __del__(self) -> None:
        self._ctx.reenter()


class WeirdInt(int):
    """An int whose ``__index__``, ``__int__`` and ``__float__`` disagree with its value."""

    def __index__(self) -> int:
        return 2**70

    def __int__(self) -> int:
        return -1

    def __float__(self) -> float:
        return float("nan")


class IndexRaisingInt(int):
    def __new__(cls, ctx: Ctx) -> IndexRaisingInt:
        self = super().__new__(cls, 1)
        self._ctx = ctx  # type: ignore[attr-defined]
        return self

    def __index__(self) -> int:
        return _boom(self._ctx, HostileError, "__index__")  # type: ignore[attr-defined]


class NanFloat(float):
    def __float__(self) -> float:
        return float("nan")


class StrSub(str):
    pass


class HostileStr(str):
    """A str subclass (equal to the baseline key) whose hash and equality raise."""

    def __new__(cls, ctx: Ctx) -> HostileStr:
        self = super().__new__(cls, BASELINE_KEY)
        self._ctx = ctx  # type: ignore[attr-defined]
        return self

    def __hash__(self) -> int:
        return _boom(self._ctx, HostileError, "str.__hash__")  # type: ignore[attr-defined]

    def __eq__(self, other: object) -> bool:
        return _boom(self._ctx, HostileError, "str.__eq__")  # type: ignore[attr-defined]


class RaisingDict(dict):  # type: ignore[type-arg]
    """A dict subclass whose iteration and item access raise."""

    def __init__(self, ctx: Ctx) -> None:
        super().__init__({BASELINE_KEY: 1})
        self._ctx = ctx

    def _no(self, *args: Any) -> Any:
        return _boom(self._ctx, HostileError, "dict access")

    __iter__ = items = keys = values = __getitem__ = get = __len__ = _no  # type: ignore[assignment]


def _gen(ctx: Ctx, exc_type: type[BaseException]) -> Iterator[Any]:
    yield BASELINE_KEY
    _boom(ctx, exc_type, "generator")


def _call(exc_type: type[BaseException]) -> Callable[[Ctx], Callable[..., Any]]:
    return lambda ctx: lambda *a, **k: _boom(ctx, exc_type, "call")


async def _async_fn(*args: Any, **kwargs: Any) -> int:
    return 1


def _nested(kind: str, depth: int = 10_000) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v] if kind == "list" else {"a": v} if kind == "dict" else (v,)
    return v


@dataclasses.dataclass(frozen=True)
class Hostile:
    name: str
    group: str
    make: Callable[[Ctx], Any]
    core: bool = True  # in the bounded sweep
    seconds: float | None = None  # how long it would make a wait, if it is taken as one
    collect: bool = False  # makes a reference cycle: collect garbage after the case


_SHARED: dict[str, Any] = {}


def shared(name: str, build: Callable[[], Any]) -> Callable[[Ctx], Any]:
    """A hostile value built once (for the big ones)."""

    def make(ctx: Ctx) -> Any:
        if name not in _SHARED:
            _SHARED[name] = build()
        return _SHARED[name]

    return make


def _const(v: Any) -> Callable[[Ctx], Any]:
    return lambda ctx: v


INF = float("inf")
H = Hostile
HOSTILE: list[Hostile] = [
    # wrong types
    H("object", "type", lambda ctx: object()),
    H("str_x", "type", _const("x"), seconds=None),
    H("bytes", "type", _const(b"k")),
    H("float_1_5", "type", _const(1.5), seconds=1.5),
    H("list", "type", lambda ctx: [BASELINE_KEY]),
    H("dict", "type", lambda ctx: {BASELINE_KEY: 1}),
    H("complex", "type", _const(1j)),
    H("class_int", "type", _const(int)),
    H("none", "none", _const(None), seconds=INF),
    # floats
    H("nan", "float", _const(float("nan")), seconds=float("nan")),
    H("inf", "float", _const(INF), seconds=INF),
    H("neg_inf", "float", _const(-INF), seconds=-INF),
    H("neg_zero", "float", _const(-0.0), seconds=0.0),
    H("float_max", "float", _const(1.7976931348623157e308), seconds=INF),
    H("denormal", "float", _const(5e-324), seconds=0.0),
    H("neg_small", "float", _const(-1e-9), seconds=-1e-9),
    # ints
    H("int_neg1", "int", _const(-1), seconds=-1.0),
    H("int_0", "int", _const(0), seconds=0.0),
    H("int_2_31", "int", _const(2**31), seconds=INF),
    H("int_2_53p1", "int", _const(2**53 + 1), seconds=INF),
    H("int_2_63", "int", _const(2**63), seconds=INF),
    H("int_2_64", "int", _const(2**64), seconds=INF),
    H("int_2_70", "int", _const(2**70), seconds=INF),
    H("int_neg_2_63", "int", _const(-(2**63)), seconds=-INF),
    H("int_neg_2_70", "int", _const(-(2**70)), seconds=-INF),
    # bool where a number is expected
    H("true", "bool", _const(True), seconds=1.0),
    H("false", "bool", _const(False), seconds=0.0),
    # size
    H("str_1mb", "big", shared("str_1mb", lambda: "x" * (1 << 20))),
    H("bytes_1mb", "big", shared("bytes_1mb", lambda: b"x" * (1 << 20)), core=False),
    H("str_dotted", "big", shared("str_dotted", lambda: "a." * 100_000 + "a"), core=False),
    H("list_100k", "big", shared("list_100k", lambda: [str(i) for i in range(100_000)])),
    H("deep_list", "big", shared("deep_list", lambda: _nested("list"))),
    H("deep_dict", "big", shared("deep_dict", lambda: _nested("dict"))),
    H("deep_tuple", "big", shared("deep_tuple", lambda: _nested("tuple"))),
    # strings
    H("str_empty", "string", _const("")),
    H("str_nul", "string", _const("a\x00b")),
    H("str_surrogate", "string", _const("\ud800")),
    H("str_dots", "string", _const("a..b")),
    H("str_hash", "string", _const("#")),
    H("str_star", "string", _const("*")),
    H("str_unicode", "string", _const("é€𝄞")),
    # subclasses of the expected types
    H("str_sub", "subclass", _const(StrSub(BASELINE_KEY))),
    H("str_hostile", "subclass", HostileStr),
    H("int_weird", "subclass", _const(WeirdInt(5)), seconds=INF),
    H("int_raising_index", "subclass", IndexRaisingInt, seconds=INF),
    H("float_nan_sub", "subclass", _const(NanFloat(1.0)), seconds=1.0),
    # objects whose dunders raise
    H("raise_hash", "raising", lambda ctx: _raising("__hash__")(ctx)),
    H("raise_eq", "raising", lambda ctx: _raising("__eq__")(ctx)),
    H("raise_index", "raising", lambda ctx: _raising("__index__")(ctx)),
    H("raise_int", "raising", lambda ctx: _raising("__int__")(ctx)),
    H("raise_float", "raising", lambda ctx: _raising("__float__")(ctx)),
    H("raise_bool", "raising", lambda ctx: _raising("__bool__")(ctx)),
    H("raise_len", "raising", lambda ctx: _raising("__len__")(ctx)),
    H("raise_iter", "raising", lambda ctx: _raising("__iter__")(ctx)),
    H("raise_str", "raising", lambda ctx: _raising("__str__")(ctx)),
    H("raise_repr", "raising", lambda ctx: _raising("__repr__")(ctx)),
    # ... with a BaseException
    H("raise_hash_ki", "base", lambda ctx: _raising("__hash__", KeyboardInterrupt)(ctx)),
    H("raise_eq_ki", "base", lambda ctx: _raising("__eq__", KeyboardInterrupt)(ctx)),
    H("raise_index_ki", "base", lambda ctx: _raising("__index__", KeyboardInterrupt)(ctx)),
    H("raise_bool_ki", "base", lambda ctx: _raising("__bool__", KeyboardInterrupt)(ctx)),
    H("raise_iter_ki", "base", lambda ctx: _raising("__iter__", KeyboardInterrupt)(ctx)),
    # callables
    H("call_raises", "callable", _call(HostileError)),
    H("call_ki", "base", _call(KeyboardInterrupt)),
    H("call_exit", "base", _call(SystemExit)),
    H("call_base", "base", _call(HostileBaseError)),
    H("call_arity", "callable", _const(lambda a, b, c: 1)),
    H("call_returns_raise_bool", "callable", lambda ctx: lambda *a, **k: _raising("__bool__")(ctx)),
    H("call_returns_nan", "callable", _const(lambda *a, **k: float("nan"))),
    H("call_async", "callable", _const(_async_fn)),
    # keys that break the hash/eq contract
    H("hash_changes", "liar", lambda ctx: Liar(ctx, "hash_changes")),
    H("eq_always", "liar", lambda ctx: Liar(ctx, "eq_always")),
    H("hash_raises_later", "liar", lambda ctx: Liar(ctx, "hash_raises_later")),
    H("eq_raise_bool", "liar", lambda ctx: Liar(ctx, "eq_raise_bool")),
    # re-entrance
    H("reenter", "reenter", Reenters, seconds=1.0),
    H("reenter_del", "reenter", ReentersOnDel),
    # garbage collection
    H("gc_collect", "gc", lambda ctx: Collects(), seconds=1.0),
    H("cycle", "gc", _cycle, collect=True),
    # containers
    H("list_raise_hash", "container", lambda ctx: [_raising("__hash__")(ctx)]),
    H("tuple_raise_hash", "container", lambda ctx: (_raising("__hash__")(ctx),)),
    H("dict_raise_eq_key", "container", lambda ctx: {_raising("__eq__")(ctx): 1}),
    H("dict_nan", "container", _const({BASELINE_KEY: float("nan")})),
    H("dict_raising", "container", RaisingDict),
    H("gen_raises", "container", lambda ctx: _gen(ctx, HostileError)),
    H("gen_ki", "base", lambda ctx: _gen(ctx, KeyboardInterrupt)),
]

# Hostile values that matter for one parameter name (all run in the bounded sweep).
EXTRA: dict[str, list[Hostile]] = {
    "where": [
        H("where_raise_eq", "param", lambda ctx: [("m", "eq", _raising("__eq__")(ctx))]),
        H(
            "where_raise_lt_ki",
            "param",
            lambda ctx: [("m", "lt", _raising("__lt__", KeyboardInterrupt)(ctx))],
        ),
        H("where_bad_op", "param", _const([("m", "bogus", 1)])),
        H("where_arity", "param", _const([("m", "eq")])),
        H("where_deep_path", "param", _const([(".".join(["m"] * 10_000), "eq", 1)])),
        H("where_in_raise_iter", "param", lambda ctx: [("m", "in", _raising("__iter__")(ctx))]),
        H("where_nan", "param", _const([("m", "gt", float("nan"))])),
        H("where_deep_value", "param", shared("wdv", lambda: [("m", "eq", _nested("list"))])),
        H("where_ki", "param", _call(KeyboardInterrupt)),
    ],
    "metadata": [
        H("meta_deep", "param", shared("meta_deep", lambda: {"m": _nested("dict")})),
        H("meta_deep_list", "param", shared("meta_deep_list", lambda: {"m": _nested("list")})),
        H("meta_int_key", "param", _const({1: 2})),
        H("meta_raise_eq_value", "param", lambda ctx: {"m": _raising("__eq__")(ctx)}),
    ],
    "capabilities": [
        H("caps_str", "param", _const("abc")),
        H("caps_many", "param", shared("caps_many", lambda: [f"c{i}" for i in range(100_000)])),
        H("caps_raise_hash", "param", lambda ctx: [HostileStr(ctx)]),
    ],
    "items": [
        H("items_dup", "param", _const([{"agent_id": "d"}, {"agent_id": "d"}])),
        H("items_bad_id", "param", _const([{"agent_id": 1}])),
        H("items_unknown_key", "param", _const([{"agent_id": "u", "bogus": 1}])),
        H("items_not_dict", "param", _const([1])),
        H("items_gen_long", "param", lambda ctx: ({"agent_id": f"g{i}"} for i in range(10**6))),
    ],
    "limits": [
        H("limits_empty", "param", _const({})),
        H("limits_zero", "param", _const({"db": 0})),
        H("limits_neg", "param", _const({"db": -1})),
        H("limits_huge", "param", _const({"db": 2**64})),
        H("limits_2_63", "param", _const({"db": 2**63 - 1})),
        H("limits_bool", "param", _const({"db": True})),
        H("limits_key_int", "param", _const({1: 1})),
        H("limits_nan", "param", _const({"db": float("nan")})),
    ],
    "overflow": [
        H("overflow_case", "param", _const("BLOCK")),
        H("overflow_nul", "param", _const("block\x00")),
    ],
    "pattern": [
        H("pattern_many_hash", "param", _const(".".join(["#"] * 64) + ".x")),
        H("pattern_segments", "param", shared("pattern_segments", lambda: "a." * 100_000 + "a")),
    ],
    "signal_type": [
        H("type_segments", "param", shared("type_segments", lambda: "a." * 100_000 + "a"))
    ],
    "expected": [
        H("expected_empty", "param", _const(())),
        H("expected_ki", "param", _const((KeyboardInterrupt,))),
        H("expected_base", "param", _const(BaseException)),
        H("expected_not_exc", "param", _const((int,))),
    ],
    "retry_on": [
        H("retry_on_empty", "param", _const(())),
        H("retry_on_ki", "param", _const(KeyboardInterrupt)),
    ],
    "owner": [
        H("owner_done_thread", "param", shared("done_thread", lambda: _finished_thread())),
        H("owner_done_future", "param", shared("done_future", lambda: _done_future())),
        H("owner_int", "param", _const(12345)),
    ],
    "exc": [
        H("exc_ki", "param", _const(KeyboardInterrupt())),
        H("exc_class", "param", _const(ValueError)),
        H("exc_discard", "param", _const(ferrule.Discard())),
    ],
    "exc_type": [H("exc_type_ki", "param", _const(KeyboardInterrupt))],
    "permit": [
        H("permit_max", "param", _const(2**64 - 1)),
        H("permit_rand", "param", _const(0x5A5A_5A5A_5A5A_5A5A)),
    ],
    "token": [H("token_max", "param", _const(2**64 - 1))],
    "waiter": [H("waiter_foreign", "param", lambda ctx: _foreign_waiter(ctx))],
    "factory": [
        H("items_close_raise", "param", lambda ctx: lambda: _Closing(ctx, HostileError)),
        H("items_close_ki", "param", lambda ctx: lambda: _Closing(ctx, KeyboardInterrupt)),
    ],
    "item": [H("item_foreign", "param", _const(object()))],
    "clock": [H("clock_far", "param", _const(native.ManualClock(4e9)))],
    "bus": [
        H("bus_no_publish", "param", _const(object())),
        H("bus_publish_ki", "param", lambda ctx: _Bus(ctx, KeyboardInterrupt)),
        H("bus_publish_raises", "param", lambda ctx: _Bus(ctx, HostileError)),
    ],
    "key": [
        H("key_float", "param", _const(1.5)),
        H("key_tuple_float", "param", _const(("a", 1.5))),
        H("key_big_tuple", "param", shared("key_big_tuple", lambda: tuple(range(100_000)))),
    ],
    "seconds": [H("seconds_edge", "param", _const(4e9)), H("seconds_past", "param", _const(4.7e9))],
    "client": [
        H("client_dead", "param", lambda ctx: redis_client("dead")),
        H("client_async", "param", lambda ctx: _async_client(ctx)),
    ],
    "on_error": [H("on_error_case", "param", _const("RAISE"))],
    "start": [H("start_edge", "param", _const(4e9)), H("start_past", "param", _const(4.7e9))],
}


def _selftest(what: str) -> Callable[[Ctx], Callable[..., Any]]:
    def act(*args: Any) -> None:
        if what == "abort":
            os.abort()
        time.sleep(3600)

    return lambda ctx: act


ALL_HOSTILE: dict[str, Hostile] = {h.name: h for h in HOSTILE}
# For the harness's own test: a dead process and a hang must be detected and reported.
ALL_HOSTILE["selftest_abort"] = Hostile("selftest_abort", "selftest", _selftest("abort"))
ALL_HOSTILE["selftest_hang"] = Hostile("selftest_hang", "selftest", _selftest("hang"))
for _extra in EXTRA.values():
    ALL_HOSTILE.update({h.name: h for h in _extra})


class _Closing:
    """A pool item whose ``close()`` raises."""

    def __init__(self, ctx: Ctx, exc_type: type[BaseException]) -> None:
        self._ctx, self._exc = ctx, exc_type

    def close(self) -> None:
        _boom(self._ctx, self._exc, "close")


class _Bus:
    def __init__(self, ctx: Ctx, exc_type: type[BaseException]) -> None:
        self._ctx, self._exc = ctx, exc_type

    def publish(self, *args: Any) -> Any:
        return _boom(self._ctx, self._exc, "publish")


def _finished_thread() -> threading.Thread:
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    return t


def _done_future() -> Future[int]:
    f: Future[int] = Future()
    f.set_result(1)
    return f


def _foreign_waiter(ctx: Ctx) -> Any:
    """A waiter of another (exhausted) pool."""
    pool = exhausted_pool(ctx)
    return pool._checkout_async(lambda: None)[1]


# ---------------------------------------------------------------------------------------
# One case's context
# ---------------------------------------------------------------------------------------


class Ctx:
    """What one case needs besides its arguments: the object under test (for the
    re-entrant hostiles), the hostile exceptions raised, objects to keep alive and
    clean-ups, and what went wrong outside the call (hooks, re-entrant calls)."""

    def __init__(self, case: str) -> None:
        self.case = case
        self.obj: Any = None
        self.raised: list[tuple[int, BaseException]] = []
        # Exceptions sent to sys.unraisablehook: code beside an operation (a callback, a
        # bus, an item's close(), a wake-up hook) reports every exception there by
        # design, KeyboardInterrupt included (src/py/wait.rs, `report`).
        self.reported: list[BaseException] = []
        self.keep: list[Any] = []
        self.cleanups: list[Callable[[], Any]] = []
        self.problems: list[tuple[str, str]] = []  # (kind, detail): failures off the call
        self.notes: list[str] = []
        self.overrides: dict[str, Any] = {}  # baseline values for this case only
        self._busy = threading.local()

    def reenter(self) -> None:
        """Call into the object under test (``REENTER``); never recursively."""
        obj = self.obj
        if obj is None or getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            for fn in REENTER.get(type(obj).__name__, [repr]):
                try:
                    fn(obj)
                except BaseException as exc:  # judged here: the caller never sees it
                    bad = verdict(self, exc, reentrant=True)
                    if bad:
                        self.problems.append((bad[0], f"in a re-entrant call: {bad[1]}"))
        finally:
            self._busy.on = False


_current: Ctx | None = None  # the case running now (for the hooks)

# ---------------------------------------------------------------------------------------
# Baselines: objects under test and known-good arguments
# ---------------------------------------------------------------------------------------


class Fresh:
    """A baseline argument built per call: ``fn(ctx, obj)``."""

    def __init__(self, fn: Callable[[Ctx, Any], Any]) -> None:
        self.fn = fn


def noop(*args: Any, **kwargs: Any) -> None:
    return None


BASELINE: dict[str, Any] = {
    # sizes and counts
    "max_size": 16, "maxsize": 8, "max_items": 4, "max_batch": 100, "max_workers": 2,
    "max_queue": 8, "max_per_agent": 4, "max_agents": 8, "min_size": 0, "shards": 1,
    "max_ops": 8, "buckets": None,
    "burst": 4, "cost": 1, "amount": 1, "limit": 10, "failure_threshold": 3,
    "half_open_max_calls": 1, "attempts": 2, "n": 1, "queued": 0, "chunksize": 1,
    # durations and rates
    "ttl": 60.0, "timeout": 0.05, "rate": 100.0, "per": 1.0, "reset_timeout": 1.0,
    "window": 10.0, "seconds": 0.01, "max_age": 60.0, "interval": 60.0, "backoff": 0.0,
    "max_backoff": 0.01, "start": 1.0, "alert_threshold": 0.9, "severe_threshold": 0.95,
    "retry_after": 0.0, "reset_after": 0.0, "max_idle": 60.0, "elapsed": 0.0,
    "next_delay": None, "attempt_timeout": None, "timestamp": 1.5,
    # counts (RetryState, RetryStats)
    "attempt": 1, "calls": 1, "retries": 0, "successes": 1, "give_ups": 0, "failures": 0,
    "exception": None, "result": None,
    # keys, names, values
    "key": BASELINE_KEY, "default": None, "value": 1, "item": 1, "agent_id": "a1",
    "op": "op", "name": "db", "node": "n", "health": "healthy", "capability": "c",
    "capabilities": ("c",), "pattern": "a.#", "signal_type": "a.b", "data": 1,
    "overflow": "drop_oldest", "prefix": "ferrule_op", "policy": "fixed",
    "metadata": Fresh(lambda ctx, obj: {"m": 1}), "error": Fresh(lambda ctx, obj: ValueError("e")),
    "items": Fresh(lambda ctx, obj: [BASELINE_KEY, 2]),
    "keys": Fresh(lambda ctx, obj: [BASELINE_KEY, 2, "absent"]),
    "mapping": Fresh(lambda ctx, obj: {BASELINE_KEY: 1, 2: 3}),
    "limits": Fresh(lambda ctx, obj: {"db": 10, "gpu": 4}),
    "spec": "10/second; 100 per 5 minutes",
    # flags
    "ok": True, "allowed": True, "remaining": 1, "weak": False, "jitter": False,
    "discard_on_error": False, "wait": True, "cancel_futures": False, "timed_out": True,
    "rejected": False,
    # callables and objects
    "factory": noop, "fn": noop, "func": noop, "callback": noop, "wake": noop, "waker": noop,
    "handler": None, "validate": None, "check": None, "on_state_change": None, "sleep": None,
    "weigher": None, "on_evict": None, "tti": 60.0,  # Cache's options
    "event_interval": 1.0, "deny_threshold": 1, "low_water": None,  # events (bus=)
    "logger": None, "level": 20,  # ferrule.events.log_events
    "clock": None, "bus": None, "owner": None, "where": None, "exc": None, "exc_type": None,
    "loop": None, "tb": None, "_exc_type": None, "_exc": None, "_tb": None, "exc_val": None,
    "exc_tb": None, "deadline": None, "expected": (Exception,), "retry_on": (Exception,),
    "pending": Fresh(lambda ctx, obj: object()),
    "registry": Fresh(lambda ctx, obj: native.Registry()),
    "client": Fresh(lambda ctx, obj: redis_client()),
    "metrics": Fresh(lambda ctx, obj: native.Metrics()),
    "obj": Fresh(lambda ctx, obj: native.Cache(4)),  # what an exporter adds
    # RedisInvalidation / InvalidatingCache
    "channel": Fresh(lambda ctx, obj: redis_prefix()), "reconnect": (0.05, 2.0),
    "connect_timeout": 1.0, "cache": Fresh(lambda ctx, obj: native.Cache(16)),
    "invalidation": Fresh(lambda ctx, obj: _invalidation(ctx)),
}  # fmt: skip


def _closed_queue(ctx: Ctx, obj: Any) -> Any:
    q = native.WorkQueue(4)
    q.close()
    return q


@dataclasses.dataclass
class Special:
    """Per-call baseline overrides."""

    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    star: tuple[Any, ...] = ()  # baseline *args
    variant: str = "ready"  # the object state the call needs
    setup: Callable[[Any, Ctx], Any] | None = None  # runs on the object before the call


def _enter(obj: Any, ctx: Ctx) -> None:
    obj.__enter__()


def _closed_permit(obj: Any, ctx: Ctx) -> None:
    """A RedisCircuitBreaker permit of a closed period, as ``__aenter__`` would push it,
    pushed in this context (the coroutine ``__aexit__`` returns runs in a copy of it)."""
    obj._push((0, "", 0.0))


SPECIAL: dict[str, Special] = {
    "ferrule.span_events": Special({"bus": Fresh(lambda ctx, obj: native.SignalBus())}),
    "Registry.register": Special({"agent_id": "new"}),
    "Registry.register_many": Special({"items": Fresh(lambda ctx, obj: [{"agent_id": "b1"}])}),
    "ferrule._registrations": Special({"items": Fresh(lambda ctx, obj: [{"agent_id": "b1"}])}),
    "Registry.update": Special({"health": "degraded"}),
    "WorkQueue.put_many": Special({"items": Fresh(lambda ctx, obj: [1, 2])}),
    "WorkQueue._forget_getter": Special({"waker": noop}),
    "WorkQueue._put_or_wait": Special({"waker": None}),
    "WorkQueue._get_or_wait": Special({"waker": None}),
    "WorkQueue._join_or_wait": Special({"waker": None}),
    "WorkQueue._forget_joiner": Special({"waker": noop}),
    # join waits, with no timeout, for a task_done nobody makes in "ready" (3 items).
    "WorkQueue.join": Special(variant="empty"),
    "WorkQueue.join_async": Special(variant="empty"),
    "Subscription._get_or_wait": Special({"waker": None}),
    "TaskPool.__new__": Special({"overflow": "block", "name": "fz"}),
    "ferrule.log_events": Special({"bus": Fresh(lambda ctx, obj: native.SignalBus())}),
    "TaskPool.map": Special({"fn": abs}, star=([1, 2],)),
    "Cache.__new__": Special({"policy": "tinylfu"}),
    "Cache.get_or_set": Special({"key": "missing"}),
    "Cache.get_many": Special(variant="weighted"),
    "Cache.set_many": Special(variant="weighted"),
    "Cache.peek": Special(variant="weighted"),
    "Cache.get_or_set_async": Special({"key": "missing", "factory": _async_fn}),
    "WorkQueue.__new__": Special({"overflow": "block"}),
    "ManualClock.set": Special({"seconds": 20.0}),
    "Decision.__new__": Special({"remaining": 1}),
    "CircuitBreaker.__exit__": Special(setup=_enter),
    "Attempt.__exit__": Special(setup=_enter),
    "CircuitBreaker.__aexit__": Special(setup=_enter),
    "CircuitBreaker._record": Special({"permit": Fresh(lambda ctx, obj: obj._acquire())}),
    "Timer.__exit__": Special(setup=_enter),
    "PoolCheckout.__exit__": Special(setup=_enter),
    "Lease.__exit__": Special(setup=_enter),
    "Pool._resume": Special(
        {"waiter": Fresh(lambda ctx, obj: obj._checkout_async(noop)[1])}, variant="exhausted"
    ),
    "Pool._give_up": Special(
        {"waiter": Fresh(lambda ctx, obj: obj._checkout_async(noop)[1])}, variant="exhausted"
    ),
    "Pool._finish": Special({"item": Fresh(lambda ctx, obj: _checked_out(ctx, obj))}),
    "Pool._checkout_async": Special(variant="exhausted"),
    "ResourceManager._remove_waker": Special(
        {"token": Fresh(lambda ctx, obj: obj._add_waker("db", noop))}
    ),
    "ferrule._run_worker": Special(
        {"queue": Fresh(_closed_queue), "counters": Fresh(lambda c, o: native.TaskCounters())}
    ),
    "ferrule.cached": Special({"max_size": 8, "ttl": None}),
    "_CachedCall.__new__": Special(
        {
            "cache": Fresh(lambda ctx, obj: native.Cache(8)),
            "func": lambda key: key,
            "slow": lambda args, kwargs: args,
        }
    ),
    "_CachedCall.__get__": Special({"instance": Fresh(lambda ctx, obj: object())}),
    "HealthMonitor.__new__": Special({"check": lambda agent: "healthy", "timeout": 0.05}),
    "HealthMonitor.watch": Special({"check": lambda agent: "healthy"}),
    # The failure-rate rule, so that every one of its arguments is fuzzed in a valid
    # call (a hostile failure_threshold then meets the documented ValueError).
    "CircuitBreaker.__new__": Special(
        {
            "name": "db",
            "failure_threshold": None,
            "failure_rate": 0.5,
            "min_calls": 2,
            "window": 10.0,
            "window_calls": None,
            "slow_call": 1.0,
            "success_threshold": 2,
        }
    ),
    # `rate` is given: `limits` (the other form) stays out, and is fuzzed alone.
    "RateLimiter.__new__": Special({"limits": None}),
    "ferrule._gcra_windows": Special({"limits": None}),
    "ferrule._health_statuses": Special(
        {
            "ids": Fresh(lambda ctx, obj: ["a", "b"]),
            "values": Fresh(lambda ctx, obj: ["healthy", "degraded"]),
            "healths": Fresh(lambda ctx, obj: ["healthy", "healthy"]),
        }
    ),
    "SignalBus.subscribe": Special({"maxsize": 8}),
    "RedisRateLimiter.__new__": Special(
        {"prefix": Fresh(lambda ctx, obj: redis_prefix()), "limits": None}
    ),
    "RedisRateLimiter.acquire_async": Special(variant="async"),
    "RedisRegistry.__new__": Special({"prefix": Fresh(lambda ctx, obj: redis_prefix())}),
    "RedisRegistry.register": Special({"agent_id": "new"}),
    "RedisRegistry.register_many": Special({"items": Fresh(lambda c, o: [{"agent_id": "b1"}])}),
    "RedisRegistry.update": Special({"health": "degraded"}),
    "RedisAgent.__new__": Special({"registered_at": 1.0, "expires_at": None}),
    # As CircuitBreaker.__new__: the failure-rate rule, so that every argument is fuzzed
    # in a valid call; each breaker under its own prefix.
    "RedisCircuitBreaker.__new__": Special(
        {
            "name": "db",
            "prefix": Fresh(lambda ctx, obj: redis_prefix()),
            "failure_threshold": None,
            "failure_rate": 0.5,
            "min_calls": 2,
            "window": 10.0,
            "window_calls": None,
            "slow_call": 1.0,
            "success_threshold": 2,
            "probe_timeout": 5.0,
        }
    ),
    "RedisCircuitBreaker.__exit__": Special(setup=_enter),
    "RedisCircuitBreaker.__aexit__": Special(variant="async", setup=_closed_permit),
    "RedisCircuitBreaker.__aenter__": Special(variant="async"),
    "RedisBreakerStats.__new__": Special(
        {
            "state": "closed",
            **dict.fromkeys(
                [
                    "slow_calls",
                    "ignored",
                    "rejections",
                    "state_changes",
                    "consecutive_failures",
                    "window_calls",
                    "window_failures",
                    "backend_errors",
                ],
                0,
            ),
        }
    ),
}


def _checked_out(ctx: Ctx, pool: Any) -> Any:
    """An item taken out through the asyncio path, so that ``_finish`` may return it."""
    got, item = pool._checkout_async(noop)
    return item if got else None


def _cache(ctx: Ctx) -> Any:
    c = native.Cache(16, ttl=60.0)
    c[BASELINE_KEY] = "v"
    c[1] = 2
    return c


def _cache_weighted(ctx: Ctx) -> Any:
    """A cache with every option on: weights, time to idle and a listener."""
    c = native.Cache(16, ttl=60.0, tti=60.0, weigher=lambda k, v: 1, on_evict=noop)
    c[BASELINE_KEY] = "v"
    c[1] = 2
    return c


def _registry(ctx: Ctx) -> Any:
    r = native.Registry()
    r.register("a1", "v", capabilities=["c"], node="n", metadata={"m": 1, "l": [1, 2]}, ttl=60.0)
    r.register("a2", "w", capabilities=["c", "d"], health="degraded")
    return r


def _queue(ctx: Ctx, maxsize: int = 8, fill: int = 3) -> Any:
    q = native.WorkQueue(maxsize)
    q.put_many(range(fill))
    return q


def _bus(ctx: Ctx) -> Any:
    bus = native.SignalBus()
    sub = bus.subscribe("a.*", maxsize=8)
    ctx.cleanups.append(sub.cancel)
    bus.publish("a.b", 1)
    return bus


def _subscription(ctx: Ctx, publish: bool = True) -> Any:
    bus = native.SignalBus()
    ctx.keep.append(bus)  # a collected bus cancels its subscriptions
    sub = bus.subscribe("a.#", maxsize=8)
    ctx.cleanups.append(sub.cancel)
    if publish:
        bus.publish("a.b", 1)
    return sub


def _rm(ctx: Ctx) -> Any:
    return native.ResourceManager({"db": 10, "gpu": 4})


def _rm_exhausted(ctx: Ctx) -> Any:
    rm = _rm(ctx)
    ctx.keep += [rm.acquire("db", 10), rm.acquire("gpu", 4)]
    return rm


def _pool(ctx: Ctx) -> Any:
    pool = native.Pool(list, max_size=2, timeout=0.05, max_idle=60.0)
    with pool.acquire():  # leaves one idle item (validate and reuse paths)
        pass
    ctx.cleanups.append(pool.close)
    return pool


def exhausted_pool(ctx: Ctx) -> Any:
    pool = _pool(ctx)
    for _ in range(pool.max_size):
        cm = pool.acquire()
        cm.__enter__()
        ctx.keep.append(cm)
    return pool


def _health(ctx: Ctx) -> Any:
    mon = ferrule.HealthMonitor(
        _registry(ctx), interval=60.0, timeout=0.05, check=lambda a: "healthy", max_workers=2
    )
    ctx.cleanups.append(mon.stop)
    return mon


def _taskpool(ctx: Ctx) -> Any:
    pool = ferrule.TaskPool(2, max_queue=8, name="fz")
    ctx.cleanups.append(lambda: pool.shutdown(wait=True, cancel_futures=True))
    return pool


def _metrics(ctx: Ctx) -> Any:
    m = native.Metrics(window=10.0)
    m.record("op", 0.01)
    return m


def _errors(ctx: Ctx) -> Any:
    s = native.ErrorStore(max_per_agent=4, max_age=60.0, max_agents=8)
    s.record("a1", ValueError("e"))
    return s


def _prometheus(ctx: Ctx) -> Any:
    from ferrule.metrics import PrometheusCollector

    return PrometheusCollector(_metrics(ctx))


def _instrumentation(ctx: Ctx) -> Any:
    from ferrule.otel import instrument

    return instrument(None, _metrics(ctx))  # the API's global (no-op unless set) provider


def _attempt(ctx: Ctx) -> Any:
    """The first attempt of a block loop (the loop kept alive, as a for statement does)."""
    attempts = iter(ferrule.retry(attempts=2, backoff=0.0, jitter=False))
    ctx.keep.append(attempts)
    return next(attempts)


def _rate(ctx: Ctx) -> Any:
    return native.RateLimiter(100.0, burst=4)


def _rate_drained(ctx: Ctx) -> Any:
    rl = native.RateLimiter(1.0, per=60.0, burst=1)
    rl.try_acquire(BASELINE_KEY)
    rl.try_acquire(None)
    return rl


# The Redis tier: every object gets its own key prefix on the one server (so no case sees
# another's agents or buckets; the server is thrown away after the run), and one client
# per process and kind, shared by every case (a redis client is thread-safe).
_REDIS_SEQ = itertools.count()
_REDIS_CLIENTS: dict[str, Any] = {}


def redis_prefix() -> str:
    return f"fz:{os.getpid()}:{next(_REDIS_SEQ)}:"


def redis_client(kind: str = "sync") -> Any:
    """The client of the fuzz's server (``redis_url``): "sync" (``redis.Redis``),
    "async" (a new ``redis.asyncio.Redis``: its connections belong to one event loop)
    or "dead" (a ``redis.Redis`` of a port nobody listens on: every call fails at once)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    url = redis_url()
    if url is None:
        raise RuntimeError(f"no Redis server for the fuzz ({REDIS_ENV} unset)")
    kw: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 1.0}
    if kind == "async":
        import redis.asyncio
        from redis.asyncio.retry import Retry as AsyncRetry

        return redis.asyncio.Redis.from_url(url, retry=AsyncRetry(NoBackoff(), 0), **kw)
    if kind not in _REDIS_CLIENTS:
        if kind == "dead":
            with contextlib.closing(__import__("socket").socket()) as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]  # free once closed: nobody listens there
            url = f"redis://127.0.0.1:{port}/0"
        _REDIS_CLIENTS[kind] = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **kw)
    return _REDIS_CLIENTS[kind]


def _async_client(ctx: Ctx) -> Any:
    client = redis_client("async")
    ctx.cleanups.append(lambda: run_async(client.aclose(), AWAIT_TIMEOUT))
    return client


def _redis_rate(ctx: Ctx, client: Any = None, drained: bool = False) -> Any:
    from ferrule.redis import RedisRateLimiter

    client = client or redis_client()
    if not drained:
        return RedisRateLimiter(client, 100.0, burst=4, prefix=redis_prefix())
    rl = RedisRateLimiter(client, 1.0, per=60.0, burst=1, prefix=redis_prefix())
    if client is redis_client():
        rl.try_acquire(BASELINE_KEY)
        rl.try_acquire(None)
    else:  # the same keys, drained through a synchronous twin
        twin = RedisRateLimiter(redis_client(), 1.0, per=60.0, burst=1, prefix=rl.prefix)
        twin.try_acquire(BASELINE_KEY)
        twin.try_acquire(None)
    return rl


def _key_codec() -> Any:
    from ferrule.redis import KeyCodec

    return KeyCodec()


def _invalidation(ctx: Ctx) -> Any:
    from ferrule.redis import RedisInvalidation

    inv = RedisInvalidation(redis_client(), redis_prefix(), connect_timeout=1.0)
    ctx.cleanups.append(inv.close)
    return inv


def _invalidating(ctx: Ctx) -> Any:
    w = _invalidation(ctx).wrap(native.Cache(16))
    w.set(BASELINE_KEY, 1)
    return w


def _redis_breaker(ctx: Ctx, client: Any = None) -> Any:
    from ferrule.redis import RedisCircuitBreaker

    return RedisCircuitBreaker(client or redis_client(), "db", 3, 1.0, prefix=redis_prefix())


def _redis_registry(ctx: Ctx) -> Any:
    from ferrule.redis import RedisRegistry

    r = RedisRegistry(redis_client(), prefix=redis_prefix(), ttl=60.0)
    r.register_many(  # one round trip
        [
            {"agent_id": "a1", "value": "v", "capabilities": ["c"], "node": "n",
             "metadata": {"m": 1, "l": [1, 2]}},
            {"agent_id": "a2", "value": "w", "capabilities": ["c", "d"], "health": "degraded"},
        ]
    )  # fmt: skip
    return r


# Class -> variant -> factory(ctx). "ready" is every call's default state.
OBJECTS: dict[str, dict[str, Callable[[Ctx], Any]]] = {
    "ManualClock": {"ready": lambda ctx: native.ManualClock(10.0)},
    "Cache": {"ready": _cache, "weighted": _cache_weighted},
    "CacheStats": {"ready": lambda ctx: _cache(ctx).stats()},
    "RateLimiter": {"ready": _rate, "drained": _rate_drained},
    "Decision": {"ready": lambda ctx: _rate(ctx).check(BASELINE_KEY)},
    "LimiterStats": {"ready": lambda ctx: _rate(ctx).stats()},
    "Registry": {"ready": _registry},
    "Agent": {"ready": lambda ctx: _registry(ctx).get("a1")},
    "WorkQueue": {
        "ready": _queue,
        "empty": lambda ctx: native.WorkQueue(8),
        "full": lambda ctx: _queue(ctx, 2, 2),
    },
    "QueueStats": {"ready": lambda ctx: _queue(ctx).stats()},
    "TaskPool": {"ready": _taskpool},
    "TaskCounters": {"ready": lambda ctx: native.TaskCounters()},
    "TaskPoolStats": {"ready": lambda ctx: native.TaskCounters().snapshot(0)},
    "SignalBus": {"ready": _bus},
    "Subscription": {"ready": _subscription, "empty": lambda ctx: _subscription(ctx, False)},
    "Signal": {"ready": lambda ctx: _subscription(ctx).get_nowait()},
    "SubscriptionStats": {"ready": lambda ctx: _subscription(ctx).stats()},
    "BusStats": {"ready": lambda ctx: _bus(ctx).stats()},
    "CircuitBreaker": {"ready": lambda ctx: native.CircuitBreaker(3, 1.0)},
    "BreakerStats": {"ready": lambda ctx: native.CircuitBreaker().stats()},
    "Retry": {"ready": lambda ctx: ferrule.retry(attempts=2, backoff=0.0, jitter=False)},
    "Attempt": {"ready": lambda ctx: _attempt(ctx)},
    "RetryState": {"ready": lambda ctx: ferrule.RetryState(1, None, 1, 0.0, None)},
    "RetryStats": {"ready": lambda ctx: ferrule.retry().stats()},
    "Metrics": {"ready": _metrics},
    "Timer": {"ready": lambda ctx: _metrics(ctx).time("op")},
    "OpStats": {"ready": lambda ctx: _metrics(ctx).snapshot("op")},
    "OpTotals": {"ready": lambda ctx: _metrics(ctx).totals("op")},
    "ErrorStore": {"ready": _errors},
    "ErrorRecord": {"ready": lambda ctx: _errors(ctx).history("a1")[0]},
    "ErrorStoreStats": {"ready": lambda ctx: _errors(ctx).stats()},
    "ResourceManager": {"ready": _rm, "exhausted": _rm_exhausted},
    "Lease": {"ready": lambda ctx: _rm(ctx).acquire("db", 2, ttl=60.0)},
    "Usage": {"ready": lambda ctx: _rm(ctx).usage()["db"]},
    "Pool": {"ready": _pool, "exhausted": exhausted_pool},
    "PoolCheckout": {
        "ready": lambda ctx: _pool(ctx).acquire(timeout=0.05),
        "exhausted": lambda ctx: exhausted_pool(ctx).acquire(timeout=0.05),
    },
    "PoolStats": {"ready": lambda ctx: _pool(ctx).stats()},
    "HealthMonitor": {"ready": _health},
    "PrometheusCollector": {"ready": _prometheus},
    "Instrumentation": {"ready": _instrumentation},
    "cached_wrapper": {"ready": lambda ctx: ferrule.cached(8)(lambda *a, **k: a)},
    "_CachedCall": {
        "ready": lambda ctx: native._CachedCall(
            native.Cache(8), lambda key: key, lambda args, kwargs: args
        )
    },
    "RedisRateLimiter": {
        "ready": _redis_rate,
        "drained": lambda ctx: _redis_rate(ctx, drained=True),
        "async": lambda ctx: _redis_rate(ctx, _async_client(ctx)),
        "async_drained": lambda ctx: _redis_rate(ctx, _async_client(ctx), drained=True),
    },
    "RedisRegistry": {"ready": _redis_registry},
    "RedisAgent": {"ready": lambda ctx: _redis_registry(ctx).get("a1")},
    "RedisInvalidation": {"ready": _invalidation},
    "InvalidatingCache": {"ready": _invalidating},
    "KeyCodec": {"ready": lambda ctx: _key_codec()},
    "RedisCircuitBreaker": {
        "ready": _redis_breaker,
        "async": lambda ctx: _redis_breaker(ctx, _async_client(ctx)),
    },
    "RedisBreakerStats": {"ready": lambda ctx: _redis_breaker(ctx).stats()},
}

# Calls that block (or register a waker), and the variant in which they must wait (or
# register it): there only the parameters in WAIT_PARAMS are fuzzed, without hostile
# values that would mean a wait over WAIT_LONG seconds.
WAITS: dict[str, str] = {
    "WorkQueue._put_or_wait": "full",
    "WorkQueue._get_or_wait": "empty",
    "WorkQueue._join_or_wait": "ready",
    "Subscription._get_or_wait": "empty",
    "WorkQueue.get": "empty",
    "WorkQueue.get_many": "empty",
    "WorkQueue.put": "full",
    "WorkQueue.put_many": "full",
    "WorkQueue.get_async": "empty",
    "WorkQueue.put_async": "full",
    "Subscription.get": "empty",
    "Subscription.get_async": "empty",
    "RateLimiter.acquire": "drained",
    "RateLimiter.acquire_async": "drained",
    "ResourceManager.acquire": "exhausted",
    "ResourceManager.acquire_async": "exhausted",
    "Pool.acquire": "exhausted",
    "Pool.acquire_async": "exhausted",
    "PoolCheckout.__enter__": "exhausted",
    "RedisRateLimiter.acquire": "drained",
    "RedisRateLimiter.acquire_async": "async_drained",
}
# The parameters fuzzed in the waiting state (default: timeout).
WAIT_PARAMS: dict[str, set[str]] = {
    "WorkQueue._put_or_wait": {"waker"},
    "WorkQueue._get_or_wait": {"waker", "pending"},
    "WorkQueue._join_or_wait": {"waker"},
    "Subscription._get_or_wait": {"waker", "pending"},
}


def wait_params(tid: str) -> set[str]:
    return WAIT_PARAMS.get(tid, {"timeout"})


# Calls that would block forever in a waiting state: never fuzzed there.
BLOCKS_FOREVER = {"WorkQueue.__next__", "Subscription.__next__"}

# Calls a re-entrant hostile makes on the object under test (never blocking, never
# destructive); their exceptions are judged like the call's.
REENTER: dict[str, list[Callable[[Any], Any]]] = {
    "Cache": [lambda c: c.get(BASELINE_KEY), lambda c: c.set("r", 1), lambda c: c.delete("r"), len],
    "RateLimiter": [lambda r: r.try_acquire(BASELINE_KEY), lambda r: r.stats(), len],
    "Registry": [lambda r: r.get("a1"), lambda r: r.find(capability="c"), len],
    "WorkQueue": [lambda q: q.put_nowait(9), lambda q: q.get_nowait(), lambda q: q.stats()],
    "SignalBus": [lambda b: b.publish("a.r", 1), lambda b: b.stats()],
    "Subscription": [lambda s: s.stats(), lambda s: s.qsize()],
    "CircuitBreaker": [lambda b: b.call(len, "ab"), lambda b: b.stats()],
    "Metrics": [lambda m: m.record("r", 0.1), lambda m: m.snapshot("op")],
    "ErrorStore": [lambda s: s.record("r", 1), lambda s: s.stats()],
    "ResourceManager": [lambda r: r.usage(), lambda r: r.pressure("db")],
    "Pool": [lambda p: p.stats()],
    "ManualClock": [lambda c: c.now()],
    "TaskPool": [lambda p: p.stats()],
    "HealthMonitor": [lambda m: m.rounds],
    "RedisRateLimiter": [lambda r: r.peek("r")],
    "RedisRegistry": [lambda r: r.get("a1"), lambda r: r.count(capability="c")],
    "RedisCircuitBreaker": [lambda b: b.call(len, "ab"), lambda b: b.stats()],
    "Retry": [lambda p: p.stats(), lambda p: p.call(len, "ab")],
}


class ProbeError(AssertionError):
    """An object broke an invariant (or stopped working) after a hostile call."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ProbeError(what)


def _probe_cache(c: Any) -> None:
    _check(len(c) <= c.max_size, f"len {len(c)} > max_size {c.max_size}")
    c.set(BASELINE_KEY, 0)
    _check(c.get(BASELINE_KEY) == 0, "set then get")
    for i in range(c.max_size + 2):  # evicts whatever the call stored
        c.set(("probe", i), i)
    _check(len(c) <= c.max_size, f"len {len(c)} > max_size {c.max_size} after evictions")
    st = c.stats()
    _check(st.weight <= st.max_size, f"weight {st.weight} > max_size {st.max_size}")
    c.expire()
    c.clear()


def _probe_queue(q: Any) -> None:
    """Also wakes what the call registered: a put wakes a getter, a get a putter."""
    with contextlib.suppress(ferrule.QueueFull, ferrule.QueueClosed):
        q.put_nowait("probe")
    with contextlib.suppress(ferrule.QueueEmpty, ferrule.QueueClosed):
        q.get_nowait()
    s = q.stats()
    _check(s.put == s.got + s.dropped + s.size, f"put != got + dropped + size: {s}")
    _check(q.maxsize <= 0 or q.qsize() <= q.maxsize, "qsize > maxsize")
    # Each item that entered is unfinished until task_done, dropped, or discarded.
    _check(q.unfinished_tasks <= s.put - s.dropped, f"unfinished_tasks beyond the items: {s}")


def _probe_pool(p: Any) -> None:
    s = p.stats()
    _check(0 <= s.in_use <= s.size <= p.max_size, f"pool counts out of range: {s}")
    _check(s.idle + s.in_use <= s.size, f"idle + in_use > size: {s}")


def _probe_rm(rm: Any) -> None:
    """Also a take and a release on each budget: that runs the wakers (``_add_waker``)."""
    for name in rm.limits:
        lease = rm.try_acquire(name)
        if lease is not None:
            lease.release()
    for name, u in rm.usage().items():
        _check(0 <= u.used <= u.limit, f"{name}: used {u.used} outside 0..{u.limit}")


def _probe_counters(c: Any) -> None:
    """Only that it still works: called out of order (finish before start), the
    internal counters are allowed to disagree."""
    c.snapshot(0)
    _ = c.outstanding


def _probe_subscription(s: Any) -> None:
    st = s.stats()
    _check(st.accepted == st.delivered + st.dropped + st.queued, f"accounting: {st}")


def _distinct(ids: list[Any]) -> bool:
    """No id twice, compared as plain str: an id may be a str subclass some thread
    registered whose ``__hash__`` raises (the registry keeps the caller's object)."""
    return len({str.__str__(i) for i in ids}) == len(ids)


def _probe_registry(r: Any) -> None:
    ids = r.ids()
    _check(_distinct(ids), "duplicate ids")
    r.count(where=[("m", "eq", 1)])  # over whatever metadata the call stored
    r.count(where=[("m.a.a", "in", [1])])
    r.expire()
    _check(len(r) == len(r.ids()), "len != len(ids())")


def _probe_clock(c: Any) -> None:
    _check(c.now() >= 0.0, "negative time")


def _probe_redis_rate(r: Any) -> None:
    if r._async:  # an asyncio client: the synchronous calls refuse it (TypeError)
        return
    _check(0 <= r.peek(BASELINE_KEY) <= r.burst, "peek outside 0..burst")
    r.try_acquire("probe")


def _probe_redis_registry(r: Any) -> None:
    agents = r.find(where=[("m", "eq", 1)])  # over whatever metadata the call stored
    _check(all(a.metadata["m"] == 1 for a in agents), f"where did not hold: {agents}")
    ids = r.ids()
    _check(_distinct(ids), "duplicate ids")
    _check(len(r) == len(ids), "len != len(ids())")


def _probe_redis_breaker(b: Any) -> None:
    if b._async:  # an asyncio client: the synchronous calls refuse it (TypeError)
        return
    s = b.stats()
    _check(s.calls >= s.successes + s.failures + s.ignored, f"counts: {s}")
    _check(s.slow_calls <= s.failures, f"slow calls beyond failures: {s}")


# Class -> check run after every call on an object of that class.
PROBES: dict[str, Callable[[Any], None]] = {
    "Cache": _probe_cache,
    "WorkQueue": _probe_queue,
    "Pool": _probe_pool,
    "ResourceManager": _probe_rm,
    "TaskCounters": _probe_counters,
    "Subscription": _probe_subscription,
    "Registry": _probe_registry,
    "ManualClock": _probe_clock,
    # "probe", not the baseline key: a hostile key some thread left stored hashes like the
    # baseline key and raises its own exception when compared (as from a dict), and a
    # limiter has no clear() to empty it first.
    "RateLimiter": lambda r: (r.peek("probe"), len(r), r.sweep(), r.stats()),
    "Metrics": lambda m: (m.snapshot("op"), m.ops(), m.totals("op")),
    "ErrorStore": lambda s: (s.agents(), s.count("a1"), s.stats()),
    "CircuitBreaker": lambda b: (b.state, b.stats()),
    "SignalBus": lambda b: b.publish("a.p", 1),
    "TaskPool": lambda p: _check(
        (s := p.stats()).started == s.completed + s.failed + s.active, f"counts: {s}"
    ),
    "RedisRateLimiter": _probe_redis_rate,
    "RedisRegistry": _probe_redis_registry,
    "RedisCircuitBreaker": _probe_redis_breaker,
    "Retry": lambda p: _check(
        (s := p.stats()).calls == s.successes + s.give_ups + s.failures
        and s.attempts == s.calls + s.retries,
        f"counts: {s}",
    ),
}


class DriveError(Exception):
    """Raised by the functions the drives pass in (to make a breaker open, a retry retry)."""


def _fails_once() -> Callable[[], int]:
    calls = []

    def fn() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise DriveError("first call fails")
        return 1

    return fn


def _drive_breaker(cb: Any) -> None:
    def fail() -> None:
        raise DriveError("down")

    for _ in range(3):
        with contextlib.suppress(DriveError, ferrule.CircuitOpen):
            cb.call(fail)
    cb.stats()


def _drive_retry(policy: Any) -> None:
    """Every way to run a call: it uses the hooks, predicates, sleep and clock given."""
    policy(lambda: 1)()
    with contextlib.suppress(DriveError):  # attempts=1 or a tiny deadline: no retry
        policy.call(_fails_once())
    fails = _fails_once()

    async def fails_async() -> int:
        return fails()

    with contextlib.suppress(DriveError):
        asyncio.run(policy.call(fails_async))
    fails = _fails_once()
    with contextlib.suppress(DriveError):
        for attempt in policy:
            with attempt:
                fails()
    policy.stats()


def _drive_pool(pool: Any) -> None:
    for _ in range(2):  # the first makes an item, the second validates the idle one
        with pool.acquire(timeout=0.05):
            pass
    pool.close()


def _drive_rm(rm: Any) -> None:
    for name, limit in rm.limits.items():
        lease = rm.try_acquire(name, limit)  # pressure changes: the bus is told
        if lease is not None:
            lease.release()


def _drive_subscription(bus: Any, sub: Any) -> None:
    """Publish to a new subscription; give a handler a moment to run."""
    bus.publish("a.b", 1)
    if "pull" in repr(sub):  # no handler: the signal waits in the mailbox
        return
    end = time.monotonic() + 0.5
    while sub.active and time.monotonic() < end:
        s = sub.stats()
        if s.delivered + s.errors + s.dropped >= s.accepted:
            break
        time.sleep(0.005)


# Class -> what to do with an object a constructor just made with fuzzed arguments: use
# the arguments (a factory, a validate, a bus, a clock) the constructor only stored.
DRIVE: dict[str, Callable[[Any], Any]] = {
    "Cache": lambda c: (
        c.get_or_set("d", noop),
        c.set("e", 1),
        c.set_many({i: i for i in range(20)}),  # evicts: a hostile on_evict runs
        c.get_many(["d", 1]),
        len(c),
        c.clear(),
    ),
    "RateLimiter": lambda r: (r.try_acquire("d"), r.check("d"), r.acquire("d", timeout=0.05)),
    "Registry": lambda r: (r.register("d", ttl=1.0), r.find(capability="c"), r.expire()),
    "WorkQueue": lambda q: (q.put_nowait(1), q.get_nowait()),
    "ManualClock": lambda c: (c.advance(1.0), c.now()),
    "CircuitBreaker": _drive_breaker,
    "Retry": _drive_retry,
    "Pool": _drive_pool,
    "ResourceManager": _drive_rm,
    "Metrics": lambda m: (m.record("op", 0.1), m.snapshot("op")),
    "ErrorStore": lambda s: (s.record("d", 1), s.history("d")),
    "HealthMonitor": lambda m: m.check_now(),
    "TaskPool": lambda p: p.submit(noop).result(timeout=5.0),
    "PrometheusCollector": lambda c: list(c.collect()),
    "RedisRateLimiter": lambda r: (r.try_acquire("d"), r.check("d"), r.peek("d"), r.reset("d")),
    "RedisRegistry": lambda r: (r.register("d", ttl=1.0), r.find(capability="c"), r.expire()),
    "RedisCircuitBreaker": lambda b: None if b._async else _drive_breaker(b),
}

# Calls that return a callable: what to do with it.
DECORATORS: dict[str, Callable[[Any], Any]] = {
    "ferrule.cached": lambda dec: dec(lambda *a, **k: 1)(BASELINE_KEY),
    "ferrule.retry": _drive_retry,
    "Retry.__call__": lambda wrapper: wrapper(),
    "CircuitBreaker.__call__": lambda wrapper: wrapper(),
    "RedisCircuitBreaker.__call__": lambda wrapper: wrapper(),
    "Timer.__call__": lambda wrapper: wrapper(),
}


# Calls that may return a coroutine to await (besides ``*_async`` and ``__a*__``).
AWAITS = {"Retry.call", "CircuitBreaker.call"}
# Calls that return a generator to run.
GENERATORS = {"TaskPool.map", "PrometheusCollector.collect", "PrometheusCollector.describe"}


def _cleanup(obj: Any, ctx: Ctx) -> None:
    """Arrange for anything with threads or waiters to be stopped after the case."""
    if isinstance(obj, native.Subscription):
        ctx.cleanups.append(obj.cancel)
    elif isinstance(obj, ferrule.TaskPool):
        ctx.cleanups.append(lambda: obj.shutdown(wait=True, cancel_futures=True))
    elif isinstance(obj, ferrule.HealthMonitor):
        ctx.cleanups.append(obj.stop)
    elif isinstance(obj, native.Pool) or type(obj).__name__ == "Instrumentation":
        ctx.cleanups.append(obj.close)  # a Pool, or ferrule.otel's handle


# ---------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------

ALLOWED: tuple[type[BaseException], ...] = (
    TypeError,
    ValueError,
    OverflowError,
    KeyError,
    IndexError,
    RuntimeError,  # includes RecursionError and NotImplementedError
    MemoryError,
    TimeoutError,  # includes PoolTimeout and asyncio's TimeoutError
    # The timeouts of asyncio and concurrent.futures (TaskPool raises the latter, as
    # ThreadPoolExecutor does): the builtin TimeoutError from 3.11 on, own classes on 3.10.
    asyncio.TimeoutError,
    concurrent.futures.TimeoutError,
    ferrule.FerruleError,
    queue.Full,
    queue.Empty,
)
# Allowed only for some calls.
ALLOWED_FOR: dict[str, tuple[type[BaseException], ...]] = {
    "<set>": (AttributeError,),
    "<del>": (AttributeError,),
    "__next__": (StopIteration,),
    "__anext__": (StopAsyncIteration,),
}
PANIC_TEXT = re.compile(r"panicked at|PanicException|FATAL")


def verdict(ctx: Ctx, exc: BaseException | None, reentrant: bool = False, also: tuple = ()):
    """None if the outcome is acceptable, else ``(kind, detail)``."""
    me = threading.get_ident()
    hostile = [e for _, e in ctx.raised]
    base_here = [
        e
        for t, e in ctx.raised
        if t == me and not isinstance(e, Exception) and not any(e is r for r in ctx.reported)
    ]
    if exc is None:
        if base_here and not reentrant:
            return ("swallowed", f"{_name(base_here[0])} raised by hostile code did not propagate")
        return None
    if type(exc).__name__ == "PanicException":
        return ("panic", f"PanicException: {_msg(exc)}")
    if isinstance(exc, SystemError):
        return ("system-error", f"SystemError: {_msg(exc)}")
    if isinstance(exc, ProbeError):
        return ("invariant", str(exc))
    if any(exc is e for e in hostile) or getattr(exc, "fuzz_hostile", False) is True:
        return None  # a hostile object's own exception, unchanged
    if base_here:
        return (
            "swallowed",
            f"{_name(base_here[0])} raised by hostile code was replaced by "
            f"{_name(exc)}: {_msg(exc)}",
        )
    rejected = _backend_rejection(exc)
    if rejected:
        return ("backend-rejected", rejected)
    if isinstance(exc, ALLOWED + also):
        return None
    return ("undocumented", f"{_qualname(exc)}: {_msg(exc)}")


def _backend_rejection(exc: BaseException) -> str | None:
    """``BackendError`` is the Redis classes' documented failure, for a server that is
    down, unreachable or too slow. The fuzz's server is up, so one chained from anything
    else (the server refusing a command or a script failing, redis-py refusing an
    argument) means an argument got past the checks: a failure."""
    if not isinstance(exc, ferrule.BackendError):
        return None
    from redis.exceptions import ConnectionError as LostConnection
    from redis.exceptions import TimeoutError as TimedOut

    cause = exc.__cause__
    if isinstance(cause, (LostConnection, TimedOut)):
        return None
    return f"BackendError from {type(cause).__name__} with the server up: {_msg(exc)}"


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _qualname(exc: BaseException) -> str:
    t = type(exc)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def _msg(exc: BaseException) -> str:
    try:
        text = str(exc)
    except BaseException:  # a hostile object in the message
        text = "<unprintable>"
    return text if len(text) < 300 else text[:300] + "..."


def _hooks() -> None:
    """Route what happens off the call (other threads, unraisable, warnings) to the case."""

    def unraisable(u: Any) -> None:
        ctx = _current
        exc = u.exc_value
        if ctx is None or exc is None:
            return
        if type(exc).__name__ == "PanicException" or isinstance(exc, SystemError):
            ctx.problems.append(("panic", f"in sys.unraisablehook ({u.err_msg}): {_msg(exc)}"))
        elif not isinstance(exc, Exception):
            ctx.reported.append(exc)
            ctx.notes.append(f"reported {_name(exc)} ({u.err_msg})")
        else:
            ctx.notes.append(f"unraisable {_name(exc)} ({u.err_msg})")

    def thread_died(args: Any) -> None:
        ctx = _current
        exc = args.exc_value
        if ctx is None or exc is None:
            return
        name = args.thread.name if args.thread else "?"
        if type(exc).__name__ == "PanicException" or isinstance(exc, SystemError):
            ctx.problems.append(("panic", f"in thread {name!r}: {_msg(exc)}"))
        else:
            died = f"thread {name!r} died of {_name(exc)}: {_msg(exc)}"
            ctx.problems.append(("thread-died", died))

    def warned(message: Any, category: Any, filename: str, lineno: int, *a: Any) -> None:
        ctx = _current
        if ctx is not None:
            ctx.notes.append(f"{category.__name__}: {message}")

    sys.unraisablehook = unraisable
    threading.excepthook = thread_died
    warnings.showwarning = warned
    warnings.simplefilter("always")


# ---------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One call: a target in a variant, with some parameters replaced by hostile values.
    Pseudo-parameters: ``<none>`` (no arguments at all), ``<extra>`` (one positional
    too many), ``<kw>`` (an unknown keyword), ``<set>``/``<del>`` (on a property)."""

    target: str
    variant: str = "ready"
    replace: tuple[tuple[str, str], ...] = ()

    @property
    def id(self) -> str:
        parts = ",".join(f"{p}={h}" for p, h in self.replace)
        return f"{self.target}[{self.variant}]:{parts}"

    @classmethod
    def parse(cls, text: str) -> Case:
        m = re.fullmatch(r"(.+?)\[(\w+)\]:(.*)", text.strip())
        if not m:
            raise ValueError(f"not a case id: {text!r}")
        pairs = [tuple(p.split("=", 1)) for p in m.group(3).split(",") if p]
        return cls(m.group(1), m.group(2), tuple(pairs))  # type: ignore[arg-type]


def known_reason(case: Case, table: dict[tuple[str, ...], str] | None = None) -> str | None:
    """The reason ``table`` (default ``KNOWN``) gives for skipping ``case``, if any."""
    owner, name = case.target.rsplit(".", 1) if "." in case.target else (case.target, "")
    for key, reason in (KNOWN if table is None else table).items():
        if key[:2] != (owner, name):
            continue
        if len(key) == 2:
            return reason
        for param, hostile in case.replace:
            if key[2] == param and (len(key) == 3 or key[3] == hostile):
                return reason
    return None


def default_variant(target: Target) -> str:
    sp = SPECIAL.get(target.id)
    return sp.variant if sp else "ready"


def baseline_value(target: Target, param: Param, ctx: Ctx, obj: Any) -> Any:
    sp = SPECIAL.get(target.id)
    if param.name in ctx.overrides:
        v = ctx.overrides[param.name]
    elif sp and param.name in sp.args:
        v = sp.args[param.name]
    elif param.name in BASELINE:
        v = BASELINE[param.name]
    else:
        raise LookupError(f"no baseline for {target.id}({param.name})")
    return v.fn(ctx, obj) if isinstance(v, Fresh) else v


def missing_baselines(target: Target) -> list[str]:
    """Required parameters without a baseline value (a harness gap)."""
    sp = SPECIAL.get(target.id)
    out = []
    for p in target.params:
        if p.required and p.name not in BASELINE and not (sp and p.name in sp.args):
            out.append(p.name)
    owner_needed = target.kind in ("method", "property")
    if owner_needed and target.owner not in OBJECTS:
        out.append("<object>")
    return out


def build_call(target: Target, case: Case, ctx: Ctx, obj: Any):
    """Positional args, keyword args for ``case``."""
    replace = dict(case.replace)
    if "<none>" in replace:
        return [], {}
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    sp = SPECIAL.get(target.id)
    for p in target.params:
        if p.name in replace:
            v = ALL_HOSTILE[replace[p.name]].make(ctx)
        elif p.kind == "star":
            args.extend(sp.star if sp else ())
            continue
        elif p.kind == "starstar":
            continue
        elif p.required or p.name in BASELINE or (sp and p.name in sp.args):
            v = baseline_value(target, p, ctx, obj)
        else:
            continue
        if p.kind == "pos" or (p.kind == "any" and not kwargs and p.required) or p.kind == "star":
            args.append(v)
        elif p.kind == "starstar":
            kwargs["fuzz_kw"] = v
        else:
            kwargs[p.name] = v
    if "<extra>" in replace:
        args.append(ALL_HOSTILE[replace["<extra>"]].make(ctx))
    if "<kw>" in replace:
        kwargs["no_such_argument"] = ALL_HOSTILE[replace["<kw>"]].make(ctx)
    return args, kwargs


_loop: asyncio.AbstractEventLoop | None = None


def run_async(aw: Any, timeout: float) -> Any:
    """Await ``aw`` on this thread's loop (a new one after a BaseException broke it)."""
    global _loop
    if threading.current_thread() is not threading.main_thread():
        return asyncio.run(asyncio.wait_for(_as_coro(aw), timeout))
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    try:
        return _loop.run_until_complete(asyncio.wait_for(_as_coro(aw), timeout))
    except BaseException as exc:
        if not isinstance(exc, Exception):
            _loop.close()
            _loop = None
        raise


async def _as_coro(aw: Any) -> Any:
    return await aw


async def _async_with(cm: Any) -> None:
    async with cm:
        pass


def consume(target: Target, result: Any, ctx: Ctx, await_timeout: float, obj: Any) -> None:
    """Finish what the call started: use what a constructor made (``DRIVE``), call what a
    decorator returned, await a coroutine, enter a checkout, list a generator."""
    _cleanup(result, ctx)
    if target.kind == "new" and target.owner in DRIVE:
        DRIVE[target.owner](result)
        return
    if target.id == "SignalBus.subscribe":
        _drive_subscription(obj, result)
        return
    if target.id in DECORATORS:
        result = DECORATORS[target.id](result)
        if inspect.iscoroutine(result):  # an async function was decorated
            run_async(result, await_timeout)
        return
    if inspect.iscoroutine(result) and (
        target.name.endswith("_async") or target.name[:3] == "__a" or target.id in AWAITS
    ):
        run_async(result, await_timeout)
    elif type(result).__name__ == "AsyncCheckout":
        run_async(_async_with(result), await_timeout)
    elif isinstance(result, native.PoolCheckout):
        with result:
            pass
    elif isinstance(result, native.Lease):
        result.release()
    elif inspect.isgenerator(result) and target.id in GENERATORS:
        list(itertools.islice(result, 1000))


def make_object(owner: str, variant: str, ctx: Ctx) -> Any:
    return OBJECTS[owner][variant](ctx)


def invoke(target: Target, case: Case, ctx: Ctx, obj: Any, await_timeout: float) -> None:
    """Make the call (and consume its result); raises what it raises."""
    replace = dict(case.replace)
    if target.kind == "property":
        if "<set>" in replace:
            setattr(obj, target.name, ALL_HOSTILE[replace["<set>"]].make(ctx))
        elif "<del>" in replace:
            delattr(obj, target.name)
        else:
            getattr(obj, target.name)
        return
    sp = SPECIAL.get(target.id)
    if sp and sp.setup:
        sp.setup(obj, ctx)
    args, kwargs = build_call(target, case, ctx, obj)
    if target.kind == "new":
        fn: Any = _class(target.owner)
    elif target.kind == "function":
        fn = _function(target.name)
    elif target.kind == "classmethod":
        fn = getattr(type(obj), target.name)
    else:
        fn = getattr(obj, target.name)
    result = fn(*args, **kwargs)
    consume(target, result, ctx, await_timeout, obj)


# Public submodules with module-level functions (their ids are ferrule.<name> too).
def _function(name: str) -> Any:
    return getattr(ferrule, name, None) or getattr(native, name, None) or _submodule_function(name)


def _class(owner: str) -> type:
    for module in (ferrule, native):
        cls = getattr(module, owner, None)
        if isinstance(cls, type):
            return cls
    from ferrule import metrics

    if hasattr(metrics, owner):
        return getattr(metrics, owner)  # type: ignore[no-any-return]
    return getattr(importlib.import_module(REDIS_MODULE), owner)  # type: ignore[no-any-return]


def run_case(case: Case, api: dict[str, Target], await_timeout: float = AWAIT_TIMEOUT):
    """Run one case; returns ``(problems, notes, outcome)``: the failures found (kind,
    detail) and what happened (for ``--case``)."""
    global _current
    target = api[case.target]
    ctx = Ctx(case.id)
    _current = ctx
    try:
        problems, outcome = _call_and_judge(target, case, ctx, await_timeout)
        _finish_case(ctx, case)  # clean-ups may run hostile code too: judged below
    finally:
        _current = None
    problems += [p for p in ctx.problems if p not in problems]
    return problems, ctx.notes, outcome


def _call_and_judge(
    target: Target, case: Case, ctx: Ctx, await_timeout: float
) -> tuple[list[tuple[str, str]], str]:
    """Build the object, make the call, judge it, probe the object."""
    try:
        obj = None
        if target.kind in ("method", "property", "classmethod"):
            obj = make_object(target.owner, case.variant, ctx)
        ctx.obj = obj
    except BaseException as exc:
        return [("harness", f"cannot build the object: {_qualname(exc)}: {_msg(exc)}")], ""
    exc_seen: BaseException | None = None
    outcome = "returned"
    try:
        invoke(target, case, ctx, obj, await_timeout)
    except BaseException as exc:
        exc_seen = exc
        outcome = f"raised {_qualname(exc)}: {_msg(exc)}"
    also = ALLOWED_FOR.get(target.name, ())
    for p, _ in case.replace:
        also += ALLOWED_FOR.get(p, ())
    problems = []
    bad = verdict(ctx, exc_seen, also=also)
    if bad:
        problems.append(bad)
    mine = [e for t, e in ctx.raised if t == threading.get_ident()]
    if exc_seen is not None and mine and not any(exc_seen is e for e in mine):
        ctx.notes.append(f"hostile {_name(mine[0])} replaced by {_name(exc_seen)}")
    unnamed = _unnamed_argument(target, case, exc_seen, mine)
    if unnamed:
        ctx.notes.append(unnamed)
    baseline = not case.replace and case.variant == default_variant(target)
    expected = (ferrule.FerruleError, StopIteration, StopAsyncIteration)
    if baseline and exc_seen is not None and not bad and not isinstance(exc_seen, expected):
        problems.append(("harness", f"the baseline call raised: {outcome}"))
    exc_seen = None
    probe = PROBES.get(type(obj).__name__) if obj is not None else None
    if probe is not None:
        before = len(ctx.raised)
        try:
            probe(obj)
        except BaseException as exc:
            if not any(exc is e for _, e in ctx.raised):  # a stored hostile may raise
                kind, detail = verdict(ctx, exc) or ("broken", f"{_qualname(exc)}: {_msg(exc)}")
                problems.append((kind, f"after the call, the object fails: {detail}"))
        else:  # a callback the call stored may have run (and raised) in the probe
            me = threading.get_ident()
            late = [
                e
                for t, e in ctx.raised[before:]
                if t == me
                and not isinstance(e, Exception)
                and not any(e is r for r in ctx.reported)
            ]
            if late:
                problems.append(
                    ("swallowed", f"{_name(late[0])} from a stored callback did not propagate")
                )
    return problems, outcome


def _finish_case(ctx: Ctx, case: Case) -> None:
    """Clean up (with the object still there for re-entrant hostiles), release what was
    held, drop the object; collect garbage if the case made a cycle."""
    for fn in reversed(ctx.cleanups):
        with contextlib.suppress(BaseException):
            fn()
    ctx.keep.clear()
    ctx.obj = None
    if any(ALL_HOSTILE[h].collect for _, h in case.replace if h in ALL_HOSTILE):
        gc.collect(1)  # the cycle is young: no need to scan the whole heap


# CPython's own wording (calling a hostile callable, hashing a key, ...): not ferrule's.
_PYTHON_WORDING = re.compile(
    r"required positional argument|object is not (callable|iterable)|unhashable type|"
    r"timestamp out of range|argument must be"
)


def _is_native(target: Target) -> bool:
    if target.kind == "function":
        return hasattr(native, target.name)
    return isinstance(getattr(native, target.owner, None), type)


def _unnamed_argument(
    target: Target, case: Case, exc: BaseException | None, mine: list[BaseException]
) -> str | None:
    """The house rule: an invalid argument raises TypeError/ValueError/OverflowError with
    a message naming it. A note (not a failure) when a one-argument case breaks it."""
    if len(case.replace) != 1 or exc is None or mine or not _is_native(target):
        return None
    param = case.replace[0][0]
    if param.startswith("<") or not isinstance(exc, (TypeError, ValueError, OverflowError)):
        return None
    if param in _msg(exc) or _PYTHON_WORDING.search(_msg(exc)):
        return None
    return f"unnamed-argument {target.id}({param}): {_name(exc)}: {_msg(exc)[:100]}"


def cases_for(target: Target, hostiles: list[Hostile], shapes: bool = True) -> Iterator[Case]:
    """The sweep's cases for one target, deterministic."""
    tid = target.id
    variant = default_variant(target)
    if target.kind == "property":
        yield Case(tid, variant)
        for h in ("none", "str_1mb", "reenter"):
            yield Case(tid, variant, (("<set>", h),))
        yield Case(tid, variant, (("<del>", "none"),))
        return
    yield Case(tid, variant)
    if shapes:
        yield Case(tid, variant, (("<none>", "none"),))
        yield Case(tid, variant, (("<extra>", "object"),))
        yield Case(tid, variant, (("<kw>", "object"),))
    for p in target.params:
        for h in hostiles + EXTRA.get(p.name, []):
            yield Case(tid, variant, ((p.name, h.name),))
    wait_variant = WAITS.get(tid)
    if wait_variant and tid not in BLOCKS_FOREVER:
        yield Case(tid, wait_variant)
        for p in target.params:
            if p.name not in wait_params(tid):
                continue
            for h in hostiles + EXTRA.get(p.name, []):
                if not waits_long(h):
                    yield Case(tid, wait_variant, ((p.name, h.name),))


def waits_long(h: Hostile) -> bool:
    return h.seconds is not None and h.seconds > WAIT_LONG


# Each case of a Redis class costs a few round trips to the server: the bounded sweep gives
# them a small share, one hostile value of every group (two of "base") instead of all core ones
# (plus each parameter's EXTRA; the randomized run and the threads draw from all of them).
REDIS_OWNERS = {
    "RedisRateLimiter", "RedisRegistry", "RedisAgent", "RedisInvalidation", "InvalidatingCache",
    "KeyCodec", "RedisCircuitBreaker", "RedisBreakerStats",
}  # fmt: skip
REDIS_SWEEP = [
    "object", "none", "nan", "int_2_64", "true", "str_1mb", "str_surrogate", "str_hostile",
    "raise_hash", "raise_iter_ki", "call_raises", "call_ki", "eq_always", "reenter", "cycle",
    "dict_raising",
]  # fmt: skip


def sweep_cases(api: dict[str, Target]) -> list[Case]:
    core = [h for h in HOSTILE if h.core]
    redis_core = [ALL_HOSTILE[n] for n in REDIS_SWEEP]
    cases = (
        c
        for tid in sorted(api)
        for c in cases_for(api[tid], redis_core if api[tid].owner in REDIS_OWNERS else core)
    )
    return [c for c in cases if not known_reason(c, NOT_APPLICABLE)]


def random_case(api: dict[str, Target], seed: int, i: int) -> Case:
    """Case ``i`` of the randomized run with ``seed`` (each reproducible on its own)."""
    rng = random.Random(f"{seed}:{i}")
    target = api[rng.choice(sorted(api))]
    variant = default_variant(target)
    if target.kind == "property":
        return Case(target.id, variant, (("<set>", rng.choice(HOSTILE).name),))
    wait_variant = WAITS.get(target.id)
    waiting = wait_variant is not None and target.id not in BLOCKS_FOREVER and rng.random() < 0.2
    params = [p for p in target.params if not waiting or p.name in wait_params(target.id)]
    if waiting:
        variant = wait_variant  # type: ignore[assignment]
    if not params:
        return Case(target.id, variant)
    replace = []
    for p in rng.sample(params, k=min(len(params), rng.choice((1, 1, 1, 2, 3)))):
        pool = HOSTILE + EXTRA.get(p.name, []) * 3
        choices = [h for h in pool if not (waiting and waits_long(h))]
        replace.append((p.name, rng.choice(choices).name))
    # A long timeout is only safe alone: another hostile (a million items) may make the
    # call wait for real.
    long = [(p, h) for p, h in replace if p == "timeout" and waits_long(ALL_HOSTILE[h])]
    if long and len(replace) > 1:
        replace = long
    case = Case(target.id, variant, tuple(sorted(replace)))
    return Case(target.id, variant) if known_reason(case, NOT_APPLICABLE) else case


# ---------------------------------------------------------------------------------------
# The threaded phase
# ---------------------------------------------------------------------------------------

# Calls never made on the shared objects: lifecycle calls that would end the phase for
# everyone, calls that block without a timeout, and internals whose arguments must come
# from a previous call on the same object.
THREAD_SKIP = {
    "close", "shutdown", "stop", "start", "cancel", "__exit__", "__aexit__", "__enter__",
    "__aenter__", "__next__", "__iter__", "_resume", "_give_up", "_checkout_async", "_finish",
    "_record", "_add_waker", "_remove_waker", "_forget_getter", "_forget_putter",
    "_forget_joiner", "join", "join_async",
}  # fmt: skip
# Constructors and functions never called there: they would start workers that block.
THREAD_SKIP_CALLS = {"ferrule._run_worker", "ferrule._run_subscription"}
THREAD_CLASSES = [
    "Cache", "RateLimiter", "Registry", "WorkQueue", "SignalBus", "Subscription",
    "CircuitBreaker", "Metrics", "ErrorStore", "ResourceManager", "Pool", "TaskPool",
    "cached_wrapper",
]  # fmt: skip
# With a server (``redis_url``), these join them.
REDIS_THREAD_CLASSES = [
    "RedisRateLimiter", "RedisRegistry", "InvalidatingCache", "RedisCircuitBreaker",
]  # fmt: skip
# Parameters that take a container: in the threaded phase half their hostile values are
# the containers the mutator thread keeps resizing.
CONTAINER_PARAMS = {
    "capabilities", "metadata", "items", "where", "limits", "data", "value", "item", "key",
    "args", "iterables", "error", "default", "expected", "retry_on",
}  # fmt: skip
_MUT_LIST: list[Any] = []
_MUT_DICT: dict[str, Any] = {}
# Used in the threaded phase only: the containers another thread keeps resizing, at the
# top level of an argument and nested in one (ferrule copies the top level of some).
MUTATING = [
    Hostile("mut_list", "mutating", lambda ctx: _MUT_LIST),
    Hostile("mut_dict", "mutating", lambda ctx: _MUT_DICT),
    Hostile("mut_nested", "mutating", lambda ctx: {"m": _MUT_DICT, "l": _MUT_LIST}),
    Hostile("mut_where", "mutating", lambda ctx: [("m", "eq", _MUT_DICT), ("l", "in", _MUT_LIST)]),
    Hostile(
        "mut_items", "mutating", lambda ctx: [{"agent_id": "mi", "metadata": {"m": _MUT_DICT}}]
    ),
]
ALL_HOSTILE.update({h.name: h for h in MUTATING})


def _mutator(stop: threading.Event) -> None:
    """Keeps resizing the shared containers the threads pass as arguments."""
    i = 0
    while not stop.is_set():
        for _ in range(64):
            i += 1
            _MUT_LIST.append(f"m{i}")
            _MUT_DICT[f"m{i}"] = i
        _MUT_LIST.clear()
        _MUT_DICT.clear()


def thread_phase(
    api: dict[str, Target], seconds: float, n_threads: int, seed: int, emit, run_known=False
) -> int:
    """Random valid and hostile calls on shared objects from ``n_threads`` threads for
    ``seconds``; returns how many calls were made. Failures go to ``emit``. Half the
    threads make any call; the other half only calls taking a container argument, passing
    one that the mutator thread keeps resizing."""
    global _current
    holder = Ctx("threads")
    _current = holder
    classes = THREAD_CLASSES + (REDIS_THREAD_CLASSES if redis_url() else [])
    objects = {name: OBJECTS[name]["ready"](holder) for name in classes}
    # The shared subscription listens on the shared bus.
    objects["Subscription"] = objects["SignalBus"].subscribe("a.#", maxsize=64)
    holder.cleanups.append(objects["Subscription"].cancel)
    targets = {
        name: [
            t
            for t in api.values()
            if t.owner == name and t.kind == "method" and t.name not in THREAD_SKIP
        ]
        for name in classes
    }
    hostiles = [h for h in HOSTILE if not waits_long(h)]
    # Every call that takes a container, constructors included (of any class).
    with_containers = [
        (name, t, p)
        for name in classes
        for t in targets[name]
        for p in t.params
        if p.name in CONTAINER_PARAMS
    ] + [
        (t.owner, t, p)
        for t in api.values()
        if t.kind in ("new", "function") and t.id not in THREAD_SKIP_CALLS
        for p in t.params
        if p.name in CONTAINER_PARAMS
    ]
    deadline = time.monotonic() + seconds
    counts = [0] * n_threads
    stop = threading.Event()

    def pick(rng: random.Random, k: int) -> tuple[str, Target, tuple[tuple[str, str], ...]]:
        if k % 2:  # containers that change under ferrule's feet
            name, target, p = rng.choice(with_containers)
            return name, target, ((p.name, rng.choice(MUTATING).name),)
        name = rng.choice(classes)
        target = rng.choice(targets[name])
        if not target.params or rng.random() < 0.5:
            return name, target, ()
        p = rng.choice(target.params)
        return name, target, ((p.name, rng.choice(hostiles + EXTRA.get(p.name, [])).name),)

    def worker(k: int) -> None:
        rng = random.Random(f"{seed}:thread:{k}")
        tag = f"@@T{k} "
        while time.monotonic() < deadline:
            name, target, replace = pick(rng, k)
            case = Case(target.id, "ready", replace)
            if known_reason(case, NOT_APPLICABLE) or (not run_known and known_reason(case)):
                continue
            os.write(1, (tag + case.id + "\n").encode())
            ctx = Ctx(case.id)
            ctx.obj = objects.get(name)
            ctx.overrides["timeout"] = 0.005
            exc_seen = None
            try:
                invoke(target, case, ctx, ctx.obj, 0.1)
            except BaseException as exc:
                exc_seen = exc
            finally:
                for fn in reversed(ctx.cleanups):
                    with contextlib.suppress(BaseException):
                        fn()
            bad = verdict(ctx, exc_seen, also=ALLOWED_FOR.get(target.name, ()))
            for kind, detail in [*ctx.problems, *([bad] if bad else [])]:
                emit("FAIL", {"case": case.id, "kind": kind, "detail": detail, "phase": "threads"})
            counts[k] += 1

    mutator = threading.Thread(target=_mutator, args=(stop,), daemon=True)
    mutator.start()
    workers = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    mutator.join()
    for name, obj in objects.items():
        probe = PROBES.get(type(obj).__name__)
        if probe is None:
            continue
        try:
            try:
                probe(obj)
            except BaseException as exc:
                # A hostile key some thread stored (one whose __eq__ raises and that hashes
                # like the probe's key) may still be there, as it would be in a dict: its
                # own exception, unchanged, is allowed. Empty the object and probe again.
                if not getattr(exc, "fuzz_hostile", False) or not hasattr(obj, "clear"):
                    raise
                obj.clear()
                probe(obj)
        except BaseException as exc:
            bad = verdict(holder, exc) or ("invariant", str(exc))
            emit("FAIL", {"case": f"{name} after the threads", "kind": bad[0], "detail": bad[1]})
    for kind, detail in holder.problems:
        emit("FAIL", {"case": "threads", "kind": kind, "detail": detail, "phase": "threads"})
    for fn in reversed(holder.cleanups):
        with contextlib.suppress(BaseException):
            fn()
    _current = None
    return sum(counts)


# ---------------------------------------------------------------------------------------
# The child process: runs cases, logging each before it starts
# ---------------------------------------------------------------------------------------


def _emit(tag: str, payload: dict[str, Any]) -> None:
    os.write(1, f"@@{tag} {json.dumps(payload)}\n".encode())


def child_main(opts: argparse.Namespace) -> int:
    with contextlib.suppress(ValueError, OSError):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    faulthandler.enable(all_threads=True)
    _hooks()
    api = enumerate_api()
    if opts.mode == "threads":
        faulthandler.dump_traceback_later(opts.seconds + 60, exit=True)
        n = thread_phase(api, opts.seconds, opts.threads, opts.seed, _emit, opts.run_known)
        faulthandler.cancel_dump_traceback_later()
        _emit("END", {"cases": n})
        return 0
    cases = sweep_cases(api) if opts.mode == "sweep" else None
    if opts.mode == "cases":
        cases = [Case.parse(line) for line in Path(opts.cases_file).read_text().splitlines()]
    deadline = time.time() + opts.seconds if opts.seconds else None
    i = opts.start
    ran = 0
    while True:
        if cases is not None and i >= len(cases):
            break
        if deadline is not None and time.time() >= deadline:
            break
        case = cases[i] if cases is not None else random_case(api, opts.seed, i)
        _emit("CASE", {"i": i, "id": case.id})
        reason = None if opts.run_known else known_reason(case)
        if reason:
            _emit("SKIP", {"i": i, "id": case.id, "reason": reason})
            i += 1
            continue
        faulthandler.dump_traceback_later(opts.call_timeout, exit=True)
        problems, notes, _ = run_case(case, api)
        faulthandler.cancel_dump_traceback_later()
        for kind, detail in problems:
            _emit("FAIL", {"i": i, "case": case.id, "kind": kind, "detail": detail})
        for note in sorted(set(notes))[:3]:
            _emit("NOTE", {"i": i, "case": case.id, "note": note})
        ran += 1
        i += 1
    _emit("END", {"next": i, "ran": ran})
    return 0


# ---------------------------------------------------------------------------------------
# The parent: supervises children, collects and reports failures
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    cases: int = 0
    restarts: int = 0
    redis: str | None = None  # why ferrule.redis was not fuzzed, or None (it was)

    def distinct(self) -> list[dict[str, Any]]:
        """One failure per (call, kind, message with numbers masked)."""
        seen: dict[tuple[str, str, str], dict[str, Any]] = {}
        for f in self.failures:
            call = f["case"].split("[", 1)[0]
            msg = re.sub(r"0x[0-9a-f]+|\d+", "N", f["detail"])[:120]
            key = (call, f["kind"], msg)
            if key not in seen:
                seen[key] = {**f, "count": 0, "cases": []}
            seen[key]["count"] += 1
            if len(seen[key]["cases"]) < 3:
                seen[key]["cases"].append(f["case"])
        return list(seen.values())

    def text(self) -> str:
        lines = [
            f"{self.cases} cases, {len(self.failures)} failing, "
            f"{len(self.skipped)} skipped as KNOWN, {self.restarts} child restarts"
        ]
        if self.redis:
            lines.append(self.redis)
        by_owner: dict[str, list[dict[str, Any]]] = {}
        for f in self.distinct():
            by_owner.setdefault(f["case"].split(".", 1)[0], []).append(f)
        for owner in sorted(by_owner):
            lines.append(f"== {owner}")
            for f in by_owner[owner]:
                lines.append(f"  [{f['kind']}] {f['detail']}  (x{f['count']})")
                if f.get("phase") == "threads":
                    lines.append(f"      in the threaded phase: {f['cases'][0]}")
                    continue
                for c in f["cases"]:
                    lines.append(f"      python tests/fuzz_api.py --case '{c}'")
        return "\n".join(lines)


def _child(
    python: str, args: list[str], timeout: float, redis: str | None = None
) -> tuple[int | None, str]:
    with tempfile.TemporaryFile() as log:
        cmd = [python, "-X", "faulthandler", str(Path(__file__).resolve()), "--child", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RUST_BACKTRACE": "0"}
        env.pop(REDIS_ENV, None)
        if redis:
            env[REDIS_ENV] = redis
        try:
            proc = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, env=env, check=False
            )
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
        log.seek(0)
        return code, log.read().decode("utf-8", "replace")


def _parse(text: str, report: Report, phase: str) -> tuple[dict[str, Any] | None, bool, str]:
    """Reads one child's log into ``report``; returns (last case started, ended, tail)."""
    last: dict[str, Any] | None = None
    ended = False
    tail: list[str] = []
    panics: set[str] = set()  # cases with a PanicException caught in the child
    texts: dict[str, str] = {}  # case -> the first panic text printed during it
    thread_last: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("@@CASE "):
            last = json.loads(line[7:])
            report.cases += 1
            tail = []
        elif line.startswith("@@FAIL "):
            f = json.loads(line[7:])
            f.setdefault("phase", phase)
            report.failures.append(f)
            if f["kind"] == "panic":
                panics.add(f["case"])
        elif line.startswith("@@SKIP "):
            s = json.loads(line[7:])
            report.skipped[s["id"]] = s["reason"]
        elif line.startswith("@@NOTE "):
            n = json.loads(line[7:])
            report.notes.setdefault(n["note"], n["case"])
        elif line.startswith("@@END "):
            ended = True
            report.cases += json.loads(line[6:]).get("cases", 0)
        elif line.startswith("@@T"):
            k, _, cid = line[3:].partition(" ")
            thread_last[k] = cid
        else:
            tail.append(line)
            where = last["id"] if last else "threads"
            if PANIC_TEXT.search(line):
                texts.setdefault(where, line.strip()[:300])
    if phase == "threads" and panics:  # the threads' own reports name their calls
        texts.pop("threads", None)
    for where, line in texts.items():
        if where not in panics:
            report.failures.append({"case": where, "kind": "panic", "detail": line, "phase": phase})
    if thread_last:
        tail.append("last call of each thread: " + "; ".join(sorted(thread_last.values())))
    return last, ended, "\n".join(tail[-25:])


@contextlib.contextmanager
def redis_for_children(wanted: bool = True) -> Iterator[tuple[str | None, str | None]]:
    """``(url, None)`` of a Redis server for the children, or ``(None, why not)``: the
    server ``FERRULE_FUZZ_REDIS`` names if set, else a throwaway redis-server
    (tests/redis_server.py) started here and stopped on leaving."""
    if not wanted:
        yield None, f"{REDIS_MODULE} excluded: not asked for"
        return
    if redis_url():
        yield redis_url(), None
        return
    from tests import redis_server

    reason = redis_server.skip_reason()
    if reason:
        yield None, f"{REDIS_MODULE} excluded: no Redis server ({reason})"
        return
    server = redis_server.RedisServer()
    try:
        server.start()
    except (RuntimeError, OSError) as e:
        server.close()
        yield None, f"{REDIS_MODULE} excluded: redis-server could not start ({e})"
        return
    try:
        yield server.url, None
    finally:
        server.close()


def supervise(
    mode: str = "sweep",
    *,
    seconds: float | None = None,
    seed: int = 0,
    python: str = sys.executable,
    run_known: bool = False,
    threads: int | None = None,
    cases: list[str] | None = None,
    call_timeout: float = CALL_TIMEOUT,
    progress: Callable[[str], None] | None = None,
    redis: bool = True,
) -> Report:
    """Run the fuzz in children, restarting after each death; returns the report.
    ``mode``: "sweep" (every case once), "random" (``seconds`` of random cases),
    "threads" (``seconds`` of the threaded phase) or "cases" (the case ids ``cases``).
    With ``redis`` the children also fuzz ``ferrule.redis`` against a server (see
    ``redis_for_children``) when one can be had; ``Report.redis`` says why not."""
    with redis_for_children(redis) as (url, why_not):
        report = _supervise_modes(
            mode, seconds, seed, python, run_known, threads, cases, call_timeout, progress, url
        )
    report.redis = why_not
    return report


def _supervise_modes(
    mode: str,
    seconds: float | None,
    seed: int,
    python: str,
    run_known: bool,
    threads: int | None,
    cases: list[str] | None,
    call_timeout: float,
    progress: Callable[[str], None] | None,
    redis: str | None,
) -> Report:
    if mode == "cases":
        with tempfile.NamedTemporaryFile("w", suffix=".cases", delete=False) as f:
            f.write("\n".join(cases or []))
        try:
            return _supervise(mode, seconds, seed, python, run_known, threads, call_timeout,
                              progress, ["--cases-file", f.name], redis)  # fmt: skip
        finally:
            os.unlink(f.name)
    return _supervise(
        mode, seconds, seed, python, run_known, threads, call_timeout, progress, [], redis
    )


def _supervise(
    mode: str,
    seconds: float | None,
    seed: int,
    python: str,
    run_known: bool,
    threads: int | None,
    call_timeout: float,
    progress: Callable[[str], None] | None,
    extra: list[str],
    redis: str | None,
) -> Report:
    report = Report()
    say = progress or (lambda s: None)
    if threads is None:
        threads = 8 if not getattr(sys, "_is_gil_enabled", lambda: True)() else 4
    if mode == "threads":
        secs = seconds or 5.0
        args = ["--mode", "threads", "--seconds", str(secs), "--seed", str(seed)]
        if run_known:
            args.append("--run-known")
        code, text = _child(python, [*args, "--threads", str(threads)], secs + 120, redis)
        _, ended, tail = _parse(text, report, "threads")
        if not ended:
            report.failures.append(_death("threads", code, tail, "threads"))
        return report
    deadline = time.time() + seconds if seconds else None
    start = 0
    while True:
        args = ["--mode", mode, "--start", str(start), "--seed", str(seed), *extra]
        args += ["--call-timeout", str(call_timeout)]
        if deadline is not None:
            args += ["--seconds", str(max(1.0, deadline - time.time()))]
        if run_known:
            args.append("--run-known")
        code, text = _child(python, args, (seconds or 1800) + 300, redis)
        last, ended, tail = _parse(text, report, mode)
        if ended:
            break
        if last is None:
            raise RuntimeError(f"the fuzz child died before its first case:\n{tail}")
        report.failures.append(_death(last["id"], code, tail, mode, call_timeout))
        report.restarts += 1
        say(f"child died at case {last['i']} ({last['id']}): restarting after it")
        start = last["i"] + 1
        if deadline is not None and time.time() >= deadline:
            break
    return report


def still_failing(reports: list[Report]) -> set[tuple[str, ...]]:
    """The KNOWN entries that some failure in ``reports`` matches (after --run-known)."""
    hit = set()
    for report in reports:
        for f in report.failures:
            with contextlib.suppress(ValueError):
                case = Case.parse(f["case"])
                hit |= {key for key in KNOWN if known_reason(case, {key: "hit"})}
    return hit


def _death(
    case: str, code: int | None, tail: str, phase: str, limit: float = CALL_TIMEOUT
) -> dict[str, Any]:
    if code is None:
        kind, how = "hang", "the child hung (global timeout)"
    elif "Timeout (" in tail:
        kind, how = "hang", f"no return within {limit:g} s (watchdog)"
    elif code < 0:
        kind, how = "crash", f"killed by signal {-code}"
    else:
        kind, how = "crash", f"the process exited with status {code}"
    return {"case": case, "kind": kind, "detail": f"{how}; output:\n{tail}", "phase": phase}


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=None, help="randomized run of this length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="threads of the threaded phase")
    ap.add_argument("--thread-seconds", type=float, default=5.0)
    ap.add_argument("--run-known", action="store_true", help="also run the KNOWN cases")
    ap.add_argument("--case", help="run one case here and print what happened")
    ap.add_argument("--list", action="store_true", help="print the enumerated API")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="sweep", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--cases-file", help=argparse.SUPPRESS)
    ap.add_argument("--call-timeout", type=float, default=CALL_TIMEOUT, help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.child:
        opts.seconds = opts.seconds or 0.0
        opts.threads = opts.threads or 4
        return child_main(opts)
    if opts.list:
        api = enumerate_api(with_redis=True)
        for tid in sorted(api):
            t = api[tid]
            ps = ", ".join(f"{p.name}{'' if p.required else '?'}:{p.kind}" for p in t.params)
            gap = missing_baselines(t)
            missing = f"  MISSING {gap}" if gap else ""
            print(f"{tid:45} {t.kind:11} {t.source:7} ({ps}){missing}")
        return 0
    if opts.case:
        _hooks()
        case = Case.parse(opts.case)
        with redis_for_children(case.target.split(".")[0] in REDIS_OWNERS) as (url, _):
            if url:
                os.environ[REDIS_ENV] = url
            problems, notes, outcome = run_case(case, enumerate_api())
        print(f"{case.id}\n  {outcome}")
        for kind, detail in problems:
            print(f"  FAIL [{kind}] {detail}")
        for note in notes:
            print(f"  note: {note}")
        return 1 if problems else 0
    t0 = time.time()
    mode = "random" if opts.seconds else "sweep"
    report = supervise(
        mode, seconds=opts.seconds, seed=opts.seed, run_known=opts.run_known, progress=print
    )
    print(f"[{mode}] {time.time() - t0:.0f} s")
    tseconds = opts.thread_seconds if not opts.seconds else max(5.0, opts.seconds / 10)
    treport = supervise(
        "threads", seconds=tseconds, seed=opts.seed, threads=opts.threads, run_known=opts.run_known
    )
    print(report.text())
    print(f"[threads] {treport.text()}")
    if opts.run_known:
        fixed = [key for key in KNOWN if key not in still_failing([report, treport])]
        print(
            f"KNOWN entries that did not fail in this run ({len(fixed)}; remove once fixed; "
            "those marked 3.13t fail only on a free-threaded build):"
        )
        for key in fixed:
            print(f"  {key}: {KNOWN[key]}")
    for note, case in sorted(report.notes.items())[:40]:
        print(f"note: {note}  ({case})")
    return 1 if report.failures or treport.failures else 0


# ---- ferrule.redis.RedisBus and its codecs ------------------------------------------------
# Appended here (the tables above are read only when cases run). A bus is closed by the
# case's cleanups; each has its own key prefix, as every Redis object of the fuzz.


def _redis_bus(ctx: Ctx, mode: str = "broadcast") -> Any:
    from ferrule.redis import RedisBus

    bus = RedisBus(redis_client(), prefix=redis_prefix(), mode=mode, backoff=0.01, max_backoff=0.1)
    ctx.cleanups.append(bus.close)
    return bus


def _drive_redis_bus(bus: Any) -> None:
    try:
        sub = bus.subscribe("d.#", maxsize=4)
        bus.publish("d.x", {"n": 1})
        sub.get(timeout=5.0)
    finally:
        bus.close()


def _probe_redis_bus(bus: Any) -> None:
    if bus.closed:
        return
    sub = bus.subscribe("probe.#", maxsize=4)
    try:
        _check(bus.publish("probe.x", 1) >= 1, "the bus's own subscription did not take it")
        _check(sub.get(timeout=5.0).data == 1, "probe signal lost")
    finally:
        sub.cancel()


def _pickle_of_1(ctx: Ctx, obj: Any) -> bytes:
    import pickle

    return pickle.dumps(1)


OBJECTS.update(
    {
        "RedisBus": {"ready": _redis_bus, "stream": lambda ctx: _redis_bus(ctx, "stream")},
        "Codec": {"ready": lambda ctx: importlib.import_module("ferrule.redis").JsonCodec()},
        "JsonCodec": {"ready": lambda ctx: importlib.import_module("ferrule.redis").JsonCodec()},
        "PickleCodec": {
            "ready": lambda ctx: importlib.import_module("ferrule.redis").PickleCodec()
        },
    }
)
NO_CONSTRUCTOR["Codec"] = "a typing.Protocol: calling it raises TypeError by design"
SPECIAL.update(
    {
        "RedisBus.__new__": Special(
            {
                "prefix": Fresh(lambda ctx, obj: redis_prefix()),
                "backoff": 0.01,
                "max_backoff": 0.1,
                "timeout": 5.0,
            }
        ),
        "RedisBus.subscribe": Special({"maxsize": 8}),
        "RedisBus.__exit__": Special(setup=_enter),
        "Codec.encode": Special({"obj": 1}),
        "Codec.decode": Special({"data": b"1"}),
        "JsonCodec.encode": Special({"obj": 1}),
        "JsonCodec.decode": Special({"data": b"1"}),
        "PickleCodec.encode": Special({"obj": 1}),
        "PickleCodec.decode": Special({"data": Fresh(_pickle_of_1)}),
    }
)
REENTER["RedisBus"] = [lambda b: b.publish("a.r", 1), lambda b: b.prefix]
PROBES["RedisBus"] = _probe_redis_bus
DRIVE["RedisBus"] = _drive_redis_bus
REDIS_OWNERS |= {"RedisBus", "Codec", "JsonCodec", "PickleCodec"}

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
