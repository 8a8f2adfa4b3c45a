//! `RateLimiter` and `Decision`: the Python face of `core::ratelimit::Limiter`.
//!
//! Keys are converted to a Rust-native [`KeyRef`] that borrows the caller's str/bytes
//! data (no allocation and no Python object kept on the hit path); only a miss copies the
//! key into an owned [`Key`]. Keys are hashed here, by value only: str and bytes by
//! CPython's value hash (cached on the object; a subclass's `__hash__` is never called),
//! ints by their value, tuples by combining their items. No Python code runs while a map
//! guard is held: keys are converted before the lookup and the limiter calls nothing back.
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
use crate::core::ratelimit::{
    self, Gcra, Key, KeyHashBuilder, KeyRef, Limiter, Lookup, Outcome, Query,
};
use crate::py::args;
use crate::py::wait::{self, SLICE};

/// Longest sleep between two signal checks while `acquire` waits.
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
    /// Builds a decision, for limiters computed elsewhere (`ferrule.redis`) and for tests.
    #[new]
    #[pyo3(signature = (allowed, remaining, retry_after, reset_after))]
    fn new(allowed: bool, remaining: u64, retry_after: f64, reset_after: f64) -> Self {
        Self {
            allowed,
            remaining,
            retry_after,
            reset_after,
        }
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

/// Hash tags that keep equal-looking values of different kinds apart (`"1"` vs `1`).
const TAG_NONE: u64 = 0x243F_6A88_85A3_08D3;
const TAG_INT: u64 = 0x1319_8A2E_0370_7344;
const TAG_BIG: u64 = 0xA409_3822_299F_31D0;
const TAG_STR: u64 = 0x082E_FA98_EC4E_6C89;
const TAG_BYTES: u64 = 0x4528_21E6_38D0_1377;
const TAG_TUPLE: u64 = 0xBE54_66CF_34E9_0C6C;

/// The value hash of a str, bytes or int, ignoring any `__hash__` a subclass defines, so
/// that it depends on the value only (str and bytes cache it on the object).
///
/// # Safety
/// `p` must be a live object that is an instance of `base`.
unsafe fn value_hash(
    py: Python<'_>,
    p: *mut ffi::PyObject,
    base: *mut ffi::PyTypeObject,
) -> PyResult<u64> {
    // SAFETY: `base` is a static builtin type object; its `tp_hash` accepts any instance,
    // which `p` is per the contract.
    unsafe {
        match (*base).tp_hash {
            Some(f) => {
                let h = f(p);
                if h == -1 && !ffi::PyErr_Occurred().is_null() {
                    return Err(PyErr::fetch(py));
                }
                Ok(h as u64)
            }
            None => Err(key_type_error(py, p)),
        }
    }
}

/// Converts a Python key to a borrowed Rust key and its hash.
///
/// Equal keys get equal hashes: every kind is hashed from its value alone (str and bytes
/// by CPython's value hash, cached on the object; ints by their i64 value or, beyond
/// i64, CPython's int hash; tuples by combining their items), with a tag per kind.
///
/// # Safety
/// `p` must be a live object that stays alive for `'a`. str and bytes contents are
/// immutable, and a tuple holds strong references to its items, so every slice borrowed
/// here is valid for `'a`.
unsafe fn key_ref<'a>(py: Python<'_>, p: *mut ffi::PyObject) -> PyResult<(KeyRef<'a>, u64)> {
    // SAFETY: forwarded contract.
    unsafe {
        if ffi::PyTuple_Check(p) != 0 {
            tuple_key(py, p, 0)
        } else {
            scalar_key(py, p)
        }
    }
}

/// [`key_ref`] for a str (also a subclass: hashed by value, ignoring its `__hash__`).
///
/// # Safety
/// As for [`key_ref`]; `p` must be a str.
unsafe fn str_key<'a>(py: Python<'_>, p: *mut ffi::PyObject) -> PyResult<(KeyRef<'a>, u64)> {
    // SAFETY: `p` is a live str per the contract.
    unsafe {
        let mut len: ffi::Py_ssize_t = 0;
        let data = ffi::PyUnicode_AsUTF8AndSize(p, &raw mut len);
        if data.is_null() {
            return Err(PyErr::fetch(py));
        }
        let h = value_hash(py, p, &raw mut ffi::PyUnicode_Type)?;
        // The UTF-8 buffer is cached on the str object and lives as long as it does.
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len as usize);
        let s = std::str::from_utf8_unchecked(bytes);
        Ok((KeyRef::Str(s), ratelimit::mix(h ^ TAG_STR)))
    }
}

/// [`key_ref`] for anything but a tuple.
///
/// # Safety
/// As for [`key_ref`].
#[inline]
unsafe fn scalar_key<'a>(py: Python<'_>, p: *mut ffi::PyObject) -> PyResult<(KeyRef<'a>, u64)> {
    // SAFETY (whole body): `p` is live per the contract; each FFI call below is the one
    // that matches the type just checked, and errors are fetched right after.
    unsafe {
        if p == ffi::Py_None() {
            return Ok((KeyRef::None, TAG_NONE));
        }
        if ffi::PyUnicode_Check(p) != 0 {
            return str_key(py, p);
        }
        if ffi::PyLong_Check(p) != 0 {
            let mut overflow: std::os::raw::c_int = 0;
            let v = ffi::PyLong_AsLongLongAndOverflow(p, &raw mut overflow);
            if overflow != 0 {
                let h = value_hash(py, p, &raw mut ffi::PyLong_Type)?;
                let text = Bound::from_borrowed_ptr(py, p).str()?.to_str()?.to_owned();
                return Ok((KeyRef::BigInt(text), ratelimit::mix(h ^ TAG_BIG)));
            }
            if v == -1 && !ffi::PyErr_Occurred().is_null() {
                return Err(PyErr::fetch(py));
            }
            return Ok((KeyRef::Int(v), ratelimit::mix(v as u64 ^ TAG_INT)));
        }
        if ffi::PyBytes_Check(p) != 0 {
            let data = ffi::PyBytes_AsString(p);
            let len = ffi::PyBytes_Size(p);
            if data.is_null() || len < 0 {
                return Err(PyErr::fetch(py));
            }
            let h = value_hash(py, p, &raw mut ffi::PyBytes_Type)?;
            let b = std::slice::from_raw_parts(data.cast::<u8>(), len as usize);
            return Ok((KeyRef::Bytes(b), ratelimit::mix(h ^ TAG_BYTES)));
        }
        Err(key_type_error(py, p))
    }
}

/// [`key_ref`] for a tuple (kept out of line: it recurses and is the rare case).
///
/// # Safety
/// As for [`key_ref`]; `p` must be a tuple.
#[inline(never)]
unsafe fn tuple_key<'a>(
    py: Python<'_>,
    p: *mut ffi::PyObject,
    depth: u32,
) -> PyResult<(KeyRef<'a>, u64)> {
    if depth >= MAX_DEPTH {
        return Err(PyTypeError::new_err(format!(
            "key must not nest tuples more than {MAX_DEPTH} deep"
        )));
    }
    // SAFETY: `p` is a live tuple per the contract; its items are live while it is, and
    // each item is passed on under the same contract.
    unsafe {
        let n = ffi::PyTuple_Size(p);
        let mut items = Vec::with_capacity(n.max(0) as usize);
        let mut h = TAG_TUPLE ^ (n as u64);
        for i in 0..n {
            let item = ffi::PyTuple_GetItem(p, i);
            if item.is_null() {
                return Err(PyErr::fetch(py));
            }
            let (k, ih) = if ffi::PyTuple_Check(item) != 0 {
                tuple_key(py, item, depth + 1)?
            } else {
                scalar_key(py, item)?
            };
            h = ratelimit::mix(h.rotate_left(5) ^ ih);
            items.push(k);
        }
        Ok((KeyRef::Tuple(items), h))
    }
}

/// The lookup form of an optional key argument (absent means `None`).
///
/// The exact-str case is written out here rather than called, so that it compiles into
/// the method with the key built in place (a call returning the key enum through memory
/// costs a store-forwarding stall per field on the hottest path).
#[inline]
fn query<'a>(py: Python<'_>, key: Option<&'a Bound<'_, PyAny>>) -> PyResult<Query<'a>> {
    let Some(k) = key else {
        return Ok(Query::with_hash(KeyRef::None, TAG_NONE));
    };
    let p = k.as_ptr();
    // SAFETY: `k` is borrowed for `'a`, so the object (and the UTF-8 buffer cached on a
    // str, and a tuple's items) outlives the returned query; the FFI calls match the type
    // just checked.
    unsafe {
        if ffi::PyUnicode_CheckExact(p) != 0 {
            let mut len: ffi::Py_ssize_t = 0;
            let data = ffi::PyUnicode_AsUTF8AndSize(p, &raw mut len);
            if !data.is_null() {
                let h = ffi::PyObject_Hash(p);
                if h != -1 {
                    let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len as usize);
                    let s = std::str::from_utf8_unchecked(bytes);
                    return Ok(Query::with_hash(
                        KeyRef::Str(s),
                        ratelimit::mix(h as u64 ^ TAG_STR),
                    ));
                }
            }
            return Err(PyErr::fetch(py));
        }
        let (kind, hash) = key_ref(py, p)?;
        Ok(Query::with_hash(kind, hash))
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
    fn decide(&self, q: &Query<'_>, cost: u64) -> Outcome {
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
        Ok(self.inner.gcra().decision(self.decide(&q, cost)).into())
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
            let o = self.decide(&q, cost);
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
            Some(SLICE.as_secs_f64())
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
        wait::detach(py, || self.inner.sweep())
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
