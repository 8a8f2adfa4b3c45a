//! `Registry`: the Python face of `core::registry::Registry`.
//!
//! The core stores ids, capabilities, node and health as Rust strings and metadata as a
//! comparable `Value` tree, so index reads and most `where` conditions run without the
//! GIL or a Python callback. What only Python can decide (opaque metadata values, a
//! callable `where`, whether a `Thread` owner is still alive) is decided by the binding,
//! after the core has handed back its candidates and released every guard.
//!
//! The binding, by file: this one holds the class and its writes; `registry_args`
//! converts arguments (and copies a caller's containers before reading them);
//! `registry_owner` turns `owner=` into a watch or a sweep; `registry_query` parses and
//! runs the criteria of `find`, `count` and `ids`; `registry_memo` keeps ready-made
//! answers of `ids` and `count` for one capability, node or health; `registry_agent` is
//! the `Agent` view.
//! Errors of the core map to exceptions in `crate::errors`.
//!
//! Garbage collection: every Python reference an entry version holds (value, owner,
//! metadata dict) is visited by exactly one holder. A version in the registry's map is
//! the registry's to visit, always. Every other holder of it is either an `Agent`,
//! which holds and visits its own references to the same objects, or a call in
//! progress on this registry (which keeps the registry reachable). An Agent visits the
//! version's references as well only when it is the version's sole holder (it left the
//! map, and no other Agent or call has it). Nothing is ever visited twice; a reference
//! nobody may visit counts as held from outside, which only keeps objects alive. The
//! memo's tuples (of ids, and of the Agents `find` kept) are the registry's alone
//! (queries hand out copies; the Agents in them are shared with callers and visited
//! through the tuple like any Agent). An Agent
//! whose references all go to objects the collector does not track (see
//! [`Agent::object`]) is itself untracked: it visits nothing the collector could use.
//!
//! Everything the core removes is handed back and dropped here, with the GIL held and
//! no guard held.

use std::sync::Arc;

use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::core::registry::{self as core, Entry, RegistryError, Spec};
use crate::errors::registry_error;
use crate::py::args;
pub use crate::py::registry_agent::Agent;
use crate::py::registry_args::{
    changes_arg, id_arg, indexes_arg, max_batch_arg, register_items, Fields,
};
use crate::py::registry_memo::{Kind, Memo};
use crate::py::registry_owner::{self as owner, Owner};
use crate::py::registry_query::Criteria;

/// Thread-owned registrations checked per write.
const SWEEP_BUDGET: usize = 2;

/// Host data fixed for a registration.
pub struct RegData {
    pub id: Py<PyString>,
    pub value: Py<PyAny>,
    pub owner: Owner,
}

impl RegData {
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.value)?;
        visit.call(self.owner.object())
    }
}

/// Host copy of one version's metadata (`None`: empty).
pub type MetaPy = Option<Py<PyDict>>;
pub type Core = core::Registry<RegData, MetaPy>;
pub type E = Entry<RegData, MetaPy>;
type Grave = Vec<Arc<E>>;

/// A concurrent agent directory: find agents by id, capability, node, health and
/// metadata, with owners and leases that remove what outlives its purpose. Entries live
/// in a sharded map with sharded secondary indexes; no global lock.
#[pyclass(frozen, module = "ferrule", name = "Registry")]
pub struct Registry {
    core: Arc<Core>,
    memo: Memo,
    max_batch: usize,
    /// The declared index paths, in the order given.
    indexes: Box<[Box<str>]>,
}

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

impl Registry {
    fn prepare<'py>(
        &self,
        py: Python<'py>,
        f: Fields<'py>,
        value: Option<Py<PyAny>>,
        owner: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Prepared<'py>> {
        let token = self.core.next_token();
        let o = owner::new_owner(py, &self.core, &f.id, token, owner)?;
        Ok(Prepared {
            spec: Spec {
                id: f.id,
                token,
                caps: f.caps,
                node: f.node,
                health: f.health,
                meta: f.meta,
                ttl: f.ttl,
                reg: Arc::new(RegData {
                    id: f.id_py.unbind(),
                    value: value.unwrap_or_else(|| py.None()),
                    owner: o.owner,
                }),
            },
            future: o.future,
            thread: o.thread,
        })
    }

    /// Publishes a prepared registration (its owner not watched yet: see `watch`).
    fn publish<'py>(&self, py: Python<'py>, p: Prepared<'py>) -> PyResult<Published<'py>> {
        // A finished thread's registration no longer holds its id.
        if let Some(old) = self.core.get(&p.spec.id) {
            owner::drop_if_dead(py, &self.core, &old);
        }
        let mut grave = Grave::new();
        let r = self.core.register(p.spec, &mut grave);
        self.bury(py, grave, None);
        Ok(Published {
            e: r.map_err(|e| registry_error(py, e))?,
            future: p.future,
            thread: p.thread,
        })
    }

    /// Watches the owners of published registrations: first every future's
    /// done-callback (the only step that can fail: then every one of them is taken back,
    /// callbacks included, and the error returned), then the thread owners' sweep queue.
    fn watch(&self, py: Python<'_>, published: &[Published<'_>]) -> PyResult<()> {
        for p in published {
            if let Some((f, w)) = &p.future {
                if let Err(err) = owner::watch_future(f, w) {
                    self.take_back(py, published);
                    return Err(err);
                }
            }
        }
        self.core.queue_host_checks(
            published
                .iter()
                .filter(|p| p.thread)
                .map(|p| (p.e.id.clone(), p.e.token))
                .collect(),
        );
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

    /// Checks up to `budget` thread-owned registrations (run with no lock held).
    fn sweep_threads(&self, py: Python<'_>, budget: usize) -> usize {
        let mut grave = Grave::new();
        let n = self
            .core
            .sweep_host(budget, |e| owner::finished(py, e), &mut grave);
        // Thread-owned: no done-callback to detach; dropped with the GIL held.
        drop(grave);
        n
    }

    /// Drops removed entries with the GIL held; detaches the done-callbacks of
    /// registrations that ended by other means than their future (not `keep`'s).
    fn bury(&self, py: Python<'_>, grave: Grave, keep: Option<u64>) {
        for e in grave {
            // Kept `find` answers of a removed registration's values may hold its value
            // (a version replaced by an update or heartbeat shares its registration's).
            if self.memo.holds_agents() && self.core.token(&e.id) != Some(e.token) {
                let caps = e.caps.iter().map(|c| (Kind::Capability, &**c));
                let node = e.node.as_deref().map(|n| (Kind::Node, n));
                self.memo
                    .release(caps.chain(node).chain([(Kind::Health, &*e.health)]));
            }
            if Some(e.token) != keep {
                owner::unwatch(py, &self.core, &e);
            }
        }
    }

    fn live(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<Option<Arc<E>>> {
        let id = id_arg(agent_id)?;
        match self.core.get(id) {
            Some(e) if owner::drop_if_dead(py, &self.core, &e) => Ok(None),
            other => Ok(other),
        }
    }

    /// The matching entries, collected.
    fn select(&self, py: Python<'_>, c: &Criteria) -> PyResult<Vec<Arc<E>>> {
        let mut out = Vec::new();
        c.run(py, &self.core, |e| out.push(e.clone()))?;
        Ok(out)
    }
}

#[pymethods]
impl Registry {
    #[new]
    #[pyo3(signature = (*, clock = None, max_batch = 10000, indexes = None),
           text_signature = "(*, clock=None, max_batch=10000, indexes=())")]
    fn new(
        clock: Option<&Bound<'_, PyAny>>,
        #[pyo3(from_py_with = args::named::max_batch)] max_batch: i64,
        indexes: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let clock = args::clock(clock)?;
        let max_batch = max_batch_arg(max_batch)?;
        let indexes = indexes_arg(indexes)?;
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let paths: Vec<&str> = indexes.iter().map(|p| &**p).collect();
        Ok(Self {
            core: Arc::new(Core::with_indexes(clock, cpus, &paths)),
            memo: Memo::default(),
            max_batch,
            indexes: indexes.into(),
        })
    }

    /// Register an agent. Raises `AlreadyRegistered` (a `KeyError`) if the id is taken by
    /// a live entry; then nothing of this call stays behind.
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
        let f = Fields::from_args(py, agent_id, capabilities, node, health, metadata, ttl)?;
        let p = self.prepare(py, f, value, owner)?;
        let published = [self.publish(py, p)?];
        self.watch(py, &published)
    }

    /// Register every item (a dict of `register`'s arguments plus `agent_id`) or none.
    /// Returns how many.
    fn register_many(&self, py: Python<'_>, items: &Bound<'_, PyAny>) -> PyResult<usize> {
        let prepared = register_items(py, items, self.max_batch, |item| {
            let p = self.prepare(
                py,
                item.fields(py)?,
                item.value.map(Bound::unbind),
                item.owner.as_ref(),
            )?;
            Ok((p.spec.id.clone(), p))
        })?;
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

    /// Remove the agent; True if it was registered and live (not expired or orphaned).
    fn unregister(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        let id = id_arg(agent_id)?;
        let now = self.core.now();
        let mut grave = Grave::new();
        let removed = self.core.unregister(id, &mut grave);
        let live = removed
            .as_ref()
            .is_some_and(|e| e.is_live(now) && !owner::finished(py, e));
        grave.extend(removed);
        self.bury(py, grave, None);
        self.sweep_threads(py, SWEEP_BUDGET);
        Ok(live)
    }

    /// Change the given fields as one step (readers see the old or the new entry, never a
    /// mix). KeyError if the agent is not registered.
    #[pyo3(signature = (agent_id, **changes),
           text_signature = "(self, agent_id, *, capabilities=..., node=..., health=..., metadata=...)")]
    fn update(
        &self,
        py: Python<'_>,
        agent_id: &Bound<'_, PyAny>,
        changes: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let id = id_arg(agent_id)?;
        let ch = changes_arg(py, changes)?;
        if self.live(py, agent_id)?.is_none() {
            return Err(registry_error(py, RegistryError::Missing(id.into())));
        }
        let mut grave = Grave::new();
        let r = self.core.update(id, &ch, &mut grave);
        let keep = r.as_ref().ok().map(|e| e.token);
        self.bury(py, grave, keep);
        self.sweep_threads(py, SWEEP_BUDGET);
        r.map(drop).map_err(|e| registry_error(py, e))
    }

    /// The agent, or None if absent, expired or orphaned.
    fn get<'py>(
        &self,
        py: Python<'py>,
        agent_id: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, Agent>>> {
        self.live(py, agent_id)?
            .map(|e| Agent::object(py, e))
            .transpose()
    }

    /// The agent's value; KeyError if absent.
    fn lookup(&self, py: Python<'_>, agent_id: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match self.live(py, agent_id)? {
            Some(e) => Ok(e.reg.value.clone_ref(py)),
            None => Err(PyKeyError::new_err(agent_id.clone().unbind())),
        }
    }

    /// Renew the lease for `ttl` seconds (default: the registration's ttl) from now; False
    /// if the agent is absent or already expired. With `ttl` on an entry without a lease,
    /// the entry becomes a lease.
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
        let id = id_arg(agent_id)?;
        let mut grave = Grave::new();
        let ok = self.core.heartbeat(id, ttl, &mut grave);
        let keep = self.core.get(id).map(|e| e.token);
        self.bury(py, grave, keep);
        Ok(ok)
    }

    /// Remove expired and orphaned entries now (a full scan); return how many. Without it
    /// they are still never returned, and are reclaimed a few per write.
    fn expire(&self, py: Python<'_>) -> usize {
        let mut grave = Grave::new();
        let n = self.core.expire(&mut grave);
        self.bury(py, grave, None);
        n + self.sweep_threads(py, usize::MAX)
    }

    /// Agents matching every given criterion (in no particular order). `where` filters
    /// last (but for an `eq` or `in` triple on a declared index path, served from that
    /// index): a callable on `Agent`, or a list of `(path, op, value)` triples over
    /// `metadata`; `limit` caps the result.
    #[pyo3(signature = (*, capability = None, node = None, health = None, r#where = None, limit = None))]
    fn find<'py>(
        &self,
        py: Python<'py>,
        capability: Option<&Bound<'_, PyAny>>,
        node: Option<&Bound<'_, PyAny>>,
        health: Option<&Bound<'_, PyAny>>,
        r#where: Option<&Bound<'_, PyAny>>,
        limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let c = Criteria::from_args(capability, node, health, r#where, limit)?;
        c.find(py, &self.core, &self.memo)
    }

    /// How many agents `find` would return (without building the list).
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
        let c = Criteria::from_args(capability, node, health, r#where, limit)?;
        c.count(py, &self.core, &self.memo)
    }

    /// The ids of the agents `find` would return.
    #[pyo3(signature = (*, capability = None, node = None, health = None, r#where = None, limit = None))]
    fn ids<'py>(
        &self,
        py: Python<'py>,
        capability: Option<&Bound<'_, PyAny>>,
        node: Option<&Bound<'_, PyAny>>,
        health: Option<&Bound<'_, PyAny>>,
        r#where: Option<&Bound<'_, PyAny>>,
        limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let c = Criteria::from_args(capability, node, health, r#where, limit)?;
        c.ids(py, &self.core, &self.memo)
    }

    /// Internal (`HealthMonitor`'s round): every live agent, with its id and its health
    /// in the same order, read in one pass. Equal healths share one str.
    fn _health_round<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>, Bound<'py, PyList>)> {
        let entries = self.select(py, &Criteria::from_args(None, None, None, None, None)?)?;
        let ids = PyList::new(py, entries.iter().map(|e| e.reg.id.bind(py)))?;
        // Few distinct values: one str each, found by pointer (the index interns them),
        // and interned, so a check returning a literal is compared by identity.
        let mut seen: Vec<(Arc<str>, Bound<'py, PyString>)> = Vec::new();
        let mut health = |h: &Arc<str>| {
            if let Some((_, s)) = seen.iter().find(|(k, _)| Arc::ptr_eq(k, h) || **k == **h) {
                return s.clone();
            }
            let s = PyString::intern(py, h);
            if seen.len() < 16 {
                seen.push((h.clone(), s.clone()));
            }
            s
        };
        let healths = PyList::new(py, entries.iter().map(|e| health(&e.health)))?;
        let agents = PyList::new(
            py,
            entries
                .into_iter()
                .map(|e| Agent::object(py, e))
                .collect::<PyResult<Vec<_>>>()?,
        )?;
        Ok((agents, ids, healths))
    }

    #[getter]
    fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The metadata paths with a declared index, in the order given.
    #[getter]
    fn indexes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.indexes.iter().map(|p| &**p))
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

    /// Distinct keys and rows of each declared index, by path (for tests of reclamation).
    fn _declared_index_sizes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (path, sizes) in self.indexes.iter().zip(self.core.declared_sizes()) {
            d.set_item(&**path, sizes)?;
        }
        Ok(d)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Every version in the map is the registry's to visit (see the module
        // documentation); a shard another thread has locked is skipped, never waited for.
        self.core
            .try_for_each(|e| {
                e.reg.traverse(&visit)?;
                visit.call(e.meta.extra.as_ref())
            })
            .map(|_complete| ())?;
        self.memo.traverse(&visit)
    }

    fn __clear__(&self) {
        let mut grave = Grave::new();
        self.core.clear(&mut grave);
        self.memo.clear();
        // After unlocking: dropping entries may run finalizers. Done-callbacks stay on
        // their futures, each matching no registration any more.
        drop(grave);
    }
}

/// Internal (`HealthMonitor`'s round): `{ids[i]: values[i]}` and the indexes where
/// `values[i] != healths[i]`, if every value is an exact `str` among the three check
/// results; else None (the caller takes its general path). The lists are the caller's
/// own, of equal length (ValueError otherwise).
#[pyfunction]
#[pyo3(signature = (ids, values, healths, /))]
pub fn _health_statuses<'py>(
    py: Python<'py>,
    ids: &Bound<'py, PyList>,
    values: &Bound<'py, PyList>,
    healths: &Bound<'py, PyList>,
) -> PyResult<Option<(Bound<'py, PyDict>, Vec<usize>)>> {
    let n = ids.len();
    if values.len() != n || healths.len() != n {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "ids, values and healths must have the same length",
        ));
    }
    let out = PyDict::new(py);
    let mut changed = Vec::new();
    for i in 0..n {
        let v = values.get_item(i)?;
        let Ok(s) = v.cast_exact::<PyString>() else {
            return Ok(None);
        };
        let text = s.to_str()?;
        // `ferrule._health.CHECK_RESULTS` (a test holds the two together).
        if !matches!(text, "healthy" | "degraded" | "unhealthy") {
            return Ok(None);
        }
        let h = healths.get_item(i)?;
        let same = h
            .cast_exact::<PyString>()
            .is_ok_and(|h| h.is(s) || h.to_str().is_ok_and(|h| h == text));
        if !same {
            changed.push(i);
        }
        out.set_item(ids.get_item(i)?, s)?;
    }
    Ok(Some((out, changed)))
}
