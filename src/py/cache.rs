//! `Cache`: the Python face of `core::cache::ShardedCache` over Python keys and values.
//!
//! Keys are compared with dict semantics (identity first, then `==`), but `==` on a key
//! that could run user code (`__eq__` of a user class) is never called under a shard
//! lock: such comparisons are resolved outside it (see the core's module docs). Keys made
//! only of exact builtin scalars (int, float, bool, str, bytes, None, and tuples of them)
//! compare in C without user code, so they are compared under the lock directly.
//! Everything the cache drops (evicted, expired, replaced) is dropped after the lock is
//! released, because a value's `__del__` may run Python.
//!
//! `get_or_set` is single-flight: the first caller for a missing key registers a flight
//! in a second sharded table and runs the factory with no lock held; later callers for
//! that key find the flight and wait on it with the GIL released.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

use parking_lot::{Condvar, Mutex};
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::core::cache::{mix, Fast, KeyQuery, Match, ShardedCache, Stats, NEVER};
use crate::core::clock::{nanos_to_secs, Clock};
use crate::py::{args, wait};

/// A stored key: the object and how it compares.
pub struct PyKey {
    obj: Py<PyAny>,
    kind: KeyKind,
}

/// How a key compares. `Int` keys (exact ints, bools and integral floats that fit in
/// 64 bits) compare by value without touching the stored object, which saves a cache
/// miss per lookup; `Plain` keys are exact builtin values whose `==` is C code; `User`
/// keys may run `__eq__` and are only compared outside the lock.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Int(i64),
    Plain,
    User,
}

/// True for exact builtin values whose `==` runs no user code.
fn is_plain(obj: &Bound<'_, PyAny>, depth: u32) -> bool {
    let p = obj.as_ptr();
    // SAFETY: `p` is a valid, live object pointer for the duration of this call; the
    // checks only read its type.
    unsafe {
        if ffi::PyLong_CheckExact(p) != 0
            || ffi::PyUnicode_CheckExact(p) != 0
            || ffi::PyBytes_CheckExact(p) != 0
            || ffi::PyFloat_CheckExact(p) != 0
            || ffi::PyBool_Check(p) != 0
            || p == ffi::Py_None()
        {
            return true;
        }
        if ffi::PyTuple_CheckExact(p) != 0 && depth < 4 {
            let t = obj.cast_unchecked::<PyTuple>();
            return t.iter().all(|item| is_plain(&item, depth + 1));
        }
    }
    false
}

/// `==` between two exact builtin values, decided without running any Python code: same
/// type str/bytes compare by content, numbers by value, tuples item by item; any other mix
/// of types is unequal (as `==` says for them). `str == bytes` is never asked of Python,
/// so `python -b` cannot emit a warning (and run the warnings machinery) under a lock.
///
/// # Safety
/// `a` and `b` must be live objects that `is_plain` accepted.
unsafe fn plain_eq(a: *mut ffi::PyObject, b: *mut ffi::PyObject, depth: u32) -> bool {
    if a == b {
        return true;
    }
    // SAFETY (whole block): the caller guarantees live exact builtin objects; the
    // functions called only read them and run C code.
    unsafe {
        let numeric = |p| {
            ffi::PyLong_CheckExact(p) != 0
                || ffi::PyFloat_CheckExact(p) != 0
                || ffi::PyBool_Check(p) != 0
        };
        let same_type = ffi::Py_TYPE(a) == ffi::Py_TYPE(b);
        let comparable = (same_type
            && (ffi::PyUnicode_CheckExact(a) != 0 || ffi::PyBytes_CheckExact(a) != 0))
            || (numeric(a) && numeric(b));
        if comparable {
            return match ffi::PyObject_RichCompareBool(a, b, ffi::Py_EQ) {
                1 => true,
                0 => false,
                _ => {
                    // Only MemoryError is possible here; treat as unequal.
                    ffi::PyErr_Clear();
                    false
                }
            };
        }
        if same_type && ffi::PyTuple_CheckExact(a) != 0 && depth < 4 {
            let n = ffi::PyTuple_GET_SIZE(a);
            return n == ffi::PyTuple_GET_SIZE(b)
                && (0..n).all(|i| {
                    plain_eq(
                        ffi::PyTuple_GET_ITEM(a, i),
                        ffi::PyTuple_GET_ITEM(b, i),
                        depth + 1,
                    )
                });
        }
    }
    false
}

#[inline]
fn classify(obj: &Bound<'_, PyAny>) -> KeyKind {
    let p = obj.as_ptr();
    // SAFETY: `p` is live; the calls read an exact int's or float's value and cannot run
    // user code. Overflow is reported through `overflow`, not as an exception.
    unsafe {
        if ffi::PyLong_CheckExact(p) != 0 || ffi::PyBool_Check(p) != 0 {
            let mut overflow = 0;
            let v = ffi::PyLong_AsLongAndOverflow(p, &raw mut overflow);
            return if overflow == 0 {
                #[allow(clippy::useless_conversion)] // c_long is 32-bit on Windows
                KeyKind::Int(i64::from(v))
            } else {
                KeyKind::Plain
            };
        }
        if ffi::PyFloat_CheckExact(p) != 0 {
            let f = ffi::PyFloat_AS_DOUBLE(p);
            // Integral floats equal the int of the same value (1.0 == 1), as in a dict.
            #[allow(clippy::float_cmp)]
            let integral = f.trunc() == f && f.abs() < 9.0e18;
            return if integral {
                KeyKind::Int(f as i64)
            } else {
                KeyKind::Plain
            };
        }
    }
    if is_plain(obj, 0) {
        KeyKind::Plain
    } else {
        KeyKind::User
    }
}

/// A caller's key prepared for lookups: the object, its hash and its class of equality.
pub struct Query<'a, 'py> {
    key: &'a Bound<'py, PyAny>,
    kind: KeyKind,
    hash: u64,
}

impl<'a, 'py> Query<'a, 'py> {
    /// Hashes the key once; an unhashable key gives a TypeError naming `key`.
    #[inline]
    pub fn new(key: &'a Bound<'py, PyAny>) -> PyResult<Self> {
        let hash = match key.hash() {
            Ok(h) => h,
            Err(e) => {
                let unhashable = e.is_instance_of::<PyTypeError>(key.py())
                    && key
                        .get_type()
                        .getattr("__hash__")
                        .is_ok_and(|h| h.is_none());
                if unhashable {
                    let tname = key
                        .get_type()
                        .name()
                        .map_or_else(|_| "?".to_owned(), |n| n.to_string());
                    return Err(PyTypeError::new_err(format!(
                        "key must be hashable, not '{tname}'"
                    )));
                }
                return Err(e);
            }
        };
        Ok(Self {
            key,
            kind: classify(key),
            hash: mix(hash as u64),
        })
    }

    fn stored(&self) -> PyKey {
        PyKey {
            obj: self.key.clone().unbind(),
            kind: self.kind,
        }
    }

    fn py(&self) -> Python<'py> {
        self.key.py()
    }
}

/// Values the cache tables hold, copied out under the lock.
pub trait PyClone {
    fn py_clone(&self, py: Python<'_>) -> Self;
}

impl PyClone for Py<PyAny> {
    fn py_clone(&self, py: Python<'_>) -> Self {
        self.clone_ref(py)
    }
}

impl PyClone for Arc<Flight> {
    fn py_clone(&self, _: Python<'_>) -> Self {
        self.clone()
    }
}

impl<V: PyClone> KeyQuery<PyKey, V> for Query<'_, '_> {
    type Error = PyErr;

    #[inline]
    fn quick_eq(&self, stored: &PyKey) -> Match {
        let a = stored.obj.as_ptr();
        let b = self.key.as_ptr();
        if a == b {
            return Match::Equal;
        }
        match (self.kind, stored.kind) {
            (KeyKind::Int(x), KeyKind::Int(y)) => {
                return if x == y {
                    Match::Equal
                } else {
                    Match::NotEqual
                }
            }
            (KeyKind::User, _) | (_, KeyKind::User) => return Match::Unknown,
            _ => {}
        }
        // SAFETY: both pointers are live objects and both keys are exact builtin values.
        if unsafe { plain_eq(b, a, 0) } {
            Match::Equal
        } else {
            Match::NotEqual
        }
    }

    fn slow_eq(&self, stored: &PyKey) -> PyResult<bool> {
        // dict semantics: the stored key is the left operand.
        stored.obj.bind(self.py()).eq(self.key)
    }

    fn clone_key(&self, key: &PyKey) -> PyKey {
        PyKey {
            obj: key.obj.clone_ref(self.py()),
            kind: key.kind,
        }
    }

    fn clone_value(&self, value: &V) -> V {
        value.py_clone(self.py())
    }
}

/// One in-progress `get_or_set` factory call that other callers for the key wait on.
pub struct Flight {
    leader: ThreadId,
    /// `Ok(value)` or `Err(exception instance)` once the factory finished.
    result: Mutex<Option<Result<Py<PyAny>, Py<PyAny>>>>,
    done: Condvar,
}

impl Flight {
    fn new() -> Self {
        Self {
            leader: std::thread::current().id(),
            result: Mutex::new(None),
            done: Condvar::new(),
        }
    }

    fn complete(&self, r: Result<Py<PyAny>, Py<PyAny>>) {
        *self.result.lock() = Some(r);
        self.done.notify_all();
    }

    /// Waits with the GIL released, checking for signals every 50 ms.
    fn wait(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        loop {
            let finished = wait::detach(py, || {
                let mut g = self.result.lock();
                if g.is_none() {
                    self.done.wait_for(&mut g, wait::SLICE);
                }
                g.is_some()
            });
            if finished {
                break;
            }
            py.check_signals()?;
        }
        match self.result.lock().as_ref() {
            Some(Ok(v)) => Ok(v.clone_ref(py)),
            Some(Err(e)) => Err(PyErr::from_value(e.bind(py).clone())),
            None => Err(PyRuntimeError::new_err(
                "get_or_set flight ended without a result",
            )),
        }
    }
}

/// A dropped-after-unlock pile.
type Grave = Vec<(PyKey, Py<PyAny>)>;

/// A thread-safe, sharded LRU cache with optional TTL.
#[pyclass(frozen, module = "ferrule._native", name = "Cache")]
pub struct Cache {
    inner: ShardedCache<PyKey, Py<PyAny>>,
    flights: ShardedCache<PyKey, Arc<Flight>>,
    default_ttl: Option<i64>,
    clock: Clock,
    /// Set once any entry may carry a deadline; until then reads skip the clock.
    uses_ttl: AtomicBool,
}

impl Cache {
    /// The clock reading for this operation; `i64::MIN` (everything live) while no entry
    /// can expire, which saves a clock read per call.
    #[inline]
    fn now(&self) -> i64 {
        if self.uses_ttl.load(Ordering::Acquire) {
            self.clock.now_nanos()
        } else {
            i64::MIN
        }
    }

    /// The deadline for an entry set now with `ttl` (or the cache's default).
    fn deadline(&self, ttl: Option<i64>) -> i64 {
        match ttl.or(self.default_ttl) {
            None => NEVER,
            Some(d) => {
                self.uses_ttl.store(true, Ordering::Release);
                self.clock.now_nanos().saturating_add(d)
            }
        }
    }

    #[inline]
    fn lookup(&self, q: &Query<'_, '_>, count: bool) -> PyResult<Option<Py<PyAny>>> {
        let now = self.now();
        match self.inner.get_fast(q.hash, q, now, count) {
            Fast::Hit(v) => Ok(Some(v)),
            Fast::Miss => Ok(None),
            Fast::Slow => {
                let mut grave: Grave = Vec::new();
                self.inner.get(q.hash, q, now, count, &mut grave)
            }
        }
    }

    fn store(&self, q: &Query<'_, '_>, value: Py<PyAny>, ttl: Option<i64>) -> PyResult<()> {
        let mut grave: Grave = Vec::new();
        let expires = self.deadline(ttl);
        self.inner.set(
            q.hash,
            q,
            || q.stored(),
            value,
            expires,
            self.now(),
            &mut grave,
        )
    }

    fn take(&self, q: &Query<'_, '_>) -> PyResult<Option<Py<PyAny>>> {
        let mut grave: Grave = Vec::new();
        self.inner.remove(q.hash, q, self.now(), &mut grave)
    }

    /// The leader's part of `get_or_set`: run the factory (no lock held) and store.
    fn lead(
        &self,
        q: &Query<'_, '_>,
        factory: &Bound<'_, PyAny>,
        ttl: Option<i64>,
    ) -> PyResult<Py<PyAny>> {
        // Another leader may have stored the value between our miss and our flight.
        if let Some(v) = self.lookup(q, false)? {
            return Ok(v);
        }
        let v = wait::call0(factory)?.unbind();
        self.store(q, v.clone_ref(q.py()), ttl)?;
        Ok(v)
    }
}

/// Ends a flight exactly once: removes it from the table and wakes its waiters, also when
/// the leader unwinds.
struct FlightGuard<'c, 'a, 'py> {
    cache: &'c Cache,
    q: &'c Query<'a, 'py>,
    flight: Arc<Flight>,
    result: Option<Result<Py<PyAny>, Py<PyAny>>>,
}

impl Drop for FlightGuard<'_, '_, '_> {
    fn drop(&mut self) {
        let flight = &self.flight;
        let mut grave: Vec<(PyKey, Arc<Flight>)> = Vec::new();
        self.cache.flights.with_shard(self.q.hash, |s| {
            if let Some(h) = s.handle_where(self.q.hash, |f| Arc::ptr_eq(f, flight)) {
                grave.push(s.remove(h));
            }
        });
        let r = self.result.take().unwrap_or_else(|| {
            Err(PyRuntimeError::new_err("get_or_set factory did not finish")
                .into_value(self.q.py())
                .into_any())
        });
        flight.complete(r);
    }
}

#[pymethods]
impl Cache {
    #[new]
    #[pyo3(signature = (max_size, *, ttl = None, shards = None, clock = None))]
    fn new(
        max_size: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        shards: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let max_size = args::int_at_least(max_size, "max_size", 1)? as usize;
        let shards = match shards {
            Some(s) if !s.is_none() => Some(args::int_at_least(s, "shards", 1)? as usize),
            _ => None,
        };
        let default_ttl = args::opt_positive_nanos(ttl, "ttl")?;
        let clock = args::clock(clock)?;
        // With the GIL every call is serialised anyway, so one shard (exact LRU, the best
        // locality) is the fastest default; free-threaded builds shard by CPU count.
        let shards = if cfg!(Py_GIL_DISABLED) {
            shards
        } else {
            shards.or(Some(1))
        };
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let inner = ShardedCache::new(max_size, shards, cpus)?;
        // Flights are bounded by the callers blocked in get_or_set; the cap is a backstop.
        let flights = ShardedCache::new(
            inner.shard_count() * 65_536,
            Some(inner.shard_count()),
            cpus,
        )?;
        Ok(Self {
            inner,
            flights,
            default_ttl,
            uses_ttl: AtomicBool::new(default_ttl.is_some()),
            clock,
        })
    }

    /// The value for `key`, or `default` when it is missing or expired.
    #[pyo3(signature = (key, default = None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match self.lookup(&Query::new(key)?, true)? {
            Some(v) => Ok(v),
            None => Ok(default.unwrap_or_else(|| py.None())),
        }
    }

    #[pyo3(signature = (key, value, *, ttl = None))]
    fn set(
        &self,
        key: &Bound<'_, PyAny>,
        value: Py<PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = args::opt_positive_nanos(ttl, "ttl")?;
        self.store(&Query::new(key)?, value, ttl)
    }

    /// Removes `key`; True if a live entry was removed.
    fn delete(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.take(&Query::new(key)?)?.is_some())
    }

    /// Removes `key` and returns its value; `default` (or KeyError) when missing.
    #[pyo3(signature = (key, *default))]
    fn pop(&self, key: &Bound<'_, PyAny>, default: &Bound<'_, PyTuple>) -> PyResult<Py<PyAny>> {
        if default.len() > 1 {
            return Err(PyTypeError::new_err(format!(
                "pop expected at most 2 arguments, got {}",
                default.len() + 1
            )));
        }
        match self.take(&Query::new(key)?)? {
            Some(v) => Ok(v),
            None if default.len() == 1 => Ok(default.get_item(0)?.unbind()),
            None => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    /// The value for `key`; on a miss exactly one caller runs `factory()` and the others
    /// wait for its result (or its exception; then nothing is cached).
    #[pyo3(signature = (key, factory, *, ttl = None))]
    fn get_or_set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        factory: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let ttl = args::opt_positive_nanos(ttl, "ttl")?;
        if !factory.is_callable() {
            return Err(crate::errors::wrong_type("factory", "callable", factory));
        }
        let q = Query::new(key)?;
        if let Some(v) = self.lookup(&q, true)? {
            return Ok(v);
        }
        let mut grave: Vec<(PyKey, Arc<Flight>)> = Vec::new();
        let joined = self.flights.with_key(q.hash, &q, |s, h| match h {
            Some(h) => Err(s.value(h).clone()),
            None => {
                let f = Arc::new(Flight::new());
                s.insert(q.hash, q.stored(), f.clone(), NEVER, 0, &mut grave);
                Ok(f)
            }
        })?;
        drop(grave);
        match joined {
            Err(flight) => {
                if flight.leader == std::thread::current().id() {
                    return Err(PyRuntimeError::new_err(
                        "get_or_set called recursively for the same key by its own factory",
                    ));
                }
                flight.wait(py)
            }
            Ok(flight) => {
                let mut guard = FlightGuard {
                    cache: self,
                    q: &q,
                    flight,
                    result: None,
                };
                let r = self.lead(&q, factory, ttl);
                guard.result = Some(match &r {
                    Ok(v) => Ok(v.clone_ref(py)),
                    Err(e) => Err(e.value(py).clone().into_any().unbind()),
                });
                drop(guard);
                r
            }
        }
    }

    /// Removes every entry.
    fn clear(&self) {
        let mut grave: Grave = Vec::new();
        self.inner.clear(&mut grave);
    }

    /// Removes expired entries now; returns how many.
    fn expire(&self) -> usize {
        let mut grave: Grave = Vec::new();
        if !self.uses_ttl.load(Ordering::Acquire) {
            return 0;
        }
        self.inner.expire(self.clock.now_nanos(), &mut grave)
    }

    /// Keys of the live entries (a snapshot).
    fn keys(&self, py: Python<'_>) -> Vec<Py<PyAny>> {
        self.inner.snapshot(self.now(), |k, _| k.obj.clone_ref(py))
    }

    fn values(&self, py: Python<'_>) -> Vec<Py<PyAny>> {
        self.inner.snapshot(self.now(), |_, v| v.clone_ref(py))
    }

    fn items(&self, py: Python<'_>) -> Vec<(Py<PyAny>, Py<PyAny>)> {
        self.inner
            .snapshot(self.now(), |k, v| (k.obj.clone_ref(py), v.clone_ref(py)))
    }

    fn stats(&self) -> CacheStats {
        let mut grave: Grave = Vec::new();
        if self.uses_ttl.load(Ordering::Acquire) {
            // `size` counts live entries only.
            self.inner.expire(self.clock.now_nanos(), &mut grave);
        }
        CacheStats::from(self.inner.stats())
    }

    #[getter]
    fn max_size(&self) -> usize {
        self.inner.max_size()
    }

    #[getter]
    fn ttl(&self) -> Option<f64> {
        self.default_ttl.map(nanos_to_secs)
    }

    #[getter]
    fn shards(&self) -> usize {
        self.inner.shard_count()
    }

    fn __len__(&self) -> usize {
        let mut grave: Grave = Vec::new();
        self.inner.len(self.now(), &mut grave)
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.lookup(&Query::new(key)?, false)?.is_some())
    }

    fn __getitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match self.lookup(&Query::new(key)?, true)? {
            Some(v) => Ok(v),
            None => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    fn __setitem__(&self, key: &Bound<'_, PyAny>, value: Py<PyAny>) -> PyResult<()> {
        self.store(&Query::new(key)?, value, None)
    }

    fn __delitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        match self.take(&Query::new(key)?)? {
            Some(_) => Ok(()),
            None => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    fn __iter__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let keys = PyList::new(py, self.keys(py))?;
        Ok(keys.as_any().try_iter()?.into_any().unbind())
    }

    fn __repr__(&self) -> String {
        let ttl = self
            .default_ttl
            .map_or_else(|| "None".to_owned(), |t| nanos_to_secs(t).to_string());
        format!(
            "Cache(max_size={}, ttl={ttl}, shards={})",
            self.inner.max_size(),
            self.inner.shard_count()
        )
    }
}

/// Counters of a `Cache`, summed over its shards.
#[pyclass(frozen, get_all, module = "ferrule._native", name = "CacheStats")]
pub struct CacheStats {
    hits: u64,
    misses: u64,
    inserts: u64,
    evictions: u64,
    expirations: u64,
    size: u64,
    max_size: u64,
}

impl From<Stats> for CacheStats {
    fn from(s: Stats) -> Self {
        Self {
            hits: s.hits,
            misses: s.misses,
            inserts: s.inserts,
            evictions: s.evictions,
            expirations: s.expirations,
            size: s.size,
            max_size: s.max_size,
        }
    }
}

#[pymethods]
impl CacheStats {
    /// Hits over lookups (0.0 before the first lookup).
    #[getter]
    fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "CacheStats(hits={}, misses={}, inserts={}, evictions={}, expirations={}, size={}, max_size={})",
            self.hits, self.misses, self.inserts, self.evictions, self.expirations, self.size, self.max_size
        )
    }
}
