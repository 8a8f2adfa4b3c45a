"""ferrule's exception classes: each is made from one row of the table in src/errors.rs.

The test walks every exception class the native module has (the table is the only place
one is made) and checks its name, bases, module and docstring against the contract and
against the stubs in ``_native.pyi``.
"""

from __future__ import annotations

import ast
import builtins
import pickle
import queue
import traceback
from pathlib import Path
from typing import Any

import ferrule
import ferrule._native as native
import pytest

# The contract: each class's bases, in order (DESIGN.md, "Exceptions").
BASES: dict[str, tuple[type, ...]] = {
    "FerruleError": (Exception,),
    "AlreadyRegistered": (ferrule.FerruleError, KeyError),
    "QueueFull": (ferrule.FerruleError, queue.Full),
    "QueueEmpty": (ferrule.FerruleError, queue.Empty),
    # queue.ShutDown where Python has it (3.13+), as queue.Queue.shutdown raises it.
    "QueueClosed": (
        ferrule.FerruleError,
        *([queue.ShutDown] if hasattr(queue, "ShutDown") else []),
    ),
    "CircuitOpen": (ferrule.FerruleError,),
    "PoolTimeout": (ferrule.FerruleError, TimeoutError),
    "Discard": (ferrule.FerruleError,),
    "BackendError": (ferrule.FerruleError, ConnectionError),
    "RateLimited": (ferrule.FerruleError,),
}


def native_exceptions() -> dict[str, type[BaseException]]:
    return {
        name: obj
        for name, obj in vars(native).items()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    }


def stub_exceptions() -> dict[str, ast.ClassDef]:
    """The stub's classes that derive from an exception class (by name)."""
    tree = ast.parse(Path(ferrule.__file__).with_name("_native.pyi").read_text())
    classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}

    def is_exception(c: ast.ClassDef) -> bool:
        for b in c.bases:
            if not isinstance(b, ast.Name):
                continue
            if b.id in classes:
                if is_exception(classes[b.id]):
                    return True
                continue
            builtin = getattr(builtins, b.id, None)
            if isinstance(builtin, type) and issubclass(builtin, BaseException):
                return True
        return False

    return {name: c for name, c in classes.items() if is_exception(c)}


EXCEPTIONS = native_exceptions()


def test_the_table_makes_exactly_the_contracted_classes() -> None:
    assert set(EXCEPTIONS) == set(BASES)
    assert set(stub_exceptions()) == set(BASES)


@pytest.mark.parametrize("name", sorted(BASES))
def test_class_matches_its_row_and_stub(name: str) -> None:
    cls = EXCEPTIONS[name]
    assert cls.__name__ == cls.__qualname__ == name
    assert cls.__module__ == "ferrule"
    assert cls.__bases__ == BASES[name]
    assert getattr(ferrule, name) is cls and name in ferrule.__all__

    stub = stub_exceptions()[name]
    doc = ast.get_docstring(stub)
    assert doc is not None and cls.__doc__ is not None
    assert cls.__doc__.splitlines()[0] == doc.splitlines()[0]
    # The stub never promises a base the class lacks.
    for base in stub.bases:
        assert isinstance(base, ast.Name)
        promised = EXCEPTIONS.get(base.id) or getattr(builtins, base.id)
        assert issubclass(cls, promised), (name, base.id)


@pytest.mark.parametrize("name", sorted(BASES))
def test_instances_carry_their_message_and_pickle_by_reference(name: str) -> None:
    cls = EXCEPTIONS[name]
    exc = cls("boom")
    assert exc.args == ("boom",)
    assert isinstance(exc, ferrule.FerruleError)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls and back.args == ("boom",)


def test_registry_errors_map_through_the_table() -> None:
    reg = ferrule.Registry()
    reg.register("a")
    with pytest.raises(ferrule.AlreadyRegistered) as taken:
        reg.register("a")
    assert taken.value.args == ("agent id 'a' is already registered",)
    with pytest.raises(ferrule.AlreadyRegistered) as twice:
        reg.register_many([{"agent_id": "b"}, {"agent_id": "b"}])
    assert twice.value.args == ("agent id 'b' is already registered",)
    with pytest.raises(KeyError) as missing:
        reg.update("nobody", health="degraded")
    assert type(missing.value) is KeyError and missing.value.args == ("nobody",)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ferrule.RateLimiter(1, "1"), "per must be a number of seconds, not 'str'"),
        (lambda: ferrule.RateLimiter(1).try_acquire("k", 1.0), "cost must be an int, not 'float'"),
        (lambda: ferrule.WorkQueue(1, overflow=1), "overflow must be a str, not 'int'"),
        (lambda: ferrule.SignalBus().subscribe("a", weak=1), "weak must be a bool, not 'int'"),
        (
            lambda: ferrule.ErrorStore(max_age=None),
            "max_age must be a number of seconds, not 'NoneType'",
        ),
    ],
)
def test_typed_argument_errors_keep_the_house_message(call: Any, message: str) -> None:
    """An argument converted while PyO3 extracts it (a typed argument, with its default in
    the signature) is refused with ferrule's message, not PyO3's "argument 'x': ..."; the
    error prints as a TypeError and pickles as a plain one."""
    with pytest.raises(TypeError) as info:
        call()
    e = info.value
    assert str(e) == message
    assert (type(e).__module__, type(e).__qualname__) == ("builtins", "TypeError")
    assert traceback.format_exception_only(e) == [f"TypeError: {message}\n"]
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is TypeError and str(back) == message
