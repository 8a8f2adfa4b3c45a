//! A frequency sketch: approximate, aging access counts for the TinyLFU admission filter
//! of `core::cache` (see "Policies" there).
//!
//! # Structure
//! A count-min sketch of 4-bit counters with four rows, laid out in blocks of eight
//! `u64` words (64 bytes, one cache line): a key's hash picks one block, and inside it
//! each row `i` owns words `2i` and `2i + 1` and picks one of their 32 counters from the
//! hash's bits. So an increment or an estimate touches one cache line. The estimate is
//! the smallest of the key's four counters (collisions only ever add).
//!
//! Increments are *conservative*: only the counters that equal the current minimum go
//! up, so a counter never exceeds the largest true count of the keys mapped to it, which
//! keeps the estimates of rare keys (the admission candidates) close to the truth.
//!
//! # Aging
//! Counters saturate at 15. Every `period` increments ([`SAMPLE_FACTOR`] per entry the
//! sketch is sized for; an increment that changes nothing because the key is saturated
//! does not count) every counter is halved, so old popularity fades and a key that was
//! hot yesterday cannot keep today's keys out forever (TinyLFU's "reset", Einziger et
//! al. 2017).
//!
//! # Counts kept outside
//! The cache counts a cached entry's accesses in the entry's own slot (the line its
//! lookup reads) and gives them to the sketch when the entry leaves
//! ([`add`](FrequencySketch::add): `n` conservative increments at once, already counted
//! towards the period by [`add_counted`](FrequencySketch::add_counted), which tells the
//! cache when the sketch ages so it halves its counts too).
//!
//! # Sizing and memory
//! The table is sized for a number of entries (one word, 16 counters, per entry,
//! rounded up to whole blocks and a power of two) and grows with the cache it serves,
//! never beyond it: a cache reserves memory only for what it stores. Growing doubles the
//! block count and copies every block into both halves: a block's index is the low bits
//! of the hash's upper half, so each key's counters keep their values and no estimate
//! changes. Growth goes through `try_reserve` first: running out of memory is an
//! [`AllocError`] with the sketch unchanged. An empty sketch (never sized, or reset by
//! `clear`) counts nothing and estimates 0.
//!
//! # Increments from readers that share the cache's lock
//! The counters are `AtomicU64` words. An exclusive holder (`&mut self`) reads and writes
//! them as plain words (`get_mut`). [`increment_shared`](FrequencySketch::increment_shared)
//! counts from readers holding the cache shard's shared lock: each word it changes is
//! one relaxed load and one relaxed store of the value computed from it (no atomic
//! read-modify-write, so no lock prefix on the hot path). Two readers changing one word
//! at the same instant may lose one of the two increments, never carry into a
//! neighbouring counter (each new value is computed from a whole loaded word, with the
//! saturation check), which a sketch that approximates anyway can afford. Shared
//! increments are not counted towards the aging period one by one (that count would be
//! a word every reader writes): the cache adds them in bulk under its exclusive lock
//! ([`add_counted`](FrequencySketch::add_counted)).
//!
//! # Lanes
//! Readers on different threads that bump the counters of their own keys still write
//! the same lines (every key's block is anywhere in the table), and a line two cores
//! write in turn moves between them on nearly every write. A sketch of `lanes` lanes
//! keeps that many copies of every block side by side; a reader bumps only its own
//! lane's copy (the exclusive holder, lane 0), and an estimate is the sum of the key's
//! estimates over the lanes (each lane's is at least the true count of the accesses it
//! took), at most 15. Each lane saturates and ages like a one-lane sketch. The lanes lie
//! one after another (a block's copies in different lanes never share a line, or the
//! pair of lines the CPU prefetches together). Memory is
//! `lanes` times that of one lane; a cache gives lanes only to sketches its readers
//! share.
//!
//! # Hashing
//! The input is the cache's 64-bit hash of the key, remixed here (multiply and
//! xor-shift) so that the sketch's bits are independent of those the cache uses for
//! its shards and table. Keys that an adversary makes collide can only raise estimates;
//! the cache's admission rule answers that with a little randomness (see `core::cache`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::core::cache::AllocError;

/// Words per block: one 64-byte cache line.
const BLOCK_WORDS: usize = 8;
/// Largest counter value.
const MAX_COUNT: u64 = 15;
/// Words (16 counters) per entry the sketch is sized for: 16 bytes.
const WORDS_PER_ENTRY: usize = 2;
/// Most lanes a sketch has.
pub const MAX_LANES: usize = 4;
/// Counted increments between two agings, per entry the sketch is sized for.
pub const SAMPLE_FACTOR: u64 = 20;

/// Approximate access counts with aging; see the module docs.
#[derive(Debug, Default)]
pub struct FrequencySketch {
    /// `lanes * blocks * BLOCK_WORDS` words, `blocks` a power of two (or empty): lane
    /// after lane, so that two lanes never share a line or an adjacent-line pair
    /// (block `b` of lane `l` at `(l * blocks + b) * BLOCK_WORDS`).
    table: Vec<AtomicU64>,
    /// `blocks - 1`.
    block_mask: u64,
    /// Copies of the counters that readers sharing the sketch write apart (a power of
    /// two, `1..=MAX_LANES`); see "Lanes".
    lanes: usize,
    /// Counted increments since the last aging.
    additions: u64,
    /// Counted increments that trigger an aging.
    period: u64,
}

impl FrequencySketch {
    /// An empty sketch of one lane: it counts nothing until [`ensure`](Self::ensure)
    /// sizes it.
    pub fn new() -> Self {
        Self::with_lanes(1)
    }

    /// An empty sketch of `lanes` lanes (rounded up to a power of two, clamped to
    /// `1..=MAX_LANES`).
    pub fn with_lanes(lanes: usize) -> Self {
        Self {
            lanes: lanes.clamp(1, MAX_LANES).next_power_of_two(),
            ..Self::default()
        }
    }

    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// True once sized (it counts).
    pub fn is_sized(&self) -> bool {
        !self.table.is_empty()
    }

    /// Words (16 counters each) for `entries` entries: [`WORDS_PER_ENTRY`] each, at
    /// least one block, a power of two.
    fn words_for(entries: usize) -> usize {
        entries
            .saturating_mul(WORDS_PER_ENTRY)
            .max(BLOCK_WORDS)
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 1))
    }

    /// Sizes the sketch for at least `entries` entries, keeping every estimate. Does
    /// nothing if it is already that large.
    pub fn ensure(&mut self, entries: usize) -> Result<(), AllocError> {
        let lane_words = Self::words_for(entries);
        let want = lane_words.saturating_mul(self.lanes);
        let have = self.table.len();
        if have >= want {
            return Ok(());
        }
        if have == 0 {
            self.table.try_reserve_exact(want)?;
            self.table.resize_with(want, || AtomicU64::new(0));
        } else {
            // Each lane doubles, as often as needed: block b's counters are those of
            // every block b + k * (old blocks) (the index is the hash's low bits), so
            // each lane's old words are copied there. Lanes are laid out one after
            // another, so the table is rebuilt.
            let mut table = Vec::new();
            table.try_reserve_exact(want)?;
            let old = have / self.lanes;
            for lane in self.table.chunks_exact_mut(old) {
                for _ in 0..lane_words / old {
                    table.extend(lane.iter_mut().map(|w| AtomicU64::new(*w.get_mut())));
                }
            }
            self.table = table;
        }
        let blocks = (lane_words / BLOCK_WORDS) as u64;
        self.block_mask = blocks - 1;
        self.period = SAMPLE_FACTOR.saturating_mul(entries.max(1) as u64);
        Ok(())
    }

    /// Forgets every count and releases the table (memory back to nothing).
    pub fn reset(&mut self) {
        *self = Self::with_lanes(self.lanes);
    }

    /// The first word of the key's block in `lane` (`< lanes`) and, per row, (word
    /// offset, bit shift) of the key's counter.
    #[inline]
    fn locate(&self, hash: u64, lane: usize) -> (usize, [(usize, u32); 4]) {
        let h = spread(hash);
        let lane_words = (self.block_mask as usize + 1) * BLOCK_WORDS;
        let block = lane * lane_words + ((h >> 32) & self.block_mask) as usize * BLOCK_WORDS;
        let mut at = [(0, 0); 4];
        for (i, slot) in at.iter_mut().enumerate() {
            let bits = (h >> (8 * i)) as usize;
            let word = 2 * i + (bits & 1);
            let shift = (((bits >> 1) & 15) * 4) as u32;
            *slot = (word, shift);
        }
        (block, at)
    }

    /// Starts loading the cache line of `hash`'s counters in `lane` (taken modulo the
    /// lanes), so that an increment a little later (after the cache's own lookup) does
    /// not wait for memory.
    #[inline]
    pub fn prefetch(&self, hash: u64, lane: usize) {
        if self.table.is_empty() {
            return;
        }
        let blocks = self.block_mask as usize + 1;
        let block = ((lane & (self.lanes - 1)) * blocks
            + ((spread(hash) >> 32) & self.block_mask) as usize)
            * BLOCK_WORDS;
        if let Some(word) = self.table.get(block) {
            prefetch(word);
        }
    }

    /// The estimated count of `hash`'s key, `0..=15`: the sum of its estimates in every
    /// lane (each at least that lane's true count), at most 15.
    #[inline]
    pub fn frequency(&self, hash: u64) -> u8 {
        if self.table.is_empty() {
            return 0;
        }
        let mut sum = 0;
        for lane in 0..self.lanes {
            let (block, at) = self.locate(hash, lane);
            let mut min = MAX_COUNT;
            for (word, shift) in at {
                // block + word < block + BLOCK_WORDS <= table.len(): the block index is
                // masked to the table's block count, the lane is below `lanes`.
                let c = (self.table[block + word].load(Relaxed) >> shift) & 15;
                min = min.min(c);
            }
            sum += min;
        }
        sum.min(MAX_COUNT) as u8
    }

    /// Counts one access of `hash`'s key (conservatively: only the counters at the
    /// minimum go up); ages the sketch once `period` increments were counted. True if
    /// it aged.
    #[cfg(test)]
    pub fn increment(&mut self, hash: u64) -> bool {
        self.raise(hash, 1) && self.add_counted(1)
    }

    /// Adds `n` accesses of `hash`'s key that were counted towards the aging period
    /// already (a cache counts a cached entry's accesses in the entry's slot, and adds
    /// them here when the entry leaves). Conservative, as an increment: each of the
    /// key's counters becomes at least its smallest plus `n` (at most 15), so none
    /// exceeds the key's new estimate unless another key's count put it higher.
    #[inline]
    pub fn add(&mut self, hash: u64, n: u32) {
        if n > 0 {
            self.raise(hash, u64::from(n));
        }
    }

    /// Raises `hash`'s counters in lane 0 conservatively by `n` (saturating); true if
    /// one went up.
    #[inline]
    fn raise(&mut self, hash: u64, n: u64) -> bool {
        if self.table.is_empty() {
            return false;
        }
        let (block, at) = self.locate(hash, 0);
        let words = &mut self.table[block..block + BLOCK_WORDS];
        let mut min = MAX_COUNT;
        for &(word, shift) in &at {
            min = min.min((*words[word].get_mut() >> shift) & 15);
        }
        if min == MAX_COUNT {
            return false;
        }
        let to = (min + n).min(MAX_COUNT);
        for &(word, shift) in &at {
            let w = words[word].get_mut();
            let c = (*w >> shift) & 15;
            if c < to {
                *w += (to - c) << shift;
            }
        }
        true
    }

    /// [`increment`](Self::increment) in `lane` (taken modulo the lanes) by a reader
    /// that shares the sketch (see "Increments from readers"), without counting towards
    /// the aging period; true if a counter went up (false when the key's counters in the
    /// lane are saturated: such an increment does not count towards the period).
    #[inline]
    pub fn increment_shared(&self, hash: u64, lane: usize) -> bool {
        if self.table.is_empty() {
            return false;
        }
        let (block, at) = self.locate(hash, lane & (self.lanes - 1));
        let words = &self.table[block..block + BLOCK_WORDS];
        let mut min = MAX_COUNT;
        for &(word, shift) in &at {
            min = min.min((words[word].load(Relaxed) >> shift) & 15);
        }
        if min == MAX_COUNT {
            return false;
        }
        for &(word, shift) in &at {
            // Loaded again: another reader may have changed the word since.
            let w = words[word].load(Relaxed);
            if (w >> shift) & 15 == min {
                words[word].store(w + (1 << shift), Relaxed);
            }
        }
        true
    }

    /// Counts `n` increments towards the aging period (shared ones in bulk, and those a
    /// cache counts outside the sketch); ages the sketch once the period is reached.
    /// True if it aged (the caller halves the counts it keeps outside the sketch).
    #[inline]
    pub fn add_counted(&mut self, n: u64) -> bool {
        self.additions = self.additions.saturating_add(n);
        let age = self.additions >= self.period && self.is_sized();
        if age {
            self.age();
        }
        age
    }

    /// Halves every counter (and the count of additions since the last aging, at most
    /// half a period: a burst of many counted at once ages once, not again at every
    /// later addition).
    #[cold]
    fn age(&mut self) {
        for w in &mut self.table {
            let w = w.get_mut();
            *w = (*w >> 1) & 0x7777_7777_7777_7777;
        }
        self.additions = (self.additions / 2).min(self.period / 2);
    }

    /// Counted increments since the last aging (tests).
    #[cfg(test)]
    pub(crate) fn additions(&self) -> u64 {
        self.additions
    }
}

/// A hint to load `p`'s cache line; nothing on targets without one.
#[inline]
pub fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is only a hint: it never faults and changes no state the
        // program can observe; `p` is a valid reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(p).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Remixes the cache's hash so the sketch's bits are independent of the shard and table
/// bits (a different odd multiplier than `core::cache::mix`, then an xor-shift).
#[inline]
fn spread(hash: u64) -> u64 {
    let x = hash.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x ^ (x >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::cache::mix;

    #[test]
    fn shared_increments_from_many_threads_saturate_without_carrying() {
        let mut s = FrequencySketch::with_lanes(2);
        s.ensure(64).unwrap();
        let keys: Vec<u64> = (1..=4u64)
            .map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let s = std::sync::Arc::new(s);
        // Four threads, two to a lane.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (s, keys) = (std::sync::Arc::clone(&s), keys.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        for &k in &keys {
                            s.increment_shared(k, t);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut s = std::sync::Arc::try_unwrap(s).unwrap();
        // Each key's four counters sit at 15 in both lanes; every other counter is
        // untouched (a carry out of a saturated counter would have raised a neighbour).
        let mut expected = vec![0u64; s.table.len()];
        for &k in &keys {
            assert_eq!(s.frequency(k), 15);
            for lane in 0..2 {
                let (block, at) = s.locate(k, lane);
                for (word, shift) in at {
                    expected[block + word] |= 15 << shift;
                }
            }
        }
        let words: Vec<u64> = s.table.iter_mut().map(|w| *w.get_mut()).collect();
        assert_eq!(words, expected);
        assert_eq!(s.additions(), 0, "shared increments are counted in bulk");
        s.add_counted(s.period);
        assert_eq!(
            s.frequency(keys[0]),
            14,
            "a bulk count reaching the period ages (7 in each lane)"
        );
    }

    #[test]
    fn lanes_add_up_saturate_together_and_survive_growth() {
        let mut s = FrequencySketch::with_lanes(3);
        assert_eq!(s.lanes(), 4, "a power of two");
        assert_eq!(FrequencySketch::with_lanes(64).lanes(), MAX_LANES);
        s.ensure(8).unwrap();
        let words = s.table.len();
        assert_eq!(words, 4 * FrequencySketch::words_for(8));
        let k = 0xDEAD_BEEF_u64;
        s.increment(k); // lane 0
        s.increment_shared(k, 1);
        s.increment_shared(k, 6); // lane 2
        assert_eq!(s.frequency(k), 3, "the sum over the lanes");
        for _ in 0..10 {
            s.increment_shared(k, 3);
            s.increment_shared(k, 1);
        }
        assert_eq!(s.frequency(k), 15, "the sum is capped");
        s.ensure(4096).unwrap();
        assert!(s.table.len() > words);
        assert_eq!(s.frequency(k), 15, "growth keeps every lane's counts");
        s.reset();
        assert_eq!(
            (s.lanes(), s.frequency(k)),
            (4, 0),
            "a reset keeps the lanes"
        );
    }

    #[test]
    fn an_empty_sketch_counts_nothing() {
        let mut s = FrequencySketch::new();
        s.increment(mix(1));
        assert_eq!(s.frequency(mix(1)), 0);
        assert!(!s.is_sized());
    }

    #[test]
    fn counts_saturate_at_fifteen() {
        let mut s = FrequencySketch::new();
        s.ensure(64).unwrap();
        for i in 1..=20u64 {
            s.increment(mix(7));
            assert_eq!(u64::from(s.frequency(mix(7))), i.min(15));
        }
        // Saturated increments are not counted towards the aging period.
        assert_eq!(s.additions(), 15);
        assert_eq!(s.frequency(mix(8)), 0);
    }

    #[test]
    fn aging_halves_every_count_after_twenty_increments_per_entry() {
        let mut s = FrequencySketch::new();
        s.ensure(50).unwrap(); // period: 1000 counted increments
        for _ in 0..12 {
            s.increment(mix(1));
        }
        for _ in 0..5 {
            s.increment(mix(2));
        }
        assert_eq!((s.frequency(mix(1)), s.frequency(mix(2))), (12, 5));
        // Other keys, each counted once, up to one short of the period.
        let mut k = 1000u64;
        while s.additions() < 999 {
            s.increment(mix(k));
            k += 1;
        }
        assert_eq!((s.frequency(mix(1)), s.frequency(mix(2))), (12, 5));
        // The thousandth counted increment ages the sketch: counts halve (rounding
        // down), and so does the number of additions.
        s.increment(mix(k + 1));
        assert_eq!((s.frequency(mix(1)), s.frequency(mix(2))), (6, 2));
        assert_eq!(s.additions(), 500);
        // A key counted once before the aging is at 0 now.
        assert_eq!(s.frequency(mix(1000)), 0);
    }

    #[test]
    fn a_burst_of_counted_additions_ages_once() {
        let mut s = FrequencySketch::new();
        s.ensure(50).unwrap(); // period: 1000
        for _ in 0..8 {
            s.increment(mix(1));
        }
        assert!(s.add_counted(1 << 40));
        assert_eq!((s.frequency(mix(1)), s.additions()), (4, 500));
        // The next additions do not age again until the period is reached anew.
        assert!(!s.add_counted(499));
        assert!(s.add_counted(1));
        assert_eq!(s.frequency(mix(1)), 2);
    }

    #[test]
    fn adding_counted_accesses_raises_every_counter_to_the_new_estimate() {
        let mut s = FrequencySketch::new();
        s.ensure(50).unwrap();
        s.add(mix(1), 4);
        assert_eq!((s.frequency(mix(1)), s.additions()), (4, 0));
        s.add(mix(1), 0);
        assert_eq!(s.frequency(mix(1)), 4);
        s.add(mix(1), 9);
        assert_eq!(s.frequency(mix(1)), 13);
        s.add(mix(1), 9); // saturates
        assert_eq!(s.frequency(mix(1)), 15);
        // Adding is an increment of n: the same counters as n increments of one.
        let mut t = FrequencySketch::new();
        t.ensure(50).unwrap();
        for k in 0..200u64 {
            s.add(mix(k + 10), 3);
            for _ in 0..3 {
                t.increment(mix(k + 10));
            }
        }
        for k in 0..200u64 {
            assert_eq!(s.frequency(mix(k + 10)), t.frequency(mix(k + 10)));
        }
    }

    #[test]
    fn growing_keeps_every_estimate() {
        let mut s = FrequencySketch::new();
        s.ensure(8).unwrap();
        for k in 0..40u64 {
            for _ in 0..(k % 16) {
                s.increment(mix(k));
            }
        }
        let before: Vec<u8> = (0..200u64).map(|k| s.frequency(mix(k))).collect();
        s.ensure(1000).unwrap();
        assert_eq!(s.table.len(), 2048);
        let after: Vec<u8> = (0..200u64).map(|k| s.frequency(mix(k))).collect();
        assert_eq!(before, after);
        s.ensure(10).unwrap(); // never shrinks
        assert_eq!(s.table.len(), 2048);
        s.reset();
        assert_eq!(s.frequency(mix(3)), 0);
    }

    #[test]
    fn estimates_never_undercount_and_rare_keys_stay_low() {
        // A skewed stream over many keys, below the aging period.
        let mut s = FrequencySketch::new();
        s.ensure(1 << 12).unwrap();
        let mut truth = std::collections::HashMap::new();
        let mut seed = 5u64;
        for _ in 0..20_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let k = (seed >> 33) % 4096;
            let k = k * k / 4096; // skewed towards small keys
            s.increment(mix(k));
            *truth.entry(k).or_insert(0u64) += 1;
        }
        let mut rare_over = 0;
        for (&k, &n) in &truth {
            let est = u64::from(s.frequency(mix(k)));
            assert!(est >= n.min(15), "key {k}: {est} < {n}");
            if n == 1 && est > 2 {
                rare_over += 1;
            }
        }
        assert!(
            rare_over * 20 < truth.len(),
            "{rare_over} rare keys overestimated"
        );
    }
}
