//! Ready-made answers of `Registry.ids`, `Registry.count` and `Registry.find` for the
//! queries the core can stamp: one capability, node or health and nothing else
//! ([`core::Registry::stamp`]).
//!
//! Structure: per criterion kind, one `RwLock<HashMap>` from value to [`Answer`]: the
//! stamp and deadline of a clean read of that value's rows ([`core::Clean`]), their
//! count and, once `ids` asked, a tuple of the id strings (the registration's own
//! `str` objects), and once `find` asked, a tuple of its Agents with the entry version
//! each shows ([`Kept`]). A query whose stamp equals the answer's, on a clock before its
//! deadline, copies the tuple into a new list (or returns the count) without reading
//! a single entry: the core moves a row's stamp before any entry in it stops matching
//! it, so each id still matched when the stamp was read. An Agent also shows fields
//! the stamp does not cover (an update or heartbeat that keeps the row moves no
//! stamp), so `find` hands kept Agents out again only when each one's version is still
//! its entry's. Any other query reads the entries as before, and leaves its answer here
//! when the core calls it clean.
//!
//! Kept Agents hold their values: so that a removed agent's value is not held here,
//! every registration the registry removes drops the kept Agents of its values
//! ([`Memo::release`]; one atomic load per write while no `find` answer is kept). A
//! version replaced by an update or a heartbeat shares its registration's value; a
//! kept Agent of it is made again by the next `find`.
//!
//! Invariants: an answer is only ever stored from a clean read, with that read's stamp
//! (a newer answer may be replaced by an older one racing with it: each is exact for
//! its own stamp). A tuple never leaves this structure (callers get a list copy), so
//! the registry is its one holder and visits it for the garbage collector. Bounded:
//! at most [`MEMO_ROWS`] values per kind (a new one evicts an arbitrary one), and only
//! answers of at least [`MEMO_AT`] ids are kept (smaller ones are cheaper to re-read
//! than to stamp and store). No Python code runs under a lock here: the locks cover
//! map lookups and reference count changes; replaced answers are dropped after the
//! lock is released.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::HashMap;
use parking_lot::RwLock;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::{PyTraverseError, PyVisit};

use crate::core::registry::{Clean, Stamp};

/// Values kept per criterion kind.
pub const MEMO_ROWS: usize = 64;
/// The fewest ids an answer must hold to be kept.
pub const MEMO_AT: usize = 32;

/// Which built-in index a value is of.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Capability = 0,
    Node = 1,
    Health = 2,
}

struct Answer {
    stamp: Stamp,
    deadline: i64,
    count: usize,
    /// Set once an `ids` query stored its answer.
    ids: Option<Py<PyTuple>>,
    /// Set once a `find` query stored its answer.
    agents: Option<Kept>,
}

/// A `find` answer: its Agents, and the id and entry version each shows, in order.
pub struct Kept {
    pub agents: Py<PyTuple>,
    pub versions: Arc<[(Arc<str>, u64)]>,
}

/// A kept `find` answer as a query reads it (see [`Memo::agents`]).
pub struct KeptNow<'py> {
    pub agents: Bound<'py, PyTuple>,
    pub versions: Arc<[(Arc<str>, u64)]>,
    pub clean: Clean,
    pub count: usize,
}

impl Answer {
    fn holds(&self, stamp: Stamp, now: i64) -> bool {
        self.stamp == stamp && now < self.deadline
    }
}

type Rows = HashMap<Arc<str>, Answer>;

#[derive(Default)]
pub struct Memo {
    kinds: [RwLock<Rows>; 3],
    /// Answers holding Agents (an upper bound: counted up before one is stored, down
    /// after one is dropped), so that writes skip [`Memo::release`] while there are none.
    kept: AtomicUsize,
}

impl Memo {
    fn rows(&self, kind: Kind) -> &RwLock<Rows> {
        &self.kinds[kind as usize]
    }

    /// The ids of the answer for `value` if it holds at `stamp` and `now`.
    pub fn ids<'py>(
        &self,
        py: Python<'py>,
        kind: Kind,
        value: &str,
        stamp: Stamp,
        now: i64,
    ) -> Option<Bound<'py, PyTuple>> {
        let rows = self.rows(kind).read();
        let a = rows.get(value).filter(|a| a.holds(stamp, now))?;
        a.ids.as_ref().map(|t| t.bind(py).clone())
    }

    /// The Agents of the answer for `value` if it holds at `stamp` and `now`: the tuple,
    /// the versions its Agents show, and the answer's clean read and count.
    pub fn agents<'py>(
        &self,
        py: Python<'py>,
        kind: Kind,
        value: &str,
        stamp: Stamp,
        now: i64,
    ) -> Option<KeptNow<'py>> {
        let rows = self.rows(kind).read();
        let a = rows.get(value).filter(|a| a.holds(stamp, now))?;
        a.agents.as_ref().map(|k| KeptNow {
            agents: k.agents.bind(py).clone(),
            versions: k.versions.clone(),
            clean: Clean {
                stamp: a.stamp,
                deadline: a.deadline,
            },
            count: a.count,
        })
    }

    /// The count of the answer for `value` if it holds at `stamp` and `now`.
    pub fn count(&self, kind: Kind, value: &str, stamp: Stamp, now: i64) -> Option<usize> {
        let rows = self.rows(kind).read();
        rows.get(value)
            .filter(|a| a.holds(stamp, now))
            .map(|a| a.count)
    }

    /// Keeps the answer of a clean read (`ids` and `agents` when the query built them).
    /// An answer of the same stamp keeps what the new one lacks.
    pub fn put(
        &self,
        kind: Kind,
        value: &Arc<str>,
        clean: Clean,
        count: usize,
        ids: Option<Py<PyTuple>>,
        agents: Option<Kept>,
    ) {
        if count < MEMO_AT {
            return;
        }
        if agents.is_some() {
            self.kept.fetch_add(1, Ordering::SeqCst);
        }
        let mut new = Answer {
            stamp: clean.stamp,
            deadline: clean.deadline,
            count,
            ids,
            agents,
        };
        // What leaves the map is dropped after the guard (it may hold the last
        // reference to a tuple).
        let mut gone: Vec<Answer> = Vec::new();
        {
            let mut rows = self.rows(kind).write();
            if let Some(cur) = rows.get_mut(&**value) {
                if cur.stamp == new.stamp {
                    new.ids = new.ids.or_else(|| cur.ids.take());
                    new.agents = new.agents.or_else(|| cur.agents.take());
                }
                gone.push(std::mem::replace(cur, new));
            } else {
                if rows.len() >= MEMO_ROWS {
                    let victim = rows.keys().next().cloned();
                    if let Some(a) = victim.and_then(|k| rows.remove(&k)) {
                        gone.push(a);
                    }
                }
                rows.insert(value.clone(), new);
            }
        }
        self.bury(gone);
    }

    /// Drops answers taken out of the map (no guard held: they may hold the last
    /// references to tuples and Agents), then counts their kept Agents down.
    fn bury(&self, gone: Vec<Answer>) {
        let n = gone.iter().filter(|a| a.agents.is_some()).count();
        drop(gone);
        if n > 0 {
            self.kept.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// Whether any answer may hold Agents.
    pub fn holds_agents(&self) -> bool {
        self.kept.load(Ordering::SeqCst) > 0
    }

    /// Drops the kept Agents of each value `values` names (an entry's values, as it
    /// left the map or was replaced): they may show that entry, and hold its value. An
    /// answer stored while its entry was leaving (its stamp is then already stale) is
    /// dropped by the next write or clean query of its value.
    pub fn release<'v>(&self, values: impl IntoIterator<Item = (Kind, &'v str)>) {
        let mut gone: Vec<Kept> = Vec::new();
        for (kind, value) in values {
            let held = self
                .rows(kind)
                .read()
                .get(value)
                .is_some_and(|a| a.agents.is_some());
            if held {
                gone.extend(
                    self.rows(kind)
                        .write()
                        .get_mut(value)
                        .and_then(|a| a.agents.take()),
                );
            }
        }
        let n = gone.len();
        drop(gone);
        if n > 0 {
            self.kept.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// Visits every tuple held; a map another thread has locked is skipped, never
    /// waited for.
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for kind in &self.kinds {
            if let Some(rows) = kind.try_read() {
                for a in rows.values() {
                    visit.call(a.ids.as_ref())?;
                    visit.call(a.agents.as_ref().map(|k| &k.agents))?;
                }
            }
        }
        Ok(())
    }

    /// Drops every answer (after each lock is released).
    pub fn clear(&self) {
        for kind in &self.kinds {
            let rows = std::mem::take(&mut *kind.write());
            self.bury(rows.into_values().collect());
        }
    }
}
