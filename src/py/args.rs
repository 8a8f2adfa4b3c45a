//! Argument conversion shared by the bindings: every refusal names the argument.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt};

use crate::core::clock::{self, Clock};
use crate::errors::wrong_type;
use crate::py::clock::ManualClock;

/// An int argument (bool refused: `True` is not a size).
pub fn int(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<i64> {
    if obj.is_instance_of::<PyInt>() && !obj.is_instance_of::<PyBool>() {
        obj.extract::<i64>()
            .map_err(|_| PyValueError::new_err(format!("{arg} is out of range")))
    } else {
        Err(wrong_type(arg, "an int", obj))
    }
}

/// An int argument that must be at least `min`.
pub fn int_at_least(obj: &Bound<'_, PyAny>, arg: &str, min: i64) -> PyResult<i64> {
    let v = int(obj, arg)?;
    if v < min {
        return Err(PyValueError::new_err(format!("{arg} must be >= {min}")));
    }
    Ok(v)
}

/// A number of seconds (int or float; bool refused).
pub fn seconds(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<f64> {
    if (obj.is_instance_of::<PyFloat>() || obj.is_instance_of::<PyInt>())
        && !obj.is_instance_of::<PyBool>()
    {
        obj.extract::<f64>()
    } else {
        Err(wrong_type(arg, "a number of seconds", obj))
    }
}

/// A strictly positive duration in nanoseconds, or `None`.
pub fn opt_positive_nanos(
    obj: Option<&Bound<'_, PyAny>>,
    arg: &'static str,
) -> PyResult<Option<i64>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => Ok(Some(clock::positive_nanos(seconds(o, arg)?, arg)?)),
    }
}

/// `clock=None` (monotonic) or a `ManualClock`.
pub fn clock(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Clock> {
    match obj {
        None => Ok(Clock::Monotonic),
        Some(o) if o.is_none() => Ok(Clock::Monotonic),
        Some(o) => match o.cast::<ManualClock>() {
            Ok(m) => Ok(Clock::Manual(m.get().inner.clone())),
            Err(_) => Err(wrong_type("clock", "a ferrule.ManualClock or None", o)),
        },
    }
}

/// A `timeout=` argument: `None` (wait forever) or a finite number of seconds >= 0.
pub fn opt_timeout(
    obj: Option<&Bound<'_, PyAny>>,
    arg: &'static str,
) -> PyResult<Option<std::time::Duration>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => {
            let ns = clock::duration_nanos(seconds(o, arg)?, arg)?;
            Ok(Some(std::time::Duration::from_nanos(ns as u64)))
        }
    }
}
