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

use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyMapping, PyString, PyTuple};

use crate::core::registry::{Metadata, Value};
use crate::errors::wrong_type;
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
