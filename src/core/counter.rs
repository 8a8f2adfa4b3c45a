//! Striped event counters: monotonic totals that many threads bump on a hot path without
//! all writing one cache line.
//!
//! A [`Striped`] holds `STRIPES` padded slots of two counters each (e.g. allowed / denied).
//! A caller picks the slot from a hash (a key's it already has, or [`thread_hash`], so that
//! threads write distinct lines) and adds with one relaxed `fetch_add`; a read
//! sums the slots. Counts are exact (no update is lost); a read concurrent with updates
//! sees each update either in full or not at all, and two reads by one thread never go
//! down. These are statistics, not synchronisation: nothing is ordered by them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Slots per tally: enough that two threads on distinct keys rarely share one.
const STRIPES: usize = 16;

/// One slot, alone on its cache lines (128 bytes: adjacent-line prefetch pairs lines).
#[repr(align(128))]
#[derive(Default)]
struct Slot {
    first: AtomicU64,
    second: AtomicU64,
}

/// Two monotonic counters, striped by a caller-chosen hash.
pub struct Striped {
    slots: Box<[Slot]>,
}

impl Default for Striped {
    fn default() -> Self {
        Self {
            slots: (0..STRIPES).map(|_| Slot::default()).collect(),
        }
    }
}

impl Striped {
    #[inline]
    fn slot(&self, hash: u64) -> &Slot {
        // STRIPES is a power of two; the high bits of a hash are its best mixed.
        &self.slots[(hash >> 60) as usize % STRIPES]
    }

    /// Counts one event: on the first counter if `first`, else on the second.
    #[inline]
    pub fn add(&self, hash: u64, first: bool) {
        let s = self.slot(hash);
        if first {
            s.first.fetch_add(1, Relaxed);
        } else {
            s.second.fetch_add(1, Relaxed);
        }
    }

    /// [`add`](Self::add) for a caller that makes every update of this counter under one
    /// global lock (the GIL of a CPython built with one): a load and a store on the first
    /// slot, not an atomic read-modify-write (which costs as much as a lock word) and
    /// no thread hash. Exact under that lock; without it, concurrent updates could be
    /// lost (never torn: the slot is still atomic).
    #[inline]
    pub fn add_serialized(&self, first: bool) {
        let s = &self.slots[0];
        let c = if first { &s.first } else { &s.second };
        c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
    }

    /// Counts `first` events on the first counter and `second` on the second.
    #[inline]
    pub fn add_counts(&self, hash: u64, first: u64, second: u64) {
        let s = self.slot(hash);
        if first > 0 {
            s.first.fetch_add(first, Relaxed);
        }
        if second > 0 {
            s.second.fetch_add(second, Relaxed);
        }
    }

    /// `(first, second)`, summed over the slots.
    pub fn totals(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(a, b), s| {
            (
                a.wrapping_add(s.first.load(Relaxed)),
                b.wrapping_add(s.second.load(Relaxed)),
            )
        })
    }
}

/// A hash of the calling thread, for callers with no key to stripe by: threads are
/// numbered in the order they first ask, and the number is placed in the high bits, so
/// [`STRIPES`] threads started one after another (a worker pool) get distinct slots.
/// (Hashing the thread's stack address, as before, put two threads on one slot -- one
/// line both wrote on every count -- in one of three runs of the scaling benchmark.)
/// Only how evenly threads spread depends on it, never a count.
#[inline]
pub fn thread_hash() -> u64 {
    use std::cell::Cell;
    use std::sync::atomic::AtomicU64 as Next;

    /// Not yet numbered (no number is this large: it would take 2^64 threads).
    const UNSET: u64 = u64::MAX;
    static NEXT: Next = Next::new(0);
    thread_local! {
        static HASH: Cell<u64> = const { Cell::new(UNSET) };
    }
    HASH.try_with(|h| {
        let v = h.get();
        if v != UNSET {
            return v;
        }
        let v = numbered(NEXT.fetch_add(1, Relaxed));
        h.set(v);
        v
    })
    // During the thread's teardown: any slot will do.
    .unwrap_or(0)
}

/// The hash of the `n`-th thread: `n % STRIPES` in the bits [`Striped`] picks its slot by.
#[inline]
fn numbered(n: u64) -> u64 {
    n.rotate_right(4)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn counts_every_event_from_many_threads() {
        let t = Striped::default();
        std::thread::scope(|s| {
            for i in 0..4u64 {
                let t = &t;
                s.spawn(move || {
                    for n in 0..10_000u64 {
                        let h = (n ^ i).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        t.add(h, n % 3 != 0);
                    }
                });
            }
        });
        let (a, b) = t.totals();
        assert_eq!(a + b, 40_000);
        assert_eq!(b, 4 * (0..10_000u64).filter(|n| n % 3 == 0).count() as u64);
    }

    #[test]
    fn serialized_adds_count_exactly_under_one_lock_beside_striped_ones() {
        let t = Striped::default();
        let lock = std::sync::Mutex::new(());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for n in 0..5_000u64 {
                        let _held = lock.lock().unwrap();
                        t.add_serialized(n % 2 == 0);
                    }
                });
            }
        });
        t.add(thread_hash(), true);
        assert_eq!(t.totals(), (10_001, 10_000));
    }

    #[test]
    fn counts_in_bulk() {
        let t = Striped::default();
        t.add_counts(thread_hash(), 3, 0);
        t.add_counts(thread_hash(), 2, 5);
        assert_eq!(t.totals(), (5, 5));
    }

    #[test]
    fn consecutive_threads_get_distinct_slots_and_keep_theirs() {
        let t = Striped::default();
        for first in [0, 5, 1 << 20, u64::MAX - 40] {
            let mut slots: Vec<*const Slot> = (first..first + STRIPES as u64)
                .map(|n| std::ptr::from_ref(t.slot(numbered(n))))
                .collect();
            slots.sort_unstable();
            slots.dedup();
            assert_eq!(slots.len(), STRIPES);
        }
        let mine = thread_hash();
        assert_eq!(thread_hash(), mine);
        let other = std::thread::spawn(thread_hash).join().unwrap();
        assert_ne!(other, mine); // two numbers: never equal (the low bits differ too)
    }

    #[test]
    fn every_hash_has_a_slot() {
        let t = Striped::default();
        for h in [0, 1, u64::MAX, 1 << 63, 0xF << 60] {
            t.add(h, true);
        }
        assert_eq!(t.totals(), (5, 0));
    }
}
