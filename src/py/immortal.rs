//! On free-threaded CPython 3.13, ferrule's classes are made immortal when the module is
//! initialised.
//!
//! Creating an instance of a heap type increments the type's reference count, and
//! destroying it decrements it again. On the free-threaded 3.13 build that count is one
//! shared atomic for every thread but the type's creator, so two threads that each create
//! their own `Lease`, `Signal` or `Agent` objects write one cache line on every call:
//! `perf` on two threads taking and releasing leases of their own budgets put 47% of the
//! samples on the type's count (`_PyType_AllocNoTrack`, `_Py_IncRef`). An immortal
//! object's count is never written. CPython 3.14 keeps heap types' counts per thread, so
//! this is limited to 3.13.
//!
//! The classes live as long as the module anyway (their module holds them, and their
//! instances hold them); immortal, they are never freed, like CPython's own built-in
//! types. The free-threaded collector leaves immortal objects alone (it untracks them).
//! The change is made during the module's initialisation, before any other thread can
//! reach the classes.

use pyo3::prelude::*;
use pyo3::types::PyModule;

/// Makes every heap type in `m`'s namespace and the private classes created by the
/// extension immortal.
#[cfg(all(Py_GIL_DISABLED, not(Py_3_14)))]
pub fn make_types_immortal(m: &Bound<'_, PyModule>) {
    use pyo3::types::{PyDictMethods, PyModuleMethods, PyType};
    let py = m.py();
    for (_, value) in m.dict().iter() {
        if let Ok(t) = value.cast::<PyType>() {
            ft::set(t);
        }
    }
    for t in [
        py.get_type::<crate::py::bus::Worker>(),
        py.get_type::<crate::py::cache_async::CacheCall>(),
        py.get_type::<crate::py::pool::PoolWaiter>(),
        py.get_type::<crate::py::registry_owner::OwnerWatch>(),
    ] {
        ft::set(&t);
    }
}

/// Nothing to do where the GIL serialises reference counting, or where CPython keeps
/// heap types' counts per thread (3.14).
#[cfg(not(all(Py_GIL_DISABLED, not(Py_3_14))))]
pub fn make_types_immortal(_m: &Bound<'_, PyModule>) {}

#[cfg(all(Py_GIL_DISABLED, not(Py_3_14)))]
mod ft {
    use std::sync::atomic::Ordering::Relaxed;

    use pyo3::ffi;
    use pyo3::prelude::*;
    use pyo3::types::PyType;

    /// The local count that marks an object immortal (CPython's
    /// `_Py_IMMORTAL_REFCNT_LOCAL`).
    const IMMORTAL_LOCAL: u32 = u32::MAX;

    /// What CPython's `_Py_SetImmortal` does on this build, for a heap type only (static
    /// types are immortal already).
    pub fn set(t: &Bound<'_, PyType>) {
        let tp = t.as_type_ptr();
        // SAFETY: `tp` is a live type object (borrowed from `t`); only the module's
        // initialisation reaches it yet, so nothing changes its count concurrently.
        unsafe {
            if ffi::PyType_HasFeature(tp, ffi::Py_TPFLAGS_HEAPTYPE) == 0 {
                return;
            }
            let op = tp.cast::<ffi::PyObject>();
            (*op).ob_tid = 0;
            (*op).ob_ref_shared.store(0, Relaxed);
            (*op).ob_ref_local.store(IMMORTAL_LOCAL, Relaxed);
        }
    }
}
