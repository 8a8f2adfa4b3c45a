//! The binding of a *mailbox*, a bounded queue of Python objects with asyncio waiters
//! (`core::queue::WorkQueue<Py<PyAny>, Py<PyAny>>`), shared by `WorkQueue` and by a pull
//! `Subscription`. Each class keeps its own methods and its own [`Words`] (what its
//! errors say); how a get takes an item, how a waiter is woken or forgotten, what a
//! close fires and what the garbage collector sees is written here once.
//!
//! Waits: every attempt runs attached (one short critical section); only a wait
//! detaches ([`run_wait`], through `crate::py::wait`), and it re-attaches at least every
//! `SLICE` to run `check_signals`, so Ctrl-C interrupts a blocked get or put promptly.
//! Items and waiters move in and out only in the attempts, that is only while attached:
//! what the collector visits ([`traverse`]) holds still while it runs, and the lock is
//! never held by a thread the collector waits for. The core hands back what must not be
//! dropped or called under its lock (evicted and refused items, the wakers to fire); the
//! functions here drop or call it attached, lock released.
//!
//! Asyncio: `ferrule._queue.get_async` (and, for a `WorkQueue`, `put_async`) registers a
//! waker, `functools.partial(loop.call_soon_threadsafe, wake, future)`, in the same
//! critical section that found the mailbox empty (full), so no wake-up is lost; `async
//! for` ([`anext`]) is `get_async` ending at the close. A waker
//! only tells its task to retry; items are never handed to a task, so a task cancelled
//! after its wake-up loses nothing: it calls [`forget_getter`] ([`forget_putter`]),
//! which passes the unused wake-up on while there is still something to take (room to
//! fill). A waker that fails (its loop is closed) passes its wake-up on the same way.
//! Wakers run through `wait::call`, so one that runs while the interpreter exits parks
//! its thread rather than unwinding through Rust.
//!
//! Garbage collection: a class holding a mailbox visits its items and wakers with
//! [`traverse`] and lets go of them with [`clear`] (items counted as dropped).

use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::core::queue::{Accepted, GetError, Wait, WaitResult, WorkQueue};
use crate::errors::Exc;
use crate::py::args;
use crate::py::lookup::lookup;
use crate::py::wait::{self, check_signals};

pub type Item = Py<PyAny>;
/// An asyncio waiter's wake-up: a callable with no arguments.
pub type Waker = Py<PyAny>;
pub type Mailbox = WorkQueue<Item, Waker>;

/// What a mailbox's get errors say; the exceptions are `QueueEmpty` and `QueueClosed`.
pub struct Words {
    /// Nothing to take without waiting (`get_nowait`, `get(timeout=0)`).
    pub empty: &'static str,
    /// A get's timeout passed.
    pub timed_out: &'static str,
    /// Closed (cancelled) and drained.
    pub closed: &'static str,
}

impl Words {
    pub fn closed(&self, py: Python<'_>) -> PyErr {
        Exc::QueueClosed.err(py, self.closed)
    }

    fn get_error(&self, py: Python<'_>, e: GetError<PyErr>, timeout: Option<Duration>) -> PyErr {
        match e {
            GetError::Timeout | GetError::Empty if timeout == Some(Duration::ZERO) => {
                Exc::QueueEmpty.err(py, self.empty)
            }
            GetError::Timeout | GetError::Empty => Exc::QueueEmpty.err(py, self.timed_out),
            GetError::Closed => self.closed(py),
            GetError::Interrupted(e) => e,
        }
    }
}

// ---- constructor arguments --------------------------------------------------------------

/// A size or count argument (an int >= `min`); one beyond `usize` means "no limit".
pub fn size_at_least(v: i64, arg: &str, min: i64) -> PyResult<usize> {
    let v = args::at_least(v, arg, min)?;
    Ok(usize::try_from(v).unwrap_or(usize::MAX))
}

// ---- waits and wake-ups -----------------------------------------------------------------

/// Runs one wait of a blocking call (the core's `outside`): detached from the
/// interpreter, except with a zero timeout, where the one wait only finds its deadline
/// passed and releasing the GIL would cost more than it.
pub fn run_wait<E: Send>(
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

/// Calls a waker; false if it failed. A waker whose loop is closed raises RuntimeError
/// (nobody is left to tell: not reported); anything else is reported.
fn fire(py: Python<'_>, waker: &Waker) -> bool {
    match wait::call0(waker.bind(py)) {
        Ok(_) => true,
        Err(e) => {
            if !e.is_instance_of::<PyRuntimeError>(py) {
                wait::report(py, e, Some(waker.bind(py)));
            }
            false
        }
    }
}

/// Fires `w`; while a waker fails, `next` gives the one its wake-up passes on to.
fn pass_on(py: Python<'_>, mut w: Option<Waker>, next: impl Fn() -> Option<Waker>) {
    while let Some(f) = w.take() {
        if !fire(py, &f) {
            w = next();
        }
    }
}

/// Wakes an asyncio getter of `q` (handed back by a put or a forgotten getter).
pub fn wake_getter(py: Python<'_>, q: &Mailbox, w: Option<Waker>) {
    pass_on(py, w, || q.forget_getter(|_| false));
}

/// Wakes an asyncio putter of `q` (handed back by a get or a forgotten putter).
pub fn wake_putter(py: Python<'_>, q: &Mailbox, w: Option<Waker>) {
    pass_on(py, w, || q.forget_putter(|_| false));
}

/// Fires every waker a close handed back; one whose loop is gone has no one left to tell.
pub fn wake_all(py: Python<'_>, wakers: Vec<Waker>) {
    for w in wakers {
        fire(py, &w);
    }
}

/// Finishes a put that entered: drops what it evicted and wakes a getter, lock released.
pub fn accepted(py: Python<'_>, q: &Mailbox, a: Accepted<Item, Waker>) {
    drop(a.evicted);
    wake_getter(py, q, a.wake);
}

/// Closes `q` and wakes every waiter.
pub fn close(py: Python<'_>, q: &Mailbox) {
    wake_all(py, q.close());
}

// ---- gets -------------------------------------------------------------------------------

/// A blocking get: the next item, waiting up to `timeout` (None: forever); wakes a putter
/// for the room it made.
pub fn take(
    py: Python<'_>,
    q: &Mailbox,
    timeout: Option<Duration>,
) -> Result<Item, GetError<PyErr>> {
    // The common case first, without the blocking loop's machinery.
    let got = match q.try_get() {
        Ok(r) => Ok(r),
        Err(GetError::Closed) => Err(GetError::Closed),
        Err(_) => q.get_until(timeout, check_signals, |w| run_wait(py, timeout, w)),
    };
    got.map(|(item, w)| {
        wake_putter(py, q, w);
        item
    })
}

/// `get(timeout)`.
pub fn get(
    py: Python<'_>,
    q: &Mailbox,
    timeout: Option<Duration>,
    words: &Words,
) -> PyResult<Item> {
    take(py, q, timeout).map_err(|e| words.get_error(py, e, timeout))
}

/// `get_nowait()`.
pub fn get_nowait(py: Python<'_>, q: &Mailbox, words: &Words) -> PyResult<Item> {
    match q.try_get() {
        Ok((item, w)) => {
            wake_putter(py, q, w);
            Ok(item)
        }
        Err(GetError::Closed) => Err(words.closed(py)),
        Err(_) => Err(Exc::QueueEmpty.err(py, words.empty)),
    }
}

/// `__next__`: a blocking get that ends the iteration once closed and drained.
pub fn next(py: Python<'_>, q: &Mailbox, words: &Words) -> PyResult<Item> {
    match take(py, q, None) {
        Ok(item) => Ok(item),
        Err(GetError::Closed) => Err(PyStopIteration::new_err(())),
        Err(e) => Err(words.get_error(py, e, None)),
    }
}

// ---- asyncio glue (see `ferrule._queue`) ------------------------------------------------

/// `get_async()`: the coroutine `ferrule._queue.get_async(owner)`, where `owner` has the
/// `_get_or_wait`/`_forget_getter` methods, which call [`get_or_wait`] and
/// [`forget_getter`].
pub fn get_async<'py>(owner: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    lookup!(owner.py(), "ferrule._queue", "get_async")?.call1((owner,))
}

/// `__anext__()`: the coroutine `ferrule._queue.next_async(owner)`, [`get_async`] whose
/// closed-and-drained end is `StopAsyncIteration`, so `async for` ends there. Cancelling
/// it loses no item, as for `get_async`.
pub fn anext<'py>(owner: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    lookup!(owner.py(), "ferrule._queue", "next_async")?.call1((owner,))
}

/// One attempt of an asyncio getter: an item, or `pending` after registering `waker` (if
/// not None) in the same critical section that found `q` empty.
pub fn get_or_wait(
    py: Python<'_>,
    q: &Mailbox,
    waker: Option<Waker>,
    pending: Item,
    words: &Words,
) -> PyResult<Item> {
    let waker = waker.filter(|w| !w.is_none(py));
    match q.get_or_wait(waker) {
        Ok((item, w)) => {
            wake_putter(py, q, w);
            Ok(item)
        }
        Err(GetError::Closed) => Err(words.closed(py)),
        Err(_) => Ok(pending),
    }
}

/// An asyncio getter's task gave up: its waker leaves `q`, or, if it was already woken,
/// the unused wake-up passes on to the next getter.
pub fn forget_getter(py: Python<'_>, q: &Mailbox, waker: &Bound<'_, PyAny>) {
    let me = waker.as_ptr();
    let next = q.forget_getter(|w| w.as_ptr() == me);
    wake_getter(py, q, next);
}

/// [`forget_getter`] for an asyncio putter.
pub fn forget_putter(py: Python<'_>, q: &Mailbox, waker: &Bound<'_, PyAny>) {
    let me = waker.as_ptr();
    let next = q.forget_putter(|w| w.as_ptr() == me);
    wake_putter(py, q, next);
}

// ---- garbage collection -----------------------------------------------------------------

/// Visits the queued items and the asyncio wakers (skipped, never waited for, if the lock
/// is taken; see the module documentation).
pub fn traverse(q: &Mailbox, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
    q.try_visit(|item| visit.call(item), |waker| visit.call(waker))
}

/// Takes the items (counted as dropped) and the wakers out and drops them, lock released.
pub fn clear(q: &Mailbox) {
    let (items, wakers) = q.clear();
    drop(items);
    drop(wakers);
}
