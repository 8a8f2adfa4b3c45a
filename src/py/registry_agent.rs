//! `Agent`: one registered agent as a query or `get` read it, immutable.
//!
//! An Agent holds the entry version it shows and its own references to that version's
//! Python objects (value, metadata dict, owner), so the garbage collector sees them
//! through the Agent. Who visits what, between the registry and its Agents, is set out
//! in the `registry` module's documentation.

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFrozenSet, PyString};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::clock::nanos_to_secs;
use crate::core::registry::NEVER;
use crate::py::lookup::lookup;
use crate::py::registry::{MetaPy, E};

fn mapping_proxy(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    lookup!(py, "types", "MappingProxyType")
}

/// The read-only view of an empty metadata dict, shared by every Agent without metadata.
fn empty_mapping(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static C: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    C.get_or_try_init(py, || {
        Ok::<_, PyErr>(mapping_proxy(py)?.call1((PyDict::new(py),))?.unbind())
    })
    .map(|o| o.bind(py))
}

/// `repr(s)` as Python writes it.
fn py_repr(py: Python<'_>, s: &str) -> String {
    PyString::new(py, s)
        .repr()
        .map_or_else(|_| format!("{s:?}"), |r| r.to_string())
}

/// What an Agent holds: the entry version it shows, and its own references to that
/// version's Python objects, so that the collector sees them through the Agent (see the
/// module documentation).
struct AgentRefs {
    e: Arc<E>,
    value: Py<PyAny>,
    meta: MetaPy,
    owner: Option<Py<PyAny>>,
}

/// One registered agent, as it was when read. Immutable and cheap to create.
#[pyclass(frozen, module = "ferrule", name = "Agent")]
pub struct Agent {
    /// `None` once the garbage collector has cleared it. Held only to copy a field out:
    /// nothing that can run Python (or allocate a Python object) happens under it.
    refs: Mutex<Option<AgentRefs>>,
}

impl Agent {
    pub fn new(py: Python<'_>, e: Arc<E>) -> Self {
        let refs = AgentRefs {
            value: e.reg.value.clone_ref(py),
            meta: e.meta.extra.as_ref().map(|d| d.clone_ref(py)),
            owner: e.reg.owner.object().map(|o| o.clone_ref(py)),
            e,
        };
        Self {
            refs: Mutex::new(Some(refs)),
        }
    }

    /// A new Agent object for `e`. One that cannot be part of a reference cycle the
    /// collector could take -- its value's type is not one the collector tracks (an int,
    /// a str, None, ...), and it has no metadata and no owner -- is untracked at once, as
    /// CPython untracks a tuple of such values: then a query that returns thousands of
    /// Agents sets off no collection, and no collection walks them. Such an Agent refers
    /// only to objects whose own references the collector never sees, so a cycle
    /// through it could not be collected with it tracked either.
    pub fn object(py: Python<'_>, e: Arc<E>) -> PyResult<Bound<'_, Self>> {
        // SAFETY: `value` is a live object (the entry holds it); only its type is read.
        let value_untracked = unsafe { ffi::PyObject_IS_GC(e.reg.value.as_ptr()) == 0 };
        let acyclic = value_untracked && e.meta.extra.is_none() && e.reg.owner.object().is_none();
        let obj = Bound::new(py, Self::new(py, e))?;
        if acyclic {
            // SAFETY: `obj` is a new, live, GC-capable object (Agent has `__traverse__`)
            // that nothing else references yet; untracking an object only takes it off
            // the collector's lists (its deallocation untracks it again harmlessly).
            unsafe { ffi::PyObject_GC_UnTrack(obj.as_ptr().cast()) };
        }
        Ok(obj)
    }

    /// `f` of the refs; RuntimeError once cleared (only a finalizer that runs during a
    /// collection can still reach a cleared Agent).
    fn with<T>(&self, f: impl FnOnce(&AgentRefs) -> T) -> PyResult<T> {
        match &*self.refs.lock() {
            Some(r) => Ok(f(r)),
            None => Err(PyRuntimeError::new_err(
                "this Agent was cleared by the garbage collector",
            )),
        }
    }

    fn entry(&self) -> PyResult<Arc<E>> {
        self.with(|r| r.e.clone())
    }
}

#[pymethods]
impl Agent {
    #[getter]
    fn agent_id(&self, py: Python<'_>) -> PyResult<Py<PyString>> {
        self.with(|r| r.e.reg.id.clone_ref(py))
    }

    /// The object registered with the agent (`lookup` returns it).
    #[getter]
    fn value(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(|r| r.value.clone_ref(py))
    }

    #[getter]
    fn capabilities<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyFrozenSet>> {
        let e = self.entry()?;
        PyFrozenSet::new(py, e.caps.iter().map(|c| &**c))
    }

    #[getter]
    fn node<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyString>>> {
        let e = self.entry()?;
        Ok(e.node.as_deref().map(|n| PyString::new(py, n)))
    }

    #[getter]
    fn health<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
        let e = self.entry()?;
        Ok(PyString::new(py, &e.health))
    }

    /// A read-only view (`types.MappingProxyType`) of a shallow copy of the metadata
    /// given at registration or the last `update`. Nested containers are the caller's own
    /// objects.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.with(|r| r.meta.as_ref().map(|d| d.clone_ref(py)))? {
            Some(d) => mapping_proxy(py)?.call1((d,)),
            None => Ok(empty_mapping(py)?.clone()),
        }
    }

    /// When it was registered, in the registry's clock seconds.
    #[getter]
    fn registered_at(&self) -> PyResult<f64> {
        self.with(|r| nanos_to_secs(r.e.registered_at))
    }

    /// When its lease ends (clock seconds), or None without a lease.
    #[getter]
    fn expires_at(&self) -> PyResult<Option<f64>> {
        self.with(|r| (r.e.expires_at != NEVER).then(|| nanos_to_secs(r.e.expires_at)))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let e = self.entry()?;
        let caps: Vec<String> = e.caps.iter().map(|c| py_repr(py, c)).collect();
        Ok(format!(
            "Agent(agent_id={}, capabilities={{{}}}, node={}, health={})",
            py_repr(py, &e.id),
            caps.join(", "),
            e.node
                .as_deref()
                .map_or_else(|| "None".to_owned(), |n| py_repr(py, n)),
            py_repr(py, &e.health)
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never wait: a getter on another thread holds the lock only to copy a field.
        let Some(g) = self.refs.try_lock() else {
            return Ok(());
        };
        let Some(r) = &*g else {
            return Ok(());
        };
        visit.call(&r.value)?;
        visit.call(r.meta.as_ref())?;
        visit.call(r.owner.as_ref())?;
        // The version's own references are this Agent's too when nothing else holds the
        // version (it is out of the map: the map's holding would make the count 2) or the
        // part of it that holds them (versions share `reg`, and `meta` until an update
        // changes it). Counts only rise during a collection (a query running detached
        // clones entries of the map, never this one), so this never visits twice.
        if Arc::strong_count(&r.e) == 1 {
            if Arc::strong_count(&r.e.reg) == 1 {
                r.e.reg.traverse(&visit)?;
            }
            if Arc::strong_count(&r.e.meta) == 1 {
                visit.call(r.e.meta.extra.as_ref())?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let refs = self.refs.lock().take();
        drop(refs); // after unlocking: this may run finalizers
    }
}
