//! `ResourceManager`, `Lease`, `Usage`: the Python face of `core::budget`.
//!
//! Every Python call (a bus's `publish`, an asyncio wake-up callback) runs after the core
//! has returned, so no internal lock is held while Python runs; a subscriber may call
//! back into the same manager. Errors from `publish` and from wake-up callbacks are
//! reported with `wait::report` (`sys.unraisablehook`, like `__del__`) and never break the
//! operation that caused them. Every call of user code goes through `wait::call*`.
//! Blocking waits run detached (`wait::detach`) in slices of at most `wait::SLICE`,
//! checking for signals between slices. The asyncio form lives in `ferrule._budget`; it
//! uses the hidden methods below and waits on futures, so a waiting coroutine costs no
//! thread.
//!
//! # Garbage collection
//! Each Python object visits only references it owns alone, so the collector never counts
//! one reference twice and never frees what a live object still reaches through Rust:
//! - the bus: the manager and every lease hold their own reference (a lease clones it
//!   when it is made, only if there is a bus), each in a `Held` that `__traverse__`
//!   visits and `__clear__` empties;
//! - a budget's asyncio wake-up callbacks live in the budget, which the manager shares
//!   with its leases: the manager visits them only while no lease holds the budget, and
//!   its `__clear__` drops them (a manager being collected has no coroutine waiting on
//!   it: a waiting coroutine refers to it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::budget::{
    check_thresholds, Budget, BudgetError, LeaseCore, PressureChange, NEVER,
};
use crate::core::clock::{nanos_to_secs, Clock};
use crate::core::wait::slice_until;
use crate::errors::{wrong_type, Exc};
use crate::py::args::{self, Held};
use crate::py::lookup::lookup;
use crate::py::wait;

/// `bus.publish(signal_type, data)` through `wait::call1` (a bus is user code).
fn publish(bus: &Bound<'_, PyAny>, signal_type: String, data: Bound<'_, PyDict>) -> PyResult<()> {
    wait::call1(
        &bus.getattr(intern!(bus.py(), "publish"))?,
        (signal_type, data),
    )?;
    Ok(())
}

// ---- ResourceManager -------------------------------------------------------------------

/// A budget, what its leases need to report changes (the clock: a lease refers to its
/// budget, so leases of different budgets share no reference count), and the asyncio
/// wake-up callbacks of coroutines waiting on it. The bus is not here: each holder of a
/// budget keeps its own reference (module docs, garbage collection).
struct PyBudget {
    core: Budget,
    clock: Clock,
    wakers: Mutex<Vec<(u64, Py<PyAny>)>>,
    wakers_n: AtomicUsize,
}

/// A holder's own reference to the manager's bus, if it has one.
type BusRef = Option<Held<Py<PyAny>>>;

/// The bus of a `BusRef`, cloned out of its lock (None: no bus, or cleared).
fn bus_of(py: Python<'_>, bus: &BusRef) -> Option<Py<PyAny>> {
    bus.as_ref()?.with(|b| b.map(|b| b.clone_ref(py)))
}

impl PyBudget {
    /// Work after `used` changed: report pressure changes on `bus`, and (`freed`) wake
    /// coroutines.
    fn after_change(&self, py: Python<'_>, bus: &BusRef, freed: bool) {
        let b = self;
        if let Some(bus) = bus_of(py, bus) {
            let mut changes = Vec::new();
            b.core.sync_pressure(&mut changes);
            for c in changes {
                Self::publish(py, bus.bind(py), b.core.name(), c);
            }
        }
        if freed && b.wakers_n.load(Ordering::SeqCst) > 0 {
            for (_, cb) in b.take_wakers() {
                let cb = cb.bind(py);
                if let Err(e) = wait::call0(cb) {
                    wait::report(py, e, Some(cb));
                }
            }
        }
    }

    fn publish(py: Python<'_>, bus: &Bound<'_, PyAny>, name: &str, c: PressureChange) {
        let r = (|| -> PyResult<()> {
            let data = PyDict::new(py);
            data.set_item("name", name)?;
            data.set_item("pressure", c.pressure.as_str())?;
            data.set_item("previous", c.previous.as_str())?;
            data.set_item("used", c.used)?;
            data.set_item("limit", c.limit)?;
            publish(bus, format!("resource.{name}.pressure"), data)
        })();
        if let Err(e) = r {
            wait::report(py, e, Some(bus));
        }
    }

    /// Reclaims expired leases (lazily: one atomic load when none is due).
    fn reclaim(&self, py: Python<'_>, bus: &BusRef) {
        if self.core.next_deadline() == NEVER {
            return;
        }
        if self.core.reclaim(self.clock.now_nanos()) > 0 {
            self.after_change(py, bus, true);
        }
    }

    /// Reclaims expired leases and publishes any pressure change not yet published
    /// (e.g. from a lease released by garbage collection).
    fn refresh(&self, py: Python<'_>, bus: &BusRef) {
        self.reclaim(py, bus);
        self.after_change(py, bus, false);
    }

    /// Takes the wake-up callbacks out, to be dropped or called with the lock released.
    fn take_wakers(&self) -> Vec<(u64, Py<PyAny>)> {
        let mut g = self.wakers.lock();
        self.wakers_n.store(0, Ordering::SeqCst);
        std::mem::take(&mut *g)
    }

    fn deadline(&self, ttl: Option<i64>) -> i64 {
        ttl.map_or(NEVER, |d| self.clock.now_nanos().saturating_add(d))
    }
}

/// Named budgets of resources (`{"gpu_mem_gb": 80, "workers": 16}`), each held in one
/// atomic counter changed by compare-and-swap.
#[pyclass(frozen, weakref, module = "ferrule", name = "ResourceManager")]
pub struct ResourceManager {
    /// Index of each name in `order`.
    index: HashMap<String, usize>,
    /// The budgets in the order given (for `usage()`); the only long-lived reference to
    /// each besides its leases'.
    order: Vec<Arc<PyBudget>>,
    /// The manager's own reference to the bus (module docs).
    bus: BusRef,
    next_waker: AtomicU64,
}

impl ResourceManager {
    fn budget(&self, name: &Bound<'_, PyAny>) -> PyResult<&Arc<PyBudget>> {
        let s = name
            .cast::<PyString>()
            .map_err(|_| wrong_type("name", "a str", name))?;
        let s = s.to_cow()?;
        // `index` maps each name to its position in `order`: `get` cannot miss.
        match self.index.get(s.as_ref()).and_then(|&i| self.order.get(i)) {
            Some(b) => Ok(b),
            None => Err(BudgetError::UnknownName(s.into_owned()).into()),
        }
    }

    fn parse(
        &self,
        name: &Bound<'_, PyAny>,
        amount: i64,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(Arc<PyBudget>, u64, Option<i64>)> {
        let b = self.budget(name)?.clone();
        let amount = b.core.check_amount(amount)?;
        let ttl = args::opt_positive_nanos(ttl, "ttl")?;
        Ok((b, amount, ttl))
    }

    fn lease(&self, py: Python<'_>, b: Arc<PyBudget>, core: Arc<LeaseCore>) -> Lease {
        b.after_change(py, &self.bus, false);
        // The lease's own reference to the bus (module docs): only when there is one.
        let bus = self.bus.as_ref().map(|_| Held::new(bus_of(py, &self.bus)));
        Lease {
            budget: b,
            core,
            bus,
        }
    }
}

#[pymethods]
impl ResourceManager {
    #[new]
    #[pyo3(signature = (limits, *, alert_threshold = 0.9, severe_threshold = 0.95, bus = None, clock = None))]
    fn new(
        limits: &Bound<'_, PyAny>,
        #[pyo3(from_py_with = args::named::alert_threshold)] alert_threshold: f64,
        #[pyo3(from_py_with = args::named::severe_threshold)] severe_threshold: f64,
        bus: Option<Py<PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let limits = limits
            .cast::<PyDict>()
            .map_err(|_| wrong_type("limits", "a dict of str to int", limits))?;
        let (alert, severe) = (alert_threshold, severe_threshold);
        check_thresholds(alert, severe)?;
        let bus = bus.filter(|b| !b.is_none(limits.py()));
        if let Some(b) = &bus {
            if !b.bind(limits.py()).hasattr("publish")? {
                return Err(wrong_type(
                    "bus",
                    "an object with a publish(type, data) method",
                    b.bind(limits.py()),
                ));
            }
        }
        let clock = args::clock(clock)?;
        let mut index = HashMap::new();
        let mut order = Vec::new();
        // A copy: another thread may resize the caller's dict meanwhile (free-threaded
        // builds), and iterating a dict that changes size is an error.
        for (k, v) in limits.copy()?.iter() {
            let name = k
                .cast::<PyString>()
                .map_err(|_| wrong_type("limits keys", "str", &k))?
                .to_cow()?
                .into_owned();
            let limit = args::int(&v, &format!("limits['{name}']"))?;
            let limit = u64::try_from(limit).unwrap_or(0);
            let b = Arc::new(PyBudget {
                core: Budget::new(&name, limit, alert, severe)?,
                clock: clock.clone(),
                wakers: Mutex::new(Vec::new()),
                wakers_n: AtomicUsize::new(0),
            });
            index.insert(name, order.len());
            order.push(b);
        }
        Ok(Self {
            index,
            order,
            bus: bus.map(|b| Held::new(Some(b))),
            next_waker: AtomicU64::new(0),
        })
    }

    /// Take `amount` units of `name`, waiting for room with the GIL released (Ctrl-C
    /// interrupts the wait). `timeout` seconds (None: forever) then raises `PoolTimeout`.
    #[pyo3(signature = (name, amount = 1, *, timeout = None, ttl = None))]
    fn acquire(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyAny>,
        #[pyo3(from_py_with = args::named::amount)] amount: i64,
        timeout: Option<&Bound<'_, PyAny>>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Lease> {
        let (this, py) = (slf.get(), slf.py());
        let (b, amount, ttl) = this.parse(name, amount, ttl)?;
        let timeout = args::opt_timeout(timeout, "timeout")?;
        b.refresh(py, &this.bus);
        if let Some(l) = b.core.try_take(amount, b.deadline(ttl)) {
            return Ok(this.lease(py, b, l));
        }
        let deadline = crate::core::wait::deadline(timeout);
        let guard = b.core.enter_wait();
        loop {
            let Some(mut slice) = slice_until(deadline) else {
                drop(guard);
                return Err(Exc::PoolTimeout.err(
                    py,
                    format!(
                        "no room for {amount} of '{}' within {} s",
                        b.core.name(),
                        timeout.map_or(0.0, |t| t.as_secs_f64())
                    ),
                ));
            };
            // Wake up for the next ttl deadline when it is in real time.
            let next = b.core.next_deadline();
            if next != NEVER && !b.clock.is_manual() {
                let left = next.saturating_sub(b.clock.now_nanos()).max(0);
                slice = slice.min(Duration::from_nanos(left as u64));
            }
            let dl = b.deadline(ttl);
            let got = wait::detach(py, || b.core.take_or_sleep(&guard, amount, dl, slice));
            if let Some(l) = got {
                drop(guard);
                return Ok(this.lease(py, b, l));
            }
            py.check_signals()?;
            b.reclaim(py, &this.bus);
        }
    }

    /// Take `amount` units now if they are free, else return None.
    #[pyo3(signature = (name, amount = 1, *, ttl = None))]
    fn try_acquire(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyAny>,
        #[pyo3(from_py_with = args::named::amount)] amount: i64,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Lease>> {
        let (this, py) = (slf.get(), slf.py());
        let (b, amount, ttl) = this.parse(name, amount, ttl)?;
        b.refresh(py, &this.bus);
        Ok(b.core
            .try_take(amount, b.deadline(ttl))
            .map(|l| this.lease(py, b, l)))
    }

    /// `acquire` for asyncio: the coroutine waits on a future that a release resolves
    /// (no thread per waiter).
    #[pyo3(signature = (name, amount = 1, *, timeout = None, ttl = None))]
    fn acquire_async<'py>(
        slf: &Bound<'py, Self>,
        name: &Bound<'py, PyAny>,
        #[pyo3(from_py_with = args::named::amount)] amount: i64,
        timeout: Option<&Bound<'py, PyAny>>,
        ttl: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        slf.get().parse(name, amount, ttl)?;
        let t = args::opt_timeout(timeout, "timeout")?.map(|d| d.as_secs_f64());
        lookup!(py, "ferrule._budget", "acquire_async")?.call1((slf, name, amount, t, ttl))
    }

    /// A snapshot of every budget, in the order of `limits` (expired leases are reclaimed
    /// first). A dict `{name: Usage}`.
    fn usage(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        let d = PyDict::new(py);
        for b in &self.order {
            b.refresh(py, &self.bus);
            let used = b.core.used();
            d.set_item(
                b.core.name(),
                Usage {
                    used,
                    limit: b.core.limit(),
                    pressure: b.core.pressure().as_str(),
                },
            )?;
        }
        Ok(d.unbind())
    }

    /// `"normal"`, `"moderate"` or `"severe"` for `name`.
    fn pressure(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<&'static str> {
        let b = self.budget(name)?;
        b.refresh(py, &self.bus);
        Ok(b.core.pressure().as_str())
    }

    /// A copy of `{name: limit}`.
    #[getter]
    fn limits(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        let d = PyDict::new(py);
        for b in &self.order {
            d.set_item(b.core.name(), b.core.limit())?;
        }
        Ok(d.unbind())
    }

    /// Registers an asyncio wake-up callback for `name`; called once, on the next
    /// release or reclaim of that budget. Returns a token for `_remove_waker`.
    fn _add_waker(&self, name: &Bound<'_, PyAny>, callback: Py<PyAny>) -> PyResult<u64> {
        let b = self.budget(name)?;
        if !callback.bind(name.py()).is_callable() {
            return Err(wrong_type("callback", "callable", callback.bind(name.py())));
        }
        let id = self.next_waker.fetch_add(1, Ordering::Relaxed);
        let mut w = b.wakers.lock();
        w.push((id, callback));
        b.wakers_n.store(w.len(), Ordering::SeqCst);
        Ok(id)
    }

    fn _remove_waker(&self, name: &Bound<'_, PyAny>, token: u64) -> PyResult<()> {
        let b = self.budget(name)?;
        let removed = {
            let mut w = b.wakers.lock();
            let pos = w.iter().position(|(id, _)| *id == token);
            let removed = pos.map(|p| w.swap_remove(p));
            b.wakers_n.store(w.len(), Ordering::SeqCst);
            removed
        };
        drop(removed); // outside the lock: dropping may run Python
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(bus) = &self.bus {
            bus.try_visit(|b| visit.call(b))?;
        }
        // A budget's wake-up callbacks belong to the manager alone only while no lease
        // holds the budget; while one does, a release through it may still call them,
        // and not visiting keeps the collector from freeing a coroutine that a live
        // lease can wake. The count is stable here: the collector runs with every other
        // thread stopped (or holding no GIL), and leases are made and dropped only by
        // attached threads.
        for b in &self.order {
            if Arc::strong_count(b) == 1 {
                if let Some(w) = b.wakers.try_lock() {
                    for (_, cb) in w.iter() {
                        visit.call(cb)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let bus = self.bus.as_ref().and_then(Held::take);
        let wakers: Vec<_> = self.order.iter().map(|b| b.take_wakers()).collect();
        drop((bus, wakers)); // every lock is released: dropping may run Python
    }

    fn __repr__(&self) -> String {
        let parts: Vec<String> = self
            .order
            .iter()
            .map(|b| format!("'{}': {}/{}", b.core.name(), b.core.used(), b.core.limit()))
            .collect();
        format!("ResourceManager({{{}}})", parts.join(", "))
    }
}

/// Units of one budget, held until released. A lease taken with a ttl is also reclaimed
/// once its ttl passes.
#[pyclass(frozen, module = "ferrule", name = "Lease")]
pub struct Lease {
    budget: Arc<PyBudget>,
    core: Arc<LeaseCore>,
    /// The lease's own reference to the manager's bus (module docs).
    bus: BusRef,
}

impl Lease {
    fn give_back(&self, py: Python<'_>) {
        if self.budget.core.release(&self.core) {
            self.budget.after_change(py, &self.bus, true);
        }
    }
}

#[pymethods]
impl Lease {
    /// Give the units back; later calls do nothing.
    fn release(&self, py: Python<'_>) {
        self.give_back(py);
    }

    #[getter]
    fn name(&self) -> &str {
        self.budget.core.name()
    }

    #[getter]
    fn amount(&self) -> u64 {
        self.core.amount()
    }

    /// True once released, or reclaimed because its ttl passed.
    #[getter]
    fn released(&self, py: Python<'_>) -> bool {
        self.budget.reclaim(py, &self.bus);
        self.core.is_done()
    }

    /// The manager's clock time (seconds) at which a ttl lease expires, else None.
    #[getter]
    fn expires_at(&self) -> Option<f64> {
        let d = self.core.deadline();
        (d != NEVER).then(|| nanos_to_secs(d))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.give_back(py);
        false
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        match &self.bus {
            Some(bus) => bus.try_visit(|b| visit.call(b)),
            None => Ok(()),
        }
    }

    /// Drops the lease's bus reference (its units stay held until it is released or
    /// deallocated; a lease being collected is deallocated next).
    fn __clear__(&self) {
        let bus = self.bus.as_ref().and_then(Held::take);
        drop(bus);
    }

    fn __repr__(&self) -> String {
        format!(
            "Lease(name='{}', amount={}, released={})",
            self.budget.core.name(),
            self.core.amount(),
            if self.core.is_done() { "True" } else { "False" }
        )
    }
}

impl Drop for Lease {
    /// A lease collected unreleased gives its units back here, without running Python:
    /// a destructor may run inside a garbage collection whose cycle also holds the bus.
    /// Blocked threads are woken by the core; a pressure change this causes is published
    /// by the next operation on the budget, and waiting coroutines see the room at their
    /// next poll (at most one `wait::SLICE`).
    fn drop(&mut self) {
        self.budget.core.release(&self.core);
    }
}

/// A snapshot of one budget, from `ResourceManager.usage`.
#[pyclass(frozen, get_all, module = "ferrule", name = "Usage")]
pub struct Usage {
    used: u64,
    limit: u64,
    /// `"normal"`, `"moderate"` or `"severe"`.
    pressure: &'static str,
}

#[pymethods]
impl Usage {
    fn __repr__(&self) -> String {
        format!(
            "Usage(used={}, limit={}, pressure='{}')",
            self.used, self.limit, self.pressure
        )
    }
}
