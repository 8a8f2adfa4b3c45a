//! `RateLimiter` and `Decision`: the Python face of `core::ratelimit::Limiter`.
//!
//! Keys are converted to a Rust-native [`KeyRef`] that borrows the caller's str/bytes
//! data (no allocation and no Python object kept on the hit path); only a miss copies the
//! key into an owned [`Key`]. No Python code runs while a map guard is held: keys are
//! converted before the lookup and the limiter calls nothing back.
//!
//! Every decision is O(1) and runs with the GIL held (releasing it would cost more than
//! the decision). `acquire` sleeps with the GIL released in naps of at most 50 ms and
//! checks for signals between naps; `sweep` releases the GIL for its O(n) pass.
//! `acquire_async` is a coroutine from `ferrule._ratelimit` built on `check()` and
//! `asyncio.sleep`, so no thread is parked per waiter.

use std::time::{Duration, Instant};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::core::clock::{self, nanos_to_secs};
use crate::core::ratelimit::{self, Gcra, Key, KeyHashBuilder, KeyRef, Limiter, Lookup, Query};
use crate::py::args;

/// Longest sleep between two signal checks while `acquire` waits.
const NAP: Duration = Duration::from_millis(50);
/// Deepest tuple nesting accepted in a key.
const MAX_DEPTH: u32 = 16;

/// The outcome of a :meth:`RateLimiter.check`.
#[pyclass(frozen, get_all, module = "ferrule._native", name = "Decision")]
pub struct Decision {
    allowed: bool,
    remaining: u64,
    retry_after: f64,
    reset_after: f64,
}

impl From<ratelimit::Decision> for Decision {
    fn from(d: ratelimit::Decision) -> Self {
        Self {
            allowed: d.allowed,
            remaining: d.remaining,
            retry_after: nanos_to_secs(d.retry_after as i64),
            reset_after: nanos_to_secs(d.reset_after as i64),
        }
    }
}

#[pymethods]
impl Decision {
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

fn key_type_error(py: Python<'_>, p: *mut ffi::PyObject) -> PyErr {
    // SAFETY: `p` is a live object borrowed from the caller for this call.
    let obj = unsafe { Bound::from_borrowed_ptr(py, p) };
    let tname = obj
        .get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string());
    PyTypeError::new_err(format!(
        "key must be None, str, int, bytes or a tuple of those, not '{tname}'"
    ))
}

/// Converts a Python key to a borrowed Rust key.
///
/// # Safety
/// `p` must be a live object that stays alive (and, for tuples, keeps its items) for
/// `'a`. str and bytes contents are immutable, and a tuple holds strong references to its
/// items, so every slice borrowed here is valid for `'a`.
unsafe fn key_ref<'a>(py: Python<'_>, p: *mut ffi::PyObject, depth: u32) -> PyResult<KeyRef<'a>> {
    // SAFETY (whole body): `p` is live per the contract; each FFI call below is the one
    // that matches the type just checked, and errors are fetched right after.
    unsafe {
        if p == ffi::Py_None() {
            return Ok(KeyRef::None);
        }
        if ffi::PyUnicode_Check(p) != 0 {
            let mut len: ffi::Py_ssize_t = 0;
            let data = ffi::PyUnicode_AsUTF8AndSize(p, &raw mut len);
            if data.is_null() {
                return Err(PyErr::fetch(py));
            }
            // The UTF-8 buffer is cached on the str object and lives as long as it does.
            let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len as usize);
            return Ok(KeyRef::Str(std::str::from_utf8_unchecked(bytes)));
        }
        if ffi::PyLong_Check(p) != 0 {
            let mut overflow: std::os::raw::c_int = 0;
            let v = ffi::PyLong_AsLongLongAndOverflow(p, &raw mut overflow);
            if overflow != 0 {
                let text = Bound::from_borrowed_ptr(py, p).str()?.to_str()?.to_owned();
                return Ok(KeyRef::BigInt(text));
            }
            if v == -1 && !ffi::PyErr_Occurred().is_null() {
                return Err(PyErr::fetch(py));
            }
            return Ok(KeyRef::Int(v));
        }
        if ffi::PyBytes_Check(p) != 0 {
            let data = ffi::PyBytes_AsString(p);
            let len = ffi::PyBytes_Size(p);
            if data.is_null() || len < 0 {
                return Err(PyErr::fetch(py));
            }
            return Ok(KeyRef::Bytes(std::slice::from_raw_parts(
                data.cast::<u8>(),
                len as usize,
            )));
        }
        if ffi::PyTuple_Check(p) != 0 {
            if depth >= MAX_DEPTH {
                return Err(PyTypeError::new_err(format!(
                    "key must not nest tuples more than {MAX_DEPTH} deep"
                )));
            }
            let n = ffi::PyTuple_Size(p);
            let mut items = Vec::with_capacity(n.max(0) as usize);
            for i in 0..n {
                let item = ffi::PyTuple_GetItem(p, i);
                if item.is_null() {
                    return Err(PyErr::fetch(py));
                }
                items.push(key_ref(py, item, depth + 1)?);
            }
            return Ok(KeyRef::Tuple(items));
        }
        Err(key_type_error(py, p))
    }
}

/// The lookup form of an optional key argument (absent means `None`).
fn query<'a>(py: Python<'_>, key: Option<&'a Bound<'_, PyAny>>) -> PyResult<Query<'a>> {
    match key {
        None => Ok(Query::new(KeyRef::None)),
        // SAFETY: `k` is borrowed for `'a`, so the object outlives the returned query.
        Some(k) => Ok(Query::new(unsafe { key_ref(py, k.as_ptr(), 0)? })),
    }
}

/// A keyed token-bucket rate limiter (GCRA: one atomic word per key, lock-free CAS).
#[pyclass(frozen, module = "ferrule._native", name = "RateLimiter")]
pub struct RateLimiter {
    inner: Limiter<Key, KeyHashBuilder>,
    rate: f64,
    per: f64,
    manual: bool,
}

impl RateLimiter {
    fn cost(&self, cost: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let cost = match cost {
            None => 1,
            Some(c) => args::int_at_least(c, "cost", 1)? as u64,
        };
        self.inner.gcra().check_cost(cost)?;
        Ok(cost)
    }

    #[inline]
    fn decide(&self, q: &Query<'_>, cost: u64) -> ratelimit::Decision {
        self.inner.acquire(q as &dyn Lookup, || q.to_key(), cost)
    }
}

#[pymethods]
impl RateLimiter {
    #[new]
    #[pyo3(signature = (rate, per = None, *, burst = None, clock = None), text_signature = "(rate, per=1.0, *, burst=None, clock=None)")]
    fn new(
        rate: &Bound<'_, PyAny>,
        per: Option<&Bound<'_, PyAny>>,
        burst: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let rate = args::number(rate, "rate")?;
        let per = match per {
            None => 1.0,
            Some(p) => args::seconds(p, "per")?,
        };
        let per_ns = clock::positive_nanos(per, "per")?;
        let burst = match burst {
            Some(b) if !b.is_none() => Some(args::int_at_least(b, "burst", 1)? as u64),
            _ => None,
        };
        let clock = args::clock(clock)?;
        let gcra = Gcra::new(rate, per_ns as u64, burst)?;
        Ok(Self {
            manual: clock.is_manual(),
            inner: Limiter::new(gcra, clock),
            rate,
            per,
        })
    }

    /// Takes `cost` tokens from `key`'s bucket if they are there; True if it did.
    #[pyo3(signature = (key = None, cost = None), text_signature = "(self, /, key=None, cost=1)")]
    fn try_acquire(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        cost: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let cost = self.cost(cost)?;
        let q = query(py, key)?;
        Ok(self.decide(&q, cost).allowed)
    }

    /// Like `try_acquire`, with the details of the decision.
    #[pyo3(signature = (key = None, cost = None), text_signature = "(self, /, key=None, cost=1)")]
    fn check(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        cost: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Decision> {
        let cost = self.cost(cost)?;
        let q = query(py, key)?;
        Ok(self.decide(&q, cost).into())
    }

    /// Waits (GIL released) until `cost` tokens are granted; False on timeout, or at once
    /// when they cannot be there before it.
    #[pyo3(
        signature = (key = None, cost = None, *, timeout = None),
        text_signature = "(self, /, key=None, cost=1, *, timeout=None)"
    )]
    fn acquire(
        &self,
        py: Python<'_>,
        key: Option<&Bound<'_, PyAny>>,
        cost: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let cost = self.cost(cost)?;
        let timeout =
            args::opt_duration_nanos(timeout, "timeout")?.map(|t| Duration::from_nanos(t as u64));
        let q = query(py, key)?;
        let start = Instant::now();
        loop {
            let d = self.decide(&q, cost);
            if d.allowed {
                return Ok(true);
            }
            let wait = Duration::from_nanos(d.retry_after);
            if let Some(t) = timeout {
                if wait > t.saturating_sub(start.elapsed()) {
                    return Ok(false);
                }
            }
            let nap = wait.min(NAP);
            py.detach(|| std::thread::sleep(nap));
            py.check_signals()?;
        }
    }

    /// `await limiter.acquire_async(key, cost, timeout=...)`: `acquire` for asyncio.
    #[pyo3(
        signature = (key = None, cost = None, *, timeout = None),
        text_signature = "(self, /, key=None, cost=1, *, timeout=None)"
    )]
    fn acquire_async<'py>(
        slf: &Bound<'py, Self>,
        key: Option<&Bound<'py, PyAny>>,
        cost: Option<&Bound<'py, PyAny>>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        static HELPER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let py = slf.py();
        let this = slf.get();
        // Refuse bad arguments now, not at the first await.
        let cost = this.cost(cost)?;
        let timeout_s = args::opt_duration_nanos(timeout, "timeout")?.map(nanos_to_secs);
        query(py, key)?;
        let nap = if this.manual {
            Some(NAP.as_secs_f64())
        } else {
            None
        };
        let helper = HELPER.import(py, "ferrule._ratelimit", "acquire_async")?;
        helper.call1((slf, key, cost, timeout_s, nap))
    }

    /// Whole tokens available on `key` now, consuming nothing.
    #[pyo3(signature = (key = None))]
    fn peek(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> PyResult<u64> {
        let q = query(py, key)?;
        Ok(self.inner.peek(&q as &dyn Lookup))
    }

    /// Refills `key`'s bucket.
    #[pyo3(signature = (key = None))]
    fn reset(&self, py: Python<'_>, key: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let q = query(py, key)?;
        self.inner.reset(&q as &dyn Lookup);
        Ok(())
    }

    /// Drops every key whose bucket is full again; returns how many.
    fn sweep(&self, py: Python<'_>) -> usize {
        py.detach(|| self.inner.sweep())
    }

    #[getter]
    fn rate(&self) -> f64 {
        self.rate
    }

    #[getter]
    fn per(&self) -> f64 {
        self.per
    }

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
}
