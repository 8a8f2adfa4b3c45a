//! `RateLimiter` and `Decision`: the Python face of `core::ratelimit::Limiter`.
//!
//! Keys (any hashable, with dict semantics; a lock-free native path for exact builtins,
//! opaque keys compared by Python outside every lock) are turned into the core's query in
//! `ratelimit_key`, which also holds the comparisons the core asks for.
//!
//! # Waits
//! Every decision is O(1) and runs with the GIL held (releasing it would cost more than
//! the decision). `acquire` sleeps with the GIL released in naps of at most
//! `wait::SLICE` and checks for signals between naps; `sweep` releases the GIL for its
//! O(n) pass. `acquire_async` is a coroutine from `ferrule._ratelimit` built on `check()`
//! and `asyncio.sleep`, so no thread is parked per waiter. `limit` checks its arguments
//! here and returns `ferrule._ratelimit.Limit`, whose `with`, `async with` and decorator
//! uses call `acquire` and `acquire_async`.
//!
//! # Garbage collection
//! The limiter holds opaque keys, so it takes part in GC: `__traverse__` visits every
//! stored key whose side-table shard is free (a held shard is skipped, never waited for),
//! and `__clear__` takes them all out and drops them after unlocking.

use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::core::clock::{self, nanos_to_secs};
use crate::core::ratelimit::{self, Gcra, KeyRef, Limiter, Outcome, Query};
use crate::py::args;
use crate::py::lookup::lookup;
use crate::py::ratelimit_key::{exact_str, prepare, release, Caller};
use crate::py::wait::{self, SLICE};

/// The outcome of `RateLimiter.check`. Immutable.
#[pyclass(frozen, get_all, module = "ferrule", name = "Decision")]
pub struct Decision {
    /// True if the tokens were granted (and taken).
    allowed: bool,
    /// Whole tokens left in the bucket after this decision.
    remaining: u64,
    /// 0.0 when allowed; else seconds until `cost` tokens are there.
    retry_after: f64,
    /// Seconds until the bucket is full again.
    reset_after: f64,
}

/// Nanoseconds (below 2^63 by the core's bounds; saturating regardless) as seconds.
fn secs(ns: u64) -> f64 {
    nanos_to_secs(i64::try_from(ns).unwrap_or(i64::MAX))
}

/// A wait given in seconds: a finite number >= 0.
fn wait_seconds(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<f64> {
    let secs = args::seconds(obj, arg)?;
    if !secs.is_finite() {
        return Err(PyValueError::new_err(format!(
            "{arg} must be a finite number of seconds"
        )));
    }
    if secs < 0.0 {
        return Err(PyValueError::new_err(format!("{arg} must be >= 0")));
    }
    Ok(secs)
}

impl From<ratelimit::Decision> for Decision {
    fn from(d: ratelimit::Decision) -> Self {
        Self {
            allowed: d.allowed,
            remaining: d.remaining,
            retry_after: secs(d.retry_after),
            reset_after: secs(d.reset_after),
        }
    }
}

#[pymethods]
impl Decision {
    /// Builds a decision, for limiters computed elsewhere (`ferrule.redis`) and for tests.
    /// `remaining` is an int >= 0; the waits are finite numbers of seconds >= 0.
    #[new]
    #[pyo3(signature = (allowed, remaining, retry_after, reset_after))]
    fn new(
        allowed: bool,
        remaining: &Bound<'_, PyAny>,
        retry_after: &Bound<'_, PyAny>,
        reset_after: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        Ok(Self {
            allowed,
            // >= 0, so the cast is exact.
            remaining: args::int_at_least(remaining, "remaining", 0)? as u64,
            retry_after: wait_seconds(retry_after, "retry_after")?,
            reset_after: wait_seconds(reset_after, "reset_after")?,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Decision(allowed={}, remaining={}, retry_after={:?}, reset_after={:?})",
            if self.allowed { "True" } else { "False" },
            self.remaining,
            self.retry_after,
            self.reset_after
        )
    }
}

// ---- the limiter -------------------------------------------------------------------------

// The argument rules below are shared with the Redis tier (`py::redis`), which takes the
// same arguments and must refuse the same ones with the same errors.

/// `RateLimiter(rate, per, burst=...)`'s numbers, checked in its order; the core's bounds
/// on them follow in [`RateArgs::gcra`].
pub struct RateArgs {
    pub rate: f64,
    pub per: f64,
    per_ns: u64,
    /// The given burst (None: the default, `rate`'s whole tokens).
    pub burst: Option<u64>,
}

impl RateArgs {
    pub fn from_args(
        rate: &Bound<'_, PyAny>,
        per: f64,
        burst: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let rate = args::number(rate, "rate")?;
        // At least 1 ns and at most 4e18 ns: the cast to u64 is exact.
        let per_ns = clock::positive_nanos(per, "per")? as u64;
        let burst = match burst {
            // >= 1, so the cast is exact.
            Some(b) if !b.is_none() => Some(args::int_at_least(b, "burst", 1)? as u64),
            _ => None,
        };
        Ok(Self {
            rate,
            per,
            per_ns,
            burst,
        })
    }

    pub fn gcra(&self) -> PyResult<Gcra> {
        Ok(Gcra::new(self.rate, self.per_ns, self.burst)?)
    }
}

/// A request's `cost`, for a bucket of capacity `burst`.
#[inline]
pub fn cost_arg(cost: i64, burst: u64) -> PyResult<u64> {
    // >= 1, so the cast is exact.
    let cost = args::at_least(cost, "cost", 1)? as u64;
    ratelimit::check_cost(cost, burst)?;
    Ok(cost)
}

/// `acquire_async(timeout=...)`'s rule: None, or the timeout in seconds (whole
/// nanoseconds).
pub fn timeout_secs(timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<f64>> {
    Ok(args::opt_duration_nanos(timeout, "timeout")?.map(nanos_to_secs))
}

/// A keyed token-bucket rate limiter: capacity `burst`, refilled at `rate` tokens per
/// `per` seconds, one bucket per key. Implemented as GCRA: one atomic word per key,
/// updated by a lock-free compare-and-swap.
#[pyclass(frozen, module = "ferrule", name = "RateLimiter")]
pub struct RateLimiter {
    inner: Limiter<Py<PyAny>>,
    rate: f64,
    per: f64,
    manual: bool,
}

impl RateLimiter {
    fn cost(&self, cost: i64) -> PyResult<u64> {
        cost_arg(cost, self.inner.gcra().burst())
    }

    /// One decision: the native fast path inline, everything else out of line.
    #[inline]
    fn decide(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        q: &Query<'_>,
        cost: u64,
    ) -> PyResult<Outcome> {
        if let Some(o) = self.inner.hit(q, cost) {
            if ratelimit::due() {
                self.reclaim_step(py)?;
            }
            return Ok(o);
        }
        self.decide_slow(py, key, q, cost)
    }

    /// The amortised reclaim step of the fast path.
    #[cold]
    #[inline(never)]
    fn reclaim_step(&self, py: Python<'_>) -> PyResult<()> {
        let mut grave = Vec::new();
        self.inner
            .reclaim_step(ratelimit::RECLAIM_BUDGET, &mut grave);
        release(py, grave)
    }

    #[inline(never)]
    fn decide_slow(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        q: &Query<'_>,
        cost: u64,
    ) -> PyResult<Outcome> {
        let mut grave = Vec::new();
        let caller = Caller::new(py, key);
        let o = self.inner.acquire(q, &caller, cost, &mut grave);
        caller.finish(o, grave)
    }
}

#[pymethods]
impl RateLimiter {
    #[new]
    #[pyo3(signature = (rate, per = 1.0, *, burst = None, clock = None))]
    fn new(
        rate: &Bound<'_, PyAny>,
        #[pyo3(from_py_with = args::named::per)] per: f64,
        burst: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let r = RateArgs::from_args(rate, per, burst)?;
        let clock = args::clock(clock)?;
        let gcra = r.gcra()?;
        Ok(Self {
            manual: clock.is_manual(),
            inner: Limiter::new(gcra, clock),
            rate: r.rate,
            per: r.per,
        })
    }

    /// Take `cost` tokens from `key`'s bucket if they are there; True if taken. `cost` must
    /// be between 1 and `burst` (ValueError otherwise).
    #[pyo3(signature = (key = None, cost = 1))]
    fn try_acquire(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::cost)] cost: i64,
    ) -> PyResult<bool> {
        let cost = self.cost(cost)?;
        // Each kind of key in a local of its own (see `exact_str`).
        let (str_q, other_q);
        let q = if let Some((s, h)) = exact_str(key) {
            str_q = Query::with_hash(KeyRef::Str(s), h);
            &str_q
        } else {
            other_q = prepare(py, key)?;
            &other_q
        };
        // The fast path written out: no Result to unwrap around the common decision.
        if let Some(o) = self.inner.hit(q, cost) {
            if ratelimit::due() {
                self.reclaim_step(py)?;
            }
            return Ok(o.allowed);
        }
        Ok(self.decide_slow(py, key, q, cost)?.allowed)
    }

    /// Like `try_acquire`, returning the whole `Decision`.
    #[pyo3(signature = (key = None, cost = 1))]
    fn check(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::cost)] cost: i64,
    ) -> PyResult<Decision> {
        let cost = self.cost(cost)?;
        let (str_q, other_q); // see `try_acquire`
        let q = if let Some((s, h)) = exact_str(key) {
            str_q = Query::with_hash(KeyRef::Str(s), h);
            &str_q
        } else {
            other_q = prepare(py, key)?;
            &other_q
        };
        let o = self.decide(py, key, q, cost)?;
        Ok(self.inner.gcra().decision(o).into())
    }

    /// Wait until `cost` tokens are granted; True then. Returns False when `timeout`
    /// seconds (real time, also with a ManualClock) pass, and at once when the tokens
    /// cannot be there before the timeout. The wait releases the GIL and raises
    /// KeyboardInterrupt promptly on Ctrl-C.
    #[pyo3(signature = (key = None, cost = 1, *, timeout = None))]
    fn acquire(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::cost)] cost: i64,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let cost = self.cost(cost)?;
        let timeout = args::opt_timeout(timeout, "timeout")?;
        let q = prepare(py, key)?;
        let start = Instant::now();
        loop {
            let o = self.decide(py, key, &q, cost)?;
            if o.allowed {
                return Ok(true);
            }
            let d = self.inner.gcra().decision(o);
            let wait = Duration::from_nanos(d.retry_after);
            if let Some(t) = timeout {
                if wait > t.saturating_sub(start.elapsed()) {
                    return Ok(false);
                }
            }
            let nap = wait.min(SLICE);
            wait::detach(py, || std::thread::sleep(nap));
            py.check_signals()?;
        }
    }

    /// `acquire` for asyncio: `await rl.acquire_async(key)`. Waiting sleeps on the event
    /// loop (no thread per waiter). Bad arguments raise at the call, before the first
    /// await.
    #[pyo3(signature = (key = None, cost = 1, *, timeout = None))]
    fn acquire_async<'py>(
        slf: &Bound<'py, Self>,
        key: Option<&Bound<'py, PyAny>>,
        #[pyo3(from_py_with = args::named::cost)] cost: i64,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        // Refuse bad arguments now, not at the first await.
        let cost = this.cost(cost)?;
        let timeout_s = timeout_secs(timeout)?;
        prepare(py, key)?;
        let nap = if this.manual {
            Some(SLICE.as_secs_f64())
        } else {
            None
        };
        let helper = lookup!(py, "ferrule._ratelimit", "acquire_async")?;
        helper.call1((slf, key, cost, timeout_s, nap))
    }

    /// `acquire` as a `with` / `async with` block or a decorator: `with rl.limit(key):`.
    /// Raises `RateLimited` when the tokens cannot be had within `timeout`. Bad arguments
    /// raise at the call; a callable `key` is only hashed where it is used as the key.
    #[pyo3(signature = (key = None, cost = 1, *, timeout = None))]
    fn limit<'py>(
        slf: &Bound<'py, Self>,
        key: Option<&Bound<'py, PyAny>>,
        #[pyo3(from_py_with = args::named::cost)] cost: i64,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let cost = slf.get().cost(cost)?;
        let timeout_s = timeout_secs(timeout)?;
        // A decorator's callable key is called per call for the key, which may be
        // anything; in a `with` block it is the key itself, hashed at entry.
        if !key.is_some_and(PyAnyMethods::is_callable) {
            prepare(py, key)?;
        }
        lookup!(py, "ferrule._ratelimit", "Limit")?.call1((slf, key, cost, timeout_s))
    }

    /// Whole tokens available on `key` now, taking none.
    #[pyo3(signature = (key = None))]
    fn peek(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let q = prepare(py, key)?;
        let caller = Caller::new(py, key);
        let n = self.inner.peek(&q, &caller);
        caller.finish(n, Vec::new())
    }

    /// Refill `key`'s bucket (the key is then reclaimed like any idle key).
    #[pyo3(signature = (key = None))]
    fn reset(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let q = prepare(py, key)?;
        let caller = Caller::new(py, key);
        let done = self.inner.reset(&q, &caller);
        caller.finish(done, Vec::new())
    }

    /// Drop every key whose bucket is full again (kept key objects included); returns how
    /// many. Releases the GIL.
    fn sweep(&self, py: Python<'_>) -> PyResult<usize> {
        let (n, grave) = wait::detach(py, || {
            let mut grave = Vec::new();
            let n = self.inner.sweep(&mut grave);
            (n, grave)
        });
        release(py, grave)?;
        Ok(n)
    }

    #[getter]
    fn rate(&self) -> f64 {
        self.rate
    }

    #[getter]
    fn per(&self) -> f64 {
        self.per
    }

    /// The bucket's capacity.
    #[getter]
    fn burst(&self) -> u64 {
        self.inner.gcra().burst()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "RateLimiter(rate={:?}, per={:?}, burst={})",
            self.rate,
            self.per,
            self.inner.gcra().burst()
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.inner.try_for_each_stored(|obj| visit.call(obj))
    }

    fn __clear__(&self, py: Python<'_>) -> PyResult<()> {
        let mut grave = Vec::new();
        self.inner.clear(&mut grave);
        release(py, grave) // after unlocking
    }
}
