"""retry: counts, delays per policy, jitter bounds, deadline, predicate, async, bad input;
retry_if_result, hooks, attempt_timeout, attempt blocks and exact statistics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import sys
from typing import Any

import ferrule._retry
import pytest
from ferrule import Attempt, ManualClock, Retry, RetryState, RetryStats, retry

from tests.conftest import run_doctests, run_threads


class Flaky:
    """Raises `exc` for the first `failures` calls, then returns the call number."""

    def __init__(self, failures: int, exc: type[BaseException] = ConnectionError) -> None:
        self.failures = failures
        self.exc = exc
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc(f"failure {self.calls}")
        return self.calls


def notes(exc: BaseException) -> list[str]:
    return list(getattr(exc, "__notes__", []))


# ---- counts and the last exception ----------------------------------------------------


def test_success_needs_one_call_and_no_sleep() -> None:
    slept: list[float] = []
    f = Flaky(0)
    assert retry(sleep=slept.append)(f)() == 1
    assert (f.calls, slept) == (1, [])


@pytest.mark.smoke
def test_retries_until_success() -> None:
    slept: list[float] = []
    f = Flaky(2)
    assert retry(attempts=3, sleep=slept.append)(f)() == 3
    assert f.calls == 3
    assert len(slept) == 2


@pytest.mark.smoke
def test_gives_up_with_the_last_exception_unchanged() -> None:
    raised: list[BaseException] = []

    def f() -> None:
        e = ConnectionError(f"failure {len(raised) + 1}")
        raised.append(e)
        raise e

    with pytest.raises(ConnectionError) as info:
        retry(attempts=4, sleep=lambda s: None)(f)()
    assert info.value is raised[-1]
    assert len(raised) == 4
    assert str(info.value) == "failure 4"
    if sys.version_info >= (3, 11):
        assert notes(info.value) == [
            "ferrule.retry: gave up after 4 attempt(s) (attempts exhausted)"
        ]
    # The traceback still reaches the frame that raised it.
    tb = info.tb
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert tb.tb_frame.f_code is f.__code__


def test_attempts_one_means_no_retry() -> None:
    f = Flaky(1)
    with pytest.raises(ConnectionError):
        retry(attempts=1)(f)()
    assert f.calls == 1


def test_exceptions_outside_retry_on_propagate_at_once() -> None:
    f = Flaky(3, KeyError)
    with pytest.raises(KeyError) as info:
        retry(attempts=5, retry_on=(ConnectionError, TimeoutError), sleep=lambda s: None)(f)()
    assert f.calls == 1
    assert notes(info.value) == []
    f = Flaky(1, TimeoutError)
    assert retry(retry_on=TimeoutError, sleep=lambda s: None)(f)() == 2


def test_base_exceptions_are_never_retried() -> None:
    g = Flaky(1, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        retry(attempts=3, sleep=lambda s: None)(g)()
    assert g.calls == 1


def test_predicate_decides() -> None:
    class HTTPError(Exception):
        def __init__(self, status: int) -> None:
            self.status = status

    statuses = [503, 502, 404, 200]

    def f() -> str:
        s = statuses.pop(0)
        if s != 200:
            raise HTTPError(s)
        return "ok"

    seen: list[int] = []

    def transient(e: BaseException) -> bool:
        assert isinstance(e, HTTPError)
        seen.append(e.status)
        return e.status >= 500

    with pytest.raises(HTTPError) as info:
        retry(attempts=5, retry_on=transient, sleep=lambda s: None)(f)()
    assert info.value.status == 404
    assert seen == [503, 502, 404]


def test_arguments_and_metadata_pass_through() -> None:
    @retry()
    def add(a: int, b: int = 0, *, c: int = 0) -> int:
        """Add."""
        return a + b + c

    assert add(1, 2, c=3) == 6
    assert add.__name__ == "add"
    assert add.__doc__ == "Add."

    class Client:
        @retry(sleep=lambda s: None)
        def get(self, x: int) -> int:
            return x * 2

    assert Client().get(4) == 8


def test_call_form() -> None:
    f = Flaky(1)
    assert retry(sleep=lambda s: None).call(f, 1, k=2) == 2
    assert retry().call(int, "7") == 7
    g = Flaky(3, KeyError)
    with pytest.raises(KeyError):
        retry(retry_on=lambda e: not isinstance(e, KeyError), sleep=lambda s: None).call(g)
    assert g.calls == 1
    h = Flaky(5)
    with pytest.raises(ConnectionError):
        retry(attempts=2, sleep=lambda s: None).call(h)
    assert h.calls == 2


# ---- delays ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("exponential", [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]),
        ("linear", [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]),
        ("fixed", [0.5] * 6),
        ("immediate", [0.0] * 6),
    ],
)
def test_named_policies_without_jitter(policy: str, expected: list[float]) -> None:
    slept: list[float] = []
    f = Flaky(6)
    r = retry(
        attempts=7,
        backoff=0.5,
        max_backoff=5.0,
        jitter=False,
        policy=policy,  # type: ignore[arg-type]
        sleep=slept.append,
    )
    assert r(f)() == 7
    assert slept == expected
    assert [r.delay(n) for n in range(6)] == expected


def test_custom_policy_is_capped_and_jittered() -> None:
    r = retry(backoff=1.0, max_backoff=4.0, jitter=False, policy=lambda n: 3.0 * n)
    assert [r.delay(n) for n in range(4)] == [0.0, 3.0, 4.0, 4.0]
    with pytest.raises(ValueError, match=r"^policy returned an invalid delay: -1.0$"):
        retry(policy=lambda n: -1.0).delay(0)


def test_full_jitter_stays_within_bounds() -> None:
    r = retry(backoff=0.1, max_backoff=1.0)
    for n in range(8):
        cap = min(1.0, 0.1 * 2**n)
        delays = [r.delay(n) for _ in range(300)]
        assert all(0.0 <= d <= cap for d in delays)
        # Full jitter spreads over the whole range, not just near the cap.
        assert min(delays) < cap * 0.2
        assert max(delays) > cap * 0.8


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert retry(backoff=1.0, max_backoff=10.0, jitter=False).delay(10_000) == 10.0


def test_default_sleep_is_time_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    import ferrule._retry as mod

    slept: list[float] = []
    monkeypatch.setattr(mod.time, "sleep", slept.append)
    assert retry(backoff=0.25, jitter=False)(Flaky(2))() == 3
    assert slept == [0.25, 0.5]


# ---- deadline -------------------------------------------------------------------------


def test_deadline_stops_before_a_sleep_that_would_pass_it() -> None:
    clock = ManualClock()
    f = Flaky(10)
    r = retry(
        attempts=10, backoff=1.0, jitter=False, deadline=2.5, clock=clock, sleep=clock.advance
    )
    with pytest.raises(ConnectionError) as info:
        r(f)()
    # t=0 fail, sleep 1 -> t=1 fail; sleeping 2 more would end at 3 >= 2.5: give up.
    assert f.calls == 2
    assert clock.now() == 1.0
    if sys.version_info >= (3, 11):
        assert notes(info.value) == [
            "ferrule.retry: gave up after 2 attempt(s) (deadline of 2.5 s)"
        ]


def test_deadline_counts_time_spent_in_the_calls() -> None:
    clock = ManualClock()

    def slow() -> None:
        clock.advance(1.0)
        raise ConnectionError("slow")

    r = retry(
        attempts=10, backoff=0.1, jitter=False, deadline=3.0, clock=clock, sleep=clock.advance
    )
    with pytest.raises(ConnectionError):
        r(slow)()
    assert clock.now() < 3.0 + 1.0  # no sleep ended past the deadline
    assert clock.now() == pytest.approx(3.3)  # calls at 0, 1.1, 2.3


# ---- async ----------------------------------------------------------------------------


def test_async_retries_with_asyncio_sleep_without_blocking_the_loop() -> None:
    f = Flaky(2)

    @retry(backoff=0.01, jitter=False)
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return f() + x

    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    async def main() -> int:
        stop = asyncio.Event()
        t = asyncio.create_task(ticker(stop))
        result = await fetch(10)
        stop.set()
        await t
        return result

    assert asyncio.run(main()) == 13
    assert f.calls == 3
    assert ticks >= 2  # the loop ran other tasks while retry waited
    assert asyncio.iscoroutinefunction(fetch)


def test_async_gives_up_and_accepts_an_async_sleep() -> None:
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    f = Flaky(5)

    async def fetch() -> int:
        return f()

    with pytest.raises(ConnectionError) as info:
        asyncio.run(retry(attempts=3, backoff=0.5, jitter=False, sleep=fake_sleep)(fetch)())
    assert slept == [0.5, 1.0]
    assert str(info.value) == "failure 3"


def test_async_deadline_and_call_form() -> None:
    clock = ManualClock()

    async def fetch() -> None:
        raise TimeoutError("slow")

    r = retry(
        attempts=10, backoff=1.0, jitter=False, deadline=1.5, clock=clock, sleep=clock.advance
    )
    with pytest.raises(TimeoutError):
        asyncio.run(r.call(fetch))
    assert clock.now() == 1.0


def test_async_cancellation_is_not_retried() -> None:
    calls = 0

    @retry(attempts=5, sleep=lambda s: None)
    async def hang() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3600)

    async def main() -> None:
        t = asyncio.create_task(hang())
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main())
    assert calls == 1


# ---- bad input ------------------------------------------------------------------------


async def _async_hook(state: RetryState) -> None:
    pass


@pytest.mark.parametrize(
    ("kwargs", "exc", "msg"),
    [
        ({"attempts": 0}, ValueError, "attempts must be >= 1"),
        ({"attempts": 2.0}, TypeError, "attempts must be an int, not 'float'"),
        ({"attempts": True}, TypeError, "attempts must be an int, not 'bool'"),
        ({"backoff": -1}, ValueError, "backoff must be >= 0"),
        ({"backoff": "1"}, TypeError, "backoff must be a number of seconds, not 'str'"),
        ({"backoff": float("inf")}, ValueError, "backoff must be a finite number of seconds"),
        ({"max_backoff": -0.5}, ValueError, "max_backoff must be >= 0"),
        ({"jitter": 1}, TypeError, "jitter must be a bool, not 'int'"),
        ({"retry_on": ()}, ValueError, "retry_on must not be empty"),
        ({"retry_on": (ValueError, int)}, TypeError, "retry_on must be an exception class"),
        ({"retry_on": "ValueError"}, TypeError, "retry_on must be an exception class"),
        ({"retry_on": BaseException}, ValueError, "retry_on must name Exception subclasses, not"),
        ({"retry_on": (KeyboardInterrupt,)}, ValueError, "retry_on must name Exception subc"),
        ({"deadline": 0}, ValueError, "deadline must be > 0"),
        ({"deadline": -1.0}, ValueError, "deadline must be > 0"),
        ({"deadline": "soon"}, TypeError, "deadline must be a number of seconds"),
        ({"policy": "random"}, ValueError, "policy must be one of 'exponential', 'linear'"),
        ({"policy": 3}, TypeError, "policy must be a policy name or a callable, not 'int'"),
        ({"sleep": 3}, TypeError, "sleep must be callable or None, not 'int'"),
        ({"clock": 1.0}, TypeError, "clock must be a ferrule.ManualClock or None"),
        ({"retry_if_result": 1}, TypeError, "retry_if_result must be callable or None, not 'int'"),
        ({"before_sleep": "log"}, TypeError, "before_sleep must be callable or None, not 'str'"),
        ({"after_attempt": 1.0}, TypeError, "after_attempt must be callable or None, not 'float'"),
        ({"after_attempt": _async_hook}, TypeError, "after_attempt must be a plain callable"),
        ({"before_sleep": _async_hook}, TypeError, "before_sleep must be a plain callable, not an"),
        ({"attempt_timeout": 0}, ValueError, "attempt_timeout must be > 0"),
        ({"attempt_timeout": -0.5}, ValueError, "attempt_timeout must be > 0"),
        ({"attempt_timeout": float("nan")}, ValueError, "attempt_timeout must be a finite number"),
        ({"attempt_timeout": "1"}, TypeError, "attempt_timeout must be a number of seconds, not"),
        ({"attempt_timeout": True}, TypeError, "attempt_timeout must be a number of seconds, not"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], exc: type, msg: str) -> None:
    with pytest.raises(exc, match="^" + msg):
        retry(**kwargs)


def test_bad_targets() -> None:
    with pytest.raises(TypeError, match=r"^fn must be callable, not 'int'$"):
        retry()(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        retry(lambda: None)  # type: ignore[misc]


def test_repr_and_type() -> None:
    r = retry(attempts=2, backoff=0.5, jitter=False, policy="fixed")
    assert isinstance(r, Retry)
    assert repr(r) == (
        "Retry(attempts=2, backoff=0.5, max_backoff=10.0, jitter=False, deadline=None, "
        "policy='fixed')"
    )
    r = retry(jitter=False, retry_if_result=bool, after_attempt=print, attempt_timeout=2)
    assert repr(r) == (
        "Retry(attempts=3, backoff=0.1, max_backoff=10.0, jitter=False, deadline=None, "
        "policy='exponential', retry_if_result=bool, after_attempt=print, attempt_timeout=2.0)"
    )


def test_doc_examples_run() -> None:
    result = run_doctests(ferrule._retry)
    assert result.failed == 0
    assert result.attempted >= 10


def stats(policy: Retry) -> tuple[int, ...]:
    s = policy.stats()
    return (s.calls, s.attempts, s.retries, s.successes, s.give_ups, s.failures)


def manual(**kwargs: Any) -> tuple[ManualClock, Retry]:
    """A policy on a ManualClock whose pauses advance it (no real sleeps)."""
    clock = ManualClock()
    kwargs.setdefault("jitter", False)
    return clock, retry(clock=clock, sleep=clock.advance, **kwargs)


# ---- retry_if_result ------------------------------------------------------------------


def test_retry_if_result_retries_until_the_predicate_is_false() -> None:
    clock, r = manual(attempts=5, backoff=1.0, retry_if_result=lambda v: v is None)
    results = [None, None, "ok", None]
    assert r.call(results.pop, 0) == "ok"
    assert results == [None]
    assert clock.now() == 3.0  # paused 1 + 2
    assert stats(r) == (1, 3, 2, 1, 0, 0)


def test_retry_if_result_returns_the_last_result_when_attempts_run_out() -> None:
    clock, r = manual(attempts=3, backoff=1.0, retry_if_result=lambda v: v < 10)
    values = iter([1, 2, 3, 4])

    @r
    def poll() -> int:
        return next(values)

    assert poll() == 3
    assert clock.now() == 3.0
    assert stats(r) == (1, 3, 2, 0, 1, 0)  # a give-up, not a success


def test_retry_if_result_returns_the_last_result_at_the_deadline() -> None:
    clock, r = manual(attempts=10, backoff=1.0, deadline=2.5, retry_if_result=bool)
    assert r.call(lambda: "busy") == "busy"
    assert clock.now() == 1.0  # the next pause (2 s) would end past the deadline
    assert stats(r) == (1, 2, 1, 0, 1, 0)


def test_retry_if_result_and_exceptions_together() -> None:
    _, r = manual(attempts=4, backoff=0.0, retry_if_result=lambda v: v == "busy")
    outcomes: list[Any] = [ConnectionError("down"), "busy", "ok"]

    def f() -> str:
        o = outcomes.pop(0)
        if isinstance(o, BaseException):
            raise o
        return str(o)

    assert r(f)() == "ok"
    assert stats(r) == (1, 3, 2, 1, 0, 0)


def test_retry_if_result_that_raises_ends_the_call() -> None:
    def judge(v: object) -> bool:
        raise LookupError("judge broke")

    f = Flaky(0)
    _, r = manual(retry_if_result=judge)
    with pytest.raises(LookupError, match="judge broke"):
        r(f)()
    assert f.calls == 1
    assert stats(r) == (1, 1, 0, 0, 0, 1)


def test_retry_if_result_async() -> None:
    clock, r = manual(attempts=3, backoff=0.5, retry_if_result=lambda v: v < 0)
    values = [-1, -2, 7]

    @r
    async def read() -> int:
        return values.pop(0)

    assert asyncio.run(read()) == 7
    assert clock.now() == 1.5
    assert stats(r) == (1, 3, 2, 1, 0, 0)


# ---- hooks ----------------------------------------------------------------------------


def test_hooks_run_in_order_with_the_state_of_each_attempt() -> None:
    log: list[tuple[Any, ...]] = []
    clock = ManualClock()

    def sleep(s: float) -> None:
        log.append(("sleep", s))
        clock.advance(s)

    def fetch() -> str:
        clock.advance(0.25)  # each attempt takes a quarter second
        if len(log) < 6:
            raise ConnectionError(f"down {len(log)}")
        return "ok"

    r = retry(
        attempts=4,
        backoff=1.0,
        jitter=False,
        clock=clock,
        sleep=sleep,
        after_attempt=lambda s: log.append(("after", s)),
        before_sleep=lambda s: log.append(("before", s)),
    )
    assert r(fetch)() == "ok"
    kinds = [entry[0] for entry in log]
    assert kinds == ["after", "before", "sleep", "after", "before", "sleep", "after"]
    states: list[RetryState] = [e[1] for e in log if e[0] != "sleep"]
    first, first_b, second, second_b, last = states
    assert first is first_b and second is second_b  # one state per attempt
    assert (first.attempt, first.next_delay, first.elapsed, first.result) == (1, 1.0, 0.25, None)
    assert isinstance(first.exception, ConnectionError) and str(first.exception) == "down 0"
    assert (second.attempt, second.next_delay, second.elapsed) == (2, 2.0, 1.5)
    assert (last.attempt, last.exception, last.result, last.next_delay) == (3, None, "ok", None)
    assert last.elapsed == 3.75
    assert last.fn is fetch


def test_after_attempt_runs_once_on_a_first_try_success_and_before_sleep_never() -> None:
    after: list[RetryState] = []
    before: list[RetryState] = []
    r = retry(after_attempt=after.append, before_sleep=before.append)
    assert r.call(divmod, 7, 2) == (3, 1)
    assert [(s.attempt, s.result, s.next_delay) for s in after] == [(1, (3, 1), None)]
    assert before == []
    assert stats(r) == (1, 1, 0, 1, 0, 0)


def test_hooks_on_give_up_and_on_an_exception_not_retried() -> None:
    after: list[RetryState] = []
    before: list[RetryState] = []
    _, r = manual(
        attempts=2,
        backoff=0.0,
        retry_on=ConnectionError,
        after_attempt=after.append,
        before_sleep=before.append,
    )
    with pytest.raises(ConnectionError) as info:
        r(Flaky(5))()
    assert [(s.attempt, s.next_delay) for s in after] == [(1, 0.0), (2, None)]
    assert after[1].exception is info.value
    if sys.version_info >= (3, 11):  # the note is there before the hook runs
        assert notes(info.value) == [
            "ferrule.retry: gave up after 2 attempt(s) (attempts exhausted)"
        ]
    assert [s.attempt for s in before] == [1]

    after.clear()
    before.clear()
    with pytest.raises(KeyError):
        r(Flaky(5, KeyError))()
    assert [(s.attempt, type(s.exception), s.next_delay) for s in after] == [(1, KeyError, None)]
    assert before == []
    assert stats(r) == (2, 3, 1, 0, 1, 1)


def test_hooks_are_not_called_for_base_exceptions() -> None:
    after: list[RetryState] = []
    r = retry(after_attempt=after.append, sleep=lambda s: None)
    with pytest.raises(KeyboardInterrupt):
        r(Flaky(1, KeyboardInterrupt))()
    assert after == []
    assert stats(r) == (1, 1, 0, 0, 0, 1)


def test_a_raising_after_attempt_hook_ends_the_call() -> None:
    def hook(state: RetryState) -> None:
        raise RuntimeError(f"hook saw attempt {state.attempt}")

    f = Flaky(3)
    _, r = manual(attempts=5, backoff=0.0, after_attempt=hook)
    with pytest.raises(RuntimeError, match=r"^hook saw attempt 1$") as info:
        r(f)()
    assert f.calls == 1  # no more attempts
    assert isinstance(info.value.__context__, ConnectionError)
    # On a success too: the hook's exception replaces the result.
    with pytest.raises(RuntimeError, match=r"^hook saw attempt 1$"):
        r.call(abs, -1)
    assert stats(r) == (2, 2, 0, 0, 0, 2)


def test_a_raising_before_sleep_hook_ends_the_call_before_the_pause() -> None:
    slept: list[float] = []

    def hook(state: RetryState) -> None:
        raise ValueError("no sleep for you")

    f = Flaky(3)
    r = retry(attempts=5, sleep=slept.append, before_sleep=hook)
    with pytest.raises(ValueError, match="no sleep for you"):
        r(f)()
    assert (f.calls, slept) == (1, [])
    assert stats(r) == (1, 1, 0, 0, 0, 1)


def test_a_hook_may_reenter_the_policy_and_the_function() -> None:
    seen: list[tuple[int, ...]] = []
    nested: list[int] = []

    def hook(state: RetryState) -> None:
        seen.append(stats(r))  # no lock is held while a hook runs
        if not seen[1:]:
            nested.append(fetch(Flaky(1)))  # a whole retried call from inside a hook

    _, r = manual(attempts=3, backoff=0.0, after_attempt=hook)

    @r
    def fetch(source: Flaky) -> int:
        return source()

    assert fetch(Flaky(1)) == 2
    assert nested == [2]
    assert len(seen) == 4
    assert stats(r) == (2, 4, 2, 2, 0, 0)


def test_retry_state_is_read_only() -> None:
    state = RetryState(1, None, "x", 0.0, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.attempt = 2  # type: ignore[misc]
    assert state.fn is None


def test_hooks_with_async_functions() -> None:
    log: list[str] = []
    clock, r = manual(
        attempts=3,
        backoff=1.0,
        after_attempt=lambda s: log.append(f"after {s.attempt} {s.next_delay}"),
        before_sleep=lambda s: log.append(f"before {s.attempt}"),
    )
    f = Flaky(1)

    async def fetch() -> int:
        return f()

    assert asyncio.run(r(fetch)()) == 2
    assert log == ["after 1 1.0", "before 1", "after 2 None"]
    assert clock.now() == 1.0


# ---- attempt_timeout ------------------------------------------------------------------


def test_attempt_timeout_cancels_a_hung_attempt_and_retries() -> None:
    calls = 0
    cancelled = 0
    seen: list[RetryState] = []

    async def fetch() -> str:
        nonlocal calls, cancelled
        calls += 1
        if calls == 1:
            try:
                await asyncio.Event().wait()  # hangs
            except asyncio.CancelledError:
                cancelled += 1
                raise
        return "ok"

    r = retry(attempts=3, backoff=0.0, attempt_timeout=0.01, after_attempt=seen.append)
    assert asyncio.run(r(fetch)()) == "ok"
    assert (calls, cancelled) == (2, 1)
    assert isinstance(seen[0].exception, TimeoutError)
    assert str(seen[0].exception) == "attempt timed out after 0.01 s (attempt_timeout)"
    assert stats(r) == (1, 2, 1, 1, 0, 0)


def test_attempt_timeout_follows_retry_on() -> None:
    async def hang() -> None:
        await asyncio.Event().wait()

    r = retry(attempts=3, backoff=0.0, attempt_timeout=0.01, retry_on=ConnectionError)
    with pytest.raises(TimeoutError, match="attempt timed out"):
        asyncio.run(r.call(hang))
    assert stats(r) == (1, 1, 0, 0, 0, 1)  # not retried: TimeoutError is not retry_on

    r = retry(attempts=2, backoff=0.0, attempt_timeout=0.01)
    with pytest.raises(TimeoutError) as info:
        asyncio.run(r.call(hang))
    if sys.version_info >= (3, 11):
        assert notes(info.value) == [
            "ferrule.retry: gave up after 2 attempt(s) (attempts exhausted)"
        ]
    assert stats(r) == (1, 2, 1, 0, 1, 0)


def test_attempt_timeout_leaves_the_functions_own_timeout_error_alone() -> None:
    async def f() -> None:
        raise TimeoutError("upstream said so")

    r = retry(attempts=2, backoff=0.0, attempt_timeout=5.0)
    with pytest.raises(TimeoutError) as info:
        asyncio.run(r(f)())
    assert str(info.value) == "upstream said so"
    assert stats(r) == (1, 2, 1, 0, 1, 0)


def test_attempt_timeout_does_not_retry_cancellation() -> None:
    calls = 0

    @retry(attempts=5, attempt_timeout=10.0, sleep=lambda s: None)
    async def hang() -> None:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()

    async def main() -> None:
        t = asyncio.create_task(hang())
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    asyncio.run(main())
    assert calls == 1


def test_attempt_timeout_is_for_async_functions_only() -> None:
    r = retry(attempt_timeout=1.0)

    def plain() -> int:
        return 1

    with pytest.raises(TypeError, match=r"^attempt_timeout needs an async def function"):
        r(plain)
    with pytest.raises(TypeError, match=r"^attempt_timeout needs an async def function"):
        r.call(plain)
    with pytest.raises(TypeError, match=r"^attempt_timeout applies to async def functions"):
        iter(r)
    with pytest.raises(TypeError, match=r"^attempt_timeout applies to async def functions"):
        r.__aiter__()


# ---- attempt blocks -------------------------------------------------------------------


def test_attempt_block_retries_until_it_finishes() -> None:
    clock, r = manual(attempts=5, backoff=1.0)
    numbers = []
    for attempt in r:
        with attempt:
            numbers.append(attempt.number)
            if attempt.number < 3:
                raise ConnectionError("down")
    assert numbers == [1, 2, 3]
    assert clock.now() == 3.0
    assert isinstance(attempt, Attempt)
    assert stats(r) == (1, 3, 2, 1, 0, 0)


def test_attempt_block_gives_up_with_the_last_exception() -> None:
    raised: list[BaseException] = []
    _, r = manual(attempts=3, backoff=0.0)
    with pytest.raises(ConnectionError) as info:
        for attempt in r:
            with attempt:
                e = ConnectionError(f"failure {attempt.number}")
                raised.append(e)
                raise e
    assert info.value is raised[-1] and len(raised) == 3
    if sys.version_info >= (3, 11):
        assert notes(info.value) == [
            "ferrule.retry: gave up after 3 attempt(s) (attempts exhausted)"
        ]
    with pytest.raises(KeyError):  # not retried
        for attempt in retry(retry_on=ConnectionError):
            with attempt:
                raise KeyError("k")
    assert stats(r) == (1, 3, 2, 0, 1, 0)


def test_attempt_block_deadline_and_hooks() -> None:
    states: list[RetryState] = []
    clock, r = manual(attempts=10, backoff=1.0, deadline=2.5, after_attempt=states.append)
    with pytest.raises(ConnectionError):
        for attempt in r:
            with attempt:
                raise ConnectionError("down")
    assert clock.now() == 1.0
    assert [(s.attempt, s.next_delay, s.fn, s.elapsed) for s in states] == [
        (1, 1.0, None, 0.0),
        (2, None, None, 1.0),
    ]


def test_async_attempt_block_pauses_without_blocking_the_loop() -> None:
    r = retry(attempts=4, backoff=0.01, jitter=False)
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    async def main() -> list[int]:
        stop = asyncio.Event()
        t = asyncio.create_task(ticker(stop))
        numbers = []
        async for attempt in r:
            with attempt:
                numbers.append(attempt.number)
                await asyncio.sleep(0)
                if attempt.number < 3:
                    raise ConnectionError("down")
        stop.set()
        await t
        return numbers

    assert asyncio.run(main()) == [1, 2, 3]
    assert ticks >= 2
    assert stats(r) == (1, 3, 2, 1, 0, 0)


def test_async_attempt_block_gives_up_with_an_async_sleep() -> None:
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    r = retry(attempts=3, backoff=0.5, jitter=False, sleep=fake_sleep)

    async def main() -> None:
        async for attempt in r:
            with attempt:
                raise ConnectionError(f"failure {attempt.number}")

    with pytest.raises(ConnectionError) as info:
        asyncio.run(main())
    assert str(info.value) == "failure 3"
    assert slept == [0.5, 1.0]
    assert stats(r) == (1, 3, 2, 0, 1, 0)


def test_attempt_block_misuse() -> None:
    r = retry(attempts=3, backoff=0.0)
    with pytest.raises(RuntimeError, match=r"^attempt 1 was not used as 'with attempt:'"):
        for _attempt in r:
            pass
    with pytest.raises(TypeError, match="made by iterating"):
        Attempt()
    it = iter(r)
    attempt = next(it)
    with attempt, pytest.raises(RuntimeError, match="entered only once"), attempt:
        pass
    with pytest.raises(RuntimeError, match="not inside its with block"):
        attempt.__exit__(None, None, None)
    with pytest.raises(TypeError, match=r"^retry_if_result applies to function results"):
        iter(retry(retry_if_result=bool))


def test_attempt_block_left_early_counts_as_a_failure() -> None:
    _, r = manual(attempts=5, backoff=0.0)
    for attempt in r:
        with attempt:
            raise ConnectionError("down")
        break  # after a retried failure
    assert stats(r) == (1, 1, 0, 0, 0, 1)
    for _ in r:  # no attempt made: no call
        break
    assert stats(r) == (1, 1, 0, 0, 0, 1)


# ---- statistics -----------------------------------------------------------------------


def test_stats_count_each_way_a_call_ends() -> None:
    _, r = manual(attempts=3, backoff=0.0, retry_on=lambda e: not isinstance(e, KeyError))
    assert stats(r) == (0, 0, 0, 0, 0, 0)
    assert isinstance(r.stats(), RetryStats)
    r(Flaky(0))()  # success at once
    r(Flaky(2))()  # success at the third attempt
    with pytest.raises(ConnectionError):
        r.call(Flaky(9))  # give-up
    with pytest.raises(KeyError):
        r.call(Flaky(9, KeyError))  # refused by the predicate
    with pytest.raises(KeyboardInterrupt):
        r.call(Flaky(9, KeyboardInterrupt))  # a BaseException

    def broken_predicate(e: BaseException) -> bool:
        raise LookupError("predicate")

    p = retry(retry_on=broken_predicate)
    with pytest.raises(LookupError):
        p.call(Flaky(1))
    assert stats(p) == (1, 1, 0, 0, 0, 1)
    assert stats(r) == (5, 9, 4, 2, 1, 2)


def test_stats_async() -> None:
    _, r = manual(attempts=2, backoff=0.0, retry_on=ConnectionError)

    async def ok() -> int:
        return 1

    f = Flaky(1)

    async def once() -> int:
        return f()

    g = Flaky(5, KeyError)

    async def bad() -> int:
        return g()

    async def main() -> None:
        await r(ok)()
        await r.call(once)
        with pytest.raises(KeyError):
            await r(bad)()

    asyncio.run(main())
    assert stats(r) == (3, 4, 1, 2, 0, 1)


def test_stats_are_exact_under_threads(threads: int, stress_scale: int) -> None:
    m = 400 * stress_scale
    r = retry(attempts=2, backoff=0.0, retry_on=ConnectionError, sleep=lambda s: None)
    p = retry(attempts=2, backoff=0.0, after_attempt=lambda s: None, sleep=lambda s: None)
    done: list[int] = []
    snapshots: list[RetryStats] = []

    def call(policy: Retry, i: int) -> None:
        kind = i % 5  # 0: always fails, 1: fails once, 2: KeyError, 3 and 4: succeed
        f = Flaky({0: 9, 1: 1, 2: 9}.get(kind, 0), KeyError if kind == 2 else ConnectionError)
        with contextlib.suppress(ConnectionError, KeyError):
            policy.call(f)

    def body(t: int) -> None:
        if t == threads:  # a reader: every snapshot is consistent
            while len(done) < threads:
                snapshots.append(r.stats())
            return
        for i in range(m):
            call(r, i)
            call(p, i)
        done.append(t)

    run_threads(threads + 1, body)
    # Per 5 calls: a give-up (2 attempts), a retried success (2), a failure (1), two
    # successes at once (1 each): 5 calls, 7 attempts.
    n = threads * m // 5
    assert stats(r) == (5 * n, 7 * n, 2 * n, 3 * n, n, n)
    # The full path (a hook) too; KeyError is retried there (the default retry_on).
    assert stats(p) == (5 * n, 8 * n, 3 * n, 3 * n, 2 * n, 0)
    assert snapshots
    for s in snapshots:
        assert s.calls == s.successes + s.give_ups + s.failures
        assert s.attempts == s.calls + s.retries


def test_attempts_is_the_count_and_called_iterates_the_policy() -> None:
    """``policy.attempts`` stays the int it always was; ``policy.attempts()`` gives the
    attempt blocks (``for attempt in policy.attempts(): with attempt: ...``)."""
    import pickle

    clock = ManualClock()
    policy = retry(attempts=3, backoff=0.0, clock=clock, sleep=clock.advance)
    assert policy.attempts == 3 and isinstance(policy.attempts, int)
    assert repr(policy.attempts) == "3" and pickle.loads(pickle.dumps(policy.attempts)) == 3
    failures = []
    for attempt in policy.attempts():
        with attempt:
            if attempt.number < 3:
                failures.append(attempt.number)
                raise ConnectionError("flaky")
    assert failures == [1, 2]

    async def blocks(p: Retry) -> int:
        async for a in p.attempts():
            with a:
                return a.number
        return 0

    assert asyncio.run(blocks(policy)) == 1
    count = policy.attempts
    del policy, attempt  # an Attempt refers to its policy
    gc.collect()
    with pytest.raises(RuntimeError, match="gone"):
        count()
