//! `WorkQueue` and `QueueStats`: the Python face of `core::queue::WorkQueue` over Python
//! items. The `TaskPool` binding over a `WorkQueue` is in `crate::py::taskpool`.
//!
//! Every operation's attempts run attached to the interpreter (short critical sections);
//! only a wait detaches ([`run_wait`]), and it re-attaches at least every 50 ms to run
//! `check_signals`, so Ctrl-C interrupts a blocked `get`/`put` promptly. Items and
//! waiters move in and out of the queue only in the attempts, that is only while
//! attached: what the garbage collector visits (`__traverse__`) therefore holds still
//! while it runs, and the queue's lock is never held by a thread the collector waits
//! for. The core hands back what must not be dropped or called under its lock (evicted
//! items, refused items, the asyncio waiters to wake); the binding drops or calls them
//! attached, lock released.
//!
//! Asyncio: `put_async`/`get_async` are coroutines of `ferrule._queue`. A waiting task
//! registers a waker, `functools.partial(loop.call_soon_threadsafe, wake, future)`, with
//! the queue in the same critical section that found it full or empty, so no wake-up is
//! lost; the waker only tells the task to retry, so cancelling it never loses an item.
//!
//! Garbage collection: a `WorkQueue` visits its queued items and its asyncio wakers, and
//! `__clear__` takes them out (items counted as dropped), to be dropped after unlocking.

use std::collections::VecDeque;
use std::time::Duration;

use pyo3::exceptions::PyStopIteration;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::queue::{
    Accepted, GetError, Overflow, PutError, Stats, Stop, Wait, WaitResult, WorkQueue as Core,
};
use crate::errors::{wrong_type, Exc};
use crate::py::args;
use crate::py::lookup::lookup;
use crate::py::wait::{self, check_signals};

type Item = Py<PyAny>;
type Waker = Py<PyAny>;

fn closed(py: Python<'_>) -> PyErr {
    Exc::QueueClosed.err(py, "queue is closed")
}

fn full(py: Python<'_>) -> PyErr {
    Exc::QueueFull.err(py, "queue is full")
}

fn empty(py: Python<'_>) -> PyErr {
    Exc::QueueEmpty.err(py, "queue is empty")
}

/// Runs one wait of a blocking queue call (the core's `outside`): detached from the
/// interpreter, except with a zero timeout, where the one wait only finds its deadline
/// passed and releasing the GIL would cost more than it.
pub(crate) fn run_wait<E: Send>(
    py: Python<'_>,
    timeout: Option<Duration>,
    w: &mut Wait<'_, E>,
) -> WaitResult<E> {
    if timeout == Some(Duration::ZERO) {
        w()
    } else {
        wait::detach(py, w)
    }
}

/// A size or count argument (an int >= `min`); one beyond `usize` means "no limit".
pub(crate) fn size_arg(obj: &Bound<'_, PyAny>, arg: &str, min: i64) -> PyResult<usize> {
    let v = args::int_at_least(obj, arg, min)?;
    Ok(usize::try_from(v).unwrap_or(usize::MAX))
}

/// Calls an asyncio waker; false if it failed. A waker whose loop is closed raises
/// RuntimeError (nobody is left to tell: not reported); anything else is reported.
pub(crate) fn fire(py: Python<'_>, waker: &Waker) -> bool {
    match wait::call0(waker.bind(py)) {
        Ok(_) => true,
        Err(e) => {
            if !e.is_instance_of::<pyo3::exceptions::PyRuntimeError>(py) {
                wait::report(py, e, Some(waker.bind(py)));
            }
            false
        }
    }
}

/// Wakes an asyncio getter of `q`; a waker that fails (its loop is closed) passes the
/// wake-up on.
pub(crate) fn wake_getter(py: Python<'_>, q: &Core<Item, Waker>, mut w: Option<Waker>) {
    while let Some(f) = w.take() {
        if !fire(py, &f) {
            w = q.forget_getter(|_| false);
        }
    }
}

/// Wakes an asyncio putter of `q`, passing the wake-up on like [`wake_getter`].
fn wake_putter(py: Python<'_>, q: &Core<Item, Waker>, mut w: Option<Waker>) {
    while let Some(f) = w.take() {
        if !fire(py, &f) {
            w = q.forget_putter(|_| false);
        }
    }
}

/// A put that did not enter: `drop_newest` refused it silently, otherwise it raises.
fn not_entered(py: Python<'_>, e: PutError<Item>) -> PyResult<()> {
    match e {
        PutError::Discarded(_) => Ok(()),
        PutError::Closed(_) => Err(closed(py)),
        _ => Err(full(py)),
    }
}

/// A bounded multi-producer, multi-consumer queue with an overflow policy.
#[pyclass(frozen, module = "ferrule", name = "WorkQueue")]
pub struct WorkQueue {
    q: Core<Item, Waker>,
}

impl WorkQueue {
    /// Drops what a put evicted and wakes a getter, with the lock released.
    fn accepted(&self, py: Python<'_>, a: Accepted<Item, Waker>) {
        drop(a.evicted);
        wake_getter(py, &self.q, a.wake);
    }

    fn do_put(&self, py: Python<'_>, item: Item, timeout: Option<Duration>) -> PyResult<()> {
        // The common case first, without the blocking loop's machinery.
        let item = match self.q.put_or_wait(item, None) {
            Ok(a) => {
                self.accepted(py, a);
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
                self.accepted(py, a);
                Ok(())
            }
            // drop_newest: refused without an error (counted in `rejected`).
            Err(PutError::Discarded(_)) => Ok(()),
            Err(PutError::Full(_) | PutError::WouldBlock(_)) => Err(full(py)),
            Err(PutError::Timeout(_)) => {
                Err(Exc::QueueFull.err(py, "queue is full (put timed out)"))
            }
            Err(PutError::Closed(_)) => Err(closed(py)),
            Err(PutError::Interrupted(_, e)) => Err(e),
        }
    }

    /// One attempt: an item or `QueueClosed`, or `None` if the queue is empty.
    fn take_now(&self, py: Python<'_>) -> Option<PyResult<Item>> {
        match self.q.try_get() {
            Ok((item, w)) => {
                wake_putter(py, &self.q, w);
                Some(Ok(item))
            }
            Err(GetError::Closed) => Some(Err(closed(py))),
            Err(_) => None,
        }
    }

    pub(crate) fn do_get(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Item> {
        // The common case first, without the blocking loop's machinery.
        if let Some(r) = self.take_now(py) {
            return r;
        }
        match self
            .q
            .get_until(timeout, check_signals, |w| run_wait(py, timeout, w))
        {
            Ok((item, w)) => {
                wake_putter(py, &self.q, w);
                Ok(item)
            }
            Err(GetError::Timeout | GetError::Empty) if timeout == Some(Duration::ZERO) => {
                Err(empty(py))
            }
            Err(GetError::Timeout | GetError::Empty) => {
                Err(Exc::QueueEmpty.err(py, "queue is empty (get timed out)"))
            }
            Err(GetError::Closed) => Err(closed(py)),
            Err(GetError::Interrupted(e)) => Err(e),
        }
    }

    fn take_many<'py>(
        &self,
        py: Python<'py>,
        r: (Vec<Item>, Vec<Waker>),
    ) -> PyResult<Bound<'py, PyList>> {
        let (items, wake) = r;
        for w in wake {
            wake_putter(py, &self.q, Some(w));
        }
        PyList::new(py, items)
    }
}

#[pymethods]
impl WorkQueue {
    #[new]
    #[pyo3(signature = (maxsize, *, overflow = None), text_signature = "(maxsize, *, overflow='block')")]
    fn new(maxsize: &Bound<'_, PyAny>, overflow: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let maxsize = size_arg(maxsize, "maxsize", 1)?;
        let overflow = match overflow {
            None => Overflow::Block,
            Some(o) => match o.cast::<PyString>() {
                Ok(s) => Overflow::parse(s.to_str()?)?,
                Err(_) => return Err(wrong_type("overflow", "a str", o)),
            },
        };
        Ok(Self {
            q: Core::new(maxsize, overflow)?,
        })
    }

    /// Puts `item`, waiting for room (block policy) up to `timeout` seconds.
    #[pyo3(signature = (item, timeout = None))]
    fn put(&self, py: Python<'_>, item: Item, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let timeout = args::opt_timeout(timeout, "timeout")?;
        self.do_put(py, item, timeout)
    }

    fn put_nowait(&self, py: Python<'_>, item: Item) -> PyResult<()> {
        match self.q.try_put(item) {
            Ok(a) => {
                self.accepted(py, a);
                Ok(())
            }
            Err(e) => not_entered(py, e),
        }
    }

    #[pyo3(signature = (timeout = None))]
    fn get(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Item> {
        let timeout = args::opt_timeout(timeout, "timeout")?;
        self.do_get(py, timeout)
    }

    fn get_nowait(&self, py: Python<'_>) -> PyResult<Item> {
        self.take_now(py).unwrap_or_else(|| Err(empty(py)))
    }

    /// Puts the items in order; returns how many entered the queue.
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
                    wake_getter(py, &self.q, Some(w));
                }
            },
        );
        drop(batch.evicted);
        drop(pending);
        match batch.stopped {
            Some(Stop::Interrupted(e)) => Err(e),
            Some(Stop::Closed) if batch.accepted == 0 => Err(closed(py)),
            _ => Ok(batch.accepted),
        }
    }

    /// Up to `max_items` items, waiting up to `timeout` for the first; `[]` on timeout.
    #[pyo3(signature = (max_items, timeout = None))]
    fn get_many<'py>(
        &self,
        py: Python<'py>,
        max_items: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let max = size_arg(max_items, "max_items", 1)?;
        let timeout = args::opt_timeout(timeout, "timeout")?;
        match self
            .q
            .get_many_until(max, timeout, check_signals, |w| run_wait(py, timeout, w))
        {
            Ok(r) => self.take_many(py, r),
            Err(GetError::Timeout | GetError::Empty) => Ok(PyList::empty(py)),
            Err(GetError::Closed) => Err(closed(py)),
            Err(GetError::Interrupted(e)) => Err(e),
        }
    }

    /// A coroutine: puts `item`, waiting without blocking the event loop.
    fn put_async<'py>(slf: &Bound<'py, Self>, item: Item) -> PyResult<Bound<'py, PyAny>> {
        lookup!(slf.py(), "ferrule._queue", "put_async")?.call1((slf, item))
    }

    /// A coroutine: the next item, waiting without blocking the event loop.
    fn get_async<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        lookup!(slf.py(), "ferrule._queue", "get_async")?.call1((slf,))
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
            Err(e) => not_entered(py, e).map(|()| true),
        }
    }

    /// asyncio glue: an item, or `pending` after registering `waker` (if not None).
    fn _get_or_wait(&self, py: Python<'_>, waker: Option<Waker>, pending: Item) -> PyResult<Item> {
        let waker = waker.filter(|w| !w.is_none(py));
        match self.q.get_or_wait(waker) {
            Ok((item, w)) => {
                wake_putter(py, &self.q, w);
                Ok(item)
            }
            Err(GetError::Closed) => Err(closed(py)),
            Err(_) => Ok(pending),
        }
    }

    /// asyncio glue: a getter's task gave up; an unused wake-up passes on.
    fn _forget_getter(&self, py: Python<'_>, waker: &Bound<'_, PyAny>) {
        let me = waker.as_ptr();
        let next = self.q.forget_getter(|w| w.as_ptr() == me);
        wake_getter(py, &self.q, next);
    }

    /// asyncio glue: a putter's task gave up; an unused wake-up passes on.
    fn _forget_putter(&self, py: Python<'_>, waker: &Bound<'_, PyAny>) {
        let me = waker.as_ptr();
        let next = self.q.forget_putter(|w| w.as_ptr() == me);
        wake_putter(py, &self.q, next);
    }

    /// Closes the queue and wakes every waiter.
    fn close(&self, py: Python<'_>) {
        for w in self.q.close() {
            // A waker whose loop is gone has no one left to tell.
            fire(py, &w);
        }
    }

    #[getter]
    fn closed(&self) -> bool {
        self.q.is_closed()
    }

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

    #[getter]
    fn overflow(&self) -> &'static str {
        self.q.overflow().name()
    }

    fn stats(&self) -> QueueStats {
        QueueStats::from(self.q.stats())
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Item> {
        match self.do_get(py, None) {
            Err(e) if e.is_instance(py, Exc::QueueClosed.type_object(py)?) => {
                Err(PyStopIteration::new_err(()))
            }
            r => r,
        }
    }

    /// Visits the queued items and the asyncio wakers (skipped, never waited for, if the
    /// lock is taken; see the module documentation).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.q
            .try_visit(|item| visit.call(item), |waker| visit.call(waker))
    }

    /// Takes the items (counted as dropped) and the wakers out; they are dropped with the
    /// lock released.
    fn __clear__(&self) {
        let (items, wakers) = self.q.clear();
        drop(items);
        drop(wakers);
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

/// Counters of a `WorkQueue`, read together: `put == got + dropped + size`.
#[pyclass(frozen, get_all, module = "ferrule", name = "QueueStats")]
pub struct QueueStats {
    put: u64,
    got: u64,
    rejected: u64,
    dropped: u64,
    high_water: usize,
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
