//! `ResourceManager`, `Lease`, `Usage`, `Pool`, `PoolCheckout`, `PoolStats`: the Python
//! face of `core::resources`.
//!
//! Every Python call (a bus's `publish`, a pool's `factory`, `validate`, an item's
//! `close`, an asyncio wake-up callback) runs after the core has returned, so no internal
//! lock is held while Python runs; a subscriber or a factory may call back into the same
//! object. Errors from `publish`, from `close` and from wake-up callbacks are reported
//! with `sys.unraisablehook` (like `__del__`) and never break the operation that caused
//! them. Blocking waits run detached from the interpreter in slices of at most 50 ms,
//! checking for signals between slices. The asyncio forms live in
//! `ferrule._resources`; they use the hidden methods below and wait on futures, so a
//! waiting coroutine costs no thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::clock::{nanos_to_secs, Clock};
use crate::core::resources::{
    check_thresholds, Budget, Checkout, Grant, LeaseCore, PoolCore, PressureChange, Returned,
    Waiter, NEVER,
};
use crate::core::wait::slice_until;
use crate::errors::{wrong_type, Exc};
use crate::py::{args, wait};

/// Reports an error that must not break the operation that ran into it.
fn unraisable(py: Python<'_>, e: PyErr, obj: &Bound<'_, PyAny>) {
    e.write_unraisable(py, Some(obj));
}

fn helper<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    static MODULE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let m = MODULE.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("ferrule._resources")?.into_any().unbind())
    })?;
    m.bind(py).getattr(name)
}

// ---- ResourceManager -------------------------------------------------------------------

/// A budget, what its leases need to report changes (the bus and the clock: a lease
/// refers to its budget only, so leases of different budgets share no reference count),
/// and the asyncio wake-up callbacks of coroutines waiting on it.
struct PyBudget {
    core: Budget,
    bus: Option<Py<PyAny>>,
    clock: Clock,
    wakers: Mutex<Vec<(u64, Py<PyAny>)>>,
    wakers_n: AtomicUsize,
}

impl PyBudget {
    /// Work after `used` changed: report pressure changes, and (`freed`) wake coroutines.
    fn after_change(&self, py: Python<'_>, freed: bool) {
        let b = self;
        if let Some(bus) = &self.bus {
            let mut changes = Vec::new();
            b.core.sync_pressure(&mut changes);
            for c in changes {
                Self::publish(py, bus.bind(py), b.core.name(), c);
            }
        }
        if freed && b.wakers_n.load(Ordering::SeqCst) > 0 {
            let wakers = {
                let mut g = b.wakers.lock();
                b.wakers_n.store(0, Ordering::SeqCst);
                std::mem::take(&mut *g)
            };
            for (_, cb) in wakers {
                let cb = cb.bind(py);
                if let Err(e) = wait::call0(cb) {
                    unraisable(py, e, cb);
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
            bus.call_method1("publish", (format!("resource.{name}.pressure"), data))?;
            Ok(())
        })();
        if let Err(e) = r {
            unraisable(py, e, bus);
        }
    }

    /// Reclaims expired leases (lazily: one atomic load when none is due).
    fn reclaim(&self, py: Python<'_>) {
        if self.core.next_deadline() == NEVER {
            return;
        }
        if self.core.reclaim(self.clock.now_nanos()) > 0 {
            self.after_change(py, true);
        }
    }

    /// Reclaims expired leases and publishes any pressure change not yet published
    /// (e.g. from a lease released by garbage collection).
    fn refresh(&self, py: Python<'_>) {
        self.reclaim(py);
        self.after_change(py, false);
    }

    fn deadline(&self, ttl: Option<i64>) -> i64 {
        ttl.map_or(NEVER, |d| self.clock.now_nanos().saturating_add(d))
    }
}

/// Named budgets of resources, held in atomics.
#[pyclass(frozen, weakref, module = "ferrule._native", name = "ResourceManager")]
pub struct ResourceManager {
    /// Index of each name in `order`.
    index: HashMap<String, usize>,
    /// The budgets in the order given (for `usage()`); the only long-lived reference to
    /// each besides its leases'.
    order: Vec<Arc<PyBudget>>,
    next_waker: AtomicU64,
}

impl ResourceManager {
    fn budget(&self, name: &Bound<'_, PyAny>) -> PyResult<&Arc<PyBudget>> {
        let s = name
            .cast::<PyString>()
            .map_err(|_| wrong_type("name", "a str", name))?;
        let s = s.to_cow()?;
        match self.index.get(s.as_ref()) {
            Some(&i) => Ok(&self.order[i]),
            None => Err(crate::core::resources::ResourceError::UnknownName(s.into_owned()).into()),
        }
    }

    fn parse(
        &self,
        name: &Bound<'_, PyAny>,
        amount: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(Arc<PyBudget>, u64, Option<i64>)> {
        let b = self.budget(name)?.clone();
        let amount = b.core.check_amount(args::int(amount, "amount")?)?;
        let ttl = args::opt_positive_nanos(ttl, "ttl")?;
        Ok((b, amount, ttl))
    }

    fn lease(py: Python<'_>, b: Arc<PyBudget>, core: Arc<LeaseCore>) -> Lease {
        b.after_change(py, false);
        Lease { budget: b, core }
    }
}

#[pymethods]
impl ResourceManager {
    #[new]
    #[pyo3(signature = (limits, *, alert_threshold = None, severe_threshold = None, bus = None, clock = None),
           text_signature = "(limits, *, alert_threshold=0.9, severe_threshold=0.95, bus=None, clock=None)")]
    fn new(
        limits: &Bound<'_, PyAny>,
        alert_threshold: Option<&Bound<'_, PyAny>>,
        severe_threshold: Option<&Bound<'_, PyAny>>,
        bus: Option<Py<PyAny>>,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let limits = limits
            .cast::<PyDict>()
            .map_err(|_| wrong_type("limits", "a dict of str to int", limits))?;
        let frac = |o: Option<&Bound<'_, PyAny>>, arg: &str, default: f64| match o {
            None => Ok(default),
            Some(o) => args::seconds(o, arg).map_err(|_| wrong_type(arg, "a float", o)),
        };
        let alert = frac(alert_threshold, "alert_threshold", 0.9)?;
        let severe = frac(severe_threshold, "severe_threshold", 0.95)?;
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
        for (k, v) in limits.iter() {
            let name = k
                .cast::<PyString>()
                .map_err(|_| wrong_type("limits keys", "str", &k))?
                .to_cow()?
                .into_owned();
            let limit = args::int(&v, &format!("limits['{name}']"))?;
            let limit = u64::try_from(limit).unwrap_or(0);
            let b = Arc::new(PyBudget {
                core: Budget::new(&name, limit, alert, severe)?,
                bus: bus.as_ref().map(|b| b.clone_ref(limits.py())),
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
            next_waker: AtomicU64::new(0),
        })
    }

    /// Takes `amount` units of `name`, waiting (GIL released) up to `timeout` seconds.
    #[pyo3(signature = (name, amount = None, *, timeout = None, ttl = None),
           text_signature = "($self, name, amount=1, *, timeout=None, ttl=None)")]
    fn acquire(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyAny>,
        amount: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Lease> {
        let (this, py) = (slf.get(), slf.py());
        let one = 1i64.into_pyobject(py)?.into_any();
        let (b, amount, ttl) = this.parse(name, amount.unwrap_or(&one), ttl)?;
        let timeout = args::opt_timeout(timeout, "timeout")?;
        b.refresh(py);
        if let Some(l) = b.core.try_take(amount, b.deadline(ttl)) {
            return Ok(Self::lease(py, b, l));
        }
        let started = Instant::now();
        let deadline = timeout.map(|t| started + t);
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
                return Ok(Self::lease(py, b, l));
            }
            py.check_signals()?;
            b.reclaim(py);
        }
    }

    /// Takes `amount` units of `name` if they are free now; otherwise None.
    #[pyo3(signature = (name, amount = None, *, ttl = None),
           text_signature = "($self, name, amount=1, *, ttl=None)")]
    fn try_acquire(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyAny>,
        amount: Option<&Bound<'_, PyAny>>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<Lease>> {
        let (this, py) = (slf.get(), slf.py());
        let one = 1i64.into_pyobject(py)?.into_any();
        let (b, amount, ttl) = this.parse(name, amount.unwrap_or(&one), ttl)?;
        b.refresh(py);
        Ok(b.core
            .try_take(amount, b.deadline(ttl))
            .map(|l| Self::lease(py, b, l)))
    }

    /// A coroutine: `acquire` for asyncio, waiting on a future rather than a thread.
    #[pyo3(signature = (name, amount = None, *, timeout = None, ttl = None),
           text_signature = "($self, name, amount=1, *, timeout=None, ttl=None)")]
    fn acquire_async<'py>(
        slf: &Bound<'py, Self>,
        name: &Bound<'py, PyAny>,
        amount: Option<&Bound<'py, PyAny>>,
        timeout: Option<&Bound<'py, PyAny>>,
        ttl: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let one = 1i64.into_pyobject(py)?.into_any();
        let amount = amount.cloned().unwrap_or(one);
        slf.get().parse(name, &amount, ttl)?;
        let t = args::opt_timeout(timeout, "timeout")?.map(|d| d.as_secs_f64());
        helper(py, "acquire_async")?.call1((slf, name, amount, t, ttl))
    }

    /// `{name: Usage}` for every budget (expired leases are reclaimed first).
    fn usage(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        let d = PyDict::new(py);
        for b in &self.order {
            b.refresh(py);
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

    /// `"normal"`, `"moderate"` or `"severe"`.
    fn pressure(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<&'static str> {
        let b = self.budget(name)?;
        b.refresh(py);
        Ok(b.core.pressure().as_str())
    }

    /// `{name: limit}`.
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
        // A budget's bus reference belongs to the manager alone only while no lease
        // holds the budget; while one does, the bus is reachable through it, and not
        // visiting keeps the collector from tearing the bus down under the lease. The
        // count is stable here: the collector runs with every other thread stopped (or
        // holding no GIL), and leases are made and dropped only by attached threads.
        for b in &self.order {
            if Arc::strong_count(b) == 1 {
                visit.call(b.bus.as_ref())?;
            }
        }
        Ok(())
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

/// Units of one budget held until released (or reclaimed at ttl expiry).
#[pyclass(frozen, module = "ferrule._native", name = "Lease")]
pub struct Lease {
    budget: Arc<PyBudget>,
    core: Arc<LeaseCore>,
}

impl Lease {
    fn give_back(&self, py: Python<'_>) {
        if self.budget.core.release(&self.core) {
            self.budget.after_change(py, true);
        }
    }
}

#[pymethods]
impl Lease {
    /// Gives the units back; later calls do nothing.
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
        self.budget.reclaim(py);
        self.core.is_done()
    }

    /// The clock time (seconds) at which the lease expires, or None.
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
    /// next poll (at most 50 ms).
    fn drop(&mut self) {
        self.budget.core.release(&self.core);
    }
}

/// A snapshot of one budget.
#[pyclass(frozen, get_all, module = "ferrule._native", name = "Usage")]
pub struct Usage {
    used: u64,
    limit: u64,
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

// ---- Pool ------------------------------------------------------------------------------

type Item = Py<PyAny>;
type Core = PoolCore<Item, Py<PyAny>>;
type PyWaiter = Arc<Waiter<Item, Py<PyAny>>>;

/// How a checkout continues.
enum Step {
    Start,
    Grant(Grant<Item>),
}

enum Outcome {
    Item(Item),
    Wait(PyWaiter),
}

/// A pool of reusable items (connections, clients).
#[pyclass(frozen, weakref, module = "ferrule._native", name = "Pool")]
pub struct Pool {
    core: Core,
    factory: Py<PyAny>,
    validate: Option<Py<PyAny>>,
    discard_on_error: bool,
    timeout: Option<Duration>,
    clock: Clock,
}

fn pool_closed() -> PyErr {
    PyRuntimeError::new_err("pool is closed")
}

impl Pool {
    fn now(&self) -> i64 {
        self.clock.now_nanos()
    }

    /// Calls each item's `close()` (if any) outside every lock; errors are unraisable.
    fn close_items(py: Python<'_>, items: Vec<Item>) {
        for item in items {
            let item = item.bind(py);
            match item.getattr_opt("close") {
                Ok(Some(close)) => {
                    if let Err(e) = wait::call0(&close) {
                        unraisable(py, e, item);
                    }
                }
                Ok(None) => {}
                Err(e) => unraisable(py, e, item),
            }
        }
    }

    fn wake(py: Python<'_>, w: &PyWaiter) {
        if let Some(hook) = &w.hook {
            let hook = hook.bind(py);
            if let Err(e) = wait::call0(hook) {
                unraisable(py, e, hook);
            }
        }
    }

    /// Closes a checked-out item and frees its slot (to a waiter first), then warms the
    /// pool back up to `min_size`.
    fn discard(&self, py: Python<'_>, item: Item) {
        Self::close_items(py, vec![item]);
        if let Some(w) = self.core.release_slot(true) {
            Self::wake(py, &w);
        }
        if let Some(e) = self.warm(py) {
            unraisable(py, e, self.factory.bind(py));
        }
    }

    /// Creates items while fewer than `min_size` are live; stops at the first factory
    /// error and returns it.
    fn warm(&self, py: Python<'_>) -> Option<PyErr> {
        while self.core.reserve_warm() {
            match wait::call0(self.factory.bind(py)) {
                Ok(x) => {
                    self.core.count_created();
                    self.put_back(py, x.unbind());
                }
                Err(e) => {
                    self.core.count_factory_error();
                    if let Some(w) = self.core.release_slot(false) {
                        Self::wake(py, &w);
                    }
                    return Some(e);
                }
            }
        }
        None
    }

    fn put_back(&self, py: Python<'_>, item: Item) {
        let mut reaped = Vec::new();
        match self.core.put_back(item, self.now(), &mut reaped) {
            Returned::Idle => {}
            Returned::Handed(w) => Self::wake(py, &w),
            Returned::Closed(x) => reaped.push(x),
        }
        Self::close_items(py, reaped);
    }

    /// Ends a checkout: return the item, or discard it after `Discard` (or any
    /// exception with `discard_on_error`).
    fn finish(&self, py: Python<'_>, item: Item, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let discard = match exc {
            Some(e) if !e.is_none() => {
                self.discard_on_error || e.is_instance(Exc::Discard.type_object(py)?)?
            }
            _ => false,
        };
        if discard {
            self.discard(py, item);
        } else {
            self.put_back(py, item);
        }
        Ok(())
    }

    /// Gives back a grant that its waiter will not use.
    fn give_back_grant(&self, py: Python<'_>, g: Grant<Item>) {
        match g {
            Grant::Item(x) => self.put_back(py, x),
            Grant::Create => {
                if let Some(w) = self.core.release_slot(false) {
                    Self::wake(py, &w);
                }
            }
            Grant::Closed => {}
        }
    }

    /// Runs a checkout until it has an item or must wait. Factory, validate and close
    /// calls happen here, with no lock held.
    fn advance(
        &self,
        py: Python<'_>,
        mut step: Step,
        hook: Option<&Py<PyAny>>,
    ) -> PyResult<Outcome> {
        loop {
            let grant = match step {
                Step::Start => {
                    let mut reaped = Vec::new();
                    let c =
                        self.core
                            .checkout(self.now(), hook.map(|h| h.clone_ref(py)), &mut reaped);
                    Self::close_items(py, reaped);
                    match c {
                        Checkout::Item(x) => Grant::Item(x),
                        Checkout::Create => Grant::Create,
                        Checkout::Wait(w) => return Ok(Outcome::Wait(w)),
                        Checkout::Closed => Grant::Closed,
                    }
                }
                Step::Grant(g) => g,
            };
            match grant {
                Grant::Item(x) => {
                    let ok = match &self.validate {
                        None => Ok(true),
                        Some(v) => {
                            wait::call1(v.bind(py), (x.bind(py),)).and_then(|r| r.is_truthy())
                        }
                    };
                    match ok {
                        Ok(true) => return Ok(Outcome::Item(x)),
                        Ok(false) => {
                            // Close it and continue in the same slot, keeping our turn.
                            Self::close_items(py, vec![x]);
                            let mut reaped = Vec::new();
                            let c = self.core.replace(self.now(), &mut reaped);
                            Self::close_items(py, reaped);
                            step = Step::Grant(match c {
                                Checkout::Item(y) => Grant::Item(y),
                                Checkout::Create => Grant::Create,
                                Checkout::Closed | Checkout::Wait(_) => Grant::Closed,
                            });
                        }
                        Err(e) => {
                            self.discard(py, x);
                            return Err(e);
                        }
                    }
                }
                Grant::Create => {
                    return match wait::call0(self.factory.bind(py)) {
                        Ok(x) => {
                            self.core.count_created();
                            Ok(Outcome::Item(x.unbind()))
                        }
                        Err(e) => {
                            self.core.count_factory_error();
                            if let Some(w) = self.core.release_slot(false) {
                                Self::wake(py, &w);
                            }
                            Err(e)
                        }
                    };
                }
                Grant::Closed => return Err(pool_closed()),
            }
        }
    }

    fn timeout_err(&self, py: Python<'_>, timeout: Option<Duration>) -> PyErr {
        self.core.count_timeout();
        Exc::PoolTimeout.err(
            py,
            format!(
                "no pool item became available within {} s",
                timeout.map_or(0.0, |t| t.as_secs_f64())
            ),
        )
    }

    /// A blocking checkout.
    fn checkout(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Item> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut step = Step::Start;
        loop {
            let w = match self.advance(py, step, None)? {
                Outcome::Item(x) => return Ok(x),
                Outcome::Wait(w) => w,
            };
            step = loop {
                let Some(slice) = slice_until(deadline) else {
                    match self.core.cancel(&w) {
                        Some(g) => break Step::Grant(g),
                        None => return Err(self.timeout_err(py, timeout)),
                    }
                };
                if let Some(g) = wait::detach(py, || w.wait(slice)) {
                    break Step::Grant(g);
                }
                if let Err(e) = py.check_signals() {
                    if let Some(g) = self.core.cancel(&w) {
                        self.give_back_grant(py, g);
                    }
                    return Err(e);
                }
            };
        }
    }

    fn timeout_arg(&self, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
        match timeout {
            Some(t) if !t.is_none() => args::opt_timeout(Some(t), "timeout"),
            _ => Ok(self.timeout),
        }
    }

    fn outcome(py: Python<'_>, o: Outcome) -> PyResult<(bool, Py<PyAny>)> {
        Ok(match o {
            Outcome::Item(x) => (true, x),
            Outcome::Wait(w) => (false, Py::new(py, PoolWaiter { w })?.into_any()),
        })
    }
}

#[pymethods]
impl Pool {
    #[new]
    #[pyo3(signature = (factory, *, max_size, min_size = None, timeout = None, validate = None, max_idle = None, discard_on_error = false, clock = None),
           text_signature = "(factory, *, max_size, min_size=0, timeout=30.0, validate=None, max_idle=None, discard_on_error=False, clock=None)")]
    fn new(
        py: Python<'_>,
        factory: Py<PyAny>,
        max_size: &Bound<'_, PyAny>,
        min_size: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        validate: Option<Py<PyAny>>,
        max_idle: Option<&Bound<'_, PyAny>>,
        discard_on_error: bool,
        clock: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        if !factory.bind(py).is_callable() {
            return Err(wrong_type("factory", "callable", factory.bind(py)));
        }
        let validate = validate.filter(|v| !v.is_none(py));
        if let Some(v) = &validate {
            if !v.bind(py).is_callable() {
                return Err(wrong_type("validate", "callable or None", v.bind(py)));
            }
        }
        let max_size = args::int_at_least(max_size, "max_size", 1)? as usize;
        let min_size = match min_size {
            Some(m) => args::int_at_least(m, "min_size", 0)? as usize,
            None => 0,
        };
        let timeout = match timeout {
            None => Some(Duration::from_secs(30)),
            Some(t) => args::opt_timeout(Some(t), "timeout")?,
        };
        let max_idle = args::opt_positive_nanos(max_idle, "max_idle")?;
        let clock = args::clock(clock)?;
        let pool = Self {
            core: PoolCore::new(max_size, min_size, max_idle)?,
            factory,
            validate,
            discard_on_error,
            timeout,
            clock,
        };
        match pool.warm(py) {
            Some(e) => Err(e),
            None => Ok(pool),
        }
    }

    /// `with pool.acquire() as item:` checks an item out for the block.
    #[pyo3(signature = (timeout = None))]
    fn acquire(
        slf: &Bound<'_, Self>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PoolCheckout> {
        let timeout = slf.get().timeout_arg(timeout)?;
        Ok(PoolCheckout {
            pool: slf.clone().unbind(),
            timeout,
            item: Mutex::new(None),
            state: AtomicU8::new(0),
        })
    }

    /// `async with pool.acquire_async() as item:`.
    #[pyo3(signature = (timeout = None))]
    fn acquire_async<'py>(
        slf: &Bound<'py, Self>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = slf.get().timeout_arg(timeout)?.map(|d| d.as_secs_f64());
        helper(slf.py(), "AsyncCheckout")?.call1((slf, t))
    }

    /// Closes every idle item and fails every waiter; items in use are closed when they
    /// come back.
    fn close(&self, py: Python<'_>) {
        let (items, waiters) = self.core.close();
        for w in &waiters {
            Self::wake(py, w);
        }
        drop(waiters);
        Self::close_items(py, items);
    }

    #[getter]
    fn closed(&self) -> bool {
        self.core.is_closed()
    }

    #[getter]
    fn max_size(&self) -> usize {
        self.core.max_size()
    }

    #[getter]
    fn min_size(&self) -> usize {
        self.core.min_size()
    }

    /// The default checkout timeout in seconds (None: wait forever).
    #[getter]
    fn timeout(&self) -> Option<f64> {
        self.timeout.map(|t| t.as_secs_f64())
    }

    fn stats(&self, py: Python<'_>) -> PoolStats {
        let mut reaped = Vec::new();
        self.core.reap(self.now(), &mut reaped);
        Self::close_items(py, reaped);
        let s = self.core.stats();
        PoolStats {
            size: s.size,
            idle: s.idle,
            in_use: s.in_use,
            waiting: s.waiting,
            created: s.created,
            discarded: s.discarded,
            timeouts: s.timeouts,
            factory_errors: s.factory_errors,
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    /// Asyncio: starts a checkout; `(True, item)` or `(False, waiter)`. `wake()` is
    /// called (from any thread) when the waiter is handed something.
    fn _checkout_async(&self, py: Python<'_>, wake: Py<PyAny>) -> PyResult<(bool, Py<PyAny>)> {
        let o = self.advance(py, Step::Start, Some(&wake))?;
        Self::outcome(py, o)
    }

    /// Asyncio: continues after a wake-up (which may be spurious).
    fn _resume(
        &self,
        py: Python<'_>,
        waiter: &Bound<'_, PoolWaiter>,
    ) -> PyResult<(bool, Py<PyAny>)> {
        let w = &waiter.get().w;
        match w.try_take() {
            None => Ok((false, waiter.clone().into_any().unbind())),
            Some(g) => {
                let o = self.advance(py, Step::Grant(g), w.hook.as_ref())?;
                Self::outcome(py, o)
            }
        }
    }

    /// Asyncio: the waiter gives up. `timed_out`: count it and raise PoolTimeout unless
    /// a grant arrived meanwhile (then continue with it); otherwise (cancelled) give any
    /// grant back.
    fn _give_up(
        &self,
        py: Python<'_>,
        waiter: &Bound<'_, PoolWaiter>,
        timed_out: bool,
        timeout: Option<f64>,
    ) -> PyResult<(bool, Py<PyAny>)> {
        let w = &waiter.get().w;
        let g = self.core.cancel(w).or_else(|| w.try_take());
        match (g, timed_out) {
            (Some(g), true) => {
                let o = self.advance(py, Step::Grant(g), w.hook.as_ref())?;
                Self::outcome(py, o)
            }
            (Some(g), false) => {
                self.give_back_grant(py, g);
                Ok((false, py.None()))
            }
            (None, true) => Err(self.timeout_err(py, timeout.map(Duration::from_secs_f64))),
            (None, false) => Ok((false, py.None())),
        }
    }

    /// Asyncio: ends a checkout (see `PoolCheckout.__exit__`).
    #[pyo3(signature = (item, exc = None))]
    fn _finish(
        &self,
        py: Python<'_>,
        item: Py<PyAny>,
        exc: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.finish(py, item, exc)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.factory)?;
        visit.call(self.validate.as_ref())?;
        // Idle items are visited only if the pool lock is free right now; skipping them
        // only makes the collector more conservative.
        self.core.try_for_each_idle(|item| visit.call(item))
    }

    fn __repr__(&self) -> String {
        let s = self.core.stats();
        format!(
            "Pool(max_size={}, size={}, idle={}, waiting={})",
            self.core.max_size(),
            s.size,
            s.idle,
            s.waiting
        )
    }
}

/// An asyncio checkout waiting in a pool's queue (private).
#[pyclass(frozen, module = "ferrule._native", name = "_PoolWaiter")]
pub struct PoolWaiter {
    w: PyWaiter,
}

/// One checkout of a pool item; use it as a context manager.
#[pyclass(frozen, module = "ferrule._native", name = "PoolCheckout")]
pub struct PoolCheckout {
    pool: Py<Pool>,
    timeout: Option<Duration>,
    item: Mutex<Option<Item>>,
    /// 0 new, 1 entered, 2 finished.
    state: AtomicU8,
}

#[pymethods]
impl PoolCheckout {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.pool)?;
        match self.item.try_lock() {
            Some(g) => visit.call(g.as_ref()),
            None => Ok(()),
        }
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<Item> {
        if self
            .state
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(PyRuntimeError::new_err(
                "a pool checkout can be entered only once",
            ));
        }
        let item = self.pool.get().checkout(py, self.timeout)?;
        *self.item.lock() = Some(item.clone_ref(py));
        Ok(item)
    }

    #[pyo3(signature = (_exc_type = None, exc = None, _tb = None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<&Bound<'_, PyAny>>,
        exc: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.state.store(2, Ordering::Release);
        let item = self.item.lock().take();
        if let Some(item) = item {
            self.pool.get().finish(py, item, exc)?;
        }
        Ok(false)
    }
}

impl Drop for PoolCheckout {
    fn drop(&mut self) {
        // Entered but never exited: the item goes back rather than leaking its slot.
        if let Some(item) = self.item.get_mut().take() {
            // Deallocation runs attached: this only borrows the attached thread.
            #[allow(clippy::disallowed_methods)]
            Python::attach(|py| self.pool.get().put_back(py, item));
        }
    }
}

/// Counters of a `Pool`.
#[pyclass(frozen, get_all, module = "ferrule._native", name = "PoolStats")]
pub struct PoolStats {
    size: u64,
    idle: u64,
    in_use: u64,
    waiting: u64,
    created: u64,
    discarded: u64,
    timeouts: u64,
    factory_errors: u64,
}

#[pymethods]
impl PoolStats {
    fn __repr__(&self) -> String {
        format!(
            "PoolStats(size={}, idle={}, in_use={}, waiting={}, created={}, discarded={}, timeouts={}, factory_errors={})",
            self.size, self.idle, self.in_use, self.waiting, self.created, self.discarded, self.timeouts, self.factory_errors
        )
    }
}
