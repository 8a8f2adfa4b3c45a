//! `ManualClock`: a thread-safe clock moved by hand, for deterministic tests.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::core::clock::{self, nanos_to_secs};
use crate::py::args;

/// `secs`, or OverflowError when no clock reading can be that far (finite values only:
/// NaN and infinities get their own ValueError).
fn beyond_the_end(secs: f64) -> PyResult<f64> {
    if secs.is_finite() && secs * clock::NANOS_PER_SEC > clock::MAX_READING as f64 {
        return Err(clock::ClockError::Overflow.into());
    }
    Ok(secs)
}

/// A clock that moves only when told to, for deterministic tests. Thread-safe; never goes
/// backwards.
#[pyclass(frozen, module = "ferrule", name = "ManualClock")]
pub struct ManualClock {
    pub(crate) inner: Arc<clock::ManualClock>,
}

#[pymethods]
impl ManualClock {
    #[new]
    #[pyo3(signature = (start = 0.0))]
    fn new(#[pyo3(from_py_with = args::named::start)] start: f64) -> PyResult<Self> {
        let start = clock::duration_nanos(start, "start")?;
        Ok(Self {
            inner: Arc::new(clock::ManualClock::new(start)),
        })
    }

    /// The current reading in seconds.
    fn now(&self) -> f64 {
        nanos_to_secs(self.inner.now_nanos())
    }

    /// Move forward by `seconds` (>= 0, else ValueError); returns the new reading.
    /// OverflowError (and no move) past the largest time.
    fn advance(&self, seconds: &Bound<'_, PyAny>) -> PyResult<f64> {
        let secs = beyond_the_end(args::seconds(seconds, "seconds")?)?;
        if secs < 0.0 {
            return Err(clock::ClockError::NegativeAdvance.into());
        }
        let ns = clock::duration_nanos(secs, "seconds")?;
        Ok(nanos_to_secs(self.inner.advance(ns)?))
    }

    /// Jump to `seconds`; ValueError if that is earlier than now, `OverflowError` if it
    /// is past the largest time.
    fn set(&self, seconds: &Bound<'_, PyAny>) -> PyResult<()> {
        let secs = beyond_the_end(args::seconds(seconds, "seconds")?)?;
        let ns = clock::secs_to_nanos(secs, "seconds")?;
        Ok(self.inner.set(ns)?)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let now = pyo3::types::PyFloat::new(py, self.now());
        Ok(format!("ManualClock({})", now.repr()?))
    }
}
