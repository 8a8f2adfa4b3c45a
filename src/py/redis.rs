//! Private helpers of `ferrule.redis`, the Redis tier: a limiter and a registry whose
//! state lives in Redis, written in Python around server-side Lua scripts.
//!
//! The Redis classes take the same arguments as `RateLimiter` and `Registry` and must
//! refuse the same bad ones with the same errors, so their rules are not written again in
//! Python: every function here applies the in-process bindings' own converters
//! (`crate::py::args`, the registry's argument functions in `crate::py::registry`, the
//! core's `Gcra`) in the order those bindings apply them, and hands the Python layer
//! plain values to send to the server. What only the Redis tier has (its key encoding,
//! the smaller window Lua's doubles allow) is here too, so that it is written once.
//!
//! A `where` of conditions is parsed by the registry's own parser into a [`ParsedWhere`]
//! and evaluated on an agent's metadata as the registry evaluates it: on the core's value
//! tree, with Python deciding only what the tree cannot (see `core::registry::Cond`).
//!
//! Nothing here holds a lock while Python code runs: the one lock (the `ParsedWhere`'s
//! values, for the garbage collector) is held only to clone references.

use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::clock;
use crate::core::registry::{normalize_caps, Cond, Metadata, Tri};
use crate::errors::wrong_type;
use crate::py::args::{self, Held};
use crate::py::ratelimit::{cost_arg, limit_args, per_given, spec_args, timeout_secs, RateArgs};
use crate::py::ratelimit_key::MAX_DEPTH;
use crate::py::registry::MetaPy;
use crate::py::registry_args::{self, changes_arg, max_batch_arg, register_items, taken, Fields};
use crate::py::registry_query::{parse_where, py_cond, Criteria, Where};

/// Largest window `burst * interval` in nanoseconds: the GCRA script's relative
/// quantities then stay below 2^53, where Lua's doubles are exact integers.
const MAX_WINDOW: u64 = 1 << 52;

/// What a Redis key describes (`key`'s kind, for the refusal).
const KEY_KINDS: &str = "None, str, int, bytes or a tuple of those";

// ---- the rate limiter --------------------------------------------------------------------

/// One limit's `(rate, per, interval_ns, burst, tau_ns)`, refused beyond the Redis
/// tier's window bound.
type Window = (f64, f64, u64, u64, u64);

/// A limit by `RateLimiter`'s rules, then the Redis tier's window bound.
fn redis_window(r: &RateArgs) -> PyResult<Window> {
    let gcra = r.gcra()?;
    if gcra.tau() > MAX_WINDOW {
        // As the core names it: the rate when the interval alone is too long or the
        // burst is the default one, else the burst.
        let arg = if r.burst.is_some() && gcra.interval() <= MAX_WINDOW {
            "burst"
        } else {
            "rate"
        };
        return Err(PyValueError::new_err(format!(
            "{arg} is out of range: burst * per / rate must be at most 52 days"
        )));
    }
    Ok((r.rate, r.per, gcra.interval(), gcra.burst(), gcra.tau()))
}

/// `RateLimiter(rate, per, burst=...)`'s rules, then the Redis tier's window bound:
/// `(rate, per, interval_ns, burst, tau_ns)`.
#[pyfunction]
#[pyo3(signature = (rate, per = 1.0, burst = None))]
pub fn _gcra_params(
    rate: &Bound<'_, PyAny>,
    #[pyo3(from_py_with = args::named::per)] per: f64,
    burst: Option<&Bound<'_, PyAny>>,
) -> PyResult<Window> {
    redis_window(&RateArgs::from_args(rate, per, burst)?)
}

/// `RateLimiter(rate, per, burst=..., limits=...)`'s rules (either form), then the Redis
/// tier's window bound on each limit: one `(rate, per, interval_ns, burst, tau_ns)` per
/// limit, in order.
#[pyfunction]
#[pyo3(
    signature = (rate = None, per = None, burst = None, limits = None),
    // `per`'s default is 1.0 (`per_given` tells "not given" apart, as in `RateLimiter`).
    text_signature = "(rate=None, per=1.0, burst=None, limits=None)"
)]
pub fn _gcra_windows(
    py: Python<'_>,
    rate: Option<&Bound<'_, PyAny>>,
    #[pyo3(from_py_with = per_given)] per: Option<f64>,
    burst: Option<&Bound<'_, PyAny>>,
    limits: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<Window>> {
    let several = limits.is_some_and(|l| !l.is_none());
    let args = limit_args(rate, per, burst, limits)?;
    args.iter()
        .enumerate()
        .map(|(i, r)| {
            redis_window(r).map_err(|e| {
                if several {
                    PyValueError::new_err(format!("limits[{i}]: {}", e.value(py)))
                } else {
                    e
                }
            })
        })
        .collect()
}

/// `RateLimiter.parse(spec)`'s rules, then the Redis tier's window bound on each limit:
/// as [`_gcra_windows`].
#[pyfunction]
pub fn _spec_windows(spec: &Bound<'_, PyAny>) -> PyResult<Vec<Window>> {
    spec_args(spec)?.iter().map(redis_window).collect()
}

/// A request's `cost` (absent or None: 1) by `RateLimiter`'s rule, for a bucket of
/// capacity `burst`.
#[pyfunction]
#[pyo3(signature = (cost, burst))]
pub fn _check_cost(cost: Option<&Bound<'_, PyAny>>, burst: u64) -> PyResult<u64> {
    cost_arg(cost.map_or(Ok(1), |c| args::int(c, "cost"))?, burst)
}

/// `acquire(timeout=...)`'s rule: None, or the timeout in seconds (whole nanoseconds).
#[pyfunction]
pub fn _timeout(timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<f64>> {
    timeout_secs(timeout)
}

/// A limiter key as the bytes that name its bucket in Redis (after the prefix): tagged
/// by kind, by value, so that every process finds the same bucket for equal keys.
/// `None` is `n:`, a str `s:` and its UTF-8 (lone surrogates passed through), an int
/// `i:` and its decimal digits (a bool is the int it equals), bytes `b:` and the bytes,
/// a tuple `t:` and each item's encoding preceded by its length and `:`. Subclasses are
/// encoded by their value. Tuples nest at most as deep as `RateLimiter`'s native keys.
#[pyfunction]
pub fn _redis_key<'py>(key: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::with_capacity(32);
    encode_key(key, 0, &mut out)?;
    Ok(PyBytes::new(key.py(), &out))
}

fn encode_key(key: &Bound<'_, PyAny>, depth: u32, out: &mut Vec<u8>) -> PyResult<()> {
    let py = key.py();
    if key.is_none() {
        out.extend_from_slice(b"n:");
    } else if let Ok(s) = key.cast::<PyString>() {
        out.extend_from_slice(b"s:");
        match s.to_str() {
            Ok(text) => out.extend_from_slice(text.as_bytes()),
            Err(_) => {
                // Lone surrogates: their UTF-8 form, as `surrogatepass` writes it.
                // SAFETY: `s` is a live str; the call returns a new reference to a bytes
                // object or NULL with an exception set.
                let b = unsafe {
                    Bound::from_owned_ptr_or_err(
                        py,
                        ffi::PyUnicode_AsEncodedString(
                            s.as_ptr(),
                            c"utf-8".as_ptr(),
                            c"surrogatepass".as_ptr(),
                        ),
                    )?
                };
                out.extend_from_slice(b.cast::<PyBytes>()?.as_bytes());
            }
        }
    } else if let Ok(i) = key.cast::<PyInt>() {
        out.extend_from_slice(b"i:");
        if let Ok(v) = i.extract::<i64>() {
            out.extend_from_slice(v.to_string().as_bytes());
        } else {
            // The int's value in decimal, whatever a subclass's `__repr__` says (Python's
            // limit on digits applies: ValueError beyond it).
            // SAFETY: `i` is a live int; PyNumber_ToBase returns a new reference or NULL.
            let s =
                unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyNumber_ToBase(i.as_ptr(), 10))? };
            out.extend_from_slice(s.cast::<PyString>()?.to_str()?.as_bytes());
        }
    } else if let Ok(b) = key.cast::<PyBytes>() {
        out.extend_from_slice(b"b:");
        out.extend_from_slice(b.as_bytes());
    } else if let Ok(t) = key.cast::<PyTuple>() {
        if depth >= MAX_DEPTH {
            return Err(PyTypeError::new_err(format!(
                "key must not nest tuples more than {MAX_DEPTH} deep"
            )));
        }
        out.extend_from_slice(b"t:");
        let mut part = Vec::new();
        // The tuple's own items (a subclass's `__iter__` is not asked).
        for item in t.iter() {
            part.clear();
            encode_key(&item, depth + 1, &mut part)?;
            out.extend_from_slice(part.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(&part);
        }
    } else {
        return Err(wrong_type("key", KEY_KINDS, key));
    }
    Ok(())
}

// ---- the registry ------------------------------------------------------------------------

/// A str argument as an exact str, refused as the registry refuses ids: not a str, or
/// not encodable to UTF-8 (lone surrogates).
fn exact_str<'py>(obj: &Bound<'py, PyAny>, arg: &str) -> PyResult<Bound<'py, PyString>> {
    let s = args::string(obj, arg)?;
    let text = s.to_str()?;
    if s.is_exact_instance_of::<PyString>() {
        Ok(s)
    } else {
        Ok(PyString::new(obj.py(), text))
    }
}

/// A Redis class's `prefix`: a str.
#[pyfunction]
pub fn _prefix<'py>(prefix: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyString>> {
    exact_str(prefix, "prefix")
}

/// An `agent_id` argument, by the registry's rule.
#[pyfunction]
pub fn _agent_id<'py>(agent_id: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyString>> {
    exact_str(agent_id, "agent_id")
}

/// A lease `ttl` in nanoseconds by the registry's rule (a number of seconds > 0); None
/// passes unless `required`.
#[pyfunction]
#[pyo3(signature = (ttl, required = false))]
pub fn _ttl(ttl: &Bound<'_, PyAny>, required: bool) -> PyResult<Option<i64>> {
    if required {
        Ok(Some(clock::positive_nanos(
            args::seconds(ttl, "ttl")?,
            "ttl",
        )?))
    } else {
        args::opt_positive_nanos(Some(ttl), "ttl")
    }
}

/// `Registry(max_batch=...)`'s rule.
#[pyfunction]
pub fn _max_batch(
    #[pyo3(from_py_with = args::named::max_batch)] max_batch: i64,
) -> PyResult<usize> {
    max_batch_arg(max_batch)
}

/// The `AlreadyRegistered` error for an id, with the registry's message.
#[pyfunction]
pub fn _already_registered(py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let id = exact_str(agent_id, "agent_id")?;
    Ok(taken(py, id.to_str()?).into_value(py).into_any())
}

/// Sorted, duplicate-free capabilities as a list of str.
fn caps_list(py: Python<'_>, caps: Vec<Arc<str>>) -> PyResult<Bound<'_, PyList>> {
    PyList::new(py, normalize_caps(caps).iter().map(|c| &**c))
}

/// The metadata dict a registration keeps (a private shallow copy; empty for None).
fn meta_dict<'py>(py: Python<'py>, meta: &Metadata<MetaPy>) -> Bound<'py, PyDict> {
    meta.extra
        .as_ref()
        .map_or_else(|| PyDict::new(py), |d| d.bind(py).clone())
}

/// A registration's fields as the row `_registration` returns, the id an exact str.
fn row<'py>(py: Python<'py>, f: Fields<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let id = if f.id_py.is_exact_instance_of::<PyString>() {
        f.id_py
    } else {
        PyString::new(py, &f.id)
    };
    Ok(vec![
        id.into_any(),
        caps_list(py, f.caps)?.into_any(),
        f.node.as_deref().into_pyobject(py)?.into_any(),
        PyString::new(py, &f.health).into_any(),
        meta_dict(py, &f.meta).into_any(),
        f.ttl.into_pyobject(py)?.into_any(),
    ])
}

/// `register()`'s checks: `(agent_id, capabilities, node, health, metadata, ttl_ns)`
/// with the capabilities sorted and deduplicated and the metadata a new dict.
#[pyfunction]
#[pyo3(signature = (agent_id, capabilities = None, node = None, health = None, metadata = None, ttl = None))]
pub fn _registration<'py>(
    py: Python<'py>,
    agent_id: &Bound<'py, PyAny>,
    capabilities: Option<&Bound<'py, PyAny>>,
    node: Option<&Bound<'py, PyAny>>,
    health: Option<&Bound<'py, PyAny>>,
    metadata: Option<&Bound<'py, PyAny>>,
    ttl: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let f = Fields::from_args(py, agent_id, capabilities, node, health, metadata, ttl)?;
    PyTuple::new(py, row(py, f)?)
}

/// `register_many()`'s checks: one `_registration` tuple per item, followed by the
/// item's `value` and `owner` (None when absent). Refuses what the registry refuses:
/// more than `max_batch` items, an item that is not a dict or has an unknown key or no
/// `agent_id`, and an id given twice (`AlreadyRegistered`).
#[pyfunction]
pub fn _registrations<'py>(
    py: Python<'py>,
    items: &Bound<'py, PyAny>,
    max_batch: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let max_batch = max_batch_arg(args::int(max_batch, "max_batch")?)?;
    let rows = register_items(py, items, max_batch, |item| {
        let f = item.fields(py)?;
        let id = f.id.clone();
        let mut row = row(py, f)?;
        let none = || py.None().into_bound(py);
        row.push(item.value.unwrap_or_else(none));
        row.push(item.owner.unwrap_or_else(none));
        Ok((id, PyTuple::new(py, row)?))
    })?;
    PyList::new(py, rows)
}

/// `update()`'s checks: the given changes (`capabilities`, `node`, `health`,
/// `metadata`), converted as `_registration` converts them; any other keyword is refused.
#[pyfunction]
#[pyo3(signature = (**changes))]
pub fn _changes<'py>(
    py: Python<'py>,
    changes: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    let ch = changes_arg(py, changes)?;
    let out = PyDict::new(py);
    if let Some(caps) = ch.caps {
        out.set_item("capabilities", PyList::new(py, caps.iter().map(|c| &**c))?)?;
    }
    if let Some(node) = ch.node {
        out.set_item("node", node.as_deref())?;
    }
    if let Some(health) = ch.health {
        out.set_item("health", &*health)?;
    }
    if let Some(meta) = ch.meta {
        out.set_item("metadata", meta_dict(py, &meta))?;
    }
    Ok(out)
}

/// `find()`'s criteria, checked in the registry's order: `(capability, node, health,
/// where, limit)`, where `where` is None, the caller's callable, or a [`ParsedWhere`]
/// for `_match_where`, and a limit too large for any count is `sys.maxsize`-like.
#[pyfunction]
#[pyo3(signature = (capability = None, node = None, health = None, r#where = None, limit = None))]
pub fn _criteria<'py>(
    py: Python<'py>,
    capability: Option<&Bound<'py, PyAny>>,
    node: Option<&Bound<'py, PyAny>>,
    health: Option<&Bound<'py, PyAny>>,
    r#where: Option<&Bound<'py, PyAny>>,
    limit: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let c = Criteria::from_args(capability, node, health, r#where, limit)?;
    let wh: Option<Py<PyAny>> = match c.wh {
        Where::None => None,
        Where::Callable(f) => Some(f),
        Where::Conds(conds, values) => {
            Some(Py::new(py, ParsedWhere::new(conds, values))?.into_any())
        }
    };
    PyTuple::new(
        py,
        [
            c.capability.as_deref().into_pyobject(py)?.into_any(),
            c.node.as_deref().into_pyobject(py)?.into_any(),
            c.health.as_deref().into_pyobject(py)?.into_any(),
            wh.into_pyobject(py)?.into_any(),
            c.limit.into_pyobject(py)?.into_any(),
        ],
    )
}

/// A `where` list of conditions, parsed by the registry's parser.
#[pyclass(frozen, module = "ferrule._native", name = "_Where")]
pub struct ParsedWhere {
    conds: Box<[Cond]>,
    /// Each condition's value as Python compares it (the registry's private copy), for
    /// what the value tree cannot decide. `None` once the garbage collector cleared it.
    values: Held<Vec<Py<PyAny>>>,
}

impl ParsedWhere {
    fn new(conds: Vec<Cond>, values: Vec<Py<PyAny>>) -> Self {
        Self {
            conds: conds.into(),
            values: Held::new(Some(values)),
        }
    }
}

#[pymethods]
impl ParsedWhere {
    /// Parses a list of `(path, op, value)` conditions (None: no condition) as
    /// `Registry.find` parses its `where`; a callable is refused here.
    #[new]
    #[pyo3(signature = (r#where = None))]
    fn py_new(r#where: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        match parse_where(r#where)? {
            Where::None => Ok(Self::new(Vec::new(), Vec::new())),
            Where::Conds(conds, values) => Ok(Self::new(conds, values)),
            Where::Callable(_) => Err(PyTypeError::new_err(
                "where must be a list of (path, op, value) triples here, not a callable",
            )),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.values.try_visit(|vs| {
            for v in vs {
                visit.call(v)?;
            }
            Ok(())
        })
    }

    fn __clear__(&self) {
        let values = self.values.take();
        drop(values); // after unlocking: dropping may run finalizers
    }
}

/// Whether `metadata` (a mapping with str keys) meets every condition of `where` (a
/// [`ParsedWhere`] from `_criteria`; None meets nothing to check, so True), decided as
/// `Registry.find` decides it: a missing path never matches, a comparison Python refuses
/// is no match, `eq` and `in` also match an element of a list.
#[pyfunction]
pub fn _match_where(
    py: Python<'_>,
    r#where: Option<&Bound<'_, PyAny>>,
    metadata: &Bound<'_, PyAny>,
) -> PyResult<bool> {
    let Some(w) = r#where.filter(|w| !w.is_none()) else {
        return Ok(true);
    };
    let w = w
        .cast::<ParsedWhere>()
        .map_err(|_| wrong_type("where", "a parsed where (from _criteria) or None", w))?
        .get();
    let values: Vec<Py<PyAny>> = w
        .values
        .with(|v| v.map(|vs| vs.iter().map(|x| x.clone_ref(py)).collect()))
        .ok_or_else(|| {
            PyRuntimeError::new_err("this _Where was cleared by the garbage collector")
        })?;
    let meta = registry_args::metadata(py, Some(metadata))?;
    for (cond, value) in w.conds.iter().zip(&values) {
        let ok = match cond.eval(&meta.tree) {
            Tri::Yes => true,
            Tri::No => false,
            Tri::Unknown => py_cond(py, cond, value.bind(py), &meta.extra)?,
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}
