//! Argument conversion shared by the bindings: every refusal names the argument.
//!
//! The convention for numbers: TypeError for a value of the wrong type; OverflowError
//! when the value cannot be represented at all (an int beyond `i64`, an int beyond the
//! range of a float), as Python's own conversions do; ValueError when it is representable
//! but not allowed (below a minimum, NaN, a duration beyond `clock::MAX_SECONDS`).

use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt};

use crate::core::clock::{self, Clock};
use crate::errors::wrong_type;
use crate::py::clock::ManualClock;

/// OverflowError naming `arg`: its value cannot be represented.
pub fn out_of_range(arg: &str) -> PyErr {
    PyOverflowError::new_err(format!("{arg} is out of range"))
}

/// An int argument (bool refused: `True` is not a size); OverflowError beyond `i64`.
pub fn int(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<i64> {
    if obj.is_instance_of::<PyInt>() && !obj.is_instance_of::<PyBool>() {
        // An int (or subclass) converts without running Python code; the only failure
        // is a value outside i64.
        obj.extract::<i64>().map_err(|_| out_of_range(arg))
    } else {
        Err(wrong_type(arg, "an int", obj))
    }
}

/// An int argument that must be at least `min`.
pub fn int_at_least(obj: &Bound<'_, PyAny>, arg: &str, min: i64) -> PyResult<i64> {
    at_least(int(obj, arg)?, arg, min)
}

/// `v`, or ValueError naming `arg` when it is below `min`.
pub fn at_least(v: i64, arg: &str, min: i64) -> PyResult<i64> {
    if v < min {
        return Err(PyValueError::new_err(format!("{arg} must be >= {min}")));
    }
    Ok(v)
}

/// An int or float (bool refused) as a float; an int too large for a float is an
/// OverflowError naming `arg`. Other errors (an int subclass whose `__float__` raises)
/// propagate.
fn float(obj: &Bound<'_, PyAny>, arg: &str, what: &str) -> PyResult<f64> {
    if !(obj.is_instance_of::<PyFloat>() || obj.is_instance_of::<PyInt>())
        || obj.is_instance_of::<PyBool>()
    {
        return Err(wrong_type(arg, what, obj));
    }
    obj.extract::<f64>().map_err(|e| {
        if e.is_instance_of::<PyOverflowError>(obj.py()) {
            out_of_range(arg)
        } else {
            e
        }
    })
}

/// A number of seconds (int or float; bool refused).
pub fn seconds(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<f64> {
    float(obj, arg, "a number of seconds")
}

/// A finite number of seconds >= 0 (a wait, or a time since the Unix epoch).
pub fn finite_seconds(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<f64> {
    let secs = seconds(obj, arg)?;
    if !secs.is_finite() {
        return Err(PyValueError::new_err(format!(
            "{arg} must be a finite number of seconds"
        )));
    }
    if secs < 0.0 {
        return Err(PyValueError::new_err(format!("{arg} must be >= 0")));
    }
    Ok(secs)
}

/// A number (int or float; bool refused).
pub fn number(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<f64> {
    float(obj, arg, "a number")
}

/// A non-negative duration in nanoseconds (zero allowed), or `None`.
pub fn opt_duration_nanos(
    obj: Option<&Bound<'_, PyAny>>,
    arg: &'static str,
) -> PyResult<Option<i64>> {
    opt_nanos(obj, arg, clock::duration_nanos)
}

/// A strictly positive duration in nanoseconds, or `None`.
pub fn opt_positive_nanos(
    obj: Option<&Bound<'_, PyAny>>,
    arg: &'static str,
) -> PyResult<Option<i64>> {
    opt_nanos(obj, arg, clock::positive_nanos)
}

/// `None` (absent or given) as `None`, else seconds through `convert`.
fn opt_nanos(
    obj: Option<&Bound<'_, PyAny>>,
    arg: &'static str,
    convert: fn(f64, &'static str) -> Result<i64, clock::DurationError>,
) -> PyResult<Option<i64>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(convert(seconds(o, arg)?, arg)?)),
        _ => Ok(None),
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

/// A `str` argument (subclasses accepted).
pub fn string<'py>(
    obj: &Bound<'py, PyAny>,
    arg: &str,
) -> PyResult<Bound<'py, pyo3::types::PyString>> {
    obj.cast::<pyo3::types::PyString>()
        .cloned()
        .map_err(|_| wrong_type(arg, "a str", obj))
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

/// Python references held by a frozen pyclass, which its `__clear__` must be able to give
/// up (garbage collection of reference cycles through the object).
///
/// One small lock around `Option<T>`. `with` runs a closure on the value under the lock:
/// the closure may clone references (`clone_ref`) but must not run Python code, so no
/// Python code ever runs under the lock and no thread waits for the interpreter while
/// holding it. `__traverse__` uses `try_visit`, which never blocks (a value it cannot
/// see now is skipped: the collector only becomes more conservative); `__clear__` uses
/// `take`, and drops what it took after the lock is released.
pub struct Held<T>(parking_lot::Mutex<Option<T>>);

impl<T> Held<T> {
    pub fn new(value: Option<T>) -> Self {
        Self(parking_lot::Mutex::new(value))
    }

    /// `f` on the value (None once cleared), under the lock; `f` must not run Python.
    pub fn with<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        f(self.0.lock().as_ref())
    }

    /// For `__traverse__`: `visit` on the value if the lock is free right now.
    pub fn try_visit<E>(&self, visit: impl FnOnce(&T) -> Result<(), E>) -> Result<(), E> {
        match self.0.try_lock() {
            Some(g) => g.as_ref().map_or(Ok(()), visit),
            None => Ok(()),
        }
    }

    /// For `__clear__`: the value, for the caller to drop after this returns (with the
    /// lock released: dropping the last reference may run Python).
    pub fn take(&self) -> Option<T> {
        self.0.lock().take()
    }
}

/// `iter(obj)`: a TypeError (not iterable) names the argument; any other exception raised
/// by the object's `__iter__` (KeyboardInterrupt included) propagates unchanged.
pub fn iterate<'py>(
    obj: &Bound<'py, PyAny>,
    arg: &str,
    what: &str,
) -> PyResult<Bound<'py, pyo3::types::PyIterator>> {
    obj.try_iter().map_err(|e| not_iterable(e, obj, arg, what))
}

/// The error for a failed `iter(obj)`: TypeError naming `arg` when the object is not
/// iterable, else the object's own exception.
pub fn not_iterable(e: PyErr, obj: &Bound<'_, PyAny>, arg: &str, what: &str) -> PyErr {
    if e.is_instance_of::<pyo3::exceptions::PyTypeError>(obj.py()) {
        wrong_type(arg, what, obj)
    } else {
        e
    }
}

/// Typed arguments: one converter per argument name, for
/// `#[pyo3(from_py_with = named::cost)] cost: i64` with the argument's real default in
/// the signature (`cost = 1`), from which PyO3 writes the text signature (`cost=1`).
/// Each converts the type only, with the argument's name in its errors; range rules
/// stay with the callee, which sees the default too. (A converter knows no name of its
/// own, hence one function per name; `wrong_type`'s class keeps PyO3 from prefixing
/// "argument 'x': " to a message that already names it.)
pub mod named {
    use pyo3::prelude::*;

    macro_rules! named {
        ($($conv:ident -> $t:ty: $($name:ident),+;)*) => {$($(
            #[doc = concat!("`", stringify!($name), "`: see [`super::", stringify!($conv), "`].")]
            pub fn $name(obj: &Bound<'_, PyAny>) -> PyResult<$t> {
                super::$conv(obj, stringify!($name))
            }
        )+)*};
    }

    named! {
        seconds -> f64: start, window, per, reset_timeout, max_age, event_interval;
        opt_seconds -> Option<f64>: timeout;
        number -> f64: alert_threshold, severe_threshold;
        int -> i64: cost, amount, limit, maxsize, max_batch, max_per_agent, max_agents,
            min_size, half_open_max_calls, success_threshold, max_ops, deny_threshold;
        boolean -> bool: weak;
        overflow_name -> &'static str: overflow;
    }
}

/// A number of seconds, or None.
pub fn opt_seconds(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<Option<f64>> {
    if obj.is_none() {
        Ok(None)
    } else {
        seconds(obj, arg).map(Some)
    }
}

/// A bool (no truthiness: `1` or `"yes"` is a TypeError).
pub fn boolean(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<bool> {
    obj.cast::<PyBool>()
        .map(pyo3::types::PyBoolMethods::is_true)
        .map_err(|_| wrong_type(arg, "a bool", obj))
}

/// A queue overflow policy's name, as the policy's own `&'static str`.
pub fn overflow_name(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<&'static str> {
    let s = string(obj, arg)?;
    Ok(crate::core::queue::Overflow::parse(s.to_str()?)?.name())
}
