//! `ErrorStore` and `ErrorRecord`: the Python face of `core::error_store::ErrorStore`
//! over Python error objects.
//!
//! Every method locks at most one shard at a time inside the core; whatever the core
//! removes (evicted or expired errors) comes back in a `Grave` that is dropped here,
//! after the locks are released, because dropping the last reference to an error may run
//! Python code (`__del__`, weakref callbacks).
//!
//! Garbage collection: a stored error's traceback may refer back to whatever holds the
//! store, so the store visits every error it holds (each shard with `try_lock`, never
//! blocking) and its `__clear__` empties it; an `ErrorRecord` visits and can drop its
//! error. Agent ids are exact `str`s, which cannot lead anywhere. The bus (`bus=`, see
//! `crate::py::events`) is visited and let go of likewise.
//!
//! Events: each agent evicted to make room (`max_agents`) is published as
//! `errors.<name>.agent_evicted`, after the grave is dropped; without a bus a record pays
//! one test of an `Option`.

use pyo3::prelude::*;
use pyo3::types::PyString;
use pyo3::{PyTraverseError, PyVisit};

use crate::core::clock::nanos_to_secs;
use crate::core::error_store::{self as core, Grave};
use crate::errors::wrong_type;
use crate::py::args::{self, Held};
use crate::py::events::{self, Event, Events, Val};

fn agent_str<'a>(agent_id: &'a Bound<'_, PyAny>) -> PyResult<&'a Bound<'a, PyString>> {
    agent_id
        .cast::<PyString>()
        .map_err(|_| wrong_type("agent_id", "a str", agent_id))
}

/// What an `ErrorStore` has seen, from `ErrorStore.stats`. Immutable. `recorded` and
/// `evicted_agents` only ever grow: records stored, and agents dropped (with their
/// records) to make room for another under `max_agents`; `agents` is how many agents
/// hold records now (an agent whose records all expired may still count until a call
/// touches it or a record sweeps its shard).
#[pyclass(frozen, get_all, module = "ferrule", name = "ErrorStoreStats")]
pub struct ErrorStoreStats {
    /// Records stored since the store was made.
    recorded: u64,
    /// Agents holding records now.
    agents: usize,
    /// Agents evicted to make room under `max_agents`.
    evicted_agents: u64,
}

#[pymethods]
impl ErrorStoreStats {
    fn __repr__(&self) -> String {
        format!(
            "ErrorStoreStats(recorded={}, agents={}, evicted_agents={})",
            self.recorded, self.agents, self.evicted_agents
        )
    }
}

/// Recent errors per agent, bounded per agent, by age and by number of agents.
#[pyclass(frozen, module = "ferrule", name = "ErrorStore")]
pub struct ErrorStore {
    inner: core::ErrorStore<Py<PyAny>>,
    name: Option<Py<PyString>>,
    events: Option<Events>,
}

#[pymethods]
impl ErrorStore {
    #[new]
    #[pyo3(signature = (*, max_per_agent = 1000, max_age = 86400.0, max_agents = 100_000, clock = None, name = None, bus = None))]
    fn new(
        py: Python<'_>,
        #[pyo3(from_py_with = args::named::max_per_agent)] max_per_agent: i64,
        #[pyo3(from_py_with = args::named::max_age)] max_age: f64,
        #[pyo3(from_py_with = args::named::max_agents)] max_agents: i64,
        clock: Option<&Bound<'_, PyAny>>,
        name: Option<&Bound<'_, PyAny>>,
        bus: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let max_per_agent = args::at_least(max_per_agent, "max_per_agent", 1)?;
        let max_agents = args::at_least(max_agents, "max_agents", 1)?;
        let max_age = crate::core::clock::positive_nanos(max_age, "max_age")?;
        let inner = core::ErrorStore::new(
            max_per_agent as usize,
            max_age,
            max_agents as usize,
            args::clock(clock)?,
        )?;
        let name = events::name_arg(py, name)?;
        let events = Events::from_args(py, "errors", bus, name.as_ref())?;
        Ok(Self {
            inner,
            name,
            events,
        })
    }

    /// Store `error` for `agent_id` (a str); returns True once it is stored.
    fn record(&self, agent_id: &Bound<'_, PyAny>, error: Py<PyAny>) -> PyResult<bool> {
        let agent = agent_str(agent_id)?;
        let grave = self.inner.record(agent.to_str()?, error);
        match &self.events {
            Some(ev) if !grave.evicted().is_empty() => {
                let ids: Vec<String> = grave.evicted().iter().map(ToString::to_string).collect();
                drop(grave);
                for id in ids {
                    let e = Event::new("agent_evicted", vec![("agent_id", Val::Text(id))]);
                    ev.emit(agent_id.py(), e);
                }
            }
            _ => drop(grave),
        }
        Ok(true)
    }

    /// Errors currently held for `agent_id`; 0 when unknown.
    fn count(&self, agent_id: &Bound<'_, PyAny>) -> PyResult<usize> {
        let agent = agent_str(agent_id)?;
        let mut grave = Grave::default();
        Ok(self.inner.count(agent.to_str()?, &mut grave))
    }

    /// Up to `limit` (>= 0) held errors of `agent_id`, newest first.
    #[pyo3(signature = (agent_id, limit = 100))]
    fn history(
        &self,
        py: Python<'_>,
        agent_id: &Bound<'_, PyAny>,
        #[pyo3(from_py_with = args::named::limit)] limit: i64,
    ) -> PyResult<Vec<ErrorRecord>> {
        let agent = agent_str(agent_id)?;
        // >= 0, so the cast is exact.
        let limit = args::at_least(limit, "limit", 0)? as usize;
        let mut grave = Grave::default();
        let mut found: Vec<(Py<PyAny>, i64)> = Vec::new();
        self.inner
            .history(agent.to_str()?, limit, &mut grave, |e, t| {
                found.push((e.clone_ref(py), t));
            });
        drop(grave);
        // An exact str (a subclass instance could hold references).
        let id = PyString::new(py, agent.to_str()?).unbind();
        Ok(found
            .into_iter()
            .map(|(error, t)| ErrorRecord {
                agent_id: id.clone_ref(py),
                error: Held::new(Some(error)),
                timestamp: nanos_to_secs(t),
            })
            .collect())
    }

    /// Forget every error of `agent_id`; True if it had any.
    fn reset(&self, agent_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        let agent = agent_str(agent_id)?;
        let mut grave = Grave::default();
        Ok(self.inner.reset(agent.to_str()?, &mut grave))
    }

    /// Sorted ids of the agents with errors held.
    fn agents(&self) -> Vec<String> {
        let mut grave = Grave::default();
        self.inner.agents(&mut grave)
    }

    #[getter]
    fn max_per_agent(&self) -> usize {
        self.inner.max_per_agent()
    }

    #[getter]
    fn max_age(&self) -> f64 {
        nanos_to_secs(self.inner.max_age_ns())
    }

    #[getter]
    fn max_agents(&self) -> usize {
        self.inner.max_agents()
    }

    /// Counters since the store was made and the agents held now; see `ErrorStoreStats`.
    fn stats(&self) -> ErrorStoreStats {
        let (recorded, evicted_agents) = self.inner.counts();
        ErrorStoreStats {
            recorded,
            agents: self.inner.len(),
            evicted_agents,
        }
    }

    /// The name given (the topics' middle segment), or None.
    #[getter]
    fn name(&self, py: Python<'_>) -> Option<Py<PyString>> {
        self.name.as_ref().map(|n| n.clone_ref(py))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(ev) = &self.events {
            ev.visit(&visit)?;
        }
        self.inner.try_for_each(|e| visit.call(e))
    }

    fn __clear__(&self) {
        let bus = self.events.as_ref().and_then(Events::clear);
        let mut grave = Grave::default();
        self.inner.clear(&mut grave);
        drop((bus, grave)); // every shard lock is released: dropping may run Python
    }

    fn __repr__(&self) -> String {
        format!(
            "ErrorStore(max_per_agent={}, max_age={:?}, max_agents={})",
            self.inner.max_per_agent(),
            nanos_to_secs(self.inner.max_age_ns()),
            self.inner.max_agents()
        )
    }
}

/// One error held by an `ErrorStore` (immutable). It carries `agent_id`, `error` and
/// `timestamp` (the store's clock reading in seconds when it was recorded).
#[pyclass(frozen, module = "ferrule", name = "ErrorRecord")]
pub struct ErrorRecord {
    #[pyo3(get)]
    agent_id: Py<PyString>,
    /// Emptied by `__clear__` (then `error` reads None).
    error: Held<Py<PyAny>>,
    #[pyo3(get)]
    timestamp: f64,
}

impl ErrorRecord {
    fn error_now(&self, py: Python<'_>) -> Py<PyAny> {
        self.error
            .with(|e| e.map(|e| e.clone_ref(py)))
            .unwrap_or_else(|| py.None())
    }
}

#[pymethods]
impl ErrorRecord {
    #[getter]
    fn error(&self, py: Python<'_>) -> Py<PyAny> {
        self.error_now(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.error.try_visit(|e| visit.call(e))
    }

    fn __clear__(&self) {
        let error = self.error.take();
        drop(error);
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "ErrorRecord(agent_id={}, error={}, timestamp={:?})",
            self.agent_id.bind(py).repr()?,
            self.error_now(py).bind(py).repr()?,
            self.timestamp
        ))
    }
}
