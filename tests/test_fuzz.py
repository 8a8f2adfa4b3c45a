"""The bounded bad-input fuzz of the whole public API (the harness is tests/fuzz_api.py).

A fixed, deterministic sweep: every constructor, method and property, with every argument
replaced in turn by each core hostile value, in child processes that the harness restarts
after a crash; then a short phase of random valid and hostile calls from several threads
on shared objects. Cases listed in ``fuzz_api.KNOWN`` (failures found and not fixed yet)
are skipped; everything else must pass. ``make fuzz`` runs the long randomized version.

``ferrule.redis`` takes part against a throwaway redis-server (tests/redis_server.py)
when one is installed, with a small share of the sweep; without one it is left out and
``test_sweep_covers_the_redis_classes`` is skipped, saying so.
"""

from __future__ import annotations

import importlib

import ferrule
import pytest

from tests import fuzz_api as fz
from tests.conftest import STRESS


@pytest.fixture(scope="module")
def api() -> dict[str, fz.Target]:
    """The whole API, ``ferrule.redis`` included (enumerating it needs no server)."""
    return fz.enumerate_api(with_redis=True)


@pytest.fixture(scope="module")
def sweep() -> fz.Report:
    return fz.supervise("sweep")


def test_every_public_callable_is_covered(api: dict[str, fz.Target]) -> None:
    """Guards against a public name the fuzz does not call: a new class, method,
    property or function (in ``ferrule.__all__``, a public submodule's ``__all__`` or the
    stubs) needs a baseline and gets sweep cases, unless ``EXCLUDED`` says why not."""
    gaps = {t.id: fz.missing_baselines(t) for t in api.values() if fz.missing_baselines(t)}
    assert not gaps, f"add baselines (BASELINE/SPECIAL/OBJECTS) for: {gaps}"

    covered = {c.target for c in fz.sweep_cases(api)}
    assert set(api) <= covered, f"no sweep case for {sorted(set(api) - covered)}"

    owners = {t.owner for t in api.values()}
    functions = {t.name for t in api.values() if t.kind == "function"}
    for module, names in fz.public_modules(with_redis=True).items():
        mod = importlib.import_module(module)
        for name in names:
            obj = getattr(mod, name)
            if f"ferrule.{name}" in fz.EXCLUDED:
                continue
            if isinstance(obj, type):
                assert obj.__name__ in owners, f"{module}.{name} is not fuzzed"
            elif callable(obj):  # constants (ferrule.events' topics) take no arguments
                assert name in functions, f"{module}.{name} is not fuzzed"

    for cls, members in fz.parse_stubs().items():
        runtime = getattr(ferrule._native, cls, None)
        if not cls or not isinstance(runtime, type) or issubclass(runtime, BaseException):
            continue
        for member in set(members) - fz.NOT_MEMBERS:
            assert f"{cls}.{member}" in api, f"stub member {cls}.{member} is not fuzzed"
    for name in fz.parse_stubs()[""]:
        assert name in functions or f"ferrule.{name}" in fz.EXCLUDED, f"stub function {name}"


def test_every_hostile_class_is_in_the_sweep() -> None:
    """Guards against a hostile value class dropping out of the bounded sweep."""
    groups = {h.group for h in fz.HOSTILE}
    core_groups = {h.group for h in fz.HOSTILE if h.core}
    assert groups == core_groups
    assert {fz.ALL_HOSTILE[n].group for n in fz.REDIS_SWEEP} == core_groups


def test_known_entries_name_real_calls(api: dict[str, fz.Target]) -> None:
    """Guards against a stale KNOWN / NOT_APPLICABLE entry (a renamed call or hostile),
    which would skip nothing and hide that the case now runs."""
    for table in (fz.KNOWN, fz.NOT_APPLICABLE):
        for key in table:
            tid = f"{key[0]}.{key[1]}"
            assert tid in api, f"{key}: no call {tid}"
            if len(key) > 2:
                params = {p.name for p in api[tid].params} | {"<set>", "<del>"}
                assert key[2] in params, f"{key}: {tid} has no parameter {key[2]}"
            if len(key) > 3:
                assert key[3] in fz.ALL_HOSTILE, f"{key}: no hostile value {key[3]}"


class _Panic(BaseException):
    pass


_Panic.__name__ = "PanicException"


@pytest.mark.parametrize(
    ("exc", "raised", "expected"),
    [
        (None, [], None),
        (ValueError("x"), [], None),
        (ferrule.QueueFull("x"), [], None),
        (_Panic("boom"), [], "panic"),
        (SystemError("x"), [], "system-error"),
        (AttributeError("x"), [], "undocumented"),
        (None, [KeyboardInterrupt("hostile")], "swallowed"),
        (TypeError("x"), [KeyboardInterrupt("hostile")], "swallowed"),
        (None, [fz.HostileError("hostile")], None),
    ],
)
def test_oracle(
    exc: BaseException | None, raised: list[BaseException], expected: str | None
) -> None:
    """Guards the harness's judgement: what passes, what fails and as what."""
    import threading

    ctx = fz.Ctx("test")
    ctx.raised = [(threading.get_ident(), e) for e in raised]
    bad = fz.verdict(ctx, exc)
    assert (bad[0] if bad else None) == expected


def test_oracle_accepts_the_hostile_exception_itself() -> None:
    """Guards against flagging a hostile object's own exception, propagated unchanged."""
    import threading

    ctx = fz.Ctx("test")
    ki = KeyboardInterrupt("hostile")
    ctx.raised = [(threading.get_ident(), ki)]
    assert fz.verdict(ctx, ki) is None


def test_harness_reports_a_crash_and_a_hang_and_carries_on() -> None:
    """Guards the supervisor: a case that kills the process and one that hangs are both
    reported against their case, and the cases after them still run."""
    cases = [
        "Cache.get_or_set[ready]:factory=selftest_abort",
        "Cache.get_or_set[ready]:factory=selftest_hang",
        "Cache.get[ready]:",
    ]
    report = fz.supervise("cases", cases=cases, call_timeout=2.0)
    assert [(f["case"], f["kind"]) for f in report.failures] == [
        (cases[0], "crash"),
        (cases[1], "hang"),
    ]
    assert report.cases == 3 and report.restarts == 2


@pytest.mark.timeout(1200)
def test_sweep(sweep: fz.Report) -> None:
    """Every call x every argument x every core hostile value: no panic, crash, hang,
    undocumented exception, swallowed KeyboardInterrupt or broken object (KNOWN aside)."""
    assert not sweep.failures, sweep.text()


def test_sweep_covers_the_redis_classes(sweep: fz.Report, api: dict[str, fz.Target]) -> None:
    """Guards against ``ferrule.redis`` silently dropping out of the sweep where a
    redis-server runs: every case of the whole API, Redis classes included, was made."""
    if sweep.redis:
        pytest.skip(sweep.redis)
    redis_cases = [c for c in fz.sweep_cases(api) if c.target.split(".")[0] in fz.REDIS_OWNERS]
    assert redis_cases
    assert sweep.cases == len(fz.sweep_cases(api))


def test_oracle_refuses_a_backend_error_while_the_server_is_up() -> None:
    """Guards the Redis classes' oracle: BackendError chained from a lost connection or
    a timeout is documented; chained from the server refusing what ferrule sent (a
    script error) it means an argument got past the checks."""
    redis_exceptions = pytest.importorskip("redis.exceptions")
    ctx = fz.Ctx("test")
    for cause, expected in [
        (redis_exceptions.ConnectionError("refused"), None),
        (redis_exceptions.TimeoutError("slow"), None),
        (redis_exceptions.ResponseError("ERR user_script:1: bad"), "backend-rejected"),
        (redis_exceptions.DataError("invalid input"), "backend-rejected"),
    ]:
        err = ferrule.BackendError(f"redis: {cause}")
        err.__cause__ = cause
        bad = fz.verdict(ctx, err)
        assert (bad[0] if bad else None) == expected, cause


@pytest.mark.timeout(300)
def test_threads() -> None:
    """Random valid and hostile calls on shared objects from several threads, with
    argument containers resized by another thread meanwhile."""
    report = fz.supervise("threads", seconds=10.0 if STRESS else 5.0)
    assert report.cases > 0
    assert not report.failures, report.text()
