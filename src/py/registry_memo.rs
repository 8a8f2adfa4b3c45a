//! Ready-made answers of `Registry.ids` and `Registry.count` for the queries the core
//! can stamp: one capability, node or health and nothing else
//! ([`core::Registry::stamp`]).
//!
//! Structure: per criterion kind, one `RwLock<HashMap>` from value to [`Answer`]: the
//! stamp and deadline of a clean read of that value's rows ([`core::Clean`]), their
//! count and, once `ids` asked, a tuple of the id strings (the registration's own
//! `str` objects). A query whose stamp equals the answer's, on a clock before its
//! deadline, copies the tuple into a new list (or returns the count) without reading
//! a single entry: the core moves a row's stamp before any entry in it stops matching
//! it, so each id still matched when the stamp was read. Any other query reads the
//! entries as before, and leaves its answer here when the core calls it clean.
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

    /// The count of the answer for `value` if it holds at `stamp` and `now`.
    pub fn count(&self, kind: Kind, value: &str, stamp: Stamp, now: i64) -> Option<usize> {
        let rows = self.rows(kind).read();
        rows.get(value)
            .filter(|a| a.holds(stamp, now))
            .map(|a| a.count)
    }

    /// Keeps the answer of a clean read (`ids` when the query built them). A count
    /// never replaces ids of the same stamp.
    pub fn put(
        &self,
        kind: Kind,
        value: &Arc<str>,
        clean: Clean,
        count: usize,
        ids: Option<Py<PyTuple>>,
    ) {
        if count < MEMO_AT {
            return;
        }
        let new = Answer {
            stamp: clean.stamp,
            deadline: clean.deadline,
            count,
            ids,
        };
        // What leaves the map is dropped after the guard (it may hold the last
        // reference to a tuple).
        let mut gone: Vec<Answer> = Vec::new();
        {
            let mut rows = self.rows(kind).write();
            if let Some(cur) = rows.get_mut(&**value) {
                if new.ids.is_none() && cur.ids.is_some() && cur.stamp == new.stamp {
                    gone.push(new);
                } else {
                    gone.push(std::mem::replace(cur, new));
                }
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
        drop(gone);
    }

    /// Visits every tuple held; a map another thread has locked is skipped, never
    /// waited for.
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for kind in &self.kinds {
            if let Some(rows) = kind.try_read() {
                for a in rows.values() {
                    visit.call(a.ids.as_ref())?;
                }
            }
        }
        Ok(())
    }

    /// Drops every answer (after each lock is released).
    pub fn clear(&self) {
        for kind in &self.kinds {
            let rows = std::mem::take(&mut *kind.write());
            drop(rows);
        }
    }
}
