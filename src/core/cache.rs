//! A sharded, bounded LRU cache with per-entry TTL.
//!
//! # Structure
//! The cache is `n` shards; a key's shard is chosen from its (mixed) hash. Each shard is
//! one mutex around an [`LruShard`]: an open-addressing table of slot
//! indices (`hashbrown::HashTable<u32>`), a slab of slots, an intrusive doubly linked
//! recency list (head = most recent), and an intrusive indexed min-heap of the slots that
//! have a deadline. Every operation on a shard is O(1) except heap moves, O(log n) and
//! only for entries with a TTL.
//!
//! # Invariants
//! - Shard capacities sum to exactly `max_size` and a shard never holds more than its
//!   capacity, so `len <= max_size` at every instant, also under concurrent writers.
//! - An entry stamped at `t` with ttl `d` is live while `now < t + d`; a lookup never
//!   returns an entry whose deadline has passed (it is removed instead).
//! - Inserting into a full shard removes an expired entry if one exists (the earliest
//!   deadline), else the least recently used one. With one shard this is exact LRU over
//!   live entries.
//! - Expired entries are reclaimed without a background thread: each write pops up to
//!   [`RECLAIM_BUDGET`] expired entries from the deadline heap; `expire` pops them all.
//!
//! # Keys that may run user code
//! The shard never runs arbitrary key comparison under its lock. Callers supply a
//! [`KeyQuery`]: `quick_eq` answers under the lock only when it can do so without user
//! code (identity, or plain builtin values), and otherwise says [`Match::Unknown`]. The
//! cache then copies the candidate keys out, releases the lock, runs `slow_eq` on each,
//! and retries with those answers remembered by slot handle (index + generation, so a
//! reused slot is never mistaken for the one compared). Removed keys and values are
//! handed back to the caller to be dropped after the lock is released, because dropping
//! them may run user code too.

use hashbrown::HashTable;
use parking_lot::Mutex;

/// Deadline of an entry without TTL.
pub const NEVER: i64 = i64::MAX;
/// Expired entries reclaimed per write, at most.
pub const RECLAIM_BUDGET: usize = 4;
/// Default shards leave at least this many entries per shard.
pub const MIN_SHARD_CAPACITY: usize = 64;

const NIL: u32 = u32::MAX;

/// A reference to a slot that stays valid only while the slot holds the same entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    idx: u32,
    gen: u32,
}

/// The answer of a key comparison made under the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    Equal,
    NotEqual,
    /// Cannot tell without running user code; ask again outside the lock.
    Unknown,
}

/// How a caller's key is compared with stored keys, and how stored data is copied out.
pub trait KeyQuery<K, V> {
    type Error;
    /// Compare under the shard lock; must not run user code.
    fn quick_eq(&self, stored: &K) -> Match;
    /// Compare outside every lock; may run user code and fail.
    fn slow_eq(&self, stored: &K) -> Result<bool, Self::Error>;
    fn clone_key(&self, key: &K) -> K;
    fn clone_value(&self, value: &V) -> V;
}

/// Counters of one shard, kept under its lock (never a global one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub size: u64,
    pub max_size: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.inserts += o.inserts;
        self.evictions += o.evictions;
        self.expirations += o.expirations;
        self.size += o.size;
        self.max_size += o.max_size;
    }
}

struct Entry<K, V> {
    key: K,
    value: V,
    expires: i64,
}

/// Aligned to a cache line so that one lookup touches one line of the slab (a slot
/// holding a Python key, value and links is 64 bytes).
#[repr(align(64))]
struct Slot<K, V> {
    entry: Option<Entry<K, V>>,
    hash: u64,
    gen: u32,
    prev: u32,
    next: u32,
    /// Position in the deadline heap, or NIL when the entry has no deadline.
    heap_pos: u32,
}

/// One shard: a bounded LRU table with deadlines. Not thread-safe by itself.
pub struct LruShard<K, V> {
    table: HashTable<u32>,
    slots: Vec<Slot<K, V>>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    heap: Vec<u32>,
    len: usize,
    capacity: usize,
    stats: Stats,
}

impl<K, V> LruShard<K, V> {
    pub fn new(capacity: usize) -> Self {
        assert!(
            capacity >= 1 && capacity < NIL as usize,
            "shard capacity out of range"
        );
        Self {
            table: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            heap: Vec::new(),
            len: 0,
            capacity,
            stats: Stats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn entry(&self, h: Handle) -> &Entry<K, V> {
        let slot = &self.slots[h.idx as usize];
        debug_assert_eq!(slot.gen, h.gen);
        slot.entry.as_ref().expect("handle to an empty slot")
    }

    pub fn key(&self, h: Handle) -> &K {
        &self.entry(h).key
    }

    pub fn value(&self, h: Handle) -> &V {
        &self.entry(h).value
    }

    pub fn is_live(&self, h: Handle, now: i64) -> bool {
        now < self.entry(h).expires
    }

    /// Finds the entry for `hash` whose key `matcher` says is equal. Collects the handles
    /// for which the matcher could not tell.
    fn find(&self, hash: u64, mut matcher: impl FnMut(Handle, &K) -> Match) -> Probe {
        let slots = &self.slots;
        let mut unknown = Vec::new();
        let found = self.table.find(hash, |&idx| {
            let slot = &slots[idx as usize];
            if slot.hash != hash {
                return false;
            }
            let h = Handle { idx, gen: slot.gen };
            let Some(e) = slot.entry.as_ref() else {
                return false;
            };
            match matcher(h, &e.key) {
                Match::Equal => true,
                Match::NotEqual => false,
                Match::Unknown => {
                    unknown.push(h);
                    false
                }
            }
        });
        match found {
            Some(&idx) => Probe::Found(Handle {
                idx,
                gen: self.slots[idx as usize].gen,
            }),
            None if unknown.is_empty() => Probe::Absent,
            None => Probe::Unknown(unknown),
        }
    }

    /// `find` for the common case: no remembered answers and no candidate list. Returns
    /// `None` when some comparison needs user code (the caller then takes the slow path).
    #[inline]
    #[allow(clippy::option_option)] // None = undecided, Some(None) = absent; private
    fn find_quick<Q: KeyQuery<K, V>>(&self, hash: u64, q: &Q) -> Option<Option<Handle>> {
        let slots = &self.slots;
        let mut unknown = false;
        let found = self.table.find(hash, |&idx| {
            let slot = &slots[idx as usize];
            if slot.hash != hash {
                return false;
            }
            let Some(e) = slot.entry.as_ref() else {
                return false;
            };
            match q.quick_eq(&e.key) {
                Match::Equal => true,
                Match::NotEqual => false,
                Match::Unknown => {
                    unknown = true;
                    false
                }
            }
        });
        match found {
            Some(&idx) => Some(Some(Handle {
                idx,
                gen: slots[idx as usize].gen,
            })),
            None if unknown => None,
            None => Some(None),
        }
    }

    /// The handle of the entry for `hash` whose value satisfies `pred` (no key compare).
    pub fn handle_where(&self, hash: u64, mut pred: impl FnMut(&V) -> bool) -> Option<Handle> {
        let slots = &self.slots;
        let &idx = self.table.find(hash, |&idx| {
            let s = &slots[idx as usize];
            s.hash == hash && s.entry.as_ref().is_some_and(|e| pred(&e.value))
        })?;
        Some(Handle {
            idx,
            gen: slots[idx as usize].gen,
        })
    }

    // ---- recency list ----

    fn unlink(&mut self, idx: u32) {
        let (prev, next) = {
            let s = &self.slots[idx as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, idx: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[idx as usize];
            s.prev = NIL;
            s.next = old;
        }
        if old == NIL {
            self.tail = idx;
        } else {
            self.slots[old as usize].prev = idx;
        }
        self.head = idx;
    }

    /// Marks the entry most recently used.
    #[inline]
    pub fn touch(&mut self, h: Handle) {
        if self.head != h.idx {
            self.unlink(h.idx);
            self.push_front(h.idx);
        }
    }

    // ---- deadline heap (indexed binary min-heap on `expires`) ----

    fn deadline(&self, heap_i: usize) -> i64 {
        let idx = self.heap[heap_i] as usize;
        self.slots[idx].entry.as_ref().map_or(NEVER, |e| e.expires)
    }

    fn heap_set(&mut self, heap_i: usize, idx: u32) {
        self.heap[heap_i] = idx;
        self.slots[idx as usize].heap_pos = heap_i as u32;
    }

    fn sift_up(&mut self, mut i: usize) {
        let idx = self.heap[i];
        let d = self.deadline(i);
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.deadline(parent) <= d {
                break;
            }
            let p = self.heap[parent];
            self.heap_set(i, p);
            i = parent;
        }
        self.heap_set(i, idx);
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        let idx = self.heap[i];
        let d = self.deadline(i);
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && self.deadline(r) < self.deadline(l) {
                r
            } else {
                l
            };
            if self.deadline(c) >= d {
                break;
            }
            let ci = self.heap[c];
            self.heap_set(i, ci);
            i = c;
        }
        self.heap_set(i, idx);
    }

    fn heap_insert(&mut self, idx: u32) {
        self.heap.push(idx);
        let i = self.heap.len() - 1;
        self.slots[idx as usize].heap_pos = i as u32;
        self.sift_up(i);
    }

    fn heap_remove(&mut self, idx: u32) {
        let pos = self.slots[idx as usize].heap_pos;
        if pos == NIL {
            return;
        }
        self.slots[idx as usize].heap_pos = NIL;
        let pos = pos as usize;
        let last = self.heap.pop().expect("heap position without heap");
        if pos < self.heap.len() {
            self.heap_set(pos, last);
            self.sift_down(pos);
            let p = self.slots[last as usize].heap_pos as usize;
            self.sift_up(p);
        }
    }

    /// Re-seats an entry whose deadline changed.
    fn heap_update(&mut self, idx: u32, expires: i64) {
        let pos = self.slots[idx as usize].heap_pos;
        match (pos == NIL, expires == NEVER) {
            (true, true) => {}
            (true, false) => self.heap_insert(idx),
            (false, true) => self.heap_remove(idx),
            (false, false) => {
                self.sift_down(pos as usize);
                let p = self.slots[idx as usize].heap_pos as usize;
                self.sift_up(p);
            }
        }
    }

    /// The slot with the earliest deadline, if that deadline has passed.
    fn earliest_expired(&self, now: i64) -> Option<u32> {
        let &idx = self.heap.first()?;
        (self.deadline(0) <= now).then_some(idx)
    }

    // ---- insertion and removal ----

    /// Removes an entry; returns its key and value for the caller to drop outside the lock.
    pub fn remove(&mut self, h: Handle) -> (K, V) {
        self.remove_idx(h.idx)
    }

    fn remove_idx(&mut self, idx: u32) -> (K, V) {
        let hash = self.slots[idx as usize].hash;
        if let Ok(e) = self.table.find_entry(hash, |&i| i == idx) {
            e.remove();
        }
        self.unlink(idx);
        self.heap_remove(idx);
        let slot = &mut self.slots[idx as usize];
        let entry = slot.entry.take().expect("removing an empty slot");
        slot.gen = slot.gen.wrapping_add(1);
        self.free.push(idx);
        self.len -= 1;
        (entry.key, entry.value)
    }

    /// Replaces the value and deadline of an existing entry and marks it most recent.
    /// Returns the old value.
    pub fn replace(&mut self, h: Handle, value: V, expires: i64) -> V {
        let old = {
            let e = self.slots[h.idx as usize]
                .entry
                .as_mut()
                .expect("replace of empty slot");
            e.expires = expires;
            std::mem::replace(&mut e.value, value)
        };
        self.heap_update(h.idx, expires);
        self.touch(h);
        old
    }

    /// Inserts a key known to be absent. When the shard is full, first removes an
    /// expired entry, else the least recently used one; what is removed goes to `grave`.
    pub fn insert(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        expires: i64,
        now: i64,
        grave: &mut Vec<(K, V)>,
    ) -> Handle {
        if self.len >= self.capacity {
            if let Some(idx) = self.earliest_expired(now) {
                grave.push(self.remove_idx(idx));
                self.stats.expirations += 1;
            } else if self.tail != NIL {
                let t = self.tail;
                grave.push(self.remove_idx(t));
                self.stats.evictions += 1;
            }
        }
        let idx = if let Some(idx) = self.free.pop() {
            let s = &mut self.slots[idx as usize];
            s.entry = Some(Entry {
                key,
                value,
                expires,
            });
            s.hash = hash;
            idx
        } else {
            let idx = self.slots.len() as u32;
            self.slots.push(Slot {
                entry: Some(Entry {
                    key,
                    value,
                    expires,
                }),
                hash,
                gen: 0,
                prev: NIL,
                next: NIL,
                heap_pos: NIL,
            });
            idx
        };
        let slots = &self.slots;
        self.table
            .insert_unique(hash, idx, |&i| slots[i as usize].hash);
        self.push_front(idx);
        if expires != NEVER {
            self.heap_insert(idx);
        }
        self.len += 1;
        Handle {
            idx,
            gen: self.slots[idx as usize].gen,
        }
    }

    /// Removes up to `budget` expired entries (all of them with `usize::MAX`).
    pub fn reclaim(&mut self, now: i64, budget: usize, grave: &mut Vec<(K, V)>) -> usize {
        let mut n = 0;
        while n < budget {
            let Some(idx) = self.earliest_expired(now) else {
                break;
            };
            grave.push(self.remove_idx(idx));
            n += 1;
        }
        self.stats.expirations += n as u64;
        n
    }

    /// Removes every entry.
    pub fn clear(&mut self, grave: &mut Vec<(K, V)>) {
        grave.reserve(self.len);
        for slot in &mut self.slots {
            if let Some(e) = slot.entry.take() {
                grave.push((e.key, e.value));
            }
        }
        self.slots.clear();
        self.free.clear();
        self.table.clear();
        self.heap.clear();
        self.head = NIL;
        self.tail = NIL;
        self.len = 0;
    }

    /// Live entries, most recently used first.
    pub fn iter_live(&self, now: i64) -> impl Iterator<Item = (&K, &V)> + '_ {
        let mut cur = self.head;
        std::iter::from_fn(move || loop {
            if cur == NIL {
                return None;
            }
            let s = &self.slots[cur as usize];
            cur = s.next;
            if let Some(e) = s.entry.as_ref() {
                if now < e.expires {
                    return Some((&e.key, &e.value));
                }
            }
        })
    }

    pub fn stats(&self) -> Stats {
        Stats {
            size: self.len as u64,
            max_size: self.capacity as u64,
            ..self.stats
        }
    }

    /// Checks the structural invariants (tests only; O(n)).
    #[cfg(test)]
    fn check(&self) {
        let mut n = 0;
        let mut cur = self.head;
        let mut prev = NIL;
        while cur != NIL {
            let s = &self.slots[cur as usize];
            assert!(s.entry.is_some());
            assert_eq!(s.prev, prev);
            prev = cur;
            cur = s.next;
            n += 1;
        }
        assert_eq!(self.tail, prev);
        assert_eq!(n, self.len);
        assert_eq!(self.table.len(), self.len);
        assert!(self.len <= self.capacity);
        for (i, &idx) in self.heap.iter().enumerate() {
            assert_eq!(self.slots[idx as usize].heap_pos as usize, i);
            if i > 0 {
                assert!(self.deadline((i - 1) / 2) <= self.deadline(i));
            }
        }
    }
}

enum Probe {
    Found(Handle),
    Absent,
    Unknown(Vec<Handle>),
}

/// Spreads a hash over all 64 bits (Python's int hashes are small integers).
#[inline]
pub fn mix(hash: u64) -> u64 {
    let x = (hash ^ (hash >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

/// Shard capacities that sum exactly to `max_size`.
pub fn shard_capacities(max_size: usize, shards: usize) -> Vec<usize> {
    let base = max_size / shards;
    let extra = max_size % shards;
    (0..shards).map(|i| base + usize::from(i < extra)).collect()
}

/// The default shard count: enough for the CPUs, but every shard keeps at least
/// [`MIN_SHARD_CAPACITY`] entries so small caches are one exact-LRU shard.
pub fn default_shards(max_size: usize, cpus: usize) -> usize {
    let want = (cpus.max(1) * 4).next_power_of_two();
    want.min(max_size / MIN_SHARD_CAPACITY).max(1)
}

#[repr(align(128))]
struct Padded<T>(T);

/// Why a cache could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheError {
    MaxSize,
    Shards { max_size: usize },
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MaxSize => write!(f, "max_size must be >= 1"),
            Self::Shards { max_size } => {
                write!(f, "shards must be between 1 and max_size ({max_size})")
            }
        }
    }
}

impl std::error::Error for CacheError {}

/// The sharded cache. Keys are found through a [`KeyQuery`] and a precomputed hash.
pub struct ShardedCache<K, V> {
    shards: Box<[Padded<Mutex<LruShard<K, V>>>]>,
    max_size: usize,
}

/// The answer of [`ShardedCache::get_fast`].
pub enum Fast<V> {
    Hit(V),
    Miss,
    /// Undecided without the general path.
    Slow,
}

/// What happened to a key on an operation that may find it.
pub enum Found<'a, K, V> {
    Live(Handle, &'a mut LruShard<K, V>),
    Missing(&'a mut LruShard<K, V>),
}

impl<K, V> ShardedCache<K, V> {
    pub fn new(max_size: usize, shards: Option<usize>, cpus: usize) -> Result<Self, CacheError> {
        if max_size == 0 || max_size >= NIL as usize {
            return Err(CacheError::MaxSize);
        }
        let n = match shards {
            Some(n) if n == 0 || n > max_size => return Err(CacheError::Shards { max_size }),
            Some(n) => n,
            None => default_shards(max_size, cpus),
        };
        let shards = shard_capacities(max_size, n)
            .into_iter()
            .map(|c| Padded(Mutex::new(LruShard::new(c))))
            .collect();
        Ok(Self { shards, max_size })
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Mutex<LruShard<K, V>> {
        // Multiply-shift range reduction on bits 24..56: the table inside the shard uses
        // the low bits for the position and the top 7 bits as its tag, so both keep their
        // full entropy within a shard.
        let mid = (hash >> 24) as u32;
        let i = ((u64::from(mid) * self.shards.len() as u64) >> 32) as usize;
        &self.shards[i].0
    }

    /// Finds `hash`/`q` in its shard, resolving comparisons that need user code outside
    /// the lock, then runs `f` under the shard lock with the entry (expired or not) or
    /// with its absence.
    pub fn with_key<Q, T>(
        &self,
        hash: u64,
        q: &Q,
        f: impl FnOnce(&mut LruShard<K, V>, Option<Handle>) -> T,
    ) -> Result<T, Q::Error>
    where
        Q: KeyQuery<K, V>,
    {
        let shard = self.shard(hash);
        {
            let mut g = shard.lock();
            if let Some(h) = g.find_quick(hash, q) {
                return Ok(f(&mut g, h));
            }
        }
        let mut known: Vec<(Handle, bool)> = Vec::new();
        loop {
            let mut g = shard.lock();
            let probe = g.find(hash, |h, k| {
                if let Some(&(_, eq)) = known.iter().find(|(kh, _)| *kh == h) {
                    return if eq { Match::Equal } else { Match::NotEqual };
                }
                q.quick_eq(k)
            });
            match probe {
                Probe::Found(h) => return Ok(f(&mut g, Some(h))),
                Probe::Absent => return Ok(f(&mut g, None)),
                Probe::Unknown(handles) => {
                    let keys: Vec<(Handle, K)> = handles
                        .iter()
                        .map(|&h| (h, q.clone_key(g.key(h))))
                        .collect();
                    drop(g);
                    for (h, k) in &keys {
                        let eq = q.slow_eq(k)?;
                        known.push((*h, eq));
                    }
                }
            }
        }
    }

    /// The common case of [`get`](Self::get) in one step: a live hit or a plain miss,
    /// decided under the lock with `quick_eq` only. Anything else (an expired entry, a
    /// comparison that needs user code) returns [`Fast::Slow`] without counting, and the
    /// caller takes `get`. The result is two words, returned in registers.
    #[inline]
    pub fn get_fast<Q: KeyQuery<K, V>>(&self, hash: u64, q: &Q, now: i64, count: bool) -> Fast<V> {
        let mut g = self.shard(hash).lock();
        match g.find_quick(hash, q) {
            Some(Some(h)) if g.is_live(h, now) => {
                if count {
                    g.touch(h);
                    g.stats.hits += 1;
                }
                Fast::Hit(q.clone_value(g.value(h)))
            }
            Some(None) => {
                if count {
                    g.stats.misses += 1;
                }
                Fast::Miss
            }
            _ => Fast::Slow,
        }
    }

    /// Value for the key if live; counts a hit or a miss and refreshes recency when
    /// `count` is set (a lookup through `in` neither counts nor refreshes).
    pub fn get<Q: KeyQuery<K, V>>(
        &self,
        hash: u64,
        q: &Q,
        now: i64,
        count: bool,
        grave: &mut Vec<(K, V)>,
    ) -> Result<Option<V>, Q::Error> {
        self.with_key(hash, q, |s, h| match h {
            Some(h) if s.is_live(h, now) => {
                if count {
                    s.touch(h);
                    s.stats.hits += 1;
                }
                Some(q.clone_value(s.value(h)))
            }
            Some(h) => {
                grave.push(s.remove(h));
                s.stats.expirations += 1;
                if count {
                    s.stats.misses += 1;
                }
                None
            }
            None => {
                if count {
                    s.stats.misses += 1;
                }
                None
            }
        })
    }

    /// Sets the key's value and deadline (inserting, or replacing the existing entry).
    pub fn set<Q: KeyQuery<K, V>>(
        &self,
        hash: u64,
        q: &Q,
        key: impl FnOnce() -> K,
        value: V,
        expires: i64,
        now: i64,
        grave: &mut Vec<(K, V)>,
    ) -> Result<(), Q::Error> {
        self.with_key(hash, q, |s, h| {
            s.stats.inserts += 1;
            match h {
                Some(h) => {
                    let old = s.replace(h, value, expires);
                    s.reclaim(now, RECLAIM_BUDGET, grave);
                    // Keep the old value's drop outside the lock too.
                    grave.push((q.clone_key(s.key(h)), old));
                }
                None => {
                    s.reclaim(now, RECLAIM_BUDGET, grave);
                    s.insert(hash, key(), value, expires, now, grave);
                }
            }
        })
    }

    /// Removes the key; returns its value if it was live.
    pub fn remove<Q: KeyQuery<K, V>>(
        &self,
        hash: u64,
        q: &Q,
        now: i64,
        grave: &mut Vec<(K, V)>,
    ) -> Result<Option<V>, Q::Error> {
        self.with_key(hash, q, |s, h| {
            let h = h?;
            let live = s.is_live(h, now);
            let (k, v) = s.remove(h);
            let out = if live {
                Some(q.clone_value(&v))
            } else {
                s.stats.expirations += 1;
                None
            };
            grave.push((k, v));
            out
        })
    }

    /// Removes every expired entry now; returns how many.
    pub fn expire(&self, now: i64, grave: &mut Vec<(K, V)>) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().reclaim(now, usize::MAX, grave))
            .sum()
    }

    /// Live entries; reclaims expired ones first.
    pub fn len(&self, now: i64, grave: &mut Vec<(K, V)>) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut g = s.0.lock();
                g.reclaim(now, usize::MAX, grave);
                g.len()
            })
            .sum()
    }

    pub fn clear(&self, grave: &mut Vec<(K, V)>) {
        for s in &*self.shards {
            s.0.lock().clear(grave);
        }
    }

    /// Copies of the live entries, shard by shard (most recent first within a shard).
    pub fn snapshot<T>(&self, now: i64, mut f: impl FnMut(&K, &V) -> T) -> Vec<T> {
        let mut out = Vec::new();
        for s in &*self.shards {
            let g = s.0.lock();
            out.extend(g.iter_live(now).map(|(k, v)| f(k, v)));
        }
        out
    }

    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for s in &*self.shards {
            total.add(&s.0.lock().stats());
        }
        total
    }

    /// Runs `f` on the key's shard under its lock (single-flight bookkeeping lives there).
    pub fn with_shard<T>(&self, hash: u64, f: impl FnOnce(&mut LruShard<K, V>) -> T) -> T {
        f(&mut self.shard(hash).lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};
    use std::sync::Arc;

    fn h<T: Hash>(t: &T) -> u64 {
        let mut s = DefaultHasher::new();
        t.hash(&mut s);
        mix(s.finish())
    }

    /// Plain keys compare under the lock.
    struct Q<'a>(&'a str);
    impl KeyQuery<String, u64> for Q<'_> {
        type Error = ();
        fn quick_eq(&self, stored: &String) -> Match {
            if stored == self.0 {
                Match::Equal
            } else {
                Match::NotEqual
            }
        }
        fn slow_eq(&self, _: &String) -> Result<bool, ()> {
            unreachable!()
        }
        fn clone_key(&self, k: &String) -> String {
            k.clone()
        }
        fn clone_value(&self, v: &u64) -> u64 {
            *v
        }
    }

    /// Keys whose comparison always needs the slow path; counts the slow calls.
    struct Slow<'a>(&'a str, std::cell::Cell<usize>);
    impl KeyQuery<String, u64> for Slow<'_> {
        type Error = &'static str;
        fn quick_eq(&self, _: &String) -> Match {
            Match::Unknown
        }
        fn slow_eq(&self, stored: &String) -> Result<bool, &'static str> {
            self.1.set(self.1.get() + 1);
            if stored == "boom" {
                Err("boom")
            } else {
                Ok(stored == self.0)
            }
        }
        fn clone_key(&self, k: &String) -> String {
            k.clone()
        }
        fn clone_value(&self, v: &u64) -> u64 {
            *v
        }
    }

    fn set(c: &ShardedCache<String, u64>, k: &str, v: u64, exp: i64, now: i64) {
        let mut g = Vec::new();
        c.set(h(&k), &Q(k), || k.to_string(), v, exp, now, &mut g)
            .unwrap();
    }

    fn get(c: &ShardedCache<String, u64>, k: &str, now: i64) -> Option<u64> {
        c.get(h(&k), &Q(k), now, true, &mut Vec::new()).unwrap()
    }

    #[test]
    fn exact_lru_with_one_shard() {
        let c = ShardedCache::new(3, Some(1), 8).unwrap();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            set(&c, k, i as u64, NEVER, 0);
        }
        assert_eq!(get(&c, "a", 0), Some(0)); // a is now most recent
        set(&c, "d", 3, NEVER, 0); // evicts b
        assert_eq!(get(&c, "b", 0), None);
        assert_eq!(get(&c, "a", 0), Some(0));
        assert_eq!(get(&c, "c", 0), Some(2));
        assert_eq!(get(&c, "d", 0), Some(3));
        let st = c.stats();
        assert_eq!(
            (
                st.hits,
                st.misses,
                st.inserts,
                st.evictions,
                st.size,
                st.max_size
            ),
            (4, 1, 4, 1, 3, 3)
        );
    }

    #[test]
    fn ttl_is_exclusive_and_expired_entries_go_first() {
        let c = ShardedCache::new(2, Some(1), 1).unwrap();
        set(&c, "a", 1, 10, 0);
        set(&c, "b", 2, NEVER, 0);
        assert_eq!(get(&c, "a", 9), Some(1));
        assert_eq!(get(&c, "a", 10), None, "live while now < t + d");
        set(&c, "a", 1, 10, 0);
        get(&c, "a", 0); // a most recent, b is LRU
        set(&c, "c", 3, NEVER, 20); // a has expired: it goes, not b
        assert_eq!(get(&c, "b", 20), Some(2));
        assert_eq!(get(&c, "c", 20), Some(3));
        assert_eq!(c.stats().evictions, 0);
    }

    #[test]
    fn expire_and_len_reclaim() {
        let c = ShardedCache::<String, u64>::new(1000, Some(4), 1).unwrap();
        for i in 0..100 {
            set(&c, &i.to_string(), i, if i % 2 == 0 { 5 } else { NEVER }, 0);
        }
        assert_eq!(c.len(0, &mut Vec::new()), 100);
        let mut grave = Vec::new();
        assert_eq!(c.expire(5, &mut grave), 50);
        assert_eq!(grave.len(), 50);
        assert_eq!(c.len(5, &mut Vec::new()), 50);
        assert_eq!(c.stats().expirations, 50);
    }

    #[test]
    fn capacities_sum_to_max_size() {
        for (m, n) in [(10, 3), (100, 7), (64, 64), (1, 1)] {
            let caps = shard_capacities(m, n);
            assert_eq!(caps.iter().sum::<usize>(), m);
            assert!(caps.iter().all(|&c| c >= 1));
        }
        assert_eq!(default_shards(10, 64), 1);
        assert_eq!(default_shards(100_000, 2), 8);
        assert!(ShardedCache::<String, u64>::new(0, None, 1).is_err());
        assert_eq!(
            ShardedCache::<String, u64>::new(5, Some(6), 1)
                .err()
                .unwrap()
                .to_string(),
            "shards must be between 1 and max_size (5)"
        );
    }

    #[test]
    fn slow_comparisons_happen_outside_and_errors_propagate() {
        let c: ShardedCache<String, u64> = ShardedCache::new(10, Some(1), 1).unwrap();
        // Force collisions: every key under one hash.
        let mut g = Vec::new();
        for k in ["x", "y", "z"] {
            let q = Slow(k, std::cell::Cell::new(0));
            c.set(7, &q, || k.to_string(), 1, NEVER, 0, &mut g).unwrap();
        }
        let q = Slow("y", std::cell::Cell::new(0));
        assert_eq!(c.get(7, &q, 0, true, &mut g).unwrap(), Some(1));
        assert!(q.1.get() >= 1);
        c.set(
            7,
            &Slow("boom", std::cell::Cell::new(0)),
            || "boom".to_string(),
            1,
            NEVER,
            0,
            &mut g,
        )
        .unwrap();
        let q = Slow("w", std::cell::Cell::new(0));
        assert_eq!(c.get(7, &q, 0, true, &mut g), Err("boom"));
        assert_eq!(c.len(0, &mut g), 4);
    }

    #[test]
    fn heap_stays_ordered_under_churn() {
        let mut s: LruShard<u64, u64> = LruShard::new(50);
        let mut grave = Vec::new();
        let mut seed = 12345u64;
        let mut handles = Vec::new();
        for i in 0..2000u64 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let exp = if seed % 3 == 0 {
                NEVER
            } else {
                (seed >> 40) as i64 % 1000
            };
            let now = i as i64 / 4;
            if seed % 5 == 0 && !handles.is_empty() {
                let h: Handle = handles.swap_remove((seed >> 20) as usize % handles.len());
                if s.slots[h.idx as usize].gen == h.gen && s.slots[h.idx as usize].entry.is_some() {
                    if seed % 2 == 0 {
                        s.remove(h);
                    } else {
                        s.replace(h, i, exp);
                    }
                }
            } else {
                handles.push(s.insert(mix(i), i, i, exp, now, &mut grave));
                s.reclaim(now, RECLAIM_BUDGET, &mut grave);
            }
            s.check();
        }
    }

    #[test]
    fn concurrent_writers_never_exceed_max_size() {
        let c: Arc<ShardedCache<String, u64>> = Arc::new(ShardedCache::new(256, None, 8).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let k = format!("{t}-{}", i % 1000);
                        set(&c, &k, i, NEVER, 0);
                        assert!(c.len(0, &mut Vec::new()) <= 256);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.len(0, &mut Vec::new()), 256);
    }
}
