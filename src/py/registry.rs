//! `Registry` and `Agent`: the Python face of `core::registry::Registry`.
//!
//! The core stores ids, capabilities, node and health as Rust strings and metadata as a
//! comparable [`Value`] tree, so index reads and most `where` conditions run without the
//! GIL or a Python callback. What only Python can decide (opaque metadata values, a
//! callable `where`, whether a `Thread` owner is still alive) is decided here, after the
//! core has handed back its candidates and released every guard.
//!
//! Owners: a weak-referenceable owner gets a `weakref.ref` whose callback is an
//! [`OwnerWatch`]; a `Future`/`Task` gets the watch as a done-callback, attached only
//! after the entry is published (so a failed registration leaves no watch), and
//! detached again when the registration goes away by other means. A watch removes the
//! entry only if it still belongs to the watch's registration token, so the death of a
//! losing or earlier owner never removes a later registration of the same id. A
//! `Thread` owner is checked with `is_alive()` on every read that would return it, and
//! a queue of thread-owned registrations is swept a few per write (and fully by
//! `expire()` and `len()`).
//!
//! Everything the core removes is handed back and dropped here, with the GIL held and
//! no guard held.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use pyo3::basic::CompareOp;
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFrozenSet, PyList, PyMapping, PySet, PyString, PyTuple};

use crate::core::clock::nanos_to_secs;
use crate::core::registry::{
    self as core, normalize_caps, Changes, Cond, Entry, Metadata, Op, Query, RegistryError, Spec,
    Value, NEVER,
};
use crate::errors::{wrong_type, Exc};
use crate::py::{args, wait};

/// Queries reading more entries than this release the GIL while collecting.
const DETACH_AT: usize = 256;
/// Thread-owned registrations checked per write.
const SWEEP_BUDGET: usize = 2;
/// Nesting depth beyond which metadata is left opaque.
const MAX_DEPTH: u32 = 32;

/// What a registration holds for its owner.
enum Owner {
    None,
    /// The `weakref.ref` whose callback removes the entry.
    Weak(#[allow(dead_code)] Py<PyAny>),
    Thread(Py<PyAny>),
    Future {
        fut: Py<PyAny>,
        watch: Py<PyAny>,
    },
}

/// Host data fixed for a registration.
pub struct RegData {
    id: Py<PyString>,
    value: Py<PyAny>,
    owner: Owner,
}

/// Host copy of one version's metadata (`None`: empty).
type MetaPy = Option<Py<PyDict>>;
type Core = core::Registry<RegData, MetaPy>;
type E = Entry<RegData, MetaPy>;
type Grave = Vec<Arc<E>>;

// ---- cached Python objects ----------------------------------------------------------

fn thread_type(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static C: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    C.import(py, "threading", "Thread")
}

fn future_types(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
    static A: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static F: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    PyTuple::new(
        py,
        [
            A.import(py, "asyncio", "Future")?,
            F.import(py, "concurrent.futures", "Future")?,
        ],
    )
}

fn weakref_ref(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static C: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    C.import(py, "weakref", "ref")
}

fn mapping_proxy(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static C: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    C.import(py, "types", "MappingProxyType")
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

/// A Python value as a comparable tree; only exact builtin types are looked into.
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
            let items: Vec<Value> = obj
                .cast_unchecked::<PyList>()
                .iter()
                .map(|x| to_value(&x, depth + 1))
                .collect();
            return Value::Seq(items.into(), false);
        }
        if ffi::PyTuple_CheckExact(p) != 0 {
            let items: Vec<Value> = obj
                .cast_unchecked::<PyTuple>()
                .iter()
                .map(|x| to_value(&x, depth + 1))
                .collect();
            return Value::Seq(items.into(), true);
        }
        if ffi::PyDict_CheckExact(p) != 0 {
            return dict_value(obj.cast_unchecked::<PyDict>(), depth);
        }
    }
    Value::Opaque
}

fn dict_value(d: &Bound<'_, PyDict>, depth: u32) -> Value {
    let mut items = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        if !k.is_exact_instance_of::<PyString>() {
            return Value::Opaque;
        }
        let Ok(k) = k
            .cast::<PyString>()
            .map(|s| s.to_str().map(Box::<str>::from))
        else {
            return Value::Opaque;
        };
        let Ok(k) = k else { return Value::Opaque };
        items.push((k, to_value(&v, depth + 1)));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    Value::Map(items.into())
}

/// `metadata`: None or a mapping with str keys, copied (shallowly) into a new dict.
fn metadata(py: Python<'_>, obj: Option<&Bound<'_, PyAny>>) -> PyResult<Arc<Metadata<MetaPy>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(empty_meta());
    };
    let d = PyDict::new(py);
    if let Ok(src) = obj.cast::<PyDict>() {
        d.update(src.as_mapping())?;
    } else if let Ok(m) = obj.cast::<PyMapping>() {
        d.update(m)?;
    } else {
        return Err(wrong_type("metadata", "a mapping or None", obj));
    }
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
fn capabilities(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Arc<str>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(Vec::new());
    };
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "capabilities must be an iterable of str, not a str",
        ));
    }
    let it = obj
        .try_iter()
        .map_err(|_| wrong_type("capabilities", "an iterable of str", obj))?;
    let mut out = Vec::new();
    for item in it {
        let item = item?;
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

fn opt_str(obj: Option<&Bound<'_, PyAny>>, arg: &str) -> PyResult<Option<Arc<str>>> {
    match obj.filter(|o| !o.is_none()) {
        None => Ok(None),
        Some(o) => Ok(Some(rust_str(&args::string(o, arg)?)?)),
    }
}

fn health_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Arc<str>> {
    match obj.filter(|o| !o.is_none()) {
        // Fresh rather than a shared static (see `empty_meta`); the index interns it.
        None => Ok(Arc::from("healthy")),
        Some(o) => rust_str(&args::string(o, "health")?),
    }
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

fn thread_dead(t: &Bound<'_, PyAny>) -> PyResult<bool> {
    // An unstarted thread has no ident yet and is not dead.
    Ok(!t.call_method0("is_alive")?.is_truthy()? && !t.getattr("ident")?.is_none())
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
        if o.call_method0("done")?.is_truthy()? {
            return Err(PyValueError::new_err("owner future is already done"));
        }
        return Ok(OwnerKind::Future(o.clone()));
    }
    Ok(OwnerKind::Weak(o.clone()))
}

// ---- Agent --------------------------------------------------------------------------

/// One registered agent as it was when read. Immutable.
#[pyclass(frozen, module = "ferrule._native", name = "Agent")]
pub struct Agent {
    e: Arc<E>,
}

#[pymethods]
impl Agent {
    #[getter]
    fn agent_id(&self, py: Python<'_>) -> Py<PyString> {
        self.e.reg.id.clone_ref(py)
    }

    #[getter]
    fn value(&self, py: Python<'_>) -> Py<PyAny> {
        self.e.reg.value.clone_ref(py)
    }

    #[getter]
    fn capabilities<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyFrozenSet>> {
        PyFrozenSet::new(py, self.e.caps.iter().map(|c| &**c))
    }

    #[getter]
    fn node(&self) -> Option<&str> {
        self.e.node.as_deref()
    }

    #[getter]
    fn health(&self) -> &str {
        &self.e.health
    }

    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.e.meta.extra {
            Some(d) => mapping_proxy(py)?.call1((d.bind(py),)),
            None => Ok(empty_mapping(py)?.clone()),
        }
    }

    #[getter]
    fn registered_at(&self) -> f64 {
        nanos_to_secs(self.e.registered_at)
    }

    #[getter]
    fn expires_at(&self) -> Option<f64> {
        (self.e.expires_at != NEVER).then(|| nanos_to_secs(self.e.expires_at))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let caps: Vec<String> = self.e.caps.iter().map(|c| py_repr(py, c)).collect();
        format!(
            "Agent(agent_id={}, capabilities={{{}}}, node={}, health={})",
            py_repr(py, &self.e.id),
            caps.join(", "),
            self.e
                .node
                .as_deref()
                .map_or_else(|| "None".to_owned(), |n| py_repr(py, n)),
            py_repr(py, &self.e.health)
        )
    }
}

// ---- where ----------------------------------------------------------------------------

/// A parsed `where` argument.
enum Where {
    None,
    Callable(Py<PyAny>),
    /// The conditions, each with its Python value for the fallback evaluation.
    Conds(Vec<Cond>, Vec<Py<PyAny>>),
}

const WHERE_SHAPE: &str = "where must be a callable or a list of (path, op, value) triples";

fn parse_where(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Where> {
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
    for t in obj.try_iter()? {
        let t = t?;
        let ok = (t.is_instance_of::<PyTuple>() || t.is_instance_of::<PyList>()) && t.len()? == 3;
        if !ok {
            return Err(PyTypeError::new_err(format!(
                "{WHERE_SHAPE}; got an item of type '{}'",
                tname(&t)
            )));
        }
        let path = t.get_item(0)?;
        let op = t.get_item(1)?;
        let value = t.get_item(2)?;
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
        let (v, hashed) = match op {
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
                let items: Vec<Value> = value
                    .try_iter()?
                    .map(|x| x.map(|x| to_value(&x, 1)))
                    .collect::<PyResult<_>>()?;
                (Value::Seq(items.into(), false), hashed)
            }
            _ => (to_value(&value, 0), false),
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

/// The items of a list or tuple value (the values `eq` and `in` also look into).
fn elems<'py>(v: &Bound<'py, PyAny>) -> Option<Vec<Bound<'py, PyAny>>> {
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        v.try_iter()
            .ok()
            .map(|it| it.filter_map(Result::ok).collect())
    } else {
        None
    }
}

/// Python's answer for one condition (used when the core could not decide).
fn py_cond(py: Python<'_>, c: &Cond, q: &Bound<'_, PyAny>, meta: &MetaPy) -> PyResult<bool> {
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
    // A comparison Python refuses (TypeError and the like) is no match.
    let safe = |r: PyResult<bool>| r.unwrap_or(false);
    let cmp = |op: CompareOp| safe(v.rich_compare(q, op).and_then(|r| r.is_truthy()));
    Ok(match c.op {
        Op::Eq => safe(v.eq(q)) || elems(&v).is_some_and(|xs| xs.iter().any(|x| safe(x.eq(q)))),
        Op::Ne => safe(v.ne(q)),
        Op::Gt => cmp(CompareOp::Gt),
        Op::Gte => cmp(CompareOp::Ge),
        Op::Lt => cmp(CompareOp::Lt),
        Op::Lte => cmp(CompareOp::Le),
        Op::In => {
            safe(q.contains(&v))
                || elems(&v).is_some_and(|xs| xs.iter().any(|x| safe(q.contains(x))))
        }
        Op::NotIn => safe(q.contains(&v).map(|b| !b)),
    })
}

fn py_repr(py: Python<'_>, s: &str) -> String {
    PyString::new(py, s)
        .repr()
        .map_or_else(|_| format!("{s:?}"), |r| r.to_string())
}

fn taken(py: Python<'_>, id: &str) -> PyErr {
    Exc::AlreadyRegistered.err(
        py,
        format!("agent id {} is already registered", py_repr(py, id)),
    )
}

// ---- Registry -----------------------------------------------------------------------

/// A concurrent agent directory with secondary indexes, owners and leases.
#[pyclass(frozen, module = "ferrule._native", name = "Registry")]
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
const ITEM_KEYS: [&str; 8] = [
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

    /// Publishes a prepared registration (without attaching its future watch).
    fn publish(&self, py: Python<'_>, p: &mut Option<Spec<RegData, MetaPy>>) -> PyResult<Arc<E>> {
        let Some(spec) = p.take() else {
            return Err(PyValueError::new_err("registration already used"));
        };
        // A finished thread's registration no longer holds its id.
        if let Some(old) = self.core.get(&spec.id) {
            self.drop_if_dead(py, &old)?;
        }
        let mut grave = Grave::new();
        let r = self.core.register(spec, &mut grave);
        self.bury(py, grave, None);
        match r {
            Ok(e) => Ok(e),
            Err(RegistryError::Taken(id)) => Err(taken(py, &id)),
            Err(e @ RegistryError::Missing(_)) => Err(PyKeyError::new_err(e.to_string())),
        }
    }

    /// After a successful publish: attach the future watch, track a thread owner.
    fn attach(
        &self,
        py: Python<'_>,
        e: &Arc<E>,
        future: Option<(Bound<'_, PyAny>, Py<PyAny>)>,
        thread: bool,
    ) -> PyResult<()> {
        if let Some((f, w)) = future {
            if let Err(err) = f.call_method1("add_done_callback", (w,)) {
                drop(self.core.remove_token(&e.id, e.token));
                return Err(err);
            }
        }
        if thread {
            self.threads.lock().push_back((e.id.clone(), e.token));
            self.thread_count.fetch_add(1, Ordering::Relaxed);
        }
        self.sweep_threads(py, SWEEP_BUDGET)?;
        Ok(())
    }

    /// Removes `e` if its owner thread has finished; true if it did.
    fn drop_if_dead(&self, py: Python<'_>, e: &Arc<E>) -> PyResult<bool> {
        if let Owner::Thread(t) = &e.reg.owner {
            if thread_dead(t.bind(py))? {
                drop(self.core.remove_token(&e.id, e.token));
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Checks up to `budget` thread-owned registrations (run with no lock held).
    fn sweep_threads(&self, py: Python<'_>, budget: usize) -> PyResult<usize> {
        if self.thread_count.load(Ordering::Relaxed) == 0 {
            return Ok(0);
        }
        let batch: Vec<(Arc<str>, u64)> = {
            let mut q = self.threads.lock();
            let n = budget.min(q.len());
            q.drain(..n).collect()
        };
        let mut removed = 0;
        for (id, token) in batch {
            let keep = match self.core.get(&id) {
                Some(e) if e.token == token => {
                    if self.drop_if_dead(py, &e)? {
                        removed += 1;
                        false
                    } else {
                        true
                    }
                }
                _ => false,
            };
            if keep {
                self.threads.lock().push_back((id, token));
            } else {
                self.thread_count.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(removed)
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
                    if !f
                        .call_method0("done")
                        .and_then(|d| d.is_truthy())
                        .unwrap_or(true)
                    {
                        // Best effort: a failure only leaves a no-op callback behind.
                        let _ = f.call_method1("remove_done_callback", (watch.bind(py),));
                    }
                }
            }
        }
    }

    fn live(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<Option<Arc<E>>> {
        let id = Self::id_arg(agent_id)?;
        match self.core.get(id) {
            Some(e) if self.drop_if_dead(py, &e)? => Ok(None),
            other => Ok(other),
        }
    }

    /// Entries matching the criteria, owners and `where` checked.
    #[allow(clippy::too_many_arguments)]
    fn select(
        &self,
        py: Python<'_>,
        capability: Option<&Bound<'_, PyAny>>,
        node: Option<&Bound<'_, PyAny>>,
        health: Option<&Bound<'_, PyAny>>,
        where_: Option<&Bound<'_, PyAny>>,
        limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<Arc<E>>> {
        let cap = opt_str(capability, "capability")?;
        let node = opt_str(node, "node")?;
        let health = opt_str(health, "health")?;
        let wh = parse_where(where_)?;
        let limit = match limit.filter(|l| !l.is_none()) {
            Some(l) => Some(args::int_at_least(l, "limit", 0)? as usize),
            None => None,
        };
        let (conds, values, callable): (&[Cond], &[Py<PyAny>], Option<&Py<PyAny>>) = match &wh {
            Where::None => (&[], &[], None),
            Where::Callable(f) => (&[], &[], Some(f)),
            Where::Conds(c, v) => (c, v, None),
        };
        let mut core_limit = if callable.is_some() { None } else { limit };
        loop {
            let q = Query {
                capability: cap.as_deref(),
                node: node.as_deref(),
                health: health.as_deref(),
                conds,
                limit: core_limit,
            };
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
                if hit.unsure {
                    let mut ok = true;
                    for (c, v) in conds.iter().zip(values) {
                        if !py_cond(py, c, v.bind(py), &hit.entry.meta.extra)? {
                            ok = false;
                            break;
                        }
                    }
                    if !ok {
                        continue;
                    }
                }
                if check_owners && self.drop_if_dead(py, &hit.entry)? {
                    continue;
                }
                if let Some(f) = callable {
                    let agent = Agent {
                        e: hit.entry.clone(),
                    };
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
        let mut spec = Some(p.spec);
        let e = self.publish(py, &mut spec)?;
        self.attach(py, &e, p.future, p.thread)
    }

    /// Registers every item or none; returns how many.
    fn register_many(&self, py: Python<'_>, items: &Bound<'_, PyAny>) -> PyResult<usize> {
        let it = items
            .try_iter()
            .map_err(|_| wrong_type("items", "an iterable of dicts", items))?;
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
            raw.push(d.clone());
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
        let mut done: Vec<Arc<E>> = Vec::with_capacity(prepared.len());
        let mut rest = Vec::with_capacity(prepared.len());
        for p in prepared {
            let mut spec = Some(p.spec);
            match self.publish(py, &mut spec) {
                Ok(e) => {
                    done.push(e);
                    rest.push((p.future, p.thread));
                }
                Err(err) => {
                    let mut grave = Grave::new();
                    for e in &done {
                        if let Some(old) = self.core.remove_token(&e.id, e.token) {
                            grave.push(old);
                        }
                    }
                    drop(done);
                    self.bury(py, grave, None);
                    return Err(err);
                }
            }
        }
        for (e, (future, thread)) in done.iter().zip(rest) {
            self.attach(py, e, future, thread)?;
        }
        Ok(done.len())
    }

    /// Removes the agent; True if it was registered (and live).
    fn unregister(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        let id = Self::id_arg(agent_id)?;
        let now = self.core.now();
        let mut grave = Grave::new();
        let removed = self.core.unregister(id, &mut grave);
        let live = match &removed {
            Some(e) => {
                e.is_live(now)
                    && match &e.reg.owner {
                        Owner::Thread(t) => !thread_dead(t.bind(py))?,
                        _ => true,
                    }
            }
            None => false,
        };
        grave.extend(removed);
        self.bury(py, grave, None);
        self.sweep_threads(py, SWEEP_BUDGET)?;
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
        self.sweep_threads(py, SWEEP_BUDGET)?;
        match r {
            Ok(_) => Ok(()),
            Err(_) => Err(PyKeyError::new_err(id.to_owned())),
        }
    }

    /// The agent, or None.
    fn get(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<Option<Agent>> {
        Ok(self.live(py, agent_id)?.map(|e| Agent { e }))
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
    fn expire(&self, py: Python<'_>) -> PyResult<usize> {
        let mut grave = Grave::new();
        let n = self.core.expire(&mut grave);
        self.bury(py, grave, None);
        let t = self.sweep_threads(py, usize::MAX)?;
        Ok(n + t)
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
        Ok(self
            .select(py, capability, node, health, r#where, limit)?
            .into_iter()
            .map(|e| Agent { e })
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
        Ok(self
            .select(py, capability, node, health, r#where, limit)?
            .len())
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
        Ok(self
            .select(py, capability, node, health, r#where, limit)?
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

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        let mut grave = Grave::new();
        self.core.reclaim_due(&mut grave);
        self.bury(py, grave, None);
        self.sweep_threads(py, usize::MAX)?;
        Ok(self.core.len())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("Registry(len={})", self.__len__(py)?))
    }

    /// Index keys and lease items held (for tests of reclamation).
    fn _index_sizes(&self) -> (usize, usize, usize, usize) {
        let s = self.core.index_sizes();
        (s.capabilities, s.nodes, s.health, s.lease_items)
    }
}
