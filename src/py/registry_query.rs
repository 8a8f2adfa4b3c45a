//! The criteria of `Registry.find`, `count` and `ids`: parsed once into [`Criteria`]
//! ([`Criteria::from_args`]) and run by one routine ([`Criteria::run`]) that hands each
//! match to its caller: `find` and `ids` collect the entries, `count` only counts them.
//!
//! The core decides what it can under its shard guards ([`core::Registry::select`]):
//! the indexed criteria, liveness, and every `where` condition whose answer is certain
//! from the values alone. What only Python can decide is judged here, after the core has
//! released every guard: a condition the core left undecided (an opaque value; see
//! [`py_cond`], which gives Python's own answer), a callable `where`, and whether a
//! thread owner is still running. So `count` copies out only the entries that need
//! Python, and a result never holds an agent that did not match when it was read.
//!
//! `ids` and `count` of one capability, node or health and nothing else answer from the
//! registry's [`Memo`] while the core's stamp of that value's rows says its answer
//! still holds, and store the answer of a read the core calls clean.

use std::sync::Arc;

use pyo3::basic::CompareOp;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFrozenSet, PyInt, PyList, PySet, PyTuple};

use crate::core::registry::{self as core, Clean, Cond, Op, Value};
use crate::errors::wrong_type;
use crate::py::registry::{Core, MetaPy, E};
use crate::py::registry_agent::Agent;
use crate::py::registry_args::{opt_str, snapshot, tname, to_value};
use crate::py::registry_memo::{Kept, KeptNow, Kind, Memo, MEMO_AT};
use crate::py::registry_owner::{drop_if_dead, is_thread};
use crate::py::{args, wait};

/// Queries reading more entries than this release the GIL while the core scans.
const DETACH_AT: usize = 256;

/// A parsed `where` argument.
pub enum Where {
    None,
    Callable(Py<PyAny>),
    /// The conditions, each with its Python value for the fallback evaluation: for `in`
    /// and `not_in`, and for a list or dict, the private copy the condition was made
    /// from, so every candidate is judged against one value.
    Conds(Vec<Cond>, Vec<Py<PyAny>>),
}

/// What `find`, `count` and `ids` ask for: the AND of the given criteria.
pub struct Criteria {
    pub capability: Option<Arc<str>>,
    pub node: Option<Arc<str>>,
    pub health: Option<Arc<str>>,
    pub wh: Where,
    pub limit: Option<usize>,
}

impl Criteria {
    /// The five keyword arguments `find`, `count` and `ids` share, checked.
    pub fn from_args(
        capability: Option<&Bound<'_, PyAny>>,
        node: Option<&Bound<'_, PyAny>>,
        health: Option<&Bound<'_, PyAny>>,
        where_: Option<&Bound<'_, PyAny>>,
        limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        Ok(Self {
            capability: opt_str(capability, "capability")?,
            node: opt_str(node, "node")?,
            health: opt_str(health, "health")?,
            wh: parse_where(where_)?,
            limit: limit_arg(limit)?,
        })
    }

    /// The core's form of these criteria.
    fn query(&self) -> core::Query<'_> {
        core::Query {
            capability: self.capability.as_deref(),
            node: self.node.as_deref(),
            health: self.health.as_deref(),
            conds: match &self.wh {
                Where::Conds(conds, _) => conds,
                _ => &[],
            },
            limit: self.limit,
        }
    }

    /// Where the memo keeps these criteria's answer: the one value of a query the core
    /// can stamp (no `where`, exactly one of capability, node and health).
    fn memo_key(&self) -> Option<(Kind, &Arc<str>)> {
        if !matches!(self.wh, Where::None) {
            return None;
        }
        match (&self.capability, &self.node, &self.health) {
            (Some(c), None, None) => Some((Kind::Capability, c)),
            (None, Some(n), None) => Some((Kind::Node, n)),
            (None, None, Some(h)) => Some((Kind::Health, h)),
            _ => None,
        }
    }

    /// The memo's key and the stamp of its rows now, for a query big enough to keep.
    fn stamped(&self, core: &Core) -> Option<((Kind, &Arc<str>), core::Stamp)> {
        let key = self.memo_key()?;
        match core.stamp(&self.query()) {
            Some((stamp, n)) if n >= MEMO_AT => Some((key, stamp)),
            _ => None,
        }
    }

    /// A list of a kept answer's first `limit` items (all without a limit).
    fn cut<'py>(&self, t: &Bound<'py, PyTuple>) -> PyResult<Bound<'py, PyList>> {
        match self.limit {
            Some(l) if l < t.len() => t.get_slice(0, l).as_sequence().to_list(),
            _ => t.as_sequence().to_list(),
        }
    }

    /// `ids`: the memo's answer while it holds (a copy, cut to `limit`); otherwise the
    /// entries are read, and the answer kept when the read was clean.
    pub fn ids<'py>(
        &self,
        py: Python<'py>,
        core: &Core,
        memo: &Memo,
    ) -> PyResult<Bound<'py, PyList>> {
        let stamped = self.stamped(core);
        if let Some(((kind, value), stamp)) = stamped {
            if let Some(t) = memo.ids(py, kind, value, stamp, core.now()) {
                return self.cut(&t);
            }
        }
        let mut out = Vec::new();
        let (n, clean) = self.run_noting(py, core, |e| out.push(e.clone()))?;
        let ids = out.iter().map(|e| e.reg.id.bind(py));
        if let (Some(((kind, value), _)), Some(clean)) = (stamped, clean) {
            let t = PyTuple::new(py, ids)?;
            let list = t.as_sequence().to_list()?;
            memo.put(kind, value, clean, n, Some(t.unbind()), None);
            return Ok(list);
        }
        PyList::new(py, ids)
    }

    /// `find`: the memo's Agents while its answer holds (a copy, cut to `limit`), each
    /// still showing its entry's version or replaced by a new Agent of the entry's
    /// current one; otherwise the entries are read, new Agents made, and the answer
    /// kept when the read was clean.
    pub fn find<'py>(
        &self,
        py: Python<'py>,
        core: &Core,
        memo: &Memo,
    ) -> PyResult<Bound<'py, PyList>> {
        let stamped = self.stamped(core);
        if let Some(((kind, value), stamp)) = stamped {
            if let Some(kept) = memo.agents(py, kind, value, stamp, core.now()) {
                if let Some(list) = self.kept_find(py, core, memo, (kind, value), kept)? {
                    return Ok(list);
                }
            }
        }
        let mut out = Vec::new();
        let (n, clean) = self.run_noting(py, core, |e| out.push(e.clone()))?;
        let kept = match (stamped, clean) {
            (Some((key, _)), Some(clean)) if n >= MEMO_AT => {
                let versions: Arc<[(Arc<str>, u64)]> =
                    out.iter().map(|e| (e.id.clone(), e.version)).collect();
                Some((key, clean, versions))
            }
            _ => None,
        };
        let agents = out
            .into_iter()
            .map(|e| Agent::object(py, e))
            .collect::<PyResult<Vec<_>>>()?;
        if let Some(((kind, value), clean, versions)) = kept {
            let t = PyTuple::new(py, &agents)?;
            let list = t.as_sequence().to_list()?;
            let k = Kept {
                agents: t.unbind(),
                versions,
            };
            memo.put(kind, value, clean, n, None, Some(k));
            return Ok(list);
        }
        PyList::new(py, agents)
    }

    /// The kept answer of `find`, its Agents of entries updated since (by a write the
    /// row's stamp does not see: health, metadata, a lease renewed) made again; `None`
    /// when an entry is gone or the stamp moved meanwhile (then read the entries).
    fn kept_find<'py>(
        &self,
        py: Python<'py>,
        core: &Core,
        memo: &Memo,
        (kind, value): (Kind, &Arc<str>),
        kept: KeptNow<'py>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let t = &kept.agents;
        let n = self.limit.map_or(t.len(), |l| l.min(t.len()));
        let mut changed: Vec<(usize, Arc<E>)> = Vec::new();
        for (i, (id, v)) in kept.versions.iter().take(n).enumerate() {
            match core.changed(id, *v) {
                None => return Ok(None),
                Some(None) => {}
                Some(Some(e)) => changed.push((i, e)),
            }
        }
        if changed.is_empty() {
            return self.cut(t).map(Some);
        }
        // The stamp read before these entries is still theirs: each of them still
        // matched (a writer moves it before an entry leaves the row).
        if core.stamp(&self.query()).map(|(s, _)| s) != Some(kept.clean.stamp) {
            return Ok(None);
        }
        let mut agents: Vec<Bound<'py, PyAny>> = t.iter().take(n).collect();
        let mut versions: Vec<(Arc<str>, u64)> = kept.versions[..n].to_vec();
        for (i, e) in changed {
            versions[i].1 = e.version;
            agents[i] = Agent::object(py, e)?.into_any();
        }
        let list = PyList::new(py, &agents)?;
        if n == t.len() {
            let k = Kept {
                agents: PyTuple::new(py, &agents)?.unbind(),
                versions: versions.into(),
            };
            memo.put(kind, value, kept.clean, kept.count, None, Some(k));
        }
        Ok(Some(list))
    }

    /// `count`: the memo's count while it holds; otherwise counted as the core passes
    /// the matches on (no list is built), and kept when the read was clean.
    pub fn count(&self, py: Python<'_>, core: &Core, memo: &Memo) -> PyResult<usize> {
        let stamped = self.stamped(core);
        if let Some(((kind, value), stamp)) = stamped {
            if let Some(n) = memo.count(kind, value, stamp, core.now()) {
                return Ok(n.min(self.limit.unwrap_or(usize::MAX)));
            }
        }
        let (n, clean) = self.run_noting(py, core, |_| {})?;
        if let (Some(((kind, value), _)), Some(clean)) = (stamped, clean) {
            memo.put(kind, value, clean, n, None, None);
        }
        Ok(n)
    }

    /// Calls `emit` on each matching entry, at most `limit` of them; returns how many.
    /// `emit` runs under a shard guard of the core for the matches the core decides (see
    /// [`core::Registry::select`]): it may clone the `Arc` or count, nothing more.
    pub fn run<F>(&self, py: Python<'_>, core: &Core, emit: F) -> PyResult<usize>
    where
        F: FnMut(&Arc<E>) + Send,
    {
        self.run_noting(py, core, emit).map(|(n, _)| n)
    }

    /// [`Criteria::run`], with the core's word on whether the matches were the whole of
    /// a stamped row ([`core::Selected::clean`]; never when Python judged any).
    fn run_noting<F>(
        &self,
        py: Python<'_>,
        core: &Core,
        mut emit: F,
    ) -> PyResult<(usize, Option<Clean>)>
    where
        F: FnMut(&Arc<E>) + Send,
    {
        let cap = self.limit.unwrap_or(usize::MAX);
        if cap == 0 {
            return Ok((0, None));
        }
        let callable = match &self.wh {
            Where::Callable(f) => Some(f),
            _ => None,
        };
        let q = self.query();
        // Python judges every match of a callable `where`, and each thread-owned one.
        let by_python = callable.is_some();
        let host = |e: &E| by_python || (core.host_checks() && is_thread(e));
        let sel = if core.estimate(&q) > DETACH_AT {
            wait::detach(py, || core.select(&q, host, &mut emit))
        } else {
            core.select(&q, host, &mut emit)
        };
        let mut n = sel.sure;
        let clean = sel.clean;
        for hit in sel.deferred {
            if n >= cap {
                break;
            }
            let e = &hit.entry;
            if hit.unsure && !self.py_conds(py, e)? {
                continue;
            }
            if drop_if_dead(py, core, e) {
                continue;
            }
            if let Some(f) = callable {
                let agent = Agent::object(py, e.clone())?;
                if !wait::call1(f.bind(py), (agent,))?.is_truthy()? {
                    continue;
                }
            }
            emit(e);
            n += 1;
        }
        Ok((n, clean))
    }

    /// Whether an entry the core was unsure about meets every condition.
    fn py_conds(&self, py: Python<'_>, e: &E) -> PyResult<bool> {
        if let Where::Conds(conds, values) = &self.wh {
            for (cond, v) in conds.iter().zip(values) {
                if !py_cond(py, cond, v.bind(py), &e.meta.extra)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// `limit`: None or an int >= 0. One too large for any count means no limit.
pub fn limit_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<usize>> {
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

const WHERE_SHAPE: &str = "where must be a callable or a list of (path, op, value) triples";

/// `where`: None, a callable on `Agent`, or a list (or tuple) of `(path, op, value)`
/// triples, each made a core [`Cond`] from a private copy of its value.
pub fn parse_where(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Where> {
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
        let path = args::string(&triple.get_item(0)?, "where path")?;
        let op_s = args::string(&triple.get_item(1)?, "where op")?;
        let value = triple.get_item(2)?;
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
        conds.push(Cond::new(path.to_str()?, op, v, hashed));
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
pub fn py_cond(py: Python<'_>, c: &Cond, q: &Bound<'_, PyAny>, meta: &MetaPy) -> PyResult<bool> {
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
    // The values' comparisons are user code: under the exit guard (`wait`).
    let cmp = |op: CompareOp| safe(wait::compare(&v, q, op));
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
        Op::Eq => cmp(CompareOp::Eq)? || any_item(&|x| safe(wait::eq(x, q)))?,
        Op::Ne => cmp(CompareOp::Ne)?,
        Op::Gt => cmp(CompareOp::Gt)?,
        Op::Gte => cmp(CompareOp::Ge)?,
        Op::Lt => cmp(CompareOp::Lt)?,
        Op::Lte => cmp(CompareOp::Le)?,
        Op::In => safe(wait::contains(q, &v))? || any_item(&|x| safe(wait::contains(q, x)))?,
        Op::NotIn => safe(wait::contains(q, &v).map(|b| !b))?,
    })
}
