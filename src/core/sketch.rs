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
//! Counters saturate at 15. Every `period` increments (ten per entry the sketch is sized
//! for; an increment that changes nothing because the key is saturated does not count)
//! every counter is halved, so old popularity fades and a key that was hot yesterday
//! cannot keep today's keys out forever (TinyLFU's "reset", Einziger et al. 2017).
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
//! # Hashing
//! The input is the cache's 64-bit hash of the key, remixed here (multiply and
//! xor-shift) so that the sketch's bits are independent of those the cache uses for
//! its shards and table. Keys that an adversary makes collide can only raise estimates;
//! the cache's admission rule answers that with a little randomness (see `core::cache`).

use crate::core::cache::AllocError;

/// Words per block: one 64-byte cache line.
const BLOCK_WORDS: usize = 8;
/// Largest counter value.
const MAX_COUNT: u64 = 15;
/// Words (16 counters) per entry the sketch is sized for: 16 bytes.
const WORDS_PER_ENTRY: usize = 2;
/// Counted increments between two agings, per entry the sketch is sized for.
pub const SAMPLE_FACTOR: u64 = 20;

/// Approximate access counts with aging; see the module docs.
#[derive(Debug, Default)]
pub struct FrequencySketch {
    /// `blocks * BLOCK_WORDS` words, `blocks` a power of two (or empty).
    table: Vec<u64>,
    /// `blocks - 1`.
    block_mask: u64,
    /// Counted increments since the last aging.
    additions: u64,
    /// Counted increments that trigger an aging.
    period: u64,
}

impl FrequencySketch {
    /// An empty sketch: it counts nothing until [`ensure`](Self::ensure) sizes it.
    pub fn new() -> Self {
        Self::default()
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
        let want = Self::words_for(entries);
        let have = self.table.len();
        if have >= want {
            return Ok(());
        }
        self.table.try_reserve_exact(want - have)?;
        if have == 0 {
            self.table.resize(want, 0);
        } else {
            // Doubling, as often as needed: block b's counters are those of every block
            // b + k * have / 8 (the index is the hash's low bits), so copy them there.
            while self.table.len() < want {
                self.table.extend_from_within(..);
            }
        }
        let blocks = (self.table.len() / BLOCK_WORDS) as u64;
        self.block_mask = blocks - 1;
        self.period = SAMPLE_FACTOR.saturating_mul(entries.max(1) as u64);
        Ok(())
    }

    /// Forgets every count and releases the table (memory back to nothing).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// The block's first word and, per row, (word offset, bit shift) of the key's counter.
    #[inline]
    fn locate(&self, hash: u64) -> (usize, [(usize, u32); 4]) {
        let h = spread(hash);
        let block = ((h >> 32) & self.block_mask) as usize * BLOCK_WORDS;
        let mut at = [(0, 0); 4];
        for (i, slot) in at.iter_mut().enumerate() {
            let bits = (h >> (8 * i)) as usize;
            let word = 2 * i + (bits & 1);
            let shift = (((bits >> 1) & 15) * 4) as u32;
            *slot = (word, shift);
        }
        (block, at)
    }

    /// Starts loading the cache line of `hash`'s counters, so that an increment a little
    /// later (after the cache's own lookup) does not wait for memory.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if self.table.is_empty() {
            return;
        }
        let block = ((spread(hash) >> 32) & self.block_mask) as usize * BLOCK_WORDS;
        if let Some(word) = self.table.get(block) {
            prefetch(word);
        }
    }

    /// The estimated count of `hash`'s key, `0..=15`.
    #[inline]
    pub fn frequency(&self, hash: u64) -> u8 {
        if self.table.is_empty() {
            return 0;
        }
        let (block, at) = self.locate(hash);
        let mut min = MAX_COUNT;
        for (word, shift) in at {
            // block + word < block + BLOCK_WORDS <= table.len(): the block index is
            // masked to the table's block count.
            let c = (self.table[block + word] >> shift) & 15;
            min = min.min(c);
        }
        min as u8
    }

    /// Counts one access of `hash`'s key (conservatively: only the counters at the
    /// minimum go up); ages the sketch once `period` increments were counted.
    #[inline]
    pub fn increment(&mut self, hash: u64) {
        if self.table.is_empty() {
            return;
        }
        let (block, at) = self.locate(hash);
        let words = &mut self.table[block..block + BLOCK_WORDS];
        let mut min = MAX_COUNT;
        for &(word, shift) in &at {
            min = min.min((words[word] >> shift) & 15);
        }
        if min == MAX_COUNT {
            return;
        }
        for &(word, shift) in &at {
            if (words[word] >> shift) & 15 == min {
                words[word] += 1 << shift;
            }
        }
        self.additions += 1;
        if self.additions >= self.period {
            self.age();
        }
    }

    /// Halves every counter (and the count of additions since the last aging).
    #[cold]
    fn age(&mut self) {
        for w in &mut self.table {
            *w = (*w >> 1) & 0x7777_7777_7777_7777;
        }
        self.additions /= 2;
    }

    /// Counted increments since the last aging (tests).
    #[cfg(test)]
    fn additions(&self) -> u64 {
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
