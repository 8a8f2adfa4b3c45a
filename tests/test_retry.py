"""retry: counts, delays per policy, jitter bounds, deadline, predicate, async, bad input."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from ferrule import ManualClock, Retry, retry


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


def test_retries_until_success() -> None:
    slept: list[float] = []
    f = Flaky(2)
    assert retry(attempts=3, sleep=slept.append)(f)() == 3
    assert f.calls == 3
    assert len(slept) == 2


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
