//! `Cache`: the Python face of `core::cache::TimedCache` (a `ShardedCache` on a clock)
//! and `core::flight::SingleFlight` over Python keys and values.
//!
//! Keys are compared with dict semantics (identity first, then `==`), but `==` on a key
//! that could run user code (`__eq__` of a user class) is never called under a shard
//! lock: such comparisons are resolved outside it (see the core's module docs). Keys made
//! only of exact builtin scalars (int, float, bool, str, bytes, None, and tuples of them)
//! compare in C without user code, so they are compared under the lock directly.
//! Everything the cache drops (evicted, expired, replaced, cleared) is dropped after the
//! lock is released, because a value's `__del__` may run Python.
//!
//! Time is the core's: one clock reading per operation (none while nothing can expire),
//! a write's deadline computed from that same reading. This file converts `ttl` and
//! `clock` arguments to nanoseconds and a core `Clock`.
//!
//! `get_or_set` is single-flight through `core::flight` (protocol, invariants and
//! generations are documented there). This file runs the leader's factory through
//! `wait::call0` with no lock held, makes followers wait with the GIL released in slices
//! with a signal check between them, and decides what a flight shares: the factory's
//! value, or the `Exception` it raised (every follower raises it; nothing is cached). Any
//! other `BaseException` (KeyboardInterrupt, SystemExit, ...) stays with the leader, whose
//! flight is abandoned: followers look again and one of them leads. `clear()` clears the
//! flights before the entries and a leader stores only while its flight is current, so a
//! factory that began before a `clear()` never stores its result after it.
//!
//! `get_or_set_async` shares the same flight table (held in an `Arc` for its async
//! leaders, see `core::flight`): its binding is `crate::py::cache_async`, which uses the
//! lookup, the store and [`end_flight`] from here. A blocking `get_or_set` that finds the
//! key's flight led by a task of the event loop running on its own thread raises
//! RuntimeError: waiting would stop the loop that task needs.
//!
//! Garbage collection: `Cache` visits every key and value it holds (and the keys of
//! flights in progress), skipping a shard whose lock is held rather than waiting for it;
//! `__clear__` is `clear()`: every shard's contents are swapped out under its lock and
//! dropped after it is released.

use std::sync::Arc;

use pyo3::exceptions::{PyException, PyKeyError, PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::cache::{hit_ratio, mix, KeyQuery, Match, ShardedCache, Stats, TimedCache};
use crate::core::clock::nanos_to_secs;
use crate::core::flight::{Flight, Join, Leader, Outcome, SingleFlight};
use crate::errors::wrong_type;
use crate::py::{args, cache_async, wait};

/// Flights a shard of the flight table holds at most: one per leader running a factory on
/// that shard, so the bound is a backstop (at most `MAX_SHARDS * FLIGHTS_PER_SHARD =
/// 2^26`, within the core's `MAX_SIZE`).
const FLIGHTS_PER_SHARD: usize = 65_536;

/// What a flight shares with its followers: the factory's value, or the `Exception`
/// instance it raised.
pub(crate) type Shared = Result<Py<PyAny>, Py<PyAny>>;

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
    pub(crate) obj: Py<PyAny>,
    kind: KeyKind,
}

impl PyKey {
    pub(crate) fn clone_ref(&self, py: Python<'_>) -> Self {
        Self {
            obj: self.obj.clone_ref(py),
            kind: self.kind,
        }
    }

    /// A query for this key, whose hash (as [`Query::hash`] gave it) is `hash`; it runs no
    /// Python code.
    pub(crate) fn query<'a, 'py>(&'a self, py: Python<'py>, hash: u64) -> Query<'a, 'py> {
        Query {
            key: self.obj.bind(py),
            kind: self.kind,
            hash,
        }
    }
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
        // Exact str and int hash without running Python; any other key's `__hash__` is
        // user code, run under the exit guard.
        let hashed =
            if key.is_exact_instance_of::<PyString>() || key.is_exact_instance_of::<PyInt>() {
                key.hash()
            } else {
                wait::hash(key)
            };
        let hash = match hashed {
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

    /// The (mixed) hash every table of the cache files this key under.
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    pub(crate) fn stored(&self) -> PyKey {
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

impl<T> PyClone for Arc<T> {
    fn py_clone(&self, _: Python<'_>) -> Self {
        Arc::clone(self)
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
        // dict semantics: the stored key is the left operand; `__eq__` is user code, run
        // under the exit guard.
        wait::eq(stored.obj.bind(self.py()), self.key)
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

/// A follower's wait: the GIL released, in slices with a signal check between them.
/// `None` when the leader abandoned the flight.
fn follow(py: Python<'_>, flight: &Flight<Shared>) -> PyResult<Option<Py<PyAny>>> {
    while !wait::detach(py, || flight.wait_for(wait::SLICE)) {
        py.check_signals()?;
    }
    // Only new references are taken under the flight's lock; the error is built after.
    let shared = flight.read(|o| match o {
        Outcome::Finished(Ok(v)) => Some(Ok(v.clone_ref(py))),
        Outcome::Finished(Err(e)) => Some(Err(e.clone_ref(py))),
        Outcome::Abandoned => None,
    });
    match shared.flatten() {
        Some(Ok(v)) => Ok(Some(v)),
        Some(Err(e)) => Err(PyErr::from_value(e.into_bound(py))),
        None => Ok(None),
    }
}

/// A thread-safe, sharded LRU cache with optional TTL.
#[pyclass(frozen, module = "ferrule", name = "Cache")]
pub struct Cache {
    inner: TimedCache<PyKey, Py<PyAny>>,
    /// In an `Arc`: an async leader holds it (see `core::flight`).
    pub(crate) flights: Arc<SingleFlight<PyKey, Shared>>,
}

/// Ends a leader's flight with what its caller got: a value is shared, and so is an
/// `Exception` (nothing is cached); any other BaseException stays with the caller and the
/// flight is abandoned (its followers look again). Normalises the exception with no lock
/// held.
pub(crate) fn end_flight(
    py: Python<'_>,
    leader: Leader<'_, PyKey, Shared>,
    r: Result<&Py<PyAny>, &PyErr>,
) {
    match r {
        Ok(v) => leader.finish(Ok(v.clone_ref(py))),
        Err(e) if e.is_instance_of::<PyException>(py) => {
            leader.finish(Err(e.value(py).clone().into_any().unbind()));
        }
        // Kept by this caller; dropping the leader abandons the flight.
        Err(_) => drop(leader),
    }
}

impl Cache {
    #[inline]
    pub(crate) fn lookup(&self, q: &Query<'_, '_>, count: bool) -> PyResult<Option<Py<PyAny>>> {
        self.inner.get(q.hash, q, count)
    }

    /// Stores unless `keep()`, asked under the shard lock, refuses.
    pub(crate) fn store_if(
        &self,
        q: &Query<'_, '_>,
        value: Py<PyAny>,
        ttl: Option<i64>,
        keep: impl FnOnce() -> bool,
    ) -> PyResult<()> {
        let stored = self
            .inner
            .set_if(q.hash, q, || q.stored(), value, ttl, keep);
        stored.map(drop)
    }

    fn take(&self, q: &Query<'_, '_>) -> PyResult<Option<Py<PyAny>>> {
        self.inner.remove(q.hash, q)
    }

    /// `get_or_set`; `count` says whether its first look counts a hit or a miss.
    #[inline]
    fn get_or_set_counted(
        &self,
        key: &Bound<'_, PyAny>,
        factory: &Bound<'_, PyAny>,
        ttl: Option<i64>,
        count: bool,
    ) -> PyResult<Py<PyAny>> {
        if !factory.is_callable() {
            return Err(wrong_type("factory", "callable", factory));
        }
        let q = Query::new(key)?;
        match self.lookup(&q, count)? {
            Some(v) => Ok(v),
            None => self.fly(&q, factory, ttl),
        }
    }

    /// The miss path of `get_or_set`: lead the key's flight or follow it, and look again
    /// (uncounted: it is the same call) after a flight that was abandoned.
    #[inline(never)]
    fn fly(
        &self,
        q: &Query<'_, '_>,
        factory: &Bound<'_, PyAny>,
        ttl: Option<i64>,
    ) -> PyResult<Py<PyAny>> {
        loop {
            match self.flights.join(q.hash, q, || q.stored())? {
                Join::Lead(leader) => return self.lead(q, factory, ttl, leader),
                Join::Follow(flight) => {
                    if flight.led_by_current_thread() {
                        return Err(PyRuntimeError::new_err(if flight.led_asynchronously() {
                            "get_or_set would block the event loop running on this thread, \
                             whose task is computing this key (await get_or_set_async instead)"
                        } else {
                            "get_or_set called recursively for the same key by its own factory"
                        }));
                    }
                    if let Some(v) = follow(q.py(), &flight)? {
                        return Ok(v);
                    }
                }
            }
            if let Some(v) = self.lookup(q, false)? {
                return Ok(v);
            }
        }
    }

    /// The leader's part: look once more (another flight may have stored the value since
    /// our miss), run the factory with no lock held, store unless a `clear()` began since
    /// the flight did, and end the flight with what the followers share.
    fn lead(
        &self,
        q: &Query<'_, '_>,
        factory: &Bound<'_, PyAny>,
        ttl: Option<i64>,
        leader: Leader<'_, PyKey, Shared>,
    ) -> PyResult<Py<PyAny>> {
        let py = q.py();
        let r = match self.lookup(q, false) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => wait::call0(factory).and_then(|v| {
                let v = v.unbind();
                self.store_if(q, v.clone_ref(py), ttl, || leader.is_current())?;
                Ok(v)
            }),
            Err(e) => Err(e),
        };
        end_flight(py, leader, r.as_ref());
        r
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
        let entries = ShardedCache::new(max_size, shards, cpus)?;
        // At most MAX_SHARDS shards, so the flights table stays far below MAX_SIZE.
        let flights = Arc::new(SingleFlight::new(entries.shard_count(), FLIGHTS_PER_SHARD)?);
        let default_ttl = args::opt_positive_nanos(ttl, "ttl")?;
        let clock = args::clock(clock)?;
        Ok(Self {
            inner: TimedCache::new(entries, clock, default_ttl),
            flights,
        })
    }

    /// The live value for `key`, else `default`. Counts a hit or a miss.
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

    /// Insert or replace; `ttl` overrides the cache's default for this entry. The entry is
    /// live while `clock.now() < t + ttl`, with `t` read once per call.
    #[pyo3(signature = (key, value, *, ttl = None))]
    fn set(
        &self,
        key: &Bound<'_, PyAny>,
        value: Py<PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = args::opt_positive_nanos(ttl, "ttl")?;
        self.store_if(&Query::new(key)?, value, ttl, || true)
    }

    /// Remove `key`; True if a live entry was removed.
    fn delete(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.take(&Query::new(key)?)?.is_some())
    }

    /// Remove `key` and return its value; `default` (or KeyError) when missing.
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

    /// The value for `key`; on a miss, exactly one caller per key runs `factory()` (with no
    /// lock held) while concurrent callers for that key wait for its result with the GIL
    /// released (single-flight). If the factory raises an `Exception`, every waiter gets
    /// that exception and nothing is cached. A leader that leaves with a BaseException
    /// that is not an Exception keeps it; a waiter leads then.
    #[pyo3(signature = (key, factory, *, ttl = None))]
    fn get_or_set(
        &self,
        key: &Bound<'_, PyAny>,
        factory: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let ttl = args::opt_positive_nanos(ttl, "ttl")?;
        self.get_or_set_counted(key, factory, ttl, true)
    }

    /// Coroutine: `get_or_set` for asyncio, one flight per key shared with every other
    /// caller.
    ///
    /// On a miss, exactly one caller per key (a task on any event loop, or a thread in
    /// `get_or_set`) awaits `factory()` while the others wait for its result without a
    /// thread each. The factory runs in a task of its own: a cancelled caller does not
    /// cancel it for the others. An `Exception` reaches every waiter and nothing is
    /// cached; another BaseException makes the waiters look again.
    #[pyo3(signature = (key, factory, *, ttl = None))]
    fn get_or_set_async<'py>(
        slf: &Bound<'py, Self>,
        key: &Bound<'py, PyAny>,
        factory: &Bound<'py, PyAny>,
        ttl: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        cache_async::start(slf, key, factory, ttl)
    }

    /// `get_or_set` for a caller that has just looked `key` up with `get` and counted
    /// that miss (`ferrule.cached`): its own looks count nothing.
    fn _get_or_set_after_miss(
        &self,
        key: &Bound<'_, PyAny>,
        factory: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        self.get_or_set_counted(key, factory, None, false)
    }

    /// Remove every entry (and release the memory they used). A `get_or_set` factory that
    /// began before `clear()` still answers its callers, but its result is not stored.
    fn clear(&self) {
        // The flights first: see "Generations" in core::flight.
        self.flights.clear();
        self.inner.entries().clear();
    }

    /// Remove expired entries now; returns how many.
    fn expire(&self) -> PyResult<usize> {
        Ok(self.inner.expire()?)
    }

    /// A snapshot list of the live keys.
    fn keys(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        Ok(self.inner.snapshot(|k, _| k.obj.clone_ref(py))?)
    }

    /// A snapshot list of the live values.
    fn values(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        Ok(self.inner.snapshot(|_, v| v.clone_ref(py))?)
    }

    /// A snapshot list of the live `(key, value)` pairs.
    fn items(&self, py: Python<'_>) -> PyResult<Vec<(Py<PyAny>, Py<PyAny>)>> {
        Ok(self
            .inner
            .snapshot(|k, v| (k.obj.clone_ref(py), v.clone_ref(py)))?)
    }

    /// Counters; see `CacheStats`.
    fn stats(&self) -> PyResult<CacheStats> {
        Ok(CacheStats::from(self.inner.stats()?))
    }

    #[getter]
    fn max_size(&self) -> usize {
        self.inner.entries().max_size()
    }

    /// The default TTL in seconds, or None.
    #[getter]
    fn ttl(&self) -> Option<f64> {
        self.inner.default_ttl().map(nanos_to_secs)
    }

    /// The number of shards (each with its own lock and LRU order).
    #[getter]
    fn shards(&self) -> usize {
        self.inner.entries().shard_count()
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.inner.live_len()?)
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
        self.store_if(&Query::new(key)?, value, None, || true)
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
        self.inner.entries().try_for_each(|k, v| {
            visit.call(&k.obj)?;
            visit.call(v)
        })?;
        self.flights.try_for_each_key(|k| visit.call(&k.obj))
    }

    /// Breaks reference cycles: every shard's contents are swapped out under its lock and
    /// dropped after it is released. A flight in progress stays with its leader and
    /// waiters (they hold it), so they still finish.
    fn __clear__(&self) {
        self.clear();
    }

    fn __repr__(&self) -> String {
        let ttl = self
            .ttl()
            .map_or_else(|| "None".to_owned(), |t| t.to_string());
        format!(
            "Cache(max_size={}, ttl={ttl}, shards={})",
            self.max_size(),
            self.shards()
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
    /// Live entries now. Expired ones are reclaimed before the counters are read.
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
    /// `hits / (hits + misses)`; 0.0 before the first lookup.
    #[getter]
    fn hit_ratio(&self) -> f64 {
        hit_ratio(self.hits, self.misses)
    }

    fn __repr__(&self) -> String {
        format!(
            "CacheStats(hits={}, misses={}, inserts={}, evictions={}, expirations={}, size={}, max_size={})",
            self.hits, self.misses, self.inserts, self.evictions, self.expirations, self.size, self.max_size
        )
    }
}
