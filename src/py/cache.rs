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
//! Options (`core::cache::Options`, fixed at construction, each an `Option` checked once
//! per operation): a `weigher` runs before the write takes any lock, and its result
//! becomes the entry's weight (an int, bool refused, >= 0; larger than any shard
//! saturates, so it is rejected); `tti` is the core's; `on_evict` makes every operation
//! that removed entries (a [`Grave`] filled under the lock, a removed entry returned,
//! each batch of a bulk operation, each drained shard of `clear`) call it per entry after
//! the lock is released, on the calling thread, its errors reported by [`notify`].
//!
//! Events (`bus=`, see `crate::py::events`): evictions by size or weight are counted in
//! [`bury`](Cache::bury), which a write that removed entries calls anyway, and published
//! as `cache.<name>.evicting` at most once per `event_interval` by the write that finds
//! the interval over (the clock is read by the first eviction of a count and then every
//! `events::STRIDE` evictions or writes: see `events::Tally`); a write while evictions
//! are pending publishes the rest once the interval is over. Without a bus, a write pays
//! one test of an `Option`.
//!
//! Garbage collection: `Cache` visits every key and value it holds (and the keys of
//! flights in progress), its weigher, listener and bus, skipping a shard (or callback) whose
//! lock is held rather than waiting for it; `__clear__` lets the weigher, listener and bus go
//! and then swaps every shard's contents out under its lock, dropping them after it is
//! released, without reporting them (the listener may be part of the garbage).

use std::sync::Arc;

use pyo3::exceptions::{
    PyAttributeError, PyException, PyKeyError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::core::cache::{
    hit_ratio, mix, AllocError, Cause, Fast, Grave, KeyQuery, Match, Options, Policy, ShardedCache,
    Stats, TimedCache, Written,
};
use crate::core::clock::nanos_to_secs;
use crate::core::flight::{Flight, Join, Leader, Outcome, SingleFlight};
use crate::errors::wrong_type;
use crate::py::args::Held;
use crate::py::events::{self, Event, Events, Tally, Val};
use crate::py::lookup::lookup;
use crate::py::{args, cache_async, fastcall, wait};

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

/// A weigher's result: an int (bool refused) >= 0, saturated to `u64::MAX` (heavier than
/// any cache, so rejected) when larger.
fn weight_of(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    const ARG: &str = "weigher's result";
    if !obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyBool>() {
        return Err(wrong_type(ARG, "an int", obj));
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
    match (overflow, u64::try_from(v)) {
        (0, Ok(w)) => Ok(w),
        (o, _) if o > 0 => Ok(u64::MAX),
        _ => Err(PyValueError::new_err(format!("{ARG} must be >= 0"))),
    }
}

/// The `policy` argument: a str naming a policy, as the policy's own `&'static str`.
fn policy_name(obj: &Bound<'_, PyAny>) -> PyResult<&'static str> {
    let name = args::string(obj, "policy")?;
    Ok(Policy::parse(name.to_str()?)?.as_str())
}

/// The cause as the listener sees it.
fn cause_str(py: Python<'_>, cause: Cause) -> &Bound<'_, PyString> {
    match cause {
        Cause::Size => intern!(py, "size"),
        Cause::Expired => intern!(py, "expired"),
        Cause::Replaced => intern!(py, "replaced"),
        Cause::Deleted => intern!(py, "deleted"),
    }
}

/// Calls `on_evict(key, value, cause)`; what it raises is never raised into the caller
/// (the removal it reports has happened): an `Exception` is logged (logger
/// `ferrule.cache`, through `ferrule._cached._report_evict_error`); any other
/// BaseException (`KeyboardInterrupt`, `SystemExit`), and a failure to log, goes to
/// `sys.unraisablehook`, as from a `__del__` (`wait::report`).
fn notify(py: Python<'_>, listener: &Bound<'_, PyAny>, key: PyKey, value: Py<PyAny>, cause: Cause) {
    let cause = cause_str(py, cause);
    if let Err(e) = wait::call1(listener, (key.obj, value, cause)) {
        if !e.is_instance_of::<PyException>(py) {
            wait::report(py, e, Some(listener));
            return;
        }
        let logged = lookup!(py, "ferrule._cached", "_report_evict_error")
            .and_then(|f| wait::call1(f, (cause, e.into_value(py))));
        if let Err(e) = logged {
            wait::report(py, e, Some(listener));
        }
    }
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
        #[cfg(not(Py_3_14))]
        if same_type && ffi::PyUnicode_CheckExact(a) != 0 {
            if let Some(eq) = compact_str_eq(a, b) {
                return eq;
            }
        }
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

/// Two exact strs compared by their code units, as CPython's own `str ==` does for
/// strings in canonical (compact) form, whose kind is the narrowest that fits: equal
/// strings have equal lengths, kinds and bytes. `None` for a string in another form
/// (only the legacy APIs of 3.10 and 3.11 make one), left to `PyObject_RichCompareBool`.
/// Saves the rich comparison's dispatch on every str key a lookup matches by value.
///
/// # Safety
/// `a` and `b` must be live exact `str` objects.
#[cfg(not(Py_3_14))]
#[inline]
unsafe fn compact_str_eq(a: *mut ffi::PyObject, b: *mut ffi::PyObject) -> Option<bool> {
    // SAFETY: the caller guarantees live exact strs; compact ones hold their `len * kind`
    // bytes of code units inline, at PyUnicode_DATA.
    unsafe {
        if ffi::PyUnicode_IS_COMPACT(a) == 0 || ffi::PyUnicode_IS_COMPACT(b) == 0 {
            return None;
        }
        let n = ffi::PyUnicode_GET_LENGTH(a);
        let kind = ffi::PyUnicode_KIND(a);
        if n != ffi::PyUnicode_GET_LENGTH(b) || kind != ffi::PyUnicode_KIND(b) {
            return Some(false);
        }
        let bytes = n as usize * kind as usize;
        let da = std::slice::from_raw_parts(ffi::PyUnicode_DATA(a).cast::<u8>(), bytes);
        let db = std::slice::from_raw_parts(ffi::PyUnicode_DATA(b).cast::<u8>(), bytes);
        Some(da == db)
    }
}

/// Python's `hash()` of an int that fits 64 bits: its value modulo the Mersenne prime
/// 2**61 - 1, with the sign kept, and -1 (an error in C) read as -2. Equal to
/// `PyObject_Hash` of that int, and so of any float, bool or Decimal equal to it.
#[inline]
fn int_hash(v: i64) -> i64 {
    const MODULUS: u64 = (1 << 61) - 1;
    let h = (v.unsigned_abs() % MODULUS) as i64;
    let h = if v < 0 { -h } else { h };
    if h == -1 {
        -2
    } else {
        h
    }
}

/// `hash()` of an exact str: the hash it caches once computed (read as CPython reads it,
/// a relaxed load: free-threaded builds store it racily), else `PyObject_Hash`.
///
/// # Safety
/// `p` must be a live exact `str`.
#[allow(clippy::inline_always)] // the get-hit path: measured
#[inline(always)]
unsafe fn str_hash(p: *mut ffi::PyObject) -> ffi::Py_hash_t {
    // SAFETY: the caller guarantees a live str; `hash` is a word-aligned field of it.
    unsafe {
        let field = &raw mut (*p.cast::<ffi::PyASCIIObject>()).hash;
        let cached = (*field.cast::<std::sync::atomic::AtomicIsize>())
            .load(std::sync::atomic::Ordering::Relaxed);
        if cached == -1 {
            ffi::PyObject_Hash(p)
        } else {
            cached
        }
    }
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

/// Binds `$q` to a `&Query` of `$key` (`?` on an unhashable key). Built in the caller's
/// own frame: a `Query` returned through a `PyResult` and then moved is copied with
/// wider loads than the stores that wrote it, and that copy stalls a get-hit's path
/// on store forwarding (measured at 1,000 int entries, where nothing misses the CPU's
/// cache: 47 -> 40 ns a hit).
macro_rules! query {
    ($q:ident = $key:expr) => {
        let key = $key;
        let owned;
        let $q = match Query::fast_parts(key) {
            Some((kind, hash)) => {
                owned = Query { key, kind, hash };
                &owned
            }
            None => &Query::new_other(key)?,
        };
    };
}

/// A caller's key prepared for lookups: the object, its hash and its class of equality.
pub struct Query<'a, 'py> {
    key: &'a Bound<'py, PyAny>,
    kind: KeyKind,
    hash: u64,
}

impl<'a, 'py> Query<'a, 'py> {
    /// Hashes the key once; an unhashable key gives a TypeError naming `key`.
    ///
    /// The hot methods build theirs with `query!` instead, in their own frame.
    #[allow(clippy::inline_always)] // see `query!`
    #[inline(always)]
    pub fn new(key: &'a Bound<'py, PyAny>) -> PyResult<Self> {
        match Self::fast_parts(key) {
            Some((kind, hash)) => Ok(Self { key, kind, hash }),
            None => Self::new_other(key),
        }
    }

    /// The query of an exact str, or of an exact int that fits 64 bits; None for any
    /// other key (see [`fast_parts`](Self::fast_parts)). For the fast paths.
    #[allow(clippy::inline_always)] // see `query!`
    #[inline(always)]
    fn quick(key: &'a Bound<'py, PyAny>) -> Option<Self> {
        let (kind, hash) = Self::fast_parts(key)?;
        Some(Self { key, kind, hash })
    }

    /// The kind and hash of an exact str, or of an exact int that fits 64 bits (hashed
    /// here, as Python does); None for any other key.
    #[allow(clippy::inline_always)] // see `query!`
    #[inline(always)]
    fn fast_parts(key: &Bound<'_, PyAny>) -> Option<(KeyKind, u64)> {
        let p = key.as_ptr();
        // SAFETY: `p` is live; the calls read an exact int's value or an exact str's
        // (cached) hash and cannot run user code or fail.
        unsafe {
            if ffi::PyLong_CheckExact(p) != 0 {
                let mut overflow = 0;
                let v = ffi::PyLong_AsLongAndOverflow(p, &raw mut overflow);
                if overflow == 0 {
                    #[allow(clippy::useless_conversion)] // c_long is 32-bit on Windows
                    let v = i64::from(v);
                    return Some((KeyKind::Int(v), mix(int_hash(v) as u64)));
                }
            } else if ffi::PyUnicode_CheckExact(p) != 0 {
                return Some((KeyKind::Plain, mix(str_hash(p) as u64)));
            }
        }
        None
    }

    /// [`new`](Self::new) for a key `fast_parts` leaves.
    #[inline(never)]
    fn new_other(key: &'a Bound<'py, PyAny>) -> PyResult<Self> {
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
    /// `weigher(key, value) -> int`, for a weighted cache (`None`: unweighted, decided at
    /// construction; an empty `Held` once the collector cleared it).
    weigher: Option<Held<Py<PyAny>>>,
    /// `on_evict(key, value, cause)`, likewise.
    on_evict: Option<Held<Py<PyAny>>>,
    name: Option<Py<PyString>>,
    /// With a bus: the outbox and the evictions not yet published.
    events: Option<Box<(Events, Tally)>>,
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
    /// The live value (`count`: a hit or a miss, and a read that refreshes recency and
    /// idle time). An expired entry found on the way is removed and reported.
    #[allow(clippy::inline_always)] // see `query!`
    #[inline(always)]
    pub(crate) fn lookup(&self, q: &Query<'_, '_>, count: bool) -> PyResult<Option<Py<PyAny>>> {
        match self.inner.get_fast(q.hash, q, count) {
            (Fast::Hit(v), _) => Ok(Some(v)),
            (Fast::Miss, _) => Ok(None),
            (Fast::Slow, now) => self.lookup_slow(q, count, now),
        }
    }

    /// `lookup` past the fast path (an expired entry, a key whose `__eq__` is user code),
    /// out of line so that a hit carries no grave.
    #[inline(never)]
    fn lookup_slow(&self, q: &Query<'_, '_>, count: bool, now: i64) -> PyResult<Option<Py<PyAny>>> {
        let mut grave = Grave::new();
        let found = self.inner.get_slow(q.hash, q, now, count, &mut grave);
        if !grave.is_empty() {
            self.bury_batch(q.py(), &mut grave);
        }
        found
    }

    /// Stores unless `keep()`, asked under the shard lock, refuses. A weighted cache
    /// weighs the entry first, with no lock held.
    pub(crate) fn store_if(
        &self,
        q: &Query<'_, '_>,
        value: Py<PyAny>,
        ttl: Option<i64>,
        keep: impl FnOnce() -> bool,
    ) -> PyResult<()> {
        let weight = match &self.weigher {
            None => 1,
            Some(w) => Self::weigh(w, q, &value)?,
        };
        let mut grave = Grave::new();
        let stored = self.inner.set_if(
            q.hash,
            q,
            || q.stored(),
            value,
            ttl,
            weight,
            &mut grave,
            keep,
        );
        if !grave.is_empty() {
            self.bury_batch(q.py(), &mut grave);
        }
        if let Some(ev) = &self.events {
            if ev.1.tick() {
                self.publish_evictions(q.py(), ev);
            }
        }
        stored.map(drop)
    }

    /// Publishes the evictions counted so far if `event_interval` has passed since the
    /// last event (module docs).
    #[cold]
    #[inline(never)]
    fn publish_evictions(&self, py: Python<'_>, ev: &(Events, Tally)) {
        let Some(n) = ev.1.take_due() else {
            return;
        };
        if n == 0 {
            return;
        }
        let s = self.inner.entries().stats();
        ev.0.emit(
            py,
            Event::new(
                "evicting",
                vec![
                    ("evicted", Val::Int(n)),
                    ("size", Val::Int(s.size)),
                    ("max_size", Val::Int(s.max_size)),
                ],
            ),
        );
    }

    /// `weigher(key, value)`, run with no lock held, as a weight.
    #[inline(never)]
    fn weigh(weigher: &Held<Py<PyAny>>, q: &Query<'_, '_>, value: &Py<PyAny>) -> PyResult<u64> {
        let py = q.py();
        // Cleared by the collector: the cache is garbage, any weight will do.
        let Some(w) = weigher.with(|w| w.map(|w| w.clone_ref(py))) else {
            return Ok(1);
        };
        weight_of(&wait::call1(w.bind(py), (q.key, value.bind(py)))?)
    }

    /// The eviction listener, if there is one (and the collector has not cleared it).
    fn listener(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.on_evict.as_ref()?.with(|l| l.map(|l| l.clone_ref(py)))
    }

    /// Reports removed entries to the listener, one call each, with no lock held; without
    /// a listener they are just dropped (here, after the lock).
    /// With a bus, evictions by size are counted for `cache.<name>.evicting`.
    #[inline(never)]
    fn bury(&self, py: Python<'_>, grave: impl IntoIterator<Item = (PyKey, Py<PyAny>, Cause)>) {
        let listener = self.listener(py);
        if listener.is_none() && self.events.is_none() {
            return;
        }
        let mut evicted = 0;
        for (k, v, cause) in grave {
            evicted += u64::from(cause == Cause::Size);
            if let Some(l) = &listener {
                notify(py, l.bind(py), k, v, cause);
            }
        }
        if let (Some(ev), true) = (&self.events, evicted > 0) {
            if Tally::crossed(ev.1.add(evicted), evicted) {
                self.publish_evictions(py, ev);
            }
        }
    }

    /// A batch of removed entries, reported and emptied in place. (A grave passed by
    /// value is copied with wider loads than the stores that just filled it: a stall on
    /// store forwarding in every evicting write.)
    fn bury_batch(&self, py: Python<'_>, grave: &mut Grave<PyKey, Py<PyAny>>) {
        self.bury(py, grave.drain(..));
    }

    /// Removes the key: its value if it was live (reported as `deleted`); an expired entry
    /// is removed too (reported as `expired`).
    fn take(&self, q: &Query<'_, '_>) -> PyResult<Option<Py<PyAny>>> {
        let py = q.py();
        Ok(match self.inner.remove(q.hash, q)? {
            None => None,
            Some((k, v, Cause::Deleted)) => {
                if self.on_evict.is_some() {
                    self.bury(py, [(k, v.clone_ref(py), Cause::Deleted)]);
                }
                Some(v)
            }
            Some(dead) => {
                self.bury(py, [dead]);
                None
            }
        })
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
        query!(q = key);
        match self.lookup(q, count)? {
            Some(v) => Ok(v),
            None => self.fly(q, factory, &PyTuple::empty(q.py()), ttl),
        }
    }

    /// The miss path of `get_or_set`: lead the key's flight or follow it, and look again
    /// (uncounted: it is the same call) after a flight that was abandoned. A leader calls
    /// `factory(*args)` (`get_or_set`: no arguments; `cached`: the key).
    #[inline(never)]
    fn fly<'py>(
        &self,
        q: &Query<'_, 'py>,
        factory: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        ttl: Option<i64>,
    ) -> PyResult<Py<PyAny>> {
        loop {
            match self.flights.join(q.hash, q, || q.stored())? {
                Join::Lead(leader) => return self.lead(q, factory, args, ttl, leader),
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
    fn lead<'py>(
        &self,
        q: &Query<'_, 'py>,
        factory: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        ttl: Option<i64>,
        leader: Leader<'_, PyKey, Shared>,
    ) -> PyResult<Py<PyAny>> {
        let py = q.py();
        let r = match self.lookup(q, false) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => wait::call(factory, args, None).and_then(|v| {
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
    #[pyo3(signature = (
        max_size, *, ttl = None, tti = None, weigher = None, on_evict = None, shards = None,
        clock = None, name = None, bus = None, event_interval = 1.0, policy = "lru"
    ))]
    #[allow(clippy::too_many_arguments)] // the Python signature
    fn new(
        py: Python<'_>,
        max_size: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        tti: Option<&Bound<'_, PyAny>>,
        weigher: Option<&Bound<'_, PyAny>>,
        on_evict: Option<&Bound<'_, PyAny>>,
        shards: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
        name: Option<&Bound<'_, PyAny>>,
        bus: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::event_interval)] event_interval: f64,
        #[pyo3(from_py_with = policy_name)] policy: &str,
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
        let callback = |obj: Option<&Bound<'_, PyAny>>, arg| match obj {
            Some(o) if o.is_callable() => Ok(Some(Held::new(Some(o.clone().unbind())))),
            Some(o) if !o.is_none() => Err(wrong_type(arg, "callable or None", o)),
            _ => Ok(None),
        };
        let weigher = callback(weigher, "weigher")?;
        let on_evict = callback(on_evict, "on_evict")?;
        let mut opts = Options {
            policy: Policy::parse(policy)?,
            weighted: weigher.is_some(),
            tti: args::opt_positive_nanos(tti, "tti")?,
            report_replaced: on_evict.is_some(),
            read_stripes: 0,
        };
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        // Free-threaded builds: W-TinyLFU hits read under a shared lock striped by thread
        // (a stripe per CPU). With the GIL one thread reads at a time, and a hit applied
        // at once costs less than one logged and replayed (measured: 1.2-1.7x slower).
        opts.read_stripes = if cfg!(Py_GIL_DISABLED) { cpus } else { 0 };
        let mut entries = ShardedCache::with_options(max_size, shards, cpus, opts)?;
        if cfg!(not(Py_GIL_DISABLED)) {
            // SAFETY: with the GIL every call on the cache holds it, and no call releases
            // it or runs Python code while it holds a shard (user code runs between
            // shard holds: `__hash__` before, `__eq__` and `weigher` out of the lock,
            // drops after it); the GIL excludes the callers from one another (one GIL:
            // PyO3 refuses to load the module into a second interpreter), so the shards'
            // lock words would only cost their atomic operations.
            unsafe { entries.serialize() };
        }
        // At most MAX_SHARDS shards, so the flights table stays far below MAX_SIZE.
        let flights = Arc::new(SingleFlight::new(entries.shard_count(), FLIGHTS_PER_SHARD)?);
        let default_ttl = args::opt_positive_nanos(ttl, "ttl")?;
        let clock = args::clock(clock)?;
        let name = events::name_arg(py, name)?;
        let interval = events::interval_arg(event_interval)?;
        let events = Events::from_args(py, "cache", bus, name.as_ref())?
            .map(|e| Box::new((e, Tally::new(interval, clock.clone()))));
        Ok(Self {
            inner: TimedCache::new(entries, clock, default_ttl),
            flights,
            weigher,
            on_evict,
            name,
            events,
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
        query!(q = key);
        match self.lookup(q, true)? {
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
        query!(q = key);
        self.store_if(q, value, ttl, || true)
    }

    /// Remove `key`; True if a live entry was removed.
    fn delete(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        query!(q = key);
        Ok(self.take(q)?.is_some())
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
        query!(q = key);
        match self.take(q)? {
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
    fn clear(&self, py: Python<'_>) {
        // The flights first: see "Generations" in core::flight.
        self.flights.clear();
        match self.listener(py) {
            None => self.inner.entries().clear(),
            Some(listener) => {
                let listener = listener.bind(py);
                // Each shard's entries are reported after its lock is released.
                self.inner.entries().clear_with(|drained| {
                    for (k, v) in drained.into_entries() {
                        notify(py, listener, k, v, Cause::Deleted);
                    }
                });
            }
        }
    }

    /// Remove expired entries now; returns how many.
    fn expire(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.inner.expire(&mut |g| self.bury_batch(py, g))?)
    }

    /// The live value for `key`, else `default`, without counting a hit or a miss and
    /// without refreshing its recency or idle time.
    #[pyo3(signature = (key, default = None))]
    fn peek(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        query!(q = key);
        match self.lookup(q, false)? {
            Some(v) => Ok(v),
            None => Ok(default.unwrap_or_else(|| py.None())),
        }
    }

    /// A dict of the live entries among `keys` (absent keys are left out).
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        const WHAT: &str = "an iterable of keys";
        // A str is an iterable of its characters: never what a caller means here.
        if keys.is_instance_of::<PyString>() || keys.is_instance_of::<PyBytes>() {
            return Err(wrong_type("keys", WHAT, keys));
        }
        let found = PyDict::new(py);
        for key in args::iterate(keys, "keys", WHAT)? {
            let key = key?;
            let q = Query::new(&key)?;
            if let Some(v) = self.lookup(&q, true)? {
                if q.kind == KeyKind::User {
                    // The dict hashes and compares the key again: user code, run under
                    // the exit guard like every other call of it.
                    let setitem = found.as_any().getattr(intern!(py, "__setitem__"))?;
                    wait::call1(&setitem, (key, v))?;
                } else {
                    found.set_item(key, v)?;
                }
            }
        }
        Ok(found)
    }

    /// Set every `(key, value)` pair of `mapping`, in its order, as `set` does.
    #[pyo3(signature = (mapping, *, ttl = None))]
    fn set_many(
        &self,
        py: Python<'_>,
        mapping: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = args::opt_positive_nanos(ttl, "ttl")?;
        // An exact dict's pairs are copied out first (a weigher or listener may change
        // it); any other mapping's `items()` is user code.
        let items = if let Ok(d) = mapping.cast_exact::<PyDict>() {
            d.items().into_any()
        } else {
            match mapping.getattr(intern!(py, "items")) {
                Ok(items) => wait::call0(&items)?,
                Err(e) if e.is_instance_of::<PyAttributeError>(py) => {
                    return Err(wrong_type("mapping", "a mapping", mapping));
                }
                Err(e) => return Err(e),
            }
        };
        for item in args::iterate(&items, "mapping.items()", "an iterable of pairs")? {
            let item = item?;
            let pair = item
                .cast::<PyTuple>()
                .ok()
                .filter(|t| t.len() == 2)
                .ok_or_else(|| wrong_type("each item of mapping", "a (key, value) pair", &item))?;
            let key = pair.get_item(0)?;
            self.store_if(&Query::new(&key)?, pair.get_item(1)?.unbind(), ttl, || true)?;
        }
        Ok(())
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
    fn stats(&self, py: Python<'_>) -> PyResult<CacheStats> {
        Ok(CacheStats::from(
            self.inner.stats(&mut |g| self.bury_batch(py, g))?,
        ))
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

    /// The time to idle in seconds, or None.
    #[getter]
    fn tti(&self) -> Option<f64> {
        self.inner.entries().options().tti.map(nanos_to_secs)
    }

    /// The number of shards (each with its own lock and LRU order).
    #[getter]
    fn shards(&self) -> usize {
        self.inner.entries().shard_count()
    }

    /// The name given (the topics' middle segment), or None.
    #[getter]
    fn name(&self, py: Python<'_>) -> Option<Py<PyString>> {
        self.name.as_ref().map(|n| n.clone_ref(py))
    }

    /// The eviction policy: ``"lru"`` or ``"tinylfu"``.
    #[getter]
    fn policy(&self) -> &'static str {
        self.inner.entries().options().policy.as_str()
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.inner.live_len(&mut |g| self.bury_batch(py, g))?)
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        query!(q = key);
        Ok(self.lookup(q, false)?.is_some())
    }

    fn __getitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        query!(q = key);
        match self.lookup(q, true)? {
            Some(v) => Ok(v),
            None => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    fn __setitem__(&self, key: &Bound<'_, PyAny>, value: Py<PyAny>) -> PyResult<()> {
        query!(q = key);
        self.store_if(q, value, None, || true)
    }

    fn __delitem__(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        query!(q = key);
        match self.take(q)? {
            Some(_) => Ok(()),
            None => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    fn __iter__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let keys = PyList::new(py, self.keys(py)?)?;
        Ok(keys.as_any().try_iter()?.into_any().unbind())
    }

    /// Visits every key and value (and the keys of flights in progress), the weigher
    /// and the listener. Never blocks: a shard (or callback) whose lock is held is
    /// skipped, which only makes the collector keep more.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.inner.entries().try_for_each(|k, v| {
            visit.call(&k.obj)?;
            visit.call(v)
        })?;
        self.flights.try_for_each_key(|k| visit.call(&k.obj))?;
        for held in [&self.weigher, &self.on_evict].into_iter().flatten() {
            held.try_visit(|f| visit.call(f))?;
        }
        if let Some(ev) = &self.events {
            ev.0.visit(&visit)?;
        }
        Ok(())
    }

    /// Breaks reference cycles: the weigher and listener are let go of (the listener is
    /// not told: it may be garbage itself), then every shard's contents are swapped out
    /// under its lock and dropped after it is released. A flight in progress stays with
    /// its leader and waiters (they hold it), so they still finish.
    fn __clear__(&self) {
        let weigher = self.weigher.as_ref().and_then(Held::take);
        let on_evict = self.on_evict.as_ref().and_then(Held::take);
        let bus = self.events.as_ref().and_then(|ev| ev.0.clear());
        self.flights.clear();
        self.inner.entries().clear();
        drop((weigher, on_evict, bus)); // every lock is released: dropping may run Python
    }

    fn __repr__(&self) -> String {
        let secs = |t: Option<f64>| t.map_or_else(|| "None".to_owned(), |t| t.to_string());
        let tti = match self.tti() {
            None => String::new(),
            t => format!(", tti={}", secs(t)),
        };
        let weighted = if self.weigher.is_some() {
            ", weighted"
        } else {
            ""
        };
        let policy = match self.inner.entries().options().policy {
            Policy::Lru => String::new(),
            p @ Policy::TinyLfu => format!(", policy='{}'", p.as_str()),
        };
        format!(
            "Cache(max_size={}, ttl={}{tti}, shards={}{weighted}{policy})",
            self.max_size(),
            secs(self.ttl()),
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
    /// Writes not stored because the value weighed more than its shard may hold.
    rejected: u64,
    /// Live entries now. Expired ones are reclaimed before the counters are read.
    size: u64,
    /// The sum of the live entries' weights (`size` without a weigher).
    weight: u64,
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
            rejected: s.rejected,
            size: s.size,
            weight: s.weight,
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
            "CacheStats(hits={}, misses={}, inserts={}, evictions={}, expirations={}, rejected={}, size={}, weight={}, max_size={})",
            self.hits, self.misses, self.inserts, self.evictions, self.expirations, self.rejected, self.size, self.weight, self.max_size
        )
    }
}

/// `Cache.get` in front of PyO3's (see `crate::py::fastcall`): `get(key)` or
/// `get(key, default)` with an exact int or str key, answered by
/// [`TimedCache::get_fast`] when it decides (a live hit, or a plain miss); every other
/// call (keywords, another kind of key, an expired entry) is PyO3's `get`.
static GET: fastcall::Method = fastcall::Method::new(c"get");

/// `Cache.set` in front of PyO3's: `set(key, value)` with an exact int or str key on a
/// cache with no `weigher`, `on_evict` or `bus` (whose code a write may run), written by
/// [`TimedCache::set_quick`] when finding the key needs no user `__eq__`; every other call
/// (a `ttl`, another kind of key) is PyO3's `set`.
static SET: fastcall::Method = fastcall::Method::new(c"set");

/// Installs the fast methods of `Cache` (module initialisation).
pub(crate) fn install_fast_methods(py: Python<'_>) -> PyResult<()> {
    let ty = py.get_type::<Cache>();
    fastcall::install(&ty, &GET, get_fastcall)?;
    fastcall::install(&ty, &SET, set_fastcall)?;
    fastcall::install_call(&py.get_type::<CachedCall>(), &CACHED_CALL, cached_call)
}

fastcall::entry!(get_fastcall, GET, Cache, 1..=2, get_fast_path);
fastcall::entry!(set_fastcall, SET, Cache, 2..=2, set_fast_path);

/// `set(key, value)` with an exact int or str key, on a cache whose writes run no Python
/// code, when [`TimedCache::set_quick`] decides. What the write removes or replaces is
/// released here as `Bound`s (see `crate::py::fastcall`), after the shard lock.
#[allow(clippy::inline_always)] // the body of the entry point: measured, as `dispatch`
#[inline(always)]
fn set_fast_path<'py>(
    py: Python<'py>,
    cache: &Cache,
    args: fastcall::Args<'_, 'py>,
) -> fastcall::Answer<'py> {
    if cache.weigher.is_some() || cache.on_evict.is_some() || cache.events.is_some() {
        return None;
    }
    let key = args.get(0)?;
    let value = args.get(1)?;
    let q = Query::quick(&key)?;
    let mut grave = Grave::new();
    let written = cache.inner.set_quick(
        q.hash,
        &q,
        || q.stored(),
        || value.to_owned().unbind(),
        &mut grave,
    )?;
    for (k, v, _) in grave.drain(..) {
        drop(k.obj.into_bound(py));
        drop(v.into_bound(py));
    }
    Some(match written {
        Written::Stored(old) => {
            drop(old.map(|v| v.into_bound(py)));
            Ok(py.None().into_bound(py))
        }
        Written::Refused(v) => {
            drop(v.into_bound(py));
            Ok(py.None().into_bound(py))
        }
        Written::Unstored(k, v) => {
            drop(k.map(|k| k.obj.into_bound(py)));
            drop(v.into_bound(py));
            Err(AllocError.into())
        }
    })
}

/// `get(key)` / `get(key, default)` with an exact int or str key, when
/// [`TimedCache::get_fast`] decides. Runs no Python code and drops no Python object.
#[allow(clippy::inline_always)] // the body of the entry point: measured, as `dispatch`
#[inline(always)]
fn get_fast_path<'py>(
    py: Python<'py>,
    cache: &Cache,
    args: fastcall::Args<'_, 'py>,
) -> fastcall::Answer<'py> {
    let key = args.get(0)?;
    let q = Query::quick(&key)?;
    match cache.inner.get_fast(q.hash, &q, true).0 {
        Fast::Hit(v) => Some(Ok(v.into_bound(py))),
        Fast::Miss => Some(Ok(match args.get(1) {
            Some(d) => d.to_owned(),
            None => py.None().into_bound(py),
        })),
        Fast::Slow => None,
    }
}

extern "C" {
    /// `types.MethodType(func, self)`: a new bound method.
    fn PyMethod_New(func: *mut ffi::PyObject, self_: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// The call of a function memoised by `ferrule.cached` (`ferrule._cached._CachedFunction`
/// derives from it, for the attributes a function wrapper carries). A call with one
/// positional argument, an exact int or str, and no keywords is looked up by the fast
/// `tp_call` ([`cached_call_fast_path`]), counting the hit or miss: a hit returns the
/// cached value without running Python code, a miss leads or follows the key's flight
/// as `get_or_set` does, its leader calling `func(key)`. Every other call, and a lookup
/// the fast path leaves to the general one (an expired entry), is `slow(args, kwargs)`,
/// a Python function of the wrapper. Python code is called with no lock held.
///
/// Its references are visited by the collector and never cleared: each cycle through it
/// passes through an object that clears (the cache clears its entries, the subclass's
/// `__dict__` is cleared, and the callbacks are functions), as a tuple's do.
#[pyclass(frozen, subclass, module = "ferrule._native", name = "_CachedCall")]
pub struct CachedCall {
    cache: Py<Cache>,
    func: Py<PyAny>,
    slow: Py<PyAny>,
}

/// `CachedCall`'s `tp_call` in front of PyO3's (see `crate::py::fastcall`).
static CACHED_CALL: fastcall::Call = fastcall::Call::new();

fastcall::call_entry!(cached_call, CACHED_CALL, CachedCall, cached_call_fast_path);

/// A call with one exact int or str argument: a hit, or a miss, whose flight (led or
/// followed as `get_or_set`'s) runs attached through `wait::attach`, since it runs
/// Python code. None for every other call.
#[allow(clippy::inline_always)] // the body of the entry point, as `get_fast_path`
#[inline(always)]
fn cached_call_fast_path<'py>(
    py: Python<'py>,
    f: &CachedCall,
    args: fastcall::Args<'_, 'py>,
) -> fastcall::Answer<'py> {
    if args.len() != 1 {
        return None;
    }
    let key = args.get(0)?;
    let q = Query::quick(&key)?;
    match f.cache.get().inner.get_fast(q.hash, &q, true).0 {
        Fast::Hit(v) => Some(Ok(v.into_bound(py))),
        Fast::Miss => {
            let (key, kind, hash) = (key.as_unbound(), q.kind, q.hash);
            let got = wait::attach(|py| {
                let key = key.bind(py);
                let q = Query { key, kind, hash };
                let args = PyTuple::new(py, [key])?;
                f.cache.get().fly(&q, f.func.bind(py), &args, None)
            });
            Some(got.map(|v| v.into_bound(py)))
        }
        Fast::Slow => None,
    }
}

#[pymethods]
impl CachedCall {
    #[new]
    fn new(cache: Py<Cache>, func: Bound<'_, PyAny>, slow: Bound<'_, PyAny>) -> PyResult<Self> {
        for (arg, f) in [("func", &func), ("slow", &slow)] {
            if !f.is_callable() {
                return Err(wrong_type(arg, "callable", f));
            }
        }
        Ok(Self {
            cache,
            func: func.unbind(),
            slow: slow.unbind(),
        })
    }

    /// The general call (the fast `tp_call` answers the usual one first):
    /// `slow(args, kwargs)`.
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        wait::call1(self.slow.bind(args.py()), (args, kwargs))
    }

    /// Bound to an instance as a method, as a function is.
    fn __get__<'py>(
        slf: &Bound<'py, Self>,
        obj: Option<&Bound<'py, PyAny>>,
        owner: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = owner;
        match obj {
            Some(obj) if !obj.is_none() => {
                // SAFETY: both pointers are live; PyMethod_New returns a new reference or
                // NULL with an exception set.
                unsafe {
                    Bound::from_owned_ptr_or_err(slf.py(), PyMethod_New(slf.as_ptr(), obj.as_ptr()))
                }
            }
            _ => Ok(slf.clone().into_any()),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.cache)?;
        visit.call(&self.func)?;
        visit.call(&self.slow)
    }
}
