//! Arguments of the `Registry` binding as the core's values: ids, capabilities, node and
//! health strings, metadata (a host copy and its comparable [`Value`] tree), and any
//! Python value as a [`Value`] tree for `where` conditions.
//!
//! A caller's container (metadata dicts at any depth, lists in them, `capabilities`,
//! `where` and its values, `register_many` items) may be changed by another thread while
//! it is read on a free-threaded build. Each one is first copied in one step
//! ([`snapshot`], `PyDict_Copy`: CPython copies a builtin container under its own lock),
//! and only the private copy is iterated; a container of another type is iterated
//! through Python's protocol, whose failures are ordinary exceptions.
//!
//! Only exact builtin types are looked into when a tree is made; anything else, and
//! anything nested deeper than [`MAX_DEPTH`], is [`Value::Opaque`] and compared by Python.

use std::collections::HashSet;
use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyMapping, PyString, PyTuple};

use crate::core::registry::{normalize_caps, Changes, Metadata, RegistryError, Value, MAX_INDEXES};
use crate::errors::{registry_error, wrong_type};
use crate::py::args;
use crate::py::registry::MetaPy;

/// Nesting depth beyond which a metadata or `where` value is left opaque (compared by
/// Python, which bounds its own recursion). It bounds every recursion over a tree here
/// and in the core, so deep nesting can never exhaust the Rust stack.
const MAX_DEPTH: u32 = 32;

/// The name of `obj`'s type, for messages.
pub fn tname(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |n| n.to_string())
}

pub fn rust_str(s: &Bound<'_, PyString>) -> PyResult<Arc<str>> {
    Ok(Arc::from(s.to_str()?))
}

/// `agent_id` as a borrowed str (TypeError for anything but a str).
pub fn id_arg<'a>(agent_id: &'a Bound<'_, PyAny>) -> PyResult<&'a str> {
    match agent_id.cast::<PyString>() {
        Ok(s) => s.to_str(),
        Err(_) => Err(wrong_type("agent_id", "a str", agent_id)),
    }
}

/// An exact list, tuple, set, frozenset or dict: a container CPython copies in one step.
pub fn is_builtin_container(obj: &Bound<'_, PyAny>) -> bool {
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
pub fn snapshot<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
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
pub fn to_value(obj: &Bound<'_, PyAny>, depth: u32) -> Value {
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
    Value::map(items)
}

/// `metadata`: None or a mapping with str keys, copied (shallowly) into a new dict.
pub fn metadata(py: Python<'_>, obj: Option<&Bound<'_, PyAny>>) -> PyResult<Arc<Metadata<MetaPy>>> {
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
pub fn capabilities(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Arc<str>>> {
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

/// None or a str named `arg`.
pub fn opt_str(obj: Option<&Bound<'_, PyAny>>, arg: &str) -> PyResult<Option<Arc<str>>> {
    match obj.filter(|o| !o.is_none()) {
        None => Ok(None),
        Some(o) => Ok(Some(rust_str(&args::string(o, arg)?)?)),
    }
}

/// `health` of a registration: a str, `"healthy"` when absent.
pub fn health_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Arc<str>> {
    match obj.filter(|o| !o.is_none()) {
        // Fresh rather than a shared static (see `empty_meta`); the index interns it.
        None => Ok(Arc::from("healthy")),
        Some(o) => rust_str(&args::string(o, "health")?),
    }
}

// The argument rules of the writes below are shared with the Redis tier (`py::redis`),
// which takes the same arguments and must refuse the same ones with the same errors.

/// `Registry(max_batch=...)`'s rule: an int >= 1.
pub fn max_batch_arg(max_batch: i64) -> PyResult<usize> {
    // An i64 >= 1 fits a usize on 64-bit targets; a larger one than a usize holds could
    // never be reached anyway.
    Ok(usize::try_from(args::at_least(max_batch, "max_batch", 1)?).unwrap_or(usize::MAX))
}

/// `Registry(indexes=...)`: None, or an iterable of distinct dotted metadata paths (str,
/// no empty segment), at most [`MAX_INDEXES`] of them. A bare str is refused, as for
/// `capabilities`.
pub fn indexes_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Box<str>>> {
    const WHAT: &str = "an iterable of str paths";
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(Vec::new());
    };
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "indexes must be {WHAT}, not a str"
        )));
    }
    let items = if is_builtin_container(obj) {
        snapshot(obj)?
    } else {
        let it = args::iterate(obj, "indexes", WHAT)?;
        snapshot(it.as_any())?
    };
    let mut out: Vec<Box<str>> = Vec::with_capacity(items.len().min(MAX_INDEXES));
    for item in items.iter() {
        let s = item.cast::<PyString>().map_err(|_| {
            PyTypeError::new_err(format!(
                "indexes must contain only str paths, not '{}'",
                tname(&item)
            ))
        })?;
        let path = s.to_str()?;
        if path.split('.').any(str::is_empty) {
            return Err(PyValueError::new_err(format!(
                "indexes must hold dotted paths without empty segments, not {}",
                s.repr()?
            )));
        }
        if out.iter().any(|p| **p == *path) {
            return Err(PyValueError::new_err(format!(
                "indexes lists {} twice",
                s.repr()?
            )));
        }
        if out.len() == MAX_INDEXES {
            return Err(PyValueError::new_err(format!(
                "indexes must hold at most {MAX_INDEXES} paths"
            )));
        }
        out.push(path.into());
    }
    Ok(out)
}

/// AlreadyRegistered for `id` (see `errors::registry_error`).
pub fn taken(py: Python<'_>, id: &str) -> PyErr {
    registry_error(py, RegistryError::Taken(id.into()))
}

/// A registration's fields but its value and owner, converted in `register()`'s order.
pub struct Fields<'py> {
    /// `agent_id` as given (a str, maybe of a subclass).
    pub id_py: Bound<'py, PyString>,
    pub id: Arc<str>,
    pub caps: Vec<Arc<str>>,
    pub node: Option<Arc<str>>,
    pub health: Arc<str>,
    pub meta: Arc<Metadata<MetaPy>>,
    pub ttl: Option<i64>,
}

impl<'py> Fields<'py> {
    pub fn from_args(
        py: Python<'py>,
        agent_id: &Bound<'py, PyAny>,
        caps: Option<&Bound<'py, PyAny>>,
        node: Option<&Bound<'py, PyAny>>,
        health: Option<&Bound<'py, PyAny>>,
        meta: Option<&Bound<'py, PyAny>>,
        ttl: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Self> {
        let id_py = args::string(agent_id, "agent_id")?;
        let id = rust_str(&id_py)?;
        Ok(Self {
            id_py,
            id,
            caps: capabilities(caps)?,
            node: opt_str(node, "node")?,
            health: health_arg(health)?,
            meta: metadata(py, meta)?,
            ttl: args::opt_positive_nanos(ttl, "ttl")?,
        })
    }
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

/// One `register_many` item, its keys checked; an absent key is None.
pub struct Item<'py> {
    pub agent_id: Bound<'py, PyAny>,
    pub value: Option<Bound<'py, PyAny>>,
    pub capabilities: Option<Bound<'py, PyAny>>,
    pub node: Option<Bound<'py, PyAny>>,
    pub health: Option<Bound<'py, PyAny>>,
    pub metadata: Option<Bound<'py, PyAny>>,
    pub owner: Option<Bound<'py, PyAny>>,
    pub ttl: Option<Bound<'py, PyAny>>,
}

impl<'py> Item<'py> {
    /// Reads a private copy of an item: every key known, `agent_id` present.
    fn read(d: &Bound<'py, PyDict>) -> PyResult<Self> {
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
        Ok(Self {
            agent_id,
            value: get("value")?,
            capabilities: get("capabilities")?,
            node: get("node")?,
            health: get("health")?,
            metadata: get("metadata")?,
            owner: get("owner")?,
            ttl: get("ttl")?,
        })
    }

    /// The item's fields, as `register()` converts them.
    pub fn fields(&self, py: Python<'py>) -> PyResult<Fields<'py>> {
        Fields::from_args(
            py,
            &self.agent_id,
            self.capabilities.as_ref(),
            self.node.as_ref(),
            self.health.as_ref(),
            self.metadata.as_ref(),
            self.ttl.as_ref(),
        )
    }
}

/// `register_many(items)`'s checks: a private copy of a builtin container, at most
/// `max_batch` items, every item a dict copied before any is checked (what is checked is
/// what is registered), then each item read and handed to `each` in turn, which converts
/// it and returns its id with what it made of it; an id given twice is refused
/// (AlreadyRegistered). Returns what `each` made, in order.
pub fn register_items<'py, T>(
    py: Python<'py>,
    items: &Bound<'py, PyAny>,
    max_batch: usize,
    mut each: impl FnMut(Item<'py>) -> PyResult<(Arc<str>, T)>,
) -> PyResult<Vec<T>> {
    let source = if is_builtin_container(items) {
        snapshot(items)?.into_any()
    } else {
        items.clone()
    };
    let it = source
        .try_iter()
        .map_err(|e| args::not_iterable(e, items, "items", "an iterable of dicts"))?;
    let mut raw: Vec<Bound<'py, PyDict>> = Vec::new();
    for item in it {
        let item = item?;
        if raw.len() == max_batch {
            return Err(PyValueError::new_err(format!(
                "items must hold at most max_batch ({max_batch}) items"
            )));
        }
        let d = item
            .cast::<PyDict>()
            .map_err(|_| wrong_type("items", "an iterable of dicts", &item))?;
        raw.push(d.copy()?);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut seen = HashSet::new();
    for d in &raw {
        let (id, made) = each(Item::read(d)?)?;
        if !seen.insert(id.clone()) {
            return Err(taken(py, &id));
        }
        out.push(made);
    }
    Ok(out)
}

/// `update()`'s `**changes` (`capabilities`, `node`, `health`, `metadata`), converted in
/// the order given; any other keyword is refused.
pub fn changes_arg(py: Python<'_>, kw: Option<&Bound<'_, PyDict>>) -> PyResult<Changes<MetaPy>> {
    let mut ch = Changes {
        caps: None,
        node: None,
        health: None,
        meta: None,
    };
    let Some(kw) = kw else {
        return Ok(ch);
    };
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
    Ok(ch)
}
