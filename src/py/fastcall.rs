//! Hot methods as CPython calls a builtin method, in front of PyO3's wrapper.
//!
//! PyO3 wraps every method in the same generic code: a trampoline (a panic trap, its
//! record of the attached thread, `catch_unwind`), argument extraction for any signature
//! (positional and keyword, defaults, conversions), and a type check of the receiver.
//! For a call that does little work that is most of the call: `callgrind` counted about
//! 150 of the 490 instructions of `Cache.get` hitting a cached int key in it, and `perf`
//! put the call at a third of the time of a hit on a small cache.
//!
//! A method here is a METH_FASTCALL | METH_KEYWORDS function installed in the class
//! over PyO3's method of the same name ([`install`]), which it keeps: the fast function
//! answers the one common shape of call it knows (positional arguments of exact builtin
//! types, say) when it can, and hands every other call to PyO3's method unchanged
//! ([`dispatch`]), so signatures, keyword arguments, conversions and error messages are
//! PyO3's. `inspect.signature` and the docstring are PyO3's too (copied into the new
//! method's definition).
//!
//! A class's `__call__` is answered the same way ([`install_call`], [`Call`]): its slot
//! wrapper is replaced by one for a `tp_call` that answers calls without keywords when
//! it can and hands every other to PyO3's `tp_call`, which it keeps. A subclass made
//! afterwards (in Python) inherits the fast `tp_call`.
//!
//! # What a fast path may do
//! The method descriptor that calls a fast function has checked the receiver's type, and
//! its caller is attached to the interpreter (it holds the GIL on builds with one). A
//! fast path gets the receiver and its positional arguments as references ([`Args`])
//! and answers with a new reference (a `Bound`), an error, or `None` to hand the call to
//! PyO3's method, which it may only do before it changed anything. It must not call
//! Python code, release the GIL, or drop a `Py` (PyO3 does not know the thread is
//! attached: a `Py` dropped here would have its reference count lowered later, by the
//! next PyO3 call); what it releases it releases as a `Bound`, at once, as anywhere (a
//! finalizer that runs then runs as it would in PyO3's method, with no lock held). Code
//! that must do more runs inside `crate::py::wait::attach`. A panic is caught and raised as PyO3's
//! `PanicException`, as PyO3 would.

use std::ffi::{CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::{Borrowed, PyClass};

/// One fast method: PyO3's method it stands in front of, once installed.
pub struct Method {
    name: &'static CStr,
    general: OnceLock<Py<PyAny>>,
}

impl Method {
    pub const fn new(name: &'static CStr) -> Self {
        Self {
            name,
            general: OnceLock::new(),
        }
    }
}

/// Installs `fast` as `ty`'s method `m.name`, in front of PyO3's method of that name.
/// Done once, while the module initialises (a second initialisation keeps the first's).
pub fn install(
    ty: &Bound<'_, PyType>,
    m: &'static Method,
    fast: ffi::PyCFunctionFastWithKeywords,
) -> PyResult<()> {
    if m.general.get().is_some() {
        return Ok(());
    }
    let name = m
        .name
        .to_str()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let general = ty.getattr(name)?;
    // The descriptor's doc as PyO3 wrote it: the text signature, then the docstring.
    let sig: String = general.getattr("__text_signature__")?.extract()?;
    let doc: String = general.getattr("__doc__")?.extract()?;
    let doc = CString::new(format!("{name}{sig}\n--\n\n{doc}"))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    // Leaked: a method definition must outlive every descriptor made from it, and this
    // one lives as long as the process (one per method: `general` is set once).
    let def = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: m.name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: fast,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: Box::leak(doc.into_boxed_c_str()).as_ptr(),
    }));
    let py = ty.py();
    // SAFETY: `ty` is a live type object and `def` a valid method definition that is
    // never freed.
    let descr = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyDescr_NewMethod(ty.as_ptr().cast::<ffi::PyTypeObject>(), def),
        )?
    };
    if m.general.set(general.unbind()).is_err() {
        return Ok(());
    }
    ty.setattr(name, descr)
}

/// The positional arguments of a call, for a fast path to read.
#[derive(Clone, Copy)]
pub struct Args<'a, 'py> {
    py: Python<'py>,
    args: &'a [*mut ffi::PyObject],
}

impl<'a, 'py> Args<'a, 'py> {
    /// The `i`-th, borrowed for the call.
    #[inline]
    pub fn get(&self, i: usize) -> Option<Borrowed<'a, 'py, PyAny>> {
        let p = *self.args.get(i)?;
        // SAFETY: `dispatch` made `args` from CPython's argument vector: live objects,
        // borrowed for the call, which outlives `'a`.
        Some(unsafe { Borrowed::from_ptr(self.py, p) })
    }

    /// How many there are.
    #[inline]
    pub fn len(&self) -> usize {
        self.args.len()
    }
}

/// The answer of a fast path: `None` to take PyO3's method (nothing changed yet), else
/// the result, a new reference.
pub type Answer<'py> = Option<PyResult<Bound<'py, PyAny>>>;

/// Defines `$entry`, the METH_FASTCALL | METH_KEYWORDS function of the method `$method`
/// (a [`Method`]) of the frozen class `$class`: `$fast(py, receiver, args)` answers a
/// positional call of as many arguments as `$nargs` allows (see [`dispatch`]).
macro_rules! entry {
    ($entry:ident, $method:expr, $class:ty, $nargs:expr, $fast:expr) => {
        unsafe extern "C" fn $entry(
            slf: *mut pyo3::ffi::PyObject,
            args: *const *mut pyo3::ffi::PyObject,
            nargs: pyo3::ffi::Py_ssize_t,
            kwnames: *mut pyo3::ffi::PyObject,
        ) -> *mut pyo3::ffi::PyObject {
            // SAFETY: CPython calls this as the method `$method` was installed as, on
            // `$class` (see `dispatch`).
            unsafe {
                $crate::py::fastcall::dispatch::<$class>(
                    &$method, slf, args, nargs, kwnames, $nargs, $fast,
                )
            }
        }
    };
}
pub(crate) use entry;

/// The body of a fast function: `fast(py, receiver, args)` for a positional call of
/// `nargs` in `range` (its answer, or `None` to take PyO3's method), PyO3's method for
/// any other.
///
/// # Safety
/// The arguments are those CPython passes a METH_FASTCALL | METH_KEYWORDS method that
/// [`install`] put in the class `T` for `m`. `fast` keeps the rules in the module docs.
#[allow(clippy::inline_always)] // one copy per fast method: the point is the inlining
#[inline(always)]
pub unsafe fn dispatch<T>(
    m: &Method,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    range: std::ops::RangeInclusive<usize>,
    fast: impl for<'a, 'py> FnOnce(Python<'py>, &'a T, Args<'a, 'py>) -> Answer<'py>,
) -> *mut ffi::PyObject
where
    T: PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync,
{
    if kwnames.is_null() && nargs >= 0 && range.contains(&nargs.unsigned_abs()) {
        // SAFETY: the method descriptor checked that `slf` is a `T`; `args` holds `nargs`
        // (>= 0) live arguments; the caller is attached (it called a method).
        if let Some(out) = unsafe { answer::<T>(slf, args, nargs.unsigned_abs(), fast) } {
            return out;
        }
    }
    // SAFETY: as this function's.
    unsafe { general(m, slf, args, nargs, kwnames) }
}

/// The common body of [`dispatch`] and [`dispatch_call`]: `fast(py, receiver, args)` on
/// the `n` positional arguments at `items`, a panic caught and raised as PyO3 would. The
/// answer (a new reference, or null with the error raised), or `None` to take PyO3's
/// wrapper.
///
/// # Safety
/// The caller is attached, `slf` is a live `T` (or an instance of a subclass of it) and
/// `items` points at `n` live objects, all borrowed for the call.
#[allow(clippy::inline_always)] // the body of every fast entry point: measured, as `dispatch`
#[inline(always)]
unsafe fn answer<T>(
    slf: *mut ffi::PyObject,
    items: *const *mut ffi::PyObject,
    n: usize,
    fast: impl for<'a, 'py> FnOnce(Python<'py>, &'a T, Args<'a, 'py>) -> Answer<'py>,
) -> Option<*mut ffi::PyObject>
where
    T: PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync,
{
    // SAFETY: the caller is attached.
    let py = unsafe { Python::assume_attached() };
    // The answer leaves the closure as one pointer (null: an error, raised): what
    // `catch_unwind` returns goes through memory. The receiver and the arguments are
    // made inside the closure: made outside and captured, they went through memory too
    // (measured: 2-4 ns more per `Cache.get`).
    match catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as this function's.
        let (receiver, args) = unsafe {
            (
                Borrowed::from_ptr(py, slf).cast_unchecked::<T>(),
                std::slice::from_raw_parts(items, n),
            )
        };
        match fast(py, receiver.get(), Args { py, args })? {
            Ok(out) => Some(out.into_ptr()),
            Err(e) => {
                e.restore(py);
                Some(std::ptr::null_mut())
            }
        }
    })) {
        Ok(out) => out,
        Err(payload) => {
            raise_panic(py, payload);
            Some(std::ptr::null_mut())
        }
    }
}

/// Calls PyO3's method with the same arguments, the receiver first.
#[cold]
#[inline(never)]
unsafe fn general(
    m: &Method,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: the caller is attached; `args` holds `nargs` positional arguments and,
    // after them, one per name in `kwnames` (a tuple, or null for none).
    unsafe {
        let py = Python::assume_attached();
        let Some(general) = m.general.get() else {
            PyRuntimeError::new_err("method not initialised").restore(py);
            return std::ptr::null_mut();
        };
        let nkw = if kwnames.is_null() {
            0
        } else {
            ffi::PyTuple_Size(kwnames)
        };
        let (Ok(npos), Ok(total)) = (usize::try_from(nargs), usize::try_from(nargs + nkw)) else {
            PyRuntimeError::new_err("negative argument count").restore(py);
            return std::ptr::null_mut();
        };
        let mut all: Vec<*mut ffi::PyObject> = Vec::new();
        if all.try_reserve_exact(total + 1).is_err() {
            return ffi::PyErr_NoMemory();
        }
        all.push(slf);
        if total > 0 {
            all.extend_from_slice(std::slice::from_raw_parts(args, total));
        }
        ffi::PyObject_Vectorcall(general.as_ptr(), all.as_ptr(), npos + 1, kwnames)
    }
}

/// A fast `__call__`: a class's `tp_call` in front of PyO3's, which it keeps.
pub struct Call {
    general: OnceLock<ffi::ternaryfunc>,
}

impl Call {
    pub const fn new() -> Self {
        Self {
            general: OnceLock::new(),
        }
    }
}

extern "C" {
    /// A slot wrapper (`wrapper_descriptor`) for `wrapped`, as CPython makes for a slot.
    fn PyDescr_NewWrapper(
        ty: *mut ffi::PyTypeObject,
        base: *mut ffi::wrapperbase,
        wrapped: *mut std::ffi::c_void,
    ) -> *mut ffi::PyObject;
}

/// Installs `fast` as `ty`'s `__call__`, in front of PyO3's: the class's `__call__` slot
/// wrapper is replaced by one for `fast` (with the same slot definition, so the same
/// signature and doc), which also sets `tp_call`; a subclass made later inherits `fast`
/// as it would PyO3's. Done once, while the module initialises.
pub fn install_call(
    ty: &Bound<'_, PyType>,
    c: &'static Call,
    fast: ffi::ternaryfunc,
) -> PyResult<()> {
    if c.general.get().is_some() {
        return Ok(());
    }
    let py = ty.py();
    let descr = ty.getattr("__dict__")?.get_item("__call__")?;
    // SAFETY: reading a type object's fields and, once checked to be a slot wrapper, the
    // descriptor's; `PyDescr_NewWrapper` returns a new reference or NULL with an error.
    unsafe {
        if ffi::Py_TYPE(descr.as_ptr()) != &raw mut ffi::PyWrapperDescr_Type {
            return Err(PyRuntimeError::new_err("__call__ is not a slot wrapper"));
        }
        let d = descr.as_ptr().cast::<ffi::PyWrapperDescrObject>();
        let Some(general) = (*ty.as_type_ptr()).tp_call else {
            return Err(PyRuntimeError::new_err("the class has no tp_call"));
        };
        let new = Bound::from_owned_ptr_or_err(
            py,
            PyDescr_NewWrapper(ty.as_type_ptr(), (*d).d_base, fast as *mut std::ffi::c_void),
        )?;
        if c.general.set(general).is_err() {
            return Ok(());
        }
        ty.setattr("__call__", new)
    }
}

/// Defines `$entry`, the `tp_call` of the frozen class `$class` installed for `$call` (a
/// [`Call`]): `$fast(py, receiver, args)` answers a call with positional arguments only
/// (see [`dispatch_call`]).
macro_rules! call_entry {
    ($entry:ident, $call:expr, $class:ty, $fast:expr) => {
        unsafe extern "C" fn $entry(
            slf: *mut pyo3::ffi::PyObject,
            args: *mut pyo3::ffi::PyObject,
            kwargs: *mut pyo3::ffi::PyObject,
        ) -> *mut pyo3::ffi::PyObject {
            // SAFETY: CPython calls this as the `tp_call` of a `$class` (see
            // `dispatch_call`).
            unsafe {
                $crate::py::fastcall::dispatch_call::<$class>(&$call, slf, args, kwargs, $fast)
            }
        }
    };
}
pub(crate) use call_entry;

/// The body of a fast `tp_call`: `fast(py, receiver, args)` for a call without keywords
/// (its answer, or `None` to take PyO3's `__call__`), PyO3's for any other.
///
/// # Safety
/// The arguments are those CPython passes the `tp_call` that [`install_call`] gave the
/// class `T` (or a subclass) for `c`: `args` a tuple, `kwargs` a dict or null. `fast`
/// keeps the rules in the module docs.
#[allow(clippy::inline_always)] // one copy per fast call: the point is the inlining
#[inline(always)]
pub unsafe fn dispatch_call<T>(
    c: &Call,
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
    fast: impl for<'a, 'py> FnOnce(Python<'py>, &'a T, Args<'a, 'py>) -> Answer<'py>,
) -> *mut ffi::PyObject
where
    T: PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync,
{
    // SAFETY: `kwargs` is null or a dict, `args` a tuple (the caller's contract).
    if kwargs.is_null() || unsafe { ffi::PyDict_Size(kwargs) } == 0 {
        // SAFETY: `slf` is a `T` (a subclass's instance starts as a `T`'s); a tuple's
        // items are live for the call; the caller is attached (it called an object).
        let out = unsafe {
            let n = ffi::PyTuple_GET_SIZE(args).unsigned_abs();
            let items = (*args.cast::<ffi::PyTupleObject>()).ob_item.as_ptr();
            answer::<T>(slf, items, n, fast)
        };
        if let Some(out) = out {
            return out;
        }
    }
    match c.general.get() {
        // SAFETY: PyO3's `tp_call` of `T`, with the arguments CPython gave this one.
        Some(general) => unsafe { general(slf, args, kwargs) },
        None => {
            // SAFETY: attached (see above).
            let py = unsafe { Python::assume_attached() };
            PyRuntimeError::new_err("__call__ not initialised").restore(py);
            std::ptr::null_mut()
        }
    }
}

/// Raises a caught panic as PyO3 reports one.
#[cold]
fn raise_panic(py: Python<'_>, payload: Box<dyn std::any::Any + Send>) {
    let msg = if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else {
        "panic from Rust code".to_owned()
    };
    PanicException::new_err((msg,)).restore(py);
}
