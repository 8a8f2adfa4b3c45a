//! `CircuitBreaker`: the Python face of `core::breaker::Breaker`.
//!
//! `call` runs the protected function in the caller's thread with no lock held:
//! admitting the call and recording its outcome are each a load and at most a CAS on the
//! core's state word (the core takes no lock at all). Changes of state are reported after
//! the core has made them, in the thread that made them: first `on_state_change(old,
//! new)`, then `bus.publish("breaker.<name>.state", {...})`. An exception from either is
//! reported through `sys.unraisablehook` and does not change the call's outcome. The
//! protected function, the callback, `publish` and the `expected` check (which may run a
//! metaclass's `__instancecheck__`) are called through `wait::call*`.
//!
//! Garbage collection: `expected`, `on_state_change` and `bus` may lead back to the
//! breaker (`CircuitBreaker(on_state_change=self.on_change)` stored on `self`), so they
//! live in a `Held` that `__traverse__` visits and `__clear__` empties. They are read only
//! on a change of state or an exception, never on the path of a call that returns.
//! `name` and the topic are exact `str`s, which cannot lead anywhere.
//!
//! The decorator and the context managers (sync and async) live in
//! `ferrule._breaker`; they drive the core through `_acquire` and `_record`, carrying
//! the permit in a context variable so that concurrent `with` blocks on one breaker in
//! different threads or tasks each record their own outcome.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::breaker::{
    Breaker, Config, Permit, Rejected, State, Stats, Transition, Trip, WindowSpec, FOREVER,
};
use crate::core::clock::{self, nanos_to_secs};

use crate::errors::{wrong_type, Exc};
use crate::py::args::{self, Held};
use crate::py::lookup::lookup;
use crate::py::wait;

/// `isinstance(obj, classes)` through `wait::call1`: a metaclass may define
/// `__instancecheck__`, which is user code.
fn isinstance(obj: &Bound<'_, PyAny>, classes: &Bound<'_, PyTuple>) -> PyResult<bool> {
    let f = lookup!(obj.py(), "builtins", "isinstance")?;
    wait::call1(f, (obj, classes))?.is_truthy()
}

/// An optional argument, `None` counting as absent.
fn given<'py>(o: Option<&Bound<'py, PyAny>>) -> Option<Bound<'py, PyAny>> {
    o.filter(|o| !o.is_none()).cloned()
}

/// Nanoseconds as seconds, [`FOREVER`] as infinity (a forced-open breaker).
fn secs_or_forever(ns: i64) -> f64 {
    if ns == FOREVER {
        f64::INFINITY
    } else {
        nanos_to_secs(ns)
    }
}

/// An int argument that may be absent (`None`).
fn opt_int(o: Option<&Bound<'_, PyAny>>, arg: &str) -> PyResult<Option<i64>> {
    given(o).map(|o| args::int(&o, arg)).transpose()
}

/// The closed state's rule from the arguments that choose it (see `CircuitBreaker`).
fn trip_rule(
    failure_threshold: Option<i64>,
    failure_rate: Option<&Bound<'_, PyAny>>,
    min_calls: Option<i64>,
    window: Option<&Bound<'_, PyAny>>,
    window_calls: Option<i64>,
) -> PyResult<Trip> {
    let window = args::opt_positive_nanos(window, "window")?;
    let Some(rate) = given(failure_rate) else {
        for (arg, set) in [
            ("min_calls", min_calls.is_some()),
            ("window", window.is_some()),
            ("window_calls", window_calls.is_some()),
        ] {
            if set {
                return Err(PyValueError::new_err(format!(
                    "{arg} requires failure_rate"
                )));
            }
        }
        return Ok(Trip::Consecutive(failure_threshold.unwrap_or(5)));
    };
    let rate = args::number(&rate, "failure_rate")?;
    if failure_threshold.is_some() {
        return Err(PyValueError::new_err(
            "failure_threshold and failure_rate cannot both be given",
        ));
    }
    let window = match (window, window_calls) {
        (Some(_), Some(_)) => {
            return Err(PyValueError::new_err(
                "window and window_calls cannot both be given",
            ))
        }
        (_, Some(n)) => WindowSpec::Calls(n),
        (Some(ns), None) => WindowSpec::Nanos(ns),
        (None, None) => WindowSpec::Nanos(60_000_000_000),
    };
    Ok(Trip::Rate {
        rate,
        min_calls: min_calls.unwrap_or(20),
        window,
    })
}

/// A tuple of exception classes from a class or a tuple of classes.
fn exception_classes<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
    let py = obj.py();
    let what = "an exception class or a tuple of exception classes";
    let base = py.get_type::<pyo3::exceptions::PyBaseException>();
    let is_exc_class = |o: &Bound<'py, PyAny>| -> PyResult<bool> {
        Ok(match o.cast::<PyType>() {
            Ok(t) => t.is_subclass(&base)?,
            Err(_) => false,
        })
    };
    if let Ok(t) = obj.cast::<PyTuple>() {
        if t.is_empty() {
            return Err(PyValueError::new_err("expected must not be empty"));
        }
        for item in t.iter() {
            if !is_exc_class(&item)? {
                return Err(wrong_type("expected", what, &item));
            }
        }
        return Ok(t.clone());
    }
    if is_exc_class(obj)? {
        return PyTuple::new(py, [obj]);
    }
    Err(wrong_type("expected", what, obj))
}

/// The Python objects a breaker calls or consults, which may lead back to it.
struct Hooks {
    expected: Py<PyTuple>,
    on_state_change: Option<Py<PyAny>>,
    bus: Option<Py<PyAny>>,
}

/// A circuit breaker: stops calling a dependency that keeps failing, and probes it again
/// after a while.
#[pyclass(frozen, module = "ferrule", name = "CircuitBreaker")]
pub struct CircuitBreaker {
    /// Boxed: the core over-aligns its hot words to cache lines, and a Python object's
    /// memory is only 16-byte aligned.
    core: Box<Breaker>,
    /// Emptied by `__clear__`; afterwards no exception counts and nothing is reported.
    hooks: Held<Hooks>,
    name: Option<Py<PyString>>,
    /// `breaker.<name>.state`, when there is a bus.
    topic: Option<Py<PyString>>,
}

impl CircuitBreaker {
    /// Reports a change of state. No lock is held here (the core takes none; the hooks
    /// are cloned out of theirs first), so user code may run and may call back into the
    /// breaker.
    fn notify(&self, py: Python<'_>, t: Option<Transition>) {
        let Some(t) = t else { return };
        let (from, to) = (t.from.as_str(), t.to.as_str());
        let (on_state_change, bus) = self.hooks.with(|h| {
            h.map_or((None, None), |h| {
                (
                    h.on_state_change.as_ref().map(|c| c.clone_ref(py)),
                    h.bus.as_ref().map(|b| b.clone_ref(py)),
                )
            })
        });
        if let Some(cb) = on_state_change {
            let cb = cb.bind(py);
            if let Err(e) = wait::call1(cb, (from, to)) {
                wait::report(py, e, Some(cb));
            }
        }
        if let (Some(bus), Some(topic)) = (bus, &self.topic) {
            let bus = bus.bind(py);
            let publish = || -> PyResult<()> {
                let data = PyDict::new(py);
                data.set_item("name", &self.name)?;
                data.set_item("state", to)?;
                data.set_item("previous", from)?;
                wait::call1(&bus.getattr(intern!(bus.py(), "publish"))?, (topic, data))?;
                Ok(())
            };
            if let Err(e) = publish() {
                wait::report(py, e, Some(bus));
            }
        }
    }

    /// The `expected` classes (an empty tuple once cleared).
    fn expected_now<'py>(&self, py: Python<'py>) -> Bound<'py, PyTuple> {
        self.hooks
            .with(|h| h.map(|h| h.expected.clone_ref(py)))
            .map_or_else(|| PyTuple::empty(py), |t| t.into_bound(py))
    }

    fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("circuit breaker '{n}'"),
            None => "circuit breaker".to_owned(),
        }
    }

    /// `CircuitOpen` with `retry_after` (seconds) set on the instance.
    fn rejected(&self, py: Python<'_>, r: Rejected) -> PyErr {
        let retry_after = secs_or_forever(r.retry_after);
        let msg = match r.state {
            State::ForcedOpen => format!("{} is forced open", self.label()),
            State::HalfOpen => format!(
                "{} is half-open and its {} probe call(s) are in flight",
                self.label(),
                self.core.half_open_max_calls()
            ),
            _ => format!("{} is open; retry after {retry_after:.3} s", self.label()),
        };
        // The instance is made here rather than by normalizing a lazy `PyErr`: PyO3
        // normalizes by detaching and re-attaching outside `wait`, which a daemon thread
        // must not do at interpreter exit. The class is a heap type whose `__init__` a
        // user could replace, so it is called through `wait::call1`.
        let made = Exc::CircuitOpen.type_object(py).and_then(|ty| {
            let exc = wait::call1(ty.as_any(), (msg,))?;
            exc.setattr(intern!(py, "retry_after"), retry_after)?;
            Ok(exc)
        });
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        }
    }

    fn admit(&self, py: Python<'_>) -> PyResult<Permit> {
        match self.core.acquire() {
            Ok((permit, t)) => {
                self.notify(py, t);
                Ok(permit)
            }
            Err(r) => Err(self.rejected(py, r)),
        }
    }

    /// Records the outcome of the call admitted with `permit`: `None` for a return,
    /// else the exception it raised.
    fn record(&self, py: Python<'_>, permit: Permit, exc: Option<&Bound<'_, PyAny>>) {
        let expected = exc.map(|_| self.expected_now(py));
        let t = match exc
            .zip(expected.as_ref())
            .map(|(e, x)| (isinstance(e, x), x))
        {
            None => self.core.success(permit),
            Some((Ok(true), _)) => self.core.failure(permit),
            Some((Ok(false), _)) => {
                self.core.release(permit);
                None
            }
            Some((Err(err), x)) => {
                // An `__instancecheck__` that raises: the call counts neither way, and
                // the caller still gets the call's own exception.
                self.core.release(permit);
                wait::report(py, err, Some(x.as_any()));
                None
            }
        };
        self.notify(py, t);
    }

    fn state_now(&self, py: Python<'_>) -> State {
        let (s, t) = self.core.state();
        self.notify(py, t);
        s
    }
}

#[pymethods]
impl CircuitBreaker {
    #[new]
    #[pyo3(
        signature = (failure_threshold = None, reset_timeout = 30.0, *, failure_rate = None,
                     min_calls = None, window = None, window_calls = None, slow_call = None,
                     half_open_max_calls = 1, success_threshold = 1, expected = None,
                     clock = None, name = None, on_state_change = None, bus = None),
        // Written out only for `expected`, whose default, a tuple, PyO3 cannot print.
        text_signature = "(failure_threshold=None, reset_timeout=30.0, *, failure_rate=None, min_calls=None, window=None, window_calls=None, slow_call=None, half_open_max_calls=1, success_threshold=1, expected=(Exception,), clock=None, name=None, on_state_change=None, bus=None)"
    )]
    #[allow(clippy::too_many_arguments)] // the Python signature
    fn new(
        py: Python<'_>,
        failure_threshold: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::reset_timeout)] reset_timeout: f64,
        failure_rate: Option<&Bound<'_, PyAny>>,
        min_calls: Option<&Bound<'_, PyAny>>,
        window: Option<&Bound<'_, PyAny>>,
        window_calls: Option<&Bound<'_, PyAny>>,
        slow_call: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::half_open_max_calls)] half_open_max_calls: i64,
        #[pyo3(from_py_with = args::named::success_threshold)] success_threshold: i64,
        expected: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
        name: Option<&Bound<'_, PyAny>>,
        on_state_change: Option<&Bound<'_, PyAny>>,
        bus: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let reset_timeout = clock::duration_nanos(reset_timeout, "reset_timeout")?;
        let trip = trip_rule(
            opt_int(failure_threshold, "failure_threshold")?,
            failure_rate,
            opt_int(min_calls, "min_calls")?,
            window,
            opt_int(window_calls, "window_calls")?,
        )?;
        let slow_call = args::opt_positive_nanos(slow_call, "slow_call")?;
        let expected = match given(expected) {
            Some(o) => exception_classes(&o)?,
            None => PyTuple::new(py, [py.get_type::<pyo3::exceptions::PyException>()])?,
        };
        let clock = args::clock(clock)?;
        let name = match given(name) {
            Some(o) => match o.cast_into::<PyString>() {
                Ok(s) => {
                    let s = s.to_str()?;
                    if s.is_empty() {
                        return Err(PyValueError::new_err("name must not be empty"));
                    }
                    // An exact str (a subclass instance could hold references).
                    Some(PyString::new(py, s).unbind())
                }
                Err(e) => return Err(wrong_type("name", "a str or None", e.into_inner().as_any())),
            },
            None => None,
        };
        let on_state_change = match given(on_state_change) {
            Some(o) if o.is_callable() => Some(o.unbind()),
            Some(o) => return Err(wrong_type("on_state_change", "callable or None", &o)),
            None => None,
        };
        let (bus, topic) = match given(bus) {
            Some(o) => {
                if !o.getattr("publish").is_ok_and(|p| p.is_callable()) {
                    return Err(wrong_type(
                        "bus",
                        "an object with a publish(type, data) method",
                        &o,
                    ));
                }
                let Some(n) = &name else {
                    return Err(PyValueError::new_err("name is required when bus is given"));
                };
                let topic = PyString::new(py, &format!("breaker.{}.state", n.bind(py)));
                (Some(o.unbind()), Some(topic.unbind()))
            }
            None => (None, None),
        };
        let config = Config {
            trip,
            reset_timeout,
            half_open_max_calls,
            success_threshold,
            slow_call,
        };
        let core = Box::new(Breaker::with_config(config, clock)?);
        Ok(Self {
            core,
            hooks: Held::new(Some(Hooks {
                expected: expected.unbind(),
                on_state_change,
                bus,
            })),
            name,
            topic,
        })
    }

    /// `func(*args, **kwargs)` through the breaker: raises `CircuitOpen` without calling
    /// while open; otherwise returns or raises what `func` does.
    #[pyo3(signature = (func, /, *args, **kwargs))]
    fn call(
        &self,
        py: Python<'_>,
        func: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let permit = self.admit(py)?;
        match wait::call(func, args, kwargs) {
            Ok(v) => {
                self.notify(py, self.core.success(permit));
                Ok(v.unbind())
            }
            Err(e) => {
                self.record(py, permit, Some(e.value(py).as_any()));
                Err(e)
            }
        }
    }

    /// Decorates a function (sync or async) so that every call goes through the breaker.
    fn __call__(slf: &Bound<'_, Self>, func: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        if !func.is_callable() {
            return Err(wrong_type("func", "callable", func));
        }
        let py = slf.py();
        Ok(lookup!(py, "ferrule._breaker", "_decorate")?
            .call1((slf, func))?
            .unbind())
    }

    fn __enter__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(lookup!(slf.py(), "ferrule._breaker", "_enter")?
            .call1((slf,))?
            .unbind())
    }

    #[pyo3(signature = (exc_type, exc, tb))]
    fn __exit__(
        slf: &Bound<'_, Self>,
        exc_type: &Bound<'_, PyAny>,
        exc: &Bound<'_, PyAny>,
        tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let _ = (exc_type, tb);
        lookup!(slf.py(), "ferrule._breaker", "_exit")?.call1((slf, exc))?;
        Ok(false)
    }

    fn __aenter__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(lookup!(slf.py(), "ferrule._breaker", "_aenter")?
            .call1((slf,))?
            .unbind())
    }

    #[pyo3(signature = (exc_type, exc, tb))]
    fn __aexit__(
        slf: &Bound<'_, Self>,
        exc_type: &Bound<'_, PyAny>,
        exc: &Bound<'_, PyAny>,
        tb: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let _ = (exc_type, tb);
        Ok(lookup!(slf.py(), "ferrule._breaker", "_aexit")?
            .call1((slf, exc))?
            .unbind())
    }

    /// Admits a call or raises CircuitOpen; returns the permit to pass to `_record`.
    fn _acquire(&self, py: Python<'_>) -> PyResult<u128> {
        Ok(self.admit(py)?.to_bits())
    }

    /// Records how the call admitted with `permit` ended (`exc` None: it returned).
    #[pyo3(signature = (permit, exc = None))]
    fn _record(
        &self,
        py: Python<'_>,
        permit: u128,
        exc: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let permit = Permit::from_bits(permit)
            .ok_or_else(|| PyValueError::new_err("permit is not a permit of this breaker"))?;
        let exc = exc.filter(|e| !e.is_none());
        if let Some(e) = exc {
            if !e.is_instance_of::<pyo3::exceptions::PyBaseException>() {
                return Err(PyTypeError::new_err(
                    "exc must be an exception instance or None",
                ));
            }
        }
        self.record(py, permit, exc);
        Ok(())
    }

    /// The state a call would meet now. `"closed"`, `"open"`, `"half_open"`,
    /// `"forced_open"` or `"forced_closed"`; an open breaker whose timeout has passed
    /// becomes half-open when it is next called or its state is read.
    #[getter]
    fn state(&self, py: Python<'_>) -> &'static str {
        self.state_now(py).as_str()
    }

    /// Seconds until an open breaker lets a probe through; 0.0 when not open, infinity
    /// when forced open.
    #[getter]
    fn retry_after(&self, py: Python<'_>) -> f64 {
        self.state_now(py);
        secs_or_forever(self.core.retry_after())
    }

    #[getter]
    fn name(&self, py: Python<'_>) -> Option<Py<PyString>> {
        self.name.as_ref().map(|n| n.clone_ref(py))
    }

    /// Consecutive failures that open the breaker; None under the failure-rate rule.
    #[getter]
    fn failure_threshold(&self) -> Option<i64> {
        match self.core.config().trip {
            Trip::Consecutive(n) => Some(n),
            Trip::Rate { .. } => None,
        }
    }

    /// The failure rate that opens the breaker; None under the consecutive rule.
    #[getter]
    fn failure_rate(&self) -> Option<f64> {
        match self.core.config().trip {
            Trip::Rate { rate, .. } => Some(rate),
            Trip::Consecutive(_) => None,
        }
    }

    /// Calls the window must hold before the rate can open the breaker; None under the
    /// consecutive rule.
    #[getter]
    fn min_calls(&self) -> Option<i64> {
        match self.core.config().trip {
            Trip::Rate { min_calls, .. } => Some(min_calls),
            Trip::Consecutive(_) => None,
        }
    }

    /// Seconds of a time window; None otherwise.
    #[getter]
    fn window(&self) -> Option<f64> {
        match self.core.config().trip {
            Trip::Rate {
                window: WindowSpec::Nanos(ns),
                ..
            } => Some(nanos_to_secs(ns)),
            _ => None,
        }
    }

    /// Calls of a count window; None otherwise.
    #[getter]
    fn window_calls(&self) -> Option<i64> {
        match self.core.config().trip {
            Trip::Rate {
                window: WindowSpec::Calls(n),
                ..
            } => Some(n),
            _ => None,
        }
    }

    /// Seconds from which a call that returns counts as a failure; None when off.
    #[getter]
    fn slow_call(&self) -> Option<f64> {
        self.core.config().slow_call.map(nanos_to_secs)
    }

    /// Probe successes in half-open that close the breaker.
    #[getter]
    fn success_threshold(&self) -> i64 {
        self.core.config().success_threshold
    }

    #[getter]
    fn reset_timeout(&self) -> f64 {
        nanos_to_secs(self.core.reset_timeout_nanos())
    }

    #[getter]
    fn half_open_max_calls(&self) -> u32 {
        self.core.half_open_max_calls()
    }

    #[getter]
    fn expected<'py>(&self, py: Python<'py>) -> Bound<'py, PyTuple> {
        self.expected_now(py)
    }

    /// Close the breaker (from any state, the forced ones too) and clear its run of
    /// failures and its window; calls in flight from before the reset no longer count.
    fn reset(&self, py: Python<'_>) {
        let t = self.core.reset();
        self.notify(py, t);
    }

    /// Hold the breaker open until `reset()` or `force_closed()`: every call raises
    /// `CircuitOpen` (with `retry_after` infinity).
    fn force_open(&self, py: Python<'_>) {
        let t = self.core.force_open();
        self.notify(py, t);
    }

    /// Hold the breaker closed until `reset()` or `force_open()`: every call goes
    /// through and no outcome changes the state.
    fn force_closed(&self, py: Python<'_>) {
        let t = self.core.force_closed();
        self.notify(py, t);
    }

    /// Counters; see `BreakerStats`.
    fn stats(&self, py: Python<'_>) -> BreakerStats {
        let state = self.state_now(py);
        BreakerStats::new(state, self.core.stats())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.hooks.try_visit(|h| {
            visit.call(&h.expected)?;
            visit.call(h.on_state_change.as_ref())?;
            visit.call(h.bus.as_ref())
        })
    }

    fn __clear__(&self) {
        let hooks = self.hooks.take();
        drop(hooks); // the lock is released: dropping may run Python
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let name = self
            .name
            .as_ref()
            .map_or_else(|| "None".to_owned(), |n| format!("'{}'", n.bind(py)));
        let rule = match self.core.config().trip {
            Trip::Consecutive(n) => format!("failure_threshold={n}"),
            Trip::Rate { rate, .. } => format!("failure_rate={rate:?}"),
        };
        format!(
            "CircuitBreaker(name={name}, state='{}', {rule}, reset_timeout={:?})",
            self.core.peek(),
            nanos_to_secs(self.core.reset_timeout_nanos())
        )
    }
}

/// Counters of a `CircuitBreaker`, read without stopping it.
#[pyclass(frozen, get_all, module = "ferrule", name = "BreakerStats")]
pub struct BreakerStats {
    state: &'static str,
    calls: u64,
    successes: u64,
    failures: u64,
    /// Of `failures`: calls that returned but took `slow_call` or longer.
    slow_calls: u64,
    ignored: u64,
    rejections: u64,
    state_changes: u64,
    /// The current run of expected failures while closed (0 otherwise).
    consecutive_failures: u32,
    /// Calls in the failure-rate window while closed (0 otherwise).
    window_calls: u32,
    /// Failures in the failure-rate window while closed (0 otherwise).
    window_failures: u32,
}

impl BreakerStats {
    fn new(state: State, s: Stats) -> Self {
        Self {
            state: state.as_str(),
            calls: s.calls,
            successes: s.successes,
            failures: s.failures,
            slow_calls: s.slow_calls,
            ignored: s.ignored,
            rejections: s.rejections,
            state_changes: s.state_changes,
            consecutive_failures: s.consecutive_failures,
            window_calls: s.window_calls,
            window_failures: s.window_failures,
        }
    }
}

#[pymethods]
impl BreakerStats {
    fn __repr__(&self) -> String {
        format!(
            "BreakerStats(state='{}', calls={}, successes={}, failures={}, slow_calls={}, ignored={}, rejections={}, state_changes={}, consecutive_failures={}, window_calls={}, window_failures={})",
            self.state,
            self.calls,
            self.successes,
            self.failures,
            self.slow_calls,
            self.ignored,
            self.rejections,
            self.state_changes,
            self.consecutive_failures,
            self.window_calls,
            self.window_failures
        )
    }
}
