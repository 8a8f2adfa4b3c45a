//! Events: the rare, meaningful changes of a part (evictions under pressure, overflow,
//! saturation, exhaustion, denials, evicted agents) published on a user's bus, the
//! `bus=` of every part. The topics and payloads are listed in `ferrule.events` and
//! `docs/events.md`.
//!
//! # Cost
//! A part without a bus holds `None` and pays one branch on that `Option` on the paths
//! that could produce an event (most of them already cold: an eviction, a refused put).
//! With a bus, a hot path pays at most a relaxed atomic and a clock read: [`Tally`]
//! aggregates what happens per operation (evictions, denials) into at most one event per
//! interval, and [`Episode`] turns a condition (overflowing, saturated, exhausted) into a
//! `begin`/`end` pair with one compare-and-swap at each edge.
//!
//! # Publishing
//! A call that produces an event builds its payload from Rust values (no Python object
//! is kept), queues it in the part's [`Events`] outbox (a small mutex, held for a push
//! or a pop, never while Python runs) and then drains the outbox unless another call is
//! draining it already (`draining`, taken with a compare-and-swap). The drainer pops one
//! event at a time and calls `bus.publish(topic, data)` with no lock held, through
//! `wait::call1` (exit-safe). So:
//! - events reach the bus in the order they were queued, also across threads (a
//!   `begin` never follows its `end`);
//! - a handler that calls back into the part (and makes another event) does not deadlock
//!   or recurse: its event is queued and published by the same drain loop after the
//!   current `publish` returns;
//! - an exception from `publish` is reported through `sys.unraisablehook` (as the
//!   breaker's and the resource manager's are) and never reaches the operation.
//!
//! After the drainer has found the outbox empty it clears `draining` and looks once more
//! (under the lock): a call that queued an event and saw `draining` set either had its
//! push seen by that look, or runs after the clear and drains itself. The outbox holds
//! at most [`OUTBOX`] events: while a slow handler blocks the drainer, the oldest ones
//! beyond that are dropped (counted in `lost`, which the next published event carries
//! as `"lost"` when it is not zero).
//!
//! # Garbage collection
//! The bus is held in a `Held`: the part's `__traverse__` visits it ([`Events::visit`])
//! and its `__clear__` lets go of it ([`Events::clear`]); events queued after that are
//! discarded. The payloads are Rust values and hold nothing to visit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::clock::{self, Clock};
use crate::errors::wrong_type;
use crate::py::args::Held;
use crate::py::wait;

/// Events an outbox holds at most while its drainer is busy.
pub const OUTBOX: usize = 1024;

/// A payload value.
pub enum Val {
    Int(u64),
    Float(f64),
    Str(&'static str),
    Text(String),
    Texts(Vec<String>),
}

/// One event: the topic's last segment and the payload's fields.
pub struct Event {
    what: &'static str,
    fields: Vec<(&'static str, Val)>,
}

impl Event {
    pub fn new(what: &'static str, fields: Vec<(&'static str, Val)>) -> Self {
        Self { what, fields }
    }
}

/// `name=`: None, or a non-empty `str` (kept as an exact str: a subclass instance could
/// hold references).
pub fn name_arg(py: Python<'_>, name: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Py<PyString>>> {
    match name.filter(|o| !o.is_none()) {
        Some(o) => match o.cast::<PyString>() {
            Ok(s) => {
                let s = s.to_str()?;
                if s.is_empty() {
                    return Err(PyValueError::new_err("name must not be empty"));
                }
                Ok(Some(PyString::new(py, s).unbind()))
            }
            Err(_) => Err(wrong_type("name", "a str or None", o)),
        },
        None => Ok(None),
    }
}

/// `bus=`: None, or an object with a callable `publish`; with a bus, `name` is required.
/// Returns the bus and the name as a `String`.
pub fn bus_arg(
    py: Python<'_>,
    bus: Option<&Bound<'_, PyAny>>,
    name: Option<&Py<PyString>>,
) -> PyResult<Option<(Py<PyAny>, String)>> {
    let Some(bus) = bus.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if !bus.getattr("publish").is_ok_and(|p| p.is_callable()) {
        return Err(wrong_type(
            "bus",
            "an object with a publish(type, data) method",
            bus,
        ));
    }
    let Some(name) = name else {
        return Err(PyValueError::new_err("name is required when bus is given"));
    };
    Ok(Some((
        bus.clone().unbind(),
        name.bind(py).to_str()?.to_owned(),
    )))
}

/// `event_interval=` in nanoseconds (a number of seconds > 0).
pub fn interval_arg(seconds: f64) -> PyResult<i64> {
    Ok(clock::positive_nanos(seconds, "event_interval")?)
}

/// A part's bus and its outbox (see the module documentation).
pub struct Events {
    bus: Held<Py<PyAny>>,
    /// `<part>.<name>`: the topic without its last segment.
    prefix: String,
    outbox: Mutex<VecDeque<Event>>,
    draining: AtomicBool,
    /// Events dropped from a full outbox since the last one published.
    lost: AtomicU64,
}

impl Events {
    /// Events published as `<part>.<name>.<what>`.
    pub fn new(bus: Py<PyAny>, part: &str, name: &str) -> Self {
        Self {
            bus: Held::new(Some(bus)),
            prefix: format!("{part}.{name}"),
            outbox: Mutex::new(VecDeque::new()),
            draining: AtomicBool::new(false),
            lost: AtomicU64::new(0),
        }
    }

    /// From the `bus` and `name` arguments (see [`bus_arg`]); None without a bus.
    pub fn from_args(
        py: Python<'_>,
        part: &str,
        bus: Option<&Bound<'_, PyAny>>,
        name: Option<&Py<PyString>>,
    ) -> PyResult<Option<Self>> {
        Ok(bus_arg(py, bus, name)?.map(|(bus, name)| Self::new(bus, part, &name)))
    }

    /// Queues `e`, then publishes what is queued unless another call is doing it.
    pub fn emit(&self, py: Python<'_>, e: Event) {
        self.push(&mut self.outbox.lock(), e);
        self.drain(py);
    }

    fn push(&self, q: &mut VecDeque<Event>, e: Event) {
        if q.len() >= OUTBOX {
            q.pop_front();
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(e);
    }

    /// Starts (`to` true) or ends the episode `ep` unless it already is so, queueing
    /// `make()`'s event in the same critical section (so edges are queued in the order
    /// they happen), then drains. `make` runs under the outbox lock: no Python. True if
    /// this call made the edge.
    pub fn edge(
        &self,
        py: Python<'_>,
        ep: &Episode,
        to: bool,
        make: impl FnOnce() -> Event,
    ) -> bool {
        {
            let mut q = self.outbox.lock();
            if ep.active.load(Ordering::Relaxed) == to {
                return false;
            }
            ep.active.store(to, Ordering::Relaxed);
            let e = make();
            self.push(&mut q, e);
        }
        self.drain(py);
        true
    }

    fn drain(&self, py: Python<'_>) {
        loop {
            if self
                .draining
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                return; // the drainer will see our event (module docs)
            }
            loop {
                let next = self.outbox.lock().pop_front();
                let Some(e) = next else { break };
                self.publish(py, e);
            }
            self.draining.store(false, Ordering::SeqCst);
            if self.outbox.lock().is_empty() {
                return;
            }
        }
    }

    /// `bus.publish(topic, data)` with no lock held; what it raises is reported.
    fn publish(&self, py: Python<'_>, e: Event) {
        let Some(bus) = self.bus.with(|b| b.map(|b| b.clone_ref(py))) else {
            return; // cleared by the collector
        };
        let bus = bus.bind(py);
        let lost = self.lost.swap(0, Ordering::Relaxed);
        let r = (|| -> PyResult<()> {
            let data = PyDict::new(py);
            for (k, v) in e.fields {
                match v {
                    Val::Int(n) => data.set_item(k, n)?,
                    Val::Float(f) => data.set_item(k, f)?,
                    Val::Str(s) => data.set_item(k, s)?,
                    Val::Text(s) => data.set_item(k, s)?,
                    Val::Texts(v) => data.set_item(k, PyList::new(py, v)?)?,
                }
            }
            if lost > 0 {
                data.set_item("lost", lost)?;
            }
            let topic = format!("{}.{}", self.prefix, e.what);
            wait::call1(&bus.getattr(intern!(py, "publish"))?, (topic, data))?;
            Ok(())
        })();
        if let Err(err) = r {
            wait::report(py, err, Some(bus));
        }
    }

    /// For the part's `__traverse__`.
    pub fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.bus.try_visit(|b| visit.call(b))
    }

    /// For the part's `__clear__`: the bus, to be dropped by the caller after every lock
    /// is released.
    pub fn clear(&self) -> Option<Py<PyAny>> {
        self.bus.take()
    }
}

/// Counts of something that happens per operation, published at most once per
/// interval by the call that finds the interval over (aggregation).
///
/// `count` is added to with a relaxed `fetch_add`; `due` is the clock reading from which
/// the next event may be published. The call that moves `due` forward (one
/// compare-and-swap: exactly one caller wins each interval) takes the count. A count
/// added while that call takes it lands in this event or the next; none is lost or
/// counted twice.
///
/// Reading the clock can cost more than the operation (about 100 ns where
/// `clock_gettime` is a system call), so it is read only by the add that starts a count
/// or crosses a multiple of [`STRIDE`] ([`Tally::crossed`]), and, while a count is
/// pending, by every [`STRIDE`]-th other operation ([`Tally::tick`]). The first event of
/// a burst is published at once; its tail within `STRIDE` operations after the interval.
pub struct Tally {
    count: AtomicU64,
    ticks: AtomicU64,
    due: AtomicI64,
    interval: i64,
    clock: Clock,
}

/// Operations between two clock readings of a [`Tally`], at most.
pub const STRIDE: u64 = 64;

impl Tally {
    pub fn new(interval: i64, clock: Clock) -> Self {
        Self {
            count: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            due: AtomicI64::new(i64::MIN),
            interval,
            clock,
        }
    }

    /// Adds `n`; returns the count before the add (for sampling).
    #[inline]
    pub fn add(&self, n: u64) -> u64 {
        self.count.fetch_add(n, Ordering::Relaxed)
    }

    /// True if an add of `n` that found `prev` should look at the clock: it starts a
    /// count, or crosses a multiple of [`STRIDE`].
    #[inline]
    pub fn crossed(prev: u64, n: u64) -> bool {
        prev == 0 || prev / STRIDE != prev.saturating_add(n) / STRIDE
    }

    /// True, for an operation that added nothing, if something is pending and this is
    /// the [`STRIDE`]-th such operation: time to look at the clock.
    #[inline]
    pub fn tick(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
            && self.ticks.fetch_add(1, Ordering::Relaxed) % STRIDE == 0
    }

    /// The count to publish, if the interval since the last event is over and this call
    /// is the one that ends it (it reads the clock).
    pub fn take_due(&self) -> Option<u64> {
        let now = self.clock.now_nanos();
        let due = self.due.load(Ordering::Relaxed);
        if now < due {
            return None;
        }
        let next = now.saturating_add(self.interval);
        if self
            .due
            .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        Some(self.count.swap(0, Ordering::Relaxed))
    }

    pub fn interval_secs(&self) -> f64 {
        clock::nanos_to_secs(self.interval)
    }
}

/// A condition with a start and an end (overflowing, saturated, exhausted): one
/// `begin` and one `end` event per episode, in that order. The flag is read relaxed on
/// the hot path (a hint); it changes only in [`Events::edge`], under the outbox lock, in
/// the same critical section that queues the event, so the queued edges alternate.
pub struct Episode {
    active: AtomicBool,
}

impl Default for Episode {
    fn default() -> Self {
        Self {
            active: AtomicBool::new(false),
        }
    }
}

impl Episode {
    /// True while an episode runs (relaxed: a hint for the hot path).
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }
}
