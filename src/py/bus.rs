//! `SignalBus`, `Subscription`, `SubscriptionStats`, `Signal` and the handler worker
//! loop (`_run_subscription`): the Python face of `core::bus` over Python items.
//!
//! Each subscription's mailbox is a mailbox of `crate::py::mailbox`, shared with
//! `WorkQueue`: a pull subscription's `get`, `get_nowait`, iteration, `get_async` and
//! `async for` (its asyncio waiters, woken and forgotten without losing a signal), the
//! wake-ups at cancellation and the collector's visit of the mailbox are the mailbox's,
//! with this file's words ("no signal queued", "subscription is cancelled"). This file
//! holds routing, publishing, cancellation, handlers and their workers.
//!
//! `publish` runs attached and never releases the GIL except to wait on a full `block`
//! mailbox: the route (a read-locked trie walk) and each push are short critical
//! sections. It builds one frozen `Signal` per publication, only when something matches,
//! and shares it between the matching mailboxes. `_publish_at` is `publish` with the
//! `Signal`'s timestamp given (`ferrule.redis.RedisBus` delivers a signal stamped with its
//! publisher's time, from whichever process); both are `publish_stamped`.
//!
//! Locks and Python: no Python code runs and no Python object is dropped under the
//! router's lock or a mailbox's lock. The core hands back what must be dropped or called
//! (evicted signals, items drained at cancellation, asyncio wakers), and this layer
//! drops or calls it after the lock is released. So a handler, a waker or a `__del__`
//! may publish, subscribe or cancel on the same bus.
//!
//! Handlers: a handler subscription's worker thread (started by `ferrule._bus`) runs
//! `_run_subscription`, which takes signals from the mailbox (waiting detached) and calls
//! the handler attached. A handler's exception is counted and reported through
//! `ferrule._bus._report` (the `logging` module); it never ends the loop. A publisher
//! running on a subscription's own worker never waits for room in that subscription's
//! `block` mailbox (it would wait for itself): the signal is rejected instead.
//!
//! # What keeps what alive (and what the garbage collector sees)
//! Each subscription has exactly one `Subscription` object. The router owns it while the
//! subscription is routed (the bus's `__traverse__` visits it), so a subscription lives
//! until cancelled whether or not the caller keeps the object; `subscriptions()` returns
//! these same objects. The `Subscription` owns its mailbox's signals and asyncio wakers
//! and, for a handler subscription, the handler (or the `weakref.WeakMethod` for a weak
//! one), and visits them all. The worker thread holds only a `_SubscriptionWorker`: Rust
//! references to the mailbox and to the handler's slot, no Python reference of its own,
//! except a temporary one during each handler call. So a cycle such as bus ->
//! subscription -> handler -> object -> bus is visible to the collector as a whole and
//! is collected once nothing else refers to it: the bus's `__clear__` (or its
//! deallocation) cancels every subscription it routes, each worker then finds its
//! mailbox closed and exits, releasing the handler. A worker also releases the handler
//! when it exits after a cancellation, and a `Subscription` releases it when it goes.
//! A `Subscription` does not refer to its bus (the core's router link is weak); a
//! `Signal` owns its data and visits it.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::core::bus::{thread_token, Router, Sub, SubStats};
use crate::core::counter::{self, Striped};
use crate::core::queue::{GetError, Overflow, PutError};
use crate::errors::wrong_type;
use crate::py::args;
use crate::py::lookup::lookup;
use crate::py::mailbox::{self, size_at_least, Item, Waker, Words};
use crate::py::wait::{self, check_signals};

const WORDS: Words = Words {
    empty: "no signal queued",
    timed_out: "no signal queued (get timed out)",
    closed: "subscription is cancelled",
};

/// What the router owns for each routed subscription: its one `Subscription` object.
type Handle = Py<Subscription>;
type CoreSub = Sub<Item, Waker, Handle>;

/// Finishes a cancellation with no lock held: wakes the mailbox's waiters, then drops
/// the drained items and the router's entry.
fn cancel_sub(py: Python<'_>, sub: &Arc<CoreSub>) -> bool {
    let Some(c) = sub.cancel() else {
        return false;
    };
    mailbox::wake_all(py, c.wake);
    drop(c.items);
    drop(c.removed);
    true
}

/// Offers `item` to one subscription's mailbox; true if it entered.
fn offer(py: Python<'_>, sub: &CoreSub, item: Item) -> PyResult<bool> {
    let mb = sub.mailbox();
    let accepted = match mb.put_or_wait(item, None) {
        Ok(a) => a,
        // `block` policy and no room.
        Err(PutError::WouldBlock(item)) => {
            let waited = if sub.is_worker(thread_token()) {
                // Waiting here would wait for this very thread: refuse (counted).
                mb.try_put(item).map_err(|_| None)
            } else {
                mb.put_until(item, None, check_signals, |w| wait::detach(py, w))
                    .map_err(|e| match e {
                        PutError::Interrupted(_, e) => Some(e),
                        _ => None,
                    })
            };
            match waited {
                Ok(a) => a,
                Err(Some(e)) => return Err(e),
                Err(None) => return Ok(false),
            }
        }
        // Refused (reject, drop_newest) or cancelled meanwhile.
        Err(_) => return Ok(false),
    };
    mailbox::accepted(py, mb, accepted);
    Ok(true)
}

fn wall_clock() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One published signal, shared (frozen) by every subscription it reached. It holds its
/// type, its data and when it was published.
#[pyclass(frozen, module = "ferrule", name = "Signal")]
pub struct Signal {
    /// An exact `str` (a subclass instance is copied), so it refers to nothing.
    kind: Py<PyString>,
    /// `None` only after the collector cleared it.
    data: Mutex<Option<Py<PyAny>>>,
    timestamp: f64,
}

#[pymethods]
impl Signal {
    /// The signal type it was published under (dot-separated segments), a plain `str`
    /// also when a `str` subclass was published. For example `"agent.42.error"`.
    #[getter(r#type)]
    fn signal_type(&self, py: Python<'_>) -> Py<PyString> {
        self.kind.clone_ref(py)
    }

    /// What was published with it (`None` by default).
    #[getter]
    fn data(&self, py: Python<'_>) -> Py<PyAny> {
        match &*self.data.lock() {
            Some(d) => d.clone_ref(py),
            None => py.None(),
        }
    }

    /// Wall-clock seconds (`time.time()`) at publication, for logs. Through a
    /// `ferrule.redis.RedisBus`, the publisher's clock, in whichever process it published.
    #[getter]
    fn timestamp(&self) -> f64 {
        self.timestamp
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.kind)?;
        match self.data.try_lock() {
            Some(d) => visit.call(d.as_ref()),
            None => Ok(()),
        }
    }

    fn __clear__(&self) {
        let data = self.data.lock().take();
        drop(data);
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Signal(type={}, data={}, timestamp={})",
            self.kind.bind(py).repr()?,
            self.data(py).bind(py).repr()?,
            self.timestamp
        ))
    }
}

/// Counters of one `Subscription`; once it is quiet,
/// `accepted == delivered + dropped + queued`.
#[pyclass(frozen, get_all, module = "ferrule", name = "SubscriptionStats")]
pub struct SubscriptionStats {
    accepted: u64,
    delivered: u64,
    dropped: u64,
    rejected: u64,
    errors: u64,
    /// Signals waiting in the mailbox when the snapshot was taken.
    queued: usize,
}

impl From<SubStats> for SubscriptionStats {
    fn from(s: SubStats) -> Self {
        Self {
            accepted: s.accepted,
            delivered: s.delivered,
            dropped: s.dropped,
            rejected: s.rejected,
            errors: s.errors,
            queued: s.queued,
        }
    }
}

#[pymethods]
impl SubscriptionStats {
    fn __repr__(&self) -> String {
        format!(
            "SubscriptionStats(accepted={}, delivered={}, dropped={}, rejected={}, errors={}, queued={})",
            self.accepted, self.delivered, self.dropped, self.rejected, self.errors, self.queued
        )
    }
}

/// A handler subscription's handler: owned by its `Subscription` (which visits it),
/// borrowed by its worker for each call.
#[derive(Default)]
struct HandlerSlot {
    /// The handler, or a `weakref.WeakMethod` to it (`weak`); `None` once released.
    target: Mutex<Option<Py<PyAny>>>,
    weak: AtomicBool,
}

impl HandlerSlot {
    /// A new reference to the handler (or its weak reference), if still held.
    fn get(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.target.lock().as_ref().map(|t| t.clone_ref(py))
    }

    /// Releases the handler; the caller drops it with the lock released.
    fn take(&self) -> Option<Py<PyAny>> {
        self.target.lock().take()
    }
}

/// A subscription of a `SignalBus`, made by `SignalBus.subscribe`.
#[pyclass(frozen, module = "ferrule", name = "Subscription")]
pub struct Subscription {
    sub: Arc<CoreSub>,
    handler: Option<Arc<HandlerSlot>>,
    /// What watches the `owner=` given to `subscribe` (a `weakref.ref` whose callback
    /// cancels), while the subscription is not cancelled through this object.
    owner: Mutex<Option<Py<PyAny>>>,
}

impl Subscription {
    fn pull_only(&self, what: &str) -> PyResult<()> {
        if self.sub.has_handler() {
            return Err(PyTypeError::new_err(format!(
                "{what} is for subscriptions without a handler"
            )));
        }
        Ok(())
    }
}

impl Drop for Subscription {
    /// The handler belongs to the subscription: release it with it (its worker, if
    /// still running, exits: the subscription was cancelled before it could go).
    fn drop(&mut self) {
        if let Some(h) = &self.handler {
            drop(h.take());
        }
    }
}

#[pymethods]
impl Subscription {
    /// The pattern it was subscribed with.
    #[getter]
    fn pattern(&self) -> &str {
        self.sub.pattern()
    }

    /// True until cancelled.
    #[getter]
    fn active(&self) -> bool {
        !self.sub.is_cancelled()
    }

    /// True once cancelled.
    #[getter]
    fn cancelled(&self) -> bool {
        self.sub.is_cancelled()
    }

    /// The mailbox's bound.
    #[getter]
    fn maxsize(&self) -> usize {
        self.sub.mailbox().maxsize()
    }

    /// The mailbox's overflow policy.
    #[getter]
    fn overflow(&self) -> &'static str {
        self.sub.mailbox().overflow().name()
    }

    /// Signals waiting in the mailbox now.
    fn qsize(&self) -> usize {
        self.sub.mailbox().len()
    }

    /// Counters; see `SubscriptionStats`.
    fn stats(&self) -> SubscriptionStats {
        SubscriptionStats::from(self.sub.stats())
    }

    /// Stop the subscription; True if this call did it, False if it was already
    /// cancelled.
    fn cancel(&self, py: Python<'_>) -> bool {
        let done = cancel_sub(py, &self.sub);
        drop(self.owner.lock().take());
        done
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.cancel(py);
        false
    }

    /// The oldest queued signal, waiting up to `timeout` seconds (`None`: no limit) with
    /// the GIL released: `QueueEmpty` on timeout, `QueueClosed` once cancelled and
    /// drained. For pull subscriptions (`TypeError` on a handler subscription).
    #[pyo3(signature = (timeout = None))]
    fn get(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Item> {
        self.pull_only("get()")?;
        let timeout = args::opt_timeout(timeout, "timeout")?;
        mailbox::get(py, self.sub.mailbox(), timeout, &WORDS)
    }

    /// The oldest queued signal without waiting; `QueueEmpty` if none, `QueueClosed`
    /// once cancelled and drained.
    fn get_nowait(&self, py: Python<'_>) -> PyResult<Item> {
        self.pull_only("get_nowait()")?;
        mailbox::get_nowait(py, self.sub.mailbox(), &WORDS)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyResult<PyRef<'_, Self>> {
        slf.pull_only("iteration")?;
        Ok(slf)
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Item> {
        self.pull_only("iteration")?;
        mailbox::next(py, self.sub.mailbox(), &WORDS)
    }

    /// Coroutine: `get` for asyncio, waiting on the running loop (no thread); a publish
    /// from any thread wakes it, and so does `cancel()` (it then gets what is still
    /// queued, or `QueueClosed`).
    fn get_async<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.get().pull_only("get_async()")?;
        mailbox::get_async(slf.as_any())
    }

    fn __aiter__(slf: PyRef<'_, Self>) -> PyResult<PyRef<'_, Self>> {
        slf.pull_only("async iteration")?;
        Ok(slf)
    }

    /// Coroutine: the next signal for `async for`, as `get_async`; the iteration ends
    /// once the subscription is cancelled and drained.
    fn __anext__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.get().pull_only("async iteration")?;
        mailbox::anext(slf.as_any())
    }

    /// asyncio glue (see `ferrule._queue`): a signal, or `pending` after registering
    /// `waker` (if not None).
    fn _get_or_wait(&self, py: Python<'_>, waker: Option<Waker>, pending: Item) -> PyResult<Item> {
        mailbox::get_or_wait(py, self.sub.mailbox(), waker, pending, &WORDS)
    }

    /// asyncio glue: a getter's task gave up; an unused wake-up passes on.
    fn _forget_getter(&self, py: Python<'_>, waker: &Bound<'_, PyAny>) {
        mailbox::forget_getter(py, self.sub.mailbox(), waker);
    }

    /// Internal: a number that identifies the subscription within the process.
    #[getter]
    fn _id(&self) -> u64 {
        self.sub.id()
    }

    /// Visits the handler and the mailbox's signals and asyncio wakers (each skipped,
    /// never waited for, if its lock is taken).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(h) = &self.handler {
            if let Some(t) = h.target.try_lock() {
                visit.call(t.as_ref())?;
            }
        }
        if let Some(o) = self.owner.try_lock() {
            visit.call(o.as_ref())?;
        }
        mailbox::traverse(self.sub.mailbox(), &visit)
    }

    /// Cancels (unreachable now, it can never be read or delivered to again), then
    /// releases the handler, the queued signals (counted as dropped) and the wakers.
    fn __clear__(&self, py: Python<'_>) {
        cancel_sub(py, &self.sub);
        let handler = self.handler.as_ref().and_then(|h| h.take());
        let owner = self.owner.lock().take();
        mailbox::clear(self.sub.mailbox());
        drop(handler);
        drop(owner);
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Subscription>()
            .is_ok_and(|o| Arc::ptr_eq(&o.get().sub, &self.sub))
    }

    fn __hash__(&self) -> u64 {
        self.sub.id()
    }

    fn __repr__(&self) -> String {
        format!(
            "Subscription(pattern={:?}, {}, maxsize={}, overflow='{}', {})",
            self.sub.pattern(),
            if self.sub.has_handler() {
                "handler"
            } else {
                "pull"
            },
            self.sub.mailbox().maxsize(),
            self.sub.mailbox().overflow().name(),
            if self.sub.is_cancelled() {
                "cancelled"
            } else {
                "active"
            },
        )
    }
}

/// Internal: what a handler subscription's worker thread (or asyncio task) holds, and
/// what an `owner=`'s watch holds to cancel its subscription. No Python reference:
/// the handler stays its `Subscription`'s (see the module documentation), so this
/// object takes no part in garbage collection on purpose.
#[pyclass(frozen, module = "ferrule._native", name = "_SubscriptionWorker")]
pub struct Worker {
    sub: Arc<CoreSub>,
    handler: Arc<HandlerSlot>,
}

#[pymethods]
impl Worker {
    #[getter]
    fn id(&self) -> u64 {
        self.sub.id()
    }

    #[getter]
    fn pattern(&self) -> &str {
        self.sub.pattern()
    }

    /// Sets what the worker calls: the handler, or (`weak`) a `weakref.WeakMethod`.
    fn _hold(&self, target: Py<PyAny>, weak: bool) {
        self.handler.weak.store(weak, Relaxed);
        let old = self.handler.target.lock().replace(target);
        drop(old);
    }

    /// Cancels the subscription (idempotent); True if this call did.
    fn cancel(&self, py: Python<'_>) -> bool {
        cancel_sub(py, &self.sub)
    }

    #[getter]
    fn cancelled(&self) -> bool {
        self.sub.is_cancelled()
    }

    /// asyncio delivery (see `ferrule._bus`): the next `(handler, signal)` to deliver,
    /// or `pending` after registering `waker` (if not None) in the critical section that
    /// found the mailbox empty; `QueueClosed` once cancelled and drained.
    fn _next(&self, py: Python<'_>, waker: Option<Waker>, pending: Item) -> PyResult<Py<PyAny>> {
        let mut waker = waker;
        loop {
            let item = mailbox::get_or_wait(
                py,
                self.sub.mailbox(),
                waker.take(),
                pending.clone_ref(py),
                &WORDS,
            )?;
            if item.is(&pending) {
                return Ok(item);
            }
            if let Some(target) = claim(py, self) {
                return Ok((target, item).into_pyobject(py)?.into_any().unbind());
            }
        }
    }

    /// asyncio delivery: the consuming task gave up; an unused wake-up passes on.
    fn _forget_getter(&self, py: Python<'_>, waker: &Bound<'_, PyAny>) {
        mailbox::forget_getter(py, self.sub.mailbox(), waker);
    }

    /// asyncio delivery: the handler raised `err` on `signal` (counted and reported).
    fn _failed(&self, py: Python<'_>, signal: Item, err: Py<PyAny>) {
        failed(py, &self.sub, &signal, err);
    }

    /// Marks the calling thread as this subscription's consumer: a publisher on it never
    /// waits for room in the subscription's full `block` mailbox (it would wait for
    /// itself); the signal is refused instead.
    fn _bind_thread(&self) {
        self.sub.set_worker(thread_token());
    }

    /// Lets go of the handler (the consumer has ended).
    fn _release(&self) {
        drop(self.handler.take());
    }
}

/// Publish/subscribe with AMQP-style pattern routing and a bounded mailbox per
/// subscription.
#[pyclass(frozen, module = "ferrule", name = "SignalBus")]
pub struct SignalBus {
    router: Arc<Router<Item, Waker, Handle>>,
    /// (published, unrouted) publishes, striped by the publishing thread.
    publishes: Striped,
    /// (delivered, dropped) offers to mailboxes.
    offers: Striped,
}

impl SignalBus {
    /// `publish` and `_publish_at`: routes, stamps (`timestamp`, or the wall clock now;
    /// read only when something matches), offers to each matching mailbox and counts.
    fn publish_stamped(
        &self,
        py: Python<'_>,
        signal_type: &Bound<'_, PyAny>,
        data: Option<Py<PyAny>>,
        timestamp: Option<f64>,
    ) -> PyResult<usize> {
        let Ok(ty) = signal_type.cast::<PyString>() else {
            return Err(wrong_type("signal_type", "a str", signal_type));
        };
        let mut subs: Vec<Arc<CoreSub>> = Vec::new();
        self.router.route(ty.to_str()?, &mut subs)?;
        let thread = counter::thread_hash();
        self.publishes.add(thread, true);
        if subs.is_empty() {
            self.publishes.add(thread, false);
            return Ok(0);
        }
        let kind = if signal_type.is_exact_instance_of::<PyString>() {
            ty.clone().unbind()
        } else {
            PyString::new(py, ty.to_str()?).unbind()
        };
        let signal = Py::new(
            py,
            Signal {
                kind,
                data: Mutex::new(Some(data.unwrap_or_else(|| py.None()))),
                timestamp: timestamp.unwrap_or_else(wall_clock),
            },
        )?
        .into_any();
        let mut accepted = 0;
        let mut refused = 0;
        let mut result = Ok(());
        for sub in &subs {
            match offer(py, sub, signal.clone_ref(py)) {
                Ok(true) => accepted += 1,
                Ok(false) => refused += 1,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.offers
            .add_counts(thread, accepted as u64, refused as u64);
        result.map(|()| accepted)
    }

    /// Empties the router and cancels what it routed, with no lock held.
    fn cancel_all(&self, py: Python<'_>) {
        for entry in self.router.take_all() {
            cancel_sub(py, &entry.sub);
            drop(entry);
        }
    }
}

#[pymethods]
impl SignalBus {
    #[new]
    fn new() -> Self {
        Self {
            router: Router::new(),
            publishes: Striped::default(),
            offers: Striped::default(),
        }
    }

    /// Subscribe to the signal types matching `pattern`.
    #[pyo3(signature = (pattern, handler = None, *, maxsize = 1024, overflow = "drop_oldest", weak = true, r#loop = None, owner = None))]
    #[allow(clippy::too_many_arguments)]
    fn subscribe<'py>(
        &self,
        py: Python<'py>,
        pattern: &Bound<'py, PyAny>,
        handler: Option<&Bound<'py, PyAny>>,
        #[pyo3(from_py_with = args::named::maxsize)] maxsize: i64,
        #[pyo3(from_py_with = args::named::overflow)] overflow: &str,
        #[pyo3(from_py_with = args::named::weak)] weak: bool,
        r#loop: Option<&Bound<'py, PyAny>>,
        owner: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Subscription>> {
        let Ok(pattern) = pattern.cast::<PyString>() else {
            return Err(wrong_type("pattern", "a str", pattern));
        };
        let handler = handler.filter(|h| !h.is_none());
        if let Some(h) = handler {
            if !h.is_callable() {
                return Err(wrong_type("handler", "callable or None", h));
            }
        }
        let r#loop = r#loop.filter(|l| !l.is_none());
        if let (None, Some(_)) = (handler, r#loop) {
            return Err(PyTypeError::new_err(
                "loop is for subscriptions with a handler (a pull subscription is read with \
                 get_async or async for on any loop)",
            ));
        }
        let maxsize = size_at_least(maxsize, "maxsize", 1)?;
        let overflow = Overflow::parse(overflow)?;
        let core =
            self.router
                .subscribe(pattern.to_str()?, maxsize, overflow, handler.is_some())?;
        let slot = handler.map(|_| Arc::new(HandlerSlot::default()));
        let sub = Bound::new(
            py,
            Subscription {
                sub: core.clone(),
                handler: slot.clone(),
                owner: Mutex::new(None),
            },
        )?;
        if let Some(o) = owner.filter(|o| !o.is_none()) {
            let watched = Bound::new(
                py,
                Worker {
                    sub: core.clone(),
                    handler: Arc::new(HandlerSlot::default()),
                },
            )
            .and_then(|canceller| {
                lookup!(py, "ferrule._bus", "_watch_owner")?.call1((canceller, o))
            });
            match watched {
                Ok(w) => *sub.get().owner.lock() = Some(w.unbind()),
                Err(e) => {
                    cancel_sub(py, &core);
                    return Err(e);
                }
            }
        }
        if let (Some(h), Some(slot)) = (handler, slot) {
            let started = Bound::new(
                py,
                Worker {
                    sub: core.clone(),
                    handler: slot.clone(),
                },
            )
            .and_then(|worker| {
                lookup!(py, "ferrule._bus", "_start")?.call1((worker, h, weak, r#loop))
            });
            if let Err(e) = started {
                cancel_sub(py, &core);
                drop(slot.take());
                return Err(e);
            }
        }
        // Not added if already cancelled (its weak handler's object died meanwhile).
        if let Err(handle) = self.router.attach(&core, sub.clone().unbind()) {
            drop(handle);
        }
        Ok(sub)
    }

    /// Publish a `Signal`; returns how many subscriptions' mailboxes took it (a full
    /// mailbox under `reject` or `drop_newest` does not, nor does a cancelled
    /// subscription). Nor does a full `block` mailbox when the publisher is that
    /// subscription's own worker thread, which would otherwise wait for itself.
    #[pyo3(signature = (signal_type, data = None))]
    fn publish(
        &self,
        py: Python<'_>,
        signal_type: &Bound<'_, PyAny>,
        data: Option<Py<PyAny>>,
    ) -> PyResult<usize> {
        self.publish_stamped(py, signal_type, data, None)
    }

    /// Internal (`ferrule.redis.RedisBus`): `publish`, with the `Signal` stamped
    /// `timestamp` (wall-clock seconds, as `time.time()`) instead of now.
    fn _publish_at(
        &self,
        py: Python<'_>,
        signal_type: &Bound<'_, PyAny>,
        data: Py<PyAny>,
        timestamp: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let timestamp = args::finite_seconds(timestamp, "timestamp")?;
        self.publish_stamped(py, signal_type, Some(data), Some(timestamp))
    }

    /// Counters since the bus was made and the live subscriptions; see `BusStats`.
    fn stats(&self) -> BusStats {
        let (published, unrouted) = self.publishes.totals();
        let (delivered, dropped) = self.offers.totals();
        BusStats {
            published,
            unrouted,
            delivered,
            dropped,
            subscriptions: self.router.len(),
        }
    }

    /// A snapshot of the live subscriptions (the same objects `subscribe` returned), for
    /// inspection.
    fn subscriptions(&self, py: Python<'_>) -> Vec<Handle> {
        let mut out = Vec::new();
        self.router.for_each(|e| out.push(e.handle.clone_ref(py)));
        out
    }

    /// Visits the `Subscription` of every routed subscription.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.router.try_visit(|e| visit.call(&e.handle))
    }

    /// Cancels every routed subscription and lets go of them.
    fn __clear__(&self, py: Python<'_>) {
        self.cancel_all(py);
    }

    fn __repr__(&self) -> String {
        format!("SignalBus(subscriptions={})", self.router.len())
    }
}

/// What a `SignalBus` has carried, from `SignalBus.stats`. Immutable; the counters only
/// ever grow. `published` counts `publish` calls (with a valid type), `unrouted` those no
/// subscription matched; `delivered` counts signals a subscription's mailbox took (one
/// signal taken by three subscriptions counts three: the sum of `publish`'s results), and
/// `dropped` those a matching subscription did not take (a full `reject` or `drop_newest`
/// mailbox, or one cancelled meanwhile). Items a `drop_oldest` mailbox pushes out later are
/// in that subscription's own `stats().dropped`. `subscriptions` is how many are live now.
#[pyclass(frozen, get_all, module = "ferrule", name = "BusStats")]
pub struct BusStats {
    /// `publish` calls with a valid signal type.
    published: u64,
    /// Publishes that no subscription matched.
    unrouted: u64,
    /// Signals taken into a subscription's mailbox (one per subscription).
    delivered: u64,
    /// Signals a matching subscription's mailbox did not take.
    dropped: u64,
    /// Live subscriptions now.
    subscriptions: usize,
}

#[pymethods]
impl BusStats {
    fn __repr__(&self) -> String {
        format!(
            "BusStats(published={}, unrouted={}, delivered={}, dropped={}, subscriptions={})",
            self.published, self.unrouted, self.delivered, self.dropped, self.subscriptions
        )
    }
}

impl Drop for SignalBus {
    /// A bus that goes away cancels what it still routes to, so that no worker thread
    /// waits forever on a mailbox nobody can reach.
    fn drop(&mut self) {
        if self.router.is_empty() {
            return;
        }
        // Deallocation runs attached: this only borrows the attached thread.
        #[allow(clippy::disallowed_methods)]
        Python::attach(|py| self.cancel_all(py));
    }
}

/// The handler to call for the next signal, if the subscription still has one. A weak
/// handler is a `weakref.WeakMethod`: the bound method, or `None` once its object is
/// gone; `None` also once the handler was released (its `Subscription` was collected).
fn target(py: Python<'_>, slot: &HandlerSlot) -> Option<Py<PyAny>> {
    match slot.get(py) {
        Some(t) if slot.weak.load(Relaxed) => wait::call0(t.bind(py))
            .ok()
            .filter(|m| !m.is_none())
            .map(Bound::unbind),
        other => other,
    }
}

/// What a worker does with a signal it took: the handler to call it with, or `None`
/// (the signal is discarded: the subscription was cancelled meanwhile, or its handler
/// is gone, which cancels it).
fn claim(py: Python<'_>, w: &Worker) -> Option<Py<PyAny>> {
    let sub = &w.sub;
    if sub.is_cancelled() {
        sub.discard(1);
        return None;
    }
    let t = target(py, &w.handler);
    if t.is_none() {
        sub.discard(1);
        cancel_sub(py, sub);
    }
    t
}

/// Counts a handler's error and reports it through `ferrule._bus._report`; reporting
/// must not end the worker either.
fn failed(py: Python<'_>, sub: &CoreSub, item: &Item, err: Py<PyAny>) {
    sub.count_error();
    let _ = lookup!(py, "ferrule._bus", "_report")
        .and_then(|f| wait::call1(f, (sub.pattern(), item, err)));
}

/// A thread handler returned an awaitable: nothing will ever run it. It is closed (no
/// "never awaited" warning) and the call counts as an error that says what to do.
fn awaitable_returned(py: Python<'_>, result: &Bound<'_, PyAny>) -> Option<PyErr> {
    if result.is_none() || !result.hasattr(intern!(py, "__await__")).unwrap_or(false) {
        return None;
    }
    if let Ok(close) = result.getattr(intern!(py, "close")) {
        let _ = wait::call0(&close);
    }
    Some(PyTypeError::new_err(
        "the handler returned an awaitable on a worker thread; subscribe an async \
         handler from a running event loop or pass loop=",
    ))
}

/// Internal: a handler subscription's worker loop (run on its own thread by
/// `ferrule._bus`). Returns once the subscription is cancelled, releasing the handler.
/// A weak handler is a `weakref.WeakMethod`: a dead one cancels the subscription, and so
/// does a handler released by the collector (its `Subscription` was collected).
#[pyfunction]
pub fn _run_subscription(py: Python<'_>, worker: &Bound<'_, Worker>) -> PyResult<()> {
    let w = worker.get();
    let sub = &w.sub;
    let mb = sub.mailbox();
    sub.set_worker(thread_token());
    let done = loop {
        let item = match mailbox::take(py, mb, None) {
            Ok(item) => item,
            Err(GetError::Closed) => break Ok(()),
            Err(GetError::Interrupted(e)) => break Err(e),
            Err(GetError::Timeout | GetError::Empty) => continue,
        };
        let Some(target) = claim(py, w) else {
            continue;
        };
        let err = match wait::call1(target.bind(py), (&item,)) {
            Ok(result) => awaitable_returned(py, &result),
            Err(err) => Some(err),
        };
        if let Some(err) = err {
            failed(py, sub, &item, err.into_value(py).into_any());
        }
        drop(target);
    };
    drop(w.handler.take());
    done
}
