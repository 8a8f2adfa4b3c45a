//! Keys of the `RateLimiter` binding: a Python key as the core's [`Query`], and the
//! caller-side comparisons ([`Caller`]) the core asks for when a key needs Python.
//!
//! Any hashable object is a key, with dict semantics (`1`, `1.0` and `True` are one key;
//! an exception from a key's `__hash__` or `__eq__` propagates). Two paths:
//! - *Native*: exact `None`, `str`, `int`, `bytes`, `bool`, integral `float` (as the int of
//!   the same value) and exact tuples of those become a Rust-native [`KeyRef`] that borrows
//!   the caller's str/bytes data: no allocation, no Python object kept, no user code, and
//!   the core's lock-free fast path. Only a miss copies the key into an owned `Key`.
//! - *Opaque* (`KeyRef::Opaque`, with the key's hash): everything else (subclasses,
//!   floats with a fraction, UUIDs, enum members, user classes, tuples holding any of
//!   those) is stored as the Python object itself and compared with `==` outside every
//!   lock (see the core's module docs, "Keys"); the same object is recognised by
//!   identity under the side table's lock, with no comparison and no copy.
//!
//! Every key is hashed by Python's `hash()` (mixed): native ints by the same arithmetic
//! CPython uses ([`int_hash`]), the others by `PyObject_Hash` of an exact builtin (no user
//! code; str and bytes cache it). So an opaque key equal to a native one has its hash,
//! and the core finds one bucket for both, whichever came first.
//!
//! User code (an opaque key's `__hash__` and `__eq__`, and `__del__` when the limiter
//! drops a key) runs only through `wait::call` (it parks the thread if the interpreter
//! exits meanwhile), never under a lock of the limiter. A dropped key that may be the
//! last reference to its object is released into a list that is cleared through
//! `wait::call` too (see [`release`]).
//!
//! The exact-str case is prepared apart (see [`exact_str`]) so that `try_acquire` and
//! `check` build its query in a local of their own: the fast path then costs no more than
//! it did when only builtin keys were accepted.

use std::cell::RefCell;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyList, PyString, PyTuple};

use crate::core::ratelimit::{self, int_hash, Key, KeyKind, KeyRef, Query, Resolve, MAX_ATTEMPTS};
use crate::py::lookup::lookup;
use crate::py::wait;

/// Deepest tuple nesting kept on the native path (deeper tuples are opaque keys).
pub(crate) const MAX_DEPTH: u32 = 16;
/// 2^63 as a float: integral floats in `[-2^63, 2^63)` are i64 keys.
const TWO_63: f64 = 9_223_372_036_854_775_808.0;

/// The mixed hash the core stores, from a Python hash.
#[inline]
fn mixed(h: ffi::Py_hash_t) -> u64 {
    ratelimit::mix(h as u64)
}

/// `PyObject_Hash` of an object known to run no user code (an exact builtin).
///
/// # Safety
/// `p` must be a live object.
unsafe fn builtin_hash(py: Python<'_>, p: *mut ffi::PyObject) -> PyResult<u64> {
    // SAFETY: forwarded contract.
    let h = unsafe { ffi::PyObject_Hash(p) };
    if h == -1 {
        return Err(PyErr::fetch(py));
    }
    Ok(mixed(h))
}

/// An int's canonical text for `KeyRef::BigInt`: hexadecimal (`int.__format__` in base
/// 16 has no digit limit, unlike decimal `str()`).
///
/// # Safety
/// `p` must be a live exact int.
unsafe fn big_int_text(py: Python<'_>, p: *mut ffi::PyObject) -> PyResult<String> {
    // SAFETY: `p` is a live int; PyNumber_ToBase returns a new reference or NULL.
    let s = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyNumber_ToBase(p, 16))? };
    Ok(s.cast_into::<PyString>()?.to_str()?.to_owned())
}

/// The native form of a key, or `None` when it must be an opaque key.
///
/// Exact builtins only: a subclass may redefine `==` and `hash()`, so it is opaque. A str
/// that cannot be encoded to UTF-8 (lone surrogates) is opaque too.
///
/// # Safety
/// `p` must be a live object that stays alive for `'a`. str and bytes contents are
/// immutable, and a tuple holds strong references to its items, so every slice borrowed
/// here is valid for `'a`.
unsafe fn native<'a>(
    py: Python<'_>,
    p: *mut ffi::PyObject,
    depth: u32,
) -> PyResult<Option<KeyRef<'a>>> {
    // SAFETY (whole body): `p` is live per the contract; each FFI call below is the one
    // that matches the exact type just checked, and errors are fetched right after.
    unsafe {
        if p == ffi::Py_None() {
            return Ok(Some(KeyRef::None));
        }
        if ffi::PyUnicode_CheckExact(p) != 0 {
            let mut len: ffi::Py_ssize_t = 0;
            let data = ffi::PyUnicode_AsUTF8AndSize(p, &raw mut len);
            if data.is_null() || len < 0 {
                // Lone surrogates: not UTF-8, so not native; compared by Python instead.
                ffi::PyErr_Clear();
                return Ok(None);
            }
            // The UTF-8 buffer is cached on the str object and lives as long as it does.
            let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len as usize);
            return Ok(Some(KeyRef::Str(std::str::from_utf8_unchecked(bytes))));
        }
        if ffi::PyLong_CheckExact(p) != 0 || ffi::PyBool_Check(p) != 0 {
            let mut overflow: std::os::raw::c_int = 0;
            let v = ffi::PyLong_AsLongLongAndOverflow(p, &raw mut overflow);
            if overflow != 0 {
                return Ok(Some(KeyRef::BigInt(big_int_text(py, p)?)));
            }
            if v == -1 && !ffi::PyErr_Occurred().is_null() {
                return Err(PyErr::fetch(py));
            }
            return Ok(Some(KeyRef::Int(v)));
        }
        if ffi::PyFloat_CheckExact(p) != 0 {
            let f = ffi::PyFloat_AS_DOUBLE(p);
            // Integral floats are the int of the same value (1.0 == 1, as in a dict).
            #[allow(clippy::float_cmp)]
            if !f.is_finite() || f.trunc() != f {
                return Ok(None);
            }
            // [-2^63, 2^63): the cast is exact.
            if (-TWO_63..TWO_63).contains(&f) {
                return Ok(Some(KeyRef::Int(f as i64)));
            }
            let i = Bound::from_owned_ptr_or_err(py, ffi::PyLong_FromDouble(f))?;
            return Ok(Some(KeyRef::BigInt(big_int_text(py, i.as_ptr())?)));
        }
        if ffi::PyBytes_CheckExact(p) != 0 {
            let data = ffi::PyBytes_AsString(p);
            let len = ffi::PyBytes_Size(p);
            if data.is_null() || len < 0 {
                return Err(PyErr::fetch(py));
            }
            let b = std::slice::from_raw_parts(data.cast::<u8>(), len as usize);
            return Ok(Some(KeyRef::Bytes(b)));
        }
        if ffi::PyTuple_CheckExact(p) != 0 {
            return tuple(py, p, depth);
        }
        Ok(None)
    }
}

/// [`native`] for an exact tuple (kept out of line: it recurses and is the rare case).
///
/// # Safety
/// As for [`native`]; `p` must be an exact tuple.
#[inline(never)]
unsafe fn tuple<'a>(
    py: Python<'_>,
    p: *mut ffi::PyObject,
    depth: u32,
) -> PyResult<Option<KeyRef<'a>>> {
    if depth >= MAX_DEPTH {
        return Ok(None);
    }
    // SAFETY: `p` is a live tuple per the contract; its items are live while it is, and
    // each item is passed on under the same contract.
    unsafe {
        let n = ffi::PyTuple_Size(p);
        let mut items = Vec::with_capacity(n.max(0) as usize);
        for i in 0..n {
            let item = ffi::PyTuple_GetItem(p, i);
            if item.is_null() {
                return Err(PyErr::fetch(py));
            }
            match native(py, item, depth + 1)? {
                Some(k) => items.push(k),
                None => return Ok(None),
            }
        }
        Ok(Some(KeyRef::Tuple(items)))
    }
}

/// The object of an optional key argument (absent means `None`).
#[inline]
fn key_ptr(key: Option<&Bound<'_, PyAny>>) -> *mut ffi::PyObject {
    match key {
        Some(k) => k.as_ptr(),
        // SAFETY: None is immortal; only its address is taken.
        None => unsafe { ffi::Py_None() },
    }
}

/// An exact str key's UTF-8 text and mixed hash: the hottest case, kept apart so that
/// `try_acquire` and `check` build its query in a local of its own. (A query returned
/// through memory, or moved out of a `Result` that another path also fills, is copied
/// field by field at odd offsets: a store-forwarding stall per field, measured at ~5% of
/// a `try_acquire`.)
#[allow(clippy::inline_always)] // the fast path: measured
#[inline(always)]
pub fn exact_str<'a>(key: Option<&'a Bound<'_, PyAny>>) -> Option<(&'a str, u64)> {
    let p = key?.as_ptr();
    // SAFETY: `p` is borrowed for `'a`, and so is the UTF-8 buffer cached on a str; the
    // FFI calls match the type just checked. A failure (lone surrogates) is cleared: the
    // general path then meets the same key and makes it opaque.
    unsafe {
        if ffi::PyUnicode_CheckExact(p) == 0 {
            return None;
        }
        // A compact ASCII str (most keys) is its own UTF-8, inline; its hash is cached
        // once computed (read as CPython reads it: free-threaded builds store it racily).
        #[cfg(not(Py_3_14))]
        if ffi::PyUnicode_IS_COMPACT_ASCII(p) != 0 {
            let field = &raw mut (*p.cast::<ffi::PyASCIIObject>()).hash;
            let cached = (*field.cast::<std::sync::atomic::AtomicIsize>())
                .load(std::sync::atomic::Ordering::Relaxed);
            let h = if cached == -1 {
                ffi::PyObject_Hash(p)
            } else {
                cached
            };
            if h != -1 {
                let len = ffi::PyUnicode_GET_LENGTH(p).unsigned_abs();
                let bytes = std::slice::from_raw_parts(ffi::PyUnicode_DATA(p).cast::<u8>(), len);
                return Some((std::str::from_utf8_unchecked(bytes), mixed(h)));
            }
        }
        let mut len: ffi::Py_ssize_t = 0;
        let data = ffi::PyUnicode_AsUTF8AndSize(p, &raw mut len);
        if !data.is_null() {
            // A str's hash is computed once and cached on it; it cannot fail.
            let h = ffi::PyObject_Hash(p);
            if h != -1 {
                let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len as usize);
                return Some((std::str::from_utf8_unchecked(bytes), mixed(h)));
            }
        }
        ffi::PyErr_Clear();
        None
    }
}

/// Prepares an optional key argument (absent means `None`).
pub fn prepare<'a>(py: Python<'_>, key: Option<&'a Bound<'_, PyAny>>) -> PyResult<Query<'a>> {
    if let Some((s, h)) = exact_str(key) {
        return Ok(Query::with_hash(KeyRef::Str(s), h));
    }
    // SAFETY: the object is borrowed for `'a` (or is None).
    unsafe { prepare_other(py, key_ptr(key), key) }
}

/// [`prepare`] for everything but an exact UTF-8 str.
///
/// # Safety
/// `p` is `key`'s object (or None), live for `'a`.
unsafe fn prepare_other<'a>(
    py: Python<'_>,
    p: *mut ffi::PyObject,
    key: Option<&'a Bound<'_, PyAny>>,
) -> PyResult<Query<'a>> {
    // SAFETY: forwarded contract; `native` keys are exact builtins, so hashing them runs
    // no user code.
    unsafe {
        match native(py, p, 0)? {
            Some(KeyRef::Int(i)) => Ok(Query::with_hash(KeyRef::Int(i), mixed(int_hash(i)))),
            Some(k) => {
                let h = builtin_hash(py, p)?;
                Ok(Query::with_hash(k, h))
            }
            None => match key {
                Some(k) => Ok(Query::opaque(opaque_hash(k)?)),
                // None is native; unreachable.
                None => Ok(Query::with_hash(KeyRef::None, builtin_hash(py, p)?)),
            },
        }
    }
}

/// An opaque key's hash: `hash(key)` (user code, through `wait::call`). An unhashable key
/// gives a TypeError naming `key`; any other exception propagates.
fn opaque_hash(key: &Bound<'_, PyAny>) -> PyResult<u64> {
    let py = key.py();
    let hash = lookup!(py, "builtins", "hash")?;
    match wait::call1(hash, (key,)) {
        Ok(h) => Ok(mixed(h.extract::<ffi::Py_hash_t>()?)),
        Err(e) => {
            let unhashable = e.is_instance_of::<PyTypeError>(py)
                && key
                    .get_type()
                    .getattr("__hash__")
                    .is_ok_and(|h| h.is_none());
            if unhashable {
                Err(crate::errors::wrong_type("key", "hashable", key))
            } else {
                Err(e)
            }
        }
    }
}

/// A stored native key as the Python object it stands for.
fn to_object<'py>(py: Python<'py>, kind: &KeyKind) -> PyResult<Bound<'py, PyAny>> {
    Ok(match kind {
        KeyKind::None => py.None().into_bound(py),
        KeyKind::Int(i) => i.into_pyobject(py)?.into_any(),
        KeyKind::BigInt(hex) => py.get_type::<PyInt>().call1((&**hex, 16))?,
        KeyKind::Str(s) => PyString::new(py, s).into_any(),
        KeyKind::Bytes(b) => PyBytes::new(py, b).into_any(),
        KeyKind::Tuple(items) => {
            let objs = items
                .iter()
                .map(|k| to_object(py, k))
                .collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(py, objs)?.into_any()
        }
        KeyKind::Opaque(_) => {
            // The core asks `eq_native` about native keys only.
            return Err(PyRuntimeError::new_err("an opaque key has no native form"));
        }
    })
}

/// The caller's key for the core's comparisons: dict semantics, stored key on the left
/// (`stored is key or stored == key`), run through `wait::call`. Stored keys handed over
/// for a comparison are held until [`Caller::finish`] releases them (one may be the last
/// reference, if its key left the limiter meanwhile).
pub struct Caller<'a, 'py> {
    py: Python<'py>,
    key: Option<&'a Bound<'py, PyAny>>,
    held: RefCell<Vec<Py<PyAny>>>,
}

impl<'a, 'py> Caller<'a, 'py> {
    pub fn new(py: Python<'py>, key: Option<&'a Bound<'py, PyAny>>) -> Self {
        Self {
            py,
            key,
            held: RefCell::new(Vec::new()),
        }
    }

    /// Releases the held keys (after every lock), then passes `result` on.
    pub fn finish<T>(self, result: PyResult<T>, grave: Vec<Py<PyAny>>) -> PyResult<T> {
        let mut all = self.held.into_inner();
        all.extend(grave);
        release(self.py, all)?;
        result
    }

    fn obj(&self) -> Bound<'py, PyAny> {
        match self.key {
            Some(k) => k.clone(),
            None => self.py.None().into_bound(self.py),
        }
    }

    fn equal(&self, stored: &Bound<'py, PyAny>) -> PyResult<bool> {
        let key = self.obj();
        if stored.is(&key) {
            return Ok(true);
        }
        let equal = lookup!(self.py, "ferrule._ratelimit", "_equal")?;
        wait::call1(equal, (stored, key))?.extract()
    }
}

impl Resolve<Py<PyAny>> for Caller<'_, '_> {
    type Error = PyErr;

    fn eq_native(&self, stored: &Key) -> PyResult<bool> {
        self.equal(&to_object(self.py, stored.kind())?)
    }

    fn eq_stored(&self, stored: Py<PyAny>) -> PyResult<bool> {
        let eq = self.equal(stored.bind(self.py));
        self.held.borrow_mut().push(stored);
        eq
    }

    fn is_same(&self, stored: &Py<PyAny>) -> bool {
        let key = self.key.map_or_else(
            // SAFETY: None is immortal; only its address is compared.
            || unsafe { ffi::Py_None() },
            Bound::as_ptr,
        );
        stored.as_ptr() == key
    }

    fn clone_stored(&self, stored: &Py<PyAny>) -> Py<PyAny> {
        stored.clone_ref(self.py)
    }

    fn to_stored(&self) -> Py<PyAny> {
        self.obj().unbind()
    }

    fn unsettled(&self) -> PyErr {
        PyRuntimeError::new_err(format!(
            "gave up finding the key after {MAX_ATTEMPTS} attempts: each lost a race with \
             an insertion of a key with the same hash (does its __eq__ add keys to the limiter?)"
        ))
    }
}

/// Drops keys the limiter let go of, outside every lock. A reference that may be the last
/// one moves into a list that is cleared through `wait::call`, since a `__del__` is user
/// code; on a GIL build one that is not the last (no other thread can drop references
/// while this one holds the GIL) is dropped at once, which saves the call on the common
/// path of a key compared by `==`.
pub fn release(py: Python<'_>, grave: Vec<Py<PyAny>>) -> PyResult<()> {
    let maybe_last: Vec<Py<PyAny>> = if cfg!(Py_GIL_DISABLED) {
        grave
    } else {
        // SAFETY: each pointer is a live object owned by `grave`; reading its refcount.
        grave
            .into_iter()
            .filter(|obj| unsafe { ffi::Py_REFCNT(obj.as_ptr()) } <= 1)
            .collect()
    };
    if maybe_last.is_empty() {
        return Ok(());
    }
    let list = PyList::new(py, maybe_last)?;
    wait::call0(&list.getattr("clear")?)?;
    Ok(())
}
