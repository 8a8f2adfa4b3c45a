//! One way for a binding to reach a Python object: `lookup!(py, "module", "name")`.
//!
//! Each call site owns one `PyOnceLock`, filled on first use (import, then getattr) and
//! reused ever after, so no hot path imports or looks an attribute up by name. Helpers
//! written in Python live in the private modules of `python/ferrule/` and are reached
//! only this way; the import is lazy (not at module init) because those modules import
//! `ferrule._native` themselves.
//!
//! A failed first lookup leaves the cell empty and returns the error; the next call tries
//! again. Two threads racing on the first call may both import; one value is kept.

/// `lookup!(py, "module", "name")` -> `PyResult<&Bound<'py, PyAny>>`, cached per call site.
macro_rules! lookup {
    ($py:expr, $module:literal, $name:literal) => {{
        static CELL: ::pyo3::sync::PyOnceLock<::pyo3::Py<::pyo3::PyAny>> =
            ::pyo3::sync::PyOnceLock::new();
        CELL.import($py, $module, $name)
    }};
}
pub(crate) use lookup;
