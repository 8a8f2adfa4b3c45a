//! The one place where Rust errors become Python exceptions, and where ferrule's own
//! exception classes are made.
//!
//! The [`exceptions!`] list below is the table of ferrule's exception classes, and the
//! only place one is made: each row gives a class's name, its bases (the root's own;
//! every other class's after `FerruleError`) and its docstring, which is the first line
//! of the class's docstring in `_native.pyi` (`tests/test_errors.py` walks the module's
//! exception classes and holds each to its row's promises and to the stub). Each class
//! is made once per interpreter with `type(name, bases, ns)`, `__module__` "ferrule":
//! multiple inheritance (`QueueFull` is a `FerruleError` and a `queue.Full`, so existing
//! `except` clauses keep working) is not expressible with `create_exception!`. A base
//! listed after `if_present` is added only where the running Python has it
//! (`queue.ShutDown` is new in 3.13).
//!
//! Below the table, one mapping per core error type: its `Display` text is the message,
//! the variant picks the class. Each is a `From`, so `?` converts, except the registry's,
//! whose class is one of the table's (made per interpreter) and whose message shows the
//! id as Python's `repr` does: that one is a function of `py`.

use pyo3::exceptions::{PyKeyError, PyMemoryError, PyOverflowError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule, PyString, PyTuple, PyType};

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
use crate::core::registry::RegistryError;

/// One exception class: its name, its bases besides `FerruleError` (`(module, name)`),
/// the bases it takes where the running Python has them, and its docstring.
struct Row {
    name: &'static str,
    bases: &'static [(&'static str, &'static str)],
    if_present: &'static [(&'static str, &'static str)],
    doc: &'static str,
}

/// Declares [`Exc`] and [`TABLE`] from one list, so a class and its row cannot drift
/// apart. The first row is the root: its bases are its own, every other row's follow
/// `FerruleError`.
macro_rules! exceptions {
    ($($name:ident($($module:literal . $base:literal),*)
        $(if_present($($omodule:literal . $obase:literal),*))? = $doc:literal,)+) => {
        /// ferrule's exception classes.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Exc {
            $($name,)+
        }

        const TABLE: &[Row] = &[$(Row {
            name: stringify!($name),
            bases: &[$(($module, $base)),*],
            if_present: &[$($(($omodule, $obase)),*)?],
            doc: $doc,
        },)+];

        const ALL: &[Exc] = &[$(Exc::$name,)+];
    };
}

exceptions! {
    FerruleError("builtins"."Exception") = "Base class of every exception ferrule raises.",
    AlreadyRegistered("builtins"."KeyError") =
        "The agent id is already registered (a ``KeyError``).",
    QueueFull("queue"."Full") = "The queue is full (also a ``queue.Full``).",
    QueueEmpty("queue"."Empty") = "The queue is empty (also a ``queue.Empty``).",
    QueueClosed() if_present("queue"."ShutDown") =
        "Raised by ``put`` after ``close()``/``shutdown()``, and by ``get`` once closed and drained.",
    CircuitOpen() = "The circuit is open; the call was not made.",
    PoolTimeout("builtins"."TimeoutError") =
        "No resource became available before the timeout (a ``TimeoutError``).",
    Discard() = "Raise inside a pool's ``with`` block to close and replace the item.",
    BackendError("builtins"."ConnectionError") =
        "The backend (e.g. Redis) failed (a ``ConnectionError``).",
    RateLimited() = "A rate limiter's tokens could not be had in time; ``decision`` says why.",
}

impl Exc {
    fn row(self) -> &'static Row {
        &TABLE[self as usize]
    }

    fn cell(self) -> &'static PyOnceLock<Py<PyType>> {
        static CELLS: [PyOnceLock<Py<PyType>>; ALL.len()] =
            [const { PyOnceLock::new() }; ALL.len()];
        &CELLS[self as usize]
    }

    /// The exception class, made from its row on first use.
    pub fn type_object(self, py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
        let ty = self
            .cell()
            .get_or_try_init(py, || -> PyResult<Py<PyType>> {
                let row = self.row();
                let mut bases = Vec::with_capacity(row.bases.len() + 1);
                if self != Exc::FerruleError {
                    bases.push(Exc::FerruleError.type_object(py)?.clone().into_any());
                }
                for (module, name) in row.bases {
                    bases.push(py.import(*module)?.getattr(*name)?);
                }
                for (module, name) in row.if_present {
                    if let Some(base) = py.import(*module)?.getattr_opt(*name)? {
                        bases.push(base);
                    }
                }
                let ns = PyDict::new(py);
                ns.set_item("__module__", "ferrule")?;
                ns.set_item("__doc__", row.doc)?;
                let ty = py
                    .get_type::<PyType>()
                    .call1((row.name, PyTuple::new(py, bases)?, ns))?;
                Ok(ty.cast_into::<PyType>()?.unbind())
            })?;
        Ok(ty.bind(py))
    }

    /// A new exception of this class with `msg`.
    pub fn err(self, py: Python<'_>, msg: impl Into<String>) -> PyErr {
        match self.type_object(py) {
            Ok(ty) => PyErr::from_type(ty.clone(), msg.into()),
            Err(e) => e,
        }
    }
}

/// Adds every exception class of the table to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for &exc in ALL {
        m.add(exc.row().name, exc.type_object(m.py())?)?;
    }
    Ok(())
}

// ---- core errors ----------------------------------------------------------------------

/// The exception for a registry error. A function of `py` rather than a `From`: its
/// class is made per interpreter, and the id is shown as Python's `repr` shows it.
pub fn registry_error(py: Python<'_>, e: RegistryError) -> PyErr {
    match e {
        RegistryError::Taken(id) => {
            let shown = PyString::new(py, &id)
                .repr()
                .map_or_else(|_| format!("{id:?}"), |r| r.to_string());
            Exc::AlreadyRegistered.err(py, format!("agent id {shown} is already registered"))
        }
        // As a dict says it: the key is the exception's argument.
        RegistryError::Missing(id) => PyKeyError::new_err(id.to_string()),
    }
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
///
/// The class is a subclass of `TypeError` made to pass for it (see [`arg_type_error`]):
/// PyO3 rewrites the message of an exact `TypeError` raised while it extracts an
/// argument (a typed argument of [`crate::py::args::named`]) to "argument 'x': ...", and
/// ferrule's messages already name the argument.
pub fn wrong_type(arg: &str, what: &str, got: &Bound<'_, PyAny>) -> PyErr {
    let tname = got
        .get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string());
    let msg = format!("{arg} must be {what}, not '{tname}'");
    match arg_type_error(got.py()) {
        Ok(ty) => PyErr::from_type(ty.clone(), msg),
        Err(e) => e,
    }
}

/// `wrong_type`'s class, made once per interpreter: `builtins.TypeError` by name, so a
/// traceback reads `TypeError: ...`, and pickled as a plain `TypeError` (a process
/// pool sends exceptions back that way).
fn arg_type_error(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static CELL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let ty = CELL.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let ns = PyDict::new(py);
        ns.set_item("__module__", "builtins")?;
        ns.set_item("__doc__", "An argument of the wrong type.")?;
        ns.set_item(
            "__reduce__",
            py.eval(c"lambda self, t=TypeError: (t, self.args)", None, None)?,
        )?;
        let base = py.get_type::<pyo3::exceptions::PyTypeError>();
        let ty = py
            .get_type::<PyType>()
            .call1(("TypeError", PyTuple::new(py, [base])?, ns))?;
        Ok(ty.cast_into::<PyType>()?.unbind())
    })?;
    Ok(ty.bind(py))
}
