//! A keyed rate limiter: one GCRA token bucket per key, each a single atomic word.
//!
//! # Algorithm
//! GCRA (the Generic Cell Rate Algorithm, ITU-T I.371; the form used by Brandur Leach's
//! "throttled" and by redis-cell) is a token bucket kept as one number: the theoretical
//! arrival time `tat`, the instant at which the bucket would be full again. With the
//! emission interval `T = per / rate` (one token's refill time) and the window
//! `tau = burst * T`, a request for `cost` tokens at `now` is allowed iff
//! `max(tat, now) + cost * T <= now + tau`, and then `tat` becomes `max(tat, now) + cost * T`.
//! That admits exactly what a bucket of capacity `burst` refilled at `rate` per `per` admits.
//!
//! All arithmetic is on `u64` nanoseconds since the limiter's epoch (its clock's reading at
//! construction), so a `ManualClock` gives exact results. `T` is rounded *up* to a whole
//! nanosecond, so rounding can only make the limiter stricter, never admit more.
//!
//! # Concurrency
//! Each key's whole state is one `AtomicU64` holding `tat`; a decision is a load, a clock
//! read, and a compare-and-swap, retried on conflict. The clock is read *after* the load,
//! and the CAS succeeds only if `tat` is unchanged, so every decision is exact for the
//! instant of its clock read: that is its linearisation point. Denials write nothing.
//!
//! Keys live in a `DashMap` (sharded `RwLock`ed tables). An existing key is found under its
//! shard's *read* lock (`get`), and its CAS runs under that read guard; only a miss takes
//! the write lock, to insert. `tat == 0` (or any `tat <= now`) is a full bucket, exactly
//! what a missing key means, which is why idle keys can be dropped.
//!
//! # Reclamation
//! A key whose bucket is full again (`tat <= now`) carries no information and is removed.
//! Every key in the map also sits, exactly once, in one of [`QUEUES`] FIFO queues
//! (pushed when it is inserted). A *reclaim step* pops up to [`RECLAIM_BUDGET`] keys from
//! the next queue in round-robin order and removes each one whose bucket is full, pushing
//! the others back. A step runs after every insertion and after every [`RECLAIM_EVERY`]-th
//! decision a thread makes, so the work per call is bounded and amortised, with no
//! background thread; `sweep` runs the step over every queued key.
//!
//! Automatic steps remove a key only once its bucket has been full for a grace period of
//! `max(tau, 1 s)`, so a key used every few milliseconds is not removed and re-inserted
//! between uses (which costs an allocation and a write lock each time); memory then
//! follows the keys active in the last `tau + max(tau, 1 s)`. `sweep` uses no grace.
//!
//! Removal uses `remove_if` with the predicate `tat <= now` evaluated under the shard's
//! write lock. A CAS always runs under the read lock of the same shard, so no CAS can be
//! in flight on a bucket while it is being removed: a grant is never recorded on a bucket
//! that has left the map (which would let a fresh bucket admit it again). Only the holder
//! of a key's queue entry ever removes that key, so the "exactly once in a queue"
//! invariant holds, and the queues hold as many keys as the map. `reset` does not remove:
//! it stores `0` (a full bucket), and the key is then reclaimed like any idle key.
//!
//! # Orderings
//! `tat` carries no other data, so `Relaxed` would suffice for it; `Acquire`/`Release`
//! (AcqRel on the CAS) keep a reset or a grant visible to a thread that a test signals
//! afterwards. The map's and queues' locks give their own happens-before edges.

use std::borrow::Borrow;
use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::core::clock::Clock;

/// Keys examined per reclaim step, at most.
pub const RECLAIM_BUDGET: usize = 4;
/// A thread runs a reclaim step after this many decisions (besides after each insert).
pub const RECLAIM_EVERY: u32 = 64;
/// Number of reclamation queues (a key's queue is chosen from its hash).
pub const QUEUES: usize = 16;
/// Shortest time a bucket stays full before an automatic step may remove its key.
pub const MIN_IDLE_GRACE: u64 = 1_000_000_000;
/// Largest window `burst * T` accepted, so `now + tau` never overflows a `u64`.
const MAX_WINDOW: u64 = 1 << 62;

/// Why a limiter or a request was refused. The text is the Python message.
#[derive(Debug, Clone, PartialEq)]
pub enum RateError {
    RateNotFinite,
    RateNotPositive,
    BurstNotPositive,
    /// `burst * per / rate` does not fit in 2^62 ns; names `burst` if given, else `rate`
    /// (too large a default burst, or too small a rate).
    WindowTooLarge(&'static str),
    CostNotPositive,
    CostAboveBurst {
        cost: u64,
        burst: u64,
    },
}

impl fmt::Display for RateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RateNotFinite => write!(f, "rate must be a finite number"),
            Self::RateNotPositive => write!(f, "rate must be > 0"),
            Self::BurstNotPositive => write!(f, "burst must be >= 1"),
            Self::WindowTooLarge(arg) => {
                write!(
                    f,
                    "{arg} is out of range: burst * per / rate must be at most 146 years"
                )
            }
            Self::CostNotPositive => write!(f, "cost must be >= 1"),
            Self::CostAboveBurst { cost, burst } => write!(
                f,
                "cost must be <= burst ({burst}), got {cost}: it could never be granted"
            ),
        }
    }
}

impl std::error::Error for RateError {}

/// The fixed parameters of GCRA: emission interval and window, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    interval: u64,
    burst: u64,
    tau: u64,
}

/// What one decision saw (the bucket before it, the clock, the cost) and its verdict;
/// [`Gcra::decision`] expands it into a [`Decision`] when the caller wants the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    tat: u64,
    now: u64,
    cost: u64,
    pub allowed: bool,
}

/// The outcome of one request, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Whole tokens left after this decision.
    pub remaining: u64,
    /// 0 when allowed; else the wait until `cost` tokens are there.
    pub retry_after: u64,
    /// The wait until the bucket is full.
    pub reset_after: u64,
}

impl Gcra {
    /// `rate` tokens per `per_ns` nanoseconds, capacity `burst` (default
    /// `max(1, ceil(rate))`).
    pub fn new(rate: f64, per_ns: u64, burst: Option<u64>) -> Result<Self, RateError> {
        if !rate.is_finite() {
            return Err(RateError::RateNotFinite);
        }
        if rate <= 0.0 {
            return Err(RateError::RateNotPositive);
        }
        let per_ns = per_ns.max(1);
        // Exact integer division when the rate is a whole number, so 1 s / 3 is
        // 333_333_334 ns and not whatever the float quotient rounds to.
        let interval = if rate.fract() == 0.0 && rate <= 9.0e15 {
            per_ns.div_ceil(rate as u64)
        } else {
            let q = (per_ns as f64 / rate).ceil();
            if q >= MAX_WINDOW as f64 {
                return Err(RateError::WindowTooLarge("rate"));
            }
            q as u64
        }
        .max(1);
        let (burst, arg) = match burst {
            Some(0) => return Err(RateError::BurstNotPositive),
            Some(b) => (b, "burst"),
            None => {
                let b = rate.ceil().max(1.0);
                if b >= MAX_WINDOW as f64 {
                    return Err(RateError::WindowTooLarge("rate"));
                }
                (b as u64, "rate")
            }
        };
        let tau = burst
            .checked_mul(interval)
            .filter(|&t| t <= MAX_WINDOW)
            .ok_or(RateError::WindowTooLarge(arg))?;
        Ok(Self {
            interval,
            burst,
            tau,
        })
    }

    pub fn interval(&self) -> u64 {
        self.interval
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// How long a bucket stays full before automatic reclamation may remove its key.
    pub fn idle_grace(&self) -> u64 {
        self.tau.max(MIN_IDLE_GRACE)
    }

    /// Validates a request's cost.
    pub fn check_cost(&self, cost: u64) -> Result<(), RateError> {
        if cost == 0 {
            Err(RateError::CostNotPositive)
        } else if cost > self.burst {
            Err(RateError::CostAboveBurst {
                cost,
                burst: self.burst,
            })
        } else {
            Ok(())
        }
    }

    /// The new `tat` if `cost` tokens at `now` given `tat` are allowed (no division: the
    /// hot path of `try_acquire`).
    #[inline]
    pub fn admit(&self, tat: u64, now: u64, cost: u64) -> Option<u64> {
        let new_tat = tat.max(now) + cost * self.interval;
        (new_tat <= now + self.tau).then_some(new_tat)
    }

    /// The full decision for what one attempt saw.
    pub fn decision(&self, o: Outcome) -> Decision {
        self.decide(o.tat, o.now, o.cost).0
    }

    /// The decision for `cost` tokens at `now` given `tat`, and the new `tat` if allowed.
    /// `cost` must have passed [`Gcra::check_cost`].
    #[inline]
    pub fn decide(&self, tat: u64, now: u64, cost: u64) -> (Decision, Option<u64>) {
        let base = tat.max(now);
        let new_tat = base + cost * self.interval;
        let limit = now + self.tau;
        if new_tat <= limit {
            let d = Decision {
                allowed: true,
                remaining: (limit - new_tat) / self.interval,
                retry_after: 0,
                reset_after: new_tat - now,
            };
            (d, Some(new_tat))
        } else {
            let d = Decision {
                allowed: false,
                remaining: limit.saturating_sub(base) / self.interval,
                retry_after: new_tat - limit,
                reset_after: base - now,
            };
            (d, None)
        }
    }

    /// Whole tokens available at `now` given `tat`.
    #[inline]
    pub fn remaining(&self, tat: u64, now: u64) -> u64 {
        (now + self.tau).saturating_sub(tat.max(now)) / self.interval
    }
}

// ---- keys --------------------------------------------------------------------------------

/// A stored key: a Rust-native copy of a caller's key (no Python object in the map).
/// Integers, strings, bytes and tuples compare by value; `hash` is computed once.
#[derive(Debug, Clone)]
pub struct Key {
    hash: u64,
    kind: KeyKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    None,
    Int(i64),
    /// An integer outside i64, by its decimal text.
    BigInt(Box<str>),
    Str(Box<str>),
    Bytes(Box<[u8]>),
    Tuple(Box<[KeyKind]>),
}

/// A caller's key borrowed for a lookup; made into a [`Key`] only on insertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef<'a> {
    None,
    Int(i64),
    BigInt(String),
    Str(&'a str),
    Bytes(&'a [u8]),
    Tuple(Vec<KeyRef<'a>>),
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            Self::None => h.write_u8(0),
            Self::Int(i) => {
                h.write_u8(1);
                h.write_i64(*i);
            }
            Self::BigInt(s) => {
                h.write_u8(2);
                s.hash(h);
            }
            Self::Str(s) => {
                h.write_u8(3);
                s.hash(h);
            }
            Self::Bytes(b) => {
                h.write_u8(4);
                b.hash(h);
            }
            Self::Tuple(items) => {
                h.write_u8(5);
                h.write_usize(items.len());
                for item in items {
                    item.hash(h);
                }
            }
        }
    }
}

impl KeyRef<'_> {
    fn to_kind(&self) -> KeyKind {
        match self {
            Self::None => KeyKind::None,
            Self::Int(i) => KeyKind::Int(*i),
            Self::BigInt(s) => KeyKind::BigInt(s.as_str().into()),
            Self::Str(s) => KeyKind::Str((*s).into()),
            Self::Bytes(b) => KeyKind::Bytes((*b).into()),
            Self::Tuple(items) => KeyKind::Tuple(items.iter().map(KeyRef::to_kind).collect()),
        }
    }

    fn matches(&self, k: &KeyKind) -> bool {
        match (self, k) {
            (Self::None, KeyKind::None) => true,
            (Self::Int(a), KeyKind::Int(b)) => a == b,
            (Self::BigInt(a), KeyKind::BigInt(b)) => a.as_str() == &**b,
            (Self::Str(a), KeyKind::Str(b)) => *a == &**b,
            (Self::Bytes(a), KeyKind::Bytes(b)) => *a == &**b,
            (Self::Tuple(a), KeyKind::Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.matches(y))
            }
            _ => false,
        }
    }
}

/// The process-wide hasher for keys (seeded once per process).
fn key_hasher() -> &'static hashbrown::DefaultHashBuilder {
    static H: OnceLock<hashbrown::DefaultHashBuilder> = OnceLock::new();
    H.get_or_init(hashbrown::DefaultHashBuilder::default)
}

/// Spreads a hash over all 64 bits (a finaliser from SplitMix64).
#[inline]
pub fn mix(h: u64) -> u64 {
    let x = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A borrowed key with its hash: what lookups use.
#[derive(Debug)]
pub struct Query<'a> {
    hash: u64,
    kind: KeyRef<'a>,
}

impl<'a> Query<'a> {
    pub fn new(kind: KeyRef<'a>) -> Self {
        Self {
            hash: key_hasher().hash_one(&kind),
            kind,
        }
    }

    /// A query whose hash the caller computed. All the queries made on one limiter must
    /// come from one hashing scheme that gives equal keys equal hashes (the binding hashes
    /// Python keys by value; [`Query::new`] hashes structurally).
    #[inline]
    pub fn with_hash(kind: KeyRef<'a>, hash: u64) -> Self {
        Self { hash, kind }
    }

    /// The owned key, for insertion.
    pub fn to_key(&self) -> Key {
        Key {
            hash: self.hash,
            kind: self.kind.to_kind(),
        }
    }
}

/// What both a stored [`Key`] and a borrowed [`Query`] can be looked up as, so that
/// `DashMap<Key, _>::get` accepts a `Query` without building a `Key` (no allocation on
/// the hit path). Both hash as their precomputed `u64`.
pub trait Lookup {
    fn hash64(&self) -> u64;
    fn matches(&self, stored: &Key) -> bool;
    fn as_key(&self) -> Option<&Key>;
}

impl Lookup for Key {
    fn hash64(&self) -> u64 {
        self.hash
    }
    fn matches(&self, stored: &Key) -> bool {
        self == stored
    }
    fn as_key(&self) -> Option<&Key> {
        Some(self)
    }
}

impl Lookup for Query<'_> {
    fn hash64(&self) -> u64 {
        self.hash
    }
    fn matches(&self, stored: &Key) -> bool {
        self.hash == stored.hash && self.kind.matches(&stored.kind)
    }
    fn as_key(&self) -> Option<&Key> {
        None
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.kind == other.kind
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.hash);
    }
}

impl Hash for dyn Lookup + '_ {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.hash64());
    }
}

impl PartialEq for dyn Lookup + '_ {
    fn eq(&self, other: &Self) -> bool {
        match (self.as_key(), other.as_key()) {
            (_, Some(k)) => self.matches(k),
            (Some(k), None) => other.matches(k),
            (None, None) => false,
        }
    }
}

impl Eq for dyn Lookup + '_ {}

impl<'a> Borrow<dyn Lookup + 'a> for Key {
    fn borrow(&self) -> &(dyn Lookup + 'a) {
        self
    }
}

/// A hasher that passes a precomputed, already mixed `u64` through.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Key`; a plain FNV-1a keeps it correct for anything else.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The map hasher for [`Key`]s.
pub type KeyHashBuilder = BuildHasherDefault<PassThrough>;

// ---- the limiter -------------------------------------------------------------------------

thread_local! {
    /// Decisions this thread made since its last reclaim step (any limiter).
    static TICKS: Cell<u32> = const { Cell::new(0) };
}

/// A keyed GCRA rate limiter. `K` is the stored key; lookups borrow it as `Q`.
pub struct Limiter<K, S = KeyHashBuilder> {
    gcra: Gcra,
    clock: Clock,
    epoch: i64,
    map: DashMap<K, AtomicU64, S>,
    queues: Box<[Mutex<VecDeque<K>>]>,
    cursor: AtomicUsize,
}

impl<K, S> Limiter<K, S>
where
    K: Hash + Eq + Clone,
    S: BuildHasher + Clone + Default,
{
    pub fn new(gcra: Gcra, clock: Clock) -> Self {
        let epoch = clock.now_nanos();
        Self {
            gcra,
            clock,
            epoch,
            map: DashMap::with_hasher(S::default()),
            queues: (0..QUEUES).map(|_| Mutex::new(VecDeque::new())).collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn gcra(&self) -> &Gcra {
        &self.gcra
    }

    /// Nanoseconds since the epoch (never negative: clocks never go backwards).
    #[inline]
    fn now(&self) -> u64 {
        (self.clock.now_nanos() - self.epoch).max(0) as u64
    }

    /// The decision for `cost` tokens on `key`, consuming them if allowed.
    /// `make` builds the stored key on a miss. `cost` must have passed `check_cost`.
    pub fn acquire<Q>(&self, key: &Q, make: impl FnOnce() -> K, cost: u64) -> Outcome
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.decide(key, make, cost)
    }

    /// Whole tokens available on `key` now, consuming nothing.
    pub fn peek<Q>(&self, key: &Q) -> u64
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.map.get(key) {
            Some(b) => {
                let tat = b.load(Ordering::Acquire);
                self.gcra.remaining(tat, self.now())
            }
            None => self.gcra.burst,
        }
    }

    fn decide<Q>(&self, key: &Q, make: impl FnOnce() -> K, cost: u64) -> Outcome
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(bucket) = self.map.get(key) {
            let d = self.cas(&bucket, cost);
            drop(bucket);
            self.tick();
            return d;
        }
        // Miss: insert under the shard's write lock. The bucket is fresh (full), or another
        // thread inserted it since our `get`; either way decide against what is there now.
        let (d, queued) = match self.map.entry(make()) {
            Entry::Occupied(e) => (self.cas(e.get(), cost), None),
            Entry::Vacant(v) => {
                let now = self.now();
                let new_tat = self.gcra.admit(0, now, cost);
                let o = Outcome {
                    tat: 0,
                    now,
                    cost,
                    allowed: new_tat.is_some(),
                };
                match new_tat {
                    Some(t) => {
                        let copy = v.key().clone();
                        v.insert(AtomicU64::new(t));
                        (o, Some(copy))
                    }
                    // A fresh bucket refuses only a cost above burst, which callers
                    // rule out; nothing to store either way.
                    None => (o, None),
                }
            }
        };
        if let Some(copy) = queued {
            let q = self.queue_of(&copy);
            self.queues[q].lock().push_back(copy);
            self.reclaim_step(RECLAIM_BUDGET);
        }
        d
    }

    /// The CAS loop on one bucket. The clock is read after each load (see module docs).
    #[inline]
    fn cas(&self, bucket: &AtomicU64, cost: u64) -> Outcome {
        let mut tat = bucket.load(Ordering::Acquire);
        loop {
            let now = self.now();
            let new_tat = self.gcra.admit(tat, now, cost);
            let outcome = Outcome {
                tat,
                now,
                cost,
                allowed: new_tat.is_some(),
            };
            let Some(new_tat) = new_tat else {
                return outcome;
            };
            match bucket.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return outcome,
                Err(seen) => tat = seen,
            }
        }
    }

    /// Counts a decision; every `RECLAIM_EVERY`-th one of this thread runs a reclaim step.
    #[inline]
    fn tick(&self) {
        let due = TICKS.with(|t| {
            let n = t.get() + 1;
            if n >= RECLAIM_EVERY {
                t.set(0);
                true
            } else {
                t.set(n);
                false
            }
        });
        if due {
            self.reclaim_step(RECLAIM_BUDGET);
        }
    }

    fn queue_of(&self, key: &K) -> usize {
        let h = self.map.hasher().hash_one(key);
        ((h >> 32) as usize) % QUEUES
    }

    /// Refills `key`'s bucket. The key stays tracked until reclaimed like any idle key.
    pub fn reset<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(b) = self.map.get(key) {
            b.store(0, Ordering::Release);
        }
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Pops up to `budget` keys from the next queue and removes those whose bucket is
    /// full; returns how many were removed.
    pub fn reclaim_step(&self, budget: usize) -> usize {
        let q = self.cursor.fetch_add(1, Ordering::Relaxed) % QUEUES;
        let mut popped: Vec<K> = Vec::with_capacity(budget);
        {
            let mut queue = self.queues[q].lock();
            while popped.len() < budget {
                match queue.pop_front() {
                    Some(k) => popped.push(k),
                    None => break,
                }
            }
        }
        if popped.is_empty() {
            return 0;
        }
        let horizon = self.now().saturating_sub(self.gcra.idle_grace());
        self.settle(q, popped, horizon)
    }

    /// Removes every key whose bucket is full now; returns how many.
    pub fn sweep(&self) -> usize {
        let mut removed = 0;
        for q in 0..QUEUES {
            let keys: Vec<K> = std::mem::take(&mut *self.queues[q].lock()).into();
            if !keys.is_empty() {
                removed += self.settle(q, keys, self.now());
            }
        }
        removed
    }

    /// Removes the keys among `keys` (taken from queue `q`) whose bucket was full at
    /// `now` (`tat <= now`); pushes the others back to `q`. No map guard is held while the
    /// queue is locked.
    fn settle(&self, q: usize, keys: Vec<K>, now: u64) -> usize {
        let mut removed = 0;
        let mut keep: Vec<K> = Vec::new();
        let mut graves: Vec<(K, AtomicU64)> = Vec::new();
        for k in keys {
            let full = match self.map.get(&k) {
                Some(b) => b.load(Ordering::Acquire) <= now,
                // Unreachable while the one-entry-per-key invariant holds; dropping the
                // entry is the safe answer either way.
                None => continue,
            };
            if full {
                // Re-checked under the write lock: no CAS can run on the bucket meanwhile.
                if let Some(gone) = self
                    .map
                    .remove_if(&k, |_, b| b.load(Ordering::Acquire) <= now)
                {
                    graves.push(gone);
                    removed += 1;
                    continue;
                }
            }
            keep.push(k);
        }
        if !keep.is_empty() {
            self.queues[q].lock().extend(keep);
        }
        drop(graves);
        removed
    }

    /// Keys currently queued for reclamation (equals `len()` when no step is running).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queues.iter().map(|q| q.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::RandomState;
    use std::sync::Arc;

    use super::*;
    use crate::core::clock::ManualClock;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    fn manual() -> (Arc<ManualClock>, Clock) {
        let m = Arc::new(ManualClock::new(0));
        (m.clone(), Clock::Manual(m))
    }

    fn limiter(rate: f64, burst: Option<u64>) -> (Arc<ManualClock>, Limiter<u64, RandomState>) {
        let (m, c) = manual();
        (m, Limiter::new(Gcra::new(rate, SEC, burst).unwrap(), c))
    }

    /// The full decision for one request on a `u64` key.
    fn check(l: &Limiter<u64, RandomState>, k: u64, cost: u64) -> Decision {
        l.gcra().decision(l.acquire(&k, || k, cost))
    }

    #[test]
    fn ten_per_second_is_exact() {
        let (clock, l) = limiter(10.0, None);
        for i in 0..10 {
            let d = check(&l, 1, 1);
            assert!(d.allowed);
            assert_eq!(d.remaining, 9 - i);
            assert_eq!(d.reset_after, (i + 1) * 100 * MS);
        }
        let d = check(&l, 1, 1);
        assert_eq!(
            d,
            Decision {
                allowed: false,
                remaining: 0,
                retry_after: 100 * MS,
                reset_after: SEC
            }
        );
        clock.advance((100 * MS) as i64).unwrap();
        assert!(l.acquire(&1, || 1, 1).allowed);
        assert!(!l.acquire(&1, || 1, 1).allowed);
        assert_eq!(l.peek(&1), 0);
        assert_eq!(l.peek(&2), 10);
    }

    #[test]
    fn interval_rounds_up() {
        let g = Gcra::new(3.0, SEC, None).unwrap();
        assert_eq!(g.interval(), 333_333_334);
        assert_eq!(g.burst(), 3);
        let g = Gcra::new(0.5, SEC, None).unwrap();
        assert_eq!(g.interval(), 2 * SEC);
        assert_eq!(g.burst(), 1);
        let g = Gcra::new(2.5, SEC, None).unwrap();
        assert_eq!(g.interval(), 400 * MS);
        assert_eq!(g.burst(), 3);
        // Never below one nanosecond.
        assert_eq!(Gcra::new(1e12, SEC, Some(1)).unwrap().interval(), 1);
    }

    #[test]
    fn bad_parameters_name_the_argument() {
        assert_eq!(
            Gcra::new(f64::NAN, SEC, None).unwrap_err().to_string(),
            "rate must be a finite number"
        );
        assert_eq!(
            Gcra::new(0.0, SEC, None).unwrap_err().to_string(),
            "rate must be > 0"
        );
        assert_eq!(
            Gcra::new(1.0, SEC, Some(u64::MAX)).unwrap_err(),
            RateError::WindowTooLarge("burst")
        );
        assert_eq!(
            Gcra::new(1e30, SEC, None).unwrap_err(),
            RateError::WindowTooLarge("rate")
        );
        let g = Gcra::new(10.0, SEC, None).unwrap();
        assert_eq!(g.check_cost(0), Err(RateError::CostNotPositive));
        assert!(g
            .check_cost(11)
            .unwrap_err()
            .to_string()
            .starts_with("cost must be <= burst (10)"));
        assert_eq!(g.check_cost(10), Ok(()));
    }

    #[test]
    fn cost_and_burst() {
        let (clock, l) = limiter(1.0, Some(5));
        assert!(l.acquire(&7, || 7, 5).allowed);
        let d = check(&l, 7, 2);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, 2 * SEC);
        assert_eq!(d.reset_after, 5 * SEC);
        clock.advance((2 * SEC) as i64).unwrap();
        let d = check(&l, 7, 2);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn idle_keys_are_reclaimed_with_bounded_work() {
        let (clock, l) = limiter(10.0, None);
        for k in 0..5_000u64 {
            assert!(l.acquire(&k, || k, 1).allowed);
        }
        assert_eq!(l.len(), 5_000);
        assert_eq!(l.queued(), 5_000);
        clock.advance((100 * SEC) as i64).unwrap();
        for k in 5_000..10_000u64 {
            assert!(l.acquire(&k, || k, 1).allowed);
        }
        // Each insertion examined up to RECLAIM_BUDGET queued keys: the old ones go first.
        assert!(l.len() < 6_000, "{}", l.len());
        assert_eq!(l.queued(), l.len());
        clock.advance((100 * SEC) as i64).unwrap();
        let n = l.len();
        assert_eq!(l.sweep(), n);
        assert_eq!(l.len(), 0);
        assert_eq!(l.queued(), 0);
    }

    #[test]
    fn sweep_keeps_active_keys_and_reset_refills() {
        let (clock, l) = limiter(10.0, None);
        assert!(l.acquire(&1, || 1, 10).allowed);
        assert!(l.acquire(&2, || 2, 1).allowed);
        clock.advance((500 * MS) as i64).unwrap();
        assert_eq!(l.sweep(), 1); // key 2 is full again, key 1 is not
        assert_eq!(l.len(), 1);
        assert_eq!(l.peek(&1), 5);
        l.reset(&1);
        assert_eq!(l.peek(&1), 10);
        assert_eq!(l.sweep(), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn concurrent_grants_are_exact_on_a_frozen_clock() {
        let (clock, l) = limiter(1000.0, Some(1000));
        let l = Arc::new(l);
        let run = |l: &Arc<Limiter<u64, RandomState>>| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let l = l.clone();
                    std::thread::spawn(move || {
                        (0..400).filter(|_| l.acquire(&0, || 0, 1).allowed).count()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum::<usize>()
        };
        assert_eq!(run(&l), 1000);
        clock.advance((250 * MS) as i64).unwrap();
        assert_eq!(run(&l), 250);
    }

    #[test]
    fn concurrent_reclaim_never_over_admits() {
        // Threads grant on a few keys while others sweep; each key's grants stay within
        // burst + elapsed / interval.
        let (clock, l) = limiter(100.0, Some(10));
        let l = Arc::new(l);
        let mut handles = Vec::new();
        for t in 0..4u64 {
            let l = l.clone();
            handles.push(std::thread::spawn(move || {
                let mut granted = [0u64; 4];
                for i in 0..20_000u64 {
                    let k = (i + t) % 4;
                    if l.acquire(&k, || k, 1).allowed {
                        granted[k as usize] += 1;
                    }
                    if i % 97 == 0 {
                        l.sweep();
                    }
                }
                granted
            }));
        }
        let stepper = {
            let clock = clock.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    clock.advance((MS) as i64).unwrap();
                    std::thread::yield_now();
                }
            })
        };
        stepper.join().unwrap();
        let mut total = [0u64; 4];
        for h in handles {
            for (i, g) in h.join().unwrap().iter().enumerate() {
                total[i] += g;
            }
        }
        let elapsed = clock.now_nanos() as u64;
        for g in total {
            assert!(g <= 10 + elapsed / (10 * MS), "{g} grants in {elapsed} ns");
        }
    }

    #[test]
    fn removal_racing_grants_never_over_admits() {
        // Each round starts with every bucket full (removable) and the clock frozen, so a
        // key must grant exactly `burst` in the round whatever the sweeper removes: a
        // removal that dropped a bucket after a grant would let a fresh one grant again.
        const KEYS: u64 = 64;
        let (clock, l) = limiter(10.0, Some(3));
        let l = Arc::new(l);
        for round in 0..20 {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let sweeper = {
                let (l, stop) = (l.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut removed = 0;
                    while !stop.load(Ordering::Relaxed) {
                        removed += l.sweep();
                    }
                    removed
                })
            };
            let hammers: Vec<_> = (0..3)
                .map(|t| {
                    let l = l.clone();
                    std::thread::spawn(move || {
                        let mut granted = vec![0u64; KEYS as usize];
                        for i in 0..KEYS * 6 {
                            let k = (i + t * 7) % KEYS;
                            granted[k as usize] += u64::from(l.acquire(&k, || k, 1).allowed);
                        }
                        granted
                    })
                })
                .collect();
            let mut total = vec![0u64; KEYS as usize];
            for h in hammers {
                for (k, g) in h.join().unwrap().into_iter().enumerate() {
                    total[k] += g;
                }
            }
            stop.store(true, Ordering::Relaxed);
            let removed = sweeper.join().unwrap();
            assert!(total.iter().all(|&g| g == 3), "round {round}: {total:?}");
            if round > 0 {
                // Keys are full at the start of a round and removable until granted.
                assert!(removed <= KEYS as usize);
            }
            clock.advance((SEC) as i64).unwrap();
        }
    }

    #[test]
    fn query_keys_find_stored_keys() {
        let (_, c) = manual();
        let l: Limiter<Key, KeyHashBuilder> = Limiter::new(Gcra::new(2.0, SEC, None).unwrap(), c);
        let keys = [
            KeyRef::None,
            KeyRef::Int(-3),
            KeyRef::BigInt("123456789012345678901234567890".into()),
            KeyRef::Str("user:1"),
            KeyRef::Bytes(b"user:1"),
            KeyRef::Tuple(vec![KeyRef::Str("a"), KeyRef::Int(1)]),
            KeyRef::Tuple(vec![]),
        ];
        for k in &keys {
            let q = Query::new(k.clone());
            assert!(l.acquire(&q as &dyn Lookup, || q.to_key(), 1).allowed);
        }
        assert_eq!(l.len(), keys.len());
        for k in &keys {
            let q = Query::new(k.clone());
            assert_eq!(l.peek(&q as &dyn Lookup), 1, "{k:?}");
        }
    }
}
