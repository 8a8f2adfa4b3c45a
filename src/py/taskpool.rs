//! `TaskCounters`, `TaskPoolStats` and `_run_worker`: the native parts of `TaskPool`
//! (whose Python layer, the `concurrent.futures.Executor`, is in `python/ferrule/`).
//!
//! The counters are a thin wrapper around `core::taskpool::TaskCounters` (atomics, no
//! lock; its module documentation says why `started == completed + failed + active` is
//! exact in a snapshot, and how admission keeps `outstanding <= limit` without a lock).
//! `admit` waits for room like every other wait: detached in slices, with a signal
//! check between them. The pool's tasks wait in a `WorkQueue` (`crate::py::queue`);
//! each worker thread runs `_run_worker`, whose blocking get is the queue's (detached
//! while it waits, interruptible) and which calls each task, and its future's methods,
//! through `wait::call`, so a task running while the interpreter exits parks its thread
//! rather than unwinding through Rust.
//!
//! Events (`bus=`, see `crate::py::events`): `taskpool.<name>.saturated` begins when an
//! admission finds no room (every worker busy and the queue full: the submit waits or
//! is refused) and ends when a task's end (finished, cancelled, withdrawn) leaves at
//! most `low_water` tasks outstanding (the pool sets it to `max_workers + max_queue //
//! 2`). Without a bus a task's end pays one test of an `Option`; with one, a relaxed
//! load. The pool's own `TaskCounters` holds the bus, so it takes part in garbage
//! collection (visits it, and lets go of it in `__clear__`). The worker threads and the
//! pool's finalizer hold a *view* (`_view()`): the same counters, with only a weak
//! reference to the events. So a bus that refers back to the pool (a cycle through the
//! pool's counters) is not kept alive by a running worker or by the finalizer, and the
//! pool is still collected (and closed). The other classes hold no Python object.

use std::sync::{Arc, Weak};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::queue::GetError;
use crate::core::taskpool::Admission;
use crate::core::wait::slice_until;
use crate::py::args;
use crate::py::events::{self, Episode, Event, Events, Val};
use crate::py::queue::WorkQueue;
use crate::py::wait;

/// The counters and the admission rule of a `TaskPool`: the pool's Python layer and
/// `_run_worker` report each step of a task's life here.
#[pyclass(frozen, module = "ferrule._native", name = "TaskCounters")]
pub struct TaskCounters {
    inner: Arc<crate::core::taskpool::TaskCounters>,
    events: EventsRef,
}

/// The pool's counters own the events; a view only refers to them.
enum EventsRef {
    None,
    Owner(Arc<PoolEvents>),
    View(Weak<PoolEvents>),
}

/// A task pool's bus and its saturation episode.
struct PoolEvents {
    events: Events,
    saturated: Episode,
    /// Saturation ends once at most this many tasks are outstanding.
    low_water: u64,
    /// `rejected` when the last saturation ended.
    base: parking_lot::Mutex<u64>,
}

impl TaskCounters {
    /// Admission found no room: saturation begins unless it is under way.
    #[cold]
    #[inline(never)]
    fn no_room(&self, py: Python<'_>) {
        let ev = match &self.events {
            EventsRef::None => return,
            EventsRef::Owner(ev) => Some(Arc::clone(ev)),
            EventsRef::View(w) => w.upgrade(),
        };
        if let Some(ev) = ev {
            if !ev.saturated.is_active() {
                self.edge(py, &ev, true);
            }
        }
    }

    /// A task ended: saturation ends at the low-water mark.
    #[inline]
    fn ended(&self, py: Python<'_>) {
        let ev = match &self.events {
            EventsRef::None => return,
            EventsRef::Owner(ev) => Some(Arc::clone(ev)),
            EventsRef::View(w) => w.upgrade(),
        };
        if let Some(ev) = ev {
            if ev.saturated.is_active() && self.inner.outstanding() <= ev.low_water {
                self.edge(py, &ev, false);
            }
        }
    }

    fn edge(&self, py: Python<'_>, ev: &PoolEvents, begin: bool) {
        ev.events.edge(py, &ev.saturated, begin, || {
            let s = self.inner.snapshot();
            let outstanding = self.inner.outstanding();
            let mut base = ev.base.lock();
            let rejected = s.rejected - *base;
            if !begin {
                *base = s.rejected;
            }
            Event::new(
                "saturated",
                vec![
                    ("state", Val::Str(if begin { "begin" } else { "end" })),
                    ("rejected", Val::Int(rejected)),
                    ("active", Val::Int(s.active)),
                    ("queued", Val::Int(outstanding.saturating_sub(s.active))),
                ],
            )
        });
    }
}

/// `admit`'s answers (the pool's Python layer names them).
const ADMITTED: u8 = 0;
const NO_ROOM: u8 = 1;
const CLOSED: u8 = 2;

#[pymethods]
impl TaskCounters {
    /// `bus` (with `name`) publishes saturation, which ends at `low_water` outstanding
    /// tasks (default: half the limit).
    #[new]
    #[pyo3(signature = (limit = None, *, name = None, bus = None, low_water = None))]
    fn new(
        py: Python<'_>,
        limit: Option<&Bound<'_, PyAny>>,
        name: Option<&Bound<'_, PyAny>>,
        bus: Option<&Bound<'_, PyAny>>,
        low_water: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        // Up to 2**63 - 1, the largest `WorkQueue` the pool can size to match.
        let limit = match limit {
            None => i64::MAX,
            Some(l) => args::int_at_least(l, "limit", 1)?,
        }
        .unsigned_abs();
        let low_water = match low_water {
            Some(l) if !l.is_none() => args::int_at_least(l, "low_water", 0)?.unsigned_abs(),
            _ => limit / 2,
        };
        let name = events::name_arg(py, name)?;
        let events = match Events::from_args(py, "taskpool", bus, name.as_ref())? {
            None => EventsRef::None,
            Some(events) => EventsRef::Owner(Arc::new(PoolEvents {
                events,
                saturated: Episode::default(),
                low_water,
                base: parking_lot::Mutex::new(0),
            })),
        };
        Ok(Self {
            inner: Arc::new(crate::core::taskpool::TaskCounters::new(limit)),
            events,
        })
    }

    /// The same counters, referring to the events (the bus) only weakly: for the
    /// pool's worker threads and finalizer (see the module documentation).
    fn _view(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            events: match &self.events {
                EventsRef::None => EventsRef::None,
                EventsRef::Owner(ev) => EventsRef::View(Arc::downgrade(ev)),
                EventsRef::View(w) => EventsRef::View(w.clone()),
            },
        }
    }

    /// Admit a task if fewer than `limit` are outstanding, waiting up to `timeout`
    /// seconds for room (`None`: no limit; detached, interruptible): 0 admitted (counted
    /// as submitted), 1 no room, 2 closed (no wait ends otherwise once `close` ran).
    /// Counts nothing when it refuses.
    #[pyo3(signature = (timeout = None))]
    fn admit(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<u8> {
        let c = &self.inner;
        if c.try_admit() {
            return Ok(ADMITTED);
        }
        if c.is_closed() {
            return Ok(CLOSED);
        }
        self.no_room(py);
        let deadline = crate::core::wait::deadline(args::opt_timeout(timeout, "timeout")?);
        let guard = c.enter_wait();
        loop {
            let Some(slice) = slice_until(deadline) else {
                return Ok(NO_ROOM);
            };
            match wait::detach(py, || c.admit_or_sleep(&guard, slice)) {
                Admission::Admitted => return Ok(ADMITTED),
                Admission::Closed => return Ok(CLOSED),
                Admission::NoRoom => py.check_signals()?,
            }
        }
    }

    /// A submit was refused for lack of room.
    fn reject(&self) {
        self.inner.reject();
    }

    /// The admitted task was not queued after all (its room is given back).
    fn withdraw(&self, py: Python<'_>) {
        self.inner.withdraw();
        self.ended(py);
    }

    fn start(&self) {
        self.inner.start();
    }

    #[pyo3(signature = (ok))]
    fn finish(&self, py: Python<'_>, ok: bool) {
        self.inner.finish(ok);
        self.ended(py);
    }

    /// A queued task was cancelled before it started.
    fn cancel(&self, py: Python<'_>) {
        self.inner.cancel();
        self.ended(py);
    }

    /// Visits the bus (only the pool's own counters hold it).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        match &self.events {
            EventsRef::Owner(ev) => ev.events.visit(&visit),
            _ => Ok(()),
        }
    }

    fn __clear__(&self) {
        if let EventsRef::Owner(ev) = &self.events {
            let bus = ev.events.clear();
            drop(bus);
        }
    }

    /// Wake every waiting `admit` (it returns 2) and make later waits return at once.
    fn close(&self) {
        self.inner.close();
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Submitters waiting for room now.
    #[getter]
    fn waiting(&self) -> usize {
        self.inner.waiting()
    }

    #[getter]
    fn limit(&self) -> u64 {
        self.inner.limit()
    }

    /// Tasks admitted and not yet finished, cancelled or withdrawn (queued, in transit,
    /// running): exact, at most `limit`.
    #[getter]
    fn outstanding(&self) -> u64 {
        self.inner.outstanding()
    }

    /// A snapshot, with `queued` supplied by the pool's queue.
    fn snapshot(&self, queued: usize) -> TaskPoolStats {
        let s = self.inner.snapshot();
        TaskPoolStats {
            submitted: s.submitted,
            started: s.started,
            completed: s.completed,
            failed: s.failed,
            rejected: s.rejected,
            cancelled: s.cancelled,
            active: s.active,
            queued,
        }
    }
}

/// Counters of a `TaskPool`, read from atomics: `started == completed + failed + active`.
#[pyclass(frozen, get_all, module = "ferrule", name = "TaskPoolStats")]
pub struct TaskPoolStats {
    submitted: u64,
    started: u64,
    completed: u64,
    failed: u64,
    rejected: u64,
    cancelled: u64,
    /// Tasks running now.
    active: u64,
    queued: usize,
}

#[pymethods]
impl TaskPoolStats {
    fn __repr__(&self) -> String {
        format!(
            "TaskPoolStats(submitted={}, started={}, completed={}, failed={}, rejected={}, cancelled={}, active={}, queued={})",
            self.submitted, self.started, self.completed, self.failed, self.rejected,
            self.cancelled, self.active, self.queued
        )
    }
}

/// Internal: a `TaskPool` worker. Takes `(future, fn, args, kwargs)` tasks from `queue`
/// until it is closed and drained; a task's exception goes on its future and never ends
/// the loop. Counted before the future completes, so whoever sees a result sees it
/// counted.
#[pyfunction]
pub fn _run_worker(
    py: Python<'_>,
    queue: &Bound<'_, WorkQueue>,
    counters: &Bound<'_, TaskCounters>,
) -> PyResult<()> {
    let q = queue.get();
    let c = counters.get();
    loop {
        let task = match q.take(py) {
            Ok(t) => t,
            Err(GetError::Closed) => return Ok(()),
            Err(GetError::Interrupted(e)) => return Err(e),
            // No timeout: the wait ends only with an item, the close or an interruption.
            Err(GetError::Timeout | GetError::Empty) => continue,
        };
        // Only `TaskPool.submit` makes tasks; anything else put into its queue is skipped
        // rather than allowed to end the worker.
        let Ok((fut, func, args, kwargs)) = task.bind(py).extract::<(
            Bound<'_, PyAny>,
            Bound<'_, PyAny>,
            Bound<'_, PyTuple>,
            Bound<'_, PyDict>,
        )>() else {
            continue;
        };
        // The future's methods take its condition's lock, which may wait (another
        // thread holds it): through `wait::call*`, like the task, so a wait that ends
        // while the interpreter exits parks instead of unwinding through this loop.
        if !wait::call0(&fut.getattr(intern!(py, "set_running_or_notify_cancel"))?)?.is_truthy()? {
            c.cancel(py);
            continue;
        }
        c.start();
        let kwargs = if kwargs.is_empty() {
            None
        } else {
            Some(&kwargs)
        };
        // A failure to complete the future (it cannot be cancelled once running) is
        // not the task's: ignore it rather than end the worker.
        let _ = match wait::call(&func, args, kwargs) {
            Ok(v) => {
                c.finish(py, true);
                fut.getattr(intern!(py, "set_result"))
                    .and_then(|f| wait::call1(&f, (v,)))
            }
            Err(e) => {
                c.finish(py, false);
                fut.getattr(intern!(py, "set_exception"))
                    .and_then(|f| wait::call1(&f, (e.into_value(py),)))
            }
        };
    }
}
