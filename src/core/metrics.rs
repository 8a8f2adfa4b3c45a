//! Latency and outcome per operation name over a sliding time window, in atomics.
//!
//! # Structure
//! `Metrics` maps an operation name to an [`OpSeries`] in a `DashMap` (foldhash). An
//! `OpSeries` is a ring of [`SLOTS`] time slots; slot `s` covers clock time
//! `[s * L, (s + 1) * L)` with `L = window / SLOTS` (whole nanoseconds, rounded down, so
//! `L <= window / 10`) and lives in ring entry `s % SLOTS`. A slot holds a log-linear
//! latency histogram of [`BUCKETS`] counters (HDR-style: 32 sub-buckets per power of two
//! over 16 ns units, so each bucket is at most 1/32 of its lower bound wide), the error
//! count, the sum of the latencies and their maximum. Memory per operation is fixed
//! (about 75 KiB) and nothing is allocated on the record path of an existing operation.
//!
//! # Recording
//! `record` reads the clock once (time `t`, slot `s = floor(t / L)`), takes a *read*
//! guard on the map shard (no write lock for existing names) and adds to the slot's
//! atomics. Each ring entry has one state word: `epoch << 16 | CLEARING | writers`, where
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
//! GIL build never (the GIL is held throughout a recording).
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
//! # Reclamation
//! `reset` removes an operation (its recordings vanish). Operations with no recording
//! in the window are reclaimed when a new name is added and the map has doubled since the
//! last sweep (amortised O(1) per new name), and by `ops()`. Because a recording holds
//! the shard's read guard until it is done, and removal takes the write guard, a
//! recording never lands in a removed series.

use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

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

const WRITERS_MASK: u64 = (1 << 15) - 1;
const CLEARING: u64 = 1 << 15;
const EPOCH_SHIFT: u32 = 16;
const EPOCH_MAX: u64 = (1 << 48) - 1;

/// Why `Metrics` refused an argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsError {
    Duration(DurationError),
    WindowTooSmall,
}

impl std::fmt::Display for MetricsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Duration(e) => e.fmt(f),
            Self::WindowTooSmall => write!(f, "window must be >= 0.001"),
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

/// Per-operation latency histograms over a sliding window.
pub struct Metrics {
    ops: DashMap<Box<str>, OpSeries, hashbrown::DefaultHashBuilder>,
    clock: Clock,
    window_ns: i64,
    slot_ns: i64,
    base_slot: i64,
    /// Sweep idle operations when the map reaches this size.
    sweep_at: AtomicUsize,
}

const MIN_SWEEP: usize = 64;

impl Metrics {
    pub fn new(window_ns: i64, clock: Clock) -> Result<Self, MetricsError> {
        if window_ns < MIN_WINDOW_NS {
            return Err(MetricsError::WindowTooSmall);
        }
        let slot_ns = window_ns / SLOTS as i64;
        let base_slot = clock.now_nanos().max(0) / slot_ns;
        Ok(Self {
            ops: DashMap::with_hasher(hashbrown::DefaultHashBuilder::default()),
            clock,
            window_ns,
            slot_ns,
            base_slot,
            sweep_at: AtomicUsize::new(MIN_SWEEP),
        })
    }

    pub fn window_ns(&self) -> i64 {
        self.window_ns
    }

    pub fn slot_ns(&self) -> i64 {
        self.slot_ns
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
    /// recycled (the recording was older than the window).
    pub fn record_at(&self, op: &str, ns: u64, ok: bool, t: i64) -> bool {
        let ns = ns.min(MAX_RECORD_NS);
        let epoch = self.epoch_at(t);
        let slot = (epoch as usize) % SLOTS;
        if let Some(series) = self.ops.get(op) {
            return series.slots[slot].add(epoch, ns, ok);
        }
        let added = {
            let series = self.ops.entry(op.into()).or_insert_with(OpSeries::new);
            series.slots[slot].add(epoch, ns, ok)
        };
        self.maybe_sweep();
        added
    }

    fn maybe_sweep(&self) {
        let at = self.sweep_at.load(Ordering::Relaxed);
        if self.ops.len() >= at {
            let left = self.sweep();
            self.sweep_at
                .store((2 * left).max(MIN_SWEEP), Ordering::Relaxed);
        }
    }

    /// Removes operations with no recording in the window; returns how many remain.
    pub fn sweep(&self) -> usize {
        let lo = self.window_floor(self.clock.now_nanos());
        self.ops
            .retain(|_, series| !series.slots.iter().all(|s| s.idle(lo)));
        self.ops.len()
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
            let Some(series) = self.ops.get(op) else {
                return OpStats::default();
            };
            for slot in &*series.slots {
                slot.read_into(lo, hi, &mut acc, &mut scratch);
            }
        }
        self.stats_of(&acc)
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

    /// Names with a recording in the window, sorted (idle ones are reclaimed first).
    pub fn ops(&self) -> Vec<String> {
        self.sweep();
        let mut names: Vec<String> = self.ops.iter().map(|e| e.key().to_string()).collect();
        names.sort_unstable();
        names
    }

    /// Forgets `op`; true if it was tracked.
    pub fn reset(&self, op: &str) -> bool {
        self.ops.remove(op).is_some()
    }

    /// Forgets every operation.
    pub fn reset_all(&self) {
        self.ops.clear();
    }

    /// Operations tracked now (including idle ones not yet reclaimed).
    pub fn tracked(&self) -> usize {
        self.ops.len()
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
        c.advance(10_000_000_000).unwrap();
        assert!(m.ops().is_empty());
        m.record("c", 1, true);
        m.reset_all();
        assert_eq!(m.tracked(), 0);
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
