//! Owners of registrations: what an `owner=` argument becomes, and how its death or end
//! removes the registration.
//!
//! A weak-referenceable owner gets a `weakref.ref` whose callback is an [`OwnerWatch`];
//! a `Future`/`Task` gets the watch as a done-callback, attached only after the entry is
//! published (so a failed registration leaves no watch), and detached again when the
//! registration goes away by other means ([`unwatch`]: asyncio futures; a
//! `concurrent.futures.Future` cannot drop a callback, so it keeps a watch that no longer
//! matches any registration and does nothing). A watch removes the entry only if it
//! still belongs to the watch's registration token, so the death of a losing or earlier
//! owner never removes a later registration of the same id.
//!
//! A `Thread` owner is checked with `is_alive()` on every read that would return it
//! ([`drop_if_dead`]), and the core queues thread-owned registrations for a sweep a few
//! per write (and a full one by `expire()` and `len()`). A check that raises counts as
//! "still running" and is reported through `sys.unraisablehook`: one broken owner never
//! fails another caller's read or stops a sweep.

use std::sync::{Arc, Weak};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::py::lookup::lookup;
use crate::py::registry::{Core, E};
use crate::py::registry_args::tname;
use crate::py::wait;

/// What a registration holds for its owner.
pub enum Owner {
    None,
    /// The `weakref.ref` whose callback removes the entry.
    Weak(Py<PyAny>),
    Thread(Py<PyAny>),
    Future {
        fut: Py<PyAny>,
        watch: Py<PyAny>,
    },
}

impl Owner {
    /// The owner's object the garbage collector must see (a watch holds no Python
    /// object and is not tracked by the collector).
    pub fn object(&self) -> Option<&Py<PyAny>> {
        match self {
            Self::None => None,
            Self::Weak(o) | Self::Thread(o) | Self::Future { fut: o, .. } => Some(o),
        }
    }
}

/// The callback that removes one registration when its owner dies or finishes.
#[pyclass(frozen, module = "ferrule._native", name = "_OwnerWatch")]
pub struct OwnerWatch {
    core: Weak<Core>,
    id: Arc<str>,
    token: u64,
}

#[pymethods]
impl OwnerWatch {
    #[pyo3(signature = (*_args))]
    fn __call__(&self, _args: &Bound<'_, PyTuple>) {
        if let Some(core) = self.core.upgrade() {
            // Dropped here, with the GIL held and no guard held.
            drop(core.remove_token(&self.id, self.token));
        }
    }
}

/// An `owner=` argument made ready for registration `(id, token)`.
pub struct NewOwner<'py> {
    pub owner: Owner,
    /// A future and the watch to attach to it once the registration is published.
    pub future: Option<(Bound<'py, PyAny>, Py<PyAny>)>,
    /// A thread owner: the registration goes on the core's sweep queue once published.
    pub thread: bool,
}

/// `obj.name(*args)` for a method a caller's subclass may override.
fn call_method<'py, A>(obj: &Bound<'py, PyAny>, name: &str, args: A) -> PyResult<Bound<'py, PyAny>>
where
    A: IntoPyObject<'py, Target = PyTuple>,
{
    wait::call1(&obj.getattr(name)?, args)
}

fn thread_dead(t: &Bound<'_, PyAny>) -> PyResult<bool> {
    // An unstarted thread has no ident yet and is not dead.
    Ok(!call_method(t, "is_alive", ())?.is_truthy()? && !t.getattr("ident")?.is_none())
}

/// Whether a registered owner thread has finished. A check that raises counts as "still
/// running" and goes to `sys.unraisablehook`: the entry stays (until the check works or
/// it is unregistered), and the caller's read, write or sweep goes on.
fn owner_finished(py: Python<'_>, t: &Bound<'_, PyAny>) -> bool {
    thread_dead(t).unwrap_or_else(|e| {
        wait::report(py, e, Some(t));
        false
    })
}

/// Whether the entry's owner is a thread that has finished.
pub fn finished(py: Python<'_>, e: &E) -> bool {
    match &e.reg.owner {
        Owner::Thread(t) => owner_finished(py, t.bind(py)),
        _ => false,
    }
}

/// Whether the entry's owner is a thread, which only Python can judge.
pub fn is_thread(e: &E) -> bool {
    matches!(e.reg.owner, Owner::Thread(_))
}

/// Removes `e` if its owner thread has finished; true if it did.
pub fn drop_if_dead(py: Python<'_>, core: &Core, e: &E) -> bool {
    if finished(py, e) {
        drop(core.remove_token(&e.id, e.token));
        return true;
    }
    false
}

/// Checks and wraps an `owner=` argument for registration `(id, token)`; an owner that is
/// already dead or done is refused.
pub fn new_owner<'py>(
    py: Python<'py>,
    core: &Arc<Core>,
    id: &Arc<str>,
    token: u64,
    owner: Option<&Bound<'py, PyAny>>,
) -> PyResult<NewOwner<'py>> {
    let plain = |owner| NewOwner {
        owner,
        future: None,
        thread: false,
    };
    let Some(o) = owner.filter(|o| !o.is_none()) else {
        return Ok(plain(Owner::None));
    };
    let watch = || {
        Py::new(
            py,
            OwnerWatch {
                core: Arc::downgrade(core),
                id: id.clone(),
                token,
            },
        )
    };
    if o.is_instance(lookup!(py, "threading", "Thread")?)? {
        if thread_dead(o)? {
            return Err(PyValueError::new_err("owner thread has already finished"));
        }
        // Before the registration is published (see `core::registry::HostChecks`).
        core.expect_host_checks();
        return Ok(NewOwner {
            owner: Owner::Thread(o.clone().unbind()),
            future: None,
            thread: true,
        });
    }
    let futures = PyTuple::new(
        py,
        [
            lookup!(py, "asyncio", "Future")?,
            lookup!(py, "concurrent.futures", "Future")?,
        ],
    )?;
    if o.is_instance(futures.as_any())? {
        if call_method(o, "done", ())?.is_truthy()? {
            return Err(PyValueError::new_err("owner future is already done"));
        }
        let w = watch()?.into_any();
        return Ok(NewOwner {
            future: Some((o.clone(), w.clone_ref(py))),
            owner: Owner::Future {
                fut: o.clone().unbind(),
                watch: w,
            },
            thread: false,
        });
    }
    match lookup!(py, "weakref", "ref")?.call1((o, watch()?)) {
        Ok(r) => Ok(plain(Owner::Weak(r.unbind()))),
        Err(e) if e.is_instance_of::<PyTypeError>(py) => Err(PyTypeError::new_err(format!(
            "owner must be weak-referenceable, a threading.Thread, an asyncio.Task or a concurrent.futures.Future, not '{}'",
            tname(o)
        ))),
        Err(e) => Err(e),
    }
}

/// Attaches a published registration's watch to its future.
pub fn watch_future(f: &Bound<'_, PyAny>, watch: &Py<PyAny>) -> PyResult<()> {
    call_method(f, "add_done_callback", (watch.clone_ref(f.py()),)).map(drop)
}

/// Detaches the done-callback of a removed registration whose future is still running
/// (the registration ended by other means), unless the id is still that registration's.
pub fn unwatch(py: Python<'_>, core: &Core, e: &E) {
    if let Owner::Future { fut, watch } = &e.reg.owner {
        if core.get(&e.id).is_none_or(|c| c.token != e.token) {
            let f = fut.bind(py);
            let done = call_method(f, "done", ())
                .and_then(|d| d.is_truthy())
                .unwrap_or(true);
            if !done {
                // Best effort (a concurrent.futures.Future has no such method): a watch
                // left behind matches no registration and does nothing.
                let _ = call_method(f, "remove_done_callback", (watch.bind(py),));
            }
        }
    }
}
