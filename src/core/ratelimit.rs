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
//! # Time and overflow
//! The limiter's time is the clock's reading minus the epoch. Readings lie in
//! `0..=MAX_READING` (2^62 ns, about 146 years: a ManualClock refuses to pass it, and the
//! monotonic clock counts from process start), so the subtraction cannot overflow and the
//! time is at most 2^62. A reading before the epoch (ferrule's clocks never go backwards,
//! so this cannot happen through them) counts as the epoch: time stands still, nothing
//! wraps. [`Gcra::new`] refuses a window `tau` above 2^62, and
//! `cost <= burst`, so `cost * T <= tau <= 2^62`. A grant at time `now` stores
//! `tat <= now + tau <= 2^63`; hence `max(tat, now) + cost * T < 2^63 + 2^62` and
//! `now + tau <= 2^63`: no sum overflows a `u64`, every difference is taken in the order
//! the comparison before it guarantees, and every reported wait is below 2^63 ns (an
//! `i64`). The arithmetic does not rely on these bounds anyway: [`Gcra::admit`] compares
//! differences that cannot underflow, and the reporting paths saturate, so that a broken
//! bound could only make a bucket stricter (a saturated `tat` admits nothing more), never
//! wrap into admitting.
//!
//! # The bucket step
//! Each key's whole state is one [`Bucket`]: an `AtomicU64` holding `tat` (from
//! `crate::core::sync`, so the loom model at the end checks the real step). A decision is a
//! load, a clock read, and a compare-and-swap, retried on conflict. The clock is read
//! *after* the load, and the CAS succeeds only if `tat` is unchanged, so every decision is
//! exact for the instant of its clock read: that is its linearisation point. Denials write
//! nothing.
//!
//! # Keys
//! Keys live in a [`ReadMap`] (sharded tables, each behind a lock whose readers take only
//! their own thread's stripe, so reads of different keys by different threads write no
//! shared line) from [`Key`] to [`Bucket`]. A key is
//! one of two kinds:
//! - *native*: a Rust copy of a value whose equality is decided by value alone (the binding
//!   uses it for exact builtins: None, str, int, bytes, tuples of those). An existing
//!   native key is found under its shard's *read* lock (`get`), and its CAS runs under that
//!   read guard: the lock-free fast path. Only a miss takes the write lock, to insert.
//! - *opaque* (`KeyKind::Opaque(id)`): the caller's own key object `P` (a Python object),
//!   kept in a side table under a unique, never reused id. Its equality is the caller's
//!   ([`Resolve`]) and may run user code, so it is never decided under any lock.
//!
//! The caller guarantees that equal keys have equal hashes, so every stored key equal to a
//! query has the query's hash. To find an opaque query's bucket, or to see whether a
//! native query that missed equals a stored opaque key, the limiter collects the stored
//! keys with that hash under the shard's read lock (plain `Key` clones; a [`Probe`] visits
//! each candidate the table's probe sequence offers), releases it, fetches each opaque
//! candidate's object (a new reference, taken under the side table's lock), and compares
//! outside every lock. The answers are remembered per candidate (ids are never reused), so
//! a retry compares only candidates it has not seen.
//!
//! Invariant: one bucket per equivalence class of keys. Insertions are validated with an
//! *insertion generation*: the hash's stripe in `gens` is read before the candidates are
//! collected, and the insertion, under the shard's write lock, CASes the stripe from that
//! value to the next. Of two insertions racing in one stripe, the later CAS fails and its
//! caller looks again; by then the winner's key is visible (the winner CASed while holding
//! the write lock of the shard both probe, so the loser's next probe acquires that lock
//! after the winner inserted). Removals need no validation: a removed bucket was full,
//! exactly as a missing one is. A lookup that keeps losing (a key whose `==` keeps
//! inserting new keys of its own hash, say) gives up after [`MAX_ATTEMPTS`] with the
//! caller's error rather than spin.
//!
//! Native hits never touch a generation. A native miss validates its insertion like any
//! other, and looks for an equal opaque key only while some exist (`opaque > 0`, read after
//! the generation: an opaque insertion counts itself before its CAS, so a native inserter
//! that could miss the count is one whose CAS then fails).
//!
//! No user code runs under a lock of the limiter: comparisons run with none held, and key
//! objects that leave the side table are handed back to the caller (`grave`) or dropped by
//! the limiter after every lock is released.
//!
//! # Reclamation
//! A key whose bucket is full again (`tat <= now`) carries no information and is removed.
//! Every key in the map also sits, exactly once, in one of [`QUEUES`] FIFO queues: the
//! inserting thread's *home* queue (chosen by the thread's number, so threads started one
//! after another have distinct ones). A *reclaim step* pops up to [`RECLAIM_BUDGET`] keys
//! from one queue and removes each one whose bucket is full, pushing the others back. A
//! step runs after every insertion and after every [`RECLAIM_EVERY`]-th decision a thread
//! makes, on the thread's home queue, except every [`ROUND_ROBIN_EVERY`]-th step, which
//! takes the next queue in round-robin order: the work per call is bounded and
//! amortised, with no background thread, a thread's steps find its own oldest keys
//! first, and every queue is visited (also those of threads that are gone); `sweep` runs
//! the step over every queued key. The home queue keeps the steps of threads on distinct
//! keys apart: a step reads the buckets of the keys it pops and writes its queue's lock,
//! and with one shared rotation both threads' steps read each other's hot buckets (on
//! 3.13t: CPU per decision with two threads 1.17x one thread's with it, 1.07x with no
//! periodic steps at all). Opaque keys are reclaimed the same way; their object leaves
//! the side table right after the map entry.
//!
//! Automatic steps remove a key only once its bucket has been full for a grace period of
//! `max(tau, 1 s)`, so a key used every few milliseconds is not removed and re-inserted
//! between uses (which costs an allocation and a write lock each time); memory then
//! follows the keys active in the last `tau + max(tau, 1 s)`. `sweep` uses no grace.
//! Tables do not keep their high-water size: once the map holds fewer than a quarter of
//! the keys it held at its peak (and the peak was at least [`SHRINK_MIN`]), it is shrunk
//! (amortised over the removals that emptied it); queues and side tables shrink likewise.
//!
//! Removal uses `remove_if` with the predicate `tat <= now` evaluated under the shard's
//! write lock. A CAS always runs under the read lock of the same shard, so no CAS can be
//! in flight on a bucket while it is being removed: a grant is never recorded on a bucket
//! that has left the map (which would let a fresh bucket admit it again). Only the holder
//! of a key's queue entry ever removes that key, so the "exactly once in a queue"
//! invariant holds, and the queues hold as many keys as the map. `reset` does not remove:
//! it stores `0` (a full bucket), and the key is then reclaimed like any idle key.
//!
//! # Garbage collection
//! The binding visits the side table's objects with [`Limiter::try_for_each_stored`] (it
//! skips a shard whose lock is held rather than wait) and empties the limiter with
//! [`Limiter::clear`], which hands every object back to be dropped after unlocking.
//!
//! # Orderings
//! `tat` carries no other data, so `Relaxed` would suffice for it; `Acquire`/`Release`
//! (AcqRel on the CAS) keep a reset or a grant visible to a thread that a test signals
//! afterwards. Generations use AcqRel on the CAS and Acquire on the load, which orders an
//! opaque key's side-table entry and count before its generation bump. The map's, queues'
//! and side tables' locks give their own happens-before edges.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64 as StdAtomicU64, AtomicUsize};
use std::sync::OnceLock;

use hashbrown::hash_map::Entry;
use parking_lot::Mutex;

use crate::core::clock::Clock;
use crate::core::counter;
use crate::core::readmap::{Announced, ReadMap};
use crate::core::sync::{AtomicU64, Mutex as KeyLock, Ordering};

/// Keys examined per reclaim step, at most.
pub const RECLAIM_BUDGET: usize = 4;
/// A thread runs a reclaim step after this many decisions (besides after each insert).
pub const RECLAIM_EVERY: u32 = 64;
/// Every this many periodic steps of a thread, one takes the next queue in round-robin
/// order instead of the thread's home queue.
pub const ROUND_ROBIN_EVERY: u32 = 4;
/// Number of reclamation queues (a key's is its inserting thread's home queue).
pub const QUEUES: usize = 16;
/// Shortest time a bucket stays full before an automatic step may remove its key.
pub const MIN_IDLE_GRACE: u64 = 1_000_000_000;
/// Largest window `burst * T` accepted, so `now + tau` never overflows a `u64`.
const MAX_WINDOW: u64 = 1 << 62;
/// Insertion-generation stripes (a key's stripe is chosen from its hash).
const STRIPES: usize = 64;
/// Side-table shards for opaque keys (chosen from the id).
const STORED_SHARDS: usize = 16;
/// Rounds of look-up-then-insert a decision may lose before it gives up.
pub const MAX_ATTEMPTS: usize = 100;
/// The map is shrunk only once it has held at least this many keys.
pub const SHRINK_MIN: usize = 4_096;

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
/// Invariants (from [`Gcra::new`]): `1 <= interval`, `1 <= burst`,
/// `tau = burst * interval <= 2^62`.
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
        // 333_333_334 ns and not whatever the float quotient rounds to. `rate` is then in
        // 1..=9e15, so the cast is exact and the divisor non-zero.
        let interval = if rate.fract() == 0.0 && rate <= 9.0e15 {
            per_ns.div_ceil(rate as u64)
        } else {
            // Finite and positive over finite and positive: no NaN; +inf (a subnormal
            // rate) fails the range check like any other too-large quotient.
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

    /// The window `burst * interval`, in nanoseconds.
    pub fn tau(&self) -> u64 {
        self.tau
    }

    /// Validates a request's cost.
    pub fn check_cost(&self, cost: u64) -> Result<(), RateError> {
        check_cost(cost, self.burst)
    }

    /// The new `tat` if `cost` tokens at `now` given `tat` are allowed (no division: the
    /// hot path of `try_acquire`).
    ///
    /// `max(tat, now) + cost * T <= now + tau` is tested as
    /// `max(tat, now) - now <= tau - cost * T`: a difference that cannot underflow against
    /// a bound that `check_cost` keeps non-negative, so no input overflows (a cost above
    /// the burst is refused, not wrapped), at the price of no extra instruction.
    #[inline]
    pub fn admit(&self, tat: u64, now: u64, cost: u64) -> Option<u64> {
        let need = cost.saturating_mul(self.interval);
        let slack = self.tau.checked_sub(need)?;
        let base = tat.max(now);
        // Allowed: base + need <= now + tau <= 2^63 in the limiter (saturating beyond).
        (base - now <= slack).then(|| base.saturating_add(need))
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
        let new_tat = base.saturating_add(cost.saturating_mul(self.interval));
        let limit = now.saturating_add(self.tau);
        if new_tat <= limit {
            // new_tat <= limit and new_tat >= base >= now: both differences are >= 0.
            let d = Decision {
                allowed: true,
                remaining: (limit - new_tat) / self.interval,
                retry_after: 0,
                reset_after: new_tat - now,
            };
            (d, Some(new_tat))
        } else {
            // new_tat > limit here, and base >= now always.
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
        now.saturating_add(self.tau).saturating_sub(tat.max(now)) / self.interval
    }
}

/// Validates a request's cost for a bucket of capacity `burst` (also for limiters whose
/// buckets live elsewhere, such as the Redis tier).
pub fn check_cost(cost: u64, burst: u64) -> Result<(), RateError> {
    if cost == 0 {
        Err(RateError::CostNotPositive)
    } else if cost > burst {
        Err(RateError::CostAboveBurst { cost, burst })
    } else {
        Ok(())
    }
}

// ---- the bucket --------------------------------------------------------------------------

/// One key's state: its `tat`, in nanoseconds since the limiter's epoch (0 is a full
/// bucket, as is any `tat <= now`).
pub struct Bucket(AtomicU64);

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Bucket").field(&self.tat()).finish()
    }
}

impl Bucket {
    pub fn new(tat: u64) -> Self {
        Self(AtomicU64::new(tat))
    }

    #[inline]
    pub fn tat(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Makes the bucket full.
    pub fn refill(&self) {
        self.0.store(0, Ordering::Release);
    }

    /// The GCRA step: decides `cost` tokens and records a grant, by a CAS retried on
    /// conflict. `now` is read after each load (see "The bucket step" in the module docs).
    // Measured (callgrind, instructions per `try_acquire`): left to the inliner, the step
    // and `Limiter::hit` end up out of line in the binding and cost ~5% more.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn take(&self, gcra: &Gcra, cost: u64, mut now: impl FnMut() -> u64) -> Outcome {
        let mut tat = self.0.load(Ordering::Acquire);
        loop {
            let now = now();
            let new_tat = gcra.admit(tat, now, cost);
            let outcome = Outcome {
                tat,
                now,
                cost,
                allowed: new_tat.is_some(),
            };
            let Some(new_tat) = new_tat else {
                return outcome;
            };
            match self
                .0
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return outcome,
                Err(seen) => tat = seen,
            }
        }
    }
}

// ---- several windows per key -------------------------------------------------------------

/// Most limits one limiter may hold.
pub const MAX_LIMITS: usize = 16;

/// What a limiter keeps per key and how it decides: one GCRA window in one atomic word
/// ([`Gcra`] with [`Bucket`]: the lock-free fast path), or several windows that must all
/// allow a request ([`Windows`] with [`MultiBucket`]). [`Limiter`] is generic over it, so
/// the single-window limiter compiles to exactly the code it had before several windows
/// existed.
pub trait Policy {
    type Bucket: Send + Sync;
    type Outcome: Copy + fmt::Debug;
    /// A full bucket (every window full).
    fn fresh(&self) -> Self::Bucket;
    /// The decision step on a bucket, recording a grant; `now` is read after the state
    /// it decides on (see "The bucket step").
    fn take(&self, b: &Self::Bucket, cost: u64, now: impl FnMut() -> u64) -> Self::Outcome;
    fn allowed(o: &Self::Outcome) -> bool;
    /// The full decision for an outcome.
    fn decision(&self, o: Self::Outcome) -> Decision;
    /// Whether every window of the bucket is full at `now` (it then carries nothing).
    fn is_full(&self, b: &Self::Bucket, now: u64) -> bool;
    /// Whole tokens every window has at `now`.
    fn remaining(&self, b: &Self::Bucket, now: u64) -> u64;
    fn refill(&self, b: &Self::Bucket);
    /// The smallest capacity: the largest cost that can ever be granted.
    fn burst(&self) -> u64;
    /// How long a bucket stays full before automatic reclamation may remove its key.
    fn idle_grace(&self) -> u64;
}

impl Policy for Gcra {
    type Bucket = Bucket;
    type Outcome = Outcome;

    fn fresh(&self) -> Bucket {
        Bucket::new(0)
    }
    #[allow(clippy::inline_always)] // measured: see `Bucket::take`
    #[inline(always)]
    fn take(&self, b: &Bucket, cost: u64, now: impl FnMut() -> u64) -> Outcome {
        b.take(self, cost, now)
    }
    #[inline]
    fn allowed(o: &Outcome) -> bool {
        o.allowed
    }
    fn decision(&self, o: Outcome) -> Decision {
        Gcra::decision(self, o)
    }
    fn is_full(&self, b: &Bucket, now: u64) -> bool {
        b.tat() <= now
    }
    fn remaining(&self, b: &Bucket, now: u64) -> u64 {
        Gcra::remaining(self, b.tat(), now)
    }
    fn refill(&self, b: &Bucket) {
        b.refill();
    }
    fn burst(&self) -> u64 {
        self.burst
    }
    fn idle_grace(&self) -> u64 {
        Gcra::idle_grace(self)
    }
}

/// Several GCRA windows on every key (2..=[`MAX_LIMITS`], in the order given): a request
/// is granted only if every window allows it, and then it is taken from every window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    windows: Box<[Gcra]>,
    /// The smallest burst (a larger cost could never be granted).
    burst: u64,
}

impl Windows {
    /// `None` for fewer than two windows (one window is a plain [`Gcra`]) or more than
    /// [`MAX_LIMITS`].
    pub fn new(windows: Vec<Gcra>) -> Option<Self> {
        if !(2..=MAX_LIMITS).contains(&windows.len()) {
            return None;
        }
        let burst = windows.iter().map(Gcra::burst).min()?;
        Some(Self {
            windows: windows.into(),
            burst,
        })
    }

    pub fn windows(&self) -> &[Gcra] {
        &self.windows
    }

    /// The decision for `cost` tokens at `now` on every window given their `tats`, and
    /// whether it was granted; when granted, `tats` hold the new values. All or nothing:
    /// a refusal leaves `tats` as they were. `cost` must be at most every burst.
    ///
    /// The combined decision is what one bucket per window would report together:
    /// `remaining` the fewest whole tokens any window has after it, `retry_after` the
    /// longest wait any window needs for `cost` (window `i` allows `cost` after
    /// `max(0, max(tat_i, now) + cost * T_i - (now + tau_i))`, and once it does it keeps
    /// allowing it while nothing is granted), `reset_after` the longest until a window is
    /// full.
    pub fn decide(&self, tats: &mut [u64], now: u64, cost: u64) -> Decision {
        let allowed = self
            .windows
            .iter()
            .zip(tats.iter())
            .all(|(g, &t)| g.admit(t, now, cost).is_some());
        let mut d = Decision {
            allowed,
            remaining: u64::MAX,
            retry_after: 0,
            reset_after: 0,
        };
        for (g, tat) in self.windows.iter().zip(tats.iter_mut()) {
            let base = (*tat).max(now);
            let new_tat = base.saturating_add(cost.saturating_mul(g.interval));
            let limit = now.saturating_add(g.tau);
            // As `Gcra::decide`, per window; saturating where a window that is not the
            // refusing one has nothing to report.
            let (left, reset) = if allowed {
                *tat = new_tat;
                (limit.saturating_sub(new_tat), new_tat - now)
            } else {
                d.retry_after = d.retry_after.max(new_tat.saturating_sub(limit));
                (limit.saturating_sub(base), base - now)
            };
            d.remaining = d.remaining.min(left / g.interval);
            d.reset_after = d.reset_after.max(reset);
        }
        d
    }
}

/// One key's state under several windows: each window's `tat`, behind a lock held only
/// for the arithmetic of one decision (no user code, no wait, no allocation), so a grant
/// is taken from every window or from none and no window ever over-admits. The lock is
/// per key: keys never contend with each other.
pub struct MultiBucket(KeyLock<Box<[u64]>>);

impl fmt::Debug for MultiBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MultiBucket")
            .field(&self.0.lock().to_vec())
            .finish()
    }
}

impl MultiBucket {
    pub fn new(windows: usize) -> Self {
        Self(KeyLock::new(vec![0; windows].into()))
    }

    /// Every window's `tat`.
    pub fn tats(&self) -> Vec<u64> {
        self.0.lock().to_vec()
    }
}

impl Policy for Windows {
    type Bucket = MultiBucket;
    type Outcome = Decision;

    fn fresh(&self) -> MultiBucket {
        MultiBucket::new(self.windows.len())
    }
    /// The clock is read under the lock, so the decision is exact for that instant: its
    /// linearisation point.
    fn take(&self, b: &MultiBucket, cost: u64, mut now: impl FnMut() -> u64) -> Decision {
        let mut tats = b.0.lock();
        self.decide(&mut tats, now(), cost)
    }
    fn allowed(o: &Decision) -> bool {
        o.allowed
    }
    fn decision(&self, o: Decision) -> Decision {
        o
    }
    fn is_full(&self, b: &MultiBucket, now: u64) -> bool {
        b.0.lock().iter().all(|&t| t <= now)
    }
    fn remaining(&self, b: &MultiBucket, now: u64) -> u64 {
        let tats = b.0.lock();
        self.windows
            .iter()
            .zip(tats.iter())
            .map(|(g, &t)| g.remaining(t, now))
            .min()
            .unwrap_or(0)
    }
    fn refill(&self, b: &MultiBucket) {
        b.0.lock().fill(0);
    }
    fn burst(&self) -> u64 {
        self.burst
    }
    fn idle_grace(&self) -> u64 {
        self.windows.iter().map(Gcra::idle_grace).max().unwrap_or(0)
    }
}

// ---- limit specs -------------------------------------------------------------------------

/// One limit of a spec: `amount` requests per `per_secs` seconds (the burst is the
/// amount, as in the `limits` library).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpecLimit {
    pub amount: u64,
    pub per_secs: u64,
}

/// Why a spec was refused. The text is the Python message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    Empty,
    TooMany(usize),
    /// An item that is not `<amount>/<unit>` or `<amount> per <unit>`.
    Syntax(String),
    /// The amount or the unit's multiplier is not a whole number >= 1.
    Amount(String, String),
    Unit(String, String),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "spec holds no limit"),
            Self::TooMany(n) => write!(f, "spec holds {n} limits; at most {MAX_LIMITS}"),
            Self::Syntax(item) => write!(
                f,
                "spec item '{item}' is not '<amount>/<unit>' or '<amount> per <unit>' \
                 (e.g. '10/second', '100 per 5 minutes')"
            ),
            Self::Amount(item, what) => {
                write!(f, "spec item '{item}': '{what}' is not a whole number >= 1")
            }
            Self::Unit(item, unit) => write!(
                f,
                "spec item '{item}': unknown unit '{unit}' (second, minute, hour or day)"
            ),
        }
    }
}

impl std::error::Error for SpecError {}

/// A whole number >= 1 in ASCII digits (no sign, no fraction), below 2^53.
fn spec_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|&n| (1..1 << 53).contains(&n))
}

/// Parses one or more limits in the `limits` library's notation, separated by `;` or
/// `,`: `"10/second"`, `"10 per second"`, `"100/5 minutes"`, `"1000 per day"`. Units are
/// second, minute, hour and day, singular or plural, in any case; whitespace around the
/// parts is ignored.
pub fn parse_spec(spec: &str) -> Result<Vec<SpecLimit>, SpecError> {
    let items: Vec<&str> = spec.split([';', ',']).map(str::trim).collect();
    if items.iter().all(|i| i.is_empty()) {
        return Err(SpecError::Empty);
    }
    let mut out = Vec::new();
    for item in items {
        // Empty items (a trailing separator) are padding.
        if item.is_empty() {
            continue;
        }
        out.push(parse_item(item)?);
    }
    if out.len() > MAX_LIMITS {
        return Err(SpecError::TooMany(out.len()));
    }
    Ok(out)
}

fn parse_item(item: &str) -> Result<SpecLimit, SpecError> {
    let syntax = || SpecError::Syntax(item.to_owned());
    let lower = item.to_ascii_lowercase();
    let (amount, rest) = if let Some((a, r)) = lower.split_once('/') {
        (a.trim(), r.trim())
    } else {
        // "<amount> per <unit>": "per" as a word of its own.
        let mut words = lower.splitn(2, char::is_whitespace);
        let a = words.next().unwrap_or("");
        let r = words.next().unwrap_or("").trim_start();
        let r = r.strip_prefix("per").ok_or_else(syntax)?;
        if !r.starts_with(char::is_whitespace) {
            return Err(syntax());
        }
        (a.trim(), r.trim())
    };
    if amount.is_empty() || rest.is_empty() {
        return Err(syntax());
    }
    let amount_n =
        spec_number(amount).ok_or_else(|| SpecError::Amount(item.to_owned(), amount.into()))?;
    // "[multiplier] unit", the multiplier optionally glued to the unit ("5minutes").
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (mult, unit) = rest.split_at(digits);
    let unit = unit.trim();
    let mult_n = if mult.is_empty() {
        1
    } else {
        spec_number(mult).ok_or_else(|| SpecError::Amount(item.to_owned(), mult.into()))?
    };
    let secs = match unit.strip_suffix('s').unwrap_or(unit) {
        "second" => 1,
        "minute" => 60,
        "hour" => 3_600,
        "day" => 86_400,
        _ if unit.is_empty() => return Err(syntax()),
        _ => return Err(SpecError::Unit(item.to_owned(), unit.to_owned())),
    };
    Ok(SpecLimit {
        amount: amount_n,
        // Below 2^53 * 86400 < 2^70: checked, an overflow is refused as the multiplier.
        per_secs: mult_n
            .checked_mul(secs)
            .ok_or_else(|| SpecError::Amount(item.to_owned(), mult.into()))?,
    })
}

// ---- keys --------------------------------------------------------------------------------

/// A stored key and its hash (computed once, by the caller's hashing scheme).
#[derive(Debug, Clone)]
pub struct Key {
    hash: u64,
    kind: KeyKind,
}

/// What a stored key is: a native value, or the id of an opaque key object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    None,
    Int(i64),
    /// An integer outside i64, by a canonical text (the binding uses hexadecimal).
    BigInt(Box<str>),
    Str(Box<str>),
    Bytes(Box<[u8]>),
    Tuple(Box<[KeyKind]>),
    /// An opaque key: its object is in the limiter's side table under this id.
    Opaque(u64),
}

/// A caller's key borrowed for a lookup: a native value (made into a [`Key`] only on
/// insertion), or `Opaque`: a key found through the caller's [`Resolve`] by its hash alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef<'a> {
    None,
    Int(i64),
    BigInt(String),
    Str(&'a str),
    Bytes(&'a [u8]),
    Tuple(Vec<KeyRef<'a>>),
    /// Top level only (a tuple holding an opaque item is opaque as a whole).
    Opaque,
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
            Self::Opaque => h.write_u8(6),
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
            // Never asked (an opaque key is stored under a fresh id); an id that is never
            // issued would match no query either way.
            Self::Opaque => KeyKind::Opaque(u64::MAX),
        }
    }

    fn matches(&self, k: &KeyKind) -> bool {
        match (self, k) {
            (Self::None, KeyKind::None) => true,
            (Self::Int(a), KeyKind::Int(b)) => a == b,
            (Self::BigInt(a), KeyKind::BigInt(b)) => a.as_str() == &**b,
            (Self::Str(a), KeyKind::Str(b)) => bytes_eq(a.as_bytes(), b.as_bytes()),
            (Self::Bytes(a), KeyKind::Bytes(b)) => bytes_eq(a, b),
            (Self::Tuple(a), KeyKind::Tuple(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.matches(y))
            }
            _ => false,
        }
    }
}

/// `a == b`, without a call to `memcmp` for the short keys a limiter usually has (up to
/// 16 bytes: two overlapping word loads from each side).
#[inline]
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    #[inline]
    fn word<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
        s[at..at + N].try_into().unwrap_or([0; N])
    }
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        8..=16 => word::<8>(a, 0) == word::<8>(b, 0) && word::<8>(a, n - 8) == word::<8>(b, n - 8),
        _ => a == b,
    }
}

/// The process-wide hasher for [`Query::new`] (seeded once per process).
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

/// Python's `hash()` of an int that fits in an i64, as CPython computes it (its
/// `sys.hash_info`): the value modulo the Mersenne prime `2^61 - 1` (`2^31 - 1` where a
/// hash has 32 bits), keeping the sign; -1 is reserved for errors, so it becomes -2. Equal
/// to `hash(v)`, also for `float(v)` and the bools, which is what lets a key the host
/// compares itself find the bucket of an equal native int.
#[inline]
pub fn int_hash(v: i64) -> isize {
    const BITS: u32 = if isize::BITS == 64 { 61 } else { 31 };
    const MODULUS: u64 = (1 << BITS) - 1;
    // |v| % MODULUS < MODULUS fits an isize, so the cast and the negation are exact.
    let m = (v.unsigned_abs() % MODULUS) as isize;
    let h = if v < 0 { -m } else { m };
    if h == -1 {
        -2
    } else {
        h
    }
}

/// A borrowed native key with its hash: what native lookups use.
#[derive(Debug)]
pub struct Query<'a> {
    hash: u64,
    kind: KeyRef<'a>,
}

impl<'a> Query<'a> {
    /// A query hashed structurally (for Rust callers; see [`Query::with_hash`]).
    pub fn new(kind: KeyRef<'a>) -> Self {
        Self {
            hash: key_hasher().hash_one(&kind),
            kind,
        }
    }

    /// A query whose hash the caller computed. All the keys used on one limiter, native
    /// and opaque, must be hashed by one scheme that gives equal keys equal hashes (the
    /// binding uses Python's `hash()`, mixed; [`Query::new`] hashes structurally).
    #[inline]
    pub fn with_hash(kind: KeyRef<'a>, hash: u64) -> Self {
        Self { hash, kind }
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// An opaque key with this (caller-computed) hash.
    pub fn opaque(hash: u64) -> Self {
        Self {
            hash,
            kind: KeyRef::Opaque,
        }
    }

    pub fn is_opaque(&self) -> bool {
        matches!(self.kind, KeyRef::Opaque)
    }

    /// The owned key, for insertion.
    pub fn to_key(&self) -> Key {
        Key {
            hash: self.hash,
            kind: self.kind.to_kind(),
        }
    }
}

impl Key {
    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn kind(&self) -> &KeyKind {
        &self.kind
    }
}

/// A borrowed [`Query`] is looked up in `ReadMap<Key, _>` as the stored key it equals
/// (hashbrown's `Equivalent`): no `Key` is built (no allocation on the hit path) and the
/// table's hashing and comparisons are direct calls. Both hash as their precomputed `u64`.
impl Hash for Query<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.hash);
    }
}

impl hashbrown::Equivalent<Key> for Query<'_> {
    #[inline]
    fn equivalent(&self, stored: &Key) -> bool {
        self.hash == stored.hash && self.kind.matches(&stored.kind)
    }
}

/// A lookup that matches nothing and collects every stored key with its hash (only the
/// opaque ones when `opaque_only`): the table offers each of them to `offer`, since all
/// of them lie on the hash's probe sequence. Used under the shard's read lock; collecting
/// is plain Rust (clones of `Key`).
pub struct Probe {
    hash: u64,
    opaque_only: bool,
    found: RefCell<Vec<Key>>,
}

/// What a [`Probe`] is looked up as (a trait object: a probe and a stored key meet in
/// one lookup type, which the map's code for a [`Query`], the fast path, never sees).
pub trait Collect {
    fn hash64(&self) -> u64;
    /// False always for a probe (it collects instead); equality for a stored key.
    fn offer(&self, stored: &Key) -> bool;
    fn as_key(&self) -> Option<&Key>;
}

impl Collect for Probe {
    fn hash64(&self) -> u64 {
        self.hash
    }
    fn offer(&self, stored: &Key) -> bool {
        if stored.hash == self.hash
            && (!self.opaque_only || matches!(stored.kind, KeyKind::Opaque(_)))
        {
            self.found.borrow_mut().push(stored.clone());
        }
        false
    }
    fn as_key(&self) -> Option<&Key> {
        None
    }
}

impl Collect for Key {
    fn hash64(&self) -> u64 {
        self.hash
    }
    fn offer(&self, stored: &Key) -> bool {
        self == stored
    }
    fn as_key(&self) -> Option<&Key> {
        Some(self)
    }
}

impl Hash for dyn Collect + '_ {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.hash64());
    }
}

impl PartialEq for dyn Collect + '_ {
    fn eq(&self, other: &Self) -> bool {
        match (self.as_key(), other.as_key()) {
            (_, Some(k)) => self.offer(k),
            (Some(k), None) => other.offer(k),
            (None, None) => false,
        }
    }
}

impl Eq for dyn Collect + '_ {}

impl<'a> std::borrow::Borrow<dyn Collect + 'a> for Key {
    fn borrow(&self) -> &(dyn Collect + 'a) {
        self
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

/// How the caller's key is compared with stored keys, and how its object is stored.
/// `P` is the caller's key object (a Python object in the binding).
pub trait Resolve<P> {
    type Error;
    /// Is the stored native key equal to the caller's key? Runs with no lock held; may
    /// run user code and fail. Asked only for opaque queries.
    fn eq_native(&self, stored: &Key) -> Result<bool, Self::Error>;
    /// Is the stored key object equal to the caller's key? Runs with no lock held; may
    /// run user code and fail. `stored` is a new reference ([`Resolve::clone_stored`]),
    /// handed over so that the caller decides where it is dropped: if the key left the
    /// limiter meanwhile, it may be the last one.
    fn eq_stored(&self, stored: P) -> Result<bool, Self::Error>;
    /// Is the stored object the caller's key itself (identity)? Asked under a side-table
    /// lock: must not run user code. `true` settles the comparison without `eq_stored`.
    fn is_same(&self, stored: &P) -> bool;
    /// A new reference to a stored object, taken under a side-table lock: must not run
    /// user code.
    fn clone_stored(&self, stored: &P) -> P;
    /// The caller's key as a stored object, for an opaque insertion (no lock held).
    fn to_stored(&self) -> P;
    /// The error for a lookup that lost [`MAX_ATTEMPTS`] races in a row.
    fn unsettled(&self) -> Self::Error;
}

// ---- the limiter -------------------------------------------------------------------------

/// How the map holds a key's bucket. With the GIL, inline: one thread decides at a time.
/// On a free-threaded build, boxed: a decision's CAS writes its bucket, and inline that
/// line holds other keys' buckets too (entries are 40 bytes), keys other threads decide
/// on, so two threads on distinct keys would still pass lines between their cores. A box
/// comes from the inserting thread's allocator arena, beside that thread's other buckets,
/// and the table's entries are then only read after insertion. Costs a pointer and an
/// allocation per key there. `Held::from` stores a bucket either way.
#[cfg(Py_GIL_DISABLED)]
type Held<B> = Box<B>;
#[cfg(not(Py_GIL_DISABLED))]
type Held<B> = B;

thread_local! {
    /// Decisions this thread made since its last reclaim step (any limiter).
    static TICKS: Cell<u32> = const { Cell::new(0) };
    /// Periodic reclaim steps this thread ran (any limiter).
    static STEPS: Cell<u32> = const { Cell::new(0) };
}

/// A keyed GCRA rate limiter. `P` is the caller's opaque key object; `G` the windows
/// every key has (one [`Gcra`], or several [`Windows`]).
pub struct Limiter<P, G: Policy = Gcra> {
    gcra: G,
    clock: Clock,
    epoch: i64,
    map: ReadMap<Key, Held<G::Bucket>, KeyHashBuilder>,
    /// Reclamation queues: exactly [`QUEUES`]; every index into them (and into `gens`
    /// and `stored`, likewise sized) is taken modulo that length.
    queues: Box<[Mutex<VecDeque<Key>>]>,
    cursor: AtomicUsize,
    /// Insertion generations, [`STRIPES`] of them (see "Keys" in the module docs).
    gens: Box<[StdAtomicU64]>,
    /// Opaque key objects by id, in [`STORED_SHARDS`] shards by id.
    stored: Box<[Mutex<hashbrown::HashMap<u64, P>>]>,
    next_id: StdAtomicU64,
    /// Objects in the side table (so native misses skip the opaque search when 0).
    opaque: AtomicUsize,
    /// Keys in the map, and the most it held since it was last shrunk.
    live: AtomicUsize,
    peak: AtomicUsize,
    /// Made serialized ([`Limiter::serialize`]): decisions are then counted in `ticks`.
    serialized: bool,
    /// A serialized limiter's decisions since its last reclaim step (see [`Limiter::due`]).
    ticks: AtomicU32,
}

impl<P> Limiter<P, Gcra> {
    pub fn gcra(&self) -> &Gcra {
        &self.gcra
    }
}

impl<P, G: Policy> Limiter<P, G> {
    pub fn new(gcra: G, clock: Clock) -> Self {
        let epoch = clock.now_nanos();
        Self {
            gcra,
            clock,
            epoch,
            map: ReadMap::with_hasher(KeyHashBuilder::default()),
            queues: (0..QUEUES).map(|_| Mutex::new(VecDeque::new())).collect(),
            cursor: AtomicUsize::new(0),
            gens: (0..STRIPES).map(|_| StdAtomicU64::new(0)).collect(),
            stored: (0..STORED_SHARDS)
                .map(|_| Mutex::new(hashbrown::HashMap::new()))
                .collect(),
            next_id: StdAtomicU64::new(0),
            opaque: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            serialized: false,
            ticks: AtomicU32::new(0),
        }
    }

    /// Makes the key map serialized: a decision on a tracked key then reads the map
    /// without its read lock while no writer is announced (see "Serialized maps" in
    /// `core::readmap`).
    ///
    /// # Safety
    /// [`ReadMap::serialize`]'s contract, for every call on this limiter: each is made
    /// holding one and the same global lock, except the calls made while an
    /// [`announce_detached`](Self::announce_detached) announcement stands.
    pub unsafe fn serialize(&mut self) {
        // SAFETY: the caller's contract is the map's.
        unsafe { self.map.serialize() };
        self.serialized = true;
    }

    /// Counts a decision; true every [`RECLAIM_EVERY`]-th time (then a reclaim step is
    /// due). A serialized limiter counts its own decisions, with a plain load and store
    /// (the global lock orders them; no thread-local lookup); any other counts the
    /// calling thread's decisions, on every limiter ([`due`]).
    #[inline]
    pub fn due(&self) -> bool {
        if !self.serialized {
            return due();
        }
        let n = self.ticks.load(Ordering::Relaxed) + 1;
        let due = n >= RECLAIM_EVERY;
        self.ticks.store(if due { 0 } else { n }, Ordering::Relaxed);
        due
    }

    /// Announces calls made without the global lock of [`serialize`](Self::serialize)
    /// (made while holding it) until the announcement is dropped.
    pub fn announce_detached(&self) -> Announced<'_> {
        self.map.announce_detached()
    }

    /// The windows every key has.
    pub fn policy(&self) -> &G {
        &self.gcra
    }

    /// Nanoseconds since the epoch (see "Time and overflow"). Every clock reading is in
    /// `0..=MAX_READING` (a ManualClock refuses to pass it; the monotonic clock counts from
    /// process start), so the difference cannot overflow and is at most `MAX_READING`; a
    /// reading before the epoch counts as the epoch.
    #[inline]
    fn now(&self) -> u64 {
        (self.clock.now_nanos() - self.epoch).max(0) as u64
    }

    #[inline]
    fn take(&self, bucket: &G::Bucket, cost: u64) -> G::Outcome {
        self.gcra.take(bucket, cost, || self.now())
    }

    /// The decision for `cost` tokens on a native key that is tracked by value, consuming
    /// them if allowed: the fast path (one read lock, one CAS). `None` when the key is not
    /// tracked by value; then [`Limiter::acquire`] decides. `cost` must have passed
    /// `check_cost`. The caller counts the decision with [`due`] and runs a
    /// [`Limiter::reclaim_step`] when it says so (kept out of here so that the fast path
    /// carries no list of objects to drop).
    #[allow(clippy::inline_always)] // measured: see `Bucket::take`
    #[inline(always)]
    pub fn hit(&self, q: &Query<'_>, cost: u64) -> Option<G::Outcome> {
        // An opaque query matches no stored key by value (`KeyRef::matches`), so the map
        // would say None too; this saves the probe.
        if q.is_opaque() {
            return None;
        }
        if self.serialized {
            // One caller at a time (see `serialize`): no grant can land between this
            // reading and the bucket's load, so reading the clock first is the same
            // decision, and the reading's latency overlaps the table's probe.
            let now = self.now();
            return self
                .map
                .read(q, |bucket| self.gcra.take(bucket, cost, || now));
        }
        self.map.read(q, |bucket| self.take(bucket, cost))
    }

    /// The decision for `cost` tokens on any key, consuming them if allowed (inserting the
    /// key if its class is not tracked). `cost` must have passed `check_cost`. Counts the
    /// decision and runs the reclaim steps due; objects of reclaimed keys go to `grave`,
    /// for the caller to drop (no lock is held on return).
    pub fn acquire<R: Resolve<P>>(
        &self,
        key: &Query<'_>,
        r: &R,
        cost: u64,
        grave: &mut Vec<P>,
    ) -> Result<G::Outcome, R::Error> {
        let stripe = self.stripe(key.hash);
        let mut known = Vec::new();
        for _ in 0..MAX_ATTEMPTS {
            let g0 = stripe.load(Ordering::Acquire);
            if !key.is_opaque() {
                if let Some(o) = self.map.read(key, |b| self.take(b, cost)) {
                    self.tick(grave);
                    return Ok(o);
                }
            }
            if let Some(found) = self.resolve(key, r, &mut known)? {
                if let Some(o) = self.map.read(&found, |b| self.take(b, cost)) {
                    self.tick(grave);
                    return Ok(o);
                }
                // Reclaimed since it was found (so it was full): look again.
                continue;
            }
            let (stored, id) = if key.is_opaque() {
                let id = self.store(r.to_stored());
                let k = Key {
                    hash: key.hash,
                    kind: KeyKind::Opaque(id),
                };
                (k, Some(id))
            } else {
                (key.to_key(), None)
            };
            let done = self.insert(stored, stripe, g0, cost, grave);
            if let (Some(id), false) = (id, matches!(done, Some((_, true)))) {
                // Lost the race, or (unreachable) not stored: the object leaves again.
                self.unstore(id, grave);
            }
            if let Some((o, _)) = done {
                return Ok(o);
            }
        }
        Err(r.unsettled())
    }

    /// The stored key of the caller's class among the keys with its hash, compared outside
    /// every lock (answers kept in `known`); `None` if none is equal. A native query's
    /// by-value lookup is the caller's job; here it meets only opaque candidates.
    fn resolve<R: Resolve<P>>(
        &self,
        key: &Query<'_>,
        r: &R,
        known: &mut Vec<(Key, bool)>,
    ) -> Result<Option<Key>, R::Error> {
        let opaque_only = !key.is_opaque();
        if opaque_only && self.opaque.load(Ordering::Acquire) == 0 {
            return Ok(None);
        }
        for c in self.candidates(key.hash, opaque_only) {
            let equal = if let Some(&(_, eq)) = known.iter().find(|(k, _)| *k == c) {
                eq
            } else {
                let eq = match c.kind {
                    KeyKind::Opaque(id) => match self.load_stored(id, r) {
                        Stored::Same => true,
                        Stored::Other(obj) => r.eq_stored(obj)?,
                        // Its map entry was removed before its object: not a candidate.
                        Stored::Gone => continue,
                    },
                    _ => r.eq_native(&c)?,
                };
                known.push((c.clone(), eq));
                eq
            };
            if equal {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// Every stored key with `hash` (opaque ones only if `opaque_only`), collected under
    /// the shard's read lock, which is released on return.
    fn candidates(&self, hash: u64, opaque_only: bool) -> Vec<Key> {
        let probe = Probe {
            hash,
            opaque_only,
            found: RefCell::new(Vec::new()),
        };
        // A Probe never matches, so this is always None.
        let none = self.map.read(&probe as &dyn Collect, |_| ());
        debug_assert!(none.is_none());
        probe.found.into_inner()
    }

    /// Inserts `key` with a fresh bucket that decides `cost`, provided no insertion with a
    /// hash in `stripe` happened since `g0`; `None` if one did (look again). Also `Some`
    /// when the key turned out to be present (only a native key can: an opaque id is
    /// new), deciding on it. The flag says whether `key` went into the map.
    fn insert(
        &self,
        key: Key,
        stripe: &StdAtomicU64,
        g0: u64,
        cost: u64,
        grave: &mut Vec<P>,
    ) -> Option<(G::Outcome, bool)> {
        let (o, queued) = self
            .map
            .write_owned(key, |table, key| match table.entry(key) {
                Entry::Occupied(e) => Some((self.take(e.get(), cost), None)),
                Entry::Vacant(v) => {
                    // Under the shard's write lock: see "Keys" in the module docs.
                    if stripe
                        .compare_exchange(
                            g0,
                            g0.wrapping_add(1),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_err()
                    {
                        return None;
                    }
                    // The step on a fresh bucket that no other thread can see yet.
                    let bucket = self.gcra.fresh();
                    let o = self.take(&bucket, cost);
                    if G::allowed(&o) {
                        let copy = v.key().clone();
                        v.insert(Held::from(bucket));
                        Some((o, Some(copy)))
                    } else {
                        // A fresh bucket refuses only a cost above burst, which callers
                        // rule out; nothing to store either way.
                        Some((o, None))
                    }
                }
            })?;
        let inserted = queued.is_some();
        if let Some(copy) = queued {
            let n = self.live.fetch_add(1, Ordering::Relaxed) + 1;
            self.peak.fetch_max(n, Ordering::Relaxed);
            self.queues[home_queue()].lock().push_back(copy);
            self.periodic_step(grave);
        }
        Some((o, inserted))
    }

    fn stripe(&self, hash: u64) -> &StdAtomicU64 {
        &self.gens[(hash as usize) % STRIPES]
    }

    fn stored_shard(&self, id: u64) -> &Mutex<hashbrown::HashMap<u64, P>> {
        &self.stored[(id as usize) % STORED_SHARDS]
    }

    /// Puts an opaque key object in the side table; returns its new id.
    fn store(&self, obj: P) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let old = self.stored_shard(id).lock().insert(id, obj);
        // Counted before the insertion's generation CAS (see "Keys").
        self.opaque.fetch_add(1, Ordering::AcqRel);
        drop(old); // ids are never reused, so None; dropped after unlocking regardless
        id
    }

    /// Takes an object out of the side table into `grave`.
    fn unstore(&self, id: u64, grave: &mut Vec<P>) {
        let obj = {
            let mut shard = self.stored_shard(id).lock();
            let obj = shard.remove(&id);
            let len = shard.len();
            if shard.capacity() > 64 && len * 4 < shard.capacity() {
                shard.shrink_to(len * 2);
            }
            obj
        };
        if let Some(obj) = obj {
            self.opaque.fetch_sub(1, Ordering::AcqRel);
            grave.push(obj);
        }
    }

    /// An opaque key's object, as seen under its shard's lock: the caller's key itself, or
    /// a new reference to another object (to compare outside the lock), or gone.
    fn load_stored<R: Resolve<P>>(&self, id: u64, r: &R) -> Stored<P> {
        match self.stored_shard(id).lock().get(&id) {
            Some(obj) if r.is_same(obj) => Stored::Same,
            Some(obj) => Stored::Other(r.clone_stored(obj)),
            None => Stored::Gone,
        }
    }

    /// Whole tokens available on `key` now, consuming nothing.
    pub fn peek<R: Resolve<P>>(&self, key: &Query<'_>, r: &R) -> Result<u64, R::Error> {
        self.with_bucket(key, r, |b| self.gcra.remaining(b, self.now()))
            .map(|n| n.unwrap_or(self.gcra.burst()))
    }

    /// Refills `key`'s bucket. The key stays tracked until reclaimed like any idle key.
    pub fn reset<R: Resolve<P>>(&self, key: &Query<'_>, r: &R) -> Result<(), R::Error> {
        self.with_bucket(key, r, |b| self.gcra.refill(b)).map(drop)
    }

    /// Runs `f` on the bucket of `key`'s class if it is tracked.
    fn with_bucket<R: Resolve<P>, T>(
        &self,
        key: &Query<'_>,
        r: &R,
        f: impl Fn(&G::Bucket) -> T,
    ) -> Result<Option<T>, R::Error> {
        if !key.is_opaque() {
            if let Some(t) = self.map.read(key, |b| f(b)) {
                return Ok(Some(t));
            }
        }
        let mut known = Vec::new();
        for _ in 0..MAX_ATTEMPTS {
            match self.resolve(key, r, &mut known)? {
                None => return Ok(None),
                Some(found) => {
                    if let Some(t) = self.map.read(&found, |b| f(b)) {
                        return Ok(Some(t));
                    }
                }
            }
        }
        Err(r.unsettled())
    }

    /// Keys tracked (native and opaque).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Opaque key objects held.
    pub fn stored_len(&self) -> usize {
        self.stored.iter().map(|s| s.lock().len()).sum()
    }

    /// Counts a decision; every `RECLAIM_EVERY`-th one of this thread runs a reclaim step.
    #[inline]
    fn tick(&self, grave: &mut Vec<P>) {
        if self.due() {
            self.periodic_step(grave);
        }
    }

    /// The step a thread runs after an insertion and every [`RECLAIM_EVERY`] decisions
    /// ([`due`]): on its home queue, or on every [`ROUND_ROBIN_EVERY`]-th one the next
    /// queue in round-robin order. Returns how many keys were removed; removed objects go
    /// to `grave`.
    pub fn periodic_step(&self, grave: &mut Vec<P>) -> usize {
        let turn = STEPS
            .try_with(|s| {
                let n = s.get().wrapping_add(1);
                s.set(n);
                n % ROUND_ROBIN_EVERY == 0
            })
            .unwrap_or(true);
        let q = if turn {
            self.next_queue()
        } else {
            home_queue()
        };
        self.reclaim_queue(q, RECLAIM_BUDGET, grave)
    }

    /// Pops up to `budget` keys from the next queue in round-robin order and removes
    /// those whose bucket has been full for the grace period; returns how many were
    /// removed. Removed objects go to `grave`.
    pub fn reclaim_step(&self, budget: usize, grave: &mut Vec<P>) -> usize {
        self.reclaim_queue(self.next_queue(), budget, grave)
    }

    fn next_queue(&self) -> usize {
        self.cursor.fetch_add(1, Ordering::Relaxed) % QUEUES
    }

    /// [`Limiter::reclaim_step`] on queue `q`.
    fn reclaim_queue(&self, q: usize, budget: usize, grave: &mut Vec<P>) -> usize {
        let mut popped: Vec<Key> = Vec::with_capacity(budget);
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
        self.settle(q, popped, horizon, grave)
    }

    /// Removes every key whose bucket is full now; returns how many. Removed objects go
    /// to `grave`.
    pub fn sweep(&self, grave: &mut Vec<P>) -> usize {
        let mut removed = 0;
        for q in 0..QUEUES {
            let keys: Vec<Key> = std::mem::take(&mut *self.queues[q].lock()).into();
            if !keys.is_empty() {
                removed += self.settle(q, keys, self.now(), grave);
            }
        }
        removed
    }

    /// Removes the keys among `keys` (taken from queue `q`) whose bucket was full at
    /// `now` (`tat <= now`); pushes the others back to `q`. No map guard is held while the
    /// queue is locked.
    fn settle(&self, q: usize, keys: Vec<Key>, now: u64, grave: &mut Vec<P>) -> usize {
        let mut removed = 0;
        let mut keep: Vec<Key> = Vec::new();
        for k in keys {
            // None is unreachable while the one-entry-per-key invariant holds (or after a
            // `clear`); dropping the entry is the safe answer either way.
            let Some(full) = self.map.read(&k, |b| self.gcra.is_full(b, now)) else {
                continue;
            };
            if full {
                // Re-checked under the write lock: no CAS can run on the bucket meanwhile.
                if let Some((gone, _)) = self.map.remove_if(&k, |_, b| self.gcra.is_full(b, now)) {
                    // Saturating: a concurrent `clear` may have zeroed the count.
                    let _ = self
                        .live
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                            Some(n.saturating_sub(1))
                        });
                    if let KeyKind::Opaque(id) = gone.kind {
                        self.unstore(id, grave);
                    }
                    removed += 1;
                    continue;
                }
            }
            keep.push(k);
        }
        {
            let mut queue = self.queues[q].lock();
            queue.extend(keep);
            let len = queue.len();
            if queue.capacity() > 64 && len * 4 < queue.capacity() {
                queue.shrink_to(len * 2);
            }
        }
        if removed > 0 {
            self.maybe_shrink();
        }
        removed
    }

    /// Shrinks the map once it holds under a quarter of its peak (amortised: the peak's
    /// worth of removals paid for it). No map guard may be held by the caller.
    fn maybe_shrink(&self) {
        let peak = self.peak.load(Ordering::Relaxed);
        let live = self.live.load(Ordering::Relaxed);
        if peak >= SHRINK_MIN
            && live < peak / 4
            && self
                .peak
                .compare_exchange(peak, live, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.map.shrink_to_fit();
        }
    }

    /// Forgets every key; the objects go to `grave` (for the garbage collector's clear).
    pub fn clear(&self, grave: &mut Vec<P>) {
        self.map.clear();
        for q in &*self.queues {
            *q.lock() = VecDeque::new();
        }
        for s in &*self.stored {
            let objs = std::mem::take(&mut *s.lock());
            grave.extend(objs.into_values());
        }
        self.opaque.store(0, Ordering::Release);
        self.live.store(0, Ordering::Relaxed);
        self.peak.store(0, Ordering::Relaxed);
    }

    /// Calls `f` on every stored key object whose side-table shard is free right now
    /// (a held shard is skipped, never waited for: the garbage collector's traverse).
    pub fn try_for_each_stored<E>(&self, mut f: impl FnMut(&P) -> Result<(), E>) -> Result<(), E> {
        for s in &*self.stored {
            if let Some(g) = s.try_lock() {
                for obj in g.values() {
                    f(obj)?;
                }
            }
        }
        Ok(())
    }

    /// Keys currently queued for reclamation (equals `len()` when no step is running).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queues.iter().map(|q| q.lock().len()).sum()
    }
}

/// What [`Limiter::load_stored`] found.
enum Stored<P> {
    Same,
    Other(P),
    Gone,
}

/// Counts a decision of this thread; true every `RECLAIM_EVERY`-th time (then a reclaim
/// step is due).
#[inline]
pub fn due() -> bool {
    TICKS.with(|t| {
        let n = t.get() + 1;
        if n >= RECLAIM_EVERY {
            t.set(0);
            true
        } else {
            t.set(n);
            false
        }
    })
}

/// The calling thread's home queue: its number ([`counter::thread_hash`]) modulo
/// [`QUEUES`].
fn home_queue() -> usize {
    ((counter::thread_hash() >> 60) as usize) % QUEUES
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;
    use crate::core::clock::{ManualClock, MAX_READING};

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    /// Opaque key objects in these tests: a name.
    type L = Limiter<String>;

    #[test]
    fn bytes_eq_agrees_with_slice_equality_at_every_length() {
        let base: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37)).collect();
        for n in 0..=base.len() {
            let a = &base[..n];
            assert!(bytes_eq(a, a));
            for i in 0..n {
                let mut b = a.to_vec();
                b[i] ^= 1;
                assert!(!bytes_eq(a, &b), "length {n}, byte {i}");
            }
            if n > 0 {
                assert!(!bytes_eq(a, &a[..n - 1]));
            }
        }
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn int_hash_is_pythons() {
        // `hash(v)` on a 64-bit CPython, for each `v`.
        let cases: [(i64, isize); 10] = [
            (0, 0),
            (1, 1),
            (-1, -2),
            (-2, -2),
            (12_345, 12_345),
            ((1 << 61) - 1, 0),
            (1 << 61, 1),
            (-(1 << 61), -2),
            (i64::MAX, 3),
            (i64::MIN, -4),
        ];
        for (v, h) in cases {
            assert_eq!(int_hash(v), h, "hash({v})");
        }
    }

    fn manual() -> (Arc<ManualClock>, Clock) {
        let m = Arc::new(ManualClock::new(0));
        (m.clone(), Clock::Manual(m))
    }

    fn limiter(rate: f64, burst: Option<u64>) -> (Arc<ManualClock>, L) {
        let (m, c) = manual();
        (m, Limiter::new(Gcra::new(rate, SEC, burst).unwrap(), c))
    }

    fn int(k: u64) -> Query<'static> {
        Query::new(KeyRef::Int(k as i64))
    }

    /// The resolver of a native int query: equal to the opaque keys that equal that int
    /// (stored as `#<int>`, see [`Named`]).
    struct IntCaller(i64);

    impl Resolve<String> for IntCaller {
        type Error = String;
        fn eq_native(&self, _: &Key) -> Result<bool, String> {
            unreachable!("native queries meet only opaque candidates")
        }
        fn eq_stored(&self, stored: String) -> Result<bool, String> {
            Ok(stored == format!("#{}", self.0))
        }
        fn is_same(&self, _: &String) -> bool {
            false
        }
        fn clone_stored(&self, s: &String) -> String {
            s.clone()
        }
        fn to_stored(&self) -> String {
            unreachable!("native keys are not stored as objects")
        }
        fn unsettled(&self) -> String {
            "unsettled".into()
        }
    }

    /// An opaque test key. Keys with `int: Some(i)` equal the native int `i` and each
    /// other (stored as `#<i>`, hashed as `i`); others equal the stored keys with their
    /// name and hash by `group` (default: the name's length, so names collide freely).
    struct Named<'a> {
        name: &'a str,
        group: u64,
        int: Option<i64>,
        raises: bool,
        on_eq: &'a (dyn Fn() + Sync),
    }

    impl<'a> Named<'a> {
        fn new(name: &'a str) -> Self {
            Self {
                name,
                group: name.len() as u64,
                int: None,
                raises: false,
                on_eq: &|| {},
            }
        }

        fn int(name: &'a str, i: i64) -> Self {
            Self {
                int: Some(i),
                ..Self::new(name)
            }
        }

        fn hash(&self) -> u64 {
            match self.int {
                Some(i) => int(i as u64).hash(),
                None => mix(self.group),
            }
        }
    }

    impl Resolve<String> for Named<'_> {
        type Error = String;
        fn eq_native(&self, stored: &Key) -> Result<bool, String> {
            (self.on_eq)();
            Ok(matches!(stored.kind(), KeyKind::Int(i) if Some(*i) == self.int))
        }
        fn eq_stored(&self, stored: String) -> Result<bool, String> {
            (self.on_eq)();
            if self.raises {
                return Err("eq raised".into());
            }
            Ok(stored == self.to_stored())
        }
        fn is_same(&self, _: &String) -> bool {
            false // strings have no identity here: always compared
        }
        fn clone_stored(&self, s: &String) -> String {
            s.clone()
        }
        fn to_stored(&self) -> String {
            match self.int {
                Some(i) => format!("#{i}"),
                None => self.name.to_owned(),
            }
        }
        fn unsettled(&self) -> String {
            "unsettled".into()
        }
    }

    fn take_int(l: &L, k: u64, cost: u64) -> Outcome {
        let q = int(k);
        let mut grave = Vec::new();
        match l.hit(&q, cost) {
            Some(o) => {
                if due() {
                    l.periodic_step(&mut grave);
                }
                o
            }
            None => l
                .acquire(&q, &IntCaller(k as i64), cost, &mut grave)
                .unwrap(),
        }
    }

    /// The full decision for one request on an int key.
    fn check(l: &L, k: u64, cost: u64) -> Decision {
        l.gcra().decision(take_int(l, k, cost))
    }

    fn take_named(l: &L, n: &Named<'_>, cost: u64) -> Result<Outcome, String> {
        l.acquire(&Query::opaque(n.hash()), n, cost, &mut Vec::new())
    }

    fn peek_int(l: &L, k: u64) -> u64 {
        l.peek(&int(k), &IntCaller(k as i64)).unwrap()
    }

    fn sweep(l: &L) -> usize {
        l.sweep(&mut Vec::new())
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
        assert!(take_int(&l, 1, 1).allowed);
        assert!(!take_int(&l, 1, 1).allowed);
        assert_eq!(peek_int(&l, 1), 0);
        assert_eq!(peek_int(&l, 2), 10);
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
            Gcra::new(f64::INFINITY, SEC, None).unwrap_err(),
            RateError::RateNotFinite
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
        // A subnormal rate makes the interval +inf: out of range, not a panic.
        assert_eq!(
            Gcra::new(f64::MIN_POSITIVE / 4.0, SEC, Some(1)).unwrap_err(),
            RateError::WindowTooLarge("rate")
        );
        assert_eq!(
            Gcra::new(1e-300, u64::MAX, Some(1)).unwrap_err(),
            RateError::WindowTooLarge("rate")
        );
        // Extremes that fit: the largest whole rate, the longest period.
        assert_eq!(
            Gcra::new(9.0e15, u64::MAX, Some(1)).unwrap().interval(),
            2050
        );
        assert!(Gcra::new(1.0, MAX_WINDOW, Some(1)).is_ok());
        assert!(Gcra::new(1.0, MAX_WINDOW + 1, Some(1)).is_err());
        let g = Gcra::new(10.0, SEC, None).unwrap();
        assert_eq!(g.check_cost(0), Err(RateError::CostNotPositive));
        assert!(g
            .check_cost(11)
            .unwrap_err()
            .to_string()
            .starts_with("cost must be <= burst (10)"));
        assert_eq!(g.check_cost(10), Ok(()));
        assert!(g.check_cost(u64::MAX).is_err());
    }

    #[test]
    fn cost_and_burst() {
        let (clock, l) = limiter(1.0, Some(5));
        assert!(take_int(&l, 7, 5).allowed);
        let d = check(&l, 7, 2);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, 2 * SEC);
        assert_eq!(d.reset_after, 5 * SEC);
        clock.advance((2 * SEC) as i64).unwrap();
        let d = check(&l, 7, 2);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    /// Guards against overflow at the ends of time: a limiter whose epoch or clock is at
    /// the largest reading (2^62 ns), with the largest window (2^62 ns), decides exactly
    /// and never panics (these tests run with overflow checks on).
    #[test]
    fn the_largest_times_and_windows_never_overflow() {
        let most = MAX_READING as u64;
        // A window of exactly 2^62 ns: one token per 2^61 ns, burst 2.
        let g = Gcra::new(2.0, MAX_WINDOW, Some(2)).unwrap();
        assert_eq!(g.tau, MAX_WINDOW);
        for start in [0, MAX_READING - 1, MAX_READING] {
            let m = Arc::new(ManualClock::new(start));
            let l: L = Limiter::new(g, Clock::Manual(m.clone()));
            assert!(take_int(&l, 1, 2).allowed);
            let d = l.gcra().decision(take_int(&l, 1, 1));
            assert!(!d.allowed);
            assert_eq!(d.retry_after, MAX_WINDOW / 2);
            assert_eq!(d.reset_after, MAX_WINDOW);
            // To the end of the clock: as far past the epoch as the clock goes.
            m.set(MAX_READING).unwrap();
            let now = (MAX_READING - start) as u64;
            let d = l.gcra().decision(take_int(&l, 1, 2));
            assert_eq!(d.allowed, now >= MAX_WINDOW, "start {start}");
            assert!(d.reset_after <= 2 * MAX_WINDOW);
            assert!(peek_int(&l, 1) <= 2);
            sweep(&l);
        }
        // The raw arithmetic at its bounds: tat at 2^63 (granted at now = 2^62 with
        // tau = 2^62), cost * T = tau.
        let (d, t) = g.decide(most + MAX_WINDOW, most, 2);
        assert_eq!((d.allowed, t), (false, None));
        assert_eq!(d.retry_after, MAX_WINDOW);
        assert_eq!(g.admit(most, most, 2), Some(most + MAX_WINDOW));
        assert_eq!(g.remaining(most + MAX_WINDOW, most), 0);
        // Beyond the bounds (unreachable through the limiter) it saturates to a refusal.
        assert_eq!(g.admit(u64::MAX, most, 2), None);
        assert_eq!(g.admit(u64::MAX - 1, u64::MAX, 2), Some(u64::MAX));
        let (d, _) = g.decide(u64::MAX, 0, 2);
        assert!(!d.allowed);
        assert_eq!(g.remaining(u64::MAX, u64::MAX), 0);
    }

    /// A clock reading before the epoch counts as the epoch (no wrap, no panic).
    #[test]
    fn a_reading_before_the_epoch_counts_as_the_epoch() {
        let (_, l) = limiter(10.0, None);
        let l = Limiter::<String> {
            epoch: MAX_READING,
            ..l
        };
        assert_eq!(l.now(), 0);
        assert!(take_int(&l, 1, 10).allowed);
        assert_eq!(peek_int(&l, 1), 0);
        let d = check(&l, 1, 1);
        assert_eq!(
            (d.allowed, d.retry_after, d.reset_after),
            (false, 100 * MS, SEC)
        );
    }

    #[test]
    fn idle_keys_are_reclaimed_with_bounded_work() {
        let (clock, l) = limiter(10.0, None);
        for k in 0..5_000u64 {
            assert!(take_int(&l, k, 1).allowed);
        }
        assert_eq!(l.len(), 5_000);
        assert_eq!(l.queued(), 5_000);
        clock.advance((100 * SEC) as i64).unwrap();
        for k in 5_000..10_000u64 {
            assert!(take_int(&l, k, 1).allowed);
        }
        // Each insertion examined up to RECLAIM_BUDGET queued keys: the old ones go first.
        assert!(l.len() < 6_000, "{}", l.len());
        assert_eq!(l.queued(), l.len());
        clock.advance((100 * SEC) as i64).unwrap();
        let n = l.len();
        assert_eq!(sweep(&l), n);
        assert_eq!(l.len(), 0);
        assert_eq!(l.queued(), 0);
    }

    /// Guards against tables keeping their high-water size: after a churn of many keys
    /// that all went idle, the map, queues and side table are shrunk again.
    #[test]
    fn tables_shrink_when_keys_go_idle() {
        let (clock, l) = limiter(10.0, None);
        for k in 0..20_000u64 {
            take_int(&l, k, 1);
        }
        let names: Vec<String> = (0..2_000).map(|i| format!("o{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            let k = Named {
                group: i as u64,
                ..Named::new(n)
            };
            take_named(&l, &k, 1).unwrap();
        }
        let big = l.map.capacity();
        assert!(big >= 22_000);
        clock.advance((100 * SEC) as i64).unwrap();
        let mut grave = Vec::new();
        assert_eq!(l.sweep(&mut grave), 22_000);
        assert_eq!(grave.len(), 2_000);
        assert!(l.map.capacity() < big / 8, "{} of {big}", l.map.capacity());
        assert!(l.queues.iter().all(|q| q.lock().capacity() <= 128));
        assert!(l.stored.iter().all(|s| s.lock().capacity() <= 128));
        assert_eq!((l.len(), l.stored_len()), (0, 0));
    }

    #[test]
    fn sweep_keeps_active_keys_and_reset_refills() {
        let (clock, l) = limiter(10.0, None);
        assert!(take_int(&l, 1, 10).allowed);
        assert!(take_int(&l, 2, 1).allowed);
        clock.advance((500 * MS) as i64).unwrap();
        assert_eq!(sweep(&l), 1); // key 2 is full again, key 1 is not
        assert_eq!(l.len(), 1);
        assert_eq!(peek_int(&l, 1), 5);
        l.reset(&int(1), &IntCaller(1)).unwrap();
        assert_eq!(peek_int(&l, 1), 10);
        assert_eq!(sweep(&l), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn concurrent_grants_are_exact_on_a_frozen_clock() {
        let (clock, l) = limiter(1000.0, Some(1000));
        let l = Arc::new(l);
        let run = |l: &Arc<L>| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let l = l.clone();
                    std::thread::spawn(move || {
                        (0..400).filter(|_| take_int(&l, 0, 1).allowed).count()
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
                    if take_int(&l, k, 1).allowed {
                        granted[k as usize] += 1;
                    }
                    if i % 97 == 0 {
                        sweep(&l);
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
            let stop = Arc::new(AtomicBool::new(false));
            let sweeper = {
                let (l, stop) = (l.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut removed = 0;
                    while !stop.load(Ordering::Relaxed) {
                        removed += sweep(&l);
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
                            granted[k as usize] += u64::from(take_int(&l, k, 1).allowed);
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
        let (_, l) = limiter(2.0, None);
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
            let o = l.acquire(&q, &IntCaller(0), 1, &mut Vec::new());
            assert!(o.unwrap().allowed);
        }
        assert_eq!(l.len(), keys.len());
        for k in &keys {
            let q = Query::new(k.clone());
            assert_eq!(l.peek(&q, &IntCaller(0)).unwrap(), 1, "{k:?}");
            assert!(l.hit(&q, 1).unwrap().allowed);
        }
    }

    #[test]
    fn opaque_keys_are_compared_by_the_caller() {
        let (_, l) = limiter(1.0, Some(2));
        // "ab" and "cd" collide (same length, same hash) but are not equal.
        let ab = Named::new("ab");
        let cd = Named::new("cd");
        assert!(take_named(&l, &ab, 2).unwrap().allowed);
        assert!(!take_named(&l, &ab, 1).unwrap().allowed);
        assert!(take_named(&l, &cd, 1).unwrap().allowed);
        assert_eq!(l.len(), 2);
        assert_eq!(l.stored_len(), 2);
        assert_eq!(l.peek(&Query::opaque(ab.hash()), &ab).unwrap(), 0);
        assert_eq!(l.peek(&Query::opaque(cd.hash()), &cd).unwrap(), 1);
        let ef = Named::new("ef");
        assert_eq!(l.peek(&Query::opaque(ef.hash()), &ef).unwrap(), 2);
        l.reset(&Query::opaque(ab.hash()), &ab).unwrap();
        assert_eq!(l.peek(&Query::opaque(ab.hash()), &ab).unwrap(), 2);
        // An error from the comparison propagates and consumes nothing.
        let bad = Named {
            raises: true,
            ..Named::new("xy")
        };
        assert_eq!(take_named(&l, &bad, 1).unwrap_err(), "eq raised");
        assert_eq!(l.len(), 2);
        assert_eq!(sweep(&l), 1); // "ab" was reset; "cd" is not full
        let mut seen = Vec::new();
        l.try_for_each_stored::<()>(|s| {
            seen.push(s.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["cd"]);
    }

    /// Dict semantics across the two kinds: an opaque key equal to a native one shares
    /// its bucket, whichever came first.
    #[test]
    fn opaque_and_native_equals_share_one_bucket() {
        let (_, l) = limiter(1.0, Some(3));
        assert!(take_int(&l, 7, 1).allowed);
        assert!(take_named(&l, &Named::int("seven", 7), 1).unwrap().allowed);
        assert_eq!(peek_int(&l, 7), 1);
        assert_eq!((l.len(), l.stored_len()), (1, 0));
        // Opaque first: the native key finds it, and so does another equal opaque key.
        let eight = Named::int("eight", 8);
        assert!(take_named(&l, &eight, 2).unwrap().allowed);
        assert!(take_int(&l, 8, 1).allowed);
        assert!(!take_int(&l, 8, 1).allowed);
        assert!(!take_named(&l, &Named::int("huit", 8), 1).unwrap().allowed);
        assert_eq!(peek_int(&l, 8), 0);
        assert_eq!((l.len(), l.stored_len()), (2, 1));
        l.reset(&int(8), &IntCaller(8)).unwrap();
        assert_eq!(l.peek(&Query::opaque(eight.hash()), &eight).unwrap(), 3);
        // A native int with the same hash that the opaque keys do not equal is its own key.
        assert!(take_int(&l, 8, 3).allowed);
    }

    /// Comparisons run with no lock held: a comparison that calls back into the limiter
    /// (decides, resets, sweeps, counts) does not deadlock.
    #[test]
    fn comparisons_may_reenter_the_limiter() {
        let (clock, l) = limiter(1.0, Some(1));
        let l = Arc::new(l);
        let inner = l.clone();
        let on_eq = move || {
            take_int(&inner, 99, 1);
            inner.reset(&int(99), &IntCaller(99)).unwrap();
            sweep(&inner);
            let _ = inner.len();
            let x = Named::new("x");
            take_named(&inner, &x, 1).unwrap();
        };
        let a = Named {
            on_eq: &on_eq,
            ..Named::new("a")
        };
        assert!(take_named(&l, &a, 1).unwrap().allowed);
        // The second decision compares (with "a" itself and with "x"), re-entering.
        assert!(!take_named(&l, &a, 1).unwrap().allowed);
        clock.advance((2 * SEC) as i64).unwrap();
        assert!(take_named(&l, &a, 1).unwrap().allowed);
    }

    /// A comparison that inserts a new key of its own hash every time makes every
    /// insertion lose its race: the lookup gives up with the caller's error.
    #[test]
    fn a_lookup_that_keeps_losing_gives_up() {
        let (_, l) = limiter(1.0, Some(1));
        let l = Arc::new(l);
        let n = std::sync::atomic::AtomicUsize::new(0);
        let inner = l.clone();
        let on_eq = move || {
            let name = format!("z{}", n.fetch_add(1, Ordering::Relaxed));
            // Same group: same hash. Its own comparisons do nothing.
            let z = Named {
                group: 1,
                ..Named::new(&name)
            };
            take_named(&inner, &z, 1).unwrap();
        };
        // First make one candidate exist.
        take_named(
            &l,
            &Named {
                group: 1,
                ..Named::new("a")
            },
            1,
        )
        .unwrap();
        let q = Named {
            group: 1,
            on_eq: &on_eq,
            ..Named::new("q")
        };
        assert_eq!(take_named(&l, &q, 1).unwrap_err(), "unsettled");
        assert_eq!(l.len(), MAX_ATTEMPTS + 1);
    }

    /// Racing insertions of equal native and opaque keys still make one bucket: on a
    /// frozen clock, each round grants exactly the burst across all threads, while a
    /// sweeper removes the full buckets between rounds (forcing fresh insertions).
    #[test]
    fn racing_equal_native_and_opaque_insertions_make_one_bucket() {
        let (clock, l) = limiter(10.0, Some(3));
        let l = Arc::new(l);
        for round in 0..200 {
            let hammers: Vec<_> = (0..4)
                .map(|t| {
                    let l = l.clone();
                    std::thread::spawn(move || {
                        let mut granted = 0;
                        for i in 0..4 {
                            let allowed = if (t + i) % 2 == 0 {
                                take_int(&l, 5, 1).allowed
                            } else {
                                let name = ["five", "cinq"][(t as usize) % 2];
                                take_named(&l, &Named::int(name, 5), 1).unwrap().allowed
                            };
                            granted += u64::from(allowed);
                        }
                        granted
                    })
                })
                .collect();
            let total: u64 = hammers.into_iter().map(|h| h.join().unwrap()).sum();
            assert_eq!(total, 3, "round {round}");
            assert_eq!(l.len(), 1, "round {round}");
            clock.advance((SEC) as i64).unwrap();
            assert_eq!(sweep(&l), 1);
        }
    }

    #[test]
    fn clear_hands_back_every_object() {
        let (_, l) = limiter(1.0, Some(1));
        take_int(&l, 1, 1);
        for n in ["a", "b", "c"] {
            take_named(&l, &Named::new(n), 1).unwrap();
        }
        let mut grave = Vec::new();
        l.clear(&mut grave);
        grave.sort();
        assert_eq!(grave, ["a", "b", "c"]);
        assert_eq!((l.len(), l.stored_len(), l.queued()), (0, 0, 0));
        // Still usable afterwards.
        assert!(take_named(&l, &Named::new("a"), 1).unwrap().allowed);
        assert!(take_int(&l, 1, 1).allowed);
    }

    #[test]
    fn traversal_skips_a_held_shard() {
        let (_, l) = limiter(1.0, Some(1));
        for i in 0..40 {
            take_named(&l, &Named::new(&format!("k{i:02}")), 1).unwrap();
        }
        let held = l.stored[0].lock();
        let mut n = 0;
        l.try_for_each_stored::<()>(|_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 40 - held.len());
        drop(held);
    }
}

#[cfg(test)] // separate from not(loom): clippy sees a plain cfg(test) as test code
#[cfg(not(loom))]
mod multi_tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::clock::ManualClock;

    const SEC: u64 = 1_000_000_000;

    /// The resolver of native queries on limiters without opaque keys.
    struct Plain;

    impl Resolve<String> for Plain {
        type Error = ();
        fn eq_native(&self, _: &Key) -> Result<bool, ()> {
            Ok(false)
        }
        fn eq_stored(&self, _: String) -> Result<bool, ()> {
            Ok(false)
        }
        fn is_same(&self, _: &String) -> bool {
            false
        }
        fn clone_stored(&self, s: &String) -> String {
            s.clone()
        }
        fn to_stored(&self) -> String {
            String::new()
        }
        fn unsettled(&self) {}
    }

    fn windows(spec: &[(f64, u64, Option<u64>)]) -> Windows {
        Windows::new(
            spec.iter()
                .map(|&(r, per, b)| Gcra::new(r, per, b).unwrap())
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn windows_need_two_to_sixteen() {
        let g = Gcra::new(1.0, SEC, None).unwrap();
        assert!(Windows::new(vec![g]).is_none());
        assert!(Windows::new(vec![g; MAX_LIMITS + 1]).is_none());
        assert_eq!(Windows::new(vec![g; MAX_LIMITS]).unwrap().burst(), 1);
    }

    #[test]
    fn a_grant_takes_from_every_window_and_a_refusal_from_none() {
        // 2 per second, and 3 per 10 s.
        let w = windows(&[(2.0, SEC, None), (3.0, 10 * SEC, None)]);
        let mut tats = [0u64, 0];
        assert!(w.decide(&mut tats, 0, 1).allowed);
        assert!(w.decide(&mut tats, 0, 1).allowed);
        assert_eq!(tats, [SEC, 6_666_666_668]);
        let d = w.decide(&mut tats, 0, 1);
        assert_eq!(tats, [SEC, 6_666_666_668]);
        assert_eq!(
            d,
            Decision {
                allowed: false,
                remaining: 0,
                retry_after: SEC / 2,
                reset_after: 6_666_666_668,
            }
        );
        let d = w.decide(&mut tats, SEC, 1);
        assert_eq!((d.allowed, d.remaining), (true, 0));
        // Now the slow window refuses; its wait is the combined one.
        let d = w.decide(&mut tats, SEC, 1);
        assert_eq!(
            (d.allowed, d.retry_after),
            (false, 13_333_333_336 - (SEC + 10_000_000_002))
        );
    }

    #[test]
    fn decisions_match_one_bucket_per_window() {
        // Exhaustive over small states: the combined decision is each window's own
        // decision put together (min remaining, max waits), granted iff all grant.
        let gs = [
            Gcra::new(3.0, SEC, Some(2)).unwrap(),
            Gcra::new(5.0, 7 * SEC, Some(4)).unwrap(),
        ];
        let w = Windows::new(gs.to_vec()).unwrap();
        let step = SEC / 4;
        for t0 in 0..12 {
            for t1 in 0..12 {
                for now in 0..8 {
                    for cost in 1..=2 {
                        let (now, tat) = (now * step, [t0 * step, t1 * 3 * step]);
                        let each: Vec<_> = gs
                            .iter()
                            .zip(tat)
                            .map(|(g, t)| g.decide(t, now, cost))
                            .collect();
                        let mut tats = tat;
                        let d = w.decide(&mut tats, now, cost);
                        let all = each.iter().all(|(d, _)| d.allowed);
                        assert_eq!(d.allowed, all);
                        if all {
                            let news: Vec<u64> = each.iter().map(|(_, n)| n.unwrap()).collect();
                            assert_eq!(tats.to_vec(), news);
                            assert_eq!(
                                d.remaining,
                                each.iter().map(|(d, _)| d.remaining).min().unwrap()
                            );
                            assert_eq!(
                                d.reset_after,
                                each.iter().map(|(d, _)| d.reset_after).max().unwrap()
                            );
                            assert_eq!(d.retry_after, 0);
                        } else {
                            assert_eq!(tats, tat);
                            let before: Vec<u64> = gs
                                .iter()
                                .zip(tat)
                                .map(|(g, t)| g.remaining(t, now))
                                .collect();
                            assert_eq!(d.remaining, *before.iter().min().unwrap());
                            let waits = each.iter().map(|(d, _)| d.retry_after).max().unwrap();
                            assert_eq!(d.retry_after, waits);
                            // Waiting that long lets every window allow the cost.
                            let later = now + d.retry_after;
                            assert!(gs
                                .iter()
                                .zip(tat)
                                .all(|(g, t)| g.admit(t, later, cost).is_some()));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_limiter_with_windows_reclaims_a_key_only_when_every_window_is_full() {
        let m = Arc::new(ManualClock::new(0));
        let w = windows(&[(10.0, SEC, None), (5.0, 100 * SEC, None)]);
        let l: Limiter<String, Windows> = Limiter::new(w, Clock::Manual(m.clone()));
        let q = Query::new(KeyRef::Str("k"));
        let mut grave = Vec::new();
        assert!(l.hit(&q, 1).is_none());
        assert!(l.acquire(&q, &Plain, 5, &mut grave).unwrap().allowed);
        assert!(!l.hit(&q, 1).unwrap().allowed);
        assert_eq!(l.peek(&q, &Plain).unwrap(), 0);
        m.advance(SEC as i64).unwrap();
        assert_eq!(l.peek(&q, &Plain).unwrap(), 0);
        assert_eq!(l.sweep(&mut grave), 0);
        m.advance((99 * SEC) as i64).unwrap();
        assert_eq!(l.peek(&q, &Plain).unwrap(), 5);
        assert_eq!(l.sweep(&mut grave), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn threads_on_one_key_never_over_admit_any_window() {
        let m = Arc::new(ManualClock::new(0));
        let w = windows(&[(5.0, SEC, None), (8.0, 10 * SEC, None)]);
        let l: Arc<Limiter<String, Windows>> = Arc::new(Limiter::new(w, Clock::Manual(m.clone())));
        let q = Query::new(KeyRef::Int(1));
        let mut grave = Vec::new();
        // Inserted first, so every thread takes the fast path.
        assert!(l.acquire(&q, &Plain, 1, &mut grave).unwrap().allowed);
        let round = |l: &Arc<Limiter<String, Windows>>| -> u64 {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let l = l.clone();
                    std::thread::spawn(move || {
                        let q = Query::new(KeyRef::Int(1));
                        (0..100).filter(|_| l.hit(&q, 1).unwrap().allowed).count() as u64
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        };
        assert_eq!(round(&l), 4);
        m.advance(SEC as i64).unwrap();
        assert_eq!(round(&l), 3);
        assert_eq!(l.map.read(&q, |b| l.policy().remaining(b, SEC)).unwrap(), 0);
    }

    #[test]
    fn parse_spec_reads_the_limits_notation() {
        let one = |amount, per_secs| SpecLimit { amount, per_secs };
        assert_eq!(parse_spec("10/second").unwrap(), [one(10, 1)]);
        assert_eq!(parse_spec(" 10 PER Seconds ").unwrap(), [one(10, 1)]);
        assert_eq!(parse_spec("100/5 minutes").unwrap(), [one(100, 300)]);
        assert_eq!(parse_spec("100 per 5minutes").unwrap(), [one(100, 300)]);
        assert_eq!(
            parse_spec("1/hour; 2 per day, 3/2 days").unwrap(),
            [one(1, 3600), one(2, 86_400), one(3, 172_800)]
        );
        assert_eq!(parse_spec("").unwrap_err(), SpecError::Empty);
        assert_eq!(
            parse_spec("10/sec").unwrap_err(),
            SpecError::Unit("10/sec".into(), "sec".into())
        );
        assert_eq!(
            parse_spec("10 per").unwrap_err(),
            SpecError::Syntax("10 per".into())
        );
        assert_eq!(
            parse_spec("1/9007199254740992 days").unwrap_err(),
            SpecError::Amount("1/9007199254740992 days".into(), "9007199254740992".into())
        );
        assert_eq!(
            parse_spec(&["1/second"; 17].join(";")).unwrap_err(),
            SpecError::TooMany(17)
        );
    }
}

/// The GCRA step under every interleaving (`make loom`): threads take tokens from one
/// bucket while another advances the clock. No interleaving over-admits (the grants
/// never exceed what the bucket allows by the latest time a grant read), no grant is
/// lost (the grants form one chain of `tat` values from the initial one to the final
/// one), and every refusal was right for the `tat` and time it read.
#[cfg(test)] // separate from cfg(loom): clippy sees a plain cfg(test) as test code
#[cfg(loom)]
mod loom_models {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;
    use crate::core::clock::ManualClock;

    fn check_history(g: &Gcra, outcomes: &[Outcome], end_tat: u64) {
        let mut grants: Vec<(u64, u64)> = outcomes
            .iter()
            .filter(|o| o.allowed)
            .map(|o| (o.tat, g.admit(o.tat, o.now, o.cost).unwrap()))
            .collect();
        // No over-admission: tokens granted <= burst + (latest grant time) / interval.
        let tokens: u64 = outcomes.iter().filter(|o| o.allowed).map(|o| o.cost).sum();
        let latest = outcomes
            .iter()
            .filter(|o| o.allowed)
            .map(|o| o.now)
            .max()
            .unwrap_or(0);
        assert!(tokens <= g.burst + latest / g.interval, "{outcomes:?}");
        // No lost grant: each grant started from the previous one's tat.
        grants.sort_by_key(|&(_, new)| new);
        let mut tat = 0;
        for &(seen, new) in &grants {
            assert_eq!(seen, tat, "{outcomes:?}");
            tat = new;
        }
        assert_eq!(end_tat, tat, "{outcomes:?}");
        // Refusals saw a real state and were right to refuse.
        for o in outcomes.iter().filter(|o| !o.allowed) {
            assert!(o.tat == 0 || grants.iter().any(|&(_, new)| new == o.tat));
            assert_eq!(g.admit(o.tat, o.now, o.cost), None);
        }
    }

    #[test]
    fn loom_bucket_take_with_a_moving_clock() {
        loom::model(|| {
            // One token per 10 ns, burst 1; the clock moves one interval meanwhile.
            let g = Gcra::new(1.0, 10, Some(1)).unwrap();
            let clock = Arc::new(ManualClock::new(0));
            let bucket = Arc::new(Bucket::new(0));
            let takers: Vec<_> = [1, 1]
                .into_iter()
                .map(|n| {
                    let (clock, bucket) = (clock.clone(), bucket.clone());
                    thread::spawn(move || {
                        (0..n)
                            .map(|_| bucket.take(&g, 1, || clock.now_nanos() as u64))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            clock.advance(10).unwrap();
            let outcomes: Vec<Outcome> =
                takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
            check_history(&g, &outcomes, bucket.tat());
        });
    }

    #[test]
    fn loom_bucket_take_three_threads_frozen_clock() {
        loom::model(|| {
            // Burst 2 on a frozen clock; three threads (this one included) ask for 1, 1
            // and 2 tokens: never more than 2 granted, and at least the first asked.
            let g = Gcra::new(1.0, 10, Some(2)).unwrap();
            let bucket = Arc::new(Bucket::new(0));
            let takers: Vec<_> = [1, 1]
                .into_iter()
                .map(|cost| {
                    let bucket = bucket.clone();
                    thread::spawn(move || bucket.take(&g, cost, || 0))
                })
                .collect();
            let mut outcomes = vec![bucket.take(&g, 2, || 0)];
            outcomes.extend(takers.into_iter().map(|t| t.join().unwrap()));
            check_history(&g, &outcomes, bucket.tat());
            let granted: u64 = outcomes.iter().filter(|o| o.allowed).map(|o| o.cost).sum();
            assert!((1..=2).contains(&granted), "{outcomes:?}");
        });
    }

    /// Several windows on one key (`Windows` over a `MultiBucket`, the per-key lock
    /// being loom's): on a frozen clock three threads ask for one token each under a
    /// 2-token and a 3-token window; exactly 2 are granted whatever the interleaving (no
    /// over-admission, no false refusal), and every window holds exactly the granted
    /// tokens (a refusal wrote nothing, a grant wrote every window).
    #[test]
    fn loom_windows_three_threads_frozen_clock() {
        loom::model(|| {
            let w = Windows::new(vec![
                Gcra::new(1.0, 10, Some(2)).unwrap(),
                Gcra::new(1.0, 5, Some(3)).unwrap(),
            ])
            .unwrap();
            let w = Arc::new(w);
            let bucket = Arc::new(w.fresh());
            let takers: Vec<_> = (0..2)
                .map(|_| {
                    let (w, bucket) = (w.clone(), bucket.clone());
                    thread::spawn(move || w.take(&bucket, 1, || 0))
                })
                .collect();
            let mut outcomes = vec![w.take(&bucket, 1, || 0)];
            outcomes.extend(takers.into_iter().map(|t| t.join().unwrap()));
            let granted = outcomes.iter().filter(|d| d.allowed).count() as u64;
            assert_eq!(granted, 2, "{outcomes:?}");
            assert_eq!(bucket.tats(), [2 * 10, 2 * 5], "{outcomes:?}");
            for d in outcomes.iter().filter(|d| !d.allowed) {
                assert_eq!((d.remaining, d.retry_after), (0, 10), "{outcomes:?}");
            }
        });
    }

    /// Several windows with a moving clock: two takers while the clock moves one
    /// interval of the faster window. Neither window over-admits by the latest time, and
    /// both windows record the same grants (all or none).
    #[test]
    fn loom_windows_take_with_a_moving_clock() {
        loom::model(|| {
            let gs = [
                Gcra::new(1.0, 10, Some(1)).unwrap(),
                Gcra::new(1.0, 20, Some(2)).unwrap(),
            ];
            let w = Arc::new(Windows::new(gs.to_vec()).unwrap());
            let clock = Arc::new(ManualClock::new(0));
            let bucket = Arc::new(w.fresh());
            let takers: Vec<_> = (0..2)
                .map(|_| {
                    let (w, clock, bucket) = (w.clone(), clock.clone(), bucket.clone());
                    thread::spawn(move || w.take(&bucket, 1, || clock.now_nanos() as u64))
                })
                .collect();
            clock.advance(10).unwrap();
            let outcomes: Vec<Decision> = takers.into_iter().map(|t| t.join().unwrap()).collect();
            let granted = outcomes.iter().filter(|d| d.allowed).count() as u64;
            for g in &gs {
                assert!(granted <= g.burst() + 10 / g.interval(), "{outcomes:?}");
            }
            let tats = bucket.tats();
            // Every grant moved every window's tat by at least one interval past the
            // previous one, and a refusal moved none.
            for (g, &t) in gs.iter().zip(&tats) {
                assert!(t >= granted * g.interval(), "{outcomes:?} {tats:?}");
                assert!(t <= 10 + granted * g.interval(), "{outcomes:?} {tats:?}");
            }
            assert!(granted >= 1, "{outcomes:?}");
        });
    }
}
