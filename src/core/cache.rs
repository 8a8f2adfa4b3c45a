//! A sharded, bounded cache with per-entry TTL, evicting by LRU or W-TinyLFU.
//!
//! # Structure
//! The cache is `n` shards (`1 <= n <= MAX_SHARDS`); a key's shard is chosen from its
//! (mixed) hash. Each shard is one mutex around an [`LruShard`]: an open-addressing table
//! of slot indices (`hashbrown::HashTable<u32>`), a slab of slots, an intrusive doubly
//! linked recency list (head = most recent), an intrusive free list of empty slots, and
//! an intrusive indexed min-heap of the slots that have a deadline. Every operation on a
//! shard is O(1) except heap moves, O(log n) and only for entries with a TTL.
//! [`TimedCache`] puts a [`ShardedCache`] on a clock with a default TTL (one clock
//! reading per operation, none while nothing can expire).
//!
//! The shard's lock is a [`ShardLock`]: a plain exclusive lock (no reader stripes) for
//! every cache but the next. A TinyLFU cache without `tti` built with
//! [`Options::read_stripes`] (ferrule's free-threaded build does so) reads through
//! [`ShardedCache::get_fast`] under a shared lock of its thread's stripe: the lookup,
//! the liveness test and the clone of the value only read the shard. A counted hit
//! bumps the key's counters in the sketch at once
//! ([`FrequencySketch::increment_shared`]: relaxed loads and stores, an increment may be
//! lost to a concurrent one of the same word) and leaves its handle in the stripe's read
//! log; a miss bumps the stripe's count (statistics sum them). The exclusive lock
//! replays the log (each still-valid handle's move in the lists, and the reads' count
//! towards the sketch's aging) before anything else, so every write, eviction and
//! statistics read sees the reads before it. Hits and misses are counted exactly, and so
//! (up to such lost increments) are frequencies; a hit's move in the lists may be lost
//! when many reads pass with no write (see `core::shardlock`), as in Caffeine's and
//! moka's read buffers.
//!
//! [`Options`] turn on what a plain cache does without: weights, a time to idle (tti),
//! and handing replaced values out for an eviction listener. A plain cache pays one flag
//! test per option, under the lock it holds anyway, and its slot stays one cache line:
//! an entry's weight and own deadline live in `meta`, a vector beside the slab
//! (`meta[i]` belongs to `slots[i]`), allocated only for a weighted or tti shard.
//!
//! # Policies
//! [`Policy::Lru`] keeps every entry of a shard on one recency list and evicts its tail.
//! [`Policy::TinyLfu`] is W-TinyLFU (Einziger, Friedman and Manes, "TinyLFU: a highly
//! efficient cache admission policy", 2017; as Caffeine and moka use it, with a fixed
//! window): the same slots sit on three lists, the *window* (LRU, about 1% of the
//! shard's capacity, at least one entry), *probation* and *protected* (together the
//! main space, a segmented LRU; protected holds at most 80% of it). Each entry's list is
//! in two bits of its slot's `tag`, beside the generation, so a hit reads it from the
//! line it reads anyway (no side array for TinyLFU alone). A
//! [`FrequencySketch`](crate::core::sketch::FrequencySketch) per shard counts accesses:
//! a counted read or a write of a key is one. A cached entry's accesses are counted in
//! four more bits of its slot's `tag` (up to 15, as a sketch counter), not in the
//! sketch, whose line a hit would otherwise fetch from a table of 16 bytes per entry;
//! the entry's estimate is the sketch's plus its slot's, the slot's count goes into the
//! sketch when the entry leaves, and it halves with the sketch's counters at each aging
//! (one pass over the slab). Reads under a shared lock (below) raise the sketch's
//! counters directly: they may not write the slot.
//! - An access moves the entry to the front of its list; an entry on probation moves to
//!   protected, whose least recent entries go back to probation's front while it holds
//!   more than its share.
//! - A new entry enters the window's front. Before it does, the window gives its least
//!   recent entries to probation's front until the new one fits (the *candidates*).
//! - While the shard is over its bound (after expired entries, which still go first),
//!   the oldest undecided candidate (else the window's tail) is weighed against
//!   probation's tail (the *victim*): the candidate stays, and the victim goes, only if
//!   the sketch estimates it more frequent, or, one time in 128, if it is warm
//!   (estimate >= 6: Caffeine's answer to an adversary who keeps victims' estimates high
//!   by hash collisions); otherwise the candidate goes. One of the two missing, the
//!   other goes; neither, protected's tail. Refused candidates are evictions like any
//!   other ([`Cause::Size`], counted in `evictions`).
//! - Loads: a list's load is its entry count, or its weight in a weighted shard; the
//!   window's and protected's limits are in the same unit. The count and weight bounds
//!   of the whole shard are those of an LRU shard, enforced by the same `shed` loop, so
//!   the invariants below hold for both policies.
//!
//! The policy is per shard: a sharded cache runs one W-TinyLFU per shard over the keys
//! its hash sends there.
//!
//! # Invariants
//! - Shard capacities sum to exactly `max_size` (`1 <= max_size <= MAX_SIZE`) and a shard
//!   never holds more than its capacity, so `len <= max_size` at every instant, also under
//!   concurrent writers.
//! - An entry stamped at `t` with ttl `d` is live while `now < t + d`; a lookup never
//!   returns an entry whose deadline has passed (it is removed instead).
//! - Inserting into a full shard removes an expired entry if one exists (the earliest
//!   deadline), else the policy's choice: the least recently used one (LRU; with one
//!   shard this is exact LRU over live entries) or the loser of the admission test
//!   (TinyLFU, see "Policies").
//! - Lists: every occupied slot is on exactly one recency list (`WINDOW` for an LRU
//!   shard), the slot's `tag` names it, and the TinyLFU loads equal
//!   the sums over the lists; protected's load never exceeds its limit after an
//!   operation.
//! - Weighted shards: the capacity bounds the sum of the weights as well as the count
//!   (so zero weights stay bounded). A write removes entries (expired first, else LRU)
//!   until it fits, in its own critical section, so the bound holds at every instant; a
//!   weight above the capacity is rejected (counted, not stored, and the key's old
//!   entry removed, so no read returns the value the write superseded).
//! - Time to idle: an entry's `expires` is the earlier of its own deadline (`meta`) and
//!   its last counted read (or write) plus tti, so the heap, lookups and the expired-first
//!   rule above see one deadline. A counted read moves it forward, never back (a reader
//!   whose clock reading is older than the last one's does not shorten it), and never
//!   past the own deadline. Uncounted lookups (`in`, peek) do not move it.
//! - Expired entries are reclaimed without a background thread: each write pops up to
//!   [`RECLAIM_BUDGET`] expired entries from the deadline heap; `expire` (and `len`) pop
//!   them all, [`BULK_BATCH`] per lock hold.
//! - Index invariant: every slot index held by the table, the recency list, the free list
//!   or the heap is `< slots.len()`; the slab only grows, except in `take_all`, which
//!   resets every one of those structures at once. Indexing with such an index cannot
//!   fail. A [`Handle`] that a caller kept is checked (`slots.get`, generation, occupied)
//!   before use, so a stale one reads as "absent", never as another entry or a panic.
//!
//! # Memory
//! Nothing is reserved in proportion to `max_size`: the slab, table and heap grow on
//! demand (the slab never beyond its shard's capacity); a TinyLFU shard's sketch grows
//! with its slab (16 bytes per slot, rounded up to a power of two, times its lanes) and
//! is released by `take_all`. Every growth whose size a caller
//! drives (entries, colliding keys, snapshots) goes through `try_reserve` *before* the
//! structure changes, so running out of memory is an [`AllocError`] with the shard
//! unchanged, never an abort.
//!
//! # Keys that may run user code
//! The shard never runs arbitrary key comparison under its lock. Callers supply a
//! [`KeyQuery`]: `quick_eq` answers under the lock only when it can do so without user
//! code (identity, or plain builtin values), and otherwise says [`Match::Unknown`]. The
//! cache then copies the candidate keys out, releases the lock, runs `slow_eq` on each,
//! and retries with those answers remembered *by key identity*: the cache keeps each
//! compared key alive for the rest of the operation, so an entry whose key is that very
//! object gets that answer, and no other entry does. A comparison may clear the cache,
//! remove and re-insert keys, or wrap slot generations; a stale answer is still never
//! applied to another key (so the cache never holds two equal keys).
//!
//! # Generations
//! A slot's generation is drawn from a per-shard counter each time the slot is filled;
//! `clear` does not reset the counter, so a handle taken before a clear never matches an
//! entry stored after it (until the 26-bit counter wraps, which the identity rule above
//! makes harmless; a stale read-log record that meets a wrapped generation only moves
//! an entry in the policy's lists).
//!
//! # Dropping and reporting
//! Removed keys and values are dropped only after the lock is released, because dropping
//! them may run user code: single operations hand them to the caller (a [`Grave`], each
//! entry with its [`Cause`]) or return them out of the locked section; bulk operations
//! hand each batch to a `bury` callback between lock holds; `clear` swaps the whole slab
//! out under the lock and hands it over after ([`ShardedCache::clear_with`]). So a
//! binding can report every removed entry exactly once, with no lock held: an entry
//! leaves a shard only through `remove_idx`, and every caller of it puts what it removed
//! into a grave, a return value or a drained slab. A replaced value is the exception
//! unless [`Options::report_replaced`] asks for it (it would cost a key reference and a
//! grave push on every replacing write).

use std::sync::atomic::{AtomicBool, Ordering};

use hashbrown::HashTable;
use smallvec::SmallVec;

use crate::core::clock::Clock;
use crate::core::shardlock::{Read, ShardLock, Write};
use crate::core::sketch::{prefetch, FrequencySketch};

/// Deadline of an entry without TTL.
pub const NEVER: i64 = i64::MAX;
/// Expired entries reclaimed per write, at most.
pub const RECLAIM_BUDGET: usize = 4;
/// Default shards leave at least this many entries per shard.
pub const MIN_SHARD_CAPACITY: usize = 64;
/// Largest `max_size`: slot indices are `u32`, and `u32::MAX` is the list terminator.
pub const MAX_SIZE: usize = (u32::MAX - 1) as usize;
/// Most shards a cache may have. Each costs two cache lines (its lock, padded) even when
/// empty; past a few per CPU more shards only dilute exact LRU.
pub const MAX_SHARDS: usize = 1024;
/// Entries that bulk operations (`expire`, `len`) remove per lock hold.
pub const BULK_BATCH: usize = 1024;

const NIL: u32 = u32::MAX;

/// A reference to a slot that stays valid only while the slot holds the same entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    idx: u32,
    gen: u32,
}

/// A read-log record's flag: the read raised a sketch counter (it counts towards the
/// sketch's aging period). Generations use 26 bits, so bit 31 is free.
const BUMPED: u64 = 1 << 31;

impl Handle {
    /// One word, for a read log.
    #[inline]
    fn packed(self) -> u64 {
        (u64::from(self.idx) << 32) | u64::from(self.gen)
    }

    #[inline]
    fn unpack(w: u64) -> Self {
        Self {
            idx: (w >> 32) as u32,
            gen: (w & !BUMPED) as u32,
        }
    }
}

/// The answer of a key comparison made under the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    Equal,
    NotEqual,
    /// Cannot tell without running user code; ask again outside the lock.
    Unknown,
}

/// Memory for the cache could not be had; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocError;

impl std::fmt::Display for AllocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "out of memory for the cache")
    }
}

impl std::error::Error for AllocError {}

impl From<std::collections::TryReserveError> for AllocError {
    fn from(_: std::collections::TryReserveError) -> Self {
        Self
    }
}

impl From<smallvec::CollectionAllocErr> for AllocError {
    fn from(_: smallvec::CollectionAllocErr) -> Self {
        Self
    }
}

impl From<hashbrown::TryReserveError> for AllocError {
    fn from(_: hashbrown::TryReserveError) -> Self {
        Self
    }
}

/// How a caller's key is compared with stored keys, and how stored data is copied out.
pub trait KeyQuery<K, V> {
    type Error: From<AllocError>;
    /// Compare under the shard lock; must not run user code.
    fn quick_eq(&self, stored: &K) -> Match;
    /// Compare outside every lock; may run user code and fail.
    fn slow_eq(&self, stored: &K) -> Result<bool, Self::Error>;
    /// True if `a` and `b` are the same key object (identity; runs no user code).
    fn same_key(&self, a: &K, b: &K) -> bool;
    /// Another reference to the same key object: `same_key(&clone_key(k), k)` holds
    /// (remembered comparison answers are found by identity).
    fn clone_key(&self, key: &K) -> K;
    fn clone_value(&self, value: &V) -> V;
}

/// Why an entry left the cache (what an eviction listener is told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Pushed out by the size (or weight) bound.
    Size,
    /// Its deadline (TTL or time to idle) had passed.
    Expired,
    /// A write gave its key another value (or a value too heavy to store).
    Replaced,
    /// Removed by the caller (`remove`, `clear`).
    Deleted,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Size => "size",
            Self::Expired => "expired",
            Self::Replaced => "replaced",
            Self::Deleted => "deleted",
        }
    }
}

/// Removed entries with the reason, to be dropped (or reported) after the lock is
/// released. A single write removes at most a couple (the replaced or evicted entry, an
/// expired one): those fit inline, so the common write allocates nothing for its grave.
pub type Grave<K, V> = SmallVec<[(K, V, Cause); 2]>;

/// Which entry a full shard gives up (see "Policies" in the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Policy {
    /// Least recently used.
    #[default]
    Lru,
    /// W-TinyLFU: a small LRU window, a segmented LRU main space, and a frequency
    /// sketch deciding which of the window's and the main space's victims stays.
    TinyLfu,
}

impl Policy {
    pub fn parse(name: &str) -> Result<Self, CacheError> {
        match name {
            "lru" => Ok(Self::Lru),
            "tinylfu" => Ok(Self::TinyLfu),
            other => Err(CacheError::Policy(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::TinyLfu => "tinylfu",
        }
    }
}

/// What a cache does beyond counting entries; the default is a plain LRU cache with
/// TTL, and every option left off costs nothing on its operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// The eviction policy.
    pub policy: Policy,
    /// Each entry has a weight (`0..=capacity`); a shard's capacity bounds the sum of its
    /// weights as well as its number of entries.
    pub weighted: bool,
    /// Time to idle (clock nanoseconds, > 0): an entry not read for this long expires.
    pub tti: Option<i64>,
    /// A replaced value goes to the grave with (a reference to) its stored key, cause
    /// [`Cause::Replaced`]; otherwise it is just dropped after the lock.
    pub report_replaced: bool,
    /// TinyLFU without `tti` only: when above 0, hits and misses through
    /// [`ShardedCache::get_fast`] take a shared lock of this many stripes (see
    /// [`ShardLock`]) and leave their effect on the policy in its read log, replayed by the
    /// next exclusive holder. 0: every read takes the exclusive lock.
    pub read_stripes: usize,
}

impl Options {
    /// True if `get_fast` reads under a shared lock (see [`Options::read_stripes`]).
    pub fn shared_reads(&self) -> bool {
        self.read_stripes > 0 && self.policy == Policy::TinyLfu && self.tti.is_none()
    }
}

/// Counters of one shard, kept under its lock (never a global one). `u64` counters are
/// incremented by one per operation and cannot overflow in practice (2^64 operations
/// take centuries); sums over shards saturate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// Writes not stored because the value was heavier than its shard's capacity.
    pub rejected: u64,
    pub size: u64,
    /// Sum of the weights of the entries (`size` when the cache is not weighted).
    pub weight: u64,
    pub max_size: u64,
}

/// Hits over lookups (0.0 before the first lookup). In floats: the u64 sum could
/// overflow, the float one cannot.
pub fn hit_ratio(hits: u64, misses: u64) -> f64 {
    let total = hits as f64 + misses as f64;
    if total == 0.0 {
        0.0
    } else {
        hits as f64 / total
    }
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.hits = self.hits.saturating_add(o.hits);
        self.misses = self.misses.saturating_add(o.misses);
        self.inserts = self.inserts.saturating_add(o.inserts);
        self.evictions = self.evictions.saturating_add(o.evictions);
        self.expirations = self.expirations.saturating_add(o.expirations);
        self.rejected = self.rejected.saturating_add(o.rejected);
        self.size = self.size.saturating_add(o.size);
        self.weight = self.weight.saturating_add(o.weight);
        self.max_size = self.max_size.saturating_add(o.max_size);
    }
}

struct Entry<K, V> {
    key: K,
    value: V,
    /// The deadline that decides liveness: the entry's own (TTL) deadline or, with a time
    /// to idle, the earlier of that and the idle deadline.
    expires: i64,
}

/// What an entry carries beyond its slot when the cache is weighted or has a time to
/// idle, kept beside the slab (`meta[i]` belongs to `slots[i]`) so that a plain cache's
/// slot stays one cache line.
#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    /// The entry's own deadline (from its TTL, else `NEVER`); the idle deadline is never
    /// later than `expires` allows for, and is refreshed from this one on a read.
    deadline: i64,
    weight: u32,
}

/// The lists of a shard. An LRU shard keeps every entry on `WINDOW` (its one recency
/// list); a TinyLFU shard uses all three.
const WINDOW: usize = 0;
const PROBATION: usize = 1;
const PROTECTED: usize = 2;

/// Ends of an intrusive list (`NIL` when empty); `head` is the most recent.
#[derive(Debug, Clone, Copy)]
struct Ends {
    head: u32,
    tail: u32,
}

const EMPTY: Ends = Ends {
    head: NIL,
    tail: NIL,
};

/// A candidate whose estimated frequency is at least this, and not above its victim's,
/// is still admitted once in [`ADMIT_RANDOM_ONE_IN`] (Caffeine's defence against an
/// adversary who keeps the victims' estimates high by hash collisions: a warm candidate
/// cannot be locked out for good, and a cold one, the common case, is never admitted by
/// chance).
const ADMIT_RANDOM_FREQUENCY: u8 = 6;
const ADMIT_RANDOM_ONE_IN: u64 = 128;

/// What a TinyLFU shard keeps beyond the LRU shard's fields.
#[derive(Debug)]
struct Lfu {
    sketch: FrequencySketch,
    /// Target load of the window (about 1% of the capacity, at least 1) and the largest
    /// of the protected segment (80% of the rest). A load is a weight in a weighted
    /// shard, else an entry count.
    window_cap: u64,
    protected_cap: u64,
    /// Load on each list.
    loads: [u64; 3],
    /// xorshift state for the random admission.
    rng: u64,
}

impl Lfu {
    fn new(capacity: usize, lanes: usize) -> Self {
        let cap = capacity as u64;
        let window_cap = (cap - cap * 99 / 100).max(1);
        let main = cap.saturating_sub(window_cap);
        Self {
            sketch: FrequencySketch::with_lanes(lanes),
            window_cap,
            protected_cap: main * 4 / 5,
            loads: [0; 3],
            // Fixed: a cache's behaviour is reproducible; the state moves with every
            // random admission, which an outsider does not see.
            rng: 0x853C_49E6_748F_EA9B ^ cap,
        }
    }

    /// The admission rule: a candidate estimated more frequent than the victim is
    /// admitted; a warm one that is not, by chance.
    fn admits(&mut self, candidate: u8, victim: u8) -> bool {
        candidate > victim
            || (candidate >= ADMIT_RANDOM_FREQUENCY && self.one_in(ADMIT_RANDOM_ONE_IN))
    }

    /// One in `n`, from the xorshift64 generator.
    fn one_in(&mut self, n: u64) -> bool {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x % n == 0
    }
}

/// Aligned to a cache line so that one lookup touches one line of the slab (a slot
/// holding a Python key, value and links is 64 bytes).
#[repr(align(64))]
struct Slot<K, V> {
    entry: Option<Entry<K, V>>,
    hash: u64,
    /// The generation (low [`GEN_BITS`] bits), above it the entry's uncounted accesses
    /// ([`HITS_BITS`] bits, TinyLFU only: see `LruShard::count_access`), and above those
    /// the list the entry is on (`WINDOW` in an LRU shard): a TinyLFU hit reads and
    /// counts with the slot's own line.
    tag: u32,
    prev: u32,
    /// Next in the recency list; for an empty slot, next in the free list.
    next: u32,
    /// Position in the deadline heap, or NIL when the entry has no deadline.
    heap_pos: u32,
}

/// Bits of a slot's `tag` that hold its generation; the [`HITS_BITS`] above hold its
/// access count, the two above those its list.
const GEN_BITS: u32 = 26;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;
/// Bits of a slot's `tag` that count its entry's accesses not yet in the sketch: up to
/// 15, a sketch counter's largest value.
const HITS_BITS: u32 = 4;
const HITS_SHIFT: u32 = GEN_BITS;
const HITS_MAX: u32 = (1 << HITS_BITS) - 1;
const LIST_SHIFT: u32 = GEN_BITS + HITS_BITS;

impl<K, V> Slot<K, V> {
    #[inline]
    fn gen(&self) -> u32 {
        self.tag & GEN_MASK
    }

    /// The list of an occupied slot.
    #[inline]
    fn list(&self) -> usize {
        (self.tag >> LIST_SHIFT) as usize
    }

    #[inline]
    fn set_list(&mut self, list: usize) {
        self.tag = (self.tag & !(3 << LIST_SHIFT)) | ((list as u32) << LIST_SHIFT);
    }

    /// The entry's accesses not yet in the sketch, `0..=HITS_MAX`.
    #[inline]
    fn hits(&self) -> u32 {
        (self.tag >> HITS_SHIFT) & HITS_MAX
    }

    /// Counts one access (saturating); true if the count went up.
    #[inline]
    fn add_hit(&mut self) -> bool {
        let up = self.hits() < HITS_MAX;
        if up {
            self.tag += 1 << HITS_SHIFT;
        }
        up
    }

    /// Halves the access count (the sketch's aging).
    #[inline]
    fn halve_hits(&mut self) {
        let hits = self.hits() >> 1;
        self.tag = (self.tag & !(HITS_MAX << HITS_SHIFT)) | (hits << HITS_SHIFT);
    }
}

/// Everything a shard held before `take_all`, to be dropped after the lock is released.
pub struct Drained<K, V> {
    slots: Vec<Slot<K, V>>,
    _table: HashTable<u32>,
    _heap: Vec<u32>,
}

impl<K, V> Drained<K, V> {
    /// The entries that were taken, in slab order.
    pub fn into_entries(self) -> impl Iterator<Item = (K, V)> {
        self.slots
            .into_iter()
            .filter_map(|s| s.entry.map(|e| (e.key, e.value)))
    }
}

/// One shard: a bounded LRU table with deadlines. Not thread-safe by itself.
pub struct LruShard<K, V> {
    table: HashTable<u32>,
    slots: Vec<Slot<K, V>>,
    /// Head of the free list (empty slots, linked through `next`).
    free: u32,
    /// The recency lists (`WINDOW` only, for an LRU shard).
    lists: [Ends; 3],
    heap: Vec<u32>,
    len: usize,
    capacity: usize,
    /// Generation for the next slot filled; never reset (see the module docs).
    next_gen: u32,
    stats: Stats,
    /// Sum of the entries' weights (weighted shards only).
    weight: u64,
    /// Per-slot data beside the slab: empty unless `has_meta`, else as long as `slots`.
    meta: Vec<Meta>,
    has_meta: bool,
    opts: Options,
    /// The TinyLFU state (`Some` exactly when `opts.policy` is TinyLfu).
    lfu: Option<Lfu>,
}

impl<K, V> LruShard<K, V> {
    /// A shard for `capacity` entries (`ShardedCache::new` passes `1..=MAX_SIZE`; the
    /// clamp only keeps this function total). Allocates nothing.
    #[cfg(test)]
    fn new(capacity: usize) -> Self {
        Self::with_options(capacity, Options::default())
    }

    /// A shard for `capacity` entries (and as much weight, when weighted).
    fn with_options(capacity: usize, opts: Options) -> Self {
        Self {
            table: HashTable::new(),
            slots: Vec::new(),
            free: NIL,
            lists: [EMPTY; 3],
            heap: Vec::new(),
            len: 0,
            capacity: capacity.clamp(1, MAX_SIZE),
            next_gen: 0,
            stats: Stats::default(),
            weight: 0,
            meta: Vec::new(),
            has_meta: opts.weighted || opts.tti.is_some(),
            opts,
            lfu: (opts.policy == Policy::TinyLfu).then(|| {
                // A lane per reading stripe (see `core::sketch`, "Lanes").
                let lanes = if opts.shared_reads() {
                    opts.read_stripes
                } else {
                    1
                };
                Lfu::new(capacity.clamp(1, MAX_SIZE), lanes)
            }),
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

    /// The entry `h` refers to, if the handle is still valid.
    #[inline]
    fn entry(&self, h: Handle) -> Option<&Entry<K, V>> {
        let slot = self.slots.get(h.idx as usize)?;
        if slot.gen() == h.gen {
            slot.entry.as_ref()
        } else {
            None
        }
    }

    pub fn key(&self, h: Handle) -> Option<&K> {
        self.entry(h).map(|e| &e.key)
    }

    pub fn value(&self, h: Handle) -> Option<&V> {
        self.entry(h).map(|e| &e.value)
    }

    /// The value of `h` if the handle is valid and the entry live at `now`.
    #[inline]
    pub fn live_value(&self, h: Handle, now: i64) -> Option<&V> {
        self.entry(h).filter(|e| now < e.expires).map(|e| &e.value)
    }

    pub fn is_live(&self, h: Handle, now: i64) -> bool {
        self.entry(h).is_some_and(|e| now < e.expires)
    }

    /// Finds the entry for `hash` whose key `matcher` says is equal. Collects the handles
    /// for which the matcher could not tell.
    fn find(&self, hash: u64, mut matcher: impl FnMut(&K) -> Match) -> Probe {
        let slots = &self.slots;
        let mut unknown = Vec::new();
        let mut oom = false;
        let found = self.table.find(hash, |&idx| {
            // Index invariant: the table holds indices of occupied slots only.
            let slot = &slots[idx as usize];
            if slot.hash != hash {
                return false;
            }
            let Some(e) = slot.entry.as_ref() else {
                return false;
            };
            match matcher(&e.key) {
                Match::Equal => true,
                Match::NotEqual => false,
                Match::Unknown => {
                    // The number of colliding user keys is the caller's to choose.
                    if unknown.try_reserve(1).is_ok() {
                        unknown.push(Handle {
                            idx,
                            gen: slot.gen(),
                        });
                    } else {
                        oom = true;
                    }
                    false
                }
            }
        });
        match found {
            Some(&idx) => Probe::Found(Handle {
                idx,
                gen: slots[idx as usize].gen(),
            }),
            None if oom => Probe::OutOfMemory,
            None if unknown.is_empty() => Probe::Absent,
            None => Probe::Unknown(unknown),
        }
    }

    /// `find` for the common case: no remembered answers and no candidate list. Returns
    /// `None` when some comparison needs user code (the caller then takes the slow path).
    #[allow(clippy::inline_always)] // measured: returned through memory otherwise
    #[inline(always)]
    #[allow(clippy::option_option)] // None = undecided, Some(None) = absent; private
    fn find_quick<Q: KeyQuery<K, V>>(&self, hash: u64, q: &Q) -> Option<Option<Handle>> {
        let slots = &self.slots;
        let mut unknown = false;
        let found = self.table.find(hash, |&idx| {
            // Index invariant: the table holds indices of occupied slots only.
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
                gen: slots[idx as usize].gen(),
            })),
            None if unknown => None,
            None => Some(None),
        }
    }

    /// The handle of the entry for `hash` whose value satisfies `pred` (no key compare).
    pub fn handle_where(&self, hash: u64, mut pred: impl FnMut(&V) -> bool) -> Option<Handle> {
        let slots = &self.slots;
        let &idx = self.table.find(hash, |&idx| {
            // Index invariant: the table holds indices of occupied slots only.
            let s = &slots[idx as usize];
            s.hash == hash && s.entry.as_ref().is_some_and(|e| pred(&e.value))
        })?;
        Some(Handle {
            idx,
            gen: slots[idx as usize].gen(),
        })
    }

    // ---- recency lists (indices from a list itself or from a checked handle) ----

    /// Takes the occupied slot `idx` off `list`, the list it is on.
    fn unlink(&mut self, idx: u32, list: usize) {
        let (prev, next) = {
            let s = &self.slots[idx as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            self.lists[list].head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.lists[list].tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }

    /// Puts the occupied slot `idx`, on no list, at the front (most recent) of `list`.
    fn push_front(&mut self, idx: u32, list: usize) {
        let old = self.lists[list].head;
        {
            let s = &mut self.slots[idx as usize];
            s.prev = NIL;
            s.next = old;
        }
        if old == NIL {
            self.lists[list].tail = idx;
        } else {
            self.slots[old as usize].prev = idx;
        }
        self.lists[list].head = idx;
    }

    /// Marks the occupied slot `idx`, on `list`, most recently used there.
    #[inline]
    fn touch_idx(&mut self, idx: u32, list: usize) {
        if self.lists[list].head != idx {
            self.unlink(idx, list);
            self.push_front(idx, list);
        }
    }

    /// The list the occupied slot `idx` is on.
    #[inline]
    fn region(&self, idx: u32) -> usize {
        self.slots[idx as usize].list()
    }

    /// What the occupied slot `idx` adds to its list's load (TinyLFU): its weight in a
    /// weighted shard, else 1.
    #[inline]
    fn load(&self, idx: u32) -> u64 {
        if self.opts.weighted {
            self.meta
                .get(idx as usize)
                .map_or(0, |m| u64::from(m.weight))
        } else {
            1
        }
    }

    /// Moves the occupied slot `idx` from its list to the front of `to` (TinyLFU),
    /// keeping the loads.
    fn move_to(&mut self, idx: u32, to: usize) {
        let from = self.region(idx);
        let load = self.load(idx);
        self.unlink(idx, from);
        self.push_front(idx, to);
        self.slots[idx as usize].set_list(to);
        if let Some(lfu) = self.lfu.as_mut() {
            lfu.loads[from] = lfu.loads[from].saturating_sub(load);
            lfu.loads[to] = lfu.loads[to].saturating_add(load);
        }
    }

    /// Marks the entry most recently used (nothing if the handle is stale). In a TinyLFU
    /// shard this is an access: counted in the sketch, and promoted.
    #[inline]
    pub fn touch(&mut self, h: Handle) {
        if self.entry(h).is_some() {
            self.access(h.idx);
        }
    }

    /// An access to the occupied slot `idx` (a counted read, or a write that replaces
    /// its value): in a TinyLFU shard counted (see
    /// [`count_access`](Self::count_access)), then moved (see
    /// [`reorder`](Self::reorder)).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn access(&mut self, idx: u32) {
        if self.lfu.is_some() {
            self.count_access(idx);
        }
        self.reorder(idx);
    }

    /// Counts an access to the cached entry in slot `idx` in the slot's own tag, not in
    /// the sketch: the lookup has just read the slot's line, while the key's counters in
    /// the sketch are one more line from a table of 16 bytes per entry, which a hit on
    /// a large cache waited for (about a third of a TinyLFU hit's time, by `perf` and by
    /// taking it out). The entry's estimate is the sketch's plus its slot's count
    /// ([`estimate`](Self::estimate)); the count goes into the sketch when the entry
    /// leaves the shard (`remove_idx_with`), and halves with the sketch at each aging.
    /// A count that is saturated does not count towards the aging period, as a
    /// saturated counter's increment does not.
    #[inline]
    fn count_access(&mut self, idx: u32) {
        if self.slots[idx as usize].add_hit() {
            self.count_towards_aging(1);
        }
    }

    /// Counts `n` accesses towards the sketch's aging period; when the sketch ages
    /// (halves its counters), every slot's count halves with it.
    #[inline]
    fn count_towards_aging(&mut self, n: u64) {
        if let Some(lfu) = self.lfu.as_mut() {
            if lfu.sketch.add_counted(n) {
                self.halve_hits();
            }
        }
    }

    /// Halves every occupied slot's access count: one pass over the slab, in slab order,
    /// as often as the sketch ages (after `SAMPLE_FACTOR` counted accesses per entry).
    #[cold]
    #[inline(never)]
    fn halve_hits(&mut self) {
        for s in &mut self.slots {
            s.halve_hits();
        }
    }

    /// TinyLFU's estimate of how often the cached entry in slot `idx` was accessed
    /// (`0..=15`): the sketch's count for its key, plus the accesses counted in its slot.
    fn estimate(&self, idx: u32) -> u8 {
        let slot = &self.slots[idx as usize];
        let sketch = self
            .lfu
            .as_ref()
            .map_or(0, |lfu| u32::from(lfu.sketch.frequency(slot.hash)));
        (sketch + slot.hits()).min(HITS_MAX) as u8
    }

    /// An access's move in the lists, without the count (a replayed read was counted
    /// when it happened): most recently used; in a TinyLFU shard an entry on probation
    /// moves to the protected segment (which then gives its least recent entries back
    /// to probation while it holds more than its share), any other to the front of its
    /// list.
    #[inline]
    fn reorder(&mut self, idx: u32) {
        if self.lfu.is_some() {
            self.lfu_reorder(idx);
        } else {
            self.touch_idx(idx, WINDOW);
        }
    }

    /// TinyLFU's move of an accessed entry (see [`reorder`](Self::reorder)).
    #[inline(never)]
    fn lfu_reorder(&mut self, idx: u32) {
        match self.region(idx) {
            PROBATION => {
                self.move_to(idx, PROTECTED);
                self.demote_protected();
            }
            PROTECTED => {
                self.touch_idx(idx, PROTECTED);
                // A write may have made it heavier.
                self.demote_protected();
            }
            list => self.touch_idx(idx, list),
        }
    }

    /// Moves the protected segment's least recent entries to the front of probation
    /// while the segment holds more than its share.
    fn demote_protected(&mut self) {
        loop {
            let Some(lfu) = self.lfu.as_ref() else { return };
            if lfu.loads[PROTECTED] <= lfu.protected_cap {
                return;
            }
            let tail = self.lists[PROTECTED].tail;
            if tail == NIL {
                return;
            }
            self.move_to(tail, PROBATION);
        }
    }

    /// Applies hits recorded in a shared read log ([`Handle::packed`]): the policy's
    /// access for each handle that still names an entry (a record may be stale, or lost,
    /// never another entry's: generations tell them apart). The hits were counted when
    /// read, and their sketch counters raised then. The slots are prefetched for the
    /// whole batch first: the entries were read a while ago, and their lines may have
    /// left the cache.
    fn replay_reads(&mut self, records: &[u64], reads: u64) {
        for &r in records {
            if let Some(slot) = self.slots.get(Handle::unpack(r).idx as usize) {
                prefetch(slot);
            }
        }
        if self.lfu.is_some() {
            // The reads raised their counters as they happened; the aging period learns
            // of those that did here: the flagged records, in proportion when the ring
            // overflowed (`reads` > records).
            let bumped = records.iter().filter(|&&r| r & BUMPED != 0).count() as u64;
            let n = (records.len() as u64).max(1);
            self.count_towards_aging(bumped.saturating_mul(reads) / n);
        }
        for &r in records {
            let h = Handle::unpack(r);
            if self.entry(h).is_some() {
                self.reorder(h.idx);
            }
        }
    }

    /// A counted read of the live entry in slot `idx`: a hit, an access, and (with a
    /// time to idle) idle from `now`.
    #[inline]
    fn read_hit(&mut self, idx: u32, now: i64) {
        self.access(idx);
        self.stats.hits += 1;
        if let Some(tti) = self.opts.tti {
            self.refresh_idle(idx, now, tti);
        }
    }

    /// Moves the entry's idle deadline to `now + tti`, never earlier than it was (a
    /// reader whose clock reading is older than the last reader's does not shorten it)
    /// and never past the entry's own deadline.
    #[inline(never)]
    fn refresh_idle(&mut self, idx: u32, now: i64, tti: i64) {
        let own = self.meta.get(idx as usize).map_or(NEVER, |m| m.deadline);
        let slot = &mut self.slots[idx as usize];
        let Some(e) = slot.entry.as_mut() else {
            return;
        };
        let expires = own.min(now.saturating_add(tti).max(e.expires));
        // Every entry of a shard with a time to idle has a deadline, so it is in the heap
        // and re-seating it allocates nothing; the check keeps that true by construction.
        if expires != e.expires && slot.heap_pos != NIL {
            e.expires = expires;
            self.heap_update(idx, expires);
        }
    }

    /// The deadline that decides liveness for an entry written at `now` with its own
    /// deadline `own`.
    #[inline]
    fn effective(&self, own: i64, now: i64) -> i64 {
        match self.opts.tti {
            None => own,
            Some(tti) => own.min(now.saturating_add(tti)),
        }
    }

    // ---- deadline heap (indexed binary min-heap on `expires`) ----

    fn deadline(&self, heap_i: usize) -> i64 {
        let idx = self.heap[heap_i] as usize;
        self.slots[idx].entry.as_ref().map_or(NEVER, |e| e.expires)
    }

    fn heap_set(&mut self, heap_i: usize, idx: u32) {
        self.heap[heap_i] = idx;
        // A heap position fits in u32: the heap holds at most `capacity <= MAX_SIZE`.
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
            // i < n <= MAX_SIZE, so 2 * i + 2 cannot overflow.
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

    /// Adds `idx` to the heap; the caller reserved room (`heap.len() < heap.capacity()`), so
    /// the push does not allocate.
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
        let Some(last) = self.heap.pop() else {
            return; // unreachable: `idx` had a heap position
        };
        if pos < self.heap.len() {
            self.heap_set(pos, last);
            self.sift_down(pos);
            let p = self.slots[last as usize].heap_pos as usize;
            self.sift_up(p);
        }
    }

    /// Re-seats an entry whose deadline changed (room in the heap reserved by the caller).
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
    #[inline]
    fn earliest_expired(&self, now: i64) -> Option<u32> {
        let &idx = self.heap.first()?;
        (self.deadline(0) <= now).then_some(idx)
    }

    /// True if some entry's deadline has passed.
    #[inline]
    pub fn has_expired(&self, now: i64) -> bool {
        self.earliest_expired(now).is_some()
    }

    // ---- insertion and removal ----

    /// Removes an entry; returns its key and value for the caller to drop outside the
    /// lock (`None` if the handle is stale).
    pub fn remove(&mut self, h: Handle) -> Option<(K, V)> {
        self.entry(h)?;
        self.remove_idx(h.idx)
    }

    fn remove_idx(&mut self, idx: u32) -> Option<(K, V)> {
        self.remove_idx_with(idx, |k, v| (k, v))
    }

    /// Removes the entry in slot `idx` and hands its key and value to `put`, which an
    /// eviction inlines as a push onto its grave: the pair then goes from the slot to
    /// the grave directly. (Returned through memory and then pushed, it was read back
    /// with wider loads than the stores that had just written it, and stalled store
    /// forwarding on every evicting write.)
    #[allow(clippy::inline_always)] // see above: the point is the inlining
    #[inline(always)]
    fn remove_idx_with<R>(&mut self, idx: u32, put: impl FnOnce(K, V) -> R) -> Option<R> {
        let slot = self.slots.get(idx as usize)?;
        slot.entry.as_ref()?;
        let hash = slot.hash;
        if let Ok(e) = self.table.find_entry(hash, |&i| i == idx) {
            e.remove();
        }
        let list = self.region(idx);
        if self.lfu.is_some() {
            let load = self.load(idx);
            let hits = self.slots[idx as usize].hits();
            if let Some(lfu) = self.lfu.as_mut() {
                lfu.loads[list] = lfu.loads[list].saturating_sub(load);
                // The accesses counted in the slot go to the sketch, which keeps the
                // key's history once the entry is gone (already counted towards aging).
                lfu.sketch.add(hash, hits);
            }
        }
        self.unlink(idx, list);
        self.heap_remove(idx);
        if self.opts.weighted {
            let w = self.meta.get(idx as usize).map_or(0, |m| m.weight);
            self.weight = self.weight.saturating_sub(u64::from(w));
        }
        let free = self.free;
        let slot = &mut self.slots[idx as usize];
        let entry = slot.entry.take()?;
        slot.prev = NIL;
        slot.next = free;
        self.free = idx;
        debug_assert!(self.len > 0);
        self.len = self.len.saturating_sub(1);
        Some(put(entry.key, entry.value))
    }

    /// True if an entry of `weight` can be stored at all (weighted shards: not heavier
    /// than the capacity; others take every entry).
    #[inline]
    pub fn admits(&self, weight: u64) -> bool {
        !self.opts.weighted || weight <= self.capacity as u64
    }

    /// Counts a write that [`admits`](Self::admits) refused and removes the key's existing
    /// entry `h`, if any, into `grave` (cause `Replaced`, or `Expired` if it was no longer
    /// live). If `grave` cannot grow, nothing changes.
    fn reject(
        &mut self,
        h: Option<Handle>,
        now: i64,
        grave: &mut Grave<K, V>,
    ) -> Result<(), AllocError> {
        if h.is_some() && grave.len() == grave.capacity() {
            grave.try_reserve(1)?;
        }
        self.stats.rejected += 1;
        let Some(h) = h else { return Ok(()) };
        let live = self.is_live(h, now);
        if let Some((k, v)) = self.remove(h) {
            let cause = if live {
                Cause::Replaced
            } else {
                self.stats.expirations += 1;
                Cause::Expired
            };
            grave.push((k, v, cause)); // room checked above
        }
        Ok(())
    }

    /// The write of [`ShardedCache::set_if`] once its key (hashed `hash`) is found (`h`)
    /// or known absent:
    /// stores `value()` under the key (the existing entry's, else `key()`) and reclaims
    /// and evicts into `grave` what the write pushes out. A weighted write heavier than
    /// the capacity is rejected (see [`reject`](Self::reject)); with `report` a replaced
    /// value goes to `grave` with its stored key.
    #[allow(clippy::too_many_arguments)] // set's arguments
    #[inline]
    fn write<Q: KeyQuery<K, V>>(
        &mut self,
        hash: u64,
        h: Option<Handle>,
        q: &Q,
        key: impl FnOnce() -> K,
        value: impl FnOnce() -> V,
        expires: i64,
        weight: u64,
        now: i64,
        report: bool,
        grave: &mut Grave<K, V>,
    ) -> Written<K, V> {
        if !self.admits(weight) {
            return match self.reject(h, now, grave) {
                Ok(()) => Written::Refused(value()),
                Err(AllocError) => Written::Unstored(None, value()),
            };
        }
        // Admitted: at most the capacity, which fits in u32.
        let weight = u32::try_from(weight).unwrap_or(u32::MAX);
        let Some(h) = h else {
            self.reclaim(now, RECLAIM_BUDGET, grave);
            return match self.insert_weighted(hash, key(), value(), expires, weight, now, grave) {
                Ok(_) => {
                    self.stats.inserts += 1;
                    Written::Stored(None)
                }
                Err((k, v)) => Written::Unstored(Some(k), v),
            };
        };
        let stored_key = if report {
            if grave.len() == grave.capacity() && grave.try_reserve(1).is_err() {
                return Written::Unstored(None, value());
            }
            self.key(h).map(|k| q.clone_key(k))
        } else {
            None
        };
        match self.replace(h, value(), expires, weight, now) {
            Ok(v) => {
                let old = match stored_key {
                    Some(k) => {
                        grave.push((k, v, Cause::Replaced)); // room above
                        None
                    }
                    None => Some(v),
                };
                self.stats.inserts += 1;
                // After the replace: the entry itself may be among the expired.
                self.reclaim(now, RECLAIM_BUDGET, grave);
                if self.opts.weighted {
                    // Its new weight may not fit beside the others. Running out of memory
                    // here leaves the shard over its weight until the next write, never
                    // over its count.
                    let _ = self.shed(0, 0, now, grave);
                }
                Written::Stored(old)
            }
            Err(v) => Written::Unstored(None, v),
        }
    }

    /// Replaces the value, deadline (`expires`: the entry's own, before any time to idle)
    /// and weight of an existing entry and marks it most recent. Returns the old value;
    /// gives `value` back if the handle is stale or the deadline heap cannot grow (then
    /// nothing changed). A weighted shard may be over its capacity afterwards: the caller
    /// sheds (see [`shed`](Self::shed)).
    pub fn replace(
        &mut self,
        h: Handle,
        value: V,
        expires: i64,
        weight: u32,
        now: i64,
    ) -> Result<V, V> {
        if self.entry(h).is_none() {
            return Err(value);
        }
        let idx = h.idx;
        let effective = self.effective(expires, now);
        if effective != NEVER
            && self.slots[idx as usize].heap_pos == NIL
            && self.heap.try_reserve(1).is_err()
        {
            return Err(value);
        }
        let Some(e) = self.slots[idx as usize].entry.as_mut() else {
            return Err(value); // unreachable: checked above
        };
        e.expires = effective;
        let old = std::mem::replace(&mut e.value, value);
        if let Some(m) = self.meta.get_mut(idx as usize) {
            if self.opts.weighted {
                let (was, now) = (u64::from(m.weight), u64::from(weight));
                self.weight = self.weight.saturating_sub(was).saturating_add(now);
                if let Some(lfu) = self.lfu.as_mut() {
                    let list = self.slots[idx as usize].list();
                    lfu.loads[list] = lfu.loads[list].saturating_sub(was).saturating_add(now);
                }
            }
            m.deadline = expires;
            m.weight = weight;
        }
        self.heap_update(idx, effective);
        self.access(idx);
        Ok(old)
    }

    /// Makes room, without changing the shard, for one more entry: a slot (when no empty
    /// one will be free), a table bucket, a heap position (with a deadline) and a grave
    /// place for the entry that a full shard evicts.
    #[inline]
    fn reserve(&mut self, deadline: bool, grave: &mut Grave<K, V>) -> Result<(), AllocError> {
        if self.len >= self.capacity {
            // Evicting frees a slot; only the evicted entry needs a place.
            if grave.len() == grave.capacity() {
                grave.try_reserve(1)?;
            }
        } else if self.free == NIL {
            // No empty slot: slots.len() == len < capacity. Grow geometrically but never
            // past the capacity, so the slab never holds more than `capacity` slots.
            let grow = |have: usize| have.max(8).saturating_mul(2).min(self.capacity);
            if self.slots.len() == self.slots.capacity() {
                let have = self.slots.len();
                self.slots
                    .try_reserve_exact(grow(have).saturating_sub(have).max(1))?;
            }
            // `meta` is as long as `slots` and grows with it.
            if self.has_meta && self.meta.len() == self.meta.capacity() {
                let have = self.meta.len();
                self.meta
                    .try_reserve_exact(grow(have).saturating_sub(have).max(1))?;
            }
        }
        if let Some(lfu) = self.lfu.as_mut() {
            // The sketch grows with the slab (keeping its counts), never past the
            // capacity: memory follows the entries stored.
            lfu.sketch
                .ensure(self.slots.capacity().clamp(1, self.capacity))?;
        }
        let slots = &self.slots;
        // Index invariant: the table holds indices of occupied slots only.
        self.table.try_reserve(1, |&i| slots[i as usize].hash)?;
        if deadline {
            self.heap.try_reserve(1)?;
        }
        Ok(())
    }

    /// Removes entries until `extra_len` more entries of `extra_weight` more weight fit:
    /// an expired entry first (the earliest deadline), else the least recently used one;
    /// what is removed goes to `grave`. Stops early (`AllocError`) if `grave` cannot
    /// grow, having removed only what it could place there.
    #[inline]
    fn shed(
        &mut self,
        extra_len: usize,
        extra_weight: u64,
        now: i64,
        grave: &mut Grave<K, V>,
    ) -> Result<(), AllocError> {
        // TinyLFU: the window makes room for the incoming load first; what it gives up
        // goes to probation as this write's admission candidates, oldest first.
        let mut cand = if self.lfu.is_some() {
            let incoming = if self.opts.weighted {
                extra_weight
            } else {
                extra_len as u64
            };
            self.spill_window(incoming)
        } else {
            NIL
        };
        while self.len + extra_len > self.capacity
            || (self.opts.weighted
                && self.weight.saturating_add(extra_weight) > self.capacity as u64)
        {
            let (idx, cause) = match self.earliest_expired(now) {
                Some(idx) => (idx, Cause::Expired),
                None if self.lfu.is_some() => match self.lfu_victim(&mut cand) {
                    Some(idx) => (idx, Cause::Size),
                    None => break,
                },
                None if self.lists[WINDOW].tail != NIL => (self.lists[WINDOW].tail, Cause::Size),
                None => break,
            };
            if grave.len() == grave.capacity() {
                grave.try_reserve(1)?;
            }
            if idx == cand {
                // An expired candidate: the next one takes its place.
                cand = self.slots[idx as usize].prev;
            }
            // Room checked above.
            self.remove_idx_with(idx, |k, v| grave.push((k, v, cause)));
            match cause {
                Cause::Expired => self.stats.expirations += 1,
                _ => self.stats.evictions += 1,
            }
        }
        Ok(())
    }

    /// Moves the window's least recent entries to the front of probation until `incoming`
    /// more load fits in the window (or it is empty); returns the first moved (the
    /// oldest), or `NIL`.
    fn spill_window(&mut self, incoming: u64) -> u32 {
        let mut first = NIL;
        loop {
            let Some(lfu) = self.lfu.as_ref() else {
                return first;
            };
            if lfu.loads[WINDOW].saturating_add(incoming) <= lfu.window_cap {
                return first;
            }
            let tail = self.lists[WINDOW].tail;
            if tail == NIL {
                return first;
            }
            self.move_to(tail, PROBATION);
            if first == NIL {
                first = tail;
            }
        }
    }

    /// The entry a full TinyLFU shard gives up. The candidate is `cand` (the oldest entry
    /// the window gave up in this write not yet decided on) or, when there is none, the
    /// window's least recent entry; the victim is probation's least recent entry. If
    /// only one of them exists, it goes; if they are the same entry (probation holds
    /// only this write's candidates), it goes. Otherwise the candidate is admitted, and
    /// the victim goes, if the sketch estimates the candidate more frequent than the
    /// victim, or, by chance (one in [`ADMIT_RANDOM_ONE_IN`]), if the candidate is warm
    /// (estimate at least [`ADMIT_RANDOM_FREQUENCY`]); else the candidate goes. With
    /// neither, the protected segment's least recent entry goes.
    ///
    /// A candidate of this write, once decided on (admitted, or going), gives way to the
    /// next one the window gave up, the one in front of it on probation: `cand` is moved
    /// on before anything is removed.
    fn lfu_victim(&mut self, cand: &mut u32) -> Option<u32> {
        let victim = self.lists[PROBATION].tail;
        let c = if *cand == NIL {
            self.lists[WINDOW].tail
        } else {
            *cand
        };
        if c == NIL {
            return if victim == NIL {
                let p = self.lists[PROTECTED].tail;
                (p != NIL).then_some(p)
            } else {
                Some(victim)
            };
        }
        if *cand != NIL {
            *cand = self.slots[c as usize].prev;
        }
        if victim == NIL || victim == c {
            return Some(c);
        }
        let (cf, vf) = (self.estimate(c), self.estimate(victim));
        let lfu = self.lfu.as_mut()?;
        Some(if lfu.admits(cf, vf) { victim } else { c })
    }

    /// Inserts a key known to be absent (looked up under this same lock). When the shard
    /// is full, first removes an expired entry, else the least recently used one; what is
    /// removed goes to `grave`. Gives the key and value back if memory for the entry
    /// cannot be had (then nothing changed).
    pub fn insert(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        expires: i64,
        now: i64,
        grave: &mut Grave<K, V>,
    ) -> Result<Handle, (K, V)> {
        self.insert_weighted(hash, key, value, expires, 1, now, grave)
    }

    /// [`insert`](Self::insert) of an entry of `weight` (which the shard
    /// [`admits`](Self::admits); ignored unless the shard is weighted): a weighted shard
    /// removes entries until the weight fits as well. If memory runs out while a weighted
    /// shard removes several entries, those already removed stay removed (in `grave`)
    /// and the key and value are given back.
    #[allow(clippy::too_many_arguments)] // insert's arguments and the weight
    pub fn insert_weighted(
        &mut self,
        hash: u64,
        key: K,
        value: V,
        expires: i64,
        weight: u32,
        now: i64,
        grave: &mut Grave<K, V>,
    ) -> Result<Handle, (K, V)> {
        let effective = self.effective(expires, now);
        if self.reserve(effective != NEVER, grave).is_err()
            || self.shed(1, u64::from(weight), now, grave).is_err()
        {
            return Err((key, value));
        }
        let gen = self.next_gen;
        self.next_gen = gen.wrapping_add(1) & GEN_MASK;
        // A new entry enters the window (`WINDOW` is 0: the tag is the generation and,
        // in a TinyLFU shard, this write as its first access, counted below).
        let first = u32::from(self.lfu.is_some());
        let tag = gen | (first << HITS_SHIFT) | ((WINDOW as u32) << LIST_SHIFT);
        let meta = Meta {
            deadline: expires,
            weight,
        };
        let idx = if self.free == NIL {
            // Room reserved above: this push does not allocate, and the new index is
            // below capacity <= MAX_SIZE < NIL.
            let idx = self.slots.len() as u32;
            self.slots.push(Slot {
                entry: Some(Entry {
                    key,
                    value,
                    expires: effective,
                }),
                hash,
                tag,
                prev: NIL,
                next: NIL,
                heap_pos: NIL,
            });
            if self.has_meta {
                self.meta.push(meta); // room reserved above, beside the slot's
            }
            idx
        } else {
            let idx = self.free;
            let s = &mut self.slots[idx as usize];
            self.free = s.next;
            // Written in place: an entry built in a local first went through the stack,
            // copied with wider loads than the stores that had just written it (a stall
            // on store forwarding, on every write to a full cache). Free-list invariant:
            // a free slot is empty, so there is nothing to drop.
            debug_assert!(s.entry.is_none());
            std::mem::forget(s.entry.replace(Entry {
                key,
                value,
                expires: effective,
            }));
            s.hash = hash;
            s.tag = tag;
            s.heap_pos = NIL;
            if let Some(m) = self.meta.get_mut(idx as usize) {
                *m = meta;
            }
            idx
        };
        let slots = &self.slots;
        self.table
            .insert_unique(hash, idx, |&i| slots[i as usize].hash);
        self.push_front(idx, WINDOW);
        if effective != NEVER {
            self.heap_insert(idx);
        }
        self.len += 1;
        if self.opts.weighted {
            self.weight += u64::from(weight);
        }
        if self.lfu.is_some() {
            let load = self.load(idx);
            if let Some(lfu) = self.lfu.as_mut() {
                // A write is an access: new entries start in the window, counted (in
                // the slot's tag, above).
                lfu.loads[WINDOW] = lfu.loads[WINDOW].saturating_add(load);
            }
            self.count_towards_aging(1);
        }
        Ok(Handle { idx, gen })
    }

    /// Removes up to `budget` expired entries into `grave`, fewer if `grave` cannot grow.
    /// Inline for the common case, where nothing has expired.
    #[inline]
    pub fn reclaim(&mut self, now: i64, budget: usize, grave: &mut Grave<K, V>) -> usize {
        if self.has_expired(now) {
            self.reclaim_some(now, budget, grave)
        } else {
            0
        }
    }

    #[inline(never)]
    fn reclaim_some(&mut self, now: i64, budget: usize, grave: &mut Grave<K, V>) -> usize {
        let mut n = 0;
        while n < budget {
            let Some(idx) = self.earliest_expired(now) else {
                break;
            };
            if grave.len() == grave.capacity() && grave.try_reserve(1).is_err() {
                break;
            }
            // Room checked above.
            self.remove_idx_with(idx, |k, v| grave.push((k, v, Cause::Expired)));
            n += 1;
        }
        self.stats.expirations += n as u64;
        n
    }

    /// Removes every entry in O(1): the whole slab (with the table and heap) is swapped
    /// out, for the caller to drop after unlocking. Generations keep counting.
    pub fn take_all(&mut self) -> Drained<K, V> {
        let drained = Drained {
            slots: std::mem::take(&mut self.slots),
            _table: std::mem::replace(&mut self.table, HashTable::new()),
            _heap: std::mem::take(&mut self.heap),
        };
        // Plain numbers: freed here, no user code runs.
        self.meta = Vec::new();
        self.free = NIL;
        self.lists = [EMPTY; 3];
        self.len = 0;
        self.weight = 0;
        if let Some(lfu) = self.lfu.as_mut() {
            // The history goes with the entries (and so does its memory).
            lfu.sketch.reset();
            lfu.loads = [0; 3];
        }
        drained
    }

    /// Live entries, list by list (an LRU shard has one), most recently used first.
    pub fn iter_live(&self, now: i64) -> impl Iterator<Item = (&K, &V)> + '_ {
        let mut list = WINDOW;
        let mut cur = self.lists[WINDOW].head;
        std::iter::from_fn(move || loop {
            while cur == NIL && list < PROTECTED {
                list += 1;
                cur = self.lists[list].head;
            }
            // Index invariant: the recency lists link occupied slots.
            let s = self.slots.get(cur as usize)?;
            cur = s.next;
            if let Some(e) = s.entry.as_ref() {
                if now < e.expires {
                    return Some((&e.key, &e.value));
                }
            }
        })
    }

    /// Every entry, live or not, in slab order.
    pub fn iter_all(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.slots
            .iter()
            .filter_map(|s| s.entry.as_ref().map(|e| (&e.key, &e.value)))
    }

    pub fn stats(&self) -> Stats {
        Stats {
            size: self.len as u64,
            weight: if self.opts.weighted {
                self.weight
            } else {
                self.len as u64
            },
            max_size: self.capacity as u64,
            ..self.stats
        }
    }

    /// Checks the structural invariants (tests only; O(n)).
    #[cfg(test)]
    fn check(&self) {
        let mut n = 0;
        let mut loads = [0u64; 3];
        for (list, ends) in self.lists.iter().enumerate() {
            let mut cur = ends.head;
            let mut prev = NIL;
            while cur != NIL {
                let s = &self.slots[cur as usize];
                assert!(s.entry.is_some());
                assert_eq!(s.prev, prev);
                assert_eq!(self.region(cur), list);
                loads[list] += self.load(cur);
                prev = cur;
                cur = s.next;
                n += 1;
            }
            assert_eq!(ends.tail, prev);
            if self.lfu.is_none() && list != WINDOW {
                assert_eq!(ends.head, NIL, "an LRU shard has one list");
            }
            if self.lfu.is_none() {
                assert!(
                    self.slots.iter().all(|s| s.hits() == 0),
                    "an LRU shard counts no accesses"
                );
            }
        }
        if let Some(lfu) = self.lfu.as_ref() {
            assert_eq!(loads, lfu.loads);
            assert!(lfu.loads[PROTECTED] <= lfu.protected_cap);
            assert!(lfu.window_cap >= 1);
            assert!(lfu.window_cap + lfu.protected_cap <= self.capacity as u64);
        }
        assert_eq!(n, self.len);
        assert_eq!(self.table.len(), self.len);
        assert!(self.len <= self.capacity);
        assert!(self.slots.len() <= self.capacity);
        let mut free = 0;
        let mut cur = self.free;
        while cur != NIL {
            assert!(self.slots[cur as usize].entry.is_none());
            cur = self.slots[cur as usize].next;
            free += 1;
        }
        assert_eq!(free + self.len, self.slots.len());
        if self.has_meta {
            assert_eq!(self.meta.len(), self.slots.len());
        } else {
            assert!(self.meta.is_empty());
        }
        if self.opts.weighted {
            let w: u64 = self
                .slots
                .iter()
                .zip(&self.meta)
                .filter(|(s, _)| s.entry.is_some())
                .map(|(_, m)| u64::from(m.weight))
                .sum();
            assert_eq!(w, self.weight);
            assert!(self.weight <= self.capacity as u64);
        }
        for (i, s) in self.slots.iter().enumerate() {
            if let (Some(e), Some(m)) = (s.entry.as_ref(), self.meta.get(i)) {
                assert!(
                    e.expires <= m.deadline,
                    "the idle deadline never extends the own"
                );
            }
        }
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
    OutOfMemory,
}

/// Spreads a hash over all 64 bits (Python's int hashes are small integers).
#[inline]
pub fn mix(hash: u64) -> u64 {
    let x = (hash ^ (hash >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

/// Shard capacities that sum exactly to `max_size` (`shards >= 1`).
pub fn shard_capacities(max_size: usize, shards: usize) -> impl Iterator<Item = usize> {
    let shards = shards.max(1);
    let base = max_size / shards;
    let extra = max_size % shards;
    (0..shards).map(move |i| base + usize::from(i < extra))
}

/// The default shard count: enough for the CPUs, but every shard keeps at least
/// [`MIN_SHARD_CAPACITY`] entries so small caches are one exact-LRU shard.
pub fn default_shards(max_size: usize, cpus: usize) -> usize {
    let want = (cpus.clamp(1, MAX_SHARDS) * 4).next_power_of_two();
    want.min(max_size / MIN_SHARD_CAPACITY).clamp(1, MAX_SHARDS)
}

/// Why a cache could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheError {
    /// `max_size` below 1.
    MaxSize,
    /// `max_size` above [`MAX_SIZE`].
    MaxSizeTooLarge,
    /// `shards` below 1.
    ShardsTooFew,
    /// `shards` above `min(max_size, MAX_SHARDS)`; carries that bound's name and value.
    Shards { max_size: usize },
    /// Memory for the shards could not be had.
    OutOfMemory,
    /// An eviction policy's name that is not one.
    Policy(String),
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MaxSize => write!(f, "max_size must be >= 1"),
            Self::MaxSizeTooLarge => write!(f, "max_size must be <= {MAX_SIZE}"),
            Self::ShardsTooFew => write!(f, "shards must be >= 1"),
            Self::Shards { max_size } if *max_size < MAX_SHARDS => {
                write!(f, "shards must be between 1 and max_size ({max_size})")
            }
            Self::Shards { .. } => write!(f, "shards must be between 1 and {MAX_SHARDS}"),
            Self::OutOfMemory => write!(f, "out of memory for the cache"),
            Self::Policy(name) => write!(f, "policy must be 'lru' or 'tinylfu', not '{name}'"),
        }
    }
}

impl std::error::Error for CacheError {}

/// The sharded cache. Keys are found through a [`KeyQuery`] and a precomputed hash.
pub struct ShardedCache<K, V> {
    shards: Vec<ShardLock<LruShard<K, V>>>,
    max_size: usize,
    opts: Options,
    /// `get_fast` reads under a shared lock (see [`Options::read_stripes`]).
    shared_reads: bool,
}

/// What a write leaves for its caller to drop once the shard lock is released (see
/// [`ShardedCache::set_quick`]).
pub enum Written<K, V> {
    /// Stored; the value it replaced, unless that went to the grave.
    Stored(Option<V>),
    /// Refused: not stored (a weighted write heavier than the capacity, or a condition).
    Refused(V),
    /// Not stored for want of memory (with the key made for it, if any); nothing changed.
    Unstored(Option<K>, V),
}

/// The answer of [`ShardedCache::get_fast`].
pub enum Fast<V> {
    Hit(V),
    Miss,
    /// Undecided without the general path.
    Slow,
}

impl<K, V> ShardedCache<K, V> {
    /// A cache of `max_size` entries in `shards` shards (default: [`default_shards`]).
    /// Validates both (`1 <= max_size <= MAX_SIZE`, `1 <= shards <= min(max_size,
    /// MAX_SHARDS)`) and allocates only the shards' locks.
    pub fn new(max_size: usize, shards: Option<usize>, cpus: usize) -> Result<Self, CacheError> {
        Self::with_options(max_size, shards, cpus, Options::default())
    }

    /// [`new`](Self::new) with [`Options`]: a weighted cache bounds each shard's weight
    /// by its capacity too, so `max_size` bounds the total weight.
    pub fn with_options(
        max_size: usize,
        shards: Option<usize>,
        cpus: usize,
        opts: Options,
    ) -> Result<Self, CacheError> {
        if max_size == 0 {
            return Err(CacheError::MaxSize);
        }
        if max_size > MAX_SIZE {
            return Err(CacheError::MaxSizeTooLarge);
        }
        let n = match shards {
            Some(0) => return Err(CacheError::ShardsTooFew),
            Some(n) if n > max_size.min(MAX_SHARDS) => return Err(CacheError::Shards { max_size }),
            Some(n) => n,
            None => default_shards(max_size, cpus),
        };
        let mut v = Vec::new();
        v.try_reserve_exact(n)
            .map_err(|_| CacheError::OutOfMemory)?;
        let shared_reads = opts.shared_reads();
        let stripes = if shared_reads { opts.read_stripes } else { 0 };
        v.extend(
            shard_capacities(max_size, n)
                .map(|c| ShardLock::new(LruShard::with_options(c, opts), stripes)),
        );
        Ok(Self {
            shards: v,
            max_size,
            opts,
            shared_reads,
        })
    }

    /// Makes every shard's lock serialized (`ShardLock::serialize`): no lock word is
    /// taken. Shards that read shared keep their locks.
    ///
    /// # Safety
    /// From now on every call on this cache must be made by threads that hold one and
    /// the same global lock, and that do not release it during the call (ferrule's GIL
    /// builds: the cache is called only with the GIL held, and runs no Python code and
    /// releases nothing while it holds a shard).
    pub unsafe fn serialize(&mut self) {
        for s in &mut self.shards {
            // SAFETY: this function's contract is `serialize`'s.
            unsafe { s.serialize() };
        }
    }

    pub fn options(&self) -> Options {
        self.opts
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    #[inline]
    fn shard(&self, hash: u64) -> &ShardLock<LruShard<K, V>> {
        // Multiply-shift range reduction on bits 24..56: the table inside the shard uses
        // the low bits for the position and the top 7 bits as its tag, so both keep their
        // full entropy within a shard. `mid < 2^32`, so `mid * n >> 32 < n`: the index is
        // in range (and `n >= 1`).
        let mid = (hash >> 24) as u32;
        let i = ((u64::from(mid) * self.shards.len() as u64) >> 32) as usize;
        &self.shards[i]
    }

    /// The shard's exclusive lock, with the reads its read log holds applied first (a
    /// shard without shared reads has none: one comparison).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn exclusive(shard: &ShardLock<LruShard<K, V>>) -> Write<'_, LruShard<K, V>> {
        let mut g = shard.lock();
        if g.pending() {
            g.replay(LruShard::replay_reads);
        }
        g
    }

    /// Finds `hash`/`q` in its shard, resolving comparisons that need user code outside
    /// the lock, then runs `f` under the shard lock with the entry (expired or not) or
    /// with its absence. What `f` returns is handed back after the lock is released.
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
            let mut g = Self::exclusive(shard);
            if let Some(h) = g.find_quick(hash, q) {
                return Ok(f(&mut g, h));
            }
        }
        // Slow answers by compared key object (kept alive here, so identity is stable);
        // see "Keys that may run user code" in the module docs. Declared before every
        // guard, so it is dropped after the lock is released.
        let mut known: Vec<(K, bool)> = Vec::new();
        loop {
            let mut g = Self::exclusive(shard);
            let probe = g.find(hash, |k| {
                if let Some((_, eq)) = known.iter().find(|(seen, _)| q.same_key(seen, k)) {
                    return if *eq { Match::Equal } else { Match::NotEqual };
                }
                q.quick_eq(k)
            });
            let handles = match probe {
                Probe::Found(h) => return Ok(f(&mut g, Some(h))),
                Probe::Absent => return Ok(f(&mut g, None)),
                Probe::OutOfMemory => return Err(AllocError.into()),
                Probe::Unknown(handles) => handles,
            };
            let mut keys: Vec<K> = Vec::new();
            if keys.try_reserve_exact(handles.len()).is_err() {
                return Err(AllocError.into());
            }
            keys.extend(
                handles
                    .iter()
                    .filter_map(|&h| g.key(h).map(|k| q.clone_key(k))),
            );
            drop(g);
            if known.try_reserve(keys.len()).is_err() {
                return Err(AllocError.into());
            }
            for k in keys {
                let eq = q.slow_eq(&k)?;
                known.push((k, eq));
            }
        }
    }

    /// The common case of [`get`](Self::get) in one step: a live hit or a plain miss,
    /// decided under the lock with `quick_eq` only. Anything else (an expired entry, a
    /// comparison that needs user code) returns [`Fast::Slow`] without counting, and the
    /// caller takes `get`. The result is two words, returned in registers.
    #[inline]
    pub fn get_fast<Q: KeyQuery<K, V>>(&self, hash: u64, q: &Q, now: i64, count: bool) -> Fast<V> {
        let shard = self.shard(hash);
        if self.shared_reads {
            if let Some(g) = shard.read() {
                return Self::get_shared(shard, g, hash, q, now, count);
            }
        }
        let mut g = Self::exclusive(shard);
        match g.find_quick(hash, q) {
            Some(Some(h)) => {
                let Some(v) = g.live_value(h, now).map(|v| q.clone_value(v)) else {
                    return Fast::Slow;
                };
                if count {
                    g.read_hit(h.idx, now);
                }
                Fast::Hit(v)
            }
            Some(None) => {
                if count {
                    g.stats.misses += 1;
                }
                Fast::Miss
            }
            None => Fast::Slow,
        }
    }

    /// [`get_fast`](Self::get_fast) under the shard's shared lock: a hit clones the value
    /// and, when counted, leaves its handle in the read log (whose count is the hit
    /// count); a full log is replayed at once if the exclusive lock is free. The lookup,
    /// the liveness test and the clone only read the shard.
    #[inline]
    fn get_shared<Q: KeyQuery<K, V>>(
        shard: &ShardLock<LruShard<K, V>>,
        g: Read<'_, LruShard<K, V>>,
        hash: u64,
        q: &Q,
        now: i64,
        count: bool,
    ) -> Fast<V> {
        if count {
            if let Some(lfu) = g.lfu.as_ref() {
                lfu.sketch.prefetch(hash, g.stripe());
            }
        }
        let (fast, full) = match g.find_quick(hash, q) {
            Some(Some(h)) => {
                let Some(v) = g.live_value(h, now).map(|v| q.clone_value(v)) else {
                    return Fast::Slow;
                };
                let full = count && {
                    let bumped = g
                        .lfu
                        .as_ref()
                        .is_some_and(|lfu| lfu.sketch.increment_shared(hash, g.stripe()));
                    g.record(h.packed() | if bumped { BUMPED } else { 0 })
                };
                (Fast::Hit(v), full)
            }
            Some(None) => {
                if count {
                    g.miss();
                }
                (Fast::Miss, false)
            }
            None => return Fast::Slow,
        };
        drop(g);
        if full {
            if let Some(mut w) = shard.try_lock() {
                w.replay(LruShard::replay_reads);
            }
        }
        fast
    }

    /// Value for the key if live; counts a hit or a miss and refreshes recency (and idle
    /// time) when `count` is set (a lookup through `in` or `peek` does neither). An
    /// expired entry found on the way is removed into `grave`.
    pub fn get<Q: KeyQuery<K, V>>(
        &self,
        hash: u64,
        q: &Q,
        now: i64,
        count: bool,
        grave: &mut Grave<K, V>,
    ) -> Result<Option<V>, Q::Error> {
        let value = self.with_key(hash, q, |s, h| {
            let found = h.map(|h| (h, s.live_value(h, now).map(|v| q.clone_value(v))));
            match found {
                Some((h, Some(v))) => {
                    if count {
                        s.read_hit(h.idx, now);
                    }
                    Ok(Some(v))
                }
                Some((h, None)) => {
                    // Room first, so that running out of memory changes nothing.
                    if grave.len() == grave.capacity() && grave.try_reserve(1).is_err() {
                        return Err(AllocError);
                    }
                    if let Some((k, v)) = s.remove(h) {
                        grave.push((k, v, Cause::Expired));
                        s.stats.expirations += 1;
                    }
                    if count {
                        s.stats.misses += 1;
                    }
                    Ok(None)
                }
                None => {
                    if count {
                        s.stats.misses += 1;
                    }
                    Ok(None)
                }
            }
        })?;
        Ok(value?)
    }

    /// Sets the key's value and deadline (inserting, or replacing the existing entry).
    /// `now` must be the reading `expires` was computed from (one clock reading per
    /// operation), though a later one is handled too: a replaced entry whose deadline has
    /// already passed is simply reclaimed. Evicted and expired entries go to `grave`; the
    /// replaced value is dropped here, after the lock is released.
    #[allow(clippy::too_many_arguments)] // the entry, its deadline and where removals go
    pub fn set<Q: KeyQuery<K, V>>(
        &self,
        hash: u64,
        q: &Q,
        key: impl FnOnce() -> K,
        value: V,
        expires: i64,
        now: i64,
        grave: &mut Grave<K, V>,
    ) -> Result<(), Q::Error> {
        self.set_if(hash, q, key, value, expires, 1, now, grave, || true)
            .map(drop)
    }

    /// [`set`](Self::set) of an entry of `weight` (ignored unless the cache is weighted),
    /// done only if `keep()`, asked under the shard lock in the same critical section as
    /// the write, says so (a single-flight leader checks there that no `clear` began
    /// since its flight did; see `core::flight`). True if it was set; a value not set is
    /// dropped after the lock is released.
    ///
    /// A weighted write heavier than its shard's capacity is *rejected*: counted, not
    /// stored, and an existing entry for the key is removed (cause `Replaced`), so a read
    /// never returns the value that write superseded. With
    /// [`Options::report_replaced`] a replaced value goes to `grave` with its stored key.
    #[allow(clippy::too_many_arguments)] // set's arguments and the condition
    pub fn set_if<Q: KeyQuery<K, V>>(
        &self,
        hash: u64,
        q: &Q,
        key: impl FnOnce() -> K,
        value: V,
        expires: i64,
        weight: u64,
        now: i64,
        grave: &mut Grave<K, V>,
        keep: impl FnOnce() -> bool,
    ) -> Result<bool, Q::Error> {
        let report = self.opts.report_replaced;
        // Dropped here, after the lock is released.
        let written = self.with_key(hash, q, |s, h| {
            if !keep() {
                return Written::Refused(value);
            }
            s.write(
                hash,
                h,
                q,
                key,
                || value,
                expires,
                weight,
                now,
                report,
                grave,
            )
        })?;
        match written {
            Written::Stored(old) => {
                drop(old);
                Ok(true)
            }
            Written::Refused(v) => {
                drop(v);
                Ok(false)
            }
            Written::Unstored(k, v) => {
                drop((k, v));
                Err(AllocError.into())
            }
        }
    }

    /// [`set_if`](Self::set_if) of an entry of weight 1, for a caller that disposes of
    /// what the write leaves itself (see [`Written`]): done only if finding the key needs
    /// no [`KeyQuery::slow_eq`]; `None` (and nothing made, nothing changed) if it does.
    /// `value()` is made under the shard lock, once the write is decided.
    #[allow(clippy::too_many_arguments)] // set's arguments
    #[allow(clippy::inline_always)] // measured: its answer was copied through memory
    #[inline(always)]
    pub fn set_quick<Q: KeyQuery<K, V>>(
        &self,
        hash: u64,
        q: &Q,
        key: impl FnOnce() -> K,
        value: impl FnOnce() -> V,
        expires: i64,
        now: i64,
        grave: &mut Grave<K, V>,
    ) -> Option<Written<K, V>> {
        let report = self.opts.report_replaced;
        let shard = self.shard(hash);
        let mut g = Self::exclusive(shard);
        let h = g.find_quick(hash, q)?;
        let written = g.write(hash, h, q, key, value, expires, 1, now, report, grave);
        drop(g);
        Some(written)
    }

    /// Removes the key; returns its entry with the cause: `Deleted` if it was live, else
    /// `Expired` (removed too, and counted as an expiration).
    pub fn remove<Q: KeyQuery<K, V>>(
        &self,
        hash: u64,
        q: &Q,
        now: i64,
    ) -> Result<Option<(K, V, Cause)>, Q::Error> {
        self.with_key(hash, q, |s, h| {
            let h = h?;
            let live = s.is_live(h, now);
            let (k, v) = s.remove(h)?;
            if live {
                Some((k, v, Cause::Deleted))
            } else {
                s.stats.expirations += 1;
                Some((k, v, Cause::Expired))
            }
        })
    }

    /// Removes every expired entry of one shard, [`BULK_BATCH`] per lock hold, handing
    /// each batch to `bury` (with the lock released) between holds; returns how many and
    /// the shard's size.
    fn drain_expired(
        shard: &ShardLock<LruShard<K, V>>,
        now: i64,
        grave: &mut Grave<K, V>,
        bury: &mut dyn FnMut(&mut Grave<K, V>),
    ) -> Result<(usize, usize), AllocError> {
        let mut total = 0;
        loop {
            let mut g = Self::exclusive(shard);
            total += g.reclaim(now, BULK_BATCH, grave);
            if !g.has_expired(now) {
                let len = g.len();
                drop(g);
                bury(grave);
                grave.clear();
                return Ok((total, len));
            }
            drop(g);
            if grave.is_empty() {
                // Not even one place for a removed entry.
                return Err(AllocError);
            }
            bury(grave);
            grave.clear();
        }
    }

    /// Removes every expired entry now; returns how many.
    pub fn expire(&self, now: i64, grave: &mut Grave<K, V>) -> Result<usize, AllocError> {
        self.expire_with(now, grave, &mut |_| {})
    }

    /// [`expire`](Self::expire), handing each batch of removed entries to `bury` with no
    /// lock held.
    pub fn expire_with(
        &self,
        now: i64,
        grave: &mut Grave<K, V>,
        bury: &mut dyn FnMut(&mut Grave<K, V>),
    ) -> Result<usize, AllocError> {
        let mut total = 0;
        for s in &self.shards {
            total += Self::drain_expired(s, now, grave, bury)?.0;
        }
        Ok(total)
    }

    /// Live entries; reclaims expired ones first.
    pub fn len(&self, now: i64, grave: &mut Grave<K, V>) -> Result<usize, AllocError> {
        self.len_with(now, grave, &mut |_| {})
    }

    /// [`len`](Self::len), handing each batch of reclaimed entries to `bury` with no lock
    /// held.
    pub fn len_with(
        &self,
        now: i64,
        grave: &mut Grave<K, V>,
        bury: &mut dyn FnMut(&mut Grave<K, V>),
    ) -> Result<usize, AllocError> {
        let mut total = 0;
        for s in &self.shards {
            total += Self::drain_expired(s, now, grave, bury)?.1;
        }
        Ok(total)
    }

    /// Removes every entry: each shard's slab is swapped out under its lock and dropped
    /// after it is released. Allocates nothing.
    pub fn clear(&self) {
        self.clear_with(drop);
    }

    /// [`clear`](Self::clear), handing each shard's former contents to `f` after its lock
    /// is released.
    pub fn clear_with(&self, mut f: impl FnMut(Drained<K, V>)) {
        for s in &self.shards {
            let drained = Self::exclusive(s).take_all();
            f(drained);
        }
    }

    /// Copies of the live entries, shard by shard (most recent first within a shard).
    pub fn snapshot<T>(
        &self,
        now: i64,
        mut f: impl FnMut(&K, &V) -> T,
    ) -> Result<Vec<T>, AllocError> {
        let mut out = Vec::new();
        for s in &self.shards {
            let g = Self::exclusive(s);
            out.try_reserve(g.len())?;
            out.extend(g.iter_live(now).map(|(k, v)| f(k, v)));
        }
        Ok(out)
    }

    /// Calls `f` on every entry of every shard whose lock is free right now (for a
    /// garbage collector's traversal, which must not block); stops at the first error.
    pub fn try_for_each<E>(&self, mut f: impl FnMut(&K, &V) -> Result<(), E>) -> Result<(), E> {
        for s in &self.shards {
            if let Some(g) = s.try_lock() {
                for (k, v) in g.iter_all() {
                    f(k, v)?;
                }
            }
        }
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for s in &self.shards {
            let mut st = Self::exclusive(s).stats();
            // Reads through the shared lock are counted in its stripes.
            let (hits, misses) = s.counts();
            st.hits = st.hits.saturating_add(hits);
            st.misses = st.misses.saturating_add(misses);
            total.add(&st);
        }
        total
    }

    /// Runs `f` on the key's shard under its lock (single-flight bookkeeping lives there).
    pub fn with_shard<T>(&self, hash: u64, f: impl FnOnce(&mut LruShard<K, V>) -> T) -> T {
        f(&mut Self::exclusive(self.shard(hash)))
    }
}

/// A [`ShardedCache`] on a clock, with a default TTL: the whole cache a binding holds.
///
/// Time: each operation reads the clock once, and a write computes its deadline from that
/// same reading, so the deadline is never behind the `now` the write reclaims with. While
/// no entry can carry a deadline (no default TTL, and no write with one yet) operations
/// skip the clock: `now` is `i64::MIN`, before every deadline. `uses_ttl` only ever turns
/// on, before the first write with a deadline takes its lock; an operation concurrent
/// with that write that still sees it off treats every entry as live, which orders the
/// operation before the write. A cache with a time to idle reads the clock on every
/// operation (every entry has a deadline).
pub struct TimedCache<K, V> {
    entries: ShardedCache<K, V>,
    clock: Clock,
    default_ttl: Option<i64>,
    uses_ttl: AtomicBool,
}

impl<K, V> TimedCache<K, V> {
    pub fn new(entries: ShardedCache<K, V>, clock: Clock, default_ttl: Option<i64>) -> Self {
        let uses_ttl = default_ttl.is_some() || entries.opts.tti.is_some();
        Self {
            entries,
            clock,
            uses_ttl: AtomicBool::new(uses_ttl),
            default_ttl,
        }
    }

    /// The entries, for what needs no clock (sizes, `clear`, traversal).
    pub fn entries(&self) -> &ShardedCache<K, V> {
        &self.entries
    }

    pub fn default_ttl(&self) -> Option<i64> {
        self.default_ttl
    }

    /// The clock reading for this operation; `i64::MIN` while no entry can expire.
    #[inline]
    fn now(&self) -> i64 {
        if self.uses_ttl.load(Ordering::Acquire) {
            self.clock.now_nanos()
        } else {
            i64::MIN
        }
    }

    /// The one clock reading of a write and the deadline it gives an entry with `ttl` (or
    /// the default).
    #[inline]
    fn stamp(&self, ttl: Option<i64>) -> (i64, i64) {
        match ttl.or(self.default_ttl) {
            None => (self.now(), NEVER),
            Some(d) => {
                if !self.uses_ttl.load(Ordering::Relaxed) {
                    self.uses_ttl.store(true, Ordering::Release);
                }
                let now = self.clock.now_nanos();
                // Exact in practice: a ManualClock stops at MAX_READING (2^62 ns) and `d`
                // is at most MAX_SECONDS (4e18 ns), so the sum stays below i64::MAX; the
                // monotonic clock counts from process start. Saturating keeps this total:
                // a saturated deadline is NEVER, which is what ~292 years means anyway.
                (now, now.saturating_add(d))
            }
        }
    }

    /// [`ShardedCache::get`], through [`ShardedCache::get_fast`] first.
    #[inline]
    pub fn get<Q: KeyQuery<K, V>>(
        &self,
        hash: u64,
        q: &Q,
        count: bool,
        grave: &mut Grave<K, V>,
    ) -> Result<Option<V>, Q::Error> {
        match self.get_fast(hash, q, count) {
            (Fast::Hit(v), _) => Ok(Some(v)),
            (Fast::Miss, _) => Ok(None),
            (Fast::Slow, now) => self.get_slow(hash, q, now, count, grave),
        }
    }

    /// The first half of [`get`](Self::get), for a caller that keeps its slow path (and
    /// its grave) out of line: [`ShardedCache::get_fast`] at this operation's clock
    /// reading, which `get_slow` must then use.
    #[inline]
    pub fn get_fast<Q: KeyQuery<K, V>>(&self, hash: u64, q: &Q, count: bool) -> (Fast<V>, i64) {
        let now = self.now();
        (self.entries.get_fast(hash, q, now, count), now)
    }

    /// The second half of [`get`](Self::get): [`ShardedCache::get`] at `now`.
    pub fn get_slow<Q: KeyQuery<K, V>>(
        &self,
        hash: u64,
        q: &Q,
        now: i64,
        count: bool,
        grave: &mut Grave<K, V>,
    ) -> Result<Option<V>, Q::Error> {
        self.entries.get(hash, q, now, count, grave)
    }

    /// [`ShardedCache::set_if`] with the deadline of `ttl` (or the default); what the
    /// write removes goes to `grave`.
    #[allow(clippy::too_many_arguments)] // set_if's arguments
    pub fn set_if<Q: KeyQuery<K, V>>(
        &self,
        hash: u64,
        q: &Q,
        key: impl FnOnce() -> K,
        value: V,
        ttl: Option<i64>,
        weight: u64,
        grave: &mut Grave<K, V>,
        keep: impl FnOnce() -> bool,
    ) -> Result<bool, Q::Error> {
        let (now, expires) = self.stamp(ttl);
        self.entries
            .set_if(hash, q, key, value, expires, weight, now, grave, keep)
    }

    /// [`ShardedCache::set_quick`] with the default deadline.
    #[allow(clippy::inline_always)] // measured: its answer was copied through memory
    #[inline(always)]
    pub fn set_quick<Q: KeyQuery<K, V>>(
        &self,
        hash: u64,
        q: &Q,
        key: impl FnOnce() -> K,
        value: impl FnOnce() -> V,
        grave: &mut Grave<K, V>,
    ) -> Option<Written<K, V>> {
        let (now, expires) = self.stamp(None);
        self.entries
            .set_quick(hash, q, key, value, expires, now, grave)
    }

    /// [`ShardedCache::remove`] at this operation's clock reading.
    pub fn remove<Q: KeyQuery<K, V>>(
        &self,
        hash: u64,
        q: &Q,
    ) -> Result<Option<(K, V, Cause)>, Q::Error> {
        self.entries.remove(hash, q, self.now())
    }

    /// Live entries, reclaiming expired ones first (each batch handed to `bury`).
    pub fn live_len(&self, bury: &mut dyn FnMut(&mut Grave<K, V>)) -> Result<usize, AllocError> {
        self.entries.len_with(self.now(), &mut Grave::new(), bury)
    }

    /// Removes expired entries now (each batch handed to `bury`); returns how many.
    pub fn expire(&self, bury: &mut dyn FnMut(&mut Grave<K, V>)) -> Result<usize, AllocError> {
        if !self.uses_ttl.load(Ordering::Acquire) {
            return Ok(0);
        }
        self.entries
            .expire_with(self.clock.now_nanos(), &mut Grave::new(), bury)
    }

    pub fn snapshot<T>(&self, f: impl FnMut(&K, &V) -> T) -> Result<Vec<T>, AllocError> {
        self.entries.snapshot(self.now(), f)
    }

    /// The counters, with `size` counting live entries only (expired ones are reclaimed
    /// first, each batch handed to `bury`).
    pub fn stats(&self, bury: &mut dyn FnMut(&mut Grave<K, V>)) -> Result<Stats, AllocError> {
        self.expire(bury)?;
        Ok(self.entries.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};
    use std::rc::Rc;
    use std::sync::Arc;

    fn h<T: Hash>(t: &T) -> u64 {
        let mut s = DefaultHasher::new();
        t.hash(&mut s);
        mix(s.finish())
    }

    #[derive(Debug, PartialEq)]
    struct Oom;
    impl From<AllocError> for Oom {
        fn from(_: AllocError) -> Self {
            Oom
        }
    }

    /// Plain keys compare under the lock.
    struct Q<'a>(&'a str);
    impl KeyQuery<String, u64> for Q<'_> {
        type Error = Oom;
        fn quick_eq(&self, stored: &String) -> Match {
            if stored == self.0 {
                Match::Equal
            } else {
                Match::NotEqual
            }
        }
        fn slow_eq(&self, _: &String) -> Result<bool, Oom> {
            unreachable!()
        }
        fn same_key(&self, a: &String, b: &String) -> bool {
            a == b // plain values: equal ones are interchangeable
        }
        fn clone_key(&self, k: &String) -> String {
            k.clone()
        }
        fn clone_value(&self, v: &u64) -> u64 {
            *v
        }
    }

    #[derive(Debug, PartialEq)]
    enum SlowErr {
        Boom,
        Oom,
    }
    impl From<AllocError> for SlowErr {
        fn from(_: AllocError) -> Self {
            SlowErr::Oom
        }
    }

    /// Keys whose comparison always needs the slow path; counts the slow calls.
    struct Slow<'a>(&'a str, Cell<usize>);
    impl KeyQuery<Rc<str>, u64> for Slow<'_> {
        type Error = SlowErr;
        fn quick_eq(&self, _: &Rc<str>) -> Match {
            Match::Unknown
        }
        fn slow_eq(&self, stored: &Rc<str>) -> Result<bool, SlowErr> {
            self.1.set(self.1.get() + 1);
            if &**stored == "boom" {
                Err(SlowErr::Boom)
            } else {
                Ok(&**stored == self.0)
            }
        }
        fn same_key(&self, a: &Rc<str>, b: &Rc<str>) -> bool {
            Rc::ptr_eq(a, b)
        }
        fn clone_key(&self, k: &Rc<str>) -> Rc<str> {
            k.clone()
        }
        fn clone_value(&self, v: &u64) -> u64 {
            *v
        }
    }

    fn set(c: &ShardedCache<String, u64>, k: &str, v: u64, exp: i64, now: i64) {
        let mut g = Grave::new();
        c.set(h(&k), &Q(k), || k.to_string(), v, exp, now, &mut g)
            .unwrap();
    }

    fn get(c: &ShardedCache<String, u64>, k: &str, now: i64) -> Option<u64> {
        c.get(h(&k), &Q(k), now, true, &mut Grave::new()).unwrap()
    }

    fn len(c: &ShardedCache<String, u64>, now: i64) -> usize {
        c.len(now, &mut Grave::new()).unwrap()
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
    #[allow(clippy::float_cmp)] // exact by construction
    fn hit_ratio_is_total_and_cannot_overflow() {
        assert_eq!(hit_ratio(0, 0), 0.0);
        assert_eq!(hit_ratio(1, 3), 0.25);
        assert_eq!(hit_ratio(u64::MAX, u64::MAX), 0.5);
    }

    #[test]
    fn set_if_writes_nothing_when_refused() {
        let c = ShardedCache::new(4, Some(1), 1).unwrap();
        let set_if = |k: &str, v: u64, keep: bool| {
            let mut g = Grave::new();
            c.set_if(
                h(&k),
                &Q(k),
                || k.to_string(),
                v,
                NEVER,
                1,
                0,
                &mut g,
                || keep,
            )
            .unwrap()
        };
        assert!(!set_if("a", 1, false));
        assert_eq!((get(&c, "a", 0), c.stats().inserts), (None, 0));
        assert!(set_if("a", 1, true));
        assert!(!set_if("a", 2, false));
        assert_eq!((get(&c, "a", 0), c.stats().inserts), (Some(1), 1));
    }

    #[test]
    fn set_quick_hands_back_what_it_leaves_and_declines_slow_comparisons() {
        let c: ShardedCache<String, u64> = ShardedCache::new(2, Some(1), 1).unwrap();
        let quick = |k: &str, v: u64, g: &mut Grave<String, u64>| {
            let made = Cell::new(false);
            let w = c.set_quick(
                h(&k),
                &Q(k),
                || k.to_string(),
                || {
                    made.set(true);
                    v
                },
                NEVER,
                0,
                g,
            );
            (w, made.get())
        };
        let mut g = Grave::new();
        assert!(matches!(
            quick("a", 1, &mut g),
            (Some(Written::Stored(None)), true)
        ));
        assert!(matches!(
            quick("a", 2, &mut g),
            (Some(Written::Stored(Some(1))), true)
        ));
        assert!(matches!(
            quick("b", 3, &mut g),
            (Some(Written::Stored(None)), true)
        ));
        assert!(g.is_empty());
        assert!(matches!(
            quick("c", 4, &mut g),
            (Some(Written::Stored(None)), true)
        ));
        assert_eq!(
            g.drain(..).collect::<Vec<_>>(),
            vec![("a".to_string(), 2, Cause::Size)]
        );
        assert_eq!((get(&c, "b", 0), get(&c, "c", 0)), (Some(3), Some(4)));
        assert_eq!(c.stats().inserts, 4);

        // A comparison that needs user code: nothing made, nothing changed.
        let s: ShardedCache<Rc<str>, u64> = ShardedCache::new(4, Some(1), 1).unwrap();
        let mut g = Grave::new();
        s.set(
            7,
            &Slow("x", Cell::new(0)),
            || Rc::from("x"),
            1,
            NEVER,
            0,
            &mut g,
        )
        .unwrap();
        let q = Slow("x", Cell::new(0));
        let made = Cell::new(false);
        let w = s.set_quick(
            7,
            &q,
            || Rc::from("x"),
            || {
                made.set(true);
                2
            },
            NEVER,
            0,
            &mut g,
        );
        assert!(w.is_none() && !made.get() && q.1.get() == 0);
        assert_eq!((s.stats().inserts, s.stats().size), (1, 1));
    }

    #[test]
    fn timed_cache_stamps_writes_with_its_clock_and_default_ttl() {
        use crate::core::clock::{ManualClock, MAX_READING};
        let clock = Arc::new(ManualClock::new(0));
        let entries = ShardedCache::new(8, Some(1), 1).unwrap();
        let c = TimedCache::new(entries, Clock::Manual(clock.clone()), Some(10));
        let set = |k: &str, ttl: Option<i64>| {
            c.set_if(
                h(&k),
                &Q(k),
                || k.to_string(),
                1,
                ttl,
                1,
                &mut Grave::new(),
                || true,
            )
            .unwrap()
        };
        let live = |k: &str| {
            c.get(h(&k), &Q(k), false, &mut Grave::new())
                .unwrap()
                .is_some()
        };
        assert!(set("default", None) && set("own", Some(20)));
        clock.advance(9).unwrap();
        assert!(live("default") && live("own"));
        clock.advance(1).unwrap(); // t + d: no longer live
        assert!(!live("default") && live("own"));
        assert_eq!(
            (
                c.live_len(&mut |_| {}),
                c.stats(&mut |_| {}).map(|s| s.size)
            ),
            (Ok(1), Ok(1))
        );
        clock.advance(10).unwrap();
        assert_eq!(
            (c.expire(&mut |_| {}), c.live_len(&mut |_| {})),
            (Ok(1), Ok(0))
        );
        // A deadline beyond i64 saturates to NEVER rather than wrapping into the past.
        clock.set(MAX_READING).unwrap();
        assert!(set("far", Some(i64::MAX)) && live("far"));
        assert_eq!(c.snapshot(|k, _| k.clone()), Ok(vec!["far".to_owned()]));
    }

    #[test]
    fn timed_cache_without_ttl_never_expires_anything() {
        let clock = Arc::new(crate::core::clock::ManualClock::new(0));
        let entries = ShardedCache::new(8, Some(1), 1).unwrap();
        let c = TimedCache::new(entries, Clock::Manual(clock.clone()), None);
        assert!(c
            .set_if(
                h(&"k"),
                &Q("k"),
                || "k".to_owned(),
                1,
                None,
                1,
                &mut Grave::new(),
                || true
            )
            .unwrap());
        clock.advance(1 << 40).unwrap();
        assert_eq!(c.expire(&mut |_| {}), Ok(0));
        assert_eq!(
            c.remove(h(&"k"), &Q("k")),
            Ok(Some(("k".to_owned(), 1, Cause::Deleted)))
        );
        assert_eq!(c.default_ttl(), None);
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
        assert_eq!(len(&c, 0), 100);
        let mut grave = Grave::new();
        assert_eq!(c.expire(5, &mut grave), Ok(50));
        assert!(grave.is_empty(), "expire drops what it removes");
        assert_eq!(len(&c, 5), 50);
        assert_eq!(c.stats().expirations, 50);
    }

    #[test]
    fn expire_works_in_batches() {
        let n = BULK_BATCH * 3 + 7;
        let c = ShardedCache::<String, u64>::new(n, Some(1), 1).unwrap();
        for i in 0..n {
            set(&c, &i.to_string(), i as u64, 5, 0);
        }
        let mut grave = Grave::new();
        assert_eq!(c.expire(5, &mut grave), Ok(n));
        assert!(grave.capacity() <= 2 * BULK_BATCH, "one batch at a time");
        assert_eq!(len(&c, 5), 0);
        for i in 0..n {
            set(&c, &i.to_string(), i as u64, 5, 0);
        }
        assert_eq!(len(&c, 5), 0);
        assert_eq!(c.stats().expirations, 2 * n as u64);
    }

    #[test]
    fn capacities_and_bounds() {
        for (m, n) in [(10, 3), (100, 7), (64, 64), (1, 1)] {
            let caps: Vec<usize> = shard_capacities(m, n).collect();
            assert_eq!(caps.len(), n);
            assert_eq!(caps.iter().sum::<usize>(), m);
            assert!(caps.iter().all(|&c| c >= 1));
        }
        assert_eq!(default_shards(10, 64), 1);
        assert_eq!(default_shards(100_000, 2), 8);
        assert_eq!(default_shards(MAX_SIZE, usize::MAX), MAX_SHARDS);
        let err = |m, s| {
            ShardedCache::<String, u64>::new(m, s, 1)
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(err(0, None).as_deref(), Some("max_size must be >= 1"));
        assert_eq!(
            err(MAX_SIZE + 1, None).as_deref(),
            Some("max_size must be <= 4294967294")
        );
        assert_eq!(
            err(usize::MAX, Some(1)).as_deref(),
            Some("max_size must be <= 4294967294")
        );
        assert_eq!(err(5, Some(0)).as_deref(), Some("shards must be >= 1"));
        assert_eq!(
            err(5, Some(6)).as_deref(),
            Some("shards must be between 1 and max_size (5)")
        );
        assert_eq!(
            err(100_000, Some(70_000)).as_deref(),
            Some("shards must be between 1 and 1024")
        );
        assert_eq!(
            err(1 << 31, Some(1 << 31)).as_deref(),
            Some("shards must be between 1 and 1024")
        );
        assert_eq!(
            err(MAX_SIZE, Some(usize::MAX)).as_deref(),
            Some("shards must be between 1 and 1024")
        );
        let c = ShardedCache::<String, u64>::new(MAX_SIZE, Some(MAX_SHARDS), 1).unwrap();
        assert_eq!((c.max_size(), c.shard_count()), (MAX_SIZE, MAX_SHARDS));
        assert!(ShardedCache::<String, u64>::new(MAX_SIZE, Some(1), 1).is_ok());
    }

    #[test]
    fn the_slab_grows_on_demand_and_never_past_capacity() {
        let mut s: LruShard<u64, u64> = LruShard::new(MAX_SIZE);
        assert_eq!(s.slots.capacity(), 0, "nothing reserved up front");
        let mut grave = Grave::new();
        for i in 0..100u64 {
            s.insert(mix(i), i, i, NEVER, 0, &mut grave).unwrap();
        }
        assert!(s.slots.capacity() < 256);
        let mut s: LruShard<u64, u64> = LruShard::new(100);
        for i in 0..1000u64 {
            s.insert(mix(i), i, i, NEVER, 0, &mut grave).unwrap();
            assert!(s.slots.capacity() <= 100);
            s.check();
        }
        assert_eq!(grave.len(), 900);
    }

    #[test]
    fn slow_comparisons_happen_outside_and_errors_propagate() {
        let c: ShardedCache<Rc<str>, u64> = ShardedCache::new(10, Some(1), 1).unwrap();
        // Force collisions: every key under one hash.
        let mut g = Grave::new();
        for k in ["x", "y", "z"] {
            let q = Slow(k, Cell::new(0));
            c.set(7, &q, || Rc::from(k), 1, NEVER, 0, &mut g).unwrap();
        }
        let q = Slow("y", Cell::new(0));
        assert_eq!(c.get(7, &q, 0, true, &mut Grave::new()).unwrap(), Some(1));
        assert_eq!(
            q.1.get(),
            3,
            "each stored key compared once, outside the lock"
        );
        c.set(
            7,
            &Slow("boom", Cell::new(0)),
            || Rc::from("boom"),
            1,
            NEVER,
            0,
            &mut g,
        )
        .unwrap();
        let q = Slow("w", Cell::new(0));
        assert_eq!(c.get(7, &q, 0, true, &mut Grave::new()), Err(SlowErr::Boom));
        assert_eq!(c.len(0, &mut Grave::new()), Ok(4));
    }

    #[test]
    fn replacing_with_a_deadline_that_has_passed_does_not_panic() {
        // Regression: `set` replaced the entry, reclaimed it (its deadline had passed by
        // `now`), then read its key through the now-empty handle and panicked.
        let c = ShardedCache::<String, u64>::new(4, Some(1), 1).unwrap();
        set(&c, "k", 1, NEVER, 100);
        let mut grave = Grave::new();
        c.set(h(&"k"), &Q("k"), || "k".into(), 2, 100, 100, &mut grave)
            .unwrap();
        assert_eq!(grave.len(), 1, "the replaced entry, reclaimed at once");
        assert_eq!(get(&c, "k", 100), None);
        set(&c, "k", 3, 50, 0);
        c.set(h(&"k"), &Q("k"), || "k".into(), 4, 99, 100, &mut grave)
            .unwrap();
        assert_eq!(len(&c, 100), 0);
        set(&c, "k", 5, 101, 100);
        assert_eq!(get(&c, "k", 100), Some(5));
    }

    /// A key query whose comparison, the first time, clears the cache and stores an equal
    /// key (as a hostile Python `__eq__` can).
    struct Clearing<'c> {
        cache: &'c ShardedCache<Rc<str>, u64>,
        key: &'c str,
        fired: Cell<bool>,
        calls: Cell<usize>,
    }
    impl KeyQuery<Rc<str>, u64> for Clearing<'_> {
        type Error = Oom;
        fn quick_eq(&self, _: &Rc<str>) -> Match {
            Match::Unknown
        }
        fn slow_eq(&self, stored: &Rc<str>) -> Result<bool, Oom> {
            self.calls.set(self.calls.get() + 1);
            if !self.fired.replace(true) {
                self.cache.clear();
                let q = Ident;
                let mut g = Grave::new();
                self.cache
                    .set(1, &q, || Rc::from(self.key), 99, NEVER, 0, &mut g)?;
                return Ok(false);
            }
            Ok(&**stored == self.key)
        }
        fn same_key(&self, a: &Rc<str>, b: &Rc<str>) -> bool {
            Rc::ptr_eq(a, b)
        }
        fn clone_key(&self, k: &Rc<str>) -> Rc<str> {
            k.clone()
        }
        fn clone_value(&self, v: &u64) -> u64 {
            *v
        }
    }
    /// Never equal to a stored key (inserts a fresh one).
    struct Ident;
    impl KeyQuery<Rc<str>, u64> for Ident {
        type Error = Oom;
        fn quick_eq(&self, _: &Rc<str>) -> Match {
            Match::NotEqual
        }
        fn slow_eq(&self, _: &Rc<str>) -> Result<bool, Oom> {
            Ok(false)
        }
        fn same_key(&self, a: &Rc<str>, b: &Rc<str>) -> bool {
            Rc::ptr_eq(a, b)
        }
        fn clone_key(&self, k: &Rc<str>) -> Rc<str> {
            k.clone()
        }
        fn clone_value(&self, v: &u64) -> u64 {
            *v
        }
    }

    #[test]
    fn a_stale_answer_is_never_applied_to_another_key_across_clear() {
        // Regression: after clear() slot generations restarted at 0, so the answer "not
        // equal" for the compared key was applied to the equal key re-inserted into the
        // same slot, and the cache ended up holding two equal keys.
        let c: ShardedCache<Rc<str>, u64> = ShardedCache::new(10, Some(1), 1).unwrap();
        let mut g = Grave::new();
        c.set(1, &Ident, || Rc::from("a"), 1, NEVER, 0, &mut g)
            .unwrap();
        let q = Clearing {
            cache: &c,
            key: "a",
            fired: Cell::new(false),
            calls: Cell::new(0),
        };
        c.set(1, &q, || Rc::from("a"), 2, NEVER, 0, &mut g).unwrap();
        let keys = c.snapshot(0, |k, v| (k.to_string(), *v)).unwrap();
        assert_eq!(keys, vec![("a".to_string(), 2)], "one key, replaced");
        assert_eq!(q.calls.get(), 2, "the re-inserted key was compared afresh");
    }

    #[test]
    fn generations_keep_counting_across_clear() {
        let mut s: LruShard<u64, u64> = LruShard::new(4);
        let mut grave = Grave::new();
        let before = s.insert(mix(1), 1, 1, NEVER, 0, &mut grave).unwrap();
        drop(s.take_all());
        let after = s.insert(mix(1), 1, 1, NEVER, 0, &mut grave).unwrap();
        assert_eq!(before.idx, after.idx);
        assert_ne!(before.gen, after.gen);
        assert_eq!(s.key(before), None, "a stale handle reads as absent");
        assert_eq!(s.remove(before), None);
        assert_eq!(s.replace(before, 5, NEVER, 1, 0), Err(5));
        assert_eq!(s.key(after), Some(&1));
        s.check();
    }

    /// Counts its drops, and whether the shard's lock was held at that moment.
    struct Watched {
        shard: Arc<ShardedCache<u64, Watched>>,
        drops: Arc<std::sync::atomic::AtomicUsize>,
        locked_drops: Arc<std::sync::atomic::AtomicUsize>,
    }
    impl Drop for Watched {
        fn drop(&mut self) {
            use std::sync::atomic::Ordering::SeqCst;
            self.drops.fetch_add(1, SeqCst);
            if self.shard.shards.iter().any(ShardLock::is_locked) {
                self.locked_drops.fetch_add(1, SeqCst);
            }
        }
    }
    struct U(u64);
    impl KeyQuery<u64, Watched> for U {
        type Error = Oom;
        fn quick_eq(&self, k: &u64) -> Match {
            if *k == self.0 {
                Match::Equal
            } else {
                Match::NotEqual
            }
        }
        fn slow_eq(&self, k: &u64) -> Result<bool, Oom> {
            Ok(*k == self.0)
        }
        fn same_key(&self, a: &u64, b: &u64) -> bool {
            std::ptr::eq(a, b)
        }
        fn clone_key(&self, k: &u64) -> u64 {
            *k
        }
        fn clone_value(&self, _: &Watched) -> Watched {
            unreachable!("not used by these tests")
        }
    }

    #[test]
    fn nothing_is_dropped_under_a_shard_lock() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let c: Arc<ShardedCache<u64, Watched>> =
            Arc::new(ShardedCache::new(3, Some(1), 1).unwrap());
        let drops = Arc::new(AtomicUsize::new(0));
        let locked = Arc::new(AtomicUsize::new(0));
        let w = || Watched {
            shard: c.clone(),
            drops: drops.clone(),
            locked_drops: locked.clone(),
        };
        let mut made = 0;
        for i in 0..50u64 {
            let mut grave = Grave::new();
            let exp = if i % 3 == 0 { i as i64 + 1 } else { NEVER };
            c.set(
                mix(i % 7),
                &U(i % 7),
                || i % 7,
                w(),
                exp,
                i as i64,
                &mut grave,
            )
            .unwrap();
            made += 1;
            drop(grave);
            if i % 5 == 0 {
                c.remove(mix(i % 7), &U(i % 7), i as i64).unwrap();
            }
            if i % 11 == 0 {
                c.expire(i as i64, &mut Grave::new()).unwrap();
            }
            if i % 17 == 0 {
                c.clear();
            }
            // Replacing with a deadline that has already passed.
            let mut grave = Grave::new();
            c.set(
                mix(i % 7),
                &U(i % 7),
                || i % 7,
                w(),
                0,
                i as i64,
                &mut grave,
            )
            .unwrap();
            made += 1;
            // A write its condition refuses drops the value after the lock, too.
            let mut grave = Grave::new();
            let key = i % 7;
            c.set_if(
                mix(key),
                &U(key),
                || key,
                w(),
                NEVER,
                1,
                0,
                &mut grave,
                || i % 2 == 0,
            )
            .unwrap();
            made += 1;
        }
        c.clear();
        assert_eq!(drops.load(SeqCst), made);
        assert_eq!(locked.load(SeqCst), 0);
        // Break the Arc cycle the values form with the cache (already cleared).
        assert_eq!(len_u(&c), 0);
    }

    fn len_u(c: &ShardedCache<u64, Watched>) -> usize {
        c.len(0, &mut Grave::new()).unwrap()
    }

    #[test]
    fn deadlines_near_the_largest_clock_reading() {
        use crate::core::clock::{secs_to_nanos, MAX_READING, MAX_SECONDS};
        let longest = secs_to_nanos(MAX_SECONDS, "ttl").unwrap();
        let now = MAX_READING;
        let exp = now
            .checked_add(longest)
            .expect("MAX_READING leaves room for every ttl");
        assert!(exp < NEVER);
        let c = ShardedCache::<String, u64>::new(4, Some(1), 1).unwrap();
        set(&c, "k", 1, exp, now);
        set(&c, "s", 2, now + 1, now);
        assert_eq!(get(&c, "k", now), Some(1));
        assert_eq!(get(&c, "s", now), Some(2));
        assert_eq!(get(&c, "s", now + 1), None);
        assert_eq!(c.expire(NEVER - 1, &mut Grave::new()), Ok(1));
    }

    #[test]
    fn traversal_skips_locked_shards() {
        let c = ShardedCache::<String, u64>::new(10, Some(2), 1).unwrap();
        for k in ["a", "b", "c", "d", "e", "f"] {
            set(&c, k, 1, NEVER, 0);
        }
        let mut n = 0;
        c.try_for_each(|_, _| -> Result<(), ()> {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 6);
        let guard = c.shards[0].lock();
        let held = guard.len();
        let mut m = 0;
        c.try_for_each(|_, _| -> Result<(), ()> {
            m += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(m, 6 - held);
    }

    #[test]
    fn heap_stays_ordered_under_churn() {
        let mut s: LruShard<u64, u64> = LruShard::new(50);
        let mut grave = Grave::new();
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
                // Stale handles are refused without effect.
                if seed % 2 == 0 {
                    s.remove(h);
                } else {
                    let _ = s.replace(h, i, exp, 1, now);
                }
            } else {
                handles.push(s.insert(mix(i), i, i, exp, now, &mut grave).unwrap());
                s.reclaim(now, RECLAIM_BUDGET, &mut grave);
            }
            if i % 97 == 0 {
                drop(s.take_all());
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
                        assert!(len(&c, 0) <= 256);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(len(&c, 0), 256);
    }

    fn shared_reads_cache(max: usize, shards: usize, stripes: usize) -> ShardedCache<String, u64> {
        let opts = Options {
            policy: Policy::TinyLfu,
            read_stripes: stripes,
            ..Options::default()
        };
        ShardedCache::with_options(max, Some(shards), 1, opts).unwrap()
    }

    fn fast(c: &ShardedCache<String, u64>, k: &str, count: bool) -> Option<u64> {
        match c.get_fast(h(&k), &Q(k), 0, count) {
            Fast::Hit(v) => Some(v),
            Fast::Miss => None,
            Fast::Slow => unreachable!("plain keys, no deadlines"),
        }
    }

    #[test]
    fn shared_reads_are_taken_only_for_tinylfu_without_tti() {
        assert!(shared_reads_cache(100, 1, 2).shared_reads);
        let no = |opts: Options| {
            !ShardedCache::<String, u64>::with_options(100, None, 1, opts)
                .unwrap()
                .shared_reads
        };
        assert!(
            no(Options {
                read_stripes: 2,
                ..Options::default()
            }),
            "lru"
        );
        assert!(
            no(Options {
                policy: Policy::TinyLfu,
                ..Options::default()
            }),
            "no stripes"
        );
        assert!(
            no(Options {
                policy: Policy::TinyLfu,
                read_stripes: 2,
                tti: Some(5),
                ..Options::default()
            }),
            "tti"
        );
    }

    #[test]
    fn shared_reads_count_exactly_and_reach_the_policy_at_the_next_write() {
        let c = shared_reads_cache(64, 1, 2);
        for i in 0..64u64 {
            set(&c, &i.to_string(), i, NEVER, 0);
        }
        // "7" is read often: logged, not yet applied, then replayed by a write's lock.
        for _ in 0..40 {
            assert_eq!(fast(&c, "7", true), Some(7));
        }
        assert_eq!(fast(&c, "nope", true), None);
        assert_eq!(fast(&c, "7", false), Some(7), "a peek counts nothing");
        let st = c.stats();
        assert_eq!((st.hits, st.misses), (40, 1));
        // Fill with new keys: a frequently read entry survives admission, now that the
        // writes replayed its reads into the sketch.
        for i in 100..400u64 {
            set(&c, &i.to_string(), i, NEVER, 0);
        }
        assert_eq!(fast(&c, "7", false), Some(7), "the read entry was kept");
        for s in &c.shards {
            let g = s.lock();
            assert!(!g.pending(), "every write replayed the log");
            g.check();
        }
    }

    #[test]
    fn reads_of_a_saturated_key_do_not_age_the_sketch() {
        let c = shared_reads_cache(64, 1, 1);
        set(&c, "hot", 1, NEVER, 0);
        for _ in 0..2000 {
            assert_eq!(fast(&c, "hot", true), Some(1));
        }
        let w = c.shards[0].lock();
        let lfu = w.lfu.as_ref().unwrap();
        assert_eq!(lfu.sketch.frequency(h(&"hot")), 15);
        drop(w);
        c.stats(); // an exclusive hold: replays what is left
        let w = c.shards[0].lock();
        let added = w.lfu.as_ref().unwrap().sketch.additions();
        // The insert and the first 14 reads raised the counters; the rest were
        // saturated. Overflowed rings count in proportion to their flagged records.
        assert!(added <= 16, "{added} increments counted for 15 raises");
    }

    #[test]
    fn a_logged_read_of_an_entry_that_left_is_dropped_at_replay() {
        // Every exclusive hold through the cache replays the log first, so records are
        // current when applied; a raw hold that changes the shard first shows the check.
        let c = shared_reads_cache(8, 1, 1);
        set(&c, "a", 1, NEVER, 0);
        assert_eq!(fast(&c, "a", true), Some(1)); // logs (slot 0, a's generation)
        let mut w = c.shards[0].lock();
        assert!(w.pending());
        drop(w.take_all());
        let mut grave = Grave::new();
        for k in ["b", "c"] {
            w.insert(h(&k), k.to_string(), 2, NEVER, 0, &mut grave)
                .unwrap();
        }
        // "b" took slot 0 and went on probation when "c" entered the one-entry window;
        // a replayed read of it would promote it to protected.
        assert_eq!(w.region(0), PROBATION);
        w.replay(LruShard::replay_reads);
        assert_eq!(
            w.region(0),
            PROBATION,
            "the record named the old generation"
        );
        assert!(!w.pending());
        w.check();
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn shared_readers_and_writers_keep_the_invariants_and_count_every_lookup() {
        let c = Arc::new(shared_reads_cache(512, 4, 4));
        for i in 0..512u64 {
            set(&c, &i.to_string(), i, NEVER, 0);
        }
        let base = c.stats();
        let readers: Vec<_> = (0..4u64)
            .map(|t| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    let mut seed = t + 1;
                    for _ in 0..30_000 {
                        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        let k = ((seed >> 33) % 2048).to_string();
                        if let Some(v) = fast(&c, &k, true) {
                            assert_eq!(v.to_string(), k, "a hit returns its key's value");
                        }
                    }
                })
            })
            .collect();
        let writer = {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    let k = (i * 7 % 2048).to_string();
                    set(&c, &k, i * 7 % 2048, NEVER, 0);
                    assert!(len(&c, 0) <= 512);
                }
            })
        };
        for r in readers {
            r.join().unwrap();
        }
        writer.join().unwrap();
        let st = c.stats();
        assert_eq!(st.hits + st.misses - base.hits - base.misses, 4 * 30_000);
        for s in &c.shards {
            s.lock().check();
        }
    }

    #[test]
    fn a_serialized_cache_behaves_as_a_locked_one() {
        let mut c: ShardedCache<String, u64> =
            ShardedCache::with_options(64, Some(4), 1, Options::default()).unwrap();
        // SAFETY: this thread makes every call on the cache.
        unsafe { c.serialize() };
        assert!(c.shards.iter().all(ShardLock::is_serialized));
        for i in 0..200u64 {
            let k = i.to_string();
            set(&c, &k, i, NEVER, 0);
            assert_eq!(fast(&c, &k, true).map(|v| v.to_string()), Some(k));
            assert!(len(&c, 0) <= 64);
        }
        assert!(
            c.shards.iter().all(|s| !s.is_locked()),
            "every guard was dropped"
        );
        check_all(&c);
        let st = c.stats();
        assert_eq!((st.hits, st.size), (200, 64));
        // A TinyLFU cache that reads shared keeps its stripes' locks.
        let mut striped: ShardedCache<String, u64> = ShardedCache::with_options(
            64,
            Some(1),
            1,
            Options {
                policy: Policy::TinyLfu,
                read_stripes: 2,
                ..Options::default()
            },
        )
        .unwrap();
        // SAFETY: as above.
        unsafe { striped.serialize() };
        assert!(!striped.shards[0].is_serialized());
    }

    fn opts_cache(max: usize, opts: Options) -> ShardedCache<String, u64> {
        ShardedCache::with_options(max, Some(1), 1, opts).unwrap()
    }

    /// A weighted, time-to-idle or listening write: what it removed, as (key, cause).
    #[allow(clippy::too_many_arguments)]
    fn put(
        c: &ShardedCache<String, u64>,
        k: &str,
        v: u64,
        w: u64,
        exp: i64,
        now: i64,
    ) -> Vec<(String, Cause)> {
        let mut g = Grave::new();
        c.set_if(
            h(&k),
            &Q(k),
            || k.to_string(),
            v,
            exp,
            w,
            now,
            &mut g,
            || true,
        )
        .unwrap();
        g.into_iter().map(|(k, _, c)| (k, c)).collect()
    }

    fn check_all(c: &ShardedCache<String, u64>) {
        for s in &c.shards {
            s.lock().check();
        }
    }

    #[test]
    fn weights_bound_the_total_and_evict_lru_until_the_new_entry_fits() {
        let c = opts_cache(
            10,
            Options {
                weighted: true,
                ..Options::default()
            },
        );
        assert!(put(&c, "a", 1, 4, NEVER, 0).is_empty());
        assert!(put(&c, "b", 2, 4, NEVER, 0).is_empty());
        assert!(put(&c, "c", 3, 2, NEVER, 0).is_empty());
        assert_eq!(get(&c, "a", 0), Some(1)); // b is now the LRU
        let gone = put(&c, "d", 4, 5, NEVER, 0);
        assert_eq!(
            gone,
            vec![("b".into(), Cause::Size), ("c".into(), Cause::Size)]
        );
        let st = c.stats();
        assert_eq!((st.size, st.weight, st.evictions), (2, 9, 2));
        check_all(&c);
        // Growing an entry's weight in place evicts others, never the entry itself.
        assert_eq!(
            put(&c, "d", 5, 10, NEVER, 0),
            vec![("a".into(), Cause::Size)]
        );
        assert_eq!((c.stats().weight, get(&c, "d", 0)), (10, Some(5)));
        // Zero weights are free, but the count stays bounded by max_size.
        for i in 0..20 {
            put(&c, &format!("z{i}"), i, 0, NEVER, 0);
            check_all(&c);
        }
        let st = c.stats();
        assert_eq!((st.size, st.weight), (10, 0), "d went as the LRU entry");
    }

    #[test]
    fn a_value_heavier_than_its_shard_is_rejected_and_supersedes_the_old_one() {
        let c = opts_cache(
            10,
            Options {
                weighted: true,
                report_replaced: true,
                ..Options::default()
            },
        );
        put(&c, "a", 1, 3, NEVER, 0);
        put(&c, "b", 2, 3, NEVER, 0);
        assert_eq!(
            put(&c, "a", 9, 11, NEVER, 0),
            vec![("a".into(), Cause::Replaced)]
        );
        assert_eq!(put(&c, "x", 9, u64::MAX, NEVER, 0), vec![]);
        assert_eq!((get(&c, "a", 0), get(&c, "b", 0)), (None, Some(2)));
        let st = c.stats();
        assert_eq!((st.rejected, st.inserts, st.size, st.weight), (2, 2, 1, 3));
        // An unweighted cache takes any weight argument as one entry.
        let plain = opts_cache(2, Options::default());
        put(&plain, "a", 1, u64::MAX, NEVER, 0);
        assert_eq!((plain.stats().rejected, plain.stats().weight), (0, 1));
        check_all(&c);
    }

    #[test]
    fn replaced_values_are_reported_with_their_stored_key_only_when_asked() {
        let c = opts_cache(
            4,
            Options {
                report_replaced: true,
                ..Options::default()
            },
        );
        put(&c, "a", 1, 1, NEVER, 0);
        let mut g = Grave::new();
        c.set(h(&"a"), &Q("a"), || unreachable!(), 2, NEVER, 0, &mut g)
            .unwrap();
        assert_eq!(g.to_vec(), vec![("a".to_string(), 1, Cause::Replaced)]);
        let quiet = opts_cache(4, Options::default());
        put(&quiet, "a", 1, 1, NEVER, 0);
        assert_eq!(put(&quiet, "a", 2, 1, NEVER, 0), vec![]);
    }

    #[test]
    fn time_to_idle_expires_unread_entries_and_reads_refresh_it() {
        let c = opts_cache(
            4,
            Options {
                tti: Some(10),
                ..Options::default()
            },
        );
        put(&c, "a", 1, 1, NEVER, 0);
        put(&c, "b", 2, 1, 25, 0); // own deadline 25: idle 10 comes first
        put(&c, "c", 3, 1, NEVER, 0);
        assert_eq!(get(&c, "a", 9), Some(1)); // read at 9: idle until 19
        assert_eq!(get(&c, "b", 9), Some(2)); // until 19 too
                                              // A peek (uncounted) neither reads nor refreshes.
        let peek = |k: &str, now| c.get(h(&k), &Q(k), now, false, &mut Grave::new()).unwrap();
        assert_eq!(peek("c", 9), Some(3));
        assert_eq!(peek("c", 10), None, "idle since 0");
        assert_eq!(get(&c, "a", 18), Some(1));
        assert_eq!(get(&c, "b", 18), Some(2)); // min(25, 28) = 25
        assert_eq!(get(&c, "a", 27), Some(1));
        assert_eq!(get(&c, "b", 24), Some(2));
        assert_eq!(
            get(&c, "b", 25),
            None,
            "its own deadline bounds the idle one"
        );
        // A reader with an older clock reading never shortens the idle time.
        assert_eq!(get(&c, "a", 20), Some(1));
        assert_eq!(get(&c, "a", 36), Some(1));
        let mut g = Grave::new();
        assert_eq!(c.expire(50, &mut g), Ok(1));
        assert_eq!((c.stats().expirations, len(&c, 50)), (3, 0));
        check_all(&c);
    }

    #[test]
    fn time_to_idle_prefers_idle_entries_when_full() {
        let c = opts_cache(
            2,
            Options {
                tti: Some(10),
                ..Options::default()
            },
        );
        put(&c, "a", 1, 1, NEVER, 0);
        put(&c, "b", 2, 1, NEVER, 5);
        assert_eq!(get(&c, "a", 9), Some(1)); // a most recent, b least
        let gone = put(&c, "c", 3, 1, NEVER, 16); // b idle since 5 + 10 = 15 <= 16
        assert_eq!(gone, vec![("b".into(), Cause::Expired)]);
        assert_eq!(get(&c, "a", 16), Some(1));
        check_all(&c);
    }

    #[test]
    fn removal_and_clear_say_why() {
        let c = opts_cache(4, Options::default());
        set(&c, "live", 1, NEVER, 0);
        set(&c, "old", 2, 5, 0);
        assert_eq!(
            c.remove(h(&"live"), &Q("live"), 0),
            Ok(Some(("live".into(), 1, Cause::Deleted)))
        );
        assert_eq!(
            c.remove(h(&"old"), &Q("old"), 5),
            Ok(Some(("old".into(), 2, Cause::Expired)))
        );
        set(&c, "x", 3, 5, 0);
        let mut g = Grave::new();
        assert_eq!(c.get(h(&"x"), &Q("x"), 5, true, &mut g), Ok(None));
        assert_eq!(g.to_vec(), vec![("x".to_string(), 3, Cause::Expired)]);
        set(&c, "y", 4, NEVER, 0);
        set(&c, "z", 5, NEVER, 0);
        let mut seen = Vec::new();
        c.clear_with(|d| seen.extend(d.into_entries()));
        seen.sort();
        assert_eq!(seen, vec![("y".to_string(), 4), ("z".to_string(), 5)]);
        // Bulk expiry hands over each batch, outside the lock.
        for i in 0..(BULK_BATCH + 3) {
            set(&c, &i.to_string(), i as u64, 1, 0);
        }
        let mut batches = Vec::new();
        let n = c.expire_with(1, &mut Grave::new(), &mut |g| {
            assert!(!c.shards[0].is_locked());
            batches.push(g.len());
            assert!(g.iter().all(|e| e.2 == Cause::Expired));
        });
        assert_eq!(n, Ok(4), "the shard holds four entries");
        assert_eq!(batches.iter().sum::<usize>(), 4);
    }

    #[test]
    fn weighted_time_to_idle_shards_keep_their_invariants_under_churn() {
        for policy in [Policy::Lru, Policy::TinyLfu] {
            weighted_tti_churn(policy);
        }
    }

    fn weighted_tti_churn(policy: Policy) {
        let c = opts_cache(
            64,
            Options {
                policy,
                weighted: true,
                tti: Some(50),
                report_replaced: true,
                read_stripes: 0,
            },
        );
        let mut seed = 99u64;
        for i in 0..5000i64 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let k = ((seed >> 33) % 40).to_string();
            let now = i / 3;
            match seed % 4 {
                0 => {
                    get(&c, &k, now);
                }
                1 => {
                    c.remove(h(&k), &Q(&k), now).unwrap();
                }
                _ => {
                    let exp = if seed % 3 == 0 { now + 30 } else { NEVER };
                    put(&c, &k, i as u64, (seed >> 20) % 20, exp, now);
                }
            }
            check_all(&c);
            assert!(c.stats().weight <= 64);
        }
    }

    #[test]
    fn snapshots_copy_live_entries() {
        let c = ShardedCache::<String, u64>::new(10, Some(1), 1).unwrap();
        set(&c, "a", 1, 5, 0);
        set(&c, "b", 2, NEVER, 0);
        let live = c.snapshot(5, |k, v| (k.clone(), *v)).unwrap();
        assert_eq!(live, vec![("b".to_string(), 2)]);
    }

    // ---- TinyLFU ----

    fn lfu_cache(max: usize) -> ShardedCache<String, u64> {
        opts_cache(
            max,
            Options {
                policy: Policy::TinyLfu,
                ..Options::default()
            },
        )
    }

    /// A read, and a write on a miss (how a cache in front of a loader is used).
    fn load(c: &ShardedCache<String, u64>, k: &str) -> bool {
        let hit = get(c, k, 0).is_some();
        if !hit {
            set(c, k, 1, NEVER, 0);
        }
        hit
    }

    #[test]
    fn generations_wrap_within_their_bits_and_leave_the_list_alone() {
        let mut s: LruShard<u64, u64> = LruShard::with_options(
            8,
            Options {
                policy: Policy::TinyLfu,
                ..Options::default()
            },
        );
        // A TinyLFU shard without weights or tti keeps everything in its slots.
        assert!(!s.has_meta);
        let mut grave = Grave::new();
        s.next_gen = GEN_MASK;
        let last = s.insert(mix(1), 1, 1, NEVER, 0, &mut grave).unwrap();
        let first = s.insert(mix(2), 2, 2, NEVER, 0, &mut grave).unwrap();
        assert_eq!((last.gen, first.gen), (GEN_MASK, 0));
        // Fill past the window so entries move to probation and, when read, to protected.
        let mut handles = vec![last, first];
        for k in 3..=8u64 {
            handles.push(s.insert(mix(k), k, k, NEVER, 0, &mut grave).unwrap());
        }
        for &h in &handles {
            s.touch(h);
            s.touch(h);
        }
        s.check();
        assert!(s.meta.is_empty());
        let lists: Vec<usize> = handles.iter().map(|h| s.region(h.idx)).collect();
        assert!(lists.contains(&PROTECTED), "{lists:?}");
        for (k, &h) in (1..=8u64).zip(&handles) {
            // Moving between lists kept every generation: each handle still finds its key.
            assert_eq!(s.key(h), Some(&k));
        }
    }

    #[test]
    fn tinylfu_counts_a_cached_entrys_accesses_in_its_slot_until_it_leaves() {
        let mut s: LruShard<u64, u64> = LruShard::with_options(
            64,
            Options {
                policy: Policy::TinyLfu,
                ..Options::default()
            },
        );
        let mut grave = Grave::new();
        let sketch = |s: &LruShard<u64, u64>| s.lfu.as_ref().unwrap().sketch.frequency(mix(1));
        let a = s.insert(mix(1), 1, 1, NEVER, 0, &mut grave).unwrap();
        // The write is the first access: in the slot, not in the sketch.
        assert_eq!(
            (
                s.slots[a.idx as usize].hits(),
                sketch(&s),
                s.estimate(a.idx)
            ),
            (1, 0, 1)
        );
        for _ in 0..3 {
            s.touch(a);
        }
        assert_eq!(
            (
                s.slots[a.idx as usize].hits(),
                sketch(&s),
                s.estimate(a.idx)
            ),
            (4, 0, 4)
        );
        // The generation and the list are untouched by the count (and it by them).
        assert_eq!(s.key(a), Some(&1));
        let list = s.region(a.idx);
        s.slots[a.idx as usize].set_list(list);
        assert_eq!(s.slots[a.idx as usize].hits(), 4);
        // Aging halves the slot's count with the sketch's counters.
        s.count_towards_aging(1 << 40);
        assert_eq!(s.estimate(a.idx), 2);
        for _ in 0..30 {
            s.touch(a);
        }
        assert_eq!(
            (s.slots[a.idx as usize].hits(), s.estimate(a.idx)),
            (15, 15)
        );
        s.check();
        // Leaving, the entry hands its count to the sketch, which keeps the key's history.
        assert_eq!(s.remove(a), Some((1, 1)));
        assert_eq!(sketch(&s), 15);
        let b = s.insert(mix(1), 1, 2, NEVER, 0, &mut grave).unwrap();
        assert_eq!((s.slots[b.idx as usize].hits(), s.estimate(b.idx)), (1, 15));
        // A key never cached is estimated from the sketch alone.
        assert_eq!(s.lfu.as_ref().unwrap().sketch.frequency(mix(2)), 0);
        s.check();
    }

    #[test]
    fn lru_shards_count_no_accesses_in_their_slots() {
        let mut s: LruShard<u64, u64> = LruShard::new(8);
        let mut grave = Grave::new();
        let a = s.insert(mix(1), 1, 1, NEVER, 0, &mut grave).unwrap();
        for _ in 0..5 {
            s.touch(a);
        }
        assert_eq!(s.slots[a.idx as usize].hits(), 0);
        s.check();
    }

    #[test]
    fn tinylfu_regions_follow_the_capacity() {
        for (cap, window, protected) in [(1, 1, 0), (10, 1, 7), (100, 1, 79), (10_000, 100, 7920)] {
            let l = Lfu::new(cap, 1);
            assert_eq!(
                (l.window_cap, l.protected_cap),
                (window, protected),
                "{cap}"
            );
        }
    }

    #[test]
    fn tinylfu_frequent_entries_survive_a_scan_that_flushes_lru() {
        for policy in [Policy::Lru, Policy::TinyLfu] {
            let c = opts_cache(
                100,
                Options {
                    policy,
                    ..Options::default()
                },
            );
            let hot: Vec<String> = (0..50).map(|i| format!("hot{i}")).collect();
            for _ in 0..4 {
                for k in &hot {
                    load(&c, k);
                }
            }
            for i in 0..1000 {
                load(&c, &format!("scan{i}"));
                check_all(&c);
            }
            let kept = hot.iter().filter(|k| get(&c, k, 0).is_some()).count();
            match policy {
                Policy::Lru => assert_eq!(kept, 0),
                Policy::TinyLfu => assert_eq!(kept, 50),
            }
            let st = c.stats();
            assert_eq!(st.size, 100);
            assert_eq!(
                st.inserts - st.evictions,
                100,
                "every removal is an eviction"
            );
        }
    }

    #[test]
    fn tinylfu_one_hit_wonders_do_not_evict_hot_entries() {
        let c = lfu_cache(100);
        let hot: Vec<String> = (0..100).map(|i| format!("hot{i}")).collect();
        // Hot: counted 8 times each, far above what collisions in the sketch give a key
        // seen once.
        for _ in 0..8 {
            for k in &hot {
                load(&c, k);
            }
        }
        let mut gone = Vec::new();
        for i in 0..500 {
            let k = format!("once{i}");
            gone.extend(put(&c, &k, 1, 1, NEVER, 0));
        }
        // The first wonder pushes the window's hot entry out against an equally hot
        // victim (a tie keeps the victim); every later wonder is refused in its turn,
        // but for one whose counters the sketch shares with hot keys (collisions only
        // ever raise an estimate).
        let hot_gone: Vec<_> = gone.iter().filter(|(k, _)| k.starts_with("hot")).collect();
        assert!(!hot_gone.is_empty() && hot_gone.len() <= 2, "{hot_gone:?}");
        assert!(gone.iter().all(|(_, cause)| *cause == Cause::Size));
        assert_eq!(gone.len(), 500);
        assert!(
            get(&c, "once499", 0).is_some(),
            "the newest is in the window"
        );
        let st = c.stats();
        assert_eq!((st.size, st.evictions), (100, 500));
        check_all(&c);
    }

    #[test]
    fn tinylfu_a_new_entry_in_a_full_cache_is_readable_until_it_leaves_the_window() {
        let c = lfu_cache(100);
        for i in 0..100 {
            for _ in 0..3 {
                load(&c, &format!("hot{i}"));
            }
        }
        set(&c, "new", 1, NEVER, 0);
        assert_eq!(get(&c, "new", 0), Some(1));
        // Read often enough while in the window, it is admitted when it leaves it.
        for _ in 0..5 {
            get(&c, "new", 0);
        }
        set(&c, "next", 2, NEVER, 0);
        assert_eq!(get(&c, "new", 0), Some(1));
        check_all(&c);
    }

    #[test]
    fn tinylfu_aging_lets_a_new_hot_set_replace_an_old_one() {
        // 100 entries: the sketch ages every 1000 counted increments.
        let c = lfu_cache(100);
        let old: Vec<String> = (0..90).map(|i| format!("old{i}")).collect();
        let new: Vec<String> = (0..90).map(|i| format!("new{i}")).collect();
        for _ in 0..20 {
            for k in &old {
                load(&c, k);
            }
        }
        let resident = |set: &[String]| {
            set.iter()
                .filter(|k| c.with_key(h(k), &Q(k), |_, h| h.is_some()).unwrap())
                .count()
        };
        assert_eq!(resident(&old), 90);
        // Without aging the old set, saturated, would refuse the new one for ever (a
        // tie keeps the victim); with it, the old counts halve while the new ones grow.
        for _ in 0..40 {
            for k in &new {
                load(&c, k);
            }
        }
        assert_eq!(resident(&new), 90);
        assert!(resident(&old) <= 10);
        check_all(&c);
    }

    #[test]
    fn tinylfu_warm_candidates_are_admitted_by_chance_cold_ones_never() {
        let mut l = Lfu::new(100, 1);
        let admitted = |l: &mut Lfu, c, v| (0..12_800).filter(|_| l.admits(c, v)).count();
        assert_eq!(admitted(&mut l, 5, 15), 0);
        assert_eq!(admitted(&mut l, 2, 1), 12_800);
        let warm = admitted(&mut l, 6, 15);
        assert!(
            (40..=250).contains(&warm),
            "{warm} of 12800, about 100 expected"
        );
    }

    #[test]
    fn tinylfu_weights_bound_the_total_and_heavy_entries_get_room() {
        let c = opts_cache(
            100,
            Options {
                policy: Policy::TinyLfu,
                weighted: true,
                ..Options::default()
            },
        );
        for i in 0..100 {
            put(&c, &format!("k{i}"), i, 3, NEVER, 0);
            check_all(&c);
        }
        assert!(c.stats().weight <= 100);
        // Heavier than the window: it still enters, and what leaves makes room.
        let gone = put(&c, "heavy", 0, 60, NEVER, 0);
        assert!(!gone.is_empty());
        assert_eq!(get(&c, "heavy", 0), Some(0));
        assert!(c.stats().weight <= 100);
        check_all(&c);
        // Growing an entry in place sheds others (or it), never past the bound.
        put(&c, "heavy", 1, 95, NEVER, 0);
        assert!(c.stats().weight <= 100);
        check_all(&c);
        // Zero weights: the count bound still holds.
        for i in 0..300 {
            put(&c, &format!("z{i}"), i, 0, NEVER, 0);
        }
        assert!(c.stats().size <= 100);
        check_all(&c);
    }

    #[test]
    fn tinylfu_expired_entries_go_first_and_clear_forgets_the_history() {
        let c = lfu_cache(10);
        for i in 0..10 {
            for _ in 0..3 {
                get(&c, &format!("k{i}"), 0);
            }
            set(&c, &format!("k{i}"), i, if i == 4 { 5 } else { NEVER }, 0);
        }
        let gone = put(&c, "x", 1, 1, NEVER, 5);
        assert_eq!(gone, vec![("k4".to_string(), Cause::Expired)]);
        check_all(&c);
        c.clear();
        check_all(&c);
        for s in &c.shards {
            let g = s.lock();
            assert!(!g.lfu.as_ref().unwrap().sketch.is_sized());
        }
        for i in 0..20 {
            set(&c, &format!("n{i}"), i, NEVER, 0);
        }
        assert_eq!(len(&c, 0), 10);
        check_all(&c);
    }

    #[test]
    fn tinylfu_shards_keep_their_invariants_under_churn() {
        let c = ShardedCache::<String, u64>::with_options(
            300,
            Some(3),
            1,
            Options {
                policy: Policy::TinyLfu,
                ..Options::default()
            },
        )
        .unwrap();
        let mut seed = 7u64;
        for i in 0..30_000i64 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let r = (seed >> 33) % 2000;
            let k = (r * r / 2000).to_string(); // skewed
            match seed % 10 {
                0 => {
                    c.remove(h(&k), &Q(&k), i).unwrap();
                }
                1 => set(&c, &k, 1, i + 50, i),
                2 if i % 1000 == 0 => c.clear(),
                _ => {
                    if get(&c, &k, i).is_none() {
                        set(&c, &k, 1, NEVER, i);
                    }
                }
            }
            if i % 97 == 0 {
                check_all(&c);
            }
        }
        check_all(&c);
        let st = c.stats();
        assert!(st.size <= 300);
    }
}
