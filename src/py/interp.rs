//! Small pieces of interpreter glue shared by the bindings.

use pyo3::prelude::*;

/// The signal check run between the slices of a detached wait (re-attaches for the
/// call), so that Ctrl-C raises KeyboardInterrupt promptly.
pub fn check_signals() -> PyResult<()> {
    #[allow(clippy::redundant_closure_for_method_calls)] // the method is not lifetime-generic
    Python::attach(|py| py.check_signals())
}
