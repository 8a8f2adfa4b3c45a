//! `WorkQueue` and `QueueStats`: the Python face of `core::queue::WorkQueue` over Python
//! items.
//!
//! A `WorkQueue` is a mailbox (`crate::py::mailbox`): its gets, its asyncio getters and
//! putters, `close` and its garbage collection are the mailbox's, shared with a pull
//! `Subscription`; this file adds what only a work queue has: the puts (`put`,
//! `put_many`, `put_async` and their glue), `get_many`, and its Python protocols. The
//! mailbox's module documentation says how waits detach, why nothing is dropped or
//! called under the queue's lock, how asyncio waiters are woken and forgotten without
//! losing an item, and what the collector visits. The `TaskPool` binding over a
//! `WorkQueue` is in `crate::py::taskpool`.

use std::collections::VecDeque;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyList, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::queue::{GetError, Overflow, PutError, Stats, Stop};
use crate::errors::Exc;
use crate::py::args;
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

/// A bounded multi-producer, multi-consumer FIFO queue with an overflow policy.
#[pyclass(frozen, module = "ferrule", name = "WorkQueue")]
pub struct WorkQueue {
    q: Mailbox,
}

impl WorkQueue {
    fn do_put(&self, py: Python<'_>, item: Item, timeout: Option<Duration>) -> PyResult<()> {
        // The common case first, without the blocking loop's machinery.
        let item = match self.q.put_or_wait(item, None) {
            Ok(a) => {
                mailbox::accepted(py, &self.q, a);
                return Ok(());
            }
            Err(PutError::WouldBlock(item)) => item,
            Err(e) => return not_entered(py, e),
        };
        match self
            .q
            .put_until(item, timeout, check_signals, |w| run_wait(py, timeout, w))
        {
            Ok(a) => {
                mailbox::accepted(py, &self.q, a);
                Ok(())
            }
            // drop_newest: refused without an error (counted in `rejected`).
            Err(PutError::Discarded(_)) => Ok(()),
            Err(PutError::Full(_) | PutError::WouldBlock(_)) => Err(full(py)),
            Err(PutError::Timeout(_)) => {
                Err(Exc::QueueFull.err(py, "queue is full (put timed out)"))
            }
            Err(PutError::Closed(_)) => Err(WORDS.closed(py)),
            Err(PutError::Interrupted(_, e)) => Err(e),
        }
    }

    /// A blocking get for `TaskPool`'s workers (`crate::py::taskpool`).
    pub(crate) fn take(&self, py: Python<'_>) -> Result<Item, GetError<PyErr>> {
        mailbox::take(py, &self.q, None)
    }
}

#[pymethods]
impl WorkQueue {
    #[new]
    #[pyo3(signature = (maxsize, *, overflow = "block"))]
    fn new(
        #[pyo3(from_py_with = args::named::maxsize)] maxsize: i64,
        #[pyo3(from_py_with = args::named::overflow)] overflow: &str,
    ) -> PyResult<Self> {
        let maxsize = size_at_least(maxsize, "maxsize", 1)?;
        let overflow = Overflow::parse(overflow)?;
        Ok(Self {
            q: Mailbox::new(maxsize, overflow)?,
        })
    }

    /// Add `item`. Under the block policy it waits for room up to `timeout` seconds.
    #[pyo3(signature = (item, timeout = None))]
    fn put(&self, py: Python<'_>, item: Item, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let timeout = args::opt_timeout(timeout, "timeout")?;
        self.do_put(py, item, timeout)
    }

    /// Add `item` without waiting: `QueueFull` if there is no room, unless `drop_oldest`
    /// makes room or `drop_newest` refuses the item silently (counted in `rejected`).
    fn put_nowait(&self, py: Python<'_>, item: Item) -> PyResult<()> {
        match self.q.try_put(item) {
            Ok(a) => {
                mailbox::accepted(py, &self.q, a);
                Ok(())
            }
            Err(e) => not_entered(py, e),
        }
    }

    /// Remove and return the oldest item, waiting up to `timeout` for one (`QueueEmpty`
    /// then). Raises `QueueClosed` once closed and drained.
    #[pyo3(signature = (timeout = None))]
    fn get(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Item> {
        let timeout = args::opt_timeout(timeout, "timeout")?;
        mailbox::get(py, &self.q, timeout, &WORDS)
    }

    /// The oldest item without waiting; `QueueEmpty` if there is none.
    fn get_nowait(&self, py: Python<'_>) -> PyResult<Item> {
        mailbox::get_nowait(py, &self.q, &WORDS)
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
        drop(batch.evicted);
        drop(pending);
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
                mailbox::accepted(py, &self.q, a);
                Ok(true)
            }
            Err(PutError::WouldBlock(_)) => Ok(false),
            Err(e) => not_entered(py, e).map(|()| true),
        }
    }

    /// asyncio glue: an item, or `pending` after registering `waker` (if not None).
    fn _get_or_wait(&self, py: Python<'_>, waker: Option<Waker>, pending: Item) -> PyResult<Item> {
        mailbox::get_or_wait(py, &self.q, waker, pending, &WORDS)
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

    /// True once `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.q.is_closed()
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

    #[getter]
    fn maxsize(&self) -> usize {
        self.q.maxsize()
    }

    /// The overflow policy's name.
    #[getter]
    fn overflow(&self) -> &'static str {
        self.q.overflow().name()
    }

    /// Counters; see `QueueStats`.
    fn stats(&self) -> QueueStats {
        QueueStats::from(self.q.stats())
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Item> {
        mailbox::next(py, &self.q, &WORDS)
    }

    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// Coroutine: the next item for `async for`, as `get_async`; the iteration ends once
    /// the queue is closed and drained.
    fn __anext__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        mailbox::anext(slf.as_any())
    }

    /// Visits the queued items and the asyncio wakers.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        mailbox::traverse(&self.q, &visit)
    }

    /// Takes the items (counted as dropped) and the wakers out.
    fn __clear__(&self) {
        mailbox::clear(&self.q);
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
            self.q.maxsize(),
            self.q.overflow().name(),
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
