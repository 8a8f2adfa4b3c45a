//! `Metrics`, `OpStats`, `OpTotals` and `Timer`: the Python face of
//! `core::metrics::Metrics`.
//!
//! `record` converts its arguments and calls the core with the GIL held (it is a few
//! atomics), and so does `totals` (at most 65 words); `snapshot` reads every slot's
//! histogram (about 10k words) and `ops` sweeps idle rings, both with the GIL released. `time(op)` returns a `Timer`: a context manager that measures with the
//! metrics' clock, and a decorator (sync or async) built by `ferrule._metrics.timed`.
//!
//! Garbage collection: no class here can be part of a reference cycle, so none needs
//! to be tracked. A `Metrics` holds no Python object at all (names are Rust strings, the
//! clock a Rust `Arc`), nor do `OpStats` and `OpTotals` (numbers; `OpTotals.buckets`
//! builds its tuple on each access); a `Timer` holds its `Metrics` and an exact `str` copy of the
//! operation name (a `str` subclass instance could hold references; an exact `str`
//! cannot), and neither leads anywhere.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

use crate::core::clock::{self, nanos_to_secs};
use crate::core::metrics::{self as core, MetricsError};
use crate::errors::wrong_type;
use crate::py::lookup::lookup;
use crate::py::{args, wait};

/// `op` as a str.
fn op_str<'a>(op: &'a Bound<'_, PyAny>) -> PyResult<&'a Bound<'a, PyString>> {
    op.cast::<PyString>()
        .map_err(|_| wrong_type("op", "a str", op))
}

/// Latency and outcome per operation name over a sliding window, in fixed memory per
/// operation, and lifetime totals in a fixed histogram.
#[pyclass(frozen, module = "ferrule", name = "Metrics")]
pub struct Metrics {
    inner: Arc<core::Metrics>,
}

#[pymethods]
impl Metrics {
    #[new]
    #[pyo3(signature = (*, window = 60.0, clock = None, buckets = None, max_ops = 10_000))]
    fn new(
        #[pyo3(from_py_with = args::named::window)] window: f64,
        clock: Option<&Bound<'_, PyAny>>,
        buckets: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::max_ops)] max_ops: i64,
    ) -> PyResult<Self> {
        let window = clock::positive_nanos(window, "window").map_err(MetricsError::from)?;
        let clock = args::clock(clock)?;
        let bounds = match buckets {
            Some(b) if !b.is_none() => bounds(b)?,
            _ => core::Bounds::default(),
        };
        let max_ops = usize::try_from(args::at_least(max_ops, "max_ops", 1)?)
            .map_err(|_| args::out_of_range("max_ops"))?;
        Ok(Self {
            inner: Arc::new(core::Metrics::with_limits(window, clock, bounds, max_ops)?),
        })
    }

    /// Record one call of `op` that took `seconds` (>= 0, finite, at most 4e9: else
    /// ValueError; an int too large for a float: OverflowError); `ok=False` counts it as
    /// an error.
    #[pyo3(signature = (op, seconds, ok = true))]
    fn record(&self, op: &Bound<'_, PyAny>, seconds: &Bound<'_, PyAny>, ok: bool) -> PyResult<()> {
        let op = op_str(op)?;
        let ns = clock::duration_nanos(args::seconds(seconds, "seconds")?, "seconds")?;
        self.inner.record(op.to_str()?, ns as u64, ok);
        Ok(())
    }

    /// A `Timer` for `op`: `with m.time("op"): ...` or `@m.time("op")`. It times one
    /// block or, as a decorator, every call.
    fn time(slf: &Bound<'_, Self>, op: &Bound<'_, PyAny>) -> PyResult<Timer> {
        let op = op_str(op)?;
        // Checked now rather than at every exit: a name that is not valid UTF-8 (lone
        // surrogates) raises here.
        let name = op.to_str()?;
        let op = if op.is_exact_instance_of::<PyString>() {
            op.clone()
        } else {
            PyString::new(slf.py(), name)
        };
        Ok(Timer {
            metrics: slf.clone().unbind(),
            op: op.unbind(),
            start: AtomicI64::new(IDLE),
        })
    }

    /// Statistics of `op` over the window (all zeros if unknown or reset).
    fn snapshot(&self, py: Python<'_>, op: &Bound<'_, PyAny>) -> PyResult<OpStats> {
        let op = op_str(op)?;
        let name = op.to_str()?;
        let inner = &self.inner;
        let s = wait::detach(py, || inner.snapshot(name));
        Ok(OpStats {
            count: s.count,
            errors: s.errors,
            rate: s.rate,
            mean: s.mean_ns / clock::NANOS_PER_SEC,
            p50: s.p50_ns / clock::NANOS_PER_SEC,
            p90: s.p90_ns / clock::NANOS_PER_SEC,
            p99: s.p99_ns / clock::NANOS_PER_SEC,
            max: nanos_to_secs(s.max_ns as i64),
        })
    }

    /// Lifetime figures of `op` since it was first recorded or reset (all zeros if
    /// unknown, reset or evicted).
    fn totals(&self, op: &Bound<'_, PyAny>) -> PyResult<OpTotals> {
        let t = self.inner.totals(op_str(op)?.to_str()?);
        Ok(OpTotals {
            count: t.count,
            errors: t.errors,
            sum: t.sum_ns as f64 / clock::NANOS_PER_SEC,
            buckets: t.cumulative,
        })
    }

    /// Sorted names of every operation with totals (recorded since its last reset and
    /// not evicted), idle in the window or not.
    fn ops(&self, py: Python<'_>) -> Vec<String> {
        let inner = &self.inner;
        wait::detach(py, || inner.ops())
    }

    /// Forget `op` (its recordings and totals vanish), or every operation when None.
    #[pyo3(signature = (op = None))]
    fn reset(&self, op: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        match op {
            None => self.inner.reset_all(),
            Some(o) => {
                self.inner.reset(op_str(o)?.to_str()?);
            }
        }
        Ok(())
    }

    /// The window in seconds.
    #[getter]
    fn window(&self) -> f64 {
        nanos_to_secs(self.inner.window_ns())
    }

    /// The upper bounds of the lifetime histogram in seconds, without `+Inf`.
    #[getter]
    fn buckets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.inner.bounds().secs())
    }

    /// Most operations kept (see the class docs).
    #[getter]
    fn max_ops(&self) -> usize {
        self.inner.max_ops()
    }

    fn __repr__(&self) -> String {
        format!(
            "Metrics(window={:?}, ops={})",
            nanos_to_secs(self.inner.window_ns()),
            self.inner.tracked()
        )
    }
}

/// `buckets`: an iterable of numbers of seconds (at most `MAX_BOUNDS + 1` items are
/// taken, so an endless iterator is refused rather than consumed), checked by the core.
fn bounds(obj: &Bound<'_, PyAny>) -> PyResult<core::Bounds> {
    let mut secs = Vec::new();
    for item in args::iterate(obj, "buckets", "a sequence of numbers of seconds")? {
        secs.push(args::seconds(&item?, "buckets")?);
        if secs.len() > core::MAX_BOUNDS {
            break;
        }
    }
    Ok(core::Bounds::new(&secs)?)
}

const IDLE: i64 = i64::MIN;

/// Returned by `Metrics.time`: times a `with` block, or decorates a function. Either way
/// it records into its `Metrics`.
#[pyclass(frozen, module = "ferrule", name = "Timer")]
pub struct Timer {
    metrics: Py<Metrics>,
    /// An exact `str` (see the module docs).
    op: Py<PyString>,
    /// Clock reading at `__enter__`, or `IDLE`.
    start: AtomicI64,
}

#[pymethods]
impl Timer {
    fn __enter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, Self>> {
        let me = slf.get();
        let now = me.metrics.get().inner.now_nanos();
        me.start
            .compare_exchange(IDLE, now, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| {
                PyRuntimeError::new_err(
                    "timer is already running: use a new time(op) for each block",
                )
            })?;
        Ok(slf.clone())
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyType>>,
        _exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let start = self.start.swap(IDLE, Ordering::AcqRel);
        if start == IDLE {
            return Err(PyRuntimeError::new_err("timer was not started"));
        }
        let m = &self.metrics.get().inner;
        // Both readings are in 0..=MAX_READING (2^62): the difference cannot overflow.
        let elapsed = (m.now_nanos() - start).max(0) as u64;
        m.record(self.op.bind(py).to_str()?, elapsed, exc_type.is_none());
        Ok(false)
    }

    /// Decorates `fn` (sync or async): every call is timed; an exception is recorded
    /// with `ok=False` and re-raised.
    fn __call__(&self, py: Python<'_>, func: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        if !func.is_callable() {
            return Err(wrong_type("func", "callable", func));
        }
        let timed = lookup!(py, "ferrule._metrics", "timed")?;
        Ok(timed
            .call1((self.metrics.clone_ref(py), self.op.clone_ref(py), func))?
            .unbind())
    }

    /// The operation name.
    #[getter]
    fn op(&self, py: Python<'_>) -> Py<PyString> {
        self.op.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("Timer(op={})", self.op.bind(py).repr()?))
    }
}

/// Statistics of one operation over a `Metrics` window; durations in seconds.
#[pyclass(frozen, get_all, module = "ferrule", name = "OpStats")]
pub struct OpStats {
    count: u64,
    errors: u64,
    /// Calls per second of window: `count / window`.
    rate: f64,
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

#[pymethods]
impl OpStats {
    fn __repr__(&self) -> String {
        format!(
            "OpStats(count={}, errors={}, rate={:?}, mean={:?}, p50={:?}, p90={:?}, p99={:?}, max={:?})",
            self.count, self.errors, self.rate, self.mean, self.p50, self.p90, self.p99, self.max
        )
    }
}

/// Lifetime figures of one operation of a `Metrics`, since it was first recorded (or
/// reset); `sum` in seconds.
///
/// Counters that only grow until `reset`; `buckets` cumulative (`le`), the last one
/// `+Inf`.
#[pyclass(frozen, module = "ferrule", name = "OpTotals")]
pub struct OpTotals {
    #[pyo3(get)]
    count: u64,
    #[pyo3(get)]
    errors: u64,
    #[pyo3(get)]
    sum: f64,
    buckets: Vec<u64>,
}

#[pymethods]
impl OpTotals {
    /// Cumulative counts: one per bound of `Metrics.buckets`, then `+Inf` (== `count`).
    #[getter]
    fn buckets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.buckets)
    }

    fn __repr__(&self) -> String {
        let buckets: Vec<String> = self.buckets.iter().map(u64::to_string).collect();
        format!(
            "OpTotals(count={}, errors={}, sum={:?}, buckets=({}{}))",
            self.count,
            self.errors,
            self.sum,
            buckets.join(", "),
            if buckets.len() == 1 { "," } else { "" }
        )
    }
}
