//! `Pool`, `PoolCheckout`, `PoolStats` and the private `_PoolWaiter`: the Python face of
//! `core::pool`.
//!
//! Every Python call (the pool's `factory` and `validate`, an item's `close`, an asyncio
//! wake-up hook) runs after the core has returned, so no internal lock is held while
//! Python runs; a factory may call back into the same pool. Errors from `close` and from
//! wake-up hooks are reported with `wait::report` (`sys.unraisablehook`, like `__del__`)
//! and never break the operation that caused them. Every call of user code goes through
//! `wait::call*`. Blocking checkouts run detached (`wait::detach`) in slices of at most
//! `wait::SLICE`, checking for signals between slices. The asyncio form lives in
//! `ferrule._pool`; it uses the hidden methods below and waits on futures, so a waiting
//! coroutine costs no thread.
//!
//! # Events
//! With `bus=` (see `crate::py::events`), `pool.<name>.exhausted` begins when a checkout
//! finds no idle item and no room to create one (it must wait) and ends when a returned
//! item goes back to idle, or a discarded item's slot is freed, with nobody waiting. Both
//! edges are on paths that take the pool's lock anyway; without a bus they pay one test
//! of an `Option`. The checkouts that waited and those that timed out are counted (only
//! with a bus) for the episode's payload.
//!
//! # Garbage collection
//! Each Python object visits only references it owns alone: a pool visits its `factory`,
//! `validate`, bus and idle items, and the wake-up hook and granted item of each queued waiter
//! that no `_PoolWaiter` shares; a `_PoolWaiter` visits them once the pool's queue has let
//! go of it; a `PoolCheckout` visits its pool and its item, and its `__clear__` returns
//! the item to the pool.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::clock::Clock;
use crate::core::pool::{Checkout, Grant, PoolCore, Returned, Waiter};
use crate::core::wait::slice_until;
use crate::errors::{wrong_type, Exc};
use crate::py::args::{self, Held};
use crate::py::events::{self, Episode, Event, Events, Val};
use crate::py::lookup::lookup;
use crate::py::wait;

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

/// The user's callables a pool calls (they may lead back to it: emptied by `__clear__`).
struct PoolHooks {
    factory: Py<PyAny>,
    validate: Option<Py<PyAny>>,
}

/// A pool of reusable items (database connections, HTTP clients).
#[pyclass(frozen, weakref, module = "ferrule", name = "Pool")]
pub struct Pool {
    core: Core,
    hooks: Held<PoolHooks>,
    discard_on_error: bool,
    timeout: Option<Duration>,
    clock: Clock,
    /// Tells this pool's `_PoolWaiter`s from another pool's.
    id: u64,
    name: Option<Py<PyString>>,
    events: Option<Box<PoolEvents>>,
}

/// A pool's bus, its exhaustion episode and the episode's counts.
struct PoolEvents {
    events: Events,
    exhausted: Episode,
    waited: AtomicU64,
    timeouts: AtomicU64,
}

/// Source of `Pool::id`.
static POOL_IDS: AtomicU64 = AtomicU64::new(0);

fn pool_closed() -> PyErr {
    PyRuntimeError::new_err("pool is closed")
}

fn not_checked_out() -> PyErr {
    PyValueError::new_err("item is not checked out from this pool")
}

impl Pool {
    fn now(&self) -> i64 {
        self.clock.now_nanos()
    }

    /// A checkout must wait: exhaustion begins unless it is under way.
    #[cold]
    #[inline(never)]
    fn must_wait(&self, py: Python<'_>) {
        if let Some(ev) = &self.events {
            ev.waited.fetch_add(1, Ordering::Relaxed);
            if !ev.exhausted.is_active() {
                self.edge(py, ev, true);
            }
        }
    }

    /// An item or a slot became free with nobody waiting: exhaustion ends.
    #[inline]
    fn freed(&self, py: Python<'_>) {
        if let Some(ev) = &self.events {
            if ev.exhausted.is_active() {
                self.edge(py, ev, false);
            }
        }
    }

    fn edge(&self, py: Python<'_>, ev: &PoolEvents, begin: bool) {
        ev.events.edge(py, &ev.exhausted, begin, || {
            let (waited, timeouts) = if begin {
                (
                    ev.waited.load(Ordering::Relaxed),
                    ev.timeouts.load(Ordering::Relaxed),
                )
            } else {
                (
                    ev.waited.swap(0, Ordering::Relaxed),
                    ev.timeouts.swap(0, Ordering::Relaxed),
                )
            };
            Event::new(
                "exhausted",
                vec![
                    ("state", Val::Str(if begin { "begin" } else { "end" })),
                    ("waited", Val::Int(waited)),
                    ("timeouts", Val::Int(timeouts)),
                    ("max_size", Val::Int(self.core.max_size() as u64)),
                ],
            )
        });
    }

    /// The factory, cloned out of its lock; "pool is closed" once cleared.
    fn factory(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.hooks
            .with(|h| h.map(|h| h.factory.clone_ref(py)))
            .ok_or_else(pool_closed)
    }

    fn validator(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.hooks
            .with(|h| h.and_then(|h| h.validate.as_ref().map(|v| v.clone_ref(py))))
    }

    /// `factory()`, counted; on failure the slot is freed (to a waiter first).
    fn create(&self, py: Python<'_>) -> PyResult<Item> {
        let made = self
            .factory(py)
            .and_then(|f| Ok(wait::call0(f.bind(py))?.unbind()));
        match made {
            Ok(x) => {
                self.core.count_created();
                Ok(x)
            }
            Err(e) => {
                self.core.count_factory_error();
                if let Some(w) = self.core.release_slot(false) {
                    Self::wake(py, &w);
                }
                Err(e)
            }
        }
    }

    fn check_waiter<'a>(&self, waiter: &'a Bound<'_, PoolWaiter>) -> PyResult<&'a PyWaiter> {
        let w = waiter.get();
        if w.pool == self.id {
            Ok(&w.w)
        } else {
            Err(PyValueError::new_err("waiter is not waiting on this pool"))
        }
    }

    /// Calls each item's `close()` (if any) outside every lock; errors are unraisable.
    fn close_items(py: Python<'_>, items: Vec<Item>) {
        for item in items {
            let item = item.bind(py);
            match item.getattr_opt(intern!(py, "close")) {
                Ok(Some(close)) => {
                    if let Err(e) = wait::call0(&close) {
                        wait::report(py, e, Some(item));
                    }
                }
                Ok(None) => {}
                Err(e) => wait::report(py, e, Some(item)),
            }
        }
    }

    fn wake(py: Python<'_>, w: &PyWaiter) {
        if let Some(hook) = &w.hook {
            let hook = hook.bind(py);
            if let Err(e) = wait::call0(hook) {
                wait::report(py, e, Some(hook));
            }
        }
    }

    /// Closes a checked-out item and frees its slot (to a waiter first), then warms the
    /// pool back up to `min_size`.
    fn discard(&self, py: Python<'_>, item: Item) {
        Self::close_items(py, vec![item]);
        match self.core.release_slot(true) {
            Some(w) => Self::wake(py, &w),
            None => self.freed(py),
        }
        if let Some(e) = self.warm(py) {
            match self.factory(py) {
                Ok(f) => wait::report(py, e, Some(f.bind(py))),
                Err(_) => wait::report(py, e, None),
            }
        }
    }

    /// Creates items while fewer than `min_size` are live; stops at the first factory
    /// error and returns it.
    fn warm(&self, py: Python<'_>) -> Option<PyErr> {
        while self.core.reserve_warm() {
            match self.create(py) {
                Ok(x) => {
                    self.put_back(py, x);
                }
                Err(e) => return Some(e),
            }
        }
        None
    }

    /// Returns a checked-out item; false (and nothing changed) if none was checked out.
    fn put_back(&self, py: Python<'_>, item: Item) -> bool {
        let mut reaped = Vec::new();
        let ok = match self.core.put_back(item, self.now(), &mut reaped) {
            Returned::Idle => {
                self.freed(py);
                true
            }
            Returned::Handed(w) => {
                Self::wake(py, &w);
                true
            }
            Returned::Closed(x) => {
                reaped.push(x);
                true
            }
            Returned::Unexpected(_) => false,
        };
        Self::close_items(py, reaped);
        ok
    }

    /// Ends a checkout: return the item, or discard it after `Discard` (or any
    /// exception with `discard_on_error`). ValueError if no item is checked out (only
    /// reachable through `_finish`).
    fn finish(&self, py: Python<'_>, item: Item, exc: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let discard = match exc {
            Some(e) if !e.is_none() => {
                self.discard_on_error || e.is_instance(Exc::Discard.type_object(py)?)?
            }
            _ => false,
        };
        if discard {
            // Checked first: discarding closes the item, which must be one of ours.
            if !self.core.has_checkout() {
                return Err(not_checked_out());
            }
            self.discard(py, item);
        } else if !self.put_back(py, item) {
            return Err(not_checked_out());
        }
        Ok(())
    }

    /// Gives back a grant that its waiter will not use.
    fn give_back_grant(&self, py: Python<'_>, g: Grant<Item>) {
        match g {
            Grant::Item(x) => {
                self.put_back(py, x);
            }
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
                        Checkout::Wait(w) => {
                            self.must_wait(py);
                            return Ok(Outcome::Wait(w));
                        }
                        Checkout::Closed => Grant::Closed,
                    }
                }
                Step::Grant(g) => g,
            };
            match grant {
                Grant::Item(x) => {
                    let ok = match self.validator(py) {
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
                Grant::Create => return self.create(py).map(Outcome::Item),
                Grant::Closed => return Err(pool_closed()),
            }
        }
    }

    fn timeout_err(&self, py: Python<'_>, timeout: Option<Duration>) -> PyErr {
        self.core.count_timeout();
        if let Some(ev) = &self.events {
            ev.timeouts.fetch_add(1, Ordering::Relaxed);
        }
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
        let deadline = crate::core::wait::deadline(timeout);
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

    fn outcome(&self, py: Python<'_>, o: Outcome) -> PyResult<(bool, Py<PyAny>)> {
        Ok(match o {
            Outcome::Item(x) => (true, x),
            Outcome::Wait(w) => {
                let waiter = PoolWaiter { w, pool: self.id };
                (false, Py::new(py, waiter)?.into_any())
            }
        })
    }
}

#[pymethods]
impl Pool {
    #[new]
    #[pyo3(signature = (factory, *, max_size, min_size = 0, timeout = 30.0, validate = None, max_idle = None, discard_on_error = false, clock = None, name = None, bus = None))]
    #[allow(clippy::too_many_arguments)] // the Python signature
    fn new(
        py: Python<'_>,
        factory: Py<PyAny>,
        max_size: &Bound<'_, PyAny>,
        #[pyo3(from_py_with = args::named::min_size)] min_size: i64,
        #[pyo3(from_py_with = args::named::timeout)] timeout: Option<f64>,
        validate: Option<Py<PyAny>>,
        max_idle: Option<&Bound<'_, PyAny>>,
        discard_on_error: bool,
        clock: Option<&Bound<'_, PyAny>>,
        name: Option<&Bound<'_, PyAny>>,
        bus: Option<&Bound<'_, PyAny>>,
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
        // >= 0, so the cast is exact.
        let min_size = args::at_least(min_size, "min_size", 0)? as usize;
        let timeout = timeout
            .map(|t| crate::core::clock::duration_nanos(t, "timeout"))
            .transpose()?
            .map(|ns| Duration::from_nanos(ns as u64));
        let max_idle = args::opt_positive_nanos(max_idle, "max_idle")?;
        let clock = args::clock(clock)?;
        let name = events::name_arg(py, name)?;
        let events = Events::from_args(py, "pool", bus, name.as_ref())?.map(|events| {
            Box::new(PoolEvents {
                events,
                exhausted: Episode::default(),
                waited: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
            })
        });
        let pool = Self {
            core: PoolCore::new(max_size, min_size, max_idle)?,
            hooks: Held::new(Some(PoolHooks { factory, validate })),
            discard_on_error,
            timeout,
            clock,
            id: POOL_IDS.fetch_add(1, Ordering::Relaxed),
            name,
            events,
        };
        match pool.warm(py) {
            Some(e) => Err(e),
            None => Ok(pool),
        }
    }

    /// `with pool.acquire() as item:`; `timeout` overrides the pool's default. The
    /// returned `PoolCheckout` checks an item out for the block.
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

    /// `async with pool.acquire_async() as item:`; waits on a future, not a thread.
    #[pyo3(signature = (timeout = None))]
    fn acquire_async<'py>(
        slf: &Bound<'py, Self>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = slf.get().timeout_arg(timeout)?.map(|d| d.as_secs_f64());
        lookup!(slf.py(), "ferrule._pool", "AsyncCheckout")?.call1((slf, t))
    }

    /// Close every idle item and fail every waiter; items in use are closed when they are
    /// returned. Later checkouts raise RuntimeError.
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

    /// The name given (the topics' middle segment), or None.
    #[getter]
    fn name(&self, py: Python<'_>) -> Option<Py<PyString>> {
        self.name.as_ref().map(|n| n.clone_ref(py))
    }

    /// The default checkout timeout in seconds (None: wait forever).
    #[getter]
    fn timeout(&self) -> Option<f64> {
        self.timeout.map(|t| t.as_secs_f64())
    }

    /// Counters; see `PoolStats`.
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
        if !wake.bind(py).is_callable() {
            return Err(wrong_type("wake", "callable", wake.bind(py)));
        }
        let o = self.advance(py, Step::Start, Some(&wake))?;
        self.outcome(py, o)
    }

    /// Asyncio: continues after a wake-up (which may be spurious).
    fn _resume(
        &self,
        py: Python<'_>,
        waiter: &Bound<'_, PoolWaiter>,
    ) -> PyResult<(bool, Py<PyAny>)> {
        let w = self.check_waiter(waiter)?;
        match w.try_take() {
            None => Ok((false, waiter.clone().into_any().unbind())),
            Some(g) => {
                let o = self.advance(py, Step::Grant(g), w.hook.as_ref())?;
                self.outcome(py, o)
            }
        }
    }

    /// Asyncio: the waiter gives up. `timed_out`: count it and raise PoolTimeout unless
    /// a grant arrived meanwhile (then continue with it); otherwise (cancelled) give any
    /// grant back. `timeout` (seconds or None) is only quoted in the PoolTimeout message.
    #[pyo3(signature = (waiter, timed_out, timeout = None))]
    fn _give_up(
        &self,
        py: Python<'_>,
        waiter: &Bound<'_, PoolWaiter>,
        timed_out: bool,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(bool, Py<PyAny>)> {
        let w = self.check_waiter(waiter)?;
        let timeout = args::opt_timeout(timeout, "timeout")?;
        let g = self.core.cancel(w).or_else(|| w.try_take());
        match (g, timed_out) {
            (Some(g), true) => {
                let o = self.advance(py, Step::Grant(g), w.hook.as_ref())?;
                self.outcome(py, o)
            }
            (Some(g), false) => {
                self.give_back_grant(py, g);
                Ok((false, py.None()))
            }
            (None, true) => Err(self.timeout_err(py, timeout)),
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
        self.hooks.try_visit(|h| {
            visit.call(&h.factory)?;
            visit.call(h.validate.as_ref())
        })?;
        if let Some(ev) = &self.events {
            ev.events.visit(&visit)?;
        }
        // Idle items and queued waiters are visited only if the pool lock is free right
        // now; skipping them only makes the collector more conservative. A queued
        // waiter's hook belongs to the pool alone once no `_PoolWaiter` shares it. The
        // count is stable here: the collector runs with every other thread stopped (or
        // holding no GIL), and `_PoolWaiter`s are made and dropped only by attached threads.
        self.core.try_for_each(
            |item| visit.call(item),
            |w| {
                if Arc::strong_count(w) == 1 {
                    visit.call(w.hook.as_ref())?;
                    w.try_for_granted(|x| visit.call(x))?;
                }
                Ok(())
            },
        )
    }

    /// Drops the callables, the idle items (without calling their `close()`: the pool is
    /// garbage, as are its waiters) and the queue; the pool is closed afterwards.
    fn __clear__(&self) {
        let hooks = self.hooks.take();
        let bus = self.events.as_ref().and_then(|ev| ev.events.clear());
        let (items, waiters) = self.core.close();
        drop((hooks, bus, items, waiters)); // every lock is released: dropping may run Python
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
    /// The `id` of the pool it waits on.
    pool: u64,
}

#[pymethods]
impl PoolWaiter {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // The hook and a granted item belong to this object alone once the pool's queue
        // has let go of the waiter (while it has not, the pool reaches them).
        if Arc::strong_count(&self.w) == 1 {
            visit.call(self.w.hook.as_ref())?;
            self.w.try_for_granted(|x| visit.call(x))?;
        }
        Ok(())
    }
}

/// One checkout, from `Pool.acquire`; use it once as a context manager.
#[pyclass(frozen, module = "ferrule", name = "PoolCheckout")]
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

    /// Returns the item to the pool (as the destructor would), after the lock is
    /// released. The pool reference is not cleared: the pool's own `__clear__` breaks any
    /// cycle through it.
    fn __clear__(&self, py: Python<'_>) {
        let item = self.item.lock().take();
        if let Some(item) = item {
            self.pool.get().put_back(py, item);
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
            Python::attach(|py| {
                self.pool.get().put_back(py, item);
            });
        }
    }
}

/// Counters of a `Pool`, read from atomics once `stats()` has closed the idle items past
/// `max_idle`.
#[pyclass(frozen, get_all, module = "ferrule", name = "PoolStats")]
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
