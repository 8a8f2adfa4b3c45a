//! `WorkQueue` and `QueueStats`: the Python face of `core::queue::WorkQueue` over Python
//! items.
//!
//! A `WorkQueue` is a mailbox (`crate::py::mailbox`): its gets, its asyncio getters and
//! putters, `close` and its garbage collection are the mailbox's, shared with a pull
//! `Subscription`; this file adds what only a work queue has: the puts (`put`,
//! `put_many`, `put_async` and their glue), `get_many`, `queue.Queue`'s task accounting
//! (`task_done`, `join`, `join_async` and its glue) and `shutdown`, and its Python
//! protocols.
//!
//! `queue.Queue` compatibility: `put(item, block=True, timeout=None)` and
//! `get(block=True, timeout=None)` take `queue.Queue`'s arguments (`block` false is the
//! `_nowait` call); `maxsize <= 0` (`queue.Queue`'s "infinite") is a queue bounded at
//! `core::queue::IMPLICIT_BOUND` whose full puts raise `QueueFull` instead of waiting
//! (`core::queue::queue_bound`; `maxsize` and `overflow` report what was asked for). `shutdown()` is the core's shutdown, whose plain form is `close()`:
//! `QueueClosed` is also a `queue.ShutDown` where Python has one (`crate::errors`). The
//! mailbox's module documentation says how waits detach, why nothing is dropped or
//! called under the queue's lock, how asyncio waiters are woken and forgotten without
//! losing an item, and what the collector visits. The `TaskPool` binding over a
//! `WorkQueue` is in `crate::py::taskpool`.
//!
//! Events (`bus=`, see `crate::py::events`): `queue.<name>.overflow` begins at the first
//! put refused or dropped for lack of room (reject, `drop_newest`, a timed-out or
//! `put_nowait` put, an item evicted by `drop_oldest`) and ends when a get (or a
//! `shutdown`) leaves at most `low_water` items, half of the bound. Those puts are the
//! cold paths already; a get pays one test of an `Option` without a bus, and a relaxed
//! load with one. The bus is visited and cleared with the items.

use std::collections::VecDeque;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyList, PyString, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::queue::{
    queue_bound, Accepted, GetError, Overflow, PutError, Stats, Stop, WaitError,
};
use crate::errors::{wrong_type, Exc};
use crate::py::args;
use crate::py::events::{self, Episode, Event, Events, Val};
use crate::py::lookup::lookup;
use crate::py::mailbox::{self, run_wait, size_at_least, Item, Mailbox, Waker, Words};
use crate::py::wait::check_signals;

const WORDS: Words = Words {
    empty: "queue is empty",
    timed_out: "queue is empty (get timed out)",
    closed: "queue is closed",
};

fn full(py: Python<'_>) -> PyErr {
    Exc::QueueFull.err(py, "queue is full")
}

/// A put that did not enter: `drop_newest` refused it silently, otherwise it raises.
fn not_entered(py: Python<'_>, e: PutError<Item>) -> PyResult<()> {
    match e {
        PutError::Discarded(_) => Ok(()),
        PutError::Closed(_) => Err(WORDS.closed(py)),
        _ => Err(full(py)),
    }
}

/// A `queue.Queue` flag (`block`, `immediate`): a bool, or an int read as `queue.Queue`
/// reads it (`block=0`). Anything else is refused, a float first: `put(item, 0.5)` was
/// a timeout before `block` came first, and must not turn into a wait without one.
fn flag(obj: &Bound<'_, PyAny>, arg: &str) -> PyResult<bool> {
    if obj.is_instance_of::<PyBool>() || obj.is_instance_of::<PyInt>() {
        obj.is_truthy()
    } else {
        Err(wrong_type(arg, "a bool", obj))
    }
}

/// `block`: see [`flag`] (a converter for `from_py_with`, which knows no argument name).
fn block(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    flag(obj, "block")
}

/// `immediate`: see [`flag`].
fn immediate(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    flag(obj, "immediate")
}

/// A bounded multi-producer, multi-consumer FIFO queue with an overflow policy.
#[pyclass(frozen, module = "ferrule", name = "WorkQueue")]
pub struct WorkQueue {
    q: Mailbox,
    /// As asked for: `queue.Queue` reports a `maxsize <= 0` as given.
    maxsize: i64,
    /// As asked for (a queue with the implicit bound runs `Block` as `Reject`).
    overflow: Overflow,
    name: Option<Py<PyString>>,
    events: Option<Box<QueueEvents>>,
}

/// A work queue's bus and its overflow episode.
struct QueueEvents {
    events: Events,
    overflow: Episode,
    /// An overflow ends once at most this many items are queued.
    low_water: usize,
    /// `rejected` and `dropped` when the last overflow ended (0, 0 at first).
    base: parking_lot::Mutex<(u64, u64)>,
}

impl QueueEvents {
    /// The episode's edge, with the counts since the previous end.
    fn edge(&self, py: Python<'_>, q: &Mailbox, begin: bool) {
        self.events.edge(py, &self.overflow, begin, || {
            let s = q.stats();
            let mut base = self.base.lock();
            let (r, d) = (s.rejected - base.0, s.dropped - base.1);
            if !begin {
                *base = (s.rejected, s.dropped);
            }
            Event::new(
                "overflow",
                vec![
                    ("state", Val::Str(if begin { "begin" } else { "end" })),
                    ("rejected", Val::Int(r)),
                    ("dropped", Val::Int(d)),
                    ("size", Val::Int(s.size as u64)),
                ],
            )
        });
    }
}

impl WorkQueue {
    /// A put was refused or dropped an item for lack of room: an overflow begins unless
    /// one is under way.
    #[cold]
    #[inline(never)]
    fn overflowed(&self, py: Python<'_>) {
        if let Some(ev) = &self.events {
            if !ev.overflow.is_active() {
                ev.edge(py, &self.q, true);
            }
        }
    }

    /// After items left: an overflow ends at the low-water mark.
    #[inline]
    fn drained(&self, py: Python<'_>) {
        if let Some(ev) = &self.events {
            if ev.overflow.is_active() && self.q.len() <= ev.low_water {
                ev.edge(py, &self.q, false);
            }
        }
    }

    /// `mailbox::accepted`, noting a `drop_oldest` eviction.
    fn accepted(&self, py: Python<'_>, a: Accepted<Item, Py<PyAny>>) {
        if a.evicted.is_some() && self.events.is_some() {
            mailbox::accepted(py, &self.q, a);
            self.overflowed(py);
        } else {
            mailbox::accepted(py, &self.q, a);
        }
    }

    /// `not_entered`, noting a put refused for lack of room.
    fn not_entered(&self, py: Python<'_>, e: PutError<Item>) -> PyResult<()> {
        if !matches!(e, PutError::Closed(_)) {
            self.overflowed(py);
        }
        not_entered(py, e)
    }

    fn do_put(&self, py: Python<'_>, item: Item, timeout: Option<Duration>) -> PyResult<()> {
        // The common case first, without the blocking loop's machinery.
        let item = match self.q.put_or_wait(item, None) {
            Ok(a) => {
                self.accepted(py, a);
                return Ok(());
            }
            Err(PutError::WouldBlock(item)) => item,
            Err(e) => return self.not_entered(py, e),
        };
        match self
            .q
            .put_until(item, timeout, check_signals, |w| run_wait(py, timeout, w))
        {
            Ok(a) => {
                self.accepted(py, a);
                Ok(())
            }
            Err(e @ (PutError::Discarded(_) | PutError::Full(_) | PutError::Timeout(_)))
                if self.events.is_some() =>
            {
                self.overflowed(py);
                Self::put_error(py, e)
            }
            Err(e) => Self::put_error(py, e),
        }
    }

    /// What a blocking put that did not enter raises.
    fn put_error(py: Python<'_>, e: PutError<Item, PyErr>) -> PyResult<()> {
        match e {
            // drop_newest: refused without an error (counted in `rejected`).
            PutError::Discarded(_) => Ok(()),
            PutError::Full(_) | PutError::WouldBlock(_) => Err(full(py)),
            PutError::Timeout(_) => Err(Exc::QueueFull.err(py, "queue is full (put timed out)")),
            PutError::Closed(_) => Err(WORDS.closed(py)),
            PutError::Interrupted(_, e) => Err(e),
        }
    }

    /// A blocking get for `TaskPool`'s workers (`crate::py::taskpool`).
    pub(crate) fn take(&self, py: Python<'_>) -> Result<Item, GetError<PyErr>> {
        let r = mailbox::take(py, &self.q, None);
        self.drained(py);
        r
    }
}

#[pymethods]
impl WorkQueue {
    #[new]
    #[pyo3(signature = (maxsize, *, overflow = "block", name = None, bus = None))]
    fn new(
        py: Python<'_>,
        #[pyo3(from_py_with = args::named::maxsize)] maxsize: i64,
        #[pyo3(from_py_with = args::named::overflow)] overflow: &str,
        name: Option<&Bound<'_, PyAny>>,
        bus: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let asked = Overflow::parse(overflow)?;
        let (bound, policy) = queue_bound(maxsize, asked);
        let q = Mailbox::new(bound, policy)?;
        let name = events::name_arg(py, name)?;
        let events = Events::from_args(py, "queue", bus, name.as_ref())?.map(|events| {
            Box::new(QueueEvents {
                events,
                overflow: Episode::default(),
                low_water: bound / 2,
                base: parking_lot::Mutex::new((0, 0)),
            })
        });
        Ok(Self {
            q,
            maxsize,
            overflow: asked,
            name,
            events,
        })
    }

    /// Add `item`. Under the block policy it waits for room up to `timeout` seconds.
    #[pyo3(signature = (item, block = true, timeout = None))]
    fn put(
        &self,
        py: Python<'_>,
        item: Item,
        #[pyo3(from_py_with = block)] block: bool,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let timeout = args::opt_timeout(timeout, "timeout")?;
        if block {
            self.do_put(py, item, timeout)
        } else {
            self.put_nowait(py, item)
        }
    }

    /// Add `item` without waiting: `QueueFull` if there is no room, unless `drop_oldest`
    /// makes room or `drop_newest` refuses the item silently (counted in `rejected`).
    fn put_nowait(&self, py: Python<'_>, item: Item) -> PyResult<()> {
        match self.q.try_put(item) {
            Ok(a) => {
                self.accepted(py, a);
                Ok(())
            }
            Err(e) => self.not_entered(py, e),
        }
    }

    /// Remove and return the oldest item, waiting up to `timeout` for one (`QueueEmpty`
    /// then). Raises `QueueClosed` once closed and drained.
    #[pyo3(signature = (block = true, timeout = None))]
    fn get(
        &self,
        py: Python<'_>,
        #[pyo3(from_py_with = block)] block: bool,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Item> {
        let timeout = args::opt_timeout(timeout, "timeout")?;
        let r = if block {
            mailbox::get(py, &self.q, timeout, &WORDS)
        } else {
            mailbox::get_nowait(py, &self.q, &WORDS)
        };
        self.drained(py);
        r
    }

    /// The oldest item without waiting; `QueueEmpty` if there is none.
    fn get_nowait(&self, py: Python<'_>) -> PyResult<Item> {
        let r = mailbox::get_nowait(py, &self.q, &WORDS);
        self.drained(py);
        r
    }

    /// Add the items in order under as few lock holds as possible; returns how many
    /// entered the queue.
    #[pyo3(signature = (items, timeout = None))]
    fn put_many(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let timeout = args::opt_timeout(timeout, "timeout")?;
        let iter = args::iterate(items, "items", "an iterable")?;
        // Python's own iteration protocol: a list, dict view or deque changed by another
        // thread meanwhile raises an ordinary exception (or is read as it is), never a
        // panic. All or nothing: nothing is put until the iterable is exhausted.
        let mut pending = iter
            .map(|r| r.map(Bound::unbind))
            .collect::<PyResult<VecDeque<Item>>>()?;
        let batch = self.q.put_many_until(
            &mut pending,
            timeout,
            check_signals,
            |w| run_wait(py, timeout, w),
            |ws| {
                for w in ws {
                    mailbox::wake_getter(py, &self.q, Some(w));
                }
            },
        );
        let overflowed =
            !batch.evicted.is_empty() || matches!(batch.stopped, Some(Stop::Full | Stop::Timeout));
        drop(batch.evicted);
        drop(pending);
        if overflowed {
            self.overflowed(py);
        }
        match batch.stopped {
            Some(Stop::Interrupted(e)) => Err(e),
            Some(Stop::Closed) if batch.accepted == 0 => Err(WORDS.closed(py)),
            _ => Ok(batch.accepted),
        }
    }

    /// Up to `max_items` (>= 1) of the oldest items, waiting up to `timeout` for the
    /// first: `[]` on timeout; `QueueClosed` once closed and drained.
    #[pyo3(signature = (max_items, timeout = None))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        max_items: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let max = size_at_least(args::int(max_items, "max_items")?, "max_items", 1)?;
        let timeout = args::opt_timeout(timeout, "timeout")?;
        match self
            .q
            .get_many_until(max, timeout, check_signals, |w| run_wait(py, timeout, w))
        {
            Ok((items, wake)) => {
                for w in wake {
                    mailbox::wake_putter(py, &self.q, Some(w));
                }
                self.drained(py);
                PyList::new(py, items)
            }
            Err(GetError::Timeout | GetError::Empty) => Ok(PyList::empty(py)),
            Err(GetError::Closed) => Err(WORDS.closed(py)),
            Err(GetError::Interrupted(e)) => Err(e),
        }
    }

    /// Coroutine: `put` for asyncio. It waits without blocking the event loop.
    fn put_async<'py>(slf: &Bound<'py, Self>, item: Item) -> PyResult<Bound<'py, PyAny>> {
        lookup!(slf.py(), "ferrule._queue", "put_async")?.call1((slf, item))
    }

    /// Coroutine: `get` for asyncio. It waits without blocking the event loop.
    fn get_async<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        mailbox::get_async(slf.as_any())
    }

    /// asyncio glue: puts `item` and returns True (also when `drop_newest` refused it),
    /// or (block policy, full) registers `waker` (if not None) and returns False.
    fn _put_or_wait(&self, py: Python<'_>, item: Item, waker: Option<Waker>) -> PyResult<bool> {
        let waker = waker.filter(|w| !w.is_none(py));
        match self.q.put_or_wait(item, waker) {
            Ok(a) => {
                self.accepted(py, a);
                Ok(true)
            }
            Err(PutError::WouldBlock(_)) => Ok(false),
            Err(e) => self.not_entered(py, e).map(|()| true),
        }
    }

    /// asyncio glue: an item, or `pending` after registering `waker` (if not None).
    fn _get_or_wait(&self, py: Python<'_>, waker: Option<Waker>, pending: Item) -> PyResult<Item> {
        let r = mailbox::get_or_wait(py, &self.q, waker, pending, &WORDS);
        self.drained(py);
        r
    }

    /// asyncio glue: a getter's task gave up; an unused wake-up passes on.
    fn _forget_getter(&self, py: Python<'_>, waker: &Bound<'_, PyAny>) {
        mailbox::forget_getter(py, &self.q, waker);
    }

    /// asyncio glue: a putter's task gave up; an unused wake-up passes on.
    fn _forget_putter(&self, py: Python<'_>, waker: &Bound<'_, PyAny>) {
        mailbox::forget_putter(py, &self.q, waker);
    }

    /// Close the queue (idempotent) and wake every waiter: puts raise `QueueClosed` from
    /// now on; gets drain what is left, then raise it.
    fn close(&self, py: Python<'_>) {
        mailbox::close(py, &self.q);
    }

    /// `queue.Queue.shutdown`: `close()`, and with `immediate` the queued items are
    /// discarded too.
    #[pyo3(signature = (immediate = false))]
    fn shutdown(&self, py: Python<'_>, #[pyo3(from_py_with = immediate)] immediate: bool) {
        let (drained, wake) = self.q.shutdown(immediate);
        drop(drained);
        mailbox::wake_all(py, wake);
        self.drained(py);
    }

    /// True once `close()` or `shutdown()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.q.is_closed()
    }

    /// Mark one item got earlier as processed, as `queue.Queue.task_done` does.
    fn task_done(&self, py: Python<'_>) -> PyResult<()> {
        mailbox::wake_all(py, self.q.task_done()?);
        Ok(())
    }

    /// Wait until every item put has been processed (`task_done`), as
    /// `queue.Queue.join` does.
    fn join(&self, py: Python<'_>) -> PyResult<()> {
        match self
            .q
            .join_until(None, check_signals, |w| run_wait(py, None, w))
        {
            Ok(()) | Err(WaitError::Expired) => Ok(()),
            Err(WaitError::Interrupted(e)) => Err(e),
        }
    }

    /// Coroutine: `join` for asyncio. It waits without blocking the event loop.
    fn join_async<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        lookup!(slf.py(), "ferrule._queue", "join_async")?.call1((slf,))
    }

    /// asyncio glue: True if nothing is unfinished, else registers `waker` (if not
    /// None) and returns False.
    fn _join_or_wait(&self, py: Python<'_>, waker: Option<Waker>) -> bool {
        self.q.join_or_wait(waker.filter(|w| !w.is_none(py)))
    }

    /// asyncio glue: a joiner's task gave up.
    fn _forget_joiner(&self, waker: &Bound<'_, PyAny>) {
        let me = waker.as_ptr();
        self.q.forget_joiner(|w| w.as_ptr() == me);
    }

    /// Items put and not yet marked done with `task_done` (nor discarded).
    #[getter]
    fn unfinished_tasks(&self) -> usize {
        self.q.unfinished()
    }

    /// Items queued now.
    fn qsize(&self) -> usize {
        self.q.len()
    }

    fn __len__(&self) -> usize {
        self.q.len()
    }

    fn empty(&self) -> bool {
        self.q.is_empty()
    }

    fn full(&self) -> bool {
        self.q.is_full()
    }

    /// The bound as given: `0` or less is `queue.Queue`'s "no bound" (see the class).
    #[getter]
    fn maxsize(&self) -> i64 {
        self.maxsize
    }

    /// The overflow policy's name.
    #[getter]
    fn overflow(&self) -> &'static str {
        self.overflow.name()
    }

    /// The name given (the topics' middle segment), or None.
    #[getter]
    fn name(&self, py: Python<'_>) -> Option<Py<PyString>> {
        self.name.as_ref().map(|n| n.clone_ref(py))
    }

    /// Counters; see `QueueStats`.
    fn stats(&self) -> QueueStats {
        QueueStats::from(self.q.stats())
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Item> {
        let r = mailbox::next(py, &self.q, &WORDS);
        self.drained(py);
        r
    }

    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// Coroutine: the next item for `async for`, as `get_async`; the iteration ends once
    /// the queue is closed and drained.
    fn __anext__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        mailbox::anext(slf.as_any())
    }

    /// Visits the queued items, the asyncio wakers and the bus.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        mailbox::traverse(&self.q, &visit)?;
        match &self.events {
            Some(ev) => ev.events.visit(&visit),
            None => Ok(()),
        }
    }

    /// Takes the items (counted as dropped), the wakers and the bus out.
    fn __clear__(&self) {
        let bus = self.events.as_ref().and_then(|ev| ev.events.clear());
        mailbox::clear(&self.q);
        drop(bus);
    }

    #[classmethod]
    fn __class_getitem__<'py>(
        cls: &Bound<'py, PyType>,
        item: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let alias = lookup!(cls.py(), "types", "GenericAlias")?;
        alias.call1((cls, item))
    }

    fn __repr__(&self) -> String {
        format!(
            "WorkQueue(maxsize={}, overflow='{}', qsize={}, closed={})",
            self.maxsize,
            self.overflow.name(),
            self.q.len(),
            if self.q.is_closed() { "True" } else { "False" }
        )
    }
}

/// Counters of a `WorkQueue`, read together in one critical section, so
/// `put == got + dropped + size` holds exactly in every snapshot.
#[pyclass(frozen, get_all, module = "ferrule", name = "QueueStats")]
pub struct QueueStats {
    put: u64,
    got: u64,
    rejected: u64,
    dropped: u64,
    high_water: usize,
    /// Items queued when the snapshot was taken.
    size: usize,
}

impl From<Stats> for QueueStats {
    fn from(s: Stats) -> Self {
        Self {
            put: s.put,
            got: s.got,
            rejected: s.rejected,
            dropped: s.dropped,
            high_water: s.high_water,
            size: s.size,
        }
    }
}

#[pymethods]
impl QueueStats {
    fn __repr__(&self) -> String {
        format!(
            "QueueStats(put={}, got={}, rejected={}, dropped={}, high_water={}, size={})",
            self.put, self.got, self.rejected, self.dropped, self.high_water, self.size
        )
    }
}
