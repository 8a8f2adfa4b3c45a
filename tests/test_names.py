"""Public names report the import path users write, and private modules stay private."""

from __future__ import annotations

import pickle

import ferrule
import pytest


@pytest.mark.parametrize("name", [n for n in ferrule.__all__ if n != "__version__"])
def test_public_name_reports_module_ferrule(name: str) -> None:
    obj = getattr(ferrule, name)
    assert obj.__module__ == "ferrule"
    assert getattr(ferrule, obj.__qualname__) is obj


def test_repr_of_a_class_names_the_public_path() -> None:
    assert repr(ferrule.Cache) == "<class 'ferrule.Cache'>"
    assert repr(ferrule.TaskPool) == "<class 'ferrule.TaskPool'>"


def test_pickling_error_names_the_public_path() -> None:
    with pytest.raises(TypeError, match=r"cannot pickle 'ferrule\.Cache' object"):
        pickle.dumps(ferrule.Cache(4))


@pytest.mark.parametrize("name", ["Cache", "TaskPool", "QueueEmpty", "retry"])
def test_classes_and_functions_pickle_by_reference(name: str) -> None:
    obj = getattr(ferrule, name)
    assert pickle.loads(pickle.dumps(obj)) is obj


def test_metrics_module_names() -> None:
    pytest.importorskip("prometheus_client")
    from ferrule import metrics

    for name in metrics.__all__:
        obj = getattr(metrics, name)
        if isinstance(obj, type):
            assert obj.__module__ in {"ferrule", "ferrule.metrics"}, name


def test_otel_module_names() -> None:
    pytest.importorskip("opentelemetry")
    from ferrule import otel

    for name in otel.__all__:
        assert getattr(otel, name).__module__ == "ferrule.otel", name
