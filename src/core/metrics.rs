//! Latency and outcome per operation name: over a sliding time window, in atomics, and
//! as lifetime totals in a fixed histogram (the shape of a Prometheus histogram).
//!
//! # Structure
//! `Metrics` maps an operation name to an [`OpEntry`] in a `DashMap` (foldhash). An entry
//! holds the operation's lifetime [`Totals`] and, while the operation has recordings in
//! the window, its window ring ([`OpSeries`]). A ring is [`SLOTS`] time slots; slot `s`
//! covers clock time `[s * L, (s + 1) * L)` with `L = window / SLOTS` (whole nanoseconds,
//! rounded down, so `L <= window / 10`) and lives in ring entry `s % SLOTS`. A slot holds a
//! log-linear latency histogram of [`BUCKETS`] counters (HDR-style: 32 sub-buckets per
//! power of two over 16 ns units, so each bucket is at most 1/32 of its lower bound wide),
//! the error count, the sum of the latencies and their maximum. A ring is fixed (about 75
//! KiB); the totals are `len(bounds) + 3` words: a count per bucket of the configured
//! upper bounds ([`Bounds`], at most [`MAX_BOUNDS`], `+Inf` implied), the error count and
//! the sum in nanoseconds. Nothing is allocated on the record path of an operation that
//! has a ring.
//!
//! # Recording
//! `record` reads the clock once (time `t`, slot `s = floor(t / L)`), takes a *read*
//! guard on the map shard (no write lock for existing names) and adds to the slot's
//! atomics and to the totals (`Relaxed` adds: one to the first bucket whose bound is `>=`
//! the latency, one to the sum, one to the errors on failure). Each ring entry has one state word: `epoch << 16 |
//! CLEARING | writers`, where
//! `epoch = s - base + 1` (0 = never used) and `writers` counts recordings in flight. A
//! recorder enters by a CAS that increments `writers` only while the word holds its own
//! epoch and `CLEARING` is unset, adds with `Relaxed` RMWs, and leaves with a `Release`
//! decrement. A recorder that finds an older epoch recycles the entry: a CAS from
//! `(older epoch, 0 writers, not clearing)` to `(its epoch, CLEARING)` (`AcqRel`: every
//! earlier writer's adds happen-before the clearing), zeroes the counters (after a
//! `Release` fence, so that a snapshot that reads a zeroed counter sees the CAS), publishes
//! `(its epoch, not clearing, 1 writer: itself)` with `Release`. Recorders of that epoch
//! wait while it clears; while older writers are still in flight the
//! recycler waits for them (spin, then yield); that only happens when a recording was
//! delayed by more than `(SLOTS - 1) * L` between reading the clock and adding, and on a
//! GIL build never (the GIL is held throughout a recording). An operation without a ring
//! (new, or idle since its ring was reclaimed) gets one under the shard's write guard.
//!
//! # The exact rule
//! A recording stamped in slot `s` is added to slot `s` and nowhere else, exactly once,
//! unless its ring entry already holds a later slot `s' >= s + SLOTS` when it arrives:
//! then it is dropped, and it could not have been visible anyway, because the clock had
//! already passed `(s + SLOTS) * L` and every snapshot from then on excludes slot `s`. A
//! snapshot taken at time `now` (slot `c`) includes exactly the slots `c - SLOTS + 1 ..= c`:
//! every recording younger than `window - L` is in it, none older than `window`. A
//! recording that completes before a snapshot starts is wholly visible to it; one that is
//! concurrent with the snapshot may be partly visible (its bucket but not yet its error
//! count, say). The snapshot reads each slot seqlock-style (state word before and after,
//! with an `Acquire` fence) and drops a slot that was recycled while it was read.
//!
//! # Totals
//! Every recording (also one dropped from the window as above) is added to its
//! operation's totals exactly once. The totals only grow until `reset` or eviction
//! removes the entry. A read loads each bucket counter once and derives the count from
//! those loads, so every read is self-consistent (cumulative counts non-decreasing, the
//! last equal to the count) and, since each counter only grows, a later read never shows
//! less in any bucket than an earlier one. The errors are reported as at most the count;
//! the sum may include or miss a recording that is concurrent with the read. The sum is
//! a `u64` of nanoseconds: it wraps after 2^64 ns (~584 years of summed latency).
//!
//! # Reclamation
//! `reset` removes an operation (its recordings and totals vanish). A ring with no
//! recording in the window is dropped (the entry and its totals stay) when a ring is
//! created and the number of rings has doubled since the last sweep (amortised O(1) per
//! new ring), and by `ops()`. Entries are bounded by `max_ops`: when a new name makes
//! more than `max_ops`, the longest-idle entries (oldest last recording, at slot
//! resolution; the new name is never one of them) are removed until `max_ops - max_ops /
//! 8` remain (amortised O(1) per new name). Because a recording holds the shard's read
//! guard until it is done, and removal takes the write guard, a recording never lands in
//! a removed entry or ring.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::core::clock::{Clock, DurationError};

/// Time slots per window.
pub const SLOTS: usize = 10;
/// Latencies are bucketed in units of 2^UNIT_SHIFT nanoseconds (16 ns).
const UNIT_SHIFT: u32 = 4;
/// 2^SUB_BITS sub-buckets per power of two: bucket width <= 1/32 of its lower bound.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Highest power of two (in units) with its own buckets: values up to 2^(MAX_EXP+1)
/// units (2^38 ns, about 275 s) are resolved; larger ones fall in the last bucket.
const MAX_EXP: u32 = 33;
/// Buckets per histogram.
pub const BUCKETS: usize = (MAX_EXP - SUB_BITS + 2) as usize * SUB;
/// Longer latencies are recorded as this (10^6 s, about 11.6 days), so that a slot's sum
/// of nanoseconds cannot overflow before ~18 000 such recordings.
pub const MAX_RECORD_NS: u64 = 1_000_000_000_000_000;
/// Smallest window accepted, in nanoseconds (1 ms): keeps epochs within 48 bits for
/// centuries.
pub const MIN_WINDOW_NS: i64 = 1_000_000;

/// Most upper bounds a lifetime histogram may have (`+Inf` not counted).
pub const MAX_BOUNDS: usize = 64;
/// The default upper bounds of the lifetime histogram, in seconds.
pub const DEFAULT_BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Default bound on the number of operations (entries) kept.
pub const DEFAULT_MAX_OPS: usize = 10_000;

const WRITERS_MASK: u64 = (1 << 15) - 1;
const CLEARING: u64 = 1 << 15;
const EPOCH_SHIFT: u32 = 16;
const EPOCH_MAX: u64 = (1 << 48) - 1;

/// Why `Metrics` refused an argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsError {
    Duration(DurationError),
    WindowTooSmall,
    /// `buckets` refused, with why.
    Buckets(&'static str),
    MaxOpsTooSmall,
}

impl std::fmt::Display for MetricsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Duration(e) => e.fmt(f),
            Self::WindowTooSmall => write!(f, "window must be >= 0.001"),
            Self::Buckets(why) => write!(f, "buckets {why}"),
            Self::MaxOpsTooSmall => write!(f, "max_ops must be >= 1"),
        }
    }
}

impl std::error::Error for MetricsError {}

impl From<DurationError> for MetricsError {
    fn from(e: DurationError) -> Self {
        Self::Duration(e)
    }
}

/// The bucket of a latency in nanoseconds.
#[inline]
pub fn bucket_of(ns: u64) -> usize {
    let v = ns >> UNIT_SHIFT;
    if v < SUB as u64 {
        return v as usize;
    }
    let h = v.ilog2();
    if h > MAX_EXP {
        return BUCKETS - 1;
    }
    let shift = h - SUB_BITS;
    let mant = (v >> shift) as usize & (SUB - 1);
    (shift as usize + 1) * SUB + mant
}

/// `[low, high)` of a bucket in nanoseconds.
pub fn bucket_bounds(i: usize) -> (u64, u64) {
    let (lo, hi) = if i < SUB {
        (i as u64, i as u64 + 1)
    } else {
        let shift = (i / SUB - 1) as u32;
        let mant = (i % SUB) as u64;
        (
            (SUB as u64 + mant) << shift,
            (SUB as u64 + mant + 1) << shift,
        )
    };
    (lo << UNIT_SHIFT, hi << UNIT_SHIFT)
}

/// The upper bounds of the lifetime histogram: as given (seconds) and in nanoseconds,
/// rounded as recordings are, so that a latency equal to a bound (as a float) lands in
/// that bound's bucket (`le`), at nanosecond resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    secs: Box<[f64]>,
    ns: Box<[u64]>,
}

impl Bounds {
    /// 1 to [`MAX_BOUNDS`] finite, positive, strictly increasing bounds in seconds.
    pub fn new(secs: &[f64]) -> Result<Self, MetricsError> {
        if secs.is_empty() {
            return Err(MetricsError::Buckets("must hold at least 1 bound"));
        }
        if secs.len() > MAX_BOUNDS {
            return Err(MetricsError::Buckets("must hold at most 64 bounds"));
        }
        if secs.iter().any(|b| !b.is_finite()) {
            return Err(MetricsError::Buckets("must be finite (+Inf is implied)"));
        }
        if secs.iter().any(|&b| b <= 0.0) {
            return Err(MetricsError::Buckets("must be > 0"));
        }
        if secs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(MetricsError::Buckets("must be strictly increasing"));
        }
        Ok(Self {
            secs: secs.into(),
            // As `clock::secs_to_nanos` rounds a recording (`as` saturates beyond u64).
            ns: secs
                .iter()
                .map(|&b| (b * crate::core::clock::NANOS_PER_SEC).round() as u64)
                .collect(),
        })
    }

    /// The bounds in seconds.
    pub fn secs(&self) -> &[f64] {
        &self.secs
    }

    /// The bucket of a latency: the first bound `>= ns`, or `len()` for `+Inf`. A
    /// branch-free count (the bounds are sorted): with at most 64 bounds it beats a binary
    /// search, whose branches on random latencies mispredict.
    #[inline]
    fn bucket_of(&self, ns: u64) -> usize {
        self.ns.iter().map(|&b| usize::from(b < ns)).sum()
    }
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            secs: DEFAULT_BOUNDS.into(),
            ns: DEFAULT_BOUNDS
                .iter()
                .map(|&b| (b * crate::core::clock::NANOS_PER_SEC).round() as u64)
                .collect(),
        }
    }
}

/// One time slot of one operation.
struct Slot {
    state: AtomicU64,
    errors: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Slot {
    fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Adds one recording for `epoch`; false if the entry already holds a later epoch.
    fn add(&self, epoch: u64, ns: u64, ok: bool) -> bool {
        let mut spins = 0u32;
        let mut st = self.state.load(Ordering::Acquire);
        loop {
            let ep = st >> EPOCH_SHIFT;
            if ep > epoch {
                return false;
            }
            let next = if ep == epoch && st & CLEARING == 0 && st & WRITERS_MASK < WRITERS_MASK {
                Some(st + 1)
            } else if ep < epoch && st & (CLEARING | WRITERS_MASK) == 0 {
                None
            } else {
                // Clearing in progress, or older writers still in flight, or the writer
                // count is saturated: wait for them.
                backoff(&mut spins);
                st = self.state.load(Ordering::Acquire);
                continue;
            };
            match next {
                Some(entered) => match self.state.compare_exchange_weak(
                    st,
                    entered,
                    Ordering::Acquire,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(seen) => st = seen,
                },
                None => {
                    let clearing = (epoch << EPOCH_SHIFT) | CLEARING;
                    match self.state.compare_exchange(
                        st,
                        clearing,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            // Orders the CAS before the zeroing for snapshot readers: one
                            // that sees a zeroed counter then sees CLEARING or a new epoch.
                            fence(Ordering::Release);
                            self.clear();
                            // Publish the cleared slot already holding this writer.
                            self.state
                                .store((epoch << EPOCH_SHIFT) | 1, Ordering::Release);
                            break;
                        }
                        Err(seen) => st = seen,
                    }
                }
            }
        }
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.state.fetch_sub(1, Ordering::Release);
        true
    }

    fn clear(&self) {
        self.errors.store(0, Ordering::Relaxed);
        self.sum_ns.store(0, Ordering::Relaxed);
        self.max_ns.store(0, Ordering::Relaxed);
        for b in &self.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }

    /// Adds this slot into `acc` if it holds an epoch in `(lo, hi]` and was not recycled
    /// while read.
    fn read_into(&self, lo: u64, hi: u64, acc: &mut Acc, scratch: &mut [u64; BUCKETS]) {
        let before = self.state.load(Ordering::Acquire);
        let ep = before >> EPOCH_SHIFT;
        if before & CLEARING != 0 || ep <= lo || ep > hi {
            return;
        }
        for (dst, b) in scratch.iter_mut().zip(&self.buckets) {
            *dst = b.load(Ordering::Relaxed);
        }
        let errors = self.errors.load(Ordering::Relaxed);
        let sum = self.sum_ns.load(Ordering::Relaxed);
        let max = self.max_ns.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let after = self.state.load(Ordering::Relaxed);
        if after >> EPOCH_SHIFT != ep || after & CLEARING != 0 {
            return;
        }
        for (a, s) in acc.buckets.iter_mut().zip(scratch.iter()) {
            *a += *s;
        }
        acc.errors += errors;
        acc.sum_ns = acc.sum_ns.wrapping_add(sum);
        acc.max_ns = acc.max_ns.max(max);
    }

    /// True if this slot holds nothing at or after `lo + 1`.
    fn idle(&self, lo: u64) -> bool {
        let st = self.state.load(Ordering::Acquire);
        st & (CLEARING | WRITERS_MASK) == 0 && st >> EPOCH_SHIFT <= lo
    }
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// The time slots of one operation.
pub struct OpSeries {
    slots: Box<[Slot]>,
}

impl OpSeries {
    fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
        }
    }

    /// The newest epoch any slot holds (0 if none was ever used).
    fn last_epoch(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.state.load(Ordering::Acquire) >> EPOCH_SHIFT)
            .max()
            .unwrap_or(0)
    }

    fn idle(&self, lo: u64) -> bool {
        self.slots.iter().all(|s| s.idle(lo))
    }
}

/// Word of [`Totals::words`] holding the sum of latencies in nanoseconds.
const SUM: usize = 0;
/// Word holding the error count.
const ERRORS: usize = 1;
/// First of the per-bucket counts (not cumulative), one per bound and one for `+Inf`.
const COUNTS: usize = 2;

/// Lifetime figures of one operation: one allocation of `len(bounds) + 3` words.
struct Totals {
    words: Box<[AtomicU64]>,
}

impl Totals {
    fn new(bounds: usize) -> Self {
        Self {
            words: std::iter::repeat_with(|| AtomicU64::new(0))
                .take(COUNTS + bounds + 1)
                .collect(),
        }
    }

    #[inline]
    fn add(&self, bucket: usize, ns: u64, ok: bool) {
        self.words[COUNTS + bucket].fetch_add(1, Ordering::Relaxed);
        self.words[SUM].fetch_add(ns, Ordering::Relaxed);
        if !ok {
            self.words[ERRORS].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Each counter loaded once; the count is the sum of the bucket loads.
    fn read(&self) -> OpTotals {
        let mut count = 0u64;
        let cumulative: Vec<u64> = self.words[COUNTS..]
            .iter()
            .map(|c| {
                count += c.load(Ordering::Relaxed);
                count
            })
            .collect();
        OpTotals {
            count,
            errors: self.words[ERRORS].load(Ordering::Relaxed).min(count),
            sum_ns: self.words[SUM].load(Ordering::Relaxed),
            cumulative,
        }
    }
}

/// Everything kept for one operation name.
pub struct OpEntry {
    /// The window ring, while the operation has recordings in the window.
    ring: Option<OpSeries>,
    /// The newest epoch of the ring last dropped (its last recording's slot).
    idle_since: u64,
    totals: Totals,
}

impl OpEntry {
    fn new(bounds: usize) -> Self {
        Self {
            ring: None,
            idle_since: 0,
            totals: Totals::new(bounds),
        }
    }

    /// The epoch of the last recording (at slot resolution).
    fn last_epoch(&self) -> u64 {
        self.ring
            .as_ref()
            .map_or(self.idle_since, OpSeries::last_epoch)
    }
}

/// Lifetime figures of one operation; durations in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpTotals {
    pub count: u64,
    pub errors: u64,
    pub sum_ns: u64,
    /// Cumulative counts: one per bound, then `+Inf` (equal to `count`).
    pub cumulative: Vec<u64>,
}

struct Acc {
    buckets: [u64; BUCKETS],
    errors: u64,
    sum_ns: u64,
    max_ns: u64,
}

/// What a snapshot reports over the window; durations in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpStats {
    pub count: u64,
    pub errors: u64,
    /// Recordings per second of window.
    pub rate: f64,
    pub mean_ns: f64,
    pub p50_ns: f64,
    pub p90_ns: f64,
    pub p99_ns: f64,
    pub max_ns: u64,
}

/// Per-operation latency histograms over a sliding window, and lifetime totals.
pub struct Metrics {
    ops: DashMap<Box<str>, OpEntry, hashbrown::DefaultHashBuilder>,
    clock: Clock,
    window_ns: i64,
    slot_ns: i64,
    base_slot: i64,
    bounds: Bounds,
    max_ops: usize,
    /// Entries holding a ring (each change made under the entry's shard write guard).
    rings: AtomicUsize,
    /// Sweep idle rings when `rings` reaches this.
    sweep_at: AtomicUsize,
    /// Set while one thread evicts entries beyond `max_ops` (others skip it).
    evicting: AtomicBool,
}

const MIN_SWEEP: usize = 64;

impl Metrics {
    pub fn new(window_ns: i64, clock: Clock) -> Result<Self, MetricsError> {
        Self::with_limits(window_ns, clock, Bounds::default(), DEFAULT_MAX_OPS)
    }

    /// A `Metrics` with its lifetime histogram's `bounds` and at most `max_ops` entries.
    pub fn with_limits(
        window_ns: i64,
        clock: Clock,
        bounds: Bounds,
        max_ops: usize,
    ) -> Result<Self, MetricsError> {
        if window_ns < MIN_WINDOW_NS {
            return Err(MetricsError::WindowTooSmall);
        }
        if max_ops < 1 {
            return Err(MetricsError::MaxOpsTooSmall);
        }
        let slot_ns = window_ns / SLOTS as i64;
        let base_slot = clock.now_nanos().max(0) / slot_ns;
        Ok(Self {
            ops: DashMap::with_hasher(hashbrown::DefaultHashBuilder::default()),
            clock,
            window_ns,
            slot_ns,
            base_slot,
            bounds,
            max_ops,
            rings: AtomicUsize::new(0),
            sweep_at: AtomicUsize::new(MIN_SWEEP),
            evicting: AtomicBool::new(false),
        })
    }

    pub fn window_ns(&self) -> i64 {
        self.window_ns
    }

    pub fn slot_ns(&self) -> i64 {
        self.slot_ns
    }

    pub fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    pub fn max_ops(&self) -> usize {
        self.max_ops
    }

    pub fn now_nanos(&self) -> i64 {
        self.clock.now_nanos()
    }

    /// Epoch (1-based, relative to construction) of the slot holding time `t`.
    fn epoch_at(&self, t: i64) -> u64 {
        let s = t.max(0) / self.slot_ns - self.base_slot;
        (s.max(0) as u64 + 1).min(EPOCH_MAX)
    }

    /// Records a latency now.
    pub fn record(&self, op: &str, ns: u64, ok: bool) -> bool {
        self.record_at(op, ns, ok, self.clock.now_nanos())
    }

    /// Records a latency as of clock time `t`. False if `t`'s slot had already been
    /// recycled (the recording was older than the window); the totals count it either way.
    pub fn record_at(&self, op: &str, ns: u64, ok: bool, t: i64) -> bool {
        let ns = ns.min(MAX_RECORD_NS);
        let epoch = self.epoch_at(t);
        let slot = (epoch as usize) % SLOTS;
        let bucket = self.bounds.bucket_of(ns);
        if let Some(entry) = self.ops.get(op) {
            if let Some(ring) = &entry.ring {
                entry.totals.add(bucket, ns, ok);
                return ring.slots[slot].add(epoch, ns, ok);
            }
        }
        // A new name, or one whose ring was reclaimed: the write guard.
        let mut new_name = false;
        let mut new_ring = false;
        let added = {
            let mut entry = self.ops.entry(op.into()).or_insert_with(|| {
                new_name = true;
                OpEntry::new(self.bounds.ns.len())
            });
            let ring = entry.ring.get_or_insert_with(|| {
                new_ring = true;
                // Counted under the write guard, before any sweep can see (and drop) it.
                self.rings.fetch_add(1, Ordering::Relaxed);
                OpSeries::new()
            });
            let added = ring.slots[slot].add(epoch, ns, ok);
            entry.totals.add(bucket, ns, ok);
            added
        };
        if new_ring {
            self.maybe_sweep();
        }
        if new_name {
            self.maybe_evict(op);
        }
        added
    }

    fn maybe_sweep(&self) {
        let at = self.sweep_at.load(Ordering::Relaxed);
        if self.rings.load(Ordering::Relaxed) >= at {
            let left = self.sweep();
            self.sweep_at
                .store((2 * left).max(MIN_SWEEP), Ordering::Relaxed);
        }
    }

    /// Drops the rings of operations with no recording in the window (their entries and
    /// totals stay); returns how many rings remain.
    pub fn sweep(&self) -> usize {
        let lo = self.window_floor(self.clock.now_nanos());
        let mut dropped = 0;
        for mut entry in self.ops.iter_mut() {
            let entry = entry.value_mut();
            if let Some(ring) = entry.ring.take_if(|r| r.idle(lo)) {
                entry.idle_since = ring.last_epoch();
                dropped += 1;
            }
        }
        self.rings
            .fetch_sub(dropped, Ordering::Relaxed)
            .saturating_sub(dropped)
    }

    /// When there are more than `max_ops` entries, removes the longest-idle ones (never
    /// `keep`, the name just added) until `max_ops - max_ops / 8` remain. One thread at a
    /// time; the others go on (the entries may briefly exceed `max_ops` by one per thread
    /// adding a new name meanwhile).
    fn maybe_evict(&self, keep: &str) {
        if self.ops.len() <= self.max_ops
            || self
                .evicting
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let mut epochs: Vec<u64> = self
            .ops
            .iter()
            .filter(|e| &**e.key() != keep)
            .map(|e| e.last_epoch())
            .collect();
        let target = self.max_ops - self.max_ops / 8;
        let excess = (epochs.len() + 1).saturating_sub(target);
        if excess > 0 {
            // The excess-th oldest epoch: everything older goes, and enough of its ties.
            let (older, &mut cut, _) = epochs.select_nth_unstable(excess - 1);
            let mut ties = excess - older.len();
            let mut dropped_rings = 0;
            self.ops.retain(|k, e| {
                if &**k == keep {
                    return true;
                }
                let last = e.last_epoch();
                let go = last < cut || (last == cut && ties > 0);
                if go {
                    if last == cut {
                        ties -= 1;
                    }
                    dropped_rings += usize::from(e.ring.is_some());
                }
                !go
            });
            self.rings.fetch_sub(dropped_rings, Ordering::Relaxed);
        }
        self.evicting.store(false, Ordering::Release);
    }

    /// Epochs `<= floor` are outside the window at time `now`.
    fn window_floor(&self, now: i64) -> u64 {
        self.epoch_at(now).saturating_sub(SLOTS as u64)
    }

    /// Statistics of `op` over the window ending now; zeros if unknown.
    pub fn snapshot(&self, op: &str) -> OpStats {
        let now = self.clock.now_nanos();
        let hi = self.epoch_at(now);
        let lo = hi.saturating_sub(SLOTS as u64);
        let mut acc = Box::new(Acc {
            buckets: [0; BUCKETS],
            errors: 0,
            sum_ns: 0,
            max_ns: 0,
        });
        let mut scratch = Box::new([0u64; BUCKETS]);
        {
            let Some(entry) = self.ops.get(op) else {
                return OpStats::default();
            };
            let Some(ring) = &entry.ring else {
                return OpStats::default();
            };
            for slot in &*ring.slots {
                slot.read_into(lo, hi, &mut acc, &mut scratch);
            }
        }
        self.stats_of(&acc)
    }

    /// Lifetime figures of `op` since it was first recorded (or reset); zeros if unknown.
    pub fn totals(&self, op: &str) -> OpTotals {
        match self.ops.get(op) {
            Some(entry) => entry.totals.read(),
            None => OpTotals {
                cumulative: vec![0; self.bounds.ns.len() + 1],
                ..OpTotals::default()
            },
        }
    }

    fn stats_of(&self, acc: &Acc) -> OpStats {
        let count: u64 = acc.buckets.iter().sum();
        if count == 0 {
            return OpStats::default();
        }
        let q = |p: f64| quantile(&acc.buckets, count, p, acc.max_ns);
        OpStats {
            count,
            errors: acc.errors.min(count),
            rate: count as f64 / (self.window_ns as f64 / 1e9),
            mean_ns: acc.sum_ns as f64 / count as f64,
            p50_ns: q(0.5),
            p90_ns: q(0.9),
            p99_ns: q(0.99),
            max_ns: acc.max_ns,
        }
    }

    /// Every name with totals (recorded since its last reset and not evicted), sorted;
    /// idle rings are reclaimed first.
    pub fn ops(&self) -> Vec<String> {
        self.sweep();
        let mut names: Vec<String> = self.ops.iter().map(|e| e.key().to_string()).collect();
        names.sort_unstable();
        names
    }

    /// Forgets `op` (window and totals); true if it was tracked.
    pub fn reset(&self, op: &str) -> bool {
        match self.ops.remove(op) {
            Some((_, entry)) => {
                if entry.ring.is_some() {
                    self.rings.fetch_sub(1, Ordering::Relaxed);
                }
                true
            }
            None => false,
        }
    }

    /// Forgets every operation.
    pub fn reset_all(&self) {
        let mut dropped = 0;
        self.ops.retain(|_, e| {
            dropped += usize::from(e.ring.is_some());
            false
        });
        self.rings.fetch_sub(dropped, Ordering::Relaxed);
    }

    /// Operations tracked now (with or without a ring).
    pub fn tracked(&self) -> usize {
        self.ops.len()
    }

    /// Operations holding a window ring now.
    pub fn rings(&self) -> usize {
        self.rings.load(Ordering::Relaxed)
    }
}

/// Nearest-rank quantile `p` of the histogram, as the midpoint of its bucket, never above
/// the exact maximum (which answers for the open-ended last bucket).
fn quantile(buckets: &[u64; BUCKETS], count: u64, p: f64, max_ns: u64) -> f64 {
    let rank = ((p * count as f64).ceil() as u64).clamp(1, count);
    let mut seen = 0u64;
    for (i, &c) in buckets.iter().enumerate() {
        seen += c;
        if seen >= rank {
            if i == BUCKETS - 1 {
                // The last bucket is open-ended: its best estimate is the exact maximum.
                return max_ns as f64;
            }
            let (lo, hi) = bucket_bounds(i);
            let mid = (lo as f64 + hi as f64) / 2.0;
            return mid.min(max_ns as f64);
        }
    }
    max_ns as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::ManualClock;
    use std::sync::Arc;

    fn manual(window_s: i64) -> (Arc<ManualClock>, Metrics) {
        let c = Arc::new(ManualClock::new(0));
        let m = Metrics::new(window_s * 1_000_000_000, Clock::Manual(c.clone())).unwrap();
        (c, m)
    }

    #[test]
    fn buckets_cover_the_range_with_bounded_width() {
        assert_eq!(BUCKETS, 960);
        let mut prev_hi = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = bucket_bounds(i);
            assert_eq!(lo, prev_hi, "bucket {i} is contiguous");
            assert!(hi > lo);
            if lo >= 1_000 {
                assert!((hi - lo) as f64 / lo as f64 <= 1.0 / 32.0 + 1e-12);
            }
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi - 1), i);
            prev_hi = hi;
        }
        assert!(prev_hi >= 100_000_000_000, "covers 100 s");
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_two_percent() {
        let (_, m) = manual(60);
        let mut xs: Vec<u64> = (1..=10_000u64).map(|i| 1_000 + i * i * 997).collect();
        for &x in &xs {
            m.record("op", x, true);
        }
        xs.sort_unstable();
        let s = m.snapshot("op");
        assert_eq!(s.count, 10_000);
        for (p, got) in [(0.5, s.p50_ns), (0.9, s.p90_ns), (0.99, s.p99_ns)] {
            let exact = xs[((p * 10_000.0f64).ceil() as usize) - 1] as f64;
            assert!((got - exact).abs() / exact < 0.02, "p{p}: {got} vs {exact}");
        }
        assert_eq!(s.max_ns, *xs.last().unwrap());
        let mean = xs.iter().sum::<u64>() as f64 / 10_000.0;
        assert!((s.mean_ns - mean).abs() < 1e-6 * mean);
    }

    #[test]
    fn window_slides_by_slots() {
        let (c, m) = manual(10); // slots of 1 s
        m.record("op", 1_000, true);
        c.advance(500_000_000).unwrap();
        m.record("op", 2_000, false);
        assert_eq!(m.snapshot("op").count, 2);
        assert_eq!(m.snapshot("op").errors, 1);
        // 9.99 s later, slot 0 is the oldest of the window.
        c.set(9_999_999_999).unwrap();
        assert_eq!(m.snapshot("op").count, 2);
        c.set(10_000_000_000).unwrap();
        assert_eq!(m.snapshot("op").count, 0);
        assert_eq!(m.snapshot("op"), OpStats::default());
        // The ring entry is reused for slot 10 and starts from zero.
        m.record("op", 3_000, true);
        let s = m.snapshot("op");
        assert_eq!((s.count, s.errors, s.max_ns), (1, 0, 3_000));
    }

    #[test]
    fn late_recordings_into_recycled_slots_are_dropped() {
        let (c, m) = manual(10);
        c.set(20_000_000_000).unwrap();
        assert!(m.record("op", 1_000, true));
        // Slot 10 (t = 10 s) shares the ring entry of slot 20, which is newer.
        assert!(!m.record_at("op", 1_000, true, 10_000_000_000));
        assert_eq!(m.snapshot("op").count, 1);
    }

    #[test]
    fn absurd_latencies_are_capped() {
        let (_, m) = manual(10);
        for _ in 0..100 {
            m.record("op", u64::MAX, true);
        }
        let s = m.snapshot("op");
        assert_eq!(s.max_ns, MAX_RECORD_NS);
        assert!((s.mean_ns - MAX_RECORD_NS as f64).abs() < 1.0);
    }

    #[test]
    fn reset_and_sweep() {
        let (c, m) = manual(10);
        m.record("a", 1, true);
        m.record("b", 1, true);
        assert_eq!(m.ops(), vec!["a".to_string(), "b".to_string()]);
        assert!(m.reset("a"));
        assert!(!m.reset("a"));
        assert_eq!(m.snapshot("a").count, 0);
        assert_eq!(m.totals("a").count, 0);
        c.advance(10_000_000_000).unwrap();
        // The idle ring goes, the totals stay.
        assert_eq!(m.ops(), vec!["b".to_string()]);
        assert_eq!((m.rings(), m.tracked()), (0, 1));
        assert_eq!(m.totals("b").count, 1);
        m.record("b", 1, true);
        assert_eq!(
            (m.rings(), m.snapshot("b").count, m.totals("b").count),
            (1, 1, 2)
        );
        m.record("c", 1, true);
        m.reset_all();
        assert_eq!((m.tracked(), m.rings()), (0, 0));
    }

    fn with_bounds(bounds: &[f64], max_ops: usize) -> (Arc<ManualClock>, Metrics) {
        let c = Arc::new(ManualClock::new(0));
        let b = Bounds::new(bounds).unwrap();
        let m = Metrics::with_limits(10_000_000_000, Clock::Manual(c.clone()), b, max_ops).unwrap();
        (c, m)
    }

    #[test]
    fn totals_use_le_buckets_at_nanosecond_resolution() {
        let (_, m) = with_bounds(&[0.001, 0.01], 10);
        for ns in [
            0,
            999_999,
            1_000_000,
            1_000_001,
            10_000_000,
            10_000_001,
            u64::MAX,
        ] {
            m.record("op", ns, ns != 0);
        }
        let t = m.totals("op");
        assert_eq!(t.cumulative, vec![3, 5, 7]);
        assert_eq!((t.count, t.errors), (7, 1));
        let sum = 999_999 + 1_000_000 + 1_000_001 + 10_000_000 + 10_000_001 + MAX_RECORD_NS;
        assert_eq!(t.sum_ns, sum);
        assert_eq!(m.totals("none").cumulative, vec![0, 0, 0]);
        assert_eq!(Bounds::default().secs(), &DEFAULT_BOUNDS);
        assert_eq!(Bounds::default(), Bounds::new(&DEFAULT_BOUNDS).unwrap());
    }

    #[test]
    fn bad_bounds_are_refused() {
        let e = |b: &[f64]| Bounds::new(b).unwrap_err().to_string();
        assert_eq!(e(&[]), "buckets must hold at least 1 bound");
        assert_eq!(e(&[1.0; 65]), "buckets must hold at most 64 bounds");
        assert_eq!(
            e(&[1.0, f64::INFINITY]),
            "buckets must be finite (+Inf is implied)"
        );
        assert_eq!(e(&[f64::NAN]), "buckets must be finite (+Inf is implied)");
        assert_eq!(e(&[0.0, 1.0]), "buckets must be > 0");
        assert_eq!(e(&[1.0, 1.0]), "buckets must be strictly increasing");
        assert_eq!(e(&[2.0, 1.0]), "buckets must be strictly increasing");
        let many: Vec<f64> = (1..=64).map(f64::from).collect();
        assert_eq!(Bounds::new(&many).unwrap().secs().len(), 64);
        assert!(matches!(
            Metrics::with_limits(MIN_WINDOW_NS, Clock::Monotonic, Bounds::default(), 0),
            Err(MetricsError::MaxOpsTooSmall)
        ));
    }

    #[test]
    fn late_recordings_still_count_in_the_totals() {
        let (c, m) = manual(10);
        c.set(20_000_000_000).unwrap();
        m.record("op", 1_000, true);
        assert!(!m.record_at("op", 1_000, true, 10_000_000_000));
        assert_eq!((m.snapshot("op").count, m.totals("op").count), (1, 2));
    }

    #[test]
    fn the_longest_idle_entries_go_beyond_max_ops() {
        // 1 s slots; max_ops 16 evicts down to 14.
        let (c, m) = with_bounds(&[1.0], 16);
        for i in 0..16 {
            m.record(&format!("op{i:02}"), 1, true);
            c.advance(1_000_000_000).unwrap();
        }
        m.record("op00", 1, true); // refreshed: now the newest
        m.record("new", 1, true); // 17 > 16: the 3 longest idle go (op01..op03)
        let names = m.ops();
        assert_eq!(names.len(), 14);
        assert!(names.contains(&"op00".to_string()) && names.contains(&"new".to_string()));
        for gone in ["op01", "op02", "op03"] {
            assert!(!names.contains(&gone.to_string()), "{gone}");
            assert_eq!(m.totals(gone).count, 0);
        }
        assert_eq!(m.totals("op00").count, 2);
    }

    #[test]
    fn a_new_name_is_never_evicted_for_itself() {
        let (_, m) = with_bounds(&[1.0], 1);
        m.record("a", 1, true);
        m.record("b", 1, true); // same slot as "a": "a" goes, never "b"
        assert_eq!(m.ops(), vec!["b".to_string()]);
        assert_eq!(m.rings(), 1);
    }

    #[test]
    fn too_small_window_is_refused() {
        assert_eq!(
            Metrics::new(999_999, Clock::Monotonic)
                .err()
                .unwrap()
                .to_string(),
            "window must be >= 0.001"
        );
    }

    #[test]
    fn concurrent_recordings_across_rotations_follow_the_rule() {
        // Writers race with slot recycling (the clock moves a slot every 1000 recordings of
        // thread 0). Each writer tallies what it recorded per slot; at the end the window
        // must hold exactly the recordings of the last SLOTS slots, and a recording may
        // only have been refused if its slot is out of the window.
        let c = Arc::new(ManualClock::new(0));
        let m = Arc::new(Metrics::new(1_000_000_000, Clock::Manual(c.clone())).unwrap());
        let per = 20_000u64;
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let (m, c) = (m.clone(), c.clone());
                std::thread::spawn(move || {
                    let mut kept = std::collections::HashMap::<i64, u64>::new();
                    let mut refused = Vec::new();
                    for n in 0..per {
                        if i == 0 && n % 1000 == 0 {
                            c.advance(50_000_000).unwrap();
                        }
                        let t = c.now_nanos();
                        if m.record_at("op", 1_000 + n, n % 3 != 0, t) {
                            *kept.entry(t / 100_000_000).or_default() += 1;
                        } else {
                            refused.push(t / 100_000_000);
                        }
                    }
                    (kept, refused)
                })
            })
            .collect();
        let results: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let last = c.now_nanos() / 100_000_000;
        let mut expected = 0;
        for (kept, refused) in &results {
            for (&slot, &n) in kept {
                if slot > last - SLOTS as i64 {
                    expected += n;
                }
            }
            assert!(refused.iter().all(|&s| s <= last - SLOTS as i64));
        }
        assert!(expected > 0);
        assert_eq!(m.snapshot("op").count, expected);
    }
}
