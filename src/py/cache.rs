//! `Cache`: the Python face of `core::cache::ShardedCache` over Python keys and values.
//!
//! Keys are compared with dict semantics (identity first, then `==`), but `==` on a key
//! that could run user code (`__eq__` of a user class) is never called under a shard
//! lock: such comparisons are resolved outside it (see the core's module docs). Keys made
//! only of exact builtin scalars (int, float, bool, str, bytes, None, and tuples of them)
//! compare in C without user code, so they are compared under the lock directly.
//! Everything the cache drops (evicted, expired, replaced, cleared) is dropped after the
//! lock is released, because a value's `__del__` may run Python.
//!
//! Time: each operation reads the clock once, and a write computes its deadline from that
//! same reading (`now + ttl` cannot overflow: a ManualClock stops at 2^62 ns and a ttl is
//! at most 4e9 s, together below `i64::MAX`).
//!
//! `get_or_set` is single-flight: the first caller for a missing key registers a flight
//! in a second sharded table and runs the factory with no lock held; later callers for
//! that key find the flight and wait on it with the GIL released. A factory that raises
//! an `Exception` ends the flight with that exception for every waiter (nothing cached);
//! a leader that leaves with any other `BaseException` (KeyboardInterrupt, SystemExit,
//! ...) keeps it to itself and *abandons* the flight: the waiters look again and one of
//! them leads a new flight.
//!
//! Garbage collection: `Cache` visits every key and value it holds (and the keys of
//! flights in progress), skipping a shard whose lock is held rather than waiting for it;
//! `__clear__` swaps every shard's contents out under its lock and drops them after.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

use parking_lot::{Condvar, Mutex};
use pyo3::exceptions::{PyException, PyKeyError, PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyList, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::cache::{mix, AllocError, Fast, KeyQuery, Match, ShardedCache, Stats, NEVER};
use crate::core::clock::{nanos_to_secs, Clock};
use crate::errors::wrong_type;
use crate::py::{args, wait};

/// Single-flight entries a shard of the flight table holds at most: one per caller
/// blocked in `get_or_set` on that shard, so the bound is a backstop (at most
/// `MAX_SHARDS * FLIGHTS_PER_SHARD = 2^26`, within the core's `MAX_SIZE`).
const FLIGHTS_PER_SHARD: usize = 65_536;

/// A size argument (`int`, bool refused), saturated to `0..=usize::MAX` so that any int,
/// however large or negative, reaches the core's range check and its message.
fn size_arg(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<usize> {
    if !obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyBool>() {
        return Err(wrong_type(arg, "an int", obj));
    }
    let mut overflow = 0;
    // SAFETY: `obj` is a live int (or subclass; its value is read without calling
    // Python); overflow is reported through `overflow`, not as an exception.
    let v = unsafe { ffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &raw mut overflow) };
    if v == -1 && overflow == 0 {
        if let Some(e) = PyErr::take(obj.py()) {
            return Err(e);
        }
    }
    Ok(match overflow {
        0 => usize::try_from(v).unwrap_or(if v < 0 { 0 } else { usize::MAX }),
        o if o > 0 => usize::MAX,
        _ => 0,
    })
}

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

    #[inline]
    fn same_key(&self, a: &PyKey, b: &PyKey) -> bool {
        a.obj.as_ptr() == b.obj.as_ptr()
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

/// How a flight ended.
enum Outcome {
    /// The factory returned this value (and it was stored).
    Value(Py<PyAny>),
    /// The factory raised this `Exception` (the instance, normalized by the leader with
    /// no lock held): every waiter raises it too.
    Error(Py<PyAny>),
    /// The leader left without a result: its factory raised a BaseException that is not
    /// an Exception (KeyboardInterrupt, SystemExit, ...), which is the leader's alone, or
    /// the leader unwound. Waiters look again; one of them leads a new flight.
    Abandoned,
}

/// One in-progress `get_or_set` factory call that other callers for the key wait on.
pub struct Flight {
    leader: ThreadId,
    /// Set once, when the flight ends (after it left the flight table).
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
}

impl Flight {
    fn new() -> Self {
        Self {
            leader: std::thread::current().id(),
            outcome: Mutex::new(None),
            done: Condvar::new(),
        }
    }

    fn complete(&self, outcome: Outcome) {
        // Nothing is dropped under the lock: the slot is empty until this one write.
        let previous = self.outcome.lock().replace(outcome);
        self.done.notify_all();
        drop(previous);
    }

    /// Waits with the GIL released, checking for signals every slice. `Ok(None)` when the
    /// leader abandoned the flight.
    fn wait(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        loop {
            let finished = wait::detach(py, || {
                let mut g = self.outcome.lock();
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
        // Only new references are taken under the lock; the error is built after it.
        let outcome = match self.outcome.lock().as_ref() {
            Some(Outcome::Value(v)) => Some(Ok(v.clone_ref(py))),
            Some(Outcome::Error(e)) => Some(Err(e.clone_ref(py))),
            Some(Outcome::Abandoned) | None => None,
        };
        match outcome {
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(e)) => Err(PyErr::from_value(e.into_bound(py))),
            None => Ok(None),
        }
    }
}

/// A dropped-after-unlock pile.
type Grave = Vec<(PyKey, Py<PyAny>)>;

/// A thread-safe, sharded LRU cache with optional TTL.
#[pyclass(frozen, module = "ferrule", name = "Cache")]
pub struct Cache {
    inner: ShardedCache<PyKey, Py<PyAny>>,
    flights: ShardedCache<PyKey, Arc<Flight>>,
    default_ttl: Option<i64>,
    clock: Clock,
    /// Set once any entry may carry a deadline; until then reads skip the clock.
    uses_ttl: AtomicBool,
}

/// What a caller of `get_or_set` found in the flight table.
enum Joined {
    Lead(Arc<Flight>),
    Wait(Arc<Flight>),
    /// No memory to register a flight; dropped after the lock is released.
    NoRoom((PyKey, Arc<Flight>)),
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

    /// The one clock reading of a write and the deadline it gives an entry with `ttl`
    /// (or the cache's default), so the deadline is never behind the `now` the write
    /// reclaims with.
    #[inline]
    fn stamp(&self, ttl: Option<i64>) -> (i64, i64) {
        match ttl.or(self.default_ttl) {
            None => (self.now(), NEVER),
            Some(d) => {
                if !self.uses_ttl.load(Ordering::Relaxed) {
                    self.uses_ttl.store(true, Ordering::Release);
                }
                let now = self.clock.now_nanos();
                // Exact in practice: a ManualClock stops at MAX_READING (2^62 ns) and `d`
                // is at most MAX_SECONDS (4e18 ns), so the sum stays below i64::MAX; the
                // monotonic clock counts from process start. Saturating keeps this total:
                // a saturated deadline is NEVER, which is what ~292 years means anyway.
                (now, now.saturating_add(d))
            }
        }
    }

    #[inline]
    fn lookup(&self, q: &Query<'_, '_>, count: bool) -> PyResult<Option<Py<PyAny>>> {
        let now = self.now();
        match self.inner.get_fast(q.hash, q, now, count) {
            Fast::Hit(v) => Ok(Some(v)),
            Fast::Miss => Ok(None),
            Fast::Slow => self.inner.get(q.hash, q, now, count),
        }
    }

    fn store(&self, q: &Query<'_, '_>, value: Py<PyAny>, ttl: Option<i64>) -> PyResult<()> {
        let mut grave: Grave = Vec::new();
        let (now, expires) = self.stamp(ttl);
        let r = self
            .inner
            .set(q.hash, q, || q.stored(), value, expires, now, &mut grave);
        drop(grave); // after the lock: evicted and expired entries may run __del__
        r
    }

    fn take(&self, q: &Query<'_, '_>) -> PyResult<Option<Py<PyAny>>> {
        self.inner.remove(q.hash, q, self.now())
    }

    /// Registers a flight for `q`, or finds the one in progress.
    fn join(&self, q: &Query<'_, '_>) -> PyResult<Joined> {
        let mut grave: Vec<(PyKey, Arc<Flight>)> = Vec::new();
        let joined = self.flights.with_key(q.hash, q, |s, h| {
            if let Some(f) = h.and_then(|h| s.value(h)) {
                return Joined::Wait(f.clone());
            }
            let f = Arc::new(Flight::new());
            match s.insert(q.hash, q.stored(), f.clone(), NEVER, 0, &mut grave) {
                Ok(_) => Joined::Lead(f),
                Err(unstored) => Joined::NoRoom(unstored),
            }
        });
        drop(grave); // a flight pushed out by the table's bound (a backstop)
        joined
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

    /// Total live entries, reclaiming expired ones first.
    fn live_len(&self) -> PyResult<usize> {
        let mut grave: Grave = Vec::new();
        Ok(self.inner.len(self.now(), &mut grave)?)
    }
}

/// Ends a flight exactly once: removes it from the table and wakes its waiters, also when
/// the leader unwinds (then the flight is abandoned).
struct FlightGuard<'c, 'a, 'py> {
    cache: &'c Cache,
    q: &'c Query<'a, 'py>,
    flight: Arc<Flight>,
    outcome: Option<Outcome>,
}

impl Drop for FlightGuard<'_, '_, '_> {
    fn drop(&mut self) {
        let flight = &self.flight;
        let removed = self.cache.flights.with_shard(self.q.hash, |s| {
            s.handle_where(self.q.hash, |f| Arc::ptr_eq(f, flight))
                .and_then(|h| s.remove(h))
        });
        drop(removed); // after the lock: the key may run __del__
        flight.complete(self.outcome.take().unwrap_or(Outcome::Abandoned));
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
        let max_size = size_arg(max_size, "max_size")?;
        let shards = match shards {
            Some(s) if !s.is_none() => Some(size_arg(s, "shards")?),
            _ => None,
        };
        // With the GIL every call is serialised anyway, so one shard (exact LRU, the best
        // locality) is the fastest default; free-threaded builds shard by CPU count.
        let shards = if cfg!(Py_GIL_DISABLED) {
            shards
        } else {
            shards.or(Some(1))
        };
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let inner = ShardedCache::new(max_size, shards, cpus)?;
        let n = inner.shard_count();
        // n <= MAX_SHARDS, so the product is far below MAX_SIZE.
        let flights = ShardedCache::new(n * FLIGHTS_PER_SHARD, Some(n), cpus)?;
        let default_ttl = args::opt_positive_nanos(ttl, "ttl")?;
        let clock = args::clock(clock)?;
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
                default.len().saturating_add(1)
            )));
        }
        match self.take(&Query::new(key)?)? {
            Some(v) => Ok(v),
            None if default.len() == 1 => Ok(default.get_item(0)?.unbind()),
            None => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    /// The value for `key`; on a miss exactly one caller runs `factory()` and the others
    /// wait for its result (or its exception; then nothing is cached). A leader that
    /// leaves with a BaseException that is not an Exception keeps it; a waiter leads then.
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
            return Err(wrong_type("factory", "callable", factory));
        }
        let q = Query::new(key)?;
        // Only the first look counts a hit or a miss; looks after an abandoned flight
        // belong to the same call.
        let mut count = true;
        loop {
            if let Some(v) = self.lookup(&q, count)? {
                return Ok(v);
            }
            count = false;
            match self.join(&q)? {
                Joined::NoRoom(unstored) => {
                    drop(unstored);
                    return Err(AllocError.into());
                }
                Joined::Wait(flight) => {
                    if flight.leader == std::thread::current().id() {
                        return Err(PyRuntimeError::new_err(
                            "get_or_set called recursively for the same key by its own factory",
                        ));
                    }
                    if let Some(v) = flight.wait(py)? {
                        return Ok(v);
                    }
                    // Abandoned: look again (the value may be there), then join or lead.
                }
                Joined::Lead(flight) => {
                    let mut guard = FlightGuard {
                        cache: self,
                        q: &q,
                        flight,
                        outcome: None,
                    };
                    let r = self.lead(&q, factory, ttl);
                    guard.outcome = Some(match &r {
                        Ok(v) => Outcome::Value(v.clone_ref(py)),
                        Err(e) if e.is_instance_of::<PyException>(py) => {
                            Outcome::Error(e.value(py).clone().into_any().unbind())
                        }
                        Err(_) => Outcome::Abandoned,
                    });
                    drop(guard);
                    return r;
                }
            }
        }
    }

    /// Removes every entry.
    fn clear(&self) {
        self.inner.clear();
    }

    /// Removes expired entries now; returns how many.
    fn expire(&self) -> PyResult<usize> {
        if !self.uses_ttl.load(Ordering::Acquire) {
            return Ok(0);
        }
        let mut grave: Grave = Vec::new();
        Ok(self.inner.expire(self.clock.now_nanos(), &mut grave)?)
    }

    /// Keys of the live entries (a snapshot).
    fn keys(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        Ok(self
            .inner
            .snapshot(self.now(), |k, _| k.obj.clone_ref(py))?)
    }

    fn values(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        Ok(self.inner.snapshot(self.now(), |_, v| v.clone_ref(py))?)
    }

    fn items(&self, py: Python<'_>) -> PyResult<Vec<(Py<PyAny>, Py<PyAny>)>> {
        Ok(self
            .inner
            .snapshot(self.now(), |k, v| (k.obj.clone_ref(py), v.clone_ref(py)))?)
    }

    fn stats(&self) -> PyResult<CacheStats> {
        if self.uses_ttl.load(Ordering::Acquire) {
            // `size` counts live entries only.
            let mut grave: Grave = Vec::new();
            self.inner.expire(self.clock.now_nanos(), &mut grave)?;
        }
        Ok(CacheStats::from(self.inner.stats()))
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

    fn __len__(&self) -> PyResult<usize> {
        self.live_len()
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
        let keys = PyList::new(py, self.keys(py)?)?;
        Ok(keys.as_any().try_iter()?.into_any().unbind())
    }

    /// Visits every key and value (and the keys of flights in progress). Never blocks:
    /// a shard whose lock is held is skipped, which only makes the collector keep more.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.inner.try_for_each(|k, v| {
            visit.call(&k.obj)?;
            visit.call(v)
        })?;
        self.flights.try_for_each(|k, _| visit.call(&k.obj))
    }

    /// Breaks reference cycles: every shard's contents are swapped out under its lock and
    /// dropped after it is released. A flight in progress stays with its leader and
    /// waiters (they hold it), so they still finish.
    fn __clear__(&self) {
        self.inner.clear();
        self.flights.clear();
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
#[pyclass(frozen, get_all, module = "ferrule", name = "CacheStats")]
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
        // In floats: the u64 sum could overflow, the float one cannot.
        let total = self.hits as f64 + self.misses as f64;
        if total == 0.0 {
            0.0
        } else {
            self.hits as f64 / total
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "CacheStats(hits={}, misses={}, inserts={}, evictions={}, expirations={}, size={}, max_size={})",
            self.hits, self.misses, self.inserts, self.evictions, self.expirations, self.size, self.max_size
        )
    }
}
