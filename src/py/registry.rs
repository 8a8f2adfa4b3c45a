//! `Registry` and `Agent`: the Python face of `core::registry::Registry`.
//!
//! The core stores ids, capabilities, node and health as Rust strings and metadata as a
//! comparable [`Value`] tree, so index reads and most `where` conditions run without the
//! GIL or a Python callback. What only Python can decide (opaque metadata values, a
//! callable `where`, whether a `Thread` owner is still alive) is decided here, after the
//! core has handed back its candidates and released every guard.
//!
//! Arguments: a caller's container (metadata dicts at any depth, lists in them,
//! `capabilities`, `where` and its values, `register_many` items) may be changed by
//! another thread while it is read on a free-threaded build. Each one is first copied in
//! one step (`snapshot`, `PyDict_Copy`: CPython copies a builtin container under its
//! own lock), and only the private copy is iterated; a container of another type is
//! iterated through Python's protocol, whose failures are ordinary exceptions.
//!
//! Owners: a weak-referenceable owner gets a `weakref.ref` whose callback is an
//! [`OwnerWatch`]; a `Future`/`Task` gets the watch as a done-callback, attached only
//! after the entry is published (so a failed registration leaves no watch), and
//! detached again when the registration goes away by other means (asyncio futures; a
//! `concurrent.futures.Future` cannot drop a callback, so it keeps a watch that no longer
//! matches any registration and does nothing). A watch removes the entry only if it
//! still belongs to the watch's registration token, so the death of a losing or earlier
//! owner never removes a later registration of the same id. A `Thread` owner is checked
//! with `is_alive()` on every read that would return it, and a queue of thread-owned
//! registrations is swept a few per write (and fully by `expire()` and `len()`). A check
//! that raises counts as "still running" and is reported through `sys.unraisablehook`:
//! one broken owner never fails another caller's read or stops a sweep.
//!
//! Garbage collection: every Python reference an entry version holds (value, owner,
//! metadata dict) is visited by exactly one holder. A version in the registry's map is
//! the registry's to visit, always. Every other holder of it is either an [`Agent`],
//! which holds and visits its own references to the same objects, or a call in
//! progress on this registry (which keeps the registry reachable). An Agent visits the
//! version's references as well only when it is the version's sole holder (it left the
//! map, and no other Agent or call has it). Nothing is ever visited twice; a reference
//! nobody may visit counts as held from outside, which only keeps objects alive.
//!
//! Everything the core removes is handed back and dropped here, with the GIL held and
//! no guard held.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use pyo3::basic::CompareOp;
use pyo3::exceptions::{PyException, PyKeyError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyDict, PyFrozenSet, PyInt, PyList, PyMapping, PySet, PyString, PyTuple,
};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::clock::nanos_to_secs;
use crate::core::registry::{
    self as core, normalize_caps, Changes, Cond, Entry, Metadata, Op, Query, RegistryError, Spec,
    Tri, Value, NEVER,
};
use crate::errors::{wrong_type, Exc};
use crate::py::lookup::lookup;
use crate::py::{args, wait};

/// Queries reading more entries than this release the GIL while collecting.
const DETACH_AT: usize = 256;
/// Thread-owned registrations checked per write.
const SWEEP_BUDGET: usize = 2;
/// Nesting depth beyond which a metadata or `where` value is left opaque (compared by
/// Python, which bounds its own recursion). It bounds every recursion over a tree here
/// and in the core, so deep nesting can never exhaust the Rust stack.
const MAX_DEPTH: u32 = 32;

/// What a registration holds for its owner.
enum Owner {
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
    fn object(&self) -> Option<&Py<PyAny>> {
        match self {
            Self::None => None,
            Self::Weak(o) | Self::Thread(o) | Self::Future { fut: o, .. } => Some(o),
        }
    }
}

/// Host data fixed for a registration.
pub struct RegData {
    id: Py<PyString>,
    value: Py<PyAny>,
    owner: Owner,
}

impl RegData {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.value)?;
        visit.call(self.owner.object())
    }
}

/// Host copy of one version's metadata (`None`: empty).
pub(crate) type MetaPy = Option<Py<PyDict>>;
type Core = core::Registry<RegData, MetaPy>;
type E = Entry<RegData, MetaPy>;
type Grave = Vec<Arc<E>>;

// ---- cached Python objects ----------------------------------------------------------

fn thread_type(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    lookup!(py, "threading", "Thread")
}

fn future_types(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    PyTuple::new(
        py,
        [
            lookup!(py, "asyncio", "Future")?,
            lookup!(py, "concurrent.futures", "Future")?,
        ],
    )
}

fn weakref_ref(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    lookup!(py, "weakref", "ref")
}

fn mapping_proxy(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    lookup!(py, "types", "MappingProxyType")
}

fn empty_mapping(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static C: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    C.get_or_try_init(py, || {
        Ok::<_, PyErr>(mapping_proxy(py)?.call1((PyDict::new(py),))?.unbind())
    })
    .map(|o| o.bind(py))
}

// ---- conversions ----------------------------------------------------------------------

fn tname(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

fn rust_str(s: &Bound<'_, PyString>) -> PyResult<Arc<str>> {
    Ok(Arc::from(s.to_str()?))
}

/// An exact list, tuple, set, frozenset or dict: a container CPython copies in one step.
pub(crate) fn is_builtin_container(obj: &Bound<'_, PyAny>) -> bool {
    let p = obj.as_ptr();
    // SAFETY: `p` is a live object; these checks only read its type.
    unsafe {
        ffi::PyList_CheckExact(p) != 0
            || ffi::PyTuple_CheckExact(p) != 0
            || ffi::PyAnySet_CheckExact(p) != 0
            || ffi::PyDict_CheckExact(p) != 0
    }
}

/// `list(obj)`: a private list of the items (a dict's keys). For a builtin container it
/// is taken in one step (under the container's lock on free-threaded builds), so another
/// thread's change is wholly in or wholly out; any other iterable is iterated through
/// Python's protocol, and its failures are ordinary exceptions.
pub(crate) fn snapshot<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    // SAFETY: `obj` is live; `PySequence_List` returns a new reference to a list, or
    // NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(obj.py(), ffi::PySequence_List(obj.as_ptr()))
            .map(|l| l.cast_into_unchecked())
    }
}

/// A Python value as a comparable tree; only exact builtin types are looked into, each
/// container through a private copy (see the module documentation). Anything else, a
/// NaN's identity aside, is `Opaque` and compared by Python.
fn to_value(obj: &Bound<'_, PyAny>, depth: u32) -> Value {
    let p = obj.as_ptr();
    if depth > MAX_DEPTH {
        return Value::Opaque;
    }
    // SAFETY: `p` is a live object; these checks only read its type.
    unsafe {
        if p == ffi::Py_None() {
            return Value::Null;
        }
        if ffi::PyBool_Check(p) != 0 {
            return Value::Bool(p == ffi::Py_True());
        }
        if ffi::PyLong_CheckExact(p) != 0 {
            // Beyond 64 bits: opaque, so Python compares it (exactly).
            return obj.extract::<i64>().map_or(Value::Opaque, Value::Int);
        }
        if ffi::PyFloat_CheckExact(p) != 0 {
            return obj.extract::<f64>().map_or(Value::Opaque, Value::Float);
        }
        if ffi::PyUnicode_CheckExact(p) != 0 {
            return obj
                .cast_unchecked::<PyString>()
                .to_str()
                .map_or(Value::Opaque, |s| Value::Str(s.into()));
        }
        if ffi::PyList_CheckExact(p) != 0 {
            // A failed copy (memory) leaves the value to Python.
            let Ok(items) = snapshot(obj) else {
                return Value::Opaque;
            };
            let items: Vec<Value> = items.iter().map(|x| to_value(&x, depth + 1)).collect();
            return Value::Seq(items.into(), false);
        }
        if ffi::PyTuple_CheckExact(p) != 0 {
            // Immutable: read in place.
            let items: Vec<Value> = obj
                .cast_unchecked::<PyTuple>()
                .iter()
                .map(|x| to_value(&x, depth + 1))
                .collect();
            return Value::Seq(items.into(), true);
        }
        if ffi::PyDict_CheckExact(p) != 0 {
            return match obj.cast_unchecked::<PyDict>().copy() {
                Ok(d) => dict_value(&d, depth),
                Err(_) => Value::Opaque,
            };
        }
    }
    Value::Opaque
}

/// The tree of a dict nobody else can change (a private copy).
fn dict_value(d: &Bound<'_, PyDict>, depth: u32) -> Value {
    let mut items = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        if !k.is_exact_instance_of::<PyString>() {
            return Value::Opaque;
        }
        // SAFETY: checked just above.
        let Ok(k) = unsafe { k.cast_unchecked::<PyString>() }.to_str() else {
            return Value::Opaque;
        };
        items.push((Box::<str>::from(k), to_value(&v, depth + 1)));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    Value::Map(items.into())
}

/// `metadata`: None or a mapping with str keys, copied (shallowly) into a new dict.
pub(crate) fn metadata(
    py: Python<'_>,
    obj: Option<&Bound<'_, PyAny>>,
) -> PyResult<Arc<Metadata<MetaPy>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(empty_meta());
    };
    let d = if obj.is_exact_instance_of::<PyDict>() {
        // One step, under the source's lock on free-threaded builds.
        // SAFETY: checked just above.
        unsafe { obj.cast_unchecked::<PyDict>() }.copy()?
    } else if let Ok(m) = obj.cast::<PyMapping>() {
        let d = PyDict::new(py);
        d.update(m)?;
        d
    } else {
        return Err(wrong_type("metadata", "a mapping or None", obj));
    };
    for k in d.keys() {
        if !k.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(format!(
                "metadata keys must be str, not '{}'",
                tname(&k)
            )));
        }
    }
    let tree = dict_value(&d, 0);
    Ok(Arc::new(Metadata {
        tree,
        extra: Some(d.unbind()),
    }))
}

fn empty_meta() -> Arc<Metadata<MetaPy>> {
    // A fresh allocation, not a shared static: cloning one Arc from every thread would
    // make its reference count a contended cache line.
    Arc::new(Metadata {
        tree: Value::Map(Box::new([])),
        extra: None,
    })
}

/// `capabilities`: an iterable of str (a bare str is refused: it is almost always a
/// mistake for a one-element tuple).
pub(crate) fn capabilities(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Arc<str>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(Vec::new());
    };
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "capabilities must be an iterable of str, not a str",
        ));
    }
    let items = if is_builtin_container(obj) {
        snapshot(obj)?
    } else {
        let it = args::iterate(obj, "capabilities", "an iterable of str")?;
        snapshot(it.as_any())?
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items.iter() {
        let s = item.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "capabilities must contain only str, not '{}'",
                tname(&item)
            ))
        })?;
        out.push(rust_str(s)?);
    }
    Ok(out)
}

pub(crate) fn opt_str(obj: Option<&Bound<'_, PyAny>>, arg: &str) -> PyResult<Option<Arc<str>>> {
    match obj.filter(|o| !o.is_none()) {
        None => Ok(None),
        Some(o) => Ok(Some(rust_str(&args::string(o, arg)?)?)),
    }
}

pub(crate) fn health_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Arc<str>> {
    match obj.filter(|o| !o.is_none()) {
        // Fresh rather than a shared static (see `empty_meta`); the index interns it.
        None => Ok(Arc::from("healthy")),
        Some(o) => rust_str(&args::string(o, "health")?),
    }
}

/// `limit`: None or an int >= 0. One too large for any count means no limit.
pub(crate) fn limit_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
    let Some(l) = obj.filter(|l| !l.is_none()) else {
        return Ok(None);
    };
    if !l.is_instance_of::<PyInt>() || l.is_instance_of::<PyBool>() {
        return Err(wrong_type("limit", "an int", l));
    }
    let negative = match l.extract::<i64>() {
        Ok(v) => v < 0,
        // Beyond 64 bits: only the sign matters (an int compares with 0 in C).
        Err(_) => l.lt(0)?,
    };
    if negative {
        return Err(PyValueError::new_err("limit must be >= 0"));
    }
    Ok(Some(
        l.extract::<u64>()
            .ok()
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(usize::MAX),
    ))
}

// ---- owners -------------------------------------------------------------------------

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

enum OwnerKind<'py> {
    None,
    Weak(Bound<'py, PyAny>),
    Thread(Bound<'py, PyAny>),
    Future(Bound<'py, PyAny>),
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

fn classify<'py>(py: Python<'py>, owner: Option<&Bound<'py, PyAny>>) -> PyResult<OwnerKind<'py>> {
    let Some(o) = owner.filter(|o| !o.is_none()) else {
        return Ok(OwnerKind::None);
    };
    if o.is_instance(thread_type(py)?)? {
        if thread_dead(o)? {
            return Err(PyValueError::new_err("owner thread has already finished"));
        }
        return Ok(OwnerKind::Thread(o.clone()));
    }
    if o.is_instance(future_types(py)?.as_any())? {
        if call_method(o, "done", ())?.is_truthy()? {
            return Err(PyValueError::new_err("owner future is already done"));
        }
        return Ok(OwnerKind::Future(o.clone()));
    }
    Ok(OwnerKind::Weak(o.clone()))
}

// ---- Agent --------------------------------------------------------------------------

/// What an Agent holds: the entry version it shows, and its own references to that
/// version's Python objects, so that the collector sees them through the Agent (see the
/// module documentation).
struct AgentRefs {
    e: Arc<E>,
    value: Py<PyAny>,
    meta: MetaPy,
    owner: Option<Py<PyAny>>,
}

/// One registered agent as it was when read. Immutable.
#[pyclass(frozen, module = "ferrule", name = "Agent")]
pub struct Agent {
    /// `None` once the garbage collector has cleared it. Held only to copy a field out:
    /// nothing that can run Python (or allocate a Python object) happens under it.
    refs: Mutex<Option<AgentRefs>>,
}

impl Agent {
    fn new(py: Python<'_>, e: Arc<E>) -> Self {
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

    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.with(|r| r.meta.as_ref().map(|d| d.clone_ref(py)))? {
            Some(d) => mapping_proxy(py)?.call1((d,)),
            None => Ok(empty_mapping(py)?.clone()),
        }
    }

    #[getter]
    fn registered_at(&self) -> PyResult<f64> {
        self.with(|r| nanos_to_secs(r.e.registered_at))
    }

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

// ---- where ----------------------------------------------------------------------------

/// A parsed `where` argument.
pub(crate) enum Where {
    None,
    Callable(Py<PyAny>),
    /// The conditions, each with its Python value for the fallback evaluation: for `in`
    /// and `not_in`, and for a list or dict, the private copy the condition was made
    /// from, so every candidate is judged against one value.
    Conds(Vec<Cond>, Vec<Py<PyAny>>),
}

const WHERE_SHAPE: &str = "where must be a callable or a list of (path, op, value) triples";

pub(crate) fn parse_where(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Where> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(Where::None);
    };
    if obj.is_callable() {
        return Ok(Where::Callable(obj.clone().unbind()));
    }
    if !(obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>()) {
        return Err(PyTypeError::new_err(format!(
            "{WHERE_SHAPE}, not '{}'",
            tname(obj)
        )));
    }
    let mut conds = Vec::new();
    let mut values = Vec::new();
    for t in snapshot(obj)?.iter() {
        let shaped = t.is_instance_of::<PyTuple>() || t.is_instance_of::<PyList>();
        let triple = if shaped { Some(snapshot(&t)?) } else { None };
        let Some(triple) = triple.filter(|x| x.len() == 3) else {
            return Err(PyTypeError::new_err(format!(
                "{WHERE_SHAPE}; got an item of type '{}'",
                tname(&t)
            )));
        };
        let path = triple.get_item(0)?;
        let op = triple.get_item(1)?;
        let value = triple.get_item(2)?;
        let path = args::string(&path, "where path")?;
        let op_s = args::string(&op, "where op")?;
        let op = Op::parse(op_s.to_str()?).ok_or_else(|| {
            PyValueError::new_err(format!(
                "where op must be one of {}, not {}",
                Op::NAMES,
                op_s.repr()
                    .map_or_else(|_| "?".to_owned(), |r| r.to_string())
            ))
        })?;
        let (v, hashed, value) = match op {
            Op::In | Op::NotIn => {
                let hashed =
                    value.is_instance_of::<PySet>() || value.is_instance_of::<PyFrozenSet>();
                if !(hashed
                    || value.is_instance_of::<PyList>()
                    || value.is_instance_of::<PyTuple>())
                {
                    return Err(PyTypeError::new_err(format!(
                        "where value for {} must be a list, tuple or set, not '{}'",
                        op_s.repr()?,
                        tname(&value)
                    )));
                }
                // The copy: a frozenset keeps the stored hashes (no `__hash__` call), a
                // list stands for a list or tuple.
                let copy = if hashed {
                    // SAFETY: `value` is live; a new reference or NULL with an exception.
                    unsafe {
                        Bound::from_owned_ptr_or_err(
                            value.py(),
                            ffi::PyFrozenSet_New(value.as_ptr()),
                        )?
                    }
                } else {
                    snapshot(&value)?.into_any()
                };
                let items: Vec<Value> = snapshot(&copy)?.iter().map(|x| to_value(&x, 1)).collect();
                (Value::Seq(items.into(), false), hashed, copy)
            }
            _ => {
                let copy = if value.is_exact_instance_of::<PyList>() {
                    snapshot(&value)?.into_any()
                } else if value.is_exact_instance_of::<PyDict>() {
                    // SAFETY: checked just above.
                    unsafe { value.cast_unchecked::<PyDict>() }
                        .copy()?
                        .into_any()
                } else {
                    value
                };
                (to_value(&copy, 0), false, copy)
            }
        };
        conds.push(Cond {
            path: path.to_str()?.split('.').map(Box::from).collect(),
            op,
            value: v,
            hashed,
        });
        values.push(value.unbind());
    }
    Ok(Where::Conds(conds, values))
}

/// A private copy of the items of a list or tuple value (the values `eq` and `in` also
/// look into); `None` for anything else or when it cannot be read.
fn elems<'py>(v: &Bound<'py, PyAny>) -> Option<Bound<'py, PyList>> {
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        snapshot(v).ok()
    } else {
        None
    }
}

/// A comparison Python refuses (an `Exception`: TypeError, a raising `__eq__` or
/// `__bool__`, a RecursionError) is no match; KeyboardInterrupt and the like propagate.
fn refused_is_no(py: Python<'_>, r: PyResult<bool>) -> PyResult<bool> {
    match r {
        Err(e) if e.is_instance_of::<PyException>(py) => Ok(false),
        other => other,
    }
}

/// Python's answer for one condition (used when the core could not decide).
pub(crate) fn py_cond(
    py: Python<'_>,
    c: &Cond,
    q: &Bound<'_, PyAny>,
    meta: &MetaPy,
) -> PyResult<bool> {
    let Some(d) = meta else { return Ok(false) };
    let mut cur = d.bind(py).clone().into_any();
    for seg in &c.path {
        let Ok(dict) = cur.cast::<PyDict>() else {
            return Ok(false);
        };
        match dict.get_item(&**seg)? {
            Some(v) => cur = v,
            None => return Ok(false),
        }
    }
    let v = cur;
    let safe = |r: PyResult<bool>| refused_is_no(py, r);
    let cmp = |op: CompareOp| safe(v.rich_compare(q, op).and_then(|r| r.is_truthy()));
    // `f` on any item of a list or tuple value.
    let any_item = |f: &dyn Fn(&Bound<'_, PyAny>) -> PyResult<bool>| -> PyResult<bool> {
        if let Some(items) = elems(&v) {
            for x in items.iter() {
                if f(&x)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    };
    Ok(match c.op {
        Op::Eq => safe(v.eq(q))? || any_item(&|x| safe(x.eq(q)))?,
        Op::Ne => safe(v.ne(q))?,
        Op::Gt => cmp(CompareOp::Gt)?,
        Op::Gte => cmp(CompareOp::Ge)?,
        Op::Lt => cmp(CompareOp::Lt)?,
        Op::Lte => cmp(CompareOp::Le)?,
        Op::In => safe(q.contains(&v))? || any_item(&|x| safe(q.contains(x)))?,
        Op::NotIn => safe(q.contains(&v).map(|b| !b))?,
    })
}

fn py_repr(py: Python<'_>, s: &str) -> String {
    PyString::new(py, s)
        .repr()
        .map_or_else(|_| format!("{s:?}"), |r| r.to_string())
}

pub(crate) fn taken(py: Python<'_>, id: &str) -> PyErr {
    Exc::AlreadyRegistered.err(
        py,
        format!("agent id {} is already registered", py_repr(py, id)),
    )
}

// ---- Registry -----------------------------------------------------------------------

/// A concurrent agent directory with secondary indexes, owners and leases.
#[pyclass(frozen, module = "ferrule", name = "Registry")]
pub struct Registry {
    core: Arc<Core>,
    max_batch: usize,
    /// Thread-owned registrations (id, token), swept a few per write.
    threads: Mutex<VecDeque<(Arc<str>, u64)>>,
    thread_count: AtomicUsize,
    /// Set (before publishing) once any registration has a thread owner; until then
    /// queries skip the per-entry owner check.
    thread_owners: AtomicBool,
}

/// The keys a `register_many` item may have.
pub(crate) const ITEM_KEYS: [&str; 8] = [
    "agent_id",
    "value",
    "capabilities",
    "node",
    "health",
    "metadata",
    "owner",
    "ttl",
];

/// A registration converted and checked, not yet published.
struct Prepared<'py> {
    spec: Spec<RegData, MetaPy>,
    future: Option<(Bound<'py, PyAny>, Py<PyAny>)>,
    thread: bool,
}

/// A published registration whose owner is not watched yet.
struct Published<'py> {
    e: Arc<E>,
    future: Option<(Bound<'py, PyAny>, Py<PyAny>)>,
    thread: bool,
}

/// What a query asks for, parsed.
struct Criteria {
    cap: Option<Arc<str>>,
    node: Option<Arc<str>>,
    health: Option<Arc<str>>,
    wh: Where,
    limit: Option<usize>,
}

impl Registry {
    fn id_arg<'a>(agent_id: &'a Bound<'_, PyAny>) -> PyResult<&'a str> {
        match agent_id.cast::<PyString>() {
            Ok(s) => s.to_str(),
            Err(_) => Err(wrong_type("agent_id", "a str", agent_id)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn prepare<'py>(
        &self,
        py: Python<'py>,
        agent_id: &Bound<'py, PyAny>,
        value: Option<Py<PyAny>>,
        caps: Option<&Bound<'py, PyAny>>,
        node: Option<&Bound<'py, PyAny>>,
        health: Option<&Bound<'py, PyAny>>,
        meta: Option<&Bound<'py, PyAny>>,
        owner: Option<&Bound<'py, PyAny>>,
        ttl: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Prepared<'py>> {
        let id_py = args::string(agent_id, "agent_id")?;
        let id = rust_str(&id_py)?;
        let caps = capabilities(caps)?;
        let node = opt_str(node, "node")?;
        let health = health_arg(health)?;
        let meta = metadata(py, meta)?;
        let ttl = args::opt_positive_nanos(ttl, "ttl")?;
        let token = self.core.next_token();
        let watch = || {
            Py::new(
                py,
                OwnerWatch {
                    core: Arc::downgrade(&self.core),
                    id: id.clone(),
                    token,
                },
            )
        };
        let mut future = None;
        let mut thread = false;
        let owner = match classify(py, owner)? {
            OwnerKind::None => Owner::None,
            OwnerKind::Thread(t) => {
                thread = true;
                self.thread_owners.store(true, Ordering::Release);
                Owner::Thread(t.unbind())
            }
            OwnerKind::Future(f) => {
                let w = watch()?.into_any();
                future = Some((f.clone(), w.clone_ref(py)));
                Owner::Future {
                    fut: f.unbind(),
                    watch: w,
                }
            }
            OwnerKind::Weak(o) => match weakref_ref(py)?.call1((&o, watch()?)) {
                Ok(r) => Owner::Weak(r.unbind()),
                Err(e) if e.is_instance_of::<PyTypeError>(py) => {
                    return Err(PyTypeError::new_err(format!(
                        "owner must be weak-referenceable, a threading.Thread, an asyncio.Task or a concurrent.futures.Future, not '{}'",
                        tname(&o)
                    )))
                }
                Err(e) => return Err(e),
            },
        };
        Ok(Prepared {
            spec: Spec {
                id,
                token,
                caps,
                node,
                health,
                meta,
                ttl,
                reg: Arc::new(RegData {
                    id: id_py.unbind(),
                    value: value.unwrap_or_else(|| py.None()),
                    owner,
                }),
            },
            future,
            thread,
        })
    }

    /// Publishes a prepared registration (its owner not watched yet: see `watch`).
    fn publish<'py>(&self, py: Python<'py>, p: Prepared<'py>) -> PyResult<Published<'py>> {
        // A finished thread's registration no longer holds its id.
        if let Some(old) = self.core.get(&p.spec.id) {
            self.drop_if_dead(py, &old);
        }
        let mut grave = Grave::new();
        let r = self.core.register(p.spec, &mut grave);
        self.bury(py, grave, None);
        match r {
            Ok(e) => Ok(Published {
                e,
                future: p.future,
                thread: p.thread,
            }),
            Err(RegistryError::Taken(id)) => Err(taken(py, &id)),
            Err(e @ RegistryError::Missing(_)) => Err(PyKeyError::new_err(e.to_string())),
        }
    }

    /// Watches the owners of published registrations: first every future's
    /// done-callback (the only step that can fail: then every one of them is taken back,
    /// callbacks included, and the error returned), then the thread owners' sweep queue.
    fn watch(&self, py: Python<'_>, published: &[Published<'_>]) -> PyResult<()> {
        for p in published {
            if let Some((f, w)) = &p.future {
                if let Err(err) = call_method(f, "add_done_callback", (w.clone_ref(py),)) {
                    self.take_back(py, published);
                    return Err(err);
                }
            }
        }
        let threads: Vec<_> = published
            .iter()
            .filter(|p| p.thread)
            .map(|p| (p.e.id.clone(), p.e.token))
            .collect();
        if !threads.is_empty() {
            self.thread_count
                .fetch_add(threads.len(), Ordering::Relaxed);
            self.threads.lock().extend(threads);
        }
        // A few per registration, as for single writes.
        self.sweep_threads(py, SWEEP_BUDGET.saturating_mul(published.len()));
        Ok(())
    }

    /// Removes registrations this call published (those still there) and detaches
    /// their done-callbacks.
    fn take_back(&self, py: Python<'_>, published: &[Published<'_>]) {
        let grave: Grave = published
            .iter()
            .filter_map(|p| self.core.remove_token(&p.e.id, p.e.token))
            .collect();
        self.bury(py, grave, None);
    }

    /// Removes `e` if its owner thread has finished; true if it did.
    fn drop_if_dead(&self, py: Python<'_>, e: &Arc<E>) -> bool {
        if let Owner::Thread(t) = &e.reg.owner {
            if owner_finished(py, t.bind(py)) {
                drop(self.core.remove_token(&e.id, e.token));
                return true;
            }
        }
        false
    }

    /// Checks up to `budget` thread-owned registrations (run with no lock held).
    fn sweep_threads(&self, py: Python<'_>, budget: usize) -> usize {
        if self.thread_count.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let batch: Vec<(Arc<str>, u64)> = {
            let mut q = self.threads.lock();
            let n = budget.min(q.len());
            q.drain(..n).collect()
        };
        let drained = batch.len();
        let mut removed = 0;
        let mut keep = Vec::with_capacity(drained);
        for (id, token) in batch {
            match self.core.get(&id) {
                Some(e) if e.token == token => {
                    if self.drop_if_dead(py, &e) {
                        removed += 1;
                    } else {
                        keep.push((id, token));
                    }
                }
                // Gone by other means, or a later registration of the id.
                _ => {}
            }
        }
        // kept <= drained: the count never underflows.
        self.thread_count
            .fetch_sub(drained - keep.len(), Ordering::Relaxed);
        if !keep.is_empty() {
            self.threads.lock().extend(keep);
        }
        removed
    }

    /// Drops removed entries with the GIL held; detaches the done-callbacks of
    /// registrations that ended by other means than their future (not `keep`'s).
    fn bury(&self, py: Python<'_>, grave: Grave, keep: Option<u64>) {
        for e in grave {
            if Some(e.token) == keep {
                continue;
            }
            if let Owner::Future { fut, watch } = &e.reg.owner {
                if self.core.get(&e.id).is_none_or(|c| c.token != e.token) {
                    let f = fut.bind(py);
                    let done = call_method(f, "done", ())
                        .and_then(|d| d.is_truthy())
                        .unwrap_or(true);
                    if !done {
                        // Best effort (a concurrent.futures.Future has no such method):
                        // a watch left behind matches no registration and does nothing.
                        let _ = call_method(f, "remove_done_callback", (watch.bind(py),));
                    }
                }
            }
        }
    }

    fn live(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<Option<Arc<E>>> {
        let id = Self::id_arg(agent_id)?;
        match self.core.get(id) {
            Some(e) if self.drop_if_dead(py, &e) => Ok(None),
            other => Ok(other),
        }
    }

    fn criteria(
        capability: Option<&Bound<'_, PyAny>>,
        node: Option<&Bound<'_, PyAny>>,
        health: Option<&Bound<'_, PyAny>>,
        where_: Option<&Bound<'_, PyAny>>,
        limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Criteria> {
        Ok(Criteria {
            cap: opt_str(capability, "capability")?,
            node: opt_str(node, "node")?,
            health: opt_str(health, "health")?,
            wh: parse_where(where_)?,
            limit: limit_arg(limit)?,
        })
    }

    fn query(c: &Criteria, limit: Option<usize>) -> Query<'_> {
        Query {
            capability: c.cap.as_deref(),
            node: c.node.as_deref(),
            health: c.health.as_deref(),
            conds: match &c.wh {
                Where::Conds(conds, _) => conds,
                _ => &[],
            },
            limit,
        }
    }

    /// Whether an entry the core was unsure about meets every condition.
    fn py_conds(py: Python<'_>, c: &Criteria, e: &E) -> PyResult<bool> {
        if let Where::Conds(conds, values) = &c.wh {
            for (cond, v) in conds.iter().zip(values) {
                if !py_cond(py, cond, v.bind(py), &e.meta.extra)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Entries matching the criteria, owners and `where` checked.
    fn select(&self, py: Python<'_>, c: &Criteria) -> PyResult<Vec<Arc<E>>> {
        let callable = match &c.wh {
            Where::Callable(f) => Some(f),
            _ => None,
        };
        let limit = c.limit;
        let mut core_limit = if callable.is_some() { None } else { limit };
        loop {
            let q = Self::query(c, core_limit);
            let found = if self.core.estimate(&q) > DETACH_AT {
                wait::detach(py, || self.core.find(&q))
            } else {
                self.core.find(&q)
            };
            // Read after the candidates: a thread-owned entry they hold was published
            // after the flag was set.
            let check_owners = self.thread_owners.load(Ordering::Acquire);
            let mut out = Vec::with_capacity(found.hits.len());
            for hit in found.hits {
                if limit.is_some_and(|l| out.len() >= l) {
                    break;
                }
                if hit.unsure && !Self::py_conds(py, c, &hit.entry)? {
                    continue;
                }
                if check_owners && self.drop_if_dead(py, &hit.entry) {
                    continue;
                }
                if let Some(f) = callable {
                    let agent = Agent::new(py, hit.entry.clone());
                    if !wait::call1(f.bind(py), (agent,))?.is_truthy()? {
                        continue;
                    }
                }
                out.push(hit.entry);
            }
            let short = limit.is_some_and(|l| out.len() < l);
            if found.truncated && short && core_limit.is_some() {
                // Some sure hits were dropped here (dead owners): read everything once.
                core_limit = None;
                continue;
            }
            return Ok(out);
        }
    }

    /// How many entries `select` would return, without collecting them: only entries
    /// that need Python (an undecided condition, a thread owner) are copied out.
    fn count_matches(&self, py: Python<'_>, c: &Criteria) -> PyResult<usize> {
        if matches!(c.wh, Where::Callable(_)) {
            return Ok(self.select(py, c)?.len());
        }
        let cap = c.limit.unwrap_or(usize::MAX);
        if cap == 0 {
            return Ok(0);
        }
        let q = Self::query(c, None);
        let mut sure = 0usize;
        let mut check: Vec<(Arc<E>, bool)> = Vec::new();
        let mut scan = || {
            self.core.scan(&q, |e, t| {
                let unsure = t == Tri::Unknown;
                if unsure || matches!(e.reg.owner, Owner::Thread(_)) {
                    check.push((e.clone(), unsure));
                    false
                } else {
                    sure += 1;
                    sure >= cap
                }
            })
        };
        if self.core.estimate(&q) > DETACH_AT {
            wait::detach(py, scan);
        } else {
            scan();
        }
        let mut n = sure;
        for (e, unsure) in check {
            if n >= cap {
                break;
            }
            if unsure && !Self::py_conds(py, c, &e)? {
                continue;
            }
            if !self.drop_if_dead(py, &e) {
                n += 1;
            }
        }
        Ok(n.min(cap))
    }
}

#[pymethods]
impl Registry {
    #[new]
    #[pyo3(signature = (*, clock = None, max_batch = None), text_signature = "(*, clock=None, max_batch=10000)")]
    fn new(
        clock: Option<&Bound<'_, PyAny>>,
        max_batch: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let clock = args::clock(clock)?;
        let max_batch = match max_batch {
            Some(m) => args::int_at_least(m, "max_batch", 1)? as usize,
            None => 10_000,
        };
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Ok(Self {
            core: Arc::new(Core::new(clock, cpus)),
            max_batch,
            threads: Mutex::new(VecDeque::new()),
            thread_count: AtomicUsize::new(0),
            thread_owners: AtomicBool::new(false),
        })
    }

    /// Registers an agent; AlreadyRegistered if the id is taken.
    #[pyo3(signature = (agent_id, value = None, *, capabilities = None, node = None, health = None, metadata = None, owner = None, ttl = None),
           text_signature = "(self, agent_id, value=None, *, capabilities=(), node=None, health='healthy', metadata=None, owner=None, ttl=None)")]
    #[allow(clippy::too_many_arguments)]
    fn register(
        &self,
        py: Python<'_>,
        agent_id: &Bound<'_, PyAny>,
        value: Option<Py<PyAny>>,
        capabilities: Option<&Bound<'_, PyAny>>,
        node: Option<&Bound<'_, PyAny>>,
        health: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
        owner: Option<&Bound<'_, PyAny>>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let p = self.prepare(
            py,
            agent_id,
            value,
            capabilities,
            node,
            health,
            metadata,
            owner,
            ttl,
        )?;
        let published = [self.publish(py, p)?];
        self.watch(py, &published)
    }

    /// Registers every item or none; returns how many.
    fn register_many(&self, py: Python<'_>, items: &Bound<'_, PyAny>) -> PyResult<usize> {
        let source = if is_builtin_container(items) {
            snapshot(items)?.into_any()
        } else {
            items.clone()
        };
        let it = source
            .try_iter()
            .map_err(|e| args::not_iterable(e, items, "items", "an iterable of dicts"))?;
        let mut raw: Vec<Bound<'_, PyDict>> = Vec::new();
        for item in it {
            let item = item?;
            if raw.len() == self.max_batch {
                return Err(PyValueError::new_err(format!(
                    "items must hold at most max_batch ({}) items",
                    self.max_batch
                )));
            }
            let d = item
                .cast::<PyDict>()
                .map_err(|_| wrong_type("items", "an iterable of dicts", &item))?;
            // A private copy: what is checked is what is registered.
            raw.push(d.copy()?);
        }
        let mut prepared = Vec::with_capacity(raw.len());
        let mut seen = std::collections::HashSet::new();
        for d in &raw {
            for k in d.keys() {
                let ok = k
                    .cast::<PyString>()
                    .ok()
                    .and_then(|s| s.to_str().ok())
                    .is_some_and(|s| ITEM_KEYS.contains(&s));
                if !ok {
                    return Err(PyTypeError::new_err(format!(
                        "register_many item has an unexpected key {}",
                        k.repr()?
                    )));
                }
            }
            let get = |k: &str| d.get_item(k);
            let Some(agent_id) = get("agent_id")? else {
                return Err(PyTypeError::new_err(
                    "register_many item is missing 'agent_id'",
                ));
            };
            let p = self.prepare(
                py,
                &agent_id,
                get("value")?.map(Bound::unbind),
                get("capabilities")?.as_ref(),
                get("node")?.as_ref(),
                get("health")?.as_ref(),
                get("metadata")?.as_ref(),
                get("owner")?.as_ref(),
                get("ttl")?.as_ref(),
            )?;
            if !seen.insert(p.spec.id.clone()) {
                return Err(taken(py, &p.spec.id));
            }
            prepared.push(p);
        }
        // Nothing is published before every item is checked; a refusal then takes back
        // what this call published, and so does a failure to watch an owner (`watch`).
        let mut published = Vec::with_capacity(prepared.len());
        for p in prepared {
            match self.publish(py, p) {
                Ok(p) => published.push(p),
                Err(err) => {
                    self.take_back(py, &published);
                    return Err(err);
                }
            }
        }
        self.watch(py, &published)?;
        Ok(published.len())
    }

    /// Removes the agent; True if it was registered (and live).
    fn unregister(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        let id = Self::id_arg(agent_id)?;
        let now = self.core.now();
        let mut grave = Grave::new();
        let removed = self.core.unregister(id, &mut grave);
        let live = removed.as_ref().is_some_and(|e| {
            e.is_live(now)
                && match &e.reg.owner {
                    Owner::Thread(t) => !owner_finished(py, t.bind(py)),
                    _ => true,
                }
        });
        grave.extend(removed);
        self.bury(py, grave, None);
        self.sweep_threads(py, SWEEP_BUDGET);
        Ok(live)
    }

    /// Changes capabilities, node, health and/or metadata as one step.
    #[pyo3(signature = (agent_id, **changes),
           text_signature = "(self, agent_id, *, capabilities=..., node=..., health=..., metadata=...)")]
    fn update(
        &self,
        py: Python<'_>,
        agent_id: &Bound<'_, PyAny>,
        changes: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let id = Self::id_arg(agent_id)?;
        let mut ch = Changes {
            caps: None,
            node: None,
            health: None,
            meta: None,
        };
        if let Some(kw) = changes {
            // `**changes` is a dict made for this call: nobody else can change it.
            for (k, v) in kw.iter() {
                let k = k.cast::<PyString>()?.to_str()?.to_owned();
                match k.as_str() {
                    "capabilities" => ch.caps = Some(normalize_caps(capabilities(Some(&v))?)),
                    "node" => ch.node = Some(opt_str(Some(&v), "node")?),
                    "health" => ch.health = Some(rust_str(&args::string(&v, "health")?)?),
                    "metadata" => ch.meta = Some(metadata(py, Some(&v))?),
                    other => {
                        return Err(PyTypeError::new_err(format!(
                            "update() got an unexpected keyword argument '{other}'"
                        )))
                    }
                }
            }
        }
        if self.live(py, agent_id)?.is_none() {
            return Err(PyKeyError::new_err(id.to_owned()));
        }
        let mut grave = Grave::new();
        let r = self.core.update(id, &ch, &mut grave);
        let keep = r.as_ref().ok().map(|e| e.token);
        self.bury(py, grave, keep);
        self.sweep_threads(py, SWEEP_BUDGET);
        match r {
            Ok(_) => Ok(()),
            Err(_) => Err(PyKeyError::new_err(id.to_owned())),
        }
    }

    /// The agent, or None.
    fn get(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<Option<Agent>> {
        Ok(self.live(py, agent_id)?.map(|e| Agent::new(py, e)))
    }

    /// The agent's value; KeyError if absent.
    fn lookup(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match self.live(py, agent_id)? {
            Some(e) => Ok(e.reg.value.clone_ref(py)),
            None => Err(PyKeyError::new_err(agent_id.clone().unbind())),
        }
    }

    /// Renews the lease (by `ttl`, or the registration's own ttl); False if absent.
    #[pyo3(signature = (agent_id, ttl = None))]
    fn heartbeat(
        &self,
        py: Python<'_>,
        agent_id: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let ttl = args::opt_positive_nanos(ttl, "ttl")?;
        if self.live(py, agent_id)?.is_none() {
            return Ok(false);
        }
        let id = Self::id_arg(agent_id)?;
        let mut grave = Grave::new();
        let ok = self.core.heartbeat(id, ttl, &mut grave);
        let keep = self.core.get(id).map(|e| e.token);
        self.bury(py, grave, keep);
        Ok(ok)
    }

    /// Removes expired and orphaned entries now; returns how many.
    fn expire(&self, py: Python<'_>) -> usize {
        let mut grave = Grave::new();
        let n = self.core.expire(&mut grave);
        self.bury(py, grave, None);
        n + self.sweep_threads(py, usize::MAX)
    }

    #[pyo3(signature = (*, capability = None, node = None, health = None, r#where = None, limit = None))]
    fn find(
        &self,
        py: Python<'_>,
        capability: Option<&Bound<'_, PyAny>>,
        node: Option<&Bound<'_, PyAny>>,
        health: Option<&Bound<'_, PyAny>>,
        r#where: Option<&Bound<'_, PyAny>>,
        limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<Agent>> {
        let c = Self::criteria(capability, node, health, r#where, limit)?;
        Ok(self
            .select(py, &c)?
            .into_iter()
            .map(|e| Agent::new(py, e))
            .collect())
    }

    #[pyo3(signature = (*, capability = None, node = None, health = None, r#where = None, limit = None))]
    fn count(
        &self,
        py: Python<'_>,
        capability: Option<&Bound<'_, PyAny>>,
        node: Option<&Bound<'_, PyAny>>,
        health: Option<&Bound<'_, PyAny>>,
        r#where: Option<&Bound<'_, PyAny>>,
        limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let c = Self::criteria(capability, node, health, r#where, limit)?;
        self.count_matches(py, &c)
    }

    #[pyo3(signature = (*, capability = None, node = None, health = None, r#where = None, limit = None))]
    fn ids(
        &self,
        py: Python<'_>,
        capability: Option<&Bound<'_, PyAny>>,
        node: Option<&Bound<'_, PyAny>>,
        health: Option<&Bound<'_, PyAny>>,
        r#where: Option<&Bound<'_, PyAny>>,
        limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<Py<PyString>>> {
        let c = Self::criteria(capability, node, health, r#where, limit)?;
        Ok(self
            .select(py, &c)?
            .iter()
            .map(|e| e.reg.id.clone_ref(py))
            .collect())
    }

    #[getter]
    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn __contains__(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        if !agent_id.is_instance_of::<PyString>() {
            return Ok(false);
        }
        Ok(self.live(py, agent_id)?.is_some())
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        let mut grave = Grave::new();
        self.core.reclaim_due(&mut grave);
        self.bury(py, grave, None);
        self.sweep_threads(py, usize::MAX);
        self.core.len()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("Registry(len={})", self.__len__(py))
    }

    /// Index keys and lease items held (for tests of reclamation).
    fn _index_sizes(&self) -> (usize, usize, usize, usize) {
        let s = self.core.index_sizes();
        (s.capabilities, s.nodes, s.health, s.lease_items)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Every version in the map is the registry's to visit (see the module
        // documentation); a shard another thread has locked is skipped, never waited for.
        self.core
            .try_for_each(|e| {
                e.reg.traverse(&visit)?;
                visit.call(e.meta.extra.as_ref())
            })
            .map(|_complete| ())
    }

    fn __clear__(&self) {
        let mut grave = Grave::new();
        self.core.clear(&mut grave);
        let threads = std::mem::take(&mut *self.threads.lock());
        self.thread_count.store(0, Ordering::Relaxed);
        // After unlocking: dropping entries may run finalizers. Done-callbacks stay on
        // their futures, each matching no registration any more.
        drop(threads);
        drop(grave);
    }
}
