//! `Cache.get_or_set_async`: the cache's single-flight for asyncio tasks, on the same
//! flight table as the blocking `get_or_set` (`core::flight`), so tasks on any loop and
//! threads in `get_or_set` share one factory call per key.
//!
//! # Structure
//! `Cache.get_or_set_async` checks its arguments and hashes the key at the call, then
//! returns the coroutine `ferrule._cache_async.get_or_set_async(call, factory)`, where
//! `call` is a [`CacheCall`] (`_CacheCall`, private): the key, its hash, the ttl and the
//! cache, plus the caller's *role* in the key's flight. The coroutine drives it:
//! - `_join` looks the key up (counting a hit or a miss the first time only, so one call
//!   is one hit or one miss in `stats()`), and on a miss joins the flight through
//!   `SingleFlight::join_shared`: the caller leads (the leader is kept here, across
//!   awaits; it holds the flight table by `Arc`) or follows.
//! - A leader's factory runs in a task of its own, which ends the flight with `_finish`
//!   (store unless a `clear()` began since the flight did, then share the value),
//!   `_fail` (share the Exception; nothing is cached) or `_abandon` (any other
//!   BaseException: followers look again and one leads). Ending goes through
//!   `cache::end_flight`, as the blocking leader's does.
//! - A follower reads the flight with `_poll`, which registers a [`std::task::Waker`]
//!   while the flight runs, and takes it back with `_forget` when it stops waiting
//!   (cancelled), so a long flight keeps wakers for live waiters only.
//!
//! # Wakers
//! A waker wraps `functools.partial(loop.call_soon_threadsafe, wake, future)` from the
//! glue. The thread that ends the flight wakes it once, with no lock held
//! (`core::flight`); `wake` attaches through `wait::attach` (a thread that is already
//! attached runs at once, any other goes through the exit gate) and calls the partial
//! through `wait::call0`, so a wake-up during interpreter exit parks instead of
//! unwinding through Rust. A closed loop's RuntimeError is dropped (nobody waits there
//! any more); any other error is reported (`wait::report`).
//!
//! # Deadlock guards
//! A follower whose flight is led by a *blocking* `get_or_set` on its own thread (a sync
//! factory that runs an event loop and awaits its own key) would wait forever: `_join`
//! raises RuntimeError. The converse (a blocking `get_or_set` on the thread of the event
//! loop whose task leads) is refused in `cache.rs`. An async factory awaiting its own key
//! is not detected (asyncio does not detect a task awaiting itself through a future).
//!
//! # Locks and ownership
//! The role sits under one mutex, held only to move a leader, flight or waker in or out;
//! Python code (a factory, a key's `__eq__` during the store, wakers woken by ending a
//! flight, a key's or value's drop) runs after it is released. A `CacheCall` dropped (or
//! cleared by the collector) while it leads abandons the flight, so followers never wait
//! for a coroutine that will not run again.
//!
//! Garbage collection: a call visits the cache and the key it owns. The flight, its
//! outcome and its wakers are shared with the cache's flight table and are not its to
//! visit; they are let go of when the flight ends (the wakers) or when the follower has
//! read the outcome (its `Arc` of the flight).

use std::sync::Arc;
use std::task::{Wake, Waker};

use parking_lot::Mutex;
use pyo3::exceptions::{PyException, PyMemoryError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::core::flight::{Flight, Join, Leader, Outcome};
use crate::errors::wrong_type;
use crate::py::cache::{end_flight, Cache, PyKey, Query, Shared};
use crate::py::lookup::lookup;
use crate::py::{args, wait};

/// `Cache.get_or_set_async(key, factory, *, ttl=None)`: checks the arguments as
/// `get_or_set` does, hashes the key once, and returns the glue's coroutine.
pub fn start<'py>(
    cache: &Bound<'py, Cache>,
    key: &Bound<'py, PyAny>,
    factory: &Bound<'py, PyAny>,
    ttl: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = cache.py();
    let ttl = args::opt_positive_nanos(ttl, "ttl")?;
    if !factory.is_callable() {
        return Err(wrong_type("factory", "callable", factory));
    }
    let q = Query::new(key)?;
    let call = CacheCall {
        call: Mutex::new(Some(Call {
            cache: cache.clone().unbind(),
            key: q.stored(),
            hash: q.hash(),
            ttl,
            counted: false,
            role: Role::Idle,
        })),
    };
    lookup!(py, "ferrule._cache_async", "get_or_set_async")?.call1((call, factory))
}

/// Where a call stands in its key's flight.
enum Role {
    /// Not in a flight: `_join` may look the key up and join.
    Idle,
    /// Between `_join`'s look-up and its joining (another `_join` now is refused).
    Joining,
    /// Leads the flight; ends it with `_finish`, `_fail` or `_abandon`.
    Lead(Leader<'static, PyKey, Shared>),
    /// Follows the flight, with the waker registered by the last `_poll`, if any.
    Follow(Arc<Flight<Shared>>, Option<Waker>),
}

struct Call {
    cache: Py<Cache>,
    key: PyKey,
    hash: u64,
    ttl: Option<i64>,
    /// The first look-up counted a hit or a miss; later ones count nothing.
    counted: bool,
    role: Role,
}

/// One `get_or_set_async` call (private; driven by `ferrule._cache_async`).
#[pyclass(frozen, module = "ferrule._native", name = "_CacheCall")]
pub struct CacheCall {
    /// `None` once cleared by the garbage collector.
    call: Mutex<Option<Call>>,
}

/// A waker that calls `loop.call_soon_threadsafe(wake, future)` (a partial from the glue).
struct PyWake(Py<PyAny>);

impl Wake for PyWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        wait::attach(|py| {
            let f = self.0.bind(py);
            if let Err(e) = wait::call0(f) {
                // A closed loop: its task is gone, nobody is left to tell.
                if !e.is_instance_of::<PyRuntimeError>(py) {
                    wait::report(py, e, Some(f));
                }
            }
        });
    }
}

/// A leader taken out of its call, with what storing its result needs.
struct Ending {
    leader: Leader<'static, PyKey, Shared>,
    cache: Py<Cache>,
    key: PyKey,
    hash: u64,
    ttl: Option<i64>,
}

fn cleared() -> PyErr {
    PyRuntimeError::new_err("this get_or_set_async call was cleared")
}

fn wrong_role(what: &str) -> PyErr {
    PyRuntimeError::new_err(format!("this get_or_set_async call {what}"))
}

impl CacheCall {
    /// Takes the leader out (the role becomes `Idle`), with what ending needs.
    fn take_leader(&self, py: Python<'_>) -> PyResult<Ending> {
        let mut g = self.call.lock();
        let c = g.as_mut().ok_or_else(cleared)?;
        match std::mem::replace(&mut c.role, Role::Idle) {
            Role::Lead(leader) => Ok(Ending {
                leader,
                cache: c.cache.clone_ref(py),
                key: c.key.clone_ref(py),
                hash: c.hash,
                ttl: c.ttl,
            }),
            other => {
                c.role = other;
                Err(wrong_role("leads no flight"))
            }
        }
    }

    /// Sets the role a `_join` found; a call cleared meanwhile gives what it found back
    /// (a leader dropped after the lock abandons its flight).
    fn settle(&self, role: Role) -> PyResult<()> {
        let mut g = self.call.lock();
        match g.as_mut() {
            Some(c) => {
                c.role = role;
                Ok(())
            }
            None => {
                drop(g);
                drop(role);
                Err(cleared())
            }
        }
    }
}

#[pymethods]
impl CacheCall {
    /// The live value, else `lead` (this call now leads the key's flight and must end it)
    /// or `follow` (it follows the flight: `_poll` it).
    fn _join(&self, py: Python<'_>, lead: Py<PyAny>, follow: Py<PyAny>) -> PyResult<Py<PyAny>> {
        let (cache, key, hash, count) = {
            let mut g = self.call.lock();
            let c = g.as_mut().ok_or_else(cleared)?;
            if !matches!(c.role, Role::Idle) {
                return Err(wrong_role("is already in a flight"));
            }
            c.role = Role::Joining;
            let count = !std::mem::replace(&mut c.counted, true);
            (c.cache.clone_ref(py), c.key.clone_ref(py), c.hash, count)
        };
        let cache = cache.get();
        let q = key.query(py, hash);
        let role = match cache.lookup(&q, count) {
            Ok(Some(v)) => {
                self.settle(Role::Idle)?;
                return Ok(v);
            }
            Ok(None) => cache.flights.join_shared(hash, &q, || q.stored()),
            Err(e) => Err(e),
        };
        let role = match role {
            Ok(Join::Lead(leader)) => {
                // Another flight may have stored the value since our miss (uncounted: the
                // same call).
                match cache.lookup(&q, false) {
                    Ok(None) => Role::Lead(leader),
                    Ok(Some(v)) => {
                        end_flight(py, leader, Ok(&v));
                        self.settle(Role::Idle)?;
                        return Ok(v);
                    }
                    Err(e) => {
                        end_flight(py, leader, Err(&e));
                        self.settle(Role::Idle)?;
                        return Err(e);
                    }
                }
            }
            Ok(Join::Follow(flight)) => {
                if flight.led_by_current_thread() && !flight.led_asynchronously() {
                    self.settle(Role::Idle)?;
                    return Err(PyRuntimeError::new_err(
                        "get_or_set_async would wait for get_or_set computing the same key \
                         on this thread (its own factory): it would never return",
                    ));
                }
                Role::Follow(flight, None)
            }
            Err(e) => {
                self.settle(Role::Idle)?;
                return Err(e);
            }
        };
        let answer = if matches!(role, Role::Lead(_)) {
            lead
        } else {
            follow
        };
        self.settle(role)?;
        Ok(answer)
    }

    /// Ends the led flight with `value`: stores it (unless a `clear()` began since the
    /// flight did) and shares it. Returns `value`; if the store raises, that is what the
    /// flight ends with, and what this raises.
    fn _finish(&self, py: Python<'_>, value: Py<PyAny>) -> PyResult<Py<PyAny>> {
        let e = self.take_leader(py)?;
        let q = e.key.query(py, e.hash);
        let r = e
            .cache
            .get()
            .store_if(&q, value.clone_ref(py), e.ttl, || e.leader.is_current())
            .map(|()| value);
        end_flight(py, e.leader, r.as_ref());
        r
    }

    /// Ends the led flight with the Exception `exc`, which every follower raises; nothing
    /// is cached.
    fn _fail(&self, py: Python<'_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        if !exc.is_instance_of::<PyException>() {
            return Err(wrong_type("exc", "an Exception instance", exc));
        }
        let e = self.take_leader(py)?;
        end_flight(py, e.leader, Err(&PyErr::from_value(exc.clone())));
        Ok(())
    }

    /// Abandons the led flight: its followers look again and one of them leads.
    fn _abandon(&self, py: Python<'_>) -> PyResult<()> {
        drop(self.take_leader(py)?);
        Ok(())
    }

    /// The followed flight's outcome: its value (returned), its exception (raised), or
    /// `abandoned`; while it runs, registers `waker` (called once, from any thread, when
    /// the flight ends) in place of the previous one and returns `pending`.
    fn _poll(
        &self,
        py: Python<'_>,
        waker: &Bound<'_, PyAny>,
        pending: Py<PyAny>,
        abandoned: Py<PyAny>,
    ) -> PyResult<Py<PyAny>> {
        if !waker.is_callable() {
            return Err(wrong_type("waker", "callable", waker));
        }
        let flight = {
            let g = self.call.lock();
            match &g.as_ref().ok_or_else(cleared)?.role {
                Role::Follow(f, _) => Arc::clone(f),
                _ => return Err(wrong_role("follows no flight")),
            }
        };
        let w = Waker::from(Arc::new(PyWake(waker.clone().unbind())));
        loop {
            // Only new references are taken under the flight's lock.
            let shared = flight.read(|o| match o {
                Outcome::Finished(Ok(v)) => Some(Ok(v.clone_ref(py))),
                Outcome::Finished(Err(e)) => Some(Err(e.clone_ref(py))),
                Outcome::Abandoned => None,
            });
            if let Some(shared) = shared {
                // Done with the flight: let go of it (and of the last waker) after the lock.
                let old = self
                    .call
                    .lock()
                    .as_mut()
                    .map(|c| std::mem::replace(&mut c.role, Role::Idle));
                drop(old);
                return match shared {
                    Some(Ok(v)) => Ok(v),
                    Some(Err(e)) => Err(PyErr::from_value(e.into_bound(py))),
                    None => Ok(abandoned),
                };
            }
            match flight.register(&w) {
                Ok(true) => break,
                Ok(false) => {} // ended meanwhile: read it
                Err(_) => return Err(PyMemoryError::new_err("no memory to wait")),
            }
        }
        let old = {
            let mut g = self.call.lock();
            match g.as_mut().map(|c| &mut c.role) {
                Some(Role::Follow(f, slot)) if Arc::ptr_eq(f, &flight) => slot.replace(w),
                _ => Some(w), // cleared or forgotten meanwhile: take this one back
            }
        };
        if let Some(old) = old {
            flight.unregister(&old);
        }
        Ok(pending)
    }

    /// Stops following: takes back the registered waker (a cancelled waiter).
    fn _forget(&self) {
        let old = self
            .call
            .lock()
            .as_mut()
            .map(|c| std::mem::replace(&mut c.role, Role::Idle));
        if let Some(Role::Follow(flight, Some(w))) = &old {
            flight.unregister(w);
        }
        drop(old);
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never blocks: the lock is only held for moves, so a held lock is rare, and
        // skipping only makes the collector keep more.
        if let Some(g) = self.call.try_lock() {
            if let Some(c) = g.as_ref() {
                visit.call(&c.cache)?;
                visit.call(&c.key.obj)?;
            }
        }
        Ok(())
    }

    /// Lets go of everything; a flight this call leads is abandoned (after the lock).
    fn __clear__(&self) {
        let taken = self.call.lock().take();
        drop(taken);
    }
}
