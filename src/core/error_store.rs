//! Recent errors per agent, bounded per agent, by age and by number of agents.
//!
//! # Structure
//! Agents are spread over [`SHARDS`] shards by the hash of their id; each shard is one
//! mutex around a table `id -> node` and a slab of nodes linked in recency order (head =
//! least recently recorded). A node holds the agent's entries `(error, timestamp)` in a
//! ring (`VecDeque`, oldest first), its last-record time and its last-record sequence
//! number, drawn from one global atomic counter. `record` locks only its agent's shard,
//! except when it must make room for a new agent (below).
//!
//! # Invariants and what is exact
//! - An agent holds at most `max_per_agent` entries: the oldest is dropped first.
//! - Entries are stamped by the store's clock under the shard lock, so an agent's entries
//!   and a shard's recency list are both in time order. An entry stamped `t` is live
//!   while `now < t + max_age`; expired entries are never returned or counted. They are
//!   reclaimed lazily: an agent's own expired entries whenever it is touched, and whole
//!   expired agents from the head of a shard's list (its head is its oldest) on every
//!   record into that shard (a few per call) and by `agents()` (all).
//! - At most `max_agents` agents exist at every instant, also under concurrent writers:
//!   a new agent first reserves a place in an atomic counter (CAS, never above
//!   `max_agents`); a removal frees its place only after the node is gone.
//! - When the store is full, the new agent's record is always kept and the least recently
//!   recorded agent is evicted: the shard heads are inspected one shard at a time and the
//!   one with the smallest sequence number is evicted. Sequentially this is exact LRU;
//!   under concurrent recording it is LRU as of the moment each shard was looked at (an
//!   agent recorded into while the scan runs may be evicted although it just got fresh).
//! - Nothing is dropped under a lock: evicted and expired entries are moved into a
//!   [`Grave`] that the caller drops after every lock is released (a Python error
//!   object's last reference may run `__del__`).
//! - A garbage collector can see every held error without blocking
//!   ([`ErrorStore::try_for_each`], one `try_lock` per shard) and empty the store
//!   ([`ErrorStore::clear`]).
//!
//! # Bounds of the arithmetic
//! Node indexes are `u32` with `u32::MAX` as the null link: a shard would need 2^32 - 1
//! agents (over 250 GiB of nodes) to collide, far beyond any `max_agents` that fits in
//! memory. Times are clock readings (at most 2^62 ns) plus `max_age` (at most 4e18 ns),
//! added with saturation anyway; sequence numbers are `u64` counters.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use hashbrown::HashMap;
use parking_lot::Mutex;

use crate::core::clock::Clock;

/// Shards of a store.
pub const SHARDS: usize = 16;
/// Expired agents reclaimed per record, at most.
const SWEEP_BUDGET: usize = 4;
const NIL: u32 = u32::MAX;

/// Why an ErrorStore argument was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorStoreError {
    /// A bound below 1, naming the argument.
    TooSmall(&'static str),
}

impl std::fmt::Display for ErrorStoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooSmall(arg) => write!(f, "{arg} must be >= 1"),
        }
    }
}

impl std::error::Error for ErrorStoreError {}

/// What was removed under a lock, to be dropped after it is released.
pub struct Grave<E> {
    entries: Vec<(E, i64)>,
    queues: Vec<VecDeque<(E, i64)>>,
    /// Ids of the agents evicted to make room (not those that expired).
    evicted: Vec<Box<str>>,
}

impl<E> Default for Grave<E> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            queues: Vec::new(),
            evicted: Vec::new(),
        }
    }
}

impl<E> Grave<E> {
    /// Ids of the agents evicted to make room, oldest first.
    pub fn evicted(&self) -> &[Box<str>] {
        &self.evicted
    }

    /// Entries held (for tests).
    pub fn len(&self) -> usize {
        self.entries.len() + self.queues.iter().map(VecDeque::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Node<E> {
    key: Box<str>,
    entries: VecDeque<(E, i64)>,
    last_seq: u64,
    last_time: i64,
    prev: u32,
    next: u32,
}

struct Shard<E> {
    index: HashMap<Box<str>, u32>,
    nodes: Vec<Node<E>>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
}

impl<E> Shard<E> {
    fn new() -> Self {
        Self {
            index: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn push_back(&mut self, i: u32) {
        let tail = self.tail;
        {
            let n = &mut self.nodes[i as usize];
            n.prev = tail;
            n.next = NIL;
        }
        if tail == NIL {
            self.head = i;
        } else {
            self.nodes[tail as usize].next = i;
        }
        self.tail = i;
    }

    /// Unlinks and frees node `i`, moving its entries into `grave`; returns its key.
    fn remove(&mut self, i: u32, grave: &mut Grave<E>) -> Box<str> {
        self.unlink(i);
        let n = &mut self.nodes[i as usize];
        let key = std::mem::take(&mut n.key);
        grave.queues.push(std::mem::take(&mut n.entries));
        self.index.remove(&key);
        self.free.push(i);
        key
    }

    fn insert(&mut self, key: &str) -> u32 {
        let node = Node {
            key: key.into(),
            entries: VecDeque::new(),
            last_seq: 0,
            last_time: 0,
            prev: NIL,
            next: NIL,
        };
        let i = if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = node;
            i
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        self.index.insert(key.into(), i);
        self.push_back(i);
        i
    }

    /// Drops expired entries of node `i`; removes it if nothing is left. True if removed.
    fn prune(&mut self, i: u32, now: i64, max_age: i64, grave: &mut Grave<E>) -> bool {
        let n = &mut self.nodes[i as usize];
        while n
            .entries
            .front()
            .is_some_and(|&(_, t)| now >= t.saturating_add(max_age))
        {
            if let Some(e) = n.entries.pop_front() {
                grave.entries.push(e);
            }
        }
        if n.entries.is_empty() {
            self.remove(i, grave);
            true
        } else {
            false
        }
    }

    /// Removes up to `budget` whole agents whose newest entry has expired, from the head.
    fn sweep(&mut self, now: i64, max_age: i64, budget: usize, grave: &mut Grave<E>) -> usize {
        let mut removed = 0;
        while removed < budget && self.head != NIL {
            let h = self.head;
            if now < self.nodes[h as usize].last_time.saturating_add(max_age) {
                break;
            }
            self.remove(h, grave);
            removed += 1;
        }
        removed
    }
}

/// Errors per agent, bounded. `E` is the error value (a Python object in the binding).
pub struct ErrorStore<E> {
    shards: Box<[Mutex<Shard<E>>]>,
    hasher: hashbrown::DefaultHashBuilder,
    clock: Clock,
    max_per_agent: usize,
    max_age_ns: i64,
    max_agents: usize,
    /// Places taken by agents (present, or being inserted): never above `max_agents`.
    places: AtomicUsize,
    /// Records stored so far (each takes the next number: also their recency order).
    seq: AtomicU64,
    /// Agents evicted to make room for another (not those that expired).
    evicted: AtomicU64,
}

impl<E> ErrorStore<E> {
    pub fn new(
        max_per_agent: usize,
        max_age_ns: i64,
        max_agents: usize,
        clock: Clock,
    ) -> Result<Self, ErrorStoreError> {
        if max_per_agent < 1 {
            return Err(ErrorStoreError::TooSmall("max_per_agent"));
        }
        if max_agents < 1 {
            return Err(ErrorStoreError::TooSmall("max_agents"));
        }
        Ok(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            clock,
            max_per_agent,
            max_age_ns: max_age_ns.max(1),
            max_agents,
            places: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        })
    }

    pub fn max_per_agent(&self) -> usize {
        self.max_per_agent
    }

    pub fn max_age_ns(&self) -> i64 {
        self.max_age_ns
    }

    pub fn max_agents(&self) -> usize {
        self.max_agents
    }

    pub fn now_nanos(&self) -> i64 {
        self.clock.now_nanos()
    }

    fn shard(&self, agent: &str) -> &Mutex<Shard<E>> {
        let h = self.hasher.hash_one(agent);
        &self.shards[(h >> 32) as usize % SHARDS]
    }

    /// Appends to agent node `i` (under its shard lock) and makes it the most recent.
    fn push(&self, sh: &mut Shard<E>, i: u32, error: E, grave: &mut Grave<E>) {
        let now = self.clock.now_nanos();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        {
            let n = &mut sh.nodes[i as usize];
            while n
                .entries
                .front()
                .is_some_and(|&(_, t)| now >= t.saturating_add(self.max_age_ns))
                || n.entries.len() >= self.max_per_agent
            {
                if let Some(e) = n.entries.pop_front() {
                    grave.entries.push(e);
                }
            }
            n.entries.push_back((error, now));
            n.last_seq = seq;
            n.last_time = now;
        }
        sh.unlink(i);
        sh.push_back(i);
        let swept = sh.sweep(now, self.max_age_ns, SWEEP_BUDGET, grave);
        self.free_places(swept);
    }

    fn free_places(&self, n: usize) {
        if n > 0 {
            self.places.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Stores `error` for `agent`; the record is always kept. Returns what was evicted,
    /// to be dropped by the caller with no lock held.
    pub fn record(&self, agent: &str, error: E) -> Grave<E> {
        let mut grave = Grave::default();
        let shard = self.shard(agent);
        {
            let mut sh = shard.lock();
            if let Some(&i) = sh.index.get(agent) {
                self.push(&mut sh, i, error, &mut grave);
                return grave;
            }
        }
        self.reserve(&mut grave);
        let mut sh = shard.lock();
        if let Some(&i) = sh.index.get(agent) {
            // Another thread added this agent meanwhile: give the place back.
            self.push(&mut sh, i, error, &mut grave);
            self.free_places(1);
        } else {
            let i = sh.insert(agent);
            self.push(&mut sh, i, error, &mut grave);
        }
        grave
    }

    /// Takes one agent place, evicting least recently recorded agents until one is free.
    fn reserve(&self, grave: &mut Grave<E>) {
        let mut spins = 0u32;
        loop {
            let n = self.places.load(Ordering::Acquire);
            if n < self.max_agents {
                if self
                    .places
                    .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            if !self.evict_one(grave) {
                // Every place belongs to an agent still being inserted by another thread.
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Evicts the agent with the oldest last record among the shard heads (expired agents
    /// met on the way go too). False if no shard held an agent.
    fn evict_one(&self, grave: &mut Grave<E>) -> bool {
        let now = self.clock.now_nanos();
        let mut best: Option<(u64, usize)> = None;
        for (s, shard) in self.shards.iter().enumerate() {
            let mut sh = shard.lock();
            let swept = sh.sweep(now, self.max_age_ns, usize::MAX, grave);
            self.free_places(swept);
            if swept > 0 {
                return true;
            }
            if sh.head != NIL {
                let seq = sh.nodes[sh.head as usize].last_seq;
                if best.is_none_or(|(b, _)| seq < b) {
                    best = Some((seq, s));
                }
            }
        }
        let Some((_, s)) = best else {
            return false;
        };
        let mut sh = self.shards[s].lock();
        if sh.head == NIL {
            return true; // emptied meanwhile: a place may be free now
        }
        let h = sh.head;
        let key = sh.remove(h, grave);
        grave.evicted.push(key); // moved, not copied: it was going to be dropped
        drop(sh);
        self.free_places(1);
        self.evicted.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// `(records stored, agents evicted to make room)` since the store was made.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.seq.load(Ordering::Relaxed),
            self.evicted.load(Ordering::Relaxed),
        )
    }

    /// Live entries of `agent` (0 when unknown).
    pub fn count(&self, agent: &str, grave: &mut Grave<E>) -> usize {
        let now = self.clock.now_nanos();
        let mut sh = self.shard(agent).lock();
        let Some(&i) = sh.index.get(agent) else {
            return 0;
        };
        if sh.prune(i, now, self.max_age_ns, grave) {
            drop(sh);
            self.free_places(1);
            return 0;
        }
        sh.nodes[i as usize].entries.len()
    }

    /// Calls `visit(error, timestamp)` on up to `limit` live entries of `agent`, newest
    /// first, under the shard lock (`visit` must not run user code).
    pub fn history(
        &self,
        agent: &str,
        limit: usize,
        grave: &mut Grave<E>,
        mut visit: impl FnMut(&E, i64),
    ) {
        let now = self.clock.now_nanos();
        let mut sh = self.shard(agent).lock();
        let Some(&i) = sh.index.get(agent) else {
            return;
        };
        if sh.prune(i, now, self.max_age_ns, grave) {
            drop(sh);
            self.free_places(1);
            return;
        }
        for (e, t) in sh.nodes[i as usize].entries.iter().rev().take(limit) {
            visit(e, *t);
        }
    }

    /// Forgets `agent`; true if it was held.
    pub fn reset(&self, agent: &str, grave: &mut Grave<E>) -> bool {
        let mut sh = self.shard(agent).lock();
        let Some(&i) = sh.index.get(agent) else {
            return false;
        };
        sh.remove(i, grave);
        drop(sh);
        self.free_places(1);
        true
    }

    /// Ids of agents with live entries, sorted; expired agents are reclaimed first.
    pub fn agents(&self, grave: &mut Grave<E>) -> Vec<String> {
        let now = self.clock.now_nanos();
        let mut out = Vec::new();
        for shard in &*self.shards {
            let mut sh = shard.lock();
            let swept = sh.sweep(now, self.max_age_ns, usize::MAX, grave);
            self.free_places(swept);
            out.extend(sh.index.keys().map(ToString::to_string));
        }
        out.sort_unstable();
        out
    }

    /// `f` on every held error, expired ones not yet reclaimed included, in each shard
    /// whose lock is free right now (a collector's traversal must not block: a shard it
    /// cannot see only makes it more conservative). Stops at the first error.
    pub fn try_for_each<X>(&self, mut f: impl FnMut(&E) -> Result<(), X>) -> Result<(), X> {
        for shard in &*self.shards {
            if let Some(sh) = shard.try_lock() {
                for i in sh.index.values() {
                    for (e, _) in &sh.nodes[*i as usize].entries {
                        f(e)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Forgets every agent, moving what was held into `grave`.
    pub fn clear(&self, grave: &mut Grave<E>) {
        for shard in &*self.shards {
            let old = std::mem::replace(&mut *shard.lock(), Shard::new());
            self.free_places(old.index.len());
            grave
                .queues
                .extend(old.nodes.into_iter().map(|n| n.entries));
        }
    }

    /// Agents held now, expired ones not yet reclaimed included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().index.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;
    use std::sync::Arc;

    const S: i64 = 1_000_000_000;

    fn store(per: usize, age: i64, agents: usize) -> (Arc<ManualClock>, ErrorStore<u32>) {
        let c = Arc::new(ManualClock::new(0));
        let s = ErrorStore::new(per, age * S, agents, Clock::Manual(c.clone())).unwrap();
        (c, s)
    }

    fn hist(s: &ErrorStore<u32>, agent: &str) -> Vec<(u32, i64)> {
        let mut out = Vec::new();
        s.history(agent, usize::MAX, &mut Grave::default(), |e, t| {
            out.push((*e, t));
        });
        out
    }

    #[test]
    fn per_agent_ring_keeps_the_newest() {
        let (c, s) = store(3, 100, 10);
        for e in 0..5 {
            c.advance(1).unwrap();
            let g = s.record("a", e);
            assert_eq!(g.len(), usize::from(e >= 3));
        }
        assert_eq!(hist(&s, "a"), vec![(4, 5), (3, 4), (2, 3)]);
        assert_eq!(s.count("a", &mut Grave::default()), 3);
        assert_eq!(s.count("zz", &mut Grave::default()), 0);
    }

    #[test]
    fn entries_expire_at_their_deadline() {
        let (c, s) = store(10, 10, 10);
        s.record("a", 1);
        c.set(5 * S).unwrap();
        s.record("a", 2);
        c.set(10 * S - 1).unwrap();
        assert_eq!(s.count("a", &mut Grave::default()), 2);
        c.set(10 * S).unwrap();
        assert_eq!(s.count("a", &mut Grave::default()), 1);
        c.set(15 * S).unwrap();
        assert_eq!(s.count("a", &mut Grave::default()), 0);
        assert!(s.is_empty(), "an agent with no live entry is removed");
        assert_eq!(s.places.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn full_store_evicts_the_least_recently_recorded_agent() {
        let (_, s) = store(10, 100, 3);
        for a in ["a", "b", "c"] {
            s.record(a, 0);
        }
        s.record("a", 1); // b is now the least recently recorded
        let g = s.record("d", 2);
        assert_eq!(g.len(), 1);
        assert_eq!(g.evicted(), [Box::from("b")]);
        assert_eq!(s.agents(&mut Grave::default()), vec!["a", "c", "d"]);
        assert_eq!(s.count("d", &mut Grave::default()), 1);
    }

    #[test]
    fn expired_agents_are_swept_on_record_and_by_agents() {
        let (c, s) = store(10, 10, 1000);
        for i in 0..100 {
            s.record(&format!("a{i}"), i);
        }
        c.set(10 * S).unwrap();
        assert_eq!(s.len(), 100);
        let mut g = Grave::default();
        assert!(s.agents(&mut g).is_empty());
        assert_eq!(g.len(), 100);
        assert!(g.evicted().is_empty(), "expired agents are not evictions");
        assert_eq!(s.len(), 0);
        assert_eq!(s.places.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn reset_frees_the_place() {
        let (_, s) = store(10, 100, 1);
        s.record("a", 1);
        let mut g = Grave::default();
        assert!(s.reset("a", &mut g));
        assert!(!s.reset("a", &mut g));
        assert_eq!(g.len(), 1);
        s.record("b", 2);
        assert_eq!(s.agents(&mut g), vec!["b"]);
    }

    #[test]
    fn clear_empties_every_shard_and_frees_every_place() {
        let (_, s) = store(10, 100, 1000);
        for i in 0..100u32 {
            s.record(&format!("a{i}"), i);
            s.record(&format!("a{i}"), i + 1000);
        }
        let mut seen = 0;
        s.try_for_each(|_| -> Result<(), ()> {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 200);
        let mut g = Grave::default();
        s.clear(&mut g);
        assert_eq!(g.len(), 200);
        assert!(s.is_empty());
        assert_eq!(s.places.load(Ordering::Relaxed), 0);
        s.record("b", 1);
        assert_eq!(s.agents(&mut g), vec!["b"]);
        // A traversal skips a shard whose lock is taken instead of blocking.
        let shard = s.shard("b").lock();
        let mut seen = 0;
        s.try_for_each(|_| -> Result<(), ()> {
            seen += 1;
            Ok(())
        })
        .unwrap();
        drop(shard);
        assert_eq!(seen, 0);
    }

    #[test]
    fn bad_bounds_name_the_argument() {
        let e = ErrorStore::<u32>::new(0, S, 1, Clock::Monotonic)
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "max_per_agent must be >= 1");
        let e = ErrorStore::<u32>::new(1, S, 0, Clock::Monotonic)
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "max_agents must be >= 1");
    }

    #[test]
    fn concurrent_records_keep_every_bound() {
        let (_, s) = store(5, 100, 20);
        let s = Arc::new(s);
        let hs: Vec<_> = (0..4u32)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let mut evicted = 0;
                    for n in 0..5_000u32 {
                        evicted += s.record(&format!("t{t}-{}", n % 37), n).len();
                        assert!(s.places.load(Ordering::Relaxed) <= 20);
                    }
                    evicted
                })
            })
            .collect();
        let evicted: usize = hs.into_iter().map(|h| h.join().unwrap()).sum();
        let agents = s.agents(&mut Grave::default());
        assert!(agents.len() <= 20);
        assert_eq!(s.places.load(Ordering::Relaxed), agents.len());
        let held: usize = agents
            .iter()
            .map(|a| s.count(a, &mut Grave::default()))
            .sum();
        assert!(agents
            .iter()
            .all(|a| s.count(a, &mut Grave::default()) <= 5));
        assert_eq!(held + evicted, 4 * 5_000);
    }
}
