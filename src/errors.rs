//! The one place where Rust errors become Python exceptions, and where ferrule's own
//! exception classes are made.
//!
//! `FerruleError` is a static exception type. Its subclasses also subclass a stdlib class
//! (`queue.Full`, `KeyError`, `TimeoutError`, ...) so that existing `except` clauses keep
//! working; multiple inheritance is not expressible with `create_exception!`, so those
//! classes are created once per interpreter with `type(name, bases, ns)`.

use pyo3::exceptions::{PyException, PyMemoryError, PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule, PyTuple, PyType};

use crate::core::breaker::BreakerError;
use crate::core::budget::BudgetError;
use crate::core::bus::BusError;
use crate::core::cache::{AllocError, CacheError};
use crate::core::clock::{ClockError, DurationError};
use crate::core::error_store::ErrorStoreError;
use crate::core::metrics::MetricsError;
use crate::core::pool::PoolError;
use crate::core::queue::QueueError;
use crate::core::ratelimit::RateError;

pyo3::create_exception!(
    ferrule,
    FerruleError,
    PyException,
    "Base class of every exception ferrule raises."
);

/// ferrule's exception classes that also subclass a stdlib class.
#[derive(Clone, Copy, Debug)]
pub enum Exc {
    AlreadyRegistered,
    QueueFull,
    QueueEmpty,
    QueueClosed,
    CircuitOpen,
    PoolTimeout,
    Discard,
    BackendError,
}

const ALL: [Exc; 8] = [
    Exc::AlreadyRegistered,
    Exc::QueueFull,
    Exc::QueueEmpty,
    Exc::QueueClosed,
    Exc::CircuitOpen,
    Exc::PoolTimeout,
    Exc::Discard,
    Exc::BackendError,
];

impl Exc {
    fn name(self) -> &'static str {
        match self {
            Self::AlreadyRegistered => "AlreadyRegistered",
            Self::QueueFull => "QueueFull",
            Self::QueueEmpty => "QueueEmpty",
            Self::QueueClosed => "QueueClosed",
            Self::CircuitOpen => "CircuitOpen",
            Self::PoolTimeout => "PoolTimeout",
            Self::Discard => "Discard",
            Self::BackendError => "BackendError",
        }
    }

    fn doc(self) -> &'static str {
        match self {
            Self::AlreadyRegistered => "The agent id is already registered (a KeyError).",
            Self::QueueFull => "The queue is full (a queue.Full).",
            Self::QueueEmpty => "The queue is empty (a queue.Empty).",
            Self::QueueClosed => "The queue is closed: raised by put after close, and by get once closed and drained.",
            Self::CircuitOpen => "The circuit is open; the call was not made.",
            Self::PoolTimeout => "No resource became available in time (a TimeoutError).",
            Self::Discard => "Raise inside a pool's with block to close and replace the item.",
            Self::BackendError => "The backend (e.g. Redis) failed (a ConnectionError).",
        }
    }

    /// The stdlib base beside `FerruleError`, if any.
    fn stdlib_base(self, py: Python<'_>) -> PyResult<Option<Bound<'_, PyAny>>> {
        let builtins = || py.import("builtins");
        Ok(Some(match self {
            Self::AlreadyRegistered => builtins()?.getattr("KeyError")?,
            Self::QueueFull => py.import("queue")?.getattr("Full")?,
            Self::QueueEmpty => py.import("queue")?.getattr("Empty")?,
            Self::PoolTimeout => builtins()?.getattr("TimeoutError")?,
            Self::BackendError => builtins()?.getattr("ConnectionError")?,
            Self::QueueClosed | Self::CircuitOpen | Self::Discard => return Ok(None),
        }))
    }

    fn cell(self) -> &'static PyOnceLock<Py<PyType>> {
        static CELLS: [PyOnceLock<Py<PyType>>; 8] = [const { PyOnceLock::new() }; 8];
        &CELLS[self as usize]
    }

    /// The exception class, created on first use.
    pub fn type_object(self, py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
        let ty = self
            .cell()
            .get_or_try_init(py, || -> PyResult<Py<PyType>> {
                let base = py.get_type::<FerruleError>().into_any();
                let bases = match self.stdlib_base(py)? {
                    Some(std) => PyTuple::new(py, [base, std])?,
                    None => PyTuple::new(py, [base])?,
                };
                let ns = PyDict::new(py);
                ns.set_item("__module__", "ferrule")?;
                ns.set_item("__doc__", self.doc())?;
                let ty = py.get_type::<PyType>().call1((self.name(), bases, ns))?;
                Ok(ty.cast_into::<PyType>()?.unbind())
            })?;
        Ok(ty.bind(py))
    }

    /// A new exception of this class with `msg`.
    #[allow(dead_code)] // used by the parts that raise these classes
    pub fn err(self, py: Python<'_>, msg: impl Into<String>) -> PyErr {
        match self.type_object(py) {
            Ok(ty) => PyErr::from_type(ty.clone(), msg.into()),
            Err(e) => e,
        }
    }
}

/// Adds every exception class to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("FerruleError", py.get_type::<FerruleError>())?;
    for exc in ALL {
        m.add(exc.name(), exc.type_object(py)?)?;
    }
    Ok(())
}

impl From<DurationError> for PyErr {
    fn from(e: DurationError) -> Self {
        PyValueError::new_err(e.to_string())
    }
}

impl From<ClockError> for PyErr {
    fn from(e: ClockError) -> Self {
        match e {
            ClockError::Overflow => PyOverflowError::new_err(e.to_string()),
            _ => PyValueError::new_err(e.to_string()),
        }
    }
}

impl From<CacheError> for PyErr {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::MaxSizeTooLarge => PyOverflowError::new_err(e.to_string()),
            CacheError::OutOfMemory => PyMemoryError::new_err(e.to_string()),
            _ => PyValueError::new_err(e.to_string()),
        }
    }
}

impl From<AllocError> for PyErr {
    fn from(e: AllocError) -> Self {
        PyMemoryError::new_err(e.to_string())
    }
}

impl From<QueueError> for PyErr {
    fn from(e: QueueError) -> Self {
        PyValueError::new_err(e.to_string())
    }
}

impl From<RateError> for PyErr {
    fn from(e: RateError) -> Self {
        PyValueError::new_err(e.to_string())
    }
}

impl From<BreakerError> for PyErr {
    fn from(e: BreakerError) -> Self {
        PyValueError::new_err(e.to_string())
    }
}

impl From<BusError> for PyErr {
    fn from(e: BusError) -> Self {
        PyValueError::new_err(e.to_string())
    }
}

impl From<MetricsError> for PyErr {
    fn from(e: MetricsError) -> Self {
        PyValueError::new_err(e.to_string())
    }
}

impl From<ErrorStoreError> for PyErr {
    fn from(e: ErrorStoreError) -> Self {
        PyValueError::new_err(e.to_string())
    }
}

impl From<BudgetError> for PyErr {
    fn from(e: BudgetError) -> Self {
        PyValueError::new_err(e.to_string())
    }
}

impl From<PoolError> for PyErr {
    fn from(e: PoolError) -> Self {
        PyValueError::new_err(e.to_string())
    }
}

/// TypeError for an argument of the wrong type: "`arg` must be `what`, not 'T'".
pub fn wrong_type(arg: &str, what: &str, got: &Bound<'_, PyAny>) -> PyErr {
    let tname = got
        .get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string());
    PyTypeError::new_err(format!("{arg} must be {what}, not '{tname}'"))
}
